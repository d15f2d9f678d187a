//! CPython's structure layouts, one table per minor version (x86-64 Linux, default build: not
//! free-threaded, not a debug build).
//!
//! Sources, cited: the offsets were taken from py-spy's bindgen bindings
//! (`src/python_bindings/v3_*.rs`, generated from CPython's headers), the OpenTelemetry eBPF
//! profiler (`interpreter/python/python.go`: frame owners and entry markers), and CPython's own
//! headers (`Include/internal/pycore_frame.h`, `pycore_interpframe_structs.h`: `enum
//! _frameowner`). Each table is checked by the tests against the real interpreters this project
//! runs (and, from 3.13 on, against `_Py_DebugOffsets` — which, where present, also overrides
//! the table at run time, see [`Layout::apply_debug_offsets`]).

use memprof_common::python::{
    PY_LASTI_BYTES, PY_LASTI_PTR, PY_LASTI_UNITS, PY_WALK_CFRAME, PY_WALK_FRAME_PER_CALL,
    PY_WALK_SHIM,
};

/// Where to find what memprof reads, for one minor version. Offsets in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub major: u32,
    pub minor: u32,

    // _PyRuntime
    /// `_PyRuntime.interpreters.head`.
    pub rt_interpreters_head: u64,
    /// `_PyRuntime.gilstate.autoTSSkey` (≤ 3.11) / `_PyRuntime.autoTSSkey` (3.12+): a `Py_tss_t`
    /// (`int _is_initialized; pthread_key_t _key`). Only a hint: the key's address is taken from
    /// `PyGILState_GetThisThreadState`'s code when it can be (see `tss.rs`).
    pub rt_autotss: u64,

    // PyInterpreterState
    /// `interp->tstate_head` (≤ 3.10) / `interp->threads.head`.
    pub interp_threads_head: u64,

    // PyThreadState
    pub ts_next: u64,
    pub ts_interp: u64,
    /// `pthread_self()` of the thread.
    pub ts_thread_id: u64,
    /// `frame` (≤ 3.10), `cframe` (3.11, 3.12), `current_frame` (3.13+).
    pub ts_frame: u64,
    /// `_PyCFrame.current_frame` and `.previous` (3.11, 3.12).
    pub cframe_current: Option<u64>,
    pub cframe_previous: Option<u64>,

    // Frames
    /// `PY_WALK_*`.
    pub walk: u32,
    /// `PY_LASTI_*`.
    pub lasti: u32,
    pub frame_code: u64,
    pub frame_back: u64,
    pub frame_instr: u64,
    /// `is_entry` (3.11) or `owner` (3.12+).
    pub frame_entry: Option<u64>,
    /// Bytes the kernel reads per frame (covers every field above).
    pub frame_read: u32,
    /// 3.11: `is_entry` true; 3.12+: the owner of an activation's entry frame (see
    /// `memprof_common::python::PyProc::entry_value`).
    pub entry_value: Option<u8>,
    /// Tag bits of `_PyStackRef` (3.14+) cleared from the code pointer.
    pub code_mask: u64,

    // PyCodeObject
    pub co_firstlineno: u64,
    pub co_filename: u64,
    pub co_name: u64,
    /// 3.11+.
    pub co_qualname: Option<u64>,
    /// `co_lnotab` (3.9), `co_linetable` (3.10+): a bytes object.
    pub co_linetable: u64,
    /// `co_code` (≤ 3.10): a bytes object.
    pub co_code: Option<u64>,
    /// `co_code_adaptive` (3.11+): the bytecode, inline in the code object.
    pub co_code_adaptive: Option<u64>,
    /// Bytes of the code object header read at once (covers every field above).
    pub co_read: u64,

    // Objects
    pub ob_type: u64,
    /// `PyVarObject.ob_size`.
    pub ob_size: u64,
    /// `PyBytesObject.ob_sval`.
    pub bytes_sval: u64,
    /// `PyASCIIObject.length`, `.state` (a bit field: kind in bits 2..5, compact bit 5, ascii
    /// bit 6).
    pub str_length: u64,
    pub str_state: u64,
    /// `sizeof(PyASCIIObject)` and `sizeof(PyCompactUnicodeObject)`: where a compact string's
    /// characters start (ASCII, and not).
    pub str_ascii_size: u64,
    pub str_compact_size: u64,
}

/// The minor versions memprof walks.
pub const SUPPORTED: std::ops::RangeInclusive<u32> = 9..=14;

/// The layout of CPython 3.`minor`, if supported.
pub fn layout(minor: u32) -> Option<Layout> {
    let base = Layout {
        major: 3,
        minor,
        rt_interpreters_head: 0,
        rt_autotss: 0,
        interp_threads_head: 0,
        ts_next: 8,
        ts_interp: 16,
        ts_thread_id: 0,
        ts_frame: 0,
        cframe_current: None,
        cframe_previous: None,
        walk: 0,
        lasti: 0,
        frame_code: 0,
        frame_back: 0,
        frame_instr: 0,
        frame_entry: None,
        frame_read: 0,
        entry_value: None,
        code_mask: !0,
        co_firstlineno: 0,
        co_filename: 0,
        co_name: 0,
        co_qualname: None,
        co_linetable: 0,
        co_code: None,
        co_code_adaptive: None,
        co_read: 0,
        ob_type: 8,
        ob_size: 16,
        bytes_sval: 32,
        str_length: 16,
        str_state: 32,
        str_ascii_size: 48,
        str_compact_size: 72,
    };
    let l = match minor {
        9 | 10 => Layout {
            rt_interpreters_head: 32,
            rt_autotss: 584,
            interp_threads_head: 8,
            ts_thread_id: 176,
            ts_frame: 24,
            walk: PY_WALK_FRAME_PER_CALL,
            lasti: if minor == 9 { PY_LASTI_BYTES } else { PY_LASTI_UNITS },
            frame_code: 32,
            frame_back: 24,
            frame_instr: if minor == 9 { 104 } else { 96 },
            frame_read: if minor == 9 { 112 } else { 104 },
            co_firstlineno: 40,
            co_filename: 104,
            co_name: 112,
            co_linetable: 120,
            co_code: Some(48),
            co_read: 128,
            ..base
        },
        11 => Layout {
            rt_interpreters_head: 40,
            rt_autotss: 592,
            interp_threads_head: 16,
            ts_thread_id: 152,
            ts_frame: 56,
            cframe_current: Some(8),
            cframe_previous: Some(16),
            walk: PY_WALK_CFRAME,
            lasti: PY_LASTI_PTR,
            frame_code: 32,
            frame_back: 48,
            frame_instr: 56,
            frame_entry: Some(68),
            frame_read: 72,
            entry_value: Some(1),
            co_firstlineno: 72,
            co_filename: 112,
            co_name: 120,
            co_qualname: Some(128),
            co_linetable: 136,
            co_code_adaptive: Some(184),
            co_read: 184,
            ..base
        },
        12 => Layout {
            rt_interpreters_head: 40,
            rt_autotss: 1544,
            interp_threads_head: 72,
            ts_thread_id: 136,
            ts_frame: 56,
            cframe_current: Some(0),
            cframe_previous: Some(8),
            walk: PY_WALK_SHIM,
            lasti: PY_LASTI_PTR,
            frame_code: 0,
            frame_back: 8,
            frame_instr: 56,
            frame_entry: Some(70),
            frame_read: 72,
            entry_value: Some(3),
            co_firstlineno: 68,
            co_filename: 112,
            co_name: 120,
            co_qualname: Some(128),
            co_linetable: 136,
            co_code_adaptive: Some(192),
            co_read: 192,
            str_ascii_size: 40,
            str_compact_size: 56,
            ..base
        },
        13 | 14 => Layout {
            rt_interpreters_head: if minor == 13 { 632 } else { 808 },
            rt_autotss: if minor == 13 { 2160 } else { 2336 },
            interp_threads_head: 7344,
            ts_thread_id: 152,
            ts_frame: 72,
            walk: PY_WALK_SHIM,
            lasti: PY_LASTI_PTR,
            frame_code: 0,
            frame_back: 8,
            frame_instr: 56,
            frame_entry: Some(if minor == 13 { 70 } else { 74 }),
            frame_read: if minor == 13 { 72 } else { 80 },
            // 3.14 renumbered the owners (FRAME_OWNED_BY_INTERPRETER = 3, CSTACK = 4) and moved
            // the entry frame to FRAME_OWNED_BY_INTERPRETER: 3 either way (Python/ceval.c).
            entry_value: Some(3),
            code_mask: if minor == 14 { !3 } else { !0 },
            co_firstlineno: 68,
            co_filename: 112,
            co_name: 120,
            co_qualname: Some(128),
            co_linetable: 136,
            co_code_adaptive: Some(if minor == 13 { 200 } else { 208 }),
            co_read: if minor == 13 { 200 } else { 208 },
            str_ascii_size: 40,
            str_compact_size: 56,
            ..base
        },
        _ => return None,
    };
    Some(l)
}

/// `_Py_DebugOffsets` (3.13+): the offsets a debugger needs, at the start of `_PyRuntime` in
/// every build, behind the cookie `xdebugpy`. Field positions (u64 each) in 3.13 and 3.14.
pub mod debug_offsets {
    pub const COOKIE: &[u8; 8] = b"xdebugpy";
    /// Bytes read: through the unicode section of both versions.
    pub const READ: usize = 8 * 81;

    /// The fields memprof takes from it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Field {
        Version,
        FreeThreaded,
        RuntimeInterpretersHead,
        InterpThreadsHead,
        TsNext,
        TsInterp,
        TsCurrentFrame,
        TsThreadId,
        FramePrevious,
        FrameExecutable,
        FrameInstrPtr,
        FrameOwner,
        CodeFilename,
        CodeName,
        CodeQualname,
        CodeLinetable,
        CodeFirstlineno,
        CodeAdaptive,
        UnicodeState,
        UnicodeLength,
        UnicodeAsciiSize,
    }

    /// The index (in u64 words from the start of `_Py_DebugOffsets`) of a field: from the
    /// structure in py-spy's 3.13.0 and 3.14.0 bindings (CPython's `pycore_debug_offsets.h`),
    /// stable within a minor version (it is the interface for out-of-process debuggers).
    pub fn index(minor: u32, f: Field) -> Option<usize> {
        use Field::*;
        let (v13, v14) = match f {
            Version => (1, 1),
            FreeThreaded => (2, 2),
            RuntimeInterpretersHead => (5, 5),
            InterpThreadsHead => (9, 9),
            TsNext => (21, 24),
            TsInterp => (22, 25),
            TsCurrentFrame => (23, 26),
            TsThreadId => (24, 27),
            FramePrevious => (29, 32),
            FrameExecutable => (30, 33),
            FrameInstrPtr => (31, 34),
            FrameOwner => (33, 36),
            CodeFilename => (35, 40),
            CodeName => (36, 41),
            CodeQualname => (37, 42),
            CodeLinetable => (38, 43),
            CodeFirstlineno => (39, 44),
            CodeAdaptive => (43, 48),
            UnicodeState => (68, 78),
            UnicodeLength => (69, 79),
            UnicodeAsciiSize => (70, 80),
        };
        match minor {
            13 => Some(v13),
            14 => Some(v14),
            _ => None,
        }
    }
}

impl Layout {
    /// Takes the offsets `_Py_DebugOffsets` gives (3.13+), read from the process as `words`
    /// (little-endian u64s from the start of `_PyRuntime`). Returns the fields that differed
    /// from the table (for the log), or an error when the structure does not look right.
    pub fn apply_debug_offsets(&mut self, words: &[u64]) -> Result<Vec<String>, String> {
        use debug_offsets::{Field::*, index};
        let get = |f| {
            index(self.minor, f)
                .and_then(|i| words.get(i).copied())
                .ok_or_else(|| format!("_Py_DebugOffsets: no {f:?}"))
        };
        let version = get(Version)?;
        let (maj, min) = ((version >> 24) & 0xff, (version >> 16) & 0xff);
        if (maj, min) != (3, self.minor as u64) {
            return Err(format!("_Py_DebugOffsets says version {version:#x}, not 3.{}", self.minor));
        }
        if get(FreeThreaded)? != 0 {
            return Err("a free-threaded build (not supported)".into());
        }
        let mut changed = Vec::new();
        let mut set = |name: &str, slot: &mut u64, v: u64| {
            if *slot != v {
                changed.push(format!("{name} {} -> {v}", *slot));
                *slot = v;
            }
        };
        let sane = |v: u64, max: u64, what: &str| {
            if v < max { Ok(v) } else { Err(format!("_Py_DebugOffsets: {what} = {v} is implausible")) }
        };
        set("runtime.interpreters_head", &mut self.rt_interpreters_head, sane(get(RuntimeInterpretersHead)?, 1 << 20, "interpreters_head")?);
        set("interp.threads_head", &mut self.interp_threads_head, sane(get(InterpThreadsHead)?, 1 << 20, "threads_head")?);
        set("ts.next", &mut self.ts_next, sane(get(TsNext)?, 4096, "next")?);
        set("ts.interp", &mut self.ts_interp, sane(get(TsInterp)?, 4096, "interp")?);
        set("ts.current_frame", &mut self.ts_frame, sane(get(TsCurrentFrame)?, 4096, "current_frame")?);
        set("ts.thread_id", &mut self.ts_thread_id, sane(get(TsThreadId)?, 4096, "thread_id")?);
        let frame_max = u64::from(memprof_common::python::PY_FRAME_READ_MAX) - 8;
        set("frame.previous", &mut self.frame_back, sane(get(FramePrevious)?, frame_max, "previous")?);
        set("frame.executable", &mut self.frame_code, sane(get(FrameExecutable)?, frame_max, "executable")?);
        set("frame.instr_ptr", &mut self.frame_instr, sane(get(FrameInstrPtr)?, frame_max, "instr_ptr")?);
        let owner = sane(get(FrameOwner)?, frame_max, "owner")?;
        let mut entry = self.frame_entry.unwrap_or(0);
        set("frame.owner", &mut entry, owner);
        self.frame_entry = Some(entry);
        let frame_end = [owner + 1, self.frame_back + 8, self.frame_code + 8, self.frame_instr + 8].into_iter().max().unwrap_or(0);
        self.frame_read = self.frame_read.max(((frame_end + 7) & !7) as u32);
        set("code.filename", &mut self.co_filename, sane(get(CodeFilename)?, 1024, "filename")?);
        set("code.name", &mut self.co_name, sane(get(CodeName)?, 1024, "name")?);
        let mut q = self.co_qualname.unwrap_or(0);
        set("code.qualname", &mut q, sane(get(CodeQualname)?, 1024, "qualname")?);
        self.co_qualname = Some(q);
        set("code.linetable", &mut self.co_linetable, sane(get(CodeLinetable)?, 1024, "linetable")?);
        set("code.firstlineno", &mut self.co_firstlineno, sane(get(CodeFirstlineno)?, 1024, "firstlineno")?);
        let mut a = self.co_code_adaptive.unwrap_or(0);
        set("code.co_code_adaptive", &mut a, sane(get(CodeAdaptive)?, 1024, "co_code_adaptive")?);
        self.co_code_adaptive = Some(a);
        self.co_read = [
            self.co_read,
            a,
            self.co_linetable + 8,
            self.co_qualname.unwrap_or(0) + 8,
            self.co_name + 8,
            self.co_filename + 8,
            self.co_firstlineno + 4,
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        set("unicode.state", &mut self.str_state, sane(get(UnicodeState)?, 256, "state")?);
        set("unicode.length", &mut self.str_length, sane(get(UnicodeLength)?, 256, "length")?);
        set("unicode.asciiobject_size", &mut self.str_ascii_size, sane(get(UnicodeAsciiSize)?, 256, "asciiobject_size")?);
        Ok(changed)
    }

    /// Every u64 field the kernel reads from a frame must be 8-aligned and inside the window.
    pub fn check(&self) -> Result<(), String> {
        let max = u64::from(self.frame_read);
        for (name, off) in [("frame code", self.frame_code), ("frame back", self.frame_back), ("frame instr", self.frame_instr)] {
            if off % 8 != 0 || off + 8 > max {
                return Err(format!("{name} offset {off} does not fit the {max}-byte frame read"));
            }
        }
        if let Some(e) = self.frame_entry {
            if e >= max {
                return Err(format!("frame entry offset {e} does not fit the {max}-byte frame read"));
            }
        }
        if self.frame_read > memprof_common::python::PY_FRAME_READ_MAX {
            return Err(format!("frame read {} is too large", self.frame_read));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_version_has_a_consistent_table() {
        for minor in SUPPORTED {
            let l = layout(minor).unwrap();
            l.check().unwrap_or_else(|e| panic!("3.{minor}: {e}"));
            assert_eq!(l.minor, minor);
            assert!(l.co_read >= l.co_firstlineno + 4, "3.{minor}");
            assert!(l.co_read >= l.co_linetable + 8, "3.{minor}");
            assert_eq!(l.walk == PY_WALK_CFRAME, minor == 11);
            assert_eq!(l.co_qualname.is_some(), minor >= 11);
        }
        assert!(layout(8).is_none());
        assert!(layout(15).is_none());
    }

    #[test]
    fn debug_offsets_indices_match_the_tables() {
        // The table values for 3.13 and 3.14 came from py-spy's bindings; the debug offsets
        // words below are what those versions' _Py_DebugOffsets hold for the same fields.
        for minor in [13, 14] {
            let l = layout(minor).unwrap();
            let mut words = vec![0u64; debug_offsets::READ / 8];
            use debug_offsets::{Field::*, index};
            let mut put = |f, v| words[index(minor, f).unwrap()] = v;
            put(Version, (3 << 24) | ((minor as u64) << 16));
            put(FreeThreaded, 0);
            put(RuntimeInterpretersHead, l.rt_interpreters_head);
            put(InterpThreadsHead, l.interp_threads_head);
            put(TsNext, l.ts_next);
            put(TsInterp, l.ts_interp);
            put(TsCurrentFrame, l.ts_frame);
            put(TsThreadId, l.ts_thread_id);
            put(FramePrevious, l.frame_back);
            put(FrameExecutable, l.frame_code);
            put(FrameInstrPtr, l.frame_instr);
            put(FrameOwner, l.frame_entry.unwrap());
            put(CodeFilename, l.co_filename);
            put(CodeName, l.co_name);
            put(CodeQualname, l.co_qualname.unwrap());
            put(CodeLinetable, l.co_linetable);
            put(CodeFirstlineno, l.co_firstlineno);
            put(CodeAdaptive, l.co_code_adaptive.unwrap());
            put(UnicodeState, l.str_state);
            put(UnicodeLength, l.str_length);
            put(UnicodeAsciiSize, l.str_ascii_size);
            let mut l2 = l.clone();
            assert_eq!(l2.apply_debug_offsets(&words).unwrap(), Vec::<String>::new(), "3.{minor}");
            assert_eq!(l2, l);
            words[1] = 0x030c_0000;
            assert!(l2.apply_debug_offsets(&words).is_err());
        }
    }
}
