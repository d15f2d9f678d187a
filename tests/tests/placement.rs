//! Probe placement: free's probe moves past glibc's `test %rdi,%rdi; je` NULL check onto its
//! first emulated instruction (`push`), unless `--no-probe-placement`. Results must not change;
//! the per-call cost does (measured and printed, not asserted).
//!
//! Run serially: `cargo test -p memprof-tests -- --test-threads=1`.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    process::{Child as StdChild, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use memprof_tests::*;
use serde_json::Value;

/// The `free` probe of the C library in a summary: (object path, file offset).
fn free_probe(summary: &Value) -> (String, u64) {
    let probes = summary["probes"].as_array().expect("summary.probes");
    let found: Vec<&Value> = probes
        .iter()
        .filter(|p| {
            p["function"] == "free"
                && p["object"]
                    .as_str()
                    .and_then(|o| o.rsplit('/').next())
                    .is_some_and(|n| n.starts_with("libc.so") || n.starts_with("libc-"))
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one free probe on libc expected; probes: {probes:?}"
    );
    let p = found[0];
    assert_eq!(p["attached"], true, "free probe not attached: {p}");
    (
        p["object"].as_str().unwrap().to_string(),
        p["offset"].as_u64().expect("probe offset"),
    )
}

/// The file offset of `free`'s first instruction in `lib`, from readelf (symbol value mapped
/// through the PT_LOAD segment that holds it).
fn free_symbol_file_offset(lib: &Path) -> u64 {
    let run = |args: &[&str]| {
        let out = Command::new("readelf")
            .args(args)
            .arg(lib)
            .output()
            .expect("running readelf (binutils)");
        assert!(out.status.success(), "readelf {args:?} failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let syms = run(&["-Ws", "--dyn-syms"]);
    let vaddr = syms
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 8 && f[3] == "FUNC" && (f[7] == "free" || f[7].starts_with("free@@")))
                .then(|| u64::from_str_radix(f[1], 16).unwrap())
        })
        .expect("free in the dynamic symbols");
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
    for l in run(&["-lW"]).lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.first() == Some(&"LOAD") && f.len() >= 6 {
            let (off, va, filesz) = (hex(f[1]), hex(f[2]), hex(f[4]));
            if (va..va + filesz).contains(&vaddr) {
                return vaddr - va + off;
            }
        }
    }
    panic!("no PT_LOAD of {} holds free at {vaddr:#x}", lib.display());
}

/// Default placement and `--no-probe-placement` give the same, accurate results; free's probe
/// is moved in the first and at the symbol in the second.
#[test]
fn placement_moves_free_and_changes_no_result() {
    require_root();
    let mut runs = Vec::new();
    for (label, extra) in [
        ("placement-default", None),
        ("placement-off", Some("--no-probe-placement")),
    ] {
        let mut fx = Fixture::start("leaky", &[], None);
        let mut args = vec!["--pid".to_string(), fx.pid().to_string()];
        args.extend(extra.map(String::from));
        let p = profile_fixture(&mut fx, &args, label);
        assert_accurate(&format!("leaky.c by --pid, {label}"), &p.truth, &p.summary);
        runs.push(p);
    }
    let (on, off) = (&runs[0], &runs[1]);

    // The same bytes and blocks per site.
    assert_eq!(
        on.truth.sites, off.truth.sites,
        "the fixture is deterministic"
    );
    for site in on.truth.sites.keys() {
        assert_eq!(
            (
                site_bytes(&on.summary, site),
                site_allocations(&on.summary, site)
            ),
            (
                site_bytes(&off.summary, site),
                site_allocations(&off.summary, site)
            ),
            "{site}: placement changed the result"
        );
    }

    // Where free's probe went.
    let (lib, at_on) = free_probe(&on.summary);
    let (lib_off, at_off) = free_probe(&off.summary);
    assert_eq!(lib, lib_off);
    let symbol = free_symbol_file_offset(Path::new(&lib));
    let code = {
        let f = fs::File::open(&lib).unwrap();
        let mut b = [0u8; 16];
        f.read_exact_at(&mut b, symbol).unwrap();
        b
    };
    let delta = at_on.wrapping_sub(symbol);
    let line = format!(
        "\nfree in {lib}: symbol at file offset {symbol:#x}, first bytes {code:02x?}\n  \
         default placement: {at_on:#x} (+{delta}), --no-probe-placement: {at_off:#x}\n"
    );
    let _ = std::io::stdout().lock().write_all(line.as_bytes());
    assert_eq!(
        at_off, symbol,
        "--no-probe-placement: free's probe at the symbol"
    );
    if code[0] == 0x48 && code[1] == 0x85 && code[2] == 0xff {
        // glibc's `test %rdi,%rdi; je`: the probe must move onto the push after it.
        assert!(
            delta > 0 && delta <= 32,
            "free's probe did not move: +{delta}"
        );
        let b = &code[delta as usize..];
        assert!(
            (0x50..=0x57).contains(&b[0]) || (b[0] == 0x41 && (0x50..=0x57).contains(&b[1])),
            "free's probe at +{delta} is not on a push: {b:02x?}"
        );
    } else {
        eprintln!("this libc's free does not start with test %rdi,%rdi: placement not checked");
    }
    let stderr = &on.run.stderr;
    assert!(
        stderr.lines().any(|l| l.contains("free: probe at +")),
        "the placement is logged; stderr:\n{stderr}"
    );
}

/// A process that exits by itself under moved probes exits normally.
#[test]
fn placement_fixture_exits_normally() {
    require_root();
    let mut fx = Fixture::start("leaky", &["--exit"], None);
    let dir = output_dir("placement-exit");
    let mut mp = Memprof::start(&[
        "--pid".into(),
        fx.pid().to_string(),
        "--interval".into(),
        "1s".into(),
        "--output".into(),
        dir.display().to_string(),
    ]);
    mp.wait_attached(ATTACH_TIMEOUT);
    fx.go();
    let truth = fx.wait_truth();
    assert!(truth.leak_sites().count() > 0);
    let status = fx.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "leaky --exit under probes: {status}");
    // memprof ends by itself once its only target has exited.
    let done = mp.finish_ok(FINISH_TIMEOUT);
    let summary = read_summary(&dir);
    let (_, offset) = free_probe(&summary);
    assert!(offset > 0, "{}", done.stderr);
}

// ---------------------------------------------------------------------------------------------
// Cost (printed, not asserted)
// ---------------------------------------------------------------------------------------------

const PAIRS: u64 = 1_000_000;

const BENCH_C: &str = r#"
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    sigset_t go;
    sigemptyset(&go);
    sigaddset(&go, SIGUSR1);
    sigprocmask(SIG_BLOCK, &go, NULL);
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    int sig;
    sigwait(&go, &sig);
    void *volatile sink;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        sink = malloc(64);
        free(sink);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
    printf("%.1f\n", ns / n);
    fflush(stdout);
    return 0;
}
"#;

/// Kills (by its own PID) and reaps the benchmark on drop.
struct Bench {
    child: StdChild,
    lines: mpsc::Receiver<String>,
}

impl Bench {
    fn start(bin: &Path) -> Bench {
        let mut child = Command::new(bin)
            .arg(PAIRS.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the benchmark");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let b = Bench { child, lines };
        let ready = b.line();
        assert_eq!(ready, format!("ready {}", b.child.id()));
        b
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(180))
            .expect("benchmark output")
    }

    /// Sends the go signal and returns the measured ns per malloc+free pair.
    fn run(&mut self) -> f64 {
        // SAFETY: kill(2) on our own unreaped child.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as i32, libc::SIGUSR1) },
            0
        );
        let ns: f64 = self.line().trim().parse().expect("ns per pair");
        let st = self.child.wait().expect("benchmark exit");
        assert!(st.success(), "benchmark: {st}");
        ns
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn build_bench() -> PathBuf {
    let dir = target_dir().join("placement-bench");
    fs::create_dir_all(&dir).unwrap();
    let src = dir.join("bench.c");
    fs::write(&src, BENCH_C).unwrap();
    let bin = dir.join("bench");
    let out = Command::new("gcc")
        .args(["-O1", "-fno-omit-frame-pointer", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("running gcc");
    assert!(
        out.status.success(),
        "gcc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// ns per malloc+free pair under memprof `extra` (None: without memprof).
fn measure(bin: &Path, extra: Option<&[&str]>, label: &str) -> f64 {
    let mut bench = Bench::start(bin);
    let Some(extra) = extra else {
        return bench.run();
    };
    let dir = output_dir(label);
    let mut args = vec![
        "--pid".to_string(),
        bench.child.id().to_string(),
        "--output".into(),
        dir.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut mp = Memprof::start(&args);
    mp.wait_attached(ATTACH_TIMEOUT);
    let ns = bench.run();
    mp.finish_ok(FINISH_TIMEOUT);
    ns
}

/// 1e6 malloc+free pairs without memprof, under memprof with placement, and without it.
#[test]
fn placement_cost_is_measured() {
    require_root();
    let bin = build_bench();
    let base = measure(&bin, None, "");
    let on = measure(&bin, Some(&[]), "placement-cost-on");
    let off = measure(&bin, Some(&["--no-probe-placement"]), "placement-cost-off");
    let table = format!(
        "\nmalloc(64)+free, {PAIRS} pairs, ns per pair:\n  \
         no memprof:                  {base:>10.1}\n  \
         memprof (probe placement):   {on:>10.1}  (+{:.1})\n  \
         memprof --no-probe-placement:{off:>10.1}  (+{:.1})\n  \
         placement saves {:.1} ns per free\n",
        on - base,
        off - base,
        off - on
    );
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(table.as_bytes());
    let _ = stdout.flush();
}
