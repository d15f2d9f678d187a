//! Differential flamegraphs: what grew between the first and the last snapshot.
//!
//! Frame widths are the bytes outstanding at the last snapshot; the colour is the change since
//! the first one (red: grew, blue: shrank, white: unchanged), as inferno draws two-column
//! (`stack before after`) input.

use std::path::Path;

use inferno::differential;
use inferno::flamegraph::color::BackgroundColor;
use inferno::flamegraph::{from_lines, Options};

use super::svg::empty_svg;
use super::{folded_bytes, write_atomic, OutputError};

/// Subtitle explaining the colours.
const SUBTITLE: &str =
    "width: bytes at the last snapshot — red: grew since the first, blue: shrank";

/// Renders a differential flamegraph SVG from the folded lines (see [`super::folded_lines`]) of
/// the first and the last snapshot, deterministically. When the last snapshot holds nothing,
/// returns the same small placeholder SVG as [`super::flamegraph_svg`].
pub fn growth_svg(first: &[String], last: &[String], title: &str) -> Result<Vec<u8>, OutputError> {
    let first = non_blank(first);
    let last = non_blank(last);
    if last.is_empty() {
        return Ok(empty_svg(title, Some(SUBTITLE)).into_bytes());
    }

    let mut diff = Vec::new();
    differential::from_readers(
        differential::Options::default(),
        folded_bytes(&first).as_slice(),
        folded_bytes(&last).as_slice(),
        &mut diff,
    )
    .map_err(OutputError::Flamegraph)?;
    let diff = String::from_utf8_lossy(&diff);
    // `from_readers` writes in hash-map order; sort so the input to the renderer is stable.
    let mut lines: Vec<&str> = diff.lines().collect();
    lines.sort_unstable();

    let mut opt = Options::default();
    opt.bgcolors = Some(BackgroundColor::Grey);
    opt.deterministic = true;
    opt.count_name = "bytes".to_string();
    opt.title = title.to_string();
    opt.subtitle = Some(SUBTITLE.to_string());
    let mut out = Vec::new();
    from_lines(&mut opt, lines, &mut out).map_err(OutputError::Flamegraph)?;
    Ok(out)
}

/// Writes [`growth_svg`] to `path` (atomically).
pub fn write_growth_svg(
    path: &Path,
    first: &[String],
    last: &[String],
    title: &str,
) -> Result<(), OutputError> {
    write_atomic(path, &growth_svg(first, last, title)?)
}

fn non_blank(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn grown_frames_are_red_and_shrunk_blue() {
        let first = lines(&["main;leak 100", "main;cache 400", "main;gone 50"]);
        let last = lines(&["main;leak 1000", "main;cache 200", "main;new 10"]);
        let svg = String::from_utf8(growth_svg(&first, &last, "grew").unwrap()).unwrap();
        assert!(svg.contains("bytes"));
        // leak: +900 of 1210 bytes; cache: -200.
        assert!(svg.contains("leak (1,000 bytes, 82.64%; +74.38%)"), "{svg}");
        assert!(svg.contains("cache (200 bytes, 16.53%; -16.53%)"), "{svg}");
        // The largest growth is the deepest red; shrinking frames are blue.
        assert!(svg.contains("fill=\"rgb(255,100,100)\""));
        assert!(svg.contains("fill=\"rgb(216,216,255)\""), "{svg}");
        assert!(!svg.contains(">gone<"));
    }

    #[test]
    fn output_is_deterministic() {
        let first = lines(&["a;b 1", "a;c 2", "a;d 3", "x 4"]);
        let last = lines(&["a;b 5", "a;c 2", "a;e 3", "x 1", "y 9"]);
        let one = growth_svg(&first, &last, "t").unwrap();
        for _ in 0..5 {
            assert_eq!(growth_svg(&first, &last, "t").unwrap(), one);
        }
    }

    #[test]
    fn empty_last_gives_placeholder() {
        let svg = String::from_utf8(growth_svg(&lines(&["a 1"]), &[], "t & u").unwrap()).unwrap();
        assert!(svg.contains("t &amp; u"));
        assert!(svg.contains("no outstanding allocations"));
        assert!(svg.trim_end().ends_with("</svg>"));
        let svg = String::from_utf8(growth_svg(&[], &lines(&[" "]), "t").unwrap()).unwrap();
        assert!(svg.contains("no outstanding allocations"));
    }

    #[test]
    fn empty_first_shows_everything_as_growth() {
        let svg = String::from_utf8(growth_svg(&[], &lines(&["main;x 10"]), "t").unwrap()).unwrap();
        assert!(svg.contains("x (10 bytes, 100.00%; +100.00%)"), "{svg}");
    }
}
