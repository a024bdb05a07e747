//! What the web side shows, rendered: Prometheus text through `prometheus-client`, and the
//! JSON of `/api/status` through `serde_json`.
//!
//! Metric names follow the Prometheus conventions: a `p2ptorrent_` prefix, base units
//! (bytes, seconds) in the name, `_total` on counters.

use std::fmt;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::{Registry, Unit};
use serde_json::{Value, json};

use crate::messages::Counters;
use crate::node::{NodeMetrics, Status};
use crate::tracker::{LATENCY_BUCKETS_US, Snapshot, TrackerMetrics};

type Labels = Vec<(&'static str, &'static str)>;

/// A node's counters as Prometheus text.
pub(crate) fn node_metrics(m: &NodeMetrics) -> String {
    let mut r = Registry::with_prefix("p2ptorrent");
    bytes(&mut r, "sent", "Piece bytes sent to peers", m.bytes_sent);
    bytes(
        &mut r,
        "received",
        "Verified piece bytes received",
        m.bytes_received,
    );
    count(
        &mut r,
        "pieces_sent",
        "Pieces sent whole to peers",
        m.pieces_sent,
    );
    count(
        &mut r,
        "pieces_received",
        "Pieces received and verified",
        m.pieces_received,
    );
    count(
        &mut r,
        "pieces_rejected",
        "Pieces received that failed verification",
        m.pieces_rejected,
    );
    count(
        &mut r,
        "downloads_started",
        "Downloads started",
        m.downloads_started,
    );
    family(
        &mut r,
        "downloads_ended",
        "Downloads ended, by outcome",
        "outcome",
        &[
            ("finished", m.downloads_finished),
            ("failed", m.downloads_failed),
            ("cancelled", m.downloads_cancelled),
        ],
    );
    family(
        &mut r,
        "owners_dropped",
        "Owners a download gave up on, by reason",
        "reason",
        &[
            ("failed", m.owners_failed),
            ("slow", m.owners_slow),
            ("lied", m.owners_lied),
        ],
    );
    gauge(
        &mut r,
        "connections_open",
        "Peer connections open now",
        m.connections_open,
    );
    bytes_gauge(
        &mut r,
        "in_flight",
        "Piece bytes asked of owners and not yet received",
        m.bytes_in_flight,
    );
    count(
        &mut r,
        "connections_refused",
        "Connections refused at the connection caps",
        m.connections_refused,
    );
    count(
        &mut r,
        "connections_reaped",
        "Idle connections closed to make room for a newcomer",
        m.connections_reaped,
    );
    let waits: Family<Labels, Counter<f64, AtomicU64>> = Family::default();
    for (direction, wait) in [
        ("upload", m.upload_limit_wait),
        ("download", m.download_limit_wait),
    ] {
        waits
            .get_or_create(&vec![("direction", direction)])
            .inc_by(wait.as_secs_f64());
    }
    r.register_with_unit(
        "rate_limit_wait",
        "Time spent waiting on a rate limit, summed over threads",
        Unit::Seconds,
        waits,
    );
    let trackers: Family<Labels, Gauge> = Family::default();
    for (state, n) in [("up", m.trackers_up), ("silent", m.trackers_silent)] {
        trackers
            .get_or_create(&vec![("state", state)])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    r.register(
        "trackers",
        "Trackers by health: answering, or silent and skipped",
        trackers,
    );
    count(
        &mut r,
        "tracker_silences",
        "Times a tracker left a request unanswered through every try",
        m.tracker_silences,
    );
    encode(&r)
}

/// A tracker's counters as Prometheus text.
pub(crate) fn tracker_metrics(m: &TrackerMetrics) -> String {
    let mut r = Registry::with_prefix("p2ptorrent_tracker");
    let requests: Family<Labels, Counter> = Family::default();
    for &(kind, outcome, n) in &m.requests {
        requests
            .get_or_create(&vec![
                ("kind", kind.as_str()),
                ("outcome", outcome.as_str()),
            ])
            .inc_by(n);
    }
    r.register(
        "requests",
        "Requests handled, by kind and outcome",
        requests,
    );
    count(
        &mut r,
        "malformed_datagrams",
        "Datagrams that were not a request",
        m.malformed,
    );
    count(
        &mut r,
        "key_refused",
        "Datagrams refused for their network key",
        m.key_refused,
    );
    count(
        &mut r,
        "replayed",
        "Sealed requests refused as replays or outside the replay window",
        m.replayed,
    );
    gauge(
        &mut r,
        "files",
        "Files (name and content) in the table",
        m.files as u64,
    );
    gauge(&mut r, "nodes", "Nodes in the table", m.nodes as u64);
    gauge(&mut r, "owners", "Owner rows in the table", m.owners as u64);
    let mut below = 0;
    let buckets = LATENCY_BUCKETS_US
        .iter()
        .map(|&us| us as f64 / 1e6)
        .chain([f64::MAX])
        .zip(&m.latency_buckets)
        .map(|(bound, &cumulative)| {
            let here = cumulative - below;
            below = cumulative;
            (bound, here)
        })
        .collect();
    r.register_with_unit(
        "request_duration",
        "Time to handle one request",
        Unit::Seconds,
        FixedHistogram {
            sum: m.latency_sum.as_secs_f64(),
            count: m.latency_buckets.last().copied().unwrap_or(0),
            buckets,
        },
    );
    encode(&r)
}

/// The tracker's table as `/api/status` shows it.
pub(crate) fn tracker_status(snapshot: &Snapshot, m: &TrackerMetrics) -> String {
    let files: Vec<Value> = snapshot
        .files
        .iter()
        .map(|f| {
            json!({
                "file": f.file,
                "content": f.content.to_string(),
                "size": f.size,
                "owners": f.owners.iter().map(|o| json!({
                    "node": o.node,
                    "addr": o.addr.to_string(),
                    "pieces": o.pieces,
                    "complete": o.complete,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let nodes: Vec<Value> = snapshot
        .nodes
        .iter()
        .map(|n| {
            json!({
                "node": n.node,
                "addr": n.addr.to_string(),
                "files": n.files,
                "counters": counters(&n.counters),
            })
        })
        .collect();
    let requests: u64 = m.requests.iter().map(|r| r.2).sum();
    json!({
        "kind": "tracker",
        "files": files,
        "nodes": nodes,
        "requests": requests,
    })
    .to_string()
}

/// A node's state as `/api/status` shows it.
pub(crate) fn node_status(s: &Status) -> String {
    let shared: Vec<Value> = s
        .shared
        .iter()
        .map(|f| {
            json!({
                "file": f.file,
                "size": f.size,
                "pieces": f.pieces,
                "content": f.content.to_string(),
            })
        })
        .collect();
    let downloads: Vec<Value> = s
        .downloading
        .iter()
        .map(|d| {
            json!({
                "download": d.download.get(),
                "file": d.file,
                "size": d.size,
                "pieces": d.pieces,
                "verified": d.verified,
                "resumed": d.resumed,
                "owners": d.owners,
                "fraction": d.fraction(),
                "fetched": d.fetched,
                "rate": d.rate(),
                "eta_secs": d.eta().map(|t| t.as_secs_f64()),
                "paused": d.paused,
            })
        })
        .collect();
    json!({
        "kind": "node",
        "name": s.name,
        "addr": s.addr.to_string(),
        "shared": shared,
        "downloads": downloads,
        "peers": s.peers.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "trackers": s.trackers.iter().map(|t| json!({
            "addr": t.addr.to_string(),
            "up": t.up,
            "silences": t.silences,
        })).collect::<Vec<_>>(),
        "counters": counters(&s.counters),
    })
    .to_string()
}

fn counters(c: &Counters) -> Value {
    json!({
        "files_sent": c.files_sent,
        "files_received": c.files_received,
        "bytes_sent": c.bytes_sent,
        "bytes_received": c.bytes_received,
    })
}

fn encode(r: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, r);
    out
}

fn count(r: &mut Registry, name: &str, help: &str, value: u64) {
    r.register(name, help, ConstCounter::new(value));
}

fn bytes(r: &mut Registry, name: &str, help: &str, value: u64) {
    r.register_with_unit(name, help, Unit::Bytes, ConstCounter::new(value));
}

fn bytes_gauge(r: &mut Registry, name: &str, help: &str, value: u64) {
    r.register_with_unit(
        name,
        help,
        Unit::Bytes,
        ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)),
    );
}

fn gauge(r: &mut Registry, name: &str, help: &str, value: u64) {
    r.register(
        name,
        help,
        ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)),
    );
}

/// Registers a counter with one label, one series per value.
fn family(
    r: &mut Registry,
    name: &str,
    help: &str,
    label: &'static str,
    values: &[(&'static str, u64)],
) {
    let f: Family<Labels, Counter> = Family::default();
    for &(v, n) in values {
        f.get_or_create(&vec![(label, v)]).inc_by(n);
    }
    r.register(name, help, f);
}

/// A histogram whose buckets were counted elsewhere (`buckets`: each bound, with the
/// requests in that bucket alone; the last bound `f64::MAX`, shown as `+Inf`).
#[derive(Debug)]
struct FixedHistogram {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl EncodeMetric for FixedHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}
