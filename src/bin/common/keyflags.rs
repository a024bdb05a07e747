//! The network-key flags both binaries take: `--make-key FILE` and `--key FILE`.
//!
//! Shared by `#[path]` inclusion: a folder without `main.rs` is not a binary of its own.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use p2ptorrent::NetworkKey;
use p2ptorrent::error::report;

/// `--make-key FILE`: writes a new key, says where and how to use it, and returns the
/// exit code. `program` prefixes the error.
pub fn make_key(program: &str, path: &Path) -> ExitCode {
    match NetworkKey::create(path) {
        Ok(key) => {
            // A closed stdout is no reason to fail: the key is written.
            let _ = writeln!(
                std::io::stdout(),
                "wrote a new network key to {} (fingerprint {}); start the tracker and every node with --key {}",
                path.display(),
                key.fingerprint(),
                path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{program}: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// `--key FILE`: loads the key if a path was given; the error is ready to print.
pub fn load_key(path: Option<&Path>) -> Result<Option<NetworkKey>, String> {
    path.map(NetworkKey::load)
        .transpose()
        .map_err(|e| report(&e))
}

/// Names the network for the start line: private with the key's fingerprint, or open.
pub fn describe(key: Option<&NetworkKey>) -> String {
    match key {
        Some(key) => format!("private network, key {}", key.fingerprint()),
        None => "open network, no key".into(),
    }
}
