//! Runtimes: interpreters whose frames memprof reads out of the target's memory, one room each
//! (see ARCHITECTURE.md, "Runtimes"). The rest of memprof knows only this interface:
//!
//! - [`Runtimes::observe`]: a process was adopted, called execve or mapped new code. Each room
//!   looks for its runtime; one that finds it loads its kernel-side walker's data, and this
//!   module then hands the walker the runtime's code ranges (`PROC_RUNTIMES`). A room may also
//!   ask for probes (CPython's object allocator).
//! - [`Runtimes::poll`]: rooms retry processes whose runtime was not ready (still starting).
//! - [`RuntimeFrames::frames`]: the symbolizer's way to name a runtime frame of a stack.
//! - [`Runtimes::prefetch`]: names a new stack's runtime frames at once, while the process is
//!   alive (they are read from its memory).

pub mod mem;
pub mod python;
pub mod v8;

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use aya::{Ebpf, maps::HashMap as BpfHashMap};
use log::{debug, info, warn};
use memprof_common::runtime::{MAX_RUNTIME_RANGES, ProcRuntime, RUNTIME_PYTHON, RUNTIME_V8, RuntimeRange, slot_kind};
use serde::Serialize;

use crate::report::Frame;

/// A probe a runtime asks for, on a function of the process (a runtime address).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeProbe {
    pub pid: u32,
    pub addr: u64,
    /// For the log and summary (e.g. `_PyObject_Malloc`).
    pub function: String,
    /// The entry program (`memprof-ebpf`).
    pub program: &'static str,
    /// Free-like: an entry probe only.
    pub free_like: bool,
    /// The function's size in bytes (0: unknown), for probe placement.
    pub size: u64,
    /// The arguments (by index) the entry program reads; for a free-like function the first is
    /// the pointer.
    pub args: &'static [usize],
}

/// What a room found in a process.
pub enum Observed {
    /// Not this runtime.
    No,
    /// This runtime, not ready yet (why): ask again later.
    Later(String),
    /// This runtime, walked: its code ranges and the probes it wants.
    Walked { ranges: Vec<(u64, u64)>, probes: Vec<RuntimeProbe>, status: RuntimeProcess },
    /// This runtime, but its frames cannot be walked: native stacks only.
    Unsupported(RuntimeProcess),
}

/// One process's runtime, for the log and `summary.json` (`runtimes`).
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct RuntimeProcess {
    pub pid: u32,
    /// `python` or `node`.
    pub runtime: &'static str,
    pub version: String,
    /// The interpreter object (executable or shared library) as the process maps it.
    pub object: String,
    /// `walked` (its frames are in the stacks), `pending` (not ready when last looked at), or
    /// `unsupported`.
    pub frames: &'static str,
    /// Why frames are missing, when they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// Runtime-specific facts (Python: what happens to its object allocator).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, String>,
    /// Its heap's pages are counted as they are first touched (pymalloc arenas of an optimised
    /// build): the page-fault tracepoint is needed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub heap_pages: bool,
}

/// Names runtime frames (implemented by [`Runtimes`]; the symbolizer knows only this).
pub trait RuntimeFrames {
    /// The frames (usually one) a runtime frame of `pid` stands for: its first slot and second
    /// slot as the kernel recorded them.
    fn frames(&mut self, pid: u32, slot: u64, detail: u64) -> Vec<Frame>;
}

/// No runtimes (tests): runtime frames are named by their slots.
pub struct NoRuntimes;

impl RuntimeFrames for NoRuntimes {
    fn frames(&mut self, _pid: u32, slot: u64, _detail: u64) -> Vec<Frame> {
        vec![unnamed(slot)]
    }
}

/// The frame shown for a runtime frame nobody could name.
pub fn unnamed(slot: u64) -> Frame {
    Frame {
        function: format!("[runtime frame {slot:#x}]"),
        file: None,
        line: None,
        module: "[runtime]".into(),
        offset: slot,
        inlined: false,
    }
}

/// How long to keep retrying a process whose runtime is not ready, and how often.
const RETRY_EVERY: Duration = Duration::from_millis(500);
const RETRY_FOR: Duration = Duration::from_secs(120);

/// Every room, and which process each one walks.
pub struct Runtimes {
    /// Set when runtimes are off (and why), e.g. no BTF for the thread pointer.
    disabled: Option<String>,
    /// Set when Python's room is off (and why); Node's may still be on.
    python_off: Option<String>,
    /// Set when Node's room is off (and why).
    node_off: Option<String>,
    python: python::Python,
    v8: v8::V8,
    status: BTreeMap<u32, RuntimeProcess>,
    /// Processes to look at again: (next try, first try).
    pending: HashMap<u32, (Instant, Instant)>,
    /// Processes seen unready, with the reason, for the summary.
    pending_why: HashMap<u32, String>,
}

/// Which rooms are on.
#[derive(Clone, Debug, Default)]
pub struct RuntimeChoice {
    /// Every room off (why), e.g. frame-pointer stacks.
    pub all_off: Option<String>,
    /// Python's room off (why).
    pub python_off: Option<String>,
    /// Node's room off (why).
    pub node_off: Option<String>,
    /// Probe runtimes' object allocators where they can be (Python's pymalloc).
    pub objects: bool,
}

impl Runtimes {
    pub fn new(choice: RuntimeChoice) -> Runtimes {
        if let Some(why) = &choice.all_off {
            info!("runtime frames (Python, Node) are off: {why}");
        } else {
            if let Some(why) = &choice.python_off {
                info!("Python frames are off: {why}");
            }
            if let Some(why) = &choice.node_off {
                info!("Node (V8) frames are off: {why}");
            }
        }
        Runtimes {
            disabled: choice.all_off,
            python_off: choice.python_off,
            node_off: choice.node_off,
            python: python::Python::new(choice.objects),
            v8: v8::V8::default(),
            status: BTreeMap::new(),
            pending: HashMap::new(),
            pending_why: HashMap::new(),
        }
    }

    /// Looks at a process (adopted, exec'd, new code mapped); returns the probes to attach.
    /// `fresh`: a new image (adopted, or after execve): look again even at a process already
    /// walked.
    pub fn observe(&mut self, bpf: &mut Ebpf, pid: u32, fresh: bool) -> Vec<RuntimeProbe> {
        if self.disabled.is_some() {
            return Vec::new();
        }
        let mut observed = Observed::No;
        let mut kind = RUNTIME_PYTHON;
        if self.python_off.is_none() {
            observed = self.python.observe(bpf, pid, fresh);
        }
        if matches!(observed, Observed::No) && self.node_off.is_none() {
            observed = self.v8.observe(bpf, pid, fresh);
            kind = RUNTIME_V8;
        }
        let name = if kind == RUNTIME_V8 { "Node (V8)" } else { "Python" };
        if !matches!(observed, Observed::Walked { .. }) {
            // Nothing of an earlier image may stay for the walker.
            remove_ranges(bpf, pid);
            self.python.forget(bpf, pid);
            self.v8.forget(bpf, pid);
            if !matches!(observed, Observed::Unsupported(_)) {
                self.status.remove(&pid);
            }
        } else if kind == RUNTIME_V8 {
            self.python.forget(bpf, pid);
        } else {
            self.v8.forget(bpf, pid);
        }
        match observed {
            Observed::No => {
                self.pending.remove(&pid);
                Vec::new()
            }
            Observed::Later(why) => {
                let now = Instant::now();
                let first = self.pending.get(&pid).map_or(now, |p| p.1);
                if now.duration_since(first) > RETRY_FOR {
                    self.pending.remove(&pid);
                    warn!("pid {pid}: {name} frames missing: {why} (gave up after {}s)", RETRY_FOR.as_secs());
                    self.pending_why.insert(pid, why);
                } else {
                    debug!("pid {pid}: {name} not ready ({why}); trying again");
                    self.pending.insert(pid, (now + RETRY_EVERY, first));
                    self.pending_why.insert(pid, why);
                }
                Vec::new()
            }
            Observed::Walked { ranges, probes, status } => {
                self.pending.remove(&pid);
                self.pending_why.remove(&pid);
                if let Err(err) = load_ranges(bpf, pid, kind, &ranges) {
                    warn!("pid {pid}: {name} frames missing: cannot load its code ranges: {err}");
                    return Vec::new();
                }
                if self.status.get(&pid) != Some(&status) {
                    match status.details.get("object_allocator") {
                        Some(alloc) => info!(
                            "pid {pid}: {name} {} ({}): {name} frames on; object allocator: {alloc}",
                            status.version, status.object
                        ),
                        None => info!("pid {pid}: {name} {} ({}): {name} frames on", status.version, status.object),
                    }
                }
                self.status.insert(pid, status);
                probes
            }
            Observed::Unsupported(status) => {
                self.pending.remove(&pid);
                self.pending_why.remove(&pid);
                if self.status.get(&pid) != Some(&status) {
                    warn!(
                        "pid {pid}: {name} frames missing: {} ({}): {}",
                        status.version,
                        status.object,
                        status.why.as_deref().unwrap_or("")
                    );
                }
                self.status.insert(pid, status);
                Vec::new()
            }
        }
    }

    /// Heap ranges (pid, start, end) found in processes observed since the last call, whose
    /// pages are counted as touched from then on (a mapping recorded for one before must go:
    /// its bytes are counted by page).
    pub fn take_found_heaps(&mut self) -> Vec<(u32, u64, u64)> {
        self.python.take_found_arenas()
    }

    /// Page faults cannot be followed: heaps are counted as mappings again.
    pub fn no_heap_pages(&mut self, bpf: &mut Ebpf) {
        self.python.no_heap_pages(bpf);
        for s in self.status.values_mut() {
            s.heap_pages = false;
        }
    }

    /// Whether a mapping `[addr, addr+len)` of `pid` is a heap whose pages are counted (a
    /// mapping event drained after the kernel began counting it by page).
    pub fn is_paged_heap(&self, bpf: &Ebpf, pid: u32, addr: u64, len: u64) -> bool {
        self.python.is_registered_arena(bpf, pid, addr, len)
    }

    /// Whether a walked process counts heap pages as they are touched (see
    /// [`RuntimeProcess::heap_pages`]).
    pub fn heap_pages(&self) -> bool {
        self.status.values().any(|s| s.heap_pages)
    }

    /// Looks again at processes whose runtime was not ready; returns the probes to attach.
    pub fn poll(&mut self, bpf: &mut Ebpf) -> Vec<RuntimeProbe> {
        let now = Instant::now();
        let due: Vec<u32> = self.pending.iter().filter(|(_, (t, _))| *t <= now).map(|(p, _)| *p).collect();
        due.into_iter().flat_map(|pid| self.observe(bpf, pid, true)).collect()
    }

    /// The process exited: its kernel entries go; what was learned from it stays (its stacks
    /// are still to be named).
    pub fn forget(&mut self, bpf: &mut Ebpf, pid: u32) {
        self.pending.remove(&pid);
        remove_ranges(bpf, pid);
        self.python.forget(bpf, pid);
        self.v8.forget(bpf, pid);
    }

    /// Names the runtime frames of a new stack of `pid` now, while its memory is readable.
    pub fn prefetch(&mut self, pid: u32, ips: &[u64]) {
        let mut i = 0;
        while i + 1 < ips.len() {
            if slot_kind(ips[i]).is_some() {
                let _ = self.frames(pid, ips[i], ips[i + 1]);
                i += 2;
            } else {
                i += 1;
            }
        }
    }

    /// Every process with a runtime, for `summary.json`.
    pub fn report(&self) -> Vec<RuntimeProcess> {
        let mut out: Vec<RuntimeProcess> = self.status.values().cloned().collect();
        for (pid, why) in &self.pending_why {
            if !self.status.contains_key(pid) {
                out.push(RuntimeProcess {
                    pid: *pid,
                    runtime: "python",
                    frames: "pending",
                    why: Some(why.clone()),
                    ..Default::default()
                });
            }
        }
        out.sort_by_key(|r| r.pid);
        out
    }

    /// A frame to add at the leaf of a stack (`stack`: its addresses, leaf first; `frames`: named,
    /// outermost first) that a runtime recognises as its own heap: CPython's pymalloc arenas,
    /// when its objects are not tracked one by one; the pages V8 maps for its heap.
    pub fn heap_frame(&self, pid: u32, stack: &[u64], frames: &[Frame]) -> Option<Frame> {
        self.python.arena_frame(pid, stack).or_else(|| self.v8.heap_frame(pid, frames))
    }

    /// Frames that could not be named, by reason (for `summary.json`).
    pub fn unresolved(&self) -> BTreeMap<String, u64> {
        let mut out = self.python.unresolved();
        for (why, n) in self.v8.unresolved() {
            *out.entry(format!("js_{why}")).or_default() += n;
        }
        out
    }

    /// JS frames named, by tier, and inlined JS frames expanded (for `summary.json`).
    pub fn js_tiers(&self) -> (BTreeMap<&'static str, u64>, u64) {
        self.v8.tiers()
    }
}

impl RuntimeFrames for Runtimes {
    fn frames(&mut self, pid: u32, slot: u64, detail: u64) -> Vec<Frame> {
        match slot_kind(slot) {
            Some(RUNTIME_PYTHON) => vec![self.python.frame(pid, slot, detail)],
            Some(RUNTIME_V8) => self.v8.frames(pid, slot, detail),
            _ => vec![unnamed(slot)],
        }
    }
}

/// Takes `pid`'s runtime code ranges back from the walker.
fn remove_ranges(bpf: &mut Ebpf, pid: u32) {
    if let Some(Ok(mut m)) = bpf.map_mut("PROC_RUNTIMES").map(BpfHashMap::<_, u32, ProcRuntime>::try_from) {
        let _ = m.remove(&pid);
    }
}

/// Hands the walker `pid`'s runtime code ranges.
fn load_ranges(bpf: &mut Ebpf, pid: u32, kind: u32, ranges: &[(u64, u64)]) -> Result<(), String> {
    let mut value = ProcRuntime { kind, count: 0, ranges: [RuntimeRange::default(); MAX_RUNTIME_RANGES] };
    for (i, &(start, end)) in ranges.iter().take(MAX_RUNTIME_RANGES).enumerate() {
        value.ranges[i] = RuntimeRange { start, end };
        value.count = i as u32 + 1;
    }
    let mut m = bpf
        .map_mut("PROC_RUNTIMES")
        .map(BpfHashMap::<_, u32, ProcRuntime>::try_from)
        .ok_or("BPF map PROC_RUNTIMES is missing")?
        .map_err(|e| e.to_string())?;
    m.insert(pid, value, 0).map_err(|e| e.to_string())
}

/// The offset of `thread.fsbase` in the kernel's `task_struct`, from its BTF
/// (`/sys/kernel/btf/vmlinux`): where the kernel side finds a thread's user thread pointer.
pub fn task_fsbase_offset() -> Result<u64, String> {
    use btf_rs::{Btf, Type};
    let btf = Btf::from_file("/sys/kernel/btf/vmlinux").map_err(|e| format!("no kernel BTF: {e}"))?;
    let member_offset = |ty: &Type, name: &str| -> Option<(u32, Type)> {
        let Type::Struct(s) = ty else { return None };
        s.members.iter().find_map(|m| {
            (btf.resolve_name(m).ok()? == name).then(|| Some((m.bit_offset(), btf.resolve_chained_type(m).ok()?)))?
        })
    };
    for task in btf.resolve_types_by_name("task_struct").map_err(|e| e.to_string())? {
        let Some((thread_bits, thread)) = member_offset(&task, "thread") else { continue };
        let Some((fs_bits, _)) = member_offset(&thread, "fsbase") else { continue };
        if thread_bits % 8 == 0 && fs_bits % 8 == 0 {
            return Ok(u64::from(thread_bits / 8 + fs_bits / 8));
        }
    }
    Err("the kernel's BTF has no task_struct.thread.fsbase".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsbase_offset_from_btf() {
        // This machine's kernel has BTF (memprof's CFI walker and tracepoints rely on it too).
        let off = task_fsbase_offset().unwrap();
        assert!(off > 1000 && off < 20000 && off % 8 == 0, "{off}");
    }
}
