//! Comparing two models (base vs post-trained): what is comparable depends on their shapes.

use super::parts::{self, cosine, dot, norm, RefusalCondition};
use super::{DirectionsParams, ModelReport, Samples};
use crate::model::Model;
use crate::progress::Progress;
use crate::Result;

/// One number of the comparison.
#[derive(Clone, Debug)]
pub struct CompareRow {
    pub metric: String,
    /// Layer, when the metric is per layer.
    pub layer: Option<usize>,
    pub value: f64,
    /// Which way (e.g. "a→b") or which model.
    pub detail: String,
}

#[derive(Clone, Debug, Default)]
pub struct CompareReport {
    pub rows: Vec<CompareRow>,
    /// What could not be compared, and why.
    pub skipped: Vec<String>,
    /// Patching map of b minus a (`[layer][k]`), when the maps have one shape.
    pub patching_diff: Option<Vec<Vec<f64>>>,
    /// Refusal generations with the other model's direction: (model, condition).
    pub refusal_transfer: Vec<(String, RefusalCondition)>,
}

impl CompareReport {
    fn push(&mut self, metric: &str, layer: Option<usize>, value: f64, detail: &str) {
        self.rows.push(CompareRow {
            metric: metric.into(),
            layer,
            value,
            detail: detail.into(),
        });
    }

    /// Values of one metric (and detail) ordered by layer.
    pub fn series(&self, metric: &str, detail: &str) -> Vec<(usize, f64)> {
        let mut v: Vec<(usize, f64)> = self
            .rows
            .iter()
            .filter(|r| r.metric == metric && r.detail == detail)
            .filter_map(|r| r.layer.map(|l| (l, r.value)))
            .collect();
        v.sort_by_key(|x| x.0);
        v
    }

    /// The first value of a scalar metric.
    pub fn value(&self, metric: &str, detail: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.metric == metric && r.detail == detail && r.layer.is_none())
            .map(|r| r.value)
    }
}

/// Pearson correlation of two equally long samples (NaN pairs dropped).
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let pairs: Vec<(f64, f64)> = a
        .iter()
        .zip(b)
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .map(|(x, y)| (*x, *y))
        .collect();
    let n = pairs.len() as f64;
    if n < 2.0 {
        return f64::NAN;
    }
    let ma = pairs.iter().map(|p| p.0).sum::<f64>() / n;
    let mb = pairs.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in &pairs {
        sab += (x - ma) * (y - mb);
        saa += (x - ma).powi(2);
        sbb += (y - mb).powi(2);
    }
    if saa == 0.0 || sbb == 0.0 {
        return f64::NAN;
    }
    sab / (saa * sbb).sqrt()
}

/// Intersection over union of two index sets.
pub fn iou(a: &[usize], b: &[usize]) -> f64 {
    let sa: std::collections::BTreeSet<usize> = a.iter().copied().collect();
    let sb: std::collections::BTreeSet<usize> = b.iter().copied().collect();
    let union = sa.union(&sb).count();
    if union == 0 {
        return f64::NAN;
    }
    sa.intersection(&sb).count() as f64 / union as f64
}

/// Compare model `a` (e.g. base) with model `b` (e.g. post-trained) on the same samples.
pub fn compare(
    ma: &Model,
    a: &ModelReport,
    mb: &Model,
    b: &ModelReport,
    samples: &Samples,
    params: &DirectionsParams,
    progress: &Progress,
) -> Result<CompareReport> {
    let mut r = CompareReport::default();
    let same_width = a.d_model == b.d_model;
    let nl = a.n_layers.min(b.n_layers);
    // Per-model summaries: comparable whatever the shapes.
    for m in [a, b] {
        let n = m.name.as_str();
        if let Some(t) = &m.truth {
            let best = t
                .layers
                .iter()
                .max_by(|x, y| x.acc_test.total_cmp(&y.acc_test))
                .expect("at least one layer");
            r.push("truth_best_test_acc", None, best.acc_test, n);
            r.push(
                "truth_best_layer_rel_depth",
                None,
                best.layer as f64 / m.n_layers as f64,
                n,
            );
            r.push("truth_nif", None, t.intervention.nif, n);
        }
        if let Some(rf) = &m.refusal {
            for c in &rf.conditions {
                r.push(
                    &format!("refusal_rate_{}_{}", c.set, c.intervention),
                    None,
                    c.rate(),
                    n,
                );
            }
        }
        if let Some(p) = &m.patching {
            r.push("patching_ld_true", None, p.ld_true, n);
            r.push("patching_ld_false", None, p.ld_false, n);
        }
    }
    if !same_width {
        r.skipped.push(format!(
            "widths differ (d_model {} vs {}): direction cosines, cross-model probe accuracy, intervention and refusal-direction transfer are not defined",
            a.d_model, b.d_model
        ));
    }
    if a.n_layers != b.n_layers {
        r.skipped.push(format!(
            "layer counts differ ({} vs {}): per-layer comparisons use layers 0..{nl} only where widths match; patching maps are not correlated",
            a.n_layers, b.n_layers
        ));
    }
    // Truthfulness.
    if let (Some(ta), Some(tb), true) = (&a.truth, &b.truth, same_width) {
        let bar = progress.bar(2, "directions: compare truth");
        for l in 0..nl {
            r.push(
                "truth_cosine",
                Some(l),
                cosine(&ta.directions[l], &tb.directions[l]),
                "a·b",
            );
            r.push(
                "truth_probe_acc",
                Some(l),
                tb.test.accuracy(l, &ta.directions[l], None),
                "a→b",
            );
            r.push(
                "truth_probe_acc",
                Some(l),
                ta.test.accuracy(l, &tb.directions[l], None),
                "b→a",
            );
            r.push("truth_probe_acc", Some(l), ta.layers[l].acc_test, "a→a");
            r.push("truth_probe_acc", Some(l), tb.layers[l].acc_test, "b→b");
        }
        if a.n_layers == b.n_layers {
            let ab = parts::truth_intervention(
                mb,
                samples,
                params,
                &ta.directions,
                &tb.directions,
                tb.band,
            )?;
            bar.inc(1);
            let ba = parts::truth_intervention(
                ma,
                samples,
                params,
                &tb.directions,
                &ta.directions,
                ta.band,
            )?;
            bar.inc(1);
            r.push("truth_nif_transfer", None, ta.intervention.nif, "a→a");
            r.push("truth_nif_transfer", None, ab.nif, "a→b");
            r.push("truth_nif_transfer", None, ba.nif, "b→a");
            r.push("truth_nif_transfer", None, tb.intervention.nif, "b→b");
        } else {
            r.skipped
                .push("truth intervention transfer: the bands differ in depth".into());
        }
        bar.finish();
    } else if a.truth.is_none() || b.truth.is_none() {
        r.skipped.push("truth: not run".into());
    }
    // Refusal.
    if let (Some(ra), Some(rb), true) = (&a.refusal, &b.refusal, same_width) {
        for l in 0..nl {
            r.push(
                "refusal_cosine",
                Some(l),
                cosine(&ra.diffs[l], &rb.diffs[l]),
                "a·b",
            );
        }
        r.push(
            "refusal_cosine_chosen",
            None,
            cosine(&ra.direction, &rb.direction),
            "a·b",
        );
        if a.n_layers == b.n_layers {
            let bar = progress.bar(2, "directions: compare refusal transfer");
            // A's direction in B (B's own layer and strength), and back.
            let coef_b = params.addition_coef.unwrap_or(rb.coef);
            let cb = parts::refusal_conditions(
                mb,
                samples,
                params,
                &ra.direction,
                coef_b,
                rb.layer,
                false,
                "_from_a",
            )?;
            bar.inc(1);
            let coef_a = params.addition_coef.unwrap_or(ra.coef);
            let ca = parts::refusal_conditions(
                ma,
                samples,
                params,
                &rb.direction,
                coef_a,
                ra.layer,
                false,
                "_from_b",
            )?;
            bar.inc(1);
            bar.finish();
            for c in cb {
                r.push(
                    &format!("refusal_rate_{}_{}", c.set, c.intervention),
                    None,
                    c.rate(),
                    "b",
                );
                r.refusal_transfer.push((b.name.clone(), c));
            }
            for c in ca {
                r.push(
                    &format!("refusal_rate_{}_{}", c.set, c.intervention),
                    None,
                    c.rate(),
                    "a",
                );
                r.refusal_transfer.push((a.name.clone(), c));
            }
            // How much of B's own difference of means lies along A's direction.
            r.push(
                "refusal_projection_share",
                None,
                dot(&rb.diffs[rb.layer], &ra.direction) / norm(&rb.diffs[rb.layer]).max(1e-12),
                "a→b",
            );
        } else {
            r.skipped
                .push("refusal transfer: layer counts differ".into());
        }
    } else if a.refusal.is_none() || b.refusal.is_none() {
        r.skipped.push("refusal: not run".into());
    }
    // Patching maps.
    if let (Some(pa), Some(pb)) = (&a.patching, &b.patching) {
        if pa.effect.len() == pb.effect.len() && pa.positions == pb.positions {
            let fa: Vec<f64> = pa.effect.iter().flatten().copied().collect();
            let fb: Vec<f64> = pb.effect.iter().flatten().copied().collect();
            r.push("patching_pearson_r", None, pearson(&fa, &fb), "a·b");
            let diff: Vec<Vec<f64>> = pa
                .effect
                .iter()
                .zip(&pb.effect)
                .map(|(x, y)| x.iter().zip(y).map(|(p, q)| q - p).collect())
                .collect();
            let mad = diff.iter().flatten().map(|x| x.abs()).sum::<f64>() / fa.len().max(1) as f64;
            r.push("patching_mean_abs_diff", None, mad, "b−a");
            r.patching_diff = Some(diff);
        } else {
            r.skipped.push(format!(
                "patching maps have different shapes ({}×{} vs {}×{})",
                pa.effect.len(),
                pa.positions,
                pb.effect.len(),
                pb.positions
            ));
        }
    }
    // Entropy neurons.
    if let (Some(ea), Some(eb)) = (&a.entropy, &b.entropy) {
        if a.d_mlp == b.d_mlp && same_width {
            r.push(
                "entropy_neuron_iou",
                None,
                iou(&ea.selected, &eb.selected),
                "a·b",
            );
            let ca: Vec<usize> = ea.candidates.iter().map(|c| c.neuron).collect();
            let cb: Vec<usize> = eb.candidates.iter().map(|c| c.neuron).collect();
            r.push("entropy_candidate_iou", None, iou(&ca, &cb), "a·b");
        } else {
            r.skipped.push(format!(
                "entropy-neuron IoU: MLP widths differ ({} vs {}), neuron indices are not comparable",
                a.d_mlp, b.d_mlp
            ));
        }
    }
    Ok(r)
}
