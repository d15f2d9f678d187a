//! Inferno's folded-stack format: `root;caller;leaf 1234`.

use std::borrow::Cow;
use std::path::Path;

use super::{folded_bytes, write_atomic, OutputError};
use crate::report::StackReport;

/// The single frame written for a stack with no frames.
pub const NO_STACK: &str = "[no stack]";
/// Written in place of an empty frame name.
const UNKNOWN_FRAME: &str = "[unknown]";

/// Escapes a frame name for the folded format: `%` → `%25`, `;` → `%3B`; newlines and tabs
/// become spaces.
pub fn escape_frame(name: &str) -> Cow<'_, str> {
    if !name.contains(['%', ';', '\n', '\r', '\t']) {
        return Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        match c {
            '%' => out.push_str("%25"),
            ';' => out.push_str("%3B"),
            '\n' | '\r' | '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Reverses [`escape_frame`] (except for whitespace, which is not restored).
pub fn unescape_frame(name: &str) -> Cow<'_, str> {
    if !name.contains('%') {
        return Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(r) = tail.strip_prefix("%25") {
            out.push('%');
            rest = r;
        } else if let Some(r) = tail.strip_prefix("%3B") {
            out.push(';');
            rest = r;
        } else {
            out.push('%');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// One folded line per stack with outstanding bytes, sorted by bytes (largest first), then text.
pub fn folded_lines(stacks: &[StackReport]) -> Vec<String> {
    let mut lines: Vec<(u64, String)> = stacks
        .iter()
        .filter(|s| s.bytes > 0)
        .map(|s| (s.bytes, format!("{} {}", folded_stack(&s.frames), s.bytes)))
        .collect();
    lines.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    lines.into_iter().map(|(_, line)| line).collect()
}

/// Writes [`folded_lines`] to `path` (atomically), one line each.
pub fn write_folded(path: &Path, stacks: &[StackReport]) -> Result<(), OutputError> {
    write_atomic(path, &folded_bytes(&folded_lines(stacks)))
}

fn folded_stack(frames: &[String]) -> String {
    if frames.is_empty() {
        return NO_STACK.to_string();
    }
    let mut out = String::new();
    for (i, frame) in frames.iter().enumerate() {
        if i > 0 {
            out.push(';');
        }
        let escaped = escape_frame(frame);
        let name = escaped.trim();
        out.push_str(if name.is_empty() { UNKNOWN_FRAME } else { name });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(frames: &[&str], bytes: u64) -> StackReport {
        StackReport {
            frames: frames.iter().map(|f| f.to_string()).collect(),
            frame_details: Vec::new(),
            bytes,
            allocations: 1,
            total_bytes: bytes,
            total_allocations: 1,
            pids: vec![1],
            ..Default::default()
        }
    }

    #[test]
    fn escape_round_trips() {
        for name in [
            "plain",
            "a;b",
            "100%",
            "%3B;%25",
            "<[u8; 8] as Debug>::fmt",
            "",
        ] {
            let escaped = escape_frame(name);
            assert!(!escaped.contains(';'));
            assert_eq!(unescape_frame(&escaped), name);
        }
        assert!(matches!(escape_frame("plain"), Cow::Borrowed(_)));
        assert_eq!(escape_frame("a;b%"), "a%3Bb%25");
    }

    #[test]
    fn whitespace_becomes_spaces() {
        assert_eq!(escape_frame("a\nb\tc\r"), "a b c ");
    }

    #[test]
    fn lines_sorted_and_filtered() {
        let stacks = [
            stack(&["main", "b"], 10),
            stack(&["main", "a"], 10),
            stack(&["main", "big"], 100),
            stack(&["main", "zero"], 0),
            stack(&[], 5),
            stack(&["x;y", " "], 1),
        ];
        assert_eq!(
            folded_lines(&stacks),
            [
                "main;big 100",
                "main;a 10",
                "main;b 10",
                "[no stack] 5",
                "x%3By;[unknown] 1"
            ]
        );
    }
}
