//! Stack unwinding without frame pointers: compact CFI tables (derived from `.eh_frame` by
//! userspace) that the kernel side walks, and the stacks it records.
//!
//! x86-64 only. One [`UnwindRow`] says, for the code from its `pc` up to the next row's, how to
//! find the canonical frame address (CFA) and the caller's `%rbp`; the return address is always
//! at `CFA - 8`. Rows of one object are sorted by `pc` (the object's virtual address, which fits
//! in 32 bits for every object we table) and live in one big array shared by all processes; a
//! process's [`ProcUnwind`] maps its executable mappings to their slice of that array.

/// Slots of a recorded stack: a native frame takes one, a runtime frame two (see
/// [`crate::runtime`]). The native walk takes at most this many steps.
pub const UNWIND_MAX_DEPTH: usize = 256;

/// CFA = `%rsp` + `cfa_offset`.
pub const CFA_RSP: u8 = 0;
/// CFA = `%rbp` + `cfa_offset`.
pub const CFA_RBP: u8 = 1;
/// A PLT entry: CFA = `%rsp` + 8, + 8 more when `(pc & 15) >= cfa_offset` (the standard x86-64
/// lazy-PLT `DW_CFA_def_cfa_expression`; the entry's `push` ends at a fixed offset in its 16-byte
/// slot). Here `cfa_offset` is not an offset but that threshold: binutils emits 11 for the plain
/// `.plt`, 9 for the IBT `.plt` (`endbr64; push; jmp`, e.g. distributions building with
/// `-fcf-protection`), 10 for IBT+BND and 5 for BND. `pc & 15` is the same for the runtime pc
/// and the object address (biases are page-aligned).
pub const CFA_PLT: u8 = 2;
/// The outermost frame (the return address is undefined: `_start`, a thread's first frame).
pub const CFA_END: u8 = 3;
/// No CFI covers this code (a gap between FDEs, code without `.eh_frame`): fall back to the
/// frame-pointer chain.
pub const CFA_NONE: u8 = 4;
/// A CFA rule the kernel side cannot follow (an unknown DWARF expression, another register):
/// the walk stops here and the stack is marked truncated.
pub const CFA_UNSUPPORTED: u8 = 5;

/// The caller's `%rbp` is the current `%rbp` (not saved by this frame, or already restored).
pub const RBP_SAME: u8 = 0;
/// The caller's `%rbp` was saved at CFA + `rbp_offset`.
pub const RBP_AT_CFA: u8 = 1;

/// One row of a CFI table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindRow {
    /// First address this row covers (object virtual address).
    pub pc: u32,
    pub cfa_offset: i32,
    pub rbp_offset: i16,
    /// One of the `CFA_*` constants.
    pub cfa_kind: u8,
    /// One of the `RBP_*` constants.
    pub rbp_rule: u8,
}

/// Most executable mappings one process may have tabled.
pub const MAX_EXEC_MAPPINGS: usize = 256;

/// One executable mapping of a process and its slice of the row array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecMapping {
    pub start: u64,
    pub end: u64,
    /// `pc - bias` is the object virtual address the rows use.
    pub bias: u64,
    pub rows_start: u32,
    /// 0: no table for this object (the walk uses frame pointers through it).
    pub rows_len: u32,
}

/// Value of the per-process unwind map: executable mappings sorted by `start`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcUnwind {
    pub count: u32,
    /// Changes whenever userspace rewrites the list (execve, dlopen): the kernel side's cache of
    /// looked-up rows is keyed by it.
    pub generation: u32,
    pub mappings: [ExecMapping; MAX_EXEC_MAPPINGS],
}

/// Entries of the kernel side's per-CPU cache of looked-up rows (a power of two).
pub const ROW_CACHE_ENTRIES: u32 = 4096;

/// One entry of that cache: the row for return address `pc` of process `tgid`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RowCacheEntry {
    pub pc: u64,
    pub tgid: u32,
    pub generation: u32,
    pub row: UnwindRow,
    pub _pad: u32,
}

/// The walk reached the outermost frame (undefined return address, or a zero frame pointer).
pub const STACK_COMPLETE: u32 = 1;
/// The walk stopped at [`UNWIND_MAX_DEPTH`] frames.
pub const STACK_TRUNC_DEPTH: u32 = 1 << 1;
/// Reading the user stack failed (paged out, or a bad CFA).
pub const STACK_TRUNC_READ: u32 = 1 << 2;
/// A frame in code without CFI whose frame pointer led nowhere.
pub const STACK_TRUNC_NO_INFO: u32 = 1 << 3;
/// A CFI rule the kernel side cannot follow.
pub const STACK_TRUNC_UNSUPPORTED: u32 = 1 << 4;
/// At least one frame was stepped with the frame pointer (code without CFI, e.g. JIT code).
pub const STACK_USED_FP: u32 = 1 << 5;
/// The first address is the exact instruction (page fault, syscall), not a return address.
pub const STACK_FIRST_EXACT: u32 = 1 << 6;
/// A runtime walk failed at some activation: its native frame was kept instead.
pub const STACK_RT_FAILED: u32 = 1 << 7;
/// Runtime frames did not line up with the native stack: some were placed next to the nearest
/// activation, or left out.
pub const STACK_RT_MISALIGNED: u32 = 1 << 8;
/// Truncation flags.
pub const STACK_TRUNCATED: u32 =
    STACK_TRUNC_DEPTH | STACK_TRUNC_READ | STACK_TRUNC_NO_INFO | STACK_TRUNC_UNSUPPORTED;

/// A user stack recorded by the unwinder (value of the stack map in `--unwind dwarf` mode).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UnwoundStack {
    pub len: u32,
    /// `STACK_*` flags.
    pub flags: u32,
    /// Leaf first: native addresses, and runtime frames (two slots each, see
    /// [`crate::runtime`]).
    pub ips: [u64; UNWIND_MAX_DEPTH],
}

const _: () = assert!(core::mem::size_of::<UnwindRow>() == 12);
const _: () = assert!(core::mem::size_of::<RowCacheEntry>() == 32);
const _: () = assert!(core::mem::size_of::<ExecMapping>() == 32);
const _: () = assert!(core::mem::size_of::<ProcUnwind>() == 8 + 32 * MAX_EXEC_MAPPINGS);
const _: () = assert!(core::mem::size_of::<UnwoundStack>() == 8 + 8 * UNWIND_MAX_DEPTH);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for UnwindRow {}
    unsafe impl aya::Pod for ExecMapping {}
    unsafe impl aya::Pod for ProcUnwind {}
    unsafe impl aya::Pod for UnwoundStack {}
}
