//! What a tracker counts: requests by kind and outcome, datagrams dropped before they were
//! requests, and how long each request took to handle.
//!
//! The counts are plain atomics, always kept (a few relaxed adds and two clock reads per
//! request); [`Tracker::metrics`](crate::Tracker::metrics) copies them, with the table's
//! size, into a [`TrackerMetrics`]. The `http` feature serves that copy as Prometheus text.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::wire::BodyView;
use crate::messages::TrackerToNode;

/// What a request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RequestKind {
    /// A token (`Connect`).
    Connect,
    /// An announce of a file held (`Have`).
    Announce,
    /// A look-up of a file's owners (`Need`).
    Lookup,
    /// A search of file names.
    Search,
    /// A node leaving.
    Exit,
}

impl RequestKind {
    /// Every kind, in the order [`TrackerMetrics::requests`] lists them.
    pub const ALL: [Self; 5] = [
        Self::Connect,
        Self::Announce,
        Self::Lookup,
        Self::Search,
        Self::Exit,
    ];

    /// The kind's name as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Announce => "announce",
            Self::Lookup => "lookup",
            Self::Search => "search",
            Self::Exit => "exit",
        }
    }

    pub(crate) fn of(body: &BodyView<'_>) -> Self {
        match body {
            BodyView::Connect => Self::Connect,
            BodyView::Have(_) => Self::Announce,
            BodyView::Need { .. } => Self::Lookup,
            BodyView::Search { .. } => Self::Search,
            BodyView::Exit { .. } => Self::Exit,
        }
    }
}

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// Served: a token, an acknowledgement, owners, "not found", search results.
    Answered,
    /// Refused with a reason (a full table, a bad name, an unknown protocol version).
    Rejected,
    /// Over its sender's rate: told to wait, or dropped.
    Throttled,
    /// Carried no valid address token.
    BadToken,
}

impl Outcome {
    /// Every outcome, in the order [`TrackerMetrics::requests`] lists them.
    pub const ALL: [Self; 4] = [
        Self::Answered,
        Self::Rejected,
        Self::Throttled,
        Self::BadToken,
    ];

    /// The outcome's name as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::Rejected => "rejected",
            Self::Throttled => "throttled",
            Self::BadToken => "bad_token",
        }
    }

    /// The outcome a reply (`None`: dropped for the rate) stands for.
    pub(crate) fn of(reply: Option<&TrackerToNode>) -> Self {
        match reply {
            None | Some(TrackerToNode::Busy { .. }) => Self::Throttled,
            Some(TrackerToNode::Reject { .. }) => Self::Rejected,
            Some(TrackerToNode::BadToken) => Self::BadToken,
            Some(_) => Self::Answered,
        }
    }
}

/// Upper bounds of the request latency histogram's buckets, in microseconds.
pub const LATENCY_BUCKETS_US: [u64; 10] = [10, 25, 50, 100, 250, 500, 1_000, 2_500, 10_000, 50_000];

/// A copy of a tracker's counters at one moment, from
/// [`Tracker::metrics`](crate::Tracker::metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TrackerMetrics {
    /// Requests handled, by kind and outcome, every pair listed (in the order of
    /// [`RequestKind::ALL`] then [`Outcome::ALL`]).
    pub requests: Vec<(RequestKind, Outcome, u64)>,
    /// Datagrams that were not a request (or not one sealed under the network key).
    pub malformed: u64,
    /// Datagrams refused for their key: sealed under another, or plain in a keyed network.
    pub key_refused: u64,
    /// Sealed requests refused as replays or sent outside the replay window.
    pub replayed: u64,
    /// Requests whose handling took at most each bound of [`LATENCY_BUCKETS_US`]
    /// (cumulative, as Prometheus buckets are), then all of them.
    pub latency_buckets: Vec<u64>,
    /// Time spent handling requests, summed.
    pub latency_sum: Duration,
    /// Files (name and content) in the table.
    pub files: usize,
    /// Nodes in the table.
    pub nodes: usize,
    /// Owner rows in the table: one per node and file it holds.
    pub owners: usize,
}

/// The live counters of one `tracker-udp` thread: each thread counts in its own cells
/// (aligned apart, so no two threads write one cache line), and a snapshot sums them.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Cells {
    requests: [[AtomicU64; Outcome::ALL.len()]; RequestKind::ALL.len()],
    pub malformed: AtomicU64,
    pub key_refused: AtomicU64,
    pub replayed: AtomicU64,
    /// Not cumulative: the last cell counts requests over the last bound.
    latency: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    latency_ns: AtomicU64,
}

impl Cells {
    /// Counts one request of `kind` that ended as `outcome` after `took`.
    pub fn request(&self, kind: RequestKind, outcome: Outcome, took: Duration) {
        let k = RequestKind::ALL
            .iter()
            .position(|&x| x == kind)
            .unwrap_or(0);
        let o = Outcome::ALL.iter().position(|&x| x == outcome).unwrap_or(0);
        self.requests[k][o].fetch_add(1, Ordering::Relaxed);
        let us = took.as_micros();
        let bucket = LATENCY_BUCKETS_US
            .iter()
            .position(|&b| us <= u128::from(b))
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.latency_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

/// Every thread's counters summed, with the table's sizes as counted by the caller.
pub(crate) fn snapshot(
    shards: &[Arc<Cells>],
    files: usize,
    nodes: usize,
    owners: usize,
) -> TrackerMetrics {
    let sum = |cell: fn(&Cells) -> &AtomicU64| {
        shards
            .iter()
            .map(|c| cell(c).load(Ordering::Relaxed))
            .fold(0u64, u64::saturating_add)
    };
    let mut requests = Vec::new();
    for (k, kind) in RequestKind::ALL.into_iter().enumerate() {
        for (o, outcome) in Outcome::ALL.into_iter().enumerate() {
            let count = shards
                .iter()
                .map(|c| c.requests[k][o].load(Ordering::Relaxed))
                .fold(0u64, u64::saturating_add);
            requests.push((kind, outcome, count));
        }
    }
    let mut total = 0u64;
    let latency_buckets = (0..=LATENCY_BUCKETS_US.len())
        .map(|b| {
            let count = shards
                .iter()
                .map(|c| c.latency[b].load(Ordering::Relaxed))
                .fold(0u64, u64::saturating_add);
            total = total.saturating_add(count);
            total
        })
        .collect();
    TrackerMetrics {
        requests,
        malformed: sum(|c| &c.malformed),
        key_refused: sum(|c| &c.key_refused),
        replayed: sum(|c| &c.replayed),
        latency_buckets,
        latency_sum: Duration::from_nanos(sum(|c| &c.latency_ns)),
        files,
        nodes,
        owners,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests counted by two threads land in their cells and sum in the snapshot.
    #[test]
    fn requests_land_in_their_cell_and_buckets_add_up() {
        let shards = [Arc::new(Cells::default()), Arc::new(Cells::default())];
        shards[0].request(
            RequestKind::Lookup,
            Outcome::Answered,
            Duration::from_micros(30),
        );
        shards[1].request(
            RequestKind::Lookup,
            Outcome::Throttled,
            Duration::from_micros(5),
        );
        shards[1].request(RequestKind::Exit, Outcome::Answered, Duration::from_secs(1));
        shards[0].malformed.fetch_add(2, Ordering::Relaxed);
        shards[1].malformed.fetch_add(1, Ordering::Relaxed);
        let m = snapshot(&shards, 1, 2, 3);
        assert_eq!(m.malformed, 3);
        assert_eq!(m.latency_sum, Duration::from_micros(1_000_035));
        let count = |k, o| {
            m.requests
                .iter()
                .find(|r| r.0 == k && r.1 == o)
                .map(|r| r.2)
        };
        assert_eq!(count(RequestKind::Lookup, Outcome::Answered), Some(1));
        assert_eq!(count(RequestKind::Lookup, Outcome::Throttled), Some(1));
        assert_eq!(count(RequestKind::Exit, Outcome::Answered), Some(1));
        assert_eq!(count(RequestKind::Search, Outcome::Answered), Some(0));
        assert_eq!(m.requests.len(), 20);
        // 5 us in the first bucket, 30 us from the third on, 1 s only in the last.
        assert_eq!(m.latency_buckets[0], 1);
        assert_eq!(m.latency_buckets[1], 1);
        assert_eq!(m.latency_buckets[2], 2);
        assert_eq!(m.latency_buckets[LATENCY_BUCKETS_US.len() - 1], 2);
        assert_eq!(m.latency_buckets[LATENCY_BUCKETS_US.len()], 3);
        assert_eq!((m.files, m.nodes, m.owners), (1, 2, 3));
    }
}
