//! The types between collection and the writers: what one run (or one snapshot) found.

use std::collections::BTreeMap;

use serde::Serialize;

/// One symbolized frame.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Frame {
    /// Demangled function name, or `module+0xoffset` when the address could not be resolved.
    pub function: String,
    /// Source file (full path as in DWARF), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// Path of the ELF object the address is in (as the target process maps it).
    pub module: String,
    /// File offset of the address inside `module`.
    pub offset: u64,
    /// True for a frame that the compiler inlined into its caller.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub inlined: bool,
}

impl Frame {
    /// The name shown in folded stacks and flamegraphs: `function (file.c:42)` when the line is
    /// known (file's base name only), else `function`.
    pub fn display_name(&self) -> String {
        match (&self.file, self.line) {
            (Some(file), Some(line)) if line > 0 => {
                let base = file.rsplit('/').next().unwrap_or(file);
                format!("{} ({}:{})", self.function, base, line)
            }
            _ => self.function.clone(),
        }
    }
}

/// Outstanding allocations that share one call stack (merged over processes).
#[derive(Clone, Debug, Default, Serialize)]
pub struct StackReport {
    /// Frames root → leaf, as display names.
    pub frames: Vec<String>,
    /// Full frame details root → leaf.
    pub frame_details: Vec<Frame>,
    /// Outstanding (not freed) bytes.
    pub bytes: u64,
    /// Outstanding allocations.
    pub allocations: u64,
    /// Bytes ever allocated at this stack since attach.
    pub total_bytes: u64,
    /// Allocations ever made at this stack since attach.
    pub total_allocations: u64,
    /// Processes holding these allocations.
    pub pids: Vec<u32>,
    /// `leak`, `cache`, `churn` or `unknown` (see ARCHITECTURE.md, "Classification").
    pub class: String,
    /// Least-squares slope of the live bytes over the run.
    pub growth_bytes_per_s: f64,
    /// Confidence in the class, 0..1.
    pub confidence: f64,
    /// Live bytes over time: `[seconds since start, bytes]` (bounded, older points downsampled).
    pub series: Vec<[f64; 2]>,
    /// The stack walk stopped before the outermost frame (`--unwind dwarf`; always false with
    /// `--unwind fp`, whose walks cannot tell).
    pub truncated: bool,
    /// How the walk ended: `whole`, `depth` (the depth limit), `read` (user memory not
    /// readable), `no_info` (code without CFI and without a frame pointer), `unsupported` (a CFI
    /// rule the kernel side cannot follow), `none` (no stack recorded), `fp` (`--unwind fp`).
    pub unwind: String,
}

/// Per-snapshot totals.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SnapshotInfo {
    pub index: u32,
    /// Seconds since profiling started.
    pub elapsed_s: f64,
    pub live_bytes: u64,
    pub live_allocations: u64,
    /// The target cgroup's memory usage at that moment, when known.
    pub cgroup_usage_bytes: Option<u64>,
    /// Summed RSS of the target's processes.
    pub rss_bytes: Option<u64>,
}

/// The target's memory as the kernel accounts it, at the end of the run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MemoryInfo {
    /// Bytes memprof tracks as outstanding (heap + anonymous mappings).
    pub tracked_bytes: u64,
    /// Summed resident set size of the target's processes.
    pub rss_bytes: Option<u64>,
    /// cgroup memory usage (`memory.current`, or v1 `memory.usage_in_bytes`).
    pub cgroup_usage_bytes: Option<u64>,
    /// cgroup memory limit (`memory.max`, or v1 `memory.limit_in_bytes`); None: no limit.
    pub cgroup_limit_bytes: Option<u64>,
    /// Where the figures came from (`cgroup v2 memory.current`, `cgroup v1 memory`, ...).
    pub source: String,
    /// The processes' resident memory that is anonymous (`RssAnon`: heap, anonymous mappings,
    /// stacks): what tracked bytes are part of.
    pub rss_anon_bytes: Option<u64>,
    /// The processes' resident memory backed by files or shared memory (`RssFile` + `RssShmem`:
    /// executables, libraries, mapped files), which memprof does not track.
    pub rss_file_bytes: Option<u64>,
    /// The cgroup's anonymous memory (`memory.stat` `anon`, v1 `total_rss`).
    pub cgroup_anon_bytes: Option<u64>,
    /// The cgroup's page cache (`memory.stat` `file`, v1 `total_cache`).
    pub cgroup_file_bytes: Option<u64>,
    /// Set when the memory cgroup also holds processes outside the target (a hybrid host's
    /// shared v1 cgroup, a pod-level cgroup, `--pid` in a bigger container): its usage, limit
    /// and time-to-OOM are then not the target's own.
    pub shared: Option<SharedMemory>,
}

/// A memory cgroup that holds more than the target.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SharedMemory {
    /// Processes in it (or its descendants) that are not the target's.
    pub other_processes: u64,
    /// The memory cgroup's directory.
    pub cgroup: String,
}

impl MemoryInfo {
    /// "shared with N other processes", when the cgroup is.
    pub fn shared_words(&self) -> Option<String> {
        let s = self.shared.as_ref()?;
        Some(format!(
            "shared with {} other process{}: not the target's own usage",
            s.other_processes,
            if s.other_processes == 1 { "" } else { "es" }
        ))
    }

    /// Sentences reconciling tracked bytes, RSS and cgroup usage, for the terminal and report.
    pub fn explain(&self) -> Vec<String> {
        use crate::output::human_bytes as hb;
        let mut lines = Vec::new();
        let t = self.tracked_bytes;
        if let Some(anon) = self.rss_anon_bytes.filter(|&a| a > 0) {
            lines.push(if t <= anon {
                format!(
                    "memprof tracks {} = {:.0}% of the processes' anonymous resident memory ({}); the rest \
                     was not handed out by a tracked call: allocator free lists and metadata, thread \
                     stacks, memory allocated before memprof attached",
                    hb(t),
                    t as f64 / anon as f64 * 100.0,
                    hb(anon)
                )
            } else {
                format!(
                    "memprof tracks {}, {} more than the processes' anonymous resident memory ({}): \
                     memory counts when allocated (or committed), before its pages are touched; \
                     untouched and swapped-out pages are tracked but not resident",
                    hb(t),
                    hb(t - anon),
                    hb(anon)
                )
            });
        }
        if let (Some(rss), Some(anon), Some(file)) = (self.rss_bytes, self.rss_anon_bytes, self.rss_file_bytes) {
            lines.push(format!(
                "RSS {} = {} anonymous + {} file-backed and shared (executables, libraries, mapped \
                 files: not tracked)",
                hb(rss),
                hb(anon),
                hb(file)
            ));
        }
        if let Some(usage) = self.cgroup_usage_bytes {
            let mut line = match (self.cgroup_anon_bytes, self.cgroup_file_bytes) {
                (Some(a), Some(f)) => format!(
                    "cgroup usage {} = {} anonymous + {} page cache + {} kernel and other",
                    hb(usage),
                    hb(a),
                    hb(f),
                    hb(usage.saturating_sub(a + f))
                ),
                _ => format!("cgroup usage {}", hb(usage)),
            };
            match (&self.shared, self.shared_words()) {
                (Some(s), Some(words)) => {
                    line = format!("{line}; the memory cgroup {} is {words}", s.cgroup)
                }
                _ => line.push_str(" (the target's own memory cgroup)"),
            }
            lines.push(line);
        }
        lines
    }
}

/// Evidence captured when the kernel OOM-killed a process of the target.
#[derive(Clone, Debug, Serialize)]
pub struct OomKill {
    pub pid: u32,
    pub comm: String,
    /// Seconds since the start of the run.
    pub elapsed_s: f64,
    /// Bytes the process had outstanding just before the kill.
    pub live_bytes: u64,
    /// `oom-<pid>.folded` and `.svg`, relative to the output folder.
    pub folded: String,
    pub svg: String,
    /// The stack holding the most bytes (root → leaf).
    pub top_stack: Vec<String>,
}

/// A traced process.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProcessInfo {
    pub pid: u32,
    pub comm: String,
    /// Still running at the end of the run.
    pub alive: bool,
    /// Bytes still outstanding when the process exited (released by the kernel with the process,
    /// so not counted as leaks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub freed_at_exit_bytes: Option<u64>,
}

/// One probe placed (or that could not be placed).
#[derive(Clone, Debug, Serialize)]
pub struct ProbeInfo {
    pub object: String,
    pub function: String,
    pub offset: u64,
    pub attached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a whole run found: the input of `summary.json` and the terminal summary.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// What the user asked for (`--cgroup api-service`), resolved.
    pub target: String,
    /// The cgroup v2 path profiled, when profiling a cgroup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// RFC 3339 UTC start time.
    pub started_at: String,
    pub duration_s: f64,
    /// Why the run ended: `duration`, `signal`, `targets_exited`.
    pub end_reason: String,
    /// `allocations` (uprobes on the allocator) or `rss` (resident pages from page faults).
    pub mode: String,
    /// `--sample-bytes`: mean bytes between recorded allocations (bytes and counts are
    /// estimates); None: every allocation was recorded.
    pub sample_bytes: Option<u64>,
    /// Stacks by outstanding bytes, largest first.
    pub stacks: Vec<StackReport>,
    pub live_bytes: u64,
    pub live_allocations: u64,
    /// Everything lost, by counter name (zero counters included).
    pub lost: BTreeMap<String, u64>,
    /// Plain statistics (allocations, frees seen, ...).
    pub stats: BTreeMap<String, u64>,
    pub processes: Vec<ProcessInfo>,
    pub probes: Vec<ProbeInfo>,
    pub snapshots: Vec<SnapshotInfo>,
    /// Tracked heap vs RSS vs cgroup usage and limit.
    pub memory: MemoryInfo,
    /// Seconds until the cgroup reaches its memory limit at the current growth; None without a
    /// limit or without growth.
    pub oom_eta_s: Option<f64>,
    pub oom_kills: Vec<OomKill>,
    /// How whole the stacks are.
    pub stack_quality: StackQuality,
    /// How each object that appears in a stack was symbolized.
    pub modules: Vec<crate::symbolize::ModuleSymbols>,
    /// Interpreters found in the target's processes (Python) and how their frames were read.
    pub runtimes: RuntimesInfo,
    /// Live memory by the innermost runtime (Python) function of each stack.
    pub functions: Vec<crate::analyze::functions::FunctionReport>,
}

/// Runtimes (Python) in the target: per process, whether its frames are in the stacks and why
/// not; the kernel walker's counters; frames that could not be named.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RuntimesInfo {
    pub processes: Vec<crate::runtime::RuntimeProcess>,
    /// Activations of Python's eval loop the native walks passed and the Python walker handled.
    pub python_activations: u64,
    /// Python frames recorded.
    pub python_frames: u64,
    /// Python walks that failed, by reason (`no_thread_state`, `read`, `misaligned`, `depth`):
    /// their stacks keep the interpreter's native frames there.
    pub python_walk_failed: BTreeMap<String, u64>,
    /// Runtime frames recorded but not named (the code object could not be read), by reason.
    pub unnamed_frames: BTreeMap<String, u64>,
    /// pymalloc arenas counted page by page (`python_arenas_paged`), and those that could not be
    /// (the kernel's arena map was full: counted as one mapping each).
    pub python_arenas_paged: u64,
    pub python_arenas_unregistered: u64,
    /// JS frames recorded (Node: read from V8's own frames, no flag on the target).
    pub js_frames: u64,
    /// Frames that looked like JS frames but could not be read through (`read`), and JS frames
    /// cut by the stack depth limit (`depth`): their native pcs are kept.
    pub js_walk_failed: BTreeMap<String, u64>,
    /// JS frames named, by the tier of their code (`interpreted`, `baseline`, `maglev`,
    /// `turbofan`, `builtin`, `other`).
    pub js_tiers: BTreeMap<String, u64>,
    /// Inlined JS frames expanded from optimised code.
    pub js_inlined_frames: u64,
    /// Live bytes of the pages V8 mapped for its own heap (stacks ending in `[V8 heap]`): JS
    /// objects, apart from native memory (Buffers' backing stores, addons).
    pub js_heap_bytes: u64,
}

impl RuntimesInfo {
    /// The languages whose functions the "by function" tables list: `Python`, `JS` or
    /// `Python/JS`.
    pub fn languages(&self) -> &'static str {
        let node = self.processes.iter().any(|p| p.runtime == "node");
        let python = self.processes.iter().any(|p| p.runtime != "node");
        match (python, node) {
            (true, true) => "Python/JS",
            (false, true) => "JS",
            _ => "Python",
        }
    }

    /// One line for the terminal and the report, when there is any runtime (`mode`: the
    /// report's, `allocations` or `rss`).
    pub fn describe(&self, mode: &str) -> Option<String> {
        let lines: Vec<String> = [self.describe_python(mode), self.describe_node()].into_iter().flatten().collect();
        (!lines.is_empty()).then(|| lines.join("\n"))
    }

    /// The Node line: processes whose JS frames were read, and what was met.
    fn describe_node(&self) -> Option<String> {
        let procs: Vec<&crate::runtime::RuntimeProcess> = self.processes.iter().filter(|p| p.runtime == "node").collect();
        if procs.is_empty() {
            return None;
        }
        let walked: Vec<&&crate::runtime::RuntimeProcess> = procs.iter().filter(|p| p.frames == "walked").collect();
        let mut versions: Vec<&str> = walked.iter().map(|p| p.version.as_str()).collect();
        versions.sort_unstable();
        versions.dedup();
        let mut line = format!(
            "node: JS frames read from V8 in {} of {} processes{}",
            walked.len(),
            procs.len(),
            if versions.is_empty() { String::new() } else { format!(" ({})", versions.join(", ")) }
        );
        if self.js_frames > 0 {
            // `optimized_from_*` say how the optimised ones were expanded; not tiers of their own.
            let is_tier = |t: &str| !t.starts_with("optimized_from_");
            let tiers: Vec<String> =
                self.js_tiers.iter().filter(|(t, n)| **n > 0 && is_tier(t)).map(|(t, n)| format!("{t} {n}")).collect();
            let named: u64 = self.js_tiers.iter().filter(|(t, _)| is_tier(t)).map(|(_, n)| n).sum();
            line.push_str(&format!("; {named} distinct JS frames named ({})", tiers.join(", ")));
            if self.js_inlined_frames > 0 {
                line.push_str(&format!(", {} inlined frames expanded", self.js_inlined_frames));
            }
        }
        if self.js_heap_bytes > 0 {
            line.push_str(&format!(
                "; V8 heap pages {:.1} MiB live (under [V8 heap]; the rest of the tracked memory is native: Buffers, addons)",
                self.js_heap_bytes as f64 / (1 << 20) as f64
            ));
        }
        let failed: u64 = self.js_walk_failed.values().sum();
        if failed > 0 {
            line.push_str(&format!("; {failed} JS frames unreadable (native frames kept)"));
        }
        let unnamed: u64 = self.unnamed_frames.iter().filter(|(k, _)| k.starts_with("js_")).map(|(_, n)| n).sum();
        if unnamed > 0 {
            line.push_str(&format!("; {unnamed} JS frames not (fully) named"));
        }
        for p in procs.iter().filter(|p| p.frames != "walked").take(3) {
            line.push_str(&format!("; pid {}: {}", p.pid, p.why.as_deref().unwrap_or(p.frames)));
        }
        Some(line)
    }

    /// The Python line.
    fn describe_python(&self, mode: &str) -> Option<String> {
        let procs: Vec<&crate::runtime::RuntimeProcess> = self.processes.iter().filter(|p| p.runtime != "node").collect();
        if procs.is_empty() {
            return None;
        }
        let walked: Vec<&crate::runtime::RuntimeProcess> = procs.iter().copied().filter(|p| p.frames == "walked").collect();
        let mut versions: Vec<&str> = walked.iter().map(|p| p.version.as_str()).collect();
        versions.sort_unstable();
        versions.dedup();
        let mut line = format!(
            "python: frames read in {} of {} processes{}",
            walked.len(),
            procs.len(),
            if versions.is_empty() { String::new() } else { format!(" (CPython {})", versions.join(", ")) }
        );
        let failed: u64 = self.python_walk_failed.values().sum();
        if failed > 0 {
            line.push_str(&format!("; {failed} Python walks failed (native frames kept)"));
        }
        if self.python_arenas_unregistered > 0 {
            line.push_str(&format!(
                "; {} pymalloc arenas counted whole, under the code that needed them (arena map full)",
                self.python_arenas_unregistered
            ));
        }
        for p in procs.iter().filter(|p| p.frames != "walked").take(3) {
            line.push_str(&format!("; pid {}: {}", p.pid, p.why.as_deref().unwrap_or(p.frames)));
        }
        let objects: Vec<&str> = walked.iter().filter_map(|p| p.details.get("object_allocator")).map(String::as_str).collect();
        let paged = walked.first().is_some_and(|p| p.heap_pages);
        if mode == "rss" {
            line.push_str("; Python objects by the pages they fill");
        } else if let Some(o) = objects.first() {
            if o.starts_with("not probed") && paged {
                line.push_str(&format!(
                    "; small Python objects are counted by the pymalloc arena pages they first touch, under the \
                     Python function that touched them ({})",
                    if o.contains("--no-python-objects") { "--no-python-objects" } else { "an optimised build inlines the object allocator" }
                ));
            } else if o.contains("--no-python-objects") {
                line.push_str("; small Python objects are counted as the pymalloc arenas holding them (--no-python-objects)");
            } else if o.starts_with("not probed") {
                line.push_str(
                    "; small Python objects are counted as the pymalloc arenas holding them (an optimised build \
                     inlines the object allocator; --mode rss charges them to the Python functions that fill \
                     new pages)",
                );
            } else {
                line.push_str(
                    "; Python objects tracked one by one (about 2–5 µs per object allocation: \
                     --no-python-objects counts them by arena)",
                );
            }
        }
        Some(line)
    }
}

/// Stack completeness over the run's live stacks.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StackQuality {
    /// `dwarf` (CFI walk) or `fp` (frame pointers).
    pub unwinder: String,
    /// Live stacks in the report.
    pub stacks: usize,
    /// Of those, stacks whose walk stopped before the outermost frame.
    pub truncated_stacks: usize,
    /// Share of the live bytes whose stack is whole (0..1); None with `--unwind fp`, whose
    /// walks cannot tell.
    pub whole_bytes_share: Option<f64>,
    /// The CFI tables loaded (`--unwind dwarf`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tables: Option<crate::unwind::loader::UnwindStats>,
}

impl StackQuality {
    /// One line for people: `stacks: 99.8% of live bytes with whole stacks (CFI walk), 2 of 40
    /// stacks truncated`.
    pub fn describe(&self) -> String {
        match self.whole_bytes_share {
            Some(share) => format!(
                "{:.1}% of live bytes with whole stacks (CFI walk), {} of {} stacks truncated",
                share * 100.0,
                self.truncated_stacks,
                self.stacks
            ),
            None => "frame-pointer walk (--unwind fp): completeness unknown".to_string(),
        }
    }

    /// Quality figures over `stacks`.
    pub fn of(stacks: &[StackReport], dwarf: bool) -> StackQuality {
        let live: u64 = stacks.iter().map(|s| s.bytes).sum();
        let whole: u64 = stacks.iter().filter(|s| !s.truncated).map(|s| s.bytes).sum();
        StackQuality {
            unwinder: if dwarf { "dwarf" } else { "fp" }.to_string(),
            stacks: stacks.len(),
            truncated_stacks: stacks.iter().filter(|s| s.truncated).count(),
            whole_bytes_share: dwarf.then(|| if live == 0 { 1.0 } else { whole as f64 / live as f64 }),
            tables: None,
        }
    }
}
