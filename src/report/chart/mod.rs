//! The few chart kinds probes need, each a plain struct with pub fields (and `Default`, so
//! `..Default::default()` works) and a `save(dir, stem)` that writes `stem.png` and `stem.svg`
//! (1000×700, atomically) and returns both paths.
//!
//! Text is drawn with the DejaVu Sans font shipped in `assets/fonts/` (registered with plotters
//! once, on first use), so charts render the same on every machine.
//!
//! ```no_run
//! use engram::report::chart::{Heatmap, Colormap};
//! let h = Heatmap {
//!     title: "Induction score by head".into(),
//!     x_label: "head".into(),
//!     y_label: "layer".into(),
//!     values: vec![vec![0.1, 0.9], vec![0.4, f64::NAN]],
//!     colormap: Colormap::Viridis,
//!     ..Default::default()
//! };
//! let paths = h.save(std::path::Path::new("out"), "induction")?; // out/induction.{png,svg}
//! # Ok::<(), engram::Error>(())
//! ```
//!
//! Layout: this module holds what the chart kinds share (size, fonts, the PNG + SVG save path,
//! palette, number formatting and ticks, label layout, legend placement, [`Colormap`]); each
//! kind lives in its own file (`heatmap.rs`, `line.rs`, `bar.rs`, `scatter.rs`,
//! `histogram.rs`) and is re-exported here, so `chart::Heatmap` etc. are the public paths.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontTransform;

use super::{write_atomic, write_atomic_path};
use crate::{Error, Result};

/// Chart size in pixels (PNG) and user units (SVG).
pub const WIDTH: u32 = 1000;
pub const HEIGHT: u32 = 700;

static FONT_BYTES: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");
static FONT_INIT: Once = Once::new();

/// Register the bundled font with plotters under the generic family names. Idempotent; called by
/// every `save`, and safe to call from anywhere before drawing text with plotters directly.
pub fn register_fonts() {
    FONT_INIT.call_once(|| {
        for family in ["sans-serif", "serif", "monospace", "DejaVu Sans"] {
            // The font is compiled in and known to parse; failure here would be a build defect.
            if plotters::style::register_font(family, FontStyle::Normal, FONT_BYTES).is_err() {
                panic!("bundled font assets/fonts/DejaVuSans.ttf does not parse");
            }
        }
    });
}

type DResult = std::result::Result<(), Box<dyn StdError>>;

/// One chart kind: how to draw it on any plotters backend.
trait Render {
    fn render<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DResult
    where
        DB::ErrorType: 'static;
}

fn draw_err(path: &Path, e: Box<dyn StdError>) -> Error {
    Error::msg(format!("{}: drawing chart: {e}", path.display()))
}

/// Render `chart` to `dir/stem.png` and `dir/stem.svg`, each atomically.
fn save_chart<C: Render>(chart: &C, dir: &Path, stem: &str) -> Result<Vec<PathBuf>> {
    register_fonts();
    let png = dir.join(format!("{stem}.png"));
    let svg = dir.join(format!("{stem}.svg"));

    write_atomic_path(&png, |tmp| {
        let run = || -> DResult {
            let root = BitMapBackend::new(tmp, (WIDTH, HEIGHT)).into_drawing_area();
            root.fill(&WHITE)?;
            chart.render(&root)?;
            root.present()?;
            Ok(())
        };
        run().map_err(|e| draw_err(&png, e))
    })?;

    let mut text = String::new();
    {
        let run = |s: &mut String| -> DResult {
            let root = SVGBackend::with_string(s, (WIDTH, HEIGHT)).into_drawing_area();
            root.fill(&WHITE)?;
            chart.render(&root)?;
            root.present()?;
            Ok(())
        };
        run(&mut text).map_err(|e| draw_err(&svg, e))?;
    }
    write_atomic(&svg, text.as_bytes())?;
    Ok(vec![png, svg])
}

// ---------------------------------------------------------------------------------------------
// Shared style and helpers
// ---------------------------------------------------------------------------------------------

const TITLE_SIZE: f64 = 24.0;
const DESC_SIZE: f64 = 18.0;
const TICK_SIZE: f64 = 14.0;
const LEGEND_SIZE: f64 = 15.0;
const GRID: RGBColor = RGBColor(226, 226, 226);
const AXIS: RGBColor = RGBColor(60, 60, 60);
const NAN_GREY: RGBColor = RGBColor(170, 170, 170);

/// matplotlib's tab10, the categorical palette everyone recognises.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn font(size: f64) -> FontDesc<'static> {
    FontDesc::new(FontFamily::SansSerif, size, FontStyle::Normal)
}

fn text_style(size: f64, h: HPos, v: VPos) -> TextStyle<'static> {
    font(size).color(&BLACK).pos(Pos::new(h, v))
}

fn rotated_style(size: f64, h: HPos, v: VPos) -> TextStyle<'static> {
    font(size)
        .transform(FontTransform::Rotate270)
        .color(&BLACK)
        .pos(Pos::new(h, v))
}

/// Numbers for tick labels: up to 6 significant digits, trailing zeros trimmed, scientific
/// notation outside [1e-3, 1e5).
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    if v == 0.0 {
        return "0".to_string();
    }
    let a = v.abs();
    let s = if !(1e-3..1e5).contains(&a) {
        let s = format!("{v:.2e}");
        match s.split_once('e') {
            Some((m, e)) => {
                let m = trim_zeros(m);
                format!("{m}e{e}")
            }
            None => s,
        }
    } else {
        let decimals = (5 - a.log10().floor() as i32).clamp(0, 8) as usize;
        trim_zeros(&format!("{v:.decimals$}"))
    };
    if s == "-0" {
        "0".to_string()
    } else {
        s
    }
}

fn trim_zeros(s: &str) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s.to_string()
    }
}

/// A "nice" step (1, 2, 2.5, 5 × 10^k) giving about `target` intervals over `span`.
fn nice_step(span: f64, target: usize) -> f64 {
    let raw = (span / target.max(1) as f64).abs();
    if raw == 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let r = raw / mag;
    let n = if r <= 1.0 {
        1.0
    } else if r <= 2.0 {
        2.0
    } else if r <= 2.5 {
        2.5
    } else if r <= 5.0 {
        5.0
    } else {
        10.0
    };
    n * mag
}

/// Nice tick values inside [lo, hi].
fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    let step = nice_step(hi - lo, target);
    let first = (lo / step).ceil();
    let last = (hi / step).floor();
    let mut out = Vec::new();
    let mut k = first;
    while k <= last + 1e-9 && out.len() < 100 {
        let v = k * step;
        // Snap -0.0 and rounding noise near zero.
        out.push(if v.abs() < step * 1e-9 { 0.0 } else { v });
        k += 1.0;
    }
    out
}

/// Finite min/max of some values, or None.
fn finite_min_max(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

/// An axis range covering the values with a little padding; degenerate cases widened.
fn padded_range(mm: Option<(f64, f64)>, pad_frac: f64) -> (f64, f64) {
    match mm {
        None => (0.0, 1.0),
        Some((lo, hi)) if hi - lo <= f64::EPSILON * lo.abs().max(1.0) => {
            let d = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
            (lo - d, hi + d)
        }
        Some((lo, hi)) => {
            let p = (hi - lo) * pad_frac;
            (lo - p, hi + p)
        }
    }
}

fn text_width<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, s: &str, size: f64) -> u32 {
    root.estimate_text_size(s, &font(size).into())
        .map(|(w, _)| w)
        .unwrap_or((s.chars().count() as f64 * size * 0.6) as u32)
}

/// Shorten long labels (token strings, feature names) and make control characters visible.
fn clean_label(s: &str, max_chars: usize) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push('?'),
            c => out.push(c),
        }
    }
    if out.chars().count() > max_chars {
        let mut t: String = out.chars().take(max_chars.saturating_sub(1)).collect();
        t.push('…');
        t
    } else {
        out
    }
}

/// Which plot corner holds the fewest points (points normalised to [0,1]², y up); the legend
/// goes there. Ties prefer upper right.
fn legend_corner(points: impl IntoIterator<Item = (f64, f64)>) -> SeriesLabelPosition {
    let mut counts = [0usize; 4]; // UR, UL, LR, LL
    for (x, y) in points {
        if !(x.is_finite() && y.is_finite()) {
            continue;
        }
        let right = x > 0.6;
        let left = x < 0.4;
        let upper = y > 0.6;
        let lower = y < 0.4;
        if upper && right {
            counts[0] += 1;
        }
        if upper && left {
            counts[1] += 1;
        }
        if lower && right {
            counts[2] += 1;
        }
        if lower && left {
            counts[3] += 1;
        }
    }
    let best = (0..4).min_by_key(|&i| (counts[i], i)).unwrap_or(0);
    match best {
        0 => SeriesLabelPosition::UpperRight,
        1 => SeriesLabelPosition::UpperLeft,
        2 => SeriesLabelPosition::LowerRight,
        _ => SeriesLabelPosition::LowerLeft,
    }
}

/// Width of the y label area for a mesh chart: widest tick label plus room for the axis title.
fn y_area_width<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, lo: f64, hi: f64) -> u32 {
    let w = nice_ticks(lo, hi, 8)
        .into_iter()
        .chain([lo, hi])
        .map(|v| text_width(root, &fmt_num(v), TICK_SIZE))
        .max()
        .unwrap_or(30);
    (w + 48).max(70)
}

// The chart-kind submodules call these two macros, so they name this module's items by full path.
macro_rules! draw_mesh {
    ($chart:expr, $x_label:expr, $y_label:expr, $n_xlabels:expr) => {
        $chart
            .configure_mesh()
            .x_desc($x_label)
            .y_desc($y_label)
            .axis_desc_style($crate::report::chart::font(
                $crate::report::chart::DESC_SIZE,
            ))
            .label_style($crate::report::chart::font(
                $crate::report::chart::TICK_SIZE,
            ))
            .bold_line_style($crate::report::chart::GRID)
            .light_line_style(TRANSPARENT)
            .axis_style($crate::report::chart::AXIS)
            .x_labels($n_xlabels)
            .y_labels(8)
            .x_label_formatter(&|v| $crate::report::chart::fmt_num(*v))
            .y_label_formatter(&|v| $crate::report::chart::fmt_num(*v))
            .draw()?
    };
}

macro_rules! draw_legend {
    ($chart:expr, $pos:expr) => {
        $chart
            .configure_series_labels()
            .position($pos)
            .margin(12)
            .legend_area_size(28)
            .label_font($crate::report::chart::font(
                $crate::report::chart::LEGEND_SIZE,
            ))
            .background_style(WHITE.mix(0.88))
            .border_style(RGBColor(160, 160, 160))
            .draw()?
    };
}

/// Category labels under a plot at the given pixel x positions; rotated when they do not fit.
/// Returns nothing; `y` is the pixel row of the plot's bottom edge.
fn draw_category_labels<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    labels: &[String],
    xs: &[i32],
    y: i32,
    rotate: bool,
    stride: usize,
) -> DResult
where
    DB::ErrorType: 'static,
{
    for (i, (label, &x)) in labels.iter().zip(xs).enumerate() {
        if i % stride != 0 {
            continue;
        }
        root.draw(&PathElement::new(vec![(x, y), (x, y + 5)], AXIS))?;
        if rotate {
            root.draw_text(
                label,
                &rotated_style(TICK_SIZE, HPos::Right, VPos::Center),
                (x, y + 9),
            )?;
        } else {
            root.draw_text(
                label,
                &text_style(TICK_SIZE, HPos::Center, VPos::Top),
                (x, y + 8),
            )?;
        }
    }
    Ok(())
}

/// How to lay out `n` category labels over `span` pixels: (rotate, stride, pixels needed below
/// the axis for the labels).
fn category_layout(max_label_w: u32, n: usize, span: f64, numeric: bool) -> (bool, usize, u32) {
    let cell = span / n.max(1) as f64;
    let line = TICK_SIZE * 1.3;
    let horizontal_stride = ((max_label_w as f64 + 10.0) / cell).ceil().max(1.0) as usize;
    if numeric || horizontal_stride == 1 {
        let stride = if numeric {
            nice_int_stride(horizontal_stride)
        } else {
            horizontal_stride
        };
        (false, stride, (line + 12.0) as u32)
    } else {
        let stride = (line / cell).ceil().max(1.0) as usize;
        (true, stride, max_label_w + 16)
    }
}

/// Smallest of 1, 2, 5, 10, 20, 50, ... that is ≥ k.
fn nice_int_stride(k: usize) -> usize {
    let mut base = 1usize;
    loop {
        for m in [1, 2, 5] {
            if base * m >= k {
                return base * m;
            }
        }
        base *= 10;
    }
}

/// `points` mapped into the unit square spanned by the x and y ranges (for [`legend_corner`]).
fn normalise(
    points: impl Iterator<Item = (f64, f64)>,
    (xl, xh): (f64, f64),
    (yl, yh): (f64, f64),
) -> impl Iterator<Item = (f64, f64)> {
    points.map(move |(x, y)| ((x - xl) / (xh - xl), (y - yl) / (yh - yl)))
}

// ---------------------------------------------------------------------------------------------
// Heatmap
// ---------------------------------------------------------------------------------------------

/// Colour maps for heatmaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Colormap {
    /// Perceptually uniform, dark blue → yellow. For scores and magnitudes.
    #[default]
    Viridis,
    /// Black → purple → cream. For densities and attention weights.
    Magma,
    /// White → black.
    Greys,
    /// Blue (low) → white → red (high), ColorBrewer RdBu. For signed values; when `range` is
    /// `None` the range is made symmetric around 0 so white means zero.
    Diverging,
}

const VIRIDIS: [(u8, u8, u8); 9] = [
    (0x44, 0x01, 0x54),
    (0x47, 0x2d, 0x7b),
    (0x3b, 0x52, 0x8b),
    (0x2c, 0x72, 0x8e),
    (0x21, 0x91, 0x8c),
    (0x28, 0xae, 0x80),
    (0x5e, 0xc9, 0x62),
    (0xad, 0xdc, 0x30),
    (0xfd, 0xe7, 0x25),
];
const MAGMA: [(u8, u8, u8); 9] = [
    (0x00, 0x00, 0x04),
    (0x1c, 0x10, 0x44),
    (0x4f, 0x12, 0x7b),
    (0x81, 0x25, 0x81),
    (0xb5, 0x36, 0x7a),
    (0xe5, 0x59, 0x64),
    (0xfb, 0x87, 0x61),
    (0xfe, 0xc2, 0x87),
    (0xfc, 0xfd, 0xbf),
];
const GREYS: [(u8, u8, u8); 2] = [(0xff, 0xff, 0xff), (0x00, 0x00, 0x00)];
const RDBU: [(u8, u8, u8); 11] = [
    (0x05, 0x30, 0x61),
    (0x21, 0x66, 0xac),
    (0x43, 0x93, 0xc3),
    (0x92, 0xc5, 0xde),
    (0xd1, 0xe5, 0xf0),
    (0xf7, 0xf7, 0xf7),
    (0xfd, 0xdb, 0xc7),
    (0xf4, 0xa5, 0x82),
    (0xd6, 0x60, 0x4d),
    (0xb2, 0x18, 0x2b),
    (0x67, 0x00, 0x1f),
];

impl Colormap {
    fn anchors(self) -> &'static [(u8, u8, u8)] {
        match self {
            Colormap::Viridis => &VIRIDIS,
            Colormap::Magma => &MAGMA,
            Colormap::Greys => &GREYS,
            Colormap::Diverging => &RDBU,
        }
    }

    /// Colour for `t` in [0, 1] (clamped); NaN gives the missing-value grey.
    pub fn color(self, t: f64) -> RGBColor {
        if t.is_nan() {
            return NAN_GREY;
        }
        let a = self.anchors();
        let t = t.clamp(0.0, 1.0) * (a.len() - 1) as f64;
        let i = (t.floor() as usize).min(a.len() - 2);
        let f = t - i as f64;
        let lerp = |x: u8, y: u8| (x as f64 + (y as f64 - x as f64) * f).round() as u8;
        let (p, q) = (a[i], a[i + 1]);
        RGBColor(lerp(p.0, q.0), lerp(p.1, q.1), lerp(p.2, q.2))
    }
}

// The chart kinds. Declared after the shared macros above (`draw_mesh!`, `draw_legend!`), which
// reach them by textual scope.
mod bar;
mod heatmap;
mod histogram;
mod line;
mod scatter;

pub use bar::BarChart;
pub use heatmap::Heatmap;
pub use histogram::Histogram;
pub use line::{LineChart, Series};
pub use scatter::Scatter;

/// Output directory and file checks shared by the chart kinds' tests.
#[cfg(test)]
mod testutil {
    use std::path::PathBuf;

    /// Where test charts go: `ENGRAM_CHART_DIR` if set (to look at them), else a temp dir.
    pub(super) fn out_dir() -> (Option<tempfile::TempDir>, PathBuf) {
        match std::env::var_os("ENGRAM_CHART_DIR") {
            Some(d) => (None, PathBuf::from(d)),
            None => {
                let t = tempfile::tempdir().unwrap();
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        }
    }

    pub(super) fn check(paths: &[PathBuf], title: &str) {
        assert_eq!(paths.len(), 2);
        let png = std::fs::read(&paths[0]).unwrap();
        assert!(png.len() > 5000, "{}: tiny png", paths[0].display());
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let svg = std::fs::read_to_string(&paths[1]).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        assert!(svg.contains(title), "{}: title missing", paths[1].display());
        let dir = paths[0].parent().unwrap();
        for e in std::fs::read_dir(dir).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.contains(".tmp"), "temp file left behind: {name}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formatting_and_ticks() {
        assert_eq!(fmt_num(0.30000000000000004), "0.3");
        assert_eq!(fmt_num(-0.0), "0");
        assert_eq!(fmt_num(1234.5), "1234.5");
        assert_eq!(fmt_num(250000.0), "2.5e5");
        assert_eq!(fmt_num(0.00012), "1.2e-4");
        assert_eq!(fmt_num(-2.0), "-2");
        let t = nice_ticks(0.0, 1.0, 5);
        let want = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0];
        assert_eq!(t.len(), want.len(), "{t:?}");
        assert!(
            t.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12),
            "{t:?}"
        );
        let t = nice_ticks(-1.0, 1.0, 6);
        assert!(t.contains(&0.0) && t.len() >= 5);
        assert_eq!(nice_int_stride(3), 5);
        assert_eq!(nice_int_stride(11), 20);
        assert_eq!(Colormap::Greys.color(0.0), RGBColor(255, 255, 255));
        assert_eq!(Colormap::Diverging.color(0.5), RGBColor(0xf7, 0xf7, 0xf7));
        assert_eq!(Colormap::Viridis.color(f64::NAN), NAN_GREY);
    }
}
