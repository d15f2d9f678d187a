//! `--pyroscope URL`: every interval's profile pushed to Grafana Pyroscope's ingest API
//! (`POST /ingest?name=APP{labels}&from=&until=&format=pprof&spyName=memprof`, the pprof as the
//! body), from a thread of its own.
//!
//! A slow or dead server must never grow memprof's memory: the run hands each interval's pushes
//! (a *batch*: one profile, or one per process with `--pyroscope-pid`) to a [`BoundedQueue`] of
//! [`QUEUE_BATCHES`] batches that drops its oldest batch when full; each request has a timeout;
//! a failed one is retried with exponential [`Backoff`] (transport errors, 429 and 5xx only), then
//! dropped. Every dropped push is counted (`pushes_dropped`).

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc, Condvar, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use log::{debug, warn};

use super::{
    queue::{Backoff, BoundedQueue},
    ExportError,
};

/// Interval batches kept while the server is slow; older ones are dropped.
pub const QUEUE_BATCHES: usize = 4;
/// Environment variable holding `user:password` for HTTP basic authentication.
pub const ENV_BASIC_AUTH: &str = "MEMPROF_PYROSCOPE_BASIC_AUTH";
/// Environment variable holding a bearer token.
pub const ENV_TOKEN: &str = "MEMPROF_PYROSCOPE_TOKEN";

/// Credentials, from the environment only (never the command line, which `ps` shows).
#[derive(Clone)]
pub enum Auth {
    Basic(String),
    Bearer(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::Basic(_) => "Basic(…)",
            Auth::Bearer(_) => "Bearer(…)",
        })
    }
}

impl Auth {
    /// [`ENV_BASIC_AUTH`] or [`ENV_TOKEN`] (not both), or none.
    pub fn from_env() -> Result<Option<Auth>, ExportError> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        match (get(ENV_BASIC_AUTH), get(ENV_TOKEN)) {
            (Some(_), Some(_)) => Err(ExportError::Auth(format!("set {ENV_BASIC_AUTH} or {ENV_TOKEN}, not both"))),
            (Some(b), None) => {
                if !b.contains(':') {
                    return Err(ExportError::Auth(format!("{ENV_BASIC_AUTH} must be user:password")));
                }
                use base64::Engine as _;
                Ok(Some(Auth::Basic(base64::engine::general_purpose::STANDARD.encode(b))))
            }
            (None, Some(t)) => Ok(Some(Auth::Bearer(t))),
            (None, None) => Ok(None),
        }
    }

    fn header(&self) -> String {
        match self {
            Auth::Basic(b) => format!("Basic {b}"),
            Auth::Bearer(t) => format!("Bearer {t}"),
        }
    }
}

/// Where and how to push.
#[derive(Clone, Debug)]
pub struct PyroscopeConfig {
    /// The server's base URL (`http://host:4040`, maybe with a path prefix), no trailing slash.
    pub url: String,
    pub tenant: Option<String>,
    pub auth: Option<Auth>,
    /// The application name and `service_name` label.
    pub service_name: String,
    /// More labels, in order (`node`; `namespace`, `pod`, `container` for `--pod`), values
    /// sanitized.
    pub labels: Vec<(String, String)>,
    /// One profile per process, labelled `pid`.
    pub pid_label: bool,
    /// Timeout of one request (connect, send, answer).
    pub timeout: Duration,
    pub backoff: Backoff,
}

impl PyroscopeConfig {
    pub fn new(
        url: &str,
        tenant: Option<String>,
        auth: Option<Auth>,
        service_name: &str,
        labels: &[(String, String)],
        pid_label: bool,
        interval: Duration,
    ) -> Self {
        Self {
            url: url.trim_end_matches('/').to_string(),
            tenant,
            auth,
            service_name: sanitize(service_name),
            labels: labels.iter().filter(|(_, v)| !v.trim().is_empty()).map(|(k, v)| (k.clone(), sanitize(v))).collect(),
            pid_label,
            // Long enough for a loaded server, short enough that a hung one cannot hold more
            // than a few intervals' worth of pushes back.
            timeout: interval.clamp(Duration::from_secs(2), Duration::from_secs(10)),
            backoff: Backoff { base: Duration::from_millis(500), max: Duration::from_secs(5), attempts: 3 },
        }
    }

    /// The ingest API's `name`: `APP{service_name=APP[,LABEL=VALUE…][,pid=PID]}`.
    pub fn name(&self, pid: Option<u32>) -> String {
        let mut name = format!("{0}{{service_name={0}", self.service_name);
        for (k, v) in &self.labels {
            name.push_str(&format!(",{k}={v}"));
        }
        if let Some(pid) = pid.filter(|_| self.pid_label) {
            name.push_str(&format!(",pid={pid}"));
        }
        name.push('}');
        name
    }
}

/// Application names and label values: letters, digits, `_`, `-`, `.`; anything else becomes `_`
/// (the ingest API's `name` syntax reserves `{`, `}`, `,`, `=`).
pub fn sanitize(s: &str) -> String {
    let out: String =
        s.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') { c } else { '_' }).collect();
    let out = out.trim_matches('_').to_string();
    if out.is_empty() {
        "memprof".into()
    } else {
        out
    }
}

/// One request: an interval's profile (of the target, or of one process).
#[derive(Clone, Debug)]
pub struct Push {
    pub pid: Option<u32>,
    /// UNIX seconds of the interval's start and end.
    pub from: u64,
    pub until: u64,
    /// The uncompressed pprof.
    pub body: Vec<u8>,
}

/// Counts shared with the push thread.
#[derive(Debug, Default)]
struct Counts {
    pushed: AtomicU64,
    dropped: AtomicU64,
    retries: AtomicU64,
    in_flight: AtomicU64,
}

/// Pushes counted so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PushStats {
    pub pushed: u64,
    pub dropped: u64,
    pub retries: u64,
}

struct Shared {
    queue: Mutex<BoundedQueue<Vec<Push>>>,
    wake: Condvar,
    closing: AtomicBool,
    counts: Counts,
}

/// The push thread and its queue.
pub struct Pusher {
    shared: Arc<Shared>,
    done: mpsc::Receiver<()>,
}

impl Pusher {
    pub fn start(config: PyroscopeConfig) -> Result<Self, ExportError> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(BoundedQueue::new(QUEUE_BATCHES)),
            wake: Condvar::new(),
            closing: AtomicBool::new(false),
            counts: Counts::default(),
        });
        let (tx, done) = mpsc::channel();
        let s = shared.clone();
        thread::Builder::new()
            .name("memprof-pyroscope".into())
            .spawn(move || {
                push_loop(&s, &config);
                let _ = tx.send(());
            })
            .map_err(|e| ExportError::Thread(e.to_string()))?;
        Ok(Self { shared, done })
    }

    /// Queues one interval's pushes; a full queue drops its oldest batch (counted).
    pub fn submit(&self, batch: Vec<Push>) {
        if batch.is_empty() {
            return;
        }
        let dropped = lock(&self.shared.queue).push(batch);
        if let Some(old) = dropped {
            self.shared.counts.dropped.fetch_add(old.len() as u64, Ordering::Relaxed);
            warn!("pyroscope: the server is not keeping up; an interval's profile was dropped (pushes_dropped)");
        }
        self.shared.wake.notify_one();
    }

    pub fn stats(&self) -> PushStats {
        let c = &self.shared.counts;
        PushStats {
            pushed: c.pushed.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
        }
    }

    /// At the end of the run: lets the thread send what is queued (one try each) for at most
    /// `grace`, then counts whatever is still queued or in flight as dropped.
    pub fn finish(self, grace: Duration) -> PushStats {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.shared.wake.notify_all();
        let finished = self.done.recv_timeout(grace).is_ok();
        let left = lock(&self.shared.queue).drain();
        let c = &self.shared.counts;
        let mut lost: u64 = left.iter().map(|b| b.len() as u64).sum();
        if !finished {
            lost += c.in_flight.load(Ordering::SeqCst);
        }
        c.dropped.fetch_add(lost, Ordering::Relaxed);
        self.stats()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn push_loop(shared: &Shared, config: &PyroscopeConfig) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(config.timeout))
        .http_status_as_error(false)
        .user_agent(concat!("memprof/", env!("CARGO_PKG_VERSION")))
        .max_idle_connections(2)
        .build()
        .into();
    loop {
        let batch = {
            let mut q = lock(&shared.queue);
            loop {
                if let Some(b) = q.pop() {
                    shared.counts.in_flight.store(b.len() as u64, Ordering::SeqCst);
                    break b;
                }
                if shared.closing.load(Ordering::SeqCst) {
                    return;
                }
                q = shared.wake.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        for push in batch {
            let ok = send_with_retries(&agent, config, &push, shared);
            let c = &shared.counts;
            if ok { &c.pushed } else { &c.dropped }.fetch_add(1, Ordering::Relaxed);
            c.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Sends `push`, retrying per the backoff (only one try once the run is closing). Whether it
/// was accepted.
fn send_with_retries(agent: &ureq::Agent, config: &PyroscopeConfig, push: &Push, shared: &Shared) -> bool {
    let mut attempt = 0;
    loop {
        match send(agent, config, push) {
            Ok(()) => return true,
            Err(e) => {
                let next = config.backoff.delay(attempt + 1);
                let closing = shared.closing.load(Ordering::SeqCst);
                match next {
                    Some(wait) if e.retry && !closing => {
                        debug!("pyroscope: push failed ({}); retrying in {:?}", e.reason, wait);
                        shared.counts.retries.fetch_add(1, Ordering::Relaxed);
                        let until = Instant::now() + wait;
                        while Instant::now() < until && !shared.closing.load(Ordering::SeqCst) {
                            thread::sleep(Duration::from_millis(20));
                        }
                        attempt += 1;
                    }
                    _ => {
                        warn!("pyroscope: push to {} dropped: {}", config.url, e.reason);
                        return false;
                    }
                }
            }
        }
    }
}

struct SendError {
    reason: String,
    /// Worth another try (transport error, 429, 5xx).
    retry: bool,
}

fn send(agent: &ureq::Agent, config: &PyroscopeConfig, push: &Push) -> Result<(), SendError> {
    let mut req = agent
        .post(format!("{}/ingest", config.url))
        .query("name", config.name(push.pid))
        .query("from", push.from.to_string())
        .query("until", push.until.to_string())
        .query("format", "pprof")
        .query("spyName", "memprof")
        .header("Content-Type", "application/octet-stream");
    if let Some(t) = &config.tenant {
        req = req.header("X-Scope-OrgID", t);
    }
    if let Some(a) = &config.auth {
        req = req.header("Authorization", a.header());
    }
    match req.send(&push.body[..]) {
        Ok(resp) => {
            let status = resp.status().as_u16();
            if (200..300).contains(&status) {
                Ok(())
            } else {
                Err(SendError { reason: format!("HTTP {status}"), retry: status == 429 || status >= 500 })
            }
        }
        Err(e) => Err(SendError { reason: e.to_string(), retry: true }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_service_name_and_pid_only_when_asked() {
        let c = PyroscopeConfig::new("http://h:4040/", None, None, "api-service", &[], false, Duration::from_secs(10));
        assert_eq!(c.url, "http://h:4040");
        assert_eq!(c.name(Some(42)), "api-service{service_name=api-service}");
        let c = PyroscopeConfig { pid_label: true, ..c };
        assert_eq!(c.name(Some(42)), "api-service{service_name=api-service,pid=42}");
        let labels = [("node", "node-1"), ("namespace", "shop"), ("pod", "web-7f9c"), ("container", "")]
            .map(|(k, v)| (k.to_string(), v.to_string()));
        let c = PyroscopeConfig::new("http://h", None, None, "web-7f9c", &labels, true, Duration::from_secs(10));
        assert_eq!(c.name(Some(7)), "web-7f9c{service_name=web-7f9c,node=node-1,namespace=shop,pod=web-7f9c,pid=7}");
        assert_eq!(sanitize("docker-ab12.scope"), "docker-ab12.scope");
        assert_eq!(sanitize("pid 42"), "pid_42");
        assert_eq!(sanitize("a{b}=c,d"), "a_b__c_d");
        assert_eq!(sanitize("///"), "memprof");
    }

    #[test]
    fn timeouts_follow_the_interval_within_bounds() {
        let t = |ms| PyroscopeConfig::new("http://h", None, None, "s", &[], false, Duration::from_millis(ms)).timeout;
        assert_eq!(t(200), Duration::from_secs(2));
        assert_eq!(t(5000), Duration::from_secs(5));
        assert_eq!(t(60_000), Duration::from_secs(10));
    }

    #[test]
    fn a_dead_server_drops_pushes_and_the_queue_stays_bounded() {
        // A port nothing listens on: every try fails at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut c =
            PyroscopeConfig::new(&format!("http://127.0.0.1:{port}"), None, None, "s", &[], false, Duration::from_secs(1));
        c.backoff = Backoff { base: Duration::from_millis(10), max: Duration::from_millis(20), attempts: 2 };
        let p = Pusher::start(c).unwrap();
        let push = Push { pid: None, from: 1, until: 2, body: vec![0; 1000] };
        for _ in 0..50 {
            p.submit(vec![push.clone()]);
            assert!(lock(&p.shared.queue).len() <= QUEUE_BATCHES);
        }
        let stats = p.finish(Duration::from_secs(5));
        assert_eq!(stats.pushed, 0);
        assert_eq!(stats.dropped, 50, "{stats:?}");
    }
}
