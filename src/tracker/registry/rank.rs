//! Which owners the tracker lists, and in what order: complete owners first, then a random
//! subset drawn afresh for each download's look-up, or the best for a search.
//!
//! The picks are node ids; [`owner_ref`] names one from the table when the reply is
//! written, so only the owners listed are looked up, each by index.

use std::cmp::Reverse;
use std::net::SocketAddr;

use super::Swarm;
use super::nodes::{NodeId, Nodes};
use crate::tracker::wire::OwnerRef;

/// How owners are ordered within the complete and the partial ones.
#[derive(Debug, Clone, Copy)]
pub(super) enum Order {
    /// Most files sent first, then most bytes (search results, for people).
    Best,
    /// A random permutation drawn from the seed (owners for a download).
    Shuffled(u64),
}

/// Puts in `out` (cleared first) up to `want` owners of `swarm` of one address family
/// (`v6`), complete ones first, then in `order`. `out` is the caller's, kept from one
/// look-up to the next, so a look-up allocates nothing once it has grown.
pub(super) fn rank(
    nodes: &Nodes,
    swarm: &Swarm,
    want: usize,
    order: Order,
    v6: bool,
    out: &mut Vec<(NodeId, bool)>,
) {
    out.clear();
    out.extend(
        swarm
            .listed()
            .iter()
            .filter(|l| l.v6() == v6)
            .map(|l| (l.node(), l.complete())),
    );
    let want = want.min(out.len());
    match order {
        Order::Shuffled(seed) => shuffle_front(out, want, seed),
        Order::Best => {
            // The original's "best node": most files sent, then most bytes.
            let key = |&(id, complete): &(NodeId, bool)| {
                let node = nodes.by_id(id);
                let c = node.map(|n| n.counters).unwrap_or_default();
                (
                    Reverse(complete),
                    Reverse(c.files_sent),
                    Reverse(c.bytes_sent),
                    node.map(|n| n.addr),
                )
            };
            // The best `want` found in linear time, then only those sorted: a search
            // lists a few owners of swarms that may hold thousands.
            let mut keyed: Vec<_> = out.iter().map(|o| (key(o), *o)).collect();
            if want < keyed.len() && want > 0 {
                keyed.select_nth_unstable_by_key(want - 1, |(k, _)| *k);
            }
            keyed.truncate(want);
            keyed.sort_unstable_by_key(|(k, _)| *k);
            out.clear();
            out.extend(keyed.into_iter().map(|(_, o)| o));
        }
    }
    out.truncate(want);
    // A swarm lists only nodes in the table; should one not be, it is left out rather
    // than named wrongly (`owner_ref` then never meets it).
    out.retain(|&(id, _)| nodes.by_id(id).is_some());
}

/// The owner `id` as a reply lists it, named from the table. `rank` picks only ids the
/// table holds; any other is named as nobody at the unspecified address.
pub(super) fn owner_ref(nodes: &Nodes, id: NodeId, complete: bool) -> OwnerRef<'_> {
    let node = nodes.by_id(id);
    OwnerRef {
        node: node.map_or("", |n| n.name.as_str()),
        addr: node.map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |n| n.addr),
        uploads: node.map_or(0, |n| n.counters.files_sent),
        complete,
    }
}

/// Puts `want` owners drawn at random from `seed` at the front of `owners`, complete ones
/// first: the complete ones are moved ahead, then a partial Fisher-Yates shuffle fills
/// each place from what is left of its group. Linear in the owners, with one draw per
/// place; a fresh seed per request gives each asker its own random subset.
fn shuffle_front<T>(owners: &mut [(T, bool)], want: usize, seed: u64) {
    let mut complete = 0;
    for i in 0..owners.len() {
        if owners[i].1 {
            owners.swap(i, complete);
            complete += 1;
        }
    }
    let mut rng = fastrand::Rng::with_seed(seed);
    for i in 0..want.min(owners.len()) {
        let end = if i < complete { complete } else { owners.len() };
        owners.swap(i, rng.usize(i..end));
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    /// Each place is filled uniformly from what is left of its group: with four complete
    /// owners among ten, a one-owner answer names each complete owner about as often,
    /// never a partial one; a full answer lists every owner once.
    #[test]
    fn the_random_subset_is_drawn_evenly_from_the_complete_owners_first() {
        let mut owners: Vec<(SocketAddr, bool)> = (1..=10u16)
            .map(|p| (SocketAddr::new(IP, p), p % 3 == 0 || p == 10))
            .collect();
        let mut picked = std::collections::HashMap::new();
        for seed in 0..4000 {
            shuffle_front(&mut owners, 1, seed);
            assert!(owners[0].1, "a complete owner first");
            *picked.entry(owners[0].0.port()).or_insert(0) += 1;
        }
        assert_eq!(picked.len(), 4, "{picked:?}");
        assert!(
            picked.values().all(|&n| (850..1150).contains(&n)),
            "{picked:?}"
        );
        shuffle_front(&mut owners, 10, 99);
        assert!(owners[..4].iter().all(|o| o.1) && owners[4..].iter().all(|o| !o.1));
        let mut ports: Vec<u16> = owners.iter().map(|o| o.0.port()).collect();
        ports.sort_unstable();
        assert_eq!(ports, (1..=10).collect::<Vec<_>>());
    }
}
