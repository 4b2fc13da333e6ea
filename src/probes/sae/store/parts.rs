//! The hooks of a store's rows: a store of several hooks (a transcoder's input and target,
//! SAEs on several layers from one forward pass) holds their activations side by side in each
//! row, in the order `store.json` lists them under `parts`.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::Result;

/// One hook of a store of several.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HookWidth {
    pub hook: String,
    pub d: usize,
}

/// A hook's columns in a store's rows.
#[derive(Clone, Debug, PartialEq)]
pub struct Part {
    pub hook: String,
    pub offset: usize,
    pub d: usize,
}

impl Part {
    /// This part's columns of row-major `[n, width]` rows: `[n, d]`.
    pub fn columns(&self, rows: &[f32], width: usize) -> Vec<f32> {
        if self.offset == 0 && self.d == width {
            return rows.to_vec();
        }
        rows.chunks(width.max(1))
            .flat_map(|r| r[self.offset..self.offset + self.d].iter().copied())
            .collect()
    }

    /// This part's columns of a `[B, width]` batch, times `scale`.
    pub fn slice(&self, rows: &Tensor, width: usize, scale: f64) -> Result<Tensor> {
        let x = if self.offset == 0 && self.d == width {
            rows.clone()
        } else {
            rows.narrow(1, self.offset, self.d)?.contiguous()?
        };
        Ok(if scale != 1.0 { (x * scale)? } else { x })
    }
}
