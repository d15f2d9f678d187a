//! Reading the kernel's maps into snapshots: per-stack live totals (one map entry per stack, no
//! walk over allocations), mapping events from the ring buffer, and the lost-event counters.

pub mod discarded;
pub mod mappings;
mod stack_gc;

use std::collections::{BTreeMap, HashMap};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf, StackTraceMap},
};
use log::warn;
use memprof_common::{unwind::{UnwoundStack, STACK_TRUNCATED, STACK_USED_FP}, AllocKey, COUNTER_COUNT, Counter, MemEvent, MemEventKind, StackKey, StackTotals};

use discarded::Discarded;
use mappings::{MappingOrigin, Mappings};

const PROT_NONE: u64 = 0;

/// Stack id the kernel records when it could not capture a stack.
pub const NO_STACK: u32 = u32::MAX;

/// One stack of one process, as the kernel identifies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackRef {
    pub pid: u32,
    pub stack_id: u32,
    /// For mappings made from a syscall wrapper: the return address into its caller (0: none).
    pub leaf_ret: u64,
}

/// Something in the event stream the run loop must act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    /// The process made an anonymous mapping (make sure we know it).
    Mapped(u32),
    /// The process called execve (at `ts_ns`, CLOCK_MONOTONIC).
    Exec { pid: u32, ts_ns: u64 },
    /// The OOM killer chose this process (maybe not ours).
    OomVictim(u32),
    /// The process mapped a file executable (dlopen): rescan its objects.
    CodeMapped(u32),
    /// `--mode rss`: a released range too large for the kernel to walk.
    RangeReleased { pid: u32, addr: u64, len: u64 },
    /// A new stack with runtime frames.
    NewStack { pid: u32, stack_id: u32 },
    /// Pages of the process's own mappings were dropped by madvise: their next touch must be
    /// seen (page faults followed).
    Discarded(u32),
}

/// A recorded stack.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StackData {
    /// Leaf first.
    pub ips: Vec<u64>,
    /// `STACK_*` flags of the CFI unwinder; None for frame-pointer stacks (nothing known).
    pub flags: Option<u32>,
}

/// Live and total figures of one stack at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackSample {
    pub live_bytes: u64,
    pub live_count: u64,
    pub total_bytes: u64,
    pub total_count: u64,
}

/// The per-stack state at one moment.
pub type Snapshot = BTreeMap<StackRef, StackSample>;

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("BPF map {0} is missing")]
    MissingMap(&'static str),
    #[error("failed to read BPF map {name}: {source}")]
    Map { name: &'static str, source: aya::maps::MapError },
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> CollectError {
    move |source| CollectError::Map { name, source }
}

/// Reads the kernel side's state.
pub struct Collector {
    events: RingBuf<MapData>,
    pub mappings: Mappings,
    stack_cache: HashMap<u32, StackData>,
    /// Stacks come from the CFI unwinder (`USTACKS`), not `bpf_get_stackid` (`STACKS`).
    dwarf: bool,
    /// Mapping events seen (statistics).
    pub mapping_events: u64,
    /// Anonymous mappings left out as an allocator's own (made from allocator code that no
    /// tracked call covered: glibc's arena created inside `free`, a background thread).
    pub allocator_mappings: u64,
    /// Bytes and counts retired by userspace (`--mode rss` ranges too large for the kernel),
    /// per (pid, stack id), subtracted from the kernel's totals at each snapshot (userspace
    /// cannot update the kernel's totals atomically).
    released: HashMap<(u32, u32, u64), (u64, u64)>,
    /// Pages of the target's own mappings dropped by madvise (see `discarded.rs`).
    pub discarded: Discarded,
    /// Stacks found unreferenced at the last collection (see `stack_gc.rs`), and how many were
    /// deleted in all.
    gc_candidates: std::collections::HashSet<u32>,
    pub stacks_collected: u64,
}

impl Collector {
    pub fn new(bpf: &mut Ebpf, dwarf: bool) -> Result<Collector, CollectError> {
        let map = bpf.take_map("EVENTS").ok_or(CollectError::MissingMap("EVENTS"))?;
        let events = RingBuf::try_from(map).map_err(map_err("EVENTS"))?;
        let discarded = bpf.take_map("DISCARDED").and_then(|m| BpfHashMap::try_from(m).ok());
        Ok(Collector {
            events,
            mappings: Mappings::default(),
            stack_cache: HashMap::new(),
            dwarf,
            mapping_events: 0,
            allocator_mappings: 0,
            released: HashMap::new(),
            discarded: Discarded::new(discarded),
            gc_candidates: Default::default(),
            stacks_collected: 0,
        })
    }

    /// The ring buffer's file descriptor (readable when the kernel wrote events).
    pub fn events_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.events)
    }

    /// Applies every pending mapping event and returns what the caller must act on.
    /// `allocator_internal(pid, addr, len, stack, complete)`: whether an anonymous mapping made with that stack (leaf
    /// first) belongs to an allocator (its own heaps and reservations: the blocks it hands out
    /// are counted one by one instead); such mappings are left out.
    pub fn drain_events(
        &mut self,
        bpf: &Ebpf,
        allocator_internal: &mut dyn FnMut(u32, u64, u64, &[u64], bool) -> bool,
    ) -> Vec<Notice> {
        let mut notices = Vec::new();
        let mut events = Vec::new();
        while let Some(item) = self.events.next() {
            if item.len() < std::mem::size_of::<MemEvent>() {
                continue;
            }
            // SAFETY: the kernel wrote a MemEvent (repr(C), plain data); read unaligned.
            events.push(unsafe { std::ptr::read_unaligned::<MemEvent>(item.as_ptr().cast()) });
        }
        for ev in events {
            self.mapping_events += 1;
            // A range dropped by madvise and registered for page faults: whatever changes it
            // next ends the registration (and releases the pages recorded there).
            if [MemEventKind::Mmap, MemEventKind::Munmap, MemEventKind::Mremap, MemEventKind::Mprotect, MemEventKind::Madvise]
                .iter()
                .any(|&k| k as u32 == ev.kind)
            {
                for (start, end) in self.discarded.remove(ev.tgid, ev.addr, ev.len) {
                    notices.push(Notice::RangeReleased { pid: ev.tgid, addr: start, len: end - start });
                    if ev.kind == MemEventKind::Madvise as u32 {
                        // Dropped again: still registered.
                        self.discarded.add(ev.tgid, start, end);
                    }
                }
            }
            match ev.kind {
                k if k == MemEventKind::Madvise as u32 => {
                    let parts = self.mappings.discard(ev.tgid, ev.addr, ev.len);
                    for &(start, end) in &parts {
                        self.discarded.add(ev.tgid, start, end);
                    }
                    if !parts.is_empty() {
                        notices.push(Notice::Discarded(ev.tgid));
                    }
                }
                k if k == MemEventKind::Mmap as u32 => {
                    let stack_id = if ev.stack_id < 0 { NO_STACK } else { ev.stack_id as u32 };
                    notices.push(Notice::Mapped(ev.tgid));
                    let st = self.stack(bpf, stack_id);
                    let mut ips = st.ips;
                    // The wrapper's caller, where a frame-pointer walk may have skipped it or the
                    // walk stopped at the wrapper (a whole CFI walk has every frame).
                    let fp_walked = st.flags.is_none_or(|f| f & (STACK_USED_FP | STACK_TRUNCATED) != 0);
                    if fp_walked && ev.leaf_ret != 0 && !ips.is_empty() && ips.get(1) != Some(&ev.leaf_ret) {
                        ips.insert(1, ev.leaf_ret);
                    }
                    let complete = st.flags.is_none_or(|f| f & STACK_TRUNCATED == 0);
                    if allocator_internal(ev.tgid, ev.addr, ev.len, &ips, complete) {
                        self.allocator_mappings += 1;
                        continue;
                    }
                    let origin = MappingOrigin { stack_id, leaf_ret: ev.leaf_ret };
                    self.mappings.map(ev.tgid, ev.addr, ev.len, origin, ev.new_addr != PROT_NONE);
                }
                k if k == MemEventKind::Mprotect as u32 => {
                    self.mappings.protect(ev.tgid, ev.addr, ev.len, ev.new_addr != PROT_NONE)
                }
                k if k == MemEventKind::Munmap as u32 => self.mappings.unmap(ev.tgid, ev.addr, ev.len),
                k if k == MemEventKind::Mremap as u32 => {
                    self.mappings.remap(ev.tgid, ev.addr, ev.len, ev.new_addr, ev.new_len)
                }
                k if k == MemEventKind::Exec as u32 => {
                    // The old image's mappings went with it; later events are the new image's.
                    self.mappings.forget(ev.tgid);
                    self.discarded.forget(ev.tgid);
                    notices.push(Notice::Exec { pid: ev.tgid, ts_ns: ev.ts_ns });
                }
                k if k == MemEventKind::OomVictim as u32 => notices.push(Notice::OomVictim(ev.tgid)),
                k if k == MemEventKind::CodeMapped as u32 => notices.push(Notice::CodeMapped(ev.tgid)),
                k if k == MemEventKind::NewStack as u32 && ev.stack_id >= 0 => {
                    notices.push(Notice::NewStack { pid: ev.tgid, stack_id: ev.stack_id as u32 })
                }
                k if k == MemEventKind::RangeReleased as u32 => {
                    notices.push(Notice::RangeReleased { pid: ev.tgid, addr: ev.addr, len: ev.len })
                }
                _ => {}
            }
        }
        notices.dedup();
        notices
    }

    /// Reads the per-stack totals (and the mapping table) into a snapshot.
    pub fn snapshot(&mut self, bpf: &Ebpf) -> Result<Snapshot, CollectError> {
        let mut snap = Snapshot::new();
        let map = bpf.map("STACK_TOTALS").ok_or(CollectError::MissingMap("STACK_TOTALS"))?;
        let totals: BpfHashMap<_, StackKey, StackTotals> =
            BpfHashMap::try_from(map).map_err(map_err("STACK_TOTALS"))?;
        for entry in totals.iter() {
            let Ok((k, v)) = entry else { continue };
            let key = StackRef { pid: k.tgid, stack_id: k.stack_id, leaf_ret: k.leaf_ret };
            let (rb, rc) = self.released.get(&(k.tgid, k.stack_id, k.leaf_ret)).copied().unwrap_or_default();
            snap.insert(
                key,
                StackSample {
                    live_bytes: (v.live_bytes.max(0) as u64).saturating_sub(rb),
                    live_count: (v.live_count.max(0) as u64).saturating_sub(rc),
                    total_bytes: v.total_bytes,
                    total_count: v.total_count,
                },
            );
        }
        for (pid, origin, lb, lc, tb, tc) in self.mappings.live() {
            let key = StackRef { pid, stack_id: origin.stack_id, leaf_ret: origin.leaf_ret };
            let s = snap.entry(key).or_default();
            s.live_bytes += lb;
            s.live_count += lc;
            s.total_bytes += tb;
            s.total_count += tc;
        }
        Ok(snap)
    }

    /// A stack's instruction pointers, leaf first, and how its walk ended (cached: ids are
    /// stable).
    pub fn stack(&mut self, bpf: &Ebpf, stack_id: u32) -> StackData {
        if stack_id == NO_STACK {
            return StackData::default();
        }
        if let Some(st) = self.stack_cache.get(&stack_id) {
            return st.clone();
        }
        let st = if self.dwarf {
            bpf.map("USTACKS")
                .and_then(|m| BpfHashMap::<_, u32, UnwoundStack>::try_from(m).ok())
                .and_then(|m| m.get(&stack_id, 0).ok())
                .map(|u| {
                    let n = (u.len as usize).min(u.ips.len());
                    StackData { ips: u.ips[..n].to_vec(), flags: Some(u.flags) }
                })
                .unwrap_or_default()
        } else {
            let ips = bpf
                .map("STACKS")
                .and_then(|m| StackTraceMap::try_from(m).ok())
                .and_then(|m| m.get(&stack_id, 0).ok())
                .map(|st| st.frames().iter().map(|f| f.ip).collect::<Vec<_>>())
                .unwrap_or_default();
            StackData { ips, flags: None }
        };
        if !st.ips.is_empty() {
            self.stack_cache.insert(stack_id, st.clone());
        }
        st
    }

    /// Retires the records in [addr, addr+len) of a process (`--mode rss` ranges the kernel
    /// handed over). Returns the bytes released.
    pub fn release_range(&mut self, bpf: &mut Ebpf, pid: u32, addr: u64, len: u64) -> u64 {
        let end = addr.saturating_add(len);
        self.release_where(bpf, |k, _| k.tgid == pid && k.addr >= addr && k.addr < end).values().sum()
    }

    /// Retires the records processes made before their execve (pid → the execve's time): the
    /// old images' memory. One pass over the kernel map for all of them (processes that exec
    /// by the dozen a second would otherwise cost a pass each). Returns the bytes per pid.
    pub fn release_before_exec(&mut self, bpf: &mut Ebpf, execs: &HashMap<u32, u64>) -> BTreeMap<u32, u64> {
        self.release_where(bpf, |k, v| execs.get(&k.tgid).is_some_and(|&ts| v.ts_ns < ts))
    }

    /// Removes the process's records that `pick` selects; their weights are subtracted from the
    /// kernel's totals at each snapshot (userspace cannot update those atomically).
    fn release_where(
        &mut self,
        bpf: &mut Ebpf,
        pick: impl Fn(&AllocKey, &memprof_common::AllocInfo) -> bool,
    ) -> BTreeMap<u32, u64> {
        let mut bytes = BTreeMap::new();
        let Some(map) = bpf.map_mut("ALLOCS") else { return bytes };
        let Ok(mut allocs) = BpfHashMap::<_, AllocKey, memprof_common::AllocInfo>::try_from(map) else {
            return bytes;
        };
        let hits: Vec<(AllocKey, memprof_common::AllocInfo)> =
            allocs.iter().filter_map(Result::ok).filter(|(k, v)| pick(k, v)).collect();
        for (k, v) in hits {
            if allocs.remove(&k).is_ok() {
                let e = self.released.entry((k.tgid, v.stack_id, v.leaf_ret)).or_default();
                e.0 += v.weight;
                e.1 += u64::from(v.count_weight);
                *bytes.entry(k.tgid).or_default() += v.weight;
            }
        }
        bytes
    }

    /// Retires processes that exited: the kernel released their memory, so their records leave
    /// the live view. One pass over the kernel maps for all of them (a pass costs a syscall per
    /// record; processes come and go by the dozen in a busy container). Returns the bytes each
    /// still held.
    pub fn retire_processes(&mut self, bpf: &mut Ebpf, pids: &[u32]) -> BTreeMap<u32, u64> {
        let gone: std::collections::BTreeSet<u32> = pids.iter().copied().collect();
        let mut held: BTreeMap<u32, u64> = BTreeMap::new();
        for &pid in &gone {
            held.insert(pid, self.mappings.forget(pid));
            self.discarded.forget(pid);
        }
        let mut released: BTreeMap<u32, u64> = BTreeMap::new();
        for ((p, _, _), v) in self.released.iter().filter(|((p, _, _), _)| gone.contains(p)) {
            *released.entry(*p).or_default() += v.0;
        }
        self.released.retain(|(p, _, _), _| !gone.contains(p));
        if let Some(map) = bpf.map_mut("ALLOCS") {
            if let Ok(mut allocs) = BpfHashMap::<_, AllocKey, memprof_common::AllocInfo>::try_from(map) {
                let keys: Vec<AllocKey> =
                    allocs.keys().filter_map(Result::ok).filter(|k| gone.contains(&k.tgid)).collect();
                for k in keys {
                    let _ = allocs.remove(&k);
                }
            }
        }
        if let Some(map) = bpf.map_mut("STACK_TOTALS") {
            if let Ok(mut totals) = BpfHashMap::<_, StackKey, StackTotals>::try_from(map) {
                let entries: Vec<(StackKey, StackTotals)> =
                    totals.iter().filter_map(Result::ok).filter(|(k, _)| gone.contains(&k.tgid)).collect();
                let mut live: BTreeMap<u32, u64> = BTreeMap::new();
                for (k, v) in entries {
                    *live.entry(k.tgid).or_default() += v.live_bytes.max(0) as u64;
                    let _ = totals.remove(&k);
                }
                for (pid, bytes) in live {
                    let r = released.get(&pid).copied().unwrap_or(0);
                    *held.entry(pid).or_default() += bytes.saturating_sub(r);
                }
            }
        }
        held
    }

    /// Sums the per-CPU counters.
    pub fn counters(&self, bpf: &Ebpf) -> BTreeMap<Counter, u64> {
        let mut out = BTreeMap::new();
        let Some(map) = bpf.map("COUNTERS") else { return out };
        let Ok(arr) = PerCpuArray::<_, u64>::try_from(map) else { return out };
        for c in Counter::ALL {
            if (c as u32) < COUNTER_COUNT {
                match arr.get(&(c as u32), 0) {
                    Ok(v) => {
                        out.insert(c, v.iter().sum());
                    }
                    Err(err) => warn!("failed to read counter {}: {err}", c.name()),
                }
            }
        }
        out
    }
}
