//! Test harness for the NEON micro-kernels (`src/model/gemm/neon.rs` and the row-block driver
//! `src/model/gemm/simd.rs`, included as they stand): every row/column/depth combination of odd
//! sizes against an f64 product of the same (bf16-rounded) inputs, through the driver's
//! bounds-checked entry `simd::run_task` with `neon::pick`, in the packed panel layout of
//! `src/model/gemm.rs`. Runs on aarch64 only (under qemu-user here:
//! `scripts/test-neon.sh`).

#![cfg_attr(not(test), allow(dead_code))]

/// Output columns per packed panel (as `gemm::NR`).
pub const NR: usize = 64;

/// Element format of a packed weight (as `gemm::Format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    F32,
    Bf16,
}

#[cfg(target_arch = "aarch64")]
#[path = "../../src/model/gemm/neon.rs"]
mod neon;
#[path = "../../src/model/gemm/simd.rs"]
mod simd;

pub use simd::{Pick, SubBlock};

/// Round to bf16, nearest even (as `gemm::bf16_bits`; NaN is not tested here).
pub fn bf16_bits(x: f32) -> u32 {
    let b = x.to_bits();
    (b.wrapping_add(0x7fff + ((b >> 16) & 1))) >> 16
}

/// A deterministic value in [-1, 1) (no dependencies for a random generator).
fn value(i: usize, seed: u64) -> f32 {
    let mut z = (i as u64).wrapping_add(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

/// One panel of `W` (`n ≤ NR` rows of `k` features, row-major) packed as `gemm.rs` packs it:
/// per input step `NR` words, an f32 or a bf16 pair of features `(2q, 2q + 1)`; zeros past `n`
/// and `k`. Returns the panel and its step count `kp`.
pub fn pack(w: &[f32], n: usize, k: usize, format: Format) -> (Vec<u32>, usize) {
    let kp = match format {
        Format::F32 => k,
        Format::Bf16 => k.div_ceil(2),
    };
    let mut panel = vec![0u32; kp * NR];
    for j in 0..n {
        for q in 0..kp {
            panel[q * NR + j] = match format {
                Format::F32 => w[j * k + q].to_bits(),
                Format::Bf16 => {
                    let at = |f: usize| if f < k { bf16_bits(w[j * k + f]) } else { 0 };
                    at(2 * q) | (at(2 * q + 1) << 16)
                }
            };
        }
    }
    (panel, kp)
}

/// The activations as the kernels take them: f32 bits (`kp` per row), or bf16-rounded values
/// as f32 bits (`2 · kp` per row, zeros past `k`).
pub fn activations(x: &[f32], m: usize, k: usize, kp: usize, format: Format) -> Vec<u32> {
    let lda = match format {
        Format::F32 => kp,
        Format::Bf16 => 2 * kp,
    };
    let mut a = vec![0u32; m * lda];
    for i in 0..m {
        for f in 0..k {
            a[i * lda + f] = match format {
                Format::F32 => x[i * k + f].to_bits(),
                Format::Bf16 => bf16_bits(x[i * k + f]) << 16,
            };
        }
    }
    a
}

/// `x · Wᵀ` in f64 over the inputs as the kernel sees them (rounded to bf16 for bf16), and the
/// scale `Σ |x||w|` of each output (for the tolerance).
pub fn reference(
    x: &[f32],
    w: &[f32],
    m: usize,
    n: usize,
    k: usize,
    format: Format,
) -> (Vec<f64>, Vec<f64>) {
    let r = |v: f32| match format {
        Format::F32 => v as f64,
        Format::Bf16 => f32::from_bits(bf16_bits(v) << 16) as f64,
    };
    let (mut c, mut s) = (vec![0f64; m * n], vec![0f64; m * n]);
    for i in 0..m {
        for j in 0..n {
            for q in 0..k {
                let p = r(x[i * k + q]) * r(w[j * k + q]);
                c[i * n + j] += p;
                s[i * n + j] += p.abs();
            }
        }
    }
    (c, s)
}

#[cfg(all(test, target_arch = "aarch64"))]
mod tests {
    use super::*;

    fn run(m: usize, n: usize, k: usize, format: Format) {
        let x: Vec<f32> = (0..m * k).map(|i| value(i, 1)).collect();
        let w: Vec<f32> = (0..n * k).map(|i| value(i, 2)).collect();
        let (panel, kp) = pack(&w, n, k, format);
        let lda = match format {
            Format::F32 => kp,
            Format::Bf16 => 2 * kp,
        };
        let a = activations(&x, m, k, kp, format);
        // The output has a wider row stride than `n` and a guard value past each row.
        let ldc = n + 3;
        let mut c = vec![f32::NAN; m * ldc];
        // SAFETY: `c` has `m` rows of `ldc ≥ n` floats.
        unsafe { simd::run_task(neon::pick, &a, m, lda, kp, &panel, c.as_mut_ptr(), ldc, n, format) };
        let (want, scale) = reference(&x, &w, m, n, k, format);
        for i in 0..m {
            for j in 0..n {
                let (got, want) = (c[i * ldc + j] as f64, want[i * n + j]);
                let tol = 1e-6 * scale[i * n + j] + 1e-30;
                assert!(
                    (got - want).abs() <= tol,
                    "{format:?} m {m} n {n} k {k}: c[{i},{j}] = {got}, want {want}"
                );
            }
            for j in n..ldc {
                assert!(c[i * ldc + j].is_nan(), "{format:?}: wrote past column {n}");
            }
        }
    }

    #[test]
    fn neon_kernels_match_a_float64_reference_at_odd_sizes() {
        for format in [Format::F32, Format::Bf16] {
            for m in [0, 1, 2, 3, 4, 5, 6, 7, 17, 63, 65] {
                for k in [1, 7, 17, 63, 65, 130, 600] {
                    for n in [1, 7, 17, 63, 64] {
                        run(m, n, k, format);
                    }
                }
            }
        }
    }

    #[test]
    fn no_input_steps_store_zeros() {
        for format in [Format::F32, Format::Bf16] {
            let mut c = vec![f32::NAN; 3 * 64];
            // SAFETY: `c` has 3 rows of 64 floats.
            unsafe { simd::run_task(neon::pick, &[], 3, 0, 0, &[], c.as_mut_ptr(), 64, 64, format) };
            assert!(c.iter().all(|&v| v == 0.0), "{format:?}");
        }
    }
}
