//! Syscall tracepoints need tracefs; mount it when the host has not (and unmount it at the end).

use std::{ffi::CString, io, path::Path};

const TRACEFS: &str = "/sys/kernel/tracing";

/// Unmounts tracefs on drop if we mounted it.
pub struct TracefsGuard {
    mounted_by_us: bool,
}

impl Drop for TracefsGuard {
    fn drop(&mut self) {
        if self.mounted_by_us {
            let target = CString::new(TRACEFS).expect("no NUL");
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

fn is_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines().any(|l| {
                let mut f = l.split(' ');
                let point = f.nth(4);
                let fstype = l.split(" - ").nth(1).and_then(|r| r.split(' ').next());
                (point == Some(TRACEFS) && fstype == Some("tracefs"))
                    || (point == Some("/sys/kernel/debug") && fstype == Some("debugfs"))
            })
        })
        .unwrap_or(false)
}

/// Makes sure tracefs is reachable.
pub fn ensure_mounted() -> io::Result<TracefsGuard> {
    if is_mounted() || Path::new(TRACEFS).join("events").exists() {
        return Ok(TracefsGuard { mounted_by_us: false });
    }
    let src = CString::new("nodev").expect("no NUL");
    let target = CString::new(TRACEFS).expect("no NUL");
    let fstype = CString::new("tracefs").expect("no NUL");
    let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TracefsGuard { mounted_by_us: true })
}
