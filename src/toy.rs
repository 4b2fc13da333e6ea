//! A small Llama-shaped transformer trained here with candle: the test subject of the
//! training-dynamics check of Singh et al. 2024 ("What needs to go right for an induction head?",
//! docs/methods.md §1) and of the probes.
//!
//! The model is pre-RMSNorm, rotary, causal softmax attention, optionally a SiLU-gated MLP
//! (`d_mlp = 0`: attention-only), untied embeddings. Its differentiable forward uses only candle
//! ops with a backward (`ops::softmax`, `rms_norm_slow`, `rope_slow`) and computes the same
//! function as engram's [`Transformer`] with arch Llama on the exported weights
//! ([`ToyModel::to_model`]; an attention-only model is exported with a zero MLP of width 1).
//!
//! Training data: rows of `2·seq_len + 1` tokens, `[bos = 0] + F + R + R` with R uniform over
//! `1..vocab` of a length m drawn per row from `min_seq_len..=seq_len` and F a random filler of
//! `2·(seq_len − m)` tokens. The period varies between rows so that attending to a fixed
//! relative offset (easy with rotary embeddings) does not solve the task: only an induction
//! mechanism does. The loss is next-token cross-entropy on the predictable part of the second
//! copy (its tokens 2..m, as the head probe measures it), or on every position.
//! The clamp option replaces one head's attention pattern by the perfect previous-token pattern
//! (row i attends to i−1, row 0 to itself) in every forward pass of the toy: the paper's
//! "optogenetic" knob. Everything is seeded: weights from a `StdRng`, data from another.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use candle_nn::VarMap;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::hooks::Intervention;
use crate::model::config::{Rope, RopeScaling};
use crate::model::weights::MapWeights;
use crate::model::{Model, ModelConfig, ResolvedSource, SourceKind, Transformer};
use crate::Result;

/// The BOS id of the toy's data (never sampled inside R).
pub const BOS: u32 = 0;
const ROPE_THETA: f64 = 10_000.0;
const NORM_EPS: f64 = 1e-5;

/// Shape, training data and optimiser of a toy model.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct ToyConfig {
    pub vocab: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub d_head: usize,
    /// Width of the SiLU-gated MLP; 0 = attention-only.
    pub d_mlp: usize,
    /// Context length of the exported model (rows are 2·seq_len + 1 tokens).
    pub max_len: usize,
    /// Seeds the weights (`seed`) and the training data (`seed + 1`).
    pub seed: u64,
    pub lr: f64,
    pub weight_decay: f64,
    pub steps: usize,
    pub batch: usize,
    /// Length n of the random sequence R (rows are 2n + 1 tokens).
    pub seq_len: usize,
    /// Shortest R of the training rows (`seq_len` = every row is exactly `[bos] + R + R`).
    pub min_seq_len: usize,
    /// Train on every position's next token instead of only the second copy's predictable ones.
    pub loss_all_positions: bool,
    /// Replace the pattern of this (layer, head) by the perfect previous-token pattern.
    pub clamp_prev_token: Option<(usize, usize)>,
}

impl Default for ToyConfig {
    fn default() -> Self {
        ToyConfig {
            vocab: 64,
            d_model: 64,
            n_layers: 2,
            n_heads: 4,
            d_head: 16,
            d_mlp: 0,
            max_len: 64,
            seed: 0,
            lr: 1e-2,
            weight_decay: 0.01,
            steps: 1000,
            batch: 16,
            seq_len: 12,
            min_seq_len: 6,
            loss_all_positions: false,
            clamp_prev_token: None,
        }
    }
}

impl ToyConfig {
    pub fn validate(&self) -> Result<()> {
        if self.vocab < 3 || self.d_model == 0 || self.n_layers == 0 || self.n_heads == 0 {
            crate::bail!("toy: vocab ≥ 3 and non-zero d_model, n_layers, n_heads needed");
        }
        if self.d_head == 0 || self.d_head % 2 == 1 {
            crate::bail!("toy: d_head must be even (rotary embeddings)");
        }
        if self.seq_len < 2 || 2 * self.seq_len + 1 > self.max_len {
            crate::bail!(
                "toy: seq_len {} needs 2·seq_len + 1 ≤ max_len ({}) and seq_len ≥ 2",
                self.seq_len,
                self.max_len
            );
        }
        if self.min_seq_len < 2 || self.min_seq_len > self.seq_len {
            crate::bail!("toy: need 2 ≤ min_seq_len ≤ seq_len");
        }
        if let Some((l, h)) = self.clamp_prev_token {
            if l >= self.n_layers || h >= self.n_heads {
                crate::bail!("toy: clamped head L{l}H{h} does not exist");
            }
        }
        let need = self.training_bytes();
        let have = crate::alloc::physical_memory_bytes();
        if need > have / 2 {
            crate::bail!(
                "toy: this configuration needs about {:.1} GB to train (logits batch × {} × vocab {}, attention batch × heads × {}², weights and Adam state), more than half of this machine's {:.1} GB; lower --vocab, --seq-len or --batch",
                need as f64 / 1e9,
                2 * self.seq_len + 1,
                self.vocab,
                2 * self.seq_len + 1,
                have as f64 / 1e9
            );
        }
        Ok(())
    }

    /// A rough upper estimate of training memory (f32): a few copies of the logits and of every
    /// layer's attention scores (forward values and gradients), plus weights, gradients and two
    /// Adam moments. Saturating, so absurd sizes do not overflow.
    pub fn training_bytes(&self) -> u64 {
        let t = 2 * self.seq_len as u64 + 1;
        let (b, v, d) = (self.batch as u64, self.vocab as u64, self.d_model as u64);
        let logits = b.saturating_mul(t).saturating_mul(v).saturating_mul(4);
        let attn = (self.n_layers as u64)
            .saturating_mul(b)
            .saturating_mul(self.n_heads as u64)
            .saturating_mul(t.saturating_mul(t))
            .saturating_mul(6);
        let weights = (2 * v + 4 * d * self.n_layers as u64)
            .saturating_mul(d)
            .saturating_mul(4);
        logits
            .saturating_add(attn)
            .saturating_add(weights)
            .saturating_mul(4)
    }

    /// The engram config of the exported model (arch Llama, rope θ 10000, bos 0).
    pub fn model_config(&self) -> Result<ModelConfig> {
        let v = serde_json::json!({
            "model_type": "llama",
            "vocab_size": self.vocab,
            "hidden_size": self.d_model,
            "intermediate_size": self.d_mlp.max(1),
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_heads,
            "head_dim": self.d_head,
            "rms_norm_eps": NORM_EPS,
            "max_position_embeddings": self.max_len,
            "tie_word_embeddings": false,
            "rope_theta": ROPE_THETA,
            "hidden_act": "silu",
            "bos_token_id": BOS,
        });
        ModelConfig::from_hf_json(&v)
    }
}

/// Training progress at one step (losses of that step's batch, before its update).
#[derive(Clone, Debug, Serialize)]
pub struct StepLog {
    /// Number of updates done before this batch (0-based).
    pub step: usize,
    /// The optimised loss.
    pub loss: f64,
    /// Mean next-token loss on the predictable positions of the first copy and the second.
    pub loss_first_copy: f64,
    pub loss_second_copy: f64,
    pub seconds: f64,
}

/// What one call of [`ToyModel::train`] did.
#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    /// One entry per step.
    pub history: Vec<StepLog>,
    pub seconds: f64,
}

impl TrainReport {
    /// The first step whose second-copy loss, averaged over a window of `window` steps ending
    /// there, is below `threshold`.
    pub fn steps_to_second_copy_loss(&self, threshold: f64, window: usize) -> Option<usize> {
        let w = window.max(1);
        (w - 1..self.history.len()).find_map(|i| {
            let m = self.history[i + 1 - w..=i]
                .iter()
                .map(|s| s.loss_second_copy)
                .sum::<f64>()
                / w as f64;
            (m < threshold).then_some(self.history[i].step)
        })
    }
}

/// Attention statistics of the toy's own forward (clamp included) on repeated random tokens.
#[derive(Clone, Debug, Serialize)]
pub struct ToyHeadScores {
    /// `[layer][head]`: mean attention from a second-copy token to the token after its first
    /// occurrence (as the head probe does).
    pub induction: Vec<Vec<f64>>,
    /// `[layer][head]`: mean attention to the previous position.
    pub prev_token: Vec<Vec<f64>>,
    pub loss_first_copy: f64,
    pub loss_second_copy: f64,
}

struct LayerVars {
    ln1: Var,
    q: Var,
    k: Var,
    v: Var,
    o: Var,
    /// (ln2, gate, up, down) when d_mlp > 0.
    mlp: Option<(Var, Var, Var, Var)>,
}

/// A trainable toy transformer.
pub struct ToyModel {
    pub cfg: ToyConfig,
    /// Every parameter under its Hugging Face name.
    pub varmap: VarMap,
    embed: Var,
    layers: Vec<LayerVars>,
    norm: Var,
    lm_head: Var,
    cos: Tensor,
    sin: Tensor,
    device: Device,
    opt: Option<AdamW>,
    data_rng: StdRng,
    /// Updates done so far.
    pub steps_done: usize,
}

/// Gaussian samples (Box–Muller) from a seeded generator.
fn randn(rng: &mut StdRng, n: usize, std: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let a = 2.0 * std::f64::consts::PI * u2;
        out.push((r * a.cos()) as f32);
        out.push((r * a.sin()) as f32);
    }
    out.truncate(n);
    out
}

/// Training rows with their loss masks (see the module docs): `[BOS] + F + R + R` of
/// `2n + 1` tokens, R of length m ∈ `min_n..=n`. The masks (length 2n, one per predicting
/// position) mark the predictable second-copy positions and the first copy's counterparts.
pub struct TrainRows {
    pub rows: Vec<Vec<u32>>,
    pub second: Vec<Vec<f32>>,
    pub first: Vec<Vec<f32>>,
}

/// Draw [`TrainRows`].
pub fn training_rows(
    rng: &mut StdRng,
    vocab: usize,
    n: usize,
    min_n: usize,
    batch: usize,
) -> TrainRows {
    let t = 2 * n + 1;
    let mut out = TrainRows {
        rows: vec![],
        second: vec![],
        first: vec![],
    };
    for _ in 0..batch {
        let m = rng.random_range(min_n..=n);
        let f = 2 * (n - m);
        let mut row = Vec::with_capacity(t);
        row.push(BOS);
        row.extend((0..f).map(|_| rng.random_range(1..vocab as u32)));
        let r: Vec<u32> = (0..m).map(|_| rng.random_range(1..vocab as u32)).collect();
        row.extend_from_slice(&r);
        row.extend_from_slice(&r);
        // Position i predicts token i + 1; copies start at s1 = 1 + f and s2 = s1 + m.
        let (s1, s2) = (1 + f, 1 + f + m);
        let mark = |s: usize| -> Vec<f32> {
            (0..t - 1)
                .map(|i| (i >= s && i < s + m - 1) as u8 as f32)
                .collect()
        };
        out.first.push(mark(s1));
        out.second.push(mark(s2));
        out.rows.push(row);
    }
    out
}

/// `batch` rows of `[BOS] + R + R`, R uniform over `1..vocab` of length `n`.
pub fn repeated_batch(rng: &mut StdRng, vocab: usize, n: usize, batch: usize) -> Vec<Vec<u32>> {
    (0..batch)
        .map(|_| {
            let r: Vec<u32> = (0..n).map(|_| rng.random_range(1..vocab as u32)).collect();
            let mut row = Vec::with_capacity(2 * n + 1);
            row.push(BOS);
            row.extend_from_slice(&r);
            row.extend_from_slice(&r);
            row
        })
        .collect()
}

/// The perfect previous-token pattern `[t, t]`: row i attends to i−1, row 0 to itself.
pub fn prev_token_pattern(t: usize, device: &Device) -> Result<Tensor> {
    let mut m = vec![0f32; t * t];
    for i in 0..t {
        m[i * t + i.saturating_sub(1)] = 1.0;
    }
    Ok(Tensor::from_vec(m, (t, t), device)?)
}

fn causal_mask(t: usize, device: &Device) -> Result<Tensor> {
    let m: Vec<f32> = (0..t * t)
        .map(|k| {
            if k % t > k / t {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    Ok(Tensor::from_vec(m, (t, t), device)?)
}

fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (b, t, d) = x.dims3()?;
    Ok(x.reshape((b * t, d))?
        .matmul(&w.t()?)?
        .reshape((b, t, ()))?)
}

fn rms(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::rms_norm_slow(x, w, NORM_EPS as f32)?)
}

fn ids_tensor(rows: &[Vec<u32>], device: &Device) -> Result<Tensor> {
    let t = rows.first().map_or(0, |r| r.len());
    if t == 0 || rows.iter().any(|r| r.len() != t) {
        crate::bail!("toy: rows must be non-empty and of one length");
    }
    let flat: Vec<u32> = rows.iter().flatten().copied().collect();
    Ok(Tensor::from_vec(flat, (rows.len(), t), device)?)
}

/// Mean cross-entropy of `logits[:, from..from+len]` predicting `ids[:, from+1..from+len+1]`.
fn ce(logits: &Tensor, ids: &Tensor, from: usize, len: usize) -> Result<Tensor> {
    let (b, _, v) = logits.dims3()?;
    let lg = logits.narrow(1, from, len)?.reshape((b * len, v))?;
    let tg = ids.narrow(1, from + 1, len)?.flatten_all()?;
    Ok(candle_nn::loss::cross_entropy(&lg, &tg)?)
}

/// Per-position next-token losses `[b, t-1]` (differentiable).
fn nll(logits: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let t = ids.dim(1)?;
    let lp = candle_nn::ops::log_softmax(&logits.narrow(1, 0, t - 1)?, D::Minus1)?;
    let tg = ids.narrow(1, 1, t - 1)?.contiguous()?.unsqueeze(2)?;
    Ok(lp.gather(&tg, D::Minus1)?.squeeze(2)?.neg()?)
}

/// Mean of `nll` where `mask` (`[b][t-1]`) is 1.
fn masked_mean(nll: &Tensor, mask: &[Vec<f32>]) -> Result<Tensor> {
    let count: f32 = mask.iter().flatten().sum();
    let m = Tensor::from_vec(
        mask.iter().flatten().copied().collect::<Vec<f32>>(),
        nll.dims(),
        nll.device(),
    )?;
    Ok((nll.mul(&m)?.sum_all()? / count.max(1.0) as f64)?)
}

impl ToyModel {
    /// A freshly initialised model (deterministic in `cfg.seed`): embeddings N(0, 1), input
    /// projections N(0, 1/d_in), output projections additionally scaled by 1/√(2·n_layers),
    /// norm weights 1.
    pub fn untrained(cfg: ToyConfig) -> Result<ToyModel> {
        cfg.validate()?;
        let device = Device::Cpu;
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let varmap = VarMap::new();
        let (d, nh, dh, v) = (cfg.d_model, cfg.n_heads, cfg.d_head, cfg.vocab);
        let mut add = |name: String, shape: (usize, usize), std: f64| -> Result<Var> {
            let data = randn(&mut rng, shape.0 * shape.1, std);
            let var = Var::from_tensor(&Tensor::from_vec(data, shape, &device)?)?;
            varmap
                .data()
                .lock()
                .expect("varmap lock")
                .insert(name, var.clone());
            Ok(var)
        };
        let ones = |name: String, n: usize| -> Result<Var> {
            let var = Var::ones(n, DType::F32, &device)?;
            varmap
                .data()
                .lock()
                .expect("varmap lock")
                .insert(name, var.clone());
            Ok(var)
        };
        let embed = add("model.embed_tokens.weight".into(), (v, d), 1.0)?;
        let in_std = (d as f64).powf(-0.5);
        let out_scale = (2.0 * cfg.n_layers as f64).powf(-0.5);
        let mut layers = vec![];
        for i in 0..cfg.n_layers {
            let p = |s: &str| format!("model.layers.{i}.{s}");
            let q = add(p("self_attn.q_proj.weight"), (nh * dh, d), in_std)?;
            let k = add(p("self_attn.k_proj.weight"), (nh * dh, d), in_std)?;
            let vv = add(p("self_attn.v_proj.weight"), (nh * dh, d), in_std)?;
            let o = add(
                p("self_attn.o_proj.weight"),
                (d, nh * dh),
                (nh as f64 * dh as f64).powf(-0.5) * out_scale,
            )?;
            let mlp = if cfg.d_mlp > 0 {
                let m = cfg.d_mlp;
                let gate = add(p("mlp.gate_proj.weight"), (m, d), in_std)?;
                let up = add(p("mlp.up_proj.weight"), (m, d), in_std)?;
                let down = add(
                    p("mlp.down_proj.weight"),
                    (d, m),
                    (m as f64).powf(-0.5) * out_scale,
                )?;
                Some((
                    ones(p("post_attention_layernorm.weight"), d)?,
                    gate,
                    up,
                    down,
                ))
            } else {
                None
            };
            layers.push(LayerVars {
                ln1: ones(p("input_layernorm.weight"), d)?,
                q,
                k,
                v: vv,
                o,
                mlp,
            });
        }
        let lm_head = add("lm_head.weight".into(), (v, d), in_std)?;
        let norm = ones("model.norm.weight".into(), d)?;
        // Rotary tables exactly as engram's forward computes them (f32 inverse frequencies).
        let inv = Rope {
            theta: ROPE_THETA,
            scaling: RopeScaling::None,
        }
        .inv_freq(dh);
        let half = dh / 2;
        let (mut cos, mut sin) = (vec![], vec![]);
        for pos in 0..cfg.max_len {
            for f in &inv {
                let a = pos as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let cos = Tensor::from_vec(cos, (cfg.max_len, half), &device)?;
        let sin = Tensor::from_vec(sin, (cfg.max_len, half), &device)?;
        let data_rng = StdRng::seed_from_u64(cfg.seed.wrapping_add(1));
        Ok(ToyModel {
            cfg,
            varmap,
            embed,
            layers,
            norm,
            lm_head,
            cos,
            sin,
            device,
            opt: None,
            data_rng,
            steps_done: 0,
        })
    }

    /// Initialise and train for `cfg.steps` steps, calling `on_log` every `log_every` steps.
    pub fn trained(
        cfg: ToyConfig,
        log_every: usize,
        on_log: &mut dyn FnMut(&StepLog),
    ) -> Result<(ToyModel, TrainReport)> {
        let steps = cfg.steps;
        let mut m = ToyModel::untrained(cfg)?;
        let report = m.train(steps, log_every, on_log)?;
        Ok((m, report))
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Logits `[batch, t, vocab]` of the toy's differentiable forward, the clamp included when
    /// configured.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.forward_full(ids, self.cfg.clamp_prev_token)?.0)
    }

    /// Logits and every layer's attention pattern `[batch, head, t, t]`, with the given head
    /// clamped to the previous-token pattern.
    pub fn forward_full(
        &self,
        ids: &Tensor,
        clamp: Option<(usize, usize)>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let cfg = &self.cfg;
        let (b, t) = ids.dims2()?;
        if t > cfg.max_len {
            crate::bail!("toy: {t} tokens exceed max_len {}", cfg.max_len);
        }
        let (nh, dh) = (cfg.n_heads, cfg.d_head);
        let cos = self.cos.narrow(0, 0, t)?;
        let sin = self.sin.narrow(0, 0, t)?;
        let mask = causal_mask(t, &self.device)?;
        let mut x = self
            .embed
            .as_tensor()
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, cfg.d_model))?;
        let mut patterns = vec![];
        for (l, lv) in self.layers.iter().enumerate() {
            let h = rms(&x, lv.ln1.as_tensor())?;
            let heads = |w: &Var| -> Result<Tensor> {
                Ok(linear(&h, w.as_tensor())?
                    .reshape((b, t, nh, dh))?
                    .transpose(1, 2)?
                    .contiguous()?)
            };
            let q = candle_nn::rotary_emb::rope_slow(&heads(&lv.q)?, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope_slow(&heads(&lv.k)?, &cos, &sin)?;
            let v = heads(&lv.v)?;
            let scores = (q.matmul(&k.t()?.contiguous()?)? * (dh as f64).powf(-0.5))?;
            let scores = scores.broadcast_add(&mask)?;
            let mut pattern = candle_nn::ops::softmax(&scores, D::Minus1)?;
            if let Some((_, ch)) = clamp.filter(|&(cl, _)| cl == l) {
                let keep: Vec<f32> = (0..nh).map(|hh| (hh != ch) as u8 as f32).collect();
                let keep = Tensor::from_vec(keep, (1, nh, 1, 1), &self.device)?;
                let prev = prev_token_pattern(t, &self.device)?;
                let set = (keep
                    .affine(-1.0, 1.0)?
                    .broadcast_mul(&prev.reshape((1, 1, t, t))?))?;
                pattern = pattern.broadcast_mul(&keep)?.broadcast_add(&set)?;
            }
            let z = pattern
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b, t, nh * dh))?;
            patterns.push(pattern);
            x = (x + linear(&z, lv.o.as_tensor())?)?;
            if let Some((ln2, gate, up, down)) = &lv.mlp {
                let h = rms(&x, ln2.as_tensor())?;
                let g = candle_nn::ops::silu(&linear(&h, gate.as_tensor())?)?;
                let u = linear(&h, up.as_tensor())?;
                x = (x + linear(&(g * u)?, down.as_tensor())?)?;
            }
        }
        let h = rms(&x, self.norm.as_tensor())?;
        Ok((linear(&h, self.lm_head.as_tensor())?, patterns))
    }

    /// Logits of token rows (all of one length).
    pub fn logits(&self, rows: &[Vec<u32>]) -> Result<Tensor> {
        self.forward(&ids_tensor(rows, &self.device)?)
    }

    /// Train `steps` more steps with AdamW (state kept across calls), on fresh batches from the
    /// model's seeded data stream. `on_log` sees every `log_every`-th step and the last one.
    pub fn train(
        &mut self,
        steps: usize,
        log_every: usize,
        on_log: &mut dyn FnMut(&StepLog),
    ) -> Result<TrainReport> {
        let t0 = Instant::now();
        if self.opt.is_none() {
            let params = ParamsAdamW {
                lr: self.cfg.lr,
                weight_decay: self.cfg.weight_decay,
                ..Default::default()
            };
            self.opt = Some(AdamW::new(self.varmap.all_vars(), params)?);
        }
        let c = &self.cfg;
        let (n, min_n) = (c.seq_len, c.min_seq_len);
        let mut history = Vec::with_capacity(steps);
        for s in 0..steps {
            let c = &self.cfg;
            let data = training_rows(&mut self.data_rng, c.vocab, n, min_n, c.batch);
            let ids = ids_tensor(&data.rows, &self.device)?;
            let logits = self.forward(&ids)?;
            let nll = nll(&logits, &ids)?;
            let second = masked_mean(&nll, &data.second)?;
            let first = masked_mean(&nll.detach(), &data.first)?;
            let loss = if self.cfg.loss_all_positions {
                nll.mean_all()?
            } else {
                second.clone()
            };
            let log = StepLog {
                step: self.steps_done,
                loss: loss.to_scalar::<f32>()? as f64,
                loss_first_copy: first.to_scalar::<f32>()? as f64,
                loss_second_copy: second.to_scalar::<f32>()? as f64,
                seconds: t0.elapsed().as_secs_f64(),
            };
            if !log.loss.is_finite() {
                crate::bail!("toy: loss is {} at step {}", log.loss, log.step);
            }
            self.opt
                .as_mut()
                .expect("optimiser initialised")
                .backward_step(&loss)?;
            self.steps_done += 1;
            if log_every > 0 && (s % log_every == 0 || s + 1 == steps) {
                on_log(&log);
            }
            history.push(log);
        }
        Ok(TrainReport {
            history,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    /// Induction and previous-token scores per head and the two copies' losses, from the toy's
    /// own forward (clamp included) on `batch` rows of `[BOS] + R + R` drawn with `seed`.
    pub fn head_scores(&self, n: usize, batch: usize, seed: u64) -> Result<ToyHeadScores> {
        let mut rng = StdRng::seed_from_u64(seed);
        let rows = repeated_batch(&mut rng, self.cfg.vocab, n, batch);
        let ids = ids_tensor(&rows, &self.device)?;
        let (logits, patterns) = self.forward_full(&ids, self.cfg.clamp_prev_token)?;
        let first = ce(&logits, &ids, 1, n - 1)?.to_scalar::<f32>()? as f64;
        let second = ce(&logits, &ids, n + 1, n - 1)?.to_scalar::<f32>()? as f64;
        let t = 2 * n + 1;
        let nh = self.cfg.n_heads;
        let mut induction = vec![];
        let mut prev_token = vec![];
        for p in &patterns {
            let p: Vec<f32> = p.flatten_all()?.to_vec1()?;
            let (mut ind, mut prev) = (vec![(0f64, 0usize); nh], vec![(0f64, 0usize); nh]);
            for (b, r) in rows.iter().enumerate() {
                for h in 0..nh {
                    let at = |i: usize, j: usize| p[((b * nh + h) * t + i) * t + j] as f64;
                    for i in 1..t {
                        prev[h].0 += at(i, i - 1);
                        prev[h].1 += 1;
                    }
                    for i in n + 1..t {
                        if let Some(fp) = (1..i).find(|&q| r[q] == r[i]) {
                            ind[h].0 += at(i, fp + 1);
                            ind[h].1 += 1;
                        }
                    }
                }
            }
            let mean = |v: Vec<(f64, usize)>| -> Vec<f64> {
                v.into_iter()
                    .map(|(s, c)| if c == 0 { f64::NAN } else { s / c as f64 })
                    .collect()
            };
            induction.push(mean(ind));
            prev_token.push(mean(prev));
        }
        Ok(ToyHeadScores {
            induction,
            prev_token,
            loss_first_copy: first,
            loss_second_copy: second,
        })
    }

    /// Every weight under its Hugging Face name, as engram's Llama loader expects it (an
    /// attention-only model gets a zero MLP of width 1, whose output is exactly 0).
    pub fn hf_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out: HashMap<String, Tensor> = self
            .varmap
            .data()
            .lock()
            .expect("varmap lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect();
        if self.cfg.d_mlp == 0 {
            let d = self.cfg.d_model;
            for i in 0..self.cfg.n_layers {
                let p = |s: &str| format!("model.layers.{i}.{s}");
                let z = |r, c| Tensor::zeros((r, c), DType::F32, &self.device);
                out.insert(p("mlp.gate_proj.weight"), z(1, d)?);
                out.insert(p("mlp.up_proj.weight"), z(1, d)?);
                out.insert(p("mlp.down_proj.weight"), z(d, 1)?);
                out.insert(
                    p("post_attention_layernorm.weight"),
                    Tensor::ones(d, DType::F32, &self.device)?,
                );
            }
        }
        Ok(out)
    }

    /// The toy as an engram [`Model`] (arch Llama, f32, CPU, no tokenizer, spec "toy"). The clamp
    /// is not part of the weights: see [`ToyModel::clamp_intervention`].
    pub fn to_model(&self) -> Result<Model> {
        let cfg = self.cfg.model_config()?;
        let src = MapWeights::new(self.hf_tensors()?);
        let tr = Transformer::load(&src, cfg, DType::F32, &self.device)?;
        let source = ResolvedSource {
            spec: "toy".into(),
            kind: SourceKind::HfFolder,
            path: "toy".into(),
            revision: None,
            commit: None,
            tokenizer: None,
        };
        Ok(Model::from_parts(tr, None, source))
    }

    /// The configured clamp as an engram intervention for sequences of `t` tokens (None when the
    /// toy has no clamp): engram's forward with it computes the clamped toy's function.
    pub fn clamp_intervention(&self, t: usize) -> Result<Option<Intervention>> {
        match self.cfg.clamp_prev_token {
            None => Ok(None),
            Some((l, h)) => Ok(Some(Intervention::clamp_pattern(
                l,
                h,
                prev_token_pattern(t, &self.device)?,
            )?)),
        }
    }

    /// Write the toy as a Hugging Face folder (config.json + model.safetensors) that
    /// `Model::load` reads back.
    pub fn save_hf_folder(&self, dir: &Path) -> Result<()> {
        crate::model::export::write_hf_folder(&self.to_model()?, dir)
    }
}
