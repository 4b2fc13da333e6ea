//! The two f32 vector kernels of the CMR recall step, over the padded cumulative vector
//! `C = cumsum(Mᵀt)` (one lane per state):
//!
//! * [`Ops::update_count`]: `C ← C + w·r` element-wise, fused with the next draw's inverse-CDF
//!   search, `#{j : C_j < target}` (C is nondecreasing, so this is the index of the first
//!   `C_j ≥ target`, the reference's `u·ΣF ≤ cumsum(F)` rule).
//! * [`Ops::count_below`]: the search alone (used when the context does not change).
//!
//! The AVX2 path is selected at run time (`is_x86_feature_detected!`); the portable path is
//! used everywhere else. Both round identically — a separate multiply and add, never FMA — so
//! the simulated table does not depend on the machine's instruction set (tests check the two
//! paths agree bit for bit). Vectors are padded to a multiple of [`LANES`] with `+∞` (in both
//! `C` and the rows), which is never below a target.

/// f32 lanes of one AVX2 register; vector lengths are padded to a multiple of this.
pub(crate) const LANES: usize = 8;

/// `n` rounded up to a multiple of [`LANES`].
pub(crate) fn padded_len(n: usize) -> usize {
    n.div_ceil(LANES) * LANES
}

/// The selected kernels (function pointers, chosen once per grid point).
#[derive(Clone, Copy)]
pub(crate) struct Ops {
    /// `c += w·r` (element-wise, separate multiply and add), then `#{j : c_j < target}`.
    pub update_count: fn(&mut [f32], f32, &[f32], f32) -> usize,
    /// `#{j : c_j < target}`.
    pub count_below: fn(&[f32], f32) -> usize,
    /// Whether [`Avx2x13`] may be used (AVX2 detected and vectors of 13·8 lanes).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub avx2_13: bool,
}

/// Static dispatch of the kernels, so that a caller compiled for AVX2 can inline them.
pub(crate) trait Kern: Copy {
    /// As [`Ops::update_count`].
    fn update_count(self, c: &mut [f32], w: f32, r: &[f32], target: f32) -> usize;
    /// As [`Ops::count_below`].
    fn count_below(self, c: &[f32], target: f32) -> usize;
}

impl Kern for Ops {
    #[inline(always)]
    fn update_count(self, c: &mut [f32], w: f32, r: &[f32], target: f32) -> usize {
        (self.update_count)(c, w, r, target)
    }
    #[inline(always)]
    fn count_below(self, c: &[f32], target: f32) -> usize {
        (self.count_below)(c, target)
    }
}

/// The AVX2 kernels for 104-lane vectors as a zero-sized [`Kern`]; only built (by
/// [`Avx2x13::new`]) when [`Ops::avx2_13`] says the CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) struct Avx2x13(());

#[cfg(target_arch = "x86_64")]
impl Avx2x13 {
    /// `Some` when `ops` selected AVX2 for 104-lane vectors.
    pub(crate) fn new(ops: &Ops) -> Option<Self> {
        ops.avx2_13.then_some(Self(()))
    }
}

#[cfg(target_arch = "x86_64")]
impl Kern for Avx2x13 {
    #[inline(always)]
    fn update_count(self, c: &mut [f32], w: f32, r: &[f32], target: f32) -> usize {
        // SAFETY: an `Avx2x13` exists only after AVX2 was detected (`Avx2x13::new`).
        unsafe { update_count_avx2_blocks::<13>(c, w, r, target) }
    }
    #[inline(always)]
    fn count_below(self, c: &[f32], target: f32) -> usize {
        // SAFETY: as above.
        unsafe { count_below_avx2_impl(c, target) }
    }
}

impl Ops {
    /// The fastest kernels this CPU supports, for vectors of length `len` (the update is fully
    /// unrolled for the paper's 101 states, padded to 104).
    pub(crate) fn detect(len: usize) -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                return Self {
                    update_count: if len == 13 * LANES {
                        update_count_avx2_13
                    } else {
                        update_count_avx2
                    },
                    count_below: count_below_avx2,
                    avx2_13: len == 13 * LANES,
                };
            }
        }
        let _ = len;
        Self::portable()
    }

    /// The portable kernels (any CPU).
    pub(crate) fn portable() -> Self {
        Self {
            update_count: update_count_scalar,
            count_below: count_below_scalar,
            avx2_13: false,
        }
    }
}

/// Portable [`Ops::update_count`] (u32 counter so that it auto-vectorises).
pub(crate) fn update_count_scalar(c: &mut [f32], w: f32, r: &[f32], target: f32) -> usize {
    let mut below = 0u32;
    for (ci, &ri) in c.iter_mut().zip(r) {
        *ci += w * ri;
        below += u32::from(*ci < target);
    }
    below as usize
}

/// Portable [`Ops::count_below`].
pub(crate) fn count_below_scalar(c: &[f32], target: f32) -> usize {
    c.iter().map(|&x| u32::from(x < target)).sum::<u32>() as usize
}

/// Horizontal sum of eight i32 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn hsum_epi32(v: std::arch::x86_64::__m256i) -> u32 {
    use std::arch::x86_64::{
        _mm256_castsi256_si128, _mm256_extracti128_si256, _mm_add_epi32, _mm_cvtsi128_si32,
        _mm_shuffle_epi32,
    };
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s) as u32
}

/// AVX2 [`Ops::update_count`]: 8 lanes per step; the comparison masks (−1 per lane below the
/// target) are subtracted from an i32 accumulator. Raw pointers with `wrapping_add` keep the
/// dev profile's debug checks out of the hot loop.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
/// # Safety
/// The CPU must have AVX2.
unsafe fn update_count_avx2_impl(c: &mut [f32], w: f32, r: &[f32], target: f32) -> usize {
    use std::arch::x86_64::{
        _mm256_add_ps, _mm256_castps_si256, _mm256_cmp_ps, _mm256_loadu_ps, _mm256_mul_ps,
        _mm256_set1_ps, _mm256_setzero_si256, _mm256_storeu_ps, _mm256_sub_epi32, _CMP_LT_OQ,
    };
    let n = c.len().min(r.len());
    let n8 = n - n % LANES;
    let wv = _mm256_set1_ps(w);
    let tv = _mm256_set1_ps(target);
    let cp = c.as_mut_ptr();
    let rp = r.as_ptr();
    let mut acc = _mm256_setzero_si256();
    let mut i = 0;
    while i < n8 {
        // SAFETY: i + 8 ≤ n ≤ the length of both slices; unaligned loads and stores.
        unsafe {
            let x = _mm256_add_ps(
                _mm256_loadu_ps(cp.wrapping_add(i)),
                _mm256_mul_ps(wv, _mm256_loadu_ps(rp.wrapping_add(i))),
            );
            _mm256_storeu_ps(cp.wrapping_add(i), x);
            acc = _mm256_sub_epi32(acc, _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LT_OQ>(x, tv)));
        }
        i += LANES;
    }
    hsum_epi32(acc) as usize + update_count_scalar(&mut c[n8..n], w, &r[n8..n], target)
}

/// [`update_count_avx2_impl`] for exactly `B` blocks of 8, fully unrolled.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
/// # Safety
/// The CPU must have AVX2.
unsafe fn update_count_avx2_blocks<const B: usize>(
    c: &mut [f32],
    w: f32,
    r: &[f32],
    target: f32,
) -> usize {
    use std::arch::x86_64::{
        _mm256_add_ps, _mm256_castps_si256, _mm256_cmp_ps, _mm256_loadu_ps, _mm256_mul_ps,
        _mm256_set1_ps, _mm256_setzero_si256, _mm256_storeu_ps, _mm256_sub_epi32, _CMP_LT_OQ,
    };
    assert!(c.len() == B * LANES && r.len() == B * LANES);
    let wv = _mm256_set1_ps(w);
    let tv = _mm256_set1_ps(target);
    let cp = c.as_mut_ptr();
    let rp = r.as_ptr();
    let mut acc = _mm256_setzero_si256();
    for b in 0..B {
        let i = b * LANES;
        // SAFETY: i + 8 ≤ B·8, the length of both slices (asserted); unaligned access.
        unsafe {
            let x = _mm256_add_ps(
                _mm256_loadu_ps(cp.wrapping_add(i)),
                _mm256_mul_ps(wv, _mm256_loadu_ps(rp.wrapping_add(i))),
            );
            _mm256_storeu_ps(cp.wrapping_add(i), x);
            acc = _mm256_sub_epi32(acc, _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LT_OQ>(x, tv)));
        }
    }
    hsum_epi32(acc) as usize
}

/// AVX2 [`Ops::count_below`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
/// # Safety
/// The CPU must have AVX2.
unsafe fn count_below_avx2_impl(c: &[f32], target: f32) -> usize {
    use std::arch::x86_64::{
        _mm256_castps_si256, _mm256_cmp_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_setzero_si256,
        _mm256_sub_epi32, _CMP_LT_OQ,
    };
    let n = c.len();
    let n8 = n - n % LANES;
    let tv = _mm256_set1_ps(target);
    let cp = c.as_ptr();
    let mut acc = _mm256_setzero_si256();
    let mut i = 0;
    while i < n8 {
        // SAFETY: i + 8 ≤ n = c.len(); unaligned loads.
        unsafe {
            let x = _mm256_loadu_ps(cp.wrapping_add(i));
            acc = _mm256_sub_epi32(acc, _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LT_OQ>(x, tv)));
        }
        i += LANES;
    }
    hsum_epi32(acc) as usize + count_below_scalar(&c[n8..], target)
}

#[cfg(target_arch = "x86_64")]
fn update_count_avx2(c: &mut [f32], w: f32, r: &[f32], target: f32) -> usize {
    // SAFETY: only selected by `Ops::detect` after the CPU was detected to support AVX2.
    unsafe { update_count_avx2_impl(c, w, r, target) }
}

#[cfg(target_arch = "x86_64")]
fn update_count_avx2_13(c: &mut [f32], w: f32, r: &[f32], target: f32) -> usize {
    // SAFETY: as `update_count_avx2`; the lengths are checked inside.
    unsafe { update_count_avx2_blocks::<13>(c, w, r, target) }
}

#[cfg(target_arch = "x86_64")]
fn count_below_avx2(c: &[f32], target: f32) -> usize {
    // SAFETY: as `update_count_avx2`.
    unsafe { count_below_avx2_impl(c, target) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Random nondecreasing vectors of awkward lengths (not multiples of 8), including ties,
    /// zeros and `+∞` padding: the detected kernels agree with the portable ones bit for bit.
    #[test]
    fn cmr_simd_kernels_match_portable() {
        let slow = Ops::portable();
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for len in [1usize, 7, 8, 9, 101, 104, 203] {
            let fast = Ops::detect(len);
            for _ in 0..50 {
                let mut c = vec![0f32; len];
                let mut r = vec![0f32; len];
                let (mut a, mut b) = (0f32, 0f32);
                for j in 0..len {
                    if rng.random::<f32>() < 0.7 {
                        a += rng.random::<f32>() * 10f32.powi(rng.random_range(-9..3));
                    }
                    b += rng.random::<f32>();
                    c[j] = a;
                    r[j] = b;
                }
                if len % 8 != 1 {
                    c[len - 1] = f32::INFINITY;
                    r[len - 1] = f32::INFINITY;
                }
                let w = rng.random::<f32>() * 1e3;
                let t = rng.random::<f32>() * a.max(1e-30);
                assert_eq!((fast.count_below)(&c, t), (slow.count_below)(&c, t));
                let mut c1 = c.clone();
                let mut c2 = c.clone();
                let n1 = (fast.update_count)(&mut c1, w, &r, t);
                let n2 = (slow.update_count)(&mut c2, w, &r, t);
                assert_eq!(n1, n2);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&c1), bits(&c2));
                // The count is the first index at or above the target.
                let first = c2.iter().position(|&x| x >= t).unwrap_or(len);
                assert_eq!(n2, first);
            }
        }
    }
}
