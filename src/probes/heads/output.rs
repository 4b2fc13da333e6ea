//! The head probe's outputs (`heads.parquet`, `lag_crp.parquet`, `tokens.parquet`,
//! `patterns.safetensors`, `ablation.parquet`, charts) and its [`Probe`] implementation.

use std::path::{Path, PathBuf};

use super::{cmr_shares, run, HeadRow, HeadsParams, HeadsReport, LAGS};
use crate::probes::cmr::{CmrFit, CrpTable};
use crate::probes::{Context, Probe, Report};
use crate::Result;

/// `engram heads`.
pub struct Heads;

impl Probe for Heads {
    const NAME: &'static str = "heads";
    type Params = HeadsParams;
    type Report = HeadsOutput;

    fn seed(p: &HeadsParams) -> Option<u64> {
        Some(p.seed)
    }

    fn check(p: &HeadsParams) -> Result<()> {
        if p.seq_len < 2 || p.batch == 0 || p.chunk == 0 {
            crate::bail!("heads: need seq-len ≥ 2, batch ≥ 1 and chunk ≥ 1");
        }
        if let Some(t) = &p.cmr_table {
            crate::data::require_file(t, "cmr-table")?;
        }
        if p.ablate {
            crate::data::require_file(&p.ablation.corpus, "corpus")?;
        }
        Ok(())
    }

    fn run(cx: &mut Context<'_>, p: &HeadsParams) -> Result<HeadsOutput> {
        let model = cx.model()?;
        let report = run(&model, p, cx.progress)?;
        let table = super::cmr_table(p.cmr_table.as_deref(), cx.progress)?;
        Ok(HeadsOutput { report, table })
    }
}

/// A head-probe report with the CMR table its fits used (for the fitted curves).
pub struct HeadsOutput {
    pub report: HeadsReport,
    pub table: CrpTable,
}

impl Report for HeadsOutput {
    fn write(&self, dir: &Path) -> Result<Vec<String>> {
        write_outputs(&self.report, Some(&self.table), dir)
    }

    fn notes(&self) -> Vec<String> {
        let mut n = self.report.notes.clone();
        n.push(format!(
            "summary: {}",
            serde_json::Value::from(&self.report)
        ));
        n
    }

    fn summary(&self) -> Vec<String> {
        summary_lines(&self.report)
    }
}

/// The lines `engram heads` prints: losses, the top induction heads, the CMR-like shares and the
/// ablation result.
pub fn summary_lines(r: &HeadsReport) -> Vec<String> {
    let mut out = vec![];
    if r.loss_first_copy.is_finite() {
        out.push(format!(
            "loss on first copy {:.3}, second copy {:.3}",
            r.loss_first_copy, r.loss_second_copy
        ));
        let mut top: Vec<&HeadRow> = r.heads.iter().collect();
        top.sort_by(|a, b| b.induction_score.total_cmp(&a.induction_score));
        out.push("top induction heads:".into());
        for h in top.iter().take(5) {
            out.push(format!(
                "  L{}H{}  induction {:.3}  prev {:.3}  copying {:+.3}  CMR distance {:.3}",
                h.layer,
                h.head,
                h.induction_score,
                h.prev_token_score,
                h.copying_score,
                h.fit.distance
            ));
        }
    }
    let (like, strict, per_layer) = cmr_shares(&r.heads, r.n_layers);
    let undefined = r.heads.iter().filter(|h| h.fit.distance.is_nan()).count();
    if undefined == r.heads.len() {
        out.push(format!(
            "{} heads: no CMR-like share: every head's lag-CRP or CMR fit is undefined (NaN)",
            r.heads.len()
        ));
    } else {
        out.push(format!(
            "{} heads: {:.1}% CMR-like (distance < 0.5), {:.1}% (< 0.1){}",
            r.heads.len(),
            like * 100.0,
            strict * 100.0,
            if undefined > 0 {
                format!(
                    " of the {} with a defined lag-CRP ({undefined} NaN, left out)",
                    r.heads.len() - undefined
                )
            } else {
                String::new()
            }
        ));
        out.push(format!(
            "CMR-like per layer (%): {}",
            per_layer
                .iter()
                .map(|x| format!("{:.0}", x * 100.0))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    if let Some(a) = &r.ablation {
        out.push(format!(
            "ablation: ICL(top CMR) − ICL(random) = {:+.3} (t = {:.2}, p = {:.4})",
            a.mean_diff, a.t_stat, a.p_value
        ));
    }
    out
}

impl From<&HeadsReport> for serde_json::Value {
    fn from(r: &HeadsReport) -> Self {
        let (like, strict, per_layer) = cmr_shares(&r.heads, r.n_layers);
        serde_json::json!({
            "loss_first_copy": r.loss_first_copy,
            "loss_second_copy": r.loss_second_copy,
            "share_cmr_like": like,
            "share_cmr_strict": strict,
            "share_cmr_like_per_layer": per_layer,
        })
    }
}

/// Write `heads.parquet`, `lag_crp.parquet`, `tokens.parquet`, `ablation.parquet` (if run) and
/// the charts into `dir`; returns the files written (relative names).
pub fn write_outputs(r: &HeadsReport, table: Option<&CrpTable>, dir: &Path) -> Result<Vec<String>> {
    use crate::report::chart::{BarChart, Colormap, Heatmap, LineChart, Scatter, Series};
    use crate::report::table::{write_parquet, Table};
    std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    let mut files = vec![];
    let h = &r.heads;
    // cmr-fit has fits of lag-CRPs computed elsewhere, no scores of its own.
    let has_scores = h.iter().any(|x| x.induction_score.is_finite());
    let f = |g: fn(&HeadRow) -> f64| h.iter().map(g).collect::<Vec<f64>>();
    let mut t = Table::new()
        .col("model", vec![r.model.as_str(); h.len()])
        .col(
            "layer",
            h.iter().map(|x| x.layer as u32).collect::<Vec<_>>(),
        )
        .col("head", h.iter().map(|x| x.head as u32).collect::<Vec<_>>());
    if has_scores {
        t = t
            .col("induction_score", f(|x| x.induction_score))
            .col("prev_token_score", f(|x| x.prev_token_score))
            .col("duplicate_score", f(|x| x.duplicate_score))
            .col("copying_score", f(|x| x.copying_score));
    }
    let mut df = t
        .col("cmr_distance", f(|x| x.fit.distance))
        .col("beta_enc", f(|x| x.fit.beta_enc))
        .col("beta_rec", f(|x| x.fit.beta_rec))
        .col("gamma_ft", f(|x| x.fit.gamma_ft))
        .col("inv_temp", f(|x| x.fit.inv_temp))
        .col(
            "cmr_like",
            h.iter().map(|x| x.fit.cmr_like).collect::<Vec<_>>(),
        )
        .col(
            "cmr_strict",
            h.iter().map(|x| x.fit.strict).collect::<Vec<_>>(),
        )
        .build()?;
    write_parquet(&mut df, &dir.join("heads.parquet"))?;
    files.push("heads.parquet".to_string());

    let (mut ls, mut hs, mut lags, mut sc, mut pr) = (vec![], vec![], vec![], vec![], vec![]);
    let mut fits = vec![];
    for x in h {
        // The fitted curve covers lags −5..+5 (LAGS indices 3..14).
        let curve = table.and_then(|t| fitted_curve(t, &x.fit));
        for (k, lag) in LAGS.enumerate() {
            ls.push(x.layer as u32);
            hs.push(x.head as u32);
            lags.push(lag as i32);
            sc.push(x.lag_scores[k]);
            pr.push(x.lag_probs[k]);
            fits.push(
                curve
                    .as_ref()
                    .and_then(|c| k.checked_sub(3).and_then(|i| c.get(i)))
                    .copied()
                    .unwrap_or(f64::NAN),
            );
        }
    }
    let mut t = Table::new()
        .col("model", vec![r.model.as_str(); ls.len()])
        .col("layer", ls)
        .col("head", hs)
        .col("lag", lags)
        .col("score", sc);
    if has_scores {
        t = t.col("prob", pr);
    }
    if table.is_some() {
        t = t.col("cmr_fit", fits);
    }
    let mut df = t.build()?;
    write_parquet(&mut df, &dir.join("lag_crp.parquet"))?;
    files.push("lag_crp.parquet".to_string());

    if !r.patterns.is_empty() {
        files.push(write_patterns(r, dir)?);
    }

    if !r.tokens.is_empty() {
        let (mut seq, mut pos, mut tok, mut strs) = (vec![], vec![], vec![], vec![]);
        for (i, row) in r.tokens.iter().enumerate() {
            for (j, &t) in row.iter().enumerate() {
                seq.push(i as u32);
                pos.push(j as u32);
                tok.push(t);
                if let Some(s) = r.token_strs.get(i).and_then(|s| s.get(j)) {
                    strs.push(s.clone());
                }
            }
        }
        let mut t = Table::new()
            .col("sequence", seq)
            .col("position", pos)
            .col("token", tok);
        if !r.token_strs.is_empty() {
            t = t.col("token_str", strs);
        }
        write_parquet(&mut t.build()?, &dir.join("tokens.parquet"))?;
        files.push("tokens.parquet".to_string());
    }

    if let Some(a) = &r.ablation {
        let (mut cond, mut doc, mut score, mut nheads) = (vec![], vec![], vec![], vec![]);
        for c in &a.conditions {
            for (d, s) in c.icl_scores.iter().enumerate() {
                cond.push(c.condition.clone());
                doc.push(d as u32);
                score.push(*s);
                nheads.push(c.heads.len() as u32);
            }
        }
        let mut df = Table::new()
            .col("condition", cond)
            .col("document", doc)
            .col("icl_score", score)
            .col("n_ablated", nheads)
            .build()?;
        write_parquet(&mut df, &dir.join("ablation.parquet"))?;
        files.push("ablation.parquet".to_string());
        let cats: Vec<String> = a.conditions.iter().map(|c| c.condition.clone()).collect();
        let means: Vec<f64> = a
            .conditions
            .iter()
            .map(|c| c.icl_scores.iter().sum::<f64>() / c.icl_scores.len().max(1) as f64)
            .collect();
        files.extend(names(
            BarChart {
                title: format!(
                    "ICL score under ablation (top − random = {:.3}, p = {:.3})",
                    a.mean_diff, a.p_value
                ),
                x_label: "condition".into(),
                y_label: "loss(late) − loss(early)".into(),
                categories: cats,
                groups: vec![("mean ICL score".into(), means)],
            }
            .save(dir, "ablation")?,
        ));
    }

    // Charts.
    let grid = |f: &dyn Fn(&HeadRow) -> f64| -> Vec<Vec<f64>> {
        (0..r.n_layers)
            .map(|l| (0..r.n_heads).map(|k| f(&h[l * r.n_heads + k])).collect())
            .collect()
    };
    if has_scores {
        files.extend(names(
            Heatmap {
                title: "Induction (prefix-matching) score per head".into(),
                x_label: "head".into(),
                y_label: "layer".into(),
                values: grid(&|x| x.induction_score),
                x_labels: None,
                y_labels: None,
                range: Some((0.0, 1.0)),
                colormap: Colormap::Viridis,
                value_label: "induction score (attention probability)".into(),
            }
            .save(dir, "induction_heatmap")?,
        ));
    }
    files.extend(names(
        Heatmap {
            title: "CMR distance per head (lower = more CMR-like)".into(),
            x_label: "head".into(),
            y_label: "layer".into(),
            values: grid(&|x| x.fit.distance.min(1.0)),
            x_labels: None,
            y_labels: None,
            range: Some((0.0, 1.0)),
            colormap: Colormap::Magma,
            value_label: "CMR distance (clipped at 1)".into(),
        }
        .save(dir, "cmr_distance_heatmap")?,
    ));
    let (like, strict, per_layer) = cmr_shares(h, r.n_layers);
    files.extend(names(
        BarChart {
            title: format!(
                "CMR-like heads per layer ({:.1}% < 0.5, {:.1}% < 0.1 overall)",
                like * 100.0,
                strict * 100.0
            ),
            x_label: "layer".into(),
            y_label: "% heads with CMR distance < 0.5".into(),
            categories: (0..r.n_layers).map(|l| l.to_string()).collect(),
            groups: vec![(
                "CMR-like".into(),
                per_layer.iter().map(|x| x * 100.0).collect(),
            )],
        }
        .save(dir, "cmr_share_per_layer")?,
    ));
    if has_scores {
        files.extend(names(
            Scatter {
                title: "Induction score vs CMR distance".into(),
                x_label: "induction score (attention probability)".into(),
                y_label: "CMR distance (clipped at 2)".into(),
                series: vec![(
                    "heads".into(),
                    h.iter()
                        .filter(|x| x.fit.distance.is_finite())
                        .map(|x| (x.induction_score, x.fit.distance.min(2.0)))
                        .collect(),
                )],
                annotate: vec![],
            }
            .save(dir, "induction_vs_cmr")?,
        ));
    }
    // Lag-CRP of the top induction heads next to their fitted CMR curves.
    // (Without scores: the most CMR-like heads.)
    let mut top: Vec<&HeadRow> = h.iter().filter(|x| x.fit.distance.is_finite()).collect();
    if has_scores {
        top.sort_by(|a, b| b.induction_score.total_cmp(&a.induction_score));
    } else {
        top.sort_by(|a, b| a.fit.distance.total_cmp(&b.fit.distance));
    }
    let mut series = vec![];
    for (n, x) in top.iter().take(4).enumerate() {
        let a: Vec<f64> = x.lag_scores[3..14].to_vec();
        let amin = a.iter().cloned().fold(f64::INFINITY, f64::min);
        series.push(
            Series::new(
                format!("L{}H{}", x.layer, x.head),
                (-5..=5)
                    .zip(a.iter())
                    .map(|(l, v)| (l as f64, v - amin))
                    .collect(),
            )
            .color_index(n),
        );
        if let Some(t) = table {
            if let Some(c) = fitted_curve(t, &x.fit) {
                series.push(
                    Series::new(
                        format!("CMR fit L{}H{} (d={:.3})", x.layer, x.head, x.fit.distance),
                        (-5..=5)
                            .zip(c.iter())
                            .map(|(l, v)| (l as f64, *v))
                            .collect(),
                    )
                    .dashed()
                    .color_index(n),
                );
            }
        }
    }
    files.extend(names(
        LineChart {
            title: if has_scores {
                "Lag-CRP of attention scores (top induction heads) and CMR fits".into()
            } else {
                "Lag-CRP of the most CMR-like heads and their CMR fits".into()
            },
            x_label: "lag (tokens from the earlier occurrence)".into(),
            y_label: "attention score − min (logits)".into(),
            series,
        }
        .save(dir, "lag_crp_top_heads")?,
    ));
    Ok(files)
}

/// `patterns.safetensors`: `blocks.{l}.attn.hook_pattern` `[k, head, T, T]` (F16) of the first
/// k sequences (k ≤ [`super::PATTERN_SEQS`], fewer past [`super::PATTERN_VALUES`] values) and
/// their `tokens` `[k, T]` (u32): the layout of `engram cache`'s `activations.safetensors`.
fn write_patterns(r: &HeadsReport, dir: &Path) -> Result<String> {
    let k = r.patterns[0].dim(0)?;
    let rows: Vec<u32> = r.tokens[..k].iter().flatten().copied().collect();
    let t = rows.len() / k.max(1);
    let mut tensors: Vec<(String, candle_core::Tensor)> = r
        .patterns
        .iter()
        .enumerate()
        .map(|(l, p)| (crate::hooks::HookPoint::Pattern(l).name(), p.clone()))
        .collect();
    tensors.push((
        "tokens".into(),
        candle_core::Tensor::from_vec(rows, (k, t), &candle_core::Device::Cpu)?,
    ));
    crate::report::write_safetensors(&dir.join(PATTERNS_FILE), tensors)?;
    Ok(PATTERNS_FILE.to_string())
}

/// The head probe's saved attention patterns.
pub const PATTERNS_FILE: &str = "patterns.safetensors";

fn names(paths: Vec<PathBuf>) -> Vec<String> {
    paths
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect()
}

/// The fitted CMR curve s·c' over lags −5..+5 at a fit's grid point (paper grid).
pub fn fitted_curve(table: &CrpTable, fit: &CmrFit) -> Option<Vec<f64>> {
    if !fit.distance.is_finite() {
        return None;
    }
    let i = (fit.beta_enc / 0.05).round() as i64 - 1;
    let j = (fit.beta_rec / 0.05).round() as i64;
    let k = (fit.gamma_ft / 0.1).round() as i64;
    if !(0..20).contains(&i) || !(0..21).contains(&j) || !(0..11).contains(&k) {
        return None;
    }
    let crp = table.crp([i as usize, j as usize, k as usize]);
    let c: Vec<f64> = crp[3..14].to_vec();
    let sum: f64 = c.iter().sum();
    let c: Vec<f64> = c.iter().map(|v| v / sum).collect();
    let min = c.iter().cloned().fold(f64::INFINITY, f64::min);
    Some(c.iter().map(|v| (v - min) * fit.inv_temp).collect())
}
