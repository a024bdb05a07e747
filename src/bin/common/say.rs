//! Printing for the binaries that never dies on a closed stdout or stderr: a process whose
//! output is no longer read (its terminal closed, its pipe's reader gone) keeps serving
//! rather than panicking on a broken pipe, as `println!` would.

/// Prints a line to stdout, ignoring a closed stdout.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Prints to stdout without a newline, ignoring a closed stdout.
#[allow(unused_macros)] // the tracker's table; the node prints whole lines
macro_rules! say_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

/// Prints a line to stderr, ignoring a closed stderr.
macro_rules! esay {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
