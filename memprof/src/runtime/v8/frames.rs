//! Naming the JS frames the kernel recorded: (SharedFunctionInfo | tier, pc or bytecode offset,
//! name tag) → `function (file:line)`, with inlined functions as frames of their own.
//!
//! - Interpreted frames: the SFI's BytecodeArray's source position table at the bytecode offset.
//! - Compiled frames: the pc's Code object ([`super::code`]). Baseline code maps the pc to a
//!   bytecode offset; TurboFan and Maglev code give the position at the pc, whose inlining ids
//!   expand into the inlined functions, innermost first. A pc in the node binary's own text is
//!   an embedded builtin (a JS function V8 ships compiled): named, without a line.
//!
//! Every SFI is checked against the tag the kernel saw (an SFI moved by the GC, or another
//! object now at its address, is not trusted), and the Code's own SFI against the frame's. What
//! was read is cached per process and kept after it exits (its stacks are still to be named);
//! frames that could not be named are counted by reason (`summary.json`, `unresolved_frames`).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use memprof_common::{
    runtime::slot_payload,
    v8::{V8_TIER_COMPILED, V8_TIER_INTERPRETED, V8_TIER_MASK},
};

use super::code::{self, CodeCache, Tier};
use super::elf::BytecodeSizes;
use super::opcodes::Opcodes;
use super::translation;
use super::heap::{self, HeapError, JsFunctionName, ScriptCache, untag};
use super::layout::Layout;
use super::positions;
use crate::{report::Frame, runtime::mem::ProcMem};

/// The module name of JS frames.
pub const JS_MODULE: &str = "[js]";

/// Frames (by slot pair) cached per process.
const MAX_CACHED_FRAMES: usize = 1 << 16;

/// One Node process: its V8's layout and what was read from it.
pub struct V8Process {
    pub alive: bool,
    layout: Arc<Layout>,
    sizes: Option<Arc<BytecodeSizes>>,
    opcodes: Option<Arc<Opcodes>>,
    mem: ProcMem,
    /// Executable file mappings of the V8 object: a pc there is an embedded builtin.
    builtins: Vec<(u64, u64)>,
    scripts: ScriptCache,
    /// By untagged address.
    sfis: HashMap<u64, Arc<JsFunctionName>>,
    codes: CodeCache,
    frames: HashMap<(u64, u64), Vec<Frame>>,
}

impl V8Process {
    pub fn new(
        pid: u32,
        layout: Arc<Layout>,
        sizes: Option<Arc<BytecodeSizes>>,
        opcodes: Option<Arc<Opcodes>>,
        builtins: Vec<(u64, u64)>,
    ) -> V8Process {
        V8Process {
            alive: true,
            layout,
            sizes,
            opcodes,
            mem: ProcMem::new(pid),
            builtins,
            scripts: ScriptCache::default(),
            sfis: HashMap::new(),
            codes: CodeCache::default(),
            frames: HashMap::new(),
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The function of `sfi` (tagged or not); when `tag` is given, only if the SFI still has it.
    fn function(&mut self, sfi: u64, tag: Option<u16>) -> Result<Arc<JsFunctionName>, String> {
        let key = untag(sfi);
        if let Some(f) = self.sfis.get(&key) {
            let now = match tag {
                Some(t) => Some(t),
                None if self.alive => heap::name_tag(&self.mem, &self.layout, key | 1).ok(),
                None => Some(f.tag),
            };
            if now == Some(f.tag) {
                return Ok(f.clone());
            }
        }
        if !self.alive {
            return Err("process_exited".into());
        }
        let f = heap::name_sfi_cached(&self.mem, &self.layout, key | 1, &mut self.scripts).map_err(|e| reason(&e))?;
        if tag.is_some_and(|t| t != f.tag) {
            return Err("sfi_moved".into());
        }
        let f = Arc::new(f);
        self.sfis.insert(key, f.clone());
        Ok(f)
    }

    /// The frames a JS frame stands for (innermost first), or why it could not be named.
    pub fn frames(&mut self, slot: u64, detail: u64, stats: &mut Stats) -> Vec<Frame> {
        if let Some(f) = self.frames.get(&(slot, detail)) {
            return f.clone();
        }
        let payload = slot_payload(slot);
        let sfi = (payload & !V8_TIER_MASK) | 1;
        let tag = (detail >> 48) as u16;
        let value = detail & ((1 << 48) - 1);
        let out = match self.name(sfi, payload & V8_TIER_MASK, tag, value, stats) {
            // Innermost first from the naming; the symbolizer takes a runtime frame's frames
            // root → leaf.
            Ok(mut frames) => {
                frames.reverse();
                frames
            }
            Err(why) => {
                *stats.unresolved.entry(why).or_default() += 1;
                vec![Frame {
                    function: format!("<js function {:#x}>", untag(sfi)),
                    file: None,
                    line: None,
                    module: JS_MODULE.into(),
                    offset: untag(sfi),
                    inlined: false,
                }]
            }
        };
        if self.alive {
            // Not cached once exited: a frame first named after that has nothing more to learn.
            if self.frames.len() >= MAX_CACHED_FRAMES {
                self.frames.clear();
            }
            self.frames.insert((slot, detail), out.clone());
        }
        out
    }

    fn name(&mut self, sfi: u64, tier: u64, tag: u16, value: u64, stats: &mut Stats) -> Result<Vec<Frame>, String> {
        let func = self.function(sfi, Some(tag))?;
        match tier {
            V8_TIER_INTERPRETED => {
                *stats.tiers.entry("interpreted").or_default() += 1;
                let offset = positions::bytecode_offset_from_slot(&self.layout, heap::smi(value as u32 as i32));
                let line = offset.and_then(|off| {
                    positions::line_at_bytecode_offset(&self.mem, &self.layout, sfi, &func, off).ok().flatten()
                });
                Ok(vec![js_frame(&func, sfi, line, false)])
            }
            V8_TIER_COMPILED => self.compiled(sfi, func, value, stats),
            _ => Err("bad_tier".into()),
        }
    }

    fn compiled(&mut self, sfi: u64, func: Arc<JsFunctionName>, pc: u64, stats: &mut Stats) -> Result<Vec<Frame>, String> {
        if self.builtins.iter().any(|&(s, e)| s <= pc && pc < e) {
            *stats.tiers.entry("builtin").or_default() += 1;
            return Ok(vec![js_frame(&func, sfi, None, false)]);
        }
        let code = match self.codes.code_for_pc(&self.mem, &self.layout, pc) {
            Ok(c) => c,
            Err(e) => {
                // The function is known; only its line is not.
                *stats.unresolved.entry(format!("line_{}", reason(&e))).or_default() += 1;
                return Ok(vec![js_frame(&func, sfi, None, false)]);
            }
        };
        *stats.tiers.entry(code.tier.name()).or_default() += 1;
        match code.tier {
            Tier::Baseline => {
                let line = self.sizes.clone().and_then(|sizes| {
                    let array = positions::sfi_bytecode_array(&self.mem, &self.layout, sfi).ok()?;
                    let off = code::baseline_bytecode_offset(&self.mem, &self.layout, &code, array, &sizes, pc).ok()?;
                    positions::line_at_bytecode_offset(&self.mem, &self.layout, sfi, &func, off).ok().flatten()
                });
                Ok(vec![js_frame(&func, sfi, line, false)])
            }
            Tier::Maglev | Tier::Turbofan => {
                if let Some(frames) = self.translated(sfi, &code, pc, stats) {
                    return Ok(frames);
                }
                let (code_sfi, list) = match code::optimized_frames(&self.mem, &self.layout, &code, pc) {
                    Ok(x) => x,
                    Err(e) => {
                        *stats.unresolved.entry(format!("line_{}", reason(&e))).or_default() += 1;
                        return Ok(vec![js_frame(&func, sfi, None, false)]);
                    }
                };
                if untag(code_sfi) != untag(sfi) {
                    // The leaf's frame not set up yet (a fault in a prologue), or code reused:
                    // the Code's own functions are what ran at this pc.
                    *stats.unresolved.entry("code_of_another_function".into()).or_default() += 1;
                }
                *stats.inlining_from.entry("source_positions").or_default() += 1;
                let n = list.len();
                let mut out = Vec::with_capacity(n);
                for (i, f) in list.iter().enumerate() {
                    let inlined = i + 1 < n;
                    if inlined {
                        stats.inlined += 1;
                    }
                    match self.function(f.sfi, None) {
                        Ok(g) => {
                            let line = f.script_offset.and_then(|p| g.line_of(p));
                            out.push(js_frame(&g, f.sfi, line, inlined));
                        }
                        Err(why) => {
                            *stats.unresolved.entry(format!("inlined_{why}")).or_default() += 1;
                        }
                    }
                }
                if out.is_empty() {
                    out.push(js_frame(&func, sfi, None, false));
                }
                Ok(out)
            }
            Tier::Other(_) => Ok(vec![js_frame(&func, sfi, None, false)]),
        }
    }
}

impl V8Process {
    /// The frames of optimised `code` at `pc` from its lazy deopt point (innermost first), when
    /// it has one and it reads right.
    fn translated(&mut self, sfi: u64, code: &code::CodeInfo, pc: u64, stats: &mut Stats) -> Option<Vec<Frame>> {
        // The translation format read here is V8's since 10.5 (basis translations matched with
        // MATCH_PREVIOUS_TRANSLATION); an older one is left to the position tables.
        let ops = self.opcodes.clone().filter(|o| o.id("MATCH_PREVIOUS_TRANSLATION").is_some())?;
        let frames = match translation::frames_at(&self.mem, &self.layout, &ops, code, pc) {
            Ok(Some(f)) if !f.is_empty() => f,
            Ok(_) => return None,
            Err(e) => {
                *stats.unresolved.entry(format!("translation_{}", reason(&e))).or_default() += 1;
                return None;
            }
        };
        if frames.first().is_some_and(|f| untag(f.sfi) != untag(sfi)) {
            // The outermost frame is the Code's own function: another one means code of another
            // function (a leaf still in its prologue, or code freed and reused).
            *stats.unresolved.entry("code_of_another_function".into()).or_default() += 1;
        }
        *stats.inlining_from.entry("deopt_translation").or_default() += 1;
        let n = frames.len();
        let mut out = Vec::with_capacity(n);
        for (i, f) in frames.iter().enumerate().rev() {
            let inlined = i > 0;
            match self.function(f.sfi, None) {
                Ok(g) => {
                    let line = f.bytecode_offset.and_then(|off| {
                        positions::line_at_bytecode_offset(&self.mem, &self.layout, f.sfi, &g, off).ok().flatten()
                    });
                    if inlined {
                        stats.inlined += 1;
                    }
                    out.push(js_frame(&g, f.sfi, line, inlined));
                }
                Err(why) => *stats.unresolved.entry(format!("inlined_{why}")).or_default() += 1,
            }
        }
        (!out.is_empty()).then_some(out)
    }
}

/// What naming JS frames met, for `summary.json`.
#[derive(Default, Debug)]
pub struct Stats {
    /// Frames that could not be named (or only without a line), by reason.
    pub unresolved: BTreeMap<String, u64>,
    /// Frames named, by tier.
    pub tiers: BTreeMap<&'static str, u64>,
    /// Inlined frames expanded.
    pub inlined: u64,
    /// Optimised frames named from their deopt translation or from source positions.
    pub inlining_from: BTreeMap<&'static str, u64>,
}

fn js_frame(f: &JsFunctionName, sfi: u64, line: Option<u32>, inlined: bool) -> Frame {
    Frame {
        function: f.name.clone(),
        file: f.file().map(str::to_string),
        line,
        module: JS_MODULE.into(),
        offset: untag(sfi),
        inlined,
    }
}

/// A short, stable name for why an object could not be read (a `summary.json` key).
fn reason(e: &HeapError) -> String {
    match e {
        HeapError::Unreadable { .. } => "unreadable",
        HeapError::NotHeapObject { .. } => "not_a_heap_object",
        HeapError::WrongType { .. } => "wrong_type",
        HeapError::TooLarge { .. } => "too_large",
        HeapError::Bad { .. } => "bad_object",
    }
    .into()
}
