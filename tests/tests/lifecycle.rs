//! Processes that come and go while memprof runs.
//!
//! Run serially: `cargo test -p memprof-tests -- --test-threads=1`.

use std::time::Duration;

use memprof_tests::*;

/// Two fixtures in one cgroup; one leaks and exits. Its allocations were freed by the kernel, so
/// they must not be reported, while the live one's are, exactly.
#[test]
fn exited_process_leaks_are_not_reported() {
    require_root();
    let cg = TestCgroup::new();
    let mut stays = Fixture::start("leaky", &[], Some(&cg));
    let mut exits = Fixture::start("leaky", &["--exit"], Some(&cg));
    let dir = output_dir("lifecycle-exited");
    let mut mp = Memprof::start(&[
        "--cgroup".into(),
        cg.name(),
        "--interval".into(),
        "1s".into(),
        "--output".into(),
        dir.display().to_string(),
    ]);
    mp.wait_attached(ATTACH_TIMEOUT);
    stays.go();
    exits.go();
    let truth = stays.wait_truth();
    let gone = exits.wait_truth();
    let status = exits.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "leaky --exit failed: {status}");

    sleep(Duration::from_secs(2));
    assert!(
        mp.is_running(),
        "memprof ended although a target process is alive:\n{}",
        mp.stderr()
    );
    mp.interrupt();
    mp.finish_ok(FINISH_TIMEOUT);
    let summary = read_summary(&dir);

    assert_accurate(
        "leaky.c (alive) beside a leaky.c that exited",
        &truth,
        &summary,
    );
    assert!(
        !stack_pids(&summary).contains(&gone.pid),
        "pid {} exited but still has stacks:\n{}",
        gone.pid,
        describe_stacks(&summary)
    );
    let processes = summary["processes"].as_array().expect("summary.processes");
    let entry = processes
        .iter()
        .find(|p| p["pid"].as_u64() == Some(gone.pid as u64))
        .unwrap_or_else(|| panic!("pid {} missing from summary.processes", gone.pid));
    assert_eq!(entry["alive"], false, "pid {} exited: {entry}", gone.pid);
    let alive = processes
        .iter()
        .find(|p| p["pid"].as_u64() == Some(truth.pid as u64))
        .unwrap_or_else(|| panic!("pid {} missing from summary.processes", truth.pid));
    assert_eq!(alive["alive"], true, "pid {} is alive: {alive}", truth.pid);
    assert_eq!(summary["end_reason"], "signal");
}

/// memprof keeps running while any target process is alive, and ends by itself (exit 0,
/// `end_reason: targets_exited`) once all are gone.
#[test]
fn ends_when_all_targets_exit() {
    require_root();
    let cg = TestCgroup::new();
    let mut killed = Fixture::start("leaky", &[], Some(&cg));
    let mut exits = Fixture::start("leaky", &["--exit"], Some(&cg));
    let dir = output_dir("lifecycle-all-exit");
    // --duration only as a safety net: the run must end long before it.
    let mut mp = Memprof::start(&[
        "--cgroup".into(),
        cg.name(),
        "--interval".into(),
        "1s".into(),
        "--duration".into(),
        "300s".into(),
        "--output".into(),
        dir.display().to_string(),
    ]);
    mp.wait_attached(ATTACH_TIMEOUT);
    killed.go();
    exits.go();
    let truth_killed = killed.wait_truth();
    let truth_exits = exits.wait_truth();
    exits.wait_exit(Duration::from_secs(30));

    sleep(Duration::from_secs(2));
    assert!(
        mp.is_running(),
        "memprof ended while pid {} is alive:\n{}",
        killed.pid(),
        mp.stderr()
    );
    killed.kill();
    assert!(
        cg.pids().is_empty(),
        "the cgroup should be empty now: {:?}",
        cg.pids()
    );

    // No SIGINT: memprof must notice by itself.
    let done = mp.finish_ok(Duration::from_secs(60));
    let summary = read_summary(&dir);
    assert_eq!(
        summary["end_reason"], "targets_exited",
        "stderr:\n{}",
        done.stderr
    );
    let pids = stack_pids(&summary);
    for pid in [truth_killed.pid, truth_exits.pid] {
        assert!(
            !pids.contains(&pid),
            "pid {pid} has exited but still has stacks"
        );
    }
    assert!(
        dir.join("leaks.folded").is_file(),
        "leaks.folded is missing"
    );
    assert!(dir.join("leaks.svg").is_file(), "leaks.svg is missing");
}

/// A process that enters the cgroup after memprof attached is adopted and profiled.
#[test]
fn late_process_is_adopted() {
    require_root();
    let cg = TestCgroup::new();
    let _first = Fixture::start("leaky", &[], Some(&cg));
    let dir = output_dir("lifecycle-late");
    let mut mp = Memprof::start(&[
        "--cgroup".into(),
        cg.name(),
        "--interval".into(),
        "1s".into(),
        "--output".into(),
        dir.display().to_string(),
    ]);
    mp.wait_attached(ATTACH_TIMEOUT);
    let mut late = Fixture::start("leaky", &[], Some(&cg));
    // memprof polls the cgroup every 200 ms; give it ample time to attach to the newcomer.
    sleep(Duration::from_secs(3));
    late.go();
    let truth = late.wait_truth();
    sleep(Duration::from_secs(2));
    mp.interrupt();
    mp.finish_ok(FINISH_TIMEOUT);
    let summary = read_summary(&dir);
    assert_accurate("leaky.c started after memprof attached", &truth, &summary);
}

/// An allocator library loaded with dlopen() after memprof attached gets probes within a second
/// (the executable mapping of new code makes memprof rescan the process).
#[test]
fn dlopened_allocator_is_probed() {
    require_root();
    let cg = TestCgroup::new();
    let mut fx = Fixture::start("dlopener", &[], Some(&cg));
    let p = profile_fixture(&mut fx, &["--cgroup".into(), cg.name()], "lifecycle-dlopen");
    assert_accurate("dlopener.c (mimalloc loaded at run time)", &p.truth, &p.summary);
    let probes = p.summary["probes"].as_array().expect("probes");
    assert!(
        probes.iter().any(|pr| pr["object"].as_str().is_some_and(|o| o.contains("libmimalloc"))
            && pr["function"] == "malloc"
            && pr["attached"] == true),
        "no probe on the dlopened mimalloc: {probes:?}"
    );
}

/// A cgroup whose shell starts short-lived processes all the time (health checks, `sh -c`
/// workers) beside a leaking process: the short-lived ones are counted, not probed (they exit
/// before they are 0.5 s old) and not listed one by one; the leak is still measured exactly.
#[test]
fn short_lived_processes_are_counted_not_probed() {
    require_root();
    let cg = TestCgroup::new();
    let mut leaky = Fixture::start("leaky", &[], Some(&cg));
    // ~20 processes a second, each gone within milliseconds.
    let mut churn = std::process::Command::new("sh");
    churn.args(["-c", "while :; do /bin/true; sh -c 'exit 0'; sleep 0.05; done"]);
    let _churn = Child::spawn(&mut churn, Some(&cg)).expect("start the churning shell");
    let p = profile_fixture(&mut leaky, &["--cgroup".into(), cg.name()], "lifecycle-short-lived");
    assert_accurate("leaky.c beside short-lived processes", &p.truth, &p.summary);
    let short = p.summary["stats"]["short_lived_processes"].as_u64().unwrap_or(0);
    assert!(short >= 10, "short_lived_processes = {short}; stats {}", p.summary["stats"]);
    let probed = p.summary["processes"].as_array().map_or(0, Vec::len);
    assert!(probed <= 4, "{probed} processes probed (the leaky fixture and the shell expected): {}", p.summary["processes"]);
    let per_process: Vec<&str> = p
        .run
        .stderr
        .lines()
        .filter(|l| l.contains("failed to attach") || l.contains("no allocator functions found"))
        .collect();
    assert!(per_process.is_empty(), "routine per-process lines:\n{}", per_process.join("\n"));
}
