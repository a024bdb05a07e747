//! How a node is started: [`NodeConfig`], its defaults and its builder methods.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::key::NetworkKey;
#[cfg(doc)]
use crate::tracker::TrackerSet;
use crate::tracker::{DEFAULT_REPLICAS, DEFAULT_RETRY_AFTER, DEFAULT_TRACKER_ADDR};

/// How many owners a download uses at once, unless told otherwise.
///
/// Each owner is a connection, and every piece a node verifies is told on each of them; at
/// 64 hosts on one machine (`benches/swarm_hosts.rs`) 16 owners spent the CPU that the
/// swarm needed (median 1.45-1.50 × S/R, machine 93 % busy) where 10 reached 1.31-1.36
/// at 84-89 %; at 32 hosts 8, 10, 12 and 16 gave the same medians. Rotation every second
/// keeps a small set fresh, so a larger one buys nothing.
pub const DEFAULT_MAX_OWNERS: usize = 10;

/// How a node is started.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NodeConfig {
    /// The node's name, shown in the tracker's table (1 to 64 bytes).
    pub name: String,
    /// The folder holding the files it shares and downloads.
    pub dir: PathBuf,
    /// The TCP address to serve peers on; port 0 picks a free port. The IPv4 wildcard
    /// (the default) becomes the dual-stack `[::]` when a tracker is an IPv6 address.
    pub listen: SocketAddr,
    /// The trackers' UDP addresses (at least one). Every node of a network should list the
    /// same ones: each file's replica set is computed from the list (see [`TrackerSet`]).
    pub trackers: Vec<SocketAddr>,
    /// How many of the trackers hold each file (all, when fewer are listed).
    pub tracker_replicas: usize,
    /// How long a tracker that went silent is skipped before it is asked again.
    pub tracker_retry_after: Duration,
    /// How many owners a download uses at once (the original used 2).
    pub max_owners: usize,
    /// Requests in flight per owner: deep enough to keep the link busy, and with one piece
    /// buffer per owner, memory stays bounded by owners × piece size.
    pub pipeline_depth: usize,
    /// The piece size for files this node shares; `None` chooses from the file size.
    pub piece_size: Option<u32>,
    /// How long a peer may stay silent with a request outstanding before it is dropped
    /// and its pieces go to other owners. Silence, not slowness: any byte resets it.
    pub peer_timeout: Duration,
    /// How many times a tracker request is sent before giving up.
    pub tracker_tries: u32,
    /// How often shared files are re-announced until the tracker says otherwise.
    pub announce_interval: Duration,
    /// Most peer connections served at once; more are refused.
    pub max_connections: usize,
    /// Most peer connections served at once from one IP address; more are refused.
    pub max_connections_per_ip: usize,
    /// When a newcomer finds the node at either connection cap, the served connection
    /// whose peer has been silent longest (from the newcomer's address, if that cap is
    /// the one reached) is closed to make room, if it has been silent this long; else the
    /// newcomer is refused. Idle peers cannot hold the slots honest ones need.
    pub reap_idle_after: Duration,
    /// How long a peer has to complete its hello, and any later frame once it has begun:
    /// a peer trickling bytes to hold a connection open (slow loris) is dropped.
    pub handshake_timeout: Duration,
    /// How many connections may be sent pieces at once, node-wide (of any file); the
    /// others wait their turn, in order (see the `seeding` module). Default 2: on a capped
    /// uplink each gets its piece sooner and passes it on sooner than with 4.
    pub upload_slots: usize,
    /// Bytes per second this node sends to all peers together; `None` is unlimited.
    pub upload_limit: Option<u64>,
    /// Bytes per second this node receives from all peers together; `None` is unlimited.
    pub download_limit: Option<u64>,
    /// Whether [`Event::PieceReceived`](crate::Event::PieceReceived) and
    /// [`Event::PieceSent`](crate::Event::PieceSent) are emitted (default `true`). A fast
    /// download emits thousands a second, and a thread blocked on the events channel is
    /// woken for each: the `node` binary turns them off unless it prints them or draws
    /// progress, which halved the context switches of a 1 GiB download from one owner on
    /// loopback (44,000-49,000 to 22,000). A download's progress is also in
    /// [`crate::Download::progress`].
    pub piece_events: bool,
    /// The network key: with one, tracker datagrams are sealed and every peer connection
    /// runs a Noise handshake on it and is encrypted; peers and trackers without the same
    /// key are refused. Without one, traffic is plain (content is verified either way).
    pub key: Option<NetworkKey>,
    /// Where to serve metrics, the JSON status and the page; `None` serves nothing.
    #[cfg(feature = "http")]
    pub http: Option<crate::http::HttpConfig>,
}

impl NodeConfig {
    /// Returns a config for a node called `name` with its files in `dir`, serving on any
    /// free port of every interface, using the tracker at `127.0.0.1:12340`.
    pub fn new(name: impl Into<String>, dir: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            dir: dir.into(),
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            trackers: vec![DEFAULT_TRACKER_ADDR],
            tracker_replicas: DEFAULT_REPLICAS,
            tracker_retry_after: DEFAULT_RETRY_AFTER,
            max_owners: DEFAULT_MAX_OWNERS,
            pipeline_depth: 8,
            piece_size: None,
            peer_timeout: Duration::from_secs(5),
            tracker_tries: 4,
            announce_interval: Duration::from_secs(30),
            max_connections: 64,
            max_connections_per_ip: 16,
            reap_idle_after: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            upload_slots: 2,
            upload_limit: None,
            download_limit: None,
            piece_events: true,
            key: None,
            #[cfg(feature = "http")]
            http: None,
        }
    }

    /// Serves `/metrics`, `/api/status` and a live page of the node (see [`crate::http`]).
    #[cfg(feature = "http")]
    pub fn http(mut self, http: crate::http::HttpConfig) -> Self {
        self.http = Some(http);
        self
    }

    /// Emits an event for every piece received and sent, or none (see
    /// [`NodeConfig::piece_events`]).
    pub fn piece_events(mut self, on: bool) -> Self {
        self.piece_events = on;
        self
    }

    /// Joins the private network of `key`.
    pub fn key(mut self, key: NetworkKey) -> Self {
        self.key = Some(key);
        self
    }

    /// Uses the one tracker at `addr`.
    pub fn tracker(mut self, addr: SocketAddr) -> Self {
        self.trackers = vec![addr];
        self
    }

    /// Uses the trackers at `addrs`, each file held by `replicas` of them (see
    /// [`TrackerSet`]).
    pub fn trackers(
        mut self,
        addrs: impl IntoIterator<Item = SocketAddr>,
        replicas: usize,
    ) -> Self {
        self.trackers = addrs.into_iter().collect();
        self.tracker_replicas = replicas;
        self
    }

    /// Sets how many times a tracker request is sent before that tracker is taken as
    /// silent (at least one). The waits are 250 ms, then doubling: four tries take 3.75 s,
    /// two take 0.75 s. This bounds how long `share` and `search` can block.
    pub fn tracker_tries(mut self, tries: u32) -> Self {
        self.tracker_tries = tries.max(1);
        self
    }

    /// Sets how long a tracker that went silent is skipped before it is asked again.
    pub fn tracker_retry_after(mut self, wait: Duration) -> Self {
        self.tracker_retry_after = wait;
        self
    }

    /// Sets the address to serve peers on.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Sets how many owners a download uses at once (at least one).
    pub fn max_owners(mut self, owners: usize) -> Self {
        self.max_owners = owners.max(1);
        self
    }

    /// Sets how many connections may be sent pieces at once (at least
    /// one).
    pub fn upload_slots(mut self, slots: usize) -> Self {
        self.upload_slots = slots.max(1);
        self
    }

    /// Sets the most peer connections served at once, in all and from one IP address (each
    /// at least one). The defaults (64, 16) suit the open internet; a host running many
    /// nodes on loopback, as tests and benches do, needs more per address.
    pub fn max_connections(mut self, total: usize, per_ip: usize) -> Self {
        self.max_connections = total.max(1);
        self.max_connections_per_ip = per_ip.max(1);
        self
    }

    /// Sets how long a served peer must have been silent before its connection may be
    /// closed to make room for a newcomer (see [`NodeConfig::reap_idle_after`]).
    pub fn reap_idle_after(mut self, silent: Duration) -> Self {
        self.reap_idle_after = silent;
        self
    }

    /// Limits what this node sends to all peers together, in bytes per second.
    pub fn upload_limit(mut self, bytes_per_sec: u64) -> Self {
        self.upload_limit = Some(bytes_per_sec);
        self
    }

    /// Limits what this node receives from all peers together, in bytes per second.
    pub fn download_limit(mut self, bytes_per_sec: u64) -> Self {
        self.download_limit = Some(bytes_per_sec);
        self
    }

    /// Sets the piece size for files this node shares.
    pub fn piece_size(mut self, piece_size: u32) -> Self {
        self.piece_size = Some(piece_size);
        self
    }
}
