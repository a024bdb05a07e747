//! One owner's connection, as the download's coordinator drives it.
//!
//! A worker is two threads and holds none of the download's state. `node-fetch` connects
//! (or takes the connection the piece list came on), asks for the owner's holdings, tells
//! the owner this node's, then reads: each piece into a buffer, verified and handed to the
//! download's [`writer`](super::writer), and each `Have`. `node-ask` writes what the
//! coordinator sends it: piece requests and this node's own `Have`s. Both report to the
//! coordinator on one bounded channel. Dropping the [`Worker`]'s sender stops it: `node-ask` breaks the
//! connection, and `node-fetch`, blocked on it, stops too.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::{self, Scope, ScopedJoinHandle};

use crossbeam_channel::{Receiver, Sender, bounded, select};
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::manifest::Manifest;

use super::super::metrics::bump;
use super::super::part::Part;
use super::super::peer::{Incoming, PeerConn, PeerReader, PeerWriter};
use super::super::schedule::Bitfield;
use super::super::{Ctx, DownloadId, Event};
use super::writer::{Write, Writes};
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
    /// A piece arrived and verified. `written`: this copy was written to the `.part` (the
    /// writer reports it then); otherwise another owner's copy of it was or will be (an
    /// endgame duplicate), and this one is only counted.
    Piece {
        slot: usize,
        piece: u32,
        bytes: u32,
        written: bool,
    },
    /// The worker has stopped; the error says why (`None`: told to stop).
    Stopped { slot: usize, error: Option<Error> },
    /// The writer could not write a piece to the `.part`: the download ends with this.
    WriteFailed(Error),
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
    /// The download's id, for its events.
    pub id: DownloadId,
    pub file: &'d str,
    pub manifest: &'d Manifest,
    /// The `.part`, for the coordinator's resume record.
    pub part: &'d Part,
    /// The pieces written to (or already in) the `.part`, or handed to the writer.
    pub written: Written,
    /// Where verified pieces go to be written.
    pub writes: Writes,
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
        // Requests written and not yet answered, kept by both threads.
        let owed = Mutex::new(Owed::default());
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
    fn read(&self, slot: usize, mut reader: PeerReader<'_>, owed: &Mutex<Owed>) -> Result<()> {
        let content = self.manifest.content();
        let geometry = self.manifest.geometry();
        let mut buf = self.writes.buffer();
        loop {
            match reader.next(content)? {
                Incoming::Quiet => {
                    let outstanding = owed.lock().asked.len();
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
                    owed.lock().offered(&pieces);
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
                    owed.lock().withdrawn(&pieces);
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
                    owed.lock().asked.remove(&piece);
                    if !self.manifest.verify(piece, data) {
                        bump(&self.ctx.counters.pieces_rejected, 1);
                        self.ctx.emit(Event::PieceRejected {
                            download: self.id,
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
                    if self.written.claim(piece) {
                        // The writer reports it once it is in the `.part`.
                        let data = std::mem::replace(&mut buf, self.writes.buffer());
                        let write = Write {
                            slot,
                            piece,
                            len,
                            data,
                        };
                        if !self.writes.send(write) {
                            return Ok(());
                        }
                        continue;
                    }
                    let report = Report::Piece {
                        slot,
                        piece,
                        bytes: len,
                        written: false,
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

/// The pieces in the `.part`: each is claimed by the one worker whose copy is written, so
/// a second verified copy (the endgame asks two owners for a piece) is never written. Nothing
/// then writes to the file once its last piece is in: it may be published by then, and a
/// late write would change it under the node that serves it, or under its user.
pub(super) struct Written {
    words: Vec<AtomicU64>,
    pieces: u32,
}

impl Written {
    /// Starts from the pieces already verified in the `.part` (`done`).
    pub fn new(done: &Bitfield) -> Self {
        let words = (0..done.len().div_ceil(64))
            .map(|w| {
                let bits = (0..64)
                    .filter(|b| done.get(w * 64 + b))
                    .fold(0u64, |acc, b| acc | 1 << b);
                AtomicU64::new(bits)
            })
            .collect();
        Self {
            words,
            pieces: done.len(),
        }
    }

    /// Claims `piece` for writing: `true` for the first claim of a piece not yet in the
    /// `.part` (and in range), `false` after that.
    pub fn claim(&self, piece: u32) -> bool {
        let Some(word) = self.words.get(piece as usize / 64) else {
            return false;
        };
        if piece >= self.pieces {
            return false;
        }
        let bit = 1u64 << (piece % 64);
        word.fetch_or(bit, Ordering::AcqRel) & bit == 0
    }
}

/// The requests one connection owes an answer for, kept by its two threads: the asker adds
/// each it writes, the reader removes each answered or withdrawn. A seed that ends a
/// downloader's turn withdraws its unsent offers and drops the requests for them, so a
/// count of requests written would stay above zero for ever, and the seed, silent while
/// it serves others, would be taken for stalled and dropped.
#[derive(Debug, Default)]
struct Owed {
    /// Requested and not yet answered or withdrawn.
    asked: HashSet<u32>,
    /// Withdrawn by the owner and not offered again since: requests for them go unanswered.
    withdrawn: HashSet<u32>,
}

impl Owed {
    /// Records a request for `piece` about to be written; `false` if the owner withdrew
    /// it, and the request should not be written.
    fn ask(&mut self, piece: u32) -> bool {
        if self.withdrawn.contains(&piece) {
            return false;
        }
        self.asked.insert(piece);
        true
    }

    /// The owner offers (or holds) `pieces` again.
    fn offered(&mut self, pieces: &[u32]) {
        if !self.withdrawn.is_empty() {
            for p in pieces {
                self.withdrawn.remove(p);
            }
        }
    }

    /// The owner withdrew `pieces`: requests for them will not be answered.
    fn withdrawn(&mut self, pieces: &[u32]) {
        for p in pieces {
            self.asked.remove(p);
            self.withdrawn.insert(*p);
        }
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
    owed: &Mutex<Owed>,
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
                    // A piece withdrawn since the coordinator asked is not requested: the
                    // owner would drop the request, and the coordinator hears of the
                    // withdrawal and asks elsewhere.
                    if owed.lock().ask(piece) {
                        let len = geometry.piece_len(piece).unwrap_or(0);
                        writer.request(content, piece, len)?;
                    }
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

#[cfg(test)]
mod tests {
    use super::super::super::schedule::Bitfield;
    use super::{Owed, Written};

    /// Of two verified copies of a piece, only the first is written; pieces already in the
    /// `.part` when the download (re)starts are never written again.
    #[test]
    fn each_piece_is_written_once() {
        let mut done = Bitfield::empty(130);
        done.set(3);
        done.set(129);
        let written = Written::new(&done);
        assert!(
            !written.claim(3) && !written.claim(129),
            "already in the .part"
        );
        assert!(written.claim(64));
        assert!(!written.claim(64), "a second copy is not written");
        assert!(
            written.claim(128) && !written.claim(130),
            "past the end: never"
        );
    }

    /// A seed's `Withdraw` cancels the requests for those pieces: nothing is owed, so the
    /// seed's silence while it serves others is not taken for a stall.
    #[test]
    fn withdrawn_requests_are_owed_no_longer() {
        let mut owed = Owed::default();
        assert!(owed.ask(1) && owed.ask(2) && owed.ask(3));
        owed.withdrawn(&[2, 3, 9]);
        assert_eq!(owed.asked.len(), 1, "only piece 1 is still owed");
        owed.asked.remove(&1);
        assert!(owed.asked.is_empty());
    }

    /// An ask that was queued when the `Withdraw` arrived is not written; a piece offered
    /// again may be asked for again.
    #[test]
    fn a_withdrawn_piece_is_asked_only_once_offered_again() {
        let mut owed = Owed::default();
        owed.withdrawn(&[4]);
        assert!(!owed.ask(4));
        assert!(owed.asked.is_empty());
        owed.offered(&[4, 5]);
        assert!(owed.ask(4));
        assert_eq!(owed.asked.len(), 1);
    }
}
