//! `--mode rss`: which code makes resident memory grow, for any allocator or runtime, without
//! uprobes. A page is recorded (under the user stack of the faulting thread) the first time a
//! page fault touches it; munmap, mremap and madvise(DONTNEED/FREE/REMOVE) release its record;
//! userspace retires a process's pages when it exits. Records reuse the allocation maps: key
//! (tgid, page address), size 4096. In allocation mode the same program counts the pages of the
//! runtime heaps whose objects cannot be tracked one by one (`crate::runtime::heap_page`).

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_F_USER_STACK,
    helpers::{bpf_ktime_get_ns, generated::bpf_loop},
    macros::tracepoint,
    programs::{TracePointContext, tracing::StackIdContext},
};
use memprof_common::{AllocKey, AllocKind, Counter, MemEvent, MemEventKind, RSS_RELEASE_PAGES_MAX};

use crate::{
    unwind::{Regs, unwind},
    alloc::{NO_STACK, record},
    free::retire,
    maps::{ALLOCS, STACKS, count},
    mmap::{emit, event, leaf_return_address},
    scope::{current, dwarf_unwind, in_scope, rss_mode},
};

const PAGE: u64 = 4096;
/// Page-fault error code: the page was present (a protection fault).
const X86_PF_PROT: u64 = 1;
const MADV_DONTNEED: u64 = 4;
const MADV_FREE: u64 = 8;
const MADV_REMOVE: u64 = 9;
const MADV_DONTNEED_LOCKED: u64 = 24;

/// exceptions:page_fault_user — address at offset 8.
#[tracepoint]
pub fn page_fault_user(ctx: TracePointContext) -> u32 {
    let _ = try_page_fault(&ctx);
    0
}

#[inline(always)]
fn try_page_fault(ctx: &TracePointContext) -> Result<(), i64> {
    let id = current();
    if !in_scope(id) {
        return Ok(());
    }
    let address: u64 = unsafe { ctx.read_at(8) }.map_err(|e| e as i64)?;
    let tgid = (id >> 32) as u32;
    if !rss_mode() {
        // Allocation mode: only the pages of runtime heaps counted by touch (Python's arenas
        // in optimised builds), and only pages new to the process: a fault on a present page
        // (copy-on-write after fork, a write after a read mapped the zero page) is not memory
        // the heap asked for.
        let error_code: u64 = unsafe { ctx.read_at(24) }.map_err(|e| e as i64)?;
        if error_code & X86_PF_PROT != 0
            || !(crate::runtime::heap_page(tgid, address) || crate::maps::discarded(tgid, address))
        {
            return Ok(());
        }
    }
    // `--sample-bytes`: pages are sampled like allocations (their weights assume it).
    if !crate::alloc::sample(id, PAGE) {
        return Ok(());
    }
    let page = address & !(PAGE - 1);
    if unsafe { ALLOCS.get(&AllocKey { tgid, _pad: 0, addr: page }) }.is_some() {
        return Ok(());
    }
    let (stack_id, leaf_ret) = if dwarf_unwind() {
        // The faulting instruction itself starts the stack.
        let id = match Regs::current_user() {
            Some(regs) => unwind(tgid, regs, true),
            None => NO_STACK,
        };
        (id, 0)
    } else {
        let id = match ctx.get_stackid(&STACKS, BPF_F_USER_STACK as u64) {
            Ok(id) => id as u32,
            Err(_) => {
                count(Counter::StackIdFailed);
                NO_STACK
            }
        };
        (id, leaf_return_address())
    };
    record(tgid, page, PAGE, unsafe { bpf_ktime_get_ns() }, stack_id, leaf_ret, AllocKind::Page);
    Ok(())
}

/// syscalls:sys_enter_madvise — releasing advice drops the pages.
#[tracepoint]
/// In allocation mode the call is reported to userspace at its exit (a program's own mapping
/// then stops counting what it dropped; see `crate::mmap::sys_exit_madvise`).
pub fn sys_enter_madvise(ctx: TracePointContext) -> u32 {
    let advice = unsafe { ctx.read_at::<u64>(32) }.unwrap_or(0);
    if matches!(advice, MADV_DONTNEED | MADV_FREE | MADV_REMOVE | MADV_DONTNEED_LOCKED) {
        let addr = unsafe { ctx.read_at::<u64>(16) }.unwrap_or(0);
        let len = unsafe { ctx.read_at::<u64>(24) }.unwrap_or(0);
        if rss_mode() {
            release(addr, len);
        } else {
            crate::mmap::madvise_entered(addr, len);
        }
    }
    0
}

/// Releases the page records of [addr, addr+len) of the current process: in the kernel up to
/// [`RSS_RELEASE_PAGES_MAX`] pages, larger ranges through userspace.
#[inline(always)]
pub fn release(addr: u64, len: u64) {
    let id = current();
    if !in_scope(id) || len == 0 {
        return;
    }
    let tgid = (id >> 32) as u32;
    let start = addr & !(PAGE - 1);
    let pages = (len + (addr - start) + PAGE - 1) / PAGE;
    if pages > RSS_RELEASE_PAGES_MAX {
        emit(MemEvent { addr: start, len: pages * PAGE, ..event(MemEventKind::RangeReleased, tgid) });
        return;
    }
    // One `bpf_loop` callback, verified once (an unrolled loop of map updates is too much for
    // the verifier next to the arena bookkeeping of munmap).
    let mut ctx = ReleaseCtx { tgid, _pad: 0, start };
    unsafe {
        bpf_loop(pages as u32, release_step as *mut c_void, (&raw mut ctx).cast(), 0);
    }
}

#[repr(C)]
struct ReleaseCtx {
    tgid: u32,
    _pad: u32,
    start: u64,
}

/// `bpf_loop` callback: releases page `i` of the range.
#[inline(never)]
extern "C" fn release_step(i: u64, ctx: *mut c_void) -> i64 {
    let c = unsafe { &*(ctx as *const ReleaseCtx) };
    retire(c.tgid, c.start.wrapping_add(i.wrapping_mul(PAGE)), None);
    0
}
