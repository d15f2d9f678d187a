//! Processes, as /proc shows them.

use std::fs;

use super::TargetError;

/// Whether `pid` exists and has not exited (a zombie or dead task is not alive).
pub fn pid_alive(pid: u32) -> bool {
    pid != 0
        && fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| stat_state(&s))
            .is_some_and(|state| !matches!(state, 'Z' | 'X' | 'x'))
}

/// How long `pid` has existed (from its start time in /proc/PID/stat and /proc/uptime); None
/// when it is gone or not alive.
pub fn age(pid: u32) -> Option<std::time::Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    if matches!(stat_state(&stat)?, 'Z' | 'X' | 'x') {
        return None;
    }
    let ticks = start_ticks(&stat)?;
    let uptime: f64 = fs::read_to_string("/proc/uptime").ok()?.split_whitespace().next()?.parse().ok()?;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(std::time::Duration::from_secs_f64((uptime - ticks as f64 / hz).max(0.0)))
}

/// Field 22 of /proc/PID/stat (`starttime`, clock ticks after boot).
fn start_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The inode of `pid`'s executable (compared with its mappings' inodes).
pub fn exe_inode(pid: u32) -> Option<u64> {
    fs::metadata(format!("/proc/{pid}/exe")).ok().map(|m| std::os::unix::fs::MetadataExt::ino(&m))
}

/// The state letter of /proc/PID/stat text: the first field after the `(comm)` field, which may
/// itself contain spaces and parentheses.
fn stat_state(stat: &str) -> Option<char> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.trim_start().chars().next()
}

/// The command name of `pid` (/proc/PID/comm).
pub fn comm(pid: u32) -> Option<String> {
    let s = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(s.strip_suffix('\n').unwrap_or(&s).to_string())
}

/// The thread-group id of `pid` (its process), from /proc/PID/status.
pub fn tgid(pid: u32) -> Option<u32> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Checks a `--pid`: a live process, not one of its threads.
pub fn check_pid(pid: u32) -> Result<(), TargetError> {
    if !pid_alive(pid) {
        return Err(TargetError::NoSuchProcess(pid));
    }
    match tgid(pid) {
        Some(tgid) if tgid != pid => Err(TargetError::NotAProcess { tid: pid, tgid }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_state_after_odd_comm() {
        assert_eq!(stat_state("42 (a) b (c)) S 1 42 42 0"), Some('S'));
        assert_eq!(stat_state("7 (x) Z 1 7"), Some('Z'));
        assert_eq!(stat_state("garbage"), None);
    }

    #[test]
    fn start_time_and_age() {
        let stat = "42 (a) b) S 1 42 42 0 -1 4194304 100 0 0 0 5 3 0 0 20 0 1 0 123456 1000 50";
        assert_eq!(start_ticks(stat), Some(123456));
        let mine = age(std::process::id()).expect("own age");
        assert!(mine < std::time::Duration::from_secs(24 * 3600), "{mine:?}");
        assert_eq!(age(0), None);
    }

    #[test]
    fn self_is_alive() {
        let me = std::process::id();
        assert!(pid_alive(me));
        assert!(comm(me).is_some_and(|c| !c.is_empty() && !c.ends_with('\n')));
        assert!(check_pid(me).is_ok());
        assert!(!pid_alive(0));
        assert!(!pid_alive(u32::MAX - 1));
        assert_eq!(
            check_pid(u32::MAX - 1).unwrap_err().to_string(),
            format!("no running process with pid {}", u32::MAX - 1)
        );
    }

    #[test]
    fn thread_is_not_a_process() {
        let me = std::process::id();
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let h = std::thread::spawn(move || {
            tx.send(unsafe { libc::gettid() } as u32).unwrap();
            let _ = done_rx.recv();
        });
        let tid = rx.recv().unwrap();
        assert!(
            matches!(check_pid(tid), Err(TargetError::NotAProcess { tid: t, tgid }) if t == tid && tgid == me)
        );
        done_tx.send(()).unwrap();
        h.join().unwrap();
    }

    #[test]
    fn zombie_is_not_alive() {
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            unsafe { libc::_exit(0) };
        }
        assert!(pid > 0);
        let pid = pid as u32;
        // Unreaped, the child becomes a zombie.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while pid_alive(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let zombie = !pid_alive(pid) && fs::metadata(format!("/proc/{pid}")).is_ok();
        unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), 0) };
        assert!(zombie);
    }
}
