//! Staying power and swarming: rate limits, resume, partial owners, owners that join
//! mid-download, a tracker that restarts.

mod common;

use common::*;

const MIB: u64 = 1 << 20;

/// Downloads `size` bytes from one owner and returns the achieved bytes per second.
fn measured_rate(size: u64, up: Option<u64>, down: Option<u64>) -> f64 {
    let (tracker, _te) = start_tracker();
    let seeder = start_node_with("seeder", tracker.local_addr(), |mut c| {
        c.upload_limit = up;
        c
    });
    let leech = start_node_with("leech", tracker.local_addr(), |mut c| {
        c.download_limit = down;
        c
    });
    write_random(&seeder.path("f.bin"), 1, size);
    seeder.node.share("f.bin").unwrap();
    let report = leech.node.download("f.bin").unwrap().wait().unwrap();
    assert_same_file(&seeder.path("f.bin"), &leech.path("f.bin"));
    leech.shutdown();
    seeder.shutdown();
    tracker.shutdown().unwrap();
    size as f64 / report.elapsed.as_secs_f64()
}

#[test]
fn upload_and_download_limits_hold_within_five_percent() {
    let limit = 8 * MIB;
    for (up, down) in [(Some(limit), None), (None, Some(limit))] {
        let rate = measured_rate(16 * MIB, up, down);
        let error = (rate - limit as f64).abs() / limit as f64;
        eprintln!(
            "limit {limit} B/s up {up:?} down {down:?}: measured {rate:.0} B/s ({:+.2}%)",
            (rate / limit as f64 - 1.0) * 100.0
        );
        assert!(
            error < 0.05,
            "up {up:?} down {down:?}: measured {rate:.0} B/s, {:.1}% off",
            error * 100.0
        );
    }
}
