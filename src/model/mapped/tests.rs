use super::*;

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// `x · Wᵀ` in f64 over the weights as stored (rounded to `half`), with `Σ |x·w|` per output
/// (the scale of an f32 summation's error).
fn reference(x: &[f32], w: &[f32], m: usize, n: usize, k: usize, half: Half) -> Vec<(f64, f64)> {
    let r = |v: f32| match half {
        Half::Bf16 => half::bf16::from_f32(v).to_f32() as f64,
        Half::F16 => half::f16::from_f32(v).to_f32() as f64,
    };
    let wr: Vec<f64> = w.iter().map(|&v| r(v)).collect();
    let mut c = vec![(0f64, 0f64); m * n];
    for i in 0..m {
        for j in 0..n {
            let p = (0..k).map(|q| x[i * k + q] as f64 * wr[j * k + q]);
            c[i * n + j] = (p.clone().sum(), p.map(f64::abs).sum());
        }
    }
    c
}

/// A weight of `n` rows split into up to three mapped blocks (as a fused q,k,v is).
fn weight(w: &[f32], n: usize, k: usize, half: Half) -> Result<MappedLinear> {
    let cuts = [0, n / 3, n / 3 + n / 4, n];
    let mut parts = vec![];
    for c in cuts.windows(2) {
        if c[1] > c[0] || n == 0 {
            parts.push(MappedRows::from_f32(
                &w[c[0] * k..c[1] * k],
                c[1] - c[0],
                k,
                half,
            )?);
        }
        if n == 0 {
            break;
        }
    }
    MappedLinear::new(parts)
}

#[test]
fn matches_a_float64_product_of_the_stored_weights() -> Result<()> {
    let kernels = MappedKernel::available();
    assert!(kernels.contains(&MappedKernel::Portable));
    for half in [Half::Bf16, Half::F16] {
        for &m in &[0usize, 1, 2, 3, 4, 7, 17, 63, 65] {
            for &k in &[1usize, 7, 17, 63, 65, 130] {
                for &n in &[1usize, 7, 17, 63, 65, 130] {
                    let x = values(m * k, (m * 1000 + k * 10 + n) as u64);
                    let w = values(n * k, (n * 7 + k) as u64);
                    let want = reference(&x, &w, m, n, k, half);
                    let lin = weight(&w, n, k, half)?;
                    assert_eq!(lin.dims(), (n, k));
                    for &kernel in &kernels {
                        // A small chunk so the many-row path runs over several chunks.
                        for chunk in [4 * k * 5, CHUNK_BYTES] {
                            let got = lin.matmul_slice(&x, m, kernel, chunk)?;
                            assert_eq!(got.len(), m * n);
                            for (idx, (&g, &(r, abs))) in got.iter().zip(&want).enumerate() {
                                // An f32 sum of k products: |error| ≤ k·ε·Σ|x·w| (the products
                                // of f32 and 16-bit values are exact in f64, and in the FMA).
                                let tol = (k + 2) as f64 * f32::EPSILON as f64 * abs + 1e-30;
                                assert!(
                                    (g as f64 - r).abs() <= tol,
                                    "{half:?} {kernel:?} m={m} n={n} k={k} [{idx}]: {g} vs {r}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

#[test]
fn tensor_entry_points_agree_with_the_stored_values() -> Result<()> {
    let (n, k) = (37, 19);
    let w = values(n * k, 3);
    let lin = weight(&w, n, k, Half::Bf16)?;
    // unpack: exactly the stored bf16 values.
    let u: Vec<f32> = lin
        .unpack(DType::F32, &Device::Cpu)?
        .flatten_all()?
        .to_vec1()?;
    for (a, b) in u.iter().zip(&w) {
        assert_eq!(*a, half::bf16::from_f32(*b).to_f32());
    }
    // gather: rows in order, across block boundaries.
    let ids = [0u32, 36, 12, 13, 12];
    let g = lin.gather(&ids, &Device::Cpu)?;
    assert_eq!(g.dims(), [5, k]);
    let g: Vec<Vec<f32>> = g.to_vec2()?;
    for (row, &i) in g.iter().zip(&ids) {
        assert_eq!(row[..], u[i as usize * k..(i as usize + 1) * k]);
    }
    assert!(lin.gather(&[37], &Device::Cpu).is_err());
    // matmul_t on a [b, t, k] tensor against candle's product of the unpacked weight.
    for t in [1usize, 9] {
        let x = Tensor::from_vec(values(2 * t * k, 5), (2, t, k), &Device::Cpu)?;
        let got = lin.matmul_t(&x)?;
        assert_eq!(got.dims(), [2, t, n]);
        let want = x.broadcast_matmul(&lin.unpack(DType::F32, &Device::Cpu)?.t()?)?;
        let d = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-5, "{d}");
    }
    assert!(lin
        .matmul_t(&Tensor::zeros((1, 3), DType::F32, &Device::Cpu)?)
        .is_err());
    Ok(())
}

#[test]
fn non_finite_values_are_counted_and_blocks_must_agree() -> Result<()> {
    for half in [Half::Bf16, Half::F16] {
        let mut w = values(40, 9);
        w[3] = f32::NAN;
        w[17] = f32::INFINITY;
        w[30] = f32::NEG_INFINITY;
        let r = MappedRows::from_f32(&w, 4, 10, half)?;
        assert_eq!(r.non_finite_count(), 3, "{half:?}");
        // Every position of a word and the tail past the last whole word; none at all.
        for bad in 0..11 {
            let mut w = values(11, 4);
            assert_eq!(MappedRows::from_f32(&w, 1, 11, half)?.non_finite_count(), 0);
            w[bad] = if bad % 2 == 0 {
                f32::NAN
            } else {
                f32::NEG_INFINITY
            };
            let r = MappedRows::from_f32(&w, 1, 11, half)?;
            assert_eq!(r.non_finite_count(), 1, "{half:?} at {bad}");
        }
        // Large finite values are not counted (±65504, f16's largest); 3e38 is finite in bf16
        // but overflows f16 to +inf.
        let big = [65504.0f32, -65504.0, 3.0e38, 1.0];
        let n = if half == Half::F16 { 1 } else { 0 };
        assert_eq!(
            MappedRows::from_f32(&big, 1, 4, half)?.non_finite_count(),
            n,
            "{half:?}"
        );
    }
    let a = MappedRows::from_f32(&values(6, 1), 2, 3, Half::Bf16)?;
    let b = MappedRows::from_f32(&values(8, 1), 2, 4, Half::Bf16)?;
    let c = MappedRows::from_f32(&values(6, 1), 2, 3, Half::F16)?;
    assert!(MappedLinear::new(vec![a.clone(), b]).is_err());
    assert!(MappedLinear::new(vec![a.clone(), c]).is_err());
    assert!(MappedLinear::new(vec![]).is_err());
    // A block past the end of its map is refused.
    assert!(MappedRows::new(a.map.clone(), 2, 2, 3, Half::Bf16).is_err());
    Ok(())
}
