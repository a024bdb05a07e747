//! End-to-end transfer: a file from 1, 2 and 4 owners to one downloader over loopback,
//! every owner and the downloader a separate `node` process, beside a plain single-stream
//! TCP copy of the same file; each owner count once open and once with a network key
//! (every peer connection encrypted), and the ratio of the two. The tracker's own load is
//! measured by `benches/tracker.rs`.
//!
//! Every download is paired with a plain copy made just before it, and a row's ratio is the
//! median of its pairs' ratios: on this shared machine a copy's speed moves by half within
//! minutes, and fresh memory costs more when the host has just taken it back, so only
//! neighbours are compared. Beside each figure is the machine's busy CPU-seconds for one
//! run (every process and the kernel, from `/proc/stat`): near twice the seconds taken, both
//! cores were busy and the machine, not the wire, was the limit.
//!
//! ```text
//! cargo bench --bench transfer
//! P2P_BENCH_MIB=4096 P2P_BENCH_RUNS=5 P2P_BENCH_OWNERS=4 cargo bench --bench transfer
//! P2P_BENCH_KEY=0 cargo bench --bench transfer     # skip the rows with a key
//! P2P_BENCH_NODE=/tmp/node-before cargo bench --bench transfer   # another build's node
//! ```
//!
//! Files live in `P2P_BENCH_DIR`, by default `/dev/shm` where it exists: on tmpfs the
//! page cache is the storage, so the figures measure the network and verification path,
//! not this shared machine's disk, whose writeback made runs differ by 2×. Both the copy
//! and the download end with a sync (the download syncs before its rename), so they are
//! compared like for like. Figures are medians.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use p2ptorrent::{NetworkKey, Tracker, TrackerConfig};
use support::{Ticks, bench_dir, env_or, generate};

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
        "{:<28} {:>9} {:>9} {:>9} {:>14}",
        "setup", "MB/s", "ratio", "CPU-s", "peak RSS"
    );
    let copy_path = work.path().join("copy.bin");
    let copy = || plain_copy(&source, &copy_path);
    // One copy first, unpaired: it tells the reader the baseline before any row.
    let first = Timed::median(&(0..runs).map(|_| copy()).collect::<Vec<_>>());
    println!(
        "{:<28} {:>9.0} {:>9.2} {:>9.2} {:>14}",
        "plain TCP copy (baseline)",
        size as f64 / first.secs / 1e6,
        1.0,
        first.cpu,
        "-"
    );

    let key_path = work.path().join("bench.key");
    let keyed = env_or("P2P_BENCH_KEY", 1) == 1;
    if keyed {
        NetworkKey::create(&key_path).unwrap();
    }
    for n in owners {
        let row = |key: Option<&Path>| {
            let (pairs, rss) = p2p_download(work.path(), &source, n, runs, key, &copy);
            let downloads: Vec<Timed> = pairs.iter().map(|(_, d)| *d).collect();
            let copies: Vec<Timed> = pairs.iter().map(|(c, _)| *c).collect();
            let ratios = pairs.iter().map(|(c, d)| c.secs / d.secs).collect();
            let (dl, copied) = (Timed::median(&downloads), Timed::median(&copies));
            println!(
                "{:<28} {:>9.0} {:>9.2} {:>9.2} {:>10.1} MiB",
                format!(
                    "p2ptorrent, {n} owner{}{}",
                    if n == 1 { "" } else { "s" },
                    if key.is_some() { ", key" } else { "" }
                ),
                size as f64 / dl.secs / 1e6,
                median(ratios),
                dl.cpu,
                rss as f64 / 1024.0
            );
            println!(
                "{:<28} {:>9.0} {:>9} {:>9.2}",
                "  its paired copies",
                size as f64 / copied.secs / 1e6,
                "",
                copied.cpu
            );
            dl.secs
        };
        let open = row(None);
        if keyed {
            let sealed = row(Some(&key_path));
            println!("{:<28} {:>19.2}", "  encrypted / open", open / sealed);
        }
    }
}

/// How long one run took, and the machine's busy CPU-seconds meanwhile.
#[derive(Clone, Copy)]
struct Timed {
    secs: f64,
    cpu: f64,
}

impl Timed {
    /// The median time and, separately, the median CPU of `runs`.
    fn median(runs: &[Timed]) -> Timed {
        Timed {
            secs: median(runs.iter().map(|r| r.secs).collect()),
            cpu: median(runs.iter().map(|r| r.cpu).collect()),
        }
    }
}

/// One plain TCP copy, as `socat -b 131072` does it: 128 KiB read/write loops on both
/// sides, then fsync.
fn plain_copy(source: &Path, dest: &Path) -> Timed {
    let before = Ticks::now();
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
    let cpu = Ticks::now().busy_secs_since(&before);
    std::fs::remove_file(dest).unwrap();
    Timed { secs, cpu }
}

/// Runs `runs` downloads of `source` from `owners` node processes, all with the network
/// key in `key` if given, each just after a plain copy made by `copy`; returns each pair
/// (the download's seconds as the downloader reports them) and the largest peak RSS in KiB.
fn p2p_download(
    work: &Path,
    source: &Path,
    owners: usize,
    runs: usize,
    key: Option<&Path>,
    copy: &dyn Fn() -> Timed,
) -> (Vec<(Timed, Timed)>, u64) {
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
    let mut pairs = Vec::new();
    let mut peak = 0;
    for _ in 0..runs {
        let _ = std::fs::remove_file(dl_dir.join("bench.bin"));
        let copied = copy();
        let before = Ticks::now();
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
        let cpu = Ticks::now().busy_secs_since(&before);
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
        if std::env::var_os("P2P_BENCH_VERBOSE").is_some() {
            println!(
                "    pair: copy {:.3} s {:.2} CPU-s, download {secs:.3} s {cpu:.2} CPU-s",
                copied.secs, copied.cpu
            );
        }
        pairs.push((copied, Timed { secs, cpu }));
    }
    let _ = std::fs::remove_file(dl_dir.join("bench.bin"));
    for child in &mut seeders {
        let _ = child.kill();
        let _ = child.wait();
    }
    tracker.shutdown().unwrap();
    (pairs, peak)
}

fn node(args: &[&str]) -> Child {
    let mut full = vec!["-n", args[0], "-p", "0", "--bind", "127.0.0.1"];
    full.extend_from_slice(&args[1..]);
    let node = std::env::var("P2P_BENCH_NODE").unwrap_or_else(|_| NODE.into());
    Command::new(node)
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
