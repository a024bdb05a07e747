//! The owners of one content under one name, kept dense: a look-up walks them in one
//! pass over contiguous memory instead of a hash table's scattered buckets.
//!
//! The owners sit in two parallel vectors, in no order: what a look-up reads of each
//! (its node id and two flags, packed in four bytes, [`Listed`]) and what only announces
//! and sweeps read (pieces, last announce). Fifty owners' look-up halves fill four cache
//! lines, where whole 32-byte entries filled twenty-five, each cold in a large table. An
//! index from node id to place finds an owner to update or remove, and a removal moves
//! the last owner into the hole.

use std::net::IpAddr;
use std::time::Instant;

use super::HashMap;
use super::nodes::{NodeId, Nodes};
use crate::host::address_key;

/// The owners of one content, and what the content is.
#[derive(Debug)]
pub(super) struct Swarm {
    pub size: u64,
    /// When this content was first announced under its name: of two contents owned
    /// alike, the older one is listed (a newcomer cannot take over a name by matching it).
    pub since: Instant,
    listed: Vec<Listed>,
    /// Beside `listed`, place for place.
    state: Vec<State>,
    /// Node id → place in both vectors.
    index: HashMap<NodeId, u32>,
}

/// One owner of a swarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Owner {
    pub node: NodeId,
    pub pieces: u32,
    pub complete: bool,
    /// Whether the node serves on IPv6: only askers of its family are given it.
    pub v6: bool,
    pub last_seen: Instant,
}

/// What a look-up reads of an owner: its node id (below
/// [`MAX_NODES`](super::nodes::MAX_NODES)), whether it is complete, and whether it
/// serves on IPv6, in four bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Listed(u32);

/// What only announces and sweeps read of an owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    pieces: u32,
    last_seen: Instant,
}

impl Listed {
    const COMPLETE: u32 = 1;
    const V6: u32 = 2;

    fn new(o: &Owner) -> Self {
        let flags = if o.complete { Self::COMPLETE } else { 0 } | if o.v6 { Self::V6 } else { 0 };
        Self(o.node.index() << 2 | flags)
    }

    /// The owner's node.
    pub fn node(self) -> NodeId {
        NodeId::from_index(self.0 >> 2)
    }

    /// Whether it holds the whole file.
    pub fn complete(self) -> bool {
        self.0 & Self::COMPLETE != 0
    }

    /// Whether it serves on IPv6.
    pub fn v6(self) -> bool {
        self.0 & Self::V6 != 0
    }
}

impl Swarm {
    /// A swarm with no owners yet.
    pub fn new(size: u64, since: Instant) -> Self {
        Self {
            size,
            since,
            listed: Vec::new(),
            state: Vec::new(),
            index: HashMap::default(),
        }
    }

    /// How many owners it has.
    pub fn len(&self) -> usize {
        self.listed.len()
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.listed.is_empty()
    }

    /// What a look-up reads of every owner, in no particular order.
    pub fn listed(&self) -> &[Listed] {
        &self.listed
    }

    /// Every owner, whole, in no particular order.
    pub fn owners(&self) -> impl Iterator<Item = Owner> + '_ {
        self.listed
            .iter()
            .zip(&self.state)
            .map(|(l, s)| owner(*l, *s))
    }

    /// Adds `owner`, or replaces what the swarm held for its node; returns what it held.
    pub fn insert(&mut self, owner: Owner) -> Option<Owner> {
        let (listed, state) = (
            Listed::new(&owner),
            State {
                pieces: owner.pieces,
                last_seen: owner.last_seen,
            },
        );
        if let Some(&at) = self.index.get(&owner.node) {
            let at = at as usize;
            let (l, s) = (self.listed.get_mut(at)?, self.state.get_mut(at)?);
            let old = self::owner(*l, *s);
            (*l, *s) = (listed, state);
            return Some(old);
        }
        // The node count's cap keeps a swarm far below u32::MAX.
        let at = u32::try_from(self.listed.len()).unwrap_or(u32::MAX);
        self.index.insert(owner.node, at);
        self.listed.push(listed);
        self.state.push(state);
        None
    }

    /// Removes the owner `node`; returns whether it was there.
    pub fn remove(&mut self, node: NodeId) -> bool {
        let Some(at) = self.index.remove(&node) else {
            return false;
        };
        let at = at as usize;
        if at >= self.listed.len() {
            return false;
        }
        self.listed.swap_remove(at);
        self.state.swap_remove(at);
        if let Some(moved) = self.listed.get(at) {
            self.index.insert(moved.node(), at as u32);
        }
        true
    }

    /// Removes every owner for which `keep` is false, passing each to `gone`.
    pub fn retain(&mut self, mut keep: impl FnMut(&Owner) -> bool, mut gone: impl FnMut(&Owner)) {
        let before = self.listed.len();
        let mut at = 0;
        while at < self.listed.len() {
            let o = owner(self.listed[at], self.state[at]);
            if keep(&o) {
                at += 1;
            } else {
                gone(&o);
                self.listed.swap_remove(at);
                self.state.swap_remove(at);
            }
        }
        if self.listed.len() != before {
            self.index.clear();
            for (at, l) in self.listed.iter().enumerate() {
                self.index.insert(l.node(), at as u32);
            }
            self.index.shrink_to_fit();
            self.listed.shrink_to_fit();
            self.state.shrink_to_fit();
        }
    }

    /// How many distinct addresses (IPv6 /64s) its owners are on, only complete ones if
    /// `complete`.
    pub fn addresses(&self, nodes: &Nodes, complete: bool) -> usize {
        let mut ips: Vec<IpAddr> = self
            .listed
            .iter()
            .filter(|l| l.complete() || !complete)
            .filter_map(|l| nodes.by_id(l.node()))
            .map(|n| address_key(n.addr.ip()))
            .collect();
        ips.sort_unstable();
        ips.dedup();
        ips.len()
    }
}

/// An owner, whole, from its two halves.
fn owner(l: Listed, s: State) -> Owner {
    Owner {
        node: l.node(),
        pieces: s.pieces,
        complete: l.complete(),
        v6: l.v6(),
        last_seen: s.last_seen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(nodes: &mut Nodes, port: u16, pieces: u32, now: Instant) -> Owner {
        let (node, _) = nodes.entry(([127, 0, 0, 1], port).into());
        Owner {
            node,
            pieces,
            complete: port.is_multiple_of(2),
            v6: port.is_multiple_of(3),
            last_seen: now + std::time::Duration::from_millis(u64::from(port)),
        }
    }

    /// Owners are found again after others are removed around them (the last one moves
    /// into each hole), and after a sweep.
    #[test]
    fn owners_stay_findable_through_removals() {
        let (mut nodes, now) = (Nodes::default(), Instant::now());
        let mut swarm = Swarm::new(10, now);
        let all: Vec<Owner> = (1..=6).map(|p| owner(&mut nodes, p, 1, now)).collect();
        for o in &all {
            assert_eq!(swarm.insert(*o), None);
        }
        let updated = Owner {
            pieces: 9,
            ..all[5]
        };
        assert_eq!(swarm.insert(updated), Some(all[5]));
        assert!(swarm.remove(all[0].node), "the first, filled by the last");
        assert!(!swarm.remove(all[0].node), "gone already");
        assert!(swarm.remove(all[3].node));
        let mut gone = Vec::new();
        swarm.retain(|o| o.node != all[1].node, |o| gone.push(o.node));
        assert_eq!(gone, vec![all[1].node]);
        // Each owner reads back whole, its flags and time from the two halves.
        let mut left: Vec<Owner> = swarm.owners().collect();
        left.sort_unstable_by_key(|o| o.node);
        assert_eq!(left, vec![all[2], all[4], updated]);
        let listed: Vec<(NodeId, bool, bool)> = swarm
            .listed()
            .iter()
            .map(|l| (l.node(), l.complete(), l.v6()))
            .collect();
        let whole: Vec<(NodeId, bool, bool)> =
            swarm.owners().map(|o| (o.node, o.complete, o.v6)).collect();
        assert_eq!(listed, whole, "a look-up reads what the owner is");
        for o in [all[2], all[4], all[5]] {
            assert!(swarm.remove(o.node), "each left is found by its id");
        }
        assert!(swarm.is_empty());
    }
}
