//! Each source's own layout, converted as SAELens's loaders convert it
//! (`sae_lens/loading/pretrained_sae_loaders.py`, sae-lens 6.54.12):
//!
//! - `gemma_scope_2` (`gemma_3_sae_huggingface_loader`): `params.safetensors` with `w_enc [d, n]`,
//!   `w_dec [n, d]`, `b_enc`, `b_dec`, `threshold`, taken as they are. A `config.json` beside it,
//!   if present, must say `architecture: jump_relu`; transcoders (`affine_skip_connection`) are
//!   refused.
//! - `gemma_scope_npz` (`gemma_2_sae_huggingface_loader`): `params.npz` with the same five arrays
//!   (`w_*` keys renamed `W_*`); a `scaling_factor` array must be all ones (SAELens refuses
//!   others too).
//! - `llama_scope` (`llama_scope_sae_huggingface_loader` + `fold_activation_norm_scaling_factor`):
//!   `checkpoints/final.safetensors` with `encoder.weight [n, d]`, `decoder.weight [d, n]`,
//!   `encoder.bias`, `decoder.bias`, and `hyperparams.json`. With
//!   f = √d_model / `dataset_average_activation_norm.in`: `W_enc = encoder.weightᵀ·f`,
//!   `W_dec = decoder.weightᵀ / f`, `b_enc = encoder.bias`, `b_dec = decoder.bias / f`, and every
//!   latent's threshold = `jump_relu_threshold`·f. (SAELens folds the `norm_scaling_factor` it
//!   lists per id; those values are √4096 / the hyperparams' input norm, which engram reads.)
//! - `saelens`: `cfg.json` + `sae_weights.safetensors`, [`Sae::load`].
//!
//! Every SAE maps raw activations to raw activations; the registry's hook, model, release, id,
//! repo and commit go into its `meta`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::{Format, Located, PretrainedRef};
use crate::probes::sae::{Sae, SaeKind};
use crate::{Error, Result};

/// Load the SAE `r` from its located files.
pub fn load(r: &PretrainedRef, loc: &Located, device: &Device) -> Result<Sae> {
    let mut sae = match r.format {
        Format::GemmaScope2 => gemma_scope_2(&loc.dir, device)?,
        Format::GemmaScopeNpz => gemma_scope_npz(&loc.dir, device)?,
        Format::LlamaScope => llama_scope(r, &loc.dir, device)?,
        Format::Saelens => {
            let sae = Sae::load(&loc.dir, device)?;
            if let Some(h) = sae.hook_name() {
                if h != r.hook {
                    crate::bail!(
                        "pretrained SAE `{}`: {} says hook {h} but the registry says {}",
                        r.spec(),
                        loc.dir.join("cfg.json").display(),
                        r.hook
                    );
                }
            }
            sae
        }
    };
    let mut set = |k: &str, v: &str| {
        sae.meta.insert(k.into(), v.into());
    };
    set("hook_name", &r.hook);
    set("model_name", &r.model);
    set("pretrained_release", &r.release);
    set("pretrained_sae_id", &r.sae_id);
    set("repo_id", &r.repo);
    set("repo_folder", &r.folder);
    set("repo_commit", &loc.commit);
    set("pretrained_format", r.format.name());
    Ok(sae)
}

/// One-line error text for a file that could not be read.
fn unreadable(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    let e = e.to_string().replace('\n', " ");
    Error::msg(format!("{}: not a readable {what} ({e})", path.display()))
}

/// Take named f32 tensors out of a map, naming the file and what it has when one is missing.
struct Arrays {
    path: std::path::PathBuf,
    map: HashMap<String, Tensor>,
    names: Vec<String>,
}

impl Arrays {
    fn new(path: std::path::PathBuf, map: HashMap<String, Tensor>) -> Arrays {
        let mut names: Vec<String> = map.keys().cloned().collect();
        names.sort();
        Arrays { path, map, names }
    }

    fn take(&mut self, name: &str) -> Result<Tensor> {
        match self.map.remove(name) {
            Some(t) => Ok(t.to_dtype(DType::F32)?),
            None => crate::bail!(
                "{}: no `{name}` array (has: {})",
                self.path.display(),
                self.names.join(", ")
            ),
        }
    }
}

fn gemma_scope_2(dir: &Path, device: &Device) -> Result<Sae> {
    let cfg = dir.join("config.json");
    if cfg.is_file() {
        let text = std::fs::read_to_string(&cfg).map_err(|e| Error::io(&cfg, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| unreadable(&cfg, "JSON file", e))?;
        if let Some(a) = v.get("architecture").and_then(|a| a.as_str()) {
            if a != "jump_relu" {
                crate::bail!(
                    "{}: architecture `{a}` is not supported (jump_relu)",
                    cfg.display()
                );
            }
        }
    }
    let path = dir.join("params.safetensors");
    let map = candle_core::safetensors::load(&path, device)
        .map_err(|e| unreadable(&path, "safetensors file", e))?;
    if map.contains_key("affine_skip_connection") {
        crate::bail!(
            "{}: a transcoder with a skip connection, not an SAE (not supported)",
            path.display()
        );
    }
    let mut a = Arrays::new(path, map);
    let (w_enc, w_dec) = (a.take("w_enc")?, a.take("w_dec")?);
    let (b_enc, b_dec) = (a.take("b_enc")?, a.take("b_dec")?);
    let threshold = a.take("threshold")?;
    jumprelu(&a.path, w_enc, w_dec, b_enc, b_dec, threshold)
}

fn gemma_scope_npz(dir: &Path, device: &Device) -> Result<Sae> {
    let path = dir.join("params.npz");
    let arrays = Tensor::read_npz(&path).map_err(|e| unreadable(&path, "NumPy .npz archive", e))?;
    let mut map = HashMap::new();
    for (k, t) in arrays {
        let k = match k.strip_prefix("w_") {
            Some(rest) => format!("W_{rest}"),
            None => k,
        };
        map.insert(k, t.to_device(device)?);
    }
    let mut a = Arrays::new(path, map);
    if let Ok(s) = a.take("scaling_factor") {
        let v: Vec<f32> = s.flatten_all()?.to_vec1()?;
        if v.iter().any(|&x| x != 1.0) {
            crate::bail!(
                "{}: a `scaling_factor` other than 1 is not supported",
                a.path.display()
            );
        }
    }
    let (w_enc, w_dec) = (a.take("W_enc")?, a.take("W_dec")?);
    let (b_enc, b_dec) = (a.take("b_enc")?, a.take("b_dec")?);
    let threshold = a.take("threshold")?;
    jumprelu(&a.path, w_enc, w_dec, b_enc, b_dec, threshold)
}

fn llama_scope(r: &PretrainedRef, dir: &Path, device: &Device) -> Result<Sae> {
    let hp = dir.join("hyperparams.json");
    let text = std::fs::read_to_string(&hp).map_err(|e| Error::io(&hp, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| unreadable(&hp, "JSON file", e))?;
    let num = |k: &[&str]| -> Result<f64> {
        k.iter()
            .try_fold(&v, |v, k| v.get(*k))
            .and_then(|x| x.as_f64())
            .ok_or_else(|| Error::msg(format!("{}: no number `{}`", hp.display(), k.join("."))))
    };
    let d_model = num(&["d_model"])?;
    let theta = num(&["jump_relu_threshold"])?;
    let norm_in = num(&["dataset_average_activation_norm", "in"])?;
    if let Some(act) = v.get("act_fn").and_then(|a| a.as_str()) {
        if act != "jumprelu" {
            crate::bail!(
                "{}: act_fn `{act}` is not supported (jumprelu)",
                hp.display()
            );
        }
    }
    if let Some(h) = v.get("hook_point_in").and_then(|h| h.as_str()) {
        if h != r.hook {
            crate::bail!(
                "pretrained SAE `{}`: {} says hook {h} but the registry says {}",
                r.spec(),
                hp.display(),
                r.hook
            );
        }
    }
    if !(norm_in.is_finite() && norm_in > 0.0) {
        crate::bail!(
            "{}: dataset_average_activation_norm.in = {norm_in} is not a positive number",
            hp.display()
        );
    }
    let f = d_model.sqrt() / norm_in;
    let path = dir.join("checkpoints/final.safetensors");
    let map = candle_core::safetensors::load(&path, device)
        .map_err(|e| unreadable(&path, "safetensors file", e))?;
    let mut a = Arrays::new(path, map);
    let enc = a.take("encoder.weight")?;
    let dec = a.take("decoder.weight")?;
    let b_enc = a.take("encoder.bias")?;
    let b_dec = a.take("decoder.bias")?;
    if enc.rank() != 2 || dec.rank() != 2 {
        crate::bail!(
            "{}: encoder.weight {:?} / decoder.weight {:?} are not matrices",
            a.path.display(),
            enc.dims(),
            dec.dims()
        );
    }
    let w_enc = (enc.t()?.contiguous()? * f)?;
    let w_dec = (dec.t()?.contiguous()? / f)?;
    let b_dec = (b_dec / f)?;
    let n = w_enc.dims()[1];
    if d_model as usize != w_enc.dims()[0] {
        crate::bail!(
            "{}: d_model = {d_model} but encoder.weight is {:?}",
            hp.display(),
            enc.dims()
        );
    }
    let threshold = Tensor::full((theta * f) as f32, n, device)?;
    jumprelu(&a.path, w_enc, w_dec, b_enc, b_dec, threshold)
}

/// A JumpReLU SAE (raw activations in and out), after checking the shapes agree.
fn jumprelu(
    path: &Path,
    w_enc: Tensor,
    w_dec: Tensor,
    b_enc: Tensor,
    b_dec: Tensor,
    threshold: Tensor,
) -> Result<Sae> {
    let shapes_ok = w_enc.rank() == 2 && {
        let (d, n) = (w_enc.dims()[0], w_enc.dims()[1]);
        w_dec.dims() == [n, d]
            && b_enc.dims() == [n]
            && b_dec.dims() == [d]
            && threshold.dims() == [n]
    };
    if !shapes_ok {
        crate::bail!(
            "{}: inconsistent shapes W_enc {:?}, W_dec {:?}, b_enc {:?}, b_dec {:?}, threshold {:?}",
            path.display(),
            w_enc.dims(),
            w_dec.dims(),
            b_enc.dims(),
            b_dec.dims(),
            threshold.dims()
        );
    }
    Ok(Sae {
        kind: SaeKind::Threshold,
        w_enc: w_enc.contiguous()?,
        w_dec: w_dec.contiguous()?,
        b_enc,
        b_dec,
        threshold: Some(threshold),
        w_skip: None,
        k: None,
        apply_b_dec_to_input: false,
        meta: serde_json::Map::new(),
    })
}
