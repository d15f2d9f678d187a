//! Node.js with no flags: JS frames read from V8's own frames and heap (issue 11).
//!
//! `tests/fixtures/node_sites.js` leaks Buffers of a known size from four JS functions: a small
//! one that TurboFan inlines into the loop calling it (V8's own `--trace-turbo-inlining` says so
//! in a calibration run), a class method, an arrow function and an async function. memprof must
//! put ≥ 90 % of each site's Buffer bytes under a JS frame naming that function, in the
//! fixture's file, at the line of its `Buffer.alloc` — on the host's node started with no flags,
//! and in a podman container running Debian 13's own node (`libnode.so.115`). The inlined
//! function must come out as a frame of its own (`inlined`), under its caller.
//!
//! Run serially: `cargo test -p memprof-tests --test node -- --test-threads=1`.

use std::{collections::BTreeMap, io::Write, time::Duration};

use memprof_tests::{node::*, *};
use serde_json::Value;

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "[node] {line}");
    let _ = out.flush();
}

const SITES: [&str; 4] = ["leakyHandler", "remember", "arrowLeak", "asyncLeak"];

/// The 1-based line of the first line of the fixture containing `needle`.
fn fixture_line(needle: &str) -> u32 {
    let src = std::fs::read_to_string(fixtures_src_dir().join("node_sites.js")).expect("node_sites.js");
    src.lines().position(|l| l.contains(needle)).map(|i| i as u32 + 1).unwrap_or_else(|| panic!("no {needle:?} in node_sites.js"))
}

/// What the stacks of one site hold.
#[derive(Debug, Default)]
struct Site {
    /// Buffer bytes (backing stores, from Node's ArrayBuffer allocator) under a JS frame of the
    /// site's function in the fixture's file.
    bytes: u64,
    /// Of those, the bytes whose frame of the function is an inlined one.
    inlined: u64,
    /// ... whose frame of the function is at the line of its `Buffer.alloc`.
    at_line: u64,
    /// ... whose frame of the function has the expected caller (`leakyHandler` only:
    /// `serveRequests`, at the line of its call).
    under_caller: u64,
    /// Lines seen on the function's frames, with bytes.
    lines: BTreeMap<String, u64>,
}

fn js_frames(stack: &Value) -> Vec<&Value> {
    frame_details(stack).iter().filter(|d| d["module"] == "[js]").collect()
}

/// Per site, from the summary of a run of `node_sites.js`.
fn sites(summary: &Value) -> BTreeMap<&'static str, Site> {
    let caller_line = fixture_line("leakyHandler(i, into);");
    let mut out: BTreeMap<&'static str, Site> = SITES.iter().map(|&s| (s, Site::default())).collect();
    for s in stacks(summary) {
        if !frames(s).iter().any(|f| f.contains("NodeArrayBufferAllocator::Allocate")) {
            continue;
        }
        let bytes = s["bytes"].as_u64().unwrap_or(0);
        let js = js_frames(s);
        for &site in &SITES {
            // Innermost frame of the function (frames are root → leaf).
            let Some(i) = js.iter().rposition(|d| {
                d["function"] == site && d["file"].as_str().is_some_and(|f| f.ends_with("node_sites.js"))
            }) else {
                continue;
            };
            let d = js[i];
            let e = out.get_mut(site).unwrap();
            e.bytes += bytes;
            if detail_inlined(d) {
                e.inlined += bytes;
            }
            let want = fixture_line(&format!("Buffer.alloc(SIZES.{site})"));
            if d["line"].as_u64() == Some(u64::from(want)) {
                e.at_line += bytes;
            }
            *e.lines.entry(d["line"].to_string()).or_default() += bytes;
            if i > 0 && js[i - 1]["function"] == "serveRequests" && js[i - 1]["line"].as_u64() == Some(u64::from(caller_line)) {
                e.under_caller += bytes;
            }
        }
    }
    out
}

/// The checks shared by the host and container runs; returns the failures.
fn check_sites(summary: &Value, truth: &GroundTruth, expect_inlined: bool) -> Vec<String> {
    let mut failures = Vec::new();
    let found = sites(summary);
    for (&site, s) in &found {
        let t = truth.sites[site];
        let share = s.bytes as f64 / t as f64;
        say(&format!(
            "{site}: truth {t} B; under its JS frame {} B ({:.1} %), inlined {:.1} %, at its line {:.1} %, lines {:?}",
            s.bytes,
            share * 100.0,
            s.inlined as f64 / t as f64 * 100.0,
            s.at_line as f64 / t as f64 * 100.0,
            s.lines
        ));
        if !(0.9..=1.02).contains(&share) {
            failures.push(format!("{site}: {} B under its JS frame, truth {t} B ({:.1} %)", s.bytes, share * 100.0));
        }
        if (s.at_line as f64) < 0.9 * t as f64 {
            failures.push(format!("{site}: only {} B at the line of its Buffer.alloc (lines {:?})", s.at_line, s.lines));
        }
    }
    let lh = &found["leakyHandler"];
    let t = truth.sites["leakyHandler"] as f64;
    if (lh.under_caller as f64) < 0.9 * t {
        failures.push(format!("leakyHandler: only {} B under serveRequests at its call's line", lh.under_caller));
    }
    if expect_inlined && (lh.inlined as f64) < 0.5 * t {
        failures.push(format!(
            "leakyHandler: V8 inlined it, but only {} B ({:.1} %) are under an inlined frame of it",
            lh.inlined,
            lh.inlined as f64 / t * 100.0
        ));
    }
    let rt = &summary["runtimes"];
    if rt["js_frames"].as_u64().unwrap_or(0) == 0 {
        failures.push(format!("runtimes.js_frames is 0: {rt}"));
    }
    if !rt["processes"].as_array().is_some_and(|p| p.iter().any(|p| p["pid"] == truth.pid && p["runtime"] == "node" && p["frames"] == "walked")) {
        failures.push(format!("runtimes.processes has no walked node process {}: {rt}", truth.pid));
    }
    // The top function is the leaking one (Node's own modules left out).
    let top = summary["functions"].as_array().and_then(|f| f.first()).map(|f| f["function"].clone());
    if !top.as_ref().is_some_and(|f| f.as_str().is_some_and(|f| f.starts_with("leakyHandler"))) {
        failures.push(format!("the top JS function is {top:?}, not leakyHandler"));
    }
    // V8's heap pages are marked as such.
    let heap: Vec<&Value> = stacks(summary).iter().filter(|s| frames(s).last().is_some_and(|f| *f == "[V8 heap]")).collect();
    if heap.is_empty() {
        failures.push("no stack ends in a [V8 heap] frame (V8 maps pages for its heap as the fixture allocates)".into());
    }
    failures
}

fn report_failures(title: &str, failures: Vec<String>, summary: &Value) {
    assert!(
        failures.is_empty(),
        "{title}: {} check(s) failed:\n  {}\nruntimes: {}\nunnamed: {}",
        failures.len(),
        failures.join("\n  "),
        summary["runtimes"],
        summary["runtimes"]["unnamed_frames"]
    );
    say(&format!("{title}: all checks passed"));
}

/// The host's node, started with no flags: every site named; the inlined one as a frame of its
/// own under its caller.
#[test]
fn js_frames_without_flags() {
    require_root();
    let calibration = calibrate_inlining(&node_bin()).expect("calibration run");
    say(&format!("calibration: V8 inlined leakyHandler into serveRequests: {} ({:?})", calibration.inlined, calibration.lines.first()));
    assert!(
        calibration.inlined,
        "V8's --trace-turbo-inlining does not show leakyHandler inlined into serveRequests: the fixture does not test inlining"
    );
    let cg = TestCgroup::new();
    let mut fx = Fixture::start_node("node_sites.js", &[], &[], Some(&cg));
    let p = profile_fixture(&mut fx, &["--cgroup".into(), cg.name()], "node-sites");
    let failures = check_sites(&p.summary, &p.truth, true);
    report_failures("js_frames_without_flags", failures, &p.summary);
    drop(fx);
}

/// The same with `--perf-basic-prof`: V8 writes a perf map that could name the JIT frames, but
/// V8's own frames win (and name the inlined function the map cannot).
#[test]
fn js_frames_win_over_the_perf_map() {
    require_root();
    let cg = TestCgroup::new();
    let mut fx = Fixture::start_node("node_sites.js", &["--perf-basic-prof"], &[], Some(&cg));
    let p = profile_fixture(&mut fx, &["--cgroup".into(), cg.name()], "node-sites-perf-map");
    let map = std::fs::read_to_string(perf_map_path(fx.pid())).unwrap_or_default();
    let mut failures = check_sites(&p.summary, &p.truth, true);
    if !map.lines().any(|l| l.contains("serveRequests")) {
        failures.push(format!("node wrote no perf map naming serveRequests ({} lines)", map.lines().count()));
    }
    report_failures("js_frames_win_over_the_perf_map", failures, &p.summary);
    drop(fx);
}

/// Node in a podman container of Debian 13, with the container's own node (`libnode.so.115`).
#[test]
fn js_frames_in_a_container() {
    require_root();
    let mut nc = start_in_trixie(&[]).expect("node_sites.js in a Debian 13 container");
    let cgroup = nc.container.cgroup_path().expect("container cgroup").display().to_string();
    let dir = output_dir("node-container");
    let args = ["--cgroup".to_string(), cgroup, "--interval".into(), "1s".into(), "--output".into(), dir.display().to_string()];
    let mut mp = Memprof::start(&args);
    mp.wait_attached(Duration::from_secs(60));
    nc.fixture.go().expect("go");
    let truth = nc.fixture.wait_truth(TRUTH_TIMEOUT).expect("truth");
    sleep(Duration::from_secs(2));
    mp.interrupt();
    let _run = mp.finish_ok(Duration::from_secs(60));
    let summary = read_summary(&dir);
    let mut failures = check_sites(&summary, &truth, false);
    let procs = summary["runtimes"]["processes"].as_array().cloned().unwrap_or_default();
    let node = procs.iter().find(|p| p["pid"] == truth.pid);
    say(&format!("container's node: {node:?}"));
    if !node.is_some_and(|p| p["object"].as_str().is_some_and(|o| o.contains("libnode.so"))) {
        failures.push(format!("the container's node should be read from its own libnode.so: {node:?}"));
    }
    report_failures("js_frames_in_a_container", failures, &summary);
}
