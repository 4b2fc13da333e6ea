//! [`Histogram`]: one or more samples over shared bins, linear or log counts.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use super::{
    color, finite_min_max, font, padded_range, save_chart, y_area_width, DResult, Render,
    TITLE_SIZE,
};
use crate::Result;

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
    use crate::report::chart::testutil::{check, out_dir};

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
}
