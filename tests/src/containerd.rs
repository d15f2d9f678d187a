//! A private containerd (Debian's `containerd` 1.6, with runc) for the `--pod` tests, and "pods"
//! made of containers in its `k8s.io` namespace carrying the labels Kubernetes' CRI plugin sets.
//!
//! - [`Containerd::start`]: `containerd --config D/config.toml` with root `D/root`, state
//!   `D/state`, socket `D/containerd.sock` (D = `target/containerd/run-<test pid>`), the CRI
//!   plugin disabled. On drop: every container it ran killed and deleted, SIGTERM to the
//!   containerd this started (its own PID), the cgroups below `/memprof-kube-<test pid>` removed
//!   in every hierarchy, mounts below `D` detached, `D` removed.
//! - [`Containerd::run`]: `ctr -a SOCK -n k8s.io run -d --rootfs --label ... --cgroup
//!   /memprof-kube-<test pid>/kubepods/besteffort/pod<uid>/<id> --mount D/out/<id>:/out ROOTFS ID
//!   CMD...`: the cgroupfs driver's layout of a BestEffort pod, below a folder of the test's own.
//!   The root is the podman fixture image's rootfs ([`crate::container::populate_rootfs`]),
//!   built once per daemon and shared read-write by its containers; `/start.sh` starts the
//!   fixtures as in the podman tests ([`ContainerFixture::open`]).

use std::{
    fs,
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

const CTR_TIMEOUT: Duration = Duration::from_secs(60);

/// The containerd of this test process.
#[derive(Debug)]
pub struct Containerd {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
    rootfs: PathBuf,
    containers: std::cell::RefCell<Vec<String>>,
}

/// A pod's identity, as its labels give it.
#[derive(Debug, Clone)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// A container run by [`Containerd::run`].
#[derive(Debug, Clone)]
pub struct CtrContainer {
    pub id: String,
    pub name: String,
    out: PathBuf,
    /// Its cgroup v2 directory.
    pub cgroup: PathBuf,
}

impl CtrContainer {
    /// The fixture `label` once it printed `ready <pid>`.
    pub fn fixture(&self, label: &str, timeout: Duration) -> Result<ContainerFixture> {
        ContainerFixture::open(label, &self.name, &self.out, &self.cgroup, timeout)
    }
}

/// `/memprof-kube-<test pid>`: the test's own top cgroup for its pods.
pub fn cgroup_top() -> String {
    format!("memprof-kube-{}", std::process::id())
}

impl Containerd {
    pub fn start() -> Result<Containerd> {
        for tool in ["containerd", "ctr", "runc"] {
            ensure!(
                which(tool),
                "{tool} is missing: install containerd and runc (`cargo xtask setup`)"
            );
        }
        let dir = target_dir()
            .join("containerd")
            .join(format!("run-{}", std::process::id()));
        if dir.exists() {
            let _ = fs::remove_dir_all(&dir);
        }
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{1}\"\n[ttrpc]\n  address = \"{1}.ttrpc\"\n",
                dir.display(),
                socket.display()
            ),
        )?;
        let log = fs::File::create(dir.join("containerd.log"))?;
        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        let child = Child::spawn(&mut cmd, None).context("starting containerd")?;
        let rootfs = dir.join("rootfs");
        let mut c = Containerd {
            child,
            dir,
            socket,
            rootfs,
            containers: Default::default(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if c.socket.exists() && c.ctr(&["version"]).is_ok() {
                break;
            }
            if !c.child.is_running() {
                bail!("containerd exited; log:\n{}", c.log());
            }
            ensure!(
                Instant::now() < deadline,
                "containerd did not answer within 60 s; log:\n{}",
                c.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
        fs::create_dir_all(&c.rootfs)?;
        populate_rootfs(&c.rootfs).context("building the rootfs")?;
        Ok(c)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    pub fn log(&self) -> String {
        let text = fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// `ctr -a SOCK -n k8s.io ARGS...`; its stdout.
    pub fn ctr<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Result<String> {
        let mut cmd = Command::new("ctr");
        cmd.arg("-a")
            .arg(&self.socket)
            .args(["-n", "k8s.io"])
            .args(args)
            .stdin(Stdio::null());
        let o = output_with_timeout(&mut cmd, CTR_TIMEOUT)?;
        ensure!(
            o.status.success(),
            "{} failed ({}): {}",
            describe(&cmd),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Runs container `id` of `pod` (`name`: its `io.kubernetes.container.name`, `None` for the
    /// sandbox) with `/start.sh` and `fixtures` (or `sleep` when there are none); waits until the
    /// fixtures are started.
    pub fn run(
        &self,
        pod: &Pod,
        id: &str,
        name: Option<&str>,
        fixtures: &[(&str, &str)],
    ) -> Result<CtrContainer> {
        let out = self.dir.join("out").join(id);
        fs::create_dir_all(&out)?;
        let cgroups_path = format!("/{}/kubepods/besteffort/pod{}/{id}", cgroup_top(), pod.uid);
        let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--rootfs".into()];
        let mut labels = vec![
            ("io.kubernetes.pod.namespace", pod.namespace.as_str()),
            ("io.kubernetes.pod.name", pod.name.as_str()),
            ("io.kubernetes.pod.uid", pod.uid.as_str()),
            (
                "io.cri-containerd.kind",
                if name.is_some() {
                    "container"
                } else {
                    "sandbox"
                },
            ),
        ];
        if let Some(n) = name {
            labels.push(("io.kubernetes.container.name", n));
        }
        for (k, v) in labels {
            args.extend(["--label".into(), format!("{k}={v}")]);
        }
        args.extend([
            "--cgroup".into(),
            cgroups_path.clone(),
            "--mount".into(),
            format!("type=bind,src={},dst=/out,options=rbind:rw", out.display()),
            self.rootfs.display().to_string(),
            id.into(),
        ]);
        if fixtures.is_empty() {
            args.extend(["/bin/sleep".into(), "100000".into()]);
        } else {
            args.extend(["/bin/sh".into(), "/start.sh".into()]);
            args.extend(fixtures.iter().map(|(l, p)| format!("{l}={p}")));
        }
        self.containers.borrow_mut().push(id.to_string());
        self.ctr(&args)?;
        let cgroup = cgroup2_mount().join(cgroups_path.trim_start_matches('/'));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !fixtures.is_empty() && !out.join(".started").exists() {
            ensure!(
                Instant::now() < deadline,
                "container {id}: /start.sh did not start its fixtures within 30 s"
            );
            thread::sleep(Duration::from_millis(20));
        }
        ensure!(
            cgroup.is_dir(),
            "container {id}: no cgroup {}",
            cgroup.display()
        );
        Ok(CtrContainer {
            id: id.into(),
            name: name.unwrap_or("sandbox").into(),
            out,
            cgroup,
        })
    }

    /// The main PID of container `id` (`ctr task ls`).
    pub fn task_pid(&self, id: &str) -> Result<u32> {
        let list = self.ctr(&["task", "ls"])?;
        list.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.first() == Some(&id))
                    .then(|| f.get(1)?.parse().ok())
                    .flatten()
            })
            .next()
            .ok_or_else(|| anyhow!("no task {id} in:\n{list}"))
    }

    fn remove(&self, id: &str) {
        let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ctr(&["task", "rm", "-f", id]).is_ok() {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        if let Err(e) = self.ctr(&["container", "rm", id]) {
            eprintln!("warning: {e:#}");
        }
    }
}

fn which(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in self.containers.borrow().clone() {
            self.remove(&id);
        }
        if self.child.is_running() {
            let _ = self.child.signal(libc::SIGTERM);
            if !matches!(
                self.child.wait_timeout(Duration::from_secs(20)),
                Ok(Some(_))
            ) {
                self.child.kill();
            }
        }
        remove_cgroups(&cgroup_top());
        crate::docker::clean_run_dir(&self.dir);
    }
}

/// Removes cgroup `/top` and everything below it, in every mounted hierarchy (runc creates it in
/// the v1 controllers of a hybrid host too).
fn remove_cgroups(top: &str) {
    fn rmdir_tree(dir: &Path) {
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    rmdir_tree(&e.path());
                }
            }
        }
        if let Err(e) = fs::remove_dir(dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("warning: cannot remove cgroup {}: {e}", dir.display());
            }
        }
    }
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if !matches!(right.split_whitespace().next(), Some("cgroup" | "cgroup2")) {
            continue;
        }
        if let Some(mnt) = left.split_whitespace().nth(4) {
            let dir = Path::new(&crate::unescape_mountinfo(mnt)).join(top);
            if dir.exists() {
                rmdir_tree(&dir);
            }
        }
    }
}
