//! Command-line definitions and the parsers of single flag values (ports, durations, sizes);
//! `config` turns the parsed flags into validated settings. Nothing here imports the rest
//! of the tool.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use tcptrace_common::MAX_FILTER_PORTS;

/// Makes TCP connection life cycles visible: every state transition, handshake latency
/// (client and server side), teardown phases, resets and CLOSE_WAIT leaks, from eBPF.
///
/// Without a subcommand, tcptrace runs `watch`.
#[derive(Parser, Debug)]
#[command(
    name = "tcptrace",
    version,
    args_conflicts_with_subcommands = true,
    after_long_help = EXIT_CODES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub watch: WatchArgs,
}

/// The exit codes, for `--help` and the man pages (`exit::Exit` is the code side; the
/// README has the same table).
pub const EXIT_CODES: &str = "\
Exit codes:
  0    ended normally: --duration elapsed, q in top, a replay or a command done
  1    error: could not start (privileges, kernel, tracefs) or a bad file; said on stderr
  2    usage error: a bad flag or value (e.g. --pid naming no process)
  74   an output failed while running or at exit (e.g. the disk filled); summary still printed
  101  internal error (a panic); the program is detached, summary printed where possible
  129  SIGHUP (terminal or SSH session gone): summary and recording flushed first
  130  SIGINT (Ctrl-C): summary and recording flushed first
  141  stdout closed (e.g. `tcptrace watch | head -1`): summary still printed
  143  SIGTERM: summary and recording flushed first";

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Stream TCP state transitions (or finished connections) live; summary on exit.
    #[command(after_long_help = EXIT_CODES)]
    Watch(WatchArgs),
    /// Record the transition stream to a file for `report` (binary; a name ending in .jsonl
    /// or .jsonl.zst writes JSON Lines).
    #[command(after_long_help = EXIT_CODES)]
    Record(RecordArgs),
    /// Summary and charts from a recording; needs no root.
    #[command(after_long_help = EXIT_CODES)]
    Report(ReportArgs),
    /// Serve Prometheus metrics (/metrics) of the live run until SIGTERM/SIGINT; summary on
    /// exit.
    #[command(after_long_help = EXIT_CODES)]
    Serve(ServeArgs),
    /// Full-screen live dashboard: rates, handshakes, teardown, sockets per state, CLOSE_WAIT
    /// leaks, groups, recent closes (`--replay FILE` plays a recording; `--once` prints one
    /// snapshot).
    #[command(after_long_help = EXIT_CODES)]
    Top(TopArgs),
    /// Convert a recording between binary and JSON Lines (the output's name picks the format).
    #[command(after_long_help = EXIT_CODES)]
    Export(ExportArgs),
    /// Write a synthetic recording (for benchmarks and demos).
    #[command(hide = true)]
    GenerateRecording(GenerateArgs),
    /// Print shell completions to stdout (`cargo xtask docs` writes them all).
    #[command(hide = true)]
    Completions(CompletionsArgs),
    /// Print the man page roff to stdout, or write one page per command into --out DIR.
    #[command(hide = true)]
    Man(ManArgs),
}

/// `tcptrace completions SHELL` (hidden).
#[derive(Args, Debug, Clone)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `tcptrace man` (hidden).
#[derive(Args, Debug, Clone)]
pub struct ManArgs {
    /// Write tcptrace.1 and one tcptrace-COMMAND.1 per command into this directory.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// `tcptrace record`.
#[derive(Args, Debug, Clone)]
pub struct RecordArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub sample: SampleArgs,
    /// The recording to write: binary (e.g. run.tcpt), or JSON Lines when the name ends in
    /// .jsonl or .jsonl.zst (zstd-compressed).
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: PathBuf,
    /// Stop after this many seconds (e.g. 600 or 0.5).
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Size of each CPU's ring in KiB (as for `watch`). Events lost to a full ring are
    /// counted in the recording and its summary.
    #[arg(long, value_name = "KIB", value_parser = parse_ring_kib)]
    pub ring_kib: Option<u32>,
    #[command(flatten)]
    pub summary: SummaryArgs,
}

/// Default `serve --listen`: loopback, on a port outside Prometheus's fully allocated
/// exporter range 9100-9999 and not on its default port allocations list (see README).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:10089";
/// Most ports `--group-ports` may name, and most processes `--group-processes` may keep:
/// together they bound the number of series (see `serve::metrics`).
pub const MAX_GROUP_PORTS: usize = 32;
pub const MAX_GROUP_PROCESSES: usize = 20;
/// Most workloads `--group-workloads` may keep (each adds as many series as a process).
pub const MAX_GROUP_WORKLOADS: usize = 20;

/// `tcptrace serve`.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub sample: SampleArgs,
    /// Address and port to serve /metrics on. Loopback by default; any other address exposes
    /// the metrics to whoever can reach it (a warning says so). Port 0 picks a free port
    /// (the start-up line says which).
    #[arg(long, value_name = "ADDR:PORT", default_value = DEFAULT_LISTEN, value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// Break the handshake and close metrics out by these ports (server side by local port,
    /// client side by remote port), e.g. 80,443,5432. Other ports get no series of their own.
    #[arg(long, value_name = "PORTS", value_parser = parse_group_ports)]
    pub group_ports: Option<PortList>,
    /// Give the first N process names seen series of their own (at most 20); the rest are
    /// counted under process="other".
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = parse_group_processes)]
    pub group_processes: usize,
    /// Give the first N workloads seen (a socket's cgroup named: container, Kubernetes pod,
    /// systemd unit, else the cgroup path) series of their own (at most 20); the rest are
    /// counted under workload="other".
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = parse_group_workloads)]
    pub group_workloads: usize,
    /// CLOSE_WAIT sockets older than this many seconds count as stuck
    /// (tcptrace_close_wait_stuck_sockets).
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_duration)]
    pub close_wait_threshold: Duration,
    /// How often the metrics are brought up to date, in seconds (scrapes in between see the
    /// same values).
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = parse_duration)]
    pub interval: Duration,
    /// Size of each CPU's ring in KiB (as for `watch`).
    #[arg(long, value_name = "KIB", value_parser = parse_ring_kib)]
    pub ring_kib: Option<u32>,
    /// Stop after this many seconds (otherwise at SIGTERM or SIGINT).
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub summary: SummaryArgs,
}

/// Parses `--listen`: an IP address and a port.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        format!(
            "{s:?} is not an address and port: use e.g. 127.0.0.1:10089, 0.0.0.0:10089 or [::1]:10089"
        )
    })
}

/// A sorted, deduplicated port list given as one flag value (a newtype, so that clap takes
/// `Option<PortList>` as one optional value rather than many).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortList(pub Vec<u16>);

/// Parses `--group-ports`: a port list (as the filters take) of at most [`MAX_GROUP_PORTS`].
pub fn parse_group_ports(s: &str) -> Result<PortList, String> {
    let mut ports = parse_ports(s)?;
    ports.sort_unstable();
    ports.dedup();
    if ports.len() > MAX_GROUP_PORTS {
        return Err(format!(
            "--group-ports names {} ports; at most {MAX_GROUP_PORTS} (each adds about 70 series): \
             name the services you watch",
            ports.len()
        ));
    }
    Ok(PortList(ports))
}

/// Parses `--group-processes`: 0 to [`MAX_GROUP_PROCESSES`].
pub fn parse_group_processes(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n <= MAX_GROUP_PROCESSES => Ok(n),
        _ => Err(format!(
            "{s:?} is not a number of processes from 0 to {MAX_GROUP_PROCESSES} (each adds about \
             190 series; the rest are counted under \"other\")"
        )),
    }
}

/// Parses `--group-workloads`: 0 to [`MAX_GROUP_WORKLOADS`].
pub fn parse_group_workloads(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n <= MAX_GROUP_WORKLOADS => Ok(n),
        _ => Err(format!(
            "{s:?} is not a number of workloads from 0 to {MAX_GROUP_WORKLOADS} (each adds about \
             65 series; the rest are counted under \"other\")"
        )),
    }
}

/// The socket-table sampler (listeners, SYN floods, TIME_WAIT; see `sockdiag`).
#[derive(Args, Debug, Clone)]
pub struct SampleArgs {
    /// Sample the socket table (LISTEN and SYN_RECV sockets and the netstat listener
    /// counters) every this many seconds.
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = parse_sample_interval)]
    pub sample_interval: Duration,
    /// Include TIME_WAIT sockets in the sample every this many seconds: a multiple of
    /// --sample-interval (default 5, or every sample when that is 5 or more). TIME_WAIT lasts
    /// 60 s, and the kernel builds one message per TIME_WAIT socket, so sampling it less often
    /// keeps the cost low; TIME_WAIT figures are those of the last sample that had them.
    #[arg(long, value_name = "SECS", value_parser = parse_sample_interval)]
    pub time_wait_interval: Option<Duration>,
    /// Do not sample the socket table (no listener or TIME_WAIT figures).
    #[arg(long, conflicts_with_all = ["netns", "all_netns"])]
    pub no_sample: bool,
    /// Only sockets of this network namespace (a path such as /run/netns/NAME or
    /// /proc/PID/ns/net, or its inode number), matched in the kernel; its socket table is
    /// sampled too (besides the namespace tcptrace runs in, which always is). Repeatable: a
    /// socket in any of them passes.
    #[arg(long, value_name = "PATH|INODE")]
    pub netns: Vec<PathBuf>,
    /// Sample every network namespace found under /proc/*/ns/net and /run/netns (looked for
    /// again at every sample).
    #[arg(long)]
    pub all_netns: bool,
}

impl Default for SampleArgs {
    fn default() -> Self {
        Self {
            sample_interval: Duration::from_secs(1),
            time_wait_interval: None,
            no_sample: false,
            netns: Vec::new(),
            all_netns: false,
        }
    }
}

/// The default TIME_WAIT sampling interval (`--time-wait-interval`).
pub const TIME_WAIT_INTERVAL: Duration = Duration::from_secs(5);

impl SampleArgs {
    /// TIME_WAIT is sampled in one sample of how many: `--time-wait-interval` divided by
    /// `--sample-interval`, which must divide it (to the millisecond); without the flag, as
    /// many as fit in 5 s (at least 1).
    pub fn time_wait_every(&self) -> Result<u32, String> {
        let si = self.sample_interval.as_secs_f64();
        let Some(tw) = self.time_wait_interval else {
            return Ok(((TIME_WAIT_INTERVAL.as_secs_f64() / si + 1e-9).floor() as u32).max(1));
        };
        let n = (tw.as_secs_f64() / si).round();
        if n < 1.0 || (n * si - tw.as_secs_f64()).abs() > 0.001 {
            return Err(format!(
                "--time-wait-interval {} is not a multiple of --sample-interval {}: give a \
                 whole number of sample intervals (e.g. --time-wait-interval {})",
                tw.as_secs_f64(),
                si,
                (n.max(1.0) * si * 1000.0).round() / 1000.0
            ));
        }
        Ok(n as u32)
    }
}

/// Parses `--sample-interval` and `--time-wait-interval`: 0.1 to 3600 seconds.
pub fn parse_sample_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
        return Err(format!(
            "{s}: the sample interval must be from 0.1 to 3600 seconds (or use --no-sample)"
        ));
    }
    Ok(d)
}

/// The exit summary of a live run (`watch`, `record`, `serve`, `top`), and the live run's
/// hidden test hook.
#[derive(Args, Debug, Clone)]
pub struct SummaryArgs {
    /// Groups shown per dimension in the exit summary.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub top: usize,
    /// Do not print the summary on exit.
    #[arg(long)]
    pub no_summary: bool,
    /// Write the summary to this file as JSON on exit (in addition to the text on stderr).
    #[arg(long, value_name = "FILE")]
    pub summary_json: Option<PathBuf>,
    /// Test hook (hidden): a sink panics on the Nth event, as a buggy output would; the
    /// tests check that the run still detaches, restores the terminal, flushes the summary
    /// and the recording, and exits with code 101.
    #[arg(long, value_name = "N", hide = true)]
    pub test_panic_after_events: Option<u64>,
}

impl Default for SummaryArgs {
    fn default() -> Self {
        Self {
            top: 5,
            no_summary: false,
            summary_json: None,
            test_panic_after_events: None,
        }
    }
}

/// `tcptrace top`.
#[derive(Args, Debug, Clone)]
pub struct TopArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub sample: SampleArgs,
    /// Refresh (and snapshot) interval in seconds, from 0.1 to 10.
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = parse_interval)]
    pub interval: Duration,
    /// Show sockets in CLOSE_WAIT for longer than this many seconds as leaks (`c` changes it).
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_threshold)]
    pub close_wait: Duration,
    /// Play a recording (from `tcptrace record`) through the dashboard instead of tracing;
    /// needs no root.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["ipv4", "ipv6", "lport", "rport", "port", "ring_kib"])]
    pub replay: Option<PathBuf>,
    /// Replay speed: N times real time, or `max` for as fast as possible.
    #[arg(long, value_name = "N|max", default_value = "1", value_parser = parse_speed, requires = "replay")]
    pub speed: f64,
    /// Print one snapshot after --interval and exit (no terminal needed); with --replay, the
    /// snapshot at the recording's end, played as fast as possible.
    #[arg(long)]
    pub once: bool,
    /// Format of the --once snapshot on stdout.
    #[arg(long, value_enum, default_value_t = Format::Text, requires = "once")]
    pub format: Format,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS", value_parser = parse_duration, conflicts_with = "once")]
    pub duration: Option<Duration>,
    /// Size of each CPU's ring in KiB (as for `watch`).
    #[arg(long, value_name = "KIB", value_parser = parse_ring_kib)]
    pub ring_kib: Option<u32>,
    #[command(flatten)]
    pub summary: SummaryArgs,
}

/// `tcptrace report`.
#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// A recording made by `tcptrace record` (binary or JSON Lines, told by its content).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Write the charts (SVG) and an index.html showing them into this directory.
    #[arg(long, value_name = "DIR")]
    pub svg: Option<PathBuf>,
    /// Format of the summary on stdout.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Groups shown per dimension in the summary.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub top: usize,
    /// Report on the valid part of a recording that ends early (the recorder was killed,
    /// the disk filled); the kernel's lost-event counters are then unknown.
    #[arg(long)]
    pub allow_truncated: bool,
}

/// `tcptrace export`.
#[derive(Args, Debug, Clone)]
pub struct ExportArgs {
    /// A recording (binary or JSON Lines, told by its content).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The converted recording: JSON Lines when the name ends in .jsonl or .jsonl.zst, CSV
    /// lines (as `watch --format csv` prints them) when it ends in .csv, else binary.
    #[arg(short = 'o', long, value_name = "OUT")]
    pub output: PathBuf,
    /// For a .csv output: one line per transition or per finished connection.
    #[arg(long, value_enum, default_value_t = Per::Transition)]
    pub per: Per,
    /// Convert the valid part of a recording that ends early (the output has no end record).
    #[arg(long)]
    pub allow_truncated: bool,
}

/// `tcptrace generate-recording` (hidden).
#[derive(Args, Debug, Clone)]
pub struct GenerateArgs {
    /// About this many state transitions (whole connections are generated).
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    pub transitions: u64,
    /// The recording to write (binary; .jsonl or .jsonl.zst writes JSON Lines).
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: PathBuf,
    /// Seed of the pseudo-random generator (same seed, same file).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Which sockets to trace. Filters run in the kernel: filtered traffic never reaches
/// userspace. All given conditions must hold.
#[derive(Args, Debug, Clone, Default)]
pub struct FilterArgs {
    /// Only IPv4 sockets.
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// Only IPv6 sockets.
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
    /// Only sockets whose local port is in this list (e.g. 80,443 or 8000-8010).
    #[arg(short = 'L', long, value_name = "PORTS", value_parser = parse_ports)]
    pub lport: Vec<Vec<u16>>,
    /// Only sockets whose remote port is in this list.
    #[arg(short = 'D', long, value_name = "PORTS", value_parser = parse_ports)]
    pub rport: Vec<Vec<u16>>,
    /// Only sockets with the local or the remote port in this list.
    #[arg(long, value_name = "PORTS", value_parser = parse_ports)]
    pub port: Vec<Vec<u16>>,
    /// Only sockets of this cgroup v2 directory or below it (e.g.
    /// /sys/fs/cgroup/system.slice/nginx.service, or relative to the cgroup2 mount), matched
    /// by the socket's own cgroup, so its softirq transitions pass too.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Only sockets owned by this process (connect, listen, and a listener's children).
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Only sockets owned by a task of this name (as `ps -o comm` shows it, 15 bytes at most).
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,
}

/// Output format of the stream.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Text,
    /// JSON: a stream is JSON Lines (one object per line), a summary or snapshot one
    /// document.
    Json,
    /// CSV with a header row: the JSON keys as columns, RFC 4180 quoting (stream only).
    Csv,
}

/// What one line of the stream is.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Per {
    /// One line per state transition (as tcpstates).
    #[default]
    Transition,
    /// One line per finished connection (as tcplife, with handshake and teardown timings).
    Connection,
    /// No stream: only the summary at exit.
    None,
}

#[derive(Args, Debug, Clone, Default)]
pub struct WatchArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub sample: SampleArgs,
    /// Size of each CPU's ring in KiB: a power of two from 4 to 1048576; default 2048. On
    /// x86-64 state changes go to it, and the kernel's ring buffers, for the other events
    /// (up to 8, CPU n writing ring n mod 8), get a quarter of it; elsewhere every event goes
    /// to ring buffers of this size. With many possible CPUs the rings are cut to 32 MiB in
    /// all (or what 8 ring buffers of a chosen size take), and below 256 KiB a CPU the ring
    /// buffers take every event. A larger ring rides out longer stalls of this process before the kernel has to
    /// drop events.
    #[arg(long, value_name = "KIB", value_parser = parse_ring_kib)]
    pub ring_kib: Option<u32>,
    /// Stop after this many seconds (e.g. 10 or 0.5).
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Output format of the stream.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// One line per transition, per finished connection, or none.
    #[arg(long, value_enum, default_value_t = Per::Transition)]
    pub per: Per,
    /// Accepted as in tcpstates: the TIME column (local HH:MM:SS.micros) is always printed.
    #[arg(short = 'T', long)]
    pub timestamp: bool,
    /// Wide address columns that fit IPv6 addresses (text stream), as tcpstates -w.
    #[arg(short = 'w', long)]
    pub wide: bool,
    #[command(flatten)]
    pub summary: SummaryArgs,
    /// At exit, write the charts (SVG) and an index.html showing them into this directory.
    #[arg(long, value_name = "DIR")]
    pub svg: Option<PathBuf>,
}

/// Parses a port list: comma-separated ports and ranges, e.g. `80,443,8000-8010`.
pub fn parse_ports(s: &str) -> Result<Vec<u16>, String> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(format!(
                "empty entry in port list {s:?}: use e.g. 80,443 or 8000-8010"
            ));
        }
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(part)?;
                (p, p)
            }
        };
        if lo > hi {
            return Err(format!("port range {part} is reversed: write {hi}-{lo}"));
        }
        out.extend(lo..=hi);
        if out.len() > MAX_FILTER_PORTS as usize {
            return Err(format!(
                "too many ports: at most {MAX_FILTER_PORTS} per filter"
            ));
        }
    }
    Ok(out)
}

fn port(s: &str) -> Result<u16, String> {
    let s = s.trim();
    match s.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        Ok(p) => Err(format!("port {p} is out of range: ports are 1 to 65535")),
        Err(_) => Err(format!("{s:?} is not a port number: ports are 1 to 65535")),
    }
}

/// Parses a ring buffer size in KiB: a power of two from 4 (one page) to 1 GiB.
pub fn parse_ring_kib(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(k) if k.is_power_of_two() && (4..=1 << 20).contains(&k) => Ok(k),
        _ => Err(format!(
            "{s:?} is not a power of two from 4 to 1048576 (KiB), e.g. 4096 or 65536"
        )),
    }
}

/// Parses the dashboard's refresh interval: 0.1 to 10 seconds.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.1..=10.0).contains(&v) => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!(
            "{s:?} is not an interval from 0.1 to 10 seconds (e.g. 1 or 0.5)"
        )),
    }
}

/// Parses a CLOSE_WAIT threshold: zero or more seconds.
pub fn parse_threshold(s: &str) -> Result<Duration, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..1e9).contains(&v) => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!(
            "{s:?} is not a number of seconds, 0 or more (e.g. 5 or 0.5)"
        )),
    }
}

/// Parses a replay speed: a positive factor, or `max` (infinity: as fast as possible).
pub fn parse_speed(s: &str) -> Result<f64, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("max") {
        return Ok(f64::INFINITY);
    }
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a replay speed: use a positive factor (e.g. 1, 10, 0.5) or max"
        )),
    }
}

/// Parses a positive number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v < 1e9 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!(
            "{s:?} is not a positive number of seconds (e.g. 10 or 0.5)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_wait_interval_is_a_multiple_of_the_sample_interval() {
        let args = |si: f64, tw: Option<f64>| SampleArgs {
            sample_interval: Duration::from_secs_f64(si),
            time_wait_interval: tw.map(Duration::from_secs_f64),
            ..SampleArgs::default()
        };
        assert_eq!(args(1.0, None).time_wait_every(), Ok(5));
        assert_eq!(args(0.5, None).time_wait_every(), Ok(10));
        assert_eq!(
            args(0.3, None).time_wait_every(),
            Ok(16),
            "as many as fit in 5 s"
        );
        assert_eq!(args(10.0, None).time_wait_every(), Ok(1));
        assert_eq!(args(0.5, Some(1.0)).time_wait_every(), Ok(2));
        assert_eq!(args(0.1, Some(0.3)).time_wait_every(), Ok(3));
        assert_eq!(args(2.0, Some(2.0)).time_wait_every(), Ok(1));
        let e = args(1.0, Some(2.5))
            .time_wait_every()
            .expect_err("not a multiple");
        assert!(
            e.contains("not a multiple") && e.contains("--time-wait-interval 3"),
            "{e}"
        );
        let e = args(2.0, Some(1.0)).time_wait_every().expect_err("shorter");
        assert!(e.contains("--time-wait-interval 2"), "{e}");
    }

    #[test]
    fn port_lists_and_ranges() {
        assert_eq!(parse_ports("80,443"), Ok(vec![80, 443]));
        assert_eq!(parse_ports("8000-8002, 9"), Ok(vec![8000, 8001, 8002, 9]));
    }

    #[test]
    fn bad_ports_name_the_problem() {
        let e = parse_ports("70000").expect_err("out of range");
        assert!(e.contains("70000") && e.contains("1 to 65535"), "{e}");
        assert!(parse_ports("0").expect_err("zero").contains("out of range"));
        assert!(
            parse_ports("http")
                .expect_err("word")
                .contains("not a port")
        );
        assert!(
            parse_ports("9-3")
                .expect_err("reversed")
                .contains("reversed")
        );
        assert!(parse_ports("80,,81").expect_err("empty").contains("empty"));
        assert!(
            parse_ports("1-2000")
                .expect_err("many")
                .contains("too many")
        );
    }

    #[test]
    fn serve_flags_name_the_fix() {
        assert_eq!(parse_group_ports("443,80,80"), Ok(PortList(vec![80, 443])));
        let e = parse_group_ports("8000-8100").expect_err("too many");
        assert!(e.contains("at most 32"), "{e}");
        assert!(
            parse_group_ports("80,x")
                .expect_err("bad")
                .contains("not a port")
        );
        assert_eq!(parse_group_processes("5"), Ok(5));
        assert_eq!(parse_group_workloads("20"), Ok(20));
        assert!(
            parse_group_workloads("21")
                .expect_err("too many")
                .contains("from 0 to 20")
        );
        assert!(parse_group_processes("21").is_err());
        assert!(parse_group_processes("many").is_err());
        assert!(parse_listen("127.0.0.1:10089").is_ok());
        assert!(parse_listen("[::1]:0").is_ok());
        assert!(
            parse_listen("localhost")
                .expect_err("no port")
                .contains("e.g. 127.0.0.1:10089")
        );
    }

    #[test]
    fn serve_flags_parse_into_their_types() {
        let cli = Cli::try_parse_from([
            "tcptrace",
            "serve",
            "--group-ports",
            "443,80",
            "--group-processes",
            "3",
            "--listen",
            "127.0.0.1:0",
        ])
        .expect("valid flags");
        let Some(Command::Serve(a)) = cli.command else {
            panic!("not serve: {cli:?}");
        };
        assert_eq!(a.group_ports, Some(PortList(vec![80, 443])));
        assert_eq!(a.group_processes, 3);
        assert_eq!(a.listen.port(), 0);
        assert_eq!(a.close_wait_threshold, Duration::from_secs(60));
    }

    #[test]
    fn ring_sizes() {
        assert_eq!(parse_ring_kib("4096"), Ok(4096));
        assert_eq!(parse_ring_kib("4"), Ok(4));
        for bad in ["3", "1000", "0", "2097152", "big"] {
            assert!(parse_ring_kib(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn intervals_speeds_and_thresholds() {
        assert_eq!(parse_interval("0.1"), Ok(Duration::from_millis(100)));
        assert!(parse_interval("0.05").is_err());
        assert!(parse_interval("11").is_err());
        assert_eq!(parse_speed("max"), Ok(f64::INFINITY));
        assert_eq!(parse_speed("2.5"), Ok(2.5));
        assert!(parse_speed("0").expect_err("zero").contains("max"));
        assert_eq!(parse_threshold("0"), Ok(Duration::ZERO));
        assert!(parse_threshold("-1").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("-3").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
