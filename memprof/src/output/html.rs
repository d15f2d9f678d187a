//! `report.html`: one self-contained page (inline CSS and JS, no external URL) that opens
//! offline. The verdict comes first, then the top stacks, memory, OOM kills, the timeline, the
//! final and the growth flamegraphs, and a slider over the snapshot flamegraphs.
//!
//! Each inferno flamegraph carries its own script, so each is embedded as an
//! `<iframe srcdoc>` document of its own: they stay interactive without clashing.

use std::borrow::Cow;
use std::fmt::Write;
use std::path::Path;

use serde::Serialize;

use super::folded::NO_STACK;
use super::{human_bytes, human_duration, human_rate, write_atomic, OutputError};
use crate::report::{Report, StackReport};

/// Snapshots kept for the slider; more are thinned out evenly (the last always kept).
pub const MAX_SNAPSHOTS: usize = 60;
/// Rows of the stacks table.
const TOP_STACKS: usize = 20;
/// Frames shown per stack before the rest is folded away.
const SHOWN_FRAMES: usize = 6;
/// Iframe height when an SVG does not say its own.
const DEFAULT_FRAME_HEIGHT: u32 = 400;

/// One snapshot's flamegraph for the time slider.
#[derive(Clone, Debug)]
pub struct SnapshotSvg {
    pub index: u32,
    /// Seconds since profiling started.
    pub elapsed_s: f64,
    pub svg: String,
}

/// Renders the page. `flamegraph_svg` is the final flamegraph, `growth_svg` the differential
/// one (see [`super::growth_svg`]), `timeline_svg` the chart (see [`super::timeline_svg`]);
/// at most [`MAX_SNAPSHOTS`] of `snapshots` are kept.
pub fn report_html(
    report: &Report,
    flamegraph_svg: &str,
    growth_svg: &str,
    timeline_svg: &str,
    snapshots: &[SnapshotSvg],
) -> String {
    let verdict = Verdict::of(report);
    let mut page = String::with_capacity(
        64 * 1024
            + 2 * (flamegraph_svg.len() + growth_svg.len() + timeline_svg.len())
            + snapshots.iter().map(|s| s.svg.len() * 5 / 4).sum::<usize>(),
    );
    let _ = writeln!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>memprof {}: {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n\
         <header><h1>memprof report</h1><p class=\"meta\">{}</p></header>",
        escape(&report.target),
        escape(&verdict.headline),
        escape(&run_line(report)),
    );
    verdict.write(&mut page);
    functions_section(&mut page, report);
    stacks_section(&mut page, report);
    memory_section(&mut page, report);
    oom_section(&mut page, report);
    let _ = writeln!(
        page,
        "<section id=\"timeline\"><h2>Timeline</h2>\n<figure class=\"chart\">{}</figure></section>",
        strip_prolog(timeline_svg)
    );
    flame_section(
        &mut page,
        "flamegraph",
        "Outstanding allocations at the end",
        "Width: bytes still allocated. Click a frame to zoom, Ctrl+F to search.",
        flamegraph_svg,
    );
    flame_section(
        &mut page,
        "growth",
        "What grew (first → last snapshot)",
        "Width: bytes at the last snapshot. Red: grew since the first snapshot, blue: shrank.",
        growth_svg,
    );
    snapshots_section(&mut page, snapshots);
    details_section(&mut page, report);
    let summary = serde_json::to_string(report).expect("a Report always serializes to JSON");
    let _ = writeln!(
        page,
        "</main>\n<script type=\"application/json\" id=\"summary\">{}</script>\n\
         <script>{SCRIPT}</script>\n</body>\n</html>",
        script_json(&summary)
    );
    page
}

/// Writes [`report_html`] to `path` (atomically).
pub fn write_report_html(
    path: &Path,
    report: &Report,
    flamegraph_svg: &str,
    growth_svg: &str,
    timeline_svg: &str,
    snapshots: &[SnapshotSvg],
) -> Result<(), OutputError> {
    let html = report_html(report, flamegraph_svg, growth_svg, timeline_svg, snapshots);
    write_atomic(path, html.as_bytes())
}

/// Escapes text for XML and HTML, in content and in quoted attributes alike.
pub(crate) fn escape(s: &str) -> Cow<'_, str> {
    if !s.contains(['&', '<', '>', '"', '\'']) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Makes JSON text safe inside `<script>`: no `</` (which could close the element) and no
/// `<!--` (which changes how the browser looks for the end). Both only occur inside JSON
/// strings, where `<\/` and `\u003c` mean the same.
fn script_json(json: &str) -> String {
    json.replace("<!--", "\\u003c!--").replace("</", "<\\/")
}

/// An SVG without its `<?xml …?>` declaration and `<!DOCTYPE …>`, to place inside HTML.
fn strip_prolog(svg: &str) -> &str {
    let mut rest = svg.trim_start();
    loop {
        let skip = if rest.starts_with("<?") {
            rest.find("?>").map(|i| i + 2)
        } else if rest.starts_with("<!DOCTYPE") || rest.starts_with("<!doctype") {
            rest.find('>').map(|i| i + 1)
        } else {
            None
        };
        match skip {
            Some(i) => rest = rest[i..].trim_start(),
            None => return rest,
        }
    }
}

/// The `height` of an SVG's root element, in pixels.
fn svg_height(svg: &str) -> Option<u32> {
    let start = svg.find("<svg")?;
    let tag = &svg[start..start + svg[start..].find('>')?];
    let value = tag.split(" height=\"").nth(1)?.split('"').next()?;
    let height: f64 = value.trim_end_matches("px").parse().ok()?;
    (height.is_finite() && height > 0.0).then(|| height.ceil() as u32)
}

/// A whole HTML document showing `svg`, for an iframe's `srcdoc`. Inferno's script records the
/// zoom in the URL with `history.replaceState`, which an `about:srcdoc` document may not do:
/// that becomes a no-op.
fn frame_doc(svg: &str) -> String {
    format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\">\
         <style>html,body{{margin:0;background:#fff}}svg{{display:block;width:100%}}</style>\
         <script>history.replaceState=function(){{}};</script></head><body>{}</body></html>",
        strip_prolog(svg)
    )
}

/// A per-hour rate: `+3.2 MiB/h`.
fn rate_per_hour(bytes_per_s: f64) -> String {
    human_rate(bytes_per_s * 3600.0).replace("/s", "/h")
}

/// The `n` leaf-most frames, leaf first, joined by ` ← `.
fn short_stack(frames: &[String], n: usize) -> String {
    if frames.is_empty() {
        return NO_STACK.to_string();
    }
    let shown: Vec<&str> = frames.iter().rev().take(n).map(String::as_str).collect();
    shown.join(" ← ")
}

/// The CSS class for a stack class (unknown names get `unknown`).
fn class_css(class: &str) -> &'static str {
    match class {
        "leak" => "leak",
        "cache" => "cache",
        "churn" => "churn",
        _ => "unknown",
    }
}

fn run_line(report: &Report) -> String {
    let mut line = report.target.clone();
    if let Some(cgroup) = &report.cgroup {
        let _ = write!(line, " ({cgroup})");
    }
    if !report.started_at.is_empty() {
        let _ = write!(line, " · started {}", report.started_at);
    }
    let _ = write!(line, " · ran {}", human_duration(report.duration_s));
    if !report.end_reason.is_empty() {
        let _ = write!(line, " · ended by {}", report.end_reason);
    }
    line
}

#[derive(Debug, PartialEq)]
enum Tone {
    Leak,
    Warn,
    Ok,
}

/// The headline and the line under it.
struct Verdict {
    tone: Tone,
    headline: String,
    detail: String,
}

impl Verdict {
    fn of(report: &Report) -> Self {
        let mut leaks: Vec<&StackReport> =
            report.stacks.iter().filter(|s| s.class == "leak").collect();
        leaks.sort_by(|a, b| b.growth_bytes_per_s.total_cmp(&a.growth_bytes_per_s));
        let kills = match report.oom_kills.len() {
            0 => String::new(),
            1 => "1 process was OOM-killed (see below)".into(),
            n => format!("{n} processes were OOM-killed (see below)"),
        };
        let live = format!(
            "{} outstanding in {} allocations after {}",
            human_bytes(report.live_bytes),
            report.live_allocations,
            human_duration(report.duration_s)
        );

        // A runtime function (Python) that leaks names the leak better than the interpreter's
        // C functions under it.
        let leaking_function = report.functions.iter().find(|f| f.class == "leak" && f.leak_growth_bytes_per_s > 0.0);
        if let Some(top) = leaks.first() {
            let mut headline = match leaking_function {
                Some(f) if f.leak_growth_bytes_per_s >= top.growth_bytes_per_s * 0.5 => format!(
                    "LEAK: {} in {}{}",
                    rate_per_hour(f.leak_growth_bytes_per_s).trim_start_matches('+'),
                    f.function,
                    f.lines.first().map(|l| format!(", line {l}")).unwrap_or_default()
                ),
                _ => format!(
                    "LEAK: {} at {}",
                    rate_per_hour(top.growth_bytes_per_s).trim_start_matches('+'),
                    short_stack(&top.frames, 2)
                ),
            };
            if let Some(eta) = report.oom_eta_s {
                let _ = write!(headline, " — cgroup OOM in ~{}", human_duration(eta));
            }
            let mut detail = if leaks.len() > 1 {
                let total: f64 = leaks.iter().map(|s| s.growth_bytes_per_s).sum();
                format!(
                    "{} leaking stacks, together {}; {live}",
                    leaks.len(),
                    rate_per_hour(total)
                )
            } else {
                live
            };
            if !kills.is_empty() {
                let _ = write!(detail, "; {kills}");
            }
            return Verdict {
                tone: Tone::Leak,
                headline,
                detail,
            };
        }

        let mut counts = std::collections::BTreeMap::<&str, usize>::new();
        for s in report.stacks.iter().filter(|s| s.bytes > 0) {
            *counts.entry(class_css(&s.class)).or_default() += 1;
        }
        let classes: Vec<String> = counts.iter().map(|(c, n)| format!("{n} {c}")).collect();
        let mut detail = if classes.is_empty() {
            format!(
                "no outstanding allocations after {}",
                human_duration(report.duration_s)
            )
        } else {
            format!("{live}; stacks: {}", classes.join(", "))
        };
        if !kills.is_empty() {
            let _ = write!(detail, " — but {kills}");
        }
        Verdict {
            tone: if kills.is_empty() {
                Tone::Ok
            } else {
                Tone::Warn
            },
            headline: "No leak found".into(),
            detail,
        }
    }

    fn write(&self, page: &mut String) {
        let tone = match self.tone {
            Tone::Leak => "leak",
            Tone::Warn => "warn",
            Tone::Ok => "ok",
        };
        let _ = writeln!(
            page,
            "<section id=\"verdict\" class=\"verdict {tone}\">\
             <h2 id=\"headline\">{}</h2><p>{}</p></section>",
            escape(&self.headline),
            escape(&self.detail)
        );
    }
}

/// Live memory by Python or JS function (the innermost such frame of each stack), when the
/// target runs Python or Node.
fn functions_section(page: &mut String, report: &Report) {
    let functions: Vec<_> = report.functions.iter().filter(|f| f.bytes > 0).take(TOP_STACKS).collect();
    if functions.is_empty() {
        return;
    }
    let lang = report.runtimes.languages();
    page.push_str(&format!(
        "<section id=\"functions\"><h2>By {lang} function</h2>\n<p class=\"muted\">Each stack \
         counts for its innermost {lang} frame (Node's own modules left out): the code that was \
         running when the memory was allocated.</p><table class=\"stacks\"><thead><tr><th>class</th>\
         <th class=\"num\">live</th><th class=\"num\">allocations</th><th class=\"num\">growth</th>\
         <th class=\"num\">stacks</th><th>function</th><th>lines</th></tr></thead><tbody>\n"
    ));
    for f in functions {
        let class = if f.class.is_empty() { "unknown" } else { &f.class };
        let lines: Vec<String> = f.lines.iter().take(5).map(u32::to_string).collect();
        let _ = writeln!(
            page,
            "<tr><td><span class=\"badge {}\">{}</span></td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}<br><small>{}</small></td>\
             <td class=\"num\">{}</td><td class=\"frames\"><b>{}</b></td><td>{}</td></tr>",
            class_css(class),
            escape(class),
            human_bytes(f.bytes),
            f.allocations,
            human_rate(f.growth_bytes_per_s),
            rate_per_hour(f.growth_bytes_per_s),
            f.stacks,
            escape(&f.function),
            escape(&lines.join(", ")),
        );
    }
    page.push_str("</tbody></table></section>\n");
}

fn stacks_section(page: &mut String, report: &Report) {
    page.push_str("<section id=\"stacks\"><h2>Top stacks by outstanding bytes</h2>\n");
    let stacks: Vec<&StackReport> = report.stacks.iter().filter(|s| s.bytes > 0).collect();
    if stacks.is_empty() {
        page.push_str("<p class=\"muted\">No outstanding allocations.</p></section>\n");
        return;
    }
    page.push_str(
        "<table class=\"stacks\"><thead><tr><th>#</th><th>class</th><th class=\"num\">live</th>\
         <th class=\"num\">allocations</th><th class=\"num\">growth</th>\
         <th class=\"num\">confidence</th><th>stack (leaf first)</th></tr></thead><tbody>\n",
    );
    for (i, s) in stacks.iter().take(TOP_STACKS).enumerate() {
        let class = if s.class.is_empty() {
            "unknown"
        } else {
            &s.class
        };
        let _ = write!(
            page,
            "<tr><td class=\"num\">{}</td><td><span class=\"badge {}\">{}</span></td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}<br><small>{}</small></td><td class=\"num\">{:.0}%</td><td>",
            i + 1,
            class_css(class),
            escape(class),
            human_bytes(s.bytes),
            s.allocations,
            human_rate(s.growth_bytes_per_s),
            rate_per_hour(s.growth_bytes_per_s),
            (s.confidence * 100.0).clamp(0.0, 100.0),
        );
        frames_cell(page, &s.frames);
        page.push_str("</td></tr>\n");
    }
    page.push_str("</tbody></table>\n");
    if stacks.len() > TOP_STACKS {
        let _ = writeln!(
            page,
            "<p class=\"muted\">… {} more stacks in summary.json and the flamegraphs.</p>",
            stacks.len() - TOP_STACKS
        );
    }
    page.push_str("</section>\n");
}

/// Frames leaf first: the leaf in bold, the deeper callers folded away.
fn frames_cell(page: &mut String, frames: &[String]) {
    let mut leaf_first = frames.iter().rev();
    let Some(leaf) = leaf_first.next() else {
        let _ = write!(page, "<span class=\"frames\"><b>{NO_STACK}</b></span>");
        return;
    };
    let _ = write!(page, "<span class=\"frames\"><b>{}</b>", escape(leaf));
    for frame in leaf_first.by_ref().take(SHOWN_FRAMES - 1) {
        let _ = write!(page, " ← {}", escape(frame));
    }
    let rest: Vec<&String> = leaf_first.collect();
    if !rest.is_empty() {
        let _ = write!(
            page,
            "<details><summary>{} more frames</summary>",
            rest.len()
        );
        for frame in rest {
            let _ = write!(page, "← {}<br>", escape(frame));
        }
        page.push_str("</details>");
    }
    page.push_str("</span>");
}

fn memory_section(page: &mut String, report: &Report) {
    let m = &report.memory;
    let shared = m.shared.is_some();
    let rows = [
        ("tracked by memprof", Some(m.tracked_bytes)),
        ("RSS of the processes", m.rss_bytes),
        (if shared { "cgroup usage (shared)" } else { "cgroup usage" }, m.cgroup_usage_bytes),
        (if shared { "cgroup limit (shared)" } else { "cgroup limit" }, m.cgroup_limit_bytes),
    ];
    // A shared cgroup's figures are not the target's: the bars are scaled to the target's own.
    let scale = rows
        .iter()
        .take(if shared { 2 } else { 4 })
        .filter_map(|r| r.1)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    page.push_str("<section id=\"memory\"><h2>Memory</h2>\n<table class=\"memory\"><tbody>\n");
    for (i, (name, value)) in rows.iter().enumerate() {
        let (text, width) = match value {
            Some(v) => (human_bytes(*v), (*v as f64 / scale * 100.0).min(100.0)),
            None if i == 3 => ("no limit".into(), 0.0),
            None => ("unknown".into(), 0.0),
        };
        let _ = writeln!(
            page,
            "<tr><th>{name}</th><td class=\"num\">{text}</td><td class=\"barcell\">\
             <div class=\"bar{}\"><span style=\"width:{width:.1}%\"></span></div></td></tr>",
            if i == 3 { " limit" } else { "" }
        );
    }
    let eta = match (report.oom_eta_s, m.cgroup_limit_bytes) {
        (Some(eta), _) => format!("in ~{} at the current growth", human_duration(eta)),
        (None, None) => "no cgroup limit".into(),
        (None, Some(_)) => "not growing towards the limit".into(),
    };
    let _ = writeln!(
        page,
        "<tr><th>cgroup OOM</th><td colspan=\"2\">{}</td></tr>\n</tbody></table>",
        escape(&eta)
    );
    if let Some(words) = m.shared_words() {
        let _ = writeln!(
            page,
            "<p class=\"warn\">The memory cgroup is {}: its usage, limit and time-to-OOM are the \
             whole cgroup's, and the timeline leaves its usage out.</p>",
            escape(&words)
        );
    }
    let explained = m.explain();
    if !explained.is_empty() {
        page.push_str("<ul class=\"explain\">");
        for line in explained {
            let _ = write!(page, "<li>{}</li>", escape(&line));
        }
        page.push_str("</ul>\n");
    }
    if !m.source.is_empty() {
        let _ = writeln!(
            page,
            "<p class=\"muted\">Source: {}.</p>",
            escape(&m.source)
        );
    }
    page.push_str("</section>\n");
}

fn oom_section(page: &mut String, report: &Report) {
    if report.oom_kills.is_empty() {
        return;
    }
    page.push_str(
        "<section id=\"oom\"><h2>OOM kills</h2>\n<table><thead><tr><th class=\"num\">at</th>\
         <th class=\"num\">pid</th><th>command</th><th class=\"num\">live</th>\
         <th>top stack (leaf first)</th><th>evidence</th></tr></thead><tbody>\n",
    );
    for kill in &report.oom_kills {
        let _ = writeln!(
            page,
            "<tr><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td>\
             <td class=\"num\">{}</td><td>{}</td>\
             <td><a href=\"{}\">flamegraph</a> · <a href=\"{}\">folded</a></td></tr>",
            human_duration(kill.elapsed_s),
            kill.pid,
            escape(&kill.comm),
            human_bytes(kill.live_bytes),
            escape(&short_stack(&kill.top_stack, 3)),
            escape(&kill.svg),
            escape(&kill.folded),
        );
    }
    page.push_str("</tbody></table></section>\n");
}

fn flame_section(page: &mut String, id: &str, title: &str, note: &str, svg: &str) {
    let _ = writeln!(
        page,
        "<section id=\"{id}\"><h2>{}</h2><p class=\"muted\">{}</p>\n\
         <iframe class=\"flame\" title=\"{}\" style=\"height:{}px\" srcdoc=\"{}\"></iframe></section>",
        escape(title),
        escape(note),
        escape(title),
        svg_height(svg).unwrap_or(DEFAULT_FRAME_HEIGHT),
        escape(&frame_doc(svg))
    );
}

/// What the slider script gets for one snapshot.
#[derive(Serialize)]
struct SnapshotDoc {
    label: String,
    height: u32,
    doc: String,
}

/// At most [`MAX_SNAPSHOTS`], evenly spaced, the first and the last always included.
fn thin_out(snapshots: &[SnapshotSvg]) -> Vec<&SnapshotSvg> {
    let n = snapshots.len();
    if n <= MAX_SNAPSHOTS {
        return snapshots.iter().collect();
    }
    (0..MAX_SNAPSHOTS)
        .map(|i| &snapshots[(i * (n - 1) + (MAX_SNAPSHOTS - 1) / 2) / (MAX_SNAPSHOTS - 1)])
        .collect()
}

fn snapshots_section(page: &mut String, snapshots: &[SnapshotSvg]) {
    page.push_str("<section id=\"snapshots\"><h2>Snapshots over time</h2>\n");
    let kept = thin_out(snapshots);
    let docs: Vec<SnapshotDoc> = kept
        .iter()
        .map(|s| SnapshotDoc {
            label: format!("snapshot {} at {}", s.index, human_duration(s.elapsed_s)),
            height: svg_height(&s.svg).unwrap_or(DEFAULT_FRAME_HEIGHT),
            doc: frame_doc(&s.svg),
        })
        .collect();
    if docs.is_empty() {
        page.push_str("<p class=\"muted\">No snapshots were taken.</p>\n");
    } else {
        if kept.len() < snapshots.len() {
            let _ = writeln!(
                page,
                "<p class=\"muted\">Showing {} of {} snapshots, evenly spaced.</p>",
                kept.len(),
                snapshots.len()
            );
        }
        let last = docs.len() - 1;
        let _ = writeln!(
            page,
            "<div class=\"slider\"><input type=\"range\" id=\"snap-range\" min=\"0\" \
             max=\"{last}\" value=\"{last}\" step=\"1\" aria-label=\"snapshot\">\
             <span id=\"snap-label\"></span></div>\n\
             <iframe class=\"flame\" id=\"snap-frame\" title=\"snapshot flamegraph\"></iframe>"
        );
    }
    let json = serde_json::to_string(&docs).expect("snapshot documents serialize to JSON");
    let _ = writeln!(
        page,
        "<script type=\"application/json\" id=\"snapshot-data\">{}</script></section>",
        script_json(&json)
    );
}

fn details_section(page: &mut String, report: &Report) {
    let lost: Vec<String> = report
        .lost
        .iter()
        .filter(|(_, &n)| n > 0)
        .map(|(name, n)| format!("{name}={n}"))
        .collect();
    let attached = report.probes.iter().filter(|p| p.attached).count();
    let alive = report.processes.iter().filter(|p| p.alive).count();
    let runtimes = report
        .runtimes
        .describe(&report.mode)
        .map(|l| {
            let bad = report.runtimes.processes.iter().any(|p| p.frames != "walked")
                || report.runtimes.python_walk_failed.values().any(|&n| n > 0);
            format!("<dt>runtimes</dt><dd class=\"{}\">{}</dd>", if bad { "bad" } else { "" }, escape(&l))
        })
        .unwrap_or_default();
    let _ = writeln!(
        page,
        "<section id=\"run\"><h2>Run</h2><dl>\
         <dt>lost events</dt><dd class=\"{}\">{}</dd>\
         <dt>stacks</dt><dd class=\"{}\">{}</dd>\
         {runtimes}\
         <dt>processes</dt><dd>{} traced, {alive} alive at the end</dd>\
         <dt>probes</dt><dd>{attached} of {} attached</dd>\
         <dt>snapshots</dt><dd>{}</dd></dl>\
         <p class=\"muted\">All figures are also in summary.json (embedded below as \
         <code>#summary</code>).</p></section>",
        if lost.is_empty() { "" } else { "bad" },
        escape(&if lost.is_empty() {
            "none".to_string()
        } else {
            lost.join(", ")
        }),
        if report.stack_quality.truncated_stacks > 0 { "bad" } else { "" },
        escape(&report.stack_quality.describe()),
        report.processes.len(),
        report.probes.len(),
        report.snapshots.len(),
    );
}

const STYLE: &str = r#"
:root { color-scheme: light; --fg: #1d1d1f; --muted: #666; --line: #e3e3e3; }
* { box-sizing: border-box; }
body { margin: 0; background: #f5f5f7; color: var(--fg);
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1280px; margin: 0 auto; padding: 16px 24px 48px; }
header h1 { font-size: 18px; margin: 8px 0 0; color: var(--muted); font-weight: 600; }
.meta { margin: 2px 0 12px; color: var(--muted); font-size: 13px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px 18px;
  margin: 14px 0; }
h2 { font-size: 17px; margin: 4px 0 10px; }
.verdict { border-left: 8px solid; }
.verdict h2 { font-size: 26px; line-height: 1.25; margin: 6px 0; }
.verdict p { margin: 4px 0 6px; }
.verdict.leak { border-left-color: #c62828; background: #fff5f5; }
.verdict.leak h2 { color: #b71c1c; }
.verdict.warn { border-left-color: #ef6c00; background: #fff8ef; }
.verdict.ok { border-left-color: #2e7d32; background: #f3fbf3; }
.verdict.ok h2 { color: #1b5e20; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { text-align: left; vertical-align: top; padding: 6px 8px; border-bottom: 1px solid var(--line); }
thead th { font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); }
tbody tr:nth-child(even) { background: #fafafa; }
.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
small { color: var(--muted); }
.frames { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 13px;
  overflow-wrap: anywhere; }
details summary { cursor: pointer; color: var(--muted); }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; color: #fff; font-size: 12px;
  font-weight: 600; }
.badge.leak { background: #c62828; }
.badge.cache { background: #1565c0; }
.badge.churn { background: #6a1b9a; }
.badge.unknown { background: #757575; }
table.memory { width: auto; min-width: 60%; }
table.memory th { font-weight: 500; white-space: nowrap; }
p.warn { color: #b34700; }
ul.explain { margin: .5em 0; padding-left: 1.2em; }
.barcell { width: 50%; min-width: 200px; }
.bar { background: #eee; height: 12px; border-radius: 6px; overflow: hidden; margin-top: 4px; }
.bar span { display: block; height: 100%; background: #4a7bd0; }
.bar.limit span { background: #d62728; }
.muted { color: var(--muted); font-size: 13px; }
.bad { color: #b71c1c; font-weight: 600; }
figure.chart { margin: 0; }
figure.chart svg { width: 100%; height: auto; display: block; }
iframe.flame { width: 100%; border: 0; outline: 1px solid var(--line); display: block;
  background: #fff; }
.slider { display: flex; align-items: center; gap: 12px; margin: 4px 0 10px; }
.slider input { flex: 1; }
#snap-label { min-width: 300px; font-variant-numeric: tabular-nums; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 0 0 8px; }
dt { color: var(--muted); }
dd { margin: 0; }
"#;

const SCRIPT: &str = r#"
(function () {
  "use strict";
  window.memprofSummary = JSON.parse(document.getElementById("summary").textContent);
  var snaps = JSON.parse(document.getElementById("snapshot-data").textContent);
  var range = document.getElementById("snap-range");
  var frame = document.getElementById("snap-frame");
  var label = document.getElementById("snap-label");
  function show(i) {
    var s = snaps[i];
    frame.style.height = s.height + "px";
    frame.srcdoc = s.doc;
    label.textContent = s.label + " (" + (i + 1) + " of " + snaps.length + ")";
  }
  if (range && snaps.length) {
    range.addEventListener("input", function () { show(Number(range.value)); });
    show(snaps.length - 1);
  }
  document.body.dataset.ready = "1";
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::OomKill;

    #[test]
    fn escapes_markup() {
        assert_eq!(escape("plain"), "plain");
        assert!(matches!(escape("plain"), Cow::Borrowed(_)));
        assert_eq!(
            escape("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(escape("Vec<u8> ← é"), "Vec&lt;u8&gt; ← é");
    }

    #[test]
    fn script_json_cannot_end_the_script() {
        let json = serde_json::to_string(&["</script><!--<script>", "a<b"]).unwrap();
        let safe = script_json(&json);
        assert!(!safe.contains("</"));
        assert!(!safe.contains("<!--"));
        let back: Vec<String> = serde_json::from_str(&safe).unwrap();
        assert_eq!(back, ["</script><!--<script>", "a<b"]);
    }

    #[test]
    fn prolog_and_height() {
        let svg = "<?xml version=\"1.0\" standalone=\"no\"?><!DOCTYPE svg PUBLIC \"-//W3C//DTD SVG \
                   1.1//EN\" \"x.dtd\">\n<svg version=\"1.1\" width=\"1200\" height=\"158\" x=\"1\">";
        assert!(strip_prolog(svg).starts_with("<svg version"));
        assert_eq!(strip_prolog("<svg/>"), "<svg/>");
        assert_eq!(svg_height(svg), Some(158));
        assert_eq!(
            svg_height("<svg width=\"1\"><rect height=\"5\"/></svg>"),
            None
        );
    }

    fn snaps(n: u32) -> Vec<SnapshotSvg> {
        (0..n)
            .map(|index| SnapshotSvg {
                index,
                elapsed_s: f64::from(index) * 10.0,
                svg: format!("<svg height=\"10\">{index}</svg>"),
            })
            .collect()
    }

    #[test]
    fn thins_out_snapshots_evenly() {
        assert_eq!(thin_out(&snaps(60)).len(), 60);
        for n in [61, 100, 119, 1000] {
            let all = snaps(n);
            let kept: Vec<u32> = thin_out(&all).iter().map(|s| s.index).collect();
            assert_eq!(kept.len(), MAX_SNAPSHOTS);
            assert_eq!(kept[0], 0);
            assert_eq!(*kept.last().unwrap(), n - 1);
            assert!(kept.windows(2).all(|w| w[0] < w[1]), "{kept:?}");
        }
    }

    fn leak(frames: &[&str], rate: f64) -> StackReport {
        StackReport {
            frames: frames.iter().map(|s| s.to_string()).collect(),
            bytes: 4 << 20,
            allocations: 10,
            class: "leak".into(),
            growth_bytes_per_s: rate,
            confidence: 0.9,
            ..Default::default()
        }
    }

    #[test]
    fn verdict_names_the_fastest_leak_and_the_oom_eta() {
        let report = Report {
            stacks: vec![
                leak(&["main", "slow"], 1.0),
                leak(&["main", "worker", "leak_site"], 932.0),
            ],
            oom_eta_s: Some(6.5 * 3600.0),
            duration_s: 7200.0,
            ..Default::default()
        };
        let v = Verdict::of(&report);
        assert_eq!(v.tone, Tone::Leak);
        assert_eq!(
            v.headline,
            "LEAK: 3.2 MiB/h at leak_site ← worker — cgroup OOM in ~6.5 h"
        );
        assert!(
            v.detail
                .starts_with("2 leaking stacks, together +3.2 MiB/h"),
            "{}",
            v.detail
        );
    }

    #[test]
    fn verdict_and_table_name_the_leaking_python_function() {
        let report = Report {
            stacks: vec![leak(&["main", "Exporter.export (app.py:57)", "PyBytes_FromStringAndSize"], 932.0)],
            functions: vec![crate::analyze::functions::FunctionReport {
                function: "Exporter.export (app.py)".into(),
                file: Some("/app/app.py".into()),
                lines: vec![57, 60],
                bytes: 4 << 20,
                allocations: 10,
                growth_bytes_per_s: 932.0,
                leak_growth_bytes_per_s: 932.0,
                class: "leak".into(),
                stacks: 1,
            }],
            duration_s: 7200.0,
            ..Default::default()
        };
        let v = Verdict::of(&report);
        assert_eq!(v.headline, "LEAK: 3.2 MiB/h in Exporter.export (app.py), line 57");
        let page = report_html(&report, "", "", "", &[]);
        assert!(page.contains("By Python function") && page.contains("Exporter.export (app.py)"));
    }

    #[test]
    fn no_leak_verdict_mentions_oom_kills() {
        let mut report = Report::default();
        let v = Verdict::of(&report);
        assert_eq!((v.tone, v.headline.as_str()), (Tone::Ok, "No leak found"));
        report.oom_kills.push(OomKill {
            pid: 7,
            comm: "api".into(),
            elapsed_s: 10.0,
            live_bytes: 1,
            folded: "oom-7.folded".into(),
            svg: "oom-7.svg".into(),
            top_stack: Vec::new(),
        });
        let v = Verdict::of(&report);
        assert_eq!(v.tone, Tone::Warn);
        assert!(v.detail.contains("1 process was OOM-killed"));
    }

    #[test]
    fn page_is_self_contained_and_escaped() {
        let mut report = Report {
            target: "cgroup <api>".into(),
            stacks: vec![leak(&["main", "</script><b>x"], 10.0)],
            ..Default::default()
        };
        report.oom_kills.push(OomKill {
            pid: 7,
            comm: "a\"pi".into(),
            elapsed_s: 10.0,
            live_bytes: 1,
            folded: "oom-7.folded".into(),
            svg: "oom-7.svg".into(),
            top_stack: vec!["main".into()],
        });
        let html = report_html(&report, "<svg height=\"50\"/>", "", "<svg/>", &snaps(3));
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(!html.contains("http://") && !html.contains("https://"));
        assert!(html.contains("cgroup &lt;api&gt;"));
        assert!(html.contains("&lt;/script&gt;&lt;b&gt;x"));
        assert!(html.contains("a&quot;pi"));
        assert!(html.contains("href=\"oom-7.svg\""));
        assert_eq!(html.matches("</script>").count(), 3);
        assert!(html.contains("style=\"height:50px\""));
        assert!(html.contains("\"label\":\"snapshot 2 at 20s\""));
        let verdict = html.find("id=\"verdict\"").unwrap();
        assert!(verdict < html.find("id=\"stacks\"").unwrap());
    }
}
