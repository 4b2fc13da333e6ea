//! Hook points, filters, capture and interventions.
//!
//! Hook names and shapes follow TransformerLens:
//! - `hook_embed`, `hook_pos_embed` (learned absolute positions, GPT-2 only; the first
//!   `resid_pre` is their sum), `blocks.{l}.hook_resid_pre|hook_resid_mid|hook_resid_post`,
//!   `blocks.{l}.hook_attn_out`, `blocks.{l}.hook_mlp_out`: `[batch, pos, d_model]`
//! - `blocks.{l}.attn.hook_q|hook_rot_q|hook_z|hook_result`: `[batch, pos, head, d_head]`
//!   (`hook_result` is `[batch, pos, head, d_model]`: each head's contribution through W_O)
//! - `blocks.{l}.attn.hook_k|hook_v|hook_rot_k`: `[batch, pos, kv_head, d_head]`
//! - `blocks.{l}.attn.hook_attn_scores|hook_pattern`: `[batch, head, query, key]`
//! - `blocks.{l}.mlp.hook_pre|hook_pre_linear|hook_post`: `[batch, pos, d_mlp]`
//!   (gate projection, up projection, and act(gate)·up = the input of down_proj). Ungated MLPs
//!   (GPT-2, GPT-NeoX): `hook_pre` = W_in·x + b_in, `hook_post` = act(hook_pre), and no
//!   `hook_pre_linear`, as in TransformerLens.
//! - `blocks.{l}.ln2.hook_normalized`: `[batch, pos, d_model]`, the MLP's input: its pre-norm
//!   applied, weight (and bias) included, as TransformerLens without folded norms; OLMo-2, which
//!   has no MLP pre-norm, gives `resid_mid` there
//! - `ln_final.hook_normalized`: `[batch, pos, d_model]`
//!
//! With Gemma 2/3's sandwich norms, `hook_attn_out` / `hook_mlp_out` are the block's contributions
//! to the residual stream (after the post-norms), so `resid_mid = resid_pre + attn_out` and
//! `resid_post = resid_mid + mlp_out` hold for every architecture; OLMo-2's post-norms likewise.
//! With parallel attention + MLP (GPT-NeoX) the MLP reads `ln2(resid_pre)`, and `resid_mid` is
//! still defined as `resid_pre + attn_out` (TransformerLens has no resid_mid there; editing it
//! changes resid_post but not the MLP's input). With q/k norms (Gemma 3, Qwen3, OLMo-2),
//! `hook_q` / `hook_k` are after the norm and before rotary embedding. Without rotary
//! embeddings (GPT-2) `hook_rot_q` / `hook_rot_k` equal `hook_q` / `hook_k`; with partial rotary
//! (NeoX `rotary_pct`, Phi-3 `partial_rotary_factor`) only the first dims of each head turn.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use candle_core::{Device, Tensor, Var};

use crate::{Error, Result};

mod edit;
pub use edit::{Edit, HookFn, Intervention};

/// A named point in the forward pass where activations can be captured or edited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookPoint {
    Embed,
    PosEmbed,
    ResidPre(usize),
    Q(usize),
    K(usize),
    V(usize),
    RotQ(usize),
    RotK(usize),
    AttnScores(usize),
    Pattern(usize),
    Z(usize),
    Result(usize),
    AttnOut(usize),
    ResidMid(usize),
    /// The MLP's input: its pre-norm applied (weights included), TransformerLens's
    /// `ln2.hook_normalized`; a transcoder's input.
    Ln2(usize),
    MlpPre(usize),
    MlpPreLinear(usize),
    MlpPost(usize),
    MlpOut(usize),
    ResidPost(usize),
    LnFinal,
}

/// How a hook point's tensor is laid out; tells interventions which axis holds positions and
/// which holds the "units" (heads or features) they address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `[batch, pos, features]`: residual stream, MLP neurons. Units = features.
    Stream,
    /// `[batch, pos, head, d]`. Units = heads.
    Heads,
    /// `[batch, head, query, key]`. Units = heads; positions = queries.
    Attention,
}

impl Layout {
    /// Axis along which positions run.
    pub fn pos_axis(self) -> usize {
        match self {
            Layout::Stream | Layout::Heads => 1,
            Layout::Attention => 2,
        }
    }
    /// Axis along which units (heads / features) run.
    pub fn unit_axis(self) -> usize {
        match self {
            Layout::Stream => 2,
            Layout::Heads => 2,
            Layout::Attention => 1,
        }
    }
}

type BlockHook = (&'static str, fn(usize) -> HookPoint);

const BLOCK_HOOKS: &[BlockHook] = &[
    ("hook_resid_pre", HookPoint::ResidPre),
    ("attn.hook_q", HookPoint::Q),
    ("attn.hook_k", HookPoint::K),
    ("attn.hook_v", HookPoint::V),
    ("attn.hook_rot_q", HookPoint::RotQ),
    ("attn.hook_rot_k", HookPoint::RotK),
    ("attn.hook_attn_scores", HookPoint::AttnScores),
    ("attn.hook_pattern", HookPoint::Pattern),
    ("attn.hook_z", HookPoint::Z),
    ("attn.hook_result", HookPoint::Result),
    ("hook_attn_out", HookPoint::AttnOut),
    ("hook_resid_mid", HookPoint::ResidMid),
    ("ln2.hook_normalized", HookPoint::Ln2),
    ("mlp.hook_pre", HookPoint::MlpPre),
    ("mlp.hook_pre_linear", HookPoint::MlpPreLinear),
    ("mlp.hook_post", HookPoint::MlpPost),
    ("hook_mlp_out", HookPoint::MlpOut),
    ("hook_resid_post", HookPoint::ResidPost),
];

impl HookPoint {
    /// The layer this point belongs to, if any.
    pub fn layer(self) -> Option<usize> {
        use HookPoint::*;
        match self {
            Embed | PosEmbed | LnFinal => None,
            ResidPre(l) | Q(l) | K(l) | V(l) | RotQ(l) | RotK(l) | AttnScores(l) | Pattern(l)
            | Z(l) | Result(l) | AttnOut(l) | ResidMid(l) | Ln2(l) | MlpPre(l)
            | MlpPreLinear(l) | MlpPost(l) | MlpOut(l) | ResidPost(l) => Some(l),
        }
    }

    /// The suffix after `blocks.{l}.` (or the whole name for non-block points).
    fn suffix(self) -> &'static str {
        use HookPoint::*;
        match self {
            Embed => "hook_embed",
            PosEmbed => "hook_pos_embed",
            LnFinal => "ln_final.hook_normalized",
            ResidPre(_) => "hook_resid_pre",
            Q(_) => "attn.hook_q",
            K(_) => "attn.hook_k",
            V(_) => "attn.hook_v",
            RotQ(_) => "attn.hook_rot_q",
            RotK(_) => "attn.hook_rot_k",
            AttnScores(_) => "attn.hook_attn_scores",
            Pattern(_) => "attn.hook_pattern",
            Z(_) => "attn.hook_z",
            Result(_) => "attn.hook_result",
            AttnOut(_) => "hook_attn_out",
            ResidMid(_) => "hook_resid_mid",
            Ln2(_) => "ln2.hook_normalized",
            MlpPre(_) => "mlp.hook_pre",
            MlpPreLinear(_) => "mlp.hook_pre_linear",
            MlpPost(_) => "mlp.hook_post",
            MlpOut(_) => "hook_mlp_out",
            ResidPost(_) => "hook_resid_post",
        }
    }

    /// The TransformerLens name, e.g. `blocks.3.attn.hook_pattern`.
    pub fn name(self) -> String {
        match self.layer() {
            Some(l) => format!("blocks.{l}.{}", self.suffix()),
            None => self.suffix().to_string(),
        }
    }

    pub fn layout(self) -> Layout {
        use HookPoint::*;
        match self {
            Q(_) | K(_) | V(_) | RotQ(_) | RotK(_) | Z(_) | Result(_) => Layout::Heads,
            AttnScores(_) | Pattern(_) => Layout::Attention,
            _ => Layout::Stream,
        }
    }

    /// Every hook point of a model with `n_layers` layers, in forward order.
    pub fn all(n_layers: usize) -> Vec<HookPoint> {
        let mut v = vec![HookPoint::Embed, HookPoint::PosEmbed];
        for l in 0..n_layers {
            v.extend(BLOCK_HOOKS.iter().map(|(_, f)| f(l)));
        }
        v.push(HookPoint::LnFinal);
        v
    }

    /// Parse a name and check its layer against the model.
    pub fn parse_for(name: &str, n_layers: usize) -> Result<HookPoint> {
        let p: HookPoint = name.parse()?;
        if let Some(l) = p.layer() {
            if l >= n_layers {
                return Err(Error::LayerOutOfRange { layer: l, n_layers });
            }
        }
        Ok(p)
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for HookPoint {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "hook_embed" => return Ok(HookPoint::Embed),
            "hook_pos_embed" => return Ok(HookPoint::PosEmbed),
            "ln_final.hook_normalized" => return Ok(HookPoint::LnFinal),
            _ => {}
        }
        let rest = s
            .strip_prefix("blocks.")
            .ok_or_else(|| Error::UnknownHook(s.to_string()))?;
        let (layer, suffix) = rest
            .split_once('.')
            .ok_or_else(|| Error::UnknownHook(s.to_string()))?;
        let layer: usize = layer
            .parse()
            .map_err(|_| Error::UnknownHook(s.to_string()))?;
        BLOCK_HOOKS
            .iter()
            .find(|(name, _)| *name == suffix)
            .map(|(_, f)| f(layer))
            .ok_or_else(|| Error::UnknownHook(s.to_string()))
    }
}

/// Glob match with `*` (any run of characters) and `?` (one character).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Which hook points to capture: glob patterns over TransformerLens names.
#[derive(Clone, Debug, Default)]
pub struct HookFilter {
    patterns: Vec<String>,
}

impl HookFilter {
    /// Patterns such as `blocks.*.attn.hook_pattern`; comma-separated lists are split.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Self {
        let patterns = patterns
            .iter()
            .flat_map(|p| p.as_ref().split(','))
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect();
        HookFilter { patterns }
    }

    pub fn points(points: &[HookPoint]) -> Self {
        HookFilter {
            patterns: points.iter().map(|p| p.name()).collect(),
        }
    }

    pub fn matches(&self, point: HookPoint) -> bool {
        let name = point.name();
        self.patterns.iter().any(|p| glob_match(p, &name))
    }

    /// Resolve against a model: the points matched, and an error naming any pattern that matches
    /// nothing (an unknown hook, or a layer out of range).
    pub fn resolve(&self, n_layers: usize) -> Result<Vec<HookPoint>> {
        let all = HookPoint::all(n_layers);
        for p in &self.patterns {
            if !all.iter().any(|h| glob_match(p, &h.name())) {
                // Give the most specific error we can.
                if !p.contains('*') && !p.contains('?') {
                    HookPoint::parse_for(p, n_layers)?;
                }
                return Err(Error::UnknownHook(p.clone()));
            }
        }
        Ok(all.into_iter().filter(|h| self.matches(*h)).collect())
    }
}

/// Which positions an intervention or a capture applies to (on the padded position axis).
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Positions {
    #[default]
    All,
    /// Explicit indices into the (padded) sequence.
    Indices(Vec<usize>),
    /// The last `n` positions (the same for every row under left padding).
    Last(usize),
}

impl Positions {
    pub(crate) fn indices(&self, t: usize) -> Option<Vec<usize>> {
        match self {
            Positions::All => None,
            Positions::Indices(v) => Some(v.iter().copied().filter(|&i| i < t).collect()),
            Positions::Last(n) => Some((t.saturating_sub(*n)..t).collect()),
        }
    }
}

/// Captured activations, keyed by hook point.
#[derive(Clone, Debug, Default)]
pub struct ActivationCache {
    pub map: BTreeMap<HookPoint, Tensor>,
}

impl ActivationCache {
    pub fn get(&self, point: HookPoint) -> Option<&Tensor> {
        self.map.get(&point)
    }

    /// Look up by TransformerLens name.
    pub fn get_named(&self, name: &str) -> Result<&Tensor> {
        let p: HookPoint = name.parse()?;
        self.map
            .get(&p)
            .ok_or_else(|| Error::msg(format!("`{name}` was not captured")))
    }

    /// Like [`ActivationCache::get`] but an error when absent.
    pub fn expect(&self, point: HookPoint) -> Result<&Tensor> {
        self.map
            .get(&point)
            .ok_or_else(|| Error::msg(format!("`{point}` was not captured")))
    }

    pub fn take(&mut self, point: HookPoint) -> Option<Tensor> {
        self.map.remove(&point)
    }

    pub fn names(&self) -> Vec<String> {
        self.map.keys().map(|p| p.name()).collect()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The hook set handed to a forward pass: what to capture and which interventions to apply.
/// An empty set costs one branch per hook point.
#[derive(Clone, Default)]
pub struct Hooks {
    filter: Option<HookFilter>,
    capture_positions: Positions,
    interventions: Vec<Intervention>,
    /// Captured activations of the last forward pass.
    pub cache: ActivationCache,
    /// Points wanted by capture or interventions (resolved at the start of a forward pass).
    wanted: Vec<HookPoint>,
    n_layers: usize,
    /// Where gradients are asked for ([`Hooks::with_grads`]).
    grad_filter: Option<HookFilter>,
    grad_points: Vec<HookPoint>,
    /// The zero variables added at the gradient points in the last forward pass: the gradient
    /// of a metric with respect to one is the gradient at its point.
    pub(crate) grad_vars: Vec<(HookPoint, Var)>,
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("filter", &self.filter)
            .field("interventions", &self.interventions)
            .field("grads", &self.grad_filter)
            .finish()
    }
}

impl Hooks {
    /// No capture, no interventions.
    pub fn none() -> Self {
        Self::default()
    }

    /// Capture what `filter` matches.
    pub fn capture(filter: HookFilter) -> Self {
        Hooks {
            filter: Some(filter),
            ..Self::default()
        }
    }

    /// Capture exactly these points.
    pub fn capture_points(points: &[HookPoint]) -> Self {
        Self::capture(HookFilter::points(points))
    }

    /// Keep only some positions of captured tensors.
    pub fn at_positions(mut self, positions: Positions) -> Self {
        self.capture_positions = positions;
        self
    }

    pub fn with(mut self, intervention: Intervention) -> Self {
        self.interventions.push(intervention);
        self
    }

    pub fn add(&mut self, intervention: Intervention) {
        self.interventions.push(intervention);
    }

    /// Also make the pass differentiable at what `filter` matches: each matched activation gets a
    /// zero variable added, so that a backward pass of a metric gives the gradient there
    /// ([`crate::model::Model::gradients_with`]). Operations after the first such point run
    /// through candle ops that have a backward (the fused kernels are skipped there).
    pub fn with_grads(mut self, filter: HookFilter) -> Self {
        self.grad_filter = Some(filter);
        self.wanted.clear();
        self
    }

    /// Whether the pass is asked for gradients.
    pub fn wants_grads(&self) -> bool {
        self.grad_filter.is_some()
    }

    pub fn interventions(&self) -> &[Intervention] {
        &self.interventions
    }

    pub fn is_empty(&self) -> bool {
        self.filter.is_none() && self.interventions.is_empty() && self.grad_filter.is_none()
    }

    /// Called by the forward pass before it runs: clears the cache and resolves the filter.
    pub(crate) fn begin(&mut self, n_layers: usize) -> Result<()> {
        self.cache.map.clear();
        self.grad_vars.clear();
        if self.is_empty() {
            self.wanted.clear();
            return Ok(());
        }
        if self.n_layers != n_layers || self.wanted.is_empty() {
            let mut wanted = match &self.filter {
                Some(f) => f.resolve(n_layers)?,
                None => vec![],
            };
            for iv in &self.interventions {
                if let Some(l) = iv.point.layer() {
                    if l >= n_layers {
                        return Err(Error::LayerOutOfRange { layer: l, n_layers });
                    }
                }
                wanted.push(iv.point);
            }
            self.grad_points = match &self.grad_filter {
                Some(f) => f.resolve(n_layers)?,
                None => vec![],
            };
            wanted.extend(&self.grad_points);
            wanted.sort();
            wanted.dedup();
            self.wanted = wanted;
            self.n_layers = n_layers;
        }
        Ok(())
    }

    /// Whether the pass must use the tensor this point returns: an intervention edits it, or a
    /// gradient is asked for there (capture alone does not count).
    pub fn edits(&self, point: HookPoint) -> bool {
        self.interventions.iter().any(|iv| iv.point == point) || self.grad_points.contains(&point)
    }

    /// Whether the forward pass must materialise this point.
    #[inline]
    pub fn wants(&self, point: HookPoint) -> bool {
        !self.wanted.is_empty() && self.wanted.binary_search(&point).is_ok()
    }

    /// Run interventions then capture at `point`; returns the (possibly edited) tensor.
    #[inline]
    pub fn apply(&mut self, point: HookPoint, x: Tensor) -> Result<Tensor> {
        if !self.wants(point) {
            return Ok(x);
        }
        self.apply_slow(point, x)
    }

    fn apply_slow(&mut self, point: HookPoint, mut x: Tensor) -> Result<Tensor> {
        for iv in self.interventions.iter().filter(|iv| iv.point == point) {
            x = iv.apply(&x)?;
        }
        if self.grad_points.contains(&point) {
            let var = Var::zeros(x.shape(), x.dtype(), x.device())?;
            x = (x + var.as_tensor())?;
            self.grad_vars.push((point, var));
        }
        if self.filter.as_ref().is_some_and(|f| f.matches(point)) {
            let axis = point.layout().pos_axis();
            let t = x.dim(axis)?;
            let kept = match self.capture_positions.indices(t) {
                None => x.clone(),
                Some(idx) => {
                    let idx = Tensor::from_vec(
                        idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                        idx.len(),
                        &Device::Cpu,
                    )?
                    .to_device(x.device())?;
                    // index_select needs a contiguous tensor (hook_result is a transpose).
                    x.contiguous()?.index_select(&idx, axis)?
                }
            };
            self.cache.map.insert(point, kept);
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::IndexOp;

    #[test]
    fn names_round_trip() {
        for p in HookPoint::all(3) {
            let back: HookPoint = p.name().parse().unwrap();
            assert_eq!(p, back, "{}", p.name());
        }
        assert_eq!(HookPoint::Pattern(2).name(), "blocks.2.attn.hook_pattern");
        assert_eq!(HookPoint::MlpPost(0).name(), "blocks.0.mlp.hook_post");
        assert!("blocks.1.attn.hook_nope".parse::<HookPoint>().is_err());
        assert!("blocks.x.hook_resid_pre".parse::<HookPoint>().is_err());
        assert!(matches!(
            HookPoint::parse_for("blocks.9.hook_resid_post", 4),
            Err(Error::LayerOutOfRange { layer: 9, .. })
        ));
    }

    #[test]
    fn globs() {
        assert!(glob_match(
            "blocks.*.attn.hook_pattern",
            "blocks.12.attn.hook_pattern"
        ));
        assert!(!glob_match(
            "blocks.*.attn.hook_pattern",
            "blocks.12.attn.hook_z"
        ));
        assert!(glob_match("*", "hook_embed"));
        assert!(glob_match(
            "blocks.?.hook_resid_post",
            "blocks.3.hook_resid_post"
        ));
        assert!(!glob_match(
            "blocks.?.hook_resid_post",
            "blocks.13.hook_resid_post"
        ));
        let f = HookFilter::new(&["blocks.*.hook_resid_post,hook_embed"]);
        assert_eq!(f.resolve(2).unwrap().len(), 3);
        assert!(HookFilter::new(&["blocks.*.hook_nothing"])
            .resolve(2)
            .is_err());
        assert!(matches!(
            HookFilter::new(&["blocks.5.hook_resid_post"]).resolve(2),
            Err(Error::LayerOutOfRange { .. })
        ));
    }

    #[test]
    fn edits() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 24., &dev)?.reshape((1, 2, 3, 4))?; // [b, pos, head, d]
        let z = Intervention::zero_head(0, 1).apply(&x)?;
        let v: Vec<f32> = z.i((0, 0, 1))?.to_vec1()?;
        assert_eq!(v, vec![0.0; 4]);
        assert_eq!(z.i((0, 0, 0))?.to_vec1::<f32>()?, vec![0., 1., 2., 3.]);
        // Only the last position.
        let z = Intervention::zero_head(0, 1)
            .at(Positions::Last(1))
            .apply(&x)?;
        assert_eq!(z.i((0, 0, 1))?.to_vec1::<f32>()?, vec![4., 5., 6., 7.]);
        assert_eq!(z.i((0, 1, 1))?.to_vec1::<f32>()?, vec![0.0; 4]);
        // Mean-ablate head 2 with a fixed vector.
        let vals = Tensor::new(&[[9f32, 9., 9., 9.]], &dev)?;
        let s = Intervention::new(
            HookPoint::Z(0),
            Edit::Set {
                units: vec![2],
                values: vals,
            },
        )
        .apply(&x)?;
        assert_eq!(s.i((0, 1, 2))?.to_vec1::<f32>()?, vec![9.0; 4]);
        assert_eq!(s.i((0, 1, 1))?.to_vec1::<f32>()?, vec![16., 17., 18., 19.]);
        // Project out e0 from a stream tensor.
        let r = Tensor::new(&[[[1f32, 2., 3.]]], &dev)?;
        let p = Intervention::new(
            HookPoint::ResidPost(0),
            Edit::ProjectOut {
                direction: Tensor::new(&[2f32, 0., 0.], &dev)?,
            },
        )
        .apply(&r)?;
        assert_eq!(p.flatten_all()?.to_vec1::<f32>()?, vec![0., 2., 3.]);
        // Out-of-range unit is an error, not a panic.
        assert!(Intervention::zero_head(0, 7).apply(&x).is_err());
        Ok(())
    }
}
