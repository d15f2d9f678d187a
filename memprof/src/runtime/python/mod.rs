//! CPython's room (see ARCHITECTURE.md, "Python"): finding the interpreter in a process
//! ([`process`]), loading what its kernel-side walker needs (`PY_PROCS`), probing its object
//! allocator ([`pymalloc`]), and naming the frames the walker records ([`frames`]).

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
use memprof_common::python::PyProc;

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
            }),
            Inspection::Ready(mut found) => {
                if !self.objects && matches!(found.allocator, ObjectAllocator::Probe(_)) {
                    found.allocator = ObjectAllocator::NotProbed("--no-python-objects".into());
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
                    });
                }
                let mut details = BTreeMap::new();
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
        if let Some(p) = self.procs.get_mut(&pid) {
            p.alive = false;
        }
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

fn load_proc(bpf: &mut Ebpf, pid: u32, proc: &PyProc) -> Result<(), String> {
    let mut m = bpf
        .map_mut("PY_PROCS")
        .map(BpfHashMap::<_, u32, PyProc>::try_from)
        .ok_or("BPF map PY_PROCS is missing")?
        .map_err(|e| e.to_string())?;
    m.insert(pid, *proc, 0).map_err(|e| e.to_string())
}
