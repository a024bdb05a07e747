//! The crate's one error type.
//!
//! Every variant names the step that failed and carries the address or path involved, so a
//! message such as "tracker 127.0.0.1:12340 did not answer after 4 tries" can be printed as
//! is. Causes travel in `source`, never in the message.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The result type used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a tracker, a node or the wire format.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A socket could not be bound to the configured address.
    #[error("binding {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The cause.
        source: io::Error,
    },

    /// Sending to or receiving from the tracker failed at the socket level.
    #[error("talking to tracker {addr}")]
    TrackerIo {
        /// The tracker's address.
        addr: SocketAddr,
        /// The cause.
        source: io::Error,
    },

    /// The tracker never answered.
    #[error("tracker {addr} did not answer after {tries} tries")]
    TrackerUnreachable {
        /// The tracker's address.
        addr: SocketAddr,
        /// How many requests were sent.
        tries: u32,
    },

    /// The tracker answered, but refused the request.
    #[error("tracker {addr} refused the request: {reason}")]
    TrackerRejected {
        /// The tracker's address.
        addr: SocketAddr,
        /// The tracker's words.
        reason: String,
    },

    /// The tracker kept answering that this address asks too often, through every try.
    #[error("tracker {addr} is busy: this address asks more often than it serves")]
    TrackerBusy {
        /// The tracker's address.
        addr: SocketAddr,
    },

    /// No node owns the file, or every owner failed.
    #[error("no node owns {file}")]
    NoOwners {
        /// The file asked for.
        file: String,
    },

    /// Every owner failed before the file was complete.
    #[error(
        "{file}: every owner failed with {missing} of {total} pieces still missing; the last: {last}"
    )]
    OwnersExhausted {
        /// The file being downloaded.
        file: String,
        /// Pieces not yet verified (0 if no owner gave the piece list).
        missing: u32,
        /// Pieces in the file (0 if no owner gave the piece list).
        total: u32,
        /// How the last owner to fail failed.
        last: String,
    },

    /// A file name is not a plain name: it has a separator, `..`, a control or direction
    /// character, is empty, or is too long.
    #[error("\"{name}\" is not a plain file name")]
    InvalidName {
        /// The name, with control and direction characters escaped and cut to 64
        /// characters (a stranger's name is never echoed whole).
        name: String,
    },

    /// The download target already exists; it is never overwritten.
    #[error("{file} already exists in {}", dir.display())]
    AlreadyExists {
        /// The file name.
        file: String,
        /// The node's folder.
        dir: PathBuf,
    },

    /// The file is already being downloaded by this node.
    #[error("{file} is already being downloaded")]
    AlreadyDownloading {
        /// The file name.
        file: String,
    },

    /// Another node (in this process or another) is running on the folder: two nodes on
    /// one folder would download into the same `.part`.
    #[error("another node is running on {}; give each node its own folder", dir.display())]
    FolderInUse {
        /// The folder.
        dir: std::path::PathBuf,
    },

    /// The download was cancelled ([`crate::Download::cancel`]). What was verified stays in
    /// `NAME.part`, and downloading the file again resumes from it.
    #[error("download of {file} cancelled; the partial file is kept and a new download resumes it")]
    Cancelled {
        /// The file name.
        file: String,
    },

    /// A download's failure, as a second [`crate::Download::wait`] returns it: the first
    /// returned the error itself.
    #[error("download of {file} failed: {error}")]
    DownloadFailed {
        /// The file name.
        file: String,
        /// The first error, with its causes.
        error: String,
    },

    /// A download found a `.part` or resume record in its way that it cannot prove a
    /// download of this crate made; the file is left untouched.
    #[error(
        "{} is in the way and was not made by a download of this node ({reason}); it is left alone: move it away or download into another folder",
        path.display()
    )]
    NotOurs {
        /// The file in the way.
        path: PathBuf,
        /// Why it is not taken for ours.
        reason: &'static str,
    },

    /// An owner sent so much more slowly than the others that it was dropped.
    #[error("peer {addr} is too slow: {why}")]
    Slow {
        /// The owner.
        addr: SocketAddr,
        /// How slow, against the others.
        why: String,
    },

    /// A file to share is not a regular file in the node's folder.
    #[error("{} is not a regular file", path.display())]
    NotAFile {
        /// The path involved.
        path: PathBuf,
    },

    /// Reading or writing a file failed.
    #[error("{op} {}", path.display())]
    File {
        /// What was being done ("reading", "writing", "renaming" ...).
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },

    /// A connection to a peer failed or broke.
    #[error("peer {addr}: {op}")]
    PeerIo {
        /// The peer's address.
        addr: SocketAddr,
        /// What was being done ("connecting", "reading frame" ...).
        op: &'static str,
        /// The cause.
        source: io::Error,
    },

    /// A peer closed the connection, at a frame boundary or inside one.
    #[error("peer {addr} closed the connection")]
    PeerClosed {
        /// The peer's address.
        addr: SocketAddr,
    },

    /// A peer broke the protocol or refused a request.
    #[error("peer {addr}: {reason}")]
    Peer {
        /// The peer's address.
        addr: SocketAddr,
        /// What it did wrong, or its stated reason.
        reason: String,
    },

    /// An owner does not share the file it was asked about: not yet (a tracker can list a
    /// node before its download has the piece list) or no longer. Unlike a broken
    /// protocol, this may pass: the owner is asked again after a backoff.
    #[error("peer {addr} does not share {file}: {reason}")]
    NotShared {
        /// The owner's address.
        addr: SocketAddr,
        /// The file asked about.
        file: String,
        /// The owner's stated reason.
        reason: String,
    },

    /// A piece failed verification.
    #[error("piece {piece} of {file} from {addr} failed verification")]
    HashMismatch {
        /// The file being downloaded.
        file: String,
        /// The piece index.
        piece: u32,
        /// The owner that sent it.
        addr: SocketAddr,
    },

    /// A frame or datagram could not be decoded.
    #[error("malformed message: {0}")]
    Decode(#[from] postcard::Error),

    /// A frame announced a length above the hard limit; nothing was allocated for it.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// The announced length.
        len: u64,
        /// The limit.
        max: u64,
    },

    /// A stream ended in the middle of a frame.
    #[error("stream ended inside a frame")]
    Truncated,

    /// Reading or writing a frame failed at the stream level.
    #[error("frame i/o")]
    FrameIo(#[source] io::Error),

    /// The other side speaks another protocol or version.
    #[error("handshake: {0}")]
    Handshake(String),

    /// A network key file is not usable.
    #[error("network key {}: {reason}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The other side of a connection or exchange does not share this side's network key.
    #[error("{role} {addr} {problem}")]
    KeyMismatch {
        /// `"tracker"`, `"peer"` or `"node"`.
        role: &'static str,
        /// The other side's address.
        addr: SocketAddr,
        /// How the keys differ.
        problem: KeyProblem,
    },

    /// Invalid parameters for an arithmetic helper, e.g. zero owners.
    #[error("invalid parameter: {0}")]
    InvalidParameter(&'static str),

    /// The operating system's random source failed.
    #[error("reading the operating system's random source: {0}")]
    Random(String),

    /// The operating system refused to start a thread.
    #[error("starting thread {name}")]
    Spawn {
        /// The thread's name.
        name: &'static str,
        /// The cause.
        source: io::Error,
    },

    /// A thread of a tracker or node panicked.
    #[error("thread {0} panicked")]
    ThreadPanicked(String),

    /// The node or tracker was shut down before the request finished.
    #[error("shut down")]
    Shutdown,
}

/// How the other side's network key differs from this side's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyProblem {
    /// The other side requires a network key, and this side has none.
    TheyRequireKey,
    /// The other side has no network key, and this side requires one.
    TheyHaveNoKey,
    /// Both sides have a network key, and they differ.
    DifferentKey,
}

impl KeyProblem {
    /// Names the problem as seen by the side that sent a request which was refused by a
    /// side that `refuser_has_key` or not, when this side `has_key` or not.
    pub(crate) fn seen_by_sender(has_key: bool, refuser_has_key: bool) -> Self {
        match (has_key, refuser_has_key) {
            (false, _) => Self::TheyRequireKey,
            (true, false) => Self::TheyHaveNoKey,
            (true, true) => Self::DifferentKey,
        }
    }
}

impl std::fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::TheyRequireKey => "requires a network key, and this side has none",
            Self::TheyHaveNoKey => "has no network key, and this side requires one",
            Self::DifferentKey => "uses a different network key",
        })
    }
}

/// Formats an error with its chain of causes, "outer: inner: innermost", for people.
pub fn report(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}
