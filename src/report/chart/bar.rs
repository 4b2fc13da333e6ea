//! [`BarChart`]: grouped bars per category, negative values hanging below a zero line.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::{
    category_layout, clean_label, color, draw_category_labels, finite_min_max, fmt_num, font,
    legend_corner, save_chart, text_style, text_width, y_area_width, DResult, Render, AXIS,
    DESC_SIZE, GRID, TICK_SIZE, TITLE_SIZE,
};
use crate::Result;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::chart::testutil::{check, out_dir};

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
}
