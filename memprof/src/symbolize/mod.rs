//! Addresses → frames. One long-lived blazesym [`Symbolizer`], fed in batches per module.
//!
//! Each process's memory map is cached when the process is first seen (and re-read when an
//! address falls outside it), and every ELF object is kept open by file descriptor, so stacks of
//! a process that has exited still symbolize, and a container's own files are read through
//! `/proc/PID/map_files`, never through a path the container controls.

use std::{
    collections::HashMap,
    fs::File,
    os::unix::io::AsRawFd,
    path::PathBuf,
};

use blazesym::symbolize::{
    CodeInfo, Input, Symbolized, Symbolizer as Blaze,
    source::{Elf, Source},
};
use log::debug;

use crate::{
    report::Frame,
    target::maps::{self, MapEntry},
};

/// Where an address lies: an object file and the file offset in it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Location {
    module: usize,
    offset: u64,
}

/// An open ELF object, shared by every process that maps it.
struct Module {
    /// What the process calls it (the path in /proc/PID/maps).
    name: String,
    /// `/proc/self/fd/N` for the open file, or the name for pseudo-files such as `[vdso]`.
    path: Option<PathBuf>,
    _file: Option<File>,
}

/// Address → frames, for processes alive or dead.
pub struct Symbolizer {
    blaze: Blaze,
    maps: HashMap<u32, Vec<MapEntry>>,
    modules: Vec<Module>,
    module_ids: HashMap<(u32, u32, u64, String), usize>,
    cache: HashMap<(usize, u64), Vec<Frame>>,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbolizer {
    pub fn new() -> Self {
        Self {
            blaze: Blaze::builder()
                .enable_code_info(true)
                .enable_inlined_fns(true)
                .enable_demangling(true)
                .build(),
            maps: HashMap::new(),
            modules: Vec::new(),
            module_ids: HashMap::new(),
            cache: HashMap::new(),
        }
    }

    /// Reads (or re-reads) a process's memory map and opens the objects it maps. Call it when a
    /// process is first seen and before its stacks are symbolized.
    pub fn observe_process(&mut self, pid: u32) {
        let Ok(entries) = maps::read_maps(pid) else { return };
        for e in entries.iter().filter(|e| e.is_exec()) {
            self.module_for(pid, e);
        }
        self.maps.insert(pid, entries);
    }

    /// Forgets a process's map (its modules stay open for stacks already collected).
    pub fn forget_process(&mut self, pid: u32) {
        self.maps.remove(&pid);
    }

    fn module_for(&mut self, pid: u32, e: &MapEntry) -> usize {
        let name = e.path.clone().unwrap_or_else(|| "[anon]".to_string());
        let key = (e.dev_major, e.dev_minor, e.inode, name.clone());
        if let Some(&id) = self.module_ids.get(&key) {
            return id;
        }
        let (file, path) = if e.is_file_backed() {
            match File::open(maps::map_files_path(pid, e)) {
                Ok(f) => {
                    let p = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
                    (Some(f), Some(p))
                }
                Err(err) => {
                    debug!("cannot open {name} of pid {pid}: {err}");
                    (None, None)
                }
            }
        } else {
            (None, None)
        };
        let id = self.modules.len();
        self.modules.push(Module { name, path, _file: file });
        self.module_ids.insert(key, id);
        id
    }

    /// Where `addr` lies in `pid`, or None when it is in no executable mapping (a garbage frame
    /// from a frame-pointer walk through code without frame pointers).
    fn locate(&mut self, pid: u32, addr: u64) -> Option<Location> {
        let find = |maps: &HashMap<u32, Vec<MapEntry>>| {
            maps.get(&pid)
                .and_then(|m| maps::lookup(m, addr))
                .filter(|e| e.is_exec())
                .cloned()
        };
        let entry = match find(&self.maps) {
            Some(e) => e,
            None => {
                // A mapping made since we last looked (dlopen, JIT)? Re-read once.
                if crate::target::procs::pid_alive(pid) {
                    self.observe_process(pid);
                }
                find(&self.maps)?
            }
        };
        let module = self.module_for(pid, &entry);
        Some(Location { module, offset: addr - entry.start + entry.offset })
    }

    /// Whether `addr` lies in executable code of `pid`.
    pub fn is_code(&mut self, pid: u32, addr: u64) -> bool {
        self.locate(pid, addr).is_some()
    }

    /// Whether `addr` looks like a return address in `pid`: it is in code and the bytes just
    /// before it are a call instruction (`call rel32`, or `call r/m64` of 2 to 7 bytes). Used to
    /// vet the word read at the stack pointer before it is trusted as a frame.
    pub fn is_return_address(&mut self, pid: u32, addr: u64) -> bool {
        let Some(loc) = self.locate(pid, addr) else { return false };
        let Some(file) = self.modules[loc.module]._file.as_ref() else { return false };
        let Some(start) = loc.offset.checked_sub(7) else { return false };
        let mut b = [0u8; 7];
        if std::os::unix::fs::FileExt::read_exact_at(file, &mut b, start).is_err() {
            return false;
        }
        looks_like_call_before(&b)
    }

    /// Symbolizes a user stack (leaf first, as the kernel reports it) of `pid` and returns the
    /// frames root → leaf. Every address is a return address or an instruction after a syscall,
    /// so `addr - 1` is looked up (the call instruction itself). The walk stops at the first
    /// address outside executable code.
    pub fn symbolize_stack(&mut self, pid: u32, ips_leaf_first: &[u64]) -> Vec<Frame> {
        let mut locs = Vec::with_capacity(ips_leaf_first.len());
        for &ip in ips_leaf_first {
            match self.locate(pid, ip.saturating_sub(1)) {
                Some(l) => locs.push(l),
                None => break,
            }
        }
        self.resolve(&locs);
        let mut frames = Vec::new();
        for l in locs.iter().rev() {
            if let Some(f) = self.cache.get(&(l.module, l.offset)) {
                frames.extend(f.iter().cloned());
            }
        }
        frames
    }

    /// Fills the cache for every location not in it, one blazesym call per module.
    fn resolve(&mut self, locs: &[Location]) {
        let mut by_module: HashMap<usize, Vec<u64>> = HashMap::new();
        for l in locs {
            if !self.cache.contains_key(&(l.module, l.offset)) {
                by_module.entry(l.module).or_default().push(l.offset);
            }
        }
        for (module, mut offsets) in by_module {
            offsets.sort_unstable();
            offsets.dedup();
            let m = &self.modules[module];
            let results = match &m.path {
                Some(path) => {
                    let src = Source::Elf(Elf::new(path));
                    match self.blaze.symbolize(&src, Input::FileOffset(&offsets)) {
                        Ok(r) => r
                            .iter()
                            .zip(&offsets)
                            .map(|(s, off)| to_frames(&m.name, *off, s))
                            .collect(),
                        Err(err) => {
                            debug!("symbolizing in {} failed: {err}", m.name);
                            Vec::new()
                        }
                    }
                }
                None => Vec::new(),
            };
            for (i, off) in offsets.iter().enumerate() {
                let frames = results
                    .get(i)
                    .cloned()
                    .flatten()
                    .unwrap_or_else(|| vec![unknown_frame(&m.name, *off)]);
                self.cache.insert((module, *off), frames);
            }
        }
    }
}

/// `b` = the 7 bytes before a return address: does a call instruction end there?
fn looks_like_call_before(b: &[u8; 7]) -> bool {
    // call rel32: E8 + 4 bytes.
    if b[2] == 0xE8 {
        return true;
    }
    // call r/m64: [REX] FF /2 with ModRM reg field 2, 2..7 bytes long.
    (2..=7).any(|len| {
        let i = 7 - len;
        let (op, modrm) = if b[i] & 0xF0 == 0x40 && len >= 3 { (b[i + 1], b[i + 2]) } else { (b[i], b[i + 1]) };
        op == 0xFF && (modrm >> 3) & 7 == 2
    })
}

fn module_base(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

fn unknown_frame(module: &str, offset: u64) -> Frame {
    Frame {
        function: format!("{}+{:#x}", module_base(module), offset),
        file: None,
        line: None,
        module: module.to_string(),
        offset,
        inlined: false,
    }
}

fn code_location(ci: Option<&CodeInfo<'_>>) -> (Option<String>, Option<u32>) {
    match ci {
        Some(ci) => (Some(ci.to_path().display().to_string()), ci.line),
        None => (None, None),
    }
}

/// One address → its frames, outermost function first, then the functions inlined into it.
fn to_frames(module: &str, offset: u64, s: &Symbolized<'_>) -> Option<Vec<Frame>> {
    let Symbolized::Sym(sym) = s else { return None };
    let (file, line) = code_location(sym.code_info.as_deref());
    let mut frames = vec![Frame {
        function: sym.name.to_string(),
        file,
        line,
        module: module.to_string(),
        offset,
        inlined: false,
    }];
    for f in sym.inlined.iter() {
        let (file, line) = code_location(f.code_info.as_ref());
        frames.push(Frame {
            function: f.name.to_string(),
            file,
            line,
            module: module.to_string(),
            offset,
            inlined: true,
        });
    }
    Some(frames)
}

#[cfg(test)]
mod tests {
    use super::looks_like_call_before;

    #[test]
    fn recognises_calls() {
        // call rel32
        assert!(looks_like_call_before(&[0x90, 0x90, 0xE8, 1, 2, 3, 4]));
        // call *%rax (ff d0)
        assert!(looks_like_call_before(&[0, 0, 0, 0, 0, 0xFF, 0xD0]));
        // call *0x10(%rbx) (ff 53 10)
        assert!(looks_like_call_before(&[0, 0, 0, 0, 0xFF, 0x53, 0x10]));
        // call *%r11 (41 ff d3)
        assert!(looks_like_call_before(&[0, 0, 0, 0, 0x41, 0xFF, 0xD3]));
        // push/mov/ret: not a call
        assert!(!looks_like_call_before(&[0x48, 0x89, 0xe5, 0x55, 0x48, 0x89, 0xc3]));
        // jmp *%rax (ff e0): /4, not /2
        assert!(!looks_like_call_before(&[0, 0, 0, 0, 0, 0xFF, 0xE0]));
    }
}
