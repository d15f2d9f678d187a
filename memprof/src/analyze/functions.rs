//! Live memory by runtime function: for a Python service, the question is "which Python
//! function keeps allocating what is never freed", not which C function of the interpreter
//! called malloc. Each stack counts for its innermost runtime frame (the Python function that
//! was running when the memory was allocated); stacks without one are left out.

use std::collections::HashMap;

use serde::Serialize;

use crate::report::{Frame, StackReport};

/// The modules of runtime frames (see `crate::runtime`).
pub const RUNTIME_MODULES: &[&str] = &[crate::runtime::python::PYTHON_MODULE, crate::runtime::v8::frames::JS_MODULE];

/// Live memory of the stacks whose innermost runtime frame is one function.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct FunctionReport {
    /// `qualname (file.py)`.
    pub function: String,
    /// The source file, as the runtime names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The lines of its allocating statements, by live bytes (largest first).
    pub lines: Vec<u32>,
    pub bytes: u64,
    pub allocations: u64,
    /// Summed growth of its stacks.
    pub growth_bytes_per_s: f64,
    /// Growth of its stacks classified `leak`.
    pub leak_growth_bytes_per_s: f64,
    /// `leak` when leaking stacks hold most of its bytes, else the class holding most.
    pub class: String,
    pub stacks: usize,
}

/// The key of a function's series in the history: not a stack (no stack starts with it). Its
/// full file path is part of it (two files may have functions of the same name).
pub fn history_key(f: &FunctionReport) -> Vec<String> {
    vec!["\u{1}function".to_string(), f.function.clone(), f.file.clone().unwrap_or_default()]
}

/// (history key, live bytes, live allocations, allocations ever made) of each function of
/// `stacks`: recorded in the history beside the stacks, so a function is classified by its own
/// series (its stacks may each be too short-lived or too small to tell).
pub fn series_entries(stacks: &[StackReport]) -> Vec<(Vec<String>, u64, u64, u64)> {
    let mut totals: HashMap<(String, Option<String>), u64> = HashMap::new();
    for s in stacks.iter().filter(|s| s.bytes > 0) {
        if let Some(f) = runtime_leaf(s) {
            *totals.entry((display(f), f.file.clone())).or_default() += s.total_allocations;
        }
    }
    by_function(stacks)
        .into_iter()
        .map(|f| {
            let total = totals.get(&(f.function.clone(), f.file.clone())).copied().unwrap_or(0);
            (history_key(&f), f.bytes, f.allocations, total)
        })
        .collect()
}

/// `qualname (file.py)`.
fn display(f: &Frame) -> String {
    match f.file.as_deref().map(|p| p.rsplit('/').next().unwrap_or(p)) {
        Some(b) => format!("{} ({b})", f.function),
        None => f.function.clone(),
    }
}

/// The innermost runtime frame of a stack (frames are root → leaf).
pub fn runtime_leaf(stack: &StackReport) -> Option<&Frame> {
    let runtime = |f: &&Frame| RUNTIME_MODULES.contains(&f.module.as_str());
    // Node's own modules (`node:buffer`'s `alloc`, `FastBuffer`) are the runtime's library, not
    // the service: the innermost frame of the service's own code names the site.
    let own = |f: &&Frame| {
        !(f.module == crate::runtime::v8::frames::JS_MODULE && is_node_internal(f)) || f.function == crate::runtime::v8::V8_HEAP_FRAME
    };
    stack.frame_details.iter().rev().filter(runtime).find(own).or_else(|| stack.frame_details.iter().rev().find(runtime))
}

/// A JS frame of Node's built-in modules (`node:internal/timers`, `node:buffer`), or of a
/// function without a script (a builtin such as `Array.prototype.push`).
fn is_node_internal(f: &Frame) -> bool {
    f.file.as_deref().is_none_or(|file| file.starts_with("node:"))
}

/// Rolls classified stacks up by their innermost runtime frame; largest leak growth first, then
/// bytes.
pub fn by_function(stacks: &[StackReport]) -> Vec<FunctionReport> {
    let mut out: HashMap<(String, Option<String>), (FunctionReport, HashMap<&str, u64>, HashMap<u32, u64>)> =
        HashMap::new();
    for s in stacks.iter().filter(|s| s.bytes > 0) {
        let Some(f) = runtime_leaf(s) else { continue };
        let key = (f.function.clone(), f.file.clone());
        let e = out.entry(key).or_insert_with(|| {
            (FunctionReport { function: display(f), file: f.file.clone(), ..Default::default() }, HashMap::new(), HashMap::new())
        });
        e.0.bytes += s.bytes;
        e.0.allocations += s.allocations;
        e.0.growth_bytes_per_s += s.growth_bytes_per_s;
        if s.class == "leak" {
            e.0.leak_growth_bytes_per_s += s.growth_bytes_per_s;
        }
        e.0.stacks += 1;
        *e.1.entry(s.class.as_str()).or_default() += s.bytes;
        if let Some(line) = f.line {
            *e.2.entry(line).or_default() += s.bytes;
        }
    }
    let mut v: Vec<FunctionReport> = out
        .into_values()
        .map(|(mut r, classes, lines)| {
            let leak = classes.get("leak").copied().unwrap_or(0);
            r.class = if leak * 2 >= r.bytes && leak > 0 {
                "leak".into()
            } else {
                let mut c: Vec<(&str, u64)> = classes.into_iter().collect();
                c.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
                c.first().map_or("unknown", |c| if c.0.is_empty() { "unknown" } else { c.0 }).to_string()
            };
            let mut l: Vec<(u32, u64)> = lines.into_iter().collect();
            l.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            r.lines = l.into_iter().map(|x| x.0).collect();
            r
        })
        .collect();
    v.sort_by(|a, b| {
        b.leak_growth_bytes_per_s
            .total_cmp(&a.leak_growth_bytes_per_s)
            .then(b.bytes.cmp(&a.bytes))
            .then(a.function.cmp(&b.function))
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str, module: &str, file: Option<&str>, line: Option<u32>) -> Frame {
        Frame {
            function: function.into(),
            file: file.map(Into::into),
            line,
            module: module.into(),
            offset: 0,
            inlined: false,
        }
    }

    fn stack(py: &[(&str, u32)], leaf: &str, bytes: u64, growth: f64, class: &str) -> StackReport {
        let mut details = vec![frame("main", "/bin/python3", None, None)];
        for (f, l) in py {
            details.push(frame(f, "[python]", Some("/app/api.py"), Some(*l)));
        }
        details.push(frame(leaf, "/lib/libpython3.so", None, None));
        StackReport {
            frames: details.iter().map(Frame::display_name).collect(),
            frame_details: details,
            bytes,
            allocations: 1,
            growth_bytes_per_s: growth,
            class: class.into(),
            ..Default::default()
        }
    }

    #[test]
    fn rolls_up_by_innermost_python_frame() {
        let stacks = vec![
            stack(&[("main", 10), ("Exporter.export", 21)], "PyTuple_New", 3000, 30.0, "leak"),
            stack(&[("main", 10), ("Exporter.export", 22)], "PyDict_New", 1000, 10.0, "leak"),
            stack(&[("main", 12), ("handle", 40)], "PyTuple_New", 5000, 0.0, "churn"),
            stack(&[], "malloc", 9000, 0.0, "unknown"),
        ];
        let f = by_function(&stacks);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].function, "Exporter.export (api.py)");
        assert_eq!((f[0].bytes, f[0].stacks, f[0].lines.clone()), (4000, 2, vec![21, 22]));
        assert_eq!(f[0].class, "leak");
        assert!((f[0].leak_growth_bytes_per_s - 40.0).abs() < 1e-9);
        assert_eq!(f[1].function, "handle (api.py)");
        assert_eq!(f[1].class, "churn");
    }
}
