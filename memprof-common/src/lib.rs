//! Types shared by the kernel side (`memprof-ebpf`) and the userspace side (`memprof`).
//!
//! Every type here is `#[repr(C)]` with explicit padding so both sides agree on its layout, and
//! every size is checked at compile time. With the `user` feature the types are `aya::Pod`, so
//! userspace can read them straight out of BPF maps.
#![cfg_attr(not(test), no_std)]

pub mod python;
pub mod runtime;
pub mod sampling;
pub mod unwind;
pub mod v8;

/// Deepest user stack recorded (the kernel's default `perf_event_max_stack`).
pub const MAX_STACK_DEPTH: usize = 127;

/// Which allocator entry point produced a record.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AllocKind {
    Malloc = 0,
    Calloc = 1,
    Realloc = 2,
    Reallocarray = 3,
    PosixMemalign = 4,
    AlignedAlloc = 5,
    Memalign = 6,
    Valloc = 7,
    Pvalloc = 8,
    Mmap = 9,
    /// `--mode rss`: a page made resident by a page fault.
    Page = 10,
    /// CPython's object allocator (`_PyObject_Malloc(ctx, n)` and the like, reached through the
    /// `PyObject_*` and `PyMem_*` domains): its functions take a context first.
    PyMalloc = 11,
    PyCalloc = 12,
    PyRealloc = 13,
}

impl AllocKind {
    pub const ALL: [AllocKind; 14] = [
        AllocKind::Malloc,
        AllocKind::Calloc,
        AllocKind::Realloc,
        AllocKind::Reallocarray,
        AllocKind::PosixMemalign,
        AllocKind::AlignedAlloc,
        AllocKind::Memalign,
        AllocKind::Valloc,
        AllocKind::Pvalloc,
        AllocKind::Mmap,
        AllocKind::Page,
        AllocKind::PyMalloc,
        AllocKind::PyCalloc,
        AllocKind::PyRealloc,
    ];

    pub const fn from_u32(v: u32) -> Option<AllocKind> {
        if (v as usize) < Self::ALL.len() {
            Some(Self::ALL[v as usize])
        } else {
            None
        }
    }

    /// The C function (or syscall) name.
    pub const fn name(self) -> &'static str {
        match self {
            AllocKind::Malloc => "malloc",
            AllocKind::Calloc => "calloc",
            AllocKind::Realloc => "realloc",
            AllocKind::Reallocarray => "reallocarray",
            AllocKind::PosixMemalign => "posix_memalign",
            AllocKind::AlignedAlloc => "aligned_alloc",
            AllocKind::Memalign => "memalign",
            AllocKind::Valloc => "valloc",
            AllocKind::Pvalloc => "pvalloc",
            AllocKind::Mmap => "mmap",
            AllocKind::Page => "page",
            AllocKind::PyMalloc => "PyObject_Malloc",
            AllocKind::PyCalloc => "PyObject_Calloc",
            AllocKind::PyRealloc => "PyObject_Realloc",
        }
    }
}

/// Key of the live-allocation map: one outstanding block of one process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AllocKey {
    pub tgid: u32,
    pub _pad: u32,
    pub addr: u64,
}

/// Value of the live-allocation map.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AllocInfo {
    pub size: u64,
    /// `bpf_ktime_get_ns()` at allocation (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// Bytes this record stands for: `size`, or with sampling the unbiased estimate.
    pub weight: u64,
    /// Id in the stack-trace map.
    pub stack_id: u32,
    /// An [`AllocKind`].
    pub kind: u32,
    /// Allocations this record stands for (1 without sampling).
    pub count_weight: u32,
    pub _pad: u32,
    /// The stack key's extra leaf frame (see [`StackKey::leaf_ret`]).
    pub leaf_ret: u64,
}

/// Key of the per-stack totals map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackKey {
    pub tgid: u32,
    pub stack_id: u32,
    /// A return address the frame-pointer walk misses, or 0: when the stack is taken inside a
    /// leaf function without a frame of its own (a page fault in libc's memset, a syscall
    /// wrapper), the word at the user stack pointer is its return address into the caller.
    /// Userspace keeps it as the second frame only if it points into code.
    pub leaf_ret: u64,
}

/// Value of the per-stack totals map. Updated with atomic adds by the kernel, so a snapshot
/// reads one entry per stack instead of walking every allocation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct StackTotals {
    /// Bytes allocated at this stack and not yet freed.
    pub live_bytes: i64,
    /// Allocations made at this stack and not yet freed.
    pub live_count: i64,
    /// Bytes ever allocated at this stack (since attach).
    pub total_bytes: u64,
    /// Allocations ever made at this stack (since attach).
    pub total_count: u64,
}

/// An allocator call in progress on one thread (entry probe → return probe).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct InFlight {
    /// Requested size.
    pub size: u64,
    /// realloc: the old pointer; posix_memalign: the out-parameter address.
    pub aux: u64,
    /// User stack pointer at entry: tells the outermost call from nested ones and stale entries.
    pub sp: u64,
    /// When the outermost call started.
    pub ts_ns: u64,
    /// An [`AllocKind`], or [`INFLIGHT_RECORDED`] once the block was recorded while further
    /// returns at the same stack pointer are still due (tail calls).
    pub kind: u32,
    /// Returns still due at this stack pointer beyond the first: a probed function that
    /// tail-calls another (glibc's reallocarray → realloc) returns through both return probes.
    pub extra_returns: u32,
}

/// [`InFlight::kind`] after the block was recorded.
pub const INFLIGHT_RECORDED: u32 = u32::MAX;
/// Flag in [`InFlight::kind`]: sampling decided not to record this call's block (the call is
/// still followed, so nested calls, the allocator's own mmaps and realloc's release of the old
/// block are still handled).
pub const INFLIGHT_UNSAMPLED: u32 = 1 << 31;
/// Flag in [`InFlight::kind`] (with uprobe sessions): an unsampled call whose return is not
/// followed (its entry told the kernel to skip the return program). `aux` then holds the
/// call's return address and `size` the probed function's address: the record stands for a call in progress only while that address
/// is still in its stack slot and the call is young (see the kernel side's `alloc.rs`).
pub const INFLIGHT_NO_RETURN: u32 = 1 << 30;

/// Arguments of an mmap/munmap/mremap syscall, saved at `sys_enter` for `sys_exit`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SyscallArgs {
    pub addr: u64,
    pub len: u64,
    pub new_len: u64,
    /// A [`MemEventKind`].
    pub kind: u32,
    pub _pad: u32,
}

/// What a [`MemEvent`] reports.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemEventKind {
    Mmap = 1,
    Munmap = 2,
    Mremap = 3,
    /// A process of the target called execve: its old image's memory is gone. `tgid` is it.
    Exec = 4,
    /// The kernel's OOM killer chose `tgid` as its victim (any process: userspace filters).
    OomVictim = 5,
    /// A process of the target maps a file executable (dlopen, exec): new code that may define
    /// allocator functions.
    CodeMapped = 6,
    /// `--mode rss`: a released range too large to walk in the kernel ([`RSS_RELEASE_PAGES_MAX`]):
    /// userspace retires its pages.
    RangeReleased = 7,
    /// A new stack with runtime frames was stored (`stack_id`): userspace names its runtime
    /// frames at once, while the process's memory can still be read.
    NewStack = 8,
    /// `mprotect(addr, len, prot)` outside any allocator call; `new_addr` is `prot`.
    Mprotect = 9,
    /// `madvise(addr, len, DONTNEED|FREE|REMOVE)` outside any allocator call: the range's pages
    /// are dropped (a later touch brings new ones).
    Madvise = 10,
}

/// Granule of [`DiscardKey`]: 2 MiB, 512 pages, one bit each in [`DiscardBits`].
pub const DISCARD_GRANULE_SHIFT: u32 = 21;

/// Pages of a process's own mappings that `madvise` dropped, per 2 MiB of address space: the
/// page-fault program records a page whose bit is set when it is touched again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DiscardKey {
    pub tgid: u32,
    pub _pad: u32,
    /// `addr >> DISCARD_GRANULE_SHIFT`.
    pub granule: u64,
}

/// One bit per 4 KiB page of a granule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiscardBits {
    pub bits: [u64; 8],
}

impl DiscardBits {
    /// The bit of the page holding `addr`: (word, mask).
    #[inline(always)]
    pub fn slot(addr: u64) -> (usize, u64) {
        let page = (addr >> 12) & 511;
        ((page >> 6) as usize, 1u64 << (page & 63))
    }
}

/// A mapping change, sent to userspace through the ring buffer. Anonymous mappings are few and
/// can be split by partial munmaps, so userspace keeps them in an interval map.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MemEvent {
    /// A [`MemEventKind`].
    pub kind: u32,
    pub tgid: u32,
    pub addr: u64,
    pub len: u64,
    /// mremap: the new address and length; mmap and mprotect: `new_addr` is the protection.
    pub new_addr: u64,
    pub new_len: u64,
    pub ts_ns: u64,
    /// mmap: stack id, or -1 when the stack could not be recorded.
    pub stack_id: i64,
    /// mmap: the word at the user stack pointer at the syscall, which in a libc syscall wrapper
    /// without a frame of its own is the return address into the wrapper's caller — the frame a
    /// frame-pointer walk from a leaf misses. Userspace keeps it only if it points into code.
    pub leaf_ret: u64,
}

/// Indices of the per-CPU lost/diagnostic counters. Everything lost is counted where it happens.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Counter {
    /// Allocation not recorded: the live-allocation map was full.
    AllocsMapFull = 0,
    /// Allocation not recorded: the per-stack totals map was full.
    StacksMapFull = 1,
    /// `bpf_get_stackid` failed (stack map full or hash collision): recorded under stack -1.
    StackIdFailed = 2,
    /// Return probe without a matching entry (entry missed or map full).
    MissedEntry = 3,
    /// Entry without a return: a stale in-flight record was replaced.
    MissedReturn = 4,
    /// In-flight map full: the call was not tracked.
    InFlightMapFull = 5,
    /// Ring buffer full: an mmap/munmap/mremap event was dropped.
    EventsDropped = 6,
    /// free() of an address not in the map (allocated before attach, or not tracked).
    FreeUnknown = 7,
    /// Allocations recorded.
    Allocs = 8,
    /// Frees matched to a recorded allocation.
    Frees = 9,
    /// Nested allocator calls ignored (calloc→malloc and the like): not losses.
    Nested = 10,
    /// mmap/munmap/mremap issued inside an allocator call: counted by the allocator call.
    SyscallInsideAllocator = 11,
    /// Failed allocations (NULL / non-zero return).
    FailedAllocs = 12,
    /// Address reported twice without a free in between (a free we did not see).
    Overwritten = 13,
    /// Thread stacks (`MAP_STACK` mappings) not tracked: bounded by the thread count, mostly
    /// never touched, and not what a leak hunt looks for.
    StackMappingsSkipped = 14,
    /// Allocator functions entered by a tail call from another (counted once).
    TailCalls = 15,
    /// Allocations not recorded by sampling (`--sample-bytes`): expected, not a loss.
    Unsampled = 16,
    /// `bpf_get_stackid` hash collisions, recovered by recording the stack without its first
    /// frame (kept beside it); `stack_id_failed` counts the ones that could not be recovered.
    StackCollisions = 17,
    /// `--unwind dwarf`: a stack taken in a process whose unwind tables were not loaded yet
    /// (walked with frame pointers only).
    UnwindNoTables = 18,
    /// `--unwind dwarf`: stacks unwound (one per recorded allocation, mapping or page).
    StacksUnwound = 19,
    /// `--unwind dwarf`: stacks the unwinder could not follow to the outermost frame.
    StacksTruncated = 20,
    /// Activations of a Python eval loop the native walk passed and the Python walker handled.
    PyActivations = 21,
    /// Python frames recorded.
    PyFrames = 22,
    /// Python walk failed: the thread's `PyThreadState` was NULL or unreadable (native frames
    /// kept).
    PyNoThreadState = 23,
    /// Python walk failed: a frame (or `_PyCFrame`) was unreadable (native frames kept).
    PyReadFailed = 24,
    /// Python frames whose activation did not match the native stack (an eval activation the
    /// native walk did not recognise): placed next to the nearest one, or left out.
    PyMisaligned = 25,
    /// Python frames cut by the stack depth limit.
    PyTruncated = 26,
    /// pymalloc arenas mapped whose pages are counted as first touched (optimised builds).
    PyArenas = 27,
    /// pymalloc arenas that could not be registered (map full, or too large): counted as one
    /// mapping each instead.
    PyArenasUnregistered = 28,
    /// JS frames recorded (V8).
    V8Frames = 29,
    /// A frame that looked like a JS frame could not be read through (its function or
    /// SharedFunctionInfo unreadable or of the wrong type): its native pc kept.
    V8ReadFailed = 30,
    /// JS frames cut by the stack depth limit.
    V8Truncated = 31,
}

pub const COUNTER_COUNT: u32 = 32;

impl Counter {
    pub const ALL: [Counter; 32] = [
        Counter::AllocsMapFull,
        Counter::StacksMapFull,
        Counter::StackIdFailed,
        Counter::MissedEntry,
        Counter::MissedReturn,
        Counter::InFlightMapFull,
        Counter::EventsDropped,
        Counter::FreeUnknown,
        Counter::Allocs,
        Counter::Frees,
        Counter::Nested,
        Counter::SyscallInsideAllocator,
        Counter::FailedAllocs,
        Counter::Overwritten,
        Counter::StackMappingsSkipped,
        Counter::TailCalls,
        Counter::Unsampled,
        Counter::StackCollisions,
        Counter::UnwindNoTables,
        Counter::StacksUnwound,
        Counter::StacksTruncated,
        Counter::PyActivations,
        Counter::PyFrames,
        Counter::PyNoThreadState,
        Counter::PyReadFailed,
        Counter::PyMisaligned,
        Counter::PyTruncated,
        Counter::PyArenas,
        Counter::PyArenasUnregistered,
        Counter::V8Frames,
        Counter::V8ReadFailed,
        Counter::V8Truncated,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Counter::AllocsMapFull => "allocs_map_full",
            Counter::StacksMapFull => "stacks_map_full",
            Counter::StackIdFailed => "stack_id_failed",
            Counter::MissedEntry => "missed_entry",
            Counter::MissedReturn => "missed_return",
            Counter::InFlightMapFull => "inflight_map_full",
            Counter::EventsDropped => "events_dropped",
            Counter::FreeUnknown => "free_unknown",
            Counter::Allocs => "allocs",
            Counter::Frees => "frees",
            Counter::Nested => "nested_calls",
            Counter::SyscallInsideAllocator => "syscalls_inside_allocator",
            Counter::FailedAllocs => "failed_allocs",
            Counter::Overwritten => "overwritten",
            Counter::StackMappingsSkipped => "stack_mappings_skipped",
            Counter::TailCalls => "tail_calls",
            Counter::Unsampled => "unsampled",
            Counter::StackCollisions => "stack_collisions",
            Counter::UnwindNoTables => "unwind_no_tables",
            Counter::StacksUnwound => "stacks_unwound",
            Counter::StacksTruncated => "stacks_truncated",
            Counter::PyActivations => "python_activations",
            Counter::PyFrames => "python_frames",
            Counter::PyNoThreadState => "python_walk_failed_no_thread_state",
            Counter::PyReadFailed => "python_walk_failed_read",
            Counter::PyMisaligned => "python_walk_failed_misaligned",
            Counter::PyTruncated => "python_walk_failed_depth",
            Counter::PyArenas => "python_arenas_paged",
            Counter::PyArenasUnregistered => "python_arenas_unregistered",
            Counter::V8Frames => "v8_frames",
            Counter::V8ReadFailed => "v8_walk_failed_read",
            Counter::V8Truncated => "v8_walk_failed_depth",
        }
    }

    /// Whether the counter stands for data memprof lost (as opposed to a plain statistic).
    pub const fn is_loss(self) -> bool {
        matches!(
            self,
            Counter::AllocsMapFull
                | Counter::StacksMapFull
                | Counter::StackIdFailed
                | Counter::MissedEntry
                | Counter::MissedReturn
                | Counter::InFlightMapFull
                | Counter::EventsDropped
                | Counter::Overwritten
        )
    }
}

/// Flag in [`StackKey::leaf_ret`]: the address (without the flag) is the stack's missing LEAF
/// frame, to put before the recorded ones. Set when `bpf_get_stackid` hit a hash collision and
/// the stack was recorded again without its first frame (which lands in another bucket).
pub const LEAF_PREPEND: u64 = 1 << 63;

/// Recording modes (read-only global `MODE`).
pub const MODE_ALLOCATIONS: u32 = 0;
/// `--mode rss`: no uprobes; pages made resident by page faults, released by munmap/madvise.
pub const MODE_RSS: u32 = 1;
/// `--mode rss`: ranges released in the kernel page by page up to this many pages; larger
/// ones go to userspace.
pub const RSS_RELEASE_PAGES_MAX: u64 = 512;

/// Stack walkers (read-only global `UNWINDER`): the kernel's frame-pointer walk
/// (`bpf_get_stackid`), or memprof's CFI walk over tables from `.eh_frame`.
pub const UNWIND_FP: u32 = 0;
pub const UNWIND_DWARF: u32 = 1;

/// Scope filter modes (read-only global `FILTER_MODE`).
pub const FILTER_CGROUP: u32 = 1;
pub const FILTER_TGID: u32 = 2;

macro_rules! assert_size {
    ($t:ty, $n:expr) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $n);
    };
}
assert_size!(AllocKey, 16);
assert_size!(AllocInfo, 48);
assert_size!(StackKey, 16);
assert_size!(StackTotals, 32);
assert_size!(InFlight, 40);
assert_size!(SyscallArgs, 32);
assert_size!(MemEvent, 64);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for AllocKey {}
    unsafe impl aya::Pod for AllocInfo {}
    unsafe impl aya::Pod for StackKey {}
    unsafe impl aya::Pod for StackTotals {}
    unsafe impl aya::Pod for InFlight {}
    unsafe impl aya::Pod for MemEvent {}
    unsafe impl aya::Pod for DiscardKey {}
    unsafe impl aya::Pod for DiscardBits {}
}
