//! Distribution roots (debootstrap) and the podman images made from them.

use super::*;

// ---------------------------------------------------------------------------------------------
// Distribution roots and their images
// ---------------------------------------------------------------------------------------------

/// A distribution release whose CPython runs in a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Suite {
    /// Debian 11: CPython 3.9.
    Bullseye,
    /// Ubuntu 22.04: CPython 3.10.
    Jammy,
    /// Ubuntu 24.04: CPython 3.12.
    Noble,
    /// Debian 13: CPython 3.13.
    Trixie,
    /// Debian unstable: CPython 3.14.
    Sid,
}

/// Per suite (in [`Suite`] order): name, CPython minor, Ubuntu (else Debian), the packages
/// beyond minbase (sid's default `python3` may lag behind the newest CPython: 3.14 is named).
const SUITES: [(&str, u32, bool, &str); 5] = [
    ("bullseye", 9, false, "python3"),
    ("jammy", 10, true, "python3"),
    ("noble", 12, true, "python3"),
    ("trixie", 13, false, "python3,nodejs"),
    // 3.15 too: an interpreter memprof does not walk (its degraded path is tested).
    ("sid", 14, false, "python3.14,python3.15"),
];

impl Suite {
    pub const ALL: [Suite; 5] = [
        Suite::Bullseye,
        Suite::Jammy,
        Suite::Noble,
        Suite::Trixie,
        Suite::Sid,
    ];

    /// The debootstrap suite name.
    pub fn name(self) -> &'static str {
        SUITES[self as usize].0
    }

    /// The N of the CPython 3.N the suite ships.
    pub fn minor(self) -> u32 {
        SUITES[self as usize].1
    }

    fn is_ubuntu(self) -> bool {
        SUITES[self as usize].2
    }

    /// The archive: `$MEMPROF_TEST_UBUNTU_MIRROR` / `$MEMPROF_TEST_DEBIAN_MIRROR`, or the
    /// official one.
    pub fn mirror(self) -> String {
        let (var, default) = if self.is_ubuntu() {
            (
                "MEMPROF_TEST_UBUNTU_MIRROR",
                "http://archive.ubuntu.com/ubuntu",
            )
        } else {
            ("MEMPROF_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
        };
        std::env::var(var).unwrap_or_else(|_| default.into())
    }

    /// The interpreter's path inside the root.
    pub fn interpreter(self) -> String {
        format!("/usr/bin/python3.{}", self.minor())
    }

    /// The image imported from the root.
    pub fn image_tag(self) -> String {
        format!("localhost/memprof-py3{}:latest", self.minor())
    }

    /// What the completion marker records; a root made with another recipe is rebuilt.
    fn recipe(self) -> String {
        format!(
            "memprof-tests python root v{ROOT_BUILDER_VERSION}: debootstrap --variant=minbase \
             --include={} {}",
            SUITES[self as usize].3,
            self.name()
        )
    }
}

/// A complete distribution root ([`root`]).
#[derive(Debug, Clone)]
pub struct PyRoot {
    pub suite: Suite,
    /// `target/python-roots/<suite>`.
    pub dir: PathBuf,
    /// The interpreter's `sys.version` (first line), asked in a chroot.
    pub version: String,
    /// Whether this call built it (false: it was complete already).
    pub built: bool,
    /// The whole call (the build, when there was one).
    pub elapsed: Duration,
}

/// What [`image`] did.
#[derive(Debug, Clone)]
pub struct PyImage {
    pub tag: String,
    /// The fingerprint of the root (the image's `memprof.pyroot` label).
    pub fingerprint: String,
    /// false when the image of this very root was there already.
    pub imported: bool,
    /// The call: fingerprint, and tar + `podman import` when needed (not the root's build).
    pub elapsed: Duration,
}

fn roots_dir() -> PathBuf {
    target_dir().join("python-roots")
}

/// The root of `suite`, built (or found complete) once per test binary.
pub fn root(suite: Suite) -> &'static PyRoot {
    static ROOTS: Memo<PyRoot> = Mutex::new(BTreeMap::new());
    memo(&ROOTS, &format!("the {} root", suite.name()), || {
        build_root(suite)
    })
}

/// The image of `suite` ([`Suite::image_tag`]), imported from its [`root`] unless an image of
/// the same root exists; once per test binary.
pub fn image(suite: Suite) -> &'static PyImage {
    static IMAGES: Memo<PyImage> = Mutex::new(BTreeMap::new());
    memo(&IMAGES, &suite.image_tag(), || import_image(root(suite)))
}

/// One lock per suite, for its root and its image (test binaries may run side by side).
fn suite_lock(suite: Suite) -> Result<FileLock> {
    let dir = roots_dir();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    FileLock::acquire(&dir.join(format!("{}.lock", suite.name())))
}

fn build_root(suite: Suite) -> Result<PyRoot> {
    let started = Instant::now();
    let _lock = suite_lock(suite)?;
    let dir = roots_dir().join(suite.name());
    let marker = roots_dir().join(format!("{}.complete", suite.name()));
    let complete = dir.is_dir()
        && fs::read_to_string(&marker).is_ok_and(|m| m.lines().next() == Some(&suite.recipe()));
    if !complete {
        let _ = fs::remove_file(&marker);
        remove_root(&dir)?;
        debootstrap(suite, &dir)?;
        ensure!(
            mounts_under(&dir)?.is_empty(),
            "debootstrap left mounts in {}",
            dir.display()
        );
    }
    // The interpreter and the modules the fixtures need, in a chroot.
    let mut cmd = Command::new("chroot");
    // -B: no .pyc written into the root (which would change its fingerprint).
    cmd.arg(&dir).arg(suite.interpreter()).args([
        "-B",
        "-c",
        "import ctypes, json, sys, threading, tracemalloc; print(sys.version.splitlines()[0])",
    ]);
    let version = run_ok(&mut cmd, Duration::from_secs(60))?
        .trim()
        .to_string();
    ensure!(
        version.starts_with(&format!("3.{}.", suite.minor())),
        "{} of the {} root is {version:?}",
        suite.interpreter(),
        suite.name()
    );
    if !complete {
        // Written last: a root is complete once its interpreter has answered.
        fs::write(&marker, format!("{}\n{version}\n", suite.recipe()))
            .with_context(|| format!("writing {}", marker.display()))?;
    }
    Ok(PyRoot {
        suite,
        dir,
        version,
        built: !complete,
        elapsed: started.elapsed(),
    })
}

/// `debootstrap --variant=minbase --include=PKGS SUITE DIR MIRROR [SCRIPT]`, its output in
/// `target/python-roots/<suite>.log` (kept), downloads cached in `target/python-roots/cache/`.
fn debootstrap(suite: Suite, dir: &Path) -> Result<()> {
    let log_path = roots_dir().join(format!("{}.log", suite.name()));
    let cache = roots_dir().join("cache").join(suite.name());
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = Command::new("debootstrap");
    cmd.arg("--variant=minbase")
        .arg(format!("--include={}", SUITES[suite as usize].3))
        .arg(format!("--cache-dir={}", cache.display()));
    if suite.is_ubuntu() {
        // Ubuntu's archive keyring is not installable on the Debian hosts the tests run on, so
        // the Release signature cannot be checked (the packages are still checked against the
        // hashes of the unsigned Release file).
        cmd.arg("--no-check-gpg");
    }
    cmd.arg(suite.name()).arg(dir).arg(suite.mirror());
    if suite == Suite::Noble {
        // Debian 12's debootstrap has no `noble` script; Ubuntu's suites since gutsy share one.
        // Given as the script argument, /usr/share/debootstrap itself is left as it is.
        cmd.arg("/usr/share/debootstrap/scripts/gutsy");
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log));
    // SAFETY: prctl is async-signal-safe. A test binary killed mid-build takes debootstrap along
    // instead of leaving it writing into a root the next run removes.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let what = describe(&cmd);
    let mut child = Child::spawn(&mut cmd, None)
        .with_context(|| format!("{what} (install debootstrap: `cargo xtask setup`)"))?;
    let status = child.wait_timeout(DEBOOTSTRAP_TIMEOUT)?;
    child.kill();
    let log = fs::read_to_string(&log_path).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(30).collect::<Vec<_>>();
    let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
    match status {
        Some(st) if st.success() => Ok(()),
        Some(st) => bail!(
            "{what} failed ({st}); end of {}:\n{tail}",
            log_path.display()
        ),
        None => bail!("{what} did not finish within {DEBOOTSTRAP_TIMEOUT:?}; log:\n{tail}"),
    }
}

/// The mount points at or below `dir`, deepest first (a killed debootstrap leaves its /proc).
fn mounts_under(dir: &Path) -> Result<Vec<String>> {
    let top = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let top = top.display().to_string();
    let info = fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    let mut mounts: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| *m == top || m.starts_with(&format!("{top}/")))
        .map(str::to_string)
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    Ok(mounts)
}

/// Removes a partial root: unmounts (lazily) what is mounted in it, then the folder.
fn remove_root(dir: &Path) -> Result<()> {
    if fs::symlink_metadata(dir).is_err() {
        return Ok(());
    }
    for m in mounts_under(dir)? {
        run_ok(
            Command::new("umount").args(["-l", &m]),
            Duration::from_secs(60),
        )?;
    }
    fs::remove_dir_all(dir).with_context(|| format!("removing the partial root {}", dir.display()))
}

fn import_image(root: &PyRoot) -> Result<PyImage> {
    let started = Instant::now();
    let (podman, tag) = (Podman::get(), root.suite.image_tag());
    let _lock = suite_lock(root.suite)?;
    let fingerprint = fingerprint_root(&root.dir)?;
    let format = format!("{{{{index .Labels \"{ROOT_LABEL}\"}}}}");
    let current = || {
        podman
            .run(&["image", "inspect", "--format", &format, &tag])
            .ok()
    };
    let mut imported = false;
    if current().as_deref().map(str::trim) != Some(fingerprint.as_str()) {
        // Under the suite lock: one import at a time writes it.
        let tar = roots_dir().join(format!("{}.tar", root.suite.name()));
        let mut cmd = Command::new("tar");
        cmd.arg("-C").arg(&root.dir).arg("--numeric-owner");
        cmd.args(["--exclude=./proc/*", "--exclude=./sys/*", "-cf"])
            .arg(&tar)
            .arg(".");
        let done = run_ok(&mut cmd, Duration::from_secs(600)).and_then(|_| {
            let label = format!("LABEL {ROOT_LABEL}={fingerprint}");
            let message = format!("memprof-tests: {}", root.suite.recipe());
            let tar = tar.display().to_string();
            let args = [
                "import",
                "--quiet",
                "--change",
                &label,
                "--message",
                &message,
                &tar,
            ];
            podman.run(&[&args[..], &[tag.as_str()]].concat())
        });
        let _ = fs::remove_file(&tar);
        done?;
        ensure!(
            current().as_deref().map(str::trim) == Some(fingerprint.as_str()),
            "podman import did not produce an image {tag} labelled {fingerprint}"
        );
        // The image this one replaced (now untagged), unless a container still uses it.
        let _ = podman.run(&["image", "prune", "--force"]);
        imported = true;
    }
    Ok(PyImage {
        tag,
        fingerprint,
        imported,
        elapsed: started.elapsed(),
    })
}

/// A fingerprint of a root from its metadata (names, types, modes, sizes, modification times,
/// link targets): a rebuilt or modified root gets a new one, for the cost of a walk of some
/// 7,000 entries rather than of reading 250 MB.
fn fingerprint_root(root: &Path) -> Result<String> {
    fn walk(dir: &Path, rel: &Path, h: &mut DefaultHasher) -> Result<()> {
        let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let (path, rel) = (e.path(), rel.join(e.file_name()));
            let md = fs::symlink_metadata(&path)?;
            h.write(rel.as_os_str().as_encoded_bytes());
            (md.mode(), md.size(), md.mtime(), md.mtime_nsec()).hash(h);
            if md.file_type().is_symlink() {
                h.write(fs::read_link(&path)?.as_os_str().as_encoded_bytes());
            } else if md.is_dir() && rel != Path::new("proc") && rel != Path::new("sys") {
                walk(&path, &rel, h)?;
            }
            h.write_u8(0xff);
        }
        Ok(())
    }
    let mut h = DefaultHasher::new();
    h.write_u32(IMAGE_BUILDER_VERSION);
    walk(root, Path::new(""), &mut h).with_context(|| format!("walking {}", root.display()))?;
    Ok(format!("{:016x}", h.finish()))
}

