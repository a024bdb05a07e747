//! Control over a running download, as an embedder has it: cancel and resume, pause and
//! resume, and a handle whose `wait` can be asked again.

mod common;

use common::*;
use p2ptorrent::{Error, Event};

const MIB: u64 = 1 << 20;

/// A seeder sharing `size` bytes of seed `seed` at 4 MiB/s, so a download of it is still
/// running when it is looked at or steered, and a leecher that has begun downloading it.
fn capped_download(
    seed: u64,
    size: u64,
) -> (
    p2ptorrent::Tracker,
    TestNode,
    TestNode,
    p2ptorrent::Download,
) {
    let (tracker, _te) = start_tracker();
    let seeder = start_node_with("seeder", tracker.local_addr(), |mut c| {
        c.upload_limit = Some(4 * MIB);
        c
    });
    write_random(&seeder.path("f.bin"), seed, size);
    seeder.node.share("f.bin").unwrap();
    let leech = start_node("leech", tracker.local_addr());
    let download = leech.node.download("f.bin").unwrap();
    (tracker, seeder, leech, download)
}

/// As [`capped_download`] with 8 MiB (128 pieces), the leecher 16 pieces in.
fn sixteen_pieces_in(
    seed: u64,
) -> (
    p2ptorrent::Tracker,
    TestNode,
    TestNode,
    p2ptorrent::Download,
) {
    let (tracker, seeder, leech, download) = capped_download(seed, 8 * MIB);
    wait_event(&leech.events, PATIENCE, |e| match e {
        Event::PieceReceived { done, .. } if *done >= 16 => Some(()),
        _ => None,
    });
    (tracker, seeder, leech, download)
}

#[test]
fn a_cancelled_download_keeps_its_part_and_a_new_download_resumes_it() {
    let (tracker, seeder, leech, download) = sixteen_pieces_in(11);
    download.cancel();
    let err = download.wait().unwrap_err();
    assert!(matches!(err, Error::Cancelled { .. }), "{err}");
    // Asked again, the same failure, as text.
    assert!(matches!(download.wait(), Err(Error::DownloadFailed { .. })));
    assert!(!leech.path("f.bin").exists());
    assert!(
        leech.path("f.bin.part").exists(),
        "the partial file is kept"
    );
    assert!(leech.node.status().unwrap().downloading.is_empty());
    // Not "already being downloaded": a new download resumes what was verified.
    let report = leech.node.download("f.bin").unwrap().wait().unwrap();
    assert!(report.resumed >= 16, "resumed {} pieces", report.resumed);
    assert_same_file(&seeder.path("f.bin"), &leech.path("f.bin"));
    assert!(part_files(leech.dir.path()).is_empty());
    leech.shutdown();
    seeder.shutdown();
    tracker.shutdown().unwrap();
}

#[test]
fn wait_can_be_asked_again_and_gives_the_same_report() {
    let (tracker, _te) = start_tracker();
    let seeder = start_node("seeder", tracker.local_addr());
    write_random(&seeder.path("f.bin"), 12, MIB);
    seeder.node.share("f.bin").unwrap();
    let leech = start_node("leech", tracker.local_addr());
    let download = leech.node.download("f.bin").unwrap();
    let first = download.wait().unwrap();
    assert_eq!(download.wait().unwrap(), first);
    assert_eq!(
        download
            .wait_timeout(std::time::Duration::ZERO)
            .unwrap()
            .unwrap(),
        first
    );
    // Cancelling a finished download changes nothing.
    download.cancel();
    assert_eq!(download.wait().unwrap(), first);
    // The re-exported channel crate selects over two nodes' events.
    use p2ptorrent::crossbeam_channel::{after, select};
    let finished = loop {
        select! {
            recv(leech.events) -> e => if let Ok(Event::DownloadFinished(r)) = e { break r },
            recv(seeder.events) -> _ => {}
            recv(after(PATIENCE)) -> _ => panic!("no DownloadFinished event"),
        }
    };
    assert_eq!(finished, first);
    assert_same_file(&seeder.path("f.bin"), &leech.path("f.bin"));
    leech.shutdown();
    seeder.shutdown();
    tracker.shutdown().unwrap();
}

#[test]
fn a_second_node_on_a_folder_is_refused_until_the_first_leaves() {
    let (tracker, _te) = start_tracker();
    let first = start_node("first", tracker.local_addr());
    let again = p2ptorrent::Node::start(config("second", first.dir.path(), tracker.local_addr()));
    let err = again.map(|_| ()).unwrap_err();
    assert!(matches!(err, Error::FolderInUse { .. }), "{err}");
    assert!(err.to_string().contains("its own folder"), "{err}");
    // Once the first has left, the folder is free.
    let dir = first.dir.path().to_path_buf();
    first.node.shutdown().unwrap();
    let (second, _events) =
        p2ptorrent::Node::start(config("second", &dir, tracker.local_addr())).unwrap();
    second.shutdown().unwrap();
    drop(first.dir);
    tracker.shutdown().unwrap();
}

#[test]
fn a_fifo_or_a_link_where_the_folder_lock_goes_fails_the_start_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join(p2ptorrent::node::LOCK_FILE);
    let made = std::process::Command::new("mkfifo")
        .arg(&lock)
        .status()
        .unwrap();
    assert!(made.success());
    let err = p2ptorrent::Node::start(config("n", dir.path(), localhost()))
        .map(|_| ())
        .unwrap_err();
    assert!(err.to_string().contains("lock"), "{err}");
    std::fs::remove_file(&lock).unwrap();
    let outside = tempfile::NamedTempFile::new().unwrap();
    std::os::unix::fs::symlink(outside.path(), &lock).unwrap();
    assert!(p2ptorrent::Node::start(config("n", dir.path(), localhost())).is_err());
}

#[test]
fn a_download_answers_how_far_it_is_while_it_runs() {
    let (tracker, seeder, leech, download) = capped_download(13, 8 * MIB);
    let done = wait_event(&leech.events, PATIENCE, |e| match e {
        Event::PieceReceived { done, .. } if *done >= 8 => Some(*done),
        _ => None,
    });
    let p = download.progress().expect("running");
    assert_eq!(p.file, "f.bin");
    assert_eq!(
        (p.size, p.pieces),
        (8 * MIB, (8 * MIB / u64::from(PIECE)) as u32)
    );
    assert!(p.verified >= done && p.verified < p.pieces, "{p:?}");
    assert_eq!(p.resumed, 0);
    assert!(
        p.fetched >= u64::from(p.verified) * u64::from(PIECE),
        "{p:?}"
    );
    assert!(p.fraction() > 0.0 && p.fraction() < 1.0);
    // The same download, as the node's status lists it.
    let listed = leech.node.status().unwrap().downloading;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].file, "f.bin");
    download.wait().unwrap();
    assert!(download.progress().is_none(), "ended");
    leech.shutdown();
    seeder.shutdown();
    tracker.shutdown().unwrap();
}

#[test]
fn a_paused_download_lets_its_owners_go_and_resumes_byte_exact() {
    let (tracker, seeder, leech, download) = sixteen_pieces_in(13);
    assert!(download.pause());
    let verified = wait_event(&leech.events, PATIENCE, |e| match e {
        Event::DownloadPaused { verified, .. } => Some(*verified),
        _ => None,
    });
    assert!((16..128).contains(&verified), "{verified} of 128 pieces");
    // Its owners are let go, and its partial file is no longer served.
    wait_until("the owners to be let go", PATIENCE, || {
        let peers = leech.node.status().unwrap().peers;
        if peers.is_empty() { Ok(()) } else { Err(peers) }
    });
    let progress = download
        .progress()
        .expect("a paused download is still running");
    assert!(progress.paused);
    // Pieces already on the wire may land; nothing more is asked for.
    assert!((verified..128).contains(&progress.verified), "{progress:?}");
    assert!(leech.node.status().unwrap().shared.is_empty());

    assert!(download.resume());
    wait_event(&leech.events, PATIENCE, |e| match e {
        Event::DownloadResumed { .. } => Some(()),
        _ => None,
    });
    let report = download.wait().unwrap();
    assert_eq!(
        report.resumed, 0,
        "one run: no piece was read back from disk"
    );
    assert_same_file(&seeder.path("f.bin"), &report.path);
    // Ended: nothing left to pause.
    assert!(!download.pause());
    leech.shutdown();
    seeder.shutdown();
    tracker.shutdown().unwrap();
}

/// Every download has an id of its own, carried by its events, its progress and its
/// report; the handle of a cancelled download neither sees nor steers a later download of
/// the same file.
#[test]
fn each_download_has_an_id_and_an_old_handle_steers_nothing() {
    let (tracker, seeder, leech, first) = sixteen_pieces_in(13);
    let first_id = first.id();
    assert_eq!(first.progress().unwrap().download, first_id);
    first.cancel();
    assert!(first.wait().is_err());
    let failed = wait_event(&leech.events, PATIENCE, |e| match e {
        Event::DownloadFailed { download, .. } => Some(*download),
        _ => None,
    });
    assert_eq!(failed, first_id);

    let second = leech.node.download("f.bin").unwrap();
    assert_ne!(second.id(), first_id);
    let started = wait_event(&leech.events, PATIENCE, |e| match e {
        Event::DownloadStarted { download, .. } => Some(*download),
        _ => None,
    });
    assert_eq!(started, second.id());
    assert!(first.progress().is_none(), "the old handle sees nothing");
    assert!(!first.pause(), "the old handle pauses nothing");
    let report = second.wait().unwrap();
    assert_eq!(report.download, second.id());
    assert!(report.resumed >= 16, "resumed {} pieces", report.resumed);
    assert_same_file(&seeder.path("f.bin"), &leech.path("f.bin"));
    leech.shutdown();
    seeder.shutdown();
    tracker.shutdown().unwrap();
}

/// A handle's `ended` channel disconnects once the result is ready, so a caller can select
/// on it beside other channels instead of polling `wait_timeout`.
#[test]
fn ended_disconnects_once_the_result_is_ready() {
    let (tracker, _te) = start_tracker();
    let seeder = start_node("seeder", tracker.local_addr());
    write_random(&seeder.path("f.bin"), 14, MIB);
    seeder.node.share("f.bin").unwrap();
    let leech = start_node("leech", tracker.local_addr());
    let download = leech.node.download("f.bin").unwrap();
    let never_carries = download.ended().recv_timeout(PATIENCE);
    assert_eq!(
        never_carries,
        Err(p2ptorrent::crossbeam_channel::RecvTimeoutError::Disconnected)
    );
    let report = download
        .wait_timeout(std::time::Duration::ZERO)
        .expect("the result is ready once ended disconnects")
        .unwrap();
    assert_eq!(report.download, download.id());
    leech.shutdown();
    seeder.shutdown();
    tracker.shutdown().unwrap();
}

/// Progress asked at every piece that arrives never goes back, and the download ends with
/// every piece verified.
#[test]
fn progress_rises_monotonically_to_the_whole_file() {
    let (tracker, seeder, leech, download) = capped_download(15, 4 * MIB);
    let (mut verified, mut fetched, mut fraction) = (0, 0, 0.0);
    let mut snapshots = 0;
    loop {
        p2ptorrent::crossbeam_channel::select! {
            recv(leech.events) -> event => {
                if let Ok(Event::PieceReceived { .. }) = event
                    && let Some(p) = download.progress()
                {
                    assert!(p.verified >= verified, "{p:?} after {verified} pieces");
                    assert!(p.fetched >= fetched, "{p:?} after {fetched} bytes");
                    assert!(p.fraction() >= fraction, "{p:?} after {fraction}");
                    assert!(p.verified <= p.pieces && p.fraction() <= 1.0, "{p:?}");
                    (verified, fetched, fraction) = (p.verified, p.fetched, p.fraction());
                    snapshots += 1;
                }
            }
            recv(download.ended()) -> _ => break,
            default(PATIENCE) => panic!("no piece and no end within {PATIENCE:?}"),
        }
    }
    let report = download.wait().unwrap();
    assert_eq!(report.pieces, (4 * MIB / u64::from(PIECE)) as u32);
    assert!(snapshots >= 4, "{snapshots} snapshots while running");
    assert!(download.progress().is_none(), "ended");
    assert_eq!(
        std::fs::read(leech.path("f.bin")).unwrap(),
        std::fs::read(seeder.path("f.bin")).unwrap()
    );
    leech.shutdown();
    seeder.shutdown();
    tracker.shutdown().unwrap();
}
