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
pub mod dashboard;
pub mod eval;
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
}

impl SaeKind {
    pub fn name(self) -> &'static str {
        match self {
            SaeKind::Threshold => "threshold",
            SaeKind::TopK => "topk",
            SaeKind::Relu => "relu",
        }
    }

    /// SAELens's `architecture` string.
    pub fn architecture(self) -> &'static str {
        match self {
            SaeKind::Threshold => "jumprelu",
            SaeKind::TopK => "topk",
            SaeKind::Relu => "standard",
        }
    }

    pub const ALL: [SaeKind; 3] = [SaeKind::Threshold, SaeKind::TopK, SaeKind::Relu];
}

impl std::str::FromStr for SaeKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "threshold" | "jumprelu" | "jump_relu" => SaeKind::Threshold,
            "topk" | "top_k" => SaeKind::TopK,
            "relu" | "standard" | "l1" => SaeKind::Relu,
            other => crate::bail!("unknown SAE kind `{other}` (threshold, topk, relu)"),
        })
    }
}

impl std::fmt::Display for SaeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A trained sparse autoencoder (f32, CPU or any candle device).
#[derive(Clone, Debug)]
pub struct Sae {
    pub kind: SaeKind,
    /// `[d, n]`
    pub w_enc: Tensor,
    /// `[n, d]`
    pub w_dec: Tensor,
    /// `[n]`
    pub b_enc: Tensor,
    /// `[d]`
    pub b_dec: Tensor,
    /// `[n]`, JumpReLU only.
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
            SaeKind::Threshold => {
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

    /// Encode then decode, for `[B, d]` or `[batch, pos, d]` inputs.
    pub fn reconstruct(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let d = *dims
            .last()
            .ok_or_else(|| Error::msg("scalar input to an SAE"))?;
        let flat = x.reshape(((), d))?;
        let y = self.decode(&self.encode(&flat)?)?;
        Ok(y.reshape(dims)?.to_dtype(x.dtype())?)
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
        set("architecture", self.kind.architecture().into());
        set("d_in", self.d_in().into());
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
        let arch = str_field("architecture").unwrap_or("standard");
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
                "{}: unsupported SAE architecture `{arch}` (jumprelu, topk, standard)",
                cfg_path.display()
            )
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
        if kind == SaeKind::Threshold && threshold.is_none() {
            crate::bail!("{}: a JumpReLU SAE needs `threshold`", cfg_path.display());
        }
        let (d, n) = w_enc.dims2()?;
        if w_dec.dims() != [n, d]
            || b_enc.dims() != [n]
            || b_dec.dims() != [d]
            || threshold.as_ref().is_some_and(|t| t.dims() != [n])
        {
            crate::bail!(
                "{}: inconsistent shapes W_enc {:?}, W_dec {:?}, b_enc {:?}, b_dec {:?}",
                wpath.display(),
                w_enc.dims(),
                w_dec.dims(),
                b_enc.dims(),
                b_dec.dims()
            );
        }
        for (key, want) in [("d_in", d), ("d_sae", n)] {
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

// ---------------------------------------------------------------------------------------------
// Command-level entry points (the CLI's `engram sae ...` calls these).
// ---------------------------------------------------------------------------------------------

use std::path::PathBuf;

use crate::model::Model;
use crate::progress::Progress;
use crate::report::manifest::Manifest;

/// `engram sae collect`: tokenize `corpus` and collect activations into `out` (resuming),
/// recording the run in `manifest` (written by the caller).
pub fn collect_into(
    model: &Model,
    corpus: &Path,
    params: &store::CollectParams,
    out: &Path,
    progress: &Progress,
    manifest: &mut Manifest,
) -> Result<store::ActivationStore> {
    let docs = crate::data::read_corpus(corpus)?;
    let mut params = params.clone();
    if params.corpus.is_empty() {
        params.corpus = corpus.display().to_string();
    }
    let t0 = std::time::Instant::now();
    let s = store::collect(model, store::Docs::Text(&docs), &params, out, progress)?;
    manifest.record_timing("collect", t0.elapsed().as_secs_f64());
    manifest.add_file("store.json");
    manifest.note(format!(
        "{} activations of d = {} in {} shards; {} documents consumed",
        s.len(),
        s.d(),
        s.n_shards(),
        s.meta.next_doc
    ));
    Ok(s)
}

/// [`collect_into`] with a manifest of its own in `out`.
pub fn cmd_collect(
    model: &Model,
    corpus: &Path,
    params: &store::CollectParams,
    out: &Path,
    progress: &Progress,
) -> Result<store::ActivationStore> {
    let mut manifest = Manifest::from_params("sae collect", params)?
        .with_seed(Some(params.seed))
        .with_model(crate::report::manifest::ModelRecord::of(model)?);
    let s = collect_into(model, corpus, params, out, progress, &mut manifest)?;
    manifest.write(out)?;
    Ok(s)
}

/// `engram sae train`: train one SAE on a store; writes the SAE, `train_report.json` and a loss
/// curve into `out`, recording them in `manifest` (written by the caller).
pub fn train_into(
    store_dir: &Path,
    params: &train::TrainParams,
    out: &Path,
    progress: &Progress,
    manifest: &mut Manifest,
) -> Result<(Sae, train::TrainReport)> {
    let s = store::ActivationStore::open(store_dir)?;
    let (sae, rep) = train::train(&s, params, Some(out), &Device::Cpu, progress)?;
    manifest.record_timing("train", rep.seconds);
    for f in ["cfg.json", "sae_weights.safetensors", "train_report.json"] {
        manifest.add_file(f);
    }
    use crate::report::chart::{LineChart, Series};
    let pts = |f: &dyn Fn(&train::StepLog) -> f64| -> Vec<(f64, f64)> {
        rep.log.iter().map(|l| (l.step as f64, f(l))).collect()
    };
    for p in (LineChart {
        title: format!("{} SAE training ({})", rep.kind, s.meta.hook),
        x_label: "step".into(),
        y_label: "fraction of variance unexplained / L0 ÷ 100".into(),
        series: vec![
            Series::new("FVU", pts(&|l| l.fvu)),
            Series::new("L0 / 100", pts(&|l| l.l0 / 100.0)).dashed(),
        ],
    })
    .save(out, "training")?
    {
        if let Some(f) = p.file_name() {
            manifest.add_file(f.to_string_lossy().into_owned());
        }
    }
    manifest.note(format!(
        "{} steps of {} in {:.1}s ({:.2} steps/s), dead {}",
        rep.steps, rep.batch_size, rep.seconds, rep.steps_per_sec, rep.dead
    ));
    Ok((sae, rep))
}

/// [`train_into`] with a manifest of its own in `out`.
pub fn cmd_train(
    store_dir: &Path,
    params: &train::TrainParams,
    out: &Path,
    progress: &Progress,
) -> Result<(Sae, train::TrainReport)> {
    let mut manifest = Manifest::from_params("sae train", params)?.with_seed(Some(params.seed));
    let r = train_into(store_dir, params, out, progress, &mut manifest)?;
    manifest.write(out)?;
    Ok(r)
}

/// Token documents for CE / KL: the corpus documents after those the store consumed (wrapping
/// around to the start when the corpus is exhausted).
pub fn held_out_docs(model: &Model, corpus: &Path, skip: usize, n: usize) -> Result<Vec<Vec<u32>>> {
    let docs = crate::data::read_corpus(corpus)?;
    if docs.is_empty() {
        crate::bail!("{}: empty corpus", corpus.display());
    }
    let tok = model.tokenizer()?;
    (0..n.min(docs.len()))
        .map(|i| tok.encode(&docs[(skip + i) % docs.len()], false))
        .collect()
}

/// `engram sae eval`: metrics of the SAEs in `sae_dirs` on the store; CE / KL with a model;
/// tables and charts in `out`, recorded in `manifest` (written by the caller).
pub fn eval_into(
    sae_dirs: &[PathBuf],
    store_dir: &Path,
    model: Option<(&Model, &Path)>,
    params: &eval::EvalParams,
    out: &Path,
    progress: &Progress,
    manifest: &mut Manifest,
) -> Result<eval::EvalReport> {
    let s = store::ActivationStore::open(store_dir)?;
    let mut saes = vec![];
    for dir in sae_dirs {
        let sae = Sae::load(dir, &Device::Cpu)?;
        let label = dir
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| sae.kind.name().to_string());
        saes.push((label, sae));
    }
    let t0 = std::time::Instant::now();
    let docs = match model {
        Some((m, corpus)) => {
            eval::check_model_matches_store(m, &s)?;
            manifest.model = Some(crate::report::manifest::ModelRecord::of(m)?);
            Some(held_out_docs(m, corpus, s.meta.next_doc, params.ce_docs)?)
        }
        None => None,
    };
    let report = eval::evaluate(
        &saes,
        &s,
        model.zip(docs.as_deref()).map(|((m, _), d)| (m, d)),
        params,
        progress,
    )?;
    manifest.record_timing("eval", t0.elapsed().as_secs_f64());
    let tok = model.and_then(|(m, _)| m.tokenizer.as_ref());
    let text = |id: u32| -> String {
        match tok {
            Some(t) => t
                .decode(&[id], false)
                .unwrap_or_else(|_| format!("#{id}"))
                .replace('\n', "\\n"),
            None => format!("#{id}"),
        }
    };
    for f in eval::write_outputs(&report, &text, out)? {
        manifest.add_file(f);
    }
    for n in &report.notes {
        manifest.note(n.clone());
    }
    Ok(report)
}

/// [`eval_into`] with a manifest of its own in `out`.
pub fn cmd_eval(
    sae_dirs: &[PathBuf],
    store_dir: &Path,
    model: Option<(&Model, &Path)>,
    params: &eval::EvalParams,
    out: &Path,
    progress: &Progress,
) -> Result<eval::EvalReport> {
    let mut manifest = Manifest::from_params("sae eval", params)?;
    let r = eval_into(
        sae_dirs,
        store_dir,
        model,
        params,
        out,
        progress,
        &mut manifest,
    )?;
    manifest.write(out)?;
    Ok(r)
}

/// A one-line-per-dictionary summary of an evaluation.
pub fn format_report(r: &eval::EvalReport) -> String {
    let mut s = format!(
        "{:<14} {:>6} {:>8} {:>10} {:>8} {:>6} {:>8} {:>8} {:>7} {:>7}\n",
        "dictionary", "n", "R²", "MSE", "L0", "dead", "CE rec", "KL", "μ", "q*"
    );
    let f = |x: Option<f64>, p: usize| x.map_or("-".to_string(), |v| format!("{v:.p$}"));
    for e in &r.saes {
        s += &format!(
            "{:<14} {:>6} {:>8.4} {:>10.4} {:>8.1} {:>6} {:>8} {:>8} {:>7} {:>7}\n",
            e.label,
            e.dict_size,
            e.r2,
            e.mse,
            e.l0,
            e.dead,
            f(e.ce.as_ref().map(|c| c.ce_recovered), 4),
            f(e.ce.as_ref().map(|c| c.kl), 4),
            f(e.atoms.as_ref().map(|a| a.coherence), 3),
            f(e.atoms.as_ref().map(|a| a.q_star), 4),
        );
    }
    if let Some(n) = &r.neurons {
        s += &format!(
            "{:<14} {:>6} {:>8} {:>10} {:>8.1} {:>6} {:>8} {:>8} {:>7.3} {:>7.4}\n",
            "neurons", r.d, "1", "0", n.mean_support, 0, "-", "-", n.coherence, n.q_star
        );
    }
    s
}

/// Settings of `engram sae run`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct RunParams {
    pub collect: store::CollectParams,
    /// Shared by the three trainers (kind is overridden).
    pub train: train::TrainParams,
    pub eval: eval::EvalParams,
    pub kinds: Vec<SaeKind>,
    /// Sparsity multipliers: each kind is trained once per value (λ₀, λ₁ × m; k ÷ m).
    pub sweep: Vec<f64>,
}

impl Default for RunParams {
    fn default() -> Self {
        RunParams {
            collect: store::CollectParams::default(),
            train: train::TrainParams::default(),
            eval: eval::EvalParams::default(),
            kinds: SaeKind::ALL.to_vec(),
            sweep: vec![1.0],
        }
    }
}

/// `engram sae run`: collect → train each kind → evaluate, under `out/{store, <kind>, eval}`.
pub fn cmd_run(
    model: &Model,
    corpus: &Path,
    params: &RunParams,
    out: &Path,
    progress: &Progress,
) -> Result<(eval::EvalReport, Vec<train::TrainReport>)> {
    let store_dir = out.join("store");
    cmd_collect(model, corpus, &params.collect, &store_dir, progress)?;
    let mut dirs = vec![];
    let mut reps = vec![];
    for &kind in &params.kinds {
        for &m in &params.sweep {
            let base = &params.train;
            let p = train::TrainParams {
                kind,
                l0_coeff: base.l0_coeff * m,
                l1_coeff: base.l1_coeff * m,
                k: ((base.k as f64 / m).round() as usize).max(1),
                ..base.clone()
            };
            let dir = if params.sweep.len() == 1 {
                out.join(kind.name())
            } else {
                out.join(format!("{}_x{m}", kind.name()))
            };
            let (_, rep) = cmd_train(&store_dir, &p, &dir, progress)?;
            reps.push(rep);
            dirs.push(dir);
        }
    }
    let report = cmd_eval(
        &dirs,
        &store_dir,
        Some((model, corpus)),
        &params.eval,
        &out.join("eval"),
        progress,
    )?;
    Ok((report, reps))
}
