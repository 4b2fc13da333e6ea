//! AVX2 + FMA (+ F16C) kernels of the mapped 16-bit weights: dot products of up to 4 f32
//! activation rows with blocks of weight rows, widening 8 weights at a time (bf16: zero-extend
//! to 32 bits and shift left by 16, as bf16 is the top half of an f32; f16: `vcvtph2ps`), and
//! the plain widening of a row.

use std::arch::x86_64::*;

/// 8 weights at `p` (16 bytes, unaligned) as f32.
///
/// # Safety
/// `p` must be readable for 16 bytes; the CPU must have AVX2 and F16C.
#[inline(always)]
unsafe fn load8(p: *const u8, f16: bool) -> __m256 {
    let raw = _mm_loadu_si128(p as *const __m128i);
    if f16 {
        _mm256_cvtph_ps(raw)
    } else {
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16))
    }
}

#[inline(always)]
fn scalar(b: &[u8], q: usize, f16: bool) -> f32 {
    let bits = u16::from_le_bytes([b[2 * q], b[2 * q + 1]]);
    if f16 {
        half::f16::from_bits(bits).to_f32()
    } else {
        f32::from_bits((bits as u32) << 16)
    }
}

/// The sum of an f32 vector's 8 lanes.
///
/// # Safety
/// The CPU must have AVX.
#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// `out[i · ldo + j] = x_i · w_j` for `M` rows of `x` (stride `k`) and `N` weight rows.
///
/// # Safety
/// `x` holds `M · k` floats, every `w[j]` `2k` bytes, `out` `(M - 1) · ldo + N` floats; the CPU
/// has AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block<const M: usize, const N: usize>(
    x: &[f32],
    k: usize,
    w: [&[u8]; N],
    out: &mut [f32],
    ldo: usize,
    f16: bool,
) {
    let k8 = k / 8 * 8;
    let xp = x.as_ptr();
    let mut acc = [[_mm256_setzero_ps(); N]; M];
    let mut p = 0;
    while p < k8 {
        let mut xv = [_mm256_setzero_ps(); M];
        for (i, v) in xv.iter_mut().enumerate() {
            // SAFETY (of this and the loads below): p + 8 ≤ k, row i < M of x, 2(p + 8) ≤ 2k
            // bytes of each weight row.
            *v = _mm256_loadu_ps(xp.add(i * k + p));
        }
        for j in 0..N {
            let wv = load8(w[j].as_ptr().add(2 * p), f16);
            for i in 0..M {
                acc[i][j] = _mm256_fmadd_ps(xv[i], wv, acc[i][j]);
            }
        }
        p += 8;
    }
    for i in 0..M {
        for j in 0..N {
            let mut s = hsum(acc[i][j]);
            for q in k8..k {
                s += x[i * k + q] * scalar(w[j], q, f16);
            }
            out[i * ldo + j] = s;
        }
    }
}

/// Weight rows per block for `M` activation rows (8 accumulators at most).
const fn cols_for(m: usize) -> usize {
    if m <= 2 {
        4
    } else {
        2
    }
}

/// Every row of `x` (`[m, k]`) against every weight row: `out[i · rows.len() + j]`.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `x` holds `m · k` floats, each row `2k` bytes, `out`
/// `m · rows.len()` floats (the caller asserts the lengths).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_rows(
    x: &[f32],
    m: usize,
    k: usize,
    rows: &[&[u8]],
    out: &mut [f32],
    f16: bool,
) {
    let nr = rows.len();
    let mut i = 0;
    while i < m {
        let mg = (m - i).min(4);
        let xs = &x[i * k..(i + mg) * k];
        let o = &mut out[i * nr..];
        let step = match mg {
            1 | 2 => cols_for(1),
            _ => cols_for(3),
        };
        let mut j = 0;
        while j < nr {
            let oj = &mut o[j..];
            if nr - j >= step {
                macro_rules! go {
                    ($m:literal, $n:literal) => {{
                        let w: [&[u8]; $n] = std::array::from_fn(|q| rows[j + q]);
                        block::<$m, $n>(xs, k, w, oj, nr, f16)
                    }};
                }
                match mg {
                    1 => go!(1, 4),
                    2 => go!(2, 4),
                    3 => go!(3, 2),
                    _ => go!(4, 2),
                }
                j += step;
            } else {
                macro_rules! one {
                    ($m:literal) => {
                        block::<$m, 1>(xs, k, [rows[j]], oj, nr, f16)
                    };
                }
                match mg {
                    1 => one!(1),
                    2 => one!(2),
                    3 => one!(3),
                    _ => one!(4),
                }
                j += 1;
            }
        }
        i += mg;
    }
}

/// `out[q] = src[q]` widened to f32 (`src` holds `2 · out.len()` bytes).
///
/// # Safety
/// The CPU has AVX2 and F16C; `src.len() == 2 · out.len()` (asserted by the caller).
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn widen(src: &[u8], out: &mut [f32], f16: bool) {
    let n = out.len();
    let n8 = n / 8 * 8;
    let mut q = 0;
    while q < n8 {
        // SAFETY: q + 8 ≤ n, so 2(q + 8) ≤ src.len() and out has 8 floats from q.
        _mm256_storeu_ps(out.as_mut_ptr().add(q), load8(src.as_ptr().add(2 * q), f16));
        q += 8;
    }
    for (q, o) in out.iter_mut().enumerate().skip(n8) {
        *o = scalar(src, q, f16);
    }
}
