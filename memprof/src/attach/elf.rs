//! Finding the allocator functions an ELF object defines, and where a uprobe must go for each.
//!
//! The file is read through a cache of the parts needed (headers, symbol and string tables,
//! notes), not mapped: a library truncated while we read it yields an error, not a SIGBUS.

use std::{
    collections::HashMap,
    fs::File,
    io,
    path::{Path, PathBuf},
};

use object::{
    elf,
    read::elf::{
        FileHeader, ProgramHeader, SectionHeader, SectionTable, Sym, SymbolTable, VersionTable,
    },
    Endianness, ReadCache, ReadRef, SymbolIndex,
};

/// The allocator functions probed, by canonical name: the C library's malloc family, jemalloc's
/// extended API (`mallocx`, `rallocx`, `sdallocx`, `dallocx`: what Rust's jemallocator and C++
/// sized delete call) and C23's sized frees.
pub const ALLOC_FUNCS: &[&str] = &[
    "malloc",
    "calloc",
    "realloc",
    "reallocarray",
    "posix_memalign",
    "aligned_alloc",
    "memalign",
    "valloc",
    "pvalloc",
    "free",
    "mallocx",
    "rallocx",
    "sdallocx",
    "dallocx",
    "free_sized",
    "free_aligned_sized",
];

/// Symbol prefixes of allocators built to live beside the C library's: jemalloc
/// (`--with-jemalloc-prefix=je_`), Rust's bundled jemalloc (`_rjem_`), tcmalloc (`tc_`) and
/// mimalloc (`mi_`). An unprefixed definition in the same object is preferred (it is what the
/// program's calls reach; the prefixed one is then usually its callee or an alias).
pub const ALLOC_PREFIXES: &[&str] = &["je_", "_rjem_", "tc_", "mi_"];

/// The canonical name a symbol's base name stands for, and whether it carried a prefix.
fn canonical(base: &[u8]) -> Option<(&'static str, bool)> {
    if let Some(&name) = ALLOC_FUNCS.iter().find(|n| n.as_bytes() == base) {
        return Some((name, false));
    }
    ALLOC_PREFIXES.iter().find_map(|p| {
        let rest = base.strip_prefix(p.as_bytes())?;
        ALLOC_FUNCS.iter().find(|n| n.as_bytes() == rest).map(|&n| (n, true))
    })
}

/// An allocator function defined in the object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocSymbol {
    /// Canonical name, from [`ALLOC_FUNCS`].
    pub name: &'static str,
    /// The symbol as found, with its version when it has one (`malloc@@GLIBC_2.2.5`).
    pub symbol: String,
    /// Offset of the function's first instruction in the file: what a uprobe is attached at.
    pub file_offset: u64,
    /// The symbol's value (its virtual address in the object).
    pub vaddr: u64,
    pub size: u64,
}

/// Why an allocator function the object defines gets no probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// A GNU indirect function: its address is a resolver, not the allocator.
    Ifunc,
    /// Same address as the allocator function kept (one probe per address, else each call
    /// would be counted twice).
    AliasOf(&'static str),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub name: &'static str,
    pub symbol: String,
    pub reason: SkipReason,
}

/// What one ELF object offers for probing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ElfInfo {
    /// One entry per canonical name defined, in [`ALLOC_FUNCS`] order.
    pub symbols: Vec<AllocSymbol>,
    /// Allocator functions defined but not to be probed.
    pub skipped: Vec<Skipped>,
    /// GNU build id, when the object has one.
    pub build_id: Option<Vec<u8>>,
    /// No .symtab: only exported (.dynsym) functions were seen.
    pub stripped: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("cannot read {}: {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{} is not an ELF file", .0.display())]
    NotElf(PathBuf),
    #[error("{} is a {what} ELF file: only 64-bit little-endian objects (x86-64, aarch64) are probed", .path.display())]
    Unsupported { path: PathBuf, what: &'static str },
    #[error("{} is a malformed or truncated ELF file: {source}", .path.display())]
    Malformed {
        path: PathBuf,
        source: object::read::Error,
    },
}

type Header = elf::FileHeader64<Endianness>;

/// Scans the ELF file at `path` (a /proc/PID/map_files/… or /proc/PID/root/… path) for defined
/// allocator functions. Imported (undefined) symbols are ignored: an object that merely calls
/// malloc yields no symbols.
pub fn scan_allocator_symbols(path: &Path) -> Result<ElfInfo, ElfError> {
    let file = File::open(path).map_err(|source| ElfError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let cache = ReadCache::new(file);
    let data = &cache;
    let ident = data
        .read_bytes_at(0, 16)
        .map_err(|_| ElfError::NotElf(path.to_path_buf()))?;
    if ident[..4] != elf::ELFMAG {
        return Err(ElfError::NotElf(path.to_path_buf()));
    }
    // e_ident[EI_CLASS], e_ident[EI_DATA]
    if ident[4] != elf::ELFCLASS64 {
        return Err(ElfError::Unsupported {
            path: path.to_path_buf(),
            what: "32-bit",
        });
    }
    if ident[5] != elf::ELFDATA2LSB {
        return Err(ElfError::Unsupported {
            path: path.to_path_buf(),
            what: "big-endian",
        });
    }
    scan(data).map_err(|source| ElfError::Malformed {
        path: path.to_path_buf(),
        source,
    })
}

/// A defined allocator function found in one of the symbol tables.
struct Candidate {
    symbol: String,
    vaddr: u64,
    size: u64,
    ifunc: bool,
    /// Higher is preferred: unprefixed, default version, then binding, then .dynsym over .symtab.
    rank: (bool, bool, u8, bool),
}

fn scan<'a, R: ReadRef<'a>>(data: R) -> object::read::Result<ElfInfo> {
    let header = Header::parse(data)?;
    let endian = header.endian()?;
    let segments = header.program_headers(endian, data)?;
    let sections = header.sections(endian, data)?;
    let symtab = sections.symbols(endian, data, elf::SHT_SYMTAB)?;
    let dynsym = sections.symbols(endian, data, elf::SHT_DYNSYM)?;
    let versions = sections.versions(endian, data)?;

    let mut best: HashMap<&'static str, Candidate> = HashMap::new();
    collect(
        &sections,
        &dynsym,
        versions.as_ref(),
        true,
        endian,
        data,
        &mut best,
    )?;
    collect(&sections, &symtab, None, false, endian, data, &mut best)?;

    let mut info = ElfInfo {
        stripped: symtab.is_empty(),
        build_id: build_id(&sections, segments, endian, data)?,
        ..ElfInfo::default()
    };
    let mut by_addr: HashMap<u64, &'static str> = HashMap::new();
    for &name in ALLOC_FUNCS {
        let Some(c) = best.remove(name) else { continue };
        let skip = |reason| Skipped {
            name,
            symbol: c.symbol.clone(),
            reason,
        };
        if c.ifunc {
            info.skipped.push(skip(SkipReason::Ifunc));
            continue;
        }
        if let Some(&kept) = by_addr.get(&c.vaddr) {
            info.skipped.push(skip(SkipReason::AliasOf(kept)));
            continue;
        }
        let Some(file_offset) = file_offset(&sections, segments, c.vaddr, endian) else {
            log::debug!(
                "{}: address {:#x} is in no loaded segment",
                c.symbol,
                c.vaddr
            );
            continue;
        };
        by_addr.insert(c.vaddr, name);
        info.symbols.push(AllocSymbol {
            name,
            symbol: c.symbol,
            file_offset,
            vaddr: c.vaddr,
            size: c.size,
        });
    }
    Ok(info)
}

/// Records the best definition of each canonical name in one symbol table.
fn collect<'a, R: ReadRef<'a>>(
    sections: &SectionTable<'a, Header, R>,
    table: &SymbolTable<'a, Header, R>,
    versions: Option<&VersionTable<'a, Header>>,
    dynamic: bool,
    endian: Endianness,
    data: R,
    best: &mut HashMap<&'static str, Candidate>,
) -> object::read::Result<()> {
    if table.is_empty() {
        return Ok(());
    }
    // Read the string table at once rather than one name at a time.
    let strings = sections
        .section(table.string_section())?
        .data(endian, data)?;
    for (index, sym) in table.enumerate() {
        let ifunc = match sym.st_type() {
            elf::STT_FUNC => false,
            elf::STT_GNU_IFUNC => true,
            _ => continue,
        };
        let shndx = sym.st_shndx(endian);
        if shndx == elf::SHN_UNDEF || shndx == elf::SHN_ABS || sym.st_value(endian) == 0 {
            continue;
        }
        let Some(raw) = c_str_at(strings, sym.st_name(endian)) else {
            continue;
        };
        // .symtab spells versions into the name: `malloc@@GLIBC_2.2.5` (default), `malloc@V1`.
        let (base, mut default_version, mut version) = match raw.iter().position(|&b| b == b'@') {
            Some(at) => (
                &raw[..at],
                raw.get(at + 1) == Some(&b'@'),
                raw[at..].to_vec(),
            ),
            None => (raw, true, Vec::new()),
        };
        let Some((name, prefixed)) = canonical(base) else {
            continue;
        };
        if let Some(vt) = versions {
            let vi = vt.version_index(endian, SymbolIndex(index.0));
            default_version = !vi.is_hidden();
            if let Ok(Some(v)) = vt.version(vi) {
                version = [if default_version { &b"@@"[..] } else { b"@" }, v.name()].concat();
            }
        }
        let bind = match sym.st_bind() {
            elf::STB_GLOBAL => 2,
            elf::STB_WEAK | elf::STB_GNU_UNIQUE => 1,
            _ => 0,
        };
        let candidate = Candidate {
            symbol: format!("{}{}", String::from_utf8_lossy(base), String::from_utf8_lossy(&version)),
            vaddr: sym.st_value(endian),
            size: sym.st_size(endian),
            ifunc,
            rank: (!prefixed, default_version, bind, dynamic),
        };
        if best.get(name).is_none_or(|b| candidate.rank > b.rank) {
            best.insert(name, candidate);
        }
    }
    Ok(())
}

fn c_str_at(strings: &[u8], offset: u32) -> Option<&[u8]> {
    let s = strings.get(offset as usize..)?;
    Some(&s[..s.iter().position(|&b| b == 0)?])
}

/// The file offset of `vaddr`: from the PT_LOAD segment holding it, else from the section.
fn file_offset<'a, R: ReadRef<'a>>(
    sections: &SectionTable<'a, Header, R>,
    segments: &[elf::ProgramHeader64<Endianness>],
    vaddr: u64,
    endian: Endianness,
) -> Option<u64> {
    let in_file = |start: u64, size: u64, offset: u64| {
        (start <= vaddr && vaddr - start < size).then(|| vaddr - start + offset)
    };
    segments
        .iter()
        .filter(|p| p.p_type(endian) == elf::PT_LOAD)
        .find_map(|p| in_file(p.p_vaddr(endian), p.p_filesz(endian), p.p_offset(endian)))
        .or_else(|| {
            sections
                .iter()
                .filter(|s| s.sh_type(endian) == elf::SHT_PROGBITS && s.sh_addr(endian) != 0)
                .find_map(|s| in_file(s.sh_addr(endian), s.sh_size(endian), s.sh_offset(endian)))
        })
}

/// The GNU build id, from the note segments, else the note sections.
fn build_id<'a, R: ReadRef<'a>>(
    sections: &SectionTable<'a, Header, R>,
    segments: &[elf::ProgramHeader64<Endianness>],
    endian: Endianness,
    data: R,
) -> object::read::Result<Option<Vec<u8>>> {
    for segment in segments {
        if let Some(mut notes) = segment.notes(endian, data)? {
            while let Some(note) = notes.next()? {
                if note.name() == elf::ELF_NOTE_GNU && note.n_type(endian) == elf::NT_GNU_BUILD_ID {
                    return Ok(Some(note.desc().to_vec()));
                }
            }
        }
    }
    for section in sections.iter() {
        if let Some(mut notes) = section.notes(endian, data)? {
            while let Some(note) = notes.next()? {
                if note.name() == elf::ELF_NOTE_GNU && note.n_type(endian) == elf::NT_GNU_BUILD_ID {
                    return Ok(Some(note.desc().to_vec()));
                }
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::FileExt, process::Command};

    use super::*;
    use crate::target::maps::{self, MapEntry};

    /// The mappings of the C library in this process.
    fn own_libc() -> Vec<MapEntry> {
        let entries = maps::read_maps(std::process::id()).unwrap();
        let is_libc = |e: &MapEntry| {
            let name = e
                .path
                .as_deref()
                .and_then(|p| p.rsplit('/').next())
                .unwrap_or("");
            e.is_file_backed() && (name.starts_with("libc.so") || name.starts_with("libc-"))
        };
        entries.into_iter().filter(is_libc).collect()
    }

    #[test]
    fn finds_libc_allocators_where_the_process_runs_them() {
        let libc_maps = own_libc();
        let first = libc_maps.first().expect("this test process maps a libc");
        let path = maps::map_files_path(std::process::id(), first);
        let info = scan_allocator_symbols(&path).unwrap();
        let mem = File::open("/proc/self/mem").unwrap();
        let disk = File::open(&path).unwrap();
        for name in ["malloc", "free", "calloc", "realloc", "posix_memalign"] {
            let sym = info
                .symbols
                .iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("{name}: {info:?}"));
            assert!(sym.file_offset != 0 && sym.size != 0, "{sym:?}");
            assert!(sym.symbol.starts_with(name), "{sym:?}");
            // Where the loader put that file offset in this process.
            let m = libc_maps
                .iter()
                .find(|m| {
                    m.offset <= sym.file_offset && sym.file_offset - m.offset < m.end - m.start
                })
                .unwrap_or_else(|| panic!("{name} at {:#x} is not mapped", sym.file_offset));
            assert!(m.is_exec(), "{name} is mapped without exec: {m:?}");
            let addr = m.start - m.offset + sym.file_offset;
            let n = sym.size.min(32) as usize;
            let (mut in_file, mut in_mem) = (vec![0; n], vec![0; n]);
            disk.read_exact_at(&mut in_file, sym.file_offset).unwrap();
            mem.read_exact_at(&mut in_mem, addr).unwrap();
            assert_eq!(in_file, in_mem, "{name}");
        }
        // The address the dynamic linker resolved for this process's own calls.
        let base = first.start - first.offset;
        let resolved = [
            ("malloc", libc::malloc as *const () as usize),
            ("free", libc::free as *const () as usize),
        ];
        for (name, addr) in resolved {
            let sym = info.symbols.iter().find(|s| s.name == name).unwrap();
            let m = libc_maps
                .iter()
                .find(|m| m.contains(addr as u64))
                .expect("resolved into libc");
            assert_eq!(
                addr as u64 - (m.start - m.offset),
                sym.file_offset,
                "{name} (base {base:#x})"
            );
        }
        // One probe per address.
        let mut addrs: Vec<u64> = info.symbols.iter().map(|s| s.vaddr).collect();
        addrs.sort_unstable();
        addrs.dedup();
        assert_eq!(addrs.len(), info.symbols.len(), "{info:?}");
        assert!(info.build_id.as_ref().is_some_and(|b| !b.is_empty()));
    }

    #[test]
    fn importers_define_nothing() {
        for path in [std::env::current_exe().unwrap(), PathBuf::from("/bin/true")] {
            if !path.exists() {
                continue;
            }
            let info = scan_allocator_symbols(&path).unwrap();
            assert!(
                info.symbols.is_empty() && info.skipped.is_empty(),
                "{}: {info:?}",
                path.display()
            );
        }
    }

    #[test]
    fn errors_are_one_line() {
        let err = scan_allocator_symbols(Path::new("/nonexistent/lib.so")).unwrap_err();
        assert!(matches!(err, ElfError::Io { .. }));
        let err = scan_allocator_symbols(Path::new("/proc/self/cmdline")).unwrap_err();
        assert!(matches!(err, ElfError::NotElf(_)), "{err}");
        let dir = scratch("notelf");
        let p = dir.join("short");
        fs::write(&p, b"\x7fELF\x01\x01\x01\0\0\0\0\0\0\0\0\0").unwrap();
        let err = scan_allocator_symbols(&p).unwrap_err();
        assert!(
            matches!(err, ElfError::Unsupported { what: "32-bit", .. }),
            "{err}"
        );
        fs::write(&p, b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\0\0").unwrap();
        let err = scan_allocator_symbols(&p).unwrap_err();
        assert!(matches!(err, ElfError::Malformed { .. }), "{err}");
        assert!(!err.to_string().contains('\n'));
        let _ = fs::remove_dir_all(dir);
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("memprof-elf-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Compiles C with the system compiler (`cargo xtask setup` installs it); a missing or
    /// failing compiler fails the test rather than skipping it.
    fn cc(dir: &Path, source: &str, out: &str, args: &[&str]) -> Option<PathBuf> {
        let src = dir.join(format!("{out}.c"));
        fs::write(&src, source).unwrap();
        let output = dir.join(out);
        let status = Command::new("cc")
            .args(args)
            .arg("-o")
            .arg(&output)
            .arg(&src)
            .status()
            .expect("cc not found: run `cargo xtask setup`");
        assert!(status.success(), "cc {args:?} failed");
        Some(output)
    }

    #[test]
    fn versions_ifuncs_and_aliases() {
        let dir = scratch("lib");
        fs::write(dir.join("vers.map"), "V1 { };\nV2 { global: *; } V1;\n").unwrap();
        let source = r#"
            typedef unsigned long size_t;
            void *malloc_v1(size_t n) { return (void *)0; }
            void *malloc_v2(size_t n) { return (void *)(n + 1); }
            __asm__(".symver malloc_v1, malloc@V1");
            __asm__(".symver malloc_v2, malloc@@V2");
            void free(void *p) { (void)p; }
            void *memalign(size_t a, size_t n) { return (void *)(a + n); }
            void *aligned_alloc(size_t a, size_t n) __attribute__((weak, alias("memalign")));
            static void *valloc_impl(size_t n) { return (void *)n; }
            static void *(*resolve_valloc(void))(size_t) { return valloc_impl; }
            void *valloc(size_t n) __attribute__((ifunc("resolve_valloc")));
            extern void *calloc(size_t, size_t);
            void *use_calloc(void) { return calloc(1, 2); }
        "#;
        let map = format!("-Wl,--version-script={}", dir.join("vers.map").display());
        let Some(lib) = cc(
            &dir,
            source,
            "liba.so",
            &["-shared", "-fPIC", "-fno-builtin", "-O1", &map],
        ) else {
            return;
        };
        let info = scan_allocator_symbols(&lib).unwrap();
        let names: Vec<_> = info.symbols.iter().map(|s| s.name).collect();
        // memalign and aligned_alloc share an address: the first in ALLOC_FUNCS order keeps it.
        assert_eq!(names, ["malloc", "aligned_alloc", "free"], "{info:?}");
        assert_eq!(info.symbols[0].symbol, "malloc@@V2");
        assert!(
            info.skipped.contains(&Skipped {
                name: "memalign",
                symbol: "memalign@@V2".into(),
                reason: SkipReason::AliasOf("aligned_alloc"),
            }),
            "{info:?}"
        );
        assert!(
            info.skipped
                .iter()
                .any(|s| s.name == "valloc" && s.reason == SkipReason::Ifunc),
            "{info:?}"
        );
        assert!(!info.stripped);

        // Stripped, only .dynsym remains: same answer.
        let stripped = dir.join("stripped.so");
        let strip = Command::new("strip").arg("-o").arg(&stripped).arg(&lib).status();
        assert!(strip.is_ok_and(|s| s.success()), "strip failed (binutils)");
        {
            let s = scan_allocator_symbols(&stripped).unwrap();
            assert!(s.stripped);
            assert_eq!(s.symbols, info.symbols);
        }
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn static_executable_defines_malloc() {
        let dir = scratch("static");
        let source = "#include <stdlib.h>\nint main(void) { free(malloc(7)); return 0; }\n";
        let Some(exe) = cc(&dir, source, "static", &["-static", "-O1"]) else {
            return;
        };
        let info = scan_allocator_symbols(&exe).unwrap();
        for name in ["malloc", "free", "calloc", "realloc"] {
            let sym = info
                .symbols
                .iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("{name}: {info:?}"));
            assert!(sym.file_offset != 0);
        }
        let _ = fs::remove_dir_all(dir);
    }
}
