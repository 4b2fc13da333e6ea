//! The probe's tables (relations, prompts, neurons, deactivation, overlap), charts, summary
//! and its [`Probe`] implementation.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::probes::{Context, Probe, Report};
use crate::{Error, Result};

use super::*;

/// Per-relation counts and status.
#[derive(Clone, Debug, Serialize)]
pub struct RelationRow {
    pub relation: String,
    pub name: String,
    pub template: String,
    pub n_subjects: usize,
    pub n_eval: usize,
    pub n_detection: usize,
    pub detection_correct: usize,
    pub eval_correct: usize,
    pub eval_accuracy: f64,
    /// "ok", "too_few_correct_detection", "low_eval_accuracy".
    pub status: String,
}

/// One prompt's outcome (baseline, no intervention).
#[derive(Clone, Debug)]
pub struct PromptRow {
    pub relation: String,
    pub split: &'static str,
    pub subject: String,
    pub object: String,
    pub prompt: String,
    pub generated: String,
    pub correct: bool,
}

/// One selected neuron.
#[derive(Clone, Debug)]
pub struct SelectedNeuron {
    pub id: usize,
    pub layer: usize,
    pub kind: Kind,
    pub index: usize,
    pub ap: f64,
    /// (mean positive − mean negative response) / std of all responses: the AP tie-break.
    pub separation: f64,
    /// 1-based.
    pub rank: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct DeactRow {
    /// The relation whose neurons were zeroed, or "random".
    pub relation_neurons: String,
    pub eval_relation: String,
    pub k: usize,
    pub accuracy_before: f64,
    pub accuracy_after: f64,
    /// (before − after) / before.
    pub drop: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct OverlapRow {
    pub relation_a: String,
    pub relation_b: String,
    pub shared: usize,
    pub jaccard: f64,
}

#[derive(Clone, Debug)]
pub struct NeuronsReport {
    pub layout: NeuronLayout,
    pub k: usize,
    pub k_rule: String,
    pub k_values: Vec<usize>,
    pub relations: Vec<RelationRow>,
    pub prompts: Vec<PromptRow>,
    /// Relation id → its top-k neurons (ok relations only).
    pub selected: Vec<(String, Vec<SelectedNeuron>)>,
    /// The random control neurons (the first m form the control at k = m).
    pub random: Vec<usize>,
    pub deactivation: Vec<DeactRow>,
    pub overlap: Vec<OverlapRow>,
    /// Shape `[neurons, prompts]` and bytes of the f16 response buffer.
    pub buffer_shape: (usize, usize),
    pub buffer_bytes: usize,
    pub timings: Vec<(String, f64)>,
    pub notes: Vec<String>,
}

impl NeuronsReport {
    /// Count of selected neurons per layer for each relation.
    pub fn per_layer(&self) -> Vec<(String, Vec<usize>)> {
        self.selected
            .iter()
            .map(|(name, ns)| {
                let mut c = vec![0usize; self.layout.n_layers];
                for n in ns {
                    c[n.layer] += 1;
                }
                (name.clone(), c)
            })
            .collect()
    }

    /// The drop of `neurons`' deactivation on `eval` at k (None if not measured).
    pub fn drop_at(&self, neurons: &str, eval: &str, k: usize) -> Option<f64> {
        self.deactivation
            .iter()
            .find(|d| d.relation_neurons == neurons && d.eval_relation == eval && d.k == k)
            .map(|d| d.drop)
    }

    /// Relation ids that got neurons.
    pub fn ok_relations(&self) -> Vec<String> {
        self.selected.iter().map(|s| s.0.clone()).collect()
    }

    /// A one-paragraph summary for the manifest and the terminal.
    pub fn summary_json(&self) -> serde_json::Value {
        let ok = self.ok_relations();
        let mut diag = vec![];
        let mut off = vec![];
        let mut rand = vec![];
        for a in &ok {
            for b in &ok {
                if let Some(d) = self.drop_at(a, b, self.k) {
                    if a == b {
                        diag.push(d);
                    } else {
                        off.push(d);
                    }
                }
            }
            if let Some(d) = self.drop_at("random", a, self.k) {
                rand.push(d);
            }
        }
        let mean = |v: &[f64]| {
            let f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
            if f.is_empty() {
                f64::NAN
            } else {
                f.iter().sum::<f64>() / f.len() as f64
            }
        };
        let mut per_layer_total = vec![0usize; self.layout.n_layers];
        for (_, c) in self.per_layer() {
            for (t, x) in per_layer_total.iter_mut().zip(c) {
                *t += x;
            }
        }
        // Cumulativity: mean own-relation drop and random drop at every k of the sweep.
        let cumulative: Vec<serde_json::Value> = self
            .k_values
            .iter()
            .map(|&m| {
                let own: Vec<f64> = ok.iter().filter_map(|a| self.drop_at(a, a, m)).collect();
                let rnd: Vec<f64> = ok
                    .iter()
                    .filter_map(|a| self.drop_at("random", a, m))
                    .collect();
                serde_json::json!({"k": m, "mean_drop_own": mean(&own), "mean_drop_random": mean(&rnd)})
            })
            .collect();
        // Interference: the most negative off-diagonal drops; versatility: the largest overlaps.
        let mut neg: Vec<(&str, &str, f64)> = self
            .deactivation
            .iter()
            .filter(|d| {
                d.k == self.k
                    && d.relation_neurons != "random"
                    && d.relation_neurons != d.eval_relation
                    && d.drop < 0.0
            })
            .map(|d| {
                (
                    d.relation_neurons.as_str(),
                    d.eval_relation.as_str(),
                    d.drop,
                )
            })
            .collect();
        neg.sort_by(|a, b| a.2.total_cmp(&b.2));
        let mut shared: Vec<&OverlapRow> = self
            .overlap
            .iter()
            .filter(|o| o.relation_a < o.relation_b)
            .collect();
        shared.sort_by_key(|o| std::cmp::Reverse(o.shared));
        let own_beats_other = ok
            .iter()
            .filter(|a| {
                let own = self.drop_at(a, a, self.k).unwrap_or(f64::NAN);
                let others: Vec<f64> = ok
                    .iter()
                    .filter(|b| b != a)
                    .filter_map(|b| self.drop_at(b, a, self.k))
                    .collect();
                own > mean(&others)
            })
            .count();
        serde_json::json!({
            "k": self.k,
            "relations_ok": ok,
            "cumulative": cumulative,
            "own_drop_above_mean_other_drop": format!("{own_beats_other}/{}", ok.len()),
            "most_negative_drops": neg.iter().take(8).map(|(a, b, d)| format!("{a} → {b}: {d:.3}")).collect::<Vec<_>>(),
            "largest_overlaps": shared.iter().take(8).map(|o| format!("{} & {}: {} shared (Jaccard {:.3})", o.relation_a, o.relation_b, o.shared, o.jaccard)).collect::<Vec<_>>(),
            "mean_drop_own": mean(&diag),
            "mean_drop_other": mean(&off),
            "mean_drop_random": mean(&rand),
            "negative_off_diagonal_drops": off.iter().filter(|&&d| d < 0.0).count(),
            "off_diagonal_pairs": off.len(),
            "selected_per_layer_all_relations": per_layer_total,
        })
    }
}

fn names(paths: Vec<PathBuf>) -> Vec<String> {
    paths
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect()
}

/// Write `neurons.parquet`, `deactivation.parquet`, `overlap.parquet`, `relations.parquet`,
/// `prompts.parquet` and the charts into `dir`; returns the files written (relative names).
pub fn write_outputs(r: &NeuronsReport, dir: &Path) -> Result<Vec<String>> {
    use crate::report::chart::{Colormap, Heatmap, LineChart, Series};
    use crate::report::table::{write_parquet, Table};
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut files = vec![];

    let (mut rel, mut layer, mut kind, mut index, mut ap, mut rank) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut sep = vec![];
    for (name, ns) in &r.selected {
        for n in ns {
            rel.push(name.clone());
            layer.push(n.layer as u32);
            kind.push(n.kind.name().to_string());
            index.push(n.index as u32);
            ap.push(n.ap);
            sep.push(n.separation);
            rank.push(n.rank as u32);
        }
    }
    let mut df = Table::new()
        .col("relation", rel)
        .col("layer", layer)
        .col("kind", kind)
        .col("index", index)
        .col("ap", ap)
        .col("rank", rank)
        .col("separation", sep)
        .build()?;
    write_parquet(&mut df, &dir.join("neurons.parquet"))?;
    files.push("neurons.parquet".to_string());

    let d = &r.deactivation;
    let mut df = Table::new()
        .col(
            "relation_neurons",
            d.iter()
                .map(|x| x.relation_neurons.clone())
                .collect::<Vec<_>>(),
        )
        .col(
            "eval_relation",
            d.iter()
                .map(|x| x.eval_relation.clone())
                .collect::<Vec<_>>(),
        )
        .col("k", d.iter().map(|x| x.k as u32).collect::<Vec<_>>())
        .col(
            "accuracy_before",
            d.iter().map(|x| x.accuracy_before).collect::<Vec<_>>(),
        )
        .col(
            "accuracy_after",
            d.iter().map(|x| x.accuracy_after).collect::<Vec<_>>(),
        )
        .col("drop", d.iter().map(|x| x.drop).collect::<Vec<_>>())
        .build()?;
    write_parquet(&mut df, &dir.join("deactivation.parquet"))?;
    files.push("deactivation.parquet".to_string());

    let o = &r.overlap;
    let mut df = Table::new()
        .col(
            "relation_a",
            o.iter().map(|x| x.relation_a.clone()).collect::<Vec<_>>(),
        )
        .col(
            "relation_b",
            o.iter().map(|x| x.relation_b.clone()).collect::<Vec<_>>(),
        )
        .col(
            "shared",
            o.iter().map(|x| x.shared as u32).collect::<Vec<_>>(),
        )
        .col("jaccard", o.iter().map(|x| x.jaccard).collect::<Vec<_>>())
        .build()?;
    write_parquet(&mut df, &dir.join("overlap.parquet"))?;
    files.push("overlap.parquet".to_string());

    let rr = &r.relations;
    let u = |f: &dyn Fn(&RelationRow) -> usize| rr.iter().map(|x| f(x) as u32).collect::<Vec<_>>();
    let s = |f: &dyn Fn(&RelationRow) -> String| rr.iter().map(f).collect::<Vec<_>>();
    let mut df = Table::new()
        .col("relation", s(&|x| x.relation.clone()))
        .col("name", s(&|x| x.name.clone()))
        .col("template", s(&|x| x.template.clone()))
        .col("n_subjects", u(&|x| x.n_subjects))
        .col("n_eval", u(&|x| x.n_eval))
        .col("n_detection", u(&|x| x.n_detection))
        .col("detection_correct", u(&|x| x.detection_correct))
        .col(
            "detection_accuracy",
            rr.iter()
                .map(|x| x.detection_correct as f64 / x.n_detection.max(1) as f64)
                .collect::<Vec<_>>(),
        )
        .col("eval_correct", u(&|x| x.eval_correct))
        .col(
            "eval_accuracy",
            rr.iter().map(|x| x.eval_accuracy).collect::<Vec<_>>(),
        )
        .col("status", s(&|x| x.status.clone()))
        .build()?;
    write_parquet(&mut df, &dir.join("relations.parquet"))?;
    files.push("relations.parquet".to_string());

    let p = &r.prompts;
    let mut df = Table::new()
        .col(
            "relation",
            p.iter().map(|x| x.relation.clone()).collect::<Vec<_>>(),
        )
        .col("split", p.iter().map(|x| x.split).collect::<Vec<_>>())
        .col(
            "subject",
            p.iter().map(|x| x.subject.clone()).collect::<Vec<_>>(),
        )
        .col(
            "object",
            p.iter().map(|x| x.object.clone()).collect::<Vec<_>>(),
        )
        .col(
            "prompt",
            p.iter().map(|x| x.prompt.clone()).collect::<Vec<_>>(),
        )
        .col(
            "generated",
            p.iter().map(|x| x.generated.clone()).collect::<Vec<_>>(),
        )
        .col("correct", p.iter().map(|x| x.correct).collect::<Vec<_>>())
        .build()?;
    write_parquet(&mut df, &dir.join("prompts.parquet"))?;
    files.push("prompts.parquet".to_string());

    if r.selected.is_empty() {
        return Ok(files);
    }
    let ok = r.ok_relations();
    // Neurons per layer.
    files.extend(names(
        LineChart {
            title: format!("Relation-specific neurons per layer (top {} by AP)", r.k),
            x_label: "layer".into(),
            y_label: "neurons".into(),
            series: r
                .per_layer()
                .into_iter()
                .map(|(name, c)| {
                    Series::new(
                        name,
                        c.iter()
                            .enumerate()
                            .map(|(l, &v)| (l as f64, v as f64))
                            .collect(),
                    )
                })
                .collect(),
        }
        .save(dir, "neurons_per_layer")?,
    ));
    // Drop matrix.
    let mut rows: Vec<String> = ok.clone();
    rows.push("random".into());
    let values: Vec<Vec<f64>> = rows
        .iter()
        .map(|a| {
            ok.iter()
                .map(|b| r.drop_at(a, b, r.k).unwrap_or(f64::NAN))
                .collect()
        })
        .collect();
    files.extend(names(
        Heatmap {
            title: format!("Accuracy drop when deactivating k = {} neurons", r.k),
            x_label: "evaluated relation".into(),
            y_label: "deactivated neurons of".into(),
            values,
            x_labels: Some(ok.clone()),
            y_labels: Some(rows),
            range: Some((-1.0, 1.0)),
            colormap: Colormap::Diverging,
            value_label: "accuracy drop (fraction)".into(),
        }
        .save(dir, "drop_heatmap")?,
    ));
    // Cumulative curves.
    let mut series: Vec<Series> = ok
        .iter()
        .map(|a| {
            Series::new(
                a.clone(),
                r.k_values
                    .iter()
                    .filter_map(|&m| r.drop_at(a, a, m).map(|d| (m as f64, d)))
                    .collect(),
            )
        })
        .collect();
    series.push(
        Series::new(
            "random (mean over relations)",
            r.k_values
                .iter()
                .map(|&m| {
                    let v: Vec<f64> = ok
                        .iter()
                        .filter_map(|a| r.drop_at("random", a, m))
                        .filter(|x| x.is_finite())
                        .collect();
                    (m as f64, v.iter().sum::<f64>() / v.len().max(1) as f64)
                })
                .collect(),
        )
        .dashed(),
    );
    files.extend(names(
        LineChart {
            title: "Own-relation accuracy drop vs number of deactivated neurons".into(),
            x_label: "k".into(),
            y_label: "drop".into(),
            series,
        }
        .save(dir, "cumulative_k")?,
    ));
    // Overlap.
    let values: Vec<Vec<f64>> = ok
        .iter()
        .map(|a| {
            ok.iter()
                .map(|b| {
                    r.overlap
                        .iter()
                        .find(|o| o.relation_a == *a && o.relation_b == *b)
                        .map_or(f64::NAN, |o| o.jaccard)
                })
                .collect()
        })
        .collect();
    files.extend(names(
        Heatmap {
            title: format!("Overlap of relation neurons (Jaccard, k = {})", r.k),
            x_label: "relation".into(),
            y_label: "relation".into(),
            values,
            x_labels: Some(ok.clone()),
            y_labels: Some(ok),
            range: Some((0.0, 1.0)),
            colormap: Colormap::Viridis,
            value_label: "Jaccard index".into(),
        }
        .save(dir, "overlap_heatmap")?,
    ));
    Ok(files)
}

/// `engram neurons`.
pub struct Neurons;

impl Probe for Neurons {
    const NAME: &'static str = "neurons";
    type Params = NeuronsParams;
    type Report = NeuronsReport;

    fn seed(p: &NeuronsParams) -> Option<u64> {
        Some(p.seed)
    }

    fn check(p: &NeuronsParams) -> Result<()> {
        if !(p.k_share > 0.0 && p.k_share <= 1.0) {
            crate::bail!("--k-share must be in (0, 1], got {}", p.k_share);
        }
        if p.k == 0 {
            crate::bail!("--k must be at least 1");
        }
        if p.batch_size == 0 || p.max_new_tokens == 0 || p.neg_ratio == 0 {
            crate::bail!("--batch-size, --max-new-tokens and --neg-ratio must be at least 1");
        }
        if p.eval_per_relation == 0 {
            crate::bail!(
                "--eval-per-relation must be at least 1 (the ablation drops are measured on them)"
            );
        }
        if let Some(f) = p.k_multiples.iter().find(|f| !(f.is_finite() && **f > 0.0)) {
            crate::bail!("--k-multiples must be positive numbers, got {f}");
        }
        crate::data::require_dir(&p.relations, "relations")?;
        // Read the relations before the (slow) model load so bad data fails fast.
        load_relations(&p.relations, &p.only)?;
        Ok(())
    }

    fn run(cx: &mut Context<'_>, p: &NeuronsParams) -> Result<NeuronsReport> {
        let model = cx.model()?;
        let report = run(&model, p, cx.progress)?;
        for (name, secs) in &report.timings {
            cx.manifest.record_timing(&format!("probe.{name}"), *secs);
        }
        Ok(report)
    }
}

impl Report for NeuronsReport {
    fn write(&self, dir: &Path) -> Result<Vec<String>> {
        write_outputs(self, dir)
    }

    fn notes(&self) -> Vec<String> {
        let mut n = self.notes.clone();
        n.push(format!("summary: {}", self.summary_json()));
        n
    }

    fn summary(&self) -> Vec<String> {
        let mut out = vec![self.k_rule.clone()];
        for r in &self.relations {
            out.push(format!(
                "  {:<34} eval acc {:.2} ({}/{})  detection correct {:>4}/{:<4} {}",
                r.relation,
                r.eval_accuracy,
                r.eval_correct,
                r.n_eval,
                r.detection_correct,
                r.n_detection,
                if r.status == "ok" { "" } else { &r.status }
            ));
        }
        let s = self.summary_json();
        let num =
            |v: &serde_json::Value| v.as_f64().map_or("n/a".to_string(), |x| format!("{x:.3}"));
        out.push(format!(
            "mean drop: own relation {}, other relations {}, random neurons {}; \
             negative off-diagonal drops {}/{}",
            num(&s["mean_drop_own"]),
            num(&s["mean_drop_other"]),
            num(&s["mean_drop_random"]),
            s["negative_off_diagonal_drops"],
            s["off_diagonal_pairs"]
        ));
        if let Some(c) = s["cumulative"].as_array() {
            for e in c {
                out.push(format!(
                    "  k = {:>6}: mean own drop {}, random {}",
                    e["k"],
                    num(&e["mean_drop_own"]),
                    num(&e["mean_drop_random"])
                ));
            }
        }
        out
    }
}
