//! JIT symbols from perf map files (`/tmp/perf-PID.map`), as written by V8/Node
//! (`--perf-basic-prof`), Python (`-X perf`), the JVM agents, .NET and others.
//!
//! Each line is `START SIZE name`: START and SIZE in hex (with or without `0x`), the name the rest
//! of the line (it may contain spaces). Code space is re-used, so a later line wins over an
//! earlier one it overlaps. The file only grows while the process runs, so it is read
//! incrementally: a re-read parses just the lines appended since the last one.

use std::{
    collections::BTreeMap,
    fs::File,
    io,
    os::unix::fs::{FileExt, MetadataExt},
    sync::Arc,
};

/// The largest perf map read (a runaway or hostile file is cut off there).
const MAX_BYTES: u64 = 1 << 30;
/// Read (and parsed) this much at a time.
const CHUNK: usize = 4 << 20;

/// A parsed perf map: disjoint address ranges, each with the name of the code in it.
#[derive(Debug, Default)]
pub struct PerfMap {
    /// start → (end, name), disjoint ranges.
    ranges: BTreeMap<u64, (u64, Arc<str>)>,
    /// Bytes of the file parsed so far (always up to the end of a complete line).
    consumed: u64,
    /// (device, inode) of the file parsed, to notice a replaced one.
    identity: (u64, u64),
}

impl PerfMap {
    /// The name of the code at `addr`, if any line covers it.
    pub fn lookup(&self, addr: u64) -> Option<&str> {
        let (_, (end, name)) = self.ranges.range(..=addr).next_back()?;
        (addr < *end).then_some(&**name)
    }

    /// Number of disjoint ranges.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Parses the complete lines of `text` and adds them, later lines winning. Returns the number
    /// of bytes used (up to and including the last newline).
    pub fn feed(&mut self, text: &[u8]) -> usize {
        let used = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        for line in text[..used].split(|&b| b == b'\n') {
            if let Some((start, size, name)) = parse_line(&String::from_utf8_lossy(line)) {
                self.insert(start, start.saturating_add(size), name.into());
            }
        }
        used
    }

    /// Reads what was appended to `file` since the last call (everything, if it is another file
    /// or shrank: it was replaced). Returns whether anything new was parsed.
    pub fn update_from(&mut self, file: &File) -> io::Result<bool> {
        let meta = file.metadata()?;
        let identity = (meta.dev(), meta.ino());
        let len = meta.len().min(MAX_BYTES);
        if len < self.consumed || identity != self.identity {
            *self = Self { identity, ..Self::default() };
        }
        let mut any = false;
        let mut buf = vec![0u8; (len.saturating_sub(self.consumed)).min(CHUNK as u64) as usize];
        while self.consumed < len {
            let want = (len - self.consumed).min(CHUNK as u64) as usize;
            let n = read_fully_at(file, &mut buf[..want], self.consumed)?;
            if n == 0 {
                break;
            }
            let used = self.feed(&buf[..n]);
            if used == 0 && n < CHUNK {
                // An unfinished last line: parsed once it is complete.
                break;
            }
            // A line longer than a chunk is garbage: skip it.
            self.consumed += if used == 0 { n as u64 } else { used as u64 };
            any |= used > 0;
        }
        Ok(any)
    }

    /// Maps `[start, end)` to `name`, cutting away what earlier ranges had there.
    fn insert(&mut self, start: u64, end: u64, name: Arc<str>) {
        if start >= end {
            return;
        }
        // A range starting before `start` that reaches into the new one keeps its head (and its
        // tail if it also reaches past `end`).
        if let Some((&s, (e, n))) = self.ranges.range(..start).next_back() {
            if *e > start {
                let (e, n) = (*e, n.clone());
                self.ranges.insert(s, (start, n.clone()));
                if e > end {
                    self.ranges.insert(end, (e, n));
                }
            }
        }
        // Ranges starting inside the new one are dropped, keeping the tail of the last one.
        let inside: Vec<u64> = self.ranges.range(start..end).map(|(&s, _)| s).collect();
        for s in inside {
            if let Some((e, n)) = self.ranges.remove(&s) {
                if e > end {
                    self.ranges.insert(end, (e, n));
                }
            }
        }
        self.ranges.insert(start, (end, name));
    }
}

/// `START SIZE name` → (start, size, name); None for anything else (blank lines, comments,
/// garbage).
pub fn parse_line(line: &str) -> Option<(u64, u64, &str)> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let (start, rest) = line.trim_start().split_once(|c: char| c.is_ascii_whitespace())?;
    let (size, name) = rest.trim_start().split_once(|c: char| c.is_ascii_whitespace())?;
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    Some((parse_hex(start)?, parse_hex(size)?, name))
}

fn parse_hex(s: &str) -> Option<u64> {
    let s = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).unwrap_or(s);
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// Reads into `buf` from `offset` until it is full or the file ends; returns the bytes read.
fn read_fully_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn parses_lines() {
        assert_eq!(
            parse_line("3ef414a0a0 1c LazyCompile:*foo /a b/x.js:1:2"),
            Some((0x3ef414a0a0, 0x1c, "LazyCompile:*foo /a b/x.js:1:2"))
        );
        assert_eq!(parse_line("0x1000 0X20 py::f:/t.py"), Some((0x1000, 0x20, "py::f:/t.py")));
        assert_eq!(parse_line("1000\t20\tname with  spaces \r"), Some((0x1000, 0x20, "name with  spaces")));
        for bad in ["", "# comment", "1000 20", "1000 20   ", "zz 20 f", "1000 -1 f", "0x 20 f", "1000"] {
            assert_eq!(parse_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn later_lines_win() {
        let mut m = PerfMap::default();
        let text = "1000 100 a\n1040 20 b\n10f0 20 c\n0fff 2 d\njunk line\n2000 10 e";
        assert_eq!(m.feed(text.as_bytes()), text.rfind('\n').unwrap() + 1);
        assert_eq!(m.lookup(0xfff), Some("d"));
        assert_eq!(m.lookup(0x1000), Some("d"));
        assert_eq!(m.lookup(0x1001), Some("a"));
        assert_eq!(m.lookup(0x103f), Some("a"));
        assert_eq!(m.lookup(0x1040), Some("b"));
        assert_eq!(m.lookup(0x105f), Some("b"));
        assert_eq!(m.lookup(0x1060), Some("a"));
        assert_eq!(m.lookup(0x10ef), Some("a"));
        assert_eq!(m.lookup(0x10f0), Some("c"));
        assert_eq!(m.lookup(0x110f), Some("c"));
        assert_eq!(m.lookup(0x1110), None);
        assert_eq!(m.lookup(0xffe), None);
        // The unterminated last line is not used yet.
        assert_eq!(m.lookup(0x2000), None);
        // A range swallowing several earlier ones.
        m.feed(b"1000 200 big\n");
        assert_eq!(m.lookup(0xfff), Some("d"));
        assert_eq!(m.lookup(0x1050), Some("big"));
        assert_eq!(m.lookup(0x11ff), Some("big"));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn reads_a_growing_file() {
        let dir = std::env::temp_dir().join(format!("memprof-perfmap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("perf-1.map");
        let mut w = File::create(&path).unwrap();
        write!(w, "7f0000001000 40 JS:*leakyFunction /app/leak.js:3:20\n7f0000002000 10 half").unwrap();
        let r = File::open(&path).unwrap();
        let mut m = PerfMap::default();
        assert!(m.update_from(&r).unwrap());
        assert_eq!(m.lookup(0x7f0000001010), Some("JS:*leakyFunction /app/leak.js:3:20"));
        assert_eq!(m.lookup(0x7f0000002000), None);
        assert!(!m.update_from(&r).unwrap());
        writeln!(w, "-line\n0x7f0000001000 0x20 LazyCompile:*foo").unwrap();
        assert!(m.update_from(&r).unwrap());
        assert_eq!(m.lookup(0x7f0000002008), Some("half-line"));
        assert_eq!(m.lookup(0x7f0000001010), Some("LazyCompile:*foo"));
        assert_eq!(m.lookup(0x7f0000001030), Some("JS:*leakyFunction /app/leak.js:3:20"));
        // Replaced by a shorter file: parsed afresh.
        std::fs::write(&path, "1000 10 x\n").unwrap();
        let r = File::open(&path).unwrap();
        assert!(m.update_from(&r).unwrap());
        assert_eq!(m.lookup(0x1004), Some("x"));
        assert_eq!(m.lookup(0x7f0000001010), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reads_in_chunks() {
        let dir = std::env::temp_dir().join(format!("memprof-perfmap-big-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("perf-2.map");
        let mut text = String::new();
        for i in 0..200_000u64 {
            text.push_str(&format!("{:x} 10 JS:*f{i} /app/some/file.js:{i}:1\n", 0x10000 + i * 0x10));
        }
        assert!(text.len() > 2 * CHUNK);
        std::fs::write(&path, &text).unwrap();
        let mut m = PerfMap::default();
        assert!(m.update_from(&File::open(&path).unwrap()).unwrap());
        assert_eq!(m.len(), 200_000);
        assert_eq!(m.lookup(0x10000 + 123_456 * 0x10 + 3), Some("JS:*f123456 /app/some/file.js:123456:1"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
