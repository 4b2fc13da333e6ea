//! One block's MLP. Hooks, in order (`l` = layer; shapes as in [`crate::hooks`]):
//! - `Ln2(l)` `[b, t, d_model]`: the input after the pre-norm (the input itself without one);
//! - gated (Llama, Gemma, Qwen, Phi-3, OLMo-2): fused gate,up projection → `MlpPre(l)`
//!   (gate) and `MlpPreLinear(l)` (up) `[b, t, d_mlp]` → act(gate)·up → `MlpPost(l)`;
//! - plain (GPT-2, GPT-NeoX): W_in·x + b_in → `MlpPre(l)` → act → `MlpPost(l)` (no
//!   `MlpPreLinear`, as in TransformerLens);
//!
//! then W_down (+ b_down) → [post-ff norm] → `MlpOut(l)` `[b, t, d_model]`.
//!
//! With neither pre-activation edited, the fused gated-activation kernel reads both halves
//! (captures see them unedited).

use candle_core::Tensor;

use super::{kernels, Block, Transformer};
use crate::hooks::{HookPoint, Hooks};
use crate::model::config::Activation;
use crate::Result;

fn activation(act: Activation, x: &Tensor) -> Result<Tensor> {
    Ok(match act {
        Activation::Silu => candle_nn::ops::silu(x)?,
        Activation::GeluTanh => x.gelu()?,
        Activation::Gelu => x.gelu_erf()?,
    })
}

impl Transformer {
    /// The MLP of block `l` on the residual stream `x` (after `ResidMid`, or `ResidPre` for
    /// parallel blocks): its contribution `mlp_out`, after the `MlpOut` hook.
    pub(super) fn mlp(
        &self,
        l: usize,
        blk: &Block,
        x: &Tensor,
        hooks: &mut Hooks,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let h = hooks.apply(HookPoint::Ln2(l), self.apply_norm(x, blk.ln2.as_ref())?)?;
        let post = if !cfg.gated_mlp {
            let pre = blk.w_gate_up.forward(&h, blk.b_in.as_ref())?;
            let pre = hooks.apply(HookPoint::MlpPre(l), pre)?;
            activation(cfg.act, &pre)?
        } else {
            let gu = blk.w_gate_up.forward(&h, None)?;
            let gate = gu.narrow(2, 0, cfg.d_mlp)?;
            let up = gu.narrow(2, cfg.d_mlp, cfg.d_mlp)?;
            let fused_act = match cfg.act {
                Activation::Silu => Some(kernels::GatedAct::Silu),
                Activation::GeluTanh => Some(kernels::GatedAct::GeluTanh),
                Activation::Gelu => None,
            };
            match fused_act {
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
                    (activation(cfg.act, &gate)? * up)?
                }
            }
        };
        let post = hooks.apply(HookPoint::MlpPost(l), post)?;
        let mlp = blk.w_down.forward(&post, blk.b_down.as_ref())?;
        let mlp = self.apply_norm(&mlp, blk.post_ff_ln.as_ref())?;
        hooks.apply(HookPoint::MlpOut(l), mlp)
    }
}
