//! The download's one writing thread, `node-write`.
//!
//! Workers verify what they read and hand each piece's buffer here, with the piece it
//! holds; `node-write` writes it at its offset in the `.part`, tells the coordinator the
//! piece is done, and gives the buffer back for another piece. A file's writes take its
//! inode lock one at a time in the kernel anyway; when every worker wrote its own pieces,
//! four of them on two cores spent a tenth of the download's CPU spinning on that lock
//! (BENCHMARKS.md, "Sixteenth session"). One writer never waits on another, and a worker
//! goes back to its socket while its piece is written.
//!
//! What it holds is bounded: at most [`QUEUED`] pieces wait for the writer, and a worker
//! makes a new buffer only when none is back in the pool, that is when at most
//! `owners + QUEUED + 1` exist (each worker's, those queued, the one being written): a
//! download never holds more than `owners + QUEUED + 2`. The pool has room for that many,
//! so a buffer made is kept and used again, never freed and made anew (a pool of five,
//! too small for four owners, let 248 buffers be made and freed in a 1 GiB download, and
//! the downloader's peak memory grew by 6 MiB). A worker whose piece finds the queue full
//! waits for room, and its owner's data waits in the socket: a slow disk slows the
//! download, it never grows it. A failed write ends the download with the error
//! ([`Report::WriteFailed`]); pieces still queued then are not done, and a resume fetches
//! them again.

use std::os::unix::fs::FileExt;
use std::thread::{self, Scope, ScopedJoinHandle};

use crossbeam_channel::{Receiver, Sender, bounded, select};

use crate::error::{Error, Result};
use crate::manifest::Manifest;

use super::super::part::Part;
use super::worker::Report;

/// Pieces that may wait for the writer.
pub(super) const QUEUED: usize = 4;

/// A verified piece for the `.part`: `data[..len]` is piece `piece`, fetched by `slot`.
pub(super) struct Write {
    pub slot: usize,
    pub piece: u32,
    pub len: u32,
    pub data: Vec<u8>,
}

/// The workers' end: where verified pieces go, and where buffers come back.
pub(super) struct Writes {
    pieces: Sender<Write>,
    buffers: Receiver<Vec<u8>>,
    /// The length of a fresh buffer: the file's largest piece.
    buffer_len: usize,
}

/// The writer's end, until [`spawn`] starts the thread.
pub(super) struct Queue {
    pieces: Receiver<Write>,
    buffers: Sender<Vec<u8>>,
}

/// Makes the two ends for a file whose largest piece is `buffer_len` bytes, fetched by at
/// most `workers` workers at once.
pub(super) fn channel(buffer_len: usize, workers: usize) -> (Writes, Queue) {
    let (pieces_tx, pieces) = bounded(QUEUED);
    let (buffers, buffers_rx) = bounded(workers + QUEUED + 2);
    (
        Writes {
            pieces: pieces_tx,
            buffers: buffers_rx,
            buffer_len,
        },
        Queue { pieces, buffers },
    )
}

impl Writes {
    /// A buffer for the next piece: one the writer is done with, or a new one.
    pub fn buffer(&self) -> Vec<u8> {
        self.buffers
            .try_recv()
            .unwrap_or_else(|_| vec![0; self.buffer_len])
    }

    /// Queues `write`, waiting while the queue is full. Returns `false` if the writer has
    /// stopped (the download is ending).
    pub fn send(&self, write: Write) -> bool {
        self.pieces.send(write).is_ok()
    }
}

/// The running writer. Dropping it stops the thread, which is joined when the download's
/// scope ends; pieces still queued are not written.
pub(super) struct Writer<'s> {
    _stop: Sender<()>,
    _handle: ScopedJoinHandle<'s, ()>,
}

/// Starts `node-write` for `part`, reporting to the coordinator on `reports`.
pub(super) fn spawn<'s, 'd: 's>(
    s: &'s Scope<'s, '_>,
    queue: Queue,
    part: &'d Part,
    manifest: &'d Manifest,
    reports: Sender<Report>,
) -> Result<Writer<'s>> {
    let (stop_tx, stop) = bounded::<()>(0);
    let handle = thread::Builder::new()
        .name("node-write".into())
        .spawn_scoped(s, move || {
            write_all(&queue, part, manifest, &reports, &stop)
        })
        .map_err(|source| Error::Spawn {
            name: "node-write",
            source,
        })?;
    Ok(Writer {
        _stop: stop_tx,
        _handle: handle,
    })
}

/// Writes queued pieces until told to stop or a write fails.
fn write_all(
    queue: &Queue,
    part: &Part,
    manifest: &Manifest,
    reports: &Sender<Report>,
    stop: &Receiver<()>,
) {
    loop {
        let write = select! {
            recv(queue.pieces) -> w => match w {
                Ok(w) => w,
                Err(_) => return,
            },
            recv(stop) -> _ => return,
        };
        let Write {
            slot,
            piece,
            len,
            data,
        } = write;
        let offset = manifest
            .geometry()
            .piece_range(piece)
            .map_or(0, |r| r.start);
        let bytes = data.get(..len as usize).unwrap_or(&data);
        let report = match part.file().write_all_at(bytes, offset) {
            Ok(()) => Report::Piece {
                slot,
                piece,
                bytes: len,
                written: true,
            },
            Err(source) => Report::WriteFailed(Error::File {
                op: "writing",
                path: part.path().to_owned(),
                source,
            }),
        };
        let failed = matches!(report, Report::WriteFailed(_));
        let _ = queue.buffers.try_send(data);
        // The coordinator reads reports until it stops, and then drops its end.
        select! {
            send(reports, report) -> sent => if sent.is_err() { return },
            recv(stop) -> _ => return,
        }
        if failed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_and_are_bounded() {
        let (writes, queue) = channel(16, 2);
        let first = writes.buffer();
        assert_eq!(first.len(), 16);
        // More back than can exist (a worker winding down held one): the extra are dropped.
        for _ in 0..2 + QUEUED + 5 {
            let _ = queue.buffers.try_send(vec![7; 16]);
        }
        let mut reused = 0;
        while let Ok(b) = writes.buffers.try_recv() {
            assert_eq!(b, vec![7; 16], "a buffer back is used as it is");
            reused += 1;
        }
        assert_eq!(reused, 2 + QUEUED + 2);
        // An empty pool makes a new buffer.
        assert_eq!(writes.buffer(), vec![0; 16]);
    }

    #[test]
    fn a_worker_is_told_when_the_writer_is_gone() {
        let (writes, queue) = channel(4, 1);
        drop(queue);
        let write = Write {
            slot: 0,
            piece: 0,
            len: 4,
            data: vec![0; 4],
        };
        assert!(!writes.send(write));
    }
}
