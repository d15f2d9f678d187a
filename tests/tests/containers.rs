//! Containers: `memprof --cgroup NAME` on a podman container whose processes run from the
//! container's own rootfs (own glibc copy, jemalloc, mimalloc, a static musl executable), the
//! name resolved through the Docker-compatible API (`DOCKER_HOST`); processes started inside the
//! container after memprof attached; a process killed and started again; tcmalloc, whose
//! frameless `mmap` wrapper needs the CFI unwinder ([`container_tcmalloc_variant`]).
//!
//! Needs root, podman and runc, gcc, musl-tools, libjemalloc-dev, libgoogle-perftools-dev,
//! libmimalloc-dev, busybox-static (`cargo xtask setup`). Run serially: `cargo test -p memprof-tests --test containers --
//! --test-threads=1` (the tests also take a lock, so they never overlap).
//!
//! `MEMPROF_TEST_CGROUP_BY_PATH=1` passes the container's cgroup path instead of its name (to
//! tell a failure of the name resolution from the rest).
//!
//! Every test prints how long it took (and the image build how long that took) on stdout.

use std::{
    collections::BTreeMap,
    io::Write,
    path::PathBuf,
    sync::{Mutex, MutexGuard, Once},
    time::{Duration, Instant},
};

use memprof_tests::{container::*, *};
use serde_json::Value;

/// Tests never overlap, even without `--test-threads=1`.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long an in-container fixture may take to print `ready` (container start included).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Time allowed for memprof to adopt a process that appeared in the cgroup (it probes processes
/// 0.5 s old, polling every 200 ms).
const ADOPT_GRACE: Duration = Duration::from_secs(2);

/// A line on the real stdout (shows with `cargo test` even when the test passes).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "[containers] {line}");
    let _ = out.flush();
}

/// The fixture image, built (or found up to date) once per test binary.
fn image() -> &'static str {
    static REPORTED: Once = Once::new();
    let b = Podman::fixture_image();
    REPORTED.call_once(|| {
        say(&format!(
            "image {} (rootfs {}): {} in {}",
            b.tag,
            b.fingerprint,
            if b.imported {
                "built and imported"
            } else {
                "up to date, not imported again"
            },
            secs(b.elapsed)
        ))
    });
    IMAGE
}

/// `--cgroup NAME` (or the cgroup path with `MEMPROF_TEST_CGROUP_BY_PATH`).
fn target_args(ct: &Container) -> Vec<String> {
    if std::env::var_os("MEMPROF_TEST_CGROUP_BY_PATH").is_some() {
        let path = ct.cgroup_path().expect("container cgroup");
        vec!["--cgroup".into(), path.display().to_string()]
    } else {
        vec!["--cgroup".into(), ct.name().into()]
    }
}

/// memprof on the container, `DOCKER_HOST` pointing at the engine's socket.
fn start_memprof(ct: &Container, engine: &Engine, label: &str) -> (Memprof, PathBuf) {
    let dir = output_dir(label);
    let mut args = target_args(ct);
    args.extend([
        "--interval".into(),
        "1s".into(),
        "--output".into(),
        dir.display().to_string(),
    ]);
    let docker_host = engine.docker_host();
    let mp = Memprof::start_with(&args, |c| {
        c.env("DOCKER_HOST", &docker_host);
    });
    (mp, dir)
}

/// Stops memprof (SIGINT after `settle`), requires exit 0, reads the summary.
fn stop_memprof(mut mp: Memprof, dir: &std::path::Path, settle: Duration) -> Value {
    sleep(settle);
    assert!(
        mp.is_running(),
        "memprof ended before SIGINT; stderr:\n{}",
        mp.stderr()
    );
    let t = Instant::now();
    mp.interrupt();
    let done = mp.finish_ok(FINISH_TIMEOUT);
    say(&format!(
        "memprof: SIGINT to exit (symbolize, write) {}",
        secs(t.elapsed())
    ));
    // Kept beside the results, for diagnosis.
    let _ = std::fs::write(dir.join("memprof-stderr.log"), &done.stderr);
    let attach_lines: Vec<&str> = done
        .stderr
        .lines()
        .filter(|l| l.contains("attached") || l.contains("warn") || l.contains("error"))
        .take(20)
        .collect();
    if !attach_lines.is_empty() {
        say(&format!(
            "memprof stderr (excerpt):\n  {}",
            attach_lines.join("\n  ")
        ));
    }
    read_summary(dir)
}

/// Failures collected over a whole test, so that one run reports every assertion that fails.
struct Checks {
    title: String,
    failures: Vec<String>,
}

impl Checks {
    fn new(title: &str) -> Self {
        Checks {
            title: title.into(),
            failures: Vec::new(),
        }
    }

    fn check(&mut self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(msg());
        }
    }

    fn finish(self, summary: &Value) {
        if self.failures.is_empty() {
            say(&format!("{}: all checks passed", self.title));
            return;
        }
        say(&format!(
            "{}: {} check(s) failed:\n  {}",
            self.title,
            self.failures.len(),
            self.failures.join("\n  ")
        ));
        panic!(
            "{}: {} check(s) failed:\n  {}\nprobes:\n{}\nstacks:\n{}",
            self.title,
            self.failures.len(),
            self.failures.join("\n  "),
            describe_probes(summary),
            describe_stacks(summary)
        );
    }
}

/// The ground truths of several processes summed per site (pid 0).
fn sum_truths(truths: &[GroundTruth]) -> GroundTruth {
    let mut sites: BTreeMap<String, u64> = BTreeMap::new();
    let mut allocations: BTreeMap<String, u64> = BTreeMap::new();
    for t in truths {
        for (k, v) in &t.sites {
            *sites.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &t.allocations {
            *allocations.entry(k.clone()).or_default() += v;
        }
    }
    GroundTruth {
        pid: 0,
        sites,
        allocations,
    }
}

/// The accuracy rules of `assert_accurate`, for a sum over processes: every leak site within
/// [`TOLERANCE_PCT`] in bytes (and live allocations, malloc family), `churn` at most 1 % of the
/// smallest site (or 64 KiB), every process's PID on the stacks of every site it leaked from.
fn check_accuracy(checks: &mut Checks, title: &str, truths: &[GroundTruth], summary: &Value) {
    let sum = sum_truths(truths);
    print_site_table(title, &sum, summary);
    for (site, expected) in sum.leak_sites() {
        let measured = site_bytes(summary, site);
        let err = error_pct(expected, measured);
        checks.check(err.abs() <= TOLERANCE_PCT, || {
            format!("{site}: expected {expected} B, measured {measured} B ({err:+.3} %)")
        });
        if !site.contains("mmap") {
            if let Some(&n) = sum.allocations.get(site) {
                let m = site_allocations(summary, site);
                checks.check(error_pct(n, m).abs() <= TOLERANCE_PCT, || {
                    format!("{site}: expected {n} live allocations, measured {m}")
                });
            }
        }
        let pids = site_pids(summary, site);
        for t in truths {
            if t.sites.get(site).copied().unwrap_or(0) > 0 {
                checks.check(pids.contains(&t.pid), || {
                    format!(
                        "{site}: stacks do not list pid {} (they list {pids:?})",
                        t.pid
                    )
                });
            }
        }
    }
    let smallest = sum.leak_sites().map(|(_, b)| b).min().unwrap_or(0);
    let churn_limit = (smallest / 100).max(64 * 1024);
    for (site, &expected) in &sum.sites {
        if expected == 0 {
            let measured = site_bytes(summary, site);
            checks.check(measured <= churn_limit, || {
                format!("{site}: expected ~0 outstanding, measured {measured} B (limit {churn_limit} B)")
            });
        }
    }
}

fn probes(summary: &Value) -> Vec<&Value> {
    summary["probes"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// One line per probed object: its functions, `!` marking those not attached.
fn describe_probes(summary: &Value) -> String {
    let mut by_object: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in probes(summary) {
        let obj = p["object"].as_str().unwrap_or("?").to_string();
        let mut f = p["function"].as_str().unwrap_or("?").to_string();
        if p["attached"].as_bool() != Some(true) {
            f.push('!');
        }
        by_object.entry(obj).or_default().push(f);
    }
    by_object
        .iter()
        .map(|(o, fs)| format!("  {o}: {}\n", fs.join(" ")))
        .collect()
}

/// The identity of a probe's object: first as the container's processes see the path (through
/// `/proc/PID/root`), else as a host path (e.g. a `/proc/PID/map_files/...` link).
fn probe_object_id(object: &str, container_pids: &[u32]) -> Option<FileId> {
    container_pids
        .iter()
        .find_map(|&pid| file_id_in(pid, object))
        .or_else(|| file_id(std::path::Path::new(object)))
}

/// Whether an attached probe on `function` sits in an object whose identity is `id`.
fn probed(summary: &Value, function: &str, id: FileId, container_pids: &[u32]) -> bool {
    probes(summary).iter().any(|p| {
        p["function"].as_str() == Some(function)
            && p["attached"].as_bool() == Some(true)
            && p["object"]
                .as_str()
                .and_then(|o| probe_object_id(o, container_pids))
                == Some(id)
    })
}

/// `(path as the process maps it, identity)` of the first mapped file whose path contains
/// `needle`, for a container process (identity through its root).
fn container_object(host_pid: u32, needle: &str) -> (String, FileId) {
    let (path, _, _) = mapped_files(host_pid, needle)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("process {host_pid} maps no file named like {needle:?}"));
    let id = file_id_in(host_pid, &path)
        .unwrap_or_else(|| panic!("cannot stat {path} inside process {host_pid}'s root"));
    (path, id)
}

/// The fixture's ownership line (`tests/fixtures/container/leaky_portable.c`, on stderr once its
/// workers are joined): `allocator: NAME VERSION owns OWNED of TOTAL leaked heap blocks`. Checks
/// that NAME is `allocator` and that it owns every leaked malloc-family block: the program's
/// calls really reached that allocator (not glibc's malloc). Returns the line.
fn check_ownership(checks: &mut Checks, fx: &ContainerFixture, allocator: &str) -> String {
    let stderr = fx.stderr();
    let Some(line) = stderr.lines().find(|l| l.starts_with("allocator: ")) else {
        checks.check(false, || {
            format!(
                "{}: no `allocator:` line on stderr ({stderr:?}): is it linked with {allocator}?",
                fx.label
            )
        });
        return String::new();
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    // allocator: NAME VERSION owns OWNED of TOTAL leaked heap blocks
    let owned = words.get(4).and_then(|w| w.parse::<u64>().ok());
    let total = words.get(6).and_then(|w| w.parse::<u64>().ok());
    checks.check(
        words.get(1) == Some(&allocator)
            && matches!((owned, total), (Some(o), Some(t)) if o == t && t > 0),
        || {
            format!(
                "{}: expected {allocator} to own every leaked block: {line:?}",
                fx.label
            )
        },
    );
    line.to_string()
}

/// Checks that summary.json `probes` has attached `malloc` and `free` probes on an object whose
/// file name starts with `prefix` (`libmimalloc`), and no probe there that failed to attach.
fn check_probes_named(checks: &mut Checks, summary: &Value, prefix: &str) {
    let named: Vec<&Value> = probes(summary)
        .into_iter()
        .filter(|p| {
            p["object"]
                .as_str()
                .and_then(|o| o.rsplit('/').next())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    for func in ["malloc", "free"] {
        checks.check(
            named.iter().any(|p| {
                p["function"].as_str() == Some(func) && p["attached"].as_bool() == Some(true)
            }),
            || format!("summary.json probes: no attached `{func}` on an object named {prefix}*"),
        );
    }
    let failed: Vec<String> = named
        .iter()
        .filter(|p| p["attached"].as_bool() != Some(true))
        .map(|p| p.to_string())
        .collect();
    checks.check(failed.is_empty(), || {
        format!("summary.json probes on {prefix}* not attached: {failed:?}")
    });
}

// ---------------------------------------------------------------------------------------------
// a) several processes, several allocators, one container, the name resolved by the engine
// ---------------------------------------------------------------------------------------------

#[test]
fn container_by_name_with_own_libraries() {
    require_root();
    let _serial = serial();
    let started = Instant::now();
    let image = image();

    let t = Instant::now();
    let engine = Engine::start().expect("starting podman system service");
    let fixtures = [
        ("glibc-1", "/leaky"),
        ("glibc-2", "/leaky"),
        ("jemalloc", "/leaky-jemalloc"),
        ("mimalloc", "/leaky-mimalloc"),
        ("musl", "/leaky-musl"),
    ];
    let ct = Container::with_fixtures(&container_name("multi"), image, &fixtures)
        .expect("starting the container");
    let mut fxs: Vec<ContainerFixture> = fixtures
        .iter()
        .map(|(l, _)| {
            ct.fixture(l, READY_TIMEOUT)
                .unwrap_or_else(|e| panic!("{e:#}"))
        })
        .collect();
    let container_pids: Vec<u32> = fxs.iter().map(|f| f.host_pid).collect();
    let host_pid_of = |label: &str| fxs.iter().find(|f| f.label == label).unwrap().host_pid;
    say(&format!(
        "a) engine (pid {}) + container {} ({}) + {} fixtures ready in {}; host pids {:?}",
        engine.pid(),
        ct.name(),
        &ct.id()[..12],
        fxs.len(),
        secs(t.elapsed()),
        fxs.iter()
            .map(|f| (f.label.as_str(), f.host_pid))
            .collect::<Vec<_>>()
    ));

    // The engine knows the container by name (what memprof will ask it).
    let inspect = engine
        .get(&format!("/containers/{}/json", ct.name()))
        .expect("engine inspect");
    let inspect: Value = serde_json::from_str(&inspect).expect("inspect JSON");
    assert_eq!(inspect["Id"].as_str(), Some(ct.id()), "engine inspect Id");
    assert_eq!(
        inspect["State"]["Pid"].as_u64(),
        Some(ct.pid().unwrap() as u64),
        "engine inspect State.Pid"
    );

    // The container maps its own libc, not the host's.
    let (ct_libc_path, ct_libc) = container_object(host_pid_of("glibc-1"), "libc.so.6");
    let host_libc_path = mapped_files(std::process::id(), "libc.so.6")
        .into_iter()
        .next()
        .expect("this test maps libc.so.6")
        .0;
    let host_libc = file_id(std::path::Path::new(&host_libc_path)).expect("host libc");
    assert_ne!(
        ct_libc, host_libc,
        "the container's {ct_libc_path} is the host's {host_libc_path}"
    );
    let (jemalloc_path, ct_jemalloc) = container_object(host_pid_of("jemalloc"), "libjemalloc");
    let (mimalloc_path, ct_mimalloc) = container_object(host_pid_of("mimalloc"), "libmimalloc");
    let (musl_path, ct_musl) = container_object(host_pid_of("musl"), "leaky-musl");

    let t = Instant::now();
    let (mut mp, dir) = start_memprof(&ct, &engine, "containers-multi");
    mp.wait_attached(ATTACH_TIMEOUT);
    say(&format!("a) memprof attached in {}", secs(t.elapsed())));
    for fx in &fxs {
        fx.go().unwrap_or_else(|e| panic!("{e:#}"));
    }
    let t = Instant::now();
    let truths: Vec<GroundTruth> = fxs
        .iter_mut()
        .map(|f| {
            f.wait_truth(TRUTH_TIMEOUT)
                .unwrap_or_else(|e| panic!("{e:#}"))
        })
        .collect();
    say(&format!(
        "a) all {} ground truths in {}",
        truths.len(),
        secs(t.elapsed())
    ));
    let summary = stop_memprof(mp, &dir, Duration::from_secs(2));

    let mut checks = Checks::new("a) container by name");
    check_accuracy(
        &mut checks,
        "a) 2 x glibc + jemalloc + mimalloc + static musl in one container (sum over the 5 processes)",
        &truths,
        &summary,
    );
    // mimalloc really is the allocator of /leaky-mimalloc, and memprof probed it.
    let mimalloc_fx = fxs.iter().find(|f| f.label == "mimalloc").unwrap();
    let owner = check_ownership(&mut checks, mimalloc_fx, "mimalloc");
    say(&format!("a) mimalloc fixture: {owner}"));
    check_probes_named(&mut checks, &summary, "libmimalloc");
    let cgroup = ct.cgroup_path().unwrap();
    let cg_rel = cgroup
        .strip_prefix(cgroup2_mount())
        .unwrap()
        .display()
        .to_string();
    let reported = summary["cgroup"].as_str().unwrap_or("");
    checks.check(reported.trim_end_matches('/').ends_with(&cg_rel), || {
        format!("summary.cgroup is {reported:?}, expected the container's cgroup {cg_rel}")
    });
    for (what, id, path) in [
        ("the container's libc", ct_libc, &ct_libc_path),
        ("the container's libjemalloc", ct_jemalloc, &jemalloc_path),
        ("the container's libmimalloc", ct_mimalloc, &mimalloc_path),
        ("the static musl executable", ct_musl, &musl_path),
    ] {
        for func in ["malloc", "free"] {
            checks.check(probed(&summary, func, id, &container_pids), || {
                format!("no attached `{func}` probe on {what} ({path} inside the container)")
            });
        }
    }
    let on_host_libc: Vec<String> = probes(&summary)
        .iter()
        .filter_map(|p| p["object"].as_str())
        .filter(|o| probe_object_id(o, &container_pids) == Some(host_libc))
        .map(String::from)
        .collect();
    checks.check(on_host_libc.is_empty(), || {
        format!("probes name the host's libc ({host_libc_path}): {on_host_libc:?}")
    });
    say(&format!("a) probes:\n{}", describe_probes(&summary)));
    say(&format!("a) took {} in all", secs(started.elapsed())));
    drop(ct);
    drop(engine);
    checks.finish(&summary);
}

// ---------------------------------------------------------------------------------------------
// a') tcmalloc: its own container
// ---------------------------------------------------------------------------------------------

/// Like a), for gperftools' tcmalloc (`/leaky-tcmalloc`, linked `-ltcmalloc_minimal`): two
/// processes in one container, every site within 1 % summed over both, attached `malloc` and
/// `free` probes on the container's libtcmalloc_minimal, and tcmalloc owning every leaked block.
///
/// libtcmalloc_minimal interposes `mmap` with a wrapper built without frame pointers that keeps
/// mmap's first argument (NULL) in %rbp: a frame-pointer walk (`--unwind fp`) ends after
/// `syscall <- mmap` and the mmap sites measure 0 B. The default CFI unwinder walks through it,
/// so this test also guards the `.eh_frame` walk inside a container.
#[test]
fn container_tcmalloc_variant() {
    require_root();
    let _serial = serial();
    let started = Instant::now();
    let image = image();
    let engine = Engine::start().expect("starting podman system service");
    let fixtures = [
        ("tcmalloc-1", "/leaky-tcmalloc"),
        ("tcmalloc-2", "/leaky-tcmalloc"),
    ];
    let ct = Container::with_fixtures(&container_name("tcmalloc"), image, &fixtures)
        .expect("starting the container");
    let mut fxs: Vec<ContainerFixture> = fixtures
        .iter()
        .map(|(l, _)| {
            ct.fixture(l, READY_TIMEOUT)
                .unwrap_or_else(|e| panic!("{e:#}"))
        })
        .collect();
    let container_pids: Vec<u32> = fxs.iter().map(|f| f.host_pid).collect();
    let (tcmalloc_path, ct_tcmalloc) = container_object(fxs[0].host_pid, "libtcmalloc_minimal");

    let (mut mp, dir) = start_memprof(&ct, &engine, "containers-tcmalloc");
    mp.wait_attached(ATTACH_TIMEOUT);
    for fx in &fxs {
        fx.go().unwrap_or_else(|e| panic!("{e:#}"));
    }
    let truths: Vec<GroundTruth> = fxs
        .iter_mut()
        .map(|f| {
            f.wait_truth(TRUTH_TIMEOUT)
                .unwrap_or_else(|e| panic!("{e:#}"))
        })
        .collect();
    let summary = stop_memprof(mp, &dir, Duration::from_secs(2));

    let mut checks = Checks::new("a') tcmalloc");
    check_accuracy(
        &mut checks,
        "a') 2 x tcmalloc in one container (sum over the 2 processes)",
        &truths,
        &summary,
    );
    for fx in &fxs {
        let owner = check_ownership(&mut checks, fx, "tcmalloc");
        say(&format!("a') {}: {owner}", fx.label));
    }
    check_probes_named(&mut checks, &summary, "libtcmalloc_minimal");
    for func in ["malloc", "free"] {
        checks.check(probed(&summary, func, ct_tcmalloc, &container_pids), || {
            format!(
                "no attached `{func}` probe on the container's libtcmalloc_minimal \
                     ({tcmalloc_path} inside the container)"
            )
        });
    }
    say(&format!("a') probes:\n{}", describe_probes(&summary)));
    say(&format!("a') took {} in all", secs(started.elapsed())));
    drop(ct);
    drop(engine);
    checks.finish(&summary);
}

// ---------------------------------------------------------------------------------------------
// b) a process started inside the container after memprof attached
// ---------------------------------------------------------------------------------------------

#[test]
fn process_started_after_attach_is_caught() {
    require_root();
    let _serial = serial();
    let started = Instant::now();
    let image = image();
    let engine = Engine::start().expect("starting podman system service");
    // One fixture from the start (it gets no go signal: it leaks nothing).
    let ct = Container::with_fixtures(&container_name("late"), image, &[("early", "/leaky")])
        .expect("starting the container");
    let early = ct
        .fixture("early", READY_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));

    let (mut mp, dir) = start_memprof(&ct, &engine, "containers-late");
    mp.wait_attached(ATTACH_TIMEOUT);

    let t = Instant::now();
    let mut late = ct
        .spawn_fixture("late", "/leaky", &[], READY_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    say(&format!(
        "b) `podman exec -d {} /leaky` ready after {} (host pid {}, pid {} inside)",
        ct.name(),
        secs(t.elapsed()),
        late.host_pid,
        late.ns_pid
    ));
    sleep(ADOPT_GRACE);
    late.go().unwrap_or_else(|e| panic!("{e:#}"));
    let truth = late
        .wait_truth(TRUTH_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let summary = stop_memprof(mp, &dir, Duration::from_secs(2));

    let mut checks = Checks::new("b) process started after attach");
    check_accuracy(
        &mut checks,
        "b) /leaky started with podman exec after memprof attached",
        std::slice::from_ref(&truth),
        &summary,
    );
    let listed = summary["processes"]
        .as_array()
        .map(|a| {
            a.iter()
                .any(|p| p["pid"].as_u64() == Some(late.host_pid as u64))
        })
        .unwrap_or(false);
    checks.check(listed, || {
        format!(
            "summary.processes does not list the late process {}",
            late.host_pid
        )
    });
    say(&format!(
        "b) early fixture pid {} stayed idle; took {} in all",
        early.host_pid,
        secs(started.elapsed())
    ));
    drop(ct);
    drop(engine);
    checks.finish(&summary);
}

// ---------------------------------------------------------------------------------------------
// c) a process killed and started again
// ---------------------------------------------------------------------------------------------

#[test]
fn restarted_process_is_followed() {
    require_root();
    let _serial = serial();
    let started = Instant::now();
    let image = image();
    let engine = Engine::start().expect("starting podman system service");
    let ct = Container::with_fixtures(&container_name("restart"), image, &[("old", "/leaky")])
        .expect("starting the container");
    let mut old = ct
        .fixture("old", READY_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));

    let (mut mp, dir) = start_memprof(&ct, &engine, "containers-restart");
    mp.wait_attached(ATTACH_TIMEOUT);
    old.go().unwrap_or_else(|e| panic!("{e:#}"));
    let old_truth = old
        .wait_truth(TRUTH_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    // Let a snapshot see the old process's leaks.
    sleep(Duration::from_millis(1500));

    let t = Instant::now();
    ct.kill_inside(old.ns_pid, "KILL")
        .unwrap_or_else(|e| panic!("{e:#}"));
    old.wait_gone(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut new = ct
        .spawn_fixture("new", "/leaky", &[], READY_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    say(&format!(
        "c) killed {} (host pid {}) inside the container, new /leaky ready after {} (host pid {}, pid {} inside)",
        old.label,
        old.host_pid,
        secs(t.elapsed()),
        new.host_pid,
        new.ns_pid
    ));
    sleep(ADOPT_GRACE);
    new.go().unwrap_or_else(|e| panic!("{e:#}"));
    let new_truth = new
        .wait_truth(TRUTH_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let summary = stop_memprof(mp, &dir, Duration::from_secs(2));

    let mut checks = Checks::new("c) restarted process");
    check_accuracy(
        &mut checks,
        "c) the restarted /leaky (the killed one's leaks must be gone)",
        std::slice::from_ref(&new_truth),
        &summary,
    );
    let pids = stack_pids(&summary);
    checks.check(!pids.contains(&old.host_pid), || {
        format!(
            "the killed process {} is still on the final stacks (stack pids {pids:?})",
            old.host_pid
        )
    });
    let old_entry = summary["processes"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|p| p["pid"].as_u64() == Some(old.host_pid as u64))
        })
        .cloned();
    say(&format!(
        "c) the killed process had leaked {} B; summary.processes entry: {}",
        old_truth.leak_sites().map(|(_, b)| b).sum::<u64>(),
        old_entry.map_or("none".into(), |e| e.to_string())
    ));
    say(&format!("c) took {} in all", secs(started.elapsed())));
    drop(ct);
    drop(engine);
    checks.finish(&summary);
}

// ---------------------------------------------------------------------------------------------
// The infrastructure itself
// ---------------------------------------------------------------------------------------------

/// The image builds, is not imported again when nothing changed, every fixture variant runs in
/// a container from the container's own files, and containers are removed on drop.
#[test]
fn infrastructure_image_and_containers() {
    require_root();
    let _serial = serial();
    let started = Instant::now();
    let image = image();
    let podman = Podman::get();

    let t = Instant::now();
    let again = podman.build_image(IMAGE).expect("second build");
    assert!(
        !again.imported,
        "an unchanged rootfs was imported again (fingerprint {})",
        again.fingerprint
    );
    say(&format!(
        "infra: image check when up to date: {}",
        secs(t.elapsed())
    ));

    let name = &container_name("infra");
    let ct = Container::with_fixtures(
        name,
        image,
        &[
            ("glibc", "/leaky"),
            ("jemalloc", "/leaky-jemalloc"),
            ("musl", "/leaky-musl --exit"),
            ("tcmalloc", "/leaky-tcmalloc"),
            ("mimalloc", "/leaky-mimalloc"),
        ],
    )
    .expect("container");
    let mut fxs: Vec<ContainerFixture> = ["glibc", "jemalloc", "musl", "tcmalloc", "mimalloc"]
        .iter()
        .map(|l| {
            ct.fixture(l, READY_TIMEOUT)
                .unwrap_or_else(|e| panic!("{e:#}"))
        })
        .collect();
    // Each process runs from the container's rootfs.
    let (libc_path, libc_id) = container_object(fxs[0].host_pid, "libc.so.6");
    let host_libc = mapped_files(std::process::id(), "libc.so.6")
        .into_iter()
        .next()
        .and_then(|(p, _, _)| file_id(std::path::Path::new(&p)))
        .expect("host libc");
    assert_ne!(
        libc_id, host_libc,
        "container libc {libc_path} is the host's"
    );
    assert!(
        !mapped_files(fxs[1].host_pid, "libjemalloc").is_empty(),
        "leaky-jemalloc does not map libjemalloc"
    );
    assert!(
        mapped_files(fxs[2].host_pid, ".so").is_empty(),
        "leaky-musl maps shared objects"
    );
    for (fx, lib) in [(&fxs[3], "libtcmalloc_minimal"), (&fxs[4], "libmimalloc")] {
        let (path, id) = container_object(fx.host_pid, lib);
        assert_ne!(
            Some(id),
            file_id(std::path::Path::new(&path)),
            "leaky-{} maps the host's {path}",
            fx.label
        );
    }
    // The go signal from inside the container, for all of them at once.
    ct.exec(&[
        "killall",
        "-USR1",
        "leaky",
        "leaky-jemalloc",
        "leaky-musl",
        "leaky-tcmalloc",
        "leaky-mimalloc",
    ])
    .expect("killall -USR1 inside the container");
    let truths: Vec<GroundTruth> = fxs
        .iter_mut()
        .map(|f| {
            f.wait_truth(TRUTH_TIMEOUT)
                .unwrap_or_else(|e| panic!("{e:#}"))
        })
        .collect();
    for (f, t) in fxs.iter().zip(&truths) {
        assert_eq!(t.pid, f.host_pid);
        assert!(
            t.leak_sites().count() >= 10,
            "{}: ground truth {:?}",
            f.label,
            t.sites
        );
    }
    // The same leaks in every variant (pvalloc is memalign for jemalloc and musl: same bytes).
    for (f, t) in fxs.iter().zip(&truths).skip(1) {
        assert_eq!(truths[0].sites, t.sites, "glibc vs {} truth", f.label);
    }
    // tcmalloc and mimalloc own every leaked block of theirs (leaky_portable.c's stderr line).
    let mut owners = Checks::new("infra: allocator ownership");
    for (fx, allocator) in [(&fxs[3], "tcmalloc"), (&fxs[4], "mimalloc")] {
        let line = check_ownership(&mut owners, fx, allocator);
        say(&format!("infra: {}: {line}", fx.label));
    }
    owners.finish(&Value::Null);
    fxs[2]
        .wait_gone(Duration::from_secs(10))
        .expect("musl --exit exits");
    // A process started inside the running container.
    let extra = ct
        .spawn_fixture("extra", "/leaky-musl", &[], READY_TIMEOUT)
        .expect("spawn_fixture");
    assert_eq!(ct.host_pid(extra.ns_pid).unwrap(), Some(extra.host_pid));
    ct.kill_inside(extra.ns_pid, "KILL").expect("kill inside");
    extra.wait_gone(Duration::from_secs(10)).expect("killed");

    let cgroup = ct.cgroup_path().expect("cgroup");
    assert!(
        cgroup.ends_with(format!("libpod-{}", ct.id())),
        "unexpected cgroup {}",
        cgroup.display()
    );
    let t = Instant::now();
    drop(ct);
    say(&format!("infra: podman rm -f -t 0: {}", secs(t.elapsed())));
    assert!(!cgroup.exists(), "{} still exists", cgroup.display());
    let left = podman
        .run(&[
            "ps",
            "-a",
            "--filter",
            &format!("name={name}"),
            "--format",
            "{{.Names}}",
        ])
        .expect("podman ps");
    assert!(left.trim().is_empty(), "container left behind: {left}");

    // The engine starts, answers, and stops (its own PID only).
    let t = Instant::now();
    let engine = Engine::start().expect("engine");
    let pid = engine.pid();
    let version = engine.get("/version").expect("GET /version");
    assert!(version.contains("ApiVersion"), "{version}");
    drop(engine);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z"))
                .unwrap_or(true),
        "podman system service {pid} still runs"
    );
    say(&format!(
        "infra: engine start + GET /version + stop: {}; test took {}",
        secs(t.elapsed()),
        secs(started.elapsed())
    ));
}
