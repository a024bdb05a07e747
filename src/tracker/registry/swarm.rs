//! The owners of one content under one name, kept dense: a look-up walks them in one
//! pass over contiguous memory instead of a hash table's scattered buckets.
//!
//! The owners sit in two parallel vectors, in no order: what a look-up reads of each
//! (its node id and two flags, packed in four bytes, [`Listed`]) and what only announces
//! and sweeps read (pieces, last announce). Fifty owners' look-up halves fill four cache
//! lines, where whole 32-byte entries filled twenty-five, each cold in a large table. A
//! removal moves the last owner into the hole.
//!
//! An announce finds its owner's place by scanning the look-up half while the swarm is
//! small (at most [`SCANNED`] owners: as many cache lines as a hash probe's two misses);
//! a larger swarm keeps an index from node id to place.

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
    /// Node id → place in both vectors, kept only past [`SCANNED`] owners (and until the
    /// swarm shrinks to half that); empty otherwise.
    index: HashMap<NodeId, u32>,
}

/// Most owners a swarm finds an owner among by scanning: 64 four-byte entries are four
/// cache lines, read in a stream.
pub(super) const SCANNED: usize = 64;

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
        if let Some(at) = self.place(owner.node) {
            let (l, s) = (self.listed.get_mut(at)?, self.state.get_mut(at)?);
            let old = self::owner(*l, *s);
            (*l, *s) = (listed, state);
            return Some(old);
        }
        let at = self.listed.len();
        self.listed.push(listed);
        self.state.push(state);
        if !self.index.is_empty() {
            self.index.insert(owner.node, place_number(at));
        } else if self.listed.len() > SCANNED {
            self.reindex();
        }
        None
    }

    /// Removes the owner `node`; returns whether it was there.
    pub fn remove(&mut self, node: NodeId) -> bool {
        let Some(at) = self.place(node) else {
            return false;
        };
        self.listed.swap_remove(at);
        self.state.swap_remove(at);
        if !self.index.is_empty() {
            self.index.remove(&node);
            if let Some(moved) = self.listed.get(at) {
                self.index.insert(moved.node(), place_number(at));
            }
            if self.listed.len() < SCANNED / 2 {
                self.reindex();
            }
        }
        true
    }

    /// Where the owner `node` sits in both vectors, if it is an owner.
    fn place(&self, node: NodeId) -> Option<usize> {
        if self.index.is_empty() {
            self.listed.iter().position(|l| l.node() == node)
        } else {
            let at = *self.index.get(&node)? as usize;
            (at < self.listed.len()).then_some(at)
        }
    }

    /// Builds the index if the swarm is past [`SCANNED`] owners, or drops it.
    fn reindex(&mut self) {
        if self.listed.len() > SCANNED {
            self.index.clear();
            for (at, l) in self.listed.iter().enumerate() {
                self.index.insert(l.node(), place_number(at));
            }
        } else {
            self.index = HashMap::default();
        }
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
            self.reindex();
            self.index.shrink_to_fit();
            self.listed.shrink_to_fit();
            self.state.shrink_to_fit();
        }
    }

    /// How many distinct addresses (IPv6 /64s) its owners are on, only complete ones if
    /// `complete`; `scratch` is the caller's, kept so a look-up allocates nothing once it
    /// has grown.
    pub fn addresses(&self, nodes: &Nodes, complete: bool, scratch: &mut Vec<IpAddr>) -> usize {
        scratch.clear();
        scratch.extend(
            self.listed
                .iter()
                .filter(|l| l.complete() || !complete)
                .filter_map(|l| nodes.by_id(l.node()))
                .map(|n| address_key(n.addr.ip())),
        );
        scratch.sort_unstable();
        scratch.dedup();
        scratch.len()
    }
}

/// A place as the index keeps it: the node count's cap keeps a swarm far below
/// `u32::MAX`.
fn place_number(at: usize) -> u32 {
    u32::try_from(at).unwrap_or(u32::MAX)
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

    /// One step of [`the_swarm_matches_a_model_scanned_and_indexed`].
    #[derive(Debug, Clone)]
    enum Step {
        Insert(u32, u32),
        Remove(u32),
        /// Keeps the owners whose id modulo the first is not the second.
        Retain(u32, u32),
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            8 => (0..160u32, 0..4u32).prop_map(|(n, p)| Step::Insert(n, p)),
            3 => (0..160u32).prop_map(Step::Remove),
            1 => (2..9u32, 0..9u32).prop_map(|(m, r)| Step::Retain(m, r)),
        ]
    }

    proptest::proptest! {
        /// Owners come and go past [`SCANNED`] and back below half of it, so the swarm
        /// builds and drops its index; after every step it holds exactly what a plain
        /// map holds, and each insert finds the owner it replaces.
        #[test]
        fn the_swarm_matches_a_model_scanned_and_indexed(
            steps in proptest::collection::vec(step(), 1..600)
        ) {
            use std::collections::BTreeMap;
            let now = Instant::now();
            let mut swarm = Swarm::new(1, now);
            let mut model: BTreeMap<NodeId, Owner> = BTreeMap::new();
            for step in steps {
                match step {
                    Step::Insert(n, pieces) => {
                        let o = Owner {
                            node: NodeId::from_index(n),
                            pieces,
                            complete: pieces == 3,
                            v6: n % 5 == 0,
                            last_seen: now,
                        };
                        proptest::prop_assert_eq!(swarm.insert(o), model.insert(o.node, o));
                    }
                    Step::Remove(n) => {
                        let id = NodeId::from_index(n);
                        proptest::prop_assert_eq!(swarm.remove(id), model.remove(&id).is_some());
                    }
                    Step::Retain(m, r) => {
                        let keep = |o: &Owner| o.node.index() % m != r;
                        let mut gone = Vec::new();
                        swarm.retain(keep, |o| gone.push(o.node));
                        let before = model.len();
                        model.retain(|_, o| keep(o));
                        proptest::prop_assert_eq!(gone.len(), before - model.len());
                    }
                }
                let mut held: Vec<Owner> = swarm.owners().collect();
                held.sort_unstable_by_key(|o| o.node);
                let want: Vec<Owner> = model.values().copied().collect();
                proptest::prop_assert_eq!(held, want);
                proptest::prop_assert!(
                    swarm.index.is_empty() || swarm.len() >= SCANNED / 2,
                    "the index is dropped below half"
                );
            }
        }
    }
}
