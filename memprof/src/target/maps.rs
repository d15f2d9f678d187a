//! A process's memory mappings (/proc/PID/maps).

use std::{fs, io, path::PathBuf};

/// One line of /proc/PID/maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    /// `rwxp` / `rwxs` with `-` for absent permissions, as the kernel prints them.
    pub perms: [u8; 4],
    /// Offset in the mapped file.
    pub offset: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    /// The file, or a pseudo-name such as `[heap]`; None for anonymous memory. Without the
    /// ` (deleted)` suffix.
    pub path: Option<String>,
    /// The file was deleted (or replaced) after it was mapped.
    pub deleted: bool,
}

impl MapEntry {
    pub fn is_exec(&self) -> bool {
        self.perms[2] == b'x'
    }

    pub fn is_readable(&self) -> bool {
        self.perms[0] == b'r'
    }

    /// Mapped from a file (not anonymous memory, nor `[vdso]` and the like).
    pub fn is_file_backed(&self) -> bool {
        self.inode != 0 && self.path.as_deref().is_some_and(|p| p.starts_with('/'))
    }

    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }

    /// `address - bias` = the object's virtual address, for this mapping of an object with
    /// loadable segments (file offset, virtual address, file size).
    pub fn load_bias(&self, segments: impl IntoIterator<Item = (u64, u64, u64)>) -> Option<u64> {
        let (off, vaddr, _) = segments
            .into_iter()
            .find(|&(off, _, size)| off & !0xfff <= self.offset && self.offset - off.min(self.offset) < size.max(1))?;
        Some(self.start.wrapping_sub(self.offset).wrapping_sub(vaddr.wrapping_sub(off)))
    }
}

/// Parses maps text; lines that do not parse are skipped. The result is sorted by start address.
pub fn parse_maps(text: &str) -> Vec<MapEntry> {
    let mut entries: Vec<MapEntry> = text.lines().filter_map(parse_line).collect();
    if !entries.is_sorted_by_key(|e| e.start) {
        entries.sort_by_key(|e| e.start);
    }
    entries
}

/// `start-end perms offset major:minor inode [path]`, the path possibly containing spaces.
fn parse_line(line: &str) -> Option<MapEntry> {
    let mut rest = line;
    let mut field = || {
        let s = rest.trim_start_matches(' ');
        let end = s.find(' ').unwrap_or(s.len());
        rest = &s[end..];
        Some(&s[..end]).filter(|f| !f.is_empty())
    };
    let (start, end) = field()?.split_once('-')?;
    let perms: [u8; 4] = field()?.as_bytes().try_into().ok()?;
    let offset = field()?;
    let (major, minor) = field()?.split_once(':')?;
    let inode = field()?.parse().ok()?;
    // The path starts after the padding; its own leading spaces are indistinguishable from it.
    let path = rest.trim_start_matches(' ');
    let (path, deleted) = match path.strip_suffix(" (deleted)") {
        Some(p) => (p, true),
        None => (path, false),
    };
    Some(MapEntry {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms,
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev_major: u32::from_str_radix(major, 16).ok()?,
        dev_minor: u32::from_str_radix(minor, 16).ok()?,
        inode,
        path: (!path.is_empty()).then(|| path.to_string()),
        deleted,
    })
}

/// The mappings of `pid`.
pub fn read_maps(pid: u32) -> io::Result<Vec<MapEntry>> {
    Ok(parse_maps(&fs::read_to_string(format!(
        "/proc/{pid}/maps"
    ))?))
}

/// `/proc/PID/map_files/<start>-<end>`: the mapped file itself, reachable even when it was
/// deleted or lives in another mount namespace (needs root).
pub fn map_files_path(pid: u32, e: &MapEntry) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/map_files/{:x}-{:x}", e.start, e.end))
}

/// The mapping containing `addr`, in entries sorted by start address.
pub fn lookup(entries: &[MapEntry], addr: u64) -> Option<&MapEntry> {
    let i = entries.partition_point(|e| e.start <= addr);
    entries[..i].last().filter(|e| addr < e.end)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
55d0c6a00000-55d0c6a02000 r--p 00000000 fe:01 1311      /usr/bin/cat
55d0c6a02000-55d0c6a07000 r-xp 00002000 fe:01 1311      /usr/bin/cat
55d0c7d1a000-55d0c7d3b000 rw-p 00000000 00:00 0         [heap]
7f1e2a000000-7f1e2a021000 rw-p 00000000 00:00 0 
7f1e2a228000-7f1e2a3bd000 r-xp 00028000 103:02 2883684   /usr/lib/x86_64-linux-gnu/libc.so.6
7f1e2a400000-7f1e2a401000 r-xp 00001000 00:2f 77        /tmp/my lib  v2.so (deleted)
7ffd1b5e6000-7ffd1b5e8000 r-xp 00000000 00:00 0         [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0  [vsyscall]
";

    #[test]
    fn parses_fields() {
        let m = parse_maps(SAMPLE);
        assert_eq!(m.len(), 8);
        let libc = &m[4];
        assert_eq!(
            *libc,
            MapEntry {
                start: 0x7f1e2a228000,
                end: 0x7f1e2a3bd000,
                perms: *b"r-xp",
                offset: 0x28000,
                dev_major: 0x103,
                dev_minor: 2,
                inode: 2883684,
                path: Some("/usr/lib/x86_64-linux-gnu/libc.so.6".into()),
                deleted: false,
            }
        );
        assert!(libc.is_exec() && libc.is_file_backed() && libc.is_readable());
        assert!(!m[0].is_exec() && m[0].is_file_backed());
        assert_eq!(m[2].path.as_deref(), Some("[heap]"));
        assert!(!m[2].is_file_backed());
        assert_eq!(m[3].path, None);
        assert!(m[6].is_exec() && !m[6].is_file_backed());
        assert_eq!(m[7].end, 0xffffffffff601000);
        assert_eq!(m[7].perms, *b"--xp");
    }

    #[test]
    fn spaces_and_deleted() {
        let e = &parse_maps(SAMPLE)[5];
        assert_eq!(e.path.as_deref(), Some("/tmp/my lib  v2.so"));
        assert!(e.deleted && e.is_file_backed());
    }

    #[test]
    fn skips_garbage_and_sorts() {
        let text = "junk\n2000-3000 r-xp 0 00:00 0\n1000-2000 r--p 00000000 00:00 0\n";
        let m = parse_maps(text);
        assert_eq!(
            m.iter().map(|e| e.start).collect::<Vec<_>>(),
            [0x1000, 0x2000]
        );
    }

    #[test]
    fn map_files_names() {
        let m = parse_maps(SAMPLE);
        assert_eq!(
            map_files_path(42, &m[4]),
            PathBuf::from("/proc/42/map_files/7f1e2a228000-7f1e2a3bd000")
        );
    }

    #[test]
    fn looks_up_addresses() {
        let m = parse_maps(SAMPLE);
        assert_eq!(lookup(&m, 0x55d0c6a02000).map(|e| e.offset), Some(0x2000));
        assert_eq!(lookup(&m, 0x55d0c6a06fff).map(|e| e.offset), Some(0x2000));
        assert_eq!(lookup(&m, 0x55d0c6a07000), None);
        assert_eq!(lookup(&m, 0x1000), None);
        assert_eq!(
            lookup(&m, 0x7f1e2a000000).and_then(|e| e.path.clone()),
            None
        );
        assert!(lookup(&m, 0x7f1e2a000000).is_some());
        assert_eq!(lookup(&m, u64::MAX), None);
        assert_eq!(lookup(&[], 5), None);
    }

    #[test]
    fn reads_own_maps() {
        let m = read_maps(std::process::id()).unwrap();
        let here = lookups_here as *const () as usize as u64;
        let e = lookup(&m, here).expect("own code is mapped");
        assert!(e.is_exec() && e.is_file_backed());
        assert!(std::fs::metadata(map_files_path(std::process::id(), e)).is_ok());
    }

    fn lookups_here() {}
}
