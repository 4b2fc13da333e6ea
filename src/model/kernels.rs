//! Fused CPU kernels for the two elementwise-heavy steps of the forward pass, used for f32 on
//! the CPU when no hook needs the intermediate tensors:
//!
//! - [`masked_softmax`]: `softmax(softcap(scores · scale) + mask)` in one pass over the scores
//!   (candle does scale, mask add and softmax as three passes with libm `expf`);
//! - [`gated_act`]: `act(gate) · up` straight from the fused gate-up projection output.
//!
//! Both use a branch-free `exp` (Cephes polynomial, ≈1 ulp) written so that LLVM vectorises it;
//! the loops are compiled twice, for AVX-512 and AVX2 + FMA, and picked at run time.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::Result;

const LANES: usize = 16;

/// `e^x` for finite or infinite `x`, vectorisable: 0 below −87.3, saturated above 88.4.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to the nearest integer
    let xc = x.clamp(-87.336_54, 88.376_26);
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = xc - n * C1 - n * C2;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let p = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    let y = p * scale;
    if x < -87.336_54 {
        0.0
    } else {
        y
    }
}

/// `tanh`, vectorisable (Cephes `tanhf`): an odd polynomial below |x| = 0.625, where the
/// exponential form `1 − 2 / (e^{2x} + 1)` would lose digits to cancellation, that form above.
#[inline(always)]
fn tanh(x: f32) -> f32 {
    let a = x.abs().min(10.0);
    let big = 1.0 - 2.0 / (exp(2.0 * a) + 1.0);
    let big = if x < 0.0 { -big } else { big };
    let z = x * x;
    let mut p = -5.704_988_7e-3_f32;
    p = p * z + 2.063_909e-2;
    p = p * z - 5.373_971_6e-2;
    p = p * z + 0.133_314_42;
    p = p * z - 0.333_332_8;
    let small = p * z * x + x;
    if a < 0.625 {
        small
    } else {
        big
    }
}

/// One attention row: `row ← softmax(softcap(row · scale) + mask)`.
#[inline(always)]
fn softmax_row(row: &mut [f32], mask: &[f32], scale: f32, cap: Option<f32>) {
    match cap {
        Some(c) => row
            .iter_mut()
            .zip(mask)
            .for_each(|(x, &m)| *x = tanh(*x * scale / c) * c + m),
        None => row
            .iter_mut()
            .zip(mask)
            .for_each(|(x, &m)| *x = *x * scale + m),
    }
    let mut mx = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for ch in &mut chunks {
        for (a, &b) in mx.iter_mut().zip(ch) {
            *a = if b > *a { b } else { *a };
        }
    }
    let mut max = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    max = mx.iter().fold(max, |a, &b| a.max(b));
    let mut acc = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for ch in &mut chunks {
        for (a, x) in acc.iter_mut().zip(ch.iter_mut()) {
            *x = exp(*x - max);
            *a += *x;
        }
    }
    let mut sum = 0f32;
    for x in chunks.into_remainder() {
        *x = exp(*x - max);
        sum += *x;
    }
    sum += acc.iter().sum::<f32>();
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|x| *x *= inv);
}

#[inline(always)]
fn gated_row(gate: &[f32], up: &[f32], out: &mut [f32], act: GatedAct) {
    match act {
        GatedAct::Silu => {
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                *o = g / (1.0 + exp(-g)) * u;
            }
        }
        GatedAct::GeluTanh => {
            const K: f32 = 0.797_884_6; // sqrt(2/π)
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                *o = 0.5 * g * (1.0 + tanh(K * g * (1.0 + 0.044_715 * g * g))) * u;
            }
        }
    }
}

macro_rules! multiversion {
    ($(#[$m:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn generic($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512($($arg: $ty),*) { generic($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) { generic($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features the function was compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic($($arg),*)
        }
    };
}

multiversion! {
    /// Softmax over `rows` rows of `tk` scores; row `i` uses mask row `mask_row(i)`.
    fn softmax_rows(scores: &mut [f32], mask: &[f32], tk: usize, rows_per_mask_block: usize, mask_rows: usize, scale: f32, cap: Option<f32>, first_row: usize) {
        for (i, row) in scores.chunks_exact_mut(tk).enumerate() {
            let r = first_row + i;
            // Rows are [batch, head, query]; the mask is [batch | 1, 1, query, key].
            let q = r % mask_rows;
            let b = r / rows_per_mask_block;
            let m = &mask[(b * mask_rows + q) * tk..(b * mask_rows + q + 1) * tk];
            softmax_row(row, m, scale, cap);
        }
    }
}

multiversion! {
    fn gated_rows(gu: &[f32], out: &mut [f32], f: usize, act: GatedAct) {
        for (src, dst) in gu.chunks_exact(2 * f).zip(out.chunks_exact_mut(f)) {
            gated_row(&src[..f], &src[f..], dst, act);
        }
    }
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what}: expected f32");
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: expected a contiguous tensor"),
    }
}

struct MaskedSoftmax {
    scale: f32,
    cap: Option<f32>,
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let scores = f32_slice(s1, l1, "scores")?;
        let mask = f32_slice(s2, l2, "mask")?;
        let &[b, h, t, tk] = l1.dims() else {
            candle_core::bail!("scores must be [batch, head, query, key]");
        };
        let &[mb, 1, mt, mk] = l2.dims() else {
            candle_core::bail!("mask must be [batch | 1, 1, query, key]");
        };
        if (mb != b && mb != 1) || mt != t || mk != tk {
            candle_core::bail!("mask {:?} does not fit scores {:?}", l2.dims(), l1.dims());
        }
        let mut out = scores.to_vec();
        // Mask block per batch row: h · t score rows (or all of them when the mask is shared).
        let block = if mb == 1 { b * h * t } else { h * t };
        let rows_per_task = 64;
        out.par_chunks_mut(rows_per_task * tk)
            .enumerate()
            .for_each(|(i, chunk)| {
                softmax_rows(
                    chunk,
                    mask,
                    tk,
                    block,
                    t,
                    self.scale,
                    self.cap,
                    i * rows_per_task,
                )
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `softmax(softcap(scores · scale) + mask)` over the last axis: scores `[b, h, t, tk]` f32,
/// mask `[b | 1, 1, t, tk]` f32 (0 or −∞). Same operations, in the same order, as the unfused
/// path (see the tests).
pub fn masked_softmax(
    scores: &Tensor,
    mask: &Tensor,
    scale: f64,
    softcap: Option<f64>,
) -> Result<Tensor> {
    let op = MaskedSoftmax {
        scale: scale as f32,
        cap: softcap.map(|c| c as f32),
    };
    Ok(scores
        .contiguous()?
        .apply_op2_no_bwd(&mask.contiguous()?, &op)?)
}

/// The gated activations the fused kernel knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatedAct {
    Silu,
    GeluTanh,
}

struct Gated {
    act: GatedAct,
}

impl CustomOp1 for Gated {
    fn name(&self) -> &'static str {
        "gated-act"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let gu = f32_slice(s, l, "gate-up")?;
        let dims = l.dims();
        let two_f = *dims.last().unwrap_or(&0);
        if !two_f.is_multiple_of(2) {
            candle_core::bail!("gate-up width {two_f} is odd");
        }
        let f = two_f / 2;
        let mut out = vec![0f32; gu.len() / 2];
        let rows_per_task = 32;
        out.par_chunks_mut(rows_per_task * f)
            .zip(gu.par_chunks(rows_per_task * two_f))
            .for_each(|(o, g)| gated_rows(g, o, f, self.act));
        let mut shape = dims.to_vec();
        *shape.last_mut().unwrap() = f;
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

/// `act(gate) · up` from the fused projection `[.., 2·d_mlp]` (gate first, then up).
pub fn gated_act(gate_up: &Tensor, act: GatedAct) -> Result<Tensor> {
    Ok(gate_up.contiguous()?.apply_op1_no_bwd(&Gated { act })?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn exp_is_accurate_and_handles_the_extremes() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
            x += 0.01731;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-1000.0), 0.0);
        assert!(exp(1000.0).is_finite());
        let mut x = -12.0f32;
        while x < 12.0 {
            let want = (x as f64).tanh();
            let err = (tanh(x) as f64 - want).abs();
            assert!(err <= 2e-7 * want.abs().max(1e-3), "tanh({x}) off by {err}");
            x += 0.00937;
        }
        assert_eq!(tanh(50.0), 1.0);
        assert_eq!(tanh(-50.0), -1.0);
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn fused_softmax_matches_candle() -> Result<()> {
        let dev = Device::Cpu;
        let (b, h, t) = (3, 4, 37);
        let scores = Tensor::randn(0f32, 3.0, (b, h, t, t), &dev)?;
        // Per-row mask with left padding (row r has r pads) and a shared causal one.
        let mut m = vec![0f32; b * t * t];
        for r in 0..b {
            for i in 0..t {
                for j in 0..t {
                    if j > i || (j < r && i != j) {
                        m[(r * t + i) * t + j] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        let mask = Tensor::from_vec(m, (b, 1, t, t), &dev)?;
        let shared = mask.narrow(0, 0, 1)?;
        for (mask, cap) in [(&mask, None), (&shared, Some(5.0)), (&mask, Some(2.5))] {
            let mut want = (&scores * 0.125)?;
            if let Some(c) = cap {
                want = ((want / c)?.tanh()? * c)?;
            }
            let want = candle_nn::ops::softmax_last_dim(&want.broadcast_add(mask)?)?;
            let got = masked_softmax(&scores, mask, 0.125, cap)?;
            assert!(max_diff(&got, &want) < 1e-6, "cap {cap:?}");
            // Masked keys get exactly zero.
            let row = got.get(0)?.get(0)?.get(3)?.to_vec1::<f32>()?;
            assert!(row[4..].iter().all(|&p| p == 0.0));
        }
        Ok(())
    }

    #[test]
    fn fused_gated_activation_matches_candle() -> Result<()> {
        let dev = Device::Cpu;
        let f = 45;
        let gu = Tensor::randn(0f32, 2.0, (2, 7, 2 * f), &dev)?;
        let gate = gu.narrow(2, 0, f)?;
        let up = gu.narrow(2, f, f)?;
        let want = (candle_nn::ops::silu(&gate)? * &up)?;
        assert!(max_diff(&gated_act(&gu, GatedAct::Silu)?, &want) < 1e-5);
        let want = (gate.gelu()? * &up)?;
        assert!(max_diff(&gated_act(&gu, GatedAct::GeluTanh)?, &want) < 1e-5);
        assert_eq!(gated_act(&gu, GatedAct::Silu)?.dims(), &[2, 7, f]);
        let bad = Tensor::zeros((2, 3), DType::F64, &dev)?;
        assert!(gated_act(&bad, GatedAct::Silu).is_err());
        Ok(())
    }
}
