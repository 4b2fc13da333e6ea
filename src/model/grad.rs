//! Gradients through the hooked forward pass: the gradient of a scalar metric of the logits
//! with respect to any hook point's activation (the same names and shapes as the cache).
//!
//! How: [`Hooks::with_grads`] adds a zero variable to each activation it matches, so candle's
//! autograd tracks everything downstream of the first such point; the metric's backward pass
//! then gives the gradient at each point as the gradient of its variable. Downstream of a
//! gradient point the pass runs through candle ops that have a backward (rms_norm, rope and
//! softmax written out, weights unpacked for candle's matmul); upstream it runs the fused
//! kernels as usual. The forward numbers are those of the normal pass (to float rounding:
//! `tests/it/grad.rs` checks ≤ 1e-5 on the fixtures), and interventions apply as in any pass.
//!
//! Gradients need an f32 model. The metric is computed at the last position (the last real
//! token of every row under left padding), one value per row, and summed for the backward pass:
//! rows do not interact, so each row's gradient is its own metric's.
//!
//! ```no_run
//! use engram::hooks::HookFilter;
//! use engram::model::{grad::Metric, LoadOptions, Model};
//! let model = Model::load("smollm2", &LoadOptions::default())?;
//! let batch = model.batch(&["When Mary and John went to the store, John gave a drink to"])?;
//! let (a, b) = (model.encode(" Mary")?[1], model.encode(" John")?[1]);
//! let metric = Metric::LogitDiff { answer: vec![a], wrong: vec![b] };
//! let g = model.gradients(&batch, &metric, &HookFilter::new(&["blocks.*.hook_resid_pre"]))?;
//! let grad = g.grads.get_named("blocks.3.hook_resid_pre")?; // [1, pos, d_model]
//! # Ok::<(), engram::Error>(())
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Tensor, D};

use super::transformer::{Batch, LogitsAt, RunOptions, Transformer};
use crate::hooks::{ActivationCache, HookFilter, Hooks};
use crate::Result;

/// A user metric: last-position logits `[batch, vocab]` (f32) → one value per row `[batch]`.
pub type MetricFn = Arc<dyn Fn(&Tensor) -> Result<Tensor> + Send + Sync>;

/// A scalar per row of the last position's logits, differentiated by [`Transformer::gradients`].
#[derive(Clone)]
pub enum Metric {
    /// `logit[answer] − logit[wrong]` (one answer / wrong token per row).
    LogitDiff { answer: Vec<u32>, wrong: Vec<u32> },
    /// `log p(target)` (one target per row).
    LogProb { target: Vec<u32> },
    /// Anything else.
    Custom(MetricFn),
}

impl std::fmt::Debug for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Metric::LogitDiff { answer, wrong } => write!(f, "LogitDiff({answer:?}, {wrong:?})"),
            Metric::LogProb { target } => write!(f, "LogProb({target:?})"),
            Metric::Custom(_) => write!(f, "Custom"),
        }
    }
}

impl Metric {
    /// The metric of last-position logits `[batch, vocab]`: `[batch]`.
    pub fn eval(&self, logits: &Tensor) -> Result<Tensor> {
        let (b, v) = logits.dims2()?;
        // One-hot weights built on the host: a product and a sum, both differentiable.
        let weights = |pos: &[u32], neg: &[u32]| -> Result<Tensor> {
            if pos.len() != b || (!neg.is_empty() && neg.len() != b) {
                crate::bail!("the metric has {} tokens for a batch of {b}", pos.len());
            }
            let mut w = vec![0f32; b * v];
            for (r, &t) in pos.iter().enumerate() {
                if t as usize >= v {
                    crate::bail!("token id {t} is out of the vocabulary ({v})");
                }
                w[r * v + t as usize] += 1.0;
            }
            for (r, &t) in neg.iter().enumerate() {
                if t as usize >= v {
                    crate::bail!("token id {t} is out of the vocabulary ({v})");
                }
                w[r * v + t as usize] -= 1.0;
            }
            Ok(Tensor::from_vec(w, (b, v), logits.device())?)
        };
        match self {
            Metric::LogitDiff { answer, wrong } => Ok((logits * weights(answer, wrong)?)?.sum(1)?),
            Metric::LogProb { target } => {
                let lp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
                Ok((lp * weights(target, &[])?)?.sum(1)?)
            }
            Metric::Custom(f) => {
                let m = f(logits)?;
                if m.dims() != [b] {
                    crate::bail!(
                        "a metric must give one value per row: got shape {:?}",
                        m.dims()
                    );
                }
                Ok(m)
            }
        }
    }
}

/// What [`Transformer::gradients`] returns.
#[derive(Clone, Debug)]
pub struct Gradients {
    /// The metric per row (`[batch]`).
    pub values: Vec<f32>,
    /// ∂(metric)/∂(activation) at every point asked for, shaped like the activation.
    pub grads: ActivationCache,
    /// The last position's logits `[batch, vocab]`.
    pub logits: Tensor,
}

impl Transformer {
    /// The gradient of `metric` at the points `filter` matches (and at `hook_embed` for the
    /// input embeddings).
    pub fn gradients(
        &self,
        batch: &Batch,
        metric: &Metric,
        filter: &HookFilter,
    ) -> Result<Gradients> {
        self.gradients_with(batch, metric, &mut Hooks::none().with_grads(filter.clone()))
    }

    /// [`Transformer::gradients`] with a full hook set: its capture fills `hooks.cache` and its
    /// interventions apply; gradients are taken where its [`Hooks::with_grads`] filter matches.
    pub fn gradients_with(
        &self,
        batch: &Batch,
        metric: &Metric,
        hooks: &mut Hooks,
    ) -> Result<Gradients> {
        self.gradients_inner(batch, None, metric, hooks)
    }

    /// [`Transformer::gradients_with`] of the pass from block `layer` on with `resid` as its
    /// input ([`Transformer::forward_from`]); gradient points before `layer` get none.
    pub fn gradients_from(
        &self,
        batch: &Batch,
        layer: usize,
        resid: &Tensor,
        metric: &Metric,
        hooks: &mut Hooks,
    ) -> Result<Gradients> {
        self.gradients_inner(batch, Some((layer, resid)), metric, hooks)
    }

    fn gradients_inner(
        &self,
        batch: &Batch,
        start: Option<(usize, &Tensor)>,
        metric: &Metric,
        hooks: &mut Hooks,
    ) -> Result<Gradients> {
        if self.dtype != DType::F32 {
            crate::bail!(
                "gradients need an f32 model (this one is {:?}; load with --dtype f32)",
                self.dtype
            );
        }
        if !hooks.wants_grads() {
            crate::bail!("no gradient points asked for (Hooks::with_grads)");
        }
        let opts = RunOptions {
            logits: LogitsAt::Last,
            stop_at_layer: None,
        };
        let logits = match start {
            Some((l, resid)) => self.forward_from(batch, l, resid, hooks, opts)?,
            None => self.forward_with(batch, hooks, opts)?,
        }
        .squeeze(1)?;
        let m = metric.eval(&logits)?;
        let values = m.to_vec1::<f32>()?;
        let mut map = BTreeMap::new();
        if logits.track_op() {
            let store = m.sum_all()?.backward()?;
            for (point, var) in &hooks.grad_vars {
                let g = match store.get(var.as_tensor()) {
                    Some(g) => g.clone(),
                    // No path to the metric (e.g. a point after the last position's use).
                    None => var.as_tensor().zeros_like()?,
                };
                map.insert(*point, g);
            }
        } else {
            for (point, var) in &hooks.grad_vars {
                map.insert(*point, var.as_tensor().zeros_like()?);
            }
        }
        Ok(Gradients {
            values,
            grads: ActivationCache { map },
            logits: logits.detach(),
        })
    }
}
