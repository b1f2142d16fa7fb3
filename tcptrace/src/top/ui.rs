//! The dashboard's drawing, and nothing else: it lays out the panels for the terminal's size
//! and renders the [`App`]'s snapshot and table rows with ratatui. No I/O, no state, no
//! figures of its own (quantiles, rates and ages all come from the snapshot), so frames are
//! tested on ratatui's `TestBackend`.
//!
//! Small terminals: the overview drops panels in this order as height shrinks: the groups
//! and recent-closes tables (only on large terminals), the handshake histogram, teardown and
//! states, then rates and handshakes; the CLOSE_WAIT table stays last. Below 40x8 a single
//! line says the terminal is too small.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style, Stylize as _},
    text::{Line, Span},
    widgets::{
        Bar, BarChart, BarGroup, Block, Cell, Clear, Paragraph, Row, Table, TableState, Wrap,
    },
};

use super::app::{App, CLOSED_COLUMNS, GROUP_COLUMNS, LEAK_COLUMNS, Prompt, Table as Tbl, View};
use crate::{
    aggregate::{Quantiles, row_names},
    clock::Clock,
    recent::DIMENSIONS,
    summary::{Dashboard, Snapshot},
};

/// Smallest terminal the dashboard draws in.
pub const MIN_WIDTH: u16 = 40;
pub const MIN_HEIGHT: u16 = 8;

const ACCENT: Color = Color::Cyan;
const WARN: Color = Color::Red;

/// What the frame says about where the data comes from.
#[derive(Clone, Debug)]
pub struct Meta {
    /// e.g. "live, --port 8080" or "replay of host.jsonl.zst at 10x".
    pub source: String,
    /// Turns event time into the time of day shown in the header (the recording's clock
    /// when replaying, so a replay shows when things happened).
    pub clock: Clock,
}

pub fn draw(f: &mut Frame, app: &App, meta: &Meta) {
    let area = f.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let msg = format!(
            "tcptrace top: terminal too small ({}x{}); need {MIN_WIDTH}x{MIN_HEIGHT}. q quits.",
            area.width, area.height
        );
        f.render_widget(Paragraph::new(msg).wrap(Wrap { trim: true }), area);
        return;
    }
    let snap = app.shown();
    let [head, tabs, body, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(area);
    header(f, head, app, snap, meta);
    tab_line(f, tabs, app);
    match (&snap.dashboard, app.view) {
        (None, _) => f.render_widget(Paragraph::new("no dashboard figures"), body),
        (Some(d), View::Overview) => overview(f, body, app, snap, d),
        (Some(_), View::Leaks) => leaks(f, body, app),
        (Some(_), View::Groups) => groups(f, body, app),
        (Some(d), View::Closed) => closed(f, body, app, d),
        (Some(_), View::Listeners) => listeners(f, body, snap),
    }
    footer(f, foot, app);
    if app.help {
        help(f, area, app);
    }
}

fn header(f: &mut Frame, area: Rect, app: &App, snap: &Snapshot, meta: &Meta) {
    let s = &snap.summary;
    let mut spans = vec![Span::styled(
        " tcptrace top ",
        Style::new().bold().fg(Color::Black).bg(ACCENT),
    )];
    // Badges first, so that a narrow terminal cuts the source description, not them.
    if app.paused {
        let what = if app.replay {
            " PAUSED (n steps 1 s) "
        } else {
            " PAUSED (still collecting) "
        };
        spans.push(Span::styled(
            what,
            Style::new().bold().fg(Color::Black).bg(Color::Yellow),
        ));
    }
    if app.finished {
        spans.push(Span::styled(
            " END OF RECORDING ",
            Style::new().bold().fg(Color::Black).bg(Color::Green),
        ));
    }
    let lost = format!("lost {}", s.lost);
    spans.push(Span::raw(" "));
    spans.push(if s.lost > 0 {
        Span::styled(lost, Style::new().bold().fg(Color::White).bg(WARN))
    } else {
        Span::raw(lost)
    });
    let mut at = String::new();
    if let Some(d) = snap.dashboard.as_ref().filter(|d| d.now_ns > 0) {
        meta.clock.write_time_of_day(&mut at, d.now_ns);
        at.truncate(8); // HH:MM:SS
        at.insert_str(0, " | ");
    }
    spans.push(Span::raw(format!(
        "{at} | {:.1} s | {} events | {}",
        snap.elapsed_s, s.events, meta.source
    )));
    f.render_widget(Line::from(spans), area);
}

fn tab_line(f: &mut Frame, area: Rect, app: &App) {
    let mut spans = Vec::new();
    for v in View::ALL {
        let style = if v == app.view {
            Style::new().bold().fg(Color::Black).bg(ACCENT)
        } else {
            Style::new().fg(ACCENT)
        };
        spans.push(Span::styled(format!(" {} ", v.title()), style));
        spans.push(Span::raw(" "));
    }
    spans.push(Span::raw(format!(
        "CLOSE_WAIT > {}",
        secs(app.threshold.as_secs_f64())
    )));
    if !app.filter.is_empty() {
        spans.push(Span::styled(
            format!("  filter: {}", app.filter),
            Style::new().fg(Color::Yellow),
        ));
    }
    f.render_widget(Line::from(spans), area);
}

fn footer(f: &mut Frame, area: Rect, app: &App) {
    let line = match (&app.prompt, &app.status) {
        (Some((Prompt::Filter, t)), _) => Line::from(vec![
            Span::styled(" filter (process, address, port): ", Style::new().bold()),
            Span::raw(format!("{t}_")),
            Span::raw("   Enter keeps, Esc clears"),
        ]),
        (Some((Prompt::Threshold, t)), _) => Line::from(vec![
            Span::styled(" CLOSE_WAIT threshold in seconds: ", Style::new().bold()),
            Span::raw(format!("{t}_")),
            Span::raw("   Enter sets, Esc cancels"),
        ]),
        (None, Some(msg)) => Line::from(Span::styled(format!(" {msg}"), Style::new().fg(WARN))),
        (None, None) => {
            // Most needed first: a narrow terminal cuts the end of the line.
            let mut keys = vec![
                ("q", "quit"),
                ("?", "help"),
                ("p", "pause"),
                ("tab", "view"),
                ("j/k", "move"),
                ("s/S", "sort"),
                ("/", "filter"),
                ("c", "threshold"),
                ("g", "group"),
                ("r", "reset"),
            ];
            if app.replay {
                keys.insert(3, ("n", "step"));
            }
            let mut spans = Vec::new();
            for (k, what) in keys {
                spans.push(Span::styled(
                    format!(" {k}"),
                    Style::new().bold().fg(ACCENT),
                ));
                spans.push(Span::raw(format!(" {what}")));
            }
            Line::from(spans)
        }
    };
    f.render_widget(line, area);
}

fn overview(f: &mut Frame, area: Rect, app: &App, snap: &Snapshot, d: &Dashboard) {
    let big = area.height >= 40 && area.width >= 120;
    let top_h = if big { 14 } else { 11 };
    let mid_h = 8;
    let tables_h = 12;
    // Collapse order as height shrinks: groups and recent closes, then teardown and states
    // become two summary lines, then those lines go, then rates and handshakes.
    let tables = big && area.height >= top_h + mid_h + 8 + tables_h;
    let mid = area.height >= top_h + mid_h + 6;
    let compact = !mid && area.height >= top_h + 2 + 5;
    let top = mid || compact || area.height >= top_h + 5;
    let mut rows = Vec::new();
    if top {
        rows.push(Constraint::Length(top_h));
    }
    if mid {
        rows.push(Constraint::Length(mid_h));
    }
    if compact {
        rows.push(Constraint::Length(2));
    }
    rows.push(Constraint::Min(0));
    if tables {
        rows.push(Constraint::Length(tables_h));
    }
    let parts = Layout::vertical(rows).split(area);
    let mut i = 0;
    if top {
        let [r, h] = hsplit(parts[i], 52);
        rates(f, r, d);
        handshakes(f, h, d, big);
        i += 1;
    }
    if mid {
        let [t, s] = hsplit(parts[i], 52);
        teardown(f, t, d);
        states(f, s, snap, d);
        i += 1;
    }
    if compact {
        compact_lines(f, parts[i], snap, d);
        i += 1;
    }
    leaks(f, parts[i], app);
    if tables {
        let [g, c] = hsplit(parts[i + 1], 50);
        groups(f, g, app);
        closed(f, c, app, d);
    }
}

/// Teardown and sockets per state in two lines, for terminals too short for their panels.
fn compact_lines(f: &mut Frame, area: Rect, snap: &Snapshot, d: &Dashboard) {
    let short = |n: &str| {
        match n {
            "FIN_WAIT1" => "FW1",
            "FIN_WAIT2" => "FW2",
            "CLOSING" => "CLOSING",
            "CLOSE_WAIT" => "CW",
            "LAST_ACK" => "LA",
            other => other,
        }
        .to_owned()
    };
    let names = row_names();
    let mut tear = vec![Span::styled(" teardown p50/p99 ms:", Style::new().bold())];
    for name in &names[2..] {
        if let Some(q) = d.since_start.rows.get(name) {
            tear.push(Span::raw(format!(
                " {} {}/{}",
                short(name),
                ms(q.p50_us),
                ms(q.p99_us)
            )));
        }
    }
    if tear.len() == 1 {
        tear.push(Span::raw(" none yet"));
    }
    let mut st = vec![Span::styled(" sockets now:", Style::new().bold())];
    for (n, c) in &snap.states {
        st.push(Span::raw(format!(" {n} {c}")));
    }
    if snap.states.is_empty() {
        st.push(Span::raw(" none tracked"));
    }
    if !d.states_from_proc.is_empty() {
        let p: Vec<String> = d
            .states_from_proc
            .iter()
            .map(|(n, c)| format!("{n} {c}"))
            .collect();
        st.push(Span::raw(format!("; from /proc at start: {}", p.join(" "))));
    }
    f.render_widget(Paragraph::new(vec![Line::from(tear), Line::from(st)]), area);
}

/// Splits `area` left/right at `pct` percent. Computed here rather than by the constraint
/// solver, whose choice between equally good layouts can differ from run to run.
fn hsplit(area: Rect, pct: u16) -> [Rect; 2] {
    let left = (u32::from(area.width) * u32::from(pct) / 100) as u16;
    [
        Rect {
            width: left,
            ..area
        },
        Rect {
            x: area.x + left,
            width: area.width - left,
            ..area
        },
    ]
}

/// Column widths for a bordered table `area` wide: fixed columns keep their width, the
/// flexible ones (`None`) share the rest equally. All exact, so the layout is the same on
/// every run.
fn widths(area: Rect, cols: &[Option<u16>]) -> Vec<Constraint> {
    let inner = area.width.saturating_sub(2);
    let spacing = cols.len().saturating_sub(1) as u16;
    let fixed: u16 = cols.iter().flatten().sum();
    let flex = cols.iter().filter(|c| c.is_none()).count().max(1) as u16;
    let rest = inner.saturating_sub(fixed + spacing);
    let mut first = true;
    cols.iter()
        .map(|c| match c {
            Some(w) => Constraint::Length(*w),
            None => {
                let w = rest / flex + if first { rest % flex } else { 0 };
                first = false;
                Constraint::Length(w)
            }
        })
        .collect()
}

fn block(title: impl Into<Line<'static>>) -> Block<'static> {
    Block::bordered()
        .title(title.into())
        .border_style(Style::new().fg(Color::DarkGray))
}

/// A one-line text sparkline of the newest `width` values, scaled to their maximum.
fn spark(values: &[u64], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let tail = &values[values.len().saturating_sub(width)..];
    let max = tail.iter().copied().max().unwrap_or(0);
    tail.iter()
        .map(|&v| match v {
            0 => ' ',
            v => BARS[((v * 7).div_ceil(max.max(1)) as usize).min(7)],
        })
        .collect()
}

fn rates(f: &mut Frame, area: Rect, d: &Dashboard) {
    let inner_w = area.width.saturating_sub(2) as usize;
    let spark_w = inner_w.saturating_sub(13 + 9 + 10 + 3).min(60);
    let rows = d.rates.iter().map(|r| {
        let name = match r.name {
            "syn_retransmit" => "SYN rtx",
            "synack_retransmit" => "SYN-ACK rtx",
            n => n,
        };
        Row::new(vec![
            Cell::from(name),
            Cell::from(format!("{:>8.1}", r.per_s)),
            Cell::from(format!("{:>9}", r.total)),
            Cell::from(spark(&r.last_minute, spark_w)).style(Style::new().fg(ACCENT)),
        ])
    });
    let t = Table::new(
        rows,
        [
            Constraint::Length(12),
            Constraint::Length(8),
            Constraint::Length(9),
            Constraint::Min(0),
        ],
    )
    .header(
        Row::new([
            "",
            "     /s",
            if d.reset_at_ns.is_some() {
                "  since r"
            } else {
                "    total"
            },
            "last minute",
        ])
        .style(Style::new().bold()),
    )
    .block(block(" Rates (/s over 10 s) "));
    f.render_widget(t, area);
}

fn ms(us: u64) -> String {
    let v = us as f64 / 1000.0;
    if v < 10.0 {
        format!("{v:.3}")
    } else if v < 1000.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

fn secs(s: f64) -> String {
    if s >= 3600.0 {
        format!("{}h{:02}m", (s / 3600.0) as u64, (s % 3600.0 / 60.0) as u64)
    } else if s >= 60.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{s:.1}s")
    }
}

fn handshakes(f: &mut Frame, area: Rect, d: &Dashboard, big: bool) {
    let wide = area.width >= 56;
    let cols: &[&str] = if wide {
        &["", "n", "p50", "p90", "p99", "max"]
    } else {
        &["", "p50", "p99", "max"]
    };
    let row = |label: &str, q: Option<&Quantiles>| {
        let mut cells = vec![label.to_owned()];
        match q {
            Some(q) if wide => cells.extend([
                q.count.to_string(),
                ms(q.p50_us),
                ms(q.p90_us),
                ms(q.p99_us),
                ms(q.max_us),
            ]),
            Some(q) => cells.extend([ms(q.p50_us), ms(q.p99_us), ms(q.max_us)]),
            None => cells.push("-".to_owned()),
        }
        Row::new(cells)
    };
    // Since-start figures come from the summary rows of the same snapshot's histograms.
    let since = |row: &str| d.since_start.rows.get(row);
    let rows = vec![
        row("client 10s", d.handshake_last_10s.get("client")),
        row("client all", since("handshake client")),
        row("server 10s", d.handshake_last_10s.get("server")),
        row("server all", since("handshake server")),
    ];
    let widths: Vec<Constraint> = std::iter::once(Constraint::Length(10))
        .chain(cols[1..].iter().map(|_| Constraint::Length(7)))
        .collect();
    let b = block(if d.reset_at_ns.is_some() {
        " Handshakes (ms; all = since r) "
    } else {
        " Handshakes (ms) "
    });
    let inner = b.inner(area);
    f.render_widget(b, area);
    let [tarea, rest] = Layout::vertical([Constraint::Length(5), Constraint::Min(0)]).areas(inner);
    f.render_widget(
        Table::new(rows, widths).header(Row::new(cols.to_vec()).style(Style::new().bold())),
        tarea,
    );
    let rtx = |name: &str| {
        d.rates
            .iter()
            .find(|r| r.name == name)
            .map_or(0.0, |r| r.per_s)
    };
    let [line, hist] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(rest);
    f.render_widget(
        Line::from(format!(
            "SYN rtx {:.1}/s  SYN-ACK rtx {:.1}/s",
            rtx("syn_retransmit"),
            rtx("synack_retransmit")
        )),
        line,
    );
    if big && hist.height >= 3 {
        let bars: Vec<Bar> = d
            .handshake_histogram
            .iter()
            .map(|b| {
                let label = match b.upto_us {
                    Some(u) if u >= 1_000_000 => format!("<{}s", u / 1_000_000),
                    Some(u) if u >= 1000 => format!("<{}", u / 1000),
                    Some(u) => format!("<.{}", u / 100),
                    None => "more".to_owned(),
                    // (bucket bounds are in ms below 1 s)
                };
                Bar::default()
                    .value(b.client + b.server)
                    .label(Line::from(label))
                    .text_value(String::new())
            })
            .collect();
        f.render_widget(
            BarChart::default()
                .data(BarGroup::default().bars(&bars))
                .bar_width(4)
                .bar_gap(1)
                .bar_style(Style::new().fg(ACCENT)),
            hist,
        );
    }
}

fn teardown(f: &mut Frame, area: Rect, d: &Dashboard) {
    let names = row_names();
    let rows = names[2..]
        .iter()
        .map(|name| match d.since_start.rows.get(name) {
            Some(q) => Row::new(vec![
                name.to_string(),
                q.count.to_string(),
                ms(q.p50_us),
                ms(q.p99_us),
            ]),
            None => Row::new(vec![name.to_string(), "0".to_owned(), "-".to_owned()]),
        });
    let t = Table::new(
        rows,
        [
            Constraint::Length(11),
            Constraint::Length(8),
            Constraint::Length(9),
            Constraint::Length(9),
        ],
    )
    .header(Row::new(["phase", "n", "p50 ms", "p99 ms"]).style(Style::new().bold()))
    .block(block(if d.reset_at_ns.is_some() {
        " Teardown (since r) "
    } else {
        " Teardown "
    }));
    f.render_widget(t, area);
}

fn states(f: &mut Frame, area: Rect, snap: &Snapshot, d: &Dashboard) {
    let mut names: Vec<&str> = snap
        .states
        .keys()
        .chain(d.states_from_proc.keys())
        .copied()
        .collect();
    // In the kernel's order of states.
    names.sort_by_key(|n| {
        crate::decode::TcpState::ALL
            .iter()
            .position(|s| s.name() == *n)
            .unwrap_or(usize::MAX)
    });
    names.dedup();
    let rows = names.iter().map(|n| {
        Row::new(vec![
            n.to_string(),
            snap.states.get(n).copied().unwrap_or(0).to_string(),
            d.states_from_proc.get(n).copied().unwrap_or(0).to_string(),
        ])
    });
    let t = Table::new(
        rows,
        [
            Constraint::Length(12),
            Constraint::Length(8),
            Constraint::Min(0),
        ],
    )
    .header(Row::new(["state", "tracked", "from /proc at start"]).style(Style::new().bold()))
    .block(block(" Sockets per state now "));
    f.render_widget(t, area);
}

/// Header cells with the sort column marked.
fn header_row(cols: &[&str], app: &App, t: Tbl) -> Row<'static> {
    let s = app.sort[t as usize];
    Row::new(cols.iter().enumerate().map(|(i, c)| {
        if i == s.column {
            Cell::from(format!("{c}{}", if s.descending { "▼" } else { "▲" }))
                .style(Style::new().bold().fg(ACCENT))
        } else {
            Cell::from(c.to_string()).style(Style::new().bold())
        }
    }))
}

fn selectable(
    rows: Vec<Row<'static>>,
    widths: Vec<Constraint>,
    header: Row<'static>,
) -> Table<'static> {
    Table::new(rows, widths)
        .header(header)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
}

/// The part of a table's rows a bordered table `area` high shows, so that only those rows
/// are formatted (the recent-closes ring alone holds 1,000): (first row, rows, selection
/// within them). The selection stays in view.
fn window(area: Rect, len: usize, selected: Option<usize>) -> (usize, usize, Option<usize>) {
    let height = usize::from(area.height.saturating_sub(3)).max(1);
    let sel = selected.map(|s| s.min(len.saturating_sub(1)));
    let first = sel.map_or(0, |s| (s + 1).saturating_sub(height));
    let n = height.min(len.saturating_sub(first));
    (first, n, sel.map(|s| s - first))
}

fn leaks(f: &mut Frame, area: Rect, app: &App) {
    let snap = app.shown();
    let all = snap.dashboard.as_ref().map_or(0, |d| d.close_wait.len());
    let rows = app.leak_rows();
    let title = format!(
        " CLOSE_WAIT longer than {}: {} (of {all} in CLOSE_WAIT) ",
        secs(app.threshold.as_secs_f64()),
        rows.len()
    );
    let title = if rows.is_empty() {
        Line::from(title)
    } else {
        Line::from(Span::styled(title, Style::new().bold().fg(WARN)))
    };
    let (first, n, sel) = window(
        area,
        rows.len(),
        (!rows.is_empty() && app.table() == Tbl::Leaks)
            .then_some(app.selected[Tbl::Leaks as usize]),
    );
    let cells: Vec<Row> = rows[first..first + n]
        .iter()
        .map(|l| {
            let age = match (l.age_ms, l.from_proc) {
                (Some(a), _) => secs(a / 1000.0),
                (None, true) => format!(">{} /proc", secs(snap.elapsed_s)),
                (None, false) => format!(">{}", secs(snap.elapsed_s)),
            };
            Row::new(vec![
                age,
                l.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                l.comm.clone().unwrap_or_else(|| "-".to_owned()),
                l.local.to_string(),
                l.remote.to_string(),
            ])
        })
        .collect();
    let widths = widths(area, &[Some(13), Some(7), Some(15), None, None]);
    let t =
        selectable(cells, widths, header_row(&LEAK_COLUMNS, app, Tbl::Leaks)).block(block(title));
    let mut state = TableState::default().with_selected(sel);
    f.render_stateful_widget(t, area, &mut state);
}

/// Listeners under pressure and TIME_WAIT per namespace (the exit summary's `listeners`).
fn listeners(f: &mut Frame, area: Rect, snap: &Snapshot) {
    let l = &snap.summary.listeners;
    if l.is_empty() {
        f.render_widget(
            Paragraph::new(
                "no socket-table samples (the sampler is off with --no-sample, could not start, \
                 or the recording has none)",
            )
            .block(block(" Listeners ")),
            area,
        );
        return;
    }
    let ns_rows = l.namespaces.len() as u16;
    let [top, bottom] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(ns_rows * 2 + 3)]).areas(area);
    let mut rows: Vec<&crate::listeners::ListenerSummary> = l.listeners.iter().collect();
    // Fullest first: accept queue relative to its limit, then SYN_RECV.
    rows.sort_by_key(|x| {
        std::cmp::Reverse((
            u64::from(x.accept_queue_max) * 1000 / u64::from(x.backlog.max(1)),
            x.syn_recv_max,
        ))
    });
    let cells: Vec<Row> = rows
        .iter()
        .map(|x| {
            let full = crate::listeners::is_full(x.accept_queue_max, x.backlog)
                || x.overflow_drops + x.inferred_overflows > 0;
            let row = Row::new(vec![
                format!("{}:{}", x.address, x.port),
                short_ns(&x.netns_name).to_owned(),
                match (&x.comm, x.pid) {
                    (Some(c), Some(p)) => format!("{c}/{p}"),
                    _ => "-".to_owned(),
                },
                format!("{}/{}", x.accept_queue_now, x.backlog),
                x.accept_queue_max.to_string(),
                format!("{} ({})", x.syn_recv_now, x.syn_recv_max),
                x.synack_retransmits.to_string(),
                x.overflow_drops.to_string(),
                x.inferred_overflows.to_string(),
            ]);
            if full {
                row.style(Style::new().fg(WARN))
            } else {
                row
            }
        })
        .collect();
    let widths = widths(
        top,
        &[
            None,
            Some(16),
            Some(16),
            Some(10),
            Some(6),
            Some(12),
            Some(8),
            Some(10),
            Some(11),
        ],
    );
    let header = Row::new(vec![
        "LISTENER",
        "NETNS",
        "PROCESS",
        "ACCEPT",
        "MAX",
        "SYN_RECV",
        "SYNACK↻",
        "DROPS(SKB)",
        "OVFL(INFER)",
    ])
    .style(Style::new().bold());
    let title = format!(
        " Listeners: {} (accept queue now/limit, max of {} samples; OVFL(INFER): netns \
         ListenOverflows while the only one full) ",
        rows.len(),
        l.samples
    );
    f.render_widget(
        Table::new(cells, widths).header(header).block(block(title)),
        top,
    );
    let mut lines = Vec::new();
    for ns in &l.namespaces {
        let c = ns.counters_delta.unwrap_or_default();
        let pressure = c.listen_overflows + c.syncookies_sent + c.req_q_full_drop > 0;
        let text = format!(
            "{}: ListenOverflows +{}{}  ListenDrops +{}  cookies sent/recv/failed +{}/+{}/+{}  ReqQFull cookies/drops +{}/+{}",
            short_ns(&ns.name),
            c.listen_overflows,
            if ns.unattributed_overflows > 0 {
                format!(" ({} to no one listener)", ns.unattributed_overflows)
            } else {
                String::new()
            },
            c.listen_drops,
            c.syncookies_sent,
            c.syncookies_recv,
            c.syncookies_failed,
            c.req_q_full_do_cookies,
            c.req_q_full_drop
        );
        lines.push(if pressure {
            Line::from(Span::styled(text, Style::new().fg(WARN)))
        } else {
            Line::from(text)
        });
        let tw = &ns.time_wait;
        if tw.samples == 0 {
            lines.push(Line::from("  TIME_WAIT not sampled yet"));
            continue;
        }
        lines.push(Line::from(format!(
            "  TIME_WAIT {} (max {}), {:.1}-{:.1} s left; by port: {}",
            tw.now,
            tw.max,
            f64::from(tw.remaining_min_ms_now) / 1000.0,
            f64::from(tw.remaining_max_ms_now) / 1000.0,
            tw.by_remote_port
                .iter()
                .take(4)
                .map(|(p, n)| format!("{p} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    f.render_widget(
        Paragraph::new(lines).block(block(" Namespaces: counters since start, TIME_WAIT now ")),
        bottom,
    );
}

fn groups(f: &mut Frame, area: Rect, app: &App) {
    let rows = app.group_rows();
    let title = format!(
        " Groups by {} (g switches): {} ",
        DIMENSIONS.get(app.dimension).copied().unwrap_or("?"),
        rows.len()
    );
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), ms);
    let (first, n, sel) = window(
        area,
        rows.len(),
        (!rows.is_empty() && app.table() == Tbl::Groups)
            .then_some(app.selected[Tbl::Groups as usize]),
    );
    let cells: Vec<Row> = rows[first..first + n]
        .iter()
        .map(|g| {
            Row::new(vec![
                g.key.clone(),
                format!("{:.1}", g.conns_per_s),
                g.connections.to_string(),
                opt(g.handshake_p50_us),
                opt(g.handshake_p99_us),
                g.resets.to_string(),
                g.close_wait.to_string(),
            ])
        })
        .collect();
    let widths = widths(
        area,
        &[
            None,
            Some(8),
            Some(8),
            Some(10),
            Some(10),
            Some(7),
            Some(11),
        ],
    );
    let t =
        selectable(cells, widths, header_row(&GROUP_COLUMNS, app, Tbl::Groups)).block(block(title));
    let mut state = TableState::default().with_selected(sel);
    f.render_stateful_widget(t, area, &mut state);
}

fn closed(f: &mut Frame, area: Rect, app: &App, d: &Dashboard) {
    let rows = app.closed_rows();
    let title = format!(
        " Recently closed: {} of the last {} ",
        rows.len(),
        d.recently_closed.len()
    );
    let (first, n, sel) = window(
        area,
        rows.len(),
        (!rows.is_empty() && app.table() == Tbl::Closed)
            .then_some(app.selected[Tbl::Closed as usize]),
    );
    let cells: Vec<Row> = rows[first..first + n]
        .iter()
        .map(|c| {
            Row::new(vec![
                format!("{:.1}", d.now_ns.saturating_sub(c.closed_ns) as f64 / 1e9),
                c.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                c.comm
                    .map_or_else(|| "-".to_owned(), |c| c.as_str().into_owned()),
                c.local.to_string(),
                c.remote.to_string(),
                c.lifetime_ms
                    .map_or_else(|| "-".to_owned(), |l| ms((l * 1000.0) as u64)),
                c.close.to_owned(),
                c.closer.name().to_owned(),
            ])
        })
        .collect();
    // Narrow terminals drop the pid (the process name stays) to keep addresses whole.
    let pid = if area.width >= 100 { 7 } else { 0 };
    let widths = widths(
        area,
        &[
            Some(6),
            Some(pid),
            Some(10),
            None,
            None,
            Some(8),
            Some(10),
            Some(5),
        ],
    );
    let t = selectable(cells, widths, header_row(&CLOSED_COLUMNS, app, Tbl::Closed))
        .block(block(title));
    let mut state = TableState::default().with_selected(sel);
    f.render_stateful_widget(t, area, &mut state);
}

/// The help text: keys and what each panel measures.
pub const HELP: &[&str] = &[
    "Keys",
    "  q Esc Ctrl-C  quit; the exit summary follows on the restored screen",
    "  p space       pause: the screen freezes, data is still collected",
    "                (a replay pauses playback; n then plays one second)",
    "  tab S-tab     views: Overview, CLOSE_WAIT leaks, Groups, Closed",
    "  arrows j/k    move the selection; PgUp PgDn Home End",
    "  s / S         sort by the next column / reverse the order",
    "  /             filter the tables by text (process, address, port)",
    "  c             set the CLOSE_WAIT threshold (seconds)",
    "  r             reset the since-start figures (not the exit summary)",
    "  g             group by remote port, local port, process, peer",
    "Panels",
    "  Rates: per second over the last 10 s, total, the last minute",
    "  Handshakes: client SYN_SENT->ESTABLISHED; server SYN-ACK RTT",
    "  Teardown: time in each closing state since the start",
    "  Sockets: tracked now, and from /proc at start (no event since)",
    "  CLOSE_WAIT: the peer closed, the application has not (a leak)",
    "Any key closes this help.",
];

fn help(f: &mut Frame, area: Rect, app: &App) {
    let w = area.width.saturating_sub(4).min(86);
    let h = area.height.saturating_sub(2).min(HELP.len() as u16 + 2);
    let popup = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    let mut lines: Vec<Line> = HELP.iter().map(|l| Line::from(*l)).collect();
    if app.replay {
        lines.push(Line::from(
            "Replaying a recording: time is the recording's.",
        ));
    }
    f.render_widget(Clear, popup);
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(block(" Help ").border_style(Style::new().fg(ACCENT))),
        popup,
    );
}

/// A namespace's name as the Listeners tab shows it: `/run/netns/NAME` as NAME (the column is
/// 16 wide and every named namespace shares that prefix); other names as they are.
fn short_ns(name: &str) -> &str {
    name.strip_prefix("/run/netns/")
        .filter(|n| !n.is_empty())
        .unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use crossterm::event::KeyCode;
    use ratatui::{Terminal, backend::TestBackend, buffer::Buffer};

    use super::*;
    use crate::top::fixtures::{self, key};

    fn meta() -> Meta {
        Meta {
            source: "live, all TCP".to_owned(),
            // UTC, no offset: frames are the same on every machine.
            clock: Clock {
                realtime_offset_ns: 1_764_000_000_000_000_000,
                utc_offset_secs: 0,
            },
        }
    }

    fn text(b: &Buffer) -> String {
        let mut s = String::new();
        for y in 0..b.area.height {
            let mut line = String::new();
            for x in 0..b.area.width {
                line.push_str(b[(x, y)].symbol());
            }
            s.push_str(line.trim_end());
            s.push('\n');
        }
        s
    }

    fn render(app: &App, w: u16, h: u16) -> (String, Buffer) {
        let mut t = Terminal::new(TestBackend::new(w, h)).expect("terminal");
        t.draw(|f| draw(f, app, &meta())).expect("draw");
        let b = t.backend().buffer().clone();
        (text(&b), b)
    }

    fn app(s: crate::summary::Snapshot) -> App {
        App::new(Arc::new(s), Duration::from_secs(5), false)
    }

    #[test]
    fn frames() {
        for (w, h) in [(80, 24), (160, 48)] {
            let (t, _) = render(&app(fixtures::empty()), w, h);
            insta::assert_snapshot!(format!("empty_{w}x{h}"), t);
            let (t, _) = render(&app(fixtures::busy()), w, h);
            insta::assert_snapshot!(format!("leak_{w}x{h}"), t);
            let mut paused = app(fixtures::busy());
            paused.on_key(key(KeyCode::Char('p')));
            let (t, _) = render(&paused, w, h);
            insta::assert_snapshot!(format!("paused_{w}x{h}"), t);
            let (t, _) = render(&app(fixtures::lossy()), w, h);
            insta::assert_snapshot!(format!("loss_{w}x{h}"), t);
        }
    }

    #[test]
    fn the_groups_view_by_workload_names_pods_containers_and_units() {
        let names = fixtures::workload_names();
        let (_, snap) = fixtures::workloads(&names);
        let mut a = app(snap);
        a.view = crate::top::app::View::Groups;
        for _ in 0..crate::recent::WORKLOAD_DIMENSION {
            a.on_key(key(KeyCode::Char('g')));
        }
        let (t, _) = render(&a, 120, 20);
        for want in [
            "Groups by workload",
            "k8s/burstable/9a8b7c6d-1234-4e5f-8a9b-0c1d2e3f4a5b",
            "docker/4f2c9a0b7e1d",
            "nginx.service",
        ] {
            assert!(t.contains(want), "no {want:?} in\n{t}");
        }
        insta::assert_snapshot!("groups_by_workload_120x20", t);
    }

    #[test]
    fn the_listeners_view_shows_queues_counters_and_time_wait() {
        use crate::listeners::{
            Listeners, Netstat,
            tests::{listener, sample},
        };
        let mut l = Listeners::default();
        let n = |o: u64, c: u64| Netstat {
            listen_overflows: o,
            syncookies_sent: c,
            ..Netstat::default()
        };
        l.add_sample(&sample(
            1,
            vec![
                listener("10.0.0.1:8080", 0, 128, 0),
                listener("10.0.0.1:9090", 2, 1, 17),
            ],
            n(100, 5),
        ));
        l.add_sample(&sample(
            2,
            vec![
                listener("10.0.0.1:8080", 1, 128, 0),
                listener("10.0.0.1:9090", 2, 1, 3),
            ],
            n(124, 988),
        ));
        let mut s = fixtures::busy();
        s.summary.listeners = l.summary();
        let mut a = app(s);
        for _ in 0..4 {
            a.on_key(key(KeyCode::Tab));
        }
        assert_eq!(a.view, View::Listeners);
        let (t, _) = render(&a, 120, 24);
        // The fullest listener first, its queue over the limit.
        let full = t.find("10.0.0.1:9090").expect("listener 9090 shown");
        let calm = t.find("10.0.0.1:8080").expect("listener 8080 shown");
        assert!(full < calm, "{t}");
        assert!(t.contains("ListenOverflows +24"), "{t}");
        assert!(t.contains("cookies sent/recv/failed +983/"), "{t}");
        assert!(t.contains("TIME_WAIT 3 (max 3)"), "{t}");
        // The only listener over its limit has the namespace's 24 overflows, inferred.
        assert!(t.contains("OVFL(INFER)"), "{t}");
        assert_eq!(short_ns("/run/netns/lab-b"), "lab-b");
        assert_eq!(short_ns("/proc/1/ns/net"), "/proc/1/ns/net");
        insta::assert_snapshot!("view_listeners_120x24", t);
        // Without samples the view says why it is empty.
        let mut b = app(fixtures::busy());
        for _ in 0..4 {
            b.on_key(key(KeyCode::Tab));
        }
        let (t, _) = render(&b, 120, 24);
        assert!(t.contains("no socket-table samples"), "{t}");
    }

    #[test]
    fn views_and_help() {
        let mut a = app(fixtures::busy());
        for name in ["leaks", "groups", "closed"] {
            a.on_key(key(KeyCode::Tab));
            let (t, _) = render(&a, 80, 24);
            insta::assert_snapshot!(format!("view_{name}_80x24"), t);
        }
        a.on_key(key(KeyCode::Char('?')));
        let (t, _) = render(&a, 80, 24);
        insta::assert_snapshot!("help_80x24", t);
    }

    #[test]
    fn lost_events_are_red() {
        let (t, b) = render(&app(fixtures::lossy()), 80, 24);
        let x = t
            .lines()
            .next()
            .and_then(|l| l.find("lost 17"))
            .expect("lost in header");
        // The header is ASCII up to there, so the byte offset is the column.
        assert_eq!(b[(x as u16, 0)].bg, WARN);
        let (t, b) = render(&app(fixtures::busy()), 80, 24);
        let x = t
            .lines()
            .next()
            .and_then(|l| l.find("lost 0"))
            .expect("lost in header");
        assert_ne!(b[(x as u16, 0)].bg, WARN);
    }

    #[test]
    fn only_the_visible_rows_are_formatted_and_the_selection_stays_in_view() {
        let area = Rect::new(0, 0, 80, 13); // 10 rows between the borders and the header
        assert_eq!(window(area, 1000, Some(0)), (0, 10, Some(0)));
        assert_eq!(window(area, 1000, Some(500)), (491, 10, Some(9)));
        assert_eq!(window(area, 1000, Some(5000)), (990, 10, Some(9)));
        assert_eq!(window(area, 3, None), (0, 3, None));
        assert_eq!(window(area, 0, None), (0, 0, None));
        assert_eq!(window(Rect::new(0, 0, 10, 1), 5, Some(4)), (4, 1, Some(0)));
    }

    #[test]
    fn tiny_and_odd_sizes_never_panic() {
        let mut a = app(fixtures::busy());
        for v in 0..4 {
            for (w, h) in [
                (1, 1),
                (10, 3),
                (39, 7),
                (40, 8),
                (41, 9),
                (80, 12),
                (200, 10),
                (60, 60),
                (300, 100),
            ] {
                let _ = render(&a, w, h);
            }
            a.on_key(key(KeyCode::Tab));
            let _ = v;
        }
        a.on_key(key(KeyCode::Char('?')));
        for (w, h) in [(40, 8), (45, 9), (80, 24)] {
            let _ = render(&a, w, h);
        }
        let (t, _) = render(&a, 30, 5);
        assert!(t.replace('\n', " ").contains("too small"), "{t}");
    }
}
