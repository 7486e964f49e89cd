//! Values from events, upstream answers and the store, made safe for a terminal. Event
//! types, file ids, task ids, error texts and response excerpts come from outside: printed
//! as they are, an escape sequence could retitle the terminal, clear the screen or rewrite
//! earlier lines, and a newline could forge a line. Human output passes every such value
//! through [`escape`] (JSON output stays exact); tables pad with [`pad`], which has no width
//! limit (`format!("{:<w$}")` panics at 65,536).

use std::borrow::Cow;
use std::fmt::Write as _;

/// `s` with every control character (C0 including CR, LF and TAB, DEL, C1) and every
/// bidirectional override written as a Rust-style escape: `\n`, `\r`, `\t`, `\x1b`,
/// `\u{9b}`, `\u{202e}`. Everything else is unchanged.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && needs_escape(c) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// [`escape`] line by line: a multi-line block printed by us (pretty JSON, an excerpt)
/// keeps its line breaks, and nothing inside a line can move the cursor.
pub fn escape_lines(s: &str) -> String {
    s.lines().map(|line| escape(line)).collect::<Vec<_>>().join("\n")
}

/// `s` padded with spaces to `width` characters (never cut).
pub fn pad(s: &str, width: usize) -> String {
    let len = s.chars().count();
    let mut out = String::with_capacity(s.len() + width.saturating_sub(len));
    out.push_str(s);
    out.extend(std::iter::repeat_n(' ', width.saturating_sub(len)));
    out
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert!(matches!(escape("NewFileUpload 文件"), Cow::Borrowed(_)));
        assert_eq!(escape("a\x1b]0;owned\x07b"), "a\\x1b]0;owned\\x07b");
        assert_eq!(escape("x\r\ny\tz\x7f"), "x\\r\\ny\\tz\\x7f");
        assert_eq!(escape("\u{9b}2J\u{202e}txt"), "\\u{9b}2J\\u{202e}txt");
        assert_eq!(escape_lines("{\n  \"a\": \"\x1b[2J\"\n}"), "{\n  \"a\": \"\\x1b[2J\"\n}");
    }

    #[test]
    fn padding_has_no_width_limit() {
        assert_eq!(pad("ab", 4), "ab  ");
        assert_eq!(pad("abcd", 2), "abcd");
        assert_eq!(pad("", 70_000).len(), 70_000);
    }
}
