//! Feeding the kernel-side unwinder: CFI rows of every object a target process maps, written
//! into the shared row array (`UNWIND_ROWS`, memory-mapped, so a million rows cost a copy, not
//! a million syscalls), and each process's executable mappings (`PROC_UNWIND`).
//!
//! Objects are keyed by (device, inode) and tabled once, whoever maps them; a process's mappings
//! are (re)written when it is adopted, calls execve, or maps new code (dlopen). Rows are never
//! freed: the array is sized at load time (`--unwind-rows`), and an object that does not fit is
//! walked with frame pointers and reported.

use std::{
    collections::HashMap,
    fs::File,
    io::Read,
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
};

use aya::{
    maps::{HashMap as BpfHashMap, Map},
    Ebpf,
};
use log::{debug, info, warn};
use memprof_common::unwind::{ExecMapping, ProcUnwind, UnwindRow, MAX_EXEC_MAPPINGS};
use object::{Object, ObjectSegment};
use serde::Serialize;

use crate::target::maps::{self, MapEntry};

use super::table;

/// Bytes per row in the array map (the kernel rounds values up to 8 bytes).
const ROW_STRIDE: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("BPF map {0} is missing")]
    MissingMap(&'static str),
    #[error("failed to map the CFI row array into memory: {0}")]
    Mmap(std::io::Error),
}

/// An object's rows in the array, and how its file offsets relate to its addresses.
#[derive(Clone, Debug)]
struct ObjectRows {
    rows_start: u32,
    rows_len: u32,
    /// (p_offset, p_vaddr, p_filesz) of each PT_LOAD segment.
    segments: Vec<(u64, u64, u64)>,
}

/// What was loaded, for the report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct UnwindStats {
    /// Objects with CFI rows in the kernel.
    pub objects_tabled: usize,
    /// Objects without usable CFI (walked with frame pointers).
    pub objects_without_cfi: Vec<String>,
    /// Objects that did not fit in the row array (`--unwind-rows`).
    pub objects_over_capacity: Vec<String>,
    pub rows_used: u64,
    pub rows_capacity: u64,
    /// Processes with more executable mappings than the kernel side holds (the rest are walked
    /// with frame pointers).
    pub processes_over_mapping_limit: usize,
    /// Milliseconds spent building tables.
    pub build_ms: u64,
}

/// The row array, mapped into our memory.
struct RowArea {
    ptr: NonNull<u8>,
    len: usize,
    capacity: u32,
    used: u32,
}

impl Drop for RowArea {
    fn drop(&mut self) {
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

pub struct UnwindLoader {
    area: RowArea,
    objects: HashMap<(u32, u32, u64), Option<ObjectRows>>,
    generation: u32,
    pub stats: UnwindStats,
}

impl UnwindLoader {
    /// Maps the row array of a loaded BPF object.
    pub fn new(bpf: &Ebpf, capacity: u32) -> Result<UnwindLoader, LoaderError> {
        let map = bpf
            .map("UNWIND_ROWS")
            .ok_or(LoaderError::MissingMap("UNWIND_ROWS"))?;
        let Map::Array(data) = map else {
            return Err(LoaderError::MissingMap("UNWIND_ROWS"));
        };
        let fd = data.fd().as_fd().as_raw_fd();
        let page = 4096usize;
        let len = (capacity as usize * ROW_STRIDE).div_ceil(page) * page;
        // SAFETY: a shared mapping of an mmapable BPF array, kept until drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(LoaderError::Mmap(std::io::Error::last_os_error()));
        }
        Ok(UnwindLoader {
            area: RowArea {
                ptr: NonNull::new(ptr.cast()).unwrap(),
                len,
                capacity,
                used: 0,
            },
            objects: HashMap::new(),
            generation: 0,
            stats: UnwindStats {
                rows_capacity: capacity as u64,
                ..Default::default()
            },
        })
    }

    /// Tables every object `pid` maps executable (those not tabled yet) and writes its mapping
    /// list for the kernel. Call on adopt, execve and dlopen.
    pub fn load_process(&mut self, bpf: &mut Ebpf, pid: u32) {
        let Ok(entries) = maps::read_maps(pid) else {
            return;
        };
        let mut list: Vec<ExecMapping> = Vec::new();
        for e in entries.iter().filter(|e| e.is_exec() && e.is_file_backed()) {
            let Some(obj) = self.object(pid, e) else {
                continue;
            };
            let Some(bias) = bias(&obj.segments, e) else {
                continue;
            };
            list.push(ExecMapping {
                start: e.start,
                end: e.end,
                bias,
                rows_start: obj.rows_start,
                rows_len: obj.rows_len,
            });
        }
        list.sort_by_key(|m| m.start);
        if list.len() > MAX_EXEC_MAPPINGS {
            self.stats.processes_over_mapping_limit += 1;
            warn!(
                "pid {pid} maps {} code segments; the last {} are walked with frame pointers",
                list.len(),
                list.len() - MAX_EXEC_MAPPINGS
            );
            list.truncate(MAX_EXEC_MAPPINGS);
        }
        let mut value = Box::new(ProcUnwind {
            count: list.len() as u32,
            generation: self.next_generation(),
            mappings: [ExecMapping::default(); MAX_EXEC_MAPPINGS],
        });
        value.mappings[..list.len()].copy_from_slice(&list);
        match bpf
            .map_mut("PROC_UNWIND")
            .map(BpfHashMap::<_, u32, ProcUnwind>::try_from)
        {
            Some(Ok(mut m)) => {
                if let Err(err) = m.insert(pid, *value, 0) {
                    warn!("pid {pid}: cannot load its unwind mappings: {err}");
                }
            }
            _ => warn!("BPF map PROC_UNWIND is missing"),
        }
    }

    /// A new generation for a rewritten mapping list (the kernel's row cache is keyed by it).
    fn next_generation(&mut self) -> u32 {
        self.generation = self.generation.wrapping_add(1);
        self.generation
    }

    /// Drops a process's mapping list (its objects' rows stay for other processes).
    pub fn forget_process(&mut self, bpf: &mut Ebpf, pid: u32) {
        if let Some(Ok(mut m)) = bpf
            .map_mut("PROC_UNWIND")
            .map(BpfHashMap::<_, u32, ProcUnwind>::try_from)
        {
            let _ = m.remove(&pid);
        }
    }

    /// The object behind a mapping: tabled now if it is new.
    fn object(&mut self, pid: u32, e: &MapEntry) -> Option<ObjectRows> {
        let key = (e.dev_major, e.dev_minor, e.inode);
        if let Some(o) = self.objects.get(&key) {
            return o.clone();
        }
        let name = e.path.clone().unwrap_or_default();
        let o = self.build(pid, e, &name);
        self.objects.insert(key, o.clone());
        o
    }

    fn build(&mut self, pid: u32, e: &MapEntry, name: &str) -> Option<ObjectRows> {
        let started = std::time::Instant::now();
        let mut data = Vec::new();
        if let Err(err) =
            File::open(maps::map_files_path(pid, e)).and_then(|mut f| f.read_to_end(&mut data))
        {
            debug!("cannot read {name} of pid {pid}: {err}");
            return None;
        }
        let segments = segments(&data)?;
        let (rows_start, rows_len) = match table::build_rows(&data) {
            Ok(t) if !t.rows.is_empty() => match self.write_rows(&t.rows) {
                Some(start) => (start, t.rows.len() as u32),
                None => {
                    warn!("{name}: {} CFI rows do not fit (--unwind-rows {}); walked with frame pointers", t.rows.len(), self.area.capacity);
                    self.stats.objects_over_capacity.push(name.to_string());
                    (0, 0)
                }
            },
            Ok(_) => {
                self.stats.objects_without_cfi.push(name.to_string());
                (0, 0)
            }
            Err(err) => {
                debug!("{name}: no CFI table: {err}");
                self.stats.objects_without_cfi.push(name.to_string());
                (0, 0)
            }
        };
        let ms = started.elapsed().as_millis() as u64;
        self.stats.build_ms += ms;
        if rows_len > 0 {
            self.stats.objects_tabled += 1;
            info!("{name}: {rows_len} CFI rows ({ms} ms)");
        }
        Some(ObjectRows {
            rows_start,
            rows_len,
            segments,
        })
    }

    /// Appends rows to the array; None when they do not fit.
    fn write_rows(&mut self, rows: &[UnwindRow]) -> Option<u32> {
        let start = self.area.used;
        let end = start.checked_add(u32::try_from(rows.len()).ok()?)?;
        if end > self.area.capacity {
            return None;
        }
        for (i, r) in rows.iter().enumerate() {
            let at = (start as usize + i) * ROW_STRIDE;
            // SAFETY: `at + 12 <= capacity * 16 <= len`; the kernel reads rows only once a
            // process's mapping list refers to them, which is written after this.
            unsafe {
                std::ptr::write_unaligned(self.area.ptr.as_ptr().add(at).cast::<UnwindRow>(), *r);
            }
        }
        self.area.used = end;
        self.stats.rows_used = end as u64;
        Some(start)
    }
}

/// The PT_LOAD segments of an ELF object.
fn segments(data: &[u8]) -> Option<Vec<(u64, u64, u64)>> {
    let file = object::File::parse(data).ok()?;
    let segs: Vec<(u64, u64, u64)> = file
        .segments()
        .map(|s| {
            let (off, size) = s.file_range();
            (off, s.address(), size)
        })
        .collect();
    (!segs.is_empty()).then_some(segs)
}

/// `pc - bias` = the object's virtual address, for a mapping of file offset `e.offset` at
/// `e.start`.
fn bias(segments: &[(u64, u64, u64)], e: &MapEntry) -> Option<u64> {
    e.load_bias(segments.iter().copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(start: u64, offset: u64) -> MapEntry {
        MapEntry {
            start,
            end: start + 0x1000,
            perms: *b"r-xp",
            offset,
            dev_major: 0,
            dev_minor: 0,
            inode: 1,
            path: Some("/x".into()),
            deleted: false,
        }
    }

    #[test]
    fn bias_for_pie_and_non_pie() {
        // A shared object: text at vaddr 0x1000, file offset 0x1000, mapped at 0x7f00_0000_1000.
        let segs = vec![(0, 0, 0x800), (0x1000, 0x1000, 0x5000)];
        let b = bias(&segs, &entry(0x7f00_0000_1000, 0x1000)).unwrap();
        assert_eq!(0x7f00_0000_1234 - b, 0x1234);
        // A non-PIE executable: text at vaddr 0x401000, offset 0x1000, mapped at 0x401000.
        let segs = vec![(0, 0x400000, 0x800), (0x1000, 0x401000, 0x5000)];
        let b = bias(&segs, &entry(0x401000, 0x1000)).unwrap();
        assert_eq!(0x401234 - b, 0x401234);
        // Segment vaddr and offset differ (a gap in the file layout).
        let segs = vec![(0x2000, 0x3000, 0x1000)];
        let b = bias(&segs, &entry(0x5555_0000_0000, 0x2000)).unwrap();
        assert_eq!(0x5555_0000_0010 - b, 0x3010);
    }
}
