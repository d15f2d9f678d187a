//! V8's room on the kernel side: JS frames of a Node process, read from V8's own frames.
//!
//! JS frames run code without CFI (JIT code in anonymous mappings; the embedded builtins, where
//! interpreted frames return, have no FDE either), which the native walker steps with the frame
//! pointer. [`frame`] looks at such a frame of a Node process (one userspace loaded into
//! `V8_PROCS`): when its frame-pointer-relative slots say it is a JS frame, the frame's
//! SharedFunctionInfo and its bytecode offset (interpreted) or pc (compiled) are recorded in
//! place of the native pc (encoding: `memprof_common::v8`). The checks, each on memory that
//! may hold anything:
//! 1. the context slot holds a tagged pointer (a frame-type marker, bit 0 clear, marks a typed
//!    frame: entry, exit, internal, stub…);
//! 2. the function slot holds a tagged pointer whose map's instance type is a JSFunction's;
//! 3. its `shared` field holds a tagged pointer whose map's instance type is
//!    `SHARED_FUNCTION_INFO_TYPE`.
//!
//! A frame failing 1 or 2 is not JS and keeps its native pc; one failing 3 keeps it too and is
//! counted. Userspace names the frames and checks each SFI again (its name tag) before trusting
//! it.
//!
//! The frame layout and the checks follow the OpenTelemetry eBPF profiler's V8 unwinder
//! (`support/ebpf/v8_tracer.ebpf.c`, `unwind_one_v8_frame`); unlike it, the walker reads no
//! Code object (the frame's pc identifies it: see `memprof/src/runtime/v8/DESIGN.md`), so it
//! works the same where V8 keeps code behind a dispatch table (Node 24).

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::bpf_probe_read_user,
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use memprof_common::{
    Counter,
    runtime::{RUNTIME_V8, USER_ADDR_LIMIT, runtime_slot},
    v8::{V8_TEXT_RANGES, V8_TIER_COMPILED, V8_TIER_INTERPRETED, V8_WINDOW_WORDS, V8Proc, v8_frame_detail, v8_name_tag},
    unwind::UnwoundStack,
};

use crate::{
    maps::count,
    runtime::{RT_FAILED, RT_STARTED},
    unwind::{Walk, push2},
};

/// Per Node process (tgid): what the walker checks in a frame.
#[map]
pub static V8_PROCS: HashMap<u32, V8Proc> = HashMap::with_max_entries(1 << 12, BPF_F_NO_PREALLOC);

/// The walking process's `V8Proc`, copied once per stack (cheaper than a hash lookup per frame).
#[map]
static V8_CUR: PerCpuArray<V8Proc> = PerCpuArray::with_max_entries(1, 0);

/// A process replaced its image: nothing of the old one is walked.
#[inline(always)]
pub fn exec(tgid: u32) {
    let _ = V8_PROCS.remove(&tgid);
}

#[inline(always)]
fn read_u64(addr: u64) -> Option<u64> {
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

#[inline(always)]
fn read_u16(addr: u64) -> Option<u16> {
    unsafe { bpf_probe_read_user(addr as *const u16) }.ok()
}

/// A tagged heap-object pointer (V8 without pointer compression: low bits `01`).
#[inline(always)]
fn is_heap_object(v: u64) -> bool {
    v & 3 == 1 && v > 4096 && v < USER_ADDR_LIMIT
}

/// A SMI (low 32 bits zero on 64-bit V8 without pointer compression).
#[inline(always)]
fn is_smi(v: u64) -> bool {
    v & 0xffff_ffff == 0
}

/// The instance type of the heap object `tagged`.
#[inline(always)]
fn instance_type(p: &V8Proc, tagged: u64) -> Option<u32> {
    let map = read_u64((tagged - 1).wrapping_add(p.off_map as u64))?;
    if !is_heap_object(map) {
        return None;
    }
    read_u16((map - 1).wrapping_add(p.off_instance_type as u64)).map(u32::from)
}

/// Whether `pc` lies in the V8 object's own code (where the interpreter's handlers are).
#[inline(always)]
fn in_text(p: &V8Proc, pc: u64) -> bool {
    let mut i = 0;
    while i < V8_TEXT_RANGES {
        if (i as u32) < p.text_count && p.text[i][0] <= pc && pc < p.text[i][1] {
            return true;
        }
        i += 1;
    }
    false
}

/// The walking process's layout (looked up at its first frame without CFI).
#[inline(always)]
fn current(w: &mut Walk) -> Option<&'static V8Proc> {
    if w.rt.state != RT_STARTED {
        w.rt.state = RT_FAILED;
        let p = unsafe { V8_PROCS.get(&w.tgid) }?;
        let cur = V8_CUR.get_ptr_mut(0)?;
        unsafe { *cur = *p };
        w.rt.state = RT_STARTED;
    }
    V8_CUR.get_ptr(0).map(|p| unsafe { &*p })
}

/// A frame without CFI at pc `w.pc` whose frame pointer is `fp`: when it is a JS frame, records
/// it (two slots) and returns true (the native pc is then not recorded).
#[inline(always)]
pub fn frame(w: &mut Walk, st: &mut UnwoundStack, fp: u64) -> bool {
    let Some(p) = current(w) else { return false };
    let Ok(win) = (unsafe { bpf_probe_read_user((fp.wrapping_sub(8 * V8_WINDOW_WORDS as u64)) as *const [u64; V8_WINDOW_WORDS]) }) else {
        return false;
    };
    let word = |i: u32| win[(i as usize) & (V8_WINDOW_WORDS - 1)];
    // A typed frame's marker is `type << 1` (a SMI tag, not a 64-bit SMI: V8's
    // `StackFrame::IsTypeMarker` tests bit 0 only); a JS frame holds its context there.
    if word(p.idx_context) & 1 == 0 {
        return false;
    }
    let function = word(p.idx_function);
    if !is_heap_object(function) {
        return false;
    }
    match instance_type(p, function) {
        Some(t) if t >= p.type_js_function_first && t <= p.type_js_function_last => {}
        _ => return false,
    }
    let Some(sfi) = read_u64((function - 1).wrapping_add(p.off_js_function_shared as u64)) else {
        count(Counter::V8ReadFailed);
        return false;
    };
    if !is_heap_object(sfi) || instance_type(p, sfi) != Some(p.type_sfi) {
        count(Counter::V8ReadFailed);
        return false;
    }
    let Some(name) = read_u64((sfi - 1).wrapping_add(p.off_sfi_name as u64)) else {
        count(Counter::V8ReadFailed);
        return false;
    };
    // Interpreted: a SMI bytecode offset, and a BytecodeArray in its slot (a baseline frame
    // keeps the array too, with its feedback vector where the offset would be), with the pc in
    // the interpreter's handlers (code compiled by on-stack replacement runs in the frame it
    // replaced, stale offset included).
    let array = word(p.idx_bytecode_array);
    let offset = word(p.idx_bytecode_offset);
    let interpreted = is_smi(offset)
        && in_text(p, w.pc)
        && is_heap_object(array)
        && instance_type(p, array) == Some(p.type_bytecode_array);
    let (tier, value) = if interpreted {
        (V8_TIER_INTERPRETED, (offset >> 32) & 0xffff_ffff)
    } else {
        (V8_TIER_COMPILED, w.pc)
    };
    let slot = runtime_slot(RUNTIME_V8, (sfi - 1) | tier);
    if !push2(w, st, slot, v8_frame_detail(value, v8_name_tag(name))) {
        count(Counter::V8Truncated);
        return false;
    }
    w.rt.frames += 1;
    count(Counter::V8Frames);
    true
}
