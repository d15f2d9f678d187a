//! The end of a run: the final snapshot, classification, the report and its artifacts.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Instant,
};

use log::info;
use memprof_common::Counter;

use super::{Failure, session::Session, title};
use crate::{
    analyze::{self, Class},
    output,
    report::{MemoryInfo, ProcessInfo, Report, RuntimesInfo, StackQuality},
};

impl Session {
    pub(super) fn finish(mut self, end_reason: &str) -> Result<(), Failure> {
        self.ended = Some(Instant::now());
        if self.progress {
            eprintln!();
        }
        self.drain_events();
        self.release_exec_images();
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
        stats.insert("probes_skipped_process_exited".into(), self.probes.attach_gone);
        stats.insert("short_lived_processes".into(), self.short_lived);
        stats.insert("stacks_collected".into(), self.collector.stacks_collected);
        // How uprobes were attached (1: yes): uprobe_multi links, allocation functions as
        // uprobe sessions.
        stats.insert("uprobe_multi_links".into(), u64::from(self.probes.multi));
        stats.insert("uprobe_sessions".into(), u64::from(self.probes.sessions));
        lost.insert("optional_tracepoints_missing".into(), self.probes.optional_failures.len() as u64);
        let (usage, limit, rss) = self.memory_now();
        let split = crate::target::memory::rss_split(&self.alive_pids());
        let stat = self.memory.stat();
        let tracked_bytes = stacks.iter().map(|s| s.bytes).sum();
        let elapsed = self.started.elapsed().as_secs_f64();
        let function_series = analyze::functions::series_entries(&stacks);
        self.history.record(
            elapsed,
            stacks
                .iter()
                .map(|s| (s.frames.as_slice(), s.bytes, s.allocations))
                .chain(function_series.iter().map(|f| (f.0.as_slice(), f.1, f.2))),
            tracked_bytes,
            usage,
        );
        self.finish_export(&snap, &stacks, (usage, limit, rss), &mut lost, &mut stats);
        let mut stacks = stacks;
        let verdicts = self.classify(&mut stacks);
        let mut functions = analyze::functions::by_function(&stacks);
        for f in &mut functions {
            // A function is classified by its own series (see analyze/functions.rs).
            if let Some(v) = verdicts.get(&analyze::functions::history_key(f)) {
                f.class = class_name(v.class).to_string();
                f.growth_bytes_per_s = v.growth_bytes_per_s;
                f.leak_growth_bytes_per_s = if v.class == Class::Leak { v.growth_bytes_per_s } else { 0.0 };
            }
        }
        functions.sort_by(|a, b| {
            b.leak_growth_bytes_per_s
                .total_cmp(&a.leak_growth_bytes_per_s)
                .then(b.bytes.cmp(&a.bytes))
                .then(a.function.cmp(&b.function))
        });
        let oom_eta_s = analyze::oom_eta_s(self.history.cgroup(), limit);
        stats.insert("mapping_events".into(), self.collector.mapping_events);
        stats.insert("allocator_mappings_skipped".into(), self.collector.allocator_mappings);
        stats.insert("madvise_discarded_bytes".into(), self.collector.discarded.bytes);
        let mut stack_quality = StackQuality::of(&stacks, self.config.sizes.dwarf);
        stack_quality.tables = self.unwinder.as_ref().map(|u| u.stats.clone());
        let js_tiers = self.runtimes.js_tiers();
        let js_heap_bytes: u64 = stacks
            .iter()
            .filter(|s| s.frames.last().is_some_and(|f| f == crate::runtime::v8::V8_HEAP_FRAME))
            .map(|s| s.bytes)
            .sum();
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
                rss_anon_bytes: rss.map(|_| split.anon),
                rss_file_bytes: rss.map(|_| split.file),
                cgroup_anon_bytes: stat.map(|s| s.anon),
                cgroup_file_bytes: stat.map(|s| s.file),
                shared: self.shared_memory(),
            },
            oom_eta_s,
            oom_kills: self.oom_kills.clone(),
            stack_quality,
            modules: self.symbolizer.module_sources(),
            runtimes: RuntimesInfo {
                processes: self.runtimes.report(),
                python_activations: counters.get(&Counter::PyActivations).copied().unwrap_or(0),
                python_frames: counters.get(&Counter::PyFrames).copied().unwrap_or(0),
                python_walk_failed: [
                    ("no_thread_state", Counter::PyNoThreadState),
                    ("read", Counter::PyReadFailed),
                    ("misaligned", Counter::PyMisaligned),
                    ("depth", Counter::PyTruncated),
                ]
                .into_iter()
                .map(|(k, c)| (k.to_string(), counters.get(&c).copied().unwrap_or(0)))
                .collect(),
                unnamed_frames: self.runtimes.unresolved(),
                python_arenas_paged: counters.get(&Counter::PyArenas).copied().unwrap_or(0),
                python_arenas_unregistered: counters.get(&Counter::PyArenasUnregistered).copied().unwrap_or(0),
                js_frames: counters.get(&Counter::V8Frames).copied().unwrap_or(0),
                js_walk_failed: [("read", Counter::V8ReadFailed), ("depth", Counter::V8Truncated)]
                    .into_iter()
                    .map(|(k, c)| (k.to_string(), counters.get(&c).copied().unwrap_or(0)))
                    .collect(),
                js_tiers: js_tiers.0.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                js_inlined_frames: js_tiers.1,
                js_heap_bytes,
            },
            functions,
        };
        // Detach while the artifacts are written: closing each uprobe link takes the kernel
        // 0.1-0.5 s, and the artifacts should not wait for it (links are released concurrently).
        let probes = self.probes;
        let detach = std::thread::spawn(move || probes.release());
        let title = title(&self.config);
        let first_folded = self.first_folded.clone().unwrap_or_default();
        let history = output::RunHistory { first_folded: &first_folded, snapshots_dir: &self.config.output };
        let written = write_with_fallback(&self.config.output, &report, &title, &history);
        info!("final snapshot and artifacts written {:.2} s after the end", self.ended.map_or(0.0, |t| t.elapsed().as_secs_f64()));
        println!("{}", output::render_summary(&report, self.config.top));
        if let Ok((links, took)) = detach.join() {
            info!("{links} probe links released in {:.2} s", took.as_secs_f64());
        }
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

pub(super) fn class_name(c: Class) -> &'static str {
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
