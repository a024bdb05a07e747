//! What a node counts, for people watching it: bytes and pieces moved, pieces that failed
//! verification, downloads by outcome, owners dropped by reason, connections, time spent
//! waiting on rate limits, and the trackers' health.
//!
//! The counts are plain atomics, always kept (a relaxed add per piece, not per byte);
//! [`Node::metrics`](crate::Node::metrics) copies them into a [`NodeMetrics`]. The `http`
//! feature serves that copy as Prometheus text (see `crate::http`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::Error;
use crate::messages::Counters;
use crate::tracker::TrackerHealth;

/// A copy of a node's counters at one moment, from [`Node::metrics`](crate::Node::metrics).
///
/// Every field but `connections_open` only grows while the node runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeMetrics {
    /// Piece bytes sent to peers.
    pub bytes_sent: u64,
    /// Verified piece bytes received from peers.
    pub bytes_received: u64,
    /// Pieces sent whole to peers.
    pub pieces_sent: u64,
    /// Pieces received and verified.
    pub pieces_received: u64,
    /// Pieces received that failed verification (their owner is dropped).
    pub pieces_rejected: u64,
    /// Downloads started.
    pub downloads_started: u64,
    /// Downloads that ended with every piece verified and the file published.
    pub downloads_finished: u64,
    /// Downloads that ended with an error (other than a cancel).
    pub downloads_failed: u64,
    /// Downloads cancelled by the caller.
    pub downloads_cancelled: u64,
    /// Owners a download gave up on after an error (refused, broke, fell silent).
    pub owners_failed: u64,
    /// Owners dropped for holding pieces far longer than the others took.
    pub owners_slow: u64,
    /// Owners dropped for sending a piece that failed verification.
    pub owners_lied: u64,
    /// Peer connections open now, served and fetched from.
    pub connections_open: u64,
    /// Connections refused at the connection caps.
    pub connections_refused: u64,
    /// Idle served connections closed to make room for a newcomer.
    pub connections_reaped: u64,
    /// Time spent waiting on the upload limit, summed over the threads that waited.
    pub upload_limit_wait: Duration,
    /// Time spent waiting on the download limit, summed over the threads that waited.
    pub download_limit_wait: Duration,
    /// Trackers answering now (or not asked yet).
    pub trackers_up: u64,
    /// Trackers silent now: skipped until they are due to be asked again.
    pub trackers_silent: u64,
    /// Times a tracker went silent.
    pub tracker_silences: u64,
    /// Piece bytes asked of owners and not yet received, over every download, as each
    /// download last counted them (every 100 ms).
    pub bytes_in_flight: u64,
}

/// Why a download gave up on an owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    Failed,
    Slow,
    Lied,
}

impl Dropped {
    /// Classifies the error an owner's worker stopped with.
    pub fn of(error: &Error) -> Self {
        match error {
            Error::HashMismatch { .. } => Self::Lied,
            Error::Slow { .. } => Self::Slow,
            _ => Self::Failed,
        }
    }
}

/// How a download ended, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    Finished,
    Failed,
    Cancelled,
}

/// The live counters, shared by every thread of a node.
#[derive(Debug, Default)]
pub(crate) struct Cells {
    pub files_sent: AtomicU64,
    pub files_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub pieces_sent: AtomicU64,
    pub pieces_received: AtomicU64,
    pub pieces_rejected: AtomicU64,
    downloads_started: AtomicU64,
    downloads_finished: AtomicU64,
    downloads_failed: AtomicU64,
    downloads_cancelled: AtomicU64,
    owners_failed: AtomicU64,
    owners_slow: AtomicU64,
    owners_lied: AtomicU64,
    pub connections_refused: AtomicU64,
    pub connections_reaped: AtomicU64,
    upload_wait_ns: AtomicU64,
    download_wait_ns: AtomicU64,
}

impl Cells {
    /// The counters a node announces to the tracker.
    pub fn counters(&self) -> Counters {
        Counters {
            files_sent: get(&self.files_sent),
            files_received: get(&self.files_received),
            bytes_sent: get(&self.bytes_sent),
            bytes_received: get(&self.bytes_received),
        }
    }

    /// Everything, with `connections_open` and `bytes_in_flight` as counted by the caller.
    pub fn snapshot(
        &self,
        connections_open: u64,
        bytes_in_flight: u64,
        trackers: &[TrackerHealth],
    ) -> NodeMetrics {
        let up = trackers.iter().filter(|t| t.up).count() as u64;
        NodeMetrics {
            bytes_sent: get(&self.bytes_sent),
            bytes_received: get(&self.bytes_received),
            pieces_sent: get(&self.pieces_sent),
            pieces_received: get(&self.pieces_received),
            pieces_rejected: get(&self.pieces_rejected),
            downloads_started: get(&self.downloads_started),
            downloads_finished: get(&self.downloads_finished),
            downloads_failed: get(&self.downloads_failed),
            downloads_cancelled: get(&self.downloads_cancelled),
            owners_failed: get(&self.owners_failed),
            owners_slow: get(&self.owners_slow),
            owners_lied: get(&self.owners_lied),
            connections_open,
            connections_refused: get(&self.connections_refused),
            connections_reaped: get(&self.connections_reaped),
            upload_limit_wait: Duration::from_nanos(get(&self.upload_wait_ns)),
            download_limit_wait: Duration::from_nanos(get(&self.download_wait_ns)),
            trackers_up: up,
            trackers_silent: trackers.len() as u64 - up,
            tracker_silences: trackers.iter().map(|t| t.silences).sum(),
            bytes_in_flight,
        }
    }

    pub fn download_started(&self) {
        bump(&self.downloads_started, 1);
    }

    pub fn download_ended(&self, how: Ended) {
        bump(
            match how {
                Ended::Finished => &self.downloads_finished,
                Ended::Failed => &self.downloads_failed,
                Ended::Cancelled => &self.downloads_cancelled,
            },
            1,
        );
    }

    pub fn owner_dropped(&self, why: Dropped) {
        bump(
            match why {
                Dropped::Failed => &self.owners_failed,
                Dropped::Slow => &self.owners_slow,
                Dropped::Lied => &self.owners_lied,
            },
            1,
        );
    }

    /// Adds a wait on the upload (`upload`) or download limit.
    pub fn waited(&self, upload: bool, wait: Duration) {
        let ns = u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX);
        bump(
            if upload {
                &self.upload_wait_ns
            } else {
                &self.download_wait_ns
            },
            ns,
        );
    }
}

/// Adds `n` to a counter.
pub(crate) fn bump(cell: &AtomicU64, n: u64) {
    cell.fetch_add(n, Ordering::Relaxed);
}

fn get(cell: &AtomicU64) -> u64 {
    cell.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_count_lands_in_its_own_field() {
        let cells = Cells::default();
        cells.download_started();
        cells.download_started();
        cells.download_ended(Ended::Cancelled);
        cells.owner_dropped(Dropped::of(&Error::Slow {
            addr: "127.0.0.1:1".parse().unwrap(),
            why: "slow".into(),
        }));
        cells.waited(true, Duration::from_millis(3));
        bump(&cells.bytes_sent, 10);
        let m = cells.snapshot(2, 0, &[]);
        assert_eq!(
            (
                m.downloads_started,
                m.downloads_cancelled,
                m.downloads_failed
            ),
            (2, 1, 0)
        );
        assert_eq!((m.owners_slow, m.owners_failed, m.owners_lied), (1, 0, 0));
        assert_eq!(m.upload_limit_wait, Duration::from_millis(3));
        assert_eq!(m.download_limit_wait, Duration::ZERO);
        assert_eq!((m.bytes_sent, m.connections_open), (10, 2));
        assert_eq!(cells.counters().bytes_sent, 10);
    }
}
