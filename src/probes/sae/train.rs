//! SAE training with a hand-written backward pass (candle tensor ops, no autograd).
//!
//! All three kinds share the data, the budget, the optimiser and the bookkeeping:
//! - inputs are scaled by one scalar `c` so that E‖c·m‖² = d (estimated on up to 16k training
//!   activations); `c` is folded into the saved weights;
//! - pre-activations `p = x·W_enc + b_enc`, latents `z = σ(p)`, reconstruction
//!   `x̂ = z·W_dec + b_dec`, loss `mean_batch ‖x − x̂‖² + sparsity`;
//! - `threshold`: σ(p) = p·H(p − τ), τ = exp(log τ) per latent; sparsity λ·Σ H(p − τ) (L0).
//!   Straight-through estimator (Rajamanoharan et al. 2024) with a rectangle kernel
//!   K(u) = 1[|u| < ½] of bandwidth ε: ∂σ/∂p = H(p − τ), ∂σ/∂τ = −(τ/ε)·K((p − τ)/ε),
//!   ∂H/∂τ = −(1/ε)·K((p − τ)/ε), ∂H/∂p = 0;
//! - `topk`: σ keeps the k largest pre-activations (then ReLU); no sparsity term;
//! - `relu`: σ = ReLU, sparsity λ₁·Σ z (decoder rows have unit norm, so this is the usual
//!   λ₁·Σ z_i‖W_dec,i‖);
//! - Adam (β = 0.9, 0.999), learning rate constant then linearly decayed over the last
//!   `lr_decay` share of steps, sparsity coefficient warmed up linearly over `sparsity_warmup`;
//!   the decoder-gradient component parallel to each decoder row is removed before the step and
//!   the rows are renormalised to unit norm after it;
//! - seeded initialisation: decoder rows uniform on the sphere (seeded Box–Muller), W_enc = W_decᵀ,
//!   b_enc = 0, b_dec = the data mean, τ = `init_threshold`; log τ learns `threshold_lr_mult`
//!   times faster than the weights;
//! - dead latents: a latent is dead when it has not fired in the last `dead_after` samples.

use candle_core::{DType, Device, Tensor, D};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use rayon::prelude::*;

#[cfg(test)]
use super::topk_mask;
use super::{randn, Sae, SaeKind};
use crate::Result;

mod aux;
mod backward;
mod fused;
mod run;
use fused::{encode_fused, host_vec};
pub use run::{train, train_many};

/// Training settings (defaults are for residual streams of small models).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainParams {
    pub kind: SaeKind,
    /// Dictionary size; default `expansion · d`.
    pub dict_size: Option<usize>,
    pub expansion: usize,
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    /// λ of the L0 penalty (threshold SAEs), in units of the normalised data (E‖x‖² = d).
    pub l0_coeff: f64,
    /// k of TopK SAEs.
    pub k: usize,
    /// λ₁ of the L1 penalty (ReLU SAEs).
    pub l1_coeff: f64,
    /// Bandwidth ε of the STE's rectangle kernel (normalised units).
    pub bandwidth: f64,
    /// Initial threshold τ (normalised units).
    pub init_threshold: f64,
    /// Learning rate of log τ as a multiple of `lr` (log τ moves at most ≈ lr·this per Adam step,
    /// so with short budgets the thresholds need a faster rate to reach their sparsity).
    pub threshold_lr_mult: f64,
    /// Share of steps over which the sparsity coefficient ramps up from 0.
    pub sparsity_warmup: f64,
    /// Share of the last steps over which the learning rate decays linearly to 0.
    pub lr_decay: f64,
    /// A latent is dead after this many samples without firing.
    pub dead_after: usize,
    pub seed: u64,
    /// Shards of the store held out for evaluation (the last ones).
    pub eval_shards: usize,
    /// Save a checkpoint every this many steps (0 = never).
    pub checkpoint_every: usize,
    /// Log the losses every this many steps.
    pub log_every: usize,
    /// Scale inputs so that E‖x‖² = d.
    pub normalize: bool,
    /// Matryoshka: the widths of the nested latent prefixes whose reconstruction losses are
    /// summed (increasing; the dictionary size is always the last); empty = n/16, n/8, n/4, n/2.
    pub matryoshka_widths: Vec<usize>,
    /// α of the AuxK loss of the TopK kinds (topk, batchtopk, matryoshka); 0 turns it off.
    pub aux_k_coeff: f64,
    /// k_aux: dead latents that reconstruct the error (default d_in / 2).
    pub aux_k: Option<usize>,
    /// BatchTopK / Matryoshka: batches over which the inference threshold is averaged after
    /// training.
    pub threshold_batches: usize,
    /// The store hook the SAE reads (default: the store's first).
    pub hook: Option<String>,
    /// A transcoder: the store hook it reconstructs.
    pub target: Option<String>,
    /// A skip transcoder: also learn a linear map `W_skip` from input to target.
    pub skip: bool,
}

impl Default for TrainParams {
    fn default() -> Self {
        TrainParams {
            kind: SaeKind::Threshold,
            dict_size: None,
            expansion: 4,
            steps: 2000,
            batch_size: 1024,
            lr: 1e-3,
            l0_coeff: 0.5,
            k: 32,
            l1_coeff: 1.0,
            bandwidth: 0.05,
            init_threshold: 0.1,
            threshold_lr_mult: 10.0,
            sparsity_warmup: 0.1,
            lr_decay: 0.2,
            dead_after: 200_000,
            seed: 0,
            eval_shards: 1,
            checkpoint_every: 0,
            log_every: 50,
            normalize: true,
            matryoshka_widths: vec![],
            aux_k_coeff: 1.0 / 32.0,
            aux_k: None,
            threshold_batches: 32,
            hook: None,
            target: None,
            skip: false,
        }
    }
}

/// One logged step.
#[derive(Clone, Debug, Serialize)]
pub struct StepLog {
    pub step: usize,
    pub loss: f64,
    pub mse: f64,
    /// Fraction of variance unexplained of the batch.
    pub fvu: f64,
    pub l0: f64,
    pub dead: usize,
}

/// Gradients of the loss (straight-through for the threshold) and batch statistics.
pub struct Gradients {
    pub w_enc: Tensor,
    pub w_dec: Tensor,
    pub b_enc: Tensor,
    pub b_dec: Tensor,
    /// With respect to log τ (threshold SAEs).
    pub log_threshold: Option<Tensor>,
    /// Skip transcoders.
    pub w_skip: Option<Tensor>,
    pub loss: f64,
    /// The AuxK part of `loss`.
    pub aux_loss: f64,
    pub mse: f64,
    pub fvu: f64,
    pub l0: f64,
    /// Per latent, the number of samples it fired on.
    pub fired: Vec<f32>,
}

/// What training did.
#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    pub kind: SaeKind,
    pub d: usize,
    /// The width reconstructed (transcoders: the target hook's).
    pub d_out: usize,
    pub hook: String,
    /// Transcoders: the hook reconstructed.
    pub target: Option<String>,
    /// BatchTopK / Matryoshka: the inference threshold θ.
    pub threshold: Option<f64>,
    pub dict_size: usize,
    pub steps: usize,
    pub batch_size: usize,
    pub seconds: f64,
    pub steps_per_sec: f64,
    /// The input scale `c` (E‖c·m‖² = d), folded into the saved weights.
    pub scale: f64,
    /// The target scale (transcoders; E‖c·y‖² = d_out).
    pub target_scale: f64,
    pub dead: usize,
    pub log: Vec<StepLog>,
}

/// Adam state on the host; one fused pass per parameter updates m, v and the parameter.
struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Adam {
    fn new(p: &Tensor) -> Result<Self> {
        let n = p.elem_count();
        Ok(Adam {
            m: vec![0.0; n],
            v: vec![0.0; n],
        })
    }

    /// p ← p − lr·m̂/(√v̂ + eps), with bias correction folded into `lr_t`.
    fn step(&mut self, p: &Tensor, g: &Tensor, lr_t: f64) -> Result<Tensor> {
        const B1: f32 = 0.9;
        const B2: f32 = 0.999;
        let mut pv = host_vec(p)?;
        let gv = host_vec(g)?;
        let lr = lr_t as f32;
        const CHUNK: usize = 1 << 14;
        pv.par_chunks_mut(CHUNK)
            .zip(gv.par_chunks(CHUNK))
            .zip(self.m.par_chunks_mut(CHUNK))
            .zip(self.v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| {
                for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
                    *m = B1 * *m + (1.0 - B1) * g;
                    *v = B2 * *v + (1.0 - B2) * g * g;
                    *p -= lr * (*m / (v.sqrt() + 1e-8));
                }
            });
        Ok(Tensor::from_vec(pv, p.shape(), p.device())?)
    }
}

/// The state of one SAE being trained (normalised units).
pub struct Trainer {
    pub params: TrainParams,
    /// Input width.
    pub d: usize,
    /// Reconstructed width (`d` unless a transcoder).
    pub d_out: usize,
    pub n: usize,
    w_enc: Tensor,
    w_dec: Tensor,
    b_enc: Tensor,
    b_dec: Tensor,
    log_th: Option<Tensor>,
    w_skip: Option<Tensor>,
    /// Ends of the nested latent prefixes whose losses are summed (`[n]` unless Matryoshka).
    pub levels: Vec<usize>,
    opt: Vec<Adam>,
    opt_th: Option<Adam>,
    opt_skip: Option<Adam>,
    pub step: usize,
    /// Samples since each latent last fired.
    pub since_fired: Vec<u64>,
    /// Number of times each latent fired.
    pub fired: Vec<u64>,
    pub samples: u64,
    device: Device,
    /// Force sparse (`Some(true)`) or dense products instead of choosing by density (tests
    /// compare both ways).
    sparse_override: Option<bool>,
}

fn unit_rows(w: &Tensor) -> Result<Tensor> {
    let norms = (w.sqr()?.sum_keepdim(D::Minus1)?.sqrt()? + 1e-12)?;
    Ok(w.broadcast_div(&norms)?)
}

/// The ends of the Matryoshka prefixes for `n` latents: the given widths (checked), else n/16,
/// n/8, n/4, n/2; `n` is always the last.
pub fn matryoshka_levels(widths: &[usize], n: usize) -> Result<Vec<usize>> {
    let mut ends: Vec<usize> = if widths.is_empty() {
        [16, 8, 4, 2]
            .iter()
            .map(|q| n / q)
            .filter(|&w| w > 0)
            .collect()
    } else {
        widths.to_vec()
    };
    if ends.last() != Some(&n) {
        ends.push(n);
    }
    ends.dedup();
    if ends.windows(2).any(|w| w[0] >= w[1]) || ends[0] == 0 || *ends.last().unwrap_or(&0) > n {
        crate::bail!(
            "--matryoshka-widths must increase from 1 up to the dictionary size {n}, got {widths:?}"
        );
    }
    Ok(ends)
}

impl Trainer {
    /// Seeded initialisation of an SAE (`d_out = d`) or transcoder (`d_out`) whose target has
    /// mean `mean` (normalised units; it initialises b_dec).
    pub fn new(
        params: TrainParams,
        d: usize,
        d_out: usize,
        mean: &[f32],
        device: &Device,
    ) -> Result<Self> {
        let n = params.dict_size.unwrap_or(params.expansion * d).max(1);
        let mut rng = StdRng::seed_from_u64(params.seed);
        let w_dec = Tensor::from_vec(randn(&mut rng, n * d_out), (n, d_out), device)?;
        let w_dec = unit_rows(&w_dec)?;
        let w_enc = if d == d_out {
            w_dec.t()?.contiguous()?
        } else {
            let w = Tensor::from_vec(randn(&mut rng, n * d), (n, d), device)?;
            unit_rows(&w)?.t()?.contiguous()?
        };
        let b_enc = Tensor::zeros(n, DType::F32, device)?;
        let b_dec = Tensor::from_slice(mean, d_out, device)?;
        let log_th = (params.kind == SaeKind::Threshold)
            .then(|| Tensor::full(params.init_threshold.max(1e-6).ln() as f32, n, device))
            .transpose()?;
        let w_skip = params
            .skip
            .then(|| Tensor::zeros((d_out, d), DType::F32, device))
            .transpose()?;
        let levels = if params.kind == SaeKind::Matryoshka {
            matryoshka_levels(&params.matryoshka_widths, n)?
        } else {
            vec![n]
        };
        let opt = vec![
            Adam::new(&w_enc)?,
            Adam::new(&w_dec)?,
            Adam::new(&b_enc)?,
            Adam::new(&b_dec)?,
        ];
        Ok(Trainer {
            opt_th: log_th.as_ref().map(Adam::new).transpose()?,
            opt_skip: w_skip.as_ref().map(Adam::new).transpose()?,
            params,
            d,
            d_out,
            n,
            w_enc,
            w_dec,
            b_enc,
            b_dec,
            log_th,
            w_skip,
            levels,
            opt,
            step: 0,
            since_fired: vec![0; n],
            fired: vec![0; n],
            samples: 0,
            device: device.clone(),
            sparse_override: None,
        })
    }

    fn lr_at(&self, step: usize) -> f64 {
        let p = &self.params;
        let decay_start = ((1.0 - p.lr_decay) * p.steps as f64) as usize;
        if p.lr_decay > 0.0 && step >= decay_start && p.steps > decay_start {
            p.lr * (p.steps - step) as f64 / (p.steps - decay_start) as f64
        } else {
            p.lr
        }
    }

    fn sparsity_at(&self, step: usize) -> f64 {
        let p = &self.params;
        let coeff = match p.kind {
            SaeKind::Threshold => p.l0_coeff,
            SaeKind::Relu => p.l1_coeff,
            SaeKind::TopK | SaeKind::BatchTopK | SaeKind::Matryoshka => 0.0,
        };
        let warm = (p.sparsity_warmup * p.steps as f64).max(1.0);
        coeff * ((step + 1) as f64 / warm).min(1.0)
    }

    /// The dead latents the AuxK loss uses this step, and its coefficient α·s.
    fn aux_dead(&self) -> (Vec<u32>, usize, f32) {
        let p = &self.params;
        if !p.kind.selects() || p.aux_k_coeff <= 0.0 {
            return (vec![], 0, 0.0);
        }
        let window = p.dead_after as u64;
        if self.samples < window.max(1) {
            return (vec![], 0, 0.0);
        }
        let dead: Vec<u32> = (0..self.n as u32)
            .filter(|&j| self.since_fired[j as usize] >= window)
            .collect();
        let k_aux = p.aux_k.unwrap_or(self.d / 2).max(1);
        let s = (dead.len() as f64 / k_aux as f64).min(1.0);
        (dead, k_aux, (p.aux_k_coeff * s) as f32)
    }

    /// One optimisation step on a normalised batch `x: [B, d]` (and transcoder target).
    pub fn train_step(&mut self, x: &Tensor, target: Option<&Tensor>) -> Result<StepLog> {
        let b = x.dims2()?.0;
        let lam = self.sparsity_at(self.step);
        let g = self.gradients(x, target, lam)?;
        // Remove the gradient component parallel to each (unit) decoder row.
        let par = (&g.w_dec * &self.w_dec)?.sum_keepdim(1)?;
        let g_wdec = (&g.w_dec - self.w_dec.broadcast_mul(&par)?)?;
        // Adam.
        self.step += 1;
        let t = self.step as f64;
        let lr = self.lr_at(self.step - 1);
        let lr_t = lr * (1.0 - 0.999f64.powf(t)).sqrt() / (1.0 - 0.9f64.powf(t));
        self.w_enc = self.opt[0].step(&self.w_enc, &g.w_enc, lr_t)?;
        self.w_dec = unit_rows(&self.opt[1].step(&self.w_dec, &g_wdec, lr_t)?)?;
        self.b_enc = self.opt[2].step(&self.b_enc, &g.b_enc, lr_t)?;
        self.b_dec = self.opt[3].step(&self.b_dec, &g.b_dec, lr_t)?;
        if let (Some(lt), Some(gt), Some(o)) = (&self.log_th, &g.log_threshold, &mut self.opt_th) {
            self.log_th = Some(o.step(lt, gt, lr_t * self.params.threshold_lr_mult)?);
        }
        if let (Some(w), Some(gw), Some(o)) = (&self.w_skip, &g.w_skip, &mut self.opt_skip) {
            self.w_skip = Some(o.step(w, gw, lr_t)?);
        }
        // Dead-latent bookkeeping.
        self.samples += b as u64;
        for (i, &f) in g.fired.iter().enumerate() {
            if f > 0.0 {
                self.since_fired[i] = 0;
                self.fired[i] += f as u64;
            } else {
                self.since_fired[i] += b as u64;
            }
        }
        Ok(StepLog {
            step: self.step,
            loss: g.loss,
            mse: g.mse,
            fvu: g.fvu,
            l0: g.l0,
            dead: self.dead(),
        })
    }

    /// BatchTopK / Matryoshka: the smallest activation the batch selection keeps on `x`
    /// (normalised units; `None` when nothing fires). Their inference threshold is the mean of
    /// this over batches, measured after training (Bussmann et al. 2024).
    pub fn min_kept(&self, x: &Tensor) -> Result<Option<f32>> {
        let b_enc = host_vec(&self.b_enc)?;
        let e = encode_fused(
            &x.matmul(&self.w_enc)?,
            &b_enc,
            self.params.kind,
            None,
            self.params.k,
        )?;
        Ok(e.z
            .iter()
            .copied()
            .filter(|&v| v > 0.0)
            .min_by(|a, b| a.total_cmp(b)))
    }

    /// Latents that have not fired in the last `dead_after` samples (only counted once that
    /// many samples have been seen).
    pub fn dead(&self) -> usize {
        let window = (self.params.dead_after as u64).min(self.samples.max(1));
        if self.samples < window {
            return 0;
        }
        self.since_fired.iter().filter(|&&s| s >= window).count()
    }

    /// The SAE in raw units: inputs are scaled by `scale` before encoding and targets by
    /// `target_scale`, so W_enc·scale, (W_dec, b_dec)/target_scale and
    /// W_skip·scale/target_scale. `threshold` is the global one of the BatchTopK kinds.
    pub fn export(&self, scale: f64, target_scale: f64, threshold: Option<f32>) -> Result<Sae> {
        let threshold = match (&self.log_th, threshold) {
            (Some(t), _) => Some(t.exp()?),
            (None, Some(th)) => Some(Tensor::full(th, self.n, &self.device)?),
            (None, None) => None,
        };
        let mut meta = serde_json::Map::new();
        meta.insert("engram_kind".into(), self.params.kind.name().into());
        meta.insert(
            "engram_train".into(),
            serde_json::to_value(&self.params).unwrap_or_default(),
        );
        meta.insert("engram_steps".into(), self.step.into());
        meta.insert("engram_input_scale".into(), scale.into());
        if self.params.target.is_some() {
            meta.insert("engram_target_scale".into(), target_scale.into());
        }
        Ok(Sae {
            kind: self.params.kind,
            w_enc: (&self.w_enc * scale)?,
            w_dec: (&self.w_dec / target_scale)?,
            b_enc: self.b_enc.clone(),
            b_dec: (&self.b_dec / target_scale)?,
            threshold,
            w_skip: self
                .w_skip
                .as_ref()
                .map(|w| w * (scale / target_scale))
                .transpose()?,
            k: (self.params.kind == SaeKind::TopK).then_some(self.params.k),
            apply_b_dec_to_input: false,
            meta,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }
}

/// The scale `c` with E‖c·m‖² = d and the mean of `c·m`, from row-major `[n, d]` samples.
pub fn input_scale(sample: &[f32], d: usize) -> (f64, Vec<f32>) {
    let n = sample.len() / d.max(1);
    if n == 0 {
        return (1.0, vec![0.0; d]);
    }
    let mut sq = 0f64;
    let mut mean = vec![0f64; d];
    for row in sample.chunks(d) {
        for (j, &v) in row.iter().enumerate() {
            sq += (v as f64) * (v as f64);
            mean[j] += v as f64;
        }
    }
    let ms = sq / n as f64;
    let c = if ms > 0.0 {
        (d as f64 / ms).sqrt()
    } else {
        1.0
    };
    (c, mean.iter().map(|m| (m / n as f64 * c) as f32).collect())
}

#[cfg(test)]
mod tests;
