//! CPython's room on the kernel side: the frames an activation of the eval loop executes.
//!
//! When the native walk passes `_PyEval_EvalFrameDefault` (a range userspace loaded into
//! `PROC_RUNTIMES`), [`activation`] records that activation's Python frames in its place:
//! (code object, instruction offset) each. The first activation of a stack finds the thread's
//! `PyThreadState` through the pthread key CPython binds it to (it holds even while the thread
//! has released the GIL); later ones continue where the previous stopped. Which frames belong
//! to which activation depends on the version (`memprof_common::python`, `PY_WALK_*`); from 3.11
//! on, a marker of each activation lives on its own C stack (a `_PyCFrame`, or the shim frame),
//! so the walk checks that it lies between the native frame's stack pointer and CFA: frames
//! cannot be pinned on the wrong activation. Every read tolerates garbage: a failed read ends
//! the Python walk (counted) and the native frames stay.
//!
//! The approach follows the OpenTelemetry eBPF profiler's Python unwinder
//! (`support/ebpf/python_tracer.ebpf.c`); the per-activation checks are memprof's own.

pub mod arenas;

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::{bpf_probe_read_user, bpf_probe_read_user_buf, generated::bpf_loop},
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use memprof_common::{
    Counter,
    python::{
        PY_FRAME_READ_MAX, PY_LASTI_BYTES, PY_LASTI_PTR, PY_LASTI_UNITS, PY_NO_CHECK, PY_NONE,
        PY_TSS_DIRECT, PY_TSS_INDIRECT, PY_WALK_CFRAME, PY_WALK_FRAME_PER_CALL, PY_WALK_SHIM,
        PyProc, PY_MAX_UNITS, py_frame_detail, py_name_tag,
    },
    runtime::{RUNTIME_PYTHON, runtime_slot},
    unwind::{STACK_COMPLETE, STACK_RT_FAILED, STACK_RT_MISALIGNED, UnwoundStack},
};

use crate::{
    maps::count,
    runtime::{RT_FAILED, RT_STARTED, thread_pointer},
    unwind::{SCRATCH, Walk, push2, walk_state},
};

/// Per Python process (tgid): its layout and where its thread states are.
#[map]
pub static PY_PROCS: HashMap<u32, PyProc> = HashMap::with_max_entries(1 << 12, BPF_F_NO_PREALLOC);

/// A process replaced its image: what was known of its interpreter is void (userspace looks
/// again); until then nothing of the old image is walked or counted.
#[inline(always)]
pub fn exec(tgid: u32) {
    let _ = PY_PROCS.remove(&tgid);
}

/// The walking process's `PyProc`, copied once per stack (cheaper than a hash lookup per frame).
#[map]
static PY_CUR: PerCpuArray<PyProc> = PerCpuArray::with_max_entries(1, 0);

/// The frame being read.
#[map]
static PY_WINDOW: PerCpuArray<[u8; PY_FRAME_READ_MAX as usize]> = PerCpuArray::with_max_entries(1, 0);

/// Python frames one activation may record (3.11+ runs Python-to-Python calls in one activation;
/// the stack's slots limit them anyway: 2 per frame).
const MAX_FRAMES_PER_ACTIVATION: u32 = 128;
/// `_PyCFrame`s of activations the native walk did not see, skipped to resync (3.11).
const MAX_CFRAME_SKIPS: u32 = 4;

/// Outcomes of an activation (`RtWalk::outcome`).
const GOING: u32 = 0;
/// Its frames were recorded.
const DONE: u32 = 1;
/// Its frames are not on the chain: keep the native frame.
const NONE: u32 = 2;
/// The walk failed: keep the native frame, and stop walking Python for this stack.
const FAILED: u32 = 3;

#[inline(always)]
fn read_u64(addr: u64) -> Option<u64> {
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// The thread's newest frame (and, for 3.11, its newest `_PyCFrame`) into the walk's cursors.
#[inline(always)]
fn start(w: &mut Walk) -> bool {
    w.rt.state = RT_FAILED;
    let Some(p) = (unsafe { PY_PROCS.get(&w.tgid) }) else { return false };
    let p = *p;
    if let Some(cur) = PY_CUR.get_ptr_mut(0) {
        unsafe { *cur = p };
    } else {
        return false;
    }
    let Some(tp) = thread_pointer() else {
        count(Counter::PyNoThreadState);
        return false;
    };
    let tstate = match p.tss_mode {
        PY_TSS_DIRECT => read_u64(tp.wrapping_add(p.tss_a as u64)),
        PY_TSS_INDIRECT => read_u64(tp.wrapping_add(p.tss_a as u64))
            .filter(|&b| b != 0)
            .and_then(|b| read_u64(b.wrapping_add(p.tss_b as u64))),
        _ => None,
    };
    let Some(tstate) = tstate.filter(|&t| t != 0) else {
        count(Counter::PyNoThreadState);
        return false;
    };
    let Some(first) = read_u64(tstate.wrapping_add(p.tstate_frame as u64)) else {
        count(Counter::PyNoThreadState);
        return false;
    };
    if p.walk == PY_WALK_CFRAME {
        w.rt.cursor2 = first;
    } else if p.cframe_current != PY_NONE {
        // 3.12: tstate->cframe->current_frame.
        let Some(f) = read_u64(first.wrapping_add(p.cframe_current as u64)) else {
            count(Counter::PyReadFailed);
            return false;
        };
        w.rt.cursor = f;
    } else {
        w.rt.cursor = first;
    }
    w.rt.state = RT_STARTED;
    true
}

/// The eval loop activation whose native frame owns `[sp, cfa)`: records its Python frames.
/// True when they replace the native frame.
#[inline(always)]
pub fn activation(w: &mut Walk, _st: &mut UnwoundStack, sp: u64, cfa: u64) -> bool {
    if w.rt.state != RT_STARTED && !start(w) {
        w.flags |= STACK_RT_FAILED;
        return false;
    }
    let Some(p) = PY_CUR.get_ptr(0) else { return false };
    let p = unsafe { &*p };
    count(Counter::PyActivations);
    w.rt.act_sp = sp;
    w.rt.act_cfa = cfa;
    w.rt.act_len = w.len;
    w.rt.act_hash = w.hash;
    w.rt.outcome = GOING;
    if p.walk == PY_WALK_CFRAME && !enter_cframe(w, p) {
        return false;
    }
    w.rt.act_cursor = w.rt.cursor;
    unsafe {
        bpf_loop(MAX_FRAMES_PER_ACTIVATION, frame_step as *mut c_void, core::ptr::null_mut(), 0);
    }
    match w.rt.outcome {
        DONE => true,
        NONE => {
            // Take back anything recorded for it.
            w.len = w.rt.act_len;
            w.hash = w.rt.act_hash;
            false
        }
        FAILED => {
            // Native frames from here on, as without Python support.
            w.len = w.rt.act_len;
            w.hash = w.rt.act_hash;
            w.rt.state = RT_FAILED;
            w.flags |= STACK_RT_FAILED;
            false
        }
        _ => {
            // More frames than one activation may record: the rest are left out.
            w.flags |= STACK_RT_MISALIGNED;
            truncated(w);
            true
        }
    }
}

/// 3.11: finds this activation's `_PyCFrame` (on its C stack) and starts at its newest frame.
#[inline(always)]
fn enter_cframe(w: &mut Walk, p: &PyProc) -> bool {
    let mut skips = 0;
    loop {
        let cf = w.rt.cursor2;
        if cf >= w.rt.act_sp && cf < w.rt.act_cfa {
            break;
        }
        if cf != 0 && cf < w.rt.act_sp && skips < MAX_CFRAME_SKIPS {
            // An activation the native walk did not recognise: its frames are left out.
            w.flags |= STACK_RT_MISALIGNED;
            count(Counter::PyMisaligned);
            skips += 1;
            match read_u64(cf.wrapping_add(p.cframe_previous as u64)) {
                Some(prev) => w.rt.cursor2 = prev,
                None => {
                    count(Counter::PyReadFailed);
                    w.rt.state = RT_FAILED;
                    w.flags |= STACK_RT_FAILED;
                    return false;
                }
            }
            continue;
        }
        // Not this activation's: keep its native frame.
        w.flags |= STACK_RT_MISALIGNED;
        count(Counter::PyMisaligned);
        return false;
    }
    let cf = w.rt.cursor2;
    match (
        read_u64(cf.wrapping_add(p.cframe_current as u64)),
        read_u64(cf.wrapping_add(p.cframe_previous as u64)),
    ) {
        (Some(cur), Some(prev)) => {
            w.rt.cursor = cur;
            w.rt.cursor2 = prev;
            true
        }
        _ => {
            count(Counter::PyReadFailed);
            w.rt.state = RT_FAILED;
            w.flags |= STACK_RT_FAILED;
            false
        }
    }
}

/// `bpf_loop` callback: one Python frame of the current activation. Returns 1 to stop.
#[inline(never)]
extern "C" fn frame_step(_i: u64, _ctx: *mut c_void) -> i64 {
    let Some(w) = walk_state() else { return 1 };
    w.rt.outcome = step(w);
    if w.rt.outcome == GOING { 0 } else { 1 }
}

/// The 8 bytes at `off` (a multiple of 8, checked by userspace) of the frame read.
#[inline(always)]
fn field_u64(win: &[u8; PY_FRAME_READ_MAX as usize], off: u32) -> u64 {
    let at = (off as usize) & (PY_FRAME_READ_MAX as usize - 8);
    unsafe { core::ptr::read_unaligned(win.as_ptr().add(at).cast::<u64>()) }
}

#[inline(always)]
fn field_u8(win: &[u8; PY_FRAME_READ_MAX as usize], off: u32) -> u32 {
    win[(off as usize) & (PY_FRAME_READ_MAX as usize - 1)] as u32
}

/// Reads the frame at the cursor, records it, moves on. Returns the activation's outcome.
#[inline(always)]
fn step(w: &mut Walk) -> u32 {
    let (Some(p), Some(win)) = (PY_CUR.get_ptr(0), PY_WINDOW.get_ptr_mut(0)) else { return FAILED };
    let (p, win) = unsafe { (&*p, &mut *win) };
    let f = w.rt.cursor;
    if f == 0 {
        // The chain ended before this activation's marker.
        return if w.len != w.rt.act_len { DONE } else { NONE };
    }
    let n = (p.frame_read as usize).min(PY_FRAME_READ_MAX as usize);
    if n == 0 || unsafe { bpf_probe_read_user_buf(f as *const u8, &mut win[..n]) }.is_err() {
        count(Counter::PyReadFailed);
        return FAILED;
    }
    let code = field_u64(win, p.frame_code) & p.code_mask;
    let back = field_u64(win, p.frame_back);
    match p.walk {
        PY_WALK_FRAME_PER_CALL => {
            record(w, p, code, field_u64(win, p.frame_instr));
            w.rt.cursor = back;
            DONE
        }
        PY_WALK_CFRAME => {
            record(w, p, code, field_u64(win, p.frame_instr));
            w.rt.cursor = back;
            if field_u8(win, p.frame_entry) == p.entry_value { DONE } else { GOING }
        }
        PY_WALK_SHIM => {
            let owner = field_u8(win, p.frame_entry);
            if owner == p.entry_value {
                // The shim of an activation (a local of its eval function), or, with no caller,
                // the thread's base frame (3.14), which ends the chain.
                w.rt.cursor = back;
                if f >= w.rt.act_sp && f < w.rt.act_cfa {
                    // Its own shim: its frames end here (none yet: keep the native frame).
                    return if w.len != w.rt.act_len { DONE } else { NONE };
                }
                if back == 0 {
                    return if w.len != w.rt.act_len { DONE } else { NONE };
                }
                if f < w.rt.act_sp {
                    // An activation the native walk did not recognise (deeper than this one):
                    // its frames stay here, in order.
                    w.flags |= STACK_RT_MISALIGNED;
                    count(Counter::PyMisaligned);
                    return GOING;
                }
                // This activation's frames are not on the chain: what was recorded belongs to
                // an older activation, which starts again from the same frame.
                w.rt.cursor = w.rt.act_cursor;
                w.flags |= STACK_RT_MISALIGNED;
                count(Counter::PyMisaligned);
                return NONE;
            }
            if code == 0 {
                // No code object: nothing more to name on this chain.
                w.rt.cursor = 0;
                return if w.len != w.rt.act_len { DONE } else { NONE };
            }
            record(w, p, code, field_u64(win, p.frame_instr));
            w.rt.cursor = back;
            GOING
        }
        _ => FAILED,
    }
}

/// Records one frame: its code object and instruction offset (in code units).
#[inline(always)]
fn record(w: &mut Walk, p: &PyProc, code: u64, instr: u64) {
    if code == 0 {
        return;
    }
    let units: i64 = match p.lasti {
        PY_LASTI_BYTES => (instr as u32 as i32 as i64) >> 1,
        PY_LASTI_UNITS => instr as u32 as i32 as i64,
        PY_LASTI_PTR => (instr.wrapping_sub(code).wrapping_sub(p.code_adaptive as u64) as i64) >> 1,
        _ => 0,
    };
    // Not started yet (3.11+: before the first instruction), or garbage.
    let units = if (0..PY_MAX_UNITS as i64).contains(&units) { units as u32 } else { 0 };
    // What identifies the code object at this address (checked by userspace when it reads it).
    let (tag, firstlineno) = match (
        unsafe { bpf_probe_read_user((code.wrapping_add(p.code_firstlineno as u64)) as *const u32) },
        read_u64(code.wrapping_add(p.code_name as u64)),
    ) {
        (Ok(first), Some(name)) => (py_name_tag(name), first),
        _ => (0, PY_NO_CHECK),
    };
    let Some(st) = SCRATCH.get_ptr_mut(0) else { return };
    if push2(w, unsafe { &mut *st }, runtime_slot(RUNTIME_PYTHON, code), py_frame_detail(units, tag, firstlineno)) {
        count(Counter::PyFrames);
        w.rt.frames += 1;
    } else {
        truncated(w);
    }
}

/// Python frames were cut by a depth limit: counted once per stack.
#[inline(always)]
fn truncated(w: &mut Walk) {
    if w.rt.outcome_flags & TRUNCATED_COUNTED == 0 {
        w.rt.outcome_flags |= TRUNCATED_COUNTED;
        count(Counter::PyTruncated);
    }
}

const TRUNCATED_COUNTED: u32 = 1;

/// The native walk stopped. At the outermost frame every Python frame should have been placed:
/// any left means an activation the native walk did not recognise.
#[inline(always)]
pub fn end(w: &mut Walk, complete: bool) {
    let Some(p) = PY_CUR.get_ptr(0) else { return };
    let p = unsafe { &*p };
    if !complete || w.flags & STACK_COMPLETE == 0 || p.walk == PY_WALK_CFRAME || w.rt.cursor == 0 {
        return;
    }
    // 3.14: the chain ends at the thread's base frame (an entry-owned frame with no caller).
    let base = unsafe { bpf_probe_read_user((w.rt.cursor + (p.frame_entry as u64 & 0x7f)) as *const u8) }
        .is_ok_and(|o| o as u32 == p.entry_value)
        && read_u64(w.rt.cursor + (p.frame_back as u64 & 0x78)) == Some(0);
    if base {
        return;
    }
    w.flags |= STACK_RT_MISALIGNED;
    count(Counter::PyMisaligned);
}
