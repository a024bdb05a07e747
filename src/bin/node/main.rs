//! `node`: runs a p2ptorrent node that shares and downloads files, driven by flags and by
//! commands typed on stdin.

#[path = "../common/addr.rs"]
mod addr;
#[path = "../common/httpflags.rs"]
mod httpflags;
#[path = "../common/keyflags.rs"]
mod keyflags;
#[macro_use]
#[path = "../common/say.rs"]
mod say;
mod progress;
mod prompt;

use std::io::{BufRead, IsTerminal};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use crossbeam_channel::{Receiver, Select, bounded, never};
use p2ptorrent::error::report;
use p2ptorrent::{Download, Event, Node, NodeConfig};
use progress::Progress;
use prompt::Command;

/// A p2ptorrent node: shares files from its folder and downloads files from other nodes,
/// coordinated by a tracker. Type commands on stdin (listed below) unless --no-prompt.
#[derive(Parser, Debug)]
#[command(
    version,
    override_usage = "node -n NAME -p PORT [PORT2] [OPTIONS]\n       node --make-key FILE",
    after_help = prompt::HELP
)]
struct Args {
    /// The node's name, shown in the tracker's table.
    #[arg(short = 'n', long = "name", required_unless_present = "make_key")]
    name: Option<String>,
    /// TCP port to serve peers on (0 = any). The original's second port is accepted and
    /// not needed: one TCP port carries both directions.
    #[arg(
        short = 'p',
        long = "port",
        num_args = 1..=2,
        required_unless_present = "make_key"
    )]
    ports: Vec<u16>,
    /// IP address (or host name) to serve peers on.
    #[arg(long, default_value = "0.0.0.0", value_parser = addr::ip)]
    bind: IpAddr,
    /// Folder holding the files [default: node_files/NAME].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// A tracker's UDP address: HOST:PORT, with a host name or an IP (IPv6 in brackets).
    /// Repeat for several trackers; every node should list the same ones.
    #[arg(long = "tracker", value_name = "HOST:PORT", default_value = "127.0.0.1:12340",
          value_parser = addr::socket_addr)]
    trackers: Vec<SocketAddr>,
    /// How many of the trackers hold each file (all, when fewer are listed).
    #[arg(long, value_name = "K", default_value_t = p2ptorrent::tracker::DEFAULT_REPLICAS)]
    tracker_replicas: usize,
    /// Share this file at start (repeatable): a name in the node's folder, or a path
    /// (with a `/`) to share a file where it lies, without copying it.
    #[arg(long = "upload", value_name = "FILE")]
    uploads: Vec<String>,
    /// Download this file at start (repeatable).
    #[arg(long = "download", value_name = "FILE")]
    downloads: Vec<String>,
    /// How many owners a download uses at once (the original used 2).
    #[arg(long, default_value_t = p2ptorrent::node::DEFAULT_MAX_OWNERS)]
    owners: usize,
    /// Limit what this node sends, in bytes per second (e.g. 16MiB, 500k).
    #[arg(long, value_name = "RATE", value_parser = rate)]
    upload_limit: Option<u64>,
    /// Limit what this node receives, in bytes per second (e.g. 16MiB, 500k).
    #[arg(long, value_name = "RATE", value_parser = rate)]
    download_limit: Option<u64>,
    /// Peers sent pieces at once; the others wait their turn, in order.
    #[arg(long, default_value_t = 4, value_name = "N")]
    upload_slots: usize,
    /// Most peer connections served at once.
    #[arg(long, default_value_t = 64, value_name = "N")]
    max_connections: usize,
    /// Most peer connections served at once from one IP address (raise it to run many
    /// nodes on one host).
    #[arg(long, default_value_t = 16, value_name = "N")]
    max_connections_per_ip: usize,
    /// Exit once the downloads finish; exit code 0 only if every one verified.
    #[arg(long)]
    exit_when_done: bool,
    /// Read no commands from stdin; run until SIGINT/SIGTERM (or, with --exit-when-done,
    /// until the downloads end).
    #[arg(long)]
    no_prompt: bool,
    /// Log every piece sent and received, with its number.
    #[arg(short, long)]
    verbose: bool,
    /// Join a private network: seal tracker datagrams and encrypt peer connections under
    /// the key in FILE; peers and trackers without it are refused.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Serve Prometheus metrics (/metrics), the status as JSON (/api/status) and a live
    /// page (/) on HOST:PORT, read-only. Bind loopback unless the web side must be reached
    /// from elsewhere: then, or with --key, it needs --http-token.
    #[arg(long, value_name = "HOST:PORT", value_parser = addr::socket_addr)]
    http: Option<SocketAddr>,
    /// Require the bearer token in FILE (its first line) on every web request; a browser
    /// opens the page as http://HOST:PORT/?token=TOKEN.
    #[arg(long, value_name = "FILE", requires = "http")]
    http_token: Option<PathBuf>,
    /// Write a new network key (32 random bytes, mode 0600) to FILE, which must not exist,
    /// and exit.
    #[arg(long, value_name = "FILE", exclusive = true)]
    make_key: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(path) = &args.make_key {
        return keyflags::make_key("node", path);
    }
    let (Some(name), Some(&port)) = (args.name.clone(), args.ports.first()) else {
        esay!("node: -n NAME and -p PORT are required");
        return ExitCode::FAILURE;
    };
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("node_files").join(&name));
    let mut config = NodeConfig::new(&name, dir)
        .listen(SocketAddr::new(args.bind, port))
        .trackers(args.trackers.iter().copied(), args.tracker_replicas)
        .max_owners(args.owners)
        .upload_slots(args.upload_slots)
        .max_connections(args.max_connections, args.max_connections_per_ip);
    config.upload_limit = args.upload_limit;
    config.download_limit = args.download_limit;
    // Bars would wipe what a person types at the prompt: lines then instead.
    let typing = !args.no_prompt && std::io::stdin().is_terminal();
    let (bars, lines) = (
        !args.verbose && !typing && std::io::stderr().is_terminal(),
        !args.verbose && typing,
    );
    // Each piece event wakes this thread: asked for only when printed or drawn.
    config.piece_events = args.verbose || bars || lines;
    match keyflags::load_key(args.key.as_deref()) {
        Ok(key) => config.key = key,
        Err(e) => {
            esay!("node {name}: {e}");
            return ExitCode::FAILURE;
        }
    }
    match httpflags::config(args.http, args.http_token.as_deref()) {
        Ok(http) => config.http = http,
        Err(e) => {
            esay!("node {name}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let network = keyflags::describe(config.key.as_ref());
    let (node, events) = match Node::start(config) {
        Ok(started) => started,
        Err(e) => {
            esay!("node {name}: {}", report(&e));
            return ExitCode::FAILURE;
        }
    };
    say!(
        "node {name} serving on {} from {}, {} ({network}){}",
        node.local_addr(),
        node.dir().display(),
        describe_trackers(&args.trackers, args.tracker_replicas),
        httpflags::describe(node.http_addr())
    );
    let mut session = Session {
        node,
        verbose: args.verbose,
        progress: Progress::new(bars, lines),
        pending: Vec::new(),
        started: 0,
        failures: 0,
    };
    let (stop_tx, stop_rx) = bounded(1);
    if let Err(e) = ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    }) {
        esay!("node: cannot handle signals: {e}");
    }
    for file in &args.uploads {
        session.run(Command::Upload(file.clone()));
    }
    if session.failures > 0 {
        // A share asked for on the command line that cannot start is a failed start: a
        // service manager must not see a healthy node that shares nothing.
        esay!("node {name}: not started: a file given with --upload cannot be shared");
        if let Err(e) = session.node.shutdown() {
            esay!("node {name}: {}", report(&e));
        }
        return ExitCode::FAILURE;
    }
    for file in &args.downloads {
        session.run(Command::Download(file.clone(), None));
    }
    let mut lines = if args.no_prompt {
        never()
    } else {
        stdin_lines()
    };
    loop {
        let nothing_left = session.pending.is_empty() && (session.started > 0 || args.no_prompt);
        if args.exit_when_done && nothing_left {
            break;
        }
        // Waits for a signal, a command, an event, or a download ending (each handle's
        // `ended` disconnects when its result is ready): nothing is polled.
        let ended: Vec<Receiver<()>> = session.pending.iter().map(|d| d.ended().clone()).collect();
        let mut waiting = Select::new();
        let (at_stop, at_lines, at_events) = (
            waiting.recv(&stop_rx),
            waiting.recv(&lines),
            waiting.recv(&events),
        );
        for e in &ended {
            waiting.recv(e);
        }
        let ready = waiting.select();
        match ready.index() {
            i if i == at_stop => {
                let _ = ready.recv(&stop_rx);
                break;
            }
            i if i == at_lines => match ready.recv(&lines) {
                Ok(line) => match prompt::parse(&line) {
                    Ok(Some(Command::Exit)) => break,
                    Ok(Some(cmd)) => session.run(cmd),
                    Ok(None) => {}
                    Err(msg) => esay!("{msg}"),
                },
                // End of input: no more commands. Downloads asked for with
                // --exit-when-done still finish; otherwise the node leaves now.
                Err(_) if args.exit_when_done && !session.pending.is_empty() => lines = never(),
                Err(_) => break,
            },
            i if i == at_events => match ready.recv(&events) {
                Ok(event) => session.show(&event),
                Err(_) => break,
            },
            i => {
                // A download ended: its channel disconnected.
                let _ = ready.recv(&ended[i - at_events - 1]);
            }
        }
        session.reap();
    }
    session.progress.clear();
    let unfinished = session.pending.len();
    let failures = session.failures;
    match session.node.shutdown() {
        Ok(()) => say!("node {name} left the network"),
        Err(e) => {
            esay!("node {name}: {}", report(&e));
            return ExitCode::FAILURE;
        }
    }
    if args.exit_when_done && (failures > 0 || unfinished > 0) {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// The running node and what the front end tracks of it.
struct Session {
    node: Node,
    verbose: bool,
    progress: Progress,
    pending: Vec<Download>,
    /// Downloads asked for so far.
    started: usize,
    failures: u32,
}

impl Session {
    fn run(&mut self, cmd: Command) {
        self.progress.clear();
        match cmd {
            // A path (anything with a `/`) is shared where it lies; a plain name, from the
            // node's folder.
            Command::Upload(file) => match if file.contains(std::path::MAIN_SEPARATOR) {
                self.node.share_path(&file)
            } else {
                self.node.share(&file)
            } {
                Ok(r) => say!(
                    "sharing {} ({} bytes, {} pieces, content {})",
                    r.file,
                    r.size,
                    r.pieces,
                    r.content
                ),
                Err(e) => {
                    self.failures += 1;
                    esay!("upload {file}: {}", report(&e));
                }
            },
            Command::Download(file, pin) => match match pin {
                Some(content) => self.node.download_content(&file, content),
                None => self.node.download(&file),
            } {
                Ok(d) => {
                    self.started += 1;
                    self.pending.push(d);
                }
                Err(e) => esay!("download {file}: {}", report(&e)),
            },
            Command::Cancel(file) => match self.pending.iter().find(|d| d.file() == file) {
                // Reported when it has stopped, by `reap`.
                Some(d) => d.cancel(),
                None => esay!("cancel {file}: not being downloaded"),
            },
            Command::Pause(file) => match self.pending.iter().find(|d| d.file() == file) {
                Some(d) if d.pause() => {}
                _ => esay!("pause {file}: not being downloaded"),
            },
            Command::Resume(file) => match self.pending.iter().find(|d| d.file() == file) {
                Some(d) if d.resume() => {}
                _ => esay!("resume {file}: not being downloaded"),
            },
            Command::Search(pattern) => match self.node.search(&pattern) {
                Ok(hits) if hits.is_empty() => say!("no file matches {pattern:?}"),
                Ok(hits) => {
                    for h in hits {
                        let owners: Vec<String> = h
                            .owners
                            .iter()
                            .map(|o| format!("{}@{}", o.node, o.addr))
                            .collect();
                        say!(
                            "{}  {} bytes  {}: {}\n  content {}",
                            h.file,
                            h.size,
                            plural(h.owner_count as usize, "owner"),
                            owners.join(", "),
                            h.content
                        );
                    }
                }
                Err(e) => esay!("search: {}", report(&e)),
            },
            Command::Status => match self.node.status() {
                Ok(s) => {
                    say!("node {} on {}", s.name, s.addr);
                    for f in &s.shared {
                        say!(
                            "  sharing {} ({} bytes, {} pieces)",
                            f.file,
                            f.size,
                            f.pieces
                        );
                    }
                    for d in &s.downloading {
                        let eta = d
                            .eta()
                            .map(|t| format!(", {} s left", t.as_secs()))
                            .unwrap_or_default();
                        say!(
                            "  downloading {}{} ({:.1} %, {}/{} pieces, {:.1} MiB/s{eta})",
                            d.file,
                            if d.paused { " (paused)" } else { "" },
                            100.0 * d.fraction(),
                            d.verified,
                            d.pieces,
                            d.rate() / f64::from(1 << 20)
                        );
                    }
                    say!("  {} peers connected", s.peers.len());
                    for t in &s.trackers {
                        let state = if t.up {
                            "answers"
                        } else {
                            "silent, skipped for now"
                        };
                        say!("  tracker {}: {state}", t.addr);
                    }
                    let c = s.counters;
                    say!(
                        "  sent {} files / {} bytes, received {} files / {} bytes",
                        c.files_sent,
                        c.bytes_sent,
                        c.files_received,
                        c.bytes_received
                    );
                }
                Err(e) => esay!("status: {}", report(&e)),
            },
            Command::Help => say!("{}", prompt::HELP),
            Command::Exit => {}
        }
    }

    /// Collects downloads that have ended and reports them.
    fn reap(&mut self) {
        let mut still = Vec::new();
        for d in self.pending.drain(..) {
            match d.wait_timeout(Duration::ZERO) {
                None => still.push(d),
                Some(Ok(r)) => {
                    self.progress.finish(&r.file);
                    let secs = r.elapsed.as_secs_f64().max(1e-6);
                    let resumed = if r.resumed > 0 {
                        format!(", {} pieces resumed", r.resumed)
                    } else {
                        String::new()
                    };
                    // The rate of what came over the network: resumed pieces were already here.
                    let fetched: u64 = r.from.iter().map(|(_, bytes)| bytes).sum();
                    say!(
                        "downloaded {} ({} bytes, {} pieces verified{resumed}) from {} in {:.2} s, {:.1} MiB/s",
                        r.file,
                        r.size,
                        r.pieces,
                        plural(r.from.len(), "owner"),
                        secs,
                        fetched as f64 / secs / f64::from(1 << 20)
                    );
                    for (owner, why) in &r.failed {
                        say!("  dropped owner {owner}: {why}");
                    }
                }
                Some(Err(e @ p2ptorrent::Error::Cancelled { .. })) => {
                    self.progress.finish(d.file());
                    say!("{e}");
                }
                Some(Err(e)) => {
                    self.progress.finish(d.file());
                    self.failures += 1;
                    esay!("download {}: {}", d.file(), report(&e));
                    if let p2ptorrent::Error::OwnersExhausted { missing, total, .. } = e
                        && missing < total
                    {
                        esay!(
                            "  the {} verified pieces are kept in {}.part; `download {}` resumes",
                            total - missing,
                            d.file(),
                            d.file()
                        );
                    }
                }
            }
        }
        self.pending = still;
    }

    fn show(&mut self, event: &Event) {
        match event {
            Event::SeveralContents {
                file,
                chosen,
                contents,
                ..
            } => {
                say!(
                    "note: {contents} different files are shared as {file}; taking content \
                     {chosen}, whose complete owners are on the most addresses \
                     (`search {file}` lists them; `download --content ID {file}` picks one)"
                );
            }
            Event::DownloadPaused { file, verified, .. } => {
                self.progress.clear();
                say!("paused {file} with {verified} pieces verified; `resume {file}` goes on");
            }
            Event::DownloadResumed { file, .. } => {
                self.progress.clear();
                say!("resumed {file}");
            }
            Event::DownloadStarted {
                file,
                size,
                pieces,
                resumed,
                owners,
                ..
            } => {
                self.progress.clear();
                let owners = plural(*owners, "owner");
                say!(
                    "downloading {file}: {size} bytes, {pieces} pieces, {owners} listed, {resumed} of them already here"
                );
                self.progress.start(file, *size, *pieces, *resumed);
            }
            Event::PieceReceived {
                file,
                piece,
                bytes,
                from,
                done,
                total,
                ..
            } => {
                if self.verbose {
                    say!(
                        "received piece {piece} of {file} ({bytes} bytes) from {from} [{done}/{total}]"
                    );
                }
                self.progress.piece(file, *bytes, *done);
            }
            Event::PieceSent { file, piece, to } if self.verbose => {
                say!("sent piece {piece} of {file} to {to}");
            }
            Event::PieceRejected {
                file, piece, from, ..
            } => {
                self.progress.clear();
                say!(
                    "piece {piece} of {file} from {from} failed verification; fetching it elsewhere"
                );
            }
            Event::OwnerFailed {
                file,
                node,
                owner,
                error,
                ..
            } => {
                self.progress.clear();
                match node.as_str() {
                    "" => say!("{file}: dropped owner {owner}: {error}"),
                    node => say!("{file}: dropped owner {node} ({owner}): {error}"),
                }
            }
            Event::FileChanged { file } => say!("{file} changed on disk; no longer shared"),
            Event::TrackerError { error } => esay!("re-announce failed: {error}"),
            Event::TrackerSilent { tracker, error } => {
                self.progress.clear();
                say!("tracker {tracker} is silent ({error}); using the others until it answers")
            }
            Event::TrackerBack { tracker } => {
                self.progress.clear();
                say!("tracker {tracker} answers again")
            }
            Event::PeerError { addr, error } if self.verbose => esay!("peer {addr}: {error}"),
            Event::AcceptFailed { error, wait } => {
                esay!("accepting connections: {error}; trying again in {wait:?}")
            }
            _ => {}
        }
    }
}

/// Parses a `--upload-limit`/`--download-limit` value.
fn rate(text: &str) -> Result<u64, String> {
    p2ptorrent::parse_rate(text).map_err(|e| e.to_string())
}

/// Returns "1 owner", "2 owners".
fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Reads stdin lines on a thread of their own, since a blocking read cannot be
/// interrupted. The thread is not joined: it holds no resources and ends with the process.
fn stdin_lines() -> Receiver<String> {
    let (tx, rx) = bounded(16);
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    if spawned.is_err() {
        esay!("node: cannot read commands from stdin");
    }
    rx
}

/// "tracker A" or "trackers A, B, C (each file on K)", for the start line.
fn describe_trackers(trackers: &[SocketAddr], replicas: usize) -> String {
    let list: Vec<String> = trackers.iter().map(ToString::to_string).collect();
    match list.as_slice() {
        [one] => format!("tracker {one}"),
        _ => format!(
            "trackers {} (each file on {})",
            list.join(", "),
            replicas.min(list.len())
        ),
    }
}
