//! `cargo xtask bench-node`: what memprof's JS stack walk (issue 11: JS frames read from V8,
//! no flags on the target) costs per recorded allocation, by JS stack depth. Runs
//! `bench/node/depth.js D N` on the host's node with no profiler, with `memprof --no-node`
//! (native frames only) and with `memprof`, and writes BENCHMARKS.md's `## Node: JS stack walk
//! by depth` section (replaced or appended; the rest of the file is kept).

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, channel},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};

use crate::workspace_root;

const HEADING: &str = "## Node: JS stack walk by depth";
const DEPTHS: [u32; 3] = [1, 10, 50];

/// A process killed (by its PID) when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn lines_of(child: &mut Child) -> Receiver<String> {
    let (tx, rx) = channel();
    let out = child.stdout.take().expect("piped stdout");
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for(rx: &Receiver<String>, prefix: &str, limit: Duration) -> Result<String> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).map_err(|_| anyhow!("no `{prefix}` line within {limit:?}"))?;
        if let Some(rest) = line.strip_prefix(prefix) {
            return Ok(rest.trim().to_string());
        }
    }
}

/// What one run measured.
struct Run {
    ns_per_alloc: f64,
    /// JS frames of depth.js on the real stack (the script's count).
    real_frames: usize,
    /// Profiled: depth.js frames in memprof's heaviest stack, and allocations memprof recorded
    /// per `Buffer.alloc` (a Buffer is several allocator calls: its backing store, V8's
    /// BackingStore object, its extension…).
    seen_frames: Option<usize>,
    recorded_per_alloc: Option<f64>,
}

/// One run.
fn run_once(node: &Path, memprof: &Path, extra: Option<&[&str]>, depth: u32, allocs: u64, dir: &Path) -> Result<Run> {
    let script = workspace_root().join("bench/node/depth.js");
    let mut child = Command::new(node)
        .arg(&script)
        .arg(depth.to_string())
        .arg(allocs.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to start {}", node.display()))?;
    let pid = child.id();
    let rx = lines_of(&mut child);
    let _node = Killed(child);
    wait_for(&rx, "ready ", Duration::from_secs(20))?;
    let mut prof = None;
    if let Some(extra) = extra {
        fs::create_dir_all(dir)?;
        let log = fs::File::create(dir.join("memprof.log"))?;
        let p = Command::new(memprof)
            .args(["--pid", &pid.to_string(), "--interval", "1h", "--output"])
            .arg(dir.join("out"))
            .args(extra)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("failed to start memprof")?;
        let started = Instant::now();
        while !fs::read_to_string(dir.join("memprof.log")).unwrap_or_default().contains("Ctrl-C to stop") {
            if started.elapsed() > Duration::from_secs(60) {
                bail!("memprof did not attach: {}", fs::read_to_string(dir.join("memprof.log")).unwrap_or_default());
            }
            thread::sleep(Duration::from_millis(50));
        }
        prof = Some(p);
    }
    // SAFETY: signalling the node we started.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGUSR1) };
    let ns: f64 = wait_for(&rx, "ns_per_alloc ", Duration::from_secs(300))?.parse()?;
    let real_frames: usize = wait_for(&rx, "frames ", Duration::from_secs(10))?.parse()?;
    let mut seen = None;
    let mut recorded = None;
    if let Some(mut p) = prof {
        // SAFETY: signalling the memprof we started.
        unsafe { libc::kill(p.id() as libc::pid_t, libc::SIGINT) };
        p.wait()?;
        let summary: serde_json::Value = serde_json::from_str(&fs::read_to_string(dir.join("out/summary.json"))?)?;
        let top = summary["stacks"]
            .as_array()
            .and_then(|s| s.iter().max_by_key(|s| s["bytes"].as_u64().unwrap_or(0)))
            .ok_or_else(|| anyhow!("no stacks"))?;
        recorded = summary["stats"]["allocs"].as_u64().map(|n| n as f64 / allocs as f64);
        let frames = top["frame_details"].as_array().cloned().unwrap_or_default();
        seen = Some(
            frames
                .iter()
                .filter(|f| f["module"] == "[js]" && f["file"].as_str().is_some_and(|f| f.ends_with("depth.js")))
                .count(),
        );
    }
    Ok(Run { ns_per_alloc: ns, real_frames, seen_frames: seen, recorded_per_alloc: recorded })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn bench_node(quick: bool) -> Result<()> {
    let root = workspace_root();
    let memprof = root.join("target/release/memprof");
    let node = PathBuf::from("node");
    let version = String::from_utf8_lossy(&Command::new(&node).arg("--version").output().context("node --version")?.stdout)
        .trim()
        .to_string();
    let (reps, allocs) = if quick { (1, 5_000) } else { (3, 20_000) };
    let runs = root.join("target/bench/runs/node");
    let _ = fs::remove_dir_all(&runs);
    let mut rows = Vec::new();
    for depth in DEPTHS {
        let mut cols = Vec::new();
        let mut frames = (None, 0);
        let mut per = Vec::new();
        for (slug, extra) in [("none", None), ("no-node", Some(&["--no-node"][..])), ("memprof", Some(&[][..]))] {
            let mut ns = Vec::new();
            for rep in 0..reps {
                eprintln!("xtask: bench-node: depth {depth}, {slug}, run {}/{reps}", rep + 1);
                let dir = runs.join(format!("{depth}-{slug}-{rep}"));
                let r = run_once(&node, &memprof, extra, depth, allocs, &dir)?;
                ns.push(r.ns_per_alloc);
                per.extend(r.recorded_per_alloc);
                if slug == "memprof" {
                    frames = (r.seen_frames, r.real_frames);
                }
            }
            cols.push(median(ns));
        }
        rows.push((depth, cols, frames, median(per)));
    }
    let mut md = format!(
        "{HEADING}\n\nGenerated by `cargo xtask bench-node{}` (as root; source: `xtask/src/bench_node.rs`, workload: \
         `bench/node/depth.js`) with the host's node {version}, no flags on it. `depth.js D {allocs}`: D nested JS calls, \
         then {allocs} `Buffer.alloc(4096)` (each several allocator calls, all recorded in both memprof columns: the \
         backing store's `calloc`, V8's BackingStore object, the buffer's extension; one Buffer in 64 is kept); medians \
         of {reps} run(s). The JS part of the cost per recorded allocation is (`memprof` − `memprof --no-node`) ÷ the \
         allocations memprof recorded per Buffer: every recorded allocation walks the JS frames again. The kernel reads \
         9 words per JS frame (its frame window, the function's and its \
         SharedFunctionInfo's maps and types, the name) and records 2 stack slots; naming happens once per new stack, \
         in userspace. Depth limit: a stack holds 256 slots, so at most ~120 JS frames (fewer with native ones); deeper \
         stacks are cut and flagged (`v8_walk_failed_depth`). \"JS frames\": `depth.js` frames in memprof's heaviest \
         stack / on the real stack.\n\n\
         | JS depth | none: ns per Buffer | memprof --no-node | memprof | recorded allocations per Buffer | JS part per recorded allocation | JS frames (memprof / real) |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        if quick { " --quick" } else { "" }
    );
    let mut pts = Vec::new();
    for (depth, c, frames, per) in &rows {
        let js = (c[2] - c[1]) / per.max(1.0);
        pts.push((f64::from(*depth), js));
        md += &format!(
            "| {depth} | {:.0} | {:.0} | {:.0} | {per:.2} | {js:.0} ns | {} / {} |\n",
            c[0],
            c[1],
            c[2],
            frames.0.map_or("—".to_string(), |f| f.to_string()),
            frames.1
        );
    }
    let n = pts.len() as f64;
    let (mx, my) = (pts.iter().map(|p| p.0).sum::<f64>() / n, pts.iter().map(|p| p.1).sum::<f64>() / n);
    let slope = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>() / pts.iter().map(|p| (p.0 - mx).powi(2)).sum::<f64>();
    md += &format!("\nPer extra JS frame (least-squares slope of the JS part over the depths): {slope:.0} ns.\n\nRaw output of every run: `target/bench/runs/node/`.\n");
    let path = root.join("BENCHMARKS.md");
    let old = fs::read_to_string(&path).unwrap_or_default();
    fs::write(&path, with_section(&old, &md)).context("failed to write BENCHMARKS.md")?;
    eprintln!("xtask: bench-node: wrote the Node section of {}", path.display());
    print!("{md}");
    Ok(())
}

/// `text` with its Node section replaced by `section`, or with `section` appended.
fn with_section(text: &str, section: &str) -> String {
    let section = section.trim_end();
    let Some(a) = text.find(HEADING) else { return format!("{}\n\n{section}\n", text.trim_end()) };
    let rest = &text[a + HEADING.len()..];
    match rest.find("\n## ") {
        Some(b) => format!("{}{section}\n{}", &text[..a], &rest[b..]),
        None => format!("{}{section}\n", &text[..a]),
    }
}
