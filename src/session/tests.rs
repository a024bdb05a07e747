//! The session's tests: records at every boundary, read-ahead, altered or torn records,
//! mismatched keys, and handshakes of every short length.

use super::*;
use crate::messages::read_frame;
use std::os::unix::net::UnixStream;
use std::thread;

/// Test streams in memory have no deadlines.
impl Deadline for &[u8] {
    fn deadline(&self) -> Option<Instant> {
        None
    }

    fn set_deadline(&mut self, _: Option<Instant>) {}
}

fn addr() -> SocketAddr {
    "127.0.0.1:9".parse().unwrap()
}

fn key(byte: u8) -> NetworkKey {
    NetworkKey::from_bytes([byte; 32])
}

/// Runs both sides of a handshake over a socket pair. A keyless initiator sends a
/// plain hello and, if refused, reads the refusal as `PeerConn::connect` does; it never
/// has a session.
fn handshake(
    ours: Option<NetworkKey>,
    theirs: Option<NetworkKey>,
) -> (Result<Session>, Result<Opened>) {
    let (a, b) = UnixStream::pair().unwrap();
    let responder = thread::spawn(move || accept(&mut &b, &mut &b, theirs.as_ref(), addr()));
    if let Some(k) = &ours {
        let initiated = initiate(&mut &a, &mut &a, k, addr());
        return (initiated, responder.join().unwrap());
    }
    let hello = Message::Hello {
        magic: crate::messages::MAGIC,
        version: crate::messages::PROTOCOL_VERSION,
        node: "plain".into(),
        port: 0,
    };
    write_frame(&mut &a, &hello).unwrap();
    let opened = responder.join().unwrap();
    let initiated = match (&opened, read_frame(&mut &a)) {
        (Err(_), Ok(Some(Message::KeyRefused { has_key }))) => {
            Err(mismatch(addr(), false, has_key))
        }
        (_, answer) => Err(Error::Handshake(format!("no session: {answer:?}"))),
    };
    (initiated, opened)
}

fn sessions() -> (Session, Session) {
    let (a, b) = handshake(Some(key(1)), Some(key(1)));
    match (a, b) {
        (Ok(a), Ok(Opened::Sealed(b))) => (a, b),
        _ => panic!("the handshake failed"),
    }
}

fn seal_all(session: &Session, writes: &[&[u8]]) -> Vec<u8> {
    let mut w = LinkWriter::new(Vec::new(), Some(session.clone()), 0);
    for chunk in writes {
        w.write_all(chunk).unwrap();
    }
    w.flush().unwrap();
    match w {
        LinkWriter::Sealed(s) => s.inner,
        LinkWriter::Plain(_) => unreachable!(),
    }
}

#[test]
fn records_round_trip_at_every_boundary() {
    let (client, server) = sessions();
    let sizes = [
        0,
        1,
        MAX_PLAIN - 1,
        MAX_PLAIN,
        MAX_PLAIN + 1,
        3 * MAX_PLAIN + 7,
        1 << 20,
    ];
    let data: Vec<Vec<u8>> = sizes
        .iter()
        .map(|&n| (0..n).map(|i| (i * 7 + n) as u8).collect())
        .collect();
    let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
    let wire = seal_all(&client, &refs);
    let expected: Vec<u8> = data.concat();
    assert_eq!(
        wire.len(),
        expected.len() + expected.len().div_ceil(MAX_PLAIN) * (2 + TAG_LEN)
    );
    // Read back through every read size, including ones smaller than a record.
    for step in [1usize, 100, MAX_PLAIN, MAX_RECORD, 1 << 20] {
        let mut r = LinkReader::new(wire.as_slice(), Some(server.clone()), None);
        let mut got = Vec::new();
        let mut buf = vec![0u8; step];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, expected, "read step {step}");
    }
    // Each direction has its own key: the client cannot read its own records.
    let mut r = LinkReader::new(wire.as_slice(), Some(client), None);
    assert!(r.read(&mut [0u8; 16]).is_err());
}

#[test]
fn what_is_read_ahead_is_counted_so_no_read_waits_for_bytes_already_here() {
    let (client, server) = sessions();
    let data = vec![9u8; 3 * MAX_PLAIN + 5];
    let wire = seal_all(&client, &[&data]);
    let mut r = LinkReader::new(wire.as_slice(), Some(server), None);
    let mut taken = 0;
    let mut buf = [0u8; 1000];
    while taken < data.len() {
        taken += r.read(&mut buf).unwrap();
        // What is still wanted comes from the buffers or the stream: a reader waiting on
        // the stream for all of it would wait for bytes that never come.
        assert!(data.len() - taken <= r.buffered() + r.stream_mut().len());
    }
    assert_eq!(r.buffered(), 0);
    let plain = LinkReader::new(&b"abc"[..], None, None);
    assert_eq!(plain.buffered(), 0);
}

#[test]
fn altered_reordered_or_truncated_records_are_refused() {
    let (client, server) = sessions();
    let wire = seal_all(&client, &[&[5u8; 100], &[6u8; MAX_PLAIN], &[7u8; 10]]);
    let read_all = |bytes: &[u8]| {
        let mut r = LinkReader::new(bytes, Some(server.clone()), None);
        let mut out = Vec::new();
        r.read_to_end(&mut out).map(|_| out)
    };
    assert!(read_all(&wire).is_ok());
    for at in [0, 1, 2, 50, 130, wire.len() - 1] {
        let mut altered = wire.clone();
        altered[at] ^= 0x40;
        assert!(read_all(&altered).is_err(), "byte {at} altered");
    }
    // Cut inside a record.
    assert!(read_all(&wire[..wire.len() - 3]).is_err());
    // The first record dropped: the nonces no longer match.
    let first = 2 + usize::from(u16::from_be_bytes([wire[0], wire[1]]));
    assert!(read_all(&wire[first..]).is_err());
}

#[test]
fn mismatched_keys_are_refused_on_both_sides() {
    let problem = |r: &Result<Opened>| match r {
        Err(Error::KeyMismatch { problem, .. }) => Some(*problem),
        _ => None,
    };
    let (a, b) = handshake(Some(key(1)), Some(key(2)));
    assert!(matches!(
        a,
        Err(Error::KeyMismatch {
            problem: KeyProblem::DifferentKey,
            ..
        })
    ));
    assert_eq!(problem(&b), Some(KeyProblem::DifferentKey));

    let (a, b) = handshake(Some(key(1)), None);
    assert!(matches!(
        a,
        Err(Error::KeyMismatch {
            problem: KeyProblem::TheyHaveNoKey,
            ..
        })
    ));
    assert_eq!(problem(&b), Some(KeyProblem::TheyRequireKey));

    let (a, b) = handshake(None, Some(key(1)));
    assert!(matches!(
        a,
        Err(Error::KeyMismatch {
            problem: KeyProblem::TheyRequireKey,
            ..
        })
    ));
    assert_eq!(problem(&b), Some(KeyProblem::TheyHaveNoKey));

    let (_, b) = handshake(None, None);
    assert!(matches!(b, Ok(Opened::Plain(_))));
}

/// Feeds `bytes` to each side of the handshake as if a peer sent them.
fn handshake_on(bytes: &[u8]) {
    let _ = accept(&mut &bytes[..], &mut io::sink(), Some(&key(1)), addr());
    let _ = accept(&mut &bytes[..], &mut io::sink(), None, addr());
    let _ = initiate(&mut &bytes[..], &mut io::sink(), &key(1), addr());
}

#[test]
fn every_handshake_length_from_0_to_255_is_refused_without_panic() {
    let mut rng = fastrand::Rng::with_seed(7);
    for len in 0..=255usize {
        for _ in 0..16 {
            let mut bytes = NOISE_MAGIC.to_vec();
            bytes.extend_from_slice(&(len as u16).to_be_bytes());
            bytes.extend((0..len).map(|_| rng.u8(..)));
            assert!(
                accept(
                    &mut bytes.as_slice(),
                    &mut io::sink(),
                    Some(&key(1)),
                    addr()
                )
                .is_err()
            );
            handshake_on(&bytes);
            handshake_on(&bytes[..bytes.len().min(4 + len / 2)]);
        }
    }
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any bytes as a handshake: an error or a plain opening, never a panic.
        #[test]
        fn any_handshake_bytes_are_refused_or_plain(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            magic in any::<bool>(),
        ) {
            let mut input = if magic { NOISE_MAGIC.to_vec() } else { Vec::new() };
            input.extend_from_slice(&bytes);
            let keyed = accept(&mut input.as_slice(), &mut io::sink(), Some(&key(1)), addr());
            prop_assert!(keyed.is_err());
            handshake_on(&input);
        }

        /// Any bytes as sealed records: never a panic, never a byte of plaintext.
        #[test]
        fn any_record_bytes_yield_nothing(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let (_, server) = SESSIONS.with(Clone::clone);
            let mut r = LinkReader::new(bytes.as_slice(), Some(server), None);
            let mut out = Vec::new();
            let read = r.read_to_end(&mut out);
            prop_assert!(out.is_empty() && (read.is_err() || bytes.is_empty()));
        }
    }

    thread_local! {
        static SESSIONS: (Session, Session) = sessions();
    }
}
