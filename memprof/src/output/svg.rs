//! Flamegraph SVGs rendered by inferno.

use std::path::Path;

use inferno::flamegraph::color::{BasicPalette, Palette};
use inferno::flamegraph::{from_lines, Options};

use super::{write_atomic, OutputError};

/// Message shown in place of a flamegraph when there is nothing to draw.
const EMPTY_MESSAGE: &str = "no outstanding allocations";

/// Renders folded lines (see [`super::folded_lines`]) as a flamegraph SVG, deterministically.
/// Without lines, returns a small SVG that says so.
pub fn flamegraph_svg(
    folded: &[String],
    title: &str,
    subtitle: Option<&str>,
) -> Result<Vec<u8>, OutputError> {
    if folded.iter().all(|l| l.trim().is_empty()) {
        return Ok(empty_svg(title, subtitle).into_bytes());
    }
    let mut opt = Options::default();
    opt.colors = Palette::Basic(BasicPalette::Mem);
    opt.hash = true;
    opt.deterministic = true;
    opt.count_name = "bytes".to_string();
    opt.title = title.to_string();
    opt.subtitle = subtitle.map(str::to_string);
    let mut out = Vec::new();
    from_lines(&mut opt, folded.iter().map(String::as_str), &mut out)
        .map_err(OutputError::Flamegraph)?;
    Ok(out)
}

/// Writes [`flamegraph_svg`] to `path` (atomically).
pub fn write_flamegraph(
    path: &Path,
    folded: &[String],
    title: &str,
    subtitle: Option<&str>,
) -> Result<(), OutputError> {
    write_atomic(path, &flamegraph_svg(folded, title, subtitle)?)
}

pub(crate) fn empty_svg(title: &str, subtitle: Option<&str>) -> String {
    let subtitle = subtitle
        .map(|s| {
            format!(
                "<text x=\"50%\" y=\"48\" text-anchor=\"middle\">{}</text>\n",
                xml_escape(s)
            )
        })
        .unwrap_or_default();
    format!(
        r##"<?xml version="1.0" standalone="no"?>
<svg version="1.1" width="1200" height="110" viewBox="0 0 1200 110" xmlns="http://www.w3.org/2000/svg">
<rect x="0" y="0" width="100%" height="100%" fill="#eef2ee"/>
<g font-family="Verdana, sans-serif" font-size="12" fill="rgb(0,0,0)">
<text x="50%" y="24" text-anchor="middle" font-size="17">{}</text>
{}<text x="50%" y="80" text-anchor="middle">{}</text>
</g>
</svg>
"##,
        xml_escape(title),
        subtitle,
        EMPTY_MESSAGE
    )
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_input_gives_svg_with_title() {
        let svg =
            String::from_utf8(flamegraph_svg(&[], "a <b> & c", Some("sub")).unwrap()).unwrap();
        assert!(svg.contains("<svg"));
        assert!(svg.contains("a &lt;b&gt; &amp; c"));
        assert!(svg.contains("sub"));
        assert!(svg.contains(EMPTY_MESSAGE));
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn output_is_deterministic() {
        let lines = vec!["main;a;leak 100".to_string(), "main;b 50".to_string()];
        let one = flamegraph_svg(&lines, "t", None).unwrap();
        let two = flamegraph_svg(&lines, "t", None).unwrap();
        assert_eq!(one, two);
        let svg = String::from_utf8(one).unwrap();
        assert!(svg.contains("bytes"));
        assert!(svg.contains("leak"));
    }
}
