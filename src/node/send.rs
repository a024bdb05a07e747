//! The sending half of a connection this node serves: one `node-send` thread per
//! connection, which alone writes to the peer and owns what the connection knows.
//!
//! The reading half (`serve`) parses the peer's frames and hands them over as [`Job`]s on a
//! bounded channel; this thread answers them in order, and also speaks unasked:
//!
//! - for a file being downloaded here, it pushes `Have` for each piece verified since the
//!   peer was last told (the store's watcher signals it), except those the peer holds;
//! - it unchokes the peer when the connection gets an upload turn and chokes it when the
//!   turn ends, and for a file held complete it offers pieces a few at a time during the
//!   turn, as [`seeding`](super::seeding) describes; the peer may ask only for pieces
//!   offered (`turns`, a part of this thread's code in a file of its own).
//!
//! With a rate limit, file data goes out in quanta of [`LIMITED_QUANTUM`], each waited for
//! in turn, so many connections share a capped uplink fairly and none falls silent long
//! enough to trip its peer's timeout.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::Write;
use std::net::{Shutdown, SocketAddr};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, after, bounded, never, select};

use crate::error::{Error, Result};
use crate::messages::{ContentId, MAX_HAVE_LIST, Message, OwnerInfo, check_file_name, write_frame};
use crate::session::{LinkWriter, SharedStream};

use super::schedule::Bitfield;
use super::seeding::{TURN_IDLE, TURN_PIECES};
use super::store::SharedFile;
use super::{Ctx, Event};

mod turns;

/// Largest read from a file when sending: a piece goes out in chunks of this size, so a
/// connection holds at most this much file data whatever the piece size.
const CHUNK: usize = 1024 * 1024;
/// The chunk size under an upload limit.
pub(crate) const LIMITED_QUANTUM: usize = 16 * 1024;
/// How often a connection checks that the files it serves have not changed on disk.
const CHANGE_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// Files one connection may ask about; more are refused.
const MAX_FEEDS: usize = 16;
/// Requests answered after `Choke` before the peer is taken for one that ignores it: more
/// than any honest pipeline holds.
const MAX_SERVED_CHOKED: u32 = 64;

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
    /// Pieces withdrawn unsent and not offered since: a request for one, which crossed
    /// the `Withdraw`, is dropped without reply.
    withdrawn: HashSet<u32>,
    /// Whether pieces are offered a few at a time (a complete file) or all told.
    gated: bool,
    /// When the peer last gained a piece (it said so, or this node began sending it one),
    /// or the feed began: a peer that gains nothing for
    /// [`STARVING`](super::seeding::STARVING) is offered pieces
    /// however many copies are out.
    gained: Instant,
}

/// The `node-send` thread's state.
pub(super) struct Outbox<'a> {
    ctx: &'a Ctx,
    addr: SocketAddr,
    /// This connection's id, for the node's line of upload turns.
    id: u64,
    writer: LinkWriter<SharedStream>,
    /// What the reading half hands over.
    jobs: Receiver<Job>,
    /// Jobs taken off `jobs` early, at a turn's end, to drop requests for withdrawn
    /// pieces; answered before any newer one. At most [`JOBS_QUEUED`](super::serve::JOBS_QUEUED).
    queued: VecDeque<Job>,
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
    /// When the peer last asked for data or was last sent some.
    last_active: Instant,
    /// Whether the peer was last told `Unchoke` (connections start choked).
    unchoked: bool,
    /// Requests answered since the peer was told `Choke`: those it sent before hearing it.
    served_choked: u32,
    /// Where the peer serves, as its `Hello` said (`None` if it serves nothing).
    met: Option<OwnerInfo>,
    /// Files whose download here was told of this peer already.
    introduced: HashSet<ContentId>,
    rng: fastrand::Rng,
}

impl<'a> Outbox<'a> {
    pub fn new(
        ctx: &'a Ctx,
        addr: SocketAddr,
        id: u64,
        writer: LinkWriter<SharedStream>,
        jobs: Receiver<Job>,
        met: Option<OwnerInfo>,
    ) -> Self {
        let (wake_tx, wake_rx) = bounded(1);
        Self {
            ctx,
            addr,
            id,
            writer,
            jobs,
            queued: VecDeque::new(),
            feeds: HashMap::new(),
            sent_files: HashSet::new(),
            chunk: Vec::new(),
            last_check: None,
            wake_tx,
            wake_rx,
            turn: None,
            last_active: Instant::now(),
            unchoked: false,
            served_choked: 0,
            met,
            introduced: HashSet::new(),
            rng: fastrand::Rng::new(),
        }
    }

    /// Answers jobs until the reading half stops or a write fails; on failure, breaks the
    /// socket so the reading half stops too.
    pub fn run(mut self) -> Result<()> {
        let result = self.serve();
        self.ctx.turns.end(self.id);
        // This peer's copies leave with it, and so do the offers it never took up.
        for feed in self.feeds.values().filter(|f| f.gated) {
            let mut copies = feed.shared.copies.lock();
            if let Some(peer) = &feed.peer {
                copies.count(peer, false);
            }
            for &p in &feed.open {
                copies.close(p, false);
            }
        }
        if result.is_err() {
            let _ = self.writer.get_ref().shutdown(Shutdown::Both);
        }
        result
    }

    fn serve(&mut self) -> Result<()> {
        let jobs = self.jobs.clone();
        loop {
            if let Some(job) = self.queued.pop_front() {
                self.take(job)?;
                if self.queued.is_empty() && jobs.is_empty() {
                    self.flush()?;
                }
                continue;
            }
            let turn_over = match self.turn {
                Some((_, until)) => {
                    let idle = self.last_active + TURN_IDLE;
                    after(until.min(idle).saturating_duration_since(Instant::now()))
                }
                None => never(),
            };
            select! {
                recv(jobs) -> job => match job {
                    Ok(job) => self.take(job)?,
                    Err(_) => return self.flush(),
                },
                recv(self.wake_rx) -> _ => self.refresh()?,
                recv(turn_over) -> _ => {
                    self.next_turn()?;
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

    fn take(&mut self, job: Job) -> Result<()> {
        if matches!(job, Job::Data { .. }) {
            self.last_active = Instant::now();
        }
        self.handle(job)
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
                if feed.gated {
                    let mut copies = feed.shared.copies.lock();
                    for &p in feed.open.iter().filter(|&&p| bits.get(p)) {
                        copies.close(p, false);
                    }
                    if let Some(old) = &feed.peer {
                        copies.count(old, false);
                    }
                    copies.count(&bits, true);
                }
                feed.open.retain(|&p| !bits.get(p));
                if feed
                    .peer
                    .as_ref()
                    .is_some_and(|old| bits.count() > old.count())
                {
                    feed.gained = Instant::now();
                }
                feed.peer = Some(bits);
                self.introduce(content);
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
                let mut copies = feed.gated.then(|| feed.shared.copies.lock());
                for &p in &pieces {
                    if !peer.get(p) {
                        feed.gained = Instant::now();
                        if let Some(c) = copies.as_mut() {
                            c.add(p);
                        }
                    }
                    peer.set(p);
                    // An offer the peer got elsewhere is free for another.
                    if feed.open.remove(&p)
                        && let Some(c) = copies.as_mut()
                    {
                        c.close(p, false);
                    }
                }
                drop(copies);
                self.introduce(content);
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
    ///
    /// A piece the peer holds itself (it said so) is counted as told without a word: it
    /// will never ask for it. Every `Have` is a small packet through every hop and a wake-up
    /// on both sides, and there is one per verified piece on each connection; at 64 hosts
    /// the machine, not the links, had begun to set the pace.
    fn refresh(&mut self) -> Result<()> {
        let mut news = Vec::new();
        for (content, feed) in &mut self.feeds {
            if feed.gated {
                continue;
            }
            let now = feed.shared.holdings();
            let peer = feed.peer.as_ref();
            let fresh = now.added_since(&feed.told);
            if fresh.is_empty() {
                continue;
            }
            feed.told = now;
            let news_to_peer: Vec<u32> = fresh
                .into_iter()
                .filter(|&i| !peer.is_some_and(|b| b.get(i)))
                .collect();
            if !news_to_peer.is_empty() {
                news.push((*content, news_to_peer));
            }
        }
        for (content, pieces) in news {
            for list in pieces.chunks(MAX_HAVE_LIST) {
                self.send(&Message::Have {
                    content,
                    pieces: list.to_vec(),
                })?;
            }
        }
        // A turn handed over, or new pieces the peer may want.
        self.offer()
    }

    /// Tells this node's download of a file that the peer, which is downloading it too,
    /// holds pieces of it: the download may fetch from the peer at once instead of waiting
    /// for its next look-up at the tracker (up to the announce interval) to list it. Once
    /// per file and connection; dropped if the download's queue is full.
    fn introduce(&mut self, content: ContentId) {
        let Some(met) = &self.met else { return };
        if self.introduced.contains(&content) {
            return;
        }
        let Some(feed) = self.feeds.get(&content) else {
            return;
        };
        if !feed.shared.is_partial() || feed.peer.as_ref().is_none_or(|b| b.count() == 0) {
            return;
        }
        self.introduced.insert(content);
        if let Some(run) = self.ctx.downloading.lock().get(&feed.shared.name) {
            let _ = run.met.0.try_send(met.clone());
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
        if !feed.told.get(piece) && feed.withdrawn.contains(&piece) {
            // Asked for before the peer read the `Withdraw`: dropped, as it says.
            return Ok(());
        }
        if !feed.told.get(piece) || !feed.shared.holds(piece) {
            return self.refuse(format!("piece {piece} was not offered"));
        }
        if offset == 0 {
            feed.gained = Instant::now();
        }
        if offset == 0 && feed.gated {
            // A copy counts as out from its first byte: two peers served at once were both
            // sent the same piece, neither copy counted until its last byte went.
            let mut copies = feed.shared.copies.lock();
            if copies.ahead_of_first_copy(piece) {
                drop(copies);
                return self.defer(content, piece);
            }
            if feed.open.remove(&piece) {
                copies.close(piece, true);
            }
        }
        if !self.unchoked {
            // Requests in flight when the peer was choked are answered; a peer that keeps
            // asking while choked is not honest.
            self.served_choked += 1;
            if self.served_choked > MAX_SERVED_CHOKED {
                return self.refuse("requests while choked".into());
            }
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
        self.last_active = Instant::now();
        // The piece's last bytes went out: the turn counts it, and the peer holds it once it
        // lands. (A whole piece's copy and offer were counted at its first byte; a part's
        // are counted here.)
        let finished =
            u64::from(offset) + u64::from(len) == geometry.piece_len(piece).map_or(0, u64::from);
        if let Some(feed) = self.feeds.get_mut(&content) {
            feed.file = Some(file);
            if finished {
                // The peer holds it once it lands; it tells everyone else, not this node.
                let pieces = feed.shared.manifest.piece_count();
                let peer = feed.peer.get_or_insert_with(|| Bitfield::empty(pieces));
                let news = !peer.get(piece);
                peer.set(piece);
                if feed.gated {
                    let mut copies = feed.shared.copies.lock();
                    if news {
                        copies.add(piece);
                    }
                    if feed.open.remove(&piece) {
                        copies.close(piece, true);
                    }
                }
                let turn_done = self.turn.as_mut().is_some_and(|(sent, _)| {
                    *sent += 1;
                    *sent >= TURN_PIECES
                });
                if turn_done {
                    self.next_turn()?;
                }
            }
        }
        let counters = &self.ctx.counters;
        counters
            .bytes_sent
            .fetch_add(u64::from(len), Ordering::Relaxed);
        if finished {
            counters.pieces_sent.fetch_add(1, Ordering::Relaxed);
        }
        if self.sent_files.insert(content) {
            counters.files_sent.fetch_add(1, Ordering::Relaxed);
        }
        if self.ctx.config.piece_events {
            self.ctx.emit(Event::PieceSent {
                file: shared.name.clone(),
                piece,
                to: self.addr,
            });
        }
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
    /// Whether the peer has said what it holds and lacks a piece this node could give it.
    fn wanted(&self) -> bool {
        let Some(peer) = &self.peer else {
            return false;
        };
        if self.gated {
            peer.count() < peer.len()
        } else {
            (0..peer.len()).any(|i| self.told.get(i) && !peer.get(i))
        }
    }

    fn new(shared: Arc<SharedFile>) -> Self {
        let pieces = shared.manifest.piece_count();
        Self {
            gated: !shared.is_partial(),
            shared,
            file: None,
            told: Bitfield::empty(pieces),
            peer: None,
            open: HashSet::new(),
            withdrawn: HashSet::new(),
            gained: Instant::now(),
        }
    }
}
