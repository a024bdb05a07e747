//! The files a node serves: which names it announced, where they are and what they hold.
//!
//! Only files in the store are served, and a name becomes a path only through
//! [`Store::path_of`], which accepts plain names alone. A complete file remembers its length
//! and modification time when it was hashed; a file found changed on disk is no longer
//! served (its pieces would fail verification at every downloader anyway). A file being
//! downloaded is served from its `.part` as a partial entry whose bitfield grows as pieces
//! verify; the finished file replaces it under the same name.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crossbeam_channel::{Sender, TrySendError};
use parking_lot::{Mutex, RwLock};

use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::messages::check_file_name;

use super::schedule::Bitfield;
use super::seeding::Copies;

/// One file the node serves.
#[derive(Debug)]
pub(crate) struct SharedFile {
    pub name: String,
    pub path: PathBuf,
    pub manifest: Manifest,
    len: u64,
    modified: Option<SystemTime>,
    /// The pieces held, for a file still being downloaded; `None` for a complete file.
    partial: Option<RwLock<Bitfield>>,
    /// The copies of each piece out in the swarm, as this node knows them (complete files).
    pub copies: Mutex<Copies>,
    /// Connections to signal when a partial file gains pieces.
    watchers: Mutex<Vec<Sender<()>>>,
}

impl SharedFile {
    /// Returns whether `file` (an open handle on this file) still looks as it did when it
    /// was hashed. A partial file changes as pieces arrive, and is always taken as is.
    pub fn is_unchanged(&self, file: &File) -> bool {
        self.partial.is_some()
            || file
                .metadata()
                .is_ok_and(|m| m.len() == self.len && m.modified().ok() == self.modified)
    }

    /// Returns which pieces the node holds.
    pub fn holdings(&self) -> Bitfield {
        match &self.partial {
            Some(have) => have.read().clone(),
            None => Bitfield::full(self.manifest.piece_count()),
        }
    }

    /// Returns whether the node holds piece `piece`.
    pub fn holds(&self, piece: u32) -> bool {
        match &self.partial {
            Some(have) => have.read().get(piece),
            None => piece < self.manifest.piece_count(),
        }
    }

    /// Returns how many pieces the node holds, and whether that is all of them.
    pub fn progress(&self) -> (u32, bool) {
        let total = self.manifest.piece_count();
        match &self.partial {
            Some(have) => {
                let n = have.read().count();
                (n, n == total)
            }
            None => (total, true),
        }
    }

    /// Returns whether this is a file still being downloaded.
    pub fn is_partial(&self) -> bool {
        self.partial.is_some()
    }

    /// Records that piece `piece` of a partial file is verified and written, and signals
    /// every connection watching it.
    pub fn mark(&self, piece: u32) {
        if let Some(have) = &self.partial {
            have.write().set(piece);
            // A full channel already holds a signal; a closed one is a connection gone.
            self.watchers
                .lock()
                .retain(|w| !matches!(w.try_send(()), Err(TrySendError::Disconnected(_))));
        }
    }

    /// Signals `wake` whenever this partial file gains a piece, until its receiver is gone.
    pub fn watch(&self, wake: &Sender<()>) {
        let mut watchers = self.watchers.lock();
        if !watchers.iter().any(|w| w.same_channel(wake)) {
            watchers.push(wake.clone());
        }
    }

    fn new(
        name: &str,
        path: PathBuf,
        manifest: Manifest,
        stat: (u64, Option<SystemTime>),
        partial: Option<Bitfield>,
    ) -> Self {
        let pieces = manifest.piece_count();
        Self {
            name: name.into(),
            path,
            len: stat.0,
            modified: stat.1,
            copies: Mutex::new(if partial.is_none() {
                Copies::new(pieces)
            } else {
                Copies::default()
            }),
            partial: partial.map(RwLock::new),
            watchers: Mutex::new(Vec::new()),
            manifest,
        }
    }
}

/// The table of shared files, by name.
#[derive(Debug)]
pub(crate) struct Store {
    dir: PathBuf,
    files: RwLock<HashMap<String, Arc<SharedFile>>>,
}

impl Store {
    /// Creates an empty store over the folder `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            files: RwLock::new(HashMap::new()),
        }
    }

    /// Returns the node's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Returns the path of the plain name `name` inside the folder.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] unless `name` is a plain file name.
    pub fn path_of(&self, name: &str) -> Result<PathBuf> {
        check_file_name(name)?;
        Ok(self.dir.join(name))
    }

    /// Hashes the regular file `name` in the folder and starts serving it.
    ///
    /// Symbolic links are refused, so a shared name can never reach outside the folder.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`], [`Error::NotAFile`], or [`Error::File`] if it cannot be read.
    pub fn share(&self, name: &str, piece_size: Option<u32>) -> Result<Arc<SharedFile>> {
        let path = self.path_of(name)?;
        self.hash_and_insert(name, path, false, piece_size)
    }

    /// Hashes the regular file at `path`, wherever it lies, and starts serving it in place
    /// under its base name, without copying it. The path is the caller's to choose, so a
    /// symbolic link in it is followed; what is served is the file it named when shared.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] if its base name is not a plain file name, [`Error::NotAFile`]
    /// unless it is a regular file, [`Error::File`] if it cannot be read.
    pub fn share_path(&self, path: &Path, piece_size: Option<u32>) -> Result<Arc<SharedFile>> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::NotAFile { path: path.into() })?;
        check_file_name(name)?;
        let path = std::fs::canonicalize(path).map_err(|source| Error::File {
            op: "opening",
            path: path.into(),
            source,
        })?;
        let name = name.to_owned();
        self.hash_and_insert(&name, path, true, piece_size)
    }

    /// Hashes `path` if it is a regular file (a symbolic link to one only if
    /// `follow_links`), and serves it as `name`.
    fn hash_and_insert(
        &self,
        name: &str,
        path: PathBuf,
        follow_links: bool,
        piece_size: Option<u32>,
    ) -> Result<Arc<SharedFile>> {
        let meta = if follow_links {
            std::fs::metadata(&path)
        } else {
            std::fs::symlink_metadata(&path)
        };
        let meta = meta.map_err(|source| Error::File {
            op: "opening",
            path: path.clone(),
            source,
        })?;
        if !meta.file_type().is_file() {
            return Err(Error::NotAFile { path });
        }
        let manifest = Manifest::from_file(&path, piece_size)?;
        self.insert(name, path, manifest)
    }

    /// Starts serving the file at `path` (already verified against `manifest`) as `name`.
    ///
    /// # Errors
    ///
    /// [`Error::File`] if its metadata cannot be read.
    pub fn insert(&self, name: &str, path: PathBuf, manifest: Manifest) -> Result<Arc<SharedFile>> {
        let meta = std::fs::metadata(&path).map_err(|source| Error::File {
            op: "reading metadata of",
            path: path.clone(),
            source,
        })?;
        let stat = (meta.len(), meta.modified().ok());
        let shared = Arc::new(SharedFile::new(name, path, manifest, stat, None));
        self.files.write().insert(name.into(), Arc::clone(&shared));
        Ok(shared)
    }

    /// Starts serving the pieces in `have` of a file being downloaded into `part`.
    ///
    /// A name already served complete is left alone (and `None` returned).
    pub fn insert_partial(
        &self,
        name: &str,
        part: PathBuf,
        manifest: Manifest,
        have: Bitfield,
    ) -> Option<Arc<SharedFile>> {
        let mut files = self.files.write();
        if files.get(name).is_some_and(|f| f.partial.is_none()) {
            return None;
        }
        let shared = Arc::new(SharedFile::new(name, part, manifest, (0, None), Some(have)));
        files.insert(name.into(), Arc::clone(&shared));
        Some(shared)
    }

    /// Returns the shared file called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<SharedFile>> {
        self.files.read().get(name).cloned()
    }

    /// Stops serving `file`, unless the name has been shared again since.
    pub fn withdraw(&self, file: &SharedFile) {
        let mut files = self.files.write();
        if files
            .get(&file.name)
            .is_some_and(|f| std::ptr::eq(f.as_ref(), file))
        {
            files.remove(&file.name);
        }
    }

    /// Returns every shared file, by name.
    pub fn list(&self) -> Vec<Arc<SharedFile>> {
        let mut files: Vec<_> = self.files.read().values().cloned().collect();
        files.sort_by(|a, b| a.name.cmp(&b.name));
        files
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_regular_files_are_shared() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.bin"), b"hello").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        let store = Store::new(dir.path().into());
        assert_eq!(store.share("a.bin", None).unwrap().manifest.size(), 5);
        assert!(matches!(
            store.share("../a.bin", None),
            Err(Error::InvalidName { .. })
        ));
        assert!(matches!(
            store.share("sub", None),
            Err(Error::NotAFile { .. })
        ));
        assert!(matches!(
            store.share("link", None),
            Err(Error::NotAFile { .. })
        ));
        assert!(matches!(
            store.share("missing", None),
            Err(Error::File { .. })
        ));
        assert_eq!(store.list().len(), 1);
    }

    #[test]
    fn a_file_changed_on_disk_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        std::fs::write(&path, b"hello").unwrap();
        let store = Store::new(dir.path().into());
        let shared = store.share("a.bin", None).unwrap();
        assert!(shared.is_unchanged(&File::open(&path).unwrap()));
        std::fs::write(&path, b"hello, world").unwrap();
        assert!(!shared.is_unchanged(&File::open(&path).unwrap()));
        store.withdraw(&shared);
        assert!(store.get("a.bin").is_none());
    }
}
