//! What keeps a slow or dead receiver from growing memprof's memory: a queue of fixed capacity
//! that drops its oldest entry to make room, and the backoff between retries.

use std::{collections::VecDeque, time::Duration};

/// A FIFO of at most `capacity` entries. Pushing into a full queue drops the oldest entry and
/// hands it back, so the newest data always gets in and memory stays bounded.
#[derive(Debug)]
pub struct BoundedQueue<T> {
    items: VecDeque<T>,
    capacity: usize,
}

impl<T> BoundedQueue<T> {
    /// A queue holding at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self { items: VecDeque::with_capacity(capacity), capacity }
    }

    /// Appends `item`; returns the entry dropped to make room, if the queue was full.
    pub fn push(&mut self, item: T) -> Option<T> {
        let dropped = if self.items.len() >= self.capacity { self.items.pop_front() } else { None };
        self.items.push_back(item);
        dropped
    }

    /// The oldest entry.
    pub fn pop(&mut self) -> Option<T> {
        self.items.pop_front()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Empties the queue, returning what it held (oldest first).
    pub fn drain(&mut self) -> Vec<T> {
        self.items.drain(..).collect()
    }
}

/// Exponential backoff: `base`, `2 × base`, `4 × base`… capped at `max`, for at most `attempts`
/// tries in all (the first try has no wait before it).
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    pub attempts: u32,
}

impl Backoff {
    /// The wait before try number `attempt` (0-based; try 0 is the first and has none), or
    /// `None` when no try is left.
    pub fn delay(&self, attempt: u32) -> Option<Duration> {
        if attempt >= self.attempts {
            return None;
        }
        if attempt == 0 {
            return Some(Duration::ZERO);
        }
        let factor = 1u32.checked_shl(attempt - 1).unwrap_or(u32::MAX);
        Some(self.base.saturating_mul(factor).min(self.max))
    }

    /// The longest all the waits add up to.
    pub fn total_wait(&self) -> Duration {
        (0..self.attempts).filter_map(|a| self.delay(a)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_drops_the_oldest() {
        let mut q = BoundedQueue::new(3);
        assert_eq!(q.push(1), None);
        assert_eq!(q.push(2), None);
        assert_eq!(q.push(3), None);
        assert_eq!(q.len(), 3);
        assert_eq!(q.push(4), Some(1));
        assert_eq!(q.push(5), Some(2));
        assert_eq!(q.len(), 3);
        assert_eq!(q.pop(), Some(3));
        assert_eq!(q.drain(), vec![4, 5]);
        assert!(q.is_empty());
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn never_grows_past_capacity() {
        let mut q = BoundedQueue::new(4);
        let mut dropped = 0;
        for i in 0..10_000 {
            dropped += usize::from(q.push(vec![0u8; 16 + i % 7]).is_some());
            assert!(q.len() <= 4);
        }
        assert_eq!(dropped, 10_000 - 4);
        assert!(q.items.capacity() < 16, "the ring buffer was not reallocated larger");
    }

    #[test]
    fn zero_capacity_means_one() {
        let mut q = BoundedQueue::new(0);
        assert_eq!(q.push('a'), None);
        assert_eq!(q.push('b'), Some('a'));
        assert_eq!(q.pop(), Some('b'));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_stops() {
        let b = Backoff { base: Duration::from_millis(250), max: Duration::from_secs(1), attempts: 5 };
        let delays: Vec<_> = (0..6).map(|a| b.delay(a)).collect();
        assert_eq!(
            delays,
            vec![
                Some(Duration::ZERO),
                Some(Duration::from_millis(250)),
                Some(Duration::from_millis(500)),
                Some(Duration::from_secs(1)),
                Some(Duration::from_secs(1)),
                None,
            ]
        );
        assert_eq!(b.total_wait(), Duration::from_millis(2750));
    }

    #[test]
    fn backoff_does_not_overflow() {
        let b = Backoff { base: Duration::from_secs(1), max: Duration::from_secs(30), attempts: 200 };
        assert_eq!(b.delay(199), Some(Duration::from_secs(30)));
        let single = Backoff { attempts: 1, ..b };
        assert_eq!(single.delay(0), Some(Duration::ZERO));
        assert_eq!(single.delay(1), None);
    }
}
