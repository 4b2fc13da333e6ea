//! Flags of `engram lens` and `engram attribute`.

use std::path::PathBuf;

use clap::Args;

use super::probes::{run, OutArg};
use super::ModelArgs;
use crate::probes::attribute::{Attribute, AttributeParams};
use crate::probes::lens::{Lens, LensParams};
use crate::probes::Session;
use crate::Result;

/// `engram lens`.
#[derive(Args, Debug, Clone)]
#[command(
    long_about = "The logit lens and direct logit attribution (docs/lens.md).

Logit lens: every layer's residual stream (blocks.l.hook_resid_pre; the last layer's \
hook_resid_post as the final row) read through the final norm and the unembedding, at every \
position: the rank and probability of the next token (of the target at the last position) and \
the top tokens. Its final row is the model's own logits.

Direct logit attribution: at the last position, every head's attn.hook_result, each layer's \
hook_mlp_out (and hook_embed, b_O, learned positions) projected on W_U[target] − W_U[baseline] \
through the final norm with its actual scale folded in, as TransformerLens does; the components \
sum to the (pre-softcap) logit difference.",
    after_help = "Outputs in --out: lens.parquet (prompt × layer × position: next token, its rank \
and probability, top-1), lens_top.parquet (the top --top-k tokens), dla.parquet (prompt × \
component), prompts.parquet (target, baseline, final rank / probability, logit difference, DLA \
sum), charts lens_rank_heatmap, lens_target_prob, dla_heads_heatmap, dla_layers (.png + .svg), \
manifest.json. Columns: docs/outputs.md.

Example: engram lens -m smollm2 -p \"The Eiffel Tower is in the city of\" --target \" Paris\" -o out/lens"
)]
pub struct LensArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub out: OutArg,
    /// A prompt (repeatable); each runs as its own forward pass
    #[arg(long, short = 'p', value_name = "TEXT")]
    pub prompt: Vec<String>,
    /// A text file of prompts, one per line (after any --prompt)
    #[arg(long, value_name = "FILE")]
    pub prompts: Option<PathBuf>,
    /// Target token, one token with its leading space (e.g. " Paris") [default: the model's own
    /// top prediction per prompt]
    #[arg(long, value_name = "TOKEN")]
    pub target: Option<String>,
    /// DLA baseline token: attribute W_U[target] − W_U[baseline] [default: minus the mean
    /// unembedding row]
    #[arg(long, value_name = "TOKEN")]
    pub baseline: Option<String>,
    /// Top tokens kept per layer and position
    #[arg(long, default_value_t = LensParams::default().top_k)]
    pub top_k: usize,
}

impl LensArgs {
    pub fn params(&self) -> LensParams {
        LensParams {
            prompt: self.prompt.clone(),
            prompts: self.prompts.clone(),
            target: self.target.clone(),
            baseline: self.baseline.clone(),
            top_k: self.top_k,
        }
    }
}

pub fn lens(a: &LensArgs, session: &mut Session) -> Result<()> {
    run::<Lens>(session, Some(a.model.spec()), &a.params(), &a.out)
}

/// `engram attribute`.
#[derive(Args, Debug, Clone)]
#[command(
    long_about = "Attribution patching (AtP), integrated gradients and exact activation patching over \
clean / corrupt prompt pairs (docs/attribute.md).

Metric: logit[answer] − logit[wrong] at the last position. Every number estimates the change of \
the metric when an activation of the clean run takes its corrupt-run value. AtP = (a_corrupt − \
a_clean) · ∂metric/∂a at the clean run: one clean forward + backward and one corrupt forward give \
it for the residual stream (blocks.l.hook_resid_pre per layer × position), every head (attn.hook_z) \
and every MLP neuron (mlp.hook_post). Exact patching of the residual grid and the heads shows how \
good the linear estimate is (Pearson r in the summary and manifest); --ig-steps adds integrated \
gradients for the residual stream. Needs an f32 model.",
    after_help = "Outputs in --out: attribution.parquet (pair, hook, layer, position, head, unit, \
atp, ig, patch_effect), metric.parquet (clean / corrupt metric per pair), charts resid_atp_heatmap, \
resid_patch_heatmap, resid_ig_heatmap, heads_atp_heatmap, heads_patch_heatmap, atp_vs_patch (.png + \
.svg), manifest.json. Columns: docs/outputs.md.

Example (the IOI pairs shipped in notebooks-data/ioi):
  engram attribute -m smollm2 --pairs notebooks-data/ioi/pairs.jsonl --max-pairs 8 -o out/ioi"
)]
pub struct AttributeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub out: OutArg,
    /// The clean prompt of one pair
    #[arg(long, value_name = "TEXT")]
    pub clean: Option<String>,
    /// The corrupt prompt (as many tokens as the clean one)
    #[arg(long, value_name = "TEXT")]
    pub corrupt: Option<String>,
    /// The answer token, one token with its leading space (e.g. " Mary")
    #[arg(long, value_name = "TOKEN")]
    pub answer: Option<String>,
    /// The wrong token (e.g. " John")
    #[arg(long, value_name = "TOKEN")]
    pub wrong: Option<String>,
    /// Pairs as JSON lines: {"clean", "corrupt", "answer", "wrong"}; averaged in the charts
    #[arg(long, value_name = "FILE")]
    pub pairs: Option<PathBuf>,
    /// At most this many pairs from --pairs (0: all)
    #[arg(long, default_value_t = AttributeParams::default().max_pairs)]
    pub max_pairs: usize,
    /// What gets AtP, comma separated: resid, heads, neurons
    #[arg(long, value_delimiter = ',', default_values_t = AttributeParams::default().hooks)]
    pub hooks: Vec<String>,
    /// Integrated-gradient steps on the residual stream (0: off); check completeness: a layer's IG
    /// summed over positions should be close to metric(corrupt) − metric(clean)
    #[arg(long, default_value_t = AttributeParams::default().ig_steps)]
    pub ig_steps: usize,
    /// Skip exact activation patching (AtP only: three passes per pair)
    #[arg(long)]
    pub no_patch: bool,
    /// Rows per forward pass of the patching and IG batches
    #[arg(long, default_value_t = AttributeParams::default().batch)]
    pub batch: usize,
}

impl AttributeArgs {
    pub fn params(&self) -> AttributeParams {
        AttributeParams {
            clean: self.clean.clone(),
            corrupt: self.corrupt.clone(),
            answer: self.answer.clone(),
            wrong: self.wrong.clone(),
            pairs: self.pairs.clone(),
            max_pairs: self.max_pairs,
            hooks: self.hooks.clone(),
            ig_steps: self.ig_steps,
            no_patch: self.no_patch,
            batch: self.batch,
        }
    }
}

pub fn attribute(a: &AttributeArgs, session: &mut Session) -> Result<()> {
    run::<Attribute>(session, Some(a.model.spec()), &a.params(), &a.out)
}
