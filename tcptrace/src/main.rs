//! tcptrace: TCP connection life cycles from eBPF.
//!
//! `main` only parses flags and picks a front end. Every live front end (`watch`, `record`,
//! `serve`, `top`) is a thin layer over [`live::LiveRun`]: it adds its sinks, runs the one
//! live loop, and prints or writes what the run left (the summary, a recording, charts).

mod aggregate;
mod binrec;
mod btf;
mod charts;
mod cli;
mod clock;
mod collect;
mod config;
mod counters;
mod decode;
mod docs;
mod export;
mod generate;
mod host;
mod listeners;
mod live;
mod owners;
mod pipeline;
mod procfs;
mod recent;
mod record;
mod reorder;
mod report;
mod serve;
mod sink;
mod sockdiag;
mod stream;
mod summary;
mod timeline;
mod top;
mod track;

use std::{
    cell::RefCell,
    future::Future,
    io::{self, Write as _},
    path::Path,
    process::ExitCode,
    rc::Rc,
};

use anyhow::{Context as _, Result};
use clap::Parser as _;

use crate::{
    cli::{Cli, Command, Format, Per, RecordArgs, SummaryArgs, WatchArgs},
    config::Filter,
    live::{Finished, LiveRun},
    record::Recorder,
    sink::Shared,
    stream::{Stream, Style, Unit},
    summary::Summary,
    timeline::Timeline,
};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format(|buf, record| {
            let line = format!(
                "tcptrace: {}: {}",
                record.level().as_str().to_lowercase(),
                record.args()
            );
            // While the dashboard owns the terminal, messages wait until it is restored.
            if top::hold_message(&line) {
                return Ok(());
            }
            writeln!(buf, "{line}")
        })
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Watch(args)) => run_watch(args),
        Some(Command::Record(args)) => run_record(args),
        Some(Command::Report(args)) => report::run(&args),
        Some(Command::Top(args)) => top::run(args),
        Some(Command::Serve(args)) => serve::run(args),
        Some(Command::Export(args)) => export::run(&args),
        Some(Command::GenerateRecording(args)) => generate::run(&args),
        Some(Command::Completions(args)) => docs::completions(args.shell),
        Some(Command::Man(args)) => docs::man(args.out.as_deref()),
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

/// Runs a live front end on a single-threaded runtime (the pipeline is not `Send`, and one
/// thread keeps the tracer's own footprint small).
fn block_on<F: Future<Output = Result<()>>>(f: F) -> Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(f)
}

fn run_watch(args: WatchArgs) -> Result<()> {
    let filter = Filter::from_args(&args.filter).map_err(anyhow::Error::msg)?;
    block_on(watch(args, filter))
}

/// The line every live front end prints once tracing has started (tests wait for it).
fn say_ready(duration: Option<std::time::Duration>) {
    eprintln!(
        "tcptrace: tracing TCP state transitions{}; Ctrl-C to stop",
        match duration {
            Some(d) => format!(" for {:.1}s", d.as_secs_f64()),
            None => String::new(),
        }
    );
}

/// `watch`: the line stream (if any) and, with `--svg`, the chart timeline.
async fn watch(args: WatchArgs, filter: Filter) -> Result<()> {
    let mut live = LiveRun::start(&filter, args.ring_kib)?;
    live.sample(&args.sample);
    let clock = live.clock();
    say_ready(args.duration);
    let style = match args.format {
        Format::Text => Style::Text,
        Format::Json => Style::Json,
        Format::Csv => Style::Csv,
    };
    let unit = match args.per {
        Per::Transition => Some(Unit::Transition),
        Per::Connection => Some(Unit::Connection),
        Per::None => None,
    };
    if let Some(unit) = unit {
        let out = io::BufWriter::with_capacity(64 * 1024, io::stdout());
        live.add_sink(Box::new(
            Stream::new(out, clock, style, unit).wide(args.wide),
        ));
    }
    let timeline = args.svg.as_ref().map(|_| {
        let t = Rc::new(RefCell::new(Timeline::default()));
        live.add_sink(Box::new(Shared(Rc::clone(&t))));
        t
    });
    let done = live.run(args.duration).await?;
    if let Some(e) = done.sink_error()
        && e.kind() != io::ErrorKind::BrokenPipe
    {
        anyhow::bail!("writing the stream failed: {e}");
    }
    let summary = end_summary(&done, &args.summary)?;
    if let (Some(dir), Some(t)) = (&args.svg, &timeline) {
        let title = format!("live run on {}", host::host_name());
        charts::write_dir(
            dir,
            &summary,
            done.pipeline.aggregate(),
            &t.borrow(),
            &clock,
            &title,
        )?;
    }
    Ok(())
}

/// `record`: `watch` without a stream, plus a recording sink.
fn run_record(args: RecordArgs) -> Result<()> {
    let filter = Filter::from_args(&args.filter).map_err(anyhow::Error::msg)?;
    block_on(record(args, filter))
}

async fn record(args: RecordArgs, filter: Filter) -> Result<()> {
    let mut live = LiveRun::start(&filter, None)?;
    live.sample(&args.sample);
    let path = &args.output;
    let recorder = Recorder::create(path, &record::Header::now(live.clock(), &filter))
        .with_context(|| format!("creating the recording {}", path.display()))?;
    let recorder = Rc::new(RefCell::new(recorder));
    live.add_sink(Box::new(Shared(Rc::clone(&recorder))));
    say_ready(args.duration);
    let done = live.run(args.duration).await?;
    if let Some(e) = done.sink_error() {
        anyhow::bail!("writing the recording {} failed: {e}", path.display());
    }
    recorder
        .borrow_mut()
        .finish(done.counters, done.pipeline.undecodable())
        .with_context(|| format!("finishing the recording {}", path.display()))?;
    end_summary(&done, &args.summary)?;
    Ok(())
}

/// Builds the exit summary of a live run and prints or writes it as `--no-summary` and
/// `--summary-json` say.
fn end_summary(done: &Finished, args: &SummaryArgs) -> Result<Summary> {
    let p = &done.pipeline;
    let summary = Summary::build(
        p.aggregate(),
        &done.counters,
        p.undecodable(),
        p.tracker(),
        args.top,
    );
    if let Some(path) = &args.summary_json {
        write_json_file(path, &summary)?;
    }
    if !args.no_summary {
        let mut err = io::stderr().lock();
        let _ = summary.write_text(&mut err);
    }
    Ok(summary)
}

fn write_json_file(path: &Path, summary: &Summary) -> Result<()> {
    let f = std::fs::File::create(path)
        .with_context(|| format!("creating --summary-json file {}", path.display()))?;
    summary.write_json(io::BufWriter::new(f))?;
    Ok(())
}
