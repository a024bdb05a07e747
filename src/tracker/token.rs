//! Address tokens: the tracker's proof that a sender receives datagrams where it says it
//! is.
//!
//! A token is a BLAKE3 MAC, under a secret drawn when the tracker starts, of the sender's
//! IP address and the current epoch. A token is accepted during its epoch and the next, so
//! it lives one to two epochs. Nothing is stored per sender.

use std::net::IpAddr;
use std::time::Duration;

use crate::messages::Token;

/// How long an epoch lasts; a token is good for one to two of them.
pub const TOKEN_EPOCH: Duration = Duration::from_secs(60);

/// Issues and checks tokens under one secret.
#[derive(Debug)]
pub(crate) struct Tokens {
    secret: [u8; 32],
}

impl Tokens {
    /// Creates a token issuer with `secret`, which must be random and kept.
    pub fn new(secret: [u8; 32]) -> Self {
        Self { secret }
    }

    /// Returns the token for `ip` at `elapsed` since the tracker started.
    pub fn issue(&self, ip: IpAddr, elapsed: Duration) -> Token {
        self.mac(ip, epoch(elapsed))
    }

    /// Returns whether `token` is the token for `ip` in this epoch or the one before.
    pub fn check(&self, ip: IpAddr, token: &Token, elapsed: Duration) -> bool {
        let now = epoch(elapsed);
        // Compared whole, never by prefix; timing leaks nothing useful about a MAC of
        // the sender's own address, but constant-time comparison costs nothing here.
        // The previous epoch's MAC is made only if the current one does not match.
        ct_eq(&self.mac(ip, now), token)
            || now
                .checked_sub(1)
                .is_some_and(|e| ct_eq(&self.mac(ip, e), token))
    }

    fn mac(&self, ip: IpAddr, epoch: u64) -> Token {
        let mut input = [0u8; 24];
        let octets = match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        input[..16].copy_from_slice(&octets);
        input[16..].copy_from_slice(&epoch.to_le_bytes());
        let mut token = [0u8; 16];
        token.copy_from_slice(&blake3::keyed_hash(&self.secret, &input).as_bytes()[..16]);
        token
    }
}

fn epoch(elapsed: Duration) -> u64 {
    elapsed.as_secs() / TOKEN_EPOCH.as_secs()
}

fn ct_eq(a: &Token, b: &Token) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    #[test]
    fn a_token_is_good_for_its_address_for_one_to_two_epochs() {
        let t = Tokens::new([7; 32]);
        let at = Duration::from_secs(30);
        let token = t.issue(A, at);
        assert!(t.check(A, &token, at));
        assert!(t.check(A, &token, at + TOKEN_EPOCH));
        assert!(!t.check(A, &token, at + 2 * TOKEN_EPOCH));
        assert!(!t.check(B, &token, at), "tokens are per address");
        assert!(!t.check(A, &[0; 16], at));
    }

    #[test]
    fn another_secret_gives_other_tokens() {
        let at = Duration::ZERO;
        assert_ne!(
            Tokens::new([1; 32]).issue(A, at),
            Tokens::new([2; 32]).issue(A, at)
        );
    }
}
