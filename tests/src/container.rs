//! Containers for the integration tests: a private podman, a test image whose rootfs carries its
//! own copy of every library, containers removed on drop, and podman's Docker-compatible API.
//!
//! - [`Podman`]: podman with its own configuration and storage under `target/podman/`
//!   (`containers.conf`: runc, cgroupfs, no network namespace, file event log;
//!   `storage.conf`: overlay, graphroot `target/podman/root`, runroot `target/podman/run`).
//!   `CONTAINERS_CONF` and `CONTAINERS_STORAGE_CONF` are set on every podman command, so
//!   nothing of the machine's own podman setup is used or touched.
//! - [`Podman::build_image`]: the fixture image (see [`IMAGE`]), rebuilt only when its rootfs
//!   changed (the image carries a content hash of the rootfs as a label).
//! - [`Container`]: `podman run -d --name NAME ...`; on drop `podman rm -f -t 0 NAME`.
//!   [`Container::with_fixtures`] starts the image's `/start.sh`, which runs several fixtures in
//!   the background with their stdout in a folder bind-mounted from the host (`/out`), so the
//!   test reads each one's `ready <pid>` and ground truth lines ([`ContainerFixture`]).
//! - [`Engine`]: `podman system service --time=0 unix://target/podman/api-<pid>.sock` (the
//!   Docker API); killed, by its own PID, on drop.
//!
//! Fixture PIDs: a fixture prints the PID it has in the container's PID namespace. The host PID
//! (what memprof reports) is found through the `NSpid:` line of `/proc/PID/status` of the
//! processes of the container's cgroup ([`Container::host_pid`]).
//!
//! The image (`localhost/memprof-leaky:latest`):
//!
//! | path | what |
//! | --- | --- |
//! | `/bin/busybox`, `/bin/sh`, `/bin/<applet>` | busybox-static and a symlink per applet |
//! | `/leaky` | `tests/fixtures/leaky.c`, gcc + glibc, with the harness's fixture flags |
//! | `/leaky-jemalloc` | `tests/fixtures/container/leaky_portable.c` linked `-ljemalloc` |
//! | `/leaky-tcmalloc` | `leaky_portable.c` (its own pvalloc) linked `-ltcmalloc_minimal` (gperftools) |
//! | `/leaky-mimalloc` | `leaky_portable.c` (its own pvalloc) linked `-lmimalloc` |
//! | `/leaky-musl` | `leaky_portable.c`, `musl-gcc -static` (allocator inside the executable) |
//! | `/lib64/ld-linux-x86-64.so.2`, `/lib/x86_64-linux-gnu/*.so*` | copies (new inodes) of every library `ldd` lists for the binaries above, at the paths `ldd` gives |
//! | `/start.sh`, `/spawn.sh` | see [`START_SH`], [`SPAWN_SH`] |
//! | `/out` | mount point for the host's output folder |

use std::{
    collections::hash_map::DefaultHasher,
    fmt::Write as _,
    fs,
    hash::Hasher,
    io::{Read, Write},
    os::unix::{
        fs::{MetadataExt, PermissionsExt},
        io::AsRawFd,
        net::UnixStream,
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::{cgroup2_mount, target_dir, workspace_root, Child, GroundTruth, FIXTURE_CFLAGS};

/// The fixture image.
pub const IMAGE: &str = "localhost/memprof-leaky:latest";

/// The label that holds the content hash of the image's rootfs.
const FINGERPRINT_LABEL: &str = "memprof.rootfs";

/// Bump when the way the rootfs is put together changes in a way the content hash cannot see.
const BUILDER_VERSION: u32 = 1;

/// The container's main command (`/bin/sh /start.sh LABEL=PROGRAM[ ARG...] ...`): starts every
/// fixture in the background, stdout in `/out/LABEL.out`, stderr in `/out/LABEL.err`, then stays
/// and reaps children (it is PID 1 of the container: a fixture killed inside the container must
/// not stay a zombie). A PROGRAM with arguments is one shell word split at spaces.
pub const START_SH: &str = r#"# /start.sh LABEL=PROGRAM[ ARG...] ...  (see memprof-tests' container.rs)
for spec in "$@"; do
    label="${spec%%=*}"
    prog="${spec#*=}"
    $prog >"/out/$label.out" 2>"/out/$label.err" </dev/null &
done
: >/out/.started
while :; do
    wait
    sleep 1
done
"#;

/// `/bin/sh /spawn.sh LABEL PROGRAM [ARG...]`: becomes PROGRAM (`exec`, same PID) with stdout in
/// `/out/LABEL.out` and stderr in `/out/LABEL.err`; for `podman exec -d`.
pub const SPAWN_SH: &str = r#"# /spawn.sh LABEL PROGRAM [ARG...]  (see memprof-tests' container.rs)
label="$1"
shift
exec "$@" >"/out/$label.out" 2>"/out/$label.err" </dev/null
"#;

/// How long a podman command may take before the test fails.
const PODMAN_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// Podman
// ---------------------------------------------------------------------------------------------

/// podman with a private configuration and storage under `target/podman/`.
#[derive(Debug)]
pub struct Podman {
    dir: PathBuf,
    containers_conf: PathBuf,
    storage_conf: PathBuf,
}

/// What [`Podman::build_image`] did.
#[derive(Debug, Clone)]
pub struct ImageBuild {
    pub tag: String,
    /// The content hash of the rootfs (the image label).
    pub fingerprint: String,
    /// false when an image with the same rootfs was already there.
    pub imported: bool,
    /// The whole call: compiling, copying, hashing and (if needed) tar + import.
    pub elapsed: Duration,
}

impl Podman {
    /// The podman of this test binary; writes the configuration on first use.
    pub fn get() -> &'static Podman {
        static PODMAN: OnceLock<std::result::Result<Podman, String>> = OnceLock::new();
        match PODMAN.get_or_init(|| Podman::init().map_err(|e| format!("{e:#}"))) {
            Ok(p) => p,
            Err(e) => panic!("cannot set up podman: {e}"),
        }
    }

    fn init() -> Result<Podman> {
        for tool in ["podman", "runc"] {
            let ok = Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            ensure!(
                ok,
                "`{tool} --version` failed: install podman and runc (`cargo xtask setup`)"
            );
        }
        let dir = target_dir().join("podman");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let _lock = FileLock::acquire(&dir.join("setup.lock"))?;
        forget_state_of_earlier_boot(&dir)?;

        // Overlay cannot be stacked on overlay (a target folder inside a container): vfs then.
        let driver = if is_overlayfs(&dir) { "vfs" } else { "overlay" };
        let containers_conf = dir.join("containers.conf");
        let storage_conf = dir.join("storage.conf");
        let d = dir.display();
        write_if_changed(
            &containers_conf,
            &format!(
                "# Written by memprof-tests (tests/src/container.rs).\n\
                 [containers]\n\
                 default_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
                 netns = \"none\"\n\
                 \n\
                 [engine]\n\
                 runtime = \"runc\"\n\
                 cgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\n\
                 events_logfile_path = \"{d}/events.log\"\n\
                 tmp_dir = \"{d}/tmp\"\n"
            ),
        )?;
        write_if_changed(
            &storage_conf,
            &format!(
                "# Written by memprof-tests (tests/src/container.rs).\n\
                 [storage]\n\
                 driver = \"{driver}\"\n\
                 graphroot = \"{d}/root\"\n\
                 runroot = \"{d}/run\"\n"
            ),
        )?;
        let podman = Podman {
            dir,
            containers_conf,
            storage_conf,
        };
        podman.sweep_stale_containers();
        Ok(podman)
    }

    /// Removes the containers named by [`container_name`] for a test process that is gone (a
    /// run killed before its guards could clean up), and that process's `/out` folders and
    /// engine log (kept until then for inspection).
    fn sweep_stale_containers(&self) {
        let Ok(names) = self.run(&["ps", "--all", "--format", "{{.Names}}"]) else {
            return;
        };
        for name in names.lines().map(str::trim) {
            let Some(rest) = name.strip_prefix(CONTAINER_PREFIX) else {
                continue;
            };
            let Some(pid) = rest.rsplit('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                remove_container_with(self, name);
            }
        }
        // Their `/out` folders and engine logs (`out/<name>-<pid>`, `api-<pid>.log`).
        let dead = |name: &str| {
            name.rsplit(['-', '.'])
                .find_map(|p| p.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        };
        for dir in [self.dir.join("out"), self.dir.clone()] {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let ours = if dir == self.dir {
                    name.starts_with("api-") && name.ends_with(".log")
                } else {
                    name.starts_with(CONTAINER_PREFIX)
                };
                if ours && dead(name.trim_end_matches(".log")) {
                    let _ = fs::remove_dir_all(e.path()).or_else(|_| fs::remove_file(e.path()));
                }
            }
        }
    }

    /// `target/podman`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A `podman` command with the private configuration (stdin from /dev/null).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_CONF", &self.containers_conf)
            .env("CONTAINERS_STORAGE_CONF", &self.storage_conf)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `podman args...`; its stdout, or an error with its stderr.
    pub fn run<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Result<String> {
        let mut cmd = self.command();
        cmd.args(args);
        let out = output_with_timeout(&mut cmd, PODMAN_TIMEOUT)?;
        ensure!(
            out.status.success(),
            "{} failed ({}):\n{}{}",
            describe(&cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The folder bind-mounted into containers started by [`Container::with_fixtures`].
    pub fn out_dir(&self, container: &str) -> PathBuf {
        self.dir.join("out").join(container)
    }

    /// The socket of this test process's [`Engine`]: `target/podman/api-<pid>.sock` (test
    /// binaries of other sessions may run at the same time).
    pub fn api_socket(&self) -> PathBuf {
        self.dir.join(format!("api-{}.sock", std::process::id()))
    }

    /// The label `FINGERPRINT_LABEL` of image `tag`, if the image exists.
    fn image_fingerprint(&self, tag: &str) -> Option<String> {
        let format = format!("{{{{index .Labels \"{FINGERPRINT_LABEL}\"}}}}");
        self.run(&["image", "inspect", "--format", &format, tag])
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// Builds the fixture image `tag` (see the module docs): compiles the fixtures into a fresh
    /// rootfs, copies their libraries, and imports it, unless an image `tag` with the same
    /// rootfs content already exists. Also checks, with `chroot`, that every fixture starts from
    /// the rootfs alone.
    pub fn build_image(&self, tag: &str) -> Result<ImageBuild> {
        let started = Instant::now();
        let _lock = FileLock::acquire(&self.dir.join("build.lock"))?;
        let staging = TempDir::new(&self.dir.join(format!("build-{}", std::process::id())))?;
        let rootfs = staging.path().join("rootfs");
        populate_rootfs(&rootfs).context("building the rootfs")?;
        let fingerprint = fingerprint_tree(&rootfs)?;

        if self.image_fingerprint(tag).as_deref() == Some(fingerprint.as_str()) {
            return Ok(ImageBuild {
                tag: tag.into(),
                fingerprint,
                imported: false,
                elapsed: started.elapsed(),
            });
        }
        let tar = staging.path().join("rootfs.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("--numeric-owner")
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .context("running tar")?;
        ensure!(status.success(), "tar failed ({status})");
        let label = format!("LABEL {FINGERPRINT_LABEL}={fingerprint}");
        let args: [&std::ffi::OsStr; 8] = [
            "import".as_ref(),
            "--quiet".as_ref(),
            "--change".as_ref(),
            label.as_ref(),
            "--message".as_ref(),
            "memprof-tests fixture image".as_ref(),
            tar.as_os_str(),
            tag.as_ref(),
        ];
        self.run(&args)?;
        ensure!(
            self.image_fingerprint(tag).as_deref() == Some(fingerprint.as_str()),
            "podman import did not produce an image {tag} labelled {fingerprint}"
        );
        // The image this one replaced (now untagged), unless a container still uses it.
        let _ = self.run(&["image", "prune", "--force"]);
        Ok(ImageBuild {
            tag: tag.into(),
            fingerprint,
            imported: true,
            elapsed: started.elapsed(),
        })
    }

    /// [`Self::build_image`] of [`IMAGE`], once per test binary.
    pub fn fixture_image() -> &'static ImageBuild {
        static BUILT: OnceLock<std::result::Result<ImageBuild, String>> = OnceLock::new();
        match BUILT.get_or_init(|| {
            Podman::get()
                .build_image(IMAGE)
                .map_err(|e| format!("{e:#}"))
        }) {
            Ok(b) => b,
            Err(e) => panic!("building the container image {IMAGE} failed: {e}"),
        }
    }
}

/// podman keeps its runtime state (`runroot`, `tmp_dir`) in `target/podman/`, which is not a
/// tmpfs: after a reboot podman would take the old containers for running ones (with PIDs that
/// now belong to other processes). When the boot id changed, that state is removed, so podman
/// sees a fresh boot and resets it.
fn forget_state_of_earlier_boot(dir: &Path) -> Result<()> {
    let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .context("reading /proc/sys/kernel/random/boot_id")?;
    let marker = dir.join("boot_id");
    let previous = fs::read_to_string(&marker).unwrap_or_default();
    if previous != boot_id {
        for sub in ["run", "tmp"] {
            let p = dir.join(sub);
            if p.exists() {
                // Overlay mounts of an earlier boot are gone; nothing is mounted below.
                fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
        fs::write(&marker, boot_id).with_context(|| format!("writing {}", marker.display()))?;
    }
    Ok(())
}

fn is_overlayfs(path: &Path) -> bool {
    const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we pass; c is a valid C string.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == OVERLAYFS_SUPER_MAGIC
    }
}

fn write_if_changed(path: &Path, content: &str) -> Result<()> {
    if fs::read_to_string(path).is_ok_and(|old| old == content) {
        return Ok(());
    }
    fs::write(path, content).with_context(|| format!("writing {}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// The rootfs
// ---------------------------------------------------------------------------------------------

/// One fixture program of the image.
struct Variant {
    /// Path in the image.
    path: &'static str,
    /// Compiler.
    cc: &'static str,
    /// Source, relative to `tests/fixtures`.
    source: &'static str,
    /// Flags after the fixture flags.
    extra: &'static [&'static str],
}

const VARIANTS: &[Variant] = &[
    Variant {
        path: "leaky",
        cc: "gcc",
        source: "leaky.c",
        extra: &[],
    },
    Variant {
        path: "leaky-jemalloc",
        cc: "gcc",
        source: "container/leaky_portable.c",
        extra: &["-ljemalloc"],
    },
    // tcmalloc and mimalloc define pvalloc themselves (see leaky_portable.c); the fixture reports
    // on stderr that they own every leaked block.
    Variant {
        path: "leaky-tcmalloc",
        cc: "gcc",
        source: "container/leaky_portable.c",
        extra: &["-DLEAKY_NATIVE_PVALLOC", "-ltcmalloc_minimal"],
    },
    Variant {
        path: "leaky-mimalloc",
        cc: "gcc",
        source: "container/leaky_portable.c",
        extra: &["-DLEAKY_NATIVE_PVALLOC", "-lmimalloc"],
    },
    Variant {
        path: "leaky-musl",
        cc: "musl-gcc",
        source: "container/leaky_portable.c",
        extra: &["-static"],
    },
];

/// Builds the fixture image's rootfs (see the module docs) in `rootfs`: also what the Docker and
/// containerd tests import.
pub fn populate_rootfs(rootfs: &Path) -> Result<()> {
    for d in ["bin", "lib64", "out", "tmp", "etc", "proc", "sys", "dev"] {
        fs::create_dir_all(rootfs.join(d))?;
    }
    fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n")?;
    fs::write(rootfs.join("etc/group"), "root:x:0:\n")?;

    // busybox: the binary (static from busybox-static; if not, its libraries follow below) and
    // one symlink per applet.
    let busybox = which("busybox").ok_or_else(|| {
        anyhow!("busybox is missing: install busybox-static (`cargo xtask setup`)")
    })?;
    fs::copy(&busybox, rootfs.join("bin/busybox"))
        .with_context(|| format!("copying {}", busybox.display()))?;
    let list = output_of(Command::new(&busybox).arg("--list"))?;
    for applet in list.lines().map(str::trim) {
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        let link = rootfs.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link)?;
        }
    }
    ensure!(
        rootfs.join("bin/sh").exists(),
        "busybox ({}) has no `sh` applet",
        busybox.display()
    );

    // The fixtures.
    let src_dir = workspace_root().join("tests/fixtures");
    for v in VARIANTS {
        let out = rootfs.join(v.path);
        let mut cmd = Command::new(v.cc);
        cmd.current_dir(workspace_root())
            .args(FIXTURE_CFLAGS)
            .arg(src_dir.join(v.source))
            .arg("-o")
            .arg(&out)
            .args(v.extra);
        let o = cmd.output().with_context(|| {
            format!(
                "running {} (install gcc, musl-tools, libjemalloc-dev, libgoogle-perftools-dev \
                 and libmimalloc-dev: `cargo xtask setup`)",
                v.cc
            )
        })?;
        ensure!(
            o.status.success(),
            "{} failed ({}):\n{}",
            describe(&cmd),
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
    }

    // Every library of every dynamic executable, copied (a new file, not a link to the host's)
    // to the path ldd gives, the loader at its PT_INTERP path.
    let mut copied: Vec<String> = Vec::new();
    let mut execs: Vec<PathBuf> = VARIANTS.iter().map(|v| rootfs.join(v.path)).collect();
    execs.push(rootfs.join("bin/busybox"));
    for exe in &execs {
        for lib in ldd(exe)? {
            if copied.contains(&lib) {
                continue;
            }
            let dest = rootfs.join(lib.trim_start_matches('/'));
            fs::create_dir_all(dest.parent().unwrap())?;
            fs::copy(&lib, &dest).with_context(|| format!("copying {lib}"))?;
            copied.push(lib);
        }
    }
    // musl-gcc -static must really give a static executable (the allocator is then in it).
    ensure!(
        ldd(&rootfs.join("leaky-musl"))?.is_empty(),
        "leaky-musl is not static"
    );
    // Each allocator-linked fixture must load its allocator, ahead of libc (the first
    // definition of malloc in the lookup order is the one its calls reach).
    for (exe, lib) in [
        ("leaky-jemalloc", "libjemalloc"),
        ("leaky-tcmalloc", "libtcmalloc_minimal"),
        ("leaky-mimalloc", "libmimalloc"),
    ] {
        let libs = ldd(&rootfs.join(exe))?;
        let name_of = |l: &String| l.rsplit('/').next().unwrap_or("").to_string();
        let allocator = libs.iter().position(|l| name_of(l).starts_with(lib));
        let libc = libs.iter().position(|l| name_of(l).starts_with("libc.so"));
        ensure!(
            matches!((allocator, libc), (Some(a), Some(c)) if a < c),
            "{exe} does not load {lib} ahead of libc (ldd: {libs:?})"
        );
    }

    fs::write(rootfs.join("start.sh"), START_SH)?;
    fs::write(rootfs.join("spawn.sh"), SPAWN_SH)?;

    // Every fixture must start from the rootfs alone: in a chroot, `--bad-option` must reach
    // leaky's own usage message (the loader, libraries and allocator all initialised).
    for v in VARIANTS {
        let o = Command::new("chroot")
            .arg(rootfs)
            .arg(format!("/{}", v.path))
            .arg("--bad-option")
            .stdin(Stdio::null())
            .output()
            .context("running chroot")?;
        let err = String::from_utf8_lossy(&o.stderr);
        ensure!(
            o.status.code() == Some(2) && err.contains("usage:"),
            "/{} does not run inside the rootfs ({}): {err}",
            v.path,
            o.status
        );
    }
    Ok(())
}

/// The library files `ldd` lists for `exe` (the loader included, the vDSO not); empty for a
/// static executable.
fn ldd(exe: &Path) -> Result<Vec<String>> {
    let o = Command::new("ldd")
        .arg(exe)
        .stdin(Stdio::null())
        .output()
        .context("running ldd")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    ensure!(o.status.success(), "ldd {} failed: {text}", exe.display());
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim) {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, `/lib64/ld-linux-x86-64.so.2
        // (0x...)`, `linux-vdso.so.1 (0x...)`, `libx.so => not found`.
        let target = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                ensure!(
                    !rest.starts_with("not found"),
                    "{}: {} not found",
                    exe.display(),
                    name.trim()
                );
                rest
            }
            None => line,
        };
        let path = target.split_whitespace().next().unwrap_or("");
        if path.starts_with('/') {
            libs.push(path.to_string());
        }
    }
    Ok(libs)
}

/// A content hash of a folder: names, types, modes, link targets and file contents.
pub fn fingerprint_tree(root: &Path) -> Result<String> {
    fn walk(dir: &Path, rel: &Path, h: &mut DefaultHasher) -> Result<()> {
        let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let rel = rel.join(e.file_name());
            let md = fs::symlink_metadata(&path)?;
            h.write(rel.as_os_str().as_encoded_bytes());
            h.write_u32(md.mode());
            if md.file_type().is_symlink() {
                h.write(fs::read_link(&path)?.as_os_str().as_encoded_bytes());
            } else if md.is_dir() {
                walk(&path, &rel, h)?;
            } else {
                let data = fs::read(&path)?;
                h.write_u64(data.len() as u64);
                h.write(&data);
            }
            h.write_u8(0xff);
        }
        Ok(())
    }
    let mut h = DefaultHasher::new();
    h.write_u32(BUILDER_VERSION);
    walk(root, Path::new(""), &mut h)?;
    Ok(format!("{:016x}", h.finish()))
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn output_of(cmd: &mut Command) -> Result<String> {
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| describe(cmd))?;
    ensure!(
        o.status.success(),
        "{} failed ({}): {}",
        describe(cmd),
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s += &a.to_string_lossy();
    }
    s
}

/// Runs `cmd` to its end with its output collected; kills it (its own PID) after `timeout`.
pub(crate) fn output_with_timeout(
    cmd: &mut Command,
    timeout: Duration,
) -> Result<std::process::Output> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawning {}", describe(cmd)))?;
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_reader = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_reader = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{} did not finish within {timeout:?} (killed)",
                describe(cmd)
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    Ok(std::process::Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}

/// A folder removed (with its contents) on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(path: &Path) -> Result<TempDir> {
        if path.exists() {
            fs::remove_dir_all(path)?;
        }
        fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir(path.to_path_buf()))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// An exclusive `flock` on a file, released on drop (test binaries may run side by side).
pub(crate) struct FileLock(fs::File);

impl FileLock {
    pub(crate) fn acquire(path: &Path) -> Result<FileLock> {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on a descriptor we own.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        ensure!(
            rc == 0,
            "flock {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        Ok(FileLock(f))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

// ---------------------------------------------------------------------------------------------
// Containers
// ---------------------------------------------------------------------------------------------

/// The prefix of [`container_name`].
const CONTAINER_PREFIX: &str = "memprof-test-";

/// `memprof-test-<base>-<pid of this test process>`: unique among test processes running side
/// by side; a leftover of a killed run is removed by the next run ([`Podman::get`]).
pub fn container_name(base: &str) -> String {
    format!("{CONTAINER_PREFIX}{base}-{}", std::process::id())
}

/// A container started with `podman run -d`, removed with `podman rm -f -t 0` on drop (also
/// when the test panics).
#[derive(Debug)]
pub struct Container {
    name: String,
    id: String,
    /// Set by [`Self::with_fixtures`] (and by `python.rs` for its interpreter containers).
    pub(crate) out_dir: Option<PathBuf>,
}

impl Container {
    /// `podman run -d --name NAME IMAGE CMD...`. A container left with that name by an earlier
    /// run is removed first.
    pub fn run(name: &str, image: &str, cmd: &[&str]) -> Result<Container> {
        Self::run_with(name, image, &[], cmd)
    }

    /// [`Self::run`] with more `podman run` options (before the image).
    pub fn run_with(name: &str, image: &str, options: &[&str], cmd: &[&str]) -> Result<Container> {
        let podman = Podman::get();
        remove_container(name);
        let mut args: Vec<&str> = vec!["run", "-d", "--name", name];
        args.extend_from_slice(options);
        args.push(image);
        args.extend_from_slice(cmd);
        let out = podman.run(&args);
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                // `run` can fail after the container was created.
                remove_container(name);
                return Err(e);
            }
        };
        let id = out
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or_default()
            .to_string();
        Ok(Container {
            name: name.into(),
            id,
            out_dir: None,
        })
    }

    /// Runs [`IMAGE`]'s `/start.sh` with one fixture per `(label, program)` (program may carry
    /// arguments after spaces), `target/podman/out/NAME` (emptied first) mounted at `/out`.
    /// Waits until the script has started them all; read them with [`Self::fixture`].
    pub fn with_fixtures(name: &str, image: &str, fixtures: &[(&str, &str)]) -> Result<Container> {
        let out = Podman::get().out_dir(name);
        if out.exists() {
            fs::remove_dir_all(&out).with_context(|| format!("emptying {}", out.display()))?;
        }
        fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        let volume = format!("{}:/out", out.display());
        let specs: Vec<String> = fixtures
            .iter()
            .map(|(label, prog)| {
                assert!(
                    !label.contains(['=', ' ', '/']),
                    "bad fixture label {label:?}"
                );
                format!("{label}={prog}")
            })
            .collect();
        let mut cmd: Vec<&str> = vec!["/bin/sh", "/start.sh"];
        cmd.extend(specs.iter().map(String::as_str));
        let mut c = Self::run_with(name, image, &["-v", &volume], &cmd)?;
        c.out_dir = Some(out.clone());
        let deadline = Instant::now() + Duration::from_secs(30);
        while !out.join(".started").exists() {
            ensure!(
                Instant::now() < deadline,
                "container {name}: /start.sh did not start its fixtures within 30 s; logs:\n{}",
                c.logs()
            );
            thread::sleep(Duration::from_millis(20));
        }
        Ok(c)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The full container id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The host folder mounted at `/out` ([`Self::with_fixtures`]).
    pub fn out_dir(&self) -> Option<&Path> {
        self.out_dir.as_deref()
    }

    /// The host PID of the container's main process (`podman inspect`).
    pub fn pid(&self) -> Result<u32> {
        let s = Podman::get().run(&["inspect", "--format", "{{.State.Pid}}", &self.name])?;
        let pid: u32 = s
            .trim()
            .parse()
            .with_context(|| format!("podman inspect gave pid {s:?}"))?;
        ensure!(pid != 0, "container {} is not running", self.name);
        Ok(pid)
    }

    /// `podman exec NAME CMD...`; its stdout.
    pub fn exec(&self, cmd: &[&str]) -> Result<String> {
        let mut args = vec!["exec", self.name.as_str()];
        args.extend_from_slice(cmd);
        Podman::get().run(&args)
    }

    /// `podman exec -d NAME CMD...`.
    pub fn exec_detached(&self, cmd: &[&str]) -> Result<()> {
        let mut args = vec!["exec", "-d", self.name.as_str()];
        args.extend_from_slice(cmd);
        Podman::get().run(&args).map(drop)
    }

    /// The container's cgroup v2: the `0::` line of `/proc/PID/cgroup` of its main process,
    /// under the v2 mount (from /proc/self/mountinfo).
    pub fn cgroup_path(&self) -> Result<PathBuf> {
        let pid = self.pid()?;
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .with_context(|| format!("reading /proc/{pid}/cgroup"))?;
        let rel = text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or_else(|| anyhow!("/proc/{pid}/cgroup has no cgroup v2 line:\n{text}"))?;
        let path = cgroup2_mount().join(rel.trim().trim_start_matches('/'));
        ensure!(path.is_dir(), "{} is not a directory", path.display());
        Ok(path)
    }

    /// The host PIDs of every process of the container's cgroup (and its descendants).
    pub fn host_pids(&self) -> Result<Vec<u32>> {
        fn collect(dir: &Path, out: &mut Vec<u32>) {
            if let Ok(s) = fs::read_to_string(dir.join("cgroup.procs")) {
                out.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
            if let Ok(entries) = fs::read_dir(dir) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        collect(&e.path(), out);
                    }
                }
            }
        }
        let mut pids = Vec::new();
        collect(&self.cgroup_path()?, &mut pids);
        pids.sort_unstable();
        Ok(pids)
    }

    /// The host PID of the container's process `ns_pid` (a PID as seen inside the container).
    pub fn host_pid(&self, ns_pid: u32) -> Result<Option<u32>> {
        Ok(self
            .host_pids()?
            .into_iter()
            .find(|&p| ns_pid_of(p) == Some(ns_pid)))
    }

    /// Sends `signal` (a `kill` name or number: `USR1`, `KILL`) to `ns_pid` from inside the
    /// container (`podman exec NAME kill -SIG PID`).
    pub fn kill_inside(&self, ns_pid: u32, signal: &str) -> Result<()> {
        self.exec(&["kill", &format!("-{signal}"), &ns_pid.to_string()])
            .map(drop)
    }

    /// The fixture `label` started by [`Self::with_fixtures`] (or [`Self::spawn_fixture`]),
    /// once it printed `ready <pid>`.
    pub fn fixture(&self, label: &str, timeout: Duration) -> Result<ContainerFixture> {
        let out_dir = self
            .out_dir
            .as_ref()
            .ok_or_else(|| anyhow!("container {} has no /out folder", self.name))?;
        let mut fx = ContainerFixture {
            label: label.into(),
            container: self.name.clone(),
            out: out_dir.join(format!("{label}.out")),
            err: out_dir.join(format!("{label}.err")),
            consumed: 0,
            ns_pid: 0,
            host_pid: 0,
        };
        let deadline = Instant::now() + timeout;
        let line = fx.next_line(timeout)?;
        let ns_pid: u32 = line
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(|| anyhow!("{}: expected `ready <pid>`, got {line:?}", fx.what()))?;
        fx.ns_pid = ns_pid;
        loop {
            if let Some(p) = self.host_pid(ns_pid)? {
                fx.host_pid = p;
                return Ok(fx);
            }
            ensure!(
                Instant::now() < deadline,
                "{}: no process of the container has NSpid {ns_pid}",
                fx.what()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts `program args...` inside the running container with `podman exec -d` (through
    /// `/spawn.sh`, which execs it: same PID) and waits for its `ready` line.
    pub fn spawn_fixture(
        &self,
        label: &str,
        program: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<ContainerFixture> {
        let out_dir = self
            .out_dir
            .as_ref()
            .ok_or_else(|| anyhow!("container {} has no /out folder", self.name))?;
        for ext in ["out", "err"] {
            let _ = fs::remove_file(out_dir.join(format!("{label}.{ext}")));
        }
        let mut cmd = vec!["/bin/sh", "/spawn.sh", label, program];
        cmd.extend_from_slice(args);
        self.exec_detached(&cmd)?;
        self.fixture(label, timeout)
    }

    /// `podman logs NAME` (for messages).
    pub fn logs(&self) -> String {
        let mut cmd = Podman::get().command();
        cmd.args(["logs", &self.name]);
        match output_with_timeout(&mut cmd, Duration::from_secs(20)) {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("(podman logs failed: {e:#})"),
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        remove_container(&self.name);
    }
}

/// `podman rm -f -t 0 NAME` (-t 0: the main process ignores SIGTERM); quiet when there is none.
fn remove_container(name: &str) {
    remove_container_with(Podman::get(), name)
}

fn remove_container_with(podman: &Podman, name: &str) {
    let mut cmd = podman.command();
    cmd.args(["rm", "--force", "--ignore", "--time", "0", name]);
    match output_with_timeout(&mut cmd, PODMAN_TIMEOUT) {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!(
            "warning: podman rm {name} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => eprintln!("warning: podman rm {name}: {e:#}"),
    }
}

/// The innermost PID (`NSpid:` last field) of host process `pid`.
pub fn ns_pid_of(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

/// The PIDs of the processes of cgroup `dir` and its descendants.
pub fn tree_pids(dir: &Path) -> Vec<u32> {
    let mut out: Vec<u32> = fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(tree_pids(&e.path()));
        }
    }
    out
}

/// A fixture running inside a container, read through its stdout file in the `/out` folder.
#[derive(Debug)]
pub struct ContainerFixture {
    pub label: String,
    container: String,
    out: PathBuf,
    err: PathBuf,
    consumed: usize,
    /// Its PID inside the container (what it prints).
    pub ns_pid: u32,
    /// Its PID on the host (what memprof reports).
    pub host_pid: u32,
}

impl ContainerFixture {
    /// The fixture `label` of a container run by another engine (Docker, containerd) from
    /// [`IMAGE`]'s rootfs with `/start.sh`, its `/out` at `out_dir`: waits for its `ready <pid>`
    /// line and finds its host PID among the processes of `cgroup` (and its descendants).
    pub fn open(
        label: &str,
        container: &str,
        out_dir: &Path,
        cgroup: &Path,
        timeout: Duration,
    ) -> Result<ContainerFixture> {
        let mut fx = ContainerFixture {
            label: label.into(),
            container: container.into(),
            out: out_dir.join(format!("{label}.out")),
            err: out_dir.join(format!("{label}.err")),
            consumed: 0,
            ns_pid: 0,
            host_pid: 0,
        };
        let deadline = Instant::now() + timeout;
        let line = fx.next_line(timeout)?;
        fx.ns_pid = line
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(|| anyhow!("{}: expected `ready <pid>`, got {line:?}", fx.what()))?;
        loop {
            let pids = tree_pids(cgroup);
            if let Some(p) = pids.into_iter().find(|&p| ns_pid_of(p) == Some(fx.ns_pid)) {
                fx.host_pid = p;
                return Ok(fx);
            }
            ensure!(
                Instant::now() < deadline,
                "{}: no process of {} has NSpid {}",
                fx.what(),
                cgroup.display(),
                fx.ns_pid
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn what(&self) -> String {
        format!(
            "fixture {} in container {} (pid {} inside, {} on the host)",
            self.label, self.container, self.ns_pid, self.host_pid
        )
    }

    /// The fixture's stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// The next complete line of its stdout.
    fn next_line(&mut self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = fs::read_to_string(&self.out).unwrap_or_default();
            let complete: Vec<&str> = match text.rfind('\n') {
                Some(end) => text[..end].split('\n').collect(),
                None => Vec::new(),
            };
            if let Some(line) = complete.get(self.consumed) {
                self.consumed += 1;
                return Ok(line.to_string());
            }
            if self.host_pid != 0 && !self.is_alive() {
                bail!(
                    "{} has exited; stdout: {text:?}; stderr: {:?}",
                    self.what(),
                    self.stderr()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: no output line within {timeout:?}; stdout: {text:?}; stderr: {:?}",
                    self.what(),
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether its host PID still is this process (a container process with its NSpid).
    pub fn is_alive(&self) -> bool {
        if ns_pid_of(self.host_pid) != Some(self.ns_pid) {
            return false;
        }
        // A zombie has released its memory; count it as gone.
        fs::read_to_string(format!("/proc/{}/stat", self.host_pid))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, r)| r.split_whitespace().next().map(|st| st != "Z"))
            })
            .unwrap_or(false)
    }

    /// The go signal (SIGUSR1), sent from the host to its host PID after checking that the PID
    /// still is this process.
    pub fn go(&self) -> Result<()> {
        self.signal(libc::SIGUSR1)
    }

    /// Sends `sig` from the host (PID checked first).
    pub fn signal(&self, sig: libc::c_int) -> Result<()> {
        ensure!(self.is_alive(), "{} is not running", self.what());
        // SAFETY: kill(2) on a PID we just checked is our fixture.
        let rc = unsafe { libc::kill(self.host_pid as libc::pid_t, sig) };
        ensure!(
            rc == 0,
            "kill({}, {sig}): {}",
            self.host_pid,
            std::io::Error::last_os_error()
        );
        Ok(())
    }

    /// Waits for its ground-truth line; the `pid` of the result is the host PID (after checking
    /// that the fixture printed its container PID).
    pub fn wait_truth(&mut self, timeout: Duration) -> Result<GroundTruth> {
        let line = self.next_line(timeout)?;
        let mut truth = GroundTruth::parse(&line)?;
        ensure!(
            truth.pid == self.ns_pid,
            "{}: ground truth names pid {}",
            self.what(),
            truth.pid
        );
        truth.pid = self.host_pid;
        Ok(truth)
    }

    /// Waits until the process is gone (or a zombie).
    pub fn wait_gone(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.is_alive() {
            ensure!(
                Instant::now() < deadline,
                "{} still runs after {timeout:?}",
                self.what()
            );
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The Docker-compatible API
// ---------------------------------------------------------------------------------------------

/// `podman system service --time=0 unix://target/podman/api-<pid>.sock` in the background: the
/// Docker API over that socket (`DOCKER_HOST=unix://...`). On drop: SIGTERM to the PID it
/// started, SIGKILL if it has not ended 10 s later, and the socket file is removed. Its log is
/// `target/podman/api-<pid>.log`.
#[derive(Debug)]
pub struct Engine {
    child: Child,
    socket: PathBuf,
}

impl Engine {
    /// Starts the service and waits until `GET /_ping` answers `OK`.
    pub fn start() -> Result<Engine> {
        let podman = Podman::get();
        let socket = podman.api_socket();
        let _ = fs::remove_file(&socket);
        let log_path = socket.with_extension("log");
        let log = fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = podman.command();
        cmd.args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        let child = Child::spawn(&mut cmd, None)?;
        let mut engine = Engine { child, socket };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(body) = engine.get("/_ping") {
                if body.trim() == "OK" {
                    return Ok(engine);
                }
            }
            if !engine.child.is_running() {
                bail!(
                    "podman system service exited; log:\n{}",
                    fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "podman system service did not answer on {} within 30 s; log:\n{}",
                    engine.socket.display(),
                    fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `unix:///.../api-<pid>.sock`, for `DOCKER_HOST`.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// `GET path` over the socket (HTTP/1.1, one request per connection); the body, or an
    /// error for a status other than 200.
    pub fn get(&self, path: &str) -> Result<String> {
        let mut s = UnixStream::connect(&self.socket)
            .with_context(|| format!("connecting to {}", self.socket.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow!("no HTTP response: {text:?}"))?;
        let status = head.lines().next().unwrap_or_default();
        ensure!(status.contains(" 200 "), "GET {path}: {status}");
        let chunked = head.lines().any(|l| {
            l.to_ascii_lowercase()
                .starts_with("transfer-encoding: chunked")
        });
        Ok(if chunked {
            dechunk(body)
        } else {
            body.to_string()
        })
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

impl Drop for Engine {
    fn drop(&mut self) {
        if self.child.is_running() {
            let _ = self.child.signal(libc::SIGTERM);
            if !matches!(
                self.child.wait_timeout(Duration::from_secs(10)),
                Ok(Some(_))
            ) {
                self.child.kill();
            }
        }
        let _ = fs::remove_file(&self.socket);
    }
}

// ---------------------------------------------------------------------------------------------
// Files of a container process
// ---------------------------------------------------------------------------------------------

/// `(device, inode)` of a file.
pub type FileId = (u64, u64);

/// The identity of `path`.
pub fn file_id(path: &Path) -> Option<FileId> {
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The identity of `path` as process `host_pid` sees it (through `/proc/PID/root`).
pub fn file_id_in(host_pid: u32, path: &str) -> Option<FileId> {
    file_id(&Path::new(&format!("/proc/{host_pid}/root")).join(path.trim_start_matches('/')))
}

/// The mapped files of process `pid` whose path contains `needle`, from `/proc/PID/maps`, each
/// with its `(device, inode)` as the maps line gives them (device as `major:minor` hex).
pub fn mapped_files(pid: u32, needle: &str) -> Vec<(String, String, u64)> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let mut out: Vec<(String, String, u64)> = Vec::new();
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 {
            continue;
        }
        let path = f[5..].join(" ");
        if !path.contains(needle) {
            continue;
        }
        let ino: u64 = f[4].parse().unwrap_or(0);
        if !out.iter().any(|(p, _, i)| *p == path && *i == ino) {
            out.push((path, f[3].to_string(), ino));
        }
    }
    out
}

/// A one-line summary of a duration in seconds, for timing reports.
pub fn secs(d: Duration) -> String {
    let mut s = String::new();
    let _ = write!(s, "{:.2} s", d.as_secs_f64());
    s
}
