//! Patching: residual activations from the true-statement prompt patched into the paired false
//! one (few-shot true/false prompts), per layer and position from the end, scored as the share of
//! the true − false logit difference recovered.

use super::{answer_ids, few_shot_prompt, last_position, scores_of};
use crate::hooks::{Edit, HookPoint, Hooks, Intervention, Positions};
use crate::model::transformer::KvCache;
use crate::model::{Batch, LogitsAt, Model, RunOptions};
use crate::probes::directions::{DirectionsParams, Samples};
use crate::progress::Progress;
use crate::Result;

#[derive(Clone, Debug)]
pub struct PatchingResult {
    /// Positions from the end (0 = last token).
    pub positions: usize,
    /// A label per position from the end: the first pair's false-prompt token there.
    pub labels: Vec<String>,
    /// `[layer][k]`: mean patched logit difference.
    pub logit_diff: Vec<Vec<f64>>,
    /// `[layer][k]`: (LD_patched − LD_false) / (LD_true − LD_false), on the means.
    pub effect: Vec<Vec<f64>>,
    pub ld_true: f64,
    pub ld_false: f64,
    pub n_pairs: usize,
}

pub fn patching(
    model: &Model,
    samples: &Samples,
    params: &DirectionsParams,
    progress: &Progress,
) -> Result<PatchingResult> {
    let nl = model.cfg().n_layers;
    let ids = answer_ids(model)?;
    let shots = &samples.shots[..params.patch_shots.min(samples.shots.len())];
    let tok = model.tokenizer()?;
    let trues = samples
        .pairs
        .iter()
        .map(|(t, _)| model.encode(&few_shot_prompt(shots, &t.text)))
        .collect::<Result<Vec<_>>>()?;
    let falses = samples
        .pairs
        .iter()
        .map(|(_, f)| model.encode(&few_shot_prompt(shots, &f.text)))
        .collect::<Result<Vec<_>>>()?;
    let shortest = trues
        .iter()
        .chain(&falses)
        .map(|s| s.len())
        .min()
        .unwrap_or(0);
    let k = params.patch_positions.min(shortest.saturating_sub(1));
    if k == 0 {
        crate::bail!("directions: patching prompts are too short");
    }
    let labels: Vec<String> = (0..k)
        .map(|j| {
            let s = &falses[0];
            tok.decode(&s[s.len() - 1 - j..s.len() - j], false)
                .unwrap_or_default()
        })
        .collect();
    let points: Vec<HookPoint> = (0..nl).map(HookPoint::ResidPost).collect();
    let mut sum_ld = vec![vec![0f64; k]; nl];
    let (mut sum_true, mut sum_false) = (0f64, 0f64);
    let n = samples.pairs.len();
    let bar = progress.bar(
        (n.div_ceil(params.batch_size.max(1)) * nl) as u64,
        "directions: patching",
    );
    let opts_last = RunOptions {
        logits: LogitsAt::Last,
        stop_at_layer: None,
    };
    let dev = model.device.clone();
    for (tc, fc) in trues
        .chunks(params.batch_size.max(1))
        .zip(falses.chunks(params.batch_size.max(1)))
    {
        // Clean true run: logits and the last k positions of every layer.
        let tb = Batch::new(tc, model.pad_id())?;
        let mut th = Hooks::capture_points(&points).at_positions(Positions::Last(k));
        let tl = model.transformer.forward_with(&tb, &mut th, opts_last)?;
        sum_true += scores_of(&last_position(&tl)?, (ids.0, ids.1))?
            .iter()
            .map(|s| s.2)
            .sum::<f64>();
        // False run: the prefix once into a KV cache, then the last k tokens per patch.
        let fb = Batch::new(fc, model.pad_id())?;
        let t = fb.seq_len;
        let prefix: Vec<Vec<u32>> = fb.ids.iter().map(|r| r[..t - k].to_vec()).collect();
        let suffix: Vec<Vec<u32>> = fb.ids.iter().map(|r| r[t - k..].to_vec()).collect();
        let pb = Batch {
            ids: prefix,
            pad_left: fb.pad_left.clone(),
            seq_len: t - k,
        };
        let mut cache = KvCache::new();
        model.transformer.forward_cached(
            &pb,
            &mut Hooks::none(),
            RunOptions {
                logits: LogitsAt::None,
                stop_at_layer: None,
            },
            &mut cache,
        )?;
        let sb = Batch::new(&suffix, 0)?;
        let mut fh = Hooks::capture_points(&points);
        let fl = model
            .transformer
            .forward_cached(&sb, &mut fh, opts_last, &mut cache.clone())?;
        sum_false += scores_of(&last_position(&fl)?, (ids.0, ids.1))?
            .iter()
            .map(|s| s.2)
            .sum::<f64>();
        for (l, p) in points.iter().enumerate() {
            let ta = th.cache.expect(*p)?.to_device(&dev)?;
            let fa = fh.cache.expect(*p)?.to_device(&dev)?;
            let delta = (ta - fa)?; // [b, k, d]
            for (j, acc) in sum_ld[l].iter_mut().enumerate() {
                let idx = k - 1 - j;
                let v = delta.narrow(1, idx, 1)?.contiguous()?;
                let mut hooks = Hooks::none().with(
                    Intervention::new(
                        *p,
                        Edit::Add {
                            vector: v,
                            scale: 1.0,
                        },
                    )
                    .at(Positions::Indices(vec![idx])),
                );
                let lg = model.transformer.forward_cached(
                    &sb,
                    &mut hooks,
                    opts_last,
                    &mut cache.clone(),
                )?;
                *acc += scores_of(&last_position(&lg)?, (ids.0, ids.1))?
                    .iter()
                    .map(|s| s.2)
                    .sum::<f64>();
            }
            bar.inc(1);
        }
    }
    bar.finish();
    let nn = n as f64;
    let (ld_true, ld_false) = (sum_true / nn, sum_false / nn);
    let logit_diff: Vec<Vec<f64>> = sum_ld
        .iter()
        .map(|r| r.iter().map(|x| x / nn).collect())
        .collect();
    let denom = ld_true - ld_false;
    let effect = logit_diff
        .iter()
        .map(|r| {
            r.iter()
                .map(|x| {
                    if denom.abs() > 1e-9 {
                        (x - ld_false) / denom
                    } else {
                        f64::NAN
                    }
                })
                .collect()
        })
        .collect();
    Ok(PatchingResult {
        positions: k,
        labels,
        logit_diff,
        effect,
        ld_true,
        ld_false,
        n_pairs: n,
    })
}
