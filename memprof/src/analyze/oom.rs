//! When will the container hit its memory limit, at the current rate?

use super::classify::least_squares;
use super::series::Series;

/// Memory limits at or above this mean "no limit" (cgroup v1 reports an unlimited
/// `memory.limit_in_bytes` as a huge page-aligned value such as `9223372036854771712`).
pub const UNLIMITED_THRESHOLD: u64 = 1 << 62;

/// Points the recent window has at least.
const MIN_RECENT_POINTS: usize = 3;

/// Seconds until the cgroup's memory usage reaches `limit` at the recent growth rate.
///
/// The rate is the least-squares slope of the newest half of `usage`'s points (at least 3;
/// with downsampling that is the full-resolution part). `None` without a limit (`None`, or a
/// value of [`UNLIMITED_THRESHOLD`] or more), with fewer than 3 points, or when usage is not
/// growing (slope ≤ 0). `Some(0.0)` when the last usage is already at or over the limit.
pub fn oom_eta_s(usage: &Series, limit: Option<u64>) -> Option<f64> {
    let limit = limit.filter(|&l| l < UNLIMITED_THRESHOLD)? as f64;
    let pts = usage.points();
    if pts.len() < MIN_RECENT_POINTS {
        return None;
    }
    let recent_len = (pts.len() / 2).max(MIN_RECENT_POINTS);
    let recent: Vec<(f64, f64)> = pts[pts.len() - recent_len..]
        .iter()
        .map(|p| (p.t_s, p.bytes))
        .collect();
    let (slope, _, _) = least_squares(&recent)?;
    if !(slope > 0.0 && slope.is_finite()) {
        return None;
    }
    let last = pts[pts.len() - 1].bytes;
    Some(((limit - last) / slope).max(0.0))
}

/// Parses a cgroup memory limit file: v2 `memory.max` (`"max\n"` → `None`, `"536870912\n"` →
/// `Some(536870912)`) or v1 `memory.limit_in_bytes` (a value of [`UNLIMITED_THRESHOLD`] or more
/// → `None`). Unparsable content is `None` too.
pub fn parse_memory_max(s: &str) -> Option<u64> {
    let s = s.trim();
    if s == "max" {
        return None;
    }
    s.parse::<u64>().ok().filter(|&v| v < UNLIMITED_THRESHOLD)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::series::Point;

    fn usage(values: &[(f64, f64)]) -> Series {
        let mut s = Series::default();
        for &(t, b) in values {
            s.push(Point::new(t, b, 0.0));
        }
        s
    }

    #[test]
    fn eta_at_the_recent_rate() {
        // Flat for a while, then 1 MiB/s: the recent rate decides.
        let mut pts: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 100.0 * 1048576.0)).collect();
        pts.extend((10..20).map(|i| (i as f64, (100.0 + (i - 9) as f64) * 1048576.0)));
        let s = usage(&pts);
        // Last usage 110 MiB, limit 200 MiB: 90 s.
        let eta = oom_eta_s(&s, Some(200 * 1048576)).unwrap();
        assert!((eta - 90.0).abs() < 1e-6, "{eta}");
    }

    #[test]
    fn no_eta_without_limit_or_growth() {
        let growing = usage(&[(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0)]);
        assert_eq!(oom_eta_s(&growing, None), None);
        assert_eq!(oom_eta_s(&growing, Some(u64::MAX)), None);
        assert_eq!(oom_eta_s(&growing, Some(9223372036854771712)), None);
        assert_eq!(oom_eta_s(&growing, Some(10)), Some(6.0));
        let shrinking = usage(&[(0.0, 4.0), (1.0, 3.0), (2.0, 2.0), (3.0, 1.0)]);
        assert_eq!(oom_eta_s(&shrinking, Some(10)), None);
        let flat = usage(&[(0.0, 4.0), (1.0, 4.0), (2.0, 4.0)]);
        assert_eq!(oom_eta_s(&flat, Some(10)), None);
        let short = usage(&[(0.0, 1.0), (1.0, 2.0)]);
        assert_eq!(oom_eta_s(&short, Some(10)), None);
    }

    #[test]
    fn eta_is_zero_at_the_limit() {
        let s = usage(&[(0.0, 8.0), (1.0, 9.0), (2.0, 10.0), (3.0, 11.0)]);
        assert_eq!(oom_eta_s(&s, Some(10)), Some(0.0));
    }

    #[test]
    fn parses_limits() {
        assert_eq!(parse_memory_max("max\n"), None);
        assert_eq!(parse_memory_max("536870912\n"), Some(536870912));
        assert_eq!(parse_memory_max("9223372036854771712\n"), None);
        assert_eq!(parse_memory_max("garbage"), None);
        assert_eq!(parse_memory_max(""), None);
    }
}
