//! One download, end to end.
//!
//! 1. Ask the tracker for owners (a random subset of the best) and skip this node itself.
//! 2. Ask owners in turn for the size information until one gives a piece list whose
//!    content id matches the tracker's (an owner cannot make up a file).
//! 3. Open the `.part` ([`Part`]): resume one this node made, verifying every piece again,
//!    or create one; anything else in the way is left alone.
//! 4. Serve the verified pieces while downloading, and run the [`coordinator`]: it alone owns
//!    the schedule, the owners and the resume record; one [`worker`] per owner does the
//!    connection I/O, verifying every piece before the download's one [`writer`] writes it
//!    at its offset.
//! 5. The moment every piece is verified: publish (hard-link `.part` to the name, which fails
//!    rather than overwrite), serve the file complete, announce it and report; workers still
//!    connecting are told to stop and are joined after, so they never hold up a finish.
//!
//! Memory is one piece buffer and two small socket buffers per owner, and at most
//! [`writer::QUEUED`] + 2 piece buffers more for the writer, whatever the file size.

mod coordinator;
mod owners;
mod pace;
mod worker;
mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, bounded, select};

use crate::error::{Error, Result, report};
use crate::manifest::Manifest;
use crate::messages::ContentId;

use super::part::{Opened, Part, Publish};
use super::peer::PeerConn;
use super::schedule::Bitfield;
use super::store::SharedFile;
use super::{Ctx, DownloadId, DownloadReport, Event};
use coordinator::{Coordinator, Lookup};
use owners::OwnerBook;
use worker::{Job, Report, Written};

/// Reports queued from workers to the coordinator.
const REPORTS_QUEUED: usize = 1024;

/// Downloads `file` into the node's folder, and hands the result to `deliver` as soon as it
/// is known (before threads still winding down are joined).
///
/// Errors: [`Error::AlreadyExists`] if the file is there, tracker errors,
/// [`Error::NoOwners`], [`Error::OwnersExhausted`] if every owner failed, [`Error::NotOurs`]
/// if a `.part` in the way is not this node's, [`Error::File`] for local I/O, and
/// [`Error::Shutdown`] if the node stopped first.
pub(super) fn run(
    ctx: &Ctx,
    id: DownloadId,
    file: &str,
    pin: Option<ContentId>,
    cancelled: &Receiver<()>,
    deliver: impl FnOnce(Result<DownloadReport>),
) {
    let started = Instant::now();
    let prepared = prepare(ctx, id, file, pin, cancelled);
    let (listed_owners, manifest, first, book) = match prepared {
        Ok(p) => p,
        Err(e) => return deliver(Err(e)),
    };
    let Opened {
        part,
        done,
        record_lied,
    } = match Part::open(ctx.store.dir(), file, &manifest) {
        Ok(o) => o,
        Err(e) => return deliver(Err(e)),
    };
    if record_lied > 0 {
        ctx.emit(Event::RecordFailed {
            download: id,
            file: file.into(),
            error: format!(
                "{record_lied} pieces {} listed as verified did not verify; fetching them again",
                part.record_path().display()
            ),
        });
    }
    let resumed = done.count();
    if let Some(run) = ctx.downloading.lock().get(file) {
        use std::sync::atomic::Ordering::Relaxed;
        run.resumed.store(resumed, Relaxed);
        run.verified.store(resumed, Relaxed);
        run.size.store(manifest.size(), Relaxed);
        run.pieces.store(manifest.piece_count(), Relaxed);
    }
    // Serve what we hold while we download; withdrawn if the download fails, replaced by
    // the finished file if it succeeds.
    let partial =
        ctx.store
            .insert_partial(file, part.path().to_owned(), manifest.clone(), done.clone());
    let withdraw = Withdraw {
        ctx,
        file: partial.clone(),
    };
    ctx.emit(Event::DownloadStarted {
        download: id,
        file: file.into(),
        size: manifest.size(),
        pieces: manifest.piece_count(),
        resumed,
        owners: listed_owners,
    });
    let (reports_tx, reports) = bounded(REPORTS_QUEUED);
    let largest = manifest.geometry().piece_len(0).unwrap_or(0) as usize;
    let most_workers = ctx.config.max_owners + coordinator::MET_EXTRA;
    let (writes, queue) = writer::channel(largest, most_workers);
    let job = Job {
        ctx,
        file,
        manifest: &manifest,
        part: &part,
        id,
        written: Written::new(&done),
        writes,
        reports: reports_tx,
    };
    let (lookups_tx, lookups) = bounded::<Lookup>(1);
    thread::scope(|s| {
        let lookup = thread::Builder::new()
            .name("node-lookup".into())
            .spawn_scoped(s, || {
                look_up(ctx, file, manifest.content(), &lookups, &job.reports);
            });
        if let Err(source) = lookup {
            return deliver(Err(Error::Spawn {
                name: "node-lookup",
                source,
            }));
        }
        // Dropped at the end of the scope's closure, before the scope joins it.
        let _writer = match writer::spawn(s, queue, &part, &manifest, job.reports.clone()) {
            Ok(w) => w,
            Err(e) => return deliver(Err(e)),
        };
        let slots = ctx.config.max_owners.min(book.candidates.len()).max(1);
        let mut coordinator = Coordinator::new(
            &job,
            s,
            reports,
            cancelled,
            lookups_tx,
            &done,
            book,
            partial.clone(),
            slots,
        );
        let result = coordinator.run(first);
        // Publishing first: threads still winding down are joined when the scope ends.
        let report = result.and_then(|()| {
            let received = std::mem::take(&mut coordinator.received);
            let failed = std::mem::take(&mut coordinator.book.reasons);
            drop(coordinator);
            finish(
                ctx, id, file, &manifest, &part, started, resumed, received, failed,
            )
        });
        drop(withdraw);
        deliver(report);
    });
}

type Prepared<'a> = (
    usize,
    Manifest,
    Option<(SocketAddr, PeerConn<'a>, Bitfield)>,
    OwnerBook,
);

/// Asks the tracker for owners and one of them for the piece list.
fn prepare<'a>(
    ctx: &'a Ctx,
    id: DownloadId,
    file: &str,
    pin: Option<ContentId>,
    cancelled: &Receiver<()>,
) -> Result<Prepared<'a>> {
    let final_path = ctx.store.path_of(file)?;
    if final_path.symlink_metadata().is_ok() {
        // A publish cut short by a kill leaves the `.part` as a second name of the file.
        Part::clear_published(ctx.store.dir(), file);
        return Err(Error::AlreadyExists {
            file: file.into(),
            dir: ctx.store.dir().into(),
        });
    }
    let listed = ctx.trackers.need_content(file, numwant(ctx), pin)?;
    ctx.learn_interval(listed.interval);
    if listed.contents > 1 && pin.is_none() {
        ctx.emit(Event::SeveralContents {
            download: id,
            file: file.into(),
            chosen: listed.content,
            contents: listed.contents,
        });
    }
    let mut book = OwnerBook::new(ctx, listed.owners);
    if book.candidates.is_empty() {
        return Err(Error::NoOwners { file: file.into() });
    }
    let count = book.candidates.len();
    let (manifest, first) = fetch_manifest(ctx, id, file, listed.content, &mut book, cancelled)?;
    Ok((count, manifest, Some(first), book))
}

/// How many owners to ask the tracker for: more than a download uses at once, so it has
/// others to turn to.
fn numwant(ctx: &Ctx) -> u16 {
    u16::try_from(ctx.config.max_owners.saturating_mul(4).max(32)).unwrap_or(u16::MAX)
}

/// Publishes the complete `.part`, serves the file and announces it.
#[allow(clippy::too_many_arguments)]
fn finish(
    ctx: &Ctx,
    id: DownloadId,
    file: &str,
    manifest: &Manifest,
    part: &Part,
    started: Instant,
    resumed: u32,
    received: std::collections::HashMap<SocketAddr, u64>,
    failed: Vec<(SocketAddr, String)>,
) -> Result<DownloadReport> {
    let final_path = ctx.store.path_of(file)?;
    part.publish(&final_path).map_err(|e| match e {
        Publish::Exists => Error::AlreadyExists {
            file: file.into(),
            dir: ctx.store.dir().into(),
        },
        Publish::Failed(e) => e,
    })?;
    let shared = ctx
        .store
        .insert(file, final_path.clone(), manifest.clone())?;
    ctx.counters.files_received.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = ctx.announce(&ctx.trackers, &shared) {
        ctx.emit(Event::TrackerError { error: report(&e) });
    }
    let mut from: Vec<(SocketAddr, u64)> = received.into_iter().collect();
    from.sort();
    Ok(DownloadReport {
        download: id,
        file: file.into(),
        path: final_path,
        size: manifest.size(),
        content: manifest.content(),
        pieces: manifest.piece_count(),
        resumed,
        elapsed: started.elapsed(),
        from,
        failed,
    })
}

/// The `node-lookup` thread: asks the tracker for the coordinator, which never blocks on
/// it. Short retries, so a dead tracker costs a download nothing but fresh owners.
fn look_up(
    ctx: &Ctx,
    file: &str,
    content: ContentId,
    lookups: &Receiver<Lookup>,
    reports: &crossbeam_channel::Sender<Report>,
) {
    let quick = ctx
        .trackers
        .clone()
        .with_retries(2, Duration::from_millis(250));
    for lookup in lookups {
        match lookup {
            Lookup::Need => {
                // Owners of this content only, whatever else is shared under the name.
                let listed = quick.need_content(file, numwant(ctx), Some(content));
                if reports.send(Report::Listed(listed)).is_err() {
                    return;
                }
            }
            Lookup::Announce(partial) => {
                if let Err(e) = ctx.announce(&quick, &partial) {
                    ctx.emit(Event::TrackerError { error: report(&e) });
                }
            }
        }
    }
}

/// A piece list with the connection it came on: the owner's address, the open
/// connection, and what that owner holds.
type Found<'a> = (Manifest, (SocketAddr, PeerConn<'a>, Bitfield));

/// Asks owners in order for the piece list until one matches the tracker's content id.
/// Returns it with the connection it came on, which the first round reuses.
///
/// An owner that failed for a reason that may pass (refused, reset, timed out: a node
/// short of descriptors, or restarting) is asked again after the owner book's backoff
/// (1 s, doubling), until the book gives up on it; the wait ends at once on shutdown.
fn fetch_manifest<'a>(
    ctx: &'a Ctx,
    id: DownloadId,
    file: &str,
    content: ContentId,
    owners: &mut OwnerBook,
    cancelled: &Receiver<()>,
) -> Result<Found<'a>> {
    loop {
        if cancelled.try_recv().is_ok() {
            return Err(Error::Cancelled { file: file.into() });
        }
        if let Some(found) = ask_for_manifest(ctx, id, file, content, owners)? {
            return Ok(found);
        }
        let Some(at) = owners.next_retry(Instant::now()) else {
            return Err(Error::OwnersExhausted {
                file: file.into(),
                missing: 0,
                total: 0,
                last: owners.last_reason(),
            });
        };
        select! {
            recv(ctx.stop) -> _ => return Err(Error::Shutdown),
            recv(cancelled) -> _ => return Err(Error::Cancelled { file: file.into() }),
            default(at.saturating_duration_since(Instant::now())) => {}
        }
    }
}

/// One round of [`fetch_manifest`]: every owner that may be asked now, in order.
fn ask_for_manifest<'a>(
    ctx: &'a Ctx,
    id: DownloadId,
    file: &str,
    content: ContentId,
    owners: &mut OwnerBook,
) -> Result<Option<Found<'a>>> {
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
            Ok(found) => return Ok(Some(found)),
            Err(Error::Shutdown) => return Err(Error::Shutdown),
            Err(e) => {
                owners.failed(addr, &e, Instant::now());
                ctx.emit(Event::OwnerFailed {
                    download: id,
                    file: file.into(),
                    node: owners.name_of(addr),
                    owner: addr,
                    error: report(&e),
                });
            }
        }
    }
    Ok(None)
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
