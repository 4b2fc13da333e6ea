//! Attribution patching, integrated gradients and exact activation patching of one
//! clean / corrupt pair (token ids of equal length), on any f32 [`Transformer`]: what
//! `engram attribute` runs per pair, usable from the library.
//!
//! The metric is `logit[answer] − logit[wrong]` at the last position. Every estimate is of the
//! same quantity: the change of the metric when an activation of the clean run takes its value
//! from the corrupt run (`metric(clean, a ← a_corrupt) − metric(clean)`).
//! - AtP (Nanda 2023; Kramár et al. 2024): `(a_corrupt − a_clean) · ∂metric/∂a` at the clean
//!   run, from one clean forward + backward and one corrupt forward, at
//!   `blocks.l.hook_resid_pre` per (layer, position), `blocks.l.attn.hook_z` per (layer, head)
//!   summed over positions, and `blocks.l.mlp.hook_post` per (layer, neuron) summed over
//!   positions.
//! - Integrated gradients (Sundararajan et al. 2017) of `resid_pre` per (layer, position):
//!   `(a_corrupt − a_clean) · mean_k ∂metric/∂a` at `a_clean + α_k (a_corrupt − a_clean)` with
//!   the whole layer's residual stream moved (midpoint Riemann sum, α_k = (k + ½)/N), one batched
//!   backward pass of N rows per layer. Completeness: a layer's IG summed over positions tends
//!   to `metric(corrupt) − metric(clean)`.
//! - Exact patching: `resid_pre` per (layer, position) (a batch of one row per position per
//!   layer) and `hook_z` per (layer, head) at every position (one row per head).

use candle_core::{DType, Tensor};

use crate::hooks::{Edit, HookFilter, HookPoint, Hooks, Intervention};
use crate::model::grad::Metric;
use crate::model::{to_vec_f32, Batch, LogitsAt, RunOptions, Transformer};
use crate::Result;

/// One clean / corrupt pair as token ids.
#[derive(Clone, Debug)]
pub struct PairIds {
    pub clean: Vec<u32>,
    pub corrupt: Vec<u32>,
    pub answer: u32,
    pub wrong: u32,
}

/// Which activations get AtP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kinds {
    pub resid: bool,
    pub heads: bool,
    pub neurons: bool,
}

/// How much of the exact computations to run.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub kinds: Kinds,
    /// Riemann steps of integrated gradients (0: none).
    pub ig_steps: usize,
    /// Exact patching of the residual grid and the heads.
    pub patch: bool,
    /// Rows per forward pass of the patching and IG batches.
    pub batch: usize,
}

/// One grid cell's estimates (all in metric units).
#[derive(Clone, Debug, PartialEq)]
pub struct Cell {
    pub layer: usize,
    /// Position (residual stream) or `None` (summed over positions).
    pub position: Option<usize>,
    /// Head (`hook_z`) or neuron (`mlp.hook_post`).
    pub unit: Option<usize>,
    pub atp: f64,
    pub ig: Option<f64>,
    pub patch: Option<f64>,
}

/// What one pair gives.
#[derive(Clone, Debug)]
pub struct PairAttribution {
    pub clean_metric: f64,
    pub corrupt_metric: f64,
    pub resid: Vec<Cell>,
    pub heads: Vec<Cell>,
    pub neurons: Vec<Cell>,
}

fn logits_last() -> RunOptions {
    RunOptions {
        logits: LogitsAt::Last,
        stop_at_layer: None,
    }
}

/// The metric for `rows` copies of the pair.
fn metric(p: &PairIds, rows: usize) -> Metric {
    Metric::LogitDiff {
        answer: vec![p.answer; rows],
        wrong: vec![p.wrong; rows],
    }
}

/// `rows` copies of `ids`.
fn repeat(ids: &[u32], rows: usize) -> Result<Batch> {
    Batch::new(&vec![ids.to_vec(); rows], 0)
}

/// The metric of each row of `batch` under `hooks`.
fn metric_rows(t: &Transformer, batch: &Batch, m: &Metric, hooks: &mut Hooks) -> Result<Vec<f64>> {
    let logits = t.forward_with(batch, hooks, logits_last())?.squeeze(1)?;
    Ok(to_vec_f32(&m.eval(&logits)?)?
        .into_iter()
        .map(f64::from)
        .collect())
}

/// The metric of each row of `resid` `[rows, t, d]` run from block `l` on (copies of the clean
/// prompt), under `hooks`.
fn metric_from(
    t: &Transformer,
    p: &PairIds,
    l: usize,
    resid: &Tensor,
    hooks: &mut Hooks,
) -> Result<Vec<f64>> {
    let rows = resid.dim(0)?;
    let logits = t
        .forward_from(&repeat(&p.clean, rows)?, l, resid, hooks, logits_last())?
        .squeeze(1)?;
    let m = metric(p, rows).eval(&logits)?;
    Ok(to_vec_f32(&m)?.into_iter().map(f64::from).collect())
}

/// Attribution of one pair.
pub fn attribute_pair(t: &Transformer, p: &PairIds, o: &Options) -> Result<PairAttribution> {
    attribute_pair_with(t, p, o, &mut || {})
}

/// [`attribute_pair`], calling `layer_done` after each layer's patching / IG (for progress).
pub fn attribute_pair_with(
    t: &Transformer,
    p: &PairIds,
    o: &Options,
    layer_done: &mut dyn FnMut(),
) -> Result<PairAttribution> {
    let n = t.cfg.n_layers;
    if p.clean.len() != p.corrupt.len() {
        crate::bail!(
            "clean and corrupt prompts have different lengths ({} and {} tokens); AtP and patching need aligned positions",
            p.clean.len(),
            p.corrupt.len()
        );
    }
    let mut points = vec![];
    for l in 0..n {
        if o.kinds.resid {
            points.push(HookPoint::ResidPre(l));
        }
        if o.kinds.heads {
            points.push(HookPoint::Z(l));
        }
        if o.kinds.neurons {
            points.push(HookPoint::MlpPost(l));
        }
    }
    if points.is_empty() {
        crate::bail!("nothing to attribute (no hook kinds)");
    }
    let filter = HookFilter::points(&points);
    // The clean run also keeps every resid_pre: patched runs start from it (forward_from).
    let mut kept = points.clone();
    kept.extend((0..n).map(HookPoint::ResidPre));
    let m1 = metric(p, 1);
    let clean = Batch::single(&p.clean)?;
    let mut hooks = Hooks::capture(HookFilter::points(&kept)).with_grads(filter.clone());
    let g = t.gradients_with(&clean, &m1, &mut hooks)?;
    let clean_acts = hooks.cache;
    let mut hooks = Hooks::capture(filter);
    let corrupt_metric = metric_rows(t, &Batch::single(&p.corrupt)?, &m1, &mut hooks)?[0];
    let corrupt_acts = hooks.cache;
    // (a_corrupt − a_clean) ⊙ grad, and the difference itself.
    let diff = |pt: HookPoint| -> Result<Tensor> {
        Ok((corrupt_acts.expect(pt)? - clean_acts.expect(pt)?.detach())?)
    };
    let prod = |pt: HookPoint| -> Result<Tensor> { Ok((diff(pt)? * g.grads.expect(pt)?)?) };

    let clean_metric = g.values[0] as f64;
    let mut out = PairAttribution {
        clean_metric,
        corrupt_metric,
        resid: vec![],
        heads: vec![],
        neurons: vec![],
    };
    for l in 0..n {
        if o.kinds.resid {
            let pt = HookPoint::ResidPre(l);
            let atp = to_vec_f32(&prod(pt)?.sum(2)?)?; // [1, t]
            let ig = match o.ig_steps {
                0 => None,
                k => Some(integrated_gradients(
                    t,
                    p,
                    l,
                    &clean_acts,
                    &diff(pt)?,
                    k,
                    o.batch,
                )?),
            };
            let patch = if o.patch {
                Some(patch_positions(t, p, l, &clean_acts, &diff(pt)?, o.batch)?)
            } else {
                None
            };
            for (pos, a) in atp.iter().enumerate() {
                out.resid.push(Cell {
                    layer: l,
                    position: Some(pos),
                    unit: None,
                    atp: *a as f64,
                    ig: ig.as_ref().map(|v| v[pos]),
                    patch: patch.as_ref().map(|v| v[pos] - clean_metric),
                });
            }
        }
        if o.kinds.heads {
            let pt = HookPoint::Z(l);
            let atp = to_vec_f32(&prod(pt)?.sum(3)?.sum(1)?)?; // [1, heads]
            let patch = if o.patch {
                Some(patch_heads(t, p, l, &clean_acts, &corrupt_acts, o.batch)?)
            } else {
                None
            };
            for (h, a) in atp.iter().enumerate() {
                out.heads.push(Cell {
                    layer: l,
                    position: None,
                    unit: Some(h),
                    atp: *a as f64,
                    ig: None,
                    patch: patch.as_ref().map(|v| v[h] - clean_metric),
                });
            }
        }
        if o.kinds.neurons {
            let atp = to_vec_f32(&prod(HookPoint::MlpPost(l))?.sum(1)?)?; // [1, d_mlp]
            out.neurons
                .extend(atp.iter().enumerate().map(|(u, a)| Cell {
                    layer: l,
                    position: None,
                    unit: Some(u),
                    atp: *a as f64,
                    ig: None,
                    patch: None,
                }));
        }
        layer_done();
    }
    Ok(out)
}

/// Row `i` of the result is `base` with `delta` added where `mask_of(i)` (broadcast to base's
/// shape) is 1: `[rows, ...]` from `base` `[1, ...]`.
fn rows_with(base: &Tensor, delta: &Tensor, masks: &[Tensor]) -> Result<Tensor> {
    let rows: Vec<Tensor> = masks
        .iter()
        .map(|m| Ok((base + delta.broadcast_mul(m)?)?))
        .collect::<Result<_>>()?;
    Ok(Tensor::cat(&rows, 0)?)
}

/// The metric with `resid_pre(l)` at one position taken from the corrupt run, per position.
fn patch_positions(
    t: &Transformer,
    p: &PairIds,
    l: usize,
    clean: &crate::hooks::ActivationCache,
    diff: &Tensor,
    batch: usize,
) -> Result<Vec<f64>> {
    let base = clean.expect(HookPoint::ResidPre(l))?.detach(); // [1, t, d]
    let n_pos = p.clean.len();
    let mut out = Vec::with_capacity(n_pos);
    for chunk in (0..n_pos).collect::<Vec<_>>().chunks(batch.max(1)) {
        let masks: Vec<Tensor> = chunk
            .iter()
            .map(|&i| {
                let mut m = vec![0f32; n_pos];
                m[i] = 1.0;
                Ok(Tensor::from_vec(m, (1, n_pos, 1), base.device())?.to_dtype(base.dtype())?)
            })
            .collect::<Result<_>>()?;
        let value = rows_with(&base, diff, &masks)?;
        out.extend(metric_from(t, p, l, &value, &mut Hooks::none())?);
    }
    Ok(out)
}

/// The metric with head `h`'s z (every position) taken from the corrupt run, per head.
fn patch_heads(
    t: &Transformer,
    p: &PairIds,
    l: usize,
    clean: &crate::hooks::ActivationCache,
    corrupt: &crate::hooks::ActivationCache,
    batch: usize,
) -> Result<Vec<f64>> {
    let pt = HookPoint::Z(l);
    let base = clean.expect(pt)?.detach(); // [1, t, heads, d_head]
    let diff = (corrupt.expect(pt)? - &base)?;
    let nh = base.dim(2)?;
    let mut out = Vec::with_capacity(nh);
    for chunk in (0..nh).collect::<Vec<_>>().chunks(batch.max(1)) {
        let masks: Vec<Tensor> = chunk
            .iter()
            .map(|&h| {
                let mut m = vec![0f32; nh];
                m[h] = 1.0;
                Ok(Tensor::from_vec(m, (1, 1, nh, 1), base.device())?.to_dtype(base.dtype())?)
            })
            .collect::<Result<_>>()?;
        let value = rows_with(&base, &diff, &masks)?;
        let mut hooks = Hooks::none().with(Intervention::new(pt, Edit::Patch { value }));
        let resid = clean.expect(HookPoint::ResidPre(l))?.detach();
        let resid = resid
            .broadcast_as((chunk.len(), resid.dim(1)?, resid.dim(2)?))?
            .contiguous()?;
        out.extend(metric_from(t, p, l, &resid, &mut hooks)?);
    }
    Ok(out)
}

/// Integrated gradients of `resid_pre(l)` per position along clean → corrupt.
fn integrated_gradients(
    t: &Transformer,
    p: &PairIds,
    l: usize,
    clean: &crate::hooks::ActivationCache,
    diff: &Tensor,
    steps: usize,
    batch: usize,
) -> Result<Vec<f64>> {
    let pt = HookPoint::ResidPre(l);
    let base = clean.expect(pt)?.detach();
    let alphas: Vec<f64> = (0..steps)
        .map(|k| (k as f64 + 0.5) / steps as f64)
        .collect();
    let mut grad_sum: Option<Tensor> = None;
    for chunk in alphas.chunks(batch.max(1)) {
        let masks: Vec<Tensor> = chunk
            .iter()
            .map(|&a| Ok(Tensor::new(&[a as f32], base.device())?.to_dtype(base.dtype())?))
            .collect::<Result<_>>()?;
        let value = rows_with(&base, diff, &masks)?;
        let mut hooks = Hooks::none().with_grads(HookFilter::points(&[pt]));
        let batch = repeat(&p.clean, chunk.len())?;
        let g = t.gradients_from(&batch, l, &value, &metric(p, chunk.len()), &mut hooks)?;
        let s = g.grads.expect(pt)?.sum_keepdim(0)?;
        grad_sum = Some(match grad_sum {
            Some(acc) => (acc + s)?,
            None => s,
        });
    }
    let mean = match grad_sum {
        Some(s) => (s / steps as f64)?,
        None => crate::bail!("no IG steps"),
    };
    let ig = (diff * mean)?.sum(2)?.to_dtype(DType::F32)?; // [1, t]
    Ok(to_vec_f32(&ig)?.into_iter().map(f64::from).collect())
}
