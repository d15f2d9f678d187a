//! Naming a container instead of a cgroup: ask its engine (Docker, or Podman's
//! Docker-compatible service) over a unix socket, or recognise the cgroup directories that
//! container runtimes name after a container ID or a Kubernetes pod UID.
//!
//! The engine client is a minimal HTTP/1.1 client on std's `UnixStream`: one
//! `GET /containers/{name}/json` per socket, which both engines resolve by name, full ID or
//! unique ID prefix.

use std::{
    env,
    io::{self, ErrorKind, Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use super::{
    cgroup::{self, CgroupTarget},
    TargetError,
};

/// The engine sockets tried after `DOCKER_HOST`, in order.
const DEFAULT_SOCKETS: [&str; 2] = ["/var/run/docker.sock", "/run/podman/podman.sock"];
/// Read and write timeout of one engine request.
const TIMEOUT: Duration = Duration::from_secs(2);
/// The largest engine response accepted (an inspect result is tens of KiB).
const MAX_RESPONSE: usize = 4 << 20;
/// How deep the runtime cgroup search descends below the cgroup root.
const MAX_DEPTH: usize = 32;
/// Fewest hex digits of an ID prefix matched against runtime cgroup names.
const MIN_PREFIX: usize = 4;
/// Fewest hex digits of a container ID in a runtime cgroup name (Docker's short ID).
const MIN_ID: usize = 12;

/// A container found through its engine, with the cgroup to profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerTarget {
    /// Full container ID.
    pub id: String,
    /// Container name, without Docker's leading '/'.
    pub name: String,
    /// Host PID of the container's main process.
    pub pid: u32,
    /// Path of the engine socket that answered.
    pub engine: String,
    /// The container's cgroup: the nearest ancestor of the main process's cgroup named after
    /// the container ID (`docker-<id>.scope`, `libpod-<id>`...), else that cgroup itself.
    pub cgroup: CgroupTarget,
}

/// What an engine's inspect call says about a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspect {
    pub id: String,
    /// Without Docker's leading '/'.
    pub name: String,
    /// Host PID of the main process; 0 when the container is not running.
    pub pid: u32,
    pub running: bool,
}

/// A failure talking to one container engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot query the container engine at {}: {source}", .socket.display())]
    Io {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unexpected answer from the container engine at {}: {reason}", .socket.display())]
    BadResponse { socket: PathBuf, reason: String },
    #[error("the container engine at {} answered HTTP {status}: {message}", .socket.display())]
    Status {
        socket: PathBuf,
        status: u16,
        message: String,
    },
}

/// The container engines' runtimes and Kubernetes pods, as recognised from cgroup names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Docker,
    Podman,
    Containerd,
    Crio,
    KubePod,
}

/// Resolves `spec` as a container name, ID or unique ID prefix through the first engine that
/// knows it. `Ok(None)` when `spec` cannot be a container name, no engine answers, or none
/// knows it; the caller then falls back to cgroup names. An engine refusing the name (such as
/// an ambiguous ID prefix) and a container that is not running are errors.
pub fn resolve_container(
    spec: &str,
    cgroup2_mount: &Path,
) -> Result<Option<ContainerTarget>, TargetError> {
    resolve_with(spec, cgroup2_mount, &engine_sockets())
}

fn resolve_with(
    spec: &str,
    mount: &Path,
    sockets: &[PathBuf],
) -> Result<Option<ContainerTarget>, TargetError> {
    let Some(name) = container_ref(spec) else {
        return Ok(None);
    };
    for socket in sockets {
        match inspect(socket, name) {
            Ok(Some(found)) => return container_target(found, socket, mount).map(Some),
            Ok(None) => log::debug!("{}: no container {name:?}", socket.display()),
            Err(
                e @ EngineError::Status {
                    status: 400..=499, ..
                },
            ) => return Err(e.into()),
            Err(EngineError::Io { socket, source })
                if matches!(
                    source.kind(),
                    ErrorKind::NotFound | ErrorKind::ConnectionRefused
                ) =>
            {
                log::debug!("no container engine at {}: {source}", socket.display())
            }
            Err(e) => log::warn!("{e}"),
        }
    }
    Ok(None)
}

/// `spec` as a container name or ID to put in a request path, if it can be one: Docker's
/// `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, with an optional leading '/'.
fn container_ref(spec: &str) -> Option<&str> {
    let name = spec.strip_prefix('/').unwrap_or(spec);
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    (first_ok && rest_ok).then_some(name)
}

fn container_target(
    found: Inspect,
    socket: &Path,
    mount: &Path,
) -> Result<ContainerTarget, TargetError> {
    let not_running = || TargetError::ContainerNotRunning {
        name: found.name.clone(),
        id: found.id.chars().take(12).collect(),
    };
    if !found.running || found.pid == 0 {
        return Err(not_running());
    }
    let cgroup = match cgroup::cgroup_of_pid(found.pid, mount) {
        Err(TargetError::NoSuchProcess(_)) => return Err(not_running()),
        r => r?,
    };
    let cgroup = container_cgroup(cgroup, &found.id, mount);
    Ok(ContainerTarget {
        id: found.id,
        name: found.name,
        pid: found.pid,
        engine: socket.display().to_string(),
        cgroup,
    })
}

/// The nearest ancestor of `cg` (itself included) named after container `id`, else `cg`: the
/// main process of a container running systemd sits in a child such as `init.scope`.
fn container_cgroup(cg: CgroupTarget, id: &str, mount: &Path) -> CgroupTarget {
    let mount = std::fs::canonicalize(mount).unwrap_or_else(|_| mount.to_path_buf());
    let named = cg
        .path
        .ancestors()
        .take_while(|p| p.starts_with(&mount) && *p != mount)
        .find(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let parent = p.parent().and_then(|q| q.file_name()).and_then(|n| n.to_str());
            matches!(runtime_id_of(name, parent), Some((rt, rid)) if rt != Runtime::KubePod && rid == id)
        });
    match named.and_then(|p| p.to_str()) {
        Some(p) if p != cg.path.as_os_str() => cgroup::resolve_cgroup(p, &mount).unwrap_or(cg),
        _ => cg,
    }
}

/// The engine sockets to try, in order: `DOCKER_HOST` when it is a `unix://` URL, then the
/// Docker and rootful Podman default sockets.
pub fn engine_sockets() -> Vec<PathBuf> {
    let mut sockets = Vec::new();
    if let Some(host) = env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()) {
        match docker_host_socket(&host) {
            Some(path) => sockets.push(path),
            None => log::warn!(
                "DOCKER_HOST={host} is not supported (only unix:// sockets are): skipping it"
            ),
        }
    }
    for s in DEFAULT_SOCKETS.map(PathBuf::from) {
        if !sockets.contains(&s) {
            sockets.push(s);
        }
    }
    sockets
}

/// The socket path of a `unix://` `DOCKER_HOST` URL.
fn docker_host_socket(url: &str) -> Option<PathBuf> {
    url.strip_prefix("unix://")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// Inspects container `name` (a name, full ID or unique ID prefix) through the engine at
/// `socket`. `Ok(None)` when the engine does not know it (HTTP 404).
pub fn inspect(socket: &Path, name: &str) -> Result<Option<Inspect>, EngineError> {
    let bad = |reason: String| EngineError::BadResponse {
        socket: socket.to_path_buf(),
        reason,
    };
    let (status, body) = get(socket, &format!("/containers/{name}/json"))?;
    match status {
        200 => {}
        404 => return Ok(None),
        _ => {
            return Err(EngineError::Status {
                socket: socket.to_path_buf(),
                status,
                message: error_message(&body),
            })
        }
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Raw {
        id: String,
        #[serde(default)]
        name: String,
        state: RawState,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct RawState {
        #[serde(default)]
        pid: u32,
        #[serde(default)]
        running: bool,
    }
    let raw: Raw =
        serde_json::from_slice(&body).map_err(|e| bad(format!("invalid inspect JSON: {e}")))?;
    Ok(Some(Inspect {
        name: raw.name.trim_start_matches('/').to_string(),
        id: raw.id,
        pid: raw.state.pid,
        running: raw.state.running,
    }))
}

/// The `message` of an engine's JSON error body, else the body's text, on one line.
fn error_message(body: &[u8]) -> String {
    let text = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message")?.as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &line[..i]),
        None if line.is_empty() => "(no message)".to_string(),
        None => line,
    }
}

/// One `GET` request; returns the status and the decoded body. Reading stops at the end of the
/// body as framed by `Content-Length` or chunked encoding, else at end of stream.
fn get(socket: &Path, path: &str) -> Result<(u16, Vec<u8>), EngineError> {
    let io_err = |source| EngineError::Io {
        socket: socket.to_path_buf(),
        source,
    };
    let bad = |reason: String| EngineError::BadResponse {
        socket: socket.to_path_buf(),
        reason,
    };
    let mut stream = UnixStream::connect(socket).map_err(io_err)?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io_err)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io_err)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(io_err)?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(e)),
        };
        if n == 0 {
            return parse_response(&raw, true)
                .map_err(bad)?
                .ok_or_else(|| bad("connection closed before the end of the response".into()));
        }
        raw.extend_from_slice(&buf[..n]);
        if raw.len() > MAX_RESPONSE {
            return Err(bad(format!("response larger than {MAX_RESPONSE} bytes")));
        }
        if let Some(response) = parse_response(&raw, false).map_err(bad)? {
            return Ok(response);
        }
    }
}

/// Parses an HTTP/1.1 response: `Ok(None)` while incomplete. At end of stream (`eof`), a body
/// framed by neither `Content-Length` nor chunked encoding is the rest of the stream.
fn parse_response(raw: &[u8], eof: bool) -> Result<Option<(u16, Vec<u8>)>, String> {
    let Some(head_end) = find(raw, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| "non-UTF-8 header")?;
    let body = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|s| s.get(2..5))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let (mut chunked, mut length) = (false, None);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.trim().eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().ends_with("chunked");
        } else if name.trim().eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?,
            );
        }
    }
    let body = if chunked {
        decode_chunked(body)?
    } else if let Some(n) = length {
        body.get(..n).map(<[u8]>::to_vec)
    } else {
        eof.then(|| body.to_vec())
    };
    Ok(body.map(|b| (status, b)))
}

/// Decodes a chunked body: `Ok(None)` while the last chunk has not arrived. Chunk extensions
/// and trailers are ignored.
fn decode_chunked(mut rest: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = find(rest, b"\r\n") else {
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&rest[..eol]);
        let size = line.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(size, 16).map_err(|_| format!("bad chunk size line {line:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(Some(out));
        }
        if rest.len() < size.saturating_add(2) {
            return Ok(None);
        }
        if &rest[size..size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF".into());
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The cgroup directories below `mount` that a container runtime named after a container ID,
/// or Kubernetes after a pod UID, starting with `spec` (at least 4 hex digits; a pod UID may be
/// given with '-' or '_'). A match covers its subtree, which is not searched further; symlinks
/// are not followed. Sorted; empty when `spec` is not such a prefix.
pub fn find_runtime_cgroups(spec: &str, mount: &Path) -> Vec<PathBuf> {
    let spec = spec.to_ascii_lowercase().replace('_', "-");
    let hex_digits = spec.chars().filter(char::is_ascii_hexdigit).count();
    if hex_digits < MIN_PREFIX || !spec.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Vec::new();
    }
    let mut found = Vec::new();
    search(mount, None, &spec, 1, &mut found);
    found.sort();
    found
}

fn search(dir: &Path, dir_name: Option<&str>, spec: &str, depth: usize, found: &mut Vec<PathBuf>) {
    if depth > MAX_DEPTH {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str() else {
            continue;
        };
        let path = entry.path();
        match runtime_id_of(name, dir_name) {
            Some((_, id)) if id.starts_with(spec) => found.push(path),
            _ => search(&path, Some(name), spec, depth + 1, found),
        }
    }
}

/// The runtime and container ID (lowercase), or `KubePod` and pod UID (with '-'), that a cgroup
/// directory is named after, given the name of its parent directory:
/// `docker-<id>.scope`, `docker/<id>`, `libpod-<id>[.scope]` (not `libpod-conmon-<id>`),
/// `cri-containerd-<id>.scope`, `crio-<id>[.scope]`, `kubepods[-<qos>]-pod<uid>.slice` and
/// `kubepods[/<qos>]/pod<uid>`. Container IDs have at least 12 hex digits.
pub fn runtime_id_of(dir_name: &str, parent_name: Option<&str>) -> Option<(Runtime, String)> {
    let container = |runtime, id: &str| {
        (id.len() >= MIN_ID && id.chars().all(|c| c.is_ascii_hexdigit()))
            .then(|| (runtime, id.to_ascii_lowercase()))
    };
    let scope = |prefix| {
        dir_name
            .strip_prefix(prefix)
            .and_then(|r| r.strip_suffix(".scope"))
    };
    let maybe_scope = |prefix| {
        dir_name
            .strip_prefix(prefix)
            .map(|r| r.strip_suffix(".scope").unwrap_or(r))
    };
    if let Some(id) = scope("docker-") {
        return container(Runtime::Docker, id);
    }
    if let Some(id) = maybe_scope("libpod-") {
        return container(Runtime::Podman, id);
    }
    if let Some(id) = scope("cri-containerd-") {
        return container(Runtime::Containerd, id);
    }
    if let Some(id) = maybe_scope("crio-") {
        return container(Runtime::Crio, id);
    }
    if parent_name == Some("docker") {
        return container(Runtime::Docker, dir_name);
    }
    let uid = if let Some(stem) = dir_name
        .strip_prefix("kubepods")
        .and_then(|r| r.strip_suffix(".slice"))
    {
        // systemd driver: kubepods-pod<uid>.slice, kubepods-burstable-pod<uid>.slice
        &stem[stem.rfind("-pod")? + 4..]
    } else if matches!(parent_name, Some("kubepods" | "burstable" | "besteffort")) {
        // cgroupfs driver: kubepods/pod<uid>, kubepods/burstable/pod<uid>
        dir_name.strip_prefix("pod")?
    } else {
        return None;
    };
    let valid = uid.starts_with(|c: char| c.is_ascii_hexdigit())
        && uid
            .chars()
            .all(|c| c.is_ascii_hexdigit() || c == '-' || c == '_');
    valid.then(|| (Runtime::KubePod, uid.to_ascii_lowercase().replace('_', "-")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{fs, os::unix::net::UnixListener, thread};

    const ID: &str = "3f2a9c1b7d4e5f60718293a4b5c6d7e8f9011223344556677889900aabbccdd";

    /// A temporary directory removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let dir =
                std::env::temp_dir().join(format!("memprof-engine-{tag}-{}", std::process::id()));
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

    /// A fake engine at `socket` answering one request with `response`; the thread returns
    /// the request. With `keep_open` it keeps the connection open until the client closes it.
    fn fake_engine(socket: &Path, response: String, keep_open: bool) -> thread::JoinHandle<String> {
        let listener = UnixListener::bind(socket).unwrap();
        thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while find(&request, b"\r\n\r\n").is_none() {
                let n = stream.read(&mut buf).unwrap();
                assert!(n > 0, "request cut short");
                request.extend_from_slice(&buf[..n]);
            }
            stream.write_all(response.as_bytes()).unwrap();
            if keep_open {
                let _ = stream.read_to_end(&mut Vec::new());
            }
            String::from_utf8(request).unwrap()
        })
    }

    fn inspect_json(pid: u32, running: bool) -> String {
        format!(
            r#"{{"Id":"{ID}","Created":"2024-05-01T10:00:00Z","Name":"/api-service",
"State":{{"Status":"running","Running":{running},"Paused":false,"Pid":{pid},"ExitCode":0}},
"HostConfig":{{"CgroupnsMode":"private"}}}}"#
        )
    }

    fn with_length(status: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn chunked(body: &str) -> String {
        let (a, b) = body.split_at(body.len() / 3);
        format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x};ext=1\r\n{a}\r\n{:X}\r\n{b}\r\n0\r\nX-Trailer: y\r\n\r\n",
            a.len(),
            b.len()
        )
    }

    #[test]
    fn inspects_with_content_length() {
        let t = TempDir::new("length");
        let sock = t.0.join("docker.sock");
        let server = fake_engine(
            &sock,
            with_length("200 OK", &inspect_json(4242, true)),
            true,
        );
        let found = inspect(&sock, "api-service").unwrap().unwrap();
        assert_eq!(
            found,
            Inspect {
                id: ID.into(),
                name: "api-service".into(),
                pid: 4242,
                running: true
            }
        );
        let request = server.join().unwrap();
        assert!(
            request.starts_with("GET /containers/api-service/json HTTP/1.1\r\nHost: docker\r\n"),
            "{request}"
        );
    }

    #[test]
    fn inspects_chunked() {
        let t = TempDir::new("chunked");
        let sock = t.0.join("podman.sock");
        let server = fake_engine(&sock, chunked(&inspect_json(0, false)), false);
        let found = inspect(&sock, "3f2a").unwrap().unwrap();
        assert_eq!(
            (found.pid, found.running, found.id.as_str()),
            (0, false, ID)
        );
        server.join().unwrap();
    }

    #[test]
    fn not_found_and_refusals() {
        let t = TempDir::new("status");
        let sock = t.0.join("e.sock");
        let body = r#"{"message":"No such container: nope"}"#;
        let server = fake_engine(&sock, with_length("404 Not Found", body), false);
        assert_eq!(inspect(&sock, "nope").unwrap(), None);
        server.join().unwrap();

        fs::remove_file(&sock).unwrap();
        let body = "{\"message\":\"multiple IDs found\\nwith provided prefix: ab12\"}";
        let server = fake_engine(&sock, with_length("400 Bad Request", body), false);
        let err = inspect(&sock, "ab12").unwrap_err();
        assert!(
            matches!(err, EngineError::Status { status: 400, .. }),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.ends_with("answered HTTP 400: multiple IDs found with provided prefix: ab12"),
            "{msg}"
        );
        server.join().unwrap();

        fs::remove_file(&sock).unwrap();
        let server = fake_engine(&sock, with_length("200 OK", "not json"), false);
        let err = inspect(&sock, "x").unwrap_err();
        assert!(matches!(err, EngineError::BadResponse { .. }), "{err}");
        server.join().unwrap();

        let err = inspect(&t.0.join("missing.sock"), "x").unwrap_err();
        assert!(
            matches!(&err, EngineError::Io { source, .. } if source.kind() == ErrorKind::NotFound)
        );
    }

    #[test]
    fn parses_responses() {
        let r = b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nabc";
        assert_eq!(parse_response(r, false), Ok(None));
        assert_eq!(parse_response(r, true), Ok(Some((200, b"abc".to_vec()))));
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc";
        assert_eq!(parse_response(r, false), Ok(None));
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\n", false), Ok(None));
        let r = b"HTTP/1.1 200 OK\r\nTRANSFER-ENCODING: chunked\r\n\r\n3\r\nabc\r\n";
        assert_eq!(parse_response(r, true), Ok(None));
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        assert_eq!(parse_response(r, false), Ok(Some((200, b"abc".to_vec()))));
        assert!(parse_response(b"SSH-2.0-x\r\n\r\n", true).is_err());
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert!(parse_response(r, true).is_err());
        assert_eq!(error_message(b""), "(no message)");
        assert_eq!(error_message(b"page not found\n"), "page not found");
    }

    #[test]
    fn docker_host_and_names() {
        assert_eq!(
            docker_host_socket("unix:///run/user/1000/podman/podman.sock"),
            Some(PathBuf::from("/run/user/1000/podman/podman.sock"))
        );
        assert_eq!(docker_host_socket("tcp://127.0.0.1:2375"), None);
        assert_eq!(docker_host_socket("unix://"), None);
        assert_eq!(container_ref("/api-service"), Some("api-service"));
        assert_eq!(container_ref("web_1.x-y"), Some("web_1.x-y"));
        for bad in ["", "/", "system.slice/x", "-x", "a b", "a?b", "../x", "é"] {
            assert_eq!(container_ref(bad), None, "{bad}");
        }
    }

    #[test]
    fn resolves_through_engines_in_order() {
        let t = TempDir::new("resolve");
        let (missing, first, second) = (
            t.0.join("none.sock"),
            t.0.join("a.sock"),
            t.0.join("b.sock"),
        );
        let sockets = [missing, first.clone(), second.clone()];
        // A spec that cannot be a container name asks no engine.
        assert_eq!(resolve_with("a/b", &t.0, &sockets).unwrap(), None);

        let s1 = fake_engine(&first, with_length("404 Not Found", "{}"), false);
        let s2 = fake_engine(
            &second,
            with_length("200 OK", &inspect_json(0, false)),
            false,
        );
        let err = resolve_with("api-service", &t.0, &sockets).unwrap_err();
        assert_eq!(
            err.to_string(),
            "container api-service (3f2a9c1b7d4e) is not running"
        );
        s1.join().unwrap();
        s2.join().unwrap();

        for s in [&first, &second] {
            fs::remove_file(s).unwrap();
        }
        let s1 = fake_engine(&first, with_length("404 Not Found", "{}"), false);
        let s2 = fake_engine(&second, with_length("404 Not Found", "{}"), false);
        assert_eq!(resolve_with("api-service", &t.0, &sockets).unwrap(), None);
        s1.join().unwrap();
        s2.join().unwrap();
    }

    #[test]
    fn resolves_running_container_to_its_cgroup() {
        let Ok(mount) = cgroup::find_cgroup2_mount() else {
            return;
        };
        let Ok(mine) = cgroup::cgroup_of_pid(std::process::id(), &mount) else {
            return;
        };
        let t = TempDir::new("running");
        let sock = t.0.join("docker.sock");
        let server = fake_engine(
            &sock,
            chunked(&inspect_json(std::process::id(), true)),
            false,
        );
        let c = resolve_with("api-service", &mount, std::slice::from_ref(&sock))
            .unwrap()
            .unwrap();
        server.join().unwrap();
        assert_eq!((c.id.as_str(), c.name.as_str()), (ID, "api-service"));
        assert_eq!(c.pid, std::process::id());
        assert_eq!(c.engine, sock.display().to_string());
        assert_eq!(c.cgroup, mine);
    }

    #[test]
    fn container_cgroup_is_the_named_ancestor() {
        let t = TempDir::new("ancestor");
        let scope = format!("system.slice/docker-{ID}.scope");
        fs::create_dir_all(t.0.join(&scope).join("init.scope")).unwrap();
        let inner = cgroup::resolve_cgroup(&format!("{scope}/init.scope"), &t.0).unwrap();
        let outer = container_cgroup(inner.clone(), ID, &t.0);
        assert_eq!(outer.rel, format!("/{scope}"));
        assert_eq!(outer.level, 2);
        // Another container's ID: the process's own cgroup stays.
        assert_eq!(container_cgroup(inner.clone(), &ID[1..], &t.0), inner);
    }

    #[test]
    fn runtime_names() {
        let id = |rt, s: &str| Some((rt, s.to_string()));
        let docker_scope = format!("docker-{ID}.scope");
        assert_eq!(
            runtime_id_of(&docker_scope, Some("system.slice")),
            id(Runtime::Docker, ID)
        );
        assert_eq!(runtime_id_of(ID, Some("docker")), id(Runtime::Docker, ID));
        assert_eq!(runtime_id_of(ID, Some("other")), None);
        assert_eq!(runtime_id_of(ID, None), None);
        assert_eq!(
            runtime_id_of(&format!("libpod-{ID}"), None),
            id(Runtime::Podman, ID)
        );
        assert_eq!(
            runtime_id_of(&format!("libpod-{ID}.scope"), Some("machine.slice")),
            id(Runtime::Podman, ID)
        );
        assert_eq!(
            runtime_id_of(&format!("libpod-conmon-{ID}.scope"), None),
            None
        );
        assert_eq!(runtime_id_of(&format!("libpod-conmon-{ID}"), None), None);
        assert_eq!(
            runtime_id_of(&format!("cri-containerd-{ID}.scope"), None),
            id(Runtime::Containerd, ID)
        );
        assert_eq!(
            runtime_id_of(&format!("crio-{ID}.scope"), None),
            id(Runtime::Crio, ID)
        );
        assert_eq!(
            runtime_id_of(&format!("crio-{ID}"), None),
            id(Runtime::Crio, ID)
        );
        assert_eq!(
            runtime_id_of(&format!("crio-conmon-{ID}.scope"), None),
            None
        );
        let upper = format!("docker-{}.scope", ID.to_uppercase());
        assert_eq!(runtime_id_of(&upper, None), id(Runtime::Docker, ID));
        // Not IDs: too short, not hex, no .scope.
        for name in [
            "docker-abc.scope",
            "docker-xyz0123456789.scope",
            "docker.service",
        ] {
            assert_eq!(runtime_id_of(name, Some("system.slice")), None, "{name}");
        }
        assert_eq!(runtime_id_of(&format!("docker-{ID}"), None), None);
        assert_eq!(runtime_id_of("buildkit", Some("docker")), None);

        let pod = |s: &str| Some((Runtime::KubePod, s.to_string()));
        assert_eq!(
            runtime_id_of(
                "kubepods-burstable-pod1234_5678.slice",
                Some("kubepods-burstable.slice")
            ),
            pod("1234-5678")
        );
        assert_eq!(
            runtime_id_of("kubepods-podab12_cd.slice", None),
            pod("ab12-cd")
        );
        assert_eq!(
            runtime_id_of("kubepods-besteffort-pod1234.slice", None),
            pod("1234")
        );
        assert_eq!(
            runtime_id_of("pod1234-5678", Some("burstable")),
            pod("1234-5678")
        );
        assert_eq!(
            runtime_id_of("pod1234-5678", Some("kubepods")),
            pod("1234-5678")
        );
        assert_eq!(
            runtime_id_of("pod1234-5678", Some("besteffort")),
            pod("1234-5678")
        );
        for (name, parent) in [
            ("kubepods.slice", None),
            ("kubepods-burstable.slice", Some("kubepods.slice")),
            ("kubepods-besteffort.slice", None),
            ("pod1234", Some("system.slice")),
            ("podman", Some("kubepods")),
            ("kubepods-burstable-podxyz.slice", None),
        ] {
            assert_eq!(runtime_id_of(name, parent), None, "{name}");
        }
    }

    #[test]
    fn finds_runtime_cgroups_by_prefix() {
        let t = TempDir::new("tree");
        let other = "3f2bffff00000000111122223333444455556666777788889999aaaabbbbcccc";
        let pod = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podd2c4e6f8_1a2b_4c3d_8e9f_0123456789ab.slice";
        let dirs = [
            format!("system.slice/docker-{ID}.scope/init.scope"),
            // Nested in a match, with a matching ID too: covered by the outer match.
            format!("system.slice/docker-{ID}.scope/docker/3f2a{}", &other[4..]),
            format!("machine.slice/libpod-conmon-{other}.scope"),
            format!("machine.slice/libpod-{other}.scope/container"),
            format!("docker/{other}"),
            format!("{pod}/cri-containerd-{other}.scope"),
            "kubepods/besteffort/pod0a1b2c3d-0000-1111-2222-333344445555".to_string(),
            "system.slice/3f2a0000.service".to_string(),
        ];
        for d in &dirs {
            fs::create_dir_all(t.0.join(d)).unwrap();
        }
        std::os::unix::fs::symlink(t.0.join("system.slice"), t.0.join("link")).unwrap();
        let rel = |spec: &str| -> Vec<String> {
            find_runtime_cgroups(spec, &t.0)
                .iter()
                .map(|p| p.strip_prefix(&t.0).unwrap().display().to_string())
                .collect()
        };
        assert_eq!(rel("3f2a"), [format!("system.slice/docker-{ID}.scope")]);
        assert_eq!(rel(ID), rel("3F2A9C1B"));
        assert_eq!(
            rel("3f2b"),
            [
                format!("docker/{other}"),
                format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podd2c4e6f8_1a2b_4c3d_8e9f_0123456789ab.slice/cri-containerd-{other}.scope"),
                format!("machine.slice/libpod-{other}.scope"),
            ]
        );
        assert_eq!(rel("d2c4e6f8-1a2b"), [pod.to_string()]);
        assert_eq!(rel("d2c4e6f8_1a2b_4c3d"), [pod.to_string()]);
        assert_eq!(
            rel("0a1b2c3d-0000"),
            ["kubepods/besteffort/pod0a1b2c3d-0000-1111-2222-333344445555"]
        );
        assert!(rel("3f2").is_empty());
        assert!(rel("api-service").is_empty());
        assert!(rel("ffff").is_empty());
    }
}
