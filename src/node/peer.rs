//! Asking a peer: one outbound connection, used by one download worker.
//!
//! [`PeerConn::connect`] opens the connection and exchanges `Hello`s; then the worker asks
//! for size information once and [`split`](PeerConn::split)s the connection: a
//! [`PeerWriter`] sends piece requests and this node's `Have`s, a [`PeerReader`] reads what
//! the owner sends, each on its own thread. Every read has the node's peer timeout, so an
//! owner that stops answering fails the worker instead of hanging it.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};

use crate::error::{Error, KeyProblem, Result};
use crate::messages::{
    ContentId, MAGIC, MAX_CONTROL_LEN, MAX_FRAME_LEN, Message, PROTOCOL_VERSION, SizeInformation,
    read_frame_within, write_frame,
};

use crate::session::{self, LinkReader, LinkWriter, SharedStream};

use super::schedule::Bitfield;
use super::serve::kind;
use super::{ConnGuard, Ctx, sockopt};

/// A trickling piece payload is read in wakeups of this many bytes. Only trickling ones:
/// Linux clamps the receive window to an `SO_RCVLOWAT` this large while the receive
/// buffer is still small, and one fast stream read this way crawled at 126 MB/s; a flow a
/// capped uplink feeds never needs a larger window. Not 64 KiB, a whole test piece: with
/// that, a loopback download misjudged as trickling under load stalled for one peer
/// timeout in 3 of 5 runs (each read waited out its timeout for bytes the clamped window
/// would not let come); at 16 KiB, 0 of 6, and a 40 Mbit/s link still runs at its rate.
const WAKE_BYTES: usize = 16 * 1024;
/// A payload read returning less than this (and less than what was left) marks the
/// connection as trickling: its data arrives a segment or two at a time.
const TRICKLE_READ: usize = 8 * 1024;
/// Short reads in a row that mark a trickle.
const SHORT_READS: u8 = 3;

/// A connection to an owner.
pub(super) struct PeerConn<'a> {
    addr: SocketAddr,
    reader: BufReader<LinkReader<SharedStream>>,
    writer: LinkWriter<SharedStream>,
    _guard: ConnGuard<'a>,
}

impl<'a> PeerConn<'a> {
    /// Connects to `addr`, runs the key handshake if the node has a network key, and
    /// exchanges `Hello`s.
    ///
    /// # Errors
    ///
    /// [`Error::PeerIo`] if the connection fails, [`Error::KeyMismatch`] if the peer's
    /// network key is not this node's, [`Error::Handshake`] if the peer speaks another
    /// protocol, [`Error::Shutdown`] if the node is stopping.
    pub fn connect(ctx: &'a Ctx, addr: SocketAddr) -> Result<Self> {
        let timeout = ctx.config.peer_timeout;
        let io = |op| move |source| Error::PeerIo { addr, op, source };
        let stream = TcpStream::connect_timeout(&addr, timeout).map_err(io("connecting"))?;
        stream
            .set_nodelay(true)
            .map_err(io("setting up connection"))?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(io("setting up connection"))?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(io("setting up connection"))?;
        let stream = SharedStream::new(stream);
        let guard = ctx.conns.register(&stream)?;
        let session = match &ctx.config.key {
            Some(key) => Some(session::initiate(&mut &*stream, &mut &*stream, key, addr)?),
            None => None,
        };
        // Small on purpose: a payload read larger than the buffer bypasses it and lands in
        // the piece buffer directly, so at most this much file data is copied twice.
        let reader_capacity = 8 * 1024;
        let mut conn = Self {
            addr,
            reader: BufReader::with_capacity(
                reader_capacity,
                LinkReader::new(stream.clone(), session.clone(), None),
            ),
            writer: LinkWriter::new(stream, session, 16 * 1024),
            _guard: guard,
        };
        conn.send(&Message::Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            node: ctx.config.name.clone(),
            port: ctx.local_addr.port(),
        })?;
        conn.flush()?;
        match conn.read()? {
            Message::Hello { magic, version, .. }
                if magic == MAGIC && version == PROTOCOL_VERSION =>
            {
                Ok(conn)
            }
            Message::Hello { version, .. } => Err(Error::Handshake(format!(
                "{addr} speaks protocol version {version}"
            ))),
            Message::Reject { reason } => Err(Error::Peer { addr, reason }),
            Message::KeyRefused { has_key } => Err(Error::KeyMismatch {
                role: "peer",
                addr,
                problem: KeyProblem::seen_by_sender(false, has_key),
            }),
            other => Err(Error::Handshake(format!(
                "{addr} answered with {}",
                kind(&other)
            ))),
        }
    }

    /// Splits the connection into its reading and writing halves, for two threads.
    pub fn split(self) -> (PeerReader<'a>, PeerWriter) {
        let reader = PeerReader {
            addr: self.addr,
            reader: self.reader,
            waking_at: 1,
            trickle: Trickle::default(),
            _guard: self._guard,
        };
        let writer = PeerWriter {
            addr: self.addr,
            writer: self.writer,
        };
        (reader, writer)
    }

    /// Asks for a file's size information and which pieces the peer holds, and waits for
    /// the answer.
    ///
    /// # Errors
    ///
    /// [`Error::NotShared`] if the peer does not share the file, [`Error::Peer`] if it
    /// rejects the request or answers with anything else, or with a bitfield that does not
    /// fit the file.
    pub fn size_info(&mut self, file: &str, hashes: bool) -> Result<(SizeInformation, Bitfield)> {
        self.ask_size_info(file, hashes)?;
        self.flush()?;
        self.read_size_info()
    }

    /// Queues a size request; [`flush`](Self::flush) sends it. Answers come back in the
    /// order asked, so it may sit in a pipeline of piece requests.
    ///
    /// # Errors
    ///
    /// [`Error::PeerIo`] if writing fails.
    pub fn ask_size_info(&mut self, file: &str, hashes: bool) -> Result<()> {
        self.send(&Message::SizeRequest {
            file: file.into(),
            hashes,
        })
    }

    /// Reads the answer to a size request: the size information, then the bitfield.
    ///
    /// # Errors
    ///
    /// As [`size_info`](Self::size_info).
    pub fn read_size_info(&mut self) -> Result<(SizeInformation, Bitfield)> {
        // The one frame that may be large: it carries the piece hashes when asked for.
        let info = match self.read_within(MAX_FRAME_LEN)? {
            Message::SizeInfo(info) => info,
            Message::Refused { file, reason } => {
                return Err(Error::NotShared {
                    addr: self.addr,
                    file: crate::messages::shown(&file),
                    reason: crate::messages::shown(&reason),
                });
            }
            Message::Reject { reason } => {
                return Err(Error::Peer {
                    addr: self.addr,
                    reason,
                });
            }
            other => return Err(self.unexpected(&other)),
        };
        let pieces = u32::try_from(info.size.div_ceil(u64::from(info.piece_size.max(1))))
            .unwrap_or(u32::MAX);
        match self.read()? {
            Message::Bitfield { content, bits } if content == info.content => {
                let bits = Bitfield::from_bytes(bits, pieces).ok_or_else(|| Error::Peer {
                    addr: self.addr,
                    reason: "bitfield does not fit the file".into(),
                })?;
                Ok((info, bits))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    /// Sends everything queued.
    ///
    /// # Errors
    ///
    /// [`Error::PeerIo`] if writing fails.
    pub fn flush(&mut self) -> Result<()> {
        self.writer.flush().map_err(|source| Error::PeerIo {
            addr: self.addr,
            op: "writing",
            source,
        })
    }

    fn send(&mut self, msg: &Message) -> Result<()> {
        write_frame(&mut self.writer, msg).map_err(|e| self.frame_err(e, "writing frame"))
    }

    /// Reads a control frame.
    fn read(&mut self) -> Result<Message> {
        self.read_within(MAX_CONTROL_LEN)
    }

    /// Reads a frame of at most `max` bytes.
    fn read_within(&mut self, max: u32) -> Result<Message> {
        match read_frame_within(&mut self.reader, max) {
            Ok(Some(msg)) => Ok(msg),
            Ok(None) => Err(Error::PeerClosed { addr: self.addr }),
            Err(e) => Err(self.frame_err(e, "reading frame")),
        }
    }

    fn unexpected(&self, msg: &Message) -> Error {
        unexpected(self.addr, msg)
    }

    fn frame_err(&self, e: Error, op: &'static str) -> Error {
        frame_err(self.addr, e, op)
    }
}

/// What an owner sends a downloader, as [`PeerReader::next`] reads it.
#[derive(Debug)]
pub(super) enum Incoming {
    /// Nothing arrived within the peer timeout.
    Quiet,
    /// A whole piece follows: read it with [`PeerReader::payload`].
    Data { piece: u32, len: u32 },
    /// The owner now holds (or offers) these pieces too.
    Have(Vec<u32>),
    /// The owner chokes (`true`) or unchokes (`false`) this connection.
    Choke(bool),
    /// The owner no longer offers these pieces, and will not answer requests for them.
    Withdraw(Vec<u32>),
}

/// The reading half of a connection to an owner.
pub(super) struct PeerReader<'a> {
    addr: SocketAddr,
    reader: BufReader<LinkReader<SharedStream>>,
    /// The bytes a read of the socket waits for now (`SO_RCVLOWAT`).
    waking_at: usize,
    /// Whether payloads arrive a segment or two at a time, so reads should wait for more.
    trickle: Trickle,
    _guard: ConnGuard<'a>,
}

impl PeerReader<'_> {
    /// Returns the owner's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Reads the owner's next message about file `content`.
    ///
    /// # Errors
    ///
    /// [`Error::Peer`] if the owner rejects a request or sends anything else (including a
    /// message about other content), [`Error::PeerIo`] if the connection breaks or a frame,
    /// once begun, does not arrive within the peer timeout, [`Error::PeerClosed`] at its end.
    pub fn next(&mut self, content: ContentId) -> Result<Incoming> {
        // Silence before a frame begins is no error here: the worker knows whether it
        // is owed an answer. Silence inside a frame is.
        match self.reader.fill_buf() {
            Ok([]) => return Err(Error::PeerClosed { addr: self.addr }),
            Ok(_) => {}
            Err(e) if is_timeout(&e) => return Ok(Incoming::Quiet),
            Err(source) => {
                return Err(Error::PeerIo {
                    addr: self.addr,
                    op: "reading frame",
                    source,
                });
            }
        }
        let msg = match read_frame_within(&mut self.reader, MAX_CONTROL_LEN) {
            Ok(Some(msg)) => msg,
            Ok(None) => return Err(Error::PeerClosed { addr: self.addr }),
            Err(e) => return Err(frame_err(self.addr, e, "reading frame")),
        };
        match msg {
            Message::Data {
                content: c,
                piece,
                offset: 0,
                len,
            } if c == content => Ok(Incoming::Data { piece, len }),
            Message::Have { content: c, pieces } if c == content => Ok(Incoming::Have(pieces)),
            Message::Choke => Ok(Incoming::Choke(true)),
            Message::Unchoke => Ok(Incoming::Choke(false)),
            Message::Withdraw { content: c, pieces } if c == content => {
                Ok(Incoming::Withdraw(pieces))
            }
            Message::Reject { reason } => Err(Error::Peer {
                addr: self.addr,
                reason,
            }),
            other => Err(unexpected(self.addr, &other)),
        }
    }

    /// Reads the payload of the `Data` frame just read into `buf` (its exact length).
    ///
    /// # Errors
    ///
    /// [`Error::PeerIo`] on a timeout or a broken connection, [`Error::PeerClosed`] if it
    /// ends first.
    pub fn payload(&mut self, buf: &mut [u8]) -> Result<()> {
        let mut filled = 0;
        let result = loop {
            let left = buf.len() - filled;
            if left == 0 {
                break Ok(());
            }
            // Bytes read ahead into a buffer here are taken without touching the socket.
            let ahead = self.reader.buffer().len() + self.reader.get_ref().buffered();
            if ahead == 0 {
                self.wake_after(self.trickle.wait_for(left));
            }
            match self.reader.read(&mut buf[filled..]) {
                Ok(0) => break Err(Error::PeerClosed { addr: self.addr }),
                Ok(n) => {
                    filled += n;
                    self.trickle.judge(ahead, n, left, self.waking_at);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(source) => {
                    break Err(Error::PeerIo {
                        addr: self.addr,
                        op: "reading data",
                        source,
                    });
                }
            }
        };
        // Frames are read as they come again.
        self.wake_after(1);
        result
    }

    /// Sets how many bytes a read waits for. Best effort: without it reads only wake
    /// more often.
    fn wake_after(&mut self, bytes: usize) {
        if self.waking_at != bytes {
            let stream = self.reader.get_mut().stream_mut();
            if sockopt::wake_after(stream, bytes).is_ok() {
                self.waking_at = bytes;
            }
        }
    }
}

/// The writing half of a connection to an owner.
pub(super) struct PeerWriter {
    addr: SocketAddr,
    writer: LinkWriter<SharedStream>,
}

impl PeerWriter {
    /// Queues a request for a whole piece; [`flush`](Self::flush) sends it.
    ///
    /// # Errors
    ///
    /// [`Error::PeerIo`] if writing fails.
    pub fn request(&mut self, content: ContentId, piece: u32, len: u32) -> Result<()> {
        self.send(&Message::Request {
            content,
            piece,
            offset: 0,
            len,
        })
    }

    /// Queues this node's holdings of `content`.
    ///
    /// # Errors
    ///
    /// [`Error::PeerIo`] if writing fails.
    pub fn holdings(&mut self, content: ContentId, has: &Bitfield) -> Result<()> {
        self.send(&Message::Bitfield {
            content,
            bits: has.as_bytes().to_vec(),
        })
    }

    /// Queues pieces this node now holds.
    ///
    /// # Errors
    ///
    /// [`Error::PeerIo`] if writing fails.
    pub fn have(&mut self, content: ContentId, pieces: Vec<u32>) -> Result<()> {
        self.send(&Message::Have { content, pieces })
    }

    /// Sends everything queued.
    ///
    /// # Errors
    ///
    /// [`Error::PeerIo`] if writing fails.
    pub fn flush(&mut self) -> Result<()> {
        self.writer.flush().map_err(|source| Error::PeerIo {
            addr: self.addr,
            op: "writing",
            source,
        })
    }

    /// Breaks the connection, so the reading half stops too.
    pub fn close(&self) {
        let _ = self.writer.get_ref().shutdown(Shutdown::Both);
    }

    fn send(&mut self, msg: &Message) -> Result<()> {
        write_frame(&mut self.writer, msg).map_err(|e| frame_err(self.addr, e, "writing frame"))
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

fn unexpected(addr: SocketAddr, msg: &Message) -> Error {
    Error::Peer {
        addr,
        reason: format!("unexpected {}", kind(msg)),
    }
}

fn frame_err(addr: SocketAddr, e: Error, op: &'static str) -> Error {
    match e {
        Error::FrameIo(source) => Error::PeerIo { addr, op, source },
        Error::Truncated => Error::PeerClosed { addr },
        other => Error::Peer {
            addr,
            reason: other.to_string(),
        },
    }
}

/// Whether a connection's payloads trickle in (a capped or distant owner: a segment or two
/// per read), judged only from reads the socket served.
///
/// A trickling payload is read in wakeups of [`WAKE_BYTES`], not one per segment; every
/// byte waited for is one the owner has begun to send and that is not already read ahead
/// (under a key, waiting on the socket for bytes the record layer held waited out the
/// timeout, and a download over a 40 Mbit/s link crawled at a twelfth of it). A fast
/// payload is read as it comes: it arrives in large reads anyway.
#[derive(Debug, Default)]
struct Trickle {
    on: bool,
    /// Short reads the socket served in a row while not trickling.
    short: u8,
}

impl Trickle {
    /// The bytes the next read of the socket should wait for, `left` of the payload to come.
    fn wait_for(&self, left: usize) -> usize {
        if self.on {
            left.clamp(1, WAKE_BYTES)
        } else {
            1
        }
    }

    /// Judges a read of `n` bytes of the `left` wanted, made with `ahead` bytes already
    /// buffered here and the socket waking at `waited` bytes.
    ///
    /// A read served from a buffer says nothing of the stream. Counting one as a trickle
    /// (the first payload read of every piece returns the frame reader's leftover, a few
    /// KiB) put every fast stream into waiting mode, a `setsockopt` pair per piece: one
    /// owner on loopback fell from 720 to 265 MiB/s.
    fn judge(&mut self, ahead: usize, n: usize, left: usize, waited: usize) {
        if ahead > 0 {
            return;
        }
        if self.on {
            // Twice what was waited for had piled up: the flow is fast.
            self.on = !(waited == WAKE_BYTES && n >= 2 * WAKE_BYTES);
            return;
        }
        // One short read is a fast stream caught between segments on a busy machine (three
        // nodes in one process on two cores: taken for a trickle, a download from two
        // owners ran at 250 MB/s in half the runs, 650 in the others); a trickle reads
        // short again and again.
        self.short = if n < TRICKLE_READ && n < left {
            self.short.saturating_add(1)
        } else {
            0
        };
        if self.short >= SHORT_READS {
            self.on = true;
            self.short = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{TRICKLE_READ, Trickle, WAKE_BYTES};

    /// A fast stream's pieces each begin with the few KiB the frame reader read ahead
    /// with the `Data` header: that short read is not a trickle.
    #[test]
    fn a_short_read_from_a_buffer_does_not_make_a_fast_stream_trickle() {
        let piece = 256 * 1024;
        let mut trickle = Trickle::default();
        for _ in 0..3 {
            // The leftover of the 8 KiB frame buffer, then the socket in large reads.
            trickle.judge(3_000, 3_000, piece, 1);
            assert_eq!(trickle.wait_for(piece - 3_000), 1);
            trickle.judge(0, 65_536, piece - 3_000, 1);
            assert_eq!(
                trickle.wait_for(piece - 68_536),
                1,
                "still read as it comes"
            );
        }
    }

    /// Short reads the socket served mark a trickle; reads wait for up to `WAKE_BYTES`
    /// until one finds twice that waiting.
    #[test]
    fn a_trickle_waits_for_more_until_the_stream_runs_fast() {
        let mut trickle = Trickle::default();
        trickle.judge(0, 1_448, 100_000, 1);
        trickle.judge(0, 1_448, 98_552, 1);
        assert_eq!(
            trickle.wait_for(97_104),
            1,
            "two short reads are no trickle yet"
        );
        trickle.judge(0, 1_448, 97_104, 1);
        assert_eq!(trickle.wait_for(100_000), WAKE_BYTES);
        assert_eq!(trickle.wait_for(500), 500, "never more than is left");
        trickle.judge(0, WAKE_BYTES, 90_000, WAKE_BYTES);
        assert_eq!(trickle.wait_for(90_000), WAKE_BYTES, "still a trickle");
        trickle.judge(0, 2 * WAKE_BYTES, 70_000, WAKE_BYTES);
        assert_eq!(trickle.wait_for(70_000), 1, "fast again");
        for _ in 0..5 {
            trickle.judge(0, 3_000, 40_000, 1);
            trickle.judge(0, TRICKLE_READ, 37_000, 1);
        }
        assert_eq!(
            trickle.wait_for(40_000),
            1,
            "short reads between long ones are no trickle"
        );
    }
}
