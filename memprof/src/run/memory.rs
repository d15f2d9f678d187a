//! The target's memory as the kernel counts it (cgroup usage and limit, RSS) and the evidence
//! written when the OOM killer picks one of its processes.

use std::collections::HashSet;

use log::warn;

use super::session::Session;
use crate::{
    collect::Snapshot,
    output,
    report::{OomKill, SharedMemory},
    target::{
        self,
        memory::{self, MemorySource},
    },
};

impl Session {
    pub(super) fn memory_source(&self) -> MemorySource {
        let pids = self.alive_pids();
        match (&self.config.cgroup, self.config.pid) {
            (Some(cg), _) => MemorySource::for_cgroup(cg, &pids),
            (None, Some(pid)) => {
                MemorySource::for_pid(pid, target::cgroup::find_cgroup2_mount().ok().as_deref())
            }
            _ => MemorySource::None,
        }
    }

    /// Whether the memory cgroup read for the target holds processes outside it. A cgroup v2
    /// target's own `memory.current` holds only the target; a v1 memory cgroup (hybrid hosts) or
    /// the cgroup of a `--pid` target may hold others.
    pub(super) fn shared_memory(&self) -> Option<SharedMemory> {
        if let (Some(cg), MemorySource::V2(dir)) = (&self.config.cgroup, &self.memory) {
            if dir.starts_with(&cg.path) {
                return None;
            }
        }
        let members = self.memory.member_pids()?;
        let mut ours: HashSet<u32> = self.processes.keys().copied().collect();
        ours.extend(self.target_pids());
        ours.insert(std::process::id());
        let others = members.difference(&ours).count() as u64;
        (others > 0).then(|| SharedMemory {
            other_processes: others,
            cgroup: self.memory.dir().map(|d| d.display().to_string()).unwrap_or_default(),
        })
    }

    pub(super) fn alive_pids(&self) -> Vec<u32> {
        self.processes.iter().filter(|(_, p)| p.alive).map(|(pid, _)| *pid).collect()
    }

    /// (cgroup usage, cgroup limit, RSS) now.
    pub(super) fn memory_now(&mut self) -> (Option<u64>, Option<u64>, Option<u64>) {
        if self.memory == MemorySource::None {
            self.memory = self.memory_source();
        }
        let sample = self.memory.sample();
        let pids = self.alive_pids();
        let rss = (!pids.is_empty()).then(|| memory::rss_bytes(&pids));
        (sample.map(|s| s.usage), sample.and_then(|s| s.limit), rss)
    }

    /// The OOM killer chose one of our processes: write what it held, now, before it is gone.
    pub(super) fn capture_oom(&mut self, pid: u32) {
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
}
