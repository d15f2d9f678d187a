//! What an ELF object carries for symbolization: debug information, symbol tables, its build id
//! and debug link, and the load segments that turn file offsets into addresses.

use std::fs::File;

use object::{
    read::ReadCache, Object, ObjectSection, ObjectSegment, ObjectSymbol, ObjectSymbolTable, SectionKind,
    SymbolKind,
};
use thiserror::Error;

/// Why an object could not be inspected.
#[derive(Debug, Error)]
pub enum ElfInfoError {
    #[error("not a readable object file: {0}")]
    Parse(#[from] object::Error),
    #[error("not an ELF file")]
    NotElf,
}

/// The best symbols an object offers, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SymbolKindAvailable {
    /// DWARF (`.debug_info`): functions, inlining, file and line.
    Dwarf,
    /// A full symbol table (`.symtab`).
    Symtab,
    /// Only exported symbols (`.dynsym` with defined functions).
    Dynsym,
    /// Nothing to name code with.
    None,
}

impl SymbolKindAvailable {
    /// The name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dwarf => "dwarf",
            Self::Symtab => "symtab",
            Self::Dynsym => "dynsym",
            Self::None => "none",
        }
    }
}

/// One `PT_LOAD` segment (file range and link-time address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Load {
    offset: u64,
    size: u64,
    vaddr: u64,
}

/// The symbolization-relevant facts about one ELF object.
#[derive(Clone, Debug, Default)]
pub struct ElfInfo {
    /// The `NT_GNU_BUILD_ID` note.
    pub build_id: Option<Vec<u8>>,
    /// `.gnu_debuglink`: the debug file's name and the CRC-32 of its contents.
    pub debuglink: Option<(String, u32)>,
    /// A non-empty `.debug_info`.
    pub has_debug_info: bool,
    /// A `.symtab` with functions.
    pub has_symtab: bool,
    /// MiniDebugInfo (Fedora, RHEL): an xz-compressed `.symtab` in `.gnu_debugdata`.
    pub has_mini_debuginfo: bool,
    /// `.dynsym` defines at least one function.
    pub has_dynsym_functions: bool,
    pub(super) loads: Vec<Load>,
}

impl ElfInfo {
    /// Inspects the object in `file` (reading only the parts needed).
    pub fn read(file: &File) -> Result<Self, ElfInfoError> {
        let cache = ReadCache::new(file);
        let obj = object::File::parse(&cache)?;
        if obj.format() != object::BinaryFormat::Elf {
            return Err(ElfInfoError::NotElf);
        }
        Ok(Self {
            build_id: obj.build_id().ok().flatten().map(<[u8]>::to_vec),
            debuglink: obj
                .gnu_debuglink()
                .ok()
                .flatten()
                .map(|(name, crc)| (String::from_utf8_lossy(name).into_owned(), crc)),
            has_debug_info: has_data(&obj, ".debug_info") || has_data(&obj, ".zdebug_info"),
            has_symtab: obj.symbol_table().is_some_and(|t| t.symbols().any(is_function)),
            has_mini_debuginfo: has_data(&obj, ".gnu_debugdata"),
            has_dynsym_functions: obj.dynamic_symbol_table().is_some_and(|t| t.symbols().any(is_function)),
            loads: obj
                .segments()
                .map(|s| {
                    let (offset, size) = s.file_range();
                    Load { offset, size, vaddr: s.address() }
                })
                .collect(),
        })
    }

    /// The best symbols this object has.
    pub fn best_symbols(&self) -> SymbolKindAvailable {
        if self.has_debug_info {
            SymbolKindAvailable::Dwarf
        } else if self.has_symtab || self.has_mini_debuginfo {
            SymbolKindAvailable::Symtab
        } else if self.has_dynsym_functions {
            SymbolKindAvailable::Dynsym
        } else {
            SymbolKindAvailable::None
        }
    }

    /// Whether the object can name anything at all.
    pub fn has_any_symbols(&self) -> bool {
        self.best_symbols() != SymbolKindAvailable::None
    }

    /// The build id in lower-case hex.
    pub fn build_id_hex(&self) -> Option<String> {
        self.build_id.as_deref().map(hex)
    }

    /// The link-time address of file offset `offset` (through the `PT_LOAD` segment holding it).
    pub fn file_offset_to_vaddr(&self, offset: u64) -> Option<u64> {
        self.loads
            .iter()
            .find(|l| l.offset <= offset && offset - l.offset < l.size)
            .map(|l| offset - l.offset + l.vaddr)
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A defined function symbol.
fn is_function<'a, S: ObjectSymbol<'a>>(s: S) -> bool {
    s.kind() == SymbolKind::Text && s.is_definition()
}

/// Whether section `name` exists and has contents in the file.
fn has_data<'a, O: Object<'a>>(obj: &O, name: &str) -> bool {
    obj.section_by_name(name).is_some_and(|s| {
        s.kind() != SectionKind::UninitializedData && s.file_range().is_some_and(|(_, size)| size > 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_executable() {
        let exe = File::open("/proc/self/exe").unwrap();
        let info = ElfInfo::read(&exe).unwrap();
        // Test binaries are built with symbols.
        assert!(info.has_symtab);
        assert!(info.has_any_symbols());
        // Some PT_LOAD maps file offset 0.
        assert!(info.file_offset_to_vaddr(0).is_some());
        assert_eq!(info.file_offset_to_vaddr(u64::MAX), None);
    }

    #[test]
    fn rejects_non_elf() {
        let f = File::open("/proc/self/cmdline").unwrap();
        assert!(ElfInfo::read(&f).is_err());
        assert_eq!(hex(&[0xab, 0x01]), "ab01");
    }
}
