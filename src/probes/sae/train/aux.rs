//! The AuxK loss of TopK-style SAEs (Gao et al. 2024, "Scaling and evaluating sparse
//! autoencoders", appendix A.2): the `k_aux` largest pre-activations among the dead latents
//! reconstruct the main reconstruction's error `e = y − ŷ` (held fixed),
//! `L_aux = α·s·mean_batch ‖e − z_aux·W_dec‖²`, with `s = min(dead / k_aux, 1)` as SAELens
//! scales it when few latents are dead. Unlike SAELens (whose decode adds `b_dec`), the aux
//! reconstruction has no bias, as in the paper.

use rayon::prelude::*;

use super::fused::SparseCodes;

/// The AuxK loss of one batch and its gradients (host, row-major).
pub(super) struct AuxK {
    pub(super) loss: f64,
    /// `[n, d_out]`
    pub(super) w_dec: Vec<f32>,
    /// `[n, d_in]` (the transpose of the W_enc gradient)
    pub(super) w_enc_t: Vec<f32>,
    /// `[n]`
    pub(super) b_enc: Vec<f32>,
}

/// The shapes and data the AuxK loss reads.
pub(super) struct AuxInput<'a> {
    /// Pre-activations `[b, n]`.
    pub(super) pre: &'a [f32],
    pub(super) n: usize,
    /// Dead latents.
    pub(super) dead: &'a [u32],
    pub(super) k_aux: usize,
    /// α·s.
    pub(super) coeff: f32,
    /// The main reconstruction's error `y − ŷ`, `[b, d_out]`.
    pub(super) err: &'a [f32],
    /// `[n, d_out]`
    pub(super) w_dec: &'a [f32],
    /// The SAE input `[b, d_in]`.
    pub(super) x: &'a [f32],
}

/// The AuxK loss and its gradients.
pub(super) fn aux_k(a: &AuxInput) -> AuxK {
    let n = a.n;
    let b = a.pre.len() / n.max(1);
    let d_out = a.err.len() / b.max(1);
    let d_in = a.x.len() / b.max(1);
    let k = a.k_aux.min(a.dead.len());
    let bf = b.max(1) as f32;
    // Per row: the selected dead latents (ascending index) with their activation, the row's
    // loss term, the gradient of its aux reconstruction, and the pre-activation gradients.
    type Row = (Vec<(u32, f32)>, f64, Vec<f32>, Vec<(u32, f32)>);
    let rows: Vec<Row> = a
        .pre
        .par_chunks(n)
        .zip(a.err.par_chunks(d_out))
        .map(|(pre, e)| {
            let mut cand: Vec<(u32, f32)> = a
                .dead
                .iter()
                .map(|&j| (j, pre[j as usize]))
                .filter(|&(_, v)| v > 0.0)
                .collect();
            if cand.len() > k {
                cand.select_nth_unstable_by(k.saturating_sub(1), |x, y| y.1.total_cmp(&x.1));
                cand.truncate(k);
            }
            cand.sort_unstable_by_key(|c| c.0);
            let mut diff: Vec<f32> = e.iter().map(|v| -v).collect();
            for &(j, v) in &cand {
                let w = &a.w_dec[j as usize * d_out..(j as usize + 1) * d_out];
                diff.iter_mut().zip(w).for_each(|(o, w)| *o += v * w);
            }
            let sq: f64 = diff.iter().map(|v| (*v as f64) * (*v as f64)).sum();
            let g: Vec<f32> = diff.iter().map(|v| a.coeff * 2.0 * v / bf).collect();
            let gpre: Vec<(u32, f32)> = cand
                .iter()
                .map(|&(j, _)| {
                    let w = &a.w_dec[j as usize * d_out..(j as usize + 1) * d_out];
                    (j, w.iter().zip(&g).map(|(w, g)| w * g).sum())
                })
                .collect();
            (cand, sq, g, gpre)
        })
        .collect();
    let loss = a.coeff as f64 * rows.iter().map(|r| r.1).sum::<f64>() / bf as f64;
    let g_out: Vec<f32> = rows.iter().flat_map(|r| r.2.iter().copied()).collect();
    let (zs, gs): (Vec<_>, Vec<_>) = rows.into_iter().map(|r| (r.0, r.3)).unzip();
    let z = SparseCodes::from_rows(zs, n);
    let gpre = SparseCodes::from_rows(gs, n);
    let w_dec = z.gather(&g_out, d_out, |_, _, v| v);
    let w_enc_t = gpre.gather(a.x, d_in, |_, _, v| v);
    let b_enc = gpre
        .cols
        .iter()
        .map(|c| c.iter().map(|e| e.1).sum())
        .collect();
    AuxK {
        loss,
        w_dec,
        w_enc_t,
        b_enc,
    }
}
