//! What V8's kernel-side walker (`memprof-ebpf/src/v8.rs`) shares with userspace
//! (`memprof/src/runtime/v8/`).
//!
//! Userspace fills a [`V8Proc`] per Node process from the `v8dbg_*` postmortem metadata of the
//! node binary (or `libnode.so`) it maps; every offset in it was checked before it is loaded.
//!
//! A JS frame is two stack slots (the approach of the OpenTelemetry eBPF profiler's V8
//! unwinder, `support/ebpf/v8_tracer.ebpf.c`, which records an object pointer and an offset
//! per frame; the encoding here is memprof's own):
//! - `runtime_slot(RUNTIME_V8, sfi | tier)`: the frame's `SharedFunctionInfo` (untagged; heap
//!   objects are 8-aligned, so bits 0-2 are free for [`V8_TIER_INTERPRETED`] or
//!   [`V8_TIER_COMPILED`]). The SFI rather than the JSFunction: every closure of a function
//!   shares it, so per-call closures do not multiply stacks.
//! - [`v8_frame_detail`]: bits 0-47 the frame's program counter (compiled frames: its return
//!   address, which identifies the code and the position in it, inlined functions included) or
//!   the bytecode offset's SMI value (interpreted frames); bits 48-63 a tag of the SFI's
//!   `name_or_scope_info` pointer, which lets userspace check that the object at that address is
//!   still that function when it names it (objects move when V8 compacts its heap).

/// An interpreted (Ignition) frame: the detail holds the bytecode offset slot's SMI value.
pub const V8_TIER_INTERPRETED: u64 = 1;
/// A compiled frame (Sparkplug, Maglev, TurboFan, or a JS builtin): the detail holds its pc.
pub const V8_TIER_COMPILED: u64 = 2;
/// Bits of the first slot's payload that hold the tier.
pub const V8_TIER_MASK: u64 = 7;

/// Words read below a frame pointer in one go (`[fp - 8*V8_WINDOW_WORDS, fp)`): every
/// fp-relative slot the walker needs must lie inside.
pub const V8_WINDOW_WORDS: usize = 8;

/// The second slot of a JS frame.
#[inline(always)]
pub const fn v8_frame_detail(value: u64, name_tag: u16) -> u64 {
    (value & ((1 << 48) - 1)) | ((name_tag as u64) << 48)
}

/// The validity tag of a SharedFunctionInfo's `name_or_scope_info` word.
#[inline(always)]
pub const fn v8_name_tag(name_or_scope_info: u64) -> u16 {
    (name_or_scope_info >> 3) as u16
}

/// Per Node process (key: tgid): where the walker finds what it checks in a frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V8Proc {
    /// Window indices (0..[`V8_WINDOW_WORDS`]) of the fp-relative slots: `fp + off` is word
    /// `V8_WINDOW_WORDS + off/8`.
    pub idx_context: u32,
    pub idx_function: u32,
    pub idx_bytecode_array: u32,
    pub idx_bytecode_offset: u32,
    /// Instance types.
    pub type_js_function_first: u32,
    pub type_js_function_last: u32,
    pub type_sfi: u32,
    pub type_bytecode_array: u32,
    /// Field offsets (untagged object address + offset).
    pub off_map: u32,
    pub off_instance_type: u32,
    pub off_js_function_shared: u32,
    pub off_sfi_name: u32,
    /// `[start, end)` of the V8 object's executable mappings (in use: `text_count`). A frame
    /// whose slots say "interpreted" is one only when its pc is there (the bytecode handlers):
    /// code compiled by on-stack replacement keeps the interpreter's frame layout, stale
    /// bytecode offset included, but runs from JIT memory.
    pub text_count: u32,
    pub _pad: u32,
    pub text: [[u64; 2]; V8_TEXT_RANGES],
}

/// Executable mappings of the V8 object the walker knows (node maps 2-3).
pub const V8_TEXT_RANGES: usize = 4;

const _: () = assert!(core::mem::size_of::<V8Proc>() == 56 + 16 * V8_TEXT_RANGES);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for V8Proc {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_round_trip() {
        let d = v8_frame_detail(0x7f12_3456_7890, 0xbeef);
        assert_eq!(d & ((1 << 48) - 1), 0x7f12_3456_7890);
        assert_eq!((d >> 48) as u16, 0xbeef);
        assert_eq!(v8_name_tag(0x1234_5678), (0x1234_5678u64 >> 3) as u16);
    }
}
