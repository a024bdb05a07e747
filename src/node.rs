//! The node: shares files from its folder and downloads files from other nodes.
//!
//! [`Node::start`] binds the TCP listener, then spawns `node-accept` (serves peers, one
//! `node-peer` thread per connection) and `node-control` (runs commands, re-announces
//! shared files every interval, owns the download threads). Callers drive it through the
//! handle's methods, each a `Command` on a bounded channel, and hear from it through the
//! [`Event`] receiver `start` returns.
//!
//! Layout: `config` ([`NodeConfig`]), `control` (the `node-control` thread and the
//! commands it runs), `conns` (the open connections), `handle` (the [`Download`] handle
//! and the entry a running download keeps in the node's table), `store` (which files are
//! served), `serve`
//! (answering peers), `peer` (asking peers), `schedule` (which owner fetches which piece),
//! `download` (one download, end to end). With a [`NetworkKey`](crate::NetworkKey), `serve` and `peer` run every connection
//! through the crate's session layer (a Noise handshake, then encrypted records).

mod bitfield;
mod config;
mod conns;
mod control;
mod download;
mod handle;
mod limit;
mod metrics;
mod part;
mod peer;
mod report;
mod schedule;
mod seeding;
mod send;
mod serve;
mod sockopt;
mod store;

use std::net::{Ipv6Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded};
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::messages::{Announce, ContentId, MAX_NODE_NAME_LEN, SearchHit};
use crate::tracker::{TrackerChange, TrackerSet, wake_addr};
pub use config::{DEFAULT_MAX_OWNERS, NodeConfig};
use conns::{ConnGuard, Conns};
use control::{Command, Sharing, control_loop, status_of};
pub use handle::Download;
use handle::Running;
use limit::RateLimiter;
pub use limit::parse_rate;
pub use metrics::NodeMetrics;
pub use report::{DownloadId, DownloadProgress, DownloadReport, Event, ShareReport, Status};
use store::{SharedFile, Store};

/// A running node. Dropping it shuts it down.
#[derive(Debug)]
pub struct Node {
    ctx: Arc<Ctx>,
    commands: Sender<Command>,
    /// Dropped to tell `node-control` to stop; its receivers then see a disconnect.
    stop: Option<Sender<()>>,
    #[cfg(feature = "http")]
    http: Option<crate::http::HttpServer>,
    threads: Vec<(&'static str, JoinHandle<Result<()>>)>,
}

impl Node {
    /// Creates the folder if needed, binds the listener and starts the node.
    ///
    /// Returns the handle and the receiver of its events.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] for a bad node name, [`Error::File`] if the folder cannot
    /// be created, [`Error::FolderInUse`] if another node runs on it, [`Error::Bind`] if
    /// the address cannot be bound.
    pub fn start(config: NodeConfig) -> Result<(Self, Receiver<Event>)> {
        if config.name.is_empty() || config.name.len() > MAX_NODE_NAME_LEN {
            return Err(Error::InvalidParameter("node names are 1 to 64 bytes"));
        }
        std::fs::create_dir_all(&config.dir).map_err(|source| Error::File {
            op: "creating folder",
            path: config.dir.clone(),
            source,
        })?;
        let folder_lock = lock_folder(&config.dir)?;
        let bind_err = |source| Error::Bind {
            addr: config.listen,
            source,
        };
        let listen = listen_addr(&config);
        let listener = sockopt::bind_listener(listen).map_err(|source| Error::Bind {
            addr: listen,
            source,
        })?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        let (events_tx, events_rx) = bounded(4096);
        let (commands_tx, commands_rx) = bounded(64);
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let mut trackers = TrackerSet::new(&config.trackers, config.tracker_replicas)?
            .with_retries(config.tracker_tries, Duration::from_millis(250))
            .with_retry_after(config.tracker_retry_after);
        if let Some(key) = &config.key {
            trackers = trackers.with_key(key);
        }
        let tracker_events = events_tx.clone();
        let trackers = trackers.on_change(move |change| {
            let _ = tracker_events.try_send(match change {
                TrackerChange::Silent { tracker, error } => Event::TrackerSilent { tracker, error },
                TrackerChange::Back { tracker } => Event::TrackerBack { tracker },
            });
        });
        let (config_upload_limit, config_download_limit, config_upload_slots) = (
            config.upload_limit,
            config.download_limit,
            config.upload_slots,
        );
        let ctx = Arc::new(Ctx {
            _folder_lock: folder_lock,
            store: Store::new(config.dir.clone()),
            config,
            local_addr,
            trackers,
            events: events_tx,
            dropped_events: AtomicU64::new(0),
            counters: metrics::Cells::default(),
            conns: Conns::default(),
            stopping: AtomicBool::new(false),
            interval_secs: AtomicU32::new(0),
            downloading: Mutex::default(),
            upload_limit: config_upload_limit.map(RateLimiter::new),
            download_limit: config_download_limit.map(RateLimiter::new),
            turns: seeding::Turns::new(config_upload_slots),
            downloads: AtomicU64::new(0),
            stop: stop_rx.clone(),
        });
        let mut threads = Vec::new();
        let accept_ctx = Arc::clone(&ctx);
        threads.push(spawn(&ctx, "node-accept", move || {
            serve::accept_loop(&accept_ctx, &listener)
        })?);
        let control_ctx = Arc::clone(&ctx);
        let control = spawn(&ctx, "node-control", move || {
            control_loop(&control_ctx, &commands_rx, &stop_rx)
        });
        let mut node = Self {
            ctx,
            commands: commands_tx,
            stop: Some(stop_tx),
            #[cfg(feature = "http")]
            http: None,
            threads,
        };
        node.threads.push(control?);
        #[cfg(feature = "http")]
        if let Some(http) = &node.ctx.config.http {
            let (a, b) = (Arc::clone(&node.ctx), Arc::clone(&node.ctx));
            let views = crate::http::Views {
                metrics: Box::new(move || crate::http::node_metrics(&a.metrics())),
                status: Box::new(move || crate::http::node_status(&status_of(&b))),
            };
            let keyed = node.ctx.config.key.is_some();
            node.http = Some(crate::http::HttpServer::start(http, keyed, views)?);
        }
        Ok((node, events_rx))
    }

    /// Returns the address peers reach this node at, with the real port.
    pub fn local_addr(&self) -> SocketAddr {
        self.ctx.local_addr
    }

    /// Returns the node's folder.
    pub fn dir(&self) -> &Path {
        self.ctx.store.dir()
    }

    /// Hashes the file `file` in the node's folder, serves it and announces it (mode
    /// `upload`). Blocks until a tracker has acknowledged: the trackers of its set are
    /// asked at once, each at most [`NodeConfig::tracker_tries`] times (3.75 s with the
    /// defaults), after the hashing.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`], [`Error::NotAFile`] or [`Error::File`] for the file; a
    /// tracker error if the announce failed, in which case the file is still served and is
    /// announced again at the next interval.
    pub fn share(&self, file: &str) -> Result<ShareReport> {
        self.ask(|reply| Command::Share {
            what: Sharing::Name(file.into()),
            reply,
        })?
    }

    /// Hashes the regular file at `path`, wherever it lies, and serves it in place under its
    /// base name, without copying it; downloads still land in the node's folder. A file
    /// changed or removed after sharing stops being served, as with [`share`](Self::share).
    /// Blocks until the tracker has acknowledged.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] if its base name is not a plain file name, [`Error::NotAFile`]
    /// or [`Error::File`] for the file; a tracker error if the announce failed (the file is
    /// still served and announced again at the next interval).
    pub fn share_path(&self, path: impl AsRef<Path>) -> Result<ShareReport> {
        self.ask(|reply| Command::Share {
            what: Sharing::Path(path.as_ref().into()),
            reply,
        })?
    }

    /// Starts downloading `file` into the node's folder (mode `download`).
    ///
    /// # Errors
    ///
    /// [`Error::Shutdown`] if the node has stopped; everything else comes from
    /// [`Download::wait`].
    pub fn download(&self, file: &str) -> Result<Download> {
        self.start_download(file, None)
    }

    /// Starts downloading the content `content` shared as `file`, and no other: when
    /// several contents are shared under one name (a file changed, or someone shares their
    /// own under a popular name), this is how a user who knows which one they want gets
    /// it. The content id is what `share` and `search` show.
    ///
    /// # Errors
    ///
    /// As [`download`](Self::download); [`Error::NoOwners`] if nobody shares that content
    /// under that name.
    pub fn download_content(&self, file: &str, content: ContentId) -> Result<Download> {
        self.start_download(file, Some(content))
    }

    fn start_download(&self, file: &str, content: Option<ContentId>) -> Result<Download> {
        let (reply, rx) = bounded(1);
        let (cancel, cancelled) = bounded(1);
        let id = DownloadId(self.ctx.downloads.fetch_add(1, Ordering::Relaxed) + 1);
        let (ended_tx, ended) = bounded(0);
        self.send(Command::Download {
            id,
            file: file.into(),
            content,
            reply,
            cancelled,
            ended: ended_tx,
        })?;
        Ok(Download {
            id,
            file: file.into(),
            reply: rx,
            ended,
            cancel,
            ctx: Arc::downgrade(&self.ctx),
            outcome: Mutex::new(None),
        })
    }

    /// Asks the trackers which files contain `pattern` (ignoring case), and who owns them,
    /// all at once, merging their answers. Blocks at most as long as one tracker's tries
    /// (3.75 s with the defaults, see [`NodeConfig::tracker_tries`]).
    ///
    /// # Errors
    ///
    /// Tracker errors.
    pub fn search(&self, pattern: &str) -> Result<Vec<SearchHit>> {
        self.ask(|reply| Command::Search {
            pattern: pattern.into(),
            reply,
        })?
    }

    /// Returns what the node shares and downloads, and its counters.
    ///
    /// # Errors
    ///
    /// [`Error::Shutdown`] if the node has stopped.
    pub fn status(&self) -> Result<Status> {
        self.ask(|reply| Command::Status { reply })
    }

    /// Returns a copy of the node's counters: bytes, pieces, downloads, owners dropped,
    /// connections, rate-limit waits. Cheap, and answered without the node's threads.
    pub fn metrics(&self) -> NodeMetrics {
        self.ctx.metrics()
    }

    /// Returns the address of the web side, with the real port, if it serves one.
    #[cfg(feature = "http")]
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(crate::http::HttpServer::addr)
    }

    /// Returns how many events were dropped because the event queue was full.
    pub fn dropped_events(&self) -> u64 {
        self.ctx.dropped_events.load(Ordering::Relaxed)
    }

    /// Tells the tracker the node is leaving, stops every transfer and waits for every
    /// thread (mode `exit`).
    ///
    /// # Errors
    ///
    /// The first error or panic of a node thread, by thread name.
    pub fn shutdown(mut self) -> Result<()> {
        self.close()
    }

    fn ask<T>(&self, command: impl FnOnce(Sender<T>) -> Command) -> Result<T> {
        let (reply, rx) = bounded(1);
        self.send(command(reply))?;
        rx.recv().map_err(|_| Error::Shutdown)
    }

    fn send(&self, command: Command) -> Result<()> {
        self.commands.send(command).map_err(|_| Error::Shutdown)
    }

    fn close(&mut self) -> Result<()> {
        #[cfg(feature = "http")]
        drop(self.http.take());
        let Some(stop) = self.stop.take() else {
            return Ok(());
        };
        self.ctx.stopping.store(true, Ordering::SeqCst);
        drop(stop);
        // Wake the blocking accept, then break every open connection's blocking read.
        let _ = TcpStream::connect_timeout(&wake_addr(self.ctx.local_addr), Duration::from_secs(1));
        self.ctx.conns.close_all();
        let mut first = Ok(());
        for (name, thread) in self.threads.drain(..) {
            let result = thread
                .join()
                .unwrap_or_else(|_| Err(Error::ThreadPanicked(name.into())));
            if first.is_ok() {
                first = result;
            }
        }
        first
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            eprintln!("node {}: {e}", self.ctx.config.name);
        }
    }
}

/// What every thread of one node shares.
#[derive(Debug)]
pub(crate) struct Ctx {
    /// Held locked while the node runs: one node per folder.
    _folder_lock: std::fs::File,
    config: NodeConfig,
    local_addr: SocketAddr,
    store: Store,
    trackers: TrackerSet,
    events: Sender<Event>,
    dropped_events: AtomicU64,
    counters: metrics::Cells,
    conns: Conns,
    stopping: AtomicBool,
    /// The interval the tracker last asked for, in seconds; zero until it has answered.
    interval_secs: AtomicU32,
    /// Files being downloaded, with when each began and what it has fetched; a download
    /// leaves this table before it reports its result.
    downloading: Mutex<std::collections::BTreeMap<String, Arc<Running>>>,
    /// Shared by every connection this node serves.
    upload_limit: Option<RateLimiter>,
    /// Shared by every download worker.
    download_limit: Option<RateLimiter>,
    /// The line of connections waiting for an upload turn of a complete file.
    turns: seeding::Turns,
    /// Downloads started so far: the last [`DownloadId`] given.
    downloads: AtomicU64,
    /// Disconnected when the node shuts down: every thread's loop selects on it.
    stop: Receiver<()>,
}

impl Ctx {
    fn emit(&self, event: Event) {
        if self.events.try_send(event).is_err() {
            self.dropped_events.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn metrics(&self) -> NodeMetrics {
        let open = self.conns.open();
        let in_flight = self
            .downloading
            .lock()
            .values()
            .map(|run| run.in_flight.load(Ordering::Relaxed))
            .sum();
        self.counters
            .snapshot(open as u64, in_flight, &self.trackers.health())
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Accounts `bytes` against `limit` and waits out any debt on the node's stop channel,
    /// so shutdown (which disconnects it) ends the wait at once.
    fn throttle(&self, limit: Option<&RateLimiter>, bytes: u64) {
        let Some(limit) = limit else { return };
        let wait = limit.take(bytes);
        if !wait.is_zero() {
            let upload = self
                .upload_limit
                .as_ref()
                .is_some_and(|u| std::ptr::eq(u, limit));
            self.counters.waited(upload, wait);
        }
        if !wait.is_zero() {
            // Never carries a message: times out, or disconnects at shutdown.
            let _ = self.stop.recv_timeout(wait);
        }
    }

    fn announce(&self, trackers: &TrackerSet, file: &SharedFile) -> Result<()> {
        let m = &file.manifest;
        let (pieces, complete) = file.progress();
        let interval = trackers.announce(&Announce {
            node: self.config.name.clone(),
            port: self.local_addr.port(),
            file: file.name.clone(),
            content: m.content(),
            size: m.size(),
            pieces,
            complete,
            counters: self.counters.counters(),
        })?;
        self.learn_interval(interval);
        Ok(())
    }

    /// Records the announce interval a tracker answer carried.
    fn learn_interval(&self, interval: Duration) {
        let secs = u32::try_from(interval.as_secs()).unwrap_or(u32::MAX);
        self.interval_secs.store(secs, Ordering::Relaxed);
    }

    fn announce_interval(&self) -> Duration {
        match self.interval_secs.load(Ordering::Relaxed) {
            0 => self.config.announce_interval,
            secs => Duration::from_secs(secs.into()),
        }
    }
}

/// The file in a node's folder that a running node holds locked.
pub const LOCK_FILE: &str = ".p2ptorrent.lock";

/// Takes the folder's lock (an advisory lock on [`LOCK_FILE`], released when the process
/// ends, however it ends), so a second node never downloads into the same `.part`.
fn lock_folder(dir: &std::path::Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        // Never through a link, and never blocking: a FIFO left under the name would
        // hold the start for ever.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .map_err(|source| Error::File {
            op: "opening the folder's lock",
            path: path.clone(),
            source,
        })?;
    if !file.metadata().is_ok_and(|m| m.file_type().is_file()) {
        return Err(Error::File {
            op: "opening the folder's lock",
            path,
            source: std::io::Error::other("it is not a regular file"),
        });
    }
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::FolderInUse { dir: dir.into() }),
        Err(std::fs::TryLockError::Error(source)) => Err(Error::File {
            op: "locking",
            path,
            source,
        }),
    }
}

/// Starts a node thread. If it panics, it trips the node's shutdown on the way out, so no
/// sibling is left waiting for it.
fn spawn(
    ctx: &Arc<Ctx>,
    name: &'static str,
    f: impl FnOnce() -> Result<()> + Send + 'static,
) -> Result<(&'static str, JoinHandle<Result<()>>)> {
    let ctx = Arc::clone(ctx);
    let handle = thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _trip = TripOnPanic(&ctx);
            f()
        })
        .map_err(|source| Error::Spawn { name, source })?;
    Ok((name, handle))
}

/// Where the node listens: as configured, except that the IPv4 wildcard becomes the
/// dual-stack IPv6 one when a tracker is reached over IPv6, since the trackers list the
/// node at the address its announces come from.
fn listen_addr(config: &NodeConfig) -> SocketAddr {
    let v4_any = config.listen.is_ipv4() && config.listen.ip().is_unspecified();
    if v4_any && config.trackers.iter().any(SocketAddr::is_ipv6) {
        SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), config.listen.port())
    } else {
        config.listen
    }
}

/// Stops the whole node if the thread holding it panics.
struct TripOnPanic<'a>(&'a Ctx);

impl Drop for TripOnPanic<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.stopping.store(true, Ordering::SeqCst);
            self.0.conns.close_all();
            let wake = wake_addr(self.0.local_addr);
            let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        }
    }
}
