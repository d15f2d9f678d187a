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
