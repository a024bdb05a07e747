//! The tracker's table: which nodes own which files, and what each node has sent and
//! received.
//!
//! [`Registry`] touches no socket and reads no clock: every method takes the time, so it is
//! tested with ordinary values. The tracker's UDP thread holds it behind a lock for the
//! length of one call.

use std::collections::HashMap as StdHashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::host::address_key;
use crate::tracker::wire::{AnnounceView, OwnerRef};
use rank::{Order, owner_ref, rank};

mod rank;

/// The table's maps: keyed by what strangers choose (names, addresses), so the hash is
/// seeded per map, and foldhash's quality variant, several times cheaper than SipHash on
/// the short keys here (a `need` hashes fifty addresses).
type HashMap<K, V> = StdHashMap<K, V, foldhash::quality::RandomState>;

use crate::messages::{
    ContentId, Counters, MAX_NODE_NAME_LEN, OwnerInfo, SearchHit, check_file_name,
};

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
    files: HashMap<String, HashMap<ContentId, Swarm>>,
    nodes: HashMap<SocketAddr, NodeEntry>,
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
    picked: Vec<(SocketAddr, bool)>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    nodes: usize,
    rows: usize,
}

#[derive(Debug)]
struct Swarm {
    size: u64,
    owners: HashMap<SocketAddr, Ownership>,
    /// When this content was first announced under its name: of two contents owned
    /// alike, the older one is listed (a newcomer cannot take over a name by matching it).
    since: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ownership {
    pieces: u32,
    complete: bool,
    last_seen: Instant,
}

#[derive(Debug)]
struct NodeEntry {
    name: String,
    counters: Counters,
    /// File name → the content this node announced under it (one per name).
    files: HashMap<String, ContentId>,
}

/// What a `Need` finds, borrowed from the table: the content chosen under a name, the
/// owners picked, and how many contents the name has.
pub(crate) struct Picked<'r> {
    pub content: ContentId,
    pub size: u64,
    pub contents: u32,
    chosen: &'r [(SocketAddr, bool)],
    nodes: &'r HashMap<SocketAddr, NodeEntry>,
}

impl<'r> Picked<'r> {
    /// The owners picked, in order, named from the table.
    pub fn owners(&self) -> impl ExactSizeIterator<Item = OwnerRef<'r>> + Clone + 'r {
        let nodes = self.nodes;
        self.chosen
            .iter()
            .map(move |&(addr, complete)| owner_ref(nodes, addr, complete))
    }
}

impl Swarm {
    /// How many distinct addresses (IPv6 /64s) its owners are on, only complete ones if
    /// `complete`.
    fn addresses(&self, complete: bool) -> usize {
        let mut ips: Vec<IpAddr> = self
            .owners
            .iter()
            .filter(|(_, o)| o.complete || !complete)
            .map(|(a, _)| address_key(a.ip()))
            .collect();
        ips.sort_unstable();
        ips.dedup();
        ips.len()
    }
}

impl Registry {
    /// Creates an empty table whose owners expire after `EXPIRY_INTERVALS × interval`.
    pub fn new(interval: Duration, limits: TableLimits) -> Self {
        Self {
            expiry: interval * EXPIRY_INTERVALS,
            files: HashMap::default(),
            nodes: HashMap::default(),
            limits,
            usage: HashMap::default(),
            rows: 0,
            names: Arc::default(),
            names_stale: false,
            picked: Vec::new(),
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
        let node = self.nodes.entry(addr).or_insert_with(|| NodeEntry {
            name: String::new(),
            counters: Counters::default(),
            files: HashMap::default(),
        });
        let mut changed = node.name != ann.node || node.counters != ann.counters;
        if node.name != ann.node {
            ann.node.clone_into(&mut node.name);
        }
        node.counters = ann.counters;
        // An owner announces one content per name: a changed file replaces the old one.
        match held.flatten() {
            Some(old) if old == ann.content => {}
            Some(old) => {
                node.files.insert(ann.file.to_owned(), ann.content);
                // The name itself stays: this node's new content is added under it below.
                remove_owner(&mut self.files, ann.file, old, addr);
                changed = true;
            }
            None => {
                node.files.insert(ann.file.to_owned(), ann.content);
            }
        }
        let swarms = match self.files.get_mut(ann.file) {
            Some(swarms) => swarms,
            None => {
                self.names_stale = true;
                self.files.entry(ann.file.to_owned()).or_default()
            }
        };
        let swarm = swarms.entry(ann.content).or_insert_with(|| Swarm {
            size: ann.size,
            owners: HashMap::default(),
            since: now,
        });
        let new = Ownership {
            pieces: ann.pieces,
            complete: ann.complete,
            last_seen: now,
        };
        let old = swarm.owners.insert(addr, new);
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
        let swarms = self.files.get(file)?;
        let mut live = swarms.iter().filter(|(_, s)| !s.owners.is_empty());
        let (content, swarm) = match pin {
            Some(pin) => live.find(|(c, _)| **c == pin)?,
            // One content, as nearly always: nothing to weigh.
            None if swarms.len() == 1 => live.next()?,
            None => live.max_by_key(|(c, s)| {
                let older = std::cmp::Reverse((s.since, **c));
                (s.addresses(true), s.addresses(false), older)
            })?,
        };
        let want = usize::from(numwant).min(MAX_OWNERS_LISTED);
        let order = Order::Shuffled(seed);
        rank(&self.nodes, swarm, want, order, v6, &mut self.picked);
        Some(Picked {
            content: *content,
            size: swarm.size,
            contents: u32::try_from(swarms.len()).unwrap_or(u32::MAX),
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
                .map(|n| (n.clone(), n.to_lowercase()))
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
            .flat_map(|(name, swarms)| {
                swarms
                    .iter()
                    .filter(|(_, s)| !s.owners.is_empty())
                    .map(|(content, swarm)| SearchHit {
                        file: name.clone(),
                        content: *content,
                        size: swarm.size,
                        owner_count: u32::try_from(swarm.owners.len()).unwrap_or(u32::MAX),
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
            .map(|(addr, complete)| owner_ref(&self.nodes, addr, complete).into())
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
        let Some(node) = self.nodes.remove(&addr) else {
            return false;
        };
        let rows = isize::try_from(node.files.len()).unwrap_or(isize::MAX);
        self.count(addr, -1, -rows);
        for (file, content) in node.files {
            self.names_stale |= remove_owner(&mut self.files, &file, content, addr);
        }
        true
    }

    /// Drops owners that have not announced within the expiry time, and nodes left with no
    /// files. Returns whether anything was dropped.
    pub fn expire(&mut self, now: Instant) -> bool {
        let expiry = self.expiry;
        let mut dropped = Vec::new();
        for (file, swarms) in &mut self.files {
            for (content, swarm) in swarms.iter_mut() {
                swarm.owners.retain(|addr, o| {
                    let keep = now.saturating_duration_since(o.last_seen) < expiry;
                    if !keep {
                        dropped.push((*addr, file.clone(), *content));
                    }
                    keep
                });
            }
            swarms.retain(|_, s| !s.owners.is_empty());
        }
        let names = self.files.len();
        self.files.retain(|_, swarms| !swarms.is_empty());
        self.names_stale |= self.files.len() != names;
        for (addr, file, content) in &dropped {
            if let Some(node) = self.nodes.get_mut(addr)
                && node.files.get(file) == Some(content)
            {
                node.files.remove(file);
                self.count(*addr, 0, -1);
            }
        }
        let empty: Vec<SocketAddr> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.files.is_empty())
            .map(|(a, _)| *a)
            .collect();
        for addr in empty {
            self.nodes.remove(&addr);
            self.count(addr, -1, 0);
        }
        !dropped.is_empty()
    }

    /// Returns how many files (name and content), nodes and owner rows the table holds.
    pub fn sizes(&self) -> (usize, usize, usize) {
        let files = self.files.values().map(HashMap::len).sum();
        (files, self.nodes.len(), self.rows)
    }

    /// Returns a copy of the whole table, sorted for printing.
    pub fn snapshot(&self) -> Snapshot {
        let mut files: Vec<FileRow> = self
            .files
            .iter()
            .flat_map(|(name, swarms)| {
                swarms.iter().map(move |(content, swarm)| {
                    let mut owners: Vec<OwnerRow> = swarm
                        .owners
                        .iter()
                        .map(|(addr, o)| OwnerRow {
                            node: self
                                .nodes
                                .get(addr)
                                .map(|n| n.name.clone())
                                .unwrap_or_default(),
                            addr: *addr,
                            pieces: o.pieces,
                            complete: o.complete,
                        })
                        .collect();
                    owners.sort_by(|a, b| (&a.node, a.addr).cmp(&(&b.node, b.addr)));
                    FileRow {
                        file: name.clone(),
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
            .map(|(addr, n)| {
                let mut files: Vec<String> = n.files.keys().cloned().collect();
                files.sort();
                NodeRow {
                    node: n.name.clone(),
                    addr: *addr,
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

/// Removes `addr` from the swarm of `content` under `file`, and what it leaves empty.
/// Returns whether the name left the table.
fn remove_owner(
    files: &mut HashMap<String, HashMap<ContentId, Swarm>>,
    file: &str,
    content: ContentId,
    addr: SocketAddr,
) -> bool {
    let Some(swarms) = files.get_mut(file) else {
        return false;
    };
    if let Some(swarm) = swarms.get_mut(&content) {
        swarm.owners.remove(&addr);
        if swarm.owners.is_empty() {
            swarms.remove(&content);
        }
    }
    swarms.is_empty() && files.remove(file).is_some()
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::Announce;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    /// What a look-up finds, owned, so two can be compared.
    #[derive(Debug, PartialEq, Eq)]
    struct Found {
        content: ContentId,
        size: u64,
        owners: Vec<OwnerInfo>,
        contents: u32,
    }

    impl Registry {
        /// An IPv4 asker's look-up, owned.
        fn look_up(
            &mut self,
            file: &str,
            want: u16,
            seed: u64,
            pin: Option<ContentId>,
        ) -> Option<Found> {
            let p = self.need(file, want, seed, pin, false)?;
            Some(Found {
                content: p.content,
                size: p.size,
                owners: p.owners().map(OwnerInfo::from).collect(),
                contents: p.contents,
            })
        }
    }

    fn ann(node: &str, port: u16, file: &str, content: u8, sent: u64) -> Announce {
        Announce {
            node: node.into(),
            port,
            file: file.into(),
            content: ContentId([content; 32]),
            size: 1000,
            pieces: 4,
            complete: true,
            counters: Counters {
                files_sent: sent,
                ..Counters::default()
            },
        }
    }

    fn registry() -> (Registry, Instant) {
        (
            Registry::new(Duration::from_secs(10), TableLimits::default()),
            Instant::now(),
        )
    }

    #[test]
    fn need_lists_a_random_subset_complete_owners_first() {
        let (mut r, now) = registry();
        for port in 1..=40 {
            let mut a = ann(&format!("n{port}"), port, "f", 1, u64::from(port));
            a.complete = port <= 3;
            a.pieces = if a.complete { 10 } else { 5 };
            r.announce(IP, &a, now).unwrap();
        }
        let mut firsts = std::collections::HashSet::new();
        let mut listed = std::collections::HashSet::new();
        for seed in 0..50 {
            let found = r.look_up("f", 8, seed, None).unwrap();
            assert_eq!(found.owners.len(), 8);
            assert!(
                found.owners[..3].iter().all(|o| o.complete),
                "complete first"
            );
            assert!(found.owners[3..].iter().all(|o| !o.complete));
            firsts.insert(found.owners[3].addr);
            listed.extend(found.owners.iter().map(|o| o.addr));
        }
        // Fifty requests see most of the 37 partial owners, not the same five.
        assert!(listed.len() > 30, "{} owners listed", listed.len());
        assert!(firsts.len() > 10);
        assert_eq!(
            r.look_up("f", 8, 7, None),
            r.look_up("f", 8, 7, None),
            "a seed is one permutation"
        );
        assert!(r.look_up("g", 5, 0, None).is_none());
        // Search still ranks the original's best node first.
        assert_eq!(r.search("f")[0].owners[0].node, "n3");
    }

    /// Two live nodes under one name, at two addresses: both are listed, each with its
    /// address, and marked as sharing the name; a name used once is not marked.
    #[test]
    fn two_nodes_under_one_name_are_listed_apart_and_marked() {
        let (mut r, now) = registry();
        r.announce(IP, &ann("A", 1, "f", 1, 0), now).unwrap();
        r.announce(IpAddr::from([10, 0, 0, 2]), &ann("A", 2, "g", 2, 0), now)
            .unwrap();
        r.announce(IP, &ann("B", 3, "f", 1, 0), now).unwrap();
        let table = r.snapshot().to_string();
        let rows: Vec<&str> = table.lines().filter(|l| l.contains("sent")).collect();
        let a: Vec<&&str> = rows
            .iter()
            .filter(|l| l.trim_start().starts_with("A "))
            .collect();
        assert_eq!(a.len(), 2, "{table}");
        assert!(a.iter().any(|l| l.contains("127.0.0.1:1")), "{table}");
        assert!(a.iter().any(|l| l.contains("10.0.0.2:2")), "{table}");
        assert!(
            a.iter()
                .all(|l| l.ends_with("(another node uses this name)")),
            "{table}"
        );
        let b = rows
            .iter()
            .find(|l| l.trim_start().starts_with("B "))
            .unwrap();
        assert!(!b.contains("name)"), "{table}");
    }

    #[test]
    fn re_announcing_unchanged_is_not_a_change() {
        let (mut r, now) = registry();
        assert!(r.announce(IP, &ann("A", 1, "f", 1, 0), now).unwrap());
        assert!(!r.announce(IP, &ann("A", 1, "f", 1, 0), now).unwrap());
        assert!(r.announce(IP, &ann("A", 1, "f", 1, 1), now).unwrap());
    }

    #[test]
    fn need_answers_with_the_content_owned_from_most_addresses() {
        let (mut r, now) = registry();
        r.announce(IP, &ann("A", 1, "f", 1, 0), now).unwrap();
        r.announce(IpAddr::from([10, 0, 0, 2]), &ann("B", 2, "f", 2, 0), now)
            .unwrap();
        r.announce(IpAddr::from([10, 0, 0, 3]), &ann("C", 3, "f", 2, 0), now)
            .unwrap();
        assert_eq!(
            r.look_up("f", 10, 0, None).unwrap().content,
            ContentId([2; 32])
        );
        // A changes its file to content 2: content 1 has no owner left.
        r.announce(IP, &ann("A", 1, "f", 2, 0), now).unwrap();
        assert_eq!(r.look_up("f", 10, 0, None).unwrap().owners.len(), 3);
        assert_eq!(r.snapshot().files.len(), 1);
    }

    #[test]
    fn exit_removes_the_node_everywhere() {
        let (mut r, now) = registry();
        r.announce(IP, &ann("A", 1, "f", 1, 0), now).unwrap();
        r.announce(IP, &ann("A", 1, "g", 3, 0), now).unwrap();
        r.announce(IP, &ann("B", 2, "g", 3, 0), now).unwrap();
        assert!(r.exit(SocketAddr::new(IP, 1)));
        assert!(!r.exit(SocketAddr::new(IP, 1)));
        assert!(r.look_up("f", 5, 0, None).is_none());
        assert_eq!(r.look_up("g", 5, 0, None).unwrap().owners.len(), 1);
        assert_eq!(r.snapshot().nodes.len(), 1);
    }

    #[test]
    fn silent_owners_expire_after_three_intervals() {
        let (mut r, now) = registry();
        r.announce(IP, &ann("A", 1, "f", 1, 0), now).unwrap();
        r.announce(IP, &ann("B", 2, "f", 1, 0), now + Duration::from_secs(20))
            .unwrap();
        assert!(!r.expire(now + Duration::from_secs(29)));
        assert!(r.expire(now + Duration::from_secs(30)));
        let found = r.look_up("f", 5, 0, None).unwrap();
        assert_eq!(found.owners.len(), 1);
        assert_eq!(found.owners[0].node, "B");
        assert!(r.expire(now + Duration::from_secs(50)));
        assert_eq!(r.snapshot(), Snapshot::default());
    }

    #[test]
    fn bad_announces_are_refused() {
        let (mut r, now) = registry();
        assert!(r.announce(IP, &ann("A", 1, "../x", 1, 0), now).is_err());
        assert!(r.announce(IP, &ann("", 1, "x", 1, 0), now).is_err());
        assert!(r.announce(IP, &ann("A", 0, "x", 1, 0), now).is_err());
        assert_eq!(r.snapshot(), Snapshot::default());
    }

    #[test]
    fn search_matches_substrings_ignoring_case() {
        let (mut r, now) = registry();
        r.announce(IP, &ann("A", 1, "Movie.bin", 1, 0), now)
            .unwrap();
        r.announce(IP, &ann("A", 1, "notes.txt", 2, 0), now)
            .unwrap();
        let hits = r.search("movie");
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].file, "Movie.bin");
        assert_eq!(hits[0].owner_count, 1);
        assert_eq!(r.search("").len(), 2);
    }

    #[test]
    fn one_address_cannot_grow_the_table_past_its_limits() {
        let limits = TableLimits {
            nodes_per_address: 2,
            files_per_node: 3,
            rows_per_address: 5,
            rows: 7,
        };
        let mut r = Registry::new(Duration::from_secs(10), limits);
        let now = Instant::now();
        for f in 0..3 {
            r.announce(IP, &ann("a", 1, &format!("f{f}"), 1, 0), now)
                .unwrap();
        }
        let err = r.announce(IP, &ann("a", 1, "f3", 1, 0), now).unwrap_err();
        assert!(err.contains("files per node"), "{err}");
        // Re-announcing what is listed is never refused.
        r.announce(IP, &ann("a", 1, "f0", 2, 0), now).unwrap();
        r.announce(IP, &ann("b", 2, "g0", 1, 0), now).unwrap();
        let err = r.announce(IP, &ann("c", 3, "h0", 1, 0), now).unwrap_err();
        assert!(err.contains("nodes per address"), "{err}");
        r.announce(IP, &ann("b", 2, "g1", 1, 0), now).unwrap();
        let err = r.announce(IP, &ann("b", 2, "g2", 1, 0), now).unwrap_err();
        assert!(err.contains("from one address"), "{err}");
        // Other addresses fill the rest of the table, then nobody can add.
        let other = IpAddr::from([10, 0, 0, 2]);
        r.announce(other, &ann("d", 1, "x", 1, 0), now).unwrap();
        r.announce(other, &ann("d", 1, "y", 1, 0), now).unwrap();
        let err = r.announce(other, &ann("d", 1, "z", 1, 0), now).unwrap_err();
        assert!(err.contains("table is full"), "{err}");
        // Leaving frees the rows and the node's place.
        assert!(r.exit(SocketAddr::new(IP, 1)));
        r.announce(IP, &ann("c", 3, "h0", 1, 0), now).unwrap();
        r.announce(other, &ann("d", 1, "z", 1, 0), now).unwrap();
        // Expiry frees them too.
        assert!(r.expire(now + Duration::from_secs(60)));
        assert_eq!((r.rows, r.usage.len()), (0, 0));
    }

    #[test]
    fn search_scans_a_copy_of_the_names_rebuilt_when_they_change() {
        let (mut r, now) = registry();
        r.announce(IP, &ann("a", 1, "Movie.bin", 1, 0), now)
            .unwrap();
        let before = r.names();
        assert!(
            Arc::ptr_eq(&before, &r.names()),
            "unchanged names are not rebuilt"
        );
        r.announce(IP, &ann("a", 1, "movie-2.bin", 1, 0), now)
            .unwrap();
        assert_eq!(r.search("MOVIE").len(), 2);
        assert!(r.exit(SocketAddr::new(IP, 1)));
        assert!(r.search("movie").is_empty());
    }

    #[test]
    fn need_prefers_complete_owners_on_distinct_addresses_then_the_older_content() {
        let (mut r, now) = registry();
        let genuine = IpAddr::from([10, 0, 0, 1]);
        let squatter = IpAddr::from([10, 0, 0, 2]);
        r.announce(genuine, &ann("real", 1, "movie.bin", 1, 0), now)
            .unwrap();
        // One host announcing its own file from three ports is one address.
        for port in 1..=3 {
            r.announce(squatter, &ann("fake", port, "movie.bin", 2, 0), now)
                .unwrap();
        }
        let found = r.look_up("movie.bin", 10, 1, None).unwrap();
        assert_eq!(found.content, ContentId([1; 32]));
        assert_eq!(found.contents, 2);
        // A pin gets the pinned content, and only it.
        let pinned = r
            .look_up("movie.bin", 10, 1, Some(ContentId([2; 32])))
            .unwrap();
        assert_eq!(pinned.content, ContentId([2; 32]));
        assert_eq!(pinned.owners.len(), 3);
        assert!(
            r.look_up("movie.bin", 10, 1, Some(ContentId([9; 32])))
                .is_none()
        );
        // Partial owners of a stale content do not outvote a complete owner of the new.
        let mut stale = ann("leech", 1, "doc.bin", 3, 0);
        stale.complete = false;
        for last in 10..20 {
            r.announce(IpAddr::from([10, 0, 1, last]), &stale, now)
                .unwrap();
        }
        r.announce(genuine, &ann("real", 1, "doc.bin", 4, 0), now)
            .unwrap();
        assert_eq!(
            r.look_up("doc.bin", 10, 1, None).unwrap().content,
            ContentId([4; 32])
        );
    }
}
