//! Staying power and swarming: rate limits, resume, partial owners, owners that join
//! mid-download, a tracker that restarts.

mod common;

use common::*;

const MIB: u64 = 1 << 20;

/// Downloads `size` bytes from one owner and returns the achieved bytes per second.
fn measured_rate(size: u64, up: Option<u64>, down: Option<u64>) -> f64 {
    let (tracker, _te) = start_tracker();
    let seeder = start_node_with("seeder", tracker.local_addr(), |mut c| {
        c.upload_limit = up;
        c
    });
    let leech = start_node_with("leech", tracker.local_addr(), |mut c| {
        c.download_limit = down;
        c
    });
    write_random(&seeder.path("f.bin"), 1, size);
    seeder.node.share("f.bin").unwrap();
    let report = leech.node.download("f.bin").unwrap().wait().unwrap();
    assert_same_file(&seeder.path("f.bin"), &leech.path("f.bin"));
    leech.shutdown();
    seeder.shutdown();
    tracker.shutdown().unwrap();
    size as f64 / report.elapsed.as_secs_f64()
}

#[test]
fn upload_and_download_limits_are_never_passed_by_more_than_five_percent() {
    let limit = 8 * MIB;
    for (up, down) in [(Some(limit), None), (None, Some(limit))] {
        let rate = measured_rate(16 * MIB, up, down);
        let ratio = rate / limit as f64;
        eprintln!(
            "limit {limit} B/s up {up:?} down {down:?}: measured {rate:.0} B/s ({:+.2}%)",
            (ratio - 1.0) * 100.0
        );
        // The limit is a ceiling: never more than 5 % over it. Under it is the machine's
        // doing when other tests load it (alone, this lands within 0.3 %), so only a
        // limiter that throttles far too hard fails below.
        assert!(
            (0.5..1.05).contains(&ratio),
            "up {up:?} down {down:?}: measured {rate:.0} B/s, {:+.1}% off the limit",
            (ratio - 1.0) * 100.0
        );
    }
}

fn tracker_with_interval(
    secs: u64,
) -> (
    p2ptorrent::Tracker,
    crossbeam_channel::Receiver<p2ptorrent::TrackerEvent>,
) {
    let config =
        p2ptorrent::TrackerConfig::new(localhost()).interval(std::time::Duration::from_secs(secs));
    p2ptorrent::Tracker::start(config).unwrap()
}

/// Writes `name.part` into `node`'s folder holding the pieces of `original` in `pieces`
/// and zeros elsewhere, with its resume record, as an interrupted download leaves them.
fn plant_part(
    node: &TestNode,
    original: &std::path::Path,
    name: &str,
    pieces: std::ops::Range<u64>,
) {
    let mut bytes = std::fs::read(original).unwrap();
    let piece = u64::from(PIECE) as usize;
    for (i, chunk) in bytes.chunks_mut(piece).enumerate() {
        if !pieces.contains(&(i as u64)) {
            chunk.fill(0);
        }
    }
    let part = node.path(&format!("{name}.part"));
    std::fs::write(&part, bytes).unwrap();
    plant_record(&part, original);
}

/// Two nodes that each hold half the pieces (their downloads stalled by a download limit
/// so low it never lets a piece through) serve a third a complete, exact copy after the
/// only complete owner has left.
#[test]
fn two_partial_owners_holding_half_each_serve_a_complete_download() {
    let (tracker, _te) = tracker_with_interval(1);
    let seeder = start_node("seeder", tracker.local_addr());
    let size = 32 * u64::from(PIECE);
    write_random(&seeder.path("f.bin"), 2, size);
    seeder.node.share("f.bin").unwrap();
    let stuck = |name: &str| {
        start_node_with(name, tracker.local_addr(), |mut c| {
            c.download_limit = Some(1);
            c
        })
    };
    let (p1, p2) = (stuck("P1"), stuck("P2"));
    plant_part(&p1, &seeder.path("f.bin"), "f.bin", 0..16);
    plant_part(&p2, &seeder.path("f.bin"), "f.bin", 16..32);
    let _d1 = p1.node.download("f.bin").unwrap();
    let _d2 = p2.node.download("f.bin").unwrap();
    wait_until("both partial owners announced", PATIENCE, || {
        let owners = tracker.snapshot();
        let partial = owners
            .owners_of("f.bin")
            .iter()
            .filter(|o| !o.complete && o.pieces == 16)
            .count();
        if partial == 2 { Ok(()) } else { Err(owners) }
    });
    let original = seeder.path("f.bin");
    let kept = tempfile::tempdir().unwrap();
    std::fs::copy(&original, kept.path().join("f.bin")).unwrap();
    seeder.shutdown();

    let leech = start_node("leech", tracker.local_addr());
    let report = leech.node.download("f.bin").unwrap().wait().unwrap();
    assert_same_file(&kept.path().join("f.bin"), &leech.path("f.bin"));
    let from: Vec<(std::net::SocketAddr, u64)> = report.from.clone();
    assert_eq!(from.len(), 2, "{from:?}");
    for (addr, bytes) in from {
        assert_eq!(bytes, 16 * u64::from(PIECE), "{addr} served {bytes}");
    }
    leech.shutdown();
    p1.shutdown();
    p2.shutdown();
    tracker.shutdown().unwrap();
}

/// An owner that appears while a download runs is found at the next interval and used.
#[test]
fn a_downloader_picks_up_an_owner_that_appears_mid_download() {
    let (tracker, _te) = tracker_with_interval(1);
    let slow = start_node_with("slow", tracker.local_addr(), |mut c| {
        c.upload_limit = Some(2 * MIB);
        c
    });
    let size = 16 * MIB;
    write_random(&slow.path("f.bin"), 3, size);
    slow.node.share("f.bin").unwrap();
    let leech = start_node("leech", tracker.local_addr());
    let download = leech.node.download("f.bin").unwrap();
    wait_event(&leech.events, PATIENCE, |e| {
        matches!(e, p2ptorrent::Event::PieceReceived { .. }).then_some(())
    });
    let fast = start_node("fast", tracker.local_addr());
    std::fs::copy(slow.path("f.bin"), fast.path("f.bin")).unwrap();
    fast.node.share("f.bin").unwrap();

    let report = download.wait().unwrap();
    assert_same_file(&slow.path("f.bin"), &leech.path("f.bin"));
    let from_fast = report
        .from
        .iter()
        .find(|(a, _)| *a == fast.node.local_addr())
        .map_or(0, |(_, n)| *n);
    assert!(
        from_fast > 0,
        "the new owner served nothing: {:?}",
        report.from
    );
    leech.shutdown();
    fast.shutdown();
    slow.shutdown();
    tracker.shutdown().unwrap();
}

/// A downloader stopped midway leaves its `.part`; a node started again on the same folder
/// (under another name) fetches only what is missing.
#[test]
fn a_downloader_stopped_midway_resumes_and_fetches_only_what_is_missing() {
    let size = 8 * MIB;
    let run = Interrupted::new(size, 40);
    let folder = &run.folder;
    // The record lists what was synced; the resumed download verifies every piece again.
    let recorded = run.listed().len();
    assert!(recorded >= 40, "recorded {recorded}");

    let (second, _events) =
        p2ptorrent::Node::start(config("second", folder.path(), run.tracker.local_addr())).unwrap();
    let report = second.download("f.bin").unwrap().wait().unwrap();
    assert!(report.resumed >= 40, "resumed {}", report.resumed);
    let fetched: u64 = report.from.iter().map(|(_, n)| n).sum();
    assert_eq!(fetched, size - u64::from(report.resumed) * u64::from(PIECE));
    assert_same_file(&run.seeder.path("f.bin"), &folder.path().join("f.bin"));
    assert!(!folder.path().join("f.bin.part.state").exists());
    second.shutdown().unwrap();
    run.shutdown();
}

/// A tracker restarted on the same address mid-download is refilled by the nodes'
/// re-announces within an interval, and the download goes on meanwhile.
#[test]
fn a_restarted_tracker_is_refilled_and_downloads_go_on() {
    let (tracker, _te) = tracker_with_interval(1);
    let addr = tracker.local_addr();
    let seeder = start_node_with("seeder", addr, |mut c| {
        c.upload_limit = Some(4 * MIB);
        c
    });
    let size = 12 * MIB;
    write_random(&seeder.path("f.bin"), 5, size);
    seeder.node.share("f.bin").unwrap();
    let leech = start_node("leech", addr);
    let download = leech.node.download("f.bin").unwrap();
    wait_event(&leech.events, PATIENCE, |e| {
        matches!(e, p2ptorrent::Event::PieceReceived { .. }).then_some(())
    });
    tracker.shutdown().unwrap();
    let config = p2ptorrent::TrackerConfig::new(addr).interval(std::time::Duration::from_secs(1));
    let (tracker, _te) = p2ptorrent::Tracker::start(config).unwrap();
    assert!(tracker.snapshot().files.is_empty());
    wait_until(
        "the seeder to re-announce",
        std::time::Duration::from_secs(10),
        || {
            let t = tracker.snapshot();
            if t.owners_of("f.bin")
                .iter()
                .any(|o| o.node == "seeder" && o.complete)
            {
                Ok(())
            } else {
                Err(t)
            }
        },
    );
    download.wait().unwrap();
    assert_same_file(&seeder.path("f.bin"), &leech.path("f.bin"));
    leech.shutdown();
    seeder.shutdown();
    tracker.shutdown().unwrap();
}

/// A swarm on loopback: a tracker (1 s interval), a seeder sharing `size` seeded bytes
/// under an upload limit of `limit`, and `n` leechers that all start downloading at once.
/// Every node is 127.0.0.1 here, so the per-address connection cap meant for the internet
/// is lifted. Waits for every download and checks each copy byte for byte; returns the
/// parts and the reports for further checks.
struct Swarm {
    tracker: p2ptorrent::Tracker,
    seeder: TestNode,
    leeches: Vec<TestNode>,
    reports: Vec<p2ptorrent::DownloadReport>,
}

impl Swarm {
    fn run(n: usize, size: u64, limit: u64, seed: u64) -> Self {
        let (tracker, _te) = tracker_with_interval(1);
        let many = |c: p2ptorrent::NodeConfig| c.max_connections(256, 256);
        let seeder = start_node_with("seeder", tracker.local_addr(), |c| {
            let mut c = many(c);
            c.upload_limit = Some(limit);
            c
        });
        write_random(&seeder.path("f.bin"), seed, size);
        seeder.node.share("f.bin").unwrap();
        let leeches: Vec<TestNode> = (0..n)
            .map(|i| start_node_with(&format!("L{i}"), tracker.local_addr(), many))
            .collect();
        let downloads: Vec<_> = leeches
            .iter()
            .map(|l| l.node.download("f.bin").unwrap())
            .collect();
        let reports = leeches
            .iter()
            .zip(downloads)
            .map(|(l, d)| {
                // Far past any honest finish: a leecher left with owners that give it
                // nothing sat until their idle timeout, two minutes.
                let report = d
                    .wait_timeout(PATIENCE)
                    .expect("a leecher stalled")
                    .unwrap();
                assert_same_file(&seeder.path("f.bin"), &l.path("f.bin"));
                report
            })
            .collect();
        Self {
            tracker,
            seeder,
            leeches,
            reports,
        }
    }

    /// Copies of the file the seeder sent.
    fn seeder_copies(&self, size: u64) -> f64 {
        let sent = self.seeder.node.status().unwrap().counters.bytes_sent;
        sent as f64 / size as f64
    }

    fn shutdown(self) {
        self.leeches.into_iter().for_each(TestNode::shutdown);
        self.seeder.shutdown();
        self.tracker.shutdown().unwrap();
    }
}

/// One seeder capped at R and four leechers started together: all finish byte-exact, and
/// the seeder sends well under the four copies a client-server design would, because the
/// leechers trade pieces. (`benches/swarm.rs` measures the time against S/R.)
#[test]
fn leechers_trade_pieces_so_the_seeder_sends_little_more_than_one_copy() {
    let size = 8 * MIB;
    let swarm = Swarm::run(4, size, 4 * MIB, 6);
    let copies = swarm.seeder_copies(size);
    eprintln!("seeder sent {copies:.2} copies");
    // A client-server design sends 4.
    assert!(copies < 1.75, "the seeder sent {copies:.2} copies");
    swarm.shutdown();
}

/// Sixteen leechers on loopback with a capped seeder: every one of them uploads something
/// (the swarm does not freeze into a star) and the seeder sends under 1.5 copies.
#[test]
fn sixteen_leechers_all_upload_and_the_seeder_sends_under_one_and_a_half_copies() {
    let size = 8 * MIB;
    let swarm = Swarm::run(16, size, 4 * MIB, 16);
    let copies = swarm.seeder_copies(size);
    eprintln!("seeder sent {copies:.2} copies");
    assert!(copies < 1.5, "the seeder sent {copies:.2} copies");
    for l in &swarm.leeches {
        let status = l.node.status().unwrap();
        assert!(
            status.counters.bytes_sent > 0,
            "{} uploaded nothing",
            status.name
        );
    }
    swarm.shutdown();
}

/// A leecher that holds every piece publishes at once, though a listed owner accepted its
/// connection and never answers: with a peer timeout of an hour, waiting for that
/// connection would hold the download for an hour.
#[test]
fn a_complete_download_publishes_while_an_owner_never_answers() {
    let (tracker, _te) = start_tracker();
    let seeder = start_node("seeder", tracker.local_addr());
    write_random(&seeder.path("f.bin"), 17, 2 * MIB);
    seeder.node.share("f.bin").unwrap();
    // An owner that accepts connections and never says a word. It is listed as partial so
    // the piece list comes from the seeder (complete owners are listed first); a download
    // worker still connects to it.
    let mute = std::net::TcpListener::bind(localhost()).unwrap();
    let manifest =
        p2ptorrent::manifest::Manifest::from_file(&seeder.path("f.bin"), Some(PIECE)).unwrap();
    p2ptorrent::TrackerClient::new(tracker.local_addr())
        .announce(p2ptorrent::messages::Announce {
            node: "mute".into(),
            port: mute.local_addr().unwrap().port(),
            file: "f.bin".into(),
            content: manifest.content(),
            size: manifest.size(),
            pieces: manifest.piece_count() / 2,
            complete: false,
            counters: p2ptorrent::messages::Counters::default(),
        })
        .unwrap();
    let leech = start_node_with("leech", tracker.local_addr(), |mut c| {
        c.peer_timeout = std::time::Duration::from_secs(3600);
        c
    });
    let download = leech.node.download("f.bin").unwrap();
    // The mute owner was connected to: a worker waits on it.
    let (held, _) = mute.accept().unwrap();
    let report = download
        .wait_timeout(PATIENCE)
        .expect("published without waiting for the mute owner")
        .unwrap();
    assert_eq!(report.from.len(), 1);
    assert_same_file(&seeder.path("f.bin"), &leech.path("f.bin"));
    drop(held);
    leech.shutdown();
    seeder.shutdown();
    tracker.shutdown().unwrap();
}

/// Sixty-four downloaders under an upload limit all finish: the limited node serves by
/// turns and in 16 KiB quanta, so nobody waits long enough to trip a timeout.
#[test]
fn sixty_four_downloaders_under_an_upload_limit_all_finish() {
    let swarm = Swarm::run(64, MIB, 2 * MIB, 64);
    for report in &swarm.reports {
        let silent = report.failed.iter().any(|(_, why)| why.contains("silent"));
        assert!(!silent, "{:?}", report.failed);
    }
    swarm.shutdown();
}

/// A torn resume record (cut short, or altered) cannot prove that the `.part` beside it is
/// this node's: the download refuses, and both files are left byte for byte.
#[test]
fn a_torn_resume_record_is_refused_and_nothing_is_touched() {
    let (tracker, _te) = start_tracker();
    let seeder = start_node("seeder", tracker.local_addr());
    let size = 16 * u64::from(PIECE);
    write_random(&seeder.path("f.bin"), 7, size);
    seeder.node.share("f.bin").unwrap();
    let leech = start_node("leech", tracker.local_addr());
    plant_part(&leech, &seeder.path("f.bin"), "f.bin", 0..4);
    let record = leech.path("f.bin.part.state");
    let whole = std::fs::read(&record).unwrap();
    std::fs::write(&record, &whole[..whole.len() - 5]).unwrap();
    let part_before = std::fs::read(leech.path("f.bin.part")).unwrap();
    let err = leech.node.download("f.bin").unwrap().wait().unwrap_err();
    assert!(
        matches!(err, p2ptorrent::Error::NotOurs { ref path, .. } if *path == record),
        "{err}"
    );
    assert_eq!(std::fs::read(&record).unwrap(), whole[..whole.len() - 5]);
    assert_eq!(
        std::fs::read(leech.path("f.bin.part")).unwrap(),
        part_before
    );
    assert!(!leech.path("f.bin").exists());
    leech.shutdown();
    seeder.shutdown();
    tracker.shutdown().unwrap();
}

/// A seed with one upload slot and 256 KiB pieces at 512 KiB/s serves four downloaders in
/// turn, as a seed on a capped uplink does in a swarm. At the end of each turn it
/// withdraws the pieces it offered and did not send, and drops the requests for them; the
/// downloader, waiting for its next turn (longer than its peer timeout) while the seed
/// serves the others, owes nothing, and does not take the seed's silence for a stall.
/// Counting those requests as owed dropped the seed at every such turn.
#[test]
fn a_seed_serving_others_in_turn_is_not_dropped_as_silent() {
    let (tracker, _te) = start_tracker();
    let seeder = start_node_with("seeder", tracker.local_addr(), |c| {
        c.upload_slots(1)
            .upload_limit(MIB / 2)
            .piece_size(256 * 1024)
    });
    write_random(&seeder.path("f.bin"), 9, 4 * MIB);
    seeder.node.share("f.bin").unwrap();
    let leeches: Vec<TestNode> = (0..4)
        .map(|i| {
            start_node_with(&format!("L{i}"), tracker.local_addr(), |mut c| {
                c.peer_timeout = std::time::Duration::from_secs(1);
                c
            })
        })
        .collect();
    let downloads: Vec<_> = leeches
        .iter()
        .map(|l| l.node.download("f.bin").unwrap())
        .collect();
    for (l, d) in leeches.iter().zip(downloads) {
        let report = d.wait().unwrap();
        assert_same_file(&seeder.path("f.bin"), &l.path("f.bin"));
        let silent: Vec<_> = report
            .failed
            .iter()
            .filter(|(_, why)| why.contains("silent"))
            .collect();
        assert!(silent.is_empty(), "owners dropped as silent: {silent:?}");
    }
    leeches.into_iter().for_each(TestNode::shutdown);
    seeder.shutdown();
    tracker.shutdown().unwrap();
}

/// A downloader learns of a peer that connects to it holding pieces of the same file, and
/// fetches from it, though no tracker it asks lists that peer. A fetches from a slow
/// seeder through tracker T1; B, holding the second half already, knows only tracker T2,
/// where A is listed. B connects to A to fetch, and its `Hello` names its port: A's
/// download takes B in at once (before, A could learn of B only from a tracker, up to an
/// announce interval later, and here never).
#[test]
fn a_downloader_fetches_from_a_peer_that_connected_to_it() {
    let (t1, _e1) = tracker_with_interval(1);
    let (t2, _e2) = tracker_with_interval(1);
    let seeder = start_node_with("seeder", t1.local_addr(), |c| c.upload_limit(128 * 1024));
    let size = 32 * u64::from(PIECE);
    write_random(&seeder.path("f.bin"), 21, size);
    seeder.node.share("f.bin").unwrap();
    let a = start_node("A", t1.local_addr());
    let a_download = a.node.download("f.bin").unwrap();
    // A serves the file once it holds a piece; listed at T2 before that, it refused B,
    // and B gave up on it (on a loaded machine, one run in ten).
    wait_event(&a.events, PATIENCE, |e| {
        matches!(e, p2ptorrent::Event::PieceReceived { .. }).then_some(())
    });

    let b = start_node("B", t2.local_addr());
    plant_part(&b, &seeder.path("f.bin"), "f.bin", 16..32);
    announce_as(
        t2.local_addr(),
        "A",
        a.node.local_addr().port(),
        &seeder.path("f.bin"),
        1,
        false,
    );
    let b_download = b.node.download("f.bin").unwrap();

    let report = a_download.wait().unwrap();
    assert_same_file(&seeder.path("f.bin"), &a.path("f.bin"));
    let from_b = report
        .from
        .iter()
        .find(|(addr, _)| addr.port() == b.node.local_addr().port())
        .map_or(0, |(_, bytes)| *bytes);
    assert!(from_b > 0, "A fetched nothing from B: {:?}", report.from);
    b_download.wait().unwrap();
    assert_same_file(&seeder.path("f.bin"), &b.path("f.bin"));
    for node in [a, b, seeder] {
        node.shutdown();
    }
    t1.shutdown().unwrap();
    t2.shutdown().unwrap();
}

/// A tracker can list a node before its download has the piece list to serve (here the
/// test announces it): the node refuses, "not shared", and the downloader asks it again
/// after a backoff instead of giving up on it, which left the download with no owner.
#[test]
fn an_owner_listed_before_it_serves_the_file_is_asked_again() {
    let (t1, _e1) = tracker_with_interval(1);
    let (t2, _e2) = tracker_with_interval(1);
    let seeder = start_node("seeder", t1.local_addr());
    write_random(&seeder.path("f.bin"), 25, 8 * u64::from(PIECE));
    seeder.node.share("f.bin").unwrap();
    let a = start_node("A", t1.local_addr());
    announce_as(
        t2.local_addr(),
        "A",
        a.node.local_addr().port(),
        &seeder.path("f.bin"),
        8,
        true,
    );
    let b = start_node("B", t2.local_addr());
    let b_download = b.node.download("f.bin").unwrap();
    let refusal = wait_event(&b.events, PATIENCE, |e| match e {
        p2ptorrent::Event::OwnerFailed { error, .. } => Some(error.clone()),
        _ => None,
    });
    assert!(refusal.contains("does not share"), "{refusal}");
    a.node.download("f.bin").unwrap().wait().unwrap();
    let report = b_download.wait().unwrap();
    assert_same_file(&seeder.path("f.bin"), &b.path("f.bin"));
    assert_eq!(report.from.len(), 1, "{:?}", report.from);
    for node in [a, b, seeder] {
        node.shutdown();
    }
    t1.shutdown().unwrap();
    t2.shutdown().unwrap();
}

/// A complete owner that keeps a downloader waiting and never offers it a piece does not
/// hold the download, though complete owners are otherwise kept for their place in line:
/// once nothing has arrived for a while, it is replaced by an owner waiting to be tried,
/// even with one owner slot. (It held the slot until it closed the connection; at 64 hosts
/// leechers whose every owner was a seed offering nothing sat two minutes.)
#[test]
fn a_complete_owner_that_offers_nothing_is_replaced_once_the_download_stalls() {
    let (tracker, _te) = start_tracker();
    let seeder = start_node("seeder", tracker.local_addr());
    write_random(&seeder.path("f.bin"), 27, 8 * u64::from(PIECE));
    // The only owner listed when the download starts: it takes the one owner slot.
    let fake = FakeOwner::start(
        &seeder.path("f.bin"),
        "f.bin",
        tracker.local_addr(),
        Behaviour::SilentSeed,
    );
    let leech = start_node_with("leech", tracker.local_addr(), |c| c.max_owners(1));
    let download = leech.node.download("f.bin").unwrap();
    wait_event(&leech.events, PATIENCE, |e| {
        matches!(e, p2ptorrent::Event::DownloadStarted { .. }).then_some(())
    });
    seeder.node.share("f.bin").unwrap();
    let report = download
        .wait_timeout(std::time::Duration::from_secs(30))
        .expect("the download stalled behind the owner that offers nothing")
        .unwrap();
    assert_same_file(&seeder.path("f.bin"), &leech.path("f.bin"));
    assert_eq!(
        report.from,
        [(seeder.node.local_addr(), 8 * u64::from(PIECE))]
    );
    drop(fake);
    leech.shutdown();
    seeder.shutdown();
    tracker.shutdown().unwrap();
}

/// A complete owner that gives a downloader its turn and offers nothing in it is telling
/// the downloader to get those pieces elsewhere: it is replaced by an owner waiting to be
/// tried even while the download moves (here slowly, from a capped seed), not kept for
/// its place in line. Kept, it held one of two owner slots to the end, and the fast seed
/// that arrived meanwhile was never asked.
#[test]
fn a_complete_owner_that_offers_nothing_in_its_turn_is_replaced_while_the_download_moves() {
    let (tracker, _te) = start_tracker();
    let slow = start_node_with("slow", tracker.local_addr(), |c| c.upload_limit(MIB / 4));
    write_random(&slow.path("f.bin"), 29, 32 * u64::from(PIECE));
    slow.node.share("f.bin").unwrap();
    let fake = FakeOwner::start(
        &slow.path("f.bin"),
        "f.bin",
        tracker.local_addr(),
        Behaviour::OffersNothing,
    );
    let leech = start_node_with("leech", tracker.local_addr(), |c| c.max_owners(2));
    let download = leech.node.download("f.bin").unwrap();
    wait_event(&leech.events, PATIENCE, |e| {
        matches!(e, p2ptorrent::Event::DownloadStarted { .. }).then_some(())
    });
    let fast = start_node("fast", tracker.local_addr());
    std::fs::copy(slow.path("f.bin"), fast.path("f.bin")).unwrap();
    fast.node.share("f.bin").unwrap();
    let report = download.wait_timeout(PATIENCE).expect("stalled").unwrap();
    assert_same_file(&slow.path("f.bin"), &leech.path("f.bin"));
    let from_fast = report
        .from
        .iter()
        .find(|(addr, _)| *addr == fast.node.local_addr())
        .map_or(0, |(_, bytes)| *bytes);
    assert!(
        from_fast > 0,
        "the fast seed was never asked: {:?}",
        report.from
    );
    drop(fake);
    for node in [leech, fast, slow] {
        node.shutdown();
    }
    tracker.shutdown().unwrap();
}

/// An owner that keeps a downloader choked and sends nothing is replaced by one waiting to
/// be tried, even when the download may use only one owner: a place in a line that does not
/// move is worth less than a try elsewhere (a leecher that got its first pieces after the
/// others had filled their owner slots used to upload nothing for seconds).
#[test]
fn a_downloader_leaves_an_owner_that_keeps_it_choked_for_one_waiting() {
    let (tracker, _te) = tracker_with_interval(1);
    let source = tempfile::tempdir().unwrap();
    let size = 16 * u64::from(PIECE);
    write_random(&source.path().join("f.bin"), 23, size);
    let fake = FakeOwner::start(
        &source.path().join("f.bin"),
        "f.bin",
        tracker.local_addr(),
        Behaviour::NeverUnchoke,
    );
    let leech = start_node_with("leech", tracker.local_addr(), |c| c.max_owners(1));
    let download = leech.node.download("f.bin").unwrap();
    // Its one owner slot is taken by the fake before the seeder is listed.
    let listed = wait_event(&leech.events, PATIENCE, |e| match e {
        p2ptorrent::Event::DownloadStarted { owners, .. } => Some(*owners),
        _ => None,
    });
    assert_eq!(listed, 1);
    let seeder = start_node("seeder", tracker.local_addr());
    std::fs::copy(source.path().join("f.bin"), seeder.path("f.bin")).unwrap();
    seeder.node.share("f.bin").unwrap();

    let report = download
        .wait_timeout(PATIENCE)
        .expect("the download went on past the owner that never unchokes")
        .unwrap();
    assert_same_file(&source.path().join("f.bin"), &leech.path("f.bin"));
    let from_seeder = report
        .from
        .iter()
        .find(|(addr, _)| addr.port() == seeder.node.local_addr().port())
        .map_or(0, |(_, bytes)| *bytes);
    assert_eq!(from_seeder, size, "{:?}", report.from);
    drop(fake);
    leech.shutdown();
    seeder.shutdown();
    tracker.shutdown().unwrap();
}

/// A partial owner tells a downloader of each piece it verifies, except those the
/// downloader said it holds: it would never ask for them, and every such `Have` is a
/// packet and a wake-up on both sides.
#[test]
fn a_partial_owner_tells_a_downloader_only_of_pieces_it_lacks() {
    use p2ptorrent::messages::{Message, read_frame, write_frame};

    let (tracker, _te) = start_tracker();
    let seeder = start_node_with("seeder", tracker.local_addr(), |c| {
        c.upload_limit(256 * 1024)
    });
    let pieces = 16u32;
    write_random(&seeder.path("f.bin"), 29, u64::from(pieces * PIECE));
    seeder.node.share("f.bin").unwrap();
    let owner = start_node("owner", tracker.local_addr());
    let download = owner.node.download("f.bin").unwrap();
    wait_event(&owner.events, PATIENCE, |e| {
        matches!(e, p2ptorrent::Event::DownloadStarted { .. }).then_some(())
    });

    // A downloader that holds the even pieces asks the owner about the file.
    let (mut s, mut r, info, at_first) = probe(owner.node.local_addr(), "f.bin");
    let held = |bits: &[u8], i: u32| bits[i as usize / 8] >> (7 - i % 8) & 1 == 1;
    let mine = vec![0xAA; at_first.len()];
    let bitfield = Message::Bitfield {
        content: info.content,
        bits: mine.clone(),
    };
    write_frame(&mut s, &bitfield).unwrap();

    // The odd pieces the owner lacked at first are told as it verifies them; no even one.
    // (Once the owner publishes the file, the connection may end before the last is told.)
    let mut awaited: Vec<u32> = (0..pieces)
        .filter(|&i| !held(&mine, i) && !held(&at_first, i))
        .collect();
    let lacked = awaited.len();
    let mut told_held = Vec::new();
    assert!(
        lacked > 1,
        "the owner had nearly finished before the probe asked"
    );
    while !awaited.is_empty() {
        let Ok(Some(frame)) = read_frame(&mut r) else {
            break;
        };
        if let Message::Have { pieces: told, .. } = frame {
            awaited.retain(|p| !told.contains(p));
            told_held.extend(told.into_iter().filter(|&p| held(&mine, p)));
        }
    }
    assert!(
        awaited.len() < lacked,
        "told of none of the pieces the downloader lacks: {awaited:?}"
    );
    assert!(
        told_held.is_empty(),
        "told of pieces the downloader holds: {told_held:?}"
    );
    download.wait().unwrap();
    drop((s, r));
    owner.shutdown();
    seeder.shutdown();
    tracker.shutdown().unwrap();
}

/// A downloader tells each owner the pieces it verified, except the owner that sent them:
/// that owner counts a piece as held once it has sent it, and a `Have` for every piece a
/// seed sends was a packet and a wake-up on both sides per piece.
#[test]
fn a_downloader_does_not_tell_an_owner_of_the_pieces_it_sent() {
    let (tracker, _te) = start_tracker();
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("f.bin");
    let pieces = 24u32;
    write_random(&source, 31, u64::from(pieces * PIECE));
    let fake = FakeOwner::start(&source, "f.bin", tracker.local_addr(), Behaviour::Honest);
    let leech = start_node("leech", tracker.local_addr());

    let report = leech.node.download("f.bin").unwrap().wait().unwrap();

    assert_same_file(&source, &leech.path("f.bin"));
    assert_eq!(report.from, vec![(fake.addr, u64::from(pieces * PIECE))]);
    assert_eq!(
        fake.pieces_sent.load(std::sync::atomic::Ordering::SeqCst),
        pieces
    );
    assert_eq!(
        fake.told_back.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the owner was told of pieces it had sent"
    );
    leech.shutdown();
    tracker.shutdown().unwrap();
}

/// A seed that nobody else waits for keeps its one downloader's pipeline full: it offers
/// twice the usual pieces ahead, and does not let them run out as its turn nears its end
/// (it drained to nothing every eighth piece, a round trip lost each time on a fast link).
/// Pieces it sent count as held without a word from the downloader, and are never offered
/// again.
#[test]
fn a_seed_nobody_else_waits_for_keeps_its_downloader_offered_ahead() {
    use p2ptorrent::messages::{Message, read_frame, write_frame};
    use std::collections::HashSet;
    use std::io::{BufReader, Read};

    let (tracker, _te) = start_tracker();
    let seeder = start_node("seeder", tracker.local_addr());
    let pieces = 40u32;
    write_random(&seeder.path("f.bin"), 37, u64::from(pieces * PIECE));
    seeder.node.share("f.bin").unwrap();

    let (mut s, mut r, info, _) = probe(seeder.node.local_addr(), "f.bin");
    let nothing = Message::Bitfield {
        content: info.content,
        bits: vec![0; pieces.div_ceil(8) as usize],
    };
    write_frame(&mut s, &nothing).unwrap();

    // Offers, read until `want` are open.
    fn read_offers(
        r: &mut BufReader<std::net::TcpStream>,
        offered: &mut HashSet<u32>,
        open: &mut Vec<u32>,
        want: usize,
    ) {
        while open.len() < want {
            match read_frame(r) {
                Ok(Some(Message::Have { pieces: told, .. })) => {
                    for p in told {
                        assert!(offered.insert(p), "piece {p} offered twice");
                        open.push(p);
                    }
                }
                Ok(Some(Message::Unchoke)) => {}
                other => panic!("expected offers, got {other:?}"),
            }
        }
    }
    let mut open: Vec<u32> = Vec::new();
    let mut offered = HashSet::new();
    read_offers(&mut r, &mut offered, &mut open, 8);
    assert_eq!(open.len(), 8, "eight offers open before any request");

    // Asked one at a time, a piece for each one sent: at no point does the seed leave the
    // probe with fewer than half of those offers to ask for.
    let mut got = 0;
    let mut payload = vec![0u8; PIECE as usize];
    while got < pieces {
        let piece = open.remove(0);
        let request = Message::Request {
            content: info.content,
            piece,
            offset: 0,
            len: PIECE,
        };
        write_frame(&mut s, &request).unwrap();
        loop {
            match read_frame(&mut r) {
                Ok(Some(Message::Data { piece: p, len, .. })) => {
                    assert_eq!((p, len), (piece, PIECE));
                    r.read_exact(&mut payload).unwrap();
                    break;
                }
                Ok(Some(Message::Have { pieces: told, .. })) => {
                    for p in told {
                        assert!(offered.insert(p), "piece {p} offered twice");
                        open.push(p);
                    }
                }
                other => panic!("expected data, got {other:?}"),
            }
        }
        got += 1;
        let left = (pieces - got) as usize;
        if left > 0 {
            // The offers that follow a sent piece may come after its data.
            read_offers(&mut r, &mut offered, &mut open, 4.min(left));
        }
    }
    assert_eq!(offered.len(), pieces as usize);
    drop((s, r));
    seeder.shutdown();
    tracker.shutdown().unwrap();
}

/// A seed whose first copy of a file is not yet out does not send a second copy of a
/// piece: a downloader that asks for a piece sent elsewhere after it was offered has the
/// offer taken back, gets the piece no one has instead, and the other once every piece has
/// gone out once.
#[test]
fn a_seed_sends_no_second_copy_while_a_piece_has_none() {
    use p2ptorrent::ContentId;
    use p2ptorrent::messages::{Message, read_frame, write_frame};
    use std::io::{BufReader, Read};
    use std::net::TcpStream;

    let (tracker, _te) = start_tracker();
    let seeder = start_node("seeder", tracker.local_addr());
    write_random(&seeder.path("f.bin"), 41, u64::from(2 * PIECE));
    seeder.node.share("f.bin").unwrap();

    // What a probe hears next, taking offers (`Have`) and `Unchoke` as they come.
    enum Heard {
        Data(u32),
        Withdrawn(Vec<u32>),
    }
    fn next(r: &mut BufReader<TcpStream>, offered: &mut Vec<u32>) -> Heard {
        loop {
            match read_frame(r) {
                Ok(Some(Message::Have { pieces, .. })) => offered.extend(pieces),
                Ok(Some(Message::Unchoke)) => {}
                Ok(Some(Message::Withdraw { pieces, .. })) => return Heard::Withdrawn(pieces),
                Ok(Some(Message::Data { piece, len, .. })) => {
                    let mut payload = vec![0u8; len as usize];
                    r.read_exact(&mut payload).unwrap();
                    return Heard::Data(piece);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    fn join(addr: std::net::SocketAddr) -> (TcpStream, BufReader<TcpStream>, Vec<u32>, ContentId) {
        let (mut s, mut r, info, _) = probe(addr, "f.bin");
        let nothing = Message::Bitfield {
            content: info.content,
            bits: vec![0],
        };
        write_frame(&mut s, &nothing).unwrap();
        let mut offered = Vec::new();
        while offered.len() < 2 {
            match read_frame(&mut r) {
                Ok(Some(Message::Have { pieces, .. })) => offered.extend(pieces),
                Ok(Some(Message::Unchoke)) => {}
                other => panic!("expected offers, got {other:?}"),
            }
        }
        (s, r, offered, info.content)
    }
    let ask = |s: &mut TcpStream, content: ContentId, piece: u32| {
        let request = Message::Request {
            content,
            piece,
            offset: 0,
            len: PIECE,
        };
        write_frame(s, &request).unwrap();
    };

    // The first downloader is offered both pieces and takes one.
    let (mut a, mut ar, a_offered, content) = join(seeder.node.local_addr());
    let first = a_offered[0];
    ask(&mut a, content, first);
    let mut more = Vec::new();
    assert!(matches!(next(&mut ar, &mut more), Heard::Data(p) if p == first));

    // The second is offered both too (the piece no one has first), asks for the one just
    // sent, and is told it is withdrawn; the other piece it gets.
    let (mut b, mut br, b_offered, _) = join(seeder.node.local_addr());
    let other = 1 - first;
    assert_eq!(
        b_offered[0], other,
        "the piece with no copy out is offered first"
    );
    let mut offered = Vec::new();
    ask(&mut b, content, first);
    assert!(
        matches!(next(&mut br, &mut offered), Heard::Withdrawn(p) if p == [first]),
        "a second copy before the first copy is out"
    );
    ask(&mut b, content, other);
    assert!(matches!(next(&mut br, &mut offered), Heard::Data(p) if p == other));

    // Every piece has a copy out now: the withdrawn one is offered again, and sent.
    while !offered.contains(&first) {
        match read_frame(&mut br) {
            Ok(Some(Message::Have { pieces, .. })) => offered.extend(pieces),
            other => panic!("expected the piece offered again, got {other:?}"),
        }
    }
    ask(&mut b, content, first);
    assert!(matches!(next(&mut br, &mut offered), Heard::Data(p) if p == first));

    drop((a, ar, b, br));
    seeder.shutdown();
    tracker.shutdown().unwrap();
}

/// Announces node `name`, serving on `port`, to `tracker` as an owner of `f.bin` (the file
/// at `path`) holding `pieces` pieces, `complete` or not: a listing the node did not make.
fn announce_as(
    tracker: std::net::SocketAddr,
    name: &str,
    port: u16,
    path: &std::path::Path,
    pieces: u32,
    complete: bool,
) {
    let manifest = p2ptorrent::manifest::Manifest::from_file(path, Some(PIECE)).unwrap();
    p2ptorrent::TrackerClient::new(tracker)
        .announce(p2ptorrent::messages::Announce {
            node: name.into(),
            port,
            file: "f.bin".into(),
            content: manifest.content(),
            size: manifest.size(),
            pieces,
            complete,
            counters: p2ptorrent::messages::Counters::default(),
        })
        .unwrap();
}

/// Connects to the node at `addr` as a downloader would and asks about `file`: returns the
/// connection (to write, and buffered to read), its size information and the bitfield the
/// node sent.
fn probe(
    addr: std::net::SocketAddr,
    file: &str,
) -> (
    std::net::TcpStream,
    std::io::BufReader<std::net::TcpStream>,
    p2ptorrent::messages::SizeInformation,
    Vec<u8>,
) {
    use p2ptorrent::messages::{MAGIC, Message, PROTOCOL_VERSION, read_frame, write_frame};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut r = std::io::BufReader::new(s.try_clone().unwrap());
    let hello = Message::Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        node: "probe".into(),
        port: 0,
    };
    write_frame(&mut s, &hello).unwrap();
    assert!(matches!(
        read_frame(&mut r),
        Ok(Some(Message::Hello { .. }))
    ));
    let ask = Message::SizeRequest {
        file: file.into(),
        hashes: false,
    };
    write_frame(&mut s, &ask).unwrap();
    let Ok(Some(Message::SizeInfo(info))) = read_frame(&mut r) else {
        panic!("no size information");
    };
    let Ok(Some(Message::Bitfield { bits, .. })) = read_frame(&mut r) else {
        panic!("no bitfield");
    };
    (s, r, info, bits)
}

/// A seed whose other peers hold every piece leaves those pieces to them, but not at the
/// cost of a downloader that cannot reach them and gets nothing anywhere else. Here two
/// peers the tracker does not list tell the seed they hold the whole file, and two
/// leechers share its one upload slot: one holds the turn while the other waits, so the
/// uplink is never spare. Offered nothing in every turn, the leechers waited until the
/// seed's idle timeout closed their connections, two minutes later (at 64 hosts a quarter
/// of the leechers once sat this way, every owner they had a complete node).
#[test]
fn a_downloader_that_gets_nothing_elsewhere_is_fed_though_the_seeds_peers_hold_everything() {
    use p2ptorrent::messages::{Message, read_frame, write_frame};
    let (tracker, _te) = start_tracker();
    let seeder = start_node_with("seeder", tracker.local_addr(), |c| {
        c.upload_slots(1).upload_limit(MIB / 4)
    });
    write_random(&seeder.path("f.bin"), 23, 8 * u64::from(PIECE));
    seeder.node.share("f.bin").unwrap();
    let holders: Vec<_> = (0..2)
        .map(|_| {
            let (mut s, mut r, info, _) = probe(seeder.node.local_addr(), "f.bin");
            let all = Message::Bitfield {
                content: info.content,
                bits: vec![0xff],
            };
            write_frame(&mut s, &all).unwrap();
            // Answered in order: the answer to this says the bitfield was taken in.
            let again = Message::SizeRequest {
                file: "f.bin".into(),
                hashes: false,
            };
            write_frame(&mut s, &again).unwrap();
            assert!(matches!(read_frame(&mut r), Ok(Some(Message::SizeInfo(_)))));
            (s, r)
        })
        .collect();
    let leeches: Vec<TestNode> = (0..2)
        .map(|i| start_node(&format!("L{i}"), tracker.local_addr()))
        .collect();
    let downloads: Vec<_> = leeches
        .iter()
        .map(|l| l.node.download("f.bin").unwrap())
        .collect();
    for (l, d) in leeches.iter().zip(&downloads) {
        let report = d
            .wait_timeout(std::time::Duration::from_secs(20))
            .expect("the download stalled")
            .unwrap();
        assert_same_file(&seeder.path("f.bin"), &l.path("f.bin"));
        eprintln!("{} in {:?}", report.file, report.elapsed);
    }
    drop(holders);
    leeches.into_iter().for_each(TestNode::shutdown);
    seeder.shutdown();
    tracker.shutdown().unwrap();
}
