//! What the interpreter's ELF object says (the executable of a static build, or
//! `libpython3.X.so`): its symbols, its version, where the eval loop's code is, and the code of
//! the few functions memprof decodes. Read once per object (device, inode), through
//! `/proc/PID/map_files`, so a container's own interpreter is read, not the host's.

use std::{collections::HashMap, fs::File, io::Read, path::Path};

use gimli::{BaseAddresses, CieOrFde, EhFrame, LittleEndian, UnwindSection};
use iced_x86::{Decoder, DecoderOptions, FlowControl, OpKind};
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, SymbolKind};

/// The symbols memprof looks up.
const WANTED: &[&str] = &[
    "_PyRuntime",
    "Py_Version",
    "_PyEval_EvalFrameDefault",
    "_PyEval_EvalFrameDefault.cold",
    "PyEval_EvalFrameEx",
    "PyCode_Type",
    "PyUnicode_Type",
    "PyBytes_Type",
    "PyGILState_GetThisThreadState",
    "PyObject_Malloc",
    "PyObject_Calloc",
    "PyObject_Realloc",
    "PyObject_Free",
    "PyMem_Malloc",
    "PyMem_Calloc",
    "PyMem_Realloc",
    "PyMem_Free",
    "PyObject_GetArenaAllocator",
];

/// A symbol: link-time address and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sym {
    pub addr: u64,
    pub size: u64,
}

/// A CPython interpreter object.
#[derive(Debug)]
pub struct PyElf {
    /// The file name as mapped (for messages).
    pub name: String,
    pub symbols: HashMap<&'static str, Sym>,
    /// (major, minor) from `Py_Version` (3.11+) or the file name.
    pub version: Option<(u32, u32)>,
    /// `PY_VERSION_HEX` when `Py_Version` says it.
    pub version_hex: Option<u32>,
    /// The eval loop's code: the function, and its cold part (GCC moves unlikely blocks to
    /// `.text.unlikely`; code there runs inside the same activation).
    pub eval: Vec<(u64, u64)>,
    /// How the cold part was found (`symbol`, `branches`, or `none`).
    pub eval_cold: &'static str,
    /// (p_offset, p_vaddr, p_filesz, executable) of each PT_LOAD segment.
    pub segments: Vec<(u64, u64, u64, bool)>,
    /// The object's code, for decoding: (vaddr, bytes) of each executable segment.
    code: Vec<(u64, Vec<u8>)>,
    /// `[start, end)` of every FDE of `.eh_frame`, sorted: function extents without symbols.
    fdes: Vec<(u64, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("cannot read {0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0} is not a readable ELF file: {1}")]
    Parse(String, object::read::Error),
}

/// Whether a mapped file's name looks like an interpreter (cheap filter before parsing).
pub fn looks_like_python(path: &str) -> bool {
    let base = path.rsplit('/').next().unwrap_or(path);
    base.starts_with("libpython3") || base.starts_with("python3") || base == "python"
}

/// (major, minor) from a file name such as `python3.11`, `libpython3.13.so.1.0`.
pub fn version_from_name(path: &str) -> Option<(u32, u32)> {
    let base = path.rsplit('/').next().unwrap_or(path);
    let rest = base.strip_prefix("lib").unwrap_or(base).strip_prefix("python3.")?;
    let minor: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((3, minor.parse().ok()?))
}

impl PyElf {
    /// Reads and inspects the object at `path`; `name` is how the process maps it. None when
    /// it is not a CPython interpreter (no `_PyRuntime`, or no eval loop).
    pub fn read(path: &Path, name: &str) -> Result<Option<PyElf>, ElfError> {
        let mut file = File::open(path).map_err(|e| ElfError::Io(name.to_string(), e))?;
        // A quick look at the dynamic symbols first (read lazily): most objects a process maps
        // are not interpreters, and some are large (node: 100 MB).
        {
            let cache = object::ReadCache::new(&mut file);
            let Ok(obj) = object::File::parse(&cache) else { return Ok(None) };
            let exported = |n: &str| obj.dynamic_symbols().any(|s| s.name() == Ok(n) && !s.is_undefined());
            if !exported("_PyRuntime") {
                return Ok(None);
            }
        }
        let mut data = Vec::new();
        std::io::Seek::rewind(&mut file).map_err(|e| ElfError::Io(name.to_string(), e))?;
        file.read_to_end(&mut data).map_err(|e| ElfError::Io(name.to_string(), e))?;
        Self::parse(&data, name)
    }

    pub fn parse(data: &[u8], name: &str) -> Result<Option<PyElf>, ElfError> {
        let file = object::File::parse(data).map_err(|e| ElfError::Parse(name.to_string(), e))?;
        let mut symbols = HashMap::new();
        for sym in file.dynamic_symbols().chain(file.symbols()) {
            if sym.is_undefined() || sym.address() == 0 {
                continue;
            }
            let Ok(n) = sym.name() else { continue };
            if let Some(&w) = WANTED.iter().find(|w| **w == n) {
                if matches!(sym.kind(), SymbolKind::Text | SymbolKind::Data | SymbolKind::Unknown) {
                    symbols.entry(w).or_insert(Sym { addr: sym.address(), size: sym.size() });
                }
            }
        }
        let eval_sym = symbols.get("_PyEval_EvalFrameDefault").or_else(|| symbols.get("PyEval_EvalFrameEx")).copied();
        let (Some(eval_sym), true) = (eval_sym, symbols.contains_key("_PyRuntime")) else {
            return Ok(None);
        };
        let segments: Vec<(u64, u64, u64, bool)> = file
            .segments()
            .map(|s| {
                let (off, size) = s.file_range();
                let exec = matches!(s.flags(), object::SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0);
                (off, s.address(), size, exec)
            })
            .collect();
        let code: Vec<(u64, Vec<u8>)> = segments
            .iter()
            .filter(|s| s.3)
            .filter_map(|&(off, vaddr, size, _)| {
                let bytes = data.get(off as usize..off.checked_add(size)? as usize)?;
                Some((vaddr, bytes.to_vec()))
            })
            .collect();
        let mut me = PyElf {
            name: name.to_string(),
            version: None,
            version_hex: None,
            eval: vec![(eval_sym.addr, eval_sym.addr + eval_sym.size.max(1))],
            eval_cold: "none",
            segments,
            code,
            symbols,
            fdes: {
                let mut f = fde_ranges(&file).unwrap_or_default();
                f.sort_unstable();
                f
            },
        };
        if let Some(v) = me.symbols.get("Py_Version").and_then(|s| me.read_data(data, s.addr, 4)) {
            let hex = u32::from_le_bytes([v[0], v[1], v[2], v[3]]);
            if hex >> 24 == 3 {
                me.version_hex = Some(hex);
                me.version = Some((3, (hex >> 16) & 0xff));
            }
        }
        if me.version.is_none() {
            me.version = version_from_name(name);
        }
        if let Some(cold) = me.symbols.get("_PyEval_EvalFrameDefault.cold").copied() {
            me.eval.push((cold.addr, cold.addr + cold.size.max(1)));
            me.eval_cold = "symbol";
        } else if let Some(cold) = me.cold_part(eval_sym) {
            me.eval.push(cold);
            me.eval_cold = "branches";
        }
        Ok(Some(me))
    }

    /// `len` bytes of the file at link-time address `vaddr` (initialized data or code).
    fn read_data(&self, data: &[u8], vaddr: u64, len: usize) -> Option<Vec<u8>> {
        let off = self.file_offset(vaddr)?;
        data.get(off as usize..off as usize + len).map(<[u8]>::to_vec)
    }

    /// The file offset of link-time address `vaddr`.
    pub fn file_offset(&self, vaddr: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|&&(_, v, size, _)| v <= vaddr && vaddr - v < size)
            .map(|&(off, v, _, _)| vaddr - v + off)
    }

    /// The code at link-time address `vaddr`, up to `len` bytes.
    pub fn code_at(&self, vaddr: u64, len: usize) -> Option<&[u8]> {
        self.code.iter().find_map(|(start, bytes)| {
            let rel = vaddr.checked_sub(*start)? as usize;
            let end = (rel + len).min(bytes.len());
            (rel < bytes.len()).then(|| &bytes[rel..end])
        })
    }

    /// The size of the function starting at link-time address `vaddr`: the FDE that starts
    /// there (0: none does).
    pub fn function_size(&self, vaddr: u64) -> u64 {
        match self.fdes.binary_search_by_key(&vaddr, |r| r.0) {
            Ok(i) => self.fdes[i].1 - self.fdes[i].0,
            Err(_) => 0,
        }
    }

    /// Whether link-time address `vaddr` is in executable code.
    pub fn is_code(&self, vaddr: u64) -> bool {
        self.code.iter().any(|(start, b)| vaddr >= *start && vaddr < start + b.len() as u64)
    }

    /// The cold part of the eval function when no symbol names it (stripped builds): the
    /// `.eh_frame` FDE (outside the function) holding most targets of the function's own
    /// branches — GCC reaches its cold blocks only by jumps from the hot part. Tail calls (to
    /// other functions' entries, which are FDE starts) are not counted.
    fn cold_part(&self, eval: Sym) -> Option<(u64, u64)> {
        let fdes = &self.fdes;
        let starts: std::collections::HashSet<u64> = fdes.iter().map(|r| r.0).collect();
        let code = self.code_at(eval.addr, eval.size as usize)?;
        let mut decoder = Decoder::with_ip(64, code, eval.addr, DecoderOptions::NONE);
        let (lo, hi) = (eval.addr, eval.addr + eval.size);
        let mut counts: HashMap<(u64, u64), usize> = HashMap::new();
        for ins in &mut decoder {
            if !matches!(ins.flow_control(), FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch) {
                continue;
            }
            if !matches!(ins.op0_kind(), OpKind::NearBranch64 | OpKind::NearBranch32 | OpKind::NearBranch16) {
                continue;
            }
            let t = ins.near_branch_target();
            if (lo..hi).contains(&t) || starts.contains(&t) {
                continue;
            }
            if let Some(r) = fdes.iter().find(|r| r.0 <= t && t < r.1) {
                if r.0 > hi || r.1 <= lo {
                    *counts.entry(*r).or_default() += 1;
                }
            }
        }
        counts.into_iter().max_by_key(|(r, n)| (*n, std::cmp::Reverse(r.0))).map(|(r, _)| r)
    }
}

/// `[start, end)` of every FDE in `.eh_frame` (link-time addresses).
fn fde_ranges(file: &object::File) -> Option<Vec<(u64, u64)>> {
    let section = file.section_by_name(".eh_frame")?;
    let data = section.uncompressed_data().ok()?;
    let eh = EhFrame::new(&data, LittleEndian);
    let mut bases = BaseAddresses::default().set_eh_frame(section.address());
    if let Some(text) = file.section_by_name(".text") {
        bases = bases.set_text(text.address());
    }
    if let Some(got) = file.section_by_name(".got") {
        bases = bases.set_got(got.address());
    }
    let mut out = Vec::new();
    let mut entries = eh.entries(&bases);
    while let Ok(Some(entry)) = entries.next() {
        if let CieOrFde::Fde(partial) = entry {
            if let Ok(fde) = partial.parse(|_, bases, o| eh.cie_from_offset(bases, o)) {
                let start = fde.initial_address();
                out.push((start, start.saturating_add(fde.len())));
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_names() {
        assert_eq!(version_from_name("/usr/bin/python3.11"), Some((3, 11)));
        assert_eq!(version_from_name("/usr/lib/x86_64-linux-gnu/libpython3.13.so.1.0"), Some((3, 13)));
        assert_eq!(version_from_name("/opt/libpython3.9d.so"), Some((3, 9)));
        assert_eq!(version_from_name("/usr/bin/python3"), None);
        assert!(looks_like_python("/usr/bin/python3.11"));
        assert!(!looks_like_python("/usr/lib/libc.so.6"));
    }

    /// The host's interpreters: the pyenv build (symbols, a `.cold` symbol) and Debian's
    /// static, stripped one (no symbol table: the cold part comes from the branches). Both
    /// must be found, with the same answer for the pyenv build either way.
    #[test]
    fn host_interpreters() {
        let shared = shared_libpython().expect("the host's python3 maps a shared libpython (pyenv)");
        let e = PyElf::read(&shared, &shared.display().to_string()).unwrap().expect("libpython is an interpreter");
        assert_eq!(e.version, Some((3, 11)));
        assert_eq!(e.eval_cold, "symbol", "{:?}", e.eval);
        assert!(e.symbols.contains_key("PyObject_Malloc"));
        // Without the symbol table, the branch analysis finds no other cold part (this build's
        // 4-byte `.cold` is reached by no branch at all).
        let eval = e.symbols["_PyEval_EvalFrameDefault"];
        if let Some(cold) = e.cold_part(eval) {
            assert_eq!(cold, e.eval[1], "cold part: branches vs symbol");
        }

        let st = PyElf::read(Path::new("/usr/bin/python3.11"), "/usr/bin/python3.11")
            .unwrap()
            .expect("Debian's python3.11 is an interpreter");
        assert_eq!(st.version, Some((3, 11)));
        assert_eq!(st.version_hex.map(|h| h >> 16), Some(0x030b));
        assert_eq!(st.eval_cold, "branches", "{:x?}", st.eval);
        eprintln!("Debian python3.11: eval {:x?}", st.eval);
        let (c0, c1) = st.eval[1];
        assert!(c1 > c0 && (c1 <= st.eval[0].0 || c0 >= st.eval[0].1));
    }

    /// The libpython the host's `python3` maps.
    fn shared_libpython() -> Option<std::path::PathBuf> {
        let out = std::process::Command::new("python3")
            .args(["-c", "import sysconfig,os;print(os.path.join(sysconfig.get_config_var('LIBDIR'), sysconfig.get_config_var('INSTSONAME')))"])
            .output()
            .ok()?;
        let p = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        p.exists().then_some(p)
    }
}
