//! The schedule's tests: shares, steals, retired slots, rarest first, withdrawn pieces
//! and the endgame.

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
