//! Listeners over time, from the socket-table samples: for the listeners under most pressure
//! (up to [`PANELS`]), the accept queue against its limit, the SYN_RECV count, and the
//! overflow drops (exact, from kfree_skb), the ListenOverflows inferred to it (see
//! `listeners::attribute`) and SYN cookies sent in each sample's interval; below them, the TIME_WAIT
//! population of each namespace. Drawn only when the run has samples.

use plotters::prelude::*;

use super::{
    Area, CAPTION_SIZE, DrawResult, GRID_BOLD, GRID_LIGHT, Input, LABEL_SIZE, PALETTE, PANEL,
    TICK_SIZE, font, frame, legend, no_data,
};
use crate::listeners::{ListenerKey, ListenerStats};

/// One line of a panel: its name, colour and points.
type Series = (&'static str, RGBColor, Vec<(f64, f64)>);

/// Most listener panels drawn.
pub const PANELS: usize = 3;

pub fn render(input: &Input<'_>) -> DrawResult<String> {
    let l = &input.agg.listeners;
    let mut chosen: Vec<(&ListenerKey, &ListenerStats)> = l
        .listeners
        .iter()
        .filter(|(k, s)| l.in_scope(k, s))
        .collect();
    // Under most pressure first: fullest accept queue, then most SYN_RECV, then drops.
    chosen.sort_by_key(|(_, s)| {
        std::cmp::Reverse((
            u64::from(s.accept_max) * 1000 / u64::from(s.backlog.max(1)),
            s.syn_recv_max,
            s.overflow_drops + s.inferred_overflows,
        ))
    });
    chosen.truncate(PANELS);
    let first = l
        .listeners
        .values()
        .flat_map(|s| s.history.first().map(|p| p.ts_ns))
        .chain(
            l.namespaces
                .values()
                .flat_map(|n| n.history.first().map(|p| p.ts_ns)),
        )
        .min()
        .unwrap_or(0);
    let last = l
        .namespaces
        .values()
        .flat_map(|n| n.history.last().map(|p| p.ts_ns))
        .max()
        .unwrap_or(first);
    let xmax = ((last.saturating_sub(first)) as f64 / 1e9).max(1.0);
    let x = move |ts: u64| ts.saturating_sub(first) as f64 / 1e9;
    frame("Listeners", input.subtitle, |body: &Area<'_>| {
        let rows = chosen.len().max(1) + 1;
        let panels = body.split_evenly((rows, 1));
        for (i, area) in panels.iter().enumerate().take(rows - 1) {
            let Some((key, s)) = chosen.get(i) else {
                no_data(area, "Listeners", "no listener was sampled")?;
                continue;
            };
            let ymax = s
                .history
                .iter()
                .map(|p| {
                    u64::from(p.accept_queue.max(p.backlog).max(p.syn_recv))
                        .max(p.drops)
                        .max(p.inferred_overflows)
                        .max(p.cookies)
                })
                .max()
                .unwrap_or(1)
                .max(1) as f64
                * 1.15;
            area.fill(&PANEL)?;
            let mut chart = ChartBuilder::on(area)
                .caption(
                    format!(
                        "{} (netns {}): accept queue max {} of {}, SYN_RECV max {}, {} overflow drops (kfree_skb), {} overflows inferred",
                        key.local, s.netns_name, s.accept_max, s.backlog, s.syn_recv_max,
                        s.overflow_drops, s.inferred_overflows
                    ),
                    font(CAPTION_SIZE * 0.8),
                )
                .margin(8)
                .margin_right(24)
                .x_label_area_size(36)
                .y_label_area_size(70)
                .build_cartesian_2d(0f64..xmax, 0f64..ymax)?;
            chart
                .configure_mesh()
                .light_line_style(GRID_LIGHT)
                .bold_line_style(GRID_BOLD)
                .y_desc("sockets / per sample")
                .x_label_formatter(&|v| format!("{v:.0}"))
                .y_label_formatter(&|v| format!("{v:.0}"))
                .label_style(font(TICK_SIZE))
                .axis_desc_style(font(LABEL_SIZE * 0.8))
                .draw()?;
            let series: [Series; 6] = [
                (
                    "accept queue",
                    PALETTE[0],
                    s.history
                        .iter()
                        .map(|p| (x(p.ts_ns), f64::from(p.accept_queue)))
                        .collect(),
                ),
                (
                    "limit",
                    PALETTE[7],
                    s.history
                        .iter()
                        .map(|p| (x(p.ts_ns), f64::from(p.backlog)))
                        .collect(),
                ),
                (
                    "SYN_RECV",
                    PALETTE[1],
                    s.history
                        .iter()
                        .map(|p| (x(p.ts_ns), f64::from(p.syn_recv)))
                        .collect(),
                ),
                (
                    "ListenOverflows inferred (only listener full)",
                    PALETTE[5],
                    s.history
                        .iter()
                        .map(|p| (x(p.ts_ns), p.inferred_overflows as f64))
                        .collect(),
                ),
                (
                    "overflow drops (kfree_skb)",
                    PALETTE[3],
                    s.history
                        .iter()
                        .map(|p| (x(p.ts_ns), p.drops as f64))
                        .collect(),
                ),
                (
                    "cookies sent (netns)",
                    PALETTE[4],
                    s.history
                        .iter()
                        .map(|p| (x(p.ts_ns), p.cookies as f64))
                        .collect(),
                ),
            ];
            for (name, c, pts) in series {
                chart
                    .draw_series(LineSeries::new(pts, c.stroke_width(2)))?
                    .label(name)
                    .legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 16, y)], c.stroke_width(3))
                    });
            }
            legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        }
        let area = &panels[rows - 1];
        if l.namespaces.values().all(|n| n.history.is_empty()) {
            return no_data(area, "TIME_WAIT", "no namespace was sampled");
        }
        let ymax = l
            .namespaces
            .values()
            .flat_map(|n| n.history.iter().map(|p| p.count))
            .max()
            .unwrap_or(1)
            .max(1) as f64
            * 1.15;
        area.fill(&PANEL)?;
        let mut chart = ChartBuilder::on(area)
            .caption(
                "Sockets in TIME_WAIT, per namespace",
                font(CAPTION_SIZE * 0.8),
            )
            .margin(8)
            .margin_right(24)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..xmax, 0f64..ymax)?;
        chart
            .configure_mesh()
            .light_line_style(GRID_LIGHT)
            .bold_line_style(GRID_BOLD)
            .x_desc("seconds since the first sample")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style(font(TICK_SIZE))
            .axis_desc_style(font(LABEL_SIZE * 0.8))
            .draw()?;
        for (i, ns) in l.namespaces.values().enumerate() {
            let c = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(
                    ns.history.iter().map(|p| (x(p.ts_ns), f64::from(p.count))),
                    c.stroke_width(2),
                ))?
                .label(ns.name.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], c.stroke_width(3)));
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        aggregate::Aggregate,
        clock::Clock,
        listeners::{
            Netstat,
            tests::{listener, sample},
        },
        summary::Summary,
        timeline::Timeline,
    };

    #[test]
    fn draws_a_panel_per_pressured_listener_and_time_wait() {
        let mut agg = Aggregate::default();
        for t in 1..=5u64 {
            agg.add_sample(&sample(
                t,
                vec![
                    listener("10.0.0.1:8080", (t % 3) as u32, 1, 17),
                    listener("10.0.0.1:80", 0, 128, 0),
                ],
                Netstat {
                    syncookies_sent: t * 100,
                    ..Netstat::default()
                },
            ));
        }
        let summary = Summary::build(
            &agg,
            &Default::default(),
            0,
            &crate::track::Tracker::new(Default::default()),
            5,
        );
        let clock = Clock {
            realtime_offset_ns: 0,
            utc_offset_secs: 0,
        };
        let input = Input {
            summary: &summary,
            agg: &agg,
            timeline: &Timeline::default(),
            clock: &clock,
            subtitle: "test",
            workloads: &[],
        };
        let svg = render(&input).expect("renders");
        assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
        for text in [
            "10.0.0.1:8080 (netns host): accept queue max 2 of 1, SYN_RECV max 17",
            "10.0.0.1:80 (netns host)",
            "Sockets in TIME_WAIT, per namespace",
            "cookies sent (netns)",
        ] {
            assert!(svg.contains(text), "no {text:?} in the SVG");
        }
        // The fullest listener is drawn first.
        assert!(svg.find("10.0.0.1:8080").expect("8080") < svg.find("10.0.0.1:80 ").expect("80"));
    }
}
