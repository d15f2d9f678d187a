//! CPython's room: what the kernel-side Python walker (`memprof-ebpf/src/python.rs`) needs to
//! know of one process, and how it records a Python frame.
//!
//! Userspace (`memprof/src/runtime/python/`) fills a [`PyProc`] per process from the
//! interpreter's version tables and the process's memory; every offset in it was validated
//! against that process before it is loaded.
//!
//! A Python frame is two stack slots: `runtime_slot(RUNTIME_PYTHON, code object address)`, then
//! [`py_frame_detail`] (the instruction offset in code units, and the code object's
//! `co_firstlineno` and a tag of its `co_qualname` pointer, which let userspace check that the
//! object at that address is still the same code when it resolves it: a code object can be
//! freed and its address reused by another).

/// Where the thread's `PyThreadState` is: `*(fs_base + tss_a)`.
pub const PY_TSS_DIRECT: u32 = 1;
/// Where the thread's `PyThreadState` is: `*(*(fs_base + tss_a) + tss_b)`.
pub const PY_TSS_INDIRECT: u32 = 2;

/// 3.9, 3.10: each activation of the eval loop runs one `PyFrameObject`; `PyThreadState.frame`
/// is the newest, `f_back` links them.
pub const PY_WALK_FRAME_PER_CALL: u32 = 1;
/// 3.11: each activation keeps a `_PyCFrame` on its C stack (`PyThreadState.cframe`, linked by
/// `previous`) whose `current_frame` is its newest `_PyInterpreterFrame`; its frames run back to
/// the one marked `is_entry`.
pub const PY_WALK_CFRAME: u32 = 2;
/// 3.12+: each activation pushes a shim frame owned by the C stack (a local of the eval
/// function); its frames run back to that shim.
pub const PY_WALK_SHIM: u32 = 3;

/// `f_lasti` is an `int` in bytes (3.9).
pub const PY_LASTI_BYTES: u32 = 1;
/// `f_lasti` is an `int` in code units (3.10).
pub const PY_LASTI_UNITS: u32 = 2;
/// The frame holds a pointer into the code object's `co_code_adaptive` (3.11+).
pub const PY_LASTI_PTR: u32 = 3;

/// Bytes of a frame read at once (every field the walker needs lies below this).
pub const PY_FRAME_READ_MAX: u32 = 128;
/// `firstlineno` recorded when the code object could not be read.
pub const PY_NO_CHECK: u32 = u32::MAX;
/// A field the version does not have.
pub const PY_NONE: u32 = u32::MAX;

/// One Python process, as the kernel-side walker needs it (value of `PY_PROCS`, key: tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyProc {
    /// `PY_WALK_*`.
    pub walk: u32,
    /// `PY_LASTI_*`.
    pub lasti: u32,
    /// `PY_TSS_*`.
    pub tss_mode: u32,
    /// `PY_VERSION_HEX >> 16` (0x030b for 3.11), for the logs.
    pub version: u32,
    pub tss_a: i64,
    pub tss_b: i64,
    /// `PyThreadState` → `frame` (3.9/3.10), `cframe` (3.11/3.12) or `current_frame` (3.13+).
    pub tstate_frame: u32,
    /// `_PyCFrame.current_frame` (3.11/3.12: the thread's newest frame is
    /// `tstate->cframe->current_frame`), else [`PY_NONE`].
    pub cframe_current: u32,
    /// `_PyCFrame.previous` (3.11).
    pub cframe_previous: u32,
    /// The frame's code object (`f_code` / `f_executable`).
    pub frame_code: u32,
    /// The caller's frame (`f_back` / `previous`).
    pub frame_back: u32,
    /// `f_lasti`, `prev_instr` or `instr_ptr`.
    pub frame_instr: u32,
    /// 3.11: `is_entry`; 3.12+: `owner` (one byte); else [`PY_NONE`].
    pub frame_entry: u32,
    /// Bytes read per frame (≤ [`PY_FRAME_READ_MAX`]).
    pub frame_read: u32,
    /// The `frame_entry` byte of an activation's last frame (3.11: 1) or shim (3.12, 3.13:
    /// `FRAME_OWNED_BY_CSTACK`; 3.14: `FRAME_OWNED_BY_INTERPRETER`, also the owner of the
    /// thread's base frame, which has no caller and ends the chain).
    pub entry_value: u32,
    /// Offset of `co_qualname` (3.11+) or `co_name` in a code object (for [`py_name_tag`]).
    pub code_name: u32,
    /// Offset of `co_code_adaptive` in a code object (3.11+).
    pub code_adaptive: u32,
    /// Offset of `co_firstlineno` in a code object.
    pub code_firstlineno: u32,
    /// Applied to the code pointer (3.14's stack references carry tag bits).
    pub code_mask: u64,
    /// `[arena_start, arena_end)`: pymalloc's arena allocator function (runtime addresses), when
    /// the object allocator is not probed: an anonymous mmap returning into it is an arena,
    /// whose pages are counted as they are first touched ([`PyArena`]); 0, 0: arenas are
    /// ordinary mappings (or made inside a probed allocator call).
    pub arena_start: u64,
    pub arena_end: u64,
    /// `ARENA_SIZE`: only mappings of that length are arenas (the same allocator also maps
    /// the threads' frame-stack chunks, 3.11+).
    pub arena_len: u64,
}

/// Arenas are found by address in granules of `1 << PY_ARENA_GRANULE_SHIFT` bytes (256 KiB, the
/// smallest arena: 3.9's).
pub const PY_ARENA_GRANULE_SHIFT: u32 = 18;
/// Granules one arena may span (a 1 MiB arena at any page alignment spans 5).
pub const PY_ARENA_MAX_GRANULES: u64 = 8;

/// Key of `PY_ARENAS`: one granule of a process's address space.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PyArenaKey {
    pub tgid: u32,
    pub _pad: u32,
    pub granule: u64,
}

/// The pymalloc arenas overlapping a granule, `[start, end)` each (0, 0: none): arenas are at
/// least a granule long, so at most two overlap one (the end of one, the start of the next).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyArena {
    pub ranges: [[u64; 2]; 2],
}

impl PyArena {
    /// Adds `[start, end)`: ranges it overlaps go (arenas gone unseen), then it takes the first
    /// free slot, or the second.
    pub fn add(&mut self, start: u64, end: u64) {
        self.remove(start, end);
        let slot = if self.ranges[0][1] == 0 { 0 } else { 1 };
        self.ranges[slot] = [start, end];
    }

    /// Drops the ranges overlapping `[start, end)`; true when one was dropped.
    pub fn remove(&mut self, start: u64, end: u64) -> bool {
        let mut hit = false;
        let mut i = 0;
        while i < 2 {
            if self.ranges[i][1] != 0 && self.ranges[i][0] < end && start < self.ranges[i][1] {
                self.ranges[i] = [0, 0];
                hit = true;
            }
            i += 1;
        }
        hit
    }

    pub fn is_empty(&self) -> bool {
        self.ranges[0][1] == 0 && self.ranges[1][1] == 0
    }

    pub fn contains(&self, addr: u64) -> bool {
        (self.ranges[0][0] <= addr && addr < self.ranges[0][1]) || (self.ranges[1][0] <= addr && addr < self.ranges[1][1])
    }
}

/// Instruction offsets recorded are below this (larger ones are recorded as 0).
pub const PY_MAX_UNITS: u32 = 1 << 24;

/// 8 bits of a code object's name pointer (a string object, 16-byte aligned).
#[inline(always)]
pub const fn py_name_tag(name_ptr: u64) -> u32 {
    let x = name_ptr >> 4;
    ((x ^ (x >> 8) ^ (x >> 16) ^ (x >> 24) ^ (x >> 32)) & 0xff) as u32
}

/// The second slot of a Python frame: instruction offset (< [`PY_MAX_UNITS`]), name tag,
/// `co_firstlineno` (or [`PY_NO_CHECK`]: neither could be read).
#[inline(always)]
pub const fn py_frame_detail(instr_units: u32, name_tag: u32, firstlineno: u32) -> u64 {
    (instr_units & (PY_MAX_UNITS - 1)) as u64 | (((name_tag & 0xff) as u64) << 24) | ((firstlineno as u64) << 32)
}

/// (instruction offset in code units, name tag, `co_firstlineno` or [`PY_NO_CHECK`]) of a
/// second slot.
#[inline(always)]
pub const fn py_frame_detail_parts(detail: u64) -> (u32, u32, u32) {
    ((detail as u32) & (PY_MAX_UNITS - 1), (detail as u32) >> 24, (detail >> 32) as u32)
}

const _: () = assert!(core::mem::size_of::<PyProc>() == 112);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for PyProc {}
    unsafe impl aya::Pod for PyArenaKey {}
    unsafe impl aya::Pod for PyArena {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_detail_round_trips() {
        for (units, tag, first) in [(0, 0, 0), (PY_MAX_UNITS - 1, 0xff, PY_NO_CHECK), (1234, 0x5a, 77)] {
            assert_eq!(py_frame_detail_parts(py_frame_detail(units, tag, first)), (units, tag, first));
        }
        // Out-of-range parts do not spill into their neighbours.
        assert_eq!(py_frame_detail_parts(py_frame_detail(PY_MAX_UNITS, 0x1ff, 5)), (0, 0xff, 5));
        // Different strings (16-byte aligned, nearby) get different tags.
        let tags: std::collections::HashSet<u32> = (0..256u64).map(|i| py_name_tag(0x7f12_3456_0000 + i * 16)).collect();
        assert_eq!(tags.len(), 256);
    }

    #[test]
    fn arena_slots() {
        let mut a = PyArena::default();
        assert!(a.is_empty() && !a.contains(0x1000));
        // The end of one arena and the start of the next share a granule.
        a.add(0x1000, 0x2000);
        a.add(0x2000, 0x3000);
        assert!(a.contains(0x1fff) && a.contains(0x2000) && !a.contains(0x3000));
        // A new arena where one went unseen replaces it, whichever slot it held.
        a.add(0x2800, 0x3800);
        assert_eq!(a.ranges, [[0x1000, 0x2000], [0x2800, 0x3800]]);
        a.remove(0x1000, 0x2000);
        a.add(0x2000, 0x2900);
        assert_eq!(a.ranges, [[0x2000, 0x2900], [0, 0]]);
        assert!(a.remove(0x2000, 0x2001) && a.is_empty());
    }
}
