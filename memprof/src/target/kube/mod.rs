//! `--pod NAMESPACE/NAME [--container NAME]`: a Kubernetes pod on this node, found through its
//! container runtime, profiled as the pod's cgroup (or one container's).
//!
//! - containerd (`/run/containerd/containerd.sock`, or `MEMPROF_CONTAINERD_SOCKET`): the
//!   containers of namespace `k8s.io` labelled `io.kubernetes.pod.namespace` and
//!   `io.kubernetes.pod.name` (the CRI plugin sets them, on the pod's sandbox too), their task
//!   (running or not, main PID) and the `linux.cgroupsPath` of their OCI spec.
//! - CRI-O (`/run/crio/crio.sock`, or `MEMPROF_CRIO_SOCKET`), best effort: the CRI's
//!   `ListContainers` with those labels as the selector, running containers only; the cgroup is
//!   found by the container ID (`crio-<id>[.scope]`).
//!
//! A spec's `cgroupsPath` is a cgroupfs path (`/kubepods/burstable/pod<uid>/<id>`) or, with the
//! systemd cgroup driver, `slice:prefix:name` (`kubepods-burstable-pod<uid_>.slice:
//! cri-containerd:<id>` is `kubepods.slice/kubepods-burstable.slice/
//! kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope`). Where that directory does not
//! exist, the cgroup of the task's main process is taken.
//!
//! The target: with `--container`, that running container's cgroup; without, the pod's cgroup
//! (`pod<uid>`, `kubepods-…-pod<uid_>.slice`) above its running containers, else the deepest
//! cgroup they share.

pub mod grpc;
pub mod proto;

use std::{
    collections::BTreeSet,
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use log::info;

use super::{
    cgroup::{self, CgroupTarget},
    engine::{self, Runtime},
    TargetError,
};

pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
pub const CRIO_SOCKET: &str = "/run/crio/crio.sock";
/// Overrides [`CONTAINERD_SOCKET`].
pub const CONTAINERD_SOCKET_ENV: &str = "MEMPROF_CONTAINERD_SOCKET";
/// Overrides [`CRIO_SOCKET`].
pub const CRIO_SOCKET_ENV: &str = "MEMPROF_CRIO_SOCKET";
/// The containerd namespace of Kubernetes' containers.
pub const K8S_NAMESPACE: &str = "k8s.io";
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// containerd's CRI plugin: `sandbox` or `container`.
pub const LABEL_KIND: &str = "io.cri-containerd.kind";
/// Timeout of one call to a runtime.
const TIMEOUT: Duration = Duration::from_secs(5);

/// `NAMESPACE/NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Parses `--pod`: `NAMESPACE/NAME`, both Kubernetes object names (lowercase letters, digits,
/// '-' and '.', starting and ending with a letter or digit).
pub fn parse_pod(s: &str) -> Result<PodRef, String> {
    let (namespace, name) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not NAMESPACE/NAME (e.g. default/web-7d4b9c)"))?;
    for part in [namespace, name] {
        if !is_object_name(part) {
            return Err(format!(
                "{part:?} is not a Kubernetes name (in {s:?}: give NAMESPACE/NAME)"
            ));
        }
    }
    Ok(PodRef {
        namespace: namespace.into(),
        name: name.into(),
    })
}

fn is_object_name(s: &str) -> bool {
    let edge = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= 253
        && s.starts_with(edge)
        && s.ends_with(edge)
        && s.chars().all(|c| edge(c) || c == '-' || c == '.')
}

/// One container of the pod, as its runtime describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodContainer {
    pub id: String,
    /// `io.kubernetes.container.name`; `None` for the pod's sandbox.
    pub name: Option<String>,
    pub running: bool,
    /// Main PID (containerd), when running.
    pub pid: Option<u32>,
    /// Its cgroup directory, when running and found.
    pub cgroup: Option<PathBuf>,
}

impl PodContainer {
    fn describe(&self) -> String {
        let name = self.name.as_deref().unwrap_or("(sandbox)");
        match self.pid {
            Some(pid) => format!("{name} {} pid {pid}", short(&self.id)),
            None => format!("{name} {}", short(&self.id)),
        }
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// The pod found, and what to profile.
#[derive(Clone, Debug)]
pub struct PodTarget {
    pub pod: PodRef,
    /// `containerd at /run/...` or `CRI-O at /run/...`.
    pub runtime: String,
    /// Every container of the pod the runtime knows (running or not).
    pub containers: Vec<PodContainer>,
    pub cgroup: CgroupTarget,
}

/// Why `--pod` cannot be resolved (all bad input).
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("no pod {pod} on this node: {searched}")]
    NoPod { pod: PodRef, searched: String },
    #[error("cannot ask a container runtime for pod {pod}: {tried} (set {CONTAINERD_SOCKET_ENV} or {CRIO_SOCKET_ENV} to the runtime's socket)")]
    NoRuntime { pod: PodRef, tried: String },
    #[error("pod {pod} has no running container named {container:?} (its containers: {names})")]
    NoContainer {
        pod: PodRef,
        container: String,
        names: String,
    },
    #[error("pod {pod} has no running container ({runtime}: {names})")]
    NotRunning {
        pod: PodRef,
        runtime: String,
        names: String,
    },
    #[error("{0}")]
    Other(String),
    #[error(transparent)]
    Target(#[from] TargetError),
}

/// What one runtime said.
enum Answer {
    /// The socket is not there (or refuses connections): no such runtime on this node.
    Absent(String),
    /// It answered; the pod's containers (empty: it does not know the pod).
    Found(Vec<PodContainer>),
}

/// Finds pod `pod` through containerd, then CRI-O, and chooses the cgroup to profile (see the
/// module docs). Logs what it found.
pub fn resolve_pod(pod: &PodRef, container: Option<&str>, mount: &Path) -> Result<PodTarget, KubeError> {
    let containerd = socket_from_env(CONTAINERD_SOCKET_ENV, CONTAINERD_SOCKET);
    let crio = socket_from_env(CRIO_SOCKET_ENV, CRIO_SOCKET);
    let mut absent = Vec::new();
    let mut searched = Vec::new();
    let runtimes: [(String, &dyn Fn() -> Result<Answer, KubeError>); 2] = [
        (
            format!("containerd at {} (namespace {K8S_NAMESPACE})", containerd.display()),
            &|| containerd_pod(&containerd, pod, mount),
        ),
        (format!("CRI-O at {}", crio.display()), &|| crio_pod(&crio, pod, mount)),
    ];
    for (runtime, ask) in runtimes {
        match ask()? {
            Answer::Absent(why) => absent.push(format!("{runtime}: {why}")),
            Answer::Found(found) if found.is_empty() => searched.push(runtime),
            Answer::Found(containers) => {
                let cgroup = choose_cgroup(pod, container, &containers, &runtime, mount)?;
                let running: Vec<String> = containers
                    .iter()
                    .filter(|c| c.running)
                    .map(PodContainer::describe)
                    .collect();
                info!(
                    "pod {pod} via {runtime}: {} running container(s) [{}], cgroup {}",
                    running.len(),
                    running.join(", "),
                    cgroup.rel
                );
                return Ok(PodTarget {
                    pod: pod.clone(),
                    runtime,
                    containers,
                    cgroup,
                });
            }
        }
    }
    if searched.is_empty() {
        return Err(KubeError::NoRuntime {
            pod: pod.clone(),
            tried: absent.join("; "),
        });
    }
    Err(KubeError::NoPod {
        pod: pod.clone(),
        searched: format!(
            "no container labelled {LABEL_POD_NAMESPACE}={}, {LABEL_POD_NAME}={} in {}",
            pod.namespace,
            pod.name,
            searched.join(" or ")
        ),
    })
}

fn socket_from_env(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

/// A failed call: an absent runtime, or an error to report.
fn call_failed(runtime: &str, e: grpc::GrpcError) -> Result<Answer, KubeError> {
    use std::io::ErrorKind;
    match e {
        grpc::GrpcError::Io(io) if matches!(io.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            Ok(Answer::Absent(io.to_string()))
        }
        grpc::GrpcError::Status {
            code: grpc::UNIMPLEMENTED,
            message,
        } => Ok(Answer::Absent(format!(
            "does not serve the API memprof asks ({message})"
        ))),
        e => Err(KubeError::Other(format!("{runtime}: {e}"))),
    }
}

fn containerd_pod(socket: &Path, pod: &PodRef, mount: &Path) -> Result<Answer, KubeError> {
    let runtime = format!("containerd at {}", socket.display());
    let md = [("containerd-namespace", K8S_NAMESPACE)];
    let request = proto::ListContainersRequest {
        filters: vec![format!(
            "labels.\"{LABEL_POD_NAMESPACE}\"=={:?},labels.\"{LABEL_POD_NAME}\"=={:?}",
            pod.namespace, pod.name
        )],
    };
    let list: proto::ListContainersResponse = match grpc::unary(
        socket,
        "/containerd.services.containers.v1.Containers/List",
        &md,
        &request,
        TIMEOUT,
    ) {
        Ok(l) => l,
        Err(e) => return call_failed(&runtime, e),
    };
    let mut found = Vec::new();
    for c in list.containers {
        if !labels_match(&c.labels, pod) {
            continue;
        }
        let get = proto::GetTaskRequest {
            container_id: c.id.clone(),
            exec_id: String::new(),
        };
        let task: Option<proto::Process> = match grpc::unary::<_, proto::GetTaskResponse>(
            socket,
            "/containerd.services.tasks.v1.Tasks/Get",
            &md,
            &get,
            TIMEOUT,
        ) {
            Ok(r) => r.process,
            Err(grpc::GrpcError::Status {
                code: grpc::NOT_FOUND, ..
            }) => None,
            Err(e) => {
                return Err(KubeError::Other(format!(
                    "{runtime}: task of container {}: {e}",
                    short(&c.id)
                )))
            }
        };
        let running = task
            .as_ref()
            .is_some_and(|t| t.status == proto::TASK_RUNNING && t.pid != 0);
        let pid = task.filter(|_| running).map(|t| t.pid);
        let spec_path = c.spec.as_ref().and_then(|s| spec_cgroups_path(&s.value));
        let cgroup = if running {
            container_cgroup_dir(spec_path.as_deref(), pid, mount)
        } else {
            None
        };
        let sandbox = c.labels.get(LABEL_KIND).is_some_and(|k| k == "sandbox");
        found.push(PodContainer {
            name: if sandbox {
                None
            } else {
                c.labels.get(LABEL_CONTAINER_NAME).cloned()
            },
            id: c.id,
            running,
            pid,
            cgroup,
        });
    }
    found.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    Ok(Answer::Found(found))
}

fn crio_pod(socket: &Path, pod: &PodRef, mount: &Path) -> Result<Answer, KubeError> {
    let runtime = format!("CRI-O at {}", socket.display());
    let request = proto::CriListContainersRequest {
        filter: Some(proto::CriContainerFilter {
            state: None,
            label_selector: [
                (LABEL_POD_NAMESPACE.to_string(), pod.namespace.clone()),
                (LABEL_POD_NAME.to_string(), pod.name.clone()),
            ]
            .into_iter()
            .collect(),
        }),
    };
    let list: proto::CriListContainersResponse = match grpc::unary(
        socket,
        "/runtime.v1.RuntimeService/ListContainers",
        &[],
        &request,
        TIMEOUT,
    ) {
        Ok(l) => l,
        Err(e) => return call_failed(&runtime, e),
    };
    let mut found: Vec<PodContainer> = list
        .containers
        .into_iter()
        .filter(|c| labels_match(&c.labels, pod))
        .map(|c| {
            let running = c.state == proto::CRI_RUNNING;
            let cgroup = match engine::find_runtime_cgroups(&c.id, mount).as_slice() {
                [one] if running => Some(one.clone()),
                _ => None,
            };
            PodContainer {
                name: c
                    .metadata
                    .map(|m| m.name)
                    .or_else(|| c.labels.get(LABEL_CONTAINER_NAME).cloned()),
                id: c.id,
                running,
                pid: None,
                cgroup,
            }
        })
        .collect();
    found.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    Ok(Answer::Found(found))
}

fn labels_match(labels: &std::collections::HashMap<String, String>, pod: &PodRef) -> bool {
    labels.get(LABEL_POD_NAMESPACE) == Some(&pod.namespace) && labels.get(LABEL_POD_NAME) == Some(&pod.name)
}

/// `linux.cgroupsPath` of an OCI runtime spec (JSON).
pub fn spec_cgroups_path(spec_json: &[u8]) -> Option<String> {
    let spec: serde_json::Value = serde_json::from_slice(spec_json).ok()?;
    spec.get("linux")?.get("cgroupsPath")?.as_str().map(str::to_string)
}

/// The cgroup directory of a running container: its spec's `cgroupsPath` where that directory
/// exists below `mount`, else the cgroup of its main process.
pub fn container_cgroup_dir(cgroups_path: Option<&str>, pid: Option<u32>, mount: &Path) -> Option<PathBuf> {
    if let Some(rel) = cgroups_path.and_then(cgroups_path_dir) {
        let dir = mount.join(rel);
        if dir.is_dir() {
            return Some(dir);
        }
    }
    pid.and_then(|p| cgroup::cgroup_of_pid(p, mount).ok()).map(|c| c.path)
}

/// The directory, relative to the cgroup v2 mount, that a runtime makes of an OCI
/// `cgroupsPath`: a cgroupfs path as it is (`/kubepods/burstable/pod<uid>/<id>`), or systemd's
/// `slice:prefix:name` as the slice's nested directories and the unit (`prefix-name.scope`, or
/// `name` when it is a slice itself), as runc's systemd driver does. `None` when it is neither.
pub fn cgroups_path_dir(cgroups_path: &str) -> Option<PathBuf> {
    let parts: Vec<&str> = cgroups_path.split(':').collect();
    match parts.as_slice() {
        [path] if !path.is_empty() => Some(PathBuf::from(path.trim_start_matches('/'))),
        [slice, prefix, name] if !name.is_empty() => {
            if name.ends_with(".slice") {
                return expand_slice(name);
            }
            let parent = if slice.is_empty() { "system.slice" } else { slice };
            let mut dir = expand_slice(parent)?;
            dir.push(format!("{prefix}-{name}.scope"));
            Some(dir)
        }
        _ => None,
    }
}

/// systemd's directory of a slice: `a-b-c.slice` is `a.slice/a-b.slice/a-b-c.slice`; the root
/// slice `-.slice` is the top.
pub fn expand_slice(slice: &str) -> Option<PathBuf> {
    if slice == "-.slice" {
        return Some(PathBuf::new());
    }
    let stem = slice.strip_suffix(".slice")?;
    if stem.is_empty() || stem.contains('/') || stem.starts_with('-') || stem.ends_with('-') || stem.contains("--") {
        return None;
    }
    let mut dir = PathBuf::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        dir.push(format!("{prefix}.slice"));
    }
    Some(dir)
}

/// The nearest ancestor of `dir` (itself included, `mount` excluded) named after a Kubernetes
/// pod UID (`pod<uid>` below `kubepods[/<qos>]`, `kubepods[-<qos>]-pod<uid_>.slice`).
pub fn pod_cgroup_dir(dir: &Path, mount: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .take_while(|p| p.starts_with(mount) && *p != mount)
        .find(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let parent = p.parent().and_then(|q| q.file_name()).and_then(|n| n.to_str());
            matches!(engine::runtime_id_of(name, parent), Some((Runtime::KubePod, _)))
        })
        .map(Path::to_path_buf)
}

/// The cgroup to profile among the pod's containers (see the module docs).
fn choose_cgroup(
    pod: &PodRef,
    container: Option<&str>,
    containers: &[PodContainer],
    runtime: &str,
    mount: &Path,
) -> Result<CgroupTarget, KubeError> {
    let names = || {
        let all: BTreeSet<String> = containers
            .iter()
            .map(|c| match (&c.name, c.running) {
                (Some(n), true) => n.clone(),
                (Some(n), false) => format!("{n} (not running)"),
                (None, true) => "(sandbox)".into(),
                (None, false) => "(sandbox, not running)".into(),
            })
            .collect();
        all.into_iter().collect::<Vec<_>>().join(", ")
    };
    let running: Vec<&PodContainer> = containers.iter().filter(|c| c.running && c.cgroup.is_some()).collect();
    let dir = match container {
        Some(want) => {
            let matching: Vec<&&PodContainer> = running.iter().filter(|c| c.name.as_deref() == Some(want)).collect();
            match matching.as_slice() {
                [one] => one.cgroup.clone().unwrap(),
                [] => {
                    return Err(KubeError::NoContainer {
                        pod: pod.clone(),
                        container: want.into(),
                        names: names(),
                    })
                }
                many => {
                    return Err(KubeError::Other(format!(
                        "pod {pod} has {} running containers named {want:?}: {}",
                        many.len(),
                        many.iter().map(|c| short(&c.id)).collect::<Vec<_>>().join(", ")
                    )))
                }
            }
        }
        None => {
            let dirs: Vec<&Path> = running.iter().filter_map(|c| c.cgroup.as_deref()).collect();
            let Some(common) = common_ancestor(&dirs) else {
                return Err(KubeError::NotRunning {
                    pod: pod.clone(),
                    runtime: runtime.into(),
                    names: names(),
                });
            };
            let dir = pod_cgroup_dir(&common, mount).unwrap_or(common);
            if !dir.starts_with(mount) || dir == mount {
                return Err(KubeError::Other(format!(
                    "the running containers of pod {pod} share no cgroup below {} (give --container NAME)",
                    mount.display()
                )));
            }
            dir
        }
    };
    Ok(cgroup::resolve_cgroup(&dir.to_string_lossy(), mount)?)
}

/// The deepest directory that contains every one of `dirs`.
fn common_ancestor(dirs: &[&Path]) -> Option<PathBuf> {
    let (first, rest) = dirs.split_first()?;
    let mut common = first.to_path_buf();
    while !rest.iter().all(|d| d.starts_with(&common)) {
        if !common.pop() {
            return None;
        }
    }
    Some(common)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const ID1: &str = "3f2a9c1b7d4e5f60718293a4b5c6d7e8f9011223344556677889900aabbccdd";
    const ID2: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccddeeff00";
    const SANDBOX: &str = "0000111122223333444455556666777788889999aaaabbbbccccddddeeeeffff";
    const UID: &str = "d2c4e6f8-1a2b-4c3d-8e9f-0123456789ab";

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!("memprof-kube-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(fs::canonicalize(&dir).unwrap())
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn pod() -> PodRef {
        parse_pod("shop/web-7d4b9c").unwrap()
    }

    fn running(id: &str, name: Option<&str>, dir: &Path) -> PodContainer {
        PodContainer {
            id: id.into(),
            name: name.map(String::from),
            running: true,
            pid: Some(1),
            cgroup: Some(dir.to_path_buf()),
        }
    }

    #[test]
    fn pod_names() {
        assert_eq!(
            parse_pod("kube-system/coredns-5d78c9869d-abcde").unwrap(),
            PodRef {
                namespace: "kube-system".into(),
                name: "coredns-5d78c9869d-abcde".into()
            }
        );
        assert_eq!(pod().to_string(), "shop/web-7d4b9c");
        for bad in [
            "web",
            "/web",
            "shop/",
            "shop/Web",
            "shop/web/x",
            "-a/b",
            "a/b-",
            "a b/c",
            "",
        ] {
            assert!(parse_pod(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cgroups_paths() {
        let p = |s: &str| cgroups_path_dir(s).map(|p| p.display().to_string());
        // cgroupfs driver
        assert_eq!(
            p(&format!("/kubepods/burstable/pod{UID}/{ID1}")).unwrap(),
            format!("kubepods/burstable/pod{UID}/{ID1}")
        );
        assert_eq!(
            p(&format!("/kubepods/pod{UID}/{ID1}")).unwrap(),
            format!("kubepods/pod{UID}/{ID1}")
        );
        // systemd driver
        let uid_ = UID.replace('-', "_");
        assert_eq!(
            p(&format!("kubepods-burstable-pod{uid_}.slice:cri-containerd:{ID1}")).unwrap(),
            format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID1}.scope"
            )
        );
        assert_eq!(
            p(&format!("kubepods-pod{uid_}.slice:crio:{ID1}")).unwrap(),
            format!("kubepods.slice/kubepods-pod{uid_}.slice/crio-{ID1}.scope")
        );
        assert_eq!(p("system.slice:docker:abc").unwrap(), "system.slice/docker-abc.scope");
        assert_eq!(p(":docker:abc").unwrap(), "system.slice/docker-abc.scope");
        assert_eq!(p("-.slice:x:y").unwrap(), "x-y.scope");
        assert_eq!(p("system.slice:x:my-app.slice").unwrap(), "my.slice/my-app.slice");
        for bad in [
            "",
            "a:b",
            "a:b:c:d",
            "bad--slice.slice:p:n",
            "noslice:p:n",
            "x.slice:p:",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
        assert_eq!(expand_slice("-.slice"), Some(PathBuf::new()));
        assert_eq!(expand_slice("-x.slice"), None);
    }

    #[test]
    fn spec_paths() {
        let spec = br#"{"ociVersion":"1.0.2","linux":{"cgroupsPath":"/kubepods/besteffort/podx/abc","namespaces":[]}}"#;
        assert_eq!(
            spec_cgroups_path(spec).as_deref(),
            Some("/kubepods/besteffort/podx/abc")
        );
        assert_eq!(spec_cgroups_path(br#"{"linux":{}}"#), None);
        assert_eq!(spec_cgroups_path(b"not json"), None);
    }

    /// A cgroupfs-driver node: kubepods/burstable/pod<uid>/{sandbox, app, sidecar}.
    #[test]
    fn cgroupfs_layout() {
        let t = TempDir::new("cgroupfs");
        let pod_dir = t.0.join(format!("kubepods/burstable/pod{UID}"));
        for id in [SANDBOX, ID1, ID2] {
            fs::create_dir_all(pod_dir.join(id)).unwrap();
        }
        let spec = |id: &str| format!("/kubepods/burstable/pod{UID}/{id}");
        let dir = |id: &str| container_cgroup_dir(Some(&spec(id)), None, &t.0).unwrap();
        assert_eq!(dir(ID1), pod_dir.join(ID1));
        // A spec path that does not exist, and no PID: nothing.
        assert_eq!(container_cgroup_dir(Some("/kubepods/nope"), None, &t.0), None);
        let containers = vec![
            running(SANDBOX, None, &dir(SANDBOX)),
            running(ID1, Some("app"), &dir(ID1)),
            running(ID2, Some("sidecar"), &dir(ID2)),
            PodContainer {
                id: "ffff".repeat(16),
                name: Some("app".into()),
                running: false,
                pid: None,
                cgroup: None,
            },
        ];
        let whole = choose_cgroup(&pod(), None, &containers, "containerd", &t.0).unwrap();
        assert_eq!(whole.rel, format!("/kubepods/burstable/pod{UID}"));
        let app = choose_cgroup(&pod(), Some("app"), &containers, "containerd", &t.0).unwrap();
        assert_eq!(app.rel, format!("/kubepods/burstable/pod{UID}/{ID1}"));
        assert_eq!(app.level, 4);
        let err = choose_cgroup(&pod(), Some("db"), &containers, "containerd", &t.0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pod shop/web-7d4b9c has no running container named \"db\" (its containers: (sandbox), app, app (not running), sidecar)"
        );
        // Only the app running, no sandbox: still the pod's cgroup.
        let alone = choose_cgroup(&pod(), None, &containers[1..2], "containerd", &t.0).unwrap();
        assert_eq!(alone.rel, format!("/kubepods/burstable/pod{UID}"));
        let err = choose_cgroup(&pod(), None, &containers[3..], "containerd at x", &t.0).unwrap_err();
        assert!(matches!(err, KubeError::NotRunning { .. }), "{err}");
    }

    /// A systemd-driver node: kubepods.slice/kubepods-besteffort.slice/…-pod<uid_>.slice/
    /// cri-containerd-<id>.scope.
    #[test]
    fn systemd_layout() {
        let t = TempDir::new("systemd");
        let uid_ = UID.replace('-', "_");
        let pod_rel = format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice");
        for id in [SANDBOX, ID1] {
            fs::create_dir_all(t.0.join(&pod_rel).join(format!("cri-containerd-{id}.scope"))).unwrap();
        }
        let spec = |id: &str| format!("kubepods-besteffort-pod{uid_}.slice:cri-containerd:{id}");
        let dir = |id: &str| container_cgroup_dir(Some(&spec(id)), None, &t.0).unwrap();
        assert_eq!(dir(ID1), t.0.join(&pod_rel).join(format!("cri-containerd-{ID1}.scope")));
        let containers = vec![
            running(SANDBOX, None, &dir(SANDBOX)),
            running(ID1, Some("app"), &dir(ID1)),
        ];
        let whole = choose_cgroup(&pod(), None, &containers, "containerd", &t.0).unwrap();
        assert_eq!(whole.rel, format!("/{pod_rel}"));
        assert_eq!(whole.level, 3);
        let app = choose_cgroup(&pod(), Some("app"), &containers, "containerd", &t.0).unwrap();
        assert_eq!(app.rel, format!("/{pod_rel}/cri-containerd-{ID1}.scope"));
        assert_eq!(pod_cgroup_dir(&dir(ID1), &t.0), Some(t.0.join(&pod_rel)));
        // CRI-O's scopes are found by ID in the same tree.
        fs::create_dir_all(t.0.join(&pod_rel).join(format!("crio-{ID2}.scope"))).unwrap();
        assert_eq!(
            engine::find_runtime_cgroups(ID2, &t.0),
            [t.0.join(&pod_rel).join(format!("crio-{ID2}.scope"))]
        );
    }

    /// Containers outside any pod cgroup: the deepest shared one, never the root.
    #[test]
    fn outside_kubepods() {
        let t = TempDir::new("flat");
        for d in ["k8s.io/a", "k8s.io/b", "other/c"] {
            fs::create_dir_all(t.0.join(d)).unwrap();
        }
        let c = |id: &str, d: &str| running(id, Some(id), &t.0.join(d));
        let two = [c("a", "k8s.io/a"), c("b", "k8s.io/b")];
        assert_eq!(choose_cgroup(&pod(), None, &two, "x", &t.0).unwrap().rel, "/k8s.io");
        assert_eq!(
            choose_cgroup(&pod(), None, &two[..1], "x", &t.0).unwrap().rel,
            "/k8s.io/a"
        );
        let apart = [c("a", "k8s.io/a"), c("c", "other/c")];
        let err = choose_cgroup(&pod(), None, &apart, "x", &t.0).unwrap_err();
        assert!(err.to_string().contains("share no cgroup"), "{err}");
    }

    #[test]
    fn absent_runtimes() {
        let t = TempDir::new("absent");
        std::env::set_var(CONTAINERD_SOCKET_ENV, t.0.join("none.sock"));
        std::env::set_var(CRIO_SOCKET_ENV, t.0.join("none-either.sock"));
        let err = resolve_pod(&pod(), None, &t.0).unwrap_err();
        assert!(matches!(err, KubeError::NoRuntime { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.starts_with("cannot ask a container runtime for pod shop/web-7d4b9c: containerd at "),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
    }
}
