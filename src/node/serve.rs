//! Answering peers: the accept loop, and the reading half of each connection.
//!
//! A connection opens with a `Hello` each way. Then the peer may ask for a file's size
//! information (by plain name, only for files this node shares), say which pieces it holds
//! (`Bitfield`, `Have`), and ask for byte ranges of pieces it was told this node holds.
//! This thread only reads and checks frames; the connection's `node-send` thread
//! ([`send`](super::send)) answers them in order and owns what the connection knows.
//! Anything else, or anything out of range, is answered with a `Reject` and the connection
//! is closed; other connections are not affected.

use std::io::{self, BufRead, BufReader, Read};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender, bounded};

use crate::error::{Error, Result, report};
use crate::host::address_key;
use crate::messages::{
    MAGIC, MAX_CONTROL_LEN, MAX_NODE_NAME_LEN, Message, OwnerInfo, PROTOCOL_VERSION,
    read_frame_after_within, read_frame_within, write_frame,
};
use crate::session::{self, Deadline, LinkReader, LinkWriter, Opened, SharedStream};

use super::metrics::bump;
use super::send::{Job, Outbox};
use super::{Ctx, Event, sockopt};

/// How long a peer connection may sit idle before it is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a write to a peer may block before the peer is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Frames read ahead of the sending thread, at most: a peer that asks faster than it is
/// answered waits.
pub(super) const JOBS_QUEUED: usize = 64;
/// Bytes written to a peer and not yet on the wire that the kernel may hold, at most.
///
/// Without a bound the kernel takes megabytes per connection, and on a capped uplink a
/// write "done" at once is seconds from its peer: upload turns and offers then act on
/// what has been queued, not on what was sent, and every connection shares the uplink at
/// once again. With it, a piece counts as sent when it is on the wire (or in flight), and
/// the next turn starts when the last one's bytes have left.
const UNSENT_MAX: usize = 64 * 1024;

/// The first wait after `accept` fails for want of descriptors or memory; doubled each
/// time it fails again, up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The wait after `accept` failed for want of a resource: doubled from `last` while the
/// failures keep coming (the last ended `since` ago, within two of the longest waits; a
/// connection accepted in between may fail at once for want of the same descriptors),
/// else the shortest again.
fn next_wait(last: Duration, since: Option<Duration>) -> Duration {
    if since.is_some_and(|s| s < 2 * ACCEPT_BACKOFF_MAX) {
        (last * 2).clamp(ACCEPT_BACKOFF_MIN, ACCEPT_BACKOFF_MAX)
    } else {
        ACCEPT_BACKOFF_MIN
    }
}

/// Whether `accept` failed for want of a resource (descriptors, buffers, memory) that a
/// closing connection will free, rather than because of the connection.
fn is_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// What the accept loop knows of a connection it serves.
struct Handler {
    /// The peer's host, as the per-address cap counts it ([`address_key`]).
    ip: IpAddr,
    handle: JoinHandle<()>,
    seen: Arc<Seen>,
    /// Closed to make room: no longer counted against the caps.
    reaped: bool,
}

/// When a served connection last heard from its peer, and its id among the node's
/// connections; written by its reading thread, read by the accept loop.
#[derive(Debug)]
pub(super) struct Seen {
    base: Instant,
    /// The connection's id once registered, `u64::MAX` until then.
    id: AtomicU64,
    /// Milliseconds from `base` to the last frame (or the start).
    last_ms: AtomicU64,
}

impl Seen {
    fn new(base: Instant) -> Self {
        let seen = Self {
            base,
            id: AtomicU64::new(u64::MAX),
            last_ms: AtomicU64::new(0),
        };
        seen.touch();
        seen
    }

    /// Notes that the peer was heard from now.
    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long the peer has been silent.
    fn silent(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.base.elapsed().saturating_sub(last)
    }
}

/// The `node-accept` thread: accepts until shutdown, then waits for every connection.
pub(super) fn accept_loop(ctx: &Arc<Ctx>, listener: &TcpListener) -> Result<()> {
    let base = Instant::now();
    let mut handlers: Vec<Handler> = Vec::new();
    let mut exhausted = ACCEPT_BACKOFF_MIN;
    let mut last_exhausted: Option<Instant> = None;
    for stream in listener.incoming() {
        if ctx.stopping() {
            break;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) if is_exhaustion(&e) => {
                // Out of descriptors or memory: the pending connection stays queued and
                // `accept` would fail again at once. Wait (for shutdown, at most) instead
                // of spinning, longer each time, until a connection ends and frees one.
                exhausted = next_wait(exhausted, last_exhausted.map(|t| t.elapsed()));
                ctx.emit(Event::AcceptFailed {
                    error: e.to_string(),
                    wait: exhausted,
                });
                match ctx.stop.recv_timeout(exhausted) {
                    Err(RecvTimeoutError::Timeout) => {
                        last_exhausted = Some(Instant::now());
                        continue;
                    }
                    _ => break,
                }
            }
            // A connection that failed between SYN and accept: not this node's fault.
            Err(_) => continue,
        };
        let (finished, running): (Vec<_>, Vec<_>) =
            handlers.into_iter().partition(|h| h.handle.is_finished());
        finished.into_iter().for_each(|h| {
            let _ = h.handle.join();
        });
        handlers = running;
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        // An IPv6 peer is counted by its /64: one host may hold a whole one.
        let host = address_key(peer.ip());
        if !make_room(ctx, &mut handlers, host) {
            bump(&ctx.counters.connections_refused, 1);
            continue; // dropping the stream refuses the peer
        }
        let peer_ctx = Arc::clone(ctx);
        let seen = Arc::new(Seen::new(base));
        let peer_seen = Arc::clone(&seen);
        let spawned = thread::Builder::new()
            .name("node-peer".into())
            .spawn(move || serve_peer(&peer_ctx, stream, &peer_seen));
        if let Ok(handle) = spawned {
            handlers.push(Handler {
                ip: host,
                handle,
                seen,
                reaped: false,
            });
        }
    }
    ctx.conns.close_all();
    for h in handlers {
        h.handle
            .join()
            .map_err(|_| Error::ThreadPanicked("node-peer".into()))?;
    }
    Ok(())
}

/// Whether a connection from host `ip` ([`address_key`]) may be served: under both caps, or after closing the
/// connection whose peer has been silent longest (from `ip`, if its cap is the one
/// reached), when that peer has been silent for `reap_idle_after`.
fn make_room(ctx: &Ctx, handlers: &mut [Handler], ip: IpAddr) -> bool {
    let live = handlers.iter().filter(|h| !h.reaped);
    let total = live.clone().count();
    let from_ip = live.filter(|h| h.ip == ip).count();
    let ip_full = from_ip >= ctx.config.max_connections_per_ip;
    if total < ctx.config.max_connections && !ip_full {
        return true;
    }
    let idlest = handlers
        .iter_mut()
        .filter(|h| !h.reaped && (!ip_full || h.ip == ip))
        .filter(|h| h.seen.id.load(Ordering::Relaxed) != u64::MAX)
        .max_by_key(|h| h.seen.silent());
    match idlest {
        Some(h) if h.seen.silent() >= ctx.config.reap_idle_after => {
            ctx.conns.shut(h.seen.id.load(Ordering::Relaxed));
            bump(&ctx.counters.connections_reaped, 1);
            h.reaped = true;
            true
        }
        _ => false,
    }
}

fn serve_peer(ctx: &Ctx, stream: TcpStream, seen: &Seen) {
    let Ok(addr) = stream.peer_addr() else { return };
    let stream = SharedStream::new(stream);
    let result = Server::new(ctx, addr, &stream, seen).and_then(|s| s.run(&stream));
    match result {
        Ok(()) | Err(Error::Shutdown) => {}
        Err(_) if ctx.stopping() => {}
        Err(e) => ctx.emit(Event::PeerError {
            addr,
            error: report(&e),
        }),
    }
}

/// One connection from a peer: this thread reads, a `node-send` thread writes.
struct Server<'a> {
    ctx: &'a Ctx,
    addr: SocketAddr,
    reader: BufReader<LinkReader<DeadlineStream>>,
    /// Moved to the `node-send` thread after the hellos.
    writer: Option<LinkWriter<SharedStream>>,
    /// The first frame's length prefix, when the key negotiation read it.
    prefix: Option<[u8; 4]>,
    guard: super::ConnGuard<'a>,
    seen: &'a Seen,
}

impl<'a> Server<'a> {
    fn new(ctx: &'a Ctx, addr: SocketAddr, stream: &SharedStream, seen: &'a Seen) -> Result<Self> {
        let io = |source| Error::PeerIo {
            addr,
            op: "setting up connection",
            source,
        };
        stream.set_nodelay(true).map_err(io)?;
        stream.set_read_timeout(Some(IDLE_TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(WRITE_TIMEOUT)).map_err(io)?;
        sockopt::limit_unsent(stream, UNSENT_MAX).map_err(io)?;
        let guard = ctx.conns.register(stream)?;
        seen.id.store(guard.id(), Ordering::Relaxed);
        // The key handshake and the hello must arrive within the handshake timeout,
        // however they trickle; `run` clears the deadline after the hello.
        let mut raw = DeadlineStream::new(stream.clone());
        raw.deadline = Some(Instant::now() + ctx.config.handshake_timeout);
        let (prefix, session) =
            match session::accept(&mut raw, &mut &**stream, ctx.config.key.as_ref(), addr)? {
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
            writer: Some(LinkWriter::new(stream.clone(), session, 64 * 1024)),
            prefix,
            guard,
            seen,
        })
    }

    /// Exchanges hellos, then reads the peer's frames and hands them to the `node-send`
    /// thread until either side stops. The sending side's error, if any, explains the end.
    fn run(mut self, stream: &SharedStream) -> Result<()> {
        let Some(mut writer) = self.writer.take() else {
            return Ok(());
        };
        // Still under the handshake deadline set in `new`.
        let hello = match self.prefix.take() {
            Some(prefix) => read_frame_after_within(prefix, &mut self.reader, MAX_CONTROL_LEN)
                .map(Some)
                .map_err(|e| self.frame_err(e, "reading frame")),
            None => self.read_frame_now(),
        };
        self.reader.get_mut().stream_mut().deadline = None;
        let mut met = None;
        let refusal = match hello? {
            Some(Message::Hello {
                magic,
                version,
                node,
                port,
            }) if magic == MAGIC && version == PROTOCOL_VERSION => {
                // Where the peer serves, if it does: its own address, with the port it
                // names (a peer can point only at itself).
                met = (port != 0 && node.len() <= MAX_NODE_NAME_LEN).then(|| OwnerInfo {
                    node,
                    addr: SocketAddr::new(self.addr.ip().to_canonical(), port),
                    uploads: 0,
                    complete: false,
                });
                None
            }
            Some(Message::Hello { magic, .. }) if magic != MAGIC => {
                Some("not a p2ptorrent hello".to_string())
            }
            Some(Message::Hello { version, .. }) => {
                Some(format!("protocol version {version} is not supported"))
            }
            _ => Some("expected hello".into()),
        };
        let ours = Message::Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            node: self.ctx.config.name.clone(),
            port: self.ctx.local_addr.port(),
        };
        if refusal.is_none() {
            write_frame(&mut writer, &ours).map_err(|e| self.frame_err(e, "writing"))?;
            std::io::Write::flush(&mut writer).map_err(|source| Error::PeerIo {
                addr: self.addr,
                op: "writing",
                source,
            })?;
        }
        let (jobs_tx, jobs_rx) = bounded::<Job>(JOBS_QUEUED);
        let outbox = Outbox::new(self.ctx, self.addr, self.guard.id(), writer, jobs_rx, met);
        if let Some(reason) = refusal {
            let _ = jobs_tx.send(Job::Refuse(reason));
        }
        thread::scope(|s| {
            let sender = thread::Builder::new()
                .name("node-send".into())
                .spawn_scoped(s, move || outbox.run())
                .map_err(|source| Error::Spawn {
                    name: "node-send",
                    source,
                })?;
            let read = if jobs_tx.is_empty() {
                self.forward(&jobs_tx)
            } else {
                Ok(())
            };
            drop(jobs_tx);
            if read.is_err() {
                // Nothing more will be asked: do not let a blocked write hold the thread.
                let _ = stream.shutdown(Shutdown::Both);
            }
            let sent = sender
                .join()
                .unwrap_or_else(|_| Err(Error::ThreadPanicked("node-send".into())));
            sent.and(read)
        })
    }

    /// Reads frames and hands each to the sending thread, in order.
    fn forward(&mut self, jobs: &Sender<Job>) -> Result<()> {
        while let Some(msg) = self.read()? {
            self.seen.touch();
            let job = match msg {
                Message::SizeRequest { file, hashes } => Job::Size { file, hashes },
                Message::Request {
                    content,
                    piece,
                    offset,
                    len,
                } => Job::Data {
                    content,
                    piece,
                    offset,
                    len,
                },
                Message::Bitfield { content, bits } => Job::PeerHolds { content, bits },
                Message::Have { content, pieces } => Job::PeerHas { content, pieces },
                other => Job::Refuse(format!("unexpected {}", kind(&other))),
            };
            let last = matches!(job, Job::Refuse(_));
            if jobs.send(job).is_err() || last {
                break;
            }
        }
        Ok(())
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
        // A downloader never needs to send more than a control frame: what a stranger can
        // make this node buffer is that much per connection, `max_connections` of them.
        read_frame_within(&mut self.reader, MAX_CONTROL_LEN)
            .map_err(|e| self.frame_err(e, "reading frame"))
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
        Message::Have { .. } => "have",
        Message::Unchoke => "unchoke",
        Message::Choke => "choke",
        Message::Withdraw { .. } => "withdraw",
    }
}

/// A socket whose reads give up at a deadline, when one is set, and otherwise after the
/// idle timeout. Each read sets the socket's timeout to what is left, so a peer that sends
/// one byte at a time cannot stretch a frame past its deadline.
struct DeadlineStream {
    stream: SharedStream,
    deadline: Option<Instant>,
    /// The read timeout last set on the socket, to skip redundant system calls.
    timeout: Option<Duration>,
}

impl DeadlineStream {
    fn new(stream: SharedStream) -> Self {
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
    use std::io::Write;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::messages::read_frame;

    /// Out of descriptors, the accept loop waits 10 ms, then twice as long each time the
    /// failures go on, up to a second; after a quiet spell it starts short again.
    #[test]
    fn accept_waits_double_while_descriptors_run_out() {
        let mut wait = ACCEPT_BACKOFF_MIN;
        let mut waits = vec![wait];
        for _ in 0..8 {
            wait = next_wait(wait, Some(wait));
            waits.push(wait);
        }
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert_eq!(
            next_wait(wait, Some(Duration::from_secs(5))),
            ACCEPT_BACKOFF_MIN
        );
        assert_eq!(next_wait(wait, None), ACCEPT_BACKOFF_MIN);
    }
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
            port: 0,
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
