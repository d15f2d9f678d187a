//! The interface between the native unwinder and the runtime walkers (interpreters, JITs).
//!
//! As in the OpenTelemetry eBPF profiler, the native walker hands off by program-counter range:
//! per process, userspace lists the code ranges of a runtime's interpreter loop
//! ([`ProcRuntime`]); when the native walk passes a frame whose pc lies in one, the runtime's
//! walker emits the frames that loop activation executes in its place. The native walker knows
//! nothing else of any runtime: each runtime keeps its own maps and frame encoding (its "room":
//! `memprof-ebpf/src/python.rs`, `memprof/src/runtime/python/`).
//!
//! A runtime frame takes two slots of [`crate::unwind::UnwoundStack::ips`]: the first carries
//! [`RUNTIME_FRAME`] (no user address has bit 63 set), the runtime's kind in bits 56..63 and 56
//! bits of the runtime's choosing; the second 64 bits of the runtime's choosing.

/// CPython (`memprof-ebpf/src/python.rs`).
pub const RUNTIME_PYTHON: u32 = 1;
/// V8 (Node; `memprof-ebpf/src/v8.rs`). Its walker needs no code ranges: JS frames are the
/// frames without CFI whose frame-pointer-relative slots hold a JSFunction.
pub const RUNTIME_V8: u32 = 2;

/// Code ranges one process may hand off to a runtime walker.
pub const MAX_RUNTIME_RANGES: usize = 4;

/// Bit 63 of a slot: a runtime frame's first slot.
pub const RUNTIME_FRAME: u64 = 1 << 63;
const PAYLOAD_MASK: u64 = (1 << 56) - 1;

/// The first slot of a runtime frame.
#[inline(always)]
pub const fn runtime_slot(kind: u32, payload: u64) -> u64 {
    RUNTIME_FRAME | ((kind as u64 & 0x7f) << 56) | (payload & PAYLOAD_MASK)
}

/// The runtime kind of a first slot, or None for a native address.
#[inline(always)]
pub const fn slot_kind(slot: u64) -> Option<u32> {
    if slot & RUNTIME_FRAME != 0 {
        Some(((slot >> 56) & 0x7f) as u32)
    } else {
        None
    }
}

/// The payload of a first slot.
#[inline(always)]
pub const fn slot_payload(slot: u64) -> u64 {
    slot & PAYLOAD_MASK
}

/// Addresses at or above this are never user code (x86-64, 4- or 5-level paging).
pub const USER_ADDR_LIMIT: u64 = 1 << 56;

/// `[start, end)` of code that belongs to a runtime's interpreter loop.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuntimeRange {
    pub start: u64,
    pub end: u64,
}

/// Value of the per-process runtime map (key: tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcRuntime {
    /// `RUNTIME_*`.
    pub kind: u32,
    /// Ranges in use.
    pub count: u32,
    pub ranges: [RuntimeRange; MAX_RUNTIME_RANGES],
}

const _: () = assert!(core::mem::size_of::<ProcRuntime>() == 8 + 16 * MAX_RUNTIME_RANGES);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for ProcRuntime {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip() {
        let s = runtime_slot(RUNTIME_PYTHON, 0x7f12_3456_7890);
        assert_eq!(slot_kind(s), Some(RUNTIME_PYTHON));
        assert_eq!(slot_payload(s), 0x7f12_3456_7890);
        assert_eq!(slot_kind(0x7f12_3456_7890), None);
    }
}
