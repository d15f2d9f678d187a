//! Process lifecycle events: exec (the old image's allocations are gone; new objects may need
//! probes) and the OOM killer's victim (to capture evidence before the process dies).

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use memprof_common::MemEventKind;

use crate::{
    mmap::{emit, event},
    scope::{current, in_scope},
};

#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    let id = current();
    if in_scope(id) {
        crate::runtime::exec((id >> 32) as u32);
        emit(event(MemEventKind::Exec, (id >> 32) as u32));
    }
    0
}

/// `oom:mark_victim` runs in the context of the task that triggered the OOM kill, not the victim,
/// so there is no scope filter here: `pid` (offset 8 in every kernel's format) is the victim.
#[tracepoint]
pub fn oom_mark_victim(ctx: TracePointContext) -> u32 {
    let pid = unsafe { ctx.read_at::<i32>(8) }.unwrap_or(0);
    if pid > 0 {
        emit(event(MemEventKind::OomVictim, pid as u32));
    }
    0
}
