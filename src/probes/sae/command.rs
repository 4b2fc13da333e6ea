//! `engram sae collect | train | eval | run`: clap arguments and handlers.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::eval::EvalParams;
use super::store::CollectParams;
use super::train::TrainParams;
use super::{RunParams, SaeKind};
use crate::cli::ModelArgs;
use crate::model::{LoadOptions, Model};
use crate::progress::Progress;
use crate::Result;

/// `engram sae ...`
#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum SaeCommand {
    /// Stream activations of one hook point over a corpus into a sharded, shuffled store (resumes)
    Collect {
        #[command(flatten)]
        model: ModelArgs,
        /// Hook point, e.g. blocks.15.hook_resid_post
        #[arg(long)]
        hook: String,
        #[command(flatten)]
        collect: CollectArgs,
        #[arg(long, short = 'o')]
        out: PathBuf,
    },
    /// Train one SAE on a store (SAELens layout: cfg.json + sae_weights.safetensors)
    Train {
        #[arg(long)]
        store: PathBuf,
        /// threshold (JumpReLU), topk or relu
        #[arg(long, default_value = "threshold")]
        kind: String,
        #[command(flatten)]
        train: TrainArgs,
        #[arg(long, short = 'o')]
        out: PathBuf,
    },
    /// R², MSE, L0, dead latents, atoms (AIP coherence, q*), and CE recovered / KL with --model
    Eval {
        /// SAE directories (engram or SAELens layout), repeatable
        #[arg(long, required = true)]
        sae: Vec<PathBuf>,
        #[arg(long)]
        store: PathBuf,
        /// Model for CE-loss recovered and KL (and token strings)
        #[arg(long, short = 'm')]
        model: Option<String>,
        #[arg(long, default_value = "notebooks-data/corpus/corpus.jsonl")]
        corpus: PathBuf,
        #[command(flatten)]
        eval: EvalArgs,
        /// Output directory (default: <first SAE>/eval)
        #[arg(long, short = 'o')]
        out: Option<PathBuf>,
    },
    /// collect → train each kind (threshold, topk, relu; same data and budget) → eval
    Run {
        #[command(flatten)]
        model: ModelArgs,
        /// Layer of blocks.L.hook_resid_post (default: the middle layer)
        #[arg(long)]
        layer: Option<usize>,
        /// Hook point (overrides --layer)
        #[arg(long)]
        hook: Option<String>,
        #[command(flatten)]
        collect: CollectArgs,
        #[command(flatten)]
        train: TrainArgs,
        #[command(flatten)]
        eval: EvalArgs,
        /// Kinds to train, comma-separated
        #[arg(long, value_delimiter = ',', default_value = "threshold,topk,relu")]
        kinds: Vec<String>,
        /// Sparsity multipliers: each kind is trained once per value (λ₀ and λ₁ times it, k
        /// divided by it), for R² vs L0 curves
        #[arg(long, value_delimiter = ',', default_value = "1")]
        sweep: Vec<f64>,
        #[arg(long, short = 'o')]
        out: PathBuf,
    },
}

/// Collection settings shared by `collect` and `run`.
#[derive(Args, Debug, Clone)]
pub struct CollectArgs {
    /// Corpus (.jsonl with "text", or .txt with blank-line separated documents)
    #[arg(long, default_value = "notebooks-data/corpus/corpus.jsonl")]
    pub corpus: PathBuf,
    /// Number of activations (BOS and pad positions excluded)
    #[arg(long, default_value_t = 200_000)]
    pub tokens: usize,
    /// Activations per shard
    #[arg(long, default_value_t = 16384)]
    pub shard_size: usize,
    /// Shards per shuffled round (the in-memory buffer is shard_size × this)
    #[arg(long, default_value_t = 4)]
    pub shards_per_round: usize,
    /// Tokens per forward window (BOS included)
    #[arg(long, default_value_t = 256)]
    pub context: usize,
    /// Windows per forward pass
    #[arg(long, default_value_t = 8)]
    pub forward_batch: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl CollectArgs {
    fn params(&self, hook: String) -> CollectParams {
        CollectParams {
            hook,
            tokens: self.tokens,
            shard_size: self.shard_size,
            shards_per_round: self.shards_per_round,
            context: self.context,
            batch: self.forward_batch,
            seed: self.seed,
            corpus: self.corpus.display().to_string(),
            ..Default::default()
        }
    }
}

/// Trainer settings (unset = [`TrainParams::default`]).
#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub lr: Option<f64>,
    /// Dictionary size (default expansion · d)
    #[arg(long)]
    pub dict_size: Option<usize>,
    /// Dictionary size as a multiple of d (default 4)
    #[arg(long)]
    pub expansion: Option<usize>,
    /// λ of the L0 penalty (threshold), in units of E‖x‖² = d
    #[arg(long)]
    pub l0_coeff: Option<f64>,
    /// Bandwidth ε of the threshold's straight-through estimator
    #[arg(long)]
    pub bandwidth: Option<f64>,
    /// Initial threshold τ (normalised units)
    #[arg(long)]
    pub init_threshold: Option<f64>,
    /// Learning rate of log τ as a multiple of --lr (threshold)
    #[arg(long)]
    pub threshold_lr_mult: Option<f64>,
    /// k (topk)
    #[arg(long)]
    pub k: Option<usize>,
    /// λ₁ of the L1 penalty (relu)
    #[arg(long)]
    pub l1_coeff: Option<f64>,
    /// Save a checkpoint every N steps
    #[arg(long, default_value_t = 0)]
    pub checkpoint_every: usize,
    /// Seed of the initialisation and the batch order (`--seed` is the collection's)
    #[arg(long, default_value_t = 0)]
    pub train_seed: u64,
}

impl TrainArgs {
    fn params(&self, kind: SaeKind) -> TrainParams {
        let d = TrainParams::default();
        TrainParams {
            kind,
            steps: self.steps.unwrap_or(d.steps),
            batch_size: self.batch_size.unwrap_or(d.batch_size),
            lr: self.lr.unwrap_or(d.lr),
            dict_size: self.dict_size,
            expansion: self.expansion.unwrap_or(d.expansion),
            l0_coeff: self.l0_coeff.unwrap_or(d.l0_coeff),
            bandwidth: self.bandwidth.unwrap_or(d.bandwidth),
            init_threshold: self.init_threshold.unwrap_or(d.init_threshold),
            threshold_lr_mult: self.threshold_lr_mult.unwrap_or(d.threshold_lr_mult),
            k: self.k.unwrap_or(d.k),
            l1_coeff: self.l1_coeff.unwrap_or(d.l1_coeff),
            checkpoint_every: self.checkpoint_every,
            seed: self.train_seed,
            ..d
        }
    }
}

/// Evaluation settings.
#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// Windows scored for CE / KL (×2)
    #[arg(long, default_value_t = 8)]
    pub ce_docs: usize,
    /// Tokens per CE / KL window
    #[arg(long, default_value_t = 128)]
    pub ce_context: usize,
    /// Activations for S̃ = (E[m mᵀ] + εI)⁻¹
    #[arg(long, default_value_t = 100_000)]
    pub atom_samples: usize,
    /// Held-out activations for R², MSE, L0
    #[arg(long, default_value_t = 32768)]
    pub eval_samples: usize,
}

impl EvalArgs {
    fn params(&self) -> EvalParams {
        EvalParams {
            ce_docs: self.ce_docs,
            ce_context: self.ce_context,
            atom_samples: self.atom_samples,
            max_samples: self.eval_samples,
            ..Default::default()
        }
    }
}

/// Run one `engram sae ...` command.
pub fn run(cmd: SaeCommand, progress: &Progress) -> Result<()> {
    match cmd {
        SaeCommand::Collect {
            model,
            hook,
            collect,
            out,
        } => {
            let m = model.load()?;
            let params = collect.params(hook);
            let s = super::cmd_collect(&m, &collect.corpus, &params, &out, progress)?;
            println!(
                "{} activations (d {}) in {} shards → {}",
                s.len(),
                s.d(),
                s.n_shards(),
                out.display()
            );
        }
        SaeCommand::Train {
            store,
            kind,
            train,
            out,
        } => {
            let params = train.params(kind.parse()?);
            let (_, rep) = super::cmd_train(&store, &params, &out, progress)?;
            let last = rep.log.last();
            println!(
                "{} SAE, {} latents: FVU {:.4}, L0 {:.1}, dead {}; {:.2} steps/s → {}",
                rep.kind,
                rep.dict_size,
                last.map_or(f64::NAN, |l| l.fvu),
                last.map_or(f64::NAN, |l| l.l0),
                rep.dead,
                rep.steps_per_sec,
                out.display()
            );
        }
        SaeCommand::Eval {
            sae: dirs,
            store,
            model,
            corpus,
            eval,
            out,
        } => {
            let out = out.unwrap_or_else(|| dirs[0].join("eval"));
            let m = model
                .map(|spec| Model::load(&spec, &LoadOptions::default()))
                .transpose()?;
            let r = super::cmd_eval(
                &dirs,
                &store,
                m.as_ref().map(|m| (m, corpus.as_path())),
                &eval.params(),
                &out,
                progress,
            )?;
            print!("{}", super::format_report(&r));
            println!("wrote {}", out.display());
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
            let kinds = kinds
                .iter()
                .map(|k| k.parse())
                .collect::<Result<Vec<SaeKind>>>()?;
            if sweep.is_empty() || sweep.iter().any(|&s| !(s.is_finite() && s > 0.0)) {
                crate::bail!("--sweep needs positive multipliers, got {sweep:?}");
            }
            let m = model.load()?;
            let hook = match (hook, layer) {
                (Some(h), _) => h,
                (None, Some(l)) => format!("blocks.{l}.hook_resid_post"),
                (None, None) => format!("blocks.{}.hook_resid_post", m.cfg().n_layers / 2),
            };
            let params = RunParams {
                collect: collect.params(hook),
                train: train.params(SaeKind::Threshold),
                eval: eval.params(),
                kinds,
                sweep,
            };
            let (r, reps) = super::cmd_run(&m, &collect.corpus, &params, &out, progress)?;
            for t in &reps {
                println!(
                    "trained {} ({} latents): {:.2} steps/s of {}",
                    t.kind, t.dict_size, t.steps_per_sec, t.batch_size
                );
            }
            print!("{}", super::format_report(&r));
            println!("wrote {}", out.display());
        }
    }
    Ok(())
}
