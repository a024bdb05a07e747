//! The plain values the crate's API hands out and takes: a file's content id, a node's
//! transfer counters, an owner as the tracker lists it, a search hit. The wire format
//! ([`messages`](crate::messages)) carries them as they are, and re-exports them.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Identifies a file's content: the BLAKE3 hash of its size, piece size and piece hashes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ContentId(pub [u8; 32]);

impl fmt::Display for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::str::FromStr for ContentId {
    type Err = Error;

    /// Parses the 64 hexadecimal digits [`Display`](fmt::Display) prints.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidParameter("a content id is 64 hexadecimal digits");
        let s = s.trim();
        if s.len() != 64 || !s.is_ascii() {
            return Err(bad());
        }
        let mut id = [0u8; 32];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self(id))
    }
}

impl fmt::Debug for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short: String = self.to_string().chars().take(12).collect();
        write!(f, "ContentId({short}…)")
    }
}

/// A node's cumulative transfer counters, reported to the tracker with every `Have`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Files this node has sent at least one piece of, counted once per peer.
    pub files_sent: u64,
    /// Files this node has downloaded completely.
    pub files_received: u64,
    /// Piece bytes sent to peers.
    pub bytes_sent: u64,
    /// Verified piece bytes received from peers.
    pub bytes_received: u64,
}

/// One owner of a file, as the tracker lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerInfo {
    /// The owner's node name.
    pub node: String,
    /// Where the owner serves: the source IP the tracker saw, with the announced port.
    pub addr: SocketAddr,
    /// How many files the owner has sent: the original's "upload count".
    pub uploads: u64,
    /// Whether the owner holds every piece.
    pub complete: bool,
}

/// One file that matched a search.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchHit {
    /// The file's plain name.
    pub file: String,
    /// The file's content id.
    pub content: ContentId,
    /// The file's size in bytes.
    pub size: u64,
    /// How many owners the tracker knows, which may exceed `owners.len()`.
    pub owner_count: u32,
    /// The best owners, best first, capped.
    pub owners: Vec<OwnerInfo>,
}
