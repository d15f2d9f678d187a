//! V8's layout as one binary lays it out: frame slots, type ids and class member offsets, from
//! its `v8dbg_*` metadata ([`super::elf`]) with fallbacks where a version lacks a value.
//!
//! The names (with their alternates across versions) and most fallbacks follow OTel's
//! `interpreter/nodev8/v8.go` (struct tags of `vmStructs`, and `readIntrospectionData`'s
//! hard-coded values by version). Where issue 11's measurements on five binaries (Node 18.20 /
//! V8 10.2, Node 20.19 and 20.20 / V8 11.3, Node 22.23 / V8 12.4, Node 24.22 / V8 13.6)
//! disagreed with OTel, the measured value is used and says so (the JSFunction type range,
//! `BytecodeArray.source_position_table` from 12.x, `ExternalString`'s data pointer).
//! Each fallback taken is listed in [`Layout::fallbacks`].

use std::collections::BTreeMap;

use super::elf::{V8Elf, V8Version};

/// The oldest V8 walked (Debian 12's Node 18).
pub const MIN_VERSION: V8Version = V8Version::new(10, 2, 0, 0);
/// The first major not walked.
pub const MAX_MAJOR_EXCLUSIVE: u32 = 14;

/// Why a binary's V8 cannot be walked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unsupported {
    #[error("no V8 version symbols (v8::internal::Version::major_ …)")]
    NoVersion,
    #[error("V8 {0} is not supported (10.2 to 13.x are)")]
    Version(V8Version),
    #[error("V8 {version}: v8dbg metadata missing: {}", .missing.join(", "))]
    Missing { version: V8Version, missing: Vec<String> },
    #[error("V8 {version}: {why}")]
    Build { version: V8Version, why: String },
}

/// A value taken from a fallback rather than the metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fallback {
    pub what: &'static str,
    pub value: i64,
    pub why: &'static str,
}

/// Every offset (bytes, from the untagged object address) and type id the readers need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub version: V8Version,

    // Frames: slots relative to a JS frame's frame pointer.
    /// The context, or a SMI frame-type marker (`type << 1`) in a typed frame.
    pub fp_context: i64,
    /// The JSFunction.
    pub fp_function: i64,
    /// The BytecodeArray (interpreted and baseline frames).
    pub fp_bytecode_array: i64,
    /// SMI `bytecode offset + BytecodeArray.data − 1` (interpreted frames).
    pub fp_bytecode_offset: i64,
    /// Frame-type marker values (`frametype_*`), for the log and the kernel side.
    pub frame_types: BTreeMap<String, i64>,

    // HeapObject, Map.
    pub map: u64,
    pub map_instance_type: u64,

    // Instance types.
    /// `[first, last]`: JSFunction and its subclasses (class constructors, …).
    pub type_js_function_first: u16,
    pub type_js_function_last: u16,
    pub type_sfi: u16,
    pub type_script: u16,
    pub type_scope_info: u16,
    pub type_bytecode_array: u16,
    pub type_code: u16,
    /// V8 ≥ 11.1: code lives in an InstructionStream, Code keeps its metadata.
    pub type_instruction_stream: Option<u16>,
    pub type_fixed_array: u16,
    pub type_byte_array: u16,
    pub type_weak_fixed_array: Option<u16>,
    /// 12.x+: trusted space copies of the above.
    pub type_trusted_byte_array: Option<u16>,
    pub type_trusted_fixed_array: Option<u16>,
    pub type_trusted_weak_fixed_array: Option<u16>,
    pub type_protected_fixed_array: Option<u16>,
    /// 13.x: DeoptimizationData refers to the SFI through a wrapper.
    pub type_sfi_wrapper: Option<u16>,
    pub type_interpreter_data: Option<u16>,

    // Strings.
    /// Instance types below this are strings.
    pub first_nonstring_type: u16,
    pub string_representation_mask: u16,
    pub string_encoding_mask: u16,
    pub seq_string_tag: u16,
    pub cons_string_tag: u16,
    pub external_string_tag: u16,
    pub sliced_string_tag: u16,
    pub thin_string_tag: u16,
    pub one_byte_string_tag: u16,
    /// External strings without the cached data pointer (V8's kUncachedExternalStringMask).
    pub uncached_external_string_mask: u16,
    /// `String.length` (int32).
    pub string_length: u64,
    pub seq_one_byte_chars: u64,
    pub seq_two_byte_chars: u64,
    pub cons_first: u64,
    pub cons_second: u64,
    pub thin_actual: u64,
    pub sliced_parent: u64,
    pub sliced_offset: u64,
    pub external_resource: u64,
    /// The cached pointer to the external string's characters (no metadata: the word after
    /// `resource`, measured on all five binaries).
    pub external_data: u64,

    // Arrays.
    pub fixed_array_length: u64,
    pub fixed_array_data: u64,

    // JSFunction.
    pub js_function_shared: u64,
    /// Absent on 11.x and from 13.x (leaptiering: a dispatch handle instead); not needed here.
    pub js_function_code: Option<u64>,

    // SharedFunctionInfo.
    pub sfi_name_or_scope_info: u64,
    pub sfi_script: u64,
    /// `function_data` (`trusted_function_data` on 12.x/13.x): BytecodeArray, baseline Code, …
    pub sfi_function_data: u64,

    // Script.
    pub script_name: u64,
    pub script_source: u64,
    pub script_line_ends: u64,

    // ScopeInfo (slot indices after the map).
    pub scope_info_first_vars: u64,
    pub scope_info_ncontextlocals: u64,
    /// V8 ≥ 12.8.44: start/end positions at fixed slots 3 and 4 (before: found heuristically).
    pub scope_info_fixed_positions: bool,

    // BytecodeArray.
    pub bytecode_length: u64,
    /// The first bytecode.
    pub bytecode_data: u64,
    /// Its source position table (ByteArray / TrustedByteArray, or not collected yet).
    pub bytecode_source_positions: u64,

    // Code.
    pub code_instruction_start: u64,
    /// V8 ≥ 11.1.204: `instruction_start` is a pointer field; before, the offset at which the
    /// instructions follow the Code header.
    pub code_start_is_pointer: bool,
    pub code_instruction_size: u64,
    pub code_flags: u64,
    pub code_source_positions: u64,
    /// DeoptimizationData (optimised code) or the BytecodeArray (baseline code).
    pub code_deoptimization_data: u64,
    pub code_instruction_stream: Option<u64>,
    pub instruction_stream_start: Option<u64>,
    pub code_kind_mask: u32,
    pub code_kind_shift: u32,
    pub code_kind_interpreted: u32,
    pub code_kind_baseline: u32,

    // DeoptimizationData indices.
    pub deopt_inlined_count: u64,
    pub deopt_literal_array: u64,
    pub deopt_sfi: Option<u64>,
    pub deopt_wrapped_sfi: Option<u64>,
    pub deopt_inlining_positions: u64,
    pub sfi_wrapper_shared: Option<u64>,

    /// Values that came from fallbacks.
    pub fallbacks: Vec<Fallback>,
}

/// Looks metadata up by name (with alternates), remembering what is missing and what fell
/// back.
struct Lookup<'a> {
    d: &'a BTreeMap<String, i64>,
    missing: Vec<String>,
    fallbacks: Vec<Fallback>,
}

impl Lookup<'_> {
    fn opt(&self, names: &[&str]) -> Option<i64> {
        names.iter().find_map(|n| self.d.get(*n).copied())
    }

    /// Mandatory: a missing value is recorded (and 0 returned, never used).
    fn req(&mut self, names: &[&str]) -> i64 {
        self.opt(names).unwrap_or_else(|| {
            self.missing.push(names[0].to_string());
            0
        })
    }

    fn or(&mut self, names: &[&'static str], value: i64, why: &'static str) -> i64 {
        self.opt(names).unwrap_or_else(|| self.fallback(names[0], value, why))
    }

    fn fallback(&mut self, what: &'static str, value: i64, why: &'static str) -> i64 {
        self.fallbacks.push(Fallback { what, value, why });
        value
    }

    /// A mandatory instance type (a value that is none is reported missing).
    fn ty(&mut self, names: &[&str]) -> u16 {
        let v = self.req(names);
        u16::try_from(v).unwrap_or_else(|_| {
            self.missing.push(format!("{} (bad value {v})", names[0]));
            0
        })
    }

    fn opt_ty(&self, names: &[&str]) -> Option<u16> {
        self.opt(names).and_then(|v| u16::try_from(v).ok())
    }
}

/// An offset that must be non-negative and below `bound` (a field of a header).
fn off(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

impl Layout {
    /// The layout of `elf`'s V8.
    pub fn from_elf(elf: &V8Elf) -> Result<Layout, Unsupported> {
        Layout::new(elf.version.ok_or(Unsupported::NoVersion)?, &elf.v8dbg)
    }

    /// The layout of V8 `version` from its metadata `d` (names without `v8dbg_`).
    pub fn new(version: V8Version, d: &BTreeMap<String, i64>) -> Result<Layout, Unsupported> {
        if version < MIN_VERSION || version.major >= MAX_MAJOR_EXCLUSIVE {
            return Err(Unsupported::Version(version));
        }
        let mut g = Lookup { d, missing: Vec::new(), fallbacks: Vec::new() };
        // The tagging scheme the readers assume: 64-bit tagged values, no pointer compression
        // (Node's builds), SMIs in the upper half (OTel checks the same).
        let build = |why: String| Unsupported::Build { version, why };
        for (name, want) in [("HeapObjectTag", 1), ("HeapObjectTagMask", 3), ("SmiTagMask", 1), ("SmiShiftSize", 31)] {
            match g.opt(&[name]) {
                Some(v) if v == want => {}
                Some(v) => return Err(build(format!("{name} is {v}, not {want} (pointer compression?)"))),
                None => g.missing.push(name.to_string()),
            }
        }
        for name in ["SmiTag", "SeqStringTag"] {
            if g.opt(&[name]).is_some_and(|v| v != 0) {
                return Err(build(format!("{name} is not 0")));
            }
        }
        for name in ["SystemPointerSize", "TaggedSize"] {
            if g.opt(&[name]).is_some_and(|v| v != 8) {
                return Err(build(format!("{name} is not 8 (pointer compression?)")));
            }
        }

        let fp_context = g.req(&["off_fp_context", "off_fp_context_or_frame_type"]);
        let fp_function = g.req(&["off_fp_function"]);
        // Missing before 9.5.2: function − 16 from 8.7.198 (OTel).
        let fp_bytecode_array = g.or(&["off_fp_bytecode_array"], fp_function - 16, "OTel: off_fp_function - 16");
        let fp_bytecode_offset =
            g.or(&["off_fp_bytecode_offset"], fp_bytecode_array - 8, "OTel: off_fp_bytecode_array - 8");
        let frame_types: BTreeMap<String, i64> =
            d.iter().filter_map(|(k, v)| Some((k.strip_prefix("frametype_")?.to_string(), *v))).collect();

        let type_js_function = g.ty(&["type_JSFunction__JS_FUNCTION_TYPE"]);
        let type_js_function_first =
            g.or(&["FirstJSFunctionType"], i64::from(type_js_function), "JS_FUNCTION_TYPE") as u16;
        // Before 12.x the range is not in the metadata. OTel takes JS_FUNCTION_TYPE + 14, but
        // class constructors measured JS_FUNCTION_TYPE + 15 on V8 10.2 and 11.3 (issue 11,
        // `kinds.js`): + 16 is taken, and the SharedFunctionInfo check that follows a
        // JSFunction rejects anything else in the range.
        let type_js_function_last =
            g.or(&["LastJSFunctionType"], i64::from(type_js_function) + 16, "JS_FUNCTION_TYPE + 16 (measured)") as u16;

        // Strings (OTel's `Fixed` group).
        let external_resource = off(g.req(&["class_ExternalString__resource__Object"]));
        let seq_one_byte_chars = off(g.req(&["class_SeqOneByteString__chars__char"]));
        let uncached_external_string_mask = match (
            g.opt(&["type_UncachedExternalString__UNCACHED_EXTERNAL_ONE_BYTE_STRING_TYPE"]),
            g.opt(&["type_ExternalOneByteString__EXTERNAL_ONE_BYTE_STRING_TYPE"]),
        ) {
            (Some(u), Some(c)) if (u ^ c).count_ones() == 1 => (u ^ c) as u16,
            _ => g.fallback("kUncachedExternalStringMask", 0x10, "V8's src/objects/instance-type.h") as u16,
        };

        // Code: OTel's readIntrospectionData order. With instruction_size known (10.x, 12.x+)
        // the position table sits 3 words before instruction_start where CodeWrapper exists
        // (12.x+), else 2 words before instruction_size; without it (11.x lost Code's metadata)
        // everything hangs off source_position_table.
        let mut size = g.opt(&["class_Code__instruction_size__int"]);
        let mut start = g.opt(&["class_Code__instruction_start__Address", "class_Code__instruction_start__uintptr_t"]);
        let mut spt = g.opt(&["class_Code__source_position_table__ByteArray"]);
        let mut flags = g.opt(&["class_Code__flags__uint32_t"]);
        let mut deopt = g.opt(&["class_Code__deoptimization_data__FixedArray"]);
        if let Some(sz) = size {
            if spt.is_none() {
                spt = Some(if g.opt(&["type_CodeWrapper__CODE_WRAPPER_TYPE"]).is_some() {
                    let s = start.unwrap_or(0);
                    g.fallback("Code.source_position_table", s - 24, "OTel: instruction_start - 24 (CodeWrapper)")
                } else {
                    g.fallback("Code.source_position_table", sz - 16, "OTel: instruction_size - 16")
                });
            }
            if flags.is_none() {
                flags = Some(g.fallback("Code.flags", sz + 8, "OTel: instruction_size + 8"));
            }
        } else if let Some(s) = spt {
            if start.is_none() {
                start = Some(g.fallback("Code.instruction_start", s + 16, "OTel: source_position_table + 16 (11.x)"));
            }
            if flags.is_none() {
                flags = Some(g.fallback("Code.flags", start.unwrap_or(0) + 8, "OTel: instruction_start + 8 (11.x)"));
            }
            let extra = if version < V8Version::new(11, 4, 59, 0) { 4 } else { 0 };
            size = Some(g.fallback("Code.instruction_size", flags.unwrap_or(0) + 4 + extra, "OTel: flags + 4 (+4 before 11.4.59)"));
        }
        if deopt.is_none() {
            if let Some(s) = spt {
                deopt = Some(g.fallback("Code.deoptimization_data", s - 8, "OTel: source_position_table - 8"));
            }
        }
        let mut code_req = |v: Option<i64>, what: &str| {
            v.map(off).unwrap_or_else(|| {
                g.missing.push(what.to_string());
                0
            })
        };
        let code_instruction_start = code_req(start, "class_Code__instruction_start__Address");
        let code_instruction_size = code_req(size, "class_Code__instruction_size__int");
        let code_flags = code_req(flags, "class_Code__flags__uint32_t");
        let code_source_positions = code_req(spt, "class_Code__source_position_table__ByteArray");
        let code_deoptimization_data = code_req(deopt, "class_Code__deoptimization_data__FixedArray");

        // BytecodeArray.source_position_table: no metadata since V8 9.4. Before 12.x the third
        // tagged field after length (constant_pool, handler_table, source_position_table: OTel);
        // from 12.x, where BytecodeArray has a `wrapper`, the field after it (measured on 12.4
        // and 13.6).
        let bytecode_length = off(g.or(&["class_BytecodeArray__length__SMI", "class_FixedArrayBase__length__SMI"], 8, "FixedArrayBase.length"));
        let bytecode_source_positions = match g.opt(&["class_BytecodeArray__wrapper__Tagged_BytecodeWrapper_"]) {
            Some(w) => g.fallback("BytecodeArray.source_position_table", w + 8, "wrapper + 8 (measured)"),
            None => g.fallback("BytecodeArray.source_position_table", bytecode_length as i64 + 24, "OTel: length + 24"),
        };

        let deopt_sfi = g.opt(&["DeoptimizationDataSharedFunctionInfoIndex"]);
        let deopt_wrapped_sfi = g.opt(&["DeoptimizationDataWrappedSharedFunctionInfoIndex"]);
        let deopt_sfi = match (deopt_sfi, deopt_wrapped_sfi) {
            (None, None) => Some(g.fallback("DeoptimizationDataSharedFunctionInfoIndex", 6, "OTel")),
            (s, _) => s,
        };
        let deopt_inlining_positions = g.or(
            &["DeoptimizationDataInliningPositionsIndex"],
            deopt_sfi.or(deopt_wrapped_sfi).unwrap_or(6) + 1,
            "OTel: SharedFunctionInfo index + 1",
        );

        let l = Layout {
            version,
            fp_context,
            fp_function,
            fp_bytecode_array,
            fp_bytecode_offset,
            frame_types,
            map: off(g.req(&["class_HeapObject__map__Map"])),
            map_instance_type: off(g.req(&["class_Map__instance_type__uint16_t"])),
            type_js_function_first,
            type_js_function_last,
            type_sfi: g.ty(&["type_SharedFunctionInfo__SHARED_FUNCTION_INFO_TYPE"]),
            type_script: g.ty(&["type_Script__SCRIPT_TYPE"]),
            type_scope_info: g.ty(&["type_ScopeInfo__SCOPE_INFO_TYPE"]),
            type_bytecode_array: g.ty(&["type_BytecodeArray__BYTECODE_ARRAY_TYPE"]),
            type_code: g.ty(&["type_Code__CODE_TYPE"]),
            type_instruction_stream: g.opt_ty(&["type_InstructionStream__INSTRUCTION_STREAM_TYPE"]),
            type_fixed_array: g.ty(&["type_FixedArray__FIXED_ARRAY_TYPE"]),
            type_byte_array: g.ty(&["type_ByteArray__BYTE_ARRAY_TYPE"]),
            type_weak_fixed_array: g.opt_ty(&["type_WeakFixedArray__WEAK_FIXED_ARRAY_TYPE"]),
            type_trusted_byte_array: g.opt_ty(&["type_TrustedByteArray__TRUSTED_BYTE_ARRAY_TYPE"]),
            type_trusted_fixed_array: g.opt_ty(&["type_TrustedFixedArray__TRUSTED_FIXED_ARRAY_TYPE"]),
            type_trusted_weak_fixed_array: g.opt_ty(&["type_TrustedWeakFixedArray__TRUSTED_WEAK_FIXED_ARRAY_TYPE"]),
            type_protected_fixed_array: g.opt_ty(&["type_ProtectedFixedArray__PROTECTED_FIXED_ARRAY_TYPE"]),
            type_sfi_wrapper: g.opt_ty(&["type_SharedFunctionInfoWrapper__SHARED_FUNCTION_INFO_WRAPPER_TYPE"]),
            type_interpreter_data: g.opt_ty(&["type_InterpreterData__INTERPRETER_DATA_TYPE"]),
            first_nonstring_type: g.ty(&["FirstNonstringType"]),
            string_representation_mask: g.ty(&["StringRepresentationMask"]),
            string_encoding_mask: g.ty(&["StringEncodingMask"]),
            seq_string_tag: g.opt_ty(&["SeqStringTag"]).unwrap_or(0),
            cons_string_tag: g.ty(&["ConsStringTag"]),
            external_string_tag: g.ty(&["ExternalStringTag"]),
            sliced_string_tag: g.ty(&["SlicedStringTag"]),
            thin_string_tag: g.ty(&["ThinStringTag"]),
            one_byte_string_tag: g.ty(&["OneByteStringTag"]),
            uncached_external_string_mask,
            string_length: off(g.req(&["class_String__length__int32_t"])),
            seq_one_byte_chars,
            seq_two_byte_chars: off(g.or(&["class_SeqTwoByteString__chars__char"], seq_one_byte_chars as i64, "SeqOneByteString.chars")),
            cons_first: off(g.req(&["class_ConsString__first__String"])),
            cons_second: off(g.req(&["class_ConsString__second__String"])),
            thin_actual: off(g.req(&["class_ThinString__actual__String"])),
            sliced_parent: off(g.req(&["class_SlicedString__parent__String"])),
            sliced_offset: off(g.req(&["class_SlicedString__offset__SMI"])),
            external_resource,
            external_data: off(g.fallback("ExternalString.resource_data", external_resource as i64 + 8, "resource + 8 (measured)")),
            fixed_array_length: off(g.req(&["class_FixedArrayBase__length__SMI"])),
            fixed_array_data: off(g.req(&["class_FixedArray__data__uintptr_t"])),
            js_function_shared: off(g.req(&["class_JSFunction__shared__SharedFunctionInfo"])),
            js_function_code: g.opt(&["class_JSFunction__code__CodeT", "class_JSFunction__code__Code", "class_JSFunction__code__Tagged_Code_"]).map(off),
            sfi_name_or_scope_info: off(g.req(&[
                "class_SharedFunctionInfo__name_or_scope_info__Object",
                "class_SharedFunctionInfo__name_or_scope_info__Tagged_Object_",
                "class_SharedFunctionInfo__name_or_scope_info__Tagged_NameOrScopeInfoT_",
            ])),
            sfi_script: off(g.req(&[
                "class_SharedFunctionInfo__script_or_debug_info__HeapObject",
                "class_SharedFunctionInfo__script__Tagged_HeapObject_",
                "class_SharedFunctionInfo__raw_script__Tagged_Object_",
            ])),
            // 12.x/13.x: `trusted_function_data`, no metadata; OTel hard-codes 8, measured right.
            sfi_function_data: off(g.or(&["class_SharedFunctionInfo__function_data__Object"], 8, "OTel: 8")),
            script_name: off(g.req(&["class_Script__name__Object"])),
            script_source: off(g.or(&["class_Script__source__Object"], g.opt(&["class_Script__name__Object"]).unwrap_or(16) - 8, "OTel: Script.name - 8")),
            script_line_ends: off(g.req(&["class_Script__line_ends__Object"])),
            scope_info_first_vars: off(g.req(&["scopeinfo_idx_first_vars"])),
            scope_info_ncontextlocals: off(g.req(&["scopeinfo_idx_ncontextlocals"])),
            scope_info_fixed_positions: version >= V8Version::new(12, 8, 44, 0),
            bytecode_length,
            bytecode_data: off(g.req(&["class_BytecodeArray__data__uintptr_t"])),
            bytecode_source_positions: off(bytecode_source_positions),
            code_instruction_start,
            code_start_is_pointer: version >= V8Version::new(11, 1, 204, 0),
            code_instruction_size,
            code_flags,
            code_source_positions,
            code_deoptimization_data,
            code_instruction_stream: g.opt(&["class_Code__instruction_stream__Tagged_InstructionStream_"]).map(off),
            instruction_stream_start: g.opt(&["class_InstructionStream__instruction_start__uintptr_t"]).map(off),
            code_kind_mask: g.or(&["CodeKindFieldMask"], 0xf, "OTel") as u32,
            code_kind_shift: g.or(&["CodeKindFieldShift"], 0, "OTel") as u32,
            code_kind_baseline: g.req(&["CodeKindBaseline"]) as u32,
            code_kind_interpreted: g.req(&["CodeKindInterpretedFunction"]) as u32,
            deopt_inlined_count: off(g.or(&["DeoptimizationDataInlinedFunctionCountIndex"], 1, "OTel")),
            deopt_literal_array: off(g.or(&["DeoptimizationDataLiteralArrayIndex"], 2, "OTel")),
            deopt_sfi: deopt_sfi.map(off),
            deopt_wrapped_sfi: deopt_wrapped_sfi.map(off),
            deopt_inlining_positions: off(deopt_inlining_positions),
            sfi_wrapper_shared: g.opt(&["class_SharedFunctionInfoWrapper__shared_info__Tagged_SharedFunctionInfo_"]).map(off),
            fallbacks: Vec::new(),
        };
        if l.type_instruction_stream.is_none() && l.code_start_is_pointer {
            g.missing.push("type_InstructionStream__INSTRUCTION_STREAM_TYPE".into());
        }
        if l.deopt_wrapped_sfi.is_some() && (l.type_sfi_wrapper.is_none() || l.sfi_wrapper_shared.is_none()) {
            g.missing.push("class_SharedFunctionInfoWrapper__shared_info__Tagged_SharedFunctionInfo_".into());
        }
        if !g.missing.is_empty() {
            return Err(Unsupported::Missing { version, missing: g.missing });
        }
        l.check().map_err(|why| build(why.into()))?;
        Ok(Layout { fallbacks: g.fallbacks, ..l })
    }

    /// Sanity checks on what the metadata gave: offsets inside small headers, a sane type
    /// range, frame slots below the frame pointer.
    fn check(&self) -> Result<(), &'static str> {
        let fields = [
            self.map,
            self.map_instance_type,
            self.external_resource,
            self.string_length,
            self.seq_one_byte_chars,
            self.seq_two_byte_chars,
            self.cons_first,
            self.cons_second,
            self.thin_actual,
            self.sliced_parent,
            self.sliced_offset,
            self.external_data,
            self.fixed_array_length,
            self.fixed_array_data,
            self.js_function_shared,
            self.sfi_name_or_scope_info,
            self.sfi_script,
            self.sfi_function_data,
            self.script_name,
            self.script_source,
            self.script_line_ends,
            self.bytecode_length,
            self.bytecode_data,
            self.bytecode_source_positions,
            self.code_flags,
            self.code_source_positions,
            self.code_deoptimization_data,
        ];
        if fields.iter().any(|&f| f > 512) {
            return Err("a class member offset is implausible (> 512)");
        }
        if self.type_js_function_first > self.type_js_function_last
            || self.type_js_function_last - self.type_js_function_first > 64
        {
            return Err("implausible JSFunction type range");
        }
        let slots = [self.fp_context, self.fp_function, self.fp_bytecode_array, self.fp_bytecode_offset];
        if slots.iter().any(|&s| !(-64..0).contains(&s) || s % 8 != 0) {
            return Err("frame slots outside [fp-64, fp)");
        }
        if self.scope_info_first_vars > 16 || self.scope_info_ncontextlocals >= self.scope_info_first_vars {
            return Err("implausible ScopeInfo indices");
        }
        Ok(())
    }

    /// Whether an instance type is a JSFunction (or subclass).
    pub fn is_js_function(&self, t: u16) -> bool {
        (self.type_js_function_first..=self.type_js_function_last).contains(&t)
    }

    /// Whether an instance type is a string.
    pub fn is_string(&self, t: u16) -> bool {
        t < self.first_nonstring_type
    }

    /// Whether an instance type is a byte array (a source position table's holder).
    pub fn is_byte_array(&self, t: u16) -> bool {
        t == self.type_byte_array || Some(t) == self.type_trusted_byte_array
    }
}

#[cfg(test)]
#[path = "layout_tests.rs"]
pub(crate) mod tests;
