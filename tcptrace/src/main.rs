//! tcptrace: TCP connection life cycles from eBPF.
//!
//! `main` only wires the pipeline: parse and validate flags, start the collector, feed its
//! records through [`pipeline::Pipeline`] and print the summary when the run ends.

mod aggregate;
mod cli;
mod clock;
mod collect;
mod config;
mod decode;
mod pipeline;
mod reorder;
mod stream;
mod summary;
mod track;

use std::{
    io::{self, Write as _},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, Result};
use clap::Parser as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::{Cli, Command, Format, Per, WatchArgs},
    clock::Clock,
    collect::Collector,
    config::Filter,
    pipeline::Pipeline,
    stream::{Sink, Stream, Style, Unit},
    summary::Summary,
};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format(|buf, record| {
            writeln!(
                buf,
                "tcptrace: {}: {}",
                record.level().as_str().to_lowercase(),
                record.args()
            )
        })
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Watch(args)) => run_watch(args),
        None => run_watch(cli.watch),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcptrace: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_watch(args: WatchArgs) -> Result<()> {
    let filter = Filter::from_args(&args.filter).map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(watch(args, filter))
}

/// How long the ring buffer may stay silent before held events are released.
const QUIET_TICK: Duration = Duration::from_millis(100);

async fn watch(args: WatchArgs, filter: Filter) -> Result<()> {
    let mut collector = Collector::start(&filter)?;
    for reason in &collector.skipped {
        log::warn!("{reason}; the facts it gives are not collected");
    }
    let clock = Clock::measure();
    eprintln!(
        "tcptrace: tracing TCP state transitions{}; Ctrl-C to stop",
        match args.duration {
            Some(d) => format!(" for {:.1}s", d.as_secs_f64()),
            None => String::new(),
        }
    );

    let style = match args.format {
        Format::Text => Style::Text,
        Format::Json => Style::Json,
    };
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    let unit = match args.per {
        Per::Transition => Some(Unit::Transition),
        Per::Connection => Some(Unit::Connection),
        Per::None => None,
    };
    if let Some(unit) = unit {
        let out = io::BufWriter::with_capacity(64 * 1024, io::stdout());
        sinks.push(Box::new(Stream::new(out, clock, style, unit)));
    }
    let mut pipeline = Pipeline::new(sinks);

    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(QUIET_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut read_since_tick = 0usize;

    loop {
        tokio::select! {
            biased;
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => break,
            _ = tick.tick() => {
                if read_since_tick == 0 {
                    pipeline.flush();
                }
                read_since_tick = 0;
            }
            n = collector.read_batch(|bytes| pipeline.push_bytes(bytes)) => {
                read_since_tick += n?;
            }
        }
        if pipeline.sink_error().is_some() {
            break;
        }
    }

    // Whatever the kernel wrote before we stopped is still ours to count.
    collector.drain(|bytes| pipeline.push_bytes(bytes));
    pipeline.flush();
    let counters = collector.counters()?;
    if let Some(e) = pipeline.sink_error()
        && e.kind() != io::ErrorKind::BrokenPipe
    {
        return Err(anyhow::anyhow!("writing the stream failed: {e}"));
    }

    let summary = Summary::build(
        pipeline.aggregate(),
        &counters,
        pipeline.undecodable(),
        pipeline.tracker(),
        args.top,
    );
    if let Some(path) = &args.summary_json {
        let f = std::fs::File::create(path)
            .with_context(|| format!("creating --summary-json file {}", path.display()))?;
        summary.write_json(io::BufWriter::new(f))?;
    }
    if !args.no_summary {
        let mut err = io::stderr().lock();
        let _ = summary.write_text(&mut err);
    }
    Ok(())
}
