//! The one live loop every live front end shares (`watch`, `record`, `top`, `serve`).
//!
//! [`LiveRun::start`] does everything that needs the kernel (checks, load, attach, owners of
//! sockets that predate the run) and installs the signal handlers; once the front end has
//! opened its outputs, [`LiveRun::drop_privileges`] gives up every capability (see
//! `privileges`); [`LiveRun::run`] then
//! feeds the events through the [`Pipeline`] until a signal, the deadline, a failed sink, the
//! end of the input or the front end itself ([`Stopper`]) ends it, warns about lost events
//! while it runs, and, when asked, publishes a [`Snapshot`] of the results once per interval
//! for a front end to draw or serve. It never prints anything but warnings: what a run shows
//! is the front end's business, built from the same [`Snapshot`]/[`Summary`] the exit
//! summary uses.
//!
//! The source of events is pluggable: the kernel ([`Collector`]), or a recording played at N
//! times real time by event time ([`LiveRun::replay`], no root needed), so `top --replay`
//! runs the same loop, ticks and snapshots as a live `top`. A recording holds the order the
//! live reorder stage released, so replayed events go in with `Pipeline::push_ordered`.

use std::{
    cell::{Cell, RefCell},
    collections::VecDeque,
    io,
    path::{Path, PathBuf},
    rc::Rc,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::{Notify, mpsc, watch},
    time::Instant,
};

use crate::{
    cli::SampleArgs,
    clock::{self, Clock},
    collect::{Collector, Delivery},
    config::Filter,
    counters::{Counters, LOSS_EXPLAINED},
    decode::{self, Event, TcpState},
    listeners::Sample,
    names::Names,
    pipeline::Pipeline,
    recent::Recent,
    record::{self, Replay},
    sink::{Shared, Sink},
    sockdiag::{Sampler, SamplerConfig},
    summary::{Snapshot, SnapshotOptions},
};

/// The granularity of snapshots and of flushing the sinks' writers.
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
    /// SIGHUP: the terminal or SSH session went away; flushed and summarised like SIGTERM.
    Hangup,
    /// `--duration` elapsed.
    Deadline,
    /// The front end asked (e.g. `q` in `top`).
    Requested,
    /// A sink failed (e.g. stdout closed by `| head`) or panicked (`sink::guarded`); see
    /// [`Finished::sink_error`] and `exit::Exit::of`.
    SinkFailed,
    /// The input ended (a replayed recording played to its end).
    End,
}

/// Lets a front end end the run from another task.
#[derive(Clone, Default)]
pub struct Stopper(Rc<Notify>);

impl Stopper {
    pub fn stop(&self) {
        // A stored permit: the run ends even if it is not waiting at this moment.
        self.0.notify_one();
    }
}

/// Lets a front end start the dashboard's since-start figures over (`r` in `top`) at the
/// next tick; the run's own aggregate and the exit summary are not touched.
#[derive(Clone, Default)]
pub struct Resetter(Rc<Cell<bool>>);

impl Resetter {
    pub fn reset(&self) {
        self.0.set(true);
    }
}

/// Snapshot publication settings.
struct Publish {
    every: Duration,
    opts: SnapshotOptions,
    tx: watch::Sender<Arc<Snapshot>>,
    recent: Option<Rc<RefCell<Recent>>>,
}

/// Where events come from.
enum Source {
    /// The kernel program.
    Kernel(Box<Collector>),
    /// A recording, played by event time.
    Replay(Box<Replayer>),
}

/// Playback speed of a replay.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Speed {
    /// N times real time.
    Times(f64),
    /// As fast as the pipeline goes.
    Max,
}

/// Pause and step of a replay, from the front end.
#[derive(Clone, Default)]
pub struct ReplayControl(Rc<ControlState>);

#[derive(Default)]
struct ControlState {
    paused: Cell<bool>,
    /// Event time to advance by while paused, not yet taken.
    step_ns: Cell<u64>,
    changed: Notify,
}

impl ReplayControl {
    /// Pauses or resumes playback.
    pub fn set_paused(&self, paused: bool) {
        self.0.paused.set(paused);
        self.0.changed.notify_one();
    }

    pub fn is_paused(&self) -> bool {
        self.0.paused.get()
    }

    /// While paused, plays `by` more of the recording's time.
    pub fn step(&self, by: Duration) {
        let ns = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.0.step_ns.set(self.0.step_ns.get().saturating_add(ns));
        self.0.changed.notify_one();
    }
}

/// A recorded event or socket-table sample, in file order.
enum Item {
    Event(Event),
    Sample(Box<Sample>),
}

impl Item {
    fn ts_ns(&self) -> u64 {
        match self {
            Self::Event(e) => e.ts_ns,
            Self::Sample(s) => s.ts_ns,
        }
    }
}

/// What the reader thread sends.
enum Batch {
    Events(Vec<Item>),
    End(Box<Result<Replay, record::RecordingError>>),
}

/// Events handed over per message by the reader thread.
const REPLAY_BATCH: usize = 1024;

/// A recording fed to the pipeline by event time: a reader thread parses the file (the same
/// reader `report` uses) into batches; the live loop releases each event when the playback
/// clock reaches its timestamp.
struct Replayer {
    rx: mpsc::Receiver<Batch>,
    pending: VecDeque<Item>,
    speed: Speed,
    control: ReplayControl,
    /// Playback clock: at `.0` the position was `.1` (event time); `None` before the first
    /// event.
    anchor: Option<(Instant, u64)>,
    paused: bool,
    /// The newest event time released.
    released_ns: u64,
    end: Option<Result<Replay, record::RecordingError>>,
}

impl Replayer {
    fn start(path: &Path, speed: Speed, control: ReplayControl) -> Result<Self> {
        let (tx, rx) = mpsc::channel(8);
        let path: PathBuf = path.to_owned();
        // Said once the reader holds no capability (or hung up: it could not open the file),
        // so that the run never drops the main thread's while another thread still has them.
        let (dropped_tx, dropped) = std::sync::mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("replay-reader".to_owned())
            .spawn(move || {
                let batch = RefCell::new(Vec::with_capacity(REPLAY_BATCH));
                let open = Cell::new(true);
                let push = |item: Item| {
                    let mut b = batch.borrow_mut();
                    b.push(item);
                    if b.len() == REPLAY_BATCH && open.get() {
                        let full = std::mem::replace(&mut *b, Vec::with_capacity(REPLAY_BATCH));
                        open.set(tx.blocking_send(Batch::Events(full)).is_ok());
                    }
                };
                // The recording is input from anywhere: read it with no privilege (this
                // thread exists before the run drops the main thread's, see `privileges`).
                let drop_capabilities = move || {
                    if let Err(e) = crate::privileges::drop_this_thread() {
                        log::warn!("the recording reader could not drop its capabilities: {e:#}");
                    }
                    let _ = dropped_tx.send(());
                };
                let end = record::replay_opened(
                    &path,
                    false,
                    drop_capabilities,
                    |ev| push(Item::Event(ev)),
                    |s| push(Item::Sample(Box::new(s))),
                );
                let (batch, open) = (batch.into_inner(), open.get());
                if open && !batch.is_empty() {
                    let _ = tx.blocking_send(Batch::Events(batch));
                }
                let _ = tx.blocking_send(Batch::End(Box::new(end)));
            })
            .context("starting the recording reader thread")?;
        let _ = dropped.recv();
        Ok(Self {
            rx,
            pending: VecDeque::new(),
            speed,
            control,
            anchor: None,
            paused: false,
            released_ns: 0,
            end: None,
        })
    }

    /// The playback position (event time) at `now`.
    fn position(&self, now: Instant) -> u64 {
        match (self.anchor, self.speed) {
            (None, _) => 0,
            (Some((_, pos)), _) if self.paused => pos,
            (Some(_), Speed::Max) => u64::MAX,
            (Some((at, pos)), Speed::Times(x)) => {
                pos.saturating_add((now.saturating_duration_since(at).as_nanos() as f64 * x) as u64)
            }
        }
    }

    /// Event time "now" for snapshots: the playback position, never beyond the events
    /// released (a paused or finished replay stands still).
    fn now_ns(&self) -> u64 {
        let pos = self.position(Instant::now());
        if self.pending.is_empty() && self.end.is_some() {
            // Played to the end: the recorded run's end (as `report` takes it).
            let end = match &self.end {
                Some(Ok(r)) => r.end_ns(),
                _ => 0,
            };
            self.released_ns.max(end)
        } else {
            pos.min(self.pending.front().map_or(u64::MAX, Item::ts_ns))
                .max(self.released_ns)
        }
    }

    /// Follows the front end's pause and step.
    fn apply_control(&mut self, now: Instant) {
        let want = self.control.is_paused();
        if want != self.paused {
            let pos = self.position(now);
            let pos = if pos == u64::MAX {
                self.released_ns
            } else {
                pos
            };
            self.anchor = self.anchor.map(|_| (now, pos));
            self.paused = want;
        }
        let step = self.control.0.step_ns.replace(0);
        if step > 0
            && self.paused
            && let Some((at, pos)) = self.anchor
        {
            self.anchor = Some((at, pos.max(self.released_ns).saturating_add(step)));
        }
    }

    /// Waits until events are due, feeds them in and returns how many; `None` at the end of
    /// the recording. Cancel-safe: nothing is taken out of `pending` before the last await.
    async fn feed(&mut self, pipeline: &mut Pipeline) -> Result<Option<usize>> {
        loop {
            if self.pending.is_empty() {
                if self.end.is_some() {
                    return Ok(None);
                }
                match self.rx.recv().await {
                    Some(Batch::Events(v)) => self.pending.extend(v),
                    Some(Batch::End(r)) => {
                        let r = (*r)?;
                        if let Some(t) = &r.trailer {
                            pipeline.add_undecodable(t.undecodable);
                        }
                        self.end = Some(Ok(r));
                    }
                    None => anyhow::bail!("the recording reader stopped unexpectedly"),
                }
                continue;
            }
            let now = Instant::now();
            if self.anchor.is_none()
                && let Some(first) = self.pending.front()
            {
                self.anchor = Some((now, first.ts_ns()));
            }
            self.apply_control(now);
            let pos = self.position(now);
            let mut n = 0;
            while n < REPLAY_BATCH
                && let Some(item) = self.pending.front()
                && item.ts_ns() <= pos
            {
                if let Some(item) = self.pending.pop_front() {
                    self.released_ns = self.released_ns.max(item.ts_ns());
                    match item {
                        Item::Event(ev) => pipeline.push_ordered(ev),
                        Item::Sample(s) => pipeline.push_sample(&s),
                    }
                    n += 1;
                }
            }
            if n > 0 {
                if self.speed == Speed::Max {
                    // Let ticks, keys and signals in between batches.
                    tokio::task::yield_now().await;
                }
                return Ok(Some(n));
            }
            let changed = self.control.0.changed.notified();
            match (self.pending.front(), self.anchor, self.speed) {
                (Some(item), Some((at, apos)), Speed::Times(x)) if !self.paused => {
                    let wait =
                        Duration::from_nanos((item.ts_ns().saturating_sub(apos) as f64 / x) as u64);
                    tokio::select! {
                        () = tokio::time::sleep_until(at + wait) => {}
                        () = changed => {}
                    }
                }
                _ => changed.await,
            }
        }
    }
}

/// A socket found in /proc at start: local and remote address, state, holder.
type PriorSocket = (
    std::net::SocketAddr,
    std::net::SocketAddr,
    TcpState,
    Option<decode::Owner>,
);

/// A loaded and attached program (or an opened recording) with its sinks, ready to run.
pub struct LiveRun {
    source: Source,
    /// Sockets found in /proc at start that the filter passes.
    prior: Vec<PriorSocket>,
    clock: Clock,
    sinks: Vec<Box<dyn Sink>>,
    sigint: Signal,
    sigterm: Signal,
    sighup: Signal,
    stopper: Stopper,
    resetter: Resetter,
    publish: Option<Publish>,
    /// The socket-table sampler, opened at start-up (namespaces entered, sockets open) while
    /// the capabilities are still held; its thread starts in [`LiveRun::run`].
    sampler_opened: Option<Sampler>,
    /// The socket-table sampler's thread and its samples, when started.
    sampler: Option<SamplerRun>,
    privileges_dropped: bool,
    /// See [`LiveRun::recording`].
    recording: bool,
    /// Charts are drawn at the end ([`LiveRun::charts`]).
    charts: bool,
    /// The run's filter (a replay's: its recording's), which also narrows the listeners
    /// shown.
    filter: Filter,
    /// Names of cgroups and network namespaces for the snapshots and the sinks (this host's
    /// for a live run; a replay's only on the host and boot that recorded it).
    names: Names,
}

/// A running socket-table sampler (`sockdiag`).
struct SamplerRun {
    rx: mpsc::UnboundedReceiver<Sample>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SamplerRun {
    /// Stops the thread and returns the samples it sent meanwhile.
    fn finish(&mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut rest = Vec::new();
        while let Ok(s) = self.rx.try_recv() {
            rest.push(s);
        }
        rest
    }
}

/// The next sample, or never when no sampler runs.
async fn next_sample(s: &mut Option<SamplerRun>) -> Option<Sample> {
    match s {
        Some(s) => s.rx.recv().await,
        None => std::future::pending().await,
    }
}

/// What a finished run leaves for its front end.
pub struct Finished {
    pub stop: Stop,
    /// The pipeline after the end of input: aggregates, tracker, counts.
    pub pipeline: Pipeline,
    /// The kernel's counters at the end.
    pub counters: Counters,
    /// The names the run's snapshots used, for its exit summary.
    pub names: Names,
    /// When the run ended, in event time (the monotonic clock, or the replay's position):
    /// the exit summary's CLOSE_WAIT ages run to it, and a recording's end record says it.
    pub end_ns: u64,
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
        let owner = |h: &crate::procfs::Holder| decode::Owner {
            tgid: h.pid,
            pid: h.pid,
            comm: decode::Comm::from_str_lossy(&h.comm),
            source: decode::OwnerSource::Proc,
        };
        // /proc's sockets can be matched to the port and family filters only: with a socket
        // filter (`--cgroup`, `--pid`, `--comm`, `--netns`) none are kept, rather than
        // another workload's counted as this one's.
        let prior = collector
            .prior
            .iter()
            .filter(|_| !filter.any_sockets())
            .filter(|p| filter.matches(p.local, p.remote))
            .filter_map(|p| {
                let state = TcpState::from_kernel(p.state)?;
                Some((p.local, p.remote, state, p.holder.as_ref().map(owner)))
            })
            .collect();
        Self::with_source(
            Source::Kernel(Box::new(collector)),
            prior,
            clock,
            Names::system(),
            filter.clone(),
        )
    }

    /// Plays a recording through the same loop at `speed` (no root needed). Returns the run
    /// and the recording's header.
    pub fn replay(
        path: &Path,
        speed: Speed,
        control: ReplayControl,
    ) -> Result<(Self, record::Header)> {
        let header = record::read_header(path)?;
        let replayer = Replayer::start(path, speed, control)?;
        let names = Names::for_recording(&header.host, header.clock.realtime_offset_ns);
        let run = Self::with_source(
            Source::Replay(Box::new(replayer)),
            Vec::new(),
            header.clock,
            names,
            header.filter.clone(),
        )?;
        Ok((run, header))
    }

    fn with_source(
        source: Source,
        prior: Vec<PriorSocket>,
        clock: Clock,
        names: Names,
        filter: Filter,
    ) -> Result<Self> {
        let sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        Ok(Self {
            source,
            prior,
            clock,
            sinks: Vec::new(),
            sigint,
            sigterm,
            sighup,
            stopper: Stopper::default(),
            resetter: Resetter::default(),
            publish: None,
            sampler_opened: None,
            sampler: None,
            privileges_dropped: false,
            recording: false,
            charts: false,
            filter,
            names,
        })
    }

    /// The run's charts are drawn at its end: keep what only they show (each edge's dwell).
    pub fn charts(&mut self) {
        self.charts = true;
    }

    /// The run is recorded: its exit summary leaves out what the recording cannot carry (the
    /// CLOSE_WAIT sockets /proc showed at start), so that `report` gives the same summary.
    pub fn recording(&mut self) {
        self.recording = true;
    }

    /// Drops every capability the rest of the run does not need (see `privileges`): call
    /// it once every output is open and every port bound; [`LiveRun::run`] calls it if the
    /// front end has not. A failure is a warning: the run goes on with what it holds.
    pub fn drop_privileges(&mut self) {
        if std::mem::replace(&mut self.privileges_dropped, true) {
            return;
        }
        let source = &self.source;
        if let Err(e) = crate::privileges::drop_all(|| counters_of(source).is_ok()) {
            log::warn!("could not drop capabilities after start-up: {e:#}");
        }
    }

    /// The names of cgroups and network namespaces, for a front end's sinks.
    pub fn names(&self) -> Names {
        self.names.clone()
    }

    /// Converts the events' monotonic timestamps to wall-clock time.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Starts the socket-table sampler as `args` say (nothing with `--no-sample`, and nothing
    /// for a replay, whose recording carries its samples). A sampler that cannot start is a
    /// warning: the tracing goes on without listener figures. `Err`: the intervals given do
    /// not fit together (`--time-wait-interval` not a multiple of `--sample-interval`).
    pub fn sample(&mut self, args: &SampleArgs) -> Result<()> {
        if args.no_sample || !matches!(self.source, Source::Kernel(_)) {
            return Ok(());
        }
        let cfg = SamplerConfig {
            interval: args.sample_interval,
            time_wait_every: args.time_wait_every().map_err(anyhow::Error::msg)?,
            netns: args.netns.clone(),
            all_netns: args.all_netns,
        };
        let sampler = match Sampler::open(cfg) {
            Ok((s, warnings)) => {
                for w in warnings {
                    log::warn!("{w}");
                }
                s
            }
            Err(e) => {
                log::warn!("{e}; listener and TIME_WAIT figures are not collected");
                return Ok(());
            }
        };
        self.sampler_opened = Some(sampler);
        Ok(())
    }

    /// Starts the opened sampler's thread. Called after the capabilities are dropped: they
    /// belong to threads, and a thread started before would keep them.
    fn start_sampler(&mut self) {
        let Some(sampler) = self.sampler_opened.take() else {
            return;
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        match sampler.spawn(tx, Arc::clone(&stop)) {
            Ok(t) => {
                self.sampler = Some(SamplerRun {
                    rx,
                    stop,
                    thread: Some(t),
                });
            }
            Err(e) => log::warn!(
                "cannot start the socket-table sampler thread: {e}; listener and TIME_WAIT figures are not collected"
            ),
        }
    }

    /// Adds a sink; sinks see events and facts in the order they were added.
    pub fn add_sink(&mut self, sink: Box<dyn Sink>) {
        self.sinks.push(sink);
    }

    /// A handle that resets the dashboard's since-start figures.
    pub fn resetter(&self) -> Resetter {
        self.resetter.clone()
    }

    /// A handle that ends the run when called.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Publishes a snapshot every `every`, rounded up to whole ticks, starting with one at
    /// the first tick, and a last one after the end of input. With `opts.dashboard`, adds the
    /// [`Recent`] sink the dashboard's figures come from.
    pub fn publish(
        &mut self,
        every: Duration,
        opts: SnapshotOptions,
    ) -> watch::Receiver<Arc<Snapshot>> {
        let (tx, rx) = watch::channel(Arc::new(Snapshot::empty(&opts)));
        let recent = opts.dashboard.then(|| {
            let r = Rc::new(RefCell::new(Recent::default()));
            self.sinks.push(Box::new(Shared(Rc::clone(&r))));
            r
        });
        self.publish = Some(Publish {
            every,
            opts,
            tx,
            recent,
        });
        rx
    }

    /// Runs until stopped, then drains what the kernel still holds and ends the input.
    pub async fn run(mut self, duration: Option<Duration>) -> Result<Finished> {
        self.drop_privileges();
        self.start_sampler();
        let mut pipeline = Pipeline::new(std::mem::take(&mut self.sinks));
        if self.charts {
            pipeline.keep_edge_dwells();
        }
        pipeline.listener_scope(&self.filter);
        // Only the dashboard counts every socket that predates the run: other front ends
        // keep only those in CLOSE_WAIT (the leaks the summary and the metrics count, a few
        // at most), so that they do not pay for matching every event against all of them.
        if self.publish.as_ref().is_some_and(|p| p.opts.dashboard) {
            pipeline.set_prior_sockets(self.prior.drain(..));
        } else if self.recording {
            // A recording does not carry them: its report must equal the live summary.
            self.prior.clear();
        } else {
            pipeline.set_prior_sockets(
                self.prior
                    .drain(..)
                    .filter(|(_, _, state, _)| *state == TcpState::CloseWait),
            );
        }
        if let Source::Kernel(collector) = &mut self.source {
            pipeline.hold_until_read();
            let owner = |h: &crate::procfs::Holder, source| decode::Owner {
                tgid: h.pid,
                pid: h.pid,
                comm: decode::Comm::from_str_lossy(&h.comm),
                source,
            };
            pipeline.set_prior_owners(
                collector
                    .existing_socks
                    .drain(..)
                    .map(|(sock, h)| (sock, owner(&h, decode::OwnerSource::Current))),
                collector
                    .existing
                    .drain(..)
                    .map(|(l, r, h)| (l, r, owner(&h, decode::OwnerSource::Proc))),
            );
            // Names the kernel did not send (closes by a process no event named yet).
            pipeline.set_comm_resolver(Box::new(crate::procfs::comm_of));
        }
        let source = &mut self.source;
        let started = Instant::now();
        let deadline = duration.map(|d| started + d);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u64;
        let mut lost_reported = Counters::default();
        let mut next_publish = started;

        let stop = loop {
            tokio::select! {
                biased;
                _ = self.sigint.recv() => break Stop::Interrupt,
                _ = self.sigterm.recv() => break Stop::Terminate,
                _ = self.sighup.recv() => break Stop::Hangup,
                () = self.stopper.0.notified() => break Stop::Requested,
                () = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => break Stop::Deadline,
                now = tick.tick() => {
                    // Held events are released as the reader reports its drains (see
                    // `reorder`), quiet or not: releasing them all on a quiet tick could
                    // hand one on before an older one still unread.
                    pipeline.flush_sinks();
                    ticks += 1;
                    if let Source::Kernel(c) = source {
                        c.guard_priority();
                    }
                    // Loss is said when it happens, not only in the summary.
                    if ticks.is_multiple_of(LOSS_WARN_TICKS)
                        && let Ok(c) = counters_of(source)
                        && c.all_lost() > lost_reported.all_lost()
                    {
                        log::warn!(
                            "{} events lost ({} with the ring buffer full, {} skipped by the \
                             kernel): {LOSS_EXPLAINED}",
                            c.all_lost() - lost_reported.all_lost(),
                            c.lost.saturating_sub(lost_reported.lost),
                            c.missed.saturating_sub(lost_reported.missed)
                        );
                        lost_reported = c;
                    }
                    if self.resetter.0.take()
                        && let Some(p) = &self.publish
                        && let Some(r) = &p.recent
                    {
                        r.borrow_mut().reset(now_ns(source));
                        next_publish = now;
                    }
                    if let Some(p) = &self.publish
                        && now >= next_publish
                    {
                        next_publish = now + p.every;
                        let counters = counters_of(source).unwrap_or_default();
                        publish(p, &pipeline, &counters, now - started, now_ns(source), &self.names);
                    }
                }
                Some(s) = next_sample(&mut self.sampler) => pipeline.push_sample(&s),
                n = read(source, &mut pipeline) => {
                    if n?.is_none() {
                        break Stop::End;
                    }
                }
            }
            if pipeline.sink_error().is_some() {
                break Stop::SinkFailed;
            }
        };

        // Whatever the kernel wrote before we stopped is still ours to count.
        if let Source::Kernel(collector) = source {
            collector.drain(|bytes| pipeline.push_bytes(bytes));
        }
        if let Some(s) = &mut self.sampler {
            for sample in s.finish() {
                pipeline.push_sample(&sample);
            }
        }
        pipeline.finish();
        let counters = counters_of(source)?;
        let end_ns = now_ns(source);
        if let Some(p) = &self.publish {
            publish(
                p,
                &pipeline,
                &counters,
                started.elapsed(),
                end_ns,
                &self.names,
            );
        }
        Ok(Finished {
            stop,
            pipeline,
            counters,
            names: self.names,
            end_ns,
        })
    }
}

/// Reads the next batch from the source: `None` when the input has ended.
async fn read(source: &mut Source, pipeline: &mut Pipeline) -> Result<Option<usize>> {
    match source {
        Source::Kernel(c) => c
            .read_batch(|d| match d {
                Delivery::Record(bytes) => pipeline.push_bytes(bytes),
                Delivery::ReadAllBefore(ns) => pipeline.read_all_before(ns),
            })
            .await
            .map(Some),
        Source::Replay(r) => r.feed(pipeline).await,
    }
}

/// The kernel's counters; a replay's are the recording's at its end (zero before).
fn counters_of(source: &Source) -> Result<Counters> {
    match source {
        Source::Kernel(c) => c.counters(),
        Source::Replay(r) => Ok(match &r.end {
            Some(Ok(Replay {
                trailer: Some(t), ..
            })) => t.counters,
            _ => Counters::default(),
        }),
    }
}

/// Event time now: the monotonic clock the kernel stamps events with, or the replay position.
fn now_ns(source: &Source) -> u64 {
    match source {
        Source::Kernel(_) => clock::monotonic_now_ns(),
        Source::Replay(r) => r.now_ns(),
    }
}

fn publish(
    p: &Publish,
    pipeline: &Pipeline,
    counters: &Counters,
    elapsed: Duration,
    now: u64,
    names: &Names,
) {
    let built = std::time::Instant::now();
    let recent = p.recent.as_ref().map(|r| r.borrow());
    let snap = Snapshot::build_with(
        pipeline,
        counters,
        &p.opts,
        elapsed,
        now,
        recent.as_deref(),
        names,
    );
    p.tx.send_replace(Arc::new(snap));
    log::debug!("snapshot built in {} us", built.elapsed().as_micros());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/loopback.jsonl")
    }

    #[tokio::test]
    async fn a_paused_replay_stands_still_until_stepped() {
        let control = ReplayControl::default();
        control.set_paused(true);
        let (run, _) =
            LiveRun::replay(&fixture(), Speed::Times(1.0), control.clone()).expect("replay");
        let done = run
            .run(Some(Duration::from_millis(300)))
            .await
            .expect("run");
        assert_eq!(done.stop, Stop::Deadline);
        // Paused at the first event: at most the events stamped with its time went in.
        assert!(done.pipeline.tracker().stats().events <= 2);

        let (run, _) =
            LiveRun::replay(&fixture(), Speed::Times(1.0), control.clone()).expect("replay");
        // The recording lasts about 0.6 s: one step of 10 s plays it to the end.
        control.step(Duration::from_secs(10));
        let done = run.run(Some(Duration::from_secs(10))).await.expect("run");
        assert_eq!(done.stop, Stop::End);
        assert_eq!(done.pipeline.tracker().stats().events, 242);
    }

    #[tokio::test]
    async fn a_replay_at_max_speed_publishes_the_report_figures() {
        let (mut run, _) =
            LiveRun::replay(&fixture(), Speed::Max, ReplayControl::default()).expect("replay");
        let opts = SnapshotOptions {
            top_n: 5,
            dashboard: true,
            detail: None,
        };
        let rx = run.publish(Duration::from_secs(1), opts);
        let done = run.run(None).await.expect("run");
        assert_eq!(done.stop, Stop::End);
        let snap = rx.borrow().clone();
        let report = crate::report::build(&fixture(), false, 5, false).expect("report");
        assert_eq!(snap.summary, report.summary);
        let d = snap.dashboard.as_ref().expect("dashboard figures");
        assert_eq!(d.close_wait.len(), 1);
        // The replay's clock ends at the last event, so the leak's age is the summary's.
        assert_eq!(
            d.close_wait[0].age_ms,
            snap.summary.close_wait_oldest[0].age_ms
        );
    }
}
