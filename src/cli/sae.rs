//! `engram sae ...`: the subcommands' flags (collect, train, eval, pretrained, run, dashboard)
//! and their conversion into the SAE probes' parameters.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::probes::{run, OutArg};
use super::ModelArgs;
use crate::model::ModelSpec;
use crate::probes::sae::dashboard::{DashboardParams, DashboardProbe as SaeDashboard};
use crate::probes::sae::pretrained::{self, Registry as PretrainedRegistry};
use crate::probes::sae::probe::{self as sae, CollectOpts, EvalOpts, TrainOpts};
use crate::probes::Session;
use crate::Result;

/// `engram sae ...`.
#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum SaeCommand {
    /// Stream activations of hook points over a corpus into a sharded, shuffled store (resumes)
    #[command(
        after_help = "Outputs in --out: store.json, shard_*.safetensors, manifest.json.\n\
Several hooks (--hook A --hook B, or A,B) sit side by side in each row: a transcoder's input \
and target (blocks.L.ln2.hook_normalized, blocks.L.hook_mlp_out), or SAEs on several layers \
from one forward pass."
    )]
    Collect {
        #[command(flatten)]
        model: ModelArgs,
        /// Hook point, e.g. blocks.15.hook_resid_post; repeatable
        #[arg(long, required = true, value_delimiter = ',')]
        hook: Vec<String>,
        #[command(flatten)]
        collect: CollectFlags,
        #[command(flatten)]
        out: OutArg,
    },
    /// Train one SAE or transcoder on a store (SAELens layout: cfg.json + sae_weights.safetensors)
    #[command(after_help = "Outputs in --out: cfg.json, sae_weights.safetensors, \
train_report.json, training.png/.svg, manifest.json.\n\
Kinds: threshold (JumpReLU, L0 penalty), topk (k per sample), relu (L1), batchtopk (k·batch \
per batch, then one global threshold) and matryoshka (batchtopk with nested prefix losses); \
batchtopk and matryoshka are saved as JumpReLU SAEs, as SAELens saves them. A transcoder: \
--target blocks.L.hook_mlp_out on a store collected with --hook blocks.L.ln2.hook_normalized \
--hook blocks.L.hook_mlp_out (--skip adds a linear skip connection).")]
    Train {
        /// The activation store (a `sae collect` output)
        #[arg(long, value_name = "DIR")]
        store: PathBuf,
        /// SAE architecture
        #[arg(long, default_value = "threshold",
              value_parser = ["threshold", "topk", "relu", "batchtopk", "matryoshka"])]
        kind: String,
        /// The store hook the SAE reads [default: the store's first]
        #[arg(long)]
        hook: Option<String>,
        /// Train a transcoder that reconstructs this store hook
        #[arg(long)]
        target: Option<String>,
        /// A skip transcoder: also learn a linear map from input to target
        #[arg(long, requires = "target")]
        skip: bool,
        #[command(flatten)]
        train: TrainFlags,
        #[command(flatten)]
        out: OutArg,
    },
    /// R², MSE, L0, dead latents, atoms (AIP coherence, q*), and CE recovered / KL with --model
    #[command(
        after_help = "Outputs in --out (default <first SAE>/eval): metrics.parquet, \
atoms.parquet, summary.json, r2_vs_l0, q_star, coherence_hist, frequency_hist (.png + .svg), \
manifest.json. Columns: docs/outputs.md."
    )]
    Eval {
        /// SAE directories (engram or SAELens layout) or pretrained RELEASE/SAE_ID (`engram sae
        /// pretrained`; an existing directory wins), repeatable
        #[arg(long, required = true, value_name = "DIR|RELEASE/SAE_ID")]
        sae: Vec<PathBuf>,
        /// The activation store the SAEs were trained on
        #[arg(long, value_name = "DIR")]
        store: PathBuf,
        /// Model for CE-loss recovered and KL (and token strings)
        #[arg(long, short = 'm')]
        model: Option<String>,
        /// Corpus for CE / KL (documents after those the store consumed)
        #[arg(long, value_name = "FILE", default_value_os_t = sae::EvalArgs::default().corpus)]
        corpus: PathBuf,
        #[command(flatten)]
        eval: EvalFlags,
        /// Output directory (default: <first SAE>/eval; required when it is a pretrained SAE)
        #[arg(long, short = 'o', value_name = "DIR")]
        out: Option<PathBuf>,
        /// Replace the evaluation already in the output directory
        #[arg(long)]
        force: bool,
    },
    /// List the pretrained SAE releases `--sae RELEASE/SAE_ID` accepts (or one release's ids)
    #[command(
        after_help = "Files are looked up in the Hugging Face cache ($HF_HUB_CACHE, else \
$HF_HOME/hub, else ~/.cache/huggingface/hub) and fetched through the Hub unless HF_HUB_OFFLINE is \
set. docs/sae.md, \"Pretrained SAEs\"."
    )]
    Pretrained {
        /// A release: its repo, SAE-id rules, folders and hooks
        release: Option<String>,
    },
    /// collect → train each kind in one pass over the store (same data and budget) → eval
    #[command(
        after_help = "Outputs in --out: store/, one folder per trained SAE (threshold/, \
topk/, relu/, or <kind>_x<m>/ with --sweep), eval/, each with its manifest; manifest.json."
    )]
    Run {
        #[command(flatten)]
        model: ModelArgs,
        /// Layer of blocks.L.hook_resid_post [default: the middle layer]
        #[arg(long)]
        layer: Option<usize>,
        /// Hook point (overrides --layer)
        #[arg(long)]
        hook: Option<String>,
        #[command(flatten)]
        collect: CollectFlags,
        #[command(flatten)]
        train: TrainFlags,
        #[command(flatten)]
        eval: EvalFlags,
        /// Kinds to train, comma-separated (threshold, topk, relu, batchtopk, matryoshka)
        #[arg(long, value_delimiter = ',', default_value = "threshold,topk,relu")]
        kinds: Vec<String>,
        /// Sparsity multipliers: each kind is trained once per value (λ₀ and λ₁ times it, k
        /// divided by it), for R² vs L0 curves
        #[arg(long, value_delimiter = ',', default_value = "1")]
        sweep: Vec<f64>,
        #[command(flatten)]
        out: OutArg,
    },
    /// Feature dashboards: top contexts, activation histograms, frequencies and logit effects
    #[command(
        after_help = "Outputs in --out: dashboard.html (self-contained: search a latent \
by index, sort by frequency; tokens highlighted by activation), latents.parquet, \
neuronpedia/batch-N.json (SAEDashboard's Neuronpedia format), index.html, manifest.json. \
Columns: docs/outputs.md."
    )]
    Dashboard(DashboardArgs),
}

fn dashboard_defaults() -> DashboardParams {
    DashboardParams::default()
}

/// `engram sae dashboard`.
#[derive(Args, Debug, Clone)]
pub struct DashboardArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The SAE: a folder in SAELens layout (cfg.json + sae_weights.safetensors)
    #[arg(long, value_name = "DIR")]
    pub sae: PathBuf,
    /// Hook point [default: the SAE's hook_name]
    #[arg(long)]
    pub hook: Option<String>,
    /// Corpus (.jsonl with "text", or .txt with blank-line separated documents)
    #[arg(long, value_name = "FILE", default_value_os_t = dashboard_defaults().corpus)]
    pub corpus: PathBuf,
    /// Token positions to encode (BOS, pads and special tokens not counted)
    #[arg(long, default_value_t = dashboard_defaults().tokens)]
    pub tokens: usize,
    /// Tokens per forward window (BOS included)
    #[arg(long, default_value_t = dashboard_defaults().context)]
    pub context: usize,
    /// Windows per forward pass
    #[arg(long, default_value_t = dashboard_defaults().forward_batch)]
    pub forward_batch: usize,
    /// Latents: 0..N, a comma-separated list, or a mix (0..8,20) [default: all]
    #[arg(long, default_value = "")]
    pub latents: String,
    /// Top-activating contexts per latent
    #[arg(long, default_value_t = dashboard_defaults().top)]
    pub top: usize,
    /// Tokens shown before a context's maximum
    #[arg(long, default_value_t = dashboard_defaults().window_before)]
    pub window_before: usize,
    /// Tokens shown after a context's maximum
    #[arg(long, default_value_t = dashboard_defaults().window_after)]
    pub window_after: usize,
    /// Top positive and negative logit tokens per latent
    #[arg(long, default_value_t = dashboard_defaults().logits)]
    pub logits: usize,
    /// Bins of the activation and logit histograms
    #[arg(long, default_value_t = dashboard_defaults().bins)]
    pub bins: usize,
    /// Latents per Neuronpedia batch file
    #[arg(long, default_value_t = dashboard_defaults().features_per_batch)]
    pub features_per_batch: usize,
    #[command(flatten)]
    pub out: OutArg,
}

impl DashboardArgs {
    pub fn params(&self) -> DashboardParams {
        DashboardParams {
            sae: self.sae.clone(),
            hook: self.hook.clone(),
            corpus: self.corpus.clone(),
            tokens: self.tokens,
            context: self.context,
            forward_batch: self.forward_batch,
            latents: self.latents.clone(),
            top: self.top,
            window_before: self.window_before,
            window_after: self.window_after,
            logits: self.logits,
            bins: self.bins,
            features_per_batch: self.features_per_batch,
        }
    }
}

fn collect_defaults() -> CollectOpts {
    CollectOpts::default()
}

/// Collection flags shared by `collect` and `run`.
#[derive(Args, Debug, Clone)]
pub struct CollectFlags {
    /// Corpus (.jsonl with "text", or .txt with blank-line separated documents)
    #[arg(long, value_name = "FILE", default_value_os_t = collect_defaults().corpus)]
    pub corpus: PathBuf,
    /// Number of activations (BOS and pad positions excluded)
    #[arg(long, default_value_t = collect_defaults().tokens)]
    pub tokens: usize,
    /// Activations per shard
    #[arg(long, default_value_t = collect_defaults().shard_size)]
    pub shard_size: usize,
    /// Shards per shuffled round (the in-memory buffer is shard_size × this)
    #[arg(long, default_value_t = collect_defaults().shards_per_round)]
    pub shards_per_round: usize,
    /// Tokens per forward window (BOS included)
    #[arg(long, default_value_t = collect_defaults().context)]
    pub context: usize,
    /// Windows per forward pass
    #[arg(long, default_value_t = collect_defaults().forward_batch)]
    pub forward_batch: usize,
    /// Seed of the shuffle
    #[arg(long, default_value_t = collect_defaults().seed)]
    pub seed: u64,
}

impl CollectFlags {
    pub fn opts(&self) -> CollectOpts {
        CollectOpts {
            corpus: self.corpus.clone(),
            tokens: self.tokens,
            shard_size: self.shard_size,
            shards_per_round: self.shards_per_round,
            context: self.context,
            forward_batch: self.forward_batch,
            seed: self.seed,
        }
    }
}

fn train_defaults() -> TrainOpts {
    TrainOpts::default()
}

/// Trainer flags shared by `train` and `run`.
#[derive(Args, Debug, Clone)]
pub struct TrainFlags {
    /// Training steps
    #[arg(long, default_value_t = train_defaults().steps)]
    pub steps: usize,
    /// Activations per step
    #[arg(long, default_value_t = train_defaults().batch_size)]
    pub batch_size: usize,
    /// Adam learning rate
    #[arg(long, default_value_t = train_defaults().lr)]
    pub lr: f64,
    /// Dictionary size [default: --expansion × d]
    #[arg(long)]
    pub dict_size: Option<usize>,
    /// Dictionary size as a multiple of d
    #[arg(long, default_value_t = train_defaults().expansion)]
    pub expansion: usize,
    /// λ of the L0 penalty (threshold), in units of E‖x‖² = d
    #[arg(long, default_value_t = train_defaults().l0_coeff)]
    pub l0_coeff: f64,
    /// Bandwidth ε of the threshold's straight-through estimator
    #[arg(long, default_value_t = train_defaults().bandwidth)]
    pub bandwidth: f64,
    /// Initial threshold τ (normalised units)
    #[arg(long, default_value_t = train_defaults().init_threshold)]
    pub init_threshold: f64,
    /// Learning rate of log τ as a multiple of --lr (threshold)
    #[arg(long, default_value_t = train_defaults().threshold_lr_mult)]
    pub threshold_lr_mult: f64,
    /// Active latents per sample (topk)
    #[arg(long, default_value_t = train_defaults().k)]
    pub k: usize,
    /// λ₁ of the L1 penalty (relu)
    #[arg(long, default_value_t = train_defaults().l1_coeff)]
    pub l1_coeff: f64,
    /// Save a checkpoint every N steps (0 = never)
    #[arg(long, default_value_t = train_defaults().checkpoint_every)]
    pub checkpoint_every: usize,
    /// Seed of the initialisation and the batch order (`--seed` is the collection's)
    #[arg(long, default_value_t = train_defaults().train_seed)]
    pub train_seed: u64,
    /// Nested prefix widths whose losses are summed (matryoshka) [default: n/16,n/8,n/4,n/2]
    #[arg(long, value_delimiter = ',')]
    pub matryoshka_widths: Vec<usize>,
    /// α of the AuxK loss that revives dead latents (topk, batchtopk, matryoshka; 0 = off)
    #[arg(long, default_value_t = train_defaults().aux_k_coeff)]
    pub aux_k_coeff: f64,
    /// Dead latents in the AuxK reconstruction [default: d / 2]
    #[arg(long)]
    pub aux_k: Option<usize>,
}

impl TrainFlags {
    pub fn opts(&self) -> TrainOpts {
        TrainOpts {
            steps: self.steps,
            batch_size: self.batch_size,
            lr: self.lr,
            dict_size: self.dict_size,
            expansion: self.expansion,
            l0_coeff: self.l0_coeff,
            bandwidth: self.bandwidth,
            init_threshold: self.init_threshold,
            threshold_lr_mult: self.threshold_lr_mult,
            k: self.k,
            l1_coeff: self.l1_coeff,
            checkpoint_every: self.checkpoint_every,
            train_seed: self.train_seed,
            matryoshka_widths: self.matryoshka_widths.clone(),
            aux_k_coeff: self.aux_k_coeff,
            aux_k: self.aux_k,
        }
    }
}

fn eval_defaults() -> EvalOpts {
    EvalOpts::default()
}

/// Evaluation flags shared by `eval` and `run`.
#[derive(Args, Debug, Clone)]
pub struct EvalFlags {
    /// Windows scored for CE / KL (×2)
    #[arg(long, default_value_t = eval_defaults().ce_docs)]
    pub ce_docs: usize,
    /// Tokens per CE / KL window
    #[arg(long, default_value_t = eval_defaults().ce_context)]
    pub ce_context: usize,
    /// Activations for S̃ = (E[m mᵀ] + εI)⁻¹
    #[arg(long, default_value_t = eval_defaults().atom_samples)]
    pub atom_samples: usize,
    /// Held-out activations for R², MSE, L0
    #[arg(long, default_value_t = eval_defaults().eval_samples)]
    pub eval_samples: usize,
}

impl EvalFlags {
    pub fn opts(&self) -> EvalOpts {
        EvalOpts {
            ce_docs: self.ce_docs,
            ce_context: self.ce_context,
            atom_samples: self.atom_samples,
            eval_samples: self.eval_samples,
        }
    }
}

/// Run one `engram sae ...` command.
pub fn sae(cmd: SaeCommand, session: &mut Session) -> Result<()> {
    match cmd {
        SaeCommand::Collect {
            model,
            hook,
            collect,
            out,
        } => {
            let mut hooks = hook.into_iter();
            let p = sae::CollectArgs {
                hook: hooks.next().unwrap_or_default(),
                extra_hooks: hooks.collect(),
                collect: collect.opts(),
            };
            run::<sae::Collect>(session, Some(model.spec()), &p, &out)
        }
        SaeCommand::Train {
            store,
            kind,
            hook,
            target,
            skip,
            train,
            out,
        } => {
            let p = sae::TrainArgs {
                store,
                kind,
                hook,
                target,
                skip,
                train: train.opts(),
            };
            run::<sae::Train>(session, None, &p, &out)
        }
        SaeCommand::Eval {
            sae: dirs,
            store,
            model,
            corpus,
            eval,
            out,
            force,
        } => {
            let out = match out {
                Some(out) => out,
                None if !dirs[0].exists()
                    && PretrainedRegistry::builtin()
                        .lookup(&dirs[0].to_string_lossy())?
                        .is_some() =>
                {
                    crate::bail!(
                        "sae eval: give --out DIR (the first --sae, {}, is a pretrained SAE)",
                        dirs[0].display()
                    )
                }
                None => dirs[0].join("eval"),
            };
            let out = OutArg { out, force };
            let p = sae::EvalArgs {
                sae: dirs,
                store,
                corpus,
                eval: eval.opts(),
            };
            run::<sae::Eval>(session, model.map(ModelSpec::of), &p, &out)
        }
        SaeCommand::Pretrained { release } => {
            let reg = PretrainedRegistry::builtin();
            match release {
                None => print!("{}", pretrained::format_listing(reg)),
                Some(name) => match reg.release(&name) {
                    Some(r) => print!("{}", pretrained::format_release(r)),
                    None => crate::bail!(
                        "release `{name}` is not in engram's registry (closest: {})",
                        reg.closest(&name, 3).join(", ")
                    ),
                },
            }
            Ok(())
        }
        SaeCommand::Run {
            model,
            layer,
            hook,
            collect,
            train,
            eval,
            kinds,
            sweep,
            out,
        } => {
            let p = sae::RunArgs {
                layer,
                hook,
                collect: collect.opts(),
                train: train.opts(),
                eval: eval.opts(),
                kinds,
                sweep,
            };
            run::<sae::Run>(session, Some(model.spec()), &p, &out)
        }
        SaeCommand::Dashboard(a) => {
            run::<SaeDashboard>(session, Some(a.model.spec()), &a.params(), &a.out)
        }
    }
}
