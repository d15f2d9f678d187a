//! Per-stack classification of live memory over time: leak, cache, churn or unknown.
//!
//! # Method
//!
//! The input is one stack's [`Series`] of live bytes (time-weighted means after downsampling)
//! and, optionally, the number of allocations ever made at the stack (`total_allocations`).
//!
//! 1. **unknown** when the series has fewer than [`MIN_POINTS`] points or spans less than
//!    [`MIN_SPAN_S`] seconds.
//! 2. A least-squares line over the whole series gives the slope (`growth_bytes_per_s`) and R²;
//!    a second line over the *last third* of the time window (at least 3 points) gives
//!    `recent_growth_bytes_per_s`. `growth = slope × span` is the fitted growth over the window,
//!    `recent_growth` the same over the last third.
//! 3. **churn** (released) when the live bytes went back to about zero: the last point is at most
//!    5% of the peak (or the stack never held anything).
//! 4. **leak** when the growth is monotone and significant: slope > 0, R² ≥ 0.8, `growth` ≥ 1 KiB
//!    and either ≥ 10% of the last level or ≥ 64 MiB, and the last third still grows (recent
//!    slope > 25% of the overall slope). Confidence: R² × min(1, n/20).
//! 5. **cache** when it grew and then plateaued: `growth` ≥ 25% of the recent level, the last
//!    third is flat (|`recent_growth`| < 5% of the recent level) and the recent level is at least
//!    1 KiB. When `total_allocations` is given it must exceed the peak live allocation count
//!    (allocations were freed and replaced, so the stack is still turning over); a stack that
//!    grew and then simply stopped allocating is **unknown** (a one-time build-up). Confidence:
//!    min(1, n/20) × flatness (0.5..1, 1 for a perfectly flat last third), × 0.8 without
//!    `total_allocations`.
//! 6. **churn** when the level is bounded: no trend (|`growth`| ≤ 10% of the mean level), or a
//!    high turnover (`total_allocations` ≥ 10 × the peak live allocation count) — but never for a
//!    stack that freed nothing (`total_allocations` = its peak live count: memory held since it
//!    was allocated, **unknown**). Confidence:
//!    min(1, n/20) × (1 − 0.5 × min(1, |`growth`| / (10% of the mean level))).
//! 7. Otherwise **unknown** (confidence 0).
//!
//! The slopes are reported whatever the class (0 when they cannot be computed).

use serde::Serialize;

use super::series::{Point, Series};

/// Fewer points than this: [`Class::Unknown`].
pub const MIN_POINTS: usize = 5;
/// A shorter time span than this (seconds): [`Class::Unknown`].
pub const MIN_SPAN_S: f64 = 1.0;

const LEAK_MIN_R2: f64 = 0.8;
const LEAK_MIN_REL_GROWTH: f64 = 0.10;
const LEAK_ABS_GROWTH_BYTES: f64 = 64.0 * 1024.0 * 1024.0;
const LEAK_RECENT_RATIO: f64 = 0.25;
const MIN_LEVEL_BYTES: f64 = 1024.0;
const CACHE_MIN_REL_RISE: f64 = 0.25;
const CACHE_MAX_REL_RECENT: f64 = 0.05;
const RELEASED_FRACTION: f64 = 0.05;
const CHURN_MAX_REL_TREND: f64 = 0.10;
const CHURN_TURNOVER: f64 = 10.0;
const FULL_CONFIDENCE_POINTS: f64 = 20.0;

/// What a stack's live memory looks like over time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// Grows steadily and is still growing.
    Leak,
    /// Grew, then levelled off while still allocating (bounded working set).
    Cache,
    /// Allocated and freed: bounded level, or released back to about zero.
    Churn,
    /// Too little data, or no clear pattern.
    Unknown,
}

/// The classification of one stack.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Verdict {
    pub class: Class,
    /// Least-squares slope of live bytes over the whole series (bytes per second).
    pub growth_bytes_per_s: f64,
    /// 0..1.
    pub confidence: f64,
    /// Least-squares slope over the last third of the time window (bytes per second).
    pub recent_growth_bytes_per_s: f64,
}

/// Fits `y = slope × x + intercept` by least squares; returns `(slope, intercept, r2)`.
///
/// `None` with fewer than 2 points or when all `x` are equal (or not finite). When all `y` are
/// equal the fit is exact and R² is 1.
pub fn least_squares(points: &[(f64, f64)]) -> Option<(f64, f64, f64)> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
    for &(x, y) in points {
        let (dx, dy) = (x - mean_x, y - mean_y);
        sxx += dx * dx;
        sxy += dx * dy;
        syy += dy * dy;
    }
    if sxx <= 0.0 || !sxx.is_finite() {
        return None;
    }
    let slope = sxy / sxx;
    let intercept = mean_y - slope * mean_x;
    let r2 = if syy > 0.0 {
        (sxy * sxy / (sxx * syy)).clamp(0.0, 1.0)
    } else {
        1.0
    };
    Some((slope, intercept, r2))
}

fn fit(points: &[Point]) -> Option<(f64, f64, f64)> {
    let xy: Vec<(f64, f64)> = points.iter().map(|p| (p.t_s, p.bytes)).collect();
    least_squares(&xy)
}

fn mean_bytes(points: &[Point]) -> f64 {
    if points.is_empty() {
        return 0.0;
    }
    points.iter().map(|p| p.bytes).sum::<f64>() / points.len() as f64
}

/// Classifies one stack's series (see the module documentation for the method).
/// `total_allocations`: allocations ever made at the stack, when known.
pub fn classify(series: &Series, total_allocations: Option<u64>) -> Verdict {
    let pts = series.points();
    let n = pts.len();
    let (first, last) = match (pts.first(), pts.last()) {
        (Some(f), Some(l)) => (*f, *l),
        _ => return verdict(Class::Unknown, 0.0, 0.0, 0.0),
    };
    let span = last.t_s - first.t_s;

    // The last third of the time window, at least 3 points.
    let recent_from = pts
        .iter()
        .position(|p| p.t_s >= last.t_s - span / 3.0)
        .unwrap_or(0)
        .min(n.saturating_sub(3));
    let recent = &pts[recent_from..];

    let (slope, _, r2) = fit(pts).unwrap_or((0.0, 0.0, 0.0));
    let recent_slope = fit(recent).map_or(0.0, |f| f.0);
    if n < MIN_POINTS || span.is_nan() || span < MIN_SPAN_S {
        return verdict(Class::Unknown, slope, 0.0, recent_slope);
    }

    let size_weight = (n as f64 / FULL_CONFIDENCE_POINTS).min(1.0);
    let peak = series.max_bytes();
    let growth = slope * span;
    let recent_span = last.t_s - recent[0].t_s;
    let recent_growth = recent_slope * recent_span;
    let recent_level = mean_bytes(recent);
    let mean_level = mean_bytes(pts);
    let peak_count = series.max_count();
    let turned_over = total_allocations.map(|total| total as f64 > peak_count);
    let high_turnover =
        total_allocations.is_some_and(|total| total as f64 >= CHURN_TURNOVER * peak_count.max(1.0));

    // Released back to about zero.
    if peak <= 0.0 || last.bytes <= RELEASED_FRACTION * peak {
        return verdict(Class::Churn, slope, size_weight, recent_slope);
    }

    // Monotone, significant, still growing.
    if slope > 0.0
        && r2 >= LEAK_MIN_R2
        && growth >= MIN_LEVEL_BYTES
        && (growth >= LEAK_MIN_REL_GROWTH * last.bytes || growth >= LEAK_ABS_GROWTH_BYTES)
        && recent_slope > LEAK_RECENT_RATIO * slope
    {
        return verdict(Class::Leak, slope, r2 * size_weight, recent_slope);
    }

    // Grew, then a plateau.
    if slope > 0.0
        && recent_level >= MIN_LEVEL_BYTES
        && growth >= CACHE_MIN_REL_RISE * recent_level
        && recent_growth.abs() < CACHE_MAX_REL_RECENT * recent_level
    {
        return match turned_over {
            Some(false) => verdict(Class::Unknown, slope, 0.0, recent_slope),
            _ => {
                let flatness =
                    1.0 - 0.5 * (recent_growth.abs() / (CACHE_MAX_REL_RECENT * recent_level));
                let known = if turned_over.is_some() { 1.0 } else { 0.8 };
                verdict(
                    Class::Cache,
                    slope,
                    size_weight * flatness * known,
                    recent_slope,
                )
            }
        };
    }

    // Bounded level. Churn means short-lived allocations: a flat stack that never freed
    // anything (allocations ever made = live ones) is memory held since it was allocated, not
    // churn; with no growth either it cannot be called a leak: unknown.
    let trend = growth.abs() / (CHURN_MAX_REL_TREND * mean_level);
    if turned_over == Some(false) && !high_turnover {
        return verdict(Class::Unknown, slope, 0.0, recent_slope);
    }
    if trend <= 1.0 || high_turnover {
        let confidence = size_weight * (1.0 - 0.5 * trend.min(1.0));
        return verdict(Class::Churn, slope, confidence, recent_slope);
    }

    verdict(Class::Unknown, slope, 0.0, recent_slope)
}

fn verdict(class: Class, slope: f64, confidence: f64, recent_slope: f64) -> Verdict {
    Verdict {
        class,
        growth_bytes_per_s: slope,
        confidence: confidence.clamp(0.0, 1.0),
        recent_growth_bytes_per_s: recent_slope,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic noise in [-1, 1] (xorshift).
    struct Noise(u64);
    impl Noise {
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        }
    }

    fn series(n: usize, interval_s: f64, f: impl Fn(usize, f64) -> f64) -> Series {
        let mut s = Series::default();
        for i in 0..n {
            let t = i as f64 * interval_s;
            s.push(Point::new(t, f(i, t), 1.0));
        }
        s
    }

    #[test]
    fn least_squares_fits_a_line() {
        let (slope, intercept, r2) = least_squares(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]).unwrap();
        assert!((slope - 2.0).abs() < 1e-12 && (intercept - 1.0).abs() < 1e-12);
        assert!((r2 - 1.0).abs() < 1e-12);
        assert_eq!(least_squares(&[(1.0, 1.0)]), None);
        assert_eq!(least_squares(&[(1.0, 1.0), (1.0, 2.0)]), None);
        assert_eq!(
            least_squares(&[(0.0, 4.0), (1.0, 4.0)]),
            Some((0.0, 4.0, 1.0))
        );
    }

    #[test]
    fn flat_and_never_freed_is_not_churn() {
        let mut s = Series::new(Series::DEFAULT_CAP);
        for i in 0..30 {
            s.push(Point::new(i as f64, 1_000_000.0, 1000.0));
        }
        assert_eq!(classify(&s, Some(1000)).class, Class::Unknown);
        // The same level with allocations coming and going is churn.
        assert_eq!(classify(&s, Some(50_000)).class, Class::Churn);
    }

    #[test]
    fn steady_leak() {
        // 1 MiB base, 4 KiB/s, a point every 10 s for 10 minutes.
        let s = series(60, 10.0, |_, t| 1048576.0 + 4096.0 * t);
        let v = classify(&s, Some(10_000));
        assert_eq!(v.class, Class::Leak);
        assert!((v.growth_bytes_per_s - 4096.0).abs() < 0.01 * 4096.0);
        assert!((v.recent_growth_bytes_per_s - 4096.0).abs() < 0.01 * 4096.0);
        assert!(v.confidence > 0.95);
    }

    #[test]
    fn steady_leak_over_a_long_downsampled_run() {
        // Three days at 10 s: 25920 samples in 512 points.
        let s = series(25_920, 10.0, |_, t| 100.0 * t);
        assert!(s.len() > Series::DEFAULT_CAP / 2 && s.len() <= Series::DEFAULT_CAP);
        let v = classify(&s, None);
        assert_eq!(v.class, Class::Leak);
        assert!((v.growth_bytes_per_s - 100.0).abs() < 1.0);
    }

    #[test]
    fn noisy_leak() {
        let mut noise = Noise(0x9e3779b97f4a7c15);
        let values: Vec<f64> = (0..50)
            .map(|i| (65536.0 + 2048.0 * (i as f64 * 5.0)) * (1.0 + 0.05 * noise.next()))
            .collect();
        let s = series(50, 5.0, |i, _| values[i]);
        let v = classify(&s, None);
        assert_eq!(v.class, Class::Leak, "{v:?}");
        assert!((v.growth_bytes_per_s - 2048.0).abs() < 0.1 * 2048.0);
    }

    #[test]
    fn cache_fills_then_plateaus() {
        let mut noise = Noise(42);
        let values: Vec<f64> = (0..60)
            .map(|i| {
                let fill = (i as f64 / 24.0).min(1.0); // 40% of the time filling
                8.0 * 1048576.0 * fill * (1.0 + 0.005 * noise.next())
            })
            .collect();
        let s = series(60, 10.0, |i, _| values[i]);
        let v = classify(&s, Some(1_000_000));
        assert_eq!(v.class, Class::Cache, "{v:?}");
        assert!(v.confidence > 0.5);
        // Without allocation totals: still a cache, less sure.
        let w = classify(&s, None);
        assert_eq!(w.class, Class::Cache);
        assert!(w.confidence < v.confidence);
        // Grew, then stopped allocating entirely: not a cache.
        assert_eq!(classify(&s, Some(1)).class, Class::Unknown);
    }

    #[test]
    fn churn_around_a_constant() {
        let mut noise = Noise(7);
        let values: Vec<f64> = (0..40)
            .map(|_| 262144.0 * (1.0 + 0.3 * noise.next()))
            .collect();
        let s = series(40, 10.0, |i, _| values[i]);
        let v = classify(&s, Some(500_000));
        assert_eq!(v.class, Class::Churn, "{v:?}");
        assert!(v.confidence > 0.0);
        assert_eq!(classify(&s, None).class, Class::Churn);
    }

    #[test]
    fn too_few_points() {
        let s = series(3, 10.0, |_, t| 1000.0 * t);
        let v = classify(&s, None);
        assert_eq!(v.class, Class::Unknown);
        assert_eq!(v.confidence, 0.0);
        assert_eq!(classify(&Series::default(), None).class, Class::Unknown);
    }

    #[test]
    fn rise_then_fall_to_zero_is_churn() {
        let s = series(30, 10.0, |i, _| {
            if i < 15 {
                4096.0 * i as f64
            } else {
                (4096.0 * (29 - i) as f64 - 8192.0).max(0.0)
            }
        });
        assert_eq!(s.last().unwrap().bytes, 0.0);
        assert_eq!(classify(&s, None).class, Class::Churn);
    }

    #[test]
    fn serializes_lowercase() {
        let v = verdict(Class::Leak, 1.0, 0.5, 1.0);
        let json = serde_json::to_string(&v).unwrap();
        assert!(json.contains("\"class\":\"leak\""), "{json}");
        assert_eq!(
            serde_json::to_string(&Class::Unknown).unwrap(),
            "\"unknown\""
        );
    }
}
