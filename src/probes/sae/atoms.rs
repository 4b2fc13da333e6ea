//! The atoms analysis (Hu et al. 2025, docs/methods.md §3): the atomic inner product, coherence and
//! the uniqueness quantile q*.
//!
//! - S̃ = (E[m mᵀ] + εI)⁻¹ from up to `max_samples` activations (uncentred second moment;
//!   ε = `ridge` × tr(E[m mᵀ]) / d, via a Cholesky factorisation in f64).
//! - AIP ⟨u, v⟩_S̃ = uᵀS̃v / (‖u‖_S̃ ‖v‖_S̃); for the Euclidean geometry S̃ = I (cosine).
//! - Per-atom coherence μ_i = max_{j≠i} |⟨a_i, a_j⟩|; its distribution over atoms gives μ_q.
//! - Per-sample support K = L0 (the number of active latents; for neurons, of non-zero
//!   coordinates); its distribution over samples gives K_q.
//! - Pairing: the *same* q for both, with the lower empirical quantile
//!   x_q = sorted[⌈q·N⌉ − 1] (x_0 = min). Both μ_q and K_q grow with q, so the uniqueness
//!   condition μ_q < 1/(2K_q − 1), i.e. μ_q·(2K_q − 1) < 1, tightens with q; q* is the largest q
//!   on the grid 0, 0.0005, …, 1 where it holds (K_q < 1, an empty support, counts as unique),
//!   and 0 when it holds nowhere. q* = 0.997 reads: for the 99.7% of samples with the smallest
//!   support, the support size is below the uniqueness bound of the 99.7%-quantile atom.

use candle_core::{Device, Tensor};
use nalgebra::DMatrix;

use crate::Result;

/// The inverse (ridge-regularised) uncentred second moment S̃ of row-major `[N, d]` samples.
pub fn second_moment_inverse(samples: &[f32], d: usize, ridge: f64) -> Result<DMatrix<f64>> {
    let n = samples.len() / d.max(1);
    if n == 0 {
        crate::bail!("no samples for the second moment");
    }
    // X^T X in chunks through candle's matmul (f32), accumulated in f64.
    let mut m = DMatrix::<f64>::zeros(d, d);
    for chunk in samples.chunks(16384 * d) {
        let rows = chunk.len() / d;
        let x = Tensor::from_slice(chunk, (rows, d), &Device::Cpu)?;
        let g: Vec<f32> = x.t()?.matmul(&x)?.flatten_all()?.to_vec1()?;
        for i in 0..d {
            for j in 0..d {
                m[(i, j)] += g[i * d + j] as f64;
            }
        }
    }
    m /= n as f64;
    let eps = ridge * m.trace() / d as f64;
    for i in 0..d {
        m[(i, i)] += eps;
    }
    let chol = nalgebra::Cholesky::new(m)
        .ok_or_else(|| crate::Error::msg("second moment is not positive definite"))?;
    Ok(chol.inverse())
}

/// |normalised Gram| of the rows of `atoms` (`[n, d]`) under `s` (None = Euclidean): the
/// per-atom coherence μ_i = max_{j≠i} |AIP(a_i, a_j)|.
pub fn per_atom_coherence(atoms: &Tensor, s: Option<&DMatrix<f64>>) -> Result<Vec<f64>> {
    let atoms = atoms
        .to_device(&Device::Cpu)?
        .to_dtype(candle_core::DType::F32)?;
    let (n, d) = atoms.dims2()?;
    let a_s = match s {
        Some(s) => {
            let sv: Vec<f32> = s.transpose().iter().map(|&x| x as f32).collect();
            // nalgebra is column-major; transpose().iter() walks rows of s.
            let st = Tensor::from_vec(sv, (d, d), &Device::Cpu)?;
            atoms.matmul(&st)?
        }
        None => atoms.clone(),
    };
    let diag: Vec<f32> = (&a_s * &atoms)?.sum(1)?.to_vec1()?;
    let norms: Vec<f64> = diag.iter().map(|&x| (x.max(1e-30) as f64).sqrt()).collect();
    let mut out = vec![0f64; n];
    // Row blocks of the Gram to bound memory.
    let block = 512usize;
    let mut start = 0;
    while start < n {
        let rows = block.min(n - start);
        let g: Vec<f32> = a_s
            .narrow(0, start, rows)?
            .matmul(&atoms.t()?)?
            .flatten_all()?
            .to_vec1()?;
        for r in 0..rows {
            let i = start + r;
            let mut best = 0f64;
            for j in 0..n {
                if j != i {
                    let v = (g[r * n + j] as f64 / (norms[i] * norms[j])).abs();
                    if v > best {
                        best = v;
                    }
                }
            }
            out[i] = best;
        }
        start += rows;
    }
    Ok(out)
}

/// The lower empirical quantile sorted[⌈q·N⌉ − 1] of a sorted slice.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let k = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[k - 1]
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(|a, b| a.total_cmp(b));
    s
}

/// q* from per-atom coherences and per-sample supports (see the module docs).
pub fn q_star(coherence: &[f64], support: &[f64]) -> f64 {
    let mu = sorted(coherence);
    let k = sorted(support);
    if mu.is_empty() || k.is_empty() {
        return f64::NAN;
    }
    let mut best = 0.0;
    for i in 0..=2000 {
        let q = i as f64 / 2000.0;
        let (m, kq) = (quantile_sorted(&mu, q), quantile_sorted(&k, q));
        if kq < 1.0 || m * (2.0 * kq - 1.0) < 1.0 {
            best = q;
        }
    }
    best
}

/// Coherence and uniqueness numbers of one dictionary.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AtomStats {
    pub name: String,
    /// μ = max over atoms of the per-atom AIP coherence.
    pub coherence: f64,
    pub coherence_q50: f64,
    pub coherence_q90: f64,
    pub coherence_q99: f64,
    /// The same under the Euclidean inner product (cosine).
    pub coherence_euclid: f64,
    pub mean_support: f64,
    pub q_star: f64,
    /// q* under the Euclidean inner product.
    pub q_star_euclid: f64,
    pub per_atom_aip: Vec<f64>,
    pub per_atom_euclid: Vec<f64>,
}

/// The numbers for a dictionary `atoms` `[n, d]` with per-sample supports `support`.
pub fn atom_stats(
    name: &str,
    atoms: &Tensor,
    support: &[f64],
    s: &DMatrix<f64>,
) -> Result<AtomStats> {
    let aip = per_atom_coherence(atoms, Some(s))?;
    let euc = per_atom_coherence(atoms, None)?;
    let sa = sorted(&aip);
    let se = sorted(&euc);
    Ok(AtomStats {
        name: name.to_string(),
        coherence: sa.last().copied().unwrap_or(f64::NAN),
        coherence_q50: quantile_sorted(&sa, 0.5),
        coherence_q90: quantile_sorted(&sa, 0.9),
        coherence_q99: quantile_sorted(&sa, 0.99),
        coherence_euclid: se.last().copied().unwrap_or(f64::NAN),
        mean_support: support.iter().sum::<f64>() / support.len().max(1) as f64,
        q_star: q_star(&aip, support),
        q_star_euclid: q_star(&euc, support),
        per_atom_aip: aip,
        per_atom_euclid: euc,
    })
}

/// Neurons: the standard basis, with support = the number of non-zero coordinates.
pub fn neuron_stats(samples: &[f32], d: usize, s: &DMatrix<f64>) -> Result<AtomStats> {
    let eye = Tensor::eye(d, candle_core::DType::F32, &Device::Cpu)?;
    let support: Vec<f64> = samples
        .chunks(d)
        .map(|r| r.iter().filter(|&&v| v != 0.0).count() as f64)
        .collect();
    atom_stats("neurons", &eye, &support, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_q_star() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile_sorted(&v, 0.0), 1.0);
        assert_eq!(quantile_sorted(&v, 0.5), 2.0);
        assert_eq!(quantile_sorted(&v, 0.51), 3.0);
        assert_eq!(quantile_sorted(&v, 1.0), 4.0);
        // Orthogonal atoms: always unique.
        assert_eq!(q_star(&[0.0; 4], &[5.0, 9.0]), 1.0);
        // μ = 0.2 everywhere: unique while 2K − 1 < 5, i.e. K ≤ 2; half the samples have K = 2.
        let k = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(q_star(&[0.2; 3], &k), 0.5);
    }

    #[test]
    fn aip_is_whitened_cosine() {
        // With S = I the AIP is the cosine.
        let a = Tensor::new(&[[1f32, 0.], [1., 1.]], &Device::Cpu).unwrap();
        let c = per_atom_coherence(&a, None).unwrap();
        assert!((c[0] - 0.5f64.sqrt()).abs() < 1e-6);
        let s = DMatrix::<f64>::identity(2, 2);
        let c2 = per_atom_coherence(&a, Some(&s)).unwrap();
        assert!((c2[1] - c[1]).abs() < 1e-6);
        // Anisotropic data: S̃ from samples along (1, 0) and (0, 10) rescales the axes.
        let samples = [1f32, 0., 0., 10., -1., 0., 0., -10.];
        let s = second_moment_inverse(&samples, 2, 0.0).unwrap();
        // E[m mᵀ] = diag(0.5, 50).
        assert!((s[(0, 0)] - 2.0).abs() < 1e-6 && (s[(1, 1)] - 0.02).abs() < 1e-6);
    }
}
