//! Reading a CPython code object out of a live process: its names, file and line table, to
//! turn a recorded Python frame (code object address, instruction offset) into
//! `qualname (filename:line)`.
//!
//! Everything is read with `process_vm_readv` from a process that keeps running, so any of it
//! may be garbage: the code object may have been freed and its memory reused since the frame
//! was recorded. Each pointer is followed only after the object it leads to has the expected
//! `ob_type` (the addresses of `PyCode_Type`, `PyUnicode_Type` and `PyBytes_Type` in that
//! process, [`TypeAddrs`]); every size is bounded before it is read; the code object's
//! `co_firstlineno` is compared with the one the kernel saw when it recorded the frame (a
//! different value: the address now holds another code object). Nothing here panics or
//! overflows on any input.

use super::layout::Layout;
use super::linetable::LineTable;
use crate::runtime::mem::{le_i32, le_u32, le_u64, ProcMem, MAX_READ};
use memprof_common::python::{py_name_tag, PY_NO_CHECK};

/// Addresses (in the target process) of the type objects used to validate what is read:
/// `PyCode_Type`, `PyUnicode_Type`, `PyBytes_Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TypeAddrs {
    pub code: u64,
    pub unicode: u64,
    pub bytes: u64,
}

/// The longest string read, in characters (names and file names are far shorter; `PATH_MAX`
/// is 4096 bytes).
pub const MAX_STR_CHARS: u64 = 4096;
/// The largest line table read, in bytes.
pub const MAX_TABLE_BYTES: u64 = 1 << 20;
/// The largest object header read at once (every layout's `co_read` is far below).
const MAX_HEADER: u64 = 4096;

/// Why a code object (or one of its strings) could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    /// The memory is not mapped, or the process is gone.
    #[error("cannot read {what} at {addr:#x}")]
    Unreadable { what: &'static str, addr: u64 },
    /// The object's `ob_type` is not `PyCode_Type`.
    #[error("not a code object at {addr:#x} (ob_type {ob_type:#x})")]
    NotCode { addr: u64, ob_type: u64 },
    /// A code object, but not the one the frame ran: its `co_firstlineno` differs from the one
    /// recorded (the address was freed and reused).
    #[error("stale code object at {addr:#x}: co_firstlineno is {found}, the frame recorded {expected}")]
    Stale { addr: u64, found: u32, expected: u32 },
    /// A code object whose header makes no sense.
    #[error("implausible code object at {addr:#x}: {why}")]
    BadCode { addr: u64, why: &'static str },
    /// A name or file name that is not a readable compact `str`.
    #[error("bad string at {addr:#x}: {why}")]
    BadString { addr: u64, why: &'static str },
    /// A line table that is not a readable `bytes` object of a plausible size.
    #[error("bad line table at {addr:#x}: {why}")]
    BadLineTable { addr: u64, why: &'static str },
}

/// What a code object says of itself (immutable: cache it by address, with its
/// `firstlineno` to check frames against).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeInfo {
    /// `co_qualname` on 3.11+ (`Class.method`, `outer.<locals>.inner`), `co_name` before.
    pub qualname: String,
    /// `co_name`.
    pub name: String,
    /// `co_filename`.
    pub filename: String,
    /// `co_firstlineno`.
    pub firstlineno: u32,
    /// [`py_name_tag`] of its `co_qualname` (3.11+) or `co_name` pointer, as the kernel records it.
    pub name_tag: u32,
    /// `co_lnotab` (3.9) or `co_linetable` (3.10+).
    pub table: LineTable,
}

impl CodeInfo {
    /// The source line of the instruction at `instr_units` (code units = 2-byte instructions
    /// from the start of the bytecode). None if the table says no line.
    pub fn line(&self, instr_units: u32) -> Option<u32> {
        self.table.line(self.firstlineno, instr_units)
    }
}

/// `addr + off`, or an "unreadable" error where that wraps.
fn at(addr: u64, off: u64, what: &'static str) -> Result<u64, CodeError> {
    addr.checked_add(off).ok_or(CodeError::Unreadable { what, addr })
}

/// Where a field of `len` bytes at `off` ends (saturating: an absurd layout then fails to read).
fn end_of(off: u64, len: u64) -> u64 {
    off.saturating_add(len)
}

/// `len` bytes at `addr`, in reads of at most [`MAX_READ`] bytes (`len` is bounded by the
/// callers).
fn read_vec(mem: &ProcMem, addr: u64, len: u64, what: &'static str) -> Result<Vec<u8>, CodeError> {
    let unreadable = CodeError::Unreadable { what, addr };
    let n = usize::try_from(len).map_err(|_| unreadable.clone())?;
    at(addr, len, what)?;
    let mut buf = vec![0u8; n];
    let mut done = 0usize;
    for chunk in buf.chunks_mut(MAX_READ) {
        let a = at(addr, done as u64, what)?;
        mem.read(a, chunk).map_err(|_| unreadable.clone())?;
        done = done.saturating_add(chunk.len());
    }
    Ok(buf)
}

/// The first `len` bytes of the object at `addr` (its header; at most 4096 bytes).
fn read_header(mem: &ProcMem, addr: u64, len: u64, what: &'static str) -> Result<Vec<u8>, CodeError> {
    if addr == 0 || len > MAX_HEADER {
        return Err(CodeError::Unreadable { what, addr });
    }
    read_vec(mem, addr, len, what)
}

/// Reads the code object at `addr`. `check`: the co_firstlineno the kernel saw when it recorded
/// the frame, or u32::MAX (`memprof_common::python::PY_NO_CHECK`) if unknown: a different value
/// means the address now holds another object ([`CodeError::Stale`]).
pub fn read_code(
    mem: &ProcMem,
    layout: &Layout,
    types: &TypeAddrs,
    addr: u64,
    check: u32,
) -> Result<CodeInfo, CodeError> {
    if layout.co_read > MAX_HEADER {
        return Err(CodeError::BadCode { addr, why: "layout reads too large a header" });
    }
    let head = read_header(mem, addr, layout.co_read, "code object")?;
    // A field the layout places outside the header read: a layout bug, reported as such.
    let missing = CodeError::BadCode { addr, why: "field outside the header read" };
    let ob_type = le_u64(&head, layout.ob_type).ok_or(missing.clone())?;
    if ob_type != types.code {
        return Err(CodeError::NotCode { addr, ob_type });
    }
    // The kernel read `co_firstlineno` (a C int) as a u32: compare it the same way.
    let found = le_u32(&head, layout.co_firstlineno).ok_or(missing.clone())?;
    if check != PY_NO_CHECK && found != check {
        return Err(CodeError::Stale { addr, found, expected: check });
    }
    if le_i32(&head, layout.co_firstlineno).is_none_or(|l| l < 0) {
        return Err(CodeError::BadCode { addr, why: "negative co_firstlineno" });
    }
    let ptr = |off: u64| le_u64(&head, off).ok_or(missing.clone());
    let name_tag = py_name_tag(ptr(layout.co_qualname.unwrap_or(layout.co_name))?);
    let name = read_str(mem, layout, types, ptr(layout.co_name)?)?;
    let qualname = match layout.co_qualname {
        Some(off) => read_str(mem, layout, types, ptr(off)?)?,
        None => name.clone(),
    };
    let filename = read_str(mem, layout, types, ptr(layout.co_filename)?)?;
    let table = read_bytes(mem, layout, types, ptr(layout.co_linetable)?, MAX_TABLE_BYTES)?;
    if layout.minor <= 10 && table.len() % 2 != 0 {
        // 3.9's lnotab and 3.10's linetable are made of pairs.
        return Err(CodeError::BadLineTable { addr, why: "odd length" });
    }
    Ok(CodeInfo {
        qualname,
        name,
        filename,
        firstlineno: found,
        name_tag,
        table: LineTable::for_minor(layout.minor, table),
    })
}

/// The `PyASCIIObject.state` bit field (same positions 3.9–3.14: `interned:2, kind:3,
/// compact:1, ascii:1`, then `ready` ≤ 3.11 or `statically_allocated` 3.12+).
mod state {
    pub const KIND_SHIFT: u32 = 2;
    pub const KIND_MASK: u32 = 7;
    pub const COMPACT: u32 = 1 << 5;
    pub const ASCII: u32 = 1 << 6;
}

/// A compact str object's text (UTF-8), at most 4096 chars; validates ob_type ==
/// types.unicode.
///
/// Only compact strings are read (their characters follow the header: at
/// `sizeof(PyASCIIObject)` when ASCII, else at `sizeof(PyCompactUnicodeObject)`); the names
/// and file names of code objects always are. The characters are read with their terminating
/// NUL, which must be there. UCS1 is Latin-1; UCS2 and UCS4 are code points, surrogates and
/// values past U+10FFFF becoming U+FFFD.
pub fn read_str(mem: &ProcMem, layout: &Layout, types: &TypeAddrs, addr: u64) -> Result<String, CodeError> {
    let bad = |why| CodeError::BadString { addr, why };
    let hlen = end_of(layout.ob_type, 8).max(end_of(layout.str_length, 8)).max(end_of(layout.str_state, 4));
    let head = read_header(mem, addr, hlen, "str object")?;
    let ob_type = le_u64(&head, layout.ob_type).ok_or(bad("header"))?;
    if ob_type != types.unicode {
        return Err(bad("not a str object"));
    }
    let len = le_u64(&head, layout.str_length).ok_or(bad("header"))?;
    let st = le_u32(&head, layout.str_state).ok_or(bad("header"))?;
    if len > MAX_STR_CHARS {
        // Also catches a negative Py_ssize_t.
        return Err(bad("too long"));
    }
    if st & state::COMPACT == 0 {
        return Err(bad("not a compact string"));
    }
    let ascii = st & state::ASCII != 0;
    let kind = (st >> state::KIND_SHIFT) & state::KIND_MASK;
    if !matches!(kind, 1 | 2 | 4) || (ascii && kind != 1) {
        return Err(bad("bad kind"));
    }
    let data = at(addr, if ascii { layout.str_ascii_size } else { layout.str_compact_size }, "str data")?;
    // len ≤ 4096 and kind ≤ 4: no overflow.
    let raw = read_vec(mem, data, (len + 1) * u64::from(kind), "str data")?;
    let k = kind as usize;
    let (text, nul) = raw.split_at(raw.len().saturating_sub(k));
    if nul.iter().any(|&b| b != 0) {
        return Err(bad("no terminating NUL"));
    }
    let mut out = String::with_capacity(text.len());
    match kind {
        1 => {
            if ascii && !text.is_ascii() {
                return Err(bad("non-ASCII byte in an ASCII string"));
            }
            out.extend(text.iter().map(|&b| char::from(b)));
        }
        // UCS2, UCS4: little-endian code points.
        _ => out.extend(text.chunks_exact(k).map(|c| {
            let u = c.iter().rev().fold(0u32, |v, &b| (v << 8) | u32::from(b));
            char::from_u32(u).unwrap_or(char::REPLACEMENT_CHARACTER)
        })),
    }
    Ok(out)
}

/// A bytes object's contents, at most `max` bytes; validates ob_type == types.bytes and the
/// terminating NUL every bytes object has.
fn read_bytes(
    mem: &ProcMem,
    layout: &Layout,
    types: &TypeAddrs,
    addr: u64,
    max: u64,
) -> Result<Vec<u8>, CodeError> {
    let bad = |why| CodeError::BadLineTable { addr, why };
    let hlen = end_of(layout.ob_type, 8).max(end_of(layout.ob_size, 8));
    let head = read_header(mem, addr, hlen, "bytes object")?;
    if le_u64(&head, layout.ob_type).ok_or(bad("header"))? != types.bytes {
        return Err(bad("not a bytes object"));
    }
    let size = le_u64(&head, layout.ob_size).ok_or(bad("header"))?;
    if size > max {
        // Also catches a negative Py_ssize_t.
        return Err(bad("too large"));
    }
    let mut data = read_vec(mem, at(addr, layout.bytes_sval, "bytes data")?, size + 1, "bytes data")?;
    if data.pop() != Some(0) {
        return Err(bad("no terminating NUL"));
    }
    Ok(data)
}

#[cfg(test)]
#[path = "code_tests.rs"]
mod tests;
