//! The table's tests: look-ups, announces, expiry, limits and searches, and a model
//! of the table that random operations are checked against.

use super::*;
use crate::messages::{Announce, Counters};

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
        self.look_up_as(file, want, seed, pin, false)
    }

    /// An IPv6 asker's look-up of every owner of `file`, which must have some.
    fn look_up_v6(&mut self, file: &str) -> Found {
        self.look_up_as(file, 50, 0, None, true).unwrap()
    }

    fn look_up_as(
        &mut self,
        file: &str,
        want: u16,
        seed: u64,
        pin: Option<ContentId>,
        v6: bool,
    ) -> Option<Found> {
        let p = self.need(file, want, seed, pin, v6)?;
        Some(Found {
            content: p.content,
            size: p.size,
            // Read back from the bytes a reply copies, as a node decodes them.
            owners: p
                .owners()
                .map(|(node, complete)| {
                    let bytes = [node.as_bytes(), &[u8::from(complete)]].concat();
                    postcard::from_bytes(&bytes).unwrap()
                })
                .collect(),
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

/// The longest node a stranger may announce (a 64-byte name, an IPv6 address, the
/// largest count) is listed whole; a byte longer is refused and changes nothing.
#[test]
fn the_longest_node_is_listed_and_a_longer_one_refused() {
    let (mut r, now) = registry();
    let v6 = IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 1, 2, 3, 4, 5, 6, 7));
    let longest = "n".repeat(MAX_NODE_NAME_LEN);
    r.announce(v6, &ann(&longest, u16::MAX, "f", 1, u64::MAX), now)
        .unwrap();
    let found = r.look_up_v6("f");
    assert_eq!(found.owners.len(), 1);
    assert_eq!(found.owners[0].node, longest);
    assert_eq!(found.owners[0].addr, SocketAddr::new(v6, u16::MAX));
    assert_eq!(found.owners[0].uploads, u64::MAX);
    let before = r.snapshot();
    let longer = "n".repeat(MAX_NODE_NAME_LEN + 1);
    assert!(r.announce(v6, &ann(&longer, 1, "g", 1, 0), now).is_err());
    assert!(
        r.announce(v6, &ann(&longer, u16::MAX, "f", 1, 0), now)
            .is_err()
    );
    assert_eq!(r.snapshot(), before);
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

/// One step of [`the_table_matches_a_model_through_any_churn`].
#[derive(Debug, Clone)]
enum Step {
    Announce {
        port: u16,
        name: u8,
        file: u8,
        content: u8,
        pieces: u32,
    },
    Exit(u16),
    /// Time passes (seconds), then the table is swept.
    Sweep(u64),
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        6 => (1..8u16, 0..3u8, 0..3u8, 0..3u8, 1..5u32).prop_map(
            |(port, name, file, content, pieces)| Step::Announce {
                port,
                name,
                file,
                content,
                pieces,
            }
        ),
        1 => (1..8u16).prop_map(Step::Exit),
        1 => (0..25u64).prop_map(Step::Sweep),
    ]
}

/// A node in the model: its name, and per file the content, pieces and last announce.
type ModelNode = (String, std::collections::BTreeMap<String, (u8, u32, u64)>);

proptest::proptest! {
    /// Nodes come, change names and contents, leave and expire, and their slots are
    /// reused; after every step the table lists exactly the owners a plain model holds,
    /// each under its own node's name and address, in snapshots and in look-ups.
    #[test]
    fn the_table_matches_a_model_through_any_churn(
        steps in proptest::collection::vec(step(), 1..60),
    ) {
        use std::collections::{BTreeMap, BTreeSet};
        let (mut r, start) = registry();
        let expiry = 30; // 3 intervals of 10 s
        let mut model: BTreeMap<u16, ModelNode> = BTreeMap::new();
        let mut now = 0u64;
        for step in steps {
            match step {
                Step::Announce { port, name, file, content, pieces } => {
                    let mut a = ann(&format!("n{name}"), port, &format!("f{file}"), content, 0);
                    a.pieces = pieces;
                    a.complete = pieces == 4;
                    r.announce(IP, &a, start + Duration::from_secs(now)).unwrap();
                    let node = model.entry(port).or_default();
                    node.0 = a.node.clone();
                    node.1.insert(a.file.clone(), (content, pieces, now));
                }
                Step::Exit(port) => {
                    proptest::prop_assert_eq!(
                        r.exit(SocketAddr::new(IP, port)),
                        model.remove(&port).is_some()
                    );
                }
                Step::Sweep(secs) => {
                    now += secs;
                    r.expire(start + Duration::from_secs(now));
                    for node in model.values_mut() {
                        node.1.retain(|_, (_, _, seen)| now - *seen < expiry);
                    }
                    model.retain(|_, node| !node.1.is_empty());
                }
            }
            // (file, content, address, node, pieces) for every owner.
            let want: BTreeSet<_> = model
                .iter()
                .flat_map(|(port, (name, files))| {
                    files.iter().map(move |(file, (content, pieces, _))| {
                        let addr = SocketAddr::new(IP, *port);
                        (file.clone(), ContentId([*content; 32]), addr, name.clone(), *pieces)
                    })
                })
                .collect();
            let snapshot = r.snapshot();
            let got: BTreeSet<_> = snapshot
                .files
                .iter()
                .flat_map(|f| {
                    f.owners.iter().map(move |o| {
                        (f.file.clone(), f.content, o.addr, o.node.clone(), o.pieces)
                    })
                })
                .collect();
            proptest::prop_assert_eq!(&got, &want);
            let nodes: BTreeSet<_> = snapshot.nodes.iter().map(|n| (n.addr, n.node.clone())).collect();
            let model_nodes: BTreeSet<_> = model
                .iter()
                .map(|(port, (name, _))| (SocketAddr::new(IP, *port), name.clone()))
                .collect();
            proptest::prop_assert_eq!(nodes, model_nodes);
            // A look-up pinned to each content lists its owners, each named rightly.
            for (file, content, _, _, _) in &want {
                let found = r.look_up(file, 50, 7, Some(*content)).unwrap();
                let listed: BTreeSet<_> = found
                    .owners
                    .iter()
                    .map(|o| (file.clone(), *content, o.addr, o.node.clone()))
                    .collect();
                let owners: BTreeSet<_> = want
                    .iter()
                    .filter(|w| &w.0 == file && w.1 == *content)
                    .map(|w| (w.0.clone(), w.1, w.2, w.3.clone()))
                    .collect();
                proptest::prop_assert_eq!(listed, owners);
            }
            proptest::prop_assert_eq!(r.sizes().1, model.len());
            // No content is kept once its last owner is gone.
            let contents: BTreeSet<_> = want.iter().map(|w| (&w.0, w.1)).collect();
            proptest::prop_assert_eq!(r.sizes().0, contents.len());
        }
    }
}
