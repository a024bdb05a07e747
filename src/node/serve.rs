//! Answering peers: the accept loop and one thread per connection.
//!
//! A connection opens with a `Hello` each way. Then the peer may ask for a file's size
//! information (by plain name, only for files this node shares) and for byte ranges of its
//! pieces. Anything else, or anything out of range, is answered with a `Reject` and the
//! connection is closed; other connections are not affected. File data is read with
//! positioned reads in chunks of up to 1 MiB and written whole, with no seek and no
//! per-piece allocation.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::messages::{
    ContentId, MAGIC, Message, PROTOCOL_VERSION, check_file_name, read_frame, read_frame_after,
    write_frame,
};
use crate::session::{self, Deadline, LinkReader, LinkWriter, Opened};

use super::store::SharedFile;
use super::{Ctx, Event};

/// How long a peer connection may sit idle before it is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a write to a peer may block before the peer is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest read from a file when sending: a piece goes out in chunks of this size, so a
/// connection holds at most this much file data whatever the piece size.
const CHUNK: usize = 1024 * 1024;
/// How often a connection checks that the files it serves have not changed on disk.
const CHANGE_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// The `node-accept` thread: accepts until shutdown, then waits for every connection.
pub(super) fn accept_loop(ctx: &Arc<Ctx>, listener: &TcpListener) -> Result<()> {
    let mut handlers: Vec<(IpAddr, JoinHandle<()>)> = Vec::new();
    for stream in listener.incoming() {
        if ctx.stopping() {
            break;
        }
        let Ok(stream) = stream else {
            // A connection that failed between SYN and accept, or a shortage of file
            // descriptors: not this node's fault, and the next accept may succeed.
            continue;
        };
        let (finished, running): (Vec<_>, Vec<_>) =
            handlers.into_iter().partition(|(_, h)| h.is_finished());
        finished.into_iter().for_each(|(_, h)| {
            let _ = h.join();
        });
        handlers = running;
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        let from_ip = handlers.iter().filter(|(ip, _)| *ip == peer.ip()).count();
        if handlers.len() >= ctx.config.max_connections
            || from_ip >= ctx.config.max_connections_per_ip
        {
            continue; // dropping the stream refuses the peer
        }
        let peer_ctx = Arc::clone(ctx);
        let spawned = thread::Builder::new()
            .name("node-peer".into())
            .spawn(move || serve_peer(&peer_ctx, stream));
        if let Ok(handle) = spawned {
            handlers.push((peer.ip(), handle));
        }
    }
    ctx.conns.close_all();
    for (_, handle) in handlers {
        handle
            .join()
            .map_err(|_| Error::ThreadPanicked("node-peer".into()))?;
    }
    Ok(())
}

fn serve_peer(ctx: &Ctx, stream: TcpStream) {
    let Ok(addr) = stream.peer_addr() else { return };
    let result = Server::new(ctx, addr, &stream).and_then(|mut s| s.run());
    match result {
        Ok(()) | Err(Error::Shutdown) => {}
        Err(_) if ctx.stopping() => {}
        Err(e) => ctx.emit(Event::PeerError {
            addr,
            error: e.to_string(),
        }),
    }
}

/// One connection from a peer.
struct Server<'a> {
    ctx: &'a Ctx,
    addr: SocketAddr,
    reader: BufReader<LinkReader<DeadlineStream>>,
    writer: LinkWriter<TcpStream>,
    /// The first frame's length prefix, when the key negotiation read it.
    prefix: Option<[u8; 4]>,
    /// Files opened for this peer, each with its own offset.
    open: HashMap<ContentId, (Arc<SharedFile>, File)>,
    /// Files this peer has had a piece of, so each counts once as "sent".
    sent: HashSet<ContentId>,
    /// The buffer file data passes through, grown to at most [`CHUNK`].
    chunk: Vec<u8>,
    /// When the files served were last checked for changes on disk; `None` before the first.
    last_check: Option<Instant>,
    _guard: super::ConnGuard<'a>,
}

impl<'a> Server<'a> {
    fn new(ctx: &'a Ctx, addr: SocketAddr, stream: &TcpStream) -> Result<Self> {
        let io = |source| Error::PeerIo {
            addr,
            op: "setting up connection",
            source,
        };
        stream.set_nodelay(true).map_err(io)?;
        stream.set_read_timeout(Some(IDLE_TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(WRITE_TIMEOUT)).map_err(io)?;
        let guard = ctx.conns.register(stream)?;
        // The key handshake and the hello must arrive within the handshake timeout,
        // however they trickle; `run` clears the deadline after the hello.
        let mut raw = DeadlineStream::new(stream.try_clone().map_err(io)?);
        raw.deadline = Some(Instant::now() + ctx.config.handshake_timeout);
        let (prefix, session) =
            match session::accept(&mut raw, &mut &*stream, ctx.config.key.as_ref(), addr)? {
                Opened::Plain(prefix) => (Some(prefix), None),
                Opened::Sealed(session) => (None, Some(session)),
            };
        let record_timeout = Some(ctx.config.handshake_timeout);
        Ok(Self {
            ctx,
            addr,
            reader: BufReader::with_capacity(
                16 * 1024,
                LinkReader::new(raw, session.clone(), record_timeout),
            ),
            writer: LinkWriter::new(stream.try_clone().map_err(io)?, session, 64 * 1024),
            prefix,
            open: HashMap::new(),
            sent: HashSet::new(),
            chunk: Vec::new(),
            last_check: None,
            _guard: guard,
        })
    }

    fn run(&mut self) -> Result<()> {
        // Still under the handshake deadline set in `new`.
        let hello = match self.prefix.take() {
            Some(prefix) => read_frame_after(prefix, &mut self.reader)
                .map(Some)
                .map_err(|e| self.frame_err(e, "reading frame")),
            None => self.read_frame_now(),
        };
        self.reader.get_mut().stream_mut().deadline = None;
        match hello? {
            Some(Message::Hello { magic, version, .. })
                if magic == MAGIC && version == PROTOCOL_VERSION => {}
            Some(Message::Hello { version, .. }) => {
                return self.refuse(format!("protocol version {version} is not supported"));
            }
            _ => return self.refuse("expected hello".into()),
        }
        self.send(&Message::Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            node: self.ctx.config.name.clone(),
        })?;
        self.flush()?;
        while let Some(msg) = self.read()? {
            match msg {
                Message::SizeRequest { file, hashes } => self.size_info(file, hashes)?,
                Message::Request {
                    content,
                    piece,
                    offset,
                    len,
                } => {
                    self.data(content, piece, offset, len)?;
                }
                other => return self.refuse(format!("unexpected {}", kind(&other))),
            }
            // Answer everything already received before flushing: pipelined requests then
            // go out back to back.
            if self.reader.buffer().is_empty() && !self.reader.get_ref().buffered() {
                self.flush()?;
            }
        }
        Ok(())
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
        let m = &shared.manifest;
        self.send(&Message::SizeInfo(m.size_info(&file, hashes)))?;
        let bits = shared.holdings();
        self.send(&Message::Bitfield {
            content: m.content(),
            bits: bits.as_bytes().to_vec(),
        })
    }

    fn data(&mut self, content: ContentId, piece: u32, offset: u32, len: u32) -> Result<()> {
        // Taken out of the map while in use; an early return closes the connection anyway.
        let (shared, file) = match self.open.remove(&content) {
            Some(entry) => entry,
            None => {
                let Some(shared) = self.ctx.store.by_content(content) else {
                    return self.refuse(format!("content {content} is not shared by this node"));
                };
                let file = File::open(&shared.path).map_err(|source| Error::File {
                    op: "opening",
                    path: shared.path.clone(),
                    source,
                })?;
                (shared, file)
            }
        };
        let geometry = shared.manifest.geometry();
        let in_range = geometry
            .piece_len(piece)
            .is_some_and(|pl| len > 0 && u64::from(offset) + u64::from(len) <= u64::from(pl));
        if !in_range {
            return self.refuse(format!("piece {piece} bytes {offset}+{len} out of range"));
        }
        if !shared.holds(piece) {
            return self.refuse(format!("piece {piece} is not held by this node yet"));
        }
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
        // Positioned reads of up to CHUNK bytes, each written whole: two syscalls per
        // chunk. (The standard library's `io::copy` never uses sendfile from a file to a
        // socket and copies in 8 KiB steps.)
        let chunk = (len as usize).min(CHUNK);
        if self.chunk.len() < chunk {
            self.chunk.resize(chunk, 0);
        }
        let mut at = start;
        let end = start + u64::from(len);
        while at < end {
            let n = ((end - at) as usize).min(CHUNK);
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
        let copied = u64::from(len);
        let counters = &self.ctx.counters;
        counters.bytes_sent.fetch_add(copied, Ordering::Relaxed);
        if self.sent.insert(content) {
            counters.files_sent.fetch_add(1, Ordering::Relaxed);
        }
        self.ctx.emit(Event::PieceSent {
            file: shared.name.clone(),
            piece,
            to: self.addr,
        });
        self.open.insert(content, (shared, file));
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

    /// Waits (up to the idle timeout) for the next frame to begin, then gives the rest of it
    /// the handshake timeout: a peer trickling a frame byte by byte is dropped.
    fn read(&mut self) -> Result<Option<Message>> {
        let started = self.reader.fill_buf().map(|b| !b.is_empty());
        match started {
            Ok(false) => return Ok(None),
            Ok(true) => {}
            Err(source) => {
                return Err(Error::PeerIo {
                    addr: self.addr,
                    op: "reading frame",
                    source,
                });
            }
        }
        self.reader.get_mut().stream_mut().deadline =
            Some(Instant::now() + self.ctx.config.handshake_timeout);
        let frame = self.read_frame_now();
        self.reader.get_mut().stream_mut().deadline = None;
        frame
    }

    fn read_frame_now(&mut self) -> Result<Option<Message>> {
        read_frame(&mut self.reader).map_err(|e| self.frame_err(e, "reading frame"))
    }

    fn send(&mut self, msg: &Message) -> Result<()> {
        write_frame(&mut self.writer, msg).map_err(|e| self.frame_err(e, "writing frame"))
    }

    fn flush(&mut self) -> Result<()> {
        self.writer.flush().map_err(|source| Error::PeerIo {
            addr: self.addr,
            op: "writing",
            source,
        })
    }

    fn frame_err(&self, e: Error, op: &'static str) -> Error {
        match e {
            Error::FrameIo(source) => Error::PeerIo {
                addr: self.addr,
                op,
                source,
            },
            other => Error::Peer {
                addr: self.addr,
                reason: other.to_string(),
            },
        }
    }
}

/// Names a message's kind for error messages, without its contents.
pub(super) fn kind(msg: &Message) -> &'static str {
    match msg {
        Message::Hello { .. } => "hello",
        Message::SizeRequest { .. } => "size request",
        Message::SizeInfo(_) => "size information",
        Message::Bitfield { .. } => "bitfield",
        Message::Refused { .. } => "refusal",
        Message::Request { .. } => "request",
        Message::Data { .. } => "data",
        Message::Reject { .. } => "reject",
        Message::KeyRefused { .. } => "key refusal",
    }
}

/// A socket whose reads give up at a deadline, when one is set, and otherwise after the
/// idle timeout. Each read sets the socket's timeout to what is left, so a peer that sends
/// one byte at a time cannot stretch a frame past its deadline.
struct DeadlineStream {
    stream: TcpStream,
    deadline: Option<Instant>,
    /// The read timeout last set on the socket, to skip redundant system calls.
    timeout: Option<Duration>,
}

impl DeadlineStream {
    fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            deadline: None,
            timeout: None,
        }
    }
}

impl Deadline for DeadlineStream {
    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let timeout = match self.deadline {
            None => IDLE_TIMEOUT,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "frame deadline passed",
                    ));
                }
                left.min(IDLE_TIMEOUT)
            }
        };
        if self.timeout != Some(timeout) {
            self.stream.set_read_timeout(Some(timeout))?;
            self.timeout = Some(timeout);
        }
        self.stream.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::key::NetworkKey;
    use crate::node::{Node, NodeConfig};
    use crate::session;

    /// Inside an encrypted session, after the hellos, a record trickled a byte at a time
    /// is dropped at the handshake timeout, as a trickled plain frame is.
    #[test]
    fn a_trickled_record_is_dropped_at_the_deadline() {
        let key = NetworkKey::from_bytes([5; 32]);
        let dir = tempfile::tempdir().unwrap();
        let mut config = NodeConfig::new("victim", dir.path())
            .listen("127.0.0.1:0".parse().unwrap())
            .key(key.clone());
        config.handshake_timeout = Duration::from_secs(1);
        let (node, _events) = Node::start(config).unwrap();
        let addr = node.local_addr();

        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let session = session::initiate(&mut &stream, &mut &stream, &key, addr).unwrap();
        let mut writer = LinkWriter::new(stream.try_clone().unwrap(), Some(session.clone()), 0);
        let mut reader = LinkReader::new(stream.try_clone().unwrap(), Some(session), None);
        let hello = Message::Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            node: "loris".into(),
        };
        write_frame(&mut writer, &hello).unwrap();
        writer.flush().unwrap();
        assert!(matches!(
            read_frame(&mut reader),
            Ok(Some(Message::Hello { .. }))
        ));

        // A record header promising 1,000 bytes, then a byte every 100 ms: 100 s.
        let started = Instant::now();
        let mut w = &stream;
        w.write_all(&1000u16.to_be_bytes()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let dropped = (0..1000).find_map(|_| {
            if w.write_all(&[0]).is_err() {
                return Some(started.elapsed());
            }
            match (&stream).read(&mut [0u8; 64]) {
                Ok(0) => Some(started.elapsed()),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Some(started.elapsed()),
                _ => None,
            }
        });
        let dropped = dropped.expect("the node kept a trickling record open");
        assert!(
            dropped < Duration::from_secs(4),
            "dropped after {dropped:?}"
        );
        node.shutdown().unwrap();
    }
}
