//! Sampling by bytes (`--sample-bytes`): the scaled-up estimates stay close to the ground truth.

use memprof_tests::*;

/// Mean bytes between samples: the fixture's heap sites leak ~12 MB, so ~2800 samples.
const SAMPLE_BYTES: u64 = 4096;

#[test]
fn sampled_estimates_are_within_ten_percent() {
    require_root();
    let cg = TestCgroup::new();
    let mut fx = Fixture::start("leaky", &[], Some(&cg));
    let p = profile_fixture(
        &mut fx,
        &["--cgroup".into(), cg.name(), "--sample-bytes".into(), SAMPLE_BYTES.to_string()],
        "sampling",
    );
    print_site_table("leaky.c, --sample-bytes 4096", &p.truth, &p.summary);
    assert_eq!(p.summary["sample_bytes"], SAMPLE_BYTES);
    let stats = &p.summary["stats"];
    assert!(stats["unsampled"].as_u64().unwrap() > 0, "nothing was left out by sampling: {stats}");

    // mmap sites are not sampled: exact.
    let (mut heap_truth, mut heap_est) = (0u64, 0u64);
    for (site, expected) in p.truth.leak_sites() {
        let measured = site_bytes(&p.summary, site);
        if site.contains("mmap") {
            assert!(error_pct(expected, measured).abs() <= TOLERANCE_PCT, "{site}: {measured} vs {expected}");
            continue;
        }
        heap_truth += expected;
        heap_est += measured;
        // One site has ~100-700 samples: a wide band, only to catch a site gone missing.
        let err = error_pct(expected, measured);
        assert!(err.abs() <= 40.0, "{site}: estimate {measured} B vs {expected} B ({err:+.1} %)");
    }
    let err = error_pct(heap_truth, heap_est);
    println!("heap sites: truth {heap_truth} B, sampled estimate {heap_est} B ({err:+.2} %)");
    assert!(err.abs() <= 10.0, "sampled estimate {heap_est} B is {err:+.1} % off {heap_truth} B");
    let churn = site_bytes(&p.summary, "churn");
    assert!(churn <= heap_truth / 50, "churn holds {churn} B under sampling");
}
