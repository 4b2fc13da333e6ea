//! The loss of one SAE training step and its gradients: the forward through the encoder, the
//! nested reconstructions (one level unless Matryoshka), the hand-written backward, and the
//! AuxK term.

use candle_core::Tensor;

use super::fused::{
    backward_fused, encode_fused, host_vec, with_host_slice, Encoded, SparseCodes, SPARSE_BELOW,
};
use super::{aux, Gradients, Trainer};
use crate::probes::sae::SaeKind;
use crate::Result;

impl Trainer {
    /// The loss and its (straight-through) gradients on a normalised batch `x: [B, d]` (and
    /// target `y: [B, d_out]` for transcoders; `x` itself otherwise) with sparsity
    /// coefficient `lam`, without changing the parameters.
    pub fn gradients(&self, x: &Tensor, target: Option<&Tensor>, lam: f64) -> Result<Gradients> {
        let y = target.unwrap_or(x);
        let (b, _) = x.dims2()?;
        let (n, dev) = (self.n, &self.device);
        let bf = b as f64;
        let kind = self.params.kind;
        // The elementwise parts run fused on the host (one pass forward, one backward); the
        // matrix products stay candle matmuls, or sparse sums when few latents are active.
        let th: Option<Vec<f32>> = self
            .log_th
            .as_ref()
            .map(|t| host_vec(&t.exp()?))
            .transpose()?;
        let b_enc = host_vec(&self.b_enc)?;
        let Encoded {
            pre,
            z,
            fired,
            zsum,
        } = encode_fused(
            &x.matmul(&self.w_enc)?,
            &b_enc,
            kind,
            th.as_deref(),
            self.params.k,
        )?;
        let d = self.d_out;
        let density = fired.iter().map(|&f| f as f64).sum::<f64>() / (b * n).max(1) as f64;
        let sparse = self.sparse_override.unwrap_or(density < SPARSE_BELOW);
        let codes = sparse.then(|| SparseCodes::new(&z, n));
        let zt = Tensor::from_vec(z, (b, n), dev)?;
        // What every level adds to its latents' part: b_dec, and the skip connection.
        let base = match &self.w_skip {
            Some(w) => x.matmul(&w.t()?)?.broadcast_add(&self.b_dec)?,
            None => self.b_dec.broadcast_as((b, d))?.contiguous()?,
        };
        let ends = &self.levels;
        let starts: Vec<usize> = std::iter::once(0).chain(ends.iter().copied()).collect();
        let w_dec_host = codes.as_ref().map(|_| host_vec(&self.w_dec)).transpose()?;
        // The reconstruction of each level (the last is the SAE's).
        let recons: Vec<Tensor> = match (&codes, &w_dec_host) {
            (Some(c), Some(w)) => c
                .times_levels(w, &host_vec(&base)?, ends)
                .into_iter()
                .map(|v| Tensor::from_vec(v, (b, d), dev))
                .collect::<candle_core::Result<_>>()?,
            _ => {
                let mut acc = base.clone();
                let mut out = Vec::with_capacity(ends.len());
                for (&s, &e) in starts.iter().zip(ends) {
                    let (zg, wg) = if s == 0 && e == n {
                        (zt.clone(), self.w_dec.clone())
                    } else {
                        (
                            zt.narrow(1, s, e - s)?.contiguous()?,
                            self.w_dec.narrow(0, s, e - s)?,
                        )
                    };
                    acc = (acc + zg.matmul(&wg)?)?;
                    out.push(acc.clone());
                }
                out
            }
        };
        let full = recons.last().expect("one level at least");
        let r = (full - y)?;
        let sse = r.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        let mse = sse / bf;
        let var = y
            .broadcast_sub(&y.mean_keepdim(0)?)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f32>()? as f64;
        let l0 = fired.iter().map(|&v| v as f64).sum::<f64>() / bf;
        // Backward. Level i's gradient is 2(ŷ_i − y)/B; a latent of group g feeds the levels
        // from g on, so its gradients use the suffix sums S_g = Σ_{i ≥ g} 2(ŷ_i − y)/B.
        let mut inner = 0.0;
        let mut suffix: Vec<Tensor> = Vec::with_capacity(recons.len());
        for (i, rec) in recons.iter().enumerate().rev() {
            let ri = if i + 1 == recons.len() {
                r.clone()
            } else {
                let ri = (rec - y)?;
                inner += ri.sqr()?.sum_all()?.to_scalar::<f32>()? as f64 / bf;
                ri
            };
            let gi = (ri * (2.0 / bf))?;
            let s = match suffix.last() {
                Some(next) => (next + gi)?,
                None => gi,
            };
            suffix.push(s);
        }
        suffix.reverse();
        let g_all = &suffix[0];
        let b_dec = g_all.sum(0)?;
        let w_skip = self
            .w_skip
            .as_ref()
            .map(|_| g_all.t()?.matmul(x))
            .transpose()?;
        let suffix_host = codes
            .as_ref()
            .map(|_| suffix.iter().map(host_vec).collect::<Result<Vec<_>>>())
            .transpose()?;
        let mut w_dec = match (&codes, &suffix_host) {
            (Some(c), Some(sh)) => {
                let a: Vec<&[f32]> = sh.iter().map(|v| v.as_slice()).collect();
                Tensor::from_vec(c.gather_grouped(&a, ends, d, |_, _, v| v), (n, d), dev)?
            }
            _ if ends.len() == 1 => zt.t()?.matmul(g_all)?,
            _ => {
                let mut parts = Vec::with_capacity(ends.len());
                for ((&s, &e), sg) in starts.iter().zip(ends).zip(&suffix) {
                    parts.push(zt.narrow(1, s, e - s)?.t()?.matmul(sg)?);
                }
                Tensor::cat(&parts, 0)?
            }
        };
        let g_z = if ends.len() == 1 {
            g_all.matmul(&self.w_dec.t()?)?
        } else {
            let mut parts = Vec::with_capacity(ends.len());
            for ((&s, &e), sg) in starts.iter().zip(ends).zip(&suffix) {
                parts.push(sg.matmul(&self.w_dec.narrow(0, s, e - s)?.t()?)?);
            }
            Tensor::cat(&parts, 1)?
        };
        let (relu_l1, penalty) = match kind {
            SaeKind::Relu => ((lam / bf) as f32, lam * zsum / bf),
            SaeKind::Threshold => (0.0, lam * l0),
            SaeKind::TopK | SaeKind::BatchTopK | SaeKind::Matryoshka => (0.0, 0.0),
        };
        let z = with_host_slice(&zt, |z| {
            backward_fused(
                &g_z,
                &pre,
                z,
                kind,
                th.as_deref(),
                relu_l1,
                self.params.bandwidth as f32,
                (lam / bf) as f32,
            )
        })??;
        let (g_pre, mut g_b, g_th) = z;
        let log_threshold = match &th {
            Some(th) => {
                let g: Vec<f32> = g_th.iter().zip(th).map(|(g, t)| g * t).collect();
                Some(Tensor::from_vec(g, n, dev)?)
            }
            None => None,
        };
        let di = self.d;
        let x_host = (codes.is_some() || kind.selects())
            .then(|| host_vec(x))
            .transpose()?;
        let mut w_enc = match (&codes, &x_host) {
            // ∂pre is zero off the active entries, so xᵀ·∂pre sums over them only.
            (Some(c), Some(xs)) => {
                let g = c.gather(xs, di, |i, j, _| g_pre[i * n + j]);
                Tensor::from_vec(g, (n, di), dev)?.t()?.contiguous()?
            }
            _ => x.t()?.matmul(&Tensor::from_vec(g_pre, (b, n), dev)?)?,
        };
        // AuxK: dead latents reconstruct the error.
        let (dead, k_aux, coeff) = self.aux_dead();
        let mut aux_loss = 0.0;
        if !dead.is_empty() {
            let err = host_vec(&r.neg()?)?;
            let w = match w_dec_host {
                Some(w) => w,
                None => host_vec(&self.w_dec)?,
            };
            let xs = match &x_host {
                Some(v) => v,
                None => unreachable!("x is on the host for the TopK kinds"),
            };
            let a = aux::aux_k(&aux::AuxInput {
                pre: &pre,
                n,
                dead: &dead,
                k_aux,
                coeff,
                err: &err,
                w_dec: &w,
                x: xs,
            });
            aux_loss = a.loss;
            w_dec = (w_dec + Tensor::from_vec(a.w_dec, (n, d), dev)?)?;
            w_enc = (w_enc + Tensor::from_vec(a.w_enc_t, (n, di), dev)?.t()?)?;
            g_b.iter_mut().zip(&a.b_enc).for_each(|(g, a)| *g += a);
        }
        Ok(Gradients {
            w_enc,
            w_dec,
            b_enc: Tensor::from_vec(g_b, n, dev)?,
            b_dec,
            log_threshold,
            w_skip,
            loss: mse + inner + penalty + aux_loss,
            aux_loss,
            mse,
            fvu: if var > 0.0 { sse / var } else { f64::NAN },
            l0,
            fired,
        })
    }
}
