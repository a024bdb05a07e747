//! End-to-end transfer: a file from 1, 2 and 4 owners to one downloader over loopback,
//! every owner and the downloader a separate `node` process, beside a plain single-stream
//! TCP copy of the same file measured in the same run; each owner count once open and once
//! with a network key (every peer connection encrypted), and the ratio of the two. Then
//! the tracker's answered requests per second under a load generator, open and with a key.
//!
//! ```text
//! cargo bench --bench transfer
//! P2P_BENCH_MIB=4096 P2P_BENCH_RUNS=5 P2P_BENCH_OWNERS=4 cargo bench --bench transfer
//! P2P_BENCH_KEY=0 cargo bench --bench transfer     # skip the rows with a key
//! ```
//!
//! Files live in `P2P_BENCH_DIR`, by default `/dev/shm` where it exists: on tmpfs the
//! page cache is the storage, so the figures measure the network and verification path,
//! not this shared machine's disk, whose writeback made runs differ by 2×. Both the copy
//! and the download end with a sync (the download syncs before its rename), so they are
//! compared like for like. Figures are medians.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use p2ptorrent::key::{DatagramSeal, Direction};
use p2ptorrent::messages::{
    Announce, ContentId, Counters, MAX_DATAGRAM_LEN, NodeToTracker, PROTOCOL_VERSION,
    TrackerRequest, encode_request,
};
use p2ptorrent::tracker::{Rates, TableLimits};
use p2ptorrent::{NetworkKey, Tracker, TrackerConfig};
use support::{bench_dir, env_or, generate};

mod support;

const NODE: &str = env!("CARGO_BIN_EXE_node");

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not run us meaningfully.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let mib: u64 = env_or("P2P_BENCH_MIB", 1024);
    let runs: usize = env_or("P2P_BENCH_RUNS", 3);
    let owners: Vec<usize> = std::env::var("P2P_BENCH_OWNERS")
        .unwrap_or_else(|_| "1,2,4".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let size = mib << 20;
    let base = bench_dir();
    let work = tempfile::tempdir_in(&base).unwrap();
    let source = work.path().join("bench.bin");
    generate(&source, size, 7);
    println!(
        "transfer of {mib} MiB over loopback, files in {}, median of {runs} runs",
        base.display()
    );
    println!(
        "{:<28} {:>9} {:>9} {:>14}",
        "setup", "MB/s", "ratio", "peak RSS"
    );

    let plain = median(
        (0..runs)
            .map(|_| plain_copy(&source, &work.path().join("copy.bin")))
            .collect(),
    );
    let plain_mbps = size as f64 / plain / 1e6;
    println!(
        "{:<28} {:>9.0} {:>9.2} {:>14}",
        "plain TCP copy (baseline)", plain_mbps, 1.0, "-"
    );

    let key_path = work.path().join("bench.key");
    let keyed = env_or("P2P_BENCH_KEY", 1) == 1;
    if keyed {
        NetworkKey::create(&key_path).unwrap();
    }
    for n in owners {
        let row = |key: Option<&Path>| {
            let (secs, rss) = p2p_download(work.path(), &source, n, runs, key);
            println!(
                "{:<28} {:>9.0} {:>9.2} {:>10.1} MiB",
                format!(
                    "p2ptorrent, {n} owner{}{}",
                    if n == 1 { "" } else { "s" },
                    if key.is_some() { ", key" } else { "" }
                ),
                size as f64 / secs / 1e6,
                plain / secs,
                rss as f64 / 1024.0
            );
            secs
        };
        let open = row(None);
        if keyed {
            let sealed = row(Some(&key_path));
            println!("{:<28} {:>19.2}", "  encrypted / open", open / sealed);
        }
    }
    tracker_load(keyed.then(|| NetworkKey::load(&key_path).unwrap()));
}

/// One plain TCP copy, as `socat -b 131072` does it: 128 KiB read/write loops on both
/// sides, then fsync. Returns seconds.
fn plain_copy(source: &Path, dest: &Path) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let src = source.to_owned();
    let sender = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut f = File::open(src).unwrap();
        let mut buf = vec![0u8; 128 * 1024];
        loop {
            let n = f.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n]).unwrap();
        }
    });
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    let mut out = File::create(dest).unwrap();
    let mut buf = vec![0u8; 128 * 1024];
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).unwrap();
    }
    out.sync_all().unwrap();
    let secs = started.elapsed().as_secs_f64();
    sender.join().unwrap();
    std::fs::remove_file(dest).unwrap();
    secs
}

/// Runs `runs` downloads of `source` from `owners` node processes, all with the network
/// key in `key` if given; returns the median seconds (as the downloader reports them) and
/// the largest peak RSS in KiB.
fn p2p_download(
    work: &Path,
    source: &Path,
    owners: usize,
    runs: usize,
    key: Option<&Path>,
) -> (f64, u64) {
    let mut config = TrackerConfig::new("127.0.0.1:0".parse().unwrap());
    let mut key_args = Vec::new();
    if let Some(path) = key {
        config = config.key(NetworkKey::load(path).unwrap());
        key_args = vec!["--key", path.to_str().unwrap()];
    }
    let (tracker, _events) = Tracker::start(config).unwrap();
    let taddr = tracker.local_addr().to_string();
    let mut seeders: Vec<Child> = (0..owners)
        .map(|i| {
            let dir = work.join(format!("S{owners}-{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            let _ = std::fs::hard_link(source, dir.join("bench.bin"));
            let name = format!("S{i}");
            let mut args = vec![
                name.as_str(),
                "--dir",
                dir.to_str().unwrap(),
                "--tracker",
                &taddr,
                "--upload",
                "bench.bin",
                "--no-prompt",
            ];
            args.extend_from_slice(&key_args);
            let mut child = node(&args);
            wait_for_line(&mut child, "sharing");
            child
        })
        .collect();
    let dl_dir = work.join("L");
    let mut times = Vec::new();
    let mut peak = 0;
    for _ in 0..runs {
        let _ = std::fs::remove_file(dl_dir.join("bench.bin"));
        let owners_arg = owners.to_string();
        let mut args = vec![
            "L",
            "--dir",
            dl_dir.to_str().unwrap(),
            "--tracker",
            &taddr,
            "--download",
            "bench.bin",
            "--exit-when-done",
            "--no-prompt",
            "--owners",
            &owners_arg,
        ];
        args.extend_from_slice(&key_args);
        let mut child = node(&args);
        let pid = child.id();
        let out = BufReader::new(child.stdout.take().unwrap());
        let reader = std::thread::spawn(move || {
            out.lines()
                .map_while(Result::ok)
                .find(|l| l.starts_with("downloaded"))
        });
        let mut hwm = 0;
        while child.try_wait().unwrap().is_none() {
            hwm = hwm.max(vm_hwm_kib(pid).unwrap_or(0));
            std::thread::sleep(Duration::from_millis(5));
        }
        peak = u64::max(peak, hwm);
        let line = reader
            .join()
            .unwrap()
            .expect("the downloader reports its download");
        // "downloaded NAME (...) from N owners in 1.23 s, ..."
        let secs: f64 = line
            .split(" in ")
            .nth(1)
            .and_then(|t| t.split(' ').next())
            .and_then(|t| t.parse().ok())
            .unwrap();
        times.push(secs);
    }
    let _ = std::fs::remove_file(dl_dir.join("bench.bin"));
    for child in &mut seeders {
        let _ = child.kill();
        let _ = child.wait();
    }
    tracker.shutdown().unwrap();
    (median(times), peak)
}

fn node(args: &[&str]) -> Child {
    let mut full = vec!["-n", args[0], "-p", "0", "--bind", "127.0.0.1"];
    full.extend_from_slice(&args[1..]);
    Command::new(NODE)
        .args(&full)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_for_line(child: &mut Child, needle: &str) {
    let out = child.stdout.as_mut().unwrap();
    let mut reader = BufReader::new(out);
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap() > 0 {
        if line.contains(needle) {
            return;
        }
        line.clear();
    }
    panic!("node ended before printing {needle:?}");
}

/// Reads a process's peak resident set size so far, in KiB.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

const FILES: u32 = 10_000;
const OWNERS: u16 = 50;
const WINDOW: usize = 64;

/// Fills a tracker (and, with `key`, a second one under it) with 10,000 files × 50
/// owners, then measures answered requests per second from two client threads keeping
/// requests in flight (80 % `need`, 20 % `have`): five 2-second windows per tracker,
/// alternating, reporting medians.
fn tracker_load(key: Option<NetworkKey>) {
    let mut trackers = vec![(fill(None), None)];
    if let Some(key) = key {
        trackers.push((fill(Some(&key)), Some(key)));
    }
    let mut rates = vec![Vec::new(); trackers.len()];
    for _ in 0..5 {
        for (i, (tracker, key)) in trackers.iter().enumerate() {
            rates[i].push(measure(tracker, key.as_ref(), Duration::from_secs(2)));
        }
    }
    let medians: Vec<f64> = rates.into_iter().map(median).collect();
    println!(
        "tracker: {:.0} requests/s answered (median of 5 windows of 2 s; 2 client threads; 80% need with 50 owners, 20% have)",
        medians[0]
    );
    if let Some(sealed) = medians.get(1) {
        println!(
            "tracker, key: {sealed:.0} requests/s answered, {:.2} x open (clients seal, tracker opens and seals)",
            sealed / medians[0]
        );
    }
    for (tracker, _) in trackers {
        tracker.shutdown().unwrap();
    }
}

fn announce(file: u32, port: u16) -> NodeToTracker {
    NodeToTracker::Have(Announce {
        node: format!("n{port}"),
        port,
        file: format!("file-{file}.bin"),
        content: ContentId(*blake3::hash(&file.to_le_bytes()).as_bytes()),
        size: 1 << 30,
        pieces: 1024,
        complete: true,
        counters: Counters {
            files_sent: u64::from(port),
            ..Counters::default()
        },
    })
}

/// Starts a tracker (under `key`, if given) and fills its table.
fn fill(key: Option<&NetworkKey>) -> Tracker {
    // Every request comes from 127.0.0.1 here: the per-address caps and rates, meant to
    // stop one stranger, are lifted so the bench measures the table, not the throttle.
    let mut config = TrackerConfig::new("127.0.0.1:0".parse().unwrap())
        .limits(TableLimits {
            nodes_per_address: usize::from(OWNERS),
            rows_per_address: 1_000_000,
            ..TableLimits::default()
        })
        .rates(Rates {
            announces: 1e9,
            lookups: 1e9,
            searches: 1e9,
        });
    if let Some(key) = key {
        config = config.key(key.clone());
    }
    let (tracker, _events) = Tracker::start(config).unwrap();
    let started = Instant::now();
    let fill: Vec<NodeToTracker> = (0..FILES)
        .flat_map(|f| (1..=OWNERS).map(move |p| (f, p)))
        .map(|(f, p)| announce(f, p))
        .collect();
    let filled = blast(tracker.local_addr(), fill, WINDOW, key);
    println!(
        "tracker{}: filled with {FILES} files x {OWNERS} owners ({filled} announces) in {:.1} s",
        if key.is_some() { ", key" } else { "" },
        started.elapsed().as_secs_f64()
    );
    tracker
}

/// Returns the requests per second `tracker` answers during `duration`.
fn measure(tracker: &Tracker, key: Option<&NetworkKey>, duration: Duration) -> f64 {
    let addr = tracker.local_addr();
    let answered_before = tracker.answered();
    let started = Instant::now();
    let threads: Vec<_> = (0..2)
        .map(|c| {
            let key = key.cloned();
            std::thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(c);
                while started.elapsed() < duration {
                    let batch: Vec<NodeToTracker> = (0..1000)
                        .map(|_| {
                            let file = rng.u32(..FILES);
                            if rng.u8(..10) < 8 {
                                NodeToTracker::Need {
                                    file: format!("file-{file}.bin"),
                                    numwant: 50,
                                    content: None,
                                }
                            } else {
                                announce(file, rng.u16(1..=OWNERS))
                            }
                        })
                        .collect();
                    blast(addr, batch, WINDOW, key.as_ref());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    (tracker.answered() - answered_before) as f64 / started.elapsed().as_secs_f64()
}

/// Sends `requests` keeping up to `window` unanswered, each sealed under `key` if given;
/// returns how many replies came back (a lost datagram is given up after 200 ms).
fn blast(
    addr: SocketAddr,
    requests: Vec<NodeToTracker>,
    window: usize,
    key: Option<&NetworkKey>,
) -> usize {
    // One token serves every request from this host for a minute or more.
    let mut client = p2ptorrent::TrackerClient::new(addr);
    if let Some(key) = key {
        client = client.with_key(key);
    }
    let token = client.token().unwrap();
    let seal = key.map(DatagramSeal::new);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = vec![0u8; MAX_DATAGRAM_LEN];
    let (mut sent, mut outstanding, mut replies) = (0, 0, 0);
    let total = requests.len();
    let mut requests = requests.into_iter();
    while sent < total || outstanding > 0 {
        while outstanding < window && sent < total {
            let body = requests.next().unwrap();
            let datagram = encode_request(&TrackerRequest {
                version: PROTOCOL_VERSION,
                txid: sent as u64,
                token,
                body,
            })
            .unwrap();
            let datagram = match &seal {
                Some(seal) => seal.seal(Direction::Request, &datagram).unwrap(),
                None => datagram,
            };
            socket.send(&datagram).unwrap();
            sent += 1;
            outstanding += 1;
        }
        match socket.recv(&mut buf) {
            Ok(_) => {
                replies += 1;
                outstanding -= 1;
            }
            Err(_) => outstanding = 0, // lost: move on
        }
    }
    replies
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
