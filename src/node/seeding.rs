//! How a node spends its upload.
//!
//! - **Turns (choking).** At most [`NodeConfig::upload_slots`](super::NodeConfig::upload_slots)
//!   connections hold an upload turn at once, node-wide; the others wait in line, in order.
//!   A connection is sent `Unchoke` when its turn begins and `Choke` when it ends; a choked
//!   downloader asks its other owners meanwhile. A turn lasts [`TURN_PIECES`] pieces sent,
//!   [`TURN_TIME`], or until the peer has asked for nothing for [`TURN_IDLE`], and is
//!   simply renewed when nobody waits. So a capped uplink sends a
//!   few pieces fast instead of many slowly: a fresh piece reaches its next holder in a
//!   fraction of a second and can be passed on from there, where splitting the uplink over
//!   every requester made each hop take seconds. Turns in order replace BitTorrent's
//!   tit-for-tat and optimistic unchoke: in a fleet nobody needs to be punished, and round
//!   robin gives every waiting peer its turn within `waiting / slots` turns.
//!
//! A node that holds a whole file is the scarce resource of a swarm: every byte it sends
//! twice is a byte the downloaders could have traded among themselves. So for complete files
//! it does not tell a downloader "I hold everything"; it *offers* a few pieces at a time
//! (announced with `Have`) during the downloader's turn, and the downloader may ask only
//! for those:
//!
//! - **Offers.** A connection with a turn is offered up to [`OFFERS_OPEN`] pieces at
//!   once ([`OFFERS_OPEN_SPARE`] while nobody waits for a turn, topped up once half are
//!   taken), and another each time one is sent or the peer gets one elsewhere: each time
//!   the piece the peer lacks with the fewest copies in the swarm, then the fewest
//!   offers open, ties going to the first met in an order drawn at random. Copies are
//!   what this node knows: how often it sent the piece, or how many of its peers hold
//!   it (they say, with `Bitfield` and `Have`), whichever is more. A piece never sent
//!   goes before any piece sent, even one offered elsewhere and not yet asked for (that
//!   peer may be waiting for its next turn), so the first copy this node sends covers
//!   the whole file (super-seeding, from this node's own view). A piece with
//!   [`ENOUGH_COPIES`] out, counting open offers, that some peer holds is not offered
//!   at all, since the peer can get it from them (unless the peer has gained no piece,
//!   from this node or any other, for [`STARVING`]: it may not reach them, and at 64
//!   hosts a quarter of the leechers once sat two minutes this way, every owner they had
//!   a complete node that left the pieces to peers they could not reach); a piece
//!   never sent is offered however many offers of it are open, so the last pieces of a
//!   first copy go to whoever gets a turn first. Offers still open when their connection closes are taken back, and a
//!   piece no peer holds is always offerable, so no piece can be stranded by peers that
//!   left.
//! - **First copy first.** While some piece has no copy out at all, a request for a piece
//!   that has one (it went to another peer after this offer was made) is not answered with
//!   a second copy: the offer is withdrawn and another made in its place, so the seed's
//!   upload goes to the pieces nobody has. The peer gets the piece from its holder, or from
//!   this node once every piece has gone out once.
//!
//! A file being downloaded is not gated by offers: its owner tells everything it holds, and
//! turns alone decide when a peer may ask.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use crossbeam_channel::Sender;
use parking_lot::Mutex;

use super::schedule::Bitfield;

/// Pieces sent in one turn before the turn passes to the next connection in line.
pub(crate) const TURN_PIECES: u32 = 8;
/// Longest a turn lasts, however few pieces the peer asks for in it. With four peers served
/// at once on a capped uplink a piece takes about a second, so a turn is often one piece,
/// and a peer waiting in line for the few holders of a fresh piece waits less: at 32 and
/// 64 hosts 1.5 s gave a p50 of 1.32 and 1.35-1.38 x S/R, this 1.28 and 1.30-1.34 x.
pub(crate) const TURN_TIME: Duration = Duration::from_millis(750);
/// A turn whose peer has asked for nothing for this long (after the last piece went out)
/// passes on: the peer is getting what it needs elsewhere.
pub(crate) const TURN_IDLE: Duration = Duration::from_millis(250);
/// Pieces offered to one connection and not yet sent, at most.
pub(crate) const OFFERS_OPEN: usize = 4;
/// Pieces offered and not yet sent while nobody waits for a turn: enough to cover the
/// round trip from an offer to its request on a fast link.
pub(crate) const OFFERS_OPEN_SPARE: usize = 8;
/// A piece with this many copies out is not offered again.
pub(crate) const ENOUGH_COPIES: u32 = 2;
/// A peer that has gained no piece for this long, from this node or any other, is offered
/// what it lacks however many copies are out: the peers holding them may be out of its
/// reach.
pub(crate) const STARVING: Duration = Duration::from_secs(2);

/// What a node knows of one complete file's copies in the swarm, per piece.
#[derive(Debug, Default)]
pub(crate) struct Copies {
    /// Offers open now: made to a connection, not yet sent, not yet got elsewhere.
    pub open: Vec<u32>,
    /// Copies this node has sent.
    sent: Vec<u32>,
    /// Connected peers that hold it.
    held: Vec<u32>,
    /// How many pieces have each number of copies out (sent or held, whichever is more):
    /// the fewest of any piece, found without a look at every piece.
    by_copies: Vec<u32>,
}

impl Copies {
    /// Creates the book of a file of `pieces` pieces.
    pub fn new(pieces: u32) -> Self {
        let zeros = vec![0; pieces as usize];
        Self {
            open: zeros.clone(),
            sent: zeros.clone(),
            held: zeros,
            by_copies: vec![pieces],
        }
    }

    /// Counts the pieces of `bits` as held by one more peer (`add`) or one fewer.
    pub fn count(&mut self, bits: &Bitfield, add: bool) {
        for i in (0..bits.len()).filter(|&i| bits.get(i)) {
            self.change(i, |c| bump(&mut c.held, i, add));
        }
    }

    /// Counts piece `piece` as held by one more peer.
    pub fn add(&mut self, piece: u32) {
        self.change(piece, |c| bump(&mut c.held, piece, true));
    }

    /// Closes an open offer of `piece`: it was sent (`sent`), or the peer got it elsewhere
    /// or left without it.
    pub fn close(&mut self, piece: u32, sent: bool) {
        bump(&mut self.open, piece, false);
        if sent {
            self.change(piece, |c| bump(&mut c.sent, piece, true));
        }
    }

    /// Sets the copies of `piece` sent, as if sent that often.
    #[cfg(test)]
    fn set_sent(&mut self, piece: u32, n: u32) {
        self.change(piece, |c| c.sent[piece as usize] = n);
    }

    /// Applies `f` to `piece`'s counts, keeping the count of pieces by copies out.
    fn change(&mut self, piece: u32, f: impl FnOnce(&mut Self)) {
        let i = piece as usize;
        if i >= self.sent.len() {
            return;
        }
        let before = self.copies(i) as usize;
        f(self);
        let after = self.copies(i) as usize;
        if before != after {
            self.by_copies[before] -= 1;
            if self.by_copies.len() <= after {
                self.by_copies.resize(after + 1, 0);
            }
            self.by_copies[after] += 1;
        }
    }

    /// Copies of `piece` out: sent, or held by peers, whichever is more.
    fn copies(&self, piece: usize) -> u32 {
        self.sent[piece].max(self.held[piece])
    }

    /// Whether sending `piece` now would put a second copy out before the first copy of
    /// the file is: it was sent, or a peer holds it, and some piece has no copy out.
    pub fn ahead_of_first_copy(&self, piece: u32) -> bool {
        let i = piece as usize;
        i < self.sent.len() && self.copies(i) > 0 && self.fewest() == 0
    }

    /// The fewest copies out of any piece: no piece ranks before `(fewest, 0)`.
    fn fewest(&self) -> u32 {
        self.by_copies.iter().position(|&n| n > 0).unwrap_or(0) as u32
    }

    /// Copies out, as far as this node knows: what it put out (offers open and copies
    /// sent) or what its peers hold, whichever is more.
    fn out(&self, piece: usize) -> u32 {
        (self.open[piece] + self.sent[piece]).max(self.held[piece])
    }

    /// How soon `piece` should be offered, least first: the copies in the swarm (sent, or
    /// held by peers, whichever is more), then the offers open.
    fn rank(&self, piece: usize) -> (u32, u32) {
        (self.copies(piece), self.open[piece])
    }

    /// Whether `piece` needs no more copies from this node: enough are out, and either a
    /// peer holds it or an offer of it is open. A piece sent to peers that left, held by
    /// nobody and offered to nobody, is never stranded. A piece never sent is never
    /// enough, however many offers of it are open: at the end of a seed's first copy the
    /// last few pieces are offered to every peer whose turn comes, instead of pieces
    /// already out (at 64 hosts the seed sent 10 second copies while its last first
    /// copies waited for the two peers they were offered to).
    fn enough(&self, piece: usize) -> bool {
        if self.sent[piece] == 0 && self.held[piece] == 0 {
            return false;
        }
        self.out(piece) >= ENOUGH_COPIES && (self.held[piece] > 0 || self.open[piece] > 0)
    }
}

fn bump(counts: &mut [u32], piece: u32, up: bool) {
    if let Some(n) = counts.get_mut(piece as usize) {
        *n = if up {
            n.saturating_add(1)
        } else {
            n.saturating_sub(1)
        };
    }
}

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

    /// Returns whether any connection waits for a turn.
    pub fn anyone_waiting(&self) -> bool {
        !self.state.lock().waiting.is_empty()
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
/// offered on this connection (`told`), those with the fewest copies, then the fewest offers
/// open, first; among equals, the first met in an order drawn by `rng`. Opens an offer of
/// each one chosen.
///
/// A piece that has enough copies out ([`ENOUGH_COPIES`]) is left to the peers that hold it,
/// unless `spare`: the uplink has room to spare (nobody waits for a turn), for upload left
/// idle is lost, or the peer is starving ([`STARVING`]), for it may not reach the others.
///
/// One pass over the pieces, which stops once `n` pieces nobody has and nobody is offered
/// are found: a seed serving one fast downloader offers a piece for every piece it sends,
/// and a full pass per offer, drawing a random number per tied piece, cost the sending
/// thread as much as copying the data.
pub(crate) fn pick_offers(
    copies: &mut Copies,
    peer_has: &Bitfield,
    told: &Bitfield,
    n: usize,
    spare: bool,
    rng: &mut fastrand::Rng,
) -> Vec<u32> {
    let len = copies.open.len();
    if n == 0 || len == 0 {
        return Vec::new();
    }
    // The best found so far, least rank first; among equals the one met first stays. No
    // piece ranks before `floor`: once `n` are found there, the pass ends (without it, once
    // every piece had gone out once, every offer was a pass over the whole file).
    let floor = (copies.fewest(), 0);
    let mut best: Vec<((u32, u32), u32)> = Vec::with_capacity(n + 1);
    // The pieces in an order drawn at random: from a random start, in steps of a random
    // stride prime to their count, so every piece comes once. Not in plain order from a
    // random start: then the piece just past a run the peer holds came first for every
    // seed, and two seeds serving one downloader offered it the same pieces.
    let mut i = rng.usize(..len);
    let stride = loop {
        let s = rng.usize(1..len.max(2));
        if gcd(s, len) == 1 {
            break s;
        }
    };
    for _ in 0..len {
        i = (i + stride) % len;
        let rank = copies.rank(i);
        let worst = best.last().map(|&(r, _)| r);
        if best.len() == n && worst.is_some_and(|w| rank >= w) {
            continue;
        }
        let piece = i as u32;
        if (!spare && copies.enough(i)) || peer_has.get(piece) || told.get(piece) {
            continue;
        }
        let at = best.partition_point(|&(r, _)| r <= rank);
        best.insert(at, (rank, piece));
        best.truncate(n);
        if best.len() == n && best.last().is_some_and(|&(r, _)| r == floor) {
            break;
        }
    }
    let picked: Vec<u32> = best.into_iter().map(|(_, p)| p).collect();
    for &p in &picked {
        copies.open[p as usize] += 1;
    }
    picked
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two seeds serving one downloader that holds a run of pieces offer it different
    /// pieces, not both the pieces just past the run.
    #[test]
    fn two_seeds_offer_a_downloader_different_pieces() {
        let mut held = Bitfield::empty(1024);
        for p in 0..512 {
            held.set(p);
        }
        let nothing = Bitfield::empty(1024);
        let mut rng = fastrand::Rng::with_seed(7);
        let mut shared = 0;
        for _ in 0..100 {
            let a = pick_offers(&mut Copies::new(1024), &held, &nothing, 4, true, &mut rng);
            let b = pick_offers(&mut Copies::new(1024), &held, &nothing, 4, true, &mut rng);
            assert!(a.iter().chain(&b).all(|&p| !held.get(p)));
            shared += a.iter().filter(|p| b.contains(p)).count();
        }
        // At random, two sets of 4 among 512 share 0.03 pieces; in plain order from a
        // random start, half the time both begin at piece 512.
        assert!(shared <= 10, "{shared} pieces offered by both in 100 tries");
    }

    #[test]
    fn every_piece_is_offered_once_before_any_twice() {
        let mut copies = Copies::new(64);
        let mut rng = fastrand::Rng::with_seed(1);
        let nothing = Bitfield::empty(64);
        let mut seen = Vec::new();
        // Sixteen peers, four offers each: 64 offers, one per piece.
        for _ in 0..16 {
            seen.extend(pick_offers(
                &mut copies,
                &nothing,
                &nothing,
                4,
                false,
                &mut rng,
            ));
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..64).collect::<Vec<_>>());
        assert!(copies.open.iter().all(|&c| c == 1));
        let again = pick_offers(&mut copies, &nothing, &nothing, 1, false, &mut rng);
        assert_eq!(copies.open[again[0] as usize], 2);
    }

    /// A piece offered to a peer that has not asked yet (it may be waiting for its next
    /// turn) still goes before a piece already sent: a second copy waits for a first.
    #[test]
    fn a_piece_never_sent_goes_before_one_sent_though_offered_elsewhere() {
        let mut copies = Copies::new(2);
        let mut rng = fastrand::Rng::with_seed(6);
        let nothing = Bitfield::empty(2);
        copies.open[0] = 1;
        copies.set_sent(1, 1);
        assert_eq!(
            pick_offers(&mut copies, &nothing, &nothing, 2, false, &mut rng),
            [0, 1]
        );
    }

    #[test]
    fn pieces_peers_already_hold_go_last_and_enough_copies_not_at_all() {
        let mut copies = Copies::new(8);
        let mut rng = fastrand::Rng::with_seed(3);
        let mut two_peers = Bitfield::empty(8);
        (0..6).for_each(|i| two_peers.set(i));
        copies.count(&two_peers, true);
        copies.count(&two_peers, true);
        copies.add(6);
        let nothing = Bitfield::empty(8);
        // 7 is held by nobody, 6 by one peer, 0..6 by two: enough.
        assert_eq!(
            pick_offers(&mut copies, &nothing, &nothing, 8, false, &mut rng),
            [7, 6]
        );
        copies.count(&two_peers, false);
        copies.count(&two_peers, false);
        // The two peers left: 0..6 have no copy out now, and go before 6 and 7 (one each).
        let mut more = pick_offers(&mut copies, &nothing, &nothing, 6, false, &mut rng);
        more.sort_unstable();
        assert_eq!(more, [0, 1, 2, 3, 4, 5], "held by none once they left");
    }

    /// With nobody waiting for a turn, pieces with enough copies out are offered too,
    /// fewest out first: a peer that cannot reach the holders is not left beside an idle
    /// uplink.
    #[test]
    fn an_uplink_with_room_to_spare_offers_pieces_with_enough_copies() {
        let mut copies = Copies::new(4);
        let mut rng = fastrand::Rng::with_seed(5);
        let mut three = Bitfield::empty(4);
        (0..3).for_each(|i| three.set(i));
        for _ in 0..ENOUGH_COPIES {
            copies.count(&three, true);
        }
        copies.add(0);
        let nothing = Bitfield::empty(4);
        assert_eq!(
            pick_offers(&mut copies, &nothing, &nothing, 4, false, &mut rng),
            [3]
        );
        let mut spared = pick_offers(&mut copies, &nothing, &nothing, 4, true, &mut rng);
        assert_eq!(
            spared.pop(),
            Some(0),
            "the piece with most copies out goes last"
        );
        spared.sort_unstable();
        assert_eq!(spared, [1, 2, 3]);
    }

    /// At the end of a first copy, a piece never sent is offered to every peer whose turn
    /// comes, however many offers of it are open, before any piece already out.
    #[test]
    fn the_last_pieces_never_sent_go_to_every_peer_before_second_copies() {
        let mut copies = Copies::new(3);
        let mut rng = fastrand::Rng::with_seed(7);
        let nothing = Bitfield::empty(3);
        let mut one = Bitfield::empty(3);
        one.set(0);
        one.set(1);
        copies.count(&one, true);
        copies.set_sent(0, 1);
        copies.set_sent(1, 1);
        copies.open[2] = ENOUGH_COPIES + 3;
        assert_eq!(
            pick_offers(&mut copies, &nothing, &nothing, 1, false, &mut rng),
            [2]
        );
    }

    /// A piece sent twice to peers that have since left, held by nobody and offered to
    /// nobody, is offered again; while an offer of it is open, it is not.
    #[test]
    fn a_piece_sent_to_peers_that_left_is_offered_again() {
        let mut copies = Copies::new(2);
        let mut rng = fastrand::Rng::with_seed(4);
        let nothing = Bitfield::empty(2);
        let mut one = Bitfield::empty(2);
        one.set(1);
        copies.count(&one, true);
        copies.count(&one, true);
        copies.set_sent(0, 2);
        assert_eq!(
            pick_offers(&mut copies, &nothing, &nothing, 2, false, &mut rng),
            [0]
        );
        copies.open[0] += 1;
        assert_eq!(
            pick_offers(&mut copies, &nothing, &nothing, 2, false, &mut rng),
            Vec::<u32>::new()
        );
        copies.close(0, false);
        copies.close(0, false);
        assert_eq!(copies.open[0], 0);
    }

    #[test]
    fn offers_skip_what_the_peer_holds_or_was_told() {
        let mut copies = Copies::new(8);
        let mut rng = fastrand::Rng::with_seed(2);
        let mut has = Bitfield::empty(8);
        (0..4).for_each(|i| has.set(i));
        let mut told = Bitfield::empty(8);
        told.set(4);
        let mut got = pick_offers(&mut copies, &has, &told, 8, false, &mut rng);
        got.sort_unstable();
        assert_eq!(got, [5, 6, 7]);
    }

    /// Once every piece has gone out once, offers still go to the pieces with the fewest
    /// copies, and the count of pieces by copies out stays true to the pieces.
    #[test]
    fn after_a_first_copy_the_fewest_copies_go_first() {
        let n = 300u32;
        let mut copies = Copies::new(n);
        let mut rng = fastrand::Rng::with_seed(11);
        let nothing = Bitfield::empty(n);
        for p in 0..n {
            copies.set_sent(p, 1);
        }
        let mut twice = Bitfield::empty(n);
        (0..n).filter(|p| p % 3 != 0).for_each(|p| twice.set(p));
        copies.count(&twice, true);
        copies.count(&twice, true);
        assert_eq!(copies.fewest(), 1);
        let picked = pick_offers(&mut copies, &nothing, &nothing, 8, true, &mut rng);
        assert_eq!(picked.len(), 8);
        assert!(picked.iter().all(|p| p % 3 == 0), "{picked:?}");
        let mut recount = vec![0u32; 3];
        (0..n as usize).for_each(|i| recount[copies.copies(i) as usize] += 1);
        assert_eq!(copies.by_copies, recount);
        copies.count(&twice, false);
        copies.count(&twice, false);
        assert_eq!(copies.by_copies[1], n);
    }

    /// A turn handed to a connection in line is released by the same `end` that leaves the
    /// line, even if the connection never learned it had one (it no longer wanted any).
    #[test]
    fn a_turn_handed_over_is_released_by_end_even_unclaimed() {
        let turns = Turns::new(1);
        let (tx, _rx) = crossbeam_channel::bounded(1);
        let (tx2, rx2) = crossbeam_channel::bounded(1);
        assert!(turns.ask(1, &tx));
        assert!(!turns.ask(2, &tx2));
        turns.end(1);
        assert!(rx2.try_recv().is_ok() && turns.holds(2));
        // Connection 2 wakes, finds its peer wants nothing more, and ends.
        turns.end(2);
        let (tx3, _rx3) = crossbeam_channel::bounded(1);
        assert!(turns.ask(3, &tx3), "the slot is free again");
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
