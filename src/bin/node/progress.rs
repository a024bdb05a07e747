//! A one-line progress bar on stderr, redrawn at most ten times a second.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

/// Progress of the downloads running, drawn as one line.
pub struct Progress {
    enabled: bool,
    files: BTreeMap<String, File>,
    last_draw: Instant,
    drawn: bool,
}

struct File {
    done: u32,
    total: u32,
    bytes: u64,
    size: u64,
    started: Instant,
}

impl Progress {
    /// Draws only when `enabled` (stderr is a terminal and pieces are not being logged).
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            files: BTreeMap::new(),
            last_draw: Instant::now(),
            drawn: false,
        }
    }

    pub fn start(&mut self, file: &str, size: u64, total: u32) {
        let f = File {
            done: 0,
            total,
            bytes: 0,
            size,
            started: Instant::now(),
        };
        self.files.insert(file.into(), f);
    }

    pub fn piece(&mut self, file: &str, bytes: u32, done: u32) {
        if let Some(f) = self.files.get_mut(file) {
            f.done = done;
            f.bytes += u64::from(bytes);
        }
        if self.last_draw.elapsed() >= Duration::from_millis(100) {
            self.draw();
        }
    }

    pub fn finish(&mut self, file: &str) {
        self.files.remove(file);
        self.clear();
    }

    /// Erases the line so a message can be printed in its place.
    pub fn clear(&mut self) {
        if self.enabled && self.drawn {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
            self.drawn = false;
        }
    }

    fn draw(&mut self) {
        self.last_draw = Instant::now();
        if !self.enabled || self.files.is_empty() {
            return;
        }
        let line: Vec<String> = self
            .files
            .iter()
            .map(|(name, f)| {
                let frac = if f.total == 0 {
                    1.0
                } else {
                    f64::from(f.done) / f64::from(f.total)
                };
                let width = 24;
                let filled = (frac * f64::from(width)).round() as usize;
                const MIB: f64 = (1 << 20) as f64;
                let rate = f.bytes as f64 / f.started.elapsed().as_secs_f64().max(1e-3) / MIB;
                format!(
                    "{name} [{}{}] {:>3.0}% of {:.1} MiB, {rate:.1} MiB/s",
                    "#".repeat(filled),
                    "-".repeat(width as usize - filled),
                    frac * 100.0,
                    f.size as f64 / MIB
                )
            })
            .collect();
        let mut err = std::io::stderr();
        let _ = write!(err, "\r\x1b[2K{}", line.join("  "));
        let _ = err.flush();
        self.drawn = true;
    }
}
