//! `cargo xtask bench`: what tracing costs the traced machine, as the share of untraced
//! throughput a traced load keeps, the tracer's CPU time per million transitions, the kernel
//! program's nanoseconds per event, lost events and memory.
//!
//! Sections, each in its own module:
//! - churn (`churn.rs`, this file): loopback connection churn, every run in a fresh network
//!   namespace (4 ports, 4 client threads, both close orders by default), untraced runs
//!   interleaved with traced ones, over several rounds; per configuration the median ratio
//!   to the neighbouring untraced runs with its min-max spread, transitions, lost events
//!   (kernel counter), tracer CPU-s per million transitions, peak RSS and the kernel's own
//!   BPF run-time statistics (from one extra run per configuration with them on: they cost
//!   each program run ~56 ns, which would lower the ratios), each against the targets (met/missed, reported, never
//!   asserted: a benchmark on a shared machine is noisy and must not fail a build).
//!   libbpf-tools `tcpstates` and a bpftrace program that only counts transitions run in
//!   the same invocation as yardsticks: the second tells what the cheapest tracer of this
//!   tracepoint costs the same load.
//! - mass close (`massclose.rs`): 162,000 open loopback sockets closed at once, per mode.
//! - soak (`soak.rs`, `--soak SECS`): RSS sampled every second under full churn.
//! - report (`report.rs`): `tcptrace report` throughput on a synthetic recording.
//!
//! The tracers run in the host network namespace and trace every namespace, with a port
//! filter (`--port 7001-7004`, the churn's fixed ports inside its namespace) so that other
//! work on a shared machine neither adds transitions nor loses the run events; tcpstates
//! cannot filter on either port, so it sees everything (its figures are a yardstick).

mod churn;
mod massclose;
mod proc;
mod report;
mod soak;

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
pub use churn::{ChurnArgs, churn_main};
use churn::{CloseOrder, Load, churn};
pub use massclose::{HoldArgs, hold_main, skipped_check};
use proc::{Exit, Scraper, Tracer, TracerStats, pty, snapshot};

/// Pause between runs, so one run's tail (namespace teardown, tracer exit) settles.
const SETTLE: Duration = Duration::from_secs(1);

/// Targets (issue 9): share of the untraced rate each mode keeps.
const TARGET_AGGREGATE_RATIO: f64 = 0.95;
const TARGET_RECORD_RATIO: f64 = 0.90;
const TARGET_TEXT_RATIO: f64 = 0.90;
const TARGET_JSON_RATIO: f64 = 0.85;
/// Target: aggregate-only modes cost at most this many tracer CPU-seconds per million
/// transitions.
const TARGET_CPU_PER_M: f64 = 0.15;
/// Target: the kernel program's cost per event, from the kernel's BPF statistics.
const TARGET_KERNEL_NS: f64 = 200.0;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Seconds of churn per run.
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    /// Rounds over all configurations (an untraced run before each traced run and one at
    /// the end: every traced run is compared with the untraced runs either side of it).
    /// Figures per configuration are the median and min-max over the rounds.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Client threads of the churn.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
    /// Listening ports of the churn (one accept thread each).
    #[arg(long, default_value_t = 4)]
    pub ports: u16,
    /// Which end of each churn connection closes first.
    #[arg(long, value_enum, default_value_t = CloseOrder::Alternate)]
    pub close: CloseOrder,
    /// Only these configurations (comma-separated); the untraced baseline always runs.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Config>,
    /// Use this tcptrace binary instead of building it (`cargo build --release -p tcptrace`).
    #[arg(long, value_name = "PATH")]
    pub bin: Option<PathBuf>,
    /// Transitions in the recording `tcptrace report` is timed on; 0 skips that section.
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    pub report_transitions: u64,
    /// Run only the mass-close section (162,000 sockets closed at once, per mode).
    #[arg(long, conflicts_with_all = ["no_mass_close", "soak"])]
    pub mass_close: bool,
    /// Leave the mass-close section out of the default run.
    #[arg(long)]
    pub no_mass_close: bool,
    /// Mass close: processes, each holding this many connections (both ends, so twice as
    /// many sockets and fds).
    #[arg(long, value_name = "N", default_value_t = 9, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub mass_procs: u32,
    #[arg(long, value_name = "N", default_value_t = 9000, value_parser = clap::value_parser!(u32).range(1..=9500))]
    pub mass_conns: u32,
    /// Mass close: run the tracers with this `--ring-kib` instead of their default.
    #[arg(long, value_name = "KIB")]
    pub mass_ring_kib: Option<u32>,
    /// Run only a soak: full churn beside `tcptrace watch --per none` for SECS seconds, RSS
    /// sampled every second, then the curve and its slope.
    #[arg(long, value_name = "SECS", conflicts_with = "no_mass_close")]
    pub soak: Option<u64>,
    /// Keep the output files (streams, summaries, recordings) and print where.
    #[arg(long)]
    pub keep: bool,
}

/// A traced (or untraced) configuration.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Config {
    /// No tracer.
    Baseline,
    /// `tcptrace watch --per none`: aggregates only.
    None,
    /// `tcptrace watch --per none` with every record through the kernel's ring buffers
    /// (`TCPTRACE_RINGS=kernel`, as on CPUs other than x86-64): the slot rings' gain, side
    /// by side.
    NoneRingBuffers,
    /// `tcptrace top`: the dashboard, drawing into a 160x48 pseudo-terminal once a second.
    Top,
    /// `tcptrace serve`: Prometheus metrics, scraped once a second.
    Serve,
    /// `tcptrace watch`: text line per transition, to a file.
    Text,
    /// `tcptrace watch --format json`, to a file.
    Json,
    /// `tcptrace record -o FILE.tcpt`: the binary recording.
    Record,
    /// `tcptrace record -o FILE.jsonl.zst`: the JSON Lines recording.
    RecordJsonl,
    /// libbpf-tools `tcpstates` > /dev/null (transitions estimated, see the notes).
    Tcpstates,
    /// libbpf-tools `tcpstates` > a file (transitions counted as output lines).
    TcpstatesFile,
    /// bpftrace counting transitions by new state in a map ([`BPFTRACE_COUNT`]): the
    /// cheapest useful tracer of the tracepoint, as a floor for the ratios.
    Bpftrace,
    /// bpftrace with an empty probe on the tracepoint: what attaching a program costs at
    /// all, and under the BPF statistics their own floor per program run.
    BpftraceEmpty,
}

impl Config {
    const TRACED: [Config; 12] = [
        Config::None,
        Config::NoneRingBuffers,
        Config::Top,
        Config::Serve,
        Config::Text,
        Config::Json,
        Config::Record,
        Config::RecordJsonl,
        Config::Tcpstates,
        Config::TcpstatesFile,
        Config::Bpftrace,
        Config::BpftraceEmpty,
    ];

    fn label(self) -> &'static str {
        match self {
            Config::Baseline => "untraced",
            Config::None => "watch --per none",
            Config::NoneRingBuffers => "  same, ring buffers only",
            Config::Top => "top (160x48)",
            Config::Serve => "serve (1 scrape/s)",
            Config::Text => "watch text > file",
            Config::Json => "watch json > file",
            Config::Record => "record .tcpt",
            Config::RecordJsonl => "record .jsonl.zst",
            Config::Tcpstates => "tcpstates > /dev/null",
            Config::TcpstatesFile => "tcpstates > file",
            Config::Bpftrace => "bpftrace count/state",
            Config::BpftraceEmpty => "bpftrace empty probe",
        }
    }

    fn is_tcpstates(self) -> bool {
        matches!(self, Config::Tcpstates | Config::TcpstatesFile)
    }

    /// Another tool than tcptrace: a yardstick, with no target and its own programs.
    fn is_other_tool(self) -> bool {
        self.is_tcpstates() || self.is_bpftrace()
    }

    fn is_bpftrace(self) -> bool {
        matches!(self, Config::Bpftrace | Config::BpftraceEmpty)
    }

    /// Why this configuration cannot run here, if its tool is missing.
    fn missing(self, env: &Env) -> Option<&String> {
        match self {
            c if c.is_tcpstates() => env.tcpstates.as_ref().err(),
            c if c.is_bpftrace() => env.bpftrace.as_ref().err(),
            _ => None,
        }
    }

    /// The share of the untraced rate this configuration must keep, if it has a target.
    fn target_ratio(self) -> Option<f64> {
        match self {
            Config::None | Config::Top | Config::Serve => Some(TARGET_AGGREGATE_RATIO),
            Config::Record => Some(TARGET_RECORD_RATIO),
            Config::Text => Some(TARGET_TEXT_RATIO),
            Config::Json => Some(TARGET_JSON_RATIO),
            _ => None,
        }
    }

    /// Aggregate-only modes: zero lost events and the userspace CPU budget apply.
    fn aggregate_only(self) -> bool {
        matches!(self, Config::None | Config::Top | Config::Serve)
    }
}

/// Everything a run needs to know.
struct Env {
    bin: PathBuf,
    tcpstates: std::result::Result<PathBuf, String>,
    bpftrace: std::result::Result<PathBuf, String>,
    dir: PathBuf,
    duration: Duration,
    load: Load,
    /// The churn's ports as a `--port` filter ("7001-7004").
    ports: String,
}

fn json_u64(v: &serde_json::Value, key: &str) -> Option<u64> {
    v.get(key).and_then(serde_json::Value::as_u64)
}

/// The command line of a tcptrace configuration: the command, its arguments, where its
/// summary JSON goes; the caller sets stdin/stdout. Returns the readiness line to wait for.
fn tcptrace_command(
    bin: &Path,
    config: Config,
    out_path: &Path,
    summary_path: &Path,
    ports: &str,
    ring_kib: Option<u32>,
) -> Command {
    let mut cmd = Command::new(bin);
    match config {
        Config::Record | Config::RecordJsonl => {
            cmd.arg("record").arg("-o").arg(out_path);
        }
        Config::Top => {
            cmd.arg("top");
        }
        Config::Serve => {
            cmd.arg("serve");
        }
        _ => {
            cmd.arg("watch");
        }
    }
    cmd.arg("--summary-json").arg(summary_path);
    cmd.arg("--port").arg(ports);
    match config {
        Config::None => {
            cmd.args(["--per", "none"]);
        }
        Config::NoneRingBuffers => {
            cmd.args(["--per", "none"]);
            cmd.env("TCPTRACE_RINGS", "kernel");
        }
        Config::Json => {
            cmd.args(["--format", "json"]);
        }
        Config::Serve => {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        _ => {}
    }
    if let Some(kib) = ring_kib {
        cmd.arg("--ring-kib").arg(kib.to_string());
    }
    cmd
}

/// What tcptrace prints on stderr once it traces.
const READY_LINE: &str = "tracing TCP state transitions";

/// Starts a tcptrace configuration with its stdin/stdout wired (a pty for `top`, a file for
/// the streams, /dev/null otherwise) and, for `serve`, a scraper.
fn start_tcptrace(
    bin: &Path,
    config: Config,
    out_path: &Path,
    summary_path: &Path,
    ports: &str,
    ring_kib: Option<u32>,
) -> Result<(Tracer, Option<Scraper>)> {
    let mut cmd = tcptrace_command(bin, config, out_path, summary_path, ports, ring_kib);
    wire_stdio(&mut cmd, config, out_path)?;
    let tracer = Tracer::start(cmd, proc::Ready::Line(READY_LINE))?;
    let scraper = (config == Config::Serve)
        .then(|| Scraper::start(&snapshot(&tracer.stderr)))
        .transpose()?;
    Ok((tracer, scraper))
}

fn wire_stdio(cmd: &mut Command, config: Config, out_path: &Path) -> Result<()> {
    if config == Config::Top {
        // The dashboard needs a terminal: stdin and stdout are a pseudo-terminal's slave side.
        let slave = pty(160, 48)?;
        cmd.stdin(slave.try_clone().context("pty")?);
        cmd.stdout(slave);
        // crossterm opens /dev/tty: the pty must be the child's controlling terminal.
        // SAFETY: setsid and ioctl are async-signal-safe; they run in the child between fork
        // and exec, on its own stdin (the pty slave set above).
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(cmd, || {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    } else {
        cmd.stdin(Stdio::null());
        cmd.stdout(stdout_for(config, out_path)?);
    }
    Ok(())
}

/// Stops a tcptrace started by [`start_tcptrace`] and reads its summary JSON.
fn stop_tcptrace(
    tracer: Tracer,
    scraper: Option<Scraper>,
    summary_path: &Path,
) -> Result<(TracerStats, Exit)> {
    let scrapes = scraper.map(Scraper::stop);
    let (mut stats, stderr, exit) = tracer.stop()?;
    let mut notes = Vec::new();
    if let Some((n, failed)) = scrapes
        && failed > 0
    {
        notes.push(format!("{failed} of {n} scrapes failed"));
    }
    if exit.killed {
        notes.push(format!(
            "did not exit within {:?} of SIGINT: killed",
            proc::STOP_TIMEOUT
        ));
    }
    match fs::read_to_string(summary_path)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
    {
        Some(v) => {
            stats.transitions = json_u64(&v, "transitions");
            stats.lost = json_u64(&v, "lost");
            stats.lost_skipped = Some(json_u64(&v, "lost_skipped").unwrap_or(0));
            stats.gaps = v.get("track").and_then(|t| json_u64(t, "gaps"));
        }
        None => notes.push(format!(
            "no summary JSON ({}); stderr: {}",
            exit.describe(),
            stderr.join(" | ")
        )),
    }
    if !notes.is_empty() {
        stats.note = Some(notes.join("; "));
    }
    Ok((stats, exit))
}

/// Runs the churn beside `config`'s tracer and measures both.
/// `stats`: with the kernel's BPF run-time statistics on (for the ns/event figure).
fn run_one(env: &Env, config: Config, run: usize, stats: bool) -> Result<Row> {
    let load = load_avg();
    if config == Config::Baseline {
        let c = churn(env.duration, env.load)?;
        return Ok(Row {
            config,
            churn: c,
            tracer: None,
            load,
            stats: false,
        });
    }
    let _stats_fd = match stats {
        true => Some(proc::enable_bpf_stats().context("turning on BPF statistics")?),
        false => None,
    };
    let tag = format!("{run:02}-{config:?}").to_lowercase();
    let out_path = env.dir.join(match config {
        Config::Record => format!("{tag}.tcpt"),
        Config::RecordJsonl => format!("{tag}.jsonl.zst"),
        _ => format!("{tag}.out"),
    });
    let summary_path = env.dir.join(format!("{tag}.summary.json"));
    if config.is_tcpstates() {
        return run_tcpstates(env, config, &out_path, load).map(|r| Row { stats, ..r });
    }
    if config.is_bpftrace() {
        return run_bpftrace(env, config, &out_path, load).map(|r| Row { stats, ..r });
    }
    let (tracer, scraper) =
        start_tcptrace(&env.bin, config, &out_path, &summary_path, &env.ports, None)?;
    let churn_result = churn(env.duration, env.load);
    // Let the tail of the churn (softirq work, TIME_WAIT hand-overs) reach the tracer.
    thread::sleep(Duration::from_millis(300));
    let (mut tstats, _) = stop_tcptrace(tracer, scraper, &summary_path)?;
    let c = churn_result?;
    tstats.output_bytes = fs::metadata(&out_path).ok().map(|m| m.len());
    Ok(Row {
        config,
        churn: c,
        tracer: Some(tstats),
        load,
        stats,
    })
}

/// Runs the churn beside libbpf-tools `tcpstates`.
fn run_tcpstates(env: &Env, config: Config, out_path: &Path, load: String) -> Result<Row> {
    let path = env.tcpstates.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut cmd = Command::new(path);
    cmd.stdin(Stdio::null());
    cmd.stdout(stdout_for(config, out_path)?);
    // libbpf opens a perf-event fd when it attaches: that is its readiness.
    let tracer = Tracer::start(cmd, proc::Ready::PerfFd)?;
    let churn_result = churn(env.duration, env.load);
    thread::sleep(Duration::from_millis(300));
    let (mut stats, stderr, exit) = tracer.stop()?;
    let c = churn_result?;
    stats.output_bytes = fs::metadata(out_path).ok().map(|m| m.len());
    // libbpf-tools print "lost N events on CPU #C" for perf-buffer losses.
    let lost: u64 = stderr
        .iter()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("lost ")?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum();
    stats.lost = Some(lost);
    if config == Config::TcpstatesFile {
        let f = fs::File::open(out_path).context("tcpstates output")?;
        let lines = BufReader::new(f).lines().count() as u64;
        // The first line is the header.
        stats.transitions = Some(lines.saturating_sub(1));
    }
    Ok(yardstick_row(config, c, stats, load, (&exit, &stderr)))
}

/// The row of another tool's run, with a note when it ended other than by our SIGINT.
fn yardstick_row(
    config: Config,
    churn: churn::Churn,
    mut stats: TracerStats,
    load: String,
    (exit, stderr): (&proc::Exit, &[String]),
) -> Row {
    if !exit.success() && !exit.killed {
        stats.note = Some(format!(
            "{} ended with {}: {}",
            config.label(),
            exit.describe(),
            stderr.join(" | ")
        ));
    }
    Row {
        config,
        churn,
        tracer: Some(stats),
        load,
        stats: false,
    }
}

/// The bpftrace yardstick: transitions counted per new state in a per-CPU map, nothing sent
/// to userspace until it ends (as the issue's own table measured it: about 0.90 of the rate
/// and 234 ns per event).
const BPFTRACE_COUNT: &str =
    "tracepoint:sock:inet_sock_set_state /args->protocol == 6/ { @[args->newstate] = count(); }";

/// The other bpftrace yardstick: a probe that does nothing. Under the BPF statistics its
/// ns/event is their own cost per program run (two clock reads), which every program of
/// every tracer here pays in that figure, once per program.
const BPFTRACE_EMPTY: &str = "tracepoint:sock:inet_sock_set_state { }";

/// Runs the churn beside a bpftrace yardstick ([`BPFTRACE_COUNT`], [`BPFTRACE_EMPTY`]).
fn run_bpftrace(env: &Env, config: Config, out_path: &Path, load: String) -> Result<Row> {
    let path = env.bpftrace.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut cmd = Command::new(path);
    let program = match config {
        Config::Bpftrace => BPFTRACE_COUNT,
        _ => BPFTRACE_EMPTY,
    };
    cmd.args(["-e", program]);
    cmd.stdin(Stdio::null());
    cmd.stdout(stdout_for(config, out_path)?);
    // bpftrace opens perf-event fds for its output before it attaches: its readiness is the
    // kernel listing its tracepoint attachment.
    let tracer = Tracer::start(cmd, proc::Ready::Attached("inet_sock_set_state"))?;
    let churn_result = churn(env.duration, env.load);
    thread::sleep(Duration::from_millis(300));
    let (mut stats, stderr, exit) = tracer.stop()?;
    let c = churn_result?;
    // On SIGINT it prints the map: "@[1]: 12345" per new state.
    let text = fs::read_to_string(out_path).context("bpftrace output")?;
    let counts: Vec<u64> = text
        .lines()
        .filter(|l| l.starts_with("@["))
        .filter_map(|l| l.rsplit(": ").next()?.trim().parse().ok())
        .collect();
    if config == Config::Bpftrace {
        stats.transitions = (!counts.is_empty()).then(|| counts.iter().sum());
        // A map update cannot fail for want of room: it loses nothing.
        stats.lost = Some(0);
    }
    Ok(yardstick_row(config, c, stats, load, (&exit, &stderr)))
}

/// The tracer's stdout: /dev/null, or a file in the bench directory.
fn stdout_for(config: Config, out_path: &Path) -> Result<Stdio> {
    if matches!(
        config,
        Config::None
            | Config::NoneRingBuffers
            | Config::Serve
            | Config::Tcpstates
            | Config::Record
            | Config::RecordJsonl
    ) {
        return Ok(Stdio::null());
    }
    let f =
        fs::File::create(out_path).with_context(|| format!("creating {}", out_path.display()))?;
    Ok(Stdio::from(f))
}

fn load_avg() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// One measured run.
struct Row {
    config: Config,
    churn: churn::Churn,
    tracer: Option<TracerStats>,
    /// 1-minute load average when the run started (others' work on the machine).
    load: String,
    /// Run with the kernel's BPF statistics on: for ns/event only, in no ratio.
    stats: bool,
}

fn find_bpftrace() -> std::result::Result<PathBuf, String> {
    for p in ["/usr/bin/bpftrace", "/usr/sbin/bpftrace"] {
        if Path::new(p).exists() {
            return Ok(PathBuf::from(p));
        }
    }
    Err(
        "bpftrace not found (/usr/bin/bpftrace): install the Debian package bpftrace \
         (`sudo apt-get install bpftrace`)"
            .to_owned(),
    )
}

fn find_tcpstates() -> std::result::Result<PathBuf, String> {
    for p in ["/usr/sbin/tcpstates", "/usr/bin/tcpstates"] {
        if Path::new(p).exists() {
            return Ok(PathBuf::from(p));
        }
    }
    Err(
        "tcpstates not found (/usr/sbin/tcpstates): install the Debian package libbpf-tools \
         (`sudo cargo xtask setup --test-packages`)"
            .to_owned(),
    )
}

// ---------------------------------------------------------------------------------------
// The table.

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Median, min and max; `None` for no values.
fn spread(v: &[f64]) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if !n.is_multiple_of(2) {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Some((median, s[0], s[n - 1]))
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / 1048576.0)
}

fn pass(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

/// Each run's rate over the untraced rate around it: for a traced run the mean of the
/// baselines just before and just after it (the machine drifts: others' builds), for a
/// baseline run the mean of all baselines.
fn ratios(rows: &[Row]) -> Vec<f64> {
    let all = mean(
        &rows
            .iter()
            .filter(|r| r.config == Config::Baseline)
            .map(|r| r.churn.rate())
            .collect::<Vec<_>>(),
    );
    let is_base = |r: &&Row| r.config == Config::Baseline;
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            let base = if r.config == Config::Baseline {
                all
            } else {
                let around: Vec<f64> = rows[..i]
                    .iter()
                    .rev()
                    .find(is_base)
                    .into_iter()
                    .chain(rows[i + 1..].iter().find(is_base))
                    .map(|b| b.churn.rate())
                    .collect();
                if around.is_empty() {
                    all
                } else {
                    mean(&around)
                }
            };
            if base > 0.0 {
                r.churn.rate() / base
            } else {
                0.0
            }
        })
        .collect()
}

/// Transitions a run delivered: counted by the tracer, or for `tcpstates > /dev/null`
/// estimated from tcptrace's transitions per connection (`est`).
fn run_transitions(r: &Row, per_conn: Option<f64>) -> Option<(u64, bool)> {
    let t = r.tracer.as_ref()?;
    match t.transitions {
        Some(n) => Some((n, false)),
        None => per_conn.map(|k| ((k * r.churn.connections as f64).round() as u64, true)),
    }
}

fn kernel_ns(t: &TracerStats) -> Option<f64> {
    t.kernel.map(|(ns, cnt)| ns as f64 / cnt as f64)
}

/// "0.912 (0.880-0.950)"
fn fmt_spread(s: Option<(f64, f64, f64)>, digits: usize) -> String {
    match s {
        Some((m, lo, hi)) => format!("{m:.digits$} ({lo:.digits$}-{hi:.digits$})"),
        None => "-".to_owned(),
    }
}

fn table(rows: &[Row], args: &Args, env: &Env) -> String {
    let mut s = String::new();
    let run_ratios = ratios(rows);
    let baselines: Vec<f64> = rows
        .iter()
        .filter(|r| r.config == Config::Baseline)
        .map(|r| r.churn.rate())
        .collect();
    let base = mean(&baselines);
    let loads: Vec<f64> = rows.iter().filter_map(|r| r.load.parse().ok()).collect();

    // Transitions per connection as tcptrace counted them: the estimate for tcpstates
    // writing to /dev/null, whose lines nobody counts.
    let per_conn: Vec<f64> = rows
        .iter()
        .filter(|r| !r.config.is_other_tool() && r.config != Config::Baseline)
        .filter_map(|r| {
            let t = r.tracer.as_ref()?.transitions? as f64;
            (r.churn.connections > 0).then(|| t / r.churn.connections as f64)
        })
        .collect();
    let tr_per_conn = (!per_conn.is_empty()).then(|| mean(&per_conn));

    let _ = writeln!(
        s,
        "\ncargo xtask bench: loopback churn (connect, 4 bytes each way, close), each run in a \
         fresh network namespace: {} listening ports, {} client threads, {}; {:.0}s per run, \
         {} round(s); outputs in {}",
        env.load.ports,
        env.load.threads,
        env.load.close.describe(),
        args.secs,
        args.rounds,
        env.dir.display()
    );
    let _ = writeln!(
        s,
        "machine: {} CPUs; 1-min load average over the runs {}; other work on the machine \
         shows as noise in the ratios",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        fmt_spread(spread(&loads), 2)
    );
    let _ = writeln!(
        s,
        "\nruns in order (ratio: to the mean of the untraced runs just before and after; ns/ev: \
         the kernel's BPF statistics of the tracer's programs during the churn)"
    );
    let _ = writeln!(
        s,
        "  {:>3}  {:<22} {:>8} {:>6} {:>10} {:>7} {:>8} {:>8} {:>7} {:>6} {:>7} {:>5}  notes",
        "#",
        "configuration",
        "conn/s",
        "ratio",
        "transit.",
        "CPU-s",
        "CPU-s/M",
        "lost",
        "RSS MiB",
        "ns/ev",
        "out MiB",
        "load"
    );
    for (i, r) in rows.iter().enumerate() {
        let mut line = format!(
            "  {:>3}  {:<22} {:>8.0} {:>6.3}",
            i + 1,
            r.config.label(),
            r.churn.rate(),
            run_ratios[i]
        );
        let mut notes = Vec::new();
        if r.churn.errors > 0 {
            notes.push(format!("{} churn errors", r.churn.errors));
        }
        match &r.tracer {
            None => {
                let _ = write!(
                    line,
                    " {:>10} {:>7} {:>8} {:>8} {:>7} {:>6} {:>7}",
                    "-", "-", "-", "-", "-", "-", "-"
                );
            }
            Some(t) => {
                let trans = run_transitions(r, tr_per_conn);
                let trans_s = match trans {
                    Some((n, true)) => format!("~{n}"),
                    Some((n, false)) => n.to_string(),
                    None => "?".to_owned(),
                };
                let per_m = trans
                    .filter(|&(n, _)| n > 0)
                    .map(|(n, _)| format!("{:.3}", t.cpu_secs / (n as f64 / 1e6)))
                    .unwrap_or_else(|| "?".to_owned());
                let _ = write!(
                    line,
                    " {:>10} {:>7.2} {:>8} {:>8} {:>7} {:>6} {:>7}",
                    trans_s,
                    t.cpu_secs,
                    per_m,
                    t.lost.map_or("?".to_owned(), |l| l.to_string()),
                    t.peak_rss_bytes.map_or("?".to_owned(), mib),
                    kernel_ns(t).map_or("?".to_owned(), |x| format!("{x:.0}")),
                    t.output_bytes.map_or("-".to_owned(), mib),
                );
                if matches!(trans, Some((_, true))) {
                    notes.push("transitions estimated from tcptrace's per-connection count".into());
                }
                notes.push(format!("{:.2} CPU-s incl. start-up", t.total_cpu_secs));
                if r.config == Config::Top {
                    // Seen on a 2-core VM with sched_autogroup_enabled=1: `watch --per none`
                    // started under setsid lost 83% of the churn's events where the same
                    // command in the bench's session lost none.
                    notes.push(
                        "runs in its own session (setsid, for its controlling terminal), so \
                         in its own scheduler autogroup where that is enabled"
                            .into(),
                    );
                }
                if let Some(n) = &t.note {
                    notes.push(n.clone());
                }
                if r.stats {
                    notes.push("BPF statistics on: its ns/event only, in no ratio".into());
                }
            }
        }
        let _ = writeln!(line, " {:>5}  {}", r.load, notes.join("; "));
        s.push_str(&line);
    }

    let _ = writeln!(
        s,
        "\nper configuration: median (min-max) over the runs; untraced runs averaged {base:.0} \
         connections/s; transitions and lost are totals over the runs, RSS the largest peak"
    );
    let _ = writeln!(
        s,
        "  {:<22} {:>21} {:>11} {:>8} {:>21} {:>7} {:>15}  targets",
        "configuration", "ratio to untraced", "transit.", "lost", "CPU-s/M", "RSS MiB", "ns/event"
    );
    for config in std::iter::once(Config::Baseline).chain(Config::TRACED) {
        let rs: Vec<(&Row, f64)> = rows
            .iter()
            .zip(run_ratios.iter().copied())
            .filter(|(r, _)| r.config == config)
            .collect();
        if rs.is_empty() {
            continue;
        }
        let ratio = spread(&rs.iter().map(|(_, q)| *q).collect::<Vec<_>>());
        if config == Config::Baseline {
            let _ = writeln!(
                s,
                "  {:<22} {:>21} {:>11} {:>8} {:>21} {:>7} {:>15}  (noise: each untraced run \
                 over their mean)",
                config.label(),
                fmt_spread(ratio, 3),
                "-",
                "-",
                "-",
                "-",
                "-"
            );
            continue;
        }
        let mut trans = Some(0u64);
        let mut lost = Some(0u64);
        let mut per_m = Vec::new();
        let mut ns = Vec::new();
        let mut nested_ns = Vec::new();
        let mut rss = None::<u64>;
        for (r, _) in &rs {
            let Some(t) = &r.tracer else { continue };
            let n = run_transitions(r, tr_per_conn);
            trans = trans.zip(n).map(|(a, (b, _))| a + b);
            lost = lost.zip(t.lost).map(|(a, b)| a + b);
            if r.stats {
                ns.extend(kernel_ns(t));
                nested_ns.extend(
                    t.kernel
                        .zip(t.kernel_nested_ns)
                        .map(|((_, cnt), n)| n as f64 / cnt as f64),
                );
                continue;
            }
            if let Some((n, _)) = n.filter(|&(n, _)| n > 0) {
                per_m.push(t.cpu_secs / (n as f64 / 1e6));
            }
            rss = rss.max(t.peak_rss_bytes);
        }
        let ratio = spread(
            &rs.iter()
                .filter(|(r, _)| !r.stats)
                .map(|(_, q)| *q)
                .collect::<Vec<_>>(),
        );
        let per_m = spread(&per_m);
        let ns = spread(&ns);
        let mut checks: Vec<(bool, String)> = Vec::new();
        if let Some(target) = config.target_ratio() {
            let m = ratio.map_or(0.0, |r| r.0);
            checks.push((m >= target, format!("ratio {m:.3} >= {target:.2}")));
        }
        if config.aggregate_only() {
            checks.push((
                lost == Some(0),
                format!(
                    "lost {} = 0",
                    lost.map_or("?".to_owned(), |l| l.to_string())
                ),
            ));
            let m = per_m.map(|p| p.0);
            checks.push((
                m.is_some_and(|m| m <= TARGET_CPU_PER_M),
                format!(
                    "{} CPU-s/M <= {TARGET_CPU_PER_M}",
                    m.map_or("?".to_owned(), |m| format!("{m:.3}"))
                ),
            ));
        }
        if !config.is_other_tool() {
            let m = ns.map(|n| n.0);
            checks.push((
                m.is_some_and(|m| m <= TARGET_KERNEL_NS),
                format!(
                    "{} ns/event <= {TARGET_KERNEL_NS:.0}",
                    m.map_or("?".to_owned(), |m| format!("{m:.1}"))
                ),
            ));
        }
        let verdict = if checks.is_empty() {
            "(yardstick, no target)".to_owned()
        } else if checks.iter().all(|(ok, _)| *ok) {
            "met".to_owned()
        } else {
            let missed: Vec<&str> = checks
                .iter()
                .filter(|(ok, _)| !ok)
                .map(|(_, w)| w.as_str())
                .collect();
            format!("MISSED: {}", missed.join(", "))
        };
        let mut ns_shown = fmt_spread(ns, 0);
        if let Some(n) = spread(&nested_ns) {
            let _ = write!(ns_shown, " incl. {:.0} nested", n.0);
        }
        let _ = writeln!(
            s,
            "  {:<22} {:>21} {:>11} {:>8} {:>21} {:>7} {:>15}  {}",
            config.label(),
            fmt_spread(ratio, 3),
            trans.map_or("?".to_owned(), |t| t.to_string()),
            lost.map_or("?".to_owned(), |l| l.to_string()),
            fmt_spread(per_m, 3),
            rss.map_or("?".to_owned(), mib),
            ns_shown,
            verdict
        );
    }
    let _ = writeln!(
        s,
        "\ntargets (medians; reported, not asserted): aggregate-only (none, top, serve) >= \
         {TARGET_AGGREGATE_RATIO} with 0 lost and <= {TARGET_CPU_PER_M} CPU-s/M; record >= \
         {TARGET_RECORD_RATIO}; text >= {TARGET_TEXT_RATIO}; json >= {TARGET_JSON_RATIO}; \
         kernel <= {TARGET_KERNEL_NS:.0} ns/event\nns/event: tcptrace's inet_sock_set_state \
         program, plus its nested-event program's time per state change (named by bpftool; \
         all its programs when bpftool is missing), from the kernel's run_time_ns/run_cnt, in \
         one run per configuration with the statistics on (they cost each program run about \
         56 ns here, which the rate runs do not pay: the empty bpftrace probe's figure is that \
         floor, paid once per program run); tcpstates, bpftrace: all their programs"
    );
    s
}

// ---------------------------------------------------------------------------------------

/// A fresh scratch directory for outputs.
fn scratch_dir() -> Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("tcptrace-bench-{}-{nanos}", std::process::id()));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

pub fn bench(args: &Args) -> Result<()> {
    if !crate::is_root() {
        bail!(
            "the benchmark loads eBPF programs (tcptrace, tcpstates) and creates network \
             namespaces, so it needs root: run `sudo -E cargo xtask bench`"
        );
    }
    if !(args.secs > 0.0 && args.secs <= 120.0) {
        bail!("--secs must be in (0, 120]");
    }
    if !(1..=20).contains(&args.rounds) {
        bail!("--rounds must be 1..=20");
    }
    if !(1..=64).contains(&args.threads) || !(1..=64).contains(&args.ports) {
        bail!("--threads and --ports must be 1..=64");
    }
    let bin = match &args.bin {
        Some(b) => b.clone(),
        None => crate::build_release()?,
    };
    let dir = scratch_dir()?;
    // The kernel keeps run-time statistics of BPF programs while this fd is open, and turns
    // them off when it closes, however the bench ends. The churn table turns them on only
    // for its ns/event runs (see `churn_section`); the soak reports them throughout.
    let stats_fd = if args.soak.is_some() {
        let fd = proc::enable_bpf_stats();
        if let Err(e) = &fd {
            eprintln!("xtask bench: no kernel ns/event figures: {e:#}");
        }
        fd.ok()
    } else {
        None
    };
    let load = Load {
        threads: args.threads,
        ports: args.ports,
        close: args.close,
    };
    let env = Env {
        bin,
        tcpstates: find_tcpstates(),
        bpftrace: find_bpftrace(),
        dir,
        duration: Duration::from_secs_f64(args.secs),
        load,
        ports: churn::port_filter(&load),
    };
    let result = if let Some(secs) = args.soak {
        soak::soak(&env, secs).map(|s| println!("{s}"))
    } else if args.mass_close {
        massclose::section(&env, args).map(|s| println!("{s}"))
    } else {
        churn_section(&env, args)
    };
    drop(stats_fd);
    if args.keep {
        println!("outputs kept in {}", env.dir.display());
    } else {
        let _ = fs::remove_dir_all(&env.dir);
    }
    result
}

/// The default bench: the churn table, the mass close, the report throughput.
fn churn_section(env: &Env, args: &Args) -> Result<()> {
    let configs: Vec<Config> = Config::TRACED
        .into_iter()
        .filter(|c| args.only.is_empty() || args.only.contains(c))
        .collect();

    // The kernel's BPF run-time statistics cost every program run two clock reads (an empty
    // program measures about 56 ns on this machine kind), which no production run pays: the
    // rate runs go without them, and one more run per configuration, after the rounds, turns
    // them on for the ns/event figure alone (its rate counts in no ratio).
    let mut plan = Vec::new();
    for _ in 0..args.rounds {
        for c in &configs {
            plan.push((Config::Baseline, false));
            plan.push((*c, false));
        }
    }
    for c in &configs {
        plan.push((*c, true));
    }
    plan.push((Config::Baseline, false));
    let per_run = args.secs + 2.5;
    eprintln!(
        "xtask bench: {} runs of {:.0}s churn (about {:.0}s in all, then the mass close and \
         the report section); tcptrace = {}",
        plan.len(),
        args.secs,
        plan.len() as f64 * per_run,
        env.bin.display()
    );
    for why in [&env.tcpstates, &env.bpftrace]
        .into_iter()
        .filter_map(|t| t.as_ref().err())
    {
        eprintln!("xtask bench: runs skipped: {why}");
    }

    let mut rows = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    for (i, &(config, stats)) in plan.iter().enumerate() {
        if let Some(why) = config.missing(env) {
            if !skipped.iter().any(|s| s == why) {
                skipped.push(why.clone());
            }
            continue;
        }
        eprint!(
            "xtask bench: run {}/{}: {}{} ... ",
            i + 1,
            plan.len(),
            config.label(),
            if stats { " (BPF statistics on)" } else { "" }
        );
        match run_one(env, config, i + 1, stats) {
            Ok(row) => {
                eprintln!("{:.0} connections/s", row.churn.rate());
                rows.push(row);
            }
            Err(e) => {
                eprintln!("failed");
                let why = format!("{}: {e:#}", config.label());
                eprintln!("xtask bench: {why}");
                skipped.push(why);
            }
        }
        thread::sleep(SETTLE);
    }

    let mut out = table(&rows, args, env);
    for why in &skipped {
        let _ = writeln!(out, "  NOT MEASURED: {why}");
    }
    // Print the churn table now: the next sections take a while.
    println!("{out}");
    if !args.no_mass_close {
        match massclose::section(env, args) {
            Ok(text) => println!("{text}"),
            Err(e) => println!("\nmass close: NOT MEASURED: {e:#}"),
        }
    }
    println!(
        "{}",
        report::report_section(&env.bin, &env.dir, args.report_transitions)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_median_min_max() {
        assert_eq!(spread(&[]), None);
        assert_eq!(spread(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(spread(&[4.0, 1.0, 2.0, 3.0]), Some((2.5, 1.0, 4.0)));
    }
}
