//! Stacks nothing refers to any more leave the kernel's stack map, so that a run of days beside
//! process churn (every short-lived process and every exited one leaves stacks behind: its own
//! addresses) never fills it. Without this, `stack_id_failed` grew from the seventh minute of
//! `cargo xtask soak` on: new stacks, a new leak's included, had no room.
//!
//! A stack is referred to by the kernel's per-stack totals (every recorded allocation and page
//! has one, removed when its process is retired) and by the anonymous mappings userspace keeps.
//! One seen unreferenced at two passes in a row is deleted (a stack the kernel is about to use
//! again at the moment of a pass is spared by the second look), and its cached frames with it:
//! `bpf_get_stackid` ids (`--unwind fp`) are hash buckets that another stack may take later.

use std::collections::HashSet;

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, StackTraceMap},
};
use memprof_common::{StackKey, StackTotals, unwind::UnwoundStack};

use super::Collector;

impl Collector {
    /// Deletes the stacks unreferenced now and at the previous pass; returns their ids.
    pub fn collect_stacks(&mut self, bpf: &mut Ebpf) -> Vec<u32> {
        let name = if self.dwarf { "USTACKS" } else { "STACKS" };
        // Listed before the references are read: a stack stored meanwhile is not a candidate.
        let ids: Vec<u32> = match bpf.map(name) {
            Some(m) if self.dwarf => BpfHashMap::<_, u32, UnwoundStack>::try_from(m)
                .map(|m| m.keys().filter_map(Result::ok).collect())
                .unwrap_or_default(),
            Some(m) => StackTraceMap::try_from(m)
                .map(|m| m.stack_ids().filter_map(Result::ok).collect())
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let mut refs: HashSet<u32> = self.mappings.stack_ids().collect();
        if let Some(Ok(totals)) = bpf.map("STACK_TOTALS").map(BpfHashMap::<_, StackKey, StackTotals>::try_from) {
            refs.extend(totals.keys().filter_map(Result::ok).map(|k| k.stack_id));
        }
        let unreferenced: HashSet<u32> = ids.into_iter().filter(|id| !refs.contains(id)).collect();
        let doomed: Vec<u32> = unreferenced.intersection(&self.gc_candidates).copied().collect();
        self.gc_candidates = unreferenced;
        let mut deleted = Vec::new();
        match bpf.map_mut(name) {
            Some(m) if self.dwarf => {
                if let Ok(mut m) = BpfHashMap::<_, u32, UnwoundStack>::try_from(m) {
                    deleted.extend(doomed.iter().copied().filter(|id| m.remove(id).is_ok()));
                }
            }
            Some(m) => {
                if let Ok(mut m) = StackTraceMap::try_from(m) {
                    deleted.extend(doomed.iter().copied().filter(|id| m.remove(id).is_ok()));
                }
            }
            None => {}
        }
        for id in &deleted {
            self.stack_cache.remove(id);
            self.gc_candidates.remove(id);
        }
        self.stacks_collected += deleted.len() as u64;
        deleted
    }
}
