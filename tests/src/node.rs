//! Node.js for the integration tests: `tests/fixtures/node_sites.js` on the host's `node`
//! ([`crate::node_bin`]) and in a podman container of the Debian 13 root
//! ([`crate::python::Suite::Trixie`], which includes Debian's `nodejs`: its own node, linked to
//! its own `libnode.so.115`, not the host's binary).

use std::{
    fs,
    path::Path,
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use anyhow::{anyhow, ensure, Context, Result};

use crate::{
    container::{container_name, Container, ContainerFixture, Podman},
    fixtures_src_dir,
    python::{image, Suite},
};

/// How long node in a container may take to print `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What a calibration run of `node_sites.js` showed: whether V8's own trace says TurboFan
/// inlined `leakyHandler` into `serveRequests`, and the trace lines that say so.
#[derive(Debug)]
pub struct Inlining {
    pub inlined: bool,
    pub lines: Vec<String>,
}

/// Runs `node --trace-turbo-inlining node_sites.js --calibrate` (no profiler) and reads V8's
/// inlining trace.
pub fn calibrate_inlining(node: &Path) -> Result<Inlining> {
    let script = fixtures_src_dir().join("node_sites.js");
    let out = Command::new(node)
        .arg("--trace-turbo-inlining")
        .arg(&script)
        .arg("--calibrate")
        .output()
        .with_context(|| format!("running {}", node.display()))?;
    ensure!(out.status.success(), "calibration run failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.lines().any(|l| l.starts_with("{\"pid\"")),
        "calibration run printed no ground truth:\n{}",
        text.lines().rev().take(5).collect::<Vec<_>>().join("\n")
    );
    // `Inlining 0x… {0x… <SharedFunctionInfo leakyHandler>} into 0x… {0x… <SharedFunctionInfo serveRequests>}`
    let lines: Vec<String> = text
        .lines()
        .filter(|l| {
            l.starts_with("Inlining ")
                && l.split(" into ").next().is_some_and(|a| a.contains("<SharedFunctionInfo leakyHandler>"))
                && l.split(" into ").nth(1).is_some_and(|b| b.contains("<SharedFunctionInfo serveRequests>"))
        })
        .map(str::to_string)
        .collect();
    Ok(Inlining { inlined: !lines.is_empty(), lines })
}

/// `node_sites.js` in a container of the Debian 13 image, run by the root's own
/// `/usr/bin/node` as the container's main process; removed when dropped.
pub struct NodeContainer {
    pub container: Container,
    pub fixture: ContainerFixture,
}

/// Starts `node_sites.js args...` in a fresh container and waits for its `ready` line.
pub fn start_in_trixie(args: &[&str]) -> Result<NodeContainer> {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let tag = image(Suite::Trixie).tag.clone();
    let name = container_name(&format!("node-{}", SEQ.fetch_add(1, Ordering::Relaxed)));
    let out = Podman::get().out_dir(&name);
    if out.exists() {
        fs::remove_dir_all(&out).with_context(|| format!("emptying {}", out.display()))?;
    }
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let options = [
        format!("--volume={}:/out", out.display()),
        format!("--volume={}:/fixtures:ro", fixtures_src_dir().display()),
    ];
    let mut cmd = vec![
        "/bin/sh",
        "-c",
        "exec \"$@\" >/out/fixture.out 2>/out/fixture.err </dev/null",
        "sh",
        "/usr/bin/node",
        "/fixtures/node_sites.js",
    ];
    cmd.extend_from_slice(args);
    let opt_refs: Vec<&str> = options.iter().map(String::as_str).collect();
    let mut container = Container::run_with(&name, &tag, &opt_refs, &cmd)?;
    container.out_dir = Some(out);
    let fixture = container
        .fixture("fixture", READY_TIMEOUT)
        .map_err(|e| anyhow!("{e:#}\npodman logs {name}:\n{}", container.logs()))?;
    Ok(NodeContainer { container, fixture })
}
