//! Asking a peer: one outbound connection, used by one download worker.
//!
//! [`PeerConn::connect`] opens the connection and exchanges `Hello`s; then the worker asks
//! for size information once and pipelines piece requests. Every read has the node's peer
//! timeout, so an owner that stops answering fails the worker instead of hanging it.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};

use crate::error::{Error, KeyProblem, Result};
use crate::messages::{
    ContentId, MAGIC, Message, PROTOCOL_VERSION, SizeInformation, read_frame, read_payload,
    write_frame,
};

use crate::session::{self, LinkReader, LinkWriter};

use super::schedule::Bitfield;
use super::serve::kind;
use super::{ConnGuard, Ctx};

/// A connection to an owner.
pub(super) struct PeerConn<'a> {
    addr: SocketAddr,
    reader: BufReader<LinkReader<TcpStream>>,
    writer: LinkWriter<TcpStream>,
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
        let guard = ctx.conns.register(&stream)?;
        let session = match &ctx.config.key {
            Some(key) => Some(session::initiate(&mut &stream, &mut &stream, key, addr)?),
            None => None,
        };
        // Small on purpose: a payload read larger than the buffer bypasses it and lands in
        // the piece buffer directly, so at most this much file data is copied twice.
        let reader_capacity = 8 * 1024;
        let clone = || stream.try_clone().map_err(io("setting up connection"));
        let mut conn = Self {
            addr,
            reader: BufReader::with_capacity(
                reader_capacity,
                LinkReader::new(clone()?, session.clone(), None),
            ),
            writer: LinkWriter::new(clone()?, session, 16 * 1024),
            _guard: guard,
        };
        conn.send(&Message::Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            node: ctx.config.name.clone(),
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

    /// Returns the peer's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Returns a handle on the socket, with which another thread can break this
    /// connection's blocking reads.
    pub fn breaker(&self) -> Option<TcpStream> {
        self.writer.get_ref().try_clone().ok()
    }

    /// Asks for a file's size information and which pieces the peer holds, and waits for
    /// the answer.
    ///
    /// # Errors
    ///
    /// [`Error::Peer`] if the peer refuses or answers with anything else, or with a
    /// bitfield that does not fit the file.
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
        let info = match self.read()? {
            Message::SizeInfo(info) => info,
            Message::Refused { reason, .. } | Message::Reject { reason } => {
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

    /// Reads the answer to the oldest outstanding request, which must be all of piece
    /// `piece`, into `buf` (exactly the piece's length).
    ///
    /// # Errors
    ///
    /// [`Error::Peer`] if the peer rejects the request or sends anything else,
    /// [`Error::PeerIo`] on a timeout or a broken connection.
    pub fn read_piece(&mut self, content: ContentId, piece: u32, buf: &mut [u8]) -> Result<()> {
        match self.read()? {
            Message::Data {
                content: c,
                piece: p,
                offset: 0,
                len,
            } if c == content && p == piece && len as usize == buf.len() => {
                read_payload(&mut self.reader, buf).map_err(|e| self.frame_err(e, "reading data"))
            }
            Message::Reject { reason } => Err(Error::Peer {
                addr: self.addr,
                reason,
            }),
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

    fn read(&mut self) -> Result<Message> {
        match read_frame(&mut self.reader) {
            Ok(Some(msg)) => Ok(msg),
            Ok(None) => Err(Error::PeerClosed { addr: self.addr }),
            Err(e) => Err(self.frame_err(e, "reading frame")),
        }
    }

    fn unexpected(&self, msg: &Message) -> Error {
        Error::Peer {
            addr: self.addr,
            reason: format!("unexpected {}", kind(msg)),
        }
    }

    fn frame_err(&self, e: Error, op: &'static str) -> Error {
        match e {
            Error::FrameIo(source) => Error::PeerIo {
                addr: self.addr,
                op,
                source,
            },
            Error::Truncated => Error::PeerClosed { addr: self.addr },
            other => Error::Peer {
                addr: self.addr,
                reason: other.to_string(),
            },
        }
    }
}
