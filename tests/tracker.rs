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
fn search_ranks_owners_by_uploads_and_downloads_get_them_shuffled() {
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
    // People searching see the original's best node first.
    let hits = client.search("f.bin").unwrap();
    let names: Vec<&str> = hits[0].owners.iter().map(|o| o.node.as_str()).collect();
    assert_eq!(names, ["high", "mid", "low"]);
    // Downloaders each get their own random pick, so they do not all crowd the same two.
    let firsts: std::collections::HashSet<String> = (0..30)
        .map(|_| client.need("f.bin", 2).unwrap().owners[0].node.clone())
        .collect();
    assert_eq!(firsts.len(), 3, "{firsts:?}");
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

/// Sends one raw request from `socket` and returns the reply and both datagrams' sizes.
fn raw(
    socket: &std::net::UdpSocket,
    tracker: std::net::SocketAddr,
    token: p2ptorrent::messages::Token,
    body: p2ptorrent::messages::NodeToTracker,
) -> (p2ptorrent::messages::TrackerToNode, usize, usize) {
    use p2ptorrent::messages::{PROTOCOL_VERSION, TrackerRequest, decode_reply, encode_request};
    let request = encode_request(&TrackerRequest {
        version: PROTOCOL_VERSION,
        txid: 7,
        token,
        body,
    })
    .unwrap();
    socket.send_to(&request, tracker).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = vec![0u8; 65_536];
    let (n, _) = socket.recv_from(&mut buf).unwrap();
    (decode_reply(&buf[..n]).unwrap().body, request.len(), n)
}

#[test]
fn requests_without_a_valid_token_change_nothing_and_get_a_small_reply() {
    use p2ptorrent::messages::{NodeToTracker, TrackerToNode};
    let (tracker, _events) = start_tracker();
    let a = start_node("A", tracker.local_addr());
    write_random(&a.path("f.bin"), 1, 10);
    a.node.share("f.bin").unwrap();
    let before = tracker.snapshot();
    let socket = std::net::UdpSocket::bind(localhost()).unwrap();
    let port = a.node.local_addr().port();
    let forged = [
        NodeToTracker::Exit { port },
        NodeToTracker::Need {
            file: "f.bin".into(),
            numwant: 50,
        },
        NodeToTracker::Search {
            pattern: String::new(),
        },
    ];
    for body in forged {
        let (reply, sent, got) = raw(&socket, tracker.local_addr(), [0xAB; 16], body);
        assert_eq!(reply, TrackerToNode::BadToken);
        assert!(got <= sent, "a {sent}-byte request drew a {got}-byte reply");
    }
    assert_eq!(tracker.snapshot(), before);
    a.shutdown();
    tracker.shutdown().unwrap();
}

/// A sender on another address can get a token for its own address only: its `exit` for
/// A's port names a node at its own address, which does not exist, and A's token-less or
/// borrowed-token `exit` from there is refused.
#[test]
fn a_forged_exit_from_another_address_removes_nobody() {
    use p2ptorrent::messages::{NodeToTracker, TrackerToNode};
    let (tracker, _events) = start_tracker();
    let a = start_node("A", tracker.local_addr());
    write_random(&a.path("f.bin"), 1, 10);
    a.node.share("f.bin").unwrap();
    let port = a.node.local_addr().port();
    let elsewhere = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
    let (reply, ..) = raw(
        &elsewhere,
        tracker.local_addr(),
        [0; 16],
        NodeToTracker::Connect,
    );
    let TrackerToNode::Token { token } = reply else {
        panic!("{reply:?}")
    };
    let (reply, ..) = raw(
        &elsewhere,
        tracker.local_addr(),
        token,
        NodeToTracker::Exit { port },
    );
    assert!(matches!(reply, TrackerToNode::Ack { .. }), "{reply:?}");
    // That token is no good from A's address either.
    let here = std::net::UdpSocket::bind(localhost()).unwrap();
    let (reply, ..) = raw(
        &here,
        tracker.local_addr(),
        token,
        NodeToTracker::Exit { port },
    );
    assert_eq!(reply, TrackerToNode::BadToken);
    assert_eq!(
        tracker.snapshot().owners_of("f.bin").len(),
        1,
        "A is still listed"
    );
    a.shutdown();
    tracker.shutdown().unwrap();
}
