//! Accuracy: memprof's outstanding bytes per call site against the fixture's ground truth.
//!
//! Run serially: `cargo test -p memprof-tests -- --test-threads=1`.

use memprof_tests::*;

/// The main test: a cgroup given by its bare directory name, every allocation API, 4 threads.
#[test]
fn cgroup_by_name_matches_ground_truth() {
    require_root();
    let cg = TestCgroup::new();
    let mut fx = Fixture::start("leaky", &[], Some(&cg));
    let p = profile_fixture(
        &mut fx,
        &["--cgroup".into(), cg.name()],
        "accuracy-cgroup-name",
    );

    assert_accurate("leaky.c in a cgroup (--cgroup NAME)", &p.truth, &p.summary);

    // The realloc chains (64 -> 400 -> 900 -> final) count once, at the final size.
    let chains = p.truth.allocations["leak_realloc"];
    let final_bytes = p.truth.sites["leak_realloc"];
    let measured = site_bytes(&p.summary, "leak_realloc");
    assert!(
        error_pct(final_bytes, measured).abs() <= TOLERANCE_PCT,
        "realloc chains: {chains} chains of final total {final_bytes} B, measured {measured} B"
    );
    assert_eq!(
        site_allocations(&p.summary, "leak_realloc"),
        chains,
        "one live block per chain"
    );

    // Artifacts.
    for f in [
        "leaks.folded",
        "leaks.svg",
        "summary.json",
        "snapshots/0001.folded",
    ] {
        assert!(
            p.dir.join(f).is_file(),
            "{} is missing",
            p.dir.join(f).display()
        );
    }
    let svg = std::fs::read_to_string(p.dir.join("leaks.svg")).unwrap();
    assert!(svg.contains("<svg"), "leaks.svg is not an SVG");
    let live = p.summary["live_bytes"]
        .as_u64()
        .expect("summary.live_bytes");
    assert_eq!(
        folded_total(&p.dir.join("leaks.folded")),
        live,
        "leaks.folded total != live_bytes"
    );
    let total: u64 = p.truth.sites.values().sum();
    assert!(
        live >= total,
        "live_bytes {live} is below the fixture's leaks {total}"
    );

    assert_eq!(
        p.summary["end_reason"], "signal",
        "memprof was stopped by SIGINT"
    );
    let cgroup = p.summary["cgroup"]
        .as_str()
        .expect("summary.cgroup is a string for --cgroup");
    assert!(
        cgroup.contains(&cg.name()),
        "summary.cgroup {cgroup:?} does not name {}",
        cg.name()
    );
    assert!(
        p.summary["duration_s"].as_f64().is_some_and(|d| d > 0.0),
        "summary.duration_s"
    );
}

/// `--cgroup /abs/path` of a parent cgroup: the fixture runs in a child, which must be covered.
#[test]
fn cgroup_by_absolute_path_covers_descendants() {
    require_root();
    let cg = TestCgroup::new();
    let leaf = cg.child("leaf");
    let mut fx = Fixture::start("leaky", &[], Some(&leaf));
    let abs = cg.path().display().to_string();
    let p = profile_fixture(&mut fx, &["--cgroup".into(), abs], "accuracy-cgroup-abs");
    print_site_table(
        "leaky.c in a child cgroup (--cgroup /absolute/parent)",
        &p.truth,
        &p.summary,
    );
    let measured = site_bytes(&p.summary, "leak_malloc");
    assert!(
        measured > 0,
        "no leak_malloc bytes; stacks:\n{}",
        describe_stacks(&p.summary)
    );
    assert!(site_pids(&p.summary, "leak_malloc").contains(&fx.pid()));
    drop(fx);
}

/// `--cgroup parent/leaf`, relative to the cgroup v2 mount.
#[test]
fn cgroup_by_relative_path() {
    require_root();
    let cg = TestCgroup::new();
    let leaf = cg.child("leaf");
    let mut fx = Fixture::start("leaky", &[], Some(&leaf));
    let rel = leaf.relative().display().to_string();
    assert!(rel.contains('/'), "{rel} should be a path, not a bare name");
    let p = profile_fixture(&mut fx, &["--cgroup".into(), rel], "accuracy-cgroup-rel");
    let measured = site_bytes(&p.summary, "leak_calloc");
    assert!(
        measured > 0,
        "no leak_calloc bytes; stacks:\n{}",
        describe_stacks(&p.summary)
    );
    assert!(site_pids(&p.summary, "leak_calloc").contains(&fx.pid()));
    drop(fx);
}

/// `--pid`: one process, outside any test cgroup.
#[test]
fn pid_matches_ground_truth() {
    require_root();
    let mut fx = Fixture::start("leaky", &[], None);
    let pid = fx.pid().to_string();
    let p = profile_fixture(&mut fx, &["--pid".into(), pid], "accuracy-pid");
    assert_accurate("leaky.c by --pid", &p.truth, &p.summary);
    assert!(p.dir.join("leaks.folded").is_file());
    assert_eq!(p.summary["end_reason"], "signal");
    // On this kernel (6.6+) the probes are uprobe_multi links, released together at the end.
    assert!(p.run.stderr.contains("uprobes attached as uprobe_multi links"), "{}", p.run.stderr);
    assert!(p.run.stderr.contains("probe links released in"), "{}", p.run.stderr);
}

/// The older kernels' path, forced: one perf event per probe, the same exact result.
#[test]
fn perf_event_uprobes_match_ground_truth() {
    require_root();
    let mut fx = Fixture::start("leaky", &[], None);
    let pid = fx.pid().to_string();
    let p = profile_fixture(&mut fx, &["--pid".into(), pid, "--no-uprobe-multi".into()], "accuracy-perf-events");
    assert_accurate("leaky.c by --pid, perf-event uprobes", &p.truth, &p.summary);
    assert!(p.run.stderr.contains("uprobes attached as perf events"), "{}", p.run.stderr);
}
