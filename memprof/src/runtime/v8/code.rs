//! Compiled JS frames: the kernel recorded the frame's pc (a return address into its code); this
//! finds the Code object holding it and what it says about that pc.
//!
//! - [`CodeCache::code_for_pc`]: scan back from the pc for the header that holds the
//!   instructions (an InstructionStream from V8 11.1.204, whose first field is its Code; the
//!   Code itself before), accepted only when the Code's instruction range holds the pc. No
//!   JSFunction → Code step, so it works where V8 keeps code behind a dispatch table (Node 24).
//! - [`optimized_frames`]: TurboFan and Maglev code inline small functions into their callers;
//!   the source position at the pc carries an inlining id, and the Code's DeoptimizationData
//!   gives each inlined function (literal array) and its call site (InliningPositions): one
//!   frame per function, innermost first.
//! - [`baseline_bytecode_offset`]: Sparkplug code maps back to bytecode offsets through the
//!   Code's offset table.
//!
//! These follow the OpenTelemetry eBPF profiler's V8 unwinder (`interpreter/nodev8/v8.go`:
//! `readCode`, `symbolizeCode`, `mapBaselineCodeOffsetToBytecode`), except where measured on the
//! five node binaries of issue 11 (DESIGN.md): the pc → Code scan replaces OTel's kernel-side
//! JSFunction → Code read, and baseline offsets follow V8's `BytecodeOffsetIterator` (the table's
//! first entry is the prologue).

use std::collections::BTreeMap;

use super::elf::BytecodeSizes;
use super::heap::{HeapError, Memory, byte_array, field, instance_type, is_heap_object, read_bytes, read_u64, untag};
use super::layout::Layout;
use super::positions::{inlining_id, position_at, script_offset};

/// How far back from a pc the Code header is searched.
const MAX_SCAN: u64 = 1 << 20;
/// One read of that scan.
const SCAN_CHUNK: u64 = 4096;
/// Inlined frames one pc may expand to.
const MAX_INLINED: usize = 64;
/// Code objects cached per process.
const MAX_CACHED: usize = 1 << 14;

/// The tier of a Code object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    Baseline,
    Maglev,
    Turbofan,
    /// Another kind (a builtin, a stub, Wasm…).
    Other(u32),
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::Baseline => "baseline",
            Tier::Maglev => "maglev",
            Tier::Turbofan => "turbofan",
            Tier::Other(_) => "other",
        }
    }
}

/// A Code object holding a pc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeInfo {
    /// Tagged.
    pub code: u64,
    pub start: u64,
    pub size: u64,
    pub tier: Tier,
}

/// Code objects found, by instruction range, per process.
#[derive(Default)]
pub struct CodeCache {
    by_start: BTreeMap<u64, CodeInfo>,
    /// The map word of the holder objects (one read-only map per isolate): once known, the scan
    /// compares words with it instead of reading each candidate's map.
    holder_map: Option<u64>,
    /// Reads of the target made by scans (for the bench and the logs).
    pub scan_reads: u64,
}

impl CodeCache {
    /// The Code whose instructions hold `pc`, from the cache when its header still says so.
    pub fn code_for_pc<M: Memory + ?Sized>(&mut self, mem: &M, layout: &Layout, pc: u64) -> Result<CodeInfo, HeapError> {
        if let Some((_, c)) = self.by_start.range(..=pc).next_back() {
            if pc < c.start + c.size {
                let c = *c;
                if read_code(mem, layout, c.code).is_ok_and(|again| again == c) {
                    return Ok(c);
                }
                self.by_start.remove(&c.start);
            }
        }
        let c = self.scan(mem, layout, pc)?;
        if self.by_start.len() >= MAX_CACHED {
            self.by_start.clear();
        }
        self.by_start.insert(c.start, c);
        Ok(c)
    }

    fn scan<M: Memory + ?Sized>(&mut self, mem: &M, layout: &Layout, pc: u64) -> Result<CodeInfo, HeapError> {
        let holder_type = if layout.code_start_is_pointer {
            layout.type_instruction_stream.ok_or(HeapError::Bad { what: "layout", addr: 0, why: "no InstructionStream type" })?
        } else {
            layout.type_code
        };
        let mut top = pc & !7;
        let low = pc.saturating_sub(MAX_SCAN);
        while top > low {
            // Page-aligned reads: a read that crossed into an unmapped guard page before a code
            // page would fail whole.
            let base = ((top - 1) & !(SCAN_CHUNK - 1)).max(low);
            self.scan_reads += 1;
            let raw = read_bytes(mem, base, top - base, "code")?;
            for (k, w) in raw.chunks_exact(8).enumerate().rev() {
                let word = u64::from_le_bytes(w.try_into().expect("8 bytes"));
                if !is_heap_object(word) || self.holder_map.is_some_and(|m| m != word) {
                    continue;
                }
                let mut t = [0u8; 2];
                if mem.read(untag(word) + layout.map_instance_type, &mut t).is_err() || u16::from_le_bytes(t) != holder_type {
                    continue;
                }
                let holder = base + 8 * k as u64 + 1;
                let code = if layout.code_start_is_pointer {
                    // InstructionStream: its first field after the map is its Code.
                    match read_u64(mem, untag(holder) + 8, "InstructionStream.code") {
                        Ok(c) => c,
                        Err(_) => continue,
                    }
                } else {
                    holder
                };
                let Ok(c) = read_code(mem, layout, code) else { continue };
                if c.start <= pc && pc < c.start + c.size {
                    self.holder_map = Some(word);
                    return Ok(c);
                }
            }
            top = base;
        }
        Err(HeapError::Bad { what: "code", addr: pc, why: "no Code object holds this pc" })
    }
}

/// The Code object `code` (tagged): its instruction range and tier, type-checked.
pub fn read_code<M: Memory + ?Sized>(mem: &M, layout: &Layout, code: u64) -> Result<CodeInfo, HeapError> {
    let t = instance_type(mem, layout, code)?;
    if t != layout.type_code {
        return Err(HeapError::WrongType { what: "Code", addr: code, found: t, expected: "Code" });
    }
    let start = if layout.code_start_is_pointer {
        read_u64(mem, untag(code) + layout.code_instruction_start, "Code.instruction_start")?
    } else {
        untag(code) + layout.code_instruction_start
    };
    let mut b = [0u8; 4];
    mem.read(untag(code) + layout.code_instruction_size, &mut b)
        .map_err(|_| HeapError::Unreadable { what: "Code.instruction_size", addr: code })?;
    let size = u64::from(u32::from_le_bytes(b));
    mem.read(untag(code) + layout.code_flags, &mut b).map_err(|_| HeapError::Unreadable { what: "Code.flags", addr: code })?;
    let kind = (u32::from_le_bytes(b) & layout.code_kind_mask) >> layout.code_kind_shift;
    if size == 0 || size > 64 << 20 {
        return Err(HeapError::Bad { what: "Code", addr: code, why: "implausible instruction size" });
    }
    // Maglev and TurboFan follow Baseline in every CodeKind list since V8 10.2 (Maglev is in
    // 10.2's list too, unused).
    let tier = match kind.checked_sub(layout.code_kind_baseline) {
        Some(0) => Tier::Baseline,
        Some(1) => Tier::Maglev,
        Some(2) => Tier::Turbofan,
        _ => Tier::Other(kind),
    };
    Ok(CodeInfo { code, start, size, tier })
}

/// An element of a (trusted, protected) FixedArray.
pub(super) fn element<M: Memory + ?Sized>(mem: &M, layout: &Layout, array: u64, i: u64, what: &'static str) -> Result<u64, HeapError> {
    let n = field(mem, array, layout.fixed_array_length, what)?;
    if !super::heap::is_smi(n) || (super::heap::smi_value(n) as i64) <= i as i64 {
        return Err(HeapError::Bad { what, addr: array, why: "index out of range" });
    }
    field(mem, array, layout.fixed_array_data + 8 * i, what)
}

/// Whether `t` is one of the FixedArray kinds DeoptimizationData and literal arrays come as.
fn is_fixed_array(layout: &Layout, t: u16) -> bool {
    t == layout.type_fixed_array
        || Some(t) == layout.type_trusted_fixed_array
        || Some(t) == layout.type_protected_fixed_array
        || Some(t) == layout.type_weak_fixed_array
        || Some(t) == layout.type_trusted_weak_fixed_array
}

/// One function of an optimised frame: its SFI (tagged) and the script offset of the position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InlinedFrame {
    pub sfi: u64,
    pub script_offset: Option<u32>,
}

/// What an optimised frame at `pc` of `code` runs: the Code's own SFI, and the functions,
/// innermost first (the last is the Code's own; the others were inlined into it).
pub fn optimized_frames<M: Memory + ?Sized>(
    mem: &M,
    layout: &Layout,
    code: &CodeInfo,
    pc: u64,
) -> Result<(u64, Vec<InlinedFrame>), HeapError> {
    let dd = field(mem, code.code, layout.code_deoptimization_data, "Code.deoptimization_data")?;
    let t = instance_type(mem, layout, dd)?;
    if !is_fixed_array(layout, t) {
        return Err(HeapError::WrongType { what: "DeoptimizationData", addr: dd, found: t, expected: "a FixedArray" });
    }
    let code_sfi = match (layout.deopt_wrapped_sfi, layout.sfi_wrapper_shared, layout.deopt_sfi) {
        (Some(i), Some(off), _) => {
            let w = element(mem, layout, dd, i, "DeoptimizationData wrapped SFI")?;
            if layout.type_sfi_wrapper.is_some_and(|wt| instance_type(mem, layout, w).ok() == Some(wt)) {
                field(mem, w, off, "SharedFunctionInfoWrapper.shared_info")?
            } else {
                w
            }
        }
        (_, _, Some(i)) => element(mem, layout, dd, i, "DeoptimizationData SFI")?,
        _ => return Err(HeapError::Bad { what: "layout", addr: 0, why: "no DeoptimizationData SFI index" }),
    };
    if instance_type(mem, layout, code_sfi)? != layout.type_sfi {
        return Err(HeapError::Bad { what: "DeoptimizationData SFI", addr: code_sfi, why: "not a SharedFunctionInfo" });
    }
    let table_ptr = field(mem, code.code, layout.code_source_positions, "Code.source_position_table")?;
    let table = if is_heap_object(table_ptr) && instance_type(mem, layout, table_ptr).is_ok_and(|t| layout.is_byte_array(t)) {
        Some(byte_array(mem, layout, table_ptr, "source position table")?)
    } else {
        None
    };
    let Some(table) = table else {
        return Ok((code_sfi, vec![InlinedFrame { sfi: code_sfi, script_offset: None }]));
    };
    let off = pc.wrapping_sub(code.start).wrapping_sub(1);
    let last_recorded = super::positions::entries(&table).map(|e| e.0).last().unwrap_or(-1);
    // Past the last recorded position lie the out-of-line blocks (slow paths), which record
    // none: the position of the branch that entered such a block stands for it.
    let at = match u64::try_from(last_recorded) {
        Ok(last) if off > last => deferred_entry(mem, code, pc, code.start + last).map_or(off, |from| from - code.start),
        _ => off,
    };
    let mut pos = position_at(&table, at);
    let mut out = Vec::new();
    if pos.is_some_and(|p| inlining_id(p) != 0) {
        let literals = element(mem, layout, dd, layout.deopt_literal_array, "DeoptimizationData literals")?;
        let positions_ptr = element(mem, layout, dd, layout.deopt_inlining_positions, "DeoptimizationData inlining positions")?;
        let positions = byte_array(mem, layout, positions_ptr, "inlining positions")?;
        while let Some(p) = pos.filter(|&p| inlining_id(p) != 0) {
            if out.len() >= MAX_INLINED {
                return Err(HeapError::Bad { what: "inlining positions", addr: positions_ptr, why: "a cycle" });
            }
            let at = 16 * (usize::from(inlining_id(p)) - 1);
            let entry = positions
                .get(at..at + 16)
                .ok_or(HeapError::Bad { what: "inlining positions", addr: positions_ptr, why: "id out of range" })?;
            let caller = i64::from_le_bytes(entry[0..8].try_into().expect("8 bytes"));
            let function = i32::from_le_bytes(entry[8..12].try_into().expect("4 bytes"));
            let sfi = if function < 0 {
                code_sfi
            } else {
                element(mem, layout, literals, function as u64, "inlined function")?
            };
            out.push(InlinedFrame { sfi, script_offset: script_offset(p) });
            pos = Some(caller);
        }
    }
    out.push(InlinedFrame { sfi: code_sfi, script_offset: pos.and_then(script_offset) });
    Ok((code_sfi, out))
}

/// Code decoded to find where an out-of-line block is entered from.
const MAX_DECODE: u64 = 1 << 16;
/// Out-of-line blocks followed back (a block entered from another one).
const MAX_HOPS: usize = 4;

/// Where the main code branches to the out-of-line block holding `pc` (an address past the
/// last recorded source position, `main_end`): the branch of the fast path that needed the slow
/// one, whose position is the slow path's. Decodes the Code's instructions in order (TurboFan
/// and Maglev code on x64 hold no data between instructions before their out-of-line blocks),
/// takes the block as starting at the last branch target at or before `pc`, and follows a
/// branch into it back to the main code (through at most [`MAX_HOPS`] blocks).
pub fn deferred_entry<M: Memory + ?Sized>(mem: &M, code: &CodeInfo, pc: u64, main_end: u64) -> Option<u64> {
    use iced_x86::{Decoder, DecoderOptions, FlowControl, OpKind};
    let len = code.size.min(MAX_DECODE);
    let bytes = read_bytes(mem, code.start, len, "code").ok()?;
    let mut decoder = Decoder::with_ip(64, &bytes, code.start, DecoderOptions::NONE);
    let mut branches: Vec<(u64, u64)> = Vec::new();
    while decoder.can_decode() {
        let insn = decoder.decode();
        if matches!(insn.flow_control(), FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch)
            && matches!(insn.op0_kind(), OpKind::NearBranch64 | OpKind::NearBranch32 | OpKind::NearBranch16)
        {
            branches.push((insn.ip(), insn.near_branch_target()));
        }
    }
    let mut cur = pc;
    for _ in 0..MAX_HOPS {
        let block = branches.iter().map(|b| b.1).filter(|&t| t <= cur && t > main_end).max()?;
        let from = branches.iter().filter(|b| b.1 == block && b.0 < block).map(|b| b.0).min()?;
        if from <= main_end {
            return Some(from);
        }
        cur = from;
    }
    None
}

/// Sparkplug: the bytecode offset whose machine code holds `pc` in baseline `code`, given the
/// function's BytecodeArray (tagged). The Code's `source_position_table` slot holds its
/// bytecode offset table: unsigned VLQs, the prologue's code length first, then each
/// bytecode's, in bytecode order (V8's `BytecodeOffsetIterator`).
pub fn baseline_bytecode_offset<M: Memory + ?Sized>(
    mem: &M,
    layout: &Layout,
    code: &CodeInfo,
    bytecode_array: u64,
    sizes: &BytecodeSizes,
    pc: u64,
) -> Result<u32, HeapError> {
    let table_ptr = field(mem, code.code, layout.code_source_positions, "baseline offset table")?;
    let table = byte_array(mem, layout, table_ptr, "baseline offset table")?;
    let n = field(mem, bytecode_array, layout.bytecode_length, "BytecodeArray.length")?;
    if !super::heap::is_smi(n) || super::heap::smi_value(n) <= 0 || super::heap::smi_value(n) > 1 << 20 {
        return Err(HeapError::Bad { what: "BytecodeArray", addr: bytecode_array, why: "implausible length" });
    }
    let bytecodes = read_bytes(mem, untag(bytecode_array) + layout.bytecode_data, super::heap::smi_value(n) as u64, "bytecodes")?;
    offset_in_table(&table, &bytecodes, sizes, pc.wrapping_sub(code.start).wrapping_sub(1))
        .ok_or(HeapError::Bad { what: "baseline offset table", addr: table_ptr, why: "pc past its end" })
}

/// [`baseline_bytecode_offset`] on the bytes: the bytecode offset for code offset `pc_off`.
pub fn offset_in_table(table: &[u8], bytecodes: &[u8], sizes: &BytecodeSizes, pc_off: u64) -> Option<u32> {
    let mut i = 0usize;
    let vlq = |i: &mut usize| super::positions::vlq(table, i);
    let mut end = vlq(&mut i)?;
    if pc_off < end {
        return Some(0);
    }
    let mut bc = 0usize;
    while bc < bytecodes.len() {
        end = end.checked_add(vlq(&mut i)?)?;
        if pc_off < end {
            return u32::try_from(bc).ok();
        }
        let op = bytecodes[bc];
        // Wide, ExtraWide and their DebugBreak forms prefix the next bytecode, scaling its
        // operands.
        let scale = match op {
            0 | 2 => 1,
            1 | 3 => 2,
            _ => 0,
        };
        let len = if scale > 0 {
            1 + usize::from(sizes.size(scale, *bytecodes.get(bc + 1)?)?)
        } else {
            usize::from(sizes.size(0, op)?)
        };
        bc += len.max(1);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::v8::elf::SymbolTable;

    #[test]
    fn baseline_offsets_follow_the_iterator() {
        // Bytecodes: op 5 (size 2), Wide + op 6 (size 3 at double scale), op 7 (size 1).
        let count = 10;
        let mut sizes = vec![1u8; 3 * count];
        sizes[5] = 2;
        sizes[count + 6] = 3;
        let sizes = BytecodeSizes { sizes, count, table: SymbolTable::Dynamic };
        let bytecodes = [5u8, 9, 0, 6, 9, 9, 7];
        // Prologue 10 bytes of code, then 4, 6, 2.
        let table = [10u8, 4, 6, 2];
        assert_eq!(offset_in_table(&table, &bytecodes, &sizes, 0), Some(0));
        assert_eq!(offset_in_table(&table, &bytecodes, &sizes, 10), Some(0));
        assert_eq!(offset_in_table(&table, &bytecodes, &sizes, 13), Some(0));
        assert_eq!(offset_in_table(&table, &bytecodes, &sizes, 14), Some(2));
        assert_eq!(offset_in_table(&table, &bytecodes, &sizes, 19), Some(2));
        assert_eq!(offset_in_table(&table, &bytecodes, &sizes, 20), Some(6));
        assert_eq!(offset_in_table(&table, &bytecodes, &sizes, 22), None);
        // Garbage never panics.
        assert_eq!(offset_in_table(&[0xff; 12], &bytecodes, &sizes, 5), None);
        assert_eq!(offset_in_table(&table, &[0u8], &sizes, 15), None);
        assert_eq!(offset_in_table(&table, &[200u8, 1, 1], &sizes, 15), None);
    }
}
