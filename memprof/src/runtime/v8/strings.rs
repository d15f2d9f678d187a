//! V8 strings read out of a live process: sequential one- and two-byte, cons, thin, sliced and
//! external (cached) strings, visited in code units (positions in V8's source positions count
//! UTF-16 units, so line ends are computed on units, not on decoded text).
//!
//! OTel (`interpreter/nodev8/v8.go`, `extractString`) reads sequential one-byte, cons and thin
//! strings; two-byte, sliced and external strings are added here. External strings matter: the
//! sources of Node's built-in modules (`node:internal/timers`) are external one-byte strings
//! whose cached character pointer sits in the word after `resource` (issue 11, measured on
//! Node 18, 20, 22 and 24).

use super::heap::{HeapError, Memory, field, instance_type, read_bytes, smi_value, is_smi};
use super::layout::Layout;

/// Cons/thin/sliced nesting followed at most (V8 flattens deep cons strings it reads often).
const MAX_DEPTH: u32 = 64;
/// Bytes read at once.
const CHUNK_BYTES: u64 = 64 << 10;

/// A run of code units of a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunk<'a> {
    /// Latin-1.
    OneByte(&'a [u8]),
    /// UTF-16.
    TwoByte(&'a [u16]),
}

/// The length (in code units) of string `s` (tagged), checking it is a string.
pub fn length<M: Memory + ?Sized>(mem: &M, layout: &Layout, s: u64) -> Result<u64, HeapError> {
    let t = instance_type(mem, layout, s)?;
    if !layout.is_string(t) {
        return Err(HeapError::WrongType { what: "string", addr: s, found: t, expected: "a string" });
    }
    string_length(mem, layout, s)
}

fn string_length<M: Memory + ?Sized>(mem: &M, layout: &Layout, s: u64) -> Result<u64, HeapError> {
    let raw = read_bytes(mem, (s & !3).wrapping_add(layout.string_length), 4, "string length")?;
    let n = i32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    u64::try_from(n).map_err(|_| HeapError::Bad { what: "string", addr: s, why: "negative length" })
}

/// Calls `f` with the code units `[start, start + len)` of string `s` (tagged), in order.
/// The caller bounds `len`.
pub fn visit<M: Memory + ?Sized>(
    mem: &M,
    layout: &Layout,
    s: u64,
    start: u64,
    len: u64,
    f: &mut dyn FnMut(Chunk<'_>),
) -> Result<(), HeapError> {
    visit_range(mem, layout, s, start, len, 0, f)
}

fn visit_range<M: Memory + ?Sized>(
    mem: &M,
    layout: &Layout,
    s: u64,
    start: u64,
    len: u64,
    depth: u32,
    f: &mut dyn FnMut(Chunk<'_>),
) -> Result<(), HeapError> {
    let bad = |why| HeapError::Bad { what: "string", addr: s, why };
    if depth > MAX_DEPTH {
        return Err(bad("nested too deeply"));
    }
    if len == 0 {
        return Ok(());
    }
    let t = instance_type(mem, layout, s)?;
    if !layout.is_string(t) {
        return Err(HeapError::WrongType { what: "string", addr: s, found: t, expected: "a string" });
    }
    let slen = string_length(mem, layout, s)?;
    if start.checked_add(len).is_none_or(|end| end > slen) {
        return Err(bad("range outside the string"));
    }
    let one_byte = t & layout.string_encoding_mask == layout.one_byte_string_tag;
    let obj = s & !3;
    let rep = t & layout.string_representation_mask;
    if rep == layout.seq_string_tag {
        let chars = if one_byte { layout.seq_one_byte_chars } else { layout.seq_two_byte_chars };
        read_units(mem, obj.wrapping_add(chars), start, len, one_byte, f)
    } else if rep == layout.cons_string_tag {
        let first = field(mem, s, layout.cons_first, "ConsString.first")?;
        let flen = length(mem, layout, first)?;
        let end = start + len;
        if start < flen {
            visit_range(mem, layout, first, start, end.min(flen) - start, depth + 1, f)?;
        }
        if end > flen {
            let second = field(mem, s, layout.cons_second, "ConsString.second")?;
            let from = start.max(flen);
            visit_range(mem, layout, second, from - flen, end - from, depth + 1, f)?;
        }
        Ok(())
    } else if rep == layout.thin_string_tag {
        let actual = field(mem, s, layout.thin_actual, "ThinString.actual")?;
        visit_range(mem, layout, actual, start, len, depth + 1, f)
    } else if rep == layout.sliced_string_tag {
        let parent = field(mem, s, layout.sliced_parent, "SlicedString.parent")?;
        let off = field(mem, s, layout.sliced_offset, "SlicedString.offset")?;
        if !is_smi(off) || smi_value(off) < 0 {
            return Err(bad("bad slice offset"));
        }
        let from = u64::try_from(smi_value(off)).unwrap_or(0).checked_add(start).ok_or(bad("bad slice offset"))?;
        visit_range(mem, layout, parent, from, len, depth + 1, f)
    } else if rep == layout.external_string_tag {
        if t & layout.uncached_external_string_mask != 0 {
            // No cached pointer: the characters are only reachable through a virtual call.
            return Err(bad("uncached external string"));
        }
        let data = field(mem, s, layout.external_data, "ExternalString data")?;
        if data == 0 {
            return Err(bad("external string without data"));
        }
        read_units(mem, data, start, len, one_byte, f)
    } else {
        Err(bad("unknown string representation"))
    }
}

/// Reads `len` units from `start` of the characters at `data`, in chunks.
fn read_units<M: Memory + ?Sized>(
    mem: &M,
    data: u64,
    start: u64,
    len: u64,
    one_byte: bool,
    f: &mut dyn FnMut(Chunk<'_>),
) -> Result<(), HeapError> {
    let width = if one_byte { 1 } else { 2 };
    let mut at = start.checked_mul(width).and_then(|o| data.checked_add(o));
    let mut left = len.checked_mul(width).ok_or(HeapError::TooLarge { what: "string", addr: data, len })?;
    let mut units: Vec<u16> = Vec::new();
    while left > 0 {
        let addr = at.ok_or(HeapError::Unreadable { what: "string characters", addr: data })?;
        let n = left.min(CHUNK_BYTES);
        let buf = read_bytes(mem, addr, n, "string characters")?;
        if one_byte {
            f(Chunk::OneByte(&buf));
        } else {
            units.clear();
            units.extend(buf.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])));
            f(Chunk::TwoByte(&units));
        }
        left -= n;
        at = addr.checked_add(n);
    }
    Ok(())
}

/// The text of string `s` (tagged): an error if longer than `max_units`.
pub fn read_string<M: Memory + ?Sized>(mem: &M, layout: &Layout, s: u64, max_units: u64) -> Result<String, HeapError> {
    let n = length(mem, layout, s)?;
    if n > max_units {
        return Err(HeapError::TooLarge { what: "string", addr: s, len: n });
    }
    let mut units: Vec<u16> = Vec::with_capacity(n as usize);
    visit(mem, layout, s, 0, n, &mut |c| match c {
        Chunk::OneByte(b) => units.extend(b.iter().map(|&b| u16::from(b))),
        Chunk::TwoByte(u) => units.extend_from_slice(u),
    })?;
    Ok(String::from_utf16_lossy(&units))
}

/// The line ends of source string `s` (tagged) as V8 computes them (`String::CalculateLineEnds`
/// with the ending line): the position of each line terminator (`\n`, `\r` not followed by
/// `\n`, U+2028, U+2029), then the source's length. An error if longer than `max_units`.
pub fn line_ends<M: Memory + ?Sized>(mem: &M, layout: &Layout, s: u64, max_units: u64) -> Result<Vec<u32>, HeapError> {
    let n = length(mem, layout, s)?;
    if n > max_units || n > u64::from(u32::MAX) {
        return Err(HeapError::TooLarge { what: "source", addr: s, len: n });
    }
    let mut ends = LineEnds::default();
    visit(mem, layout, s, 0, n, &mut |c| match c {
        Chunk::OneByte(b) => b.iter().for_each(|&u| ends.push(u16::from(u))),
        Chunk::TwoByte(u) => u.iter().for_each(|&u| ends.push(u)),
    })?;
    Ok(ends.finish())
}

/// Line ends computed one code unit at a time.
#[derive(Default)]
pub struct LineEnds {
    ends: Vec<u32>,
    pos: u32,
    /// A `\r` at this position, ending a line unless a `\n` follows.
    pending_cr: Option<u32>,
}

impl LineEnds {
    pub fn push(&mut self, u: u16) {
        if let Some(cr) = self.pending_cr.take() {
            if u != u16::from(b'\n') {
                self.ends.push(cr);
            }
        }
        match u {
            0x0d => self.pending_cr = Some(self.pos),
            0x0a | 0x2028 | 0x2029 => self.ends.push(self.pos),
            _ => {}
        }
        self.pos = self.pos.saturating_add(1);
    }

    pub fn finish(mut self) -> Vec<u32> {
        if let Some(cr) = self.pending_cr.take() {
            self.ends.push(cr);
        }
        self.ends.push(self.pos);
        self.ends
    }
}
