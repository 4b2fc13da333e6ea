//! `x · Wᵀ` on a differentiable pass, as one op whose backward gives the gradient of `x` only.
//!
//! candle's matmul backward always computes both operands' gradients, so on a pass tracked for
//! activation gradients every weight's gradient was computed too — twice the backward FLOPs and
//! one weight-sized buffer per layer (several GB for a 135M model). The weights here are
//! constants: [`XLinear`]'s backward is `∂x = ∂y · W`, nothing else.

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

/// `x [n, in] → x · Wᵀ [n, out]` with `W [out, in]` (f32, CPU).
pub(super) struct XLinear {
    pub w: Tensor,
}

impl CustomOp1 for XLinear {
    fn name(&self) -> &'static str {
        "x-linear"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("x-linear: input not contiguous".into()))?;
        let xs = match storage {
            CpuStorage::F32(v) => &v[start..end],
            _ => return Err(candle_core::Error::Msg("x-linear: f32 only".into())),
        };
        // A fresh (untracked) tensor: candle's own matmul kernel, then the values back.
        let x = Tensor::from_slice(xs, layout.shape(), &Device::Cpu)?;
        let y = x.matmul(&self.w.t()?)?;
        let shape = y.shape().clone();
        Ok((CpuStorage::F32(y.flatten_all()?.to_vec1::<f32>()?), shape))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad_y.matmul(&self.w)?))
    }
}

/// Whether `x · wᵀ` can run as [`XLinear`] (a tracked f32 CPU pass with an f32 weight).
pub(super) fn applies(x: &Tensor, w: &Tensor) -> bool {
    x.track_op() && x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32
}
