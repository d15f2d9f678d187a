//! Evidence at the OOM kill: a process in a memory-limited cgroup leaks until the kernel kills
//! it; memprof writes oom-<pid>.folded/.svg whose top stack is the leaking function, records the
//! kill in summary.json, and keeps running.

use std::{fs, os::unix::process::CommandExt, path::PathBuf, process::Command, time::Duration};

use memprof_tests::*;

const LIMIT: u64 = 64 << 20;

/// A memory limit for the test cgroup: cgroup v2 `memory.max` where the memory controller is
/// enabled there, else (hybrid hosts) a v1 memory cgroup made for the test. Removed on drop.
struct MemoryLimit {
    v1_dir: Option<PathBuf>,
}

impl MemoryLimit {
    fn apply(cg: &TestCgroup) -> MemoryLimit {
        let max = cg.path().join("memory.max");
        if max.is_file() {
            fs::write(&max, LIMIT.to_string()).expect("write memory.max");
            let _ = fs::write(cg.path().join("memory.swap.max"), "0");
            return MemoryLimit { v1_dir: None };
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
        let dir = mount.join(rel).join(format!("memprof-test-oom-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("create v1 memory cgroup");
        fs::write(dir.join("memory.limit_in_bytes"), LIMIT.to_string()).expect("v1 limit");
        let _ = fs::write(dir.join("memory.memsw.limit_in_bytes"), LIMIT.to_string());
        MemoryLimit { v1_dir: Some(dir) }
    }
}

impl Drop for MemoryLimit {
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

#[test]
fn oom_kill_leaves_evidence() {
    require_root();
    let cg = TestCgroup::new();
    let limit = MemoryLimit::apply(&cg);
    let mut cmd = Command::new(fixture("oomer"));
    cmd.stdout(std::process::Stdio::piped());
    if let Some(dir) = &limit.v1_dir {
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
    let mut victim = Child::spawn(&mut cmd, Some(&cg)).expect("start oomer");
    let dir = output_dir("oom");
    let mut mp = Memprof::start(&[
        "--cgroup".to_string(),
        cg.name(),
        "--interval".into(),
        "1s".into(),
        "--output".into(),
        dir.display().to_string(),
    ]);
    mp.wait_attached(ATTACH_TIMEOUT);
    victim.signal(libc::SIGUSR1).unwrap();
    let status = victim.wait_timeout(Duration::from_secs(60)).unwrap().expect("oomer was not killed");
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL), "{status:?}");
    // memprof keeps running after the kill (then ends: the cgroup is empty).
    let run = mp.finish_ok(FINISH_TIMEOUT);
    let summary = read_summary(&dir);
    let kills = summary["oom_kills"].as_array().expect("oom_kills");
    assert_eq!(kills.len(), 1, "oom_kills: {kills:?}\n{}", run.stderr);
    let pid = victim.pid();
    assert_eq!(kills[0]["pid"], pid);
    let folded = fs::read_to_string(dir.join(format!("oom-{pid}.folded"))).expect("oom folded");
    assert!(dir.join(format!("oom-{pid}.svg")).is_file());
    let top = folded.lines().next().expect("empty oom folded");
    let leaf = top.rsplit_once(' ').unwrap().0.rsplit(';').next().unwrap();
    assert!(frame_is(leaf, "grow_until_oom"), "top stack leaf is {leaf}: {top}");
    let bytes: u64 = top.rsplit_once(' ').unwrap().1.parse().unwrap();
    assert!(bytes >= LIMIT / 2, "only {bytes} B at the kill (limit {LIMIT})");
    drop(limit);
}
