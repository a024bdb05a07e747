//! The tracker as nodes see it: search, exit, ranking, expiry and the table it keeps.

mod common;

use std::time::Duration;

use common::*;
use p2ptorrent::messages::{Announce, ContentId, Counters};
use p2ptorrent::{Tracker, TrackerClient, TrackerConfig, TrackerEvent};

#[test]
fn search_finds_who_has_a_file_and_exit_removes_a_node_at_once() {
    let (tracker, events) = start_tracker();
    let a = start_node("A", tracker.local_addr());
    let b = start_node("B", tracker.local_addr());
    write_random(&a.path("movie.bin"), 1, 1000);
    write_random(&b.path("movie.bin"), 1, 1000);
    write_random(&b.path("notes.txt"), 2, 10);
    a.node.share("movie.bin").unwrap();
    b.node.share("movie.bin").unwrap();
    b.node.share("notes.txt").unwrap();

    let hits = a.node.search("MOVIE").unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].file, "movie.bin");
    assert_eq!(hits[0].size, 1000);
    let mut names: Vec<&str> = hits[0].owners.iter().map(|o| o.node.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["A", "B"]);
    assert_eq!(
        hits[0].owners.iter().find(|o| o.node == "A").unwrap().addr,
        a.node.local_addr()
    );
    assert_eq!(a.node.search("").unwrap().len(), 2);
    assert!(a.node.search("nothing").unwrap().is_empty());

    let table = tracker.snapshot();
    let row = table.nodes.iter().find(|n| n.node == "B").unwrap();
    assert_eq!(row.files, ["movie.bin", "notes.txt"]);
    assert!(events.try_iter().any(|e| e == TrackerEvent::TableChanged));

    // Shutting a node down is the original's `exit`: its entries go at once, not after
    // the expiry time (30 s here).
    b.shutdown();
    let table = tracker.snapshot();
    assert_eq!(table.owners_of("movie.bin").len(), 1);
    assert!(table.owners_of("notes.txt").is_empty());
    assert!(table.nodes.iter().all(|n| n.node != "B"));
    a.shutdown();
    tracker.shutdown().unwrap();
}

#[test]
fn owners_that_stop_announcing_expire() {
    let (tracker, _events) =
        Tracker::start(TrackerConfig::new(localhost()).interval(Duration::from_secs(1))).unwrap();
    let client = TrackerClient::new(tracker.local_addr());
    let interval = client
        .announce(Announce {
            node: "once".into(),
            port: 4321,
            file: "f.bin".into(),
            content: ContentId([1; 32]),
            size: 10,
            pieces: 1,
            complete: true,
            counters: Counters::default(),
        })
        .unwrap();
    assert_eq!(interval, Duration::from_secs(1));
    assert_eq!(client.need("f.bin", 5).unwrap().owners.len(), 1);
    wait_until(
        "the silent owner to expire",
        Duration::from_secs(10),
        || {
            let t = tracker.snapshot();
            if t.files.is_empty() { Ok(()) } else { Err(t) }
        },
    );
    tracker.shutdown().unwrap();
}

#[test]
fn nodes_that_keep_announcing_do_not_expire() {
    let (tracker, _events) =
        Tracker::start(TrackerConfig::new(localhost()).interval(Duration::from_secs(1))).unwrap();
    let a = start_node("A", tracker.local_addr());
    write_random(&a.path("f.bin"), 1, 10);
    a.node.share("f.bin").unwrap();
    // Well past the three-interval expiry, the node's re-announces have kept it listed.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        assert_eq!(tracker.snapshot().owners_of("f.bin").len(), 1);
        std::thread::sleep(Duration::from_millis(200));
    }
    a.shutdown();
    tracker.shutdown().unwrap();
}

#[test]
fn owners_are_ranked_by_upload_count() {
    let (tracker, _events) = start_tracker();
    let client = TrackerClient::new(tracker.local_addr());
    for (name, port, sent) in [("low", 1001, 1), ("high", 1002, 9), ("mid", 1003, 5)] {
        client
            .announce(Announce {
                node: name.into(),
                port,
                file: "f.bin".into(),
                content: ContentId([1; 32]),
                size: 10,
                pieces: 1,
                complete: true,
                counters: Counters {
                    files_sent: sent,
                    ..Counters::default()
                },
            })
            .unwrap();
    }
    let owners = client.need("f.bin", 2).unwrap().owners;
    let names: Vec<&str> = owners.iter().map(|o| o.node.as_str()).collect();
    assert_eq!(names, ["high", "mid"]);
    tracker.shutdown().unwrap();
}

#[test]
fn the_tracker_records_the_source_address_of_announces() {
    let (tracker, _events) = start_tracker();
    let a = start_node("A", tracker.local_addr());
    write_random(&a.path("f.bin"), 1, 10);
    a.node.share("f.bin").unwrap();
    let owners = TrackerClient::new(tracker.local_addr())
        .need("f.bin", 5)
        .unwrap()
        .owners;
    // The node listens on 127.0.0.1; the tracker saw the datagram come from there and
    // paired it with the announced port.
    assert_eq!(owners[0].addr, a.node.local_addr());
    a.shutdown();
    tracker.shutdown().unwrap();
}
