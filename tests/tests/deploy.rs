//! `deploy/kubernetes/memprof-daemonset.yaml`: validated against the Kubernetes schemas by
//! `kubernetes-validate --strict` (PyPI; the schemas ship in the package, so this runs offline;
//! `cargo xtask setup` installs it in `target/tools/kubernetes-validate`), with a broken copy
//! that must fail (the validator really validates); then what the agent needs, read from the
//! manifest: hostPID, the capabilities, the host mounts, `--mode rss` by default, Pyroscope from
//! the ConfigMap and credentials from a Secret; its script parses (`sh -n`) and uses only
//! options memprof has.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use memprof_tests::{memprof_bin, target_dir, workspace_root};
use serde_json::Value;

fn manifest() -> PathBuf {
    workspace_root().join("deploy/kubernetes/memprof-daemonset.yaml")
}

fn venv_bin(name: &str) -> PathBuf {
    let bin = target_dir()
        .join("tools/kubernetes-validate/bin")
        .join(name);
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo xtask setup` (it installs kubernetes-validate there)",
        bin.display()
    );
    bin
}

fn validate(path: &Path) -> (bool, String) {
    let o = Command::new(venv_bin("kubernetes-validate"))
        .arg("--strict")
        .arg(path)
        .output()
        .expect("running kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

/// The manifest's documents, as JSON (PyYAML from the validator's environment).
fn documents() -> Vec<Value> {
    let o = Command::new(venv_bin("python"))
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(manifest())
        .output()
        .expect("running python");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("JSON")
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in the manifest"))
}

#[test]
fn daemonset_passes_the_kubernetes_schema() {
    let (ok, out) = validate(&manifest());
    println!("{out}");
    assert!(ok, "kubernetes-validate --strict failed:\n{out}");
    for res in [
        "namespace/memprof",
        "serviceaccount/memprof-agent",
        "clusterrole/memprof-agent",
        "clusterrolebinding/memprof-agent",
        "configmap/memprof-agent",
        "daemonset/memprof-agent",
    ] {
        assert!(
            out.contains(&format!("passed for resource {res}")),
            "{res} not validated:\n{out}"
        );
    }
    // A copy with a misspelt field and a wrong type must fail.
    let text = std::fs::read_to_string(manifest()).unwrap();
    let dir = target_dir().join("test-output/deploy");
    std::fs::create_dir_all(&dir).unwrap();
    for (what, from, to) in [
        ("unknown field", "hostPID: true", "hostPid: true"),
        ("wrong type", "hostPID: true", "hostPID: \"yes\""),
    ] {
        assert!(text.contains(from));
        let broken = dir.join("broken.yaml");
        std::fs::write(&broken, text.replacen(from, to, 1)).unwrap();
        let (ok, out) = validate(&broken);
        assert!(!ok, "a manifest with a {what} passed:\n{out}");
        println!(
            "broken copy ({what}) rejected: {}",
            out.lines().last().unwrap_or("")
        );
    }
}

#[test]
fn daemonset_runs_a_node_agent() {
    let docs = documents();
    let ds = find(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    let c = &pod["containers"][0];
    let caps: Vec<&str> = c["securityContext"]["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for cap in ["BPF", "PERFMON", "SYS_ADMIN"] {
        assert!(caps.contains(&cap), "capability {cap} missing: {caps:?}");
    }
    assert_eq!(c["securityContext"]["runAsUser"], 0);
    let host_path = |volume: &str| -> String {
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == volume)
            .and_then(|v| v["hostPath"]["path"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    let mounts: Vec<(String, String)> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                host_path(m["name"].as_str().unwrap()),
                m["mountPath"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for path in [
        "/sys/fs/cgroup",
        "/sys/kernel/tracing",
        "/sys/kernel/btf",
        "/run/containerd/containerd.sock",
    ] {
        assert!(
            mounts.iter().any(|(h, m)| h == path && m == path),
            "{path} is not mounted from the host at the same path: {mounts:?}"
        );
    }
    // Pyroscope from the ConfigMap, credentials from a Secret, rss by default.
    let cm = find(&docs, "ConfigMap");
    assert_eq!(cm["data"]["MODE"], "rss");
    assert!(cm["data"]["PYROSCOPE_URL"]
        .as_str()
        .unwrap()
        .starts_with("http"));
    assert!(!cm["data"]["POD_SELECTOR"].as_str().unwrap().is_empty());
    assert_eq!(c["envFrom"][0]["configMapRef"]["name"], "memprof-agent");
    for var in ["MEMPROF_PYROSCOPE_BASIC_AUTH", "MEMPROF_PYROSCOPE_TOKEN"] {
        let e = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == var)
            .unwrap_or_else(|| panic!("no {var}"));
        assert_eq!(e["valueFrom"]["secretKeyRef"]["name"], "memprof-pyroscope");
    }
    // The ClusterRole only reads pods.
    let role = find(&docs, "ClusterRole");
    assert_eq!(role["rules"].as_array().unwrap().len(), 1);
    assert_eq!(role["rules"][0]["resources"][0], "pods");

    // The agent script parses, and uses only memprof options that exist.
    let script = cm["data"]["agent.sh"].as_str().unwrap();
    let dir = target_dir().join("test-output/deploy");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("agent.sh");
    std::fs::write(&path, script).unwrap();
    let o = Command::new("sh").arg("-n").arg(&path).output().unwrap();
    assert!(
        o.status.success(),
        "sh -n agent.sh: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let help = Command::new(memprof_bin()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let used: Vec<&str> = script
        .split_whitespace()
        .filter(|w| w.starts_with("--") && !w.contains('='))
        .filter(|w| !matches!(*w, "--all-namespaces" | "--field-selector"))
        .collect();
    assert!(
        used.contains(&"--pod") && used.contains(&"--pyroscope"),
        "{used:?}"
    );
    for opt in used {
        assert!(
            help.contains(&format!("{opt} ")),
            "agent.sh passes {opt}, which memprof does not have"
        );
    }
}
