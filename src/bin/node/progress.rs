//! How the node binary shows downloads moving, in whichever of three ways fits the
//! terminal:
//!
//! - **Bars** (indicatif) on stderr when it is a terminal and nobody types at a prompt
//!   (`--no-prompt`, or stdin not a terminal): one bar per download with its rate and ETA,
//!   cleared before each printed line and redrawn after it.
//! - **Lines** when a person types at the prompt: a bar redrawn under the cursor would wipe
//!   what they type, so each download prints a plain line at every tenth of the file, with
//!   rate and ETA (`status` answers at any time).
//! - **Off** under `-v` (every piece is printed already) or when stderr is not a terminal.

use std::collections::BTreeMap;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

const MIB: f64 = (1 << 20) as f64;

/// The progress of the downloads running.
pub struct Progress {
    mode: Mode,
    files: BTreeMap<String, File>,
}

enum Mode {
    Bars(MultiProgress),
    Lines,
    Off,
}

struct File {
    size: u64,
    total: u32,
    /// Pieces verified at the start (resumed) and bytes fetched since.
    resumed: u32,
    fetched: u64,
    started: Instant,
    /// The last tenth printed, in lines mode.
    tenth: u32,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Bars when `bars` (stderr is a terminal nobody types at), lines when `lines` (a
    /// person types at the prompt), otherwise nothing.
    pub fn new(bars: bool, lines: bool) -> Self {
        let mode = if bars {
            Mode::Bars(MultiProgress::with_draw_target(
                ProgressDrawTarget::stderr_with_hz(10),
            ))
        } else if lines {
            Mode::Lines
        } else {
            Mode::Off
        };
        Self {
            mode,
            files: BTreeMap::new(),
        }
    }

    /// A download of `file` (`size` bytes in `total` pieces, `resumed` of them already
    /// verified) began.
    pub fn start(&mut self, file: &str, size: u64, total: u32, resumed: u32) {
        let bar = match &self.mode {
            Mode::Bars(multi) => {
                let bar = multi.add(ProgressBar::new(size));
                bar.set_style(style());
                bar.set_prefix(file.to_string());
                bar.set_position(share(size, resumed, total));
                bar.reset_eta();
                Some(bar)
            }
            Mode::Lines | Mode::Off => None,
        };
        let f = File {
            size,
            total,
            resumed,
            fetched: 0,
            started: Instant::now(),
            tenth: tenth(resumed, total),
            bar,
        };
        self.files.insert(file.into(), f);
    }

    /// A piece of `bytes` bytes of `file` arrived; `done` pieces are verified.
    pub fn piece(&mut self, file: &str, bytes: u32, done: u32) {
        let Some(f) = self.files.get_mut(file) else {
            return;
        };
        f.fetched += u64::from(bytes);
        if let Some(bar) = &f.bar {
            bar.set_position(share(f.size, done, f.total));
        }
        // The tenth that completes the file is left to the line saying it is downloaded.
        if matches!(self.mode, Mode::Lines) && tenth(done, f.total) > f.tenth && done < f.total {
            f.tenth = tenth(done, f.total);
            let secs = f.started.elapsed().as_secs_f64().max(1e-3);
            let rate = f.fetched as f64 / secs;
            let left = f.size.saturating_sub(share(f.size, done, f.total));
            let eta = match left as f64 / rate {
                secs if !secs.is_finite() => String::new(),
                secs if secs < 1.0 => ", under a second left".into(),
                secs => format!(", about {secs:.0} s left"),
            };
            say!(
                "{file}: {}% of {:.1} MiB, {:.1} MiB/s{eta}{}",
                f.tenth * 10,
                f.size as f64 / MIB,
                rate / MIB,
                if f.resumed > 0 {
                    format!(" ({} pieces resumed)", f.resumed)
                } else {
                    String::new()
                }
            );
        }
    }

    /// The download of `file` ended.
    pub fn finish(&mut self, file: &str) {
        if let Some(f) = self.files.remove(file)
            && let Some(bar) = f.bar
        {
            bar.finish_and_clear();
            if let Mode::Bars(multi) = &self.mode {
                multi.remove(&bar);
            }
        }
    }

    /// Erases the bars so a line can be printed in their place; they are drawn again at
    /// the next piece.
    pub fn clear(&mut self) {
        if let Mode::Bars(multi) = &self.mode {
            let _ = multi.clear();
        }
    }
}

fn style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix} [{bar:24}] {percent:>3}% of {total_bytes}, {binary_bytes_per_sec}, ETA {eta}",
    )
    .map_or_else(
        |_| ProgressStyle::default_bar(),
        |s| s.progress_chars("#>-"),
    )
}

/// The bytes of a `size`-byte file that `done` of `total` pieces make, near enough.
fn share(size: u64, done: u32, total: u32) -> u64 {
    if total == 0 {
        return size;
    }
    (u128::from(size) * u128::from(done) / u128::from(total)) as u64
}

/// Which tenth of the file `done` of `total` pieces reach (0 to 10).
fn tenth(done: u32, total: u32) -> u32 {
    if total == 0 {
        10
    } else {
        (u64::from(done) * 10 / u64::from(total)) as u32
    }
}
