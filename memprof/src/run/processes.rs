//! The target's processes as they come and go: adopted (unwind tables, probes, runtimes) and
//! retired when they exit.

use log::{info, warn};

use super::session::{Session, Tracked};
use crate::{output, target};

/// Age at which a process that appeared in the target is probed (see [`Session::consider`]).
pub(super) const ADOPT_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

impl Session {
    /// Current processes of the target.
    pub(super) fn target_pids(&self) -> Vec<u32> {
        match (&self.config.cgroup, self.config.pid) {
            (Some(cg), _) => target::cgroup::cgroup_tree_pids(&cg.path).unwrap_or_default(),
            (None, Some(pid)) if target::procs::pid_alive(pid) => vec![pid],
            _ => Vec::new(),
        }
    }

    /// Adopts new processes (probes, memory map) and retires those that exited.
    pub(super) fn poll_processes(&mut self) {
        let pids = self.target_pids();
        let initial = !self.polled;
        self.polled = true;
        for &pid in &pids {
            if !self.is_tracked(pid) {
                if initial {
                    self.adopt(pid);
                } else {
                    self.consider(pid);
                }
            }
        }
        // Young processes that left before their probes: counted, nothing else.
        let left: Vec<u32> = self.young.iter().copied().filter(|p| pids.binary_search(p).is_err()).collect();
        for pid in left {
            if !target::procs::pid_alive(pid) {
                self.young.remove(&pid);
                self.count_short_lived(pid);
            }
        }
        let gone: Vec<u32> = self
            .processes
            .iter()
            .filter(|(pid, p)| p.alive && pids.binary_search(pid).is_err() && !target::procs::pid_alive(**pid))
            .map(|(pid, _)| *pid)
            .collect();
        if gone.is_empty() {
            return;
        }
        // The kernel released everything the processes held: not leaks.
        self.drain_events();
        let held_by = self.collector.retire_processes(&mut self.probes.bpf, &gone);
        for pid in gone {
            let held = held_by.get(&pid).copied().unwrap_or(0);
            // Its uprobe_multi links are released in the background. Perf-event probes (older
            // kernels, --no-uprobe-multi) stay attached (they filter on the dead process and
            // never fire again) until memprof exits: on kernel 6.18, closing uprobe perf events
            // and attaching new ones at the same offsets shortly after was seen to leave the new
            // ones disarmed (a process restarting in a container lost every allocation). The
            // cost there is ~17 file descriptors per exited process; see raise_fd_limit().
            self.probes.forget_process(pid);
            self.runtimes.forget(&mut self.probes.bpf, pid);
            self.alloc_code.forget(pid);
            self.symbolizer.forget_process(pid);
            if let Some(u) = self.unwinder.as_mut() {
                u.forget_process(&mut self.probes.bpf, pid);
            }
            if let Some(p) = self.processes.get_mut(&pid) {
                p.alive = false;
                p.freed_at_exit = Some(held);
            }
            info!("pid {pid} exited; {} it still held were released with it", output::human_bytes(held));
        }
    }

    /// A process of the target not probed yet: probed once it is [`ADOPT_AFTER`] old (a process
    /// can only leak while it lives, and most short-lived ones — health checks, `sh -c` — are
    /// gone before that; probing them would cost links, file descriptors and symbol caches
    /// for nothing). Younger ones wait for a later poll (every 200 ms). In `--mode rss` every
    /// process is adopted at once (the kernel records its pages anyway).
    pub(super) fn consider(&mut self, pid: u32) {
        if self.is_tracked(pid) {
            return;
        }
        if self.config.sizes.rss {
            // `--mode rss` records the pages of every process in scope from its first fault,
            // probed or not (no probes to spare): each is adopted at once, so that its pages
            // are retired when it exits.
            self.adopt(pid);
            return;
        }
        match target::procs::age(pid) {
            Some(age) if age >= ADOPT_AFTER => {
                self.young.remove(&pid);
                self.adopt(pid);
            }
            Some(_) => {
                self.young.insert(pid);
            }
            None => {
                // Gone before it was probed: counted once, and what its events left here goes.
                self.young.remove(&pid);
                self.count_short_lived(pid);
            }
        }
    }

    /// Counts a process that exited before it was probed (once, however many of its events
    /// arrive afterwards) and drops the per-process state its mapping events created.
    fn count_short_lived(&mut self, pid: u32) {
        if self.recent_short.contains(&pid) {
            return;
        }
        self.short_lived += 1;
        self.recent_short.push_back(pid);
        if self.recent_short.len() > 4096 {
            self.recent_short.pop_front();
        }
        self.collector.mappings.forget(pid);
        self.collector.discarded.forget(pid);
        self.alloc_code.forget(pid);
        // (Its map and root directory, if a snapshot symbolized one of its stacks meanwhile.)
        self.symbolizer.forget_process(pid);
    }

    pub(super) fn adopt(&mut self, pid: u32) {
        let comm = target::procs::comm(pid).unwrap_or_default();
        self.symbolizer.observe_process(pid);
        // Tables first, so the first allocations the probes see unwind whole.
        self.load_unwind(pid);
        let n = self.probes.attach_process(pid);
        if n == 0 && !self.config.sizes.rss {
            if target::procs::pid_alive(pid) {
                warn!("pid {pid} ({comm}): no allocator functions found in the objects it maps");
            } else {
                // Gone while being probed (routine: a short-lived process there at the start).
                log::debug!("pid {pid} exited while it was being probed");
            }
        }
        self.observe_runtimes(pid, true);
        self.processes.insert(pid, Tracked { comm, alive: true, freed_at_exit: None });
    }

    /// Looks for runtimes (Python) in a process and attaches the probes they ask for.
    pub(super) fn observe_runtimes(&mut self, pid: u32, fresh: bool) {
        let probes = self.runtimes.observe(&mut self.probes.bpf, pid, fresh);
        self.attach_for_runtimes(&probes);
    }

    /// What runtimes asked for once processes were observed: their probes, the page-fault
    /// tracepoint once one counts its heap's pages (if it cannot be attached, heaps are counted
    /// as mappings again), and heaps found in them, counted by page from now on: not also as
    /// the mappings recorded for them before.
    pub(super) fn attach_for_runtimes(&mut self, probes: &[crate::runtime::RuntimeProbe]) {
        self.probes.attach_runtime(probes);
        if self.runtimes.heap_pages()
            && !self.probes.attach_page_faults("pymalloc arenas counted by the pages their objects fill")
        {
            self.runtimes.no_heap_pages(&mut self.probes.bpf);
        }
        for (pid, start, end) in self.runtimes.take_found_heaps() {
            self.collector.mappings.unmap(pid, start, end - start);
        }
    }

    /// `--unwind dwarf`: (re)loads the CFI tables and mapping list of a process.
    pub(super) fn load_unwind(&mut self, pid: u32) {
        if let Some(u) = self.unwinder.as_mut() {
            u.load_process(&mut self.probes.bpf, pid);
        }
    }
}
