//! Finding CPython in one process and what its kernel-side walker needs: the interpreter object
//! it maps, the version and layout, where its thread states are, the eval loop's code ranges,
//! and what to do with its object allocator. Every offset is checked against the process's own
//! memory before anything is loaded into the kernel.

use std::{collections::HashMap, sync::Arc};

use log::debug;
use memprof_common::python::{PY_NONE, PyProc};

use super::{
    elf::{PyElf, looks_like_python},
    layout::{Layout, SUPPORTED, debug_offsets, layout},
    pymalloc::{ObjectAllocator, object_allocator},
    tss::{self, TssError},
};
use crate::{
    runtime::mem::ProcMem,
    target::maps::{self, MapEntry},
};

/// (device major, device minor, inode) of an object.
pub type ObjectKey = (u32, u32, u64);

/// Parsed interpreter objects, by file (None: not an interpreter, or unreadable).
#[derive(Default)]
pub struct ElfCache {
    objects: HashMap<ObjectKey, Option<Arc<PyElf>>>,
}

impl ElfCache {
    fn get(&mut self, pid: u32, e: &MapEntry) -> Option<Arc<PyElf>> {
        let key = (e.dev_major, e.dev_minor, e.inode);
        self.objects
            .entry(key)
            .or_insert_with(|| {
                let name = e.path.clone().unwrap_or_default();
                match PyElf::read(&maps::map_files_path(pid, e), &name) {
                    Ok(found) => found.map(Arc::new),
                    Err(err) => {
                        debug!("{name}: {err}");
                        None
                    }
                }
            })
            .clone()
    }
}

/// CPython as found in one process.
#[derive(Clone, Debug)]
pub struct Found {
    pub object: Arc<PyElf>,
    pub object_key: ObjectKey,
    /// `pc - bias` is the object's link-time address.
    pub bias: u64,
    pub layout: Layout,
    /// "3.11.7" (from `Py_Version`) or "3.10".
    pub version: String,
    /// What the kernel-side walker is given.
    pub proc: PyProc,
    /// The eval loop's code, in the process.
    pub ranges: Vec<(u64, u64)>,
    pub allocator: ObjectAllocator,
    /// pymalloc's arena allocator function, in the process (see `pymalloc::arena_allocator`).
    pub arena_alloc: Option<(u64, u64)>,
    /// Type objects, in the process (validating code objects and strings).
    pub types: super::code::TypeAddrs,
    /// Layout fields `_Py_DebugOffsets` changed (3.13+).
    pub debug_offsets_changed: Vec<String>,
}

/// The outcome of looking at a process.
#[derive(Debug)]
pub enum Inspection {
    /// No interpreter object mapped.
    NotPython,
    /// An interpreter not ready yet (starting up): look again later.
    Later(String),
    /// Found and checked.
    Ready(Box<Found>),
    /// An interpreter whose frames memprof cannot walk, and why.
    Unsupported { object: String, version: String, why: String },
}

/// `pc - bias` = link-time address, for the mapping `e` of `elf`.
pub fn load_bias(elf: &PyElf, e: &MapEntry) -> Option<u64> {
    e.load_bias(elf.segments.iter().map(|&(off, vaddr, size, _)| (off, vaddr, size)))
}

/// Looks for CPython in process `pid` and checks what its walker needs.
pub fn inspect(pid: u32, entries: &[MapEntry], cache: &mut ElfCache) -> Inspection {
    let mut seen = Vec::new();
    let mut found: Option<(Arc<PyElf>, MapEntry)> = None;
    let exe_inode = crate::target::procs::exe_inode(pid);
    for e in entries.iter().filter(|e| e.is_exec() && e.is_file_backed()) {
        let key = (e.dev_major, e.dev_minor, e.inode);
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        // Interpreters by name first (cheap), then the executable (a static build under any
        // name, e.g. `uwsgi` or a PyInstaller binary).
        let name = e.path.as_deref().unwrap_or("");
        let is_exe = exe_inode == Some(e.inode);
        if !looks_like_python(name) && !is_exe {
            continue;
        }
        if let Some(elf) = cache.get(pid, e) {
            found = Some((elf, e.clone()));
            break;
        }
    }
    let Some((elf, entry)) = found else { return Inspection::NotPython };
    let object = elf.name.clone();
    let Some((major, minor)) = elf.version else {
        return Inspection::Unsupported {
            object,
            version: "?".into(),
            why: "its version is unknown (no Py_Version, no version in its file name)".into(),
        };
    };
    let version = match elf.version_hex {
        Some(h) => format!("{}.{}.{}", h >> 24, (h >> 16) & 0xff, (h >> 8) & 0xff),
        None => format!("{major}.{minor}"),
    };
    let unsupported = |why: String| Inspection::Unsupported { object: object.clone(), version: version.clone(), why };
    if major != 3 || !SUPPORTED.contains(&minor) {
        return unsupported(format!("CPython {version} is not a version memprof walks (3.9 to 3.14)"));
    }
    let Some(mut layout) = layout(minor) else {
        return unsupported(format!("no layout for CPython {version}"));
    };
    let Some(bias) = load_bias(&elf, &entry) else {
        return unsupported("its load address is unknown".into());
    };
    let mem = ProcMem::new(pid);
    let sym = |n: &str| elf.symbols.get(n).map(|s| s.addr.wrapping_add(bias));
    let Some(runtime) = sym("_PyRuntime") else {
        return unsupported("_PyRuntime is not defined".into());
    };
    let mut changed = Vec::new();
    if minor >= 13 {
        // _Py_DebugOffsets: the process's own offsets (it is initialized data: readable from
        // the start).
        let Some(raw) = mem.bytes(runtime, debug_offsets::READ) else {
            return Inspection::Later("_PyRuntime is unreadable".into());
        };
        if &raw[..8] != debug_offsets::COOKIE {
            return unsupported("_PyRuntime does not start with _Py_DebugOffsets".into());
        }
        let words: Vec<u64> = raw.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
        match layout.apply_debug_offsets(&words) {
            Ok(c) => changed = c,
            Err(why) => return unsupported(why),
        }
    }
    if let Err(why) = layout.check() {
        return unsupported(why);
    }
    let threads = match tss::thread_states(&mem, &layout, runtime) {
        Ok(t) => t,
        Err(TssError::NotReady) => return Inspection::Later("the interpreter is not initialized yet".into()),
        Err(e) => return unsupported(e.to_string()),
    };
    let key = tss::key_candidates(&elf, bias, &mem, &layout).into_iter().find_map(|a| tss::read_key(&mem, a));
    let Some(key) = key else {
        return unsupported("the pthread key of its thread states was not found".into());
    };
    let slot = match tss::find_slot(&mem, key, &threads) {
        Ok(s) => s,
        Err(e) => return unsupported(e.to_string()),
    };
    let (Some(code_t), Some(str_t), Some(bytes_t)) = (sym("PyCode_Type"), sym("PyUnicode_Type"), sym("PyBytes_Type")) else {
        return unsupported("PyCode_Type, PyUnicode_Type or PyBytes_Type is not defined".into());
    };
    // The main thread's newest frame must be readable where the layout says (a cheap check of
    // the thread-state offsets; a thread may have no frame at this moment).
    if let Some(&(ts, _)) = threads.states.first() {
        if mem.u64(ts.wrapping_add(layout.ts_frame)).is_none() {
            return unsupported("its thread state is unreadable where the layout says".into());
        }
    }
    let off = |v: Option<u64>| v.map_or(PY_NONE, |v| v as u32);
    let proc = PyProc {
        walk: layout.walk,
        lasti: layout.lasti,
        tss_mode: slot.mode,
        version: (major << 8) | minor,
        tss_a: slot.a,
        tss_b: slot.b,
        tstate_frame: layout.ts_frame as u32,
        cframe_current: off(layout.cframe_current),
        cframe_previous: off(layout.cframe_previous),
        frame_code: layout.frame_code as u32,
        frame_back: layout.frame_back as u32,
        frame_instr: layout.frame_instr as u32,
        frame_entry: off(layout.frame_entry),
        frame_read: layout.frame_read,
        entry_value: layout.entry_value.map_or(PY_NONE, u32::from),
        code_name: layout.co_qualname.unwrap_or(layout.co_name) as u32,
        code_adaptive: off(layout.co_code_adaptive),
        code_firstlineno: layout.co_firstlineno as u32,
        code_mask: layout.code_mask,
        arena_start: 0,
        arena_end: 0,
        arena_len: 0,
    };
    let ranges = elf.eval.iter().map(|&(s, e)| (s.wrapping_add(bias), e.wrapping_add(bias))).collect();
    let allocator = object_allocator(&elf, bias, &mem);
    let arena_alloc = super::pymalloc::arena_allocator(&elf, bias, &mem);
    Inspection::Ready(Box::new(Found {
        object_key: (entry.dev_major, entry.dev_minor, entry.inode),
        bias,
        version,
        proc,
        ranges,
        allocator,
        arena_alloc,
        types: super::code::TypeAddrs { code: code_t, unicode: str_t, bytes: bytes_t },
        debug_offsets_changed: changed,
        layout,
        object: elf,
    }))
}
