//! What the end-to-end benches share: settings from the environment, where to put files,
//! and seeded test data.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Returns the environment variable `name` parsed, or `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Returns the folder to put bench files in: `P2P_BENCH_DIR`, else `/dev/shm` where it
/// exists (tmpfs: the page cache is the storage, so disk writeback does not add noise),
/// else the temporary folder.
#[allow(dead_code)] // not every bench writes files
pub fn bench_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("P2P_BENCH_DIR") {
        return dir.into();
    }
    if Path::new("/dev/shm").is_dir() {
        "/dev/shm".into()
    } else {
        std::env::temp_dir()
    }
}

/// Writes `size` seeded pseudo-random bytes to `path`, a MiB at a time.
#[allow(dead_code)] // not every bench writes files
pub fn generate(path: &Path, size: u64, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        rng.fill(&mut chunk[..n]);
        out.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    out.flush().unwrap();
}
