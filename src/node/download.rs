//! One download, end to end.
//!
//! 1. Ask the tracker for the owners, best first, and skip this node itself.
//! 2. Ask owners in turn for the size information until one gives a piece list whose
//!    content id matches the tracker's (an owner cannot make up a file).
//! 3. Open `NAME.part`. If it is already there with the right length, re-verify it and keep
//!    the pieces that pass (resume); otherwise start from zero.
//! 4. Run a round: one worker per owner (up to the configured count), each with its own
//!    connection and a pipeline of requests, taking pieces from the [`Schedule`]. Every
//!    piece is verified before it is written at its offset. An owner that fails (error,
//!    bad piece, hang-up, silence past the peer timeout) is dropped and its pieces go back
//!    to the others.
//! 5. If pieces are still missing when every worker has stopped, run another round with the
//!    owners not yet given up on, asking the tracker again if none are left.
//! 6. Sync, link `NAME.part` to `NAME` (which fails rather than overwrite), remove the
//!    `.part`, serve the file and announce it.
//!
//! Memory is three piece buffers and two small socket buffers per owner, whatever the file
//! size.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};
use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::messages::{ContentId, OwnerInfo};

use super::part::{Opened, Part, Publish};
use super::peer::PeerConn;
use super::schedule::{Bitfield, Schedule};
use super::store::SharedFile;
use super::{Ctx, DownloadReport, Event};

/// An owner that failed this many times is given up on for the download.
const MAX_FAILURES: u32 = 4;
/// An owner that sent this many pieces that failed verification is given up on.
const MAX_BAD_PIECES: u32 = 2;
/// How long a failed owner waits before it is asked again; doubled at each failure.
const BACKOFF: Duration = Duration::from_secs(1);
/// Piece buffers per owner: one being received, one being verified, one spare.
const BUFFERS_PER_OWNER: usize = 3;
/// How often a worker whose owner is partial asks it again which pieces it holds.
const BITFIELD_REFRESH: Duration = Duration::from_millis(250);

/// How many requests a worker keeps in flight: enough for [`PIPELINE_TIME`] at the rate its
/// owner has been sending, between two pieces and the configured depth. A deep pipeline
/// to a slow owner would commit pieces to it long before they arrive, pieces that faster
/// owners could have sent, and that other downloaders meanwhile get too.
struct Pace {
    max: usize,
    piece_size: f64,
    /// Bytes per second, smoothed; `None` until two pieces have arrived.
    rate: Option<f64>,
    last: Option<Instant>,
}

/// How often a running download saves its resume record.
const RECORD_INTERVAL: Duration = Duration::from_secs(2);

/// When a download first asks the tracker again for owners, at the latest.
const FIRST_POLL: Duration = Duration::from_millis(500);

/// How much of an owner's sending a worker keeps requested ahead.
const PIPELINE_TIME: f64 = 0.1;

impl Pace {
    fn new(max: usize, piece_size: u32) -> Self {
        Self {
            max: max.max(1),
            piece_size: f64::from(piece_size.max(1)),
            rate: None,
            last: None,
        }
    }

    fn depth(&self) -> usize {
        let Some(rate) = self.rate else {
            return self.max.min(2);
        };
        let wanted = (rate * PIPELINE_TIME / self.piece_size).ceil() as usize;
        wanted.clamp(self.max.min(2), self.max)
    }

    fn arrived(&mut self, bytes: usize) {
        let now = Instant::now();
        if let Some(last) = self.last.replace(now) {
            let secs = now.duration_since(last).as_secs_f64().max(1e-6);
            let sample = bytes as f64 / secs;
            self.rate = Some(self.rate.map_or(sample, |r| 0.8 * r + 0.2 * sample));
        }
    }
}

/// What a worker expects next on its connection, in the order it asked.
enum Answer {
    /// A piece.
    Piece(u32),
    /// Size information and a bitfield: the owner saying again what it holds.
    Holdings,
}

/// Downloads `file` into the node's folder.
///
/// # Errors
///
/// [`Error::AlreadyExists`] if the file is there, tracker errors, [`Error::NoOwners`],
/// [`Error::OwnersExhausted`] if every owner failed, [`Error::File`] for local I/O, and
/// [`Error::Shutdown`] if the node stopped first.
pub(super) fn run(ctx: &Ctx, file: &str) -> Result<DownloadReport> {
    let started = Instant::now();
    let final_path = ctx.store.path_of(file)?;
    let exists = || Error::AlreadyExists {
        file: file.into(),
        dir: ctx.store.dir().into(),
    };
    if final_path.symlink_metadata().is_ok() {
        return Err(exists());
    }
    let numwant =
        u16::try_from(ctx.config.max_owners.saturating_mul(2).max(16)).unwrap_or(u16::MAX);
    let listed = ctx.tracker.need(file, numwant)?;
    ctx.learn_interval(listed.interval);
    let mut owners = Owners::new(ctx, listed.owners);
    if owners.candidates.is_empty() {
        return Err(Error::NoOwners { file: file.into() });
    }
    let (manifest, first) = fetch_manifest(ctx, file, listed.content, &mut owners)?;
    let Opened {
        part,
        mut done,
        record_lied,
    } = Part::open(ctx.store.dir(), file, &manifest)?;
    if record_lied > 0 {
        ctx.emit(Event::RecordFailed {
            file: file.into(),
            error: format!(
                "{record_lied} pieces {} listed as verified did not verify; fetching them again",
                part.record_path().display()
            ),
        });
    }
    let resumed = done.count();
    let part_path = part.path().to_owned();
    // Serve what we hold while we download; withdrawn if the download fails, replaced by
    // the finished file if it succeeds.
    let partial = ctx
        .store
        .insert_partial(file, part_path.clone(), manifest.clone(), done.clone());
    let _withdraw = Withdraw {
        ctx,
        file: partial.clone(),
    };
    ctx.emit(Event::DownloadStarted {
        file: file.into(),
        size: manifest.size(),
        pieces: manifest.piece_count(),
        resumed,
        owners: owners.candidates.len(),
    });
    let dl = Dl {
        ctx,
        file,
        manifest: &manifest,
        part: &part,
        recorded: Mutex::new(0),
        sched: Mutex::new(Schedule::new(&done, 1, 0)),
        wake: Condvar::new(),
        fatal: Mutex::new(None),
        received: Mutex::new(HashMap::new()),
        partial,
        start_piece: fastrand::u32(..),
        numwant,
        live: AtomicUsize::new(0),
        last_progress: Mutex::new(Instant::now()),
        sockets: Mutex::new(Vec::new()),
    };
    let mut first = Some(first);
    let mut asked_again = false;
    while done.count() < manifest.piece_count() {
        if ctx.stopping() {
            return Err(Error::Shutdown);
        }
        let round = owners.usable(ctx.config.max_owners, Instant::now());
        if round.is_empty() {
            // Owners waiting out a backoff: wait for the first, in slices, so shutdown
            // is not held up.
            if let Some(at) = owners.next_retry(Instant::now()) {
                while Instant::now() < at && !ctx.stopping() {
                    thread::sleep(
                        at.saturating_duration_since(Instant::now())
                            .min(Duration::from_millis(50)),
                    );
                }
                continue;
            }
            if asked_again {
                return Err(Error::OwnersExhausted {
                    file: file.into(),
                    missing: manifest.piece_count() - done.count(),
                    total: manifest.piece_count(),
                    last: owners.last_reason(),
                });
            }
            asked_again = true;
            if let Ok(listed) = ctx.tracker.need(file, numwant)
                && listed.content == manifest.content()
            {
                owners.add(ctx, listed.owners);
            }
            continue;
        }
        let before = done.count();
        for (addr, result) in dl.round(&round, first.take(), &done, &mut owners) {
            if let Err(e) = result {
                owners.failed(addr, &e, Instant::now());
                ctx.emit(Event::OwnerFailed {
                    file: file.into(),
                    owner: addr,
                    error: e.to_string(),
                });
            }
        }
        if let Some(e) = dl.fatal.lock().take() {
            return Err(e);
        }
        done = dl.sched.lock().done_bitfield();
        if done.count() > before {
            asked_again = false;
        }
    }
    let received = dl.received.into_inner();
    part.publish(&final_path).map_err(|e| match e {
        Publish::Exists => exists(),
        Publish::Failed(e) => e,
    })?;
    let shared = ctx
        .store
        .insert(file, final_path.clone(), manifest.clone())?;
    ctx.counters.files_received.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = ctx.announce(&ctx.tracker, &shared) {
        ctx.emit(Event::TrackerError {
            error: e.to_string(),
        });
    }
    let mut from: Vec<(SocketAddr, u64)> = received.into_iter().collect();
    from.sort();
    Ok(DownloadReport {
        file: file.into(),
        path: final_path,
        size: manifest.size(),
        content: manifest.content(),
        pieces: manifest.piece_count(),
        resumed,
        elapsed: started.elapsed(),
        from,
        failed: owners.reasons,
    })
}

/// The owners known for one download, and how each has fared.
///
/// An owner that fails for a reason that may pass (a refused or broken connection, a
/// timeout) is retried after a backoff that doubles each time, and given up on after
/// [`MAX_FAILURES`]. One that sends a piece that fails verification is retried once more
/// and dropped for good at the second ([`MAX_BAD_PIECES`]). One that breaks the protocol or
/// refuses the file is dropped at once.
#[derive(Debug, Default)]
struct Owners {
    /// Every owner heard of, best first.
    candidates: Vec<OwnerInfo>,
    failures: HashMap<SocketAddr, u32>,
    bad_pieces: HashMap<SocketAddr, u32>,
    /// When an owner that failed may be asked again.
    retry_at: HashMap<SocketAddr, Instant>,
    /// Owners never asked again in this download.
    banned: HashSet<SocketAddr>,
    reasons: Vec<(SocketAddr, String)>,
}

impl Owners {
    fn new(ctx: &Ctx, listed: Vec<OwnerInfo>) -> Self {
        let mut owners = Self::default();
        owners.add(ctx, listed);
        owners
    }

    /// Adds owners not yet known, skipping this node itself.
    fn add(&mut self, ctx: &Ctx, listed: Vec<OwnerInfo>) {
        let me = (ctx.config.name.as_str(), ctx.local_addr.port());
        self.add_except(listed, me);
    }

    fn add_except(&mut self, listed: Vec<OwnerInfo>, (name, port): (&str, u16)) {
        for o in listed {
            let is_self = o.node == name && o.addr.port() == port;
            if !is_self && !self.candidates.iter().any(|c| c.addr == o.addr) {
                self.candidates.push(o);
            }
        }
    }

    fn given_up(&self, addr: &SocketAddr) -> bool {
        self.banned.contains(addr) || self.failures.get(addr).copied().unwrap_or(0) >= MAX_FAILURES
    }

    /// Returns up to `max` owners that may be asked now, best first.
    fn usable(&self, max: usize, now: Instant) -> Vec<SocketAddr> {
        self.candidates
            .iter()
            .map(|o| o.addr)
            .filter(|a| !self.given_up(a) && self.retry_at.get(a).is_none_or(|t| *t <= now))
            .take(max)
            .collect()
    }

    /// Returns when the next owner still in the running may be asked again, if any is
    /// waiting out a backoff.
    fn next_retry(&self, now: Instant) -> Option<Instant> {
        self.retry_at
            .iter()
            .filter(|(a, t)| **t > now && !self.given_up(a))
            .map(|(_, t)| *t)
            .min()
    }

    fn failed(&mut self, addr: SocketAddr, e: &Error, now: Instant) {
        match e {
            Error::HashMismatch { .. } => {
                let bad = self.bad_pieces.entry(addr).or_default();
                *bad += 1;
                if *bad >= MAX_BAD_PIECES {
                    self.banned.insert(addr);
                } else {
                    self.retry_at.insert(addr, now + BACKOFF);
                }
            }
            Error::Peer { .. } | Error::Handshake(_) => {
                self.banned.insert(addr);
            }
            _ => {
                let n = self.failures.entry(addr).or_default();
                *n += 1;
                self.retry_at.insert(addr, now + BACKOFF * 2u32.pow(*n - 1));
            }
        }
        self.reasons.push((addr, e.to_string()));
    }

    /// How the last owner to fail failed, for the error that ends a download.
    fn last_reason(&self) -> String {
        self.reasons
            .last()
            .map_or_else(|| "no owner was reachable".into(), |(_, r)| r.clone())
    }
}

/// Asks owners in order for the piece list until one matches the tracker's content id.
/// Returns it with the connection it came on, which the first round reuses.
fn fetch_manifest<'a>(
    ctx: &'a Ctx,
    file: &str,
    content: ContentId,
    owners: &mut Owners,
) -> Result<(Manifest, (SocketAddr, PeerConn<'a>, Bitfield))> {
    for addr in owners.usable(usize::MAX, Instant::now()) {
        let attempt = PeerConn::connect(ctx, addr).and_then(|mut conn| {
            let (info, has) = conn.size_info(file, true)?;
            let manifest = Manifest::from_size_info(&info).map_err(|e| Error::Peer {
                addr,
                reason: format!("bad size information: {e}"),
            })?;
            if manifest.content() != content {
                return Err(Error::Peer {
                    addr,
                    reason: "holds other content than the tracker lists".into(),
                });
            }
            Ok((manifest, (addr, conn, has)))
        });
        match attempt {
            Ok(found) => return Ok(found),
            Err(Error::Shutdown) => return Err(Error::Shutdown),
            Err(e) => {
                owners.failed(addr, &e, Instant::now());
                ctx.emit(Event::OwnerFailed {
                    file: file.into(),
                    owner: addr,
                    error: e.to_string(),
                });
            }
        }
    }
    Err(Error::OwnersExhausted {
        file: file.into(),
        missing: 0,
        total: 0,
        last: owners.last_reason(),
    })
}

/// The state the workers of one download share.
struct Dl<'a> {
    ctx: &'a Ctx,
    file: &'a str,
    manifest: &'a Manifest,
    part: &'a Part,
    /// How many pieces the resume record last listed.
    recorded: Mutex<u32>,
    sched: Mutex<Schedule>,
    /// Wakes idle workers when pieces complete or come back.
    wake: Condvar,
    /// A local error (the disk) that ends the whole download.
    fatal: Mutex<Option<Error>>,
    received: Mutex<HashMap<SocketAddr, u64>>,
    /// This download as the store serves it, while it runs.
    partial: Option<Arc<SharedFile>>,
    /// Where this node's shares start, so downloaders of one file ask for different pieces.
    start_piece: u32,
    numwant: u16,
    /// Workers running.
    live: AtomicUsize,
    /// When a piece last verified.
    last_progress: Mutex<Instant>,
    /// The workers' sockets, broken once the file is complete so no worker still waiting
    /// on a silent owner holds up the finish.
    sockets: Mutex<Vec<std::net::TcpStream>>,
}

/// Stops serving a download's `.part` when the download ends without finishing. (After a
/// success the finished file has replaced the entry, and withdrawing is a no-op.)
struct Withdraw<'a> {
    ctx: &'a Ctx,
    file: Option<Arc<SharedFile>>,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        if let Some(f) = &self.file {
            self.ctx.store.withdraw(f);
        }
    }
}

impl<'a> Dl<'a> {
    /// Runs one worker per owner until none can make progress; returns each one's result.
    ///
    /// Meanwhile this thread coordinates: once the node holds verified pieces it announces
    /// itself as a partial owner, and every announce interval it asks the tracker for
    /// owners again and starts a worker for each new one (up to the configured count).
    fn round(
        &self,
        owners: &[SocketAddr],
        mut first: Option<(SocketAddr, PeerConn<'a>, Bitfield)>,
        done: &Bitfield,
        book: &mut Owners,
    ) -> Vec<(SocketAddr, Result<()>)> {
        *self.sched.lock() = Schedule::new(done, owners.len(), self.start_piece);
        let interval = self.ctx.announce_interval();
        let quick = self
            .ctx
            .tracker
            .clone()
            .with_retries(2, Duration::from_millis(250));
        thread::scope(|s| {
            let mut handles = Vec::new();
            for (slot, &addr) in owners.iter().enumerate() {
                let conn = match &first {
                    Some((a, ..)) if *a == addr => first.take().map(|(_, c, b)| (c, b)),
                    _ => None,
                };
                handles.push((addr, self.spawn_worker(s, slot, addr, conn)));
            }
            // The first look comes soon: downloaders started together find each other
            // once they hold pieces, not an interval later.
            let mut next_poll = Instant::now() + interval.min(FIRST_POLL);
            let mut last_record = Instant::now();
            let mut announced = 0;
            loop {
                {
                    let mut sched = self.sched.lock();
                    if self.live.load(Ordering::SeqCst) == 0 {
                        break;
                    }
                    if sched.is_complete() {
                        for s in self.sockets.lock().iter() {
                            let _ = s.shutdown(std::net::Shutdown::Both);
                        }
                    }
                    self.wake.wait_for(&mut sched, Duration::from_millis(200));
                }
                if self.ctx.stopping() || self.live.load(Ordering::SeqCst) == 0 {
                    continue;
                }
                if last_record.elapsed() >= RECORD_INTERVAL {
                    last_record = Instant::now();
                    self.record();
                }
                let held = self.partial.as_ref().map_or(0, |p| p.progress().0);
                let due = Instant::now() >= next_poll;
                if let Some(partial) = &self.partial
                    && held > 0
                    && (announced == 0 || due)
                    && held != announced
                {
                    announced = held;
                    if let Err(e) = self.ctx.announce(&quick, partial) {
                        self.ctx.emit(Event::TrackerError {
                            error: e.to_string(),
                        });
                    }
                }
                if !due {
                    continue;
                }
                next_poll = Instant::now() + interval;
                let Ok(listed) = quick.need(self.file, self.numwant) else {
                    continue;
                };
                if listed.content != self.manifest.content() {
                    continue;
                }
                book.add(self.ctx, listed.owners);
                let running: Vec<SocketAddr> = handles.iter().map(|(a, _)| *a).collect();
                let room = self
                    .ctx
                    .config
                    .max_owners
                    .saturating_sub(self.live.load(Ordering::SeqCst));
                for addr in book
                    .usable(usize::MAX, Instant::now())
                    .into_iter()
                    .filter(|a| !running.contains(a))
                    .take(room)
                {
                    let slot = self.sched.lock().add_slot();
                    handles.push((addr, self.spawn_worker(s, slot, addr, None)));
                }
            }
            let results = handles
                .into_iter()
                .map(|(addr, h)| {
                    let result = match h {
                        Ok(h) => h
                            .join()
                            .unwrap_or(Err(Error::ThreadPanicked("node-fetch".into()))),
                        Err(e) => Err(e),
                    };
                    (addr, result)
                })
                .collect();
            self.record();
            results
        })
    }

    /// Saves the resume record if pieces were verified since the last one. A failure is
    /// reported and not fatal: the `.part` is then verified again on resume.
    fn record(&self) {
        let done = self.sched.lock().done_bitfield();
        let mut recorded = self.recorded.lock();
        if done.count() == *recorded || done.count() == done.len() {
            return;
        }
        match self.part.save_record(&done) {
            Ok(()) => *recorded = done.count(),
            Err(e) => self.ctx.emit(Event::RecordFailed {
                file: self.file.into(),
                error: format!("saving {}: {e}", self.part.record_path().display()),
            }),
        }
    }

    fn spawn_worker<'s>(
        &'s self,
        s: &'s thread::Scope<'s, '_>,
        slot: usize,
        addr: SocketAddr,
        conn: Option<(PeerConn<'a>, Bitfield)>,
    ) -> Result<thread::ScopedJoinHandle<'s, Result<()>>> {
        self.live.fetch_add(1, Ordering::SeqCst);
        thread::Builder::new()
            .name("node-fetch".into())
            .spawn_scoped(s, move || self.worker(slot, addr, conn))
            .map_err(|source| {
                self.retire(slot);
                Error::Spawn {
                    name: "node-fetch",
                    source,
                }
            })
    }

    /// Fetches pieces from one owner until there is nothing left it can do.
    ///
    /// The connection is read on this thread while a `node-verify` thread hashes and
    /// writes the previous pieces, so hashing overlaps the network. They pass
    /// [`BUFFERS_PER_OWNER`] piece buffers back and forth: that is all the memory a worker
    /// holds, and a verifier that falls behind makes the reader wait for a buffer.
    fn worker(
        &self,
        slot: usize,
        addr: SocketAddr,
        conn: Option<(PeerConn<'a>, Bitfield)>,
    ) -> Result<()> {
        let _retire = Retire { dl: self, slot };
        let (conn, has) = match conn {
            Some(c) => c,
            None => {
                let mut conn = PeerConn::connect(self.ctx, addr)?;
                let (info, has) = conn.size_info(self.file, false)?;
                if info.content != self.manifest.content() {
                    return Err(Error::Peer {
                        addr,
                        reason: "holds other content".into(),
                    });
                }
                (conn, has)
            }
        };
        self.sched.lock().set_holdings(slot, has);
        if let Some(s) = conn.breaker() {
            self.sockets.lock().push(s);
        }
        let piece_size = self.manifest.geometry().piece_len(0).unwrap_or(0) as usize;
        let (full_tx, full_rx) = bounded::<(u32, Vec<u8>)>(BUFFERS_PER_OWNER);
        let (empty_tx, empty_rx) = bounded::<Vec<u8>>(BUFFERS_PER_OWNER);
        for _ in 0..BUFFERS_PER_OWNER {
            let _ = empty_tx.send(vec![0u8; piece_size]);
        }
        thread::scope(|s| {
            let verifier = thread::Builder::new()
                .name("node-verify".into())
                .spawn_scoped(s, move || {
                    self.verify_and_write(slot, addr, &full_rx, &empty_tx)
                })
                .map_err(|source| Error::Spawn {
                    name: "node-verify",
                    source,
                })?;
            let received = self.receive(slot, conn, &full_tx, &empty_rx);
            drop(full_tx);
            let verified = verifier
                .join()
                .unwrap_or(Err(Error::ThreadPanicked("node-verify".into())));
            // A bad piece explains why the reader stopped; report it first.
            let result = verified.and(received);
            // A connection broken after the file was complete was cut off on purpose.
            if result.is_err() && self.sched.lock().is_complete() {
                return Ok(());
            }
            result
        })
    }

    /// The reading half of a worker: keeps the pipeline full and hands each piece, as it
    /// arrives, to the verifier. Returns when there is nothing left for this owner, or when
    /// the verifier has stopped (it then holds the reason).
    fn receive(
        &self,
        slot: usize,
        mut conn: PeerConn<'a>,
        full: &Sender<(u32, Vec<u8>)>,
        empty: &Receiver<Vec<u8>>,
    ) -> Result<()> {
        let content = self.manifest.content();
        let geometry = self.manifest.geometry();
        let mut in_flight: VecDeque<Answer> = VecDeque::new();
        let mut pace = Pace::new(self.ctx.config.pipeline_depth, geometry.piece_size());
        let mut next_refresh = Instant::now() + BITFIELD_REFRESH;
        let mut refresh_pending = false;
        loop {
            if self.ctx.stopping() {
                return Err(Error::Shutdown);
            }
            if self.fatal.lock().is_some() {
                return Ok(());
            }
            let mut fresh = Vec::new();
            let mut refresh = false;
            {
                let mut sched = self.sched.lock();
                while in_flight.len() + fresh.len() < pace.depth() {
                    match sched.take(slot) {
                        Some(p) => fresh.push(p),
                        None => break,
                    }
                }
                // A partial owner verifies more pieces as it goes: ask it again what it
                // holds, in the pipeline with the piece requests, so what this node knows
                // of who holds what (and so which pieces are rarest) stays current.
                if !sched.holds_all(slot) && !refresh_pending && Instant::now() >= next_refresh {
                    refresh = true;
                } else if in_flight.is_empty() && fresh.is_empty() {
                    if sched.is_complete() {
                        return Ok(());
                    }
                    let stalled =
                        self.last_progress.lock().elapsed() > self.ctx.config.peer_timeout;
                    if !sched.others_busy(slot) && (sched.holds_all(slot) || stalled) {
                        return Ok(());
                    }
                    // Pieces in flight elsewhere (or in our own verifier) may yet come
                    // back, or the owner may get more; the timeout re-checks for shutdown.
                    self.wake.wait_for(&mut sched, Duration::from_millis(100));
                    continue;
                }
            }
            for &p in &fresh {
                conn.request(content, p, geometry.piece_len(p).unwrap_or(0))?;
                in_flight.push_back(Answer::Piece(p));
            }
            if refresh {
                conn.ask_size_info(self.file, false)?;
                in_flight.push_back(Answer::Holdings);
                refresh_pending = true;
            }
            if !fresh.is_empty() || refresh {
                conn.flush()?;
            }
            match in_flight.pop_front() {
                None => {}
                Some(Answer::Holdings) => {
                    let (info, has) = conn.read_size_info()?;
                    if info.content != content {
                        let reason = "holds other content".into();
                        return Err(Error::Peer {
                            addr: conn.addr(),
                            reason,
                        });
                    }
                    self.sched.lock().set_holdings(slot, has);
                    refresh_pending = false;
                    next_refresh = Instant::now() + BITFIELD_REFRESH;
                }
                Some(Answer::Piece(piece)) => {
                    // No buffer comes back once the verifier has stopped: it has the reason.
                    let Ok(mut buf) = empty.recv() else {
                        return Ok(());
                    };
                    let len = geometry.piece_len(piece).unwrap_or(0) as usize;
                    self.ctx
                        .throttle(self.ctx.download_limit.as_ref(), len as u64);
                    conn.read_piece(content, piece, &mut buf[..len])?;
                    pace.arrived(len);
                    if full.send((piece, buf)).is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// The verifying half of a worker: checks each piece against its hash, writes it at its
    /// offset and marks it done, then hands the buffer back.
    fn verify_and_write(
        &self,
        slot: usize,
        addr: SocketAddr,
        full: &Receiver<(u32, Vec<u8>)>,
        empty: &Sender<Vec<u8>>,
    ) -> Result<()> {
        let geometry = self.manifest.geometry();
        let total = geometry.piece_count();
        for (piece, buf) in full {
            // The second copy of an endgame piece: nothing to do but release the claim.
            let duplicate = {
                let mut sched = self.sched.lock();
                sched.is_done(piece) && !sched.complete(slot, piece)
            };
            if duplicate {
                self.wake.notify_all();
                if empty.send(buf).is_err() {
                    break;
                }
                continue;
            }
            let len = geometry.piece_len(piece).unwrap_or(0) as usize;
            let data = &buf[..len];
            if !self.manifest.verify(piece, data) {
                self.ctx.emit(Event::PieceRejected {
                    file: self.file.into(),
                    piece,
                    from: addr,
                });
                return Err(Error::HashMismatch {
                    file: self.file.into(),
                    piece,
                    addr,
                });
            }
            let offset = geometry.piece_range(piece).map_or(0, |r| r.start);
            if let Err(source) = self.part.file().write_all_at(data, offset) {
                let path = self.part.path().to_owned();
                *self.fatal.lock() = Some(Error::File {
                    op: "writing",
                    path,
                    source,
                });
                self.wake.notify_all();
                return Ok(());
            }
            if let Some(partial) = &self.partial {
                partial.mark(piece);
            }
            *self.last_progress.lock() = Instant::now();
            let done = {
                let mut sched = self.sched.lock();
                sched.complete(slot, piece);
                sched.done_count()
            };
            self.wake.notify_all();
            self.ctx
                .counters
                .bytes_received
                .fetch_add(len as u64, Ordering::Relaxed);
            *self.received.lock().entry(addr).or_default() += len as u64;
            self.ctx.emit(Event::PieceReceived {
                file: self.file.into(),
                piece,
                bytes: len as u32,
                from: addr,
                done,
                total,
            });
            if empty.send(buf).is_err() {
                break;
            }
        }
        Ok(())
    }

    fn retire(&self, slot: usize) {
        let mut sched = self.sched.lock();
        sched.retire(slot);
        self.live.fetch_sub(1, Ordering::SeqCst);
        drop(sched);
        self.wake.notify_all();
    }
}

/// Hands a worker's pieces back when it stops, however it stops.
struct Retire<'d, 'a> {
    dl: &'d Dl<'a>,
    slot: usize,
}

impl Drop for Retire<'_, '_> {
    fn drop(&mut self) {
        self.dl.retire(self.slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(port: u16) -> OwnerInfo {
        OwnerInfo {
            node: format!("n{port}"),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            uploads: 0,
            complete: true,
        }
    }

    fn book() -> Owners {
        let mut o = Owners::default();
        o.add_except(vec![owner(1), owner(2), owner(3)], ("n3", 3));
        o
    }

    fn io_error(port: u16) -> Error {
        Error::PeerIo {
            addr: owner(port).addr,
            op: "connecting",
            source: std::io::ErrorKind::ConnectionRefused.into(),
        }
    }

    #[test]
    fn this_node_is_never_its_own_owner() {
        assert_eq!(book().candidates.len(), 2);
    }

    #[test]
    fn a_failed_owner_is_retried_after_a_doubling_backoff_then_given_up() {
        let mut o = book();
        let a = owner(1).addr;
        let t0 = Instant::now();
        o.failed(a, &io_error(1), t0);
        assert_eq!(o.usable(8, t0), [owner(2).addr]);
        assert_eq!(o.next_retry(t0), Some(t0 + BACKOFF));
        assert_eq!(o.usable(8, t0 + BACKOFF), [a, owner(2).addr]);
        o.failed(a, &io_error(1), t0);
        assert_eq!(o.next_retry(t0), Some(t0 + BACKOFF * 2));
        o.failed(a, &io_error(1), t0);
        o.failed(a, &io_error(1), t0);
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(
            o.usable(8, later),
            [owner(2).addr],
            "given up after {MAX_FAILURES}"
        );
        assert_eq!(o.next_retry(t0), None);
    }

    #[test]
    fn a_second_bad_piece_drops_an_owner_for_good() {
        let mut o = book();
        let a = owner(2).addr;
        let bad = Error::HashMismatch {
            file: "f".into(),
            piece: 0,
            addr: a,
        };
        let t0 = Instant::now();
        o.failed(a, &bad, t0);
        assert!(
            o.usable(8, t0 + BACKOFF).contains(&a),
            "one bad piece: retried later"
        );
        o.failed(a, &bad, t0);
        assert!(!o.usable(8, t0 + Duration::from_secs(3600)).contains(&a));
    }

    #[test]
    fn a_protocol_violation_drops_an_owner_at_once() {
        let mut o = book();
        let a = owner(1).addr;
        o.failed(
            a,
            &Error::Peer {
                addr: a,
                reason: "unexpected bitfield".into(),
            },
            Instant::now(),
        );
        assert!(
            !o.usable(8, Instant::now() + Duration::from_secs(3600))
                .contains(&a)
        );
        assert_eq!(o.reasons.len(), 1);
    }
}
