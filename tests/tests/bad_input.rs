//! Bad input: exit code 2, one `memprof: error: ...` line on stderr, nothing attached.
//!
//! Run serially: `cargo test -p memprof-tests -- --test-threads=1`.

use std::{os::unix::process::CommandExt, time::Duration};

use memprof_tests::*;

const TIMEOUT: Duration = Duration::from_secs(30);

/// A valid target (a fixture waiting for its go signal, never given), so that only the option
/// under test is wrong.
fn waiting_fixture() -> Fixture {
    Fixture::start("leaky", &[], None)
}

#[test]
fn unknown_cgroup_name() {
    require_root();
    let name = format!("memprof-no-such-cgroup-{}", std::process::id());
    let dir = output_dir("bad-cgroup");
    let done = run_memprof(
        &["--cgroup", &name, "--output", &dir.display().to_string()],
        TIMEOUT,
    );
    assert_usage_error(&done, "unknown cgroup name");
    assert!(
        done.stderr.contains(&name),
        "the message should name the cgroup: {}",
        done.stderr
    );
}

#[test]
fn unknown_cgroup_path() {
    require_root();
    let path = cgroup2_mount().join(format!("memprof-no-such-cgroup-{}", std::process::id()));
    let done = run_memprof(&["--cgroup", &path.display().to_string()], TIMEOUT);
    assert_usage_error(&done, "unknown cgroup path");
}

#[test]
fn unknown_pid() {
    require_root();
    let dir = output_dir("bad-pid");
    let done = run_memprof(
        &["--pid", "999999999", "--output", &dir.display().to_string()],
        TIMEOUT,
    );
    assert_usage_error(&done, "--pid 999999999");
}

#[test]
fn no_target() {
    require_root();
    let done = run_memprof(&["--duration", "1s"], TIMEOUT);
    assert_usage_error(&done, "no target");
    for arg in ["--cgroup", "--pid"] {
        assert!(done.stderr.contains(arg), "the message should name {arg}: {}", done.stderr);
    }
}

#[test]
fn missing_option_value_named() {
    require_root();
    let done = run_memprof(&["--pid"], TIMEOUT);
    assert_usage_error(&done, "--pid without a value");
    assert!(done.stderr.contains("--pid"), "the message should name --pid: {}", done.stderr);
}

#[test]
fn bad_duration() {
    require_root();
    let fx = waiting_fixture();
    let done = run_memprof(
        &["--pid", &fx.pid().to_string(), "--duration", "banana"],
        TIMEOUT,
    );
    assert_usage_error(&done, "--duration banana");
}

#[test]
fn output_dir_cannot_be_created_in_proc() {
    require_root();
    let fx = waiting_fixture();
    let done = run_memprof(
        &[
            "--pid",
            &fx.pid().to_string(),
            "--output",
            "/proc/memprof-forbidden",
        ],
        TIMEOUT,
    );
    assert_usage_error(&done, "--output /proc/memprof-forbidden");
}

#[test]
fn output_dir_under_a_regular_file() {
    require_root();
    let fx = waiting_fixture();
    let base = output_dir("bad-output-file");
    std::fs::create_dir_all(&base).unwrap();
    let file = base.join("a-file");
    std::fs::write(&file, "not a folder\n").unwrap();
    let out = file.join("out");
    let done = run_memprof(
        &[
            "--pid",
            &fx.pid().to_string(),
            "--output",
            &out.display().to_string(),
        ],
        TIMEOUT,
    );
    assert_usage_error(&done, "--output under a regular file");
}

#[test]
fn not_root() {
    require_root();
    let fx = waiting_fixture();
    let bin = world_executable_memprof();
    let out = std::env::temp_dir().join(format!("memprof-tests-notroot-{}", std::process::id()));
    let args = [
        "--pid".to_string(),
        fx.pid().to_string(),
        "--output".into(),
        out.display().to_string(),
    ];
    // The copied binary, as nobody (std drops the supplementary groups too): no capabilities.
    let done = Memprof::start_bin_with(&bin, &args, |cmd| {
        cmd.env_remove("RUST_LOG")
            .current_dir("/")
            .uid(65534)
            .gid(65534);
    })
    .finish(TIMEOUT);
    let _ = std::fs::remove_dir_all(bin.parent().unwrap());
    assert_usage_error(&done, "not root");
    assert!(
        !out.exists(),
        "memprof created {} although it refused to run",
        out.display()
    );
}
