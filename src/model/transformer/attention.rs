//! One block's attention, split as the forward pass runs it. Hooks, in order (`l` = layer;
//! shapes as in [`crate::hooks`]):
//! - [`Transformer::qkv`]: [ln1] → fused q,k,v projection (+ bias) → [q/k norm, per head or
//!   over the whole width] → `Q(l)` `[b, t, n_heads, d_head]`, `K(l)` and `V(l)`
//!   `[b, t, n_kv_heads, d_head]` → rope on the first `rotary_dim` dims of each head (none for
//!   GPT-2) → `RotQ(l)` / `RotK(l)` (same shapes as `Q` / `K`) → heads in front, keys and values
//!   appended to the KV cache.
//! - [`Transformer::attend`]: `AttnScores(l)` `[b, n_heads, t, t_keys]` (scaled, softcapped,
//!   masked) → softmax → `Pattern(l)` (same shape) → pattern·v, returned as z
//!   `[b, t, n_heads, d_head]`.
//! - [`Transformer::attention`]: `Z(l)` on z, then z·W_O with `Result(l)`
//!   `[b, t, n_heads, d_model]` (each head's contribution, without b_O as in TransformerLens)
//!   → [+ b_O] → [post-attention norm] → `AttnOut(l)` `[b, t, d_model]`.
//!
//! With no scores or pattern edit the fused kernel path runs (one pass per head); captures there
//! are materialised beside the computation, so capturing never changes the numbers.

use candle_core::{DType, Tensor};

use super::{kernels, rms_norm, rope, softcap, softmax_last, Block, Transformer};
use crate::hooks::{HookPoint, Hooks};
use crate::model::config::QkNorm;
use crate::Result;

impl Transformer {
    /// Attention of block `l` on the residual stream `x` (after `ResidPre`): its contribution
    /// `attn_out`, after the `AttnOut` hook.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention(
        &self,
        l: usize,
        blk: &Block,
        x: &Tensor,
        mask: &Tensor,
        rope: (&Tensor, &Tensor),
        hooks: &mut Hooks,
        kv_cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let h = self.apply_norm(x, blk.ln1.as_ref())?;
        let (q, k, v) = self.qkv(l, blk, &h, rope, hooks, kv_cache)?;
        let z = self.attend(l, &q, &k, &v, mask, hooks)?;
        let z = hooks.apply(HookPoint::Z(l), z)?;
        let attn = self.attn_result(l, blk, &z, hooks)?;
        let attn = match &blk.post_attn_ln {
            Some(_) => self.apply_norm(&attn, blk.post_attn_ln.as_ref())?,
            None => attn,
        };
        hooks.apply(HookPoint::AttnOut(l), attn)
    }

    /// q, k, v from the normalised stream `h`, heads in front: q `[b, n_heads, t, d_head]`
    /// rotated; k (rotated) and v `[b, n_kv_heads, t_keys, d_head]`, with the cached keys and
    /// values before them (the cache then holds these).
    fn qkv(
        &self,
        l: usize,
        blk: &Block,
        h: &Tensor,
        (cos, sin): (&Tensor, &Tensor),
        hooks: &mut Hooks,
        kv_cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let cfg = &self.cfg;
        let (b, t, _) = h.dims3()?;
        let (nh, nk, dh) = (cfg.n_heads, cfg.n_kv_heads, cfg.d_head);
        let qkv = blk.w_qkv.forward(h, blk.b_qkv.as_ref())?;
        // Views into the projection's output (split per head first, so that no copy is made
        // until the heads move in front of the positions below).
        let qkv = qkv.reshape((b, t, nh + 2 * nk, dh))?;
        let q = qkv.narrow(2, 0, nh)?;
        let k = qkv.narrow(2, nh, nk)?;
        let v = qkv.narrow(2, nh + nk, nk)?;
        // q/k norms: over each head (Gemma 3, Qwen3) or over all heads at once (OLMo-2).
        let qk_norm = |x: Tensor, w: Option<&Tensor>, heads: usize| -> Result<Tensor> {
            match (w, cfg.qk_norm) {
                (None, _) | (_, QkNorm::None) => Ok(x),
                (Some(w), QkNorm::PerHead) => rms_norm(&x, w, cfg.norm_eps),
                (Some(w), QkNorm::Full) => {
                    Ok(rms_norm(&x.reshape((b, t, heads * dh))?, w, cfg.norm_eps)?
                        .reshape((b, t, heads, dh))?)
                }
            }
        };
        let q = qk_norm(q, blk.q_norm.as_ref(), nh)?;
        let k = qk_norm(k, blk.k_norm.as_ref(), nk)?;
        let q = hooks.apply(HookPoint::Q(l), q)?;
        let k = hooks.apply(HookPoint::K(l), k)?;
        let v = hooks.apply(HookPoint::V(l), v)?;
        let (mut q, mut k) = (self.rotate(&q, cos, sin)?, self.rotate(&k, cos, sin)?);
        if hooks.wants(HookPoint::RotQ(l)) {
            q = hooks
                .apply(HookPoint::RotQ(l), q.transpose(1, 2)?)?
                .transpose(1, 2)?
                .contiguous()?;
        }
        if hooks.wants(HookPoint::RotK(l)) {
            k = hooks
                .apply(HookPoint::RotK(l), k.transpose(1, 2)?)?
                .transpose(1, 2)?
                .contiguous()?;
        }
        let v = if self.fused_on(&[&v]) {
            kernels::heads_first(&v, None)?
        } else {
            v.transpose(1, 2)?.contiguous()?
        }; // [b, nk, t, dh]
        let (k, v) = match kv_cache {
            Some(slot) => {
                let (k, v) = match slot.take() {
                    Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                    None => (k, v),
                };
                *slot = Some((k.clone(), v.clone()));
                (k, v)
            }
            None => (k, v),
        };
        Ok((q, k, v))
    }

    /// `[b, t, heads, d_head]` → `[b, heads, t, d_head]` (contiguous) with rotary embedding
    /// (NeoX rotate-half) on the first `rotary_dim` dims of each head; the rest pass through.
    fn rotate(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (r, dh) = (self.cfg.rotary_dim, self.cfg.d_head);
        if r == dh {
            return if self.fused_on(&[x]) {
                // One parallel pass: heads in front, rotated on the way.
                kernels::heads_first(x, Some((cos, sin)))
            } else {
                rope(&x.transpose(1, 2)?.contiguous()?, cos, sin)
            };
        }
        let x = if self.fused_on(&[x]) {
            kernels::heads_first(x, None)?
        } else {
            x.transpose(1, 2)?.contiguous()?
        };
        if r == 0 {
            return Ok(x);
        }
        let rot = rope(&x.narrow(3, 0, r)?.contiguous()?, cos, sin)?;
        Ok(Tensor::cat(&[&rot, &x.narrow(3, r, dh - r)?], 3)?)
    }

    /// Scores, pattern and z = pattern·v (`[b, t, n_heads, d_head]`, before the `Z` hook).
    /// Grouped-query: `n_heads / n_kv_heads` query heads share each kv head.
    fn attend(
        &self,
        l: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &Tensor,
        hooks: &mut Hooks,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (b, _, t, _) = q.dims4()?;
        let (nh, nk, dh) = (cfg.n_heads, cfg.n_kv_heads, cfg.d_head);
        let g = nh / nk;
        // Grouped-query attention without repeating k/v: fold each kv group's query heads into
        // the query axis.
        let scores = |q: &Tensor, k: &Tensor| -> Result<Tensor> {
            let tk = k.dim(2)?;
            Ok(q.reshape((b, nk, g * t, dh))?
                .matmul(&k.t()?)?
                .reshape((b, nh, t, tk))?)
        };
        // Capture only (fused paths): materialise the scores for the cache, outside the
        // computation, so that capturing never changes the numbers.
        let capture_scores = |hooks: &mut Hooks, scores: &Tensor| -> Result<()> {
            if hooks.wants(HookPoint::AttnScores(l)) {
                let mut s = (scores.to_dtype(DType::F32)? * cfg.attn_scale)?;
                if let Some(cap) = cfg.attn_softcap {
                    s = softcap(&s, cap)?;
                }
                hooks.apply(HookPoint::AttnScores(l), s.broadcast_add(mask)?)?;
            }
            Ok(())
        };
        let z = if self.attn_kernel
            && ![q, k, v].iter().any(|x| x.track_op())
            && !hooks.edits(HookPoint::AttnScores(l))
            && !hooks.edits(HookPoint::Pattern(l))
        {
            // One pass per head (scores, softmax and the values product, masked keys skipped),
            // in f32 whatever the compute dtype; scores and pattern are materialised only for a
            // capture.
            if hooks.wants(HookPoint::AttnScores(l)) {
                capture_scores(hooks, &scores(q, k)?)?;
            }
            let f32s = |x: &Tensor| x.to_dtype(DType::F32);
            let (z, pattern) = kernels::attention(
                &f32s(q)?,
                &f32s(k)?,
                &f32s(v)?,
                mask,
                cfg.attn_scale,
                cfg.attn_softcap,
                hooks.wants(HookPoint::Pattern(l)),
            )?;
            if let Some(p) = pattern {
                hooks.apply(HookPoint::Pattern(l), p)?;
            }
            z.to_dtype(self.dtype)?
        } else {
            let tk = k.dim(2)?;
            let scores = scores(q, k)?;
            let pattern = if self.fused_on(&[&scores]) && !hooks.edits(HookPoint::AttnScores(l)) {
                // The pattern is edited: the fused softmax, then the edit.
                capture_scores(hooks, &scores)?;
                kernels::masked_softmax(&scores, mask, cfg.attn_scale, cfg.attn_softcap)?
            } else {
                let mut scores = (scores.to_dtype(DType::F32)? * cfg.attn_scale)?;
                if let Some(cap) = cfg.attn_softcap {
                    scores = softcap(&scores, cap)?;
                }
                let scores = scores.broadcast_add(mask)?;
                let scores = hooks.apply(HookPoint::AttnScores(l), scores)?;
                softmax_last(&scores)?
            };
            let pattern = hooks.apply(HookPoint::Pattern(l), pattern)?;
            let pattern = pattern.to_dtype(self.dtype)?;
            pattern
                .reshape((b, nk, g * t, tk))?
                .matmul(v)?
                .reshape((b, nh, t, dh))?
                .transpose(1, 2)? // [b, t, nh, dh]
        };
        Ok(z)
    }

    /// z·W_O (+ b_O) `[b, t, d_model]`, through the per-head `Result` hook when it is wanted.
    fn attn_result(&self, l: usize, blk: &Block, z: &Tensor, hooks: &mut Hooks) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (b, t, nh, dh) = z.dims4()?;
        let attn = if hooks.wants(HookPoint::Result(l)) {
            // Each head's contribution: z_h · W_O[:, h]ᵀ → [b, t, nh, d].
            let w = blk
                .w_o
                .tensor(&self.device)?
                .reshape((cfg.d_model, nh, dh))?
                .permute((1, 2, 0))?
                .to_dtype(self.dtype)?
                .contiguous()?; // [nh, dh, d]
            let zh = z.transpose(1, 2)?.contiguous()?; // [b, nh, t, dh]
            let result = zh.broadcast_matmul(&w)?.transpose(1, 2)?; // [b, t, nh, d]
            if hooks.edits(HookPoint::Result(l)) {
                let sum = hooks.apply(HookPoint::Result(l), result)?.sum(2)?;
                match &blk.b_o {
                    Some(bo) => sum.broadcast_add(bo)?,
                    None => sum,
                }
            } else {
                // Capture only: keep the fused projection so numerics match an unhooked run.
                hooks.apply(HookPoint::Result(l), result)?;
                blk.w_o
                    .forward(&z.reshape((b, t, nh * dh))?, blk.b_o.as_ref())?
            }
        } else {
            blk.w_o
                .forward(&z.reshape((b, t, nh * dh))?, blk.b_o.as_ref())?
        };
        Ok(attn)
    }
}
