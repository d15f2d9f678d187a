//! pymalloc arenas that existed before memprof started.
//!
//! Where the object allocator is not probed, the kernel counts arenas page by page as their
//! pages are first touched (`memprof-ebpf/src/python/arenas.rs`); it registers the arenas it
//! sees mapped. Arenas already there when memprof starts still have untouched pages, which new
//! objects fill first: those are found here, in the process's anonymous memory, by their pool
//! headers, and registered too.
//!
//! An arena is `ARENA_SIZE` of anonymous memory carved into `POOL_SIZE`-aligned pools, in
//! order; each pool used so far starts with a `struct pool_header` (`Objects/obmalloc.c`, the
//! same 3.9–3.14):
//!
//! ```text
//! union { block *_padding; uint count; } ref;   0
//! block *freeblock;                              8
//! struct pool_header *nextpool, *prevpool;       16, 24
//! uint arenaindex, szidx, nextoffset, maxnextoffset;   32, 36, 40, 44
//! ```
//!
//! A header is believed only when its fields agree with each other the way pymalloc keeps them:
//! `maxnextoffset == POOL_SIZE - size` for its size class, `nextoffset` on a block boundary,
//! `freeblock` inside the pool. Pages never touched read as zeros and never pass.

use memprof_common::python::{PY_ARENA_GRANULE_SHIFT, PyArena, PyArenaKey};

use crate::{
    runtime::mem::{le_u32, le_u64, ProcMem},
    target::maps::MapEntry,
};

/// pymalloc's geometry on 64-bit builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub pool: u64,
    pub arena: u64,
}

/// 3.9: 4 KiB pools in 256 KiB arenas; 3.10+ (radix tree, 64-bit): 16 KiB pools in 1 MiB arenas.
pub fn geometry(minor: u32) -> Geometry {
    if minor <= 9 { Geometry { pool: 4 << 10, arena: 256 << 10 } } else { Geometry { pool: 16 << 10, arena: 1 << 20 } }
}

const HEADER: usize = 48;
/// `POOL_OVERHEAD`: the header rounded up to the 16-byte alignment.
const POOL_OVERHEAD: u64 = 48;
const ALIGNMENT: u64 = 16;
/// Size classes up to 512 bytes.
const SIZE_CLASSES: u32 = 32;
/// Pool headers read at most per process (4 GiB of 16 KiB pools).
const MAX_READS: usize = 1 << 18;

/// The arena index of the pool header `b` read at `pool`, if it is one.
pub fn pool_header(b: &[u8], pool: u64, g: Geometry) -> Option<u32> {
    let count = le_u32(b, 0)? as u64;
    let freeblock = le_u64(b, 8)?;
    let arenaindex = le_u32(b, 32)?;
    let szidx = le_u32(b, 36)?;
    let nextoffset = le_u32(b, 40)? as u64;
    let maxnextoffset = le_u32(b, 44)? as u64;
    if szidx >= SIZE_CLASSES {
        return None;
    }
    let size = (szidx as u64 + 1) * ALIGNMENT;
    let sane = maxnextoffset == g.pool - size
        && nextoffset >= POOL_OVERHEAD + size
        && nextoffset <= maxnextoffset + size
        && (nextoffset - POOL_OVERHEAD) % size == 0
        && count <= (g.pool - POOL_OVERHEAD) / size
        && (freeblock == 0 || (freeblock >= pool + POOL_OVERHEAD && freeblock < pool + g.pool && (freeblock - pool - POOL_OVERHEAD) % size == 0));
    sane.then_some(arenaindex)
}

/// The arenas found in `entries` of `pid` (anonymous, private, read-write mappings), each as
/// the range of its pools: `[first pool, first pool + ARENA_SIZE)` where pools are pages (3.9:
/// the arena starts with its first pool), else `[first pool, first pool + ARENA_SIZE -
/// POOL_SIZE)` (the arena may start up to a pool before its first pool, and then has one pool
/// less), within the mapping. Only pages already present are read (`/proc/PID/pagemap`): reading
/// one never touched would map the zero page there, and the process's first write to it would
/// no longer be a first touch.
pub fn existing(mem: &ProcMem, pid: u32, entries: &[MapEntry], g: Geometry) -> Vec<(u64, u64)> {
    let Ok(pagemap) = std::fs::File::open(format!("/proc/{pid}/pagemap")) else { return Vec::new() };
    let present = |addr: u64| {
        let mut b = [0u8; 8];
        std::os::unix::fs::FileExt::read_exact_at(&pagemap, &mut b, (addr / 4096) * 8)
            .is_ok_and(|_| u64::from_le_bytes(b) & (1 << 63) != 0)
    };
    let span = if g.pool == 4096 { g.arena } else { g.arena - g.pool };
    let mut out = Vec::new();
    let mut reads = 0usize;
    let mut buf = [0u8; HEADER];
    for e in entries.iter().filter(|e| e.path.is_none() && e.perms == *b"rw-p") {
        // (arena index, first pool)
        let mut run: Option<(u32, u64)> = None;
        let mut pool = e.start.div_ceil(g.pool) * g.pool;
        while pool + g.pool <= e.end && reads < MAX_READS {
            reads += 1;
            let found = (present(pool) && mem.read(pool, &mut buf).is_ok()).then(|| pool_header(&buf, pool, g)).flatten();
            match (found, run) {
                (Some(i), Some((j, first))) if i == j && pool - first < g.arena => {}
                (Some(i), _) => {
                    if let Some((_, first)) = run.take() {
                        out.push((first, (first + span).min(e.end)));
                    }
                    run = Some((i, pool));
                }
                (None, _) => {}
            }
            pool += g.pool;
        }
        if let Some((_, first)) = run {
            out.push((first, (first + span).min(e.end)));
        }
    }
    out
}

/// Whether the arena found at `first` (its first pool) is still there.
pub fn still_pool(mem: &ProcMem, first: u64, g: Geometry) -> bool {
    let mut buf = [0u8; HEADER];
    mem.read(first, &mut buf).is_ok() && pool_header(&buf, first, g).is_some()
}

/// The `PY_ARENAS` entries for `arenas` of `tgid`, merged with what the map already holds
/// (`existing(key)`).
pub fn entries(tgid: u32, arenas: &[(u64, u64)], existing: impl Fn(&PyArenaKey) -> Option<PyArena>) -> Vec<(PyArenaKey, PyArena)> {
    let mut out: Vec<(PyArenaKey, PyArena)> = Vec::new();
    for &(start, end) in arenas {
        for granule in (start >> PY_ARENA_GRANULE_SHIFT)..=((end - 1) >> PY_ARENA_GRANULE_SHIFT) {
            let key = PyArenaKey { tgid, _pad: 0, granule };
            let at = match out.iter().position(|(k, _)| *k == key) {
                Some(i) => i,
                None => {
                    out.push((key, existing(&key).unwrap_or_default()));
                    out.len() - 1
                }
            };
            let v = &mut out[at].1;
            // The kernel may have registered it already (mapped since it started following).
            if !(v.contains(start) && v.contains(end - 1)) {
                v.add(start, end);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(count: u32, freeblock: u64, arenaindex: u32, szidx: u32, nextoffset: u32, maxnext: u32) -> Vec<u8> {
        let mut b = vec![0u8; HEADER];
        b[0..4].copy_from_slice(&count.to_le_bytes());
        b[8..16].copy_from_slice(&freeblock.to_le_bytes());
        b[32..36].copy_from_slice(&arenaindex.to_le_bytes());
        b[36..40].copy_from_slice(&szidx.to_le_bytes());
        b[40..44].copy_from_slice(&nextoffset.to_le_bytes());
        b[44..48].copy_from_slice(&maxnext.to_le_bytes());
        b
    }

    #[test]
    fn pool_headers() {
        let g = geometry(11);
        let pool = 0x7f00_0000_4000;
        // A pool of 64-byte blocks (szidx 3), 10 handed out, the free list inside.
        let ok = header(10, pool + 48 + 64 * 5, 7, 3, 48 + 64 * 10, 16384 - 64);
        assert_eq!(pool_header(&ok, pool, g), Some(7));
        // Zeros (a page never touched), or fields that disagree.
        assert_eq!(pool_header(&[0; HEADER], pool, g), None);
        assert_eq!(pool_header(&header(10, 0, 7, 3, 48 + 64 * 10, 4096 - 64), pool, g), None);
        assert_eq!(pool_header(&header(10, 0, 7, 3, 48 + 64 * 10 + 8, 16384 - 64), pool, g), None);
        assert_eq!(pool_header(&header(10, pool + 20000, 7, 3, 48 + 64 * 10, 16384 - 64), pool, g), None);
        assert_eq!(pool_header(&header(10, 0, 7, 40, 48, 16384 - 656), pool, g), None);
        assert_eq!(pool_header(&header(1000, 0, 7, 3, 48 + 64 * 10, 16384 - 64), pool, g), None);
        // 3.9's 4 KiB pools.
        assert_eq!(pool_header(&header(1, 0, 2, 0, 48 + 32, 4096 - 16), pool, geometry(9)), Some(2));
    }

    #[test]
    fn granule_entries() {
        // Two 1 MiB arenas back to back, not granule-aligned: the granule they share holds both.
        let a = (0x7f00_0004_1000, 0x7f00_0004_1000 + (1 << 20));
        let b = (a.1, a.1 + (1 << 20));
        let e = entries(9, &[a, b], |_| None);
        let shared = e.iter().find(|(k, _)| k.granule == a.1 >> PY_ARENA_GRANULE_SHIFT).unwrap();
        assert!(shared.1.contains(a.1 - 1) && shared.1.contains(a.1));
        assert_eq!(e.len(), 9);
        // Already registered by the kernel: kept as it is.
        let mut known = PyArena::default();
        known.add(a.0 - 0x1000, a.1);
        let e = entries(9, &[a], |_| Some(known));
        assert!(e.iter().all(|(_, v)| *v == known));
    }
}
