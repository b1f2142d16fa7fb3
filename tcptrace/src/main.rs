//! tcptrace: TCP connection life cycles from eBPF.
//!
//! `main` only parses flags and picks a front end. Every live front end (`watch`, `record`,
//! `serve`, `top`) is a thin layer over [`live::LiveRun`]: it adds its sinks, runs the one
//! live loop, and prints or writes what the run left (the summary, a recording, charts).

mod aggregate;
mod binrec;
mod btf;
mod cgroups;
mod charts;
mod cli;
mod clock;
mod collect;
mod config;
mod counters;
mod decode;
mod detached;
mod docs;
mod exit;
mod export;
mod generate;
mod host;
mod intern;
mod listeners;
mod live;
mod names;
mod outfile;
mod owners;
mod pipeline;
mod privileges;
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
    cell::{Cell, RefCell},
    future::Future,
    io::{self, Write as _},
    path::Path,
    process::ExitCode,
    rc::Rc,
    time::Duration,
};

use anyhow::{Context as _, Result};
use clap::Parser as _;

use crate::{
    cli::{Cli, Command, Format, Per, RecordArgs, SummaryArgs, WatchArgs},
    config::Filter,
    detached::Detached,
    exit::Exit,
    live::{Finished, LiveRun},
    record::Recorder,
    sink::{PanicAfter, Shared, Watched},
    stream::{Stream, Style, Unit},
    summary::Summary,
    timeline::Timeline,
};

/// Large allocations (the tracker's tables, batch buffers) always get their own mapping, so
/// freeing or outgrowing them hands the memory back to the kernel. By default glibc raises
/// this threshold as large blocks are freed, after which the next tables land on the heap
/// and the ones they replace stay resident: after a burst of 162,000 sockets that was about
/// 11 MB of dead heap.
fn return_large_frees() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread
    // exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

fn main() -> ExitCode {
    return_large_frees();
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
    let done = |r: Result<()>| r.map(|()| Exit::Done);
    let result = match cli.command {
        Some(Command::Watch(args)) => run_watch(args),
        Some(Command::Record(args)) => run_record(args),
        Some(Command::Report(args)) => done(report::run(&args)),
        Some(Command::Top(args)) => top::run(args),
        Some(Command::Serve(args)) => serve::run(args),
        Some(Command::Export(args)) => done(export::run(&args)),
        Some(Command::GenerateRecording(args)) => done(generate::run(&args)),
        Some(Command::Completions(args)) => done(docs::completions(args.shell)),
        Some(Command::Man(args)) => done(docs::man(args.out.as_deref())),
        None => run_watch(cli.watch),
    };
    // A panic outside a sink unwinds to here (dropping, so detaching, the program on the
    // way) and exits with Rust's 101, which is `Exit::Internal`'s code.
    match result {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(e) => {
            eprintln!("tcptrace: error: {e:#}");
            ExitCode::from(exit::code_of(&e))
        }
    }
}

/// Runs a live front end on a single-threaded runtime (the pipeline is not `Send`, and one
/// thread keeps the tracer's own footprint small).
fn block_on<F: Future<Output = Result<Exit>>>(f: F) -> Result<Exit> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(f)
}

fn run_watch(mut args: WatchArgs) -> Result<Exit> {
    let filter = Filter::from_cli(&args.filter, &mut args.sample).map_err(exit::usage)?;
    block_on(watch(args, filter))
}

/// Drops the run's capabilities (every output must be open by now: see `privileges`), then
/// prints the line every live front end prints once tracing has started (tests wait for
/// it, and may check the capabilities right after it).
fn say_ready(live: &mut LiveRun, duration: Option<std::time::Duration>) {
    live.drop_privileges();
    eprintln!(
        "tcptrace: tracing TCP state transitions{}; Ctrl-C to stop",
        match duration {
            Some(d) => format!(" for {:.1}s", d.as_secs_f64()),
            None => String::new(),
        }
    );
}

/// Adds the hidden test hook's panicking sink when asked (`--test-panic-after-events`).
fn add_test_hooks(live: &mut LiveRun, args: &SummaryArgs) {
    if let Some(n) = args.test_panic_after_events {
        live.add_sink(Box::new(PanicAfter::new(n)));
    }
}

/// Says on stderr why a run's output stopped, unless it was a closed pipe (which the exit
/// code 141 says: the reader went away on purpose). `what` names the output.
fn say_sink_error(done: &Finished, what: &str) {
    if let Some(e) = done.sink_error() {
        match Exit::of_sink_error(e) {
            Exit::PipeClosed => {}
            Exit::Internal => eprintln!("tcptrace: error: {e}"),
            _ => eprintln!("tcptrace: error: {what} failed: {e}"),
        }
    }
}

/// `watch`: the line stream (if any) and, with `--svg`, the chart timeline.
async fn watch(args: WatchArgs, filter: Filter) -> Result<Exit> {
    let mut live = LiveRun::start(&filter, args.ring_kib)?;
    live.sample(&args.sample)?;
    add_test_hooks(&mut live, &args.summary);
    let clock = live.clock();
    let summary_out = SummaryOut::open(&args.summary)?;
    let svg = args
        .svg
        .as_deref()
        .map(charts::OutDir::create)
        .transpose()?;
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
    // A stdout whose reader can stop (a pipe, a terminal) gets the stream through a thread of
    // its own, so that a paused pager or a hung consumer costs lines, counted, never events
    // (see `detached`); a file is written on the loop's thread, as it always was.
    let mut stream = None;
    if let Some(unit) = unit {
        let names = live.names();
        // A file of its own for fd 1: written without Rust's line buffer, so that what the
        // end counts as not written is exact and no stderr line lands mid-line.
        if let Ok((file, meta)) = dup_with_metadata(std::os::fd::AsFd::as_fd(&io::stdout()))
            && can_stall(&meta)
        {
            let out = Detached::new(
                file,
                "tcptrace-stream",
                STREAM_QUEUE,
                detached::PIPE_PIECE,
                STREAM_DRAIN / 4,
            )
            .quiet(is_stderr(&meta));
            stream = Some(out.handle());
            let s = Stream::new(out, clock, style, unit).wide(args.wide);
            live.add_sink(Box::new(s.names(names)));
        } else {
            let out = io::BufWriter::with_capacity(64 * 1024, io::stdout());
            let s = Stream::new(out, clock, style, unit).wide(args.wide);
            live.add_sink(Box::new(s.names(names)));
        }
    }
    let timeline = svg.as_ref().map(|_| {
        let t = Rc::new(RefCell::new(Timeline::default()));
        live.add_sink(Box::new(Shared(Rc::clone(&t))));
        live.charts();
        t
    });
    say_ready(&mut live, args.duration);
    let done = live.run(args.duration).await?;
    // The stream's last lines before the summary, as far as stdout takes them.
    if let Some(s) = &stream {
        s.settle(STREAM_DRAIN);
    }
    let mut exit = Exit::of(&done);
    let summary = summary_out.write(&done, &mut exit);
    if let (Some(out), Some(t)) = (svg, &timeline) {
        let title = format!("live run on {}", host::host_name());
        let written = charts::write_dir(
            out,
            &summary,
            done.pipeline.aggregate(),
            &t.borrow(),
            &clock,
            &title,
            &done.names,
        );
        output_failed_at_exit(&mut exit, written);
    }
    say_sink_error(&done, "writing the stream");
    // Dropping the pipeline ends the stream's writer: what it could not write counts now.
    drop(done);
    if let Some(d) = stream.map(|s| s.dropped()).filter(|d| d.lines > 0) {
        eprintln!(
            "tcptrace: {} lines ({:.1} MiB) of the stream were not written: stdout did not keep \
             up (a paused pager, a slow pipe or terminal); the summary counts every event. \
             Write to a file (> FILE) or use --per connection for fewer lines",
            d.lines,
            d.bytes as f64 / f64::from(1 << 20)
        );
    }
    Ok(exit)
}

/// A file of its own for `fd` (a dup), with its metadata.
fn dup_with_metadata(
    fd: std::os::fd::BorrowedFd<'_>,
) -> io::Result<(std::fs::File, std::fs::Metadata)> {
    let file = std::fs::File::from(fd.try_clone_to_owned()?);
    let meta = file.metadata()?;
    Ok((file, meta))
}

/// Whether an output is a pipe, a terminal or a socket: a reader that may stop taking it for
/// good (a file is only ever slow for a while).
fn can_stall(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt as _;
    let t = m.file_type();
    t.is_fifo() || t.is_char_device() || t.is_socket()
}

/// Whether an output is stderr's own file (a terminal both go to), so that a warning on
/// stderr would wait for the very output that stopped.
fn is_stderr(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let id = |m: &std::fs::Metadata| (m.dev(), m.ino(), m.rdev());
    dup_with_metadata(std::os::fd::AsFd::as_fd(&io::stderr())).is_ok_and(|(_, e)| id(&e) == id(m))
}

/// Most bytes of the stream waiting for a pipe or a terminal before whole lines are dropped.
const STREAM_QUEUE: usize = 16 << 20;
/// How long the end of a run waits for stdout to take the stream's last lines (before the
/// summary; the writer's own wait at its end is a quarter of it, for what the summary's
/// lines pushed out).
const STREAM_DRAIN: Duration = Duration::from_secs(2);

/// `record`: `watch` without a stream, plus a recording sink.
fn run_record(mut args: RecordArgs) -> Result<Exit> {
    record::check_recording_name(&args.output).map_err(exit::usage)?;
    let filter = Filter::from_cli(&args.filter, &mut args.sample).map_err(exit::usage)?;
    block_on(record(args, filter))
}

async fn record(args: RecordArgs, filter: Filter) -> Result<Exit> {
    let mut live = LiveRun::start(&filter, args.ring_kib)?;
    live.sample(&args.sample)?;
    add_test_hooks(&mut live, &args.summary);
    live.recording();
    let path = &args.output;
    let clock = live.clock();
    let recorder = Recorder::create(path, &record::Header::now(clock, &filter))
        .with_context(|| format!("creating the recording {}", path.display()))?;
    let recorder = Rc::new(RefCell::new(recorder));
    let recorder_failed = Rc::new(Cell::new(false));
    live.add_sink(Box::new(Watched::new(
        Shared(Rc::clone(&recorder)),
        Rc::clone(&recorder_failed),
    )));
    let summary_out = SummaryOut::open(&args.summary)?;
    say_ready(&mut live, args.duration);
    let done = live.run(args.duration).await?;
    let mut exit = Exit::of(&done);
    // Finished whatever stopped the run (a signal, a failed or panicking sink), so the file
    // ends with its end record wherever that can still be written.
    let finished = finish_recording(
        &mut recorder.borrow_mut(),
        recorder_failed.get(),
        &done,
        &clock,
    );
    summary_out.write(&done, &mut exit);
    say_sink_error(&done, &format!("writing the recording {}", path.display()));
    output_failed_at_exit(
        &mut exit,
        finished.with_context(|| format!("finishing the recording {} failed", path.display())),
    );
    Ok(exit)
}

/// Says an output that failed at exit (the summary file, the charts, finishing the
/// recording) and makes the exit code say so; the caller goes on with the others.
pub fn output_failed_at_exit(exit: &mut Exit, result: Result<()>) {
    if let Err(e) = result {
        eprintln!("tcptrace: error: {e:#}");
        *exit = exit.with_output_failed();
    }
}

/// Ends the recording with its end record (the kernel's counters), unless the recorder
/// itself failed: a write error or a panic may have left a torn record at the file's end, and
/// an end record after it would make a corrupt file claim to be complete. The file is then
/// left as it is, which reads as truncated, and the error says so.
fn finish_recording(
    recorder: &mut Recorder,
    recorder_failed: bool,
    done: &Finished,
    clock: &crate::clock::Clock,
) -> Result<()> {
    if recorder_failed {
        anyhow::bail!(
            "the recorder failed while writing, so the file has no end record and may end in a \
             torn record: it reads as truncated (`tcptrace report --allow-truncated` reports on \
             what was written before)"
        );
    }
    // The end the exit summary's ages run to, so that `report` gives the same summary.
    Ok(recorder.finish_at(
        done.counters,
        done.pipeline.undecodable(),
        clock.unix_ns(done.end_ns),
    )?)
}

/// Where a live run's exit summary goes, as `--no-summary` and `--summary-json` say. The
/// JSON file is created before the run drops its capabilities (see `outfile`).
pub struct SummaryOut {
    args: SummaryArgs,
    json: Option<(std::path::PathBuf, std::fs::File)>,
}

impl SummaryOut {
    /// Creates the `--summary-json` file, if asked for.
    pub fn open(args: &SummaryArgs) -> Result<Self> {
        let json = match &args.summary_json {
            Some(path) => {
                let f = outfile::create(path)
                    .with_context(|| format!("creating --summary-json file {}", path.display()))?;
                Some((path.clone(), f))
            }
            None => None,
        };
        Ok(Self {
            args: args.clone(),
            json,
        })
    }

    /// Builds the exit summary of a live run, writes the JSON file and prints the text. A
    /// JSON file that cannot be written is said on stderr and turns `exit` to 74 (see
    /// [`output_failed_at_exit`]); the text summary is printed all the same.
    pub fn write(self, done: &Finished, exit: &mut Exit) -> Summary {
        let p = &done.pipeline;
        let summary = Summary::of(p, &done.counters, self.args.top, &done.names, done.end_ns);
        if let Some((path, f)) = self.json {
            output_failed_at_exit(exit, write_json(&path, f, &summary));
        }
        if !self.args.no_summary {
            let mut err = io::stderr().lock();
            let _ = summary.write_text(&mut err);
        }
        summary
    }
}

fn write_json(path: &Path, f: std::fs::File, summary: &Summary) -> Result<()> {
    let mut out = io::BufWriter::new(f);
    summary
        .write_json(&mut out)
        .and_then(|()| out.flush())
        .with_context(|| format!("writing --summary-json file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_recorder_gets_no_end_record_so_its_file_reads_as_truncated() {
        let done = Finished {
            stop: live::Stop::SinkFailed,
            pipeline: pipeline::Pipeline::new(Vec::new()),
            counters: counters::Counters::default(),
            names: names::Names::none(),
            end_ns: 0,
        };
        let clock = clock::Clock {
            realtime_offset_ns: 5,
            utc_offset_secs: 0,
        };
        let header = record::Header::now(clock, &Filter::default());
        for (failed, name) in [(false, "ok.tcpt"), (true, "failed.tcpt")] {
            let path =
                std::env::temp_dir().join(format!("tcptrace-main-{}-{name}", std::process::id()));
            let mut recorder = Recorder::create(&path, &header).expect("create");
            let finished = finish_recording(&mut recorder, failed, &done, &clock);
            drop(recorder);
            let strict = record::replay(&path, false, |_| {});
            let lenient = record::replay(&path, true, |_| {});
            let _ = std::fs::remove_file(&path);
            if failed {
                let e = finished.expect_err("a failed recorder is not finished");
                assert!(e.to_string().contains("--allow-truncated"), "{e}");
                let e = strict.expect_err("no end record: truncated");
                assert!(e.to_string().contains("truncated"), "{e}");
                let replay = lenient.expect("--allow-truncated reads it");
                assert!(replay.truncated.is_some());
            } else {
                finished.expect("finished");
                strict.expect("a finished recording reads as complete");
            }
        }
    }
}
