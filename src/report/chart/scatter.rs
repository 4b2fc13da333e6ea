//! [`Scatter`]: points per series plus optional text annotations.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::{
    clean_label, color, finite_min_max, font, legend_corner, normalise, padded_range, save_chart,
    text_style, y_area_width, DResult, Render, TITLE_SIZE,
};
use crate::Result;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::chart::testutil::{check, out_dir};

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
}
