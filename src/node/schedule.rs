//! Which owner fetches which piece: the download scheduler.
//!
//! A [`Schedule`] starts from the original's rule: the missing pieces are divided among the
//! owners by [`split_pieces`], one contiguous share each. A worker takes pieces from its own
//! share; pieces an owner does not hold, and every piece of a worker that gave up, become
//! orphans that any worker takes first; a worker whose share runs dry takes the back half of
//! the largest remaining share (work stealing), so a slow owner never holds the rest up.
//!
//! In a swarm, owners hold different pieces, and which piece is asked first decides how
//! fast the swarm spreads: every take is of the rarest piece the owner holds (held by the
//! fewest of this download's owners, as they said), the shares only ordering pieces equally
//! rare. A piece a single leecher got from the seeder is then asked of it by everyone that
//! sees it, instead of waiting its turn in somebody's share.
//!
//! It is plain data, owned by the download's coordinator.

use std::collections::{HashSet, VecDeque};

use crate::split::split_pieces;

pub(crate) use super::bitfield::Bitfield;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PieceState {
    Done,
    Waiting,
    /// Requested from one owner, or from two in the endgame.
    InFlight,
}

/// The assignment of missing pieces to worker slots, one slot per owner.
#[derive(Debug)]
pub(crate) struct Schedule {
    state: Vec<PieceState>,
    queues: Vec<VecDeque<u32>>,
    /// Waiting pieces in no share (their owner lacked them or left): any worker whose
    /// owner holds one takes it first. Kept as a bitfield, cleared as a piece stops
    /// waiting: a seed that offers a few pieces at a time sends most of a share here, and
    /// a list looked through at every take cost a 131,072-piece download 16 s.
    orphans: Bitfield,
    /// How many orphans there are: a take looks for none when there are none.
    orphan_count: u32,
    alive: Vec<bool>,
    /// The pieces each slot has asked its owner for and not yet completed.
    in_flight: Vec<HashSet<u32>>,
    /// What each slot's owner holds, as it last said.
    holds: Vec<Bitfield>,
    /// How many live slots' owners hold each piece: rarer pieces go first.
    avail: Vec<u16>,
    /// The pieces waiting, as a bitfield, so a look for one skips eight at a time.
    waiting_bits: Bitfield,
    /// How many pieces wait at each availability: the least held by anyone, found without
    /// a look at every piece.
    waiting_at: Vec<u32>,
    /// Breaks ties among the rarest pieces, so downloaders of one file do not all ask for
    /// the same one; seeded, so a schedule is reproducible.
    rng: fastrand::Rng,
    done: u32,
}

/// How far into its share a worker looks for the rarest piece.
const RAREST_WINDOW: usize = 1024;

impl Schedule {
    /// Divides the pieces not in `done` among `slots` workers (at least one), the
    /// original's contiguous shares, starting at piece `start` and wrapping around.
    ///
    /// Downloads of the same file start at different pieces, so the first owner is not
    /// asked for the same pieces by everyone and the downloaders have pieces to trade.
    /// Every slot holds nothing until [`set_holdings`](Self::set_holdings) says otherwise.
    pub fn new(done: &Bitfield, slots: usize, start: u32) -> Self {
        let slots = slots.max(1);
        let n = done.len();
        let start = if n == 0 { 0 } else { start % n };
        let missing: Vec<u32> = (start..n)
            .chain(0..start)
            .filter(|&i| !done.get(i))
            .collect();
        let shares = split_pieces(missing.len() as u32, slots).unwrap_or_default();
        let queues = shares
            .into_iter()
            .map(|r| {
                missing[r.start as usize..r.end as usize]
                    .iter()
                    .copied()
                    .collect()
            })
            .collect();
        let state = (0..n)
            .map(|i| {
                if done.get(i) {
                    PieceState::Done
                } else {
                    PieceState::Waiting
                }
            })
            .collect();
        let mut waiting_bits = Bitfield::empty(n);
        missing.iter().for_each(|&p| waiting_bits.set(p));
        Self {
            state,
            queues,
            orphans: Bitfield::empty(n),
            orphan_count: 0,
            alive: vec![true; slots],
            in_flight: vec![HashSet::new(); slots],
            holds: vec![Bitfield::empty(n); slots],
            avail: vec![0; n as usize],
            waiting_at: vec![missing.len() as u32],
            waiting_bits,
            rng: fastrand::Rng::with_seed(u64::from(start)),
            done: done.count(),
        }
    }

    /// Adds a slot for an owner that joined mid-download; it starts with an empty share
    /// and takes orphans or steals. Returns its index.
    pub fn add_slot(&mut self) -> usize {
        self.queues.push(VecDeque::new());
        self.alive.push(true);
        self.in_flight.push(HashSet::new());
        self.holds.push(Bitfield::empty(self.state.len() as u32));
        self.queues.len() - 1
    }

    /// Records which pieces `slot`'s owner holds (at connect, and whenever it says again).
    pub fn set_holdings(&mut self, slot: usize, holds: Bitfield) {
        if !self.alive.get(slot).copied().unwrap_or(false) || holds.len() != self.state.len() as u32
        {
            return;
        }
        for i in 0..holds.len() {
            match (self.holds[slot].get(i), holds.get(i)) {
                (false, true) => self.shift_avail(i, true),
                (true, false) => self.shift_avail(i, false),
                _ => {}
            }
        }
        self.holds[slot] = holds;
    }

    /// Adds pieces `slot`'s owner now holds (or offers); pieces past the end are ignored.
    pub fn add_holdings(&mut self, slot: usize, pieces: &[u32]) {
        if !self.alive.get(slot).copied().unwrap_or(false) {
            return;
        }
        for &i in pieces {
            if i < self.holds[slot].len() && !self.holds[slot].get(i) {
                self.holds[slot].set(i);
                self.shift_avail(i, true);
            }
        }
    }

    /// Removes pieces `slot`'s owner no longer offers; pieces past the end are ignored.
    pub fn remove_holdings(&mut self, slot: usize, pieces: &[u32]) {
        if !self.alive.get(slot).copied().unwrap_or(false) {
            return;
        }
        for &i in pieces {
            if self.holds[slot].get(i) {
                self.holds[slot].unset(i);
                self.shift_avail(i, false);
            }
        }
    }

    /// Takes back piece `piece` from `slot` (its owner will not send it): unless another
    /// owner is fetching it too, it waits for whichever owner takes it next.
    pub fn unassign(&mut self, slot: usize, piece: u32) {
        let Some(pieces) = self.in_flight.get_mut(slot) else {
            return;
        };
        if !pieces.remove(&piece) {
            return;
        }
        let elsewhere = self.in_flight.iter().any(|other| other.contains(&piece));
        if self.state.get(piece as usize) == Some(&PieceState::InFlight) && !elsewhere {
            self.set_state(piece, PieceState::Waiting);
            self.orphan(piece);
        }
    }

    /// Returns how many slots there are, live or retired.
    pub fn slots(&self) -> usize {
        self.queues.len()
    }

    /// Returns whether `slot`'s owner holds a piece not yet done.
    pub fn useful(&self, slot: usize) -> bool {
        self.holds.get(slot).is_some_and(|h| {
            (0..h.len()).any(|i| h.get(i) && self.state[i as usize] != PieceState::Done)
        })
    }

    /// Returns whether a live slot other than `slot` holds `piece`.
    pub fn held_elsewhere(&self, slot: usize, piece: u32) -> bool {
        (0..self.holds.len()).any(|s| s != slot && self.alive[s] && self.holds[s].get(piece))
    }

    /// Hands slot `slot` its next piece, one its owner holds, and marks it in flight.
    /// Returns `None` if there is nothing it can take now.
    ///
    /// The piece is one of the rarest its owner holds (held by the fewest live owners), so
    /// the pieces few peers have spread first and downloaders have something to trade.
    /// Among those it prefers orphans, then its own share, then half of the largest other
    /// share (stolen): where every owner holds everything, all pieces are equally rare and
    /// this is the original's contiguous shares with work stealing. Only a rarer piece
    /// queued elsewhere is taken out of turn.
    pub fn take(&mut self, slot: usize) -> Option<u32> {
        if !self.alive.get(slot).copied().unwrap_or(false) {
            return None;
        }
        // Moved out for the call (not cloned: this runs for every piece) and put back.
        let has = std::mem::replace(&mut self.holds[slot], Bitfield::empty(0));
        let piece = self
            .take_rarest(slot, &has)
            .or_else(|| self.take_endgame(slot, &has));
        self.holds[slot] = has;
        let piece = piece?;
        self.set_state(piece, PieceState::InFlight);
        self.in_flight[slot].insert(piece);
        Some(piece)
    }

    fn take_rarest(&mut self, slot: usize, has: &Bitfield) -> Option<u32> {
        // Looked for from the front of its own share, where its next piece most likely is.
        let near = self.queues[slot].front().map_or(0, |&p| p as usize / 8);
        let rarest = self.rarest_held(has, near)?;
        if let Some(p) = self.take_orphan(has, rarest, near) {
            return Some(p);
        }
        if let Some(p) = self.take_own(slot, has, rarest) {
            return Some(p);
        }
        if self.queues[slot].iter().all(|&p| !self.waiting(p)) {
            self.steal(slot, has);
            if let Some(p) = self.take_own(slot, has, rarest) {
                return Some(p);
            }
        }
        // A rarer piece sits in another share: taken from there, the first met from a
        // place drawn at random (its queue entry is skipped once it is no longer waiting).
        let start = self.rng.usize(..self.waiting_bits.as_bytes().len().max(1));
        self.held_waiting(has, start)
            .find(|&p| self.avail[p as usize] == rarest)
    }

    /// The least availability among the waiting pieces `has` holds, looked for from byte
    /// `start` of the bitfield on. A look stops at the least of any waiting piece held by
    /// someone, so where every owner holds everything
    /// it stops at the first: a look at every piece per take cost a 131,072-piece
    /// download (16 KiB pieces, as a sharer may choose) 23 s of this thread.
    fn rarest_held(&self, has: &Bitfield, start: usize) -> Option<u16> {
        let floor = self
            .waiting_at
            .iter()
            .skip(1)
            .position(|&n| n > 0)
            .map(|i| i as u16 + 1)?;
        let mut least: Option<u16> = None;
        for p in self.held_waiting(has, start) {
            let a = self.avail[p as usize];
            if least.is_none_or(|l| a < l) {
                least = Some(a);
                if a <= floor {
                    break;
                }
            }
        }
        least
    }

    /// The waiting pieces `has` holds, from about byte `start` of the bitfield on,
    /// wrapping around.
    fn held_waiting<'a>(
        &'a self,
        has: &'a Bitfield,
        start: usize,
    ) -> impl Iterator<Item = u32> + 'a {
        ones([has.as_bytes(), self.waiting_bits.as_bytes()], start)
    }

    /// Moves `piece` to state `new`, keeping the waiting pieces' counts.
    fn set_state(&mut self, piece: u32, new: PieceState) {
        let Some(old) = self.state.get(piece as usize).copied() else {
            return;
        };
        if old == new {
            return;
        }
        let a = self.avail[piece as usize] as usize;
        if old == PieceState::Waiting {
            self.waiting_bits.unset(piece);
            self.unorphan(piece);
            self.waiting_at[a] -= 1;
        }
        if new == PieceState::Waiting {
            self.waiting_bits.set(piece);
            if self.waiting_at.len() <= a {
                self.waiting_at.resize(a + 1, 0);
            }
            self.waiting_at[a] += 1;
        }
        self.state[piece as usize] = new;
    }

    /// One more (`up`) or one fewer live owner holds `piece`.
    fn shift_avail(&mut self, piece: u32, up: bool) {
        let i = piece as usize;
        let old = self.avail[i];
        let new = if up {
            old.saturating_add(1)
        } else {
            old.saturating_sub(1)
        };
        if new == old {
            return;
        }
        self.avail[i] = new;
        if self.state[i] == PieceState::Waiting {
            self.waiting_at[old as usize] -= 1;
            if self.waiting_at.len() <= new as usize {
                self.waiting_at.resize(new as usize + 1, 0);
            }
            self.waiting_at[new as usize] += 1;
        }
    }

    /// Makes waiting `piece` an orphan.
    fn orphan(&mut self, piece: u32) {
        if !self.orphans.get(piece) {
            self.orphans.set(piece);
            self.orphan_count += 1;
        }
    }

    /// `piece` is no longer an orphan (taken, or no longer waiting).
    fn unorphan(&mut self, piece: u32) {
        if self.orphans.get(piece) {
            self.orphans.unset(piece);
            self.orphan_count -= 1;
        }
    }

    fn waiting(&self, piece: u32) -> bool {
        self.state.get(piece as usize) == Some(&PieceState::Waiting)
    }

    /// The endgame: with nothing left to hand out, asks this owner too for a piece in
    /// flight at one other owner, so the slowest owner does not hold up the finish.
    /// Whichever copy verifies first counts; the other is dropped on arrival, and the
    /// download breaks its connections once the file is complete.
    fn take_endgame(&mut self, slot: usize, has: &Bitfield) -> Option<u32> {
        if self.waiting_at.iter().any(|&n| n > 0) {
            return None;
        }
        let mut asked: Vec<u32> = self
            .in_flight
            .iter()
            .enumerate()
            .filter(|&(s, _)| s != slot)
            .flat_map(|(_, pieces)| pieces.iter().copied())
            .filter(|&p| {
                // A piece still claimed by a slow owner may be done already.
                self.state[p as usize] == PieceState::InFlight
                    && has.get(p)
                    && !self.in_flight[slot].contains(&p)
            })
            .collect();
        asked.sort_unstable();
        // Only pieces asked of exactly one other owner: at most two copies of any piece.
        let once = asked
            .iter()
            .enumerate()
            .find(|&(i, p)| asked.get(i + 1) != Some(p) && (i == 0 || asked[i - 1] != *p));
        once.map(|(_, &p)| p)
    }

    /// The first orphan this owner holds that is `rarest`, looked for from byte `start`.
    fn take_orphan(&mut self, has: &Bitfield, rarest: u16, start: usize) -> Option<u32> {
        if self.orphan_count == 0 {
            return None;
        }
        let p = ones(
            [
                has.as_bytes(),
                self.orphans.as_bytes(),
                self.waiting_bits.as_bytes(),
            ],
            start,
        )
        .find(|&p| self.avail[p as usize] == rarest)?;
        self.unorphan(p);
        Some(p)
    }

    /// A piece of `slot`'s own share that is `rarest`, near the front, at random among
    /// equals.
    fn take_own(&mut self, slot: usize, has: &Bitfield, rarest: u16) -> Option<u32> {
        // Pieces at the front this owner lacks become orphans for owners that have them;
        // pieces no longer waiting are dropped.
        while let Some(&p) = self.queues[slot].front() {
            if !self.waiting(p) {
                self.queues[slot].pop_front();
            } else if has.get(p) {
                break;
            } else {
                self.queues[slot].pop_front();
                self.orphan(p);
            }
        }
        // The first fit from a random place in the window, wrapping: where every piece fits
        // (one owner holds them all) this looks at one, not the whole window.
        let queue = &self.queues[slot];
        let window = queue.len().min(RAREST_WINDOW);
        let from = self.rng.usize(..window.max(1));
        let at = (0..window).map(|k| (from + k) % window).find(|&i| {
            let p = queue[i];
            self.waiting(p) && has.get(p) && self.avail[p as usize] == rarest
        })?;
        self.queues[slot].remove(at)
    }

    /// Moves to `slot` up to half (rounded up) of the largest other live share that holds
    /// a piece `slot`'s owner has: the pieces nearest its end that the owner has. Shares are
    /// tried largest first, so a piece only one owner offers is found wherever it is queued.
    fn steal(&mut self, slot: usize, has: &Bitfield) {
        let mut victims: Vec<usize> = (0..self.queues.len())
            .filter(|&v| v != slot && self.alive[v] && !self.queues[v].is_empty())
            .collect();
        victims.sort_by_key(|&v| std::cmp::Reverse(self.queues[v].len()));
        for victim in victims {
            let mut queue = std::mem::take(&mut self.queues[victim]);
            queue.retain(|&p| self.state[p as usize] == PieceState::Waiting);
            // Half, rounded up: a queue of one is stolen too, or its last piece would wait.
            let want = queue.len().div_ceil(2);
            let mut kept = VecDeque::with_capacity(queue.len());
            let mut taken = VecDeque::with_capacity(want);
            while let Some(p) = queue.pop_back() {
                if taken.len() < want && has.get(p) {
                    taken.push_front(p);
                } else {
                    kept.push_front(p);
                }
            }
            self.queues[victim] = kept;
            if !taken.is_empty() {
                self.queues[slot].extend(taken);
                return;
            }
        }
    }

    /// Records that piece `piece`, fetched by `slot`, is verified and written. Returns
    /// whether it was newly done (not the second copy of an endgame piece).
    pub fn complete(&mut self, slot: usize, piece: u32) -> bool {
        if let Some(pieces) = self.in_flight.get_mut(slot) {
            pieces.remove(&piece);
        }
        match self.state.get(piece as usize) {
            None | Some(PieceState::Done) => return false,
            Some(_) => {}
        }
        self.set_state(piece, PieceState::Done);
        self.done += 1;
        true
    }

    /// `slot` delivered a copy of `piece` that another owner's copy was written before:
    /// it is no longer in flight there, and the piece is done when that copy's report
    /// arrives.
    pub fn landed_elsewhere(&mut self, slot: usize, piece: u32) {
        if let Some(pieces) = self.in_flight.get_mut(slot) {
            pieces.remove(&piece);
        }
    }

    /// Retires `slot`: its share and its pieces in flight become orphans for the others.
    pub fn retire(&mut self, slot: usize) {
        if !self.alive.get(slot).copied().unwrap_or(false) {
            return;
        }
        let holds = std::mem::replace(&mut self.holds[slot], Bitfield::empty(0));
        for i in (0..holds.len()).filter(|&i| holds.get(i)) {
            self.shift_avail(i, false);
        }
        self.alive[slot] = false;
        let queue = std::mem::take(&mut self.queues[slot]);
        for p in queue {
            if self.waiting(p) {
                self.orphan(p);
            }
        }
        // Pieces asked of this owner alone go back; endgame copies still coming from
        // another owner stay in flight there.
        let pieces = std::mem::take(&mut self.in_flight[slot]);
        for p in pieces {
            let elsewhere = self.in_flight.iter().any(|other| other.contains(&p));
            if self.state[p as usize] == PieceState::InFlight && !elsewhere {
                self.set_state(p, PieceState::Waiting);
                self.orphan(p);
            }
        }
    }

    /// Returns whether another live slot still has pieces queued or in flight, which may
    /// yet come back as orphans.
    #[cfg(test)]
    pub fn others_busy(&self, slot: usize) -> bool {
        (0..self.queues.len()).any(|s| {
            s != slot
                && self.alive[s]
                && (!self.in_flight[s].is_empty() || !self.queues[s].is_empty())
        })
    }

    /// Returns whether every piece is done.
    pub fn is_complete(&self) -> bool {
        self.done as usize == self.state.len()
    }

    /// Returns how many pieces are done.
    pub fn done_count(&self) -> u32 {
        self.done
    }

    /// Returns the pieces done, as a bitfield.
    pub fn done_bitfield(&self) -> Bitfield {
        let mut b = Bitfield::empty(self.state.len() as u32);
        for (i, s) in self.state.iter().enumerate() {
            if *s == PieceState::Done {
                b.set(i as u32);
            }
        }
        b
    }
}

/// The pieces set in every one of `fields` (bitfields as bytes, piece 0 the high bit of
/// byte 0), in order from the 8-byte word holding byte `start`, wrapping around. Words
/// with nothing set in all of them are passed over whole: a look through a seed's few
/// offers in a 131,072-piece file tests 2,048 words, not 131,072 bits.
fn ones<const K: usize>(fields: [&[u8]; K], start: usize) -> impl Iterator<Item = u32> + '_ {
    let bytes = fields.iter().map(|f| f.len()).min().unwrap_or(0);
    let words = bytes.div_ceil(8);
    let first = if words == 0 { 0 } else { (start / 8) % words };
    (0..words).flat_map(move |k| {
        let w = (first + k) % words;
        let mut bits = fields
            .iter()
            .fold(u64::MAX, |acc, f| acc & word(&f[..bytes], w));
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let at = bits.leading_zeros();
            bits &= !(1u64 << (63 - at));
            Some(w as u32 * 64 + at)
        })
    })
}

/// Bytes `8 * w ..` of `bytes` as a big-endian word, zero past the end.
fn word(bytes: &[u8], w: usize) -> u64 {
    if let Some(whole) = bytes.get(w * 8..w * 8 + 8) {
        let mut buf = [0u8; 8];
        buf.copy_from_slice(whole);
        return u64::from_be_bytes(buf);
    }
    let from = (w * 8).min(bytes.len());
    let to = (from + 8).min(bytes.len());
    let mut buf = [0u8; 8];
    buf[..to - from].copy_from_slice(&bytes[from..to]);
    u64::from_be_bytes(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A schedule whose slots hold what `holds` says.
    fn schedule(done: &Bitfield, holds: &[Bitfield]) -> Schedule {
        let mut s = Schedule::new(done, holds.len(), 0);
        for (slot, h) in holds.iter().enumerate() {
            s.set_holdings(slot, h.clone());
        }
        s
    }

    fn drain(s: &mut Schedule, slot: usize) -> Vec<u32> {
        let mut got = Vec::new();
        while let Some(p) = s.take(slot) {
            assert!(s.complete(slot, p));
            got.push(p);
        }
        got
    }

    fn sorted(mut v: Vec<u32>) -> Vec<u32> {
        v.sort_unstable();
        v
    }

    #[test]
    fn owners_start_on_the_original_contiguous_shares() {
        let full = Bitfield::full(10);
        let mut s = schedule(&Bitfield::empty(10), &[full.clone(), full]);
        let first: Vec<u32> = (0..5).map(|_| s.take(0).unwrap()).collect();
        let second: Vec<u32> = (0..5).map(|_| s.take(1).unwrap()).collect();
        assert_eq!(sorted(first), [0, 1, 2, 3, 4]);
        assert_eq!(sorted(second), [5, 6, 7, 8, 9]);
    }

    #[test]
    fn done_pieces_are_not_scheduled() {
        let mut done = Bitfield::empty(6);
        [0, 1, 2].iter().for_each(|&i| done.set(i));
        let mut s = schedule(&done, &[Bitfield::full(6)]);
        assert_eq!(sorted(drain(&mut s, 0)), [3, 4, 5]);
        assert!(s.is_complete());
    }

    #[test]
    fn an_idle_worker_steals_until_nothing_waits_then_doubles_the_slow_piece() {
        let full = Bitfield::full(12);
        let mut s = schedule(&Bitfield::empty(12), &[full.clone(), full]);
        // Slot 1 finishes its six pieces while slot 0 is stuck on its first.
        let stuck = s.take(0).unwrap();
        assert!(stuck < 6);
        let got = drain(&mut s, 1);
        // Half at a time, rounded up, down to the last piece: all of slot 0's waiting work,
        // then (the endgame) a second copy of the piece stuck at slot 0.
        let mut expected: Vec<u32> = (0..12).collect();
        expected.retain(|&p| p != stuck);
        expected.push(stuck);
        assert_eq!(sorted(got), sorted(expected));
        assert!(s.is_complete());
        assert_eq!(s.take(0), None);
    }

    #[test]
    fn a_retired_slot_hands_back_its_share_and_its_pieces_in_flight() {
        let full = Bitfield::full(8);
        let mut s = schedule(&Bitfield::empty(8), &[full.clone(), full]);
        assert!(s.take(0).unwrap() < 4);
        assert!(s.take(0).unwrap() < 4);
        s.retire(0);
        assert_eq!(s.take(0), None);
        assert_eq!(sorted(drain(&mut s, 1)), (0..8).collect::<Vec<_>>());
        assert!(s.is_complete());
        assert!(!s.others_busy(1));
    }

    #[test]
    fn pieces_an_owner_lacks_go_to_those_that_hold_them() {
        let mut evens = Bitfield::empty(6);
        [0, 2, 4].iter().for_each(|&i| evens.set(i));
        let mut s = schedule(&Bitfield::empty(6), &[evens, Bitfield::full(6)]);
        assert_eq!(sorted(drain(&mut s, 0)), [0, 2, 4]);
        assert_eq!(sorted(drain(&mut s, 1)), [1, 3, 5]);
        assert!(s.is_complete());
    }

    #[test]
    fn an_empty_file_is_complete_at_once() {
        let s = Schedule::new(&Bitfield::empty(0), 3, 7);
        assert!(s.is_complete());
    }

    #[test]
    fn shares_start_where_asked_and_wrap_around() {
        let full = Bitfield::full(6);
        let mut s = Schedule::new(&Bitfield::empty(6), 2, 4);
        s.set_holdings(0, full.clone());
        s.set_holdings(1, full);
        let first: Vec<u32> = (0..3).map(|_| s.take(0).unwrap()).collect();
        let second: Vec<u32> = (0..3).map(|_| s.take(1).unwrap()).collect();
        assert_eq!(sorted(first), [0, 4, 5]);
        assert_eq!(sorted(second), [1, 2, 3]);
    }

    #[test]
    fn the_rarest_pieces_are_asked_of_the_owner_that_alone_holds_them() {
        // Slot 0 is a seeder; slot 1 (joined later) holds pieces 0 to 2.
        let mut s = schedule(&Bitfield::empty(6), &[Bitfield::full(6)]);
        let peer = s.add_slot();
        let mut some = Bitfield::empty(6);
        [0, 1, 2].iter().for_each(|&i| some.set(i));
        s.set_holdings(peer, some);
        // The seeder is asked first for what only it has.
        let rare = [s.take(0).unwrap(), s.take(0).unwrap()];
        assert!(rare.iter().all(|p| (3..6).contains(p)), "{rare:?}");
        // The peer steals what it holds from the seeder's share.
        assert_eq!(sorted(drain(&mut s, peer)), [0, 1, 2]);
        s.retire(peer);
        let last = drain(&mut s, 0);
        assert_eq!(last.len(), 1);
        assert!((3..6).contains(&last[0]) && !rare.contains(&last[0]));
    }

    /// A piece only this owner holds goes first, though it is queued in another share.
    #[test]
    fn a_rarer_piece_in_another_share_is_taken_out_of_turn() {
        let all = Bitfield::full(8);
        let mut most = Bitfield::empty(8);
        (0..8).filter(|&i| i != 6).for_each(|i| most.set(i));
        let mut s = schedule(&Bitfield::empty(8), &[all, most]);
        assert_eq!(s.take(0), Some(6), "held by slot 0 alone");
        assert!(s.complete(0, 6));
        // The rest are equally rare: slot 0 goes back to its own share.
        assert!((0..4).contains(&s.take(0).unwrap()));
        let own: Vec<u32> = (0..3).filter_map(|_| s.take(1)).collect();
        assert_eq!(sorted(own), [4, 5, 7], "slot 1's share, less piece 6");
    }

    /// A withdrawn offer: the owner no longer holds the piece for this download, and a
    /// piece asked of it alone goes to the next owner that holds it.
    #[test]
    fn a_withdrawn_piece_goes_back_to_waiting_for_another_owner() {
        let mut offered = Bitfield::empty(4);
        offered.set(0);
        let mut s = schedule(&Bitfield::empty(4), &[offered, Bitfield::empty(4)]);
        assert_eq!(s.take(0), Some(0));
        s.remove_holdings(0, &[0]);
        s.unassign(0, 0);
        assert_eq!(s.take(0), None, "no longer offered");
        s.add_holdings(1, &[0]);
        assert_eq!(s.take(1), Some(0), "waiting again, for whoever holds it");
        s.unassign(0, 0);
        assert_eq!(
            s.take(1),
            None,
            "unassigning twice does not hand it out twice"
        );
    }

    #[test]
    fn in_the_endgame_a_piece_in_flight_is_asked_of_one_more_owner() {
        let full = Bitfield::full(2);
        let mut s = schedule(&Bitfield::empty(2), &[full.clone(), full.clone(), full]);
        let first = s.take(0).unwrap();
        let second = s.take(1).unwrap();
        // Slot 2 has nothing left but copies of what the others are fetching.
        let copy = s.take(2).unwrap();
        let other_copy = s.take(2).unwrap();
        assert_eq!(sorted(vec![copy, other_copy]), sorted(vec![first, second]));
        assert_eq!(s.take(2), None, "at most two copies of a piece");
        let holder = if copy == first { 0 } else { 1 };
        assert!(s.complete(2, copy), "the first copy to verify counts");
        assert!(!s.complete(holder, copy), "the second is dropped");
        // Slot 2 gives up: its copy of the other piece is still coming from its holder.
        s.retire(2);
        assert!(!s.is_complete());
        assert!(s.complete(1 - holder, other_copy));
        assert!(s.is_complete());
    }

    #[test]
    fn the_endgame_never_hands_out_a_piece_already_done() {
        let full = Bitfield::full(2);
        let mut s = schedule(
            &Bitfield::empty(2),
            &[full.clone(), full.clone(), full.clone(), full],
        );
        let first = s.take(0).unwrap();
        let second = s.take(1).unwrap();
        let copy = s.take(2).unwrap();
        // The copy verifies first; its holder's request is still open.
        assert!(s.complete(2, copy));
        let other = if copy == first { second } else { first };
        assert_eq!(s.take(3), Some(other));
        assert_eq!(s.take(3), None);
        assert!(s.complete(3, other));
        assert!(s.is_complete());
        assert_eq!(s.done_count(), 2);
    }
}

#[cfg(test)]
mod offered {
    use super::*;

    /// An owner that offers pieces a few at a time, in random order: every piece is taken
    /// exactly once, and the last one too (a queue of one can be stolen).
    #[test]
    fn pieces_offered_a_few_at_a_time_are_each_taken_once() {
        for seed in 0..200u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let n = 65;
            let mut s = Schedule::new(&Bitfield::empty(n), 3, rng.u32(..));
            s.set_holdings(0, Bitfield::empty(n));
            // Slot 1 holds a few pieces and stays idle; slot 2 holds nothing.
            let mut few = Bitfield::empty(n);
            (0..n).step_by(7).for_each(|i| few.set(i));
            s.set_holdings(1, few);
            let mut order: Vec<u32> = (0..n).collect();
            rng.shuffle(&mut order);
            let mut taken = Vec::new();
            let mut offered = order.chunks(4);
            while s.done_count() < n {
                if let Some(more) = offered.next() {
                    s.add_holdings(0, more);
                }
                while let Some(p) = s.take(0) {
                    taken.push(p);
                    s.complete(0, p);
                }
                if offered.len() == 0 && s.take(0).is_none() && s.done_count() < n {
                    panic!("seed {seed}: stuck at {} of {n}", s.done_count());
                }
            }
            let mut sorted = taken.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(
                sorted.len(),
                taken.len(),
                "seed {seed}: a piece taken twice"
            );
        }
    }

    /// The waiting pieces' counts and bits agree with the pieces' states, piece by piece.
    fn assert_counts(s: &Schedule) {
        let mut at = vec![0u32; s.waiting_at.len().max(1)];
        let mut orphans = 0;
        for (i, st) in s.state.iter().enumerate() {
            let waiting = *st == PieceState::Waiting;
            assert_eq!(s.waiting_bits.get(i as u32), waiting, "bit of piece {i}");
            assert!(
                waiting || !s.orphans.get(i as u32),
                "piece {i} is an orphan but not waiting"
            );
            orphans += u32::from(s.orphans.get(i as u32));
            if waiting {
                let a = s.avail[i] as usize;
                if at.len() <= a {
                    at.resize(a + 1, 0);
                }
                at[a] += 1;
            }
        }
        at.resize(s.waiting_at.len().max(at.len()), 0);
        let mut kept = s.waiting_at.clone();
        kept.resize(at.len(), 0);
        assert_eq!(kept, at);
        assert_eq!(s.orphan_count, orphans, "orphans counted");
    }

    /// A seed offers a few pieces at a time, in an order of its own: the share laid out
    /// for it goes to the orphans as its front is found not offered, and every piece is
    /// still taken once, each as soon as it is offered. (Kept as a list looked through at
    /// every take, the orphans cost a 131,072-piece download 16 s of this thread.)
    #[test]
    fn a_seed_offering_a_few_pieces_at_a_time_is_taken_whole_each_piece_once() {
        let n = 16_384u32;
        let mut s = Schedule::new(&Bitfield::empty(n), 1, 0);
        let mut offers = (0..n).map(|k| (u64::from(k) * 7_919 % u64::from(n)) as u32);
        let mut open = 0;
        let mut seen = Bitfield::empty(n);
        for taken in 1..=n {
            while open < 8
                && let Some(p) = offers.next()
            {
                s.add_holdings(0, &[p]);
                open += 1;
            }
            let p = s.take(0).expect("an offered piece is waiting");
            assert!(!seen.get(p), "piece {p} taken twice");
            seen.set(p);
            open -= 1;
            assert!(s.complete(0, p));
            if taken % 1_000 == 0 {
                assert_counts(&s);
            }
        }
        assert!(s.is_complete() && s.take(0).is_none());
        assert_counts(&s);
    }

    /// The joint look goes word by word from the word of its start byte, wraps around,
    /// and finds pieces in a last, partial word.
    #[test]
    fn the_joint_look_finds_every_common_piece_from_its_start() {
        let n = 150u32;
        let mut a = Bitfield::empty(n);
        let mut b = Bitfield::empty(n);
        for p in [0, 3, 63, 64, 100, 127, 128, 149] {
            a.set(p);
        }
        for p in [3, 64, 65, 100, 149] {
            b.set(p);
        }
        let from_start: Vec<u32> = ones([a.as_bytes(), b.as_bytes()], 0).collect();
        assert_eq!(from_start, [3, 64, 100, 149]);
        let wrapped: Vec<u32> = ones([a.as_bytes(), b.as_bytes()], 9).collect();
        assert_eq!(wrapped, [64, 100, 149, 3], "from the second word, wrapping");
        let none = Bitfield::empty(n);
        assert_eq!(ones([a.as_bytes(), none.as_bytes()], 5).count(), 0);
        assert_eq!(
            ones([a.as_bytes()], 100).count(),
            8,
            "a start past the end wraps"
        );
    }

    /// A file of the most pieces a manifest allows, from one owner: every piece is taken
    /// once, and the look for the rarest stops at the first (a look at every piece per
    /// take cost this 23 s of the coordinator's thread).
    #[test]
    fn the_largest_file_from_one_owner_is_taken_whole_each_piece_once() {
        let n = crate::split::MAX_PIECES;
        let mut s = Schedule::new(&Bitfield::empty(n), 1, 0);
        s.set_holdings(0, Bitfield::full(n));
        let mut seen = Bitfield::empty(n);
        while let Some(p) = s.take(0) {
            assert!(!seen.get(p), "piece {p} taken twice");
            seen.set(p);
            assert!(s.complete(0, p));
        }
        assert!(s.is_complete());
        assert_eq!(seen.count(), n);
        assert_counts(&s);
    }

    /// Owners that hold different pieces, join, leave, withdraw and come back: the counts
    /// the rarest look relies on stay true to the pieces, and every piece is done once.
    #[test]
    fn the_waiting_counts_stay_true_through_holdings_that_change() {
        let n = 500u32;
        let mut rng = fastrand::Rng::with_seed(7);
        let holds: Vec<Bitfield> = (0..3)
            .map(|_| {
                let mut b = Bitfield::empty(n);
                (0..n).filter(|_| rng.bool()).for_each(|i| b.set(i));
                b
            })
            .collect();
        let mut s = Schedule::new(&Bitfield::empty(n), holds.len(), 0);
        for (slot, h) in holds.into_iter().enumerate() {
            s.set_holdings(slot, h);
        }
        assert_counts(&s);
        let late = s.add_slot();
        s.set_holdings(late, Bitfield::full(n));
        let mut done = 0;
        for round in 0.. {
            for slot in [0, 1, 2, late] {
                if let Some(p) = s.take(slot) {
                    if round % 7 == 3 {
                        s.remove_holdings(slot, &[p]);
                        s.unassign(slot, p);
                        s.add_holdings(slot, &[p]);
                    } else if s.complete(slot, p) {
                        done += 1;
                    }
                }
                assert_counts(&s);
            }
            if round == 40 {
                s.retire(1);
                assert_counts(&s);
            }
            if s.is_complete() || round > 10_000 {
                break;
            }
        }
        assert!(s.is_complete());
        assert_eq!(done, n);
    }
}
