//! Python services: memprof on real CPython 3.9–3.14 (the host's pyenv 3.11 with a shared
//! libpython, Debian's static 3.11, and Debian/Ubuntu interpreters in podman containers), on
//! `tests/fixtures/python/leaky.py`, whose ground truth says what each Python function keeps.
//!
//! What is checked, per interpreter:
//! - memprof finds the interpreter and walks its frames (`summary.json` `runtimes`), with no
//!   failed Python walk;
//! - every site's stacks carry the site's Python function by its qualified name (a method as
//!   `Store.leak_small`, a comprehension as `<listcomp>` up to 3.11), with the file and the line
//!   of the allocating statement, under whole stacks (`Thread._bootstrap` → `run_site` → site);
//! - per-site bytes: within 5 % where memprof tracks Python's object allocator (a build whose
//!   pymalloc it can probe: pyenv's); where an optimised build inlines pymalloc (every
//!   distribution's), the sites that allocate through malloc (large bytes objects, ctypes)
//!   are within 5 %, and the small objects are counted by the arena pages they first touch,
//!   under the Python function that touched them, within [`PAGED_TOLERANCE_PCT`] of what they
//!   occupy in pymalloc's 16-byte size classes (a 28-byte int of 3.9 fills a 32-byte block);
//! - churn holds nearly nothing.
//!
//! Then: workers forked without exec, `--mode rss`, sampling, `--no-python`, an interpreter
//! memprof does not walk (3.15), and the OpenTelemetry SDK exporter of the seed report.

use std::time::Duration;

use memprof_tests::{
    python::{PyFixture, PyOptions, PyTarget, PyTruth, Suite, site_packages},
    *,
};
use serde_json::Value;

/// A line on the real stdout (shows with `cargo test` even when the test passes).
fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "[python] {line}");
    let _ = out.flush();
}

/// Allowed error of a per-function byte count, in percent.
const SITE_TOLERANCE_PCT: f64 = 5.0;
/// Allowed error of small objects counted by the arena pages they first touch, against what they
/// occupy in pymalloc's size classes (`block_bytes` of the truth). Usually within 2.5 %; a page
/// is charged whole to the site that touched it first, with whatever else ends up in it (blocks
/// its temporaries freed, another thread's objects): one run in ten put a 1 MB site at +10 %.
const PAGED_TOLERANCE_PCT: f64 = 12.0;

/// The frame memprof puts at the leaf of pymalloc arena stacks (`runtime/python/frames.rs`).
const ARENA_FRAME: &str = "[python objects in a pymalloc arena]";

/// The stacks for which `pred` holds.
fn stacks_matching(summary: &Value, pred: impl Fn(&Value) -> bool) -> Vec<&Value> {
    stacks(summary).iter().filter(|s| pred(s)).collect()
}

/// Whether a stack ends in the arena frame.
fn is_arena(stack: &Value) -> bool {
    frames(stack).last().is_some_and(|f| *f == ARENA_FRAME)
}

/// Python frames of a stack (root → leaf): (function, file, line).
fn python_frames(stack: &Value) -> Vec<(String, String, u64)> {
    frame_details(stack)
        .iter()
        .filter(|d| d["module"] == "[python]")
        .map(|d| {
            (
                d["function"].as_str().unwrap_or("").to_string(),
                d["file"].as_str().unwrap_or("").to_string(),
                d["line"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// The name memprof gives the site's frame: the code object's `co_qualname` (3.11+), or its
/// `co_name` before (code objects had no qualified name).
fn frame_name(truth: &PyTruth, site: &str) -> String {
    let qual = truth.qualname(site).unwrap_or(site);
    let minor = truth.extras["python"].as_str().and_then(|v| v.split('.').nth(1)).and_then(|m| m.parse::<u32>().ok());
    match minor {
        Some(m) if m <= 10 => qual.rsplit('.').next().unwrap_or(qual).to_string(),
        _ => qual.to_string(),
    }
}

/// The stacks allocated in `site` (a Python frame of the site's function, or of its
/// comprehension), arena stacks aside.
fn site_stacks<'a>(summary: &'a Value, truth: &PyTruth, site: &str) -> Vec<&'a Value> {
    let qual = frame_name(truth, site);
    stacks_matching(summary, |s| {
        !is_arena(s)
            && python_frames(s).iter().any(|(f, _, _)| *f == qual)
    })
}

/// memprof on a started fixture: `--cgroup` of its container or its test cgroup, go, truth,
/// 2 s more, SIGINT. Returns the truth and summary.json.
fn profile(fx: &mut PyFixture, cgroup: Option<&TestCgroup>, extra: &[&str], label: &str) -> (PyTruth, Value, String) {
    let dir = output_dir(label);
    let cg = match (fx.container(), cgroup) {
        (Some(c), _) => c.cgroup_path().expect("container cgroup").display().to_string(),
        (None, Some(cg)) => cg.path().display().to_string(),
        (None, None) => panic!("a host fixture must run in a test cgroup"),
    };
    let mut args: Vec<String> = vec!["--cgroup".into(), cg, "--interval".into(), "1s".into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(["--output".into(), dir.display().to_string()]);
    let mut mp = Memprof::start(&args);
    mp.wait_attached(ATTACH_TIMEOUT);
    fx.go();
    let truth = fx.wait_truth();
    sleep(Duration::from_secs(2));
    assert!(mp.is_running(), "memprof ended early; stderr:\n{}", mp.stderr());
    mp.interrupt();
    let done = mp.finish_ok(FINISH_TIMEOUT);
    (truth, read_summary(&dir), done.stderr)
}

/// The process's entry in `runtimes.processes`.
fn runtime_entry<'a>(summary: &'a Value, pid: u32) -> &'a Value {
    summary["runtimes"]["processes"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["pid"].as_u64() == Some(pid as u64)))
        .unwrap_or_else(|| panic!("pid {pid} not in runtimes.processes: {}", summary["runtimes"]))
}

/// Whether memprof tracked the interpreter's objects one by one (else: by arena).
fn objects_tracked(entry: &Value) -> bool {
    entry["details"]["object_allocator"].as_str().is_some_and(|s| s.starts_with("probed"))
}

fn walk_failures(summary: &Value) -> u64 {
    summary["runtimes"]["python_walk_failed"].as_object().map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
}

/// One interpreter: frames, names, lines, and per-site bytes. Returns the table row text.
fn check_interpreter(target: PyTarget, extra: &[&str]) -> String {
    say(&target.prepare());
    let cg = (!target.is_container()).then(TestCgroup::new);
    let mut fx = target.start_with("leaky.py", &["--threads", "2"], &PyOptions { cgroup: cg.as_ref(), ..Default::default() });
    let label = format!("python-{}{}", target.label(), extra.join(""));
    let (truth, summary, stderr) = profile(&mut fx, cg.as_ref(), extra, &label);
    let pid = fx.pid();
    let entry = runtime_entry(&summary, pid);
    assert_eq!(entry["frames"], "walked", "{}: {entry}\n{stderr}", target.label());
    let version = entry["version"].as_str().unwrap_or("");
    assert!(version.starts_with(&format!("3.{}", target.minor())), "{}: version {version}", target.label());
    assert_eq!(walk_failures(&summary), 0, "{}: {}", target.label(), summary["runtimes"]);
    assert!(summary["runtimes"]["python_frames"].as_u64().unwrap_or(0) > 0);
    let tracked = objects_tracked(entry);
    let paged = entry["heap_pages"].as_bool() == Some(true);
    let mut table = format!(
        "{} (CPython {version}, objects {}):\n  {:<14} {:>10} {:>10} {:>8}\n",
        target.label(),
        if tracked {
            "tracked one by one"
        } else if paged {
            "counted by arena page"
        } else {
            "counted by arena"
        },
        "site",
        "truth B",
        "measured",
        "error"
    );
    let mut failures = Vec::new();
    for (site, &expected) in &truth.truth.sites {
        let stacks = site_stacks(&summary, &truth, site);
        let measured = bytes_of(&stacks);
        // Counted by page: what the objects occupy, in pymalloc's 16-byte size classes.
        let expected = match truth.extras["block_bytes"][site.as_str()].as_u64() {
            Some(b) if paged => b,
            _ => expected,
        };
        let err = error_pct(expected.max(1), measured);
        table.push_str(&format!("  {site:<14} {expected:>10} {measured:>10} {err:>+7.2}%\n"));
        // Names, files, lines: the site's frame in its stacks.
        let qual = frame_name(&truth, site);
        let qual = qual.as_str();
        let line = truth.line(site).unwrap_or(0);
        let file = truth.file(site).unwrap_or("leaky.py");
        let through_malloc = matches!(site.as_str(), "leak_large" | "leak_nogil");
        if expected > 0 && (tracked || paged || through_malloc) {
            let Some(big) = stacks.iter().max_by_key(|s| s["bytes"].as_u64()) else {
                failures.push(format!("{site}: no stack names {qual}"));
                continue;
            };
            let py = python_frames(big);
            let (_, f, l) = py.iter().rev().find(|(n, _, _)| n == qual || truth.extras["comprehension"] == n.as_str()).unwrap();
            if !f.ends_with(file) || *l != line {
                failures.push(format!("{site}: {qual} at {f}:{l}, expected {file}:{line}"));
            }
            let names: Vec<&str> = py.iter().map(|p| p.0.as_str()).collect();
            if !names.contains(&"run_site") || !names.iter().any(|n| n.ends_with("_bootstrap")) {
                failures.push(format!("{site}: Python frames {names:?} do not run back to the thread's start"));
            }
            if !stack_is_whole(big) {
                failures.push(format!("{site}: its stack is not whole ({:?})", stack_unwind(big)));
            }
            if let Some(c) = truth.extras["comprehension"].as_str() {
                if site == "leak_listcomp" && !names.contains(&c) {
                    failures.push(format!("{site}: no {c} frame in {names:?}"));
                }
            }
        }
        // Bytes: exact where objects are tracked; through malloc otherwise.
        let tolerance = if tracked || through_malloc { SITE_TOLERANCE_PCT } else { PAGED_TOLERANCE_PCT };
        if expected > 0 && (tracked || paged || through_malloc) && err.abs() > tolerance {
            failures.push(format!("{site}: expected {expected} B, measured {measured} B ({err:+.2} %)"));
        }
    }
    let churn = bytes_of(&site_stacks(&summary, &truth, "churn"));
    let small = truth.truth.sites.get("leak_small").copied().unwrap_or(0);
    if churn > small / 20 {
        failures.push(format!("churn holds {churn} B (leak_small: {small} B)"));
    }
    if paged {
        // Every arena followed page by page: none counted whole.
        let arenas = bytes_of(&stacks_matching(&summary, is_arena));
        table.push_str(&format!("  {:<14} {:>10} {arenas:>10}\n", "(arenas)", "-"));
        if arenas != 0 || summary["stats"]["python_arenas_paged"].as_u64().unwrap_or(0) == 0 {
            failures.push(format!("arenas counted whole: {arenas} B; arenas paged: {}", summary["stats"]["python_arenas_paged"]));
        }
    } else if !tracked {
        // The small objects are in arenas: named as such, never pinned on a Python function.
        let arenas = bytes_of(&stacks_matching(&summary, is_arena));
        table.push_str(&format!("  {:<14} {:>10} {arenas:>10}\n", "(arenas)", "-"));
        if arenas == 0 {
            failures.push("no pymalloc arena stack".into());
        }
        let f = summary["functions"].as_array().cloned().unwrap_or_default();
        if !f.iter().any(|f| f["function"] == ARENA_FRAME) {
            failures.push(format!("no {ARENA_FRAME} in the functions rollup"));
        }
    }
    say(&table);
    assert!(failures.is_empty(), "{}:\n{}\n{table}\nstacks:\n{}", target.label(), failures.join("\n"), describe_stacks(&summary));
    table
}

#[test]
fn python_host_shared_objects_tracked() {
    require_root();
    check_interpreter(PyTarget::HostShared, &[]);
}

/// `--no-python-objects`: a build whose object allocator memprof could probe, its small objects
/// counted by arena page on request (large objects and native allocations stay exact).
#[test]
fn python_host_shared_objects_by_arena() {
    require_root();
    check_interpreter(PyTarget::HostShared, &["--no-python-objects"]);
}

#[test]
fn python_host_static_stripped() {
    require_root();
    check_interpreter(PyTarget::HostStatic, &[]);
}

#[test]
fn python_in_containers_3_9_to_3_14() {
    require_root();
    let mut tables = Vec::new();
    for s in Suite::ALL {
        tables.push(check_interpreter(PyTarget::Container(s), &[]));
    }
    say(&tables.join("\n"));
}

/// Arenas counted by page come and go: what an emptied arena held is released when pymalloc
/// unmaps it; what is kept stays (`tests/fixtures/python/arenas.py`).
#[test]
fn python_arena_pages_released() {
    require_root();
    for (target, extra) in [(PyTarget::HostStatic, &[][..]), (PyTarget::HostShared, &["--no-python-objects"][..])] {
        let cg = (!target.is_container()).then(TestCgroup::new);
        let mut fx = target.start_with("arenas.py", &[], &PyOptions { cgroup: cg.as_ref(), ..Default::default() });
        let (truth, summary, stderr) = profile(&mut fx, cg.as_ref(), extra, &format!("python-arenas-{}", target.label()));
        let entry = runtime_entry(&summary, fx.pid());
        assert_eq!(entry["heap_pages"], true, "{}: {entry}\n{stderr}", target.label());
        let kept = bytes_of(&site_stacks(&summary, &truth, "keep"));
        let expected = truth.truth.sites["keep"];
        let left = bytes_of(&site_stacks(&summary, &truth, "fill_and_free"));
        let freed = truth.extras["freed_bytes"].as_u64().unwrap_or(0);
        say(&format!(
            "{}: arenas paged {}; keep {kept} B of {expected} B ({:+.2} %); fill_and_free {left} B left of {freed} B made and freed",
            target.label(),
            summary["stats"]["python_arenas_paged"],
            error_pct(expected, kept)
        ));
        assert!(summary["stats"]["python_arenas_paged"].as_u64().unwrap_or(0) > 0, "{}", summary["stats"]);
        // The unmapped arenas' pages went: what is left is the kept objects' memory (counted
        // under whichever function touched each page first: pages fill_and_free touched in the
        // arenas pymalloc kept were reused by keep), plus at most a few arenas pymalloc keeps.
        let total = kept + left;
        assert!(
            total * 10 >= expected * 9 && total <= expected + (4 << 20) && kept > 0,
            "keep {kept} B + fill_and_free {left} B, expected about {expected} B ({freed} B were freed)\n{}",
            describe_stacks(&summary)
        );
    }
}

/// A deep Python stack (100 nested calls) comes out whole: every frame, in order.
#[test]
fn python_deep_stack_is_whole() {
    require_root();
    for target in [PyTarget::HostShared, PyTarget::Container(Suite::Trixie)] {
        let cg = (!target.is_container()).then(TestCgroup::new);
        let mut fx = target.start_with("deep.py", &["100"], &PyOptions { cgroup: cg.as_ref(), ..Default::default() });
        let (truth, summary, _) = profile(&mut fx, cg.as_ref(), &[], &format!("python-deep-{}", target.label()));
        let stacks = stacks_matching(&summary, |s| python_frames(s).iter().any(|(f, _, _)| f == "keep_at_the_bottom"));
        let expected = truth.truth.sites["keep_at_the_bottom"];
        assert_eq!(bytes_of(&stacks), expected, "{}", describe_stacks(&summary));
        let py = python_frames(stacks[0]);
        let recursion = py.iter().filter(|(f, _, _)| f == "recurse").count();
        say(&format!("{}: {} Python frames, {recursion} of recurse; unwind {:?}", target.label(), py.len(), stack_unwind(stacks[0])));
        assert_eq!(recursion, 101, "{:?}", py.iter().map(|p| &p.0).collect::<Vec<_>>());
        assert!(stack_is_whole(stacks[0]), "{:?}", stack_unwind(stacks[0]));
        assert_eq!(summary["runtimes"]["python_walk_failed"]["depth"], 0);
    }
}

/// gunicorn-style workers forked without exec: each gets its Python frames.
#[test]
fn python_forked_workers() {
    require_root();
    for target in [PyTarget::HostStatic, PyTarget::Container(Suite::Trixie)] {
        let cg = (!target.is_container()).then(TestCgroup::new);
        let mut fx = target.start_with("leaky.py", &["--fork", "3"], &PyOptions { cgroup: cg.as_ref(), ..Default::default() });
        let (truth, summary, _) = profile(&mut fx, cg.as_ref(), &[], &format!("python-fork-{}", target.label()));
        assert_eq!(truth.worker_pids.len(), 3);
        for &w in &truth.worker_pids {
            assert_eq!(runtime_entry(&summary, w)["frames"], "walked", "worker {w}");
        }
        let stacks = site_stacks(&summary, &truth, "leak_in_worker");
        let measured = bytes_of(&stacks);
        let expected = truth.truth.sites["leak_in_worker"];
        let pids: std::collections::BTreeSet<u64> =
            stacks.iter().flat_map(|s| s["pids"].as_array().unwrap().iter().filter_map(Value::as_u64)).collect();
        say(&format!("{}: workers {:?}: leak_in_worker {expected} B, measured {measured} B", target.label(), truth.worker_pids));
        assert!(error_pct(expected, measured).abs() <= SITE_TOLERANCE_PCT, "{expected} vs {measured}\n{}", describe_stacks(&summary));
        for w in &truth.worker_pids {
            assert!(pids.contains(&(*w as u64)), "worker {w} not in {pids:?}");
        }
        assert_eq!(walk_failures(&summary), 0);
    }
}

/// `--mode rss`: no uprobes; pages by the stack that touched them first, with Python frames,
/// on a build whose object allocator memprof probes and on one that inlines it (rss mode needs
/// neither).
#[test]
fn python_rss_mode_names_the_leaking_functions() {
    require_root();
    for target in [PyTarget::HostShared, PyTarget::HostStatic] {
        let cg = TestCgroup::new();
        let mut fx = target.start_with("leaky.py", &["--threads", "2"], &PyOptions { cgroup: Some(&cg), ..Default::default() });
        let (truth, summary, _) = profile(&mut fx, Some(&cg), &["--mode", "rss"], &format!("python-rss-{}", target.label()));
        let mut table = format!("--mode rss ({}):\n", target.label());
        for (site, &expected) in &truth.truth.sites {
            let measured = bytes_of(&site_stacks(&summary, &truth, site));
            table.push_str(&format!(
                "  {site:<14} truth {expected:>9} B  pages first touched {measured:>9} B ({:+.1} %)\n",
                error_pct(expected.max(1), measured)
            ));
        }
        say(&table);
        // Large objects fill their own pages: their site gets them, to within page rounding.
        let large = truth.truth.sites["leak_large"];
        let measured = bytes_of(&site_stacks(&summary, &truth, "leak_large"));
        assert!(measured as f64 >= large as f64 * 0.8 && measured as f64 <= large as f64 * 1.3, "{table}");
        // Every leaking site is named.
        for site in ["leak_small", "leak_large", "leak_nogil", "leak_listcomp"] {
            assert!(!site_stacks(&summary, &truth, site).is_empty(), "{site} not named\n{table}");
        }
        assert_eq!(walk_failures(&summary), 0);
    }
}

/// `--sample-bytes`: Python sites estimated within 10 % (objects tracked one by one).
#[test]
fn python_sampled() {
    require_root();
    let cg = TestCgroup::new();
    let mut fx = PyTarget::HostShared.start_with("leaky.py", &["--threads", "2", "--scale", "4"], &PyOptions { cgroup: Some(&cg), ..Default::default() });
    let (truth, summary, _) = profile(&mut fx, Some(&cg), &["--sample-bytes", "4096"], "python-sampled");
    let mut all = (0u64, 0u64);
    for site in ["leak_small", "leak_large", "leak_listcomp", "leak_nogil"] {
        let expected = truth.truth.sites[site];
        let measured = bytes_of(&site_stacks(&summary, &truth, site));
        say(&format!("sampled {site}: {expected} B, estimated {measured} B ({:+.1} %)", error_pct(expected, measured)));
        all.0 += expected;
        all.1 += measured;
    }
    assert!(error_pct(all.0, all.1).abs() <= 10.0, "sites together: {} vs {}", all.0, all.1);
    assert!(summary["stats"]["unsampled"].as_u64().unwrap_or(0) > 0);
}

/// Sampling on an optimised build, whose small objects are counted by arena page: the
/// page-fault program (which samples pages like allocations) loads and follows the arenas.
/// Its sampling arithmetic was once refused by the verifier there, leaving arenas uncounted.
#[test]
fn python_sampled_arena_pages() {
    require_root();
    let cg = TestCgroup::new();
    let mut fx = PyTarget::HostStatic.start_with("leaky.py", &["--threads", "2", "--scale", "4"], &PyOptions { cgroup: Some(&cg), ..Default::default() });
    let (truth, summary, stderr) = profile(&mut fx, Some(&cg), &["--sample-bytes", "4096"], "python-sampled-pages");
    assert_eq!(summary["lost"]["optional_tracepoints_missing"].as_u64(), Some(0), "{stderr}");
    assert!(stderr.contains("page faults followed"), "{stderr}");
    assert!(summary["runtimes"]["python_arenas_paged"].as_u64().unwrap_or(0) > 0, "{}", summary["runtimes"]);
    let expected = truth.truth.sites["leak_small"];
    let measured = bytes_of(&site_stacks(&summary, &truth, "leak_small"));
    say(&format!("sampled arena pages leak_small: {expected} B, estimated {measured} B ({:+.1} %)", error_pct(expected, measured)));
    assert!(error_pct(expected, measured).abs() <= 15.0, "leak_small: {expected} B vs {measured} B");
}

/// `--no-python`: the interpreter's own frames only, no probes on its object allocator.
#[test]
fn python_off_with_no_python() {
    require_root();
    let cg = TestCgroup::new();
    let mut fx = PyTarget::HostShared.start_with("leaky.py", &[], &PyOptions { cgroup: Some(&cg), ..Default::default() });
    let (_, summary, _) = profile(&mut fx, Some(&cg), &["--no-python"], "python-off");
    assert!(stacks(&summary).iter().all(|s| python_frames(s).is_empty()));
    assert!(summary["runtimes"]["processes"].as_array().is_none_or(Vec::is_empty));
    assert!(!summary["probes"].as_array().unwrap().iter().any(|p| p["function"] == "PyObject_Malloc"));
}

/// An interpreter memprof does not walk (3.15): native stacks as before, one line saying why.
#[test]
fn python_unsupported_version_degrades() {
    require_root();
    let opts = PyOptions { interpreter: Some("/usr/bin/python3.15".into()), ..Default::default() };
    let mut fx = PyTarget::Container(Suite::Sid).start_with("leaky.py", &[], &opts);
    let (truth, summary, stderr) = profile(&mut fx, None, &[], "python-unsupported");
    let entry = runtime_entry(&summary, fx.pid());
    assert_eq!(entry["frames"], "unsupported", "{entry}");
    assert!(entry["why"].as_str().unwrap_or("").contains("3.15"), "{entry}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("Python frames missing")).collect();
    assert_eq!(lines.len(), 1, "one line per process:\n{stderr}");
    assert!(stacks(&summary).iter().all(|s| python_frames(s).is_empty()));
    // The native stacks are still there: the large objects, under the interpreter's C code.
    let total: u64 = stacks(&summary).iter().filter_map(|s| s["bytes"].as_u64()).sum();
    assert!(total >= truth.truth.sites["leak_large"], "{total}");
}

/// The seed report: a real `opentelemetry-sdk` BatchSpanProcessor whose exporter keeps every
/// failed batch, while requests keep coming. The exporter's function must be among the top
/// leaking Python functions (the other leaking ones are the SDK's, creating the spans the
/// exporter keeps alive).
#[test]
fn python_opentelemetry_exporter_keeps_failed_batches() {
    require_root();
    for target in [PyTarget::HostShared, PyTarget::Container(Suite::Trixie)] {
        let site = site_packages(target, &["opentelemetry-sdk"]);
        let cg = (!target.is_container()).then(TestCgroup::new);
        let opts = PyOptions { cgroup: cg.as_ref(), site: Some(site), ..Default::default() };
        let mut fx = target.start_with("otel_exporter.py", &["--forever"], &opts);
        let (truth, summary, _) = profile(&mut fx, cg.as_ref(), &[], &format!("python-otel-{}", target.label()));
        let export = truth.extras["qualnames"]["export"].as_str().unwrap_or("RetryingExporter.export").to_string();
        let functions = summary["functions"].as_array().cloned().unwrap_or_default();
        let named: Vec<String> = functions
            .iter()
            .take(6)
            .map(|f| format!("{} {} B {} {:.0} B/s", f["function"], f["bytes"], f["class"], f["growth_bytes_per_s"].as_f64().unwrap_or(0.0)))
            .collect();
        say(&format!("{} opentelemetry: top Python functions:\n  {}", target.label(), named.join("\n  ")));
        let top_stack = stacks(&summary)
            .first()
            .map(|s| frames(s).iter().rev().take(12).cloned().collect::<Vec<_>>().join(" ← "))
            .unwrap_or_default();
        say(&format!("{} opentelemetry: top stack: {top_stack}", target.label()));
        let exporter: u64 = bytes_of(&stacks_matching(&summary, |s| python_frames(s).iter().any(|(f, _, _)| f.starts_with(&export))));
        let all: u64 = stacks(&summary).iter().filter_map(|s| s["bytes"].as_u64()).sum();
        say(&format!("{}: under {export}: {exporter} of {all} B live", target.label()));
        assert!(exporter > 0, "nothing under {export}:\n{}", describe_stacks(&summary));
        if objects_tracked(runtime_entry(&summary, fx.pid())) {
            let leaking: Vec<&Value> = functions.iter().filter(|f| f["class"] == "leak").take(3).collect();
            assert!(
                leaking.iter().any(|f| f["function"].as_str().unwrap_or("").starts_with(&export)),
                "{export} not among the top leaking functions: {named:?}"
            );
        }
    }
}
