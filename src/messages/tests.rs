//! The message formats' tests: round trips, bounds and malformed input.

use super::*;

fn content() -> ContentId {
    ContentId([7; 32])
}

fn every_variant() -> Vec<Message> {
    vec![
        Message::Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            node: "A".into(),
            port: 0,
        },
        Message::SizeRequest {
            file: "movie.bin".into(),
            hashes: true,
        },
        Message::SizeInfo(SizeInformation {
            file: "movie.bin".into(),
            size: 300_000,
            piece_size: 262_144,
            hashes: vec![[1; 32], [2; 32]],
            content: content(),
        }),
        Message::Bitfield {
            content: content(),
            bits: vec![0b1100_0000],
        },
        Message::Refused {
            file: "x".into(),
            reason: "not shared".into(),
        },
        Message::Request {
            content: content(),
            piece: 3,
            offset: 0,
            len: 262_144,
        },
        Message::Data {
            content: content(),
            piece: 3,
            offset: 0,
            len: 262_144,
        },
        Message::Reject {
            reason: "piece out of range".into(),
        },
        Message::KeyRefused { has_key: true },
    ]
}

fn framed(msg: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    write_frame(&mut out, msg).unwrap();
    out
}

#[test]
fn every_variant_round_trips() {
    for msg in every_variant() {
        let bytes = framed(&msg);
        let back = read_frame(&mut bytes.as_slice()).unwrap();
        assert_eq!(back, Some(msg));
    }
}

#[test]
fn frame_bytes_are_pinned() {
    let msg = Message::SizeRequest {
        file: "ab".into(),
        hashes: true,
    };
    // length 5; variant 1; string of 2 bytes "ab"; true
    assert_eq!(framed(&msg), [0, 0, 0, 5, 1, 2, b'a', b'b', 1]);
    let hello = Message::Hello {
        magic: MAGIC,
        version: 1,
        node: "N".into(),
        port: 0,
    };
    assert_eq!(
        framed(&hello),
        [0, 0, 0, 9, 0, b'P', b'2', b'P', b'T', 1, 1, b'N', 0]
    );
}

#[test]
fn every_truncation_is_none_or_an_error() {
    for msg in every_variant() {
        let bytes = framed(&msg);
        for cut in 0..bytes.len() {
            match read_frame(&mut &bytes[..cut]) {
                Ok(None) => assert_eq!(cut, 0),
                Ok(Some(m)) => panic!("decoded {m:?} from {cut} of {} bytes", bytes.len()),
                Err(_) => {}
            }
        }
    }
}

#[test]
fn oversized_length_prefix_is_refused_before_allocating() {
    let bytes = (MAX_FRAME_LEN + 1).to_be_bytes();
    assert!(matches!(
        read_frame(&mut bytes.as_slice()),
        Err(Error::FrameTooLarge { .. })
    ));
    let bytes = u32::MAX.to_be_bytes();
    assert!(matches!(
        read_frame(&mut bytes.as_slice()),
        Err(Error::FrameTooLarge { .. })
    ));
}

#[test]
fn oversized_data_header_is_refused() {
    let msg = Message::Data {
        content: content(),
        piece: 0,
        offset: 0,
        len: MAX_DATA_LEN + 1,
    };
    assert!(matches!(
        read_frame(&mut framed(&msg).as_slice()),
        Err(Error::FrameTooLarge { .. })
    ));
}

/// Hands out at most `chunk` bytes per read, as a socket may.
struct Trickle<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.chunk.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

#[test]
fn a_frame_split_across_reads_decodes() {
    for msg in every_variant() {
        let bytes = framed(&msg);
        for chunk in [1, 2, 3, 5] {
            let mut r = Trickle {
                data: &bytes,
                chunk,
            };
            assert_eq!(read_frame(&mut r).unwrap(), Some(msg.clone()));
            assert_eq!(read_frame(&mut r).unwrap(), None);
        }
    }
}

#[test]
fn data_payload_follows_its_header() {
    let mut out = framed(&Message::Data {
        content: content(),
        piece: 1,
        offset: 0,
        len: 3,
    });
    out.extend_from_slice(b"xyz");
    let mut r = out.as_slice();
    let Some(Message::Data { len, .. }) = read_frame(&mut r).unwrap() else {
        panic!("expected a data header");
    };
    let mut buf = vec![0; len as usize];
    read_payload(&mut r, &mut buf).unwrap();
    assert_eq!(buf, b"xyz");
    assert!(matches!(
        read_payload(&mut r, &mut [0; 1]),
        Err(Error::Truncated)
    ));
}

#[test]
fn garbage_never_panics() {
    let mut rng = fastrand::Rng::with_seed(42);
    for len in 0..=255usize {
        for _ in 0..64 {
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            let _ = decode_request(&bytes);
            let _ = decode_reply(&bytes);
            if bytes.len() >= 4 {
                let body = (len - 4) as u32;
                bytes[..4].copy_from_slice(&body.to_be_bytes());
            }
            let _ = read_frame(&mut bytes.as_slice());
        }
    }
}

#[test]
fn tracker_datagrams_round_trip() {
    let req = TrackerRequest {
        version: PROTOCOL_VERSION,
        txid: 99,
        token: [5; 16],
        body: NodeToTracker::Have(Announce {
            node: "A".into(),
            port: 4000,
            file: "f".into(),
            content: content(),
            size: 10,
            pieces: 1,
            complete: true,
            counters: Counters::default(),
        }),
    };
    assert_eq!(decode_request(&encode_request(&req).unwrap()).unwrap(), req);
    let reply = TrackerReply {
        version: PROTOCOL_VERSION,
        txid: 99,
        body: TrackerToNode::Owners {
            file: "f".into(),
            content: content(),
            size: 10,
            owners: vec![OwnerInfo {
                node: "A".into(),
                addr: "127.0.0.1:4000".parse().unwrap(),
                uploads: 2,
                complete: true,
            }],
            interval_secs: 30,
            contents: 1,
        },
    };
    assert_eq!(decode_reply(&encode_reply(&reply).unwrap()).unwrap(), reply);
    assert!(decode_reply(&vec![0; MAX_DATAGRAM_LEN + 1]).is_err());
}

#[test]
fn records_round_trip_and_torn_ones_are_refused() {
    let record = ResumeRecord {
        magic: RECORD_MAGIC,
        content: content(),
        pieces: 10,
        bits: vec![0xFF, 0xC0],
        dev: 7,
        ino: 1 << 40,
    };
    let bytes = encode_record(&record).unwrap();
    assert_eq!(decode_record(&bytes), Some(record));
    for cut in 0..bytes.len() {
        assert_eq!(decode_record(&bytes[..cut]), None, "cut at {cut}");
    }
    let mut flipped = bytes.clone();
    flipped[5] ^= 1;
    assert_eq!(decode_record(&flipped), None);
}

#[test]
fn plain_names_pass_and_paths_do_not() {
    for ok in ["movie.bin", "a", "..hidden", "x..y", "名前.txt"] {
        assert!(check_file_name(ok).is_ok(), "{ok}");
    }
    let long = "x".repeat(256);
    for bad in [
        "",
        ".",
        "..",
        "../etc/passwd",
        "/etc/passwd",
        "a/b",
        "a\\b",
        "a\0b",
        &long,
    ] {
        assert!(check_file_name(bad).is_err(), "{bad:?}");
    }
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any bytes at all: every decoder answers with a value or an error.
        #[test]
        fn any_bytes_decode_or_error(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode_request(&bytes);
            let _ = decode_reply(&bytes);
            let _ = decode_record(&bytes);
            let _ = read_frame(&mut bytes.as_slice());
        }

        /// Valid frames with a few bytes changed: still a value or an error, and a value
        /// decoded from them encodes again to a frame that decodes to the same value.
        #[test]
        fn mutated_frames_decode_or_error(
            variant in 0usize..9,
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        ) {
            let mut bytes = framed(&every_variant()[variant]);
            for (at, value) in flips {
                let at = at % bytes.len();
                bytes[at] = value;
            }
            if let Ok(Some(msg)) = read_frame(&mut bytes.as_slice()) {
                let again = framed(&msg);
                prop_assert_eq!(read_frame(&mut again.as_slice()).unwrap(), Some(msg));
            }
        }
    }
}

#[test]
fn a_content_id_parses_back_from_what_it_prints() {
    let id = ContentId([0xab; 32]);
    assert_eq!(id.to_string().parse::<ContentId>().unwrap(), id);
    assert!("ab".parse::<ContentId>().is_err());
    assert!("zz".repeat(32).parse::<ContentId>().is_err());
    assert!("é".repeat(32).parse::<ContentId>().is_err());
}

#[test]
fn bad_names_are_shown_short_and_escaped() {
    let long = "a".repeat(10_000);
    let Err(Error::InvalidName { name }) = check_file_name(&long) else {
        panic!("a 10,000-byte name is refused");
    };
    assert!(
        name.len() < 100 && name.ends_with("(10000 bytes)"),
        "{name}"
    );
    let Err(Error::InvalidName { name }) = check_file_name("evil\u{202e}txt.exe\n") else {
        panic!("direction and control characters are refused");
    };
    assert_eq!(name, "evil\\u{202e}txt.exe\\u{a}");
}
