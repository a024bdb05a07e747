//! Owners that lie, stall or vanish; copies that change on disk; a tracker that is not
//! there. Every download that can finish must finish byte-exact.

mod common;

use std::time::{Duration, Instant};

use common::*;
use p2ptorrent::{Error, Event, TrackerClient};

const SIZE: u64 = 64 * 64 * 1024 + 777; // 65 pieces

/// An honest node sharing `name` (SIZE seeded bytes), a fake owner misbehaving as told and
/// ranked above it, and a downloader. Returns the download's report.
fn download_past(
    behaviour: Behaviour,
    tweak: fn(p2ptorrent::NodeConfig) -> p2ptorrent::NodeConfig,
) {
    let (tracker, _te) = start_tracker();
    let honest = start_node("honest", tracker.local_addr());
    write_random(&honest.path("f.bin"), 3, SIZE);
    honest.node.share("f.bin").unwrap();
    let fake = FakeOwner::start(
        &honest.path("f.bin"),
        "f.bin",
        tracker.local_addr(),
        behaviour,
    );
    let leech = start_node_with("leech", tracker.local_addr(), tweak);

    let report = leech.node.download("f.bin").unwrap().wait().unwrap();

    assert_same_file(&honest.path("f.bin"), &leech.path("f.bin"));
    assert!(part_files(leech.dir.path()).is_empty());
    let failed: Vec<_> = report.failed.iter().map(|(a, _)| *a).collect();
    // A misbehaving owner may simply be outrun: the honest one and the endgame can finish
    // before its timeout (a silent owner, which must then have sent nothing), or before it
    // was asked for a piece past the `n` after which it hangs up (on a loaded machine the
    // honest owner can take all the others: seen once in CI, the fake sent exactly its 5
    // and was asked for no more).
    let from_fake = report
        .from
        .iter()
        .find(|(a, _)| *a == fake.addr)
        .map_or(0, |(_, bytes)| *bytes);
    let outrun = match behaviour {
        Behaviour::Stall => from_fake == 0,
        Behaviour::HangUpAfter(n) => from_fake <= u64::from(n) * u64::from(PIECE),
        _ => false,
    };
    assert!(
        failed.contains(&fake.addr) || outrun,
        "{behaviour:?} owner not dropped: {:?}",
        report.failed
    );
    let honest_addr = honest.node.local_addr().port();
    assert!(report.from.iter().any(|(a, _)| a.port() == honest_addr));
    if behaviour == Behaviour::Corrupt {
        let rejected = wait_event(&leech.events, PATIENCE, |e| match e {
            Event::PieceRejected { from, .. } => Some(*from),
            _ => None,
        });
        assert_eq!(rejected, fake.addr);
        // The owner dropped for it is named as the tracker lists it.
        let dropped = wait_event(&leech.events, PATIENCE, |e| match e {
            Event::OwnerFailed { node, owner, .. } => Some((node.clone(), *owner)),
            _ => None,
        });
        assert_eq!(dropped, (format!("fake-{behaviour:?}"), fake.addr));
    }
    drop(fake);
    leech.shutdown();
    honest.shutdown();
    tracker.shutdown().unwrap();
}

#[test]
fn an_owner_sending_corrupt_pieces_is_dropped_and_the_copy_is_exact() {
    download_past(Behaviour::Corrupt, |c| c);
}

#[test]
fn an_owner_that_vanishes_mid_transfer_loses_its_work_to_the_others() {
    download_past(Behaviour::HangUpAfter(5), |c| c);
}

#[test]
fn an_owner_that_stops_answering_does_not_hold_the_download() {
    download_past(Behaviour::Stall, |mut c| {
        c.peer_timeout = Duration::from_millis(500);
        c
    });
}

#[test]
fn an_owner_with_a_forged_piece_list_is_not_believed() {
    // Owners are listed in random order, so the liar is first made the only one: its
    // piece list is refused and nothing is written. Then an honest owner joins.
    let (tracker, _te) = start_tracker();
    let original = tempfile::tempdir().unwrap();
    let path = original.path().join("f.bin");
    write_random(&path, 3, SIZE);
    let fake = FakeOwner::start(
        &path,
        "f.bin",
        tracker.local_addr(),
        Behaviour::ForgedPieceList,
    );
    let leech = start_node("leech", tracker.local_addr());
    let err = leech.node.download("f.bin").unwrap().wait().unwrap_err();
    let text = err.to_string();
    assert!(text.contains("content id does not match"), "{text}");
    assert!(part_files(leech.dir.path()).is_empty());
    let honest = start_node("honest", tracker.local_addr());
    std::fs::copy(&path, honest.path("f.bin")).unwrap();
    honest.node.share("f.bin").unwrap();
    leech.node.download("f.bin").unwrap().wait().unwrap();
    assert_same_file(&path, &leech.path("f.bin"));
    drop(fake);
    leech.shutdown();
    honest.shutdown();
    tracker.shutdown().unwrap();
}

/// An owner that answers a request with a Data header and then a byte a second (never
/// silent for the peer timeout) does not hold the download: the piece it keeps in flight is
/// asked of the honest owner too, and the file is byte-exact.
#[test]
fn an_owner_trickling_bytes_does_not_hold_the_download() {
    let (tracker, _te) = start_tracker();
    let honest = start_node("honest", tracker.local_addr());
    write_random(&honest.path("f.bin"), 5, SIZE);
    honest.node.share("f.bin").unwrap();
    let fake = FakeOwner::start(
        &honest.path("f.bin"),
        "f.bin",
        tracker.local_addr(),
        Behaviour::Trickle,
    );
    let leech = start_node("leech", tracker.local_addr());
    let report = leech
        .node
        .download("f.bin")
        .unwrap()
        .wait_timeout(PATIENCE)
        .expect("the trickler held the download")
        .unwrap();
    eprintln!(
        "{SIZE} bytes beside a trickling owner in {:?}",
        report.elapsed
    );
    assert_same_file(&honest.path("f.bin"), &leech.path("f.bin"));
    let honest_port = honest.node.local_addr().port();
    assert_eq!(report.from.len(), 1, "{:?}", report.from);
    assert_eq!(report.from[0].0.port(), honest_port);
    assert_eq!(report.from[0].1, SIZE);
    drop(fake);
    leech.shutdown();
    honest.shutdown();
    tracker.shutdown().unwrap();
}

#[test]
fn the_last_owner_failing_ends_the_download_with_a_clear_error() {
    let (tracker, _te) = start_tracker();
    let source = tempfile::tempdir().unwrap();
    write_random(&source.path().join("f.bin"), 4, SIZE);
    let fake = FakeOwner::start(
        &source.path().join("f.bin"),
        "f.bin",
        tracker.local_addr(),
        Behaviour::Corrupt,
    );
    let leech = start_node("leech", tracker.local_addr());
    let err = leech.node.download("f.bin").unwrap().wait().unwrap_err();
    assert!(matches!(err, Error::OwnersExhausted { .. }), "{err}");
    assert!(!leech.path("f.bin").exists());
    drop(fake);
    leech.shutdown();
    tracker.shutdown().unwrap();
}

/// A node hashed a good copy, announced it, and the copy changed afterwards with its
/// modification time put back, so the node cannot tell: its pieces fail verification at
/// the downloader, which takes them from the other owner.
#[test]
fn a_copy_changed_on_disk_after_announcing_corrupts_nobody() {
    let (tracker, _te) = start_tracker();
    // The good owner is capped (4 MiB take about 2 s), so the stale one is surely asked:
    // unlimited on loopback, the good one once sent the whole file in 28 ms, before the
    // stale one's connection was up, and nothing was there to drop.
    let good = start_node_with("good", tracker.local_addr(), |mut c| {
        c.upload_limit = Some(2 << 20);
        c
    });
    let stale = start_node_with("stale", tracker.local_addr(), |c| c);
    write_random(&good.path("f.bin"), 6, SIZE);
    std::fs::copy(good.path("f.bin"), stale.path("f.bin")).unwrap();
    good.node.share("f.bin").unwrap();
    stale.node.share("f.bin").unwrap();

    let path = stale.path("f.bin");
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.iter_mut().step_by(4096).for_each(|b| *b ^= 0x5A);
    std::fs::write(&path, &bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();

    let leech = start_node("leech", tracker.local_addr());
    let report = leech.node.download("f.bin").unwrap().wait().unwrap();
    assert_same_file(&good.path("f.bin"), &leech.path("f.bin"));
    // Both owners get a share; the stale one's first piece fails and it is dropped.
    assert!(
        report
            .failed
            .iter()
            .any(|(a, _)| *a == stale.node.local_addr()),
        "{report:?}"
    );
    leech.shutdown();
    stale.shutdown();
    good.shutdown();
    tracker.shutdown().unwrap();
}

/// The same, but the modification time moved: the node notices, refuses the request,
/// stops serving the file, and a later download completes from an owner with a good copy.
#[test]
fn a_node_stops_serving_a_copy_it_sees_changed() {
    let (tracker, _te) = start_tracker();
    let stale = start_node("stale", tracker.local_addr());
    write_random(&stale.path("f.bin"), 7, SIZE);
    let original = tempfile::tempdir().unwrap();
    std::fs::copy(stale.path("f.bin"), original.path().join("f.bin")).unwrap();
    stale.node.share("f.bin").unwrap();
    let path = stale.path("f.bin");
    std::fs::write(&path, vec![0u8; SIZE as usize]).unwrap();
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(later)
        .unwrap();

    let leech = start_node("leech", tracker.local_addr());
    let err = leech.node.download("f.bin").unwrap().wait().unwrap_err();
    assert!(matches!(err, Error::OwnersExhausted { .. }), "{err}");
    wait_event(&stale.events, PATIENCE, |e| {
        matches!(e, Event::FileChanged { .. }).then_some(())
    });
    assert!(stale.node.status().unwrap().shared.is_empty());

    let good = start_node("good", tracker.local_addr());
    std::fs::copy(original.path().join("f.bin"), good.path("f.bin")).unwrap();
    good.node.share("f.bin").unwrap();
    leech.node.download("f.bin").unwrap().wait().unwrap();
    assert_same_file(&good.path("f.bin"), &leech.path("f.bin"));
    leech.shutdown();
    stale.shutdown();
    good.shutdown();
    tracker.shutdown().unwrap();
}

#[test]
fn an_unreachable_tracker_gives_a_clear_error_in_bounded_time() {
    // A bound socket that never answers: every try times out.
    let silent = std::net::UdpSocket::bind(localhost()).unwrap();
    let addr = silent.local_addr().unwrap();
    let node = start_node("lonely", addr);
    let started = Instant::now();
    let err = node.node.download("f.bin").unwrap().wait().unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("tracker {addr} did not answer after 4 tries")
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    write_random(&node.path("g.bin"), 1, 10);
    let err = node.node.share("g.bin").unwrap_err();
    assert!(matches!(err, Error::TrackerUnreachable { .. }), "{err}");
    // Still served locally, and re-announced later.
    assert_eq!(node.node.status().unwrap().shared.len(), 1);
    node.shutdown();
}

#[test]
fn no_owner_is_a_clear_error() {
    let (tracker, _te) = start_tracker();
    let node = start_node("A", tracker.local_addr());
    let err = node.node.download("movie.bin").unwrap().wait().unwrap_err();
    assert_eq!(err.to_string(), "no node owns movie.bin");
    node.shutdown();
    tracker.shutdown().unwrap();
}

#[test]
fn a_dead_owner_listed_by_the_tracker_is_skipped() {
    let (tracker, _te) = start_tracker();
    let honest = start_node("honest", tracker.local_addr());
    write_random(&honest.path("f.bin"), 8, SIZE);
    honest.node.share("f.bin").unwrap();
    // Announce a node that is not listening: its connection is refused.
    let closed = std::net::TcpListener::bind(localhost()).unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let manifest =
        p2ptorrent::manifest::Manifest::from_file(&honest.path("f.bin"), Some(PIECE)).unwrap();
    TrackerClient::new(tracker.local_addr())
        .announce(p2ptorrent::messages::Announce {
            node: "ghost".into(),
            port,
            file: "f.bin".into(),
            content: manifest.content(),
            size: SIZE,
            pieces: manifest.piece_count(),
            complete: true,
            counters: p2ptorrent::messages::Counters {
                files_sent: 99,
                ..Default::default()
            },
        })
        .unwrap();
    let leech = start_node("leech", tracker.local_addr());
    let report = leech.node.download("f.bin").unwrap().wait().unwrap();
    assert_same_file(&honest.path("f.bin"), &leech.path("f.bin"));
    assert!(report.failed.iter().any(|(a, _)| a.port() == port));
    leech.shutdown();
    honest.shutdown();
    tracker.shutdown().unwrap();
}
