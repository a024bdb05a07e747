//! One owner's connection, as the download's coordinator drives it.
//!
//! A worker is two threads and holds none of the download's state. `node-fetch` connects
//! (or takes the connection the piece list came on), asks for the owner's holdings, tells
//! the owner this node's, then reads: each piece into its one buffer, verified and written
//! at its offset in the `.part`, and each `Have`. `node-ask` writes what the coordinator
//! sends it: piece requests and this node's own `Have`s. Both report to the coordinator on
//! one bounded channel. Dropping the [`Worker`]'s sender stops it: `node-ask` breaks the
//! connection, and `node-fetch`, blocked on it, stops too.

use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::{self, Scope, ScopedJoinHandle};

use crossbeam_channel::{Receiver, Sender, bounded, select};

use crate::error::{Error, Result};
use crate::manifest::Manifest;

use super::super::metrics::bump;
use super::super::part::Part;
use super::super::peer::{Incoming, PeerConn, PeerReader, PeerWriter};
use super::super::schedule::Bitfield;
use super::super::{Ctx, Event};
use crate::messages::ContentId;
use crate::tracker::Owners as Listed;

/// Slices a piece is read in under a download limit, each waited for in turn.
const LIMITED_QUANTUM: usize = 16 * 1024;

/// What a worker tells the coordinator. Each carries the worker's slot.
#[derive(Debug)]
pub(super) enum Report {
    /// Connected: the owner holds (or, for a file it holds complete, offers) `has`.
    Holdings { slot: usize, has: Bitfield },
    /// The owner holds (or offers) these pieces too.
    Has { slot: usize, pieces: Vec<u32> },
    /// The owner choked (`true`: ask nothing new) or unchoked this connection.
    Choked { slot: usize, choked: bool },
    /// The owner no longer offers these pieces, nor answers requests for them.
    Withdrawn { slot: usize, pieces: Vec<u32> },
    /// A piece arrived, verified, and is written.
    Piece { slot: usize, piece: u32, bytes: u32 },
    /// The worker has stopped; the error says why (`None`: told to stop).
    Stopped { slot: usize, error: Option<Error> },
    /// The tracker answered a `node-lookup` request for owners (not from a worker).
    Listed(Result<Listed>),
}

/// What the coordinator tells a worker.
#[derive(Debug)]
pub(super) enum Ask {
    /// Request a whole piece.
    Piece(u32),
    /// Tell the owner this node now holds these pieces.
    Have(Vec<u32>),
}

/// A running worker, as the coordinator holds it.
pub(super) struct Worker<'s> {
    pub addr: SocketAddr,
    pub asks: Sender<Ask>,
    /// Joined when the download's scope ends.
    _handle: ScopedJoinHandle<'s, ()>,
}

/// What every worker of one download shares, read-only.
pub(super) struct Job<'d> {
    pub ctx: &'d Ctx,
    pub file: &'d str,
    pub manifest: &'d Manifest,
    pub part: &'d Part,
    pub reports: Sender<Report>,
}

/// Most asks queued for one worker: a worker this far behind is not reading its channel.
pub(super) const ASKS_QUEUED: usize = 256;

impl<'d> Job<'d> {
    /// Starts a worker for the owner at `addr` in slot `slot`, on `conn` if the connection is
    /// already open. `mine` is what this node holds now; later pieces come as [`Ask::Have`].
    pub fn spawn<'s>(
        &'s self,
        s: &'s Scope<'s, '_>,
        slot: usize,
        addr: SocketAddr,
        conn: Option<(PeerConn<'d>, Bitfield)>,
        mine: Bitfield,
    ) -> Result<Worker<'s>>
    where
        'd: 's,
    {
        let (asks, asked) = bounded(ASKS_QUEUED);
        let handle = thread::Builder::new()
            .name("node-fetch".into())
            .spawn_scoped(s, move || {
                let error = self.fetch(slot, addr, conn, mine, &asked).err();
                let _ = self.reports.send(Report::Stopped { slot, error });
            })
            .map_err(|source| Error::Spawn {
                name: "node-fetch",
                source,
            })?;
        Ok(Worker {
            addr,
            asks,
            _handle: handle,
        })
    }

    fn fetch(
        &self,
        slot: usize,
        addr: SocketAddr,
        conn: Option<(PeerConn<'d>, Bitfield)>,
        mine: Bitfield,
        asked: &Receiver<Ask>,
    ) -> Result<()> {
        let content = self.manifest.content();
        let (conn, has) = match conn {
            Some(c) => c,
            None => {
                let mut conn = PeerConn::connect(self.ctx, addr)?;
                let (info, has) = conn.size_info(self.file, false)?;
                if info.content != content {
                    return Err(Error::Peer {
                        addr,
                        reason: "holds other content".into(),
                    });
                }
                (conn, has)
            }
        };
        let (reader, mut writer) = conn.split();
        writer.holdings(content, &mine)?;
        writer.flush()?;
        if self.reports.send(Report::Holdings { slot, has }).is_err() {
            return Ok(());
        }
        // Requests written and not yet answered, counted by both threads.
        let owed = AtomicUsize::new(0);
        // Dropped when the reading half ends, so the asking half ends too.
        let (quit_tx, quit) = bounded::<()>(0);
        thread::scope(|s| {
            let asker = thread::Builder::new()
                .name("node-ask".into())
                .spawn_scoped(s, || {
                    let result = ask(&mut writer, content, self.manifest, asked, &quit, &owed);
                    writer.close();
                    result
                })
                .map_err(|source| Error::Spawn {
                    name: "node-ask",
                    source,
                });
            let Ok(asker) = asker else {
                return asker.map(|_| ());
            };
            let read = self.read(slot, reader, &owed);
            drop(quit_tx);
            let wrote = asker
                .join()
                .unwrap_or_else(|_| Err(Error::ThreadPanicked("node-ask".into())));
            match (read, wrote) {
                // Told to stop: the asker broke the connection on purpose.
                (_, Ok(Stop::Told)) => Ok(()),
                (Err(e), _) | (Ok(()), Err(e)) => Err(e),
                (Ok(()), Ok(Stop::Broken)) => Ok(()),
            }
        })
    }

    /// Reads pieces and haves until the connection ends.
    fn read(&self, slot: usize, mut reader: PeerReader<'_>, owed: &AtomicUsize) -> Result<()> {
        let content = self.manifest.content();
        let geometry = self.manifest.geometry();
        let mut buf = vec![0u8; geometry.piece_len(0).unwrap_or(0) as usize];
        loop {
            match reader.next(content)? {
                Incoming::Quiet => {
                    let outstanding = owed.load(Ordering::Acquire);
                    if outstanding > 0 {
                        return Err(Error::PeerIo {
                            addr: reader.addr(),
                            op: "waiting for data",
                            source: std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                format!(
                                    "silent for {:?} with {outstanding} requests outstanding",
                                    self.ctx.config.peer_timeout
                                ),
                            ),
                        });
                    }
                }
                Incoming::Have(pieces) => {
                    if pieces.iter().any(|&p| p >= geometry.piece_count()) {
                        return Err(Error::Peer {
                            addr: reader.addr(),
                            reason: "have for a piece past the end".into(),
                        });
                    }
                    if self.reports.send(Report::Has { slot, pieces }).is_err() {
                        return Ok(());
                    }
                }
                Incoming::Choke(choked) => {
                    if self.reports.send(Report::Choked { slot, choked }).is_err() {
                        return Ok(());
                    }
                }
                Incoming::Withdraw(pieces) => {
                    if pieces.iter().any(|&p| p >= geometry.piece_count()) {
                        return Err(Error::Peer {
                            addr: reader.addr(),
                            reason: "withdraw for a piece past the end".into(),
                        });
                    }
                    if self
                        .reports
                        .send(Report::Withdrawn { slot, pieces })
                        .is_err()
                    {
                        return Ok(());
                    }
                }
                Incoming::Data { piece, len } => {
                    let addr = reader.addr();
                    if geometry.piece_len(piece) != Some(len) {
                        return Err(Error::Peer {
                            addr,
                            reason: format!("data for piece {piece} of the wrong length {len}"),
                        });
                    }
                    let data = &mut buf[..len as usize];
                    self.receive(&mut reader, data)?;
                    owed.fetch_sub(1, Ordering::AcqRel);
                    if !self.manifest.verify(piece, data) {
                        bump(&self.ctx.counters.pieces_rejected, 1);
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
                    self.part
                        .file()
                        .write_all_at(data, offset)
                        .map_err(|source| Error::File {
                            op: "writing",
                            path: self.part.path().to_owned(),
                            source,
                        })?;
                    let report = Report::Piece {
                        slot,
                        piece,
                        bytes: len,
                    };
                    if self.reports.send(report).is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Reads a piece's payload, in quanta waited for in turn under a download limit.
    fn receive(&self, reader: &mut PeerReader<'_>, data: &mut [u8]) -> Result<()> {
        let Some(limit) = self.ctx.download_limit.as_ref() else {
            return reader.payload(data);
        };
        for slice in data.chunks_mut(LIMITED_QUANTUM) {
            self.ctx.throttle(Some(limit), slice.len() as u64);
            reader.payload(slice)?;
        }
        Ok(())
    }
}

/// Why the asking half stopped without an error.
enum Stop {
    /// The coordinator dropped its sender.
    Told,
    /// The reading half ended first (the asker saw the connection break).
    Broken,
}

/// The `node-ask` thread: writes what the coordinator asks, flushing when it has nothing
/// more queued.
fn ask(
    writer: &mut PeerWriter,
    content: ContentId,
    manifest: &Manifest,
    asked: &Receiver<Ask>,
    quit: &Receiver<()>,
    owed: &AtomicUsize,
) -> Result<Stop> {
    let geometry = manifest.geometry();
    loop {
        let first = select! {
            recv(asked) -> ask => match ask {
                Ok(ask) => ask,
                Err(_) => return Ok(Stop::Told),
            },
            recv(quit) -> _ => return Ok(Stop::Broken),
        };
        let mut next = Some(first);
        while let Some(ask) = next {
            match ask {
                Ask::Piece(piece) => {
                    let len = geometry.piece_len(piece).unwrap_or(0);
                    owed.fetch_add(1, Ordering::AcqRel);
                    writer.request(content, piece, len)?;
                }
                Ask::Have(pieces) => writer.have(content, pieces)?,
            }
            next = asked.try_recv().ok();
        }
        if let Err(e) = writer.flush() {
            return match e {
                Error::PeerIo { .. } => Ok(Stop::Broken),
                other => Err(other),
            };
        }
    }
}
