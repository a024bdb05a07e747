//! How deep a worker's request pipeline is: it follows the owner's measured rate.

use std::time::Instant;

/// How much of an owner's sending a worker keeps requested ahead, in seconds.
const PIPELINE_TIME: f64 = 0.1;

/// How many requests a worker keeps in flight: enough for [`PIPELINE_TIME`] at the rate its
/// owner has been sending, between two pieces and the configured depth. A deep pipeline
/// to a slow owner would commit pieces to it long before they arrive, pieces that faster
/// owners could have sent, and that other downloaders meanwhile get too.
pub(super) struct Pace {
    max: usize,
    piece_size: f64,
    /// Bytes per second, smoothed; `None` until two pieces have arrived.
    rate: Option<f64>,
    last: Option<Instant>,
}

impl Pace {
    pub fn new(max: usize, piece_size: u32) -> Self {
        Self {
            max: max.max(1),
            piece_size: f64::from(piece_size.max(1)),
            rate: None,
            last: None,
        }
    }

    pub fn depth(&self) -> usize {
        let Some(rate) = self.rate else {
            return self.max.min(2);
        };
        let wanted = (rate * PIPELINE_TIME / self.piece_size).ceil() as usize;
        wanted.clamp(self.max.min(2), self.max)
    }

    pub fn arrived(&mut self, bytes: usize) {
        let now = Instant::now();
        if let Some(last) = self.last.replace(now) {
            let secs = now.duration_since(last).as_secs_f64().max(1e-6);
            let sample = bytes as f64 / secs;
            self.rate = Some(self.rate.map_or(sample, |r| 0.8 * r + 0.2 * sample));
        }
    }
}
