//! uprobe_multi links (kernel 6.6+): one BPF link per (process, object, program) carrying every
//! offset of that program in the object, filtered on the process — made with `BPF_LINK_CREATE`
//! and `BPF_TRACE_UPROBE_MULTI`, which aya 0.14 has no API for (its programs are loaded for them
//! with `UProbe::load_multi`, our patch, see `vendor/aya/MEMPROF-PATCH.md`).
//!
//! Why: a perf-event uprobe link is released one at a time, each waiting for an RCU-tasks-trace
//! grace period under a global mutex (~0.1 s each here: 850 links took 85 s to release). A
//! uprobe_multi link is released with one close, waits once for all its offsets, and closes
//! from several threads share grace periods.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    os::unix::ffi::OsStrExt,
    path::Path,
};

/// `BPF_LINK_CREATE`.
const BPF_LINK_CREATE: libc::c_long = 28;
/// `BPF_TRACE_UPROBE_MULTI` of `enum bpf_attach_type`.
const BPF_TRACE_UPROBE_MULTI: u32 = 48;
/// `BPF_TRACE_UPROBE_SESSION` (kernel 6.13+): the program runs at entry and, when the entry
/// returned 0, at the return.
const BPF_TRACE_UPROBE_SESSION: u32 = 57;
/// `BPF_F_UPROBE_MULTI_RETURN`: the links's probes are return probes.
const BPF_F_UPROBE_MULTI_RETURN: u32 = 1;

/// What a link's probes run at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Entry,
    Return,
    /// Entry, then the return when the entry asked for it (a uprobe session).
    Session,
}

/// `union bpf_attr` for `BPF_LINK_CREATE` with its `uprobe_multi` member.
#[repr(C)]
#[derive(Default)]
struct LinkCreateUprobeMulti {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    path: u64,
    offsets: u64,
    ref_ctr_offsets: u64,
    cookies: u64,
    cnt: u32,
    uprobe_flags: u32,
    pid: u32,
    _pad: u32,
}

/// A uprobe_multi link; dropping it detaches its probes.
#[derive(Debug)]
pub struct MultiLink(#[allow(dead_code)] OwnedFd);

/// Attaches `prog` (loaded with `load_multi`) at `offsets` (file offsets) of the ELF file at
/// `path`, for process `pid` only. A session program must have been loaded with `load_session`.
/// `cookies`: empty, or one per offset (the program reads it with `bpf_get_attach_cookie`).
pub fn attach(
    prog: BorrowedFd<'_>,
    path: &Path,
    offsets: &[u64],
    cookies: &[u64],
    pid: u32,
    kind: Kind,
) -> io::Result<MultiLink> {
    if offsets.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no offsets"));
    }
    if !cookies.is_empty() && cookies.len() != offsets.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "one cookie per offset"));
    }
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))?;
    let attr = LinkCreateUprobeMulti {
        prog_fd: prog.as_raw_fd() as u32,
        attach_type: if kind == Kind::Session { BPF_TRACE_UPROBE_SESSION } else { BPF_TRACE_UPROBE_MULTI },
        path: c_path.as_ptr() as u64,
        offsets: offsets.as_ptr() as u64,
        cookies: if cookies.is_empty() { 0 } else { cookies.as_ptr() as u64 },
        cnt: offsets.len() as u32,
        uprobe_flags: if kind == Kind::Return { BPF_F_UPROBE_MULTI_RETURN } else { 0 },
        pid,
        ..Default::default()
    };
    // SAFETY: the bpf syscall reads `attr` (and the path and offsets it points to, alive here).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            &attr as *const LinkCreateUprobeMulti,
            std::mem::size_of::<LinkCreateUprobeMulti>() as u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(MultiLink(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

/// Whether the running kernel has uprobe_multi links (6.6 or newer).
pub fn kernel_supports() -> bool {
    kernel_at_least(6, 6)
}

/// Whether the running kernel has uprobe sessions (6.13 or newer).
pub fn kernel_supports_sessions() -> bool {
    kernel_at_least(6, 13)
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname fills the struct.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return false;
    }
    let release: String = uts.release.iter().take_while(|&&c| c != 0).map(|&c| c as u8 as char).collect();
    release_at_least(&release, major, minor)
}

fn release_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let (Some(Ok(a)), Some(Ok(b))) = (parts.next().map(str::parse::<u32>), parts.next().map(str::parse::<u32>)) else {
        return false;
    };
    (a, b) >= (major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_layout_matches_the_kernel() {
        // offsetof(union bpf_attr, link_create.uprobe_multi.path) == 16, .pid == 56.
        assert_eq!(std::mem::size_of::<LinkCreateUprobeMulti>(), 64);
        let a = LinkCreateUprobeMulti::default();
        let base = &a as *const _ as usize;
        assert_eq!(&a.path as *const _ as usize - base, 16);
        assert_eq!(&a.cnt as *const _ as usize - base, 48);
        assert_eq!(&a.pid as *const _ as usize - base, 56);
    }

    #[test]
    fn kernel_releases() {
        assert!(release_at_least("6.18.0-amd64", 6, 6));
        assert!(release_at_least("6.6.1", 6, 6));
        assert!(!release_at_least("6.5.13-generic", 6, 6));
        assert!(!release_at_least("5.15.0", 6, 6));
        assert!(!release_at_least("garbage", 6, 6));
    }
}
