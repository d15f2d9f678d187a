//! A process's root directory (`/proc/PID/root`), held open so that files in a container's own
//! file system (its perf maps, its debug packages) can still be read after the process exited.
//!
//! Paths are resolved with `openat2(RESOLVE_IN_ROOT)`, so a symbolic link in the container
//! (`/tmp/perf-1.map -> /etc/shadow`) resolves inside the container, never on the host.

use std::{
    ffi::CString,
    fs::{self, File},
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::Path,
};

/// An open root directory of some process.
#[derive(Debug)]
pub struct RootDir {
    fd: OwnedFd,
    /// The process it was taken from (for messages and reports).
    pid: u32,
    /// Whether it is the root we see ourselves (the same directory on the same mount).
    same_as_ours: bool,
}

impl RootDir {
    /// Opens `/proc/<pid>/root`.
    pub fn open(pid: u32) -> io::Result<Self> {
        Self::open_dir(&format!("/proc/{pid}/root"), pid)
    }

    /// Opens the directory `dir` as the root of `pid`.
    pub fn open_dir(dir: &str, pid: u32) -> io::Result<Self> {
        let fd = open_path(dir)?;
        let theirs = fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        let ours = fs::metadata("/")?;
        let same_as_ours = (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino());
        Ok(Self { fd, pid, same_as_ours })
    }

    /// Whether this is our own root (then host paths reach the same files).
    pub fn same_as_ours(&self) -> bool {
        self.same_as_ours
    }

    /// How to show `path` inside this root to a person: `/proc/PID/root/path`, or just `path`
    /// for our own root.
    pub fn display(&self, path: &Path) -> String {
        if self.same_as_ours {
            path.display().to_string()
        } else {
            format!("/proc/{}/root{}", self.pid, path.display())
        }
    }

    /// Opens the regular file `path` (absolute or not, taken relative to this root) for reading,
    /// resolving every component and symbolic link inside this root.
    pub fn open_file(&self, path: &Path) -> io::Result<File> {
        let rel = path.strip_prefix("/").unwrap_or(path);
        let file = match openat2_in_root(&self.fd, rel) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => self.open_file_fallback(rel)?,
            other => other?,
        };
        regular(file)
    }

    /// Kernels before 5.6 have no openat2: go through `/proc/self/fd/N/...`, refusing a
    /// symbolic link as the last component (links in directories are still followed).
    fn open_file_fallback(&self, rel: &Path) -> io::Result<File> {
        let p = Path::new(&format!("/proc/self/fd/{}", self.fd.as_raw_fd())).join(rel);
        let c = CString::new(p.as_os_str().as_bytes())?;
        let flags = libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_NOFOLLOW;
        // SAFETY: `c` is a valid C string; the returned fd is owned by the File.
        let fd = unsafe { libc::open(c.as_ptr(), flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        Ok(unsafe { File::from_raw_fd(fd) })
    }
}

/// Opens a host path for reading, refusing anything but a regular file (a FIFO would block).
pub fn open_host_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    regular(file)
}

/// `file` if it is a regular file, else an error.
fn regular(file: File) -> io::Result<File> {
    if file.metadata()?.is_file() {
        Ok(file)
    } else {
        Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"))
    }
}

/// `open(path, O_PATH | O_DIRECTORY)`.
fn open_path(path: &str) -> io::Result<OwnedFd> {
    let c = CString::new(path)?;
    // SAFETY: `c` is a valid C string; the returned fd is owned by the OwnedFd.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `openat2(root, rel, O_RDONLY, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`.
fn openat2_in_root(root: &OwnedFd, rel: &Path) -> io::Result<File> {
    let c = CString::new(rel.as_os_str().as_bytes())?;
    // SAFETY: open_how is plain data; all-zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid fd, C string and open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new fd that nobody else owns.
    Ok(unsafe { File::from_raw_fd(fd as i32) })
}

/// The pid of `pid` in its own pid namespace: the last field of `NSpid:` in /proc/PID/status
/// (`pid` itself on kernels without that line).
pub fn ns_pid(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(parse_ns_pid(&status).unwrap_or(pid))
}

fn parse_ns_pid(status: &str) -> Option<u32> {
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn ns_pid_is_the_last_field() {
        assert_eq!(parse_ns_pid("Name:\tx\nNSpid:\t4242\t17\t1\nNSpgid:\t9\n"), Some(1));
        assert_eq!(parse_ns_pid("NSpid:\t4242\n"), Some(4242));
        assert_eq!(parse_ns_pid("Pid:\t5\n"), None);
        let me = std::process::id();
        assert!(ns_pid(me).is_some());
    }

    #[test]
    fn opens_inside_the_root_only() {
        let me = std::process::id();
        let root = RootDir::open(me).unwrap();
        assert!(root.same_as_ours());
        assert_eq!(root.display(Path::new("/tmp/x")), "/tmp/x");
        let dir = std::env::temp_dir().join(format!("memprof-root-{me}"));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("f.txt");
        fs::write(&f, "hello").unwrap();
        assert_eq!(fs::read_to_string(f.clone()).unwrap(), "hello");
        let opened = root.open_file(&f).unwrap();
        assert_eq!(opened.metadata().unwrap().len(), 5);
        // Directories and FIFOs are refused.
        assert!(root.open_file(&dir).is_err());
        let fifo = CString::new(dir.join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(root.open_file(&dir.join("fifo")).is_err());
        // An absolute link resolves in the root (ours here, so it still reaches the file).
        symlink(&f, dir.join("link")).unwrap();
        assert!(root.open_file(&dir.join("link")).is_ok());
        assert!(open_host_file(&dir.join("link")).is_ok());
        // In another root, absolute links and `..` stay inside it.
        let other = RootDir::open_dir(dir.to_str().unwrap(), 7).unwrap();
        assert!(!other.same_as_ours());
        assert_eq!(other.display(Path::new("/tmp/x")), "/proc/7/root/tmp/x");
        assert!(other.open_file(Path::new("/f.txt")).is_ok());
        assert!(other.open_file(Path::new("/link")).is_err());
        symlink("/f.txt", dir.join("inner")).unwrap();
        assert_eq!(other.open_file(Path::new("inner")).unwrap().metadata().unwrap().len(), 5);
        symlink("../../../../../../f.txt", dir.join("up")).unwrap();
        assert!(other.open_file(Path::new("/up")).is_ok());
        fs::remove_dir_all(&dir).unwrap();
    }
}
