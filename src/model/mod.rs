//! Model sources, configs, weights, tokenizers and the hooked forward pass.
//!
//! ```no_run
//! use engram::model::{Model, LoadOptions};
//! use engram::hooks::{HookFilter, Hooks};
//! let model = Model::load("smollm2", &LoadOptions::default())?;
//! let batch = model.batch(&["The Eiffel Tower is located in the city of"])?;
//! let (logits, cache) = model.run_with_cache(&batch, &HookFilter::new(&["blocks.*.attn.hook_pattern"]))?;
//! # Ok::<(), engram::Error>(())
//! ```

pub mod config;
pub mod export;
pub mod gemm;
mod generate;
pub mod grad;
pub mod kernels;
pub mod mapped;
pub mod random_checkpoint;
mod record;
pub mod source;
pub mod tokenizer;
pub mod transformer;
pub mod weights;

use std::ops::Deref;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

pub use config::{Arch, ModelConfig};
pub use generate::{Generated, Sampling};
pub use source::{ResolvedSource, SourceKind};
pub use tokenizer::Tokenizer;
pub use transformer::{Batch, LogitsAt, RunOptions, Transformer};

use crate::hooks::{ActivationCache, HookFilter, Hooks};
use crate::{Error, Result};

/// How to load a model.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub dtype: DType,
    pub device: Device,
    /// Hub revision (branch, tag or commit).
    pub revision: Option<String>,
    /// Use this tokenizer.json instead of the one beside the weights or inside the GGUF.
    pub tokenizer: Option<PathBuf>,
    /// Run the linear layers' products in bf16 (f32 CPU models only; see
    /// [`Transformer::use_bf16_matmul`]). On a bf16 / f16 safetensors checkpoint the weights
    /// are then multiplied where they lie in the file's map, with f32 activations
    /// ([`mapped`]) unless this CPU has native bf16 products (AMX, AVX512-BF16) and the f32
    /// load fits in memory; `ENGRAM_PACK_BF16=1` always packs them.
    pub bf16_matmul: bool,
    /// Force the choice between mapped (`Some(true)`) and packed (`Some(false)`) bf16 weights
    /// for `bf16_matmul` on a 16-bit safetensors checkpoint; `None`: the rule above.
    pub map_weights: Option<bool>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            dtype: DType::F32,
            device: Device::Cpu,
            revision: None,
            tokenizer: None,
            bf16_matmul: false,
            map_weights: None,
        }
    }
}

/// Which model to load and how, as text (the CLI's model options and a suite's model keys).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSpec {
    /// A `.gguf` file, a Hugging Face folder, a Hub repo id or an alias.
    pub model: String,
    /// Compute dtype: `f32`, `bf16` or `f16`.
    pub dtype: String,
    /// `cpu`, `cuda[:N]` or `metal`.
    pub device: String,
    /// Hub revision for repo ids.
    pub revision: Option<String>,
    /// A tokenizer.json to use instead of the model's own.
    pub tokenizer: Option<PathBuf>,
    /// Precision of the linear layers' products: `f32` or `bf16` (on a 16-bit safetensors
    /// checkpoint, the mapped weights: [`LoadOptions::bf16_matmul`]).
    pub matmul: String,
}

impl Default for ModelSpec {
    fn default() -> Self {
        ModelSpec {
            model: source::DEFAULT_MODEL.to_string(),
            dtype: "f32".into(),
            device: "cpu".into(),
            revision: None,
            tokenizer: None,
            matmul: "f32".into(),
        }
    }
}

impl ModelSpec {
    /// The default options for `model`.
    pub fn of(model: impl Into<String>) -> Self {
        ModelSpec {
            model: model.into(),
            ..Default::default()
        }
    }

    /// The keys a suite step may set for the model rather than the probe.
    pub const KEYS: [&'static str; 6] = [
        "model",
        "dtype",
        "device",
        "revision",
        "tokenizer",
        "matmul",
    ];

    /// The load options these settings ask for.
    pub fn options(&self) -> Result<LoadOptions> {
        let bf16_matmul = match self.matmul.as_str() {
            "f32" => false,
            "bf16" => true,
            other => crate::bail!("unknown matmul precision `{other}` (f32, bf16)"),
        };
        Ok(LoadOptions {
            dtype: parse_dtype(&self.dtype)?,
            device: parse_device(&self.device)?,
            revision: self.revision.clone(),
            tokenizer: self.tokenizer.clone(),
            bf16_matmul,
            map_weights: None,
        })
    }

    pub fn load(&self) -> Result<Model> {
        Model::load(&self.model, &self.options()?)
    }

    /// The model's config, read from the GGUF header or `config.json` without loading any
    /// weights (to check a probe's layer and width parameters before the load).
    pub fn config(&self) -> Result<ModelConfig> {
        let source = source::resolve(&self.model, self.revision.as_deref())?;
        match source.kind {
            SourceKind::Gguf => weights::GgufWeights::open(&source.path)?.config(),
            SourceKind::HfFolder | SourceKind::Hub => read_hf_config(&source.path),
        }
    }
}

/// `DIR/config.json` as a [`ModelConfig`].
fn read_hf_config(dir: &std::path::Path) -> Result<ModelConfig> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::msg(format!("{}: {e}", cfg_path.display())))?;
    ModelConfig::from_hf_json(&v).map_err(|e| Error::msg(format!("{}: {e}", cfg_path.display())))
}

/// Parse `f32`, `bf16`, `f16`.
pub fn parse_dtype(s: &str) -> Result<DType> {
    Ok(match s {
        "f32" | "float32" => DType::F32,
        "bf16" | "bfloat16" => DType::BF16,
        "f16" | "float16" => DType::F16,
        other => crate::bail!("unsupported dtype `{other}` (f32, bf16, f16)"),
    })
}

/// Pick the device: `cpu`, `cuda[:N]`, `metal` (the latter two need the cargo features).
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "metal" => Ok(Device::new_metal(0)?),
        s if s.starts_with("cuda") => {
            let n = s
                .strip_prefix("cuda:")
                .map(|n| n.parse::<usize>())
                .transpose()
                .map_err(|_| Error::msg(format!("bad device `{s}`")))?
                .unwrap_or(0);
            Ok(Device::new_cuda(n)?)
        }
        other => crate::bail!("unknown device `{other}` (cpu, cuda[:N], metal)"),
    }
}

/// Whether a safetensors load may take the 16-bit linear weights where they lie ([`mapped`]):
/// `--matmul bf16` on an f32 CPU model, unless `ENGRAM_PACK_BF16=1` asks for the packed bf16
/// panels or [`LoadOptions::map_weights`] decides.
fn may_map_weights(opts: &LoadOptions) -> bool {
    opts.bf16_matmul
        && opts.dtype == DType::F32
        && opts.device.is_cpu()
        && opts.map_weights != Some(false)
        && std::env::var_os("ENGRAM_PACK_BF16").is_none_or(|v| v == "0")
}

/// Mapped or packed bf16 weights for a checkpoint that could be mapped: mapped unless this CPU
/// multiplies packed bf16 natively (AMX tiles or AVX512-BF16, several times faster than the
/// mapped products on long batches) and the f32 load that packing needs fits in memory;
/// `LoadOptions::map_weights = Some(true)` maps regardless.
fn map_or_pack(opts: &LoadOptions, src: &dyn weights::WeightSource, what: &str) -> bool {
    use gemm::{Format, Kernel};
    let native = matches!(Kernel::best(Format::Bf16), Kernel::Amx | Kernel::Avx512);
    opts.map_weights == Some(true) || !native || weights::check_fits(src, DType::F32, what).is_err()
}

/// A loaded model: the transformer, its tokenizer, and where it came from.
pub struct Model {
    pub transformer: Transformer,
    pub tokenizer: Option<Tokenizer>,
    pub source: ResolvedSource,
    /// Seconds spent loading.
    pub load_seconds: f64,
    /// The weight files as they were when the load opened them (size, mtime, inode): the
    /// manifest's sha256 is refused if they changed since ([`record`]).
    pub weight_stamps: Vec<record::FileStamp>,
}

impl Deref for Model {
    type Target = Transformer;
    fn deref(&self) -> &Transformer {
        &self.transformer
    }
}

impl Model {
    /// Load from a `.gguf` file, a Hugging Face folder, a Hub repo id or an alias.
    pub fn load(spec: &str, opts: &LoadOptions) -> Result<Model> {
        crate::alloc::purging(|| Model::load_inner(spec, opts))
    }

    fn load_inner(spec: &str, opts: &LoadOptions) -> Result<Model> {
        let t0 = Instant::now();
        let mut source = source::resolve(spec, opts.revision.as_deref())?;
        if let Some(t) = &opts.tokenizer {
            source.tokenizer = Some(t.clone());
        }
        // Before anything is opened: a file replaced during the load then fails the hash.
        let weight_stamps = record::stamps(&source.path);
        // The tokenizer is built on one thread while the weights load (dequantize) on the others.
        let (transformer, tokenizer) = match source.kind {
            SourceKind::Gguf => {
                let w = weights::GgufWeights::open(&source.path)?;
                let cfg = w.config()?;
                let what = source.path.display().to_string();
                weights::check_fits(&w, opts.dtype, &what)?;
                weights::check_layers(&w, cfg.n_layers, &what)?;
                let (t, tok) = rayon::join(
                    || Transformer::load(&w, cfg, opts.dtype, &opts.device),
                    || load_tokenizer(&source, Some(&w.content)),
                );
                (t?, tok?)
            }
            SourceKind::HfFolder | SourceKind::Hub => {
                let cfg = read_hf_config(&source.path)?;
                let w = weights::SafetensorsWeights::open_dir(&source.path)?;
                let what = source.path.display().to_string();
                let map = may_map_weights(opts) && map_or_pack(opts, &w, &what);
                // Mapped weights need no copy: the file's own size is what must fit.
                let need = if map { DType::BF16 } else { opts.dtype };
                weights::check_fits(&w, need, &what)?;
                weights::check_layers(&w, cfg.n_layers, &what)?;
                let (t, tok) = rayon::join(
                    || Transformer::load_with(&w, cfg, opts.dtype, &opts.device, map),
                    || load_tokenizer(&source, None),
                );
                (t?, tok?)
            }
        };
        let mut transformer = transformer;
        if opts.bf16_matmul {
            transformer.use_bf16_matmul()?;
        }
        Ok(Model {
            transformer,
            tokenizer,
            source,
            load_seconds: t0.elapsed().as_secs_f64(),
            weight_stamps,
        })
    }

    /// Wrap an already-built transformer (tests, toy models).
    pub fn from_parts(
        transformer: Transformer,
        tokenizer: Option<Tokenizer>,
        source: ResolvedSource,
    ) -> Model {
        let weight_stamps = record::stamps(&source.path);
        Model {
            weight_stamps,
            transformer,
            tokenizer,
            source,
            load_seconds: 0.0,
        }
    }

    pub fn cfg(&self) -> &ModelConfig {
        &self.transformer.cfg
    }

    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| {
            Error::msg("this model has no tokenizer (give --tokenizer tokenizer.json)")
        })
    }

    /// The id used for left padding (pad, else eos, else 0); padded positions are masked anyway.
    pub fn pad_id(&self) -> u32 {
        let tok = self.tokenizer.as_ref();
        tok.and_then(|t| t.pad_id)
            .or(self.cfg().pad_token_id)
            .or_else(|| tok.and_then(|t| t.eos_ids.first().copied()))
            .unwrap_or(0)
    }

    /// Token ids of `text`, with BOS when the model expects it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer()?.encode(text, true)
    }

    /// The id of `text` as one token (no BOS), for answers and targets; several tokens are an
    /// error that shows the split (`what` names the flag, e.g. `--answer`).
    pub fn single_token(&self, text: &str, what: &str) -> Result<u32> {
        let tok = self.tokenizer()?;
        let ids = tok.encode(text, false)?;
        match ids[..] {
            [id] => Ok(id),
            [] => Err(Error::msg(format!("{what} {text:?} is no token at all"))),
            _ => {
                let pieces: Vec<String> = ids
                    .iter()
                    .map(|&i| format!("{:?}", tok.decode(&[i], false).unwrap_or_default()))
                    .collect();
                Err(Error::msg(format!(
                    "{what} {text:?} is {} tokens ({}); give one token (mind the leading space)",
                    ids.len(),
                    pieces.join(" + ")
                )))
            }
        }
    }

    /// Encode and left-pad several prompts.
    pub fn batch<S: AsRef<str>>(&self, texts: &[S]) -> Result<Batch> {
        let seqs = texts
            .iter()
            .map(|t| self.encode(t.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        Batch::new(&seqs, self.pad_id())
    }

    /// Full logits `[batch, seq, vocab]` (f32).
    pub fn forward(&self, batch: &Batch, hooks: &mut Hooks) -> Result<Tensor> {
        self.transformer
            .forward_with(batch, hooks, RunOptions::default())
    }

    /// TransformerLens `run_with_cache`: logits and the activations `filter` names.
    pub fn run_with_cache(
        &self,
        batch: &Batch,
        filter: &HookFilter,
    ) -> Result<(Tensor, ActivationCache)> {
        let mut hooks = Hooks::capture(filter.clone());
        let logits = self.forward(batch, &mut hooks)?;
        Ok((logits, hooks.cache))
    }

    /// Greedy continuation of a text prompt, decoded.
    pub fn complete(&self, prompt: &str, max_new: usize) -> Result<String> {
        let ids = self.encode(prompt)?;
        let new = self.generate(&[ids], max_new, &mut Hooks::none())?;
        self.tokenizer()?.decode(&new[0], true)
    }

    /// A short description of the model for manifests.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "spec": self.source.spec,
            "kind": self.source.kind,
            "path": self.source.path,
            "revision": self.source.revision,
            "commit": self.source.commit,
            "arch": self.cfg().arch,
            "dtype": format!("{:?}", self.dtype).to_lowercase(),
            "n_layers": self.cfg().n_layers,
            "d_model": self.cfg().d_model,
        })
    }
}

/// Cast any tensor to a flat `Vec<f32>`.
pub fn to_vec_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
}

/// The tokenizer of a resolved source: an explicit tokenizer.json first, else the GGUF's own
/// vocabulary, else the folder's tokenizer.json; `None` when there is none.
fn load_tokenizer(
    source: &ResolvedSource,
    gguf: Option<&candle_core::quantized::gguf_file::Content>,
) -> Result<Option<Tokenizer>> {
    if let Some(t) = &source.tokenizer {
        if !t.is_file() {
            return Err(Error::io(
                t,
                std::io::Error::new(std::io::ErrorKind::NotFound, "tokenizer not found"),
            ));
        }
        let dir = t.parent().unwrap_or(std::path::Path::new("."));
        return Tokenizer::from_hf_files(t, dir).map(Some);
    }
    if let Some(content) = gguf {
        return Tokenizer::from_gguf(content).map(Some);
    }
    if source.path.join("tokenizer.json").is_file() {
        return Tokenizer::from_hf_dir(&source.path).map(Some);
    }
    Ok(None)
}
