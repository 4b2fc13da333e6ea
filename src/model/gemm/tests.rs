use super::*;

fn reference(x: &[f32], w: &[f32], m: usize, n: usize, k: usize, format: Format) -> Vec<f32> {
    let r = |v: f32| match format {
        Format::F32 => v as f64,
        Format::Bf16 => f32::from_bits(bf16_bits(v) << 16) as f64,
    };
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let s: f64 = (0..k).map(|q| r(x[i * k + q]) * r(w[j * k + q])).sum();
            c[i * n + j] = s as f32;
        }
    }
    c
}

#[test]
fn rounding_is_nearest_even() {
    assert_eq!(bf16_bits(1.0), 0x3f80);
    // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0).
    assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
    assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
    assert!(f32::from_bits(bf16_bits(f32::NAN) << 16).is_nan());
    assert_eq!(bf16_bits(f32::INFINITY), 0x7f80);
}

#[test]
fn matches_a_float64_product_of_the_rounded_inputs() -> Result<()> {
    for format in [Format::F32, Format::Bf16] {
        check(format)?;
    }
    Ok(())
}

fn check(format: Format) -> Result<()> {
    // Odd k, n not a multiple of the panel, m not a multiple of the row block.
    for &(m, n, k) in &[
        (1, 1, 1),
        (13, 70, 33),
        (100, 130, 64),
        (7, 64, 2),
        (40, 128, 96),
        (50, 70, 40),
        // Packed bf16 weights over AMX_L2_PANELS: panel-major tasks on AMX.
        (70, 1100, 512),
    ] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu)?;
        let xv: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let wv: Vec<f32> = w.flatten_all()?.to_vec1()?;
        let want = reference(&xv, &wv, m, n, k, format);
        let p = PackedLinear::pack(&w, format)?;
        for kernel in Kernel::available(format) {
            let got = p.matmul_slice(&xv, m, kernel);
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                err < 1e-4 * (k as f32).sqrt(),
                "{m}×{n}×{k} {kernel:?}: {err}"
            );
        }
        // Through tensors, with a leading batch axis.
        let y = p.matmul_t(&x.reshape((1, m, k))?)?;
        assert_eq!(y.dims(), &[1, m, n]);
        // Unpacking gives the (rounded) weights back.
        let u: Vec<f32> = p.unpack(&Device::Cpu)?.flatten_all()?.to_vec1()?;
        for (a, b) in u.iter().zip(&wv) {
            match format {
                Format::F32 => assert_eq!(a.to_bits(), b.to_bits()),
                Format::Bf16 => assert_eq!(a.to_bits(), bf16_bits(*b) << 16),
            }
        }
    }
    let p = PackedLinear::pack(&Tensor::zeros((3, 5), DType::F32, &Device::Cpu)?, format)?;
    assert!(p
        .matmul_t(&Tensor::zeros((2, 4), DType::F32, &Device::Cpu)?)
        .is_err());
    Ok(())
}

/// Deterministic inputs in ±[2⁻⁴, 2⁴): mixed magnitudes, so that a wrong pairing or a lost
/// term shows above the rounding error.
fn inputs(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
            let e = ((s >> 8) % 9) as i32 - 4;
            let sign = if s & 1 == 0 { 1.0 } else { -1.0 };
            sign * (1.0 + u) * 2f32.powi(e)
        })
        .collect()
}

/// Every kernel this CPU has, against the float64 product of the (rounded) inputs, on sizes
/// off every blocking: rows off the 6- and 4-row blocks (and none), inputs off the bf16 pairs
/// and the AVX2 chunk, outputs off the 8-, 16- and 64-column blocks. The bound is the
/// deterministic one for an f32 sum of `k` products (each output's error is at most
/// `(k + 1) · ε · Σ |x · w|` over its terms; an f32 FMA chain in any order is within it).
#[test]
fn every_kernel_matches_float64_on_odd_sizes() -> Result<()> {
    let sizes = [1usize, 7, 17, 63, 65, 130];
    for format in [Format::F32, Format::Bf16] {
        let r = |v: f32| match format {
            Format::F32 => v as f64,
            Format::Bf16 => f32::from_bits(bf16_bits(v) << 16) as f64,
        };
        let kernels = Kernel::available(format);
        for &k in &sizes {
            for &n in &sizes {
                let wv = inputs(n * k, (k * 1000 + n) as u64);
                let w = Tensor::from_vec(wv.clone(), (n, k), &Device::Cpu)?;
                let p = PackedLinear::pack(&w, format)?;
                for &m in &[0usize, 1, 7, 17, 63, 65] {
                    let xv = inputs(m * k, (m * 7 + k * 31 + n) as u64 + 1);
                    for &kernel in &kernels {
                        let got = p.matmul_slice(&xv, m, kernel);
                        assert_eq!(got.len(), m * n);
                        for i in 0..m {
                            for j in 0..n {
                                let (mut want, mut mag) = (0f64, 0f64);
                                for q in 0..k {
                                    let t = r(xv[i * k + q]) * r(wv[j * k + q]);
                                    want += t;
                                    mag += t.abs();
                                }
                                let err = (got[i * n + j] as f64 - want).abs();
                                let bound = (k + 1) as f64 * f32::EPSILON as f64 * mag;
                                assert!(
                                    err <= bound,
                                    "{format:?} {kernel:?} m={m} n={n} k={k} [{i}, {j}]: \
                                     {} vs {want} (error {err}, bound {bound})",
                                    got[i * n + j]
                                );
                            }
                        }
                        // Through tensors too, with the same kernel.
                        let x = Tensor::from_vec(xv.clone(), (m, k), &Device::Cpu)?;
                        let y = p.matmul_t_with(&x, kernel)?;
                        assert_eq!(y.dims(), &[m, n]);
                        let y: Vec<f32> = y.flatten_all()?.to_vec1()?;
                        assert_eq!(y, got, "{format:?} {kernel:?} {m}×{n}×{k}");
                    }
                }
            }
        }
    }
    Ok(())
}

/// A kernel the CPU does not run is an error, not undefined behaviour.
#[test]
fn a_kernel_this_cpu_lacks_is_refused() -> Result<()> {
    let w = Tensor::zeros((3, 5), DType::F32, &Device::Cpu)?;
    let x = Tensor::zeros((2, 5), DType::F32, &Device::Cpu)?;
    for format in [Format::F32, Format::Bf16] {
        let p = PackedLinear::pack(&w, format)?;
        let have = Kernel::available(format);
        assert_eq!(have[0], Kernel::Portable);
        assert!(have.contains(&Kernel::best(format)));
        for k in [
            Kernel::Portable,
            Kernel::Avx2,
            Kernel::Avx512,
            Kernel::Amx,
            Kernel::Neon,
        ] {
            assert_eq!(p.matmul_t_with(&x, k).is_ok(), have.contains(&k), "{k:?}");
        }
    }
    Ok(())
}
