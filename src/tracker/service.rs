//! One `tracker-udp` thread: it takes requests off its socket in bursts, opens them if the
//! network has a key, charges each to its sender's budget, applies it to the table, and
//! sends the replies in one burst.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use parking_lot::Mutex;

use super::budget::{self, Budgets, Verdict};
use super::burst::{Inbox, Outbox, Received};
use super::registry::{self, Registry};
use super::token::Tokens;
use super::wire::{self, BodyView, OwnersReply, ReplyBuf};
use super::{Outcome, RequestKind, TrackerEvent, is_timeout, metrics};
use crate::error::{Error, KeyProblem, Result};
use crate::key::{
    DatagramSeal, Direction, Replay, ReplayGuard, Unsealed, is_sealed, salt_id, unix_millis,
};
use crate::messages::{
    PROTOCOL_VERSION, TrackerReply, TrackerToNode, decode_request, encode_reply,
};

/// The state of one `tracker-udp` thread.
pub(super) struct Service {
    pub(super) socket: UdpSocket,
    pub(super) registry: Arc<Mutex<Registry>>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) answered: Arc<AtomicU64>,
    pub(super) metrics: Arc<metrics::Cells>,
    pub(super) events: Sender<TrackerEvent>,
    pub(super) interval_secs: u32,
    pub(super) sweep: Duration,
    /// Whether this thread drops expired owners (one thread does).
    pub(super) sweeper: bool,
    pub(super) tokens: Arc<Tokens>,
    /// When the tracker started: token epochs count from here.
    pub(super) started: Instant,
    /// Seals and opens datagrams, with a network key.
    pub(super) seal: Option<DatagramSeal>,
    /// The salts of sealed requests already answered, shared by all threads.
    pub(super) replay: Arc<ReplayGuard>,
    /// What each address may still ask for.
    pub(super) budgets: Arc<Budgets>,
}

impl Service {
    /// Serves the socket until the tracker stops.
    pub(super) fn run(self) -> Result<()> {
        let mut inbox = Inbox::new();
        let mut outbox = Outbox::new();
        let mut last_sweep = Instant::now();
        while !self.stop.load(Ordering::SeqCst) {
            match self.serve_burst(&mut inbox, &mut outbox) {
                Ok(sent) => {
                    self.answered.fetch_add(sent as u64, Ordering::Relaxed);
                }
                Err(e) if is_timeout(&e) => {}
                // ICMP errors for earlier replies and signals are not the tracker's problem.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::Interrupted
                    ) => {}
                // Shut for reading by `close`.
                Err(_) if self.stop.load(Ordering::SeqCst) => break,
                Err(source) => {
                    return Err(Error::TrackerIo {
                        addr: self.local_addr(),
                        source,
                    });
                }
            }
            let now = Instant::now();
            if self.sweeper && now.duration_since(last_sweep) >= self.sweep {
                last_sweep = now;
                if self.registry.lock().expire(now) {
                    self.emit(TrackerEvent::TableChanged);
                }
            }
        }
        Ok(())
    }

    /// Takes the requests queued on the socket (waiting for the first), answers each, and
    /// sends the replies in one burst; returns how many were sent.
    fn serve_burst(&self, inbox: &mut Inbox, outbox: &mut Outbox) -> io::Result<usize> {
        let taken = inbox.receive(&self.socket)?;
        if self.stop.load(Ordering::SeqCst) {
            return Ok(0);
        }
        // One clock read per request: each one's time runs from the end of the one
        // before it in the burst.
        let mut clock = Instant::now();
        for i in 0..taken {
            match inbox.datagram(i) {
                Received::Request(datagram, from) => {
                    self.receive(datagram, from, &mut outbox.replies[i], &mut clock);
                }
                Received::TooLarge(from) => self.malformed(from),
                // The socket was shut for reading by `close`.
                Received::Nothing => {}
            }
        }
        Ok(outbox.flush(&self.socket, taken))
    }

    /// Opens a datagram if the network has a key, refusing any not sealed under it, and
    /// handles the request inside.
    fn receive(
        &self,
        datagram: &mut [u8],
        from: SocketAddr,
        out: &mut ReplyBuf,
        clock: &mut Instant,
    ) {
        let Some(seal) = &self.seal else {
            if is_sealed(datagram) {
                // Sealed by a node with a key: tell it this tracker has none.
                self.refuse_key(from, 0, KeyProblem::TheyRequireKey, datagram.len());
            } else {
                self.handle(datagram, from, out, clock);
            }
            return;
        };
        let id = salt_id(datagram);
        let len = datagram.len();
        match seal.open(Direction::Request, datagram) {
            Ok((sent, body)) => {
                let now = unix_millis();
                let admitted = id
                    .ok_or(Replay::Seen)
                    .and_then(|id| self.replay.admit(id, sent, now));
                if admitted.is_err() {
                    self.metrics.replayed.fetch_add(1, Ordering::Relaxed);
                }
                let reason = match admitted {
                    Ok(()) => return self.handle(body, from, out, clock),
                    // No answer: a replay earns its sender nothing.
                    Err(Replay::Seen) => "replayed request",
                    Err(Replay::Full) => "too many sealed requests to remember",
                    Err(Replay::OutsideWindow) => {
                        self.clock_skew(seal, body, sent, now, len, from);
                        "request sent outside the replay window (clocks differ?)"
                    }
                };
                self.emit(TrackerEvent::Rejected {
                    from,
                    reason: reason.into(),
                });
            }
            Err(Unsealed::Plain) => match decode_request(datagram) {
                Ok(req) => self.refuse_key(from, req.txid, KeyProblem::TheyHaveNoKey, len),
                Err(_) => self.malformed(from),
            },
            Err(Unsealed::Unopenable) => {
                self.refuse_key(from, 0, KeyProblem::DifferentKey, len);
            }
        }
    }

    /// Tells a node whose sealed request was sent too far from this tracker's clock by how
    /// much, so it can report its clock rather than an unreachable tracker. Only if the
    /// sealed answer is smaller than the request: a replayed old request sent from a
    /// forged address must not be amplified.
    fn clock_skew(
        &self,
        seal: &DatagramSeal,
        body: &[u8],
        sent: u64,
        now: u64,
        request_len: usize,
        from: SocketAddr,
    ) {
        let Ok(req) = decode_request(body) else {
            return;
        };
        let ahead_ms = i64::try_from(i128::from(sent) - i128::from(now)).unwrap_or(i64::MAX);
        let reply = TrackerReply {
            version: PROTOCOL_VERSION,
            txid: req.txid,
            body: TrackerToNode::ClockSkew { ahead_ms },
        };
        if let Ok(bytes) = encode_reply(&reply).and_then(|b| seal.seal(Direction::Reply, &b))
            && bytes.len() < request_len
        {
            let _ = self.socket.send_to(&bytes, from);
        }
    }

    /// Answers a datagram not sealed under this tracker's key with a plain `KeyRefused`,
    /// if that is smaller than the datagram (it always is for a real request).
    fn refuse_key(&self, from: SocketAddr, txid: u64, problem: KeyProblem, request_len: usize) {
        let has_key = self.seal.is_some();
        self.metrics.key_refused.fetch_add(1, Ordering::Relaxed);
        self.emit(TrackerEvent::Rejected {
            from,
            reason: format!("node {from} {problem}"),
        });
        let reply = TrackerReply {
            version: PROTOCOL_VERSION,
            txid,
            body: TrackerToNode::KeyRefused { has_key },
        };
        if let Ok(bytes) = encode_reply(&reply)
            && bytes.len() < request_len
        {
            let _ = self.socket.send_to(&bytes, from);
        }
    }

    /// Answers one request into `out`; `clock` is when the thread began on it, set to
    /// when it finished.
    fn handle(
        &self,
        datagram: &[u8],
        reply_to: SocketAddr,
        out: &mut ReplyBuf,
        clock: &mut Instant,
    ) {
        // On a dual-stack socket an IPv4 node arrives as `::ffff:a.b.c.d`: it is keyed,
        // listed and budgeted by its IPv4 address, and answered where it sent from.
        let from = SocketAddr::new(reply_to.ip().to_canonical(), reply_to.port());
        let Ok(req) = wire::decode_request(datagram) else {
            self.malformed(from);
            return;
        };
        let began = *clock;
        // Token epochs count from the tracker's start; one clock read serves both.
        let age = began.saturating_duration_since(self.started);
        let kind = RequestKind::of(&req.body);
        let txid = req.txid;
        let (written, outcome, changed) = if req.version != PROTOCOL_VERSION {
            let reason = format!("protocol version {} is not supported", req.version);
            self.answer(out, txid, TrackerToNode::Reject { reason }, from)
        } else if let BodyView::Connect = req.body {
            let token = self.tokens.issue(from.ip(), age);
            self.answer(out, txid, TrackerToNode::Token { token }, from)
        } else if !self.tokens.check(from.ip(), &req.token, age) {
            // Smaller than any request that could have earned it: no amplification.
            self.answer(out, txid, TrackerToNode::BadToken, from)
        } else {
            match self
                .budgets
                .charge(from.ip(), budget_kind(&req.body), began)
            {
                Verdict::Serve => self.apply(out, txid, req.body, from, began),
                Verdict::TellBusy(wait) => {
                    self.emit(TrackerEvent::Throttled { from });
                    let retry_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
                    self.answer(out, txid, TrackerToNode::Busy { retry_ms }, from)
                }
                Verdict::Drop => {
                    self.emit(TrackerEvent::Throttled { from });
                    self.metrics.request(kind, Outcome::Throttled, lap(clock));
                    return;
                }
            }
        };
        // A reply that cannot be encoded is dropped; the node will ask again. The others
        // go out with the rest of the burst.
        if let Ok(len) = written {
            let _ = out.ready(len, self.seal.as_ref(), reply_to);
        }
        self.metrics.request(kind, outcome, lap(clock));
        if changed {
            self.emit(TrackerEvent::TableChanged);
        }
    }

    fn malformed(&self, from: SocketAddr) {
        self.metrics.malformed.fetch_add(1, Ordering::Relaxed);
        self.emit(TrackerEvent::Malformed { from });
    }

    /// Applies one request to the table and writes the answer into `out`; returns its
    /// length, the outcome and whether the table changed.
    fn apply(
        &self,
        out: &mut ReplyBuf,
        txid: u64,
        body: BodyView<'_>,
        from: SocketAddr,
        now: Instant,
    ) -> Written {
        let ack = TrackerToNode::Ack {
            interval_secs: self.interval_secs,
        };
        match body {
            BodyView::Have(ann) => match self.registry.lock().announce(from.ip(), ann, now) {
                Ok(changed) => {
                    let (written, outcome, _) = self.answer(out, txid, ack, from);
                    (written, outcome, changed)
                }
                Err(reason) => self.answer(out, txid, TrackerToNode::Reject { reason }, from),
            },
            BodyView::Need {
                file,
                numwant,
                content,
            } => {
                let seed = fastrand::u64(..);
                let mut registry = self.registry.lock();
                // The owners are written from the table's own strings, under its lock.
                let Some(found) = registry.need(file, numwant, seed, content, from.is_ipv6())
                else {
                    drop(registry);
                    let file = file.to_owned();
                    return self.answer(out, txid, TrackerToNode::NotFound { file }, from);
                };
                let written = out.write_owners(&OwnersReply {
                    txid,
                    file,
                    content: found.content,
                    size: found.size,
                    owners: found.owners(),
                    interval_secs: self.interval_secs,
                    contents: found.contents,
                });
                (written, Outcome::Answered, false)
            }
            BodyView::Search { pattern } => {
                // The scan runs on a shared copy of the names, without the lock: a
                // search of a large table never holds up announces and look-ups.
                let names = self.registry.lock().names();
                let found = registry::matching(&names, pattern);
                let hits = self.registry.lock().hits(&found, from.is_ipv6());
                self.answer(out, txid, TrackerToNode::SearchResults { hits }, from)
            }
            BodyView::Exit { port } => {
                let changed = self.registry.lock().exit(SocketAddr::new(from.ip(), port));
                let (written, outcome, _) = self.answer(out, txid, ack, from);
                (written, outcome, changed)
            }
            // Answered before the token check, in `handle`.
            BodyView::Connect => self.answer(out, txid, TrackerToNode::BadToken, from),
        }
    }

    /// Writes `body` as the answer to request `txid` into `out`, reporting a refusal.
    fn answer(
        &self,
        out: &mut ReplyBuf,
        txid: u64,
        body: TrackerToNode,
        from: SocketAddr,
    ) -> Written {
        if let TrackerToNode::Reject { reason } = &body {
            self.emit(TrackerEvent::Rejected {
                from,
                reason: reason.clone(),
            });
        }
        let outcome = Outcome::of(Some(&body));
        let reply = TrackerReply {
            version: PROTOCOL_VERSION,
            txid,
            body,
        };
        (out.write(&reply), outcome, false)
    }

    fn emit(&self, event: TrackerEvent) {
        // Nobody listening, or a full queue, is not the tracker's problem.
        let _ = self.events.try_send(event);
    }

    fn local_addr(&self) -> SocketAddr {
        self.socket
            .local_addr()
            .unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
    }
}

/// The budget a request is charged to.
fn budget_kind(body: &BodyView<'_>) -> budget::Kind {
    match body {
        BodyView::Need { .. } => budget::Kind::Lookup,
        BodyView::Search { .. } => budget::Kind::Search,
        BodyView::Have(_) | BodyView::Exit { .. } | BodyView::Connect => budget::Kind::Announce,
    }
}

/// What answering a request did: the length of the reply written (or why none was), the
/// outcome, and whether the table changed.
type Written = (Result<usize>, Outcome, bool);

/// Reads the clock into `clock`; returns the time since it was last read.
fn lap(clock: &mut Instant) -> Duration {
    let now = Instant::now();
    let took = now.saturating_duration_since(*clock);
    *clock = now;
    took
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counting_alloc::allocations;
    use crate::key::NetworkKey;
    use crate::messages::{
        Announce, ContentId, Counters, NodeToTracker, TrackerRequest, decode_reply, encode_request,
    };
    use crate::tracker::{Rates, TableLimits, Tracker, TrackerConfig};

    /// A serving thread's state over a socket of its own, with rates no test reaches.
    fn service() -> Service {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let interval = Duration::from_secs(30);
        Service {
            socket,
            registry: Arc::new(Mutex::new(Registry::new(interval, TableLimits::default()))),
            stop: Arc::default(),
            answered: Arc::default(),
            metrics: Arc::default(),
            events: crossbeam_channel::bounded(16).0,
            interval_secs: 30,
            sweep: interval,
            sweeper: false,
            tokens: Arc::new(Tokens::new([7; 32])),
            started: Instant::now(),
            seal: None,
            replay: Arc::new(ReplayGuard::new()),
            budgets: Arc::new(Budgets::new(Rates {
                announces: 1e9,
                lookups: 1e9,
                searches: 1e9,
            })),
        }
    }

    /// Serving a look-up of fifty owners (under a name of one content or, weighed or
    /// pinned, of two), or a re-announce, allocates nothing: the request
    /// is received into the thread's buffers and read in place, the owners are written
    /// from the table into the thread's reply buffer, and the reply is sent from there.
    /// (Before, a look-up made some fifty allocations: each owner's name was copied.)
    #[test]
    fn a_look_up_and_a_re_announce_allocate_nothing() {
        let service = service();
        let asker = UdpSocket::bind("127.0.0.1:0").unwrap();
        let from = asker.local_addr().unwrap();
        let token = service.tokens.issue(from.ip(), service.started.elapsed());
        let datagram = |txid, body| {
            encode_request(&TrackerRequest {
                version: PROTOCOL_VERSION,
                txid,
                token,
                body,
            })
            .unwrap()
        };
        // Every node owns f.bin; under g.bin they disagree, half on each of two contents.
        let announces: Vec<Vec<u8>> = (1..=100u16)
            .map(|i| {
                let port = (i - 1) % 50 + 1;
                let (file, content) = match i {
                    ..=50 => ("f.bin", 1),
                    _ => ("g.bin", 1 + (port % 2) as u8),
                };
                datagram(
                    u64::from(i),
                    NodeToTracker::Have(Announce {
                        node: format!("node-{port}"),
                        port,
                        file: file.into(),
                        content: ContentId([content; 32]),
                        size: 1 << 30,
                        pieces: 1024,
                        complete: port % 2 == 0,
                        counters: Counters::default(),
                    }),
                )
            })
            .collect();
        let need_of = |file: &str, content| {
            datagram(
                99,
                NodeToTracker::Need {
                    file: file.into(),
                    numwant: 50,
                    content,
                },
            )
        };
        let need = need_of("f.bin", None);
        // Weighed between its two contents, and pinned to one.
        let disputed = [
            need_of("g.bin", None),
            need_of("g.bin", Some(ContentId([2; 32]))),
        ];
        let (mut inbox, mut outbox) = (Inbox::new(), Outbox::new());
        let mut sent = 0;
        let to = service.socket.local_addr().unwrap();
        // Sent over the socket and served one request to a burst, as a thread with nothing
        // else queued does: taken, answered and replied to as `run` does.
        let mut serve = |datagram: &[u8]| {
            asker.send_to(datagram, to).unwrap();
            service.serve_burst(&mut inbox, &mut outbox).unwrap()
        };
        // The first round fills the table and grows its scratch space: that allocates,
        // as the count shows.
        let before = allocations();
        for announce in &announces {
            sent += serve(announce);
        }
        sent += serve(&need);
        for need in &disputed {
            sent += serve(need);
        }
        assert!(allocations() - before > 50, "filling the table is counted");
        let before = allocations();
        for _ in 0..20 {
            for need in &disputed {
                sent += serve(need);
            }
            sent += serve(&need);
            for announce in &announces {
                sent += serve(announce);
            }
        }
        assert_eq!(allocations() - before, 0, "allocations while serving");
        // And every one of them was answered: the last look-up lists all fifty owners.
        assert_eq!(sent, 2163);
        // Most of those replies overflowed the asker's buffer; drain it and ask once more.
        let mut buf = vec![0u8; crate::messages::MAX_DATAGRAM_LEN];
        asker.set_nonblocking(true).unwrap();
        while asker.recv(&mut buf).is_ok() {}
        asker.set_nonblocking(false).unwrap();
        asker
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(serve(&need), 1);
        let n = asker.recv(&mut buf).unwrap();
        let TrackerToNode::Owners { owners, .. } = decode_reply(&buf[..n]).unwrap().body else {
            panic!("expected the owners");
        };
        assert_eq!(owners.len(), 50);
        assert!(
            owners[..25].iter().all(|o| o.complete) && owners[25..].iter().all(|o| !o.complete)
        );
    }

    #[test]
    fn a_request_sealed_outside_the_replay_window_is_told_the_clock_skew() {
        let key = NetworkKey::from_bytes([4; 32]);
        let config = TrackerConfig::new("127.0.0.1:0".parse().unwrap()).key(key.clone());
        let (tracker, events) = Tracker::start(config).unwrap();
        let seal = DatagramSeal::new(&key);
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let request = encode_request(&TrackerRequest {
            version: PROTOCOL_VERSION,
            txid: 77,
            token: [0; 16],
            body: NodeToTracker::Connect,
        })
        .unwrap();
        let ask = |sent: u64| {
            let datagram = seal.seal_at(Direction::Request, &request, sent).unwrap();
            socket.send_to(&datagram, tracker.local_addr()).unwrap();
            let mut buf = [0u8; 2048];
            let n = socket.recv(&mut buf).unwrap();
            assert!(n <= datagram.len(), "never larger than the request");
            let (_, body) = seal.open(Direction::Reply, &mut buf[..n]).unwrap();
            decode_reply(body).unwrap()
        };
        let now = unix_millis();
        for (offset, expected) in [(-90_000i64, -90_000i64), (60_000, 60_000)] {
            let reply = ask(now.saturating_add_signed(offset));
            assert_eq!(reply.txid, 77);
            match reply.body {
                TrackerToNode::ClockSkew { ahead_ms } => {
                    assert!(ahead_ms.abs_diff(expected) < 5_000, "{ahead_ms}");
                }
                other => panic!("expected the clock skew, got {other:?}"),
            }
            match events.recv_timeout(Duration::from_secs(10)).unwrap() {
                TrackerEvent::Rejected { reason, .. } => {
                    assert!(reason.contains("outside the replay window"), "{reason}");
                }
                other => panic!("expected a rejection, got {other:?}"),
            }
        }
        assert!(matches!(
            ask(unix_millis()).body,
            TrackerToNode::Token { .. }
        ));
        tracker.shutdown().unwrap();
    }
}
