//! Harness for memprof's integration tests: real BPF, real cgroups, real C fixtures with known
//! ground truth.
//!
//! - [`require_root`]: every test calls it first; not being root is a failure, never a skip.
//! - [`fixture`]: the C programs of `tests/fixtures/`, compiled once per test binary into
//!   `target/fixtures/` with `gcc -O1 -g -fno-omit-frame-pointer -fno-inline -pthread`, and the
//!   C++ ones (`*.cpp`) with `g++ -O2 -g -fomit-frame-pointer -pthread`; [`fixture_variant`]
//!   builds one with other flags (`target/fixtures/<name>-<variant>`), [`stripped_fixture`] a
//!   copy without symbols (`<name>-stripped`).
//! - [`TestCgroup`]: a cgroup v2 directory that is removed again on drop.
//! - [`Fixture`]: a running fixture (optionally started inside a cgroup), killed by its PID on
//!   drop. The fixture protocol: it prints `ready <pid>`, waits for SIGUSR1 ([`Fixture::go`]),
//!   leaks, prints its ground truth as one JSON line ([`Fixture::wait_truth`]) and sleeps until
//!   killed (or exits, when started with `--exit`). [`Fixture::start_path`] and
//!   [`Fixture::start_command`] start any binary or command that speaks it,
//!   [`Fixture::start_node`] a Node.js script of `tests/fixtures/` (see [`node_bin`]).
//! - [`Memprof`]: a running memprof, killed on drop; its stderr and stdout are collected by
//!   threads so that it never blocks on a full pipe.
//! - [`site_bytes`] and friends: reading `summary.json`.
//!
//! Tests must run one at a time (`cargo test -p memprof-tests -- --test-threads=1`): they profile
//! whole cgroups and the machine has few cores.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Read, Write},
    os::unix::{fs::PermissionsExt, io::AsRawFd, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child as StdChild, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError},
        Arc, Mutex, OnceLock,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;
pub mod container;
pub mod containerd;
pub mod docker;
pub mod export;
pub mod python;
pub mod dom;
pub mod memory_cgroup;
pub mod node;
pub use dom::{rendered_dom, tempdir};
pub use memory_cgroup::MemoryCgroup;

/// How long memprof may take to attach its probes.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fixture may take to leak and print its ground truth after the go signal.
pub const TRUTH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long memprof may take to finish (symbolize, write artifacts) after SIGINT.
pub const FINISH_TIMEOUT: Duration = Duration::from_secs(60);
/// The line memprof prints on stderr once every probe is attached.
pub const ATTACHED_PREFIX: &str = "memprof: attached";
/// The prefix of memprof's one-line error message.
pub const ERROR_PREFIX: &str = "memprof: error:";

// ---------------------------------------------------------------------------------------------
// Paths and preconditions
// ---------------------------------------------------------------------------------------------

/// The workspace root (the parent of this crate's folder).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Cargo's target folder: `$CARGO_TARGET_DIR` or `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        None => workspace_root().join("target"),
    }
}

/// Fails the test unless it runs as root. The tests need root (BPF, uprobes, cgroups); they are
/// never skipped silently, with or without CI.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        return;
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "memprof integration tests must run as root under CI (euid is {euid}): they load BPF \
             programs and create cgroups. Run the CI job as root (e.g. `sudo -E .ci/run`)."
        );
    }
    panic!(
        "memprof integration tests need root (euid is {euid}): they load BPF programs and create \
         cgroups. Run them as root, e.g. `sudo -E cargo xtask test`; they are not skipped."
    );
}

/// The memprof binary: `$MEMPROF_BIN`, or `target/release/memprof`.
pub fn memprof_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("MEMPROF_BIN") {
        let bin = PathBuf::from(bin);
        assert!(bin.is_file(), "MEMPROF_BIN={} is not a file", bin.display());
        return bin;
    }
    let bin = target_dir().join("release/memprof");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --release -p memprof` first (or `cargo xtask test`, \
         which builds it), or point MEMPROF_BIN at a memprof binary",
        bin.display()
    );
    bin
}

/// Undoes the octal escapes (`\040` for a space) of a `/proc/self/mountinfo` field.
pub(crate) fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 mount point, from `/proc/self/mountinfo` (`/sys/fs/cgroup` on a pure v2 host,
/// `/sys/fs/cgroup/unified` on a hybrid one).
pub fn cgroup2_mount() -> PathBuf {
    static MOUNT: OnceLock<PathBuf> = OnceLock::new();
    MOUNT
        .get_or_init(|| {
            let info = fs::read_to_string("/proc/self/mountinfo")
                .expect("cannot read /proc/self/mountinfo");
            for line in info.lines() {
                // `id parent maj:min root mountpoint options [optional...] - fstype source opts`
                let Some((left, right)) = line.split_once(" - ") else { continue };
                if right.split_whitespace().next() != Some("cgroup2") {
                    continue;
                }
                if let Some(mnt) = left.split_whitespace().nth(4) {
                    return PathBuf::from(unescape_mountinfo(mnt));
                }
            }
            panic!("no cgroup2 file system is mounted (see /proc/self/mountinfo); memprof needs cgroup v2")
        })
        .clone()
}

/// A folder for one test's memprof output: `target/test-output/<label>`, emptied first. It is
/// left behind for inspection.
pub fn output_dir(label: &str) -> PathBuf {
    let dir = target_dir().join("test-output").join(label);
    if dir.exists() {
        fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("cannot remove {}: {e}", dir.display()));
    }
    fs::create_dir_all(dir.parent().unwrap()).expect("cannot create target/test-output");
    dir
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// The flags every C fixture is compiled with.
pub const FIXTURE_CFLAGS: &[&str] = &[
    "-O1",
    "-g",
    "-fno-omit-frame-pointer",
    "-fno-inline",
    "-pthread",
    "-Wall",
];

/// The flags every C++ fixture (`tests/fixtures/*.cpp`) is compiled with: optimized code without
/// frame pointers, as C++ is usually shipped, with debug info (inline records included).
pub const FIXTURE_CXXFLAGS: &[&str] = &["-O2", "-g", "-fomit-frame-pointer", "-pthread", "-Wall"];

/// The folder of the fixtures' sources, `tests/fixtures/`.
pub fn fixtures_src_dir() -> PathBuf {
    workspace_root().join("tests/fixtures")
}

/// Compiles every `tests/fixtures/*.c` into `target/fixtures/` (once per test binary) and
/// returns the folder.
pub fn fixtures_dir() -> &'static Path {
    static BUILT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    match BUILT.get_or_init(|| build_fixtures().map_err(|e| format!("{e:#}"))) {
        Ok(dir) => dir,
        Err(e) => panic!("building the C fixtures failed: {e}"),
    }
}

fn fixtures_out_dir() -> Result<PathBuf> {
    let out_dir = target_dir().join("fixtures");
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    Ok(out_dir)
}

fn build_fixtures() -> Result<PathBuf> {
    let src_dir = fixtures_src_dir();
    let out_dir = fixtures_out_dir()?;
    let mut sources: Vec<PathBuf> = fs::read_dir(&src_dir)
        .with_context(|| format!("reading {}", src_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "c"))
        .collect();
    sources.sort();
    ensure!(!sources.is_empty(), "no fixtures in {}", src_dir.display());
    let flags: Vec<String> = FIXTURE_CFLAGS.iter().map(|f| f.to_string()).collect();
    for src in sources {
        let stem = src.file_stem().unwrap().to_string_lossy().into_owned();
        compile(Lang::C, &flags, &src, &out_dir.join(&stem))?;
    }
    Ok(out_dir)
}

/// The language of a fixture source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lang {
    C,
    Cxx,
}

impl Lang {
    fn compiler(self) -> &'static str {
        match self {
            Lang::C => "gcc",
            Lang::Cxx => "g++",
        }
    }

    fn base_flags(self) -> &'static [&'static str] {
        match self {
            Lang::C => FIXTURE_CFLAGS,
            Lang::Cxx => FIXTURE_CXXFLAGS,
        }
    }
}

/// `tests/fixtures/<name>.c` or `tests/fixtures/<name>.cpp`.
fn fixture_source(name: &str) -> (PathBuf, Lang) {
    let dir = fixtures_src_dir();
    let c = dir.join(format!("{name}.c"));
    let cpp = dir.join(format!("{name}.cpp"));
    match (c.is_file(), cpp.is_file()) {
        (true, false) => (c, Lang::C),
        (false, true) => (cpp, Lang::Cxx),
        (true, true) => panic!(
            "fixture {name}: both {} and {} exist",
            c.display(),
            cpp.display()
        ),
        (false, false) => panic!(
            "no fixture {name}: neither {} nor {} exists",
            c.display(),
            cpp.display()
        ),
    }
}

/// Runs `compiler flags src -o out` (through a temporary file renamed into place, so that a
/// concurrent reader never sees half a binary).
fn compile(lang: Lang, flags: &[String], src: &Path, out: &Path) -> Result<()> {
    compile_with(lang.compiler(), flags, src, out)
}

fn compile_with(cc: &str, flags: &[String], src: &Path, out: &Path) -> Result<()> {
    let tmp = tmp_sibling(out);
    let output = Command::new(cc)
        .args(flags)
        .arg(src)
        .arg("-o")
        .arg(&tmp)
        .output()
        .with_context(|| format!("running {cc} (install it, e.g. with `cargo xtask setup`)"))?;
    if !output.status.success() {
        let _ = fs::remove_file(&tmp);
        bail!(
            "{cc} {} {} failed ({}):\n{}",
            flags.join(" "),
            src.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    fs::rename(&tmp, out).with_context(|| format!("renaming to {}", out.display()))?;
    Ok(())
}

/// `<dir>/.<file name>.<pid>.tmp`, next to `out`.
fn tmp_sibling(out: &Path) -> PathBuf {
    let name = out.file_name().unwrap().to_string_lossy();
    out.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// The "family" of a compiler flag: two flags of one family contradict each other (`-O1` and
/// `-O2`; `-fomit-frame-pointer` and `-fno-omit-frame-pointer`; `-g` and `-g0`;
/// `-fvisibility=a` and `-fvisibility=b`). Flags without one (`-pthread`, `-Wall`, `-DX`) add up.
fn flag_family(flag: &str) -> Option<String> {
    if flag.starts_with("-O") {
        return Some("-O".into());
    }
    if flag == "-g"
        || (flag.len() == 3 && flag.starts_with("-g") && flag.as_bytes()[2].is_ascii_digit())
    {
        return Some("-g".into());
    }
    if flag.starts_with("-std=") {
        return Some("-std=".into());
    }
    for prefix in ["-f", "-m"] {
        if let Some(rest) = flag.strip_prefix(prefix) {
            if rest.is_empty() {
                return None;
            }
            let rest = rest.strip_prefix("no-").unwrap_or(rest);
            let name = rest.split_once('=').map_or(rest, |(n, _)| n);
            return Some(format!("{prefix}{name}"));
        }
    }
    None
}

/// `base` without the flags that `extra` contradicts (see [`flag_family`]), then `extra`:
/// `merge_flags(FIXTURE_CFLAGS, &["-O2", "-fomit-frame-pointer"])` is
/// `-g -fno-inline -pthread -Wall -O2 -fomit-frame-pointer`.
pub fn merge_flags(base: &[&str], extra: &[&str]) -> Vec<String> {
    let overridden: Vec<String> = extra.iter().filter_map(|f| flag_family(f)).collect();
    base.iter()
        .filter(|f| flag_family(f).is_none_or(|fam| !overridden.contains(&fam)))
        .chain(extra.iter())
        .map(|f| f.to_string())
        .collect()
}

/// One build of [`fixture_variant`] or [`stripped_fixture`]: how it was made, and the result.
type BuildRecord = (String, std::result::Result<PathBuf, String>);

/// The builds made by this test binary, by output file name: each is made once.
fn cached_build(out_name: &str, recipe: &str, build: impl FnOnce() -> Result<PathBuf>) -> PathBuf {
    static BUILDS: OnceLock<Mutex<BTreeMap<String, BuildRecord>>> = OnceLock::new();
    let mut builds = BUILDS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let (made_by, result) = builds
        .entry(out_name.to_string())
        .or_insert_with(|| (recipe.to_string(), build().map_err(|e| format!("{e:#}"))));
    assert_eq!(
        made_by, recipe,
        "fixture build {out_name} was requested twice with different recipes"
    );
    match result {
        Ok(path) => path.clone(),
        Err(e) => panic!("building fixture {out_name} failed: {e}"),
    }
}

/// The compiled fixture `name`: `tests/fixtures/<name>.c` (all C fixtures are compiled together,
/// with [`FIXTURE_CFLAGS`]) or `tests/fixtures/<name>.cpp` (compiled when first asked for, with
/// [`FIXTURE_CXXFLAGS`]), in `target/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    let (src, lang) = fixture_source(name);
    let path = match lang {
        Lang::C => fixtures_dir().join(name),
        Lang::Cxx => {
            let flags: Vec<String> = lang.base_flags().iter().map(|f| f.to_string()).collect();
            cached_build(
                name,
                &format!("{} {}", lang.compiler(), flags.join(" ")),
                || {
                    let out = fixtures_out_dir()?.join(name);
                    compile(lang, &flags, &src, &out)?;
                    Ok(out)
                },
            )
        }
    };
    assert!(
        path.is_file(),
        "no fixture {name} ({} is missing)",
        path.display()
    );
    path
}

/// Fixture `name` (`.c` or `.cpp`) compiled with other flags, into
/// `target/fixtures/<name>-<variant>`: the usual flags ([`FIXTURE_CFLAGS`] or
/// [`FIXTURE_CXXFLAGS`]) minus those `extra_flags` contradict, plus `extra_flags` (see
/// [`merge_flags`]). E.g. `fixture_variant("leaky", "nofp", &["-O2", "-fomit-frame-pointer"])`.
/// Built once per test binary; asking for one variant name with two sets of flags panics.
pub fn fixture_variant(name: &str, variant: &str, extra_flags: &[&str]) -> PathBuf {
    assert!(
        !variant.is_empty() && !variant.contains('/'),
        "bad variant name {variant:?}"
    );
    let (src, lang) = fixture_source(name);
    let flags = merge_flags(lang.base_flags(), extra_flags);
    let out_name = format!("{name}-{variant}");
    let recipe = format!("{} {}", lang.compiler(), flags.join(" "));
    cached_build(&out_name, &recipe, || {
        let out = fixtures_out_dir()?.join(&out_name);
        compile(lang, &flags, &src, &out)?;
        Ok(out)
    })
}

/// A copy of fixture `name` without any symbols (`strip --strip-all`), in
/// `target/fixtures/<name>-stripped`. `.eh_frame` stays (strip keeps allocated sections), so it
/// can still be unwound; `.symtab` and the debug info are gone.
pub fn stripped_fixture(name: &str) -> PathBuf {
    let src = fixture(name);
    stripped_copy(&src, &format!("{name}-stripped"))
}

/// `strip --strip-all` of a copy of `bin`, as `target/fixtures/<out_name>` (once per test
/// binary).
pub fn stripped_copy(bin: &Path, out_name: &str) -> PathBuf {
    let recipe = format!("strip --strip-all {}", bin.display());
    cached_build(out_name, &recipe, || {
        let out = fixtures_out_dir()?.join(out_name);
        let tmp = tmp_sibling(&out);
        fs::copy(bin, &tmp).with_context(|| format!("copying {}", bin.display()))?;
        let output = Command::new("strip")
            .arg("--strip-all")
            .arg(&tmp)
            .output()
            .context("running strip (binutils; install it, e.g. with `cargo xtask setup`)")?;
        if !output.status.success() {
            let _ = fs::remove_file(&tmp);
            bail!(
                "strip --strip-all {} failed ({}):\n{}",
                tmp.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        fs::rename(&tmp, &out).with_context(|| format!("renaming to {}", out.display()))?;
        Ok(out)
    })
}

/// C fixture `name` built static with musl (`musl-gcc -static`, the usual flags), as
/// `target/fixtures/<name>-musl`: the C library inside the executable, without CFI.
pub fn musl_fixture(name: &str) -> PathBuf {
    let (src, lang) = fixture_source(name);
    assert!(lang == Lang::C, "musl fixtures are C");
    let mut flags: Vec<String> = FIXTURE_CFLAGS.iter().map(|f| f.to_string()).collect();
    flags.push("-static".into());
    let out_name = format!("{name}-musl");
    let recipe = format!("musl-gcc {}", flags.join(" "));
    cached_build(&out_name, &recipe, || {
        let out = fixtures_out_dir()?.join(&out_name);
        compile_with("musl-gcc", &flags, &src, &out)
            .context("musl-gcc (Debian's musl-tools; `cargo xtask setup` installs it)")?;
        Ok(out)
    })
}

/// A script of `tests/fixtures/` (e.g. `leak.js`), which must exist.
pub fn fixture_script(file: &str) -> PathBuf {
    let path = fixtures_src_dir().join(file);
    assert!(path.is_file(), "no fixture script {}", path.display());
    path
}

/// The Node.js binary for the Node fixtures: `$MEMPROF_TEST_NODE`, or `node` on `PATH`. Fails
/// the test (never skips it) when there is none or it does not run: Node.js comes with
/// `cargo xtask setup` (Debian package `nodejs`).
pub fn node_bin() -> PathBuf {
    static NODE: OnceLock<std::result::Result<(PathBuf, String), String>> = OnceLock::new();
    let found = NODE.get_or_init(|| {
        let bin = std::env::var_os("MEMPROF_TEST_NODE")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("PATH").and_then(|paths| {
                    std::env::split_paths(&paths)
                        .map(|d| d.join("node"))
                        .find(|p| p.is_file())
                })
            })
            .ok_or_else(|| "no `node` on PATH (and MEMPROF_TEST_NODE is not set)".to_string())?;
        let out = Command::new(&bin)
            .arg("--version")
            .output()
            .map_err(|e| format!("cannot run {} --version: {e}", bin.display()))?;
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() {
            return Err(format!(
                "{} --version failed ({}): {}",
                bin.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        // --perf-basic-prof and --interpreted-frames-native-stack: Node 12 and later; the tests
        // were written against 18 (Debian 12) and 20.
        let major = version
            .trim_start_matches('v')
            .split('.')
            .next()
            .and_then(|m| m.parse::<u32>().ok());
        match major {
            Some(m) if m >= 16 => Ok((bin, version)),
            _ => Err(format!(
                "{} is Node.js {version:?}; the tests need 16 or later",
                bin.display()
            )),
        }
    });
    match found {
        Ok((bin, _)) => bin.clone(),
        Err(e) => panic!(
            "the Node.js tests need Node.js (`node`, 16 or later): {e}. Install it with \
             `cargo xtask setup` (Debian package `nodejs`) or point MEMPROF_TEST_NODE at a node \
             binary; these tests are never skipped"
        ),
    }
}

/// The perf map a JIT writes for process `pid` (V8 with `--perf-basic-prof`): `/tmp/perf-<pid>.map`.
pub fn perf_map_path(pid: u32) -> PathBuf {
    PathBuf::from(format!("/tmp/perf-{pid}.map"))
}

// ---------------------------------------------------------------------------------------------
// Cgroups
// ---------------------------------------------------------------------------------------------

static CGROUP_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A cgroup v2 directory created for a test: `<v2 mount>/memprof-test-<pid>-<n>`, or a child of
/// another `TestCgroup`. On drop, processes still inside are moved to the parent cgroup and the
/// directory is removed (retrying briefly). Drop children before their parent (declare them
/// after it).
#[derive(Debug)]
pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    /// Creates `<v2 mount>/memprof-test-<pid>-<n>`.
    pub fn new() -> Self {
        let n = CGROUP_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = cgroup2_mount().join(format!("memprof-test-{}-{n}", std::process::id()));
        Self::create(path)
    }

    /// Creates the child cgroup `name` inside this one.
    pub fn child(&self, name: &str) -> Self {
        Self::create(self.path.join(name))
    }

    fn create(path: PathBuf) -> Self {
        if path.exists() {
            // A leftover of an earlier run with the same pid: take it over.
            let stale = TestCgroup { path: path.clone() };
            drop(stale);
        }
        fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("cannot create cgroup {}: {e}", path.display()));
        TestCgroup { path }
    }

    /// The absolute path of the cgroup directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory name (what `memprof --cgroup NAME` resolves).
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    /// The path relative to the cgroup v2 mount.
    pub fn relative(&self) -> PathBuf {
        self.path
            .strip_prefix(cgroup2_mount())
            .expect("under the v2 mount")
            .to_path_buf()
    }

    /// The PIDs of the processes directly in this cgroup.
    pub fn pids(&self) -> Vec<u32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Default for TestCgroup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if !self.path.exists() {
            return;
        }
        let parent = self.path.parent().unwrap().join("cgroup.procs");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            // Child cgroups left behind (e.g. by a panic between creations) go first.
            if let Ok(entries) = fs::read_dir(&self.path) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        drop(TestCgroup { path: e.path() });
                    }
                }
            }
            for pid in self.pids() {
                let _ = fs::write(&parent, pid.to_string());
            }
            match fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) => {
                    if Instant::now() > deadline {
                        eprintln!("warning: cannot remove cgroup {}: {e}", self.path.display());
                        return;
                    }
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

/// A started process that is killed (SIGKILL to its own PID, never by name) and reaped on drop.
#[derive(Debug)]
pub struct Child {
    inner: StdChild,
    status: Option<ExitStatus>,
}

impl Child {
    /// Spawns `cmd`; with `cgroup`, the process moves itself into that cgroup before exec.
    pub fn spawn(cmd: &mut Command, cgroup: Option<&TestCgroup>) -> Result<Self> {
        let procs = match cgroup {
            Some(cg) => {
                let path = cg.path().join("cgroup.procs");
                // Opened here (close-on-exec), written in the child between fork and exec.
                Some(
                    fs::OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .with_context(|| format!("opening {}", path.display()))?,
                )
            }
            None => None,
        };
        if let Some(file) = &procs {
            let fd = file.as_raw_fd();
            // SAFETY: the closure runs between fork and exec; it calls write(2) only, which is
            // async-signal-safe, and allocates nothing.
            unsafe {
                cmd.pre_exec(move || {
                    let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                    if n == 1 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let inner = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
        drop(procs);
        Ok(Child {
            inner,
            status: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.inner.id()
    }

    /// Sends `sig` to this process (only if it has not been reaped yet).
    pub fn signal(&mut self, sig: libc::c_int) -> Result<()> {
        if self.try_wait()?.is_some() {
            bail!("process {} has already exited", self.pid());
        }
        // SAFETY: kill(2) on the PID of our own unreaped child.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        ensure!(
            rc == 0,
            "kill({}, {sig}): {}",
            self.pid(),
            std::io::Error::last_os_error()
        );
        Ok(())
    }

    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.inner.try_wait()?;
        }
        Ok(self.status)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait()? {
                return Ok(Some(st));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if self.status.is_none() {
            let _ = self.inner.kill();
            self.status = self.inner.wait().ok();
        }
    }

    fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.inner.stdout.take()
    }

    fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.inner.stderr.take()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads `r` line by line on a thread and sends each line.
fn line_reader<R: Read + Send + 'static>(r: R) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// What a fixture says it leaked: its last stdout line, parsed.
#[derive(Debug, Clone)]
pub struct GroundTruth {
    pub pid: u32,
    /// Outstanding bytes per site function (`churn` is 0).
    pub sites: BTreeMap<String, u64>,
    /// Live blocks/mappings per site (a realloc chain is one block).
    pub allocations: BTreeMap<String, u64>,
}

impl GroundTruth {
    /// The sites that leak (all but those with 0 bytes, i.e. `churn`).
    pub fn leak_sites(&self) -> impl Iterator<Item = (&str, u64)> {
        self.sites
            .iter()
            .filter(|(_, &b)| b > 0)
            .map(|(k, &b)| (k.as_str(), b))
    }

    fn parse(line: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(line).with_context(|| format!("parsing {line:?}"))?;
        let map = |key: &str| -> Result<BTreeMap<String, u64>> {
            v.get(key)
                .and_then(Value::as_object)
                .ok_or_else(|| anyhow!("no {key:?} object in {line:?}"))?
                .iter()
                .map(|(k, n)| Ok((k.clone(), n.as_u64().ok_or_else(|| anyhow!("{k}: {n}"))?)))
                .collect()
        };
        Ok(GroundTruth {
            pid: v["pid"]
                .as_u64()
                .ok_or_else(|| anyhow!("no pid in {line:?}"))? as u32,
            sites: map("sites")?,
            allocations: map("allocations").unwrap_or_default(),
        })
    }
}

/// A running fixture program (see the module docs for its protocol).
#[derive(Debug)]
pub struct Fixture {
    child: Child,
    name: String,
    stdout: Receiver<String>,
    /// Files and folders to remove once the process is gone (a JIT's perf map, a scratch
    /// working directory).
    cleanup: Vec<PathBuf>,
}

impl Fixture {
    /// Starts fixture `name` with `args` (inside `cgroup` if given) and waits for its `ready`
    /// line, so the program has been exec'd and its libraries are mapped when this returns.
    pub fn start(name: &str, args: &[&str], cgroup: Option<&TestCgroup>) -> Self {
        Self::start_path(&fixture(name), args, cgroup)
    }

    /// [`Self::start`] for a binary given by its path (e.g. from [`fixture_variant`] or
    /// [`stripped_fixture`]).
    pub fn start_path(bin: &Path, args: &[&str], cgroup: Option<&TestCgroup>) -> Self {
        let mut cmd = Command::new(bin);
        cmd.args(args);
        let label = bin.file_name().map_or_else(
            || bin.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        Self::start_command(&label, cmd, cgroup)
    }

    /// [`Self::start`] for any command that speaks the fixture protocol; the process it starts
    /// must be the one that prints `ready <pid>` (no wrapper shell). Its stdin is null, its
    /// stdout a pipe, its stderr the test's. `label` names it in messages.
    pub fn start_command(label: &str, mut cmd: Command, cgroup: Option<&TestCgroup>) -> Self {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = Child::spawn(&mut cmd, cgroup)
            .unwrap_or_else(|e| panic!("cannot start fixture {label}: {e:#}"));
        let stdout = line_reader(child.take_stdout().unwrap());
        let mut fx = Fixture {
            child,
            name: label.to_string(),
            stdout,
            cleanup: Vec::new(),
        };
        let line = fx
            .next_line(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{e:#}"));
        let pid = line
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse::<u32>().ok());
        assert_eq!(
            pid,
            Some(fx.pid()),
            "fixture {label}: expected `ready <pid>`, got {line:?}"
        );
        fx
    }

    /// Starts `node node_args... tests/fixtures/<script> args...` (see [`node_bin`]). Its
    /// working directory is a scratch folder (V8 drops `isolate-*.log` files there with
    /// `--perf-basic-prof`); that folder and the process's perf map ([`perf_map_path`]) are
    /// removed when the fixture is dropped.
    pub fn start_node(
        script: &str,
        node_args: &[&str],
        args: &[&str],
        cgroup: Option<&TestCgroup>,
    ) -> Self {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let script_path = fixture_script(script);
        let scratch = std::env::temp_dir().join(format!(
            "memprof-tests-node-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&scratch)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", scratch.display()));
        let mut cmd = Command::new(node_bin());
        cmd.args(node_args)
            .arg(&script_path)
            .args(args)
            .current_dir(&scratch);
        let mut fx = Self::start_command(script, cmd, cgroup);
        let perf_map = perf_map_path(fx.pid());
        fx.cleanup.extend([perf_map, scratch]);
        fx
    }

    /// Removes `path` (a file or a folder) when the fixture is dropped, after it was killed.
    pub fn remove_on_drop(&mut self, path: PathBuf) {
        self.cleanup.push(path);
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    fn next_line(&mut self, timeout: Duration) -> Result<String> {
        match self.stdout.recv_timeout(timeout) {
            Ok(line) => Ok(line),
            Err(RecvTimeoutError::Timeout) => {
                bail!(
                    "fixture {} (pid {}): no output within {timeout:?}",
                    self.name,
                    self.pid()
                )
            }
            Err(RecvTimeoutError::Disconnected) => {
                let st = self
                    .child
                    .wait_timeout(Duration::from_secs(1))
                    .ok()
                    .flatten();
                bail!(
                    "fixture {} (pid {}) closed its stdout (status {st:?})",
                    self.name,
                    self.pid()
                )
            }
        }
    }

    /// The go signal: SIGUSR1.
    pub fn go(&mut self) {
        self.child
            .signal(libc::SIGUSR1)
            .unwrap_or_else(|e| panic!("go: {e:#}"));
    }

    /// Waits for the ground-truth JSON line.
    pub fn wait_truth(&mut self) -> GroundTruth {
        let line = self
            .next_line(TRUTH_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e:#}"));
        let truth = GroundTruth::parse(&line).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(truth.pid, self.pid(), "ground truth of another process?");
        truth
    }

    /// Waits for the fixture to exit by itself (e.g. when started with `--exit`).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.child.wait_timeout(timeout) {
            Ok(Some(st)) => st,
            Ok(None) => panic!(
                "fixture {} (pid {}) did not exit within {timeout:?}",
                self.name,
                self.pid()
            ),
            Err(e) => panic!("waiting for fixture {}: {e}", self.name),
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        self.child.kill();
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.child.kill();
        for path in self.cleanup.drain(..) {
            let _ = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
        }
    }
}

// ---------------------------------------------------------------------------------------------
// memprof
// ---------------------------------------------------------------------------------------------

/// A running memprof; stdout and stderr are collected on threads. Killed on drop if still
/// running.
#[derive(Debug)]
pub struct Memprof {
    child: Child,
    args: Vec<String>,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
    attached: Receiver<()>,
    readers: Vec<thread::JoinHandle<()>>,
}

/// How a memprof run ended.
#[derive(Debug, Clone)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// The non-empty stderr lines.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }

    pub fn attached(&self) -> bool {
        self.stderr.lines().any(|l| l.starts_with(ATTACHED_PREFIX))
    }
}

impl Memprof {
    /// Starts `memprof args...`.
    pub fn start<S: AsRef<str>>(args: &[S]) -> Self {
        Self::start_with(args, |_| {})
    }

    /// Starts `memprof args...` after letting `customize` adjust the command.
    pub fn start_with<S: AsRef<str>>(args: &[S], customize: impl FnOnce(&mut Command)) -> Self {
        Self::start_bin_with(&memprof_bin(), args, customize)
    }

    /// Starts `bin args...` (a memprof binary elsewhere) after `customize`.
    pub fn start_bin_with<S: AsRef<str>>(
        bin: &Path,
        args: &[S],
        customize: impl FnOnce(&mut Command),
    ) -> Self {
        let args: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
        let mut cmd = Command::new(bin);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        customize(&mut cmd);
        let mut child =
            Child::spawn(&mut cmd, None).unwrap_or_else(|e| panic!("cannot start memprof: {e:#}"));

        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let (attached_tx, attached) = mpsc::channel();
        let mut readers = Vec::new();
        let err_pipe = child.take_stderr().unwrap();
        let sink = stderr.clone();
        readers.push(thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines() {
                let Ok(line) = line else { break };
                if line.starts_with(ATTACHED_PREFIX) {
                    let _ = attached_tx.send(());
                }
                sink.lock().unwrap().push(line);
            }
        }));
        let out_pipe = child.take_stdout().unwrap();
        let sink = stdout.clone();
        readers.push(thread::spawn(move || {
            for line in BufReader::new(out_pipe).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        }));
        Memprof {
            child,
            args,
            stderr,
            stdout,
            attached,
            readers,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().join("\n")
    }

    /// Waits for the `memprof: attached` line; panics (with memprof's stderr) if memprof exits
    /// first or `timeout` passes.
    pub fn wait_attached(&mut self, timeout: Duration) {
        match self.attached.recv_timeout(timeout) {
            Ok(()) => {}
            Err(RecvTimeoutError::Timeout) => panic!(
                "memprof {:?} did not print `{ATTACHED_PREFIX}` within {timeout:?}; stderr:\n{}",
                self.args,
                self.stderr()
            ),
            Err(RecvTimeoutError::Disconnected) => {
                let st = self
                    .child
                    .wait_timeout(Duration::from_secs(5))
                    .ok()
                    .flatten();
                panic!(
                    "memprof {:?} ended (status {st:?}) without printing `{ATTACHED_PREFIX}`; \
                     stderr:\n{}",
                    self.args,
                    self.stderr()
                )
            }
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// Sends SIGINT (what Ctrl-C does).
    pub fn interrupt(&mut self) {
        self.child.signal(libc::SIGINT).unwrap_or_else(|e| {
            panic!(
                "cannot interrupt memprof: {e:#}; stderr:\n{}",
                self.stderr()
            )
        });
    }

    /// Waits up to `timeout` for memprof to end; on timeout it is killed and the test fails.
    pub fn finish(mut self, timeout: Duration) -> Finished {
        let status = match self.child.wait_timeout(timeout) {
            Ok(Some(st)) => st,
            Ok(None) => {
                self.child.kill();
                panic!(
                    "memprof {:?} did not end within {timeout:?} (killed); stderr:\n{}",
                    self.args,
                    self.stderr()
                )
            }
            Err(e) => panic!("waiting for memprof: {e}"),
        };
        // The pipes are closed once memprof is gone: let the readers drain them.
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Finished {
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }

    /// [`Self::finish`], then asserts exit code 0.
    pub fn finish_ok(self, timeout: Duration) -> Finished {
        let args = self.args.clone();
        let done = self.finish(timeout);
        assert_eq!(
            done.code(),
            Some(0),
            "memprof {args:?} failed ({}); stderr:\n{}\nstdout:\n{}",
            done.status,
            done.stderr,
            done.stdout
        );
        done
    }
}

/// Runs memprof to its end (for runs that must fail fast) with `RUST_LOG` unset.
pub fn run_memprof<S: AsRef<str>>(args: &[S], timeout: Duration) -> Finished {
    Memprof::start_with(args, |c| {
        c.env_remove("RUST_LOG");
    })
    .finish(timeout)
}

/// Asserts the bad-input contract: exit code 2, exactly one non-empty stderr line starting
/// with `memprof: error:`, and nothing attached.
pub fn assert_usage_error(done: &Finished, what: &str) {
    let lines = done.stderr_lines();
    assert!(
        !done.attached(),
        "{what}: memprof attached probes; stderr:\n{}",
        done.stderr
    );
    assert_eq!(
        done.code(),
        Some(2),
        "{what}: expected exit code 2, got {}; stderr:\n{}",
        done.status,
        done.stderr
    );
    assert_eq!(
        lines.len(),
        1,
        "{what}: expected one line on stderr, got:\n{}",
        done.stderr
    );
    assert!(
        lines[0].starts_with(ERROR_PREFIX),
        "{what}: the stderr line should start with `{ERROR_PREFIX}`: {:?}",
        lines[0]
    );
}

/// Makes a copy of the memprof binary that any user may run (for the not-root test: the
/// original may sit under a folder other users cannot enter).
pub fn world_executable_memprof() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("memprof-tests-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("temp dir");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
    let bin = dir.join("memprof");
    fs::copy(memprof_bin(), &bin).expect("copying memprof");
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).expect("chmod memprof");
    bin
}

// ---------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------

/// Reads and parses `<dir>/summary.json`.
pub fn read_summary(dir: &Path) -> Value {
    let path = dir.join("summary.json");
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Whether a frame's display name is function `func`: `func` alone or `func (file:line)`.
pub fn frame_is(frame: &str, func: &str) -> bool {
    match frame.strip_prefix(func) {
        Some(rest) => rest.is_empty() || rest.starts_with(" ("),
        None => false,
    }
}

/// The stacks of the summary.
pub fn stacks(summary: &Value) -> &[Value] {
    summary["stacks"]
        .as_array()
        .map(Vec::as_slice)
        .expect("summary.json has no `stacks` array")
}

/// The frames of one stack, root → leaf.
pub fn frames(stack: &Value) -> Vec<&str> {
    stack["frames"]
        .as_array()
        .map(|f| f.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The stacks that contain a frame of `func`.
pub fn stacks_with<'a>(summary: &'a Value, func: &str) -> Vec<&'a Value> {
    stacks(summary)
        .iter()
        .filter(|s| frames(s).iter().any(|f| frame_is(f, func)))
        .collect()
}

fn sum_field(stacks: &[&Value], field: &str) -> u64 {
    stacks
        .iter()
        .map(|s| {
            s[field]
                .as_u64()
                .unwrap_or_else(|| panic!("stack without `{field}`: {s}"))
        })
        .sum()
}

/// Outstanding bytes of the stacks that contain a frame of `func`.
pub fn site_bytes(summary: &Value, func: &str) -> u64 {
    sum_field(&stacks_with(summary, func), "bytes")
}

/// Outstanding allocations of the stacks that contain a frame of `func`.
pub fn site_allocations(summary: &Value, func: &str) -> u64 {
    sum_field(&stacks_with(summary, func), "allocations")
}

/// The PIDs listed by any stack.
pub fn stack_pids(summary: &Value) -> Vec<u32> {
    let mut pids: Vec<u32> = stacks(summary)
        .iter()
        .flat_map(|s| s["pids"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p.as_u64().map(|p| p as u32))
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// The PIDs listed by the stacks that contain a frame of `func`.
pub fn site_pids(summary: &Value, func: &str) -> Vec<u32> {
    let mut pids: Vec<u32> = stacks_with(summary, func)
        .iter()
        .flat_map(|s| s["pids"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p.as_u64().map(|p| p as u32))
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// The `frame_details` of one stack, root → leaf (one entry per display frame).
pub fn frame_details(stack: &Value) -> &[Value] {
    stack["frame_details"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("stack without `frame_details`: {}", stack["frames"]))
}

/// The `function` of a frame detail ("" when it has none).
pub fn detail_function(detail: &Value) -> &str {
    detail["function"].as_str().unwrap_or("")
}

/// Whether a frame detail is an inlined frame (`"inlined": true`; the key is omitted when false).
pub fn detail_inlined(detail: &Value) -> bool {
    detail["inlined"].as_bool().unwrap_or(false)
}

/// The stacks with at least one frame detail for which `pred` holds.
pub fn stacks_where(summary: &Value, pred: impl Fn(&Value) -> bool) -> Vec<&Value> {
    stacks(summary)
        .iter()
        .filter(|s| frame_details(s).iter().any(&pred))
        .collect()
}

/// Outstanding bytes of `stacks`.
pub fn bytes_of(stacks: &[&Value]) -> u64 {
    sum_field(stacks, "bytes")
}

/// Outstanding allocations of `stacks`.
pub fn allocations_of(stacks: &[&Value]) -> u64 {
    sum_field(stacks, "allocations")
}

/// How a stack was unwound (`"whole"`, `"depth"`, `"read"`, `"no_info"`, `"unsupported"`);
/// `None` when the stack has no `unwind` string (a memprof without the CFI unwinder).
pub fn stack_unwind(stack: &Value) -> Option<&str> {
    stack["unwind"].as_str()
}

/// Whether a stack is complete: `"unwind": "whole"` and `"truncated": false` (false when either
/// field is missing).
pub fn stack_is_whole(stack: &Value) -> bool {
    stack_unwind(stack) == Some("whole") && stack["truncated"].as_bool() == Some(false)
}

/// The summary's `stack_quality` object.
pub fn stack_quality(summary: &Value) -> &Value {
    let q = &summary["stack_quality"];
    assert!(
        q.is_object(),
        "summary.json has no `stack_quality` object (is this memprof built with the CFI \
         unwinder?); top-level keys: {:?}",
        summary
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
    );
    q
}

/// `stack_quality.whole_bytes_share`: the share (0..1) of live bytes whose stack is whole;
/// `None` when the summary has none.
pub fn whole_bytes_share(summary: &Value) -> Option<f64> {
    summary["stack_quality"]["whole_bytes_share"].as_f64()
}

/// The summary's `modules` array.
pub fn modules(summary: &Value) -> &[Value] {
    summary["modules"].as_array().map(Vec::as_slice).unwrap_or_else(|| {
        panic!("summary.json has no `modules` array (is this memprof built with the CFI unwinder?)")
    })
}

/// The `modules` entry of the module at `path` (compared by path; failing that, by file name);
/// `None` also when the summary has no `modules` array.
pub fn module_entry<'a>(summary: &'a Value, path: &Path) -> Option<&'a Value> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let all = summary["modules"].as_array()?;
    all.iter()
        .find(|m| m["module"].as_str().is_some_and(|p| Path::new(p) == path))
        .or_else(|| {
            all.iter().find(|m| {
                m["module"].as_str().is_some_and(|p| {
                    Path::new(p)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        == name
                })
            })
        })
}

/// The total of a folded-stacks file (the last field of every line).
pub fn folded_total(path: &Path) -> u64 {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.rsplit_once(' ')
                .and_then(|(_, n)| n.trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{}: not a folded line: {l:?}", path.display()))
        })
        .sum()
}

/// Relative error of `measured` against `expected`, in percent.
pub fn error_pct(expected: u64, measured: u64) -> f64 {
    if expected == 0 {
        return if measured == 0 { 0.0 } else { f64::INFINITY };
    }
    (measured as f64 - expected as f64) / expected as f64 * 100.0
}

/// One row per site: expected, measured, error. Written straight to the process's stdout (not
/// through the test harness's capture), so it shows in `cargo test` output even when the test
/// passes.
pub fn print_site_table(title: &str, truth: &GroundTruth, summary: &Value) -> String {
    let mut out = format!("\n{title}\n");
    out += &format!(
        "{:<22} {:>12} {:>12} {:>9} {:>7} {:>7}\n",
        "site", "expected B", "measured B", "error %", "allocs", "meas."
    );
    for (site, &expected) in &truth.sites {
        let measured = site_bytes(summary, site);
        let err = if expected == 0 {
            "-".to_string()
        } else {
            format!("{:+.3}", error_pct(expected, measured))
        };
        out += &format!(
            "{:<22} {:>12} {:>12} {:>9} {:>7} {:>7}\n",
            site,
            expected,
            measured,
            err,
            truth.allocations.get(site).copied().unwrap_or(0),
            site_allocations(summary, site)
        );
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
    out
}

/// A short description of the summary's stacks, for assertion messages.
pub fn describe_stacks(summary: &Value) -> String {
    let mut out = String::new();
    for s in stacks(summary) {
        let unwind = match (s["unwind"].as_str(), s["truncated"].as_bool()) {
            (Some(u), Some(true)) => format!(" [{u}, truncated]"),
            (Some(u), _) => format!(" [{u}]"),
            (None, _) => String::new(),
        };
        out += &format!(
            "{:>10} B {:>6} allocs{unwind}  {}\n",
            s["bytes"],
            s["allocations"],
            frames(s).join(";")
        );
    }
    out
}

/// Sleeps `d` (readability helper).
pub fn sleep(d: Duration) {
    thread::sleep(d)
}

// ---------------------------------------------------------------------------------------------
// Whole runs
// ---------------------------------------------------------------------------------------------

/// The result of [`profile_fixture`].
#[derive(Debug)]
pub struct Profiled {
    pub truth: GroundTruth,
    pub summary: Value,
    pub dir: PathBuf,
    pub run: Finished,
}

/// The standard run: memprof `target_args --interval 1s --output target/test-output/<label>`
/// on an already started (ready) fixture; after `memprof: attached` the fixture gets its go
/// signal; once it printed its ground truth memprof gets 2 s more, then SIGINT, and must exit 0.
pub fn profile_fixture(fx: &mut Fixture, target_args: &[String], label: &str) -> Profiled {
    let dir = output_dir(label);
    let mut args: Vec<String> = target_args.to_vec();
    args.extend([
        "--interval".into(),
        "1s".into(),
        "--output".into(),
        dir.display().to_string(),
    ]);
    let mut mp = Memprof::start(&args);
    mp.wait_attached(ATTACH_TIMEOUT);
    fx.go();
    let truth = fx.wait_truth();
    sleep(Duration::from_secs(2));
    assert!(
        mp.is_running(),
        "memprof ended before SIGINT; stderr:\n{}",
        mp.stderr()
    );
    mp.interrupt();
    let run = mp.finish_ok(FINISH_TIMEOUT);
    let summary = read_summary(&dir);
    Profiled {
        truth,
        summary,
        dir,
        run,
    }
}

/// Largest relative error allowed for a leak site, in percent.
pub const TOLERANCE_PCT: f64 = 1.0;

/// Asserts that every leak site of `truth` is within [`TOLERANCE_PCT`] of the ground truth in
/// bytes (and, for the malloc family, in live allocations), that `churn` holds at most 1 % of
/// the smallest site (or 64 KiB), and that the site stacks name the fixture's PID. Prints the
/// table first.
pub fn assert_accurate(title: &str, truth: &GroundTruth, summary: &Value) {
    let table = print_site_table(title, truth, summary);
    let mut failures = Vec::new();
    for (site, expected) in truth.leak_sites() {
        let measured = site_bytes(summary, site);
        let err = error_pct(expected, measured);
        if err.abs() > TOLERANCE_PCT {
            failures.push(format!(
                "{site}: expected {expected} B, measured {measured} B ({err:+.3} %)"
            ));
        }
        // Counts are exact ground truth for the malloc family (a realloc chain is one block);
        // how a partly unmapped mapping is counted is memprof's choice.
        if !site.contains("mmap") {
            if let Some(&n) = truth.allocations.get(site) {
                let m = site_allocations(summary, site);
                if error_pct(n, m).abs() > TOLERANCE_PCT {
                    failures.push(format!(
                        "{site}: expected {n} live allocations, measured {m}"
                    ));
                }
            }
        }
        if measured > 0 && !site_pids(summary, site).contains(&truth.pid) {
            failures.push(format!("{site}: stacks do not list pid {}", truth.pid));
        }
    }
    let smallest = truth.leak_sites().map(|(_, b)| b).min().unwrap_or(0);
    let churn_limit = (smallest / 100).max(64 * 1024);
    for (site, &expected) in &truth.sites {
        if expected == 0 {
            let measured = site_bytes(summary, site);
            if measured > churn_limit {
                failures.push(format!(
                    "{site}: expected ~0 outstanding, measured {measured} B (limit {churn_limit} B)"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{title}: {} site(s) off:\n  {}\n{table}\nstacks:\n{}",
        failures.len(),
        failures.join("\n  "),
        describe_stacks(summary)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_names() {
        assert!(frame_is("leak_malloc", "leak_malloc"));
        assert!(frame_is("leak_malloc (leaky.c:42)", "leak_malloc"));
        assert!(!frame_is("leak_mmap_partial (leaky.c:9)", "leak_mmap"));
        assert!(!frame_is("leaky+0x1234", "leak"));
    }

    #[test]
    fn flag_merging() {
        assert_eq!(
            merge_flags(FIXTURE_CFLAGS, &["-O2", "-fomit-frame-pointer"]),
            [
                "-g",
                "-fno-inline",
                "-pthread",
                "-Wall",
                "-O2",
                "-fomit-frame-pointer"
            ]
        );
        assert_eq!(
            merge_flags(FIXTURE_CFLAGS, &["-fno-omit-frame-pointer"]),
            [
                "-O1",
                "-g",
                "-fno-inline",
                "-pthread",
                "-Wall",
                "-fno-omit-frame-pointer"
            ]
        );
        assert_eq!(
            merge_flags(
                &["-O2", "-g", "-fvisibility=hidden"],
                &["-g0", "-fvisibility=default", "-DX"]
            ),
            ["-O2", "-g0", "-fvisibility=default", "-DX"]
        );
        assert_eq!(
            merge_flags(&["-pthread", "-Wall"], &["-Wextra"]),
            ["-pthread", "-Wall", "-Wextra"]
        );
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/sys/fs/cgroup"), "/sys/fs/cgroup");
        assert_eq!(unescape_mountinfo(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape_mountinfo(r"/x\\"), r"/x\\");
    }

    #[test]
    fn ground_truth_and_sites() {
        let t = GroundTruth::parse(
            r#"{"pid":7,"sites":{"leak_a":100,"churn":0},"allocations":{"leak_a":2,"churn":0}}"#,
        )
        .unwrap();
        assert_eq!(t.pid, 7);
        assert_eq!(t.leak_sites().collect::<Vec<_>>(), vec![("leak_a", 100)]);
        let summary: Value = serde_json::from_str(
            r#"{"stacks":[
                {"frames":["main","leak_a (x.c:1)"],"bytes":60,"allocations":1,"pids":[7]},
                {"frames":["main","w","leak_a"],"bytes":40,"allocations":1,"pids":[8]},
                {"frames":["main","leak_ab"],"bytes":5,"allocations":1,"pids":[7]}]}"#,
        )
        .unwrap();
        assert_eq!(site_bytes(&summary, "leak_a"), 100);
        assert_eq!(site_allocations(&summary, "leak_a"), 2);
        assert_eq!(site_pids(&summary, "leak_a"), vec![7, 8]);
        assert_eq!(stack_pids(&summary), vec![7, 8]);
        assert_eq!(error_pct(100, 101), 1.0);
    }
}
