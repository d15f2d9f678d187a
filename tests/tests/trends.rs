//! Leaks over time: classification of three stacks with known behaviour, the leak rate, and the
//! time-series artifacts (growth and timeline SVGs, report.html in Chromium, pprof through an
//! independent decoder).

use std::{path::Path, process::Command};

use memprof_tests::*;
use serde_json::Value;

/// How long the fixture runs its three threads.
const RUN_S: &str = "40";
/// The fixture's leak rate (LEAK_BYTES every LEAK_PERIOD_NS).
const LEAK_RATE: f64 = 100_000.0;

fn stack_for<'a>(summary: &'a Value, func: &str) -> &'a Value {
    let found = stacks_with(summary, func);
    assert_eq!(found.len(), 1, "one stack for {func}:\n{}", describe_stacks(summary));
    found[0]
}

#[test]
fn leak_cache_and_churn_are_told_apart() {
    require_root();
    let cg = TestCgroup::new();
    let mut fx = Fixture::start("trends", &[RUN_S], Some(&cg));
    let dir = output_dir("trends");
    let args = [
        "--cgroup".to_string(),
        cg.name(),
        "--interval".into(),
        "1s".into(),
        "--output".into(),
        dir.display().to_string(),
    ];
    let mut mp = Memprof::start(&args);
    mp.wait_attached(ATTACH_TIMEOUT);
    fx.go();
    let truth = fx.wait_truth();
    // Stop right after the run: a flat tail would lower the fitted leak rate.
    mp.interrupt();
    let run = mp.finish_ok(FINISH_TIMEOUT);
    let summary = read_summary(&dir);
    println!("{}", run.stdout);

    let leak = stack_for(&summary, "leak_steady");
    let cache = stack_for(&summary, "cache_insert");
    assert_eq!(leak["class"], "leak", "leak_steady: {leak}");
    assert_eq!(cache["class"], "cache", "cache_insert: {cache}");
    let rate = leak["growth_bytes_per_s"].as_f64().expect("growth_bytes_per_s");
    let err = (rate - LEAK_RATE) / LEAK_RATE * 100.0;
    println!("leak rate: expected {LEAK_RATE} B/s, measured {rate:.0} B/s ({err:+.2} %)");
    assert!(err.abs() <= 10.0, "leak rate {rate} B/s is {err:+.1} % off {LEAK_RATE}");
    assert!(leak["series"].as_array().is_some_and(|s| s.len() >= 20), "series: {leak}");
    // Churn holds at most 32 small blocks: either gone at the end or classified churn.
    for s in stacks_with(&summary, "churn_work") {
        assert_eq!(s["class"], "churn", "churn_work: {s}");
    }
    let leaked = truth.sites["leak_steady"];
    assert!(error_pct(leaked, site_bytes(&summary, "leak_steady")).abs() <= TOLERANCE_PCT);

    // Time series and memory in summary.json.
    let snaps = summary["snapshots"].as_array().expect("snapshots");
    assert!(snaps.len() >= 30, "{} snapshots", snaps.len());
    assert!(snaps.iter().all(|s| s.get("cgroup_usage_bytes").is_some()));
    assert!(summary.get("oom_eta_s").is_some(), "oom_eta_s missing");
    assert_eq!(summary["oom_kills"], Value::Array(Vec::new()));
    assert!(summary["memory"]["tracked_bytes"].as_u64().unwrap() > 0);

    for f in ["growth.svg", "timeline.svg", "report.html", "profile.pb.gz"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let growth = std::fs::read_to_string(dir.join("growth.svg")).unwrap();
    assert!(growth.contains("leak_steady"), "growth.svg does not show the leak");
    check_html_in_chromium(&dir.join("report.html"));
    check_pprof(&dir.join("profile.pb.gz"));
    // The terminal verdict table names the leak.
    assert!(run.stdout.lines().any(|l| l.contains("leak ") && l.contains("leak_steady")), "{}", run.stdout);
}

/// Opens the report in headless Chromium: it must finish its script (data-ready) without any
/// console error.
fn check_html_in_chromium(page: &Path) {
    let dom = rendered_dom(page);
    assert!(dom.contains("LEAK"), "the verdict does not say LEAK");
}

/// Decodes profile.pb.gz with protoc (an independent protobuf decoder) and the upstream
/// profile.proto.
fn check_pprof(path: &Path) {
    let gz = std::fs::read(path).unwrap();
    let raw = gunzip(&gz);
    let proto_dir = workspace_root().join("memprof/tests/data");
    let mut child = Command::new("protoc")
        .arg("--decode=perftools.profiles.Profile")
        .arg("-I")
        .arg(&proto_dir)
        .arg("profile.proto")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("cannot run protoc: run `cargo xtask setup`");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), &raw).unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "protoc could not decode profile.pb.gz");
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["inuse_space", "inuse_objects", "alloc_space", "alloc_objects", "leak_steady"] {
        assert!(text.contains(needle), "pprof lacks {needle}");
    }
}

/// gunzip with the system's gzip, independent of memprof's own encoder.
fn gunzip(gz: &[u8]) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .arg("-dc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gzip");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), gz).unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "gzip -d failed");
    out.stdout
}

