//! Addresses as people write them: an IP literal (IPv6 in brackets with a port), or a host
//! name, resolved once at start.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// Parses `HOST:PORT` (`127.0.0.1:12340`, `[::1]:12340`, `tracker.lan:12340`); a name
/// resolving to several addresses takes the first.
pub fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    let mut found = s
        .to_socket_addrs()
        .map_err(|e| format!("{s:?} is not HOST:PORT, or does not resolve: {e}"))?;
    found
        .next()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

/// Parses an IP literal or a host name (`0.0.0.0`, `::1`, `localhost`).
#[allow(dead_code)] // the tracker binary takes only HOST:PORT
pub fn ip(s: &str) -> Result<IpAddr, String> {
    if let Ok(ip) = s.trim_matches(|c| c == '[' || c == ']').parse() {
        return Ok(ip);
    }
    socket_addr(&format!("{s}:0")).map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_names_parse() {
        assert_eq!(
            socket_addr("127.0.0.1:5").unwrap(),
            "127.0.0.1:5".parse().unwrap()
        );
        assert_eq!(socket_addr("[::1]:5").unwrap(), "[::1]:5".parse().unwrap());
        assert!(socket_addr("localhost:5").unwrap().ip().is_loopback());
        assert!(ip("localhost").unwrap().is_loopback());
        assert_eq!(ip("[::1]").unwrap(), "::1".parse::<IpAddr>().unwrap());
        assert!(socket_addr("no port").is_err());
    }
}
