//! The owners of one content under one name, kept dense: a look-up walks them in one
//! pass over contiguous memory instead of a hash table's scattered buckets.
//!
//! The owners sit in a vector, in no order; an index from node id to place finds one to
//! update or remove, and a removal moves the last owner into the hole.

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
    owners: Vec<Owner>,
    /// Node id → place in `owners`.
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

impl Swarm {
    /// A swarm with no owners yet.
    pub fn new(size: u64, since: Instant) -> Self {
        Self {
            size,
            since,
            owners: Vec::new(),
            index: HashMap::default(),
        }
    }

    /// How many owners it has.
    pub fn len(&self) -> usize {
        self.owners.len()
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// Every owner, in no particular order.
    pub fn owners(&self) -> &[Owner] {
        &self.owners
    }

    /// Adds `owner`, or replaces what the swarm held for its node; returns what it held.
    pub fn insert(&mut self, owner: Owner) -> Option<Owner> {
        if let Some(&at) = self.index.get(&owner.node) {
            let slot = self.owners.get_mut(at as usize)?;
            return Some(std::mem::replace(slot, owner));
        }
        // A swarm is bounded by the table's row limit, far below u32::MAX.
        let at = u32::try_from(self.owners.len()).unwrap_or(u32::MAX);
        self.index.insert(owner.node, at);
        self.owners.push(owner);
        None
    }

    /// Removes the owner `node`; returns whether it was there.
    pub fn remove(&mut self, node: NodeId) -> bool {
        let Some(at) = self.index.remove(&node) else {
            return false;
        };
        let at = at as usize;
        if at >= self.owners.len() {
            return false;
        }
        self.owners.swap_remove(at);
        if let Some(moved) = self.owners.get(at) {
            self.index.insert(moved.node, at as u32);
        }
        true
    }

    /// Removes every owner for which `keep` is false, passing each to `gone`.
    pub fn retain(&mut self, mut keep: impl FnMut(&Owner) -> bool, mut gone: impl FnMut(&Owner)) {
        let before = self.owners.len();
        self.owners.retain(|o| {
            let kept = keep(o);
            if !kept {
                gone(o);
            }
            kept
        });
        if self.owners.len() != before {
            self.index.clear();
            for (at, o) in self.owners.iter().enumerate() {
                self.index.insert(o.node, at as u32);
            }
            self.index.shrink_to_fit();
            self.owners.shrink_to_fit();
        }
    }

    /// How many distinct addresses (IPv6 /64s) its owners are on, only complete ones if
    /// `complete`.
    pub fn addresses(&self, nodes: &Nodes, complete: bool) -> usize {
        let mut ips: Vec<IpAddr> = self
            .owners
            .iter()
            .filter(|o| o.complete || !complete)
            .filter_map(|o| nodes.by_id(o.node))
            .map(|n| address_key(n.addr.ip()))
            .collect();
        ips.sort_unstable();
        ips.dedup();
        ips.len()
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
            complete: false,
            v6: false,
            last_seen: now,
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
        let mut left: Vec<(NodeId, u32)> =
            swarm.owners().iter().map(|o| (o.node, o.pieces)).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            vec![(all[2].node, 1), (all[4].node, 1), (all[5].node, 9)]
        );
        for o in [all[2], all[4], all[5]] {
            assert!(swarm.remove(o.node), "each left is found by its id");
        }
        assert!(swarm.is_empty());
    }
}
