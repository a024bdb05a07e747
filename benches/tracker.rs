//! The tracker's cost: requests answered per second under a load generator, and per
//! CPU-second of the tracker's own threads (which does not depend on how fast the generator
//! is, nor on what else the two cores run); and the memory one owner entry takes.
//!
//! ```text
//! cargo bench --bench tracker
//! P2P_BENCH_KEY=0 cargo bench --bench tracker      # skip the tracker with a key
//! P2P_BENCH_WINDOWS=9 cargo bench --bench tracker
//! ```
//!
//! A tracker is filled with 10,000 files × 50 owners (500,000 announces); two client
//! threads then keep 64 requests each in flight, 80 % `need` (50 owners wanted), 20 %
//! `have`, for 2-second windows. The tracker's CPU time is read per thread from
//! `/proc/self/task/*/stat` (threads named `tracker-udp`); memory is the bytes the table
//! holds live after the fill, counted by this binary's allocator, divided by the entries.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use p2ptorrent::key::{DatagramSeal, Direction};
use p2ptorrent::messages::{
    Announce, ContentId, Counters, MAX_DATAGRAM_LEN, NodeToTracker, PROTOCOL_VERSION,
    TrackerRequest, encode_request,
};
use p2ptorrent::tracker::{Rates, TableLimits};
use p2ptorrent::{NetworkKey, Tracker, TrackerConfig};
use support::env_or;

mod support;

/// Counts the bytes allocated and not yet freed, process-wide.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only a count is kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: as `alloc` and `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const FILES: u32 = 10_000;
const OWNERS: u16 = 50;
const WINDOW: usize = 64;

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not run us meaningfully.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let windows: usize = env_or("P2P_BENCH_WINDOWS", 5);
    let echo = Echo::start();
    let mut trackers = vec![(fill(None), None)];
    if env_or("P2P_BENCH_KEY", 1) == 1 {
        let key = NetworkKey::from_bytes(*blake3::hash(b"bench").as_bytes());
        trackers.push((fill(Some(&key)), Some(key)));
    }
    let mut rates = vec![Vec::new(); trackers.len()];
    let mut per_cpu = vec![Vec::new(); trackers.len()];
    let mut user_share = vec![Vec::new(); trackers.len()];
    // Microseconds of CPU per request, in user space and in the kernel: the user part
    // is the tracker's own work, steadier than the total on a shared machine.
    let mut user_us = vec![Vec::new(); trackers.len()];
    let mut kernel_us = vec![Vec::new(); trackers.len()];
    // Each tracker's figure over the echo's in the window just before: the machine's
    // load moves both, so the ratio is steadier than either.
    let mut to_echo = vec![Vec::new(); trackers.len()];
    let (mut echo_rates, mut echo_per_cpu) = (Vec::new(), Vec::new());
    for _ in 0..windows {
        let (rate, ceiling) = echo.window();
        echo_rates.push(rate);
        echo_per_cpu.push(ceiling);
        for (i, (tracker, key)) in trackers.iter().enumerate() {
            let (answered, cpu, wall) = measure(tracker, key.as_ref(), Duration::from_secs(2));
            rates[i].push(answered as f64 / wall.as_secs_f64());
            per_cpu[i].push(answered as f64 / cpu.total().as_secs_f64().max(1e-3));
            user_share[i].push(cpu.user.as_secs_f64() / cpu.total().as_secs_f64().max(1e-3));
            let per_request = |d: Duration| 1e6 * d.as_secs_f64() / answered.max(1) as f64;
            user_us[i].push(per_request(cpu.user));
            kernel_us[i].push(per_request(cpu.system));
            to_echo[i].push(per_cpu[i].last().copied().unwrap_or(0.0) / ceiling.max(1.0));
        }
    }
    echo.stop();
    println!(
        "echo baseline: {:.0} requests/s answered, {:.0} per echo CPU-second (one thread answering each datagram with {ECHO_REPLY} bytes, nothing else: the kernel's share; each window just before the trackers')",
        median(echo_rates),
        median(echo_per_cpu),
    );
    for (i, (_, key)) in trackers.iter().enumerate() {
        println!(
            "tracker{}: {:.0} requests/s answered, {:.0} per tracker CPU-second ({:.2} x the echo's, window by window), {:.0}% of it in user space; {:.2} µs user + {:.2} µs kernel per request (medians of {windows} windows of 2 s; 2 client threads; 80% need with 50 owners, 20% have)",
            if key.is_some() { ", key" } else { "" },
            median(rates[i].clone()),
            median(per_cpu[i].clone()),
            median(to_echo[i].clone()),
            100.0 * median(user_share[i].clone()),
            median(user_us[i].clone()),
            median(kernel_us[i].clone()),
        );
    }
    for (tracker, _) in trackers {
        tracker.shutdown().unwrap();
    }
}

/// Starts a tracker (under `key`, if given), fills its table and reports what it holds.
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
    if let Some(threads) = std::env::var("P2P_TRACKER_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
    {
        config = config.threads(threads);
    }
    let (tracker, _events) = Tracker::start(config).unwrap();
    let before = LIVE.load(Ordering::Relaxed);
    let started = Instant::now();
    let requests = (0..FILES)
        .flat_map(|f| (1..=OWNERS).map(move |p| (f, p)))
        .map(|(f, p)| announce(f, p));
    let filled = blast(tracker.local_addr(), requests, WINDOW, key);
    let took = started.elapsed();
    let held = LIVE.load(Ordering::Relaxed) - before;
    let entries = tracker.metrics().owners;
    println!(
        "tracker{}: filled with {FILES} files x {OWNERS} owners ({filled} announces) in {:.1} s; the table holds {:.1} MiB, {:.0} bytes per owner entry",
        if key.is_some() { ", key" } else { "" },
        took.as_secs_f64(),
        held as f64 / (1 << 20) as f64,
        held as f64 / entries.max(1) as f64,
    );
    tracker
}

/// Loads `tracker` for `duration`; returns the requests it answered, the CPU time its
/// threads took and the wall time.
fn measure(
    tracker: &Tracker,
    key: Option<&NetworkKey>,
    duration: Duration,
) -> (u64, Cpu, Duration) {
    let answered_before = tracker.answered();
    let cpu_before = tracker_cpu();
    let started = Instant::now();
    load(tracker.local_addr(), key, duration);
    (
        tracker.answered() - answered_before,
        tracker_cpu() - cpu_before,
        started.elapsed(),
    )
}

/// Two client threads keeping requests in flight to `addr` for `duration`.
fn load(addr: SocketAddr, key: Option<&NetworkKey>, duration: Duration) {
    let started = Instant::now();
    let threads: Vec<_> = (0..2)
        .map(|c| {
            let key = key.cloned();
            std::thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(c);
                while started.elapsed() < duration {
                    let batch = (0..1000).map(|_| {
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
                    });
                    blast(
                        addr,
                        batch.collect::<Vec<_>>().into_iter(),
                        WINDOW,
                        key.as_ref(),
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// How large the echo baseline's replies are: about a `need` answer with 50 owners.
const ECHO_REPLY: usize = 1500;

/// The echo baseline's port, once it runs.
static ECHO_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

/// A thread that only answers each datagram with `ECHO_REPLY` bytes: under the same load,
/// what the kernel's UDP path costs on this machine, the ceiling for any tracker answering
/// one datagram per request.
struct Echo {
    addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    answered: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Echo {
    fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        ECHO_PORT.store(addr.port(), Ordering::Relaxed);
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let answered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (stop2, answered2) = (stop.clone(), answered.clone());
        let thread = std::thread::Builder::new()
            .name("echo-udp".into())
            .spawn(move || {
                let (mut buf, reply) = (vec![0u8; MAX_DATAGRAM_LEN], vec![7u8; ECHO_REPLY]);
                while !stop2.load(Ordering::Relaxed) {
                    if let Ok((_, from)) = socket.recv_from(&mut buf)
                        && socket.send_to(&reply, from).is_ok()
                    {
                        answered2.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .unwrap();
        Self {
            addr,
            stop,
            answered,
            thread,
        }
    }

    /// Loads it for one 2-second window; returns requests per second and per CPU-second.
    fn window(&self) -> (f64, f64) {
        let (before, cpu_before, started) = (
            self.answered.load(Ordering::Relaxed),
            thread_cpu("echo-udp"),
            Instant::now(),
        );
        load(self.addr, None, Duration::from_secs(2));
        let n = self.answered.load(Ordering::Relaxed) - before;
        let cpu = (thread_cpu("echo-udp") - cpu_before).total();
        (
            n as f64 / started.elapsed().as_secs_f64(),
            n as f64 / cpu.as_secs_f64().max(1e-3),
        )
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
    }
}

/// The CPU time the threads named `tracker-udp` have used.
fn tracker_cpu() -> Cpu {
    thread_cpu("tracker-udp")
}

/// CPU time, in user space and in the kernel.
#[derive(Clone, Copy, Default)]
struct Cpu {
    user: Duration,
    system: Duration,
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, earlier: Cpu) -> Cpu {
        Cpu {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

impl Cpu {
    fn total(self) -> Duration {
        self.user + self.system
    }
}

/// The CPU time the threads named `name` have used.
fn thread_cpu(name: &str) -> Cpu {
    let ticks_per_second = 100; // USER_HZ: what /proc reports in, on every Linux
    let (mut user, mut system) = (0u64, 0u64);
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        // After the command name in parentheses: state is field 3, utime 14, stime 15.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        user += fields[11].parse::<u64>().unwrap();
        system += fields[12].parse::<u64>().unwrap();
    }
    let time = |ticks: u64| Duration::from_millis(ticks * 1000 / ticks_per_second);
    Cpu {
        user: time(user),
        system: time(system),
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

/// An address token from the tracker at `addr`: one serves every request from this host
/// for a minute or more. The echo baseline issues none, and needs none.
fn token_for(addr: SocketAddr, key: Option<&NetworkKey>) -> [u8; 16] {
    if addr.port() == ECHO_PORT.load(Ordering::Relaxed) {
        return [0; 16];
    }
    let mut client = p2ptorrent::TrackerClient::new(addr);
    if let Some(key) = key {
        client = client.with_key(key);
    }
    client.token().unwrap()
}

/// Sends `requests` keeping up to `window` unanswered, each sealed under `key` if given;
/// returns how many replies came back (a lost datagram is given up after 200 ms).
fn blast(
    addr: SocketAddr,
    mut requests: impl Iterator<Item = NodeToTracker>,
    window: usize,
    key: Option<&NetworkKey>,
) -> usize {
    let token = token_for(addr, key);
    let seal = key.map(DatagramSeal::new);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = vec![0u8; MAX_DATAGRAM_LEN];
    let (mut sent, mut outstanding, mut replies, mut done) = (0u64, 0, 0, false);
    while !done || outstanding > 0 {
        while outstanding < window && !done {
            let Some(body) = requests.next() else {
                done = true;
                break;
            };
            let datagram = encode_request(&TrackerRequest {
                version: PROTOCOL_VERSION,
                txid: sent,
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
