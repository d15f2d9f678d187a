//! Loading the BPF object and placing probes.
//!
//! Uprobes are attached per process (a uprobe_multi link per object and program on kernels 6.6+,
//! else a perf event per function; both filtered on the process), so processes outside the
//! target never trap on a shared library such as the host's libc. Each process gets probes on
//! every ELF object it maps that defines allocator functions (libc, jemalloc, the executable
//! itself when statically linked), reached through `/proc/PID/map_files`, so a container's own
//! libc is probed, not the host's.
//!
//! Order matters for exactness: `free` first, then the return probes, then the entry probes, so
//! no block can be recorded whose free would go unseen, and no entry lacks its return probe.

pub mod alloc_code;
pub mod elf;
pub mod entry_placement;
mod links;
mod load;
pub mod multi;
pub mod placement;

use std::collections::{BTreeSet, HashMap};

use aya::{
    Ebpf,
    programs::{UProbe, uprobe::UProbeAttachLocation, uprobe::UProbeScope},
};
use log::{debug, info, warn};

use crate::{
    report::ProbeInfo,
    runtime::RuntimeProbe,
    target::maps::{self, MapEntry},
};
use elf::{AllocSymbol, ElfInfo, scan_allocator_symbols};
use links::ProbeLink;
use placement::Placement;

/// The compiled kernel side, built by build.rs with aya-build.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/memprof"));

/// Which threads the kernel side records.
#[derive(Clone, Copy, Debug)]
pub enum Scope {
    /// A cgroup v2 (id = inode of its directory, level = depth below the root) and descendants.
    Cgroup { id: u64, level: u32 },
    /// One process.
    Process { tgid: u32 },
}

/// Map sizes and recording settings, set at load time.
#[derive(Clone, Copy, Debug)]
pub struct MapSizes {
    pub allocs: u32,
    pub stacks: u32,
    pub stack_totals: u32,
    /// Mean bytes between samples; 0: every allocation.
    pub sample_bytes: u64,
    /// `--mode rss`: page faults instead of uprobes.
    pub rss: bool,
    /// `--unwind dwarf`: the CFI walk instead of `bpf_get_stackid`.
    pub dwarf: bool,
    /// Capacity of the CFI row array.
    pub unwind_rows: u32,
    /// Offset of `thread.fsbase` in the kernel's `task_struct` (runtime walkers read thread
    /// pointers); 0: unknown (runtime frames off).
    pub task_fsbase: u64,
    /// Use uprobe_multi links where the kernel has them (else one perf event per probe).
    pub uprobe_multi: bool,
    /// Attach allocation functions as uprobe sessions where the kernel has them (with
    /// uprobe_multi links).
    pub uprobe_session: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("failed to load the BPF programs: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("failed to load BPF program {name}: {source}")]
    Program { name: String, source: aya::programs::ProgramError },
    #[error("failed to attach tracepoint {name}: {source}")]
    Tracepoint { name: String, source: aya::programs::ProgramError },
}

/// Entry programs by canonical function name; every allocating function shares one return
/// program.
const ENTRY_PROGRAMS: &[(&str, &str)] = &[
    ("malloc", "malloc_enter"),
    ("calloc", "calloc_enter"),
    ("realloc", "realloc_enter"),
    ("reallocarray", "reallocarray_enter"),
    ("posix_memalign", "posix_memalign_enter"),
    ("aligned_alloc", "aligned_alloc_enter"),
    ("memalign", "memalign_enter"),
    ("valloc", "valloc_enter"),
    ("pvalloc", "pvalloc_enter"),
    ("free", "free_enter"),
    // jemalloc's extended API and C23's sized frees behave like their classic twins.
    ("mallocx", "malloc_enter"),
    ("rallocx", "realloc_enter"),
    ("sdallocx", "free_enter"),
    ("dallocx", "free_enter"),
    ("free_sized", "free_enter"),
    ("free_aligned_sized", "free_enter"),
];

/// The entry program for a canonical allocator function.
fn entry_program(func: &str) -> Option<&'static str> {
    ENTRY_PROGRAMS.iter().find(|(f, _)| *f == func).map(|(_, p)| *p)
}

fn is_free_like(func: &str) -> bool {
    entry_program(func) == Some("free_enter")
}

/// The allocation functions' one program with uprobe sessions (kernel 6.13+), at entry and
/// return, told apart by the attach cookie: their kind (see `memprof-ebpf/src/alloc.rs`).
const SESSION_PROGRAM: &str = "alloc_session";

/// The kind the session program gets as a cookie for an allocation entry program's functions.
fn session_cookie(entry_prog: &str) -> Option<u64> {
    use memprof_common::AllocKind as K;
    let kind = match entry_prog {
        "malloc_enter" => K::Malloc,
        "calloc_enter" => K::Calloc,
        "realloc_enter" => K::Realloc,
        "reallocarray_enter" => K::Reallocarray,
        "posix_memalign_enter" => K::PosixMemalign,
        "aligned_alloc_enter" => K::AlignedAlloc,
        "memalign_enter" => K::Memalign,
        "valloc_enter" => K::Valloc,
        "pvalloc_enter" => K::Pvalloc,
        "pymalloc_malloc_enter" => K::PyMalloc,
        "pymalloc_calloc_enter" => K::PyCalloc,
        "pymalloc_realloc_enter" => K::PyRealloc,
        _ => return None,
    };
    Some(kind as u64)
}

const RETURN_PROGRAM: &str = "alloc_return";
/// Entry programs runtimes ask for (see `crate::runtime::RuntimeProbe`).
const RUNTIME_PROGRAMS: &[&str] =
    &["pymalloc_malloc_enter", "pymalloc_calloc_enter", "pymalloc_realloc_enter", "pymalloc_free_enter"];
/// (category, event, program, required).
const TRACEPOINTS: &[(&str, &str, &str, bool)] = &[
    ("syscalls", "sys_enter_mmap", "sys_enter_mmap", true),
    ("syscalls", "sys_exit_mmap", "sys_exit_mmap", true),
    ("syscalls", "sys_enter_munmap", "sys_enter_munmap", true),
    ("syscalls", "sys_exit_munmap", "sys_exit_munmap", true),
    ("syscalls", "sys_enter_mremap", "sys_enter_mremap", true),
    ("syscalls", "sys_exit_mremap", "sys_exit_mremap", true),
    ("syscalls", "sys_enter_mprotect", "sys_enter_mprotect", true),
    ("syscalls", "sys_exit_mprotect", "sys_exit_mprotect", true),
    ("syscalls", "sys_enter_madvise", "sys_enter_madvise", true),
    ("syscalls", "sys_exit_madvise", "sys_exit_madvise", true),
    ("sched", "sched_process_exec", "sched_process_exec", false),
    ("oom", "mark_victim", "oom_mark_victim", false),
];

/// `--mode rss` (the page faults also when a runtime counts its heap's pages, see
/// [`Probes::attach_page_faults`]).
const RSS_TRACEPOINTS: &[(&str, &str, &str, bool)] = &[
    ("exceptions", "page_fault_user", "page_fault_user", true),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PageFaults {
    No,
    Attached,
    /// Could not be attached (said once).
    Failed,
}

/// One (file, process) pair we placed probes for.
type ObjectKey = (u32, u32, u64);

/// The loaded BPF object and every probe placed in it.
pub struct Probes {
    pub bpf: Ebpf,
    /// Parsed allocator symbols per object (dev major, dev minor, inode).
    elf_cache: HashMap<ObjectKey, Option<ElfInfo>>,
    /// Objects already probed, per process.
    attached: HashMap<u32, BTreeSet<ObjectKey>>,
    /// Links per process (owned here, not by the programs, so that they can be released
    /// concurrently at the end: see [`Probes::release`]).
    links: HashMap<u32, Vec<ProbeLink>>,
    /// Links of exited processes, kept until the end, and the tracepoints' links.
    retired: Vec<ProbeLink>,
    /// Uprobes are attached as uprobe_multi links (kernel 6.6+).
    pub multi: bool,
    /// Allocation functions are attached as uprobe sessions (kernel 6.13+): their entry programs
    /// also run at the return, which needs no return program.
    pub sessions: bool,
    /// What was placed (or failed), for the summary.
    pub placed: Vec<ProbeInfo>,
    /// Uprobe attach failures.
    pub attach_failures: u64,
    /// Probes not placed because their process had exited meanwhile (routine, not failures).
    pub attach_gone: u64,
    /// Optional tracepoints that could not be attached (exec, OOM victim).
    pub optional_failures: Vec<String>,
    /// `--mode rss`: no uprobes at all.
    rss: bool,
    /// The page-fault tracepoint (`--mode rss`, or runtime heaps counted by page).
    page_faults: PageFaults,
    /// Move free-like probes past a leading NULL check onto an emulated instruction
    /// (`placement.rs`); off with `--no-probe-placement`.
    probe_placement: bool,
    /// The placement chosen per object and free-like function (decided and logged once).
    placements: HashMap<(ObjectKey, &'static str), Placement>,
    /// Runtime probes placed: (pid, address, program).
    runtime_attached: std::collections::HashSet<(u32, u64, &'static str)>,
    /// Probe offsets of runtime functions: (object, function file offset) → bytes past entry.
    runtime_placements: HashMap<(ObjectKey, u64), u64>,
}


impl Probes {
    /// Whether free-like probes may be moved off the function entry (default: yes).
    pub fn set_probe_placement(&mut self, on: bool) {
        self.probe_placement = on;
    }

    /// The file offset of a free-like function's probe: the entry, or (with probe placement)
    /// past its NULL check onto an emulated instruction. Decided once per object.
    fn free_probe_offset(&mut self, e: &MapEntry, path: &std::path::Path, sym: &AllocSymbol) -> u64 {
        if !self.probe_placement {
            return sym.file_offset;
        }
        let key = ((e.dev_major, e.dev_minor, e.inode), sym.name);
        let p = self.placements.entry(key).or_insert_with(|| {
            let p = match placement::read_code(path, sym.file_offset, placement::code_len(sym.size)) {
                Ok(code) => placement::place_free_probe(&code, sym.size),
                Err(err) => Placement { offset: 0, reason: format!("cannot read its code: {err}") },
            };
            if p.offset > 0 {
                info!("{}: {}: probe at +{} ({})", display(e), sym.name, p.offset, p.reason);
            } else {
                debug!("{}: {}: probe at the entry ({})", display(e), sym.name, p.reason);
            }
            p
        });
        sym.file_offset + p.offset
    }

    /// Places probes on every allocator object `pid` maps that it does not have probes on yet.
    /// Returns the number of probes placed.
    pub fn attach_process(&mut self, pid: u32) -> usize {
        if self.rss {
            return 0;
        }
        let Ok(entries) = maps::read_maps(pid) else { return 0 };
        let mut placed = 0;
        let mut seen = BTreeSet::new();
        for e in entries.iter().filter(|e| e.is_exec() && e.is_file_backed()) {
            let key = (e.dev_major, e.dev_minor, e.inode);
            if !seen.insert(key) || self.attached.get(&pid).is_some_and(|s| s.contains(&key)) {
                continue;
            }
            let path = maps::map_files_path(pid, e);
            let info = self
                .elf_cache
                .entry(key)
                .or_insert_with(|| match scan_allocator_symbols(&path) {
                    Ok(info) => Some(info),
                    Err(err) => {
                        debug!("{}: not scanned: {err}", display(e));
                        None
                    }
                })
                .clone();
            self.attached.entry(pid).or_default().insert(key);
            let Some(info) = info else { continue };
            if info.symbols.is_empty() {
                if looks_like_libc(e) {
                    warn!(
                        "{}: a C library without allocator symbols{}: its allocations cannot be seen",
                        display(e),
                        if info.stripped { " (stripped)" } else { "" }
                    );
                }
                continue;
            }
            let has = |f: &str| info.symbols.iter().any(|s| s.name == f);
            if has("malloc") != has("free") {
                warn!(
                    "{}: defines {} but not {}: expect {}",
                    display(e),
                    if has("malloc") { "malloc" } else { "free" },
                    if has("malloc") { "free" } else { "malloc" },
                    if has("malloc") { "frees to be missed (false leaks)" } else { "no allocations from it" }
                );
            }
            placed += self.attach_object(pid, e, &info);
        }
        placed
    }

    fn attach_object(&mut self, pid: u32, e: &MapEntry, info: &ElfInfo) -> usize {
        let path = maps::map_files_path(pid, e);
        let Some(pid_nz) = std::num::NonZeroU32::new(pid) else { return 0 };
        let mut placed = 0;
        // free first, then returns, then entries (see the module documentation).
        let mut plan: Vec<(&'static str, &'static str, u64)> = Vec::new();
        for sym in info.symbols.iter().filter(|s| is_free_like(s.name)) {
            plan.push((sym.name, "free_enter", self.free_probe_offset(e, &path, sym)));
        }
        if !self.sessions {
            for sym in info.symbols.iter().filter(|s| !is_free_like(s.name)) {
                plan.push((sym.name, RETURN_PROGRAM, sym.file_offset));
            }
        }
        for sym in info.symbols.iter().filter(|s| !is_free_like(s.name)) {
            if let Some(prog) = entry_program(sym.name) {
                plan.push((sym.name, prog, sym.file_offset));
            }
        }
        let object = e.path.clone().unwrap_or_default();
        if self.multi {
            // One link per program, in the plan's order; with sessions, the allocation entries
            // all go to the session program, each with its kind as the cookie.
            let mut groups: Vec<(&'static str, Vec<(&str, u64)>, Vec<u64>)> = Vec::new();
            for (func, prog_name, offset) in plan {
                let (prog_name, cookie) = match session_cookie(prog_name).filter(|_| self.sessions) {
                    Some(c) => (SESSION_PROGRAM, Some(c)),
                    None => (prog_name, None),
                };
                let i = match groups.iter().position(|g| g.0 == prog_name) {
                    Some(i) => i,
                    None => {
                        groups.push((prog_name, Vec::new(), Vec::new()));
                        groups.len() - 1
                    }
                };
                groups[i].1.push((func, offset));
                groups[i].2.extend(cookie);
            }
            for (prog_name, probes, cookies) in groups {
                placed += self.attach_multi(pid_nz, prog_name, &path, &probes, &cookies, &object);
            }
        } else {
            for (func, prog_name, offset) in plan {
                placed += usize::from(self.attach_probe(pid_nz, prog_name, &path, offset, object.clone(), func));
            }
        }
        if placed > 0 {
            let missing: Vec<&str> = ["malloc", "calloc", "realloc", "free"]
                .into_iter()
                .filter(|f| !info.symbols.iter().any(|s| s.name == *f))
                .collect();
            info!(
                "pid {pid}: probed {} ({}){}",
                display(e),
                info.symbols
                    .iter()
                    .map(|s| s.symbol.split('@').next().unwrap_or(&s.symbol))
                    .collect::<Vec<_>>()
                    .join(", "),
                if missing.is_empty() { String::new() } else { format!("; not defined there: {}", missing.join(", ")) }
            );
        }
        placed
    }

    /// Attaches the probes runtimes asked for (CPython's object allocator functions, found in
    /// the process's memory), each once per process: frees first, then return probes, then
    /// entries, as for the C allocators. Returns the number placed.
    pub fn attach_runtime(&mut self, probes: &[RuntimeProbe]) -> usize {
        if self.rss || probes.is_empty() {
            return 0;
        }
        let mut plan: Vec<(&RuntimeProbe, &'static str)> = Vec::new();
        for p in probes.iter().filter(|p| p.free_like) {
            plan.push((p, p.program));
        }
        if !self.sessions {
            for p in probes.iter().filter(|p| !p.free_like) {
                plan.push((p, RETURN_PROGRAM));
            }
        }
        for p in probes.iter().filter(|p| !p.free_like) {
            plan.push((p, p.program));
        }
        let mut placed = 0;
        let mut maps_by_pid: HashMap<u32, Vec<MapEntry>> = HashMap::new();
        for (p, prog_name) in plan {
            if self.runtime_attached.contains(&(p.pid, p.addr, prog_name)) {
                continue;
            }
            let entries = maps_by_pid.entry(p.pid).or_insert_with(|| maps::read_maps(p.pid).unwrap_or_default());
            let Some(e) = maps::lookup(entries, p.addr).filter(|e| e.is_exec() && e.is_file_backed()).cloned() else {
                warn!("pid {}: {} at {:#x} is not in a mapped file; not probed", p.pid, p.function, p.addr);
                continue;
            };
            let Some(pid_nz) = std::num::NonZeroU32::new(p.pid) else { continue };
            self.runtime_attached.insert((p.pid, p.addr, prog_name));
            let path = maps::map_files_path(p.pid, &e);
            let offset = p.addr - e.start + e.offset + self.runtime_probe_offset(&e, &path, p);
            let object = e.path.clone().unwrap_or_default();
            placed += match session_cookie(prog_name).filter(|_| self.sessions) {
                Some(cookie) => {
                    self.attach_multi(pid_nz, SESSION_PROGRAM, &path, &[(&p.function, offset)], &[cookie], &object)
                }
                None => usize::from(self.attach_probe(pid_nz, prog_name, &path, offset, object, &p.function)),
            };
        }
        placed
    }

    /// Attaches one program at several offsets of one object for one process, as one
    /// uprobe_multi link, and records each probe (or the failure) for the summary. Returns the
    /// number of probes placed.
    fn attach_multi(
        &mut self,
        pid: std::num::NonZeroU32,
        prog_name: &'static str,
        path: &std::path::Path,
        probes: &[(&str, u64)],
        cookies: &[u64],
        object: &str,
    ) -> usize {
        let offsets: Vec<u64> = probes.iter().map(|p| p.1).collect();
        let result = program::<UProbe>(&mut self.bpf, prog_name).map_err(|e| e.to_string()).and_then(|prog| {
            let fd = prog.fd().map_err(|e| e.to_string())?;
            let fd = std::os::fd::AsFd::as_fd(fd);
            let kind = if prog_name == RETURN_PROGRAM {
                multi::Kind::Return
            } else if prog_name == SESSION_PROGRAM {
                multi::Kind::Session
            } else {
                multi::Kind::Entry
            };
            multi::attach(fd, path, &offsets, cookies, pid.get(), kind).map_err(|e| e.to_string())
        });
        match result {
            Ok(link) => {
                self.links.entry(pid.get()).or_default().push(ProbeLink::Multi(link));
                for &(function, offset) in probes {
                    self.record_placed(object, function, offset);
                }
                probes.len()
            }
            Err(err) => {
                self.attach_failed(pid, prog_name, object, probes, err);
                0
            }
        }
    }

    fn record_placed(&mut self, object: &str, function: &str, offset: u64) {
        if !self.placed.iter().any(|x| x.object == object && x.function == function && x.offset == offset) {
            self.placed.push(ProbeInfo {
                object: object.into(),
                function: function.into(),
                offset,
                attached: true,
                error: None,
            });
        }
    }

    /// A failed attach: routine when the process has exited meanwhile (counted, not said one
    /// by one), else a warning and a failure in the summary.
    fn attach_failed(
        &mut self,
        pid: std::num::NonZeroU32,
        prog_name: &str,
        object: &str,
        probes: &[(&str, u64)],
        err: String,
    ) {
        let names: Vec<&str> = probes.iter().map(|p| p.0).collect();
        if !crate::target::procs::pid_alive(pid.get()) {
            self.attach_gone += probes.len() as u64;
            debug!("{prog_name} not attached to {} in {object}: pid {pid} exited ({err})", names.join(", "));
            return;
        }
        self.attach_failures += probes.len() as u64;
        warn!("failed to attach {prog_name} to {} in {object} (pid {pid}): {err}", names.join(", "));
        for &(function, offset) in probes {
            self.placed.push(ProbeInfo {
                object: object.into(),
                function: function.into(),
                offset,
                attached: false,
                error: Some(err.clone()),
            });
        }
    }

    /// Attaches one uprobe program at a file offset for one process and records it (or its
    /// failure) for the summary. True when it was placed.
    fn attach_probe(
        &mut self,
        pid: std::num::NonZeroU32,
        prog_name: &'static str,
        path: &std::path::Path,
        offset: u64,
        object: String,
        function: &str,
    ) -> bool {
        if self.multi {
            return self.attach_multi(pid, prog_name, path, &[(function, offset)], &[], &object) == 1;
        }
        let result = program::<UProbe>(&mut self.bpf, prog_name).map_err(|e| e.to_string()).and_then(|prog| {
            let id = prog
                .attach(UProbeAttachLocation::AbsoluteOffset(offset), path, UProbeScope::OneProcess(pid))
                .map_err(|e| format!("{e}"))?;
            prog.take_link(id).map_err(|e| format!("{e}"))
        });
        match result {
            Ok(link) => {
                self.links.entry(pid.get()).or_default().push(ProbeLink::Perf(link));
                self.record_placed(&object, function, offset);
                true
            }
            Err(err) => {
                self.attach_failed(pid, prog_name, &object, &[(function, offset)], err);
                false
            }
        }
    }

    /// How far past its entry a runtime function's probes go (see `entry_placement.rs`): the
    /// entry and return probes of an allocation function share the offset. Decided once per
    /// object and function.
    fn runtime_probe_offset(&mut self, e: &MapEntry, path: &std::path::Path, p: &RuntimeProbe) -> u64 {
        if !self.probe_placement {
            return 0;
        }
        let key = ((e.dev_major, e.dev_minor, e.inode), p.addr - e.start + e.offset);
        if let Some(&off) = self.runtime_placements.get(&key) {
            return off;
        }
        let regs = |idx: &[usize]| idx.iter().filter_map(|&i| entry_placement::ARG_REGS.get(i).copied()).collect();
        let rules = entry_placement::EntryRules {
            preserve: regs(p.args),
            null_check: if p.free_like { p.args.first().and_then(|&i| entry_placement::ARG_REGS.get(i).copied()) } else { None },
        };
        let placed = match placement::read_code(path, key.1, placement::code_len(p.size)) {
            Ok(code) => entry_placement::place_entry_probe(&code, p.size, &rules),
            Err(err) => Placement { offset: 0, reason: format!("cannot read its code: {err}") },
        };
        info!("{}: {}: probes at +{} ({})", display(e), p.function, placed.offset, placed.reason);
        self.runtime_placements.insert(key, placed.offset);
        placed.offset
    }

    /// Forgets which objects an exited process had probes on, so a new process that reuses
    /// its pid is probed afresh. Its uprobe_multi links are released now, in the background (a
    /// day of process churn then holds no file descriptors or kernel state for the dead). Perf
    /// events stay attached until the end: on kernel 6.18, closing uprobe perf events and
    /// attaching new ones at the same offsets shortly after left the new ones disarmed (see
    /// `run/processes.rs`); they filter on the dead task and never fire.
    pub fn forget_process(&mut self, pid: u32) {
        self.attached.remove(&pid);
        self.runtime_attached.retain(|(p, _, _)| *p != pid);
        let Some(links) = self.links.remove(&pid) else { return };
        let (multi, perf): (Vec<ProbeLink>, Vec<ProbeLink>) =
            links.into_iter().partition(|l| matches!(l, ProbeLink::Multi(_)));
        self.retired.extend(perf);
        if let Err(kept) = links::release_in_background(multi) {
            self.retired.extend(kept);
        }
    }

    /// Detaches everything. Releasing a uprobe link waits for an RCU-tasks-trace grace period
    /// (0.1–0.5 s here), one link after another when done in one thread (thousands of links took
    /// minutes); released from many threads at once, the waits share grace periods. Returns the
    /// number of links and how long their release took.
    pub fn release(mut self) -> (usize, std::time::Duration) {
        let started = std::time::Instant::now();
        let mut links: Vec<ProbeLink> = self.links.drain().flat_map(|(_, v)| v).collect();
        links.append(&mut self.retired);
        let n = links::release_all(links);
        links::await_background(std::time::Duration::from_secs(10));
        drop(self.bpf);
        (n, started.elapsed())
    }

    /// Number of processes with probes.
    pub fn process_count(&self) -> usize {
        self.links.len()
    }

    /// Total live uprobe links.
    pub fn link_count(&self) -> usize {
        self.links.values().map(Vec::len).sum()
    }
}


fn looks_like_libc(e: &MapEntry) -> bool {
    let name = e.path.as_deref().unwrap_or("").rsplit('/').next().unwrap_or("");
    name.starts_with("libc.so") || name.starts_with("libc-") || name.starts_with("ld-musl")
}

fn display(e: &MapEntry) -> String {
    e.path.clone().unwrap_or_else(|| format!("inode {}", e.inode))
}

fn program<'a, T>(bpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, AttachError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = bpf.program_mut(name).ok_or_else(|| AttachError::Program {
        name: name.into(),
        source: aya::programs::ProgramError::InvalidName { name: name.into() },
    })?;
    prog.try_into().map_err(|source| AttachError::Program { name: name.into(), source })
}
