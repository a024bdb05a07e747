//! How a node spends its upload on the files it holds complete.
//!
//! A node that holds a whole file is the scarce resource of a swarm: every byte it sends
//! twice is a byte the downloaders could have traded among themselves. So for complete files
//! it does not tell a downloader "I hold everything"; it *offers* a few pieces at a time
//! (announced with `Have`), and the downloader may ask only for those:
//!
//! - **Turns.** At most [`NodeConfig::upload_slots`](super::NodeConfig::upload_slots)
//!   connections hold a turn at once, node-wide; the others wait in line, in order. A turn
//!   lasts [`TURN_PIECES`] pieces sent (or [`TURN_TIME`], whichever comes first), so a capped
//!   uplink serves a few peers fast, and their pieces reach the rest of the swarm sooner,
//!   instead of many peers slowly. Rotating turns in order is the seeding half of what
//!   BitTorrent does with choking and an optimistic unchoke; a seed has nothing to trade,
//!   so the order is plain round robin.
//! - **Offers.** A connection with a turn is offered up to [`OFFERS_OPEN`] pieces at once,
//!   each time the piece the peer lacks that this node has offered least often (ties broken
//!   at random), and another each time one is sent or the peer gets one elsewhere. Every
//!   piece is offered once before any is offered twice, so the first copy this node sends
//!   covers the whole file (super-seeding, from this node's own view).
//!
//! Files being downloaded are not gated: a partial owner offers everything it holds.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use crossbeam_channel::Sender;
use parking_lot::Mutex;

use super::schedule::Bitfield;

/// Pieces sent in one turn before the turn passes to the next connection in line.
pub(crate) const TURN_PIECES: u32 = 8;
/// Longest a turn lasts, however few pieces the peer asks for in it.
pub(crate) const TURN_TIME: Duration = Duration::from_secs(4);
/// Pieces offered to one connection and not yet sent, at most.
pub(crate) const OFFERS_OPEN: usize = 4;

/// The node-wide line of connections waiting for an upload turn.
#[derive(Debug)]
pub(crate) struct Turns {
    slots: usize,
    state: Mutex<TurnState>,
}

#[derive(Debug, Default)]
struct TurnState {
    held: HashSet<u64>,
    waiting: VecDeque<(u64, Sender<()>)>,
}

impl Turns {
    /// Creates a line with `slots` turns (at least one).
    pub fn new(slots: usize) -> Self {
        Self {
            slots: slots.max(1),
            state: Mutex::new(TurnState::default()),
        }
    }

    /// Asks for a turn for connection `id`. Returns whether it holds one now; if not, it
    /// waits in line, and `wake` is signalled when a turn is handed to it.
    pub fn ask(&self, id: u64, wake: &Sender<()>) -> bool {
        let mut s = self.state.lock();
        if s.held.contains(&id) {
            return true;
        }
        if s.held.len() < self.slots && s.waiting.is_empty() {
            s.held.insert(id);
            return true;
        }
        if !s.waiting.iter().any(|(w, _)| *w == id) {
            s.waiting.push_back((id, wake.clone()));
        }
        false
    }

    /// Returns whether connection `id` holds a turn.
    #[cfg(test)]
    pub fn holds(&self, id: u64) -> bool {
        self.state.lock().held.contains(&id)
    }

    /// Ends connection `id`'s turn, or its place in line, and hands the turn to the next
    /// connection waiting.
    pub fn end(&self, id: u64) {
        let mut s = self.state.lock();
        s.waiting.retain(|(w, _)| *w != id);
        if s.held.remove(&id) {
            while s.held.len() < self.slots {
                let Some((next, wake)) = s.waiting.pop_front() else {
                    break;
                };
                s.held.insert(next);
                // A full wake channel already has a signal pending; a closed one belongs to
                // a connection that is ending, and its guard ends the turn.
                let _ = wake.try_send(());
            }
        }
    }
}

/// Chooses up to `n` pieces to offer a peer: pieces it lacks (`peer_has`) and has not been
/// offered on this connection (`told`), those offered least often first (`given`, counted
/// across every connection of the file), ties broken by `rng`. Counts each one chosen.
pub(crate) fn pick_offers(
    given: &mut [u32],
    peer_has: &Bitfield,
    told: &Bitfield,
    n: usize,
    rng: &mut fastrand::Rng,
) -> Vec<u32> {
    let mut picked = Vec::with_capacity(n);
    for _ in 0..n {
        let mut best: Option<(u32, u32)> = None;
        let mut ties = 0u32;
        for (i, &count) in given.iter().enumerate() {
            let i = i as u32;
            if peer_has.get(i) || told.get(i) || picked.contains(&i) {
                continue;
            }
            match best {
                Some((_, c)) if count > c => {}
                Some((_, c)) if count == c => {
                    // Reservoir sampling: each tied piece is kept with equal chance.
                    ties += 1;
                    if rng.u32(..ties) == 0 {
                        best = Some((i, count));
                    }
                }
                _ => {
                    best = Some((i, count));
                    ties = 1;
                }
            }
        }
        let Some((piece, _)) = best else { break };
        given[piece as usize] += 1;
        picked.push(piece);
    }
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_piece_is_offered_once_before_any_twice() {
        let mut given = vec![0u32; 64];
        let mut rng = fastrand::Rng::with_seed(1);
        let nothing = Bitfield::empty(64);
        let mut seen = Vec::new();
        // Sixteen peers, four offers each: 64 offers, one per piece.
        for _ in 0..16 {
            seen.extend(pick_offers(&mut given, &nothing, &nothing, 4, &mut rng));
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..64).collect::<Vec<_>>());
        assert!(given.iter().all(|&c| c == 1));
        let again = pick_offers(&mut given, &nothing, &nothing, 1, &mut rng);
        assert_eq!(given[again[0] as usize], 2);
    }

    #[test]
    fn offers_skip_what_the_peer_holds_or_was_told() {
        let mut given = vec![0u32; 8];
        let mut rng = fastrand::Rng::with_seed(2);
        let mut has = Bitfield::empty(8);
        (0..4).for_each(|i| has.set(i));
        let mut told = Bitfield::empty(8);
        told.set(4);
        let mut got = pick_offers(&mut given, &has, &told, 8, &mut rng);
        got.sort_unstable();
        assert_eq!(got, [5, 6, 7]);
    }

    #[test]
    fn turns_pass_in_order_and_never_exceed_the_slots() {
        let turns = Turns::new(2);
        let (tx, rx) = crossbeam_channel::bounded(1);
        assert!(turns.ask(1, &tx));
        assert!(turns.ask(2, &tx));
        let (tx3, rx3) = crossbeam_channel::bounded(1);
        let (tx4, rx4) = crossbeam_channel::bounded(1);
        assert!(!turns.ask(3, &tx3));
        assert!(!turns.ask(4, &tx4));
        assert!(!turns.ask(3, &tx3), "asking again keeps one place in line");
        turns.end(1);
        assert!(rx3.try_recv().is_ok() && turns.holds(3));
        assert!(rx4.try_recv().is_err() && !turns.holds(4));
        turns.end(4); // leaves the line without a turn
        turns.end(2);
        assert!(rx4.try_recv().is_err());
        assert!(rx.try_recv().is_err());
        assert!(turns.ask(5, &tx), "a free slot is taken at once");
    }
}
