//! Each byte once, and only accessible bytes: mappings an allocator makes for itself outside any
//! tracked call (glibc's arena created inside `free`, when that is a thread's first allocator
//! call) are not counted, the blocks carved from them are; a `PROT_NONE` reservation counts as
//! `mprotect` commits it.

use memprof_tests::*;

#[test]
fn allocator_mappings_and_reservations() {
    require_root();
    let cg = TestCgroup::new();
    let mut fx = Fixture::start("free_first", &[], Some(&cg));
    let p = profile_fixture(&mut fx, &["--cgroup".into(), cg.name()], "free-first");
    assert_accurate("free_first.c: arenas created inside free()", &p.truth, &p.summary);
    // Nothing else of any size: no 64 MiB reservation per thread.
    let truth: u64 = p.truth.sites.values().sum();
    let live = p.summary["live_bytes"].as_u64().unwrap();
    assert!(live < truth + (1 << 20), "{live} B live for {truth} B kept:\n{}", describe_stacks(&p.summary));
    assert!(p.summary["stats"]["allocator_mappings_skipped"].as_u64().unwrap_or(0) >= 1, "{}", p.summary["stats"]);
}
