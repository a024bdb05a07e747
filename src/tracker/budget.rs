//! What one address may cost the tracker: request rates, and (in the registry) table rows.
//!
//! Every request with a valid address token is charged to its sender's address (an IPv6
//! sender's /64, which one host usually holds whole) in one of three token buckets:
//! announces and exits, owner look-ups, and searches. A request over its bucket is not
//! served. Its sender is told once per [`TOLD_EVERY`] with a `Busy` smaller than its
//! request, and otherwise dropped in silence, so a flood earns neither work nor replies.
//! The tokens must be checked first: an address that cannot receive a token cannot be
//! charged, so nobody spends another's budget by forging its address.
//!
//! The buckets of at most [`MAX_ADDRESSES`] addresses are kept; when the table is full,
//! addresses idle long enough to have refilled are forgotten, and if none are, a new
//! address shares one overflow bucket set with every other newcomer until room frees up.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::host::address_key;

/// Addresses whose buckets are kept at once.
pub const MAX_ADDRESSES: usize = 65_536;
/// How often a throttled address is told so.
pub const TOLD_EVERY: Duration = Duration::from_secs(1);

/// Request rates one address may use, per second, with bursts of twice as many.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    /// `Have` and `Exit` requests.
    pub announces: f64,
    /// `Need` requests.
    pub lookups: f64,
    /// `Search` requests.
    pub searches: f64,
}

impl Default for Rates {
    /// 200 announces, 200 look-ups and 10 searches a second: a host running dozens of
    /// nodes and downloads stays far below, a flood is cut to a trickle.
    fn default() -> Self {
        Self {
            announces: 200.0,
            lookups: 200.0,
            searches: 10.0,
        }
    }
}

/// Which bucket a request is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Announce,
    Lookup,
    Search,
}

/// What the tracker does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Serve it.
    Serve,
    /// Answer `Busy`, with when to try again.
    TellBusy(Duration),
    /// Drop it without a word.
    Drop,
}

/// The buckets of every address seen lately.
#[derive(Debug)]
pub(crate) struct Budgets {
    rates: Rates,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    by_addr: HashMap<IpAddr, Buckets>,
    /// Shared by newcomers while `by_addr` is full.
    overflow: Option<Buckets>,
    last_sweep: Option<Instant>,
}

#[derive(Debug, Clone)]
struct Buckets {
    announces: Bucket,
    lookups: Bucket,
    searches: Bucket,
    last_told: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Budgets {
    /// Creates the budgets with `rates` per address.
    pub fn new(rates: Rates) -> Self {
        Self {
            rates,
            state: Mutex::new(State::default()),
        }
    }

    /// Charges one request of `kind` from `ip` at `now`.
    pub fn charge(&self, ip: IpAddr, kind: Kind, now: Instant) -> Verdict {
        let rates = self.rates;
        let key = address_key(ip);
        let mut guard = self.state.lock();
        let state = &mut *guard;
        if !state.by_addr.contains_key(&key) && state.by_addr.len() >= MAX_ADDRESSES {
            state.sweep(&rates, now);
        }
        let buckets = if state.by_addr.len() < MAX_ADDRESSES || state.by_addr.contains_key(&key) {
            state
                .by_addr
                .entry(key)
                .or_insert_with(|| Buckets::full(&rates, now))
        } else {
            state
                .overflow
                .get_or_insert_with(|| Buckets::full(&rates, now))
        };
        let (bucket, rate) = match kind {
            Kind::Announce => (&mut buckets.announces, rates.announces),
            Kind::Lookup => (&mut buckets.lookups, rates.lookups),
            Kind::Search => (&mut buckets.searches, rates.searches),
        };
        if bucket.take(rate, now) {
            return Verdict::Serve;
        }
        if buckets
            .last_told
            .is_some_and(|t| now.saturating_duration_since(t) < TOLD_EVERY)
        {
            return Verdict::Drop;
        }
        buckets.last_told = Some(now);
        // One token's time, at least 100 ms.
        let wait = Duration::from_secs_f64((1.0 / rate.max(0.001)).max(0.1));
        Verdict::TellBusy(wait)
    }

    /// How many addresses have buckets now.
    #[cfg(test)]
    pub fn addresses(&self) -> usize {
        self.state.lock().by_addr.len()
    }
}

impl State {
    /// Forgets addresses whose buckets have refilled: they cost nothing to recreate. At
    /// most once a second, since it walks the whole table.
    fn sweep(&mut self, rates: &Rates, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last_sweep = Some(now);
        self.by_addr.retain(|_, b| !b.refilled(rates, now));
        if self.by_addr.len() < MAX_ADDRESSES {
            self.overflow = None;
        }
    }
}

impl Buckets {
    fn full(rates: &Rates, now: Instant) -> Self {
        Self {
            announces: Bucket::full(rates.announces, now),
            lookups: Bucket::full(rates.lookups, now),
            searches: Bucket::full(rates.searches, now),
            last_told: None,
        }
    }

    fn refilled(&self, rates: &Rates, now: Instant) -> bool {
        self.announces.refilled(rates.announces, now)
            && self.lookups.refilled(rates.lookups, now)
            && self.searches.refilled(rates.searches, now)
    }
}

impl Bucket {
    fn full(rate: f64, now: Instant) -> Self {
        Self {
            tokens: burst(rate),
            at: now,
        }
    }

    fn level(&self, rate: f64, now: Instant) -> f64 {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + secs * rate).min(burst(rate))
    }

    fn refilled(&self, rate: f64, now: Instant) -> bool {
        self.level(rate, now) >= burst(rate)
    }

    /// Takes one token if there is one.
    fn take(&mut self, rate: f64, now: Instant) -> bool {
        self.tokens = self.level(rate, now);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn burst(rate: f64) -> f64 {
    (rate * 2.0).max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn a_burst_is_served_then_told_once_then_dropped_until_refilled() {
        let budgets = Budgets::new(Rates {
            announces: 10.0,
            lookups: 10.0,
            searches: 1.0,
        });
        let t0 = Instant::now();
        for _ in 0..2 {
            assert_eq!(budgets.charge(ip(1), Kind::Search, t0), Verdict::Serve);
        }
        assert!(matches!(
            budgets.charge(ip(1), Kind::Search, t0),
            Verdict::TellBusy(_)
        ));
        assert_eq!(budgets.charge(ip(1), Kind::Search, t0), Verdict::Drop);
        // Other kinds and other addresses have their own buckets.
        assert_eq!(budgets.charge(ip(1), Kind::Lookup, t0), Verdict::Serve);
        assert_eq!(budgets.charge(ip(2), Kind::Search, t0), Verdict::Serve);
        // One token a second comes back.
        let t1 = t0 + Duration::from_millis(1100);
        assert_eq!(budgets.charge(ip(1), Kind::Search, t1), Verdict::Serve);
        assert!(matches!(
            budgets.charge(ip(1), Kind::Search, t1),
            Verdict::TellBusy(_)
        ));
    }

    #[test]
    fn a_flood_is_served_at_the_rate_and_no_faster() {
        let budgets = Budgets::new(Rates::default());
        let t0 = Instant::now();
        let mut served = 0;
        // 100,000 look-ups over ten seconds from one address.
        for i in 0..100_000u32 {
            let now = t0 + Duration::from_micros(u64::from(i) * 100);
            if budgets.charge(ip(9), Kind::Lookup, now) == Verdict::Serve {
                served += 1;
            }
        }
        // 2 s of burst + 10 s at 200/s.
        assert!((2_350..=2_450).contains(&served), "{served}");
    }

    #[test]
    fn idle_addresses_are_forgotten_when_the_table_fills() {
        let budgets = Budgets::new(Rates::default());
        let t0 = Instant::now();
        for i in 0..MAX_ADDRESSES as u32 {
            let a = IpAddr::from((0x0a00_0000u32 + i).to_be_bytes());
            budgets.charge(a, Kind::Announce, t0);
        }
        assert_eq!(budgets.addresses(), MAX_ADDRESSES);
        // A newcomer while everyone is recent shares the overflow buckets.
        assert_eq!(
            budgets.charge(IpAddr::from([11, 0, 0, 1]), Kind::Announce, t0),
            Verdict::Serve
        );
        assert_eq!(budgets.addresses(), MAX_ADDRESSES);
        // Two seconds on, every bucket has refilled: the table is swept.
        let later = t0 + Duration::from_secs(3);
        assert_eq!(
            budgets.charge(IpAddr::from([11, 0, 0, 2]), Kind::Announce, later),
            Verdict::Serve
        );
        assert_eq!(budgets.addresses(), 1);
    }
}
