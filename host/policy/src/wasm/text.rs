//! Guest text: everything a component says that cairn relays — its `err` messages from `init`
//! and `filter`, what it printed (logs, a panic message, a traceback), the names of its
//! functions in a backtrace, the keys it returned quoted in an error, and any wasmtime error
//! that quotes its names. All of it goes through [`one_line`] here and nowhere else.
//!
//! Two dangers, two rules:
//!
//! - **Forgery.** A guest that writes `ESC [2K CR` erases the line it is on, and can then print
//!   `cairn: all checkpoints verified`; BEL rings, `ESC ]0;...BEL` retitles the terminal, a
//!   newline inside a message starts a line that is not prefixed with the policy's name. So every
//!   control character (C0 including newline, CR and tab, DEL, C1) and every Unicode
//!   bidirectional override or isolate (which reorder what a terminal shows) is written as a
//!   visible escape (`\n`, `\r`, `\t`, `\u{1b}`): one message stays one line, and every line that
//!   carries guest text starts with cairn's own `[policy NAME]` or `policy NAME:` prefix.
//! - **Volume.** Each piece is cut to a length and says what was cut (`… 10 MiB more cut`), and a
//!   per-run [`TextBudget`] bounds what one policy can make cairn print over a whole run (a
//!   chatty component called at every batch, or an `err` message logged at every save).

use std::fmt::Write;

/// Bytes of guest text kept from one quoted key or name (in a path of an invalid answer, a
/// function name in a backtrace).
pub const MAX_NAME_BYTES: usize = 200;

/// `s` as one line of at most about `max` bytes: control characters escaped (see the module
/// doc), surrounding whitespace trimmed, and, when cut, `… N more cut` saying how much of the
/// original was left out.
pub fn one_line(s: &str, max: usize) -> String {
    let s = s.trim();
    let mut out = String::with_capacity(s.len().min(max) + 32);
    for (at, c) in s.char_indices() {
        let before = out.len();
        escape_into(c, &mut out);
        if out.len() > max {
            out.truncate(before);
            let _ = write!(out, "… {} more cut", human_bytes((s.len() - at) as u64));
            return out;
        }
    }
    out
}

/// The last `max` bytes of `s` as [`one_line`] would show them (the end of a traceback is
/// where the error is), saying how much came before.
pub fn tail_line(s: &str, max: usize) -> String {
    let s = s.trim();
    if s.len() <= max {
        return one_line(s, max);
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    // Escapes lengthen the text, so the tail is cut again from the front if need be.
    let mut body = one_line(&s[start..], usize::MAX);
    let mut cut = start;
    if body.len() > max {
        let mut drop = body.len() - max;
        while !body.is_char_boundary(drop) {
            drop += 1;
        }
        body.drain(..drop);
        cut += drop;
    }
    format!("{} cut … {body}", human_bytes(cut as u64))
}

/// Write `c`, escaped if it could move the cursor, ring, retitle or reorder.
fn escape_into(c: char, out: &mut String) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if is_control(c) => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

/// C0, DEL, C1, the line and paragraph separators, and the bidirectional formatting characters
/// (embeddings, overrides, isolates, marks).
fn is_control(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
                | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// What one policy may make cairn print over a whole run: every log line and every error
/// message carrying its text is charged here; once the budget is spent, its output is dropped
/// (said once) and its messages are replaced by a note, so a run's log stays bounded however
/// often the policy is called.
#[derive(Debug)]
pub struct TextBudget {
    left: u64,
    limit: u64,
    dropped: u64,
    announced: bool,
}

impl TextBudget {
    /// A budget of `limit` bytes; 0 means unlimited.
    pub fn new(limit: u64) -> TextBudget {
        TextBudget {
            left: if limit == 0 { u64::MAX } else { limit },
            limit,
            dropped: 0,
            announced: false,
        }
    }

    /// Bytes still allowed.
    pub fn left(&self) -> u64 {
        self.left
    }

    /// Bytes of guest text dropped because the budget was spent.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Charge `n` bytes if they fit; false (and counted as dropped) if not.
    pub fn charge(&mut self, n: usize) -> bool {
        let n = n as u64;
        if n <= self.left {
            self.left -= n;
            true
        } else {
            self.left = 0;
            self.dropped = self.dropped.saturating_add(n);
            false
        }
    }

    /// The one line that says the budget is spent, the first time it is (then `None`).
    pub fn exhausted_notice(&mut self) -> Option<String> {
        if self.left > 0 || self.announced {
            return None;
        }
        self.announced = true;
        Some(format!(
            "reached [sandbox] max_log_bytes_per_run ({}): the rest of its output this run is dropped and its messages are not shown",
            human_bytes(self.limit)
        ))
    }

    /// `line` (guest text already made one line from `original` bytes) for an error or
    /// warning, charged; once the budget is spent, a note saying how long it was instead.
    pub fn admit(&mut self, line: String, original: usize) -> String {
        if line.len() as u64 <= self.left {
            self.left -= line.len() as u64;
            line
        } else {
            self.left = 0;
            self.dropped = self.dropped.saturating_add(original as u64);
            format!(
                "({} not shown: over [sandbox] max_log_bytes_per_run)",
                human_bytes(original as u64)
            )
        }
    }
}

/// `n` bytes the way a person writes them (`17 bytes`, `1.5 KiB`, `10 MiB`).
pub use cairn_format::human_bytes;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_become_visible_escapes() {
        let forged = "\x1b[2K\r\x1b[1Acairn: all checkpoints verified\x07\r\n\x1b]0;pwned\x07";
        let line = one_line(forged, 1 << 10);
        assert_eq!(
            line,
            "\\u{1b}[2K\\r\\u{1b}[1Acairn: all checkpoints verified\\u{7}\\r\\n\\u{1b}]0;pwned\\u{7}"
        );
        assert!(!line.chars().any(is_control), "{line}");
        assert_eq!(one_line("a\tb\u{7f}c\u{9b}d", 64), "a\\tb\\u{7f}c\\u{9b}d");
        assert_eq!(one_line("x\u{202e}y\u{2066}z", 64), "x\\u{202e}y\\u{2066}z");
        assert_eq!(
            one_line("  plain text, ünïcode ✓  ", 64),
            "plain text, ünïcode ✓"
        );
    }

    #[test]
    fn long_text_is_cut_and_says_how_much() {
        let big = "x".repeat(10 << 20);
        let line = one_line(&big, 100);
        assert!(line.starts_with(&"x".repeat(100)), "{line}");
        assert!(line.ends_with("… 10.0 MiB more cut"), "{line}");
        assert!(line.len() < 130);
        // Escapes count at their escaped length, and never split.
        let esc = one_line(&"\x1b".repeat(100), 14);
        assert!(esc.starts_with("\\u{1b}\\u{1b}…"), "{esc}");
        // Multi-byte characters are never split.
        assert!(one_line(&"é".repeat(100), 5).starts_with("éé…"));
    }

    #[test]
    fn a_tail_keeps_the_end() {
        let s = format!("{}\nthe error\n", "a".repeat(5000));
        let t = tail_line(&s, 64);
        assert!(t.ends_with("a\\nthe error"), "{t}");
        assert!(t.starts_with("4.") && t.contains("KiB cut … "), "{t}");
        assert_eq!(tail_line("short\n", 64), "short");
    }

    #[test]
    fn the_budget_is_spent_once_and_said_once() {
        let mut b = TextBudget::new(100);
        assert!(b.charge(60));
        assert_eq!(b.exhausted_notice(), None);
        assert_eq!(b.admit(one_line("hello", 50), 5), "hello");
        assert!(!b.charge(60));
        assert_eq!(b.left(), 0);
        assert!(b.exhausted_notice().unwrap().contains("100 bytes"));
        assert_eq!(b.exhausted_notice(), None);
        let m = b.admit(one_line(&"y".repeat(3000), 50), 3000);
        assert_eq!(
            m,
            "(2.9 KiB not shown: over [sandbox] max_log_bytes_per_run)"
        );
        assert_eq!(b.dropped(), 60 + 3000);
        let mut free = TextBudget::new(0);
        assert!(free.charge(usize::MAX / 2));
    }
}
