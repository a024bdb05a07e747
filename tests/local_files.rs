//! A download never destroys or corrupts a file of the user's: a `.part` or resume record
//! it did not make is left byte for byte, a symbolic link is never written through or
//! published, and pieces a resume record lists are verified again before anything is
//! published. A file outside the folder is shared where it lies, never copied. A disk that
//! fills up ends a download with the error and keeps what is verified for a resume.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use p2ptorrent::{Error, Event, Node};

const MIB: u64 = 1 << 20;

#[test]
fn a_users_own_part_file_is_left_alone() {
    let (tracker, _te) = start_tracker();
    let seeder = start_node("seeder", tracker.local_addr());
    write_random(&seeder.path("report"), 1, 4 * MIB);
    seeder.node.share("report").unwrap();
    let leech = start_node("leech", tracker.local_addr());
    // Same length as the download: the old code adopted it, overwrote it and deleted it.
    write_random(&leech.path("report.part"), 2, 4 * MIB);
    let before = file_hash(&leech.path("report.part"));

    let err = leech.node.download("report").unwrap().wait().unwrap_err();
    assert!(matches!(err, Error::NotOurs { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("report.part") && text.contains("left alone"),
        "{text}"
    );
    assert_eq!(file_hash(&leech.path("report.part")), before);
    assert!(!leech.path("report").exists());
    assert!(!leech.path("report.part.state").exists());
    leech.shutdown();
    seeder.shutdown();
    tracker.shutdown().unwrap();
}

#[test]
fn a_symlinked_part_file_is_never_written_through_nor_published() {
    let (tracker, _te) = start_tracker();
    let seeder = start_node("seeder", tracker.local_addr());
    write_random(&seeder.path("report"), 3, 4 * MIB);
    seeder.node.share("report").unwrap();
    let leech = start_node("leech", tracker.local_addr());
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("precious");
    std::fs::write(&victim, b"not yours").unwrap();
    std::os::unix::fs::symlink(&victim, leech.path("report.part")).unwrap();

    let err = leech.node.download("report").unwrap().wait().unwrap_err();
    assert!(matches!(err, Error::NotOurs { .. }), "{err}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"not yours");
    assert!(leech.path("report").symlink_metadata().is_err());
    assert!(
        leech
            .path("report.part")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink()
    );
    leech.shutdown();
    seeder.shutdown();
    tracker.shutdown().unwrap();
}

/// Kill a download midway, flip one byte in pieces its record lists as verified, start it
/// again: the flipped pieces are found, fetched again, and the file is byte-exact.
#[test]
fn pieces_a_resume_record_lists_are_verified_again() {
    let size = 8 * MIB;
    let run = Interrupted::new(size, 40);
    let folder = &run.folder;
    let listed = run.listed();
    assert!(listed.len() >= 30, "recorded {}", listed.len());
    let part = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(folder.path().join("f.bin.part"))
        .unwrap();
    let flipped = [
        listed[0],
        listed[listed.len() / 2],
        listed[listed.len() - 1],
    ];
    for &piece in &flipped {
        let at = u64::from(piece) * u64::from(PIECE) + 17;
        let mut byte = [0u8];
        part.read_exact_at(&mut byte, at).unwrap();
        part.write_all_at(&[byte[0] ^ 0x40], at).unwrap();
    }
    drop(part);

    let (second, events) =
        p2ptorrent::Node::start(config("second", folder.path(), run.tracker.local_addr())).unwrap();
    let report = second.download("f.bin").unwrap().wait().unwrap();
    assert_same_file(&run.seeder.path("f.bin"), &folder.path().join("f.bin"));
    assert!(
        report.resumed as usize <= listed.len() - flipped.len(),
        "resumed {} of {} listed, 3 flipped",
        report.resumed,
        listed.len()
    );
    let fetched: u64 = report.from.iter().map(|(_, n)| n).sum();
    assert_eq!(fetched, size - u64::from(report.resumed) * u64::from(PIECE));
    let said = events.try_iter().find_map(|e| match e {
        Event::RecordFailed { error, .. } => Some(error),
        _ => None,
    });
    assert!(
        said.as_deref().is_some_and(|s| s.starts_with("3 pieces")),
        "{said:?}"
    );
    second.shutdown().unwrap();
    run.shutdown();
}

/// A file anywhere is shared in place under its base name; a directory, or a path whose
/// base name is not a plain file name, is refused.
#[test]
fn a_file_outside_the_folder_is_shared_where_it_lies() {
    let (tracker, _events) = start_tracker();
    let outside = tempfile::tempdir().unwrap();
    let original = outside.path().join("notes.txt");
    write_random(&original, 8, 200_000);
    let a = start_node("A", tracker.local_addr());
    let shared = a.node.share_path(&original).unwrap();
    assert_eq!(shared.file, "notes.txt");
    assert!(
        !a.path("notes.txt").exists(),
        "nothing is copied into the folder"
    );
    let b = start_node("B", tracker.local_addr());
    let report = b.node.download("notes.txt").unwrap().wait().unwrap();
    assert_same_file(&report.path, &original);
    assert!(matches!(
        a.node.share_path(outside.path()),
        Err(Error::NotAFile { .. })
    ));
    assert!(
        a.node
            .share_path(outside.path().join("missing.bin"))
            .is_err()
    );
    b.shutdown();
    a.shutdown();
}

/// A folder on a tmpfs of its own, unmounted (lazily, so nothing holds it) however the test
/// ends.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` (as `mount` takes it: "1m") on a new folder; `None` without
    /// root or `mount`.
    fn mount(size: &str) -> Option<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let dir = tempfile::tempdir().ok()?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Gives the filesystem `size` in all.
    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

/// A write that fails (the disk is full) ends the download at once with the error and the
/// `.part`'s path; the pieces verified before stay in the `.part` and its record, and once
/// there is room the same download resumes from them and finishes byte for byte.
#[test]
fn a_full_disk_ends_the_download_and_a_resume_finishes_it() {
    let Some(disk) = SmallDisk::mount("1m") else {
        eprintln!("skipped: mounting a small tmpfs needs root and mount(8)");
        return;
    };
    let (tracker, _te) = start_tracker();
    let seeder = start_node("seeder", tracker.local_addr());
    write_random(&seeder.path("report"), 9, 4 * MIB);
    seeder.node.share("report").unwrap();
    let (leech, _events) =
        Node::start(config("leech", disk.path(), tracker.local_addr())).expect("node starts");
    let part: PathBuf = disk.path().join("report.part");

    let download = leech.download("report").unwrap();
    let err = download
        .wait_timeout(Duration::from_secs(60))
        .expect("a full disk ends the download, it does not hold it")
        .unwrap_err();
    match &err {
        Error::File { op, path, source } => {
            assert_eq!(*op, "writing", "{err}");
            assert_eq!(path, &part, "{err}");
            assert_eq!(source.raw_os_error(), Some(libc::ENOSPC), "{err}");
        }
        other => panic!("expected a write error, got {other}"),
    }
    assert!(!disk.path().join("report").exists());
    assert!(part.exists(), "the .part is kept");
    assert!(disk.path().join("report.part.state").exists());

    disk.resize("16m");
    let report = leech.download("report").unwrap().wait().unwrap();
    assert!(
        report.resumed > 0,
        "pieces written before the disk filled are kept: {report:?}"
    );
    assert_same_file(&report.path, &seeder.path("report"));
    leech.shutdown().unwrap();
    seeder.shutdown();
    tracker.shutdown().unwrap();
}
