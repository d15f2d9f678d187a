//! V8's room on a real node (the host's Node 20, started with no flags): its JS frames named
//! from V8's own memory, compared with V8's own stack trace.
//!
//! `tests/data/v8_park.js` parks its main thread in `Atomics.wait` inside `leakyHandler`,
//! called from a class method, an arrow function and a timer callback, after printing the stack
//! trace V8 gives at that point. The test waits until the thread sleeps in the futex, reads its
//! stack through `process_vm_readv` (nothing is stopped or written), finds the JS frames on it
//! as issue 11's prototype did (the lowest slot whose `fp − 16` word is a JSFunction starts a
//! frame-pointer chain, followed upwards; the kernel walker will get the same frame pointers
//! from its own steps), and names each: JSFunction → SharedFunctionInfo → name, Script → file,
//! the interpreted frame's bytecode offset → line. Needs root (`/proc/PID/map_files`).

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use memprof::runtime::{
    mem::ProcMem,
    v8::{
        Layout, V8Elf,
        heap::{self, JsFunctionName, LineEndsFrom, ScriptCache},
        positions, strings,
    },
};
use memprof::target::maps::{self, MapEntry};

/// The node we started: killed (by its pid) and reaped when the test ends, however it ends.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        if std::env::var_os("CI").is_some() {
            panic!("v8_names must run as root in CI (it reads /proc/PID/map_files of a node it starts)");
        }
        panic!("v8_names needs root (it reads /proc/PID/map_files of a node it starts): run `sudo -E cargo test -p memprof --test v8_names`");
    }
}

fn which_node() -> PathBuf {
    let out = Command::new("sh").args(["-c", "command -v node"]).output().expect("sh");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!path.is_empty(), "`node` is not on PATH: this test needs the host's Node 20 (CI installs it)");
    PathBuf::from(path)
}

/// `[(function, file, line)]` from V8's `at …` stack lines, innermost first.
fn parse_v8_stack(lines: &[String]) -> Vec<(String, String, u32)> {
    lines
        .iter()
        .filter_map(|l| {
            let l = l.trim().strip_prefix("at ")?;
            let (func, loc) = l.split_once(" (")?;
            let loc = loc.strip_suffix(')')?;
            let mut parts = loc.rsplitn(3, ':');
            let _col = parts.next()?;
            let line: u32 = parts.next()?.parse().ok()?;
            let file = parts.next()?.to_string();
            // `Store.remember` → `remember`, `Timeout.tick [as _onTimeout]` → `tick`: the
            // SFI's name has neither the receiver's class nor the property it was called as.
            let func = func.split(" [as ").next().unwrap_or(func);
            let short = func.rsplit('.').next().unwrap_or(func).to_string();
            Some((short, file, line))
        })
        .collect()
}

/// `(syscall number, user sp)` of a sleeping thread, from `/proc/PID/task/TID/syscall`.
fn syscall_of(pid: u32) -> Option<(i64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/syscall")).ok()?;
    let f: Vec<&str> = s.split_whitespace().collect();
    if f.len() < 9 {
        return None;
    }
    Some((f[0].parse().ok()?, u64::from_str_radix(f[7].trim_start_matches("0x"), 16).ok()?))
}

/// One JS frame read off the stack.
#[derive(Debug)]
struct Frame {
    name: JsFunctionName,
    /// Interpreted frames: the bytecode offset and the line it gives.
    bytecode_offset: Option<u32>,
    line: Option<u32>,
}

/// The JS frames on the stack `[sp, top)`, innermost first (the prototype's `find_js_frames`).
fn js_frames(mem: &ProcMem, layout: &Layout, sp: u64, stack: &[u8], scripts: &mut ScriptCache) -> Vec<Frame> {
    let top = sp + stack.len() as u64;
    let word = |at: i64| -> Option<u64> {
        let at = u64::try_from(at).ok()?;
        if at < sp || at + 8 > top {
            return None;
        }
        let o = (at - sp) as usize;
        Some(u64::from_le_bytes(stack[o..o + 8].try_into().unwrap()))
    };
    let is_function = |v: u64| heap::sfi_of_function(mem, layout, v).is_ok();
    // The lowest frame pointer whose function slot holds a JSFunction and whose saved fp points
    // up the stack.
    let start = (sp + 64..top).step_by(8).find(|&fp| {
        let f = fp as i64;
        word(f + layout.fp_function).is_some_and(is_function)
            && word(f).is_some_and(|next| next > fp && next < top && next - fp < 1 << 16)
    });
    let mut frames = Vec::new();
    let mut fp = start;
    let mut steps = 0;
    while let Some(f) = fp.filter(|&f| f >= sp && f < top && steps < 256) {
        steps += 1;
        let fi = f as i64;
        let context = word(fi + layout.fp_context).unwrap_or(1);
        if !heap::is_smi(context) {
            // Not a typed frame (whose marker is a SMI): a JS frame if its function slot says so.
            if let Some(sfi) = word(fi + layout.fp_function).and_then(|v| heap::sfi_of_function(mem, layout, v).ok()) {
                let name = heap::name_sfi_cached(mem, layout, sfi, scripts)
                    .unwrap_or_else(|e| panic!("frame at fp {f:#x}: SFI {sfi:#x} not named: {e}"));
                // Interpreted: a SMI offset, and a BytecodeArray in its slot.
                let array = word(fi + layout.fp_bytecode_array).unwrap_or(0);
                let interpreted = heap::instance_type(mem, layout, array).ok() == Some(layout.type_bytecode_array);
                let bytecode_offset = word(fi + layout.fp_bytecode_offset)
                    .filter(|_| interpreted)
                    .and_then(|slot| positions::bytecode_offset_from_slot(layout, slot));
                let line = bytecode_offset.and_then(|off| {
                    positions::line_at_bytecode_offset(mem, layout, sfi, &name, off)
                        .unwrap_or_else(|e| panic!("{}: line at bytecode offset {off}: {e}", name.name))
                });
                frames.push(Frame { name, bytecode_offset, line });
            }
        }
        fp = word(fi).filter(|&next| next > f);
    }
    frames
}

#[test]
fn names_js_frames_of_a_running_node() {
    require_root();
    let node = which_node();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/v8_park.js");
    let child = Command::new(&node)
        .arg(&script)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", node.display()));
    let mut node_proc = Node(child);
    let pid = node_proc.0.id();

    // V8's own stack at the park, printed first.
    let mut first = String::new();
    BufReader::new(node_proc.0.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let v8_lines: Vec<String> = serde_json::from_str(first.trim()).unwrap_or_else(|e| panic!("fixture printed {first:?}: {e}"));
    let truth = parse_v8_stack(&v8_lines);
    eprintln!("V8's stack: {truth:#?}");
    for f in ["leakyHandler", "remember", "viaArrow", "tick"] {
        assert!(truth.iter().any(|t| t.0 == f), "V8's own stack lacks {f}: {v8_lines:#?}");
    }

    // The object that holds V8 (the executable, or libnode), read as the process maps it.
    let entries = maps::read_maps(pid).unwrap();
    let object: &MapEntry = entries
        .iter()
        .find(|e| e.is_exec() && e.path.as_deref().is_some_and(memprof::runtime::v8::elf::looks_like_v8))
        .unwrap_or_else(|| panic!("pid {pid}: no node/libnode mapping"));
    let name = object.path.clone().unwrap();
    let elf = V8Elf::read(&maps::map_files_path(pid, object), &name)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .unwrap_or_else(|| panic!("{name}: no v8dbg metadata"));
    let layout = Layout::from_elf(&elf).unwrap_or_else(|e| panic!("{name}: {e}"));
    eprintln!("{name}: V8 {}, {} fallbacks", layout.version, layout.fallbacks.len());

    // Wait for the park (futex), then read the stack; again if a wait ended meanwhile.
    let mem = ProcMem::new(pid);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut scripts = ScriptCache::default();
    let frames = loop {
        assert!(Instant::now() < deadline, "pid {pid}: no JS frames found while parked in a futex");
        let Some((202, sp)) = syscall_of(pid) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let stack_map = maps::lookup(&entries, sp).unwrap_or_else(|| panic!("sp {sp:#x} in no mapping"));
        let stack = mem.bytes(sp, (stack_map.end - sp) as usize).expect("the main thread's stack");
        let frames = js_frames(&mem, &layout, sp, &stack, &mut scripts);
        if frames.iter().any(|f| f.name.name == "leakyHandler") {
            break frames;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    for f in &frames {
        eprintln!(
            "{:<14} {:?} file {:?} defined at line {:?}, bytecode offset {:?} → line {:?}",
            f.name.name,
            f.name.name_from,
            f.name.file(),
            f.name.start_line,
            f.bytecode_offset,
            f.line
        );
    }

    // Every user function, named, with this script, in V8's order, at V8's lines; each
    // defined where the fixture defines it.
    let source = std::fs::read_to_string(&script).unwrap();
    let defined = |needle: &str| source.lines().position(|l| l.contains(needle)).map(|i| i as u32 + 1);
    let definitions = BTreeMap::from([
        ("leakyHandler", defined("function leakyHandler(")),
        ("remember", defined("remember(ms) {")),
        ("viaArrow", defined("const viaArrow =")),
        ("tick", defined("function tick(")),
    ]);
    let path = script.to_str().unwrap();
    let ours: Vec<&Frame> = frames.iter().filter(|f| definitions.contains_key(f.name.name.as_str())).collect();
    let order: Vec<&str> = ours.iter().map(|f| f.name.name.as_str()).collect();
    assert_eq!(order, ["leakyHandler", "remember", "viaArrow", "tick"], "JS frames read: {frames:#?}");
    for f in ours {
        let n = f.name.name.as_str();
        assert_eq!(f.name.file(), Some(path), "{n}: file");
        let (_, v8_file, v8_line) = truth.iter().find(|t| t.0 == n).unwrap();
        assert_eq!(v8_file, path);
        assert_eq!(f.name.start_line, definitions[n], "{n}: first line (ScopeInfo positions)");
        // Interpreted frames (the fixture's functions run too rarely to be compiled) give the
        // line of their call site, which must be V8's.
        assert!(f.bytecode_offset.is_some(), "{n}: not an interpreted frame: {f:?}");
        assert_eq!(f.line, Some(*v8_line), "{n}: line at bytecode offset {:?}", f.bytecode_offset);
    }
    // Node's own timer code (listOnTimeout, processTimers) too: named, placed in
    // node:internal/timers at V8's lines.
    for (n, v8_file, v8_line) in truth.iter().filter(|t| !definitions.contains_key(t.0.as_str())) {
        let f = frames.iter().find(|f| &f.name.name == n).unwrap_or_else(|| panic!("{n}: in V8's stack, not read"));
        assert_eq!(f.name.file(), Some(v8_file.as_str()), "{n}: file");
        match f.bytecode_offset {
            Some(_) => assert_eq!(f.line, Some(*v8_line), "{n}: line"),
            None => assert!(f.name.start_line.is_some_and(|l| l <= *v8_line), "{n}: {f:?}"),
        }
    }
    // Line ends computed from each script's source equal V8's own (`Script.line_ends`, which
    // the stack trace made V8 compute). Node's built-in modules' sources are external strings,
    // read through their cached data pointer.
    let mut checked = 0;
    for f in &frames {
        let script = f.name.script.as_ref().unwrap();
        let source = heap::field(&mem, script.addr, layout.script_source, "Script.source").unwrap();
        let kind = heap::instance_type(&mem, &layout, source).unwrap();
        let ours = strings::line_ends(&mem, &layout, source, heap::MAX_SOURCE_UNITS)
            .unwrap_or_else(|e| panic!("{:?}: source (type {kind}) unreadable: {e}", script.name));
        eprintln!("{:?}: source type {kind}, {} lines, line ends from {:?}", script.name, ours.len(), script.line_ends_from);
        if script.line_ends_from == LineEndsFrom::LineEnds {
            assert_eq!(ours, script.line_ends, "{:?}: line ends from the source differ from V8's", script.name);
            checked += 1;
        }
    }
    assert!(checked > 0, "V8 computed no script's line ends: nothing to compare with");
    let timers = frames.iter().find(|f| f.name.file() == Some("node:internal/timers")).expect("a frame of node:internal/timers");
    let source = heap::field(&mem, timers.name.script.as_ref().unwrap().addr, layout.script_source, "Script.source").unwrap();
    let kind = heap::instance_type(&mem, &layout, source).unwrap();
    assert_eq!(kind & layout.string_representation_mask, layout.external_string_tag, "node:internal/timers's source is external");
    drop(node_proc);
}

/// The host's node (V8 11.3) carries its deoptimization translation opcode tables, found by
/// content (`runtime/v8/opcodes.rs`): names and operand counts agree with V8 11.3's
/// `translation-opcode.h`.
#[test]
fn translation_opcodes_of_the_host_node() {
    let node = which_node();
    let real = std::fs::canonicalize(&node).unwrap();
    let elf = V8Elf::read(&real, "node").unwrap().expect("node has v8dbg metadata");
    let ops = elf.opcodes.expect("the opcode tables of the host's node");
    assert_eq!(ops.names.len(), ops.counts.len());
    let count = |name: &str| ops.id(name).map(|i| ops.counts[usize::from(i)]);
    assert_eq!(count("BEGIN_WITH_FEEDBACK"), Some(3), "{ops:?}");
    assert_eq!(count("INTERPRETED_FRAME_WITH_RETURN"), Some(5), "{ops:?}");
    assert_eq!(count("INTERPRETED_FRAME_WITHOUT_RETURN"), Some(3), "{ops:?}");
    assert_eq!(count("MATCH_PREVIOUS_TRANSLATION"), Some(1), "{ops:?}");
    assert_eq!(count("OPTIMIZED_OUT"), Some(0), "{ops:?}");
}
