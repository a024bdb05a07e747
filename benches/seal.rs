//! Which AEAD the session layer should use: one 64 KiB record sealed and opened through
//! snow's stateless transport, for AES-256-GCM and ChaCha20-Poly1305, each through ring
//! (what the crate builds with) and through snow's pure-Rust default resolver.
//!
//! ```text
//! cargo bench --bench seal
//! ```

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use snow::resolvers::{BoxedCryptoResolver, DefaultResolver, FallbackResolver, RingResolver};
use snow::{Builder, StatelessTransportState};
use std::hint::black_box;

/// The largest record's plaintext, as the session layer sends file data.
const PLAIN: usize = 65_535 - 16;

fn resolver(ring: bool) -> BoxedCryptoResolver {
    if ring {
        Box::new(FallbackResolver::new(
            Box::new(RingResolver),
            Box::new(DefaultResolver),
        ))
    } else {
        Box::new(DefaultResolver)
    }
}

/// Runs an NNpsk0 handshake with `cipher`; returns the two transports.
fn pair(cipher: &str, ring: bool) -> (StatelessTransportState, StatelessTransportState) {
    let pattern = format!("Noise_NNpsk0_25519_{cipher}_SHA256");
    let psk = [7u8; 32];
    let build = || {
        Builder::with_resolver(pattern.parse().unwrap(), resolver(ring))
            .psk(0, &psk)
            .unwrap()
    };
    let mut i = build().build_initiator().unwrap();
    let mut r = build().build_responder().unwrap();
    let (mut msg, mut payload) = (vec![0u8; 65_535], vec![0u8; 65_535]);
    let n = i.write_message(&[], &mut msg).unwrap();
    r.read_message(&msg[..n], &mut payload).unwrap();
    let n = r.write_message(&[], &mut msg).unwrap();
    i.read_message(&msg[..n], &mut payload).unwrap();
    (
        i.into_stateless_transport_mode().unwrap(),
        r.into_stateless_transport_mode().unwrap(),
    )
}

fn seal_and_open(c: &mut Criterion) {
    let mut group = c.benchmark_group("record");
    group.throughput(Throughput::Bytes(PLAIN as u64));
    let plain = vec![0x5au8; PLAIN];
    let (mut sealed, mut opened) = (vec![0u8; 65_535], vec![0u8; 65_535]);
    for (cipher, ring) in [
        ("AESGCM", true),
        ("ChaChaPoly", true),
        ("AESGCM", false),
        ("ChaChaPoly", false),
    ] {
        let (tx, rx) = pair(cipher, ring);
        let name = format!("{cipher}/{}", if ring { "ring" } else { "pure-rust" });
        let mut nonce = 0u64;
        group.bench_function(BenchmarkId::new("seal+open", name), |b| {
            b.iter(|| {
                let n = tx
                    .write_message(nonce, black_box(&plain), &mut sealed)
                    .unwrap();
                let m = rx.read_message(nonce, &sealed[..n], &mut opened).unwrap();
                nonce += 1;
                black_box(m)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, seal_and_open);
criterion_main!(benches);
