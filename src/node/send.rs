//! The sending half of a connection this node serves: one `node-send` thread per
//! connection, which alone writes to the peer and owns what the connection knows.
//!
//! The reading half (`serve`) parses the peer's frames and hands them over as [`Job`]s on a
//! bounded channel; this thread answers them in order, and also speaks unasked:
//!
//! - for a file being downloaded here, it pushes `Have` for each piece verified since the
//!   peer was last told (the store's watcher signals it);
//! - for a file held complete, it offers pieces a few at a time during upload turns, as
//!   [`seeding`](super::seeding) describes, and the peer may ask only for pieces offered.
//!
//! With a rate limit, file data goes out in quanta of [`LIMITED_QUANTUM`], each waited for
//! in turn, so many connections share a capped uplink fairly and none falls silent long
//! enough to trip its peer's timeout.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, after, bounded, never, select};

use crate::error::{Error, Result};
use crate::messages::{ContentId, Message, check_file_name, write_frame};
use crate::session::LinkWriter;

use super::schedule::Bitfield;
use super::seeding::{OFFERS_OPEN, TURN_PIECES, TURN_TIME, pick_offers};
use super::store::SharedFile;
use super::{Ctx, Event};

/// Largest read from a file when sending: a piece goes out in chunks of this size, so a
/// connection holds at most this much file data whatever the piece size.
const CHUNK: usize = 1024 * 1024;
/// The chunk size under an upload limit.
pub(crate) const LIMITED_QUANTUM: usize = 16 * 1024;
/// How often a connection checks that the files it serves have not changed on disk.
const CHANGE_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// Files one connection may ask about; more are refused.
const MAX_FEEDS: usize = 16;

/// What the reading half hands to this thread.
#[derive(Debug)]
pub(super) enum Job {
    /// The peer asks for a file's size information and holdings.
    Size { file: String, hashes: bool },
    /// The peer asks for bytes of a piece.
    Data {
        content: ContentId,
        piece: u32,
        offset: u32,
        len: u32,
    },
    /// The peer says which pieces of a file it holds.
    PeerHolds { content: ContentId, bits: Vec<u8> },
    /// The peer says it now holds more pieces of a file.
    PeerHas {
        content: ContentId,
        pieces: Vec<u32>,
    },
    /// The peer broke the protocol: tell it why and close.
    Refuse(String),
}

/// One file as this connection serves it.
struct Feed {
    shared: Arc<SharedFile>,
    file: Option<File>,
    /// What this node has told the peer it holds (for a complete file: what it offered).
    told: Bitfield,
    /// What the peer holds, once it has said.
    peer: Option<Bitfield>,
    /// Pieces offered and not yet sent.
    open: HashSet<u32>,
    /// Whether pieces are offered a few at a time (a complete file) or all told.
    gated: bool,
}

/// The `node-send` thread's state.
pub(super) struct Outbox<'a> {
    ctx: &'a Ctx,
    addr: SocketAddr,
    /// This connection's id, for the node's line of upload turns.
    id: u64,
    writer: LinkWriter<TcpStream>,
    feeds: HashMap<ContentId, Feed>,
    /// Files this peer has had a piece of, so each counts once as "sent".
    sent_files: HashSet<ContentId>,
    chunk: Vec<u8>,
    last_check: Option<Instant>,
    /// Signalled when a partial file served here gains pieces, or a turn is handed over.
    wake_tx: Sender<()>,
    wake_rx: Receiver<()>,
    /// Pieces sent in the current turn, and when it ends; `None` without a turn.
    turn: Option<(u32, Instant)>,
    rng: fastrand::Rng,
}

impl<'a> Outbox<'a> {
    pub fn new(ctx: &'a Ctx, addr: SocketAddr, id: u64, writer: LinkWriter<TcpStream>) -> Self {
        let (wake_tx, wake_rx) = bounded(1);
        Self {
            ctx,
            addr,
            id,
            writer,
            feeds: HashMap::new(),
            sent_files: HashSet::new(),
            chunk: Vec::new(),
            last_check: None,
            wake_tx,
            wake_rx,
            turn: None,
            rng: fastrand::Rng::new(),
        }
    }

    /// Answers jobs until the reading half stops or a write fails; on failure, breaks the
    /// socket so the reading half stops too.
    pub fn run(mut self, jobs: &Receiver<Job>) -> Result<()> {
        let result = self.serve(jobs);
        self.ctx.turns.end(self.id);
        if result.is_err() {
            let _ = self.writer.get_ref().shutdown(Shutdown::Both);
        }
        result
    }

    fn serve(&mut self, jobs: &Receiver<Job>) -> Result<()> {
        loop {
            let turn_over = match self.turn {
                Some((_, until)) => after(until.saturating_duration_since(Instant::now())),
                None => never(),
            };
            select! {
                recv(jobs) -> job => match job {
                    Ok(job) => self.handle(job)?,
                    Err(_) => return self.flush(),
                },
                recv(self.wake_rx) -> _ => self.refresh()?,
                recv(turn_over) -> _ => {
                    self.end_turn();
                    self.offer()?;
                }
            }
            // Answer everything already asked before flushing: pipelined requests then go
            // out back to back.
            if jobs.is_empty() {
                self.flush()?;
            }
        }
    }

    fn handle(&mut self, job: Job) -> Result<()> {
        match job {
            Job::Size { file, hashes } => self.size_info(file, hashes),
            Job::Data {
                content,
                piece,
                offset,
                len,
            } => self.data(content, piece, offset, len),
            Job::PeerHolds { content, bits } => {
                let Some(feed) = self.feeds.get_mut(&content) else {
                    return self.refuse("bitfield for a file not asked about".into());
                };
                let pieces = feed.shared.manifest.piece_count();
                let Some(bits) = Bitfield::from_bytes(bits, pieces) else {
                    return self.refuse("bitfield does not fit the file".into());
                };
                feed.open.retain(|&p| !bits.get(p));
                feed.peer = Some(bits);
                self.offer()
            }
            Job::PeerHas { content, pieces } => {
                let Some(feed) = self.feeds.get_mut(&content) else {
                    return self.refuse("have for a file not asked about".into());
                };
                let count = feed.shared.manifest.piece_count();
                if pieces.iter().any(|&p| p >= count) {
                    return self.refuse("have for a piece past the end".into());
                }
                let peer = feed.peer.get_or_insert_with(|| Bitfield::empty(count));
                for &p in &pieces {
                    peer.set(p);
                    // An offer the peer got elsewhere is free for another.
                    feed.open.remove(&p);
                }
                self.offer()
            }
            Job::Refuse(reason) => self.refuse(reason),
        }
    }

    fn size_info(&mut self, file: String, hashes: bool) -> Result<()> {
        let shared = check_file_name(&file)
            .ok()
            .and_then(|()| self.ctx.store.get(&file));
        let Some(shared) = shared else {
            return self.send(&Message::Refused {
                file,
                reason: "not shared by this node".into(),
            });
        };
        let content = shared.manifest.content();
        if !self.feeds.contains_key(&content) && self.feeds.len() >= MAX_FEEDS {
            return self.refuse(format!("more than {MAX_FEEDS} files on one connection"));
        }
        self.send(&Message::SizeInfo(shared.manifest.size_info(&file, hashes)))?;
        let feed = self
            .feeds
            .entry(content)
            .or_insert_with(|| Feed::new(shared));
        if feed.shared.is_partial() {
            feed.shared.watch(&self.wake_tx);
            feed.told = feed.shared.holdings();
        }
        let bits = feed.told.as_bytes().to_vec();
        self.send(&Message::Bitfield { content, bits })
    }

    /// Tells peers of partial files the pieces verified since, and offers pieces if a turn
    /// was handed over.
    fn refresh(&mut self) -> Result<()> {
        let mut news = Vec::new();
        for (content, feed) in &mut self.feeds {
            if feed.gated {
                continue;
            }
            let now = feed.shared.holdings();
            let fresh: Vec<u32> = (0..now.len())
                .filter(|&i| now.get(i) && !feed.told.get(i))
                .collect();
            if !fresh.is_empty() {
                feed.told = now;
                news.push((*content, fresh));
            }
        }
        for (content, pieces) in news {
            self.send(&Message::Have { content, pieces })?;
        }
        self.offer()
    }

    /// Offers pieces of complete files, if the peer still lacks some and this connection
    /// holds (or gets) an upload turn; otherwise ends the turn or waits in line.
    fn offer(&mut self) -> Result<()> {
        let wanted = self
            .feeds
            .values()
            .any(|f| f.gated && f.peer.as_ref().is_some_and(|p| p.count() < p.len()));
        if !wanted {
            self.end_turn();
            return Ok(());
        }
        if self.turn.is_none() {
            if !self.ctx.turns.ask(self.id, &self.wake_tx) {
                return Ok(());
            }
            self.turn = Some((0, Instant::now() + TURN_TIME));
        }
        let Some((sent, _)) = self.turn else {
            return Ok(());
        };
        let mut offers = Vec::new();
        for (content, feed) in &mut self.feeds {
            let Some(peer) = feed.peer.as_ref().filter(|_| feed.gated) else {
                continue;
            };
            let budget =
                (TURN_PIECES.saturating_sub(sent) as usize).saturating_sub(feed.open.len());
            let room = OFFERS_OPEN.saturating_sub(feed.open.len()).min(budget);
            if room == 0 {
                continue;
            }
            let picked = {
                let mut given = feed.shared.offers.lock();
                pick_offers(&mut given, peer, &feed.told, room, &mut self.rng)
            };
            for &p in &picked {
                feed.told.set(p);
                feed.open.insert(p);
            }
            if !picked.is_empty() {
                offers.push((*content, picked));
            }
        }
        for (content, pieces) in offers {
            self.send(&Message::Have { content, pieces })?;
        }
        Ok(())
    }

    /// Gives up this connection's turn; it asks again when it next has something to offer.
    fn end_turn(&mut self) {
        if self.turn.take().is_some() {
            self.ctx.turns.end(self.id);
        }
    }

    fn data(&mut self, content: ContentId, piece: u32, offset: u32, len: u32) -> Result<()> {
        let Some(feed) = self.feeds.get_mut(&content) else {
            return self.refuse(format!("content {content} was not asked about first"));
        };
        let geometry = feed.shared.manifest.geometry();
        let in_range = geometry
            .piece_len(piece)
            .is_some_and(|pl| len > 0 && u64::from(offset) + u64::from(len) <= u64::from(pl));
        if !in_range {
            return self.refuse(format!("piece {piece} bytes {offset}+{len} out of range"));
        }
        if !feed.told.get(piece) || !feed.shared.holds(piece) {
            return self.refuse(format!("piece {piece} was not offered"));
        }
        let shared = Arc::clone(&feed.shared);
        let file = match feed.file.take() {
            Some(f) => f,
            None => File::open(&shared.path).map_err(|source| Error::File {
                op: "opening",
                path: shared.path.clone(),
                source,
            })?,
        };
        // Checking costs a syscall; once per interval is enough, since downloaders verify
        // every piece anyway. This catches a copy changed in a way its owner can see.
        if self
            .last_check
            .is_none_or(|t| t.elapsed() >= CHANGE_CHECK_INTERVAL)
        {
            self.last_check = Some(Instant::now());
            if !shared.is_unchanged(&file) {
                self.ctx.store.withdraw(&shared);
                self.ctx.emit(Event::FileChanged {
                    file: shared.name.clone(),
                });
                return self.refuse(format!("{} changed on disk", shared.name));
            }
        }
        let start = geometry.piece_range(piece).map_or(0, |r| r.start) + u64::from(offset);
        self.send(&Message::Data {
            content,
            piece,
            offset,
            len,
        })?;
        self.copy(&shared, &file, start, u64::from(len))?;
        if let Some(feed) = self.feeds.get_mut(&content) {
            feed.file = Some(file);
            if u64::from(offset) + u64::from(len) == geometry.piece_len(piece).map_or(0, u64::from)
            {
                feed.open.remove(&piece);
                if let Some((sent, _)) = &mut self.turn {
                    *sent += 1;
                    if *sent >= TURN_PIECES {
                        self.end_turn();
                    }
                }
            }
        }
        let counters = &self.ctx.counters;
        counters
            .bytes_sent
            .fetch_add(u64::from(len), Ordering::Relaxed);
        if self.sent_files.insert(content) {
            counters.files_sent.fetch_add(1, Ordering::Relaxed);
        }
        self.ctx.emit(Event::PieceSent {
            file: shared.name.clone(),
            piece,
            to: self.addr,
        });
        self.offer()
    }

    /// Sends `len` bytes of `file` from `start`: positioned reads, each written whole (two
    /// syscalls per chunk; `io::copy` never uses sendfile from a file to a socket).
    fn copy(&mut self, shared: &SharedFile, file: &File, start: u64, len: u64) -> Result<()> {
        let step = if self.ctx.upload_limit.is_some() {
            LIMITED_QUANTUM
        } else {
            CHUNK
        };
        let first = (len as usize).min(step);
        if self.chunk.len() < first {
            self.chunk.resize(first, 0);
        }
        let (mut at, end) = (start, start + len);
        while at < end {
            let n = ((end - at) as usize).min(step);
            self.ctx.throttle(self.ctx.upload_limit.as_ref(), n as u64);
            file.read_exact_at(&mut self.chunk[..n], at)
                .map_err(|source| Error::File {
                    op: "reading",
                    path: shared.path.clone(),
                    source,
                })?;
            self.writer
                .write_all(&self.chunk[..n])
                .map_err(|source| Error::PeerIo {
                    addr: self.addr,
                    op: "sending data",
                    source,
                })?;
            at += n as u64;
        }
        Ok(())
    }

    /// Tells the peer why, then ends the connection with that reason as the error.
    fn refuse(&mut self, reason: String) -> Result<()> {
        let _ = self.send(&Message::Reject {
            reason: reason.clone(),
        });
        let _ = self.flush();
        Err(Error::Peer {
            addr: self.addr,
            reason,
        })
    }

    fn send(&mut self, msg: &Message) -> Result<()> {
        write_frame(&mut self.writer, msg).map_err(|e| match e {
            Error::FrameIo(source) => Error::PeerIo {
                addr: self.addr,
                op: "writing frame",
                source,
            },
            other => other,
        })
    }

    fn flush(&mut self) -> Result<()> {
        self.writer.flush().map_err(|source| Error::PeerIo {
            addr: self.addr,
            op: "writing",
            source,
        })
    }
}

impl Feed {
    fn new(shared: Arc<SharedFile>) -> Self {
        let pieces = shared.manifest.piece_count();
        Self {
            gated: !shared.is_partial(),
            shared,
            file: None,
            told: Bitfield::empty(pieces),
            peer: None,
            open: HashSet::new(),
        }
    }
}
