//! CPython's line number tables: from an instruction offset to a source line, in the three
//! formats CPython 3.9–3.14 use.
//!
//! Each walk is a transcription of CPython's own `PyCode_Addr2Line` (`Objects/codeobject.c`) for
//! its version, so that memprof reports the line a traceback would; the formats are described
//! in CPython's `Objects/lnotab_notes.txt` (3.9, 3.10) and `Objects/locations.md` (3.11+). The
//! tables come from another process's memory: every walk is bounded by the table, uses no
//! unchecked indexing and saturating arithmetic, and answers `None` when it cannot say.
//!
//! Compared with the OpenTelemetry eBPF profiler (`interpreter/python/python.go`, read at
//! b442421a): its `mapByteCodeIndexToLine` (3.9) matches [`LineTable::Lnotab`]; its
//! `walkLineTable` (3.10) iterates over only half the table and so loses late lines, and its
//! `walkLocationTable` (3.11+) resets the line on a "no location" entry, where CPython keeps the
//! running line (later deltas apply to it); neither of those is copied here. The varint
//! readers follow CPython's `scan_varint` / `scan_signed_varint`, as `readVarint` /
//! `readSignedVarint` there do.

/// A code object's line table, as read from the process (the version picks the format).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineTable {
    /// 3.9: `co_lnotab`, pairs of (bytecode offset delta in bytes, line delta).
    Lnotab(Vec<u8>),
    /// 3.10: `co_linetable`, pairs of (range length in bytes, line delta or -128: no line).
    Lines310(Vec<u8>),
    /// 3.11+: `co_linetable`, the location table (entries of 1 to 8 code units).
    Locations(Vec<u8>),
}

/// Bytes per code unit (`sizeof(_Py_CODEUNIT)`): the 3.9 and 3.10 tables count bytes.
const UNIT: u64 = 2;

impl LineTable {
    /// Which format 3.`minor` uses.
    pub fn for_minor(minor: u32, table: Vec<u8>) -> LineTable {
        match minor {
            0..=9 => LineTable::Lnotab(table),
            10 => LineTable::Lines310(table),
            _ => LineTable::Locations(table),
        }
    }

    /// The raw table.
    pub fn bytes(&self) -> &[u8] {
        match self {
            LineTable::Lnotab(t) | LineTable::Lines310(t) | LineTable::Locations(t) => t,
        }
    }

    /// The source line of the instruction `instr_units` code units from the start of the
    /// bytecode, for a code object whose `co_firstlineno` is `firstlineno`: what
    /// `PyCode_Addr2Line(co, instr_units * 2)` returns, `None` where it returns -1 (the
    /// instruction has no line, or the offset is past the table) or a negative line.
    pub fn line(&self, firstlineno: u32, instr_units: u32) -> Option<u32> {
        let addrq = u64::from(instr_units) * UNIT;
        let first = i64::from(firstlineno);
        let line = match self {
            LineTable::Lnotab(t) => Some(lnotab_line(t, first, addrq)),
            LineTable::Lines310(t) => lines310_line(t, first, addrq),
            LineTable::Locations(t) => locations_line(t, first, addrq),
        }?;
        u32::try_from(line).ok()
    }
}

/// 3.9: CPython 3.9's `PyCode_Addr2Line` (`Objects/codeobject.c`), format in
/// `Objects/lnotab_notes.txt`:
///
/// ```c
/// while (--size >= 0) { addr += *p++; if (addr > addrq) break; line += (signed char)*p; p++; }
/// ```
///
/// Address deltas are unsigned bytes, line deltas signed bytes (since 3.6); the line is always
/// defined (the last one reached).
fn lnotab_line(t: &[u8], first: i64, addrq: u64) -> i64 {
    let mut addr = 0u64;
    let mut line = first;
    for pair in t.chunks_exact(2) {
        let &[a, l] = pair else { break };
        addr = addr.saturating_add(u64::from(a));
        if addr > addrq {
            break;
        }
        line = line.saturating_add(i64::from(l as i8));
    }
    line
}

/// 3.10: `PyCode_Addr2Line` → `_PyCode_CheckLineNumber` → `PyLineTable_NextAddressRange` →
/// `advance` (CPython 3.10 `Objects/codeobject.c`), format in `Objects/lnotab_notes.txt`.
///
/// Each pair (sdelta: unsigned byte, ldelta: signed byte) is the next address range
/// `[end, end + sdelta)` in bytes; `ldelta` is added to the running line unless it is -128,
/// which marks the range as having no line (and leaves the running line alone). Empty ranges
/// are skipped (they only carry line deltas too large for one byte). The answer is the line of
/// the first non-empty range that ends past `addrq` (ranges are contiguous from 0, so it
/// starts at or before `addrq`); none if the table ends first.
fn lines310_line(t: &[u8], first: i64, addrq: u64) -> Option<i64> {
    let mut end = 0u64;
    let mut computed = first;
    for pair in t.chunks_exact(2) {
        let &[sdelta, ldelta] = pair else { break };
        let ldelta = ldelta as i8;
        let start = end;
        end = end.saturating_add(u64::from(sdelta));
        let line = if ldelta == -128 {
            None
        } else {
            computed = computed.saturating_add(i64::from(ldelta));
            Some(computed)
        };
        if start != end && end > addrq {
            return line;
        }
    }
    None
}

/// The location table's entry kinds (`_PyCodeLocationInfoKind`, CPython `Include/cpython/code.h`
/// 3.11, `Include/internal/pycore_code.h` later).
mod kind {
    /// 0–9: `PY_CODE_LOCATION_INFO_SHORT0..9`: same line, one byte of columns.
    pub const ONE_LINE0: u8 = 10;
    pub const ONE_LINE1: u8 = 11;
    pub const ONE_LINE2: u8 = 12;
    pub const NO_COLUMNS: u8 = 13;
    pub const LONG: u8 = 14;
    pub const NONE: u8 = 15;
}

/// A cursor over a location table entry's varints (CPython's `scan_varint`: little-endian 6-bit
/// chunks, bit 6 set on every chunk but the last). Stops at the end of the table; chunks past
/// 32 bits are dropped (CPython's `unsigned int` would overflow there: garbage either way).
fn scan_varint(t: &[u8], pos: &mut usize) -> u32 {
    let mut val = 0u32;
    let mut shift = 0u32;
    while let Some(&b) = t.get(*pos) {
        *pos += 1;
        if shift < 32 {
            val |= u32::from(b & 63) << shift;
        }
        if b & 64 == 0 {
            break;
        }
        shift = shift.saturating_add(6);
    }
    val
}

/// CPython's `scan_signed_varint`: the low bit of the unsigned varint is the sign.
fn scan_signed_varint(t: &[u8], pos: &mut usize) -> i64 {
    let uval = scan_varint(t, pos);
    let mag = i64::from(uval >> 1);
    if uval & 1 != 0 {
        -mag
    } else {
        mag
    }
}

/// 3.11+: `PyCode_Addr2Line` → `_PyCode_CheckLineNumber` → `_PyLineTable_NextAddressRange` →
/// `advance` / `get_line_delta` / `is_no_line_marker` (CPython 3.11–3.14
/// `Objects/codeobject.c`), format in `Objects/locations.md`.
///
/// An entry starts with a byte with bit 7 set: bits 3–6 are its kind, bits 0–2 its length in
/// code units minus one. Kinds 0–9 (short form: one byte of columns follows) and 10–12 (one-line
/// form: line delta `kind - 10`, two column bytes) are read from the first byte alone; 13 (no
/// columns) and 14 (long form: then end line delta and columns as three varints) start with a
/// signed varint line delta; 15 is "no location": the range has no line, and the running line
/// is kept. As in CPython, the next entry is the next byte with bit 7 set (the bytes between
/// have bit 7 clear), so only the line delta is decoded.
fn locations_line(t: &[u8], first: i64, addrq: u64) -> Option<i64> {
    let mut pos = 0usize;
    let mut end = 0u64;
    let mut computed = first;
    while let Some(&b) = t.get(pos) {
        if b & 0x80 == 0 {
            // Only possible at the start (later entries are found by this bit): not a table.
            return None;
        }
        let code = (b >> 3) & 15;
        let mut p = pos + 1;
        let delta = match code {
            kind::NO_COLUMNS | kind::LONG => scan_signed_varint(t, &mut p),
            kind::ONE_LINE1 => 1,
            kind::ONE_LINE2 => 2,
            kind::ONE_LINE0 | kind::NONE => 0,
            _ => 0,
        };
        computed = computed.saturating_add(delta);
        let line = if code == kind::NONE { None } else { Some(computed) };
        end = end.saturating_add((u64::from(b & 7) + 1) * UNIT);
        if end > addrq {
            return line;
        }
        pos += 1;
        while t.get(pos).is_some_and(|&c| c & 0x80 == 0) {
            pos += 1;
        }
    }
    None
}

#[cfg(test)]
#[path = "linetable_tests.rs"]
pub(crate) mod tests;
