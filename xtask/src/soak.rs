//! `cargo xtask soak [--duration 20m] [--interval 1s]`: a compressed multi-day run. memprof
//! profiles a cgroup of its own that holds a steady leaker with a cache (`bench/soak_leaker.c`)
//! and a shell loop of short-lived processes, for `duration` at a short snapshot `interval`;
//! its RSS, open fds, output folder and CPU are sampled every 10 s. At the end it gets SIGINT
//! and must exit cleanly with its report written. Writes `target/soak/samples.csv` and the
//! `## Soak` section of BENCHMARKS.md (replaced or appended; the rest of the file is kept).

use std::{
    ffi::CString,
    fmt::Write as _,
    fs::{self, File},
    io::{self, Write as _},
    os::unix::{ffi::OsStrExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};

use crate::{
    bench::{self, sh, Proc},
    is_root, mount_points, run, target_dir, workspace_root,
};

/// The section this task owns in BENCHMARKS.md.
const HEADING: &str = "## Soak";
/// memprof's default `--interval`: what one snapshot stands for in simulated time.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Time between two samples of memprof's process.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Shortest run: enough samples for a slope over its second half.
const MIN_DURATION: Duration = Duration::from_secs(60);
/// How long memprof may take to attach, and to exit after SIGINT, before it counts as failed.
const ATTACH_LIMIT: Duration = Duration::from_secs(60);
const EXIT_LIMIT: Duration = Duration::from_secs(120);
/// Flags the leaker is built with (as the bench's workloads).
const CFLAGS: &[&str] = &["-O2", "-g", "-fno-omit-frame-pointer", "-Wall"];

/// The process churn: three short-lived processes (`/bin/true`, a `sh -c`, the `sleep`) per
/// ~0.15 s, about 20 a second. On SIGTERM it writes how many it started to the file `$0`.
const CHURN_SCRIPT: &str = r#"n=0
trap 'echo "$n" > "$0"; exit 0' TERM
while :; do
    /bin/true
    sh -c 'echo x > /dev/null'
    sleep 0.14 & wait $!
    n=$((n + 3))
done"#;

/// Parses `20m`, `90s`, `500ms`, `1h`, `2d`; a bare number is seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let unit_ms = match &s[split..] {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => 0,
    };
    match s[..split].parse::<u64>().ok().and_then(|n| n.checked_mul(unit_ms)) {
        Some(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
        _ => Err(format!("bad duration {s:?}: expected e.g. 20m, 90s, 1h, 500ms")),
    }
}

/// The shortest spelling of `d` that [`parse_duration`] (and memprof's humantime) reads back.
fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if ms > 0 && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

// ---------------------------------------------------------------------------------------------
// Cleanup guards
// ---------------------------------------------------------------------------------------------

/// A cgroup v2 of our own, removed on drop (after the processes we started in it, which are
/// declared after it and so dropped before it).
struct Cgroup {
    name: String,
    dir: PathBuf,
}

impl Cgroup {
    fn create() -> Result<Cgroup> {
        let mnt = mount_points("cgroup2")?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("no cgroup2 mount in /proc/self/mountinfo"))?;
        let name = format!("memprof-soak-{}", std::process::id());
        let dir = mnt.join(&name);
        fs::create_dir(&dir)
            .with_context(|| format!("failed to create the cgroup {}", dir.display()))?;
        Ok(Cgroup { name, dir })
    }

    /// Starts `cmd` inside the cgroup: the child moves itself there before exec, so nothing it
    /// runs is ever outside.
    fn spawn(&self, cmd: &mut Command) -> Result<Proc> {
        let procs = CString::new(self.dir.join("cgroup.procs").as_os_str().as_bytes())
            .context("failed to name cgroup.procs")?;
        // SAFETY: open, write and close are async-signal-safe; nothing is allocated.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = io::Error::last_os_error();
                libc::close(fd);
                (written == 1).then_some(()).ok_or(err)
            });
        }
        Proc::spawn(cmd)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // What can still be inside is a last `sleep` of the churn loop, gone within 0.2 s.
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Err(e) = fs::remove_dir(&self.dir) {
            if Instant::now() >= deadline {
                eprintln!("xtask: soak: failed to remove the cgroup {}: {e}", self.dir.display());
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A scratch folder (the leaker's binary, the churn's count), removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn create() -> Result<TempDir> {
        let dir = std::env::temp_dir().join(format!("memprof-soak-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Set by Ctrl-C (the whole foreground group gets it: memprof and the workload end by
/// themselves), so that the run stops and the guards clean up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

// ---------------------------------------------------------------------------------------------
// Samples
// ---------------------------------------------------------------------------------------------

/// memprof's process at one moment.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// Seconds since memprof attached.
    t_s: f64,
    rss_kib: u64,
    fds: u64,
    /// Bytes of the files under its output folder.
    disk_bytes: u64,
    /// utime + stime so far.
    cpu_s: f64,
    /// memprof's count of lost events in its last snapshot line (`…; lost events: N`).
    lost: u64,
}

fn sample(pid: libc::pid_t, out: &Path, log: &Path, t_s: f64) -> Result<Sample> {
    let log = fs::read_to_string(log).unwrap_or_default();
    let lost = log.rfind("lost events: ").and_then(|i| {
        let n = &log[i + "lost events: ".len()..];
        n[..n.find(|c: char| !c.is_ascii_digit()).unwrap_or(n.len())].parse().ok()
    });
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("failed to list /proc/{pid}/fd"))?
        .count() as u64;
    Ok(Sample {
        t_s,
        rss_kib: bench::proc_status_kib(pid, "VmRSS")
            .ok_or_else(|| anyhow!("failed to read VmRSS of {pid}"))?,
        fds,
        disk_bytes: disk_bytes(out),
        cpu_s: bench::proc_cpu_s(pid).ok_or_else(|| anyhow!("failed to read the CPU of {pid}"))?,
        lost: lost.unwrap_or(0),
    })
}

/// Sum of the sizes of the files under `dir` (files that vanish while it is read count 0).
fn disk_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| match e.path().symlink_metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Least-squares slope of `y` over `x` (None with fewer than two distinct x).
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (points.len() >= 2 && sxx > 0.0).then(|| sxy / sxx)
}

/// Fails when `p` has ended or the user pressed Ctrl-C.
fn running(p: &mut Proc, what: &str, log: &Path) -> Result<()> {
    ensure!(!INTERRUPTED.load(Ordering::SeqCst), "interrupted");
    ensure!(
        !p.try_reap(),
        "{what} ended early ({}); memprof's log: {}",
        p.exit_description(),
        log_tail(log)
    );
    Ok(())
}

/// The last few lines of memprof's log (for error messages).
fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(4)..].join(" / ")
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

/// What the run measured, for the report.
struct Outcome {
    samples: Vec<Sample>,
    /// Short-lived processes the churn loop started, and over how many seconds.
    churn_started: Option<u64>,
    churn_s: f64,
    peak_rss_kib: Option<u64>,
    exit_s: f64,
    /// summary.json: `stats.short_lived_processes`, and the lost-event counters (`N (detail)`).
    short_lived: Option<u64>,
    lost: String,
}

pub fn soak(duration: Duration, interval: Duration) -> Result<()> {
    ensure!(is_root(), "cargo xtask soak needs root (BPF, cgroups): run it as root");
    ensure!(duration >= MIN_DURATION, "--duration must be at least 1m");
    ensure!(interval >= Duration::from_millis(100), "--interval must be at least 100ms");
    let started = Instant::now();
    let soak_dir = target_dir().join("soak");
    if soak_dir.exists() {
        fs::remove_dir_all(&soak_dir)
            .with_context(|| format!("failed to remove {}", soak_dir.display()))?;
    }
    fs::create_dir_all(&soak_dir)
        .with_context(|| format!("failed to create {}", soak_dir.display()))?;

    let outcome = scenario(duration, interval, &soak_dir)?;
    let md = section(duration, interval, &outcome, started.elapsed());
    let path = workspace_root().join("BENCHMARKS.md");
    let old = fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".into());
    fs::write(&path, with_section(&old, &md))
        .with_context(|| format!("failed to write {}", path.display()))?;
    println!("{md}");
    eprintln!(
        "xtask: soak: wrote the Soak section of {} (samples: {}; memprof's output and log: {})",
        path.display(),
        soak_dir.join("samples.csv").display(),
        soak_dir.display()
    );
    Ok(())
}

/// Builds the leaker, starts the workload and memprof, samples memprof for `duration`, stops
/// everything. Every process is ours and is ended (and the cgroup removed) on any error.
fn scenario(duration: Duration, interval: Duration, soak_dir: &Path) -> Result<Outcome> {
    let memprof_bin = target_dir().join("release/memprof");
    let out = soak_dir.join("memprof-out");
    let log_path = soak_dir.join("memprof.log");
    let csv_path = soak_dir.join("samples.csv");

    let tmp = TempDir::create()?;
    let leaker = tmp.0.join("soak_leaker");
    run(Command::new("gcc")
        .args(CFLAGS)
        .arg(workspace_root().join("bench/soak_leaker.c"))
        .arg("-o")
        .arg(&leaker))
    .context("failed to build bench/soak_leaker.c")?;

    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t)
    };
    // Dropped in reverse order: the processes first, then the cgroup, then the scratch folder.
    let cg = Cgroup::create()?;
    let mut leaker = cg.spawn(Command::new(&leaker).stdin(Stdio::null()).stdout(Stdio::null()))?;

    let log = File::create(&log_path)
        .with_context(|| format!("failed to create {}", log_path.display()))?;
    let mut memprof = Proc::spawn(
        Command::new(&memprof_bin)
            .arg("--cgroup")
            .arg(&cg.name)
            .arg("--interval")
            .arg(format!("{}ms", interval.as_millis()))
            .arg("--output")
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("failed to share memprof's log")?)
            .stderr(log),
    )?;
    eprintln!("xtask: soak: waiting for memprof to attach to the cgroup {}", cg.name);
    let deadline = Instant::now() + ATTACH_LIMIT;
    while !fs::read_to_string(&log_path).unwrap_or_default().contains("memprof: attached") {
        running(&mut memprof, "memprof", &log_path)?;
        ensure!(
            Instant::now() < deadline,
            "memprof did not attach within {}s: {}",
            ATTACH_LIMIT.as_secs(),
            log_tail(&log_path)
        );
        thread::sleep(Duration::from_millis(100));
    }
    let t0 = Instant::now();
    let count_file = tmp.0.join("churn.count");
    let mut churn = cg.spawn(
        Command::new("bash").arg("-c").arg(CHURN_SCRIPT).arg(&count_file).stdin(Stdio::null()),
    )?;

    let mut csv = File::create(&csv_path)
        .with_context(|| format!("failed to create {}", csv_path.display()))?;
    writeln!(csv, "t_s,rss_kib,fds,disk_bytes,cpu_s,lost_events")?;
    let mut samples = Vec::new();
    let mut next = Duration::ZERO;
    loop {
        running(&mut memprof, "memprof", &log_path)?;
        running(&mut leaker, "the leaker", &log_path)?;
        running(&mut churn, "the churn loop", &log_path)?;
        let now = t0.elapsed();
        if now >= next {
            let s = sample(memprof.pid, &out, &log_path, now.as_secs_f64())?;
            let (t, rss, fds, disk, cpu, lost) =
                (s.t_s, s.rss_kib, s.fds, s.disk_bytes, s.cpu_s, s.lost);
            writeln!(csv, "{t:.1},{rss},{fds},{disk},{cpu:.2},{lost}")
                .with_context(|| format!("failed to write {}", csv_path.display()))?;
            eprintln!(
                "xtask: soak: [{t:>5.0}s/{}s] memprof: RSS {}, {fds} fds, output {:.2} MiB, \
                 CPU {cpu:.1} s, lost events {lost}",
                duration.as_secs(),
                bench::mib(rss),
                disk as f64 / (1 << 20) as f64,
            );
            samples.push(s);
            if now >= duration {
                break;
            }
            next = (next + SAMPLE_EVERY).min(duration);
        }
        thread::sleep(Duration::from_millis(100));
    }

    // The churn first (memprof's count of short-lived processes is then final), then memprof.
    churn.signal(libc::SIGTERM);
    ensure!(churn.wait_timeout(Duration::from_secs(10)), "the churn loop did not stop on SIGTERM");
    let churn_s = t0.elapsed().as_secs_f64();
    let churn_started = fs::read_to_string(&count_file).ok().and_then(|s| s.trim().parse().ok());
    let peak_rss_kib = bench::proc_status_kib(memprof.pid, "VmHWM");
    let sigint = Instant::now();
    memprof.signal(libc::SIGINT);
    let why = || log_tail(&log_path);
    if !memprof.wait_timeout(EXIT_LIMIT) {
        memprof.kill();
        bail!("memprof did not exit within {EXIT_LIMIT:?} of SIGINT: {}", why());
    }
    let exit_s = sigint.elapsed().as_secs_f64();
    ensure!(memprof.exited_ok(), "memprof failed ({}): {}", memprof.exit_description(), why());
    for artifact in ["summary.json", "report.html"] {
        ensure!(out.join(artifact).is_file(), "memprof wrote no {artifact} in {}", out.display());
    }
    leaker.kill();
    let (lost, _, detail, summary) = bench::memprof_lost(&out.join("summary.json"))?;
    let lost = if detail.is_empty() { lost.to_string() } else { format!("{lost} ({detail})") };
    let short_lived =
        summary.get("stats").and_then(|s| s.get("short_lived_processes")).and_then(|v| v.as_u64());
    Ok(Outcome { samples, churn_started, churn_s, peak_rss_kib, exit_s, short_lived, lost })
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

/// The `## Soak` section.
fn section(dur: Duration, interval: Duration, o: &Outcome, took: Duration) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    let factor = DEFAULT_INTERVAL.as_secs_f64() / interval.as_secs_f64();
    let half = dur.as_secs_f64() / 2.0;
    let late: Vec<&Sample> = o.samples.iter().filter(|s| s.t_s >= half).collect();
    let fit =
        |f: fn(&Sample) -> f64| slope(&late.iter().map(|s| (s.t_s, f(s))).collect::<Vec<_>>());
    let nearest = |t: f64| {
        let d = |s: &&Sample| (s.t_s - t).abs();
        *o.samples.iter().min_by(|a, b| d(a).total_cmp(&d(b))).expect("samples")
    };
    let at = [o.samples[0], nearest(half), *o.samples.last().expect("samples")];

    // One row per measure: its value in a sample, its unit, the decimals of values and slopes.
    type Measure = (&'static str, fn(&Sample) -> f64, &'static str, usize, usize);
    let measures: [Measure; 4] = [
        ("RSS", |s| s.rss_kib as f64 / 1024.0, " MiB", 1, 2),
        ("open fds", |s| s.fds as f64, "", 0, 0),
        ("output folder", |s| s.disk_bytes as f64 / MIB, " MiB", 2, 1),
        ("lost events (its count)", |s| s.lost as f64, "", 0, 0),
    ];
    let mut table = String::from(
        "| memprof's | start | middle | end | second half: min–max | slope per simulated day | \
         per run hour |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for (name, value, unit, prec, sprec) in measures {
        let mut v: Vec<String> = at.iter().map(|s| format!("{:.prec$}{unit}", value(s))).collect();
        let (lo, hi) = late
            .iter()
            .map(|s| value(s))
            .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
        v.push(format!("{lo:.prec$}–{hi:.prec$}{unit}"));
        let rates = fit(value).map_or("— | —".into(), |k| {
            let day = k * 86_400.0 / factor;
            format!("{day:+.sprec$}{unit} | {:+.sprec$}{unit}", k * 3600.0)
        });
        let _ = writeln!(table, "| {name} | {} | {rates} |", v.join(" | "));
    }
    let cpu_late = fit(|s| s.cpu_s).map_or("—".into(), |k| format!("{:.1} %", k * 100.0));
    let cpu: Vec<String> = at.iter().map(|s| format!("{:.1} s", s.cpu_s)).collect();
    let _ = writeln!(table, "| CPU used | {} | — | {cpu_late} of a core | — |", cpu.join(" | "));
    let (first, last) = (at[0], at[2]);
    let cpu_all = (last.cpu_s - first.cpu_s) / (last.t_s - first.t_s).max(1e-9) * 100.0;

    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let churn = o.churn_started.map_or("?".into(), |n| {
        format!("{n} in {:.0} s ({:.1} per second)", o.churn_s, n as f64 / o.churn_s)
    });
    format!(
        "{HEADING}\n\n\
         Generated by `cargo xtask soak --duration {dur_s} --interval {int_s}` (as root; source: `xtask/src/soak.rs`, workload: \
         `bench/soak_leaker.c`) on {date}, {took:.0} s in all; kernel `{kernel}`; CPU: {cpu_model} \
         — {cores} cores; load average at the end: {load}.\n\n\
         memprof ran {dur_s} at `--interval {int_s}`: {snaps:.0} snapshots, which at the default \
         10 s interval stand for {sim_h:.1} simulated hours (one run second = {factor:.0} \
         simulated seconds).\n\n\
         {table}\n\
         - CPU over the whole run: {cpu_all:.1} % of a core.\n\
         - SIGINT → exit: {exit_s:.2} s, exit status 0, `summary.json` and `report.html` written; \
         peak RSS (VmHWM) before the signal: {hwm}.\n\
         - short-lived processes started: {churn}; memprof's `short_lived_processes`: {short}.\n\
         - lost events (summary.json): {lost}.\n\n\
         Method: a cgroup v2 of its own holds the workload, all of it started by the task: \
         `bench/soak_leaker.c` (a steady leak of 4 KiB every 100 ms, never freed, beside a cache \
         of 1000 blocks of 1–16 KiB, one of which is replaced, the new one allocated and the old \
         one freed, every 10 ms) and a shell loop of short-lived processes (`/bin/true`, `sh -c`, \
         `sleep`: about 20 a second). memprof (`--cgroup NAME --interval {int_s} --output DIR`, \
         exact mode) runs for the whole duration, then gets SIGINT. Every 10 s its VmRSS, the \
         entries of /proc/PID/fd, the bytes of the files under its output folder and its utime + \
         stime are read, with the lost-event count of its last snapshot line ({n} samples: \
         `target/soak/samples.csv`). Slopes are least-squares fits \
         over the second half of the run (after warm-up), per run second scaled to a simulated \
         day (8,640 default-interval snapshots: 86,400 / {factor:.0} run seconds) and to an hour \
         of this run; the CPU figure is that half's slope of CPU seconds over wall seconds. A bounded figure that \
         rises and falls (a folder whose older snapshots are thinned out) shows in the min–max \
         column, which its slope alone would hide. The \
         workload runs at its real rates, not compressed: growth that follows the snapshots \
         (history kept and files written per snapshot) is what a day at the default interval \
         would bring, while growth that follows the workload's own events (live allocations, \
         processes seen) is given by the per-hour figure, and is {factor:.0}× smaller in the \
         per-day one than in a real day.\n",
        date = sh("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]),
        took = took.as_secs_f64(),
        kernel = sh("uname", &["-r"]),
        cpu_model = bench::cpu_model(),
        cores = thread::available_parallelism().map_or(0, |n| n.get()),
        load = load.join(" "),
        dur_s = format_duration(dur),
        int_s = format_duration(interval),
        snaps = dur.as_secs_f64() / interval.as_secs_f64(),
        sim_h = dur.as_secs_f64() * factor / 3600.0,
        exit_s = o.exit_s,
        hwm = o.peak_rss_kib.map_or("?".into(), bench::mib),
        short = o.short_lived.map_or("not in summary.json".into(), |n| n.to_string()),
        lost = o.lost,
        n = o.samples.len(),
    )
}

/// The range of `text`'s Soak section: its heading line up to the next `## ` heading or the end.
fn section_bounds(text: &str) -> Option<(usize, usize)> {
    let mut start = None;
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let l = line.trim_end();
        match start {
            None if l == HEADING => start = Some(pos),
            Some(s) if l.starts_with("## ") => return Some((s, pos)),
            _ => {}
        }
        pos += line.len();
    }
    start.map(|s| (s, text.len()))
}

/// `text` with its Soak section replaced by `section`, or with `section` appended.
fn with_section(text: &str, section: &str) -> String {
    let section = section.trim_end();
    match section_bounds(text) {
        Some((a, b)) if b < text.len() => format!("{}{section}\n\n{}", &text[..a], &text[b..]),
        Some((a, _)) => format!("{}{section}\n", &text[..a]),
        None => format!("{}\n\n{section}\n", text.trim_end()),
    }
}

/// `new` (a freshly written BENCHMARKS.md) with the Soak section of `old` carried over, so that
/// `cargo xtask bench` keeps what `cargo xtask soak` measured.
pub(crate) fn keep_section(old: &str, new: String) -> String {
    match section_bounds(old) {
        Some((a, b)) => with_section(&new, &old[a..b]),
        None => new,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_sections_slope() {
        assert_eq!(parse_duration("20m"), Ok(Duration::from_secs(1200)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("0s").is_err() && parse_duration("3x").is_err());
        assert!(parse_duration("m").is_err() && parse_duration("").is_err());
        assert_eq!(format_duration(Duration::from_secs(1200)), "20m");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");

        let s = "## Soak\n\nnew\n";
        assert_eq!(with_section("# B\n\n## A\n\na\n", s), "# B\n\n## A\n\na\n\n## Soak\n\nnew\n");
        assert_eq!(
            with_section("# B\n\n## Soak\n\nold\n\n## C\n", s),
            "# B\n\n## Soak\n\nnew\n\n## C\n"
        );
        assert_eq!(with_section("# B\n\n## Soak\n\nold\n### x\n", s), "# B\n\n## Soak\n\nnew\n");
        assert_eq!(
            keep_section("# B\n\n## Soak\n\nold\n", "# B\n\n## P\n".into()),
            "# B\n\n## P\n\n## Soak\n\nold\n"
        );
        assert_eq!(slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]), Some(2.0));
    }
}
