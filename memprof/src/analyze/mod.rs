//! Analysis of a run's history: bounded time series ([`series`]), per-stack classification as
//! leak, cache or churn ([`classify`]), and the time left before the cgroup's memory limit
//! ([`oom`]). Pure logic: no I/O.

pub mod classify;
pub mod functions;
pub mod oom;
pub mod series;

use std::collections::HashMap;

pub use classify::{classify, least_squares, Class, Verdict};
pub use oom::{oom_eta_s, parse_memory_max};
pub use series::{History, Point, Series};

/// Classifies every stack tracked by `history`. `totals`: allocations ever made per stack
/// (frames root → leaf); a stack missing from it is classified without that information.
pub fn classify_all(
    history: &History,
    totals: &HashMap<Vec<String>, u64>,
) -> HashMap<Vec<String>, Verdict> {
    history
        .stacks()
        .iter()
        .map(|(frames, series)| {
            (
                frames.clone(),
                classify(series, totals.get(frames).copied()),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_every_stack() {
        let leak = vec!["main".to_string(), "leak".to_string()];
        let gone = vec!["main".to_string(), "gone".to_string()];
        let mut history = History::default();
        for i in 0..30u64 {
            let mut stacks = vec![(leak.as_slice(), 4096 * (i + 1), i + 1)];
            if i < 10 {
                stacks.push((gone.as_slice(), 65536, 16));
            }
            history.record(i as f64 * 10.0, stacks, 0, None);
        }
        let totals = HashMap::from([(leak.clone(), 30), (gone.clone(), 1000)]);
        let verdicts = classify_all(&history, &totals);
        assert_eq!(verdicts.len(), 2);
        assert_eq!(verdicts[&leak].class, Class::Leak);
        assert_eq!(verdicts[&gone].class, Class::Churn);
    }
}
