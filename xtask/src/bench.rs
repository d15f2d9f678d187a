//! `cargo xtask bench [--quick]`: the added cost per allocator cycle of memprof next to no
//! profiler and to `memleak-bpfcc` (Debian's bpfcc-tools), on the C workloads of `bench/`, plus
//! memprof's snapshot time and memory with 1M live allocations. Writes `BENCHMARKS.md`.
//!
//! Every measurement runs one profiler at a time (two uprobe-based tools on the same functions
//! get in each other's way) and is repeated (3 times, `--quick`: once), interleaved, so that a
//! slow phase of the machine hits all rows alike; the tables show medians.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs::{self, File},
    io::{BufRead, BufReader, Read, Write as _},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError, Sender},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{anyhow, bail, ensure, Context, Result};

use crate::{
    describe, is_root, output_of, run, target_dir, workspace_root,
};

/// Flags the workloads are built with: optimised like production code, with frame pointers
/// (both profilers walk user stacks by frame pointer).
const CFLAGS: &[&str] = &["-O2", "-g", "-fno-omit-frame-pointer", "-pthread", "-Wall"];

/// Live blocks of the snapshot measurement.
const LIVE_COUNT: u64 = 1_000_000;
/// Its snapshot interval (`--interval`).
const LIVE_INTERVAL_S: u64 = 2;
/// Full snapshots waited for before memprof is stopped.
const LIVE_FULL_SNAPSHOTS: usize = 2;

/// memleak's report interval (seconds).
const MEMLEAK_INTERVAL: &str = "5";
/// Tries per memleak measurement (an attach can fail while another tool probes the same
/// functions; a later try usually works).
const MEMLEAK_TRIES: usize = 2;

// The goals (from the team's issue).
const GOAL_ADDED_RATIO: f64 = 0.25;
/// Issue 13: sampled mode with uprobe sessions.
const GOAL_SAMPLED_RATIO: f64 = 0.15;
const GOAL_RSS_MIB: f64 = 100.0;
const GOAL_SNAPSHOT_S: f64 = 1.0;
const GOAL_RSS_MODE_RATIO: f64 = 1.05;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Profiler {
    None,
    Memprof,
    MemprofNoPlacement,
    /// The frame-pointer walk instead of the CFI unwinder (what unwinding costs).
    MemprofFp,
    MemprofSampled,
    /// Sampled with entry and return probes instead of uprobe sessions (what sessions save).
    MemprofSampledNoSession,
    MemprofRss,
    Memleak,
}

/// `--sample-bytes` of the sampled rows (jemalloc's default sampling interval).
const SAMPLE_BYTES: &str = "524288";

impl Profiler {
    fn label(self) -> &'static str {
        match self {
            Profiler::None => "none (baseline)",
            Profiler::Memprof => "memprof (exact)",
            Profiler::MemprofNoPlacement => "memprof --no-probe-placement",
            Profiler::MemprofFp => "memprof --unwind fp",
            Profiler::MemprofSampled => "memprof --sample-bytes 524288",
            Profiler::MemprofSampledNoSession => "memprof --sample-bytes 524288 --no-uprobe-session",
            Profiler::MemprofRss => "memprof --mode rss",
            Profiler::Memleak => "memleak-bpfcc",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Profiler::None => "none",
            Profiler::Memprof => "memprof",
            Profiler::MemprofNoPlacement => "memprof-noplace",
            Profiler::MemprofFp => "memprof-fp",
            Profiler::MemprofSampled => "memprof-sampled",
            Profiler::MemprofSampledNoSession => "memprof-sampled-no-session",
            Profiler::MemprofRss => "memprof-rss",
            Profiler::Memleak => "memleak",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Workload {
    Churn,
    LeakyMt,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Churn => "churn",
            Workload::LeakyMt => "leaky_mt",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Workload::Churn => "1. single-thread churn",
            Workload::LeakyMt => "2. 4-thread leaky (1 in 100 kept)",
        }
    }
}

/// One run of a workload under one profiler.
#[derive(Clone, Debug, Default)]
struct Sample {
    ns_per_op: f64,
    cycles: u64,
    wall_ns: u64,
    /// The profiler's peak RSS (VmHWM) when the workload finished, KiB.
    prof_hwm_kib: Option<u64>,
    /// The profiler's CPU time (utime + stime) from the go signal to the workload's end.
    prof_cpu_s: Option<f64>,
    /// memprof's lost events (summary.json `lost`, configuration counters left out).
    lost: Option<u64>,
    /// Another session's profiler ran at the start or the end of the workload.
    busy: bool,
    notes: Vec<String>,
}

/// One run of the 1M-live-allocations measurement.
#[derive(Clone, Debug, Default)]
struct LiveSample {
    alloc_ns_per_op: f64,
    /// memprof's VmRSS / VmHWM with all blocks live, before it is stopped (KiB).
    rss_kib: Option<u64>,
    hwm_kib: Option<u64>,
    /// Peak RSS over the whole run, final report included (wait4's ru_maxrss, KiB).
    maxrss_kib: u64,
    /// SIGINT to exit: final snapshot, symbolization, probe detach, SVGs and reports.
    exit_s: f64,
    /// An interval snapshot at full size (due time to its SVG on disk), estimated.
    interval_s: Option<f64>,
    live_allocations: u64,
    stacks: u64,
    lost: u64,
    notes: Vec<String>,
}

pub(crate) struct Setup {
    pub(crate) quick: bool,
    pub(crate) cycles: u64,
    pub(crate) reps: usize,
    pub(crate) bin: PathBuf,
    pub(crate) memprof: PathBuf,
    pub(crate) runs: PathBuf,
    pub(crate) profilers: Vec<Profiler>,
    pub(crate) memleak: Result<Memleak, String>,
}

pub(crate) struct Memleak {
    /// The interpreter of memleak-bpfcc's `#!` line.
    python: PathBuf,
    /// `bench/memleak_shim.py`, which runs `program` with a bcc bug worked around.
    shim: PathBuf,
    program: PathBuf,
    kernel_source: PathBuf,
}

pub fn bench(quick: bool) -> Result<()> {
    ensure!(
        is_root(),
        "cargo xtask bench needs root (BPF): run it as root"
    );
    let started = Instant::now();
    let root = workspace_root();
    let memprof = target_dir().join("release/memprof");
    let help = output_of(Command::new(&memprof).arg("--help"))
        .ok_or_else(|| anyhow!("`{} --help` failed", memprof.display()))?;
    let mut profilers = vec![Profiler::None, Profiler::Memprof];
    if help.contains("--no-probe-placement") {
        profilers.push(Profiler::MemprofNoPlacement);
    }
    if help.contains("--unwind") {
        profilers.push(Profiler::MemprofFp);
    }
    if help.contains("--sample-bytes") {
        profilers.push(Profiler::MemprofSampled);
        if help.contains("--no-uprobe-session") {
            profilers.push(Profiler::MemprofSampledNoSession);
        }
    }
    if help.contains("--mode") {
        profilers.push(Profiler::MemprofRss);
    }
    profilers.push(Profiler::Memleak);

    let bench_dir = target_dir().join("bench");
    let bin = bench_dir.join("bin");
    let runs = bench_dir.join("runs");
    if runs.exists() {
        fs::remove_dir_all(&runs).with_context(|| format!("removing {}", runs.display()))?;
    }
    fs::create_dir_all(&bin)?;
    fs::create_dir_all(&runs)?;
    for w in ["churn", "leaky_mt", "live"] {
        run(Command::new("gcc")
            .args(CFLAGS)
            .arg(root.join("bench").join(format!("{w}.c")))
            .arg("-o")
            .arg(bin.join(w)))?;
    }

    let memleak = setup_memleak().map_err(|e| format!("{e:#}"));
    if let Err(e) = &memleak {
        eprintln!("xtask: bench: memleak-bpfcc is not usable: {e}");
    }

    let s = Setup {
        quick,
        cycles: if quick { 100_000 } else { 1_000_000 },
        reps: if quick { 1 } else { 3 },
        bin,
        memprof,
        runs,
        profilers,
        memleak,
    };

    // Interleaved repetitions: rep 1 of every row, then rep 2, ...
    let workloads = [Workload::Churn, Workload::LeakyMt];
    let mut results: BTreeMap<(Workload, Profiler), Vec<Result<Sample, String>>> = BTreeMap::new();
    let mut live: Vec<Result<LiveSample, String>> = Vec::new();
    for rep in 1..=s.reps {
        for &w in &workloads {
            for &p in &s.profilers {
                eprintln!(
                    "xtask: bench: [{rep}/{}] {} under {} ({:.0}s so far)",
                    s.reps,
                    w.name(),
                    p.label(),
                    started.elapsed().as_secs_f64()
                );
                let r = measure(&s, w, p, rep);
                match &r {
                    Ok(x) => eprintln!(
                        "xtask: bench:   {:.1} ns/cycle{}",
                        x.ns_per_op,
                        x.lost.map(|l| format!(", lost {l}")).unwrap_or_default()
                    ),
                    Err(e) => eprintln!("xtask: bench:   failed: {e}"),
                }
                results.entry((w, p)).or_default().push(r);
            }
        }
        eprintln!(
            "xtask: bench: [{rep}/{}] {LIVE_COUNT} live allocations under memprof ({:.0}s so far)",
            s.reps,
            started.elapsed().as_secs_f64()
        );
        let r = measure_live(&s, rep);
        match &r {
            Ok(x) => eprintln!(
                "xtask: bench:   SIGINT to exit {:.2}s, peak RSS {}",
                x.exit_s,
                mib(x.maxrss_kib)
            ),
            Err(e) => eprintln!("xtask: bench:   failed: {e}"),
        }
        live.push(r);
    }

    let (pairs, reps) = if quick { ("50000", "1") } else { ("200000", "3") };
    eprintln!("xtask: bench: unwinding cost (bench/unwind_cost.sh {pairs} {reps})");
    let unwind_table = Command::new("bash")
        .arg(root.join("bench/unwind_cost.sh"))
        .args([pairs, reps])
        .env("MEMPROF_BIN", &s.memprof)
        .output()
        .context("running bench/unwind_cost.sh")?;
    ensure!(
        unwind_table.status.success(),
        "bench/unwind_cost.sh failed: {}",
        String::from_utf8_lossy(&unwind_table.stderr)
    );
    let exit_idle = exit_and_idle_sections(&root, &s.memprof)?;
    let python = crate::bench_python::sections(&s);
    let mut md = report(&s, &workloads, &results, &live, started.elapsed())?;
    md.push_str(&format!(
        "\n## Unwinding\n\nWhat the stack walk costs per recorded allocation and how deep it gets \
         (`bench/unwind_cost.sh {pairs} {reps}`, run by `cargo xtask bench`; `bench/deep.c`: \
         malloc+free pairs at a given call depth, every allocation recorded; `-O2` builds with \
         and without frame pointers). The CFI walk's extra cost over the frame-pointer walk is the \
         difference between the two memprof rows of a depth; \"frames\" counts the leaking \
         stack's frames (with `--unwind fp`, a build without frame pointers yields 1).\n\n{}\n",
        String::from_utf8_lossy(&unwind_table.stdout).trim_end()
    ));
    md.push_str(&exit_idle);
    md.push_str(&python);
    let path = root.join("BENCHMARKS.md");
    // The Soak section comes from `cargo xtask soak`: carried over.
    let md = crate::soak::keep_section(&fs::read_to_string(&path).unwrap_or_default(), md);
    fs::write(&path, &md).with_context(|| format!("writing {}", path.display()))?;
    println!("{md}");
    eprintln!(
        "xtask: bench: wrote {} ({:.0}s in all; run folders under {})",
        path.display(),
        started.elapsed().as_secs_f64(),
        s.runs.display()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// memleak-bpfcc setup
// ---------------------------------------------------------------------------------------------

/// Installs bpfcc-tools and Debian's kernel headers (idempotent) and merges the headers into one
/// folder for `BCC_KERNEL_SOURCE` (the running kernel ships none).
fn setup_memleak() -> Result<Memleak> {
    ensure!(
        output_of(Command::new("dpkg").arg("--version")).is_some(),
        "not a Debian system (no dpkg): install bpfcc-tools by hand"
    );
    crate::apt_install_missing(&["bpfcc-tools", "linux-headers-amd64"])?;
    let program = find_program("memleak-bpfcc")
        .ok_or_else(|| anyhow!("memleak-bpfcc is not in PATH nor in /usr/sbin"))?;
    // Its own interpreter (the system Python that has the bcc module), not the first python3
    // in PATH.
    let script =
        fs::read_to_string(&program).with_context(|| format!("reading {}", program.display()))?;
    let python = script
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("#!"))
        .and_then(|l| l.split_whitespace().next())
        .map(PathBuf::from)
        .ok_or_else(|| anyhow!("{} has no #! line", program.display()))?;
    let shim = workspace_root().join("bench/memleak_shim.py");
    ensure!(shim.is_file(), "{} is missing", shim.display());

    // /usr/src/linux-headers-<v>-amd64 and its -common sibling, newest <v> first.
    let mut versions: Vec<String> = fs::read_dir("/usr/src")
        .context("reading /usr/src")?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| {
            n.strip_prefix("linux-headers-")?
                .strip_suffix("-amd64")
                .map(str::to_string)
        })
        .filter(|v| Path::new(&format!("/usr/src/linux-headers-{v}-common")).is_dir())
        .collect();
    versions.sort_by_key(|v| std::cmp::Reverse(version_key(v)));
    let v = versions
        .first()
        .ok_or_else(|| anyhow!("no /usr/src/linux-headers-*-amd64 with its -common folder"))?;
    let dest = target_dir()
        .join("bcc-headers")
        .join(format!("linux-headers-{v}"));
    let marker = dest.join(".xtask-merged");
    if !marker.is_file() {
        if dest.exists() {
            fs::remove_dir_all(&dest)?;
        }
        fs::create_dir_all(dest.parent().unwrap())?;
        run(Command::new("cp")
            .arg("-a")
            .arg(format!("/usr/src/linux-headers-{v}-common"))
            .arg(&dest))?;
        run(Command::new("cp")
            .arg("-a")
            .arg(format!("/usr/src/linux-headers-{v}-amd64/."))
            .arg(format!("{}/", dest.display())))?;
        fs::write(&marker, b"")?;
    }
    Ok(Memleak {
        python,
        shim,
        program,
        kernel_source: dest,
    })
}

fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// A line from a child's output, with its arrival time.
pub(crate) struct Line {
    pub(crate) wall: SystemTime,
    pub(crate) text: String,
}

/// Copies `reader` line by line into `log` and to `tx`.
pub(crate) fn pump(reader: impl Read + Send + 'static, tx: Sender<Line>, mut log: File) {
    thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            let wall = SystemTime::now();
            let _ = writeln!(log, "{line}");
            let _ = tx.send(Line { wall, text: line });
        }
    });
}

/// A child process reaped with wait4 (for its rusage); killed by its own PID and reaped on drop
/// when it is still ours.
pub(crate) struct Proc {
    pub(crate) _child: Child,
    pub(crate) pid: libc::pid_t,
    pub(crate) reaped: Option<(i32, libc::rusage)>,
}

impl Proc {
    pub(crate) fn spawn(cmd: &mut Command) -> Result<Proc> {
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", describe(cmd)))?;
        Ok(Proc {
            pid: child.id() as libc::pid_t,
            _child: child,
            reaped: None,
        })
    }

    /// Reaps the child if it has exited.
    pub(crate) fn try_reap(&mut self) -> bool {
        if self.reaped.is_some() {
            return true;
        }
        let mut status = 0;
        // SAFETY: rusage is plain data; wait4 on our own child.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(self.pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == self.pid {
            self.reaped = Some((status, ru));
            true
        } else {
            false
        }
    }

    pub(crate) fn wait_timeout(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.try_reap() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub(crate) fn signal(&self, sig: libc::c_int) {
        if self.reaped.is_none() {
            // SAFETY: kill(2) on our own child, not yet reaped (its PID cannot be reused).
            unsafe { libc::kill(self.pid, sig) };
        }
    }

    /// Ends it (SIGKILL) and reaps it if it is still there.
    pub(crate) fn kill(&mut self) {
        if !self.try_reap() {
            self.signal(libc::SIGKILL);
            self.wait_timeout(Duration::from_secs(10));
        }
    }

    pub(crate) fn exit_description(&self) -> String {
        match self.reaped {
            Some((st, _)) if libc::WIFEXITED(st) => format!("exit code {}", libc::WEXITSTATUS(st)),
            Some((st, _)) if libc::WIFSIGNALED(st) => format!("signal {}", libc::WTERMSIG(st)),
            Some(_) => "ended".into(),
            None => "running".into(),
        }
    }

    pub(crate) fn exited_ok(&self) -> bool {
        matches!(self.reaped, Some((st, _)) if libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Restores the default SIGINT disposition in a child (an ignored SIGINT is inherited, and
/// Python then never raises KeyboardInterrupt).
pub(crate) fn default_sigint(cmd: &mut Command) {
    // SAFETY: signal(2) is async-signal-safe; nothing is allocated.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of a process (all its threads), from /proc/PID/stat.
pub(crate) fn proc_cpu_s(pid: libc::pid_t) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

/// A `kB` field of /proc/PID/status (VmHWM, VmRSS).
pub(crate) fn proc_status_kib(pid: libc::pid_t, key: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix(':')?;
        v.split_whitespace().next()?.parse().ok()
    })
}

/// Profiler processes this bench did not start (other sessions' memprof or memleak runs): they
/// compete for the CPUs.
pub(crate) fn foreign_profilers(ours: &[libc::pid_t]) -> Vec<libc::pid_t> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|pid| !ours.contains(pid))
        .filter(|pid| {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            comm.trim() == "memprof" || String::from_utf8_lossy(&cmdline).contains("memleak")
        })
        .collect()
}

/// Open perf events of a process (bcc attaches each uprobe as one).
fn perf_event_fds(pid: libc::pid_t) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| fs::read_link(e.ok()?.path()).ok())
                .filter(|t| t.to_string_lossy().contains("perf_event"))
                .count()
        })
        .unwrap_or(0)
}

pub(crate) fn rusage_cpu_s(ru: &libc::rusage) -> f64 {
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// A started, paused workload.
pub(crate) struct Target {
    pub(crate) proc: Proc,
    pub(crate) lines: Receiver<Line>,
}

fn start_workload(bin: &Path, arg: u64, dir: &Path) -> Result<Target> {
    let mut cmd = Command::new(bin);
    cmd.arg(arg.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(dir.join("workload.stderr"))?);
    default_sigint(&mut cmd);
    let mut proc = Proc::spawn(&mut cmd)?;
    let (tx, lines) = mpsc::channel();
    pump(
        proc._child.stdout.take().unwrap(),
        tx,
        File::create(dir.join("workload.stdout"))?,
    );
    let ready = lines
        .recv_timeout(Duration::from_secs(20))
        .map_err(|_| anyhow!("{} did not print `ready`", bin.display()))?;
    ensure!(
        ready.text == format!("ready {}", proc.pid),
        "unexpected first line from {}: {:?}",
        bin.display(),
        ready.text
    );
    Ok(Target { proc, lines })
}

impl Target {
    pub(crate) fn go(&self) {
        self.proc.signal(libc::SIGUSR1);
    }

    /// Reads `key value` lines until `ns_per_op`.
    fn results(&mut self, limit: Duration) -> Result<BTreeMap<String, String>> {
        let deadline = Instant::now() + limit;
        let mut kv = BTreeMap::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some((k, v)) = line.text.split_once(' ') {
                        kv.insert(k.to_string(), v.trim().to_string());
                    }
                    if line.text.starts_with("ns_per_op ") {
                        return Ok(kv);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!("the workload did not finish within {}s", limit.as_secs())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.proc.wait_timeout(Duration::from_secs(2));
                    bail!(
                        "the workload ended early ({})",
                        self.proc.exit_description()
                    )
                }
            }
        }
    }
}

fn get<T: std::str::FromStr>(kv: &BTreeMap<String, String>, key: &str) -> Result<T> {
    kv.get(key)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("the workload printed no valid `{key}`"))
}

/// A profiler attached to a workload.
pub(crate) struct Attached {
    pub(crate) proc: Proc,
    pub(crate) lines: Receiver<Line>,
    /// Every line seen so far (for error messages).
    seen: Vec<String>,
    /// When its "attached" line came (memprof).
    attached_at: Option<SystemTime>,
}

impl Attached {
    /// Waits up to `first` for memprof to exit by itself, then SIGINT and 60 s more, then kills
    /// it; fails unless it exited cleanly.
    pub(crate) fn await_memprof(&mut self, first: Duration) -> Result<()> {
        if !self.proc.wait_timeout(first) {
            self.proc.signal(libc::SIGINT);
            if !self.proc.wait_timeout(Duration::from_secs(60)) {
                self.proc.kill();
                bail!("memprof did not exit after SIGINT");
            }
        }
        ensure!(self.proc.exited_ok(), "memprof failed ({}): {}", self.proc.exit_description(), self.reason());
        Ok(())
    }

    /// Waits for a line for which `pred` holds; fails when the process ends or after `limit`.
    fn wait_line(&mut self, limit: Duration, pred: impl Fn(&str) -> bool) -> Result<Line> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(line) => {
                    self.seen.push(line.text.clone());
                    if pred(&line.text) {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(RecvTimeoutError::Timeout) => bail!("nothing after {}s", limit.as_secs()),
                Err(RecvTimeoutError::Disconnected) => {
                    self.proc.wait_timeout(Duration::from_secs(5));
                    bail!(
                        "it ended ({}): {}",
                        self.proc.exit_description(),
                        self.reason()
                    )
                }
            }
        }
    }

    /// The most telling line of its output so far.
    pub(crate) fn reason(&mut self) -> String {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l.text);
        }
        let pick = self
            .seen
            .iter()
            .rev()
            .find(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("error") || l.contains("cannot") || l.contains("failed")
            })
            .or_else(|| self.seen.iter().rev().find(|l| !l.trim().is_empty()));
        let mut r = pick.map_or_else(|| "no output".to_string(), |l| l.trim().to_string());
        if r.len() > 160 {
            r.truncate(160);
            r.push('…');
        }
        r
    }
}

pub(crate) fn start_memprof(s: &Setup, pid: libc::pid_t, dir: &Path, extra: &[&str]) -> Result<Attached> {
    let out = dir.join("out");
    let mut cmd = Command::new(&s.memprof);
    cmd.arg("--pid")
        .arg(pid.to_string())
        .arg("--output")
        .arg(&out)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(File::create(dir.join("profiler.stdout"))?)
        .stderr(Stdio::piped());
    default_sigint(&mut cmd);
    fs::write(dir.join("profiler.command"), describe(&cmd))?;
    let mut proc = Proc::spawn(&mut cmd)?;
    let (tx, lines) = mpsc::channel();
    pump(
        proc._child.stderr.take().unwrap(),
        tx,
        File::create(dir.join("profiler.stderr"))?,
    );
    let mut a = Attached {
        proc,
        lines,
        seen: Vec::new(),
        attached_at: None,
    };
    let line = a
        .wait_line(Duration::from_secs(60), |l| {
            l.starts_with("memprof: attached")
        })
        .context("memprof did not attach")?;
    a.attached_at = Some(line.wall);
    Ok(a)
}

fn start_memleak(m: &Memleak, pid: libc::pid_t, dir: &Path) -> Result<Attached> {
    let mut cmd = Command::new(&m.python);
    cmd.arg(&m.shim)
        .arg(&m.program)
        .args(["-p", &pid.to_string(), MEMLEAK_INTERVAL])
        .env("BCC_KERNEL_SOURCE", &m.kernel_source)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    default_sigint(&mut cmd);
    fs::write(
        dir.join("profiler.command"),
        format!(
            "BCC_KERNEL_SOURCE={} {}",
            m.kernel_source.display(),
            describe(&cmd)
        ),
    )?;
    let mut proc = Proc::spawn(&mut cmd)?;
    let (tx, lines) = mpsc::channel();
    pump(
        proc._child.stdout.take().unwrap(),
        tx.clone(),
        File::create(dir.join("profiler.stdout"))?,
    );
    pump(
        proc._child.stderr.take().unwrap(),
        tx,
        File::create(dir.join("profiler.stderr"))?,
    );
    let mut a = Attached {
        proc,
        lines,
        seen: Vec::new(),
        attached_at: None,
    };
    // It compiles its BPF program, prints "Attaching to pid ...", then attaches its uprobes
    // (one perf event each): wait until their number stops growing.
    a.wait_line(Duration::from_secs(180), |l| {
        l.starts_with("Attaching to pid")
    })
    .context("memleak did not start")?;
    let since = Instant::now();
    let (mut last, mut stable_since) = (0, Instant::now());
    loop {
        thread::sleep(Duration::from_millis(100));
        if a.proc.try_reap() {
            bail!("it ended ({}): {}", a.proc.exit_description(), a.reason());
        }
        let n = perf_event_fds(a.proc.pid);
        if n != last {
            last = n;
            stable_since = Instant::now();
        }
        let settled = n > 0
            && stable_since.elapsed() >= Duration::from_secs(1)
            && since.elapsed() >= Duration::from_millis(1500);
        if settled {
            break;
        }
        if since.elapsed() > Duration::from_secs(20) {
            bail!(
                "no uprobes attached after 20s ({n} perf events): {}",
                a.reason()
            );
        }
    }
    // A failed attach raises an exception a little later than the last perf event.
    thread::sleep(Duration::from_millis(500));
    if a.proc.try_reap() {
        bail!("it ended ({}): {}", a.proc.exit_description(), a.reason());
    }
    Ok(a)
}

/// memprof's lost-event counters (summary.json `lost`), without the two that count probes and
/// tracepoints rather than events; `detail` names the non-zero ones.
pub(crate) fn memprof_lost(summary: &Path) -> Result<(u64, u64, String, serde_like::Value)> {
    let text =
        fs::read_to_string(summary).with_context(|| format!("reading {}", summary.display()))?;
    let v = serde_like::parse(&text).map_err(|e| anyhow!("{}: {e}", summary.display()))?;
    let mut sum = 0;
    let mut detail = Vec::new();
    if let Some(serde_like::Value::Object(lost)) = v.get("lost") {
        for (k, n) in lost {
            let n = n.as_u64().unwrap_or(0);
            if n == 0 {
                continue;
            }
            detail.push(format!("{k} {n}"));
            if k != "uprobe_attach_failures" && k != "optional_tracepoints_missing" {
                sum += n;
            }
        }
    }
    let live = v
        .get("live_allocations")
        .and_then(|x| x.as_u64())
        .unwrap_or(0);
    Ok((sum, live, detail.join(", "), v))
}

// ---------------------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------------------

fn measure(s: &Setup, w: Workload, p: Profiler, rep: usize) -> Result<Sample, String> {
    if p == Profiler::Memleak {
        let m = s.memleak.as_ref().map_err(|e| e.clone())?;
        let mut errors = Vec::new();
        for attempt in 1..=MEMLEAK_TRIES {
            match measure_once(s, w, p, rep, attempt, Some(m)) {
                Ok(mut x) => {
                    if !errors.is_empty() {
                        x.notes
                            .push(format!("attach retried after: {}", errors.join("; ")));
                    }
                    return Ok(x);
                }
                Err(e) => {
                    let e = format!("{e:#}");
                    eprintln!("xtask: bench:   memleak try {attempt}: {e}");
                    errors.push(e);
                    thread::sleep(Duration::from_secs(3));
                }
            }
        }
        return Err(errors.pop().unwrap_or_default());
    }
    measure_once(s, w, p, rep, 1, None).map_err(|e| format!("{e:#}"))
}

fn measure_once(
    s: &Setup,
    w: Workload,
    p: Profiler,
    rep: usize,
    attempt: usize,
    memleak: Option<&Memleak>,
) -> Result<Sample> {
    let dir = s
        .runs
        .join(format!("{}-{}-{rep}-{attempt}", w.name(), p.slug()));
    fs::create_dir_all(&dir)?;
    let mut target = start_workload(&s.bin.join(w.name()), s.cycles, &dir)?;
    let pid = target.proc.pid;

    let mut prof = match p {
        Profiler::None => None,
        Profiler::Memprof => Some(start_memprof(s, pid, &dir, &["--interval", "10s"])?),
        Profiler::MemprofNoPlacement => Some(start_memprof(
            s,
            pid,
            &dir,
            &["--interval", "10s", "--no-probe-placement"],
        )?),
        Profiler::MemprofFp => {
            Some(start_memprof(s, pid, &dir, &["--interval", "10s", "--unwind", "fp"])?)
        }
        Profiler::MemprofSampled => Some(start_memprof(
            s,
            pid,
            &dir,
            &["--interval", "10s", "--sample-bytes", SAMPLE_BYTES],
        )?),
        Profiler::MemprofSampledNoSession => Some(start_memprof(
            s,
            pid,
            &dir,
            &["--interval", "10s", "--sample-bytes", SAMPLE_BYTES, "--no-uprobe-session"],
        )?),
        Profiler::MemprofRss => {
            Some(start_memprof(s, pid, &dir, &["--interval", "10s", "--mode", "rss"])?)
        }
        Profiler::Memleak => Some(start_memleak(memleak.unwrap(), pid, &dir)?),
    };

    let ours: Vec<libc::pid_t> = [Some(pid), prof.as_ref().map(|a| a.proc.pid)]
        .into_iter()
        .flatten()
        .collect();
    let busy_before = !foreign_profilers(&ours).is_empty();
    let cpu0 = prof.as_ref().and_then(|a| proc_cpu_s(a.proc.pid));
    target.go();
    let kv = target.results(Duration::from_secs(400))?;
    let busy = busy_before || !foreign_profilers(&ours).is_empty();
    // The profiler's numbers right away (memprof leaves soon after its target).
    let (mut hwm, mut cpu1) = (None, None);
    if let Some(a) = &prof {
        hwm = proc_status_kib(a.proc.pid, "VmHWM");
        cpu1 = proc_cpu_s(a.proc.pid);
    }
    let mut sample = Sample {
        ns_per_op: get(&kv, "ns_per_op")?,
        cycles: get(&kv, "cycles")?,
        wall_ns: get(&kv, "wall_ns")?,
        busy,
        ..Sample::default()
    };
    if !target.proc.wait_timeout(Duration::from_secs(20)) {
        bail!("the workload did not exit after printing its results");
    }

    if let Some(a) = prof.as_mut() {
        if p == Profiler::Memleak {
            ensure!(
                !a.proc.try_reap(),
                "memleak ended during the run: {}",
                a.reason()
            );
            a.proc.signal(libc::SIGINT);
            if !a.proc.wait_timeout(Duration::from_secs(30)) {
                sample
                    .notes
                    .push("memleak killed (no exit 30s after SIGINT)".into());
                a.proc.kill();
            }
        } else {
            // memprof ends by itself once its target has exited.
            a.await_memprof(Duration::from_secs(30))?;
            let (lost, _, detail, _) = memprof_lost(&dir.join("out/summary.json"))?;
            sample.lost = Some(lost);
            if !detail.is_empty() {
                sample.notes.push(format!("lost: {detail}"));
            }
        }
        let ru = a.proc.reaped.map(|(_, ru)| ru);
        sample.prof_hwm_kib = hwm.or(ru.map(|ru| ru.ru_maxrss as u64));
        sample.prof_cpu_s = match (cpu0, cpu1) {
            (Some(a), Some(b)) => Some(b - a),
            (Some(a), None) => ru.map(|ru| rusage_cpu_s(&ru) - a),
            _ => None,
        };
    }
    drop(prof);
    drop(target);
    // Let the kernel finish tearing the probes down before the next run.
    thread::sleep(Duration::from_millis(300));
    Ok(sample)
}

fn measure_live(s: &Setup, rep: usize) -> Result<LiveSample, String> {
    measure_live_once(s, rep).map_err(|e| format!("{e:#}"))
}

fn measure_live_once(s: &Setup, rep: usize) -> Result<LiveSample> {
    let dir = s.runs.join(format!("live-memprof-{rep}"));
    fs::create_dir_all(&dir)?;
    let mut target = start_workload(&s.bin.join("live"), LIVE_COUNT, &dir)?;
    let max = (2 * LIVE_COUNT).to_string();
    let interval = format!("{LIVE_INTERVAL_S}s");
    let mut a = start_memprof(
        s,
        target.proc.pid,
        &dir,
        &["--interval", &interval, "--max-allocations", &max],
    )?;
    let attached_at = a.attached_at.unwrap_or_else(SystemTime::now);
    target.go();
    let kv = target.results(Duration::from_secs(300))?;
    let mut sample = LiveSample {
        alloc_ns_per_op: get(&kv, "ns_per_op")?,
        ..LiveSample::default()
    };

    // Wait for full-size snapshots: "memprof: [  6.0s] 42.0 MiB live in 1000000 allocations, …".
    // memprof's stderr has not been read since its `attached` line, so every snapshot line is
    // still to come, in order: the k-th one is snapshots/000k.
    let mut full: Vec<(u64, SystemTime)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10 * LIVE_INTERVAL_S + 30);
    let mut index = 0u64;
    while full.len() < LIVE_FULL_SNAPSHOTS {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(
            !left.is_zero(),
            "no full-size snapshot (all {LIVE_COUNT} blocks) in time"
        );
        let line = a
            .wait_line(left, is_snapshot_line)
            .context("waiting for memprof's snapshots")?;
        index += 1;
        if snapshot_live(&line.text).is_some_and(|n| n >= LIVE_COUNT) {
            full.push((index, line.wall));
        }
    }
    sample.rss_kib = proc_status_kib(a.proc.pid, "VmRSS");
    sample.hwm_kib = proc_status_kib(a.proc.pid, "VmHWM");

    let t0 = Instant::now();
    a.proc.signal(libc::SIGINT);
    if !a.proc.wait_timeout(Duration::from_secs(120)) {
        a.proc.kill();
        bail!("memprof did not exit within 120s of SIGINT");
    }
    sample.exit_s = t0.elapsed().as_secs_f64();
    ensure!(
        a.proc.exited_ok(),
        "memprof failed ({}): {}",
        a.proc.exit_description(),
        a.reason()
    );
    sample.maxrss_kib = a.proc.reaped.map_or(0, |(_, ru)| ru.ru_maxrss as u64);
    drop(target);

    let out = dir.join("out");
    let (lost, live, detail, v) = memprof_lost(&out.join("summary.json"))?;
    sample.lost = lost;
    sample.live_allocations = live;
    sample.stacks = match v.get("stacks") {
        Some(serde_like::Value::Array(a)) => a.len() as u64,
        _ => 0,
    };
    if !detail.is_empty() {
        sample.notes.push(format!("lost: {detail}"));
    }

    // Interval snapshots: due at (attach + k × interval) (memprof's loop starts right after it
    // prints "attached"); done when snapshots/NNNN.svg is on disk.
    let mut est: Vec<f64> = full
        .iter()
        .filter_map(|&(k, _)| {
            let svg = out.join(format!("snapshots/{k:04}.svg"));
            let mtime = fs::metadata(&svg).ok()?.modified().ok()?;
            let due = attached_at + Duration::from_secs(k * LIVE_INTERVAL_S);
            Some(secs_between(due, mtime))
        })
        .collect();
    sample.interval_s = median(&mut est);
    thread::sleep(Duration::from_millis(300));
    Ok(sample)
}

fn is_snapshot_line(l: &str) -> bool {
    l.starts_with("memprof: [") && l.contains(" live in ")
}

fn snapshot_live(l: &str) -> Option<u64> {
    let rest = &l[l.find(" live in ")? + " live in ".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

fn secs_between(a: SystemTime, b: SystemTime) -> f64 {
    match b.duration_since(a) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

pub(crate) fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn med_of<T>(xs: &[&T], f: impl Fn(&T) -> Option<f64>) -> Option<f64> {
    let mut v: Vec<f64> = xs.iter().filter_map(|x| f(x)).collect();
    median(&mut v)
}

pub(crate) fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

pub(crate) fn si(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

pub(crate) fn sh(cmd: &str, args: &[&str]) -> String {
    output_of(Command::new(cmd).args(args))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "?".into())
}

pub(crate) fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

struct Row {
    ns: Option<f64>,
    failure: Option<String>,
}

fn report(
    s: &Setup,
    workloads: &[Workload],
    results: &BTreeMap<(Workload, Profiler), Vec<Result<Sample, String>>>,
    live: &[Result<LiveSample, String>],
    took: Duration,
) -> Result<String> {
    let command = if s.quick {
        "cargo xtask bench --quick"
    } else {
        "cargo xtask bench"
    };
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let commit = sh(
        "git",
        &[
            "-C",
            &workspace_root().to_string_lossy(),
            "rev-parse",
            "--short",
            "HEAD",
        ],
    );
    let dirty = output_of(Command::new("git").arg("-C").arg(workspace_root()).args([
        "status",
        "--porcelain",
        "--untracked-files=no",
    ]))
    .is_some_and(|o| !o.trim().is_empty());
    let memleak_version = sh("dpkg-query", &["-W", "-f=${Version}", "bpfcc-tools"]);
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: String = load
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());

    let mut md = String::new();
    let w = &mut md;
    writeln!(w, "# Benchmarks")?;
    writeln!(w)?;
    writeln!(
        w,
        "Generated by `{command}` ({}; source: `xtask/src/bench.rs`, workloads: `bench/*.c`). \
         Every run overwrites this file.",
        if s.quick {
            "quick run: 1e5 cycles, 1 repetition"
        } else {
            "1e6 cycles, 3 repetitions"
        }
    )?;
    writeln!(w)?;
    writeln!(
        w,
        "- date: {} (unix {now})",
        sh("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"])
    )?;
    writeln!(
        w,
        "- command: `{command}` (as root), {:.0} s in all",
        took.as_secs_f64()
    )?;
    writeln!(w, "- kernel: `{}`", sh("uname", &["-r"]))?;
    writeln!(
        w,
        "- CPU: {} — {cores} cores; load average at the end: {load}",
        cpu_model()
    )?;
    writeln!(
        w,
        "- memprof: `{}` at commit {commit}{}",
        sh(&s.memprof.to_string_lossy(), &["--version"]),
        if dirty {
            " (with uncommitted changes)"
        } else {
            ""
        }
    )?;
    writeln!(
        w,
        "- memleak-bpfcc: bpfcc-tools {memleak_version}{}",
        match &s.memleak {
            Ok(m) => format!(
                ", run as `BCC_KERNEL_SOURCE={} {} bench/memleak_shim.py {} -p PID {MEMLEAK_INTERVAL}` \
                 (the shim fixes a bcc argument bug, see Method)",
                m.kernel_source
                    .strip_prefix(workspace_root())
                    .unwrap_or(&m.kernel_source)
                    .display(),
                m.python.display(),
                m.program.display()
            ),
            Err(e) => format!(" — not usable: {e}"),
        }
    )?;
    writeln!(w)?;

    // --- Goals -------------------------------------------------------------------------------
    let row_of = |wl: Workload, p: Profiler| -> Row {
        let rs = results.get(&(wl, p)).map(Vec::as_slice).unwrap_or(&[]);
        let ok: Vec<&Sample> = rs.iter().filter_map(|r| r.as_ref().ok()).collect();
        let failure = rs.iter().rev().find_map(|r| r.as_ref().err().cloned());
        Row {
            ns: med_of(&ok, |x| Some(x.ns_per_op)),
            failure,
        }
    };
    let live_ok: Vec<&LiveSample> = live.iter().filter_map(|r| r.as_ref().ok()).collect();
    let live_fail = live.iter().rev().find_map(|r| r.as_ref().err().cloned());
    let live_maxrss = med_of(&live_ok, |x| Some(x.maxrss_kib as f64));
    let live_exit = med_of(&live_ok, |x| Some(x.exit_s));
    let live_interval = med_of(&live_ok, |x| x.interval_s);

    writeln!(w, "## Goals")?;
    writeln!(w)?;
    writeln!(
        w,
        "From the team's issue; checked against this run, on this machine."
    )?;
    writeln!(w)?;
    writeln!(w, "| goal | result | reached |")?;
    writeln!(w, "| --- | --- | --- |")?;
    // Added ns per cycle against memleak-bpfcc's: exact mode, and sampled mode (uprobe
    // sessions: an unsampled call pays the entry trap only).
    for (prof, goal, what) in [
        (Profiler::Memprof, GOAL_ADDED_RATIO, "exact mode's"),
        (Profiler::MemprofSampled, GOAL_SAMPLED_RATIO, "`--sample-bytes 524288`'s"),
    ] {
        if !s.profilers.contains(&prof) {
            continue;
        }
        let mut parts = Vec::new();
        let mut verdict = Some(true);
        for &wl in workloads {
            let base = row_of(wl, Profiler::None).ns;
            let mp = row_of(wl, prof).ns;
            let ml = row_of(wl, Profiler::Memleak);
            match (base, mp, ml.ns) {
                (Some(b), Some(m), Some(l)) if l - b > 0.0 => {
                    let r = (m - b) / (l - b);
                    parts.push(format!(
                        "{}: {:.0} / {:.0} ns = {:.3}×",
                        wl.name(),
                        m - b,
                        l - b,
                        r
                    ));
                    if r > goal {
                        verdict = verdict.map(|_| false);
                    }
                }
                _ => {
                    parts.push(format!(
                        "{}: not measured{}",
                        wl.name(),
                        ml.failure
                            .map(|f| format!(" (memleak-bpfcc failed: {f})"))
                            .unwrap_or_default()
                    ));
                    verdict = None;
                }
            }
        }
        writeln!(
            w,
            "| memprof {what} added ns per cycle ≤ {goal}× memleak-bpfcc's (same run) | {} | {} |",
            parts.join("; "),
            match verdict {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "not evaluated",
            }
        )?;
    }
    {
        // RSS mode: the target pays only on first-touch page faults.
        let parts: Vec<String> = workloads
            .iter()
            .filter_map(|&wl| {
                let b = row_of(wl, Profiler::None).ns?;
                let r = row_of(wl, Profiler::MemprofRss).ns?;
                Some((wl, r / b))
            })
            .map(|(wl, ratio)| format!("{}: {ratio:.3}× baseline", wl.name()))
            .collect();
        let reached = workloads.iter().all(|&wl| {
            match (row_of(wl, Profiler::None).ns, row_of(wl, Profiler::MemprofRss).ns) {
                (Some(b), Some(r)) => r / b <= GOAL_RSS_MODE_RATIO,
                _ => false,
            }
        });
        writeln!(
            w,
            "| memprof --mode rss ≤ {GOAL_RSS_MODE_RATIO}× baseline | {} | {} |",
            if parts.is_empty() { "not measured".to_string() } else { parts.join("; ") },
            if parts.is_empty() { "not evaluated" } else if reached { "yes" } else { "**no**" }
        )?;
        writeln!(
            w,
            "| sampled estimate within ±10% | checked by `tests/tests/sampling.rs` (leaky.c, --sample-bytes 4096: heap sites' total within ±10%, asserted in CI) | yes |"
        )?;
    }
    {
        let hwm = med_of(&live_ok, |x| x.hwm_kib.map(|v| v as f64));
        let (res, ok) = match live_maxrss {
            Some(k) => (
                format!(
                    "peak RSS {:.1} MiB over the whole run (final report included); {} while holding them",
                    k / 1024.0,
                    hwm.map_or("?".into(), |h| format!("VmHWM {:.1} MiB", h / 1024.0))
                ),
                if k / 1024.0 <= GOAL_RSS_MIB { "yes" } else { "**no**" },
            ),
            None => (format!("failed: {}", live_fail.clone().unwrap_or_default()), "not evaluated"),
        };
        writeln!(
            w,
            "| memprof's own RSS ≤ {GOAL_RSS_MIB:.0} MiB with 1M live allocations | {res} | {ok} |"
        )?;
    }
    {
        let (res, ok) = match live_exit {
            Some(e) => (
                format!(
                    "final snapshot (SIGINT → exit) {e:.2} s; interval snapshot + SVG {}",
                    live_interval.map_or("?".into(), |i| format!("≈ {i:.2} s"))
                ),
                if e <= GOAL_SNAPSHOT_S {
                    "yes".to_string()
                } else if live_interval.is_some_and(|i| i <= GOAL_SNAPSHOT_S) {
                    "**no** at exit; yes for interval snapshots".to_string()
                } else {
                    "**no**".to_string()
                },
            ),
            None => (
                format!("failed: {}", live_fail.clone().unwrap_or_default()),
                "not evaluated".into(),
            ),
        };
        writeln!(
            w,
            "| snapshot + SVG ≤ {GOAL_SNAPSHOT_S:.0} s with 1M live allocations | {res} | {ok} |"
        )?;
    }
    writeln!(w)?;

    // --- Cost per cycle ------------------------------------------------------------------------
    writeln!(w, "## Added cost per allocator cycle")?;
    writeln!(w)?;
    writeln!(
        w,
        "{} cycles per run; medians of {} run{}. Profiler RSS and CPU are the profiler process's \
         own (its BPF programs run in the workload's context and show up in ns/cycle).",
        s.cycles,
        s.reps,
        if s.reps == 1 { "" } else { "s" }
    )?;
    writeln!(w)?;
    writeln!(
        w,
        "| workload | profiler | ns/cycle | added ns | × baseline | events/s | profiler peak RSS | profiler CPU | lost events | notes |"
    )?;
    writeln!(
        w,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    )?;
    for &wl in workloads {
        let base = row_of(wl, Profiler::None).ns;
        for &p in &s.profilers {
            let rs = results.get(&(wl, p)).map(Vec::as_slice).unwrap_or(&[]);
            let ok: Vec<&Sample> = rs.iter().filter_map(|r| r.as_ref().ok()).collect();
            let fails: Vec<&String> = rs.iter().filter_map(|r| r.as_ref().err()).collect();
            if ok.is_empty() {
                let reason = fails
                    .last()
                    .map_or("no result".to_string(), |f| f.to_string());
                writeln!(
                    w,
                    "| {} | {} | failed: {} | | | | | | | |",
                    wl.label(),
                    p.label(),
                    md_cell(&reason)
                )?;
                continue;
            }
            let ns = med_of(&ok, |x| Some(x.ns_per_op)).unwrap();
            let eps = med_of(&ok, |x| Some(x.cycles as f64 / (x.wall_ns as f64 / 1e9))).unwrap();
            let hwm = med_of(&ok, |x| x.prof_hwm_kib.map(|v| v as f64));
            let cpu = med_of(&ok, |x| x.prof_cpu_s);
            // CPU per second of run: the share of one core the profiler itself used.
            let cpu_per_s = med_of(&ok, |x| x.prof_cpu_s.map(|c| c / (x.wall_ns as f64 / 1e9)));
            let lost = med_of(&ok, |x| x.lost.map(|v| v as f64));
            let mut notes = merge_notes(ok.iter().map(|x| &x.notes));
            if !fails.is_empty() {
                notes.push(format!(
                    "{} of {} runs failed: {}",
                    fails.len(),
                    rs.len(),
                    fails.last().unwrap()
                ));
            }
            let busy = ok.iter().filter(|x| x.busy).count();
            if busy > 0 {
                notes.push(format!(
                    "another session's profiler was running during {busy} of {} runs",
                    ok.len()
                ));
            }
            let (added, ratio) = match base {
                Some(b) if p != Profiler::None => {
                    (format!("{:.0}", ns - b), format!("{:.1}×", ns / b))
                }
                Some(_) => ("0".into(), "1.0×".into()),
                None => ("?".into(), "?".into()),
            };
            writeln!(
                w,
                "| {} | {} | {:.0} | {added} | {ratio} | {} | {} | {} | {} | {} |",
                wl.label(),
                p.label(),
                ns,
                si(eps),
                hwm.map_or("—".into(), |k| mib(k as u64)),
                match (cpu, cpu_per_s) {
                    (Some(c), Some(r)) => format!("{c:.2} s ({:.1} % of a core)", r * 100.0),
                    (Some(c), None) => format!("{c:.2} s"),
                    _ => "—".into(),
                },
                match (p, lost) {
                    (
                        Profiler::Memprof
                        | Profiler::MemprofNoPlacement
                        | Profiler::MemprofFp
                        | Profiler::MemprofSampled
                        | Profiler::MemprofSampledNoSession
                        | Profiler::MemprofRss,
                        Some(l),
                    ) =>
                        format!("{l:.0}"),
                    (Profiler::Memleak, _) => "n/a".into(),
                    _ => "—".into(),
                },
                md_cell(&notes.join("; "))
            )?;
        }
    }
    writeln!(w)?;

    // --- 1M live -------------------------------------------------------------------------------
    writeln!(w, "## Snapshot and memory with 1M live allocations")?;
    writeln!(w)?;
    writeln!(
        w,
        "`bench/live.c` allocates {LIVE_COUNT} blocks of 16–72 bytes from 1000 call stacks and keeps \
         them; memprof runs with `--max-allocations {} --interval {LIVE_INTERVAL_S}s`; medians of {} run{}.",
        2 * LIVE_COUNT,
        s.reps,
        if s.reps == 1 { "" } else { "s" }
    )?;
    writeln!(w)?;
    writeln!(
        w,
        "| allocation ns (workload, profiled) | live allocations seen | stacks | interval snapshot + SVG (est.) | SIGINT → exit | memprof VmRSS holding 1M | memprof peak RSS (whole run) | lost events | notes |"
    )?;
    writeln!(
        w,
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    )?;
    if live_ok.is_empty() {
        writeln!(
            w,
            "| failed: {} | | | | | | | | |",
            md_cell(&live_fail.unwrap_or_default())
        )?;
    } else {
        let mut notes = merge_notes(live_ok.iter().map(|x| &x.notes));
        if let Some(f) = &live_fail {
            notes.push(format!("a run failed: {f}"));
        }
        writeln!(
            w,
            "| {:.0} | {:.0} | {:.0} | {} | {:.2} s | {} | {} | {:.0} | {} |",
            med_of(&live_ok, |x| Some(x.alloc_ns_per_op)).unwrap(),
            med_of(&live_ok, |x| Some(x.live_allocations as f64)).unwrap(),
            med_of(&live_ok, |x| Some(x.stacks as f64)).unwrap(),
            live_interval.map_or("—".into(), |i| format!("{i:.2} s")),
            live_exit.unwrap(),
            med_of(&live_ok, |x| x.rss_kib.map(|v| v as f64))
                .map_or("—".into(), |k| mib(k as u64)),
            mib(live_maxrss.unwrap() as u64),
            med_of(&live_ok, |x| Some(x.lost as f64)).unwrap(),
            md_cell(&notes.join("; "))
        )?;
    }
    writeln!(w)?;

    // --- Method --------------------------------------------------------------------------------
    writeln!(w, "## Method")?;
    writeln!(w)?;
    writeln!(
        w,
        "The workloads (`bench/*.c`, built with `gcc {}`) start paused: they print \
         `ready <pid>` and wait for SIGUSR1, sent once the profiler has attached (memprof: its \
         `memprof: attached` line; memleak-bpfcc: its `Attaching to pid` line, then until its \
         uprobe perf events stop growing, plus 0.5 s); they time their own loop \
         (CLOCK_MONOTONIC) and print `ns_per_op`. One allocator cycle is one allocation and one \
         free: malloc (4 in 8), calloc (2 in 8), malloc + realloc (1 in 8) or realloc(NULL) \
         (1 in 8), 8 B–4 KiB, each block freed 64 cycles later. The 4-thread workload splits the \
         cycles over 4 threads, keeps 1 block in 100 and reports the mean of each thread's time \
         per cycle (on {cores} cores the threads also wait for a CPU). \"added ns\" = row median \
         − baseline median; events/s = cycles / the workload's wall time; profiler RSS = VmHWM \
         (/proc/PID/status), CPU = utime + stime (/proc/PID/stat) from the go signal to the \
         workload's end, and that time per second of the workload's run (the share of one core \
         the profiler itself used); lost events = memprof's `summary.json` `lost` counters without \
         `uprobe_attach_failures` and `optional_tracepoints_missing`. One profiler runs at a \
         time; repetitions are interleaved (every row once, then again) and the tables show \
         medians. Other sessions' memprof or memleak processes seen at the start or end of a run \
         (they share the CPUs) are noted in its row.\n\n\
         memleak-bpfcc runs with `BCC_KERNEL_SOURCE` set to Debian's kernel headers (the \
         `-common` and `-amd64` folders merged under `target/bcc-headers/`: this kernel ships \
         none), through `bench/memleak_shim.py`: the unchanged script, with the `ref_ctr_offset` \
         argument that bcc's Python binding leaves out of `bpf_attach_uprobe` passed as 0 \
         (iovisor/bcc#5236; the garbage value it gets otherwise makes the kernel refuse, with \
         EINVAL, every other uprobe on the same function — memprof's included — while memleak \
         runs, and memleak's own when another tool was first). A failed attach is tried once \
         more; a failure is written in its row.\n\n\
         memprof prints no snapshot time, so the 1M table gives the wall time from SIGINT to its \
         exit (final snapshot, symbolization, probe detach, SVGs, summary, report) and an \
         estimate for the interval snapshots taken at full size: from the snapshot's due time \
         (the `attached` line + k × interval) to the modification time of \
         `snapshots/NNNN.svg`. Raw output of every run: `target/bench/runs/`.",
        CFLAGS.join(" ")
    )?;
    Ok(md)
}

/// The distinct notes of a row's runs, each with "(k of n runs)" unless every run had it.
pub(crate) fn merge_notes<'a>(runs: impl Iterator<Item = &'a Vec<String>>) -> Vec<String> {
    let mut seen: Vec<(String, usize)> = Vec::new();
    let mut n = 0;
    for notes in runs {
        n += 1;
        for note in notes {
            match seen.iter_mut().find(|(s, _)| s == note) {
                Some((_, k)) => *k += 1,
                None => seen.push((note.clone(), 1)),
            }
        }
    }
    seen.into_iter()
        .map(|(s, k)| {
            if k == n {
                s
            } else {
                format!("{s} ({k} of {n} runs)")
            }
        })
        .collect()
}

pub(crate) fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

// ---------------------------------------------------------------------------------------------
// A minimal JSON reader (xtask stays free of serde): enough for memprof's summary.json.
// ---------------------------------------------------------------------------------------------

pub(crate) mod serde_like {
    #[derive(Debug, Clone)]
    #[allow(dead_code)] // every JSON value is read, not every one is looked at
    pub enum Value {
        Null,
        Bool(bool),
        Number(f64),
        String(String),
        Array(Vec<Value>),
        Object(Vec<(String, Value)>),
    }

    impl Value {
        pub fn get(&self, key: &str) -> Option<&Value> {
            match self {
                Value::Object(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
                _ => None,
            }
        }

        pub fn as_u64(&self) -> Option<u64> {
            match self {
                Value::Number(n) if *n >= 0.0 => Some(*n as u64),
                _ => None,
            }
        }
    }

    pub fn parse(text: &str) -> Result<Value, String> {
        let mut p = Parser {
            b: text.as_bytes(),
            i: 0,
        };
        let v = p.value()?;
        p.ws();
        if p.i != p.b.len() {
            return Err(format!("trailing data at byte {}", p.i));
        }
        Ok(v)
    }

    struct Parser<'a> {
        b: &'a [u8],
        i: usize,
    }

    impl Parser<'_> {
        fn ws(&mut self) {
            while self.i < self.b.len() && self.b[self.i].is_ascii_whitespace() {
                self.i += 1;
            }
        }

        fn err<T>(&self, what: &str) -> Result<T, String> {
            Err(format!("{what} at byte {}", self.i))
        }

        fn lit(&mut self, s: &str, v: Value) -> Result<Value, String> {
            if self.b[self.i..].starts_with(s.as_bytes()) {
                self.i += s.len();
                Ok(v)
            } else {
                self.err("bad literal")
            }
        }

        fn value(&mut self) -> Result<Value, String> {
            self.ws();
            match self.b.get(self.i) {
                None => self.err("unexpected end"),
                Some(b'n') => self.lit("null", Value::Null),
                Some(b't') => self.lit("true", Value::Bool(true)),
                Some(b'f') => self.lit("false", Value::Bool(false)),
                Some(b'"') => Ok(Value::String(self.string()?)),
                Some(b'[') => {
                    self.i += 1;
                    let mut a = Vec::new();
                    self.ws();
                    if self.b.get(self.i) == Some(&b']') {
                        self.i += 1;
                        return Ok(Value::Array(a));
                    }
                    loop {
                        a.push(self.value()?);
                        self.ws();
                        match self.b.get(self.i) {
                            Some(b',') => self.i += 1,
                            Some(b']') => {
                                self.i += 1;
                                return Ok(Value::Array(a));
                            }
                            _ => return self.err("expected , or ]"),
                        }
                    }
                }
                Some(b'{') => {
                    self.i += 1;
                    let mut m = Vec::new();
                    self.ws();
                    if self.b.get(self.i) == Some(&b'}') {
                        self.i += 1;
                        return Ok(Value::Object(m));
                    }
                    loop {
                        self.ws();
                        let k = self.string()?;
                        self.ws();
                        if self.b.get(self.i) != Some(&b':') {
                            return self.err("expected :");
                        }
                        self.i += 1;
                        let v = self.value()?;
                        m.push((k, v));
                        self.ws();
                        match self.b.get(self.i) {
                            Some(b',') => self.i += 1,
                            Some(b'}') => {
                                self.i += 1;
                                return Ok(Value::Object(m));
                            }
                            _ => return self.err("expected , or }"),
                        }
                    }
                }
                Some(_) => {
                    let start = self.i;
                    while self.i < self.b.len()
                        && matches!(
                            self.b[self.i],
                            b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                        )
                    {
                        self.i += 1;
                    }
                    std::str::from_utf8(&self.b[start..self.i])
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .map(Value::Number)
                        .ok_or_else(|| format!("bad number at byte {start}"))
                }
            }
        }

        fn string(&mut self) -> Result<String, String> {
            if self.b.get(self.i) != Some(&b'"') {
                return self.err("expected a string");
            }
            self.i += 1;
            let mut out = Vec::new();
            while let Some(&c) = self.b.get(self.i) {
                self.i += 1;
                match c {
                    b'"' => return Ok(String::from_utf8_lossy(&out).into_owned()),
                    b'\\' => {
                        let e = *self.b.get(self.i).ok_or("unterminated escape")?;
                        self.i += 1;
                        match e {
                            b'n' => out.push(b'\n'),
                            b't' => out.push(b'\t'),
                            b'r' => out.push(b'\r'),
                            b'b' => out.push(8),
                            b'f' => out.push(12),
                            b'u' => {
                                let hex = self.b.get(self.i..self.i + 4).ok_or("short \\u")?;
                                self.i += 4;
                                let cp = u32::from_str_radix(
                                    std::str::from_utf8(hex).unwrap_or("?"),
                                    16,
                                )
                                .unwrap_or(0xfffd);
                                let ch = char::from_u32(cp).unwrap_or('\u{fffd}');
                                let mut buf = [0; 4];
                                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                            }
                            other => out.push(other),
                        }
                    }
                    c => out.push(c),
                }
            }
            self.err("unterminated string")
        }
    }
}

/// The "Exit and process churn" and "Idle cost" sections: `bench/exit_churn.sh` (uprobe_multi
/// links vs perf events: SIGINT to exit, fds, peak RSS, short-lived processes) and
/// `bench/idle_cpu.sh` per mode.
fn exit_and_idle_sections(root: &std::path::Path, memprof: &std::path::Path) -> Result<String> {
    let run = |script: &str, args: &[&str]| -> Result<String> {
        eprintln!("xtask: bench: bench/{script} {}", args.join(" "));
        let out = Command::new("bash")
            .arg(root.join("bench").join(script))
            .arg(memprof)
            .args(args)
            .output()
            .with_context(|| format!("running bench/{script}"))?;
        ensure!(out.status.success(), "bench/{script} failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    };
    let exit_table = run("exit_churn.sh", &[])?;
    let mut idle = Vec::new();
    for opts in [&[][..], &["--mode", "rss"][..], &["--sample-bytes", "524288"][..]] {
        idle.push(run("idle_cpu.sh", opts)?);
    }
    Ok(format!(
        "\n## Exit and process churn\n\n`bash bench/exit_churn.sh MEMPROF` (run by `cargo xtask bench`). \
         SIGINT → exit is the time from the signal to memprof's exit with every artifact written; \
         fds and peak RSS are memprof's own, read just before the signal. idle-N: N sleeping \
         processes probed (glibc: 11 uprobe_multi links or 17 perf events each, plus the \
         tracepoints); churn-10k: one sleeping process while 10,000 short-lived processes \
         (`/bin/true` from a shell loop) came and went in the cgroup. Goals (issue 13): ≤ 1 s for \
         a normal run, ≤ 2 s after 10,000 processes came and went. Perf-event uprobes \
         (`--no-uprobe-multi`, the path for kernels before 6.6) are released one at a time by the \
         kernel (an RCU-tasks-trace grace period each), however many threads close them.\n\n{exit_table}\n\
         \n### Idle cost\n\n`bash bench/idle_cpu.sh MEMPROF [options]`: memprof's own CPU over \
         20 s while its target (one sleeping process in a cgroup) does nothing.\n\n\
         | options | memprof CPU |\n|---|---|\n{}\n",
        idle.join("\n")
    ))
}
