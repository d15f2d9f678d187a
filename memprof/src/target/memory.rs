//! The target's memory as the kernel accounts it: cgroup usage and limit (cgroup v2
//! `memory.current`/`memory.max`, or on hybrid hosts the v1 memory controller's
//! `memory.usage_in_bytes`/`memory.limit_in_bytes`), its split into anonymous memory and page
//! cache (`memory.stat`), the processes it holds, and the processes' resident set size.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

use super::cgroup::CgroupTarget;

/// Where the cgroup's memory figures are read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemorySource {
    V2(PathBuf),
    V1(PathBuf),
    None,
}

/// One reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemorySample {
    pub usage: u64,
    /// None: no limit.
    pub limit: Option<u64>,
}

impl MemorySource {
    /// The memory accounting of a cgroup v2 target; on hybrid hosts (no memory controller in
    /// v2), the v1 memory cgroup of one of its processes.
    pub fn for_cgroup(cg: &CgroupTarget, pids: &[u32]) -> MemorySource {
        if cg.path.join("memory.current").is_file() {
            return MemorySource::V2(cg.path.clone());
        }
        pids.iter().find_map(|&p| v1_memory_dir(p)).map(MemorySource::V1).unwrap_or(MemorySource::None)
    }

    /// The memory accounting of one process's cgroup.
    pub fn for_pid(pid: u32, cgroup2_mount: Option<&Path>) -> MemorySource {
        if let Some(mount) = cgroup2_mount {
            if let Ok(cg) = super::cgroup::cgroup_of_pid(pid, mount) {
                if cg.path.join("memory.current").is_file() {
                    return MemorySource::V2(cg.path);
                }
            }
        }
        v1_memory_dir(pid).map(MemorySource::V1).unwrap_or(MemorySource::None)
    }

    pub fn describe(&self) -> String {
        match self {
            MemorySource::V2(p) => format!("cgroup v2 {}/memory.current", p.display()),
            MemorySource::V1(p) => format!("cgroup v1 {}/memory.usage_in_bytes", p.display()),
            MemorySource::None => "none (no memory controller for the target)".into(),
        }
    }

    pub fn sample(&self) -> Option<MemorySample> {
        match self {
            MemorySource::V2(dir) => Some(MemorySample {
                usage: read_u64(&dir.join("memory.current"))?,
                limit: std::fs::read_to_string(dir.join("memory.max")).ok().and_then(|s| parse_limit(&s)),
            }),
            MemorySource::V1(dir) => Some(MemorySample {
                usage: read_u64(&dir.join("memory.usage_in_bytes"))?,
                limit: std::fs::read_to_string(dir.join("memory.limit_in_bytes")).ok().and_then(|s| parse_limit(&s)),
            }),
            MemorySource::None => None,
        }
    }
}

impl MemorySource {
    /// The cgroup's usage by kind, from `memory.stat` (hierarchical totals on v1).
    pub fn stat(&self) -> Option<CgroupStat> {
        match self {
            MemorySource::V2(dir) => parse_stat(&std::fs::read_to_string(dir.join("memory.stat")).ok()?, false),
            MemorySource::V1(dir) => parse_stat(&std::fs::read_to_string(dir.join("memory.stat")).ok()?, true),
            MemorySource::None => None,
        }
    }

    /// The memory cgroup's directory.
    pub fn dir(&self) -> Option<&Path> {
        match self {
            MemorySource::V2(dir) | MemorySource::V1(dir) => Some(dir),
            MemorySource::None => None,
        }
    }

    /// Every process in the memory cgroup and its descendants (None: not readable).
    pub fn member_pids(&self) -> Option<HashSet<u32>> {
        let mut pids = HashSet::new();
        let mut dirs = vec![self.dir()?.to_path_buf()];
        let mut read_any = false;
        while let Some(dir) = dirs.pop() {
            if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                read_any = true;
                pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
            if let Ok(entries) = std::fs::read_dir(&dir) {
                dirs.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
        }
        read_any.then_some(pids)
    }
}

/// A memory cgroup's usage by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupStat {
    /// Anonymous memory (v2 `anon`, v1 `total_rss`).
    pub anon: u64,
    /// Page cache (v2 `file`, v1 `total_cache`).
    pub file: u64,
}

/// `memory.stat` text: v2 (`anon`, `file`) or v1 (`total_rss`, `total_cache`, else the
/// non-hierarchical `rss`, `cache`).
pub fn parse_stat(text: &str, v1: bool) -> Option<CgroupStat> {
    let get = |key: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse::<u64>().ok()).flatten()
        })
    };
    if v1 {
        Some(CgroupStat {
            anon: get("total_rss").or_else(|| get("rss"))?,
            file: get("total_cache").or_else(|| get("cache"))?,
        })
    } else {
        Some(CgroupStat { anon: get("anon")?, file: get("file")? })
    }
}

/// The processes' resident memory by kind, summed (`/proc/PID/status`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RssSplit {
    /// `RssAnon`: heap, anonymous mappings, stacks.
    pub anon: u64,
    /// `RssFile` + `RssShmem`: executables, libraries, mapped files, shared memory.
    pub file: u64,
}

pub fn rss_split(pids: &[u32]) -> RssSplit {
    let mut split = RssSplit::default();
    for p in pids {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{p}/status")) else { continue };
        let s = parse_status_rss(&status);
        split.anon += s.anon;
        split.file += s.file;
    }
    split
}

fn parse_status_rss(status: &str) -> RssSplit {
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    RssSplit { anon: kb("RssAnon:"), file: kb("RssFile:") + kb("RssShmem:") }
}

use crate::analyze::parse_memory_max as parse_limit;

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The v1 memory cgroup directory of a process, from /proc/PID/cgroup and the v1 mount.
fn v1_memory_dir(pid: u32) -> Option<PathBuf> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = cgroups.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        controllers.split(',').any(|c| c == "memory").then(|| path.to_string())
    })?;
    let mount = v1_memory_mount(&std::fs::read_to_string("/proc/self/mountinfo").ok()?)?;
    let dir = mount.join(rel.trim_start_matches('/'));
    dir.join("memory.usage_in_bytes").is_file().then_some(dir)
}

/// The mount point of the v1 memory controller, from mountinfo text.
pub fn v1_memory_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let mut post = post.split(' ');
        let fstype = post.next()?;
        let _source = post.next()?;
        let opts = post.next()?;
        (fstype == "cgroup" && opts.split(',').any(|o| o == "memory"))
            .then(|| PathBuf::from(pre.split(' ').nth(4).unwrap_or("")))
    })
}

/// Summed resident set size of the processes, in bytes.
pub fn rss_bytes(pids: &[u32]) -> u64 {
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/statm")).ok())
        .filter_map(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * page)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_v1_memory_mount() {
        let mi = "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                  41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(v1_memory_mount(mi), Some(PathBuf::from("/sys/fs/cgroup/memory")));
        assert_eq!(v1_memory_mount("41 31 0:38 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"), None);
    }

    #[test]
    fn parses_memory_stat() {
        let v2 = "anon 4096\nfile 8192\nkernel 100\nanon_thp 0\n";
        assert_eq!(parse_stat(v2, false), Some(CgroupStat { anon: 4096, file: 8192 }));
        let v1 = "cache 1\nrss 2\nrss_huge 0\ntotal_cache 30\ntotal_rss 40\n";
        assert_eq!(parse_stat(v1, true), Some(CgroupStat { anon: 40, file: 30 }));
        assert_eq!(parse_stat("cache 1\nrss 2\n", true), Some(CgroupStat { anon: 2, file: 1 }));
        assert_eq!(parse_stat("garbage", false), None);
    }

    #[test]
    fn parses_status_rss() {
        let status = "VmRSS:\t   300 kB\nRssAnon:\t   100 kB\nRssFile:\t   150 kB\nRssShmem:\t    50 kB\n";
        assert_eq!(parse_status_rss(status), RssSplit { anon: 100 << 10, file: 200 << 10 });
        let me = rss_split(&[std::process::id()]);
        assert!(me.anon > 0 && me.file > 0, "{me:?}");
    }

    #[test]
    fn own_cgroup_members_include_self() {
        let src = MemorySource::for_pid(std::process::id(), super::super::cgroup::find_cgroup2_mount().ok().as_deref());
        if src.dir().is_some() {
            let pids = src.member_pids().expect("cgroup.procs of the own memory cgroup");
            assert!(pids.contains(&std::process::id()), "{src:?}");
        }
    }

    #[test]
    fn rss_of_self_is_positive() {
        assert!(rss_bytes(&[std::process::id()]) > 0);
    }
}
