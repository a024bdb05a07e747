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
mod tests;

#[cfg(test)]
mod offered;
