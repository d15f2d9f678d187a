//! Which threads are profiled: the target cgroup v2 and its descendants, or one process.
//! Set by userspace at load time as read-only globals.

use aya_ebpf::helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_pid_tgid};
use memprof_common::{FILTER_CGROUP, FILTER_TGID};

#[unsafe(no_mangle)]
static FILTER_MODE: u32 = 0;
#[unsafe(no_mangle)]
static TARGET_CGROUP_ID: u64 = 0;
#[unsafe(no_mangle)]
static TARGET_CGROUP_LEVEL: u32 = 0;
#[unsafe(no_mangle)]
static TARGET_TGID: u32 = 0;
/// `MODE_ALLOCATIONS` or `MODE_RSS`.
#[unsafe(no_mangle)]
static MODE: u32 = 0;

#[inline(always)]
pub fn rss_mode() -> bool {
    global(&MODE) == memprof_common::MODE_RSS
}

/// `UNWIND_FP` (`bpf_get_stackid`) or `UNWIND_DWARF` (the CFI walk in `unwind.rs`).
#[unsafe(no_mangle)]
static UNWINDER: u32 = 0;

#[inline(always)]
pub fn dwarf_unwind() -> bool {
    global(&UNWINDER) == memprof_common::UNWIND_DWARF
}

/// Mean bytes between samples; 0: record every allocation.
#[unsafe(no_mangle)]
static SAMPLE_BYTES: u64 = 0;

#[inline(always)]
pub fn sample_bytes() -> u64 {
    global(&SAMPLE_BYTES)
}

/// 1: the allocation entry programs are attached as uprobe sessions (kernel 6.13+): each runs
/// at its function's entry and, when the entry returned 0, at its return.
#[unsafe(no_mangle)]
static SESSIONS: u32 = 0;

#[inline(always)]
pub fn sessions() -> bool {
    global(&SESSIONS) == 1
}

#[inline(always)]
fn global<T: Copy>(v: &T) -> T {
    unsafe { core::ptr::read_volatile(v) }
}

/// True when the current thread belongs to the target.
#[inline(always)]
pub fn in_scope(pid_tgid: u64) -> bool {
    match global(&FILTER_MODE) {
        FILTER_CGROUP => {
            let level = global(&TARGET_CGROUP_LEVEL) as i32;
            unsafe { bpf_get_current_ancestor_cgroup_id(level) == global(&TARGET_CGROUP_ID) }
        }
        FILTER_TGID => (pid_tgid >> 32) as u32 == global(&TARGET_TGID),
        _ => false,
    }
}

#[inline(always)]
pub fn current() -> u64 {
    bpf_get_current_pid_tgid()
}
