//! A memory cgroup made for a test: v2 `memory.max`, or a v1 memory cgroup on hybrid hosts.

use std::{fs, path::{Path, PathBuf}, process::Command, time::Duration};

use crate::TestCgroup;

/// A memory cgroup of the test's own, limited to `limit` bytes: cgroup v2 `memory.max` of the
/// test cgroup where the memory controller is enabled there, else (hybrid hosts) a v1 memory
/// cgroup made for the test, which [`MemoryCgroup::enter`] puts a command in. Removed on drop.
pub struct MemoryCgroup {
    v1_dir: Option<PathBuf>,
}

impl MemoryCgroup {
    pub fn new(cg: &TestCgroup, name: &str, limit: u64) -> MemoryCgroup {
        let max = cg.path().join("memory.max");
        if max.is_file() {
            fs::write(&max, limit.to_string()).expect("write memory.max");
            let _ = fs::write(cg.path().join("memory.swap.max"), "0");
            return MemoryCgroup { v1_dir: None };
        }
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mount = mountinfo
            .lines()
            .find_map(|l| {
                let (pre, post) = l.split_once(" - ")?;
                let mut f = post.split(' ');
                let (fstype, _, opts) = (f.next()?, f.next()?, f.next()?);
                (fstype == "cgroup" && opts.split(',').any(|o| o == "memory"))
                    .then(|| PathBuf::from(pre.split(' ').nth(4).unwrap()))
            })
            .expect("neither cgroup v2 memory.max nor a v1 memory controller: cannot limit memory");
        let own = fs::read_to_string("/proc/self/cgroup").unwrap();
        let rel = own
            .lines()
            .find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, c, p) = (f.next()?, f.next()?, f.next()?);
                c.split(',').any(|c| c == "memory").then(|| p.trim_start_matches('/').to_string())
            })
            .expect("no v1 memory cgroup for this process");
        let dir = mount.join(rel).join(format!("memprof-test-{name}-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("create v1 memory cgroup");
        fs::write(dir.join("memory.limit_in_bytes"), limit.to_string()).expect("v1 limit");
        let _ = fs::write(dir.join("memory.memsw.limit_in_bytes"), limit.to_string());
        MemoryCgroup { v1_dir: Some(dir) }
    }

    /// The v1 memory cgroup made for the test (None where the test cgroup's own v2 controller
    /// is used).
    pub fn v1_dir(&self) -> Option<&Path> {
        self.v1_dir.as_deref()
    }

    /// Makes `cmd`'s process join the v1 memory cgroup as it starts (nothing on cgroup v2: the
    /// test cgroup is the memory cgroup).
    pub fn enter(&self, cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        let Some(dir) = &self.v1_dir else { return };
        let procs = fs::OpenOptions::new().write(true).open(dir.join("cgroup.procs")).unwrap();
        let fd = std::os::unix::io::AsRawFd::as_raw_fd(&procs);
        std::mem::forget(procs);
        // SAFETY: write(2) only, between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::write(fd, b"0".as_ptr().cast(), 1) == 1 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        if let Some(dir) = &self.v1_dir {
            for _ in 0..50 {
                if fs::remove_dir(dir).is_ok() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}
