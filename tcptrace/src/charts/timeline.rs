//! Timeline: connections opened, closed and reset per time bucket, and sockets per state
//! over time.

use plotters::prelude::*;

use super::{
    Area, CAPTION_SIZE, CLIENT, DrawResult, GRID_BOLD, GRID_LIGHT, Input, LABEL_SIZE, P50, P99,
    PALETTE, PANEL, TICK_SIZE, fmt_count, font, frame, legend, no_data,
};
use crate::decode::TcpState;

/// Tick labels on count axes: whole numbers only (no "1, 1, 2, 2" from fractional ticks).
fn int_label(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-6 {
        fmt_count(v.round() as u64)
    } else {
        format!("{v:.1}")
    }
}

pub fn render(input: &Input<'_>) -> DrawResult<String> {
    let t = input.timeline;
    let mut start = String::new();
    if let Some(&first) = t.buckets.keys().next() {
        input.clock.write_rfc3339(&mut start, first);
    }
    frame("Timeline", input.subtitle, |body: &Area<'_>| {
        let (top, bottom) = body.split_vertically(body.dim_in_pixel().1 / 2);
        let (Some(&first), Some(&last)) = (t.buckets.keys().next(), t.buckets.keys().next_back())
        else {
            no_data(
                &top,
                "Connections per second",
                "no connection events in this run",
            )?;
            no_data(
                &bottom,
                "Sockets per state",
                "no state transitions in this run",
            )?;
            return Ok(());
        };
        let w = t.width_ns;
        let w_s = w as f64 / 1e9;
        let per = if w < 1_000_000_000 {
            format!("{} ms", w / 1_000_000)
        } else {
            format!("{w_s:.2} s")
        };
        let xmax = ((last - first + w) as f64 / 1e9).max(w_s);
        let x = |s: u64| (s - first) as f64 / 1e9;
        let xdesc = format!("seconds since {start}");

        // Counts: zero where no bucket exists (a gap), so lines drop to zero across gaps.
        let mut series: [Vec<(f64, f64)>; 3] = Default::default();
        let mut prev: Option<u64> = None;
        for (&s, b) in &t.buckets {
            for (i, v) in [b.opened, b.closed, b.resets].into_iter().enumerate() {
                if let Some(p) = prev
                    && s > p + w
                {
                    series[i].push((x(p + w), 0.0));
                    series[i].push((x(s - w), 0.0));
                }
                series[i].push((x(s), v as f64 / w_s));
            }
            prev = Some(s);
        }
        let ymax = series.iter().flatten().map(|p| p.1).fold(1.0, f64::max) * 1.15;
        top.fill(&PANEL)?;
        let mut chart = ChartBuilder::on(&top)
            .caption(
                format!("Connections per second (counted in {per} buckets)"),
                font(CAPTION_SIZE),
            )
            .margin(12)
            .margin_right(24)
            .x_label_area_size(50)
            .y_label_area_size(86)
            .build_cartesian_2d(0f64..xmax, 0f64..ymax)?;
        chart
            .configure_mesh()
            .light_line_style(GRID_LIGHT)
            .bold_line_style(GRID_BOLD)
            .x_desc(xdesc.clone())
            .y_desc("per second")
            .y_label_formatter(&int_label)
            .x_label_formatter(&|v| format!("{v:.1}"))
            .label_style(font(TICK_SIZE))
            .axis_desc_style(font(LABEL_SIZE))
            .draw()?;
        let few = t.buckets.len() < 60;
        for (i, (name, c)) in [("opened", CLIENT), ("closed", P50), ("reset", P99)]
            .into_iter()
            .enumerate()
        {
            chart
                .draw_series(
                    LineSeries::new(series[i].iter().copied(), c.stroke_width(2))
                        .point_size(if few { 4 } else { 0 }),
                )?
                .label(name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], c.stroke_width(3)));
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight)?;

        // Populations: step lines, held flat across gaps.
        let states: Vec<(usize, TcpState)> = TcpState::ALL
            .iter()
            .enumerate()
            .filter(|(i, _)| t.buckets.values().any(|b| b.population[*i] > 0))
            .map(|(i, s)| (i, *s))
            .collect();
        if states.is_empty() {
            return no_data(
                &bottom,
                "Sockets per state",
                "no socket stayed in a state across a bucket",
            );
        }
        let pmax = t
            .buckets
            .values()
            .flat_map(|b| b.population.iter())
            .copied()
            .max()
            .unwrap_or(1)
            .max(1) as f64
            * 1.15;
        bottom.fill(&PANEL)?;
        let mut chart = ChartBuilder::on(&bottom)
            .caption(
                format!("Sockets per state (at the end of each {per} bucket)"),
                font(CAPTION_SIZE),
            )
            .margin(12)
            .margin_right(24)
            .x_label_area_size(50)
            .y_label_area_size(86)
            .build_cartesian_2d(0f64..xmax, 0f64..pmax)?;
        chart
            .configure_mesh()
            .light_line_style(GRID_LIGHT)
            .bold_line_style(GRID_BOLD)
            .x_desc(xdesc)
            .y_desc("sockets")
            .x_label_formatter(&|v| format!("{v:.1}"))
            .y_label_formatter(&int_label)
            .label_style(font(TICK_SIZE))
            .axis_desc_style(font(LABEL_SIZE))
            .draw()?;
        for (k, (i, state)) in states.into_iter().enumerate() {
            let c = PALETTE[k % PALETTE.len()];
            let mut pts = Vec::with_capacity(t.buckets.len() * 2);
            let mut last_v: Option<f64> = None;
            for (&s, b) in &t.buckets {
                let v = f64::from(b.population[i]);
                if let Some(lv) = last_v {
                    pts.push((x(s), lv));
                }
                pts.push((x(s), v));
                last_v = Some(v);
            }
            if let Some(lv) = last_v {
                pts.push((xmax, lv));
            }
            chart
                .draw_series(LineSeries::new(pts, c.stroke_width(2)))?
                .label(state.name())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], c.stroke_width(3)));
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        Ok(())
    })
}
