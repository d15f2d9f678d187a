//! Pages of the target's own mappings that `madvise(DONTNEED/FREE/REMOVE)` dropped. They stop
//! counting with their mapping (`Mappings::discard`) and are registered in the kernel's
//! `DISCARDED` bitmap, so that a later touch — the page comes back, zero-filled — is recorded by
//! the page-fault program under the stack that touched it. A registration leaves when its range
//! is unmapped, mapped over, moved, or changed by `mprotect` (a commit makes the mapping count
//! the range again), and the page records made in it are released with it.

use std::collections::{BTreeMap, HashMap};

use aya::maps::{HashMap as BpfHashMap, MapData};
use memprof_common::{DISCARD_GRANULE_SHIFT, DiscardBits, DiscardKey};

const PAGE: u64 = 4096;

/// The registered ranges, per process, and the kernel's bitmap.
pub struct Discarded {
    map: Option<BpfHashMap<MapData, DiscardKey, DiscardBits>>,
    by_pid: HashMap<u32, BTreeMap<u64, u64>>,
    /// Bytes registered so far (statistics).
    pub bytes: u64,
}

impl Discarded {
    pub fn new(map: Option<BpfHashMap<MapData, DiscardKey, DiscardBits>>) -> Discarded {
        Discarded { map, by_pid: HashMap::new(), bytes: 0 }
    }

    /// Registers [start, end) of `pid` (page-aligned).
    pub fn add(&mut self, pid: u32, start: u64, end: u64) {
        if start >= end {
            return;
        }
        self.bytes += end - start;
        self.by_pid.entry(pid).or_default().insert(start, end);
        self.set_bits(pid, start, end, true);
    }

    /// Unregisters what of [addr, addr+len) is registered; returns those parts (their page
    /// records are the caller's to release).
    pub fn remove(&mut self, pid: u32, addr: u64, len: u64) -> Vec<(u64, u64)> {
        let end = addr.saturating_add(len);
        let Some(ranges) = self.by_pid.get_mut(&pid) else { return Vec::new() };
        let hits: Vec<(u64, u64)> = ranges
            .range(..end)
            .rev()
            .take_while(|&(_, &e)| e > addr)
            .map(|(&s, &e)| (s, e))
            .collect();
        let mut removed = Vec::new();
        for (s, e) in hits {
            ranges.remove(&s);
            if s < addr {
                ranges.insert(s, addr);
            }
            if e > end {
                ranges.insert(end, e);
            }
            removed.push((s.max(addr), e.min(end)));
        }
        if ranges.is_empty() {
            self.by_pid.remove(&pid);
        }
        for &(s, e) in &removed {
            self.set_bits(pid, s, e, false);
        }
        removed
    }

    /// Drops everything of `pid` (it exited or replaced its image).
    pub fn forget(&mut self, pid: u32) {
        if let Some(ranges) = self.by_pid.remove(&pid) {
            for (s, e) in ranges {
                self.set_bits(pid, s, e, false);
            }
        }
    }

    /// Sets or clears the pages of [start, end) in the kernel's bitmap, granule by granule.
    fn set_bits(&mut self, pid: u32, start: u64, end: u64, on: bool) {
        let Some(map) = self.map.as_mut() else { return };
        let mut page = start & !(PAGE - 1);
        while page < end {
            let granule = page >> DISCARD_GRANULE_SHIFT;
            let key = DiscardKey { tgid: pid, _pad: 0, granule };
            let mut bits = map.get(&key, 0).unwrap_or_default();
            let granule_end = ((granule + 1) << DISCARD_GRANULE_SHIFT).min(end);
            while page < granule_end {
                let (word, mask) = DiscardBits::slot(page);
                if on {
                    bits.bits[word] |= mask;
                } else {
                    bits.bits[word] &= !mask;
                }
                page += PAGE;
            }
            let result = if bits.bits.iter().all(|&w| w == 0) {
                map.remove(&key).or(Ok(()))
            } else {
                map.insert(key, bits, 0)
            };
            if let Err(err) = result {
                log::debug!("DISCARDED map update for pid {pid}: {err}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_split_on_removal() {
        let mut d = Discarded::new(None);
        d.add(1, 0x10000, 0x20000);
        d.add(1, 0x30000, 0x40000);
        assert_eq!(d.remove(1, 0x18000, 0x1c000), vec![(0x30000, 0x34000), (0x18000, 0x20000)]);
        assert_eq!(d.by_pid[&1].iter().map(|(&s, &e)| (s, e)).collect::<Vec<_>>(), vec![(0x10000, 0x18000), (0x34000, 0x40000)]);
        assert!(d.remove(2, 0, u64::MAX).is_empty());
        d.forget(1);
        assert!(d.by_pid.is_empty());
        assert_eq!(d.bytes, 0x20000);
    }
}
