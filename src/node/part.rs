//! The files a download writes beside its target: `NAME.part` and its resume record.
//!
//! A download writes into `NAME.part` and records in `NAME.part.state` which pieces are
//! verified. Both sit in a folder the user owns too, so this module never touches a file it
//! cannot prove a download of this crate made:
//!
//! - a new `.part` is created exclusively (`O_CREAT | O_EXCL`: never over an existing file,
//!   never through a symbolic link), and its resume record, naming the `.part`'s device and
//!   inode, is written before any data;
//! - an existing `.part` is opened without following links and adopted only if a valid
//!   record (magic and checksum) names that very file; anything else is refused with
//!   [`Error::NotOurs`] and left alone, byte for byte, and so is a record that is not one;
//! - on resume the record is a hint, never trusted: every piece of the `.part` is verified
//!   again, so a `.part` changed while no download ran cannot publish corrupt data;
//! - publishing hard-links the `.part` to its final name (which fails rather than replace
//!   anything) after checking the name still leads to the file this download wrote, so a
//!   symbolic link is never published.
//!
//! Every temporary name is the target's name plus at most [`LONGEST_SUFFIX`] bytes, which
//! [`MAX_NAME_LEN`](crate::messages::MAX_NAME_LEN) leaves room for.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::messages::{RECORD_MAGIC, ResumeRecord, decode_record, encode_record};

use super::schedule::Bitfield;

/// The longest suffix a temporary name adds to a file name.
const LONGEST_SUFFIX: &str = ".part.state.tmp";
const _: () = assert!(crate::messages::MAX_NAME_LEN + LONGEST_SUFFIX.len() <= 255);

/// A download's `.part` file, proven to be its own, and its resume record.
#[derive(Debug)]
pub(super) struct Part {
    file: File,
    path: PathBuf,
    record: PathBuf,
    manifest: Manifest,
    /// The `.part`'s device and inode, as its record names them.
    id: (u64, u64),
}

/// How a `.part` was opened.
#[derive(Debug)]
pub(super) struct Opened {
    pub part: Part,
    /// The pieces already there and verified.
    pub done: Bitfield,
    /// Pieces the record listed as verified that did not verify (changed on disk).
    pub record_lied: u32,
}

impl Part {
    /// Opens the `.part` of `name` in `dir` for `manifest`: resumes one this crate made,
    /// creates one if there is none, and refuses anything else.
    ///
    /// # Errors
    ///
    /// [`Error::NotOurs`] for a `.part` or record this crate did not make (left untouched),
    /// [`Error::File`] for local I/O.
    pub fn open(dir: &Path, name: &str, manifest: &Manifest) -> Result<Opened> {
        let path = dir.join(format!("{name}.part"));
        let record = dir.join(format!("{name}.part.state"));
        let rec = read_record(&record)?;
        match open_nofollow(&path) {
            Ok(file) => Self::adopt(file, path, record, rec, manifest),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // A record without its `.part` is a leftover of ours: replaced below.
                Self::create(path, record, manifest)
            }
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(Error::NotOurs {
                path,
                reason: "it is a symbolic link",
            }),
            Err(_) if path.symlink_metadata().is_ok() => Err(Error::NotOurs {
                path,
                reason: "it is not a regular file",
            }),
            Err(source) => Err(Error::File {
                op: "opening",
                path,
                source,
            }),
        }
    }

    /// Removes what a publish cut short leaves: publishing hard-links `NAME.part` to
    /// `NAME`, then unlinks the `.part`; killed in between, both names lead to one file.
    /// Such a `.part` is removed (the file stays, under its name), with its record if the
    /// record names that file. Anything else is left alone. Returns whether it removed it.
    pub fn clear_published(dir: &Path, name: &str) -> bool {
        let path = dir.join(format!("{name}.part"));
        let record = dir.join(format!("{name}.part.state"));
        let (Ok(part), Ok(published)) = (
            std::fs::symlink_metadata(&path),
            std::fs::symlink_metadata(dir.join(name)),
        ) else {
            return false;
        };
        let same = part.file_type().is_file()
            && published.file_type().is_file()
            && (part.dev(), part.ino()) == (published.dev(), published.ino());
        if !same || std::fs::remove_file(&path).is_err() {
            return false;
        }
        if let Ok(Some(rec)) = read_record(&record)
            && (rec.dev, rec.ino) == (part.dev(), part.ino())
        {
            let _ = std::fs::remove_file(&record);
        }
        true
    }

    fn create(path: PathBuf, record: PathBuf, manifest: &Manifest) -> Result<Opened> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|source| Error::File {
                op: "creating",
                path: path.clone(),
                source,
            })?;
        let id = file_id(&file, &path)?;
        let part = Self {
            file,
            path,
            record,
            manifest: manifest.clone(),
            id,
        };
        let empty = Bitfield::empty(manifest.piece_count());
        // The record first: from now on this `.part` is provably ours.
        part.save_record(&empty).map_err(|source| Error::File {
            op: "writing the resume record",
            path: part.record.clone(),
            source,
        })?;
        part.file
            .set_len(manifest.size())
            .map_err(|source| Error::File {
                op: "allocating",
                path: part.path.clone(),
                source,
            })?;
        // A fresh `.part` reads as zeros: pieces of zeros are already there.
        let done = zero_bitfield(manifest);
        Ok(Opened {
            part,
            done,
            record_lied: 0,
        })
    }

    fn adopt(
        file: File,
        path: PathBuf,
        record: PathBuf,
        rec: Option<ResumeRecord>,
        manifest: &Manifest,
    ) -> Result<Opened> {
        let meta = file.metadata().map_err(|source| Error::File {
            op: "reading metadata of",
            path: path.clone(),
            source,
        })?;
        if !meta.file_type().is_file() {
            return Err(Error::NotOurs {
                path,
                reason: "it is not a regular file",
            });
        }
        let id = (meta.dev(), meta.ino());
        let Some(rec) = rec.filter(|r| (r.dev, r.ino) == id) else {
            return Err(Error::NotOurs {
                path,
                reason: "no resume record of this node names it",
            });
        };
        let pieces = manifest.piece_count();
        let part = Self {
            file,
            path,
            record,
            manifest: manifest.clone(),
            id,
        };
        let err = |op, path: &Path| {
            let path = path.to_owned();
            move |source| Error::File { op, path, source }
        };
        if rec.content != manifest.content() || meta.len() != manifest.size() {
            // Ours, but for other content: start again in the same file.
            part.save_record(&Bitfield::empty(pieces))
                .map_err(err("writing the resume record", &part.record))?;
            part.file
                .set_len(0)
                .map_err(err("truncating", &part.path))?;
            part.file
                .set_len(manifest.size())
                .map_err(err("allocating", &part.path))?;
            let done = zero_bitfield(manifest);
            return Ok(Opened {
                part,
                done,
                record_lied: 0,
            });
        }
        let claimed = Bitfield::from_bytes(rec.bits, pieces).unwrap_or(Bitfield::empty(pieces));
        let all: Vec<u32> = (0..pieces).collect();
        let verified = manifest
            .verified_pieces(&part.file, &all)
            .map_err(err("verifying", &part.path))?;
        let mut done = Bitfield::empty(pieces);
        let mut record_lied = 0;
        for (i, ok) in verified.into_iter().enumerate() {
            let i = i as u32;
            if ok {
                done.set(i);
            } else if claimed.get(i) {
                record_lied += 1;
            }
        }
        Ok(Opened {
            part,
            done,
            record_lied,
        })
    }

    /// Returns the open `.part`.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Returns the `.part`'s path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns the resume record's path.
    pub fn record_path(&self) -> &Path {
        &self.record
    }

    /// Records durably which pieces are verified: syncs the `.part` first, so the record
    /// never claims a piece that is not on disk, then replaces the record atomically. The
    /// temporary file is created exclusively and removed again if anything fails.
    pub fn save_record(&self, done: &Bitfield) -> io::Result<()> {
        self.file.sync_data()?;
        let bytes = encode_record(&ResumeRecord {
            magic: RECORD_MAGIC,
            content: self.manifest.content(),
            pieces: done.len(),
            bits: done.as_bytes().to_vec(),
            dev: self.id.0,
            ino: self.id.1,
        })
        .map_err(io::Error::other)?;
        let tmp = self.record.with_extension("state.tmp");
        let mut f = create_tmp(&tmp)?;
        let written = f
            .write_all(&bytes)
            .and_then(|()| f.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &self.record));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// Syncs the finished `.part`, moves it to `target` without ever replacing a file there,
    /// and removes the record.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyExists`]-style refusals come back as [`Publish::Exists`]; a `.part`
    /// replaced behind the download's back as [`Error::NotOurs`]; I/O as [`Error::File`].
    pub fn publish(&self, target: &Path) -> Result<(), Publish> {
        let io = |op, path: &Path| {
            let path = path.to_owned();
            move |source| Publish::Failed(Error::File { op, path, source })
        };
        self.file.sync_all().map_err(io("syncing", &self.path))?;
        // The name must still lead to the very file this download wrote.
        let meta = std::fs::symlink_metadata(&self.path).map_err(io("checking", &self.path))?;
        if !meta.file_type().is_file() || (meta.dev(), meta.ino()) != self.id {
            return Err(Publish::Failed(Error::NotOurs {
                path: self.path.clone(),
                reason: "it was replaced while the download ran",
            }));
        }
        match std::fs::hard_link(&self.path, target) {
            Ok(()) => {
                std::fs::remove_file(&self.path).map_err(io("removing", &self.path))?;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(Publish::Exists),
            // No hard links on this file system: check, then rename.
            Err(_) => {
                if target.symlink_metadata().is_ok() {
                    return Err(Publish::Exists);
                }
                std::fs::rename(&self.path, target).map_err(io("renaming .part to", target))?;
            }
        }
        let _ = std::fs::remove_file(&self.record);
        if let Some(dir) = target.parent()
            && let Ok(d) = File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// Why publishing failed.
#[derive(Debug)]
pub(super) enum Publish {
    /// A file already has the target's name.
    Exists,
    /// Anything else.
    Failed(Error),
}

/// Reads the resume record at `path`: `None` if there is none; an error if something is
/// there that is not a record this crate wrote (it is then left alone).
fn read_record(path: &Path) -> Result<Option<ResumeRecord>> {
    let file = match open_nofollow(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(_) => {
            return Err(Error::NotOurs {
                path: path.into(),
                reason: "it is not a resume record",
            });
        }
    };
    // A record is a few hundred bytes per thousand pieces; read at most what the largest
    // file's record needs, so a huge foreign file is not read whole.
    let mut bytes = Vec::new();
    let limit = u64::from(crate::messages::MAX_FRAME_LEN);
    let read = io::Read::read_to_end(&mut io::Read::take(&file, limit), &mut bytes);
    let is_file = file.metadata().is_ok_and(|m| m.file_type().is_file());
    match read
        .ok()
        .filter(|_| is_file)
        .and_then(|_| decode_record(&bytes))
    {
        Some(rec) => Ok(Some(rec)),
        None => Err(Error::NotOurs {
            path: path.into(),
            reason: "it is not a resume record",
        }),
    }
}

/// Creates the record's temporary file exclusively. A leftover one that a save cut short by
/// a crash would leave (empty, or starting with the record magic) is ours and is replaced;
/// anything else is refused.
fn create_tmp(tmp: &Path) -> io::Result<File> {
    let create = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(tmp)
    };
    match create() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if is_torn_record(tmp) {
                std::fs::remove_file(tmp)?;
                create()
            } else {
                Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} is in the way and is not ours", tmp.display()),
                ))
            }
        }
        other => other,
    }
}

fn is_torn_record(path: &Path) -> bool {
    let Ok(file) = open_nofollow(path) else {
        return false;
    };
    let mut head = Vec::new();
    let small = file.metadata().is_ok_and(|m| {
        m.file_type().is_file() && m.len() <= u64::from(crate::messages::MAX_FRAME_LEN)
    });
    small
        && io::Read::read_to_end(&mut io::Read::take(&file, 4), &mut head).is_ok()
        && (head.is_empty() || head == RECORD_MAGIC)
}

fn zero_bitfield(manifest: &Manifest) -> Bitfield {
    let mut done = Bitfield::empty(manifest.piece_count());
    manifest.zero_pieces().into_iter().for_each(|i| done.set(i));
    done
}

fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

fn file_id(file: &File, path: &Path) -> Result<(u64, u64)> {
    let meta = file.metadata().map_err(|source| Error::File {
        op: "reading metadata of",
        path: path.into(),
        source,
    })?;
    Ok((meta.dev(), meta.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    const PIECE: u32 = 16 * 1024;

    /// A folder with `orig.bin` (8 pieces of random bytes) and its manifest.
    fn setup() -> (tempfile::TempDir, Manifest, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let mut data = vec![0u8; 8 * PIECE as usize];
        fastrand::Rng::with_seed(9).fill(&mut data);
        let orig = dir.path().join("orig.bin");
        std::fs::write(&orig, &data).unwrap();
        let m = Manifest::from_file(&orig, Some(PIECE)).unwrap();
        (dir, m, data)
    }

    fn not_ours(r: Result<Opened>) -> &'static str {
        match r {
            Err(Error::NotOurs { reason, .. }) => reason,
            other => panic!("expected NotOurs, got {other:?}"),
        }
    }

    #[test]
    fn a_users_own_part_and_record_are_left_byte_for_byte() {
        let (dir, m, _) = setup();
        let part = dir.path().join("f.part");
        std::fs::write(&part, b"the user's own notes").unwrap();
        assert_eq!(
            not_ours(Part::open(dir.path(), "f", &m)),
            "no resume record of this node names it"
        );
        assert_eq!(std::fs::read(&part).unwrap(), b"the user's own notes");
        let record = dir.path().join("f.part.state");
        std::fs::write(&record, b"and their state file").unwrap();
        assert_eq!(
            not_ours(Part::open(dir.path(), "f", &m)),
            "it is not a resume record"
        );
        assert_eq!(std::fs::read(&record).unwrap(), b"and their state file");
        assert_eq!(std::fs::read(&part).unwrap(), b"the user's own notes");
    }

    #[test]
    fn a_symlinked_part_or_record_is_never_followed() {
        let (dir, m, _) = setup();
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(outside.path(), b"outside").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("f.part")).unwrap();
        assert_eq!(
            not_ours(Part::open(dir.path(), "f", &m)),
            "it is a symbolic link"
        );
        std::fs::remove_file(dir.path().join("f.part")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("f.part.state")).unwrap();
        assert_eq!(
            not_ours(Part::open(dir.path(), "f", &m)),
            "it is not a resume record"
        );
        assert_eq!(std::fs::read(outside.path()).unwrap(), b"outside");
        assert!(!dir.path().join("f.part").exists());
    }

    #[test]
    fn a_part_it_made_is_resumed_and_every_piece_verified_again() {
        let (dir, m, data) = setup();
        let opened = Part::open(dir.path(), "f", &m).unwrap();
        assert_eq!(opened.done.count(), 0);
        // Four pieces written and recorded, as a download killed midway leaves them.
        let mut done = Bitfield::empty(8);
        for i in 0..4 {
            let at = (i * PIECE) as usize;
            let piece = &data[at..at + PIECE as usize];
            opened.part.file().write_all_at(piece, at as u64).unwrap();
            done.set(i);
        }
        opened.part.save_record(&done).unwrap();
        drop(opened);
        // While no download runs, two recorded pieces change on disk.
        let f = OpenOptions::new()
            .write(true)
            .open(dir.path().join("f.part"))
            .unwrap();
        f.write_all_at(b"X", 0).unwrap();
        f.write_all_at(b"Y", u64::from(PIECE) * 3 + 5).unwrap();
        let again = Part::open(dir.path(), "f", &m).unwrap();
        assert_eq!(again.record_lied, 2);
        assert_eq!(
            (0..8).filter(|&i| again.done.get(i)).collect::<Vec<_>>(),
            [1, 2]
        );
    }

    #[test]
    fn zero_pieces_of_a_new_part_are_already_there() {
        let dir = tempfile::tempdir().unwrap();
        let orig = dir.path().join("sparse.bin");
        let mut data = vec![0u8; 5 * PIECE as usize + 100];
        data[2 * PIECE as usize] = 1;
        std::fs::write(&orig, &data).unwrap();
        let m = Manifest::from_file(&orig, Some(PIECE)).unwrap();
        let opened = Part::open(dir.path(), "s", &m).unwrap();
        assert_eq!(
            (0..6).filter(|&i| opened.done.get(i)).collect::<Vec<_>>(),
            [0, 1, 3, 4, 5]
        );
    }

    #[test]
    fn a_part_replaced_while_downloading_is_not_published() {
        let (dir, m, _) = setup();
        let opened = Part::open(dir.path(), "f", &m).unwrap();
        let part = dir.path().join("f.part");
        std::fs::remove_file(&part).unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::os::unix::fs::symlink(outside.path(), &part).unwrap();
        let target = dir.path().join("f");
        assert!(matches!(
            opened.part.publish(&target),
            Err(Publish::Failed(Error::NotOurs { .. }))
        ));
        assert!(target.symlink_metadata().is_err(), "nothing published");
    }

    #[test]
    fn a_publish_cut_short_is_finished_on_the_next_try_and_nothing_else_is_touched() {
        let (dir, m, _) = setup();
        let opened = Part::open(dir.path(), "f", &m).unwrap();
        opened.part.save_record(&zero_bitfield(&m)).unwrap();
        // Killed between the hard link and the unlink.
        std::fs::hard_link(dir.path().join("f.part"), dir.path().join("f")).unwrap();
        drop(opened);
        assert!(Part::clear_published(dir.path(), "f"));
        assert!(dir.path().join("f").exists());
        assert!(!dir.path().join("f.part").exists());
        assert!(!dir.path().join("f.part.state").exists());
        // A `.part` that is another file than the one published is left alone.
        std::fs::write(dir.path().join("g"), b"published").unwrap();
        std::fs::write(dir.path().join("g.part"), b"mine").unwrap();
        assert!(!Part::clear_published(dir.path(), "g"));
        assert_eq!(std::fs::read(dir.path().join("g.part")).unwrap(), b"mine");
    }

    #[test]
    fn publishing_never_replaces_a_file() {
        let (dir, m, _) = setup();
        let opened = Part::open(dir.path(), "f", &m).unwrap();
        std::fs::write(dir.path().join("f"), b"mine").unwrap();
        assert!(matches!(
            opened.part.publish(&dir.path().join("f")),
            Err(Publish::Exists)
        ));
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"mine");
    }

    #[test]
    fn a_crash_mid_save_is_survived_but_a_foreign_tmp_is_not_removed() {
        let (dir, m, _) = setup();
        let opened = Part::open(dir.path(), "f", &m).unwrap();
        let tmp = dir.path().join("f.part.state.tmp");
        // An empty leftover, as a crash between create and write leaves it.
        std::fs::write(&tmp, b"").unwrap();
        opened.part.save_record(&Bitfield::empty(8)).unwrap();
        assert!(!tmp.exists());
        std::fs::write(&tmp, b"somebody else's").unwrap();
        assert!(opened.part.save_record(&Bitfield::empty(8)).is_err());
        assert_eq!(std::fs::read(&tmp).unwrap(), b"somebody else's");
    }
}
