//! `tcptrace export FILE -o OUT`: converts a recording between the binary format and JSON
//! Lines (either direction, compressed or not), event for event, with the same header and end
//! counters, so that `jq` and log shippers can read what `record` wrote in binary, and old
//! JSON Lines recordings can be made compact. The output's format follows its name, as for
//! `record`; the input's is told by its content. A `.csv` output is not a recording but the
//! CSV line stream `watch --format csv` would have printed, made by replaying the recording
//! through the same pipeline and stream sink (naming cgroups and namespaces only on the host
//! and boot that recorded it).

use std::io;

use anyhow::{Context as _, Result};

use crate::{
    cli::{ExportArgs, Per},
    names::Names,
    pipeline::Pipeline,
    record::{self, Recorder},
    sink::Sink as _,
    stream::{Stream, Style, Unit},
};

pub fn run(args: &ExportArgs) -> Result<()> {
    let out = &args.output;
    if let (Ok(a), Ok(b)) = (args.file.canonicalize(), out.canonicalize())
        && a == b
    {
        anyhow::bail!(
            "{}: export would overwrite its own input; give -o another file",
            out.display()
        );
    }
    let header = record::read_header(&args.file)?;
    if out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
    {
        return csv(args, &header);
    }
    record::check_recording_name(out).map_err(crate::exit::usage)?;
    let rec =
        Recorder::create(out, &header).with_context(|| format!("creating {}", out.display()))?;
    // Events and samples go to the one writer in file order.
    let w = std::cell::RefCell::new((rec, None::<io::Error>));
    let replay = record::replay_with(
        &args.file,
        args.allow_truncated,
        |ev| {
            let (rec, err) = &mut *w.borrow_mut();
            if err.is_none()
                && let Err(e) = rec.write_event(&ev)
            {
                *err = Some(e);
            }
        },
        |s| {
            let (rec, err) = &mut *w.borrow_mut();
            if err.is_none()
                && let Err(e) = rec.write_sample(&s)
            {
                *err = Some(e);
            }
        },
    )?;
    let (mut rec, write_error) = w.into_inner();
    if let Some(e) = write_error {
        return Err(e).with_context(|| format!("writing {}", out.display()));
    }
    match &replay.trailer {
        Some(t) => rec.finish_at(t.counters, t.undecodable, t.end_unix_ns),
        // A truncated input gives a truncated output: no invented end counters.
        None => rec.flush(),
    }
    .with_context(|| format!("finishing {}", out.display()))?;
    if let Some((at, reason)) = replay.truncated.as_ref().and_then(|e| e.truncation()) {
        eprintln!(
            "tcptrace: {at}: the recording is truncated ({reason}); exported the {} events \
             before it without an end record (report it with --allow-truncated)",
            replay.events
        );
    }
    Ok(())
}

/// Replays the recording through the pipeline into a CSV stream sink.
/// Cgroups and namespaces are named as on the recording host when this is it, in the same
/// boot (see `names`), else left as ids.
fn csv(args: &ExportArgs, header: &record::Header) -> Result<()> {
    let out = &args.output;
    let unit = match args.per {
        Per::Transition => Unit::Transition,
        Per::Connection => Unit::Connection,
        Per::None => {
            return Err(crate::exit::usage(
                "--per none writes no lines: use transition or connection",
            ));
        }
    };
    let file =
        crate::outfile::create(out).with_context(|| format!("creating {}", out.display()))?;
    let names = Names::for_recording(&header.host, header.clock.realtime_offset_ns);
    let stream = Stream::new(io::BufWriter::new(file), header.clock, Style::Csv, unit).names(names);
    let mut pipeline = Pipeline::new(vec![Box::new(stream)]);
    let replay = record::replay(&args.file, args.allow_truncated, |ev| {
        pipeline.push_ordered(ev);
    })?;
    pipeline.finish();
    if let Some(e) = pipeline.sink_error() {
        anyhow::bail!("writing {} failed: {e}", out.display());
    }
    if let Some((at, reason)) = replay.truncated.as_ref().and_then(|e| e.truncation()) {
        eprintln!(
            "tcptrace: {at}: the recording is truncated ({reason}); wrote the lines of the {} \
             events before it",
            replay.events
        );
    }
    Ok(())
}
