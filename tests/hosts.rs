//! Several hosts: the tracker and each node in a network namespace of its own, with its own
//! address on a private switch (10.231.0.0/16, built by `benches/support/lab.rs`) and its sending capped at 200 Mbit/s by a
//! token bucket (`tc tbf`), instead of loopback; the binaries as a person runs them, in a
//! private network under a key. Then three trackers on hosts of their own, and the one a
//! download asks first cut off mid-download with `ip link set down`: the download finishes,
//! reports the tracker silent, and a newcomer still finds both owners.
//!
//! Needs root (to create namespaces) and iproute2. Without root the test says so and does
//! nothing. Every namespace is removed when the test ends, however it ends; no traffic
//! leaves them.

mod common;

use std::path::Path;
use std::process::Stdio;

use common::*;
use p2ptorrent::NetworkKey;

#[path = "../benches/support/lab.rs"]
mod lab;
use lab::Lab;

/// Starts `bin` with `args` on `host` of `lab`.
fn start(lab: &Lab, host: &str, bin: &str, args: &[&str], cwd: &Path) -> Proc {
    let ns = lab.ns(host);
    let mut full = vec!["netns", "exec", ns.as_str(), bin];
    full.extend_from_slice(args);
    Proc::start("ip", &full, cwd, Stdio::null())
}

/// Starts the node `name` on the `i`-th host of `lab`, port 7000, in the private network
/// of `cwd/net.key`, using `trackers`, its folder `cwd/name`, with `extra` flags.
fn keyed_node(
    lab: &Lab,
    name: &str,
    i: usize,
    trackers: &[&str],
    extra: &[&str],
    cwd: &Path,
) -> Proc {
    let bind = Lab::addr(i).to_string();
    let mut args = vec![
        "-n",
        name,
        "-p",
        "7000",
        "--bind",
        &bind,
        "--key",
        "net.key",
        "--dir",
        name,
        "--no-prompt",
    ];
    for tracker in trackers {
        args.extend_from_slice(&["--tracker", tracker]);
    }
    args.extend_from_slice(extra);
    start(lab, &name.to_lowercase(), NODE_BIN, &args, cwd)
}

#[test]
fn nodes_on_other_hosts_share_a_file_in_a_private_network() {
    let hosts = ["tracker", "a", "b", "c"].map(String::from);
    let Some(lab) = Lab::new("p2pt", &hosts, "200mbit") else {
        eprintln!("skipped: creating network namespaces needs root and iproute2");
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    NetworkKey::create(&cwd.join("net.key")).unwrap();
    let tracker_addr = format!("{}:12340", Lab::addr(0));
    let mut tracker = start(
        &lab,
        "tracker",
        TRACKER_BIN,
        &[
            "--listen",
            &tracker_addr,
            "--key",
            "net.key",
            "--interval",
            "2",
        ],
        cwd,
    );
    tracker.line_with("private network");

    std::fs::create_dir_all(cwd.join("A")).unwrap();
    let original = cwd.join("A/f.bin");
    write_random(&original, 99, 24 * 1024 * 1024 + 17);
    let node = |name: &str, i: usize, extra: &[&str]| {
        keyed_node(&lab, name, i, &[tracker_addr.as_str()], extra, cwd)
    };
    let mut a = node("A", 1, &["--upload", "f.bin"]);
    a.line_with("sharing f.bin");
    // The tracker lists A at its own address, seen from its host.
    let listed = tracker.line_with("A@");
    assert!(listed.contains("A@10.231.0.2:7000"), "{listed}");

    let mut b = node("B", 2, &["--download", "f.bin"]);
    b.line_with("downloaded f.bin");
    assert_same_file(&original, &cwd.join("B/f.bin"));

    let mut c = node("C", 3, &["--download", "f.bin", "--exit-when-done"]);
    let done = c.line_with("downloaded f.bin");
    assert!(done.contains("from 2 owners"), "{done}");
    assert!(c.wait(PATIENCE).success());
    assert_same_file(&original, &cwd.join("C/f.bin"));
    drop((a, b, tracker));
    drop(lab);
}

#[test]
fn a_tracker_cut_off_mid_download_is_routed_around() {
    let hosts = ["t1", "t2", "t3", "a", "b", "c"].map(String::from);
    let Some(lab) = Lab::new("p2pm", &hosts, "40mbit") else {
        eprintln!("skipped: creating network namespaces needs root and iproute2");
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    NetworkKey::create(&cwd.join("net.key")).unwrap();
    let trackers: Vec<String> = (0..3).map(|i| format!("{}:12340", Lab::addr(i))).collect();
    let mut tracker_procs: Vec<Proc> = trackers
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let args = ["--listen", addr, "--key", "net.key", "--interval", "2"];
            let mut p = start(&lab, &hosts[i], TRACKER_BIN, &args, cwd);
            p.line_with("private network");
            p
        })
        .collect();
    // The tracker asked first for f.bin: the one whose loss a look-up must route around.
    let addrs: Vec<std::net::SocketAddr> = trackers.iter().map(|t| t.parse().unwrap()).collect();
    let set = p2ptorrent::TrackerSet::new(&addrs, 2).unwrap();
    let first = set.replicas_of("f.bin")[0];
    let cut = addrs.iter().position(|a| *a == first).unwrap();

    std::fs::create_dir_all(cwd.join("A")).unwrap();
    let original = cwd.join("A/f.bin");
    write_random(&original, 5, 48 * 1024 * 1024 + 3);
    let tracker_args: Vec<&str> = trackers.iter().map(String::as_str).collect();
    let node =
        |name: &str, i: usize, extra: &[&str]| keyed_node(&lab, name, i, &tracker_args, extra, cwd);
    let mut a = node("A", 3, &["--upload", "f.bin"]);
    a.line_with("sharing f.bin");

    let began = std::time::Instant::now();
    let mut b = node("B", 4, &["--download", "f.bin"]);
    b.line_with("downloading f.bin");
    // Mid-download, the tracker's host drops off the network.
    if std::env::var("P2P_NO_CUT").is_ok() {
        b.line_with("downloaded f.bin");
        println!("no cut: {:?}", began.elapsed());
        return;
    }
    let down = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns(&hosts[cut]),
            "ip",
            "link",
            "set",
            "eth0",
            "down",
        ])
        .status()
        .unwrap();
    assert!(down.success());
    let silent = b.line_with("is silent");
    assert!(silent.contains(&trackers[cut]), "{silent}");
    b.line_with("downloaded f.bin");
    println!("B's download, with a tracker cut: {:?}", began.elapsed());
    assert_same_file(&original, &cwd.join("B/f.bin"));

    // A newcomer after the cut finds both owners through the trackers left.
    let mut c = node("C", 5, &["--download", "f.bin", "--exit-when-done"]);
    let done = c.line_with("downloaded f.bin");
    assert!(done.contains("from 2 owners"), "{done}");
    assert!(c.wait(PATIENCE).success());
    assert_same_file(&original, &cwd.join("C/f.bin"));
    tracker_procs.clear();
    drop((a, b));
    drop(lab);
}
