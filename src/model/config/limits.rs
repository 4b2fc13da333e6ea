//! Sizes a config may declare: zero or indivisible dimensions and sizes beyond any real model
//! are one-line errors before anything per layer, head or position is allocated (both loaders,
//! config.json and GGUF, call [`check_dims`]; [`super::ModelConfig::validate`] the rest).

use crate::{Error, Result};

/// The sizes the rest of the config is derived from, checked before any division by them:
/// positive widths, heads and layers, and (without an explicit head width) a model width that
/// the heads divide. `src` names the file kind in the error.
pub(crate) fn check_dims(
    src: &str,
    d_model: usize,
    n_heads: usize,
    n_layers: usize,
    d_head: Option<usize>,
) -> Result<()> {
    let bad = |what: String| Err(Error::msg(format!("{src}: {what}")));
    if n_heads == 0 {
        return bad("0 attention heads".into());
    }
    if n_layers == 0 {
        return bad("0 layers".into());
    }
    if d_model == 0 || d_head == Some(0) {
        return bad(format!(
            "zero width (hidden size {d_model}, head dim {d_head:?})"
        ));
    }
    if d_head.is_none() && !d_model.is_multiple_of(n_heads) {
        return bad(format!(
            "hidden size {d_model} is not a multiple of {n_heads} attention heads (and no head dim is given)"
        ));
    }
    for (what, v, max) in [
        ("layers", n_layers, MAX_LAYERS),
        ("attention heads", n_heads, MAX_HEADS),
        ("hidden size", d_model, MAX_WIDTH),
        ("head dim", d_head.unwrap_or(0), MAX_WIDTH),
    ] {
        if v > max {
            return bad(format!(
                "{v} {what} is beyond any real model (at most {max}): a corrupt config?"
            ));
        }
    }
    Ok(())
}

/// Sizes beyond any real model: a config asking for more is corrupt, and is refused before
/// anything per layer, head or position is allocated.
pub const MAX_LAYERS: usize = 1 << 12;
pub const MAX_HEADS: usize = 1 << 12;
pub const MAX_WIDTH: usize = 1 << 20;
pub const MAX_VOCAB: usize = 1 << 24;
pub const MAX_CONTEXT: usize = 1 << 24;
