//! Finding the cgroup v2 hierarchy and resolving what the user named in it.
//!
//! The mount point is always read from /proc/self/mountinfo: pure v2 systems mount it at
//! /sys/fs/cgroup, hybrid ones (v1 controllers plus v2) at /sys/fs/cgroup/unified.

use std::{
    fs,
    io::{self, ErrorKind},
    os::unix::fs::MetadataExt,
    path::{Component, Path, PathBuf},
};

use super::TargetError;

/// How deep the name search and the process walk descend below the cgroup root.
const MAX_DEPTH: usize = 32;
/// How many candidates an ambiguity error lists.
const MAX_CANDIDATES: usize = 10;

/// A cgroup v2 directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupTarget {
    /// Absolute path, under the cgroup v2 mount.
    pub path: PathBuf,
    /// Path relative to the mount, starting with '/' ("/" for the root).
    pub rel: String,
    /// Inode number of the directory: what bpf_get_current_cgroup_id returns.
    pub id: u64,
    /// Number of path components below the v2 root; the root is 0.
    pub level: u32,
}

/// The cgroup v2 mount point of this mount namespace.
pub fn find_cgroup2_mount() -> Result<PathBuf, TargetError> {
    let text = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| TargetError::io("cannot read /proc/self/mountinfo", e))?;
    parse_cgroup2_mount(&text).ok_or(TargetError::NoCgroup2Mount)
}

/// The cgroup v2 mount point in mountinfo text: the first one that mounts the hierarchy's root,
/// else the first one.
pub fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    let mut first = None;
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        if post.split(' ').next() != Some("cgroup2") {
            continue;
        }
        // id parent major:minor root mount-point options [optional fields...]
        let fields: Vec<&str> = pre.split(' ').collect();
        let (Some(root), Some(mount_point)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        let mount_point = PathBuf::from(unescape_octal(mount_point));
        if *root == "/" {
            return Some(mount_point);
        }
        first.get_or_insert(mount_point);
    }
    first
}

/// Undoes the kernel's `\ooo` escaping of space, tab, newline and backslash in mountinfo.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            if let Ok(v) = u8::try_from(v) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Resolves what the user named: an absolute path to a directory inside the v2 mount, a path
/// relative to the mount (`foo/bar` or `/foo/bar`), or a bare directory name searched in the
/// whole v2 tree (it must match exactly one directory).
pub fn resolve_cgroup(spec: &str, mount: &Path) -> Result<CgroupTarget, TargetError> {
    let mount = fs::canonicalize(mount).map_err(|e| {
        TargetError::io(
            format!("cannot resolve the cgroup v2 mount {}", mount.display()),
            e,
        )
    })?;
    let no_cgroup = || TargetError::NoCgroup {
        name: spec.to_string(),
        mount: mount.clone(),
    };
    if spec.is_empty() {
        return Err(no_cgroup());
    }
    let is_bare_name = !spec.contains('/') && spec != "." && spec != "..";
    if is_bare_name {
        let mut found = Vec::new();
        search(&mount, spec, 1, &mut found);
        found.sort();
        return match found.len() {
            0 => Err(no_cgroup()),
            1 => target_at(&mount, &found[0]),
            n => {
                let mut candidates: Vec<String> = found
                    .iter()
                    .take(MAX_CANDIDATES)
                    .map(|p| rel_of(&mount, p))
                    .collect();
                if n > MAX_CANDIDATES {
                    candidates.push(format!("and {} more", n - MAX_CANDIDATES));
                }
                Err(TargetError::AmbiguousCgroup {
                    name: spec.to_string(),
                    candidates: candidates.join(", "),
                })
            }
        };
    }
    let under_mount = mount.join(spec.trim_start_matches('/'));
    let spec_path = Path::new(spec);
    if spec_path.is_absolute() && spec_path.exists() {
        let path = canonical(spec_path)?;
        if path.starts_with(&mount) {
            return target_at(&mount, &path);
        }
        // `/foo` naming the cgroup /foo, which happens to exist as a path too (`/` = the root).
        if under_mount.is_dir() {
            let inner = canonical(&under_mount)?;
            if inner.starts_with(&mount) {
                return target_at(&mount, &inner);
            }
        }
        return Err(TargetError::OutsideMount { path, mount });
    }
    if !under_mount.exists() {
        return Err(no_cgroup());
    }
    let path = canonical(&under_mount)?;
    if !path.starts_with(&mount) {
        return Err(TargetError::OutsideMount { path, mount });
    }
    target_at(&mount, &path)
}

fn canonical(p: &Path) -> Result<PathBuf, TargetError> {
    fs::canonicalize(p).map_err(|e| TargetError::io(format!("cannot resolve {}", p.display()), e))
}

/// Collects the directories named `name` below `dir` (not following symlinks).
fn search(dir: &Path, name: &str, depth: usize, found: &mut Vec<PathBuf>) {
    if depth > MAX_DEPTH {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = entry.path();
        if entry.file_name() == name {
            found.push(path.clone());
        }
        search(&path, name, depth + 1, found);
    }
}

/// The path of `path` relative to `mount`, starting with '/'.
fn rel_of(mount: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(mount).unwrap_or(path);
    format!("/{}", rel.to_string_lossy())
}

/// Describes the cgroup at `path`, a canonical path under the canonical `mount`.
fn target_at(mount: &Path, path: &Path) -> Result<CgroupTarget, TargetError> {
    let meta = fs::metadata(path)
        .map_err(|e| TargetError::io(format!("cannot stat {}", path.display()), e))?;
    if !meta.is_dir() {
        return Err(TargetError::NotADirectory(path.to_path_buf()));
    }
    let rel = path.strip_prefix(mount).unwrap_or(Path::new(""));
    let level = rel
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count() as u32;
    Ok(CgroupTarget {
        path: path.to_path_buf(),
        rel: rel_of(mount, path),
        id: meta.ino(),
        level,
    })
}

/// The processes in `dir` and all its descendant cgroups, sorted and deduplicated. Descendants
/// removed while walking are skipped; an error reading `dir` itself is returned.
pub fn cgroup_tree_pids(dir: &Path) -> io::Result<Vec<u32>> {
    let mut pids = Vec::new();
    read_procs(dir, &mut pids)?;
    walk_pids(dir, 1, &mut pids);
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

fn read_procs(dir: &Path, pids: &mut Vec<u32>) -> io::Result<()> {
    let text = fs::read_to_string(dir.join("cgroup.procs"))?;
    pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    Ok(())
}

fn walk_pids(dir: &Path, depth: usize, pids: &mut Vec<u32>) {
    if depth > MAX_DEPTH {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = entry.path();
        match read_procs(&path, pids) {
            Ok(()) => {}
            // Removed concurrently (ENOENT, or ENODEV on an open file), or a threaded cgroup
            // whose processes belong to its thread root (EOPNOTSUPP).
            Err(e) if is_gone(&e) || e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
            Err(e) => log::debug!("cannot read {}/cgroup.procs: {e}", path.display()),
        }
        walk_pids(&path, depth + 1, pids);
    }
}

fn is_gone(e: &io::Error) -> bool {
    e.kind() == ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENODEV)
}

/// The cgroup v2 of a process, from the `0::` line of /proc/PID/cgroup.
pub fn cgroup_of_pid(pid: u32, mount: &Path) -> Result<CgroupTarget, TargetError> {
    let text = match fs::read_to_string(format!("/proc/{pid}/cgroup")) {
        Ok(t) => t,
        Err(e) if is_gone(&e) || e.raw_os_error() == Some(libc::ESRCH) => {
            return Err(TargetError::NoSuchProcess(pid))
        }
        Err(e) => {
            return Err(TargetError::io(
                format!("cannot read /proc/{pid}/cgroup"),
                e,
            ))
        }
    };
    let rel = parse_pid_cgroup(&text).ok_or_else(|| TargetError::NoCgroup {
        name: format!("of pid {pid} (no 0:: line in /proc/{pid}/cgroup)"),
        mount: mount.to_path_buf(),
    })?;
    let mount = canonical(mount)?;
    let path = canonical(&mount.join(rel.trim_start_matches('/')))?;
    if !path.starts_with(&mount) {
        return Err(TargetError::OutsideMount { path, mount });
    }
    target_at(&mount, &path)
}

/// The cgroup v2 path in /proc/PID/cgroup text.
fn parse_pid_cgroup(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_end_matches(" (deleted)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
";
    const PURE_V2: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
28 21 0:25 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn finds_hybrid_mount() {
        assert_eq!(
            parse_cgroup2_mount(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn finds_pure_v2_mount() {
        assert_eq!(
            parse_cgroup2_mount(PURE_V2),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn no_v2_mount() {
        let v1_only: String = HYBRID
            .lines()
            .filter(|l| !l.contains("cgroup2"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(parse_cgroup2_mount(&v1_only), None);
        assert_eq!(parse_cgroup2_mount(""), None);
    }

    #[test]
    fn unescapes_mount_point_and_prefers_root_mount() {
        let text = "\
50 1 0:40 /sub /mnt/nested rw - cgroup2 cgroup2 rw
51 1 0:40 / /mnt/my\\040cgroups\\134x rw shared:3 master:1 - cgroup2 none rw
";
        assert_eq!(
            parse_cgroup2_mount(text),
            Some(PathBuf::from("/mnt/my cgroups\\x"))
        );
        assert_eq!(
            parse_cgroup2_mount(text.lines().next().unwrap()),
            Some(PathBuf::from("/mnt/nested"))
        );
        assert_eq!(unescape_octal("a\\011b\\012c\\"), "a\tb\nc\\");
        assert_eq!(unescape_octal("\\0"), "\\0");
    }

    #[test]
    fn pid_cgroup_line() {
        assert_eq!(
            parse_pid_cgroup("12:memory:/x\n0::/system.slice/a.service\n"),
            Some("/system.slice/a.service")
        );
        assert_eq!(parse_pid_cgroup("0::/\n"), Some("/"));
        assert_eq!(parse_pid_cgroup("1:name=systemd:/\n"), None);
    }

    /// A fake hierarchy in a temporary directory: the resolver only needs directories.
    struct Tree(PathBuf);
    impl Tree {
        fn new(tag: &str, dirs: &[&str]) -> Tree {
            let root =
                std::env::temp_dir().join(format!("memprof-cg-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            for d in dirs {
                fs::create_dir_all(root.join(d)).unwrap();
            }
            Tree(fs::canonicalize(&root).unwrap())
        }
    }
    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn resolves_all_spec_forms() {
        let t = Tree::new(
            "forms",
            &[
                "system.slice/api.service",
                "user.slice/u/app",
                "a/dup",
                "b/c/dup",
            ],
        );
        let m = &t.0;
        let abs = resolve_cgroup(m.join("system.slice/api.service").to_str().unwrap(), m).unwrap();
        assert_eq!(abs.rel, "/system.slice/api.service");
        assert_eq!(abs.level, 2);
        assert_eq!(
            abs.id,
            fs::metadata(m.join("system.slice/api.service"))
                .unwrap()
                .ino()
        );
        assert_eq!(resolve_cgroup("system.slice/api.service", m).unwrap(), abs);
        assert_eq!(resolve_cgroup("/system.slice/api.service", m).unwrap(), abs);
        assert_eq!(resolve_cgroup("api.service", m).unwrap(), abs);
        let app = resolve_cgroup("app", m).unwrap();
        assert_eq!((app.rel.as_str(), app.level), ("/user.slice/u/app", 3));
        let root = resolve_cgroup(m.to_str().unwrap(), m).unwrap();
        assert_eq!((root.rel.as_str(), root.level), ("/", 0));
        assert_eq!(resolve_cgroup("/", m).unwrap(), root);
    }

    #[test]
    fn reports_missing_ambiguous_and_outside() {
        let t = Tree::new("errs", &["a/dup", "b/c/dup", "x"]);
        let m = &t.0;
        let err = resolve_cgroup("nope", m).unwrap_err().to_string();
        assert!(err.starts_with("no cgroup named \"nope\" under "), "{err}");
        let err = resolve_cgroup("dup", m).unwrap_err().to_string();
        assert!(err.contains("/a/dup, /b/c/dup"), "{err}");
        let err = resolve_cgroup("/etc", m).unwrap_err();
        assert!(matches!(err, TargetError::OutsideMount { .. }), "{err}");
        assert!(matches!(
            resolve_cgroup("x/../..", m),
            Err(TargetError::OutsideMount { .. })
        ));
        assert!(matches!(
            resolve_cgroup("x/missing", m),
            Err(TargetError::NoCgroup { .. })
        ));
        assert!(!err.to_string().contains('\n'));
    }

    #[test]
    fn ambiguity_list_is_bounded() {
        let dirs: Vec<String> = (0..13).map(|i| format!("p{i:02}/same")).collect();
        let refs: Vec<&str> = dirs.iter().map(String::as_str).collect();
        let t = Tree::new("many", &refs);
        let err = resolve_cgroup("same", &t.0).unwrap_err().to_string();
        assert!(err.ends_with("/p09/same, and 3 more"), "{err}");
        assert!(!err.contains("/p10/"), "{err}");
    }

    #[test]
    fn symlinks_are_not_followed() {
        let t = Tree::new("links", &["real/target"]);
        std::os::unix::fs::symlink(t.0.join("real"), t.0.join("link")).unwrap();
        assert_eq!(resolve_cgroup("target", &t.0).unwrap().rel, "/real/target");
    }

    #[test]
    fn collects_tree_pids() {
        let t = Tree::new("pids", &["a/b", "c"]);
        fs::write(t.0.join("cgroup.procs"), "5\n1\n").unwrap();
        fs::write(t.0.join("a/cgroup.procs"), "3\n").unwrap();
        fs::write(t.0.join("a/b/cgroup.procs"), "1\n9\n").unwrap();
        // c has no cgroup.procs: as if removed while walking.
        assert_eq!(cgroup_tree_pids(&t.0).unwrap(), vec![1, 3, 5, 9]);
        assert!(cgroup_tree_pids(&t.0.join("gone")).is_err());
    }

    #[test]
    fn live_hierarchy() {
        let Ok(mount) = find_cgroup2_mount() else {
            return;
        };
        let me = cgroup_of_pid(std::process::id(), &mount).unwrap();
        assert!(me.path.starts_with(fs::canonicalize(&mount).unwrap()));
        assert_eq!(
            me.level as usize,
            me.rel.split('/').filter(|s| !s.is_empty()).count()
        );
        if let Ok(pids) = cgroup_tree_pids(&me.path) {
            assert!(pids.contains(&std::process::id()), "{pids:?}");
        }
        let root = resolve_cgroup(mount.to_str().unwrap(), &mount).unwrap();
        assert_eq!(root.level, 0);
        assert!(matches!(
            cgroup_of_pid(u32::MAX - 1, &mount),
            Err(TargetError::NoSuchProcess(_))
        ));
    }
}
