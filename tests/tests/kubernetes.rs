//! Kubernetes `--pod NAMESPACE/NAME [--container NAME]` against a real containerd API: a private
//! containerd 1.6 (see `memprof_tests::containerd`) runs a "pod" in its `k8s.io` namespace — a
//! sandbox and two containers `app` and `worker`, each with the `leaky` fixture, labelled as
//! Kubernetes' CRI plugin labels them, in the cgroupfs driver's `kubepods/besteffort/pod<uid>/<id>`
//! layout. memprof, pointed at the socket by `MEMPROF_CONTAINERD_SOCKET`, must resolve the pod
//! (its pod cgroup) and one container, and measure the fixtures' sites within 1 %; a pod or
//! container that does not exist is one error line and exit code 2. (The systemd driver's layout
//! is covered by the unit tests of `memprof::target::kube`.)
//!
//! Needs root, containerd, runc and the fixture image's tools (`cargo xtask setup`). Run:
//! `cargo test -p memprof-tests --test kubernetes -- --test-threads=1`.

use std::{
    io::Write,
    time::{Duration, Instant},
};

use memprof_tests::{
    container::{secs, ContainerFixture},
    containerd::{cgroup_top, Containerd, Pod},
    *,
};
use serde_json::Value;

const READY_TIMEOUT: Duration = Duration::from_secs(30);

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "[kubernetes] {line}");
    let _ = out.flush();
}

/// A 64-hex container ID (what the CRI plugin uses), distinct per test process and `n` in its
/// first 12 digits (the short ID memprof logs).
fn container_id(n: u32) -> String {
    format!("{n:02x}{:010x}{:052x}", std::process::id(), 0xc0ffee)
}

fn memprof_env(c: &mut std::process::Command, ctd: &Containerd) {
    c.env("MEMPROF_CONTAINERD_SOCKET", ctd.socket())
        .env("MEMPROF_CRIO_SOCKET", "/nonexistent/crio.sock")
        .env_remove("RUST_LOG");
}

/// memprof with `args` (a `--pod` target) until `fx` printed its ground truth.
fn profile(
    ctd: &Containerd,
    fx: &mut ContainerFixture,
    target: &[&str],
    label: &str,
) -> (GroundTruth, Value, String) {
    let dir = output_dir(label);
    let mut args: Vec<String> = target.iter().map(|s| s.to_string()).collect();
    args.extend(["--interval", "1s", "--output"].map(String::from));
    args.push(dir.display().to_string());
    let t = Instant::now();
    let mut mp = Memprof::start_with(&args, |c| memprof_env(c, ctd));
    mp.wait_attached(ATTACH_TIMEOUT);
    say(&format!(
        "{label}: memprof {} attached in {}",
        target.join(" "),
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

fn pod_line(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.starts_with("memprof: pod "))
        .unwrap_or_else(|| panic!("no `memprof: pod` line; stderr:\n{stderr}"))
}

#[test]
fn pod_through_containerd() {
    require_root();
    let started = Instant::now();
    let ctd = Containerd::start().unwrap_or_else(|e| panic!("{e:#}"));
    say(&format!(
        "containerd pid {} at {} up, rootfs built, in {}",
        ctd.pid(),
        ctd.socket().display(),
        secs(started.elapsed())
    ));
    let pod = Pod {
        namespace: "shop".into(),
        name: format!("web-{}", std::process::id()),
        uid: format!("0a1b2c3d-4e5f-4a6b-8c7d-{:012x}", std::process::id()),
    };
    let t = Instant::now();
    let sandbox = ctd
        .run(&pod, &container_id(0), None, &[])
        .unwrap_or_else(|e| panic!("{e:#}\n{}", ctd.log()));
    let app = ctd
        .run(&pod, &container_id(1), Some("app"), &[("leaky", "/leaky")])
        .unwrap_or_else(|e| panic!("{e:#}\n{}", ctd.log()));
    let worker = ctd
        .run(
            &pod,
            &container_id(2),
            Some("worker"),
            &[("leaky", "/leaky")],
        )
        .unwrap_or_else(|e| panic!("{e:#}\n{}", ctd.log()));
    let mut app_fx = app
        .fixture("leaky", READY_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut worker_fx = worker
        .fixture("leaky", READY_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let pod_dir = app.cgroup.parent().unwrap().to_path_buf();
    let pod_rel = format!(
        "/{}",
        pod_dir.strip_prefix(cgroup2_mount()).unwrap().display()
    );
    say(&format!(
        "pod {}/{} (sandbox {}, app pid {}, worker pid {}) in {}, cgroup {pod_rel}",
        pod.namespace,
        pod.name,
        &sandbox.id[..12],
        app_fx.host_pid,
        worker_fx.host_pid,
        secs(t.elapsed())
    ));
    assert_eq!(ctd.task_pid(&sandbox.id).map(|p| p > 0).ok(), Some(true));
    let pod_arg = format!("{}/{}", pod.namespace, pod.name);

    // a) --pod NS/NAME --container app: that container's cgroup only.
    let (truth, summary, stderr) = profile(
        &ctd,
        &mut app_fx,
        &["--pod", &pod_arg, "--container", "app"],
        "kube-container",
    );
    let line = pod_line(&stderr);
    say(&format!("a) {line}"));
    assert!(line.contains("3 running container(s)"), "{line}");
    let app_rel = format!("{pod_rel}/{}", app.id);
    assert!(line.ends_with(&format!("cgroup {app_rel}")), "{line}");
    assert_eq!(
        summary["cgroup"].as_str().map(|s| s.trim_end_matches('/')),
        Some(app_rel.as_str())
    );
    assert_accurate(
        "kubernetes: --pod NS/NAME --container app",
        &truth,
        &summary,
    );
    assert!(
        !stack_pids(&summary).contains(&worker_fx.host_pid),
        "the worker is not in the app's cgroup"
    );

    // b) --pod NS/NAME: the pod's cgroup, the worker measured in it.
    let (truth, summary, stderr) = profile(&ctd, &mut worker_fx, &["--pod", &pod_arg], "kube-pod");
    let line = pod_line(&stderr);
    say(&format!("b) {line}"));
    assert!(line.ends_with(&format!("cgroup {pod_rel}")), "{line}");
    for c in [&sandbox, &app, &worker] {
        assert!(line.contains(&c.id[..12]), "{line} does not list {}", c.id);
    }
    assert_eq!(
        summary["cgroup"].as_str().map(|s| s.trim_end_matches('/')),
        Some(pod_rel.as_str())
    );
    assert_accurate("kubernetes: --pod NS/NAME (worker)", &truth, &summary);

    // c) A pod and a container that do not exist: one line, exit code 2.
    let t = Instant::now();
    let missing = format!("{}/nope-{}", pod.namespace, std::process::id());
    let done = Memprof::start_with(&["--pod", missing.as_str(), "--duration", "1s"], |c| {
        memprof_env(c, &ctd)
    })
    .finish(FINISH_TIMEOUT);
    assert_usage_error(&done, "--pod of a pod that does not exist");
    assert!(
        done.stderr
            .contains(&format!("no pod {missing} on this node")),
        "{}",
        done.stderr
    );
    say(&format!(
        "c) {} ({})",
        done.stderr.trim(),
        secs(t.elapsed())
    ));
    let done = Memprof::start_with(
        &[
            "--pod",
            pod_arg.as_str(),
            "--container",
            "db",
            "--duration",
            "1s",
        ],
        |c| memprof_env(c, &ctd),
    )
    .finish(FINISH_TIMEOUT);
    assert_usage_error(&done, "--container that does not exist");
    assert!(
        done.stderr.contains("no running container named \"db\""),
        "{}",
        done.stderr
    );
    say(&format!("c) {}", done.stderr.trim()));

    drop(ctd);
    let top = cgroup2_mount().join(cgroup_top());
    assert!(!top.exists(), "{} left behind", top.display());
    say(&format!(
        "took {} in all; containerd stopped, containers, cgroups and folders gone",
        secs(started.elapsed())
    ));
}
