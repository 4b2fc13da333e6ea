//! `engram sae collect | train | eval | run` as [`Probe`]s, with flat parameter structs whose
//! keys are the commands' flags. Shared groups ([`CollectOpts`], [`TrainOpts`], [`EvalOpts`])
//! are flattened into each command's parameters.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::eval::{EvalParams, EvalReport};
use super::store::CollectParams;
use super::train::{TrainParams, TrainReport};
use super::{RunParams, SaeKind};
use crate::probes::{Context, ModelUse, Probe, Report};
use crate::Result;

const CORPUS: &str = "notebooks-data/corpus/corpus.jsonl";

/// Collection settings shared by `collect` and `run`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct CollectOpts {
    /// Corpus (.jsonl with "text", or .txt with blank-line separated documents).
    pub corpus: PathBuf,
    /// Number of activations (BOS and pad positions excluded).
    pub tokens: usize,
    /// Activations per shard.
    pub shard_size: usize,
    /// Shards per shuffled round (the in-memory buffer is shard_size × this).
    pub shards_per_round: usize,
    /// Tokens per forward window (BOS included).
    pub context: usize,
    /// Windows per forward pass.
    pub forward_batch: usize,
    /// Seed of the shuffle.
    pub seed: u64,
}

impl Default for CollectOpts {
    fn default() -> Self {
        let d = CollectParams::default();
        CollectOpts {
            corpus: PathBuf::from(CORPUS),
            tokens: d.tokens,
            shard_size: d.shard_size,
            shards_per_round: d.shards_per_round,
            context: d.context,
            forward_batch: d.batch,
            seed: d.seed,
        }
    }
}

impl CollectOpts {
    /// Sizes that would give an empty or degenerate store.
    pub fn check(&self) -> Result<()> {
        crate::probes::at_least_one(&[
            ("--tokens", self.tokens),
            ("--shard-size", self.shard_size),
            ("--shards-per-round", self.shards_per_round),
            ("--forward-batch", self.forward_batch),
        ])?;
        if self.context < 2 {
            crate::bail!(
                "--context must be at least 2 (BOS and one token), got {}",
                self.context
            );
        }
        if self.shard_size < 64 && self.tokens > 64 * self.shard_size {
            crate::bail!(
                "--shard-size {} would write {} shards; give at least 64 activations per shard",
                self.shard_size,
                self.tokens.div_ceil(self.shard_size)
            );
        }
        Ok(())
    }

    pub fn params(&self, hook: String) -> CollectParams {
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

/// Trainer settings shared by `train` and `run`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainOpts {
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    /// Dictionary size (default expansion · d).
    pub dict_size: Option<usize>,
    /// Dictionary size as a multiple of d.
    pub expansion: usize,
    /// λ of the L0 penalty (threshold), in units of E‖x‖² = d.
    pub l0_coeff: f64,
    /// Bandwidth ε of the threshold's straight-through estimator.
    pub bandwidth: f64,
    /// Initial threshold τ (normalised units).
    pub init_threshold: f64,
    /// Learning rate of log τ as a multiple of lr (threshold).
    pub threshold_lr_mult: f64,
    /// k (topk).
    pub k: usize,
    /// λ₁ of the L1 penalty (relu).
    pub l1_coeff: f64,
    /// Save a checkpoint every N steps (0 = never).
    pub checkpoint_every: usize,
    /// Seed of the initialisation and the batch order.
    pub train_seed: u64,
    /// Nested prefix widths (matryoshka; default n/16, n/8, n/4, n/2).
    #[serde(deserialize_with = "crate::probes::comma_list")]
    pub matryoshka_widths: Vec<usize>,
    /// α of the AuxK loss (topk, batchtopk, matryoshka; 0 = off).
    pub aux_k_coeff: f64,
    /// Dead latents in the AuxK reconstruction (default d / 2).
    pub aux_k: Option<usize>,
}

impl Default for TrainOpts {
    fn default() -> Self {
        let d = TrainParams::default();
        TrainOpts {
            steps: d.steps,
            batch_size: d.batch_size,
            lr: d.lr,
            dict_size: d.dict_size,
            expansion: d.expansion,
            l0_coeff: d.l0_coeff,
            bandwidth: d.bandwidth,
            init_threshold: d.init_threshold,
            threshold_lr_mult: d.threshold_lr_mult,
            k: d.k,
            l1_coeff: d.l1_coeff,
            checkpoint_every: d.checkpoint_every,
            train_seed: d.seed,
            matryoshka_widths: d.matryoshka_widths,
            aux_k_coeff: d.aux_k_coeff,
            aux_k: d.aux_k,
        }
    }
}

impl TrainOpts {
    /// One-line errors for settings that would panic or train nothing (a zero batch, zero
    /// steps, a non-finite or non-positive learning rate, an empty dictionary).
    pub fn check(&self) -> Result<()> {
        crate::probes::at_least_one(&[("--batch-size", self.batch_size), ("--steps", self.steps)])?;
        if !(self.lr.is_finite() && self.lr > 0.0) {
            crate::bail!("--lr must be a positive number, got {}", self.lr);
        }
        if self.dict_size == Some(0) || self.expansion == 0 {
            crate::bail!("the dictionary must have at least one latent (--dict-size, --expansion)");
        }
        if !(self.bandwidth.is_finite() && self.bandwidth > 0.0) {
            crate::bail!(
                "--bandwidth must be a positive number, got {}",
                self.bandwidth
            );
        }
        for (name, v) in [
            ("--l0-coeff", self.l0_coeff),
            ("--l1-coeff", self.l1_coeff),
            ("--init-threshold", self.init_threshold),
            ("--threshold-lr-mult", self.threshold_lr_mult),
            ("--aux-k-coeff", self.aux_k_coeff),
        ] {
            if !v.is_finite() || v < 0.0 {
                crate::bail!("{name} must be a finite non-negative number, got {v}");
            }
        }
        if self.aux_k == Some(0) {
            crate::bail!("--aux-k must be at least 1 (turn AuxK off with --aux-k-coeff 0)");
        }
        if let Some(n) = self.dict_size {
            if self.matryoshka_widths.iter().any(|&w| w == 0 || w > n) {
                crate::bail!(
                    "--matryoshka-widths must lie in 1..={n} (the dictionary size), got {:?}",
                    self.matryoshka_widths
                );
            }
        }
        if self.matryoshka_widths.windows(2).any(|w| w[0] >= w[1]) {
            crate::bail!(
                "--matryoshka-widths must increase, got {:?}",
                self.matryoshka_widths
            );
        }
        Ok(())
    }

    pub fn params(&self, kind: SaeKind) -> TrainParams {
        TrainParams {
            kind,
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
            seed: self.train_seed,
            matryoshka_widths: self.matryoshka_widths.clone(),
            aux_k_coeff: self.aux_k_coeff,
            aux_k: self.aux_k,
            ..TrainParams::default()
        }
    }
}

/// Evaluation settings shared by `eval` and `run`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct EvalOpts {
    /// Windows scored for CE / KL (×2).
    pub ce_docs: usize,
    /// Tokens per CE / KL window.
    pub ce_context: usize,
    /// Activations for S̃ = (E[m mᵀ] + εI)⁻¹.
    pub atom_samples: usize,
    /// Held-out activations for R², MSE, L0.
    pub eval_samples: usize,
}

impl Default for EvalOpts {
    fn default() -> Self {
        let d = EvalParams::default();
        EvalOpts {
            ce_docs: d.ce_docs,
            ce_context: d.ce_context,
            atom_samples: d.atom_samples,
            eval_samples: d.max_samples,
        }
    }
}

impl EvalOpts {
    pub fn params(&self) -> EvalParams {
        EvalParams {
            ce_docs: self.ce_docs,
            ce_context: self.ce_context,
            atom_samples: self.atom_samples,
            max_samples: self.eval_samples,
            ..Default::default()
        }
    }
}

/// A report whose files were written while the probe ran.
pub struct Written {
    files: Vec<String>,
    summary: Vec<String>,
}

impl Report for Written {
    fn write(&self, _dir: &Path) -> Result<Vec<String>> {
        Ok(self.files.clone())
    }
    fn summary(&self) -> Vec<String> {
        self.summary.clone()
    }
}

/// Parameters of `engram sae collect`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CollectArgs {
    /// Hook point, e.g. blocks.15.hook_resid_post.
    pub hook: String,
    /// More hooks stored beside it in the same rows (a transcoder's target, other layers).
    #[serde(deserialize_with = "crate::probes::comma_list")]
    pub extra_hooks: Vec<String>,
    #[serde(flatten)]
    pub collect: CollectOpts,
}

/// `engram sae collect`.
pub struct Collect;

impl Probe for Collect {
    const NAME: &'static str = "sae collect";
    const RESUMES_OUTPUT: bool = true;
    type Params = CollectArgs;
    type Report = Written;

    fn seed(p: &CollectArgs) -> Option<u64> {
        Some(p.collect.seed)
    }

    fn check(p: &CollectArgs) -> Result<()> {
        if p.hook.trim().is_empty() {
            crate::bail!("sae collect: give --hook (e.g. blocks.15.hook_resid_post)");
        }
        p.collect.check()?;
        crate::data::require_file(&p.collect.corpus, "corpus")?;
        Ok(())
    }

    const CHECKS_MODEL: bool = true;

    fn check_model(p: &CollectArgs, cfg: &crate::model::ModelConfig) -> Result<()> {
        for h in std::iter::once(&p.hook).chain(&p.extra_hooks) {
            super::store::store_point(cfg, h)?;
        }
        Ok(())
    }

    fn run(cx: &mut Context<'_>, p: &CollectArgs) -> Result<Written> {
        let m = cx.model()?;
        let mut params = p.collect.params(p.hook.clone());
        params.extra_hooks = p.extra_hooks.clone();
        let s = super::collect_into(
            &m,
            &p.collect.corpus,
            &params,
            cx.out,
            cx.progress,
            cx.manifest,
        )?;
        Ok(Written {
            files: vec![],
            summary: vec![format!(
                "{} activations (d {}) in {} shards",
                s.len(),
                s.d(),
                s.n_shards()
            )],
        })
    }
}

/// Parameters of `engram sae train`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainArgs {
    /// The activation store (a `sae collect` output).
    pub store: PathBuf,
    /// threshold (JumpReLU), topk, relu, batchtopk or matryoshka.
    pub kind: String,
    /// The store hook the SAE reads (default: the store's first).
    pub hook: Option<String>,
    /// A transcoder: the store hook it reconstructs.
    pub target: Option<String>,
    /// A skip transcoder (a linear map from input to target beside the latents).
    pub skip: bool,
    #[serde(flatten)]
    pub train: TrainOpts,
}

impl Default for TrainArgs {
    fn default() -> Self {
        TrainArgs {
            store: PathBuf::new(),
            kind: "threshold".into(),
            hook: None,
            target: None,
            skip: false,
            train: TrainOpts::default(),
        }
    }
}

/// `engram sae train`.
pub struct Train;

impl Probe for Train {
    const NAME: &'static str = "sae train";
    type Params = TrainArgs;
    type Report = Written;

    fn model_use(_: &TrainArgs) -> ModelUse {
        ModelUse::None
    }

    fn seed(p: &TrainArgs) -> Option<u64> {
        Some(p.train.train_seed)
    }

    fn check(p: &TrainArgs) -> Result<()> {
        p.kind.parse::<SaeKind>()?;
        p.train.check()?;
        if p.store.as_os_str().is_empty() {
            crate::bail!("sae train: give --store DIR (a `sae collect` output)");
        }
        if p.skip && p.target.is_none() {
            crate::bail!("sae train: --skip makes a skip transcoder; give its --target hook");
        }
        if p.target.is_some() && p.target == p.hook {
            crate::bail!("sae train: --target must differ from --hook");
        }
        Ok(())
    }

    fn run(cx: &mut Context<'_>, p: &TrainArgs) -> Result<Written> {
        let mut params = p.train.params(p.kind.parse()?);
        params.hook = p.hook.clone();
        params.target = p.target.clone();
        params.skip = p.skip;
        let store = super::store::ActivationStore::open(&p.store)?;
        store.part(p.hook.as_deref())?;
        if let Some(t) = &p.target {
            store.part(Some(t))?;
        }
        let (_, rep) = super::train_into(&p.store, &params, cx.out, cx.progress, cx.manifest)?;
        let last = rep.log.last();
        Ok(Written {
            files: vec![],
            summary: vec![format!(
                "{} {}, {} latents: FVU {:.4}, L0 {:.1}, dead {}; {:.2} steps/s",
                rep.kind,
                match (&rep.target, p.skip) {
                    (Some(_), true) => "skip transcoder",
                    (Some(_), false) => "transcoder",
                    (None, _) => "SAE",
                },
                rep.dict_size,
                last.map_or(f64::NAN, |l| l.fvu),
                last.map_or(f64::NAN, |l| l.l0),
                rep.dead,
                rep.steps_per_sec
            )],
        })
    }
}

/// Parameters of `engram sae eval`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct EvalArgs {
    /// SAE directories (engram or SAELens layout) or pretrained `RELEASE/SAE_ID`.
    #[serde(deserialize_with = "crate::probes::comma_list")]
    pub sae: Vec<PathBuf>,
    /// The activation store the SAEs were trained on.
    pub store: PathBuf,
    /// Corpus for CE / KL (with a model).
    pub corpus: PathBuf,
    #[serde(flatten)]
    pub eval: EvalOpts,
}

impl Default for EvalArgs {
    fn default() -> Self {
        EvalArgs {
            sae: vec![],
            store: PathBuf::new(),
            corpus: PathBuf::from(CORPUS),
            eval: EvalOpts::default(),
        }
    }
}

/// `engram sae eval`.
pub struct Eval;

impl Probe for Eval {
    const NAME: &'static str = "sae eval";
    type Params = EvalArgs;
    type Report = Written;

    fn model_use(_: &EvalArgs) -> ModelUse {
        ModelUse::Optional
    }

    fn check(p: &EvalArgs) -> Result<()> {
        if p.sae.is_empty() {
            crate::bail!("sae eval: give at least one --sae DIR");
        }
        if p.store.as_os_str().is_empty() {
            crate::bail!("sae eval: give --store DIR");
        }
        // Unknown releases and SAE ids fail before any model is loaded.
        for s in &p.sae {
            super::pretrained::resolve_sae_arg(s)?;
        }
        Ok(())
    }

    fn run(cx: &mut Context<'_>, p: &EvalArgs) -> Result<Written> {
        let corpus = p.corpus.as_path();
        let model = cx.model.clone();
        let r = super::eval_into(
            &p.sae,
            &p.store,
            model.as_deref().map(|m| (m, corpus)),
            &p.eval.params(),
            cx.out,
            cx.progress,
            cx.manifest,
        )?;
        Ok(Written {
            files: vec![],
            summary: eval_lines(&r),
        })
    }
}

fn eval_lines(r: &EvalReport) -> Vec<String> {
    super::format_report(r).lines().map(String::from).collect()
}

/// Parameters of `engram sae run`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct RunArgs {
    /// Layer of blocks.L.hook_resid_post (default: the middle layer).
    pub layer: Option<usize>,
    /// Hook point (overrides layer).
    pub hook: Option<String>,
    #[serde(flatten)]
    pub collect: CollectOpts,
    #[serde(flatten)]
    pub train: TrainOpts,
    #[serde(flatten)]
    pub eval: EvalOpts,
    /// Kinds to train.
    #[serde(deserialize_with = "crate::probes::comma_list")]
    pub kinds: Vec<String>,
    /// Sparsity multipliers: each kind is trained once per value (λ₀ and λ₁ times it, k
    /// divided by it), for R² vs L0 curves.
    #[serde(deserialize_with = "crate::probes::comma_list")]
    pub sweep: Vec<f64>,
}

impl Default for RunArgs {
    fn default() -> Self {
        RunArgs {
            layer: None,
            hook: None,
            collect: CollectOpts::default(),
            train: TrainOpts::default(),
            eval: EvalOpts::default(),
            kinds: SaeKind::DEFAULT_RUN
                .iter()
                .map(|k| k.name().to_string())
                .collect(),
            sweep: vec![1.0],
        }
    }
}

impl RunArgs {
    /// The hook point: `--hook`, else `blocks.{--layer}.hook_resid_post`, else the middle layer's.
    fn hook_in(&self, cfg: &crate::model::ModelConfig) -> String {
        match (&self.hook, self.layer) {
            (Some(h), _) => h.clone(),
            (None, Some(l)) => format!("blocks.{l}.hook_resid_post"),
            (None, None) => format!("blocks.{}.hook_resid_post", cfg.n_layers / 2),
        }
    }
}

/// `engram sae run`: collect → train each kind → evaluate, under `OUT/{store, <kind>, eval}`.
pub struct Run;

impl Probe for Run {
    const NAME: &'static str = "sae run";
    const RESUMES_OUTPUT: bool = true;
    type Params = RunArgs;
    type Report = Written;

    fn seed(p: &RunArgs) -> Option<u64> {
        Some(p.collect.seed)
    }

    fn check(p: &RunArgs) -> Result<()> {
        for k in &p.kinds {
            k.parse::<SaeKind>()?;
        }
        if p.kinds.is_empty() {
            crate::bail!("sae run: --kinds is empty");
        }
        p.train.check()?;
        p.collect.check()?;
        if p.sweep.is_empty() || p.sweep.iter().any(|&s| !(s.is_finite() && s > 0.0)) {
            crate::bail!("--sweep needs positive multipliers, got {:?}", p.sweep);
        }
        crate::data::require_file(&p.collect.corpus, "corpus")?;
        Ok(())
    }

    const CHECKS_MODEL: bool = true;

    fn check_model(p: &RunArgs, cfg: &crate::model::ModelConfig) -> Result<()> {
        super::store::store_point(cfg, &p.hook_in(cfg)).map(drop)
    }

    fn run(cx: &mut Context<'_>, p: &RunArgs) -> Result<Written> {
        let m = cx.model()?;
        let hook = p.hook_in(m.cfg());
        let params = RunParams {
            collect: p.collect.params(hook),
            train: p.train.params(SaeKind::Threshold),
            eval: p.eval.params(),
            kinds: p
                .kinds
                .iter()
                .map(|k| k.parse())
                .collect::<Result<Vec<SaeKind>>>()?,
            sweep: p.sweep.clone(),
        };
        let (r, reps) = super::cmd_run(&m, &p.collect.corpus, &params, cx.out, cx.progress)?;
        for t in &reps {
            cx.manifest
                .record_timing(&format!("train.{}", t.kind), t.seconds);
        }
        let mut summary: Vec<String> = reps.iter().map(trained_line).collect();
        summary.extend(eval_lines(&r));
        // Every file the sub-steps wrote (they keep their own manifests), for the index page.
        let mut files = vec![];
        list_files(cx.out, Path::new(""), &mut files)?;
        files.retain(|f| f != crate::report::manifest::MANIFEST_FILE);
        files.sort();
        Ok(Written { files, summary })
    }
}

fn trained_line(t: &TrainReport) -> String {
    format!(
        "trained {} ({} latents): {:.2} steps/s of {}",
        t.kind, t.dict_size, t.steps_per_sec, t.batch_size
    )
}

/// Relative paths (with `/`) of every regular file below `dir`.
pub fn list_files(dir: &Path, rel: &Path, out: &mut Vec<String>) -> Result<()> {
    let here = dir.join(rel);
    for e in std::fs::read_dir(&here).map_err(|e| crate::Error::io(&here, e))? {
        let e = e.map_err(|e| crate::Error::io(&here, e))?;
        let r = rel.join(e.file_name());
        let ty = e
            .file_type()
            .map_err(|err| crate::Error::io(e.path(), err))?;
        if ty.is_dir() {
            list_files(dir, &r, out)?;
        } else if ty.is_file() {
            out.push(r.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}
