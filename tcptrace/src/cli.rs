//! Command-line definitions only; `config` turns them into validated settings.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::parse_ports;

/// Makes TCP connection life cycles visible: every state transition, handshake latency
/// (client and server side), teardown phases, resets and CLOSE_WAIT leaks, from eBPF.
///
/// Without a subcommand, tcptrace runs `watch`.
#[derive(Parser, Debug)]
#[command(name = "tcptrace", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub watch: WatchArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Stream TCP state transitions (or finished connections) live; summary on exit.
    Watch(WatchArgs),
    /// Record the transition stream to a file (JSON Lines; .zst compresses) for `report`.
    Record(RecordArgs),
    /// Summary and charts from a recording; needs no root.
    Report(ReportArgs),
    /// Write a synthetic recording (for benchmarks and demos).
    #[command(hide = true)]
    GenerateRecording(GenerateArgs),
}

/// `tcptrace record`.
#[derive(Args, Debug, Clone)]
pub struct RecordArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// The recording to write; a name ending in .zst is compressed with zstd.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: PathBuf,
    /// Stop after this many seconds (e.g. 600 or 0.5).
    #[arg(long, value_name = "SECS", value_parser = crate::config::parse_duration)]
    pub duration: Option<std::time::Duration>,
    #[command(flatten)]
    pub summary: SummaryArgs,
}

/// The exit summary of a live run (`watch` and `record`).
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
}

impl Default for SummaryArgs {
    fn default() -> Self {
        Self {
            top: 5,
            no_summary: false,
            summary_json: None,
        }
    }
}

/// `tcptrace report`.
#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// A recording made by `tcptrace record` (.jsonl or .jsonl.zst).
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

/// `tcptrace generate-recording` (hidden).
#[derive(Args, Debug, Clone)]
pub struct GenerateArgs {
    /// About this many state transitions (whole connections are generated).
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    pub transitions: u64,
    /// The recording to write (.zst compresses).
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
    #[arg(long, value_name = "PORTS", value_parser = parse_ports)]
    pub lport: Vec<Vec<u16>>,
    /// Only sockets whose remote port is in this list.
    #[arg(long, value_name = "PORTS", value_parser = parse_ports)]
    pub rport: Vec<Vec<u16>>,
    /// Only sockets with the local or the remote port in this list.
    #[arg(long, value_name = "PORTS", value_parser = parse_ports)]
    pub port: Vec<Vec<u16>>,
}

/// Output format of the stream.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Text,
    /// JSON Lines: one object per line.
    Json,
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
    /// Ring buffer size in KiB (a power of two from 4 to 1048576; default 4096). A larger
    /// ring rides out longer stalls of this process before the kernel has to drop events.
    #[arg(long, value_name = "KIB", value_parser = crate::config::parse_ring_kib)]
    pub ring_kib: Option<u32>,
    /// Stop after this many seconds (e.g. 10 or 0.5).
    #[arg(long, value_name = "SECS", value_parser = crate::config::parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// Output format of the stream.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// One line per transition, per finished connection, or none.
    #[arg(long, value_enum, default_value_t = Per::Transition)]
    pub per: Per,
    #[command(flatten)]
    pub summary: SummaryArgs,
    /// At exit, write the charts (SVG) and an index.html showing them into this directory.
    #[arg(long, value_name = "DIR")]
    pub svg: Option<PathBuf>,
}
