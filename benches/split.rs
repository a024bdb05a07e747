//! Splitting work among 1 to 1024 owners: bytes, pieces and weighted pieces.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use p2ptorrent::split::{Geometry, split_bytes, split_pieces, split_weighted};
use std::hint::black_box;

fn split(c: &mut Criterion) {
    let size: u64 = 4 << 30;
    let pieces = Geometry::for_size(size).unwrap().piece_count();
    let mut group = c.benchmark_group("split");
    for owners in [1usize, 2, 4, 16, 64, 256, 1024] {
        let weights: Vec<u64> = (1..=owners as u64).collect();
        group.bench_with_input(BenchmarkId::new("bytes", owners), &owners, |b, &n| {
            b.iter(|| split_bytes(black_box(size), black_box(n)))
        });
        group.bench_with_input(BenchmarkId::new("pieces", owners), &owners, |b, &n| {
            b.iter(|| split_pieces(black_box(pieces), black_box(n)))
        });
        group.bench_with_input(BenchmarkId::new("weighted", owners), &weights, |b, w| {
            b.iter(|| split_weighted(black_box(pieces), black_box(w)))
        });
    }
    group.finish();
}

criterion_group!(benches, split);
criterion_main!(benches);
