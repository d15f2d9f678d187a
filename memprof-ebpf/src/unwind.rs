//! User stacks without frame pointers: a CFI walk over the tables userspace derived from each
//! object's `.eh_frame` (see `memprof_common::unwind`), with the frame-pointer chain as the
//! fallback for code without CFI (JIT code, which keeps frame pointers).
//!
//! Per frame: find the executable mapping the pc is in (binary search over the process's sorted
//! mappings), then its CFI row (binary search over the object's rows), compute the CFA, read the
//! return address at CFA-8 and, when the frame saved it, the caller's `%rbp`. The stack is stored
//! by a 32-bit hash of its addresses (open addressing on collisions, exact compare), so equal
//! stacks share one id like `bpf_get_stackid`'s.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, BPF_NOEXIST, pt_regs},
    helpers::{
        bpf_get_current_task_btf, bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{bpf_loop, bpf_task_pt_regs},
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use memprof_common::{
    Counter, MemEvent, MemEventKind,
    unwind::{
        CFA_END, CFA_NONE, CFA_PLT, CFA_RBP, CFA_RSP, ExecMapping, MAX_EXEC_MAPPINGS, ProcUnwind,
        ROW_CACHE_ENTRIES, RowCacheEntry,
        RBP_AT_CFA, STACK_COMPLETE, STACK_FIRST_EXACT, STACK_TRUNC_DEPTH, STACK_TRUNC_NO_INFO,
        STACK_TRUNC_READ, STACK_TRUNC_UNSUPPORTED, STACK_TRUNCATED, STACK_USED_FP, UNWIND_MAX_DEPTH,
        UnwindRow, UnwoundStack,
    },
};

use memprof_common::runtime::USER_ADDR_LIMIT;

use crate::{
    maps::count,
    runtime::{self, RtWalk},
};

/// CFI rows of every tabled object, written by userspace through a shared mapping.
#[map]
pub static UNWIND_ROWS: Array<UnwindRow> = Array::with_max_entries(1 << 21, BPF_F_MMAPABLE);

/// Per process (tgid): its executable mappings and their rows.
#[map]
pub static PROC_UNWIND: HashMap<u32, ProcUnwind> =
    HashMap::with_max_entries(1 << 12, BPF_F_NO_PREALLOC);

/// Unwound stacks by id.
#[map]
/// Not preallocated: a stack is 2 KiB, and most runs store far fewer than the maximum (a new
/// stack is rare once a service is warm, so the allocation on insert costs little).
pub static USTACKS: HashMap<u32, UnwoundStack> = HashMap::with_max_entries(1 << 14, BPF_F_NO_PREALLOC);

/// Rows looked up recently, per CPU, direct-mapped by (pc, tgid): a hit saves both binary
/// searches (most allocations come from a few hot call paths).
#[map]
static ROW_CACHE: PerCpuArray<RowCacheEntry> = PerCpuArray::with_max_entries(ROW_CACHE_ENTRIES, 0);

/// The stack being built (too big for the BPF stack).
#[map]
pub static SCRATCH: PerCpuArray<UnwoundStack> = PerCpuArray::with_max_entries(1, 0);

/// The walk's state. In a map rather than on the BPF stack: the verifier does not track the
/// values of map memory, so the per-frame callbacks are checked once instead of once per
/// combination of walk states (on the stack, the walker and the runtime walkers together went
/// past its 1M-instruction limit).
#[map]
static WALK: PerCpuArray<Walk> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's walk state (programs do not nest on one CPU).
#[inline(always)]
pub fn walk_state() -> Option<&'static mut Walk> {
    WALK.get_ptr_mut(0).map(|w| unsafe { &mut *w })
}

use core::ffi::c_void;

use crate::alloc::NO_STACK;

/// The row of code without CFI: step with the frame pointer.
const NO_CFI: UnwindRow = UnwindRow { pc: 0, cfa_offset: 0, rbp_offset: 0, cfa_kind: CFA_NONE, rbp_rule: 0 };

/// Registers the walk starts from.
#[derive(Clone, Copy)]
pub struct Regs {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

impl Regs {
    /// From a probe context's `pt_regs` (uprobe / uretprobe: the user registers).
    #[inline(always)]
    pub fn from_pt_regs(regs: *const pt_regs) -> Regs {
        unsafe { Regs { ip: (*regs).rip, sp: (*regs).rsp, bp: (*regs).rbp } }
    }

    /// The current task's user registers at kernel entry (tracepoints: syscalls, faults).
    #[inline(always)]
    pub fn current_user() -> Option<Regs> {
        unsafe {
            let task = bpf_get_current_task_btf();
            let regs = bpf_task_pt_regs(task) as *const pt_regs;
            if regs.is_null() {
                return None;
            }
            let r = bpf_probe_read_kernel(regs).ok()?;
            Some(Regs { ip: r.rip, sp: r.rsp, bp: r.rbp })
        }
    }
}

/// One binary search ("first element whose key is > `target`" over `lo..hi`), run as a
/// `bpf_loop` so the verifier checks its body once instead of every path through every halving.
#[repr(C)]
struct Search {
    target: u64,
    /// Mappings: the address of the first entry; rows: the first row's index.
    base: u64,
    lo: u32,
    hi: u32,
    failed: u32,
    _pad: u32,
}

#[inline(always)]
fn bisect(search: &mut Search, steps: u32, step_fn: extern "C" fn(u64, *mut c_void) -> i64) -> Option<u32> {
    unsafe { bpf_loop(steps, step_fn as *mut c_void, (search as *mut Search).cast(), 0) };
    if search.failed != 0 || search.lo < search.hi {
        return None;
    }
    Some(search.lo)
}

/// A mapping search step. Entries are read with `bpf_probe_read_kernel` from a plain address:
/// an index used in pointer arithmetic would become "precise" for the verifier.
#[inline(never)]
extern "C" fn mapping_step(_i: u64, ctx: *mut c_void) -> i64 {
    let s = unsafe { &mut *(ctx as *mut Search) };
    if s.lo >= s.hi {
        return 1;
    }
    let mid = s.lo + (s.hi - s.lo) / 2;
    let at = s.base + (mid as u64) * core::mem::size_of::<ExecMapping>() as u64;
    match unsafe { bpf_probe_read_kernel(at as *const u64) } {
        Ok(start) if start <= s.target => s.lo = mid + 1,
        Ok(_) => s.hi = mid,
        Err(_) => {
            s.failed = 1;
            return 1;
        }
    }
    0
}

/// A row search step.
#[inline(never)]
extern "C" fn row_step(_i: u64, ctx: *mut c_void) -> i64 {
    let s = unsafe { &mut *(ctx as *mut Search) };
    if s.lo >= s.hi {
        return 1;
    }
    let mid = s.lo + (s.hi - s.lo) / 2;
    match UNWIND_ROWS.get((s.base as u32).wrapping_add(mid)) {
        Some(r) if (r.pc as u64) <= s.target => s.lo = mid + 1,
        Some(_) => s.hi = mid,
        None => {
            s.failed = 1;
            return 1;
        }
    }
    0
}

/// The mapping containing `pc`.
#[inline(always)]
fn find_mapping(p: &ProcUnwind, pc: u64) -> Option<ExecMapping> {
    let n = if (p.count as usize) < MAX_EXEC_MAPPINGS { p.count } else { MAX_EXEC_MAPPINGS as u32 };
    let base = p.mappings.as_ptr() as u64;
    let mut s = Search { target: pc, base, lo: 0, hi: n, failed: 0, _pad: 0 };
    let first_above = bisect(&mut s, 10, mapping_step)?;
    if first_above == 0 {
        return None;
    }
    let at = base + ((first_above - 1) as u64) * core::mem::size_of::<ExecMapping>() as u64;
    let m = unsafe { bpf_probe_read_kernel(at as *const ExecMapping) }.ok()?;
    if pc < m.end { Some(m) } else { None }
}

/// The last row with `row.pc <= addr` among the mapping's rows.
#[inline(always)]
fn find_row(m: &ExecMapping, addr: u32) -> Option<UnwindRow> {
    let mut s = Search { target: addr as u64, base: m.rows_start as u64, lo: 0, hi: m.rows_len, failed: 0, _pad: 0 };
    let first_above = bisect(&mut s, 25, row_step)?;
    if first_above == 0 {
        return None;
    }
    UNWIND_ROWS.get(m.rows_start.wrapping_add(first_above - 1)).copied()
}

/// The row for `lookup` in process `tgid`: from the per-CPU cache, or searched and cached.
#[inline(always)]
fn cached_row(tgid: u32, generation: u32, lookup: u64) -> UnwindRow {
    let slot = ((lookup ^ (lookup >> 17) ^ ((tgid as u64) << 7)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 52) as u32
        & (ROW_CACHE_ENTRIES - 1);
    let entry = ROW_CACHE.get_ptr_mut(slot);
    if let Some(e) = entry {
        let e = unsafe { &*e };
        if e.pc == lookup && e.tgid == tgid && e.generation == generation {
            return e.row;
        }
    }
    let mut row = NO_CFI;
    if let Some(p) = unsafe { PROC_UNWIND.get(&tgid) } {
        if let Some(m) = find_mapping(p, lookup) {
            if m.rows_len > 0 {
                if let Some(r) = find_row(&m, lookup.wrapping_sub(m.bias) as u32) {
                    row = r;
                }
            }
        }
    }
    if let Some(e) = entry {
        let e = unsafe { &mut *e };
        e.pc = lookup;
        e.tgid = tgid;
        e.generation = generation;
        e.row = row;
    }
    row
}

#[inline(always)]
fn read(addr: u64) -> Option<u64> {
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// Words of the user stack searched for a frameless leaf's return address.
pub const LEAF_SCAN_WORDS: usize = 8;

/// Whether a call instruction ends just before `ra`: `call rel32` (`E8`), `call *%reg`
/// (`[REX] FF D0+r`) or `call *disp32(%rip)` (`FF 15`) — the forms that reach a C library's
/// syscall wrapper. Stricter than userspace's check: this one picks among stack words.
#[inline(always)]
fn call_precedes(ra: u64) -> bool {
    if ra < 4096 || ra >= USER_ADDR_LIMIT {
        return false;
    }
    let Ok(b) = (unsafe { bpf_probe_read_user((ra - 8) as *const [u8; 8]) }) else { return false };
    b[3] == 0xE8 || (b[6] == 0xFF && b[7] & 0xF8 == 0xD0) || (b[2] == 0xFF && b[3] == 0x15)
}

/// The first of the [`LEAF_SCAN_WORDS`] words from `sp` up that a call instruction precedes:
/// (its address, the word). In a frameless function without CFI (a static musl binary's `mmap`
/// or `memset`), that is its return address, whatever it pushed before.
#[inline(always)]
pub fn return_address_near(sp: u64) -> Option<(u64, u64)> {
    let words = unsafe { bpf_probe_read_user(sp as *const [u64; LEAF_SCAN_WORDS]) }.ok()?;
    let mut i = 0;
    while i < LEAF_SCAN_WORDS {
        if call_precedes(words[i]) {
            return Some((sp + 8 * i as u64, words[i]));
        }
        i += 1;
    }
    None
}

/// The leaf frame has no CFI and its frame pointer would skip its caller: the return address
/// found near the stack pointer, when it lies below the frame pointer's and returns into code
/// with CFI (the program's own, whose walk then goes on exactly). (slot, return address).
#[inline(always)]
fn leaf_caller(w: &Walk, sp: u64, bp: u64) -> Option<(u64, u64)> {
    let (slot, ra) = return_address_near(sp)?;
    let fp_usable = bp != 0 && bp >= sp && bp & 7 == 0;
    if fp_usable && slot >= bp.wrapping_add(8) {
        return None;
    }
    let row = cached_row(w.tgid, w.generation, ra - 1);
    (row.cfa_kind != CFA_NONE).then_some((slot, ra))
}

/// The walk's state, shared with the per-frame callback of `bpf_loop` (a loop the verifier
/// checks once, not once per frame) and with the runtime walkers.
#[repr(C)]
pub struct Walk {
    pub pc: u64,
    pub sp: u64,
    pub bp: u64,
    pub tgid: u32,
    pub flags: u32,
    /// Slots recorded.
    pub len: u32,
    pub hash: u32,
    pub first_exact: u32,
    pub done: u32,
    /// The process's mapping-list generation; 0: no tables (frame pointers only).
    pub generation: u32,
    /// Native frames stepped.
    pub steps: u32,
    /// The runtime walkers' state (see `runtime.rs`).
    pub rt: RtWalk,
}

/// Appends one slot; false (and the depth flag) when the stack is full.
#[inline(always)]
pub fn push(w: &mut Walk, st: &mut UnwoundStack, v: u64) -> bool {
    let i = w.len as usize;
    if i >= UNWIND_MAX_DEPTH {
        w.flags |= STACK_TRUNC_DEPTH;
        return false;
    }
    st.ips[i & (UNWIND_MAX_DEPTH - 1)] = v;
    w.len = i as u32 + 1;
    w.hash = (w.hash ^ (v as u32)).wrapping_mul(0x0100_0193);
    w.hash = (w.hash ^ ((v >> 32) as u32)).wrapping_mul(0x0100_0193);
    true
}

/// Appends a runtime frame (two slots), or nothing (and the depth flag) when they do not fit.
#[inline(always)]
pub fn push2(w: &mut Walk, st: &mut UnwoundStack, a: u64, b: u64) -> bool {
    if w.len as usize + 2 > UNWIND_MAX_DEPTH {
        w.flags |= STACK_TRUNC_DEPTH;
        return false;
    }
    push(w, st, a) && push(w, st, b)
}

/// Unwinds the current thread of process `tgid` from `regs` and returns the stack's id in
/// [`USTACKS`] (or [`NO_STACK`]). `first_exact`: `regs.ip` is the faulting instruction itself
/// (a page fault), not a return address or the instruction after a syscall.
#[inline(always)]
pub fn unwind(tgid: u32, regs: Regs, first_exact: bool) -> u32 {
    let generation = match unsafe { PROC_UNWIND.get(&tgid) } {
        Some(p) => p.generation,
        None => {
            count(Counter::UnwindNoTables);
            0
        }
    };
    let Some(w) = walk_state() else { return NO_STACK };
    *w = Walk {
        pc: regs.ip,
        sp: regs.sp,
        bp: regs.bp,
        tgid,
        flags: if first_exact { STACK_FIRST_EXACT } else { 0 },
        len: 0,
        hash: 0x811c_9dc5,
        first_exact: first_exact as u32,
        done: 0,
        generation,
        steps: 0,
        rt: RtWalk::empty(),
    };
    runtime::begin(tgid, &mut w.rt);
    unsafe {
        bpf_loop(
            UNWIND_MAX_DEPTH as u32,
            step as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    if w.done == 0 {
        w.flags |= STACK_TRUNC_DEPTH;
    }
    let complete = w.done != 0;
    runtime::end(w, complete);
    let Some(st) = SCRATCH.get_ptr_mut(0) else { return NO_STACK };
    let st = unsafe { &mut *st };
    st.len = w.len;
    st.flags = w.flags;
    count(Counter::StacksUnwound);
    if w.flags & STACK_TRUNCATED != 0 {
        count(Counter::StacksTruncated);
    }
    let announce = w.rt.frames != 0;
    store(st, w.hash, tgid, announce)
}

/// `bpf_loop` callback: one frame. Returns 1 to stop.
#[inline(never)]
extern "C" fn step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(w) = walk_state() else { return 1 };
    if step_frame(w) {
        0
    } else {
        w.done = 1;
        1
    }
}

/// Records the current frame (or, for a runtime's interpreter loop, the frames it runs) and
/// steps to its caller; false when the walk ends here.
#[inline(always)]
fn step_frame(w: &mut Walk) -> bool {
    let Some(st) = SCRATCH.get_ptr_mut(0) else { return false };
    let st = unsafe { &mut *st };
    let (pc, sp, mut bp) = (w.pc, w.sp, w.bp);
    let lookup = if w.steps == 0 && w.first_exact != 0 { pc } else { pc.wrapping_sub(1) };
    w.steps += 1;
    let row = if w.generation == 0 {
        NO_CFI
    } else {
        cached_row(w.tgid, w.generation, lookup)
    };
    if w.steps == 1 && row.cfa_kind == CFA_NONE && w.generation != 0 {
        // A syscall or page fault in a frameless function without CFI (musl's wrappers): the
        // frame pointer still holds the caller's caller's frame, so the caller is found on the
        // stack instead.
        if let Some((slot, ra)) = leaf_caller(w, sp, bp) {
            if !runtime::at_frame(w, st, lookup, sp, slot + 8, None) && !push(w, st, pc) {
                return false;
            }
            w.flags |= STACK_USED_FP;
            w.sp = slot + 8;
            w.pc = ra;
            return true;
        }
    }
    // This frame's CFA, or how the walk ends at this frame.
    let (cfa, end) = match row.cfa_kind {
        CFA_RSP => (sp.wrapping_add(row.cfa_offset as i64 as u64), 0),
        CFA_RBP => (bp.wrapping_add(row.cfa_offset as i64 as u64), 0),
        CFA_PLT => {
            let extra = if (pc & 15) >= row.cfa_offset as u64 { 8 } else { 0 };
            (sp.wrapping_add(8 + extra), 0)
        }
        CFA_END => (sp, STACK_COMPLETE),
        CFA_NONE => {
            // No CFI here: follow the frame pointer. A zero one ends the chain (the outermost
            // frame of code built with frame pointers).
            if bp == 0 {
                (sp, STACK_COMPLETE)
            } else if bp < sp || bp & 7 != 0 {
                (sp, STACK_TRUNC_NO_INFO)
            } else {
                w.flags |= STACK_USED_FP;
                (bp.wrapping_add(16), 0)
            }
        }
        _ => (sp, STACK_TRUNC_UNSUPPORTED),
    };
    let no_cfi_fp = (row.cfa_kind == CFA_NONE && end == 0).then_some(bp);
    if !runtime::at_frame(w, st, lookup, sp, cfa, no_cfi_fp) && !push(w, st, pc) {
        return false;
    }
    if end != 0 {
        w.flags |= end;
        return false;
    }
    let Some(ra) = read(cfa.wrapping_sub(8)) else {
        w.flags |= if row.cfa_kind == CFA_NONE { STACK_TRUNC_NO_INFO } else { STACK_TRUNC_READ };
        return false;
    };
    if row.cfa_kind == CFA_NONE {
        // The caller's frame pointer is where ours points.
        match read(bp) {
            Some(v) => bp = v,
            None => {
                w.flags |= STACK_TRUNC_NO_INFO;
                return false;
            }
        }
    } else if row.rbp_rule == RBP_AT_CFA {
        match read(cfa.wrapping_add(row.rbp_offset as i64 as u64)) {
            Some(v) => bp = v,
            None => {
                w.flags |= STACK_TRUNC_READ;
                return false;
            }
        }
    }
    if ra == 0 {
        w.flags |= STACK_COMPLETE;
        return false;
    }
    if ra >= USER_ADDR_LIMIT {
        // Not a user address (and never to be confused with a runtime frame's tag).
        w.flags |= STACK_TRUNC_NO_INFO;
        return false;
    }
    w.sp = cfa;
    w.pc = ra;
    w.bp = bp;
    true
}

/// Stores the stack under its hash (the next free or equal slot on collisions). `announce`: a
/// new stack is announced to userspace (it has runtime frames to name while the process lives).
#[inline(always)]
fn store(st: &UnwoundStack, hash: u32, tgid: u32, announce: bool) -> u32 {
    let mut id = hash & 0x7fff_ffff;
    for _ in 0..4 {
        match unsafe { USTACKS.get(&id) } {
            Some(old) => {
                if same(old, st) {
                    return id;
                }
                id = (id + 1) & 0x7fff_ffff;
            }
            None => {
                if USTACKS.insert(&id, st, BPF_NOEXIST as u64).is_ok() {
                    if announce {
                        crate::mmap::emit(MemEvent {
                            stack_id: id as i64,
                            ..crate::mmap::event(MemEventKind::NewStack, tgid)
                        });
                    }
                    return id;
                }
                // Raced with another CPU storing this id: it may be this very stack.
                if let Some(old) = unsafe { USTACKS.get(&id) } {
                    if same(old, st) {
                        return id;
                    }
                }
                id = (id + 1) & 0x7fff_ffff;
            }
        }
    }
    count(Counter::StackIdFailed);
    NO_STACK
}

#[inline(always)]
fn same(a: &UnwoundStack, b: &UnwoundStack) -> bool {
    if a.len != b.len || a.flags != b.flags {
        return false;
    }
    let n = b.len as usize;
    for i in 0..UNWIND_MAX_DEPTH {
        if i >= n {
            break;
        }
        if a.ips[i] != b.ips[i] {
            return false;
        }
    }
    true
}
