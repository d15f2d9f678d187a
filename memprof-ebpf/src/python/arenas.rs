//! pymalloc arenas of optimised builds, counted page by page.
//!
//! An optimised (PGO) CPython inlines its object allocator into its callers, so small objects
//! cannot be tracked one by one (see `memprof/src/runtime/python/pymalloc.rs`). Counting an
//! arena as one mapping would charge 1 MiB to whichever allocation needed a new arena. Instead,
//! an anonymous mmap that returns into pymalloc's arena allocator (its address is in the
//! process's `PyProc`) registers the arena here, and its pages are recorded as they are first
//! touched, under the stack that touched them (the Python function allocating the object that
//! needed fresh memory): like `--mode rss`, for arenas only. Unmapping the arena releases them.
//! Arenas made before memprof started are registered by userspace (`runtime/python/arenas.rs`).

use aya_ebpf::{bindings::BPF_F_NO_PREALLOC, macros::map, maps::HashMap};
use memprof_common::{
    Counter,
    python::{PY_ARENA_GRANULE_SHIFT, PY_ARENA_MAX_GRANULES, PyArena, PyArenaKey},
};

use super::PY_PROCS;
use crate::{maps::count, mmap::STACK_TOP_WORDS};

/// Arenas by granule of the address space.
#[map]
static PY_ARENAS: HashMap<PyArenaKey, PyArena> = HashMap::with_max_entries(1 << 16, BPF_F_NO_PREALLOC);

#[inline(always)]
fn key(tgid: u32, granule: u64) -> PyArenaKey {
    PyArenaKey { tgid, _pad: 0, granule }
}

/// `[addr, addr+len)` was just mapped by `tgid`, the mmap wrapper's stack starting with
/// `stack_top`: when the wrapper returns into pymalloc's arena allocator (a word there is an
/// address inside that small function: its return address), registers the arena. True when
/// registered (the mapping is then not recorded as one).
#[inline(always)]
pub fn mapped(tgid: u32, addr: u64, len: u64, stack_top: &[u64; STACK_TOP_WORDS]) -> bool {
    let Some(p) = (unsafe { PY_PROCS.get(&tgid) }) else { return false };
    if p.arena_end == 0 || len == 0 || len != p.arena_len {
        return false;
    }
    let mut from_arena_allocator = false;
    let mut i = 0;
    while i < STACK_TOP_WORDS {
        let caller = stack_top[i].wrapping_sub(1);
        if caller >= p.arena_start && caller < p.arena_end {
            from_arena_allocator = true;
        }
        i += 1;
    }
    if !from_arena_allocator {
        return false;
    }
    let first = addr >> PY_ARENA_GRANULE_SHIFT;
    let last = (addr + len - 1) >> PY_ARENA_GRANULE_SHIFT;
    if last - first >= PY_ARENA_MAX_GRANULES {
        count(Counter::PyArenasUnregistered);
        return false;
    }
    let end = addr + len;
    let mut g = 0;
    while g < PY_ARENA_MAX_GRANULES {
        if first + g > last {
            break;
        }
        let k = key(tgid, first + g);
        let mut v = match unsafe { PY_ARENAS.get(&k) } {
            Some(v) => *v,
            None => PyArena::default(),
        };
        v.add(addr, end);
        if PY_ARENAS.insert(&k, &v, 0).is_err() {
            // Take back what was registered: the whole arena is one mapping instead.
            let _ = unmapped(tgid, addr, g << PY_ARENA_GRANULE_SHIFT);
            count(Counter::PyArenasUnregistered);
            return false;
        }
        g += 1;
    }
    count(Counter::PyArenas);
    true
}

/// Whether `addr` of `tgid` lies in a registered arena (of the process's current image).
#[inline(always)]
pub fn contains(tgid: u32, addr: u64) -> bool {
    match unsafe { PY_ARENAS.get(&key(tgid, addr >> PY_ARENA_GRANULE_SHIFT)) } {
        Some(a) if a.contains(addr) => unsafe { PY_PROCS.get(&tgid) }.is_some_and(|p| p.arena_end != 0),
        _ => false,
    }
}

/// `[addr, addr+len)` of `tgid` was unmapped: forgets the arenas it held. True when any did
/// (their pages are then released by the caller).
#[inline(always)]
pub fn unmapped(tgid: u32, addr: u64, len: u64) -> bool {
    if len == 0 {
        return false;
    }
    let end = addr.saturating_add(len);
    let first = addr >> PY_ARENA_GRANULE_SHIFT;
    let last = (end - 1) >> PY_ARENA_GRANULE_SHIFT;
    // pymalloc unmaps one arena at a time; a larger range is only checked at its ends.
    let wide = last - first >= PY_ARENA_MAX_GRANULES;
    let mut hit = false;
    let mut g = 0;
    while g < PY_ARENA_MAX_GRANULES {
        let granule = if !wide { first + g } else if g == 0 { first } else { last };
        if granule > last || (wide && g > 1) {
            break;
        }
        let k = key(tgid, granule);
        if let Some(v) = unsafe { PY_ARENAS.get(&k) } {
            let mut v = *v;
            if v.remove(addr, end) {
                hit = true;
                if v.is_empty() {
                    let _ = PY_ARENAS.remove(&k);
                } else {
                    let _ = PY_ARENAS.insert(&k, &v, 0);
                }
            }
        }
        g += 1;
    }
    hit
}
