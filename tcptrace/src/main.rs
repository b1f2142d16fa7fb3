//! tcptrace: TCP connection life cycles from eBPF.
//!
//! `main` only wires the pipeline: parse and validate flags, start the collector, feed its
//! records through [`pipeline::Pipeline`] and print the summary when the run ends.

mod aggregate;
mod btf;
mod charts;
mod cli;
mod clock;
mod collect;
mod config;
mod decode;
mod generate;
mod pipeline;
mod procfs;
mod record;
mod reorder;
mod report;
mod stream;
mod summary;
mod timeline;
mod track;

use std::{
    cell::RefCell,
    io::{self, Write as _},
    path::PathBuf,
    process::ExitCode,
    rc::Rc,
    time::Duration,
};

use anyhow::{Context as _, Result};
use clap::Parser as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::{Cli, Command, Format, Per, RecordArgs, WatchArgs},
    clock::Clock,
    collect::Collector,
    config::Filter,
    pipeline::Pipeline,
    record::{Recorder, Shared},
    stream::{Sink, Stream, Style, Unit},
    summary::Summary,
    timeline::Timeline,
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
        Some(Command::Record(args)) => run_record(args),
        Some(Command::Report(args)) => report::run(&args),
        Some(Command::GenerateRecording(args)) => generate::run(&args),
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
    rt.block_on(watch(args, filter, None))
}

/// `record` is `watch` without a stream, plus a recording sink.
fn run_record(args: RecordArgs) -> Result<()> {
    let output = args.output;
    let watch_args = WatchArgs {
        filter: args.filter,
        duration: args.duration,
        per: Per::None,
        summary: args.summary,
        ..WatchArgs::default()
    };
    let filter = Filter::from_args(&watch_args.filter).map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(watch(watch_args, filter, Some(output)))
}

/// How long the ring buffer may stay silent before held events are released.
const QUIET_TICK: Duration = Duration::from_millis(100);

async fn watch(args: WatchArgs, filter: Filter, record: Option<PathBuf>) -> Result<()> {
    let mut collector = Collector::start(&filter, args.ring_kib)?;
    for reason in &collector.skipped {
        log::warn!("{reason}; the facts it gives are not collected");
    }
    let clock = Clock::measure();
    // Handlers first: whoever waits for the ready line may signal us right after it.
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
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
    let recorder = match &record {
        Some(path) => {
            let r = Recorder::create(path, &record::Header::now(clock, &filter))
                .with_context(|| format!("creating the recording {}", path.display()))?;
            let r = Rc::new(RefCell::new(r));
            sinks.push(Box::new(Shared(Rc::clone(&r))));
            Some(r)
        }
        None => None,
    };
    let timeline = args.svg.as_ref().map(|_| {
        let t = Rc::new(RefCell::new(Timeline::default()));
        sinks.push(Box::new(Shared(Rc::clone(&t))));
        t
    });
    let mut pipeline = Pipeline::new(sinks);
    pipeline.set_prior_owners(collector.existing.drain(..).map(|(l, r, h)| {
        let owner = decode::Owner {
            tgid: h.pid,
            pid: h.pid,
            comm: decode::Comm::from_str_lossy(&h.comm),
            source: decode::OwnerSource::Proc,
        };
        (l, r, owner)
    }));

    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(QUIET_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut read_since_tick = 0usize;
    let mut ticks = 0u64;
    let mut lost_reported = 0u64;

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
                } else {
                    pipeline.flush_sinks();
                }
                read_since_tick = 0;
                ticks += 1;
                // Loss is said when it happens, not only in the summary.
                if ticks.is_multiple_of(10)
                    && let Ok(c) = collector.counters()
                    && c.all_lost() > lost_reported
                {
                    log::warn!(
                        "{} events lost (ring buffer full: this process fell behind; or skipped \
                         by the kernel while another BPF program ran); figures miss them. A \
                         larger --ring-kib, a narrower filter or --per none helps",
                        c.all_lost() - lost_reported
                    );
                    lost_reported = c.all_lost();
                }
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
    pipeline.finish();
    let counters = collector.counters()?;
    if let Some(e) = pipeline.sink_error()
        && e.kind() != io::ErrorKind::BrokenPipe
    {
        return Err(anyhow::anyhow!(
            "writing the {} failed: {e}",
            if record.is_some() {
                "recording"
            } else {
                "stream"
            }
        ));
    }
    if let Some(r) = &recorder {
        let mut r = r.borrow_mut();
        r.finish(counters, pipeline.undecodable())
            .with_context(|| format!("finishing the recording {}", r.path().display()))?;
    }

    let summary = Summary::build(
        pipeline.aggregate(),
        &counters,
        pipeline.undecodable(),
        pipeline.tracker(),
        args.summary.top,
    );
    if let Some(path) = &args.summary.summary_json {
        let f = std::fs::File::create(path)
            .with_context(|| format!("creating --summary-json file {}", path.display()))?;
        summary.write_json(io::BufWriter::new(f))?;
    }
    if !args.summary.no_summary {
        let mut err = io::stderr().lock();
        let _ = summary.write_text(&mut err);
    }
    if let (Some(dir), Some(t)) = (&args.svg, &timeline) {
        let title = format!("live run on {}", record::host_name());
        charts::write_dir(
            dir,
            &summary,
            pipeline.aggregate(),
            &t.borrow(),
            &clock,
            &title,
        )?;
    }
    Ok(())
}
