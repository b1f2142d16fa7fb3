//! `tcptrace report FILE`: replays a recording through the same pipeline a live run uses and
//! prints the same summary (and, with `--svg`, the charts). Needs no root and no eBPF.

use std::{
    cell::RefCell,
    io::{self, Write as _},
    path::Path,
    rc::Rc,
};

use anyhow::{Context as _, Result};

use crate::{
    charts,
    cli::{Format, ReportArgs},
    counters::Counters,
    names::Names,
    pipeline::Pipeline,
    record::{self, Header, Replay},
    sink::{Shared, Sink},
    summary::Summary,
    timeline::Timeline,
};

/// Everything a report is made of.
pub struct Report {
    pub replay: Replay,
    /// How cgroups and namespaces were named (see `names`).
    pub names: Names,
    pub summary: Summary,
    pub pipeline: Pipeline,
    pub timeline: Option<Rc<RefCell<Timeline>>>,
}

/// Replays `path`; with `timeline`, also gathers what the charts need.
pub fn build(path: &Path, allow_truncated: bool, top: usize, timeline: bool) -> Result<Report> {
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    let timeline = timeline.then(|| {
        let t = Rc::new(RefCell::new(Timeline::default()));
        sinks.push(Box::new(Shared(Rc::clone(&t))));
        t
    });
    let mut pipeline = Pipeline::new(sinks);
    if timeline.is_some() {
        pipeline.keep_edge_dwells();
    }
    let pipeline_cell = RefCell::new(pipeline);
    let replay = record::replay_with(
        path,
        allow_truncated,
        |ev| pipeline_cell.borrow_mut().push_ordered(ev),
        |s| pipeline_cell.borrow_mut().push_sample(&s),
    )?;
    let mut pipeline = pipeline_cell.into_inner();
    pipeline.finish();
    pipeline.listener_scope(&replay.header.filter);
    if let Some((at, reason)) = replay.truncated.as_ref().and_then(|e| e.truncation()) {
        log::warn!(
            "{at}: the recording is truncated ({reason}); reporting on the {} events before it",
            replay.events
        );
    }
    let (counters, undecodable) = match &replay.trailer {
        Some(t) => (t.counters, t.undecodable),
        // The kernel's counters are written at the end; a truncated file never got them.
        None => (Counters::default(), 0),
    };
    let names = Names::for_recording(&replay.header.host, replay.header.clock.realtime_offset_ns);
    // The end record says when the run ended: CLOSE_WAIT ages run to it, as the live run's
    // exit summary's did (a truncated file: to its last event).
    let end_ns = replay.end_ns();
    let summary = Summary {
        undecodable,
        truncated: replay.trailer.is_none(),
        ..Summary::of(&pipeline, &counters, top, &names, end_ns)
    };
    Ok(Report {
        replay,
        names,
        summary,
        pipeline,
        timeline,
    })
}

/// A one-line description of a recording for chart titles.
pub fn describe(h: &Header, file: &Path) -> String {
    format!(
        "{} on {} (Linux {}), recorded {}",
        file.file_name().map_or_else(
            || file.display().to_string(),
            |n| n.to_string_lossy().into_owned()
        ),
        h.host,
        h.kernel,
        h.start
    )
}

pub fn run(args: &ReportArgs) -> Result<()> {
    let json = match args.format {
        Format::Text => false,
        Format::Json => true,
        Format::Csv => {
            return Err(crate::exit::usage(
                "--format csv is for the line stream (`tcptrace watch --format csv`); report \
                 prints a summary: use --format text or --format json, or turn the recording \
                 into CSV lines with `tcptrace export FILE -o OUT.csv`",
            ));
        }
    };
    let r = build(
        &args.file,
        args.allow_truncated,
        args.top,
        args.svg.is_some(),
    )?;
    let mut out = io::BufWriter::new(io::stdout().lock());
    let written = if json {
        r.summary.write_json(&mut out)
    } else {
        r.summary.write_text(&mut out)
    };
    match written.and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
        other => other.context("writing the summary")?,
    }
    if r.replay.truncated.is_some() && json {
        eprintln!(
            "tcptrace: note: the recording was truncated; lost and filtered counts are unknown \
             (0 in the JSON, which says \"truncated\": true)"
        );
    }
    if let (Some(dir), Some(t)) = (&args.svg, &r.timeline) {
        let title = describe(&r.replay.header, &args.file);
        charts::write_dir(
            charts::OutDir::create(dir)?,
            &r.summary,
            r.pipeline.aggregate(),
            &t.borrow(),
            &r.replay.header.clock,
            &title,
            &r.names,
        )?;
    }
    Ok(())
}
