//! What a V8 object says of itself: the executable of a Node build (`node`, `nsolid`) or
//! `libnode.so.N` (Debian's `nodejs`). V8 compiles its postmortem metadata into every such
//! object as data symbols named `v8dbg_*`, each a 4-byte int whose *value* (the word stored at
//! the symbol, not the symbol's address) is an offset, a type id or a constant. memprof reads
//! them, the version (`v8::internal::Version::{major,minor,build,patch}_`) and the bytecode
//! size table (`interpreter::Bytecodes::kBytecodeSizes`), from `.dynsym` first and `.symtab`
//! for the rest: Node ≥ 24.11 keeps `kBytecodeSizes` in `.symtab` only, Debian's `libnode` has
//! no `.symtab` but exports everything (OTel `interpreter/nodev8/v8.go`, its loader, does the
//! same lookups in the same order).
//!
//! The file is read lazily (`object::ReadCache`): node is about 100 MB and only its symbol
//! tables and a few words are needed. Read through `/proc/PID/map_files` by the caller, so a
//! container's own node is read, not the host's.

use std::{collections::BTreeMap, fmt, fs::File, path::Path};

use object::{Object, ObjectSection, ObjectSymbol, ReadRef, SectionIndex};

/// The symbol whose presence says "this object is V8 with its postmortem metadata".
pub const MARKER_SYMBOL: &str = "v8dbg_off_fp_function";
/// The prefix of V8's postmortem metadata symbols.
const V8DBG: &str = "v8dbg_";
/// `v8::internal::Version::major_` etc. (static ints).
const VERSION_SYMBOLS: [&str; 4] = [
    "_ZN2v88internal7Version6major_E",
    "_ZN2v88internal7Version6minor_E",
    "_ZN2v88internal7Version6build_E",
    "_ZN2v88internal7Version6patch_E",
];
/// `v8::internal::interpreter::Bytecodes::kBytecodeSizes` (`uint8_t[3][kBytecodeCount]`: one
/// row per operand scale, single, double, quadruple).
const BYTECODE_SIZES: &str = "_ZN2v88internal11interpreter9Bytecodes14kBytecodeSizesE";
/// No bytecode is longer than this (OTel checks each size the same way).
const MAX_BYTECODE_SIZE: u8 = 32;

/// A V8 version, ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct V8Version {
    pub major: u32,
    pub minor: u32,
    pub build: u32,
    pub patch: u32,
}

impl V8Version {
    pub const fn new(major: u32, minor: u32, build: u32, patch: u32) -> V8Version {
        V8Version { major, minor, build, patch }
    }
}

impl fmt::Display for V8Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}.{}", self.major, self.minor, self.build, self.patch)
    }
}

/// Which symbol table a symbol came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SymbolTable {
    /// `.dynsym` (exported).
    Dynamic,
    /// `.symtab` (present unless stripped).
    Static,
}

/// `Bytecodes::kBytecodeSizes`: the length of each bytecode (with its operands) at each operand
/// scale, for mapping baseline (Sparkplug) code offsets to bytecode offsets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BytecodeSizes {
    /// `3 × count` bytes, row by row.
    pub sizes: Vec<u8>,
    /// Bytecodes per row.
    pub count: usize,
    pub table: SymbolTable,
}

impl BytecodeSizes {
    /// The size of bytecode `op` at operand scale row `scale` (0: single, 1: double, 2:
    /// quadruple).
    pub fn size(&self, scale: usize, op: u8) -> Option<u8> {
        if scale > 2 || usize::from(op) >= self.count {
            return None;
        }
        self.sizes.get(scale * self.count + usize::from(op)).copied()
    }
}

/// A V8 object (executable or shared library).
#[derive(Clone, Debug)]
pub struct V8Elf {
    /// The file name as the process maps it (for messages).
    pub name: String,
    /// None when the version symbols are missing or unreadable.
    pub version: Option<V8Version>,
    /// Every `v8dbg_*` symbol's value, by name without the prefix (`off_fp_function` → -16).
    pub v8dbg: BTreeMap<String, i64>,
    /// `v8dbg_*` symbols found in `.symtab` only (the rest are exported).
    pub v8dbg_static_only: usize,
    pub bytecode_sizes: Option<BytecodeSizes>,
    /// The deoptimization translation opcodes (None: not found in this binary).
    pub opcodes: Option<super::opcodes::Opcodes>,
}

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("cannot read {0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0} is not a readable ELF file: {1}")]
    Parse(String, object::read::Error),
}

/// Whether a mapped file's name looks like a V8 object (a cheap filter before parsing; OTel
/// recognises the same names). An object by another name is V8 too when it defines
/// [`MARKER_SYMBOL`]: [`V8Elf::read`] is the real test.
pub fn looks_like_v8(path: &str) -> bool {
    let base = path.rsplit('/').next().unwrap_or(path);
    base.starts_with("node") || base.starts_with("nsolid") || base.starts_with("libnode.so")
}

/// A symbol to read: its address, size, section and table.
#[derive(Clone, Copy)]
struct Wanted {
    addr: u64,
    size: u64,
    section: SectionIndex,
    table: SymbolTable,
}

impl V8Elf {
    /// Reads the object at `path` (`name`: how the process maps it). None when it is not V8
    /// with postmortem metadata (no [`MARKER_SYMBOL`]).
    pub fn read(path: &Path, name: &str) -> Result<Option<V8Elf>, ElfError> {
        let file = File::open(path).map_err(|e| ElfError::Io(name.to_string(), e))?;
        let cache = object::ReadCache::new(file);
        Self::parse(&cache, name)
    }

    /// Parses an ELF object held by `data` (a file behind a `ReadCache`, or bytes).
    pub fn parse<'data, R: ReadRef<'data>>(data: R, name: &str) -> Result<Option<V8Elf>, ElfError> {
        let obj = object::File::parse(data).map_err(|e| ElfError::Parse(name.to_string(), e))?;
        // .dynsym first: what is found there is not looked up again in .symtab.
        let mut wanted: BTreeMap<String, Wanted> = BTreeMap::new();
        let tables = [(SymbolTable::Dynamic, obj.dynamic_symbols()), (SymbolTable::Static, obj.symbols())];
        for (table, symbols) in tables {
            for sym in symbols {
                if sym.is_undefined() {
                    continue;
                }
                let Ok(n) = sym.name() else { continue };
                if !(n.starts_with(V8DBG) || n == BYTECODE_SIZES || VERSION_SYMBOLS.contains(&n)) {
                    continue;
                }
                let Some(section) = sym.section_index() else { continue };
                wanted
                    .entry(n.to_string())
                    .or_insert(Wanted { addr: sym.address(), size: sym.size(), section, table });
            }
        }
        if !wanted.contains_key(MARKER_SYMBOL) {
            return Ok(None);
        }
        let read = |w: &Wanted, len: u64| -> Option<Vec<u8>> { read_at(&obj, data, w, len) };
        let int = |w: &Wanted| -> Option<i64> {
            let b = read(w, 4)?;
            Some(i64::from(i32::from_le_bytes(b.try_into().ok()?)))
        };
        let mut v8dbg = BTreeMap::new();
        let mut v8dbg_static_only = 0;
        for (n, w) in &wanted {
            if let Some(short) = n.strip_prefix(V8DBG) {
                if let Some(v) = int(w) {
                    v8dbg.insert(short.to_string(), v);
                    v8dbg_static_only += usize::from(w.table == SymbolTable::Static);
                }
            }
        }
        let part = |i: usize| wanted.get(VERSION_SYMBOLS[i]).and_then(int).and_then(|v| u32::try_from(v).ok());
        let version = match (part(0), part(1), part(2), part(3)) {
            (Some(major), Some(minor), Some(build), patch) if major > 0 => {
                Some(V8Version::new(major, minor, build, patch.unwrap_or(0)))
            }
            _ => None,
        };
        let bytecode_sizes = wanted.get(BYTECODE_SIZES).and_then(|w| {
            // Three rows of at most 256 bytecodes, each a plausible length.
            if w.size == 0 || w.size % 3 != 0 || w.size > 3 * 256 {
                return None;
            }
            let sizes = read(w, w.size)?;
            if sizes.iter().any(|&s| s == 0 || s >= MAX_BYTECODE_SIZE) {
                return None;
            }
            Some(BytecodeSizes { count: sizes.len() / 3, sizes, table: w.table })
        });
        let opcodes = super::opcodes::find(&obj);
        Ok(Some(V8Elf { name: name.to_string(), version, v8dbg, v8dbg_static_only, bytecode_sizes, opcodes }))
    }

    /// A metadata value by its name without `v8dbg_`.
    pub fn get(&self, name: &str) -> Option<i64> {
        self.v8dbg.get(name).copied()
    }
}

/// `len` bytes stored at the symbol `w`, from the section that holds it: zeros for a section
/// with no file data (`.bss`, a zero-initialised int).
fn read_at<'data, R: ReadRef<'data>>(obj: &object::File<'data, R>, data: R, w: &Wanted, len: u64) -> Option<Vec<u8>> {
    let section = obj.section_by_index(w.section).ok()?;
    let rel = w.addr.checked_sub(section.address())?;
    if rel.checked_add(len)? > section.size() {
        return None;
    }
    match section.file_range() {
        Some((off, size)) if rel + len <= size => data.read_bytes_at(off.checked_add(rel)?, len).ok().map(<[u8]>::to_vec),
        Some(_) => None,
        None => Some(vec![0; usize::try_from(len).ok()?]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_versions() {
        assert!(looks_like_v8("/usr/bin/node"));
        assert!(looks_like_v8("/usr/lib/x86_64-linux-gnu/libnode.so.115"));
        assert!(looks_like_v8("/opt/nsolid/bin/nsolid"));
        assert!(!looks_like_v8("/usr/lib/libc.so.6"));
        assert!(V8Version::new(11, 3, 244, 8) < V8Version::new(12, 4, 254, 21));
        assert!(V8Version::new(12, 8, 44, 0) > V8Version::new(12, 8, 43, 9));
        assert_eq!(V8Version::new(13, 6, 233, 17).to_string(), "13.6.233.17");
        let s = BytecodeSizes { sizes: vec![1, 2, 3, 4, 5, 6], count: 2, table: SymbolTable::Dynamic };
        assert_eq!(s.size(1, 1), Some(4));
        assert_eq!(s.size(3, 0), None);
        assert_eq!(s.size(2, 9), None);
    }

    /// An object that is not V8 (this test binary) is not taken for one.
    #[test]
    fn not_v8() {
        let me = std::env::current_exe().unwrap();
        assert!(V8Elf::read(&me, "self").unwrap().is_none());
        assert!(V8Elf::read(Path::new("/nonexistent/node"), "x").is_err());
    }
}
