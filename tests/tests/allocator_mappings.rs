//! Each byte once, and only accessible bytes: mappings an allocator makes for itself outside any
//! tracked call (glibc's arena created inside `free`, when that is a thread's first allocator
//! call) are not counted, the blocks carved from them are; a `PROT_NONE` reservation counts as
//! `mprotect` commits it; pages dropped with `madvise` stop counting until touched again.

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
    // The half dropped by madvise: registered for page faults, 4 MiB.
    let discarded = p.summary["stats"]["madvise_discarded_bytes"].as_u64().unwrap_or(0);
    assert_eq!(discarded, 4 << 20, "madvise_discarded_bytes: {}", p.summary["stats"]);
    // The reservation counted 8 MiB while committed, then 4 MiB: never its 1 GiB.
    let reserve = stacks_with(&p.summary, "reserve_commit");
    let peak = reserve
        .iter()
        .flat_map(|s| s["series"].as_array().cloned().unwrap_or_default())
        .filter_map(|pt| pt[1].as_f64())
        .fold(0.0, f64::max);
    let committed = 8.0 * 1048576.0;
    assert!(
        (peak - committed).abs() <= committed * 0.01,
        "reserve_commit peaked at {peak} B, expected 8 MiB while committed:\n{}",
        describe_stacks(&p.summary)
    );
}

/// Node (no flags): its threads' glibc arenas and V8's address-space reservations are not among
/// the stacks, and what memprof tracks stays within what the processes have resident.
#[test]
fn node_totals_within_rss() {
    require_root();
    let cg = TestCgroup::new();
    let mut fx = Fixture::start_node("leak.js", &[], &[], Some(&cg));
    let p = profile_fixture(&mut fx, &["--cgroup".into(), cg.name()], "node-totals");
    let arena_frames = ["alloc_new_heap", "new_heap", "_int_new_arena", "arena_get2"];
    let arenas: Vec<String> = stacks(&p.summary)
        .iter()
        .filter(|s| frames(s).iter().any(|f| arena_frames.iter().any(|a| frame_is(f, a))))
        .filter(|s| s["bytes"].as_u64().unwrap_or(0) > 0)
        .map(|s| format!("{} B: {}", s["bytes"], frames(s).join(";")))
        .collect();
    assert!(arenas.is_empty(), "glibc arena reservations counted:\n{}", arenas.join("\n"));
    let m = &p.summary["memory"];
    let tracked = m["tracked_bytes"].as_u64().unwrap();
    let rss = m["rss_bytes"].as_u64().expect("rss_bytes");
    let truth: u64 = p.truth.sites.values().sum();
    eprintln!("node: tracked {tracked} B, RSS {rss} B ({m}), leaked {truth} B");
    assert!(tracked >= truth, "tracked {tracked} B < the {truth} B leaked");
    assert!(tracked <= rss + (8 << 20), "tracked {tracked} B > RSS {rss} B + 8 MiB:\n{}", describe_stacks(&p.summary));
}
