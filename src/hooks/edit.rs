//! Interventions: what an edit does to the tensor at its hook point ([`Edit`]), and an edit
//! placed at a point and some positions ([`Intervention`]), with the common ablations as
//! constructors.

use std::fmt;
use std::sync::Arc;

use candle_core::{DType, IndexOp, Tensor, D};

use super::{HookPoint, Layout, Positions};
use crate::Result;

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
