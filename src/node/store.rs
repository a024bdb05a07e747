//! The files a node serves: which names it announced, where they are and what they hold.
//!
//! Only files in the store are served, and a name becomes a path only through
//! [`Store::path_of`], which accepts plain names alone. A shared file remembers its length
//! and modification time when it was hashed; a file found changed on disk is no longer
//! served (its pieces would fail verification at every downloader anyway).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::RwLock;

use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::messages::{ContentId, check_file_name};

/// One file the node serves.
#[derive(Debug)]
pub(crate) struct SharedFile {
    pub name: String,
    pub path: PathBuf,
    pub manifest: Manifest,
    len: u64,
    modified: Option<SystemTime>,
}

impl SharedFile {
    /// Returns whether `file` (an open handle on this file) still looks as it did when it
    /// was hashed.
    pub fn is_unchanged(&self, file: &File) -> bool {
        file.metadata()
            .is_ok_and(|m| m.len() == self.len && m.modified().ok() == self.modified)
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
        let meta = std::fs::symlink_metadata(&path).map_err(|source| Error::File {
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
        let shared = Arc::new(SharedFile {
            name: name.into(),
            path,
            manifest,
            len: meta.len(),
            modified: meta.modified().ok(),
        });
        self.files.write().insert(name.into(), Arc::clone(&shared));
        Ok(shared)
    }

    /// Returns the shared file called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<SharedFile>> {
        self.files.read().get(name).cloned()
    }

    /// Returns the shared file whose content id is `content`.
    pub fn by_content(&self, content: ContentId) -> Option<Arc<SharedFile>> {
        self.files
            .read()
            .values()
            .find(|f| f.manifest.content() == content)
            .cloned()
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
