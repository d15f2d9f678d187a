//! Anonymous mappings made directly by the target (not by its allocator), kept per process as an
//! interval map so partial munmaps split them and mremap moves them. Each byte is kept once.
//!
//! Only accessible bytes count: a reservation made `PROT_NONE` (address space set aside for a
//! heap, a runtime's reserved range, a guard) holds no memory until parts of it are made
//! accessible with `mprotect`, which is followed range by range (and back to `PROT_NONE`).

use std::collections::{BTreeMap, HashMap};

/// Who made a mapping: the stack id and the extra leaf return address (see `MemEvent`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MappingOrigin {
    pub stack_id: u32,
    pub leaf_ret: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Region {
    end: u64,
    origin: MappingOrigin,
    /// Not `PROT_NONE`: its bytes count.
    accessible: bool,
}

/// Live anonymous mappings of every process.
#[derive(Debug, Default)]
pub struct Mappings {
    by_pid: HashMap<u32, BTreeMap<u64, Region>>,
    /// Allocations ever recorded per (pid, origin): count and bytes.
    totals: HashMap<(u32, MappingOrigin), (u64, u64)>,
}

impl Mappings {
    /// A new mapping [addr, addr+len) (`accessible`: not `PROT_NONE`). An overlapping old
    /// record (MAP_FIXED over it) is replaced.
    pub fn map(&mut self, pid: u32, addr: u64, len: u64, origin: MappingOrigin, accessible: bool) {
        if len == 0 {
            return;
        }
        self.unmap(pid, addr, len);
        self.by_pid.entry(pid).or_default().insert(addr, Region { end: addr + len, origin, accessible });
        let t = self.totals.entry((pid, origin)).or_default();
        t.0 += 1;
        if accessible {
            t.1 += len;
        }
    }

    /// `mprotect`: the tracked parts of [addr, addr+len) become accessible or not.
    pub fn protect(&mut self, pid: u32, addr: u64, len: u64, accessible: bool) {
        let Some(regions) = self.by_pid.get_mut(&pid) else { return };
        let end = addr.saturating_add(len);
        let overlapping = overlapping(regions, addr, end);
        let mut committed = Vec::new();
        for (start, r) in overlapping {
            if r.accessible == accessible {
                continue;
            }
            regions.remove(&start);
            let (mid_start, mid_end) = (start.max(addr), r.end.min(end));
            if start < mid_start {
                regions.insert(start, Region { end: mid_start, ..r });
            }
            regions.insert(mid_start, Region { end: mid_end, accessible, ..r });
            if mid_end < r.end {
                regions.insert(mid_end, r);
            }
            if accessible {
                committed.push((r.origin, mid_end - mid_start));
            }
        }
        for (origin, bytes) in committed {
            self.totals.entry((pid, origin)).or_default().1 += bytes;
        }
    }

    /// `madvise(DONTNEED/FREE/REMOVE)`: the accessible tracked parts of [addr, addr+len) stop
    /// counting (their pages are gone; one touched again is counted by its page fault, see
    /// `discarded.rs`). Returns those parts.
    pub fn discard(&mut self, pid: u32, addr: u64, len: u64) -> Vec<(u64, u64)> {
        let Some(regions) = self.by_pid.get(&pid) else { return Vec::new() };
        let end = addr.saturating_add(len);
        let mut parts: Vec<(u64, u64)> = overlapping(regions, addr, end)
            .into_iter()
            .filter(|(_, r)| r.accessible)
            .map(|(start, r)| (start.max(addr), r.end.min(end)))
            .collect();
        parts.sort_unstable();
        self.protect(pid, addr, len, false);
        parts
    }

    /// Removes [addr, addr+len) from whatever records overlap it, splitting them as needed.
    pub fn unmap(&mut self, pid: u32, addr: u64, len: u64) {
        let Some(regions) = self.by_pid.get_mut(&pid) else { return };
        let end = addr.saturating_add(len);
        let overlapping = overlapping(regions, addr, end);
        for (start, r) in overlapping {
            regions.remove(&start);
            if start < addr {
                regions.insert(start, Region { end: addr, ..r });
            }
            if r.end > end {
                regions.insert(end, Region { end: r.end, ..r });
            }
        }
    }

    /// mremap: the part of [old, old+old_len) that we track moves to [new, new+new_len) (only the
    /// first record's origin is kept; growth is attributed to it).
    pub fn remap(&mut self, pid: u32, old: u64, old_len: u64, new: u64, new_len: u64) {
        let Some(regions) = self.by_pid.get(&pid) else { return };
        let first = regions
            .range(..old.saturating_add(old_len.max(1)))
            .next_back()
            .filter(|(_, r)| r.end > old)
            .map(|(_, r)| *r);
        let Some(first) = first else { return };
        self.unmap(pid, old, old_len);
        self.unmap(pid, new, new_len);
        self.by_pid.entry(pid).or_default().insert(new, Region { end: new + new_len, ..first });
    }

    /// Drops a process's records; returns the bytes it still had mapped.
    pub fn forget(&mut self, pid: u32) -> u64 {
        self.totals.retain(|(p, _), _| *p != pid);
        self.by_pid
            .remove(&pid)
            .map(|r| r.iter().filter(|(_, r)| r.accessible).map(|(s, r)| r.end - s).sum())
            .unwrap_or(0)
    }

    /// Live bytes and mapping counts per (pid, origin), plus totals ever mapped.
    /// Every stack a mapping of a live process was made from (live or not: its totals show).
    pub fn stack_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.totals.keys().map(|(_, o)| o.stack_id)
    }

    pub fn live(&self) -> Vec<(u32, MappingOrigin, u64, u64, u64, u64)> {
        let mut live: HashMap<(u32, MappingOrigin), (u64, u64)> = HashMap::new();
        for (pid, regions) in &self.by_pid {
            for (start, r) in regions.iter().filter(|(_, r)| r.accessible) {
                let e = live.entry((*pid, r.origin)).or_default();
                e.0 += r.end - start;
                e.1 += 1;
            }
        }
        let mut out: Vec<_> = self
            .totals
            .iter()
            .map(|(&(pid, origin), &(tc, tb))| {
                let (lb, lc) = live.get(&(pid, origin)).copied().unwrap_or_default();
                (pid, origin, lb, lc, tb, tc)
            })
            .collect();
        out.sort_unstable();
        out
    }
}

/// The records overlapping [addr, end), highest first.
fn overlapping(regions: &BTreeMap<u64, Region>, addr: u64, end: u64) -> Vec<(u64, Region)> {
    regions.range(..end).rev().take_while(|(_, r)| r.end > addr).map(|(s, r)| (*s, *r)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const O: MappingOrigin = MappingOrigin { stack_id: 1, leaf_ret: 0 };
    const P: u64 = 4096;

    fn live_bytes(m: &Mappings) -> u64 {
        m.live().iter().map(|l| l.2).sum()
    }

    #[test]
    fn partial_unmaps_split() {
        let mut m = Mappings::default();
        m.map(1, 10 * P, 4 * P, O, true);
        m.unmap(1, 11 * P, P); // middle
        assert_eq!(live_bytes(&m), 3 * P);
        m.unmap(1, 10 * P, P); // head
        m.unmap(1, 13 * P, P); // tail
        assert_eq!(live_bytes(&m), P);
        m.unmap(1, 0, 100 * P); // everything around
        assert_eq!(live_bytes(&m), 0);
        assert_eq!(m.live()[0].5, 1, "one mapping ever made");
    }

    #[test]
    fn unmap_spanning_two_records_and_other_pid_untouched() {
        let mut m = Mappings::default();
        m.map(1, 10 * P, 2 * P, O, true);
        m.map(1, 12 * P, 2 * P, O, true);
        m.map(2, 10 * P, 2 * P, O, true);
        m.unmap(1, 11 * P, 2 * P);
        assert_eq!(live_bytes(&m), 2 * P + 2 * P);
        assert_eq!(m.forget(2), 2 * P);
        assert_eq!(live_bytes(&m), 2 * P);
    }

    #[test]
    fn remap_moves_and_grows() {
        let mut m = Mappings::default();
        m.map(1, 10 * P, 2 * P, O, true);
        m.remap(1, 10 * P, 2 * P, 50 * P, 5 * P);
        assert_eq!(live_bytes(&m), 5 * P);
        m.unmap(1, 50 * P, 5 * P);
        assert_eq!(live_bytes(&m), 0);
        // Remapping something we do not track changes nothing.
        m.remap(1, 90 * P, P, 95 * P, P);
        assert_eq!(live_bytes(&m), 0);
    }

    #[test]
    fn map_fixed_over_record_replaces_it() {
        let mut m = Mappings::default();
        m.map(1, 10 * P, 4 * P, O, true);
        m.map(1, 12 * P, 4 * P, MappingOrigin { stack_id: 2, leaf_ret: 0 }, true);
        assert_eq!(live_bytes(&m), 6 * P);
    }

    #[test]
    fn reservations_count_as_they_are_committed() {
        let mut m = Mappings::default();
        // A 64-page PROT_NONE reservation: nothing accessible.
        m.map(1, 100 * P, 64 * P, O, false);
        assert_eq!(live_bytes(&m), 0);
        // Commit 4 pages, then 2 more next to them, then 3 inside the first (no change).
        m.protect(1, 100 * P, 4 * P, true);
        m.protect(1, 104 * P, 2 * P, true);
        m.protect(1, 101 * P, 3 * P, true);
        assert_eq!(live_bytes(&m), 6 * P);
        // Decommit one in the middle.
        m.protect(1, 102 * P, P, false);
        assert_eq!(live_bytes(&m), 5 * P);
        // Outside any tracked mapping: ignored.
        m.protect(1, 500 * P, 4 * P, true);
        assert_eq!(live_bytes(&m), 5 * P);
        // munmap of the whole reservation.
        m.unmap(1, 100 * P, 64 * P);
        assert_eq!(live_bytes(&m), 0);
        assert_eq!(m.forget(1), 0);
    }

    #[test]
    fn madvise_discards_accessible_parts_only() {
        let mut m = Mappings::default();
        m.map(1, 100 * P, 8 * P, O, true);
        m.map(1, 200 * P, 8 * P, O, false);
        // Across the end of the first mapping, and over the reservation: only what counted.
        assert_eq!(m.discard(1, 104 * P, 100 * P), vec![(104 * P, 108 * P)]);
        assert_eq!(live_bytes(&m), 4 * P);
        // Discarded twice: nothing more.
        assert!(m.discard(1, 104 * P, 4 * P).is_empty());
        // Committed again with mprotect: counts again.
        m.protect(1, 104 * P, 2 * P, true);
        assert_eq!(live_bytes(&m), 6 * P);
    }
}

