//! AVX2 + FMA micro-kernels over the packed panels (16 ymm registers, 8 f32 lanes each), for
//! x86-64 CPUs without AVX-512 (Zen 2/3, Intel client cores before or without AVX-512).
//!
//! A 64-column panel is processed in sub-blocks of `8 · V` columns against `M` rows, the
//! `M × V` accumulators held in registers across a chunk of the input steps:
//!
//! - f32: `M × V` FMAs per step against `V` loads of the panel and `M` broadcasts of `x`;
//! - bf16: each panel word (a pair of bf16 input features, `(2p, 2p + 1)`) is widened to two f32
//!   vectors with a shift and a mask (bf16 is the top half of an f32), then FMA'd against the
//!   two activations of the pair, which the caller has rounded to bf16 and stored as f32 (two
//!   per pair step), so the products are those of the portable kernel up to summation order.
//!
//! The caller passes pointers and strides: the functions here are `unsafe`, and the safe
//! dispatch in [`super`] checks the CPU's features and the bounds.

use super::{Format, Pick, SubBlock, NR};
use std::arch::x86_64::*;

/// The panel row this many steps ahead is prefetched into L1 (one line per step, the
/// sub-block's 16 columns): single-threaded, by CPU time, over the SmolLM2 and 1B shapes at
/// 128 and 1024 rows, the geometric mean went 63 → 68 GFLOP/s (f32) and 64 → 68 (bf16), at the
/// edge of the shared host's noise; 16 steps ahead and whole-k chunks were in between.
const PREFETCH: usize = 8;

/// Store (`add == false`) or add to (`add == true`) `c`, row stride `ldc`, an `M × 8V` block
/// of accumulators, only the first `cols` columns.
///
/// # Safety
/// AVX is available; `c` has `M` rows (stride `ldc`) of `min(cols, 8V)` valid floats.
#[inline(always)]
unsafe fn store<const M: usize, const V: usize>(
    acc: &[[__m256; V]; M],
    c: *mut f32,
    ldc: usize,
    cols: usize,
    add: bool,
) {
    for (i, acc) in acc.iter().enumerate() {
        let row = c.add(i * ldc);
        for (v, &a) in acc.iter().enumerate() {
            let left = cols.saturating_sub(v * 8);
            let p = row.add(v * 8);
            if left >= 8 {
                let a = if add {
                    _mm256_add_ps(a, _mm256_loadu_ps(p))
                } else {
                    a
                };
                _mm256_storeu_ps(p, a);
            } else if left > 0 {
                let mut buf = [0f32; 8];
                _mm256_storeu_ps(buf.as_mut_ptr(), a);
                for (j, &b) in buf.iter().enumerate().take(left) {
                    *p.add(j) = if add { *p.add(j) + b } else { b };
                }
            }
        }
    }
}

/// `C[M × 8V] (+)= A[M × kc] · B[kc × 8V]`, f32: `a` row `i` at `a + i · lda`, `b` the panel's
/// rows `NR` floats apart (already offset to the first step and column of the sub-block).
///
/// # Safety
/// The CPU has AVX2 and FMA; `a` has `M` rows (stride `lda`) of `kc` readable floats; `b` has
/// `kc` rows (stride `NR`) of `8V` readable floats; `c` as in [`store`].
#[target_feature(enable = "avx2,fma")]
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
    let mut acc = [[_mm256_setzero_ps(); V]; M];
    for q in 0..kc {
        let bq = b.add(q * NR);
        // (A prefetch never faults: past the panel's end it is only wasted.)
        _mm_prefetch::<_MM_HINT_T0>(bq.wrapping_add(PREFETCH * NR) as *const i8);
        let mut bv = [_mm256_setzero_ps(); V];
        for (v, bv) in bv.iter_mut().enumerate() {
            *bv = _mm256_loadu_ps(bq.add(8 * v));
        }
        for (i, acc) in acc.iter_mut().enumerate() {
            let x = _mm256_broadcast_ss(&*a.add(i * lda + q));
            for (acc, &bv) in acc.iter_mut().zip(&bv) {
                *acc = _mm256_fmadd_ps(x, bv, *acc);
            }
        }
    }
    store(&acc, c, ldc, cols, add);
}

/// `C[M × 8V] (+)= A · B` over `kc` bf16 pair steps: `a` row `i` at `a + i · lda` holds the
/// bf16-rounded activations as f32, `2 · kc` of them (features `2q`, `2q + 1` for step `q`);
/// `b` the panel's pair words, rows `NR` words apart, offset as in [`f32_block`].
///
/// # Safety
/// The CPU has AVX2 and FMA; `a` has `M` rows (stride `lda`) of `2 · kc` readable floats; `b`
/// has `kc` rows (stride `NR`) of `8V` readable words; `c` as in [`store`].
#[target_feature(enable = "avx2,fma")]
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
    let mut acc = [[_mm256_setzero_ps(); V]; M];
    let hi_mask = _mm256_set1_epi32(0xffff_0000u32 as i32);
    for q in 0..kc {
        let bq = b.add(q * NR) as *const __m256i;
        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add((q + PREFETCH) * NR) as *const i8);
        let mut lo = [_mm256_setzero_ps(); V];
        let mut hi = [_mm256_setzero_ps(); V];
        for v in 0..V {
            let w = _mm256_loadu_si256(bq.add(v));
            // Feature 2q is the low half of the word, 2q + 1 the high half.
            lo[v] = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w));
            hi[v] = _mm256_castsi256_ps(_mm256_and_si256(w, hi_mask));
        }
        for (i, acc) in acc.iter_mut().enumerate() {
            let x = a.add(i * lda + 2 * q);
            let (xl, xh) = (_mm256_broadcast_ss(&*x), _mm256_broadcast_ss(&*x.add(1)));
            for v in 0..V {
                acc[v] = _mm256_fmadd_ps(xl, lo[v], acc[v]);
                acc[v] = _mm256_fmadd_ps(xh, hi[v], acc[v]);
            }
        }
    }
    store(&acc, c, ldc, cols, add);
}

/// The kernel for the `left` rows still to run: f32 6 × 16 (12 of the 16 ymm registers hold
/// accumulators), bf16 4 × 16 (each pair word widens to two vectors); the last rows and
/// generation's single rows use wider sub-blocks, up to the whole panel for one row.
pub(super) fn pick(format: Format, left: usize) -> Pick {
    let p = |kernel: SubBlock, rows: usize, v: usize| Pick {
        kernel,
        rows,
        cols: 8 * v,
    };
    match (format, left) {
        (Format::F32, 6..) => p(f32_block::<6, 2>, 6, 2),
        (Format::F32, 5) => p(f32_block::<5, 2>, 5, 2),
        (Format::F32, 4) => p(f32_block::<4, 2>, 4, 2),
        (Format::F32, 3) => p(f32_block::<3, 2>, 3, 2),
        (Format::F32, 2) => p(f32_block::<2, 4>, 2, 4),
        (Format::F32, _) => p(f32_block::<1, 8>, 1, 8),
        (Format::Bf16, 4..) => p(bf16_block::<4, 2>, 4, 2),
        (Format::Bf16, 3) => p(bf16_block::<3, 2>, 3, 2),
        (Format::Bf16, 2) => p(bf16_block::<2, 4>, 2, 4),
        (Format::Bf16, _) => p(bf16_block::<1, 8>, 1, 8),
    }
}
