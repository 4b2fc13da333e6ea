//! The files of an SAE evaluation: `metrics.parquet`, `atoms.parquet`, `summary.json` and the
//! charts (columns in docs/outputs.md).

use std::path::Path;

use polars::prelude::{NamedFrom, Series};

use super::EvalReport;
use crate::probes::sae::SaeKind;
use crate::Result;

/// Write `metrics.parquet`, `atoms.parquet`, `summary.json` and the charts into `dir`.
pub fn write_outputs(
    r: &EvalReport,
    token_text: &dyn Fn(u32) -> String,
    dir: &Path,
) -> Result<Vec<String>> {
    use crate::report::chart::{BarChart, Histogram, Scatter};
    use crate::report::table::{write_parquet, Table};
    std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    let mut files = vec![];
    let names = |v: Vec<std::path::PathBuf>| -> Vec<String> {
        v.iter()
            .filter_map(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
            .collect()
    };
    // metrics.parquet: one row per SAE, then the neurons.
    let mut kind = vec![];
    let mut label = vec![];
    let mut layer = vec![];
    let mut dict = vec![];
    let (mut r2, mut mse, mut l0, mut dead) = (vec![], vec![], vec![], vec![]);
    let (mut fvu, mut dense, mut target) = (vec![], vec![], vec![]);
    let (mut cer, mut kl, mut qs, mut coh) = (vec![], vec![], vec![], vec![]);
    let (mut qse, mut cohe, mut ce_clean, mut ce_sae, mut ce_zero) =
        (vec![], vec![], vec![], vec![], vec![]);
    for e in &r.saes {
        kind.push(e.kind.name().to_string());
        label.push(e.label.clone());
        layer.push(e.layer.map(|l| l as u32));
        dict.push(e.dict_size as u32);
        r2.push(e.r2);
        mse.push(e.mse);
        l0.push(e.l0);
        dead.push(e.dead as u32);
        fvu.push(1.0 - e.r2);
        dense.push(e.dense as u32);
        target.push(e.target.clone());
        cer.push(e.ce.as_ref().map(|c| c.ce_recovered));
        kl.push(e.ce.as_ref().map(|c| c.kl));
        ce_clean.push(e.ce.as_ref().map(|c| c.ce_clean));
        ce_sae.push(e.ce.as_ref().map(|c| c.ce_sae));
        ce_zero.push(e.ce.as_ref().map(|c| c.ce_zero));
        qs.push(e.atoms.as_ref().map(|a| a.q_star));
        coh.push(e.atoms.as_ref().map(|a| a.coherence));
        qse.push(e.atoms.as_ref().map(|a| a.q_star_euclid));
        cohe.push(e.atoms.as_ref().map(|a| a.coherence_euclid));
    }
    if let Some(n) = &r.neurons {
        kind.push("neurons".into());
        label.push("neurons".into());
        layer.push(r.layer.map(|l| l as u32));
        dict.push(r.d as u32);
        r2.push(1.0);
        mse.push(0.0);
        l0.push(n.mean_support);
        dead.push(0);
        fvu.push(0.0);
        dense.push(0);
        target.push(None);
        cer.push(None);
        kl.push(None);
        ce_clean.push(None);
        ce_sae.push(None);
        ce_zero.push(None);
        qs.push(Some(n.q_star));
        coh.push(Some(n.coherence));
        qse.push(Some(n.q_star_euclid));
        cohe.push(Some(n.coherence_euclid));
    }
    let mut df = Table::new()
        .col("kind", kind.clone())
        .col("label", label.clone())
        .col("layer", layer)
        .col("dict_size", dict)
        .col("r2", r2.clone())
        .col("mse", mse)
        .col("l0", l0.clone())
        .col("dead", dead)
        .col("fvu", fvu)
        .col("dense", dense)
        .col("target", target)
        .col("ce_recovered", cer)
        .col("kl", kl)
        .col("q_star", qs.clone())
        .col("coherence", coh)
        .col("q_star_euclid", qse.clone())
        .col("coherence_euclid", cohe)
        .col("ce_clean", ce_clean)
        .col("ce_sae", ce_sae)
        .col("ce_zero_ablation", ce_zero)
        .build()?;
    write_parquet(&mut df, &dir.join("metrics.parquet"))?;
    files.push("metrics.parquet".into());

    // atoms.parquet: one row per latent per SAE.
    let (mut k, mut lab, mut lat, mut fr, mut ma, mut th, mut tt, mut ca, mut cu) = (
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
    );
    let mut tv = vec![];
    for e in &r.saes {
        for i in 0..e.dict_size {
            k.push(e.kind.name().to_string());
            lab.push(e.label.clone());
            lat.push(i as u32);
            fr.push(e.frequency[i]);
            ma.push(e.mean_activation[i]);
            th.push(e.threshold.as_ref().map(|t| t[i]));
            let top = &e.top_tokens[i];
            let strs: Vec<String> = top.iter().map(|(t, _)| token_text(*t)).collect();
            let vals: Vec<f32> = top.iter().map(|(_, v)| *v).collect();
            tt.push(Series::new("".into(), strs));
            tv.push(Series::new("".into(), vals));
            ca.push(e.atoms.as_ref().map(|a| a.per_atom_aip[i]));
            cu.push(e.atoms.as_ref().map(|a| a.per_atom_euclid[i]));
        }
    }
    let mut df = Table::new()
        .col("kind", k)
        .col("label", lab)
        .col("latent", lat)
        .col("frequency", fr)
        .col("mean_activation", ma)
        .col("threshold", th)
        .col("top_tokens", tt)
        .col("top_activations", tv)
        .col("coherence_aip", ca)
        .col("coherence_euclid", cu)
        .build()?;
    write_parquet(&mut df, &dir.join("atoms.parquet"))?;
    files.push("atoms.parquet".into());

    // Charts.
    let mut series: Vec<(String, Vec<(f64, f64)>)> = vec![];
    for kd in SaeKind::ALL {
        let pts: Vec<(f64, f64)> = r
            .saes
            .iter()
            .filter(|e| e.kind == kd)
            .map(|e| (e.l0, e.r2))
            .collect();
        if !pts.is_empty() {
            series.push((kd.name().to_string(), pts));
        }
    }
    if !series.is_empty() {
        files.extend(names(
            Scatter {
                title: format!("Faithfulness vs sparsity ({})", r.hook),
                x_label: "L0 (active latents per token)".into(),
                y_label: "R²".into(),
                series,
                annotate: r
                    .saes
                    .iter()
                    .map(|e| ((e.l0, e.r2), e.label.clone()))
                    .collect(),
            }
            .save(dir, "r2_vs_l0")?,
        ));
    }
    let cats: Vec<String> = label
        .iter()
        .zip(&kind)
        .map(|(l, k)| {
            if l == k {
                k.clone()
            } else {
                format!("{l} ({k})")
            }
        })
        .collect();
    files.extend(names(
        BarChart {
            title: "Uniqueness quantile q* (μ_q < 1/(2K_q − 1)): neurons, features, atoms".into(),
            x_label: "dictionary".into(),
            y_label: "q*".into(),
            categories: cats,
            groups: vec![
                (
                    "AIP geometry".into(),
                    qs.iter().map(|q| q.unwrap_or(f64::NAN)).collect(),
                ),
                (
                    "Euclidean".into(),
                    qse.iter().map(|q| q.unwrap_or(f64::NAN)).collect(),
                ),
            ],
        }
        .save(dir, "q_star")?,
    ));
    let mut hs: Vec<(String, Vec<f64>)> = vec![];
    for e in &r.saes {
        if let Some(a) = &e.atoms {
            hs.push((format!("{} Euclidean", e.label), a.per_atom_euclid.clone()));
            hs.push((format!("{} AIP", e.label), a.per_atom_aip.clone()));
        }
    }
    if let Some(n) = &r.neurons {
        hs.push(("neurons AIP".into(), n.per_atom_aip.clone()));
    }
    if !hs.is_empty() {
        files.extend(names(
            Histogram {
                title: "Per-atom coherence max_j |⟨a_i, a_j⟩|: Euclidean vs AIP".into(),
                x_label: "coherence".into(),
                series: hs,
                bins: 50,
                log_y: true,
            }
            .save(dir, "coherence_hist")?,
        ));
    }
    let fh: Vec<(String, Vec<f64>)> = r
        .saes
        .iter()
        .map(|e| {
            (
                e.label.clone(),
                e.frequency
                    .iter()
                    .map(|&f| if f > 0.0 { f.log10() } else { -7.0 })
                    .collect(),
            )
        })
        .collect();
    if !fh.is_empty() {
        files.extend(names(
            Histogram {
                title: "Latent activation frequency (dead latents at −7)".into(),
                x_label: "log10 frequency".into(),
                series: fh,
                bins: 50,
                log_y: false,
            }
            .save(dir, "frequency_hist")?,
        ));
    }
    let text = serde_json::to_string_pretty(&serde_json::json!({
        "hook": r.hook,
        "notes": r.notes,
        "saes": r.saes.iter().map(|e| serde_json::json!({
            "label": e.label, "kind": e.kind, "r2": e.r2, "mse": e.mse, "l0": e.l0,
            "dead": e.dead, "dense": e.dense, "fvu": 1.0 - e.r2, "target": e.target,
            "ce": e.ce, "q_star": e.atoms.as_ref().map(|a| a.q_star),
            "coherence": e.atoms.as_ref().map(|a| a.coherence),
        })).collect::<Vec<_>>(),
        "neurons": r.neurons.as_ref().map(|n| serde_json::json!({
            "q_star": n.q_star, "coherence": n.coherence, "mean_support": n.mean_support})),
    }))
    .map_err(|e| crate::Error::msg(format!("summary.json: {e}")))?;
    crate::report::write_atomic(&dir.join("summary.json"), text.as_bytes())?;
    files.push("summary.json".into());
    Ok(files)
}
