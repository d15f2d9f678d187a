//! The Python part of `cargo xtask bench` (alone: `cargo xtask bench --python-only`): memprof
//! next to memray and tracemalloc on a web-like Python workload (`bench/python/webload.py`), and
//! the cost of memprof's Python stack walk by Python stack depth (`bench/python/depth.py`), on
//! the host's CPython (a build whose object allocator memprof probes) and Debian's (a PGO build:
//! pymalloc inlined, objects counted by arena). Same method as `bench.rs`: paused workloads, one
//! profiler at a time, interleaved repetitions, medians.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc::{self, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};

use crate::bench::{
    self, foreign_profilers, md_cell, mib, proc_cpu_s, proc_status_kib,
    serde_like::{self, Value},
    Proc, Setup, Target,
};
use crate::{describe, is_root, output_of, run, target_dir, workspace_root};

mod report;

/// The heading that starts the Python sections (`--python-only` replaces from here on).
const HEADING: &str = "## Python: web-like workload";
/// `--sample-bytes` of the sampled row.
const SAMPLE_BYTES: &str = "524288";
/// Goal: memprof --mode rss keeps at least this share of the baseline's requests per second.
const GOAL_RSS_RATIO: f64 = 0.98;
/// Python stack depths of the walk-cost table.
const DEPTHS: [u32; 4] = [1, 8, 32, 96];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Prof {
    None,
    Memprof,
    MemprofNoPython,
    MemprofSampled,
    MemprofRss,
    Memray,
    MemrayPyAlloc,
    Tracemalloc,
}

const WEB_PROFS: [Prof; 8] = [
    Prof::None,
    Prof::Memprof,
    Prof::MemprofNoPython,
    Prof::MemprofSampled,
    Prof::MemprofRss,
    Prof::Memray,
    Prof::MemrayPyAlloc,
    Prof::Tracemalloc,
];
const DEPTH_PROFS: [Prof; 3] = [Prof::None, Prof::MemprofNoPython, Prof::Memprof];

impl Prof {
    fn label(self) -> &'static str {
        match self {
            Prof::None => "none (baseline)",
            Prof::Memprof => "memprof (exact)",
            Prof::MemprofNoPython => "memprof --no-python",
            Prof::MemprofSampled => "memprof --sample-bytes 524288",
            Prof::MemprofRss => "memprof --mode rss",
            Prof::Memray => "memray run",
            Prof::MemrayPyAlloc => "memray run --trace-python-allocators",
            Prof::Tracemalloc => "python -X tracemalloc",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Prof::None => "none",
            Prof::Memprof => "memprof",
            Prof::MemprofNoPython => "memprof-nopy",
            Prof::MemprofSampled => "memprof-sampled",
            Prof::MemprofRss => "memprof-rss",
            Prof::Memray => "memray",
            Prof::MemrayPyAlloc => "memray-pyalloc",
            Prof::Tracemalloc => "tracemalloc",
        }
    }

    /// memprof's flags for its rows (None: not a memprof row).
    fn memprof_args(self) -> Option<&'static [&'static str]> {
        match self {
            Prof::Memprof => Some(&[]),
            Prof::MemprofNoPython => Some(&["--no-python"]),
            Prof::MemprofSampled => Some(&["--sample-bytes", SAMPLE_BYTES]),
            Prof::MemprofRss => Some(&["--mode", "rss"]),
            _ => None,
        }
    }
}

/// One interpreter under test.
struct Interp {
    /// `host` (the first python3 in PATH) or `debian` (/usr/bin/python3.11).
    slug: &'static str,
    exe: PathBuf,
    version: String,
    /// The folder memray is imported from (PYTHONPATH), or why memray cannot run here.
    memray: Result<PathBuf, String>,
}

/// One webload.py run.
#[derive(Default)]
struct Web {
    req_per_s: f64,
    /// The workload's own peak RSS (ru_maxrss): memray and tracemalloc live in it.
    rss_kib: Option<f64>,
    prof_hwm_kib: Option<f64>,
    prof_cpu_s: Option<f64>,
    lost: Option<f64>,
    /// memprof: Python frames per recorded stack (stats python_frames / stacks_unwound).
    py_frames: Option<f64>,
    /// memprof's `object_allocator` detail (probed or not, and why).
    object_allocator: Option<String>,
    notes: Vec<String>,
}

/// One depth.py run.
#[derive(Default)]
struct Depth {
    ns: f64,
    /// Python frames on the stack where the pairs run (the workload's own count).
    py_actual: u64,
    /// Python frames in memprof's heaviest stack (`(depth.py:N)` frames).
    py_seen: Option<f64>,
    notes: Vec<String>,
}

type Results<K, T> = BTreeMap<K, Vec<Result<T, String>>>;

/// The Python sections of BENCHMARKS.md, measured now (failures are written into them).
pub(crate) fn sections(s: &Setup) -> String {
    match measure_all(s) {
        Ok(md) => md,
        Err(e) => format!("\n{HEADING}\n\nfailed: {}\n", md_cell(&format!("{e:#}"))),
    }
}

/// `cargo xtask bench --python-only`: measures and replaces the Python sections of
/// BENCHMARKS.md (everything from its Python heading on), keeping the rest.
pub(crate) fn bench_only(quick: bool) -> Result<()> {
    ensure!(
        is_root(),
        "cargo xtask bench needs root (BPF): run it as root"
    );
    let runs = target_dir().join("bench/runs");
    fs::create_dir_all(&runs).with_context(|| format!("failed to create {}", runs.display()))?;
    let s = Setup {
        quick,
        cycles: 0,
        reps: if quick { 1 } else { 3 },
        bin: PathBuf::new(),
        memprof: target_dir().join("release/memprof"),
        runs,
        profilers: Vec::new(),
        memleak: Err("not used".into()),
    };
    let md = sections(&s);
    let path = workspace_root().join("BENCHMARKS.md");
    let old = fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let keep = old
        .find(&format!("\n{HEADING}"))
        .map_or(old.as_str(), |i| &old[..i]);
    // The Soak section (from `cargo xtask soak`, after the Python ones) is carried over.
    let new = crate::soak::keep_section(&old, format!("{}\n{}", keep.trim_end(), md));
    fs::write(&path, &new).with_context(|| format!("failed to write {}", path.display()))?;
    println!("{md}");
    eprintln!(
        "xtask: bench: wrote the Python sections of {}",
        path.display()
    );
    Ok(())
}

fn measure_all(s: &Setup) -> Result<String> {
    let started = Instant::now();
    let runs = s.runs.join("python");
    if runs.exists() {
        fs::remove_dir_all(&runs)
            .with_context(|| format!("failed to remove {}", runs.display()))?;
    }
    fs::create_dir_all(&runs).with_context(|| format!("failed to create {}", runs.display()))?;
    let interps = interpreters()?;
    let requests: u64 = if s.quick { 3_000 } else { 20_000 };
    let pairs: u64 = if s.quick { 5_000 } else { 20_000 };
    let root = workspace_root().join("bench/python");
    let (webload, depth) = (root.join("webload.py"), root.join("depth.py"));

    let mut web: Results<(usize, Prof), Web> = BTreeMap::new();
    let mut deep: Results<(usize, u32, Prof), Depth> = BTreeMap::new();
    for rep in 1..=s.reps {
        for (i, ip) in interps.iter().enumerate() {
            for p in WEB_PROFS {
                eprintln!(
                    "xtask: bench: [{rep}/{}] webload.py {requests} on {} under {} ({:.0}s so far)",
                    s.reps,
                    ip.slug,
                    p.label(),
                    started.elapsed().as_secs_f64()
                );
                let dir = runs.join(format!("web-{}-{}-{rep}", ip.slug, p.slug()));
                let r =
                    measure_web(s, ip, p, &webload, requests, &dir).map_err(|e| format!("{e:#}"));
                match &r {
                    Ok(x) => eprintln!("xtask: bench:   {:.0} req/s", x.req_per_s),
                    Err(e) => eprintln!("xtask: bench:   failed: {e}"),
                }
                web.entry((i, p)).or_default().push(r);
            }
        }
    }
    for rep in 1..=s.reps {
        for (i, ip) in interps.iter().enumerate() {
            for d in DEPTHS {
                for p in DEPTH_PROFS {
                    eprintln!(
                        "xtask: bench: [{rep}/{}] depth.py {d} {pairs} on {} under {}",
                        s.reps,
                        ip.slug,
                        p.label()
                    );
                    let dir = runs.join(format!("depth-{}-{d}-{}-{rep}", ip.slug, p.slug()));
                    let r = measure_depth(s, ip, p, &depth, d, pairs, &dir)
                        .map_err(|e| format!("{e:#}"));
                    match &r {
                        Ok(x) => eprintln!("xtask: bench:   {:.0} ns per pair", x.ns),
                        Err(e) => eprintln!("xtask: bench:   failed: {e}"),
                    }
                    deep.entry((i, d, p)).or_default().push(r);
                }
            }
        }
    }
    report::report(s, &interps, requests, pairs, &web, &deep, started.elapsed())
}

// ---------------------------------------------------------------------------------------------
// Interpreters and memray
// ---------------------------------------------------------------------------------------------

fn interpreters() -> Result<Vec<Interp>> {
    let mut out = Vec::new();
    let site = target_dir().join("bench/memray-site");
    // The host's python3 (pyenv here: a shim that execs the real one), by its real path.
    let host = output_of(Command::new("python3").args(["-c", "import sys; print(sys.executable)"]))
        .map(|s| PathBuf::from(s.trim()))
        .ok_or_else(|| anyhow!("failed to run python3 (no python3 in PATH?)"))?;
    let memray = setup_memray(&host, &site)
        .map(|()| site.clone())
        .map_err(|e| format!("{e:#}"));
    out.push(interp("host", host.clone(), memray));
    let debian = PathBuf::from("/usr/bin/python3.11");
    if debian.is_file() && debian != host {
        // The host's wheels serve it when the ABI is the same (both 3.11); else its own pip.
        let memray = match memray_version(&debian, &site) {
            Some(_) => Ok(site.clone()),
            None => {
                let own = target_dir().join("bench/memray-site-debian");
                setup_memray(&debian, &own)
                    .map(|()| own)
                    .map_err(|e| format!("{e:#}"))
            }
        };
        out.push(interp("debian", debian, memray));
    }
    for ip in &out {
        if let Err(e) = &ip.memray {
            eprintln!(
                "xtask: bench: memray cannot run on {}: {e}",
                ip.exe.display()
            );
        }
    }
    Ok(out)
}

fn interp(slug: &'static str, exe: PathBuf, memray: Result<PathBuf, String>) -> Interp {
    let version = output_of(Command::new(&exe).arg("--version"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| "?".into());
    Interp {
        slug,
        exe,
        version,
        memray,
    }
}

fn memray_version(py: &Path, site: &Path) -> Option<String> {
    output_of(
        Command::new(py)
            .args(["-m", "memray", "--version"])
            .env("PYTHONPATH", site),
    )
    .map(|v| v.trim().to_string())
}

/// memray from PyPI into `site` with `py`'s pip (idempotent).
fn setup_memray(py: &Path, site: &Path) -> Result<()> {
    if memray_version(py, site).is_some() {
        return Ok(());
    }
    if site.exists() {
        fs::remove_dir_all(site).with_context(|| format!("failed to remove {}", site.display()))?;
    }
    run(Command::new(py)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
        ])
        .arg(site)
        .arg("memray"))
    .context("failed to install memray from PyPI")?;
    ensure!(
        memray_version(py, site).is_some(),
        "memray installed into {} but `{} -m memray --version` fails",
        site.display(),
        py.display()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------------------------

/// Starts a Python workload and waits for its `ready <pid>` line (lines before it are skipped:
/// a profiler that runs the script may print first).
fn start(mut cmd: Command, dir: &Path) -> Result<Target> {
    fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    fs::write(dir.join("workload.command"), describe(&cmd))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(dir.join("workload.stderr"))?);
    bench::default_sigint(&mut cmd);
    let mut proc = Proc::spawn(&mut cmd)?;
    let (tx, lines) = mpsc::channel();
    bench::pump(
        proc._child.stdout.take().unwrap(),
        tx,
        File::create(dir.join("workload.stdout"))?,
    );
    let mut t = Target { proc, lines };
    let ready = wait_line(&mut t, Duration::from_secs(60), |l| l.starts_with("ready "))
        .with_context(|| format!("failed to start `{}`", describe(&cmd)))?;
    ensure!(
        ready == format!("ready {}", t.proc.pid),
        "unexpected line {ready:?} (pid {})",
        t.proc.pid
    );
    Ok(t)
}

/// The workload's next line for which `pred` holds.
fn wait_line(t: &mut Target, limit: Duration, pred: impl Fn(&str) -> bool) -> Result<String> {
    let deadline = Instant::now() + limit;
    loop {
        match t
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(l) if pred(&l.text) => return Ok(l.text),
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => bail!(
                "the workload printed nothing expected within {}s",
                limit.as_secs()
            ),
            Err(RecvTimeoutError::Disconnected) => {
                t.proc.wait_timeout(Duration::from_secs(5));
                bail!(
                    "the workload ended early ({}); see workload.stderr",
                    t.proc.exit_description()
                )
            }
        }
    }
}

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for k in path {
        cur = cur.get(k)?;
    }
    match cur {
        Value::Number(n) => Some(*n),
        _ => None,
    }
}

fn text<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for k in path {
        cur = match (cur, k.parse::<usize>()) {
            (Value::Array(a), Ok(i)) => a.get(i)?,
            _ => cur.get(k)?,
        };
    }
    match cur {
        Value::String(s) => Some(s),
        _ => None,
    }
}

/// Ends memprof (it leaves by itself once its target has exited; `stop`: SIGINT first) and reads
/// its summary.json: (lost events, the summary).
fn finish_memprof(
    a: &mut bench::Attached,
    dir: &Path,
    stop: bool,
    notes: &mut Vec<String>,
) -> Result<(f64, Value)> {
    if stop {
        a.proc.signal(libc::SIGINT);
    }
    a.await_memprof(Duration::from_secs(if stop { 120 } else { 60 }))?;
    let (lost, _, detail, v) = bench::memprof_lost(&dir.join("out/summary.json"))?;
    if !detail.is_empty() {
        notes.push(format!("lost: {detail}"));
    }
    for k in ["depth", "misaligned", "no_thread_state", "read"] {
        if let Some(n) = num(&v, &["runtimes", "python_walk_failed", k]).filter(|&n| n > 0.0) {
            notes.push(format!("python_walk_failed.{k} {n:.0}"));
        }
    }
    Ok((lost as f64, v))
}

fn measure_web(s: &Setup, ip: &Interp, p: Prof, script: &Path, n: u64, dir: &Path) -> Result<Web> {
    let mut cmd = Command::new(&ip.exe);
    let bin = dir.join("memray.bin");
    match p {
        Prof::Memray | Prof::MemrayPyAlloc => {
            let site = ip.memray.as_ref().map_err(|e| anyhow!("not run: {e}"))?;
            cmd.env("PYTHONPATH", site)
                .args(["-m", "memray", "run", "-q", "-f", "--no-compress", "-o"])
                .arg(&bin);
            if p == Prof::MemrayPyAlloc {
                cmd.arg("--trace-python-allocators");
            }
        }
        Prof::Tracemalloc => {
            cmd.args(["-X", "tracemalloc"]);
        }
        _ => {}
    }
    cmd.arg(script).arg(n.to_string());
    let mut t = start(cmd, dir)?;
    let pid = t.proc.pid;
    let mut prof = match p.memprof_args() {
        Some(extra) => {
            let mut args = vec!["--interval", "10s"];
            args.extend_from_slice(extra);
            Some(bench::start_memprof(s, pid, dir, &args)?)
        }
        None => None,
    };
    let ours: Vec<libc::pid_t> = [Some(pid), prof.as_ref().map(|a| a.proc.pid)]
        .into_iter()
        .flatten()
        .collect();
    let busy = !foreign_profilers(&ours).is_empty();
    let cpu0 = prof.as_ref().and_then(|a| proc_cpu_s(a.proc.pid));
    t.go();
    let line = wait_line(&mut t, Duration::from_secs(900), |l| l.starts_with('{'))?;
    let busy = busy || !foreign_profilers(&ours).is_empty();
    let mut w = Web::default();
    if let Some(a) = &prof {
        w.prof_hwm_kib = proc_status_kib(a.proc.pid, "VmHWM").map(|k| k as f64);
        w.prof_cpu_s = cpu0.zip(proc_cpu_s(a.proc.pid)).map(|(a, b)| b - a);
    }
    let v = serde_like::parse(&line)
        .map_err(|e| anyhow!("failed to parse the workload's result {line:?}: {e}"))?;
    w.req_per_s = num(&v, &["req_per_s"]).ok_or_else(|| anyhow!("no req_per_s in {line:?}"))?;
    w.rss_kib = num(&v, &["peak_rss_kib"]);
    if busy {
        w.notes
            .push("another session's profiler was running".into());
    }
    if !t.proc.wait_timeout(Duration::from_secs(300)) {
        bail!("the workload did not exit after printing its result");
    }
    ensure!(
        t.proc.exited_ok(),
        "the workload failed ({}); see {}",
        t.proc.exit_description(),
        dir.join("workload.stderr").display()
    );
    if let Some(a) = prof.as_mut() {
        let (lost, v) = finish_memprof(a, dir, false, &mut w.notes)?;
        w.lost = Some(lost);
        let walks = num(&v, &["stats", "stacks_unwound"]).unwrap_or(0.0);
        if p != Prof::MemprofNoPython && walks > 0.0 {
            w.py_frames = num(&v, &["stats", "python_frames"]).map(|f| f / walks);
        }
        w.object_allocator = text(
            &v,
            &["runtimes", "processes", "0", "details", "object_allocator"],
        )
        .map(str::to_string);
        w.prof_hwm_kib = w
            .prof_hwm_kib
            .or(a.proc.reaped.map(|(_, ru)| ru.ru_maxrss as f64));
    }
    if let Ok(m) = fs::metadata(&bin) {
        w.notes.push(format!("output file {}", mib(m.len() / 1024)));
        fs::remove_file(&bin).with_context(|| format!("failed to remove {}", bin.display()))?;
    }
    drop(prof);
    drop(t);
    thread::sleep(Duration::from_millis(300));
    Ok(w)
}

fn measure_depth(
    s: &Setup,
    ip: &Interp,
    p: Prof,
    script: &Path,
    depth: u32,
    pairs: u64,
    dir: &Path,
) -> Result<Depth> {
    let mut cmd = Command::new(&ip.exe);
    cmd.arg(script)
        .arg(depth.to_string())
        .arg(pairs.to_string());
    let mut t = start(cmd, dir)?;
    let mut prof = match p.memprof_args() {
        Some(extra) => {
            let mut args = vec!["--interval", "1h"];
            args.extend_from_slice(extra);
            Some(bench::start_memprof(s, t.proc.pid, dir, &args)?)
        }
        None => None,
    };
    t.go();
    let limit = Duration::from_secs(300);
    let ns = wait_line(&mut t, limit, |l| l.starts_with("ns_per_pair "))?;
    let frames = wait_line(&mut t, limit, |l| l.starts_with("frames "))?;
    let mut d = Depth {
        ns: ns[12..]
            .trim()
            .parse()
            .with_context(|| format!("failed to parse {ns:?}"))?,
        py_actual: frames[7..]
            .trim()
            .parse()
            .with_context(|| format!("failed to parse {frames:?}"))?,
        ..Depth::default()
    };
    if let Some(a) = prof.as_mut() {
        let (_, v) = finish_memprof(a, dir, true, &mut d.notes)?;
        // The heaviest stack is the one that keeps one object in 64.
        let top = match v.get("stacks") {
            Some(Value::Array(st)) => st.iter().max_by(|x, y| {
                num(x, &["bytes"])
                    .partial_cmp(&num(y, &["bytes"]))
                    .unwrap_or(std::cmp::Ordering::Equal)
            }),
            _ => None,
        };
        if let Some(Value::Array(frames)) = top.and_then(|t| t.get("frames")) {
            let py = frames
                .iter()
                .filter(|f| matches!(f, Value::String(s) if s.contains("(depth.py:")))
                .count();
            d.py_seen = Some(py as f64);
        }
    }
    drop(prof);
    drop(t); // killed: it sleeps after printing
    thread::sleep(Duration::from_millis(300));
    Ok(d)
}
