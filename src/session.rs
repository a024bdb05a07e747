//! The session layer of peer connections: with a network key, a Noise handshake, then every
//! byte in authenticated, encrypted records; without one, the plain stream.
//!
//! **Opening.** A node with a key opens a connection with [`NOISE_MAGIC`], which can never
//! begin a plain frame (its value as a length is far above
//! [`MAX_FRAME_LEN`](crate::messages::MAX_FRAME_LEN)), then the first message of the Noise
//! pattern `NNpsk0` on a pre-shared key derived from the network key. The answering node
//! sends [`NOISE_MAGIC`] and the second message. Each message proves its sender holds the
//! key; fresh ephemeral keys on both sides make every session's keys new (forward secrecy),
//! and the prologue binds the protocol version. A side that cannot go on answers with a
//! plain [`Message::KeyRefused`] frame saying whether it has a key, and both sides end with
//! [`Error::KeyMismatch`].
//!
//! **Records.** After the handshake each direction is a sequence of records: a 2-byte
//! big-endian length, then AES-256-GCM ciphertext and tag of up to [`MAX_PLAIN`] bytes,
//! under that direction's session key with a counter nonce. Each half of a connection keeps
//! its own counter, so the reading and writing halves are independent. A record that fails
//! authentication ends the connection.
//!
//! Records are framing below `messages`, wrapping its frames, so this module handles byte
//! order for their lengths: the one exception to "only `messages` touches bytes".
//!
//! AES-256-GCM, through ring, because it is the fastest AEAD here: the CPU has AES-NI, VAES
//! and carry-less multiply, and it seals and opens 3.7 GiB/s against 1.2 GiB/s for
//! ChaCha20-Poly1305 (`cargo bench --bench seal`).

use std::io::{self, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use snow::{Builder, StatelessTransportState};

use crate::error::{Error, KeyProblem, Result};
use crate::key::NetworkKey;
use crate::messages::{Message, read_frame_after, write_frame};

/// The first bytes a node with a network key sends on a connection, and the first bytes of
/// the answer when the other side has the key too.
pub const NOISE_MAGIC: [u8; 4] = *b"P2PN";
/// The Noise protocol: no static keys, the pre-shared key mixed in first, X25519,
/// AES-256-GCM and SHA-256.
pub const NOISE_PATTERN: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";
/// Bound into the handshake: both sides must speak this protocol.
const PROLOGUE: &[u8] = b"p2ptorrent peer protocol 1";
/// The largest Noise message, and so the largest record.
pub const MAX_RECORD: usize = 65_535;
const TAG_LEN: usize = 16;
/// The most plaintext one record carries.
pub const MAX_PLAIN: usize = MAX_RECORD - TAG_LEN;
/// Sealed records are gathered up to this size before they are written to the socket.
const WRITE_BATCH: usize = 256 * 1024;
/// Received bytes are read into a buffer of this size, records opened where they land.
const READ_BUFFER: usize = 256 * 1024;

/// The keys of one session, shared by its reading and writing halves.
#[derive(Clone)]
pub(crate) struct Session(Arc<StatelessTransportState>);

/// How an answered connection opened.
pub(crate) enum Opened {
    /// Plain: the first 4 bytes, the length prefix of the first frame, were read.
    Plain([u8; 4]),
    /// The handshake succeeded; everything after it is sealed.
    Sealed(Session),
}

/// Opens a connection to the peer at `addr` under `key`: sends the first handshake
/// message, reads the answer.
///
/// # Errors
///
/// [`Error::KeyMismatch`] if the peer refuses or its answer does not prove the key,
/// [`Error::PeerClosed`] or [`Error::PeerIo`] if the connection fails.
pub(crate) fn initiate(
    reader: &mut impl Read,
    writer: &mut impl Write,
    key: &NetworkKey,
    addr: SocketAddr,
) -> Result<Session> {
    let psk = key.noise_psk();
    let mut noise = builder(&psk)
        .and_then(|b| b.build_initiator())
        .map_err(noise_err(addr))?;
    let mut msg = vec![0u8; MAX_RECORD];
    let len = noise
        .write_message(&[], &mut msg)
        .map_err(noise_err(addr))?;
    send_handshake(writer, &msg[..len], addr)?;

    let prefix = read_prefix(reader, addr)?;
    if prefix != NOISE_MAGIC {
        // A plain frame: a refusal, or a peer of another protocol.
        return Err(match read_frame_after(prefix, reader) {
            Ok(Message::KeyRefused { has_key }) => mismatch(addr, true, has_key),
            Ok(Message::Reject { reason }) => Error::Peer { addr, reason },
            _ => Error::Handshake(format!("{addr} did not answer the key handshake")),
        });
    }
    let len = read_len(reader, addr)?;
    reader.read_exact(&mut msg[..len]).map_err(read_err(addr))?;
    let mut payload = vec![0u8; MAX_RECORD];
    noise
        .read_message(&msg[..len], &mut payload)
        .map_err(|_| mismatch(addr, true, true))?;
    let transport = noise
        .into_stateless_transport_mode()
        .map_err(noise_err(addr))?;
    Ok(Session(Arc::new(transport)))
}

/// Answers a connection from `addr`: reads its first 4 bytes and, if it opens a handshake,
/// completes it under `key`. A connection whose key does not match this node's is told so
/// with a plain [`Message::KeyRefused`] frame.
///
/// # Errors
///
/// [`Error::KeyMismatch`] if the peer has no key, another key, or a key when this node has
/// none; [`Error::PeerClosed`] or [`Error::PeerIo`] if the connection fails.
pub(crate) fn accept(
    reader: &mut impl Read,
    writer: &mut impl Write,
    key: Option<&NetworkKey>,
    addr: SocketAddr,
) -> Result<Opened> {
    let prefix = read_prefix(reader, addr)?;
    let refuse = |writer: &mut dyn Write, problem| {
        let mut w = writer;
        // Best effort: the peer may already be gone.
        let _ = write_frame(
            &mut w,
            &Message::KeyRefused {
                has_key: key.is_some(),
            },
        )
        .and_then(|()| w.flush().map_err(Error::FrameIo));
        Error::KeyMismatch {
            role: "peer",
            addr,
            problem,
        }
    };
    let Some(key) = key else {
        return if prefix == NOISE_MAGIC {
            Err(refuse(writer, KeyProblem::TheyRequireKey))
        } else {
            Ok(Opened::Plain(prefix))
        };
    };
    if prefix != NOISE_MAGIC {
        return Err(refuse(writer, KeyProblem::TheyHaveNoKey));
    }
    let psk = key.noise_psk();
    let mut noise = builder(&psk)
        .and_then(|b| b.build_responder())
        .map_err(noise_err(addr))?;
    let len = read_len(reader, addr)?;
    let mut msg = vec![0u8; MAX_RECORD];
    reader.read_exact(&mut msg[..len]).map_err(read_err(addr))?;
    let mut payload = vec![0u8; MAX_RECORD];
    if noise.read_message(&msg[..len], &mut payload).is_err() {
        return Err(refuse(writer, KeyProblem::DifferentKey));
    }
    let len = noise
        .write_message(&[], &mut msg)
        .map_err(noise_err(addr))?;
    send_handshake(writer, &msg[..len], addr)?;
    let transport = noise
        .into_stateless_transport_mode()
        .map_err(noise_err(addr))?;
    Ok(Opened::Sealed(Session(Arc::new(transport))))
}

/// The reading half of a connection: plain, or sealed records.
pub(crate) enum LinkReader<R> {
    /// Bytes as they come.
    Plain(R),
    /// Records to open.
    Sealed(SealedReader<R>),
}

impl<R: Read + Deadline> LinkReader<R> {
    /// Reads `stream` in the session's records, or plain without one. `record_timeout`, if
    /// set, is how long a record may take to arrive once its first byte has.
    pub fn new(stream: R, session: Option<Session>, record_timeout: Option<Duration>) -> Self {
        match session {
            None => Self::Plain(stream),
            Some(session) => Self::Sealed(SealedReader {
                inner: stream,
                session,
                nonce: 0,
                raw: vec![0; READ_BUFFER],
                start: 0,
                end: 0,
                plain: Vec::with_capacity(MAX_RECORD),
                pos: 0,
                record_timeout,
            }),
        }
    }

    /// How many bytes were taken from the stream and not yet read: opened bytes waiting,
    /// and sealed bytes not yet opened. What is still to come from the stream is at least
    /// what a reader wants less this.
    pub fn buffered(&self) -> usize {
        match self {
            Self::Plain(_) => 0,
            Self::Sealed(s) => (s.plain.len() - s.pos) + (s.end - s.start),
        }
    }

    /// The stream underneath.
    pub fn stream_mut(&mut self) -> &mut R {
        match self {
            Self::Plain(r) => r,
            Self::Sealed(s) => &mut s.inner,
        }
    }
}

impl<R: Read + Deadline> Read for LinkReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(r) => r.read(buf),
            Self::Sealed(s) => s.read(buf),
        }
    }
}

/// Opens records as they arrive.
pub(crate) struct SealedReader<R> {
    inner: R,
    session: Session,
    /// The nonce of the next record.
    nonce: u64,
    /// Bytes received and not yet opened: `raw[start..end]`. Records are opened where they
    /// land, with no copy in between.
    raw: Vec<u8>,
    start: usize,
    end: usize,
    /// Opened bytes not yet read: `plain[pos..]`.
    plain: Vec<u8>,
    pos: usize,
    record_timeout: Option<Duration>,
}

impl<R: Read + Deadline> SealedReader<R> {
    /// Makes sure the next record is whole in `raw[start..]`; returns its ciphertext's
    /// range, or `None` at a clean end of stream between records.
    fn next_record(&mut self) -> io::Result<Option<std::ops::Range<usize>>> {
        // Waiting for a record to begin is idle time; once it has, it must arrive whole
        // within the record timeout, however it trickles.
        if !self.fill(1)? {
            return Ok(None);
        }
        let before = self.inner.deadline();
        if let Some(timeout) = self.record_timeout {
            let deadline = Instant::now() + timeout;
            self.inner
                .set_deadline(Some(before.map_or(deadline, |b| b.min(deadline))));
        }
        let result = self.read_rest();
        self.inner.set_deadline(before);
        result.map(Some)
    }

    fn read_rest(&mut self) -> io::Result<std::ops::Range<usize>> {
        if !self.fill(2)? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let len = usize::from(u16::from_be_bytes([
            self.raw[self.start],
            self.raw[self.start + 1],
        ]));
        if len < TAG_LEN {
            return Err(invalid("record shorter than its tag"));
        }
        if !self.fill(2 + len)? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let at = self.start + 2;
        self.start = at + len;
        Ok(at..at + len)
    }

    /// Reads until at least `want` bytes wait in `raw`; false if the stream ends first.
    fn fill(&mut self, want: usize) -> io::Result<bool> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
        if self.raw.len() - self.start < want {
            // Only the start of one record is moved, never more.
            self.raw.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        while self.end - self.start < want {
            match self.inner.read(&mut self.raw[self.end..]) {
                Ok(0) => return Ok(false),
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

impl<R: Read + Deadline> Read for SealedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.pos == self.plain.len() {
            let Some(range) = self.next_record()? else {
                return Ok(0);
            };
            let nonce = self.nonce;
            self.nonce += 1;
            let ciphertext = &self.raw[range];
            // Opened straight into the caller's buffer when it has room (snow needs room
            // for the tag too), saving a copy of piece data.
            if buf.len() >= ciphertext.len() {
                let n = self
                    .session
                    .0
                    .read_message(nonce, ciphertext, buf)
                    .map_err(|_| invalid("record failed authentication"))?;
                if n > 0 {
                    return Ok(n);
                }
                continue;
            }
            self.plain.resize(ciphertext.len(), 0);
            let n = self
                .session
                .0
                .read_message(nonce, ciphertext, &mut self.plain)
                .map_err(|_| invalid("record failed authentication"))?;
            self.plain.truncate(n);
            self.pos = 0;
        }
        let n = buf.len().min(self.plain.len() - self.pos);
        buf[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The writing half of a connection: buffered plain bytes, or sealed records.
pub(crate) enum LinkWriter<W: Write> {
    /// Plain, through a buffer.
    Plain(BufWriter<W>),
    /// Sealed records.
    Sealed(SealedWriter<W>),
}

impl<W: Write> LinkWriter<W> {
    /// Writes to `stream` in the session's records, or plain through a buffer of
    /// `capacity` without one.
    pub fn new(stream: W, session: Option<Session>, capacity: usize) -> Self {
        match session {
            None => Self::Plain(BufWriter::with_capacity(capacity, stream)),
            Some(session) => Self::Sealed(SealedWriter {
                inner: stream,
                session,
                nonce: 0,
                plain: Vec::with_capacity(MAX_PLAIN),
                out: vec![0; WRITE_BATCH + 2 + MAX_RECORD],
                filled: 0,
            }),
        }
    }

    /// The stream underneath.
    pub fn get_ref(&self) -> &W {
        match self {
            Self::Plain(w) => w.get_ref(),
            Self::Sealed(s) => &s.inner,
        }
    }
}

impl<W: Write> Write for LinkWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(w) => w.write(buf),
            Self::Sealed(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(w) => w.flush(),
            Self::Sealed(s) => s.flush(),
        }
    }
}

/// Seals what is written into records; [`flush`](Write::flush) sends them.
pub(crate) struct SealedWriter<W> {
    inner: W,
    session: Session,
    /// The nonce of the next record.
    nonce: u64,
    /// Plaintext of the record being filled.
    plain: Vec<u8>,
    /// Sealed records not yet written: `out[..filled]`. Allocated once, never cleared.
    out: Vec<u8>,
    filled: usize,
}

impl<W: Write> SealedWriter<W> {
    /// Appends one record holding `plain` to the output.
    fn seal(&mut self, plain: &[u8]) -> io::Result<()> {
        let at = self.filled;
        let n = self
            .session
            .0
            .write_message(self.nonce, plain, &mut self.out[at + 2..])
            .map_err(|e| io::Error::other(format!("sealing a record: {e}")))?;
        self.nonce += 1;
        let header = u16::try_from(n).map_err(|_| invalid("record too long"))?;
        self.out[at..at + 2].copy_from_slice(&header.to_be_bytes());
        self.filled = at + 2 + n;
        if self.filled >= WRITE_BATCH {
            self.send()?;
        }
        Ok(())
    }

    fn send(&mut self) -> io::Result<()> {
        let filled = std::mem::take(&mut self.filled);
        self.inner.write_all(&self.out[..filled])
    }

    fn seal_pending(&mut self) -> io::Result<()> {
        if self.plain.is_empty() {
            return Ok(());
        }
        let plain = std::mem::take(&mut self.plain);
        let sealed = self.seal(&plain);
        self.plain = plain;
        self.plain.clear();
        sealed
    }
}

impl<W: Write> Write for SealedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.plain.is_empty() && buf.len() >= MAX_PLAIN {
            // A whole record straight from the caller's buffer.
            self.seal(&buf[..MAX_PLAIN])?;
            return Ok(MAX_PLAIN);
        }
        let n = buf.len().min(MAX_PLAIN - self.plain.len());
        self.plain.extend_from_slice(&buf[..n]);
        if self.plain.len() == MAX_PLAIN {
            self.seal_pending()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.seal_pending()?;
        if self.filled > 0 {
            self.send()?;
        }
        self.inner.flush()
    }
}

/// A stream whose reads can be given a deadline.
pub(crate) trait Deadline {
    /// The deadline now set, if any.
    fn deadline(&self) -> Option<Instant>;
    /// Sets or clears the deadline.
    fn set_deadline(&mut self, deadline: Option<Instant>);
}

/// One TCP connection, shared by the half that reads it, the half that writes it and the
/// node's table of open connections: one descriptor, however many hold it (three
/// `try_clone`s made a served connection cost four, and a low descriptor limit ran out at a
/// quarter of the connections). Closed when the last holder lets go.
#[derive(Debug, Clone)]
pub(crate) struct SharedStream(Arc<TcpStream>);

impl SharedStream {
    /// Shares `stream`.
    pub fn new(stream: TcpStream) -> Self {
        Self(Arc::new(stream))
    }
}

impl std::ops::Deref for SharedStream {
    type Target = TcpStream;

    fn deref(&self) -> &TcpStream {
        &self.0
    }
}

impl Read for SharedStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.0).read(buf)
    }
}

impl Write for SharedStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.0).write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        (&*self.0).write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        (&*self.0).flush()
    }
}

/// A client's socket has its peer timeout on every read instead.
impl Deadline for SharedStream {
    fn deadline(&self) -> Option<Instant> {
        None
    }

    fn set_deadline(&mut self, _: Option<Instant>) {}
}

/// A client's socket has its peer timeout on every read instead.
impl Deadline for TcpStream {
    fn deadline(&self) -> Option<Instant> {
        None
    }

    fn set_deadline(&mut self, _: Option<Instant>) {}
}

fn builder(psk: &[u8; 32]) -> std::result::Result<Builder<'_>, snow::Error> {
    let params = NOISE_PATTERN.parse()?;
    Builder::new(params).psk(0, psk)?.prologue(PROLOGUE)
}

fn send_handshake(writer: &mut impl Write, msg: &[u8], addr: SocketAddr) -> Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| Error::Handshake("message too long".into()))?;
    let mut out = Vec::with_capacity(NOISE_MAGIC.len() + 2 + msg.len());
    out.extend_from_slice(&NOISE_MAGIC);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    writer
        .write_all(&out)
        .and_then(|()| writer.flush())
        .map_err(|source| Error::PeerIo {
            addr,
            op: "sending the key handshake",
            source,
        })
}

fn read_prefix(reader: &mut impl Read, addr: SocketAddr) -> Result<[u8; 4]> {
    let mut prefix = [0u8; 4];
    reader.read_exact(&mut prefix).map_err(read_err(addr))?;
    Ok(prefix)
}

fn read_len(reader: &mut impl Read, addr: SocketAddr) -> Result<usize> {
    let mut len = [0u8; 2];
    reader.read_exact(&mut len).map_err(read_err(addr))?;
    Ok(usize::from(u16::from_be_bytes(len)))
}

fn read_err(addr: SocketAddr) -> impl Fn(io::Error) -> Error {
    move |source| {
        if source.kind() == io::ErrorKind::UnexpectedEof {
            Error::PeerClosed { addr }
        } else {
            Error::PeerIo {
                addr,
                op: "reading the key handshake",
                source,
            }
        }
    }
}

fn noise_err(addr: SocketAddr) -> impl Fn(snow::Error) -> Error {
    move |e| Error::Handshake(format!("with {addr}: {e}"))
}

fn mismatch(addr: SocketAddr, has_key: bool, refuser_has_key: bool) -> Error {
    Error::KeyMismatch {
        role: "peer",
        addr,
        problem: KeyProblem::seen_by_sender(has_key, refuser_has_key),
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

#[cfg(test)]
mod tests;
