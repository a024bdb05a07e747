//! A lab of hosts on one machine: a network namespace per host, each with its own address
//! on a private switch (a bridge in a namespace of its own, 10.231.0.0/16) and its sending
//! capped by a token bucket (`tc tbf`). Used by `tests/hosts.rs` and `benches/swarm_hosts.rs`.
//!
//! Every host knows every other's hardware address from the start (permanent neighbour
//! entries). Without them, address resolution shares the capped queue with the data: a host
//! sending at its cap drops its own ARP requests and replies, and half a minute in, when the
//! first entries go stale, whole groups of hosts lose sight of each other for seconds
//! ("No route to host"). A switch port's uplink cap does not do that, so the lab does not.
//!
//! Needs root and iproute2: [`Lab::new`] returns `None` without them. Every namespace is
//! removed when the lab is dropped, however the run ends; no traffic leaves them.

#![allow(dead_code)] // each user takes its own subset

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

/// Namespaces joined by a bridge in a namespace of its own.
pub struct Lab {
    prefix: String,
    hosts: Vec<String>,
}

impl Lab {
    /// Makes a namespace per host, the `i`-th at [`Lab::addr`]`(i)`, each sending at most
    /// `rate` (a `tc` rate such as `200mbit`); `None` without root or iproute2.
    pub fn new(tag: &str, hosts: &[String], rate: &str) -> Option<Self> {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        if !root || Command::new("ip").arg("-V").output().is_err() {
            return None;
        }
        let lab = Self {
            prefix: format!("{tag}{}", std::process::id()),
            hosts: hosts.to_vec(),
        };
        // One `ip -batch` for everything: hundreds of hosts' worth of commands in one process.
        let sw = lab.ns("sw");
        let mut batch = format!(
            "netns add {sw}\n\
             netns exec {sw} ip link add br0 type bridge\n\
             netns exec {sw} ip link set br0 up\n\
             netns exec {sw} sysctl -qw net.ipv6.conf.all.disable_ipv6=1\n"
        );
        // A switch forwards frames; it does not pass each one through the firewall. Where
        // `br_netfilter` is loaded it would (these settings are per namespace), and at 64
        // hosts that was a tenth of the machine. (`-e`: without the module there is no such key.)
        for table in ["iptables", "ip6tables", "arptables"] {
            batch.push_str(&format!(
                "netns exec {sw} sysctl -qew net.bridge.bridge-nf-call-{table}=0\n"
            ));
        }
        // Every host's neighbour table, the same for all.
        let neighbours = std::env::temp_dir().join(format!("{}.neigh", lab.prefix));
        let table: String = (0..hosts.len())
            .map(|i| {
                format!(
                    "neigh replace {} lladdr {} dev eth0 nud permanent\n",
                    Self::addr(i),
                    Self::mac(i)
                )
            })
            .collect();
        std::fs::write(&neighbours, table).expect("writing the neighbour table");
        let neighbours = neighbours.display();
        for (i, host) in hosts.iter().enumerate() {
            let ns = lab.ns(host);
            let addr = Self::addr(i);
            let mac = Self::mac(i);
            batch.push_str(&format!(
                "netns add {ns}\n\
                 link add eth0 netns {ns} address {mac} type veth peer name p{i} netns {sw}\n\
                 netns exec {sw} ip link set p{i} master br0 up\n\
                 netns exec {ns} sysctl -qw net.ipv6.conf.all.disable_ipv6=1\n\
                 netns exec {ns} ip addr add {addr}/16 dev eth0\n\
                 netns exec {ns} ip link set eth0 up\n\
                 netns exec {ns} ip link set lo up\n\
                 netns exec {ns} ip -batch {neighbours}\n\
                 netns exec {ns} tc qdisc add dev eth0 root tbf rate {rate} burst 64kb latency 100ms\n"
            ));
        }
        let mut child = Command::new("ip")
            .args(["-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running ip");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(batch.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let _ = std::fs::remove_file(std::env::temp_dir().join(format!("{}.neigh", lab.prefix)));
        assert!(
            out.status.success(),
            "setting up the lab: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(lab)
    }

    /// Returns the address of the `i`-th host.
    pub fn addr(i: usize) -> Ipv4Addr {
        let n = u16::try_from(i + 1).expect("at most 65,000 hosts");
        let [hi, lo] = n.to_be_bytes();
        Ipv4Addr::new(10, 231, hi, lo)
    }

    /// Returns the hardware address of the `i`-th host (locally administered).
    pub fn mac(i: usize) -> String {
        let [a, b, c, d] = Self::addr(i).octets();
        format!("02:00:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
    }

    /// Returns the name of `host`'s namespace.
    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// Returns a command that runs `bin` with `args` on host `host`, in `cwd`.
    pub fn command(&self, host: &str, bin: &str, args: &[&str], cwd: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(host), bin])
            .args(args)
            .current_dir(cwd);
        cmd
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of each veth pair, and so the pair.
        let mut batch = String::new();
        for host in self.hosts.iter().map(String::as_str).chain(["sw"]) {
            batch.push_str(&format!("netns del {}\n", self.ns(host)));
        }
        if let Ok(mut child) = Command::new("ip")
            .args(["-force", "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(batch.as_bytes());
            }
            let _ = child.wait();
        }
    }
}
