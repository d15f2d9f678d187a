//! The Python test infrastructure itself, without memprof: every interpreter of
//! [`PyTarget::all`] (pyenv's shared-libpython 3.11 and Debian's static 3.11 on the host;
//! CPython 3.9, 3.10, 3.12, 3.13 and 3.14 in containers of their distributions) runs
//! `tests/fixtures/python/leaky.py`, whose ground truth is checked against tracemalloc
//! (`--verify`); the forked-workers mode and the OpenTelemetry scenario run too.
//!
//! Needs root, network access the first time (debootstrap, pip; the roots, images and package
//! folders are cached under `target/`), debootstrap, podman and runc (`cargo xtask setup`). Run
//! serially: `cargo test -p memprof-tests --test python_fixtures -- --test-threads=1` (the tests
//! also take a lock). Each test prints what it found and how long it took.

use std::{
    collections::BTreeSet,
    fs,
    io::Write,
    path::Path,
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use memprof_tests::{container::mapped_files, python::*, *};
use serde_json::Value;

/// Tests never overlap, even without `--test-threads=1`.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A line on the real stdout (shows with `cargo test` even when the test passes).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "[python] {line}");
    let _ = out.flush();
}

/// The sites of `leaky.py` (without `--fork`).
const SITES: [&str; 5] = [
    "churn",
    "leak_large",
    "leak_listcomp",
    "leak_nogil",
    "leak_small",
];

/// How far tracemalloc may be from the truth of a Python-object site: CPython may hand a site an
/// object it kept for reuse (a free list), or keep one more frame (3.9, 3.10).
const VERIFY_TOLERANCE_PCT: f64 = 0.25;

/// Failures collected over a test, reported together.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.0.push(msg());
        }
    }

    fn finish(self, title: &str, context: &str) {
        assert!(
            self.0.is_empty(),
            "{title}: {} check(s) failed:\n  {}\n{context}",
            self.0.len(),
            self.0.join("\n  ")
        );
        say(&format!("{title}: all checks passed"));
    }
}

/// The state letter of `/proc/PID/stat` (`None`: no such process).
fn proc_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn alive(pid: u32) -> bool {
    proc_state(pid).is_some_and(|s| s != 'Z')
}

/// Checks that process `pid` runs CPython 3.N the way `target` should: through a mapped
/// `libpython3.N.so` (shared) or as the `python3.N` executable without any libpython.
fn check_interpreter(f: &mut Failures, target: PyTarget, pid: u32) {
    let minor = target.minor();
    let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let libs: Vec<String> = mapped_files(pid, "libpython")
        .into_iter()
        .map(|(p, _, _)| p)
        .collect();
    let exe_name = exe.file_name().map(|n| n.to_string_lossy().into_owned());
    if target == PyTarget::HostShared {
        f.check(
            libs.iter()
                .any(|l| l.contains(&format!("libpython3.{minor}.so"))),
            || {
                format!(
                    "{pid} maps no libpython3.{minor}.so (exe {}, libpython: {libs:?})",
                    exe.display()
                )
            },
        );
    } else {
        f.check(
            exe_name.as_deref() == Some(&format!("python3.{minor}")) && libs.is_empty(),
            || {
                format!(
                    "{pid} runs {} with libpython {libs:?}, not python3.{minor} alone",
                    exe.display()
                )
            },
        );
    }
    if let PyTarget::Container(suite) = target {
        f.check(exe == Path::new(&suite.interpreter()), || {
            format!("{pid} runs {}, not {}", exe.display(), suite.interpreter())
        });
    }
}

/// Checks `lines`/`files`/`qualnames` of `sites` against the `# SITE: name` markers of `script`.
fn check_site_lines(f: &mut Failures, script: &str, truth: &PyTruth, sites: &[&str]) {
    let source = fs::read_to_string(python_fixtures_dir().join(script)).expect("fixture source");
    let lines: Vec<&str> = source.lines().collect();
    for site in sites {
        let line = truth.line(site).unwrap_or(0) as usize;
        let text = lines.get(line.wrapping_sub(1)).copied().unwrap_or("");
        f.check(
            text.trim_end().ends_with(&format!("# SITE: {site}")),
            || format!("{site}: line {line} of {script} is not its site: {text:?}"),
        );
        f.check(truth.file(site) == Some(script), || {
            format!("{site}: file {:?}", truth.file(site))
        });
        f.check(
            truth.qualname(site).is_some_and(|q| q.ends_with(site)),
            || format!("{site}: qualname {:?}", truth.qualname(site)),
        );
    }
}

fn check_version(f: &mut Failures, target: PyTarget, truth: &PyTruth) {
    let minor = target.minor();
    let v = truth.extras["python"].as_str().unwrap_or("");
    f.check(v.starts_with(&format!("3.{minor}.")), || {
        format!("the script runs Python {v:?}, expected 3.{minor}")
    });
    f.check(target.version().starts_with(v), || {
        format!(
            "the script says {v:?}, the interpreter {:?}",
            target.version()
        )
    });
}

/// `leaky.py --verify` on `target`: starts, leaks on the go signal, and reports a truth that
/// tracemalloc agrees with.
fn check_leaky(target: PyTarget) {
    let _serial = serial();
    let title = format!("leaky.py on {}", target.label());
    let started = Instant::now();
    say(&target.prepare());
    // Host interpreters start in a cgroup of their own, as memprof tests will run them.
    let cgroup = (!target.is_container()).then(TestCgroup::new);
    let opts = PyOptions {
        cgroup: cgroup.as_ref(),
        ..Default::default()
    };
    let mut fx = target.start_with("leaky.py", &["--verify"], &opts);
    let ready = started.elapsed();
    let mut f = Failures::default();
    check_interpreter(&mut f, target, fx.pid());
    let procs = match (&cgroup, fx.container()) {
        (Some(cg), _) => cg.pids(),
        (None, Some(c)) => c.host_pids().expect("container pids"),
        (None, None) => unreachable!(),
    };
    f.check(procs.contains(&fx.pid()), || {
        format!("pid {} is not in the cgroup ({procs:?})", fx.pid())
    });
    if let Some(c) = fx.container() {
        let cg = c.cgroup_path().expect("container cgroup");
        say(&format!(
            "container {} (cgroup {}), pid {} inside",
            c.name(),
            cg.display(),
            fx.ns_pid()
        ));
    }
    let go = Instant::now();
    fx.go();
    let t = fx.wait_truth();
    say(&format!(
        "{title}: ready after {:.2} s, truth {:.2} s after go; sites {:?}; allocations {:?}; \
         tracemalloc {}",
        ready.as_secs_f64(),
        go.elapsed().as_secs_f64(),
        t.truth.sites,
        t.truth.allocations,
        t.extras["tracemalloc"]
    ));

    f.check(t.truth.pid == fx.pid(), || {
        format!("truth pid {} != {}", t.truth.pid, fx.pid())
    });
    let keys: Vec<&str> = t.truth.sites.keys().map(String::as_str).collect();
    f.check(keys == SITES, || {
        format!("sites {keys:?}, expected {SITES:?}")
    });
    for site in SITES {
        let bytes = t.truth.sites.get(site).copied().unwrap_or(0);
        let allocs = t.truth.allocations.get(site).copied().unwrap_or(0);
        let leaks = site != "churn";
        f.check((bytes > 0) == leaks && (allocs > 0) == leaks, || {
            format!("{site}: {bytes} B in {allocs} allocations")
        });
    }
    check_site_lines(&mut f, "leaky.py", &t, &SITES);
    f.check(t.qualname("leak_small") == Some("Store.leak_small"), || {
        format!("leak_small: qualname {:?}", t.qualname("leak_small"))
    });
    let comprehension = &t.extras["comprehension"]["leak_listcomp"];
    let expected = if target.minor() < 12 {
        Value::from("leak_listcomp.<locals>.<listcomp>")
    } else {
        Value::Null
    };
    f.check(*comprehension == expected, || {
        format!("comprehension frame {comprehension}")
    });
    check_version(&mut f, target, &t);

    // tracemalloc saw what the truth says, for the sites made of Python objects.
    for site in ["leak_small", "leak_large", "leak_listcomp"] {
        let tm = &t.extras["tracemalloc"][site];
        let (tm_bytes, tm_blocks) = (tm[0].as_u64().unwrap_or(0), tm[1].as_u64().unwrap_or(0));
        let (bytes, blocks) = (t.truth.sites[site], t.truth.allocations[site]);
        for (what, truth, traced) in [("bytes", bytes, tm_bytes), ("blocks", blocks, tm_blocks)] {
            let err = error_pct(truth, traced);
            f.check(err.abs() <= VERIFY_TOLERANCE_PCT, || {
                format!("{site}: truth {truth} {what}, tracemalloc {traced} ({err:+.3} %)")
            });
        }
    }
    let churn_left = t.extras["tracemalloc"]["churn"][0]
        .as_u64()
        .unwrap_or(u64::MAX);
    f.check(churn_left <= 64 * 1024, || {
        format!("churn: tracemalloc still holds {churn_left} B")
    });
    f.check(fx.is_running(), || {
        "the fixture did not keep running after its truth".into()
    });
    let threads = fs::read_dir(format!("/proc/{}/task", fx.pid())).map_or(0, |d| d.count());
    f.check(threads > 2 * SITES.len(), || {
        format!("{threads} threads, expected the parked site threads")
    });
    f.finish(
        &title,
        &format!("truth: {}\nstderr: {}", t.extras, fx.stderr()),
    );
    say(&format!(
        "{title}: {:.1} s in all",
        started.elapsed().as_secs_f64()
    ));
}

/// `leaky.py --fork 3`: three forked workers, alive, children of the interpreter, each running
/// the same Python, summed in one truth; all gone once the fixture is dropped.
fn check_fork(target: PyTarget) {
    let _serial = serial();
    let title = format!("leaky.py --fork 3 on {}", target.label());
    say(&target.prepare());
    let mut fx = target.start("leaky.py", &["--fork", "3"]);
    fx.go();
    let t = fx.wait_truth();
    let mut f = Failures::default();
    let workers = t.worker_pids.clone();
    say(&format!(
        "{title}: parent {}, workers {workers:?}, truth {:?}",
        fx.pid(),
        t.truth.sites
    ));
    let distinct: BTreeSet<u32> = workers.iter().copied().collect();
    f.check(workers.len() == 3 && distinct.len() == 3, || {
        format!("worker pids {workers:?}")
    });
    for &w in &workers {
        f.check(alive(w), || {
            format!("worker {w} is not alive ({:?})", proc_state(w))
        });
        let status = fs::read_to_string(format!("/proc/{w}/status")).unwrap_or_default();
        let ppid = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .map(str::trim);
        f.check(ppid == Some(fx.pid().to_string().as_str()), || {
            format!("worker {w}: PPid {ppid:?}, expected {}", fx.pid())
        });
        check_interpreter(&mut f, target, w);
    }
    let per_worker: u64 = t.extras["workers"]
        .as_object()
        .map_or(0, |o| o.values().filter_map(Value::as_u64).sum());
    let total = t.truth.sites.get("leak_in_worker").copied().unwrap_or(0);
    f.check(total > 0 && total == per_worker, || {
        format!("leak_in_worker {total} B, the workers say {per_worker} B")
    });
    f.check(
        t.truth.allocations.get("leak_in_worker") == Some(&750),
        || {
            format!(
                "allocations {:?}, expected 200 + 250 + 300",
                t.truth.allocations
            )
        },
    );
    check_site_lines(&mut f, "leaky.py", &t, &["leak_in_worker"]);
    check_version(&mut f, target, &t);
    drop(fx);
    let deadline = Instant::now() + Duration::from_secs(10);
    while workers.iter().any(|&w| alive(w)) && Instant::now() < deadline {
        sleep(Duration::from_millis(50));
    }
    for &w in &workers {
        f.check(!alive(w), || format!("worker {w} outlived the fixture"));
    }
    f.finish(&title, &format!("truth: {}", t.extras));
}

/// `otel_exporter.py` with opentelemetry-sdk installed for the target's Python version: every
/// span created ends up in the failing exporter's buffer.
fn check_otel(target: PyTarget) {
    let _serial = serial();
    let title = format!("otel_exporter.py on {}", target.label());
    say(&target.prepare());
    let t0 = Instant::now();
    let site = site_packages(target, &["opentelemetry-sdk"]);
    say(&format!(
        "{title}: site-packages {} ({:.1} s)",
        site.display(),
        t0.elapsed().as_secs_f64()
    ));
    let opts = PyOptions {
        site: Some(site),
        ..Default::default()
    };
    let t1 = Instant::now();
    let mut fx = target.start_with("otel_exporter.py", &["--requests", "1000"], &opts);
    let ready = t1.elapsed();
    fx.go();
    let t = fx.wait_truth();
    say(&format!(
        "{title}: ready after {:.2} s; {} of {} spans kept in {} batches, {} B encoded",
        ready.as_secs_f64(),
        t.extras["kept_spans"],
        t.extras["spans_created"],
        t.extras["batches"],
        t.extras["encoded_bytes"]
    ));
    let mut f = Failures::default();
    check_interpreter(&mut f, target, fx.pid());
    check_version(&mut f, target, &t);
    f.check(t.truth.pid == fx.pid() && t.truth.sites.is_empty(), || {
        format!("truth pid {} sites {:?}", t.truth.pid, t.truth.sites)
    });
    let n = |k: &str| t.extras[k].as_u64().unwrap_or(0);
    f.check(
        n("spans_created") == 2000 && n("kept_spans") == 2000,
        || {
            format!(
                "{} spans created, {} kept",
                n("spans_created"),
                n("kept_spans")
            )
        },
    );
    f.check(n("batches") > 1 && n("encoded_bytes") > 2000 * 200, || {
        format!("{} batches, {} B encoded", n("batches"), n("encoded_bytes"))
    });
    check_site_lines(
        &mut f,
        "otel_exporter.py",
        &t,
        &["export", "handle_request"],
    );
    f.check(
        t.qualname("export") == Some("RetryingExporter.export"),
        || format!("export: qualname {:?}", t.qualname("export")),
    );
    f.check(fx.is_running(), || {
        "the fixture did not keep running".into()
    });
    f.finish(
        &title,
        &format!("truth: {}\nstderr: {}", t.extras, fx.stderr()),
    );
}

/// One test per target for `check`, and the list of targets they cover.
macro_rules! per_target {
    ($covered:ident, $check:ident: $($name:ident => $target:expr,)*) => {
        $(
            #[test]
            fn $name() {
                require_root();
                $check($target);
            }
        )*
        const $covered: &[PyTarget] = &[$($target),*];
    };
}

per_target! { LEAKY_TARGETS, check_leaky:
    leaky_host_shared => PyTarget::HostShared,
    leaky_host_static => PyTarget::HostStatic,
    leaky_bullseye_3_9 => PyTarget::Container(Suite::Bullseye),
    leaky_jammy_3_10 => PyTarget::Container(Suite::Jammy),
    leaky_noble_3_12 => PyTarget::Container(Suite::Noble),
    leaky_trixie_3_13 => PyTarget::Container(Suite::Trixie),
    leaky_sid_3_14 => PyTarget::Container(Suite::Sid),
}

per_target! { OTEL_TARGETS, check_otel:
    otel_host_shared => PyTarget::HostShared,
    otel_host_static => PyTarget::HostStatic,
    otel_bullseye_3_9 => PyTarget::Container(Suite::Bullseye),
    otel_jammy_3_10 => PyTarget::Container(Suite::Jammy),
    otel_noble_3_12 => PyTarget::Container(Suite::Noble),
    otel_trixie_3_13 => PyTarget::Container(Suite::Trixie),
    otel_sid_3_14 => PyTarget::Container(Suite::Sid),
}

per_target! { FORK_TARGETS, check_fork:
    fork_host_static => PyTarget::HostStatic,
    fork_bullseye_3_9 => PyTarget::Container(Suite::Bullseye),
    fork_trixie_3_13 => PyTarget::Container(Suite::Trixie),
}

/// Every interpreter has its leaky.py and otel_exporter.py tests (a target added to
/// `PyTarget::all` needs them).
#[test]
fn every_target_is_covered() {
    require_root();
    assert_eq!(LEAKY_TARGETS, PyTarget::all().as_slice());
    assert_eq!(OTEL_TARGETS, PyTarget::all().as_slice());
    assert!(FORK_TARGETS.iter().any(|t| t.is_container()));
}

/// `--exit`: the truth, then a clean exit without interpreter teardown.
#[test]
fn leaky_exit() {
    require_root();
    let _serial = serial();
    let mut fx = PyTarget::HostShared.start("leaky.py", &["--exit", "--threads", "1"]);
    fx.go();
    let t = fx.wait_truth();
    assert!(
        t.truth.leak_sites().count() == 4,
        "truth {:?}",
        t.truth.sites
    );
    fx.wait_exit(Duration::from_secs(20));
}
