//! Helpers shared by the integration tests: real trackers and nodes on 127.0.0.1 with port
//! 0 and temporary folders, a deadline-bounded `wait_until`, seeded test data, and a fake
//! owner that speaks the real protocol but lies, stalls or hangs up on purpose.

#![allow(dead_code)] // each test binary uses its own subset

#[path = "../../benches/support/mod.rs"]
mod bench_support;

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use p2ptorrent::manifest::Manifest;
use p2ptorrent::messages::{
    Announce, Counters, MAGIC, Message, PROTOCOL_VERSION, read_frame, write_frame,
};
use p2ptorrent::{Event, Node, NodeConfig, Tracker, TrackerClient, TrackerConfig, TrackerEvent};
use tempfile::TempDir;

/// Piece size the tests share files with: small, so small files still have many pieces.
pub const PIECE: u32 = 64 * 1024;
/// How long any test waits for anything before it fails.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

pub fn start_tracker() -> (Tracker, Receiver<TrackerEvent>) {
    Tracker::start(TrackerConfig::new(localhost())).expect("tracker starts")
}

/// A node with its own temporary folder.
pub struct TestNode {
    pub node: Node,
    pub events: Receiver<Event>,
    pub dir: TempDir,
}

impl TestNode {
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    pub fn shutdown(self) {
        self.node.shutdown().expect("node shuts down cleanly");
    }
}

pub fn config(name: &str, dir: &Path, tracker: SocketAddr) -> NodeConfig {
    NodeConfig::new(name, dir)
        .listen(localhost())
        .tracker(tracker)
        .piece_size(PIECE)
}

pub fn start_node(name: &str, tracker: SocketAddr) -> TestNode {
    start_node_with(name, tracker, |c| c)
}

pub fn start_node_with(
    name: &str,
    tracker: SocketAddr,
    tweak: impl FnOnce(NodeConfig) -> NodeConfig,
) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let (node, events) =
        Node::start(tweak(config(name, dir.path(), tracker))).expect("node starts");
    TestNode { node, events, dir }
}

/// Polls `cond` until it returns `Some`, failing after `timeout` with the last value seen.
pub fn wait_until<T, S: std::fmt::Debug>(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> Result<T, S>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match cond() {
            Ok(v) => return v,
            Err(seen) if Instant::now() >= deadline => {
                panic!("timed out waiting for {what}; last saw {seen:?}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Waits for the first event that `pick` accepts, failing after `timeout`.
pub fn wait_event<T>(
    events: &Receiver<Event>,
    timeout: Duration,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(e) => {
                if let Some(v) = pick(&e) {
                    return v;
                }
            }
            Err(_) => panic!("timed out waiting for an event"),
        }
    }
}

/// Writes `len` seeded pseudo-random bytes to `path`, with the benches' generator.
pub fn write_random(path: &Path, seed: u64, len: u64) {
    bench_support::generate(path, len, seed);
}

/// Returns the BLAKE3 hash of a whole file, read in chunks.
pub fn file_hash(path: &Path) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    let mut f = File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return h.finalize();
        }
        h.update(&buf[..n]);
    }
}

pub fn assert_same_file(a: &Path, b: &Path) {
    assert_eq!(
        std::fs::metadata(a).unwrap().len(),
        std::fs::metadata(b).unwrap().len(),
        "{} and {} differ in length",
        a.display(),
        b.display()
    );
    assert_eq!(
        file_hash(a),
        file_hash(b),
        "{} and {} differ",
        a.display(),
        b.display()
    );
}

/// Lists the `.part` files left in a folder.
/// Writes the resume record an interrupted download leaves beside `part`, naming that very
/// file, so that a download adopts the planted `.part` of `original` as its own (a `.part`
/// without one is left alone). The record lists no piece: every piece is verified anyway.
pub fn plant_record(part: &Path, original: &Path) {
    use std::os::unix::fs::MetadataExt;
    let manifest = Manifest::from_file(original, Some(PIECE)).unwrap();
    let meta = std::fs::metadata(part).unwrap();
    let pieces = manifest.piece_count();
    let record = p2ptorrent::messages::encode_record(&p2ptorrent::messages::ResumeRecord {
        magic: p2ptorrent::messages::RECORD_MAGIC,
        content: manifest.content(),
        pieces,
        bits: vec![0; pieces.div_ceil(8) as usize],
        dev: meta.dev(),
        ino: meta.ino(),
    })
    .unwrap();
    std::fs::write(format!("{}.state", part.display()), record).unwrap();
}

/// A download interrupted midway, as a crash or a stop leaves it: a tracker, a seeder
/// sharing `size` seeded bytes as `f.bin` at 4 MiB/s, and a folder where a node downloaded
/// at least `pieces` pieces before it was shut down. Returns them with the resume record
/// the stopped download left.
pub struct Interrupted {
    pub tracker: Tracker,
    pub seeder: TestNode,
    pub folder: TempDir,
    pub record: p2ptorrent::messages::ResumeRecord,
}

impl Interrupted {
    pub fn new(size: u64, pieces: u32) -> Self {
        let (tracker, _te) = start_tracker();
        let seeder = start_node_with("seeder", tracker.local_addr(), |mut c| {
            c.upload_limit = Some(4 << 20);
            c
        });
        write_random(&seeder.path("f.bin"), 4, size);
        seeder.node.share("f.bin").unwrap();
        let folder = tempfile::tempdir().unwrap();
        let (first, events) =
            Node::start(config("first", folder.path(), tracker.local_addr())).expect("node starts");
        let download = first.download("f.bin").unwrap();
        wait_event(&events, PATIENCE, |e| match e {
            Event::PieceReceived { done, .. } if *done >= pieces => Some(()),
            _ => None,
        });
        first.shutdown().unwrap();
        assert!(matches!(download.wait(), Err(p2ptorrent::Error::Shutdown)));
        assert!(folder.path().join("f.bin.part").exists());
        let record = std::fs::read(folder.path().join("f.bin.part.state")).unwrap();
        let record = p2ptorrent::messages::decode_record(&record).expect("a whole record");
        Self {
            tracker,
            seeder,
            folder,
            record,
        }
    }

    /// The pieces the record lists as verified.
    pub fn listed(&self) -> Vec<u32> {
        (0..self.record.pieces)
            .filter(|&i| self.record.bits[(i / 8) as usize] & (0x80 >> (i % 8)) != 0)
            .collect()
    }

    pub fn shutdown(self) {
        self.seeder.shutdown();
        self.tracker.shutdown().unwrap();
    }
}

pub fn part_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "part"))
        .collect()
}

/// How a [`FakeOwner`] misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Flips a byte in every piece it sends.
    Corrupt,
    /// Sends this many good pieces, then hangs up and refuses further connections.
    HangUpAfter(u32),
    /// Handshakes and answers size requests, then never answers a piece request.
    Stall,
    /// Answers with a piece list that does not match the real file.
    ForgedPieceList,
    /// Answers a request with the Data header, then one byte a second: never silent long
    /// enough to trip the peer timeout, and never done.
    Trickle,
    /// Lists itself as a partial owner holding every piece and never unchokes: a line
    /// that never moves.
    NeverUnchoke,
    /// Lists itself as a complete owner, unchokes every downloader and never offers it a
    /// piece: a seed that leaves every piece to peers the downloader cannot reach.
    OffersNothing,
    /// Lists itself as a complete owner, offers nothing and never unchokes: a seed whose
    /// line never reaches the downloader.
    SilentSeed,
    /// Serves every request faithfully, and counts the `Have`s it is sent for pieces it
    /// sent itself ([`FakeOwner::told_back`]).
    Honest,
}

/// A test owner that speaks the real protocol, misbehaving as told.
pub struct FakeOwner {
    pub addr: SocketAddr,
    pub pieces_sent: Arc<AtomicU32>,
    /// `Have`s received for pieces this owner had sent on that connection.
    pub told_back: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeOwner {
    /// Serves the file at `path` as `name`, and announces it to the tracker as a complete
    /// owner ranked first (a high upload count), so downloaders ask it first; as a partial
    /// one under [`Behaviour::NeverUnchoke`].
    pub fn start(path: &Path, name: &str, tracker: SocketAddr, behaviour: Behaviour) -> Self {
        let manifest = Manifest::from_file(path, Some(PIECE)).unwrap();
        let data = std::fs::read(path).unwrap();
        let listener = TcpListener::bind(localhost()).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let pieces_sent = Arc::new(AtomicU32::new(0));
        let told_back = Arc::new(AtomicU32::new(0));
        let file = name.to_string();
        let (stop2, sent2) = (Arc::clone(&stop), Arc::clone(&pieces_sent));
        let told2 = Arc::clone(&told_back);
        let m2 = manifest.clone();
        let thread = std::thread::spawn(move || {
            let mut conns: Vec<(TcpStream, JoinHandle<()>)> = Vec::new();
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                if let Behaviour::HangUpAfter(n) = behaviour
                    && sent2.load(Ordering::SeqCst) >= n
                {
                    continue; // refuse: drop it
                }
                let clone = stream.try_clone().unwrap();
                let (m, d, f) = (m2.clone(), data.clone(), file.clone());
                let (s, t) = (Arc::clone(&sent2), Arc::clone(&told2));
                let h = std::thread::spawn(move || {
                    fake_serve(stream, &m, &d, &f, behaviour, (&s, &t));
                });
                conns.push((clone, h));
            }
            for (s, h) in conns {
                let _ = s.shutdown(std::net::Shutdown::Both);
                let _ = h.join();
            }
        });
        TrackerClient::new(tracker)
            .announce(Announce {
                node: format!("fake-{behaviour:?}"),
                port: addr.port(),
                file: name.into(),
                content: manifest.content(),
                size: manifest.size(),
                pieces: manifest.piece_count(),
                complete: behaviour != Behaviour::NeverUnchoke,
                counters: Counters {
                    files_sent: 1_000_000,
                    ..Counters::default()
                },
            })
            .expect("fake owner announces");
        Self {
            addr,
            pieces_sent,
            told_back,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeOwner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn fake_serve(
    stream: TcpStream,
    manifest: &Manifest,
    data: &[u8],
    file: &str,
    behaviour: Behaviour,
    (sent, told_back): (&AtomicU32, &AtomicU32),
) {
    let mut sent_here = std::collections::HashSet::new();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut r = BufReader::new(stream.try_clone().unwrap());
    let mut w = BufWriter::new(stream);
    let hello = Message::Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        node: "fake".into(),
        port: 0,
    };
    while let Ok(Some(msg)) = read_frame(&mut r) {
        let ok = match msg {
            Message::Hello { .. } => write_frame(&mut w, &hello).is_ok(),
            Message::SizeRequest { hashes, .. } => {
                let mut info = manifest.size_info(file, hashes);
                if behaviour == Behaviour::ForgedPieceList && !info.hashes.is_empty() {
                    info.hashes[0] = [0xAA; 32];
                }
                let all = if matches!(behaviour, Behaviour::OffersNothing | Behaviour::SilentSeed) {
                    0x00
                } else {
                    0xFF
                };
                let mut bits = vec![all; manifest.piece_count().div_ceil(8) as usize];
                let spare = bits.len() as u32 * 8 - manifest.piece_count();
                if let Some(last) = bits.last_mut() {
                    *last &= 0xFFu8 << spare;
                }
                write_frame(&mut w, &Message::SizeInfo(info)).is_ok()
                    && write_frame(
                        &mut w,
                        &Message::Bitfield {
                            content: manifest.content(),
                            bits,
                        },
                    )
                    .is_ok()
            }
            Message::Request {
                content,
                piece,
                offset,
                len,
            } => {
                if behaviour == Behaviour::Stall {
                    true // never answer, keep the connection open
                } else if behaviour == Behaviour::Trickle {
                    let header = Message::Data {
                        content,
                        piece,
                        offset,
                        len,
                    };
                    if write_frame(&mut w, &header).is_err() || w.flush().is_err() {
                        return;
                    }
                    let start =
                        manifest.geometry().piece_range(piece).unwrap().start + u64::from(offset);
                    for &b in &data[start as usize..(start + u64::from(len)) as usize] {
                        std::thread::sleep(Duration::from_secs(1));
                        if w.write_all(&[b]).is_err() || w.flush().is_err() {
                            return;
                        }
                    }
                    true
                } else if let Behaviour::HangUpAfter(n) = behaviour
                    && sent.load(Ordering::SeqCst) >= n
                {
                    return;
                } else {
                    let start =
                        manifest.geometry().piece_range(piece).unwrap().start + u64::from(offset);
                    let mut bytes = data[start as usize..start as usize + len as usize].to_vec();
                    if behaviour == Behaviour::Corrupt {
                        bytes[0] ^= 0xFF;
                    }
                    sent.fetch_add(1, Ordering::SeqCst);
                    sent_here.insert(piece);
                    write_frame(
                        &mut w,
                        &Message::Data {
                            content,
                            piece,
                            offset,
                            len,
                        },
                    )
                    .is_ok()
                        && w.write_all(&bytes).is_ok()
                }
            }
            // What the downloader holds: this owner serves it at once, whatever it holds.
            Message::Bitfield { .. }
                if matches!(behaviour, Behaviour::NeverUnchoke | Behaviour::SilentSeed) =>
            {
                true
            }
            Message::Bitfield { .. } => write_frame(&mut w, &Message::Unchoke).is_ok(),
            Message::Have { pieces, .. } => {
                let back = pieces.iter().filter(|p| sent_here.contains(p)).count();
                told_back.fetch_add(back as u32, Ordering::SeqCst);
                true
            }
            _ => false,
        };
        if !ok || w.flush().is_err() {
            return;
        }
    }
}

/// A child process that is killed if the test ends without waiting for it.
pub struct Proc {
    pub child: Child,
    out: Option<BufReader<ChildStdout>>,
}

impl Proc {
    pub fn start(bin: &str, args: &[&str], cwd: &Path, stdin: Stdio) -> Self {
        let mut child = Command::new(bin)
            .args(args)
            .current_dir(cwd)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        let out = BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            out: Some(out),
        }
    }

    /// Reads stdout lines until one contains `needle`; returns it.
    pub fn line_with(&mut self, needle: &str) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.out.as_mut().unwrap().read_line(&mut line).unwrap();
            assert!(n > 0, "output ended before a line with {needle:?}");
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Waits for the process to exit, killing it and failing after `timeout`.
    pub fn wait(mut self, timeout: Duration) -> ExitStatus {
        // Drain stdout (unless closed) so the child never blocks on a full pipe.
        let out = self.out.take();
        let drain = std::thread::spawn(move || {
            let mut sink = String::new();
            if let Some(mut out) = out {
                while out.read_line(&mut sink).unwrap_or(0) > 0 {}
            }
            sink
        });
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                drain.join().unwrap();
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("process did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Closes the reading end of the child's stdout: its next write finds no reader.
    pub fn close_stdout(&mut self) {
        self.out = None;
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const TRACKER_BIN: &str = env!("CARGO_BIN_EXE_tracker");
pub const NODE_BIN: &str = env!("CARGO_BIN_EXE_node");

/// Starts the `tracker` binary on a free port with `interval` seconds; returns it and its
/// address.
pub fn tracker_process(cwd: &Path, interval: u64) -> (Proc, SocketAddr) {
    let interval = interval.to_string();
    let mut p = Proc::start(
        TRACKER_BIN,
        &["--listen", "127.0.0.1:0", "--interval", &interval],
        cwd,
        std::process::Stdio::null(),
    );
    let line = p.line_with("listening on");
    let addr = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    (p, addr)
}

/// Arguments for the `node` binary: NAME on any port of 127.0.0.1, the given tracker, no
/// prompt, then `extra`.
pub fn node_args<'a>(name: &'a str, tracker: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "-n",
        name,
        "-p",
        "0",
        "--bind",
        "127.0.0.1",
        "--tracker",
        tracker,
        "--no-prompt",
    ];
    args.extend_from_slice(extra);
    args
}
