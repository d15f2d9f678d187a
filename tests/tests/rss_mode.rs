//! `--mode rss`: resident memory attributed to the code that touched it first, without uprobes.

use memprof_tests::*;

#[test]
fn resident_pages_by_first_toucher() {
    require_root();
    let cg = TestCgroup::new();
    let mut fx = Fixture::start("toucher", &[], Some(&cg));
    let p = profile_fixture(&mut fx, &["--cgroup".into(), cg.name(), "--mode".into(), "rss".into()], "rss-mode");
    print_site_table("toucher.c, --mode rss", &p.truth, &p.summary);
    assert_eq!(p.summary["mode"], "rss");
    assert!(
        p.summary["probes"].as_array().is_some_and(|a| a.is_empty()),
        "no uprobes in rss mode: {}",
        p.summary["probes"]
    );
    for (site, expected) in p.truth.leak_sites() {
        let measured = site_bytes(&p.summary, site);
        let err = error_pct(expected, measured);
        // Pages, not bytes: malloc's headers and page rounding add a little.
        assert!(err.abs() <= 3.0, "{site}: {measured} B resident vs {expected} B written ({err:+.2} %)");
    }
    let released = site_bytes(&p.summary, "release_mmap");
    assert!(released <= 64 * 1024, "release_mmap still holds {released} B after munmap");
    let churn = site_bytes(&p.summary, "churn_touch");
    assert!(churn <= 128 * 1024, "churn_touch holds {churn} B: its block is faulted in once");
}

/// Short-lived processes beside the fixture (Python, each filling 4 MiB) that exit at once: in rss mode the
/// kernel records every process's pages from its first fault, so those pages must leave with
/// their process — nothing of theirs is left among the stacks at the end.
#[test]
fn short_lived_processes_leave_no_pages() {
    require_root();
    let cg = TestCgroup::new();
    let mut fx = Fixture::start("toucher", &[], Some(&cg));
    let mut churn = std::process::Command::new("sh");
    churn.args(["-c", "while :; do python3 -c 'x = b\"x\" * (4 << 20)'; sleep 0.5; done"]);
    let _churn = Child::spawn(&mut churn, Some(&cg)).expect("start the churning shell");
    let p = profile_fixture(&mut fx, &["--cgroup".into(), cg.name(), "--mode".into(), "rss".into()], "rss-short-lived");
    let pid = p.truth.pid as u64;
    // Processes memprof saw exit (retired). A Python of the loop may still be running at the
    // final snapshot (about one time in ten): its pages are rightly there.
    let exited: Vec<u64> = p.summary["processes"]
        .as_array()
        .map(|a| a.iter().filter(|x| x["alive"] == false).filter_map(|x| x["pid"].as_u64()).collect())
        .unwrap_or_default();
    assert!(exited.len() >= 3, "fewer short-lived processes seen to exit than expected: {}", p.summary["processes"]);
    let others: Vec<String> = stacks(&p.summary)
        .iter()
        .filter(|s| s["bytes"].as_u64().unwrap_or(0) >= 1 << 20)
        .filter(|s| !s["pids"].as_array().is_some_and(|a| a.iter().any(|x| x.as_u64() == Some(pid))))
        .filter(|s| s["pids"].as_array().is_some_and(|a| a.iter().all(|x| x.as_u64().is_some_and(|p| exited.contains(&p)))))
        .map(|s| format!("{} B in pids {}: {}", s["bytes"], s["pids"], frames(s).join(";")))
        .collect();
    assert!(others.is_empty(), "pages of exited processes kept:\n{}", others.join("\n"));
}
