//! Swarming: one seeder capped at R and N leechers started together. Prints, for N = 1,
//! 4, 8, 16 and 32 (any N: the per-address connection cap is lifted), the time until the last leecher finishes as a multiple of S/R (S the file
//! size), and how many copies of the file the seeder sent. A client-server design needs
//! N × S/R and N copies.
//!
//! ```text
//! cargo bench --bench swarm
//! P2P_SWARM_MIB=64 P2P_SWARM_RATE_MIB=16 P2P_SWARM_N=1,4,8,16 cargo bench --bench swarm
//! ```
//!
//! The nodes are threads of this process, on loopback, with files on tmpfs where there is
//! one (`P2P_BENCH_DIR` to choose). Only the seeder is limited, so the leechers trade as fast as this machine lets them.

use std::time::{Duration, Instant};

use p2ptorrent::tracker::{Rates, TableLimits};
use p2ptorrent::{Node, NodeConfig, Tracker, TrackerConfig};
use support::{bench_dir, env_or, generate};

mod support;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let mib: u64 = env_or("P2P_SWARM_MIB", 32);
    let rate_mib: u64 = env_or("P2P_SWARM_RATE_MIB", 16);
    let ns: Vec<usize> = std::env::var("P2P_SWARM_N")
        .unwrap_or_else(|_| "1,4,8,16,32".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let (size, rate) = (mib << 20, rate_mib << 20);
    let ideal = size as f64 / rate as f64;
    let base = bench_dir();
    println!("swarm: {mib} MiB file, seeder capped at {rate_mib} MiB/s, S/R = {ideal:.2} s");
    println!(
        "{:>9} {:>10} {:>10} {:>14} {:>16}",
        "leechers", "last done", "x S/R", "seeder copies", "client-server"
    );
    for n in ns {
        let work = tempfile::tempdir_in(&base).unwrap();
        // Every node is 127.0.0.1 here: the tracker's per-address caps and rates, meant
        // for the internet, are lifted to fit the whole swarm.
        let config = TrackerConfig::new("127.0.0.1:0".parse().unwrap())
            .interval(Duration::from_secs(1))
            .limits(TableLimits {
                nodes_per_address: n + 1,
                ..TableLimits::default()
            })
            .rates(Rates {
                announces: 1e6,
                lookups: 1e6,
                searches: 1e6,
            });
        let (tracker, _events) = Tracker::start(config).unwrap();
        // Every node is 127.0.0.1 here: lift the per-address cap meant for the internet.
        let node = |name: &str| {
            NodeConfig::new(name, work.path().join(name))
                .listen("127.0.0.1:0".parse().unwrap())
                .tracker(tracker.local_addr())
                .max_connections(4 * n + 64, 4 * n + 64)
        };
        let mut seeder_config = node("seeder");
        seeder_config.upload_limit = Some(rate);
        let (seeder, _se) = Node::start(seeder_config).unwrap();
        generate(&seeder.dir().join("f.bin"), size, 11);
        seeder.share("f.bin").unwrap();
        let leechers: Vec<(Node, _)> = (0..n)
            .map(|i| Node::start(node(&format!("L{i}"))).unwrap())
            .collect();
        let started = Instant::now();
        let downloads: Vec<_> = leechers
            .iter()
            .map(|(l, _)| l.download("f.bin").unwrap())
            .collect();
        for d in downloads {
            d.wait().expect("every leecher finishes");
        }
        let secs = started.elapsed().as_secs_f64();
        let copies = seeder.status().unwrap().counters.bytes_sent as f64 / size as f64;
        println!(
            "{n:>9} {secs:>9.2}s {:>10.2} {copies:>14.2} {:>15.0}x",
            secs / ideal,
            n as f64
        );
        for (l, _) in leechers {
            l.shutdown().unwrap();
        }
        seeder.shutdown().unwrap();
        tracker.shutdown().unwrap();
    }
}
