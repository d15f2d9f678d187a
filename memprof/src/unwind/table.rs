//! `.eh_frame` (or `.debug_frame`) CFI of one x86-64 ELF object → the compact, sorted
//! [`UnwindRow`] table that the kernel side binary-searches.
//!
//! The rows are object virtual addresses (`pc - bias` at run time, see [`mapping_bias`]). Lookup
//! is "last row whose `pc` is `<=` the address" ([`find_row`]); every FDE's range ends in a
//! [`CFA_NONE`] row unless another FDE starts right there, so addresses outside all FDEs (padding,
//! code without CFI) resolve to [`CFA_NONE`] and addresses below the first row resolve to nothing.
//!
//! What a row means (x86-64 only):
//!
//! * [`CFA_RSP`] / [`CFA_RBP`]: CFA = `%rsp` / `%rbp` + `cfa_offset`; return address at CFA − 8;
//!   caller's `%rbp` at CFA + `rbp_offset` when `rbp_rule` is [`RBP_AT_CFA`], else unchanged.
//! * [`CFA_PLT`]: the standard PLT `DW_CFA_def_cfa_expression`: CFA = `%rsp` + 8, + 8 more when
//!   `(pc & 15) >= cfa_offset` (binutils emits threshold 11 for the plain lazy `.plt`, 9 for the
//!   IBT `.plt`, 10 for IBT+BND, 5 for BND).
//! * [`CFA_END`]: the return address is undefined (`_start`, a thread's first frame).
//! * [`CFA_UNSUPPORTED`]: anything the kernel side cannot follow (other DWARF expressions, a CFA
//!   based on another register, a `%rbp` rule other than "same"/"saved at CFA + n", a return
//!   address not at CFA − 8, offsets that do not fit the row's fields, an FDE whose CFI program
//!   fails to evaluate).
//!
//! The `cfa_offset`/`rbp_offset`/`rbp_rule` fields of [`CFA_END`], [`CFA_NONE`] and
//! [`CFA_UNSUPPORTED`] rows are always zero / [`RBP_SAME`], so consecutive rows with the same
//! meaning are merged.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use gimli::{
    BaseAddresses, CfaRule, CieOrFde, CommonInformationEntry, DebugFrame, EhFrame, EndianSlice,
    FrameDescriptionEntry, LittleEndian, RegisterRule, UnwindContext, UnwindOffset, UnwindSection,
    UnwindTableRow, X86_64,
};
use memprof_common::unwind::{
    UnwindRow, CFA_END, CFA_NONE, CFA_PLT, CFA_RBP, CFA_RSP, CFA_UNSUPPORTED, RBP_AT_CFA, RBP_SAME,
};
use object::read::elf::{FileHeader, ProgramHeader};
use object::{Object, ObjectSection, ObjectSegment};

type Slice<'a> = EndianSlice<'a, LittleEndian>;

/// The CFI table of one object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnwindTable {
    /// Sorted by `pc`, strictly increasing, no row equal in rule to its predecessor.
    pub rows: Vec<UnwindRow>,
    /// FDEs that contributed rows.
    pub fdes: usize,
    /// Rows (in `rows`) of kind [`CFA_UNSUPPORTED`].
    pub unsupported_rows: usize,
    /// FDEs left out: empty ones, ones outside every executable segment (`.debug_frame` FDEs of
    /// discarded functions sit at address 0), ones whose CIE does not parse, and second FDEs
    /// starting at an address another FDE already starts at.
    pub skipped_fdes: usize,
}

/// Why an object has no table.
#[derive(thiserror::Error, Debug)]
pub enum TableError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("not a readable ELF object: {0}")]
    Elf(#[from] object::read::Error),
    #[error("not an x86-64 ELF object ({0:?})")]
    UnsupportedArch(object::Architecture),
    #[error("no .eh_frame or .debug_frame section")]
    NoCfi,
    #[error("malformed CFI: {0}")]
    Cfi(#[from] gimli::Error),
    #[error("CFI covers address {0:#x}, above 4 GiB")]
    AddressTooLarge(u64),
}

/// Build the rows of an ELF object held in memory.
///
/// Rows sorted by pc, deduplicated (a row equal in rule to its predecessor is dropped), with a
/// [`CFA_NONE`] row at every FDE end that is not the start of another FDE.
///
/// Overlapping FDEs (rare; never produced by a sane toolchain) are resolved deterministically:
/// FDEs are ordered by start address (then section order); of several FDEs starting at the same
/// address the first in section order wins, and an FDE is cut short where the next one starts.
/// An FDE whose CFI program fails to evaluate becomes a single [`CFA_UNSUPPORTED`] row.
pub fn build_rows(elf_data: &[u8]) -> Result<UnwindTable, TableError> {
    let file = object::File::parse(elf_data)?;
    if file.architecture() != object::Architecture::X86_64 || !file.is_64() {
        return Err(TableError::UnsupportedArch(file.architecture()));
    }
    let exec = exec_ranges(&file);
    let mut bases = BaseAddresses::default();
    if let Some(text) = file.section_by_name(".text") {
        bases = bases.set_text(text.address());
    }
    if let Some(got) = file.section_by_name(".got") {
        bases = bases.set_got(got.address());
    }
    if let Some(sec) = file.section_by_name(".eh_frame").filter(|s| s.size() > 0) {
        let data = sec.data()?;
        let bases = bases.set_eh_frame(sec.address());
        let mut eh_frame = EhFrame::new(data, LittleEndian);
        eh_frame.set_address_size(8);
        return build(&eh_frame, &bases, &exec);
    }
    if let Some(sec) = file
        .section_by_name(".debug_frame")
        .filter(|s| s.size() > 0)
    {
        // Compressed sections (SHF_COMPRESSED) need object's "compression" feature: treat them
        // as absent.
        let compressed = sec
            .compressed_file_range()
            .map(|r| r.format != object::CompressionFormat::None)
            .unwrap_or(true);
        if !compressed {
            let mut debug_frame = DebugFrame::new(sec.data()?, LittleEndian);
            debug_frame.set_address_size(8);
            return build(&debug_frame, &bases, &exec);
        }
    }
    Err(TableError::NoCfi)
}

/// [`build_rows`] for a file (mapped, not read: only the headers and the CFI are touched).
pub fn build_rows_from_file(path: &Path) -> Result<UnwindTable, TableError> {
    let io_err = |source| TableError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let map = Mmap::map(&file).map_err(io_err)?;
    build_rows(&map)
}

/// Load bias of a mapping of this object: `pc - bias` is the object virtual address.
///
/// Given a mapping of this file at `map_start` with file offset `map_offset`,
/// `bias = map_start - map_offset - (p_vaddr - p_offset)` of the executable `PT_LOAD` segment
/// containing `map_offset` (the kernel maps a segment from its page-aligned-down file offset, so
/// the segment "contains" the offsets from `p_offset & !0xfff` up to `p_offset + p_filesz`).
/// `None` if no executable segment contains `map_offset` or the data is not an x86-64 ELF64.
///
/// Only the ELF header and the program headers are read, so `elf_data` may be just the first
/// few KiB of the file.
pub fn mapping_bias(elf_data: &[u8], map_start: u64, map_offset: u64) -> Option<u64> {
    let header = object::elf::FileHeader64::<object::Endianness>::parse(elf_data).ok()?;
    let endian = header.endian().ok()?;
    if header.e_machine(endian) != object::elf::EM_X86_64 {
        return None;
    }
    header
        .program_headers(endian, elf_data)
        .ok()?
        .iter()
        .filter(|ph| {
            ph.p_type(endian) == object::elf::PT_LOAD && ph.p_flags(endian) & object::elf::PF_X != 0
        })
        .find(|ph| {
            let off = ph.p_offset(endian);
            (off & !0xfff) <= map_offset && map_offset < off + ph.p_filesz(endian).max(1)
        })
        .map(|ph| {
            let delta = ph.p_vaddr(endian).wrapping_sub(ph.p_offset(endian));
            map_start.wrapping_sub(map_offset).wrapping_sub(delta)
        })
}

/// The row covering `addr`, as the kernel side finds it: the last row with `pc <= addr`.
pub fn find_row(rows: &[UnwindRow], addr: u32) -> Option<&UnwindRow> {
    match rows.partition_point(|r| r.pc <= addr) {
        0 => None,
        i => Some(&rows[i - 1]),
    }
}

/// The exact expression bytes of the x86-64 PLT CFA rule, but for the threshold literal:
/// `DW_OP_breg7 8; DW_OP_breg16 0; DW_OP_lit15; DW_OP_and; DW_OP_lit<N>; DW_OP_ge; DW_OP_lit3;
/// DW_OP_shl; DW_OP_plus`, i.e. `rsp + 8 + (((rip & 15) >= N) << 3)`.
const PLT_EXPR: [u8; 11] = [
    0x77, 0x08, 0x80, 0x00, 0x3f, 0x1a, 0x30, 0x2a, 0x33, 0x24, 0x22,
];
const PLT_EXPR_LIT: usize = 6;

/// The threshold `N` if `expr` is the PLT expression.
fn plt_threshold(expr: &[u8]) -> Option<u8> {
    if expr.len() != PLT_EXPR.len() {
        return None;
    }
    let lit = expr[PLT_EXPR_LIT];
    let rest_matches = expr
        .iter()
        .zip(PLT_EXPR.iter())
        .enumerate()
        .all(|(i, (a, b))| i == PLT_EXPR_LIT || a == b);
    // DW_OP_lit0 ..= DW_OP_lit15 (a threshold of 16 or more would never add 8).
    (rest_matches && (0x30..=0x3f).contains(&lit)).then_some(lit - 0x30)
}

/// Address ranges of the executable `PT_LOAD` segments; empty when the object has none (a
/// relocatable object), in which case no FDE is filtered out.
fn exec_ranges(file: &object::File<'_>) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = file
        .segments()
        .filter(|seg| match seg.flags() {
            object::SegmentFlags::Elf { p_flags } => p_flags & object::elf::PF_X != 0,
            _ => false,
        })
        .map(|seg| (seg.address(), seg.address().saturating_add(seg.size())))
        .collect();
    ranges.sort_unstable();
    ranges
}

/// Whether `[start, end)` lies in one executable segment. Address 0 never holds code in a linked
/// object (the ELF header is there); `.debug_frame` FDEs of functions the linker discarded do.
fn in_exec(ranges: &[(u64, u64)], start: u64, end: u64) -> bool {
    if ranges.is_empty() {
        return true;
    }
    if start == 0 {
        return false;
    }
    let i = ranges.partition_point(|r| r.0 <= start);
    i > 0 && start < ranges[i - 1].1 && end <= ranges[i - 1].1
}

struct Fde<'a> {
    start: u64,
    end: u64,
    fde: FrameDescriptionEntry<Slice<'a>>,
}

fn build<'a, S: UnwindSection<Slice<'a>>>(
    section: &S,
    bases: &BaseAddresses,
    exec: &[(u64, u64)],
) -> Result<UnwindTable, TableError> {
    let mut cies: HashMap<usize, CommonInformationEntry<Slice<'a>>> = HashMap::new();
    let mut fdes: Vec<Fde<'a>> = Vec::new();
    let mut skipped = 0usize;
    let mut entries = section.entries(bases);
    while let Some(entry) = entries.next()? {
        match entry {
            CieOrFde::Cie(cie) => {
                cies.insert(cie.offset(), cie);
            }
            CieOrFde::Fde(partial) => {
                let parsed = partial.parse(|section, bases, offset| {
                    let key = UnwindOffset::into(offset);
                    if let Some(cie) = cies.get(&key) {
                        return Ok(cie.clone());
                    }
                    let cie = section.cie_from_offset(bases, offset)?;
                    cies.insert(key, cie.clone());
                    Ok(cie)
                });
                let Ok(fde) = parsed else {
                    skipped += 1;
                    continue;
                };
                let (start, len) = (fde.initial_address(), fde.len());
                let end = start
                    .checked_add(len)
                    .ok_or(TableError::AddressTooLarge(start))?;
                if len == 0 || !in_exec(exec, start, end) {
                    skipped += 1;
                    continue;
                }
                if end > u64::from(u32::MAX) {
                    return Err(TableError::AddressTooLarge(end));
                }
                fdes.push(Fde { start, end, fde });
            }
        }
    }
    // Usually already (nearly) sorted; a stable sort keeps section order among equal starts.
    fdes.sort_by_key(|f| f.start);

    let mut ctx = Box::new(UnwindContext::<usize>::new());
    let mut rows: Vec<UnwindRow> = Vec::with_capacity(fdes.len() * 4);
    let mut used = 0usize;
    let mut pending_none: Option<u64> = None;
    let mut i = 0;
    while i < fdes.len() {
        let f = &fdes[i];
        let mut next = i + 1;
        while next < fdes.len() && fdes[next].start == f.start {
            next += 1;
        }
        skipped += next - i - 1;
        let end = match fdes.get(next) {
            Some(n) => f.end.min(n.start),
            None => f.end,
        };
        if let Some(none_at) = pending_none.take() {
            if none_at < f.start {
                push(&mut rows, kind_row(none_at, CFA_NONE));
            }
        }
        let mark = rows.len();
        if emit_fde(section, bases, &mut ctx, &f.fde, end, &mut rows).is_err() {
            rows.truncate(mark);
            push(&mut rows, kind_row(f.start, CFA_UNSUPPORTED));
        }
        pending_none = Some(end);
        used += 1;
        i = next;
    }
    if let Some(none_at) = pending_none {
        push(&mut rows, kind_row(none_at, CFA_NONE));
    }
    rows.shrink_to_fit();
    let unsupported_rows = rows
        .iter()
        .filter(|r| r.cfa_kind == CFA_UNSUPPORTED)
        .count();
    Ok(UnwindTable {
        rows,
        fdes: used,
        unsupported_rows,
        skipped_fdes: skipped,
    })
}

/// Append the rows of one FDE below `end` (the FDE's end, or where the next FDE starts).
fn emit_fde<'a, S: UnwindSection<Slice<'a>>>(
    section: &S,
    bases: &BaseAddresses,
    ctx: &mut UnwindContext<usize>,
    fde: &FrameDescriptionEntry<Slice<'a>>,
    end: u64,
    rows: &mut Vec<UnwindRow>,
) -> Result<(), gimli::Error> {
    let mut table = fde.rows(section, bases, ctx)?;
    while let Some(row) = table.next_row()? {
        let start = row.start_address();
        if start >= end {
            break;
        }
        let mut out = convert(section, row);
        // `start < end <= u32::MAX` (checked when collecting the FDEs).
        out.pc = start as u32;
        push(rows, out);
    }
    Ok(())
}

fn kind_row(pc: u64, cfa_kind: u8) -> UnwindRow {
    UnwindRow {
        pc: pc as u32,
        cfa_offset: 0,
        rbp_offset: 0,
        cfa_kind,
        rbp_rule: RBP_SAME,
    }
}

/// The rule of one gimli row (`pc` left 0).
fn convert<'a, S: UnwindSection<Slice<'a>>>(section: &S, row: &UnwindTableRow<usize>) -> UnwindRow {
    let unsupported = kind_row(0, CFA_UNSUPPORTED);
    // gimli does not tell "no rule" from DW_CFA_undefined; every x86-64 CIE from gcc, clang and
    // gas sets the return address rule explicitly, so a missing one is an outermost frame too.
    match row.register(X86_64::RA) {
        RegisterRule::Undefined => return kind_row(0, CFA_END),
        RegisterRule::Offset(-8) => {}
        _ => return unsupported,
    }
    let (cfa_kind, cfa_offset) = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            let kind = match *register {
                X86_64::RSP => CFA_RSP,
                X86_64::RBP => CFA_RBP,
                _ => return unsupported,
            };
            match i32::try_from(*offset) {
                Ok(offset) => (kind, offset),
                Err(_) => return unsupported,
            }
        }
        CfaRule::Expression(expr) => {
            match expr
                .get(section)
                .ok()
                .and_then(|e| plt_threshold(e.0.slice()))
            {
                Some(threshold) => (CFA_PLT, i32::from(threshold)),
                None => return unsupported,
            }
        }
    };
    let (rbp_rule, rbp_offset) = match row.register(X86_64::RBP) {
        RegisterRule::Undefined | RegisterRule::SameValue => (RBP_SAME, 0),
        RegisterRule::Offset(n) => match i16::try_from(n) {
            Ok(n) => (RBP_AT_CFA, n),
            Err(_) => return unsupported,
        },
        _ => return unsupported,
    };
    UnwindRow {
        pc: 0,
        cfa_offset,
        rbp_offset,
        cfa_kind,
        rbp_rule,
    }
}

fn same_rule(a: &UnwindRow, b: &UnwindRow) -> bool {
    a.cfa_kind == b.cfa_kind
        && a.cfa_offset == b.cfa_offset
        && a.rbp_rule == b.rbp_rule
        && a.rbp_offset == b.rbp_offset
}

/// Append `row` (whose pc is `>=` every pc in `rows`): a row at the same pc as the last one
/// replaces it, a row with the same rule as the last one is dropped.
fn push(rows: &mut Vec<UnwindRow>, row: UnwindRow) {
    while rows.last().is_some_and(|last| last.pc >= row.pc) {
        rows.pop();
    }
    if rows.last().is_some_and(|last| same_rule(last, &row)) {
        return;
    }
    rows.push(row);
}

/// A read-only private mapping of a whole file (an empty file maps to an empty slice).
struct Mmap {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mmap {
    fn map(file: &File) -> io::Result<Mmap> {
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "file too large"))?;
        if len == 0 {
            return Ok(Mmap {
                ptr: std::ptr::null_mut(),
                len: 0,
            });
        }
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh read-only private mapping of an open file; unmapped in Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mmap { ptr, len })
    }
}

impl std::ops::Deref for Mmap {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` maps `len` readable bytes for the lifetime of `self`. (A file truncated
        // underneath us would SIGBUS; objects that are being executed are not truncated.)
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        if self.len != 0 {
            // SAFETY: unmapping our own mapping once.
            unsafe { libc::munmap(self.ptr, self.len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";
    const LIBSTDCXX: &str = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6";
    const NODE: &str = "/usr/bin/node";

    const C_SRC: &str = r#"
#include <stdio.h>
#include <stdlib.h>

__attribute__((noinline)) long leaf(long x) { return x * 3 + 1; }

__attribute__((noinline)) long mid(long x) {
    char buf[64];
    snprintf(buf, sizeof buf, "%ld", x);
    return leaf(atol(buf)) + leaf(x);
}

__attribute__((noinline)) long top(long n) {
    long s = 0;
    for (long i = 0; i < n; i++) s += mid(i) * mid(i + 1);
    return s;
}

int main(int argc, char **argv) {
    (void)argv;
    printf("%ld\n", top(argc + 5));
    puts("done");
    return 0;
}
"#;
    const FUNCS: [&str; 4] = ["leaf", "mid", "top", "main"];

    /// A temporary directory removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new() -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "memprof-unwind-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Compile `C_SRC` with `flags`; `None` (test skipped) when gcc is missing.
    fn compile(dir: &TempDir, name: &str, flags: &[&str]) -> Option<Vec<u8>> {
        let src = dir.0.join("t.c");
        std::fs::write(&src, C_SRC).unwrap();
        let out = dir.0.join(name);
        let status = match Command::new("gcc")
            .args(flags)
            .arg(&src)
            .arg("-o")
            .arg(&out)
            .status()
        {
            Ok(s) => s,
            Err(e) => {
                eprintln!("gcc not available ({e}); skipping");
                return None;
            }
        };
        assert!(status.success(), "gcc {flags:?} failed");
        Some(std::fs::read(&out).unwrap())
    }

    /// (address, size) of a defined function symbol.
    fn symbol(data: &[u8], name: &str) -> (u64, u64) {
        use object::{ObjectSymbol, SymbolKind};
        let file = object::File::parse(data).unwrap();
        file.symbols()
            .chain(file.dynamic_symbols())
            .find(|s| s.name() == Ok(name) && s.kind() == SymbolKind::Text && s.address() != 0)
            .map(|s| (s.address(), s.size()))
            .unwrap_or_else(|| panic!("no symbol {name}"))
    }

    fn section_range(data: &[u8], name: &str) -> Option<(u64, u64)> {
        let file = object::File::parse(data).unwrap();
        file.section_by_name(name)
            .map(|s| (s.address(), s.address() + s.size()))
    }

    fn check_invariants(t: &UnwindTable) {
        assert!(!t.rows.is_empty());
        for w in t.rows.windows(2) {
            assert!(w[0].pc < w[1].pc, "rows not strictly sorted: {w:?}");
            assert!(!same_rule(&w[0], &w[1]), "duplicate rule: {w:?}");
        }
        assert_eq!(t.rows.last().unwrap().cfa_kind, CFA_NONE);
        assert_eq!(
            t.unsupported_rows,
            t.rows
                .iter()
                .filter(|r| r.cfa_kind == CFA_UNSUPPORTED)
                .count()
        );
    }

    fn row_at(t: &UnwindTable, addr: u64) -> UnwindRow {
        *find_row(&t.rows, addr as u32).unwrap_or_else(|| panic!("no row for {addr:#x}"))
    }

    /// The symbol after `end` starts exactly there (so no CFA_NONE row is expected).
    fn adjacent(data: &[u8], end: u64) -> bool {
        use object::ObjectSymbol;
        let file = object::File::parse(data).unwrap();
        let x = file
            .symbols()
            .any(|s| s.address() == end && s.kind() == object::SymbolKind::Text);
        x
    }

    #[test]
    fn omit_frame_pointer_build() {
        let dir = TempDir::new();
        let Some(data) = compile(&dir, "o2", &["-O2", "-fomit-frame-pointer"]) else {
            return;
        };
        let t = build_rows(&data).unwrap();
        check_invariants(&t);
        assert!(t.fdes >= FUNCS.len());
        for name in FUNCS {
            let (addr, size) = symbol(&data, name);
            let entry = row_at(&t, addr);
            assert_eq!(
                (entry.cfa_kind, entry.cfa_offset, entry.rbp_rule),
                (CFA_RSP, 8, RBP_SAME),
                "{name} entry"
            );
            // Every address of the function is covered by CFI.
            for a in addr..addr + size {
                let r = row_at(&t, a);
                assert!(
                    matches!(r.cfa_kind, CFA_RSP | CFA_RBP),
                    "{name}+{:#x}: {r:?}",
                    a - addr
                );
            }
            if !adjacent(&data, addr + size) {
                assert_eq!(row_at(&t, addr + size).cfa_kind, CFA_NONE, "{name} end");
            }
        }
        // `mid` has a stack frame (the snprintf buffer): some row inside it has a larger CFA.
        let (addr, size) = symbol(&data, "mid");
        assert!(t
            .rows
            .iter()
            .any(|r| (addr..addr + size).contains(&u64::from(r.pc))
                && r.cfa_kind == CFA_RSP
                && r.cfa_offset > 64));
    }

    #[test]
    fn frame_pointer_build() {
        let dir = TempDir::new();
        let Some(data) = compile(&dir, "o0", &["-O0", "-fno-omit-frame-pointer"]) else {
            return;
        };
        let t = build_rows(&data).unwrap();
        check_invariants(&t);
        for name in FUNCS {
            let (addr, size) = symbol(&data, name);
            let entry = row_at(&t, addr);
            assert_eq!(
                (entry.cfa_kind, entry.cfa_offset, entry.rbp_rule),
                (CFA_RSP, 8, RBP_SAME),
                "{name} entry"
            );
            // After `push %rbp`: CFA = rsp + 16, rbp saved at CFA - 16.
            let pushed = UnwindRow {
                pc: 0,
                cfa_offset: 16,
                rbp_offset: -16,
                cfa_kind: CFA_RSP,
                rbp_rule: RBP_AT_CFA,
            };
            // After `mov %rsp,%rbp`: CFA = rbp + 16.
            let body = UnwindRow {
                cfa_kind: CFA_RBP,
                ..pushed
            };
            let in_fn: Vec<UnwindRow> = t
                .rows
                .iter()
                .filter(|r| (addr..addr + size).contains(&u64::from(r.pc)))
                .map(|r| UnwindRow { pc: 0, ..*r })
                .collect();
            assert!(in_fn.contains(&pushed), "{name}: {in_fn:?}");
            assert!(in_fn.contains(&body), "{name}: {in_fn:?}");
            assert_eq!(
                UnwindRow {
                    pc: 0,
                    ..row_at(&t, addr + size / 2)
                },
                body,
                "{name} body"
            );
            if !adjacent(&data, addr + size) {
                assert_eq!(row_at(&t, addr + size).cfa_kind, CFA_NONE, "{name} end");
            }
        }
    }

    #[test]
    fn debug_frame_fallback() {
        let dir = TempDir::new();
        let flags = [
            "-O2",
            "-g",
            "-fno-asynchronous-unwind-tables",
            "-fomit-frame-pointer",
        ];
        let Some(_) = compile(&dir, "dbg", &flags) else {
            return;
        };
        let stripped = dir.0.join("dbg-no-eh");
        let status = Command::new("objcopy")
            .args([
                "--remove-section",
                ".eh_frame",
                "--remove-section",
                ".eh_frame_hdr",
            ])
            .arg(dir.0.join("dbg"))
            .arg(&stripped)
            .status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("objcopy failed or missing; skipping");
            return;
        }
        let data = std::fs::read(&stripped).unwrap();
        let t = build_rows(&data).unwrap();
        check_invariants(&t);
        for name in FUNCS {
            let (addr, size) = symbol(&data, name);
            let entry = row_at(&t, addr);
            assert_eq!(
                (entry.cfa_kind, entry.cfa_offset),
                (CFA_RSP, 8),
                "{name} entry"
            );
            let r = row_at(&t, addr + size - 1);
            assert!(
                matches!(r.cfa_kind, CFA_RSP | CFA_RBP),
                "{name} last byte: {r:?}"
            );
        }
    }

    #[test]
    fn plt_rows() {
        let dir = TempDir::new();
        let Some(data) = compile(&dir, "lazy", &["-O2", "-Wl,-z,lazy"]) else {
            return;
        };
        let t = build_rows(&data).unwrap();
        check_invariants(&t);
        let (plt, plt_end) = section_range(&data, ".plt").expect(".plt");
        // PLT0: push (CFA rsp+16), then jmp (CFA rsp+24); the entries: the expression.
        assert_eq!(
            (row_at(&t, plt).cfa_kind, row_at(&t, plt).cfa_offset),
            (CFA_RSP, 16)
        );
        assert_eq!(
            (row_at(&t, plt + 6).cfa_kind, row_at(&t, plt + 6).cfa_offset),
            (CFA_RSP, 24)
        );
        assert!(plt_end > plt + 16, "no PLT entries");
        for a in plt + 16..plt_end {
            let r = row_at(&t, a);
            assert_eq!((r.cfa_kind, r.cfa_offset), (CFA_PLT, 11), "{a:#x}");
        }

        // An IBT PLT (endbr64; push; jmp): binutils uses the threshold 9 there.
        let Some(ibt) = compile(
            &dir,
            "ibt",
            &["-O2", "-fcf-protection=full", "-Wl,-z,ibtplt,-z,lazy"],
        ) else {
            return;
        };
        let t = build_rows(&ibt).unwrap();
        let (plt, _) = section_range(&ibt, ".plt").expect(".plt");
        let r = row_at(&t, plt + 16);
        assert_eq!(r.cfa_kind, CFA_PLT);
        assert!(
            matches!(r.cfa_offset, 9 | 10),
            "IBT PLT threshold {}",
            r.cfa_offset
        );
    }

    /// A hand-made `.eh_frame`: one "zR" CIE (absolute udata4 pointers, CFA = rsp + 8, return
    /// address at CFA - 8), then one FDE per `(start, len, instructions)`, in that order.
    fn eh_frame(fdes: &[(u32, u32, &[u8])]) -> Vec<u8> {
        fn entry(out: &mut Vec<u8>, body: &[u8]) {
            let mut body = body.to_vec();
            while !(body.len() + 4).is_multiple_of(8) {
                body.push(0); // DW_CFA_nop
            }
            out.extend_from_slice(&(body.len() as u32).to_le_bytes());
            out.extend_from_slice(&body);
        }
        let mut out = Vec::new();
        // CIE id 0, version 1, "zR", code align 1, data align -8, RA column 16, augmentation
        // data length 1, DW_EH_PE_udata4; DW_CFA_def_cfa rsp 8; DW_CFA_offset r16 cfa-8.
        let cie = [
            0, 0, 0, 0, 1, b'z', b'R', 0, 1, 0x78, 16, 1, 0x03, 0x0c, 7, 8, 0x90, 1,
        ];
        entry(&mut out, &cie);
        for &(start, len, insns) in fdes {
            let cie_pointer = (out.len() + 4) as u32;
            let mut body = cie_pointer.to_le_bytes().to_vec();
            body.extend_from_slice(&start.to_le_bytes());
            body.extend_from_slice(&len.to_le_bytes());
            body.push(0); // augmentation data length
            body.extend_from_slice(insns);
            entry(&mut out, &body);
        }
        out.extend_from_slice(&0u32.to_le_bytes()); // terminator
        out
    }

    fn rows_of(section: &[u8]) -> UnwindTable {
        let mut eh = EhFrame::new(section, LittleEndian);
        eh.set_address_size(8);
        build(&eh, &BaseAddresses::default().set_eh_frame(0x10_0000), &[]).unwrap()
    }

    fn row(pc: u32, cfa_kind: u8, cfa_offset: i32, rbp_rule: u8, rbp_offset: i16) -> UnwindRow {
        UnwindRow {
            pc,
            cfa_offset,
            rbp_offset,
            cfa_kind,
            rbp_rule,
        }
    }

    #[test]
    fn synthetic_rules() {
        // DW_CFA_advance_loc 1; DW_CFA_def_cfa_offset 16; DW_CFA_offset rbp cfa-16;
        // DW_CFA_advance_loc 3; DW_CFA_def_cfa_register rbp.
        let fp: &[u8] = &[0x41, 0x0e, 16, 0x86, 2, 0x43, 0x0d, 6];
        let mut plt = vec![0x0f, 11]; // DW_CFA_def_cfa_expression, 11 bytes
        plt.extend_from_slice(&PLT_EXPR);
        plt[2 + PLT_EXPR_LIT] = 0x39; // lit9 (IBT PLT)
        let deref: &[u8] = &[0x0f, 3, 0x77, 0x08, 0x06]; // breg7 8; deref
        let undefined_ra: &[u8] = &[0x07, 16]; // DW_CFA_undefined r16
        let rbp_in_reg: &[u8] = &[0x41, 0x09, 6, 10]; // rbp in r10
        let cfa_r12: &[u8] = &[0x0c, 12, 8]; // DW_CFA_def_cfa r12 8
        let bad: &[u8] = &[0x41, 0x0e, 16, 0x0b]; // DW_CFA_restore_state, nothing remembered
        let big: &[u8] = &[0x0e, 0x80, 0x80, 0x80, 0x80, 0x10]; // def_cfa_offset 1 << 32
        let ra_elsewhere: &[u8] = &[0x90, 2]; // return address at CFA - 16
        let t = rows_of(&eh_frame(&[
            (0x1000, 0x10, fp),
            (0x1020, 0x10, &plt),
            (0x1040, 0x10, deref),
            (0x1060, 0x10, undefined_ra),
            (0x1080, 0x10, rbp_in_reg),
            (0x10a0, 0x10, cfa_r12),
            (0x10c0, 0x10, bad),
            (0x10e0, 0x10, big),
            (0x1100, 0x10, ra_elsewhere),
            (0x1120, 0, fp), // empty: skipped
        ]));
        let u = CFA_UNSUPPORTED;
        assert_eq!(
            t.rows,
            vec![
                row(0x1000, CFA_RSP, 8, RBP_SAME, 0),
                row(0x1001, CFA_RSP, 16, RBP_AT_CFA, -16),
                row(0x1004, CFA_RBP, 16, RBP_AT_CFA, -16),
                row(0x1010, CFA_NONE, 0, RBP_SAME, 0),
                row(0x1020, CFA_PLT, 9, RBP_SAME, 0),
                row(0x1030, CFA_NONE, 0, RBP_SAME, 0),
                row(0x1040, u, 0, RBP_SAME, 0),
                row(0x1050, CFA_NONE, 0, RBP_SAME, 0),
                row(0x1060, CFA_END, 0, RBP_SAME, 0),
                row(0x1070, CFA_NONE, 0, RBP_SAME, 0),
                row(0x1080, CFA_RSP, 8, RBP_SAME, 0),
                row(0x1081, u, 0, RBP_SAME, 0),
                row(0x1090, CFA_NONE, 0, RBP_SAME, 0),
                row(0x10a0, u, 0, RBP_SAME, 0),
                row(0x10b0, CFA_NONE, 0, RBP_SAME, 0),
                row(0x10c0, u, 0, RBP_SAME, 0), // the whole FDE, not just from 0x10c1
                row(0x10d0, CFA_NONE, 0, RBP_SAME, 0),
                row(0x10e0, u, 0, RBP_SAME, 0),
                row(0x10f0, CFA_NONE, 0, RBP_SAME, 0),
                row(0x1100, u, 0, RBP_SAME, 0),
                row(0x1110, CFA_NONE, 0, RBP_SAME, 0),
            ]
        );
        assert_eq!((t.fdes, t.skipped_fdes, t.unsupported_rows), (9, 1, 6));
    }

    #[test]
    fn synthetic_overlaps() {
        let grow: &[u8] = &[0x41, 0x0e, 16]; // at +1: CFA = rsp + 16
        let t = rows_of(&eh_frame(&[
            // Out of section order; B starts where A ends (no CFA_NONE between them).
            (0x1010, 0x10, grow), // B
            (0x1000, 0x10, grow), // A
            // Same start: the first in section order (C) wins, D is dropped.
            (0x1020, 0x08, grow), // C
            (0x1020, 0x20, &[]),  // D
            // Nested: E is cut where F starts; F's end is not E's.
            (0x1100, 0x100, grow), // E
            (0x1180, 0x10, &[]),   // F
        ]));
        assert_eq!(
            t.rows,
            vec![
                row(0x1000, CFA_RSP, 8, RBP_SAME, 0),
                row(0x1001, CFA_RSP, 16, RBP_SAME, 0),
                row(0x1010, CFA_RSP, 8, RBP_SAME, 0),
                row(0x1011, CFA_RSP, 16, RBP_SAME, 0),
                row(0x1020, CFA_RSP, 8, RBP_SAME, 0),
                row(0x1021, CFA_RSP, 16, RBP_SAME, 0),
                row(0x1028, CFA_NONE, 0, RBP_SAME, 0),
                row(0x1100, CFA_RSP, 8, RBP_SAME, 0),
                row(0x1101, CFA_RSP, 16, RBP_SAME, 0),
                row(0x1180, CFA_RSP, 8, RBP_SAME, 0),
                row(0x1190, CFA_NONE, 0, RBP_SAME, 0),
            ]
        );
        assert_eq!((t.fdes, t.skipped_fdes), (5, 1));
        // Above 4 GiB.
        let data = eh_frame(&[(0xffff_fff0, 0x20, &[])]);
        let mut eh = EhFrame::new(&data, LittleEndian);
        eh.set_address_size(8);
        assert!(matches!(
            build(&eh, &BaseAddresses::default(), &[]),
            Err(TableError::AddressTooLarge(_))
        ));
    }

    #[test]
    fn plt_expression_matching() {
        let mut e = PLT_EXPR;
        e[PLT_EXPR_LIT] = 0x3b; // lit11
        assert_eq!(plt_threshold(&e), Some(11));
        e[PLT_EXPR_LIT] = 0x3a; // lit10
        assert_eq!(plt_threshold(&e), Some(10));
        e[PLT_EXPR_LIT] = 0x40; // not a literal
        assert_eq!(plt_threshold(&e), None);
        e[PLT_EXPR_LIT] = 0x3b;
        e[1] = 0x10; // rsp + 16
        assert_eq!(plt_threshold(&e), None);
        assert_eq!(plt_threshold(&e[..10]), None);
    }

    #[test]
    fn push_dedups_and_replaces() {
        let r = |pc, kind, off| UnwindRow {
            pc,
            cfa_offset: off,
            rbp_offset: 0,
            cfa_kind: kind,
            rbp_rule: RBP_SAME,
        };
        let mut rows = Vec::new();
        push(&mut rows, r(10, CFA_RSP, 8));
        push(&mut rows, r(20, CFA_RSP, 8)); // same rule: dropped
        push(&mut rows, r(20, CFA_RSP, 16));
        push(&mut rows, r(20, CFA_RSP, 8)); // same pc: replaces, then equal to predecessor
        push(&mut rows, r(30, CFA_NONE, 0));
        assert_eq!(rows, vec![r(10, CFA_RSP, 8), r(30, CFA_NONE, 0)]);
        assert_eq!(find_row(&rows, 9), None);
        assert_eq!(find_row(&rows, 10), Some(&rows[0]));
        assert_eq!(find_row(&rows, 29), Some(&rows[0]));
        assert_eq!(find_row(&rows, 30), Some(&rows[1]));
        assert_eq!(find_row(&rows, u32::MAX), Some(&rows[1]));
    }

    #[test]
    fn libc_table() {
        if !Path::new(LIBC).exists() {
            eprintln!("{LIBC} missing; skipping");
            return;
        }
        let t = build_rows_from_file(Path::new(LIBC)).unwrap();
        check_invariants(&t);
        // clone/clone3's child path marks %rip undefined.
        assert!(
            t.rows.iter().any(|r| r.cfa_kind == CFA_END),
            "no CFA_END row"
        );
        // libc's lazy .plt has the standard expression.
        assert!(
            t.rows
                .iter()
                .any(|r| r.cfa_kind == CFA_PLT && r.cfa_offset == 11),
            "no PLT row"
        );
        let data = std::fs::read(LIBC).unwrap();
        for name in ["malloc", "free", "memcpy", "__libc_start_main"] {
            let (addr, _) = symbol(&data, name);
            let r = row_at(&t, addr);
            assert!(r.cfa_kind != CFA_NONE, "{name}: {r:?}");
        }
        let (malloc, _) = symbol(&data, "malloc");
        let r = row_at(&t, malloc);
        assert_eq!((r.cfa_kind, r.cfa_offset), (CFA_RSP, 8));
    }

    #[test]
    fn libstdcxx_table() {
        if !Path::new(LIBSTDCXX).exists() {
            return;
        }
        let t = build_rows_from_file(Path::new(LIBSTDCXX)).unwrap();
        check_invariants(&t);
        assert!(t.fdes > 1000);
    }

    #[test]
    fn not_elf_and_missing() {
        assert!(matches!(build_rows(b"not an elf"), Err(TableError::Elf(_))));
        assert!(matches!(
            build_rows_from_file(Path::new("/nonexistent/memprof")),
            Err(TableError::Io { .. })
        ));
        assert_eq!(mapping_bias(b"junk", 0, 0), None);
    }

    /// Exec segments of `data` as (p_offset, p_vaddr, p_filesz).
    fn exec_segments(data: &[u8]) -> Vec<(u64, u64, u64)> {
        let h = object::elf::FileHeader64::<object::Endianness>::parse(data).unwrap();
        let e = h.endian().unwrap();
        h.program_headers(e, data)
            .unwrap()
            .iter()
            .filter(|p| {
                p.p_type(e) == object::elf::PT_LOAD && p.p_flags(e) & object::elf::PF_X != 0
            })
            .map(|p| (p.p_offset(e), p.p_vaddr(e), p.p_filesz(e)))
            .collect()
    }

    /// Simulate the kernel mapping every executable segment at load base `base`.
    fn check_bias(data: &[u8], base: u64) {
        let segs = exec_segments(data);
        assert!(!segs.is_empty());
        for (off, vaddr, filesz) in segs {
            let map_start = base + (vaddr & !0xfff);
            let map_offset = off & !0xfff;
            // Only the headers are needed.
            assert_eq!(
                mapping_bias(&data[..4096.min(data.len())], map_start, map_offset),
                Some(base)
            );
            // A later page of the same segment (a split mapping).
            if filesz > 0x2000 {
                assert_eq!(
                    mapping_bias(data, map_start + 0x1000, map_offset + 0x1000),
                    Some(base)
                );
            }
        }
        // Offset 0 is the (non-executable) ELF header segment in a modern layout.
        let first = exec_segments(data)[0].0;
        if first >= 0x1000 {
            assert_eq!(mapping_bias(data, base, 0), None);
        }
    }

    #[test]
    fn bias_pie_and_non_pie() {
        let dir = TempDir::new();
        let Some(pie) = compile(&dir, "pie", &["-O2", "-pie", "-fPIE"]) else {
            return;
        };
        check_bias(&pie, 0x5555_5555_0000);
        let nopie = compile(&dir, "nopie", &["-O2", "-no-pie", "-fno-PIE"]).unwrap();
        let segs = exec_segments(&nopie);
        assert!(segs[0].1 >= 0x40_0000, "non-PIE text at {:#x}", segs[0].1);
        check_bias(&nopie, 0);
        if Path::new(NODE).exists() {
            // node has an executable segment whose vaddr - offset differs from the others.
            let f = File::open(NODE).unwrap();
            let map = Mmap::map(&f).unwrap();
            check_bias(&map, 0);
        }
    }

    /// The bias of this process's own libc mapping puts `malloc`'s symbol at `malloc`'s address.
    #[test]
    fn bias_of_live_libc() {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let Some((start, offset, path)) = maps.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 6 && f[1].contains('x') && f[5].ends_with("/libc.so.6")).then(|| {
                let start = u64::from_str_radix(f[0].split('-').next().unwrap(), 16).unwrap();
                (
                    start,
                    u64::from_str_radix(f[2], 16).unwrap(),
                    f[5].to_owned(),
                )
            })
        }) else {
            eprintln!("no libc.so.6 mapping; skipping");
            return;
        };
        let data = std::fs::read(&path).unwrap();
        let bias = mapping_bias(&data, start, offset).expect("bias");
        let (sym, _) = symbol(&data, "malloc");
        assert_eq!(bias + sym, libc::malloc as *const () as usize as u64);
        let t = build_rows(&data).unwrap();
        let pc = (libc::malloc as *const () as usize as u64 - bias) as u32;
        assert_eq!(find_row(&t.rows, pc).unwrap().cfa_kind, CFA_RSP);
    }

    /// Row counts and build times of big objects: run with
    /// `cargo test --release -p memprof --lib unwind::table::tests::report -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn report() {
        for path in [LIBC, LIBSTDCXX, NODE] {
            if !Path::new(path).exists() {
                continue;
            }
            let mut best = std::time::Duration::MAX;
            let mut t = UnwindTable::default();
            for _ in 0..5 {
                let t0 = std::time::Instant::now();
                t = build_rows_from_file(Path::new(path)).unwrap();
                best = best.min(t0.elapsed());
            }
            check_invariants(&t);
            let count = |k| t.rows.iter().filter(|r| r.cfa_kind == k).count();
            println!(
                "{path}: {} rows ({} KiB), {} FDEs, {} skipped; RSP {} RBP {} PLT {} END {} NONE {} UNSUPPORTED {}; best of 5: {:?}",
                t.rows.len(),
                t.rows.len() * std::mem::size_of::<UnwindRow>() / 1024,
                t.fdes,
                t.skipped_fdes,
                count(CFA_RSP),
                count(CFA_RBP),
                count(CFA_PLT),
                count(CFA_END),
                count(CFA_NONE),
                count(CFA_UNSUPPORTED),
                best
            );
        }
    }
}
