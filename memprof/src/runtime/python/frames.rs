//! Naming the Python frames the kernel recorded: (code object address, instruction offset,
//! `co_firstlineno`, name tag) → `qualname (file:line)`.
//!
//! Code objects are read from the process's memory ([`super::code`]) and cached by address,
//! checked against the `co_firstlineno` and the tag of the `co_qualname` pointer the kernel saw:
//! a code object can be freed and its address reused by another, and recorded values that differ
//! from the cached ones mean exactly that (the object is then read again; what the old one
//! was stays in [`SharedCodes`], so older stacks keep their names). What was read stays after the
//! process exits (a pid is never read once its process is gone); a worker forked without exec
//! shares its parent's code objects, so a frame of a worker that exited before it could be read
//! is named from its parent's or a sibling's reads when the interpreter file, address,
//! `co_firstlineno` and tag all match.
use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use memprof_common::{
    python::{PY_NO_CHECK, py_frame_detail_parts},
    runtime::slot_payload,
};

use super::{
    PYTHON_MODULE,
    code::{self, CodeInfo, TypeAddrs},
    process::{Found, ObjectKey},
};
use crate::{
    report::Frame,
    runtime::{Observed, RuntimeProbe, RuntimeProcess, mem::ProcMem},
    target::maps::MapEntry,
};

/// One process's interpreter and the code objects read from it.
pub struct PyProcess {
    pub alive: bool,
    found: Found,
    mem: ProcMem,
    /// By address: what was read there last, or why it could not be read.
    codes: HashMap<u64, Result<Arc<CodeInfo>, String>>,
    /// What observing it gave (code ranges, probes, status), given again while it maps the
    /// same interpreter.
    observed: (Vec<(u64, u64)>, Vec<RuntimeProbe>, RuntimeProcess),
}

impl PyProcess {
    pub fn new(pid: u32, found: Found, observed: (Vec<(u64, u64)>, Vec<RuntimeProbe>, RuntimeProcess)) -> PyProcess {
        PyProcess { alive: true, found, mem: ProcMem::new(pid), codes: HashMap::new(), observed }
    }

    /// Whether the kernel counts its arenas page by page.
    pub fn heap_pages(&self) -> bool {
        self.found.proc.arena_end != 0
    }

    /// Its arenas are counted whole again (page faults cannot be followed).
    pub fn drop_heap_pages(&mut self) {
        self.found.proc.arena_start = 0;
        self.found.proc.arena_end = 0;
        self.found.proc.arena_len = 0;
        self.observed.2.heap_pages = false;
    }

    /// What the kernel-side walker holds for it.
    pub fn proc(&self) -> memprof_common::python::PyProc {
        self.found.proc
    }

    /// The earlier observation, if the process still maps the same interpreter file at the same
    /// address.
    pub fn still_walked(&self, entries: &[MapEntry]) -> Option<Observed> {
        let same = entries.iter().any(|e| {
            e.is_exec()
                && (e.dev_major, e.dev_minor, e.inode) == self.found.object_key
                && super::load_bias(&self.found.object, e) == Some(self.found.bias)
        });
        let (ranges, probes, status) = self.observed.clone();
        same.then_some(Observed::Walked { ranges, probes, status })
    }

    fn types(&self) -> TypeAddrs {
        self.found.types
    }
}

/// The leaf frame added to stacks that end in an `mmap` by pymalloc's arena allocator, when
/// Python's objects are not tracked one by one (an optimised build inlines pymalloc) and the
/// arena could not be counted page by page (the kernel's arena map was full): those bytes are
/// Python objects, whose own allocation sites are not visible — the Python frames above are
/// only the code that happened to need a new arena.
pub const ARENA_FRAME: &str = "[python objects in a pymalloc arena]";

impl PyProcess {
    /// The frame naming an arena stack (`stack` leaf first: the mmap wrapper, its caller...).
    pub fn arena_frame(&self, stack: &[u64]) -> Option<Frame> {
        let (start, end) = self.found.arena_alloc?;
        // Counted page by page, arenas never reach here as mappings (but for those the kernel
        // could not register, counted in `python_arenas_unregistered`); the same allocator's
        // other mappings (threads' frame-stack chunks) are not objects.
        if self.heap_pages() || !matches!(self.found.allocator, super::pymalloc::ObjectAllocator::NotProbed(_)) {
            return None;
        }
        let caller = stack.get(1)?.wrapping_sub(1);
        (start <= caller && caller < end).then(|| Frame {
            function: ARENA_FRAME.into(),
            file: None,
            line: None,
            module: PYTHON_MODULE.into(),
            offset: start,
            inlined: false,
        })
    }
}

/// Code objects by (interpreter file, address, co_firstlineno, name tag), from every process; and the
/// frames that could not be named, by reason.
#[derive(Default)]
pub struct SharedCodes {
    by_key: HashMap<(ObjectKey, u64, u32, u32), Arc<CodeInfo>>,
    pub unresolved: BTreeMap<String, u64>,
}

/// The frame for a Python frame of `pid`.
pub fn frame(
    procs: &mut HashMap<u32, PyProcess>,
    shared: &mut SharedCodes,
    pid: u32,
    slot: u64,
    detail: u64,
) -> Frame {
    let addr = slot_payload(slot);
    let (units, tag, check) = py_frame_detail_parts(detail);
    match code_info(procs, shared, pid, addr, tag, check) {
        Ok(ci) => Frame {
            function: ci.qualname.clone(),
            file: Some(ci.filename.clone()),
            line: ci.line(units),
            module: PYTHON_MODULE.into(),
            offset: addr,
            inlined: false,
        },
        Err(why) => {
            *shared.unresolved.entry(why).or_default() += 1;
            Frame {
                function: format!("<python code {addr:#x}>"),
                file: None,
                line: None,
                module: PYTHON_MODULE.into(),
                offset: addr,
                inlined: false,
            }
        }
    }
}

/// The code object at `addr` in `pid` whose `co_firstlineno` is `check` and whose name pointer
/// has tag `tag` (any, if `check` is `PY_NO_CHECK`).
fn code_info(
    procs: &mut HashMap<u32, PyProcess>,
    shared: &mut SharedCodes,
    pid: u32,
    addr: u64,
    tag: u32,
    check: u32,
) -> Result<Arc<CodeInfo>, String> {
    let Some(p) = procs.get_mut(&pid) else {
        return Err("not_a_walked_process".into());
    };
    let matches = |ci: &CodeInfo| check == PY_NO_CHECK || (ci.firstlineno == check && ci.name_tag == tag);
    if let Some(Ok(ci)) = p.codes.get(&addr) {
        if matches(ci) {
            return Ok(ci.clone());
        }
    }
    // Read before, by this process or another of the same interpreter (a forked worker's
    // parent), when it had this `co_firstlineno`.
    let key = p.found.object_key;
    if check != PY_NO_CHECK {
        if let Some(ci) = shared.by_key.get(&(key, addr, check, tag)) {
            return Ok(ci.clone());
        }
    }
    if !p.alive {
        // Never read from a pid that may now be another process.
        return Err(match p.codes.get(&addr) {
            Some(Err(why)) => why.clone(),
            _ => "process_exited".into(),
        });
    }
    let read = code::read_code(&p.mem, &p.found.layout, &p.types(), addr, check).map_err(|e| reason(&e));
    match read.and_then(|ci| if matches(&ci) { Ok(ci) } else { Err("stale".into()) }) {
        Ok(ci) => {
            let ci = Arc::new(ci);
            p.codes.insert(addr, Ok(ci.clone()));
            shared.by_key.insert((key, addr, ci.firstlineno, ci.name_tag), ci.clone());
            Ok(ci)
        }
        Err(why) => {
            // A name read earlier stays (its stacks are still named from `shared`).
            if !matches!(p.codes.get(&addr), Some(Ok(_))) {
                p.codes.insert(addr, Err(why.clone()));
            }
            Err(why)
        }
    }
}

/// A short, stable name for why a code object could not be read (a `summary.json` key).
fn reason(e: &code::CodeError) -> String {
    let s = format!("{e:?}");
    let word: String = s.chars().take_while(|c| c.is_alphanumeric()).collect();
    let mut out = String::new();
    for (i, c) in word.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}
