//! SAE metrics over a store's held-out shards, and (with a model) CE-loss recovered and KL when
//! the reconstruction is spliced back in at the hook point.
//!
//! - R² = 1 − Σ‖m − m̂‖² / Σ‖m − m̄‖² (m̄ = the mean over the evaluation samples);
//!   MSE = Σ‖m − m̂‖² / (N·d) (per element); L0 = mean number of active latents per sample;
//!   dead = latents that never fire on the evaluation samples.
//! - CE-loss recovered = (CE_zero − CE_sae) / (CE_zero − CE_clean), KL = mean over predicted
//!   positions of KL(p_clean ‖ p_spliced). Documents are cut into windows of `context − 1`
//!   tokens with the model's BOS in front; the reconstruction (or zero) replaces the activation at
//!   every real position but the first (which stays clean, as it is not in the training data),
//!   through `Edit::Patch`; losses are averaged over the predictions made at those positions.

use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};

use super::atoms::{self, AtomStats};
use super::store::ActivationStore;
use super::{Sae, SaeKind};
use crate::hooks::{Edit, HookPoint, Hooks, Intervention};
use crate::model::{Batch, Model};
use crate::progress::Progress;
use crate::Result;

mod outputs;
pub use outputs::write_outputs;

/// Evaluation settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct EvalParams {
    /// Held-out shards at the end of the store (must match training's `eval_shards`).
    pub eval_shards: usize,
    /// Evaluation samples (from the held-out shards).
    pub max_samples: usize,
    /// Samples for S̃ (from every shard).
    pub atom_samples: usize,
    /// Ridge ε of S̃, relative to tr(E[m mᵀ]) / d.
    pub ridge: f64,
    /// Distinct top tokens listed per latent.
    pub top_tokens: usize,
    /// Documents for CE / KL (taken after those the store consumed).
    pub ce_docs: usize,
    pub ce_context: usize,
    pub ce_batch: usize,
}

impl Default for EvalParams {
    fn default() -> Self {
        EvalParams {
            eval_shards: 1,
            max_samples: 32768,
            atom_samples: 100_000,
            ridge: 1e-4,
            top_tokens: 5,
            ce_docs: 8,
            ce_context: 128,
            ce_batch: 4,
        }
    }
}

/// CE / KL of one SAE spliced into the model.
#[derive(Clone, Debug, Serialize)]
pub struct CeResult {
    pub ce_clean: f64,
    pub ce_zero: f64,
    pub ce_sae: f64,
    pub ce_recovered: f64,
    pub kl: f64,
    pub positions: usize,
}

/// Everything measured for one SAE.
#[derive(Clone, Debug, Serialize)]
pub struct SaeEval {
    pub label: String,
    pub kind: SaeKind,
    pub layer: Option<usize>,
    pub dict_size: usize,
    /// R² = 1 − FVU: SAEBench's "explained variance".
    pub r2: f64,
    pub mse: f64,
    pub l0: f64,
    pub dead: usize,
    /// Latents firing on more than 10% of the samples (SAEBench's dense latents).
    pub dense: usize,
    /// Transcoders: the hook reconstructed.
    pub target: Option<String>,
    pub n_samples: usize,
    /// Per latent: share of samples where it fires, mean activation when firing.
    pub frequency: Vec<f64>,
    pub mean_activation: Vec<f64>,
    pub threshold: Option<Vec<f64>>,
    /// Per latent: up to `top_tokens` (token id, max activation), distinct tokens.
    pub top_tokens: Vec<Vec<(u32, f32)>>,
    /// Per-sample L0.
    #[serde(skip)]
    pub support: Vec<f64>,
    pub ce: Option<CeResult>,
    pub atoms: Option<AtomStats>,
}

/// R², MSE, L0, frequencies and top tokens of `sae` on row-major `[N, d]` samples.
pub fn reconstruction_metrics(
    sae: &Sae,
    label: &str,
    acts: &[f32],
    tokens: &[u32],
    top_k_tokens: usize,
) -> Result<SaeEval> {
    reconstruction_metrics_to(sae, label, acts, None, tokens, top_k_tokens)
}

/// [`reconstruction_metrics`] of a transcoder: `acts` `[N, d_in]` in, `target` `[N, d_out]`
/// to reconstruct (`acts` itself when `None`).
pub fn reconstruction_metrics_to(
    sae: &Sae,
    label: &str,
    acts: &[f32],
    target: Option<&[f32]>,
    tokens: &[u32],
    top_k_tokens: usize,
) -> Result<SaeEval> {
    let d_in = sae.d_in();
    let d = sae.d_out();
    let want = target.unwrap_or(acts);
    let n_lat = sae.d_sae();
    let n = acts.len() / d_in;
    if want.len() != n * d {
        crate::bail!(
            "SAE `{label}`: {} target values for {n} samples of width {d}",
            want.len()
        );
    }
    let mut mean = vec![0f64; d];
    for row in want.chunks(d) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n.max(1) as f64);
    let (mut sse, mut sst) = (0f64, 0f64);
    let mut fires = vec![0u64; n_lat];
    let mut sums = vec![0f64; n_lat];
    let mut top: Vec<Vec<(u32, f32)>> = vec![vec![]; n_lat];
    let mut support = Vec::with_capacity(n);
    let dev = sae.device().clone();
    let chunk = 2048;
    for (c, block) in acts.chunks(chunk * d_in).enumerate() {
        let rows = block.len() / d_in;
        let x = Tensor::from_slice(block, (rows, d_in), &dev)?;
        let y = &want[c * chunk * d..(c * chunk + rows) * d];
        let z = sae.encode(&x)?;
        let mut xh = sae.decode(&z)?;
        if let Some(w) = &sae.w_skip {
            xh = (xh + x.matmul(&w.t()?)?)?;
        }
        let yt = Tensor::from_slice(y, (rows, d), &dev)?;
        sse += (xh - &yt)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        for row in y.chunks(d) {
            for (&v, m) in row.iter().zip(&mean) {
                sst += (v as f64 - m) * (v as f64 - m);
            }
        }
        let zv: Vec<f32> = z.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?;
        for r in 0..rows {
            let tok = tokens.get(c * chunk + r).copied().unwrap_or(0);
            let mut l0 = 0usize;
            for (j, &v) in zv[r * n_lat..(r + 1) * n_lat].iter().enumerate() {
                if v > 0.0 {
                    l0 += 1;
                    fires[j] += 1;
                    sums[j] += v as f64;
                    if top_k_tokens > 0 {
                        push_top(&mut top[j], tok, v, top_k_tokens);
                    }
                }
            }
            support.push(l0 as f64);
        }
    }
    let layer = sae
        .hook_name()
        .and_then(|h| h.parse::<HookPoint>().ok())
        .and_then(|p| p.layer());
    Ok(SaeEval {
        label: label.to_string(),
        kind: sae.kind,
        layer,
        dict_size: n_lat,
        r2: if sst > 0.0 { 1.0 - sse / sst } else { f64::NAN },
        mse: sse / (n.max(1) * d) as f64,
        l0: support.iter().sum::<f64>() / n.max(1) as f64,
        dead: fires.iter().filter(|&&f| f == 0).count(),
        dense: fires
            .iter()
            .filter(|&&f| f as f64 > 0.1 * n.max(1) as f64)
            .count(),
        target: sae.hook_name_out(),
        n_samples: n,
        frequency: fires.iter().map(|&f| f as f64 / n.max(1) as f64).collect(),
        mean_activation: fires
            .iter()
            .zip(&sums)
            .map(|(&f, &s)| if f > 0 { s / f as f64 } else { 0.0 })
            .collect(),
        threshold: sae
            .threshold
            .as_ref()
            .map(|t| -> Result<Vec<f64>> {
                Ok(t.to_dtype(DType::F64)?.to_device(&Device::Cpu)?.to_vec1()?)
            })
            .transpose()?,
        top_tokens: top,
        support,
        ce: None,
        atoms: None,
    })
}

fn push_top(list: &mut Vec<(u32, f32)>, tok: u32, v: f32, k: usize) {
    if let Some(e) = list.iter_mut().find(|e| e.0 == tok) {
        if v > e.1 {
            e.1 = v;
        }
    } else if list.len() < k {
        list.push((tok, v));
    } else if let Some((i, _)) = list
        .iter()
        .enumerate()
        .min_by(|a, b| a.1 .1.total_cmp(&b.1 .1))
    {
        if v > list[i].1 {
            list[i] = (tok, v);
        }
    } else {
        return;
    }
    list.sort_by(|a, b| b.1.total_cmp(&a.1));
}

/// Mean next-token CE over masked positions and, against `clean_logp`, the mean KL.
fn ce_and_kl(
    logits: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
    clean_logp: Option<&Tensor>,
) -> Result<(f64, f64, Tensor)> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let nll = logp
        .gather(&targets.unsqueeze(D::Minus1)?, D::Minus1)?
        .squeeze(D::Minus1)?
        .neg()?;
    let ce = (nll * mask)?.sum_all()?.to_scalar::<f32>()? as f64;
    let kl = match clean_logp {
        Some(c) => {
            let per = (c.exp()? * (c - &logp)?)?.sum(D::Minus1)?;
            (per * mask)?.sum_all()?.to_scalar::<f32>()? as f64
        }
        None => 0.0,
    };
    Ok((ce, kl, logp))
}

/// CE-loss recovered and KL of each SAE at `point` over token windows. With `skip_first`, each
/// window's first position (BOS, not in the SAE's training data) keeps its clean activation and
/// its prediction is not scored.
pub fn ce_recovered(
    model: &Model,
    saes: &[&Sae],
    point: HookPoint,
    windows: &[Vec<u32>],
    skip_first: bool,
    batch_size: usize,
    progress: &Progress,
) -> Result<Vec<CeResult>> {
    let (mut clean, mut zero, mut n_pos) = (0f64, 0f64, 0usize);
    let mut sae_ce = vec![0f64; saes.len()];
    let mut sae_kl = vec![0f64; saes.len()];
    let bar = progress.bar(windows.len() as u64, "CE / KL with spliced SAEs");
    for rows in windows.chunks(batch_size.max(1)) {
        let batch = Batch::new(rows, model.pad_id())?;
        let (b, t) = (batch.len(), batch.seq_len);
        if t < 2 {
            continue;
        }
        // Positions whose activation is replaced, and whose predictions are scored.
        let mut m = vec![0f32; b * t];
        for (r, &pad) in batch.pad_left.iter().enumerate() {
            let first = pad + usize::from(skip_first);
            for p in first..t {
                m[r * t + p] = 1.0;
            }
        }
        let dev = model.device.clone();
        let splice = Tensor::from_vec(m.clone(), (b, t, 1), &dev)?;
        // Scored predictions: positions p < t − 1 (target is token p + 1).
        let score_mask = Tensor::from_vec(m, (b, t), &dev)?.narrow(1, 0, t - 1)?;
        n_pos += score_mask.sum_all()?.to_scalar::<f32>()? as usize;
        let ids = batch.tokens_tensor(&dev)?;
        let targets = ids.narrow(1, 1, t - 1)?.contiguous()?;
        let mut hooks = Hooks::capture_points(&[point]);
        let logits = model.forward(&batch, &mut hooks)?;
        let act = hooks.cache.expect(point)?.clone();
        let lg = logits.narrow(1, 0, t - 1)?;
        let (c, _, clean_logp) = ce_and_kl(&lg, &targets, &score_mask, None)?;
        clean += c;
        let keep = (1.0 - &splice)?;
        let run = |value: Tensor| -> Result<Tensor> {
            let mut hooks = Hooks::none().with(Intervention::new(point, Edit::Patch { value }));
            let l = model.forward(&batch, &mut hooks)?;
            Ok(l.narrow(1, 0, t - 1)?)
        };
        let zl = run(act.broadcast_mul(&keep)?)?;
        zero += ce_and_kl(&zl, &targets, &score_mask, None)?.0;
        for (i, sae) in saes.iter().enumerate() {
            let rec = sae
                .reconstruct(&act.to_device(sae.device())?)?
                .to_device(&dev)?
                .to_dtype(act.dtype())?;
            let value = (act.broadcast_mul(&keep)? + rec.broadcast_mul(&splice)?)?;
            let sl = run(value)?;
            let (ce, kl, _) = ce_and_kl(&sl, &targets, &score_mask, Some(&clean_logp))?;
            sae_ce[i] += ce;
            sae_kl[i] += kl;
        }
        bar.inc(rows.len() as u64);
    }
    bar.finish();
    let np = n_pos.max(1) as f64;
    let (clean, zero) = (clean / np, zero / np);
    Ok(sae_ce
        .iter()
        .zip(&sae_kl)
        .map(|(&ce, &kl)| {
            let ce = ce / np;
            CeResult {
                ce_clean: clean,
                ce_zero: zero,
                ce_sae: ce,
                ce_recovered: (zero - ce) / (zero - clean),
                kl: kl / np,
                positions: n_pos,
            }
        })
        .collect())
}

/// The evaluation of several SAEs on one store.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub hook: String,
    pub layer: Option<usize>,
    pub d: usize,
    pub saes: Vec<SaeEval>,
    /// The standard basis (neurons) under the same geometry.
    pub neurons: Option<AtomStats>,
    pub notes: Vec<String>,
}

/// Windows of `context` tokens (BOS first when `bos`) from documents `docs`.
pub fn windows(docs: &[Vec<u32>], context: usize, bos: Option<u32>, max: usize) -> Vec<Vec<u32>> {
    let body = context.saturating_sub(usize::from(bos.is_some())).max(1);
    let mut out = vec![];
    for d in docs {
        for w in d.chunks(body) {
            if out.len() >= max {
                return out;
            }
            if w.len() < 2 {
                continue;
            }
            let mut row: Vec<u32> = bos.into_iter().collect();
            row.extend_from_slice(w);
            out.push(row);
        }
    }
    out
}

/// The model for CE / KL must be one whose hook has the store's width (a clear error instead of
/// "shape mismatch in matmul" for a store collected from another model).
pub(super) fn check_model_matches_store(m: &Model, store: &ActivationStore) -> Result<()> {
    use crate::hooks::HookPoint::*;
    let first = store.parts().swap_remove(0);
    let (hook, d, c) = (&first.hook, first.d, m.cfg());
    let mismatch = |why: String| {
        crate::Error::msg(format!(
            "sae eval: the store was collected from `{}` at {hook} (d {d}), but --model {} {why}; \
             evaluate with the model the store came from",
            store.meta.model, m.source.spec
        ))
    };
    let point = crate::hooks::HookPoint::parse_for(hook, c.n_layers)
        .map_err(|e| mismatch(format!("has no such hook ({e})")))?;
    let width = match point {
        Embed | PosEmbed | ResidPre(_) | ResidMid(_) | Ln2(_) | ResidPost(_) | AttnOut(_)
        | MlpOut(_) | LnFinal => Some(c.d_model),
        MlpPre(_) | MlpPreLinear(_) | MlpPost(_) => Some(c.d_mlp),
        _ => None,
    };
    match width {
        Some(w) if w != d => Err(mismatch(format!("has width {w} there"))),
        _ => Ok(()),
    }
}

/// Evaluate `saes` (label, SAE) on the store; with `model` and token documents, also CE / KL.
pub fn evaluate(
    saes: &[(String, Sae)],
    store: &ActivationStore,
    model: Option<(&Model, &[Vec<u32>])>,
    params: &EvalParams,
    progress: &Progress,
) -> Result<EvalReport> {
    // (`eval_into` has checked that the model matches the store, before tokenizing.)
    let width = store.d();
    let parts = store.parts();
    let first = parts[0].clone();
    let d = first.d;
    let (_, eval_shards) = store.split(params.eval_shards);
    let (rows, toks) = store.sample(&eval_shards, params.max_samples)?;
    let acts = first.columns(&rows, width);
    let mut notes = vec![format!(
        "evaluation: {} samples from shards {:?}",
        toks.len(),
        eval_shards
    )];
    let mut out = vec![];
    // Whether each SAE reads the store's first hook and reconstructs it (atoms, CE / KL).
    let mut primary = vec![];
    for (label, sae) in saes {
        // Its own hook when the store holds it, else the store's first.
        let hook = sae
            .hook_name()
            .filter(|h| parts.iter().any(|p| &p.hook == h));
        let input = store.part(hook.as_deref())?;
        let target = match sae.hook_name_out() {
            Some(h) => Some(store.part(Some(&h)).map_err(|e| {
                crate::Error::msg(format!("transcoder `{label}` reconstructs {h}: {e}"))
            })?),
            None if sae.is_transcoder() => crate::bail!(
                "transcoder `{label}` does not say which hook it reconstructs (hook_name_out)"
            ),
            None => None,
        };
        if sae.d_in() != input.d {
            crate::bail!(
                "SAE `{label}` has d_in {} but the store has d {} at {}",
                sae.d_in(),
                input.d,
                input.hook
            );
        }
        if let Some(t) = &target {
            if sae.d_out() != t.d {
                crate::bail!(
                    "transcoder `{label}` has d_out {} but the store has d {} at {}",
                    sae.d_out(),
                    t.d,
                    t.hook
                );
            }
        }
        let x = input.columns(&rows, width);
        let y = target.as_ref().map(|t| t.columns(&rows, width));
        out.push(reconstruction_metrics_to(
            sae,
            label,
            &x,
            y.as_deref(),
            &toks,
            params.top_tokens,
        )?);
        primary.push(input == first && target.is_none());
    }
    if primary.iter().any(|p| !p) {
        notes.push(format!(
            "atoms and CE / KL only for SAEs that read and reconstruct {}",
            first.hook
        ));
    }
    // Atoms: S̃ from up to atom_samples activations of every shard.
    let all: Vec<usize> = (0..store.n_shards()).collect();
    let (sample, _) = store.sample(&all, params.atom_samples)?;
    let sample = first.columns(&sample, width);
    notes.push(format!(
        "S̃ from {} activations, ridge {} × tr/d",
        sample.len() / d.max(1),
        params.ridge
    ));
    let s = atoms::second_moment_inverse(&sample, d, params.ridge)?;
    for ((e, (_, sae)), _) in out.iter_mut().zip(saes).zip(&primary).filter(|x| *x.1) {
        e.atoms = Some(atoms::atom_stats(
            &e.label,
            &sae.w_dec.to_device(&Device::Cpu)?,
            &e.support,
            &s,
        )?);
    }
    let eval_sample_len = acts.len().min(params.max_samples * d);
    let neurons = Some(atoms::neuron_stats(&acts[..eval_sample_len], d, &s)?);
    let point: Option<HookPoint> = first.hook.parse().ok();
    if let (Some((model, docs)), Some(point)) = (model, point) {
        let bos = super::window_bos(model);
        let w = windows(docs, params.ce_context, bos, params.ce_docs.max(1) * 4);
        let w: Vec<Vec<u32>> = w.into_iter().take(params.ce_docs.max(1) * 2).collect();
        notes.push(format!(
            "CE / KL over {} windows of ≤ {} tokens",
            w.len(),
            params.ce_context
        ));
        let refs: Vec<&Sae> = saes
            .iter()
            .zip(&primary)
            .filter(|x| *x.1)
            .map(|((_, s), _)| s)
            .collect();
        let ce = ce_recovered(
            model,
            &refs,
            point,
            &w,
            true, // the first position of a window is never in the store
            params.ce_batch,
            progress,
        )?;
        let spliced = out.iter_mut().zip(&primary).filter(|x| *x.1);
        for ((e, _), c) in spliced.zip(ce) {
            e.ce = Some(c);
        }
    }
    Ok(EvalReport {
        hook: first.hook.clone(),
        layer: point.and_then(|p| p.layer()),
        d,
        saes: out,
        neurons,
        notes,
    })
}
