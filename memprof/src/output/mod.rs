//! Writers for a [`Report`]: folded stacks, flamegraph SVG, JSON summary, terminal table.

mod folded;
mod growth;
mod html;
pub mod pprof;
mod summary;
mod svg;
mod terminal;
mod timeline;

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::report::{Report, SnapshotInfo, StackReport};

pub use pprof::write_pprof;
pub use self::folded::{escape_frame, folded_lines, unescape_frame, write_folded, NO_STACK};
pub use self::growth::{growth_svg, write_growth_svg};
pub use self::html::{report_html, write_report_html, SnapshotSvg, MAX_SNAPSHOTS};
pub use self::summary::write_summary;
pub use self::svg::{flamegraph_svg, write_flamegraph};
pub use self::terminal::{human_bytes, human_duration, human_rate, render_summary};
pub use self::timeline::{timeline_svg, write_timeline_svg};

/// File names written by [`write_artifacts`].
pub const FOLDED_FILE: &str = "leaks.folded";
pub const SVG_FILE: &str = "leaks.svg";
pub const SUMMARY_FILE: &str = "summary.json";
pub const GROWTH_FILE: &str = "growth.svg";
pub const TIMELINE_FILE: &str = "timeline.svg";
pub const HTML_FILE: &str = "report.html";
pub use pprof::PPROF_FILE;
/// Stacks drawn in the timeline.
const TIMELINE_TOP: usize = 8;
/// Directory (inside the output directory) written by [`write_snapshot`].
pub const SNAPSHOT_DIR: &str = "snapshots";

/// Errors from the output writers.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("failed to write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to render flamegraph: {0}")]
    Flamegraph(#[source] io::Error),
    #[error("failed to serialize summary: {0}")]
    Json(#[from] serde_json::Error),
}

impl OutputError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        OutputError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Writes `leaks.folded`, `leaks.svg` and `summary.json` into `dir` (created if missing) and
/// returns their paths.
pub fn write_artifacts(
    dir: &Path,
    report: &Report,
    title: &str,
) -> Result<Vec<PathBuf>, OutputError> {
    create_dir(dir)?;
    let folded = folded_lines(&report.stacks);
    let subtitle = format!(
        "{} outstanding in {} allocations after {:.1}s",
        human_bytes(report.live_bytes),
        report.live_allocations,
        report.duration_s
    );

    let folded_path = dir.join(FOLDED_FILE);
    write_atomic(&folded_path, &folded_bytes(&folded))?;
    let svg_path = dir.join(SVG_FILE);
    write_flamegraph(&svg_path, &folded, title, Some(&subtitle))?;
    let summary_path = dir.join(SUMMARY_FILE);
    write_summary(&summary_path, report)?;
    Ok(vec![folded_path, svg_path, summary_path])
}

/// What the final artifacts need beyond the report: the first snapshot (the base of the growth
/// flamegraph) and where the snapshot flamegraphs are (for the report's time slider).
pub struct RunHistory<'a> {
    pub first_folded: &'a [String],
    /// The folder holding `snapshots/`.
    pub snapshots_dir: &'a Path,
}

/// Writes every final artifact: `leaks.folded`, `leaks.svg`, `summary.json`, `growth.svg`,
/// `timeline.svg`, `profile.pb.gz` and `report.html`. Returns their paths.
pub fn write_final(
    dir: &Path,
    report: &Report,
    title: &str,
    history: &RunHistory<'_>,
) -> Result<Vec<PathBuf>, OutputError> {
    let mut paths = write_artifacts(dir, report, title)?;
    let last = folded_lines(&report.stacks);
    let growth = growth_svg(history.first_folded, &last, &format!("{title}: growth since the first snapshot"))?;
    let growth_path = dir.join(GROWTH_FILE);
    write_atomic(&growth_path, &growth)?;
    let timeline = timeline_svg(report, TIMELINE_TOP);
    let timeline_path = dir.join(TIMELINE_FILE);
    write_atomic(&timeline_path, timeline.as_bytes())?;
    let pprof_path = dir.join(PPROF_FILE);
    let started_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
        - (report.duration_s * 1e9) as i64;
    write_pprof(&pprof_path, &report.stacks, (report.duration_s * 1e9) as i64, started_ns)?;
    let flamegraph = fs::read_to_string(dir.join(SVG_FILE)).map_err(|e| OutputError::io(&dir.join(SVG_FILE), e))?;
    let snapshots = snapshot_svgs(history.snapshots_dir, report);
    let html = report_html(report, &flamegraph, &String::from_utf8_lossy(&growth), &timeline, &snapshots);
    let html_path = dir.join(HTML_FILE);
    write_atomic(&html_path, html.as_bytes())?;
    paths.extend([growth_path, timeline_path, pprof_path, html_path]);
    Ok(paths)
}

/// At most [`MAX_SNAPSHOTS`] snapshot flamegraphs, evenly spaced (always the last), read back
/// from disk so memory does not grow with the length of the run.
fn snapshot_svgs(dir: &Path, report: &Report) -> Vec<SnapshotSvg> {
    let n = report.snapshots.len();
    let picks: Vec<usize> = if n <= MAX_SNAPSHOTS {
        (0..n).collect()
    } else {
        let mut v: Vec<usize> = (0..MAX_SNAPSHOTS).map(|i| i * (n - 1) / (MAX_SNAPSHOTS - 1)).collect();
        v.dedup();
        v
    };
    picks
        .into_iter()
        .filter_map(|i| {
            let info = &report.snapshots[i];
            let path = dir.join(SNAPSHOT_DIR).join(format!("{:04}.svg", info.index));
            let svg = fs::read_to_string(path).ok()?;
            Some(SnapshotSvg { index: info.index, elapsed_s: info.elapsed_s, svg })
        })
        .collect()
}

/// Most snapshots kept (on disk as `snapshots/NNNN.*`, and in summary.json): beyond it the
/// older half is thinned to every other one, so a run of any length keeps recent snapshots at
/// `--interval` and older ones at coarser and coarser spacing.
pub const SNAPSHOTS_KEPT: usize = 512;

/// Thins `snapshots` (oldest first) once it holds more than [`SNAPSHOTS_KEPT`]: every other
/// one of the older half goes (the first stays). Returns the indexes removed.
pub fn thin_snapshots(snapshots: &mut Vec<SnapshotInfo>) -> Vec<u32> {
    if snapshots.len() <= SNAPSHOTS_KEPT {
        return Vec::new();
    }
    let half = snapshots.len() / 2;
    let mut removed = Vec::new();
    let mut pos = 0;
    snapshots.retain(|s| {
        let keep = pos >= half || pos % 2 == 0;
        if !keep {
            removed.push(s.index);
        }
        pos += 1;
        keep
    });
    removed
}

/// Deletes the files of snapshot `index` (thinned away).
pub fn remove_snapshot(dir: &Path, index: u32) {
    for ext in ["folded", "svg"] {
        let _ = fs::remove_file(dir.join(SNAPSHOT_DIR).join(format!("{index:04}.{ext}")));
    }
}

/// Writes `dir/snapshots/NNNN.folded` and `dir/snapshots/NNNN.svg` for snapshot `index`.
pub fn write_snapshot(
    dir: &Path,
    index: u32,
    stacks: &[StackReport],
    title: &str,
) -> Result<(), OutputError> {
    let snap_dir = dir.join(SNAPSHOT_DIR);
    create_dir(&snap_dir)?;
    let folded = folded_lines(stacks);
    write_atomic(
        &snap_dir.join(format!("{index:04}.folded")),
        &folded_bytes(&folded),
    )?;
    let subtitle = format!("snapshot {index}");
    write_flamegraph(
        &snap_dir.join(format!("{index:04}.svg")),
        &folded,
        title,
        Some(&subtitle),
    )
}

fn create_dir(dir: &Path) -> Result<(), OutputError> {
    fs::create_dir_all(dir).map_err(|e| OutputError::io(dir, e))
}

/// Folded lines as file contents: one per line, newline-terminated.
pub(crate) fn folded_bytes(lines: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
    for line in lines {
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out
}

/// Writes `data` to `path.tmp`, then renames it over `path`, so readers never see a partial file.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), OutputError> {
    let mut tmp = OsString::from(path.as_os_str());
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(data)?;
        file.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(OutputError::io(&tmp, e));
    }
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        OutputError::io(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_thinned_older_first() {
        let mut kept: Vec<SnapshotInfo> = Vec::new();
        let mut removed = Vec::new();
        for index in 1..=20_000u32 {
            kept.push(SnapshotInfo { index, elapsed_s: index as f64, ..Default::default() });
            removed.extend(thin_snapshots(&mut kept));
            assert!(kept.len() <= SNAPSHOTS_KEPT);
        }
        assert_eq!(kept.len() + removed.len(), 20_000);
        assert_eq!(kept.first().unwrap().index, 1, "the first snapshot stays");
        assert_eq!(kept.last().unwrap().index, 20_000, "the last snapshot stays");
        // Recent ones at the interval, older ones coarser.
        let gap = |i: usize| kept[i + 1].index - kept[i].index;
        assert_eq!(gap(kept.len() - 2), 1);
        assert!(gap(1) > 8 * gap(kept.len() - 2), "older gap {}", gap(1));
        assert!(kept.windows(2).all(|w| w[0].index < w[1].index));
    }

    #[test]
    fn atomic_write_replaces_file_and_leaves_no_tmp() {
        let dir = std::env::temp_dir().join(format!("memprof-out-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.txt");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert!(!dir.join("x.txt.tmp").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn io_error_names_path() {
        let err = write_atomic(Path::new("/nonexistent-dir/memprof/x"), b"").unwrap_err();
        assert!(err
            .to_string()
            .starts_with("failed to write /nonexistent-dir/memprof/x"));
    }
}
