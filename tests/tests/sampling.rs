//! Sampling by bytes (`--sample-bytes`): the scaled-up estimates stay close to the ground truth.

use std::process::Command;

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
    // Kernel 6.13+ (CI's 6.18): unsampled calls skip their return (uprobe sessions).
    assert_eq!(stats["uprobe_sessions"], 1, "uprobe sessions not used: {stats}");
    assert_sampled_heap_within_ten_percent(&p);
}

/// The same beside another process of the cgroup that maps the same libc: its probes (session
/// links filtered on it) make the kernel hijack the fixture's returns too, so unsampled calls
/// find the uretprobe trampoline in their return-address slot (nested and tail calls still
/// recognised: reallocarray → realloc → malloc).
#[test]
fn sampled_estimates_beside_a_neighbour_process() {
    require_root();
    let cg = TestCgroup::new();
    let mut neighbour = Child::spawn(Command::new("sleep").arg("600"), Some(&cg)).expect("failed to start sleep");
    let mut fx = Fixture::start("leaky", &[], Some(&cg));
    let p = profile_fixture(
        &mut fx,
        &["--cgroup".into(), cg.name(), "--sample-bytes".into(), SAMPLE_BYTES.to_string()],
        "sampling-neighbour",
    );
    neighbour.kill();
    print_site_table("leaky.c beside sleep, --sample-bytes 4096", &p.truth, &p.summary);
    assert!(p.summary["stats"]["tail_calls"].as_u64().unwrap() > 0, "no tail call seen: {}", p.summary["stats"]);
    assert_sampled_heap_within_ten_percent(&p);
}

fn assert_sampled_heap_within_ten_percent(p: &Profiled) {

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
