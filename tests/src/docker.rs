//! A private Docker daemon for the tests (Debian's `docker.io`, installed by `cargo xtask setup`),
//! and containers of the fixture image run by it.
//!
//! - [`Dockerd::start`]: `dockerd --iptables=false --ip6tables=false --bridge=none
//!   --exec-opt native.cgroupdriver=cgroupfs --data-root D/data --exec-root D/exec
//!   -H unix://D/docker.sock --pidfile D/dockerd.pid`, with `D` = `target/docker/run-<test pid>`.
//!   dockerd starts its own containerd under `D/exec` (unless a system containerd listens on
//!   `/run/containerd/containerd.sock`, which it then uses with its own namespace `moby`). On
//!   drop: every container of the daemon removed, SIGTERM to the dockerd this started (its own
//!   PID; SIGKILL after 20 s), mounts left below `D` detached, `D` removed. Folders of earlier
//!   runs whose test process is gone are cleaned up the same way at the next start.
//! - [`Dockerd::import_fixture_image`]: the podman fixture image's rootfs
//!   ([`crate::container::populate_rootfs`]) as a tar, `docker import`ed.
//! - [`DockerContainer`]: `docker run --network none -d --name NAME -v OUT:/out IMAGE
//!   /bin/sh /start.sh LABEL=PROGRAM...`; removed (`docker rm -f`) on drop. Its fixtures are
//!   read as the podman ones ([`ContainerFixture::open`]).

use std::{
    fs,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};

use crate::{
    cgroup2_mount,
    container::{describe, output_with_timeout, populate_rootfs, ContainerFixture},
    target_dir, Child,
};

/// How long one `docker` command may take.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(120);

/// A dockerd of this test process (see the module docs).
#[derive(Debug)]
pub struct Dockerd {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

/// The docker client: Debian's (`/usr/bin/docker`, the daemon's own version), else the first on
/// `PATH`.
fn docker_cli() -> PathBuf {
    let debian = PathBuf::from("/usr/bin/docker");
    if debian.is_file() {
        return debian;
    }
    PathBuf::from("docker")
}

impl Dockerd {
    /// Starts the daemon and waits until `docker version` answers (60 s at most).
    pub fn start() -> Result<Dockerd> {
        ensure!(
            Path::new("/usr/sbin/dockerd").is_file() || which("dockerd"),
            "dockerd is missing: install docker.io (`cargo xtask setup`)"
        );
        let base = target_dir().join("docker");
        fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
        clean_stale_runs(&base);
        let dir = base.join(format!("run-{}", std::process::id()));
        if dir.exists() {
            clean_run_dir(&dir);
        }
        for sub in ["data", "exec"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let socket = dir.join("docker.sock");
        let log_path = dir.join("dockerd.log");
        let log = fs::File::create(&log_path)?;
        let mut cmd = Command::new("dockerd");
        cmd.args([
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--exec-opt",
            "native.cgroupdriver=cgroupfs",
        ])
        .arg("--data-root")
        .arg(dir.join("data"))
        .arg("--exec-root")
        .arg(dir.join("exec"))
        .arg("-H")
        .arg(format!("unix://{}", socket.display()))
        .arg("--pidfile")
        .arg(dir.join("dockerd.pid"))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log));
        let child = Child::spawn(&mut cmd, None).context("starting dockerd")?;
        let mut d = Dockerd { child, dir, socket };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if d.socket.exists()
                && d.docker(&["version", "--format", "{{.Server.Version}}"])
                    .is_ok()
            {
                return Ok(d);
            }
            if !d.child.is_running() {
                bail!("dockerd exited; log:\n{}", d.log());
            }
            if Instant::now() > deadline {
                bail!("dockerd did not answer within 60 s; log:\n{}", d.log());
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The end of dockerd's log (for messages).
    pub fn log(&self) -> String {
        let text = fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// `unix:///.../docker.sock`, for `DOCKER_HOST`.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// `docker ARGS...` against this daemon; its stdout.
    pub fn docker<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Result<String> {
        let mut cmd = Command::new(docker_cli());
        cmd.env("DOCKER_HOST", self.docker_host())
            .env("DOCKER_CONFIG", self.dir.join("client"))
            .args(args)
            .stdin(Stdio::null());
        let o = output_with_timeout(&mut cmd, DOCKER_TIMEOUT)?;
        ensure!(
            o.status.success(),
            "{} failed ({}): {}",
            describe(&cmd),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Builds the fixture rootfs (as for the podman image) and `docker import`s it as `tag`.
    pub fn import_fixture_image(&self, tag: &str) -> Result<()> {
        let staging = self.dir.join("image");
        let rootfs = staging.join("rootfs");
        fs::create_dir_all(&rootfs)?;
        populate_rootfs(&rootfs).context("building the rootfs")?;
        let tar = staging.join("rootfs.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args(["--numeric-owner", "-cf"])
            .arg(&tar)
            .arg(".")
            .status()
            .context("running tar")?;
        ensure!(status.success(), "tar failed ({status})");
        self.docker(&["import".as_ref(), tar.as_os_str(), tag.as_ref()])?;
        let _ = fs::remove_dir_all(&staging);
        Ok(())
    }

    /// `docker run --network none -d --name NAME -v OUT:/out IMAGE /bin/sh /start.sh
    /// LABEL=PROGRAM...`, OUT = `D/out/NAME` (emptied first); waits until `/start.sh` started
    /// the fixtures.
    pub fn run_fixtures(
        &self,
        name: &str,
        image: &str,
        fixtures: &[(&str, &str)],
    ) -> Result<DockerContainer<'_>> {
        let out = self.dir.join("out").join(name);
        if out.exists() {
            fs::remove_dir_all(&out)?;
        }
        fs::create_dir_all(&out)?;
        let volume = format!("{}:/out", out.display());
        let mut args: Vec<String> = [
            "run",
            "--network",
            "none",
            "-d",
            "--name",
            name,
            "-v",
            &volume,
            image,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(["/bin/sh".into(), "/start.sh".into()]);
        args.extend(fixtures.iter().map(|(l, p)| format!("{l}={p}")));
        let id = match self.docker(&args) {
            Ok(s) => s.trim().to_string(),
            Err(e) => {
                let _ = self.docker(&["rm", "-f", name]);
                return Err(e);
            }
        };
        let c = DockerContainer {
            d: self,
            name: name.into(),
            id,
            out,
        };
        c.wait_started()?;
        Ok(c)
    }
}

fn which(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Ok(ids) = self.docker(&["ps", "-aq"]) {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                if let Err(e) = self.docker(&args) {
                    eprintln!("warning: {e:#}");
                }
            }
        }
        if self.child.is_running() {
            let _ = self.child.signal(libc::SIGTERM);
            if !matches!(
                self.child.wait_timeout(Duration::from_secs(20)),
                Ok(Some(_))
            ) {
                eprintln!(
                    "warning: dockerd (pid {}) ignored SIGTERM for 20 s: killed",
                    self.child.pid()
                );
                self.child.kill();
            }
        }
        clean_run_dir(&self.dir);
    }
}

/// The mount points at or below `dir`, deepest first (from /proc/self/mountinfo).
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|p| PathBuf::from(crate::unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found.dedup();
    found
}

/// Detaches the mounts left below `dir` and removes it.
pub(crate) fn clean_run_dir(dir: &Path) {
    for m in mounts_below(dir) {
        let Ok(c) = std::ffi::CString::new(m.as_os_str().as_bytes()) else {
            continue;
        };
        // SAFETY: umount2 with a valid C string.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            eprintln!(
                "warning: umount {}: {}",
                m.display(),
                std::io::Error::last_os_error()
            );
        }
    }
    if let Err(e) = fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("warning: removing {}: {e}", dir.display());
        }
    }
}

/// `run-<pid>` folders of test processes that are gone: a dockerd they left (its pidfile, if that
/// process still is a dockerd of that folder) is killed, the folder cleaned.
fn clean_stale_runs(base: &Path) {
    for e in fs::read_dir(base).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("run-")
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = e.path();
        if let Some(daemon) = fs::read_to_string(dir.join("dockerd.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            let cmdline = fs::read(format!("/proc/{daemon}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains("dockerd") && cmdline.contains(&*dir.to_string_lossy()) {
                // SAFETY: kill(2) on the PID of a dockerd this harness started for that folder.
                unsafe { libc::kill(daemon, libc::SIGKILL) };
                thread::sleep(Duration::from_secs(1));
            }
        }
        clean_run_dir(&dir);
    }
}

/// A container of a [`Dockerd`], removed on drop.
#[derive(Debug)]
pub struct DockerContainer<'a> {
    d: &'a Dockerd,
    name: String,
    id: String,
    out: PathBuf,
}

impl DockerContainer<'_> {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The full ID.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn wait_started(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.out.join(".started").exists() {
            ensure!(
                Instant::now() < deadline,
                "container {}: /start.sh did not start its fixtures within 30 s; logs:\n{}",
                self.name,
                self.d.docker(&["logs", &self.name]).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The host PID of its main process (`docker inspect`).
    pub fn pid(&self) -> Result<u32> {
        let s = self
            .d
            .docker(&["inspect", "--format", "{{.State.Pid}}", &self.name])?;
        let pid: u32 = s
            .trim()
            .parse()
            .with_context(|| format!("docker inspect pid {s:?}"))?;
        ensure!(pid != 0, "container {} is not running", self.name);
        Ok(pid)
    }

    /// Its cgroup v2 directory (the `0::` line of its main process).
    pub fn cgroup_path(&self) -> Result<PathBuf> {
        let pid = self.pid()?;
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        let rel = text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or_else(|| anyhow!("/proc/{pid}/cgroup has no cgroup v2 line:\n{text}"))?;
        Ok(cgroup2_mount().join(rel.trim().trim_start_matches('/')))
    }

    /// The fixture `label` once it printed `ready <pid>`.
    pub fn fixture(&self, label: &str, timeout: Duration) -> Result<ContainerFixture> {
        ContainerFixture::open(label, &self.name, &self.out, &self.cgroup_path()?, timeout)
    }

    /// `docker restart -t 0 NAME`: `/start.sh` runs again, its fixtures anew (their output files
    /// are emptied first).
    pub fn restart(&self) -> Result<()> {
        for e in fs::read_dir(&self.out)?.flatten() {
            fs::remove_file(e.path())?;
        }
        self.d.docker(&["restart", "-t", "0", &self.name])?;
        self.wait_started()
    }
}

impl Drop for DockerContainer<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.d.docker(&["rm", "-f", &self.name]) {
            eprintln!("warning: {e:#}");
        }
    }
}
