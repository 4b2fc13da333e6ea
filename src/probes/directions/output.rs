//! Tables, charts and direction files of the directions probe.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::{CompareReport, ModelReport};
use crate::report::chart::{BarChart, Colormap, Heatmap, LineChart, Scatter, Series};
use crate::report::table::{write_parquet, Table};
use crate::Result;

fn names(paths: Vec<PathBuf>) -> Vec<String> {
    paths
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect()
}

/// The file holding a model's directions: `directions.safetensors` for the first model,
/// `directions_<name>.safetensors` for others.
pub fn directions_file(name: &str) -> String {
    if name == "a" {
        "directions.safetensors".into()
    } else {
        format!("directions_{name}.safetensors")
    }
}

fn matrix(rows: &[Vec<f32>]) -> Result<Tensor> {
    let d = rows.first().map_or(0, |r| r.len());
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Ok(Tensor::from_vec(flat, (rows.len(), d), &Device::Cpu)?)
}

/// Write the directions of one model (`truth.resid_post`: `[L, d]` diff of means at resid_post;
/// `refusal.resid`: `[L+1, d]` diff of means at resid_pre of each block and the final residual;
/// `refusal.unit.layer{l}`: the unit direction `[d]` of the chosen layer).
pub fn write_directions(m: &ModelReport, dir: &Path) -> Result<Option<String>> {
    let mut tensors: Vec<(String, Tensor)> = vec![];
    if let Some(t) = &m.truth {
        tensors.push(("truth.resid_post".into(), matrix(&t.directions)?));
    }
    if let Some(r) = &m.refusal {
        tensors.push(("refusal.resid".into(), matrix(&r.diffs)?));
        tensors.push((
            format!("refusal.unit.layer{}", r.layer),
            Tensor::from_vec(r.direction.clone(), r.direction.len(), &Device::Cpu)?,
        ));
    }
    if tensors.is_empty() {
        return Ok(None);
    }
    let name = directions_file(&m.name);
    let path = dir.join(&name);
    crate::report::write_safetensors(&path, tensors)?;
    Ok(Some(name))
}

/// Write every table and chart; returns the files written (relative names).
pub fn write_outputs(
    models: &[&ModelReport],
    cmp: Option<&CompareReport>,
    dir: &Path,
) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    let mut files = vec![];
    for m in models {
        files.extend(write_directions(m, dir)?);
    }
    // truth.parquet + truth_intervention.parquet + accuracy chart
    if models.iter().any(|m| m.truth.is_some()) {
        let (mut mo, mut la, mut sp, mut acc, mut nrm) = (vec![], vec![], vec![], vec![], vec![]);
        let (mut imo, mut ilab, mut ib, mut ia) = (vec![], vec![], vec![], vec![]);
        let mut series = vec![];
        for m in models {
            let Some(t) = &m.truth else { continue };
            for x in &t.layers {
                let mut push = |split: String, a: f64| {
                    mo.push(m.spec.clone());
                    la.push(x.layer as u32);
                    sp.push(split);
                    acc.push(a);
                    nrm.push(x.direction_norm);
                };
                push("train".into(), x.acc_train);
                push("test".into(), x.acc_test);
                for (d, a) in &x.acc_heldout {
                    push(format!("heldout:{d}"), *a);
                }
            }
            let iv = &t.intervention;
            for i in 0..iv.labels.len() {
                imo.push(m.spec.clone());
                ilab.push(iv.labels[i]);
                ib.push(iv.p_diff_before[i]);
                ia.push(iv.p_diff_after[i]);
            }
            let pts = |f: &dyn Fn(&super::parts::TruthLayer) -> f64| -> Vec<(f64, f64)> {
                t.layers.iter().map(|x| (x.layer as f64, f(x))).collect()
            };
            series.push(Series::new(
                format!("{} test", m.name),
                pts(&|x| x.acc_test),
            ));
            if let Some(first) = t.layers.first() {
                for (k, (d, _)) in first.acc_heldout.iter().enumerate() {
                    series.push(
                        Series::new(
                            format!("{} held-out {d}", m.name),
                            pts(&|x| x.acc_heldout[k].1),
                        )
                        .dashed(),
                    );
                }
            }
        }
        if let Some(c) = cmp {
            for d in ["a→b", "b→a"] {
                let s = c.series("truth_probe_acc", d);
                if !s.is_empty() {
                    series.push(Series::new(
                        format!("{d} (cross-model)"),
                        s.iter().map(|(l, v)| (*l as f64, *v)).collect(),
                    ));
                }
            }
        }
        let mut df = Table::new()
            .col("model", mo)
            .col("layer", la)
            .col("split", sp)
            .col("accuracy", acc)
            .col("direction_norm", nrm)
            .build()?;
        write_parquet(&mut df, &dir.join("truth.parquet"))?;
        files.push("truth.parquet".into());
        let mut df = Table::new()
            .col("model", imo)
            .col("label", ilab)
            .col("p_diff_before", ib)
            .col("p_diff_after", ia)
            .build()?;
        write_parquet(&mut df, &dir.join("truth_intervention.parquet"))?;
        files.push("truth_intervention.parquet".into());
        files.extend(names(
            LineChart {
                title: "Truth probe accuracy (difference of means, resid_post, last token)".into(),
                x_label: "layer".into(),
                y_label: "accuracy".into(),
                series,
            }
            .save(dir, "truth_accuracy")?,
        ));
    }
    // refusal.parquet + refusal_layers.parquet + rates chart
    if models.iter().any(|m| m.refusal.is_some()) {
        let (mut lm, mut ll, mut ln, mut ls, mut lc) = (vec![], vec![], vec![], vec![], vec![]);
        // Candidate refusal directions: (model, its refusal result, the candidate).
        let mut cand = vec![];
        let mut conds: Vec<(String, String, f64)> = vec![];
        let mut all: Vec<(String, &super::parts::RefusalCondition)> = vec![];
        for m in models {
            let Some(r) = &m.refusal else { continue };
            for c in &r.conditions {
                all.push((m.spec.clone(), c));
            }
            for (l, d) in r.diffs.iter().enumerate() {
                lm.push(m.spec.clone());
                ll.push(l as u32);
                ln.push(super::parts::norm(d));
                ls.push(r.separation[l]);
                lc.push(l == r.layer);
            }
            for c in &r.candidates {
                cand.push((m, r, c));
            }
        }
        if let Some(c) = cmp {
            for (n, cond) in &c.refusal_transfer {
                all.push((n.clone(), cond));
            }
        }
        // One row per (model, condition, prompt).
        let mut rows = vec![];
        for (n, c) in &all {
            rows.extend((0..c.prompts.len()).map(|i| (n, *c, i)));
            conds.push((n.clone(), format!("{} {}", c.set, c.intervention), c.rate()));
        }
        let mut df = Table::from_rows(&rows)
            .col("model", |(n, _, _)| (*n).clone())
            .col("set", |(_, c, _)| c.set.clone())
            .col("intervention", |(_, c, _)| c.intervention.clone())
            .col("prompt", |(_, c, i)| c.prompts[*i].clone())
            .col("completion", |(_, c, i)| c.completions[*i].clone())
            .col("refused", |(_, c, i)| c.refused[*i])
            .build()?;
        write_parquet(&mut df, &dir.join("refusal.parquet"))?;
        files.push("refusal.parquet".into());
        let mut df = Table::new()
            .col("model", lm)
            .col("layer", ll)
            .col("diff_norm", ln)
            .col("train_separation", ls)
            .col("chosen", lc)
            .build()?;
        write_parquet(&mut df, &dir.join("refusal_layers.parquet"))?;
        files.push("refusal_layers.parquet".into());
        if !cand.is_empty() {
            let mut df = Table::from_rows(&cand)
                .col("model", |(m, _, _)| m.spec.clone())
                .col("layer", |(_, _, c)| c.layer as u32)
                .col("position_from_end", |(_, _, c)| c.position as u32)
                .col("token", |(_, r, c)| {
                    r.position_tokens
                        .get(c.position)
                        .cloned()
                        .unwrap_or_default()
                })
                .col("diff_norm", |(_, _, c)| c.diff_norm)
                .col("bypass_score", |(_, _, c)| c.bypass)
                .col("induce_score", |(_, _, c)| c.induce)
                .col("kl", |(_, _, c)| c.kl)
                .col("chosen", |(_, _, c)| c.chosen)
                .build()?;
            write_parquet(&mut df, &dir.join("refusal_candidates.parquet"))?;
            files.push("refusal_candidates.parquet".into());
        }
        let mut cats: Vec<String> = vec![];
        for (_, c, _) in &conds {
            if !cats.contains(c) {
                cats.push(c.clone());
            }
        }
        let mut groups = vec![];
        for m in models {
            if m.refusal.is_none() {
                continue;
            }
            let vals = cats
                .iter()
                .map(|c| {
                    conds
                        .iter()
                        .find(|(n, cc, _)| *n == m.name && cc == c)
                        .map_or(f64::NAN, |x| x.2 * 100.0)
                })
                .collect();
            groups.push((format!("model {} ({})", m.name, m.spec), vals));
        }
        files.extend(names(
            BarChart {
                title: "Refusal rate on held-out instructions".into(),
                x_label: "instructions, intervention".into(),
                y_label: "% completions starting with a refusal".into(),
                categories: cats,
                groups,
            }
            .save(dir, "refusal_rates")?,
        ));
    }
    // patching.parquet + heatmaps
    if models.iter().any(|m| m.patching.is_some()) {
        let (mut mo, mut la, mut po, mut tk, mut ld, mut ef) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for m in models {
            let Some(p) = &m.patching else { continue };
            for (l, row) in p.effect.iter().enumerate() {
                for (k, e) in row.iter().enumerate() {
                    mo.push(m.spec.clone());
                    la.push(l as u32);
                    po.push(k as u32);
                    tk.push(p.labels[k].clone());
                    ld.push(p.logit_diff[l][k]);
                    ef.push(*e);
                }
            }
            let x_labels: Vec<String> = (0..p.positions)
                .rev()
                .map(|k| format!("-{} {}", k + 1, p.labels[k].trim()))
                .collect();
            files.extend(names(
                Heatmap {
                    title: format!(
                        "Patching true→false, model {} ({}): share of TRUE−FALSE logit diff restored",
                        m.name, m.spec
                    ),
                    x_label: "position from the end (false prompt's token)".into(),
                    y_label: "layer (resid_post)".into(),
                    values: p
                        .effect
                        .iter()
                        .map(|r| r.iter().rev().copied().collect())
                        .collect(),
                    x_labels: Some(x_labels),
                    y_labels: None,
                    range: Some((-1.0, 1.0)),
                    colormap: Colormap::Diverging,
                    value_label: "patching effect (1 = restored; clipped at ±1)".into(),
                }
                .save(dir, &format!("patching_{}", m.name))?,
            ));
        }
        let mut df = Table::new()
            .col("model", mo)
            .col("layer", la)
            .col("pos_from_end", po)
            .col("token", tk)
            .col("logit_diff", ld)
            .col("effect", ef)
            .build()?;
        write_parquet(&mut df, &dir.join("patching.parquet"))?;
        files.push("patching.parquet".into());
        if let (Some(c), Some(p)) = (cmp, models[0].patching.as_ref()) {
            if let Some(d) = &c.patching_diff {
                files.extend(names(
                    Heatmap {
                        title: format!(
                            "Patching map difference (b − a), Pearson r = {:.3}",
                            c.value("patching_pearson_r", "a·b").unwrap_or(f64::NAN)
                        ),
                        x_label: "position from the end".into(),
                        y_label: "layer".into(),
                        values: d
                            .iter()
                            .map(|r| r.iter().rev().copied().collect())
                            .collect(),
                        x_labels: Some(
                            (0..p.positions)
                                .rev()
                                .map(|k| format!("-{}", k + 1))
                                .collect(),
                        ),
                        y_labels: None,
                        range: Some((-1.0, 1.0)),
                        colormap: Colormap::Diverging,
                        value_label: "effect difference b − a (clipped at ±1)".into(),
                    }
                    .save(dir, "patching_diff")?,
                ));
            }
        }
    }
    // entropy_neurons.parquet + scatter
    if models.iter().any(|m| m.entropy.is_some()) {
        let (mut mo, mut la, mut ne, mut wn, mut cv, mut se) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        let mut series = vec![];
        for m in models {
            let Some(e) = &m.entropy else { continue };
            for c in &e.candidates {
                mo.push(m.spec.clone());
                la.push(e.layer as u32);
                ne.push(c.neuron as u32);
                wn.push(c.w_out_norm);
                cv.push(c.cos_var);
                se.push(c.selected);
            }
            series.push((
                format!("{} top by ‖w_out‖", m.name),
                e.candidates
                    .iter()
                    .filter(|c| !c.selected)
                    .map(|c| (c.w_out_norm, c.cos_var))
                    .collect(),
            ));
            series.push((
                format!("{} entropy neurons", m.name),
                e.candidates
                    .iter()
                    .filter(|c| c.selected)
                    .map(|c| (c.w_out_norm, c.cos_var))
                    .collect(),
            ));
        }
        let mut df = Table::new()
            .col("model", mo)
            .col("layer", la)
            .col("neuron", ne)
            .col("w_out_norm", wn)
            .col("cos_var", cv)
            .col("selected", se)
            .build()?;
        write_parquet(&mut df, &dir.join("entropy_neurons.parquet"))?;
        files.push("entropy_neurons.parquet".into());
        files.extend(names(
            Scatter {
                title: "Last-layer neurons: ‖w_out‖ vs variance of cos(w_out, W_U)".into(),
                x_label: "‖w_out‖".into(),
                y_label: "var over vocabulary of cos(w_out, W_U)".into(),
                series,
                annotate: vec![],
            }
            .save(dir, "entropy_neurons")?,
        ));
    }
    // compare.parquet + cosine chart
    if let Some(c) = cmp {
        let mut df = Table::new()
            .col(
                "metric",
                c.rows.iter().map(|r| r.metric.clone()).collect::<Vec<_>>(),
            )
            .col(
                "layer",
                c.rows
                    .iter()
                    .map(|r| r.layer.map_or(-1, |l| l as i32))
                    .collect::<Vec<_>>(),
            )
            .col("value", c.rows.iter().map(|r| r.value).collect::<Vec<_>>())
            .col(
                "detail",
                c.rows.iter().map(|r| r.detail.clone()).collect::<Vec<_>>(),
            )
            .build()?;
        write_parquet(&mut df, &dir.join("compare.parquet"))?;
        files.push("compare.parquet".into());
        let mut series = vec![];
        for (m, label) in [
            ("truth_cosine", "truthfulness"),
            ("refusal_cosine", "refusal"),
        ] {
            let s = c.series(m, "a·b");
            if !s.is_empty() {
                series.push(Series::new(
                    label,
                    s.iter().map(|(l, v)| (*l as f64, *v)).collect(),
                ));
            }
        }
        if !series.is_empty() {
            files.extend(names(
                LineChart {
                    title: "Cosine between the two models' directions".into(),
                    x_label: "layer".into(),
                    y_label: "cosine(a, b)".into(),
                    series,
                }
                .save(dir, "cosine_by_layer")?,
            ));
        }
    }
    Ok(files)
}
