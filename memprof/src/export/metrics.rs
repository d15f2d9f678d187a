//! `--metrics ADDR`: Prometheus metrics at `http://ADDR/metrics`, in the text format, updated at
//! every snapshot. Labelled by target only (stacks belong in profiles, not in label values):
//! one series per metric, plus one per kind for the lost-event counters.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::{ExportError, Figures};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LostLabels {
    target: String,
    kind: String,
}

type IntGauge = Family<TargetLabels, Gauge>;
type FloatGauge = Family<TargetLabels, Gauge<f64, AtomicU64>>;
type IntCounter = Family<TargetLabels, Counter>;

/// The metric families, shared with the server thread (values are atomics).
#[derive(Default)]
struct Families {
    tracked: IntGauge,
    rss: IntGauge,
    cgroup_usage: IntGauge,
    cgroup_limit: IntGauge,
    oom_eta: FloatGauge,
    top_leak_growth: FloatGauge,
    lost: Family<LostLabels, Counter>,
    oom_kills: IntCounter,
    processes: IntGauge,
}

/// The `/metrics` endpoint: a registry and the thread serving it.
pub struct MetricsServer {
    families: Arc<Families>,
    labels: TargetLabels,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    scrapes: Arc<AtomicU64>,
    addr: SocketAddr,
}

impl MetricsServer {
    /// Binds `addr` (an error if it is taken) and serves `/metrics` from a thread of its own.
    pub fn start(addr: SocketAddr, target: &str) -> Result<Self, ExportError> {
        let server = tiny_http::Server::http(addr).map_err(|e| ExportError::Listen { addr, reason: e.to_string() })?;
        let addr = server.server_addr().to_ip().unwrap_or(addr);
        let families = Arc::new(Families::default());
        let mut registry = Registry::default();
        register(&mut registry, &families);
        let server = Arc::new(server);
        let scrapes = Arc::new(AtomicU64::new(0));
        let thread = {
            let (server, scrapes) = (server.clone(), scrapes.clone());
            std::thread::Builder::new()
                .name("memprof-metrics".into())
                .spawn(move || serve(&server, &registry, &scrapes))
                .map_err(|e| ExportError::Thread(e.to_string()))?
        };
        Ok(Self {
            families,
            labels: TargetLabels { target: target.to_string() },
            server,
            thread: Some(thread),
            scrapes,
            addr,
        })
    }

    /// The address actually bound (the port the system chose for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Scrapes served so far.
    pub fn scrapes(&self) -> u64 {
        self.scrapes.load(Ordering::Relaxed)
    }

    /// Sets every metric from one snapshot's figures. Unknown values (no cgroup limit, no growth
    /// towards OOM) remove their series rather than report a made-up number.
    pub fn update(&self, f: &Figures) {
        let (fam, l) = (&*self.families, &self.labels);
        let set = |g: &IntGauge, v: Option<u64>| match v {
            Some(v) => {
                g.get_or_create(l).set(i64::try_from(v).unwrap_or(i64::MAX));
            }
            None => {
                g.remove(l);
            }
        };
        let set_f = |g: &FloatGauge, v: Option<f64>| match v.filter(|v| v.is_finite()) {
            Some(v) => {
                g.get_or_create(l).set(v);
            }
            None => {
                g.remove(l);
            }
        };
        set(&fam.tracked, Some(f.tracked_bytes));
        set(&fam.rss, f.rss_bytes);
        set(&fam.cgroup_usage, f.cgroup_usage_bytes);
        set(&fam.cgroup_limit, f.cgroup_limit_bytes);
        set_f(&fam.oom_eta, f.oom_eta_s);
        set_f(&fam.top_leak_growth, Some(f.top_leak_growth_bytes_per_s));
        set(&fam.processes, Some(f.processes));
        fam.oom_kills.get_or_create(l).inner().store(f.oom_kills, Ordering::Relaxed);
        for (kind, &v) in &f.lost {
            let key = LostLabels { target: l.target.clone(), kind: kind.clone() };
            fam.lost.get_or_create(&key).inner().store(v, Ordering::Relaxed);
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn register(r: &mut Registry, f: &Families) {
    r.register(
        "memprof_tracked_bytes",
        "Outstanding bytes memprof tracks (allocations not freed, accessible anonymous mappings)",
        f.tracked.clone(),
    );
    r.register("memprof_rss_bytes", "Resident set size of the target's processes, summed", f.rss.clone());
    r.register("memprof_cgroup_usage_bytes", "Memory usage of the target's memory cgroup", f.cgroup_usage.clone());
    r.register(
        "memprof_cgroup_limit_bytes",
        "Memory limit of the target's memory cgroup (absent when unlimited)",
        f.cgroup_limit.clone(),
    );
    r.register(
        "memprof_oom_eta_seconds",
        "Seconds until the cgroup reaches its limit at the current growth (absent without a limit or growth)",
        f.oom_eta.clone(),
    );
    r.register(
        "memprof_top_leak_growth_bytes_per_second",
        "Growth rate of the fastest-growing stack classified as a leak (0 when none is)",
        f.top_leak_growth.clone(),
    );
    // Counters: the text encoder appends `_total`.
    r.register("memprof_lost_events", "Events memprof lost or could not record, by kind", f.lost.clone());
    r.register("memprof_oom_kills", "Target processes the kernel OOM-killed", f.oom_kills.clone());
    r.register("memprof_processes", "Live processes of the target", f.processes.clone());
}

/// The server loop: `GET /metrics` is answered with the registry in the text format, anything
/// else with 404. Ends when the server is unblocked.
fn serve(server: &tiny_http::Server, registry: &Registry, scrapes: &AtomicU64) {
    for request in server.incoming_requests() {
        let path = request.url().split('?').next().unwrap_or("");
        let response = if path == "/metrics" && *request.method() == tiny_http::Method::Get {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => {
                    scrapes.fetch_add(1, Ordering::Relaxed);
                    text_response(200, body, CONTENT_TYPE)
                }
                Err(e) => text_response(500, format!("encoding failed: {e}\n"), "text/plain"),
            }
        } else {
            text_response(404, "memprof serves /metrics only\n".into(), "text/plain")
        };
        // A scraper that went away is its own business.
        let _ = request.respond(response);
    }
}

/// prometheus-client writes OpenMetrics text (`# EOF` at the end), which Prometheus reads.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn text_response(code: u16, body: String, content_type: &str) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let header = tiny_http::Header::from_bytes("Content-Type", content_type).expect("a valid header");
    tiny_http::Response::from_data(body.into_bytes()).with_status_code(code).with_header(header)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_the_figures_in_the_text_format() {
        let m = MetricsServer::start("127.0.0.1:0".parse().unwrap(), "api-service").unwrap();
        let mut f = Figures {
            tracked_bytes: 1_048_576,
            rss_bytes: Some(4_000_000),
            cgroup_usage_bytes: Some(5_000_000),
            cgroup_limit_bytes: Some(64 << 20),
            oom_eta_s: Some(3600.5),
            top_leak_growth_bytes_per_s: 100_000.0,
            oom_kills: 1,
            processes: 3,
            ..Default::default()
        };
        f.lost.insert("events_dropped".into(), 7);
        m.update(&f);
        let out = get(m.addr(), "/metrics");
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        for line in [
            "memprof_tracked_bytes{target=\"api-service\"} 1048576",
            "memprof_rss_bytes{target=\"api-service\"} 4000000",
            "memprof_cgroup_usage_bytes{target=\"api-service\"} 5000000",
            "memprof_cgroup_limit_bytes{target=\"api-service\"} 67108864",
            "memprof_oom_eta_seconds{target=\"api-service\"} 3600.5",
            "memprof_top_leak_growth_bytes_per_second{target=\"api-service\"} 100000.0",
            "memprof_lost_events_total{target=\"api-service\",kind=\"events_dropped\"} 7",
            "memprof_oom_kills_total{target=\"api-service\"} 1",
            "memprof_processes{target=\"api-service\"} 3",
            "# TYPE memprof_lost_events counter",
            "# EOF",
        ] {
            assert!(out.lines().any(|l| l == line), "no line {line:?} in:\n{out}");
        }
        // No limit, no ETA: those series go away rather than read 0.
        m.update(&Figures { cgroup_limit_bytes: None, oom_eta_s: None, ..f });
        let out = get(m.addr(), "/metrics");
        assert!(!out.contains("memprof_cgroup_limit_bytes{"), "{out}");
        assert!(!out.contains("memprof_oom_eta_seconds{"), "{out}");
        assert!(get(m.addr(), "/other").starts_with("HTTP/1.1 404"));
        assert_eq!(m.scrapes(), 2);
    }

    #[test]
    fn a_taken_port_is_an_error() {
        let first = MetricsServer::start("127.0.0.1:0".parse().unwrap(), "t").unwrap();
        let Err(err) = MetricsServer::start(first.addr(), "t") else { panic!("bound twice") };
        assert!(err.to_string().contains(&first.addr().to_string()), "{err}");
    }
}
