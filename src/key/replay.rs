//! The tracker's memory of sealed requests already answered: each salt is accepted once
//! within the replay window.

use std::collections::HashMap as StdHashMap;

use parking_lot::Mutex;

use super::REPLAY_WINDOW;

/// Why the replay guard refused a sealed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replay {
    /// Its send time is further than [`REPLAY_WINDOW`] from the tracker's clock.
    OutsideWindow,
    /// It was seen before.
    Seen,
    /// Too many requests arrived within one window to remember them all.
    Full,
}

/// Remembers the salt of every sealed request within the replay window, so each is
/// accepted once.
///
/// Only datagrams that opened under the network key are remembered, so only key holders
/// can fill it; it is capped at [`ReplayGuard::CAPACITY`] salts in all, and refuses, rather
/// than forgets, when full.
pub(crate) struct ReplayGuard {
    shards: Vec<Mutex<Shard>>,
}

/// Salts are random bytes only a key holder can choose, so a seeded fast hash will do:
/// the default SipHash is several times slower on these 16-byte keys.
type HashMap<K, V> = StdHashMap<K, V, foldhash::quality::RandomState>;

#[derive(Default)]
struct Shard {
    /// The first 16 bytes of each salt seen, and its send time in milliseconds.
    seen: HashMap<[u8; 16], u64>,
    /// When entries outside the window were last dropped.
    pruned_at: u64,
}

impl ReplayGuard {
    const SHARDS: usize = 16;
    /// The most salts remembered: room for about 70,000 sealed requests a second.
    pub const CAPACITY: usize = 1 << 22;

    /// A guard that has seen nothing.
    pub fn new() -> Self {
        Self {
            shards: (0..Self::SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    /// Accepts a request sealed with the salt that starts with `id` at `sent` (ms since
    /// the epoch) if it is within the window of `now` and was not seen before.
    pub fn admit(&self, id: [u8; 16], sent: u64, now: u64) -> std::result::Result<(), Replay> {
        let window = REPLAY_WINDOW.as_millis() as u64;
        if sent.abs_diff(now) > window {
            return Err(Replay::OutsideWindow);
        }
        let mut shard = self.shards[usize::from(id[0]) % Self::SHARDS].lock();
        let cap = Self::CAPACITY / Self::SHARDS;
        if shard.seen.len() >= cap || now.saturating_sub(shard.pruned_at) >= 1000 {
            // Anything sent before the window is refused by the time check above.
            let oldest = now.saturating_sub(window);
            shard.seen.retain(|_, t| *t >= oldest);
            shard.pruned_at = now;
            if shard.seen.len() >= cap {
                return Err(Replay::Full);
            }
        }
        match shard.seen.insert(id, sent) {
            None => Ok(()),
            Some(_) => Err(Replay::Seen),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{DatagramSeal, Direction, KEY_LEN, NetworkKey, salt_id};

    fn key(byte: u8) -> NetworkKey {
        NetworkKey::from_bytes([byte; KEY_LEN])
    }

    #[test]
    fn replay_guard_admits_each_salt_once_within_the_window() {
        let guard = ReplayGuard::new();
        let seal = DatagramSeal::new(&key(1));
        let a = seal.seal(Direction::Request, b"a").unwrap();
        let b = seal.seal(Direction::Request, b"b").unwrap();
        let now = 1_000_000_000;
        assert_eq!(guard.admit(salt_id(&a).unwrap(), now, now), Ok(()));
        assert_eq!(
            guard.admit(salt_id(&a).unwrap(), now, now + 5),
            Err(Replay::Seen)
        );
        assert_eq!(guard.admit(salt_id(&b).unwrap(), now - 1000, now), Ok(()));
        let window = REPLAY_WINDOW.as_millis() as u64;
        let c = seal.seal(Direction::Request, b"c").unwrap();
        assert_eq!(
            guard.admit(salt_id(&c).unwrap(), now - window - 1, now),
            Err(Replay::OutsideWindow)
        );
        assert_eq!(
            guard.admit(salt_id(&c).unwrap(), now + window + 1, now),
            Err(Replay::OutsideWindow)
        );
        // Pruning forgets only what the window refuses anyway.
        assert_eq!(
            guard.admit(salt_id(&a).unwrap(), now, now + 2000),
            Err(Replay::Seen)
        );
    }
}
