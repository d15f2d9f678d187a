//! Evidence at the OOM kill: a process in a memory-limited cgroup leaks until the kernel kills
//! it; memprof writes oom-<pid>.folded/.svg whose top stack is the leaking function, records the
//! kill in summary.json, and keeps running.

use std::{fs, process::Command, time::Duration};

use memprof_tests::*;

const LIMIT: u64 = 64 << 20;

#[test]
fn oom_kill_leaves_evidence() {
    require_root();
    let cg = TestCgroup::new();
    let limit = MemoryCgroup::new(&cg, "oom", LIMIT);
    let mut cmd = Command::new(fixture("oomer"));
    cmd.stdout(std::process::Stdio::piped());
    limit.enter(&mut cmd);
    let mut victim = Child::spawn(&mut cmd, Some(&cg)).expect("start oomer");
    let dir = output_dir("oom");
    let mut mp = Memprof::start(&[
        "--cgroup".to_string(),
        cg.name(),
        "--interval".into(),
        "1s".into(),
        "--output".into(),
        dir.display().to_string(),
    ]);
    mp.wait_attached(ATTACH_TIMEOUT);
    victim.signal(libc::SIGUSR1).unwrap();
    let status = victim.wait_timeout(Duration::from_secs(60)).unwrap().expect("oomer was not killed");
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL), "{status:?}");
    // memprof keeps running after the kill (then ends: the cgroup is empty).
    let run = mp.finish_ok(FINISH_TIMEOUT);
    let summary = read_summary(&dir);
    let kills = summary["oom_kills"].as_array().expect("oom_kills");
    assert_eq!(kills.len(), 1, "oom_kills: {kills:?}\n{}", run.stderr);
    let pid = victim.pid();
    assert_eq!(kills[0]["pid"], pid);
    let folded = fs::read_to_string(dir.join(format!("oom-{pid}.folded"))).expect("oom folded");
    assert!(dir.join(format!("oom-{pid}.svg")).is_file());
    let top = folded.lines().next().expect("empty oom folded");
    let leaf = top.rsplit_once(' ').unwrap().0.rsplit(';').next().unwrap();
    assert!(frame_is(leaf, "grow_until_oom"), "top stack leaf is {leaf}: {top}");
    let bytes: u64 = top.rsplit_once(' ').unwrap().1.parse().unwrap();
    assert!(bytes >= LIMIT / 2, "only {bytes} B at the kill (limit {LIMIT})");
    drop(limit);
}
