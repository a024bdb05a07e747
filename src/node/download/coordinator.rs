//! The coordinator: one per download, the only owner of its state.
//!
//! It holds the schedule (which piece goes to which owner), the owner book, the workers,
//! the resume record and the announces, and waits on one `select!` over its workers'
//! reports, a tick and the node's shutdown. Workers do connection I/O only; the tracker is
//! asked by a `node-lookup` thread, so no call here blocks on the network.
//!
//! How it spreads a swarm:
//!
//! - it keeps up to `max_owners` owners busy, each with a pipeline as deep as its rate
//!   needs, and hears of more owners than it uses (the tracker lists `numwant` at random);
//! - it also takes in every peer that connects to this node holding pieces of the file
//!   (the serving side passes it on, with the port the peer's `Hello` names): a leecher
//!   is found by those it fetches from at once, not at their next look-up, and is fetched
//!   from at once, up to [`MET_EXTRA`] owners beyond `max_owners`;
//! - it asks the tracker again soon after starting (0.5 s, then doubling up to the announce
//!   interval), and at once when it runs out of owners to try;
//! - every [`ROTATE_EVERY`] it replaces the owner that delivered least (one that kept it
//!   choked and sent nothing counts as least), if another is waiting to be tried, and
//!   drops owners that hold nothing it lacks: an owner that has just got its first pieces
//!   finds downloaders within a second or two, however full their owner slots were.
//!   Complete owners are kept while they may yet give (they serve in turns, and leaving
//!   loses the place in line), but not one that gave this node its turn and offered
//!   nothing it lacks, nor any that sent nothing once nothing has arrived for a while;
//! - a piece in flight at one owner far longer than pieces take elsewhere is a sign of an
//!   owner trickling bytes under the silence timeout: that owner is dropped (its pieces go
//!   to the others) when another live owner holds the piece;
//! - it tells every owner each piece it verifies (`Have`), at once; when all its owners
//!   are complete (no swarm to steer), with the next requests to each, 32 at
//!   a time, or at the next tick;
//! - once every piece is verified it returns at once; workers still connecting are told to
//!   stop and do not hold up publishing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::Scope;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select, tick};

use crate::error::{Error, Result, report};
use crate::tracker::Owners as Listed;

use super::super::metrics::Dropped;
use super::super::peer::PeerConn;
use super::super::schedule::{Bitfield, Schedule};
use super::super::store::SharedFile;
use super::super::{Ctx, Event, Running};
use super::owners::OwnerBook;
use super::pace::Pace;
use super::worker::{Job, Report, Worker};

mod asking;
mod prune;
mod steer;

use prune::ROTATE_EVERY;

/// Owners a download may run beyond `max_owners` for peers just met.
pub(super) const MET_EXTRA: usize = 2;
/// How often the coordinator looks at its timers.
const TICK: Duration = Duration::from_millis(100);
/// How often a running download saves its resume record.
const RECORD_INTERVAL: Duration = Duration::from_secs(2);
/// When a download first asks the tracker again for owners.
const FIRST_POLL: Duration = Duration::from_millis(500);
/// What the `node-lookup` thread does for the coordinator.
#[derive(Debug)]
pub(super) enum Lookup {
    /// Ask the tracker for owners.
    Need,
    /// Announce this node as a partial owner.
    Announce(Arc<SharedFile>),
}

/// One worker as the coordinator tracks it.
struct Live<'s> {
    worker: Worker<'s>,
    /// Whether its owner has said what it holds.
    connected: bool,
    /// Whether its owner takes new requests (it unchoked this connection), and since when.
    unchoked: Option<Instant>,
    /// Requests sent and not answered, with when each was sent.
    asked: HashMap<u32, Instant>,
    pace: Pace,
    /// Bytes delivered since the last rotation.
    bytes: u64,
    started: Instant,
    /// When it last delivered a piece (or started).
    last_piece: Instant,
    /// Told to stop; its report of stopping is not a failure.
    leaving: bool,
    /// Whether its owner holds the whole file (as the tracker listed it).
    complete: bool,
    /// Pieces verified here that a complete owner has not been told of yet.
    haves: Vec<u32>,
}

/// The coordinator of one download.
pub(super) struct Coordinator<'s, 'd> {
    job: &'s Job<'d>,
    scope: &'s Scope<'s, 'd>,
    reports: Receiver<Report>,
    /// Signalled by [`crate::Download::cancel`].
    cancelled: &'s Receiver<()>,
    lookups: Sender<Lookup>,
    sched: Schedule,
    pub book: OwnerBook,
    workers: HashMap<usize, Live<'s>>,
    next_slot: usize,
    partial: Option<Arc<SharedFile>>,
    /// Bytes received from each owner.
    pub received: HashMap<SocketAddr, u64>,
    /// This download's entry in the node's table of downloads, for its status.
    running: Option<Arc<Running>>,
    recorded: u32,
    last_record: Instant,
    next_poll: Instant,
    poll_gap: Duration,
    /// Pieces held when this node last announced itself, and when it may again.
    announced: u32,
    next_announce: Instant,
    last_rotation: Instant,
    /// Median seconds per piece over recent pieces, for spotting slow owners.
    piece_secs: Vec<f64>,
    /// When a piece was last verified here (or the download began).
    progressed: Instant,
    rng: fastrand::Rng,
    /// Paused by the handle: no owner is asked for anything, and the partial file is not
    /// served, until resumed.
    paused: bool,
}

impl<'s, 'd> Coordinator<'s, 'd> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        job: &'s Job<'d>,
        scope: &'s Scope<'s, 'd>,
        reports: Receiver<Report>,
        cancelled: &'s Receiver<()>,
        lookups: Sender<Lookup>,
        done: &Bitfield,
        book: OwnerBook,
        partial: Option<Arc<SharedFile>>,
        first_slots: usize,
    ) -> Self {
        let now = Instant::now();
        Self {
            job,
            scope,
            reports,
            cancelled,
            lookups,
            sched: Schedule::new(done, first_slots, fastrand::u32(..)),
            book,
            workers: HashMap::new(),
            next_slot: 0,
            partial,
            received: HashMap::new(),
            running: job.ctx.downloading.lock().get(job.file).cloned(),
            recorded: 0,
            last_record: now,
            next_poll: now + FIRST_POLL,
            poll_gap: FIRST_POLL,
            announced: 0,
            next_announce: now,
            last_rotation: now,
            piece_secs: Vec::new(),
            progressed: now,
            rng: fastrand::Rng::new(),
            paused: false,
        }
    }

    fn ctx(&self) -> &'d Ctx {
        self.job.ctx
    }

    /// Runs until every piece is verified, starting with the connection the piece list
    /// came on.
    ///
    /// # Errors
    ///
    /// [`Error::OwnersExhausted`] when no owner is left to try, [`Error::File`] if the
    /// `.part` cannot be written, [`Error::Shutdown`] if the node stops,
    /// [`Error::Cancelled`] if the download is cancelled.
    pub fn run(&mut self, first: Option<(SocketAddr, PeerConn<'d>, Bitfield)>) -> Result<()> {
        let result = self.drive(first);
        self.stop_all();
        if result.is_err() {
            // Stopped early (shutdown, no owner left, a disk error): what is verified
            // survives for the next attempt.
            self.record();
            // A resume may have put a new partial entry in the store.
            if let Some(partial) = &self.partial {
                self.ctx().store.withdraw(partial);
            }
        }
        result
    }

    fn drive(&mut self, first: Option<(SocketAddr, PeerConn<'d>, Bitfield)>) -> Result<()> {
        if let Some((addr, conn, has)) = first {
            self.start(addr, Some((conn, has)))?;
        }
        self.top_up()?;
        // Shares laid out for owners that did not start go to the others.
        for slot in self.next_slot..self.sched.slots() {
            self.sched.retire(slot);
        }
        self.next_slot = self.sched.slots();
        self.fill_all();
        let ticks = tick(TICK);
        let stop = self.ctx().stop.clone();
        let steer = self
            .running
            .as_ref()
            .map_or_else(crossbeam_channel::never, |r| r.steer.1.clone());
        let met = self
            .running
            .as_ref()
            .map_or_else(crossbeam_channel::never, |r| r.met.1.clone());
        // Paused before it got here.
        self.steer()?;
        while !self.sched.is_complete() {
            select! {
                recv(steer) -> _ => self.steer()?,
                recv(met) -> owner => {
                    if let Ok(owner) = owner {
                        let addr = owner.addr;
                        self.book.met(self.job.ctx, owner);
                        self.take_met(addr)?;
                        self.top_up()?;
                    }
                }
                recv(self.reports) -> report => {
                    // The job holds a sender, so the channel never disconnects here.
                    if let Ok(report) = report {
                        self.on_report(report)?;
                        self.count_in_flight();
                    }
                }
                recv(ticks) -> _ => self.on_tick()?,
                recv(stop) -> _ => return Err(Error::Shutdown),
                recv(self.cancelled) -> _ => {
                    return Err(Error::Cancelled {
                        file: self.job.file.into(),
                    });
                }
            }
        }
        Ok(())
    }

    fn on_report(&mut self, report: Report) -> Result<()> {
        match report {
            Report::Holdings { slot, has } => {
                self.sched.set_holdings(slot, has);
                if let Some(live) = self.workers.get_mut(&slot) {
                    live.connected = true;
                    self.book.reached(live.worker.addr);
                }
                self.fill(slot);
            }
            Report::Has { slot, pieces } => {
                self.sched.add_holdings(slot, &pieces);
                self.fill(slot);
            }
            Report::Choked { slot, choked } => {
                if let Some(live) = self.workers.get_mut(&slot) {
                    live.unchoked = match (choked, live.unchoked) {
                        (true, _) => None,
                        (false, Some(since)) => Some(since),
                        (false, None) => Some(Instant::now()),
                    };
                }
                self.fill(slot);
            }
            Report::Withdrawn { slot, pieces } => {
                self.sched.remove_holdings(slot, &pieces);
                if let Some(live) = self.workers.get_mut(&slot) {
                    for p in &pieces {
                        if live.asked.remove(p).is_some() {
                            self.sched.unassign(slot, *p);
                        }
                    }
                }
                self.fill_all();
            }
            Report::Piece {
                slot,
                piece,
                bytes,
                written,
            } => self.on_piece(slot, piece, bytes, written),
            Report::Stopped { slot, error } => self.on_stopped(slot, error)?,
            Report::WriteFailed(e) => return Err(e),
            Report::Listed(listed) => self.on_listed(listed)?,
        }
        Ok(())
    }

    /// A verified piece arrived from `slot`; `written`: this copy is the one in the
    /// `.part` (a piece counts as done only once that copy is written).
    fn on_piece(&mut self, slot: usize, piece: u32, bytes: u32, written: bool) {
        let now = Instant::now();
        let mut addr = None;
        if let Some(live) = self.workers.get_mut(&slot) {
            if let Some(at) = live.asked.remove(&piece) {
                self.piece_secs.push(now.duration_since(at).as_secs_f64());
                if self.piece_secs.len() > 64 {
                    self.piece_secs.remove(0);
                }
            }
            live.pace.arrived(bytes as usize);
            live.bytes += u64::from(bytes);
            live.last_piece = now;
            addr = Some(live.worker.addr);
        }
        if !written {
            self.sched.landed_elsewhere(slot, piece);
        } else if self.sched.complete(slot, piece) {
            self.progressed = now;
            let ctx = self.ctx();
            if let Some(p) = &self.partial {
                p.mark(piece);
            }
            ctx.counters
                .bytes_received
                .fetch_add(u64::from(bytes), Ordering::Relaxed);
            ctx.counters.pieces_received.fetch_add(1, Ordering::Relaxed);
            if let Some(run) = &self.running {
                run.fetched.fetch_add(u64::from(bytes), Ordering::Relaxed);
                run.verified
                    .store(self.sched.done_count(), Ordering::Relaxed);
            }
            if let Some(addr) = addr {
                *self.received.entry(addr).or_default() += u64::from(bytes);
            }
            if let Some(addr) = addr.filter(|_| ctx.config.piece_events) {
                ctx.emit(Event::PieceReceived {
                    download: self.job.id,
                    file: self.job.file.into(),
                    piece,
                    bytes,
                    from: addr,
                    done: self.sched.done_count(),
                    total: self.job.manifest.piece_count(),
                });
            }
            self.tell_all(piece, slot);
        }
        self.fill(slot);
    }

    fn on_stopped(&mut self, slot: usize, error: Option<Error>) -> Result<()> {
        let Some(live) = self.workers.remove(&slot) else {
            return Ok(());
        };
        self.sched.retire(slot);
        let addr = live.worker.addr;
        match error {
            Some(e @ Error::File { .. }) => return Err(e),
            Some(Error::Shutdown) => return Err(Error::Shutdown),
            Some(e) if !live.leaving => {
                self.ctx().counters.owner_dropped(Dropped::of(&e));
                self.book.failed(addr, &e, Instant::now());
                self.ctx().emit(Event::OwnerFailed {
                    download: self.job.id,
                    file: self.job.file.into(),
                    node: self.book.name_of(addr),
                    owner: addr,
                    error: report(&e),
                });
            }
            _ => {}
        }
        self.top_up()?;
        self.fill_all();
        Ok(())
    }

    fn on_listed(&mut self, listed: Result<Listed>) -> Result<()> {
        match listed {
            Ok(l) if l.content == self.job.manifest.content() => {
                self.ctx().learn_interval(l.interval);
                self.book.add(self.ctx(), l.owners);
            }
            Ok(_) => {}
            Err(e) => self.ctx().emit(Event::TrackerError { error: report(&e) }),
        }
        self.top_up()
    }

    fn on_tick(&mut self) -> Result<()> {
        let now = Instant::now();
        if let Some(run) = &self.running {
            run.owners.store(self.workers.len(), Ordering::Relaxed);
        }
        if now.duration_since(self.last_record) >= RECORD_INTERVAL {
            self.last_record = now;
            self.record();
        }
        // Announcing goes first: until it has, no other downloader can fetch from this
        // node. A request the busy `node-lookup` thread cannot take is tried again at the
        // next tick, never lost (64 hosts in, a third of the leechers once stayed
        // unknown, uploading nothing, because their first announce was dropped).
        if self.paused {
            return Ok(());
        }
        let held = self.sched.done_count();
        if let Some(partial) = &self.partial
            && held > 0
            && held != self.announced
            && now >= self.next_announce
            && self.lookup(Lookup::Announce(Arc::clone(partial)))
        {
            self.announced = held;
            self.next_announce = now + self.poll_gap;
        }
        if now >= self.next_poll && self.lookup(Lookup::Need) {
            self.poll_gap = (self.poll_gap * 2).min(self.ctx().announce_interval());
            self.next_poll = now + self.poll_gap;
        }
        self.flush_all_haves();
        self.drop_slow(now);
        if now.duration_since(self.last_rotation) >= ROTATE_EVERY {
            self.last_rotation = now;
            self.rotate(now);
        }
        self.top_up()
    }

    /// Starts a worker for a peer just met, never tried, even with every owner slot
    /// taken, up to [`MET_EXTRA`] beyond them: it has just got pieces, so likely nobody
    /// fetches from it yet, and waiting for a rotation left such peers idle for seconds.
    fn take_met(&mut self, addr: SocketAddr) -> Result<()> {
        let max = self.ctx().config.max_owners + MET_EXTRA;
        if self.paused
            || self.workers.len() >= max
            || self.workers.values().any(|l| l.worker.addr == addr)
            || !self.book.untried(addr, Instant::now())
        {
            return Ok(());
        }
        self.start(addr, None)
    }

    /// Hands `lookup` to the `node-lookup` thread; returns `false` if it is still busy
    /// with the last one.
    fn lookup(&self, lookup: Lookup) -> bool {
        self.lookups.try_send(lookup).is_ok()
    }

    /// Starts workers for untried owners until `max_owners` run. With none running and
    /// none left to try, asks the tracker; fails once it has nothing new either.
    fn top_up(&mut self) -> Result<()> {
        if self.paused {
            return Ok(());
        }
        let max = self.ctx().config.max_owners;
        let now = Instant::now();
        while self.workers.len() < max {
            let running: Vec<SocketAddr> = self.workers.values().map(|l| l.worker.addr).collect();
            let Some(addr) = self.book.next(now, &running, &mut self.rng) else {
                break;
            };
            self.start(addr, None)?;
        }
        if self.workers.is_empty() && self.book.next_retry(now).is_none() {
            if self.book.asked_again {
                return Err(Error::OwnersExhausted {
                    file: self.job.file.into(),
                    missing: self.job.manifest.piece_count() - self.sched.done_count(),
                    total: self.job.manifest.piece_count(),
                    last: self.book.last_reason(),
                });
            }
            // Counted as asked only once the request is on its way.
            self.book.asked_again = self.lookup(Lookup::Need);
        }
        Ok(())
    }

    fn start(&mut self, addr: SocketAddr, conn: Option<(PeerConn<'d>, Bitfield)>) -> Result<()> {
        let slot = if self.next_slot < self.sched.slots() {
            self.next_slot
        } else {
            self.sched.add_slot()
        };
        self.next_slot = slot + 1;
        let mine = self.sched.done_bitfield();
        let worker = self.job.spawn(self.scope, slot, addr, conn, mine)?;
        self.book.tried(addr);
        let depth = self.ctx().config.pipeline_depth;
        let piece = self.job.manifest.geometry().piece_size();
        self.workers.insert(
            slot,
            Live {
                worker,
                connected: false,
                unchoked: None,
                asked: HashMap::new(),
                pace: Pace::new(depth, piece),
                bytes: 0,
                started: Instant::now(),
                last_piece: Instant::now(),
                leaving: false,
                complete: self.book.is_complete(addr),
                haves: Vec::new(),
            },
        );
        Ok(())
    }

    /// Tells a worker to stop: its pieces go back to the others now, and its report of
    /// stopping is not counted as a failure.
    fn let_go(&mut self, slot: usize) {
        if let Some(live) = self.workers.get_mut(&slot) {
            live.leaving = true;
            // Dropping the sender stops the worker.
            let (dead, _) = crossbeam_channel::bounded(0);
            live.worker.asks = dead;
            live.asked.clear();
            self.sched.retire(slot);
        }
        self.fill_all();
    }

    /// Publishes the piece bytes asked of owners and not yet received, for the node's
    /// metrics.
    fn count_in_flight(&self) {
        let Some(run) = &self.running else { return };
        let geometry = self.job.manifest.geometry();
        let in_flight: u64 = self
            .workers
            .values()
            .flat_map(|live| live.asked.keys())
            .filter_map(|&p| geometry.piece_len(p).map(u64::from))
            .sum();
        run.in_flight.store(in_flight, Ordering::Relaxed);
    }

    /// Tells every worker to stop; their reports of stopping are not failures.
    fn stop_all(&mut self) {
        let slots: Vec<usize> = self.workers.keys().copied().collect();
        for slot in slots {
            if let Some(live) = self.workers.get_mut(&slot) {
                live.leaving = true;
                let (dead, _) = crossbeam_channel::bounded(0);
                live.worker.asks = dead;
            }
        }
    }
}
