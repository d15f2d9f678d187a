//! Feeding other systems while the run goes on: Prometheus metrics (`--metrics ADDR`,
//! [`metrics`]) and profiles pushed to Grafana Pyroscope (`--pyroscope URL`, [`pyroscope`]).
//! Both run on threads of their own and are updated at every snapshot from what the run has
//! already computed; neither can block the run or grow its memory.

pub mod metrics;
pub mod pyroscope;
pub mod queue;

use std::{
    collections::{BTreeMap, HashMap},
    net::{SocketAddr, ToSocketAddrs},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use thiserror::Error;

use crate::{output::pprof::encode_profile, report::StackReport};
pub use metrics::MetricsServer;
pub use pyroscope::{Auth, PushStats, Pusher, PyroscopeConfig};

/// How long the end of a run waits for queued pushes.
pub const FINAL_PUSH_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum ExportError {
    #[error("cannot serve --metrics on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
    #[error("pyroscope credentials: {0}")]
    Auth(String),
    #[error("cannot start a thread: {0}")]
    Thread(String),
}

/// One snapshot's figures, as the run computed them.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    pub tracked_bytes: u64,
    pub rss_bytes: Option<u64>,
    pub cgroup_usage_bytes: Option<u64>,
    pub cgroup_limit_bytes: Option<u64>,
    pub oom_eta_s: Option<f64>,
    /// The fastest growth among stacks classified as leaks (0 when none is).
    pub top_leak_growth_bytes_per_s: f64,
    /// Loss counters by name.
    pub lost: BTreeMap<String, u64>,
    pub oom_kills: u64,
    pub processes: u64,
}

/// What the user asked for (`--metrics`, `--pyroscope*`).
#[derive(Clone, Debug, Default)]
pub struct ExportOptions {
    pub metrics: Option<SocketAddr>,
    pub pyroscope: Option<String>,
    pub pyroscope_tenant: Option<String>,
    pub pyroscope_pid: bool,
}

/// The exporters of a run.
#[derive(Default)]
pub struct Exporters {
    pub metrics: Option<MetricsServer>,
    pub pyroscope: Option<Pusher>,
    /// With `--pyroscope-pid`: one profile per process.
    per_pid: bool,
    /// The end of the last pushed interval.
    last_until: Option<SystemTime>,
    /// Allocations ever made per (process, stack) at the last push: the next push's
    /// `alloc_*` values are the differences.
    alloc_totals: HashMap<(Option<u32>, Vec<String>), (u64, u64)>,
}

impl Exporters {
    /// Binds the metrics address and starts the push thread; an address in use or bad
    /// credentials are errors. `service_name` names the target in Pyroscope.
    pub fn start(
        opts: &ExportOptions,
        target: &str,
        service_name: &str,
        labels: &[(String, String)],
        interval: Duration,
    ) -> Result<Self, ExportError> {
        let metrics = opts.metrics.map(|addr| MetricsServer::start(addr, target)).transpose()?;
        let pyroscope = match &opts.pyroscope {
            Some(url) => {
                let auth = Auth::from_env()?;
                let config = PyroscopeConfig::new(
                    url,
                    opts.pyroscope_tenant.clone(),
                    auth,
                    service_name,
                    labels,
                    opts.pyroscope_pid,
                    interval,
                );
                Some(Pusher::start(config)?)
            }
            None => None,
        };
        Ok(Self { metrics, pyroscope, per_pid: opts.pyroscope_pid, ..Self::default() })
    }

    /// Whether anything is exported.
    pub fn active(&self) -> bool {
        self.metrics.is_some() || self.pyroscope.is_some()
    }

    /// `None` without `--pyroscope`, else whether profiles go per process.
    pub fn wants_profiles(&self) -> Option<bool> {
        self.pyroscope.as_ref().map(|_| self.per_pid)
    }

    /// Updates the metrics.
    pub fn update_metrics(&self, figures: &Figures) {
        if let Some(m) = &self.metrics {
            m.update(figures);
        }
    }

    /// Queues the profiles of the interval that ends `now` (it began where the last one ended,
    /// or at `started`): `groups` are the live stacks of the target (pid `None`) or of each
    /// process.
    pub fn push_profiles(
        &mut self,
        groups: Vec<(Option<u32>, Vec<StackReport>)>,
        started: SystemTime,
        now: SystemTime,
    ) {
        let Some(pusher) = &self.pyroscope else { return };
        let from = self.last_until.unwrap_or(started);
        let now = now.max(from);
        self.last_until = Some(now);
        let (from_ns, until_ns) = (unix_ns(from), unix_ns(now));
        let mut totals = HashMap::new();
        let mut batch = Vec::with_capacity(groups.len());
        for (pid, stacks) in groups {
            let interval = interval_stacks(&stacks, pid, &self.alloc_totals, &mut totals);
            batch.push(pyroscope::Push {
                pid,
                from: (from_ns / 1_000_000_000) as u64,
                until: (until_ns / 1_000_000_000) as u64,
                body: encode_profile(&interval, until_ns - from_ns, from_ns),
            });
        }
        // Only the stacks live now are remembered: the map never outgrows one snapshot.
        self.alloc_totals = totals;
        pusher.submit(batch);
    }

    /// Push counts so far (None without `--pyroscope`).
    pub fn push_stats(&self) -> Option<PushStats> {
        self.pyroscope.as_ref().map(Pusher::stats)
    }

    /// Ends the push thread (queued pushes get [`FINAL_PUSH_GRACE`]) and the metrics server.
    pub fn finish(&mut self) -> Option<PushStats> {
        self.metrics = None;
        self.pyroscope.take().map(|p| p.finish(FINAL_PUSH_GRACE))
    }
}

/// The interval's view of `stacks`: in-use values as they stand, `alloc_*` (the `total_*` fields
/// pprof encodes as `alloc_space`/`alloc_objects`) as what was allocated since the last push.
/// `now` receives the totals to compare with next time.
fn interval_stacks(
    stacks: &[StackReport],
    pid: Option<u32>,
    before: &HashMap<(Option<u32>, Vec<String>), (u64, u64)>,
    now: &mut HashMap<(Option<u32>, Vec<String>), (u64, u64)>,
) -> Vec<StackReport> {
    stacks
        .iter()
        .map(|s| {
            let key = (pid, s.frames.clone());
            let (b0, n0) = before.get(&key).copied().unwrap_or((0, 0));
            now.insert(key, (s.total_bytes, s.total_allocations));
            StackReport {
                total_bytes: s.total_bytes.saturating_sub(b0),
                total_allocations: s.total_allocations.saturating_sub(n0),
                ..s.clone()
            }
        })
        .collect()
}

fn unix_ns(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// `--metrics`: `HOST:PORT`, `[V6]:PORT`, or `:PORT` (every address).
pub fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    let spec = if s.starts_with(':') { format!("0.0.0.0{s}") } else { s.to_string() };
    if let Ok(a) = spec.parse::<SocketAddr>() {
        return Ok(a);
    }
    let bad = || format!("{s:?} is not an address to listen on (HOST:PORT, [::1]:PORT or :PORT)");
    if !spec.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) {
        return Err(bad());
    }
    spec.to_socket_addrs().ok().and_then(|mut a| a.next()).ok_or_else(bad)
}

/// `--pyroscope`: an `http://` or `https://` URL with a host.
pub fn parse_pyroscope_url(s: &str) -> Result<String, String> {
    let bad = |why: &str| format!("{s:?} is not a Pyroscope URL ({why}; e.g. http://pyroscope:4040)");
    let uri: ureq::http::Uri = s.parse().map_err(|_| bad("unparseable"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(bad("the scheme must be http or https")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if uri.query().is_some() {
        return Err(bad("no query string: memprof adds the ingest parameters"));
    }
    Ok(s.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_listen_addr("127.0.0.1:9464").unwrap(), "127.0.0.1:9464".parse().unwrap());
        assert_eq!(parse_listen_addr(":9464").unwrap(), "0.0.0.0:9464".parse().unwrap());
        assert_eq!(parse_listen_addr("[::1]:80").unwrap(), "[::1]:80".parse().unwrap());
        assert!(parse_listen_addr("localhost:9464").unwrap().ip().is_loopback());
        for bad in ["", "9464", "127.0.0.1", "127.0.0.1:99999", "host:port", ":"] {
            assert!(parse_listen_addr(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn pyroscope_urls() {
        assert_eq!(parse_pyroscope_url("http://pyroscope:4040/").unwrap(), "http://pyroscope:4040");
        assert_eq!(parse_pyroscope_url("https://p.example/prefix").unwrap(), "https://p.example/prefix");
        for bad in ["pyroscope:4040", "ftp://h", "http://", "not a url", "http://h/?a=b"] {
            assert!(parse_pyroscope_url(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn alloc_values_are_the_interval_deltas() {
        let s = |frames: &[&str], live: u64, total: u64| StackReport {
            frames: frames.iter().map(|f| f.to_string()).collect(),
            bytes: live,
            allocations: live / 10,
            total_bytes: total,
            total_allocations: total / 10,
            ..Default::default()
        };
        let (mut before, mut now) = (HashMap::new(), HashMap::new());
        let first = interval_stacks(&[s(&["a"], 100, 500)], None, &before, &mut now);
        assert_eq!((first[0].bytes, first[0].total_bytes, first[0].total_allocations), (100, 500, 50));
        before = std::mem::take(&mut now);
        let second = interval_stacks(&[s(&["a"], 150, 800), s(&["b"], 10, 10)], None, &before, &mut now);
        assert_eq!((second[0].bytes, second[0].total_bytes, second[0].total_allocations), (150, 300, 30));
        assert_eq!(second[1].total_bytes, 10);
        // Per process: the same frames in another pid are another series.
        let other = interval_stacks(&[s(&["a"], 1, 800)], Some(7), &now, &mut HashMap::new());
        assert_eq!(other[0].total_bytes, 800);
    }
}
