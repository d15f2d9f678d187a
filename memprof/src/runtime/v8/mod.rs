//! V8's room (issue 11): naming the JavaScript frames of a Node process from V8's own memory,
//! with no flag on the target. The design, with what was measured on five node binaries
//! (Node 18–24), is in `DESIGN.md` beside this file.
//!
//! - [`elf`]: finding V8 in an ELF object (`node`, `libnode.so`): its `v8dbg_*` postmortem
//!   metadata, its version and `Bytecodes::kBytecodeSizes`.
//! - [`layout`]: every offset and type id the readers need, from that metadata plus the
//!   per-version fallbacks measured for issue 11 (V8 10.2 to 13.x).
//! - [`process`]: finding V8 in a process and what its kernel-side walker is given
//!   (`V8_PROCS`, `memprof-ebpf/src/v8.rs`).
//! - [`heap`]: reading V8 heap objects out of a live process (tagged pointers, maps, the
//!   SharedFunctionInfo → name / Script → file and line ends chain), [`strings`] for V8's string
//!   representations and [`positions`] for source position tables.
//! - [`code`]: a compiled frame's pc → its Code object, inlined functions, baseline offsets.
//! - [`frames`]: naming the frames the kernel recorded, with caches and validity checks.
//!
//! The approach is the OpenTelemetry eBPF profiler's V8 unwinder
//! (`open-telemetry/opentelemetry-ebpf-profiler`, `interpreter/nodev8/v8.go`); each place an
//! idea was taken from it says so. The code is memprof's own.
//!
//! Everything read from the target is untrusted: the process keeps running, objects move
//! (compaction) and die. Every read is bounded and every pointer is type-checked through its
//! map before it is followed; garbage gives errors, never panics.

pub mod code;
pub mod elf;
pub mod frames;
pub mod heap;
pub mod layout;
pub mod opcodes;
pub mod positions;
pub mod process;
pub mod strings;
pub mod translation;

use std::collections::{BTreeMap, HashMap};

use aya::{Ebpf, maps::HashMap as BpfHashMap};
use memprof_common::v8::V8Proc;

pub use elf::{V8Elf, V8Version};
pub use heap::{HeapError, JsFunctionName, Memory, NameFrom, Script, name_sfi};
pub use layout::{Layout, Unsupported};

use super::{Observed, RuntimeProcess};
use crate::{report::Frame, target::maps};

/// The leaf frame of stacks that mapped pages of V8's own heap.
pub const V8_HEAP_FRAME: &str = "[V8 heap]";

/// One walked process.
struct Walked {
    key: process::ObjectKey,
    text: Vec<(u64, u64)>,
    frames: frames::V8Process,
    status: RuntimeProcess,
}

/// V8 in every process memprof follows.
#[derive(Default)]
pub struct V8 {
    elf: process::ElfCache,
    procs: HashMap<u32, Walked>,
    stats: frames::Stats,
}

impl V8 {
    /// Looks for V8 in `pid` and, when found and understood, loads its walker data. A process
    /// already walked is not looked at again while it maps the same V8 object at the same place.
    pub fn observe(&mut self, bpf: &mut Ebpf, pid: u32, fresh: bool) -> Observed {
        let Ok(entries) = maps::read_maps(pid) else { return Observed::No };
        if !fresh {
            if let Some(w) = self.procs.get(&pid).filter(|w| w.frames.alive) {
                let still = entries
                    .iter()
                    .any(|e| e.is_exec() && (e.dev_major, e.dev_minor, e.inode) == w.key && w.text.contains(&(e.start, e.end)));
                if still {
                    return Observed::Walked { ranges: Vec::new(), probes: Vec::new(), status: w.status.clone() };
                }
            }
        }
        let (key, object, text) = match process::inspect(pid, &entries, &mut self.elf) {
            process::Inspection::NotV8 => {
                if let Some(w) = self.procs.get_mut(&pid) {
                    w.frames.alive = false;
                }
                return Observed::No;
            }
            process::Inspection::Found { key, object, text } => (key, object, text),
        };
        let mut status = RuntimeProcess {
            pid,
            runtime: "node",
            version: format!("V8 {}", object.version),
            object: object.name.clone(),
            frames: "walked",
            ..Default::default()
        };
        let layout = match &object.layout {
            Ok(l) => l.clone(),
            Err(why) => {
                status.frames = "unsupported";
                status.why = Some(format!("{why}: JS frames are native frames (named from a perf map if the process writes one)"));
                return Observed::Unsupported(status);
            }
        };
        let proc = process::walker_data_for(&layout, &text).expect("checked when the object was read");
        if let Err(err) = load_proc(bpf, pid, &proc) {
            status.frames = "unsupported";
            status.why = Some(format!("cannot load its walker data: {err}"));
            return Observed::Unsupported(status);
        }
        if object.opcodes.is_none() {
            status.details.insert(
                "inlined_frames".into(),
                "from source positions only: the binary's deoptimization opcode tables were not found".into(),
            );
        }
        if object.sizes.is_none() {
            status.details.insert("baseline_lines".into(), "none: Bytecodes::kBytecodeSizes not found".into());
        }
        if !layout.fallbacks.is_empty() {
            status.details.insert("layout_fallbacks".into(), layout.fallbacks.len().to_string());
        }
        let frames = frames::V8Process::new(pid, layout, object.sizes.clone(), object.opcodes.clone(), text.clone());
        self.procs.insert(pid, Walked { key, text, frames, status: status.clone() });
        Observed::Walked { ranges: Vec::new(), probes: Vec::new(), status }
    }

    /// The process exited (or left V8): its kernel entry goes; what was read stays.
    pub fn forget(&mut self, bpf: &mut Ebpf, pid: u32) {
        if let Some(Ok(mut m)) = bpf.map_mut("V8_PROCS").map(BpfHashMap::<_, u32, V8Proc>::try_from) {
            let _ = m.remove(&pid);
        }
        if let Some(w) = self.procs.get_mut(&pid) {
            w.frames.alive = false;
        }
    }

    /// The frames one JS frame of `pid` stands for (innermost first).
    pub fn frames(&mut self, pid: u32, slot: u64, detail: u64) -> Vec<Frame> {
        match self.procs.get_mut(&pid) {
            Some(w) => w.frames.frames(slot, detail, &mut self.stats),
            None => {
                *self.stats.unresolved.entry("not_a_walked_process".into()).or_default() += 1;
                vec![super::unnamed(slot)]
            }
        }
    }

    /// The leaf frame added to a stack of `pid` (`frames`: named, outermost first) that mapped
    /// pages for V8's own heap (`v8::base::OS::Allocate`, `SetPermissions`: GC pages, code
    /// space), so that JS-heap growth shows apart from native memory (Buffers, addons).
    pub fn heap_frame(&self, pid: u32, frames: &[Frame]) -> Option<Frame> {
        self.procs.get(&pid)?;
        frames
            .iter()
            .any(|f| f.function.starts_with("v8::base::OS::Allocate(") || f.function.starts_with("v8::base::OS::SetPermissions("))
            .then(|| Frame {
                function: V8_HEAP_FRAME.into(),
                file: None,
                line: None,
                module: frames::JS_MODULE.into(),
                offset: 0,
                inlined: false,
            })
    }

    /// Frames that could not be named (or only without a line), by reason.
    pub fn unresolved(&self) -> &BTreeMap<String, u64> {
        &self.stats.unresolved
    }

    /// Frames named, by tier, and inlined frames expanded.
    pub fn tiers(&self) -> (BTreeMap<&'static str, u64>, u64) {
        let mut tiers = self.stats.tiers.clone();
        for (k, v) in &self.stats.inlining_from {
            tiers.insert(if *k == "deopt_translation" { "optimized_from_deopt_translation" } else { "optimized_from_source_positions" }, *v);
        }
        (tiers, self.stats.inlined)
    }
}

fn load_proc(bpf: &mut Ebpf, pid: u32, proc: &V8Proc) -> Result<(), String> {
    let mut m = bpf
        .map_mut("V8_PROCS")
        .map(BpfHashMap::<_, u32, V8Proc>::try_from)
        .ok_or("BPF map V8_PROCS is missing")?
        .map_err(|e| e.to_string())?;
    m.insert(pid, *proc, 0).map_err(|e| e.to_string())
}
