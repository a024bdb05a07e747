//! The `node-control` thread: runs the handle's commands (share, download, search,
//! status), re-announces shared files every interval, and owns the download threads.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};

use super::handle::{Running, progress_of};
use super::store::SharedFile;
use super::{Ctx, DownloadId, DownloadReport, Event, ShareReport, Status, download, metrics};
use crate::error::{Error, Result, report};
use crate::messages::{ContentId, SearchHit};

/// What a `Share` command shares.
pub(super) enum Sharing {
    /// A plain file name in the node's folder.
    Name(String),
    /// A file anywhere, served in place under its base name.
    Path(PathBuf),
}

/// A command for the `node-control` thread; each carries the channel its answer goes to.
pub(super) enum Command {
    Share {
        what: Sharing,
        reply: Sender<Result<ShareReport>>,
    },
    Download {
        id: DownloadId,
        file: String,
        content: Option<ContentId>,
        cancelled: Receiver<()>,
        reply: Sender<Result<DownloadReport>>,
        /// Dropped once the reply is sent: the handle's `ended` disconnects.
        ended: Sender<()>,
    },
    Search {
        pattern: String,
        reply: Sender<Result<Vec<SearchHit>>>,
    },
    Status {
        reply: Sender<Status>,
    },
}

/// The `node-control` thread: runs commands, re-announces, owns the download threads.
pub(super) fn control_loop(
    ctx: &Arc<Ctx>,
    commands: &Receiver<Command>,
    stop: &Receiver<()>,
) -> Result<()> {
    let mut downloads: Vec<JoinHandle<()>> = Vec::new();
    let mut last_announce = Instant::now();
    loop {
        // Recomputed each pass: the tracker's first answer may shorten the interval.
        let next_announce = last_announce + ctx.announce_interval();
        let wait = next_announce.saturating_duration_since(Instant::now());
        select! {
            recv(stop) -> _ => break,
            recv(commands) -> cmd => match cmd {
                Ok(cmd) => run_command(ctx, cmd, &mut downloads),
                Err(_) => break,
            },
            default(wait) => {
                reannounce(ctx);
                last_announce = Instant::now();
            }
        }
        let (finished, running): (Vec<_>, Vec<_>) =
            downloads.into_iter().partition(|h| h.is_finished());
        for handle in finished {
            handle
                .join()
                .map_err(|_| Error::ThreadPanicked("node-download".into()))?;
        }
        downloads = running;
    }
    // Shutting down: transfers are being broken by `close`; tell the tracker, then wait.
    let quick = ctx
        .trackers
        .clone()
        .with_retries(2, Duration::from_millis(200));
    let _ = quick.exit(ctx.local_addr.port());
    for handle in downloads {
        handle
            .join()
            .map_err(|_| Error::ThreadPanicked("node-download".into()))?;
    }
    Ok(())
}

fn run_command(ctx: &Arc<Ctx>, cmd: Command, downloads: &mut Vec<JoinHandle<()>>) {
    match cmd {
        Command::Share { what, reply } => {
            let _ = reply.send(share(ctx, &what));
        }
        Command::Download {
            id,
            file,
            content,
            reply,
            cancelled,
            ended,
        } => {
            {
                let mut downloading = ctx.downloading.lock();
                if downloading.contains_key(&file) {
                    let _ = reply.send(Err(Error::AlreadyDownloading { file }));
                    return;
                }
                downloading.insert(file.clone(), Arc::new(Running::new(id)));
            }
            ctx.counters.download_started();
            let dl_ctx = Arc::clone(ctx);
            let name = file.clone();
            let spawned = thread::Builder::new()
                .name("node-download".into())
                .spawn(move || {
                    // Dropped when this thread ends, after the reply is sent.
                    let _ended = ended;
                    download::run(&dl_ctx, id, &name, content, &cancelled, |result| {
                        dl_ctx.downloading.lock().remove(&name);
                        dl_ctx.counters.download_ended(match &result {
                            Ok(_) => metrics::Ended::Finished,
                            Err(Error::Cancelled { .. }) => metrics::Ended::Cancelled,
                            Err(_) => metrics::Ended::Failed,
                        });
                        match &result {
                            Ok(report) => dl_ctx.emit(Event::DownloadFinished(report.clone())),
                            Err(e) => dl_ctx.emit(Event::DownloadFailed {
                                download: id,
                                file: name.clone(),
                                error: report(&e),
                            }),
                        }
                        let _ = reply.send(result);
                    });
                });
            match spawned {
                Ok(handle) => downloads.push(handle),
                Err(e) => {
                    ctx.counters.download_ended(metrics::Ended::Failed);
                    ctx.downloading.lock().remove(&file);
                    ctx.emit(Event::DownloadFailed {
                        download: id,
                        file,
                        error: report(&e),
                    });
                }
            }
        }
        Command::Search { pattern, reply } => {
            let _ = reply.send(ctx.trackers.search(&pattern));
        }
        Command::Status { reply } => {
            let _ = reply.send(status_of(ctx));
        }
    }
}

/// What the node shares and downloads, and its counters.
pub(super) fn status_of(ctx: &Ctx) -> Status {
    let shared = ctx
        .store
        .list()
        .iter()
        .filter(|f| !f.is_partial())
        .map(|f| share_report(f))
        .collect();
    let running: Vec<(String, Arc<Running>)> = ctx
        .downloading
        .lock()
        .iter()
        .map(|(f, r)| (f.clone(), Arc::clone(r)))
        .collect();
    let downloading = running
        .into_iter()
        .map(|(file, run)| progress_of(file, &run))
        .collect();
    let peers = ctx.conns.peers();
    Status {
        name: ctx.config.name.clone(),
        addr: ctx.local_addr,
        shared,
        downloading,
        peers,
        trackers: ctx.trackers.health(),
        counters: ctx.counters.counters(),
    }
}

fn share(ctx: &Ctx, what: &Sharing) -> Result<ShareReport> {
    let shared = match what {
        Sharing::Name(file) => ctx.store.share(file, ctx.config.piece_size)?,
        Sharing::Path(path) => ctx.store.share_path(path, ctx.config.piece_size)?,
    };
    let report = share_report(&shared);
    ctx.emit(Event::Shared {
        file: report.file.clone(),
        size: report.size,
        pieces: report.pieces,
    });
    ctx.announce(&ctx.trackers, &shared)?;
    Ok(report)
}

fn share_report(f: &SharedFile) -> ShareReport {
    ShareReport {
        file: f.name.clone(),
        size: f.manifest.size(),
        pieces: f.manifest.piece_count(),
        content: f.manifest.content(),
    }
}

/// Re-announces every shared file to the trackers of its set, with short retries so a
/// dead tracker cannot stall the node's commands for long. A silent tracker due to be
/// asked again is asked here, so one that came back is found within an interval.
fn reannounce(ctx: &Ctx) {
    let quick = ctx
        .trackers
        .clone()
        .with_retries(2, Duration::from_millis(250));
    for file in ctx.store.list() {
        if let Err(e) = ctx.announce(&quick, &file) {
            ctx.emit(Event::TrackerError { error: report(&e) });
            if ctx.trackers.health().iter().all(|t| !t.up) {
                // Every tracker is silent: the rest would only wait out the same tries.
                return;
            }
        }
    }
}
