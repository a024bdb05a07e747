//! The tracker's table: which nodes own which files, and what each node has sent and
//! received.
//!
//! [`Registry`] touches no socket and reads no clock: every method takes the time, so it is
//! tested with ordinary values. The tracker's UDP thread holds it behind a lock for the
//! length of one call.

use std::collections::HashMap as StdHashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::host::address_key;
use crate::tracker::wire::{AnnounceView, NodeWire, OwnerBytes};
use contents::Contents;
use nodes::{NodeId, Nodes};
use rank::{Order, owner_ref, rank};
use swarm::{Owner, Swarm};

mod contents;
mod nodes;
mod rank;
mod snapshot;
mod swarm;

pub use snapshot::{FileRow, NodeRow, OwnerRow, Snapshot};

/// The table's maps: keyed by what strangers choose (names, addresses), so the hash is
/// seeded per map, and foldhash's quality variant, several times cheaper than SipHash on
/// the short keys here (each request hashes its file name and its sender's address).
type HashMap<K, V> = StdHashMap<K, V, foldhash::quality::RandomState>;

/// A file name as the table keeps it: one copy, shared by the table's entry for the file
/// and the row of each node that owns it.
type Name = Arc<str>;

use crate::messages::{ContentId, MAX_NODE_NAME_LEN, OwnerInfo, SearchHit, check_file_name};

/// Most owners listed in one `Need` answer, whatever the request's `numwant`.
pub const MAX_OWNERS_LISTED: usize = 50;
/// Most files listed in one search answer.
pub const MAX_SEARCH_HITS: usize = 32;
/// Most owners listed per search hit.
pub const MAX_OWNERS_PER_HIT: usize = 8;
/// An owner that has not re-announced for this many intervals is dropped.
pub const EXPIRY_INTERVALS: u32 = 3;

/// How large the table may grow, per address and in all. An announce that would pass a
/// limit is refused with the limit named; what is already in the table stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableLimits {
    /// Nodes (serving ports) on one address (an IPv6 /64).
    pub nodes_per_address: usize,
    /// Files one node may own.
    pub files_per_node: usize,
    /// Rows (a node owning a file) from one address.
    pub rows_per_address: usize,
    /// Rows in the whole table.
    pub rows: usize,
}

impl Default for TableLimits {
    /// 64 nodes per address, 10,000 files per node, 100,000 rows per address and
    /// 1,000,000 in all: a few hundred bytes a row, so one address can take tens of
    /// megabytes at most.
    fn default() -> Self {
        Self {
            nodes_per_address: 64,
            files_per_node: 10_000,
            rows_per_address: 100_000,
            rows: 1_000_000,
        }
    }
}

/// The owner table.
#[derive(Debug)]
pub(crate) struct Registry {
    expiry: Duration,
    /// File name → content id → swarm; a name may carry several contents if owners
    /// disagree, and `need` answers with the one most owners hold.
    files: HashMap<Name, Contents>,
    nodes: Nodes,
    limits: TableLimits,
    /// Nodes and rows per address, as [`TableLimits`] counts them.
    usage: HashMap<IpAddr, Usage>,
    /// Rows in the whole table: every node's files.
    rows: usize,
    /// Every file name, lowercased, shared with searches so they scan without the lock.
    names: Arc<Vec<(String, String)>>,
    /// Whether names were added or removed since `names` was built.
    names_stale: bool,
    /// The owners the last look-up picked, kept so the next one allocates nothing.
    picked: Vec<(NodeId, bool)>,
    /// Where a look-up under a name of several contents counts each one's addresses.
    addresses: Vec<IpAddr>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    nodes: usize,
    rows: usize,
}

/// What a `Need` finds, borrowed from the table: the content chosen under a name, the
/// owners picked, and how many contents the name has.
pub(crate) struct Picked<'r> {
    pub content: ContentId,
    pub size: u64,
    pub contents: u32,
    chosen: &'r [(NodeId, bool)],
    nodes: &'r Nodes,
}

impl<'r> Picked<'r> {
    /// The owners picked, in order, as the answer lists them: each node's bytes as its
    /// last announce left them, and whether it is complete.
    pub fn owners(&self) -> impl ExactSizeIterator<Item = OwnerBytes<'r>> + Clone + 'r {
        let nodes = self.nodes;
        self.chosen.iter().map(move |&(id, complete)| {
            let node = nodes.by_id(id).map_or(&NodeWire::EMPTY, |n| &n.wire);
            (node, complete)
        })
    }
}

impl Registry {
    /// Creates an empty table whose owners expire after `EXPIRY_INTERVALS × interval`.
    pub fn new(interval: Duration, limits: TableLimits) -> Self {
        Self {
            expiry: interval * EXPIRY_INTERVALS,
            files: HashMap::default(),
            nodes: Nodes::default(),
            limits,
            usage: HashMap::default(),
            rows: 0,
            names: Arc::default(),
            names_stale: false,
            picked: Vec::new(),
            addresses: Vec::new(),
        }
    }

    /// Refuses an announce that would take `addr` (new to the table if `new_node`) past a
    /// limit by adding a row (`new_row`).
    fn check_limits(&self, addr: SocketAddr, new_node: bool, new_row: bool) -> Result<(), String> {
        let use_ = self
            .usage
            .get(&address_key(addr.ip()))
            .copied()
            .unwrap_or_default();
        let l = &self.limits;
        if new_node && self.nodes.len() >= nodes::MAX_NODES {
            return Err(format!("the table is full ({} nodes)", nodes::MAX_NODES));
        }
        if new_node && use_.nodes >= l.nodes_per_address {
            return Err(format!(
                "at most {} nodes per address are listed",
                l.nodes_per_address
            ));
        }
        if !new_row {
            return Ok(());
        }
        let files = self.nodes.get(&addr).map_or(0, |n| n.files.len());
        if files >= l.files_per_node {
            Err(format!(
                "at most {} files per node are listed",
                l.files_per_node
            ))
        } else if use_.rows >= l.rows_per_address {
            Err(format!(
                "at most {} files are listed from one address",
                l.rows_per_address
            ))
        } else if self.rows >= l.rows {
            Err(format!("the table is full ({} rows)", l.rows))
        } else {
            Ok(())
        }
    }

    /// Counts a node (`nodes`) or a row (`rows`) in or out for `addr`.
    fn count(&mut self, addr: SocketAddr, nodes: isize, rows: isize) {
        let key = address_key(addr.ip());
        let use_ = self.usage.entry(key).or_default();
        use_.nodes = use_.nodes.saturating_add_signed(nodes);
        use_.rows = use_.rows.saturating_add_signed(rows);
        if use_.nodes == 0 && use_.rows == 0 {
            self.usage.remove(&key);
        }
        self.rows = self.rows.saturating_add_signed(rows);
    }

    /// Records that the node at `ip` (serving on `ann.port`) owns a file.
    ///
    /// Returns whether the table changed in a way a reader would see, or the reason the
    /// announce is refused.
    pub fn announce<'a>(
        &mut self,
        ip: IpAddr,
        ann: impl Into<AnnounceView<'a>>,
        now: Instant,
    ) -> Result<bool, String> {
        let ann: AnnounceView<'a> = ann.into();
        check_file_name(ann.file).map_err(|e| e.to_string())?;
        if ann.node.is_empty() || ann.node.len() > MAX_NODE_NAME_LEN {
            return Err(format!("node names are 1 to {MAX_NODE_NAME_LEN} bytes"));
        }
        if ann.port == 0 {
            return Err("port 0 cannot be served on".into());
        }
        let addr = SocketAddr::new(ip, ann.port);
        // What a look-up lists of the node (the name's length is checked above).
        let wire =
            NodeWire::encode(ann.node, addr, ann.counters.files_sent).map_err(|e| e.to_string())?;
        // A re-announce, by far the most common request, finds everything in place: each
        // table is searched once and no name is copied.
        let held = self
            .nodes
            .get(&addr)
            .map(|n| n.files.get(ann.file).copied());
        let (new_node, new_row) = match held {
            None => (true, true),
            Some(content) => (false, content.is_none()),
        };
        self.check_limits(addr, new_node, new_row)?;
        self.count(addr, isize::from(new_node), isize::from(new_row));
        let (id, node) = self.nodes.entry(addr);
        let mut changed = node.name != ann.node || node.counters != ann.counters;
        if node.name != ann.node {
            ann.node.clone_into(&mut node.name);
        }
        node.counters = ann.counters;
        node.wire = wire;
        // An owner announces one content per name: a changed file replaces the old one.
        match held.flatten() {
            Some(old) if old == ann.content => {}
            Some(old) => {
                if let Some(content) = node.files.get_mut(ann.file) {
                    *content = ann.content;
                }
                // The node's row stays: its new content is added under the name below.
                remove_owner(&mut self.files, ann.file, old, id);
                changed = true;
            }
            None => {}
        }
        // The node's row shares the table's copy of the name.
        let name = new_row.then(|| match self.files.get_key_value(ann.file) {
            Some((name, _)) => Arc::clone(name),
            None => Name::from(ann.file),
        });
        if let Some(name) = &name {
            node.files.insert(Arc::clone(name), ann.content);
        }
        let new_swarm = || Swarm::new(ann.size, now);
        // A re-announce finds its name here at the first look.
        let contents = match self.files.get_mut(ann.file) {
            Some(contents) => contents,
            None => {
                // A new name, entered with its first content.
                self.names_stale = true;
                let name = name.unwrap_or_else(|| Name::from(ann.file));
                self.files
                    .entry(name)
                    .or_insert_with(|| Contents::One(ann.content, new_swarm()))
            }
        };
        let swarm = contents.get_or_insert_with(ann.content, new_swarm);
        let new = Owner {
            node: id,
            pieces: ann.pieces,
            complete: ann.complete,
            v6: addr.is_ipv6(),
            last_seen: now,
        };
        let old = swarm.insert(new);
        changed |= old.is_none_or(|o| o.pieces != new.pieces || o.complete != new.complete);
        Ok(changed)
    }

    /// Returns the content to download under `file` (`pin`, if given), with up to
    /// `numwant` owners (capped at [`MAX_OWNERS_LISTED`]), or `None` if nobody owns it.
    ///
    /// Without a pin, the content whose complete owners are on the most distinct
    /// addresses wins, then the one with owners on the most addresses, then the one
    /// announced first: one host
    /// announcing its own file from many ports counts once, and partial owners of a stale
    /// content do not outvote the complete owners of the current one.
    ///
    /// Complete owners come first; within each group the order is a random permutation
    /// drawn from `seed` (the tracker passes a fresh one per request). Handing every
    /// downloader the same ranked list made every downloader pick the same few early
    /// holders and froze the swarm into a star; a random subset spreads the load.
    ///
    /// Only owners of the asker's address family are listed (`v6`): those are the ones it
    /// can reach, when the tracker serves IPv4 and IPv6 nodes on one socket.
    pub fn need(
        &mut self,
        file: &str,
        numwant: u16,
        seed: u64,
        pin: Option<ContentId>,
        v6: bool,
    ) -> Option<Picked<'_>> {
        let contents = self.files.get(file)?;
        let (content, swarm) = match (pin, contents) {
            // A running download's look-up: one probe, however many contents.
            (Some(pin), _) => (pin, contents.get(&pin).filter(|s| !s.is_empty())?),
            // One content, as nearly always: nothing to weigh.
            (None, Contents::One(c, s)) => (*c, (!s.is_empty()).then_some(s)?),
            (None, Contents::Many(_)) => {
                let (nodes, scratch) = (&self.nodes, &mut self.addresses);
                let live = contents.iter().filter(|(_, s)| !s.is_empty());
                let (c, s) = live.max_by_key(|(c, s)| {
                    let older = std::cmp::Reverse((s.since, **c));
                    let complete = s.addresses(nodes, true, scratch);
                    (complete, s.addresses(nodes, false, scratch), older)
                })?;
                (*c, s)
            }
        };
        let want = usize::from(numwant).min(MAX_OWNERS_LISTED);
        let order = Order::Shuffled(seed);
        rank(&self.nodes, swarm, want, order, v6, &mut self.picked);
        Some(Picked {
            content,
            size: swarm.size,
            contents: u32::try_from(contents.len()).unwrap_or(u32::MAX),
            chosen: &self.picked,
            nodes: &self.nodes,
        })
    }

    /// Every file name with its lowercase form, rebuilt only when names came or went:
    /// a search scans this copy without holding the table's lock.
    pub fn names(&mut self) -> Arc<Vec<(String, String)>> {
        if self.names_stale {
            self.names_stale = false;
            let mut names: Vec<(String, String)> = self
                .files
                .keys()
                .map(|n| (n.to_string(), n.to_lowercase()))
                .collect();
            // In name order: a search lists its first hits alphabetically.
            names.sort_unstable();
            self.names = Arc::new(names);
        }
        Arc::clone(&self.names)
    }

    /// Returns the files named in `names` (found by [`matching`]) with their best owners,
    /// capped at [`MAX_SEARCH_HITS`] files of [`MAX_OWNERS_PER_HIT`] owners of the asker's
    /// address family (`v6`).
    pub fn hits(&self, names: &[&str], v6: bool) -> Vec<SearchHit> {
        names
            .iter()
            .filter_map(|name| self.files.get_key_value(*name))
            .flat_map(|(name, contents)| {
                contents
                    .iter()
                    .filter(|(_, s)| !s.is_empty())
                    .map(|(content, swarm)| SearchHit {
                        file: name.to_string(),
                        content: *content,
                        size: swarm.size,
                        owner_count: u32::try_from(swarm.len()).unwrap_or(u32::MAX),
                        owners: self.best_owners(swarm, v6),
                    })
            })
            .take(MAX_SEARCH_HITS)
            .collect()
    }

    /// The best owners of `swarm` of one address family, for a search hit.
    fn best_owners(&self, swarm: &Swarm, v6: bool) -> Vec<OwnerInfo> {
        let mut best = Vec::new();
        rank(
            &self.nodes,
            swarm,
            MAX_OWNERS_PER_HIT,
            Order::Best,
            v6,
            &mut best,
        );
        best.into_iter()
            .map(|(id, complete)| owner_ref(&self.nodes, id, complete).into())
            .collect()
    }

    /// Returns the files whose names contain `pattern`, ignoring case, with their best
    /// owners: [`names`](Self::names), [`matching`], then [`hits`](Self::hits), in one
    /// call (the tracker runs the middle step without the lock).
    #[cfg(test)]
    pub fn search(&mut self, pattern: &str) -> Vec<SearchHit> {
        let names = self.names();
        let found = matching(&names, pattern);
        self.hits(&found, false)
    }

    /// Removes the node serving at `addr` from every file. Returns whether it was known.
    pub fn exit(&mut self, addr: SocketAddr) -> bool {
        let Some((id, node)) = self.nodes.remove(&addr) else {
            return false;
        };
        let rows = isize::try_from(node.files.len()).unwrap_or(isize::MAX);
        self.count(addr, -1, -rows);
        for (file, content) in node.files {
            self.names_stale |= remove_owner(&mut self.files, &file, content, id);
        }
        true
    }

    /// Drops owners that have not announced within the expiry time, and nodes left with no
    /// files. Returns whether anything was dropped.
    pub fn expire(&mut self, now: Instant) -> bool {
        let expiry = self.expiry;
        let mut dropped = Vec::new();
        for (file, contents) in &mut self.files {
            for (content, swarm) in contents.iter_mut() {
                swarm.retain(
                    |o| now.saturating_duration_since(o.last_seen) < expiry,
                    |o| dropped.push((o.node, Arc::clone(file), *content)),
                );
            }
            contents.drop_empty();
        }
        let names = self.files.len();
        self.files.retain(|_, contents| !contents.is_empty());
        self.names_stale |= self.files.len() != names;
        for (id, file, content) in &dropped {
            if let Some(node) = self.nodes.by_id_mut(*id)
                && node.files.get(&**file) == Some(content)
            {
                node.files.remove(&**file);
                let addr = node.addr;
                self.count(addr, 0, -1);
            }
        }
        let empty: Vec<SocketAddr> = self
            .nodes
            .iter()
            .filter(|n| n.files.is_empty())
            .map(|n| n.addr)
            .collect();
        for addr in empty {
            self.nodes.remove(&addr);
            self.count(addr, -1, 0);
        }
        !dropped.is_empty()
    }

    /// Returns how many files (name and content), nodes and owner rows the table holds.
    pub fn sizes(&self) -> (usize, usize, usize) {
        let files = self.files.values().map(Contents::len).sum();
        (files, self.nodes.len(), self.rows)
    }

    /// Returns a copy of the whole table, sorted for printing.
    pub fn snapshot(&self) -> Snapshot {
        let mut files: Vec<FileRow> = self
            .files
            .iter()
            .flat_map(|(name, contents)| {
                contents.iter().map(move |(content, swarm)| {
                    let mut owners: Vec<OwnerRow> = swarm
                        .owners()
                        .filter_map(|o| {
                            let node = self.nodes.by_id(o.node)?;
                            Some(OwnerRow {
                                node: node.name.clone(),
                                addr: node.addr,
                                pieces: o.pieces,
                                complete: o.complete,
                            })
                        })
                        .collect();
                    owners.sort_by(|a, b| (&a.node, a.addr).cmp(&(&b.node, b.addr)));
                    FileRow {
                        file: name.to_string(),
                        content: *content,
                        size: swarm.size,
                        owners,
                    }
                })
            })
            .collect();
        files.sort_unstable_by(|a, b| (&a.file, a.content).cmp(&(&b.file, b.content)));
        let mut nodes: Vec<NodeRow> = self
            .nodes
            .iter()
            .map(|n| {
                let mut files: Vec<String> = n.files.keys().map(|f| f.to_string()).collect();
                files.sort();
                NodeRow {
                    node: n.name.clone(),
                    addr: n.addr,
                    files,
                    counters: n.counters,
                }
            })
            .collect();
        nodes.sort_by(|a, b| (&a.node, a.addr).cmp(&(&b.node, b.addr)));
        Snapshot { files, nodes }
    }
}

/// The names in `names` that contain `pattern`, ignoring case, in order, at most
/// [`MAX_SEARCH_HITS`] of them: the scan stops there.
pub(crate) fn matching<'a>(names: &'a [(String, String)], pattern: &str) -> Vec<&'a str> {
    let pattern = pattern.to_lowercase();
    names
        .iter()
        .filter(|(_, lower)| lower.contains(&pattern))
        .map(|(name, _)| name.as_str())
        .take(MAX_SEARCH_HITS)
        .collect()
}

/// Removes `node` from the swarm of `content` under `file`, and what it leaves empty.
/// Returns whether the name left the table.
fn remove_owner(
    files: &mut HashMap<Name, Contents>,
    file: &str,
    content: ContentId,
    node: NodeId,
) -> bool {
    let Some(contents) = files.get_mut(file) else {
        return false;
    };
    if let Some(swarm) = contents.get_mut(&content) {
        swarm.remove(node);
        contents.drop_if_empty(&content);
    }
    contents.is_empty() && files.remove(file).is_some()
}

#[cfg(test)]
mod tests;
