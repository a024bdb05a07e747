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

/// The machine's CPU time so far, from the first line of `/proc/stat`, in clock ticks
/// (1/100 s): every process's, and the kernel's own work such as softirq.
#[allow(dead_code)] // not every bench measures the machine
pub struct Ticks {
    total: u64,
    idle: u64,
}

#[allow(dead_code)]
impl Ticks {
    /// Reads the counts now.
    pub fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let counts: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal ...
        Ticks {
            total: counts.iter().take(8).sum(),
            idle: counts.get(3).copied().unwrap_or(0) + counts.get(4).copied().unwrap_or(0),
        }
    }

    /// The busy share of the ticks since `before`.
    pub fn busy_since(&self, before: &Ticks) -> f64 {
        let total = self.total.saturating_sub(before.total).max(1) as f64;
        let idle = self.idle.saturating_sub(before.idle) as f64;
        1.0 - idle / total
    }

    /// The CPU-seconds the machine was busy since `before`.
    pub fn busy_secs_since(&self, before: &Ticks) -> f64 {
        let total = self.total.saturating_sub(before.total);
        let idle = self.idle.saturating_sub(before.idle);
        total.saturating_sub(idle) as f64 / 100.0
    }
}
