//! A copy of the tracker's table at one moment, sorted for people: what
//! [`Tracker::snapshot`](crate::Tracker::snapshot) returns and the `tracker` binary prints.

use std::fmt;
use std::net::SocketAddr;

use super::HashMap;
use crate::messages::{ContentId, Counters};

/// A copy of the tracker's table at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Every file with at least one owner, by name, then content id.
    pub files: Vec<FileRow>,
    /// Every node that owns at least one file, by name, then address.
    pub nodes: Vec<NodeRow>,
}

/// One file in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRow {
    /// The file's plain name.
    pub file: String,
    /// Its content id.
    pub content: ContentId,
    /// Its size in bytes.
    pub size: u64,
    /// Its owners, by node name.
    pub owners: Vec<OwnerRow>,
}

/// One owner of a file in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRow {
    /// The owner's node name.
    pub node: String,
    /// Where it serves.
    pub addr: SocketAddr,
    /// How many verified pieces it holds.
    pub pieces: u32,
    /// Whether it holds them all.
    pub complete: bool,
}

/// One node in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    /// The node's name.
    pub node: String,
    /// Where it serves.
    pub addr: SocketAddr,
    /// The files it owns, sorted.
    pub files: Vec<String>,
    /// Its counters as last announced.
    pub counters: Counters,
}

impl Snapshot {
    /// Returns the owners of `file` under any content id, by node name.
    pub fn owners_of(&self, file: &str) -> Vec<&OwnerRow> {
        self.files
            .iter()
            .filter(|f| f.file == file)
            .flat_map(|f| &f.owners)
            .collect()
    }
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "files ({}):", self.files.len())?;
        for row in &self.files {
            let owners: Vec<String> = row
                .owners
                .iter()
                .map(|o| {
                    let state = if o.complete {
                        String::new()
                    } else {
                        format!(" {} pieces", o.pieces)
                    };
                    format!("{}@{}{state}", o.node, o.addr)
                })
                .collect();
            writeln!(
                f,
                "  {:<24} {:>12} B  {}",
                row.file,
                row.size,
                owners.join(", ")
            )?;
        }
        writeln!(f, "nodes ({}):", self.nodes.len())?;
        // A name is whatever a node says; two live nodes may say the same one. Both are
        // listed, each with its address, and marked, so nobody takes them for one node.
        let mut named: HashMap<&str, usize> = HashMap::default();
        for n in &self.nodes {
            *named.entry(n.node.as_str()).or_default() += 1;
        }
        for n in &self.nodes {
            let c = n.counters;
            let others = named.get(n.node.as_str()).map_or(0, |k| k - 1);
            let shared = match others {
                0 => String::new(),
                1 => "  (another node uses this name)".into(),
                k => format!("  ({k} other nodes use this name)"),
            };
            writeln!(
                f,
                "  {:<12} {:<21} files {:<3} sent {} files/{} B  received {} files/{} B{shared}",
                n.node,
                n.addr.to_string(),
                n.files.len(),
                c.files_sent,
                c.bytes_sent,
                c.files_received,
                c.bytes_received
            )?;
        }
        Ok(())
    }
}
