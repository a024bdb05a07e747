//! What the coordinator asks of its workers: piece requests, a pipeline topped up in
//! batches, and the `Have`s that tell owners what this node holds. Part of the
//! [`Coordinator`], which calls these as pieces arrive, owners unchoke and its tick comes.

use std::time::Instant;

use crossbeam_channel::TrySendError;

use super::super::worker::Ask;
use super::{Coordinator, Live};

/// Pieces verified here and not yet told to a complete owner, at most, while every owner
/// of the download is complete. Such an owner needs this node's pieces only to offer the
/// rest, so they wait for the next requests to it, this many, or the next tick: a `Have`
/// of its own for each piece woke three threads on each side per piece and owner. With a
/// partial owner among them this node is in a swarm, where a seed's offers steer the
/// swarm's first copy: everyone is told at once (64 hosts finished 0.01 × S/R later
/// when the seed heard late).
const HAVE_BATCH: usize = 32;

impl Live<'_> {
    /// Tells the owner of the pieces not yet told; `false` if its queue is full (it is not
    /// reading it, and is let go).
    fn flush_haves(&mut self) -> bool {
        if self.haves.is_empty() || self.leaving {
            return true;
        }
        let haves = std::mem::take(&mut self.haves);
        !matches!(
            self.worker.asks.try_send(Ask::Have(haves)),
            Err(TrySendError::Full(_))
        )
    }
}

impl Coordinator<'_, '_> {
    /// Tells every connected owner but the one that sent it (`from`, which counts it as
    /// held once sent) that this node holds `piece`: now, or with the next requests when
    /// every owner is complete (see [`HAVE_BATCH`]). A worker whose queue is full is not
    /// reading it, and is let go.
    pub(super) fn tell_all(&mut self, piece: u32, from: usize) {
        let mut stuck = Vec::new();
        let only_complete = self.workers.values().all(|l| l.complete);
        for (&slot, live) in self.workers.iter_mut().filter(|&(&s, _)| s != from) {
            live.haves.push(piece);
            if only_complete && live.haves.len() < HAVE_BATCH {
                continue;
            }
            if !live.flush_haves() {
                stuck.push(slot);
            }
        }
        for slot in stuck {
            self.let_go(slot);
        }
    }

    /// Requests pieces for `slot` until its pipeline is as deep as its rate needs.
    pub(super) fn fill(&mut self, slot: usize) {
        let Some(live) = self.workers.get_mut(&slot) else {
            return;
        };
        if !live.connected || live.unchoked.is_none() || live.leaving {
            return;
        }
        // Topped up once half the pipeline is in, not at every piece: the requests then go
        // out together, and the owner reads them with one wake-up instead of one each.
        let depth = live.pace.depth();
        if live.asked.len() > depth / 2 {
            return;
        }
        let mut stuck = !live.flush_haves();
        while !stuck && live.asked.len() < depth {
            let Some(piece) = self.sched.take(slot) else {
                break;
            };
            if live.worker.asks.try_send(Ask::Piece(piece)).is_err() {
                stuck = true;
                break;
            }
            live.asked.insert(piece, Instant::now());
        }
        if stuck {
            self.let_go(slot);
        }
    }

    pub(super) fn fill_all(&mut self) {
        let slots: Vec<usize> = self.workers.keys().copied().collect();
        for slot in slots {
            self.fill(slot);
        }
    }

    /// Tells every owner of the pieces it has not been told of yet (the tick's part).
    pub(super) fn flush_all_haves(&mut self) {
        let stuck: Vec<usize> = self
            .workers
            .iter_mut()
            .filter_map(|(&slot, live)| (!live.flush_haves()).then_some(slot))
            .collect();
        for slot in stuck {
            self.let_go(slot);
        }
    }
}
