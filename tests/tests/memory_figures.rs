//! The memory figures beside the stacks: a memory cgroup that also holds processes outside the
//! target is labelled as shared (summary.json `memory.shared`, the terminal, the report's DOM as
//! Chromium renders it) and its usage is left off the timeline; the target's own memory cgroup
//! is not; tracked bytes, RSS and cgroup usage are reconciled in words.
//!
//! Run serially: `cargo test -p memprof-tests --test memory_figures -- --test-threads=1`.

use std::process::Command;

use memprof_tests::*;

/// `--pid` of one process in a cgroup that holds another one: the memory cgroup is shared (on a
/// hybrid host, the v1 memory cgroup holds the rest of the host too).
#[test]
fn shared_memory_cgroup_is_labelled() {
    require_root();
    let cg = TestCgroup::new();
    let _neighbour = Fixture::start("leaky", &[], Some(&cg));
    let mut fx = Fixture::start("leaky", &[], Some(&cg));
    let pid = fx.pid().to_string();
    let p = profile_fixture(&mut fx, &["--pid".into(), pid], "memory-shared");
    let memory = &p.summary["memory"];
    let others = memory["shared"]["other_processes"].as_u64().unwrap_or(0);
    assert!(others >= 1, "memory.shared should count the neighbour: {memory}");
    assert!(memory["shared"]["cgroup"].as_str().is_some_and(|c| !c.is_empty()), "{memory}");
    let words = "shared with";
    assert!(
        p.run.stdout.lines().any(|l| l.starts_with("memory:") && l.contains(words)),
        "the terminal's memory line should say the cgroup is shared:\n{}",
        p.run.stdout
    );
    let dom = rendered_dom(&p.dir.join("report.html"));
    for w in [words, "not the target's own usage", "cgroup usage (shared)"] {
        assert!(dom.contains(w), "the report's DOM does not say {w:?}");
    }
    let timeline = std::fs::read_to_string(p.dir.join("timeline.svg")).expect("timeline.svg");
    assert!(!timeline.contains("cgroup memory usage"), "a shared cgroup's usage is plotted");
}

/// The target alone in a memory cgroup of its own (v2 `memory.max`, or a v1 memory cgroup made
/// for it on a hybrid host): not shared, its limit shown, its usage split into anonymous memory
/// and page cache, and the totals explained.
#[test]
fn own_memory_cgroup_is_the_targets() {
    require_root();
    let cg = TestCgroup::new();
    let limit = 1u64 << 30;
    let mem = MemoryCgroup::new(&cg, "own", limit);
    let mut cmd = Command::new(fixture("leaky"));
    mem.enter(&mut cmd);
    let mut fx = Fixture::start_command("leaky", cmd, Some(&cg));
    let p = profile_fixture(&mut fx, &["--cgroup".into(), cg.name()], "memory-own");
    let memory = &p.summary["memory"];
    assert!(memory["shared"].is_null(), "the target's own memory cgroup reported shared: {memory}");
    assert_eq!(memory["cgroup_limit_bytes"].as_u64(), Some(limit), "{memory}");
    for field in ["cgroup_usage_bytes", "cgroup_anon_bytes", "cgroup_file_bytes", "rss_anon_bytes", "rss_file_bytes"] {
        assert!(memory[field].is_u64(), "memory.{field} missing: {memory}");
    }
    let anon = memory["cgroup_anon_bytes"].as_u64().unwrap();
    let usage = memory["cgroup_usage_bytes"].as_u64().unwrap();
    assert!(anon <= usage && anon > 0, "{memory}");
    // (Tracked bytes may exceed both: leaky.c allocates blocks it never touches.)
    assert!(memory["tracked_bytes"].as_u64().unwrap() > 0, "{memory}");
    let out = &p.run.stdout;
    for w in ["anonymous resident memory", "page cache", "(the target's own memory cgroup)"] {
        assert!(out.contains(w), "the terminal does not explain the totals ({w:?}):\n{out}");
    }
    assert!(!out.contains("shared with"), "{out}");
    let timeline = std::fs::read_to_string(p.dir.join("timeline.svg")).expect("timeline.svg");
    assert!(timeline.contains("cgroup memory usage"), "the own cgroup's usage is not plotted");
    drop(fx);
    drop(mem);
}
