//! Several trackers: every download starts and finishes while any one of three is dead, a
//! tracker that comes back is used again, a dead tracker in the list does not stop a node,
//! and a search merges what every tracker knows. Real trackers and nodes on 127.0.0.1.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::*;
use p2ptorrent::tracker::TrackerSet;
use p2ptorrent::{Event, NetworkKey, NodeConfig, Tracker, TrackerConfig};

/// Tries per tracker request in these tests: a dead tracker is found silent in 0.75 s.
const TRIES: u32 = 2;

fn tracker_at(addr: SocketAddr, key: Option<&NetworkKey>) -> Tracker {
    let mut config = TrackerConfig::new(addr).interval(Duration::from_secs(1));
    if let Some(key) = key {
        config = config.key(key.clone());
    }
    Tracker::start(config).expect("tracker starts").0
}

fn three_trackers(key: Option<&NetworkKey>) -> (Vec<Option<Tracker>>, Vec<SocketAddr>) {
    let trackers: Vec<Tracker> = (0..3).map(|_| tracker_at(localhost(), key)).collect();
    let addrs = trackers.iter().map(Tracker::local_addr).collect();
    (trackers.into_iter().map(Some).collect(), addrs)
}

fn with_trackers(
    addrs: &[SocketAddr],
    replicas: usize,
    key: Option<&NetworkKey>,
) -> impl FnOnce(NodeConfig) -> NodeConfig {
    let addrs = addrs.to_vec();
    let key = key.cloned();
    move |mut c| {
        c = c
            .trackers(addrs, replicas)
            .tracker_tries(TRIES)
            .tracker_retry_after(Duration::from_millis(500));
        if let Some(key) = key {
            c = c.key(key);
        }
        c
    }
}

/// For each tracker, a file name whose replica set puts that tracker first: looking it up
/// asks that tracker before any other.
fn one_file_led_by_each(addrs: &[SocketAddr], replicas: usize) -> Vec<String> {
    let set = TrackerSet::new(addrs, replicas).unwrap();
    addrs
        .iter()
        .map(|addr| {
            (0..)
                .map(|n| format!("file-{n}.bin"))
                .find(|name| set.replicas_of(name)[0] == *addr)
                .unwrap()
        })
        .collect()
}

fn files_held_by(tracker: &Tracker) -> Vec<String> {
    let mut files: Vec<String> = tracker
        .snapshot()
        .files
        .into_iter()
        .map(|f| f.file)
        .collect();
    files.sort();
    files
}

/// Kills each of three trackers in turn; a fresh node downloads every file (one of them
/// first asked of the dead tracker) byte-exact each time, and the tracker, restarted on its
/// address, is given the seeder's files again and reported back.
fn each_tracker_killed_in_turn(key: Option<NetworkKey>) {
    let key = key.as_ref();
    let (mut trackers, addrs) = three_trackers(key);
    let files = one_file_led_by_each(&addrs, 2);
    let seeder = start_node_with("seeder", addrs[0], with_trackers(&addrs, 2, key));
    for (i, file) in files.iter().enumerate() {
        write_random(
            &seeder.path(file),
            40 + i as u64,
            (1 << 20) + 4097 * i as u64,
        );
        seeder
            .node
            .share(file)
            .expect("shared while every tracker runs");
    }
    let set = TrackerSet::new(&addrs, 2).unwrap();
    for dead in 0..3 {
        trackers[dead].take().unwrap().shutdown().unwrap();
        let leecher = start_node_with(
            &format!("leecher{dead}"),
            addrs[0],
            with_trackers(&addrs, 2, key),
        );
        for file in &files {
            let report = leecher
                .node
                .download(file)
                .unwrap()
                .wait()
                .unwrap_or_else(|e| panic!("{file} with tracker {dead} dead: {e}"));
            assert_same_file(&report.path, &seeder.path(file));
        }
        let silent = wait_event(&leecher.events, PATIENCE, |e| match e {
            Event::TrackerSilent { tracker, .. } => Some(*tracker),
            _ => None,
        });
        assert_eq!(silent, addrs[dead], "the dead tracker is the one reported");
        assert_eq!(leecher.node.metrics().trackers_silent, 1);
        leecher.shutdown();

        // Back on its address, with an empty table: the seeder's next announces fill it.
        let back = tracker_at(addrs[dead], key);
        let mut expected: Vec<String> = files
            .iter()
            .filter(|f| set.replicas_of(f).contains(&addrs[dead]))
            .cloned()
            .collect();
        expected.sort();
        wait_until(
            "the restarted tracker to hear from the seeder",
            PATIENCE,
            || {
                let held: Vec<String> = files_held_by(&back)
                    .into_iter()
                    .filter(|f| files.contains(f))
                    .collect();
                if held == expected { Ok(()) } else { Err(held) }
            },
        );
        trackers[dead] = Some(back);
    }
    // Every silence the seeder saw was followed by the tracker's return.
    let mut silent = Vec::new();
    for event in seeder.events.try_iter() {
        match event {
            Event::TrackerSilent { tracker, .. } => silent.push(tracker),
            Event::TrackerBack { tracker } => silent.retain(|t| *t != tracker),
            _ => {}
        }
    }
    assert!(silent.is_empty(), "still silent for the seeder: {silent:?}");
    assert_eq!(seeder.node.metrics().trackers_silent, 0);
    seeder.shutdown();
}

#[test]
fn every_download_finishes_while_each_of_three_trackers_is_killed_in_turn() {
    each_tracker_killed_in_turn(None);
}

#[test]
fn the_same_under_a_network_key_on_every_tracker() {
    each_tracker_killed_in_turn(Some(NetworkKey::from_bytes([7; 32])));
}

#[test]
fn a_node_listing_a_dead_tracker_and_a_live_one_starts_shares_and_downloads() {
    // Bound and never read: datagrams sent to it go unanswered.
    let dead = UdpSocket::bind(localhost()).unwrap();
    let tracker = tracker_at(localhost(), None);
    let addrs = [dead.local_addr().unwrap(), tracker.local_addr()];
    let seeder = start_node_with("seeder", addrs[0], with_trackers(&addrs, 2, None));
    write_random(&seeder.path("movie.bin"), 1, 3 << 20);
    let began = Instant::now();
    seeder
        .node
        .share("movie.bin")
        .expect("the live tracker acknowledges");
    let silent = wait_event(&seeder.events, PATIENCE, |e| match e {
        Event::TrackerSilent { tracker, error } => Some((*tracker, error.clone())),
        _ => None,
    });
    assert_eq!(silent.0, addrs[0]);
    assert!(silent.1.contains("did not answer"), "{}", silent.1);
    println!("share with one dead tracker took {:?}", began.elapsed());

    let leecher = start_node_with("leecher", addrs[0], with_trackers(&addrs, 2, None));
    let hits = leecher.node.search("movie").unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].owners.len(), 1);
    let report = leecher.node.download("movie.bin").unwrap().wait().unwrap();
    assert_same_file(&report.path, &seeder.path("movie.bin"));
    let m = leecher.node.metrics();
    assert_eq!((m.trackers_up, m.trackers_silent), (1, 1));
    let status = leecher.node.status().unwrap();
    let health: Vec<(SocketAddr, bool)> = status.trackers.iter().map(|t| (t.addr, t.up)).collect();
    assert_eq!(health, vec![(addrs[0], false), (addrs[1], true)]);
    leecher.shutdown();
    seeder.shutdown();
}

#[test]
fn search_merges_what_every_tracker_knows() {
    let (trackers, addrs) = three_trackers(None);
    // One tracker per file: each file is known to exactly one tracker.
    let files = one_file_led_by_each(&addrs, 1);
    let seeder = start_node_with("seeder", addrs[0], with_trackers(&addrs, 1, None));
    for (i, file) in files.iter().enumerate() {
        write_random(&seeder.path(file), i as u64, 100_000);
        seeder.node.share(file).unwrap();
    }
    for (tracker, file) in trackers.iter().zip(&files) {
        assert_eq!(files_held_by(tracker.as_ref().unwrap()), vec![file.clone()]);
    }
    let searcher = start_node_with("searcher", addrs[0], with_trackers(&addrs, 1, None));
    let mut found: Vec<String> = searcher
        .node
        .search("file-")
        .unwrap()
        .into_iter()
        .map(|h| h.file)
        .collect();
    found.sort();
    let mut expected = files.clone();
    expected.sort();
    assert_eq!(found, expected);
    searcher.shutdown();
    seeder.shutdown();
}
