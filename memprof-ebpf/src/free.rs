//! free(): an entry probe is enough (the pointer is the first argument).

use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use memprof_common::{AllocKey, Counter, StackKey};

use crate::{
    maps::{ALLOCS, STACK_TOTALS, atomic_add, count},
    scope::{current, in_scope},
};

#[uprobe]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    let _ = try_free_enter(&ctx);
    0
}

/// CPython's `_PyObject_Free(void *ctx, void *p)`.
#[uprobe]
pub fn pymalloc_free_enter(ctx: ProbeContext) -> u32 {
    let _ = try_free(&ctx, 1);
    0
}

#[inline(always)]
fn try_free_enter(ctx: &ProbeContext) -> Result<(), i64> {
    try_free(ctx, 0)
}

/// Frees the block in argument `n`.
#[inline(always)]
fn try_free(ctx: &ProbeContext, n: usize) -> Result<(), i64> {
    let id = current();
    if !in_scope(id) {
        return Ok(());
    }
    let addr: u64 = ctx.arg(n).unwrap_or(0);
    if addr != 0 {
        free_block(id_tgid(id), addr, None);
    }
    Ok(())
}

#[inline(always)]
fn id_tgid(id: u64) -> u32 {
    (id >> 32) as u32
}

/// Retires the live block at `addr`, if recorded (and, with `not_after`, only if it was
/// allocated no later than that time).
#[inline(always)]
pub fn free_block(tgid: u32, addr: u64, not_after: Option<u64>) {
    if !retire(tgid, addr, not_after) {
        count(Counter::FreeUnknown);
    }
}

/// Removes the record at `addr` and subtracts it from its stack's totals. False when there is
/// no record there.
#[inline(always)]
pub fn retire(tgid: u32, addr: u64, not_after: Option<u64>) -> bool {
    let key = AllocKey { tgid, _pad: 0, addr };
    let Some(info) = (unsafe { ALLOCS.get(&key) }).copied() else {
        return false;
    };
    if let Some(t) = not_after {
        if info.ts_ns > t {
            return true;
        }
    }
    // Only the thread whose delete succeeds adjusts the totals, so a block is retired once.
    if ALLOCS.remove(&key).is_err() {
        return true;
    }
    let skey = StackKey { tgid, stack_id: info.stack_id, leaf_ret: info.leaf_ret };
    if let Some(t) = STACK_TOTALS.get_ptr_mut(&skey) {
        unsafe {
            atomic_add(&raw mut (*t).live_bytes, -(info.weight as i64));
            atomic_add(&raw mut (*t).live_count, -(info.count_weight as i64));
        }
    }
    count(Counter::Frees);
    true
}
