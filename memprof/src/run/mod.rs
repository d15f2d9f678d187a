//! One profiling run: validate the input ([`resolve`]), load and attach, collect until the end
//! ([`session`]), write the artifacts ([`finish`]).

mod export;
mod finish;
mod log_limit;
mod memory;
pub(crate) use log_limit::{SKIPPED as SKIPPED_LOG, UNBOUNDED as UNBOUNDED_LOG};
mod processes;
mod session;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use log::info;

use crate::{
    attach::{MapSizes, Scope},
    cli::Opt,
    target::{self, cgroup::CgroupTarget},
};

/// Exit code for bad input (usage errors use clap's 2 as well).
pub const EXIT_INPUT: u8 = 2;
/// Exit code for a failure while profiling.
pub const EXIT_RUNTIME: u8 = 1;

/// Why a run did not succeed.
#[derive(Debug)]
pub enum Failure {
    /// Bad input, found before anything was attached.
    Input(String),
    /// A failure while profiling.
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

/// What to profile, resolved and validated.
pub struct Config {
    pub label: String,
    pub scope: Scope,
    pub cgroup: Option<CgroupTarget>,
    pub pid: Option<u32>,
    pub duration: Option<Duration>,
    pub interval: Duration,
    pub output: PathBuf,
    pub top: usize,
    pub sizes: MapSizes,
    /// Free-like probes may move past a NULL check (not `--no-probe-placement`).
    pub probe_placement: bool,
    /// Which runtimes' frames are read (and why not).
    pub runtimes: crate::runtime::RuntimeChoice,
    /// `--metrics`, `--pyroscope`: started here (the address bound), fed at every snapshot.
    pub export: crate::export::Exporters,
}

/// Entry point of the binary: runs and maps the outcome to an exit code.
pub fn main(opt: Opt) -> ExitCode {
    init_logging(opt.verbose);
    match run(opt) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Input(msg)) => {
            eprintln!("memprof: error: {msg}");
            ExitCode::from(EXIT_INPUT)
        }
        Err(Failure::Runtime(err)) => {
            eprintln!("memprof: error: {err:#}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => log::LevelFilter::Info,
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    let logger = env_logger::Builder::new()
        .filter_level(level)
        .parse_default_env()
        .format(|buf, record| {
            use std::io::Write;
            writeln!(buf, "memprof: {}", record.args())
        })
        .build();
    let max = logger.filter();
    if log::set_boxed_logger(Box::new(log_limit::BoundedLog::new(logger))).is_ok() {
        log::set_max_level(max);
    }
}

pub fn run(opt: Opt) -> Result<(), Failure> {
    let config = resolve(opt)?;
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    rt.block_on(session::profile(config))
}

/// Validates everything the user gave us, before anything is attached.
pub fn resolve(opt: Opt) -> Result<Config, Failure> {
    if unsafe { libc::geteuid() } != 0 {
        return Err(Failure::Input(
            "memprof needs root (BPF and perf events): run it with sudo".into(),
        ));
    }
    let (label, scope, cgroup, pid) = match (&opt.cgroup, opt.pid) {
        _ if opt.pod.is_some() => {
            let cg = resolve_pod(&opt)?;
            let label = [opt.pod.as_ref().map(|p| p.to_string()), opt.container.clone()].into_iter().flatten().collect::<Vec<_>>().join("/");
            (label, Scope::Cgroup { id: cg.id, level: cg.level }, Some(cg), None)
        }
        (Some(spec), _) => {
            let mount = target::cgroup::find_cgroup2_mount().map_err(|e| Failure::Input(e.to_string()))?;
            let cg = resolve_cgroup_spec(spec, &mount)?;
            let scope = Scope::Cgroup { id: cg.id, level: cg.level };
            (spec.clone(), scope, Some(cg), None)
        }
        (None, Some(pid)) => {
            target::procs::check_pid(pid).map_err(|e| Failure::Input(e.to_string()))?;
            (format!("pid {pid}"), Scope::Process { tgid: pid }, None, Some(pid))
        }
        (None, None) => return Err(Failure::Input("give --cgroup or --pid".into())),
    };
    let output = opt.output.clone().unwrap_or_else(|| default_output(&label));
    check_writable(&output).map_err(Failure::Input)?;
    let export = export::start(&opt, &label, pid).map_err(|e| Failure::Input(e.to_string()))?;
    let dwarf = opt.unwind == crate::cli::Unwind::Dwarf;
    let mut runtimes = crate::runtime::RuntimeChoice { objects: !opt.no_python_objects, ..Default::default() };
    if opt.no_node {
        runtimes.node_off = Some("--no-node".into());
    }
    let task_fsbase = if !dwarf {
        runtimes.all_off = Some("runtime frames need --unwind dwarf".into());
        0
    } else if opt.no_python {
        runtimes.python_off = Some("--no-python".into());
        0
    } else {
        match crate::runtime::task_fsbase_offset() {
            Ok(off) => off,
            Err(why) => {
                runtimes.python_off = Some(format!("the thread pointer cannot be read: {why}"));
                0
            }
        }
    };
    Ok(Config {
        label,
        scope,
        cgroup,
        pid,
        duration: opt.duration,
        interval: opt.interval,
        output,
        top: opt.top,
        sizes: MapSizes {
            allocs: opt.max_allocations,
            stacks: opt.max_stacks,
            stack_totals: opt.max_stacks.saturating_mul(4),
            sample_bytes: opt.sample_bytes.unwrap_or(0),
            rss: opt.mode == crate::cli::Mode::Rss,
            dwarf,
            unwind_rows: opt.unwind_rows,
            task_fsbase,
            uprobe_multi: !opt.no_uprobe_multi,
            uprobe_session: !opt.no_uprobe_session,
        },
        probe_placement: !opt.no_probe_placement,
        runtimes,
        export,
    })
}

/// `--pod NAMESPACE/NAME [--container NAME]`: through containerd or CRI-O (see `target::kube`).
fn resolve_pod(opt: &Opt) -> Result<CgroupTarget, Failure> {
    let input = |e: &dyn std::fmt::Display| Failure::Input(e.to_string());
    let mount = target::cgroup::find_cgroup2_mount().map_err(|e| input(&e))?;
    let pod = opt.pod.as_ref().expect("--pod");
    target::kube::resolve_pod(pod, opt.container.as_deref(), &mount).map(|t| t.cgroup).map_err(|e| input(&e))
}

/// `--cgroup`: a path is taken as a cgroup path; a name is asked of the container engine
/// (Docker API: DOCKER_HOST, /var/run/docker.sock, /run/podman/podman.sock), then matched against
/// container runtimes' cgroup names (an ID or ID prefix), then searched as a directory name.
fn resolve_cgroup_spec(spec: &str, mount: &Path) -> Result<CgroupTarget, Failure> {
    let input = |e: target::TargetError| Failure::Input(e.to_string());
    if spec.contains('/') {
        return target::cgroup::resolve_cgroup(spec, mount).map_err(input);
    }
    if let Some(c) = target::engine::resolve_container(spec, mount).map_err(input)? {
        info!(
            "container {} ({}) via {}: main pid {}, cgroup {}",
            c.name,
            &c.id[..c.id.len().min(12)],
            c.engine,
            c.pid,
            c.cgroup.rel
        );
        return Ok(c.cgroup);
    }
    let runtime = target::engine::find_runtime_cgroups(spec, mount);
    match runtime.as_slice() {
        [one] => {
            info!("{spec}: container cgroup {}", one.display());
            target::cgroup::resolve_cgroup(&one.to_string_lossy(), mount).map_err(input)
        }
        [] => target::cgroup::resolve_cgroup(spec, mount).map_err(input),
        many => Err(Failure::Input(format!(
            "{spec} matches {} container cgroups: {}",
            many.len(),
            many.iter().take(10).map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Every probe is a file descriptor (a perf event), kept until the end: raise the soft limit to
/// the hard one.
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// `./memprof-<target>-<UTC time>/`.
fn default_output(label: &str) -> PathBuf {
    let name: String = label
        .rsplit('/')
        .find(|s| !s.is_empty())
        .unwrap_or("target")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '-' })
        .collect();
    let time = humantime::format_rfc3339_seconds(SystemTime::now()).to_string().replace([':', '-'], "");
    PathBuf::from(format!("memprof-{name}-{time}"))
}

fn check_writable(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create output folder {}: {e}", dir.display()))?;
    let probe = dir.join(".memprof-write-test");
    std::fs::write(&probe, b"")
        .map_err(|e| format!("output folder {} is not writable: {e}", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// The flamegraphs' title.
fn title(config: &Config) -> String {
    if config.sizes.rss {
        format!("memprof: resident pages of {} by the stack that touched them first", config.label)
    } else {
        format!("memprof: outstanding allocations of {}", config.label)
    }
}
