//! `tracker`: runs a p2ptorrent tracker and prints its table whenever it changes.

#[path = "common/keyflags.rs"]
mod keyflags;
#[macro_use]
#[path = "common/say.rs"]
mod say;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use crossbeam_channel::{bounded, select};
use p2ptorrent::error::report;
use p2ptorrent::{Tracker, TrackerConfig, TrackerEvent};

/// Keeps which nodes own which files, and answers nodes over UDP.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// UDP address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:12340")]
    listen: SocketAddr,
    /// Seconds between a node's announces; silent owners expire after three.
    #[arg(long, default_value_t = 30)]
    interval: u64,
    /// Print only the start line and errors, not the table.
    #[arg(short, long)]
    quiet: bool,
    /// Run a private network: answer only datagrams sealed under the key in FILE, and seal
    /// every reply.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
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
    let mut config = TrackerConfig::new(args.listen).interval(Duration::from_secs(args.interval));
    match keyflags::load_key(args.key.as_deref()) {
        Ok(key) => config.key = key,
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
        "tracker listening on {} (announce interval {} s, {network})",
        tracker.local_addr(),
        args.interval.max(1)
    );
    let (stop_tx, stop_rx) = bounded(1);
    if let Err(e) = ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    }) {
        esay!("tracker: cannot handle signals: {e}");
    }
    loop {
        select! {
            recv(stop_rx) -> _ => break,
            recv(events) -> event => match event {
                Ok(TrackerEvent::TableChanged) => {
                    // Print once for a burst of changes.
                    while let Ok(TrackerEvent::TableChanged) = events.try_recv() {}
                    if !args.quiet {
                        say_raw!("{}", tracker.snapshot());
                    }
                }
                Ok(TrackerEvent::Rejected { from, reason }) => esay!("refused {from}: {reason}"),
                Ok(TrackerEvent::Malformed { from }) => esay!("dropped a malformed datagram from {from}"),
                Ok(_) => {}
                Err(_) => break,
            },
        }
    }
    say!("tracker stopping");
    match tracker.shutdown() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            esay!("tracker: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}
