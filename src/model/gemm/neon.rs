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
//! NEON is part of the aarch64 baseline: no run-time detection is needed. [`task`] is the
//! bounds-checked entry the packed matmul calls per (row range × panel) task. Tested under
//! qemu-user by `scripts/test-neon.sh` (a harness crate in `scripts/neon/` includes this file).

use super::{Format, NR};
use std::arch::aarch64::*;

/// Input steps per chunk: the panel's slice stays in L2 across a task's rows (as
/// `KC_AVX2`).
const KC: usize = 256;

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
#[inline(always)]
unsafe fn f32_block<const M: usize, const V: usize>(
    a: *const f32,
    lda: usize,
    kc: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    add: bool,
) {
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
#[inline(always)]
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

/// `C[rows × cols] = A · panel` with the NEON kernels, `a` `rows × lda`: f32 activations
/// (`lda = kp`), or the bf16-rounded activations as f32 bits (`lda = 2 · kp`). Rows go 6 (f32)
/// or 4 (bf16) at a time against 16-column sub-blocks; the rows left over (and generation's
/// single rows) use wider sub-blocks.
///
/// # Safety
/// `c` has `rows` rows (stride `ldc`) of `cols ≤ NR` writable floats. (The slices' lengths are
/// checked here.)
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn task(
    a: &[u32],
    rows: usize,
    lda: usize,
    kp: usize,
    panel: &[u32],
    c: *mut f32,
    ldc: usize,
    cols: usize,
    format: Format,
) {
    let width = match format {
        Format::F32 => 1,
        Format::Bf16 => 2,
    };
    assert!(lda == width * kp && a.len() == rows * lda);
    assert!(panel.len() == kp * NR && cols <= NR);
    let ap = a.as_ptr() as *const f32;
    // Equal chunks of at most `KC` steps (none at all: one empty chunk, which stores zeros).
    let chunks = kp.div_ceil(KC).max(1);
    let kcs = kp.div_ceil(chunks);
    for k0 in (0..chunks).map(|j| j * kcs) {
        let kc = kcs.min(kp - k0);
        // The first chunk stores, the others add to it.
        let add = k0 > 0;
        let a0 = width * k0;
        let mut i = 0;
        while i < rows {
            macro_rules! run {
                ($f:ident, $b:expr, $m:literal, $v:literal) => {{
                    for c0 in (0..cols).step_by(4 * $v) {
                        // SAFETY: rows `i..i + $m` of the activations exist (`i + $m ≤ rows`),
                        // `lda` floats apart, and the kernel reads `width · kc` floats of each
                        // from `a0 = width · k0` on (`k0 + kc ≤ kp`); the panel has `kp` rows
                        // of `NR` words, of which it reads `kc` from `k0`, columns
                        // `c0..c0 + 4 · $v ≤ NR`; `c` has `rows` rows of `cols` floats (the
                        // caller's contract), of which it writes columns `c0..cols` of rows
                        // `i..i + $m`.
                        unsafe {
                            $f::<$m, $v>(
                                ap.add(i * lda + a0),
                                lda,
                                kc,
                                $b.add(k0 * NR + c0),
                                c.add(i * ldc + c0),
                                ldc,
                                cols - c0,
                                add,
                            )
                        }
                    }
                    i += $m;
                }};
            }
            let left = rows - i;
            match format {
                Format::F32 => {
                    let b = panel.as_ptr() as *const f32;
                    match left {
                        6.. => run!(f32_block, b, 6, 4),
                        5 => run!(f32_block, b, 5, 4),
                        4 => run!(f32_block, b, 4, 4),
                        3 => run!(f32_block, b, 3, 4),
                        2 => run!(f32_block, b, 2, 8),
                        _ => run!(f32_block, b, 1, 8),
                    }
                }
                Format::Bf16 => {
                    let b = panel.as_ptr();
                    match left {
                        4.. => run!(bf16_block, b, 4, 4),
                        3 => run!(bf16_block, b, 3, 4),
                        2 => run!(bf16_block, b, 2, 4),
                        _ => run!(bf16_block, b, 1, 8),
                    }
                }
            }
        }
    }
}
