//! The hand-off from the native walker to runtime walkers, by program-counter range (see
//! `memprof_common::runtime`). The native walker calls [`begin`] once per stack, [`at_frame`]
//! for each native frame and [`end`] when it stops; everything runtime-specific lives in the
//! runtime's own room ([`crate::python`], [`crate::v8`]).

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::{bpf_get_current_task_btf, bpf_probe_read_kernel},
    macros::map,
    maps::HashMap,
};
use memprof_common::{
    runtime::{MAX_RUNTIME_RANGES, ProcRuntime, RUNTIME_PYTHON, RUNTIME_V8, RuntimeRange},
    unwind::UnwoundStack,
};

use crate::unwind::Walk;

/// Per process (tgid): the code ranges that hand off to a runtime walker.
#[map]
pub static PROC_RUNTIMES: HashMap<u32, ProcRuntime> =
    HashMap::with_max_entries(1 << 12, BPF_F_NO_PREALLOC);

/// Offset of `thread.fsbase` in the kernel's `task_struct` (from its BTF; 0: unknown). The
/// user thread pointer is where runtimes keep thread-local state.
#[unsafe(no_mangle)]
static TASK_FSBASE_OFFSET: u64 = 0;

/// The current thread's user thread pointer (x86-64 `%fs` base).
#[inline(always)]
pub fn thread_pointer() -> Option<u64> {
    let off = unsafe { core::ptr::read_volatile(&TASK_FSBASE_OFFSET) };
    if off == 0 {
        return None;
    }
    let task = unsafe { bpf_get_current_task_btf() } as u64;
    unsafe { bpf_probe_read_kernel((task + off) as *const u64) }.ok()
}

/// A runtime walk's state, kept in the native walk's state.
#[repr(C)]
pub struct RtWalk {
    /// `RUNTIME_*` of the process, 0: none.
    pub kind: u32,
    pub count: u32,
    pub ranges: [RuntimeRange; MAX_RUNTIME_RANGES],
    /// The runtime's cursors (Python: the next frame, and 3.11's next `_PyCFrame`).
    pub cursor: u64,
    pub cursor2: u64,
    /// The activation being walked: its native frame's stack pointer and CFA (the C stack it
    /// owns), where its walk started, and the stack length and hash before it (to take its
    /// frames back).
    pub act_sp: u64,
    pub act_cfa: u64,
    pub act_cursor: u64,
    pub act_len: u32,
    pub act_hash: u32,
    /// 0: not started; 1: started; 2: failed (later activations keep their native frames).
    pub state: u32,
    /// The current activation's outcome (runtime-specific).
    pub outcome: u32,
    /// Runtime-specific flags for the whole stack.
    pub outcome_flags: u32,
    /// Runtime frames recorded (some may have been taken back): the stack is announced to
    /// userspace, which names them while the process lives.
    pub frames: u32,
}

pub const RT_NOT_STARTED: u32 = 0;
pub const RT_STARTED: u32 = 1;
pub const RT_FAILED: u32 = 2;

impl RtWalk {
    pub const fn empty() -> RtWalk {
        RtWalk {
            kind: 0,
            count: 0,
            ranges: [RuntimeRange { start: 0, end: 0 }; MAX_RUNTIME_RANGES],
            cursor: 0,
            act_cursor: 0,
            cursor2: 0,
            act_sp: 0,
            act_cfa: 0,
            act_len: 0,
            act_hash: 0,
            state: RT_NOT_STARTED,
            outcome: 0,
            outcome_flags: 0,
            frames: 0,
        }
    }
}

/// The process's runtime ranges, if it has any.
#[inline(always)]
pub fn begin(tgid: u32, rt: &mut RtWalk) {
    if let Some(p) = unsafe { PROC_RUNTIMES.get(&tgid) } {
        rt.kind = p.kind;
        rt.count = p.count;
        rt.ranges = p.ranges;
    }
}

/// Whether `lookup` (a frame's pc, as looked up) lies in one of the runtime's ranges.
#[inline(always)]
fn in_range(rt: &RtWalk, lookup: u64) -> bool {
    let mut i = 0;
    while i < MAX_RUNTIME_RANGES {
        if (i as u32) < rt.count && rt.ranges[i].start <= lookup && lookup < rt.ranges[i].end {
            return true;
        }
        i += 1;
    }
    false
}

/// A native frame at `lookup` whose stack is `[sp, cfa)`: when it is a runtime's interpreter
/// loop, the runtime walker records the frames it executes in its place. True when it did
/// (the native frame is then not recorded). `no_cfi_fp`: the frame has no CFI and is stepped
/// with this frame pointer (its own): runtimes whose frames are such (JITs) are recognised by
/// their contents rather than by range.
#[inline(always)]
pub fn at_frame(w: &mut Walk, st: &mut UnwoundStack, lookup: u64, sp: u64, cfa: u64, no_cfi_fp: Option<u64>) -> bool {
    if w.rt.kind == 0 || w.rt.state == RT_FAILED {
        return false;
    }
    match w.rt.kind {
        RUNTIME_PYTHON => in_range(&w.rt, lookup) && crate::python::activation(w, st, sp, cfa),
        RUNTIME_V8 => match no_cfi_fp {
            Some(fp) => crate::v8::frame(w, st, fp),
            None => false,
        },
        _ => false,
    }
}

/// An anonymous mapping `[addr, addr+len)` of `tgid`, made by a syscall wrapper whose stack
/// starts with `stack_top` (its return address among those words): true when it is a runtime's
/// heap whose pages are counted as they are touched (not as one mapping).
#[inline(always)]
pub fn heap_mapped(tgid: u32, addr: u64, len: u64, stack_top: &[u64; crate::mmap::STACK_TOP_WORDS]) -> bool {
    crate::python::arenas::mapped(tgid, addr, len, stack_top)
}

/// Whether a page fault at `addr` of `tgid` is in such a heap (the page is then recorded).
#[inline(always)]
pub fn heap_page(tgid: u32, addr: u64) -> bool {
    crate::python::arenas::contains(tgid, addr)
}

/// `[addr, addr+len)` of `tgid` was unmapped: true when it held such heaps (their page records
/// are then released).
#[inline(always)]
pub fn heap_unmapped(tgid: u32, addr: u64, len: u64) -> bool {
    crate::python::arenas::unmapped(tgid, addr, len)
}

/// `tgid` replaced its image (execve): runtime state of the old one goes.
#[inline(always)]
pub fn exec(tgid: u32) {
    let _ = PROC_RUNTIMES.remove(&tgid);
    crate::python::exec(tgid);
    crate::v8::exec(tgid);
}

/// The native walk stopped (`complete`: at the outermost frame).
#[inline(always)]
pub fn end(w: &mut Walk, complete: bool) {
    if w.rt.kind == RUNTIME_PYTHON && w.rt.state == RT_STARTED {
        crate::python::end(w, complete);
    }
}
