//! The swarm at scale, on hosts of their own: one seeder and N leechers, each a network
//! namespace on a private switch with its sending capped at R by `tc tbf`, a tracker on a
//! host of its own, the `tracker` and `node` binaries with default settings. Every leecher
//! is told to download at the same moment and stays online after it finishes, as a fleet's
//! agents do. Prints, for each N, the median, 90th percentile and last finish as multiples
//! of S/R (S the file size: the time the seeder needs to send one copy), how many copies
//! the seeder sent, and the CPU the processes used, beside the machine's capacity.
//!
//! ```text
//! cargo bench --bench swarm_hosts                       # N = 8, 16, 32, 64; 32 MiB at 1 MiB/s
//! P2P_HOSTS_N=64 P2P_HOSTS_MIB=32 P2P_HOSTS_RATE_MIB=2 cargo bench --bench swarm_hosts
//! P2P_HOSTS_TRACE=1 P2P_HOSTS_ARGS="--upload-slots 8" cargo bench --bench swarm_hosts
//! ```
//!
//! `P2P_HOSTS_NODE=PATH` runs another build's `node` binary on every host (to compare two
//! builds in the same hour: runs of one build differ by ±0.1 × S/R from hour to hour).
//! `P2P_HOSTS_ARGS` adds flags to every node (to explore settings); `P2P_HOSTS_TRACE=1`
//! prints, second by second, the pieces the leechers hold together, what the seeder has
//! sent, and how many leechers have finished; `P2P_HOSTS_LOG=FILE` keeps every line the
//! hosts print (with `-v` under a trace), timed.
//!
//! Needs root and iproute2 (network namespaces); without them it says so and measures
//! nothing. Every namespace is removed when a run ends, however it ends.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::{Ticks, bench_dir, env_or, generate};

#[path = "support/lab.rs"]
mod lab;
mod support;

use lab::Lab;

const NODE: &str = env!("CARGO_BIN_EXE_node");
const TRACKER: &str = env!("CARGO_BIN_EXE_tracker");

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let mib: u64 = env_or("P2P_HOSTS_MIB", 32);
    // 1 MiB/s: at 2 MiB/s, 65 hosts sending at their caps keep two cores busy with the
    // bridge's packet forwarding (85-90 %), and the machine, not the swarm, sets the pace.
    let rate_mib: f64 = env_or("P2P_HOSTS_RATE_MIB", 1.0);
    let ns: Vec<usize> = std::env::var("P2P_HOSTS_N")
        .unwrap_or_else(|_| "8,16,32,64".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let size = mib << 20;
    let rate = rate_mib * f64::from(1 << 20);
    let ideal = size as f64 / rate;
    if Lab::new("p2pprobe", &[], "1mbit").is_none() {
        println!("swarm_hosts: skipped: network namespaces need root and iproute2");
        return;
    }
    println!(
        "swarm_hosts: {mib} MiB file, every host's upload capped at {rate_mib} MiB/s, S/R = {ideal:.1} s, default settings"
    );
    println!(
        "{:>5} {:>8} {:>8} {:>8} {:>9} {:>14} {:>9} {:>10} {:>13}",
        "N",
        "p50",
        "p90",
        "last",
        "finished",
        "seeder copies",
        "exact",
        "CPU nodes",
        "machine busy"
    );
    for n in ns {
        let r = run(n, size, rate);
        let x = |d: Option<f64>| d.map_or("-".into(), |d| format!("{:.2}x", d / ideal));
        println!(
            "{n:>5} {:>8} {:>8} {:>8} {:>9} {:>14.2} {:>9} {:>9.0}% {:>12.0}%",
            x(r.percentile(0.5)),
            x(r.percentile(0.9)),
            x(if r.finished.len() == n {
                r.percentile(1.0)
            } else {
                None
            }),
            format!("{}/{n}", r.finished.len()),
            r.seeder_sent as f64 / size as f64,
            format!("{}/{n}", r.exact),
            r.cpu_share * 100.0,
            r.machine_busy * 100.0,
        );
    }
}

/// What one run measured.
struct Run {
    /// Seconds from the start to each leecher's finish, sorted.
    finished: Vec<f64>,
    seeder_sent: u64,
    exact: usize,
    /// CPU seconds of every process over wall seconds × cores.
    cpu_share: f64,
    /// The machine's busy share while the leechers downloaded, kernel work included
    /// (softirq: the switch forwarding packets), from `/proc/stat`. Near 100 %, the
    /// machine, not the swarm, set the pace.
    machine_busy: f64,
}

impl Run {
    fn percentile(&self, p: f64) -> Option<f64> {
        let i = ((self.finished.len() as f64 * p).ceil() as usize).checked_sub(1)?;
        self.finished.get(i).copied()
    }
}

/// One host's process: its stdin, to type commands, and its lines, read by a thread.
struct Host {
    child: Child,
    stdin: ChildStdin,
}

fn run(n: usize, size: u64, rate: f64) -> Run {
    let hosts: Vec<String> = ["tracker".to_string(), "seeder".to_string()]
        .into_iter()
        .chain((0..n).map(|i| format!("l{i}")))
        .collect();
    let rate_tc = format!("{}bit", (rate * 8.0) as u64);
    let lab = Lab::new("p2pb", &hosts, &rate_tc).expect("root was checked");
    let work = tempfile::tempdir_in(bench_dir()).unwrap();
    let cwd = work.path();
    let (lines_tx, lines) = mpsc::channel::<(usize, String, Instant)>();
    let tracker_addr = format!("{}:12340", Lab::addr(0));
    let mut procs: Vec<Host> = Vec::new();
    let mut start = |i: usize, bin: &str, args: &[&str]| {
        let mut child = lab
            .command(&hosts[i], bin, args, cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting a host's process");
        let stdout = child.stdout.take().unwrap();
        let tx = lines_tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((i, line, Instant::now())).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take().unwrap();
        procs.push(Host { child, stdin });
    };
    start(0, TRACKER, &["--listen", &tracker_addr, "-q"]);
    std::fs::create_dir_all(cwd.join("seeder")).unwrap();
    let original = cwd.join("seeder/f.bin");
    generate(&original, size, 42);
    let node_args = |i: usize, name: &str, extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = [
            "-n",
            name,
            "-p",
            "7000",
            "--bind",
            &Lab::addr(i).to_string(),
            "--tracker",
            &tracker_addr,
            "--dir",
            name,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let extra: Vec<String> = std::env::var("P2P_HOSTS_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
    let trace = std::env::var("P2P_HOSTS_TRACE").is_ok_and(|v| v == "1");
    // Every line every host printed, with seconds since the start, for a closer look.
    let mut log = std::env::var("P2P_HOSTS_LOG")
        .ok()
        .map(|path| std::fs::File::create(path).expect("creating the log"));
    let mut common: Vec<&str> = extra.iter().map(String::as_str).collect();
    if trace {
        common.push("-v");
    }
    let seeder_extra: Vec<&str> = ["--upload", "f.bin"]
        .into_iter()
        .chain(common.clone())
        .collect();
    let node = std::env::var("P2P_HOSTS_NODE").unwrap_or_else(|_| NODE.into());
    let seeder_args = node_args(1, "seeder", &seeder_extra);
    start(
        1,
        &node,
        &seeder_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    wait_for(&lines, |i, l| i == 1 && l.contains("sharing f.bin"));
    for i in 0..n {
        let name = format!("l{i}");
        let args = node_args(i + 2, &name, &common);
        start(
            i + 2,
            &node,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        );
    }
    let mut ready = 0;
    wait_for(&lines, |i, l| {
        ready += usize::from(i >= 2 && l.contains("serving on"));
        ready == n
    });

    let cpu_before = children_cpu_secs();
    let machine_before = Ticks::now();
    let began = Instant::now();
    for host in &mut procs[2..] {
        host.stdin.write_all(b"download f.bin\n").unwrap();
        host.stdin.flush().unwrap();
    }
    let deadline = began + Duration::from_secs_f64(12.0 * size as f64 / rate + 30.0);
    let mut finished: HashMap<usize, f64> = HashMap::new();
    let mut failed = 0;
    // With a trace: pieces received by leechers and pieces the seeder sent, per second.
    let (mut held, mut seeded) = (Vec::<u32>::new(), Vec::<u32>::new());
    // The piece count, from a leecher's first line: "downloading f.bin: N bytes, P pieces, …".
    let mut pieces = 0u32;
    while finished.len() + failed < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok((i, line, at)) = lines.recv_timeout(left) else {
            break;
        };
        let second = at.saturating_duration_since(began).as_secs() as usize;
        if let Some(log) = log.as_mut() {
            let t = at.saturating_duration_since(began).as_secs_f64();
            let _ = writeln!(log, "{t:.3} {} {line}", hosts[i]);
        }
        if pieces == 0
            && let Some(rest) = line.strip_prefix("downloading f.bin: ")
        {
            pieces = rest
                .split(", ")
                .nth(1)
                .and_then(|p| p.strip_suffix(" pieces"))
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
        }
        if i >= 2 && line.starts_with("downloaded f.bin") {
            finished.insert(i, at.duration_since(began).as_secs_f64());
        } else if i >= 2 && line.starts_with("download f.bin:") {
            failed += 1;
        } else if trace && i >= 2 && line.starts_with("received piece") {
            bump(&mut held, second);
        } else if trace && i == 1 && line.starts_with("sent piece") {
            bump(&mut seeded, second);
        }
    }
    if trace {
        let pieces = f64::from(pieces.max(1));
        let (mut h, mut s) = (0, 0);
        for sec in 0..held.len().max(seeded.len()) {
            h += held.get(sec).copied().unwrap_or(0);
            s += seeded.get(sec).copied().unwrap_or(0);
            let done = finished.values().filter(|&&t| t < (sec + 1) as f64).count();
            println!(
                "  t={:>3}s leechers hold {:>5.1}% of their pieces, seeder sent {:>5.2} copies, {done} done",
                sec + 1,
                100.0 * f64::from(h) / (pieces * n as f64),
                f64::from(s) / pieces
            );
        }
    }
    let wall = began.elapsed().as_secs_f64();
    let machine_busy = Ticks::now().busy_since(&machine_before);

    // The seeder's counters, then everyone leaves.
    procs[1].stdin.write_all(b"status\n").unwrap();
    procs[1].stdin.flush().unwrap();
    let mut seeder_sent = 0;
    wait_for(&lines, |i, l| {
        let sent = l
            .trim()
            .strip_prefix("sent ")
            .and_then(|rest| rest.split(" / ").nth(1))
            .and_then(|b| b.split(' ').next())
            .and_then(|b| b.parse().ok());
        if let (1, Some(bytes)) = (i, sent) {
            seeder_sent = bytes;
            true
        } else {
            false
        }
    });
    for host in &mut procs {
        let _ = host.stdin.write_all(b"exit\n");
    }
    for host in &mut procs {
        let _ = host.child.kill();
        let _ = host.child.wait();
    }
    let cpu = children_cpu_secs() - cpu_before;
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get()) as f64;
    let want = file_hash(&original);
    let exact = (0..n)
        .filter(|i| {
            let path = cwd.join(format!("l{i}/f.bin"));
            want.is_some() && file_hash(&path) == want
        })
        .count();
    let mut times: Vec<f64> = finished.into_values().collect();
    times.sort_by(f64::total_cmp);
    drop(lab);
    Run {
        finished: times,
        seeder_sent,
        exact,
        cpu_share: cpu / (wall * cores),
        machine_busy,
    }
}

fn bump(counts: &mut Vec<u32>, at: usize) {
    if counts.len() <= at {
        counts.resize(at + 1, 0);
    }
    counts[at] += 1;
}

/// Reads host lines until `done` says so; panics after two minutes of silence.
fn wait_for(
    lines: &mpsc::Receiver<(usize, String, Instant)>,
    mut done: impl FnMut(usize, &str) -> bool,
) {
    loop {
        let (i, line, _) = lines
            .recv_timeout(Duration::from_secs(120))
            .expect("a host fell silent");
        if done(i, &line) {
            return;
        }
    }
}

/// CPU seconds (user + system) of every child this process has waited for, from
/// `/proc/self/stat` (fields 16 and 17, in clock ticks of 1/100 s).
fn children_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the name: state is field 3, so field k is at index k - 3.
    (ticks(16 - 3) + ticks(17 - 3)) / 100.0
}

fn file_hash(path: &Path) -> Option<blake3::Hash> {
    std::fs::read(path).ok().map(|bytes| blake3::hash(&bytes))
}
