//! The tracker: a table of which nodes own which files, served over UDP.
//!
//! [`Tracker::start`] binds the port, spawns the threads that serve it (`tracker-udp`,
//! one per core by default, each on a socket of its own sharing the port; `service`) and
//! returns a handle. Every
//! datagram is one request; the reply echoes its transaction id. Malformed datagrams are
//! dropped without a reply; well-formed requests the tracker will not honour are answered
//! with a `Reject`. The table itself lives in `registry` and is readable at
//! any time with [`Tracker::snapshot`]. With a network key ([`TrackerConfig::key`]), only
//! datagrams sealed under it are answered, each once ([`crate::key`]); others get a plain
//! `KeyRefused`, smaller than what they sent, and change nothing.

mod budget;
mod burst;
mod client;
mod metrics;
mod registry;
mod service;
mod set;
mod token;
mod wire;

pub use budget::Rates;

pub(crate) use client::is_timeout;
pub use client::{Owners, TrackerClient};
pub use metrics::{LATENCY_BUCKETS_US, Outcome, RequestKind, TrackerMetrics};
pub use registry::{
    EXPIRY_INTERVALS, FileRow, MAX_OWNERS_LISTED, MAX_OWNERS_PER_HIT, MAX_SEARCH_HITS, NodeRow,
    OwnerRow, Snapshot, TableLimits,
};
pub use set::{
    DEFAULT_REPLICAS, DEFAULT_RETRY_AFTER, MAX_TRACKERS, TrackerChange, TrackerHealth, TrackerSet,
};

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, bounded};
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::key::{DatagramSeal, NetworkKey, ReplayGuard};
use budget::Budgets;
use registry::Registry;
use service::Service;
pub use token::TOKEN_EPOCH;
use token::Tokens;

/// The tracker's default UDP address, as in the original.
pub const DEFAULT_TRACKER_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 12340);

/// How a tracker is started.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TrackerConfig {
    /// The UDP address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// How often nodes should re-announce; owners silent for
    /// [`EXPIRY_INTERVALS`] intervals are dropped.
    pub interval: Duration,
    /// How many threads serve the socket; the table is shared behind a lock held for one
    /// request at a time. Defaults to the number of cores, at most four.
    pub threads: usize,
    /// The network key: with one, only datagrams sealed under it are answered, and every
    /// reply is sealed. Without one, datagrams are plain.
    pub key: Option<NetworkKey>,
    /// How large the table may grow, per address and in all.
    pub limits: TableLimits,
    /// How many requests of each kind one address may make per second.
    pub rates: Rates,
    /// Where to serve metrics, the JSON status and the page; `None` serves nothing.
    #[cfg(feature = "http")]
    pub http: Option<crate::http::HttpConfig>,
}

impl TrackerConfig {
    /// Returns a config listening on `listen` with a 30-second announce interval.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            interval: Duration::from_secs(30),
            threads: thread::available_parallelism().map_or(1, |n| n.get().min(4)),
            key: None,
            limits: TableLimits::default(),
            rates: Rates::default(),
            #[cfg(feature = "http")]
            http: None,
        }
    }

    /// Serves `/metrics`, `/api/status` and a live page of the table (see [`crate::http`]).
    #[cfg(feature = "http")]
    pub fn http(mut self, http: crate::http::HttpConfig) -> Self {
        self.http = Some(http);
        self
    }

    /// Sets how large the table may grow, per address and in all.
    pub fn limits(mut self, limits: TableLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets how many requests of each kind one address may make per second.
    pub fn rates(mut self, rates: Rates) -> Self {
        self.rates = rates;
        self
    }

    /// Sets the network key: only nodes holding it are answered.
    pub fn key(mut self, key: NetworkKey) -> Self {
        self.key = Some(key);
        self
    }

    /// Sets how many threads serve the socket (at least one).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// Sets the announce interval (at least one second).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_secs(1));
        self
    }
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self::new(DEFAULT_TRACKER_ADDR)
    }
}

/// What a running tracker reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrackerEvent {
    /// The table changed; read it with [`Tracker::snapshot`].
    TableChanged,
    /// A request was refused, with the reason sent back.
    Rejected {
        /// Who sent it.
        from: SocketAddr,
        /// Why it was refused.
        reason: String,
    },
    /// A datagram that is not a request was dropped.
    Malformed {
        /// Who sent it.
        from: SocketAddr,
    },
    /// A request over its sender's rate was not served (see [`Rates`]).
    Throttled {
        /// Who sent it.
        from: SocketAddr,
    },
}

/// A running tracker. Dropping it shuts it down.
#[derive(Debug)]
pub struct Tracker {
    local_addr: SocketAddr,
    registry: Arc<Mutex<Registry>>,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    /// Each thread's counters.
    metrics: Arc<[Arc<metrics::Cells>]>,
    #[cfg(feature = "http")]
    http: Option<crate::http::HttpServer>,
    threads: Vec<JoinHandle<Result<()>>>,
    /// A second handle on each thread's socket, to wake its blocking receive at shutdown.
    sockets: Vec<socket2::Socket>,
}

impl Tracker {
    /// Binds the UDP socket and starts serving.
    ///
    /// Returns the handle and the receiver of its events. Events are dropped, not queued
    /// without bound, when nobody reads them.
    ///
    /// # Errors
    ///
    /// [`Error::Bind`] if the address cannot be bound.
    pub fn start(config: TrackerConfig) -> Result<(Self, Receiver<TrackerEvent>)> {
        let bind_err = |source| Error::Bind {
            addr: config.listen,
            source,
        };
        // One socket per thread, all on one port (SO_REUSEPORT): the kernel spreads the
        // senders over them, and no two threads wait on one receive queue.
        let threads = config.threads.max(1);
        if threads > 1 && config.listen.port() != 0 {
            // A port held by another tracker of this user would be shared, not refused:
            // bind it alone once, so a second tracker on the port fails as it should.
            drop(bind_udp(config.listen, false).map_err(bind_err)?);
        }
        let first = bind_udp(config.listen, threads > 1).map_err(bind_err)?;
        let local_addr = first.local_addr().map_err(bind_err)?;
        let mut sockets = vec![first];
        let same_port = SocketAddr::new(config.listen.ip(), local_addr.port());
        for _ in 1..threads {
            sockets.push(bind_udp(same_port, true).map_err(bind_err)?);
        }
        // Wake at least once a second to drop expired owners.
        let sweep = config.interval.min(Duration::from_secs(1));
        for socket in &sockets {
            socket.set_read_timeout(Some(sweep)).map_err(bind_err)?;
        }
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| Error::Random(e.to_string()))?;
        let tokens = Arc::new(Tokens::new(secret));
        let seal = config.key.as_ref().map(DatagramSeal::new);
        let replay = Arc::new(ReplayGuard::new());
        let started = Instant::now();
        let registry = Arc::new(Mutex::new(Registry::new(config.interval, config.limits)));
        let budgets = Arc::new(Budgets::new(config.rates));
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let (events_tx, events_rx) = bounded(1024);
        let mut tracker = Self {
            local_addr,
            registry,
            stop,
            answered,
            metrics: (0..threads).map(|_| Arc::default()).collect(),
            #[cfg(feature = "http")]
            http: None,
            threads: Vec::new(),
            sockets: Vec::new(),
        };
        for (i, socket) in sockets.into_iter().enumerate() {
            let closer = socket2::Socket::from(socket.try_clone().map_err(bind_err)?);
            tracker.sockets.push(closer);
            let service = Service {
                socket,
                registry: Arc::clone(&tracker.registry),
                stop: Arc::clone(&tracker.stop),
                answered: Arc::clone(&tracker.answered),
                metrics: Arc::clone(&tracker.metrics[i]),
                events: events_tx.clone(),
                interval_secs: u32::try_from(config.interval.as_secs()).unwrap_or(u32::MAX),
                sweep,
                sweeper: i == 0,
                tokens: Arc::clone(&tokens),
                started,
                seal: seal.clone(),
                replay: Arc::clone(&replay),
                budgets: Arc::clone(&budgets),
            };
            // On failure, dropping `tracker` stops the threads already started.
            let handle = thread::Builder::new()
                .name("tracker-udp".into())
                .spawn(move || service.run())
                .map_err(|source| Error::Spawn {
                    name: "tracker-udp",
                    source,
                })?;
            tracker.threads.push(handle);
        }
        #[cfg(feature = "http")]
        if let Some(http) = &config.http {
            let (registry, cells) = (Arc::clone(&tracker.registry), Arc::clone(&tracker.metrics));
            let (registry2, cells2) = (Arc::clone(&registry), Arc::clone(&cells));
            let views = crate::http::Views {
                metrics: Box::new(move || {
                    crate::http::tracker_metrics(&metrics_of(&registry, &cells))
                }),
                status: Box::new(move || {
                    let snapshot = registry2.lock().snapshot();
                    crate::http::tracker_status(&snapshot, &metrics_of(&registry2, &cells2))
                }),
            };
            tracker.http = Some(crate::http::HttpServer::start(
                http,
                config.key.is_some(),
                views,
            )?);
        }
        Ok((tracker, events_rx))
    }

    /// Returns the address the tracker listens on, with the real port.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Returns a copy of the owner table.
    pub fn snapshot(&self) -> Snapshot {
        self.registry.lock().snapshot()
    }

    /// Returns how many requests the tracker has answered.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Returns a copy of the tracker's counters and the table's size. Cheap: the table is
    /// locked only to count it.
    pub fn metrics(&self) -> TrackerMetrics {
        metrics_of(&self.registry, &self.metrics)
    }

    /// Returns the address of the web side, with the real port, if it serves one.
    #[cfg(feature = "http")]
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(crate::http::HttpServer::addr)
    }

    /// Stops the tracker and waits for its threads.
    ///
    /// # Errors
    ///
    /// The first error that stopped a UDP thread, or [`Error::ThreadPanicked`].
    pub fn shutdown(mut self) -> Result<()> {
        self.close()
    }

    fn close(&mut self) -> Result<()> {
        #[cfg(feature = "http")]
        drop(self.http.take());
        if self.threads.is_empty() {
            return Ok(());
        }
        self.stop.store(true, Ordering::SeqCst);
        // Wake every blocking receive now rather than at its next timeout: shutting a UDP
        // socket for reading ends a receive waiting on it (Linux answers ENOTCONN, and
        // wakes it all the same); elsewhere the timeout, under a second, does it.
        for socket in self.sockets.drain(..) {
            let _ = socket.shutdown(std::net::Shutdown::Read);
        }
        let mut first = Ok(());
        for handle in self.threads.drain(..) {
            let result = handle
                .join()
                .unwrap_or_else(|_| Err(Error::ThreadPanicked("tracker-udp".into())));
            if first.is_ok() {
                first = result;
            }
        }
        first
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            eprintln!("tracker {}: {e}", self.local_addr);
        }
    }
}

/// The counters, with the table's size.
fn metrics_of(registry: &Mutex<Registry>, cells: &[Arc<metrics::Cells>]) -> TrackerMetrics {
    let (files, nodes, owners) = registry.lock().sizes();
    metrics::snapshot(cells, files, nodes, owners)
}

/// Binds one of the tracker's sockets, sharing the port with the others (`reuse_port`).
/// On the IPv6 wildcard (`[::]`) it is dual-stack whatever the system's default: IPv4
/// nodes are served on it too.
fn bind_udp(addr: SocketAddr, reuse_port: bool) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    // Only sockets of this user may join the port (the kernel's rule for SO_REUSEPORT).
    #[cfg(unix)]
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Returns an address a local socket can send to in order to reach `addr`.
pub(crate) fn wake_addr(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => (Ipv4Addr::LOCALHOST, a.port()).into(),
        SocketAddr::V6(a) if a.ip().is_unspecified() => (Ipv6Addr::LOCALHOST, a.port()).into(),
        a => a,
    }
}
