//! Bounded time series, so that a run of several days keeps a fixed amount of history.
//!
//! A [`Series`] holds at most `cap` points. The newest half is kept at full resolution; when the
//! series is full, adjacent points in the older half are merged pairwise (always the pair that
//! stands for the fewest samples), freeing a quarter of the capacity. The older half thus keeps an
//! even, slowly coarsening resolution over the whole old history while memory stays constant. The
//! very first point is never merged: the start of the history stays exact. A merged point is the
//! *weighted average* of its two points (time, bytes and count, each point weighted by the number
//! of samples it already stands for), so a merged point is the plain mean of all the samples it
//! covers and a trend fitted over the series is not distorted.

use std::collections::HashMap;

use serde::{Serialize, Serializer};

/// One sample: live bytes and live allocations at a time.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Point {
    /// Seconds since profiling started.
    pub t_s: f64,
    pub bytes: f64,
    pub count: f64,
}

impl Point {
    pub fn new(t_s: f64, bytes: f64, count: f64) -> Self {
        Self { t_s, bytes, count }
    }
}

/// A time series of at most `cap` points, downsampling its older half when full (see the module
/// documentation). Points are expected in non-decreasing time order. Serializes as the list of
/// its points.
#[derive(Clone, Debug)]
pub struct Series {
    cap: usize,
    points: Vec<Point>,
    /// Samples merged into each point (parallel to `points`).
    weights: Vec<u32>,
    max_bytes: f64,
    max_count: f64,
}

impl Series {
    /// The default number of points kept.
    pub const DEFAULT_CAP: usize = 512;
    /// The smallest `cap` accepted (smaller values are raised to it), so that the older half
    /// always has a pair to merge.
    pub const MIN_CAP: usize = 8;

    pub fn new(cap: usize) -> Self {
        let cap = cap.max(Self::MIN_CAP);
        Self {
            cap,
            points: Vec::with_capacity(cap),
            weights: Vec::with_capacity(cap),
            max_bytes: 0.0,
            max_count: 0.0,
        }
    }

    /// Appends a sample, first merging pairs in the older half when the series is full.
    pub fn push(&mut self, point: Point) {
        if self.points.len() >= self.cap {
            self.compact();
        }
        self.max_bytes = self.max_bytes.max(point.bytes);
        self.max_count = self.max_count.max(point.count);
        self.points.push(point);
        self.weights.push(1);
    }

    /// Frees about a quarter of the capacity by merging within `points[1..len/2]` (the first
    /// point and the newest half are kept as they are): repeatedly the adjacent pair with the
    /// smallest combined weight (the oldest such pair on ties). Starting from equal weights this
    /// merges neighbours pairwise; over a long run it keeps the older half at an even resolution
    /// instead of folding all of the old history into a few points.
    fn compact(&mut self) {
        let half = self.points.len() / 2;
        let mut old_end = half; // exclusive end of the older half
        let mut to_free = (half.saturating_sub(1) / 2).max(1);
        while to_free > 0 && old_end >= 3 {
            let i = (1..old_end - 1)
                .min_by_key(|&i| {
                    (
                        u64::from(self.weights[i]) + u64::from(self.weights[i + 1]),
                        i,
                    )
                })
                .expect("the older half holds a pair");
            let (a, b) = (self.points[i], self.points[i + 1]);
            let (wa, wb) = (f64::from(self.weights[i]), f64::from(self.weights[i + 1]));
            let mean = |x: f64, y: f64| (x * wa + y * wb) / (wa + wb);
            self.points[i] = Point {
                t_s: mean(a.t_s, b.t_s),
                bytes: mean(a.bytes, b.bytes),
                count: mean(a.count, b.count),
            };
            self.weights[i] = self.weights[i].saturating_add(self.weights[i + 1]);
            self.points.remove(i + 1);
            self.weights.remove(i + 1);
            old_end -= 1;
            to_free -= 1;
        }
    }

    /// The points, oldest first.
    pub fn points(&self) -> &[Point] {
        &self.points
    }

    /// The first sample ever pushed (never merged).
    pub fn first(&self) -> Option<&Point> {
        self.points.first()
    }

    /// The newest sample.
    pub fn last(&self) -> Option<&Point> {
        self.points.last()
    }

    /// Points held (at most [`Series::cap`]), not samples pushed.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// The largest `bytes` ever pushed (exact, not affected by merging).
    pub fn max_bytes(&self) -> f64 {
        self.max_bytes
    }

    /// The largest `count` ever pushed (exact, not affected by merging).
    pub fn max_count(&self) -> f64 {
        self.max_count
    }
}

impl Default for Series {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAP)
    }
}

impl Serialize for Series {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(&self.points)
    }
}

/// The history of a run: one [`Series`] per call stack (live bytes and allocations), the total
/// live bytes, and the cgroup's memory usage.
///
/// Memory is bounded twice: each series by its `cap`, and the number of stacks by `max_stacks`.
/// When a snapshot brings the number of tracked stacks over `max_stacks`, the stacks with the
/// smallest peak (`max_bytes`; ties: smaller latest bytes, then frames order) are dropped. A
/// dropped stack that appears again starts a new series.
#[derive(Clone, Debug)]
pub struct History {
    cap: usize,
    max_stacks: usize,
    stacks: HashMap<Vec<String>, Series>,
    totals: Series,
    cgroup: Series,
}

impl History {
    /// The default number of stacks tracked.
    pub const DEFAULT_MAX_STACKS: usize = 2000;

    /// `cap`: points per series; `max_stacks`: stacks tracked (at least 1).
    pub fn new(cap: usize, max_stacks: usize) -> Self {
        Self {
            cap,
            max_stacks: max_stacks.max(1),
            stacks: HashMap::new(),
            totals: Series::new(cap),
            cgroup: Series::new(cap),
        }
    }

    /// Records one snapshot taken at `t_s`: `stacks` yields `(frames root→leaf, live bytes, live
    /// allocations)` (repeated frames are summed), `total_bytes` is the total live bytes, and
    /// `cgroup_usage` the cgroup's memory usage when known (no point is added without it).
    ///
    /// A tracked stack absent from the snapshot gets a zero point, so a freed stack decays to 0.
    /// A stack seen for the first time with zero bytes and zero allocations is not tracked.
    pub fn record<'a, I>(
        &mut self,
        t_s: f64,
        stacks: I,
        total_bytes: u64,
        cgroup_usage: Option<u64>,
    ) where
        I: IntoIterator<Item = (&'a [String], u64, u64)>,
    {
        let mut snapshot: HashMap<&[String], (u64, u64)> = HashMap::new();
        for (frames, bytes, count) in stacks {
            let entry = snapshot.entry(frames).or_default();
            entry.0 = entry.0.saturating_add(bytes);
            entry.1 = entry.1.saturating_add(count);
        }
        for (frames, series) in &mut self.stacks {
            if !snapshot.contains_key(frames.as_slice()) {
                series.push(Point::new(t_s, 0.0, 0.0));
            }
        }
        for (frames, (bytes, count)) in snapshot {
            let point = Point::new(t_s, bytes as f64, count as f64);
            match self.stacks.get_mut(frames) {
                Some(series) => series.push(point),
                None if bytes == 0 && count == 0 => {}
                None => {
                    let mut series = Series::new(self.cap);
                    series.push(point);
                    self.stacks.insert(frames.to_vec(), series);
                }
            }
        }
        self.evict();
        self.totals.push(Point::new(t_s, total_bytes as f64, 0.0));
        if let Some(usage) = cgroup_usage {
            self.cgroup.push(Point::new(t_s, usage as f64, 0.0));
        }
    }

    /// Drops the stacks with the smallest peak until at most `max_stacks` remain.
    fn evict(&mut self) {
        let excess = self.stacks.len().saturating_sub(self.max_stacks);
        if excess == 0 {
            return;
        }
        let mut ranked: Vec<(&Vec<String>, &Series)> = self.stacks.iter().collect();
        let last_bytes = |s: &Series| s.last().map_or(0.0, |p| p.bytes);
        ranked.sort_unstable_by(|(ka, a), (kb, b)| {
            a.max_bytes()
                .total_cmp(&b.max_bytes())
                .then(last_bytes(a).total_cmp(&last_bytes(b)))
                .then_with(|| ka.cmp(kb))
        });
        let doomed: Vec<Vec<String>> = ranked[..excess].iter().map(|(k, _)| (*k).clone()).collect();
        for key in doomed {
            self.stacks.remove(&key);
        }
    }

    /// Every tracked stack's series, by frames (root → leaf).
    pub fn stacks(&self) -> &HashMap<Vec<String>, Series> {
        &self.stacks
    }

    /// One stack's series.
    pub fn stack(&self, frames: &[String]) -> Option<&Series> {
        self.stacks.get(frames)
    }

    /// Total live bytes over time (`count` is 0).
    pub fn totals(&self) -> &Series {
        &self.totals
    }

    /// The cgroup's memory usage in bytes over time (`count` is 0); empty when never known.
    pub fn cgroup(&self) -> &Series {
        &self.cgroup
    }
}

impl Default for History {
    fn default() -> Self {
        Self::new(Series::DEFAULT_CAP, Self::DEFAULT_MAX_STACKS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_bounded_and_keeps_first_and_recent_points() {
        let mut s = Series::new(16);
        for i in 0..10_000 {
            s.push(Point::new(i as f64, (2 * i) as f64, 1.0));
            assert!(s.len() <= 16);
        }
        assert_eq!(s.first(), Some(&Point::new(0.0, 0.0, 1.0)));
        assert_eq!(s.last(), Some(&Point::new(9999.0, 19998.0, 1.0)));
        // The newest half is at full resolution.
        let pts = s.points();
        for w in pts[pts.len() - 8..].windows(2) {
            assert_eq!(w[1].t_s - w[0].t_s, 1.0);
        }
        // Times stay ordered, and merged points are means of a linear series: still on the line.
        for w in pts.windows(2) {
            assert!(w[0].t_s < w[1].t_s);
        }
        for p in pts {
            assert!((p.bytes - 2.0 * p.t_s).abs() < 1e-6, "{p:?}");
        }
        assert_eq!(s.max_bytes(), 19998.0);
    }

    #[test]
    fn merged_points_are_sample_means() {
        let mut s = Series::new(8);
        for i in 0..9 {
            s.push(Point::new(i as f64, i as f64, 0.0));
        }
        // Full at 8: points 1,2 and 3 were merged before the 9th push.
        let ts: Vec<f64> = s.points().iter().map(|p| p.t_s).collect();
        assert_eq!(ts, vec![0.0, 1.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        let total_weight: u32 = s.weights.iter().sum();
        assert_eq!(total_weight, 9);
    }

    fn frames(name: &str) -> Vec<String> {
        vec!["main".to_string(), name.to_string()]
    }

    #[test]
    fn absent_stack_decays_to_zero_and_cgroup_is_optional() {
        let (a, b) = (frames("a"), frames("b"));
        let mut h = History::default();
        h.record(
            0.0,
            [(a.as_slice(), 100, 1), (b.as_slice(), 50, 1)],
            150,
            None,
        );
        h.record(10.0, [(a.as_slice(), 200, 2)], 200, Some(4096));
        let sb = h.stack(&b).unwrap();
        assert_eq!(sb.len(), 2);
        assert_eq!(sb.last().unwrap().bytes, 0.0);
        assert_eq!(h.stack(&a).unwrap().last().unwrap().bytes, 200.0);
        assert_eq!(h.totals().len(), 2);
        assert_eq!(h.cgroup().len(), 1);
    }

    #[test]
    fn caps_the_number_of_stacks_dropping_the_smallest_peak() {
        let mut h = History::new(16, 2);
        let (a, b, c) = (frames("a"), frames("b"), frames("c"));
        h.record(
            0.0,
            [(a.as_slice(), 300, 1), (b.as_slice(), 100, 1)],
            400,
            None,
        );
        h.record(
            1.0,
            [(a.as_slice(), 300, 1), (c.as_slice(), 200, 1)],
            500,
            None,
        );
        assert_eq!(h.stacks().len(), 2);
        assert!(h.stack(&a).is_some() && h.stack(&c).is_some() && h.stack(&b).is_none());
    }
}
