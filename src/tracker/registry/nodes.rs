//! The table's nodes, each under a small number ([`NodeId`]) that swarms list instead of
//! its address.
//!
//! A look-up names up to fifty owners; with the nodes in a slab, naming one is an index,
//! not a hash of its address, and a swarm's owner is four bytes of id rather than a
//! 32-byte address. Ids are reused once their node is gone: the table removes a node only
//! after it has left every swarm, so no swarm holds an id that names someone else.

use std::net::SocketAddr;

use super::HashMap;
use crate::messages::Counters;
use crate::tracker::wire::NodeWire;

/// A node's place in [`Nodes`], below [`MAX_NODES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct NodeId(u32);

/// Most nodes the table holds: an id fits in 30 bits, so a swarm packs it with two flags
/// in four bytes. The table refuses a new node past it (the default row cap keeps the
/// table a thousand times smaller).
pub(super) const MAX_NODES: usize = 1 << 30;

impl NodeId {
    /// The id as a number below [`MAX_NODES`].
    pub fn index(self) -> u32 {
        self.0
    }

    /// The id numbered `index` (below [`MAX_NODES`]), as [`index`](Self::index) gave it.
    pub fn from_index(index: u32) -> Self {
        Self(index)
    }
}

/// One node: where it serves, what it calls itself, its counters and its files.
#[derive(Debug)]
pub(super) struct NodeEntry {
    pub addr: SocketAddr,
    pub name: String,
    pub counters: Counters,
    /// File name → the content this node announced under it (one per name).
    pub files: HashMap<super::Name, crate::messages::ContentId>,
    /// Its name, address and uploads as an answer lists them, kept in step by `announce`.
    pub wire: NodeWire,
}

/// Every node in the table, found by address or by id.
#[derive(Debug, Default)]
pub(super) struct Nodes {
    slots: Vec<Option<NodeEntry>>,
    /// Slots left empty by nodes that went, taken again first.
    free: Vec<NodeId>,
    by_addr: HashMap<SocketAddr, NodeId>,
}

impl Nodes {
    /// How many nodes there are.
    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    /// The id of the node at `addr`.
    pub fn id(&self, addr: &SocketAddr) -> Option<NodeId> {
        self.by_addr.get(addr).copied()
    }

    /// The node at `addr`.
    pub fn get(&self, addr: &SocketAddr) -> Option<&NodeEntry> {
        self.id(addr).and_then(|id| self.by_id(id))
    }

    /// The node `id` names.
    pub fn by_id(&self, id: NodeId) -> Option<&NodeEntry> {
        self.slots.get(id.0 as usize).and_then(Option::as_ref)
    }

    /// The node `id` names, to change.
    pub fn by_id_mut(&mut self, id: NodeId) -> Option<&mut NodeEntry> {
        self.slots.get_mut(id.0 as usize).and_then(Option::as_mut)
    }

    /// The node at `addr`, added with no name, counters or files if it is new, and its id.
    pub fn entry(&mut self, addr: SocketAddr) -> (NodeId, &mut NodeEntry) {
        let id = match self.by_addr.get(&addr) {
            Some(&id) => id,
            None => self.add(addr),
        };
        let slot = &mut self.slots[id.0 as usize];
        // `add` filled the slot, and a listed id's slot is never emptied while listed.
        let node = slot.get_or_insert_with(|| blank(addr));
        (id, node)
    }

    /// Removes the node at `addr`; returns it with the id it had.
    pub fn remove(&mut self, addr: &SocketAddr) -> Option<(NodeId, NodeEntry)> {
        let id = self.by_addr.remove(addr)?;
        let node = self.slots.get_mut(id.0 as usize)?.take()?;
        self.free.push(id);
        Some((id, node))
    }

    /// Every node.
    pub fn iter(&self) -> impl Iterator<Item = &NodeEntry> {
        self.slots.iter().flatten()
    }

    /// Puts a blank node for `addr` in a free slot, or a new one.
    fn add(&mut self, addr: SocketAddr) -> NodeId {
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id.0 as usize] = Some(blank(addr));
                id
            }
            None => {
                // The table refuses new nodes before MAX_NODES, far below u32::MAX.
                let id = NodeId(u32::try_from(self.slots.len()).unwrap_or(u32::MAX));
                self.slots.push(Some(blank(addr)));
                id
            }
        };
        self.by_addr.insert(addr, id);
        id
    }
}

fn blank(addr: SocketAddr) -> NodeEntry {
    NodeEntry {
        addr,
        name: String::new(),
        counters: Counters::default(),
        files: HashMap::default(),
        wire: NodeWire::EMPTY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A slot left by a node that went is taken by the next one, and each id names the
    /// node it was given to.
    #[test]
    fn ids_are_reused_and_name_their_node() {
        let mut nodes = Nodes::default();
        let (a, _) = nodes.entry(addr(1));
        let (b, node) = nodes.entry(addr(2));
        node.name = "b".into();
        assert_eq!(nodes.entry(addr(2)).0, b, "the same node keeps its id");
        assert_eq!(nodes.remove(&addr(1)).map(|(id, _)| id), Some(a));
        assert!(nodes.by_id(a).is_none() && nodes.get(&addr(1)).is_none());
        let (c, _) = nodes.entry(addr(3));
        assert_eq!(c, a, "the free slot is taken again");
        assert_eq!(nodes.by_id(c).map(|n| n.addr), Some(addr(3)));
        assert_eq!(nodes.by_id(b).map(|n| n.name.as_str()), Some("b"));
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes.iter().count(), 2);
        assert!(nodes.remove(&addr(1)).is_none());
    }
}
