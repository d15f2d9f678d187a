//! The human summary printed at the end of a run.

use std::fmt::Write;

use super::folded::NO_STACK;
use crate::report::Report;

/// Frames shown per stack, leaf first.
const SHOWN_FRAMES: usize = 4;

/// Formats a byte count in binary units: `512 B`, `1.5 KiB`, `12.3 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    // Round first so that e.g. 1048575 B shows as `1.0 MiB`, not `1024.0 KiB`.
    while (value * 10.0).round() / 10.0 >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Renders the header, the `top` largest stacks, and the non-zero lost-event counters.
pub fn render_summary(report: &Report, top: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "memprof: {} — {:.1}s, {} live in {} allocations",
        report.target,
        report.duration_s,
        human_bytes(report.live_bytes),
        report.live_allocations
    );

    let stacks: Vec<_> = report
        .stacks
        .iter()
        .filter(|s| s.bytes > 0)
        .take(top)
        .collect();
    if stacks.is_empty() {
        out.push_str("no outstanding allocations\n");
    } else {
        let _ = writeln!(
            out,
            "{:>4}  {:<7}  {:>10}  {:>8}  {:>12}  stack (leaf first)",
            "#", "class", "bytes", "allocs", "growth"
        );
        for (i, s) in stacks.iter().enumerate() {
            let class = if s.class.is_empty() { "-" } else { s.class.as_str() };
            let _ = writeln!(
                out,
                "{:>4}  {:<7}  {:>10}  {:>8}  {:>12}  {}",
                i + 1,
                class,
                human_bytes(s.bytes),
                s.allocations,
                human_rate(s.growth_bytes_per_s),
                leaf_first(&s.frames)
            );
        }
        let hidden = report.stacks.iter().filter(|s| s.bytes > 0).count() - stacks.len();
        if hidden > 0 {
            let _ = writeln!(out, "      … {hidden} more stacks");
        }
    }

    let functions: Vec<_> = report.functions.iter().filter(|f| f.bytes > 0).take(top.min(5)).collect();
    if !functions.is_empty() {
        let lang = report.runtimes.languages();
        let _ = writeln!(out, "by {lang} function (the innermost {lang} frame of each stack):");
        for f in &functions {
            let lines: Vec<String> = f.lines.iter().take(3).map(|l| l.to_string()).collect();
            let _ = writeln!(
                out,
                "        {:<7}  {:>10}  {:>8}  {:>12}  {}{}",
                f.class,
                human_bytes(f.bytes),
                f.allocations,
                human_rate(f.growth_bytes_per_s),
                f.function,
                if lines.is_empty() { String::new() } else { format!(" lines {}", lines.join(", ")) }
            );
        }
    }

    let m = &report.memory;
    if m.cgroup_usage_bytes.is_some() || m.rss_bytes.is_some() {
        let opt = |v: Option<u64>| v.map(human_bytes).unwrap_or_else(|| "?".into());
        let limit = m.cgroup_limit_bytes.map(human_bytes).unwrap_or_else(|| "none".into());
        let eta = match report.oom_eta_s {
            Some(s) => format!(", OOM in ~{}", human_duration(s)),
            None => String::new(),
        };
        let shared = match m.shared_words() {
            Some(words) => format!(" ({words})"),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "memory: tracked {} | RSS {} | cgroup {}{shared} of limit {}{eta}",
            human_bytes(m.tracked_bytes),
            opt(m.rss_bytes),
            opt(m.cgroup_usage_bytes),
            limit
        );
        for line in m.explain() {
            let _ = writeln!(out, "  {line}");
        }
    }
    for k in &report.oom_kills {
        let _ = writeln!(
            out,
            "OOM kill: pid {} ({}) at {:.1}s holding {} — see {}",
            k.pid,
            k.comm,
            k.elapsed_s,
            human_bytes(k.live_bytes),
            k.svg
        );
    }

    if let Some(line) = report.runtimes.describe(&report.mode) {
        let _ = writeln!(out, "{line}");
    }
    if !report.stack_quality.unwinder.is_empty() {
        let _ = writeln!(out, "stacks: {}", report.stack_quality.describe());
    }
    let lost: Vec<String> = report
        .lost
        .iter()
        .filter(|(_, &n)| n > 0)
        .map(|(name, n)| format!("{name}={n}"))
        .collect();
    if lost.is_empty() {
        out.push_str("lost events: none\n");
    } else {
        let _ = writeln!(out, "lost events: {}", lost.join(", "));
    }
    out
}

/// A growth rate: `+1.2 MiB/s`, `-3 B/s`, `0 B/s`.
pub fn human_rate(bytes_per_s: f64) -> String {
    if !bytes_per_s.is_finite() || bytes_per_s.abs() < 0.5 {
        return "0 B/s".into();
    }
    let sign = if bytes_per_s < 0.0 { "-" } else { "+" };
    format!("{sign}{}/s", human_bytes(bytes_per_s.abs().round() as u64))
}

/// A duration in the largest sensible unit: `42s`, `3.5 min`, `6.2 h`, `2.1 d`.
pub fn human_duration(s: f64) -> String {
    match s {
        s if s < 120.0 => format!("{s:.0}s"),
        s if s < 7200.0 => format!("{:.1} min", s / 60.0),
        s if s < 172_800.0 => format!("{:.1} h", s / 3600.0),
        s => format!("{:.1} d", s / 86400.0),
    }
}

/// The leaf-most frames, leaf first, joined by ` ← `.
fn leaf_first(frames: &[String]) -> String {
    if frames.is_empty() {
        return NO_STACK.to_string();
    }
    let mut shown: Vec<&str> = frames
        .iter()
        .rev()
        .take(SHOWN_FRAMES)
        .map(String::as_str)
        .collect();
    if frames.len() > SHOWN_FRAMES {
        shown.push("…");
    }
    shown.join(" ← ")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::report::StackReport;

    #[test]
    fn human_bytes_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(1024 * 1024 - 1), "1.0 MiB");
        assert_eq!(human_bytes(12_897_485), "12.3 MiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    fn report(stacks: Vec<StackReport>, lost: &[(&str, u64)]) -> Report {
        Report {
            target: "cgroup api".into(),
            cgroup: None,
            started_at: "2024-01-01T00:00:00Z".into(),
            duration_s: 30.0,
            end_reason: "duration".into(),
            live_bytes: stacks.iter().map(|s| s.bytes).sum(),
            live_allocations: stacks.iter().map(|s| s.allocations).sum(),
            stacks,
            lost: lost
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect::<BTreeMap<_, _>>(),
            stats: BTreeMap::new(),
            processes: Vec::new(),
            probes: Vec::new(),
            snapshots: Vec::new(),
            ..Default::default()
        }
    }

    fn stack(frames: &[&str], bytes: u64) -> StackReport {
        StackReport {
            frames: frames.iter().map(|f| f.to_string()).collect(),
            frame_details: Vec::new(),
            bytes,
            allocations: 2,
            total_bytes: bytes,
            total_allocations: 2,
            pids: vec![1],
            ..Default::default()
        }
    }

    #[test]
    fn renders_table() {
        let r = report(
            vec![
                stack(
                    &[
                        "_start",
                        "main",
                        "start_thread",
                        "worker",
                        "leak_site (fixture.c:42)",
                    ],
                    2048,
                ),
                stack(&[], 10),
                stack(&["main", "g"], 1),
            ],
            &[("ringbuf_full", 0), ("stack_missing", 3)],
        );
        let text = render_summary(&r, 2);
        assert!(text.starts_with("memprof: cgroup api — 30.0s, 2.0 KiB live in 6 allocations\n"));
        assert!(text.contains("leak_site (fixture.c:42) ← worker ← start_thread ← main ← …"));
        assert!(text.contains("[no stack]"));
        assert!(text.contains("… 1 more stacks"));
        assert!(text.contains("lost events: stack_missing=3\n"));
        assert!(!text.contains("ringbuf_full"));
    }

    #[test]
    fn no_lost_events() {
        let text = render_summary(&report(Vec::new(), &[("x", 0)]), 10);
        assert!(text.contains("no outstanding allocations"));
        assert!(text.ends_with("lost events: none\n"));
    }
}
