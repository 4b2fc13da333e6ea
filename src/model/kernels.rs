//! Fused CPU kernels for the attention and the elementwise-heavy steps of the forward pass,
//! used for f32 on the CPU when no hook edits the intermediate tensors:
//!
//! - [`attention`]: `softmax(softcap(q·kᵀ · scale) + mask) · v` in one pass per head, 8 query
//!   rows at a time, keys outside the unmasked range skipped (AVX-512 kernels for the two
//!   products, a portable fallback);
//! - [`masked_softmax`]: `softmax(softcap(scores · scale) + mask)` in one pass over the scores
//!   (candle does scale, mask add and softmax as three passes with libm `expf`), for when the
//!   pattern is edited;
//! - [`gated_act`]: `act(gate) · up` straight from the fused gate-up projection output;
//! - [`heads_first`]: q/k/v views of the QKV output to `[b, h, t, dh]`, rope applied on the way.
//!
//! They use a branch-free `exp` (Cephes polynomial, ≈1 ulp) written so that LLVM vectorises it;
//! the loops are compiled twice, for AVX-512 and AVX2 + FMA, and picked at run time.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::gemm::SendPtr;
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
    let shifted = xc * LOG2E + ROUND;
    let n = shifted - ROUND;
    // `n` as an integer, read off the mantissa of `shifted` (`ROUND + n` has the same exponent
    // as `ROUND`): integer lanes vectorise, a saturating `n as i32` does not.
    let ni = shifted.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let r = xc - n * C1 - n * C2;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let p = p * r * r + r + 1.0;
    let scale = f32::from_bits(((ni + 127) as u32) << 23);
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
fn gated_row(gate: &[f32], up: &[f32], out: &mut [MaybeUninit<f32>], act: GatedAct) {
    match act {
        GatedAct::Silu => {
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                o.write(g / (1.0 + exp(-g)) * u);
            }
        }
        GatedAct::GeluTanh => {
            const K: f32 = 0.797_884_6; // sqrt(2/π)
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                o.write(0.5 * g * (1.0 + tanh(K * g * (1.0 + 0.044_715 * g * g))) * u);
            }
        }
    }
}

/// Tests: every multiversioned kernel runs its baseline variant (to compare the variants).
#[cfg(test)]
static FORCE_BASELINE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

macro_rules! multiversion {
    ($(#[$m:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn generic($($arg: $ty),*) $body
            #[cfg(test)]
            if FORCE_BASELINE.load(std::sync::atomic::Ordering::Relaxed) {
                return generic($($arg),*);
            }
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                /// # Safety
                /// The CPU must have AVX-512F/VL, AVX2 and FMA (checked below).
                unsafe fn avx512($($arg: $ty),*) { generic($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                /// # Safety
                /// The CPU must have AVX2 and FMA (checked below).
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
    fn gated_rows(gu: &[f32], out: &mut [MaybeUninit<f32>], f: usize, act: GatedAct) {
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
        let len = gu.len() / 2;
        let mut out: Vec<f32> = Vec::with_capacity(len);
        let rows_per_task = 32;
        out.spare_capacity_mut()[..len]
            .par_chunks_mut(rows_per_task * f)
            .zip(gu.par_chunks(rows_per_task * two_f))
            .for_each(|(o, g)| gated_rows(g, o, f, self.act));
        // SAFETY: every row of `out` was written (`gu` holds `len / f` rows of `2f`).
        unsafe { out.set_len(len) };
        let mut shape = dims.to_vec();
        *shape.last_mut().unwrap() = f;
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

/// `act(gate) · up` from the fused projection `[.., 2·d_mlp]` (gate first, then up).
pub fn gated_act(gate_up: &Tensor, act: GatedAct) -> Result<Tensor> {
    Ok(gate_up.contiguous()?.apply_op1_no_bwd(&Gated { act })?)
}

/// Per-query key range `[lo, hi)` outside which a mask row is −∞ (those keys get exactly zero
/// probability, so the fused attention neither scores nor sums them).
fn key_ranges(mask: &[f32], tk: usize) -> Vec<(usize, usize)> {
    mask.chunks_exact(tk.max(1))
        .map(|row| {
            let lo = row.iter().position(|m| m.is_finite()).unwrap_or(0);
            let hi = row
                .iter()
                .rposition(|m| m.is_finite())
                .map_or(lo, |i| i + 1);
            (lo, hi)
        })
        .collect()
}

/// Query rows per attention block.
const QB: usize = 8;

multiversion! {
    /// Scores of a block of [`QB`] query rows `qb` (`QB × dh`) against the keys `[c0, c1)`
    /// (multiples of 16): `s[r · tkp + j] = qb[r] · kᵀ[:, j]`, `kt` being `Kᵀ`, `dh × tkp`.
    fn scores_generic(qb: &[f32], kt: &[f32], dh: usize, tkp: usize, c0: usize, c1: usize, s: &mut [f32]) {
        for (r, q) in qb.chunks_exact(dh).enumerate() {
            let row = &mut s[r * tkp + c0..r * tkp + c1];
            row.fill(0.0);
            for (d, &a) in q.iter().enumerate() {
                for (x, &k) in row.iter_mut().zip(&kt[d * tkp + c0..d * tkp + c1]) {
                    *x = a.mul_add(k, *x);
                }
            }
        }
    }
}

multiversion! {
    /// `z[r] = Σ_j p[r, j] · v[j]` over the keys `[c0, c1)` for `rows` rows of probabilities
    /// `p` (stride `tkp`); `z` rows at stride `zs`.
    fn values_generic(p: &[f32], tkp: usize, v: &[f32], dh: usize, c0: usize, c1: usize, z: &mut [f32], zs: usize, rows: usize) {
        for r in 0..rows {
            let out = &mut z[r * zs..r * zs + dh];
            out.fill(0.0);
            for j in c0..c1 {
                let a = p[r * tkp + j];
                for (x, &b) in out.iter_mut().zip(&v[j * dh..(j + 1) * dh]) {
                    *x = a.mul_add(b, *x);
                }
            }
        }
    }
}

multiversion! {
    /// Softmax of the block's rows over their (16-aligned) key ranges; zeros elsewhere in
    /// `[c0, c1)`, where the values product reads.
    fn softmax_block(s: &mut [f32], tkp: usize, mask: &[f32], ranges: &[(usize, usize)], c0: usize, c1: usize, scale: f32, cap: Option<f32>) {
        for (r, &(lo, hi)) in ranges.iter().enumerate() {
            let row = &mut s[r * tkp..(r + 1) * tkp];
            let m = &mask[r * tkp..(r + 1) * tkp];
            row[c0..lo].fill(0.0);
            row[hi..c1].fill(0.0);
            softmax_row(&mut row[lo..hi], &m[lo..hi], scale, cap);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod attn_avx512 {
    use super::{LANES, QB};
    use std::arch::x86_64::*;

    /// As `scores_generic`: 8 rows × 16 keys of scores in registers.
    /// # Safety
    /// AVX-512F; the slice lengths and column range as the debug assertions say.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn scores(
        qb: &[f32],
        kt: &[f32],
        dh: usize,
        tkp: usize,
        c0: usize,
        c1: usize,
        s: &mut [f32],
    ) {
        debug_assert!(qb.len() >= QB * dh && kt.len() >= dh * tkp && s.len() >= QB * tkp);
        debug_assert!(c1 <= tkp && c0.is_multiple_of(LANES) && c1.is_multiple_of(LANES));
        let (q, k, out) = (qb.as_ptr(), kt.as_ptr(), s.as_mut_ptr());
        let mut j0 = c0;
        while j0 < c1 {
            let mut acc = [_mm512_setzero_ps(); QB];
            for d in 0..dh {
                let kv = _mm512_loadu_ps(k.add(d * tkp + j0));
                for (r, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm512_fmadd_ps(_mm512_set1_ps(*q.add(r * dh + d)), kv, *acc);
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                _mm512_storeu_ps(out.add(r * tkp + j0), *acc);
            }
            j0 += LANES;
        }
    }

    /// As `values_generic`: 4 rows × 64 lanes of `z` in registers, head sizes of any width
    /// (masked loads and stores for the last lanes).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    /// # Safety
    /// AVX-512F; the slice lengths and column range as the debug assertions say.
    pub(super) unsafe fn values(
        p: &[f32],
        tkp: usize,
        v: &[f32],
        dh: usize,
        c0: usize,
        c1: usize,
        z: &mut [f32],
        zs: usize,
        rows: usize,
    ) {
        const R: usize = 4;
        debug_assert!(p.len() >= QB * tkp && v.len() >= c1 * dh && rows <= QB);
        debug_assert!(rows == 0 || z.len() >= (rows - 1) * zs + dh);
        let (pp, vp, zp) = (p.as_ptr(), v.as_ptr(), z.as_mut_ptr());
        for r0 in (0..rows).step_by(R) {
            let nr = R.min(rows - r0);
            for d0 in (0..dh).step_by(4 * LANES) {
                let mut masks = [0 as __mmask16; 4];
                for (i, m) in masks.iter_mut().enumerate() {
                    let left = dh.saturating_sub(d0 + i * LANES).min(LANES);
                    *m = ((1u32 << left) - 1) as __mmask16;
                }
                let mut acc = [[_mm512_setzero_ps(); 4]; R];
                for j in c0..c1 {
                    let row = vp.add(j * dh + d0);
                    let vv = [
                        _mm512_maskz_loadu_ps(masks[0], row),
                        _mm512_maskz_loadu_ps(masks[1], row.add(LANES)),
                        _mm512_maskz_loadu_ps(masks[2], row.add(2 * LANES)),
                        _mm512_maskz_loadu_ps(masks[3], row.add(3 * LANES)),
                    ];
                    for (r, acc) in acc.iter_mut().enumerate() {
                        // Rows past `rows` read the block's scratch and are never stored.
                        let a = _mm512_set1_ps(*pp.add((r0 + r) * tkp + j));
                        for (x, b) in acc.iter_mut().zip(vv) {
                            *x = _mm512_fmadd_ps(a, b, *x);
                        }
                    }
                }
                for (r, acc) in acc.iter().enumerate().take(nr) {
                    let out = zp.add((r0 + r) * zs + d0);
                    for (i, x) in acc.iter().enumerate() {
                        _mm512_mask_storeu_ps(out.add(i * LANES), masks[i], *x);
                    }
                }
            }
        }
    }
}

/// Fused attention over `[b, nh, t, dh]` queries and `[b, nk, tk, dh]` keys/values; writes
/// `z` as `[b, t, nh, dh]` and, when asked, the pattern `[b, nh, t, tk]` after it.
struct Attention<'a> {
    /// `[mask_rows · t, tkp]`: the mask, padded with −∞ to a multiple of 16 keys.
    mask: &'a [f32],
    mask_rows: usize,
    scale: f32,
    cap: Option<f32>,
    pattern: bool,
    /// Run the AVX-512 kernels (the CPU has them), or the portable ones.
    native: bool,
}

impl CustomOp3 for Attention<'_> {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (q, k, v) = (
            f32_slice(sq, lq, "queries")?,
            f32_slice(sk, lk, "keys")?,
            f32_slice(sv, lv, "values")?,
        );
        let &[b, nh, t, dh] = lq.dims() else {
            candle_core::bail!("queries must be [batch, head, query, d_head]");
        };
        let &[kb, nk, tk, kdh] = lk.dims() else {
            candle_core::bail!("keys must be [batch, kv_head, key, d_head]");
        };
        if kb != b || kdh != dh || nk == 0 || nh % nk != 0 || lv.dims() != lk.dims() {
            candle_core::bail!(
                "attention: queries {:?}, keys {:?}, values {:?} do not fit",
                lq.dims(),
                lk.dims(),
                lv.dims()
            );
        }
        let tkp = tk.div_ceil(LANES) * LANES;
        let mb = self.mask_rows;
        if (mb != 1 && mb != b) || self.mask.len() != mb * t * tkp {
            candle_core::bail!("attention: mask does not fit [{b}, 1, {t}, {tk}]");
        }
        // Key ranges widened to whole 16-key chunks (the padded mask is −∞ there too).
        let ranges: Vec<(usize, usize)> = key_ranges(self.mask, tkp)
            .into_iter()
            .map(|(lo, hi)| (lo - lo % LANES, hi.div_ceil(LANES) * LANES))
            .collect();
        // (AVX-512 is x86-only: elsewhere `native` is always false and unused.)
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
        let native = self.native;
        let g = nh / nk;
        let z_len = b * t * nh * dh;
        let p_len = if self.pattern { b * nh * t * tk } else { 0 };
        let mut out = vec![0f32; z_len + p_len];
        let (z, pattern) = out.split_at_mut(z_len);
        let zp = SendPtr(z.as_mut_ptr());
        let task = |bh: usize, mut pat: Option<&mut [f32]>| {
            let (bi, h) = (bh / nh, bh % nh);
            let kv = (bi * nk + h / g) * tk * dh;
            let (kh, vh) = (&k[kv..kv + tk * dh], &v[kv..kv + tk * dh]);
            let qh = &q[bh * t * dh..(bh + 1) * t * dh];
            let mrow = if mb == 1 { 0 } else { bi * t };
            let mut kt = vec![0f32; dh * tkp];
            for (j, row) in kh.chunks_exact(dh).enumerate() {
                for (d, &x) in row.iter().enumerate() {
                    kt[d * tkp + j] = x;
                }
            }
            let mut s = vec![0f32; QB * tkp];
            let mut qb = vec![0f32; QB * dh];
            for i0 in (0..t).step_by(QB) {
                let rows = QB.min(t - i0);
                // Whole blocks read the queries in place; the last one is zero-padded.
                let qs: &[f32] = if rows == QB {
                    &qh[i0 * dh..(i0 + QB) * dh]
                } else {
                    qb[..rows * dh].copy_from_slice(&qh[i0 * dh..(i0 + rows) * dh]);
                    qb[rows * dh..].fill(0.0);
                    &qb
                };
                let rr = &ranges[mrow + i0..mrow + i0 + rows];
                let c0 = rr.iter().map(|r| r.0).min().unwrap_or(0);
                let c1 = rr.iter().map(|r| r.1).max().unwrap_or(0).max(c0);
                let m = &self.mask[(mrow + i0) * tkp..(mrow + i0 + rows) * tkp];
                // SAFETY (both blocks): task `bh` writes only the `z` rows `(bi, i, h)`,
                // disjoint from every other task's and inside the `z_len` floats `zp` points
                // to; `out` outlives the parallel loop. The kernels need AVX-512 (`native`)
                // and get slices of the sizes they check.
                let zrow = unsafe {
                    std::slice::from_raw_parts_mut(
                        zp.get().add(((bi * t + i0) * nh + h) * dh),
                        ((rows - 1) * nh + 1) * dh,
                    )
                };
                #[cfg(target_arch = "x86_64")]
                if native {
                    // SAFETY: see above.
                    unsafe { attn_avx512::scores(qs, &kt, dh, tkp, c0, c1, &mut s) };
                } else {
                    scores_generic(qs, &kt, dh, tkp, c0, c1, &mut s);
                }
                #[cfg(not(target_arch = "x86_64"))]
                scores_generic(qs, &kt, dh, tkp, c0, c1, &mut s);
                softmax_block(&mut s, tkp, m, rr, c0, c1, self.scale, self.cap);
                if let Some(p) = pat.as_deref_mut() {
                    for r in 0..rows {
                        let dst = &mut p[(i0 + r) * tk..(i0 + r + 1) * tk];
                        dst.fill(0.0);
                        let (lo, hi) = (c0.min(tk), c1.min(tk));
                        dst[lo..hi].copy_from_slice(&s[r * tkp + lo..r * tkp + hi]);
                    }
                }
                // Keys past `tk` have zero probability and no value row.
                let c1 = c1.min(tk);
                #[cfg(target_arch = "x86_64")]
                if native {
                    // SAFETY: see above.
                    unsafe { attn_avx512::values(&s, tkp, vh, dh, c0, c1, zrow, nh * dh, rows) };
                } else {
                    values_generic(&s, tkp, vh, dh, c0, c1, zrow, nh * dh, rows);
                }
                #[cfg(not(target_arch = "x86_64"))]
                values_generic(&s, tkp, vh, dh, c0, c1, zrow, nh * dh, rows);
            }
        };
        if self.pattern {
            pattern
                .par_chunks_mut(t * tk)
                .enumerate()
                .for_each(|(bh, p)| task(bh, Some(p)));
        } else {
            (0..b * nh).into_par_iter().for_each(|bh| task(bh, None));
        }
        Ok((CpuStorage::F32(out), Shape::from(z_len + p_len)))
    }
}

/// `[b, t, h, dh]` → `[b, h, t, dh]`, optionally with the rotary embedding.
struct HeadsFirst;

impl HeadsFirst {
    /// `x` any strides with a unit last one; `rope` the cos/sin slices and whether they have a
    /// batch axis.
    fn run(
        x: &CpuStorage,
        l: &Layout,
        rope: Option<(&[f32], &[f32], bool)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(v) = x else {
            candle_core::bail!("heads-first: expected f32");
        };
        let (&[b, t, h, dh], &[s0, s1, s2, 1]) = (l.dims(), l.stride()) else {
            candle_core::bail!("heads-first: expected [batch, pos, head, d_head], unit stride");
        };
        let half = dh / 2;
        if let Some((cos, sin, batched)) = rope {
            let want = if batched { b * t * half } else { t * half };
            if dh % 2 != 0 || cos.len() != want || sin.len() != want {
                candle_core::bail!("heads-first: rope tables do not fit [{b}, {t}, {h}, {dh}]");
            }
        }
        let off = l.start_offset();
        let len = b * h * t * dh;
        let mut out: Vec<f32> = Vec::with_capacity(len);
        out.spare_capacity_mut()[..len]
            .par_chunks_mut((t * dh).max(1))
            .enumerate()
            .for_each(|(bh, o)| {
                let (bi, hi) = (bh / h, bh % h);
                for (ti, o) in o.chunks_exact_mut(dh).enumerate() {
                    let src = &v[off + bi * s0 + ti * s1 + hi * s2..][..dh];
                    match rope {
                        None => {
                            for (o, &x) in o.iter_mut().zip(src) {
                                o.write(x);
                            }
                        }
                        Some((cos, sin, batched)) => {
                            let row = if batched { bi * t + ti } else { ti } * half;
                            let (cos, sin) = (&cos[row..row + half], &sin[row..row + half]);
                            let (x1, x2) = src.split_at(half);
                            let (o1, o2) = o.split_at_mut(half);
                            // As candle_nn's `rope`, operation for operation.
                            for i in 0..half {
                                o1[i].write(x1[i] * cos[i] - x2[i] * sin[i]);
                                o2[i].write(x1[i] * sin[i] + x2[i] * cos[i]);
                            }
                        }
                    }
                }
            });
        // SAFETY: the `b · h` tasks wrote all `t · dh` elements of their blocks.
        unsafe { out.set_len(len) };
        Ok((CpuStorage::F32(out), Shape::from((b, h, t, dh))))
    }
}

impl CustomOp1 for HeadsFirst {
    fn name(&self) -> &'static str {
        "heads-first"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        HeadsFirst::run(s, l, None)
    }
}

impl CustomOp3 for HeadsFirst {
    fn name(&self) -> &'static str {
        "heads-first-rope"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let cos = f32_slice(s2, l2, "rope cos")?;
        let sin = f32_slice(s3, l3, "rope sin")?;
        HeadsFirst::run(s1, l1, Some((cos, sin, l2.dims().len() == 3)))
    }
}

/// Heads in front of the positions, in one parallel pass: `x` `[b, t, h, dh]` (f32; any
/// strides with a unit last one, such as a per-head view into the fused QKV output) →
/// `[b, h, t, dh]` contiguous, with the rotary embedding (the "rotate half" convention;
/// cos/sin `[t, dh/2]` or `[b, t, dh/2]`) applied on the way when `rope` is given. Same
/// operations as `transpose(1, 2).contiguous()` followed by `candle_nn::rotary_emb::rope`
/// (see the tests), without the intermediate copy; candle's copy is single-threaded.
pub fn heads_first(x: &Tensor, rope: Option<(&Tensor, &Tensor)>) -> Result<Tensor> {
    let x = if x.stride().last() == Some(&1) {
        x.clone()
    } else {
        x.contiguous()?
    };
    Ok(match rope {
        None => x.apply_op1_no_bwd(&HeadsFirst)?,
        Some((cos, sin)) => {
            x.apply_op3_no_bwd(&cos.contiguous()?, &sin.contiguous()?, &HeadsFirst)?
        }
    })
}

/// Fused attention: `z = softmax(softcap(q·kᵀ · scale) + mask) · v` per head, 8 query rows at
/// a time, skipping keys outside each block's unmasked range. `q` `[b, nh, t, dh]`, `k`/`v`
/// `[b, nk, tk, dh]` (grouped-query heads share their kv head), mask `[b | 1, 1, t, tk]`
/// (0 or −∞), all f32. Returns `z` as `[b, t, nh, dh]`, and the pattern `[b, nh, t, tk]` when
/// `pattern` is set; masked keys get exactly zero, as in [`masked_softmax`].
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
    softcap: Option<f64>,
    pattern: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    attention_with(q, k, v, mask, scale, softcap, pattern, avx512())
}

/// Whether the CPU runs the AVX-512 attention kernels.
fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[allow(clippy::too_many_arguments)]
fn attention_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
    softcap: Option<f64>,
    pattern: bool,
    native: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let (b, nh, t, dh) = q.dims4()?;
    let tk = k.dim(2)?;
    let (mask_rows, _, mt, mk) = mask.dims4()?;
    if mt != t || mk != tk {
        crate::bail!(
            "attention: mask {:?} does not fit [{b}, 1, {t}, {tk}]",
            mask.dims()
        );
    }
    let tkp = tk.div_ceil(LANES) * LANES;
    let mut m = vec![f32::NEG_INFINITY; mask_rows * t * tkp];
    for (dst, src) in m.chunks_exact_mut(tkp).zip(
        mask.flatten_all()?
            .to_vec1::<f32>()?
            .chunks_exact(tk.max(1)),
    ) {
        dst[..tk].copy_from_slice(src);
    }
    let op = Attention {
        mask: &m,
        mask_rows,
        scale: scale as f32,
        cap: softcap.map(|c| c as f32),
        pattern,
        native,
    };
    let out = q
        .contiguous()?
        .apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op)?;
    let z_len = b * t * nh * dh;
    let z = out.narrow(0, 0, z_len)?.reshape((b, t, nh, dh))?;
    let p = if pattern {
        Some(
            out.narrow(0, z_len, b * nh * t * tk)?
                .reshape((b, nh, t, tk))?,
        )
    } else {
        None
    };
    Ok((z, p))
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

    /// The multiversioned kernels (one source compiled for AVX-512, AVX2 and the baseline)
    /// give the baseline's bits in the variant this CPU selects: softmax, gated activations and
    /// the attention kernel's portable blocks, at odd sizes. (Rust does not reassociate or
    /// contract float operations, so the variants must agree exactly.)
    #[test]
    fn every_kernel_variant_gives_the_baselines_bits() -> Result<()> {
        use std::sync::atomic::Ordering;
        let dev = Device::Cpu;
        let bits = |t: &Tensor| -> Vec<u32> {
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            v.iter().map(|x| x.to_bits()).collect()
        };
        // (t, f): odd query/key counts and widths.
        let mut inputs = vec![];
        for (t, f) in [(1, 1), (7, 17), (17, 63), (65, 65)] {
            inputs.push((
                Tensor::randn(0f32, 3.0, (1, 2, t, t), &dev)?,
                Tensor::zeros((1, 1, t, t), DType::F32, &dev)?,
                Tensor::randn(0f32, 2.0, (3, 2 * f), &dev)?,
                Tensor::randn(0f32, 1.0, (1, 2, t, f), &dev)?,
                Tensor::randn(0f32, 1.0, (1, 1, t, f), &dev)?,
            ));
        }
        let run = |baseline: bool| -> Result<Vec<Vec<u32>>> {
            FORCE_BASELINE.store(baseline, Ordering::Relaxed);
            let mut out = vec![];
            for (scores, mask, gu, q, k) in &inputs {
                out.push(bits(&masked_softmax(scores, mask, 0.3, Some(4.0))?));
                for act in [GatedAct::Silu, GatedAct::GeluTanh] {
                    out.push(bits(&gated_act(gu, act)?));
                }
                let (z, p) = attention_with(q, k, k, mask, 0.2, None, true, false)?;
                out.push(bits(&z));
                out.push(bits(&p.unwrap()));
            }
            Ok(out)
        };
        let fast = run(false);
        let slow = run(true);
        FORCE_BASELINE.store(false, Ordering::Relaxed);
        assert!(fast? == slow?, "a kernel variant differs from the baseline");
        Ok(())
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

    #[test]
    fn fused_attention_matches_candle() -> Result<()> {
        let dev = Device::Cpu;
        // (batch, heads, kv heads, queries, past keys, d_head, padded, softcap)
        for (b, nh, nk, t, past, dh, padded, cap) in [
            (2, 6, 2, 21, 0, 64, true, None),
            (1, 4, 4, 19, 5, 8, false, Some(4.0)),
            (3, 2, 1, 33, 0, 80, true, None),
            // Odd sizes on every path: 1, 7, 17, 63, 65 queries / keys / head widths.
            (1, 1, 1, 1, 0, 1, false, None),
            (1, 2, 1, 7, 0, 7, false, None),
            (2, 2, 2, 17, 0, 17, true, Some(3.0)),
            (1, 1, 1, 63, 2, 65, false, None),
            (2, 3, 1, 65, 0, 63, true, None),
            (1, 2, 2, 1, 64, 16, false, None),
        ] {
            let tk = past + t;
            let q = Tensor::randn(0f32, 1.0, (b, nh, t, dh), &dev)?;
            let k = Tensor::randn(0f32, 1.0, (b, nk, tk, dh), &dev)?;
            let v = Tensor::randn(0f32, 1.0, (b, nk, tk, dh), &dev)?;
            let rows = if padded { b } else { 1 };
            let mut m = vec![0f32; rows * t * tk];
            for r in 0..rows {
                let pad = 3 * r;
                for qi in 0..t {
                    let i = past + qi;
                    for j in 0..tk {
                        let ok = j <= i && (j >= pad || i < pad && i == j);
                        if !ok {
                            m[(r * t + qi) * tk + j] = f32::NEG_INFINITY;
                        }
                    }
                }
            }
            let mask = Tensor::from_vec(m, (rows, 1, t, tk), &dev)?;
            let g = nh / nk;
            let kk = k
                .unsqueeze(2)?
                .repeat((1, 1, g, 1, 1))?
                .reshape((b, nh, tk, dh))?;
            let vv = v
                .unsqueeze(2)?
                .repeat((1, 1, g, 1, 1))?
                .reshape((b, nh, tk, dh))?;
            let mut s = (q.matmul(&kk.t()?)? * 0.125)?;
            if let Some(c) = cap {
                s = ((s / c)?.tanh()? * c)?;
            }
            let want_p = candle_nn::ops::softmax_last_dim(&s.broadcast_add(&mask)?)?;
            let want_z = want_p.matmul(&vv)?.transpose(1, 2)?.contiguous()?;
            for kernel in [false, avx512()] {
                let (z, p) = attention_with(&q, &k, &v, &mask, 0.125, cap, true, kernel)?;
                let p = p.unwrap();
                let what = format!("d_head {dh}, AVX-512 {kernel}");
                assert!(max_diff(&p, &want_p) < 1e-5, "pattern, {what}");
                assert!(max_diff(&z, &want_z) < 1e-5, "z, {what}");
                assert_eq!(z.dims(), &[b, t, nh, dh]);
                // Masked keys get exactly zero; the pattern-free call gives the same z.
                if t > 2 {
                    let row = p.get(0)?.get(0)?.get(2)?.to_vec1::<f32>()?;
                    assert!(row[past + 3..].iter().all(|&x| x == 0.0));
                }
                let (z2, none) = attention_with(&q, &k, &v, &mask, 0.125, cap, false, kernel)?;
                assert!(none.is_none());
                assert_eq!(max_diff(&z, &z2), 0.0);
            }
        }
        let q = Tensor::zeros((1, 3, 4, 8), DType::F32, &dev)?;
        let k = Tensor::zeros((1, 2, 4, 8), DType::F32, &dev)?;
        let mask = Tensor::zeros((1, 1, 4, 4), DType::F32, &dev)?;
        assert!(attention(&q, &k, &k, &mask, 1.0, None, false).is_err());
        Ok(())
    }

    #[test]
    fn heads_first_is_transpose_then_candle_rope() -> Result<()> {
        let dev = Device::Cpu;
        let (b, t, nh, nk, dh) = (3, 7, 4, 2, 10);
        // A fused QKV output; q and k are per-head views into it.
        let qkv = Tensor::randn(0f32, 1.0, (b, t, nh + 2 * nk, dh), &dev)?;
        let views = [
            qkv.narrow(2, 0, nh)?,
            qkv.narrow(2, nh, nk)?,
            qkv.narrow(2, nh + nk, nk)?,
        ];
        let shared = (
            Tensor::randn(0f32, 1.0, (t, dh / 2), &dev)?,
            Tensor::randn(0f32, 1.0, (t, dh / 2), &dev)?,
        );
        let batched = (
            Tensor::randn(0f32, 1.0, (b, t, dh / 2), &dev)?,
            Tensor::randn(0f32, 1.0, (b, t, dh / 2), &dev)?,
        );
        for x in &views {
            let plain = x.transpose(1, 2)?.contiguous()?;
            let same = |a: &Tensor, want: &Tensor| -> Result<()> {
                assert_eq!(a.dims(), want.dims());
                let (a, w): (Vec<f32>, Vec<f32>) =
                    (a.flatten_all()?.to_vec1()?, want.flatten_all()?.to_vec1()?);
                assert!(a.iter().zip(&w).all(|(a, w)| a.to_bits() == w.to_bits()));
                Ok(())
            };
            same(&heads_first(x, None)?, &plain)?;
            same(&heads_first(&x.contiguous()?, None)?, &plain)?;
            for (cos, sin) in [&shared, &batched] {
                let want = candle_nn::rotary_emb::rope(&plain, cos, sin)?;
                same(&heads_first(x, Some((cos, sin)))?, &want)?;
            }
        }
        // Tables of the wrong length are an error, not a panic.
        let short = Tensor::zeros((t - 1, dh / 2), DType::F32, &dev)?;
        assert!(heads_first(&views[0], Some((&short, &short))).is_err());
        Ok(())
    }
}
