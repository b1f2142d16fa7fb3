//! `tcptrace export FILE -o OUT`: converts a recording between the binary format and JSON
//! Lines (either direction, compressed or not), event for event, with the same header and end
//! counters, so that `jq` and log shippers can read what `record` wrote in binary, and old
//! JSON Lines recordings can be made compact. The output's format follows its name, as for
//! `record`; the input's is told by its content.

use anyhow::{Context as _, Result};

use crate::{
    cli::ExportArgs,
    record::{self, Recorder},
    sink::Sink as _,
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
    let mut rec =
        Recorder::create(out, &header).with_context(|| format!("creating {}", out.display()))?;
    let mut write_error = None;
    let replay = record::replay(&args.file, args.allow_truncated, |ev| {
        if write_error.is_none()
            && let Err(e) = rec.write_event(&ev)
        {
            write_error = Some(e);
        }
    })?;
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
