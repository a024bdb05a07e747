//! `tracker`: runs a p2ptorrent tracker and prints its table whenever it changes.

#[path = "common/addr.rs"]
mod addr;
#[path = "common/httpflags.rs"]
mod httpflags;
#[path = "common/keyflags.rs"]
mod keyflags;
#[macro_use]
#[path = "common/say.rs"]
mod say;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use crossbeam_channel::{after, bounded, never, select};
use p2ptorrent::error::report;
use p2ptorrent::tracker::{Rates, TableLimits};
use p2ptorrent::{Snapshot, Tracker, TrackerConfig, TrackerEvent};

/// What is printed at most once per this: the table, and counts of what was refused.
const PRINT_EVERY: Duration = Duration::from_secs(1);
/// A table with more rows than this is printed as a one-line summary.
const MAX_PRINTED_ROWS: usize = 40;

/// Keeps which nodes own which files, and answers nodes over UDP.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// UDP address to listen on, HOST:PORT (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:12340", value_parser = addr::socket_addr)]
    listen: SocketAddr,
    /// Seconds between a node's announces; silent owners expire after three.
    #[arg(long, default_value_t = 30)]
    interval: u64,
    /// Nodes (serving ports) listed per address: raise it to run many nodes on one host.
    #[arg(long, default_value_t = TableLimits::default().nodes_per_address, value_name = "N")]
    nodes_per_address: usize,
    /// Announces and look-ups served per second to one address (each with bursts of
    /// twice as many); searches get a twentieth of it.
    #[arg(long, default_value_t = Rates::default().lookups, value_name = "N")]
    requests_per_second: f64,
    /// Print only the start line and errors, not the table.
    #[arg(short, long)]
    quiet: bool,
    /// Run a private network: answer only datagrams sealed under the key in FILE, and seal
    /// every reply.
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
        return keyflags::make_key("tracker", path);
    }
    let per_second = args.requests_per_second.max(0.1);
    let mut config = TrackerConfig::new(args.listen)
        .interval(Duration::from_secs(args.interval))
        .limits(TableLimits {
            nodes_per_address: args.nodes_per_address.max(1),
            ..TableLimits::default()
        })
        .rates(Rates {
            announces: per_second,
            lookups: per_second,
            searches: per_second / 20.0,
        });
    match keyflags::load_key(args.key.as_deref()) {
        Ok(key) => config.key = key,
        Err(e) => {
            esay!("tracker: {e}");
            return ExitCode::FAILURE;
        }
    }
    match httpflags::config(args.http, args.http_token.as_deref()) {
        Ok(http) => config.http = http,
        Err(e) => {
            esay!("tracker: {e}");
            return ExitCode::FAILURE;
        }
    }
    let network = keyflags::describe(config.key.as_ref());
    let (tracker, events) = match Tracker::start(config) {
        Ok(started) => started,
        Err(e) => {
            esay!("tracker: {}", report(&e));
            return ExitCode::FAILURE;
        }
    };
    say!(
        "tracker listening on {} (announce interval {} s, {network}){}",
        tracker.local_addr(),
        args.interval.max(1),
        httpflags::describe(tracker.http_addr())
    );
    let (stop_tx, stop_rx) = bounded(1);
    if let Err(e) = ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    }) {
        esay!("tracker: cannot handle signals: {e}");
    }
    let mut log = Log::default();
    loop {
        let wake = log.next_print.map_or_else(never, |at| {
            after(at.saturating_duration_since(Instant::now()))
        });
        select! {
            recv(stop_rx) -> _ => break,
            recv(events) -> event => match event {
                Ok(event) => log.note(event),
                Err(_) => break,
            },
            recv(wake) -> _ => log.print(&tracker, args.quiet),
        }
    }
    log.print(&tracker, args.quiet);
    say!("tracker stopping");
    match tracker.shutdown() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            esay!("tracker: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// What happened since the last print, and when the next may be.
#[derive(Default)]
struct Log {
    changed: bool,
    refused: u64,
    malformed: u64,
    throttled: u64,
    from: HashSet<std::net::SocketAddr>,
    last_refusal: Option<String>,
    last_print: Option<Instant>,
    /// When the pending news is due; `None` with nothing pending.
    next_print: Option<Instant>,
}

impl Log {
    fn note(&mut self, event: TrackerEvent) {
        match event {
            TrackerEvent::TableChanged => self.changed = true,
            TrackerEvent::Rejected { from, reason } => {
                self.refused += 1;
                self.last_refusal = Some(format!("{from}: {reason}"));
                self.from.insert(from);
            }
            TrackerEvent::Malformed { from } => {
                self.malformed += 1;
                self.from.insert(from);
            }
            TrackerEvent::Throttled { from } => {
                self.throttled += 1;
                self.from.insert(from);
            }
            _ => return,
        }
        // Bounded, whatever arrives: a flood of refusals is counted, not echoed.
        if self.from.len() > 1024 {
            self.from.clear();
        }
        if self.next_print.is_none() {
            let due = self
                .last_print
                .map_or_else(Instant::now, |t| t + PRINT_EVERY);
            self.next_print = Some(due);
        }
    }

    fn print(&mut self, tracker: &Tracker, quiet: bool) {
        self.next_print = None;
        self.last_print = Some(Instant::now());
        if std::mem::take(&mut self.changed) && !quiet {
            let table = tracker.snapshot();
            if table.files.len() + table.nodes.len() > MAX_PRINTED_ROWS {
                say!("{}", summary(&table));
            } else {
                say_raw!("{table}");
            }
        }
        let addresses = self.from.len();
        self.from.clear();
        let refused = std::mem::take(&mut self.refused);
        match (refused, self.last_refusal.take()) {
            (1, Some(last)) => esay!("refused {last}"),
            (n, Some(last)) if n > 1 => {
                esay!("refused {n} requests in the last second (the last: {last})");
            }
            _ => {}
        }
        let dropped = std::mem::take(&mut self.malformed);
        if dropped > 0 {
            esay!("dropped {dropped} malformed datagrams");
        }
        let throttled = std::mem::take(&mut self.throttled);
        if throttled > 0 {
            esay!("throttled {throttled} requests over their address's rate");
        }
        if refused + dropped + throttled > 1 && addresses > 1 {
            esay!("  (from {addresses} addresses)");
        }
    }
}

/// One line for a table too large to print whole.
fn summary(table: &Snapshot) -> String {
    let owners: usize = table.files.iter().map(|f| f.owners.len()).sum();
    format!(
        "table: {} files, {owners} owners, {} nodes (over {MAX_PRINTED_ROWS} rows: summary only)",
        table.files.len(),
        table.nodes.len()
    )
}
