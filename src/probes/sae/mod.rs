//! Sparse autoencoders and the "atoms" analysis (Hu et al. 2025; docs/methods.md §3).
//!
//! - [`store`]: an on-disk, sharded, shuffled, resumable activation store.
//! - [`train`]: threshold (JumpReLU), TopK and ReLU-L1 SAEs with a hand-written backward pass.
//! - [`eval`]: R², MSE, L0, dead latents, CE-loss recovered and KL when spliced into the model.
//! - [`atoms`]: the atomic inner product, coherence, and q* (uniqueness) for dictionaries.
//!
//! SAEs are saved in SAELens's layout: `cfg.json` + `sae_weights.safetensors` with
//! `W_enc [d, n]`, `W_dec [n, d]`, `b_enc [n]`, `b_dec [d]` and `threshold [n]` (JumpReLU). The
//! activation-normalisation factor used in training is folded into the weights on save, so a
//! saved SAE always maps raw activations to raw activations.

pub mod atoms;
mod commands;
pub use commands::*;
pub mod dashboard;
pub mod eval;
pub mod pretrained;
pub mod probe;
pub mod store;
pub mod train;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The activation function of an SAE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SaeKind {
    /// JumpReLU: z = x·1[x ≥ τ] with a learned per-latent threshold τ.
    Threshold,
    /// Keep the k largest pre-activations (then ReLU).
    TopK,
    /// ReLU with an L1 penalty (the "standard" SAE).
    Relu,
    /// BatchTopK (Bussmann et al. 2024): the k·B largest pre-activations of a training batch
    /// are kept; after training, one global threshold θ (the mean over batches of the smallest
    /// kept activation) makes it a JumpReLU SAE, saved as SAELens saves it.
    #[serde(rename = "batchtopk")]
    BatchTopK,
    /// Matryoshka BatchTopK (Bussmann et al. 2025): BatchTopK with the reconstruction losses
    /// of nested latent prefixes summed; saved as a JumpReLU SAE like BatchTopK.
    Matryoshka,
}

impl SaeKind {
    pub fn name(self) -> &'static str {
        match self {
            SaeKind::Threshold => "threshold",
            SaeKind::TopK => "topk",
            SaeKind::Relu => "relu",
            SaeKind::BatchTopK => "batchtopk",
            SaeKind::Matryoshka => "matryoshka",
        }
    }

    /// Whether inference is a JumpReLU with a per-latent threshold (threshold SAEs, and
    /// BatchTopK / Matryoshka after their global threshold is set).
    pub fn jumps(self) -> bool {
        matches!(
            self,
            SaeKind::Threshold | SaeKind::BatchTopK | SaeKind::Matryoshka
        )
    }

    /// Whether training selects the largest pre-activations (per sample or per batch).
    pub fn selects(self) -> bool {
        matches!(
            self,
            SaeKind::TopK | SaeKind::BatchTopK | SaeKind::Matryoshka
        )
    }

    /// Whether training keeps the k·B largest pre-activations of the whole batch.
    pub fn batch(self) -> bool {
        matches!(self, SaeKind::BatchTopK | SaeKind::Matryoshka)
    }

    /// SAELens's `architecture` string of the saved (inference) SAE.
    pub fn architecture(self) -> &'static str {
        match self {
            SaeKind::Threshold => "jumprelu",
            SaeKind::TopK => "topk",
            SaeKind::Relu => "standard",
            SaeKind::BatchTopK | SaeKind::Matryoshka => "jumprelu",
        }
    }

    pub const ALL: [SaeKind; 5] = [
        SaeKind::Threshold,
        SaeKind::TopK,
        SaeKind::Relu,
        SaeKind::BatchTopK,
        SaeKind::Matryoshka,
    ];

    /// What `sae run` trains unless told otherwise.
    pub const DEFAULT_RUN: [SaeKind; 3] = [SaeKind::Threshold, SaeKind::TopK, SaeKind::Relu];
}

impl std::str::FromStr for SaeKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "threshold" | "jumprelu" | "jump_relu" => SaeKind::Threshold,
            "topk" | "top_k" => SaeKind::TopK,
            "relu" | "standard" | "l1" => SaeKind::Relu,
            "batchtopk" | "batch_topk" => SaeKind::BatchTopK,
            "matryoshka" | "matryoshka_batchtopk" => SaeKind::Matryoshka,
            other => crate::bail!(
                "unknown SAE kind `{other}` (threshold, topk, relu, batchtopk, matryoshka)"
            ),
        })
    }
}

impl std::fmt::Display for SaeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A trained sparse autoencoder (f32, CPU or any candle device), or a transcoder: the same
/// encoder and decoder, reading one hook (`hook_name`) and writing another (`hook_name_out`,
/// of width `d_out`), with an optional linear skip connection (`W_skip`).
#[derive(Clone, Debug)]
pub struct Sae {
    pub kind: SaeKind,
    /// `[d, n]`
    pub w_enc: Tensor,
    /// `[n, d_out]`
    pub w_dec: Tensor,
    /// `[n]`
    pub b_enc: Tensor,
    /// `[d_out]`
    pub b_dec: Tensor,
    /// `[d_out, d]`: skip transcoders (`m̂ = z·W_dec + b_dec + x·W_skipᵀ`).
    pub w_skip: Option<Tensor>,
    /// `[n]`, JumpReLU (and BatchTopK / Matryoshka) only.
    pub threshold: Option<Tensor>,
    /// TopK only.
    pub k: Option<usize>,
    /// SAELens `apply_b_dec_to_input`: encode `x − b_dec` instead of `x`.
    pub apply_b_dec_to_input: bool,
    /// Free-form fields written to / read from `cfg.json` (hook_name, model_name, ...).
    pub meta: serde_json::Map<String, serde_json::Value>,
}

impl Sae {
    pub fn d_in(&self) -> usize {
        self.w_enc.dims()[0]
    }

    pub fn d_sae(&self) -> usize {
        self.w_enc.dims()[1]
    }

    /// The width of what it reconstructs (`d_in` for SAEs).
    pub fn d_out(&self) -> usize {
        self.w_dec.dims()[1]
    }

    /// A transcoder writes another hook than it reads.
    pub fn is_transcoder(&self) -> bool {
        self.hook_name_out().is_some() || self.w_skip.is_some() || self.d_out() != self.d_in()
    }

    /// The hook a transcoder reconstructs (`hook_name_out`).
    pub fn hook_name_out(&self) -> Option<String> {
        self.meta
            .get("hook_name_out")
            .and_then(|v| v.as_str())
            .map(String::from)
    }

    pub fn device(&self) -> &Device {
        self.w_enc.device()
    }

    /// Pre-activations `x·W_enc + b_enc` for `x: [B, d]`.
    pub fn pre_acts(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?;
        let x = if self.apply_b_dec_to_input {
            x.broadcast_sub(&self.b_dec)?
        } else {
            x
        };
        Ok(x.matmul(&self.w_enc)?.broadcast_add(&self.b_enc)?)
    }

    /// Latent activations `z: [B, n]` from pre-activations.
    pub fn activate(&self, pre: &Tensor) -> Result<Tensor> {
        match self.kind {
            SaeKind::Relu => Ok(pre.relu()?),
            SaeKind::Threshold | SaeKind::BatchTopK | SaeKind::Matryoshka => {
                let th = self
                    .threshold
                    .as_ref()
                    .ok_or_else(|| Error::msg("a JumpReLU SAE needs a `threshold` tensor"))?;
                let mask = pre.broadcast_gt(th)?.to_dtype(DType::F32)?;
                Ok((pre.relu()? * mask)?)
            }
            SaeKind::TopK => {
                let k = self.k.unwrap_or(32);
                Ok((pre.relu()? * topk_mask(pre, k)?)?)
            }
        }
    }

    /// `z = act(x·W_enc + b_enc)`.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        self.activate(&self.pre_acts(x)?)
    }

    /// `m̂ = z·W_dec + b_dec`.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        Ok(z.matmul(&self.w_dec)?.broadcast_add(&self.b_dec)?)
    }

    /// `decode(encode(x))`, plus `x·W_skipᵀ` for skip transcoders: `[B, d]` → `[B, d_out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.decode(&self.encode(x)?)?;
        match &self.w_skip {
            Some(w) => Ok((y + x.to_dtype(DType::F32)?.matmul(&w.t()?)?)?),
            None => Ok(y),
        }
    }

    /// Encode then decode, for `[B, d]` or `[batch, pos, d]` inputs.
    pub fn reconstruct(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let d = *dims
            .last()
            .ok_or_else(|| Error::msg("scalar input to an SAE"))?;
        let flat = x.reshape(((), d))?;
        let y = self.forward(&flat)?;
        let mut out = dims;
        if let Some(last) = out.last_mut() {
            *last = self.d_out();
        }
        Ok(y.reshape(out)?.to_dtype(x.dtype())?)
    }

    /// SAELens's `architecture` for this SAE: the kind's, or for transcoders `transcoder`,
    /// `skip_transcoder` (ReLU) and `jumprelu_transcoder`; engram writes
    /// `jumprelu_skip_transcoder`, `topk_transcoder` and `topk_skip_transcoder` for the
    /// combinations SAELens has no class for.
    pub fn architecture(&self) -> String {
        if !self.is_transcoder() {
            return self.kind.architecture().to_string();
        }
        let base = match self.kind.architecture() {
            "standard" => "",
            "jumprelu" => "jumprelu_",
            _ => "topk_",
        };
        let skip = if self.w_skip.is_some() { "skip_" } else { "" };
        format!("{base}{skip}transcoder")
    }

    /// Write `cfg.json` and `sae_weights.safetensors` into `dir`, in SAELens 6's layout: the
    /// config's structural fields at the top level, everything else (hook_name, model_name,
    /// engram's training settings) under `metadata`. `SAE.load_from_disk` reads it.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut meta = self.meta.clone();
        // The layout version (SAELens converts configs without it as pre-6.0 ones).
        meta.entry("sae_lens_version")
            .or_insert_with(|| SAELENS_LAYOUT_VERSION.into());
        let mut cfg = serde_json::Map::new();
        let mut set = |k: &str, v: serde_json::Value| {
            cfg.insert(k.to_string(), v);
        };
        set("architecture", self.architecture().into());
        set("d_in", self.d_in().into());
        if self.is_transcoder() {
            set("d_out", self.d_out().into());
        }
        set("d_sae", self.d_sae().into());
        set("dtype", "float32".into());
        set("device", "cpu".into());
        set("apply_b_dec_to_input", self.apply_b_dec_to_input.into());
        set("normalize_activations", "none".into());
        set("reshape_activations", "none".into());
        if let Some(k) = self.k {
            set("k", k.into());
            set("rescale_acts_by_decoder_norm", false.into());
        }
        set("metadata", serde_json::Value::Object(meta));
        let text = serde_json::to_string_pretty(&serde_json::Value::Object(cfg))
            .map_err(|e| Error::msg(format!("cfg.json: {e}")))?;
        let cpu = |t: &Tensor| -> Result<Tensor> {
            Ok(t.to_device(&Device::Cpu)?
                .to_dtype(DType::F32)?
                .contiguous()?)
        };
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        tensors.insert("W_enc".into(), cpu(&self.w_enc)?);
        tensors.insert("W_dec".into(), cpu(&self.w_dec)?);
        tensors.insert("b_enc".into(), cpu(&self.b_enc)?);
        tensors.insert("b_dec".into(), cpu(&self.b_dec)?);
        if let Some(t) = &self.threshold {
            tensors.insert("threshold".into(), cpu(t)?);
        }
        if let Some(t) = &self.w_skip {
            tensors.insert("W_skip".into(), cpu(t)?);
        }
        // Weights first: a directory with a cfg.json always has its weights.
        let path = dir.join("sae_weights.safetensors");
        crate::report::write_safetensors(&path, tensors)?;
        crate::report::write_atomic(&dir.join("cfg.json"), text.as_bytes())
    }

    /// Load an SAE saved by engram or by SAELens (`cfg.json` + `sae_weights.safetensors`):
    /// SAELens 6 configs (`metadata` object, `k` at the top level) and older ones (hook fields at
    /// the top level, `activation_fn_str` / `activation_fn_kwargs`); architectures `jumprelu`,
    /// `topk` and `standard`; a `log_threshold` tensor is accepted in place of `threshold`.
    /// Run-time normalisations other than `none` / `expected_average_only_in` (whose factor
    /// SAELens folds into the saved weights) are refused.
    pub fn load(dir: &Path, device: &Device) -> Result<Sae> {
        let cfg_path = dir.join("cfg.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let cfg: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::msg(format!("{}: {e}", cfg_path.display())))?;
        let top = cfg
            .as_object()
            .ok_or_else(|| Error::msg(format!("{}: not a JSON object", cfg_path.display())))?;
        let meta = match top.get("metadata").and_then(|m| m.as_object()) {
            Some(m) => m.clone(),
            None => top
                .iter()
                .filter(|(k, _)| !STRUCTURAL_KEYS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let str_field = |k: &str| top.get(k).and_then(|v| v.as_str());
        for (key, ok) in [
            (
                "normalize_activations",
                &["none", "expected_average_only_in"][..],
            ),
            ("reshape_activations", &["none"][..]),
        ] {
            if let Some(v) = str_field(key) {
                if !ok.contains(&v) {
                    crate::bail!(
                        "{}: {key} = `{v}` is not supported (only {})",
                        cfg_path.display(),
                        ok.join(", ")
                    );
                }
            }
        }
        if top
            .get("rescale_acts_by_decoder_norm")
            .and_then(|v| v.as_bool())
            == Some(true)
        {
            crate::bail!(
                "{}: rescale_acts_by_decoder_norm = true is not supported",
                cfg_path.display()
            );
        }
        let wpath = dir.join("sae_weights.safetensors");
        if !wpath.is_file() {
            return Err(Error::io(
                &wpath,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no SAE weights"),
            ));
        }
        let mut w = candle_core::safetensors::load(&wpath, device)
            .map_err(|e| Error::msg(format!("{}: {e}", wpath.display())))?;
        let mut take = |name: &str| -> Result<Tensor> {
            w.remove(name)
                .ok_or_else(|| Error::MissingTensor(format!("{} in {}", name, wpath.display())))?
                .to_dtype(DType::F32)
                .map_err(Error::from)
        };
        let w_enc = take("W_enc")?;
        let w_dec = take("W_dec")?;
        let b_enc = take("b_enc")?;
        let b_dec = take("b_dec")?;
        let threshold = match take("threshold") {
            Ok(t) => Some(t),
            Err(_) => take("log_threshold").ok().map(|t| t.exp()).transpose()?,
        };
        let w_skip = take("W_skip").ok();
        let full_arch = str_field("architecture").unwrap_or("standard");
        let (arch, transcoder) = match full_arch.strip_suffix("transcoder") {
            Some(rest) => {
                let rest = rest.strip_suffix("skip_").unwrap_or(rest);
                match rest.strip_suffix('_').unwrap_or(rest) {
                    "" => ("standard", true),
                    base => (base, true),
                }
            }
            None => (full_arch, false),
        };
        if full_arch.contains("skip_transcoder") && w_skip.is_none() {
            crate::bail!("{}: a skip transcoder needs `W_skip`", wpath.display());
        }
        let act = str_field("activation_fn_str")
            .or_else(|| str_field("activation_fn"))
            .unwrap_or("relu");
        let kind = if arch == "jumprelu" || (arch == "standard" && threshold.is_some()) {
            SaeKind::Threshold
        } else if arch == "topk" || act == "topk" {
            SaeKind::TopK
        } else if arch == "standard" || arch == "relu" {
            SaeKind::Relu
        } else {
            crate::bail!(
                "{}: unsupported SAE architecture `{full_arch}` (jumprelu, topk, standard, \
                 and their transcoders)",
                cfg_path.display()
            )
        };
        // BatchTopK and Matryoshka SAEs are saved as JumpReLU ones; the metadata keeps the
        // training kind (engram's `engram_kind`, SAELens's `training_architecture`).
        let trained = ["engram_kind", "training_architecture"]
            .iter()
            .find_map(|k| meta.get(*k).and_then(|v| v.as_str()))
            .and_then(|k| k.parse::<SaeKind>().ok());
        let kind = match trained {
            Some(t) if kind == SaeKind::Threshold && t.jumps() => t,
            _ => kind,
        };
        let k = top
            .get("k")
            .and_then(|v| v.as_f64())
            .or_else(|| {
                top.get("activation_fn_kwargs")
                    .and_then(|a| a.get("k"))
                    .and_then(|v| v.as_f64())
            })
            .map(|k| k as usize);
        if kind == SaeKind::TopK && k.is_none() {
            crate::bail!("{}: a TopK SAE needs `k`", cfg_path.display());
        }
        if kind.jumps() && threshold.is_none() {
            crate::bail!("{}: a JumpReLU SAE needs `threshold`", cfg_path.display());
        }
        let (d, n) = w_enc.dims2()?;
        let d_out = if transcoder { w_dec.dim(1)? } else { d };
        if w_dec.dims() != [n, d_out]
            || b_enc.dims() != [n]
            || b_dec.dims() != [d_out]
            || threshold.as_ref().is_some_and(|t| t.dims() != [n])
            || w_skip.as_ref().is_some_and(|t| t.dims() != [d_out, d])
        {
            crate::bail!(
                "{}: inconsistent shapes W_enc {:?}, W_dec {:?}, b_enc {:?}, b_dec {:?}{}",
                wpath.display(),
                w_enc.dims(),
                w_dec.dims(),
                b_enc.dims(),
                b_dec.dims(),
                w_skip
                    .as_ref()
                    .map(|t| format!(", W_skip {:?}", t.dims()))
                    .unwrap_or_default()
            );
        }
        for (key, want) in [("d_in", d), ("d_sae", n), ("d_out", d_out)] {
            if let Some(v) = top.get(key).and_then(|v| v.as_u64()) {
                if v as usize != want {
                    crate::bail!(
                        "{}: {key} = {v} but the weights say {want}",
                        cfg_path.display()
                    );
                }
            }
        }
        Ok(Sae {
            kind,
            w_enc,
            w_dec,
            b_enc,
            b_dec,
            threshold,
            w_skip,
            k: if kind == SaeKind::TopK { k } else { None },
            apply_b_dec_to_input: top
                .get("apply_b_dec_to_input")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            meta,
        })
    }

    /// The hook this SAE was trained on (`hook_name`, or the older `hook_point`).
    pub fn hook_name(&self) -> Option<String> {
        ["hook_name", "hook_point"]
            .iter()
            .find_map(|k| self.meta.get(*k).and_then(|v| v.as_str()))
            .map(String::from)
    }
}

/// The SAELens config layout engram writes.
pub const SAELENS_LAYOUT_VERSION: &str = "6.0.0";

/// Top-level `cfg.json` fields that describe the SAE itself rather than its provenance.
const STRUCTURAL_KEYS: &[&str] = &[
    "architecture",
    "d_in",
    "d_sae",
    "d_out",
    "dtype",
    "device",
    "apply_b_dec_to_input",
    "normalize_activations",
    "reshape_activations",
    "k",
    "rescale_acts_by_decoder_norm",
    "activation_fn_str",
    "activation_fn",
    "activation_fn_kwargs",
];

/// The token put in front of every window of SAE data (SAELens's `prepend_bos`): the
/// tokenizer's BOS, else the config's; `None` when the model has neither.
pub fn window_bos(model: &crate::model::Model) -> Option<u32> {
    model
        .tokenizer
        .as_ref()
        .and_then(|t| t.bos_id)
        .or(model.cfg().bos_token_id)
}

/// A 0/1 f32 mask `[B, n]` keeping the `k` largest entries of each row.
pub fn topk_mask(pre: &Tensor, k: usize) -> Result<Tensor> {
    let (b, n) = pre.dims2()?;
    let v: Vec<f32> = pre.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let k = k.min(n);
    let mut mask = vec![0f32; b * n];
    mask.par_chunks_mut(n)
        .zip(v.par_chunks(n))
        .for_each(|(m, row)| {
            if k == 0 {
                return;
            }
            let mut idx: Vec<u32> = (0..n as u32).collect();
            idx.select_nth_unstable_by(k - 1, |&a, &b| row[b as usize].total_cmp(&row[a as usize]));
            for &i in &idx[..k] {
                m[i as usize] = 1.0;
            }
        });
    Ok(Tensor::from_vec(mask, (b, n), pre.device())?)
}

/// Seeded standard normal samples (Box–Muller over `rand`'s StdRng).
pub fn randn(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<f32> {
    use rand::Rng;
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = rng.random::<f64>().max(1e-300);
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        out.push((r * t.cos()) as f32);
        out.push((r * t.sin()) as f32);
    }
    out.truncate(n);
    out
}
