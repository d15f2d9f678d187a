//! What to profile: a cgroup v2 (with its descendants) or one process, and how to read a
//! process's mappings.

pub mod cgroup;
pub mod engine;
pub mod kube;
pub mod maps;
pub mod memory;
pub mod procs;

use std::{io, path::PathBuf};

/// A target the user named that cannot be profiled, or a failure reading the system's view of it.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("no cgroup v2 hierarchy is mounted (no cgroup2 entry in /proc/self/mountinfo): mount one or use --pid")]
    NoCgroup2Mount,
    #[error("no cgroup named {name:?} under {}: give an absolute path or a path relative to the cgroup v2 mount", .mount.display())]
    NoCgroup { name: String, mount: PathBuf },
    #[error("cgroup name {name:?} is ambiguous, give one of: {candidates}")]
    AmbiguousCgroup { name: String, candidates: String },
    #[error("{} is outside the cgroup v2 hierarchy at {}: give a cgroup v2 directory (cgroup v1 hierarchies are not supported)", .path.display(), .mount.display())]
    OutsideMount { path: PathBuf, mount: PathBuf },
    #[error("{} is not a directory: a cgroup is given by its directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("no running process with pid {0}")]
    NoSuchProcess(u32),
    #[error("{tid} is a thread of process {tgid}: give the process id (--pid {tgid})")]
    NotAProcess { tid: u32, tgid: u32 },
    #[error("container {name} ({id}) is not running")]
    ContainerNotRunning { name: String, id: String },
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl TargetError {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        TargetError::Io {
            what: what.into(),
            source,
        }
    }
}
