//! Truth: linear probes for true vs false statements per layer (train, test and held-out
//! accuracy), the mass-mean truth direction, and the intervention that adds it to flip the
//! model's true/false answers.

use candle_core::Tensor;

use super::{
    answer_ids, answer_scores, dot, few_shot_prompt, mean_rows, norm, resid_at, sub, unit,
};
use crate::hooks::{Edit, HookPoint, Hooks, Intervention, Positions};
use crate::model::Model;
use crate::probes::directions::{DirectionsParams, Samples, Statement};
use crate::progress::Progress;
use crate::Result;

/// Per-layer probe accuracies.
#[derive(Clone, Debug)]
pub struct TruthLayer {
    pub layer: usize,
    pub acc_train: f64,
    pub acc_test: f64,
    /// (dataset, accuracy) per held-out dataset.
    pub acc_heldout: Vec<(String, f64)>,
    pub direction_norm: f64,
}

/// The truth intervention's outcome.
#[derive(Clone, Debug, Default)]
pub struct TruthIntervention {
    pub labels: Vec<bool>,
    pub p_diff_before: Vec<f64>,
    pub p_diff_after: Vec<f64>,
    /// NIF of adding the direction to false statements: ΔP_diff / (1 − P_diff).
    pub nif_false: f64,
    /// NIF of subtracting it from true statements: ΔP_diff / (−1 − P_diff).
    pub nif_true: f64,
    pub nif: f64,
}

/// Centred activations of labelled statements, per layer.
#[derive(Clone, Debug, Default)]
pub struct LabelledActs {
    /// `[layer][row][d]`, centred per dataset.
    pub acts: Vec<Vec<Vec<f32>>>,
    pub labels: Vec<bool>,
    pub datasets: Vec<String>,
}

impl LabelledActs {
    /// Accuracy at `layer` of "true iff x·dir > 0" (optionally for one dataset).
    pub fn accuracy(&self, layer: usize, dir: &[f32], dataset: Option<&str>) -> f64 {
        let (mut ok, mut n) = (0usize, 0usize);
        for (i, x) in self.acts[layer].iter().enumerate() {
            if dataset.is_some_and(|d| self.datasets[i] != d) {
                continue;
            }
            n += 1;
            ok += ((dot(x, dir) > 0.0) == self.labels[i]) as usize;
        }
        ok as f64 / n.max(1) as f64
    }

    pub fn dataset_names(&self) -> Vec<String> {
        let mut v = self.datasets.clone();
        v.sort();
        v.dedup();
        v
    }
}

#[derive(Clone, Debug)]
pub struct TruthResult {
    pub layers: Vec<TruthLayer>,
    /// Difference of means per layer (`[layer][d]`), at `hook_resid_post`.
    pub directions: Vec<Vec<f32>>,
    pub train: LabelledActs,
    pub test: LabelledActs,
    pub heldout: LabelledActs,
    /// Layers [start, end) of the intervention.
    pub band: (usize, usize),
    pub intervention: TruthIntervention,
    pub answer_tokens: (String, String),
}

/// Activations of statements at their last token, centred per dataset.
pub fn statement_acts(
    model: &Model,
    rows: &[Statement],
    batch_size: usize,
) -> Result<LabelledActs> {
    let nl = model.cfg().n_layers;
    let seqs = rows
        .iter()
        .map(|s| model.encode(&s.text))
        .collect::<Result<Vec<_>>>()?;
    let points: Vec<HookPoint> = (0..nl).map(HookPoint::ResidPost).collect();
    let mut acts = resid_at(model, &seqs, &points, 0, batch_size)?;
    let datasets: Vec<String> = rows.iter().map(|s| s.dataset.clone()).collect();
    let mut names = datasets.clone();
    names.sort();
    names.dedup();
    for layer in acts.iter_mut() {
        for n in &names {
            let idx: Vec<usize> = (0..rows.len()).filter(|&i| &datasets[i] == n).collect();
            let m = mean_rows(&idx.iter().map(|&i| &layer[i]).collect::<Vec<_>>());
            for i in idx {
                layer[i] = sub(&layer[i], &m);
            }
        }
    }
    Ok(LabelledActs {
        acts,
        labels: rows.iter().map(|s| s.label).collect(),
        datasets,
    })
}

/// Default band: the second quarter of the depth (at least one layer).
pub fn default_band(n_layers: usize) -> (usize, usize) {
    let a = (n_layers as f64 * 0.25).round() as usize;
    let b = ((n_layers as f64 * 0.5).round() as usize).max(a + 1);
    (a.min(n_layers - 1), b.min(n_layers))
}

/// Add `±vec_l` (vec_l = û_l·(diff_l·û_l), û from `source_dirs`, diff from `target_diffs`) to
/// the last two positions of the few-shot prompt at every layer of `band`: + for false
/// statements, − for true ones.
pub fn truth_intervention(
    model: &Model,
    samples: &Samples,
    params: &DirectionsParams,
    source_dirs: &[Vec<f32>],
    target_diffs: &[Vec<f32>],
    band: (usize, usize),
) -> Result<TruthIntervention> {
    let ids = answer_ids(model)?;
    let shots = &samples.shots[..params.shots.min(samples.shots.len())];
    let dev = model.device.clone();
    let mut res = TruthIntervention::default();
    for label in [false, true] {
        let rows: Vec<&Statement> = samples
            .intervene
            .iter()
            .filter(|s| s.label == label)
            .collect();
        if rows.is_empty() {
            continue;
        }
        let seqs = rows
            .iter()
            .map(|s| model.encode(&few_shot_prompt(shots, &s.text)))
            .collect::<Result<Vec<_>>>()?;
        let before = answer_scores(
            model,
            &seqs,
            &Hooks::none(),
            (ids.0, ids.1),
            params.batch_size,
        )?;
        let mut hooks = Hooks::none();
        for l in band.0..band.1 {
            let u = unit(&source_dirs[l]);
            let c = dot(&target_diffs[l], &u);
            let v: Vec<f32> = u.iter().map(|x| (*x as f64 * c) as f32).collect();
            let v = Tensor::from_vec(v, u.len(), &dev)?;
            hooks.add(
                Intervention::new(
                    HookPoint::ResidPost(l),
                    Edit::Add {
                        vector: v,
                        scale: if label { -1.0 } else { 1.0 },
                    },
                )
                .at(Positions::Last(2)),
            );
        }
        let after = answer_scores(model, &seqs, &hooks, (ids.0, ids.1), params.batch_size)?;
        let pd = |s: &(f64, f64, f64)| s.0 - s.1;
        let mb = before.iter().map(pd).sum::<f64>() / before.len() as f64;
        let ma = after.iter().map(pd).sum::<f64>() / after.len() as f64;
        let target = if label { -1.0 } else { 1.0 };
        let nif = (ma - mb) / (target - mb);
        if label {
            res.nif_true = nif;
        } else {
            res.nif_false = nif;
        }
        for (b, a) in before.iter().zip(&after) {
            res.labels.push(label);
            res.p_diff_before.push(pd(b));
            res.p_diff_after.push(pd(a));
        }
    }
    res.nif = (res.nif_true + res.nif_false) / 2.0;
    Ok(res)
}

pub fn truth(
    model: &Model,
    samples: &Samples,
    params: &DirectionsParams,
    progress: &Progress,
) -> Result<TruthResult> {
    let nl = model.cfg().n_layers;
    let bar = progress.bar(4, "directions: truth");
    let train = statement_acts(model, &samples.train, params.batch_size)?;
    bar.inc(1);
    let test = statement_acts(model, &samples.test, params.batch_size)?;
    bar.inc(1);
    let heldout = if samples.heldout.is_empty() {
        LabelledActs {
            acts: vec![vec![]; nl],
            ..Default::default()
        }
    } else {
        statement_acts(model, &samples.heldout, params.batch_size)?
    };
    bar.inc(1);
    let mut directions = vec![];
    let mut layers = vec![];
    for l in 0..nl {
        let t: Vec<&Vec<f32>> = train.acts[l]
            .iter()
            .zip(&train.labels)
            .filter(|(_, y)| **y)
            .map(|(x, _)| x)
            .collect();
        let f: Vec<&Vec<f32>> = train.acts[l]
            .iter()
            .zip(&train.labels)
            .filter(|(_, y)| !**y)
            .map(|(x, _)| x)
            .collect();
        let dir = sub(&mean_rows(&t), &mean_rows(&f));
        layers.push(TruthLayer {
            layer: l,
            acc_train: train.accuracy(l, &dir, None),
            acc_test: test.accuracy(l, &dir, None),
            acc_heldout: heldout
                .dataset_names()
                .into_iter()
                .map(|n| {
                    let a = heldout.accuracy(l, &dir, Some(&n));
                    (n, a)
                })
                .collect(),
            direction_norm: norm(&dir),
        });
        directions.push(dir);
    }
    let band = match params.band {
        Some((a, b)) => {
            if b > nl {
                crate::bail!("directions: band {a}..{b} exceeds the model's {nl} layers");
            }
            (a, b)
        }
        None => default_band(nl),
    };
    let ids = answer_ids(model)?;
    let intervention = truth_intervention(model, samples, params, &directions, &directions, band)?;
    bar.inc(1);
    bar.finish();
    Ok(TruthResult {
        layers,
        directions,
        train,
        test,
        heldout,
        band,
        intervention,
        answer_tokens: (ids.2, ids.3),
    })
}
