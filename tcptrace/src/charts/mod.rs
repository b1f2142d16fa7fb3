//! SVG charts of a run (plotters' SVG backend, rendered into a `String`) and an `index.html`
//! that shows the summary table and every chart (the listeners chart only when the run has
//! socket-table samples, the slowest-workloads chart only when sockets' cgroups were known).
//! One module per chart; sizes, fonts and colours live here.
//!
//! Files: [`OutDir::create`] creates the directory and every file before a live run drops
//! its capabilities (see `outfile`), and [`write_dir`] writes them at exit through the
//! open files.
//!
//! Fonts: plotters is built without its `ttf` feature, so it lays text out with a fixed size
//! estimate instead of the machine's font files and writes `<text font-family="sans-serif">`
//! elements: the SVG bytes are the same on every machine (snapshot tests rely on it) and the
//! viewer's browser picks the actual face. Layouts leave room for faces up to ~20% wider than
//! the estimate.

mod handshake;
mod index;
mod listeners;
mod slowest;
mod states;
mod teardown;
mod timeline;

use std::{
    error::Error,
    fs::File,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow};
use hdrhistogram::Histogram;
use plotters::{
    coord::Shift,
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use crate::{
    aggregate::{Aggregate, Stats},
    clock::Clock,
    names::Names,
    summary::{Summary, workload_groups},
    timeline::Timeline,
};

/// Every chart is this size, in pixels.
pub const WIDTH: u32 = 1200;
pub const HEIGHT: u32 = 800;
/// The one font family the SVGs name.
pub const FONT: &str = "sans-serif";
pub const TITLE_SIZE: f64 = 30.0;
pub const CAPTION_SIZE: f64 = 22.0;
pub const LABEL_SIZE: f64 = 19.0;
pub const TICK_SIZE: f64 = 16.0;
pub const NOTE_SIZE: f64 = 16.0;

pub const BACKGROUND: RGBColor = RGBColor(252, 252, 249);
pub const PANEL: RGBColor = RGBColor(255, 255, 255);
pub const INK: RGBColor = RGBColor(34, 34, 34);
pub const MUTED: RGBColor = RGBColor(120, 120, 120);
pub const GRID_LIGHT: RGBColor = RGBColor(238, 238, 238);
pub const GRID_BOLD: RGBColor = RGBColor(215, 215, 215);
pub const CLIENT: RGBColor = RGBColor(31, 119, 180);
pub const SERVER: RGBColor = RGBColor(230, 120, 20);
pub const P50: RGBColor = RGBColor(34, 139, 34);
pub const P90: RGBColor = RGBColor(128, 80, 180);
pub const P99: RGBColor = RGBColor(200, 30, 30);
/// Colours for several series (states, phases), distinguishable and print-safe.
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(230, 120, 20),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(100, 100, 100),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

type DrawResult<T = ()> = std::result::Result<T, Box<dyn Error>>;
/// A chart's renderer.
type RenderFn = fn(&Input<'_>) -> DrawResult<String>;

/// Draws a chart's legend in the house style at `pos`.
pub fn legend<'a, 'b: 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'b>, CT>,
    pos: SeriesLabelPosition,
) -> DrawResult {
    chart
        .configure_series_labels()
        .position(pos)
        .background_style(PANEL.mix(0.9))
        .border_style(GRID_BOLD)
        .label_font(font(TICK_SIZE))
        .draw()?;
    Ok(())
}
type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// Everything the charts draw from.
pub struct Input<'a> {
    pub summary: &'a Summary,
    pub agg: &'a Aggregate,
    pub timeline: &'a Timeline,
    pub clock: &'a Clock,
    /// What was traced (file, host, time), shown under each chart's title.
    pub subtitle: &'a str,
    /// The cgroup groups named and merged into workloads (see `summary::workload_groups`);
    /// empty when no socket's cgroup was known.
    pub workloads: &'a [(String, Stats)],
}

/// One rendered chart.
pub struct Chart {
    pub file: &'static str,
    pub title: &'static str,
    pub svg: String,
}

fn font(size: f64) -> TextStyle<'static> {
    (FONT, size).into_font().color(&INK)
}

fn font_c(size: f64, c: RGBColor) -> TextStyle<'static> {
    (FONT, size).into_font().color(&c)
}

fn bold(size: f64, c: RGBColor) -> TextStyle<'static> {
    (FONT, size, FontStyle::Bold).into_font().color(&c)
}

fn anchored(style: TextStyle<'static>, h: HPos, v: VPos) -> TextStyle<'static> {
    style.pos(Pos::new(h, v))
}

/// Renders one chart into an SVG string: a background, the title, the subtitle, then `draw`
/// on the area below.
fn frame(
    title: &str,
    subtitle: &str,
    draw: impl FnOnce(&Area<'_>) -> DrawResult,
) -> DrawResult<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&BACKGROUND)?;
        root.draw(&Text::new(
            title.to_owned(),
            (24, 14),
            anchored(font(TITLE_SIZE), HPos::Left, VPos::Top),
        ))?;
        root.draw(&Text::new(
            subtitle.to_owned(),
            (24, 52),
            anchored(font_c(NOTE_SIZE, MUTED), HPos::Left, VPos::Top),
        ))?;
        let (_, body) = root.split_vertically(80);
        draw(&body)?;
        root.present()?;
    }
    Ok(svg)
}

/// "No data" in the middle of an area, with a frame, instead of an empty chart.
fn no_data(area: &Area<'_>, caption: &str, why: &str) -> DrawResult {
    let (w, h) = area.dim_in_pixel();
    let (w, h) = (w as i32, h as i32);
    area.draw(&Rectangle::new(
        [(8, 8), (w - 8, h - 8)],
        GRID_BOLD.stroke_width(1),
    ))?;
    if !caption.is_empty() {
        area.draw(&Text::new(
            caption.to_owned(),
            (w / 2, 16),
            anchored(font(CAPTION_SIZE), HPos::Center, VPos::Top),
        ))?;
    }
    area.draw(&Text::new(
        "no data".to_owned(),
        (w / 2, h / 2 - 14),
        anchored(font_c(TITLE_SIZE, MUTED), HPos::Center, VPos::Center),
    ))?;
    area.draw(&Text::new(
        why.to_owned(),
        (w / 2, h / 2 + 22),
        anchored(font_c(NOTE_SIZE, MUTED), HPos::Center, VPos::Center),
    ))?;
    Ok(())
}

/// Milliseconds for labels: about three significant digits.
pub fn fmt_ms(ms: f64) -> String {
    let a = ms.abs();
    if a >= 100.0 {
        format!("{ms:.0}")
    } else if a >= 10.0 {
        format!("{ms:.1}")
    } else if a >= 1.0 {
        format!("{ms:.2}")
    } else if a >= 0.01 {
        format!("{ms:.3}")
    } else {
        format!("{ms:.4}")
    }
}

/// A count with thousands separators.
pub fn fmt_count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Histogram values are microseconds; charts show milliseconds, never below 1 µs (a log axis
/// has no zero).
fn us_to_ms(us: u64) -> f64 {
    us.max(1) as f64 / 1000.0
}

/// Bins per decade of the log-time histograms.
const BINS_PER_DECADE: f64 = 10.0;

/// A histogram re-binned on a log scale: (low ms, high ms, count), in order.
pub fn log_bins(h: &Histogram<u64>) -> Vec<(f64, f64, u64)> {
    let mut bins: Vec<(f64, f64, u64)> = Vec::new();
    for v in h.iter_recorded() {
        let ms = us_to_ms(h.highest_equivalent(v.value_iterated_to()));
        let i = (ms.log10() * BINS_PER_DECADE).floor();
        let lo = 10f64.powf(i / BINS_PER_DECADE);
        let hi = 10f64.powf((i + 1.0) / BINS_PER_DECADE);
        match bins.last_mut() {
            Some(b) if (b.0 - lo).abs() < lo * 1e-9 => b.2 += v.count_at_value(),
            _ => bins.push((lo, hi, v.count_at_value())),
        }
    }
    bins
}

/// The empirical CDF: (ms, fraction at or below), in order.
pub fn cdf(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    let total = h.len().max(1) as f64;
    let mut acc = 0u64;
    let mut pts = Vec::new();
    for v in h.iter_recorded() {
        acc += v.count_at_value();
        pts.push((
            us_to_ms(h.highest_equivalent(v.value_iterated_to())),
            acc as f64 / total,
        ));
    }
    pts
}

/// A log axis range covering `lo..hi` ms, whole decades, never empty.
pub fn decade_range(lo: f64, hi: f64) -> (f64, f64) {
    let lo = 10f64.powf(lo.max(0.001).log10().floor());
    let mut hi = 10f64.powf(hi.max(0.001).log10().ceil());
    if hi <= lo * 1.0001 {
        hi = lo * 10.0;
    }
    (lo, hi)
}

/// Tick positions for a log axis from `lo` to `hi` (both powers of ten): every decade, plus
/// 2x and 5x when the axis spans at most two decades. Plotters' own log key points can drop
/// the lowest decade, leaving an axis with one label.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let decades = (hi / lo).log10().round().max(1.0) as i32;
    let mut v = Vec::new();
    for d in 0..=decades {
        let base = lo * 10f64.powi(d);
        v.push(base);
        if decades <= 2 && d < decades {
            v.push(base * 2.0);
            v.push(base * 5.0);
        }
    }
    v
}

/// Every chart: file name, title, renderer.
const CHARTS: [(&str, &str, RenderFn); 5] = [
    ("handshake.svg", "Handshake latency", handshake::render),
    ("teardown.svg", "Teardown phases", teardown::render),
    ("timeline.svg", "Timeline", timeline::render),
    ("states.svg", "TCP state machine", states::render),
    ("slowest.svg", "Slowest ports and peers", slowest::render),
];

/// The page that shows the summary and every chart.
const INDEX: &str = "index.html";

/// The listeners chart: in the index only when the run has socket-table samples (older
/// recordings and --no-sample runs keep the five charts they always had); its file is
/// created with the others (before a live run drops its capabilities) and says "no data"
/// when nothing was sampled.
const LISTENERS_CHART: (&str, &str, RenderFn) = (
    "listeners.svg",
    "Listeners and TIME_WAIT",
    listeners::render,
);

/// The slowest-workloads chart: in the index only when sockets' cgroups were known (created
/// always, as the listeners chart is).
const WORKLOADS_CHART: (&str, &str, RenderFn) = (
    "workloads.svg",
    "Slowest workloads",
    slowest::render_workloads,
);

/// Renders every chart (the listeners chart only for a sampled run, the workloads chart only
/// when cgroups were known).
pub fn render_all(input: &Input<'_>) -> Result<Vec<Chart>> {
    let sampled = (input.agg.listeners.samples > 0).then_some(LISTENERS_CHART);
    let workloads = input.agg.has_cgroups().then_some(WORKLOADS_CHART);
    CHARTS
        .into_iter()
        .chain(sampled)
        .chain(workloads)
        .map(|(file, title, f)| {
            let svg = f(input).map_err(|e| anyhow!("drawing {file}: {e}"))?;
            Ok(Chart { file, title, svg })
        })
        .collect()
}

/// The chart directory with every file created and open, ready for [`write_dir`].
pub struct OutDir {
    dir: PathBuf,
    files: Vec<(&'static str, File)>,
}

impl OutDir {
    /// Creates `dir` (if missing) and every chart file and `index.html` in it, owned by the
    /// sudo user if any (see `outfile`).
    pub fn create(dir: &Path) -> Result<Self> {
        crate::outfile::create_dir_all(dir)
            .with_context(|| format!("creating --svg directory {}", dir.display()))?;
        let files = CHARTS
            .iter()
            .map(|c| c.0)
            .chain([LISTENERS_CHART.0, WORKLOADS_CHART.0, INDEX])
            .map(|name| {
                let path = dir.join(name);
                crate::outfile::create(&path)
                    .map(|f| (name, f))
                    .with_context(|| format!("creating {}", path.display()))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            dir: dir.to_path_buf(),
            files,
        })
    }

    fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.dir.join(name);
        let (_, f) = self
            .files
            .iter_mut()
            .find(|(n, _)| *n == name)
            .with_context(|| format!("{} was not created", path.display()))?;
        f.write_all(bytes)
            .and_then(|()| f.flush())
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// Writes every chart and `index.html` into the directory [`OutDir::create`] prepared;
/// workloads are named through `names`.
pub fn write_dir(
    mut out: OutDir,
    summary: &Summary,
    agg: &Aggregate,
    timeline: &Timeline,
    clock: &Clock,
    subtitle: &str,
    names: &Names,
) -> Result<()> {
    let workloads = if agg.has_cgroups() {
        workload_groups(agg, names)
    } else {
        Vec::new()
    };
    let input = Input {
        summary,
        agg,
        timeline,
        clock,
        subtitle,
        workloads: &workloads,
    };
    let charts = render_all(&input)?;
    for c in &charts {
        out.write(c.file, c.svg.as_bytes())?;
    }
    if !charts.iter().any(|c| c.file == LISTENERS_CHART.0) {
        // Created ahead like every chart: its "no data" version rather than an empty file.
        let svg = (LISTENERS_CHART.2)(&input)
            .map_err(|e| anyhow!("drawing {}: {e}", LISTENERS_CHART.0))?;
        out.write(LISTENERS_CHART.0, svg.as_bytes())?;
    }
    if !charts.iter().any(|c| c.file == WORKLOADS_CHART.0) {
        let svg = (WORKLOADS_CHART.2)(&input)
            .map_err(|e| anyhow!("drawing {}: {e}", WORKLOADS_CHART.0))?;
        out.write(WORKLOADS_CHART.0, svg.as_bytes())?;
    }
    out.write(INDEX, index::html(&input, &charts).as_bytes())?;
    eprintln!(
        "tcptrace: charts written to {}",
        out.dir.join(INDEX).display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_bins_cover_every_count() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 86_400_000_000, 3).expect("hist");
        for v in [1u64, 5, 50, 500, 5000, 5000, 1_000_000] {
            h.record(v).expect("record");
        }
        let bins = log_bins(&h);
        assert_eq!(bins.iter().map(|b| b.2).sum::<u64>(), 7);
        assert!(bins.windows(2).all(|w| w[0].1 <= w[1].0 * 1.0001));
        let c = cdf(&h);
        assert_eq!(c.last().map(|p| p.1), Some(1.0));
    }

    #[test]
    fn formats_numbers_for_labels() {
        assert_eq!(fmt_count(1_234_567), "1,234,567");
        assert_eq!(fmt_count(12), "12");
        assert_eq!(fmt_ms(1234.4), "1234");
        assert_eq!(fmt_ms(0.0441), "0.044");
        assert_eq!(decade_range(0.044, 0.044), (0.01, 0.1));
    }
}
