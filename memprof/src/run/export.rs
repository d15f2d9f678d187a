//! The run's side of `--metrics` and `--pyroscope` (see `export/`): the figures of each snapshot
//! and its profiles, handed over as they are computed.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, SystemTime},
};

use memprof_common::Counter;

use super::session::Session;
use crate::{
    analyze::{self, Class},
    cli::Opt,
    collect::Snapshot,
    export::{ExportError, ExportOptions, Exporters, Figures, PushStats},
    report::StackReport,
    target,
};

/// Starts what the options ask for: the metrics address is bound now, so a taken port is bad
/// input found before anything is attached. Pyroscope's `service_name` is the container or
/// cgroup name the user gave (its last path component), the pod's name (or its container's,
/// with `--container`) for `--pod`, or the process's name for `--pid`; labels `node` (the host
/// name) and, for `--pod`, `namespace`, `pod` and `container`.
pub(super) fn start(opt: &Opt, label: &str, pid: Option<u32>) -> Result<Exporters, ExportError> {
    let options = ExportOptions {
        metrics: opt.metrics,
        pyroscope: opt.pyroscope.clone(),
        pyroscope_tenant: opt.pyroscope_tenant.clone(),
        pyroscope_pid: opt.pyroscope_pid,
    };
    let service = match pid {
        Some(pid) => target::procs::comm(pid).unwrap_or_else(|| format!("pid-{pid}")),
        None => label.rsplit('/').find(|s| !s.is_empty()).unwrap_or(label).to_string(),
    };
    // `node` always (a fleet pushes from many); `namespace`, `pod`, `container` for `--pod`.
    let mut labels = Vec::new();
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        labels.push(("node".to_string(), host.trim().to_string()));
    }
    if let Some(pod) = &opt.pod {
        labels.push(("namespace".to_string(), pod.namespace.clone()));
        labels.push(("pod".to_string(), pod.name.clone()));
        if let Some(c) = &opt.container {
            labels.push(("container".to_string(), c.clone()));
        }
    }
    let exporters = Exporters::start(&options, label, &service, &labels, opt.interval)?;
    if let Some(m) = &exporters.metrics {
        log::info!("metrics at http://{}/metrics", m.addr());
    }
    if let Some(url) = &opt.pyroscope {
        log::info!(
            "pushing profiles to {url} every {} as service {service:?}",
            humantime::format_duration(opt.interval)
        );
    }
    Ok(exporters)
}

impl Session {
    /// Feeds one snapshot to the exporters: the metrics from its figures, and to Pyroscope the
    /// interval's profiles (the target's `stacks`, or each process's out of `snap`).
    pub(super) fn export_snapshot(
        &mut self,
        snap: &Snapshot,
        stacks: &[StackReport],
        memory: (Option<u64>, Option<u64>, Option<u64>),
    ) {
        if !self.config.export.active() {
            return;
        }
        let (usage, limit, rss) = memory;
        if self.config.export.metrics.is_some() {
            let figures = Figures {
                tracked_bytes: stacks.iter().map(|s| s.bytes).sum(),
                rss_bytes: rss,
                cgroup_usage_bytes: usage,
                cgroup_limit_bytes: limit,
                oom_eta_s: analyze::oom_eta_s(self.history.cgroup(), limit),
                top_leak_growth_bytes_per_s: self.top_leak_growth(stacks),
                lost: self.lost_counters(),
                oom_kills: self.oom_kills.len() as u64,
                processes: self.processes.values().filter(|p| p.alive).count() as u64,
            };
            self.config.export.update_metrics(&figures);
        }
        let groups = match self.config.export.wants_profiles() {
            None => return,
            Some(false) => vec![(None, stacks.to_vec())],
            Some(true) => {
                let mut by_pid: BTreeMap<u32, Snapshot> = BTreeMap::new();
                for (r, s) in snap {
                    by_pid.entry(r.pid).or_default().insert(*r, *s);
                }
                by_pid.into_iter().map(|(pid, sub)| (Some(pid), self.stacks(&sub))).collect()
            }
        };
        self.config.export.push_profiles(groups, self.started_at, SystemTime::now());
    }

    /// The fastest growth among the stacks now classified as leaks.
    fn top_leak_growth(&self, stacks: &[StackReport]) -> f64 {
        let totals: HashMap<Vec<String>, u64> =
            stacks.iter().map(|s| (s.frames.clone(), s.total_allocations)).collect();
        analyze::classify_all(&self.history, &totals)
            .into_iter()
            .filter(|(frames, v)| v.class == Class::Leak && totals.contains_key(frames))
            .map(|(_, v)| v.growth_bytes_per_s)
            .fold(0.0, f64::max)
    }

    /// The loss counters as summary.json's `lost` names them (the kernel's, attach failures,
    /// dropped pushes).
    fn lost_counters(&self) -> BTreeMap<String, u64> {
        let counters = self.collector.counters(&self.probes.bpf);
        let mut lost: BTreeMap<String, u64> =
            Counter::ALL.iter().filter(|c| c.is_loss()).map(|c| (c.name().to_string(), 0)).collect();
        for (c, v) in counters.iter().filter(|(c, _)| c.is_loss()) {
            lost.insert(c.name().to_string(), *v);
        }
        lost.insert("uprobe_attach_failures".into(), self.probes.attach_failures);
        if let Some(p) = self.config.export.push_stats() {
            lost.insert("pushes_dropped".into(), p.dropped);
        }
        lost
    }

    /// For the per-snapshot line: `; pushes: N (dropped M)` with `--pyroscope`.
    pub(super) fn export_note(&self) -> String {
        match self.config.export.push_stats() {
            Some(p) => format!("; pushes: {} (dropped {})", p.pushed, p.dropped),
            None => String::new(),
        }
    }

    /// At the end: the final snapshot exported, the push thread given a few seconds for what is
    /// queued, and its counts put in summary.json (`pushes_dropped` is a loss).
    pub(super) fn finish_export(
        &mut self,
        snap: &Snapshot,
        stacks: &[StackReport],
        memory: (Option<u64>, Option<u64>, Option<u64>),
        lost: &mut BTreeMap<String, u64>,
        stats: &mut BTreeMap<String, u64>,
    ) {
        if !self.config.export.active() {
            return;
        }
        self.export_snapshot(snap, stacks, memory);
        let t0 = std::time::Instant::now();
        if let Some(PushStats { pushed, dropped, retries }) = self.config.export.finish() {
            lost.insert("pushes_dropped".into(), dropped);
            stats.insert("pyroscope_pushes".into(), pushed);
            stats.insert("pyroscope_retries".into(), retries);
            let took = t0.elapsed();
            if took > Duration::from_millis(500) || dropped > 0 {
                log::info!(
                    "pyroscope: {pushed} profiles pushed, {dropped} dropped ({:.1} s waiting for the last)",
                    took.as_secs_f64()
                );
            }
        }
    }
}
