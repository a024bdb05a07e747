//! The binaries, started as a person would: a tracker, two nodes sharing a 64 MiB file, a
//! third that fetches it through the flags and a fourth through the original's stdin
//! commands.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use p2ptorrent::TrackerClient;

const TRACKER: &str = TRACKER_BIN;
const NODE: &str = NODE_BIN;

#[test]
fn four_nodes_share_a_file_through_the_binaries() {
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    let mut tracker = Proc::start(
        TRACKER,
        &["--listen", "127.0.0.1:0", "--interval", "2"],
        cwd,
        Stdio::null(),
    );
    let line = tracker.line_with("listening on");
    let addr: SocketAddr = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    let tracker_arg = addr.to_string();

    let size = 64 * 1024 * 1024;
    std::fs::create_dir_all(cwd.join("node_files/A")).unwrap();
    std::fs::create_dir_all(cwd.join("node_files/B")).unwrap();
    let original = cwd.join("node_files/A/movie.bin");
    write_random(&original, 64, size);
    std::fs::hard_link(&original, cwd.join("node_files/B/movie.bin")).unwrap();

    let seeder = |name: &str| {
        let args = node_args(name, &tracker_arg, &["--upload", "movie.bin"]);
        let mut p = Proc::start(NODE, &args, cwd, Stdio::null());
        p.line_with("sharing movie.bin");
        p
    };
    let a = seeder("A");
    let b = seeder("B");
    let client = TrackerClient::new(addr);
    assert_eq!(client.need("movie.bin", 10).unwrap().owners.len(), 2);

    // C: through the flags.
    let c_args = node_args(
        "C",
        &tracker_arg,
        &["--download", "movie.bin", "--exit-when-done"],
    );
    let c = Proc::start(NODE, &c_args, cwd, Stdio::null());
    assert!(c.wait(PATIENCE).success(), "C failed");
    assert_same_file(&original, &cwd.join("node_files/C/movie.bin"));

    // D: through the original's stdin commands, then `torrent exit`.
    let d_args = [
        "-n",
        "D",
        "-p",
        "0",
        "6001",
        "--bind",
        "127.0.0.1",
        "--tracker",
        &tracker_arg,
    ];
    let mut d = Proc::start(NODE, &d_args, cwd, Stdio::piped());
    let mut stdin = d.child.stdin.take().unwrap();
    writeln!(stdin, "torrent -search movie").unwrap();
    let hit = d.line_with("movie.bin");
    // A and B: C left the network when its download was done.
    assert!(hit.contains("2 owners"), "{hit}");
    writeln!(stdin, "torrent -setMode download movie.bin").unwrap();
    let done = d.line_with("downloaded movie.bin");
    assert!(done.contains("67108864 bytes"), "{done}");
    writeln!(stdin, "torrent exit").unwrap();
    assert!(d.wait(PATIENCE).success(), "D did not exit cleanly");
    drop(stdin);
    assert_same_file(&original, &cwd.join("node_files/D/movie.bin"));

    for name in ["A", "B", "C", "D"] {
        assert!(
            part_files(&cwd.join("node_files").join(name)).is_empty(),
            "{name} left a .part"
        );
    }
    // C and D told the tracker they left; A and B are the owners now.
    let names = |client: &TrackerClient| -> Vec<String> {
        let mut n: Vec<String> = match client.need("movie.bin", 10) {
            Ok(o) => o.owners.into_iter().map(|o| o.node).collect(),
            Err(p2ptorrent::Error::NoOwners { .. }) => Vec::new(),
            Err(e) => panic!("{e}"),
        };
        n.sort();
        n
    };
    assert_eq!(names(&client), ["A", "B"]);
    // SIGINT and SIGTERM end a node cleanly, and it tells the tracker it left.
    a.signal("-INT");
    assert!(a.wait(PATIENCE).success());
    b.signal("-TERM");
    assert!(b.wait(PATIENCE).success());
    assert!(names(&client).is_empty());
    tracker.signal("-TERM");
    assert!(tracker.wait(PATIENCE).success());
}

#[test]
fn exit_when_done_fails_when_nobody_has_the_file() {
    let work = tempfile::tempdir().unwrap();
    let mut tracker = Proc::start(
        TRACKER,
        &["--listen", "127.0.0.1:0"],
        work.path(),
        Stdio::null(),
    );
    let line = tracker.line_with("listening on");
    let addr = line.split_whitespace().nth(3).unwrap().to_string();
    let args = [
        "-n",
        "C",
        "-p",
        "0",
        "--tracker",
        &addr,
        "--download",
        "nothing.bin",
        "--exit-when-done",
        "--no-prompt",
    ];
    let c = Proc::start(NODE, &args, work.path(), Stdio::null());
    assert_eq!(c.wait(PATIENCE).code(), Some(1));
    tracker.signal("-TERM");
    assert!(tracker.wait(PATIENCE).success());
}

#[test]
fn a_private_network_through_the_binaries() {
    use std::os::unix::fs::PermissionsExt;

    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    let made = std::process::Command::new(NODE)
        .args(["--make-key", "net.key"])
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(made.status.success());
    let said = String::from_utf8_lossy(&made.stdout);
    let fingerprint = said.split("fingerprint ").nth(1).unwrap()[..16].to_string();
    let meta = std::fs::metadata(cwd.join("net.key")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 32);

    let mut tracker = Proc::start(
        TRACKER,
        &["--listen", "127.0.0.1:0", "--key", "net.key"],
        cwd,
        Stdio::null(),
    );
    let line = tracker.line_with("listening on");
    assert!(
        line.contains(&format!("private network, key {fingerprint}")),
        "{line}"
    );
    let addr: SocketAddr = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    let tracker_arg = addr.to_string();

    std::fs::create_dir_all(cwd.join("node_files/A")).unwrap();
    let original = cwd.join("node_files/A/f.bin");
    write_random(&original, 65, 5_000_000);
    let args = node_args(
        "A",
        &tracker_arg,
        &["--key", "net.key", "--upload", "f.bin"],
    );
    let mut a = Proc::start(NODE, &args, cwd, Stdio::null());
    a.line_with("sharing f.bin");

    let args = node_args(
        "B",
        &tracker_arg,
        &[
            "--key",
            "net.key",
            "--download",
            "f.bin",
            "--exit-when-done",
        ],
    );
    assert!(
        Proc::start(NODE, &args, cwd, Stdio::null())
            .wait(PATIENCE)
            .success()
    );
    assert_same_file(&original, &cwd.join("node_files/B/f.bin"));

    // Without the key: refused, with a clear message.
    let args = node_args(
        "C",
        &tracker_arg,
        &["--download", "f.bin", "--exit-when-done"],
    );
    let c = std::process::Command::new(NODE)
        .args(&args)
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(!c.status.success());
    let err = String::from_utf8_lossy(&c.stderr);
    assert!(
        err.contains(&format!(
            "tracker {addr} requires a network key, and this side has none"
        )),
        "{err}"
    );
    assert!(!cwd.join("node_files/C/f.bin").exists());

    // A key file others can read is refused.
    std::fs::set_permissions(cwd.join("net.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let loose = std::process::Command::new(TRACKER)
        .args(["--listen", "127.0.0.1:0", "--key", "net.key"])
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(!loose.status.success());
    assert!(String::from_utf8_lossy(&loose.stderr).contains("chmod 600"));
}

/// A tracker whose output nobody reads any more (its terminal closed, its pipe's reader
/// gone) keeps tracking: printing its table on a broken pipe must not kill it.
#[test]
fn a_tracker_whose_stdout_is_gone_keeps_tracking() {
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    let (mut tracker, addr) = tracker_process(cwd, 1);
    tracker.close_stdout();
    let taddr = addr.to_string();
    std::fs::create_dir_all(cwd.join("node_files/A")).unwrap();
    let original = cwd.join("node_files/A/f.bin");
    write_random(&original, 12, 1 << 20);
    // A's announce changes the table, which the tracker prints into the closed pipe.
    let mut a = Proc::start(
        NODE_BIN,
        &node_args("A", &taddr, &["--upload", "f.bin"]),
        cwd,
        Stdio::null(),
    );
    a.line_with("sharing f.bin");
    let b = Proc::start(
        NODE_BIN,
        &node_args("B", &taddr, &["--download", "f.bin", "--exit-when-done"]),
        cwd,
        Stdio::null(),
    );
    assert!(b.wait(Duration::from_secs(30)).success());
    assert_same_file(&original, &cwd.join("node_files/B/f.bin"));
    // Stopping prints once more; the exit status says whether any print killed it.
    tracker.signal("-TERM");
    let status = tracker.wait(Duration::from_secs(10));
    assert!(
        status.success(),
        "the tracker died writing to a closed stdout: {status}"
    );
}

/// Node A sharing a 16 MiB `movie.bin` of seed `seed` at 4 MiB/s, so a download of it is
/// still running when it is steered; returns it, the original's path and its `sharing`
/// line.
fn capped_seeder(
    cwd: &std::path::Path,
    tracker_arg: &str,
    seed: u64,
) -> (Proc, std::path::PathBuf, String) {
    std::fs::create_dir_all(cwd.join("node_files/A")).unwrap();
    let original = cwd.join("node_files/A/movie.bin");
    write_random(&original, seed, 16 * 1024 * 1024);
    let a_args = node_args(
        "A",
        tracker_arg,
        &["--upload", "movie.bin", "--upload-limit", "4MiB"],
    );
    let mut a = Proc::start(NODE, &a_args, cwd, Stdio::null());
    let shared = a.line_with("sharing movie.bin");
    (a, original, shared)
}

/// At the prompt: `share` prints the full content id, `search` shows it, `cancel` stops a
/// download and keeps its `.part`, and `download --content ID` resumes it byte-exact.
#[test]
fn cancel_and_resume_at_the_prompt_with_the_content_named() {
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    let (_tracker, addr) = tracker_process(cwd, 2);
    let tracker_arg = addr.to_string();
    let (a, original, shared) = capped_seeder(cwd, &tracker_arg, 65);
    let content = shared
        .split("content ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_default()
        .to_string();
    assert_eq!(content.len(), 64, "{shared}");

    let b_args = [
        "-n",
        "B",
        "-p",
        "0",
        "--bind",
        "127.0.0.1",
        "--tracker",
        &tracker_arg,
        "-v",
    ];
    let mut b = Proc::start(NODE, &b_args, cwd, Stdio::piped());
    let mut stdin = b.child.stdin.take().unwrap();
    writeln!(stdin, "search movie").unwrap();
    let id_line = b.line_with("content ");
    assert!(id_line.contains(&content), "{id_line}");
    writeln!(stdin, "download movie.bin").unwrap();
    b.line_with("received piece");
    writeln!(stdin, "cancel movie.bin").unwrap();
    let cancelled = b.line_with("cancelled");
    assert!(cancelled.contains("kept"), "{cancelled}");
    assert!(cwd.join("node_files/B/movie.bin.part").exists());
    writeln!(stdin, "download --content {content} movie.bin").unwrap();
    let done = b.line_with("downloaded movie.bin");
    assert!(done.contains("resumed"), "{done}");
    writeln!(stdin, "exit").unwrap();
    assert!(b.wait(PATIENCE).success());
    drop(stdin);
    assert_same_file(&original, &cwd.join("node_files/B/movie.bin"));
    assert!(part_files(&cwd.join("node_files/B")).is_empty());
    a.signal("-TERM");
    assert!(a.wait(PATIENCE).success());
}

/// Host names where addresses go: `--tracker localhost:PORT`, `--bind localhost`.
#[test]
fn host_names_are_resolved() {
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    let (_tracker, addr) = tracker_process(cwd, 2);
    std::fs::create_dir_all(cwd.join("node_files/A")).unwrap();
    write_random(&cwd.join("node_files/A/f.bin"), 66, 1000);
    let by_name = format!("localhost:{}", addr.port());
    let args = [
        "-n",
        "A",
        "-p",
        "0",
        "--bind",
        "localhost",
        "--tracker",
        &by_name,
        "--upload",
        "f.bin",
        "--no-prompt",
    ];
    let mut a = Proc::start(NODE, &args, cwd, Stdio::null());
    a.line_with("sharing f.bin");
    let owners = TrackerClient::new(addr).need("f.bin", 10).unwrap().owners;
    assert_eq!(owners.len(), 1);
    assert!(owners[0].addr.ip().is_loopback());
    a.signal("-TERM");
    assert!(a.wait(PATIENCE).success());
}

/// A share given on the command line that cannot start fails the process at once.
#[test]
fn a_share_that_cannot_start_fails_the_node() {
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    let (_tracker, addr) = tracker_process(cwd, 2);
    let tracker_arg = addr.to_string();
    let args = node_args("A", &tracker_arg, &["--upload", "missing.bin"]);
    let a = Proc::start(NODE, &args, cwd, Stdio::null());
    let status = a.wait(PATIENCE);
    assert!(!status.success(), "{status:?}");
}

/// `--upload` with a path shares the file where it lies: nothing is copied into the
/// node's folder, and another node downloads it byte-exact.
#[test]
fn a_file_outside_the_folder_is_shared_in_place() {
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    let (_tracker, addr) = tracker_process(cwd, 2);
    std::fs::create_dir_all(cwd.join("elsewhere")).unwrap();
    let original = cwd.join("elsewhere/movie.bin");
    write_random(&original, 67, 3 * 1024 * 1024 + 5);
    let tracker_arg = addr.to_string();
    let args = node_args("A", &tracker_arg, &["--upload", "elsewhere/movie.bin"]);
    let mut a = Proc::start(NODE, &args, cwd, Stdio::null());
    a.line_with("sharing movie.bin");
    assert!(
        !cwd.join("node_files/A/movie.bin").exists(),
        "nothing is copied"
    );

    let b = start_node("B", addr);
    let report = b.node.download("movie.bin").unwrap().wait().unwrap();
    assert_same_file(&report.path, &original);
    b.shutdown();
    a.signal("-TERM");
    assert!(a.wait(PATIENCE).success());
}

/// `pause FILE` at the prompt lets the owners go and `status` says so; `resume FILE`
/// takes it up again and it finishes byte-exact.
#[test]
fn pause_and_resume_at_the_prompt() {
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    let (_tracker, addr) = tracker_process(cwd, 2);
    let tracker_arg = addr.to_string();
    let (a, original, _) = capped_seeder(cwd, &tracker_arg, 68);
    let b_args = node_args("B", &tracker_arg, &["-v"]);
    let b_args: Vec<&str> = b_args.into_iter().filter(|a| *a != "--no-prompt").collect();
    let mut b = Proc::start(NODE, &b_args, cwd, Stdio::piped());
    let mut stdin = b.child.stdin.take().unwrap();
    writeln!(stdin, "download movie.bin").unwrap();
    b.line_with("received piece");
    writeln!(stdin, "pause movie.bin").unwrap();
    let paused = b.line_with("paused movie.bin");
    assert!(paused.contains("resume movie.bin"), "{paused}");
    writeln!(stdin, "status").unwrap();
    let status = b.line_with("downloading movie.bin");
    assert!(status.contains("(paused)"), "{status}");
    writeln!(stdin, "resume movie.bin").unwrap();
    b.line_with("resumed movie.bin");
    b.line_with("downloaded movie.bin");
    writeln!(stdin, "exit").unwrap();
    assert!(b.wait(PATIENCE).success());
    drop(stdin);
    assert_same_file(&original, &cwd.join("node_files/B/movie.bin"));
    a.signal("-TERM");
    assert!(a.wait(PATIENCE).success());
}

/// At a terminal, progress is drawn as the person at it needs: with `--no-prompt`, a bar
/// with rate and ETA (redrawn in place); at the prompt, where a redrawn bar would wipe what
/// is typed, plain lines at each tenth of the file, and no redrawing at all. (`script`
/// gives the node a terminal.)
#[test]
fn progress_at_a_terminal_is_a_bar_without_a_prompt_and_lines_with_one() {
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    let (_tracker, addr) = tracker_process(cwd, 2);
    let tracker_arg = addr.to_string();
    let (a, _original, _) = capped_seeder(cwd, &tracker_arg, 66);
    let run = |name: &str, extra: &str| -> String {
        let line = format!(
            "{NODE} -n {name} -p 0 --bind 127.0.0.1 --tracker {tracker_arg} \
             --download movie.bin --exit-when-done {extra}"
        );
        let out = Command::new("timeout")
            .args(["60", "script", "-qefc", &line, "/dev/null"])
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .output()
            .expect("script (bsdutils) runs the node at a terminal");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let bar = run("B", "--no-prompt");
    assert!(bar.contains("downloaded movie.bin"), "{bar}");
    assert!(
        bar.contains("\x1b[2K"),
        "the bar is redrawn in place: {bar:?}"
    );
    assert!(bar.contains("MiB/s, ETA"), "{bar:?}");

    let lines = run("C", "");
    assert!(lines.contains("downloaded movie.bin"), "{lines}");
    assert!(
        !lines.contains("\x1b["),
        "nothing is redrawn at the prompt: {lines:?}"
    );
    let tenths: Vec<&str> = lines
        .lines()
        .filter(|l| l.contains("% of 16.0 MiB"))
        .collect();
    assert!(tenths.len() >= 5, "a line per tenth: {lines}");
    assert!(tenths.iter().all(|l| l.contains("MiB/s")), "{tenths:?}");
    a.signal("-TERM");
    assert!(a.wait(PATIENCE).success());
}
