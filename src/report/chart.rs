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

static FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
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

macro_rules! draw_mesh {
    ($chart:expr, $x_label:expr, $y_label:expr, $n_xlabels:expr) => {
        $chart
            .configure_mesh()
            .x_desc($x_label)
            .y_desc($y_label)
            .axis_desc_style(font(DESC_SIZE))
            .label_style(font(TICK_SIZE))
            .bold_line_style(GRID)
            .light_line_style(TRANSPARENT)
            .axis_style(AXIS)
            .x_labels($n_xlabels)
            .y_labels(8)
            .x_label_formatter(&|v| fmt_num(*v))
            .y_label_formatter(&|v| fmt_num(*v))
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
            .label_font(font(LEGEND_SIZE))
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

/// A matrix as coloured cells. `values[row][col]`: rows run down the y axis (row 0 at the top,
/// like a matrix or an attention pattern), columns along x. NaN cells are grey. A colour bar on
/// the right shows the scale. Large matrices are averaged into blocks (NaN-aware) to at most the
/// plot's pixel size in PNG and 160×160 blocks in SVG.
#[derive(Debug, Clone, Default)]
pub struct Heatmap {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub values: Vec<Vec<f64>>,
    /// One label per column; `None` numbers the columns 0, 1, ...
    pub x_labels: Option<Vec<String>>,
    /// One label per row; `None` numbers the rows 0, 1, ...
    pub y_labels: Option<Vec<String>>,
    /// Colour scale limits; `None` takes the finite min/max (symmetric for `Diverging`).
    pub range: Option<(f64, f64)>,
    pub colormap: Colormap,
}

impl Heatmap {
    pub fn save(&self, dir: &Path, stem: &str) -> Result<Vec<PathBuf>> {
        self.validate()?;
        save_chart(self, dir, stem)
    }

    fn validate(&self) -> Result<()> {
        let ny = self.values.len();
        let nx = self.values.first().map_or(0, |r| r.len());
        if ny == 0 || nx == 0 {
            crate::bail!("heatmap `{}`: no values", self.title);
        }
        if let Some((i, r)) = self.values.iter().enumerate().find(|(_, r)| r.len() != nx) {
            crate::bail!(
                "heatmap `{}`: row {i} has {} values, row 0 has {nx}",
                self.title,
                r.len()
            );
        }
        if let Some(l) = &self.x_labels {
            if l.len() != nx {
                crate::bail!(
                    "heatmap `{}`: {} x labels for {nx} columns",
                    self.title,
                    l.len()
                );
            }
        }
        if let Some(l) = &self.y_labels {
            if l.len() != ny {
                crate::bail!(
                    "heatmap `{}`: {} y labels for {ny} rows",
                    self.title,
                    l.len()
                );
            }
        }
        if let Some((lo, hi)) = self.range {
            if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                crate::bail!("heatmap `{}`: bad range ({lo}, {hi})", self.title);
            }
        }
        Ok(())
    }

    /// The colour scale limits actually used.
    pub fn color_range(&self) -> (f64, f64) {
        if let Some(r) = self.range {
            return r;
        }
        let mm = finite_min_max(self.values.iter().flatten().copied());
        match (mm, self.colormap) {
            (None, _) => (0.0, 1.0),
            (Some((lo, hi)), Colormap::Diverging) => {
                let m = lo.abs().max(hi.abs());
                if m == 0.0 {
                    (-1.0, 1.0)
                } else {
                    (-m, m)
                }
            }
            (Some((lo, hi)), _) if hi - lo <= f64::EPSILON * lo.abs().max(1.0) => {
                padded_range(Some((lo, hi)), 0.0)
            }
            (Some(r), _) => r,
        }
    }
}

/// NaN-aware block means: `values` (ny × nx) pooled into at most `max_r` × `max_c` blocks.
/// Returns (block row starts, block col starts, block means); starts include the end index.
fn pool(
    values: &[Vec<f64>],
    max_r: usize,
    max_c: usize,
) -> (Vec<usize>, Vec<usize>, Vec<Vec<f64>>) {
    let ny = values.len();
    let nx = values[0].len();
    let kr = ny.div_ceil(max_r.max(1)).max(1);
    let kc = nx.div_ceil(max_c.max(1)).max(1);
    let rows: Vec<usize> = (0..ny).step_by(kr).chain([ny]).collect();
    let cols: Vec<usize> = (0..nx).step_by(kc).chain([nx]).collect();
    if kr == 1 && kc == 1 {
        return (rows, cols, values.to_vec());
    }
    let mut out = Vec::with_capacity(rows.len() - 1);
    for rw in rows.windows(2) {
        let mut line = Vec::with_capacity(cols.len() - 1);
        for cw in cols.windows(2) {
            let (mut s, mut n) = (0.0, 0usize);
            for row in &values[rw[0]..rw[1]] {
                for &v in &row[cw[0]..cw[1]] {
                    if v.is_finite() {
                        s += v;
                        n += 1;
                    }
                }
            }
            line.push(if n == 0 { f64::NAN } else { s / n as f64 });
        }
        out.push(line);
    }
    (rows, cols, out)
}

impl Render for Heatmap {
    fn render<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DResult
    where
        DB::ErrorType: 'static,
    {
        let ny = self.values.len();
        let nx = self.values[0].len();
        let (w, h) = root.dim_in_pixel();
        let (w, h) = (w as i32, h as i32);
        let (lo, hi) = self.color_range();

        // Title.
        root.draw_text(
            &self.title,
            &text_style(TITLE_SIZE, HPos::Center, VPos::Top),
            (w / 2, 14),
        )?;

        let x_numeric = self.x_labels.is_none();
        let y_numeric = self.y_labels.is_none();
        let x_labels: Vec<String> = match &self.x_labels {
            Some(l) => l.iter().map(|s| clean_label(s, 24)).collect(),
            None => (0..nx).map(|i| i.to_string()).collect(),
        };
        let y_labels: Vec<String> = match &self.y_labels {
            Some(l) => l.iter().map(|s| clean_label(s, 24)).collect(),
            None => (0..ny).map(|i| i.to_string()).collect(),
        };
        let max_w = |ls: &[String]| {
            ls.iter()
                .map(|s| text_width(root, s, TICK_SIZE))
                .max()
                .unwrap_or(0)
        };

        // Layout, in pixels: left = y title + y tick labels; right = colour bar + its labels.
        let top = 14 + (TITLE_SIZE * 1.6) as i32 + 10;
        let y_desc_w = if self.y_label.is_empty() { 8 } else { 34 };
        let left = 16 + y_desc_w + max_w(&y_labels) as i32 + 12;
        let bar_ticks = nice_ticks(lo, hi, 6);
        let bar_label_w = bar_ticks
            .iter()
            .chain([lo, hi].iter())
            .map(|v| text_width(root, &fmt_num(*v), TICK_SIZE))
            .max()
            .unwrap_or(30) as i32;
        let right = 24 + 20 + 8 + bar_label_w + 20;
        let x0 = left;
        let x1 = w - right;
        let (x_rotate, x_stride, x_ticks_h) =
            category_layout(max_w(&x_labels), nx, (x1 - x0) as f64, x_numeric);
        let x_desc_h = if self.x_label.is_empty() { 6 } else { 30 };
        let y1 = h - 12 - x_desc_h - x_ticks_h as i32;
        let y0 = top;
        let pw = (x1 - x0).max(1);
        let ph = (y1 - y0).max(1);
        let px = |j: usize| x0 + ((j as i64 * pw as i64) / nx as i64) as i32;
        let py = |i: usize| y0 + ((i as i64 * ph as i64) / ny as i64) as i32;

        // Cells, pooled to what the backend can show (SVG kept to a sane number of rects).
        let is_svg = std::any::type_name::<DB>().contains("SVG");
        let (max_r, max_c) = if is_svg {
            (160, 160)
        } else {
            (ph as usize, pw as usize)
        };
        let (rows, cols, cells) = pool(&self.values, max_r, max_c);
        let span = hi - lo;
        for (bi, rw) in rows.windows(2).enumerate() {
            for (bj, cw) in cols.windows(2).enumerate() {
                let v = cells[bi][bj];
                let c = if v.is_nan() {
                    NAN_GREY
                } else {
                    self.colormap.color((v - lo) / span)
                };
                let (xa, xb) = (px(cw[0]), px(cw[1]));
                let (ya, yb) = (py(rw[0]), py(rw[1]));
                root.draw(&Rectangle::new(
                    [(xa, ya), (xb.max(xa + 1), yb.max(ya + 1))],
                    c.filled(),
                ))?;
            }
        }
        root.draw(&Rectangle::new([(x0, y0), (x1, y1)], AXIS.stroke_width(1)))?;

        // X tick labels at cell centres.
        let x_centres: Vec<i32> = (0..nx).map(|j| (px(j) + px(j + 1)) / 2).collect();
        draw_category_labels(root, &x_labels, &x_centres, y1, x_rotate, x_stride)?;
        if !self.x_label.is_empty() {
            root.draw_text(
                &self.x_label,
                &text_style(DESC_SIZE, HPos::Center, VPos::Bottom),
                ((x0 + x1) / 2, h - 12),
            )?;
        }

        // Y tick labels at cell centres.
        let cell_h = ph as f64 / ny as f64;
        let need = ((TICK_SIZE * 1.25) / cell_h).ceil().max(1.0) as usize;
        let y_stride = if y_numeric {
            nice_int_stride(need)
        } else {
            need
        };
        for (i, label) in y_labels.iter().enumerate() {
            if i % y_stride != 0 {
                continue;
            }
            let yc = (py(i) + py(i + 1)) / 2;
            root.draw(&PathElement::new(vec![(x0 - 5, yc), (x0, yc)], AXIS))?;
            root.draw_text(
                label,
                &text_style(TICK_SIZE, HPos::Right, VPos::Center),
                (x0 - 8, yc),
            )?;
        }
        if !self.y_label.is_empty() {
            root.draw_text(
                &self.y_label,
                &rotated_style(DESC_SIZE, HPos::Center, VPos::Center),
                (16 + 10, (y0 + y1) / 2),
            )?;
        }

        // Colour bar.
        let bx0 = x1 + 24;
        let bx1 = bx0 + 20;
        let strips = (ph as usize).min(256);
        for k in 0..strips {
            let ya = y1 - ((k as i64 * ph as i64) / strips as i64) as i32;
            let yb = y1 - (((k + 1) as i64 * ph as i64) / strips as i64) as i32;
            let t = (k as f64 + 0.5) / strips as f64;
            root.draw(&Rectangle::new(
                [(bx0, yb), (bx1, ya)],
                self.colormap.color(t).filled(),
            ))?;
        }
        root.draw(&Rectangle::new(
            [(bx0, y0), (bx1, y1)],
            AXIS.stroke_width(1),
        ))?;
        for v in bar_ticks {
            let yv = y1 - ((v - lo) / span * ph as f64).round() as i32;
            root.draw(&PathElement::new(vec![(bx1, yv), (bx1 + 5, yv)], AXIS))?;
            root.draw_text(
                &fmt_num(v),
                &text_style(TICK_SIZE, HPos::Left, VPos::Center),
                (bx1 + 8, yv),
            )?;
        }
        // NaN swatch, when there are missing cells.
        if self.values.iter().flatten().any(|v| v.is_nan()) {
            let sy = (y1 + 12).min(h - 20);
            root.draw(&Rectangle::new(
                [(bx0, sy), (bx1, sy + 14)],
                NAN_GREY.filled(),
            ))?;
            root.draw(&Rectangle::new(
                [(bx0, sy), (bx1, sy + 14)],
                AXIS.stroke_width(1),
            ))?;
            root.draw_text(
                "NaN",
                &text_style(TICK_SIZE, HPos::Left, VPos::Center),
                (bx1 + 8, sy + 7),
            )?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Line chart
// ---------------------------------------------------------------------------------------------

/// One line of a [`LineChart`]. Non-finite points break the line.
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series {
            name: name.into(),
            points,
            dashed: false,
        }
    }
    pub fn dashed(mut self) -> Self {
        self.dashed = true;
        self
    }
}

/// Lines over a numeric x axis (layer, position, step, ...), one colour per series, legend in
/// the emptiest corner. Series with at most 40 points also get dot markers.
#[derive(Debug, Clone, Default)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

impl LineChart {
    pub fn save(&self, dir: &Path, stem: &str) -> Result<Vec<PathBuf>> {
        save_chart(self, dir, stem)
    }
}

/// Runs of consecutive finite points.
fn finite_runs(points: &[(f64, f64)]) -> Vec<Vec<(f64, f64)>> {
    let mut runs = vec![];
    let mut cur = vec![];
    for &(x, y) in points {
        if x.is_finite() && y.is_finite() {
            cur.push((x, y));
        } else if !cur.is_empty() {
            runs.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        runs.push(cur);
    }
    runs
}

fn normalise(
    points: impl Iterator<Item = (f64, f64)>,
    (xl, xh): (f64, f64),
    (yl, yh): (f64, f64),
) -> impl Iterator<Item = (f64, f64)> {
    points.map(move |(x, y)| ((x - xl) / (xh - xl), (y - yl) / (yh - yl)))
}

impl Render for LineChart {
    fn render<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DResult
    where
        DB::ErrorType: 'static,
    {
        let all = || self.series.iter().flat_map(|s| s.points.iter().copied());
        let xr = padded_range(finite_min_max(all().map(|p| p.0)), 0.02);
        let yr = padded_range(finite_min_max(all().map(|p| p.1)), 0.06);
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, font(TITLE_SIZE))
            .margin(16)
            .margin_right(30)
            .x_label_area_size(56)
            .y_label_area_size(y_area_width(root, yr.0, yr.1))
            .build_cartesian_2d(xr.0..xr.1, yr.0..yr.1)?;
        draw_mesh!(chart, self.x_label.as_str(), self.y_label.as_str(), 10);

        for (i, s) in self.series.iter().enumerate() {
            let c = color(i);
            let style = c.stroke_width(2);
            let runs = finite_runs(&s.points);
            let markers = s.points.len() <= 40;
            let mut labelled = false;
            for run in runs.iter().chain(std::iter::once(&Vec::new())) {
                // The final empty run only exists to carry the legend entry when nothing did.
                if run.is_empty() && labelled {
                    continue;
                }
                let anno = if s.dashed {
                    chart.draw_series(DashedLineSeries::new(run.iter().copied(), 9, 6, style))?
                } else {
                    chart.draw_series(LineSeries::new(run.iter().copied(), style))?
                };
                if !labelled && !s.name.is_empty() {
                    let dashed = s.dashed;
                    anno.label(s.name.as_str()).legend(move |(x, y)| {
                        if dashed {
                            PathElement::new(vec![(x, y), (x + 7, y)], c.stroke_width(2))
                        } else {
                            PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                        }
                    });
                }
                labelled = true;
                if markers && !run.is_empty() {
                    chart.draw_series(
                        run.iter()
                            .map(|&p| Circle::new(p, 3, c.filled()))
                            .collect::<Vec<_>>(),
                    )?;
                }
            }
        }
        if self.series.iter().any(|s| !s.name.is_empty()) {
            let corner = legend_corner(normalise(all(), xr, yr));
            draw_legend!(chart, corner);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Bar chart
// ---------------------------------------------------------------------------------------------

/// Grouped bars: for every category, one bar per group (colour = group, shown in the legend).
/// Each group's values line up with `categories`. Negative values hang below a zero line.
#[derive(Debug, Clone, Default)]
pub struct BarChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub categories: Vec<String>,
    pub groups: Vec<(String, Vec<f64>)>,
}

impl BarChart {
    pub fn save(&self, dir: &Path, stem: &str) -> Result<Vec<PathBuf>> {
        let n = self.categories.len();
        for (name, v) in &self.groups {
            if v.len() != n {
                crate::bail!(
                    "bar chart `{}`: group `{name}` has {} values for {n} categories",
                    self.title,
                    v.len()
                );
            }
        }
        save_chart(self, dir, stem)
    }
}

impl Render for BarChart {
    fn render<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DResult
    where
        DB::ErrorType: 'static,
    {
        let n = self.categories.len().max(1);
        let g = self.groups.len().max(1);
        let vals = || self.groups.iter().flat_map(|(_, v)| v.iter().copied());
        let (lo, hi) = match finite_min_max(vals()) {
            None => (0.0, 1.0),
            Some((a, b)) => {
                let (a, b) = (a.min(0.0), b.max(0.0));
                let (a, b) = if a == b { (0.0, 1.0) } else { (a, b) };
                let p = (b - a) * 0.06;
                (
                    if a < 0.0 { a - p } else { 0.0 },
                    if b > 0.0 { b + p } else { 0.0 },
                )
            }
        };
        let labels: Vec<String> = self.categories.iter().map(|s| clean_label(s, 28)).collect();
        let max_w = labels
            .iter()
            .map(|s| text_width(root, s, TICK_SIZE))
            .max()
            .unwrap_or(0);
        let y_area = y_area_width(root, lo, hi);
        let plot_w = root.dim_in_pixel().0 as f64 - 16.0 - 30.0 - y_area as f64;
        let (rotate, stride, ticks_h) = category_layout(max_w, n, plot_w, false);
        let x_desc_h = if self.x_label.is_empty() { 4 } else { 30 };

        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, font(TITLE_SIZE))
            .margin(16)
            .margin_right(30)
            .x_label_area_size(ticks_h + x_desc_h)
            .y_label_area_size(y_area)
            .build_cartesian_2d(0f64..n as f64, lo..hi)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc(self.y_label.as_str())
            .axis_desc_style(font(DESC_SIZE))
            .label_style(font(TICK_SIZE))
            .bold_line_style(GRID)
            .light_line_style(TRANSPARENT)
            .axis_style(AXIS)
            .y_labels(8)
            .y_label_formatter(&|v| fmt_num(*v))
            .draw()?;

        let band = 0.8;
        let bw = band / g as f64;
        for (gi, (name, values)) in self.groups.iter().enumerate() {
            let c = color(gi);
            let rects: Vec<_> = values
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite())
                .map(|(ci, &v)| {
                    let xa = ci as f64 + (1.0 - band) / 2.0 + gi as f64 * bw;
                    let xb = xa + bw * 0.92;
                    Rectangle::new([(xa, 0.0), (xb, v)], c.filled())
                })
                .collect();
            let anno = chart.draw_series(rects)?;
            if !name.is_empty() {
                anno.label(name.as_str()).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 14, y + 6)], c.filled())
                });
            }
        }
        if lo < 0.0 {
            chart.draw_series(LineSeries::new([(0.0, 0.0), (n as f64, 0.0)], AXIS))?;
        }

        // Category labels and the x axis title, drawn by hand so they sit under bar centres.
        let y_bottom = chart.backend_coord(&(0.0, lo)).1;
        let xs: Vec<i32> = (0..labels.len())
            .map(|ci| chart.backend_coord(&(ci as f64 + 0.5, lo)).0)
            .collect();
        draw_category_labels(root, &labels, &xs, y_bottom, rotate, stride)?;
        if !self.x_label.is_empty() {
            let xl = chart.backend_coord(&(0.0, lo)).0;
            let xr = chart.backend_coord(&(n as f64, lo)).0;
            root.draw_text(
                &self.x_label,
                &text_style(DESC_SIZE, HPos::Center, VPos::Top),
                ((xl + xr) / 2, y_bottom + ticks_h as i32 + 4),
            )?;
        }

        if self.groups.iter().any(|(name, _)| !name.is_empty()) {
            // Bars fill from zero: the emptiest corner is judged from bar tops.
            let pts = self.groups.iter().flat_map(|(_, v)| {
                v.iter().enumerate().flat_map(move |(ci, &y)| {
                    let x = (ci as f64 + 0.5) / n as f64;
                    let t = (y - lo) / (hi - lo);
                    let z = (0.0 - lo) / (hi - lo);
                    // A bar covers [min(z,t), max(z,t)]: sample it.
                    (0..=4).map(move |k| (x, z + (t - z) * k as f64 / 4.0))
                })
            });
            draw_legend!(chart, legend_corner(pts));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Scatter
// ---------------------------------------------------------------------------------------------

/// Points, one colour per series (legend), plus optional text annotations at given points
/// (e.g. the tokens or features worth naming).
#[derive(Debug, Clone, Default)]
pub struct Scatter {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<(String, Vec<(f64, f64)>)>,
    pub annotate: Vec<((f64, f64), String)>,
}

impl Scatter {
    pub fn save(&self, dir: &Path, stem: &str) -> Result<Vec<PathBuf>> {
        save_chart(self, dir, stem)
    }
}

impl Render for Scatter {
    fn render<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DResult
    where
        DB::ErrorType: 'static,
    {
        let all = || {
            self.series
                .iter()
                .flat_map(|(_, p)| p.iter().copied())
                .chain(self.annotate.iter().map(|(p, _)| *p))
        };
        let xr = padded_range(finite_min_max(all().map(|p| p.0)), 0.05);
        let yr = padded_range(finite_min_max(all().map(|p| p.1)), 0.06);
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, font(TITLE_SIZE))
            .margin(16)
            .margin_right(30)
            .x_label_area_size(56)
            .y_label_area_size(y_area_width(root, yr.0, yr.1))
            .build_cartesian_2d(xr.0..xr.1, yr.0..yr.1)?;
        draw_mesh!(chart, self.x_label.as_str(), self.y_label.as_str(), 10);

        let n_points: usize = self.series.iter().map(|(_, p)| p.len()).sum();
        let radius = if n_points > 2000 { 2 } else { 4 };
        let alpha = if n_points > 500 { 0.55 } else { 0.8 };
        for (i, (name, pts)) in self.series.iter().enumerate() {
            let c = color(i);
            let anno = chart.draw_series(
                pts.iter()
                    .filter(|p| p.0.is_finite() && p.1.is_finite())
                    .map(|&p| Circle::new(p, radius, c.mix(alpha).filled()))
                    .collect::<Vec<_>>(),
            )?;
            if !name.is_empty() {
                anno.label(name.as_str())
                    .legend(move |(x, y)| Circle::new((x + 6, y), 5, c.filled()));
            }
        }
        for ((x, y), text) in &self.annotate {
            if !(x.is_finite() && y.is_finite()) {
                continue;
            }
            let right_side = (x - xr.0) / (xr.1 - xr.0) > 0.75;
            let (dx, h) = if right_side {
                (-8, HPos::Right)
            } else {
                (8, HPos::Left)
            };
            let label = clean_label(text, 40);
            chart.draw_series(std::iter::once(
                EmptyElement::at((*x, *y))
                    + Circle::new((0, 0), 6, BLACK.stroke_width(1))
                    + Text::new(label, (dx, -8), text_style(13.0, h, VPos::Bottom)),
            ))?;
        }
        if self.series.iter().any(|(n, _)| !n.is_empty()) {
            let corner = legend_corner(normalise(all(), xr, yr));
            draw_legend!(chart, corner);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Histogram
// ---------------------------------------------------------------------------------------------

/// Histograms of one or more samples over shared bins (translucent when overlaid). `bins` = 0
/// means 40. With `log_y` the count axis is logarithmic (empty bins are not drawn).
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    pub title: String,
    pub x_label: String,
    pub series: Vec<(String, Vec<f64>)>,
    pub bins: usize,
    pub log_y: bool,
}

impl Histogram {
    pub fn save(&self, dir: &Path, stem: &str) -> Result<Vec<PathBuf>> {
        save_chart(self, dir, stem)
    }

    /// Bin edges (bins + 1) and per-series counts.
    pub fn counts(&self) -> (Vec<f64>, Vec<Vec<u64>>) {
        let bins = if self.bins == 0 { 40 } else { self.bins };
        let (lo, hi) = match finite_min_max(self.series.iter().flat_map(|(_, v)| v.iter().copied()))
        {
            None => (0.0, 1.0),
            Some(r) => padded_range(Some(r), 0.0),
        };
        let width = (hi - lo) / bins as f64;
        let edges: Vec<f64> = (0..=bins).map(|i| lo + width * i as f64).collect();
        let counts = self
            .series
            .iter()
            .map(|(_, v)| {
                let mut c = vec![0u64; bins];
                for &x in v.iter().filter(|x| x.is_finite()) {
                    let b = (((x - lo) / width).floor() as isize).clamp(0, bins as isize - 1);
                    c[b as usize] += 1;
                }
                c
            })
            .collect();
        (edges, counts)
    }
}

macro_rules! hist_body {
    ($self:ident, $chart:ident, $root:ident, $edges:ident, $counts:ident, $base:expr) => {{
        draw_mesh!($chart, $self.x_label.as_str(), "count", 10);
        let overlay = $self.series.len() > 1;
        for (si, ((name, _), counts)) in $self.series.iter().zip(&$counts).enumerate() {
            let c = color(si);
            let fill = if overlay { c.mix(0.4) } else { c.mix(0.75) };
            let rects: Vec<_> = counts
                .iter()
                .enumerate()
                .filter(|(_, &n)| n > 0)
                .map(|(b, &n)| {
                    Rectangle::new(
                        [($edges[b], $base), ($edges[b + 1], n as f64)],
                        fill.filled(),
                    )
                })
                .collect();
            let anno = $chart.draw_series(rects)?;
            if !name.is_empty() {
                anno.label(name.as_str()).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 14, y + 6)], c.mix(0.6).filled())
                });
            }
            // Outline of the histogram as a step line, so overlaid series stay distinguishable.
            let mut step = Vec::with_capacity(2 * counts.len() + 2);
            step.push(($edges[0], $base));
            for (b, &n) in counts.iter().enumerate() {
                let y = if n == 0 { $base } else { n as f64 };
                step.push(($edges[b], y));
                step.push(($edges[b + 1], y));
            }
            step.push(($edges[counts.len()], $base));
            $chart.draw_series(LineSeries::new(
                step,
                c.stroke_width(if overlay { 2 } else { 1 }),
            ))?;
        }
        if $self.series.iter().any(|(n, _)| !n.is_empty()) {
            draw_legend!($chart, SeriesLabelPosition::UpperRight);
        }
    }};
}

impl Render for Histogram {
    fn render<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DResult
    where
        DB::ErrorType: 'static,
    {
        let (edges, counts) = self.counts();
        let max = counts.iter().flatten().copied().max().unwrap_or(0).max(1) as f64;
        let (xl, xh) = (edges[0], edges[edges.len() - 1]);
        let pad = (xh - xl) * 0.02;
        let xr = (xl - pad)..(xh + pad);
        if self.log_y {
            let base = 0.7;
            let mut chart = ChartBuilder::on(root)
                .caption(&self.title, font(TITLE_SIZE))
                .margin(16)
                .margin_right(30)
                .x_label_area_size(56)
                .y_label_area_size(y_area_width(root, 1.0, max * 2.0))
                .build_cartesian_2d(xr, (base..max * 2.0).log_scale())?;
            hist_body!(self, chart, root, edges, counts, base);
        } else {
            let mut chart = ChartBuilder::on(root)
                .caption(&self.title, font(TITLE_SIZE))
                .margin(16)
                .margin_right(30)
                .x_label_area_size(56)
                .y_label_area_size(y_area_width(root, 0.0, max * 1.08))
                .build_cartesian_2d(xr, 0.0..max * 1.08)?;
            hist_body!(self, chart, root, edges, counts, 0.0);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where test charts go: `ENGRAM_CHART_DIR` if set (to look at them), else a temp dir.
    fn out_dir() -> (Option<tempfile::TempDir>, PathBuf) {
        match std::env::var_os("ENGRAM_CHART_DIR") {
            Some(d) => (None, PathBuf::from(d)),
            None => {
                let t = tempfile::tempdir().unwrap();
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        }
    }

    fn check(paths: &[PathBuf], title: &str) {
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

    #[test]
    fn heatmap_writes_png_and_svg() {
        let (_t, dir) = out_dir();
        let values: Vec<Vec<f64>> = (0..12)
            .map(|l| {
                (0..9)
                    .map(|h| {
                        if l == 3 && h == 4 {
                            f64::NAN
                        } else {
                            ((l * 9 + h) as f64 * 0.37).sin() * (l as f64 / 6.0)
                        }
                    })
                    .collect()
            })
            .collect();
        let h = Heatmap {
            title: "Induction score per head".into(),
            x_label: "head".into(),
            y_label: "layer".into(),
            values,
            colormap: Colormap::Diverging,
            ..Default::default()
        };
        check(
            &h.save(&dir, "heatmap").unwrap(),
            "Induction score per head",
        );

        // Token labels, rotated, on a bigger matrix with a fixed range.
        let toks: Vec<String> = "When Mary and John went to the store , John gave a drink to"
            .split(' ')
            .map(|s| format!(" {s}"))
            .collect();
        let n = toks.len();
        let pattern: Vec<Vec<f64>> = (0..n)
            .map(|q| {
                (0..n)
                    .map(|k| {
                        if k > q {
                            f64::NAN
                        } else {
                            1.0 / (q + 1) as f64
                        }
                    })
                    .collect()
            })
            .collect();
        let h = Heatmap {
            title: "Attention pattern L5H1".into(),
            x_label: "key".into(),
            y_label: "query".into(),
            values: pattern,
            x_labels: Some(toks.clone()),
            y_labels: Some(toks),
            range: Some((0.0, 1.0)),
            colormap: Colormap::Magma,
        };
        check(
            &h.save(&dir, "heatmap_tokens").unwrap(),
            "Attention pattern L5H1",
        );

        // Wide matrix: pooled, numeric thinned labels.
        let wide: Vec<Vec<f64>> = (0..30)
            .map(|l| {
                (0..1536)
                    .map(|j| ((j as f64) * 0.01 + l as f64).cos())
                    .collect()
            })
            .collect();
        let h = Heatmap {
            title: "Neuron activations".into(),
            x_label: "neuron".into(),
            y_label: "layer".into(),
            values: wide,
            ..Default::default()
        };
        let p = h.save(&dir, "heatmap_wide").unwrap();
        check(&p, "Neuron activations");
        let svg_len = std::fs::metadata(&p[1]).unwrap().len();
        assert!(svg_len < 4_000_000, "svg too big: {svg_len}");

        // Bad input is an error, not a panic.
        let bad = Heatmap {
            values: vec![vec![1.0, 2.0], vec![3.0]],
            ..Default::default()
        };
        assert!(bad.save(&dir, "bad").is_err());
        assert!(!dir.join("bad.png").exists());
    }

    #[test]
    fn line_chart_writes_png_and_svg() {
        let (_t, dir) = out_dir();
        let c = LineChart {
            title: "Logit difference by layer".into(),
            x_label: "layer".into(),
            y_label: "logit difference".into(),
            series: vec![
                Series::new(
                    "clean",
                    (0..30)
                        .map(|l| (l as f64, (l as f64 / 5.0).tanh() * 3.0))
                        .collect(),
                ),
                Series::new(
                    "patched",
                    (0..30)
                        .map(|l| (l as f64, (l as f64 / 9.0).tanh() * 2.0 - 0.3))
                        .collect(),
                ),
                Series::new(
                    "baseline",
                    vec![
                        (0.0, 0.1),
                        (10.0, 0.1),
                        (f64::NAN, 0.0),
                        (20.0, 0.4),
                        (29.0, 0.4),
                    ],
                )
                .dashed(),
            ],
        };
        check(&c.save(&dir, "line").unwrap(), "Logit difference by layer");
        // Empty chart still renders.
        let e = LineChart {
            title: "Empty".into(),
            ..Default::default()
        };
        check(&e.save(&dir, "line_empty").unwrap(), "Empty");
    }

    #[test]
    fn bar_chart_writes_png_and_svg() {
        let (_t, dir) = out_dir();
        let c = BarChart {
            title: "Refusal rate by intervention".into(),
            x_label: "prompt set".into(),
            y_label: "refusal rate".into(),
            categories: vec![
                "harmful".into(),
                "harmless".into(),
                "harmful + ablation".into(),
                "harmless + addition".into(),
            ],
            groups: vec![
                ("SmolLM2-135M".into(), vec![0.12, 0.01, 0.02, 0.64]),
                ("Qwen2.5-0.5B".into(), vec![0.41, 0.0, 0.05, 0.88]),
                ("Gemma-3-270M".into(), vec![0.3, -0.05, 0.1, 0.5]),
            ],
        };
        check(
            &c.save(&dir, "bars").unwrap(),
            "Refusal rate by intervention",
        );
        let bad = BarChart {
            categories: vec!["a".into()],
            groups: vec![("g".into(), vec![1.0, 2.0])],
            ..Default::default()
        };
        assert!(bad.save(&dir, "bad_bars").is_err());
    }

    #[test]
    fn scatter_writes_png_and_svg() {
        let (_t, dir) = out_dir();
        let a: Vec<(f64, f64)> = (0..200)
            .map(|i| {
                let t = i as f64 * 0.1;
                (t.cos() * (1.0 + t * 0.1), t.sin() * (1.0 + t * 0.1))
            })
            .collect();
        let b: Vec<(f64, f64)> = (0..200)
            .map(|i| {
                let t = i as f64 * 0.13;
                (2.0 + (t * 1.7).sin(), -1.0 + (t * 0.9).cos())
            })
            .collect();
        let c = Scatter {
            title: "PCA of residual stream".into(),
            x_label: "PC1".into(),
            y_label: "PC2".into(),
            series: vec![("true".into(), a), ("false".into(), b)],
            annotate: vec![
                ((0.0, 0.0), "origin".into()),
                ((2.9, -0.1), " Paris".into()),
            ],
        };
        check(&c.save(&dir, "scatter").unwrap(), "PCA of residual stream");
    }

    #[test]
    fn histogram_writes_png_and_svg() {
        let (_t, dir) = out_dir();
        // Deterministic pseudo-normal samples.
        let mut s = 12345u64;
        let mut next = move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut normal = |mu: f64, sd: f64| {
            let (u1, u2) = (next().max(1e-12), next());
            mu + sd * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        };
        let a: Vec<f64> = (0..5000).map(|_| normal(0.0, 1.0)).collect();
        let b: Vec<f64> = (0..3000).map(|_| normal(1.5, 0.7)).collect();
        let h = Histogram {
            title: "Feature activation density".into(),
            x_label: "log10 activation frequency".into(),
            series: vec![("layer 3".into(), a.clone()), ("layer 9".into(), b)],
            bins: 50,
            log_y: false,
        };
        check(&h.save(&dir, "hist").unwrap(), "Feature activation density");
        let (edges, counts) = h.counts();
        assert_eq!(edges.len(), 51);
        assert_eq!(counts[0].iter().sum::<u64>(), 5000);
        let h = Histogram {
            title: "Log counts".into(),
            x_label: "value".into(),
            series: vec![(String::new(), a)],
            bins: 0,
            log_y: true,
        };
        check(&h.save(&dir, "hist_log").unwrap(), "Log counts");
    }

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
