//! The node's stdin commands, in the original's words and short.

use p2ptorrent::messages::ContentId;

/// One command typed at the prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Upload(String),
    /// A file, and the content to take if pinned.
    Download(String, Option<ContentId>),
    Search(String),
    /// Stop a running download, keeping what it has for a later resume.
    Cancel(String),
    Pause(String),
    Resume(String),
    Status,
    Help,
    Exit,
}

/// What the prompt prints for `help`.
pub const HELP: &str = "\
commands:
  torrent -setMode upload FILE    | upload FILE     share FILE from this node's folder, or
                                                    where it lies if it is a path (has a /)
  torrent -setMode download FILE  | download FILE   fetch FILE from the nodes that own it
  download --content ID FILE                        fetch only the content ID (as search shows)
  torrent -search PATTERN         | search PATTERN  list files matching PATTERN and their owners
  cancel FILE                                       stop downloading FILE; `download FILE` resumes it
  pause FILE                                        let FILE's owners go, keeping what it has
  resume FILE                                       take a paused download up again
  status                                            what this node shares and downloads
  torrent exit                    | exit            leave the network";

/// Parses one line; `Ok(None)` for a blank line, `Err` with a one-line message otherwise.
pub fn parse(line: &str) -> Result<Option<Command>, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let words: &[&str] = match words.as_slice() {
        ["torrent", rest @ ..] => rest,
        all => all,
    };
    let arg = |rest: &[&str], what: &str| match rest {
        [] => Err(format!("{what} needs a file name")),
        // File names may contain spaces: take the rest of the line as written.
        _ => Ok(rest.join(" ")),
    };
    let cmd = match words {
        [] => return Ok(None),
        ["-setMode", "upload", rest @ ..] | ["upload", rest @ ..] => {
            Command::Upload(arg(rest, "upload")?)
        }
        ["-setMode", "download", "--content", id, rest @ ..]
        | ["download", "--content", id, rest @ ..] => {
            let id = id.parse().map_err(|e| format!("download --content: {e}"))?;
            Command::Download(arg(rest, "download")?, Some(id))
        }
        ["-setMode", "download", rest @ ..] | ["download", rest @ ..] => {
            Command::Download(arg(rest, "download")?, None)
        }
        ["-setMode", mode, ..] => return Err(format!("unknown mode {mode:?}: upload or download")),
        ["-search", rest @ ..] | ["search", rest @ ..] => Command::Search(rest.join(" ")),
        ["cancel", rest @ ..] => Command::Cancel(arg(rest, "cancel")?),
        ["pause", rest @ ..] => Command::Pause(arg(rest, "pause")?),
        ["resume", rest @ ..] => Command::Resume(arg(rest, "resume")?),
        ["exit"] | ["-exit"] | ["quit"] => Command::Exit,
        ["status"] => Command::Status,
        ["help"] | ["-help"] | ["?"] => Command::Help,
        [other, ..] => return Err(format!("unknown command {other:?}; type help")),
    };
    Ok(Some(cmd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_original_words_and_the_short_ones_agree() {
        let up = Some(Command::Upload("movie.bin".into()));
        assert_eq!(parse("torrent -setMode upload movie.bin"), Ok(up.clone()));
        assert_eq!(parse("  upload   movie.bin "), Ok(up));
        let down = Some(Command::Download("a b.txt".into(), None));
        assert_eq!(parse("torrent -setMode download a b.txt"), Ok(down.clone()));
        assert_eq!(parse("download a b.txt"), Ok(down));
        let id = ContentId([0x5a; 32]);
        assert_eq!(
            parse(&format!("download --content {id} a b.txt")),
            Ok(Some(Command::Download("a b.txt".into(), Some(id))))
        );
        assert!(parse("download --content 12 a.txt").is_err());
        assert_eq!(
            parse("torrent -search mov"),
            Ok(Some(Command::Search("mov".into())))
        );
        assert_eq!(parse("search"), Ok(Some(Command::Search(String::new()))));
        assert_eq!(parse("torrent exit"), Ok(Some(Command::Exit)));
        assert_eq!(
            parse("cancel a b.txt"),
            Ok(Some(Command::Cancel("a b.txt".into())))
        );
        assert!(parse("cancel").is_err());
        assert_eq!(
            parse("pause f.bin"),
            Ok(Some(Command::Pause("f.bin".into())))
        );
        assert_eq!(
            parse("resume f.bin"),
            Ok(Some(Command::Resume("f.bin".into())))
        );
        assert_eq!(parse("exit"), Ok(Some(Command::Exit)));
        assert_eq!(parse("status"), Ok(Some(Command::Status)));
        assert_eq!(parse(""), Ok(None));
    }

    #[test]
    fn mistakes_get_a_one_line_error() {
        for bad in ["upload", "torrent -setMode seed x", "fly away", "torrent"] {
            let result = parse(bad);
            if bad == "torrent" {
                assert_eq!(result, Ok(None));
                continue;
            }
            let msg = result.unwrap_err();
            assert!(!msg.contains('\n'), "{msg}");
        }
    }
}
