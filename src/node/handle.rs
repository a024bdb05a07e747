//! The handle on one download ([`Download`]) and the entry each running download keeps in
//! the node's table ([`Running`]): what the handle steers and reads, and what the
//! download's coordinator keeps up to date.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};
use parking_lot::Mutex;

use crate::error::{Error, Result, report};
use crate::messages::OwnerInfo;

use super::{Ctx, DownloadId, DownloadProgress, DownloadReport};

/// A download running in the background.
///
/// Dropping the handle leaves the download running (its end is still reported as
/// [`Event::DownloadFinished`](super::Event::DownloadFinished) or [`Event::DownloadFailed`](super::Event::DownloadFailed)); [`cancel`](Self::cancel)
/// stops it.
#[derive(Debug)]
#[must_use = "a download reports its result only through wait"]
pub struct Download {
    pub(super) id: DownloadId,
    pub(super) file: String,
    pub(super) reply: Receiver<Result<DownloadReport>>,
    /// Disconnects once the result is ready.
    pub(super) ended: Receiver<()>,
    pub(super) cancel: Sender<()>,
    /// The node, while it runs: for [`progress`](Self::progress). Weak, so a handle kept
    /// after the node is gone holds nothing of it.
    pub(super) ctx: std::sync::Weak<Ctx>,
    /// The outcome once received: the report, or the error's text after the error itself
    /// was returned.
    pub(super) outcome: Mutex<Option<std::result::Result<DownloadReport, String>>>,
}

impl Download {
    /// Returns this download's id, which its events, report and progress carry.
    pub fn id(&self) -> DownloadId {
        self.id
    }

    /// A channel that disconnects once the download has ended and [`wait`](Self::wait)
    /// would return at once; it never carries a message. Select on it beside other
    /// channels (a node's events, a shutdown signal, other downloads) instead of polling
    /// [`wait_timeout`](Self::wait_timeout); with several downloads, `crossbeam_channel::Select`
    /// takes them all.
    pub fn ended(&self) -> &Receiver<()> {
        &self.ended
    }

    /// Returns the file being downloaded.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// Waits for the download to finish. May be called again: a success returns the same
    /// report each time, a failure returns the error the first time and
    /// [`Error::DownloadFailed`] with its text after.
    ///
    /// # Errors
    ///
    /// Why the download failed, [`Error::Cancelled`] after [`cancel`](Self::cancel), or
    /// [`Error::Shutdown`] if the node stopped first.
    pub fn wait(&self) -> Result<DownloadReport> {
        let mut outcome = self.outcome.lock();
        if let Some(done) = outcome.as_ref() {
            return self.again(done);
        }
        let result = self.reply.recv().unwrap_or(Err(Error::Shutdown));
        *outcome = Some(result.as_ref().map(Clone::clone).map_err(|e| report(e)));
        result
    }

    /// Waits at most `timeout`; returns `None` if the download is still running. May be
    /// called again, as [`wait`](Self::wait).
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Result<DownloadReport>> {
        let mut outcome = self.outcome.lock();
        if let Some(done) = outcome.as_ref() {
            return Some(self.again(done));
        }
        let result = match self.reply.recv_timeout(timeout) {
            Ok(r) => r,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => return None,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(Error::Shutdown),
        };
        *outcome = Some(result.as_ref().map(Clone::clone).map_err(|e| report(e)));
        Some(result)
    }

    /// Returns how far the download is: pieces verified of all, bytes fetched this run,
    /// rate, ETA, owners in use. `None` once it has ended (or the node has stopped).
    pub fn progress(&self) -> Option<DownloadProgress> {
        let run = self.running()?;
        Some(progress_of(self.file.clone(), &run))
    }

    /// Pauses the download: its owners are let go and the node stops serving its
    /// partial file, but the download stays in place, holding what it has verified;
    /// [`resume`](Self::resume) takes it up again with no piece checked twice. `wait`
    /// waits through a pause. Returns `false` if the download has already ended.
    pub fn pause(&self) -> bool {
        self.steer(true)
    }

    /// Resumes a paused download. Returns `false` if it has already ended.
    pub fn resume(&self) -> bool {
        self.steer(false)
    }

    /// This download's entry in the node's table, while it runs. A later download of the
    /// same file has an entry of its own, which this handle does not touch.
    fn running(&self) -> Option<Arc<Running>> {
        let ctx = self.ctx.upgrade()?;
        let run = ctx.downloading.lock().get(&self.file).cloned()?;
        (run.id == self.id).then_some(run)
    }

    fn steer(&self, paused: bool) -> bool {
        let Some(run) = self.running() else {
            return false;
        };
        run.paused.store(paused, Ordering::SeqCst);
        // Full: a wake is already pending, and it reads the latest wish.
        let _ = run.steer.0.try_send(());
        true
    }

    /// Stops the download: what is verified stays in `NAME.part` with its resume record,
    /// this node stops serving it, and a later download of the file resumes from it.
    /// Returns at once; [`wait`](Self::wait) then returns [`Error::Cancelled`] (or the
    /// result, if the download ended first).
    pub fn cancel(&self) {
        // Full: already asked. Disconnected: already over.
        let _ = self.cancel.try_send(());
    }

    fn again(&self, done: &std::result::Result<DownloadReport, String>) -> Result<DownloadReport> {
        done.clone().map_err(|error| Error::DownloadFailed {
            file: self.file.clone(),
            error,
        })
    }
}

/// One download while it runs, for [`Status`](super::Status), and how its handle steers it.
#[derive(Debug)]
pub(crate) struct Running {
    /// The download's id: a handle acts only on the entry with its own.
    pub(crate) id: DownloadId,
    pub(crate) started: Instant,
    /// Whether the handle wants the download paused; the coordinator follows it when
    /// woken on `steer`.
    pub(crate) paused: AtomicBool,
    /// Wakes the coordinator to look at `paused`: capacity one, a pending wake suffices.
    pub(crate) steer: (Sender<()>, Receiver<()>),
    /// Pieces verified from an earlier run, set once the `.part` is opened.
    pub(crate) resumed: AtomicU32,
    /// The file's size and piece count, once known, and the pieces verified so far
    /// (resumed ones included), kept by the download.
    pub(crate) size: AtomicU64,
    pub(crate) pieces: AtomicU32,
    pub(crate) verified: AtomicU32,
    /// Verified bytes received this run, added by the download's coordinator.
    pub(crate) fetched: AtomicU64,
    /// Owners being fetched from, as the coordinator last counted them.
    pub(crate) owners: std::sync::atomic::AtomicUsize,
    /// Piece bytes asked of owners and not yet received, as the coordinator last counted.
    pub(crate) in_flight: AtomicU64,
    /// Peers downloading the same file that connected to this node holding pieces of
    /// it, told by the serving side ([`MET_QUEUED`] at most waiting).
    pub(crate) met: (Sender<OwnerInfo>, Receiver<OwnerInfo>),
}

/// Peers met and not yet taken in by their download, at most: more are dropped (the
/// tracker lists them in time anyway).
pub(crate) const MET_QUEUED: usize = 64;

impl Running {
    pub(crate) fn new(id: DownloadId) -> Self {
        Self {
            id,
            started: Instant::now(),
            paused: AtomicBool::new(false),
            steer: bounded(1),
            resumed: AtomicU32::new(0),
            size: AtomicU64::new(0),
            pieces: AtomicU32::new(0),
            verified: AtomicU32::new(0),
            fetched: AtomicU64::new(0),
            owners: std::sync::atomic::AtomicUsize::new(0),
            in_flight: AtomicU64::new(0),
            met: bounded(MET_QUEUED),
        }
    }
}

/// How far the download of `file` is.
pub(crate) fn progress_of(file: String, run: &Running) -> DownloadProgress {
    DownloadProgress {
        download: run.id,
        file,
        size: run.size.load(Ordering::Relaxed),
        pieces: run.pieces.load(Ordering::Relaxed),
        verified: run.verified.load(Ordering::Relaxed),
        resumed: run.resumed.load(Ordering::Relaxed),
        fetched: run.fetched.load(Ordering::Relaxed),
        owners: run.owners.load(Ordering::Relaxed),
        elapsed: run.started.elapsed(),
        paused: run.paused.load(Ordering::Relaxed),
    }
}
