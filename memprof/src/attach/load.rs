//! Loading the BPF object (its settings, the programs with the attach type each gets) and the
//! tracepoints.

use std::collections::HashMap;

use aya::{
    EbpfLoader,
    programs::{TracePoint, UProbe},
};
use log::{info, warn};
use memprof_common::{FILTER_CGROUP, FILTER_TGID, MODE_ALLOCATIONS, MODE_RSS, UNWIND_DWARF, UNWIND_FP};

use super::{
    AttachError, EBPF_OBJECT, ENTRY_PROGRAMS, MapSizes, PageFaults, Probes, RETURN_PROGRAM, RSS_TRACEPOINTS,
    RUNTIME_PROGRAMS, SESSION_PROGRAM, Scope, TRACEPOINTS, links::ProbeLink, multi, program,
};

impl Probes {
    /// Loads the BPF object with the scope and map sizes as load-time settings, and attaches the
    /// mmap-family tracepoints (which filter on the scope themselves).
    pub fn load(scope: Scope, sizes: MapSizes) -> Result<Probes, AttachError> {
        let (mode, cg_id, cg_level, tgid) = match scope {
            Scope::Cgroup { id, level } => (FILTER_CGROUP, id, level, 0u32),
            Scope::Process { tgid } => (FILTER_TGID, 0u64, 0u32, tgid),
        };
        let multi = sizes.uprobe_multi && !sizes.rss && multi::kernel_supports();
        let want_sessions = multi && sizes.uprobe_session && multi::kernel_supports_sessions();
        let mut bpf = EbpfLoader::new()
            .override_global("FILTER_MODE", &mode, true)
            .override_global("TARGET_CGROUP_ID", &cg_id, true)
            .override_global("TARGET_CGROUP_LEVEL", &cg_level, true)
            .override_global("TARGET_TGID", &tgid, true)
            .override_global("SAMPLE_BYTES", &sizes.sample_bytes, true)
            .override_global("MODE", &if sizes.rss { MODE_RSS } else { MODE_ALLOCATIONS }, true)
            .override_global("SESSIONS", &u32::from(want_sessions), true)
            .map_max_entries("ALLOCS", sizes.allocs)
            .map_max_entries("STACKS", sizes.stacks)
            .map_max_entries("STACK_TOTALS", sizes.stack_totals)
            .override_global("UNWINDER", &if sizes.dwarf { UNWIND_DWARF } else { UNWIND_FP }, true)
            .map_max_entries("USTACKS", sizes.stacks)
            .map_max_entries("UNWIND_ROWS", sizes.unwind_rows)
            .override_global("TASK_FSBASE_OFFSET", &sizes.task_fsbase, true)
            .load(EBPF_OBJECT)?;
        let mut uprobe_names: Vec<&str> = ENTRY_PROGRAMS.iter().map(|(_, p)| *p).collect();
        uprobe_names.sort_unstable();
        uprobe_names.dedup();
        uprobe_names.push(RETURN_PROGRAM);
        uprobe_names.extend(RUNTIME_PROGRAMS);
        for name in uprobe_names {
            let prog: &mut UProbe = program(&mut bpf, name)?;
            let loaded = if multi { prog.load_multi() } else { prog.load() };
            loaded.map_err(|source| AttachError::Program { name: name.into(), source })?;
        }
        let mut sessions = want_sessions;
        if want_sessions {
            let prog: &mut UProbe = program(&mut bpf, SESSION_PROGRAM)?;
            if let Err(err) = prog.load_session() {
                // The entry programs work either way (an unsampled call's record is then
                // ignored by the return program, see `alloc.rs`).
                warn!("uprobe sessions not available ({err}): allocation functions get entry and return probes");
                sessions = false;
            }
        }
        if !sizes.rss {
            info!(
                "uprobes attached as {}{}",
                if multi {
                    "uprobe_multi links (one per process, object and program)"
                } else if sizes.uprobe_multi {
                    "perf events, one per probe (kernel older than 6.6: no uprobe_multi links)"
                } else {
                    "perf events, one per probe (--no-uprobe-multi)"
                },
                if sessions {
                    "; allocation functions as uprobe sessions (their returns skipped when there is nothing to record)"
                } else if multi && sizes.uprobe_session && !multi::kernel_supports_sessions() {
                    "; entry and return probes (kernel older than 6.13: no uprobe sessions)"
                } else {
                    ""
                }
            );
        }
        let mut optional_failures = Vec::new();
        let mut tracepoints = Vec::new();
        let rss_tracepoints: &[(&str, &str, &str, bool)] = if sizes.rss { RSS_TRACEPOINTS } else { &[] };
        for &(category, event, name, required) in TRACEPOINTS.iter().chain(rss_tracepoints) {
            let prog: &mut TracePoint = program(&mut bpf, name)?;
            prog.load().map_err(|source| AttachError::Program { name: name.into(), source })?;
            match prog.attach(category, event).and_then(|id| prog.take_link(id)) {
                Ok(link) => tracepoints.push(ProbeLink::Tracepoint(link)),
                Err(source) if required => {
                    return Err(AttachError::Tracepoint { name: format!("{category}:{event}"), source });
                }
                Err(source) => {
                    warn!("optional tracepoint {category}:{event} not attached: {source}");
                    optional_failures.push(format!("{category}:{event}"));
                }
            }
        }
        Ok(Probes {
            bpf,
            elf_cache: HashMap::new(),
            attached: HashMap::new(),
            links: HashMap::new(),
            placed: Vec::new(),
            attach_failures: 0,
            attach_gone: 0,
            optional_failures,
            probe_placement: true,
            rss: sizes.rss,
            page_faults: if sizes.rss { PageFaults::Attached } else { PageFaults::No },
            retired: tracepoints,
            multi,
            sessions,
            placements: HashMap::new(),
            runtime_attached: Default::default(),
            runtime_placements: HashMap::new(),
        })
    }

    /// Attaches the page-fault tracepoint in allocation mode, once: a runtime counts its heap's
    /// pages as they are first touched (Python's arenas in optimised builds). Only then, so
    /// that the other processes of the host do not pay for it. True when it is attached.
    /// `why`: what the pages are, for the log.
    pub fn attach_page_faults(&mut self, why: &str) -> bool {
        if self.page_faults != PageFaults::No {
            return self.page_faults == PageFaults::Attached;
        }
        let result = program::<TracePoint>(&mut self.bpf, "page_fault_user").map_err(|e| e.to_string()).and_then(|p| {
            p.load().map_err(|e| e.to_string())?;
            p.attach("exceptions", "page_fault_user").and_then(|id| p.take_link(id)).map_err(|e| e.to_string())
        });
        match result {
            Ok(link) => {
                self.retired.push(ProbeLink::Tracepoint(link));
                info!("page faults followed ({why})");
                self.page_faults = PageFaults::Attached;
                true
            }
            Err(err) => {
                warn!("optional tracepoint exceptions:page_fault_user not attached: {err}; {why} not followed");
                self.optional_failures.push("exceptions:page_fault_user".into());
                self.page_faults = PageFaults::Failed;
                false
            }
        }
    }
}
