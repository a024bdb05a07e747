//! Several hosts: the tracker and each node in a network namespace of its own, with its own
//! address on a private switch (10.231.0.0/24) and its sending capped at 200 Mbit/s by a
//! token bucket (`tc tbf`), instead of loopback; the binaries as a person runs them, in a
//! private network under a key.
//!
//! Needs root (to create namespaces) and iproute2. Without root the test says so and does
//! nothing. Every namespace is removed when the test ends, however it ends; no traffic
//! leaves them.

mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use p2ptorrent::NetworkKey;

/// Namespaces joined by a bridge in a namespace of its own.
struct Lab {
    prefix: String,
    hosts: Vec<String>,
}

impl Lab {
    /// Makes a namespace per host, the `i`-th at 10.231.0.`i + 1`; `None` without root.
    fn new(hosts: &[&str]) -> Option<Self> {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        if !root || Command::new("ip").arg("-V").output().is_err() {
            return None;
        }
        let lab = Self {
            prefix: format!("p2pt{}", std::process::id()),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
        };
        let sw = lab.ns("sw");
        ip(&["netns", "add", &sw]);
        lab.exec_ok(&sw, &["ip", "link", "add", "br0", "type", "bridge"]);
        lab.exec_ok(&sw, &["ip", "link", "set", "br0", "up"]);
        for (i, host) in hosts.iter().enumerate() {
            let ns = lab.ns(host);
            let port = format!("p{i}");
            ip(&["netns", "add", &ns]);
            ip(&[
                "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &sw,
            ]);
            lab.exec_ok(&sw, &["ip", "link", "set", &port, "master", "br0", "up"]);
            let addr = format!("{}/24", Self::addr(i));
            lab.exec_ok(&ns, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
            lab.exec_ok(&ns, &["ip", "addr", "add", &addr, "dev", "eth0"]);
            lab.exec_ok(&ns, &["ip", "link", "set", "eth0", "up"]);
            lab.exec_ok(&ns, &["ip", "link", "set", "lo", "up"]);
            lab.exec_ok(
                &ns,
                &[
                    "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "200mbit", "burst",
                    "256kb", "latency", "50ms",
                ],
            );
        }
        Some(lab)
    }

    fn addr(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, 0, u8::try_from(i + 1).unwrap())
    }

    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    fn exec_ok(&self, ns: &str, cmd: &[&str]) {
        let mut args = vec!["netns", "exec", ns];
        args.extend_from_slice(cmd);
        ip(&args);
    }

    /// Starts `bin` with `args` on host `host`.
    fn start(&self, host: &str, bin: &str, args: &[&str], cwd: &Path) -> Proc {
        let ns = self.ns(host);
        let mut full = vec!["netns", "exec", ns.as_str(), bin];
        full.extend_from_slice(args);
        Proc::start("ip", &full, cwd, Stdio::null())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of each veth pair, and so the pair.
        for host in self.hosts.iter().map(String::as_str).chain(["sw"]) {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(host)])
                .status();
        }
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn nodes_on_other_hosts_share_a_file_in_a_private_network() {
    let Some(lab) = Lab::new(&["tracker", "a", "b", "c"]) else {
        eprintln!("skipped: creating network namespaces needs root and iproute2");
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    NetworkKey::create(&cwd.join("net.key")).unwrap();
    let tracker_addr = format!("{}:12340", Lab::addr(0));
    let mut tracker = lab.start(
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
        let bind = Lab::addr(i).to_string();
        let mut args = vec![
            "-n",
            name,
            "-p",
            "7000",
            "--bind",
            bind.as_str(),
            "--tracker",
            tracker_addr.as_str(),
            "--key",
            "net.key",
            "--dir",
            name,
            "--no-prompt",
        ];
        args.extend_from_slice(extra);
        lab.start(&name.to_lowercase(), NODE_BIN, &args, cwd)
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
