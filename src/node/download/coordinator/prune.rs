//! Which owners a download lets go, beyond those that fail: the one that delivered least
//! (or kept it waiting in a line that did not move), those holding nothing it lacks
//! (complete owners too, once one has offered nothing in this node's turn or the download
//! has stalled), and one that holds a piece far longer than pieces take elsewhere. Part of the
//! [`Coordinator`], which calls [`Coordinator::drop_slow`] and [`Coordinator::rotate`] on
//! its tick; the owners let go rest before they may be tried again.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::error::Error;

use super::super::super::Event;
use super::super::super::metrics::Dropped;
use super::Coordinator;

/// How often the owner that delivered least is replaced, when others wait to be tried;
/// also how long an owner is kept before it may be replaced.
///
/// At 5 s, a leecher that got its first piece after the others had filled their owner
/// slots uploaded nothing until the first rotations: 14 of 32 hosts sat idle from 4 s to
/// 10 s into a download (`benches/swarm_hosts.rs`). At 1 s they are taken up within a
/// second or two; 3 s was already slower (1.35-1.41 × S/R against 1.26-1.29 at 32 hosts).
pub(super) const ROTATE_EVERY: Duration = Duration::from_secs(1);
/// How long a replaced owner rests before it may be tried again.
const REST: Duration = Duration::from_secs(10);
/// With no piece verified for this long, complete owners that sent nothing are replaced
/// too: a seed that offers a downloader nothing (it leaves the pieces to peers this node
/// may not reach, or it lies) would otherwise hold an owner slot for as long as it keeps
/// the connection open.
const STALLED: Duration = Duration::from_secs(5);
/// How long after its unchoke a complete owner that has offered nothing this node lacks
/// counts as declining: its offers follow the unchoke at once, so this is a margin for them
/// to arrive.
const OFFER_GRACE: Duration = Duration::from_millis(500);
/// A piece in flight this many times longer than the median piece takes (and at least the
/// peer timeout) marks its owner as too slow to keep.
const SLOW_FACTOR: u32 = 8;

impl Coordinator<'_, '_> {
    /// Drops an owner that has held a piece far longer than pieces take elsewhere, and
    /// delivered none meanwhile, when another live owner holds that piece: it is
    /// trickling, or hopelessly slow. One that keeps delivering is busy, not stuck (a seed
    /// shares its uplink among its turns), and dropping it would waste what it has sent.
    pub(super) fn drop_slow(&mut self, now: Instant) {
        let mut secs = self.piece_secs.clone();
        if secs.len() < 4 {
            return;
        }
        secs.sort_by(f64::total_cmp);
        let median = Duration::from_secs_f64(secs[secs.len() / 2]);
        let limit = (median * SLOW_FACTOR).max(self.ctx().config.peer_timeout);
        let slow: Vec<usize> = self
            .workers
            .iter()
            .filter(|(slot, live)| {
                !live.leaving
                    && now.duration_since(live.last_piece) > limit
                    && live.asked.iter().any(|(&piece, &at)| {
                        now.duration_since(at) > limit && self.sched.held_elsewhere(**slot, piece)
                    })
            })
            .map(|(slot, _)| *slot)
            .collect();
        for slot in slow {
            if let Some(live) = self.workers.get(&slot) {
                let addr = live.worker.addr;
                let why =
                    format!("held a piece over {limit:?} while others sent them in {median:?}");
                self.ctx().counters.owner_dropped(Dropped::Slow);
                self.book.failed(
                    addr,
                    &Error::Slow {
                        addr,
                        why: why.clone(),
                    },
                    now,
                );
                self.ctx().emit(Event::OwnerFailed {
                    download: self.job.id,
                    file: self.job.file.into(),
                    node: self.book.name_of(addr),
                    owner: addr,
                    error: why,
                });
            }
            self.let_go(slot);
        }
    }

    /// Replaces owners that hold nothing this node lacks, and the one that delivered least
    /// since the last rotation, when an owner not yet tried is waiting.
    pub(super) fn rotate(&mut self, now: Instant) {
        let running: Vec<SocketAddr> = self.workers.values().map(|l| l.worker.addr).collect();
        let waiting = self
            .book
            .usable(usize::MAX, now)
            .iter()
            .filter(|a| !running.contains(a))
            .count();
        if waiting == 0 {
            return;
        }
        // Complete owners are kept while they may yet give: they serve in turns, and leaving
        // loses the place in line. One that holds nothing this node lacks goes too once
        // nothing has arrived for STALLED, or once it has given this node its turn and
        // offered nothing in it: it leaves those pieces to peers it expects this node to
        // reach, so this node looks for them. One still sending a piece is never the
        // slowest.
        let stalled = now.duration_since(self.progressed) >= STALLED;
        let settled: Vec<(usize, u64, bool, bool)> = self
            .workers
            .iter()
            .filter(|(_, l)| {
                l.connected && !l.leaving && now.duration_since(l.started) >= ROTATE_EVERY
            })
            .map(|(&slot, l)| {
                let complete = self.book.is_complete(l.worker.addr);
                let declined = l
                    .unchoked
                    .is_some_and(|since| now.duration_since(since) >= OFFER_GRACE);
                (
                    slot,
                    l.bytes,
                    self.sched.useful(slot),
                    !complete || stalled || declined,
                )
            })
            .collect();
        let mut gone: Vec<usize> = settled
            .iter()
            .filter(|&&(_, bytes, useful, may_go)| bytes == 0 && !useful && may_go)
            .map(|(slot, ..)| *slot)
            .take(waiting)
            .collect();
        // The slowest partial owner serving now, or one whose line has not moved since the
        // last rotation (it keeps this node choked and sent nothing): a place in a line that
        // does not move is worth less than a try of an owner nobody fetches from yet.
        let slowest = settled
            .iter()
            .filter(|&&(slot, bytes, ..)| {
                self.workers.get(&slot).is_some_and(|l| {
                    !self.book.is_complete(l.worker.addr) && (l.unchoked.is_some() || bytes == 0)
                })
            })
            .min_by_key(|(_, bytes, ..)| *bytes);
        if gone.is_empty()
            && self.workers.len() >= self.ctx().config.max_owners
            && let Some((slot, ..)) = slowest
        {
            gone.push(*slot);
        }
        for slot in gone {
            if let Some(live) = self.workers.get(&slot) {
                self.book.rest(live.worker.addr, now + REST);
            }
            self.let_go(slot);
        }
        for live in self.workers.values_mut() {
            live.bytes = 0;
        }
    }
}
