//! The owners one download knows of, and how each has fared.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::error::{Error, report};
use crate::host::address_key;
use crate::messages::OwnerInfo;

use super::super::Ctx;

/// An owner that failed this many times is given up on for the download.
const MAX_FAILURES: u32 = 4;
/// An owner that sent this many pieces that failed verification is given up on.
const MAX_BAD_PIECES: u32 = 2;
/// How long a failed owner waits before it is asked again; doubled at each failure.
const BACKOFF: Duration = Duration::from_secs(1);
/// Owners one download keeps track of, at most; more heard of are not taken in.
const MAX_CANDIDATES: usize = 1024;
/// Peers met (not listed by a tracker) taken in per host (an IPv4 address, an IPv6 /64): a
/// peer names its own port, so one host cycling connections (or addresses of its /64)
/// could otherwise fill the book with owners it does not serve as. As many as a node
/// serves connections from one host by default.
const MAX_MET_PER_IP: u32 = 16;
/// Failures kept to explain a download's end; older ones are forgotten.
const MAX_REASONS: usize = 64;

/// The owners known for one download, and how each has fared.
///
/// An owner that fails for a reason that may pass (a refused or broken connection, a
/// timeout) is retried after a backoff that doubles each time, and given up on after
/// [`MAX_FAILURES`] failures in a row; a connection that gets as far as the owner's piece
/// list clears the count. An owner given up on is tried afresh if the tracker lists it
/// again as complete where it was partial: a busy leecher whose uplink dropped the
/// handshakes is the best source there is once it has finished. One that sends a piece
/// that fails verification is retried once more and dropped for good at the second
/// ([`MAX_BAD_PIECES`]). One that breaks the protocol is dropped at once; one that says it
/// does not share the file is retried like one that timed out (a tracker can list a node
/// before its download has the piece list to serve).
#[derive(Debug, Default)]
pub(super) struct OwnerBook {
    /// Every owner heard of, best first.
    pub candidates: Vec<OwnerInfo>,
    failures: HashMap<SocketAddr, u32>,
    bad_pieces: HashMap<SocketAddr, u32>,
    /// When an owner that failed may be asked again.
    retry_at: HashMap<SocketAddr, Instant>,
    /// Owners never asked again in this download.
    banned: HashSet<SocketAddr>,
    /// Owners a connection was opened to, in this download.
    tried: HashSet<SocketAddr>,
    /// Peers met and taken in, per IP address.
    met_per_ip: HashMap<std::net::IpAddr, u32>,
    /// Peers met, in the order they were taken in: the newest untried one is tried first.
    met_order: Vec<SocketAddr>,
    pub reasons: Vec<(SocketAddr, String)>,
    /// Whether the tracker was asked again since the last piece arrived with no owner left.
    pub asked_again: bool,
}

impl OwnerBook {
    pub fn new(ctx: &Ctx, listed: Vec<OwnerInfo>) -> Self {
        let mut owners = Self::default();
        owners.add(ctx, listed);
        owners
    }

    /// Adds owners not yet known, skipping this node itself, and updates what is known of
    /// the others.
    pub fn add(&mut self, ctx: &Ctx, listed: Vec<OwnerInfo>) {
        let me = (ctx.config.name.as_str(), ctx.local_addr.port());
        self.add_except(listed, me);
    }

    /// Adds a peer met downloading the same file (it connected here holding pieces of it)
    /// if it is not known yet: it is tried like a partial owner the tracker listed.
    /// At most [`MAX_MET_PER_IP`] per host (an IPv4 address, an IPv6 /64).
    pub fn met(&mut self, ctx: &Ctx, owner: OwnerInfo) {
        let me = (ctx.config.name.as_str(), ctx.local_addr.port());
        self.met_except(owner, me);
    }

    fn met_except(&mut self, owner: OwnerInfo, me: (&str, u16)) {
        if self.candidates.iter().any(|c| c.addr == owner.addr) {
            return;
        }
        let n = self
            .met_per_ip
            .entry(address_key(owner.addr.ip()))
            .or_default();
        if *n >= MAX_MET_PER_IP {
            return;
        }
        *n += 1;
        self.met_order.push(owner.addr);
        self.add_except(vec![owner], me);
    }

    fn add_except(&mut self, listed: Vec<OwnerInfo>, (name, port): (&str, u16)) {
        for o in listed {
            if o.node == name && o.addr.port() == port {
                continue;
            }
            let Some(known) = self.candidates.iter_mut().find(|c| c.addr == o.addr) else {
                if self.candidates.len() < MAX_CANDIDATES {
                    self.candidates.push(o);
                }
                continue;
            };
            if o.complete && !known.complete {
                // It finished since: whatever its handshakes did while it was busy, it is
                // worth a fresh try (a ban for lying stands).
                self.failures.remove(&o.addr);
                self.retry_at.remove(&o.addr);
            }
            known.complete = o.complete;
            known.uploads = o.uploads;
        }
    }

    fn given_up(&self, addr: &SocketAddr) -> bool {
        self.banned.contains(addr) || self.failures.get(addr).copied().unwrap_or(0) >= MAX_FAILURES
    }

    /// Returns up to `max` owners that may be asked now, best first.
    pub fn usable(&self, max: usize, now: Instant) -> Vec<SocketAddr> {
        self.candidates
            .iter()
            .map(|o| o.addr)
            .filter(|a| !self.given_up(a) && self.retry_at.get(a).is_none_or(|t| *t <= now))
            .take(max)
            .collect()
    }

    /// Returns when the next owner still in the running may be asked again, if any is
    /// waiting out a backoff.
    pub fn next_retry(&self, now: Instant) -> Option<Instant> {
        self.retry_at
            .iter()
            .filter(|(a, t)| **t > now && !self.given_up(a))
            .map(|(_, t)| *t)
            .min()
    }

    pub fn failed(&mut self, addr: SocketAddr, e: &Error, now: Instant) {
        match e {
            Error::HashMismatch { .. } => {
                let bad = self.bad_pieces.entry(addr).or_default();
                *bad += 1;
                if *bad >= MAX_BAD_PIECES {
                    self.banned.insert(addr);
                } else {
                    self.retry_at.insert(addr, now + BACKOFF);
                }
            }
            Error::Peer { .. } | Error::Handshake(_) | Error::KeyMismatch { .. } => {
                self.banned.insert(addr);
            }
            _ => {
                let n = self.failures.entry(addr).or_default();
                *n += 1;
                self.retry_at.insert(addr, now + BACKOFF * 2u32.pow(*n - 1));
            }
        }
        if self.reasons.len() >= MAX_REASONS {
            self.reasons.remove(0);
        }
        self.reasons.push((addr, report(e)));
    }

    /// Chooses the owner to try next, one not `running`: the peer met most recently among
    /// those never tried, else one at random among those never tried, else at random
    /// among the others that may be asked now. Random, not the tracker's order: every
    /// downloader in a swarm hears of the same owners, and taking them in list order gave
    /// the first few listed every downloader and the last none. A peer met has just got
    /// pieces and connected here for more, so likely nobody fetches from it yet.
    pub fn next(
        &self,
        now: Instant,
        running: &[SocketAddr],
        rng: &mut fastrand::Rng,
    ) -> Option<SocketAddr> {
        let free: Vec<SocketAddr> = self
            .usable(usize::MAX, now)
            .into_iter()
            .filter(|a| !running.contains(a))
            .collect();
        let fresh: Vec<SocketAddr> = free
            .iter()
            .copied()
            .filter(|a| !self.tried.contains(a))
            .collect();
        if let Some(newest) = self.met_order.iter().rev().find(|a| fresh.contains(a)) {
            return Some(*newest);
        }
        let pool = if fresh.is_empty() { free } else { fresh };
        (!pool.is_empty()).then(|| pool[rng.usize(..pool.len())])
    }

    /// Records that `addr` was tried; fresh owners from the tracker may be asked again.
    pub fn tried(&mut self, addr: SocketAddr) {
        self.tried.insert(addr);
        self.asked_again = false;
    }

    /// Records that a connection to `addr` got as far as its piece list: the failures
    /// before it no longer count towards giving up.
    pub fn reached(&mut self, addr: SocketAddr) {
        self.failures.remove(&addr);
    }

    /// Returns the node name the tracker listed for `addr` (empty if none).
    pub fn name_of(&self, addr: SocketAddr) -> String {
        self.candidates
            .iter()
            .find(|o| o.addr == addr)
            .map(|o| o.node.clone())
            .unwrap_or_default()
    }

    /// Returns whether the tracker listed `addr` as holding the whole file. A complete
    /// owner serves in turns, so its silence between turns is no sign of trouble.
    pub fn is_complete(&self, addr: SocketAddr) -> bool {
        self.candidates.iter().any(|o| o.addr == addr && o.complete)
    }

    /// Whether `addr` is known, never tried, and may be asked now.
    pub fn untried(&self, addr: SocketAddr, now: Instant) -> bool {
        !self.tried.contains(&addr) && self.usable(usize::MAX, now).contains(&addr)
    }

    /// Rests `addr` until `until` (it was replaced, not failed).
    pub fn rest(&mut self, addr: SocketAddr, until: Instant) {
        self.retry_at.insert(addr, until);
    }

    /// How the last owner to fail failed, for the error that ends a download.
    pub fn last_reason(&self) -> String {
        self.reasons
            .last()
            .map_or_else(|| "no owner was reachable".into(), |(_, r)| r.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(port: u16) -> OwnerInfo {
        OwnerInfo {
            node: format!("n{port}"),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            uploads: 0,
            complete: true,
        }
    }

    fn book() -> OwnerBook {
        let mut o = OwnerBook::default();
        o.add_except(vec![owner(1), owner(2), owner(3)], ("n3", 3));
        o
    }

    fn io_error(port: u16) -> Error {
        Error::PeerIo {
            addr: owner(port).addr,
            op: "connecting",
            source: std::io::ErrorKind::ConnectionRefused.into(),
        }
    }

    /// An owner that does not share the file yet is asked again after a backoff, and
    /// given up on after [`MAX_FAILURES`] refusals like any failure that may pass; one
    /// that breaks the protocol is not asked again.
    #[test]
    fn an_owner_not_sharing_the_file_yet_is_retried_one_breaking_the_protocol_is_not() {
        let mut o = book();
        let now = Instant::now();
        let not_yet = Error::NotShared {
            addr: owner(1).addr,
            file: "f".into(),
            reason: "not shared by this node".into(),
        };
        o.failed(owner(1).addr, &not_yet, now);
        o.failed(
            owner(2).addr,
            &Error::Peer {
                addr: owner(2).addr,
                reason: "nonsense".into(),
            },
            now,
        );
        assert_eq!(o.usable(9, now), Vec::<SocketAddr>::new());
        assert_eq!(o.next_retry(now), Some(now + BACKOFF));
        assert_eq!(o.usable(9, now + BACKOFF), [owner(1).addr]);
        for _ in 1..MAX_FAILURES {
            o.failed(owner(1).addr, &not_yet, now);
        }
        assert_eq!(
            o.usable(9, now + Duration::from_secs(3600)),
            Vec::<SocketAddr>::new()
        );
    }

    /// A host that connects from many ports, each time naming another port it claims to
    /// serve on, adds at most MAX_MET_PER_IP owners; other hosts are still taken in.
    #[test]
    fn peers_met_are_taken_in_up_to_a_cap_per_address() {
        let mut o = book();
        for port in 1000..1100 {
            o.met_except(owner(port), ("me", 1));
        }
        assert_eq!(o.candidates.len(), 2 + MAX_MET_PER_IP as usize);
        let elsewhere = OwnerInfo {
            addr: SocketAddr::from(([127, 0, 0, 2], 7000)),
            ..owner(7000)
        };
        o.met_except(elsewhere, ("me", 1));
        assert_eq!(o.candidates.len(), 3 + MAX_MET_PER_IP as usize);
        // An IPv6 host is its /64, whichever of its addresses it comes from.
        for i in 0..100u16 {
            let addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 7, i, 0, 0, 1);
            o.met_except(
                OwnerInfo {
                    addr: SocketAddr::from((addr, 7000)),
                    ..owner(7000)
                },
                ("me", 1),
            );
        }
        assert_eq!(o.candidates.len(), 3 + 2 * MAX_MET_PER_IP as usize);
    }

    /// A peer that connected here holding pieces is tried before the owners the tracker
    /// listed, the newest first: it has just got pieces, so nobody fetches from it yet,
    /// where every downloader heard of the listed ones alike.
    #[test]
    fn the_newest_peer_met_is_tried_first() {
        let mut o = book();
        let mut rng = fastrand::Rng::with_seed(1);
        let now = Instant::now();
        o.met_except(owner(10), ("me", 1));
        o.met_except(owner(11), ("me", 1));
        assert_eq!(o.next(now, &[], &mut rng), Some(owner(11).addr));
        assert_eq!(
            o.next(now, &[owner(11).addr], &mut rng),
            Some(owner(10).addr),
            "one running is not tried twice at once"
        );
        o.tried(owner(11).addr);
        o.tried(owner(10).addr);
        let listed = [owner(1).addr, owner(2).addr];
        let next = o.next(now, &[], &mut rng);
        assert!(next.is_some_and(|a| listed.contains(&a)), "{next:?}");
    }

    /// A peer may be started beyond the owner slots only while it is known, untried and
    /// not resting.
    #[test]
    fn only_an_untried_peer_that_may_be_asked_counts_as_untried() {
        let mut o = book();
        let now = Instant::now();
        assert!(!o.untried(owner(10).addr, now), "not known");
        o.met_except(owner(10), ("me", 1));
        assert!(o.untried(owner(10).addr, now));
        o.rest(owner(10).addr, now + Duration::from_secs(10));
        assert!(!o.untried(owner(10).addr, now), "resting");
        o.met_except(owner(11), ("me", 1));
        o.tried(owner(11).addr);
        assert!(!o.untried(owner(11).addr, now), "tried");
    }

    #[test]
    fn this_node_is_never_its_own_owner() {
        assert_eq!(book().candidates.len(), 2);
    }

    #[test]
    fn a_failed_owner_is_retried_after_a_doubling_backoff_then_given_up() {
        let mut o = book();
        let a = owner(1).addr;
        let t0 = Instant::now();
        o.failed(a, &io_error(1), t0);
        assert_eq!(o.usable(8, t0), [owner(2).addr]);
        assert_eq!(o.next_retry(t0), Some(t0 + BACKOFF));
        assert_eq!(o.usable(8, t0 + BACKOFF), [a, owner(2).addr]);
        o.failed(a, &io_error(1), t0);
        assert_eq!(o.next_retry(t0), Some(t0 + BACKOFF * 2));
        o.failed(a, &io_error(1), t0);
        o.failed(a, &io_error(1), t0);
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(
            o.usable(8, later),
            [owner(2).addr],
            "given up after {MAX_FAILURES}"
        );
        assert_eq!(o.next_retry(t0), None);
    }

    /// Failures count in a row: a connection that got through clears them. An owner
    /// given up on while partial is tried afresh once the tracker lists it complete.
    #[test]
    fn an_owner_that_got_through_or_finished_is_tried_afresh() {
        let mut o = book();
        let a = owner(1).addr;
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(3600);
        for _ in 1..MAX_FAILURES {
            o.failed(a, &io_error(1), t0);
        }
        o.reached(a);
        o.failed(a, &io_error(1), t0);
        assert!(
            o.usable(8, later).contains(&a),
            "one failure since it got through"
        );
        for _ in 1..MAX_FAILURES {
            o.failed(a, &io_error(1), t0);
        }
        assert!(!o.usable(8, later).contains(&a));
        let mut partial = owner(1);
        partial.complete = false;
        o.candidates[0].complete = false;
        o.add_except(vec![partial.clone()], ("n3", 3));
        assert!(
            !o.usable(8, later).contains(&a),
            "listed as before: still given up"
        );
        partial.complete = true;
        o.add_except(vec![partial], ("n3", 3));
        assert_eq!(
            o.usable(8, t0),
            [a, owner(2).addr],
            "complete now: tried at once"
        );
        assert!(o.is_complete(a));
    }

    /// Owners never tried go first, chosen at random, so downloaders that heard of the
    /// same list do not all pick its head.
    #[test]
    fn the_next_owner_is_a_random_untried_one() {
        let mut o = OwnerBook::default();
        o.add_except((1..=20).map(owner).collect(), ("none", 0));
        let mut rng = fastrand::Rng::with_seed(7);
        let now = Instant::now();
        let firsts: HashSet<SocketAddr> =
            (0..50).filter_map(|_| o.next(now, &[], &mut rng)).collect();
        assert!(firsts.len() > 10, "spread over the list: {firsts:?}");
        let running = [owner(1).addr, owner(2).addr];
        for a in (3..=20).map(|p| owner(p).addr) {
            o.tried(a);
        }
        for _ in 0..20 {
            let next = o.next(now, &running[..1], &mut rng);
            assert_eq!(
                next,
                Some(owner(2).addr),
                "the one never tried, not running"
            );
        }
        o.tried(owner(2).addr);
        let again = o.next(now, &running, &mut rng).unwrap();
        assert!(
            !running.contains(&again),
            "all tried: any that is not running"
        );
    }

    #[test]
    fn a_second_bad_piece_drops_an_owner_for_good() {
        let mut o = book();
        let a = owner(2).addr;
        let bad = Error::HashMismatch {
            file: "f".into(),
            piece: 0,
            addr: a,
        };
        let t0 = Instant::now();
        o.failed(a, &bad, t0);
        assert!(
            o.usable(8, t0 + BACKOFF).contains(&a),
            "one bad piece: retried later"
        );
        o.failed(a, &bad, t0);
        assert!(!o.usable(8, t0 + Duration::from_secs(3600)).contains(&a));
    }

    #[test]
    fn a_protocol_violation_drops_an_owner_at_once() {
        let mut o = book();
        let a = owner(1).addr;
        o.failed(
            a,
            &Error::Peer {
                addr: a,
                reason: "unexpected bitfield".into(),
            },
            Instant::now(),
        );
        assert!(
            !o.usable(8, Instant::now() + Duration::from_secs(3600))
                .contains(&a)
        );
        assert_eq!(o.reasons.len(), 1);
    }
}
