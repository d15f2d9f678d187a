//! Owning and releasing probe links. Releasing a link waits for an RCU-tasks-trace grace
//! period; uprobe_multi and tracepoint links released from many threads at once share them
//! (see `multi.rs`), so links are released concurrently: all of them at the end, and an exited
//! process's uprobe_multi links at once, in the background.

use std::sync::atomic::{AtomicUsize, Ordering};

use log::{debug, warn};

use aya::programs::uprobe::UProbeLink;

use super::multi;

/// One attached uprobe link: a perf event (one probe) or a uprobe_multi link (one program at
/// several offsets of one object).
#[derive(Debug)]
pub(super) enum ProbeLink {
    Perf(#[allow(dead_code)] UProbeLink),
    Multi(#[allow(dead_code)] multi::MultiLink),
    /// A tracepoint's (kept with the rest so that all are released concurrently).
    Tracepoint(#[allow(dead_code)] aya::programs::trace_point::TracePointLink),
}

/// Most threads releasing links at once (see `Probes::release`).
const RELEASE_THREADS: usize = 256;

/// Exited processes whose links are being released in the background, and the most at once.
static RELEASING: AtomicUsize = AtomicUsize::new(0);
const BACKGROUND_RELEASES: usize = 64;

/// Drops `links` from up to [`RELEASE_THREADS`] threads at once (their grace periods overlap)
/// and returns how many there were.
pub(super) fn release_all(mut links: Vec<ProbeLink>) -> usize {
    let n = links.len();
    let threads = n.clamp(1, RELEASE_THREADS);
    let per = n.div_ceil(threads);
    let mut handles = Vec::new();
    while !links.is_empty() {
        let chunk: Vec<ProbeLink> = links.drain(..per.min(links.len())).collect();
        match std::thread::Builder::new().name("memprof-detach".into()).spawn(move || drop(chunk)) {
            Ok(h) => handles.push(h),
            Err(err) => warn!("failed to start a detach thread ({err}); detaching in this one"),
        }
    }
    for h in handles {
        let _ = h.join();
    }
    n
}

/// Releases `links` (an exited process's) in a thread of their own; gives them back when too
/// many such releases are running already (a container stopping: they wait for the end).
pub(super) fn release_in_background(links: Vec<ProbeLink>) -> Result<(), Vec<ProbeLink>> {
    if links.is_empty() {
        return Ok(());
    }
    if RELEASING.load(Ordering::Relaxed) >= BACKGROUND_RELEASES {
        return Err(links);
    }
    RELEASING.fetch_add(1, Ordering::Relaxed);
    let spawned = std::thread::Builder::new().name("memprof-release".into()).spawn(move || {
        release_all(links);
        RELEASING.fetch_sub(1, Ordering::Relaxed);
    });
    if let Err(err) = spawned {
        // The closure (and the links) were dropped, that is released, here.
        RELEASING.fetch_sub(1, Ordering::Relaxed);
        debug!("no thread to release links in the background ({err}); released in this one");
    }
    Ok(())
}

/// Waits (at most `limit`) for the background releases still running.
pub(super) fn await_background(limit: std::time::Duration) {
    let started = std::time::Instant::now();
    while RELEASING.load(Ordering::Relaxed) > 0 && started.elapsed() < limit {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
