//! `engram attribute`'s tables and charts (columns: docs/outputs.md).

use std::path::Path;

use super::{AttributeReport, Cell, PairAttribution};
use crate::hooks::HookPoint;
use crate::report::chart::{Colormap, Heatmap, Scatter};
use crate::report::table::{write_parquet, Table};
use crate::Result;

pub(super) fn write(r: &AttributeReport, dir: &Path) -> Result<Vec<String>> {
    let mut files = vec![];
    write_parquet(
        &mut attribution_table(r).build()?,
        &dir.join("attribution.parquet"),
    )?;
    files.push("attribution.parquet".to_string());
    write_parquet(&mut metric_table(r).build()?, &dir.join("metric.parquet"))?;
    files.push("metric.parquet".to_string());
    for p in charts(r, dir)? {
        if let Some(f) = p.file_name() {
            files.push(f.to_string_lossy().into_owned());
        }
    }
    Ok(files)
}

/// Cells, the hook they are of, whether their unit is a head.
type CellGroup<'a> = (&'a [Cell], fn(usize) -> HookPoint, bool);

fn attribution_table(r: &AttributeReport) -> Table {
    let (mut pair, mut hook, mut layer, mut pos, mut head, mut unit) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut atp, mut ig, mut patch) = (vec![], vec![], vec![]);
    for (i, res) in r.results.iter().enumerate() {
        let groups: [CellGroup; 3] = [
            (&res.resid, HookPoint::ResidPre, false),
            (&res.heads, HookPoint::Z, true),
            (&res.neurons, HookPoint::MlpPost, false),
        ];
        for (cells, point, is_head) in groups {
            for c in cells {
                pair.push(i as u32);
                hook.push(point(c.layer).name());
                layer.push(c.layer as u32);
                pos.push(c.position.map(|p| p as u32));
                head.push(if is_head {
                    c.unit.map(|u| u as u32)
                } else {
                    None
                });
                unit.push(if is_head {
                    None
                } else {
                    c.unit.map(|u| u as u32)
                });
                atp.push(c.atp);
                ig.push(c.ig);
                patch.push(c.patch);
            }
        }
    }
    Table::new()
        .col("pair", pair)
        .col("hook", hook)
        .col("layer", layer)
        .col("position", pos)
        .col("head", head)
        .col("unit", unit)
        .col("atp", atp)
        .col("ig", ig)
        .col("patch_effect", patch)
}

fn metric_table(r: &AttributeReport) -> Table {
    let col = |f: &dyn Fn(usize) -> String| (0..r.texts.len()).map(f).collect::<Vec<_>>();
    let num = |f: &dyn Fn(&PairAttribution) -> f64| r.results.iter().map(f).collect::<Vec<_>>();
    Table::new()
        .col("pair", (0..r.texts.len() as u32).collect::<Vec<_>>())
        .col("clean", col(&|i| r.texts[i].clean.clone()))
        .col("corrupt", col(&|i| r.texts[i].corrupt.clone()))
        .col("answer", col(&|i| r.texts[i].answer.clone()))
        .col("wrong", col(&|i| r.texts[i].wrong.clone()))
        .col(
            "n_tokens",
            r.tokens.iter().map(|t| t.len() as u32).collect::<Vec<_>>(),
        )
        .col("clean_metric", num(&|p| p.clean_metric))
        .col("corrupt_metric", num(&|p| p.corrupt_metric))
        .col(
            "ig_completeness_error",
            r.results
                .iter()
                .map(ig_completeness_error)
                .collect::<Vec<_>>(),
        )
}

/// The largest |Σ_positions IG − (corrupt − clean)| / |corrupt − clean| over layers (IG's
/// completeness: near 0 when `--ig-steps` is enough); `None` without IG.
pub(super) fn ig_completeness_error(p: &PairAttribution) -> Option<f64> {
    let gap = p.corrupt_metric - p.clean_metric;
    let mut sums = std::collections::BTreeMap::<usize, f64>::new();
    for c in &p.resid {
        *sums.entry(c.layer).or_default() += c.ig?;
    }
    sums.values()
        .map(|s| (s - gap).abs() / gap.abs().max(1e-9))
        .reduce(f64::max)
}

/// The mean over pairs of `value` as a fraction of the pair's metric change (corrupt − clean) on a
/// `rows × cols` grid, cells placed by `at`; with prompts
/// of different lengths positions are aligned from the end (`cols` = the shortest length).
fn mean_grid(
    r: &AttributeReport,
    rows: usize,
    cols: usize,
    cells: impl Fn(&PairAttribution) -> &[Cell],
    at: impl Fn(&Cell, usize) -> Option<(usize, usize)>,
    value: impl Fn(&Cell) -> Option<f64>,
) -> Vec<Vec<f64>> {
    let mut sum = vec![vec![0.0; cols]; rows];
    let mut n = vec![vec![0usize; cols]; rows];
    for (res, toks) in r.results.iter().zip(&r.tokens) {
        // Each estimate as a fraction of the pair's clean → corrupt change of the metric, so
        // that pairs and models share one scale (a pair whose runs do not differ has none).
        let change = res.corrupt_metric - res.clean_metric;
        if change.is_nan() || change.abs() <= 1e-9 {
            continue;
        }
        for c in cells(res) {
            if let (Some((y, x)), Some(v)) = (at(c, toks.len()), value(c).map(|v| v / change)) {
                if y < rows && x < cols {
                    sum[y][x] += v;
                    n[y][x] += 1;
                }
            }
        }
    }
    sum.iter()
        .zip(&n)
        .map(|(s, n)| {
            s.iter()
                .zip(n)
                .map(|(s, &n)| if n == 0 { f64::NAN } else { s / n as f64 })
                .collect()
        })
        .collect()
}

fn charts(r: &AttributeReport, dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut paths = vec![];
    let min_len = r.tokens.iter().map(Vec::len).min().unwrap_or(0);
    let same = r.tokens.iter().all(|t| t.len() == min_len);
    let x_labels: Vec<String> = if same {
        r.tokens[0].iter().map(|s| format!("{s:?}")).collect()
    } else {
        (0..min_len).map(|i| format!("-{}", min_len - i)).collect()
    };
    let n_pairs = r.results.len();
    let resid_at = |c: &Cell, len: usize| -> Option<(usize, usize)> {
        let p = c.position?;
        (p + min_len >= len).then(|| (c.layer, p + min_len - len))
    };
    let head_at = |c: &Cell, _: usize| Some((c.layer, c.unit?));
    let has_resid = r.results.iter().any(|x| !x.resid.is_empty());
    let has_heads = r.results.iter().any(|x| !x.heads.is_empty());
    // One scale for every pair and model: the whole residual at a position can carry all of the
    // change (±1), a single head rarely more than half of it (±0.5, clamped).
    let grid = |title: String, xl: &str, values, labels: Option<Vec<String>>| {
        let m = if xl == "head" { 0.5 } else { 1.0 };
        Heatmap {
            title,
            x_label: xl.into(),
            y_label: "layer".into(),
            values,
            x_labels: labels,
            y_labels: None,
            range: Some((-m, m)),
            colormap: Colormap::Diverging,
            value_label: format!("share of the metric change (clamped at ±{m})"),
        }
    };
    let what = format!("share of metric(corrupt) − metric(clean), mean over {n_pairs} pair(s)");
    if has_resid && min_len > 0 {
        let v = mean_grid(
            r,
            r.n_layers,
            min_len,
            |x| &x.resid,
            resid_at,
            |c| Some(c.atp),
        );
        paths.extend(
            grid(
                format!("AtP of resid_pre ({what})"),
                "position",
                v,
                Some(x_labels.clone()),
            )
            .save(dir, "resid_atp_heatmap")?,
        );
        if r.opts.patch {
            let v = mean_grid(r, r.n_layers, min_len, |x| &x.resid, resid_at, |c| c.patch);
            paths.extend(
                grid(
                    format!("Activation patching of resid_pre ({what})"),
                    "position",
                    v,
                    Some(x_labels.clone()),
                )
                .save(dir, "resid_patch_heatmap")?,
            );
        }
        if r.opts.ig_steps > 0 {
            let v = mean_grid(r, r.n_layers, min_len, |x| &x.resid, resid_at, |c| c.ig);
            paths.extend(
                grid(
                    format!("Integrated gradients of resid_pre ({what})"),
                    "position",
                    v,
                    Some(x_labels),
                )
                .save(dir, "resid_ig_heatmap")?,
            );
        }
    }
    if has_heads {
        let v = mean_grid(
            r,
            r.n_layers,
            r.n_heads,
            |x| &x.heads,
            head_at,
            |c| Some(c.atp),
        );
        paths.extend(
            grid(
                format!("AtP of attn.hook_z per head ({what})"),
                "head",
                v,
                None,
            )
            .save(dir, "heads_atp_heatmap")?,
        );
        if r.opts.patch {
            let v = mean_grid(r, r.n_layers, r.n_heads, |x| &x.heads, head_at, |c| c.patch);
            paths.extend(
                grid(
                    format!("Activation patching per head ({what})"),
                    "head",
                    v,
                    None,
                )
                .save(dir, "heads_patch_heatmap")?,
            );
        }
    }
    if r.opts.patch && (has_resid || has_heads) {
        let mut series = vec![];
        let rs = r.correlations();
        for (name, cells, rr) in [("resid_pre", 0, rs[0].1), ("heads (z)", 1, rs[2].1)] {
            let pts: Vec<(f64, f64)> = r
                .results
                .iter()
                .flat_map(|x| if cells == 0 { &x.resid } else { &x.heads }.iter())
                .filter_map(|c| Some((c.patch?, c.atp)))
                .collect();
            if !pts.is_empty() {
                let label = match rr {
                    Some(r) => format!("{name} (r = {r:.3})"),
                    None => name.to_string(),
                };
                series.push((label, pts));
            }
        }
        paths.extend(
            Scatter {
                title: "AtP estimate vs exact activation patching".into(),
                x_label: "patch effect (Δ metric)".into(),
                y_label: "AtP (Δ metric)".into(),
                series,
                annotate: vec![],
            }
            .save(dir, "atp_vs_patch")?,
        );
    }
    Ok(paths)
}

pub(super) fn summary(r: &AttributeReport) -> Vec<String> {
    let n = r.results.len() as f64;
    let mean = |f: &dyn Fn(&PairAttribution) -> f64| r.results.iter().map(f).sum::<f64>() / n;
    let mut lines = vec![format!(
        "{} pair(s): metric clean {:.3}, corrupt {:.3} (mean logit difference)",
        r.results.len(),
        mean(&|p| p.clean_metric),
        mean(&|p| p.corrupt_metric)
    )];
    let rs: Vec<String> = r
        .correlations()
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k} {v:.3}")))
        .collect();
    if !rs.is_empty() {
        lines.push(format!("pearson r vs exact patching: {}", rs.join(", ")));
    }
    if let Some(e) = r
        .results
        .iter()
        .filter_map(ig_completeness_error)
        .reduce(f64::max)
    {
        lines.push(format!(
            "IG completeness: Σ IG over positions is within {:.1}% of the metric gap at every layer{}",
            100.0 * e,
            if e > 0.05 { " (raise --ig-steps)" } else { "" }
        ));
    }
    // The strongest heads by mean |AtP|.
    let mut heads: std::collections::BTreeMap<(usize, usize), f64> = Default::default();
    for res in &r.results {
        for c in &res.heads {
            *heads.entry((c.layer, c.unit.unwrap_or(0))).or_default() += c.atp / n;
        }
    }
    let mut top: Vec<_> = heads.into_iter().collect();
    top.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
    if !top.is_empty() {
        let s: Vec<String> = top
            .iter()
            .take(5)
            .map(|((l, h), v)| format!("L{l}H{h} {v:+.3}"))
            .collect();
        lines.push(format!("top heads by |AtP|: {}", s.join(", ")));
    }
    lines
}
