//! Printing for a terminal or a pipe whose reader may go away, and text a file or a guest chose.
//!
//! A closed stdout (`cairn inspect FILE | head`) is not an error: a command that only prints
//! stops at once and exits 0 without a word (no panic, no "Broken pipe" message, and no 141 that
//! would fail a `set -o pipefail` script); a command with other work (`verify` of a folder,
//! `run`) drops the rest of its output, finishes, and exits with the status its work earned.
//! Text cairn did not write itself (dict keys and strings from a checkpoint, messages from a
//! guest) has its control characters escaped before it reaches a terminal, so it cannot move
//! the cursor, clear the screen or forge a line that reads like cairn's own.

use std::borrow::Cow;
use std::fmt;
use std::io::{self, Write};

/// True when `err` (or any cause) is a write to a pipe whose reader has gone.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// Lines to stdout that are dropped once the reader has gone, for commands whose work matters
/// more than their output.
pub struct Lines {
    closed: bool,
}

impl Lines {
    /// Print to the process's stdout.
    pub fn stdout() -> Lines {
        Lines { closed: false }
    }

    /// Print one line; after a failed write (a closed pipe, a full disk), nothing more.
    pub fn line(&mut self, args: fmt::Arguments<'_>) {
        if self.closed {
            return;
        }
        let mut out = io::stdout().lock();
        if out
            .write_fmt(args)
            .and_then(|()| out.write_all(b"\n"))
            .is_err()
        {
            self.closed = true;
        }
    }
}

/// `s` with every control character (C0, DEL, C1: ESC, BEL, CR, backspace, ...) written as an
/// escape (`\x1b`, `\r`, `\u{9b}`), so it prints as one inert line.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && c.is_control() => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("plain ü"), "plain ü");
        assert_eq!(
            printable("a\x1b[2J\rcairn: ok\x07\u{9b}"),
            "a\\x1b[2J\\rcairn: ok\\x07\\u{9b}"
        );
    }

    #[test]
    fn broken_pipes_are_found_in_the_chain() {
        let e = anyhow::Error::from(io::Error::from(io::ErrorKind::BrokenPipe)).context("printing");
        assert!(is_broken_pipe(&e));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }
}
