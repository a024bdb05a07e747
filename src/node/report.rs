//! What a node reports: its events, and the results of sharing, downloading and asking
//! for its status.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::values::{ContentId, Counters};

/// What a running node reports. Events are informational: a full queue drops them (see
/// [`Node::dropped_events`](crate::Node::dropped_events)); results come back from the handle's methods.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A file is being served and was announced.
    Shared {
        /// Its name.
        file: String,
        /// Its size.
        size: u64,
        /// How many pieces it has.
        pieces: u32,
    },
    /// Several contents are shared under the name asked for, and none was pinned: the
    /// download takes `chosen`, the one whose complete owners are on the most distinct
    /// addresses. Pin another with [`Node::download_content`](crate::Node::download_content).
    SeveralContents {
        /// Which download.
        download: DownloadId,
        /// The file name.
        file: String,
        /// The content downloaded.
        chosen: ContentId,
        /// How many contents are shared under the name.
        contents: u32,
    },
    /// A download was paused: its owners let go, its partial file no longer served.
    DownloadPaused {
        /// Which download.
        download: DownloadId,
        /// The file.
        file: String,
        /// Pieces verified so far.
        verified: u32,
    },
    /// A paused download was resumed.
    DownloadResumed {
        /// Which download.
        download: DownloadId,
        /// The file.
        file: String,
    },
    /// A download found its owners and its piece list.
    DownloadStarted {
        /// Which download.
        download: DownloadId,
        /// The file.
        file: String,
        /// Its size.
        size: u64,
        /// Its piece count.
        pieces: u32,
        /// Pieces already verified in a `.part` file from an earlier run.
        resumed: u32,
        /// How many owners the tracker listed.
        owners: usize,
    },
    /// A piece arrived and verified, and was written.
    PieceReceived {
        /// Which download.
        download: DownloadId,
        /// The file.
        file: String,
        /// The piece index.
        piece: u32,
        /// Its length.
        bytes: u32,
        /// The owner that sent it.
        from: SocketAddr,
        /// Pieces verified so far.
        done: u32,
        /// Pieces in the file.
        total: u32,
    },
    /// A piece was sent to a peer.
    PieceSent {
        /// The file.
        file: String,
        /// The piece index.
        piece: u32,
        /// The peer.
        to: SocketAddr,
    },
    /// A piece failed verification and was thrown away.
    PieceRejected {
        /// Which download.
        download: DownloadId,
        /// The file.
        file: String,
        /// The piece index.
        piece: u32,
        /// The owner that sent it.
        from: SocketAddr,
    },
    /// An owner failed during a download; its work went to the others.
    OwnerFailed {
        /// Which download.
        download: DownloadId,
        /// The file.
        file: String,
        /// The owner's node name, as the tracker listed it (empty if it did not).
        node: String,
        /// The owner.
        owner: SocketAddr,
        /// What went wrong.
        error: String,
    },
    /// A download finished: the file is complete, verified and served.
    DownloadFinished(DownloadReport),
    /// A download failed.
    DownloadFailed {
        /// Which download.
        download: DownloadId,
        /// The file.
        file: String,
        /// What went wrong.
        error: String,
    },
    /// A download could not save its resume record; a restart then verifies its `.part`
    /// again instead of trusting the record.
    RecordFailed {
        /// Which download.
        download: DownloadId,
        /// The file.
        file: String,
        /// What went wrong.
        error: String,
    },
    /// A shared file changed on disk and is no longer served.
    FileChanged {
        /// The file.
        file: String,
    },
    /// A connection from a peer was dropped for breaking the protocol or failing.
    PeerError {
        /// The peer.
        addr: SocketAddr,
        /// What went wrong.
        error: String,
    },
    /// A periodic re-announce to the tracker failed; it is tried again next interval.
    TrackerError {
        /// What went wrong.
        error: String,
    },
    /// A tracker left a request unanswered through every try: it is skipped, and the other
    /// trackers of each file's set are used, until it is asked again (see
    /// [`NodeConfig::tracker_retry_after`](crate::NodeConfig::tracker_retry_after)).
    TrackerSilent {
        /// The tracker's address.
        tracker: SocketAddr,
        /// What the request met.
        error: String,
    },
    /// A tracker that had gone silent answered again, and is used again.
    TrackerBack {
        /// The tracker's address.
        tracker: SocketAddr,
    },
    /// Accepting a connection failed for want of file descriptors or memory; the node
    /// waits `wait` before accepting again (longer each time, up to a second), and keeps
    /// serving the connections it has.
    AcceptFailed {
        /// What went wrong.
        error: String,
        /// How long the node waits before it accepts again.
        wait: Duration,
    },
}

/// Names one download of a node, for as long as the node runs: the id of its
/// [`Download`](crate::Download) handle, carried by every event about it and by its report
/// and progress. Two downloads of one file (one after the other) have different ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DownloadId(pub(crate) u64);

impl DownloadId {
    /// The id as a number: 1 for a node's first download, then counting up.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for DownloadId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What a finished download did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadReport {
    /// Which download.
    pub download: DownloadId,
    /// The file.
    pub file: String,
    /// Where it was written.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// Its content id.
    pub content: ContentId,
    /// Its piece count.
    pub pieces: u32,
    /// Pieces found already verified in a `.part` file.
    pub resumed: u32,
    /// Wall time from the request to the rename.
    pub elapsed: Duration,
    /// Bytes received from each owner that sent any, by address.
    pub from: Vec<(SocketAddr, u64)>,
    /// Owners dropped during the download, with the reason: the last 64, oldest first.
    pub failed: Vec<(SocketAddr, String)>,
}

/// A file the node shares, as [`Node::share`](crate::Node::share) reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareReport {
    /// The file.
    pub file: String,
    /// Its size.
    pub size: u64,
    /// Its piece count.
    pub pieces: u32,
    /// Its content id.
    pub content: ContentId,
}

/// A node's state, as [`Node::status`](crate::Node::status) reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The node's name.
    pub name: String,
    /// Where it serves peers.
    pub addr: SocketAddr,
    /// The complete files it shares (files being downloaded are served too, from their
    /// verified pieces, and listed under `downloading`).
    pub shared: Vec<ShareReport>,
    /// The files it is downloading, by name, with how far each is.
    pub downloading: Vec<DownloadProgress>,
    /// The peers it has a connection open with now, serving or fetching, by address.
    pub peers: Vec<SocketAddr>,
    /// Its trackers, in the order given, and whether each answers.
    pub trackers: Vec<crate::tracker::TrackerHealth>,
    /// Its transfer counters.
    pub counters: Counters,
}

/// How far one download is, as [`Status::downloading`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadProgress {
    /// Which download.
    pub download: DownloadId,
    /// The file.
    pub file: String,
    /// Its size; zero until an owner has told it.
    pub size: u64,
    /// Its piece count; zero until an owner has told it.
    pub pieces: u32,
    /// Pieces verified, those resumed from an earlier run included.
    pub verified: u32,
    /// Of those, pieces found verified in the `.part` of an earlier run.
    pub resumed: u32,
    /// Verified bytes received from owners since this run of the download began.
    pub fetched: u64,
    /// Owners being fetched from now.
    pub owners: usize,
    /// Time since this run of the download began.
    pub elapsed: Duration,
    /// Whether it is paused ([`crate::Download::pause`]).
    pub paused: bool,
}

impl DownloadProgress {
    /// The share of the file verified, from 0 to 1 (0 while the size is unknown).
    pub fn fraction(&self) -> f64 {
        if self.pieces == 0 {
            0.0
        } else {
            f64::from(self.verified) / f64::from(self.pieces)
        }
    }

    /// Bytes per second received since this run began (resumed pieces do not count).
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.fetched as f64 / secs
        } else {
            0.0
        }
    }

    /// The time left at [`rate`](Self::rate), if anything has been received yet.
    pub fn eta(&self) -> Option<Duration> {
        let rate = self.rate();
        if rate <= 0.0 || self.pieces == 0 {
            return None;
        }
        let left = self.size as f64 * (1.0 - self.fraction());
        Some(Duration::from_secs_f64(left / rate))
    }
}
