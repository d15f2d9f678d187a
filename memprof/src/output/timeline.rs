//! A self-made SVG line chart of live bytes over time (no script): the top stacks, the total
//! tracked bytes, the cgroup's usage and its limit.

use std::fmt::Write;
use std::path::Path;

use super::folded::NO_STACK;
use super::html::escape;
use super::{human_bytes, write_atomic, OutputError};
use crate::report::Report;

const WIDTH: f64 = 1200.0;
/// Plot area.
const LEFT: f64 = 90.0;
const RIGHT: f64 = WIDTH - 30.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 370.0;
/// Legend: two columns of rows below the x axis labels.
const LEGEND_TOP: f64 = BOTTOM + 50.0;
const LEGEND_ROW: f64 = 20.0;
const LEGEND_COLUMN: f64 = (RIGHT - LEFT) / 2.0;
/// Longest legend label, in characters.
const LEGEND_CHARS: usize = 72;
/// The limit is drawn to scale when at most this many times the largest value; else at the top
/// edge, marked off scale, so that it does not flatten every other line.
const LIMIT_SCALE: f64 = 4.0;
/// Stack line colours (no red: red is the limit).
const COLORS: [&str; 9] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
    "#7f7f7f",
];
const LIMIT_COLOR: &str = "#d62728";
const FONT: &str = "font-family=\"Verdana, sans-serif\" font-size=\"12\"";

/// One line of the chart.
struct Line {
    label: String,
    color: &'static str,
    width: f64,
    dashed: bool,
    /// `(seconds since start, bytes)`.
    points: Vec<(f64, f64)>,
}

/// Renders the chart: one line per top-`top` stack by bytes (from [`StackReport::series`]),
/// the total tracked live bytes and the cgroup usage (dashed) per snapshot, and the cgroup limit
/// as a red horizontal line. Without any point, a valid SVG that says "no data yet".
///
/// [`StackReport::series`]: crate::report::StackReport::series
pub fn timeline_svg(report: &Report, top: usize) -> String {
    let lines = chart_lines(report, top);
    let limit = report.memory.cgroup_limit_bytes.map(|l| l as f64);
    let points = || lines.iter().flat_map(|l| l.points.iter());
    if points().next().is_none() {
        return no_data_svg();
    }

    let t_max = points().map(|p| p.0).fold(0.0, f64::max);
    let t_max = if t_max > 0.0 { t_max } else { 1.0 };
    let data_max = points().map(|p| p.1).fold(0.0, f64::max);
    let limit_on_scale = limit.filter(|&l| data_max <= 0.0 || l <= data_max * LIMIT_SCALE);
    let y_max = limit_on_scale.unwrap_or(0.0).max(data_max);
    let y_axis = ByteAxis::new(if y_max > 0.0 { y_max } else { 1024.0 });
    let x = |t: f64| LEFT + (RIGHT - LEFT) * t / t_max;
    let y = |b: f64| BOTTOM - (BOTTOM - TOP) * b / y_axis.max;

    let legend_rows = (lines.len() + usize::from(limit.is_some())).div_ceil(2);
    let height = LEGEND_TOP + legend_rows as f64 * LEGEND_ROW + 10.0;
    let mut svg = header(height);
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"28\" font-size=\"16\" text-anchor=\"middle\">Live bytes over time</text>",
        WIDTH / 2.0
    );

    // Grid and y labels.
    for tick in y_axis.ticks() {
        let ty = y(tick);
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT}\" y1=\"{ty:.1}\" x2=\"{RIGHT}\" y2=\"{ty:.1}\" stroke=\"#e4e4e4\"/>\n\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT - 8.0,
            ty + 4.0,
            escape(&y_axis.label(tick))
        );
    }
    // x labels.
    let x_axis = TimeAxis::new(t_max);
    for tick in x_axis.ticks() {
        let tx = x(tick);
        let _ = writeln!(
            svg,
            "<line x1=\"{tx:.1}\" y1=\"{BOTTOM}\" x2=\"{tx:.1}\" y2=\"{}\" stroke=\"#999\"/>\n\
             <text x=\"{tx:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            BOTTOM + 5.0,
            BOTTOM + 20.0,
            escape(&x_axis.label(tick))
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{RIGHT}\" y=\"{}\" text-anchor=\"end\" fill=\"#666\">time since start</text>",
        BOTTOM + 38.0
    );
    let _ = writeln!(
        svg,
        "<polyline points=\"{LEFT},{TOP} {LEFT},{BOTTOM} {RIGHT},{BOTTOM}\" fill=\"none\" stroke=\"#333\"/>"
    );

    // Data, largest stacks last so that they are drawn on top; totals on top of everything.
    for line in lines.iter().rev() {
        svg.push_str(&polyline(line, &x, &y));
    }

    if let Some(limit) = limit {
        // Off scale: dashed along the top edge.
        let (ly, text, dashed) = match limit_on_scale {
            Some(l) => (
                y(l),
                format!("cgroup limit {}", human_bytes(l as u64)),
                false,
            ),
            None => (
                TOP,
                format!("cgroup limit {} ↑ (off scale)", human_bytes(limit as u64)),
                true,
            ),
        };
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT}\" y1=\"{ly:.1}\" x2=\"{RIGHT}\" y2=\"{ly:.1}\" stroke=\"{LIMIT_COLOR}\" stroke-width=\"2\"{}/>\n\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"{LIMIT_COLOR}\">{}</text>",
            dash_attr(dashed),
            RIGHT - 4.0,
            ly - 5.0,
            escape(&text)
        );
    }

    // Legend.
    let limit_entry = limit.map(|l| Line {
        label: format!("cgroup limit ({})", human_bytes(l as u64)),
        color: LIMIT_COLOR,
        width: 2.0,
        dashed: false,
        points: Vec::new(),
    });
    for (i, line) in lines.iter().chain(limit_entry.as_ref()).enumerate() {
        let lx = LEFT + (i % 2) as f64 * LEGEND_COLUMN;
        let ly = LEGEND_TOP + (i / 2) as f64 * LEGEND_ROW;
        let _ = writeln!(
            svg,
            "<line x1=\"{lx}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{}\" stroke-width=\"{}\"{}/>\n\
             <text x=\"{}\" y=\"{}\">{}</text>",
            lx + 24.0,
            line.color,
            line.width.max(2.0),
            dash_attr(line.dashed),
            lx + 30.0,
            ly + 4.0,
            escape(&truncate(&line.label, LEGEND_CHARS))
        );
    }
    svg.push_str("</g>\n</svg>\n");
    svg
}

/// Writes [`timeline_svg`] to `path` (atomically).
pub fn write_timeline_svg(path: &Path, report: &Report, top: usize) -> Result<(), OutputError> {
    write_atomic(path, timeline_svg(report, top).as_bytes())
}

/// The totals first, then the stacks by bytes, largest first.
fn chart_lines(report: &Report, top: usize) -> Vec<Line> {
    let mut lines = Vec::new();
    let snaps = &report.snapshots;
    lines.push(Line {
        label: "total tracked live bytes".into(),
        color: "#000",
        width: 2.5,
        dashed: false,
        points: snaps
            .iter()
            .map(|s| (s.elapsed_s, s.live_bytes as f64))
            .collect(),
    });
    let usage: Vec<_> = snaps
        .iter()
        .filter_map(|s| Some((s.elapsed_s, s.cgroup_usage_bytes? as f64)))
        .collect();
    // A memory cgroup shared with other processes is not the target's usage: left out, so
    // that the scale follows the target's own bytes.
    if !usage.is_empty() && report.memory.shared.is_none() {
        lines.push(Line {
            label: "cgroup memory usage".into(),
            color: "#555",
            width: 2.0,
            dashed: true,
            points: usage,
        });
    }

    let mut stacks: Vec<_> = report
        .stacks
        .iter()
        .filter(|s| !s.series.is_empty())
        .collect();
    stacks.sort_by_key(|s| std::cmp::Reverse(s.bytes));
    for (i, stack) in stacks.into_iter().take(top).enumerate() {
        let leaf = stack.frames.last().map_or(NO_STACK, String::as_str);
        let class = if stack.class.is_empty() {
            "unknown"
        } else {
            &stack.class
        };
        lines.push(Line {
            label: format!("{leaf} — {class}, {}", human_bytes(stack.bytes)),
            color: COLORS[i % COLORS.len()],
            width: if stack.class == "leak" { 2.0 } else { 1.5 },
            dashed: false,
            points: stack.series.iter().map(|p| (p[0], p[1])).collect(),
        });
    }
    lines.retain(|l| !l.points.is_empty());
    for line in &mut lines {
        line.points
            .retain(|p| p.0.is_finite() && p.1.is_finite() && p.0 >= 0.0 && p.1 >= 0.0);
        line.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    lines
}

fn polyline(line: &Line, x: &impl Fn(f64) -> f64, y: &impl Fn(f64) -> f64) -> String {
    if let [(t, b)] = line.points[..] {
        return format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{}\"/>\n",
            x(t),
            y(b),
            line.color
        );
    }
    let mut points = String::new();
    for &(t, b) in &line.points {
        let _ = write!(points, "{:.1},{:.1} ", x(t), y(b));
    }
    format!(
        "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"{}\" stroke-linejoin=\"round\"{}/>\n",
        points.trim_end(),
        line.color,
        line.width,
        dash_attr(line.dashed)
    )
}

fn dash_attr(dashed: bool) -> &'static str {
    if dashed {
        " stroke-dasharray=\"6 4\""
    } else {
        ""
    }
}

fn header(height: f64) -> String {
    format!(
        "<svg version=\"1.1\" class=\"timeline\" width=\"{WIDTH}\" height=\"{height}\" \
         viewBox=\"0 0 {WIDTH} {height}\" xmlns=\"http://www.w3.org/2000/svg\">\n\
         <rect x=\"0\" y=\"0\" width=\"100%\" height=\"100%\" fill=\"#fff\"/>\n\
         <g {FONT} fill=\"#222\">\n"
    )
}

fn no_data_svg() -> String {
    let mut svg = header(120.0);
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"28\" font-size=\"16\" text-anchor=\"middle\">Live bytes over time</text>\n\
         <text x=\"{}\" y=\"75\" text-anchor=\"middle\" fill=\"#666\">no data yet</text>",
        WIDTH / 2.0,
        WIDTH / 2.0
    );
    svg.push_str("</g>\n</svg>\n");
    svg
}

fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max_chars - 1).collect();
    out.push('…');
    out
}

/// `1`, `2` or `5` times a power of ten: the tick step closest above `raw`.
fn nice_step(raw: f64) -> f64 {
    let pow = 10f64.powf(raw.log10().floor());
    let m = raw / pow;
    let nice = if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * pow
}

/// Decimals needed to print multiples of `step` exactly.
fn decimals(step: f64) -> usize {
    (-step.log10().floor()).max(0.0) as usize
}

/// A y axis in binary units, from 0 to a whole number of steps.
struct ByteAxis {
    /// Bytes per unit (`1024^k`) and the unit's name.
    unit: f64,
    unit_name: &'static str,
    /// Step in units.
    step: f64,
    max: f64,
}

impl ByteAxis {
    const UNITS: [&'static str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

    fn new(max_bytes: f64) -> Self {
        let mut k = 0;
        while k + 1 < Self::UNITS.len() && max_bytes >= 1024f64.powi(k as i32 + 1) {
            k += 1;
        }
        let unit = 1024f64.powi(k as i32);
        let mut step = nice_step(max_bytes / unit / 5.0);
        if k == 0 {
            step = step.max(1.0);
        }
        let steps = (max_bytes / unit / step - 1e-9).ceil().max(1.0);
        ByteAxis {
            unit,
            unit_name: Self::UNITS[k],
            step,
            max: steps * step * unit,
        }
    }

    fn ticks(&self) -> impl Iterator<Item = f64> + '_ {
        let n = (self.max / self.unit / self.step).round() as u32;
        (0..=n).map(|i| f64::from(i) * self.step * self.unit)
    }

    fn label(&self, bytes: f64) -> String {
        if bytes == 0.0 {
            return "0".into();
        }
        format!(
            "{:.*} {}",
            decimals(self.step),
            bytes / self.unit,
            self.unit_name
        )
    }
}

/// An x axis in seconds, labelled in the largest sensible unit.
struct TimeAxis {
    unit: f64,
    unit_name: &'static str,
    step: f64,
    max: f64,
}

impl TimeAxis {
    fn new(max_s: f64) -> Self {
        let (unit, unit_name) = match max_s {
            s if s <= 120.0 => (1.0, "s"),
            s if s <= 7200.0 => (60.0, "min"),
            s if s <= 172_800.0 => (3600.0, "h"),
            _ => (86400.0, "d"),
        };
        TimeAxis {
            unit,
            unit_name,
            step: nice_step(max_s / unit / 6.0),
            max: max_s,
        }
    }

    fn ticks(&self) -> impl Iterator<Item = f64> + '_ {
        let n = (self.max / self.unit / self.step + 1e-9).floor() as u32;
        (0..=n).map(|i| f64::from(i) * self.step * self.unit)
    }

    fn label(&self, s: f64) -> String {
        if s == 0.0 {
            return "0".into();
        }
        format!(
            "{:.*} {}",
            decimals(self.step),
            s / self.unit,
            self.unit_name
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{SnapshotInfo, StackReport};

    fn snapshot(index: u32, elapsed_s: f64, live: u64, usage: Option<u64>) -> SnapshotInfo {
        SnapshotInfo {
            index,
            elapsed_s,
            live_bytes: live,
            cgroup_usage_bytes: usage,
            ..Default::default()
        }
    }

    fn stack(leaf: &str, class: &str, bytes: u64, series: Vec<[f64; 2]>) -> StackReport {
        StackReport {
            frames: vec!["main".into(), leaf.into()],
            bytes,
            class: class.into(),
            series,
            ..Default::default()
        }
    }

    #[test]
    fn empty_report_says_no_data() {
        for report in [
            Report::default(),
            Report {
                stacks: vec![stack("x", "leak", 10, Vec::new())],
                ..Default::default()
            },
        ] {
            let svg = timeline_svg(&report, 5);
            assert!(svg.starts_with("<svg "));
            assert!(svg.contains("xmlns=\"http://www.w3.org/2000/svg\""));
            assert!(svg.contains("no data yet"));
            assert!(svg.trim_end().ends_with("</svg>"));
        }
    }

    #[test]
    fn draws_lines_legend_and_limit() {
        let mut report = Report {
            snapshots: vec![
                snapshot(0, 0.0, 1 << 20, Some(3 << 20)),
                snapshot(1, 1800.0, 2 << 20, Some(4 << 20)),
                snapshot(2, 3600.0, 3 << 20, Some(5 << 20)),
            ],
            stacks: vec![
                stack(
                    "leak_site <T> & \"x\"",
                    "leak",
                    2 << 20,
                    vec![[0.0, 0.0], [1800.0, 1048576.0], [3600.0, 2097152.0]],
                ),
                stack("cache_fill", "cache", 1 << 20, vec![[0.0, 1048576.0]]),
                stack("third", "churn", 10, vec![[0.0, 10.0], [3600.0, 10.0]]),
            ],
            ..Default::default()
        };
        report.memory.cgroup_limit_bytes = Some(8 << 20);
        let svg = timeline_svg(&report, 2);
        // Totals, cgroup usage (dashed), two stacks (one a single point); not the third.
        assert_eq!(svg.matches("<polyline").count(), 1 + 3);
        assert_eq!(svg.matches("stroke-dasharray").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 1);
        assert!(svg.contains("leak_site &lt;T&gt; &amp; &quot;x&quot; — leak, 2.0 MiB"));
        assert!(svg.contains("cache_fill — cache, 1.0 MiB"));
        assert!(!svg.contains("third"));
        assert!(svg.contains("cgroup limit 8.0 MiB<"));
        assert!(svg.contains(&format!("stroke=\"{LIMIT_COLOR}\"")));
        // Axes: time in minutes, bytes in MiB.
        assert!(svg.contains(">60 min<"), "{svg}");
        assert!(svg.contains(">8 MiB<"), "{svg}");
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn far_limit_is_off_scale() {
        let mut report = Report {
            snapshots: vec![snapshot(0, 0.0, 100, None), snapshot(1, 10.0, 200, None)],
            ..Default::default()
        };
        report.memory.cgroup_limit_bytes = Some(1 << 30);
        let svg = timeline_svg(&report, 5);
        assert!(svg.contains("cgroup limit 1.0 GiB ↑ (off scale)"));
        assert!(svg.contains(&format!(
            "stroke=\"{LIMIT_COLOR}\" stroke-width=\"2\" stroke-dasharray"
        )));
        assert!(svg.contains(">200 B<"), "{svg}");
        assert!(svg.contains(">10 s<"), "{svg}");
    }

    #[test]
    fn axes() {
        assert_eq!(nice_step(0.64), 1.0);
        assert_eq!(nice_step(0.22), 0.5);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(1.0), 1.0);
        let y = ByteAxis::new(1.1 * 1024.0 * 1024.0);
        assert_eq!(y.unit_name, "MiB");
        let labels: Vec<_> = y.ticks().map(|t| y.label(t)).collect();
        assert_eq!(labels, ["0", "0.5 MiB", "1.0 MiB", "1.5 MiB"]);
        let t = TimeAxis::new(3.0 * 86400.0);
        let labels: Vec<_> = t.ticks().map(|s| t.label(s)).collect();
        assert_eq!(
            labels,
            ["0", "0.5 d", "1.0 d", "1.5 d", "2.0 d", "2.5 d", "3.0 d"]
        );
        let y = ByteAxis::new(3.0);
        assert_eq!(
            y.ticks().map(|t| y.label(t)).collect::<Vec<_>>(),
            ["0", "1 B", "2 B", "3 B"]
        );
    }
}
