//! Tracker-coordinated peer-to-peer file distribution: every piece verified, fetched from
//! several owners at once, with memory bounded by the pieces in flight.
//!
//! A [`Tracker`] keeps which nodes own which files. A [`Node`] shares files from its folder
//! and downloads files from other nodes: it asks the tracker for the owners, asks one for
//! the size and the BLAKE3 hash of every piece, divides the pieces among the owners, fetches
//! them in parallel, verifies each piece before writing it, and renames the finished file
//! into place. Both are handles over threads they own, driven by channels; dropping a
//! handle shuts it down. A tracker and nodes given the same [`NetworkKey`] form a private
//! network: tracker datagrams are sealed, peer connections encrypted, outsiders refused.
//!
//! # Layout
//!
//! - [`messages`]: every wire type and the framing; the one place bytes become messages.
//! - [`split`]: pure arithmetic: a size divided among owners, and the piece layout of a file.
//! - [`manifest`]: a file's piece hashes and the content id that commits to them.
//! - [`tracker`]: the tracker's owner table, its UDP service, the [`TrackerClient`] for one
//!   tracker and the [`TrackerSet`] for several (each file on `k` of them, chosen by
//!   rendezvous hashing; a silent one skipped, then asked again).
//! - [`node`]: the node: serving peers, scheduling and verifying downloads.
//! - [`key`]: the network key of a private network, and sealed tracker datagrams.
//! - [`error`]: the one [`Error`] type. `{e}` prints an error's own message; [`report`]
//!   prints it with its chain of causes ("peer 10.0.0.7:7000: reading frame: connection
//!   reset by peer"), as the binaries do.
//!
//! - `http` (cargo feature `http`, on by default): Prometheus metrics, a JSON status and a
//!   live page for a tracker or node (`TrackerConfig::http`, `NodeConfig::http`). The
//!   figures behind them are always there: [`Tracker::metrics`], [`Node::metrics`],
//!   [`Node::status`], [`Download::progress`].
//!
//! Events and results arrive on [`crossbeam_channel`] receivers, re-exported here so a
//! program can `select!` over several nodes' events without naming the crate itself.
//!
//! # Example
//!
//! A tracker and two nodes on `127.0.0.1`, moving one file:
//!
//! ```
//! use p2ptorrent::{Node, NodeConfig, Tracker, TrackerConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (tracker, _table_events) = Tracker::start(TrackerConfig::new("127.0.0.1:0".parse()?))?;
//! let dirs = (tempfile::tempdir()?, tempfile::tempdir()?);
//! std::fs::write(dirs.0.path().join("hello.txt"), b"hello, swarm")?;
//!
//! let config = |name, dir: &std::path::Path| {
//!     NodeConfig::new(name, dir)
//!         .listen("127.0.0.1:0".parse().unwrap())
//!         .tracker(tracker.local_addr())
//! };
//! let (a, _a_events) = Node::start(config("A", dirs.0.path()))?;
//! let (b, _b_events) = Node::start(config("B", dirs.1.path()))?;
//!
//! a.share("hello.txt")?;
//! let report = b.download("hello.txt")?.wait()?;
//! assert_eq!(std::fs::read(&report.path)?, b"hello, swarm");
//!
//! b.shutdown()?;
//! a.shutdown()?;
//! tracker.shutdown()?;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod error;
mod host;
#[cfg(feature = "http")]
pub mod http;
pub mod key;
pub mod manifest;
pub mod messages;
pub mod node;
mod session;
pub mod split;
pub mod tracker;
pub mod values;

#[cfg(test)]
mod counting_alloc;

pub use crossbeam_channel;
pub use error::{Error, KeyProblem, Result, report};
pub use key::NetworkKey;
pub use node::{
    Download, DownloadId, DownloadProgress, DownloadReport, Event, Node, NodeConfig, NodeMetrics,
    ShareReport, Status, parse_rate,
};
pub use tracker::{
    Snapshot, Tracker, TrackerClient, TrackerConfig, TrackerEvent, TrackerMetrics, TrackerSet,
};
pub use values::{ContentId, Counters, OwnerInfo, SearchHit};
