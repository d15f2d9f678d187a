//! Source position tables: bytecode (or code) offset → source position → line, for interpreted
//! frames (the kernel records the SFI and the frame's bytecode offset).
//!
//! Encoding (V8's `src/codegen/source-position-table.cc`, read the same way by OTel's
//! `decodePosition` in `interpreter/nodev8/v8.go`): a sequence of entries, each a code-offset
//! delta then a source-position delta, both zigzag VLQs (7 bits a byte, low first, bit 7 =
//! more). A negative code delta `−d − 1` means "not a statement", delta `d`. Positions are raw
//! 64-bit `SourcePosition`s: bit 0 external, bits 1–30 script offset + 1, bits 31–46 inlining
//! id; bytecode tables hold them raw too (reading them as plain offsets gives wrong lines).

use super::heap::{
    HeapError, JsFunctionName, Memory, byte_array, field, instance_type, is_heap_object, is_smi, smi_value,
};
use super::layout::Layout;

/// One VLQ at `*i` (advanced), or None when the table ends inside it or it overflows (V8's
/// unsigned VLQ: 7 bits a byte, low first, bit 7 = more; also the encoding of baseline offset
/// tables and deoptimization translations).
pub(super) fn vlq(table: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *table.get(*i)?;
        *i += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// A zigzag-encoded signed value.
fn zigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// The entries of a table: (code offset, is statement, raw source position).
pub fn entries(table: &[u8]) -> impl Iterator<Item = (i64, bool, i64)> + '_ {
    let (mut i, mut code, mut pos) = (0usize, -1i64, 0i64);
    std::iter::from_fn(move || {
        let d = zigzag(vlq(table, &mut i)?);
        let s = zigzag(vlq(table, &mut i)?);
        let (delta, statement) = if d >= 0 { (d, true) } else { (-d - 1, false) };
        code = code.checked_add(delta)?;
        pos = pos.checked_add(s)?;
        Some((code, statement, pos))
    })
}

/// The raw source position in effect at `offset`: the last entry at or before it (V8's
/// `AbstractCode::SourcePosition`). For machine code pass `pc − start − 1` (the return address
/// is one past the call); for bytecode, the offset itself.
pub fn position_at(table: &[u8], offset: u64) -> Option<i64> {
    let offset = i64::try_from(offset).ok()?;
    entries(table).take_while(|&(code, _, _)| code <= offset).last().map(|e| e.2)
}

/// The script offset of a raw position (None: external or no position).
pub fn script_offset(pos: i64) -> Option<u32> {
    if pos & 1 != 0 {
        return None;
    }
    let off = ((pos >> 1) & ((1 << 30) - 1)) - 1;
    u32::try_from(off).ok()
}

/// The inlining id of a raw position (0: the code's own function).
pub fn inlining_id(pos: i64) -> u16 {
    ((pos >> 31) & 0xffff) as u16
}

/// The bytecode offset an interpreted frame's `fp_bytecode_offset` slot holds: a SMI of the
/// offset from the tagged BytecodeArray (OTel, `symbolizeSFI`: `smi − (data − 1)`).
pub fn bytecode_offset_from_slot(layout: &Layout, slot: u64) -> Option<u32> {
    if !is_smi(slot) {
        return None;
    }
    let v = i64::from(smi_value(slot)) - (layout.bytecode_data as i64 - 1);
    u32::try_from(v).ok()
}

/// The BytecodeArray (tagged) of an SFI: `function_data` (`trusted_function_data` on
/// 12.x/13.x), or, when that holds baseline Code, the Code's `deoptimization_data` slot, which
/// holds the BytecodeArray for baseline code (OTel `getSFI`; measured on all five binaries of
/// issue 11 to equal the frame's `fp − 32`).
pub fn sfi_bytecode_array<M: Memory + ?Sized>(mem: &M, layout: &Layout, sfi: u64) -> Result<u64, HeapError> {
    let mut fd = field(mem, sfi, layout.sfi_function_data, "SharedFunctionInfo.function_data")?;
    let mut t = instance_type(mem, layout, fd)?;
    if t == layout.type_code {
        fd = field(mem, fd, layout.code_deoptimization_data, "baseline Code's bytecode")?;
        t = instance_type(mem, layout, fd)?;
    }
    if t != layout.type_bytecode_array {
        return Err(HeapError::WrongType { what: "function data", addr: fd, found: t, expected: "BytecodeArray" });
    }
    Ok(fd)
}

/// A BytecodeArray's source position table (None: V8 has not collected it, it does so lazily).
pub fn bytecode_position_table<M: Memory + ?Sized>(
    mem: &M,
    layout: &Layout,
    bytecode: u64,
) -> Result<Option<Vec<u8>>, HeapError> {
    let t = field(mem, bytecode, layout.bytecode_source_positions, "BytecodeArray.source_position_table")?;
    if !is_heap_object(t) || !layout.is_byte_array(instance_type(mem, layout, t)?) {
        // undefined (not collected) or an exception marker (being collected).
        return Ok(None);
    }
    byte_array(mem, layout, t, "source position table").map(Some)
}

/// The line of bytecode offset `offset` in the function of `sfi` (named `func`): from its
/// BytecodeArray's position table, or the function's first line when V8 has no table yet.
pub fn line_at_bytecode_offset<M: Memory + ?Sized>(
    mem: &M,
    layout: &Layout,
    sfi: u64,
    func: &JsFunctionName,
    offset: u32,
) -> Result<Option<u32>, HeapError> {
    let bytecode = sfi_bytecode_array(mem, layout, sfi)?;
    let Some(table) = bytecode_position_table(mem, layout, bytecode)? else {
        return Ok(func.start_line);
    };
    Ok(position_at(&table, u64::from(offset)).and_then(script_offset).and_then(|p| func.line_of(p)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Encodes entries as V8's `SourcePositionTableBuilder` does.
    pub(crate) fn encode(entries: &[(i64, bool, i64)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut put = |v: i64| {
            let mut z = ((v << 1) ^ (v >> 63)) as u64;
            loop {
                let b = (z & 0x7f) as u8;
                z >>= 7;
                if z == 0 {
                    out.push(b);
                    break;
                }
                out.push(b | 0x80);
            }
        };
        let (mut code, mut pos) = (-1i64, 0i64);
        for &(c, statement, p) in entries {
            let d = c - code;
            put(if statement { d } else { -d - 1 });
            put(p - pos);
            code = c;
            pos = p;
        }
        out
    }

    /// A raw SourcePosition for script offset `off` with inlining id `id`.
    pub(crate) fn raw(off: u32, id: u16) -> i64 {
        ((i64::from(off) + 1) << 1) | (i64::from(id) << 31)
    }

    #[test]
    fn table_round_trip() {
        let want = vec![(0, true, raw(10, 0)), (5, false, raw(14, 0)), (9, true, raw(3, 0)), (300, true, raw(70_000, 2))];
        let t = encode(&want);
        assert_eq!(entries(&t).collect::<Vec<_>>(), want);
        assert_eq!(position_at(&t, 0).and_then(script_offset), Some(10));
        assert_eq!(position_at(&t, 4).and_then(script_offset), Some(10));
        assert_eq!(position_at(&t, 5).and_then(script_offset), Some(14));
        assert_eq!(position_at(&t, 299).and_then(script_offset), Some(3));
        let last = position_at(&t, 1000).unwrap();
        assert_eq!((script_offset(last), inlining_id(last)), (Some(70_000), 2));
        // Garbage: a truncated table stops, never panics.
        assert_eq!(entries(&[0x80, 0x80]).count(), 0);
        assert_eq!(entries(&[0xff; 20]).count(), 0);
        assert_eq!(position_at(&[], 3), None);
        assert_eq!(script_offset(1), None);
        assert_eq!(script_offset(0), None);
    }

    #[test]
    fn frame_slot_offsets() {
        let l = crate::runtime::v8::layout::Layout::new(
            crate::runtime::v8::V8Version::new(11, 3, 244, 8),
            &crate::runtime::v8::layout::tests::v11_3(),
        )
        .unwrap();
        // data = 54: the slot holds offset + 53.
        assert_eq!(bytecode_offset_from_slot(&l, crate::runtime::v8::heap::smi(53 + 23)), Some(23));
        assert_eq!(bytecode_offset_from_slot(&l, crate::runtime::v8::heap::smi(10)), None);
        assert_eq!(bytecode_offset_from_slot(&l, 0x1001), None);
    }
}
