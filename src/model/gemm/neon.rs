//! NEON micro-kernels over the packed panels, for aarch64 (Apple M-series, Graviton, Ampere,
//! Neoverse): 32 128-bit registers, 4 f32 lanes each. The same data and the same arithmetic as
//! the AVX2 kernels ([`super::avx2`]) at half the vector width:
//!
//! - f32: a sub-block of `4 · V` panel columns against `M` rows, `M × V` accumulators in
//!   registers, one FMA (`vfmaq_f32`) per accumulator per input step;
//! - bf16: each panel word (the bf16 pair of input features `2q`, `2q + 1`) widened to two f32
//!   vectors by a shift and a mask, FMA'd against the two activations of the pair (rounded to
//!   bf16 and stored as f32 by the caller), so the products are exactly the portable kernel's,
//!   up to summation order.
//!
//! NEON is part of the aarch64 baseline: no run-time detection is needed. [`pick`] gives the
//! packed matmul's row-block driver (`gemm::simd::run_task`, shared with AVX2) the kernel for the
//! rows left. Tested under
//! qemu-user by `scripts/test-neon.sh` (a harness crate in `scripts/neon/` includes this file).

use super::{Format, Pick, SubBlock, NR};
use std::arch::aarch64::*;

/// Store (`add == false`) or add to (`add == true`) `c`, row stride `ldc`, an `M × 4V` block
/// of accumulators, only the first `cols` columns.
///
/// # Safety
/// `c` has `M` rows (stride `ldc`) of `min(cols, 4V)` writable floats.
#[inline(always)]
unsafe fn store<const M: usize, const V: usize>(
    acc: &[[float32x4_t; V]; M],
    c: *mut f32,
    ldc: usize,
    cols: usize,
    add: bool,
) {
    for (i, acc) in acc.iter().enumerate() {
        let row = c.add(i * ldc);
        for (v, &a) in acc.iter().enumerate() {
            let left = cols.saturating_sub(v * 4);
            let p = row.add(v * 4);
            if left >= 4 {
                let a = if add { vaddq_f32(a, vld1q_f32(p)) } else { a };
                vst1q_f32(p, a);
            } else if left > 0 {
                let mut buf = [0f32; 4];
                vst1q_f32(buf.as_mut_ptr(), a);
                for (j, &b) in buf.iter().enumerate().take(left) {
                    *p.add(j) = if add { *p.add(j) + b } else { b };
                }
            }
        }
    }
}

/// `C[M × 4V] (+)= A[M × kc] · B[kc × 4V]`, f32: `a` row `i` at `a + i · lda`, `b` the panel's
/// rows `NR` floats apart (already offset to the first step and column of the sub-block).
///
/// # Safety
/// `a` has `M` rows (stride `lda`) of `kc` readable floats; `b` has `kc` rows (stride `NR`) of
/// `4V` readable floats; `c` as in [`store`].
#[allow(clippy::too_many_arguments)]
unsafe fn f32_block<const M: usize, const V: usize>(
    a: *const f32,
    lda: usize,
    kc: usize,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    add: bool,
) {
    // (The panel's words are f32 bits.)
    let b = b as *const f32;
    let mut acc = [[vdupq_n_f32(0.0); V]; M];
    for q in 0..kc {
        let bq = b.add(q * NR);
        let mut bv = [vdupq_n_f32(0.0); V];
        for (v, bv) in bv.iter_mut().enumerate() {
            *bv = vld1q_f32(bq.add(4 * v));
        }
        for (i, acc) in acc.iter_mut().enumerate() {
            let x = vdupq_n_f32(*a.add(i * lda + q));
            for (acc, &bv) in acc.iter_mut().zip(&bv) {
                *acc = vfmaq_f32(*acc, x, bv);
            }
        }
    }
    store(&acc, c, ldc, cols, add);
}

/// `C[M × 4V] (+)= A · B` over `kc` bf16 pair steps: `a` row `i` at `a + i · lda` holds the
/// bf16-rounded activations as f32, `2 · kc` of them; `b` the panel's pair words, rows `NR`
/// words apart, offset as in [`f32_block`].
///
/// # Safety
/// `a` has `M` rows (stride `lda`) of `2 · kc` readable floats; `b` has `kc` rows (stride `NR`)
/// of `4V` readable words; `c` as in [`store`].
#[allow(clippy::too_many_arguments)]
unsafe fn bf16_block<const M: usize, const V: usize>(
    a: *const f32,
    lda: usize,
    kc: usize,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    add: bool,
) {
    let mut acc = [[vdupq_n_f32(0.0); V]; M];
    let hi_mask = vdupq_n_u32(0xffff_0000);
    for q in 0..kc {
        let bq = b.add(q * NR);
        let mut lo = [vdupq_n_f32(0.0); V];
        let mut hi = [vdupq_n_f32(0.0); V];
        for v in 0..V {
            let w = vld1q_u32(bq.add(4 * v));
            // Feature 2q is the low half of the word, 2q + 1 the high half.
            lo[v] = vreinterpretq_f32_u32(vshlq_n_u32::<16>(w));
            hi[v] = vreinterpretq_f32_u32(vandq_u32(w, hi_mask));
        }
        for (i, acc) in acc.iter_mut().enumerate() {
            let x = a.add(i * lda + 2 * q);
            let (xl, xh) = (vdupq_n_f32(*x), vdupq_n_f32(*x.add(1)));
            for v in 0..V {
                acc[v] = vfmaq_f32(acc[v], xl, lo[v]);
                acc[v] = vfmaq_f32(acc[v], xh, hi[v]);
            }
        }
    }
    store(&acc, c, ldc, cols, add);
}

/// The kernel for the `left` rows still to run: f32 6 × 16 (24 of the 32 registers hold
/// accumulators), bf16 4 × 16; the last rows and generation's single rows use wider
/// sub-blocks.
pub(super) fn pick(format: Format, left: usize) -> Pick {
    let p = |kernel: SubBlock, rows: usize, v: usize| Pick {
        kernel,
        rows,
        cols: 4 * v,
    };
    match (format, left) {
        (Format::F32, 6..) => p(f32_block::<6, 4>, 6, 4),
        (Format::F32, 5) => p(f32_block::<5, 4>, 5, 4),
        (Format::F32, 4) => p(f32_block::<4, 4>, 4, 4),
        (Format::F32, 3) => p(f32_block::<3, 4>, 3, 4),
        (Format::F32, 2) => p(f32_block::<2, 8>, 2, 8),
        (Format::F32, _) => p(f32_block::<1, 8>, 1, 8),
        (Format::Bf16, 4..) => p(bf16_block::<4, 4>, 4, 4),
        (Format::Bf16, 3) => p(bf16_block::<3, 4>, 3, 4),
        (Format::Bf16, 2) => p(bf16_block::<2, 4>, 2, 4),
        (Format::Bf16, _) => p(bf16_block::<1, 8>, 1, 8),
    }
}
