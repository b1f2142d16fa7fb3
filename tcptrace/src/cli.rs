//! Command-line definitions and the parsers of single flag values (ports, durations, sizes);
//! `config` turns the parsed flags into validated settings. Nothing here imports the rest
//! of the tool.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use tcptrace_common::MAX_FILTER_PORTS;

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
    /// Record the transition stream to a file for `report` (binary; a name ending in .jsonl
    /// or .jsonl.zst writes JSON Lines).
    Record(RecordArgs),
    /// Summary and charts from a recording; needs no root.
    Report(ReportArgs),
    /// Convert a recording between binary and JSON Lines (the output's name picks the format).
    Export(ExportArgs),
    /// Write a synthetic recording (for benchmarks and demos).
    #[command(hide = true)]
    GenerateRecording(GenerateArgs),
}

/// `tcptrace record`.
#[derive(Args, Debug, Clone)]
pub struct RecordArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// The recording to write: binary (e.g. run.tcpt), or JSON Lines when the name ends in
    /// .jsonl or .jsonl.zst (zstd-compressed).
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: PathBuf,
    /// Stop after this many seconds (e.g. 600 or 0.5).
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    pub duration: Option<Duration>,
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
    /// The converted recording: JSON Lines when the name ends in .jsonl or .jsonl.zst, else
    /// binary.
    #[arg(short = 'o', long, value_name = "OUT")]
    pub output: PathBuf,
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
    fn ring_sizes() {
        assert_eq!(parse_ring_kib("4096"), Ok(4096));
        assert_eq!(parse_ring_kib("4"), Ok(4));
        for bad in ["3", "1000", "0", "2097152", "big"] {
            assert!(parse_ring_kib(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("-3").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
