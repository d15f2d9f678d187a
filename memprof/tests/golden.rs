//! Golden tests for the output writers. Run with `MEMPROF_BLESS=1` to rewrite the golden files.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use memprof::output::{flamegraph_svg, folded_lines, write_artifacts, write_snapshot};
use memprof::report::{Frame, Report, StackReport};

const TITLE: &str = "memprof: cgroup api-service";
const SUBTITLE: &str = "3.0 MiB outstanding";

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn blessing() -> bool {
    std::env::var_os("MEMPROF_BLESS").is_some_and(|v| v == "1")
}

/// Compares `actual` with the golden file `name`, or rewrites it under `MEMPROF_BLESS=1`.
fn check_golden(name: &str, actual: &[u8]) {
    let path = golden_dir().join(name);
    if blessing() {
        fs::create_dir_all(golden_dir()).unwrap();
        fs::write(&path, actual).unwrap();
        return;
    }
    let expected = fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with MEMPROF_BLESS=1)", path.display()));
    if expected != actual {
        panic!(
            "{} differs from the output; rerun with MEMPROF_BLESS=1 if the change is intended\n\
             --- actual ---\n{}",
            path.display(),
            String::from_utf8_lossy(actual)
        );
    }
}

fn frame(function: &str, file: Option<&str>, line: Option<u32>) -> Frame {
    Frame {
        function: function.to_string(),
        file: file.map(str::to_string),
        line,
        module: "/usr/bin/fixture".to_string(),
        offset: 0x1000,
        inlined: false,
    }
}

fn stack(frames: Vec<Frame>, bytes: u64, allocations: u64) -> StackReport {
    StackReport {
        frames: frames.iter().map(Frame::display_name).collect(),
        frame_details: frames,
        bytes,
        allocations,
        total_bytes: bytes * 2,
        total_allocations: allocations * 2,
        pids: vec![4242],
        ..Default::default()
    }
}

fn fixed_report() -> Report {
    let start = frame("start_thread", None, None);
    let worker = frame("worker", Some("/src/fixture.c"), Some(80));
    let stacks = vec![
        stack(
            vec![
                start.clone(),
                worker.clone(),
                frame("leak_site", Some("/src/fixture.c"), Some(42)),
            ],
            2 << 20,
            2048,
        ),
        stack(
            vec![
                frame("main", Some("/src/main.rs"), Some(3)),
                frame("<[u8; 8] as core::fmt::Debug>::fmt", None, None),
                frame("alloc::raw_vec::finish_grow", None, None),
            ],
            768 << 10,
            12,
        ),
        stack(Vec::new(), 256 << 10, 4),
        stack(vec![start, worker, frame("freed_later", None, None)], 0, 0),
    ];
    Report {
        target: "cgroup api-service".to_string(),
        cgroup: Some("/sys/fs/cgroup/api-service".to_string()),
        started_at: "2024-01-01T00:00:00Z".to_string(),
        duration_s: 30.0,
        end_reason: "duration".to_string(),
        live_bytes: stacks.iter().map(|s| s.bytes).sum(),
        live_allocations: stacks.iter().map(|s| s.allocations).sum(),
        stacks,
        lost: BTreeMap::from([
            ("ringbuf_full".to_string(), 0),
            ("stack_missing".to_string(), 2),
        ]),
        stats: BTreeMap::from([("allocations".to_string(), 4128)]),
        processes: Vec::new(),
        probes: Vec::new(),
        snapshots: Vec::new(),
        ..Default::default()
    }
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("memprof-golden-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

#[test]
fn folded_matches_golden() {
    let lines = folded_lines(&fixed_report().stacks);
    assert_eq!(lines.len(), 3, "the zero-byte stack is skipped");
    assert!(lines
        .iter()
        .any(|l| l.contains("<[u8%3B 8] as core::fmt::Debug>::fmt")));
    assert!(lines.contains(&"[no stack] 262144".to_string()));
    let mut text = lines.join("\n");
    text.push('\n');
    check_golden("leaks.folded", text.as_bytes());
}

#[test]
fn svg_matches_golden() {
    let lines = folded_lines(&fixed_report().stacks);
    let svg = flamegraph_svg(&lines, TITLE, Some(SUBTITLE)).unwrap();
    check_golden("leaks.svg", &svg);
}

#[test]
fn svg_looks_like_a_flamegraph() {
    let lines = folded_lines(&fixed_report().stacks);
    let svg = String::from_utf8(flamegraph_svg(&lines, TITLE, Some(SUBTITLE)).unwrap()).unwrap();
    assert!(svg.contains("<svg"));
    assert!(svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains(TITLE));
    assert!(svg.contains(SUBTITLE));
    assert!(svg.contains("bytes"));
    assert!(svg.contains("leak_site (fixture.c:42)"));
}

#[test]
fn empty_stacks_give_valid_svg() {
    let lines = folded_lines(&[]);
    assert!(lines.is_empty());
    let svg = String::from_utf8(flamegraph_svg(&lines, TITLE, None).unwrap()).unwrap();
    assert!(svg.starts_with("<?xml"));
    assert!(svg.contains("<svg"));
    assert!(svg.contains(TITLE));
    assert!(svg.contains("no outstanding allocations"));
    assert!(svg.trim_end().ends_with("</svg>"));
}

#[test]
fn artifacts_and_snapshots_are_written() {
    let dir = scratch_dir("artifacts");
    let report = fixed_report();
    let paths = write_artifacts(&dir, &report, TITLE).unwrap();
    let names: Vec<_> = paths
        .iter()
        .map(|p| p.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["leaks.folded", "leaks.svg", "summary.json"]);
    for path in &paths {
        assert!(fs::metadata(path).unwrap().len() > 0, "{}", path.display());
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["target"], "cgroup api-service");
    assert_eq!(summary["stacks"].as_array().unwrap().len(), 4);

    write_snapshot(&dir, 7, &report.stacks, TITLE).unwrap();
    write_snapshot(&dir, 8, &[], TITLE).unwrap();
    assert!(dir.join("snapshots/0007.folded").is_file());
    assert!(dir.join("snapshots/0007.svg").is_file());
    assert_eq!(fs::read(dir.join("snapshots/0008.folded")).unwrap(), b"");
    let empty_svg = fs::read_to_string(dir.join("snapshots/0008.svg")).unwrap();
    assert!(empty_svg.contains("no outstanding allocations"));
    let leftovers: Vec<_> = fs::read_dir(dir.join("snapshots"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
    fs::remove_dir_all(&dir).unwrap();
}
