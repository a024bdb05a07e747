//! Pure partitioning arithmetic: how a file is cut into pieces, and how work is divided
//! among owners.
//!
//! The original divided a file's size by the number of owners and gave each owner one
//! contiguous part. [`split_bytes`] keeps that rule, [`split_pieces`] applies it to piece
//! indices (what the download scheduler starts from), and [`split_weighted`] divides in
//! proportion to weights such as measured owner speeds. [`Geometry`] is the piece layout of
//! a file. Nothing here does I/O, spawns a thread or reads a clock.
//!
//! Where the original gave the whole remainder to the last owner, these functions spread it
//! one unit each over the first owners, so parts differ by at most one unit.

use std::ops::Range;

use crate::error::{Error, Result};

/// Smallest piece size a file may be cut into (16 KiB).
pub const MIN_PIECE_SIZE: u32 = 16 * 1024;
/// Largest piece size a file may be cut into (16 MiB); bounds a peer's data frame.
pub const MAX_PIECE_SIZE: u32 = 16 * 1024 * 1024;
/// Piece size chosen for files up to 512 MiB (128 KiB).
///
/// A piece is passed on only once it is whole and verified, so the time a fresh piece takes
/// to cross one capped uplink sets how fast a swarm's holders multiply at its start. With
/// 256 KiB pieces 64 hosts took 6-9 s to get their uplinks busy and finished at 1.29-1.31 x
/// S/R (`benches/swarm_hosts.rs`, 32 MiB, 1 MiB/s each); with 128 KiB, 1.22-1.24 x. Pieces
/// of 64 KiB did as well but cost the nodes a third more CPU again, per piece.
pub const DEFAULT_MIN_PIECE_SIZE: u32 = 128 * 1024;
/// The piece count [`Geometry::for_size`] aims at, so piece lists stay small.
pub const TARGET_PIECES: u64 = 4096;
/// Most pieces a file may have; bounds the piece list a peer sends (4 MiB of hashes).
pub const MAX_PIECES: u32 = 131_072;

/// Divides `size` bytes among `owners` into contiguous ranges, in order.
///
/// Returns exactly `owners` ranges that cover `0..size` once with no gap or overlap. Their
/// lengths differ by at most one byte: the first `size % owners` ranges are one byte longer.
/// An empty file yields `owners` empty ranges; with fewer bytes than owners, the last
/// ranges are empty.
///
/// # Errors
///
/// [`Error::InvalidParameter`] if `owners` is zero.
pub fn split_bytes(size: u64, owners: usize) -> Result<Vec<Range<u64>>> {
    if owners == 0 {
        return Err(Error::InvalidParameter("split among zero owners"));
    }
    let n = owners as u64;
    let (base, extra) = (size / n, size % n);
    let mut start = 0;
    Ok((0..n)
        .map(|i| {
            let len = base + u64::from(i < extra);
            let range = start..start + len;
            start += len;
            range
        })
        .collect())
}

/// Divides piece indices `0..count` among `owners` into contiguous ranges, in order.
///
/// The same rule as [`split_bytes`], over pieces: the lengths differ by at most one piece.
/// With fewer pieces than owners, the last ranges are empty.
///
/// # Errors
///
/// [`Error::InvalidParameter`] if `owners` is zero.
pub fn split_pieces(count: u32, owners: usize) -> Result<Vec<Range<u32>>> {
    Ok(split_bytes(u64::from(count), owners)?
        .into_iter()
        .map(|r| narrow(r.start)..narrow(r.end))
        .collect())
}

/// Divides piece indices `0..count` into contiguous ranges in proportion to `weights`.
///
/// Owner `i` gets `count * weights[i] / sum(weights)` pieces rounded down, and the pieces
/// left by rounding go one each to the owners with the largest fractional parts (ties to
/// the earlier owner). Each length is therefore within one piece of its exact share, and
/// an owner of weight zero gets an empty range.
///
/// # Errors
///
/// [`Error::InvalidParameter`] if `weights` is empty or every weight is zero.
pub fn split_weighted(count: u32, weights: &[u64]) -> Result<Vec<Range<u32>>> {
    let total: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    if total == 0 {
        return Err(Error::InvalidParameter(
            "split by weights that are all zero",
        ));
    }
    let count = u128::from(count);
    let mut lens: Vec<u128> = weights
        .iter()
        .map(|&w| count * u128::from(w) / total)
        .collect();
    let mut left = count - lens.iter().sum::<u128>();
    // Largest remainder first; the stable sort keeps ties in owner order.
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(count * u128::from(weights[i]) % total));
    for i in order {
        if left == 0 {
            break;
        }
        if weights[i] > 0 {
            lens[i] += 1;
            left -= 1;
        }
    }
    let mut start = 0u32;
    Ok(lens
        .into_iter()
        .map(|len| {
            let end = start + narrow(len as u64);
            let range = start..end;
            start = end;
            range
        })
        .collect())
}

/// The piece layout of a file: its size and the size of every piece but the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    size: u64,
    piece_size: u32,
}

impl Geometry {
    /// Returns the layout [`for_size`](Self::for_size) would choose, or `piece_size` if given.
    ///
    /// # Errors
    ///
    /// As [`Geometry::new`].
    pub fn with_piece_size(size: u64, piece_size: Option<u32>) -> Result<Self> {
        match piece_size {
            Some(p) => Self::new(size, p),
            None => Self::for_size(size),
        }
    }

    /// Chooses the layout for a file of `size` bytes.
    ///
    /// The piece size is the smallest power of two that keeps the file within
    /// [`TARGET_PIECES`] pieces, at least [`DEFAULT_MIN_PIECE_SIZE`] and at most
    /// [`MAX_PIECE_SIZE`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] if even the largest pieces give more than [`MAX_PIECES`]
    /// (files over 2 TiB).
    pub fn for_size(size: u64) -> Result<Self> {
        let wanted = size.div_ceil(TARGET_PIECES).next_power_of_two();
        let piece_size = wanted.clamp(u64::from(DEFAULT_MIN_PIECE_SIZE), u64::from(MAX_PIECE_SIZE));
        Self::new(size, narrow(piece_size))
    }

    /// Builds a layout from a size and a piece size, checking both.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] unless `piece_size` is a power of two between
    /// [`MIN_PIECE_SIZE`] and [`MAX_PIECE_SIZE`] and the file has at most [`MAX_PIECES`]
    /// pieces.
    pub fn new(size: u64, piece_size: u32) -> Result<Self> {
        if !piece_size.is_power_of_two() || !(MIN_PIECE_SIZE..=MAX_PIECE_SIZE).contains(&piece_size)
        {
            return Err(Error::InvalidParameter(
                "piece size must be a power of two from 16 KiB to 16 MiB",
            ));
        }
        if size.div_ceil(u64::from(piece_size)) > u64::from(MAX_PIECES) {
            return Err(Error::InvalidParameter("file has too many pieces"));
        }
        Ok(Self { size, piece_size })
    }

    /// Returns the file size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Returns the size of every piece but the last.
    pub fn piece_size(&self) -> u32 {
        self.piece_size
    }

    /// Returns the number of pieces: zero for an empty file.
    pub fn piece_count(&self) -> u32 {
        narrow(self.size.div_ceil(u64::from(self.piece_size)))
    }

    /// Returns the byte range of piece `index`, or `None` if there is no such piece.
    ///
    /// Every piece is `piece_size` long except the last, which holds the rest (between one
    /// byte and `piece_size`).
    pub fn piece_range(&self, index: u32) -> Option<Range<u64>> {
        if index >= self.piece_count() {
            return None;
        }
        let start = u64::from(index) * u64::from(self.piece_size);
        Some(start..(start + u64::from(self.piece_size)).min(self.size))
    }

    /// Returns the length of piece `index`, or `None` if there is no such piece.
    pub fn piece_len(&self, index: u32) -> Option<u32> {
        self.piece_range(index).map(|r| narrow(r.end - r.start))
    }
}

/// Converts a value already known to fit into `u32`.
///
/// Every caller bounds its argument by a `u32` first (a piece count or piece size), so
/// saturation never happens; it is there so no `as` cast can silently wrap.
fn narrow(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn assert_tiles<T: Copy + Ord + Default + std::fmt::Debug>(ranges: &[Range<T>], end: T) {
        let mut at = T::default();
        for r in ranges {
            assert_eq!(r.start, at, "gap or overlap in {ranges:?}");
            assert!(r.start <= r.end);
            at = r.end;
        }
        assert_eq!(at, end, "ranges {ranges:?} do not reach {end:?}");
    }

    #[test]
    fn original_rule_on_an_even_split() {
        assert_eq!(
            split_bytes(100, 4).unwrap(),
            vec![0..25, 25..50, 50..75, 75..100]
        );
    }

    #[test]
    fn remainder_is_spread_over_the_first_owners() {
        assert_eq!(split_bytes(10, 4).unwrap(), vec![0..3, 3..6, 6..8, 8..10]);
    }

    #[test]
    fn empty_file_gives_empty_ranges() {
        assert_eq!(split_bytes(0, 3).unwrap(), vec![0..0, 0..0, 0..0]);
        assert_eq!(split_pieces(0, 2).unwrap(), vec![0..0, 0..0]);
    }

    #[test]
    fn fewer_pieces_than_owners_leaves_the_last_owners_empty() {
        assert_eq!(split_pieces(2, 4).unwrap(), vec![0..1, 1..2, 2..2, 2..2]);
    }

    #[test]
    fn zero_owners_is_an_error() {
        assert!(split_bytes(10, 0).is_err());
        assert!(split_pieces(10, 0).is_err());
        assert!(split_weighted(10, &[]).is_err());
        assert!(split_weighted(10, &[0, 0]).is_err());
    }

    #[test]
    fn weighted_split_follows_the_weights() {
        assert_eq!(
            split_weighted(10, &[3, 1, 1]).unwrap(),
            vec![0..6, 6..8, 8..10]
        );
        assert_eq!(
            split_weighted(10, &[1, 0, 1]).unwrap(),
            vec![0..5, 5..5, 5..10]
        );
    }

    #[test]
    fn short_last_piece() {
        let g = Geometry::new(100_000, 32 * 1024).unwrap();
        assert_eq!(g.piece_count(), 4);
        assert_eq!(g.piece_range(3), Some(98_304..100_000));
        assert_eq!(g.piece_len(3), Some(1_696));
        assert_eq!(g.piece_range(4), None);
    }

    #[test]
    fn empty_file_has_no_pieces() {
        let g = Geometry::for_size(0).unwrap();
        assert_eq!(g.piece_count(), 0);
        assert_eq!(g.piece_range(0), None);
    }

    #[test]
    fn piece_size_grows_with_the_file() {
        assert_eq!(
            Geometry::for_size(1).unwrap().piece_size(),
            DEFAULT_MIN_PIECE_SIZE
        );
        assert_eq!(
            Geometry::for_size(512 << 20).unwrap().piece_size(),
            128 * 1024
        );
        assert_eq!(
            Geometry::for_size(1 << 30).unwrap().piece_size(),
            256 * 1024
        );
        assert_eq!(Geometry::for_size(4 << 30).unwrap().piece_size(), 1 << 20);
        assert_eq!(
            Geometry::for_size(1 << 40).unwrap().piece_size(),
            MAX_PIECE_SIZE
        );
        assert!(Geometry::for_size(4 << 40).is_err());
    }

    #[test]
    fn bad_piece_sizes_are_refused() {
        assert!(Geometry::new(10, 0).is_err());
        assert!(Geometry::new(10, 1000).is_err());
        assert!(Geometry::new(10, 1024).is_err());
        assert!(Geometry::new(10, 32 << 20).is_err());
    }

    proptest! {
        #[test]
        fn byte_ranges_tile_the_file_and_balance(size in 0u64..1 << 40, owners in 1usize..1100) {
            let ranges = split_bytes(size, owners).unwrap();
            prop_assert_eq!(ranges.len(), owners);
            assert_tiles(&ranges, size);
            let lens: Vec<u64> = ranges.iter().map(|r| r.end - r.start).collect();
            prop_assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1);
        }

        #[test]
        fn piece_ranges_tile_and_balance(count in 0u32..200_000, owners in 1usize..1100) {
            let ranges = split_pieces(count, owners).unwrap();
            prop_assert_eq!(ranges.len(), owners);
            assert_tiles(&ranges, count);
            let lens: Vec<u32> = ranges.iter().map(|r| r.end - r.start).collect();
            prop_assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1);
        }

        #[test]
        fn weighted_ranges_tile_and_stay_within_one_piece_of_the_share(
            count in 0u32..200_000,
            weights in proptest::collection::vec(0u64..1_000_000, 1..64),
        ) {
            prop_assume!(weights.iter().any(|&w| w > 0));
            let ranges = split_weighted(count, &weights).unwrap();
            assert_tiles(&ranges, count);
            let total: f64 = weights.iter().map(|&w| w as f64).sum();
            for (r, &w) in ranges.iter().zip(&weights) {
                let exact = f64::from(count) * w as f64 / total;
                prop_assert!((f64::from(r.end - r.start) - exact).abs() < 1.0 + 1e-9);
            }
        }

        #[test]
        fn cutting_and_gluing_returns_the_file(
            data in proptest::collection::vec(any::<u8>(), 0..5000),
            owners in 1usize..20,
        ) {
            let parts: Vec<&[u8]> = split_bytes(data.len() as u64, owners).unwrap()
                .into_iter()
                .map(|r| &data[r.start as usize..r.end as usize])
                .collect();
            prop_assert_eq!(parts.concat(), data);
        }

        #[test]
        fn pieces_cover_the_file(size in 0u64..=1 << 31, shift in 14u32..=24) {
            let g = Geometry::new(size, 1 << shift).unwrap();
            let ranges: Vec<Range<u64>> =
                (0..g.piece_count()).map(|i| g.piece_range(i).unwrap()).collect();
            assert_tiles(&ranges, size);
            prop_assert!(ranges.iter().all(|r| r.end > r.start));
        }
    }
}
