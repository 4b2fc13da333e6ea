//! The CPU passes of one SAE training step that candle's ops would do in several sweeps: the
//! encoder nonlinearity fused with its bookkeeping, the backward through it, and the sparse
//! representation of the codes that the products use below [`SPARSE_BELOW`] density.

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use super::super::SaeKind;
use crate::Result;

/// A tensor's values as a host vector (f32).
pub(super) fn host_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
}

/// Run `f` on a tensor's f32 values without copying them when they already sit contiguous in
/// host memory.
pub(super) fn with_host_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    {
        let (storage, layout) = t.storage_and_layout();
        if let (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(f(&v[a..b]));
        }
    }
    Ok(f(&host_vec(&t)?))
}

/// Below this fraction of active latents the three products that involve the codes
/// (`z·W_dec`, `zᵀ·∂x̂`, `xᵀ·∂pre`) run as sparse sums over the active entries instead of dense
/// GEMMs (at L0 = 50 of 2304 latents that is ~2% of the dense work).
pub(super) const SPARSE_BELOW: f64 = 0.1;

/// The nonzero codes of a `[b, n]` batch, by row and by column.
pub(super) struct SparseCodes {
    /// Per row: (latent, value).
    pub(super) rows: Vec<Vec<(u32, f32)>>,
    /// Per latent: the rows it fired on, and its value there.
    pub(super) cols: Vec<Vec<(u32, f32)>>,
}

impl SparseCodes {
    pub(super) fn new(z: &[f32], n: usize) -> SparseCodes {
        let rows: Vec<Vec<(u32, f32)>> = z
            .par_chunks(n)
            .map(|r| {
                r.iter()
                    .enumerate()
                    .filter(|(_, &v)| v != 0.0)
                    .map(|(j, &v)| (j as u32, v))
                    .collect()
            })
            .collect();
        SparseCodes::from_rows(rows, n)
    }

    /// The codes of rows given as (latent, value) lists in ascending latent order.
    pub(super) fn from_rows(rows: Vec<Vec<(u32, f32)>>, n: usize) -> SparseCodes {
        let mut cols: Vec<Vec<(u32, f32)>> = vec![Vec::new(); n];
        for (i, r) in rows.iter().enumerate() {
            for &(j, v) in r {
                cols[j as usize].push((i as u32, v));
            }
        }
        SparseCodes { rows, cols }
    }

    /// The reconstructions of nested latent prefixes: for each end in `ends` (increasing, the
    /// last = n), `z[:, ..end] · W[..end] + base` (`base` `[b, d]`), each `[b, d]`.
    pub(super) fn times_levels(&self, w: &[f32], base: &[f32], ends: &[usize]) -> Vec<Vec<f32>> {
        let d = base.len() / self.rows.len().max(1);
        let mut levels: Vec<Vec<f32>> = vec![base.to_vec(); ends.len()];
        // Row by row, each level gets the prefix sum up to its end.
        let mut acc = base.to_vec();
        for (i, row) in self.rows.iter().enumerate() {
            let a = &mut acc[i * d..(i + 1) * d];
            let mut next = 0;
            for (l, &end) in ends.iter().enumerate() {
                while next < row.len() && (row[next].0 as usize) < end {
                    let (j, v) = row[next];
                    let wj = &w[j as usize * d..(j as usize + 1) * d];
                    a.iter_mut().zip(wj).for_each(|(o, w)| *o += v * w);
                    next += 1;
                }
                levels[l][i * d..(i + 1) * d].copy_from_slice(a);
            }
        }
        levels
    }

    /// `Σ_i c_ij · a[i, :]` for every latent `j`, where `c_ij` is `coef(i, j, z_ij)` over the
    /// active entries and `a` is `[b, d]`: `[n, d]` (e.g. `zᵀ·∂x̂`).
    pub(super) fn gather(
        &self,
        a: &[f32],
        d: usize,
        coef: impl Fn(usize, usize, f32) -> f32 + Sync,
    ) -> Vec<f32> {
        self.gather_grouped(&[a], &[self.cols.len()], d, coef)
    }

    /// [`SparseCodes::gather`] where latents below `ends[g]` (and at or above `ends[g − 1]`)
    /// gather rows of `a[g]`.
    pub(super) fn gather_grouped(
        &self,
        a: &[&[f32]],
        ends: &[usize],
        d: usize,
        coef: impl Fn(usize, usize, f32) -> f32 + Sync,
    ) -> Vec<f32> {
        let mut out = vec![0f32; self.cols.len() * d];
        out.par_chunks_mut(d)
            .zip(&self.cols)
            .enumerate()
            .for_each(|(j, (o, col))| {
                let a = a[ends.iter().position(|&e| j < e).unwrap_or(ends.len() - 1)];
                for &(i, v) in col {
                    let c = coef(i as usize, j, v);
                    let ai = &a[i as usize * d..(i as usize + 1) * d];
                    o.iter_mut().zip(ai).for_each(|(o, a)| *o += c * a);
                }
            });
        out
    }
}

/// Rows per parallel task in the fused elementwise passes.
const ROWS_PER_TASK: usize = 16;

/// The fused encoder nonlinearity over `pre_nb = x·W_enc` (`[b, n]`): adds `b_enc`, applies the
/// kind's activation.
pub(super) fn encode_fused(
    pre_nb: &Tensor,
    b_enc: &[f32],
    kind: SaeKind,
    threshold: Option<&[f32]>,
    k: usize,
) -> Result<Encoded> {
    let n = b_enc.len();
    let mut pre = host_vec(pre_nb)?;
    let mut z = vec![0f32; pre.len()];
    // BatchTopK: the bias goes in first, then one cut for the whole batch keeps its k·B
    // largest positive pre-activations.
    let batch_cut = if matches!(kind, SaeKind::BatchTopK | SaeKind::Matryoshka) {
        pre.par_chunks_mut(n)
            .for_each(|row| row.iter_mut().zip(b_enc).for_each(|(p, b)| *p += b));
        Some(batch_cut(&pre, k * (pre.len() / n.max(1))))
    } else {
        None
    };
    let (fired, zsum) = pre
        .par_chunks_mut(ROWS_PER_TASK * n)
        .zip(z.par_chunks_mut(ROWS_PER_TASK * n))
        .fold(
            || (vec![0f32; n], 0f64),
            |(mut fired, mut zsum), (pre, z)| {
                let mut idx: Vec<u32> = Vec::new();
                for (pre, z) in pre.chunks_exact_mut(n).zip(z.chunks_exact_mut(n)) {
                    if batch_cut.is_none() {
                        pre.iter_mut().zip(b_enc).for_each(|(p, b)| *p += b);
                    }
                    // TopK: the k-th largest pre-activation of the row is the row's threshold
                    // (the same selection as `topk_mask`).
                    let kth = if kind == SaeKind::TopK && k > 0 && k < n {
                        idx.clear();
                        idx.extend(0..n as u32);
                        idx.select_nth_unstable_by(k - 1, |&a, &b| {
                            pre[b as usize].total_cmp(&pre[a as usize])
                        });
                        Some(&idx[..k])
                    } else {
                        None
                    };
                    match (kind, kth) {
                        (SaeKind::TopK, Some(sel)) => {
                            for &j in sel {
                                let j = j as usize;
                                if pre[j] > 0.0 {
                                    z[j] = pre[j];
                                }
                            }
                        }
                        (SaeKind::TopK, None) if k == 0 => {}
                        (SaeKind::BatchTopK | SaeKind::Matryoshka, _) => {
                            let cut = batch_cut.unwrap_or(0.0);
                            for (z, &p) in z.iter_mut().zip(pre.iter()) {
                                if p > 0.0 && p > cut {
                                    *z = p;
                                }
                            }
                        }
                        (SaeKind::Threshold, _) => {
                            let th = threshold.expect("threshold");
                            for ((z, &p), &t) in z.iter_mut().zip(pre.iter()).zip(th) {
                                if p > 0.0 && p > t {
                                    *z = p;
                                }
                            }
                        }
                        _ => {
                            for (z, &p) in z.iter_mut().zip(pre.iter()) {
                                if p > 0.0 {
                                    *z = p;
                                }
                            }
                        }
                    }
                    for (f, &v) in fired.iter_mut().zip(z.iter()) {
                        if v != 0.0 {
                            *f += 1.0;
                            zsum += v as f64;
                        }
                    }
                }
                (fired, zsum)
            },
        )
        .reduce(
            || (vec![0f32; n], 0f64),
            |(mut a, sa), (b, sb)| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                (a, sa + sb)
            },
        );
    Ok(Encoded {
        pre,
        z,
        fired,
        zsum,
    })
}

/// The cut that keeps the `keep` largest positive values of `pre` (`v > cut`): the
/// `keep + 1`-th largest positive value, or 0 when there are no more than `keep` of them.
pub(super) fn batch_cut(pre: &[f32], keep: usize) -> f32 {
    let mut pos: Vec<f32> = pre.par_iter().copied().filter(|&v| v > 0.0).collect();
    if pos.len() <= keep {
        return 0.0;
    }
    let (_, cut, _) = pos.select_nth_unstable_by(keep, |a, b| b.total_cmp(a));
    *cut
}

/// What [`encode_fused`] computes for a `[b, n]` batch.
pub(super) struct Encoded {
    /// Pre-activations `x·W_enc + b_enc`.
    pub(super) pre: Vec<f32>,
    /// Codes.
    pub(super) z: Vec<f32>,
    /// Per latent, the number of rows it fired on.
    pub(super) fired: Vec<f32>,
    /// Σ z over the batch.
    pub(super) zsum: f64,
}

/// The fused backward through the nonlinearity: from `g_z` (`[b, n]`) to `g_pre`, its column
/// sums (the `b_enc` gradient) and, for threshold SAEs, the τ gradient of the rectangle-kernel
/// straight-through estimator: dL/dτ = −(1/ε) Σ_b K·(g_z·τ + λ/B).
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_fused(
    g_z: &Tensor,
    pre: &[f32],
    z: &[f32],
    kind: SaeKind,
    threshold: Option<&[f32]>,
    relu_l1: f32,
    eps: f32,
    lam_over_b: f32,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let n = pre.len() / g_z.dim(0)?.max(1);
    let mut g_pre = host_vec(g_z)?;
    let (g_b, g_th) = g_pre
        .par_chunks_mut(ROWS_PER_TASK * n)
        .zip(pre.par_chunks(ROWS_PER_TASK * n))
        .zip(z.par_chunks(ROWS_PER_TASK * n))
        .fold(
            || (vec![0f32; n], vec![0f32; n]),
            |(mut gb, mut gth), ((g, pre), z)| {
                for ((g, pre), z) in g
                    .chunks_exact_mut(n)
                    .zip(pre.chunks_exact(n))
                    .zip(z.chunks_exact(n))
                {
                    if let (SaeKind::Threshold, Some(th)) = (kind, threshold) {
                        for (j, (&gz, &p)) in g.iter().zip(pre).enumerate() {
                            if ((p - th[j]) / eps).abs() < 0.5 {
                                gth[j] += gz * th[j] + lam_over_b;
                            }
                        }
                    }
                    for ((g, &zv), gb) in g.iter_mut().zip(z).zip(gb.iter_mut()) {
                        *g = if zv != 0.0 { *g + relu_l1 } else { 0.0 };
                        *gb += *g;
                    }
                }
                (gb, gth)
            },
        )
        .reduce(
            || (vec![0f32; n], vec![0f32; n]),
            |(mut a, mut b), (c, d)| {
                a.iter_mut().zip(&c).for_each(|(a, c)| *a += c);
                b.iter_mut().zip(&d).for_each(|(b, d)| *b += d);
                (a, b)
            },
        );
    let g_th = g_th.iter().map(|v| v * (-1.0 / eps)).collect();
    Ok((g_pre, g_b, g_th))
}
