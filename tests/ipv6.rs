//! IPv6: a download and a search over `[::1]`, and one dual-stack tracker serving IPv4 and
//! IPv6 nodes at once, handing each only the owners it can reach.

mod common;

use std::net::SocketAddr;

use common::*;
use p2ptorrent::{Tracker, TrackerClient, TrackerConfig};

fn v6_loopback() -> SocketAddr {
    "[::1]:0".parse().unwrap()
}

#[test]
fn a_download_and_a_search_over_ipv6() {
    let (tracker, _events) = Tracker::start(TrackerConfig::new(v6_loopback())).unwrap();
    let taddr = tracker.local_addr();
    assert!(taddr.is_ipv6());
    let on_v6 = |c: p2ptorrent::NodeConfig| c.listen(v6_loopback());
    let seeder = start_node_with("seeder", taddr, on_v6);
    write_random(&seeder.path("movie.bin"), 6, (5 << 20) + 17);
    seeder.node.share("movie.bin").unwrap();
    let leecher = start_node_with("leecher", taddr, on_v6);

    let hits = leecher.node.search("MOVIE").unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].owners[0].addr, seeder.node.local_addr());
    assert!(hits[0].owners[0].addr.is_ipv6());

    let report = leecher.node.download("movie.bin").unwrap().wait().unwrap();
    assert_same_file(&report.path, &seeder.path("movie.bin"));
    assert_eq!(report.from[0].0, seeder.node.local_addr());
    leecher.shutdown();
    seeder.shutdown();
}

#[test]
fn a_dual_stack_tracker_serves_both_families_and_lists_each_the_owners_it_can_reach() {
    let any_v6: SocketAddr = "[::]:0".parse().unwrap();
    let (tracker, _events) = Tracker::start(TrackerConfig::new(any_v6)).unwrap();
    let port = tracker.local_addr().port();
    let via_v4: SocketAddr = ([127, 0, 0, 1], port).into();
    let via_v6: SocketAddr = (std::net::Ipv6Addr::LOCALHOST, port).into();

    // The same file, shared by one node of each family.
    let v4 = start_node("four", via_v4);
    let v6 = start_node_with("six", via_v6, |c| c.listen(v6_loopback()));
    write_random(&v4.path("disk.img"), 9, 3 << 20);
    std::fs::copy(v4.path("disk.img"), v6.path("disk.img")).unwrap();
    v4.node.share("disk.img").unwrap();
    v6.node.share("disk.img").unwrap();

    // The table shows the IPv4 node by its IPv4 address, not as `::ffff:127.0.0.1`.
    let snapshot = tracker.snapshot();
    let mut owners: Vec<SocketAddr> = snapshot.files[0].owners.iter().map(|o| o.addr).collect();
    owners.sort();
    let mut expected = vec![v4.node.local_addr(), v6.node.local_addr()];
    expected.sort();
    assert_eq!(owners, expected);

    // Each family is handed the owner of its own family.
    let listed = |tracker: SocketAddr| -> Vec<SocketAddr> {
        let owners = TrackerClient::new(tracker).need("disk.img", 50).unwrap();
        owners.owners.iter().map(|o| o.addr).collect()
    };
    assert_eq!(listed(via_v4), vec![v4.node.local_addr()]);
    assert_eq!(listed(via_v6), vec![v6.node.local_addr()]);

    // And both download through it, each from the owner it can reach.
    let leecher4 = start_node("leecher4", via_v4);
    let leecher6 = start_node_with("leecher6", via_v6, |c| c.listen(v6_loopback()));
    for (leecher, owner) in [(&leecher4, &v4), (&leecher6, &v6)] {
        let report = leecher.node.download("disk.img").unwrap().wait().unwrap();
        assert_same_file(&report.path, &v4.path("disk.img"));
        assert_eq!(report.from.len(), 1);
        assert_eq!(report.from[0].0, owner.node.local_addr());
    }
    for node in [leecher4, leecher6, v6, v4] {
        node.shutdown();
    }
}
