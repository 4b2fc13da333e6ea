//! The probes' flags: one clap struct per probe, turned into the probe's `Params` (the flags'
//! names are the parameters' keys, see `tests/it/cli.rs`), run through the one runner.

use std::path::PathBuf;

use clap::Args;

use super::ModelArgs;
use crate::model::ModelSpec;
use crate::probes::cmr_fit::{CmrFit, CmrFitParams};
use crate::probes::directions::{Directions, DirectionsParams};
use crate::probes::heads::{AblationParams, Heads, HeadsParams};
use crate::probes::neurons::{Neurons, NeuronsParams};
use crate::probes::toy::{Toy, ToyParams};
use crate::probes::{self, ParamMap, Probe, Session};
use crate::report::outdir::OutDir;
use crate::Result;

/// Run probe `P` into `out` and print its summary. The parameters are checked first; then
/// `--out` is taken as a unit ([`OutDir`]: locked, a finished run replaced only with
/// `--force`, outputs renamed into place on success) or, for probes that resume their own
/// output, in place.
pub fn run<P: Probe>(
    session: &mut Session,
    spec: Option<ModelSpec>,
    params: &P::Params,
    out: &OutArg,
) -> Result<()> {
    P::check(params)?;
    let dir = if P::RESUMES_OUTPUT {
        OutDir::in_place(&out.out)?
    } else {
        OutDir::begin(&out.out, out.force)?
    };
    let outcome = probes::run::<P>(session, spec.as_ref(), params, dir.path())?;
    dir.commit()?;
    for line in &outcome.summary {
        println!("{line}");
    }
    println!("wrote {}", out.out.display());
    Ok(())
}

/// The output directory every probe takes.
#[derive(Args, Debug, Clone)]
pub struct OutArg {
    /// Output directory (created; written as a unit: into a hidden .DIR.partial beside it,
    /// renamed into place when the command succeeds)
    #[arg(long, short = 'o', value_name = "DIR")]
    pub out: PathBuf,
    /// Replace the engram run DIR already holds (without it, a finished run is never
    /// overwritten; a directory that is not an engram run is never replaced)
    #[arg(long)]
    pub force: bool,
}

fn heads_defaults() -> HeadsParams {
    HeadsParams::default()
}

/// `engram heads`.
#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Outputs in --out: heads.parquet (one row per head: scores and CMR fit), \
lag_crp.parquet (lag-CRP per head and lag), tokens.parquet (the random sequences), \
patterns.safetensors (the first sequences' attention patterns), ablation.parquet (with --ablate), \
charts (induction_heatmap, cmr_distance_heatmap, cmr_share_per_layer, induction_vs_cmr, \
lag_crp_top_heads, ablation; .png + .svg), index.html (the report page: attention viewer, lag-CRPs, \
tables; docs/report.md), manifest.json. Columns: docs/outputs.md.

Without --cmr-table the fit uses engram's own simulation of CMR's lag-CRP table, shipped with \
engram (the paper's configuration and engram's default seed; docs/heads.md)."
)]
pub struct HeadsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub out: OutArg,
    /// Length n of the random sequence R (rows are [bos] + R + R)
    #[arg(long, default_value_t = heads_defaults().seq_len)]
    pub seq_len: usize,
    /// Number of sequences
    #[arg(long, default_value_t = heads_defaults().batch)]
    pub batch: usize,
    /// Sequences per forward pass (memory bound)
    #[arg(long, default_value_t = heads_defaults().chunk)]
    pub chunk: usize,
    /// Seed of the random tokens and of the random-head control
    #[arg(long, default_value_t = heads_defaults().seed)]
    pub seed: u64,
    /// CMR lag-CRP table (.npy [20,21,11,17]); default: engram's own simulation (shipped)
    #[arg(long, value_name = "FILE")]
    pub cmr_table: Option<PathBuf>,
    /// Ablate the top 10% CMR-like heads vs random heads and report ICL scores
    #[arg(long)]
    pub ablate: bool,
    /// Corpus for --ablate (.jsonl with "text", or .txt with blank-line separated documents)
    #[arg(long, value_name = "FILE", default_value_os_t = heads_defaults().ablation.corpus)]
    pub corpus: PathBuf,
    /// Documents used by --ablate
    #[arg(long, default_value_t = heads_defaults().ablation.docs)]
    pub docs: usize,
    /// Random head sets in the --ablate control
    #[arg(long, default_value_t = heads_defaults().ablation.random_sets)]
    pub random_sets: usize,
}

impl HeadsArgs {
    pub fn params(&self) -> HeadsParams {
        HeadsParams {
            seq_len: self.seq_len,
            batch: self.batch,
            seed: self.seed,
            chunk: self.chunk,
            cmr_table: self.cmr_table.clone(),
            ablate: self.ablate,
            ablation: AblationParams {
                corpus: self.corpus.clone(),
                docs: self.docs,
                random_sets: self.random_sets,
                ..Default::default()
            },
        }
    }
}

/// `engram cmr-fit`.
#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Outputs in --out: heads.parquet (one row per head: its CMR fit), lag_crp.parquet \
(the given lag-CRPs), cmr_distance_heatmap, cmr_share_per_layer and lag_crp_top_heads \
(.png + .svg), manifest.json. Columns: docs/outputs.md."
)]
pub struct CmrFitArgs {
    /// The head lag-CRP array (.npy [layers, heads, 16] over lags -8..+7)
    #[arg(long, value_name = "FILE")]
    pub crp: PathBuf,
    /// CMR lag-CRP table (.npy [20,21,11,17]); default: engram's own simulation (shipped)
    #[arg(long, value_name = "FILE")]
    pub table: Option<PathBuf>,
    #[command(flatten)]
    pub out: OutArg,
}

impl CmrFitArgs {
    pub fn params(&self) -> CmrFitParams {
        CmrFitParams {
            crp: self.crp.clone(),
            table: self.table.clone(),
        }
    }
}

fn toy_defaults() -> ToyParams {
    ToyParams::default()
}

/// `engram toy`.
#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Outputs in --out: model/ (Hugging Face folder), untrained/ (the same \
initialisation, untrained), training.parquet, training_loss.png/.svg, heads/ (the head probe on the \
trained model, clamp applied), manifest.json."
)]
pub struct ToyArgs {
    #[command(flatten)]
    pub out: OutArg,
    /// Training steps
    #[arg(long, default_value_t = toy_defaults().steps)]
    pub steps: usize,
    /// Seed of the weights (and seed + 1 of the training data)
    #[arg(long, default_value_t = toy_defaults().seed)]
    pub seed: u64,
    /// Clamp this head to a perfect previous-token pattern during training and probing, as
    /// LAYER:HEAD (e.g. 0:0): the "optogenetic" knob of Singh et al. 2024
    #[arg(long, value_name = "LAYER:HEAD")]
    pub clamp: Option<String>,
    /// Learning rate (AdamW)
    #[arg(long, default_value_t = toy_defaults().lr)]
    pub lr: f64,
    /// Sequences per step
    #[arg(long, default_value_t = toy_defaults().batch)]
    pub batch: usize,
    /// Longest repeated sequence R of the training rows (rows are 2·seq_len + 1 tokens); also the
    /// probe's sequence length
    #[arg(long, default_value_t = toy_defaults().seq_len)]
    pub seq_len: usize,
    /// Shortest R of the training rows
    #[arg(long, default_value_t = toy_defaults().min_seq_len)]
    pub min_seq_len: usize,
    /// Attention heads per layer
    #[arg(long, default_value_t = toy_defaults().heads)]
    pub heads: usize,
    /// Layers
    #[arg(long, default_value_t = toy_defaults().layers)]
    pub layers: usize,
    /// Vocabulary size (token 0 is BOS)
    #[arg(long, default_value_t = toy_defaults().vocab)]
    pub vocab: usize,
    /// CMR lag-CRP table for the head probe (.npy [20,21,11,17]); default: engram's own
    /// simulation (shipped)
    #[arg(long, value_name = "FILE")]
    pub cmr_table: Option<PathBuf>,
}

impl ToyArgs {
    pub fn params(&self) -> ToyParams {
        ToyParams {
            steps: self.steps,
            seed: self.seed,
            clamp: self.clamp.clone(),
            lr: self.lr,
            batch: self.batch,
            seq_len: self.seq_len,
            min_seq_len: self.min_seq_len,
            heads: self.heads,
            layers: self.layers,
            vocab: self.vocab,
            cmr_table: self.cmr_table.clone(),
        }
    }
}

fn neurons_defaults() -> NeuronsParams {
    NeuronsParams::default()
}

/// `engram neurons`.
#[derive(Args, Debug, Clone)]
#[command(
    long_about = "Relation-specific neurons (Liu et al., EMNLP 2025; docs/methods.md §2).

For every LRE relation: prompts from the relation's first template, greedy answers checked \
against the object (case-insensitive prefix), a detection set and a disjoint evaluation set of \
subjects. Each gate_proj / up_proj / down_proj output unit of every layer is scored by the \
average precision of its mean response separating the relation's correctly answered detection \
prompts from 4x as many of other relations'; the top k are the relation's neurons. They are then \
zeroed at every position and the accuracy drop is measured on every relation's evaluation set \
(drop matrix, cumulative curve over k, random-neuron control, interference = negative drops).

Relations the model almost never answers correctly are reported (relations.parquet, manifest \
notes) and skipped.",
    after_help = "Outputs in --out: neurons.parquet, deactivation.parquet, overlap.parquet, \
relations.parquet, prompts.parquet, neurons_per_layer / drop_heatmap / cumulative_k / overlap_heatmap \
(.png, .svg), manifest.json. Columns: docs/outputs.md."
)]
pub struct NeuronsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub out: OutArg,
    /// Folder of LRE relation files (*.json with name, prompt_templates, samples)
    #[arg(long, value_name = "DIR", default_value_os_t = neurons_defaults().relations)]
    pub relations: PathBuf,
    /// Only these relations (file stems, comma separated, e.g. company_hq,country_capital_city)
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub only: Vec<String>,
    /// Neurons per relation requested (the paper's 3000 for Llama-2-7B); capped by --k-share
    #[arg(long, default_value_t = neurons_defaults().k)]
    pub k: usize,
    /// Cap k at this share of all gate+up+down units (default: the paper's share of Llama-2-7B,
    /// 3000 / 835,584; e.g. k = 392 for SmolLM2-135M, 306 for Gemma-3-270M)
    #[arg(long, default_value_t = neurons_defaults().k_share)]
    pub k_share: f64,
    /// Multiples of k for the cumulative curve (own relation and random control), comma separated
    #[arg(long, value_delimiter = ',', default_values_t = neurons_defaults().k_multiples)]
    pub k_multiples: Vec<f64>,
    /// Evaluation facts per relation (at most half of the relation's subjects)
    #[arg(long, default_value_t = neurons_defaults().eval_per_relation)]
    pub eval_per_relation: usize,
    /// Subjects used per relation after the seeded shuffle (evaluation + detection); 0 = all
    #[arg(long, default_value_t = neurons_defaults().max_prompts)]
    pub max_prompts: usize,
    /// Skip a relation whose evaluation accuracy is below this
    #[arg(long, default_value_t = neurons_defaults().min_accuracy)]
    pub min_accuracy: f64,
    /// Skip a relation with fewer correctly answered detection prompts than this
    #[arg(long, default_value_t = neurons_defaults().min_correct)]
    pub min_correct: usize,
    /// Negatives per positive (from other relations' correct detection prompts)
    #[arg(long, default_value_t = neurons_defaults().neg_ratio)]
    pub neg_ratio: usize,
    /// Prompts per forward pass / generation batch
    #[arg(long, default_value_t = neurons_defaults().batch_size)]
    pub batch_size: usize,
    /// Cap on generated tokens per prompt (each generates len(object) + 2 tokens, at most this)
    #[arg(long, default_value_t = neurons_defaults().max_new_tokens)]
    pub max_new_tokens: usize,
    /// Include the BOS token in the mean response
    #[arg(long)]
    pub include_bos: bool,
    /// Seed of the subject split, the negatives and the random control
    #[arg(long, default_value_t = neurons_defaults().seed)]
    pub seed: u64,
}

impl NeuronsArgs {
    pub fn params(&self) -> NeuronsParams {
        NeuronsParams {
            relations: self.relations.clone(),
            only: self.only.clone(),
            k: self.k,
            k_share: self.k_share,
            eval_per_relation: self.eval_per_relation,
            max_prompts: self.max_prompts,
            seed: self.seed,
            batch_size: self.batch_size,
            max_new_tokens: self.max_new_tokens,
            neg_ratio: self.neg_ratio,
            min_correct: self.min_correct,
            min_accuracy: self.min_accuracy,
            k_multiples: self.k_multiples.clone(),
            include_bos: self.include_bos,
        }
    }
}

fn directions_defaults() -> DirectionsParams {
    DirectionsParams::default()
}

/// `engram directions`. The sizes are optional: unset ones take the probe's defaults, which
/// are smaller for `--toy-pair`.
#[derive(Args, Debug, Clone, serde::Serialize)]
#[command(
    after_help = "Outputs in --out (per part run): truth.parquet, truth_intervention.parquet, \
refusal.parquet, refusal_candidates.parquet, refusal_layers.parquet, patching.parquet, \
entropy_neurons.parquet, compare.parquet (with --compare or --toy-pair); charts truth_accuracy, \
refusal_rates, patching_<model>, patching_diff, entropy_neurons, cosine_by_layer (.png + .svg); \
manifest.json; toy/ with --toy-pair. Columns: docs/outputs.md. Unset sizes take the defaults in \
docs/directions.md (smaller ones with --toy-pair)."
)]
pub struct DirectionsArgs {
    #[command(flatten)]
    #[serde(skip)]
    pub model: ModelArgs,
    #[command(flatten)]
    #[serde(skip)]
    pub out: OutArg,
    /// A second model of the same width to compare with (e.g. the post-trained version of --model)
    #[arg(long, value_name = "MODEL")]
    pub compare: Option<String>,
    /// Run only these parts (comma separated): truth, refusal, patching, entropy [default: all]
    #[arg(long, value_delimiter = ',', value_name = "PARTS")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub only: Vec<String>,
    /// Train the toy base / post-trained pair, save it under OUT/toy/ and compare the two
    /// (ignores --model, --compare and --data)
    #[arg(long)]
    pub toy_pair: bool,
    /// Training steps of the toy pair (base, then half as many of post-training)
    #[arg(long, default_value_t = directions_defaults().toy_steps)]
    pub toy_steps: usize,
    /// Dataset folder (statements/*.csv, instructions/harmful.csv, instructions/harmless.csv)
    #[arg(long, value_name = "DIR", default_value_os_t = directions_defaults().data)]
    pub data: PathBuf,
    /// Main statement dataset (statements/NAME.csv)
    #[arg(long, default_value_t = directions_defaults().truth_dataset)]
    pub truth_dataset: String,
    /// Held-out statement datasets (comma separated)
    #[arg(long, value_delimiter = ',', default_values_t = directions_defaults().heldout)]
    pub heldout: Vec<String>,
    /// Seed of the statement and instruction samples
    #[arg(long, default_value_t = directions_defaults().seed)]
    pub seed: u64,
    /// Prompts per forward pass
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Training statements (balanced true / false)
    #[arg(long)]
    pub n_train: Option<usize>,
    /// Test statements (balanced true / false)
    #[arg(long)]
    pub n_test: Option<usize>,
    /// Statements per held-out dataset
    #[arg(long)]
    pub n_heldout: Option<usize>,
    /// Few-shot examples before "This statement is:"
    #[arg(long)]
    pub shots: Option<usize>,
    /// Statements intervened on
    #[arg(long)]
    pub n_intervene: Option<usize>,
    /// Layers of the truth intervention, START:END (end exclusive) [default: the second quarter]
    #[arg(long, value_name = "START:END")]
    pub band: Option<String>,
    /// Layer of the refusal direction (resid_pre of block L; L = layers is the final residual);
    /// default: chosen by ablation among --refusal-range of the depth (with the position)
    #[arg(long)]
    pub refusal_layer: Option<usize>,
    /// Position of the refusal direction from the end (0 = last token); default: chosen among
    /// the post-instruction positions (the chat template's end-of-turn / assistant-start tokens)
    #[arg(long)]
    pub refusal_position: Option<usize>,
    /// Candidate refusal directions (lowest bypass score) also tested for addition and KL
    #[arg(long)]
    pub refusal_top_k: Option<usize>,
    /// Candidate refusal layers as a relative depth range A:B of 0..=layers [default: 0.2:0.8]
    #[arg(long, value_name = "A:B")]
    pub refusal_range: Option<String>,
    /// Harmful / harmless training instructions (each) held back to select the refusal direction
    #[arg(long)]
    pub refusal_select_n: Option<usize>,
    /// Harmful / harmless instructions (each) for the refusal direction
    #[arg(long)]
    pub n_refusal_train: Option<usize>,
    /// Held-out harmful / harmless instructions (each) for the refusal rates
    #[arg(long)]
    pub n_refusal_test: Option<usize>,
    /// Tokens generated per instruction
    #[arg(long)]
    pub max_new: Option<usize>,
    /// Coefficient of the activation addition [default: ‖mean harmful − mean harmless‖]
    #[arg(long)]
    pub addition_coef: Option<f64>,
    /// Do not wrap instructions in the chat template
    #[arg(long)]
    #[serde(skip)]
    pub no_chat: bool,
    /// True/false pairs in the patching map
    #[arg(long)]
    pub patch_pairs: Option<usize>,
    /// Positions from the end in the patching map
    #[arg(long)]
    pub patch_positions: Option<usize>,
}

impl DirectionsArgs {
    /// The given options over the probe's defaults (the toy pair's with `--toy-pair`).
    pub fn params(&self) -> Result<DirectionsParams> {
        let v = serde_json::to_value(self)
            .map_err(|e| crate::Error::msg(format!("directions: {e}")))?;
        let mut given: ParamMap = v
            .as_object()
            .map(|o| {
                o.iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        if self.no_chat {
            given.insert("chat".into(), false.into());
        }
        probes::parse::<Directions>(&given)
    }
}

/// Run `engram heads | cmr-fit | toy | neurons | directions`.
pub fn heads(a: &HeadsArgs, session: &mut Session) -> Result<()> {
    run::<Heads>(session, Some(a.model.spec()), &a.params(), &a.out)
}

pub fn cmr_fit(a: &CmrFitArgs, session: &mut Session) -> Result<()> {
    run::<CmrFit>(session, None, &a.params(), &a.out)
}

pub fn toy(a: &ToyArgs, session: &mut Session) -> Result<()> {
    run::<Toy>(session, None, &a.params(), &a.out)
}

pub fn neurons(a: &NeuronsArgs, session: &mut Session) -> Result<()> {
    run::<Neurons>(session, Some(a.model.spec()), &a.params(), &a.out)
}

pub fn directions(a: &DirectionsArgs, session: &mut Session) -> Result<()> {
    let p = a.params()?;
    run::<Directions>(session, Some(a.model.spec()), &p, &a.out)
}
