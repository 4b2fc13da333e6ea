//! One block's gated MLP. Hooks, in order (`l` = layer; shapes as in [`crate::hooks`]):
//! ln2 → fused gate,up projection → `MlpPre(l)` (gate) and `MlpPreLinear(l)` (up)
//! `[b, t, d_mlp]` → act(gate)·up → `MlpPost(l)` `[b, t, d_mlp]` → W_down → [post-ff norm] →
//! `MlpOut(l)` `[b, t, d_model]`.
//!
//! With neither pre-activation edited, the fused gated-activation kernel reads both halves
//! (captures see them unedited).

use candle_core::Tensor;

use super::{kernels, rms_norm, Block, Transformer};
use crate::hooks::{HookPoint, Hooks};
use crate::model::config::Activation;
use crate::Result;

impl Transformer {
    /// The MLP of block `l` on the residual stream `x` (after `ResidMid`): its contribution
    /// `mlp_out`, after the `MlpOut` hook.
    pub(super) fn mlp(
        &self,
        l: usize,
        blk: &Block,
        x: &Tensor,
        hooks: &mut Hooks,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let h = rms_norm(x, &blk.ln2, cfg.norm_eps)?;
        let gu = blk.w_gate_up.forward(&h, None)?;
        let gate = gu.narrow(2, 0, cfg.d_mlp)?;
        let up = gu.narrow(2, cfg.d_mlp, cfg.d_mlp)?;
        let fused_act = match cfg.act {
            Activation::Silu => Some(kernels::GatedAct::Silu),
            Activation::GeluTanh => Some(kernels::GatedAct::GeluTanh),
            Activation::Gelu => None,
        };
        let post = match fused_act {
            Some(act)
                if self.fused_on(&[&gu])
                    && !hooks.edits(HookPoint::MlpPre(l))
                    && !hooks.edits(HookPoint::MlpPreLinear(l)) =>
            {
                // Captures see the unedited halves; the kernel reads them from `gu` directly.
                hooks.apply(HookPoint::MlpPre(l), gate)?;
                hooks.apply(HookPoint::MlpPreLinear(l), up)?;
                kernels::gated_act(&gu, act)?
            }
            _ => {
                let gate = hooks.apply(HookPoint::MlpPre(l), gate)?;
                let up = hooks.apply(HookPoint::MlpPreLinear(l), up)?;
                let act = match cfg.act {
                    Activation::Silu => candle_nn::ops::silu(&gate)?,
                    Activation::GeluTanh => gate.gelu()?,
                    Activation::Gelu => gate.gelu_erf()?,
                };
                (act * up)?
            }
        };
        let post = hooks.apply(HookPoint::MlpPost(l), post)?;
        let mlp = blk.w_down.forward(&post, None)?;
        let mlp = match &blk.post_ff_ln {
            Some(w) => rms_norm(&mlp, w, cfg.norm_eps)?,
            None => mlp,
        };
        let mlp = hooks.apply(HookPoint::MlpOut(l), mlp)?;
        Ok(mlp)
    }
}
