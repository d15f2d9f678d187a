//! Helpers for the export tests (`tests/tests/export.rs`): a Prometheus server of the test's
//! own, a loopback stand-in for Pyroscope's ingest API, plain HTTP/1.0 GETs, protoc-decoded
//! pprof, and memprof's RSS.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{workspace_root, Child};

/// A loopback port nothing listens on now (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET path` over HTTP/1.0 (no chunked answers): (status, body); None if nothing answers.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Percent-encodes a query value.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Undoes percent-encoding (and `+` for a space).
pub fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Prometheus
// ---------------------------------------------------------------------------------------------

/// Debian's `prometheus`, started on loopback with a scrape config of its own (every second) and
/// a temporary TSDB; killed by its PID and its folder removed on drop.
pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    /// Scrapes `http://target/metrics` every second.
    pub fn start(target: SocketAddr, dir: PathBuf) -> Prometheus {
        let bin = Path::new("/usr/bin/prometheus");
        assert!(bin.is_file(), "{} is missing: run `cargo xtask setup` (Debian package prometheus)", bin.display());
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  \
                 - job_name: memprof\n    scrape_interval: 1s\n    scrape_timeout: 1s\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = fs::File::create(dir.join("prometheus.log")).unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = Child::spawn(&mut cmd, None).expect("cannot start prometheus");
        let p = Prometheus { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while http_get(p.addr, "/-/ready").map(|r| r.0) != Some(200) {
            assert!(Instant::now() < deadline, "prometheus not ready in 60 s; log:\n{}", p.log());
            thread::sleep(Duration::from_millis(200));
        }
        p
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `/api/v1/query?query=QUERY`: the raw JSON answer.
    pub fn query(&self, query: &str) -> Value {
        let path = format!("/api/v1/query?query={}", url_encode(query));
        let (status, body) = http_get(self.addr, &path).unwrap_or_else(|| panic!("prometheus did not answer {path}"));
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.child.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// A stand-in for Pyroscope's ingest API
// ---------------------------------------------------------------------------------------------

/// How the stand-in answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Records every request, answers 200.
    Accept,
    /// Answers 503 Service Unavailable.
    Unavailable,
    /// Accepts connections and never answers (keeps them open).
    Hang,
}

/// One request the stand-in received.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub query: BTreeMap<String, String>,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    pub at: Instant,
}

/// A loopback HTTP server standing in for Pyroscope.
pub struct IngestServer {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub connections: Arc<Mutex<u64>>,
}

impl IngestServer {
    pub fn start(answer: Answer) -> IngestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let (rec, conns) = (received.clone(), connections.clone());
        thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                *conns.lock().unwrap() += 1;
                if answer == Answer::Hang {
                    held.push(stream);
                    continue;
                }
                let rec = rec.clone();
                thread::spawn(move || serve_connection(stream, answer, &rec));
            }
        });
        IngestServer { addr, received, connections }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// Reads requests off one (keep-alive) connection and answers each.
fn serve_connection(stream: TcpStream, answer: Answer, rec: &Mutex<Vec<Received>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let body = if headers.get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            read_chunked(&mut reader)
        } else {
            let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            let mut body = vec![0; len];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            body
        };
        let (path, q) = target.split_once('?').unwrap_or((&target, ""));
        let query =
            q.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (url_decode(k), url_decode(v))).collect();
        rec.lock().unwrap().push(Received { path: path.to_string(), query, headers, body, at: Instant::now() });
        let status = if answer == Answer::Accept { "200 OK" } else { "503 Service Unavailable" };
        if write!(out, "HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").is_err() {
            return;
        }
    }
}

fn read_chunked(r: &mut impl BufRead) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        if r.read_line(&mut size).unwrap_or(0) == 0 {
            return body;
        }
        let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
        let mut chunk = vec![0; n + 2];
        if r.read_exact(&mut chunk).is_err() {
            return body;
        }
        if n == 0 {
            return body;
        }
        body.extend_from_slice(&chunk[..n]);
    }
}

// ---------------------------------------------------------------------------------------------
// pprof through protoc
// ---------------------------------------------------------------------------------------------

/// One decoded pprof sample: its values and the function names of its frames (leaf first).
#[derive(Clone, Debug)]
pub struct DecodedSample {
    pub values: Vec<i64>,
    pub functions: Vec<String>,
}

/// The parts of a decoded pprof the tests check.
#[derive(Clone, Debug)]
pub struct DecodedProfile {
    pub sample_types: Vec<String>,
    pub samples: Vec<DecodedSample>,
    pub time_nanos: i64,
    pub duration_nanos: i64,
    /// protoc's text, for failure messages and the report.
    pub text: String,
}

impl DecodedProfile {
    /// The sum of value `index` over samples whose frames name `func`.
    pub fn site(&self, index: usize, func: &str) -> i64 {
        self.samples.iter().filter(|s| s.functions.iter().any(|f| f == func)).map(|s| s.values[index]).sum()
    }

    pub fn total(&self, index: usize) -> i64 {
        self.samples.iter().map(|s| s.values[index]).sum()
    }
}

/// `protoc --decode=perftools.profiles.Profile` against the vendored profile.proto (an
/// independent decoder); fails, never skips, without protoc.
pub fn decode_pprof(data: &[u8]) -> DecodedProfile {
    let proto_dir = workspace_root().join("memprof/tests/data");
    let mut child = Command::new("protoc")
        .arg(format!("--proto_path={}", proto_dir.display()))
        .arg("--decode=perftools.profiles.Profile")
        .arg("profile.proto")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("protoc not found: run `cargo xtask setup` (Debian package protobuf-compiler)");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "protoc --decode failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    resolve(&text)
}

/// Scalars and messages of one message, in order.
#[derive(Default, Debug)]
struct Msg(Vec<(String, Result<String, Msg>)>);

impl Msg {
    fn msgs<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Msg> + 'a {
        self.0.iter().filter(move |(n, _)| n == name).filter_map(|(_, v)| v.as_ref().err())
    }
    fn scalars<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0.iter().filter(move |(n, _)| n == name).filter_map(|(_, v)| v.as_deref().ok())
    }
    fn int(&self, name: &str) -> i64 {
        self.scalars(name).next().map_or(0, |s| s.parse().unwrap())
    }
}

fn parse_text(text: &str) -> Msg {
    let mut stack = vec![(String::new(), Msg::default())];
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line == "}" {
            let (name, msg) = stack.pop().unwrap();
            stack.last_mut().unwrap().1 .0.push((name, Err(msg)));
        } else if let Some(name) = line.strip_suffix(" {") {
            stack.push((name.to_string(), Msg::default()));
        } else {
            let (name, value) = line.split_once(": ").unwrap_or_else(|| panic!("unexpected line {line:?}"));
            let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
            stack.last_mut().unwrap().1 .0.push((name.to_string(), Ok(value.replace("\\\"", "\""))));
        }
    }
    stack.pop().unwrap().1
}

fn resolve(text: &str) -> DecodedProfile {
    let p = parse_text(text);
    let strings: Vec<String> = p.scalars("string_table").map(str::to_string).collect();
    let s = |i: i64| strings.get(i as usize).cloned().unwrap_or_default();
    let functions: BTreeMap<i64, String> = p.msgs("function").map(|f| (f.int("id"), s(f.int("name")))).collect();
    let locations: BTreeMap<i64, Vec<String>> = p
        .msgs("location")
        .map(|l| {
            let names = l.msgs("line").map(|ln| functions.get(&ln.int("function_id")).cloned().unwrap_or_default());
            (l.int("id"), names.collect())
        })
        .collect();
    let samples = p
        .msgs("sample")
        .map(|smp| DecodedSample {
            values: smp.scalars("value").map(|v| v.parse().unwrap()).collect(),
            functions: smp
                .scalars("location_id")
                .flat_map(|id| locations.get(&id.parse().unwrap()).cloned().unwrap_or_default())
                .collect(),
        })
        .collect();
    DecodedProfile {
        sample_types: p.msgs("sample_type").map(|t| s(t.int("type"))).collect(),
        samples,
        time_nanos: p.int("time_nanos"),
        duration_nanos: p.int("duration_nanos"),
        text: text.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// memprof's own memory
// ---------------------------------------------------------------------------------------------

/// `VmRSS` of `pid` in bytes.
pub fn vm_rss(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
