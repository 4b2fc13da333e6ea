//! `engram lens`: the logit lens and direct logit attribution (docs/lens.md).
//!
//! For every prompt: the logit lens over every layer × position ([`compute::logit_lens`]:
//! rank and probability of the next token, of the target at the last position, and the top
//! tokens) and the direct logit attribution of the last position to `target − baseline`
//! ([`compute::direct_logit_attribution`]). The target defaults to the model's own top
//! prediction; the baseline to the mean logit.

pub mod compute;
mod output;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use compute::{Component, ComponentKind, Dla, LensCell};

use crate::probes::{Context, Probe, Report};
use crate::Result;

/// Parameters of `engram lens`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct LensParams {
    /// Prompts (each its own forward pass).
    pub prompt: Vec<String>,
    /// A text file of prompts, one per line (blank lines skipped), after `prompt`.
    pub prompts: Option<PathBuf>,
    /// The target token (one token, e.g. " Paris"); default: the model's top prediction at each
    /// prompt's last position.
    pub target: Option<String>,
    /// The DLA baseline token: the direction is `W_U[target] − W_U[baseline]`; default: the mean
    /// of `W_U`'s rows (the target's logit relative to the mean logit).
    pub baseline: Option<String>,
    /// Top tokens kept per layer and position.
    pub top_k: usize,
}

impl Default for LensParams {
    fn default() -> Self {
        LensParams {
            prompt: vec![],
            prompts: None,
            target: None,
            baseline: None,
            top_k: 5,
        }
    }
}

impl LensParams {
    /// The prompts given and read from `prompts`, in order.
    pub fn all_prompts(&self) -> Result<Vec<String>> {
        let mut out: Vec<String> = self.prompt.clone();
        if let Some(p) = &self.prompts {
            let path = crate::data::require_file(p, "prompts")?;
            let text = std::fs::read_to_string(&path).map_err(|e| crate::Error::io(&path, e))?;
            out.extend(
                text.lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(str::to_string),
            );
        }
        if let Some(i) = out.iter().position(|p| p.is_empty()) {
            crate::bail!("prompt {i} is empty");
        }
        if out.is_empty() {
            crate::bail!("no prompts: give --prompt TEXT (repeatable) or --prompts FILE");
        }
        Ok(out)
    }
}

/// One prompt's lens and DLA.
#[derive(Clone, Debug)]
pub struct PromptLens {
    pub text: String,
    pub ids: Vec<u32>,
    /// Token strings of `ids`.
    pub tokens: Vec<String>,
    pub target: u32,
    pub baseline: Option<u32>,
    pub cells: Vec<LensCell>,
    pub dla: Dla,
}

/// `engram lens`.
pub struct Lens;

impl Probe for Lens {
    const NAME: &'static str = "lens";
    type Params = LensParams;
    type Report = LensReport;

    fn check(p: &LensParams) -> Result<()> {
        p.all_prompts()?;
        if p.top_k == 0 {
            crate::bail!("--top-k must be at least 1");
        }
        Ok(())
    }

    fn run(cx: &mut Context<'_>, p: &LensParams) -> Result<LensReport> {
        let model = cx.model()?;
        let prompts = p.all_prompts()?;
        let tok = model.tokenizer()?;
        let target = p
            .target
            .as_deref()
            .map(|s| model.single_token(s, "--target"))
            .transpose()?;
        let baseline = p
            .baseline
            .as_deref()
            .map(|s| model.single_token(s, "--baseline"))
            .transpose()?;
        let bar = cx.progress.bar(prompts.len() as u64, "lens");
        let mut out = vec![];
        for text in &prompts {
            let ids = model.encode(text)?;
            if ids.is_empty() {
                crate::bail!("prompt {text:?} has no tokens");
            }
            let cells = compute::logit_lens(&model, &ids, target, p.top_k)?;
            let target = cells.last().map_or(0, |c| c.next_id);
            let u = compute::logit_direction(&model, target, baseline)?;
            let dla = compute::direct_logit_attribution(&model, &ids, &u)?;
            let tokens = ids
                .iter()
                .map(|&i| tok.decode(&[i], false))
                .collect::<Result<_>>()?;
            out.push(PromptLens {
                text: text.clone(),
                ids,
                tokens,
                target,
                baseline,
                cells,
                dla,
            });
            bar.inc(1);
        }
        bar.finish();
        let decode = |i: u32| tok.decode(&[i], false);
        let mut strings = std::collections::BTreeMap::new();
        for pl in &out {
            for c in &pl.cells {
                for id in std::iter::once(c.next_id).chain(c.top.iter().map(|t| t.0)) {
                    if let std::collections::btree_map::Entry::Vacant(e) = strings.entry(id) {
                        e.insert(decode(id)?);
                    }
                }
            }
            if let Some(b) = pl.baseline {
                strings.insert(b, decode(b)?);
            }
        }
        Ok(LensReport {
            n_layers: model.cfg().n_layers,
            n_heads: model.cfg().n_heads,
            softcap: model.cfg().final_softcap,
            layer_norm: model.cfg().norm == crate::model::config::NormKind::Layer,
            post_attn_norm: model.post_attn_norm_weight(0)?.is_some(),
            prompts: out,
            strings,
        })
    }
}

/// What `engram lens` found.
pub struct LensReport {
    pub n_layers: usize,
    pub n_heads: usize,
    pub softcap: Option<f64>,
    pub layer_norm: bool,
    pub post_attn_norm: bool,
    pub prompts: Vec<PromptLens>,
    /// Token strings of every id the tables name.
    pub strings: std::collections::BTreeMap<u32, String>,
}

impl LensReport {
    fn string(&self, id: u32) -> String {
        self.strings.get(&id).cloned().unwrap_or_default()
    }
}

impl Report for LensReport {
    fn write(&self, dir: &Path) -> Result<Vec<String>> {
        output::write(self, dir)
    }

    fn notes(&self) -> Vec<String> {
        let mut n = vec![
            format!("logit lens: layer l < {L} reads blocks.l.hook_resid_pre, layer {L} blocks.{}.hook_resid_post (the model's own logits), each through the final norm with its own scale at every position, W_U and the final softcap; rank is 1-based among all tokens", self.n_layers - 1, L = self.n_layers),
            format!("direct logit attribution at the last position to u = W_U[target] − W_U[baseline] (or − the mean row of W_U without --baseline): components (hook_embed{}, every head's attn.hook_result, b_O, hook_mlp_out) projected through the final norm with its scale folded in (divided by the final norm's actual scale at that position{}), as TransformerLens' apply_ln_to_stack; they sum to u · ln_final.hook_normalized exactly", if self.layer_norm { ", hook_pos_embed" } else { "" }, if self.layer_norm { ", centred; the final LayerNorm's bias is its own component" } else { "" }),
        ];
        if self.post_attn_norm {
            n.push("post-attention norms (Gemma 2/3, OLMo-2): each head's result is also multiplied by that norm's weight and its actual scale at the position, so heads sum to hook_attn_out".into());
        }
        if let Some(c) = self.softcap {
            n.push(format!("final logit softcap {c}: DLA sums to the logit difference before the softcap (the softcap is not linear)"));
        }
        n
    }

    fn summary(&self) -> Vec<String> {
        self.prompts
            .iter()
            .enumerate()
            .map(|(i, p)| output::summary_line(self, i, p))
            .collect()
    }
}
