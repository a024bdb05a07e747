//! What a file is: its size, its piece layout, the BLAKE3 hash of every piece, and the
//! content id that commits to all three.
//!
//! A [`Manifest`] is built by hashing a file on disk (several threads, one piece buffer
//! each, so memory does not grow with the file) or from a peer's
//! [`SizeInformation`], in which case its content id is
//! recomputed and must match the one the tracker gave.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::messages::{ContentId, SizeInformation};
use crate::split::{Geometry, split_pieces};

/// Domain separation for content ids, so they can never collide with a plain file hash.
const CONTENT_ID_CONTEXT: &[u8] = b"p2ptorrent content id v1";

/// A file's size, piece layout and piece hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    geometry: Geometry,
    hashes: Vec<[u8; 32]>,
    content: ContentId,
}

impl Manifest {
    /// Hashes the file at `path`, cut into pieces as [`Geometry::with_piece_size`] says.
    ///
    /// Pieces are hashed on up to four threads, each reading its own contiguous range into
    /// one reused piece buffer.
    ///
    /// # Errors
    ///
    /// [`Error::File`] if the file cannot be opened or read (including if it shrinks while
    /// being hashed), [`Error::InvalidParameter`] for an invalid piece size.
    pub fn from_file(path: &Path, piece_size: Option<u32>) -> Result<Self> {
        let file_err = |op, source| Error::File {
            op,
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(|e| file_err("opening", e))?;
        let size = file
            .metadata()
            .map_err(|e| file_err("reading metadata of", e))?
            .len();
        let geometry = Geometry::with_piece_size(size, piece_size)?;
        let all: Vec<u32> = (0..geometry.piece_count()).collect();
        let hashes = hash_pieces(&file, geometry, &all).map_err(|e| file_err("hashing", e))?;
        Ok(Self::new(geometry, hashes))
    }

    /// Builds a manifest from a peer's size information.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] if the piece size is invalid, the number of hashes does
    /// not match the layout, or the content id does not commit to these values.
    pub fn from_size_info(info: &SizeInformation) -> Result<Self> {
        let geometry = Geometry::new(info.size, info.piece_size)?;
        if info.hashes.len() != geometry.piece_count() as usize {
            return Err(Error::InvalidParameter(
                "piece list does not match the file size",
            ));
        }
        let manifest = Self::new(geometry, info.hashes.clone());
        if manifest.content != info.content {
            return Err(Error::InvalidParameter(
                "content id does not match the piece list",
            ));
        }
        Ok(manifest)
    }

    fn new(geometry: Geometry, hashes: Vec<[u8; 32]>) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(CONTENT_ID_CONTEXT);
        h.update(&geometry.size().to_le_bytes());
        h.update(&geometry.piece_size().to_le_bytes());
        for piece in &hashes {
            h.update(piece);
        }
        let content = ContentId(*h.finalize().as_bytes());
        Self {
            geometry,
            hashes,
            content,
        }
    }

    /// Returns the piece layout.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Returns the content id.
    pub fn content(&self) -> ContentId {
        self.content
    }

    /// Returns the file size in bytes.
    pub fn size(&self) -> u64 {
        self.geometry.size()
    }

    /// Returns the number of pieces.
    pub fn piece_count(&self) -> u32 {
        self.geometry.piece_count()
    }

    /// Returns whether `data` is exactly piece `index`.
    pub fn verify(&self, index: u32, data: &[u8]) -> bool {
        self.hashes
            .get(index as usize)
            .is_some_and(|h| blake3::hash(data).as_bytes() == h)
    }

    /// Returns the pieces that are all zero bytes, found by comparing hashes (two hashes
    /// computed, nothing read): a new `.part` of the right length already holds them.
    pub(crate) fn zero_pieces(&self) -> Vec<u32> {
        let g = self.geometry;
        let count = g.piece_count();
        let full = blake3::hash(&vec![0u8; g.piece_len(0).unwrap_or(0) as usize]);
        let last_len = count
            .checked_sub(1)
            .and_then(|l| g.piece_len(l))
            .unwrap_or(0);
        let last = blake3::hash(&vec![0u8; last_len as usize]);
        (0..count)
            .filter(|&i| {
                let zero = if i + 1 == count { &last } else { &full };
                self.hashes.get(i as usize) == Some(zero.as_bytes())
            })
            .collect()
    }

    /// Returns, for each piece in `which`, whether `file` (laid out as this manifest says)
    /// holds it.
    ///
    /// # Errors
    ///
    /// The read error, if the file cannot be read (for example because it is shorter).
    pub(crate) fn verified_pieces(&self, file: &File, which: &[u32]) -> std::io::Result<Vec<bool>> {
        let hashes = hash_pieces(file, self.geometry, which)?;
        Ok(which
            .iter()
            .zip(&hashes)
            .map(|(&i, h)| self.hashes.get(i as usize) == Some(h))
            .collect())
    }

    /// Returns the size information a node sends for this file.
    pub fn size_info(&self, file: &str, with_hashes: bool) -> SizeInformation {
        SizeInformation {
            file: file.into(),
            size: self.size(),
            piece_size: self.geometry.piece_size(),
            hashes: if with_hashes {
                self.hashes.clone()
            } else {
                Vec::new()
            },
            content: self.content,
        }
    }
}

/// Hashes the pieces `which` of `file`, on up to four threads, each reading its own part
/// of the list into one reused piece buffer. Returns the hashes in the order of `which`.
fn hash_pieces(file: &File, geometry: Geometry, which: &[u32]) -> std::io::Result<Vec<[u8; 32]>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let ranges = split_pieces(u32::try_from(which.len()).unwrap_or(u32::MAX), threads)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let parts: Vec<std::io::Result<Vec<[u8; 32]>>> = std::thread::scope(|s| {
        let handles: Vec<_> = ranges
            .into_iter()
            .map(|range| {
                let share = &which[range.start as usize..range.end as usize];
                s.spawn(move || {
                    let mut buf =
                        vec![0u8; geometry.piece_size().min(geometry_len(geometry)) as usize];
                    share
                        .iter()
                        .map(|&i| {
                            let r = geometry.piece_range(i).unwrap_or(0..0);
                            let piece = &mut buf[..(r.end - r.start) as usize];
                            file.read_exact_at(piece, r.start)?;
                            Ok(*blake3::hash(piece).as_bytes())
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("hasher panicked")))
            })
            .collect()
    });
    let mut hashes = Vec::with_capacity(which.len());
    for part in parts {
        hashes.extend(part?);
    }
    Ok(hashes)
}

/// Returns the file size capped to `u32`, so a small file gets a small buffer.
fn geometry_len(g: Geometry) -> u32 {
    u32::try_from(g.size()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn hashes_every_piece_and_round_trips_through_size_info() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let f = file_with(&data);
        let m = Manifest::from_file(f.path(), Some(16 * 1024)).unwrap();
        assert_eq!(m.piece_count(), 7);
        for i in 0..7 {
            let r = m.geometry().piece_range(i).unwrap();
            assert!(m.verify(i, &data[r.start as usize..r.end as usize]));
        }
        assert!(!m.verify(0, &data[1..16 * 1024 + 1]));
        assert!(!m.verify(7, b""));
        let back = Manifest::from_size_info(&m.size_info("f", true)).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn empty_file_has_a_stable_content_id() {
        let a = Manifest::from_file(file_with(b"").path(), None).unwrap();
        let b = Manifest::from_file(file_with(b"").path(), None).unwrap();
        assert_eq!(a.piece_count(), 0);
        assert_eq!(a.content(), b.content());
        assert_ne!(
            a.content(),
            Manifest::from_file(file_with(b"x").path(), None)
                .unwrap()
                .content()
        );
    }

    #[test]
    fn a_forged_piece_list_is_refused() {
        let m = Manifest::from_file(file_with(&[1; 40_000]).path(), Some(16 * 1024)).unwrap();
        let mut info = m.size_info("f", true);
        info.hashes[1] = [0; 32];
        assert!(Manifest::from_size_info(&info).is_err());
        let mut info = m.size_info("f", true);
        info.hashes.pop();
        assert!(Manifest::from_size_info(&info).is_err());
        let mut info = m.size_info("f", true);
        info.size += 1;
        assert!(Manifest::from_size_info(&info).is_err());
    }
}
