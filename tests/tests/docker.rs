//! Docker for real: a private dockerd (Debian's `docker.io`, see `memprof_tests::docker`) runs
//! the fixture image (`docker import` of the podman image's rootfs) with `--network none`, and
//! `memprof --cgroup` with `DOCKER_HOST` at its socket resolves the container through the Docker
//! API, by name, by ID prefix, and again after `docker restart` (a new main process); every site
//! of the `leaky` fixture must be measured within 1 %.
//!
//! Needs root, docker.io (dockerd, containerd, runc) and the fixture image's tools (`cargo xtask
//! setup`). Run: `cargo test -p memprof-tests --test docker -- --test-threads=1`.

use std::{
    io::Write,
    path::Path,
    time::{Duration, Instant},
};

use memprof_tests::{
    container::{secs, ContainerFixture},
    docker::{DockerContainer, Dockerd},
    *,
};
use serde_json::Value;

const IMAGE: &str = "memprof-leaky-docker:latest";
const READY_TIMEOUT: Duration = Duration::from_secs(30);

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "[docker] {line}");
    let _ = out.flush();
}

/// memprof `--cgroup SPEC` with `DOCKER_HOST` at the daemon, until the fixture printed its
/// ground truth; returns the truth, the summary and memprof's stderr.
fn profile(
    d: &Dockerd,
    fx: &mut ContainerFixture,
    spec: &str,
    label: &str,
) -> (GroundTruth, Value, String) {
    let dir = output_dir(label);
    let args = [
        "--cgroup",
        spec,
        "--interval",
        "1s",
        "--output",
        &dir.display().to_string(),
    ]
    .map(String::from);
    let host = d.docker_host();
    let t = Instant::now();
    let mut mp = Memprof::start_with(&args, |c| {
        c.env("DOCKER_HOST", &host);
    });
    mp.wait_attached(ATTACH_TIMEOUT);
    say(&format!(
        "{label}: memprof --cgroup {spec} attached in {}",
        secs(t.elapsed())
    ));
    fx.go().unwrap_or_else(|e| panic!("{e:#}"));
    let truth = fx
        .wait_truth(TRUTH_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    sleep(Duration::from_secs(2));
    assert!(
        mp.is_running(),
        "memprof ended early; stderr:\n{}",
        mp.stderr()
    );
    mp.interrupt();
    let done = mp.finish_ok(FINISH_TIMEOUT);
    let _ = std::fs::write(dir.join("memprof-stderr.log"), &done.stderr);
    (truth, read_summary(&dir), done.stderr)
}

/// The container line memprof logs, and the cgroup it reports, must name this container.
fn check_resolution(ct: &DockerContainer, stderr: &str, summary: &Value) {
    let line = stderr
        .lines()
        .find(|l| l.contains(&format!("container {} (", ct.name())))
        .unwrap_or_else(|| {
            panic!(
                "memprof did not resolve container {}; stderr:\n{stderr}",
                ct.name()
            )
        });
    say(&format!("  {line}"));
    assert!(line.contains(&ct.id()[..12]), "{line}");
    let cg = ct.cgroup_path().unwrap();
    let rel = cg
        .strip_prefix(cgroup2_mount())
        .unwrap()
        .display()
        .to_string();
    let reported = summary["cgroup"].as_str().unwrap_or("");
    assert!(
        reported.trim_end_matches('/').ends_with(&rel),
        "summary.cgroup is {reported:?}, expected the container's cgroup {rel}"
    );
}

#[test]
fn docker_container_by_name_id_prefix_and_after_restart() {
    require_root();
    let started = Instant::now();
    let d = Dockerd::start().unwrap_or_else(|e| panic!("{e:#}"));
    say(&format!(
        "dockerd pid {} at {} up in {}",
        d.pid(),
        d.docker_host(),
        secs(started.elapsed())
    ));
    let t = Instant::now();
    d.import_fixture_image(IMAGE)
        .unwrap_or_else(|e| panic!("{e:#}"));
    say(&format!(
        "image {IMAGE} built and imported in {}",
        secs(t.elapsed())
    ));

    // a) by name
    let name = format!("memprof-docker-{}", std::process::id());
    let ct = d
        .run_fixtures(&name, IMAGE, &[("leaky", "/leaky")])
        .unwrap_or_else(|e| panic!("{e:#}\n{}", d.log()));
    let mut fx = ct
        .fixture("leaky", READY_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    say(&format!(
        "a) container {name} ({}), fixture host pid {}",
        &ct.id()[..12],
        fx.host_pid
    ));
    let (truth, summary, stderr) = profile(&d, &mut fx, &name, "docker-by-name");
    check_resolution(&ct, &stderr, &summary);
    assert_accurate("docker: --cgroup NAME", &truth, &summary);

    // b) by ID prefix (10 hex digits), a second container beside the first
    let name2 = format!("memprof-docker2-{}", std::process::id());
    let ct2 = d
        .run_fixtures(&name2, IMAGE, &[("leaky", "/leaky")])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut fx2 = ct2
        .fixture("leaky", READY_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let prefix = ct2.id()[..10].to_string();
    say(&format!(
        "b) container {name2}, by ID prefix {prefix}, fixture host pid {}",
        fx2.host_pid
    ));
    let (truth, summary, stderr) = profile(&d, &mut fx2, &prefix, "docker-by-id-prefix");
    check_resolution(&ct2, &stderr, &summary);
    assert_accurate("docker: --cgroup ID-PREFIX", &truth, &summary);
    // The other container's fixture (still holding its leaks) is not in this profile.
    assert!(
        !stack_pids(&summary).contains(&fx.host_pid),
        "the profile of {name2} lists pid {} of {name}",
        fx.host_pid
    );

    // c) after `docker restart`: a new main process and fixture, the same name
    let old_pid = ct2.pid().unwrap();
    ct2.restart().unwrap_or_else(|e| panic!("{e:#}"));
    let mut fx3 = ct2
        .fixture("leaky", READY_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let new_pid = ct2.pid().unwrap();
    assert_ne!(old_pid, new_pid, "docker restart kept the main process");
    say(&format!(
        "c) {name2} restarted: main pid {old_pid} -> {new_pid}, fixture host pid {}",
        fx3.host_pid
    ));
    let (truth, summary, stderr) = profile(&d, &mut fx3, &name2, "docker-after-restart");
    check_resolution(&ct2, &stderr, &summary);
    assert!(
        stderr.contains(&format!("main pid {new_pid}")),
        "memprof did not resolve the new main pid {new_pid}:\n{stderr}"
    );
    assert_accurate(
        "docker: --cgroup NAME after docker restart",
        &truth,
        &summary,
    );

    drop(ct2);
    drop(ct);
    let dir = target_dir()
        .join("docker")
        .join(format!("run-{}", std::process::id()));
    drop(d);
    assert!(!Path::new(&dir).exists(), "{} left behind", dir.display());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !info.contains(&*dir.to_string_lossy()),
        "mounts left below {}",
        dir.display()
    );
    say(&format!(
        "took {} in all; dockerd stopped, its folder and mounts gone",
        secs(started.elapsed())
    ));
}
