//! Faults injected into the real binaries: an owner frozen with SIGSTOP or killed with
//! SIGKILL mid-transfer, and a downloader killed with SIGKILL and started again.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const MIB: u64 = 1 << 20;

/// Seconds a `downloaded ... in X s, ...` line reports.
fn reported_secs(line: &str) -> f64 {
    line.split(" in ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|t| t.parse().ok())
        .unwrap()
}

/// Two owners capped at 8 MiB/s share 32 MiB; once the downloader is receiving, one
/// owner gets `signal`. The download must still finish, exact, a few seconds later.
fn owner_fault_costs_only_seconds(signal: &str) {
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    let (tracker, addr) = tracker_process(cwd, 1);
    let taddr = addr.to_string();
    let size = 32 * MIB;
    for n in ["A", "B"] {
        std::fs::create_dir_all(cwd.join("node_files").join(n)).unwrap();
    }
    let original = cwd.join("node_files/A/f.bin");
    write_random(&original, 8, size);
    std::fs::hard_link(&original, cwd.join("node_files/B/f.bin")).unwrap();
    let seeder = |name| {
        let mut p = Proc::start(
            NODE_BIN,
            &node_args(
                name,
                &taddr,
                &["--upload", "f.bin", "--upload-limit", "8MiB"],
            ),
            cwd,
            Stdio::null(),
        );
        p.line_with("sharing f.bin");
        p
    };
    let a = seeder("A");
    let b = seeder("B");
    let mut c = Proc::start(
        NODE_BIN,
        &node_args(
            "C",
            &taddr,
            &["--download", "f.bin", "--exit-when-done", "-v"],
        ),
        cwd,
        Stdio::null(),
    );
    c.line_with("received piece");
    a.signal(signal);
    let done = c.line_with("downloaded f.bin");
    let secs = reported_secs(&done);
    eprintln!("{signal}: {done}");
    assert!(c.wait(PATIENCE).success());
    assert_same_file(&original, &cwd.join("node_files/C/f.bin"));
    // Alone, B needs 4 s for the file; the frozen or dead owner may cost the 5 s peer
    // timeout on top, not more.
    assert!(secs < 4.0 + 5.0 + 3.0, "took {secs} s");
    if signal == "-STOP" {
        a.signal("-CONT");
    }
    drop(a);
    drop(b);
    drop(tracker);
}

#[test]
fn an_owner_frozen_mid_transfer_costs_only_seconds() {
    owner_fault_costs_only_seconds("-STOP");
}

#[test]
fn an_owner_killed_mid_transfer_costs_only_seconds() {
    owner_fault_costs_only_seconds("-KILL");
}

/// A downloader killed with SIGKILL halfway and started again (under another name) on the
/// same folder resumes, and finishes sooner than a fresh download could.
#[test]
fn a_downloader_killed_and_restarted_finishes_sooner_than_a_fresh_one() {
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    let (tracker, addr) = tracker_process(cwd, 1);
    let taddr = addr.to_string();
    let size = 32 * MIB;
    std::fs::create_dir_all(cwd.join("node_files/A")).unwrap();
    let original = cwd.join("node_files/A/f.bin");
    write_random(&original, 9, size);
    let mut a = Proc::start(
        NODE_BIN,
        &node_args(
            "A",
            &taddr,
            &["--upload", "f.bin", "--upload-limit", "8MiB"],
        ),
        cwd,
        Stdio::null(),
    );
    a.line_with("sharing f.bin");
    let folder = cwd.join("shared-folder");
    let dir = folder.to_str().unwrap();
    let mut c = Proc::start(
        NODE_BIN,
        &node_args(
            "C",
            &taddr,
            &[
                "--dir",
                dir,
                "--download",
                "f.bin",
                "--exit-when-done",
                "-v",
            ],
        ),
        cwd,
        Stdio::null(),
    );
    // Pieces are 128 KiB here: 256 of them. Kill after half, and after a record was saved.
    c.line_with("[128/256]");
    wait_until("the resume record", Duration::from_secs(10), || {
        let p = folder.join("f.bin.part.state");
        if p.exists() { Ok(()) } else { Err(p) }
    });
    c.signal("-KILL");
    assert!(!c.wait(PATIENCE).success());
    assert!(!folder.join("f.bin").exists());

    let mut again = Proc::start(
        NODE_BIN,
        &node_args(
            "C2",
            &taddr,
            &["--dir", dir, "--download", "f.bin", "--exit-when-done"],
        ),
        cwd,
        Stdio::null(),
    );
    let start = again.line_with("downloading f.bin");
    // "downloading f.bin: 33554432 bytes, 256 pieces, 1 owner listed, 130 of them already here"
    let resumed: u32 = start
        .trim()
        .rsplit(", ")
        .next()
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(resumed >= 128, "{start}");
    let done = again.line_with("downloaded f.bin");
    assert!(again.wait(PATIENCE).success());
    assert_same_file(&original, &folder.join("f.bin"));
    // A fresh download takes at least S/R = 4 s at the owner's limit.
    let secs = reported_secs(&done);
    eprintln!("resumed {resumed} pieces: {done}");
    assert!(secs < 0.75 * 4.0, "took {secs} s");
    assert!(!folder.join("f.bin.part").exists() && !folder.join("f.bin.part.state").exists());
    drop(a);
    drop(tracker);
}

/// Sets the soft limit on open files of process `pid` (its hard limit stays).
fn limit_open_files(pid: u32, soft: usize) {
    let ok = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={soft}:")])
        .status()
        .unwrap();
    assert!(ok.success(), "prlimit --pid {pid} --nofile={soft}:");
}

/// A node runs out of file descriptors: its soft limit is lowered to the lowest
/// descriptor number it has free, so accepting a connection fails at once (EMFILE). Its accept
/// loop waits instead of spinning (the waits' doubling is `serve.rs`'s unit test) and
/// says so; once descriptors are available again it serves, and a download from it is
/// exact.
#[test]
fn a_node_out_of_descriptors_waits_instead_of_spinning_and_serves_again() {
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    let (_tracker, addr) = tracker_process(cwd, 1);
    let taddr = addr.to_string();
    std::fs::create_dir_all(cwd.join("node_files/A")).unwrap();
    let original = cwd.join("node_files/A/f.bin");
    write_random(&original, 11, MIB);
    // stderr joins stdout, to read the node's complaint; `exec` keeps the node's pid.
    let node = node_args("A", &taddr, &["--upload", "f.bin"]).join(" ");
    let mut a = Proc::start(
        "sh",
        &["-c", &format!("exec {NODE_BIN} {node} 2>&1")],
        cwd,
        Stdio::null(),
    );
    let serving = a.line_with("serving on");
    let a_addr: std::net::SocketAddr = serving
        .split("serving on ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    a.line_with("sharing f.bin");
    // The limit bounds descriptor numbers: set it to the lowest one free, the one the
    // next `accept` would take.
    let pid = a.child.id();
    let held: Vec<usize> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let lowest_free = (0..).find(|n| !held.contains(n)).unwrap();
    limit_open_files(pid, lowest_free);
    // Waits in the backlog while the node cannot accept it.
    let _waiting = std::net::TcpStream::connect(a_addr).unwrap();
    let complaint = a.line_with("accepting connections");
    assert!(
        complaint.contains("Too many open files") && complaint.contains("trying again in"),
        "{complaint}"
    );
    limit_open_files(pid, 1024);
    let mut b = Proc::start(
        NODE_BIN,
        &node_args("B", &taddr, &["--download", "f.bin", "--exit-when-done"]),
        cwd,
        Stdio::null(),
    );
    b.line_with("downloaded f.bin");
    assert!(b.wait(Duration::from_secs(30)).success());
    assert_same_file(&original, &cwd.join("node_files/B/f.bin"));
}
