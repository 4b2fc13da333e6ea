//! The command line, the top floor: clap definitions (parsed flags) turned into the library's
//! resolved values (`ModelSpec`, each probe's `Params`), then one library call per command.
//! Nothing else in the crate imports this module.
//!
//! - [`probes`]: the probes' flags and their conversion to parameters.
//! - [`tools`]: `info`, `generate`, `cache`, `convert`.
//! - [`attrib`]: `lens` (logit lens, direct logit attribution) and `attribute` (AtP, IG, patching).
//! - [`batch`]: `engram batch`.

mod attrib;
mod batch;
mod probes;
mod sae;
mod tools;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::model::{source, Model, ModelSpec};
use crate::probes::Session;
use crate::progress::{Progress, ProgressMode};
use crate::Result;

pub use self::batch::BatchArgs;
pub use self::probes::{CmrFitArgs, DirectionsArgs, HeadsArgs, NeuronsArgs, ToyArgs};
pub use self::sae::SaeCommand;

#[derive(Parser, Debug)]
#[command(
    name = "engram",
    version,
    about = "Mechanistic interpretability for transformer language models",
    long_about = "engram loads a Llama / Mistral / Qwen2-3 / Gemma 1-3 / GPT-2 / Pythia / Phi-3 / OLMo-2 \
checkpoint (a .gguf file, a \
Hugging Face folder, a Hub repo id, or an alias of a model fetched by scripts/fetch-models.sh: \
smollm2, gemma3, qwen2), runs one hooked forward pass with TransformerLens hook names, and writes \
Parquet tables, charts and a manifest for each probe."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// No progress bars
    #[arg(long, global = true, display_order = 1000)]
    pub quiet: bool,
    /// Progress as JSON lines on stderr (for scripts)
    #[arg(long, global = true, display_order = 1000)]
    pub json_progress: bool,
}

/// Which model to load and how.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A .gguf file, a Hugging Face folder, a Hub repo id (org/name) or an alias (smollm2, gemma3, qwen2)
    #[arg(long, short = 'm', default_value = source::DEFAULT_MODEL)]
    pub model: String,
    /// Compute dtype: f32, bf16 or f16
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Device: cpu, cuda[:N] (feature `cuda`) or metal (feature `metal`)
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Hub revision (branch, tag or commit) for repo ids
    #[arg(long)]
    pub revision: Option<String>,
    /// A tokenizer.json to use instead of the model's own
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Precision of the linear layers' products: f32, or bf16 (weights and activations rounded
    /// to bf16, f32 accumulation: 1.4–2× faster on CPUs with AMX or AVX512-BF16, logits within
    /// ~1% of f32; needs --dtype f32 on the CPU). On a bf16/f16 safetensors checkpoint the
    /// weights are used where they lie in the file (no copy: memory ≈ the file's size) with f32
    /// activations — except on AMX / AVX512-BF16 CPUs when the f32 load fits in memory, which
    /// pack them (faster); ENGRAM_PACK_BF16=1 always packs them
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    pub matmul: String,
}

impl ModelArgs {
    /// The model these flags ask for.
    pub fn spec(&self) -> ModelSpec {
        ModelSpec {
            model: self.model.clone(),
            dtype: self.dtype.clone(),
            device: self.device.clone(),
            revision: self.revision.clone(),
            tokenizer: self.tokenizer.clone(),
            matmul: self.matmul.clone(),
        }
    }

    pub fn load(&self) -> Result<Model> {
        self.spec().load()
    }
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Architecture, sizes, dtype, tokenizer and the hook points of a model
    Info {
        #[command(flatten)]
        model: ModelArgs,
        /// Also list every hook point with its shape
        #[arg(long)]
        hooks: bool,
    },
    /// Generate from a prompt (greedy by default)
    Generate(tools::GenerateArgs),
    /// How a text splits into tokens (ids and token strings)
    Tokenize(tools::TokenizeArgs),
    /// Capture activations at hook points into DIR/activations.safetensors
    #[command(
        after_help = "Outputs in --out: activations.safetensors (one tensor per hook point, \
[prompts, positions, ...] as listed by `info --hooks`, plus `tokens` and `attention_mask`), \
tokens.parquet (prompt, position, token id, token string), index.html (the report page; with \
blocks.*.attn.hook_pattern captured, an attention viewer: docs/report.md), manifest.json."
    )]
    Cache(tools::CacheArgs),
    /// Write a Hugging Face folder (config.json, model.safetensors, tokenizer.json) from any model
    Convert {
        #[command(flatten)]
        model: ModelArgs,
        /// Output directory
        #[arg(long, short = 'o', value_name = "DIR")]
        out: PathBuf,
    },
    /// Induction heads and CMR-like heads: scores, lag-CRPs, CMR fits, optional ablation
    Heads(HeadsArgs),
    /// Fit CMR to lag-CRPs computed elsewhere (.npy [layers, heads, 16] over lags -8..+7)
    CmrFit(CmrFitArgs),
    /// Relation-specific neurons: AP selection, deactivation drop matrix, overlap (LRE relations)
    Neurons(NeuronsArgs),
    /// Base vs post-trained: truthfulness and refusal directions, patching maps, entropy neurons
    Directions(Box<DirectionsArgs>),
    /// Sparse autoencoders: activation stores, threshold / TopK / ReLU SAEs, metrics and atoms
    Sae {
        #[command(subcommand)]
        cmd: SaeCommand,
    },
    /// Logit lens (every layer read through the unembedding) and direct logit attribution of
    /// heads and MLPs
    Lens(attrib::LensArgs),
    /// Attribution patching, integrated gradients and exact activation patching over clean /
    /// corrupt prompt pairs
    Attribute(attrib::AttributeArgs),
    /// Train a small attention-only model on repeated random sequences (optionally with a clamped
    /// previous-token head), export it as a Hugging Face folder and run the head probe on it
    Toy(ToyArgs),
    /// Run a suite (probes/*.toml: models × probes) into one run directory with index.html; resumable
    Batch(BatchArgs),
}

/// Parse arguments and run; the binary maps the error to one line and exit code 1.
pub fn run<I, T>(args: I) -> Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            // --help / --version print and succeed; usage errors print clap's message.
            let code = e.exit_code();
            let _ = e.print();
            if code == 0 {
                return Ok(());
            }
            std::process::exit(2);
        }
    };
    let progress = Progress::new(if cli.quiet {
        ProgressMode::Quiet
    } else if cli.json_progress {
        ProgressMode::JsonLines
    } else {
        ProgressMode::auto()
    });
    // SIGINT / SIGTERM remove partial outputs (src/interrupt.rs).
    crate::interrupt::install();
    let mut session = Session::new(progress);
    match cli.command {
        Command::Info { model, hooks } => tools::info(&model, hooks),
        Command::Generate(a) => tools::generate(&a),
        Command::Tokenize(a) => tools::tokenize(&a),
        Command::Cache(a) => tools::cache(&a),
        Command::Convert { model, out } => tools::convert(&model, &out),
        Command::Heads(a) => probes::heads(&a, &mut session),
        Command::CmrFit(a) => probes::cmr_fit(&a, &mut session),
        Command::Neurons(a) => probes::neurons(&a, &mut session),
        Command::Directions(a) => probes::directions(&a, &mut session),
        Command::Sae { cmd } => sae::sae(cmd, &mut session),
        Command::Toy(a) => probes::toy(&a, &mut session),
        Command::Lens(a) => attrib::lens(&a, &mut session),
        Command::Attribute(a) => attrib::attribute(&a, &mut session),
        Command::Batch(a) => batch::run(&a, &mut session),
    }
}
