//! Addresses → frames. One long-lived blazesym [`Symbolizer`], fed in batches per module.
//!
//! Each process's memory map is cached when the process is first seen (and re-read when an
//! address falls outside it), and every ELF object is kept open by file descriptor, so stacks of
//! a process that has exited still symbolize, and a container's own files are read through
//! `/proc/PID/map_files`, never through a path the container controls.
//!
//! Objects without DWARF get their separate debug file looked up (by build id and
//! `.gnu_debuglink`, in the target's root and on the host; see [`debug_file`]); code in anonymous
//! memory is named from the process's perf map (`/tmp/perf-PID.map`, see [`perf_map`]).

mod debug_file;
mod elf_info;
mod frames;
mod perf_map;
mod return_address;
mod root;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    fs::File,
    io,
    os::unix::io::AsRawFd,
    path::{Path, PathBuf},
    sync::Arc,
};

use blazesym::symbolize::{
    Input, Symbolizer as Blaze,
    source::{Elf, Source},
};
use log::debug;
use serde::Serialize;

use self::{
    debug_file::{DebugFile, Wanted, DEFAULT_DEBUG_DIRS},
    elf_info::{ElfInfo, SymbolKindAvailable},
    frames::{to_frames, unknown_frame, unmapped_frame},
    perf_map::PerfMap,
    return_address::looks_like_call_before,
    root::RootDir,
};
use memprof_common::runtime::slot_kind;

use crate::{
    report::Frame,
    runtime::{NoRuntimes, RuntimeFrames},
    target::maps::{self, MapEntry},
};

/// The module of frames named from a perf map.
pub const JIT_MODULE: &str = "[jit]";
/// The module of frames at addresses in no mapping (kept only for CFI-unwound stacks).
pub const UNMAPPED_MODULE: &str = "[unmapped]";

/// How the addresses of a stack were obtained.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackOpts {
    /// The first address is the current instruction (a fault or sample point), not a return
    /// address: it is looked up as is instead of `addr - 1`.
    pub first_exact: bool,
    /// The addresses come from a CFI unwinder: every one is a real frame and is kept (named from
    /// a perf map, as `module+0xoffset`, or as `0xADDR` in `[unmapped]`). Without it the stack
    /// ends at the first address outside code (a frame-pointer walk running into garbage).
    pub trust_all: bool,
}

/// How the frames of one object were named.
#[derive(Serialize, Clone, Debug)]
pub struct ModuleSymbols {
    /// The object as the process maps it (or `[jit]`, `[vdso]`, `[anon]`).
    pub module: String,
    /// The best symbols used: `dwarf`, `symtab`, `dynsym`, `none` (or `perf-map` for `[jit]`).
    pub symbols: &'static str,
    /// The separate debug file used, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debug_file: Option<String>,
    /// The object's GNU build id, in hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
}

/// Where an address lies: an object file and the file offset in it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Location {
    module: usize,
    offset: u64,
}

/// One address of a stack, classified.
enum Slot {
    /// In an object: named (through the cache) by blazesym.
    Module(Location),
    /// Named already (perf map, unmapped).
    Ready(Frame),
}

/// Re-reads allowed while symbolizing one stack: each file at most once.
#[derive(Default)]
struct Batch {
    maps_reread: bool,
    perf_map_reread: bool,
}

/// An open ELF object, shared by every process that maps it.
struct Module {
    /// What the process calls it (the path in /proc/PID/maps).
    name: String,
    /// `/proc/self/fd/N` for the open file; None for pseudo-files such as `[vdso]`.
    path: Option<PathBuf>,
    file: Option<File>,
    /// The root of the first process seen mapping it (where its debug files are).
    root: Option<Arc<RootDir>>,
    /// Decided the first time an address in it is symbolized.
    symbols: Option<Symbols>,
    /// Some frame came from it.
    used: bool,
}

/// What a module is symbolized with.
#[derive(Default)]
struct Symbols {
    /// The object's own facts (None when it is no readable ELF file).
    info: Option<ElfInfo>,
    /// Its separate debug file, with the `/proc/self/fd/N` path blazesym opens it by.
    debug: Option<(DebugFile, PathBuf)>,
}

impl Symbols {
    /// Inspects the object `file` (mapped as `name`) and looks for its debug file in `dirs` when
    /// it has no DWARF of its own.
    fn find(name: &str, file: &File, root: Option<&RootDir>, dirs: &[PathBuf]) -> Self {
        let info = match ElfInfo::read(file) {
            Ok(i) => i,
            Err(err) => {
                debug!("cannot inspect {name}: {err}");
                return Self::default();
            }
        };
        let debug = if info.has_debug_info {
            None
        } else {
            debug_file::find(&Wanted { path: name, file, info: &info, root }, dirs)
                .map(|d| {
                    let p = fd_path(&d.file);
                    (d, p)
                })
        };
        Self { info: Some(info), debug }
    }

    /// The best symbols available for the module.
    fn kind(&self) -> SymbolKindAvailable {
        let own = self.info.as_ref().map_or(SymbolKindAvailable::None, ElfInfo::best_symbols);
        let debug = self.debug.as_ref().map_or(SymbolKindAvailable::None, |(d, _)| d.info.best_symbols());
        own.min(debug)
    }
}

/// What is known of a process beyond its memory map; kept after it exits.
struct ProcInfo {
    /// Its root directory, held open.
    root: Option<Arc<RootDir>>,
    /// Its pid in its own pid namespace (names its perf map).
    ns_pid: u32,
    perf_map: PerfMap,
}

impl ProcInfo {
    fn open(pid: u32) -> Self {
        let root = match RootDir::open(pid) {
            Ok(r) => Some(Arc::new(r)),
            Err(err) => {
                debug!("cannot open the root of pid {pid}: {err}");
                None
            }
        };
        Self { root, ns_pid: root::ns_pid(pid).unwrap_or(pid), perf_map: PerfMap::default() }
    }

    /// Reads what was appended to the perf map since the last time.
    fn refresh_perf_map(&mut self) {
        let Some(root) = &self.root else { return };
        let path = PathBuf::from(format!("/tmp/perf-{}.map", self.ns_pid));
        match root.open_file(&path) {
            Ok(f) => {
                if let Err(err) = self.perf_map.update_from(&f) {
                    debug!("reading {}: {err}", root.display(&path));
                }
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => debug!("opening {}: {err}", root.display(&path)),
        }
    }
}

/// Address → frames, for processes alive or dead.
pub struct Symbolizer {
    blaze: Blaze,
    maps: HashMap<u32, Vec<MapEntry>>,
    procs: HashMap<u32, ProcInfo>,
    modules: Vec<Module>,
    module_ids: HashMap<(u32, u32, u64, String), usize>,
    cache: HashMap<(usize, u64), Vec<Frame>>,
    /// Searched for separate debug files, in each target's root and on the host.
    debug_dirs: Vec<PathBuf>,
    /// Some frame came from a perf map.
    jit_used: bool,
    /// Modules of runtime frames named (`[python]`).
    runtime_modules: std::collections::BTreeSet<String>,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbolizer {
    /// A symbolizer searching the default debug directories (`/usr/lib/debug`, `/lib/debug`).
    pub fn new() -> Self {
        Self::with_debug_dirs(DEFAULT_DEBUG_DIRS.iter().map(PathBuf::from).collect())
    }

    /// A symbolizer searching `debug_dirs` (absolute paths, each looked up inside the target's
    /// root and on the host) for separate debug files.
    pub fn with_debug_dirs(debug_dirs: Vec<PathBuf>) -> Self {
        Self {
            blaze: Blaze::builder()
                .enable_code_info(true)
                .enable_inlined_fns(true)
                .enable_demangling(true)
                // Debug files are found here (see `Symbols::find`), not by blazesym: it would
                // search host paths only, and give up on the object when a file of the
                // linked name has a wrong checksum.
                .set_debug_dirs(Some(Vec::<PathBuf>::new()))
                .build(),
            maps: HashMap::new(),
            procs: HashMap::new(),
            modules: Vec::new(),
            module_ids: HashMap::new(),
            cache: HashMap::new(),
            debug_dirs,
            jit_used: false,
            runtime_modules: Default::default(),
        }
    }

    /// Reads (or re-reads) a process's memory map and opens the objects it maps. Call it when a
    /// process is first seen and before its stacks are symbolized.
    pub fn observe_process(&mut self, pid: u32) {
        let Ok(entries) = maps::read_maps(pid) else { return };
        self.procs.entry(pid).or_insert_with(|| ProcInfo::open(pid));
        for e in entries.iter().filter(|e| e.is_exec()) {
            self.module_for(pid, e);
        }
        self.maps.insert(pid, entries);
    }

    /// Forgets a process's map, root and perf map (its modules stay open for stacks already
    /// collected).
    pub fn forget_process(&mut self, pid: u32) {
        self.maps.remove(&pid);
        self.procs.remove(&pid);
    }

    /// How each object that produced a frame was symbolized, sorted by name.
    pub fn module_sources(&self) -> Vec<ModuleSymbols> {
        let mut out: Vec<ModuleSymbols> = self.modules.iter().filter(|m| m.used).map(Module::sources).collect();
        if self.jit_used {
            out.push(ModuleSymbols {
                module: JIT_MODULE.to_string(),
                symbols: "perf-map",
                debug_file: None,
                build_id: None,
            });
        }
        for m in &self.runtime_modules {
            out.push(ModuleSymbols { module: m.clone(), symbols: "runtime", debug_file: None, build_id: None });
        }
        out.sort_by(|a, b| a.module.cmp(&b.module));
        out
    }

    fn module_for(&mut self, pid: u32, e: &MapEntry) -> usize {
        let name = e.path.clone().unwrap_or_else(|| "[anon]".to_string());
        let key = (e.dev_major, e.dev_minor, e.inode, name.clone());
        if let Some(&id) = self.module_ids.get(&key) {
            return id;
        }
        let file = if e.is_file_backed() {
            File::open(maps::map_files_path(pid, e))
                .map_err(|err| debug!("cannot open {name} of pid {pid}: {err}"))
                .ok()
        } else {
            None
        };
        let root = self.procs.get(&pid).and_then(|p| p.root.clone());
        let id = self.add_module(name, file, root);
        self.module_ids.insert(key, id);
        id
    }

    /// Registers an object (open, or None for a pseudo-file) and returns its id.
    fn add_module(&mut self, name: String, file: Option<File>, root: Option<Arc<RootDir>>) -> usize {
        let path = file.as_ref().map(fd_path);
        self.modules.push(Module { name, path, file, root, symbols: None, used: false });
        self.modules.len() - 1
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
        let Some(file) = self.modules[loc.module].file.as_ref() else { return false };
        let Some(start) = loc.offset.checked_sub(7) else { return false };
        let mut b = [0u8; 7];
        if std::os::unix::fs::FileExt::read_exact_at(file, &mut b, start).is_err() {
            return false;
        }
        looks_like_call_before(&b)
    }

    /// Symbolizes a user stack (leaf first, as the kernel reports it) of `pid` and returns the
    /// frames root → leaf. Return addresses are looked up as `addr - 1` (the call instruction
    /// itself); so is the first address unless `opts.first_exact`. Without `opts.trust_all` the
    /// walk stops at the first address outside code (code in a perf map counts as code).
    pub fn symbolize_stack(&mut self, pid: u32, ips_leaf_first: &[u64], opts: StackOpts) -> Vec<Frame> {
        self.symbolize_stack_with(pid, ips_leaf_first, opts, &mut NoRuntimes)
    }

    /// [`Self::symbolize_stack`] for stacks with runtime frames (two slots each, see
    /// `memprof_common::runtime`), which `runtimes` names.
    pub fn symbolize_stack_with(
        &mut self,
        pid: u32,
        ips_leaf_first: &[u64],
        opts: StackOpts,
        runtimes: &mut dyn RuntimeFrames,
    ) -> Vec<Frame> {
        let mut batch = Batch::default();
        let mut slots = Vec::with_capacity(ips_leaf_first.len());
        let mut i = 0;
        while i < ips_leaf_first.len() {
            let ip = ips_leaf_first[i];
            if slot_kind(ip).is_some() {
                let detail = ips_leaf_first.get(i + 1).copied().unwrap_or(0);
                // Root → leaf from the runtime; slots are leaf first.
                for f in runtimes.frames(pid, ip, detail).into_iter().rev() {
                    self.runtime_modules.insert(f.module.clone());
                    slots.push(Slot::Ready(f));
                }
                i += 2;
                continue;
            }
            let exact = i == 0 && opts.first_exact;
            match self.classify(pid, ip, exact, opts.trust_all, &mut batch) {
                Some(s) => slots.push(s),
                None => break,
            }
            i += 1;
        }
        let locs: Vec<Location> = slots
            .iter()
            .filter_map(|s| match s {
                Slot::Module(l) => Some(l.clone()),
                Slot::Ready(_) => None,
            })
            .collect();
        self.resolve(&locs);
        let mut frames = Vec::new();
        for s in slots.into_iter().rev() {
            match s {
                Slot::Ready(f) => frames.push(f),
                Slot::Module(l) => {
                    self.modules[l.module].used = true;
                    if let Some(f) = self.cache.get(&(l.module, l.offset)) {
                        frames.extend(f.iter().cloned());
                    }
                }
            }
        }
        frames
    }

    /// What `ip` of `pid` is (looked up as `ip - 1` unless `exact`): JIT code from the perf map,
    /// code in an executable mapping (named through blazesym), or, with `trust_all`, other
    /// mapped memory (`name+0xoffset`) or an unmapped address (shown as `ip` itself). None where
    /// a stack without `trust_all` ends.
    fn classify(&mut self, pid: u32, ip: u64, exact: bool, trust_all: bool, batch: &mut Batch) -> Option<Slot> {
        let addr = if exact { ip } else { ip.saturating_sub(1) };
        let entry = self.mapping_at(pid, addr, batch);
        let jit_candidate = match &entry {
            Some(e) => may_be_jit(e) && (trust_all || e.is_exec()),
            None => addr >= MIN_JIT_ADDR,
        };
        if jit_candidate {
            if let Some(f) = self.jit_frame(pid, addr, batch) {
                return Some(Slot::Ready(f));
            }
        }
        match entry {
            Some(e) if e.is_exec() => {
                let module = self.module_for(pid, &e);
                Some(Slot::Module(Location { module, offset: addr - e.start + e.offset }))
            }
            Some(e) if trust_all => {
                let name = e.path.as_deref().unwrap_or("[anon]");
                Some(Slot::Ready(unknown_frame(name, addr - e.start + e.offset)))
            }
            None if trust_all => Some(Slot::Ready(unmapped_frame(ip))),
            _ => None,
        }
    }

    /// The mapping of `pid` holding `addr`. When there is none, or it is not executable, the
    /// map is re-read (once per stack) in case it changed since.
    fn mapping_at(&mut self, pid: u32, addr: u64, batch: &mut Batch) -> Option<MapEntry> {
        let find = |maps: &HashMap<u32, Vec<MapEntry>>| maps.get(&pid).and_then(|m| maps::lookup(m, addr)).cloned();
        match find(&self.maps) {
            Some(e) if e.is_exec() => Some(e),
            found if batch.maps_reread || !crate::target::procs::pid_alive(pid) => found,
            _ => {
                batch.maps_reread = true;
                self.observe_process(pid);
                find(&self.maps)
            }
        }
    }

    /// The frame of JIT code at `addr` from the perf map of `pid`, re-reading the map (once per
    /// stack) when it does not know the address.
    fn jit_frame(&mut self, pid: u32, addr: u64, batch: &mut Batch) -> Option<Frame> {
        let p = self.procs.entry(pid).or_insert_with(|| ProcInfo::open(pid));
        if p.perf_map.lookup(addr).is_none() && !batch.perf_map_reread {
            batch.perf_map_reread = true;
            p.refresh_perf_map();
        }
        let name = p.perf_map.lookup(addr)?;
        self.jit_used = true;
        Some(Frame {
            function: name.to_string(),
            file: None,
            line: None,
            module: JIT_MODULE.to_string(),
            offset: addr,
            inlined: false,
        })
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
            self.prepare(module);
            let results = self.symbolize_offsets(module, &offsets);
            let name = &self.modules[module].name;
            for (off, frames) in offsets.iter().zip(results) {
                let frames = frames.unwrap_or_else(|| vec![unknown_frame(name, *off)]);
                self.cache.insert((module, *off), frames);
            }
        }
    }

    /// Decides how `module` is symbolized (its debug file), once.
    fn prepare(&mut self, module: usize) {
        let m = &self.modules[module];
        if m.symbols.is_some() {
            return;
        }
        let symbols = match &m.file {
            Some(f) => Symbols::find(&m.name, f, m.root.as_deref(), &self.debug_dirs),
            None => Symbols::default(),
        };
        self.modules[module].symbols = Some(symbols);
    }

    /// Frames for file offsets of `module` (one entry per offset, None where unknown): from the
    /// debug file if there is one, else from the object itself (its DWARF, then its ELF symbols
    /// alone should the DWARF be unusable).
    fn symbolize_offsets(&self, module: usize, offsets: &[u64]) -> Vec<Option<Vec<Frame>>> {
        let m = &self.modules[module];
        let none = || vec![None; offsets.len()];
        let (Some(path), Some(symbols)) = (&m.path, &m.symbols) else { return none() };
        if let (Some(info), Some((_, debug_path))) = (&symbols.info, &symbols.debug) {
            if let Some(r) = self.symbolize_virtual(&m.name, debug_path, info, offsets) {
                return r;
            }
        }
        let dwarf = symbols.info.as_ref().is_none_or(|i| i.has_debug_info);
        let attempts = if dwarf { &[true, false][..] } else { &[false][..] };
        for &debug_syms in attempts {
            let src = Source::Elf(Elf { debug_syms, ..Elf::new(path) });
            match self.blaze.symbolize(&src, Input::FileOffset(offsets)) {
                Ok(r) => return r.iter().zip(offsets).map(|(s, off)| to_frames(&m.name, *off, s)).collect(),
                Err(err) => debug!("symbolizing in {} failed: {err:#}", m.name),
            }
        }
        none()
    }

    /// Symbolizes file offsets of the object `info` describes in its debug file at `debug_path`,
    /// through their link-time addresses; None if blazesym fails on the debug file.
    fn symbolize_virtual(
        &self,
        name: &str,
        debug_path: &Path,
        info: &ElfInfo,
        offsets: &[u64],
    ) -> Option<Vec<Option<Vec<Frame>>>> {
        let vaddrs: Vec<Option<u64>> = offsets.iter().map(|&o| info.file_offset_to_vaddr(o)).collect();
        let known: Vec<u64> = vaddrs.iter().flatten().copied().collect();
        let src = Source::Elf(Elf::new(debug_path));
        let syms = match self.blaze.symbolize(&src, Input::VirtOffset(&known)) {
            Ok(s) => s,
            Err(err) => {
                debug!("symbolizing {name} with {} failed: {err:#}", debug_path.display());
                return None;
            }
        };
        let mut syms = syms.iter();
        Some(
            vaddrs
                .iter()
                .zip(offsets)
                .map(|(v, off)| v.and_then(|_| syms.next()).and_then(|s| to_frames(name, *off, s)))
                .collect(),
        )
    }
}

impl Module {
    /// Its entry in [`Symbolizer::module_sources`].
    fn sources(&self) -> ModuleSymbols {
        let symbols = self.symbols.as_ref();
        ModuleSymbols {
            module: self.name.clone(),
            symbols: symbols.map_or(SymbolKindAvailable::None, Symbols::kind).as_str(),
            debug_file: symbols.and_then(|s| s.debug.as_ref()).map(|(d, _)| d.shown.clone()),
            build_id: symbols.and_then(|s| s.info.as_ref()).and_then(ElfInfo::build_id_hex),
        }
    }
}

/// Addresses below this are never looked up in a perf map (null pointers and small integers
/// that a frame-pointer walk runs into).
const MIN_JIT_ADDR: u64 = 0x10000;

/// Whether code in mapping `e` may be JIT code named by a perf map: anonymous memory, or a
/// memfd (JITs that map their code twice).
fn may_be_jit(e: &MapEntry) -> bool {
    match e.path.as_deref() {
        None => true,
        Some(p) if p.starts_with("/memfd:") => true,
        Some(p) => !e.is_file_backed() && !matches!(p, "[vdso]" | "[vsyscall]" | "[vvar]" | "[uprobes]"),
    }
}

/// `/proc/self/fd/N` for an open file (a path blazesym can open, whatever its real name).
fn fd_path(f: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()))
}

