//! The one live loop every live front end shares (`watch`, `record`, `top`, `serve`).
//!
//! [`LiveRun::start`] does everything that needs the kernel (checks, load, attach, owners of
//! sockets that predate the run) and installs the signal handlers; [`LiveRun::run`] then
//! feeds the ring buffer through the [`Pipeline`] until a signal, the deadline, a failed
//! sink or the front end itself ([`Stopper`]) ends it, warns about lost events while it runs,
//! and, when asked, publishes a [`Snapshot`] of the results once per interval for a front end
//! to draw or serve. It never prints anything but warnings: what a run shows is the front
//! end's business, built from the same [`Snapshot`]/[`Summary`] the exit summary uses.

use std::{io, rc::Rc, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::{Notify, watch},
};

use crate::{
    clock::Clock,
    collect::Collector,
    config::Filter,
    counters::{Counters, LOSS_EXPLAINED},
    decode,
    pipeline::Pipeline,
    sink::Sink,
    summary::{Snapshot, SnapshotOptions},
};

/// How long the ring buffer may stay silent before held events are released; also the
/// granularity of snapshots and of flushing the sinks' writers.
pub const TICK: Duration = Duration::from_millis(100);
/// How often lost events are warned about while running, in ticks.
const LOSS_WARN_TICKS: u64 = 10;

/// Why a live run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
    /// `--duration` elapsed.
    Deadline,
    /// The front end asked (e.g. `q` in `top`).
    Requested,
    /// A sink failed (e.g. stdout closed by `| head`); see [`Finished::sink_error`].
    SinkFailed,
}

/// Lets a front end end the run from another task.
#[derive(Clone, Default)]
pub struct Stopper(Rc<Notify>);

impl Stopper {
    #[expect(dead_code, reason = "the dashboard's quit key, next")]
    pub fn stop(&self) {
        // A stored permit: the run ends even if it is not waiting at this moment.
        self.0.notify_one();
    }
}

/// Snapshot publication settings.
struct Publish {
    every: Duration,
    opts: SnapshotOptions,
    tx: watch::Sender<Arc<Snapshot>>,
}

/// A loaded and attached program with its pipeline, ready to run.
pub struct LiveRun {
    collector: Collector,
    clock: Clock,
    sinks: Vec<Box<dyn Sink>>,
    sigint: Signal,
    sigterm: Signal,
    stopper: Stopper,
    publish: Option<Publish>,
}

/// What a finished run leaves for its front end.
pub struct Finished {
    #[expect(dead_code, reason = "exit codes and the dashboard, next")]
    pub stop: Stop,
    /// The pipeline after the end of input: aggregates, tracker, counts.
    pub pipeline: Pipeline,
    /// The kernel's counters at the end.
    pub counters: Counters,
}

impl Finished {
    /// The error that stopped a sink, if one did.
    pub fn sink_error(&self) -> Option<&io::Error> {
        self.pipeline.sink_error()
    }
}

impl LiveRun {
    /// Runs the start-up checks, loads and attaches the program, and installs the signal
    /// handlers (before any front end says it is ready: whoever waits for that may signal
    /// right after it).
    pub fn start(filter: &Filter, ring_kib: Option<u32>) -> Result<Self> {
        let collector = Collector::start(filter, ring_kib)?;
        for reason in &collector.skipped {
            log::warn!("{reason}; the facts it gives are not collected");
        }
        let clock = Clock::measure();
        let sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        Ok(Self {
            collector,
            clock,
            sinks: Vec::new(),
            sigint,
            sigterm,
            stopper: Stopper::default(),
            publish: None,
        })
    }

    /// Converts the events' monotonic timestamps to wall-clock time.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Adds a sink; sinks see events and facts in the order they were added.
    pub fn add_sink(&mut self, sink: Box<dyn Sink>) {
        self.sinks.push(sink);
    }

    /// A handle that ends the run when called.
    #[expect(dead_code, reason = "the dashboard, next")]
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    #[expect(dead_code, reason = "the dashboard and serve, next")]
    /// Publishes a snapshot every `every`, rounded up to whole ticks, starting with one at
    /// the first tick, and a last one after the end of input.
    pub fn publish(
        &mut self,
        every: Duration,
        opts: SnapshotOptions,
    ) -> watch::Receiver<Arc<Snapshot>> {
        let (tx, rx) = watch::channel(Arc::new(Snapshot::empty(&opts)));
        self.publish = Some(Publish { every, opts, tx });
        rx
    }

    /// Runs until stopped, then drains what the kernel still holds and ends the input.
    pub async fn run(mut self, duration: Option<Duration>) -> Result<Finished> {
        let mut pipeline = Pipeline::new(std::mem::take(&mut self.sinks));
        let owner = |h: &crate::procfs::Holder, source| decode::Owner {
            tgid: h.pid,
            pid: h.pid,
            comm: decode::Comm::from_str_lossy(&h.comm),
            source,
        };
        pipeline.set_prior_owners(
            self.collector
                .existing_socks
                .drain(..)
                .map(|(sock, h)| (sock, owner(&h, decode::OwnerSource::Current))),
            self.collector
                .existing
                .drain(..)
                .map(|(l, r, h)| (l, r, owner(&h, decode::OwnerSource::Proc))),
        );
        let collector = &mut self.collector;
        let started = tokio::time::Instant::now();
        let deadline = duration.map(|d| started + d);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut read_since_tick = 0usize;
        let mut ticks = 0u64;
        let mut lost_reported = 0u64;
        let mut next_publish = started;

        let stop = loop {
            tokio::select! {
                biased;
                _ = self.sigint.recv() => break Stop::Interrupt,
                _ = self.sigterm.recv() => break Stop::Terminate,
                () = self.stopper.0.notified() => break Stop::Requested,
                () = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => break Stop::Deadline,
                now = tick.tick() => {
                    if read_since_tick == 0 {
                        pipeline.flush();
                    } else {
                        pipeline.flush_sinks();
                    }
                    read_since_tick = 0;
                    ticks += 1;
                    // Loss is said when it happens, not only in the summary.
                    if ticks.is_multiple_of(LOSS_WARN_TICKS)
                        && let Ok(c) = collector.counters()
                        && c.all_lost() > lost_reported
                    {
                        log::warn!(
                            "{} events lost: {LOSS_EXPLAINED}",
                            c.all_lost() - lost_reported
                        );
                        lost_reported = c.all_lost();
                    }
                    if let Some(p) = &self.publish
                        && now >= next_publish
                    {
                        next_publish = now + p.every;
                        let counters = collector.counters().unwrap_or_default();
                        let snap = Snapshot::build(&pipeline, &counters, &p.opts, now - started);
                        p.tx.send_replace(Arc::new(snap));
                    }
                }
                n = collector.read_batch(|bytes| pipeline.push_bytes(bytes)) => {
                    read_since_tick += n?;
                }
            }
            if pipeline.sink_error().is_some() {
                break Stop::SinkFailed;
            }
        };

        // Whatever the kernel wrote before we stopped is still ours to count.
        collector.drain(|bytes| pipeline.push_bytes(bytes));
        pipeline.finish();
        let counters = collector.counters()?;
        if let Some(p) = &self.publish {
            let snap = Snapshot::build(&pipeline, &counters, &p.opts, started.elapsed());
            p.tx.send_replace(Arc::new(snap));
        }
        Ok(Finished {
            stop,
            pipeline,
            counters,
        })
    }
}
