//! Neurons as units of gate_proj (`mlp.hook_pre`), up_proj (`mlp.hook_pre_linear`) and
//! down_proj (`hook_mlp_out`), and their mean responses over a prompt's real tokens. Ungated
//! MLPs (GPT-2, GPT-NeoX) have one input projection: its units are `in` (W_in's outputs,
//! `mlp.hook_pre`, the pre-activation: zeroing one zeroes the GELU's output too) and `down`.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use serde::Serialize;

use crate::hooks::{Edit, HookPoint, Hooks, Intervention};
use crate::model::{Batch, LogitsAt, Model, RunOptions};
use crate::{Error, Result};

/// Which projection a neuron belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Kind {
    Gate,
    Up,
    /// The input projection of an ungated MLP (W_in).
    In,
    Down,
}

impl Kind {
    /// The kinds of a gated MLP.
    pub const ALL: [Kind; 3] = [Kind::Gate, Kind::Up, Kind::Down];
    /// The kinds of an ungated MLP.
    pub const UNGATED: [Kind; 2] = [Kind::In, Kind::Down];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Gate => "gate",
            Kind::Up => "up",
            Kind::In => "in",
            Kind::Down => "down",
        }
    }

    /// The hook point whose units are this kind's neurons.
    pub fn point(self, layer: usize) -> HookPoint {
        match self {
            Kind::Gate | Kind::In => HookPoint::MlpPre(layer),
            Kind::Up => HookPoint::MlpPreLinear(layer),
            Kind::Down => HookPoint::MlpOut(layer),
        }
    }
}

/// Global neuron ids: layer-major; within a layer gate units `0..d_mlp`, then up units, then
/// down units (`d_model`); for an ungated MLP `in` units `0..d_mlp`, then down units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct NeuronLayout {
    pub n_layers: usize,
    pub d_mlp: usize,
    pub d_model: usize,
    /// Gated MLP (gate, up, down) or not (in, down).
    pub gated: bool,
}

impl NeuronLayout {
    pub fn of(model: &Model) -> Self {
        let c = model.cfg();
        NeuronLayout {
            n_layers: c.n_layers,
            d_mlp: c.d_mlp,
            d_model: c.d_model,
            gated: c.gated_mlp,
        }
    }

    /// The kinds of neuron in each layer, in id order.
    pub fn kinds(&self) -> &'static [Kind] {
        if self.gated {
            &Kind::ALL
        } else {
            &Kind::UNGATED
        }
    }

    pub fn width(&self, kind: Kind) -> usize {
        match kind {
            Kind::Gate | Kind::Up | Kind::In => self.d_mlp,
            Kind::Down => self.d_model,
        }
    }

    fn offset(&self, kind: Kind) -> usize {
        let before = self.kinds().iter().take_while(|&&k| k != kind);
        before.map(|&k| self.width(k)).sum()
    }

    pub fn per_layer(&self) -> usize {
        self.kinds().iter().map(|&k| self.width(k)).sum()
    }

    pub fn total(&self) -> usize {
        self.n_layers * self.per_layer()
    }

    pub fn id(&self, layer: usize, kind: Kind, index: usize) -> usize {
        layer * self.per_layer() + self.offset(kind) + index
    }

    /// (layer, kind, unit index) of a global id.
    pub fn locate(&self, id: usize) -> (usize, Kind, usize) {
        let (layer, mut r) = (id / self.per_layer(), id % self.per_layer());
        for &k in self.kinds() {
            if r < self.width(k) {
                return (layer, k, r);
            }
            r -= self.width(k);
        }
        unreachable!("r < per_layer")
    }

    /// The hook points holding every neuron, in id order.
    pub fn points(&self) -> Vec<(usize, Kind, HookPoint)> {
        (0..self.n_layers)
            .flat_map(|l| self.kinds().iter().map(move |&k| (l, k, k.point(l))))
            .collect()
    }

    /// Interventions zeroing `ids` at every position: one `Edit::Zero` per (layer, kind).
    pub fn zero_interventions(&self, ids: &[usize]) -> Vec<Intervention> {
        let kinds = self.kinds();
        let mut groups: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
        for &id in ids {
            let (l, k, i) = self.locate(id);
            groups
                .entry((l, kinds.iter().position(|&x| x == k).unwrap_or(0)))
                .or_default()
                .push(i);
        }
        groups
            .into_iter()
            .map(|((l, k), mut units)| {
                units.sort_unstable();
                units.dedup();
                Intervention::new(kinds[k].point(l), Edit::Zero { units: Some(units) })
            })
            .collect()
    }

    /// A hook set that deactivates `ids`.
    pub fn deactivation_hooks(&self, ids: &[usize]) -> Hooks {
        let mut h = Hooks::none();
        for iv in self.zero_interventions(ids) {
            h.add(iv);
        }
        h
    }
}

/// Mean of `x` (`[batch, pos, d]`) over each row's positions from `pad_left[b]` on (the left
/// pads, and anything else to skip, come first): `[batch, d]` f32.
pub fn masked_mean(x: &Tensor, pad_left: &[usize]) -> Result<Tensor> {
    let (b, t, _) = x.dims3()?;
    if pad_left.len() != b {
        crate::bail!(
            "masked_mean: {} pad counts for a batch of {b}",
            pad_left.len()
        );
    }
    let mut w = vec![0f32; b * t];
    for (row, &pad) in pad_left.iter().enumerate() {
        let n = t.saturating_sub(pad).max(1);
        for p in pad.min(t)..t {
            w[row * t + p] = 1.0 / n as f32;
        }
    }
    let w = Tensor::from_vec(w, (b, t, 1), x.device())?;
    Ok(x.to_dtype(DType::F32)?.broadcast_mul(&w)?.sum(1)?)
}

/// Per-prompt mean responses of every neuron (`[prompts][layout.total()]`, id order) for one
/// batch of token sequences (left-padded together; pads are excluded from the mean, and so is a
/// leading BOS unless `include_bos`).
pub fn prompt_responses(
    model: &Model,
    seqs: &[Vec<u32>],
    include_bos: bool,
) -> Result<Vec<Vec<f32>>> {
    let layout = NeuronLayout::of(model);
    let batch = Batch::new(seqs, model.pad_id())?;
    let bos = model.tokenizer.as_ref().and_then(|t| t.bos_id);
    let skip: Vec<usize> = seqs
        .iter()
        .zip(&batch.pad_left)
        .map(|(s, &pad)| {
            let drop_bos =
                !include_bos && s.len() > 1 && bos.is_some() && s.first() == bos.as_ref();
            pad + usize::from(drop_bos)
        })
        .collect();
    let points: Vec<HookPoint> = layout.points().iter().map(|p| p.2).collect();
    let mut hooks = Hooks::capture_points(&points);
    model.transformer.forward_with(
        &batch,
        &mut hooks,
        RunOptions {
            logits: LogitsAt::None,
            stop_at_layer: None,
        },
    )?;
    let mut out = vec![Vec::with_capacity(layout.total()); seqs.len()];
    for (_, _, p) in layout.points() {
        let x = hooks
            .cache
            .take(p)
            .ok_or_else(|| Error::msg(format!("`{p}` was not captured")))?;
        let m: Vec<Vec<f32>> = masked_mean(&x, &skip)?.to_vec2()?;
        for (o, row) in out.iter_mut().zip(m) {
            o.extend_from_slice(&row);
        }
    }
    Ok(out)
}
