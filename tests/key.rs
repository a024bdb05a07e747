//! A private network: a tracker and nodes sharing a network key. Traffic is sealed and
//! encrypted end to end, and nodes with no key or another key are refused on both sides
//! without changing anything.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use crossbeam_channel::Receiver;
use p2ptorrent::manifest::Manifest;
use p2ptorrent::messages::{Announce, Counters};
use p2ptorrent::{
    Error, Event, KeyProblem, NetworkKey, Tracker, TrackerClient, TrackerConfig, TrackerEvent,
};
use parking_lot::Mutex;

fn key(byte: u8) -> NetworkKey {
    NetworkKey::from_bytes([byte; 32])
}

fn keyed_tracker(key: &NetworkKey) -> (Tracker, Receiver<TrackerEvent>) {
    Tracker::start(TrackerConfig::new(localhost()).key(key.clone())).unwrap()
}

fn keyed_node(name: &str, tracker: SocketAddr, key: &NetworkKey) -> TestNode {
    start_node_with(name, tracker, |c| c.key(key.clone()))
}

/// Lists `port` on this host as an owner of `file` (as shared by `path`) at the tracker.
fn announce_port(client: &TrackerClient, port: u16, file: &str, path: &Path) {
    let manifest = Manifest::from_file(path, Some(PIECE)).unwrap();
    client
        .announce(Announce {
            node: "listed".into(),
            port,
            file: file.into(),
            content: manifest.content(),
            size: manifest.size(),
            pieces: manifest.piece_count(),
            complete: true,
            counters: Counters::default(),
        })
        .unwrap();
}

#[test]
fn a_private_network_moves_files_byte_exact_from_several_owners() {
    let k = key(1);
    let (tracker, _te) = keyed_tracker(&k);
    let a = keyed_node("A", tracker.local_addr(), &k);
    let b = keyed_node("B", tracker.local_addr(), &k);
    let c = keyed_node("C", tracker.local_addr(), &k);
    let size = 3 * 1024 * 1024 + 12_345;
    write_random(&a.path("f.bin"), 51, size);
    std::fs::copy(a.path("f.bin"), b.path("f.bin")).unwrap();
    a.node.share("f.bin").unwrap();
    b.node.share("f.bin").unwrap();

    let report = c.node.download("f.bin").unwrap().wait().unwrap();
    assert_same_file(&a.path("f.bin"), &c.path("f.bin"));
    assert_eq!(
        report.from.len(),
        2,
        "both owners served: {:?}",
        report.from
    );
    let hits = c.node.search("f.b").unwrap();
    assert_eq!(hits.len(), 1);
    for n in [c, b, a] {
        n.shutdown();
    }
    tracker.shutdown().unwrap();
}

/// Forwards TCP connections to `target`, recording every byte in both directions.
struct RecordingProxy {
    addr: SocketAddr,
    recorded: Arc<Mutex<Vec<u8>>>,
}

impl RecordingProxy {
    fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind(localhost()).unwrap();
        let addr = listener.local_addr().unwrap();
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let rec = Arc::clone(&recorded);
        // Detached: each pipe ends when either side closes, the acceptor with the process.
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let rec = Arc::clone(&rec);
                    thread::spawn(move || pipe(from, to, &rec));
                }
            }
        });
        Self { addr, recorded }
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, recorded: &Mutex<Vec<u8>>) {
    // A test that fails leaves no pipe waiting forever.
    let _ = from.set_read_timeout(Some(PATIENCE));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                recorded.lock().extend_from_slice(&buf[..n]);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Counts the 16-byte blocks of `file` (at offsets that are multiples of 16) that appear
/// anywhere in `seen`. Any run of 31 or more plaintext bytes contains such a block.
fn plaintext_blocks_seen(file: &[u8], seen: &[u8]) -> usize {
    let blocks: HashSet<&[u8]> = file.chunks_exact(16).collect();
    let mut found = HashSet::new();
    for window in seen.windows(16) {
        if let Some(block) = blocks.get(window) {
            found.insert(*block);
        }
    }
    found.len()
}

/// Downloads a 1 MiB file through a recording proxy, with or without a key; returns the
/// file and what the proxy saw.
fn download_through_proxy(key: Option<NetworkKey>) -> (Vec<u8>, Vec<u8>) {
    let tweak = |c: p2ptorrent::NodeConfig| match &key {
        Some(k) => c.key(k.clone()),
        None => c,
    };
    let start = |config: TrackerConfig| match &key {
        Some(k) => Tracker::start(config.key(k.clone())).unwrap().0,
        None => Tracker::start(config).unwrap().0,
    };
    // The owner announces to one tracker; the downloader asks another, where only the
    // proxy is listed, so every byte between them passes the proxy.
    let owner_tracker = start(TrackerConfig::new(localhost()));
    let proxy_tracker = start(TrackerConfig::new(localhost()));
    let owner = start_node_with("owner", owner_tracker.local_addr(), tweak);
    let file = "secret-plans.bin";
    write_random(&owner.path(file), 77, 1024 * 1024);
    owner.node.share(file).unwrap();
    let proxy = RecordingProxy::start(owner.node.local_addr());
    let mut client = TrackerClient::new(proxy_tracker.local_addr());
    if let Some(k) = &key {
        client = client.with_key(k);
    }
    announce_port(&client, proxy.addr.port(), file, &owner.path(file));

    let leech = start_node_with("leech", proxy_tracker.local_addr(), tweak);
    leech.node.download(file).unwrap().wait().unwrap();
    assert_same_file(&owner.path(file), &leech.path(file));
    let content = std::fs::read(owner.path(file)).unwrap();
    leech.shutdown();
    owner.shutdown();
    let seen = proxy.recorded.lock().clone();
    (content, seen)
}

#[test]
fn with_a_key_a_recording_proxy_sees_no_plaintext() {
    // Without a key the same detector finds the file and its name on the wire.
    let (content, seen) = download_through_proxy(None);
    assert!(plaintext_blocks_seen(&content, &seen) > 60_000);
    assert!(seen.windows(12).any(|w| w == b"secret-plans"));

    let (content, seen) = download_through_proxy(Some(key(9)));
    assert!(seen.len() > content.len(), "the proxy carried the download");
    assert_eq!(plaintext_blocks_seen(&content, &seen), 0);
    assert!(!seen.windows(12).any(|w| w == b"secret-plans"));
    assert!(
        !seen.windows(5).any(|w| w == b"owner"),
        "node names are hidden"
    );
}

fn tracker_rejection(events: &Receiver<TrackerEvent>, needle: &str) -> String {
    loop {
        match events.recv_timeout(PATIENCE) {
            Ok(TrackerEvent::Rejected { reason, .. }) if reason.contains(needle) => return reason,
            Ok(_) => {}
            Err(_) => panic!("the tracker never refused with {needle:?}"),
        }
    }
}

#[test]
fn wrong_key_and_keyless_nodes_are_refused_by_the_tracker_and_change_nothing() {
    let k = key(1);
    let (tracker, events) = keyed_tracker(&k);
    let member = keyed_node("member", tracker.local_addr(), &k);
    write_random(&member.path("f.bin"), 3, 300_000);
    member.node.share("f.bin").unwrap();
    let before = tracker.snapshot();
    assert_eq!(before.files.len(), 1);

    let stranger = keyed_node("stranger", tracker.local_addr(), &key(2));
    write_random(&stranger.path("g.bin"), 4, 1000);
    let err = stranger.node.share("g.bin").unwrap_err();
    assert!(
        matches!(
            err,
            Error::KeyMismatch {
                role: "tracker",
                problem: KeyProblem::DifferentKey,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("uses a different network key"),
        "{err}"
    );
    tracker_rejection(&events, "uses a different network key");
    let err = stranger.node.download("f.bin").unwrap().wait().unwrap_err();
    assert!(matches!(err, Error::KeyMismatch { .. }), "{err}");

    let keyless = start_node("keyless", tracker.local_addr());
    write_random(&keyless.path("g.bin"), 4, 1000);
    let err = keyless.node.share("g.bin").unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "tracker {} requires a network key, and this side has none",
            tracker.local_addr()
        )
    );
    tracker_rejection(&events, "has no network key, and this side requires one");
    assert!(keyless.node.search("f").is_err());

    assert_eq!(
        tracker.snapshot(),
        before,
        "nothing a stranger sent changed the table"
    );
    for n in [keyless, stranger, member] {
        n.shutdown();
    }
    tracker.shutdown().unwrap();
}

#[test]
fn a_keyed_node_is_told_a_keyless_tracker_has_no_key() {
    let (tracker, events) = start_tracker();
    let node = keyed_node("A", tracker.local_addr(), &key(1));
    write_random(&node.path("f.bin"), 5, 1000);
    let err = node.node.share("f.bin").unwrap_err();
    assert!(
        matches!(
            err,
            Error::KeyMismatch {
                problem: KeyProblem::TheyHaveNoKey,
                ..
            }
        ),
        "{err}"
    );
    tracker_rejection(&events, "requires a network key, and this side has none");
    assert!(tracker.snapshot().files.is_empty());
    node.shutdown();
    tracker.shutdown().unwrap();
}

/// Waits for the owner to report a refused peer, returning its words.
fn peer_refusal(events: &Receiver<Event>) -> String {
    wait_event(events, PATIENCE, |e| match e {
        Event::PeerError { error, .. } if error.contains("network key") => Some(error.clone()),
        _ => None,
    })
}

/// Starts `owner_key`'s owner of a file and a downloader with `leech_key`, which learns of
/// the owner from its own tracker; returns the download's error and the owner's words.
fn download_across_keys(
    owner_key: Option<NetworkKey>,
    leech_key: Option<NetworkKey>,
) -> (Error, String) {
    let with = |k: &Option<NetworkKey>| {
        let k = k.clone();
        move |c: p2ptorrent::NodeConfig| match k {
            Some(k) => c.key(k),
            None => c,
        }
    };
    let tracker_for = |k: &Option<NetworkKey>| {
        let config = TrackerConfig::new(localhost());
        match k {
            Some(k) => Tracker::start(config.key(k.clone())).unwrap().0,
            None => Tracker::start(config).unwrap().0,
        }
    };
    let owner_tracker = tracker_for(&owner_key);
    let leech_tracker = tracker_for(&leech_key);
    let owner = start_node_with("owner", owner_tracker.local_addr(), with(&owner_key));
    write_random(&owner.path("f.bin"), 6, 500_000);
    owner.node.share("f.bin").unwrap();
    let mut client = TrackerClient::new(leech_tracker.local_addr());
    if let Some(k) = &leech_key {
        client = client.with_key(k);
    }
    announce_port(
        &client,
        owner.node.local_addr().port(),
        "f.bin",
        &owner.path("f.bin"),
    );

    let leech = start_node_with("leech", leech_tracker.local_addr(), with(&leech_key));
    let err = leech.node.download("f.bin").unwrap().wait().unwrap_err();
    let said = peer_refusal(&owner.events);
    assert!(part_files(leech.dir.path()).is_empty());
    assert!(!leech.path("f.bin").exists());
    leech.shutdown();
    owner.shutdown();
    (err, said)
}

#[test]
fn peers_with_no_key_or_another_key_are_refused_on_both_sides() {
    let (err, said) = download_across_keys(Some(key(1)), None);
    assert!(
        err.to_string()
            .contains("requires a network key, and this side has none"),
        "{err}"
    );
    assert!(
        said.contains("has no network key, and this side requires one"),
        "{said}"
    );

    let (err, said) = download_across_keys(Some(key(1)), Some(key(2)));
    assert!(
        err.to_string().contains("uses a different network key"),
        "{err}"
    );
    assert!(said.contains("uses a different network key"), "{said}");

    let (err, said) = download_across_keys(None, Some(key(2)));
    assert!(
        err.to_string()
            .contains("has no network key, and this side requires one"),
        "{err}"
    );
    assert!(
        said.contains("requires a network key, and this side has none"),
        "{said}"
    );
}

/// Relays datagrams between one node and the tracker, keeping every request.
struct UdpRelay {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
    socket: UdpSocket,
}

impl UdpRelay {
    fn start(tracker: SocketAddr) -> Self {
        let socket = UdpSocket::bind(localhost()).unwrap();
        let addr = socket.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        socket.set_read_timeout(Some(PATIENCE)).unwrap();
        let (sock, reqs) = (socket.try_clone().unwrap(), Arc::clone(&requests));
        thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            let mut node = None;
            // Ends after a minute with nothing to relay, or with the process.
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                if from == tracker {
                    if let Some(node) = node {
                        let _ = sock.send_to(&buf[..n], node);
                    }
                } else {
                    node = Some(from);
                    reqs.lock().push(buf[..n].to_vec());
                    let _ = sock.send_to(&buf[..n], tracker);
                }
            }
        });
        Self {
            addr,
            requests,
            socket,
        }
    }
}

#[test]
fn a_replayed_tracker_datagram_is_refused() {
    let k = key(1);
    let (tracker, events) = keyed_tracker(&k);
    let relay = UdpRelay::start(tracker.local_addr());
    let node = keyed_node("A", relay.addr, &k);
    write_random(&node.path("f.bin"), 8, 1000);
    node.node.share("f.bin").unwrap();
    assert_eq!(tracker.snapshot().files.len(), 1);
    let recorded = relay.requests.lock().clone();
    assert!(recorded.len() >= 2, "a connect and an announce");
    node.shutdown();
    wait_until("the node's exit", PATIENCE, || {
        let s = tracker.snapshot();
        if s.files.is_empty() { Ok(()) } else { Err(s) }
    });
    while events.try_recv().is_ok() {}

    // Replaying the announce would put the node back; the tracker refuses every replay.
    for datagram in &recorded {
        relay
            .socket
            .send_to(datagram, tracker.local_addr())
            .unwrap();
        tracker_rejection(&events, "replayed request");
    }
    assert!(tracker.snapshot().files.is_empty());
    assert!(tracker.snapshot().nodes.is_empty());
    tracker.shutdown().unwrap();
}

#[test]
fn a_slow_loris_handshake_is_dropped_while_a_real_download_proceeds() {
    let k = key(3);
    let (tracker, _te) = keyed_tracker(&k);
    let owner = start_node_with("victim", tracker.local_addr(), |mut c| {
        c.handshake_timeout = Duration::from_secs(1);
        c.key(k.clone())
    });
    write_random(&owner.path("f.bin"), 1, 2_000_000);
    owner.node.share("f.bin").unwrap();
    // The opening of a key handshake and 48 bytes of it, a byte every 100 ms: 5.4 s.
    let mut opening = b"P2PN".to_vec();
    opening.extend_from_slice(&48u16.to_be_bytes());
    opening.extend_from_slice(&[7u8; 48]);
    let mut loris = TcpStream::connect(owner.node.local_addr()).unwrap();
    loris
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let leech = keyed_node("leech", tracker.local_addr(), &k);
    let started = Instant::now();
    let dropped = thread::scope(|s| {
        let download = s.spawn(|| leech.node.download("f.bin").unwrap().wait().unwrap());
        let mut dropped = None;
        for b in &opening {
            let closed = loris.write_all(&[*b]).is_err()
                || matches!(loris.read(&mut [0u8; 64]), Ok(0))
                || loris.peer_addr().is_err();
            if closed {
                dropped = Some(started.elapsed());
                break;
            }
        }
        download.join().unwrap();
        dropped.expect("the node kept a trickling handshake open")
    });
    assert!(
        dropped < Duration::from_secs(4),
        "dropped after {dropped:?}"
    );
    assert_same_file(&owner.path("f.bin"), &leech.path("f.bin"));
    leech.shutdown();
    owner.shutdown();
    tracker.shutdown().unwrap();
}
