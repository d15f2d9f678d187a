//! Which anonymous mappings are an allocator's own.
//!
//! An allocator call that memprof tracks covers the mappings made inside it (glibc's large
//! `malloc`, its heap growth): they are skipped in the kernel. Some allocator code runs outside
//! any tracked call: glibc creates a thread's arena inside `free` when that is the thread's
//! first allocator call (a 64 MiB reservation, once per thread), `malloc_trim`, a thread's
//! exit, fork handlers; jemalloc, tcmalloc and mimalloc have background threads. Those mappings
//! hold the blocks the allocator hands out, which are counted one by one: counting the mapping
//! too would count the bytes twice (and report a 64 MiB "leak" per thread).
//!
//! A mapping is the allocator's when a frame of its stack lies inside an allocator function
//! (symbol start to start + size: glibc's arena made inside `free`), or when every frame above
//! the syscall wrapper is code of shared libraries that define allocator functions (libc,
//! libjemalloc…): a background thread or a thread's exit, no program code involved. A program
//! calling mmap through an allocator library's interposed `mmap` (tcmalloc defines one) still has
//! its own frames above it; and the program's executable never counts as allocator code (a
//! static binary defines malloc and calls mmap for itself too).
//!
//! Where allocator code lies is worked out per process from its maps when first needed (a
//! process's first mappings may come before memprof adopted it), and again after execve or
//! dlopen.

use std::collections::HashMap;

use log::debug;

use super::elf::{ElfInfo, scan_allocator_symbols};
use crate::target::maps::{self, MapEntry};

/// Where one process's allocator code is.
#[derive(Clone, Debug, Default)]
struct Code {
    /// `[start, end)` of every allocator function (runtime addresses).
    funcs: Vec<(u64, u64)>,
    /// Executable mappings of shared objects that define allocator functions.
    objects: Vec<(u64, u64)>,
}

/// Allocator code, per process.
#[derive(Default)]
pub struct AllocatorCode {
    procs: HashMap<u32, Code>,
    /// Allocator symbols per object (device, inode).
    elf: HashMap<(u32, u32, u64), Option<ElfInfo>>,
}

impl AllocatorCode {
    /// (Re)reads where `pid`'s allocator code is (adoption, execve, dlopen).
    pub fn refresh(&mut self, pid: u32) {
        let Ok(entries) = maps::read_maps(pid) else {
            // Gone (or unreadable): not looked up again for each of its events.
            self.procs.insert(pid, Code::default());
            return;
        };
        let exe = crate::target::procs::exe_inode(pid);
        let mut code = Code::default();
        for e in entries.iter().filter(|e| e.is_exec() && e.is_file_backed()) {
            let info = self
                .elf
                .entry((e.dev_major, e.dev_minor, e.inode))
                .or_insert_with(|| {
                    scan_allocator_symbols(&maps::map_files_path(pid, e))
                        .map_err(|err| debug!("{}: {err}", e.path.as_deref().unwrap_or("?")))
                        .ok()
                })
                .clone();
            let Some(info) = info.filter(|i| !i.symbols.is_empty()) else { continue };
            add(&mut code, e, &info, exe == Some(e.inode));
        }
        self.procs.insert(pid, code);
    }

    /// Forgets an exited process.
    pub fn forget(&mut self, pid: u32) {
        self.procs.remove(&pid);
    }

    /// Whether an anonymous mapping made by `pid` with `stack` (leaf first: the syscall
    /// wrapper, then its caller...) is an allocator's own (see the module documentation).
    /// `complete`: the stack is known to reach its thread's start (a CFI walk not cut short),
    /// or cannot be known to (frame-pointer walks); a CFI walk cut short inside libc may have
    /// lost the program's frames, so it is the allocator's only through a frame inside an
    /// allocator function.
    pub fn is_internal(&mut self, pid: u32, stack: &[u64], complete: bool) -> bool {
        if !self.procs.contains_key(&pid) {
            self.refresh(pid);
        }
        let Some(code) = self.procs.get(&pid) else { return false };
        let inside = |ranges: &[(u64, u64)], pc: u64| ranges.iter().any(|&(s, e)| s <= pc && pc < e);
        let in_func = stack.iter().enumerate().any(|(i, &ip)| {
            if memprof_common::runtime::slot_kind(ip).is_some() {
                return false;
            }
            let pc = if i == 0 { ip } else { ip.wrapping_sub(1) };
            inside(&code.funcs, pc)
        });
        let only_allocator_code = complete
            && stack.len() > 1
            && stack[1..].iter().all(|&ret| memprof_common::runtime::slot_kind(ret).is_none() && inside(&code.objects, ret.wrapping_sub(1)));
        in_func || only_allocator_code
    }
}

/// Adds the allocator functions of `info` (mapped by `e`) to `code`.
fn add(code: &mut Code, e: &MapEntry, info: &ElfInfo, is_exe: bool) {
    for sym in &info.symbols {
        if sym.file_offset >= e.offset && sym.file_offset < e.offset + (e.end - e.start) {
            let start = e.start + (sym.file_offset - e.offset);
            code.funcs.push((start, start.saturating_add(sym.size.max(1))));
        }
    }
    if !is_exe {
        code.objects.push((e.start, e.end));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test process: glibc's free is allocator code, and libc's code is an allocator
    /// library's; this test's own code is neither.
    #[test]
    fn libc_code_is_allocator_code() {
        let mut a = AllocatorCode::default();
        let pid = std::process::id();
        let free = libc::free as *const () as u64;
        let mine = libc_code_is_allocator_code as *const () as u64;
        // A stack whose second frame (the wrapper's caller) is inside free.
        assert!(a.is_internal(pid, &[mine, free + 2], true));
        // A frame deeper down inside free, whether or not the stack was cut short.
        assert!(a.is_internal(pid, &[mine, mine, free + 2], true));
        assert!(a.is_internal(pid, &[mine, mine, free + 2], false));
        // The program calling mmap itself.
        assert!(!a.is_internal(pid, &[mine, mine + 1, mine + 2], true));
        assert!(!a.is_internal(pid, &[], true));
        // Only libc code above the wrapper (a thread's exit, a background thread): the
        // allocator's; unless the walk was cut short there (the program's frames may be lost).
        // Program code above an allocator library's wrapper: the program's.
        let in_libc_not_alloc = libc::strlen as *const () as u64 + 1;
        assert!(a.is_internal(pid, &[in_libc_not_alloc, in_libc_not_alloc, in_libc_not_alloc], true));
        assert!(!a.is_internal(pid, &[in_libc_not_alloc, in_libc_not_alloc, in_libc_not_alloc], false));
        assert!(!a.is_internal(pid, &[in_libc_not_alloc, in_libc_not_alloc, mine], true));

    }
}
