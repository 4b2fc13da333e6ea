//! One block's attention, split as the forward pass runs it. Hooks, in order (`l` = layer;
//! shapes as in [`crate::hooks`]):
//! - [`Transformer::qkv`]: ln1 → fused q,k,v projection (+ bias) → [q/k norm] →
//!   `Q(l)` `[b, t, n_heads, d_head]`, `K(l)` and `V(l)` `[b, t, n_kv_heads, d_head]` → rope →
//!   `RotQ(l)` / `RotK(l)` (same shapes as `Q` / `K`) → heads in front, keys and values appended
//!   to the KV cache.
//! - [`Transformer::attend`]: `AttnScores(l)` `[b, n_heads, t, t_keys]` (scaled, softcapped,
//!   masked) → softmax → `Pattern(l)` (same shape) → pattern·v, returned as z
//!   `[b, t, n_heads, d_head]`.
//! - [`Transformer::attention`]: `Z(l)` on z, then z·W_O with `Result(l)`
//!   `[b, t, n_heads, d_model]` (each head's contribution) → [post-attention norm] →
//!   `AttnOut(l)` `[b, t, d_model]`.
//!
//! With no scores or pattern edit the fused kernel path runs (one pass per head); captures there
//! are materialised beside the computation, so capturing never changes the numbers.

use candle_core::{DType, Tensor};

use super::{kernels, rms_norm, rope, softcap, softmax_last, Block, Transformer};
use crate::hooks::{HookPoint, Hooks};
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
        let cfg = &self.cfg;
        let h = rms_norm(x, &blk.ln1, cfg.norm_eps)?;
        let (q, k, v) = self.qkv(l, blk, &h, rope, hooks, kv_cache)?;
        let z = self.attend(l, &q, &k, &v, mask, hooks)?;
        let z = hooks.apply(HookPoint::Z(l), z)?;
        let attn = self.attn_result(l, blk, &z, hooks)?;
        let attn = match &blk.post_attn_ln {
            Some(w) => rms_norm(&attn, w, cfg.norm_eps)?,
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
        let q = match &blk.q_norm {
            Some(w) => rms_norm(&q, w, cfg.norm_eps)?,
            None => q,
        };
        let k = match &blk.k_norm {
            Some(w) => rms_norm(&k, w, cfg.norm_eps)?,
            None => k,
        };
        let q = hooks.apply(HookPoint::Q(l), q)?;
        let k = hooks.apply(HookPoint::K(l), k)?;
        let v = hooks.apply(HookPoint::V(l), v)?;
        // Heads in front, rotated: one parallel pass each (fused), or transpose then rope.
        let rotate = |x: &Tensor| -> Result<Tensor> {
            if self.fused_on(&[x]) {
                Ok(kernels::heads_first(x, Some((cos, sin)))?)
            } else {
                rope(&x.transpose(1, 2)?.contiguous()?, cos, sin)
            }
        };
        let (mut q, mut k) = (rotate(&q)?, rotate(&k)?);
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
                let mut s = (scores * cfg.attn_scale)?;
                if let Some(cap) = cfg.attn_softcap {
                    s = softcap(&s, cap)?;
                }
                hooks.apply(HookPoint::AttnScores(l), s.broadcast_add(mask)?)?;
            }
            Ok(())
        };
        let z = if self.fused_on(&[q, k, v])
            && !hooks.edits(HookPoint::AttnScores(l))
            && !hooks.edits(HookPoint::Pattern(l))
        {
            // One pass per head (scores, softmax and the values product, masked keys skipped);
            // scores and pattern are materialised only for a capture.
            if hooks.wants(HookPoint::AttnScores(l)) {
                capture_scores(hooks, &scores(q, k)?)?;
            }
            let (z, pattern) = kernels::attention(
                q,
                k,
                v,
                mask,
                cfg.attn_scale,
                cfg.attn_softcap,
                hooks.wants(HookPoint::Pattern(l)),
            )?;
            if let Some(p) = pattern {
                hooks.apply(HookPoint::Pattern(l), p)?;
            }
            z
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

    /// z·W_O `[b, t, d_model]`, through the per-head `Result` hook when it is wanted.
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
                hooks.apply(HookPoint::Result(l), result)?.sum(2)?
            } else {
                // Capture only: keep the fused projection so numerics match an unhooked run.
                hooks.apply(HookPoint::Result(l), result)?;
                blk.w_o.forward(&z.reshape((b, t, nh * dh))?, None)?
            }
        } else {
            blk.w_o.forward(&z.reshape((b, t, nh * dh))?, None)?
        };
        Ok(attn)
    }
}
