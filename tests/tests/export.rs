//! Feeding other systems (issue 14): `--metrics` scraped by a real Prometheus (Debian's), and
//! `--pyroscope` pushes received by a loopback stand-in for Pyroscope's ingest API, each pprof
//! decoded by protoc; a Pyroscope that answers 503 or hangs must leave memprof's memory flat.
//!
//! Run serially: `cargo test -p memprof-tests -- --test-threads=1`.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use memprof_tests::{export::*, *};
use serde_json::Value;

/// The leak sites of leaky.c checked in the pushed profiles.
const SITES: [&str; 3] = ["leak_malloc", "leak_calloc", "leak_posix_memalign"];

fn sample_value(result: &Value) -> f64 {
    result["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no value in {result}"))
}

/// The one series of `query`, or None while Prometheus has none.
fn one_series(prom: &Prometheus, query: &str) -> Option<(Value, f64)> {
    let answer = prom.query(query);
    assert_eq!(answer["status"], "success", "{query}: {answer}");
    let results = answer["data"]["result"].as_array().cloned().unwrap_or_default();
    assert!(results.len() <= 1, "{query}: more than one series: {answer}");
    results.first().map(|r| (answer.clone(), sample_value(r)))
}

#[test]
fn prometheus_scrapes_tracked_bytes_of_the_target() {
    require_root();
    let cg = TestCgroup::new();
    let limit: u64 = 512 << 20;
    let mem = MemoryCgroup::new(&cg, "metrics", limit);
    let mut fx = Fixture::start("leaky", &[], Some(&cg));
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = output_dir("export-prometheus");
    let args = [
        "--cgroup".to_string(),
        cg.name(),
        "--interval".into(),
        "1s".into(),
        "--metrics".into(),
        metrics.to_string(),
        "--output".into(),
        dir.display().to_string(),
    ];
    let mut mp = Memprof::start(&args);
    mp.wait_attached(ATTACH_TIMEOUT);
    let prom = Prometheus::start(metrics, tempdir("prometheus"));
    fx.go();
    let truth = fx.wait_truth();
    let leaked: u64 = truth.sites.values().sum();
    let query = format!("memprof_tracked_bytes{{target=\"{}\"}}", cg.name());

    // Prometheus scrapes every second; memprof snapshots every second: wait for a value that
    // holds the leaks, then for the next scrapes to settle on one value.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let (answer, scraped) = loop {
        assert!(
            Instant::now() < deadline,
            "Prometheus never had {query} >= {leaked} (values {seen:?}); memprof:\n{}\nprometheus:\n{}",
            mp.stderr(),
            prom.log()
        );
        if let Some((answer, v)) = one_series(&prom, &query) {
            seen.push(v);
            let n = seen.len();
            if v >= leaked as f64 && n >= 3 && seen[n - 3..].iter().all(|&x| x == v) {
                break (answer, v);
            }
        }
        sleep(Duration::from_millis(700));
    };
    println!("prometheus: {query} -> {}", serde_json::to_string(&answer).unwrap());

    // The other metrics, as Prometheus stored them.
    let q = |name: &str| one_series(&prom, &format!("{name}{{target=\"{}\"}}", cg.name())).map(|(_, v)| v);
    assert_eq!(q("memprof_processes"), Some(1.0));
    assert!(q("memprof_rss_bytes").is_some_and(|v| v > 0.0));
    assert!(q("memprof_cgroup_usage_bytes").is_some_and(|v| v > 0.0));
    if mem.v1_dir().is_none() {
        assert_eq!(q("memprof_cgroup_limit_bytes"), Some(limit as f64));
    }
    assert_eq!(q("memprof_oom_kills_total"), Some(0.0));
    assert!(q("memprof_top_leak_growth_bytes_per_second").is_some());
    let lost = prom.query(&format!("memprof_lost_events_total{{target=\"{}\",kind=\"events_dropped\"}}", cg.name()));
    assert_eq!(lost["data"]["result"].as_array().map(Vec::len), Some(1), "{lost}");
    // Labelled by target only (and kind for the lost events); Prometheus adds job and instance.
    let all = prom.query("{__name__=~\"memprof_.+\"}");
    for series in all["data"]["result"].as_array().unwrap() {
        for (label, _) in series["metric"].as_object().unwrap() {
            assert!(
                ["__name__", "job", "instance", "target", "kind"].contains(&label.as_str()),
                "unexpected label {label} in {series}"
            );
        }
    }

    mp.interrupt();
    mp.finish_ok(FINISH_TIMEOUT);
    let summary = read_summary(&dir);
    let tracked = summary["memory"]["tracked_bytes"].as_u64().expect("memory.tracked_bytes");
    let err = error_pct(tracked, scraped as u64);
    println!("tracked bytes: summary.json {tracked}, Prometheus {scraped} ({err:+.3} %), leaked {leaked}");
    assert!(err.abs() <= TOLERANCE_PCT, "Prometheus {scraped} vs summary.json {tracked}: {err:+.3} %");
}

/// memprof with `--pyroscope` at `server`, on leaky.c in a cgroup; returns the summary.
fn profile_with_pyroscope(
    label: &str,
    extra: &[&str],
    env: &[(&str, &str)],
    server: &IngestServer,
) -> (TestCgroup, GroundTruth, Value) {
    let cg = TestCgroup::new();
    let mut fx = Fixture::start("leaky", &[], Some(&cg));
    let dir = output_dir(label);
    let mut args = vec![
        "--cgroup".to_string(),
        cg.name(),
        "--interval".into(),
        "1s".into(),
        "--pyroscope".into(),
        server.url(),
        "--output".into(),
        dir.display().to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let mut mp = Memprof::start_with(&args, |c| {
        c.env_remove("MEMPROF_PYROSCOPE_TOKEN").env_remove("MEMPROF_PYROSCOPE_BASIC_AUTH");
        for (k, v) in env {
            c.env(k, v);
        }
    });
    mp.wait_attached(ATTACH_TIMEOUT);
    sleep(Duration::from_millis(1500));
    fx.go();
    let truth = fx.wait_truth();
    sleep(Duration::from_secs(3));
    mp.interrupt();
    mp.finish_ok(FINISH_TIMEOUT);
    let summary = read_summary(&dir);
    (cg, truth, summary)
}

fn stack_totals(summary: &Value, func: &str) -> (u64, u64) {
    stacks_with(summary, func).iter().fold((0, 0), |(b, n), s| {
        (b + s["total_bytes"].as_u64().unwrap(), n + s["total_allocations"].as_u64().unwrap())
    })
}

#[test]
fn pyroscope_receives_every_interval_as_pprof() {
    require_root();
    let server = IngestServer::start(Answer::Accept);
    let (cg, truth, summary) = profile_with_pyroscope(
        "export-pyroscope",
        &["--pyroscope-tenant", "team-a"],
        &[("MEMPROF_PYROSCOPE_TOKEN", "s3cret-token")],
        &server,
    );
    let pushes = server.received();
    assert!(pushes.len() >= 5, "{} pushes", pushes.len());
    assert_eq!(summary["lost"]["pushes_dropped"], 0, "{}", summary["lost"]);
    assert_eq!(summary["stats"]["pyroscope_pushes"].as_u64(), Some(pushes.len() as u64));
    let svc = cg.name();
    let node = node_label();
    let profiles: Vec<DecodedProfile> = pushes.iter().map(|p| decode_pprof(&p.body)).collect();
    for (i, (push, prof)) in pushes.iter().zip(&profiles).enumerate() {
        assert_eq!(push.path, "/ingest");
        let q = |k: &str| push.query.get(k).map(String::as_str);
        assert_eq!(q("name"), Some(format!("{svc}{{service_name={svc},node={node}}}").as_str()), "push {i}: {:?}", push.query);
        assert_eq!(q("format"), Some("pprof"));
        assert_eq!(q("spyName"), Some("memprof"));
        assert_eq!(push.headers.get("x-scope-orgid").map(String::as_str), Some("team-a"));
        assert_eq!(push.headers.get("authorization").map(String::as_str), Some("Bearer s3cret-token"));
        assert_eq!(prof.sample_types, ["inuse_space", "inuse_objects", "alloc_space", "alloc_objects"]);
        // from/until are the pprof's own time range, in seconds.
        let (from, until) = (prof.time_nanos / 1_000_000_000, (prof.time_nanos + prof.duration_nanos) / 1_000_000_000);
        assert_eq!(q("from"), Some(from.to_string().as_str()), "push {i}");
        assert_eq!(q("until"), Some(until.to_string().as_str()), "push {i}");
        if i > 0 {
            let prev = &profiles[i - 1];
            assert_eq!(
                prof.time_nanos,
                prev.time_nanos + prev.duration_nanos,
                "push {i} does not start where {} ended",
                i - 1
            );
        }
        // Whole intervals (not the first, which includes the attach, nor the last, cut by SIGINT).
        if i > 0 && i + 1 < profiles.len() {
            let d = prof.duration_nanos as f64 / 1e9;
            assert!((0.5..=3.0).contains(&d), "push {i} covers {d} s with --interval 1s");
        }
    }
    println!("first push: {:?}", pushes[0].query);
    let last = profiles.last().unwrap();
    let leak_push = profiles.iter().zip(&pushes).find(|(p, _)| p.site(2, "leak_malloc") > 0).unwrap();
    println!(
        "the push where leak_malloc allocated: {:?}\nprotoc: sample_types {:?}, time_nanos: {}, duration_nanos: {}, leak_malloc values {:?}",
        leak_push.1.query,
        leak_push.0.sample_types,
        leak_push.0.time_nanos,
        leak_push.0.duration_nanos,
        leak_push.0.samples.iter().find(|s| s.functions.iter().any(|f| f == "leak_malloc")).map(|s| &s.values),
    );
    let head: Vec<&str> =
        leak_push.0.text.lines().filter(|l| l.starts_with("time_nanos") || l.starts_with("duration_nanos")).collect();
    println!("protoc text: {head:?}");
    // In use: the last push is the final snapshot, the one summary.json describes.
    assert_eq!(last.total(0), summary["live_bytes"].as_i64().unwrap());
    for site in SITES {
        let expected = truth.sites[site];
        let pushed = last.site(0, site);
        assert!(
            error_pct(expected, pushed as u64).abs() <= TOLERANCE_PCT,
            "{site}: truth {expected}, last push {pushed}"
        );
        // Allocated: each push holds its interval's share; together, all of the run's.
        let (bytes, count) = stack_totals(&summary, site);
        let (sum_b, sum_n): (i64, i64) =
            profiles.iter().map(|p| (p.site(2, site), p.site(3, site))).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        assert_eq!((sum_b as u64, sum_n as u64), (bytes, count), "{site}: alloc_* over the pushes vs summary.json");
        assert!(
            profiles.iter().filter(|p| p.site(2, site) > 0).count() < profiles.len(),
            "{site}: allocated in every interval?"
        );
    }
}

#[test]
fn pyroscope_pid_label_only_when_asked() {
    require_root();
    let server = IngestServer::start(Answer::Accept);
    let (cg, truth, _) = profile_with_pyroscope(
        "export-pyroscope-pid",
        &["--pyroscope-pid"],
        &[("MEMPROF_PYROSCOPE_BASIC_AUTH", "user:pa:ss")],
        &server,
    );
    let pushes = server.received();
    assert!(!pushes.is_empty());
    let svc = cg.name();
    let name = format!("{svc}{{service_name={svc},node={},pid={}}}", node_label(), truth.pid);
    assert!(pushes.iter().any(|p| p.query.get("name") == Some(&name)), "no push named {name}");
    for p in &pushes {
        assert_eq!(p.headers.get("authorization").map(String::as_str), Some("Basic dXNlcjpwYTpzcw=="));
        assert!(p.headers.get("x-scope-orgid").is_none());
    }
}

/// memprof against a server that fails every push, at a tiny interval: its RSS must stay flat and
/// the drops be counted.
fn stays_flat_when_pyroscope(answer: Answer, label: &str) {
    let server = IngestServer::start(answer);
    let cg = TestCgroup::new();
    let mut fx = Fixture::start("leaky", &[], Some(&cg));
    let dir = output_dir(label);
    let args = [
        "--cgroup".to_string(),
        cg.name(),
        "--interval".into(),
        "200ms".into(),
        "--duration".into(),
        "30s".into(),
        "--pyroscope".into(),
        server.url(),
        "--output".into(),
        dir.display().to_string(),
    ];
    let mut mp = Memprof::start(&args);
    mp.wait_attached(ATTACH_TIMEOUT);
    fx.go();
    fx.wait_truth();
    // Past start-up (symbolizer caches, the first pushes queued): the baseline.
    sleep(Duration::from_secs(8));
    let base = vm_rss(mp.pid());
    let mut peak = base;
    while mp.is_running() {
        peak = peak.max(vm_rss(mp.pid()));
        sleep(Duration::from_millis(500));
    }
    let run = mp.finish_ok(FINISH_TIMEOUT);
    let summary = read_summary(&dir);
    let dropped = summary["lost"]["pushes_dropped"].as_u64().expect("lost.pushes_dropped");
    let snapshots = summary["snapshots"].as_array().map_or(0, Vec::len);
    let growth = peak.saturating_sub(base);
    println!(
        "{answer:?}: memprof VmRSS {:.1} MiB after 8 s, peak {:.1} MiB (+{:.2} MiB) over {snapshots} snapshots; \
         pushes_dropped {dropped}, pushed {}, connections {}",
        base as f64 / 1048576.0,
        peak as f64 / 1048576.0,
        growth as f64 / 1048576.0,
        summary["stats"]["pyroscope_pushes"],
        *server.connections.lock().unwrap()
    );
    assert!(base > 0, "no VmRSS for memprof");
    assert!(growth < 4 << 20, "memprof grew {growth} B while Pyroscope was {answer:?}");
    assert!(dropped > 50, "pushes_dropped {dropped} with ~200 intervals against {answer:?}");
    assert_eq!(summary["stats"]["pyroscope_pushes"], 0);
    assert!(
        run.stderr.contains("pushes_dropped") || run.stdout.contains("pushes_dropped"),
        "drops not shown:\n{}",
        run.stdout
    );
    assert!(*server.connections.lock().unwrap() > 0, "memprof never reached the server");
}

#[test]
fn pyroscope_answering_503_keeps_memprof_flat() {
    require_root();
    stays_flat_when_pyroscope(Answer::Unavailable, "export-pyroscope-503");
}

#[test]
fn pyroscope_hanging_keeps_memprof_flat() {
    require_root();
    stays_flat_when_pyroscope(Answer::Hang, "export-pyroscope-hang");
}

#[test]
fn export_bad_input() {
    require_root();
    let fx = Fixture::start("leaky", &[], None);
    let pid = fx.pid().to_string();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let out = output_dir("export-bad-input").display().to_string();
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec!["--pid", pid.as_str(), "--duration", "5s", "--output", out.as_str()];
        args.extend_from_slice(extra);
        Memprof::start_with(&args, |c| {
            c.env_remove("RUST_LOG").env_remove("MEMPROF_PYROSCOPE_TOKEN").env_remove("MEMPROF_PYROSCOPE_BASIC_AUTH");
            for (k, v) in env {
                c.env(k, v);
            }
        })
        .finish(Duration::from_secs(30))
    };
    let cases: [(&[&str], &[(&str, &str)], &str); 6] = [
        (&["--metrics", "nonsense"], &[], "--metrics"),
        (&["--metrics", &taken], &[], &taken),
        (&["--pyroscope", "pyroscope:4040"], &[], "--pyroscope"),
        (&["--pyroscope", "ftp://h"], &[], "scheme"),
        (&["--pyroscope-tenant", "t"], &[], "--pyroscope"),
        (
            &["--pyroscope", "http://127.0.0.1:9"],
            &[("MEMPROF_PYROSCOPE_TOKEN", "a"), ("MEMPROF_PYROSCOPE_BASIC_AUTH", "u:p")],
            "not both",
        ),
    ];
    for (extra, env, needle) in cases {
        let done = run(extra, env);
        assert_usage_error(&done, &format!("{extra:?}"));
        assert!(done.stderr.contains(needle), "{extra:?}: {:?} not in {}", needle, done.stderr);
    }
    let done = run(&["--pyroscope", "http://127.0.0.1:9"], &[("MEMPROF_PYROSCOPE_BASIC_AUTH", "no-colon")]);
    assert_usage_error(&done, "basic auth without a colon");
}

/// The `node` label memprof gives every push: the host name, sanitized as Pyroscope label values
/// are (letters, digits, `_`, `-`, `.`).
fn node_label() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("/proc/sys/kernel/hostname");
    let out: String = host
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') { c } else { '_' })
        .collect();
    out.trim_matches('_').to_string()
}
