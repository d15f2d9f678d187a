//! memprof: an eBPF allocation profiler for whole containers.
//!
//! The path of one allocation: `memprof-ebpf` probes → BPF maps → [`collect`] (snapshots) →
//! [`symbolize`] → [`report`] types → [`output`] writers. See ARCHITECTURE.md.

pub mod attach;
pub mod analyze;
pub mod cli;
pub mod collect;
pub mod export;
pub mod output;
pub mod report;
pub mod run;
pub mod runtime;
pub mod symbolize;
pub mod target;
pub mod tracefs;
pub mod unwind;
