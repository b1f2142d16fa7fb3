//! `tcptrace top`: the full-screen dashboard, a thin front end over the one live loop.
//!
//! It asks [`LiveRun`] for a snapshot with dashboard figures every `--interval`, and runs one
//! `tokio::select!` over three things: the run itself (which ends on a signal, `--duration`
//! or the end of a replayed recording), the snapshot channel, and terminal input (crossterm's
//! `EventStream`). It draws when a snapshot arrives or a key changes something: once per
//! tick at most, never per event, so the dashboard costs what the aggregate-only mode costs
//! plus one snapshot and one frame per interval. State lives in [`app`], drawing in [`ui`].
//!
//! The frames reach the terminal through a thread of their own ([`Detached`]): ratatui draws
//! into memory, and that thread writes. The drawing shares a thread with the reader of the
//! kernel's rings, so a terminal that stops reading (a slow SSH link, output paused with
//! Ctrl-S, a tmux pane nobody drains) used to stop the reader too: beside 6 s of churn, a
//! terminal never read lost 250,000 of 2 million events. Now it holds up only the frames: a
//! new frame is drawn once the last one is written.
//!
//! The terminal is restored on every way out: a guard's `Drop` on errors and returns, and a
//! panic hook (which runs before the panic message is printed, so the message is readable);
//! the exit summary is printed after that, as `watch` prints it. Without a terminal on
//! stdout `top` refuses to start (escape codes never go into a pipe) and names `watch` and
//! `--once`, which prints one snapshot (text or JSON) and needs no terminal.
//!
//! A terminal that goes away (a closed SSH session, a killed tmux) ends `top` like SIGHUP
//! ends `watch`, also after a replay has ended and the live run no longer listens for
//! signals: the loop keeps its own SIGHUP/SIGTERM/SIGINT streams for that case, and checks
//! once a second whether stdin has hung up (crossterm's reader then reads end-of-file in a
//! loop and never reports it, so a dashboard left behind would spin on a CPU forever).

pub mod app;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod ui;

use std::{
    io::{self, IsTerminal as _, Write as _},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use crossterm::{
    cursor::{Hide, Show},
    event::{Event, EventStream, KeyEventKind},
    execute,
    terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode},
};
use futures_util::StreamExt as _;
use ratatui::{Terminal, backend::CrosstermBackend};
use tokio::signal::unix::{SignalKind, signal};

use self::{
    app::{Action, App},
    ui::Meta,
};
use crate::{
    cli::{Format, TopArgs},
    config::Filter,
    detached::Detached,
    exit::Exit,
    live::{LiveRun, ReplayControl, Speed, Stop},
    summary::SnapshotOptions,
};

/// Runs `tcptrace top`.
pub fn run(mut args: TopArgs) -> Result<Exit> {
    if !args.once && !io::stdout().is_terminal() {
        bail!(
            "tcptrace top draws a full-screen dashboard and needs a terminal on stdout; for a \
             pipe or a file use `tcptrace watch` (a line per transition and the summary), or \
             `tcptrace top --once --format json` (one snapshot of the dashboard's figures)"
        );
    }
    if args.format == Format::Csv {
        return Err(crate::exit::usage(
            "--format csv is for the `watch` stream; `top --once` prints one snapshot as \
             --format text or --format json",
        ));
    }
    let filter = Filter::from_cli(&args.filter, &mut args.sample).map_err(crate::exit::usage)?;
    crate::block_on(top(args, filter))
}

/// Whether the terminal is in dashboard mode (raw, alternate screen) right now.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Log messages (e.g. lost-event warnings) that arrived while the dashboard was drawn; the
/// header shows the loss meanwhile, and they are printed once the terminal is restored.
static HELD: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Most messages held; later ones are counted, not kept.
const MAX_HELD: usize = 100;

/// Keeps `line` for later if the dashboard owns the terminal; false if it may be printed.
pub fn hold_message(line: &str) -> bool {
    if !ACTIVE.load(Ordering::SeqCst) {
        return false;
    }
    if let Ok(mut held) = HELD.lock()
        && held.len() < MAX_HELD
    {
        held.push(line.to_owned());
    }
    true
}

/// Leaves raw mode and the alternate screen, once, whoever calls first, then prints the
/// messages held meanwhile.
fn restore_terminal() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = disable_raw_mode();
        let _ = execute!(io::stdout(), LeaveAlternateScreen, Show);
        let _ = io::stdout().flush();
        if let Ok(mut held) = HELD.lock() {
            let mut err = io::stderr().lock();
            for line in held.drain(..) {
                let _ = writeln!(err, "{line}");
            }
        }
    }
}

/// Whether the terminal on stdin has hung up (POLLHUP: its SSH session or tmux went away).
fn stdin_hung_up() -> bool {
    let mut fd = libc::pollfd {
        fd: libc::STDIN_FILENO,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd with a zero timeout.
    let n = unsafe { libc::poll(&mut fd, 1, 0) };
    n > 0 && fd.revents & (libc::POLLHUP | libc::POLLNVAL) != 0
}

/// How long leaving the dashboard waits for the last frames to be written before it restores
/// the terminal anyway.
const FRAMES_DRAIN: Duration = Duration::from_secs(2);

struct TerminalGuard;

impl TerminalGuard {
    fn enter() -> Result<Self> {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
        enable_raw_mode().context("switching the terminal to raw mode (is stdin a terminal?)")?;
        ACTIVE.store(true, Ordering::SeqCst);
        let guard = Self;
        execute!(io::stdout(), EnterAlternateScreen, Hide)
            .context("switching to the terminal's alternate screen")?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

fn describe_filter(f: &Filter) -> String {
    let mut parts = Vec::new();
    if f.ipv4_only {
        parts.push("-4".to_owned());
    }
    if f.ipv6_only {
        parts.push("-6".to_owned());
    }
    for (flag, ports) in [
        ("--lport", &f.lports),
        ("--rport", &f.rports),
        ("--port", &f.ports),
    ] {
        if !ports.is_empty() {
            let p: Vec<String> = ports.iter().take(4).map(u16::to_string).collect();
            let more = if ports.len() > 4 { ",..." } else { "" };
            parts.push(format!("{flag} {}{more}", p.join(",")));
        }
    }
    if !f.netns.is_empty() {
        let n: Vec<String> = f.netns.iter().map(u32::to_string).collect();
        parts.push(format!("--netns {}", n.join(",")));
    }
    if let Some(c) = &f.cgroup {
        parts.push(format!("--cgroup {}", c.path.display()));
    }
    if let Some(pid) = f.pid {
        parts.push(format!("--pid {pid}"));
    }
    if let Some(comm) = &f.comm {
        parts.push(format!("--comm {comm}"));
    }
    if parts.is_empty() {
        "all TCP".to_owned()
    } else {
        parts.join(" ")
    }
}

async fn top(args: TopArgs, filter: Filter) -> Result<Exit> {
    let control = ReplayControl::default();
    let (mut live, meta) = match &args.replay {
        Some(path) => {
            // One snapshot of a recording is the one at its end: no reason to wait for it.
            let speed = if args.speed.is_finite() && !args.once {
                Speed::Times(args.speed)
            } else {
                Speed::Max
            };
            let (live, header) = LiveRun::replay(path, speed, control.clone())?;
            let name = path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            let speed = match speed {
                Speed::Times(x) => format!("{x}x"),
                Speed::Max => "max speed".to_owned(),
            };
            let source = format!("replay {name} ({}) at {speed}", header.host);
            let clock = header.clock;
            (live, Meta { source, clock })
        }
        None => {
            let mut live = LiveRun::start(&filter, args.ring_kib)?;
            live.sample(&args.sample)?;
            let source = format!("live, {}", describe_filter(&filter));
            let clock = live.clock();
            (live, Meta { source, clock })
        }
    };
    let opts = SnapshotOptions {
        top_n: args.summary.top,
        dashboard: true,
        detail: None,
    };
    let mut rx = live.publish(args.interval, opts);
    crate::add_test_hooks(&mut live, &args.summary);
    if args.once {
        // The snapshot on stdout already holds the summary: stderr gets no second copy.
        let summary_out = crate::SummaryOut::open(&crate::cli::SummaryArgs {
            no_summary: true,
            ..args.summary.clone()
        })?;
        // A live run for one interval; a replay to its end (the last snapshot is published as
        // the run ends).
        let until = args.replay.is_none().then_some(args.interval);
        if args.replay.is_none() {
            crate::say_ready(&mut live, until);
        }
        let done = live.run(until).await?;
        let snap = rx.borrow().clone();
        let mut out = io::BufWriter::new(io::stdout().lock());
        let written = match args.format {
            Format::Json => serde_json::to_writer_pretty(&mut out, &*snap)
                .map_err(io::Error::from)
                .and_then(|()| writeln!(out)),
            Format::Text | Format::Csv => snap.write_text(&mut out),
        };
        let mut exit = Exit::of(&done);
        match written.and_then(|()| out.flush()) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => exit = Exit::PipeClosed,
            other => {
                crate::output_failed_at_exit(&mut exit, other.context("writing the snapshot"));
            }
        }
        summary_out.write(&done, &mut exit);
        crate::say_sink_error(&done, "the dashboard");
        return Ok(exit);
    }
    let summary_out = crate::SummaryOut::open(&args.summary)?;
    crate::say_ready(&mut live, args.duration);

    let stopper = live.stopper();
    let resetter = live.resetter();
    let first = rx.borrow_and_update().clone();
    let mut app = App::new(first, args.close_wait, args.replay.is_some());
    let guard = TerminalGuard::enter()?;
    // The frames: at most one in flight, so the limit is never reached.
    let frames = Detached::new(
        io::stdout(),
        "tcptrace-frames",
        64 << 20,
        usize::MAX,
        FRAMES_DRAIN,
    );
    let in_flight = frames.handle();
    let mut terminal =
        Terminal::new(CrosstermBackend::new(frames)).context("setting up the terminal")?;
    let run = live.run(args.duration);
    tokio::pin!(run);
    let mut input = EventStream::new();
    // After a replay has ended the run no longer handles signals: these do (see the top).
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hangup_check = tokio::time::interval(Duration::from_secs(1));
    // Only a terminal on stdin can hang up (a closed pipe there is not a lost session).
    let stdin_is_terminal = io::stdin().is_terminal();
    // Why the dashboard ended, when that was not the run's own doing.
    let mut ended_by: Option<Stop> = None;
    let mut finished = None;
    let mut snapshots_open = true;
    let mut dirty = true;
    let outcome: Result<()> = loop {
        // While a frame is on its way to a slow terminal, no other is drawn (the loop wakes
        // again within an interval, at the next snapshot).
        if dirty && !in_flight.busy() {
            if let Err(e) = terminal.draw(|f| ui::draw(f, &app, &meta)) {
                break Err(anyhow::Error::from(e).context("drawing the dashboard"));
            }
            dirty = false;
        }
        tokio::select! {
            r = &mut run, if finished.is_none() => match r {
                Ok(done) => {
                    let ended = done.stop == Stop::End;
                    finished = Some(done);
                    if !ended {
                        break Ok(());
                    }
                    // A replay played to its end: keep showing it until the user quits,
                    // with the last snapshot (published as the run ended).
                    app.on_snapshot(rx.borrow_and_update().clone());
                    app.finished = true;
                    dirty = true;
                }
                Err(e) => break Err(e),
            },
            changed = rx.changed(), if snapshots_open => match changed {
                Ok(()) => {
                    app.on_snapshot(rx.borrow_and_update().clone());
                    dirty = true;
                }
                Err(_) => snapshots_open = false,
            },
            ev = input.next() => match ev {
                Some(Ok(Event::Key(k))) if k.kind != KeyEventKind::Release => match app.on_key(k) {
                    Action::Quit => break Ok(()),
                    Action::Pause(p) => {
                        if app.replay {
                            control.set_paused(p);
                        }
                        dirty = true;
                    }
                    Action::Step => control.step(Duration::from_secs(1)),
                    Action::Reset => {
                        resetter.reset();
                        dirty = true;
                    }
                    Action::Redraw => dirty = true,
                    Action::None => {}
                },
                Some(Ok(Event::Resize(..))) => {
                    let _ = terminal.autoresize();
                    dirty = true;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(anyhow::Error::from(e).context("reading the terminal")),
                None => break Ok(()),
            },
            _ = sighup.recv(), if finished.is_some() => {
                ended_by = Some(Stop::Hangup);
                break Ok(());
            }
            _ = sigterm.recv(), if finished.is_some() => {
                ended_by = Some(Stop::Terminate);
                break Ok(());
            }
            _ = sigint.recv(), if finished.is_some() => {
                ended_by = Some(Stop::Interrupt);
                break Ok(());
            }
            _ = hangup_check.tick(), if stdin_is_terminal => {
                if stdin_hung_up() {
                    ended_by = Some(Stop::Hangup);
                    break Ok(());
                }
            }
        }
    };
    // End the run (its summary is the exit summary), then give the terminal back.
    let done = match finished {
        Some(done) => Ok(done),
        None => {
            stopper.stop();
            run.await
        }
    };
    drop(terminal);
    drop(guard);
    outcome?;
    let mut done = done?;
    if let Some(stop) = ended_by {
        done.stop = stop;
    }
    let mut exit = Exit::of(&done);
    summary_out.write(&done, &mut exit);
    crate::say_sink_error(&done, "the dashboard");
    Ok(exit)
}
