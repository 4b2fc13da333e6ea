//! Entropy neurons: last-layer MLP neurons among the largest ‖w_out‖ whose output direction has
//! the lowest variance of cosine with the (final-norm-folded) unembedding rows, i.e. that move
//! every logit about equally.

use candle_core::{DType, Tensor, D};

use crate::model::Model;
use crate::probes::directions::DirectionsParams;
use crate::Result;

#[derive(Clone, Debug)]
pub struct EntropyNeuron {
    pub neuron: usize,
    pub w_out_norm: f64,
    /// Variance over the vocabulary of cos(w_out, W_U column).
    pub cos_var: f64,
    pub selected: bool,
}

#[derive(Clone, Debug)]
pub struct EntropyResult {
    pub layer: usize,
    /// Every last-layer neuron in the top `entropy_top_frac` by ‖w_out‖.
    pub candidates: Vec<EntropyNeuron>,
    /// The selected neurons (ascending variance).
    pub selected: Vec<usize>,
}

pub fn entropy(model: &Model, params: &DirectionsParams) -> Result<EntropyResult> {
    let cfg = model.cfg();
    let layer = cfg.n_layers - 1;
    let w_out = model.w_out(layer)?.to_dtype(DType::F32)?; // [d_mlp, d]
    let norms: Vec<f32> = w_out.sqr()?.sum(D::Minus1)?.sqrt()?.to_vec1()?;
    let mut order: Vec<usize> = (0..norms.len()).collect();
    order.sort_by(|a, b| norms[*b].total_cmp(&norms[*a]));
    let n_top =
        ((norms.len() as f64 * params.entropy_top_frac).ceil() as usize).clamp(1, norms.len());
    let top: Vec<usize> = order[..n_top].to_vec();
    // Effective unembedding: rows of W_U with the final norm's weight folded in, unit length.
    let nf = model.final_norm_weight().to_dtype(DType::F32)?;
    let u = model
        .unembed_rows()
        .to_dtype(DType::F32)?
        .broadcast_mul(&nf.unsqueeze(0)?)?;
    let u = u.broadcast_div(
        &u.sqr()?
            .sum_keepdim(D::Minus1)?
            .sqrt()?
            .clamp(1e-12, f64::MAX)?,
    )?;
    let mut vars = vec![0f64; n_top];
    for (ci, chunk) in top.chunks(64).enumerate() {
        let idx = Tensor::from_vec(
            chunk.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            chunk.len(),
            w_out.device(),
        )?;
        let w = w_out.index_select(&idx, 0)?; // [c, d]
        let w = w.broadcast_div(
            &w.sqr()?
                .sum_keepdim(D::Minus1)?
                .sqrt()?
                .clamp(1e-12, f64::MAX)?,
        )?;
        let cos = u.matmul(&w.t()?)?; // [V, c]
        let mean = cos.mean_keepdim(0)?;
        let var: Vec<f32> = cos.broadcast_sub(&mean)?.sqr()?.mean(0)?.to_vec1()?;
        for (j, v) in var.iter().enumerate() {
            vars[ci * 64 + j] = *v as f64;
        }
    }
    let mut by_var: Vec<usize> = (0..n_top).collect();
    by_var.sort_by(|a, b| vars[*a].total_cmp(&vars[*b]));
    let k = params.entropy_k.min(n_top);
    let selected: Vec<usize> = by_var[..k].iter().map(|&i| top[i]).collect();
    let candidates = top
        .iter()
        .enumerate()
        .map(|(i, &n)| EntropyNeuron {
            neuron: n,
            w_out_norm: norms[n] as f64,
            cos_var: vars[i],
            selected: selected.contains(&n),
        })
        .collect();
    Ok(EntropyResult {
        layer,
        candidates,
        selected,
    })
}
