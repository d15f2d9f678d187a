//! The frames an optimised (TurboFan, Maglev) frame stands for at a call, from the Code's
//! deoptimization data: what V8 itself uses for stack traces of optimised code
//! (`OptimizedFrame::Summarize`).
//!
//! The source position table (`code.rs`) names inlined functions well where the compiler
//! recorded a position for the call, but calls from out-of-line code (the slow path of an
//! inlined `new Uint8Array`, which is how a Buffer gets its memory) carry the position of
//! whatever came before. Every call that may deoptimise has a *lazy deopt point* instead: a
//! DeoptimizationData entry `(bytecode offset, translation index, pc)` whose pc is the call's
//! return address, and a translation listing the frames to rebuild, outermost first, each an
//! opcode with operands — for a JS frame its bytecode offset and the literal id of its
//! SharedFunctionInfo. Values follow each frame (registers, stack slots, literals…), skipped
//! here with the opcode table the binary itself holds ([`super::opcodes`]).
//!
//! Encoding (V8 ≥ 10.5: `src/deoptimizer/translation-array.cc`, `TranslationArrayIterator`):
//! an opcode is one byte, an operand an unsigned VLQ (7 bits a byte, low first); signed operands
//! keep their sign in bit 0. `BEGIN*` opens a translation; its first operand is the distance back
//! to a *basis* translation, and `MATCH_PREVIOUS_TRANSLATION n` means "the next n instructions
//! are the basis's, from where this translation stands in it". Every structure read is checked:
//! a translation must hold exactly the frames its `BEGIN` announces, every literal must be a
//! SharedFunctionInfo, or nothing is taken from it.

use super::code::{CodeInfo, element};
use super::heap::{HeapError, Memory, byte_array, field, instance_type, is_smi, read_bytes, smi_value, untag};
use super::layout::Layout;
use super::opcodes::Opcodes;

/// Instructions one translation may hold before it is taken for garbage.
const MAX_INSTRUCTIONS: usize = 1 << 16;
/// Frames one translation may announce.
const MAX_FRAMES: i32 = 256;
/// Deopt entries read (3 words each).
const MAX_ENTRIES: u64 = 1 << 14;

/// One frame of a translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TranslatedFrame {
    /// Tagged SharedFunctionInfo.
    pub sfi: u64,
    /// Of the call (interpreted frames); None for a JS builtin's continuation.
    pub bytecode_offset: Option<u32>,
}

/// One unsigned VLQ operand (at most 32 bits).
fn uvlq(buf: &[u8], i: &mut usize) -> Option<u32> {
    u32::try_from(super::positions::vlq(buf, i)?).ok()
}

fn signed(u: u32) -> i32 {
    let v = (u >> 1) as i32;
    if u & 1 != 0 { -v } else { v }
}

/// V8's `TranslationArrayIterator`.
struct Iter<'a> {
    buf: &'a [u8],
    ops: &'a Opcodes,
    index: usize,
    prev: usize,
    remaining: u32,
    ops_since_prev: u32,
    match_previous: Option<u8>,
}

impl Iter<'_> {
    fn count(&self, op: u8) -> Option<u8> {
        self.ops.counts.get(usize::from(op)).copied()
    }

    fn opcode_at_prev(&mut self) -> Option<u8> {
        let op = *self.buf.get(self.prev)?;
        self.prev += 1;
        // A basis never matches another translation.
        (usize::from(op) < self.ops.counts.len() && Some(op) != self.match_previous).then_some(op)
    }

    fn next_opcode(&mut self) -> Option<u8> {
        if self.remaining > 0 {
            self.remaining -= 1;
        }
        if self.remaining > 0 {
            return self.opcode_at_prev();
        }
        let mut op = *self.buf.get(self.index)?;
        self.index += 1;
        // The short form of MATCH_PREVIOUS_TRANSLATION (V8 ≥ 11.x): a byte past the last opcode,
        // holding the count as `byte - opcode count`.
        let short_match = usize::from(op).checked_sub(self.ops.counts.len());
        if short_match.is_some() && self.match_previous.is_none() {
            return None;
        }
        if let Some(n) = short_match {
            self.remaining = n as u32;
            if self.remaining == 0 {
                return None;
            }
            return self.take_from_basis();
        }
        if self.ops.is_begin(op) {
            if self.match_previous.is_some() {
                let mut t = self.index;
                let lookback = uvlq(self.buf, &mut t)? as usize;
                if lookback != 0 {
                    self.prev = (self.index - 1).checked_sub(lookback)?;
                }
            }
            self.ops_since_prev = 1;
        } else if Some(op) == self.match_previous {
            self.remaining = uvlq(self.buf, &mut self.index)?;
            if self.remaining == 0 {
                return None;
            }
            op = self.take_from_basis()?;
        } else {
            self.ops_since_prev += 1;
        }
        Some(op)
    }

    /// A MATCH_PREVIOUS_TRANSLATION: moves the basis cursor to where this translation stands in
    /// it and returns its next instruction's opcode.
    fn take_from_basis(&mut self) -> Option<u8> {
        for _ in 0..self.ops_since_prev {
            let skipped = self.opcode_at_prev()?;
            for _ in 0..self.count(skipped)? {
                uvlq(self.buf, &mut self.prev)?;
            }
        }
        self.ops_since_prev = 0;
        self.opcode_at_prev()
    }

    fn next_operand(&mut self) -> Option<u32> {
        if self.remaining > 0 {
            uvlq(self.buf, &mut self.prev)
        } else {
            uvlq(self.buf, &mut self.index)
        }
    }
}

/// The frames (literal id, bytecode offset or None) of the translation at `start`, outermost
/// first.
pub fn decode(buf: &[u8], ops: &Opcodes, start: usize) -> Option<Vec<(i32, Option<u32>)>> {
    let match_previous = ops.id("MATCH_PREVIOUS_TRANSLATION");
    let mut it = Iter { buf, ops, index: start, prev: 0, remaining: 0, ops_since_prev: 0, match_previous };
    let begin = it.next_opcode()?;
    if !ops.is_begin(begin) {
        return None;
    }
    let operands: Vec<u32> = (0..it.count(begin)?).map(|_| it.next_operand()).collect::<Option<_>>()?;
    // With a basis to match, the first operand is the distance back to it.
    let frame_count = signed(*operands.get(usize::from(match_previous.is_some()))?);
    if !(1..=MAX_FRAMES).contains(&frame_count) {
        return None;
    }
    let mut frames = Vec::new();
    let mut seen = 0;
    for _ in 0..MAX_INSTRUCTIONS {
        if seen == frame_count {
            return Some(frames);
        }
        let op = it.next_opcode()?;
        if ops.is_begin(op) {
            return None;
        }
        let operands: Vec<u32> = (0..it.count(op)?).map(|_| it.next_operand()).collect::<Option<_>>()?;
        if ops.is_frame(op) {
            seen += 1;
            let name = &ops.names[usize::from(op)];
            if ops.is_interpreted_frame(op) || name.starts_with("JAVA_SCRIPT_BUILTIN_CONTINUATION") {
                let offset = u32::try_from(signed(*operands.first()?)).ok();
                let literal = signed(*operands.get(1)?);
                frames.push((literal, offset.filter(|_| ops.is_interpreted_frame(op))));
            }
        }
    }
    None
}

/// The JS frames of optimised `code` at return address `pc`, outermost first, from its lazy
/// deopt point there. `Ok(None)`: no deopt point at this pc (a call that cannot deoptimise).
pub fn frames_at<M: Memory + ?Sized>(
    mem: &M,
    layout: &Layout,
    ops: &Opcodes,
    code: &CodeInfo,
    pc: u64,
) -> Result<Option<Vec<TranslatedFrame>>, HeapError> {
    let bad = |why| HeapError::Bad { what: "deoptimization data", addr: code.code, why };
    let dd = field(mem, code.code, layout.code_deoptimization_data, "Code.deoptimization_data")?;
    let n = field(mem, dd, layout.fixed_array_length, "DeoptimizationData.length")?;
    if !is_smi(n) || smi_value(n) < 0 {
        return Err(bad("length is not a SMI"));
    }
    let len = smi_value(n) as u64;
    let first_candidates = [4, 3, 5].map(|d| layout.deopt_inlining_positions + d);
    if len > first_candidates[2] + 3 * MAX_ENTRIES {
        return Err(bad("too many entries"));
    }
    let words = read_bytes(mem, untag(dd) + layout.fixed_array_data, len * 8, "DeoptimizationData")?;
    let word = |i: u64| -> Option<u64> {
        let o = usize::try_from(i * 8).ok()?;
        Some(u64::from_le_bytes(words.get(o..o + 8)?.try_into().ok()?))
    };
    let smi_at = |i: u64| word(i).filter(|&w| is_smi(w)).map(smi_value);
    let want = i32::try_from(pc.wrapping_sub(code.start)).map_err(|_| bad("pc out of range"))?;
    // The entries start after the fixed slots (kFirstDeoptEntryIndex: the inlining positions'
    // index + 4 from V8 10.x to 13.x); each is (bytecode offset, translation index, pc).
    let mut entry = None;
    for first in first_candidates {
        if len < first || (len - first) % 3 != 0 {
            continue;
        }
        let plausible = (first..len).step_by(3).all(|i| smi_at(i).is_some() && smi_at(i + 1).is_some_and(|t| t >= 0) && smi_at(i + 2).is_some());
        if !plausible {
            continue;
        }
        entry = (first..len).step_by(3).find(|&i| smi_at(i + 2) == Some(want)).map(|i| smi_at(i + 1).unwrap_or(0));
        break;
    }
    let Some(translation_index) = entry else { return Ok(None) };
    let translation = byte_array(mem, layout, word(0).ok_or(bad("no translation"))?, "translation")?;
    let literals = word(layout.deopt_literal_array).ok_or(bad("no literal array"))?;
    let raw = decode(&translation, ops, translation_index as usize).ok_or(bad("translation does not decode"))?;
    let mut out = Vec::with_capacity(raw.len());
    for (literal, bytecode_offset) in raw {
        let literal = u64::try_from(literal).map_err(|_| bad("literal id out of range"))?;
        let sfi = element(mem, layout, literals, literal, "literal")?;
        if instance_type(mem, layout, sfi)? != layout.type_sfi {
            return Err(bad("a frame's literal is not a SharedFunctionInfo"));
        }
        out.push(TranslatedFrame { sfi, bytecode_offset });
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops() -> Opcodes {
        let names = ["BEGIN_WITH_FEEDBACK", "INTERPRETED_FRAME_WITH_RETURN", "REGISTER", "LITERAL", "CONSTRUCT_STUB_FRAME", "MATCH_PREVIOUS_TRANSLATION"];
        Opcodes { names: names.iter().map(|s| s.to_string()).collect(), counts: vec![3, 5, 1, 1, 3, 1] }
    }

    fn s(v: i32) -> u8 {
        (if v < 0 { ((-v) << 1) | 1 } else { v << 1 }) as u8
    }

    #[test]
    fn decodes_frames_and_matches_the_basis() {
        let o = ops();
        // Basis at 0: BEGIN(0, 2 frames, 2 js), frame(off 10, lit 1), REGISTER 3, frame(off 20, lit 2), LITERAL 0.
        let mut buf = vec![0, 0, s(2), s(2), 1, s(10), s(1), s(4), 0, 0, 2, 3, 1, s(20), s(2), s(1), 0, 0, 3, 0];
        let second = buf.len();
        // Second at `second`: BEGIN(lookback, 2, 2), MATCH 2 (frame 1 and REGISTER from the
        // basis), then its own last frame.
        buf.extend([0, second as u8, s(2), s(2), 5, 2, 1, s(30), s(3), s(1), 0, 0]);
        assert_eq!(decode(&buf, &o, 0), Some(vec![(1, Some(10)), (2, Some(20))]));
        assert_eq!(decode(&buf, &o, second), Some(vec![(1, Some(10)), (3, Some(30))]));
        // The same with the short form of the match (one byte: 6 opcodes + 2).
        let third = buf.len();
        buf.extend([0, third as u8, s(2), s(2), 6 + 2, 1, s(40), s(4), s(1), 0, 0]);
        assert_eq!(decode(&buf, &o, third), Some(vec![(1, Some(10)), (4, Some(40))]));
        // Stub frames count but are not JS frames.
        let stub = [0, 0, s(2), s(1), 4, 0, 0, 0, 1, s(5), s(7), s(0), 0, 0];
        assert_eq!(decode(&stub, &o, 0), Some(vec![(7, Some(5))]));
        // Garbage never panics and gives nothing.
        assert_eq!(decode(&[0, 0, s(3), s(3), 1], &o, 0), None);
        assert_eq!(decode(&[9, 9, 9], &o, 0), None);
        assert_eq!(decode(&[0xff; 40], &o, 0), None);
        assert_eq!(decode(&buf, &o, 1), None);
        assert_eq!(decode(&[], &o, 0), None);
    }
}
