//! Finding V8 in a process: the executable object named like node (`node`, `nodejs`,
//! `libnode.so.*`) that carries `v8dbg_*` metadata, read through `/proc/PID/map_files` (a
//! container's own node, not the host's), its layout, and the [`V8Proc`] its kernel-side walker
//! is given.

use std::{collections::HashMap, sync::Arc};

use memprof_common::v8::{V8_TEXT_RANGES, V8_WINDOW_WORDS, V8Proc};

use super::elf::{BytecodeSizes, V8Elf, looks_like_v8};
use super::layout::Layout;
use crate::target::maps::{self, MapEntry};

/// (device major, device minor, inode) of a mapped file.
pub type ObjectKey = (u32, u32, u64);

/// What one V8 object gives (parsed once per file).
#[derive(Clone)]
pub struct V8Object {
    pub name: String,
    pub version: String,
    pub layout: Result<Arc<Layout>, String>,
    pub sizes: Option<Arc<BytecodeSizes>>,
    pub opcodes: Option<Arc<super::opcodes::Opcodes>>,
}

/// Parsed objects by file (None: not V8, or unreadable).
#[derive(Default)]
pub struct ElfCache {
    objects: HashMap<ObjectKey, Option<Arc<V8Object>>>,
}

/// What looking at a process found.
pub enum Inspection {
    NotV8,
    /// V8, walkable: its object's key, what it gives, and its executable mappings (builtins).
    Found { key: ObjectKey, object: Arc<V8Object>, text: Vec<(u64, u64)> },
}

/// Looks for a V8 object among `pid`'s executable file mappings.
pub fn inspect(pid: u32, entries: &[MapEntry], cache: &mut ElfCache) -> Inspection {
    for e in entries.iter().filter(|e| e.is_exec() && e.is_file_backed()) {
        let Some(path) = e.path.as_deref().filter(|p| looks_like_v8(p)) else { continue };
        let key = (e.dev_major, e.dev_minor, e.inode);
        let object = cache
            .objects
            .entry(key)
            .or_insert_with(|| read_object(pid, e, path))
            .clone();
        if let Some(object) = object {
            let text = entries
                .iter()
                .filter(|m| m.is_exec() && (m.dev_major, m.dev_minor, m.inode) == key)
                .map(|m| (m.start, m.end))
                .collect();
            return Inspection::Found { key, object, text };
        }
    }
    Inspection::NotV8
}

fn read_object(pid: u32, e: &MapEntry, path: &str) -> Option<Arc<V8Object>> {
    let elf = match V8Elf::read(&maps::map_files_path(pid, e), path) {
        Ok(Some(elf)) => elf,
        Ok(None) => return None,
        Err(err) => {
            log::debug!("pid {pid}: {path}: {err}");
            return None;
        }
    };
    let version = elf.version.map_or_else(|| "unknown".to_string(), |v| v.to_string());
    let layout = Layout::from_elf(&elf).map(Arc::new).map_err(|e| e.to_string());
    let layout = layout.and_then(|l| walker_data(&l).map(|_| l));
    Some(Arc::new(V8Object {
        name: path.to_string(),
        version,
        layout,
        sizes: elf.bytecode_sizes.map(Arc::new),
        opcodes: elf.opcodes.map(Arc::new),
    }))
}

/// The window index of the fp-relative slot at `off`.
fn window_index(off: i64, what: &str) -> Result<u32, String> {
    let words = V8_WINDOW_WORDS as i64;
    if off % 8 != 0 || off >= 0 || off < -8 * words {
        return Err(format!("frame slot {what} at fp{off:+} lies outside the {}-byte window the walker reads", 8 * words));
    }
    Ok((words + off / 8) as u32)
}

/// What the kernel-side walker needs for a process whose V8 object's executable mappings are
/// `text`.
pub fn walker_data_for(l: &Layout, text: &[(u64, u64)]) -> Result<V8Proc, String> {
    let mut p = walker_data(l)?;
    for (i, &(start, end)) in text.iter().take(V8_TEXT_RANGES).enumerate() {
        p.text[i] = [start, end];
        p.text_count = i as u32 + 1;
    }
    Ok(p)
}

/// What the kernel-side walker needs, checked against what it can do.
pub fn walker_data(l: &Layout) -> Result<V8Proc, String> {
    let small = |v: u64, what: &str| -> Result<u32, String> {
        if v < 4096 { Ok(v as u32) } else { Err(format!("{what} offset {v} is implausible")) }
    };
    Ok(V8Proc {
        idx_context: window_index(l.fp_context, "context")?,
        idx_function: window_index(l.fp_function, "function")?,
        idx_bytecode_array: window_index(l.fp_bytecode_array, "bytecode array")?,
        idx_bytecode_offset: window_index(l.fp_bytecode_offset, "bytecode offset")?,
        type_js_function_first: u32::from(l.type_js_function_first),
        type_js_function_last: u32::from(l.type_js_function_last),
        type_sfi: u32::from(l.type_sfi),
        type_bytecode_array: u32::from(l.type_bytecode_array),
        off_map: small(l.map, "HeapObject.map")?,
        off_instance_type: small(l.map_instance_type, "Map.instance_type")?,
        off_js_function_shared: small(l.js_function_shared, "JSFunction.shared")?,
        off_sfi_name: small(l.sfi_name_or_scope_info, "SharedFunctionInfo.name_or_scope_info")?,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_indices() {
        assert_eq!(window_index(-8, "x"), Ok(7));
        assert_eq!(window_index(-64, "x"), Ok(0));
        assert!(window_index(-72, "x").is_err());
        assert!(window_index(-4, "x").is_err());
        assert!(window_index(0, "x").is_err());
    }
}
