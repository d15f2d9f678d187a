//! CPython's room (see ARCHITECTURE.md, "Python"): finding the interpreter in a process
//! ([`process`]), loading what its kernel-side walker needs (`PY_PROCS`), probing its object
//! allocator ([`pymalloc`]), and naming the frames the walker records ([`frames`]).

pub mod arenas;
pub mod code;
pub mod elf;
pub mod frames;
pub mod layout;
pub mod linetable;
pub mod process;
pub mod pymalloc;
pub mod tss;

use std::collections::{BTreeMap, HashMap};

use aya::{Ebpf, maps::HashMap as BpfHashMap};
use memprof_common::python::{PY_ARENA_GRANULE_SHIFT, PY_ARENA_MAX_GRANULES, PyArena, PyArenaKey, PyProc};

pub use process::load_bias;
use process::{ElfCache, Inspection};
use pymalloc::{ObjectAllocator, Role};

use super::{Observed, RuntimeProbe, RuntimeProcess};
use crate::{report::Frame, target::maps};

/// The module name of Python frames.
pub const PYTHON_MODULE: &str = "[python]";

/// CPython in every process memprof follows.
#[derive(Default)]
pub struct Python {
    /// Probe the object allocator where the build allows it (not `--no-python-objects`).
    objects: bool,
    elf: ElfCache,
    /// Processes walked (kept after they exit: their frames are named from what was read).
    procs: HashMap<u32, frames::PyProcess>,
    /// Frames named from processes that exited meanwhile, by (interpreter object, code address,
    /// co_firstlineno): a forked worker's code objects were read in its parent or a sibling.
    shared: frames::SharedCodes,
    /// Arenas found in processes as they were observed, not yet taken (see `arenas.rs`).
    found_arenas: Vec<(u32, u64, u64)>,
    /// Page faults cannot be followed: arenas are not counted page by page.
    no_heap_pages: bool,
}

impl Python {
    pub fn new(objects: bool) -> Python {
        Python { objects, ..Default::default() }
    }

    /// Looks for CPython in `pid` and, when found and checked, loads its walker data. A process
    /// already walked is not looked at again unless `fresh` (a new image), as long as it still
    /// maps the same interpreter at the same place (new code mapped is an extension module).
    pub fn observe(&mut self, bpf: &mut Ebpf, pid: u32, fresh: bool) -> Observed {
        let Ok(entries) = maps::read_maps(pid) else { return Observed::No };
        if !fresh {
            if let Some(p) = self.procs.get(&pid).filter(|p| p.alive) {
                if let Some(again) = p.still_walked(&entries) {
                    return again;
                }
            }
        }
        match process::inspect(pid, &entries, &mut self.elf) {
            Inspection::NotPython => {
                if let Some(p) = self.procs.get_mut(&pid) {
                    p.alive = false;
                }
                Observed::No
            }
            Inspection::Later(why) => Observed::Later(why),
            Inspection::Unsupported { object, version, why } => Observed::Unsupported(RuntimeProcess {
                pid,
                runtime: "python",
                version,
                object,
                frames: "unsupported",
                why: Some(why),
                details: BTreeMap::new(),
                heap_pages: false,
            }),
            Inspection::Ready(mut found) => {
                if !self.objects && matches!(found.allocator, ObjectAllocator::Probe(_)) {
                    found.allocator = ObjectAllocator::NotProbed("--no-python-objects".into());
                }
                // Objects not tracked one by one: their arenas are counted page by page (unless
                // page faults cannot be followed).
                let heap_pages = !self.no_heap_pages
                    && matches!(found.allocator, ObjectAllocator::NotProbed(_))
                    && found.arena_alloc.is_some();
                let geometry = arenas::geometry(found.layout.minor);
                if let (true, Some((start, end))) = (heap_pages, found.arena_alloc) {
                    found.proc.arena_start = start;
                    found.proc.arena_end = end;
                    found.proc.arena_len = geometry.arena;
                }
                if fresh && self.procs.get(&pid).is_some_and(|p| p.heap_pages()) {
                    // A new image: the old one's arenas went with it.
                    forget_arenas(bpf, pid);
                }
                if let Err(err) = load_proc(bpf, pid, &found.proc) {
                    return Observed::Unsupported(RuntimeProcess {
                        pid,
                        runtime: "python",
                        version: found.version.clone(),
                        object: found.object.name.clone(),
                        frames: "unsupported",
                        why: Some(format!("cannot load its walker data: {err}")),
                        details: BTreeMap::new(),
                        heap_pages: false,
                    });
                }
                let mut details = BTreeMap::new();
                if heap_pages {
                    let mem = crate::runtime::mem::ProcMem::new(pid);
                    let existing = arenas::existing(&mem, pid, &entries, geometry);
                    let n = register_arenas(bpf, pid, &existing);
                    // One that went meanwhile must not stay registered (a later mapping there
                    // would be taken for it).
                    let gone: Vec<(u64, u64)> = existing.iter().copied().filter(|&(s, _)| !arenas::still_pool(&mem, s, geometry)).collect();
                    if !gone.is_empty() {
                        unregister_arenas(bpf, pid, &gone);
                    }
                    details.insert("small_objects".into(), format!("by the arena pages they first touch ({n} arenas already there)"));
                    self.found_arenas.extend(existing.into_iter().filter(|r| !gone.contains(r)).map(|(s, e)| (pid, s, e)));
                }
                let probes = match &found.allocator {
                    ObjectAllocator::Probe(fns) => {
                        details.insert("object_allocator".into(), format!("probed ({} functions)", fns.len()));
                        fns.iter()
                            .map(|&(role, addr)| RuntimeProbe {
                                pid,
                                addr,
                                function: match role {
                                    Role::Malloc => "PyObject_Malloc",
                                    Role::Calloc => "PyObject_Calloc",
                                    Role::Realloc => "PyObject_Realloc",
                                    Role::Free => "PyObject_Free",
                                }
                                .into(),
                                program: role.program(),
                                free_like: role == Role::Free,
                                size: found.object.function_size(addr.wrapping_sub(found.bias)),
                                args: role.args(),
                            })
                            .collect()
                    }
                    ObjectAllocator::NotProbed(why) => {
                        details.insert("object_allocator".into(), format!("not probed: {why}"));
                        Vec::new()
                    }
                };
                details.insert("eval_cold_part".into(), found.object.eval_cold.into());
                if !found.debug_offsets_changed.is_empty() {
                    details.insert("debug_offsets_changed".into(), found.debug_offsets_changed.join(", "));
                }
                let status = RuntimeProcess {
                    pid,
                    runtime: "python",
                    version: found.version.clone(),
                    object: found.object.name.clone(),
                    frames: "walked",
                    why: None,
                    details,
                    heap_pages,
                };
                let ranges = found.ranges.clone();
                let observed = Observed::Walked { ranges: ranges.clone(), probes: probes.clone(), status: status.clone() };
                self.procs.insert(pid, frames::PyProcess::new(pid, *found, (ranges, probes, status)));
                observed
            }
        }
    }

    /// The process exited: drop its kernel entry, keep what was read.
    pub fn forget(&mut self, bpf: &mut Ebpf, pid: u32) {
        if let Some(Ok(mut m)) = bpf.map_mut("PY_PROCS").map(BpfHashMap::<_, u32, PyProc>::try_from) {
            let _ = m.remove(&pid);
        }
        if self.procs.get(&pid).is_some_and(|p| p.heap_pages()) {
            forget_arenas(bpf, pid);
        }
        if let Some(p) = self.procs.get_mut(&pid) {
            p.alive = false;
        }
    }

    /// The arenas found in processes as they were observed since the last call, (pid, start,
    /// end): counted page by page from then on.
    pub fn take_found_arenas(&mut self) -> Vec<(u32, u64, u64)> {
        std::mem::take(&mut self.found_arenas)
    }

    /// Page faults cannot be followed: arenas are counted whole again (as mappings, under the
    /// arena frame), in every process.
    pub fn no_heap_pages(&mut self, bpf: &mut Ebpf) {
        self.no_heap_pages = true;
        self.found_arenas.clear();
        for (&pid, p) in self.procs.iter_mut().filter(|(_, p)| p.alive && p.heap_pages()) {
            p.drop_heap_pages();
            let _ = load_proc(bpf, pid, &p.proc());
            forget_arenas(bpf, pid);
        }
    }

    /// Whether `[addr, addr+len)` of `pid` overlaps an arena the kernel counts page by page
    /// (its mapping, recorded before the arena was registered, must not count as well).
    pub fn is_registered_arena(&self, bpf: &Ebpf, pid: u32, addr: u64, len: u64) -> bool {
        if !self.procs.get(&pid).is_some_and(|p| p.alive && p.heap_pages()) || len == 0 {
            return false;
        }
        let Some(Ok(m)) = bpf.map("PY_ARENAS").map(BpfHashMap::<_, PyArenaKey, PyArena>::try_from) else {
            return false;
        };
        let end = addr.saturating_add(len);
        let (first, last) = (addr >> PY_ARENA_GRANULE_SHIFT, (end - 1) >> PY_ARENA_GRANULE_SHIFT);
        (first..=last.min(first + PY_ARENA_MAX_GRANULES)).any(|granule| {
            m.get(&PyArenaKey { tgid: pid, _pad: 0, granule }, 0)
                .is_ok_and(|a| a.ranges.iter().any(|r| r[1] != 0 && r[0] < end && addr < r[1]))
        })
    }

    /// Names one Python frame of `pid`.
    pub fn frame(&mut self, pid: u32, slot: u64, detail: u64) -> Frame {
        frames::frame(&mut self.procs, &mut self.shared, pid, slot, detail)
    }

    /// The leaf frame of a stack that allocated a pymalloc arena, when objects are counted
    /// by arena (see [`frames::ARENA_FRAME`]).
    pub fn arena_frame(&self, pid: u32, stack: &[u64]) -> Option<Frame> {
        self.procs.get(&pid)?.arena_frame(stack)
    }

    /// Frames that could not be named, by reason.
    pub fn unresolved(&self) -> BTreeMap<String, u64> {
        self.shared.unresolved.clone()
    }
}

/// Drops the arenas the kernel registered for `pid` (see `memprof-ebpf/src/python/arenas.rs`).
fn forget_arenas(bpf: &mut Ebpf, pid: u32) {
    let Some(Ok(mut m)) = bpf.map_mut("PY_ARENAS").map(BpfHashMap::<_, PyArenaKey, PyArena>::try_from) else {
        return;
    };
    let keys: Vec<PyArenaKey> = m.keys().filter_map(Result::ok).filter(|k| k.tgid == pid).collect();
    for k in keys {
        let _ = m.remove(&k);
    }
}

/// Registers arenas found in the process for the kernel to count page by page; returns how
/// many.
fn register_arenas(bpf: &mut Ebpf, pid: u32, found: &[(u64, u64)]) -> usize {
    let Some(Ok(mut m)) = bpf.map_mut("PY_ARENAS").map(BpfHashMap::<_, PyArenaKey, PyArena>::try_from) else {
        return 0;
    };
    let entries = arenas::entries(pid, found, |k| m.get(k, 0).ok());
    let mut failed = 0;
    for (k, v) in entries {
        if m.insert(k, v, 0).is_err() {
            failed += 1;
        }
    }
    if failed > 0 {
        log::warn!("pid {pid}: {failed} arena granules not registered (map full): their pages are not counted");
    }
    found.len()
}

/// Takes back arenas registered for `pid`.
fn unregister_arenas(bpf: &mut Ebpf, pid: u32, gone: &[(u64, u64)]) {
    let Some(Ok(mut m)) = bpf.map_mut("PY_ARENAS").map(BpfHashMap::<_, PyArenaKey, PyArena>::try_from) else {
        return;
    };
    for &(start, end) in gone {
        for granule in (start >> PY_ARENA_GRANULE_SHIFT)..=((end - 1) >> PY_ARENA_GRANULE_SHIFT) {
            let k = PyArenaKey { tgid: pid, _pad: 0, granule };
            if let Ok(mut v) = m.get(&k, 0) {
                v.remove(start, end);
                let _ = if v.is_empty() { m.remove(&k) } else { m.insert(k, v, 0) };
            }
        }
    }
}

fn load_proc(bpf: &mut Ebpf, pid: u32, proc: &PyProc) -> Result<(), String> {
    let mut m = bpf
        .map_mut("PY_PROCS")
        .map(BpfHashMap::<_, u32, PyProc>::try_from)
        .ok_or("BPF map PY_PROCS is missing")?
        .map_err(|e| e.to_string())?;
    m.insert(pid, *proc, 0).map_err(|e| e.to_string())
}
