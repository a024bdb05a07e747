//! The read-only web side of a tracker or node (feature `http`): Prometheus metrics at
//! `/metrics`, a JSON status at `/api/status`, and a page at `/` that shows the same and
//! updates itself.
//!
//! Turned on with [`TrackerConfig::http`](crate::TrackerConfig::http) or
//! [`NodeConfig::http`](crate::NodeConfig::http). The server is small and owned: one
//! `http-accept` thread hands connections to [`WORKERS`] `http-serve` threads through a
//! queue of [`QUEUED`]; a connection that finds the queue full, or whose address (an IPv6
//! client's /64) already has [`PER_ADDRESS`] connections queued or being served, is closed
//! at once, so one client trickling request heads can hold at most half the workers. Each connection
//! carries one request (`Connection: close`), whose head must arrive whole, within
//! [`HEAD_MAX`] bytes and [`REQUEST_TIME`]; requests are parsed by `httparse`. The handle
//! joins every thread when it is dropped, breaking any connection still open.
//!
//! Nothing served changes state: only `GET` and `HEAD` are answered. The server binds
//! where it is told (loopback unless told otherwise, in the binaries); bound anywhere but
//! loopback, or in a network with a key, it requires a bearer token (`Authorization:
//! Bearer T`, or `?token=T` for a browser opening the page), and refuses to start without
//! one. A wrong or missing token gets 401.

mod expose;

pub(crate) use expose::{node_metrics, node_status, tracker_metrics, tracker_status};

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, bounded};
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::host::address_key;
use crate::tracker::wake_addr;

/// Threads answering requests.
pub const WORKERS: usize = 4;
/// Connections accepted and waiting for a worker, at most.
pub const QUEUED: usize = 32;
/// Connections from one IP address queued or being served at once, at most: enough for a
/// scraper and a browser, too few for one client to hold every worker.
pub const PER_ADDRESS: usize = WORKERS / 2;
/// Longest request head read (request line and headers).
pub const HEAD_MAX: usize = 8 * 1024;
/// Time a connection has to send its request head.
pub const REQUEST_TIME: Duration = Duration::from_secs(5);
/// Most headers a request may carry.
const HEADERS_MAX: usize = 32;

/// The page served at `/`: one file, no outside resources.
const PAGE: &str = include_str!("http/page.html");

/// Where the web side listens, and the token it asks for.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpConfig {
    /// The TCP address to serve on; port 0 picks a free port.
    pub addr: SocketAddr,
    /// The bearer token every request must carry; `None` serves anyone (loopback only,
    /// and only without a network key).
    pub token: Option<String>,
}

impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConfig")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "…"))
            .finish()
    }
}

impl HttpConfig {
    /// Serves on `addr`, without a token.
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, token: None }
    }

    /// Requires `token` on every request.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Requires the token held in the file at `path` (its first line, trimmed).
    ///
    /// # Errors
    ///
    /// [`Error::File`] if the file cannot be read, [`Error::InvalidParameter`] if it holds
    /// no token.
    pub fn token_file(self, path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::File {
            op: "reading the HTTP token from",
            path: path.to_owned(),
            source,
        })?;
        let token = text.lines().next().unwrap_or("").trim();
        if token.is_empty() {
            return Err(Error::InvalidParameter("the HTTP token file is empty"));
        }
        Ok(self.token(token))
    }
}

/// What the server shows: each called on a worker thread, per request.
pub(crate) struct Views {
    /// Prometheus text.
    pub metrics: Box<dyn Fn() -> String + Send + Sync>,
    /// JSON.
    pub status: Box<dyn Fn() -> String + Send + Sync>,
}

/// A running web server. Dropping it stops it and joins its threads.
#[derive(Debug)]
pub(crate) struct HttpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    open: Arc<Mutex<HashMap<usize, TcpStream>>>,
    threads: Vec<JoinHandle<()>>,
}

impl HttpServer {
    /// Binds `config.addr` and starts serving `views`. `keyed`: the network has a key.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] if a token is needed and none is set, [`Error::Bind`]
    /// if the address cannot be bound, [`Error::Spawn`] if a thread cannot start.
    pub fn start(config: &HttpConfig, keyed: bool, views: Views) -> Result<Self> {
        let needs_token = keyed || !config.addr.ip().is_loopback();
        if needs_token && config.token.is_none() {
            return Err(Error::InvalidParameter(
                "serving HTTP beyond loopback, or in a network with a key, needs a token",
            ));
        }
        let bind_err = |source| Error::Bind {
            addr: config.addr,
            source,
        };
        let listener = TcpListener::bind(config.addr).map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        let mut server = Self {
            addr,
            stop: Arc::new(AtomicBool::new(false)),
            open: Arc::default(),
            threads: Vec::new(),
        };
        let (queue, queued) = bounded::<Admitted>(QUEUED);
        let shared = Arc::new(Worker {
            views,
            token: config.token.clone(),
            open: Arc::clone(&server.open),
            stop: Arc::clone(&server.stop),
        });
        for i in 0..WORKERS {
            let (worker, queued) = (Arc::clone(&shared), queued.clone());
            server.spawn("http-serve", move || worker.run(i, &queued))?;
        }
        let stop = Arc::clone(&server.stop);
        let per_ip = Arc::new(Mutex::new(HashMap::new()));
        server.spawn("http-accept", move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                // A failed accept, an address over its share or a full queue: the
                // connection is dropped, and closed.
                if let Ok(stream) = stream
                    && let Some(admitted) = Admitted::new(stream, &per_ip)
                {
                    let _ = queue.try_send(admitted);
                }
            }
        })?;
        Ok(server)
    }

    /// The address served, with the real port.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn spawn(&mut self, name: &'static str, f: impl FnOnce() + Send + 'static) -> Result<()> {
        let handle = thread::Builder::new()
            .name(name.into())
            .spawn(f)
            .map_err(|source| Error::Spawn { name, source })?;
        self.threads.push(handle);
        Ok(())
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop, which then ends and drops the queue; the workers see it
        // close. Connections mid-request are broken so no worker waits out a slow client.
        let _ = TcpStream::connect_timeout(&wake_addr(self.addr), Duration::from_secs(1));
        for stream in self.open.lock().values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

/// What every `http-serve` thread shares.
struct Worker {
    views: Views,
    token: Option<String>,
    /// The connection each worker is on, so shutdown can break it.
    open: Arc<Mutex<HashMap<usize, TcpStream>>>,
    stop: Arc<AtomicBool>,
}

/// An answer, before it is written.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    extra: &'static str,
}

/// An accepted connection, and its place in its address's share.
struct Admitted {
    stream: TcpStream,
    share: Share,
}

/// One connection counted against its address until dropped.
struct Share {
    ip: IpAddr,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Admitted {
    /// Counts `stream` against its host (an IPv6 client by its /64, which one host usually
    /// holds whole); `None` if the host has its share already.
    fn new(stream: TcpStream, per_ip: &Arc<Mutex<HashMap<IpAddr, usize>>>) -> Option<Self> {
        let host = address_key(stream.peer_addr().ok()?.ip());
        let share = Share::take(host, per_ip)?;
        Some(Self { stream, share })
    }
}

impl Share {
    /// Takes a place in `ip`'s share; `None` if it has [`PER_ADDRESS`] already.
    fn take(ip: IpAddr, per_ip: &Arc<Mutex<HashMap<IpAddr, usize>>>) -> Option<Self> {
        let mut counts = per_ip.lock();
        let n = counts.entry(ip).or_insert(0);
        if *n >= PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(Self {
            ip,
            per_ip: Arc::clone(per_ip),
        })
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut counts = self.per_ip.lock();
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

impl Worker {
    fn run(&self, id: usize, queued: &Receiver<Admitted>) {
        while let Ok(Admitted { mut stream, share }) = queued.recv() {
            if let Ok(clone) = stream.try_clone() {
                self.open.lock().insert(id, clone);
            }
            // Registered first, then the flag: shutdown either breaks this connection or
            // is seen here.
            if !self.stop.load(Ordering::SeqCst) {
                // A client that goes away mid-answer is not the server's problem.
                let _ = self.serve(&mut stream);
            }
            self.open.lock().remove(&id);
            // The share is given back before the client can see the end: a client that
            // asks again at once, as soon as its answer is whole, is not refused for a
            // connection it has finished with.
            drop(share);
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn serve(&self, stream: &mut TcpStream) -> std::io::Result<()> {
        let deadline = Instant::now() + REQUEST_TIME;
        stream.set_write_timeout(Some(REQUEST_TIME))?;
        let mut head = vec![0u8; HEAD_MAX];
        let mut len = 0;
        let reply = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break plain(408, "the request took too long\n");
            }
            stream.set_read_timeout(Some(left))?;
            let n = match stream.read(&mut head[len..]) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if crate::tracker::is_timeout(&e) => continue,
                Err(e) => return Err(e),
            };
            len += n;
            let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&head[..len]) {
                Ok(httparse::Status::Complete(_)) => break self.answer(&req),
                Ok(httparse::Status::Partial) if len < HEAD_MAX => {}
                Ok(httparse::Status::Partial) => break plain(431, "request head too large\n"),
                Err(_) => break plain(400, "malformed request\n"),
            }
        };
        let head_only = head.starts_with(b"HEAD ");
        write_reply(stream, &reply, head_only)
    }

    fn answer(&self, req: &httparse::Request<'_, '_>) -> Reply {
        let method = req.method.unwrap_or("");
        if method != "GET" && method != "HEAD" {
            return Reply {
                extra: "Allow: GET, HEAD\r\n",
                ..plain(405, "read-only: GET and HEAD only\n")
            };
        }
        let target = req.path.unwrap_or("/");
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        if let Some(want) = &self.token {
            let bearer = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("authorization"))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            let queried = query.split('&').find_map(|kv| kv.strip_prefix("token="));
            let given = bearer.or(queried).unwrap_or("");
            if !same(given.as_bytes(), want.as_bytes()) {
                return Reply {
                    extra: "WWW-Authenticate: Bearer\r\n",
                    ..plain(401, "a valid bearer token is required\n")
                };
            }
        }
        match path {
            "/" => Reply {
                status: 200,
                content_type: "text/html; charset=utf-8",
                body: PAGE.as_bytes().to_vec(),
                extra: "",
            },
            "/metrics" => Reply {
                status: 200,
                content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body: (self.views.metrics)().into_bytes(),
                extra: "",
            },
            "/api/status" => Reply {
                status: 200,
                content_type: "application/json",
                body: (self.views.status)().into_bytes(),
                extra: "",
            },
            _ => plain(404, "not found\n"),
        }
    }
}

/// A plain-text answer.
fn plain(status: u16, text: &str) -> Reply {
    Reply {
        status,
        content_type: "text/plain; charset=utf-8",
        body: text.as_bytes().to_vec(),
        extra: "",
    }
}

fn write_reply(stream: &mut TcpStream, reply: &Reply, head_only: bool) -> std::io::Result<()> {
    let reason = match reply.status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "",
    };
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n{}Connection: close\r\n\r\n",
        reply.status,
        reply.content_type,
        reply.body.len(),
        reply.extra,
    );
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(&reply.body)?;
    }
    stream.flush()
}

/// Compares two tokens in time that depends on their lengths only.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn views() -> Views {
        Views {
            metrics: Box::new(|| "# EOF\n".into()),
            status: Box::new(|| "{}".into()),
        }
    }

    fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn a_token_is_required_beyond_loopback_or_under_a_key() {
        let open = HttpConfig::new("0.0.0.0:0".parse().unwrap());
        assert!(HttpServer::start(&open, false, views()).is_err());
        let local = HttpConfig::new("127.0.0.1:0".parse().unwrap());
        assert!(HttpServer::start(&local, true, views()).is_err());
        assert!(HttpServer::start(&local, false, views()).is_ok());
    }

    #[test]
    fn answers_only_reads_with_the_right_token() {
        let config = HttpConfig::new("127.0.0.1:0".parse().unwrap()).token("s3cret");
        let server = HttpServer::start(&config, true, views()).unwrap();
        let addr = server.addr();
        let ok = get(
            addr,
            "GET /api/status HTTP/1.1\r\nAuthorization: Bearer s3cret\r\n\r\n",
        );
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.ends_with("{}"), "{ok}");
        let query = get(addr, "GET /metrics?token=s3cret HTTP/1.1\r\n\r\n");
        assert!(query.starts_with("HTTP/1.1 200"), "{query}");
        for bad in ["Bearer s3creT", "Bearer ", "Basic s3cret"] {
            let r = get(
                addr,
                &format!("GET / HTTP/1.1\r\nAuthorization: {bad}\r\n\r\n"),
            );
            assert!(r.starts_with("HTTP/1.1 401"), "{bad}: {r}");
        }
        let post = get(
            addr,
            "POST / HTTP/1.1\r\nAuthorization: Bearer s3cret\r\n\r\n",
        );
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        let garbage = get(addr, "\u{1}\u{2} nonsense\r\n\r\n");
        assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(HEAD_MAX));
        assert!(get(addr, &huge).starts_with("HTTP/1.1 431"));
    }

    /// A client holding connections open without a word (a slow-loris) holds at most
    /// [`PER_ADDRESS`] workers; another address is answered meanwhile, not after the
    /// silent ones time out.
    /// Addresses of one IPv6 /64 share one host's share; another /64 has its own.
    #[test]
    fn an_ipv6_host_is_counted_by_its_64() {
        let per_ip = Arc::new(Mutex::new(HashMap::new()));
        let host = |i: u16| {
            address_key(IpAddr::from(std::net::Ipv6Addr::new(
                0x2001, 0xdb8, 0, 1, i, 0, 0, 1,
            )))
        };
        let held: Vec<Share> = (0..PER_ADDRESS as u16)
            .map(|i| Share::take(host(i), &per_ip).unwrap())
            .collect();
        assert!(
            Share::take(host(99), &per_ip).is_none(),
            "the /64 has its share"
        );
        let other = address_key("2001:db8:0:2::1".parse().unwrap());
        assert!(
            Share::take(other, &per_ip).is_some(),
            "another /64 is served"
        );
        drop(held);
        assert!(
            Share::take(host(7), &per_ip).is_some(),
            "given back on drop"
        );
    }

    #[test]
    fn one_address_cannot_hold_every_worker() {
        let config = HttpConfig::new("127.0.0.1:0".parse().unwrap());
        let server = HttpServer::start(&config, false, views()).unwrap();
        let addr = server.addr();
        let silent: Vec<TcpStream> = (0..10).map(|_| TcpStream::connect(addr).unwrap()).collect();
        // The rest of 127.0.0.0/8 is loopback too: a second address on this machine.
        let other =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let from: SocketAddr = "127.0.0.2:0".parse().unwrap();
        other.bind(&from.into()).unwrap();
        other.connect(&addr.into()).unwrap();
        let mut other = TcpStream::from(other);
        // Less than the time the silent ones have to send a head: waiting for them to
        // time out would fail this.
        other.set_read_timeout(Some(REQUEST_TIME / 2)).unwrap();
        other.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let mut out = String::new();
        other
            .read_to_string(&mut out)
            .expect("answered while another address held its connections open");
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        // Of the silent address's ten, those over its share were closed at once.
        let closed = silent
            .into_iter()
            .filter(|s| {
                let mut s = s;
                s.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                matches!(s.read(&mut [0u8; 1]), Ok(0))
            })
            .count();
        assert_eq!(closed, 10 - PER_ADDRESS);
    }

    #[test]
    fn dropping_the_server_breaks_a_silent_client_and_joins() {
        let server = HttpServer::start(
            &HttpConfig::new("127.0.0.1:0".parse().unwrap()),
            false,
            views(),
        )
        .unwrap();
        let mut silent = TcpStream::connect(server.addr()).unwrap();
        silent.write_all(b"GET / HT").unwrap();
        let began = Instant::now();
        drop(server);
        assert!(began.elapsed() < REQUEST_TIME, "{:?}", began.elapsed());
        let mut rest = Vec::new();
        let _ = silent.read_to_end(&mut rest);
    }
}
