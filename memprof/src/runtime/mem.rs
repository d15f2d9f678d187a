//! Reading a target process's memory (`process_vm_readv`): no ptrace, no stop, nothing written.
//! Every read is bounded and may fail (the process exited, the address is garbage); callers
//! treat what they read as untrusted.

use std::io;

/// One process's memory, read-only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcMem {
    pub pid: u32,
}

/// The most one read may ask for.
pub const MAX_READ: usize = 1 << 20;

impl ProcMem {
    pub fn new(pid: u32) -> ProcMem {
        ProcMem { pid }
    }

    /// Fills `buf` from `addr`; an error unless every byte was read.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        if buf.len() > MAX_READ {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "read too large"));
        }
        if buf.is_empty() {
            return Ok(());
        }
        let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        let remote = libc::iovec { iov_base: addr as usize as *mut libc::c_void, iov_len: buf.len() };
        // SAFETY: `local` describes `buf`, which we own mutably; the remote side is only read by
        // the kernel, with the target's permissions checked.
        let n = unsafe { libc::process_vm_readv(self.pid as libc::pid_t, &local, 1, &remote, 1, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != buf.len() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short read"));
        }
        Ok(())
    }

    /// `len` bytes at `addr`.
    pub fn bytes(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        let mut v = vec![0; len];
        self.read(addr, &mut v).ok()?;
        Some(v)
    }

    /// Up to `len` bytes at `addr`: as many as are readable before the first unreadable page
    /// (a structure at the end of a mapping).
    pub fn bytes_prefix(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        let mut at = addr;
        while out.len() < len {
            let page_end = (at | 0xfff).wrapping_add(1);
            let n = ((page_end.wrapping_sub(at)) as usize).min(len - out.len());
            let start = out.len();
            out.resize(start + n, 0);
            if self.read(at, &mut out[start..]).is_err() {
                out.truncate(start);
                break;
            }
            at = at.wrapping_add(n as u64);
        }
        out
    }

    pub fn u64(&self, addr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b).ok()?;
        Some(u64::from_le_bytes(b))
    }

    pub fn u32(&self, addr: u64) -> Option<u32> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b).ok()?;
        Some(u32::from_le_bytes(b))
    }
}

/// Little-endian readers over a buffer read from a process: out-of-range offsets give None.
pub fn le_u64(buf: &[u8], off: u64) -> Option<u64> {
    let off = usize::try_from(off).ok()?;
    Some(u64::from_le_bytes(buf.get(off..off.checked_add(8)?)?.try_into().ok()?))
}

pub fn le_u32(buf: &[u8], off: u64) -> Option<u32> {
    let off = usize::try_from(off).ok()?;
    Some(u32::from_le_bytes(buf.get(off..off.checked_add(4)?)?.try_into().ok()?))
}

pub fn le_i32(buf: &[u8], off: u64) -> Option<i32> {
    le_u32(buf, off).map(|v| v as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_memory_and_fails_on_garbage() {
        let value: u64 = 0x1122_3344_5566_7788;
        let mem = ProcMem::new(std::process::id());
        assert_eq!(mem.u64(&value as *const u64 as u64), Some(value));
        assert_eq!(mem.u32(&value as *const u64 as u64), Some(0x5566_7788));
        assert_eq!(mem.u64(0), None);
        assert_eq!(mem.u64(0xffff_ffff_ffff_0000), None);
        assert!(mem.bytes(8, 16).is_none());
        assert_eq!(le_u64(&[1, 0, 0, 0, 0, 0, 0, 0], 0), Some(1));
        assert_eq!(le_u64(&[1, 0, 0], 0), None);
        assert_eq!(le_u32(&[0; 8], u64::MAX), None);
    }
}
