//! A download never destroys or corrupts a file of the user's: a `.part` or resume record
//! it did not make is left byte for byte, a symbolic link is never written through or
//! published, and pieces a resume record lists are verified again before anything is
//! published. A file outside the folder is shared where it lies, never copied.

mod common;

use std::os::unix::fs::FileExt;

use common::*;
use p2ptorrent::{Error, Event};

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
