//! An embedder's program, to copy from: two trackers, a seeder and two downloaders in one
//! process; live progress read from snapshots; a download paused and resumed, another
//! cancelled and started again, resuming from what it had kept.
//!
//! ```text
//! cargo run --release --example embed
//! ```

use std::error::Error;
use std::time::Duration;

use p2ptorrent::crossbeam_channel::{select, tick};
use p2ptorrent::{Download, Event, Node, NodeConfig, Tracker, TrackerConfig};

const MIB: u64 = 1 << 20;

fn main() -> Result<(), Box<dyn Error>> {
    // Two trackers: every file is announced to both, so either may die.
    let any = "127.0.0.1:0".parse()?;
    let (t1, _) = Tracker::start(TrackerConfig::new(any))?;
    let (t2, _) = Tracker::start(TrackerConfig::new(any))?;
    let trackers = [t1.local_addr(), t2.local_addr()];
    let folders = [
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    ];
    let node = |name: &str, i: usize, upload_limit: Option<u64>| {
        let mut config = NodeConfig::new(name, folders[i].path())
            .listen(any)
            .trackers(trackers, 2);
        config.upload_limit = upload_limit;
        Node::start(config)
    };

    // The seeder sends 8 MiB/s, so the downloads last long enough to steer.
    let (seeder, _) = node("seeder", 0, Some(8 * MIB))?;
    let data: Vec<u8> = (0..32 * MIB).map(|i| (i * 31 / 7) as u8).collect();
    std::fs::write(folders[0].path().join("video.mp4"), &data)?;
    let shared = seeder.share("video.mp4")?;
    println!(
        "seeder shares {} ({} bytes, content {})",
        shared.file, shared.size, shared.content
    );

    let (alice, alice_events) = node("alice", 1, None)?;
    let (bob, bob_events) = node("bob", 2, None)?;
    let a = alice.download("video.mp4")?;
    let mut b = bob.download("video.mp4")?;

    // Progress from snapshots, four times a second, until both are done; events as they
    // come. Alice pauses at a quarter and resumes; Bob cancels at a half and starts again.
    let ticks = tick(Duration::from_millis(250));
    let (mut alice_paused, mut bob_restarted) = (false, false);
    let mut done = [None, None];
    while done.iter().any(Option::is_none) {
        select! {
            recv(ticks) -> _ => {
                for (name, d) in [("alice", &a), ("bob", &b)] {
                    if let Some(p) = d.progress() {
                        println!(
                            "  {name}: {:5.1} % {:>6.1} MiB/s, {} owners{}",
                            100.0 * p.fraction(),
                            p.rate() / MIB as f64,
                            p.owners,
                            if p.paused { " (paused)" } else { "" }
                        );
                    }
                }
                let fraction = |d: &Download| d.progress().map_or(0.0, |p| p.fraction());
                if !alice_paused && fraction(&a) > 0.25 {
                    alice_paused = a.pause();
                }
                if !bob_restarted && fraction(&b) > 0.5 {
                    b.cancel();
                    bob_restarted = true;
                }
            }
            recv(alice_events) -> e => match e? {
                Event::DownloadPaused { verified, .. } => {
                    println!("alice paused with {verified} pieces; resuming");
                    a.resume();
                }
                Event::DownloadFinished(r) => done[0] = Some(r),
                _ => {}
            },
            recv(bob_events) -> e => match e? {
                Event::DownloadFailed { error, .. } => {
                    println!("bob: {error}");
                    b = bob.download("video.mp4")?;
                }
                Event::DownloadFinished(r) => done[1] = Some(r),
                _ => {}
            },
        }
    }
    for (name, report) in ["alice", "bob"].iter().zip(done.iter().flatten()) {
        assert_eq!(std::fs::read(&report.path)?, data, "{name}'s copy differs");
        println!(
            "{name}: {} bytes in {:.2} s, {} pieces resumed, from {} owners, byte-exact",
            report.size,
            report.elapsed.as_secs_f64(),
            report.resumed,
            report.from.len()
        );
    }
    for n in [bob, alice, seeder] {
        n.shutdown()?;
    }
    t1.shutdown()?;
    t2.shutdown()?;
    Ok(())
}
