//! The run between attach and end: the event loop, process adoption and retirement,
//! snapshots, OOM evidence.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use log::{info, warn};
use memprof_common::{
    LEAF_PREPEND,
    unwind::{STACK_FIRST_EXACT, STACK_TRUNCATED, STACK_USED_FP},
};

use super::{Config, Failure, finish::class_name, title};
use crate::{
    analyze::{self, Class, History, Series},
    attach::{Probes, alloc_code::AllocatorCode},
    collect::{Collector, NO_STACK, Notice, Snapshot, StackRef},
    output,
    report::{Frame, OomKill, SnapshotInfo, StackReport},
    runtime::Runtimes,
    symbolize::{StackOpts, Symbolizer},
    unwind::loader::UnwindLoader,
    target::{
        self,
        memory::MemorySource,
    },
    tracefs,
};

/// A process of the target, as we follow it.
pub(super) struct Tracked {
    pub(super) comm: String,
    pub(super) alive: bool,
    pub(super) freed_at_exit: Option<u64>,
}

/// The state of a run between start and end.
pub(super) struct Session {
    pub(super) config: Config,
    pub(super) probes: Probes,
    pub(super) collector: Collector,
    pub(super) symbolizer: Symbolizer,
    pub(super) processes: BTreeMap<u32, Tracked>,
    /// Processes seen in the target but younger than [`ADOPT_AFTER`](super::processes::ADOPT_AFTER):
    /// probed once they reach it (most short-lived processes never do).
    pub(super) young: BTreeSet<u32>,
    /// Processes seen that exited before they were probed.
    pub(super) short_lived: u64,
    /// The last of them (so that each is counted once).
    pub(super) recent_short: std::collections::VecDeque<u32>,
    /// The first poll (at attach) probes every process there, whatever its age.
    pub(super) polled: bool,
    pub(super) frames: HashMap<StackRef, Vec<Frame>>,
    /// How each symbolized stack's walk ended (`STACK_*` flags; absent: frame-pointer walk).
    pub(super) stack_flags: HashMap<StackRef, u32>,
    /// `--unwind dwarf`: the CFI tables in the kernel.
    pub(super) unwinder: Option<UnwindLoader>,
    pub(super) snapshots: Vec<SnapshotInfo>,
    pub(super) memory: MemorySource,
    pub(super) oom_kills: Vec<OomKill>,
    pub(super) history: History,
    /// Folded lines of the first snapshot (the base of growth.svg).
    pub(super) first_folded: Option<Vec<String>>,
    /// Leaf-most frame of the largest stack at the last snapshot (for the progress line).
    pub(super) top_frame: Option<String>,
    /// Whether stderr is a terminal (then a live progress line is kept up to date).
    pub(super) progress: bool,
    /// Run time of the last snapshot line logged.
    pub(super) last_snapshot_line_s: f64,
    /// Processes that called execve (pid → its time) whose old image's records are still to
    /// be released, and when that was last done.
    pub(super) exec_images: HashMap<u32, u64>,
    pub(super) exec_images_released: Instant,
    /// When unreferenced stacks were last deleted from the kernel's map.
    pub(super) stacks_collected_at: Instant,
    pub(super) started: Instant,
    pub(super) started_at: SystemTime,
    /// When the run ended (for the final timing).
    pub(super) ended: Option<Instant>,
    /// Runtimes whose frames are read from the processes (Python).
    pub(super) runtimes: Runtimes,
    /// Where each process's allocator code is (its own mappings are left out).
    pub(super) alloc_code: AllocatorCode,
}

pub(super) async fn profile(config: Config) -> Result<(), Failure> {
    let _tracefs = tracefs::ensure_mounted().context("failed to mount tracefs")?;
    let mut probes = Probes::load(config.scope, config.sizes).context("failed to load the BPF programs")?;
    probes.set_probe_placement(config.probe_placement);
    let collector =
        Collector::new(&mut probes.bpf, config.sizes.dwarf).context("failed to open the event ring buffer")?;
    let unwinder = if config.sizes.dwarf {
        Some(UnwindLoader::new(&probes.bpf, config.sizes.unwind_rows).context("failed to set up the CFI unwinder")?)
    } else {
        None
    };
    let runtimes = Runtimes::new(config.runtimes.clone());
    let mut s = Session {
        runtimes,
        alloc_code: AllocatorCode::default(),
        config,
        probes,
        collector,
        symbolizer: Symbolizer::new(),
        processes: BTreeMap::new(),
        young: BTreeSet::new(),
        short_lived: 0,
        recent_short: Default::default(),
        polled: false,
        frames: HashMap::new(),
        stack_flags: HashMap::new(),
        unwinder,
        snapshots: Vec::new(),
        memory: MemorySource::None,
        oom_kills: Vec::new(),
        history: History::new(Series::DEFAULT_CAP, History::DEFAULT_MAX_STACKS),
        first_folded: None,
        top_frame: None,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        last_snapshot_line_s: 0.0,
        exec_images: HashMap::new(),
        exec_images_released: Instant::now(),
        stacks_collected_at: Instant::now(),
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

/// Whether a CFI walk was cut short, and why (`whole`, `depth`, `read`, `no_info`,
/// `unsupported`).
pub(super) fn unwind_outcome(flags: u32) -> (bool, &'static str) {
    use memprof_common::unwind::*;
    if flags & STACK_TRUNC_DEPTH != 0 {
        (true, "depth")
    } else if flags & STACK_TRUNC_READ != 0 {
        (true, "read")
    } else if flags & STACK_TRUNC_NO_INFO != 0 {
        (true, "no_info")
    } else if flags & STACK_TRUNC_UNSUPPORTED != 0 {
        (true, "unsupported")
    } else {
        (false, "whole")
    }
}

/// How often unreferenced stacks are deleted from the kernel's map (at a snapshot).
const STACK_GC_EVERY: Duration = Duration::from_secs(10);

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
        // The event ring buffer wakes the loop as soon as the kernel writes to it, so that a new
        // process's code (its C library, mapped by the dynamic loader right after execve) gets
        // its unwind tables and probes within a millisecond, before its threads allocate.
        // SAFETY: the ring buffer's descriptor is owned by the collector, which outlives this
        // loop (the AsyncFd is dropped when the loop returns) and never replaces it.
        let ring = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(self.collector.events_fd(), tokio::io::Interest::READABLE)
        }
        .ok();
        loop {
            let events = async {
                match ring.as_ref() {
                    Some(r) => match r.readable().await {
                        Ok(mut g) => g.clear_ready(),
                        Err(_) => std::future::pending::<()>().await,
                    },
                    None => std::future::pending::<()>().await,
                }
            };
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
                _ = events => {
                    self.drain_events();
                    continue;
                }
                _ = tick.tick() => {}
            }
            self.drain_events();
            if self.exec_images_released.elapsed() >= Duration::from_secs(1) {
                self.release_exec_images();
            }
            self.poll_processes();
            let probes = self.runtimes.poll(&mut self.probes.bpf);
            self.attach_for_runtimes(&probes);
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

    /// Deletes the kernel's stacks nothing refers to any more (see `collect/stack_gc.rs`), and
    /// what was cached of them.
    pub(super) fn collect_stacks(&mut self) {
        self.stacks_collected_at = Instant::now();
        let deleted: HashSet<u32> = self.collector.collect_stacks(&mut self.probes.bpf).into_iter().collect();
        if !deleted.is_empty() {
            self.frames.retain(|r, _| !deleted.contains(&r.stack_id));
            self.stack_flags.retain(|r, _| !deleted.contains(&r.stack_id));
        }
    }

    /// Releases the records processes made before their execve, all in one pass over the
    /// kernel map, at most once a second (and before every snapshot and at the end).
    pub(super) fn release_exec_images(&mut self) {
        self.exec_images_released = Instant::now();
        if self.exec_images.is_empty() {
            return;
        }
        let execs = std::mem::take(&mut self.exec_images);
        for (pid, held) in self.collector.release_before_exec(&mut self.probes.bpf, &execs) {
            if held > 0 {
                info!("pid {pid} called execve; {} of its old image released", output::human_bytes(held));
            }
        }
    }

    /// Everything lost so far, summed over the loss counters.
    fn lost_events(&self) -> u64 {
        self.collector.counters(&self.probes.bpf).iter().filter(|(c, _)| c.is_loss()).map(|(_, v)| v).sum()
    }

    /// The live progress line: elapsed, live bytes, top stack, lost events.
    fn show_progress(&mut self) {
        let snap = self.snapshot();
        let live: u64 = snap.values().map(|s| s.live_bytes).sum();
        let lost = self.lost_events();
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

    pub(super) fn is_tracked(&self, pid: u32) -> bool {
        self.processes.get(&pid).is_some_and(|p| p.alive)
    }

    pub(super) fn drain_events(&mut self) {
        let code = &mut self.alloc_code;
        let (runtimes, bpf) = (&self.runtimes, &self.probes.bpf);
        let mut internal = |pid: u32, addr: u64, len: u64, stack: &[u64], complete: bool| {
            code.is_internal(pid, stack, complete) || runtimes.is_paged_heap(bpf, pid, addr, len)
        };
        let notices = self.collector.drain_events(&self.probes.bpf, &mut internal);
        for notice in notices {
            match notice {
                Notice::Mapped(pid) if !self.is_tracked(pid) => self.consider(pid),
                Notice::Mapped(_) => {}
                Notice::Exec { pid, ts_ns } => {
                    if self.is_tracked(pid) {
                        // The old image's memory went with it (records made before the execve);
                        // the per-process probes stay (the kernel re-arms them in the new image
                        // for the objects it maps again), and objects new to it get probes.
                        // The old image's records leave at the next release pass (see
                        // `release_exec_images`).
                        self.exec_images.insert(pid, ts_ns);
                        self.symbolizer.observe_process(pid);
                        self.frames.retain(|r, _| r.pid != pid);
                        self.load_unwind(pid);
                        self.probes.attach_process(pid);
                        self.alloc_code.refresh(pid);
                        self.observe_runtimes(pid, true);
                        if let Some(p) = self.processes.get_mut(&pid) {
                            p.comm = target::procs::comm(pid).unwrap_or_default();
                        }
                    } else {
                        self.consider(pid);
                    }
                }
                Notice::CodeMapped(pid) => {
                    if self.is_tracked(pid) {
                        self.symbolizer.observe_process(pid);
                        self.load_unwind(pid);
                        self.probes.attach_process(pid);
                        self.alloc_code.refresh(pid);
                        self.observe_runtimes(pid, false);
                    } else {
                        self.consider(pid);
                    }
                }
                Notice::RangeReleased { pid, addr, len } => {
                    self.collector.release_range(&mut self.probes.bpf, pid, addr, len);
                }
                Notice::NewStack { pid, stack_id } => {
                    let st = self.collector.stack(&self.probes.bpf, stack_id);
                    self.runtimes.prefetch(pid, &st.ips);
                }
                Notice::Discarded(_) => {
                    // Pages a program dropped with madvise count again when touched.
                    self.probes.attach_page_faults("pages dropped by madvise counted again when touched");
                }
                Notice::OomVictim(pid) => {
                    if self.is_tracked(pid) {
                        self.capture_oom(pid);
                    }
                }
            }
        }
    }

    pub(super) fn snapshot(&mut self) -> Snapshot {
        match self.collector.snapshot(&self.probes.bpf) {
            Ok(s) => s,
            Err(err) => {
                warn!("{err}");
                Snapshot::new()
            }
        }
    }

    /// Symbolizes and merges a snapshot's live stacks (by frames, over processes).
    pub(super) fn stacks(&mut self, snap: &Snapshot) -> Vec<StackReport> {
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
            if let Some(&flags) = self.stack_flags.get(r) {
                let (truncated, why) = unwind_outcome(flags);
                // Stacks merged by frames: the worst walk speaks for them.
                if truncated || e.unwind.is_empty() {
                    e.truncated = truncated;
                    e.unwind = why.to_string();
                }
            } else if r.stack_id == NO_STACK {
                e.truncated = true;
                e.unwind = "none".to_string();
            }
            e.bytes += sample.live_bytes;
            e.allocations += sample.live_count;
            e.total_bytes += sample.total_bytes;
            e.total_allocations += sample.total_count;
            if !e.pids.contains(&r.pid) {
                e.pids.push(r.pid);
            }
        }
        let mut stacks: Vec<StackReport> = merged.into_values().collect();
        let dwarf = self.config.sizes.dwarf;
        for s in &mut stacks {
            if s.unwind.is_empty() {
                s.unwind = if dwarf { "none" } else { "fp" }.to_string();
                s.truncated = dwarf;
            }
            s.pids.sort_unstable();
        }
        stacks.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.frames.cmp(&b.frames)));
        stacks
    }

    fn symbolize(&mut self, r: &StackRef) -> Vec<Frame> {
        if r.stack_id == NO_STACK {
            return Vec::new();
        }
        let st = self.collector.stack(&self.probes.bpf, r.stack_id);
        let mut ips = st.ips;
        if let Some(flags) = st.flags {
            // A CFI walk: every address is a real frame. A process walked before its tables were
            // loaded lost the syscall wrapper's caller, kept beside the stack.
            if flags & (STACK_USED_FP | STACK_TRUNCATED) != 0
                && r.leaf_ret != 0
                && ips.get(1) != Some(&r.leaf_ret)
                && self.symbolizer.is_return_address(r.pid, r.leaf_ret)
            {
                ips.insert(1.min(ips.len()), r.leaf_ret);
            }
            self.stack_flags.insert(*r, flags);
            let opts = StackOpts { first_exact: flags & STACK_FIRST_EXACT != 0, trust_all: true };
            let mut frames = self.symbolizer.symbolize_stack_with(r.pid, &ips, opts, &mut self.runtimes);
            let heap = self.runtimes.heap_frame(r.pid, &ips, &frames);
            frames.extend(heap);
            return frames;
        }
        if r.leaf_ret & LEAF_PREPEND != 0 {
            ips.insert(0, r.leaf_ret & !LEAF_PREPEND);
        } else if r.leaf_ret != 0
            && ips.get(1) != Some(&r.leaf_ret)
            && !ips.is_empty()
            && self.symbolizer.is_return_address(r.pid, r.leaf_ret)
        {
            ips.insert(1, r.leaf_ret);
        }
        self.symbolizer.symbolize_stack(r.pid, &ips, StackOpts { first_exact: false, trust_all: false })
    }

    /// Class, growth rate and series of each stack, from the history.
    pub(super) fn classify(&self, stacks: &mut [StackReport]) -> HashMap<Vec<String>, analyze::Verdict> {
        let mut totals: HashMap<Vec<String>, u64> =
            stacks.iter().map(|s| (s.frames.clone(), s.total_allocations)).collect();
        totals.extend(analyze::functions::series_entries(stacks).into_iter().map(|f| (f.0, f.3)));
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
        verdicts
    }

    pub(super) fn title(&self) -> String {
        title(&self.config)
    }

    fn write_interval_snapshot(&mut self) -> anyhow::Result<()> {
        let t0 = Instant::now();
        self.release_exec_images();
        if self.stacks_collected_at.elapsed() >= STACK_GC_EVERY {
            self.collect_stacks();
        }
        let snap = self.snapshot();
        let stacks = self.stacks(&snap);
        let index = self.snapshots.last().map_or(1, |s| s.index + 1);
        let info = SnapshotInfo {
            index,
            elapsed_s: self.started.elapsed().as_secs_f64(),
            live_bytes: stacks.iter().map(|s| s.bytes).sum(),
            live_allocations: stacks.iter().map(|s| s.allocations).sum(),
            cgroup_usage_bytes: None,
            rss_bytes: None,
        };
        let (usage, limit, rss) = self.memory_now();
        let info = SnapshotInfo { cgroup_usage_bytes: usage, rss_bytes: rss, ..info };
        let functions = analyze::functions::series_entries(&stacks);
        self.history.record(
            info.elapsed_s,
            stacks
                .iter()
                .map(|s| (s.frames.as_slice(), s.bytes, s.allocations))
                .chain(functions.iter().map(|f| (f.0.as_slice(), f.1, f.2))),
            info.live_bytes,
            usage,
        );
        self.top_frame = stacks.first().and_then(|s| s.frames.last().cloned());
        if self.first_folded.is_none() {
            self.first_folded = Some(output::folded_lines(&stacks));
        }
        let lost = self.lost_events();
        if self.progress {
            eprint!("\r\x1b[2K");
        }
        // One line per snapshot on a terminal; into a log, every one for the first 60, then
        // one whenever a tenth of the run went by since the last (about 70 lines for a week).
        let since = info.elapsed_s - self.last_snapshot_line_s;
        let due = self.progress || self.snapshots.len() < 60 || since >= 0.1 * info.elapsed_s;
        if due {
            self.last_snapshot_line_s = info.elapsed_s;
        }
        info!(
            target: if due { crate::run::UNBOUNDED_LOG } else { crate::run::SKIPPED_LOG },
            "[{:>6.1}s] {} live in {} allocations, {} stacks, {} processes; lost events: {lost}{}",
            info.elapsed_s,
            output::human_bytes(info.live_bytes),
            info.live_allocations,
            stacks.len(),
            self.processes.values().filter(|p| p.alive).count(),
            self.export_note(),
        );
        self.snapshots.push(info);
        self.export_snapshot(&snap, &stacks, (usage, limit, rss));
        let title = format!("{} — snapshot {index}", self.title());
        output::write_snapshot(&self.config.output, index, &stacks, &title)
            .with_context(|| format!("failed to write snapshot {index}"))?;
        for old in output::thin_snapshots(&mut self.snapshots) {
            output::remove_snapshot(&self.config.output, old);
        }
        log::debug!("snapshot {index}: read, symbolized and written in {:.3} s", t0.elapsed().as_secs_f64());
        Ok(())
    }

}
