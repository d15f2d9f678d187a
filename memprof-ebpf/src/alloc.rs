//! The malloc family: an entry probe remembers the call, the return probe records the block.
//!
//! Nesting (calloc→malloc inside some libcs, realloc→malloc) is told apart by the user stack
//! pointer: a call made while an outer allocator call of the same thread is in progress runs
//! deeper on the stack (lower `sp`), and only the outermost call's return (at `sp + 8`, after
//! `ret` popped the return address) records anything. An entry whose return was never seen is
//! recognised the same way (its `sp` is below the new call's) and replaced, so a missed return
//! cannot swallow a thread's later allocations.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{
        bpf_ktime_get_ns, bpf_probe_read_user,
        generated::{bpf_get_attach_cookie, bpf_get_func_ip, bpf_get_prandom_u32},
    },
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext, tracing::StackIdContext},
};
use memprof_common::{
    AllocInfo, AllocKey, AllocKind, Counter, INFLIGHT_NO_RETURN, INFLIGHT_RECORDED, INFLIGHT_UNSAMPLED, InFlight,
    LEAF_PREPEND, StackKey, StackTotals, sampling,
};

use crate::{
    free::free_block,
    maps::{ALLOCS, INFLIGHT, SAMPLE_COUNTDOWN, STACK_TOTALS, STACKS, atomic_add, count},
    scope::{current, dwarf_unwind, in_scope, sample_bytes, sessions},
    unwind::{Regs, unwind},
};

/// Stack id recorded when `bpf_get_stackid` fails.
pub const NO_STACK: u32 = u32::MAX;

const EEXIST: i32 = 17;

#[inline(always)]
fn user_ip<C: EbpfContext>(ctx: &C) -> u64 {
    let regs = ctx.as_ptr() as *const aya_ebpf::bindings::pt_regs;
    unsafe { (*regs).rip }
}

#[inline(always)]
fn user_sp<C: EbpfContext>(ctx: &C) -> u64 {
    let regs = ctx.as_ptr() as *const aya_ebpf::bindings::pt_regs;
    unsafe { (*regs).rsp }
}

/// Returns at most this long after its entry are what an unfollowed call (see
/// [`INFLIGHT_NO_RETURN`]) may still be in: nested allocator calls (musl's calloc → malloc,
/// pymalloc → malloc for large objects) and an allocator's own mmaps come within microseconds.
const NO_RETURN_WINDOW_NS: u64 = 200_000;

/// Whether an unfollowed call's record still stands for a call in progress, seen from a later
/// event of the same thread at user stack pointer `sp`: the event runs deeper on the stack,
/// within [`NO_RETURN_WINDOW_NS`] of the call's entry, and the call's return address is still
/// in its slot.
#[inline(always)]
pub(crate) fn unfollowed_in_progress(call: &InFlight, sp: u64, now_ns: u64) -> bool {
    sp < call.sp && unfollowed_may_run(call, now_ns)
}

/// An unfollowed call is young and its return address still in its slot — or the uretprobe
/// trampoline: the kernel hijacks the return address after the entry programs ran whenever
/// any other consumer of the probe wants the return, and a session link filtered on another
/// process always does (`uprobe_prog_run` returns 0 for it, "run the return": kernel 6.18).
#[inline(always)]
fn unfollowed_may_run(call: &InFlight, now_ns: u64) -> bool {
    now_ns.wrapping_sub(call.ts_ns) < NO_RETURN_WINDOW_NS
        && unsafe { bpf_probe_read_user(call.sp as *const u64) }
            .is_ok_and(|slot| slot == call.aux || is_uretprobe_trampoline(slot))
}

/// The x86-64 uretprobe trampoline: the kernel maps it as high as it can, one page below the
/// top of the user address space (4- or 5-level page tables).
#[inline(always)]
fn is_uretprobe_trampoline(addr: u64) -> bool {
    addr == 0x7fff_ffff_e000 || addr == 0xff_ffff_ffff_e000
}

/// The entry of an allocation function. Returns whether its return must be seen: always
/// without sessions; with them, not for nested calls, nor for unsampled calls that have nothing
/// to do at their return (an unsampled realloc still releases the old block there).
#[inline(always)]
fn enter(ctx: &ProbeContext, kind: AllocKind, size: u64, aux: u64) -> bool {
    let id = current();
    if !in_scope(id) {
        return false;
    }
    let sp = user_sp(ctx);
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    let mut extra_returns = 0;
    let mut decided = None;
    if let Some(outer) = unsafe { INFLIGHT.get(id) }.copied() {
        if outer.kind != INFLIGHT_RECORDED && outer.kind & INFLIGHT_NO_RETURN != 0 {
            // An unfollowed unsampled call: nested inside it, tail-called from it (the same
            // stack slot and return address, another function: glibc's reallocarray → realloc;
            // the same function from there is the next call of a loop), or it has returned
            // (replaced below).
            if unfollowed_in_progress(&outer, sp, ts_ns) {
                count(Counter::Nested);
                return false;
            }
            if sp == outer.sp
                && outer.size != user_ip(ctx)
                && unfollowed_may_run(&outer, ts_ns)
            {
                count(Counter::TailCalls);
                return false;
            }
        } else if sp < outer.sp {
            count(Counter::Nested);
            return false;
        } else if sp == outer.sp && outer.kind != INFLIGHT_RECORDED {
            // A tail call (jmp) from the outer allocator function into this one: both return
            // probes will fire at the same return; the callee's arguments describe the block.
            count(Counter::TailCalls);
            extra_returns = outer.extra_returns + 1;
            // The outer function's sampling decision stands for the whole call.
            decided = Some(outer.kind & INFLIGHT_UNSAMPLED == 0);
        } else {
            count(Counter::MissedReturn);
        }
    }
    let sampled = decided.unwrap_or_else(|| sample(id, size));
    let releases_old = matches!(kind, AllocKind::Realloc | AllocKind::Reallocarray | AllocKind::PyRealloc) && aux != 0;
    let call = if !sampled && !releases_old && extra_returns == 0 && sessions() {
        // Nothing to do at the return: the session skips it (one trap instead of two). The
        // record stays for nested calls and the allocator's own mmaps (see
        // `unfollowed_in_progress`).
        let ret = unsafe { bpf_probe_read_user(sp as *const u64) }.unwrap_or(0);
        InFlight {
            // (The function's entry, to tell a tail call from the next call.)
            size: user_ip(ctx),
            aux: ret,
            sp,
            ts_ns,
            kind: kind as u32 | INFLIGHT_UNSAMPLED | INFLIGHT_NO_RETURN,
            extra_returns: 0,
        }
    } else {
        InFlight {
            size,
            aux,
            sp,
            ts_ns,
            kind: if sampled { kind as u32 } else { kind as u32 | INFLIGHT_UNSAMPLED },
            extra_returns,
        }
    };
    let follow = call.kind & INFLIGHT_NO_RETURN == 0;
    if INFLIGHT.insert(id, call, 0).is_err() {
        count(Counter::InFlightMapFull);
        return false;
    }
    follow
}

/// The allocation functions' program with uprobe sessions (kernel 6.13+): one program for all
/// of them, told apart by the attach cookie (their [`AllocKind`]), run at each entry and, when
/// the entry returned 0, at the return (1: skip the return). One program rather than one per
/// function: its return path holds the stack walk, and the verifier checks it once.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub fn alloc_session(ctx: *mut core::ffi::c_void) -> u32 {
    let ctx = ProbeContext::new(ctx);
    // At the return the registers are the caller's after `ret`: the instruction pointer is the
    // return address, not the probed function's entry (`bpf_session_is_return` is a kfunc,
    // which aya-ebpf 0.2.1 cannot call).
    if unsafe { bpf_get_func_ip(ctx.as_ptr()) } != user_ip(&ctx) {
        let _ = try_alloc_return(&ctx);
        return 0;
    }
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let Some(kind) = AllocKind::from_u32(cookie as u32) else { return 1 };
    let (size, aux) = arguments(&ctx, kind);
    if enter(&ctx, kind, size, aux) { 0 } else { 1 }
}

/// An allocation function's requested size and its auxiliary argument (realloc's old block,
/// posix_memalign's out-parameter), by kind.
#[inline(always)]
fn arguments(ctx: &ProbeContext, kind: AllocKind) -> (u64, u64) {
    let a = |n| arg(ctx, n);
    match kind {
        AllocKind::Calloc => (a(0).wrapping_mul(a(1)), 0),
        AllocKind::Realloc => (a(1), a(0)),
        AllocKind::Reallocarray => (a(1).wrapping_mul(a(2)), a(0)),
        AllocKind::PosixMemalign => (a(2), a(0)),
        AllocKind::AlignedAlloc | AllocKind::Memalign => (a(1), 0),
        // pvalloc rounds the size up to a whole number of pages.
        AllocKind::Pvalloc => ((a(0) + 4095) & !4095, 0),
        // CPython's object allocator, `_PyObject_Malloc(void *ctx, size_t n)`: the functions
        // the `PyObject_*`/`PyMem_*` domains point at take a context first.
        AllocKind::PyMalloc => (a(1), 0),
        AllocKind::PyCalloc => (a(1).wrapping_mul(a(2)), 0),
        AllocKind::PyRealloc => (a(2), a(1)),
        _ => (a(0), 0),
    }
}

/// With `--sample-bytes N`: whether this allocation is recorded (a per-thread countdown of
/// exponentially distributed bytes; allocations of N bytes or more always are).
#[inline(always)]
pub(crate) fn sample(id: u64, size: u64) -> bool {
    let mean = sample_bytes();
    if mean == 0 || size >= mean {
        return true;
    }
    let left = match unsafe { SAMPLE_COUNTDOWN.get(id) } {
        Some(&left) => left,
        None => sampling::next_countdown(mean, unsafe { bpf_get_prandom_u32() }),
    };
    let (sampled, next) = if left > size {
        (false, left - size)
    } else {
        (true, sampling::next_countdown(mean, unsafe { bpf_get_prandom_u32() }))
    };
    let _ = SAMPLE_COUNTDOWN.insert(id, next, 0);
    if !sampled {
        count(Counter::Unsampled);
    }
    sampled
}

#[inline(always)]
fn arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg::<u64>(n).unwrap_or(0)
}

/// The entry programs without sessions (each function with the return program, `alloc_return`).
macro_rules! alloc_entry {
    ($name:ident, $kind:expr) => {
        #[uprobe]
        pub fn $name(ctx: ProbeContext) -> u32 {
            let (size, aux) = arguments(&ctx, $kind);
            enter(&ctx, $kind, size, aux);
            0
        }
    };
}

alloc_entry!(malloc_enter, AllocKind::Malloc);
alloc_entry!(calloc_enter, AllocKind::Calloc);
alloc_entry!(realloc_enter, AllocKind::Realloc);
alloc_entry!(reallocarray_enter, AllocKind::Reallocarray);
alloc_entry!(posix_memalign_enter, AllocKind::PosixMemalign);
alloc_entry!(aligned_alloc_enter, AllocKind::AlignedAlloc);
alloc_entry!(memalign_enter, AllocKind::Memalign);
alloc_entry!(valloc_enter, AllocKind::Valloc);
alloc_entry!(pvalloc_enter, AllocKind::Pvalloc);
alloc_entry!(pymalloc_malloc_enter, AllocKind::PyMalloc);
alloc_entry!(pymalloc_calloc_enter, AllocKind::PyCalloc);
alloc_entry!(pymalloc_realloc_enter, AllocKind::PyRealloc);

/// One return probe serves every allocation function; the in-flight record says which.
#[uretprobe]
pub fn alloc_return(ctx: RetProbeContext) -> u32 {
    let _ = try_alloc_return(&ctx);
    0
}

#[inline(always)]
fn try_alloc_return<C: StackIdContext>(ctx: &C) -> Result<(), i64> {
    let id = current();
    if !in_scope(id) {
        return Ok(());
    }
    let Some(call) = (unsafe { INFLIGHT.get(id) }).copied() else {
        count(Counter::MissedEntry);
        return Ok(());
    };
    let sp = user_sp(ctx);
    let expected = call.sp + 8;
    if sp < expected {
        // A nested allocator call returning inside the outer one.
        return Ok(());
    }
    if sp > expected {
        // The outer call's own return was missed (longjmp, uretprobe depth limit).
        let _ = INFLIGHT.remove(id);
        count(Counter::MissedReturn);
        return Ok(());
    }
    if call.extra_returns > 0 {
        // More return probes are due at this same return (tail calls): keep the record for them.
        let rest = InFlight { kind: INFLIGHT_RECORDED, extra_returns: call.extra_returns - 1, ..call };
        let _ = INFLIGHT.insert(id, rest, 0);
    } else {
        let _ = INFLIGHT.remove(id);
    }
    if call.kind == INFLIGHT_RECORDED || call.kind & INFLIGHT_NO_RETURN != 0 {
        // (An unfollowed call's record: this return is another call's, which it replaced.)
        return Ok(());
    }
    let unsampled = call.kind & INFLIGHT_UNSAMPLED != 0;
    let tgid = (id >> 32) as u32;
    let ret = unsafe { (*(ctx.as_ptr() as *const aya_ebpf::bindings::pt_regs)).rax };
    let kind = AllocKind::from_u32(call.kind & !INFLIGHT_UNSAMPLED).unwrap_or(AllocKind::Malloc);
    let addr = match kind {
        AllocKind::PosixMemalign => {
            if ret as u32 != 0 {
                count(Counter::FailedAllocs);
                return Ok(());
            }
            unsafe { bpf_probe_read_user(call.aux as *const u64) }.unwrap_or(0)
        }
        AllocKind::Realloc | AllocKind::Reallocarray | AllocKind::PyRealloc => {
            let old = call.aux;
            if ret == 0 {
                if call.size == 0 && old != 0 {
                    // realloc(p, 0) freed p.
                    free_block(tgid, old, Some(call.ts_ns));
                } else {
                    count(Counter::FailedAllocs);
                }
                return Ok(());
            }
            if old != 0 {
                // The old block is gone (moved or resized in place). Only a record older than
                // this call is ours: a newer one at that address belongs to another thread's
                // allocation made after realloc released the block.
                free_block(tgid, old, Some(call.ts_ns));
            }
            ret
        }
        _ => ret,
    };
    if unsampled {
        // Not recorded (realloc's old block was released above all the same).
        return Ok(());
    }
    if addr == 0 {
        count(Counter::FailedAllocs);
        return Ok(());
    }
    let (stack_id, leaf_ret) = if dwarf_unwind() {
        let regs = Regs::from_pt_regs(ctx.as_ptr() as *const aya_ebpf::bindings::pt_regs);
        (unwind(tgid, regs, false), 0)
    } else {
        fp_stack(ctx)
    };
    record(tgid, addr, call.size, call.ts_ns, stack_id, leaf_ret, kind);
    Ok(())
}

/// The frame-pointer walk (`--unwind fp`), with hash-collision recovery.
#[inline(always)]
fn fp_stack<C: StackIdContext>(ctx: &C) -> (u32, u64) {
    match ctx.get_stackid(&STACKS, BPF_F_USER_STACK as u64) {
        Ok(id) => (id as u32, 0),
        Err(e) if e == -EEXIST => {
            // Another stack owns this bucket. The same stack without its first frame hashes
            // elsewhere; that frame (the return address into the allocating function, the
            // instruction pointer here) is kept beside it.
            count(Counter::StackCollisions);
            let skip_one = BPF_F_USER_STACK as u64 | 1;
            match ctx.get_stackid(&STACKS, skip_one) {
                Ok(id) => (id as u32, LEAF_PREPEND | user_ip(ctx)),
                Err(_) => {
                    count(Counter::StackIdFailed);
                    (NO_STACK, 0)
                }
            }
        }
        Err(_) => {
            count(Counter::StackIdFailed);
            (NO_STACK, 0)
        }
    }
}

/// Adds one live block to the allocation map and its stack's totals.
#[inline(always)]
pub fn record(
    tgid: u32,
    addr: u64,
    size: u64,
    ts_ns: u64,
    stack_id: u32,
    leaf_ret: u64,
    kind: AllocKind,
) {
    let key = AllocKey { tgid, _pad: 0, addr };
    let skey = StackKey { tgid, stack_id, leaf_ret };
    let totals = match STACK_TOTALS.get_ptr_mut(&skey) {
        Some(t) => t,
        None => {
            let _ = STACK_TOTALS.insert(&skey, &StackTotals::default(), BPF_NOEXIST as u64);
            match STACK_TOTALS.get_ptr_mut(&skey) {
                Some(t) => t,
                None => {
                    count(Counter::StacksMapFull);
                    return;
                }
            }
        }
    };
    let weight = sampling::weight(size, sample_bytes());
    let count_weight = sampling::count_weight(size, weight, unsafe { bpf_get_prandom_u32() });
    let info = AllocInfo {
        size,
        ts_ns,
        weight,
        stack_id,
        kind: kind as u32,
        count_weight: count_weight as u32,
        _pad: 0,
        leaf_ret,
    };
    if ALLOCS.insert(&key, &info, BPF_NOEXIST as u64).is_err() {
        if unsafe { ALLOCS.get(&key) }.is_none() {
            count(Counter::AllocsMapFull);
            return;
        }
        // A free we did not see (an allocator path we do not probe): retire the old record.
        count(Counter::Overwritten);
        free_block(tgid, addr, None);
        if ALLOCS.insert(&key, &info, 0).is_err() {
            count(Counter::AllocsMapFull);
            return;
        }
    }
    unsafe {
        atomic_add(&raw mut (*totals).live_bytes, weight as i64);
        atomic_add(&raw mut (*totals).live_count, count_weight as i64);
        atomic_add((&raw mut (*totals).total_bytes).cast(), weight as i64);
        atomic_add((&raw mut (*totals).total_count).cast(), count_weight as i64);
    }
    count(Counter::Allocs);
}
