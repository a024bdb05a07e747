//! What counts as one host when a stranger's share of something is counted.
//!
//! Every budget a stranger could exhaust by opening more connections or sending more
//! requests (the tracker's rates and table rows, a node's served connections and the peers
//! it takes in, the web side's workers) is kept per host, and a host is this key: an IPv4
//! address, or the /64 of an IPv6 address, since one IPv6 host is usually given a whole
//! /64 and may use any address in it. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, as a
//! dual-stack socket reports an IPv4 peer) counts as its IPv4 address.

use std::net::IpAddr;

/// The host `ip` belongs to, as budgets count it.
pub(crate) fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_host_is_its_64_and_a_mapped_address_its_ipv4_address() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(address_key(mapped), IpAddr::from([10, 0, 0, 1]));
        let v4 = IpAddr::from([10, 0, 0, 2]);
        assert_eq!(address_key(v4), v4);
    }
}
