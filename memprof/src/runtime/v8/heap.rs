//! Reading V8 heap objects out of a live process: tagged values, maps and instance types, and
//! the chain that names a function: SharedFunctionInfo → name (a String, or its ScopeInfo) and
//! Script → file name and line ends.
//!
//! The chain is OTel's (`interpreter/nodev8/v8.go`: `getObjectAddrAndType`, `getSFI`,
//! `analyzeScopeInfo`, `getSource`). Every pointer is followed only after its map says it is
//! the expected type; every size is bounded before it is read (names ≤ 1 KiB, sources ≤ 16
//! MiB, tables ≤ 4 MiB). The target keeps running, so any of it may be garbage: errors, never
//! panics.

use std::{collections::HashMap, io, sync::Arc};

use super::layout::Layout;
use super::strings;
use crate::runtime::mem::{MAX_READ, ProcMem};

/// Function and file names longer than this (code units) are refused.
pub const MAX_NAME_UNITS: u64 = 1024;
/// Sources longer than this (code units) are not read for their line ends.
pub const MAX_SOURCE_UNITS: u64 = 16 << 20;
/// Line-end arrays and position tables larger than this (bytes) are refused.
pub const MAX_TABLE_BYTES: u64 = 4 << 20;
/// Context locals a ScopeInfo may plausibly have.
const MAX_CONTEXT_LOCALS: i32 = 1 << 16;
/// V8's `kScopeInfoMaxInlinedLocalNamesSize` (`src/objects/scope-info.tq`, since V8 10.0):
/// with this many context locals or more, their names sit in one hash table slot.
const MAX_INLINED_LOCAL_NAMES: u64 = 75;
/// ScopeInfo slots scanned for the function name and positions (OTel scans 16 from the start).
const SCOPE_SCAN_SLOTS: u64 = 12;

/// A process's memory, as the readers see it (a fake one in tests).
pub trait Memory {
    /// Fills `buf` from `addr`; an error unless every byte was read.
    fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl Memory for ProcMem {
    fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        ProcMem::read(self, addr, buf)
    }
}

/// Why an object could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeapError {
    /// Not mapped, or the process is gone.
    #[error("cannot read {what} at {addr:#x}")]
    Unreadable { what: &'static str, addr: u64 },
    #[error("{what}: {value:#x} is not a tagged heap object pointer")]
    NotHeapObject { what: &'static str, value: u64 },
    #[error("{what} at {addr:#x} has instance type {found}, not {expected}")]
    WrongType { what: &'static str, addr: u64, found: u16, expected: &'static str },
    #[error("{what} at {addr:#x} is too large ({len})")]
    TooLarge { what: &'static str, addr: u64, len: u64 },
    #[error("bad {what} at {addr:#x}: {why}")]
    Bad { what: &'static str, addr: u64, why: &'static str },
}

/// A tagged pointer to a heap object (`HeapObjectTag` 1 under mask 3; checked by the layout).
pub fn is_heap_object(v: u64) -> bool {
    v & 3 == 1
}

/// A SMI (`SmiTag` 0 under mask 1).
pub fn is_smi(v: u64) -> bool {
    v & 1 == 0
}

/// A SMI's value: the upper 32 bits (`SmiShiftSize` 31 + the tag bit).
pub fn smi_value(v: u64) -> i32 {
    (v >> 32) as u32 as i32
}

/// The SMI holding `v`.
pub fn smi(v: i32) -> u64 {
    u64::from(v as u32) << 32
}

/// The object address of a tagged pointer (or of an untagged address, unchanged).
pub fn untag(v: u64) -> u64 {
    v & !3
}

/// `len` bytes at `addr` (`len` bounded by the callers), in reads the kernel accepts.
pub fn read_bytes<M: Memory + ?Sized>(mem: &M, addr: u64, len: u64, what: &'static str) -> Result<Vec<u8>, HeapError> {
    let unreadable = HeapError::Unreadable { what, addr };
    if len > MAX_SOURCE_UNITS * 2 || addr.checked_add(len).is_none() {
        return Err(unreadable);
    }
    let mut buf = vec![0u8; len as usize];
    for (i, chunk) in buf.chunks_mut(MAX_READ).enumerate() {
        let at = addr + (i * MAX_READ) as u64;
        mem.read(at, chunk).map_err(|_| unreadable.clone())?;
    }
    Ok(buf)
}

/// The word at `addr`.
pub fn read_u64<M: Memory + ?Sized>(mem: &M, addr: u64, what: &'static str) -> Result<u64, HeapError> {
    let mut b = [0u8; 8];
    mem.read(addr, &mut b).map_err(|_| HeapError::Unreadable { what, addr })?;
    Ok(u64::from_le_bytes(b))
}

/// The tagged field at `off` of the object `obj` (tagged or not).
pub fn field<M: Memory + ?Sized>(mem: &M, obj: u64, off: u64, what: &'static str) -> Result<u64, HeapError> {
    let addr = untag(obj).checked_add(off).ok_or(HeapError::Unreadable { what, addr: obj })?;
    read_u64(mem, addr, what)
}

/// The instance type of the heap object `tagged` points to: its map's `instance_type`.
pub fn instance_type<M: Memory + ?Sized>(mem: &M, layout: &Layout, tagged: u64) -> Result<u16, HeapError> {
    if !is_heap_object(tagged) {
        return Err(HeapError::NotHeapObject { what: "object", value: tagged });
    }
    let map = field(mem, tagged, layout.map, "map")?;
    if !is_heap_object(map) {
        return Err(HeapError::NotHeapObject { what: "map", value: map });
    }
    let addr = untag(map).checked_add(layout.map_instance_type).ok_or(HeapError::Unreadable { what: "map", addr: map })?;
    let mut b = [0u8; 2];
    mem.read(addr, &mut b).map_err(|_| HeapError::Unreadable { what: "instance type", addr })?;
    Ok(u16::from_le_bytes(b))
}

/// Checks that `tagged` points to an object of type `want`.
pub fn expect_type<M: Memory + ?Sized>(
    mem: &M,
    layout: &Layout,
    tagged: u64,
    want: u16,
    what: &'static str,
) -> Result<(), HeapError> {
    let found = instance_type(mem, layout, tagged)?;
    if found != want {
        return Err(HeapError::WrongType { what, addr: tagged, found, expected: what });
    }
    Ok(())
}

/// The SMI length of an array object (FixedArray, ByteArray, BytecodeArray).
fn array_length<M: Memory + ?Sized>(mem: &M, layout: &Layout, a: u64, what: &'static str) -> Result<u64, HeapError> {
    let n = field(mem, a, layout.fixed_array_length, what)?;
    if !is_smi(n) || smi_value(n) < 0 {
        return Err(HeapError::Bad { what, addr: a, why: "length is not a non-negative SMI" });
    }
    Ok(smi_value(n) as u64)
}

/// The bytes of a ByteArray (or TrustedByteArray), at most [`MAX_TABLE_BYTES`].
pub fn byte_array<M: Memory + ?Sized>(mem: &M, layout: &Layout, a: u64, what: &'static str) -> Result<Vec<u8>, HeapError> {
    let t = instance_type(mem, layout, a)?;
    if !layout.is_byte_array(t) {
        return Err(HeapError::WrongType { what, addr: a, found: t, expected: "ByteArray" });
    }
    let n = array_length(mem, layout, a, what)?;
    if n > MAX_TABLE_BYTES {
        return Err(HeapError::TooLarge { what, addr: a, len: n });
    }
    read_bytes(mem, untag(a).wrapping_add(layout.fixed_array_data), n, what)
}

/// A string's text (names: at most [`MAX_NAME_UNITS`]).
pub fn read_name<M: Memory + ?Sized>(mem: &M, layout: &Layout, s: u64) -> Result<String, HeapError> {
    strings::read_string(mem, layout, s, MAX_NAME_UNITS)
}

/// Where a function's name came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameFrom {
    /// `name_or_scope_info` held the name itself (not compiled yet, or no scope info).
    String,
    /// The function's ScopeInfo (compiled functions).
    ScopeInfo,
    /// No name: an anonymous function.
    Anonymous,
}

/// How a script's line ends were found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineEndsFrom {
    /// `Script.line_ends`, computed by V8 (a stack trace was taken, …).
    LineEnds,
    /// Computed here from `Script.source`.
    Source,
    /// Neither could be read: no lines.
    None,
}

/// A Script: its file name and line ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Script {
    /// The tagged address it was read at.
    pub addr: u64,
    /// `Script.name` (None: not a string, e.g. code from `eval`).
    pub name: Option<String>,
    /// Position (UTF-16 units) of each line's end, as V8 keeps them.
    pub line_ends: Vec<u32>,
    pub line_ends_from: LineEndsFrom,
    /// The `name` and `source` words read, to tell whether the address still holds it.
    pub check: (u64, u64),
}

impl Script {
    /// The 1-based line holding source position `pos` (V8's `Script::GetLineNumber`).
    pub fn line_of(&self, pos: u32) -> Option<u32> {
        if self.line_ends.is_empty() {
            return None;
        }
        let i = self.line_ends.partition_point(|&end| end < pos);
        u32::try_from(i + 1).ok()
    }
}

/// Reads the Script `script` (tagged): name, and line ends from `line_ends` or the source.
pub fn read_script<M: Memory + ?Sized>(mem: &M, layout: &Layout, script: u64) -> Result<Script, HeapError> {
    expect_type(mem, layout, script, layout.type_script, "Script")?;
    let name_ptr = field(mem, script, layout.script_name, "Script.name")?;
    let source_ptr = field(mem, script, layout.script_source, "Script.source")?;
    let name = if is_heap_object(name_ptr) && instance_type(mem, layout, name_ptr).is_ok_and(|t| layout.is_string(t)) {
        Some(read_name(mem, layout, name_ptr)?)
    } else {
        None
    };
    let mut line_ends_from = LineEndsFrom::LineEnds;
    let line_ends = match script_line_ends(mem, layout, script) {
        Some(ends) => ends,
        None => match strings::line_ends(mem, layout, source_ptr, MAX_SOURCE_UNITS) {
            Ok(ends) => {
                line_ends_from = LineEndsFrom::Source;
                ends
            }
            Err(_) => {
                line_ends_from = LineEndsFrom::None;
                Vec::new()
            }
        },
    };
    Ok(Script { addr: script, name, line_ends, line_ends_from, check: (name_ptr, source_ptr) })
}

/// `Script.line_ends` when V8 has computed it: a FixedArray of increasing SMIs.
fn script_line_ends<M: Memory + ?Sized>(mem: &M, layout: &Layout, script: u64) -> Option<Vec<u32>> {
    let le = field(mem, script, layout.script_line_ends, "Script.line_ends").ok()?;
    if instance_type(mem, layout, le).ok()? != layout.type_fixed_array {
        return None;
    }
    let n = array_length(mem, layout, le, "line ends").ok()?;
    if n == 0 || n * 8 > MAX_TABLE_BYTES {
        return None;
    }
    let raw = read_bytes(mem, untag(le).wrapping_add(layout.fixed_array_data), n * 8, "line ends").ok()?;
    let mut out = Vec::with_capacity(n as usize);
    for w in raw.chunks_exact(8) {
        let v = u64::from_le_bytes(w.try_into().ok()?);
        let end = u32::try_from(smi_value(v)).ok().filter(|_| is_smi(v))?;
        if out.last().is_some_and(|&prev| prev > end) {
            return None;
        }
        out.push(end);
    }
    Some(out)
}

/// What a ScopeInfo says of its function.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScopeFacts {
    pub name: Option<String>,
    /// Start and end source positions of the function.
    pub positions: Option<(u32, u32)>,
}

/// Reads the function name and positions from a ScopeInfo (tagged). OTel's heuristic
/// (`analyzeScopeInfo`): after the fixed slots and the context locals (names, then infos), the
/// first string is the function's name (its function variable's, or the inferred name), and the
/// first increasing pair of SMIs after it is its start and end position. From V8 12.8.44 the
/// positions sit at fixed slots 3 and 4.
pub fn read_scope_info<M: Memory + ?Sized>(mem: &M, layout: &Layout, si: u64) -> Result<ScopeFacts, HeapError> {
    expect_type(mem, layout, si, layout.type_scope_info, "ScopeInfo")?;
    // HeapObject-based ScopeInfo (V8 ≥ 9.1.71): slots follow the map.
    let slots = untag(si).wrapping_add(layout.map + 8);
    let slot = |i: u64| read_u64(mem, slots.wrapping_add(8 * i), "ScopeInfo slot");
    let ncl = slot(layout.scope_info_ncontextlocals)?;
    if !is_smi(ncl) || !(0..MAX_CONTEXT_LOCALS).contains(&smi_value(ncl)) {
        return Err(HeapError::Bad { what: "ScopeInfo", addr: si, why: "implausible context local count" });
    }
    let ncl = smi_value(ncl) as u64;
    let mut facts = ScopeFacts::default();
    if layout.scope_info_fixed_positions {
        let (s, e) = (slot(3)?, slot(4)?);
        if is_smi(s) && is_smi(e) && 0 <= smi_value(s) && smi_value(s) <= smi_value(e) {
            facts.positions = Some((smi_value(s) as u32, smi_value(e) as u32));
        }
    }
    let locals = if ncl < MAX_INLINED_LOCAL_NAMES { 2 * ncl } else { 1 + ncl };
    let first = layout.scope_info_first_vars + locals;
    let raw = read_bytes(mem, slots.wrapping_add(8 * first), 8 * SCOPE_SCAN_SLOTS, "ScopeInfo slots")?;
    let mut prev = 1u64; // not a SMI
    for w in raw.chunks_exact(8) {
        let cur = u64::from_le_bytes(w.try_into().unwrap_or_default());
        if facts.name.as_deref().is_none_or(str::is_empty) && is_heap_object(cur) {
            if let Ok(name) = read_name(mem, layout, cur) {
                facts.name = Some(name);
                if facts.positions.is_some() {
                    break;
                }
            }
        }
        if facts.positions.is_none() && is_smi(cur) && is_smi(prev) {
            let (s, e) = (smi_value(prev), smi_value(cur));
            if 0 <= s && s < e {
                facts.positions = Some((s as u32, e as u32));
                break;
            }
        }
        prev = cur;
    }
    Ok(facts)
}

/// A function, named from its SharedFunctionInfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsFunctionName {
    /// `(anonymous)` when it has none.
    pub name: String,
    pub name_from: NameFrom,
    /// Its Script, None for functions without one (builtins, API functions).
    pub script: Option<Arc<Script>>,
    /// Where the function starts (source position, UTF-16 units), when known.
    pub start_position: Option<u32>,
    /// Its first line (1-based), when known.
    pub start_line: Option<u32>,
    /// [`name_tag`] of the SFI when it was read: the check a recorded frame is compared with.
    pub tag: u16,
}

impl JsFunctionName {
    /// The script's file name, if any.
    pub fn file(&self) -> Option<&str> {
        self.script.as_ref()?.name.as_deref()
    }

    /// The line of source position `pos` in its script.
    pub fn line_of(&self, pos: u32) -> Option<u32> {
        self.script.as_ref()?.line_of(pos)
    }
}

/// The validity tag of an SFI: 16 bits of its `name_or_scope_info` pointer (`>> 3`), as the
/// kernel side is to record it (DESIGN.md, "What the kernel records"). An SFI moved by the GC,
/// or another object at its address, almost surely has another.
pub fn tag_of(name_or_scope_info: u64) -> u16 {
    (name_or_scope_info >> 3) as u16
}

/// The SFI's validity tag, read now.
pub fn name_tag<M: Memory + ?Sized>(mem: &M, layout: &Layout, sfi: u64) -> Result<u16, HeapError> {
    Ok(tag_of(field(mem, sfi, layout.sfi_name_or_scope_info, "SharedFunctionInfo.name_or_scope_info")?))
}

/// The SharedFunctionInfo (tagged) of a JSFunction (tagged), both type-checked: the step the
/// kernel takes at each JS frame's `fp − 16` slot.
pub fn sfi_of_function<M: Memory + ?Sized>(mem: &M, layout: &Layout, function: u64) -> Result<u64, HeapError> {
    let t = instance_type(mem, layout, function)?;
    if !layout.is_js_function(t) {
        return Err(HeapError::WrongType { what: "JSFunction", addr: function, found: t, expected: "a JSFunction type" });
    }
    let sfi = field(mem, function, layout.js_function_shared, "JSFunction.shared")?;
    expect_type(mem, layout, sfi, layout.type_sfi, "SharedFunctionInfo")?;
    Ok(sfi)
}

/// Names the function of SharedFunctionInfo `sfi` (its address, tagged or not), reading its
/// script afresh. See [`name_sfi_cached`] to keep scripts between calls.
pub fn name_sfi<M: Memory + ?Sized>(mem: &M, layout: &Layout, sfi: u64) -> Result<JsFunctionName, HeapError> {
    name_sfi_cached(mem, layout, sfi, &mut ScriptCache::default())
}

/// Scripts read, by tagged address, kept while the address holds the same name and source
/// pointers (a moved or dead Script's address may be taken by another).
#[derive(Default)]
pub struct ScriptCache {
    scripts: HashMap<u64, Arc<Script>>,
}

impl ScriptCache {
    /// The Script at `addr` (tagged), from the cache when still valid.
    pub fn get<M: Memory + ?Sized>(&mut self, mem: &M, layout: &Layout, addr: u64) -> Result<Arc<Script>, HeapError> {
        if let Some(s) = self.scripts.get(&addr) {
            let still = expect_type(mem, layout, addr, layout.type_script, "Script").is_ok()
                && field(mem, addr, layout.script_name, "Script.name").ok() == Some(s.check.0)
                && field(mem, addr, layout.script_source, "Script.source").ok() == Some(s.check.1);
            if still {
                return Ok(s.clone());
            }
        }
        let s = Arc::new(read_script(mem, layout, addr)?);
        self.scripts.insert(addr, s.clone());
        Ok(s)
    }

    pub fn len(&self) -> usize {
        self.scripts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scripts.is_empty()
    }
}

/// [`name_sfi`], with scripts from (and into) `scripts`.
pub fn name_sfi_cached<M: Memory + ?Sized>(
    mem: &M,
    layout: &Layout,
    sfi: u64,
    scripts: &mut ScriptCache,
) -> Result<JsFunctionName, HeapError> {
    let sfi = untag(sfi) | 1;
    expect_type(mem, layout, sfi, layout.type_sfi, "SharedFunctionInfo")?;
    let nos = field(mem, sfi, layout.sfi_name_or_scope_info, "SharedFunctionInfo.name_or_scope_info")?;
    let (mut name, mut name_from, mut positions) = (String::new(), NameFrom::Anonymous, None);
    // A SMI here (kNoSharedNameSentinel) is an anonymous function.
    if is_heap_object(nos) {
        let t = instance_type(mem, layout, nos)?;
        if t == layout.type_scope_info {
            let facts = read_scope_info(mem, layout, nos)?;
            name = facts.name.unwrap_or_default();
            name_from = NameFrom::ScopeInfo;
            positions = facts.positions;
        } else if layout.is_string(t) {
            name = read_name(mem, layout, nos)?;
            name_from = NameFrom::String;
        } else {
            return Err(HeapError::WrongType { what: "name_or_scope_info", addr: nos, found: t, expected: "a String or ScopeInfo" });
        }
    }
    if name.is_empty() {
        name = "(anonymous)".into();
        name_from = NameFrom::Anonymous;
    }
    // `script_or_debug_info`: a Script, or a DebugInfo while a debugger looks at it (no file).
    let script_ptr = field(mem, sfi, layout.sfi_script, "SharedFunctionInfo.script")?;
    let script = if instance_type(mem, layout, script_ptr).ok() == Some(layout.type_script) {
        Some(scripts.get(mem, layout, script_ptr)?)
    } else {
        None
    };
    let start_position = positions.map(|p| p.0);
    let start_line = start_position.and_then(|p| script.as_ref()?.line_of(p));
    Ok(JsFunctionName { name, name_from, script, start_position, start_line, tag: tag_of(nos) })
}

#[cfg(test)]
#[path = "heap_tests.rs"]
mod tests;
