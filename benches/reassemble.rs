//! Reassembly: verify 256 MiB of pieces and write them in random order into a `.part`
//! file at their offsets, beside a plain sequential write of the same bytes in the same
//! run. The ratio of the two is the figure that matters. It is measured on one thread, and
//! on two as a download from two owners does it (each owner's pieces are verified and
//! written by that owner's verifier thread).
//!
//! `hash_file` reads and hashes a whole file as sharing it does, and as resuming a
//! download does: every piece of a `.part` is verified again before it is trusted, so this
//! is what a resume costs before the first byte is fetched.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use p2ptorrent::manifest::Manifest;
use std::hint::black_box;

const SIZE: usize = 256 << 20;

fn reassemble(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.bin");
    let mut data = vec![0u8; SIZE];
    fastrand::Rng::with_seed(1).fill(&mut data);
    std::fs::write(&source, &data).unwrap();
    let manifest = Manifest::from_file(&source, None).unwrap();
    let geometry = manifest.geometry();
    let mut order: Vec<u32> = (0..geometry.piece_count()).collect();
    fastrand::Rng::with_seed(2).shuffle(&mut order);
    let part = dir.path().join("out.part");

    let mut group = c.benchmark_group("reassemble");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.bench_function("sequential write (baseline)", |b| {
        b.iter(|| {
            let mut f = File::create(&part).unwrap();
            for chunk in data.chunks(geometry.piece_size() as usize) {
                f.write_all(black_box(chunk)).unwrap();
            }
        })
    });
    for threads in [1, 2] {
        let name = format!("verify + write out of order, {threads} thread(s)");
        group.bench_function(name, |b| {
            b.iter(|| {
                let f = File::create(&part).unwrap();
                f.set_len(SIZE as u64).unwrap();
                std::thread::scope(|s| {
                    for share in order.chunks(order.len().div_ceil(threads)) {
                        let (f, data, manifest) = (&f, &data, &manifest);
                        s.spawn(move || {
                            for &i in share {
                                let r = geometry.piece_range(i).unwrap();
                                let piece = &data[r.start as usize..r.end as usize];
                                assert!(manifest.verify(i, black_box(piece)));
                                f.write_all_at(piece, r.start).unwrap();
                            }
                        });
                    }
                });
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("hash_file");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.bench_function("read and hash every piece (share, resume)", |b| {
        b.iter(|| black_box(Manifest::from_file(&source, None).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, reassemble);
criterion_main!(benches);
