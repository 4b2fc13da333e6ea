//! The residual stream read through the model's own head, for the logit lens and direct logit
//! attribution: [`Transformer::unembed`] (final norm → unembedding → [final softcap]) and
//! [`Transformer::norm_scale`] (the per-position factor a norm divides by, which DLA folds into
//! each component as TransformerLens' `apply_ln_to_stack` does).

use candle_core::{DType, Tensor, D};

use super::{linear, softcap, Transformer};
use crate::model::config::NormKind;
use crate::Result;

impl Transformer {
    /// Logits of residual-stream vectors `x` `[b, t, d_model]` through the final norm, the
    /// unembedding and the final softcap (Gemma 2): `[b, t, vocab]` (f32). The last block's
    /// `resid_post` gives the model's own logits (the same computation as the forward pass).
    pub fn unembed(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.apply_norm(x, Some(&self.norm))?;
        self.logits_of_normed(&h)
    }

    /// Logits of the final norm's output `h` `[b, t, d_model]`.
    pub(super) fn logits_of_normed(&self, h: &Tensor) -> Result<Tensor> {
        let logits = match (&self.lm_head_bf16, &self.lm_head.mapped) {
            (Some(p), _) if !h.track_op() => p.matmul_t(h)?,
            (_, Some(m)) if !h.track_op() => m.matmul_t(&h.to_dtype(DType::F32)?)?,
            _ => linear(h, self.lm_head.tensor(), None)?.to_dtype(DType::F32)?,
        };
        match self.cfg.final_softcap {
            Some(cap) => softcap(&logits, cap),
            None => Ok(logits),
        }
    }

    /// The factor `s` the model's norm kind multiplies its (centred, for LayerNorm) input by,
    /// per row of `x` `[..., d_model]`: `1/√(mean(x²) + ε)` (RMSNorm) or `1/√(var(x) + ε)`
    /// (LayerNorm), shaped `[..., 1]`, in f32. A norm's output is then `w ⊙ (x − [μ])·s (+ b)`.
    pub fn norm_scale(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?;
        let centred = match self.cfg.norm {
            NormKind::Rms => x,
            NormKind::Layer => x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?,
        };
        let ms = centred.sqr()?.mean_keepdim(D::Minus1)?;
        Ok((ms + self.cfg.norm_eps)?.sqrt()?.recip()?)
    }
}
