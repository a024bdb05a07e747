//! Rate limits shared by all of a node's connections.
//!
//! A [`RateLimiter`] is a token bucket that may go into debt: taking `n` bytes always
//! succeeds, and the caller then sleeps until the bucket is back out of debt. The long-run
//! rate is therefore exact whatever the sizes taken, and the burst is at most
//! [`BURST`] worth of the rate (or one take, if larger).

use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::{Error, Result};

/// How much of the rate may be spent at once after an idle period.
pub const BURST: Duration = Duration::from_millis(20);

/// A byte-rate limit.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    bytes_per_sec: f64,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// Bytes that may be taken now; negative is debt.
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    /// Creates a limiter of `bytes_per_sec` (at least one).
    pub fn new(bytes_per_sec: u64) -> Self {
        let rate = bytes_per_sec.max(1) as f64;
        Self {
            bytes_per_sec: rate,
            state: Mutex::new(Bucket {
                tokens: rate * BURST.as_secs_f64(),
                updated: Instant::now(),
            }),
        }
    }

    /// Takes `n` bytes and returns how long the caller must wait before using them.
    pub fn take(&self, n: u64) -> Duration {
        let burst = self.bytes_per_sec * BURST.as_secs_f64();
        let mut b = self.state.lock();
        let now = Instant::now();
        let refill = now.duration_since(b.updated).as_secs_f64() * self.bytes_per_sec;
        b.tokens = (b.tokens + refill).min(burst) - n as f64;
        b.updated = now;
        if b.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-b.tokens / self.bytes_per_sec)
        }
    }
}

/// Parses a rate such as `16MiB`, `1.5MB`, `800k` or `1000000` into bytes per second.
///
/// Suffixes are case-insensitive: `k`/`kb` (10³), `m`/`mb`, `g`/`gb`, and `kib`, `mib`,
/// `gib` (2¹⁰ …); a trailing `/s` is allowed.
///
/// # Errors
///
/// [`Error::InvalidParameter`] unless the text is a positive number with a known suffix.
pub fn parse_rate(text: &str) -> Result<u64> {
    let t = text.trim().to_ascii_lowercase();
    let t = t.strip_suffix("/s").unwrap_or(&t);
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let scale: u64 = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => {
            return Err(Error::InvalidParameter(
                "rate unit must be one of k, m, g, kib, mib, gib",
            ));
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| Error::InvalidParameter("rate must be a number"))?;
    let bytes = value * scale as f64;
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(Error::InvalidParameter(
            "rate must be at least one byte per second",
        ));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_and_without_units() {
        assert_eq!(parse_rate("16MiB").unwrap(), 16 << 20);
        assert_eq!(parse_rate("1.5MB").unwrap(), 1_500_000);
        assert_eq!(parse_rate("800k").unwrap(), 800_000);
        assert_eq!(parse_rate("2 GiB/s").unwrap(), 2 << 30);
        assert_eq!(parse_rate("1000").unwrap(), 1000);
        for bad in ["", "fast", "10 parsecs", "0", "-5M", "0.1"] {
            assert!(parse_rate(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_long_run_rate_is_exact() {
        // Taking 10 MB at 1 MB/s leaves a debt of 10 s minus the initial burst.
        let l = RateLimiter::new(1_000_000);
        let mut wait = Duration::ZERO;
        for _ in 0..10 {
            wait = l.take(1_000_000);
        }
        let expected = 10.0 - BURST.as_secs_f64();
        assert!((wait.as_secs_f64() - expected).abs() < 0.05, "{wait:?}");
    }

    #[test]
    fn a_small_take_within_the_burst_needs_no_wait() {
        let l = RateLimiter::new(1_000_000);
        assert_eq!(l.take(10_000), Duration::ZERO);
    }
}
