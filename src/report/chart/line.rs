//! [`LineChart`] and its [`Series`]: lines over a numeric x axis, broken at non-finite points.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use super::{
    color, finite_min_max, font, legend_corner, normalise, padded_range, save_chart, y_area_width,
    DResult, Render, TITLE_SIZE,
};
use crate::Result;

/// One line of a [`LineChart`]. Non-finite points break the line.
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
    /// Draw in the colour of series `k` (e.g. a fit in its data's colour); default: its own.
    pub color: Option<usize>,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series {
            name: name.into(),
            points,
            dashed: false,
            color: None,
        }
    }
    pub fn dashed(mut self) -> Self {
        self.dashed = true;
        self
    }
    /// The colour of the `k`-th colour of the palette.
    pub fn color_index(mut self, k: usize) -> Self {
        self.color = Some(k);
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
            let c = color(s.color.unwrap_or(i));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::chart::testutil::{check, out_dir};

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
}
