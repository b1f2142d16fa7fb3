//! The slowest remote ports and peers by p99 handshake latency (bars: p99; tick: p50), and
//! the same for workloads (a socket's cgroup named: container, pod, systemd unit, path), by
//! side, in a chart of their own.

use plotters::{
    prelude::*,
    style::text_anchor::{HPos, VPos},
};

use super::{
    Area, CAPTION_SIZE, CLIENT, DrawResult, GRID_BOLD, GRID_LIGHT, Input, LABEL_SIZE, MUTED, P50,
    PANEL, SERVER, TICK_SIZE, anchored, decade_range, fmt_count, fmt_ms, font, font_c, frame,
    legend, log_ticks, no_data, us_to_ms,
};
use crate::{
    aggregate::{GroupKey, Hist},
    track::Side,
};

/// Rows per panel.
pub const TOP_N: usize = 12;

struct Row {
    label: String,
    count: u64,
    p50: f64,
    p99: f64,
    color: RGBColor,
}

fn row(label: String, h: &Hist, color: RGBColor) -> Option<Row> {
    let q = h.quantiles()?;
    Some(Row {
        label,
        count: q.count,
        p50: us_to_ms(q.p50_us),
        p99: us_to_ms(q.p99_us),
        color,
    })
}

fn slowest(mut rows: Vec<Row>) -> Vec<Row> {
    rows.sort_by(|a, b| b.p99.total_cmp(&a.p99).then_with(|| a.label.cmp(&b.label)));
    rows.truncate(TOP_N);
    rows
}

pub fn render(input: &Input<'_>) -> DrawResult<String> {
    let ports = slowest(
        input
            .agg
            .by_remote_port
            .iter()
            .filter_map(|(k, s)| {
                let label = match k {
                    GroupKey::Port(p) => format!("port {p}"),
                    other => other.to_string(),
                };
                row(label, &s.handshake[0], CLIENT)
            })
            .collect(),
    );
    let peers = slowest(
        input
            .timeline
            .peers
            .iter()
            .filter_map(|((ip, side), h)| {
                let (label, c) = match side {
                    Side::Client => (format!("{ip} (we connect)"), CLIENT),
                    Side::Server => (format!("{ip} (connects to us)"), SERVER),
                };
                row(label, h, c)
            })
            .collect(),
    );
    frame(
        "Slowest handshakes by p99",
        input.subtitle,
        |body: &Area<'_>| {
            let (left, right) = body.split_horizontally(body.dim_in_pixel().0 / 2);
            panel(
                &left,
                "Remote ports (client side)",
                &ports,
                "no client handshakes were measured",
            )?;
            panel(
                &right,
                "Peers (remote address)",
                &peers,
                "no handshakes were measured",
            )?;
            Ok(())
        },
    )
}

/// Most characters of a workload label (a pod's name is 50): longer ones keep their end,
/// which tells pods and containers apart.
const LABEL_CHARS: usize = 32;

fn short_label(s: &str) -> String {
    let n = s.chars().count();
    if n <= LABEL_CHARS {
        return s.to_owned();
    }
    let tail: String = s.chars().skip(n - (LABEL_CHARS - 1)).collect();
    format!("…{tail}")
}

/// The slowest workloads by p99 handshake latency: client side (the workload connects) and
/// server side (clients connect to it).
pub fn render_workloads(input: &Input<'_>) -> DrawResult<String> {
    let side = |i: usize, color| {
        slowest(
            input
                .workloads
                .iter()
                .filter_map(|(name, s)| row(short_label(name), &s.handshake[i], color))
                .collect(),
        )
    };
    let (client, server) = (side(0, CLIENT), side(1, SERVER));
    frame(
        "Slowest workloads by p99 handshake",
        input.subtitle,
        |body: &Area<'_>| {
            let (left, right) = body.split_horizontally(body.dim_in_pixel().0 / 2);
            panel(
                &left,
                "Workloads connecting (client side)",
                &client,
                "no client handshakes of sockets with a known cgroup",
            )?;
            panel(
                &right,
                "Workloads connected to (server side)",
                &server,
                "no server handshakes of sockets with a known cgroup",
            )?;
            Ok(())
        },
    )
}

fn panel(area: &Area<'_>, caption: &str, rows: &[Row], why: &str) -> DrawResult {
    if rows.is_empty() {
        return no_data(area, caption, why);
    }
    let lo = rows
        .iter()
        .map(|r| r.p50.min(r.p99))
        .fold(f64::INFINITY, f64::min);
    let hi = rows.iter().map(|r| r.p99).fold(0.0, f64::max);
    let (lo, hi) = decade_range(lo, hi);
    let n = rows.len() as f64;
    area.fill(&PANEL)?;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, font(CAPTION_SIZE))
        .margin(12)
        .margin_right(28)
        .x_label_area_size(52)
        .y_label_area_size(250)
        .build_cartesian_2d(
            (lo..hi).log_scale().with_key_points(log_ticks(lo, hi)),
            0f64..TOP_N.max(rows.len()) as f64,
        )?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .light_line_style(GRID_LIGHT)
        .bold_line_style(GRID_BOLD)
        .x_desc("handshake latency (ms, log scale)")
        .x_labels(6)
        .x_label_formatter(&|v| fmt_ms(*v))
        .label_style(font(TICK_SIZE))
        .axis_desc_style(font(LABEL_SIZE))
        .draw()?;
    let _ = n;
    // Row 0 (the slowest) at the top.
    let top = TOP_N.max(rows.len()) as f64;
    for (i, r) in rows.iter().enumerate() {
        let y0 = top - i as f64 - 0.85;
        let y1 = top - i as f64 - 0.15;
        chart.draw_series([Rectangle::new(
            [(lo, y0), (r.p99, y1)],
            r.color.mix(0.75).filled(),
        )])?;
        chart.draw_series([PathElement::new(
            [(r.p50, y0 - 0.08), (r.p50, y1 + 0.08)],
            P50.stroke_width(4),
        )])?;
        let (bx, by) = area.get_base_pixel();
        let (px, py) = chart.backend_coord(&(lo, (y0 + y1) / 2.0));
        let (px, py) = (px - bx, py - by);
        area.draw(&Text::new(
            r.label.clone(),
            (px - 10, py - 9),
            anchored(font(TICK_SIZE), HPos::Right, VPos::Center),
        ))?;
        area.draw(&Text::new(
            format!("n={}  p99 {} ms", fmt_count(r.count), fmt_ms(r.p99)),
            (px - 10, py + 10),
            anchored(font_c(TICK_SIZE - 3.0, MUTED), HPos::Right, VPos::Center),
        ))?;
    }
    chart
        .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())?
        .label("p99")
        .legend(|(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], CLIENT.mix(0.75).filled()));
    chart
        .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())?
        .label("p50")
        .legend(|(x, y)| Rectangle::new([(x + 6, y - 7), (x + 8, y + 7)], P50.filled()));
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        clock::Clock,
        summary::{Summary, workload_groups},
        timeline::Timeline,
        top::fixtures::{workload_names, workloads},
    };

    #[test]
    fn the_workloads_chart_names_the_slowest_by_side() {
        let names = workload_names();
        let (p, _) = workloads(&names);
        let summary = Summary::of(&p, &Default::default(), 5, &names, 0);
        let groups = workload_groups(p.aggregate(), &names);
        let clock = Clock {
            realtime_offset_ns: 0,
            utc_offset_secs: 0,
        };
        let input = Input {
            summary: &summary,
            agg: p.aggregate(),
            timeline: &Timeline::default(),
            clock: &clock,
            subtitle: "test",
            workloads: &groups,
        };
        let svg = render_workloads(&input).expect("renders");
        insta::assert_snapshot!("workloads.svg", svg);
        for text in [
            "Slowest workloads by p99 handshake",
            // The pod's 50-character name keeps its end.
            "…c6d-1234-4e5f-8a9b-0c1d2e3f4a5b",
            "docker/4f2c9a0b7e1d",
            "nginx.service",
            "Workloads connected to (server side)",
        ] {
            assert!(svg.contains(text), "no {text:?} in the SVG");
        }
        // The pod (p99 1.5 ms) is slower than the docker container (0.5 ms): drawn first.
        assert!(svg.find("…c6d-1234").expect("pod") < svg.find("docker/").expect("docker"));
        // Without cgroups: the "no data" panels.
        let none = Input {
            workloads: &[],
            ..input
        };
        let svg = render_workloads(&none).expect("renders");
        assert!(svg.contains("no client handshakes of sockets with a known cgroup"));
    }

    #[test]
    fn long_labels_keep_their_end() {
        assert_eq!(short_label("nginx.service"), "nginx.service");
        let pod = "k8s/burstable/9a8b7c6d-1234-4e5f-8a9b-0c1d2e3f4a5b";
        let s = short_label(pod);
        assert_eq!(s.chars().count(), LABEL_CHARS);
        assert!(s.starts_with('…') && pod.ends_with(&s[3..]), "{s}");
    }
}
