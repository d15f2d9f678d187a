//! memprof's development tasks: `cargo xtask setup|build|test|demo|bench|bench-node|soak`.
//!
//! Kept light on purpose: no dependency on the memprof crates.

mod bench;
mod demo;
mod bench_node;
mod bench_python;
mod soak;

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::Duration,
};

use anyhow::{anyhow, ensure, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "xtask", about = "memprof's development tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent): gcc, libc6-dev, pkg-config, the
    /// nightly toolchain with rust-src, bpf-linker 0.13; mount tracefs.
    Setup,
    /// Setup, then `cargo build --release -p memprof` (binary: target/release/memprof).
    Build,
    /// Setup, build, unit and golden tests, then the integration tests (root needed).
    Test {
        /// Extra arguments for the integration test binaries (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Profile a leaking Python API service in a podman container for 40 s (root needed).
    Demo,
    /// Setup, build, then measure memprof's cost next to no profiler and memleak-bpfcc
    /// (installed if missing), and on Python next to memray (from PyPI) and tracemalloc, and
    /// write BENCHMARKS.md (root needed).
    Bench {
        /// 1e5 cycles and one repetition instead of 1e6 and three.
        #[arg(long)]
        quick: bool,
        /// Only the Python benchmarks (memprof next to memray and tracemalloc on
        /// `bench/python/`): replaces BENCHMARKS.md's Python sections, keeps the rest.
        #[arg(long)]
        python_only: bool,
    },
    /// Setup, build, then measure what memprof's JS stack walk (Node, read from V8) costs per
    /// recorded allocation by JS stack depth, and write BENCHMARKS.md's Node section (root
    /// needed).
    BenchNode {
        /// One run of 5000 allocations per cell instead of three of 20000.
        #[arg(long)]
        quick: bool,
    },
    /// Setup, build, then a compressed multi-day run: memprof on a cgroup holding a steady
    /// leaker, a cache and ~20 short-lived processes a second, at a short snapshot interval; its
    /// RSS, fds, output folder and CPU are sampled every 10 s (target/soak/samples.csv) and
    /// BENCHMARKS.md's Soak section is written (root needed).
    Soak {
        /// How long memprof runs (`20m`, `90s`, `1h`; at least 1m).
        #[arg(long, default_value = "20m", value_parser = soak::parse_duration)]
        duration: Duration,
        /// memprof's `--interval`: one second of the run stands for 10 s / INTERVAL of a run at
        /// the default 10 s.
        #[arg(long, default_value = "1s", value_parser = soak::parse_duration)]
        interval: Duration,
    },
}

fn main() -> ExitCode {
    match run_task(Cli::parse().task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_task(task: Task) -> Result<()> {
    match task {
        Task::Setup => setup(),
        Task::Build => {
            setup()?;
            build()
        }
        Task::Test { args } => {
            setup()?;
            build()?;
            test(&args)
        }
        Task::Demo => {
            setup()?;
            build()?;
            demo::demo()
        }
        Task::Bench { quick, python_only } => {
            setup()?;
            build()?;
            if python_only {
                bench_python::bench_only(quick)
            } else {
                bench::bench(quick)
            }
        }
        Task::BenchNode { quick } => {
            setup()?;
            build()?;
            bench_node::bench_node(quick)
        }
        Task::Soak { duration, interval } => {
            setup()?;
            build()?;
            soak::soak(duration, interval)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// The cargo that runs this xtask (same toolchain).
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd`, echoing it; fails on a non-zero exit.
fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {}", describe(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {}", describe(cmd)))?;
    ensure!(status.success(), "`{}` failed ({status})", describe(cmd));
    Ok(())
}

/// Runs `cmd` quietly and returns its stdout if it succeeded.
fn output_of(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A command run as root: directly when we are root, else through sudo when there is one.
fn privileged(program: &str) -> Command {
    if is_root() || output_of(Command::new("sudo").arg("-n").arg("true")).is_none() {
        Command::new(program)
    } else {
        let mut cmd = Command::new("sudo");
        cmd.arg(program);
        cmd
    }
}

/// The mount points with file-system type `fstype` (with their octal escapes undone).
fn mount_points(fstype: &str) -> Result<Vec<PathBuf>> {
    let info =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let mut found = Vec::new();
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() != Some(fstype) {
            continue;
        }
        if let Some(mnt) = left.split_whitespace().nth(4) {
            found.push(PathBuf::from(unescape_octal(mnt)));
        }
    }
    Ok(found)
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// setup
// ---------------------------------------------------------------------------------------------

const APT_PACKAGES: &[&str] = &[
    "gcc",
    // The stack tests (tests/tests/stacks.rs): a C++ fixture, and a Node program whose JIT
    // frames come from its perf map.
    "g++",
    "nodejs",
    "libc6-dev",
    "pkg-config",
    "binutils",
    "xz-utils",
    "gzip",
    // report.html is opened in headless Chromium; profile.pb.gz is decoded with protoc (an
    // independent decoder) against the upstream profile.proto.
    "chromium",
    "protobuf-compiler",
    // The container tests (tests/tests/containers.rs): podman with runc, and the fixture
    // image's pieces (jemalloc-, tcmalloc- and mimalloc-linked fixtures, a static musl one,
    // busybox as its shell).
    "podman",
    "runc",
    "libjemalloc-dev",
    "libgoogle-perftools-dev",
    "libtcmalloc-minimal4",
    "libmimalloc-dev",
    "musl-tools",
    "busybox-static",
    // The Python tests (tests/src/python.rs): container roots of other distributions.
    "debootstrap",
    // The export test (tests/tests/export.rs): a real Prometheus scrapes `--metrics`.
    "prometheus",
    // The Docker test (tests/tests/docker.rs): a private dockerd; the Kubernetes `--pod` test
    // (tests/tests/kubernetes.rs): a private containerd (1.6) with its `ctr`.
    "docker.io",
    "containerd",
];

fn setup() -> Result<()> {
    setup_packages()?;
    setup_nightly()?;
    setup_bpf_linker()?;
    setup_tracefs()?;
    setup_kube_validator()?;
    Ok(())
}

/// The version of `kubernetes-validate` (PyPI; it ships the Kubernetes schemas, so validating
/// needs no network) that checks `deploy/kubernetes/` (tests/tests/deploy.rs).
const KUBE_VALIDATE: &str = "kubernetes-validate==1.37.0";

/// `target/tools/kubernetes-validate/`: a Python virtual environment with [`KUBE_VALIDATE`],
/// created once (again when the pinned version changes).
fn setup_kube_validator() -> Result<()> {
    let venv = target_dir().join("tools/kubernetes-validate");
    let stamp = venv.join("memprof-installed");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == KUBE_VALIDATE) {
        return Ok(());
    }
    eprintln!("xtask: installing {KUBE_VALIDATE} into {}", venv.display());
    let _ = std::fs::remove_dir_all(&venv);
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", KUBE_VALIDATE]))?;
    std::fs::write(&stamp, KUBE_VALIDATE)?;
    Ok(())
}

fn dpkg_installed(pkg: &str) -> bool {
    output_of(Command::new("dpkg").args(["-s", pkg])).is_some_and(|s| {
        s.lines()
            .any(|l| l.trim() == "Status: install ok installed")
    })
}

fn setup_packages() -> Result<()> {
    if output_of(Command::new("dpkg").arg("--version")).is_none() {
        // Not Debian/Ubuntu: only check that a C compiler is there.
        ensure!(
            output_of(Command::new("gcc").arg("--version")).is_some(),
            "gcc is missing: install gcc, the C library headers and pkg-config"
        );
        return Ok(());
    }
    apt_install_missing(APT_PACKAGES)
}

/// Installs the Debian packages of `packages` that are not installed yet (idempotent; runs
/// `apt-get update` only when something is missing).
pub(crate) fn apt_install_missing(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run(privileged("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(privileged("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(())
}

fn setup_nightly() -> Result<()> {
    let toolchains = output_of(Command::new("rustup").args(["toolchain", "list"]))
        .ok_or_else(|| anyhow!("rustup is needed (https://rustup.rs)"))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly-")) {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let installed = output_of(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// bpf-linker 0.13 linked against the nightly toolchain's own libLLVM. The library is reached
/// through `target/llvm-prefix/lib`, which holds symlinks to it under both its plain name (for
/// the build) and its soname (for the installed binary, whose RUNPATH is that folder). The links
/// are refreshed on every run, so a `cargo clean` does not break an installed bpf-linker.
fn setup_bpf_linker() -> Result<()> {
    let sysroot = output_of(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .ok_or_else(|| anyhow!("`rustc +nightly --print sysroot` failed"))?;
    let sysroot_lib = Path::new(sysroot.trim()).join("lib");
    let mut candidates: Vec<String> = fs::read_dir(&sysroot_lib)
        .with_context(|| format!("reading {}", sysroot_lib.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-"))
        .collect();
    candidates.sort();
    let llvm = candidates
        .pop()
        .ok_or_else(|| anyhow!("no libLLVM.so.*-rust-* in {}", sysroot_lib.display()))?;
    let major: String = llvm["libLLVM.so.".len()..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    ensure!(
        !major.is_empty(),
        "cannot read the LLVM version from {llvm}"
    );

    // Outside the checkout (bpf-linker's RUNPATH points here, and `cargo clean` or another clone
    // must not break it): beside cargo's own installs.
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .ok_or_else(|| anyhow!("neither CARGO_HOME nor HOME is set"))?;
    let prefix = cargo_home.join("memprof-llvm-prefix");
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let real = sysroot_lib.join(&llvm);
    for name in ["libLLVM.so", llvm.as_str()] {
        let link = lib.join(name);
        if fs::read_link(&link).ok().as_deref() != Some(real.as_path()) {
            let _ = fs::remove_file(&link);
            symlink(&real, &link).with_context(|| format!("linking {}", link.display()))?;
        }
    }

    let version = || output_of(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if version().contains("0.13") {
        return Ok(());
    }
    run(Command::new("cargo")
        .args([
            "+nightly",
            "install",
            "bpf-linker",
            "--version",
            "~0.13",
            "--force",
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &prefix)
        .env_remove("RUSTUP_TOOLCHAIN"))?;
    let v = version();
    ensure!(
        v.contains("0.13"),
        "bpf-linker --version says {v:?} after installing 0.13"
    );
    Ok(())
}

fn setup_tracefs() -> Result<()> {
    let tracing = Path::new("/sys/kernel/tracing");
    if mount_points("tracefs")?.iter().any(|m| m == tracing) {
        return Ok(());
    }
    run(privileged("mount")
        .args(["-t", "tracefs", "nodev"])
        .arg(tracing))
    .context("mounting tracefs at /sys/kernel/tracing (root needed)")
}

// ---------------------------------------------------------------------------------------------
// build, test
// ---------------------------------------------------------------------------------------------

fn build() -> Result<()> {
    run(cargo().args(["build", "--release", "-p", "memprof"]))
}

fn test(extra: &[String]) -> Result<()> {
    // Unit and golden tests. memprof-ebpf is left out: it is a BPF-only crate (built for
    // bpfel-unknown-none by memprof's build script) with no host tests.
    run(cargo().args([
        "test",
        "--no-fail-fast",
        "--workspace",
        "--exclude",
        "memprof-tests",
        "--exclude",
        "memprof-ebpf",
    ]))?;
    // Integration tests: real BPF on the C fixtures, one at a time.
    run(cargo()
        .args([
            "test",
            "--no-fail-fast",
            "-p",
            "memprof-tests",
            "--",
            "--test-threads=1",
        ])
        .args(extra)
        .env("MEMPROF_BIN", target_dir().join("release/memprof")))?;
    eprintln!("xtask: all tests passed");
    Ok(())
}
