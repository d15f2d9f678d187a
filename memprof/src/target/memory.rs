//! The target's memory as the kernel accounts it: cgroup usage and limit (cgroup v2
//! `memory.current`/`memory.max`, or on hybrid hosts the v1 memory controller's
//! `memory.usage_in_bytes`/`memory.limit_in_bytes`), and the processes' resident set size.

use std::path::{Path, PathBuf};

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
    fn rss_of_self_is_positive() {
        assert!(rss_bytes(&[std::process::id()]) > 0);
    }
}
