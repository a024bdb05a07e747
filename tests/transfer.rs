//! Byte-exact downloads through a real tracker from 1, 2 and 4 owners, for the sizes where
//! piece arithmetic goes wrong: empty, one byte, one piece ± 1, and over 100 MiB.

mod common;

use common::*;
use p2ptorrent::Event;

const BIG: u64 = 100 * 1024 * 1024 + 12_345;

fn sizes() -> Vec<(String, u64)> {
    let p = u64::from(PIECE);
    [0, 1, p - 1, p, p + 1, BIG]
        .into_iter()
        .map(|s| (format!("file-{s}.bin"), s))
        .collect()
}

/// `owners` nodes share every size (hard links of one generated copy each), a fresh node
/// downloads them all, and each download must match byte for byte and use every owner
/// for files with enough pieces.
fn swarm_delivers_exact_copies(owners: usize) {
    let (tracker, _te) = start_tracker();
    let source = tempfile::tempdir().unwrap();
    let seeders: Vec<TestNode> = (0..owners)
        .map(|i| start_node(&format!("S{i}"), tracker.local_addr()))
        .collect();
    for (seed, (name, size)) in sizes().into_iter().enumerate() {
        let original = source.path().join(&name);
        write_random(&original, seed as u64, size);
        for s in &seeders {
            std::fs::hard_link(&original, s.path(&name)).unwrap();
            s.node.share(&name).unwrap();
        }
    }
    let leech = start_node("L", tracker.local_addr());
    for (name, size) in sizes() {
        let report = leech.node.download(&name).unwrap().wait().unwrap();
        assert_eq!(report.size, size);
        assert_same_file(&source.path().join(&name), &leech.path(&name));
        assert!(report.failed.is_empty(), "{name}: {:?}", report.failed);
        if size == BIG {
            assert_eq!(
                report.from.len(),
                owners,
                "every owner should have served part of {name}"
            );
        }
    }
    assert!(part_files(leech.dir.path()).is_empty());
    // The downloader now owns every file, and the tracker knows it.
    let snapshot = tracker.snapshot();
    for (name, _) in sizes() {
        assert_eq!(snapshot.owners_of(&name).len(), owners + 1, "{name}");
    }
    leech.shutdown();
    seeders.into_iter().for_each(TestNode::shutdown);
    tracker.shutdown().unwrap();
}

#[test]
fn exact_copies_from_one_owner() {
    swarm_delivers_exact_copies(1);
}

#[test]
fn exact_copies_from_two_owners() {
    swarm_delivers_exact_copies(2);
}

#[test]
fn exact_copies_from_four_owners() {
    swarm_delivers_exact_copies(4);
}

#[test]
fn events_number_every_piece_on_both_sides() {
    let (tracker, _te) = start_tracker();
    let a = start_node("A", tracker.local_addr());
    let b = start_node("B", tracker.local_addr());
    write_random(&a.path("f.bin"), 9, u64::from(PIECE) * 5 + 3);
    a.node.share("f.bin").unwrap();
    b.node.download("f.bin").unwrap().wait().unwrap();
    let mut received: Vec<u32> = b
        .events
        .try_iter()
        .filter_map(|e| match e {
            Event::PieceReceived { piece, .. } => Some(piece),
            _ => None,
        })
        .collect();
    let mut sent: Vec<u32> = a
        .events
        .try_iter()
        .filter_map(|e| match e {
            Event::PieceSent { piece, .. } => Some(piece),
            _ => None,
        })
        .collect();
    received.sort_unstable();
    sent.sort_unstable();
    assert_eq!(received, (0..6).collect::<Vec<_>>());
    assert_eq!(sent, received);
    let status = a.node.status().unwrap();
    assert_eq!(status.counters.bytes_sent, u64::from(PIECE) * 5 + 3);
    assert_eq!(status.counters.files_sent, 1);
    b.shutdown();
    a.shutdown();
    tracker.shutdown().unwrap();
}

/// Without piece events, nodes say nothing per piece, yet the download ends the same, its
/// report and counters whole: a command line that neither prints nor draws them is not
/// woken thousands of times a second.
#[test]
fn piece_events_can_be_turned_off() {
    let (tracker, _te) = start_tracker();
    let a = start_node_with("A", tracker.local_addr(), |c| c.piece_events(false));
    let b = start_node_with("B", tracker.local_addr(), |c| c.piece_events(false));
    let size = u64::from(PIECE) * 5 + 3;
    write_random(&a.path("f.bin"), 9, size);
    a.node.share("f.bin").unwrap();
    let report = b.node.download("f.bin").unwrap().wait().unwrap();
    assert_eq!(report.pieces, 6);
    assert_same_file(&a.path("f.bin"), &b.path("f.bin"));
    let per_piece = |e: &Event| matches!(e, Event::PieceReceived { .. } | Event::PieceSent { .. });
    let (a_events, b_events): (Vec<Event>, Vec<Event>) =
        (a.events.try_iter().collect(), b.events.try_iter().collect());
    assert!(!a_events.iter().chain(&b_events).any(per_piece));
    assert!(
        b_events
            .iter()
            .any(|e| matches!(e, Event::DownloadFinished(_))),
        "{b_events:?}"
    );
    assert_eq!(b.node.status().unwrap().counters.bytes_received, size);
    assert_eq!(a.node.status().unwrap().counters.bytes_sent, size);
    b.shutdown();
    a.shutdown();
    tracker.shutdown().unwrap();
}

#[test]
fn an_existing_file_is_never_overwritten() {
    let (tracker, _te) = start_tracker();
    let a = start_node("A", tracker.local_addr());
    let b = start_node("B", tracker.local_addr());
    write_random(&a.path("f.bin"), 1, 1000);
    std::fs::write(b.path("f.bin"), b"mine").unwrap();
    a.node.share("f.bin").unwrap();
    let err = b.node.download("f.bin").unwrap().wait().unwrap_err();
    assert!(err.to_string().contains("f.bin already exists in"), "{err}");
    assert_eq!(std::fs::read(b.path("f.bin")).unwrap(), b"mine");
    b.shutdown();
    a.shutdown();
    tracker.shutdown().unwrap();
}

#[test]
fn a_download_resumes_from_a_part_file() {
    let (tracker, _te) = start_tracker();
    let a = start_node("A", tracker.local_addr());
    let b = start_node("B", tracker.local_addr());
    let size = u64::from(PIECE) * 8;
    write_random(&a.path("f.bin"), 5, size);
    a.node.share("f.bin").unwrap();
    // Half of the file already in place from "an earlier run", the rest zeros.
    let mut part = std::fs::read(a.path("f.bin")).unwrap();
    part[size as usize / 2..].fill(0);
    std::fs::write(b.path("f.bin.part"), &part).unwrap();
    plant_record(&b.path("f.bin.part"), &a.path("f.bin"));
    let report = b.node.download("f.bin").unwrap().wait().unwrap();
    assert_eq!(report.resumed, 4);
    assert_eq!(report.from.iter().map(|(_, n)| n).sum::<u64>(), size / 2);
    assert_same_file(&a.path("f.bin"), &b.path("f.bin"));
    b.shutdown();
    a.shutdown();
    tracker.shutdown().unwrap();
}

/// Offsets past 4 GiB, without moving 4 GiB: the file is sparse zeros except its last
/// MiB, and a new `.part` (sparse, of the right length) already holds every zero piece,
/// found from the piece hashes alone, so only the pieces beyond 4 GiB cross the wire and are
/// written there.
#[test]
fn files_over_4_gib_work() {
    use std::os::unix::fs::FileExt;
    let (tracker, _te) = start_tracker();
    let a = start_node("A", tracker.local_addr());
    let b = start_node("B", tracker.local_addr());
    let size: u64 = (4 << 30) + (1 << 20);
    let tail = {
        let mut t = vec![0u8; 1 << 20];
        fastrand::Rng::with_seed(4).fill(&mut t);
        t
    };
    let f = std::fs::File::create(a.path("huge.bin")).unwrap();
    f.set_len(size).unwrap();
    f.write_all_at(&tail, size - tail.len() as u64).unwrap();
    drop(f);
    a.node.share("huge.bin").unwrap();
    let report = b.node.download("huge.bin").unwrap().wait().unwrap();
    let tail_pieces = (1 << 20) / PIECE;
    assert_eq!(report.pieces - report.resumed, tail_pieces);
    assert_eq!(report.from.iter().map(|(_, n)| n).sum::<u64>(), 1 << 20);
    let got = std::fs::File::open(b.path("huge.bin")).unwrap();
    assert_eq!(got.metadata().unwrap().len(), size);
    let mut back = vec![0u8; 1 << 20];
    got.read_exact_at(&mut back, size - (1 << 20)).unwrap();
    assert!(back == tail, "the last MiB differs");
    b.shutdown();
    a.shutdown();
    tracker.shutdown().unwrap();
}
