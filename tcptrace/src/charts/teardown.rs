//! Teardown: the distribution of each phase's dwell (FIN_WAIT1, FIN_WAIT2, CLOSING,
//! CLOSE_WAIT, LAST_ACK) side by side, as log-scale violins with p50/p90/p99 ticks.

use plotters::{
    prelude::*,
    style::text_anchor::{HPos, VPos},
};

use super::{
    Area, DrawResult, GRID_BOLD, GRID_LIGHT, INK, Input, LABEL_SIZE, MUTED, NOTE_SIZE, P50, P90,
    P99, PALETTE, PANEL, TICK_SIZE, anchored, bold, decade_range, fmt_count, fmt_ms, font, font_c,
    frame, legend, log_bins, log_ticks, no_data, us_to_ms,
};
use crate::track::PHASES;

pub fn render(input: &Input<'_>) -> DrawResult<String> {
    frame(
        "Teardown phases: time spent in each state",
        input.subtitle,
        |body: &Area<'_>| {
            let phases = &input.agg.overall.phases;
            let present: Vec<_> = phases.iter().filter_map(|h| h.histogram()).collect();
            if present.is_empty() {
                return no_data(body, "", "no connection went through a teardown phase");
            }
            let lo = present
                .iter()
                .map(|h| us_to_ms(h.min()))
                .fold(f64::INFINITY, f64::min);
            let hi = present
                .iter()
                .map(|h| us_to_ms(h.max()))
                .fold(0.0, f64::max);
            let (lo, hi) = decade_range(lo, hi);
            let (plot, notes) = body.split_vertically(body.dim_in_pixel().1 - 44);
            plot.fill(&PANEL)?;
            let mut chart = ChartBuilder::on(&plot)
                .margin(12)
                .margin_right(24)
                .x_label_area_size(110)
                .y_label_area_size(86)
                .build_cartesian_2d(
                    0f64..5.0,
                    (lo..hi).log_scale().with_key_points(log_ticks(lo, hi)),
                )?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(0)
                .light_line_style(GRID_LIGHT)
                .bold_line_style(GRID_BOLD)
                .y_desc("time in state (ms, log scale)")
                .y_label_formatter(&|v| fmt_ms(*v))
                .label_style(font(TICK_SIZE))
                .axis_desc_style(font(LABEL_SIZE))
                .draw()?;
            for (label, c) in [("p50", P50), ("p90", P90), ("p99", P99)] {
                chart
                    .draw_series(std::iter::empty::<PathElement<(f64, f64)>>())?
                    .label(label)
                    .legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 16, y)], c.stroke_width(3))
                    });
            }
            for (i, (phase, hist)) in PHASES.iter().zip(phases).enumerate() {
                let x = i as f64 + 0.5;
                let (bx, by) = plot.get_base_pixel();
                let (px, py) = chart.backend_coord(&(x, lo));
                let (px, py) = (px - bx, py - by);
                let line = |dy: i32, text: String, style: TextStyle<'static>| {
                    plot.draw(&Text::new(
                        text,
                        (px, py + dy),
                        anchored(style, HPos::Center, VPos::Top),
                    ))
                };
                line(10, phase.name().to_owned(), bold(LABEL_SIZE, INK))?;
                let Some(h) = hist.histogram() else {
                    line(36, "no data".to_owned(), font_c(TICK_SIZE, MUTED))?;
                    continue;
                };
                let q = |q: f64| fmt_ms(us_to_ms(h.value_at_quantile(q)));
                line(36, format!("n = {}", fmt_count(h.len())), font(TICK_SIZE))?;
                line(58, format!("p50 {} ms", q(0.5)), font_c(TICK_SIZE, P50))?;
                line(80, format!("p99 {} ms", q(0.99)), font_c(TICK_SIZE, P99))?;
                let bins = log_bins(h);
                let max = bins.iter().map(|b| b.2).max().unwrap_or(1) as f64;
                let color = PALETTE[i];
                chart.draw_series(bins.iter().map(|(l, r, n)| {
                    let w = 0.42 * (*n as f64 / max).sqrt().max(0.04);
                    Rectangle::new([(x - w, *l), (x + w, *r)], color.mix(0.7).filled())
                }))?;
                for (qv, c) in [(0.5, P50), (0.9, P90), (0.99, P99)] {
                    let v = us_to_ms(h.value_at_quantile(qv));
                    chart.draw_series(LineSeries::new(
                        [(x - 0.45, v), (x + 0.45, v)],
                        c.stroke_width(3),
                    ))?;
                }
            }
            legend(&mut chart, SeriesLabelPosition::UpperRight)?;
            notes.draw(&Text::new(
            "Active close: FIN_WAIT1 then FIN_WAIT2 (TIME_WAIT follows in a mini-socket no tracepoint reports). Passive close: CLOSE_WAIT (the application's".to_owned(),
            (24, 2),
            anchored(font_c(NOTE_SIZE - 2.0, MUTED), HPos::Left, VPos::Top),
        ))?;
            notes.draw(&Text::new(
            "delay in calling close()) then LAST_ACK. CLOSING: both ends closed at once. Violin width: share of connections at that time (square root).".to_owned(),
            (24, 22),
            anchored(font_c(NOTE_SIZE - 2.0, MUTED), HPos::Left, VPos::Top),
        ))?;
            Ok(())
        },
    )
}
