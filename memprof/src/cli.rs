//! Command-line options.

use std::{path::PathBuf, time::Duration};

use clap::Parser;

/// Find what keeps memory in a container: outstanding allocations by call stack, as flamegraphs.
#[derive(Debug, Parser)]
#[command(name = "memprof", version, about, long_about = None)]
pub struct Opt {
    /// The cgroup to profile (with its descendants): an absolute path, a path relative to the
    /// cgroup v2 mount, or a directory name searched in the cgroup v2 tree.
    #[arg(long, value_name = "PATH|NAME", required_unless_present_any = ["pid", "pod"], conflicts_with_all = ["pid", "pod"])]
    pub cgroup: Option<String>,

    /// A Kubernetes pod on this node: its cgroup, found through containerd (namespace k8s.io;
    /// socket /run/containerd/containerd.sock or MEMPROF_CONTAINERD_SOCKET) or CRI-O
    /// (/run/crio/crio.sock or MEMPROF_CRIO_SOCKET).
    #[arg(long, value_name = "NAMESPACE/NAME", conflicts_with = "pid", value_parser = crate::target::kube::parse_pod)]
    pub pod: Option<crate::target::kube::PodRef>,

    /// With --pod: only this container of the pod.
    #[arg(long, value_name = "NAME", requires = "pod")]
    pub container: Option<String>,

    /// Profile one process instead of a cgroup.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,

    /// Stop after this long (`30s`, `5m`, `7d`); default: until Ctrl-C or every target process
    /// has exited.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,

    /// Time between snapshots.
    #[arg(long, default_value = "10s", value_parser = parse_interval)]
    pub interval: Duration,

    /// Where to write the artifacts (default: ./memprof-<target>-<UTC time>/).
    #[arg(long, short)]
    pub output: Option<PathBuf>,

    /// Stacks shown in the terminal summary.
    #[arg(long, default_value_t = 10)]
    pub top: usize,

    /// What to record: `allocations` (uprobes on the allocator functions, exact or sampled) or
    /// `rss` (no uprobes: pages made resident by page faults, by the stack that touched them
    /// first; works for any allocator or runtime, at the cost of a page fault, not of every
    /// allocator call).
    #[arg(long, value_enum, default_value_t = Mode::Allocations)]
    pub mode: Mode,

    /// Sample allocations by bytes, recording on average one per N bytes allocated (allocations
    /// of N bytes or more always); sizes and counts are scaled up to unbiased estimates.
    /// Default: every allocation is recorded.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub sample_bytes: Option<u64>,

    /// Most live allocations tracked at once (kernel map size).
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u32).range(1024..))]
    pub max_allocations: u32,

    /// Most distinct call stacks recorded (kernel map size).
    #[arg(long, default_value_t = 1 << 14, value_parser = clap::value_parser!(u32).range(64..))]
    pub max_stacks: u32,

    /// Keep free's probe on its first instruction. By default, when free begins with a NULL
    /// check that the kernel would single-step (glibc: `test %rdi,%rdi; je`), its probe goes on
    /// the first instruction after it that the kernel emulates, which is much cheaper per call.
    #[arg(long)]
    pub no_probe_placement: bool,

    /// How user stacks are walked: `dwarf` (default: the binaries' `.eh_frame` CFI, so code
    /// built without frame pointers gets whole stacks; frame pointers where there is no CFI,
    /// e.g. JIT code) or `fp` (the kernel's frame-pointer walk: cheaper, but stacks through
    /// code without frame pointers are cut short or wrong).
    #[arg(long, value_enum, default_value_t = Unwind::Dwarf)]
    pub unwind: Unwind,

    /// Most CFI rows loaded into the kernel for `--unwind dwarf` (16 bytes each; an object that
    /// does not fit is walked with frame pointers, and the report says so).
    #[arg(long, default_value_t = 1 << 21, value_parser = clap::value_parser!(u32).range(1024..))]
    pub unwind_rows: u32,

    /// Leave Python alone: no Python frames in the stacks (they show as the interpreter's C
    /// functions) and no probes on Python's object allocator.
    #[arg(long)]
    pub no_python: bool,

    /// Leave Node alone: JS frames are not read from V8's memory (they show as `[jit]`
    /// addresses, named from `/tmp/perf-PID.map` when the process writes one).
    #[arg(long)]
    pub no_node: bool,

    /// Count Python's small objects by the pymalloc arena pages they first touch instead of
    /// probing its object allocator. Probing it tracks each object exactly but costs ~2–5 µs per
    /// object allocation (a request-serving loop ran 45× slower on a build where it can be
    /// probed; optimised builds inline it and are counted by arena page anyway).
    #[arg(long)]
    pub no_python_objects: bool,

    /// Attach uprobes as perf events, one per probe, even where the kernel has uprobe_multi
    /// links (6.6+: one link per process, object and program, released at exit in a fraction
    /// of the time). The older kernels' path.
    #[arg(long)]
    pub no_uprobe_multi: bool,

    /// Attach each allocation function as an entry and a return probe even where the kernel
    /// has uprobe sessions (6.13+: one program at both, which skips the return of calls with
    /// nothing to record there — unsampled ones under `--sample-bytes`, nested ones).
    #[arg(long)]
    pub no_uprobe_session: bool,

    /// Serve Prometheus metrics at `http://ADDR/metrics` (text format): tracked bytes, RSS,
    /// cgroup usage and limit, time to OOM, the top leak's growth, lost events, OOM kills,
    /// processes, labelled by target. `127.0.0.1:9464`, `[::1]:9464`, or `:9464` (all addresses).
    #[arg(long, value_name = "ADDR", value_parser = crate::export::parse_listen_addr)]
    pub metrics: Option<std::net::SocketAddr>,

    /// Push every interval's profile (pprof) to Grafana Pyroscope's ingest API at URL
    /// (`http://pyroscope:4040`). Credentials from the environment only:
    /// MEMPROF_PYROSCOPE_BASIC_AUTH=user:password or MEMPROF_PYROSCOPE_TOKEN=bearer-token.
    #[arg(long, value_name = "URL", value_parser = crate::export::parse_pyroscope_url)]
    pub pyroscope: Option<String>,

    /// Pyroscope tenant (sent as `X-Scope-OrgID`).
    #[arg(long, value_name = "ID", requires = "pyroscope")]
    pub pyroscope_tenant: Option<String>,

    /// Push one profile per process, with a `pid` label (default: one profile for the target,
    /// labelled `service_name` only).
    #[arg(long, requires = "pyroscope")]
    pub pyroscope_pid: bool,

    /// More log output (-v: debug).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Prints a usage error as one `memprof: error:` line (exit 2); `--help` and `--version` as
/// clap prints them (exit 0).
pub fn usage_error(err: clap::Error) -> std::process::ExitCode {
    use clap::error::ErrorKind;
    if matches!(err.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = err.print();
        return std::process::ExitCode::SUCCESS;
    }
    let line = match err.kind() {
        ErrorKind::MissingRequiredArgument if err.to_string().contains("--cgroup") => {
            "no target: name one with --cgroup PATH|NAME, --pod NAMESPACE/NAME or --pid PID".to_string()
        }
        _ => one_line(&err.render().to_string()),
    };
    eprintln!("memprof: error: {line} (see --help)");
    std::process::ExitCode::from(crate::run::EXIT_INPUT)
}

/// clap's message up to its usage lines, as one line: "the following required arguments were
/// not provided:" goes with the arguments on the lines after it.
fn one_line(text: &str) -> String {
    let words: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let line = words.join(" ");
    let line = line.trim_start_matches("error: ").trim().to_string();
    if line.is_empty() {
        "invalid arguments".into()
    } else {
        line
    }
}

/// `--mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Every allocator call (or a sample of them with --sample-bytes).
    #[value(alias = "exact")]
    Allocations,
    /// Resident pages, from page faults.
    Rss,
}

/// `--unwind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Unwind {
    /// CFI tables from `.eh_frame`, walked in the kernel.
    Dwarf,
    /// Frame pointers only (`bpf_get_stackid`).
    Fp,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(100) {
        return Err("the interval must be at least 100ms".into());
    }
    Ok(d)
}
