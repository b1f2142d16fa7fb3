//! The TCP state machine in the textbook layout (RFC 793 / Stevens): states as boxes,
//! transitions as arrows labelled with their count and the median time spent in the source
//! state; transitions never seen are drawn faint. CLOSE appears twice, as the start (top) and
//! as the end (bottom), so that the many arrows into CLOSE do not cross the diagram.

use plotters::{
    prelude::*,
    style::text_anchor::{HPos, VPos},
};

use super::{
    Area, CLIENT, DrawResult, GRID_BOLD, INK, Input, LABEL_SIZE, MUTED, NOTE_SIZE, PANEL,
    TICK_SIZE, anchored, bold, fmt_count, fmt_ms, font, font_c, frame, us_to_ms,
};
use crate::decode::TcpState::{self, *};

const BOX_W: i32 = 150;
const BOX_H: i32 = 40;

/// A node: which state, and where its centre is (in the body area, 1200 x 720).
#[derive(Clone, Copy, PartialEq)]
enum Node {
    Start,
    End,
    S(TcpState),
}

fn pos(n: Node) -> Option<(i32, i32)> {
    Some(match n {
        Node::Start => (600, 40),
        Node::S(Listen) => (600, 130),
        Node::S(SynRecv) => (270, 230),
        Node::S(SynSent) => (930, 230),
        Node::S(Established) => (600, 330),
        Node::S(FinWait1) => (270, 430),
        Node::S(CloseWait) => (930, 430),
        Node::S(FinWait2) => (130, 540),
        Node::S(Closing) => (430, 540),
        Node::S(LastAck) => (930, 540),
        Node::S(TimeWait) => (270, 640),
        Node::End => (780, 650),
        Node::S(BoundInactive) => (1080, 40),
        _ => return None,
    })
}

fn node_of(s: TcpState, from: bool) -> Node {
    match s {
        Close if from => Node::Start,
        Close => Node::End,
        s => Node::S(s),
    }
}

/// Transitions every textbook diagram draws (drawn faint when not seen).
const TEXTBOOK: [(TcpState, TcpState); 20] = [
    (Close, Listen),
    (Close, SynSent),
    (Listen, SynRecv),
    (Listen, SynSent),
    (SynSent, SynRecv),
    (SynRecv, Established),
    (SynSent, Established),
    (SynRecv, FinWait1),
    (Established, FinWait1),
    (Established, CloseWait),
    (FinWait1, FinWait2),
    (FinWait1, Closing),
    (FinWait1, TimeWait),
    (FinWait2, TimeWait),
    (Closing, TimeWait),
    (CloseWait, LastAck),
    (LastAck, Close),
    (TimeWait, Close),
    (Listen, Close),
    (SynSent, Close),
];

fn boundary(from: (i32, i32), to: (i32, i32)) -> (f64, f64) {
    // Where the segment from the centre `from` towards `to` leaves the box around `from`.
    let (dx, dy) = (f64::from(to.0 - from.0), f64::from(to.1 - from.1));
    let hw = f64::from(BOX_W) / 2.0 + 3.0;
    let hh = f64::from(BOX_H) / 2.0 + 3.0;
    let t = (hw / dx.abs().max(1e-9))
        .min(hh / dy.abs().max(1e-9))
        .min(1.0);
    (f64::from(from.0) + dx * t, f64::from(from.1) + dy * t)
}

pub fn render(input: &Input<'_>) -> DrawResult<String> {
    let edges = &input.agg.edges;
    let mut all: Vec<(TcpState, TcpState)> = TEXTBOOK.to_vec();
    let mut seen: Vec<_> = edges.keys().copied().collect();
    seen.sort();
    for e in seen {
        if !all.contains(&e) {
            all.push(e);
        }
    }
    let unplaced: Vec<String> = all
        .iter()
        .filter(|(a, b)| pos(node_of(*a, true)).is_none() || pos(node_of(*b, false)).is_none())
        .filter_map(|e| {
            edges
                .get(e)
                .map(|x| format!("{} -> {}: {}", e.0, e.1, fmt_count(x.count)))
        })
        .collect();
    frame(
        "TCP state machine, as observed",
        input.subtitle,
        |body: &Area<'_>| {
            body.fill(&PANEL)?;
            let max = edges.values().map(|e| e.count).max().unwrap_or(1).max(1) as f64;
            let mut labels: Vec<((f64, f64, f64, f64), String)> = Vec::new();
            // Faint first, so the seen arrows draw over them.
            let mut order: Vec<_> = all.to_vec();
            order.sort_by_key(|e| edges.contains_key(e));
            for (a, b) in order {
                let (Some(p), Some(q)) = (pos(node_of(a, true)), pos(node_of(b, false))) else {
                    continue;
                };
                let e = edges.get(&(a, b));
                let (color, width) = match e {
                    Some(e) => (
                        CLIENT,
                        1 + (4.0 * (e.count as f64).ln_1p() / max.ln_1p()).round() as u32,
                    ),
                    None => (RGBColor(205, 205, 205), 1),
                };
                let s = boundary(p, q);
                let t = boundary(q, p);
                let (dx, dy) = (t.0 - s.0, t.1 - s.1);
                let len = (dx * dx + dy * dy).sqrt().max(1.0);
                let (ux, uy) = (dx / len, dy / len);
                let head = 12.0 + f64::from(width);
                let base = (t.0 - ux * head, t.1 - uy * head);
                let pt = |x: f64, y: f64| (x.round() as i32, y.round() as i32);
                let style = color.stroke_width(width);
                if e.is_some() {
                    body.draw(&PathElement::new([pt(s.0, s.1), pt(base.0, base.1)], style))?;
                } else {
                    // Dashed: 6 on, 6 off.
                    let n = (len / 12.0).floor() as i32;
                    for k in 0..n {
                        let a0 = f64::from(k) * 12.0;
                        let a1 = (a0 + 6.0).min(len - head);
                        if a1 <= a0 {
                            break;
                        }
                        body.draw(&PathElement::new(
                            [
                                pt(s.0 + ux * a0, s.1 + uy * a0),
                                pt(s.0 + ux * a1, s.1 + uy * a1),
                            ],
                            style,
                        ))?;
                    }
                }
                let w = head * 0.45;
                body.draw(&Polygon::new(
                    vec![
                        pt(t.0, t.1),
                        pt(base.0 - uy * w, base.1 + ux * w),
                        pt(base.0 + uy * w, base.1 - ux * w),
                    ],
                    color.filled(),
                ))?;
                if let Some(e) = e {
                    let text = match e.dwell.quantiles() {
                        Some(q) => format!(
                            "{} | p50 {} ms",
                            fmt_count(e.count),
                            fmt_ms(us_to_ms(q.p50_us))
                        ),
                        // Leaving CLOSE: the time before the socket existed is not a dwell.
                        None => fmt_count(e.count),
                    };
                    labels.push(((s.0, s.1, dx, dy), text));
                }
            }
            // Boxes over the arrows' ends, labels over everything.
            let nodes = [
                Node::Start,
                Node::S(Listen),
                Node::S(SynRecv),
                Node::S(SynSent),
                Node::S(Established),
                Node::S(FinWait1),
                Node::S(CloseWait),
                Node::S(FinWait2),
                Node::S(Closing),
                Node::S(LastAck),
                Node::S(TimeWait),
                Node::End,
                Node::S(BoundInactive),
            ];
            for n in nodes {
                let Some((x, y)) = pos(n) else { continue };
                let name = match n {
                    Node::Start => "CLOSE (start)".to_owned(),
                    Node::End => "CLOSE (end)".to_owned(),
                    Node::S(s) => s.name().to_owned(),
                };
                let used = edges
                    .keys()
                    .any(|(a, b)| node_of(*a, true) == n || node_of(*b, false) == n);
                if n == Node::S(BoundInactive) && !used {
                    continue;
                }
                let (fill, ink) = if used {
                    (RGBColor(232, 241, 250), INK)
                } else {
                    (RGBColor(246, 246, 246), MUTED)
                };
                body.draw(&Rectangle::new(
                    [
                        (x - BOX_W / 2, y - BOX_H / 2),
                        (x + BOX_W / 2, y + BOX_H / 2),
                    ],
                    fill.filled(),
                ))?;
                body.draw(&Rectangle::new(
                    [
                        (x - BOX_W / 2, y - BOX_H / 2),
                        (x + BOX_W / 2, y + BOX_H / 2),
                    ],
                    if used {
                        INK.stroke_width(2)
                    } else {
                        GRID_BOLD.stroke_width(1)
                    },
                ))?;
                body.draw(&Text::new(
                    name,
                    (x, y),
                    anchored(bold(LABEL_SIZE, ink), HPos::Center, VPos::Center),
                ))?;
            }
            // Place each label on its arrow where it overlaps no box and no earlier label:
            // the middle if free, else the nearest free point along the arrow.
            let boxes: Vec<(i32, i32, i32, i32)> = nodes
                .iter()
                .filter_map(|n| pos(*n))
                .map(|(x, y)| (x - BOX_W / 2, y - BOX_H / 2, x + BOX_W / 2, y + BOX_H / 2))
                .collect();
            let mut placed: Vec<(i32, i32, i32, i32)> = Vec::new();
            let overlaps = |a: (i32, i32, i32, i32), b: &(i32, i32, i32, i32)| {
                a.0 < b.2 && b.0 < a.2 && a.1 < b.3 && b.1 < a.3
            };
            for ((sx, sy, dx, dy), text) in labels {
                let w = (text.len() as f64 * TICK_SIZE * 0.52) as i32 + 10;
                let at = |t: f64| ((sx + dx * t).round() as i32, (sy + dy * t).round() as i32);
                let rect = |(x, y): (i32, i32)| (x - w / 2, y - 11, x + w / 2, y + 11);
                let (x, y) = [0.5, 0.4, 0.6, 0.3, 0.7, 0.22, 0.78, 0.15, 0.85]
                    .into_iter()
                    .map(at)
                    .find(|p| {
                        let r = rect(*p);
                        !boxes.iter().chain(placed.iter()).any(|b| overlaps(r, b))
                    })
                    .unwrap_or_else(|| at(0.5));
                placed.push(rect((x, y)));
                body.draw(&Rectangle::new(
                    [(x - w / 2, y - 11), (x + w / 2, y + 11)],
                    PANEL.mix(0.92).filled(),
                ))?;
                body.draw(&Text::new(
                    text,
                    (x, y),
                    anchored(font(TICK_SIZE), HPos::Center, VPos::Center),
                ))?;
            }
            let notes = [
            "Arrow label: transitions seen | median time in the source state. Width grows with the count; faint dashed arrows were never seen.".to_owned(),
            "Linux hands a closing socket over to a TIME_WAIT mini-socket: FIN_WAIT2 -> CLOSE is that hand-over; the mini-socket's end is not reported.".to_owned(),
        ];
            for (i, n) in notes
                .into_iter()
                .chain(
                    unplaced
                        .first()
                        .map(|_| format!("Other transitions: {}", unplaced.join(", "))),
                )
                .enumerate()
            {
                body.draw(&Text::new(
                    n,
                    (24, 688 + 18 * i as i32 - 18),
                    anchored(font_c(NOTE_SIZE - 3.0, MUTED), HPos::Left, VPos::Top),
                ))?;
            }
            let _ = NOTE_SIZE;
            Ok(())
        },
    )
}
