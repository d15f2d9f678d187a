//! `cargo xtask demo`: a Python API service leaking like memprof's seed report, in a podman
//! container, profiled with the command a user runs: `memprof --cgroup <container name>`.
//!
//! - The container's root is Debian 13 (CPython 3.13, an optimised distribution build), made by
//!   `debootstrap` once into `target/demo/root` (about 2 minutes), with `demo/*.py` in `/app`,
//!   imported as `localhost/memprof-demo-api`. Its memory limit is 256 MiB.
//! - podman runs with its own configuration and storage under `target/demo/podman` (runc,
//!   cgroupfs, no network: the load generator runs inside the container, on its loopback), and
//!   its Docker-compatible API on `target/demo/podman/api.sock` so that memprof resolves the
//!   container by name (`DOCKER_HOST`).
//! - `demo/api_service.py` serves; once memprof has attached, `demo/load.py` sends requests
//!   from inside the container for the rest of the run; memprof runs 40 s and writes
//!   `target/demo/`. The verdict names the leaking Python function.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};

use crate::{describe, is_root, run, target_dir, workspace_root};

const IMAGE: &str = "localhost/memprof-demo-api:latest";
const RUN_S: u64 = 40;

/// A child killed (by its own PID) and reaped on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// The demo's podman: its own configuration and storage.
struct Podman {
    dir: PathBuf,
}

impl Podman {
    fn new() -> Result<Podman> {
        let dir = target_dir().join("demo/podman");
        fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
        let d = dir.display();
        fs::write(
            dir.join("containers.conf"),
            format!(
                "# Written by cargo xtask demo.\n[containers]\nnetns = \"none\"\n\
                 default_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n[engine]\nruntime = \"runc\"\n\
                 cgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 events_logfile_path = \"{d}/events.log\"\ntmp_dir = \"{d}/tmp\"\n"
            ),
        )?;
        fs::write(
            dir.join("storage.conf"),
            format!("# Written by cargo xtask demo.\n[storage]\ndriver = \"overlay\"\ngraphroot = \"{d}/root\"\nrunroot = \"{d}/run\"\n"),
        )?;
        Ok(Podman { dir })
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        let mut cmd = self.command();
        cmd.args(args);
        let out = cmd.output().with_context(|| format!("failed to run {}", describe(&cmd)))?;
        ensure!(
            out.status.success(),
            "`{}` failed: {}",
            describe(&cmd),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// `target/demo/root`: Debian 13 with python3, built once.
fn root() -> Result<PathBuf> {
    let root = target_dir().join("demo/root");
    let done = target_dir().join("demo/root.complete");
    if done.exists() && root.join("usr/bin/python3").exists() {
        return Ok(root);
    }
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("failed to remove {}", root.display()))?;
    }
    eprintln!("xtask: building the demo container's root (Debian 13 with python3; once, ~2 minutes)");
    run(Command::new("debootstrap")
        .args(["--variant=minbase", "--include=python3", "trixie"])
        .arg(&root)
        .arg("http://deb.debian.org/debian")
        .stdout(Stdio::null()))
    .context("failed to build the demo root (debootstrap needs Debian's archive)")?;
    fs::write(&done, "debootstrap --variant=minbase --include=python3 trixie\n")?;
    Ok(root)
}

/// Copies the service into the root and imports it as [`IMAGE`].
fn image(podman: &Podman, root: &Path) -> Result<()> {
    let app = root.join("app");
    fs::create_dir_all(&app)?;
    for f in ["api_service.py", "load.py"] {
        fs::copy(workspace_root().join("demo").join(f), app.join(f))
            .with_context(|| format!("failed to copy demo/{f}"))?;
    }
    let tar = target_dir().join("demo/root.tar");
    run(Command::new("tar").arg("-C").arg(root).args(["--numeric-owner", "-cf"]).arg(&tar).arg("."))?;
    podman.run(&["import", "--quiet", &tar.display().to_string(), IMAGE])?;
    let _ = fs::remove_file(&tar);
    Ok(())
}

/// `podman system service` on a socket of the demo's own, stopped on drop.
fn engine(podman: &Podman) -> Result<(Guard, PathBuf)> {
    let socket = podman.dir.join("api.sock");
    let _ = fs::remove_file(&socket);
    let log = fs::File::create(podman.dir.join("api.log"))?;
    let mut cmd = podman.command();
    cmd.args(["system", "service", "--time=0"])
        .arg(format!("unix://{}", socket.display()))
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log));
    let guard = Guard(cmd.spawn().context("failed to start podman system service")?);
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(&socket).is_err() {
        ensure!(Instant::now() < deadline, "podman system service did not open {}", socket.display());
        thread::sleep(Duration::from_millis(100));
    }
    Ok((guard, socket))
}

pub fn demo() -> Result<()> {
    ensure!(is_root(), "cargo xtask demo needs root (BPF, containers): run it as root");
    let memprof = target_dir().join("release/memprof");
    let podman = Podman::new()?;
    let root = root()?;
    image(&podman, &root)?;
    // Containers of an earlier, interrupted demo (this storage is the demo's own).
    let _ = podman.run(&["rm", "--all", "--force", "--time", "0"]);
    let (_engine, socket) = engine(&podman)?;
    let name = format!("memprof-demo-api-service-{}", std::process::id());
    podman.run(&[
        "run", "-d", "--name", &name, "--memory", "256m", IMAGE, "python3", "/app/api_service.py",
    ])?;
    let _container = scopeguard(|| {
        let _ = podman.run(&["rm", "-f", "-t", "0", &name]);
    });
    eprintln!("xtask: container {name} runs demo/api_service.py (Python 3.13, 256 MiB limit)");

    let out = target_dir().join("demo/report");
    if out.exists() {
        fs::remove_dir_all(&out).with_context(|| format!("failed to remove {}", out.display()))?;
    }
    let mut cmd = Command::new(&memprof);
    cmd.args(["--cgroup", &name, "--duration", &format!("{RUN_S}s"), "--interval", "2s", "--output"])
        .arg(&out)
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    eprintln!("+ DOCKER_HOST=unix://{} {}", socket.display(), describe(&cmd));
    let mut mp = Guard(cmd.spawn().with_context(|| format!("failed to start {}", memprof.display()))?);
    let stderr = mp.0.stderr.take().unwrap();
    let (attached_tx, attached) = mpsc::channel::<()>();
    let echo = thread::spawn(move || {
        let mut err = std::io::stderr();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = writeln!(err, "{line}");
            if line.starts_with("memprof: attached") {
                let _ = attached_tx.send(());
            }
        }
    });
    attached.recv_timeout(Duration::from_secs(120)).context("memprof did not attach")?;
    // Until after memprof stops (the container is removed then): the load must not end inside
    // the window, or its exit would show in the cgroup's trend.
    let load_s = (RUN_S + 30).to_string();
    podman.run(&["exec", "-d", &name, "python3", "/app/load.py", &load_s, "4"])?;
    eprintln!("xtask: demo/load.py sends requests from inside the container until the end");
    let status = mp.0.wait()?;
    let _ = echo.join();
    ensure!(status.success(), "memprof failed ({status})");
    let report = out.join("report.html");
    if !report.is_file() {
        bail!("{} was not written", report.display());
    }
    let html = fs::read_to_string(&report)?;
    let headline = html
        .split("<h2 id=\"headline\">")
        .nth(1)
        .and_then(|s| s.split("</h2>").next())
        .unwrap_or("?");
    println!();
    println!("verdict: {}", headline.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"));
    println!("report (open in a browser): {}", report.display());
    println!("flame graph: {}", out.join("leaks.svg").display());
    println!("all results: {}", out.display());
    Ok(())
}

/// Runs `f` on drop.
fn scopeguard<F: FnMut()>(f: F) -> impl Drop {
    struct D<F: FnMut()>(F);
    impl<F: FnMut()> Drop for D<F> {
        fn drop(&mut self) {
            (self.0)()
        }
    }
    D(f)
}
