//! The schedule against owners that offer a few pieces at a time.

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
