//! Python interpreters for the integration tests: real CPython 3.9–3.14 running the scripts of
//! `tests/fixtures/python/`, on the host and in containers, behind one [`PyTarget`] type.
//!
//! - [`PyTarget::HostShared`]: `python3` on `PATH` (`$MEMPROF_TEST_PYTHON` overrides it), which
//!   must link a shared libpython (pyenv's CPython 3.11 here): the interpreter lives in
//!   `libpython3.N.so`, with symbols.
//! - [`PyTarget::HostStatic`]: `/usr/bin/python3.11`, Debian's build: libpython linked into the
//!   executable, which is stripped (what most distribution and container Pythons look like).
//! - [`PyTarget::Container`]: a [`Suite`]'s interpreter in a podman container of an image made
//!   from a `debootstrap --variant=minbase` root of that distribution ([`root`], [`image`]), so
//!   the interpreter, its libc and its libffi are the distribution's files, not the host's.
//!
//! Roots are built once into `target/python-roots/<suite>` (a few minutes each, from the
//! network), under a file lock, and marked complete by `target/python-roots/<suite>.complete`
//! (holding the recipe); a root without that marker is a leftover of a killed build and is
//! removed (anything still mounted in it unmounted first) and built again. Images are imported
//! from the roots and labelled with a fingerprint of the root, so a new import happens only when
//! the root changed. Roots, images and [`site_packages`] folders are caches: tests leave them.
//!
//! [`PyTarget::start`] starts a script with the fixture protocol of `lib.rs` (`ready <pid>`,
//! SIGUSR1, one ground-truth JSON line); the script also writes that line to the file named by
//! `$MEMPROF_TRUTH_FILE`, since [`Fixture`] and [`ContainerFixture`] keep only what
//! [`GroundTruth`] parses: [`PyFixture::wait_truth`] returns both ([`PyTruth`]). In a container
//! the interpreter is the main process (PID 1, as with `CMD ["python3", "app.py"]`), the
//! fixtures folder is bind-mounted read-only at `/fixtures` and its stdout goes to the `/out`
//! folder of [`Container`]; the container is removed when the [`PyFixture`] is dropped.

use std::{
    collections::{hash_map::DefaultHasher, BTreeMap},
    fs,
    hash::{Hash, Hasher},
    os::unix::{fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;

use super::{
    container::{
        container_name, describe, output_with_timeout, Container, ContainerFixture, FileLock,
        Podman,
    },
    target_dir, workspace_root, Child, Fixture, GroundTruth, TestCgroup, TRUTH_TIMEOUT,
};

/// The longest a `debootstrap` may run (downloads included).
const DEBOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How long a script in a container may take to print `ready` (container start, imports).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The image label holding the fingerprint of the root it was imported from.
const ROOT_LABEL: &str = "memprof.pyroot";
/// Bump when roots must be rebuilt although their recipe did not change.
const ROOT_BUILDER_VERSION: u32 = 1;
/// Bump when images must be imported again although their roots did not change.
const IMAGE_BUILDER_VERSION: u32 = 1;

/// Results made once per test binary, by key; a failure panics again each time it is asked for.
type Memo<T> = Mutex<BTreeMap<String, std::result::Result<&'static T, String>>>;

fn memo<T>(memo: &'static Memo<T>, key: &str, make: impl FnOnce() -> Result<T>) -> &'static T {
    let mut done = memo.lock().unwrap_or_else(|e| e.into_inner());
    let made = done.entry(key.to_string()).or_insert_with(|| {
        make()
            .map(|v| &*Box::leak(Box::new(v)))
            .map_err(|e| format!("{e:#}"))
    });
    match made {
        Ok(v) => v,
        Err(e) => panic!("{key}: {e}"),
    }
}

/// Runs `cmd` to its end (killed after `timeout`); its stdout, or an error with its stderr.
fn run_ok(cmd: &mut Command, timeout: Duration) -> Result<String> {
    let out = output_with_timeout(cmd, timeout)?;
    ensure!(
        out.status.success(),
        "{} failed ({}):\n{}{}",
        describe(cmd),
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

mod roots;
pub use roots::*;

// ---------------------------------------------------------------------------------------------
// Interpreters
// ---------------------------------------------------------------------------------------------

/// A Python interpreter the tests run scripts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PyTarget {
    /// `python3` on `PATH` (or `$MEMPROF_TEST_PYTHON`): a shared libpython (pyenv's 3.11).
    HostShared,
    /// `/usr/bin/python3.11`: Debian's, libpython static in a stripped executable.
    HostStatic,
    /// The suite's interpreter in a container of [`Suite::image_tag`].
    Container(Suite),
}

/// What a host interpreter says about itself.
#[derive(Debug)]
struct HostPython {
    exe: PathBuf,
    version: String,
    minor: u32,
}

/// The path of the Debian interpreter of [`PyTarget::HostStatic`].
pub const HOST_STATIC_PYTHON: &str = "/usr/bin/python3.11";

/// The host interpreter (`shared`: [`PyTarget::HostShared`]), asked once for its real
/// executable (past pyenv's shims), version and kind of libpython.
fn host_python(shared: bool) -> &'static HostPython {
    static FOUND: Memo<HostPython> = Mutex::new(BTreeMap::new());
    let cmd = match std::env::var_os("MEMPROF_TEST_PYTHON") {
        _ if !shared => PathBuf::from(HOST_STATIC_PYTHON),
        Some(p) => PathBuf::from(p),
        None => PathBuf::from("python3"),
    };
    let key = format!("the host Python {} (shared: {shared})", cmd.display());
    memo(&FOUND, &key, || {
        // Debian's sysconfig says Py_ENABLE_SHARED = 1 (it ships a libpython for embedding)
        // while its python3.11 has the interpreter linked in: the process's maps tell.
        let code = "import json, sys; print(json.dumps([sys.executable, \
                    sys.version.splitlines()[0], sys.version_info[1], \
                    any('/libpython' in l for l in open('/proc/self/maps'))]))";
        let hint = "the Python tests need `python3` on PATH with a shared libpython (pyenv's, or \
                    MEMPROF_TEST_PYTHON) and Debian's /usr/bin/python3.11; never skipped";
        let mut probe = Command::new(&cmd);
        let out = run_ok(probe.args(["-c", code]), Duration::from_secs(60)).context(hint)?;
        let v: Value = serde_json::from_str(&out).context("parsing its answer")?;
        let (exe, version) = (v[0].as_str().unwrap_or(""), v[1].as_str().unwrap_or(""));
        let minor = v[2].as_u64().unwrap_or(0) as u32;
        ensure!(
            Path::new(exe).is_file() && minor >= 9 && (shared || minor == 11),
            "unexpected interpreter {exe:?}, Python {version:?}"
        );
        ensure!(
            v[3].as_bool() == Some(shared),
            "{exe} {} libpython",
            if shared { "maps no" } else { "maps a" }
        );
        Ok(HostPython {
            exe: exe.into(),
            version: version.into(),
            minor,
        })
    })
}

/// Options of [`PyTarget::start_with`].
#[derive(Debug, Default)]
pub struct PyOptions<'a> {
    /// Host targets only: the cgroup the interpreter starts in.
    pub cgroup: Option<&'a TestCgroup>,
    /// A [`site_packages`] folder: on `PYTHONPATH` (bind-mounted at `/site` in a container).
    pub site: Option<PathBuf>,
    /// More environment variables.
    pub env: Vec<(String, String)>,
    /// Container targets: another interpreter of the root (e.g. `/usr/bin/python3.15`).
    pub interpreter: Option<String>,
}

/// `tests/fixtures/python`.
pub fn python_fixtures_dir() -> PathBuf {
    workspace_root().join("tests/fixtures/python")
}

impl PyTarget {
    /// Every interpreter: the two host ones, then one container per suite.
    pub fn all() -> Vec<PyTarget> {
        let mut all = vec![PyTarget::HostShared, PyTarget::HostStatic];
        all.extend(Suite::ALL.iter().map(|&s| PyTarget::Container(s)));
        all
    }

    /// A short name for messages and output folders: `host-shared`, `host-static`, `trixie`…
    pub fn label(self) -> String {
        match self {
            PyTarget::HostShared => "host-shared".into(),
            PyTarget::HostStatic => "host-static".into(),
            PyTarget::Container(s) => s.name().into(),
        }
    }

    /// The minor version N of the CPython 3.N this target runs.
    pub fn minor(self) -> u32 {
        match self {
            PyTarget::HostShared => host_python(true).minor,
            PyTarget::HostStatic => 11,
            PyTarget::Container(s) => s.minor(),
        }
    }

    /// The interpreter's `sys.version` (first line); builds the root of a container target.
    pub fn version(self) -> String {
        match self {
            PyTarget::HostShared => host_python(true).version.clone(),
            PyTarget::HostStatic => host_python(false).version.clone(),
            PyTarget::Container(s) => root(s).version.clone(),
        }
    }

    /// The interpreter's path: on the host, or inside the container.
    pub fn interpreter(self) -> PathBuf {
        match self {
            PyTarget::HostShared => host_python(true).exe.clone(),
            PyTarget::HostStatic => host_python(false).exe.clone(),
            PyTarget::Container(s) => s.interpreter().into(),
        }
    }

    pub fn is_container(self) -> bool {
        matches!(self, PyTarget::Container(_))
    }

    /// Makes the target ready to start (host interpreter found; root built and image imported)
    /// and says what that took, for timing reports.
    pub fn prepare(self) -> String {
        let PyTarget::Container(s) = self else {
            let exe = self.interpreter();
            return format!("{}: {} ({})", self.label(), self.version(), exe.display());
        };
        let (r, i) = (root(s), image(s));
        let root = if r.built { "built" } else { "cached" };
        let image = if i.imported { "imported" } else { "up to date" };
        let (rs, is) = (r.elapsed.as_secs_f64(), i.elapsed.as_secs_f64());
        format!(
            "{}: {} (root {root} in {rs:.1} s; image {image} in {is:.1} s)",
            s.name(),
            r.version
        )
    }

    /// Starts `tests/fixtures/python/<script> args...` and waits for its `ready` line.
    pub fn start(self, script: &str, args: &[&str]) -> PyFixture {
        self.start_with(script, args, &PyOptions::default())
    }

    /// [`Self::start`] with options.
    pub fn start_with(self, script: &str, args: &[&str], opts: &PyOptions) -> PyFixture {
        let path = python_fixtures_dir().join(script);
        assert!(path.is_file(), "no Python fixture {}", path.display());
        let result = match self {
            PyTarget::Container(s) => self.start_container(s, script, args, opts),
            _ => Ok(self.start_host(&path, script, args, opts)),
        };
        result.unwrap_or_else(|e| panic!("starting {script} on {}: {e:#}", self.label()))
    }

    fn start_host(self, path: &Path, script: &str, args: &[&str], opts: &PyOptions) -> PyFixture {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let out = target_dir().join("python-out");
        fs::create_dir_all(&out).unwrap_or_else(|e| panic!("creating {}: {e}", out.display()));
        let truth_file = out.join(format!(
            "{}-{}-{}.truth.json",
            self.label(),
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_file(&truth_file);
        let mut cmd = Command::new(self.interpreter());
        // No __pycache__ in the source tree.
        cmd.arg(path)
            .args(args)
            .env("MEMPROF_TRUTH_FILE", &truth_file)
            .env("PYTHONDONTWRITEBYTECODE", "1");
        if let Some(site) = &opts.site {
            cmd.env("PYTHONPATH", site);
        }
        cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
        let mut fx =
            Fixture::start_command(&format!("{script} ({})", self.label()), cmd, opts.cgroup);
        fx.remove_on_drop(truth_file.clone());
        PyFixture {
            target: self,
            inner: Inner::Host(fx),
            container: None,
            truth_file,
        }
    }

    fn start_container(
        self,
        suite: Suite,
        script: &str,
        args: &[&str],
        opts: &PyOptions,
    ) -> Result<PyFixture> {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        ensure!(
            opts.cgroup.is_none(),
            "a container target runs in its container's cgroup (see PyFixture::container)"
        );
        let tag = image(suite).tag.clone();
        let name = container_name(&format!(
            "py3{}-{}",
            suite.minor(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let out = Podman::get().out_dir(&name);
        if out.exists() {
            fs::remove_dir_all(&out).with_context(|| format!("emptying {}", out.display()))?;
        }
        fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        let mut options = vec![
            format!("--volume={}:/out", out.display()),
            format!("--volume={}:/fixtures:ro", python_fixtures_dir().display()),
            "--env=MEMPROF_TRUTH_FILE=/out/fixture.truth.json".to_string(),
        ];
        if let Some(site) = &opts.site {
            options.push(format!("--volume={}:/site:ro", site.display()));
            options.push("--env=PYTHONPATH=/site".into());
        }
        options.extend(opts.env.iter().map(|(k, v)| format!("--env={k}={v}")));
        // The shell only redirects, then becomes the interpreter (PID 1 of the container).
        let script_in = format!("/fixtures/{script}");
        let interp = opts.interpreter.clone().unwrap_or_else(|| suite.interpreter());
        let mut cmd = vec![
            "/bin/sh",
            "-c",
            "exec \"$@\" >/out/fixture.out 2>/out/fixture.err </dev/null",
            "sh",
            &interp,
            &script_in,
        ];
        cmd.extend_from_slice(args);
        let opt_refs: Vec<&str> = options.iter().map(String::as_str).collect();
        let mut container = Container::run_with(&name, &tag, &opt_refs, &cmd)?;
        container.out_dir = Some(out.clone());
        let fx = container
            .fixture("fixture", READY_TIMEOUT)
            .map_err(|e| anyhow!("{e:#}\npodman logs {name}:\n{}", container.logs()))?;
        Ok(PyFixture {
            target: self,
            inner: Inner::Container(fx),
            container: Some(container),
            truth_file: out.join("fixture.truth.json"),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Running scripts
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
enum Inner {
    Host(Fixture),
    Container(ContainerFixture),
}

/// A Python script started by [`PyTarget::start`]; killed (host) or its container removed on
/// drop. A container's `/out` folder is removed too, unless the test is failing (it is then
/// kept for inspection until the next run's sweep).
#[derive(Debug)]
pub struct PyFixture {
    target: PyTarget,
    inner: Inner,
    container: Option<Container>,
    truth_file: PathBuf,
}

/// What a Python fixture says: the [`GroundTruth`] and the whole JSON line.
#[derive(Debug, Clone)]
pub struct PyTruth {
    pub truth: GroundTruth,
    /// Everything the script printed (`lines`, `files`, `qualnames`, `tracemalloc`, ...).
    pub extras: Value,
    /// `worker_pids` of the script (`leaky.py --fork N`), as host PIDs.
    pub worker_pids: Vec<u32>,
}

impl PyTruth {
    /// The line of the allocating statement of `site`.
    pub fn line(&self, site: &str) -> Option<u64> {
        self.extras["lines"][site].as_u64()
    }

    /// The file name (no folder) of `site`.
    pub fn file(&self, site: &str) -> Option<&str> {
        self.extras["files"][site].as_str()
    }

    /// The qualified name of the function of `site` (e.g. `Store.leak_small`).
    pub fn qualname(&self, site: &str) -> Option<&str> {
        self.extras["qualnames"][site].as_str()
    }
}

impl PyFixture {
    pub fn target(&self) -> PyTarget {
        self.target
    }

    /// The host PID of the interpreter (what memprof reports).
    pub fn pid(&self) -> u32 {
        match &self.inner {
            Inner::Host(fx) => fx.pid(),
            Inner::Container(fx) => fx.host_pid,
        }
    }

    /// Its PID as it sees it (inside the container; the host PID otherwise).
    pub fn ns_pid(&self) -> u32 {
        match &self.inner {
            Inner::Host(fx) => fx.pid(),
            Inner::Container(fx) => fx.ns_pid,
        }
    }

    /// The container it runs in (`memprof --cgroup <name>`, [`Container::cgroup_path`]).
    pub fn container(&self) -> Option<&Container> {
        self.container.as_ref()
    }

    /// The go signal (SIGUSR1).
    pub fn go(&mut self) {
        match &mut self.inner {
            Inner::Host(fx) => fx.go(),
            Inner::Container(fx) => fx.go().unwrap_or_else(|e| panic!("go: {e:#}")),
        }
    }

    /// Waits for the ground truth (the `pid` is the host PID) and reads the whole line from
    /// the truth file.
    pub fn wait_truth(&mut self) -> PyTruth {
        let truth = match &mut self.inner {
            Inner::Host(fx) => fx.wait_truth(),
            Inner::Container(fx) => fx
                .wait_truth(TRUTH_TIMEOUT)
                .unwrap_or_else(|e| panic!("{e:#}")),
        };
        let text = fs::read_to_string(&self.truth_file).unwrap_or_else(|e| {
            panic!(
                "{}: no truth file {} ($MEMPROF_TRUTH_FILE) after the truth line: {e}",
                self.target.label(),
                self.truth_file.display()
            )
        });
        let extras: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: {e}: {text:?}", self.truth_file.display()));
        assert_eq!(
            extras["pid"].as_u64(),
            Some(self.ns_pid() as u64),
            "{}: the truth file is another process's",
            self.truth_file.display()
        );
        // Workers print their PIDs as they see them: inside a container, translated.
        let mut worker_pids = Vec::new();
        for ns in extras["worker_pids"].as_array().into_iter().flatten() {
            let ns = ns.as_u64().unwrap_or(0) as u32;
            worker_pids.push(match &self.container {
                None => ns,
                Some(c) => c.host_pid(ns).ok().flatten().unwrap_or_else(|| {
                    panic!("container {}: no process with NSpid {ns}", c.name())
                }),
            });
        }
        PyTruth {
            truth,
            extras,
            worker_pids,
        }
    }

    /// Whether the interpreter still runs.
    pub fn is_running(&mut self) -> bool {
        match &mut self.inner {
            Inner::Host(fx) => fx.is_running(),
            Inner::Container(fx) => fx.is_alive(),
        }
    }

    /// Waits for the interpreter to end by itself (`--exit`).
    pub fn wait_exit(&mut self, timeout: Duration) {
        match &mut self.inner {
            Inner::Host(fx) => {
                let st = fx.wait_exit(timeout);
                assert!(st.success(), "{} exited with {st}", self.target.label());
            }
            Inner::Container(fx) => fx.wait_gone(timeout).unwrap_or_else(|e| panic!("{e:#}")),
        }
    }

    /// The script's stderr so far (containers; a host script's stderr is the test's).
    pub fn stderr(&self) -> String {
        match &self.inner {
            Inner::Host(_) => String::new(),
            Inner::Container(fx) => fx.stderr(),
        }
    }
}

impl Drop for PyFixture {
    fn drop(&mut self) {
        // The host fixture kills itself (and removes the truth file) when `inner` drops.
        if let Some(c) = self.container.take() {
            let out = c.out_dir().map(Path::to_path_buf);
            drop(c);
            if let Some(out) = out.filter(|_| !thread::panicking()) {
                let _ = fs::remove_dir_all(out);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Packages
// ---------------------------------------------------------------------------------------------

/// A folder with `packages` installed for the target's Python version (pure-Python wheels;
/// e.g. `opentelemetry-sdk`), by the host's pip: `python3 -m pip install --target DIR
/// --python-version 3.N --only-binary=:all: PACKAGES`. Cached in
/// `target/python-site/3.N/<packages>` (marked complete by a `.complete` file beside it); pass
/// it as [`PyOptions::site`].
pub fn site_packages(target: PyTarget, packages: &[&str]) -> PathBuf {
    static DONE: Memo<PathBuf> = Mutex::new(BTreeMap::new());
    let minor = target.minor();
    let safe = |c: char| c.is_ascii_alphanumeric() || "+-_.".contains(c);
    let slug: String = packages.join("+").replace(|c| !safe(c), "_");
    let key = format!("pip install {packages:?} for Python 3.{minor}");
    memo(&DONE, &key, || {
        let base = target_dir().join("python-site").join(format!("3.{minor}"));
        fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
        let _lock = FileLock::acquire(&base.join(format!("{slug}.lock")))?;
        let (dir, marker) = (base.join(&slug), base.join(format!("{slug}.complete")));
        let recipe = format!(
            "pip install --python-version 3.{minor} {}",
            packages.join(" ")
        );
        if dir.is_dir() && fs::read_to_string(&marker).is_ok_and(|m| m == recipe) {
            return Ok(dir);
        }
        let _ = fs::remove_file(&marker);
        let tmp = base.join(format!("{slug}.tmp")); // under the lock
        for d in [&dir, &tmp] {
            if d.exists() {
                fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
            }
        }
        let mut cmd = Command::new(&host_python(true).exe);
        let pip = "-m pip install --quiet --disable-pip-version-check --no-input --no-compile \
                   --only-binary=:all: --target";
        cmd.args(pip.split_whitespace())
            .arg(&tmp)
            .arg(format!("--python-version=3.{minor}"))
            .args(packages)
            .env("PIP_ROOT_USER_ACTION", "ignore");
        let installed = run_ok(&mut cmd, Duration::from_secs(600));
        if installed.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        installed?;
        fs::rename(&tmp, &dir).with_context(|| format!("renaming to {}", dir.display()))?;
        fs::write(&marker, recipe).with_context(|| format!("writing {}", marker.display()))?;
        Ok(dir)
    })
    .clone()
}
