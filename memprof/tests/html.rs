//! `report.html` in a real browser: Debian's headless Chromium loads the page offline, and its
//! script must finish (`data-ready="1"`) without a single console message or uncaught error.
//! Chromium comes with `cargo xtask setup`; without it these tests fail, never skip.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use memprof::output::{
    flamegraph_svg, folded_lines, growth_svg, timeline_svg, write_report_html, write_timeline_svg,
    SnapshotSvg,
};
use memprof::report::{MemoryInfo, OomKill, Report, SharedMemory, SnapshotInfo, StackReport};

const HOUR: f64 = 3600.0;

/// A fresh directory under Cargo's temporary directory for integration tests.
fn temp_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("html-{name}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

struct Chromium {
    status: std::process::ExitStatus,
    dom: String,
    stderr: String,
}

/// Loads `page` in headless Chromium and dumps the DOM once its scripts have run.
fn chromium(page: &Path, extra: &[&str]) -> Chromium {
    let profile = page.with_extension("profile");
    let _ = fs::remove_dir_all(&profile);
    fs::create_dir_all(&profile).unwrap();
    let output = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `chromium` ({e}): run `cargo xtask setup` to install it")
        });
    let _ = fs::remove_dir_all(&profile);
    Chromium {
        status: output.status,
        dom: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Asserts a clean load: exit 0, and no page console output or uncaught error. Chromium logs
/// every console message and uncaught exception (of the page and its iframes) to stderr as
/// `INFO:CONSOLE:<line>] "<message>", source: <url>`.
fn assert_clean(run: &Chromium) {
    assert!(
        run.status.success(),
        "chromium failed: {}\n{}",
        run.status,
        run.stderr
    );
    let bad: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains(":CONSOLE") || l.contains("Uncaught"))
        .collect();
    assert!(bad.is_empty(), "page logged errors:\n{}", bad.join("\n"));
}

fn stack(
    frames: &[&str],
    bytes: u64,
    class: &str,
    growth: f64,
    series: &[[f64; 2]],
) -> StackReport {
    StackReport {
        frames: frames.iter().map(|f| f.to_string()).collect(),
        bytes,
        allocations: bytes / 64,
        total_bytes: bytes * 3,
        total_allocations: bytes / 20,
        pids: vec![4242],
        class: class.into(),
        growth_bytes_per_s: growth,
        confidence: 0.93,
        series: series.to_vec(),
        ..Default::default()
    }
}

/// Six hours of a slow leak next to a cache and some churn, in a 64 MiB cgroup.
fn leaking_report() -> Report {
    let times: Vec<f64> = (0..=12).map(|i| f64::from(i) * HOUR / 2.0).collect();
    let leak_rate = 932.0;
    let leak: Vec<[f64; 2]> = times.iter().map(|&t| [t, t * leak_rate]).collect();
    let cache: Vec<[f64; 2]> = times
        .iter()
        .map(|&t| [t, (8.0 * 1048576.0 * (1.0 - (-t / HOUR).exp())).round()])
        .collect();
    let churn: Vec<[f64; 2]> = times
        .iter()
        .enumerate()
        .map(|(i, &t)| [t, if i % 2 == 0 { 300_000.0 } else { 900_000.0 }])
        .collect();
    let stacks = vec![
        stack(
            &[
                "_start",
                "main",
                "start_thread",
                "worker",
                "leak_site (fixture.c:42)",
            ],
            (6.0 * HOUR * leak_rate) as u64,
            "leak",
            leak_rate,
            &leak,
        ),
        stack(
            &[
                "_start",
                "main",
                "cache_fill<std::string, Vec<u8>>",
                "malloc",
            ],
            8 << 20,
            "cache",
            2.0,
            &cache,
        ),
        stack(
            &["_start", "main", "handle_request", "parse & copy \"body\""],
            900_000,
            "churn",
            -3.5,
            &churn,
        ),
        stack(
            &["_start", "main", "init"],
            4096,
            "unknown",
            0.0,
            &[[0.0, 4096.0]],
        ),
    ];
    let live: u64 = stacks.iter().map(|s| s.bytes).sum();
    let snapshots = times
        .iter()
        .enumerate()
        .map(|(i, &t)| SnapshotInfo {
            index: i as u32,
            elapsed_s: t,
            live_bytes: (t * leak_rate) as u64 + (8 << 20) + 600_000,
            live_allocations: 1000 + i as u64,
            cgroup_usage_bytes: Some((20 << 20) + (t * leak_rate * 1.1) as u64),
            rss_bytes: Some(18 << 20),
        })
        .collect();
    Report {
        target: "cgroup api-service".into(),
        cgroup: Some("/sys/fs/cgroup/system.slice/api.service".into()),
        started_at: "2024-05-01T10:00:00Z".into(),
        duration_s: 6.0 * HOUR,
        end_reason: "signal".into(),
        live_bytes: live,
        live_allocations: stacks.iter().map(|s| s.allocations).sum(),
        stacks,
        snapshots,
        memory: MemoryInfo {
            tracked_bytes: live,
            rss_bytes: Some(31 << 20),
            cgroup_usage_bytes: Some(42 << 20),
            cgroup_limit_bytes: Some(64 << 20),
            source: "cgroup v2 memory.current".into(),
            rss_anon_bytes: Some(27 << 20),
            rss_file_bytes: Some(4 << 20),
            cgroup_anon_bytes: Some(38 << 20),
            cgroup_file_bytes: Some(3 << 20),
            shared: None,
        },
        oom_eta_s: Some(6.5 * HOUR),
        oom_kills: vec![OomKill {
            pid: 4243,
            comm: "api-worker".into(),
            elapsed_s: 5.0 * HOUR,
            live_bytes: 30 << 20,
            folded: "oom-4243.folded".into(),
            svg: "oom-4243.svg".into(),
            top_stack: vec![
                "main".into(),
                "worker".into(),
                "leak_site (fixture.c:42)".into(),
            ],
        }],
        ..Default::default()
    }
}

/// The report's SVGs as `memprof` writes them, the page, and its path.
fn write_page(dir: &Path, report: &Report) -> PathBuf {
    let svg = |lines: &[String], title: &str| {
        String::from_utf8(flamegraph_svg(lines, title, None).unwrap()).unwrap()
    };
    let last = folded_lines(&report.stacks);
    // The first snapshot: the leak had not started, the cache was smaller.
    let mut early = report.stacks.clone();
    early[0].bytes = 1024;
    early[1].bytes = 1 << 20;
    let first = folded_lines(&early);
    let growth = String::from_utf8(growth_svg(&first, &last, "What grew").unwrap()).unwrap();
    let snapshots: Vec<SnapshotSvg> = report
        .snapshots
        .iter()
        .map(|s| SnapshotSvg {
            index: s.index,
            elapsed_s: s.elapsed_s,
            svg: svg(
                if s.index == 0 { &first } else { &last },
                &format!("snapshot {}", s.index),
            ),
        })
        .collect();
    let path = dir.join("report.html");
    write_report_html(
        &path,
        report,
        &svg(&last, "memprof: cgroup api-service"),
        &growth,
        &timeline_svg(report, 5),
        &snapshots,
    )
    .unwrap();
    path
}

#[test]
fn leak_report_loads_cleanly_in_chromium() {
    let dir = temp_dir("leak");
    let page = write_page(&dir, &leaking_report());
    let run = chromium(&page, &[]);
    assert_clean(&run);
    assert!(
        run.dom.contains("data-ready=\"1\""),
        "script did not finish:\n{}",
        run.dom
    );
    assert!(run
        .dom
        .contains("LEAK: 3.2 MiB/h at leak_site (fixture.c:42) ← worker — cgroup OOM in ~6.5 h"));
    // The slider script ran: the last snapshot is shown.
    assert!(run.dom.contains("snapshot 12 at 6.0 h (13 of 13)"));
    // The totals reconciled, the target's own cgroup.
    assert!(run.dom.contains("RSS 31.0 MiB = 27.0 MiB anonymous + 4.0 MiB file-backed"), "{}", run.dom);
    assert!(run.dom.contains("cgroup usage 42.0 MiB = 38.0 MiB anonymous + 3.0 MiB page cache + 1.0 MiB kernel and other (the target's own memory cgroup)"));
}

#[test]
fn shared_memory_cgroup_is_said_in_the_report() {
    let dir = temp_dir("shared");
    let mut report = leaking_report();
    report.memory.shared = Some(SharedMemory { other_processes: 41, cgroup: "/sys/fs/cgroup/memory".into() });
    let page = write_page(&dir, &report);
    let run = chromium(&page, &[]);
    assert_clean(&run);
    assert!(run.dom.contains("shared with 41 other processes: not the target's own usage"), "{}", run.dom);
    assert!(run.dom.contains("cgroup usage (shared)"));
    let timeline = memprof::output::timeline_svg(&report, 5);
    assert!(!timeline.contains("cgroup memory usage"), "a shared cgroup's usage is plotted");
    assert!(memprof::output::timeline_svg(&leaking_report(), 5).contains("cgroup memory usage"));
}

#[test]
fn clean_report_loads_cleanly_in_chromium() {
    let dir = temp_dir("clean");
    let mut report = leaking_report();
    report.stacks.retain(|s| s.class != "leak");
    report.oom_kills.clear();
    report.oom_eta_s = None;
    report.snapshots.clear();
    let page = write_page(&dir, &report);
    let run = chromium(&page, &[]);
    assert_clean(&run);
    assert!(run.dom.contains("data-ready=\"1\""));
    assert!(run.dom.contains("No leak found"));
    assert!(run.dom.contains("No snapshots were taken."));
}

/// Chromium shows XML errors in the page ("This page contains the following errors"), so this
/// catches an ill-formed timeline, even for the empty chart.
#[test]
fn timeline_svg_is_well_formed_xml() {
    let dir = temp_dir("timeline");
    for (name, report) in [("full", leaking_report()), ("empty", Report::default())] {
        let path = dir.join(format!("timeline-{name}.svg"));
        write_timeline_svg(&path, &report, 5).unwrap();
        let run = chromium(&path, &[]);
        assert_clean(&run);
        assert!(run.dom.contains("<svg"), "{}", run.dom);
        assert!(!run.dom.contains("parsererror"), "{name}: {}", run.dom);
    }
}
