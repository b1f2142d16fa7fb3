//! Handshake latency: a histogram on a log time axis and the CDF, client side (connect) and
//! server side (SYN-ACK round trip), with p50/p90/p99 marked.

use plotters::prelude::*;

use super::{
    Area, CAPTION_SIZE, CLIENT, DrawResult, GRID_BOLD, GRID_LIGHT, Input, LABEL_SIZE, P50, P90,
    P99, PANEL, SERVER, TICK_SIZE, cdf, decade_range, fmt_count, fmt_ms, font, frame, legend,
    log_bins, log_ticks, no_data, us_to_ms,
};
use crate::aggregate::Hist;

pub fn render(input: &Input<'_>) -> DrawResult<String> {
    frame("Handshake latency", input.subtitle, |body: &Area<'_>| {
        let rows = body.split_evenly((2, 2));
        let overall = &input.agg.overall;
        let sides = [
            (
                "client (connect: SYN sent to ESTABLISHED)",
                &overall.handshake[0],
                CLIENT,
            ),
            (
                "server (SYN-ACK sent to final ACK)",
                &overall.handshake[1],
                SERVER,
            ),
        ];
        for (i, (name, hist, color)) in sides.into_iter().enumerate() {
            side(&rows[2 * i], &rows[2 * i + 1], name, hist, color)?;
        }
        Ok(())
    })
}

/// The quantile markers: (label, quantile, colour).
const MARKS: [(&str, f64, RGBColor); 3] =
    [("p50", 0.50, P50), ("p90", 0.90, P90), ("p99", 0.99, P99)];

fn side(
    hist_area: &Area<'_>,
    cdf_area: &Area<'_>,
    name: &str,
    hist: &Hist,
    color: RGBColor,
) -> DrawResult {
    let Some(h) = hist.histogram() else {
        no_data(
            hist_area,
            &format!("Histogram, {name}"),
            "no handshakes of this side were measured",
        )?;
        no_data(
            cdf_area,
            &format!("CDF, {name}"),
            "no handshakes of this side were measured",
        )?;
        return Ok(());
    };
    let bins = log_bins(h);
    let (lo, hi) = decade_range(us_to_ms(h.min()), us_to_ms(h.max()));
    let ymax = bins.iter().map(|b| b.2).max().unwrap_or(1) as f64 * 1.15;
    let marks: Vec<(String, f64, RGBColor)> = MARKS
        .iter()
        .map(|(l, q, c)| {
            let v = us_to_ms(h.value_at_quantile(*q));
            (format!("{l} {} ms", fmt_ms(v)), v, *c)
        })
        .collect();

    hist_area.fill(&PANEL)?;
    let mut chart = ChartBuilder::on(hist_area)
        .caption(format!("Histogram, {name}"), font(CAPTION_SIZE))
        .margin(12)
        .margin_right(30)
        .x_label_area_size(52)
        .y_label_area_size(76)
        .build_cartesian_2d(
            (lo..hi).log_scale().with_key_points(log_ticks(lo, hi)),
            0f64..ymax,
        )?;
    chart
        .configure_mesh()
        .light_line_style(GRID_LIGHT)
        .bold_line_style(GRID_BOLD)
        .x_desc("latency (ms, log scale)")
        .y_desc("handshakes")
        .x_labels(8)
        .y_labels(6)
        .x_label_formatter(&|v| fmt_ms(*v))
        .y_label_formatter(&|v| fmt_count(v.round() as u64))
        .label_style(font(TICK_SIZE))
        .axis_desc_style(font(LABEL_SIZE))
        .draw()?;
    chart
        .draw_series(bins.iter().map(|(l, r, n)| {
            Rectangle::new([(*l, 0.0), (*r, *n as f64)], color.mix(0.75).filled())
        }))?
        .label(format!("{} handshakes", fmt_count(h.len())))
        .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
    for (label, v, c) in &marks {
        let c = *c;
        chart
            .draw_series(LineSeries::new([(*v, 0.0), (*v, ymax)], c.stroke_width(2)))?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], c.stroke_width(2)));
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;

    cdf_area.fill(&PANEL)?;
    let mut chart = ChartBuilder::on(cdf_area)
        .caption(format!("CDF, {name}"), font(CAPTION_SIZE))
        .margin(12)
        .margin_right(30)
        .x_label_area_size(52)
        .y_label_area_size(76)
        .build_cartesian_2d(
            (lo..hi).log_scale().with_key_points(log_ticks(lo, hi)),
            0f64..1.0,
        )?;
    chart
        .configure_mesh()
        .light_line_style(GRID_LIGHT)
        .bold_line_style(GRID_BOLD)
        .x_desc("latency (ms, log scale)")
        .y_desc("share of handshakes")
        .x_labels(8)
        .y_labels(6)
        .x_label_formatter(&|v| fmt_ms(*v))
        .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
        .label_style(font(TICK_SIZE))
        .axis_desc_style(font(LABEL_SIZE))
        .draw()?;
    // A step function: flat until the next recorded value.
    let pts = cdf(h);
    let mut steps = Vec::with_capacity(pts.len() * 2 + 1);
    steps.push((lo, 0.0));
    let mut prev = 0.0;
    for (x, y) in &pts {
        steps.push((*x, prev));
        steps.push((*x, *y));
        prev = *y;
    }
    steps.push((hi, prev));
    chart
        .draw_series(LineSeries::new(steps, color.stroke_width(3)))?
        .label("share at or below")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], color.stroke_width(3)));
    for (label, v, c) in &marks {
        let c = *c;
        chart
            .draw_series(LineSeries::new([(*v, 0.0), (*v, 1.0)], c.stroke_width(2)))?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], c.stroke_width(2)));
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    Ok(())
}
