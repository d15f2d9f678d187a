//! Finding an object's separate debug file, as GDB does: by build id
//! (`DIR/.build-id/xx/rest.debug`) first, then by `.gnu_debuglink` name (`OBJDIR/NAME`,
//! `OBJDIR/.debug/NAME`, `DIR/OBJDIR/NAME`, `DIR/NAME`).
//!
//! Every debug directory is searched inside the target's root first (a container's debug
//! packages are in its own file system) and then on the host. A candidate is only taken when it
//! matches: same build id, or (without build ids) the CRC-32 recorded in the debug link.

use std::{
    fs::File,
    io::{self, Read},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use log::debug;

use super::{elf_info::ElfInfo, root::{open_host_file, RootDir}};

/// The debug directories searched by default (in the target's root and on the host).
pub const DEFAULT_DEBUG_DIRS: &[&str] = &["/usr/lib/debug", "/lib/debug"];

/// A separate debug file that matches its object.
#[derive(Debug)]
pub struct DebugFile {
    /// Kept open: symbolization reads it through `/proc/self/fd/N`.
    pub file: File,
    /// Where it was found, for people (`/proc/PID/root/...` inside a container).
    pub shown: String,
    pub info: ElfInfo,
}

/// Which file system a candidate path is in.
#[derive(Clone, Copy)]
enum Place<'a> {
    Host,
    Root(&'a RootDir),
}

/// The object whose debug file is wanted.
pub struct Wanted<'a> {
    /// Its path as the process maps it (inside the process's root).
    pub path: &'a str,
    /// The open object (to rule it out as its own debug file).
    pub file: &'a File,
    pub info: &'a ElfInfo,
    /// The process's root; None or our own root means host paths.
    pub root: Option<&'a RootDir>,
}

/// Finds the debug file of `obj` in `dirs` (see the module documentation for the order).
pub fn find(obj: &Wanted<'_>, dirs: &[PathBuf]) -> Option<DebugFile> {
    candidates(obj, dirs).into_iter().find_map(|(place, path, by_id)| try_candidate(obj, place, &path, by_id))
}

/// Every place to look, in order, each with whether it is a build-id path.
fn candidates<'a>(obj: &Wanted<'a>, dirs: &[PathBuf]) -> Vec<(Place<'a>, PathBuf, bool)> {
    let places: Vec<Place<'a>> = match obj.root {
        Some(r) if !r.same_as_ours() => vec![Place::Root(r), Place::Host],
        _ => vec![Place::Host],
    };
    // The object's own directory only exists where the object is.
    let own = places[0];
    let mut out = Vec::new();
    if let Some(rel) = obj.info.build_id.as_deref().and_then(build_id_path) {
        for dir in dirs {
            out.extend(places.iter().map(|&p| (p, dir.join(&rel), true)));
        }
    }
    if let Some((name, _)) = &obj.info.debuglink {
        let name = Path::new(name);
        let objdir = Path::new(obj.path).parent().unwrap_or(Path::new("/"));
        out.push((own, objdir.join(name), false));
        out.push((own, objdir.join(".debug").join(name), false));
        let rel_objdir = objdir.strip_prefix("/").unwrap_or(objdir);
        for dir in dirs {
            out.extend(places.iter().map(|&p| (p, dir.join(rel_objdir).join(name), false)));
            out.extend(places.iter().map(|&p| (p, dir.join(name), false)));
        }
    }
    out
}

/// `.build-id/xx/rest.debug` for a build id (None for implausibly short ones).
fn build_id_path(id: &[u8]) -> Option<PathBuf> {
    if id.len() < 2 {
        return None;
    }
    Some(PathBuf::from(format!(".build-id/{:02x}/{}.debug", id[0], super::elf_info::hex(&id[1..]))))
}

/// Opens `path` in `place` and keeps it if it is the object's debug file.
fn try_candidate(obj: &Wanted<'_>, place: Place<'_>, path: &Path, by_id: bool) -> Option<DebugFile> {
    let file = match place {
        Place::Host => open_host_file(path),
        Place::Root(r) => r.open_file(path),
    }
    .ok()?;
    if same_file(&file, obj.file) {
        return None;
    }
    let shown = match place {
        Place::Host => path.display().to_string(),
        Place::Root(r) => r.display(path),
    };
    let info = ElfInfo::read(&file).ok()?;
    if !matches(obj.info, &info, &file, by_id) {
        debug!("{shown} does not match {}", obj.path);
        return None;
    }
    if !info.has_any_symbols() {
        return None;
    }
    debug!("debug file of {}: {shown}", obj.path);
    Some(DebugFile { file, shown, info })
}

/// Whether `cand` (in `file`) is the debug file of the object described by `obj`.
fn matches(obj: &ElfInfo, cand: &ElfInfo, file: &File, by_id: bool) -> bool {
    match (&obj.build_id, &cand.build_id) {
        (Some(a), Some(b)) => a == b,
        _ if by_id => false,
        _ => obj.debuglink.as_ref().is_some_and(|(_, crc)| crc32(file).ok() == Some(*crc)),
    }
}

/// Whether two open files are the same file.
fn same_file(a: &File, b: &File) -> bool {
    match (a.metadata(), b.metadata()) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// The CRC-32 `.gnu_debuglink` records: the standard (zlib) CRC-32 of the whole file.
fn crc32(file: &File) -> io::Result<u32> {
    let mut crc = flate2::Crc::new();
    let mut r = io::BufReader::with_capacity(1 << 20, file);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(crc.sum()),
            Ok(n) => crc.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_id_paths() {
        assert_eq!(
            build_id_path(&[0xab, 0xcd, 0xef, 0x01]),
            Some(PathBuf::from(".build-id/ab/cdef01.debug"))
        );
        assert_eq!(build_id_path(&[0xab]), None);
    }

    #[test]
    fn crc_is_zlibs() {
        let dir = std::env::temp_dir().join(format!("memprof-crc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x");
        std::fs::write(&p, b"123456789").unwrap();
        // The CRC-32 check value.
        assert_eq!(crc32(&File::open(&p).unwrap()).unwrap(), 0xcbf4_3926);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn search_order() {
        let f = File::open("/proc/self/exe").unwrap();
        let info = ElfInfo {
            build_id: Some(vec![0x12, 0x34, 0x56]),
            debuglink: Some(("app.debug".into(), 1)),
            ..ElfInfo::default()
        };
        let obj = Wanted { path: "/opt/app/bin/app", file: &f, info: &info, root: None };
        let dirs = [PathBuf::from("/usr/lib/debug"), PathBuf::from("/d")];
        let paths: Vec<PathBuf> = candidates(&obj, &dirs).into_iter().map(|(_, p, _)| p).collect();
        let want: Vec<PathBuf> = [
            "/usr/lib/debug/.build-id/12/3456.debug",
            "/d/.build-id/12/3456.debug",
            "/opt/app/bin/app.debug",
            "/opt/app/bin/.debug/app.debug",
            "/usr/lib/debug/opt/app/bin/app.debug",
            "/usr/lib/debug/app.debug",
            "/d/opt/app/bin/app.debug",
            "/d/app.debug",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(paths, want);
    }
}
