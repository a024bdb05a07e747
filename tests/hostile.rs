//! Hostile input: path traversal on both sides, garbage and oversized frames on a node's
//! TCP port, out-of-range requests, and garbage datagrams at the tracker. Each drops only
//! the offending connection or datagram; everyone else keeps being served.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

use common::*;
use p2ptorrent::messages::{
    Announce, ContentId, Counters, MAGIC, MAX_CONTROL_LEN, MAX_FRAME_LEN, Message,
    PROTOCOL_VERSION, read_frame, write_frame,
};
use p2ptorrent::{Error, Event, TrackerClient};

/// Connects to a node with a read timeout, so a bug fails the test instead of hanging it.
fn connect(addr: std::net::SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn hello(s: &mut TcpStream) {
    write_frame(
        s,
        &Message::Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            node: "probe".into(),
            port: 0,
        },
    )
    .unwrap();
    let reply = read_frame(&mut BufReader::new(s.try_clone().unwrap())).unwrap();
    assert!(matches!(reply, Some(Message::Hello { .. })), "{reply:?}");
}

/// Reads until the node closes the connection; fails if it stays open past the timeout.
fn assert_closed(s: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("connection still open: {e}"),
        }
    }
}

/// The size of the victim's file: more pieces than a node offers at once.
const VICTIM_SIZE: u32 = 1_000_000;

/// A node sharing one file, for the probes to attack.
fn victim() -> (p2ptorrent::Tracker, TestNode) {
    let (tracker, _te) = start_tracker();
    let node = start_node("victim", tracker.local_addr());
    write_random(&node.path("f.bin"), 1, u64::from(VICTIM_SIZE));
    node.node.share("f.bin").unwrap();
    (tracker, node)
}

/// After an attack the node still serves a normal download, byte-exact.
fn still_serves(tracker: &p2ptorrent::Tracker, node: &TestNode) {
    let leech = start_node("leech", tracker.local_addr());
    leech.node.download("f.bin").unwrap().wait().unwrap();
    assert_same_file(&node.path("f.bin"), &leech.path("f.bin"));
    leech.shutdown();
}

#[test]
fn path_traversal_is_refused_by_the_sharer_and_the_downloader() {
    let (tracker, node) = victim();
    for bad in ["../f.bin", "/etc/passwd", "a/b", "..", "", "x\0y"] {
        assert!(
            matches!(node.node.share(bad), Err(Error::InvalidName { .. })),
            "share {bad:?}"
        );
        let err = node.node.download(bad).unwrap().wait().unwrap_err();
        assert!(
            matches!(err, Error::InvalidName { .. }),
            "download {bad:?}: {err}"
        );
    }
    node.shutdown();
    tracker.shutdown().unwrap();
}

#[test]
fn a_node_serves_only_what_it_announced_and_never_outside_its_folder() {
    let (tracker, node) = victim();
    std::fs::write(node.path("secret.txt"), b"not shared").unwrap();
    let mut s = connect(node.node.local_addr());
    hello(&mut s);
    let mut r = BufReader::new(s.try_clone().unwrap());
    for name in [
        "secret.txt",
        "../f.bin",
        "/etc/passwd",
        "f.bin/..",
        "missing.bin",
    ] {
        write_frame(
            &mut s,
            &Message::SizeRequest {
                file: name.into(),
                hashes: true,
            },
        )
        .unwrap();
        match read_frame(&mut r).unwrap() {
            Some(Message::Refused { file, .. }) => assert_eq!(file, name),
            other => panic!("{name:?} answered with {other:?}"),
        }
    }
    // A request by a content id the node does not share is rejected and the peer dropped.
    let forged = Message::Request {
        content: ContentId([9; 32]),
        piece: 0,
        offset: 0,
        len: 10,
    };
    write_frame(&mut s, &forged).unwrap();
    assert!(matches!(
        read_frame(&mut r).unwrap(),
        Some(Message::Reject { .. })
    ));
    assert_closed(&mut s);
    still_serves(&tracker, &node);
    node.shutdown();
    tracker.shutdown().unwrap();
}

#[test]
fn garbage_and_oversized_frames_drop_only_that_connection() {
    let (tracker, node) = victim();
    let addr = node.node.local_addr();
    // Random bytes instead of a hello.
    let mut s = connect(addr);
    let mut rng = fastrand::Rng::with_seed(7);
    let junk: Vec<u8> = (0..10_000).map(|_| rng.u8(..)).collect();
    let _ = s.write_all(&junk);
    assert_closed(&mut s);
    // A length prefix far past the limit: refused before anything is allocated.
    let mut s = connect(addr);
    hello(&mut s);
    s.write_all(&(MAX_FRAME_LEN + 1).to_be_bytes()).unwrap();
    assert_closed(&mut s);
    // A valid frame of an unknown variant.
    let mut s = connect(addr);
    hello(&mut s);
    s.write_all(&[0, 0, 0, 2, 200, 1]).unwrap();
    assert_closed(&mut s);
    // A wrong version.
    let mut s = connect(addr);
    write_frame(
        &mut s,
        &Message::Hello {
            magic: MAGIC,
            version: 99,
            node: "x".into(),
            port: 0,
        },
    )
    .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    assert!(matches!(
        read_frame(&mut r).unwrap(),
        Some(Message::Reject { .. })
    ));
    assert_closed(&mut s);
    // An idle connection left open meanwhile does not block anyone.
    let _idle = connect(addr);
    still_serves(&tracker, &node);
    let errors = node
        .events
        .try_iter()
        .filter(|e| matches!(e, Event::PeerError { .. }))
        .count();
    assert!(errors >= 4, "{errors} peer errors reported");
    node.shutdown();
    tracker.shutdown().unwrap();
}

/// This process's resident memory, in bytes.
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

#[test]
fn control_frames_are_capped_so_strangers_cannot_make_a_node_buffer_much() {
    let (tracker, node) = victim();
    let addr = node.node.local_addr();
    // One byte past the control cap: refused before the body is read.
    let mut s = connect(addr);
    hello(&mut s);
    s.write_all(&(MAX_CONTROL_LEN + 1).to_be_bytes()).unwrap();
    assert_closed(&mut s);
    // All but one of the connections one address may hold (the last is for the real
    // download below, from the same address here), each one byte short of a full control
    // frame, held open: the node buffers at most that much for each.
    let before = rss();
    let held: Vec<TcpStream> = (0..15)
        .map(|_| {
            let mut s = connect(addr);
            hello(&mut s);
            s.write_all(&MAX_CONTROL_LEN.to_be_bytes()).unwrap();
            s.write_all(&vec![1u8; MAX_CONTROL_LEN as usize - 1])
                .unwrap();
            s
        })
        .collect();
    // Every one of them is read (and refused when its deadline passes, or its body
    // proves bad); meanwhile a real download is served.
    still_serves(&tracker, &node);
    let grown = rss().saturating_sub(before);
    eprintln!(
        "15 connections each holding a {MAX_CONTROL_LEN}-byte frame: RSS grew {} KiB",
        grown / 1024
    );
    // Before the cap, each could have sent an 8 MiB frame: 120 MiB.
    assert!(grown < 16 << 20, "RSS grew {grown} bytes");
    drop(held);
    node.shutdown();
    tracker.shutdown().unwrap();
}

#[test]
fn idle_connections_are_closed_to_make_room_for_a_real_downloader() {
    let (tracker, _te) = start_tracker();
    let node = start_node_with("victim", tracker.local_addr(), |c| {
        c.max_connections(4, 4)
            .reap_idle_after(Duration::from_millis(500))
    });
    write_random(&node.path("f.bin"), 1, u64::from(VICTIM_SIZE));
    node.node.share("f.bin").unwrap();
    let addr = node.node.local_addr();
    // Every slot taken by a peer that says hello and sits.
    let mut idle: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = connect(addr);
            hello(&mut s);
            s
        })
        .collect();
    // While they are fresh, a newcomer is refused.
    let mut late = connect(addr);
    let _ = late.write_all(b"x");
    assert_closed(&mut late);
    // A real download gets in once they have been silent long enough (it retries the
    // refusing owner with backoff) and finishes byte-exact.
    still_serves(&tracker, &node);
    // The one closed for it was one of the idle peers.
    let closed = idle
        .iter_mut()
        .map(|s| {
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            match s.read(&mut [0u8; 64]) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
            }
        })
        .filter(|&closed| closed)
        .count();
    assert!(closed >= 1, "no idle peer was closed");
    node.shutdown();
    tracker.shutdown().unwrap();
}

#[test]
fn a_name_shared_with_several_contents_is_downloaded_as_chosen_or_as_pinned() {
    let (tracker, _te) = start_tracker();
    let genuine = start_node("genuine", tracker.local_addr());
    let other = start_node("other", tracker.local_addr());
    write_random(&genuine.path("movie.bin"), 1, 300_000);
    write_random(&other.path("movie.bin"), 2, 300_000);
    genuine.node.share("movie.bin").unwrap();
    let theirs = other.node.share("movie.bin").unwrap().content;
    // Not pinned: the content shared first under the name (owned alike otherwise: both
    // from one address here), and the downloader is told there were two.
    let plain = start_node("plain", tracker.local_addr());
    plain.node.download("movie.bin").unwrap().wait().unwrap();
    assert_same_file(&genuine.path("movie.bin"), &plain.path("movie.bin"));
    assert!(
        plain
            .events
            .try_iter()
            .any(|e| matches!(e, Event::SeveralContents { contents: 2, .. })),
        "the downloader is told of the other content"
    );
    // Pinned: that content and no other.
    let pinned = start_node("pinned", tracker.local_addr());
    let report = pinned
        .node
        .download_content("movie.bin", theirs)
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(report.content, theirs);
    assert_same_file(&other.path("movie.bin"), &pinned.path("movie.bin"));
    // A pin nobody shares finds nobody.
    let nobody = start_node("nobody", tracker.local_addr());
    let missing = ContentId([3; 32]);
    assert!(matches!(
        nobody
            .node
            .download_content("movie.bin", missing)
            .unwrap()
            .wait(),
        Err(Error::NoOwners { .. })
    ));
    for n in [genuine, other, plain, pinned, nobody] {
        n.shutdown();
    }
    tracker.shutdown().unwrap();
}

#[test]
fn out_of_range_requests_are_rejected() {
    let (tracker, node) = victim();
    let content = node.node.status().unwrap().shared[0].content;
    let pieces = VICTIM_SIZE.div_ceil(PIECE);
    let last_len = VICTIM_SIZE - (pieces - 1) * PIECE;
    let bad = [
        (pieces, 0, 10),               // no such piece
        (0, 0, PIECE + 1),             // longer than a piece
        (pieces - 1, 0, last_len + 1), // past the end of the file
        (0, PIECE - 1, 2),             // offset + len past the piece
        (0, 0, 0),                     // empty
        (u32::MAX, u32::MAX, u32::MAX),
    ];
    for (piece, offset, len) in bad {
        let (mut s, mut r) = asked_about(node.node.local_addr(), "f.bin");
        read_offers(&mut r, content);
        write_frame(
            &mut s,
            &Message::Request {
                content,
                piece,
                offset,
                len,
            },
        )
        .unwrap();
        match read_frame(&mut r) {
            Ok(Some(Message::Reject { reason })) => {
                assert!(reason.contains("out of range"), "{reason}")
            }
            other => panic!("piece {piece} {offset}+{len}: {other:?}"),
        }
        assert_closed(&mut s);
    }
    // A piece held but not offered (the node offers a complete file a few pieces at a
    // time) is refused too.
    let (mut s, mut r) = asked_about(node.node.local_addr(), "f.bin");
    let offered = read_offers(&mut r, content);
    let not_offered = (0..pieces).find(|p| !offered.contains(p)).unwrap();
    let ask = |piece, offset, len| Message::Request {
        content,
        piece,
        offset,
        len,
    };
    write_frame(&mut s, &ask(not_offered, 0, 10)).unwrap();
    match read_frame(&mut r) {
        Ok(Some(Message::Reject { reason })) => assert!(reason.contains("not offered")),
        other => panic!("{other:?}"),
    }
    // A valid partial request of an offered piece still works.
    let (mut s, mut r) = asked_about(node.node.local_addr(), "f.bin");
    let piece = read_offers(&mut r, content)[0];
    write_frame(&mut s, &ask(piece, 100, 50)).unwrap();
    assert!(matches!(
        read_frame(&mut r).unwrap(),
        Some(Message::Data { len: 50, .. })
    ));
    let mut got = [0u8; 50];
    r.read_exact(&mut got).unwrap();
    let all = std::fs::read(node.path("f.bin")).unwrap();
    let start = (piece * PIECE) as usize + 100;
    assert_eq!(&got[..], &all[start..start + 50]);
    node.shutdown();
    tracker.shutdown().unwrap();
}

/// Opens a connection, asks about `file` and says it holds none of it, as a downloader
/// does; returns the stream and a reader past the size information.
fn asked_about(addr: std::net::SocketAddr, file: &str) -> (TcpStream, BufReader<TcpStream>) {
    let mut s = connect(addr);
    hello(&mut s);
    let mut r = BufReader::new(s.try_clone().unwrap());
    write_frame(
        &mut s,
        &Message::SizeRequest {
            file: file.into(),
            hashes: false,
        },
    )
    .unwrap();
    let Ok(Some(Message::SizeInfo(info))) = read_frame(&mut r) else {
        panic!("no size information");
    };
    let Ok(Some(Message::Bitfield { bits, .. })) = read_frame(&mut r) else {
        panic!("no bitfield");
    };
    let pieces = u32::try_from(info.size.div_ceil(u64::from(info.piece_size))).unwrap();
    assert_eq!(bits.len(), pieces.div_ceil(8) as usize);
    write_frame(
        &mut s,
        &Message::Bitfield {
            content: info.content,
            bits: vec![0; bits.len()],
        },
    )
    .unwrap();
    (s, r)
}

/// Reads the node's `Unchoke`, then the pieces it offers in its next `Have`.
fn read_offers(r: &mut BufReader<TcpStream>, content: ContentId) -> Vec<u32> {
    assert!(matches!(read_frame(r), Ok(Some(Message::Unchoke))));
    match read_frame(r) {
        Ok(Some(Message::Have { content: c, pieces })) if c == content => pieces,
        other => panic!("expected offers, got {other:?}"),
    }
}

#[test]
fn garbage_datagrams_do_not_disturb_the_tracker() {
    let (tracker, node) = victim();
    let before = tracker.snapshot();
    let probe = UdpSocket::bind(localhost()).unwrap();
    let mut rng = fastrand::Rng::with_seed(11);
    for len in 0..=255usize {
        let junk: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        probe.send_to(&junk, tracker.local_addr()).unwrap();
    }
    probe
        .send_to(&vec![0xFF; 60_000], tracker.local_addr())
        .unwrap();
    // The tracker answers requests sent after the garbage: it has read past all of it.
    let owners = TrackerClient::new(tracker.local_addr())
        .need("f.bin", 10)
        .unwrap();
    assert_eq!(owners.owners.len(), 1);
    assert_eq!(tracker.snapshot(), before);
    still_serves(&tracker, &node);
    node.shutdown();
    tracker.shutdown().unwrap();
}

/// A request longer than any node sends (here a well-formed search of 3,000 bytes with a
/// valid token; the tracker reads 2 KiB of a datagram) is refused unread: counted as
/// malformed, unanswered, and its sender's next request is answered.
#[test]
fn an_oversized_request_is_counted_malformed_and_unanswered() {
    use p2ptorrent::TrackerEvent;
    use p2ptorrent::messages::{
        NodeToTracker, TrackerRequest, TrackerToNode, decode_reply, encode_request,
    };
    let (tracker, events) = start_tracker();
    let token = TrackerClient::new(tracker.local_addr()).token().unwrap();
    let probe = UdpSocket::bind(localhost()).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let search = |txid, pattern: String| {
        encode_request(&TrackerRequest {
            version: PROTOCOL_VERSION,
            txid,
            token,
            body: NodeToTracker::Search { pattern },
        })
        .unwrap()
    };
    let big = search(1, "x".repeat(3000));
    assert!(big.len() > 2048);
    probe.send_to(&big, tracker.local_addr()).unwrap();
    let me = probe.local_addr().unwrap();
    loop {
        match events.recv_timeout(Duration::from_secs(10)) {
            Ok(TrackerEvent::Malformed { from }) if from == me => break,
            Ok(_) => {}
            Err(e) => panic!("no Malformed event for the oversized request: {e}"),
        }
    }
    assert_eq!(tracker.metrics().malformed, 1);
    // The next request's answer is the first to arrive: the oversized one got none.
    probe
        .send_to(&search(2, "x".into()), tracker.local_addr())
        .unwrap();
    let mut buf = vec![0u8; 65_536];
    let n = probe.recv(&mut buf).unwrap();
    let reply = decode_reply(&buf[..n]).unwrap();
    assert_eq!(reply.txid, 2);
    assert!(matches!(reply.body, TrackerToNode::SearchResults { .. }));
    tracker.shutdown().unwrap();
}

#[test]
fn the_tracker_refuses_announces_with_bad_names() {
    let (tracker, _te) = start_tracker();
    let client = TrackerClient::new(tracker.local_addr());
    for (node, file) in [
        ("A", "../etc/passwd"),
        ("A", "a/b"),
        ("", "ok.bin"),
        (&*"n".repeat(65), "ok.bin"),
    ] {
        let err = client
            .announce(Announce {
                node: node.into(),
                port: 4000,
                file: file.into(),
                content: ContentId([1; 32]),
                size: 1,
                pieces: 1,
                complete: true,
                counters: Counters::default(),
            })
            .unwrap_err();
        assert!(matches!(err, Error::TrackerRejected { .. }), "{err}");
    }
    assert!(tracker.snapshot().files.is_empty());
    tracker.shutdown().unwrap();
}

/// Trickles `bytes` one at a time, every 100 ms, until the node closes the connection;
/// returns how long that took, or `None` if every byte went out.
fn trickle(s: &mut TcpStream, bytes: &[u8]) -> Option<std::time::Duration> {
    let started = std::time::Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 64];
    for b in bytes {
        if s.write_all(&[*b]).is_err() {
            return Some(started.elapsed());
        }
        match s.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(started.elapsed());
            }
            _ => {}
        }
    }
    None
}

#[test]
fn a_slow_loris_peer_is_dropped_while_a_real_download_proceeds() {
    let (tracker, _te) = start_tracker();
    let node = start_node_with("victim", tracker.local_addr(), |mut c| {
        c.handshake_timeout = Duration::from_secs(1);
        c
    });
    write_random(&node.path("f.bin"), 1, 200_000);
    node.node.share("f.bin").unwrap();
    let addr = node.node.local_addr();
    // A hello trickled a byte every 100 ms: 80 bytes would take 8 s.
    let mut trickled_hello = Vec::new();
    write_frame(
        &mut trickled_hello,
        &Message::Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            node: "x".repeat(60),
            port: 0,
        },
    )
    .unwrap();
    let mut loris = TcpStream::connect(addr).unwrap();
    let dropped = std::thread::scope(|s| {
        let leech = s.spawn(|| still_serves(&tracker, &node));
        let dropped =
            trickle(&mut loris, &trickled_hello).expect("the node kept a trickling hello open");
        leech.join().unwrap();
        dropped
    });
    assert!(
        dropped < Duration::from_secs(4),
        "dropped after {dropped:?}"
    );
    // The same once the hello is done: a request trickled after it.
    let mut loris = connect(addr);
    hello(&mut loris);
    let mut request = Vec::new();
    write_frame(
        &mut request,
        &Message::SizeRequest {
            file: "f".repeat(80),
            hashes: true,
        },
    )
    .unwrap();
    let dropped = trickle(&mut loris, &request).expect("the node kept a trickling request open");
    assert!(
        dropped < Duration::from_secs(4),
        "dropped after {dropped:?}"
    );
    node.shutdown();
    tracker.shutdown().unwrap();
}

#[test]
fn connections_past_the_per_ip_limit_are_refused() {
    let (tracker, _te) = start_tracker();
    let node = start_node_with("victim", tracker.local_addr(), |mut c| {
        c.max_connections_per_ip = 2;
        c
    });
    let addr = node.node.local_addr();
    let mut first = connect(addr);
    hello(&mut first);
    let mut second = connect(addr);
    hello(&mut second);
    let mut third = connect(addr);
    let _ = write_frame(
        &mut third,
        &Message::Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            node: "3".into(),
            port: 0,
        },
    );
    assert_closed(&mut third);
    // When one leaves, there is room again.
    drop(first);
    wait_until("a slot to free up", PATIENCE, || {
        let mut s = connect(addr);
        write_frame(
            &mut s,
            &Message::Hello {
                magic: MAGIC,
                version: PROTOCOL_VERSION,
                node: "4".into(),
                port: 0,
            },
        )
        .unwrap();
        match read_frame(&mut BufReader::new(s.try_clone().unwrap())) {
            Ok(Some(Message::Hello { .. })) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    node.shutdown();
    tracker.shutdown().unwrap();
}

/// What a stranger's connection costs the node in descriptors: one. (Three `try_clone`s
/// made it four, and a node under a low descriptor limit ran out at a quarter of its
/// connection cap.) Counted exactly: the descriptors of this process that refer to a socket
/// the node accepted.
#[test]
fn each_served_connection_costs_the_node_one_descriptor() {
    let (tracker, _te) = start_tracker();
    let node = start_node_with("victim", tracker.local_addr(), |c| {
        c.max_connections(64, 64)
    });
    let port = node.node.local_addr().port();
    let peers: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = connect(node.node.local_addr());
            hello(&mut s);
            s
        })
        .collect();
    wait_until("every connection to be served", PATIENCE, || {
        match node.node.metrics().connections_open {
            20 => Ok(()),
            n => Err(n),
        }
    });
    let accepted = accepted_sockets(port);
    assert_eq!(accepted.len(), 20, "one socket per connection");
    let descriptors = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy();
            t.strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse::<u64>()
                .ok()
        })
        .filter(|inode| accepted.contains(inode))
        .count();
    assert_eq!(descriptors, 20, "descriptors for 20 served connections");
    drop(peers);
    node.shutdown();
    tracker.shutdown().unwrap();
}

/// The inodes of the established TCP sockets whose local port is `port` (IPv4).
fn accepted_sockets(port: u16) -> std::collections::HashSet<u64> {
    let table = std::fs::read_to_string("/proc/self/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(f[1].split(':').nth(1)?, 16).ok()?;
            // State 01: established.
            (local_port == port && f[3] == "01").then(|| f[9].parse().ok())?
        })
        .collect()
}
