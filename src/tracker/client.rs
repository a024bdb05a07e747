//! Talking to a tracker: one request datagram, one reply, retried with backoff.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::token::TOKEN_EPOCH;
use crate::error::{Error, KeyProblem, Result};
use crate::key::{DatagramSeal, Direction, NetworkKey, REPLAY_WINDOW, is_sealed};
use crate::messages::{
    Announce, ContentId, MAX_DATAGRAM_LEN, NodeToTracker, OwnerInfo, PROTOCOL_VERSION, SearchHit,
    Token, TrackerReply, TrackerRequest, TrackerToNode, decode_reply, encode_request,
};

/// A client for one tracker.
///
/// Each request uses a fresh UDP socket and a random transaction id, so any number of
/// threads may share a client and stray or late replies are never mistaken for an answer.
/// An unanswered request is sent again after 250 ms, then 500 ms, 1 s and 2 s: four tries,
/// under four seconds in all, by default.
///
/// With a network key ([`with_key`](Self::with_key)), every request is sealed afresh for
/// each try and only replies sealed under the key are believed.
#[derive(Clone)]
pub struct TrackerClient {
    addr: SocketAddr,
    tries: u32,
    first_timeout: Duration,
    /// The address token last issued, and when; shared by clones.
    token: Arc<Mutex<Option<(Token, Instant)>>>,
    seal: Option<DatagramSeal>,
}

impl std::fmt::Debug for TrackerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackerClient")
            .field("addr", &self.addr)
            .field("tries", &self.tries)
            .field("first_timeout", &self.first_timeout)
            .field("sealed", &self.seal.is_some())
            .finish_non_exhaustive()
    }
}

/// The owners of a file, as the tracker answered a `Need`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owners {
    /// The content id most owners hold under that name.
    pub content: ContentId,
    /// The file's size.
    pub size: u64,
    /// The owners, best first.
    pub owners: Vec<OwnerInfo>,
    /// How often the tracker wants owners to re-announce.
    pub interval: Duration,
    /// How many different contents are shared under the name (see
    /// [`TrackerToNode::Owners`]).
    pub contents: u32,
}

impl TrackerClient {
    /// Creates a client for the tracker at `addr` with the default retries.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            tries: 4,
            first_timeout: Duration::from_millis(250),
            token: Arc::default(),
            seal: None,
        }
    }

    /// Seals every request under the network key, and believes only replies sealed under
    /// it.
    pub fn with_key(mut self, key: &NetworkKey) -> Self {
        self.seal = Some(DatagramSeal::new(key));
        self
    }

    /// Sets how many times a request is sent and how long the first wait is; each later
    /// wait doubles.
    pub fn with_retries(mut self, tries: u32, first_timeout: Duration) -> Self {
        self.tries = tries.max(1);
        self.first_timeout = first_timeout;
        self
    }

    /// Returns the tracker's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Announces that this node owns a file, returning the re-announce interval.
    ///
    /// # Errors
    ///
    /// As [`request`](Self::request), and [`Error::TrackerRejected`] if refused.
    pub fn announce(&self, ann: Announce) -> Result<Duration> {
        match self.request(NodeToTracker::Have(ann))? {
            TrackerToNode::Ack { interval_secs } => Ok(Duration::from_secs(interval_secs.into())),
            other => Err(self.unexpected(other)),
        }
    }

    /// Asks for the owners of `file`, under whichever content the tracker chooses.
    ///
    /// # Errors
    ///
    /// [`Error::NoOwners`] if nobody owns it, and as [`request`](Self::request).
    pub fn need(&self, file: &str, numwant: u16) -> Result<Owners> {
        self.need_content(file, numwant, None)
    }

    /// Asks for the owners of `file`; with `content`, of that content only.
    ///
    /// # Errors
    ///
    /// [`Error::NoOwners`] if nobody owns it (or that content of it), and as
    /// [`request`](Self::request).
    pub fn need_content(
        &self,
        file: &str,
        numwant: u16,
        content: Option<ContentId>,
    ) -> Result<Owners> {
        match self.request(NodeToTracker::Need {
            file: file.into(),
            numwant,
            content,
        })? {
            TrackerToNode::Owners {
                content,
                size,
                owners,
                interval_secs,
                contents,
                ..
            } => Ok(Owners {
                content,
                size,
                owners,
                interval: Duration::from_secs(interval_secs.into()),
                contents,
            }),
            TrackerToNode::NotFound { .. } => Err(Error::NoOwners { file: file.into() }),
            other => Err(self.unexpected(other)),
        }
    }

    /// Returns the files whose names contain `pattern` (ignoring case) and their owners.
    ///
    /// # Errors
    ///
    /// As [`request`](Self::request).
    pub fn search(&self, pattern: &str) -> Result<Vec<SearchHit>> {
        match self.request(NodeToTracker::Search {
            pattern: pattern.into(),
        })? {
            TrackerToNode::SearchResults { hits } => Ok(hits),
            other => Err(self.unexpected(other)),
        }
    }

    /// Tells the tracker the node serving on `port` from this host has left.
    ///
    /// # Errors
    ///
    /// As [`request`](Self::request).
    pub fn exit(&self, port: u16) -> Result<()> {
        match self.request(NodeToTracker::Exit { port })? {
            TrackerToNode::Ack { .. } => Ok(()),
            other => Err(self.unexpected(other)),
        }
    }

    /// Returns an address token for this host, asking the tracker for a new one when the
    /// cached one may have expired.
    ///
    /// # Errors
    ///
    /// As [`request`](Self::request).
    pub fn token(&self) -> Result<Token> {
        if let Some((token, at)) = *self.token.lock()
            && at.elapsed() < TOKEN_EPOCH
        {
            return Ok(token);
        }
        let issued = Instant::now();
        match self.send(NodeToTracker::Connect, [0; 16])? {
            TrackerToNode::Token { token } => {
                *self.token.lock() = Some((token, issued));
                Ok(token)
            }
            other => Err(self.unexpected(other)),
        }
    }

    /// Sends one request with this host's address token and returns the tracker's answer.
    /// A token the tracker no longer accepts (it restarted, or time passed) is renewed
    /// once.
    ///
    /// # Errors
    ///
    /// [`Error::TrackerUnreachable`] if no answer came after every try,
    /// [`Error::TrackerRejected`] if the tracker refused, [`Error::TrackerIo`] if the
    /// socket failed.
    pub fn request(&self, body: NodeToTracker) -> Result<TrackerToNode> {
        if let NodeToTracker::Connect = body {
            return self.send(body, [0; 16]);
        }
        match self.send(body.clone(), self.token()?)? {
            TrackerToNode::BadToken => {
                *self.token.lock() = None;
                match self.send(body, self.token()?)? {
                    TrackerToNode::BadToken => Err(Error::TrackerRejected {
                        addr: self.addr,
                        reason: "the tracker refused a token it had just issued".into(),
                    }),
                    answer => Ok(answer),
                }
            }
            answer => Ok(answer),
        }
    }

    /// Sends one request datagram, retrying with backoff, and returns the answer.
    fn send(&self, body: NodeToTracker, token: Token) -> Result<TrackerToNode> {
        let io_err = |source| Error::TrackerIo {
            addr: self.addr,
            source,
        };
        let any: SocketAddr = if self.addr.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(any).map_err(io_err)?;
        socket.connect(self.addr).map_err(io_err)?;
        let txid = fastrand::u64(..);
        let plain = encode_request(&TrackerRequest {
            version: PROTOCOL_VERSION,
            txid,
            token,
            body,
        })?;
        let mut buf = vec![0u8; MAX_DATAGRAM_LEN];
        let mut wait = self.first_timeout;
        let mut refused = None;
        let mut busy = false;
        for _ in 0..self.tries {
            // Sealed afresh each try: the tracker answers each sealed datagram only once.
            let datagram = match &self.seal {
                Some(seal) => seal.seal(Direction::Request, &plain)?,
                None => plain.clone(),
            };
            match socket.send(&datagram) {
                Ok(_) => {}
                // A refusal from an earlier try (ICMP port unreachable): try again.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(e) => return Err(io_err(e)),
            }
            let reply = self.await_reply(&socket, txid, wait, &mut buf, &mut refused)?;
            // A plain refusal is not authenticated: a node with a key believes it only if
            // no sealed answer came in the whole try.
            if let Some(tracker_has_key) = refused
                && (reply.is_none() || self.seal.is_none())
            {
                return Err(Error::KeyMismatch {
                    role: "tracker",
                    addr: self.addr,
                    problem: KeyProblem::seen_by_sender(self.seal.is_some(), tracker_has_key),
                });
            }
            if let Some(TrackerToNode::Busy { retry_ms }) = reply.as_ref().map(|r| &r.body) {
                // Throttled: asked again after the pause the tracker names, within this
                // try's time, as if the answer had been lost.
                busy = true;
                std::thread::sleep(Duration::from_millis((*retry_ms).into()).min(wait));
                wait *= 2;
                continue;
            }
            if let Some(reply) = reply {
                return match reply.body {
                    TrackerToNode::Reject { reason } => Err(Error::TrackerRejected {
                        addr: self.addr,
                        reason,
                    }),
                    TrackerToNode::ClockSkew { ahead_ms } => Err(Error::TrackerRejected {
                        addr: self.addr,
                        reason: format!(
                            "this host's clock is {:.1} s {} the tracker's; with a network key \
                             they must agree within {} s",
                            ahead_ms.unsigned_abs() as f64 / 1000.0,
                            if ahead_ms > 0 { "ahead of" } else { "behind" },
                            REPLAY_WINDOW.as_secs()
                        ),
                    }),
                    body => Ok(body),
                };
            }
            wait *= 2;
        }
        if busy {
            return Err(Error::TrackerBusy { addr: self.addr });
        }
        Err(Error::TrackerUnreachable {
            addr: self.addr,
            tries: self.tries,
        })
    }

    /// Waits up to `wait` for the reply to `txid`, skipping anything else that arrives.
    /// A plain `KeyRefused` sets `refused` to whether the tracker has a key; for a node
    /// without a key, it ends the wait.
    fn await_reply(
        &self,
        socket: &UdpSocket,
        txid: u64,
        wait: Duration,
        buf: &mut [u8],
        refused: &mut Option<bool>,
    ) -> Result<Option<TrackerReply>> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            socket
                .set_read_timeout(Some(left))
                .map_err(|source| Error::TrackerIo {
                    addr: self.addr,
                    source,
                })?;
            match socket.recv(buf) {
                Ok(n) => {
                    let datagram = &mut buf[..n];
                    let sealed = is_sealed(datagram);
                    let reply = match &self.seal {
                        Some(seal) if sealed => seal
                            .open(Direction::Reply, datagram)
                            .ok()
                            .and_then(|(_, body)| decode_reply(body).ok()),
                        _ => decode_reply(datagram).ok(),
                    };
                    match reply {
                        Some(TrackerReply {
                            txid: t,
                            body: TrackerToNode::KeyRefused { has_key },
                            ..
                        }) if t == txid || t == 0 => {
                            *refused = Some(has_key);
                            if self.seal.is_none() {
                                return Ok(None);
                            }
                        }
                        Some(reply) if reply.txid == txid && (self.seal.is_none() || sealed) => {
                            return Ok(Some(reply));
                        }
                        _ => {}
                    }
                }
                Err(e) if is_timeout(&e) => return Ok(None),
                // Nobody listens on the port (yet): wait out this try, then send again.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                    return Ok(None);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(Error::TrackerIo {
                        addr: self.addr,
                        source,
                    });
                }
            }
        }
    }

    fn unexpected(&self, reply: TrackerToNode) -> Error {
        Error::TrackerRejected {
            addr: self.addr,
            reason: format!("unexpected answer {reply:?}"),
        }
    }
}

/// Returns whether a socket error means a read timeout expired.
pub(crate) fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
