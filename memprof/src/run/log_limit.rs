//! memprof's own log, bounded for runs that last days: each line of the code that logs (a
//! call site) prints its first [`FIRST`] messages, then only its 2^k-th ones, each saying how
//! many times it came. A site that fires a million times prints about 30 lines. Debug and trace
//! output (`-v`) is not limited: the user asked for it, nor are messages whose caller thins
//! them itself ([`UNBOUNDED`]: the per-snapshot line).

use std::{collections::HashMap, sync::Mutex};

use log::{Level, Log, Metadata, Record};

/// Messages printed in full per call site before thinning.
const FIRST: u64 = 10;

/// Log target of messages that are thinned by their caller (the snapshot lines) and printed
/// as they come.
pub const UNBOUNDED: &str = "memprof::unbounded";
/// Log target of messages the caller decided not to print.
pub const SKIPPED: &str = "memprof::skipped";

pub struct BoundedLog {
    inner: env_logger::Logger,
    seen: Mutex<HashMap<(String, u32), u64>>,
}

impl BoundedLog {
    pub fn new(inner: env_logger::Logger) -> Self {
        BoundedLog { inner, seen: Mutex::new(HashMap::new()) }
    }
}

/// Whether the `n`-th message of a call site is printed (and whether with its count).
fn verdict(n: u64) -> Option<bool> {
    if n <= FIRST {
        Some(false)
    } else if n.is_power_of_two() {
        Some(true)
    } else {
        None
    }
}

impl Log for BoundedLog {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.inner.enabled(record.metadata()) {
            return;
        }
        if record.target() == SKIPPED {
            return;
        }
        if record.level() > Level::Info || record.target() == UNBOUNDED {
            self.inner.log(record);
            return;
        }
        let key = (record.module_path().unwrap_or("").to_string(), record.line().unwrap_or(0));
        let n = {
            let Ok(mut seen) = self.seen.lock() else { return };
            let n = seen.entry(key).or_insert(0);
            *n += 1;
            *n
        };
        match verdict(n) {
            None => {}
            Some(false) => self.inner.log(record),
            Some(true) => self.inner.log(
                &Record::builder()
                    .args(format_args!(
                        "{} [the {n}th time; this message is shown again at {}]",
                        record.args(),
                        n * 2
                    ))
                    .level(record.level())
                    .target(record.target())
                    .module_path(record.module_path())
                    .file(record.file())
                    .line(record.line())
                    .build(),
            ),
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_site_prints_logarithmically_many_lines() {
        let printed = (1..=1_000_000u64).filter(|&n| verdict(n).is_some()).count();
        // 10 in full, then 16, 32, …, 524288.
        assert_eq!(printed, 10 + 16);
        assert_eq!(verdict(10), Some(false));
        assert_eq!(verdict(11), None);
        assert_eq!(verdict(16), Some(true));
    }
}
