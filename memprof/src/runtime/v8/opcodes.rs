//! V8's deoptimization translation opcodes, as the running binary numbers them.
//!
//! Optimised code keeps, for every call it makes, a *translation*: the frames V8 would rebuild if
//! the code were deoptimised at that call, outermost first, each with its function (a literal
//! id) and bytecode offset — inlined functions included. V8 names JS frames from them for its
//! own stack traces (`OptimizedFrame::Summarize`), and memprof does the same where the source
//! position table has nothing precise for a pc (calls from out-of-line code, see
//! `translation.rs`).
//!
//! The opcodes are an enum whose members and operand counts change between V8 versions, and no
//! `v8dbg_*` symbol describes them. But every build keeps two tables of them in its read-only
//! data: `TranslationOpcodeToString`'s array of names (pointers to `"BEGIN_WITH_FEEDBACK"`,
//! …) and `TranslationOpcodeOperandCount`'s `counts[]` (an int per opcode). memprof finds the
//! names array through the pointers to a name every version has (`ARGUMENTS_ELEMENTS`) — raw
//! addresses in an executable, relative relocations in a shared library — and the counts as
//! the one int array of that length whose values fit what the names say (a `*_REGISTER` or
//! `*_STACK_SLOT` opcode has one operand, `OPTIMIZED_OUT` none, …). A binary where either is
//! not found, or not uniquely, gets no translations (its inlined frames come from the position
//! tables alone), and the summary says so.

use std::collections::HashMap;

use object::{Object, ObjectSection, ReadRef, RelocationTarget, SectionKind};

/// The opcode every V8 version has (the anchor of the names array).
const ANCHOR: &str = "ARGUMENTS_ELEMENTS";
/// More opcodes than any V8 has.
const MAX_OPCODES: usize = 96;
/// No opcode has more operands.
const MAX_OPERANDS: i32 = 8;

/// The binary's translation opcodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opcodes {
    pub names: Vec<String>,
    pub counts: Vec<u8>,
}

impl Opcodes {
    /// The opcode number of `name`.
    pub fn id(&self, name: &str) -> Option<u8> {
        self.names.iter().position(|n| n == name).and_then(|i| u8::try_from(i).ok())
    }

    /// Whether opcode `op` starts a translation.
    pub fn is_begin(&self, op: u8) -> bool {
        self.names.get(usize::from(op)).is_some_and(|n| n == "BEGIN" || n.starts_with("BEGIN_"))
    }

    /// Whether opcode `op` is a frame of an interpreted JS function (whose first two operands
    /// are its bytecode offset and the literal id of its SharedFunctionInfo).
    pub fn is_interpreted_frame(&self, op: u8) -> bool {
        self.names.get(usize::from(op)).is_some_and(|n| n.starts_with("INTERPRETED_FRAME"))
    }

    /// Whether opcode `op` describes a frame (any kind: JS, builtin continuation, stub, the
    /// extra arguments of an inlined call, which V8 counts as a frame of its own).
    pub fn is_frame(&self, op: u8) -> bool {
        self.names.get(usize::from(op)).is_some_and(|n| {
            n.ends_with("_FRAME") || n.starts_with("INTERPRETED_FRAME") || n == "INLINED_EXTRA_ARGUMENTS"
        })
    }
}

/// What the names say of an opcode's operand count (None: no constraint).
fn expected_count(name: &str) -> Option<i32> {
    match name {
        "OPTIMIZED_OUT" | "ARGUMENTS_LENGTH" => Some(0),
        "UPDATE_FEEDBACK" => Some(2),
        "LITERAL" | "REGISTER" | "STACK_SLOT" | "CAPTURED_OBJECT" | "DUPLICATED_OBJECT" | "ARGUMENTS_ELEMENTS"
        | "MATCH_PREVIOUS_TRANSLATION" => Some(1),
        n if n.ends_with("_REGISTER") || n.ends_with("_STACK_SLOT") => Some(1),
        _ => None,
    }
}

fn is_opcode_name(b: &[u8]) -> bool {
    !b.is_empty() && b.len() < 64 && b.iter().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_')
}

/// The loaded sections' bytes, by address, for lookups.
struct Image {
    sections: Vec<(u64, Vec<u8>)>,
}

impl Image {
    fn bytes_at(&self, addr: u64, len: usize) -> Option<&[u8]> {
        self.sections.iter().find_map(|(start, data)| {
            let off = usize::try_from(addr.checked_sub(*start)?).ok()?;
            data.get(off..off.checked_add(len)?)
        })
    }

    fn c_string(&self, addr: u64) -> Option<&[u8]> {
        self.sections.iter().find_map(|(start, data)| {
            let off = usize::try_from(addr.checked_sub(*start)?).ok()?;
            let rest = data.get(off..)?;
            let end = rest.iter().take(64).position(|&c| c == 0)?;
            Some(&rest[..end])
        })
    }
}

/// Finds the opcode tables of the object `obj` (None: not found, or not uniquely).
pub fn find<'data, R: ReadRef<'data>>(obj: &object::File<'data, R>) -> Option<Opcodes> {
    let mut image = Image { sections: Vec::new() };
    for s in obj.sections() {
        if matches!(s.kind(), SectionKind::ReadOnlyData | SectionKind::ReadOnlyString | SectionKind::ReadOnlyDataWithRel | SectionKind::Data) {
            if let Ok(d) = s.data() {
                image.sections.push((s.address(), d.to_vec()));
            }
        }
    }
    // Where the anchor name is.
    let needle = format!("\0{ANCHOR}\0");
    let mut anchors = Vec::new();
    for (start, data) in &image.sections {
        let mut from = 0;
        while let Some(i) = memchr::memmem::find(&data[from..], needle.as_bytes()) {
            anchors.push(start + (from + i + 1) as u64);
            from += i + 1;
        }
    }
    if anchors.is_empty() {
        return None;
    }
    // Pointer slots: relative relocations (a shared library, a PIE) or raw words.
    let relative: HashMap<u64, u64> = obj
        .dynamic_relocations()
        .into_iter()
        .flatten()
        .filter(|(_, r)| r.kind() == object::RelocationKind::Relative || matches!(r.target(), RelocationTarget::Absolute))
        .filter_map(|(off, r)| Some((off, u64::try_from(r.addend()).ok()?)))
        .collect();
    let slot = |at: u64| -> Option<u64> {
        relative.get(&at).copied().or_else(|| {
            let b = image.bytes_at(at, 8)?;
            let v = u64::from_le_bytes(b.try_into().ok()?);
            (v != 0).then_some(v)
        })
    };
    let name_at = |at: u64| -> Option<String> {
        let s = image.c_string(slot(at)?)?;
        is_opcode_name(s).then(|| String::from_utf8_lossy(s).into_owned())
    };
    let mut slots: Vec<u64> = relative.iter().filter(|(_, v)| anchors.contains(v)).map(|(k, _)| *k).collect();
    for (start, data) in &image.sections {
        for a in &anchors {
            let pat = a.to_le_bytes();
            let mut from = 0;
            while let Some(i) = memchr::memmem::find(&data[from..], &pat) {
                let at = start + (from + i) as u64;
                if at % 8 == 0 {
                    slots.push(at);
                }
                from += i + 1;
            }
        }
    }
    let mut found: Option<Opcodes> = None;
    for s in slots {
        let mut lo = s;
        while s - lo < 8 * MAX_OPCODES as u64 && name_at(lo - 8).is_some() {
            lo -= 8;
        }
        let names: Vec<String> = (0..MAX_OPCODES as u64).map_while(|i| name_at(lo + 8 * i)).collect();
        if names.len() < 8 || !names.iter().any(|n| n.starts_with("INTERPRETED_FRAME")) || !names.iter().any(|n| n.starts_with("BEGIN")) {
            continue;
        }
        let counts = find_counts(&image, &names)?;
        let ops = Opcodes { names, counts };
        if found.as_ref().is_some_and(|f| *f != ops) {
            return None;
        }
        found = Some(ops);
    }
    found
}

/// The int array of `names.len()` operand counts that fits the names, if exactly one does.
fn find_counts(image: &Image, names: &[String]) -> Option<Vec<u8>> {
    let n = names.len();
    let expect: Vec<Option<i32>> = names.iter().map(|s| expected_count(s)).collect();
    let mut found: Option<Vec<u8>> = None;
    for (_, data) in &image.sections {
        let words = data.len() / 4;
        let at = |i: usize| i32::from_le_bytes(data[4 * i..4 * i + 4].try_into().expect("4 bytes"));
        for start in 0..words.saturating_sub(n) {
            // The cheap test first: every constrained slot.
            let fits = expect.iter().enumerate().all(|(k, e)| e.is_none_or(|v| at(start + k) == v));
            if !fits || !(0..n).all(|k| (0..=MAX_OPERANDS).contains(&at(start + k))) {
                continue;
            }
            let counts: Vec<u8> = (0..n).map(|k| at(start + k) as u8).collect();
            if found.as_ref().is_some_and(|f| *f != counts) {
                return None;
            }
            found = Some(counts);
        }
    }
    found
}
