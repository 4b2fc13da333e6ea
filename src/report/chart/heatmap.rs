//! [`Heatmap`]: a matrix as coloured cells with a colour bar, NaN-aware block pooling for
//! large matrices. The colour maps themselves ([`super::Colormap`]) are shared in `chart`.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::{
    category_layout, clean_label, draw_category_labels, finite_min_max, fmt_num, nice_int_stride,
    nice_ticks, padded_range, rotated_style, save_chart, text_style, text_width, Colormap, DResult,
    Render, AXIS, DESC_SIZE, NAN_GREY, TICK_SIZE, TITLE_SIZE,
};
use crate::Result;

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
    /// The colour bar's label: what a colour means, with its unit (empty: none).
    pub value_label: String,
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
        let value_w = if self.value_label.is_empty() { 0 } else { 30 };
        let right = 24 + 20 + 8 + bar_label_w + 20 + value_w;
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
        if !self.value_label.is_empty() {
            let lx = bx1 + 8 + bar_label_w + 18;
            root.draw_text(
                &clean_label(&self.value_label, 60),
                &rotated_style(DESC_SIZE, HPos::Center, VPos::Center),
                (lx, (y0 + y1) / 2),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::chart::testutil::{check, out_dir};

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
            value_label: "attention probability".into(),
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
}
