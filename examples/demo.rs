//! The embedded demo: a tracker and three nodes in one process share a generated file.
//!
//! A generates the file and shares it; B downloads it from A alone; C downloads it from A
//! and B at once. Every piece is verified; the copies are compared with the original and
//! the throughput of each download is printed. With `--key`, the four form a private
//! network under a freshly generated key: tracker datagrams sealed, peer links encrypted.
//!
//! ```text
//! cargo run --release --example demo                  # 256 MiB
//! cargo run --release --example demo -- 1024          # size in MiB
//! cargo run --release --example demo -- 256 --key     # a private network
//! ```

use std::error::Error;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

use p2ptorrent::{DownloadReport, Event, NetworkKey, Node, NodeConfig, Tracker, TrackerConfig};

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mib: u64 = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map_or(Ok(256), |a| a.parse())?;
    let key = match args.iter().any(|a| a == "--key") {
        true => Some(NetworkKey::generate()?),
        false => None,
    };
    let size = mib * 1024 * 1024;
    let mut tracker_config = TrackerConfig::new("127.0.0.1:0".parse()?);
    if let Some(key) = &key {
        tracker_config = tracker_config.key(key.clone());
    }
    let (tracker, _table) = Tracker::start(tracker_config)?;
    match &key {
        Some(key) => println!(
            "tracker listening on {}: a private network, key {}",
            tracker.local_addr(),
            key.fingerprint()
        ),
        None => println!("tracker listening on {}", tracker.local_addr()),
    }

    let root = tempfile::tempdir()?;
    let start = |name: &str| -> Result<_, Box<dyn Error>> {
        let mut config = NodeConfig::new(name, root.path().join(name))
            .listen("127.0.0.1:0".parse()?)
            .tracker(tracker.local_addr());
        if let Some(key) = &key {
            config = config.key(key.clone());
        }
        let (node, events) = Node::start(config)?;
        println!("node {name} serving on {}", node.local_addr());
        Ok((node, events))
    };
    let (a, a_events) = start("A")?;
    let (b, b_events) = start("B")?;
    let (c, c_events) = start("C")?;

    let original = a.dir().join("demo.bin");
    let t = Instant::now();
    generate(&original, size)?;
    println!(
        "A generated demo.bin: {mib} MiB of random data in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let shared = a.share("demo.bin")?;
    println!(
        "A hashed and shared it in {:.2} s: {} pieces of {} KiB, content id {}",
        t.elapsed().as_secs_f64(),
        shared.pieces,
        size.div_ceil(u64::from(shared.pieces.max(1))) / 1024,
        &shared.content.to_string()[..16]
    );

    let report = b.download("demo.bin")?.wait()?;
    describe("B", &report, &[("A", &a)]);
    let report = c.download("demo.bin")?.wait()?;
    describe("C", &report, &[("A", &a), ("B", &b)]);

    let want = file_hash(&original)?;
    for (name, node) in [("B", &b), ("C", &c)] {
        let same = file_hash(&node.dir().join("demo.bin"))? == want;
        println!(
            "{name}'s copy is {}",
            if same { "byte-exact" } else { "DIFFERENT" }
        );
        if !same {
            return Err("a copy differs from the original".into());
        }
    }
    for (name, events) in [("A", &a_events), ("B", &b_events), ("C", &c_events)] {
        let (mut sent, mut received) = (0, 0);
        for event in events.try_iter() {
            match event {
                Event::PieceSent { .. } => sent += 1,
                Event::PieceReceived { .. } => received += 1,
                _ => {}
            }
        }
        println!("{name} sent {sent} pieces and received {received}");
    }
    println!(
        "owners of demo.bin at the tracker: {}",
        tracker.snapshot().owners_of("demo.bin").len()
    );

    c.shutdown()?;
    b.shutdown()?;
    a.shutdown()?;
    tracker.shutdown()?;
    println!("all nodes and the tracker shut down cleanly");
    Ok(())
}

fn describe(name: &str, r: &DownloadReport, owners: &[(&str, &Node)]) {
    let secs = r.elapsed.as_secs_f64();
    println!(
        "{name} downloaded {} ({} pieces, each verified) in {secs:.2} s: {:.0} MB/s",
        r.file,
        r.pieces,
        r.size as f64 / secs / 1e6
    );
    for (addr, bytes) in &r.from {
        let who = owners
            .iter()
            .find(|(_, n)| n.local_addr() == *addr)
            .map_or("?", |(n, _)| n);
        println!(
            "  {:>5.1}% from {who} ({addr})",
            *bytes as f64 * 100.0 / r.size.max(1) as f64
        );
    }
}

fn generate(path: &Path, size: u64) -> std::io::Result<()> {
    let mut rng = fastrand::Rng::with_seed(2020);
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        rng.fill(&mut chunk[..n]);
        out.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    out.flush()
}

fn file_hash(path: &Path) -> std::io::Result<blake3::Hash> {
    let mut h = blake3::Hasher::new();
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf)? {
            0 => return Ok(h.finalize()),
            n => {
                h.update(&buf[..n]);
            }
        }
    }
}
