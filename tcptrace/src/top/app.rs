//! The dashboard's state, apart from drawing and I/O (as bpftop's `app.rs`): which view and
//! group dimension are shown, the sort column and direction of each table, the selected row,
//! the text filter, the CLOSE_WAIT threshold, pause, and the snapshot on screen. Keys go in
//! as crossterm events and come out as [`Action`]s for the event loop. The table rows are
//! the snapshot's own rows, filtered and sorted here; no figure is computed here.

use std::{cmp::Ordering, sync::Arc, time::Duration};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::{
    recent::{ClosedConn, DIMENSIONS},
    summary::{GroupRow, Leak, Snapshot},
};

/// The views `tab` cycles through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// Rates, handshakes, teardown, states and the leaks (and more when there is room).
    Overview,
    /// The CLOSE_WAIT leaks, full screen.
    Leaks,
    /// The group table.
    Groups,
    /// The recently closed connections.
    Closed,
    /// Listeners (accept queue, SYN_RECV, overflows, cookies) and TIME_WAIT, from the
    /// socket-table sampler.
    Listeners,
}

impl View {
    pub const ALL: [View; 5] = [
        Self::Overview,
        Self::Leaks,
        Self::Groups,
        Self::Closed,
        Self::Listeners,
    ];

    pub const fn title(self) -> &'static str {
        match self {
            Self::Overview => "Overview",
            Self::Leaks => "CLOSE_WAIT leaks",
            Self::Groups => "Groups",
            Self::Closed => "Recently closed",
            Self::Listeners => "Listeners",
        }
    }

    /// The table keys act on in this view.
    const fn table(self) -> Table {
        match self {
            // The listeners view has no selectable table: keys act on the leaks, as in the
            // overview.
            Self::Overview | Self::Leaks | Self::Listeners => Table::Leaks,
            Self::Groups => Table::Groups,
            Self::Closed => Table::Closed,
        }
    }
}

/// The sortable tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    Leaks = 0,
    Groups = 1,
    Closed = 2,
}

/// Column titles of each table, in drawing order (the sort column is one of them).
pub const LEAK_COLUMNS: [&str; 5] = ["AGE", "PID", "PROCESS", "LOCAL", "REMOTE"];
pub const GROUP_COLUMNS: [&str; 7] = [
    "GROUP",
    "CONN/s",
    "CONNS",
    "HS p50 ms",
    "HS p99 ms",
    "RESETS",
    "CLOSE_WAIT",
];
pub const CLOSED_COLUMNS: [&str; 8] = [
    "AGO s", "PID", "PROCESS", "LOCAL", "REMOTE", "LIFE ms", "CLOSE", "FIRST",
];

/// Sort state of one table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sort {
    pub column: usize,
    /// Largest (or oldest, or last in text order) first.
    pub descending: bool,
}

/// What a prompt at the bottom line is asking for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prompt {
    /// `/`: the text filter.
    Filter,
    /// `c`: the CLOSE_WAIT threshold in seconds.
    Threshold,
}

/// What the event loop must do after a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing changed.
    None,
    /// Draw again.
    Redraw,
    /// End the run and leave.
    Quit,
    /// Pause or resume (a replay pauses playback; a live run freezes the screen).
    Pause(bool),
    /// A paused replay: play one more second.
    Step,
    /// Start the since-start figures over.
    Reset,
}

/// The dashboard's state.
#[derive(Debug)]
pub struct App {
    pub view: View,
    /// Index into [`DIMENSIONS`] of the group table.
    pub dimension: usize,
    pub sort: [Sort; 3],
    pub selected: [usize; 3],
    /// Rows shown only if the process, an address or a port contains this text.
    pub filter: String,
    /// An open prompt and what has been typed so far.
    pub prompt: Option<(Prompt, String)>,
    /// Sockets in CLOSE_WAIT longer than this are leaks.
    pub threshold: Duration,
    pub paused: bool,
    pub help: bool,
    /// Playing a recording (pause stops playback and `n` steps).
    pub replay: bool,
    /// The input ended (a replay played to its end).
    pub finished: bool,
    /// A message for the status line (e.g. a rejected threshold).
    pub status: Option<String>,
    latest: Arc<Snapshot>,
    frozen: Option<Arc<Snapshot>>,
}

impl App {
    pub fn new(first: Arc<Snapshot>, threshold: Duration, replay: bool) -> Self {
        Self {
            view: View::Overview,
            dimension: 0,
            sort: [
                Sort {
                    column: 0,
                    descending: true,
                },
                Sort {
                    column: 2,
                    descending: true,
                },
                Sort {
                    column: 0,
                    descending: false,
                },
            ],
            selected: [0; 3],
            filter: String::new(),
            prompt: None,
            threshold,
            paused: false,
            help: false,
            replay,
            finished: false,
            status: None,
            latest: first,
            frozen: None,
        }
    }

    /// A new snapshot arrived (data keeps coming while a live run is paused).
    pub fn on_snapshot(&mut self, s: Arc<Snapshot>) {
        self.latest = s;
        self.clamp_selection();
    }

    /// The snapshot on screen: the one taken when a live run was paused, else the newest.
    pub fn shown(&self) -> &Arc<Snapshot> {
        self.frozen.as_ref().unwrap_or(&self.latest)
    }

    /// The table the keys act on.
    pub fn table(&self) -> Table {
        self.view.table()
    }

    pub fn on_key(&mut self, key: KeyEvent) -> Action {
        if let Some((prompt, text)) = &mut self.prompt {
            match key.code {
                KeyCode::Esc => {
                    // Esc leaves a prompt without its effect.
                    if *prompt == Prompt::Filter {
                        self.filter.clear();
                    }
                    self.prompt = None;
                }
                KeyCode::Enter => {
                    let (prompt, text) = (*prompt, std::mem::take(text));
                    self.prompt = None;
                    self.submit(prompt, &text);
                }
                KeyCode::Backspace => {
                    text.pop();
                }
                KeyCode::Char(c) if !key.modifiers.contains(KeyModifiers::CONTROL) => {
                    if text.chars().count() < 64 {
                        text.push(c);
                    }
                }
                KeyCode::Char('c') => return Action::Quit,
                _ => return Action::None,
            }
            // Typing filters as you go.
            if let Some((Prompt::Filter, t)) = &self.prompt {
                self.filter = t.clone();
            }
            self.clamp_selection();
            return Action::Redraw;
        }
        if self.help {
            // Any key closes the help; q still quits.
            self.help = false;
            if !matches!(key.code, KeyCode::Char('q')) {
                return Action::Redraw;
            }
        }
        self.status = None;
        let t = self.table() as usize;
        match key.code {
            KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => Action::Quit,
            KeyCode::Char('q') | KeyCode::Esc => Action::Quit,
            KeyCode::Char('?') | KeyCode::F(1) => {
                self.help = true;
                Action::Redraw
            }
            KeyCode::Char('p') | KeyCode::Char(' ') => {
                self.paused = !self.paused;
                self.frozen = (self.paused && !self.replay).then(|| Arc::clone(&self.latest));
                Action::Pause(self.paused)
            }
            KeyCode::Char('n') if self.replay && self.paused => Action::Step,
            KeyCode::Tab => {
                self.view = next(&View::ALL, self.view, 1);
                self.clamp_selection();
                Action::Redraw
            }
            KeyCode::BackTab => {
                self.view = next(&View::ALL, self.view, View::ALL.len() - 1);
                self.clamp_selection();
                Action::Redraw
            }
            KeyCode::Char('g') => {
                self.dimension = (self.dimension + 1) % DIMENSIONS.len();
                self.selected[Table::Groups as usize] = 0;
                Action::Redraw
            }
            KeyCode::Down | KeyCode::Char('j') => self.move_by(t, 1),
            KeyCode::Up | KeyCode::Char('k') => self.move_by(t, -1),
            KeyCode::PageDown => self.move_by(t, 10),
            KeyCode::PageUp => self.move_by(t, -10),
            KeyCode::Home => self.move_by(t, isize::MIN),
            KeyCode::End => self.move_by(t, isize::MAX),
            KeyCode::Char('s') => {
                let n = columns(self.table()).len();
                self.sort[t].column = (self.sort[t].column + 1) % n;
                Action::Redraw
            }
            KeyCode::Char('S') => {
                self.sort[t].descending = !self.sort[t].descending;
                Action::Redraw
            }
            KeyCode::Char('/') => {
                self.prompt = Some((Prompt::Filter, self.filter.clone()));
                Action::Redraw
            }
            KeyCode::Char('c') => {
                self.prompt = Some((Prompt::Threshold, String::new()));
                Action::Redraw
            }
            KeyCode::Char('r') => {
                self.status = Some("since-start figures reset at the next tick".to_owned());
                Action::Reset
            }
            _ => Action::None,
        }
    }

    fn submit(&mut self, prompt: Prompt, text: &str) {
        match prompt {
            Prompt::Filter => self.filter = text.trim().to_owned(),
            Prompt::Threshold => match crate::cli::parse_threshold(text) {
                Ok(d) => self.threshold = d,
                Err(e) => self.status = Some(format!("threshold unchanged: {e}")),
            },
        }
        self.clamp_selection();
    }

    fn move_by(&mut self, t: usize, by: isize) -> Action {
        let n = self.row_count(self.table());
        let cur = self.selected[t];
        self.selected[t] = match by {
            isize::MIN => 0,
            isize::MAX => n.saturating_sub(1),
            b if b < 0 => cur.saturating_sub(b.unsigned_abs()),
            b => (cur + b.unsigned_abs()).min(n.saturating_sub(1)),
        };
        Action::Redraw
    }

    fn clamp_selection(&mut self) {
        for t in [Table::Leaks, Table::Groups, Table::Closed] {
            let n = self.row_count(t);
            let s = &mut self.selected[t as usize];
            *s = (*s).min(n.saturating_sub(1));
        }
    }

    fn row_count(&self, t: Table) -> usize {
        match t {
            Table::Leaks => self.leak_rows().len(),
            Table::Groups => self.group_rows().len(),
            Table::Closed => self.closed_rows().len(),
        }
    }

    /// Whether one of `texts` contains the filter (callers skip building the texts when
    /// there is no filter: a table may hold a thousand rows).
    fn matches(&self, texts: &[&str]) -> bool {
        self.filter.is_empty() || {
            let f = self.filter.to_lowercase();
            texts.iter().any(|t| t.to_lowercase().contains(&f))
        }
    }

    /// Sockets in CLOSE_WAIT longer than the threshold (those there since before tracing
    /// always), filtered and sorted.
    pub fn leak_rows(&self) -> Vec<&Leak> {
        let Some(d) = &self.shown().dashboard else {
            return Vec::new();
        };
        let min_ms = self.threshold.as_secs_f64() * 1000.0;
        let mut rows: Vec<&Leak> = d
            .close_wait
            .iter()
            .filter(|l| l.age_ms.is_none_or(|a| a >= min_ms))
            .filter(|l| {
                self.filter.is_empty()
                    || self.matches(&[
                        l.comm.as_deref().unwrap_or(""),
                        &l.local.to_string(),
                        &l.remote.to_string(),
                        &l.pid.map(|p| p.to_string()).unwrap_or_default(),
                    ])
            })
            .collect();
        let s = self.sort[Table::Leaks as usize];
        rows.sort_by(|a, b| {
            let o = match s.column {
                // Unknown ages (there before tracing) are the oldest.
                0 => cmp_f64(
                    a.age_ms.unwrap_or(f64::INFINITY),
                    b.age_ms.unwrap_or(f64::INFINITY),
                ),
                1 => a.pid.cmp(&b.pid),
                2 => a.comm.cmp(&b.comm),
                3 => a.local.cmp(&b.local),
                _ => a.remote.cmp(&b.remote),
            };
            directed(o, s.descending).then_with(|| a.local.cmp(&b.local))
        });
        rows
    }

    /// The group table of the chosen dimension, filtered and sorted.
    pub fn group_rows(&self) -> Vec<&GroupRow> {
        let Some(table) = self
            .shown()
            .dashboard
            .as_ref()
            .and_then(|d| d.groups.get(self.dimension))
        else {
            return Vec::new();
        };
        let mut rows: Vec<&GroupRow> = table
            .rows
            .iter()
            .filter(|g| self.matches(&[&g.key]))
            .collect();
        let s = self.sort[Table::Groups as usize];
        let num = |o: Option<u64>| o.map_or(-1.0, |v| v as f64);
        rows.sort_by(|a, b| {
            let o = match s.column {
                0 => natural(&a.key, &b.key),
                1 => cmp_f64(a.conns_per_s, b.conns_per_s),
                2 => a.connections.cmp(&b.connections),
                3 => cmp_f64(num(a.handshake_p50_us), num(b.handshake_p50_us)),
                4 => cmp_f64(num(a.handshake_p99_us), num(b.handshake_p99_us)),
                5 => a.resets.cmp(&b.resets),
                _ => a.close_wait.cmp(&b.close_wait),
            };
            directed(o, s.descending).then_with(|| natural(&a.key, &b.key))
        });
        rows
    }

    /// The recently closed connections, filtered and sorted (newest first by default).
    pub fn closed_rows(&self) -> Vec<&ClosedConn> {
        let Some(d) = &self.shown().dashboard else {
            return Vec::new();
        };
        let mut rows: Vec<&ClosedConn> = d
            .recently_closed
            .iter()
            .filter(|c| {
                self.filter.is_empty()
                    || self.matches(&[
                        &c.comm.map(|c| c.as_str().into_owned()).unwrap_or_default(),
                        &c.local.to_string(),
                        &c.remote.to_string(),
                        &c.pid.map(|p| p.to_string()).unwrap_or_default(),
                        c.close,
                    ])
            })
            .collect();
        let s = self.sort[Table::Closed as usize];
        let life = |c: &ClosedConn| c.lifetime_ms.unwrap_or(-1.0);
        rows.sort_by(|a, b| {
            let o = match s.column {
                // "ago": ascending means newest first.
                0 => b.closed_ns.cmp(&a.closed_ns),
                1 => a.pid.cmp(&b.pid),
                2 => a
                    .comm
                    .map(|c| c.as_str().into_owned())
                    .cmp(&b.comm.map(|c| c.as_str().into_owned())),
                3 => a.local.cmp(&b.local),
                4 => a.remote.cmp(&b.remote),
                5 => cmp_f64(life(a), life(b)),
                6 => a.close.cmp(b.close),
                _ => a.closer.name().cmp(b.closer.name()),
            };
            directed(o, s.descending).then_with(|| b.closed_ns.cmp(&a.closed_ns))
        });
        rows
    }
}

/// The columns of a table.
pub fn columns(t: Table) -> &'static [&'static str] {
    match t {
        Table::Leaks => &LEAK_COLUMNS,
        Table::Groups => &GROUP_COLUMNS,
        Table::Closed => &CLOSED_COLUMNS,
    }
}

fn next<T: Copy + PartialEq>(all: &[T], cur: T, by: usize) -> T {
    let i = all.iter().position(|v| *v == cur).unwrap_or(0);
    all[(i + by) % all.len()]
}

fn cmp_f64(a: f64, b: f64) -> Ordering {
    a.partial_cmp(&b).unwrap_or(Ordering::Equal)
}

fn directed(o: Ordering, descending: bool) -> Ordering {
    if descending { o.reverse() } else { o }
}

/// Numbers as numbers ("80" before "443"), text as text.
fn natural(a: &str, b: &str) -> Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::fixtures::{self, key};

    fn app() -> App {
        App::new(Arc::new(fixtures::busy()), Duration::from_secs(5), false)
    }

    #[test]
    fn leaks_respect_the_threshold_and_come_oldest_first() {
        let mut a = app();
        let ages: Vec<Option<f64>> = a.leak_rows().iter().map(|l| l.age_ms).collect();
        assert_eq!(ages, vec![None, Some(120_000.0), Some(9_000.0)]);
        a.on_key(key(KeyCode::Char('c')));
        for c in "60".chars() {
            a.on_key(key(KeyCode::Char(c)));
        }
        a.on_key(key(KeyCode::Enter));
        assert_eq!(a.threshold, Duration::from_secs(60));
        assert_eq!(a.leak_rows().len(), 2);
        a.on_key(key(KeyCode::Char('c')));
        a.on_key(key(KeyCode::Char('x')));
        a.on_key(key(KeyCode::Enter));
        assert_eq!(a.threshold, Duration::from_secs(60), "bad input is refused");
        assert!(a.status.as_deref().is_some_and(|s| s.contains("unchanged")));
    }

    #[test]
    fn sort_cycles_columns_and_reverses() {
        let mut a = app();
        a.on_key(key(KeyCode::Tab));
        a.on_key(key(KeyCode::Tab));
        assert_eq!(a.view, View::Groups);
        let keys = |a: &App| {
            a.group_rows()
                .iter()
                .map(|g| g.key.clone())
                .collect::<Vec<_>>()
        };
        // Default: most connections first.
        assert_eq!(keys(&a), vec!["443", "5432", "80"]);
        for _ in 0..5 {
            a.on_key(key(KeyCode::Char('s')));
        }
        assert_eq!(a.sort[1].column, 0);
        a.on_key(key(KeyCode::Char('S')));
        assert_eq!(keys(&a), vec!["80", "443", "5432"], "by key, numerically");
        a.on_key(key(KeyCode::Char('S')));
        assert_eq!(keys(&a), vec!["5432", "443", "80"]);
    }

    #[test]
    fn g_switches_the_group_dimension() {
        let mut a = app();
        a.view = View::Groups;
        let rows = |a: &App| {
            a.group_rows()
                .iter()
                .map(|g| (g.key.clone(), g.connections, g.close_wait))
                .collect::<Vec<_>>()
        };
        a.on_key(key(KeyCode::Char('g')));
        // By local port: only the server side, where the CLOSE_WAIT sockets are.
        assert_eq!(rows(&a), vec![("8080".to_owned(), 0, 3)]);
        a.on_key(key(KeyCode::Char('g')));
        assert_eq!(a.dimension, 2);
        a.on_key(key(KeyCode::Char('g')));
        // By peer address: the nine client connections went to 10.0.0.9.
        assert_eq!(rows(&a)[0], ("10.0.0.9".to_owned(), 9, 0));
        a.on_key(key(KeyCode::Char('g')));
        // By workload: these sockets' cgroups are unknown, so one "?" group has them all.
        assert_eq!(a.dimension, 4);
        assert_eq!(rows(&a), vec![("?".to_owned(), 9, 3)]);
        a.on_key(key(KeyCode::Char('g')));
        assert_eq!(a.dimension, 0);
    }

    #[test]
    fn filter_matches_process_address_and_port() {
        let mut a = app();
        a.on_key(key(KeyCode::Char('/')));
        for c in "nginx".chars() {
            a.on_key(key(KeyCode::Char(c)));
        }
        assert_eq!(a.leak_rows().len(), 1, "filters while typing");
        a.on_key(key(KeyCode::Enter));
        assert_eq!(a.filter, "nginx");
        a.filter = "10.0.0.7".to_owned();
        assert_eq!(a.leak_rows().len(), 1);
        a.filter = ":80".to_owned();
        assert_eq!(a.closed_rows().len(), 1);
        a.filter = "nothing-matches".to_owned();
        assert!(a.leak_rows().is_empty());
    }

    #[test]
    fn selection_stays_in_bounds() {
        let mut a = app();
        for _ in 0..10 {
            a.on_key(key(KeyCode::Char('j')));
        }
        assert_eq!(a.selected[0], 2);
        a.on_key(key(KeyCode::Home));
        assert_eq!(a.selected[0], 0);
        a.on_key(key(KeyCode::Up));
        assert_eq!(a.selected[0], 0);
        a.on_key(key(KeyCode::End));
        assert_eq!(a.selected[0], 2);
        // Fewer rows after a new snapshot: the selection follows.
        a.on_snapshot(Arc::new(fixtures::empty()));
        assert_eq!(a.selected[0], 0);
    }

    #[test]
    fn pause_freezes_a_live_screen_but_not_a_replay() {
        let mut a = app();
        assert_eq!(a.on_key(key(KeyCode::Char(' '))), Action::Pause(true));
        a.on_snapshot(Arc::new(fixtures::empty()));
        assert!(
            a.shown()
                .dashboard
                .as_ref()
                .is_some_and(|d| !d.close_wait.is_empty())
        );
        assert_eq!(a.on_key(key(KeyCode::Char('p'))), Action::Pause(false));
        assert!(
            a.shown()
                .dashboard
                .as_ref()
                .is_some_and(|d| d.close_wait.is_empty())
        );

        let mut r = App::new(Arc::new(fixtures::busy()), Duration::from_secs(5), true);
        assert_eq!(
            r.on_key(key(KeyCode::Char('n'))),
            Action::None,
            "no step while playing"
        );
        r.on_key(key(KeyCode::Char('p')));
        assert_eq!(r.on_key(key(KeyCode::Char('n'))), Action::Step);
        r.on_snapshot(Arc::new(fixtures::empty()));
        assert!(
            r.shown()
                .dashboard
                .as_ref()
                .is_some_and(|d| d.close_wait.is_empty())
        );
    }

    #[test]
    fn r_asks_for_a_reset() {
        let mut a = app();
        assert_eq!(a.on_key(key(KeyCode::Char('r'))), Action::Reset);
        assert!(a.status.is_some());
    }

    #[test]
    fn quit_keys() {
        for k in [KeyCode::Char('q'), KeyCode::Esc] {
            assert_eq!(app().on_key(key(k)), Action::Quit);
        }
        let ctrl_c = KeyEvent {
            modifiers: KeyModifiers::CONTROL,
            ..key(KeyCode::Char('c'))
        };
        assert_eq!(app().on_key(ctrl_c), Action::Quit);
        let mut a = app();
        a.on_key(key(KeyCode::Char('/')));
        assert_eq!(a.on_key(ctrl_c), Action::Quit, "even in a prompt");
    }
}
