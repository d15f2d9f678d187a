//! Anonymous mappings made by the program itself (not by its allocator): mmap, munmap and
//! mremap through syscall tracepoints. A syscall issued while the same thread is inside a tracked
//! allocator call is skipped — the allocator call already accounts for those bytes.
//!
//! Events go to userspace, which keeps the mappings in an interval map (partial munmaps split
//! them; mremap moves them).

use aya_ebpf::{
    bindings::BPF_F_USER_STACK,
    helpers::{
        bpf_get_current_task_btf, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user,
        bpf_task_pt_regs,
    },
    macros::tracepoint,
    programs::{TracePointContext, tracing::StackIdContext},
};
use memprof_common::{Counter, INFLIGHT_NO_RETURN, INFLIGHT_RECORDED, MemEvent, MemEventKind, SyscallArgs};

use crate::{
    alloc::{NO_STACK, unfollowed_in_progress},
    unwind::{Regs, unwind},
    maps::{EVENTS, INFLIGHT, STACKS, SYSCALL_ARGS, count},
    scope::{current, dwarf_unwind, in_scope, rss_mode},
};

const MAP_ANONYMOUS: u64 = 0x20;
const MAP_STACK: u64 = 0x20000;
const PROT_EXEC: u64 = 0x4;
/// Offset of the first syscall argument (and of `ret` in sys_exit) in the tracepoint record.
const ARG0: usize = 16;

#[inline(always)]
fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    unsafe { ctx.read_at::<u64>(ARG0 + 8 * n) }.unwrap_or(0)
}

/// Saves the arguments of a syscall we care about, unless an allocator call is in progress.
#[inline(always)]
fn save(kind: MemEventKind, addr: u64, len: u64, new_len: u64) {
    let id = current();
    if !in_scope(id) {
        return;
    }
    let inside = match unsafe { INFLIGHT.get(id) }.copied() {
        None => false,
        Some(call) if call.kind == INFLIGHT_RECORDED || call.kind & INFLIGHT_NO_RETURN == 0 => true,
        // An unsampled call whose return is not followed (uprobe sessions): only while it runs.
        Some(call) => Regs::current_user()
            .is_some_and(|r| unfollowed_in_progress(&call, r.sp, unsafe { bpf_ktime_get_ns() })),
    };
    if inside {
        // (An allocator committing or purging its own memory with mprotect or madvise is
        // routine, not counted.)
        if kind as u32 != MemEventKind::Mprotect as u32 && kind as u32 != MemEventKind::Madvise as u32 {
            count(Counter::SyscallInsideAllocator);
        }
        return;
    }
    let args = SyscallArgs { addr, len, new_len, kind: kind as u32, _pad: 0 };
    let _ = SYSCALL_ARGS.insert(id, args, 0);
}

#[inline(always)]
fn take(kind: MemEventKind) -> Option<SyscallArgs> {
    let id = current();
    let args = (unsafe { SYSCALL_ARGS.get(id) }).copied()?;
    let _ = SYSCALL_ARGS.remove(id);
    (args.kind == kind as u32).then_some(args)
}

#[inline(always)]
fn page_round(len: u64) -> u64 {
    (len + 4095) & !4095
}

#[inline(always)]
pub fn emit(ev: MemEvent) {
    emit_with(ev, 0);
}

/// `BPF_RB_NO_WAKEUP`: the event waits for the next one that wakes userspace (or its poll).
const RB_NO_WAKEUP: u64 = 1;

#[inline(always)]
fn emit_with(ev: MemEvent, flags: u64) {
    if EVENTS.output::<MemEvent>(&ev, flags).is_err() {
        count(Counter::EventsDropped);
    }
}

/// An event about process `tgid` with no address range, stamped now.
#[inline(always)]
pub fn event(kind: MemEventKind, tgid: u32) -> MemEvent {
    MemEvent {
        kind: kind as u32,
        tgid,
        addr: 0,
        len: 0,
        new_addr: 0,
        new_len: 0,
        ts_ns: unsafe { bpf_ktime_get_ns() },
        stack_id: -1,
        leaf_ret: 0,
    }
}

/// Tells userspace that the current process maps new code (it rescans its objects).
#[inline(always)]
fn code_mapped() {
    emit(event(MemEventKind::CodeMapped, (current() >> 32) as u32));
}

/// The user stack pointer at the syscall.
#[inline(always)]
fn user_sp() -> Option<u64> {
    unsafe {
        let task = bpf_get_current_task_btf();
        let regs = bpf_task_pt_regs(task) as *const aya_ebpf::bindings::pt_regs;
        if regs.is_null() {
            return None;
        }
        bpf_probe_read_kernel(&raw const (*regs).rsp).ok()
    }
}

/// The first word near the user stack pointer that a call instruction precedes: in a frameless
/// syscall wrapper (or a frameless function faulting), its return address. Userspace vets it.
#[inline(always)]
pub fn leaf_return_address() -> u64 {
    match user_sp() {
        Some(sp) => crate::unwind::return_address_near(sp).map_or(0, |(_, ra)| ra),
        None => 0,
    }
}

/// The top [`STACK_TOP_WORDS`] words of the user stack at the syscall (the wrapper's return
/// address is among them, whatever the wrapper pushed first); zeros where unreadable.
pub const STACK_TOP_WORDS: usize = 8;

#[inline(always)]
pub fn stack_top() -> [u64; STACK_TOP_WORDS] {
    match user_sp() {
        Some(sp) => unsafe { bpf_probe_read_user(sp as *const [u64; STACK_TOP_WORDS]) }.unwrap_or([0; STACK_TOP_WORDS]),
        None => [0; STACK_TOP_WORDS],
    }
}

#[tracepoint]
pub fn sys_enter_mmap(ctx: TracePointContext) -> u32 {
    if rss_mode() {
        // Pages are counted as they fault in, not mappings as they are made.
        return 0;
    }
    let flags = arg(&ctx, 3);
    if flags & MAP_ANONYMOUS == 0 {
        if arg(&ctx, 2) & PROT_EXEC != 0 && (arg(&ctx, 4) as i64) >= 0 && in_scope(current()) {
            code_mapped();
        }
        return 0;
    }
    if flags & MAP_STACK != 0 {
        if in_scope(current()) {
            count(Counter::StackMappingsSkipped);
        }
        return 0;
    }
    // `new_len` carries the protection to sys_exit.
    save(MemEventKind::Mmap, 0, arg(&ctx, 1), arg(&ctx, 2));
    0
}

#[tracepoint]
pub fn sys_exit_mmap(ctx: TracePointContext) -> u32 {
    let Some(args) = take(MemEventKind::Mmap) else { return 0 };
    let ret = arg(&ctx, 0);
    if (ret as i64) < 0 && (ret as i64) > -4096 {
        return 0;
    }
    let tgid = (current() >> 32) as u32;
    if crate::runtime::heap_mapped(tgid, ret, page_round(args.len), &stack_top()) {
        // A runtime's heap: its pages are recorded as they are first touched.
        return 0;
    }
    let (stack_id, leaf_ret) = if dwarf_unwind() {
        let id = match Regs::current_user() {
            Some(regs) => unwind(tgid, regs, false),
            None => NO_STACK,
        };
        // The frameless syscall wrapper's return address, kept beside the stack: a process
        // walked before its tables were complete (just exec'd, its C library not tabled yet)
        // goes by frame pointers there, which skip the wrapper's caller; userspace uses it only
        // where the walk lost it.
        (if id == NO_STACK { -1 } else { id as i64 }, leaf_return_address())
    } else {
        let id = match ctx.get_stackid(&STACKS, BPF_F_USER_STACK as u64) {
            Ok(id) => id,
            Err(_) => {
                count(Counter::StackIdFailed);
                -1
            }
        };
        (id, leaf_return_address())
    };
    emit(MemEvent {
        kind: MemEventKind::Mmap as u32,
        tgid,
        addr: ret,
        len: page_round(args.len),
        new_addr: args.new_len,
        new_len: 0,
        ts_ns: unsafe { bpf_ktime_get_ns() },
        stack_id,
        leaf_ret,
    });
    0
}

#[tracepoint]
pub fn sys_enter_munmap(ctx: TracePointContext) -> u32 {
    if rss_mode() {
        crate::rss::release(arg(&ctx, 0), arg(&ctx, 1));
        return 0;
    }
    save(MemEventKind::Munmap, arg(&ctx, 0), arg(&ctx, 1), 0);
    0
}

#[tracepoint]
pub fn sys_exit_munmap(ctx: TracePointContext) -> u32 {
    let Some(args) = take(MemEventKind::Munmap) else { return 0 };
    if arg(&ctx, 0) != 0 {
        return 0;
    }
    if crate::runtime::heap_unmapped((current() >> 32) as u32, args.addr, args.len) {
        crate::rss::release(args.addr, args.len);
    }
    emit(MemEvent {
        kind: MemEventKind::Munmap as u32,
        tgid: (current() >> 32) as u32,
        addr: args.addr,
        len: page_round(args.len),
        new_addr: 0,
        new_len: 0,
        ts_ns: unsafe { bpf_ktime_get_ns() },
        stack_id: -1,
        leaf_ret: 0,
    });
    0
}

/// mprotect: a reservation committed (or decommitted) range by range.
#[tracepoint]
pub fn sys_enter_mprotect(ctx: TracePointContext) -> u32 {
    if rss_mode() {
        return 0;
    }
    save(MemEventKind::Mprotect, arg(&ctx, 0), arg(&ctx, 1), arg(&ctx, 2));
    0
}

#[tracepoint]
pub fn sys_exit_mprotect(ctx: TracePointContext) -> u32 {
    exit_quietly(&ctx, MemEventKind::Mprotect)
}

/// The exit of a saved mprotect or madvise: on success, its range (and mprotect's `prot`, saved
/// as `new_len`) goes to userspace. Loaders and JITs call them often, and nothing waits on them:
/// no wakeup of their own.
#[inline(always)]
fn exit_quietly(ctx: &TracePointContext, kind: MemEventKind) -> u32 {
    let Some(args) = take(kind) else { return 0 };
    if arg(ctx, 0) != 0 {
        return 0;
    }
    emit_with(
        MemEvent {
            addr: args.addr,
            len: page_round(args.len),
            new_addr: args.new_len,
            ..event(kind, (current() >> 32) as u32)
        },
        RB_NO_WAKEUP,
    );
    0
}

/// madvise dropping pages (called from `crate::rss::sys_enter_madvise` in allocation mode).
#[inline(always)]
pub fn madvise_entered(addr: u64, len: u64) {
    save(MemEventKind::Madvise, addr, len, 0);
}

#[tracepoint]
pub fn sys_exit_madvise(ctx: TracePointContext) -> u32 {
    exit_quietly(&ctx, MemEventKind::Madvise)
}

#[tracepoint]
pub fn sys_enter_mremap(ctx: TracePointContext) -> u32 {
    if rss_mode() {
        // The pages move without faulting: counted as released (an undercount until touched
        // again at the new place is cheaper than a page walk).
        crate::rss::release(arg(&ctx, 0), arg(&ctx, 1));
        return 0;
    }
    save(MemEventKind::Mremap, arg(&ctx, 0), arg(&ctx, 1), arg(&ctx, 2));
    0
}

#[tracepoint]
pub fn sys_exit_mremap(ctx: TracePointContext) -> u32 {
    let Some(args) = take(MemEventKind::Mremap) else { return 0 };
    let ret = arg(&ctx, 0);
    if (ret as i64) < 0 && (ret as i64) > -4096 {
        return 0;
    }
    emit(MemEvent {
        kind: MemEventKind::Mremap as u32,
        tgid: (current() >> 32) as u32,
        addr: args.addr,
        len: page_round(args.len),
        new_addr: ret,
        new_len: page_round(args.new_len),
        ts_ns: unsafe { bpf_ktime_get_ns() },
        stack_id: -1,
        leaf_ret: 0,
    });
    0
}
