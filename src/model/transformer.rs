//! THE forward pass: one config-driven decoder for Llama, Mistral, Qwen2/3, Gemma 1/2/3, GPT-2,
//! GPT-NeoX (Pythia), Phi-3 and OLMo-2, with a hook call at every named point (see
//! [`crate::hooks`]).
//!
//! Embedding: token embeddings [× √d: Gemma] → `hook_embed` → [+ learned positions
//! (`hook_pos_embed`): GPT-2]. Per block (`x` = residual stream; norms are RMSNorm, or
//! LayerNorm with bias for GPT-2 / GPT-NeoX, `ModelConfig::norm`):
//! ```text
//! resid_pre → [ln1: all but OLMo-2] → q,k,v (fused projection; + bias: Qwen2, GPT-2, NeoX)
//!   → [q/k norm: per head Gemma 3 / Qwen3, whole width OLMo-2]
//!   → rope on the first rotary_dim dims of each head (none: GPT-2; partial: NeoX, Phi-3;
//!     per-layer base: Gemma 3 local vs global) → scores = q·kᵀ·scale
//!   → [softcap: Gemma 2] → causal + padding + [sliding window] mask → pattern = softmax
//!   → z = pattern·v → attn_out = z·W_O [+ b_O] → [post-attention norm: Gemma 2/3, OLMo-2]
//! resid_mid = resid_pre + attn_out
//!   → [ln2] of resid_mid (of resid_pre for parallel blocks: GPT-NeoX)
//!   → gated: gate, up (fused) → post = act(gate)·up; plain (GPT-2, NeoX): post = act(W_in·x + b_in)
//!   → mlp_out = post·W_down [+ b_down] → [post-ff norm: Gemma 2/3, OLMo-2]
//! resid_post = resid_mid + mlp_out
//! ```
//! then the final norm, the unembedding and [final softcap: Gemma 2].
//!
//! `Transformer::block` runs the residual hooks; the attention (ln1 … attn_out) is in
//! `transformer/attention.rs` and the MLP (ln2 … mlp_out) in `transformer/mlp.rs`, each with
//! its hooks listed in order; `transformer/load.rs` maps every family's checkpoint names and
//! layouts onto the blocks.

use candle_core::{DType, Device, Tensor, D};

use super::config::{ModelConfig, NormKind};
use super::gemm::{Format, PackedLinear};
use super::kernels;
use super::mapped::MappedLinear;
use crate::hooks::{HookPoint, Hooks};
use crate::Result;

mod attention;
mod lens;
pub(crate) mod load;
mod mlp;
mod views;
mod xlinear;

pub use load::{hf_name, Slot};

/// A batch of token sequences, left-padded to one length.
#[derive(Clone, Debug)]
pub struct Batch {
    /// `[batch, seq]` token ids (pads included).
    pub ids: Vec<Vec<u32>>,
    /// Number of pad tokens at the start of each row.
    pub pad_left: Vec<usize>,
    pub seq_len: usize,
}

impl Batch {
    /// Left-pad `seqs` with `pad_id` to the longest length.
    pub fn new(seqs: &[Vec<u32>], pad_id: u32) -> Result<Batch> {
        if seqs.is_empty() {
            crate::bail!("empty batch");
        }
        let seq_len = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        if seq_len == 0 {
            crate::bail!("empty sequence in batch");
        }
        let mut ids = Vec::with_capacity(seqs.len());
        let mut pad_left = Vec::with_capacity(seqs.len());
        for s in seqs {
            if s.is_empty() {
                crate::bail!("empty sequence in batch");
            }
            let pad = seq_len - s.len();
            let mut row = vec![pad_id; pad];
            row.extend_from_slice(s);
            ids.push(row);
            pad_left.push(pad);
        }
        Ok(Batch {
            ids,
            pad_left,
            seq_len,
        })
    }

    pub fn single(seq: &[u32]) -> Result<Batch> {
        Batch::new(&[seq.to_vec()], 0)
    }

    /// Build from explicit ids and an attention mask (1 = real token); pads must be on the left.
    pub fn from_mask(ids: Vec<Vec<u32>>, mask: &[Vec<u32>]) -> Result<Batch> {
        let seq_len = ids.first().map(|r| r.len()).unwrap_or(0);
        let mut pad_left = vec![];
        for (r, m) in ids.iter().zip(mask) {
            if r.len() != seq_len || m.len() != seq_len {
                crate::bail!("ragged batch: rows must have the same length");
            }
            let pad = m.iter().take_while(|&&x| x == 0).count();
            if m[pad..].contains(&0) {
                crate::bail!("only left padding is supported");
            }
            pad_left.push(pad);
        }
        Ok(Batch {
            ids,
            pad_left,
            seq_len,
        })
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn is_padded(&self) -> bool {
        self.pad_left.iter().any(|&p| p > 0)
    }

    /// Position id of (row, index): counts real tokens, 0 on pads.
    pub fn position(&self, row: usize, t: usize) -> usize {
        t.saturating_sub(self.pad_left[row])
    }

    /// `[batch, seq]` mask, 1 for real tokens.
    pub fn mask(&self) -> Vec<Vec<u8>> {
        self.pad_left
            .iter()
            .map(|&p| (0..self.seq_len).map(|t| (t >= p) as u8).collect())
            .collect()
    }

    pub fn tokens_tensor(&self, device: &Device) -> Result<Tensor> {
        let flat: Vec<u32> = self.ids.iter().flatten().copied().collect();
        Ok(Tensor::from_vec(flat, (self.len(), self.seq_len), device)?)
    }
}

/// Which logits the forward pass computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogitsAt {
    /// `[batch, seq, vocab]`
    #[default]
    All,
    /// `[batch, 1, vocab]`: only the last position (generation, last-token probes).
    Last,
    /// No unembedding at all (activations only); returns the final-norm output.
    None,
}

/// Options of one forward pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunOptions {
    pub logits: LogitsAt,
    /// Stop after this many blocks (TransformerLens `stop_at_layer`); returns the residual stream.
    pub stop_at_layer: Option<usize>,
}

impl RunOptions {
    /// A pass run only to capture `points`: no logits, and it stops after the last block any of
    /// them is in (a point outside the blocks, like `ln_final`, needs the whole pass).
    pub fn capture_only(points: &[crate::hooks::HookPoint]) -> Self {
        RunOptions {
            logits: LogitsAt::None,
            stop_at_layer: points
                .iter()
                .map(|p| p.layer().map(|l| l + 1))
                .collect::<Option<Vec<usize>>>()
                .and_then(|v| v.into_iter().max()),
        }
    }
}

/// Keys and values of earlier positions, per layer, for incremental decoding.
/// The batch composition and its left padding are fixed for the cache's lifetime.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    kv: Vec<Option<(Tensor, Tensor)>>,
    pad_left: Vec<usize>,
    /// Positions (padded) already in the cache.
    pub len: usize,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }
}

/// A norm's weight (offset included) and, for LayerNorm, its bias.
struct Norm {
    w: Tensor,
    b: Option<Tensor>,
}

/// One block's weights in the canonical layout (see `transformer/load.rs`).
struct Block {
    ln1: Option<Norm>,
    /// `[q; k; v]` rows.
    w_qkv: Linear,
    b_qkv: Option<Tensor>,
    w_o: Linear,
    b_o: Option<Tensor>,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    post_attn_ln: Option<Norm>,
    ln2: Option<Norm>,
    /// `[gate; up]` rows (gated MLP) or `W_in` rows (plain MLP).
    w_gate_up: Linear,
    /// The plain MLP's input bias.
    b_in: Option<Tensor>,
    w_down: Linear,
    b_down: Option<Tensor>,
    post_ff_ln: Option<Norm>,
}

/// The weights of one transformer and the forward pass over them.
pub struct Transformer {
    pub cfg: ModelConfig,
    pub device: Device,
    pub dtype: DType,
    embed: Table,
    /// Learned absolute positions `[max_position_embeddings, d_model]` (GPT-2).
    pos_embed: Option<Tensor>,
    blocks: Vec<Block>,
    norm: Norm,
    lm_head: Table,
    inv_freqs: Vec<Vec<f32>>,
    fused: bool,
    /// The fused attention kernel runs (in f32) whatever the compute dtype: on the CPU unless
    /// `ENGRAM_UNFUSED=1`, so that no `[b, n_heads, t, t]` tensor exists unless a hook asks.
    attn_kernel: bool,
    /// The unembedding packed in bf16 when the products run in bf16
    /// ([`Transformer::use_bf16_matmul`]).
    lm_head_bf16: Option<PackedLinear>,
    /// The linear layers run in bf16: packed, or mapped from a 16-bit checkpoint.
    bf16_products: bool,
}

/// A linear layer's weight `[out, in]`: as loaded (candle's matmul), packed once for the
/// [`super::gemm`] kernels (f32 CPU models with AVX-512, or AVX2 with `ENGRAM_PACK_F32=1`;
/// `--matmul bf16`), or bf16 / f16 rows read where they lie in the checkpoint's mmap
/// ([`super::mapped`]: `--matmul bf16` on a 16-bit safetensors checkpoint).
enum Linear {
    Dense(Tensor),
    Packed(PackedLinear),
    Mapped(MappedLinear),
}

/// The embedding or unembedding matrix `[vocab, d_model]`: a tensor, or mapped 16-bit rows
/// that the lookup gathers and the unembedding multiplies directly; a mapped table becomes a
/// tensor (in the model's dtype) only when a weight view asks for one ([`Table::tensor`]).
struct Table {
    mapped: Option<MappedLinear>,
    dense: std::sync::OnceLock<Tensor>,
    dtype: DType,
    device: Device,
}

impl Table {
    fn dense(t: Tensor) -> Table {
        let (dtype, device) = (t.dtype(), t.device().clone());
        Table {
            mapped: None,
            dense: t.into(),
            dtype,
            device,
        }
    }

    fn mapped(m: MappedLinear, dtype: DType, device: &Device) -> Table {
        Table {
            mapped: Some(m),
            dense: std::sync::OnceLock::new(),
            dtype,
            device: device.clone(),
        }
    }

    /// The matrix as a tensor (a mapped one widened on first use, then kept).
    fn tensor(&self) -> &Tensor {
        self.dense.get_or_init(|| {
            let m = self.mapped.as_ref().expect("a table is dense or mapped");
            // Widening 16-bit values into a new CPU tensor has no failure mode but running out
            // of memory, which aborts anyway.
            m.unpack(self.dtype, &self.device)
                .expect("widening a mapped table")
        })
    }

    /// The same matrix, shared (a tied unembedding).
    fn share(&self) -> Table {
        match &self.mapped {
            Some(m) => Table::mapped(m.clone(), self.dtype, &self.device),
            None => Table::dense(self.tensor().clone()),
        }
    }

    fn dims(&self) -> Result<(usize, usize)> {
        match &self.mapped {
            Some(m) => Ok(m.dims()),
            None => Ok(self.tensor().dims2()?),
        }
    }
}

impl Linear {
    /// `x · Wᵀ (+ b)`.
    fn forward(&self, x: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        match self {
            Linear::Dense(w) => linear(x, w, b),
            // A differentiable pass multiplies by the unpacked weight (candle's matmul has a
            // backward; the packed kernels have none).
            Linear::Packed(p) if x.track_op() => linear(x, &p.unpack(x.device())?, b),
            Linear::Packed(p) => {
                let y = p.matmul_t(x)?;
                Ok(match b {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                })
            }
            Linear::Mapped(m) if x.track_op() => linear(x, &m.unpack(x.dtype(), x.device())?, b),
            Linear::Mapped(m) => {
                let y = m.matmul_t(x)?;
                Ok(match b {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                })
            }
        }
    }

    /// The weight as a tensor (unpacked when packed: exact for f32, the bf16 values for bf16).
    fn tensor(&self, device: &Device) -> Result<Tensor> {
        match self {
            Linear::Dense(w) => Ok(w.clone()),
            Linear::Packed(p) => p.unpack(device),
            Linear::Mapped(m) => m.unpack(DType::F32, device),
        }
    }

    /// Pack a loaded weight in `format` (a mapped one stays where it lies).
    fn pack(&mut self, format: Format, device: &Device) -> Result<()> {
        if matches!(self, Linear::Packed(p) if p.format() == format)
            || matches!(self, Linear::Mapped(_))
        {
            return Ok(());
        }
        *self = Linear::Packed(PackedLinear::pack(&self.tensor(device)?, format)?);
        Ok(())
    }
}

fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let (bsz, t, d) = x.dims3()?;
    let x2 = x.reshape((bsz * t, d))?;
    let y = if xlinear::applies(x, w) {
        // Differentiable: a backward for x only (weights are constants).
        x2.contiguous()?
            .apply_op1(xlinear::XLinear { w: w.contiguous()? })?
    } else {
        x2.matmul(&w.t()?)?
    };
    let y = match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    Ok(y.reshape((bsz, t, ()))?)
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let x = if x.is_contiguous() {
        x.clone()
    } else {
        x.contiguous()?
    };
    if x.track_op() {
        // Differentiable (candle's fused rms_norm has no backward); the same numbers.
        Ok(candle_nn::ops::rms_norm_slow(&x, w, eps as f32)?)
    } else if x.dtype() == DType::F32 {
        Ok(candle_nn::ops::rms_norm(&x, w, eps as f32)?)
    } else {
        // Normalise in f32 as transformers does, then multiply in f32 and cast back.
        let xf = x.to_dtype(DType::F32)?;
        let y = candle_nn::ops::rms_norm(&xf, &w.to_dtype(DType::F32)?, eps as f32)?;
        Ok(y.to_dtype(x.dtype())?)
    }
}

/// Softmax over the last axis: candle's fused kernel, or (on a differentiable pass, which it
/// has no backward for) the op-by-op softmax.
fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if x.track_op() {
        Ok(candle_nn::ops::softmax(x, D::Minus1)?)
    } else {
        Ok(candle_nn::ops::softmax_last_dim(x)?)
    }
}

/// Rotary embedding (rotate-half) of `x` `[b, h, t, d_head]` with tables `[t, d_head/2]` or
/// `[b, t, d_head/2]`: candle's fused kernel, or on a differentiable pass the same formula in
/// ops that have a backward.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        return Ok(candle_nn::rotary_emb::rope(x, cos, sin)?);
    }
    let lift = |c: &Tensor| -> Result<Tensor> {
        let c = Tensor::cat(&[c, c], D::Minus1)?;
        Ok(match c.rank() {
            2 => c.unsqueeze(0)?.unsqueeze(0)?,
            _ => c.unsqueeze(1)?,
        })
    };
    let (cos, sin) = (lift(cos)?, lift(sin)?);
    let half = x.dim(D::Minus1)? / 2;
    let rotated = Tensor::cat(
        &[
            &x.narrow(D::Minus1, half, half)?.neg()?,
            &x.narrow(D::Minus1, 0, half)?,
        ],
        D::Minus1,
    )?;
    Ok((x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?)
}

/// LayerNorm over the last axis, in f32: (x − mean) / √(var + eps) · w (+ b).
fn layer_norm(x: &Tensor, w: &Tensor, b: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let xf = x.to_dtype(DType::F32)?;
    let xc = xf.broadcast_sub(&xf.mean_keepdim(D::Minus1)?)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let y = xc
        .broadcast_div(&(var + eps)?.sqrt()?)?
        .broadcast_mul(&w.to_dtype(DType::F32)?)?;
    let y = match b {
        Some(b) => y.broadcast_add(&b.to_dtype(DType::F32)?)?,
        None => y,
    };
    Ok(y.to_dtype(x.dtype())?)
}

fn softcap(x: &Tensor, cap: f64) -> Result<Tensor> {
    Ok(((x / cap)?.tanh()? * cap)?)
}

impl Transformer {
    /// The model's norm kind (`ModelConfig::norm`) with these weights; `None` (OLMo-2's missing
    /// pre-norms) is the identity.
    fn apply_norm(&self, x: &Tensor, n: Option<&Norm>) -> Result<Tensor> {
        match (n, self.cfg.norm) {
            (None, _) => Ok(x.clone()),
            (Some(n), NormKind::Rms) => rms_norm(x, &n.w, self.cfg.norm_eps),
            (Some(n), NormKind::Layer) => layer_norm(x, &n.w, n.b.as_ref(), self.cfg.norm_eps),
        }
    }

    /// cos/sin tables `[batch, t, rotary_dim/2]` (or `[t, rotary_dim/2]` without padding) for
    /// padded indices `past..past + t`.
    fn rope_tables(
        &self,
        pad_left: &[usize],
        past: usize,
        t: usize,
    ) -> Result<Vec<(Tensor, Tensor)>> {
        let half = self.cfg.rotary_dim / 2;
        let padded = pad_left.iter().any(|&p| p > 0);
        let rows = if padded { pad_left.len() } else { 1 };
        self.inv_freqs
            .iter()
            .map(|inv| {
                let mut cos = Vec::with_capacity(rows * t * half);
                let mut sin = Vec::with_capacity(rows * t * half);
                for &pad in pad_left.iter().take(rows) {
                    for i in past..past + t {
                        let pos = i.saturating_sub(pad) as f32;
                        for f in inv {
                            let a = pos * f;
                            cos.push(a.cos());
                            sin.push(a.sin());
                        }
                    }
                }
                let shape: Vec<usize> = if padded {
                    vec![rows, t, half]
                } else {
                    vec![t, half]
                };
                let c = Tensor::from_vec(cos, shape.clone(), &self.device)?.to_dtype(self.dtype)?;
                let s = Tensor::from_vec(sin, shape, &self.device)?.to_dtype(self.dtype)?;
                Ok((c, s))
            })
            .collect()
    }

    /// Additive mask `[batch | 1, 1, t, past + t]` (f32) for queries at padded indices
    /// `past..past + t`: causal, padding keys hidden, optional sliding window.
    fn mask(
        &self,
        pad_left: &[usize],
        past: usize,
        t: usize,
        window: Option<usize>,
    ) -> Result<Tensor> {
        let padded = pad_left.iter().any(|&p| p > 0);
        let rows = if padded { pad_left.len() } else { 1 };
        let tk = past + t;
        let mut m = vec![0f32; rows * t * tk];
        for (r, &pad) in pad_left.iter().take(rows).enumerate() {
            for qi in 0..t {
                let i = past + qi;
                for j in 0..tk {
                    let causal = j <= i;
                    let in_window = window.is_none_or(|w| i - j.min(i) < w);
                    // Pad keys are invisible, except to pad queries themselves (so no row is
                    // fully masked; pad rows are ignored downstream).
                    let key_ok = j >= pad || i < pad && i == j;
                    if !(causal && in_window && key_ok) {
                        m[(r * t + qi) * tk + j] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        // Scores are softmaxed in f32 whatever the model's dtype.
        Ok(Tensor::from_vec(m, (rows, 1, t, tk), &self.device)?)
    }

    /// The hooked forward pass. Returns logits as f32 (`[batch, seq | 1, vocab]`), or the
    /// residual stream / final-norm output when `opts` asks for no logits.
    pub fn forward_with(
        &self,
        batch: &Batch,
        hooks: &mut Hooks,
        opts: RunOptions,
    ) -> Result<Tensor> {
        self.forward_inner(batch, hooks, opts, None, None)
    }

    /// The pass from block `layer` on, with `resid` `[batch, seq, d_model]` as that block's
    /// residual stream input (TransformerLens `start_at_layer`): `blocks.{layer}.hook_resid_pre`
    /// and every later hook fire, earlier ones do not. `batch` still gives the padding and the
    /// positions. Patching a layer's residual stream this way skips the blocks before it.
    pub fn forward_from(
        &self,
        batch: &Batch,
        layer: usize,
        resid: &Tensor,
        hooks: &mut Hooks,
        opts: RunOptions,
    ) -> Result<Tensor> {
        let want = [batch.len(), batch.seq_len, self.cfg.d_model];
        if layer >= self.cfg.n_layers {
            return Err(crate::Error::LayerOutOfRange {
                layer,
                n_layers: self.cfg.n_layers,
            });
        }
        if resid.dims() != want {
            crate::bail!(
                "forward_from: resid is {:?}, the batch needs {want:?}",
                resid.dims()
            );
        }
        self.forward_inner(batch, hooks, opts, None, Some((layer, resid)))
    }

    /// Incremental decoding: run `batch` (new tokens for every row; for the first call the
    /// left-padded prompts) after what `cache` holds, and append its keys and values.
    /// Hooks see only the new positions (`hook_pattern` is `[batch, head, new, past + new]`).
    pub fn forward_cached(
        &self,
        batch: &Batch,
        hooks: &mut Hooks,
        opts: RunOptions,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        if cache.len == 0 {
            cache.pad_left = batch.pad_left.clone();
            cache.kv = vec![None; self.cfg.n_layers];
        } else if batch.len() != cache.pad_left.len() || batch.is_padded() {
            crate::bail!("a KV cache continues the same batch with unpadded new tokens");
        }
        self.forward_inner(batch, hooks, opts, Some(cache), None)
    }

    fn forward_inner(
        &self,
        batch: &Batch,
        hooks: &mut Hooks,
        opts: RunOptions,
        mut cache: Option<&mut KvCache>,
        start: Option<(usize, &Tensor)>,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        hooks.begin(cfg.n_layers)?;
        let (b, t) = (batch.len(), batch.seq_len);
        let past = cache.as_ref().map_or(0, |c| c.len);
        let pad_left: Vec<usize> = match &cache {
            Some(c) => c.pad_left.clone(),
            None => batch.pad_left.clone(),
        };
        if past + t > cfg.max_position_embeddings {
            crate::bail!(
                "sequence of {} tokens is longer than the model's context ({})",
                past + t,
                cfg.max_position_embeddings
            );
        }
        let ids = batch.tokens_tensor(&self.device)?;
        if let Some(&bad) = batch
            .ids
            .iter()
            .flatten()
            .find(|&&i| i as usize >= cfg.vocab_size)
        {
            crate::bail!(
                "token id {bad} is out of the vocabulary ({})",
                cfg.vocab_size
            );
        }
        let first = start.map_or(0, |s| s.0);
        let mut x = match start {
            Some((_, resid)) => resid.to_dtype(self.dtype)?,
            None => self.embed_tokens(&ids, &pad_left, past, b, t, hooks)?,
        };

        let ropes = self.rope_tables(&pad_left, past, t)?;
        let mut masks: Vec<(Option<usize>, Tensor)> = vec![];
        let n_run = opts.stop_at_layer.unwrap_or(cfg.n_layers).min(cfg.n_layers);
        for (l, blk) in self.blocks.iter().enumerate().take(n_run).skip(first) {
            let window = cfg.layers[l].sliding_window.filter(|&w| w < past + t);
            let mask = match masks.iter().find(|(w, _)| *w == window) {
                Some((_, m)) => m.clone(),
                None => {
                    let m = self.mask(&pad_left, past, t, window)?;
                    masks.push((window, m.clone()));
                    m
                }
            };
            let (cos, sin) = &ropes[cfg.layers[l].rope];
            let kv = cache.as_deref_mut().map(|c| &mut c.kv[l]);
            x = self.block(l, blk, x, &mask, cos, sin, hooks, kv)?;
        }
        if let Some(c) = cache {
            c.len += t;
        }
        if opts.stop_at_layer.is_some() {
            return Ok(x);
        }
        let x = match opts.logits {
            LogitsAt::Last => x.narrow(1, t - 1, 1)?,
            _ => x,
        };
        let h = self.apply_norm(&x, Some(&self.norm))?;
        let h = hooks.apply(HookPoint::LnFinal, h)?;
        if opts.logits == LogitsAt::None {
            return Ok(h);
        }
        self.logits_of_normed(&h)
    }

    /// Token embeddings [× scale] → `hook_embed` [+ learned positions → `hook_pos_embed`]:
    /// the first block's residual stream `[b, t, d_model]`.
    fn embed_tokens(
        &self,
        ids: &Tensor,
        pad_left: &[usize],
        past: usize,
        b: usize,
        t: usize,
        hooks: &mut Hooks,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let rows = match &self.embed.mapped {
            Some(m) => m
                .gather(&ids.flatten_all()?.to_vec1::<u32>()?, &self.device)?
                .to_dtype(self.dtype)?,
            None => self.embed.tensor().index_select(&ids.flatten_all()?, 0)?,
        };
        let mut x = rows.reshape((b, t, cfg.d_model))?;
        if let Some(s) = cfg.embed_scale {
            // transformers multiplies by the scale rounded to the weights' dtype.
            let s = Tensor::new(s as f32, &self.device)?.to_dtype(self.dtype)?;
            x = x.broadcast_mul(&s)?;
        }
        x = hooks.apply(HookPoint::Embed, x)?;
        if let Some(wpe) = &self.pos_embed {
            // Position ids count real tokens (0 on pads), as for rotary embeddings.
            let pos: Vec<u32> = pad_left
                .iter()
                .flat_map(|&p| (past..past + t).map(move |i| i.saturating_sub(p) as u32))
                .collect();
            let pos = Tensor::from_vec(pos, b * t, &self.device)?;
            let p = wpe.index_select(&pos, 0)?.reshape((b, t, cfg.d_model))?;
            x = (x + hooks.apply(HookPoint::PosEmbed, p)?)?;
        }
        Ok(x)
    }

    /// One block: `ResidPre` → attention (adds `attn_out`) → `ResidMid` → MLP (adds `mlp_out`)
    /// → `ResidPost`. Parallel blocks (GPT-NeoX) feed the MLP from `resid_pre`.
    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        l: usize,
        blk: &Block,
        x: Tensor,
        mask: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        hooks: &mut Hooks,
        kv_cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let x = hooks.apply(HookPoint::ResidPre(l), x)?;
        let attn = self.attention(l, blk, &x, mask, (cos, sin), hooks, kv_cache)?;
        let mid = hooks.apply(HookPoint::ResidMid(l), (&x + attn)?)?;
        let mlp_in = if self.cfg.parallel_attn_mlp { &x } else { &mid };
        let mlp = self.mlp(l, blk, mlp_in, hooks)?;
        hooks.apply(HookPoint::ResidPost(l), (mid + mlp)?)
    }

    /// Run the linear layers' products in bf16 (weights and activations rounded to bf16, f32
    /// accumulation; AMX tiles or AVX512-BF16 where the CPU has them): 1.4–2× the f32
    /// throughput, logits within ~1% of f32. Needs an f32 model on the CPU. The weight views then return the bf16
    /// values (as f32) that the products use. Weights mapped at load ([`super::mapped`]) stay
    /// as they are: only the loaded ones are packed.
    pub fn use_bf16_matmul(&mut self) -> Result<()> {
        if self.dtype != DType::F32 || !self.device.is_cpu() {
            crate::bail!("bf16 matmul needs an f32 model on the CPU (--dtype f32 --device cpu)");
        }
        if !self.bf16_matmul() {
            self.pack_blocks(Format::Bf16)?;
            if self.lm_head.mapped.is_none() {
                self.lm_head_bf16 = Some(PackedLinear::pack(self.lm_head.tensor(), Format::Bf16)?);
            }
            self.bf16_products = true;
        }
        Ok(())
    }

    /// How many of the linear weights (four per block) and tables (embedding, unembedding) read
    /// 16-bit weights where they lie in the checkpoint's map ([`super::mapped`]); 0 when none.
    pub fn mapped_weights(&self) -> usize {
        let blocks: usize = self
            .blocks
            .iter()
            .map(|b| {
                [&b.w_qkv, &b.w_o, &b.w_gate_up, &b.w_down]
                    .iter()
                    .filter(|l| matches!(l, Linear::Mapped(_)))
                    .count()
            })
            .sum();
        blocks + self.embed.mapped.is_some() as usize + self.lm_head.mapped.is_some() as usize
    }

    /// Pack every block's linear weights in `format` (replacing the loaded tensors).
    fn pack_blocks(&mut self, format: Format) -> Result<()> {
        use rayon::prelude::*;
        let device = self.device.clone();
        self.blocks.par_iter_mut().try_for_each(|b| -> Result<()> {
            b.w_qkv.pack(format, &device)?;
            b.w_o.pack(format, &device)?;
            b.w_gate_up.pack(format, &device)?;
            b.w_down.pack(format, &device)
        })
    }

    /// A weight view in the model's dtype, contiguous.
    fn view(&self, t: Tensor) -> Result<Tensor> {
        Ok(t.to_dtype(self.dtype)?.contiguous()?)
    }

    /// Whether the linear layers run in bf16 ([`Transformer::use_bf16_matmul`]).
    pub fn bf16_matmul(&self) -> bool {
        self.bf16_products
    }

    /// Whether the fused CPU kernels ([`kernels`], and the packed f32 matmul) run on these
    /// inputs: f32 on the CPU, unless `ENGRAM_UNFUSED=1` asks for candle's op-by-op path (for
    /// comparisons), and not on a differentiable pass once a gradient point is upstream of them
    /// (the kernels have no backward).
    fn fused_on(&self, xs: &[&Tensor]) -> bool {
        self.fused && !xs.iter().any(|x| x.track_op())
    }
}

/// Log-softmax over the last axis in f32.
pub fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::log_softmax(
        &logits.to_dtype(DType::F32)?,
        D::Minus1,
    )?)
}
