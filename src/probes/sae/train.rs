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

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::store::ActivationStore;
use rayon::prelude::*;

#[cfg(test)]
use super::topk_mask;
use super::{randn, Sae, SaeKind};
use crate::progress::Progress;
use crate::Result;

mod fused;
use fused::{
    backward_fused, encode_fused, host_vec, with_host_slice, Encoded, SparseCodes, SPARSE_BELOW,
};

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
    pub loss: f64,
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
    pub dict_size: usize,
    pub steps: usize,
    pub batch_size: usize,
    pub seconds: f64,
    pub steps_per_sec: f64,
    /// The input scale `c` (E‖c·m‖² = d), folded into the saved weights.
    pub scale: f64,
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
    pub d: usize,
    pub n: usize,
    w_enc: Tensor,
    w_dec: Tensor,
    b_enc: Tensor,
    b_dec: Tensor,
    log_th: Option<Tensor>,
    opt: Vec<Adam>,
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

impl Trainer {
    /// Seeded initialisation; `mean` (normalised units) initialises b_dec.
    pub fn new(params: TrainParams, d: usize, mean: &[f32], device: &Device) -> Result<Self> {
        let n = params.dict_size.unwrap_or(params.expansion * d).max(1);
        let mut rng = StdRng::seed_from_u64(params.seed);
        let w_dec = Tensor::from_vec(randn(&mut rng, n * d), (n, d), device)?;
        let w_dec = unit_rows(&w_dec)?;
        let w_enc = w_dec.t()?.contiguous()?;
        let b_enc = Tensor::zeros(n, DType::F32, device)?;
        let b_dec = Tensor::from_slice(mean, d, device)?;
        let log_th = (params.kind == SaeKind::Threshold)
            .then(|| Tensor::full(params.init_threshold.max(1e-6).ln() as f32, n, device))
            .transpose()?;
        let mut opt = vec![
            Adam::new(&w_enc)?,
            Adam::new(&w_dec)?,
            Adam::new(&b_enc)?,
            Adam::new(&b_dec)?,
        ];
        if let Some(t) = &log_th {
            opt.push(Adam::new(t)?);
        }
        Ok(Trainer {
            params,
            d,
            n,
            w_enc,
            w_dec,
            b_enc,
            b_dec,
            log_th,
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
            SaeKind::TopK => 0.0,
        };
        let warm = (p.sparsity_warmup * p.steps as f64).max(1.0);
        coeff * ((step + 1) as f64 / warm).min(1.0)
    }

    /// The loss and its (straight-through) gradients on a normalised batch `x: [B, d]` with
    /// sparsity coefficient `lam`, without changing the parameters.
    pub fn gradients(&self, x: &Tensor, lam: f64) -> Result<Gradients> {
        let (b, _) = x.dims2()?;
        let (n, dev) = (self.n, &self.device);
        let bf = b as f64;
        let kind = self.params.kind;
        // The elementwise parts run fused on the host (one pass forward, one backward); the
        // five matrix products stay candle matmuls.
        let th: Option<Vec<f32>> = self
            .log_th
            .as_ref()
            .map(|t| host_vec(&t.exp()?))
            .transpose()?;
        let b_enc = host_vec(&self.b_enc)?;
        let Encoded {
            pre,
            z,
            fired,
            zsum,
        } = encode_fused(
            &x.matmul(&self.w_enc)?,
            &b_enc,
            kind,
            th.as_deref(),
            self.params.k,
        )?;
        let d = self.d;
        let density = fired.iter().map(|&f| f as f64).sum::<f64>() / (b * n).max(1) as f64;
        let sparse = self.sparse_override.unwrap_or(density < SPARSE_BELOW);
        let codes = sparse.then(|| SparseCodes::new(&z, n));
        let zt = Tensor::from_vec(z, (b, n), dev)?;
        let xhat = match &codes {
            Some(c) => {
                let w = host_vec(&self.w_dec)?;
                let xh = c.times(&w, &host_vec(&self.b_dec)?);
                Tensor::from_vec(xh, (b, d), dev)?
            }
            None => zt.matmul(&self.w_dec)?.broadcast_add(&self.b_dec)?,
        };
        let r = (xhat - x)?;
        let sse = r.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        let mse = sse / bf;
        let var = x
            .broadcast_sub(&x.mean_keepdim(0)?)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f32>()? as f64;
        let l0 = fired.iter().map(|&v| v as f64).sum::<f64>() / bf;
        // Backward.
        let g_xhat = (r * (2.0 / bf))?;
        let b_dec = g_xhat.sum(0)?;
        let g_xhat_host = codes.as_ref().map(|_| host_vec(&g_xhat)).transpose()?;
        let w_dec = match (&codes, &g_xhat_host) {
            (Some(c), Some(gx)) => Tensor::from_vec(c.gather(gx, d, |_, _, v| v), (n, d), dev)?,
            _ => zt.t()?.matmul(&g_xhat)?,
        };
        let g_z = g_xhat.matmul(&self.w_dec.t()?)?;
        let (relu_l1, penalty) = match kind {
            SaeKind::Relu => ((lam / bf) as f32, lam * zsum / bf),
            SaeKind::TopK => (0.0, 0.0),
            SaeKind::Threshold => (0.0, lam * l0),
        };
        let z = with_host_slice(&zt, |z| {
            backward_fused(
                &g_z,
                &pre,
                z,
                kind,
                th.as_deref(),
                relu_l1,
                self.params.bandwidth as f32,
                (lam / bf) as f32,
            )
        })??;
        let (g_pre, g_b, g_th) = z;
        let log_threshold = match &th {
            Some(th) => {
                let g: Vec<f32> = g_th.iter().zip(th).map(|(g, t)| g * t).collect();
                Some(Tensor::from_vec(g, n, dev)?)
            }
            None => None,
        };
        let w_enc = match &codes {
            // ∂pre is zero off the active entries, so xᵀ·∂pre sums over them only.
            Some(c) => {
                let xs = host_vec(x)?;
                let g = c.gather(&xs, d, |i, j, _| g_pre[i * n + j]);
                Tensor::from_vec(g, (n, d), dev)?.t()?.contiguous()?
            }
            None => x.t()?.matmul(&Tensor::from_vec(g_pre, (b, n), dev)?)?,
        };
        Ok(Gradients {
            w_enc,
            w_dec,
            b_enc: Tensor::from_vec(g_b, n, dev)?,
            b_dec,
            log_threshold,
            loss: mse + penalty,
            mse,
            fvu: if var > 0.0 { sse / var } else { f64::NAN },
            l0,
            fired,
        })
    }

    /// One optimisation step on a normalised batch `x: [B, d]`.
    pub fn train_step(&mut self, x: &Tensor) -> Result<StepLog> {
        let b = x.dims2()?.0;
        let lam = self.sparsity_at(self.step);
        let g = self.gradients(x, lam)?;
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
        if let (Some(lt), Some(gt)) = (&self.log_th, &g.log_threshold) {
            self.log_th = Some(self.opt[4].step(lt, gt, lr_t * self.params.threshold_lr_mult)?);
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

    /// Latents that have not fired in the last `dead_after` samples (only counted once that
    /// many samples have been seen).
    pub fn dead(&self) -> usize {
        let window = (self.params.dead_after as u64).min(self.samples.max(1));
        if self.samples < window {
            return 0;
        }
        self.since_fired.iter().filter(|&&s| s >= window).count()
    }

    /// The SAE in raw units: inputs are scaled by `scale` before encoding, so W_enc·scale and
    /// (W_dec, b_dec)/scale.
    pub fn export(&self, scale: f64) -> Result<Sae> {
        let threshold = self.log_th.as_ref().map(|t| t.exp()).transpose()?;
        let mut meta = serde_json::Map::new();
        meta.insert("engram_kind".into(), self.params.kind.name().into());
        meta.insert(
            "engram_train".into(),
            serde_json::to_value(&self.params).unwrap_or_default(),
        );
        meta.insert("engram_steps".into(), self.step.into());
        meta.insert("engram_input_scale".into(), scale.into());
        Ok(Sae {
            kind: self.params.kind,
            w_enc: (&self.w_enc * scale)?,
            w_dec: (&self.w_dec / scale)?,
            b_enc: self.b_enc.clone(),
            b_dec: (&self.b_dec / scale)?,
            threshold,
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

/// Train one SAE on the store's training shards; saves it (and checkpoints) under `out` when
/// given, with `hook_name`, `model_name` and `hook_layer` from the store.
pub fn train(
    store: &ActivationStore,
    params: &TrainParams,
    out: Option<&Path>,
    device: &Device,
    progress: &Progress,
) -> Result<(Sae, TrainReport)> {
    let d = store.d();
    let (train_shards, _) = store.split(params.eval_shards);
    let (sample, _) = store.sample(&train_shards, 16384)?;
    let (scale, mean) = if params.normalize {
        input_scale(&sample, d)
    } else {
        let (_, m) = input_scale(&sample, d);
        let (c, _) = input_scale(&sample, d);
        (1.0, m.iter().map(|v| (*v as f64 / c) as f32).collect())
    };
    let mut trainer = Trainer::new(params.clone(), d, &mean, device)?;
    let mut reader = store.reader(train_shards, params.batch_size, params.seed ^ 0x5AE);
    let bar = progress.bar(
        params.steps as u64,
        &format!("training {} SAE", params.kind),
    );
    let mut log = vec![];
    let t0 = Instant::now();
    let mut compute = 0.0;
    for s in 0..params.steps {
        let x = reader.next_tensor(device)?;
        let t1 = Instant::now();
        let x = if scale != 1.0 { (x * scale)? } else { x };
        let st = trainer.train_step(&x)?;
        compute += t1.elapsed().as_secs_f64();
        if s % params.log_every.max(1) == 0 || s + 1 == params.steps {
            log.push(st);
        }
        if let Some(out) = out {
            if params.checkpoint_every > 0
                && (s + 1) % params.checkpoint_every == 0
                && s + 1 < params.steps
            {
                let sae = with_store_meta(trainer.export(scale)?, store);
                sae.save(&out.join("checkpoints").join(format!("step_{:06}", s + 1)))?;
            }
        }
        bar.inc(1);
    }
    bar.finish();
    let seconds = t0.elapsed().as_secs_f64();
    let sae = with_store_meta(trainer.export(scale)?, store);
    // A diverged run (NaN activations in the store, an lr that blows up) is an error, not a
    // saved NaN SAE.
    for (name, t) in [
        ("W_enc", &sae.w_enc),
        ("W_dec", &sae.w_dec),
        ("b_enc", &sae.b_enc),
    ] {
        let bad = t
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?
            .iter()
            .filter(|v| !v.is_finite())
            .count();
        if bad > 0 {
            crate::bail!(
                "{} SAE training diverged: {bad} non-finite values in {name} after {} steps \
                 (NaN or inf in the store, or --lr too large); nothing saved",
                params.kind,
                params.steps
            );
        }
    }
    if let Some(out) = out {
        sae.save(out)?;
    }
    let report = TrainReport {
        kind: params.kind,
        d,
        dict_size: trainer.n,
        steps: params.steps,
        batch_size: params.batch_size,
        seconds,
        steps_per_sec: params.steps as f64 / compute.max(1e-9),
        scale,
        dead: trainer.dead(),
        log,
    };
    if let Some(out) = out {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| crate::Error::msg(format!("train_report.json: {e}")))?;
        crate::report::write_atomic(&out.join("train_report.json"), text.as_bytes())?;
    }
    Ok((sae, report))
}

fn with_store_meta(mut sae: Sae, store: &ActivationStore) -> Sae {
    let m = &store.meta;
    sae.meta.insert("hook_name".into(), m.hook.clone().into());
    sae.meta.insert("model_name".into(), m.model.clone().into());
    if let Ok(p) = m.hook.parse::<crate::hooks::HookPoint>() {
        if let Some(l) = p.layer() {
            sae.meta.insert("hook_layer".into(), l.into());
        }
    }
    sae.meta.insert("context_size".into(), m.context.into());
    sae.meta.insert("prepend_bos".into(), true.into());
    sae
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    /// The hand-written backward against candle's autograd on the same loss, the threshold's
    /// straight-through estimator written as a zero-valued surrogate whose τ-derivative is the
    /// rectangle-kernel pseudo-derivative.
    fn check(kind: SaeKind, sparse: bool) {
        let dev = Device::Cpu;
        let (b, d, n) = (64, 8, 24);
        let mut rng = StdRng::seed_from_u64(9);
        let params = TrainParams {
            kind,
            dict_size: Some(n),
            k: 5,
            bandwidth: 0.5,
            ..Default::default()
        };
        let mut t = Trainer::new(params, d, &vec![0.1; d], &dev).unwrap();
        t.b_enc = Tensor::from_vec(randn(&mut rng, n), n, &dev).unwrap();
        t.w_dec = (Tensor::from_vec(randn(&mut rng, n * d), (n, d), &dev).unwrap() * 0.5).unwrap();
        let th: Vec<f32> = (0..n).map(|i| 0.3 + 0.05 * i as f32).collect();
        t.log_th = Some(Tensor::from_vec(th, n, &dev).unwrap().log().unwrap());
        let x = Tensor::from_vec(randn(&mut rng, b * d), (b, d), &dev).unwrap();
        let lam = 0.7;
        t.sparse_override = Some(sparse);
        let g = t.gradients(&x, lam).unwrap();

        let v = |t: &Tensor| Var::from_tensor(t).unwrap();
        let (we, wd, be, bd, lt) = (
            v(&t.w_enc),
            v(&t.w_dec),
            v(&t.b_enc),
            v(&t.b_dec),
            v(t.log_th.as_ref().unwrap()),
        );
        let pre = x.matmul(&we).unwrap().broadcast_add(&be).unwrap();
        let pos = pre.gt(0f32).unwrap().to_dtype(DType::F32).unwrap();
        let bf = b as f64;
        let (z, penalty) = match kind {
            SaeKind::Relu => {
                let z = pre.relu().unwrap();
                let p = (z.sum_all().unwrap() * (lam / bf)).unwrap();
                (z, p)
            }
            SaeKind::TopK => {
                let m = (topk_mask(&pre.detach(), 5).unwrap() * &pos).unwrap();
                ((&pre * m).unwrap(), Tensor::new(0f32, &dev).unwrap())
            }
            SaeKind::Threshold => {
                let tau = lt.exp().unwrap();
                let mask = (pre
                    .broadcast_gt(&tau)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
                    * &pos)
                    .unwrap();
                let u = (pre.detach().broadcast_sub(&tau).unwrap() / 0.5).unwrap();
                let h = ((&u + 0.5).unwrap().relu().unwrap() - (&u - 0.5).unwrap().relu().unwrap())
                    .unwrap();
                let ste = (&h - h.detach()).unwrap();
                let z =
                    ((&pre * &mask).unwrap() + ste.broadcast_mul(&tau.detach()).unwrap()).unwrap();
                let l0 = (mask.sum_all().unwrap() + ste.sum_all().unwrap()).unwrap();
                (z, (l0 * (lam / bf)).unwrap())
            }
        };
        let xhat = z.matmul(&wd).unwrap().broadcast_add(&bd).unwrap();
        let mse = ((xhat - &x).unwrap().sqr().unwrap().sum_all().unwrap() / bf).unwrap();
        let loss = (mse + penalty).unwrap();
        let grads = loss.backward().unwrap();
        let close = |a: &Tensor, b: &Tensor, what: &str| {
            let diff: f32 = (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            let scale: f32 = b.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
            assert!(scale > 0.0, "{kind:?} {what}: zero gradient");
            assert!(
                diff <= 1e-4 * scale.max(1.0),
                "{kind:?} sparse={sparse} {what}: {diff} (scale {scale})"
            );
        };
        close(&g.w_enc, grads.get(&we).unwrap(), "W_enc");
        close(&g.w_dec, grads.get(&wd).unwrap(), "W_dec");
        close(&g.b_enc, grads.get(&be).unwrap(), "b_enc");
        close(&g.b_dec, grads.get(&bd).unwrap(), "b_dec");
        let l: f32 = loss.to_scalar().unwrap();
        assert!((g.loss - l as f64).abs() < 1e-3 * (l as f64).abs().max(1.0));
        if kind == SaeKind::Threshold {
            close(
                g.log_threshold.as_ref().unwrap(),
                grads.get(&lt).unwrap(),
                "log τ",
            );
        }
    }

    #[test]
    fn backward_matches_autograd() {
        for kind in SaeKind::ALL {
            check(kind, false);
            check(kind, true);
        }
    }
}
