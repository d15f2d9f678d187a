//! One profiling run: validate the input, load and attach, collect until the end, write the
//! artifacts.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use log::{info, warn};
use memprof_common::{Counter, LEAF_PREPEND};

use crate::{
    analyze::{self, Class, History, Series},
    attach::{MapSizes, Probes, Scope},
    cli::Opt,
    collect::{Collector, NO_STACK, Notice, Snapshot, StackRef},
    output,
    report::{Frame, MemoryInfo, OomKill, ProcessInfo, Report, SnapshotInfo, StackReport},
    symbolize::Symbolizer,
    target::{
        self,
        cgroup::CgroupTarget,
        memory::{self, MemorySource},
    },
    tracefs,
};

/// Exit code for bad input (usage errors use clap's 2 as well).
pub const EXIT_INPUT: u8 = 2;
/// Exit code for a failure while profiling.
pub const EXIT_RUNTIME: u8 = 1;

/// Why a run did not succeed.
#[derive(Debug)]
pub enum Failure {
    /// Bad input, found before anything was attached.
    Input(String),
    /// A failure while profiling.
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

/// What to profile, resolved and validated.
pub struct Config {
    pub label: String,
    pub scope: Scope,
    pub cgroup: Option<CgroupTarget>,
    pub pid: Option<u32>,
    pub duration: Option<Duration>,
    pub interval: Duration,
    pub output: PathBuf,
    pub top: usize,
    pub sizes: MapSizes,
    /// Free-like probes may move past a NULL check (not `--no-probe-placement`).
    pub probe_placement: bool,
}

/// Entry point of the binary: runs and maps the outcome to an exit code.
pub fn main(opt: Opt) -> ExitCode {
    init_logging(opt.verbose);
    match run(opt) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Input(msg)) => {
            eprintln!("memprof: error: {msg}");
            ExitCode::from(EXIT_INPUT)
        }
        Err(Failure::Runtime(err)) => {
            eprintln!("memprof: error: {err:#}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => log::LevelFilter::Info,
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    let _ = env_logger::Builder::new()
        .filter_level(level)
        .parse_default_env()
        .format(|buf, record| {
            use std::io::Write;
            writeln!(buf, "memprof: {}", record.args())
        })
        .try_init();
}

pub fn run(opt: Opt) -> Result<(), Failure> {
    let config = resolve(opt)?;
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    rt.block_on(profile(config))
}

/// Validates everything the user gave us, before anything is attached.
pub fn resolve(opt: Opt) -> Result<Config, Failure> {
    if unsafe { libc::geteuid() } != 0 {
        return Err(Failure::Input(
            "memprof needs root (BPF and perf events): run it with sudo".into(),
        ));
    }
    let (label, scope, cgroup, pid) = match (&opt.cgroup, opt.pid) {
        (Some(spec), _) => {
            let mount = target::cgroup::find_cgroup2_mount().map_err(|e| Failure::Input(e.to_string()))?;
            let cg = resolve_cgroup_spec(spec, &mount)?;
            let scope = Scope::Cgroup { id: cg.id, level: cg.level };
            (spec.clone(), scope, Some(cg), None)
        }
        (None, Some(pid)) => {
            target::procs::check_pid(pid).map_err(|e| Failure::Input(e.to_string()))?;
            (format!("pid {pid}"), Scope::Process { tgid: pid }, None, Some(pid))
        }
        (None, None) => return Err(Failure::Input("give --cgroup or --pid".into())),
    };
    let output = opt.output.clone().unwrap_or_else(|| default_output(&label));
    check_writable(&output).map_err(Failure::Input)?;
    Ok(Config {
        label,
        scope,
        cgroup,
        pid,
        duration: opt.duration,
        interval: opt.interval,
        output,
        top: opt.top,
        sizes: MapSizes {
            allocs: opt.max_allocations,
            stacks: opt.max_stacks,
            stack_totals: opt.max_stacks.saturating_mul(4),
            sample_bytes: opt.sample_bytes.unwrap_or(0),
            rss: opt.mode == crate::cli::Mode::Rss,
        },
        probe_placement: !opt.no_probe_placement,
    })
}

/// `--cgroup`: a path is taken as a cgroup path; a name is asked of the container engine
/// (Docker API: DOCKER_HOST, /var/run/docker.sock, /run/podman/podman.sock), then matched against
/// container runtimes' cgroup names (an ID or ID prefix), then searched as a directory name.
fn resolve_cgroup_spec(spec: &str, mount: &Path) -> Result<CgroupTarget, Failure> {
    let input = |e: target::TargetError| Failure::Input(e.to_string());
    if spec.contains('/') {
        return target::cgroup::resolve_cgroup(spec, mount).map_err(input);
    }
    if let Some(c) = target::engine::resolve_container(spec, mount).map_err(input)? {
        info!(
            "container {} ({}) via {}: main pid {}, cgroup {}",
            c.name,
            &c.id[..c.id.len().min(12)],
            c.engine,
            c.pid,
            c.cgroup.rel
        );
        return Ok(c.cgroup);
    }
    let runtime = target::engine::find_runtime_cgroups(spec, mount);
    match runtime.as_slice() {
        [one] => {
            info!("{spec}: container cgroup {}", one.display());
            target::cgroup::resolve_cgroup(&one.to_string_lossy(), mount).map_err(input)
        }
        [] => target::cgroup::resolve_cgroup(spec, mount).map_err(input),
        many => Err(Failure::Input(format!(
            "{spec} matches {} container cgroups: {}",
            many.len(),
            many.iter().take(10).map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Every probe is a file descriptor (a perf event), kept until the end: raise the soft limit to
/// the hard one.
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// `./memprof-<target>-<UTC time>/`.
fn default_output(label: &str) -> PathBuf {
    let name: String = label
        .rsplit('/')
        .find(|s| !s.is_empty())
        .unwrap_or("target")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '-' })
        .collect();
    let time = humantime::format_rfc3339_seconds(SystemTime::now()).to_string().replace([':', '-'], "");
    PathBuf::from(format!("memprof-{name}-{time}"))
}

fn check_writable(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create output folder {}: {e}", dir.display()))?;
    let probe = dir.join(".memprof-write-test");
    std::fs::write(&probe, b"")
        .map_err(|e| format!("output folder {} is not writable: {e}", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// A process of the target, as we follow it.
struct Tracked {
    comm: String,
    alive: bool,
    freed_at_exit: Option<u64>,
}

/// The state of a run between start and end.
struct Session {
    config: Config,
    probes: Probes,
    collector: Collector,
    symbolizer: Symbolizer,
    processes: BTreeMap<u32, Tracked>,
    frames: HashMap<StackRef, Vec<Frame>>,
    snapshots: Vec<SnapshotInfo>,
    memory: MemorySource,
    oom_kills: Vec<OomKill>,
    history: History,
    /// Folded lines of the first snapshot (the base of growth.svg).
    first_folded: Option<Vec<String>>,
    /// Leaf-most frame of the largest stack at the last snapshot (for the progress line).
    top_frame: Option<String>,
    /// Whether stderr is a terminal (then a live progress line is kept up to date).
    progress: bool,
    started: Instant,
    started_at: SystemTime,
    /// When the run ended (for the final timing).
    ended: Option<Instant>,
}

async fn profile(config: Config) -> Result<(), Failure> {
    let _tracefs = tracefs::ensure_mounted().context("failed to mount tracefs")?;
    let mut probes = Probes::load(config.scope, config.sizes).context("failed to load the BPF programs")?;
    probes.set_probe_placement(config.probe_placement);
    let collector = Collector::new(&mut probes.bpf).context("failed to open the event ring buffer")?;
    let mut s = Session {
        config,
        probes,
        collector,
        symbolizer: Symbolizer::new(),
        processes: BTreeMap::new(),
        frames: HashMap::new(),
        snapshots: Vec::new(),
        memory: MemorySource::None,
        oom_kills: Vec::new(),
        history: History::new(Series::DEFAULT_CAP, History::DEFAULT_MAX_STACKS),
        first_folded: None,
        top_frame: None,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        started: Instant::now(),
        started_at: SystemTime::now(),
        ended: None,
    };
    s.poll_processes();
    s.memory = s.memory_source();
    info!("memory accounting: {}", s.memory.describe());
    eprintln!(
        "memprof: attached {} probes in {} processes of {}; writing to {} (Ctrl-C to stop)",
        s.probes.link_count(),
        s.probes.process_count(),
        s.config.label,
        s.config.output.display()
    );
    if s.processes.is_empty() {
        info!("no process in the target yet: waiting for one");
    }

    let end_reason = s.main_loop().await;
    s.finish(end_reason)
}

impl Session {
    async fn main_loop(&mut self) -> &'static str {
        // Created once, so a signal that arrives while a tick is being handled is not lost.
        use tokio::signal::unix::{SignalKind, signal};
        let mut sigterm = signal(SignalKind::terminate()).ok();
        let mut sigint = signal(SignalKind::interrupt()).ok();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let deadline = self.config.duration.map(|d| tokio::time::Instant::now() + d);
        let mut next_snapshot = Instant::now() + self.config.interval;
        let mut next_progress = Instant::now();
        loop {
            let term = async {
                match sigterm.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let int = async {
                match sigint.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let until_deadline = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = int => return "signal",
                _ = term => return "signal",
                _ = until_deadline => return "duration",
                _ = tick.tick() => {}
            }
            self.drain_events();
            self.poll_processes();
            let ever_seen = !self.processes.is_empty();
            if ever_seen && self.processes.values().all(|p| !p.alive) {
                return "targets_exited";
            }
            if Instant::now() >= next_snapshot {
                next_snapshot += self.config.interval;
                if next_snapshot <= Instant::now() {
                    // Fell behind (a slow tick): skip ahead rather than snapshot twice in a row.
                    next_snapshot = Instant::now() + self.config.interval;
                }
                if let Err(err) = self.write_interval_snapshot() {
                    warn!("snapshot not written: {err:#}");
                }
            }
            if self.progress && Instant::now() >= next_progress {
                next_progress += Duration::from_secs(1);
                self.show_progress();
            }
        }
    }

    /// The live progress line: elapsed, live bytes, top stack, lost events.
    fn show_progress(&mut self) {
        let snap = self.snapshot();
        let live: u64 = snap.values().map(|s| s.live_bytes).sum();
        let lost: u64 = self
            .collector
            .counters(&self.probes.bpf)
            .iter()
            .filter(|(c, _)| c.is_loss())
            .map(|(_, v)| v)
            .sum();
        let top = self.top_frame.as_deref().unwrap_or("-");
        let mut line = format!(
            "memprof [{}] live {} | top: {} | lost: {lost}",
            output::human_duration(self.started.elapsed().as_secs_f64()),
            output::human_bytes(live),
            top
        );
        line.truncate(160);
        eprint!("\r\x1b[2K{line}");
    }

    fn is_tracked(&self, pid: u32) -> bool {
        self.processes.get(&pid).is_some_and(|p| p.alive)
    }

    fn drain_events(&mut self) {
        for notice in self.collector.drain_events() {
            match notice {
                Notice::Mapped(pid) if !self.is_tracked(pid) => self.adopt(pid),
                Notice::Mapped(_) => {}
                Notice::Exec { pid, ts_ns } => {
                    if self.is_tracked(pid) {
                        // The old image's memory went with it (records made before the execve);
                        // the per-process probes stay (the kernel re-arms them in the new image
                        // for the objects it maps again), and objects new to it get probes.
                        let held = self.collector.release_before(&mut self.probes.bpf, pid, ts_ns);
                        if held > 0 {
                            info!("pid {pid} called execve; {} of its old image released", output::human_bytes(held));
                        }
                        self.symbolizer.observe_process(pid);
                        self.frames.retain(|r, _| r.pid != pid);
                        self.probes.attach_process(pid);
                        if let Some(p) = self.processes.get_mut(&pid) {
                            p.comm = target::procs::comm(pid).unwrap_or_default();
                        }
                    } else {
                        self.adopt(pid);
                    }
                }
                Notice::CodeMapped(pid) => {
                    if self.is_tracked(pid) {
                        self.symbolizer.observe_process(pid);
                        self.probes.attach_process(pid);
                    } else {
                        self.adopt(pid);
                    }
                }
                Notice::RangeReleased { pid, addr, len } => {
                    self.collector.release_range(&mut self.probes.bpf, pid, addr, len);
                }
                Notice::OomVictim(pid) => {
                    if self.is_tracked(pid) {
                        self.capture_oom(pid);
                    }
                }
            }
        }
    }

    /// Current processes of the target.
    fn target_pids(&self) -> Vec<u32> {
        match (&self.config.cgroup, self.config.pid) {
            (Some(cg), _) => target::cgroup::cgroup_tree_pids(&cg.path).unwrap_or_default(),
            (None, Some(pid)) if target::procs::pid_alive(pid) => vec![pid],
            _ => Vec::new(),
        }
    }

    /// Adopts new processes (probes, memory map) and retires those that exited.
    fn poll_processes(&mut self) {
        let pids = self.target_pids();
        for &pid in &pids {
            if !self.is_tracked(pid) {
                self.adopt(pid);
            }
        }
        let gone: Vec<u32> = self
            .processes
            .iter()
            .filter(|(pid, p)| p.alive && pids.binary_search(pid).is_err() && !target::procs::pid_alive(**pid))
            .map(|(pid, _)| *pid)
            .collect();
        for pid in gone {
            // The kernel released everything the process held: not leaks.
            self.drain_events();
            let held = self.collector.retire_process(&mut self.probes.bpf, pid);
            // Its probes stay attached (they are per-process perf events and never fire again)
            // until memprof exits: on kernel 6.18, closing uprobe perf events and attaching new
            // ones at the same offsets shortly after was seen to leave the new ones disarmed
            // (a process restarting in a container lost every allocation). The cost is ~20 file
            // descriptors per exited process; see raise_fd_limit().
            self.probes.forget_process(pid);
            self.symbolizer.forget_process(pid);
            if let Some(p) = self.processes.get_mut(&pid) {
                p.alive = false;
                p.freed_at_exit = Some(held);
            }
            info!("pid {pid} exited; {} it still held were released with it", output::human_bytes(held));
        }
    }

    fn adopt(&mut self, pid: u32) {
        let comm = target::procs::comm(pid).unwrap_or_default();
        self.symbolizer.observe_process(pid);
        let n = self.probes.attach_process(pid);
        if n == 0 && !self.config.sizes.rss {
            warn!("pid {pid} ({comm}): no allocator functions found in the objects it maps");
        }
        self.processes.insert(pid, Tracked { comm, alive: true, freed_at_exit: None });
    }

    fn memory_source(&self) -> MemorySource {
        let pids: Vec<u32> = self.processes.iter().filter(|(_, p)| p.alive).map(|(pid, _)| *pid).collect();
        match (&self.config.cgroup, self.config.pid) {
            (Some(cg), _) => MemorySource::for_cgroup(cg, &pids),
            (None, Some(pid)) => {
                MemorySource::for_pid(pid, target::cgroup::find_cgroup2_mount().ok().as_deref())
            }
            _ => MemorySource::None,
        }
    }

    fn alive_pids(&self) -> Vec<u32> {
        self.processes.iter().filter(|(_, p)| p.alive).map(|(pid, _)| *pid).collect()
    }

    /// (cgroup usage, cgroup limit, RSS) now.
    fn memory_now(&mut self) -> (Option<u64>, Option<u64>, Option<u64>) {
        if self.memory == MemorySource::None {
            self.memory = self.memory_source();
        }
        let sample = self.memory.sample();
        let pids = self.alive_pids();
        let rss = (!pids.is_empty()).then(|| memory::rss_bytes(&pids));
        (sample.map(|s| s.usage), sample.and_then(|s| s.limit), rss)
    }

    /// The OOM killer chose one of our processes: write what it held, now, before it is gone.
    fn capture_oom(&mut self, pid: u32) {
        let snap: Snapshot = self.snapshot().into_iter().filter(|(r, _)| r.pid == pid).collect();
        let stacks = self.stacks(&snap);
        let live_bytes = stacks.iter().map(|s| s.bytes).sum();
        let comm = self.processes.get(&pid).map(|p| p.comm.clone()).unwrap_or_default();
        let folded = format!("oom-{pid}.folded");
        let svg = format!("oom-{pid}.svg");
        let title = format!("memprof: pid {pid} ({comm}) just before its OOM kill");
        let dir = &self.config.output;
        let lines = output::folded_lines(&stacks);
        if let Err(err) = output::write_folded(&dir.join(&folded), &stacks)
            .and_then(|_| output::write_flamegraph(&dir.join(&svg), &lines, &title, None))
        {
            warn!("OOM evidence for pid {pid} not written: {err}");
        }
        warn!(
            "the kernel OOM-killed pid {pid} ({comm}) holding {} outstanding; evidence in {}",
            output::human_bytes(live_bytes),
            dir.join(&svg).display()
        );
        self.oom_kills.push(OomKill {
            pid,
            comm,
            elapsed_s: self.started.elapsed().as_secs_f64(),
            live_bytes,
            folded,
            svg,
            top_stack: stacks.first().map(|s| s.frames.clone()).unwrap_or_default(),
        });
    }

    fn snapshot(&mut self) -> Snapshot {
        match self.collector.snapshot(&self.probes.bpf) {
            Ok(s) => s,
            Err(err) => {
                warn!("{err}");
                Snapshot::new()
            }
        }
    }

    /// Symbolizes and merges a snapshot's live stacks (by frames, over processes).
    fn stacks(&mut self, snap: &Snapshot) -> Vec<StackReport> {
        let mut merged: HashMap<Vec<String>, StackReport> = HashMap::new();
        for (r, sample) in snap {
            if sample.live_bytes == 0 && sample.live_count == 0 {
                continue;
            }
            if !self.frames.contains_key(r) {
                let frames = self.symbolize(r);
                if frames.is_empty() && r.stack_id != NO_STACK {
                    // Not resolvable now (the stack or the memory map not readable yet): shown
                    // without frames this time, tried again at the next snapshot.
                    log::debug!("stack {} of pid {} did not symbolize", r.stack_id, r.pid);
                } else {
                    self.frames.insert(*r, frames);
                }
            }
            let empty = Vec::new();
            let details = self.frames.get(r).unwrap_or(&empty);
            let names: Vec<String> = details.iter().map(Frame::display_name).collect();
            let e = merged.entry(names.clone()).or_insert_with(|| StackReport {
                frames: names,
                frame_details: details.clone(),
                bytes: 0,
                allocations: 0,
                total_bytes: 0,
                total_allocations: 0,
                pids: Vec::new(),
                ..Default::default()
            });
            e.bytes += sample.live_bytes;
            e.allocations += sample.live_count;
            e.total_bytes += sample.total_bytes;
            e.total_allocations += sample.total_count;
            if !e.pids.contains(&r.pid) {
                e.pids.push(r.pid);
            }
        }
        let mut stacks: Vec<StackReport> = merged.into_values().collect();
        for s in &mut stacks {
            s.pids.sort_unstable();
        }
        stacks.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.frames.cmp(&b.frames)));
        stacks
    }

    fn symbolize(&mut self, r: &StackRef) -> Vec<Frame> {
        if r.stack_id == NO_STACK {
            return Vec::new();
        }
        let mut ips = self.collector.stack_ips(&self.probes.bpf, r.stack_id);
        if r.leaf_ret & LEAF_PREPEND != 0 {
            ips.insert(0, r.leaf_ret & !LEAF_PREPEND);
        } else if r.leaf_ret != 0
            && ips.get(1) != Some(&r.leaf_ret)
            && !ips.is_empty()
            && self.symbolizer.is_return_address(r.pid, r.leaf_ret)
        {
            ips.insert(1, r.leaf_ret);
        }
        self.symbolizer.symbolize_stack(r.pid, &ips)
    }

    /// Class, growth rate and series of each stack, from the history.
    fn classify(&self, stacks: &mut [StackReport]) {
        let totals: HashMap<Vec<String>, u64> =
            stacks.iter().map(|s| (s.frames.clone(), s.total_allocations)).collect();
        let verdicts = analyze::classify_all(&self.history, &totals);
        for s in stacks.iter_mut() {
            let v = verdicts.get(&s.frames);
            s.class = class_name(v.map_or(Class::Unknown, |v| v.class)).to_string();
            s.growth_bytes_per_s = v.map_or(0.0, |v| v.growth_bytes_per_s);
            s.confidence = v.map_or(0.0, |v| v.confidence);
            s.series = self
                .history
                .stack(&s.frames)
                .map(|series| series.points().iter().map(|p| [p.t_s, p.bytes]).collect())
                .unwrap_or_default();
        }
    }

    fn title(&self) -> String {
        title(&self.config)
    }

    fn write_interval_snapshot(&mut self) -> anyhow::Result<()> {
        let t0 = Instant::now();
        let snap = self.snapshot();
        let stacks = self.stacks(&snap);
        let index = self.snapshots.len() as u32 + 1;
        let info = SnapshotInfo {
            index,
            elapsed_s: self.started.elapsed().as_secs_f64(),
            live_bytes: stacks.iter().map(|s| s.bytes).sum(),
            live_allocations: stacks.iter().map(|s| s.allocations).sum(),
            cgroup_usage_bytes: None,
            rss_bytes: None,
        };
        let (usage, _, rss) = self.memory_now();
        let info = SnapshotInfo { cgroup_usage_bytes: usage, rss_bytes: rss, ..info };
        self.history.record(
            info.elapsed_s,
            stacks.iter().map(|s| (s.frames.as_slice(), s.bytes, s.allocations)),
            info.live_bytes,
            usage,
        );
        self.top_frame = stacks.first().and_then(|s| s.frames.last().cloned());
        if self.first_folded.is_none() {
            self.first_folded = Some(output::folded_lines(&stacks));
        }
        let lost: u64 = self
            .collector
            .counters(&self.probes.bpf)
            .iter()
            .filter(|(c, _)| c.is_loss())
            .map(|(_, v)| v)
            .sum();
        if self.progress {
            eprint!("\r\x1b[2K");
        }
        info!(
            "[{:>6.1}s] {} live in {} allocations, {} stacks, {} processes; lost events: {lost}",
            info.elapsed_s,
            output::human_bytes(info.live_bytes),
            info.live_allocations,
            stacks.len(),
            self.processes.values().filter(|p| p.alive).count(),
        );
        self.snapshots.push(info);
        let title = format!("{} — snapshot {index}", self.title());
        output::write_snapshot(&self.config.output, index, &stacks, &title)
            .with_context(|| format!("failed to write snapshot {index}"))?;
        log::debug!("snapshot {index}: read, symbolized and written in {:.3} s", t0.elapsed().as_secs_f64());
        Ok(())
    }

    fn finish(mut self, end_reason: &str) -> Result<(), Failure> {
        self.ended = Some(Instant::now());
        if self.progress {
            eprintln!();
        }
        self.drain_events();
        let snap = self.snapshot();
        let stacks = self.stacks(&snap);
        let counters = self.collector.counters(&self.probes.bpf);
        let mut lost = BTreeMap::new();
        let mut stats = BTreeMap::new();
        for (c, v) in &counters {
            if c.is_loss() {
                lost.insert(c.name().to_string(), *v);
            } else {
                stats.insert(c.name().to_string(), *v);
            }
        }
        for c in Counter::ALL {
            let m = if c.is_loss() { &mut lost } else { &mut stats };
            m.entry(c.name().to_string()).or_insert(0);
        }
        lost.insert("uprobe_attach_failures".into(), self.probes.attach_failures);
        lost.insert("optional_tracepoints_missing".into(), self.probes.optional_failures.len() as u64);
        let (usage, limit, rss) = self.memory_now();
        let tracked_bytes = stacks.iter().map(|s| s.bytes).sum();
        let elapsed = self.started.elapsed().as_secs_f64();
        self.history.record(
            elapsed,
            stacks.iter().map(|s| (s.frames.as_slice(), s.bytes, s.allocations)),
            tracked_bytes,
            usage,
        );
        let mut stacks = stacks;
        self.classify(&mut stacks);
        let oom_eta_s = analyze::oom_eta_s(self.history.cgroup(), limit);
        stats.insert("mapping_events".into(), self.collector.mapping_events);
        let report = Report {
            target: self.config.label.clone(),
            cgroup: self.config.cgroup.as_ref().map(|c| c.rel.clone()),
            started_at: humantime::format_rfc3339_seconds(self.started_at).to_string(),
            duration_s: elapsed,
            end_reason: end_reason.to_string(),
            sample_bytes: (self.config.sizes.sample_bytes > 0).then_some(self.config.sizes.sample_bytes),
            mode: if self.config.sizes.rss { "rss" } else { "allocations" }.to_string(),
            live_bytes: stacks.iter().map(|s| s.bytes).sum(),
            live_allocations: stacks.iter().map(|s| s.allocations).sum(),
            stacks,
            lost,
            stats,
            processes: self
                .processes
                .iter()
                .map(|(pid, p)| ProcessInfo {
                    pid: *pid,
                    comm: p.comm.clone(),
                    alive: p.alive,
                    freed_at_exit_bytes: p.freed_at_exit,
                })
                .collect(),
            probes: self.probes.placed.clone(),
            snapshots: self.snapshots.clone(),
            memory: MemoryInfo {
                tracked_bytes,
                rss_bytes: rss,
                cgroup_usage_bytes: usage,
                cgroup_limit_bytes: limit,
                source: self.memory.describe(),
            },
            oom_eta_s,
            oom_kills: self.oom_kills.clone(),
        };
        // Detach while the artifacts are written: closing each uprobe link takes the kernel
        // 0.1-0.5 s, and the artifacts should not wait for it.
        let probes = self.probes;
        let detach = std::thread::spawn(move || drop(probes));
        let title = title(&self.config);
        let first_folded = self.first_folded.clone().unwrap_or_default();
        let history = output::RunHistory { first_folded: &first_folded, snapshots_dir: &self.config.output };
        let written = write_with_fallback(&self.config.output, &report, &title, &history);
        info!("final snapshot and artifacts written {:.2} s after the end", self.ended.map_or(0.0, |t| t.elapsed().as_secs_f64()));
        println!("{}", output::render_summary(&report, self.config.top));
        let _ = detach.join();
        match written {
            Ok(dir) => {
                println!("memprof: flamegraph: {}", dir.join(output::SVG_FILE).display());
                println!("memprof: report: {}", dir.join(output::HTML_FILE).display());
                Ok(())
            }
            Err(err) => Err(Failure::Runtime(err)),
        }
    }
}

fn title(config: &Config) -> String {
    if config.sizes.rss {
        format!("memprof: resident pages of {} by the stack that touched them first", config.label)
    } else {
        format!("memprof: outstanding allocations of {}", config.label)
    }
}

fn class_name(c: Class) -> &'static str {
    match c {
        Class::Leak => "leak",
        Class::Cache => "cache",
        Class::Churn => "churn",
        Class::Unknown => "unknown",
    }
}

/// Writes the artifacts; if the folder has become unwritable, writes them to a temporary folder
/// instead (nothing collected is lost) and reports the failure.
fn write_with_fallback(
    dir: &Path,
    report: &Report,
    title: &str,
    history: &output::RunHistory<'_>,
) -> anyhow::Result<PathBuf> {
    match output::write_final(dir, report, title, history) {
        Ok(_) => Ok(dir.to_path_buf()),
        Err(err) => {
            let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "memprof".into());
            let fallback = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
            let _ = std::fs::create_dir_all(&fallback);
            match output::write_final(&fallback, report, title, history) {
                Ok(_) => Err(anyhow::anyhow!(
                    "failed to write to {} ({err}); the artifacts are in {}",
                    dir.display(),
                    fallback.display()
                )),
                Err(err2) => Err(anyhow::anyhow!("failed to write the artifacts: {err}; fallback: {err2}")),
            }
        }
    }
}
