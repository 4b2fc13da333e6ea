//! The logit lens and direct logit attribution of one prompt (token ids), on any
//! [`Transformer`]: what `engram lens` runs per prompt, usable from the library.
//!
//! - [`logit_lens`]: every layer's residual stream (`blocks.{l}.hook_resid_pre` for layer `l`,
//!   and `blocks.{L-1}.hook_resid_post` as layer `L`) through [`Transformer::unembed`] (the final
//!   norm with its own scale at each position, `W_U`, the final softcap). Layer `L` is the
//!   model's own logits.
//! - [`direct_logit_attribution`]: the last position's residual stream split into its
//!   components (`hook_embed`, `hook_pos_embed`, every head's `attn.hook_result`, each layer's
//!   `b_O`, every `hook_mlp_out`), each projected on a logit direction `u` through the final
//!   norm with its scale folded in (TransformerLens' `apply_ln_to_stack`: components are
//!   centred for LayerNorm and divided by the final norm's actual scale). With Gemma 2/3's and
//!   OLMo-2's post-attention norms the heads' results are also scaled by that norm's own factor,
//!   so the components sum to the logit difference before any final softcap exactly, plus the
//!   final LayerNorm bias' term.

use candle_core::{DType, IndexOp, Tensor};

use crate::hooks::{HookPoint, Hooks, Positions};
use crate::model::config::NormKind;
use crate::model::{to_vec_f32, Batch, LogitsAt, RunOptions, Transformer};
use crate::Result;

/// One (layer, position) of the logit lens.
#[derive(Clone, Debug)]
pub struct LensCell {
    /// 0..=n_layers (layer `n_layers` is the final residual stream).
    pub layer: usize,
    pub position: usize,
    /// The token read at the next position (the target at the last position).
    pub next_id: u32,
    /// 1-based rank of `next_id` among the lens logits (1 = top).
    pub rank: u32,
    pub logprob: f64,
    /// The `k` most likely tokens with their probabilities, most likely first.
    pub top: Vec<(u32, f64)>,
}

/// The hook name a lens layer reads.
pub fn lens_hook(layer: usize, n_layers: usize) -> String {
    if layer < n_layers {
        HookPoint::ResidPre(layer).name()
    } else {
        HookPoint::ResidPost(n_layers - 1).name()
    }
}

/// The logit lens of `ids` (one prompt): `n_layers + 1` layers × `ids.len()` positions, the
/// next token at each position (and at the last one `target`, or without one the model's own
/// top prediction), the top `k` tokens. The target is the last cell's `next_id`.
pub fn logit_lens(
    t: &Transformer,
    ids: &[u32],
    target: Option<u32>,
    k: usize,
) -> Result<Vec<LensCell>> {
    let n = t.cfg.n_layers;
    let mut points: Vec<HookPoint> = (0..n).map(HookPoint::ResidPre).collect();
    points.push(HookPoint::ResidPost(n - 1));
    let mut hooks = Hooks::capture_points(&points);
    let opts = RunOptions {
        logits: LogitsAt::None,
        stop_at_layer: None,
    };
    t.forward_with(&Batch::single(ids)?, &mut hooks, opts)?;
    // Log-probabilities `[t][vocab]` of one layer's residual stream.
    let lens = |p: HookPoint| -> Result<Vec<Vec<f32>>> {
        let x = hooks.cache.expect(p)?;
        let lp = crate::model::transformer::log_softmax(&t.unembed(x)?.i(0)?)?;
        Ok(lp.to_dtype(DType::F32)?.to_vec2::<f32>()?)
    };
    // The final layer first: it is the model's own prediction, the default target.
    let last = lens(points[n])?;
    let target = match target {
        Some(id) => id,
        None => top_k(&last[ids.len() - 1], 1)[0].0,
    };
    let mut next: Vec<u32> = ids[1..].to_vec();
    next.push(target);
    let mut cells = Vec::with_capacity((n + 1) * ids.len());
    for (layer, p) in points.iter().enumerate() {
        let lp = if layer == n { last.clone() } else { lens(*p)? };
        for (position, row) in lp.iter().enumerate() {
            let id = next[position];
            let v = row[id as usize];
            let rank = 1 + row.iter().filter(|&&x| x > v).count() as u32;
            cells.push(LensCell {
                layer,
                position,
                next_id: id,
                rank,
                logprob: v as f64,
                top: top_k(row, k),
            });
        }
    }
    Ok(cells)
}

/// The `k` largest entries of log-probabilities `row` as (id, probability), largest first
/// (ties by id).
fn top_k(row: &[f32], k: usize) -> Vec<(u32, f64)> {
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    let k = k.min(idx.len());
    let cmp = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx.into_iter()
        .map(|i| (i, (row[i as usize] as f64).exp()))
        .collect()
}

/// What a DLA component is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComponentKind {
    Embed,
    PosEmbed,
    Head,
    AttnBias,
    Mlp,
    /// The final LayerNorm's bias (GPT-2, GPT-NeoX): `b · u`.
    FinalBias,
}

impl ComponentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentKind::Embed => "embed",
            ComponentKind::PosEmbed => "pos_embed",
            ComponentKind::Head => "head",
            ComponentKind::AttnBias => "attn_bias",
            ComponentKind::Mlp => "mlp",
            ComponentKind::FinalBias => "final_bias",
        }
    }
}

/// One component's direct logit attribution.
#[derive(Clone, Debug)]
pub struct Component {
    pub kind: ComponentKind,
    pub layer: Option<usize>,
    pub head: Option<usize>,
    pub dla: f64,
}

impl Component {
    /// `embed`, `pos_embed`, `L3H2`, `L3 attn bias`, `L3 mlp`, `final bias`.
    pub fn label(&self) -> String {
        match (self.kind, self.layer, self.head) {
            (ComponentKind::Head, Some(l), Some(h)) => format!("L{l}H{h}"),
            (ComponentKind::AttnBias, Some(l), _) => format!("L{l} attn bias"),
            (ComponentKind::Mlp, Some(l), _) => format!("L{l} mlp"),
            (ComponentKind::FinalBias, ..) => "final bias".into(),
            (k, ..) => k.as_str().into(),
        }
    }
}

/// The direct logit attribution of the last position of one prompt.
#[derive(Clone, Debug)]
pub struct Dla {
    pub components: Vec<Component>,
    /// `u · ln_final(resid)` at the last position: the logit difference before the final
    /// softcap (what the components sum to).
    pub logit_diff: f64,
}

impl Dla {
    pub fn sum(&self) -> f64 {
        self.components.iter().map(|c| c.dla).sum()
    }
}

/// The logit direction `W_U[target] − W_U[baseline]`, or `W_U[target] − mean_v W_U[v]` without
/// a baseline (the target's logit relative to the mean logit): `[d_model]` in f64.
pub fn logit_direction(t: &Transformer, target: u32, baseline: Option<u32>) -> Result<Vec<f64>> {
    let rows = t.unembed_rows();
    let row = |i: u32| -> Result<Vec<f64>> {
        if i as usize >= t.cfg.vocab_size {
            crate::bail!(
                "token id {i} is out of the vocabulary ({})",
                t.cfg.vocab_size
            );
        }
        f64s(&rows.i(i as usize)?)
    };
    let a = row(target)?;
    let b = match baseline {
        Some(b) => row(b)?,
        None => f64s(&rows.to_dtype(DType::F32)?.mean(0)?)?,
    };
    Ok(a.iter().zip(&b).map(|(x, y)| x - y).collect())
}

fn f64s(t: &Tensor) -> Result<Vec<f64>> {
    Ok(to_vec_f32(t)?.into_iter().map(f64::from).collect())
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Direct logit attribution of `ids`' last position to the direction `u`
/// ([`logit_direction`]).
pub fn direct_logit_attribution(t: &Transformer, ids: &[u32], u: &[f64]) -> Result<Dla> {
    let cfg = &t.cfg;
    let n = cfg.n_layers;
    if u.len() != cfg.d_model {
        crate::bail!(
            "the logit direction has {} dims, d_model is {}",
            u.len(),
            cfg.d_model
        );
    }
    let mut points = vec![
        HookPoint::Embed,
        HookPoint::ResidPost(n - 1),
        HookPoint::LnFinal,
    ];
    if t.w_pos().is_some() {
        points.push(HookPoint::PosEmbed);
    }
    for l in 0..n {
        points.extend([HookPoint::Result(l), HookPoint::MlpOut(l)]);
    }
    let mut hooks = Hooks::capture_points(&points).at_positions(Positions::Last(1));
    let opts = RunOptions {
        logits: LogitsAt::None,
        stop_at_layer: None,
    };
    t.forward_with(&Batch::single(ids)?, &mut hooks, opts)?;
    let cache = &hooks.cache;
    let vec_at = |p: HookPoint| -> Result<Vec<f64>> { f64s(cache.expect(p)?) };

    // The final norm, folded: dla(c) = s · (w ⊙ u) · (c − [mean c]).
    let s = to_vec_f32(&t.norm_scale(cache.expect(HookPoint::ResidPost(n - 1))?)?)?[0] as f64;
    let wu: Vec<f64> = f64s(t.final_norm_weight())?
        .iter()
        .zip(u)
        .map(|(w, u)| w * u)
        .collect();
    let centre = cfg.norm == NormKind::Layer;
    let project = |c: &[f64]| -> f64 {
        let m = if centre {
            c.iter().sum::<f64>() / c.len() as f64
        } else {
            0.0
        };
        s * c.iter().zip(&wu).map(|(x, w)| (x - m) * w).sum::<f64>()
    };
    let comp = |kind, layer, head, dla| Component {
        kind,
        layer,
        head,
        dla,
    };
    let mut out = vec![comp(
        ComponentKind::Embed,
        None,
        None,
        project(&vec_at(HookPoint::Embed)?),
    )];
    if t.w_pos().is_some() {
        let d = project(&vec_at(HookPoint::PosEmbed)?);
        out.push(comp(ComponentKind::PosEmbed, None, None, d));
    }
    let d = cfg.d_model;
    for l in 0..n {
        let res = vec_at(HookPoint::Result(l))?; // [1, 1, heads, d]
        let heads: Vec<&[f64]> = res.chunks(d).collect();
        let bias = t.b_o(l)?.map(|b| f64s(&b)).transpose()?;
        // Post-attention norm (RMS): attn_out = w ⊙ attn · s(attn), attn = Σ_h result_h + b_O.
        let post = match t.post_attn_norm_weight(l)? {
            Some(w) => {
                if cfg.norm != NormKind::Rms {
                    crate::bail!("DLA: a post-attention LayerNorm is not supported");
                }
                let mut attn = vec![0f64; d];
                for h in heads.iter().copied().chain(bias.as_deref()) {
                    attn.iter_mut().zip(h).for_each(|(a, x)| *a += x);
                }
                let sp = 1.0 / (dot(&attn, &attn) / d as f64 + cfg.norm_eps).sqrt();
                Some(f64s(&w)?.into_iter().map(|w| w * sp).collect::<Vec<f64>>())
            }
            None => None,
        };
        let scaled = |c: &[f64]| -> Vec<f64> {
            match &post {
                Some(p) => c.iter().zip(p).map(|(x, p)| x * p).collect(),
                None => c.to_vec(),
            }
        };
        for (h, c) in heads.iter().enumerate() {
            out.push(comp(
                ComponentKind::Head,
                Some(l),
                Some(h),
                project(&scaled(c)),
            ));
        }
        if let Some(b) = &bias {
            out.push(comp(
                ComponentKind::AttnBias,
                Some(l),
                None,
                project(&scaled(b)),
            ));
        }
        let m = project(&vec_at(HookPoint::MlpOut(l))?);
        out.push(comp(ComponentKind::Mlp, Some(l), None, m));
    }
    if let Some(b) = t.final_norm_bias() {
        out.push(comp(
            ComponentKind::FinalBias,
            None,
            None,
            dot(&f64s(b)?, u),
        ));
    }
    let logit_diff = dot(&vec_at(HookPoint::LnFinal)?, u);
    Ok(Dla {
        components: out,
        logit_diff,
    })
}
