//! `summary.json`: the whole [`Report`] as pretty JSON.

use std::path::Path;

use super::{write_atomic, OutputError};
use crate::report::Report;

/// Writes `report` as pretty JSON to `path` (via `path.tmp` and a rename).
pub fn write_summary(path: &Path, report: &Report) -> Result<(), OutputError> {
    let mut json = serde_json::to_vec_pretty(report)?;
    json.push(b'\n');
    write_atomic(path, &json)
}
