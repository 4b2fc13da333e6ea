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
use std::sync::Arc;

use candle_core::{DType, Device, IndexOp, Tensor, D};

use crate::{Error, Result};

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
            | Z(l) | Result(l) | AttnOut(l) | ResidMid(l) | MlpPre(l) | MlpPreLinear(l)
            | MlpPost(l) | MlpOut(l) | ResidPost(l) => Some(l),
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
    fn indices(&self, t: usize) -> Option<Vec<usize>> {
        match self {
            Positions::All => None,
            Positions::Indices(v) => Some(v.iter().copied().filter(|&i| i < t).collect()),
            Positions::Last(n) => Some((t.saturating_sub(*n)..t).collect()),
        }
    }
}

/// A user closure for library users: receives the hook point and the tensor, returns the new one.
pub type HookFn = Arc<dyn Fn(HookPoint, &Tensor) -> Result<Tensor> + Send + Sync>;

/// What an intervention does to the tensor at its hook point.
#[derive(Clone)]
pub enum Edit {
    /// Zero some units (heads for head/attention layouts, features for stream layouts) or,
    /// with `None`, the whole tensor.
    Zero { units: Option<Vec<usize>> },
    /// Replace units with fixed values (mean ablation, clamping). `values` has shape
    /// `[units.len(), ...]` where `...` is the tensor's shape after the unit axis
    /// (`[d_head]` for heads, `[]` for neurons, `[query, key]` for attention patterns).
    Set { units: Vec<usize>, values: Tensor },
    /// Replace the activation with a tensor of the same shape (activation patching).
    Patch { value: Tensor },
    /// Add `scale · vector` along the last axis (steering).
    Add { vector: Tensor, scale: f64 },
    /// Remove the component along `direction` (any norm): x ← x − (x·d̂) d̂.
    ProjectOut { direction: Tensor },
    /// Clamp values into `[min, max]`.
    Clamp { min: f64, max: f64 },
    /// Anything else.
    Custom(HookFn),
}

impl fmt::Debug for Edit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Edit::Zero { units } => write!(f, "Zero({units:?})"),
            Edit::Set { units, .. } => write!(f, "Set({units:?})"),
            Edit::Patch { .. } => write!(f, "Patch"),
            Edit::Add { scale, .. } => write!(f, "Add(scale={scale})"),
            Edit::ProjectOut { .. } => write!(f, "ProjectOut"),
            Edit::Clamp { min, max } => write!(f, "Clamp({min}, {max})"),
            Edit::Custom(_) => write!(f, "Custom"),
        }
    }
}

/// An edit applied at a hook point, optionally only at some positions.
#[derive(Clone, Debug)]
pub struct Intervention {
    pub point: HookPoint,
    pub edit: Edit,
    pub positions: Positions,
}

impl Intervention {
    pub fn new(point: HookPoint, edit: Edit) -> Self {
        Intervention {
            point,
            edit,
            positions: Positions::All,
        }
    }

    pub fn at(mut self, positions: Positions) -> Self {
        self.positions = positions;
        self
    }

    /// Zero-ablate one head's output (its slice of `hook_z`). Works under grouped-query attention:
    /// only this query head is affected, not its kv group.
    pub fn zero_head(layer: usize, head: usize) -> Self {
        Self::new(
            HookPoint::Z(layer),
            Edit::Zero {
                units: Some(vec![head]),
            },
        )
    }

    /// Mean-ablate one head: replace its `hook_z` slice by `mean` (`[d_head]`, e.g. the head's
    /// mean output over a reference dataset).
    pub fn mean_ablate_head(layer: usize, head: usize, mean: Tensor) -> Result<Self> {
        Ok(Self::new(
            HookPoint::Z(layer),
            Edit::Set {
                units: vec![head],
                values: mean.unsqueeze(0)?,
            },
        ))
    }

    /// Zero one kv head's values (`hook_v`): under grouped-query attention this silences every
    /// query head of that group.
    pub fn zero_kv_head(layer: usize, kv_head: usize) -> Self {
        Self::new(
            HookPoint::V(layer),
            Edit::Zero {
                units: Some(vec![kv_head]),
            },
        )
    }

    /// Clamp one head's attention pattern to `pattern` (`[query, key]`), e.g. a perfect
    /// previous-token pattern.
    pub fn clamp_pattern(layer: usize, head: usize, pattern: Tensor) -> Result<Self> {
        Ok(Self::new(
            HookPoint::Pattern(layer),
            Edit::Set {
                units: vec![head],
                values: pattern.unsqueeze(0)?,
            },
        ))
    }

    /// Zero MLP neurons (`mlp.hook_post` units) of one layer.
    pub fn zero_neurons(layer: usize, neurons: Vec<usize>) -> Self {
        Self::new(
            HookPoint::MlpPost(layer),
            Edit::Zero {
                units: Some(neurons),
            },
        )
    }

    /// Apply the edit to `x` (the tensor at `self.point`).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let layout = self.point.layout();
        let edited = apply_edit(&self.edit, self.point, layout, x)?;
        let pos_axis = layout.pos_axis();
        let t = x.dim(pos_axis)?;
        match self.positions.indices(t) {
            None => Ok(edited),
            Some(idx) => {
                let mut m = vec![0f32; t];
                for i in idx {
                    m[i] = 1.0;
                }
                let mut shape = vec![1usize; x.rank()];
                shape[pos_axis] = t;
                let m = Tensor::from_vec(m, shape, x.device())?.to_dtype(x.dtype())?;
                Ok((x + (edited - x)?.broadcast_mul(&m)?)?)
            }
        }
    }
}

/// A `[1, .., U, ..]`-shaped 0/1 mask along the unit axis (1 = the unit is selected).
fn unit_mask(x: &Tensor, axis: usize, units: &[usize]) -> Result<Tensor> {
    let n = x.dim(axis)?;
    let mut m = vec![0f32; n];
    for &u in units {
        if u >= n {
            crate::bail!("unit {u} is out of range: the hook point has {n} units on axis {axis}");
        }
        m[u] = 1.0;
    }
    let mut shape = vec![1usize; x.rank()];
    shape[axis] = n;
    Ok(Tensor::from_vec(m, shape, x.device())?.to_dtype(x.dtype())?)
}

fn apply_edit(edit: &Edit, point: HookPoint, layout: Layout, x: &Tensor) -> Result<Tensor> {
    let axis = layout.unit_axis();
    Ok(match edit {
        Edit::Zero { units: None } => x.zeros_like()?,
        Edit::Zero { units: Some(units) } => {
            let keep = (1.0 - unit_mask(x, axis, units)?)?;
            x.broadcast_mul(&keep)?
        }
        Edit::Set { units, values } => {
            let sel = unit_mask(x, axis, units)?;
            let n = x.dim(axis)?;
            // Scatter `values` into a [n, rest...] tensor, then lift to x's rank.
            let rest: Vec<usize> = x.dims()[axis + 1..].to_vec();
            let values = values.to_dtype(x.dtype())?.to_device(x.device())?;
            let mut rows = Vec::with_capacity(n);
            for u in 0..n {
                match units.iter().position(|&v| v == u) {
                    Some(i) => rows.push(values.i(i)?.reshape(rest.clone())?),
                    None => rows.push(Tensor::zeros(rest.clone(), x.dtype(), x.device())?),
                }
            }
            let mut fill = Tensor::stack(&rows, 0)?;
            for _ in 0..axis {
                fill = fill.unsqueeze(0)?;
            }
            let keep = (1.0 - &sel)?;
            x.broadcast_mul(&keep)?
                .broadcast_add(&fill.broadcast_mul(&sel)?)?
        }
        Edit::Patch { value } => {
            if value.dims() != x.dims() {
                crate::bail!(
                    "patch for {point} has shape {:?}, the activation has {:?}",
                    value.dims(),
                    x.dims()
                );
            }
            value.to_dtype(x.dtype())?.to_device(x.device())?
        }
        Edit::Add { vector, scale } => {
            let v = (vector.to_dtype(DType::F32)? * *scale)?
                .to_dtype(x.dtype())?
                .to_device(x.device())?;
            x.broadcast_add(&v)?
        }
        Edit::ProjectOut { direction } => {
            let d = direction.to_dtype(DType::F32)?;
            let d = d.broadcast_div(&d.sqr()?.sum_all()?.sqrt()?)?;
            let d = d.to_dtype(x.dtype())?.to_device(x.device())?;
            let proj = x.broadcast_mul(&d)?.sum_keepdim(D::Minus1)?;
            (x - proj.broadcast_mul(&d)?)?
        }
        Edit::Clamp { min, max } => x.clamp(*min, *max)?,
        Edit::Custom(f) => f(point, x)?,
    })
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
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("filter", &self.filter)
            .field("interventions", &self.interventions)
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

    pub fn interventions(&self) -> &[Intervention] {
        &self.interventions
    }

    pub fn is_empty(&self) -> bool {
        self.filter.is_none() && self.interventions.is_empty()
    }

    /// Called by the forward pass before it runs: clears the cache and resolves the filter.
    pub(crate) fn begin(&mut self, n_layers: usize) -> Result<()> {
        self.cache.map.clear();
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
            wanted.sort();
            wanted.dedup();
            self.wanted = wanted;
            self.n_layers = n_layers;
        }
        Ok(())
    }

    /// Whether an intervention edits this point (capture alone does not count).
    pub fn edits(&self, point: HookPoint) -> bool {
        self.interventions.iter().any(|iv| iv.point == point)
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
                    x.index_select(&idx, axis)?
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
