//! Relation-specific neurons (Liu et al., "On Relation-Specific Neurons in Large Language
//! Models", EMNLP 2025; docs/methods.md §2).
//!
//! 1. Prompts: one per (subject, relation) from the relation's first template, object omitted.
//!    Subjects are split (seeded) into an evaluation set (`eval_per_relation`, at most half the
//!    relation) and a detection set; the two share no subject. Greedy generation decides which
//!    prompts the model answers correctly ([`is_correct`]).
//! 2. Neurons: every output unit of gate_proj (`mlp.hook_pre`), up_proj (`mlp.hook_pre_linear`)
//!    and down_proj (`hook_mlp_out`) in every layer. Response = the unit's output averaged over
//!    the prompt's real (non-pad) tokens. Responses of the correct detection prompts are kept in
//!    one f16 buffer (neuron-major: `[neurons × prompts]`).
//! 3. Expertise of a neuron for relation r = average precision (sklearn's
//!    `average_precision_score`) of its response separating r's correct detection prompts
//!    (positives) from 4× as many correct detection prompts of other relations (negatives).
//! 4. Relation-specific neurons = top-k by AP.
//! 5. Deactivation: zero the selected units at every position (and every generation step) and
//!    measure greedy accuracy on every relation's evaluation set; control = k random neurons.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Tensor, D};
use half::f16;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::hooks::{Edit, HookPoint, Hooks, Intervention};
use crate::model::transformer::KvCache;
use crate::model::{Batch, LogitsAt, Model, RunOptions};
use crate::progress::{Bar, Progress};
use crate::{Error, Result};

/// Parameters of the relation-neuron probe.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct NeuronsParams {
    /// A folder of LRE relation files (`*.json` with name, prompt_templates, samples).
    pub relations: PathBuf,
    /// Use only these relations (file stems, e.g. `company_hq`); empty = all.
    pub only: Vec<String>,
    /// Requested number of neurons per relation (the paper's 3000 for Llama-2-7B), capped by
    /// `max_k_fraction` of all neurons.
    pub k: usize,
    /// k is at most this share of all neurons. Default: the paper's share, 3000 of Llama-2-7B's
    /// 835,584 gate+up+down units (0.359%), so a small model keeps as large a share as the paper.
    pub max_k_fraction: f64,
    /// Evaluation facts per relation (at most half of the relation's subjects).
    pub eval_per_relation: usize,
    /// Use at most this many subjects per relation (after the seeded shuffle).
    pub max_prompts_per_relation: Option<usize>,
    /// Seed of the subject split, the negatives and the random control.
    pub seed: u64,
    /// Prompts per forward pass / generation batch.
    pub batch_size: usize,
    /// Cap on generated tokens (a prompt generates len(object tokens) + 2, at most this).
    pub max_new_tokens: usize,
    /// Negatives per positive.
    pub neg_ratio: usize,
    /// A relation needs this many correct detection prompts ...
    pub min_correct: usize,
    /// ... and at least this evaluation accuracy; otherwise it is reported and skipped.
    pub min_eval_accuracy: f64,
    /// Multiples of k for the cumulative curve (1.0 is always included; values above 1 rank
    /// further down the AP list).
    pub k_fractions: Vec<f64>,
    /// Include the BOS token in a prompt's mean response (default: no — BOS carries the same
    /// large "attention sink" activations in every prompt, weighted by 1/length).
    pub include_bos: bool,
}

/// Gate + up + down units of Llama-2-7B (32 × (2 × 11008 + 4096)), the paper's model.
pub const LLAMA2_7B_NEURONS: usize = 835_584;

impl Default for NeuronsParams {
    fn default() -> Self {
        NeuronsParams {
            relations: PathBuf::from("notebooks-data/lre/factual"),
            only: vec![],
            k: 3000,
            max_k_fraction: 3000.0 / LLAMA2_7B_NEURONS as f64,
            eval_per_relation: 50,
            max_prompts_per_relation: Some(300),
            seed: 0,
            batch_size: 16,
            max_new_tokens: 8,
            neg_ratio: 4,
            min_correct: 5,
            min_eval_accuracy: 0.1,
            k_fractions: vec![0.25, 0.5, 1.0, 2.0, 4.0],
            include_bos: false,
        }
    }
}

/// One fact: a subject and the objects accepted for it (LRE repeats a few subjects).
#[derive(Clone, Debug)]
pub struct Fact {
    pub subject: String,
    pub objects: Vec<String>,
}

/// One LRE relation.
#[derive(Clone, Debug)]
pub struct Relation {
    /// The file stem (`company_hq`); the relation's key in every output.
    pub id: String,
    /// The `name` field (`company hq`).
    pub name: String,
    /// The first prompt template (with `{}` for the subject).
    pub template: String,
    pub facts: Vec<Fact>,
}

impl Relation {
    pub fn prompt(&self, subject: &str) -> String {
        self.template.replace("{}", subject).trim_end().to_string()
    }
}

#[derive(Deserialize)]
struct RelationFile {
    name: String,
    prompt_templates: Vec<String>,
    samples: Vec<Sample>,
}

#[derive(Deserialize)]
struct Sample {
    subject: String,
    object: String,
}

/// Read every `*.json` relation in `dir` (sorted by file name), keeping those in `only` when it
/// is not empty. Samples with the same subject are merged into one fact with several objects.
pub fn load_relations(dir: &Path, only: &[String]) -> Result<Vec<Relation>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut out = vec![];
    for f in files {
        let id = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !only.is_empty() && !only.contains(&id) {
            continue;
        }
        let text = std::fs::read_to_string(&f).map_err(|e| Error::io(&f, e))?;
        let rf: RelationFile =
            serde_json::from_str(&text).map_err(|e| Error::msg(format!("{}: {e}", f.display())))?;
        let template = rf
            .prompt_templates
            .iter()
            .find(|t| t.contains("{}"))
            .cloned()
            .ok_or_else(|| Error::msg(format!("{}: no prompt template with {{}}", f.display())))?;
        let mut facts: Vec<Fact> = vec![];
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for s in rf.samples {
            let (subject, object) = (unescape_u(s.subject.trim()), unescape_u(s.object.trim()));
            if subject.is_empty() || object.is_empty() {
                continue;
            }
            match seen.get(&subject) {
                Some(&i) => {
                    if !facts[i].objects.contains(&object) {
                        facts[i].objects.push(object);
                    }
                }
                None => {
                    seen.insert(subject.clone(), facts.len());
                    facts.push(Fact {
                        subject,
                        objects: vec![object],
                    });
                }
            }
        }
        out.push(Relation {
            id,
            name: rf.name,
            template,
            facts,
        });
    }
    for o in only {
        if !out.iter().any(|r| r.id == *o) {
            crate::bail!("relation `{o}` is not in {}", dir.display());
        }
    }
    if out.is_empty() {
        crate::bail!("{}: no relation files (*.json)", dir.display());
    }
    Ok(out)
}

/// Decode literal `\uXXXX` sequences left in a string (a few LRE strings are double-escaped:
/// `"Bras\\u00edlia"` reads as `Bras\u00edlia`). Anything else is kept as it is.
pub fn unescape_u(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("\\u") {
        out.push_str(&rest[..i]);
        let hex = rest.get(i + 2..i + 6);
        match hex
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .and_then(char::from_u32)
        {
            Some(c) if hex.is_some_and(|h| h.chars().all(|c| c.is_ascii_hexdigit())) => {
                out.push(c);
                rest = &rest[i + 6..];
            }
            _ => {
                out.push_str("\\u");
                rest = &rest[i + 2..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn normalise(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Whether a generated continuation answers with one of `objects`: the continuation, trimmed,
/// lowercased and with runs of whitespace collapsed to one space, starts with the object
/// normalised the same way. Extra normalisation: a leading article ("the ", "a ", "an ") of the
/// continuation is also tried without it ("... is in the country of" → " the United States").
pub fn is_correct(generated: &str, objects: &[String]) -> bool {
    let g = normalise(generated);
    let stripped = ["the ", "a ", "an "]
        .iter()
        .find_map(|a| g.strip_prefix(a))
        .map(str::to_string);
    objects.iter().any(|o| {
        let o = normalise(o);
        !o.is_empty() && (g.starts_with(&o) || stripped.as_ref().is_some_and(|s| s.starts_with(&o)))
    })
}

/// sklearn's `average_precision_score(labels, scores)`: Σₙ (Rₙ − Rₙ₋₁) Pₙ over the distinct
/// score thresholds in decreasing order (tied scores form one threshold). NaN without positives.
pub fn average_precision(scores: &[f32], labels: &[bool]) -> f64 {
    let mut pairs: Vec<(f32, bool)> = scores.iter().copied().zip(labels.iter().copied()).collect();
    average_precision_pairs(&mut pairs)
}

/// [`average_precision`] on (score, label) pairs, sorting them in place.
fn average_precision_pairs(pairs: &mut [(f32, bool)]) -> f64 {
    let n_pos = pairs.iter().filter(|p| p.1).count();
    if n_pos == 0 {
        return f64::NAN;
    }
    pairs.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
    let (mut tp, mut fp) = (0usize, 0usize);
    let (mut prev_recall, mut ap) = (0f64, 0f64);
    let mut i = 0;
    while i < pairs.len() {
        let s = pairs[i].0;
        while i < pairs.len() && pairs[i].0 == s {
            if pairs[i].1 {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        // NaN scores never compare equal: each is its own threshold (they sort first or last).
        let recall = tp as f64 / n_pos as f64;
        let precision = tp as f64 / (tp + fp) as f64;
        ap += (recall - prev_recall) * precision;
        prev_recall = recall;
    }
    ap
}

/// Indices of the `k` largest scores, best first (ties: lower index first; NaN last).
pub fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    top_k_tiebreak(scores, None, k)
}

/// [`top_k`] where equal scores are ordered by a second score (larger first, NaN last), then
/// by index. The probe breaks AP ties (many units reach AP = 1 when templates differ) by the
/// standardised mean difference of positives and negatives.
pub fn top_k_tiebreak(scores: &[f32], second: Option<&[f32]>, k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    let key = |v: &[f32], i: usize| {
        let s = v[i];
        if s.is_nan() {
            f32::NEG_INFINITY
        } else {
            s
        }
    };
    idx.sort_by(|&a, &b| {
        let mut o = key(scores, b)
            .total_cmp(&key(scores, a))
            .then(scores[a].is_nan().cmp(&scores[b].is_nan()));
        if let Some(t) = second {
            o = o
                .then(key(t, b).total_cmp(&key(t, a)))
                .then(t[a].is_nan().cmp(&t[b].is_nan()));
        }
        o.then(a.cmp(&b))
    });
    idx.truncate(k);
    idx
}

/// Standardised mean difference (mean of positives − mean of negatives) / standard deviation of
/// all; 0 when the scores are constant, NaN without both classes.
pub fn standardised_difference(pairs: &[(f32, bool)]) -> f64 {
    let (mut sp, mut np_, mut sn, mut nn) = (0f64, 0usize, 0f64, 0usize);
    for &(x, l) in pairs {
        if l {
            sp += x as f64;
            np_ += 1;
        } else {
            sn += x as f64;
            nn += 1;
        }
    }
    if np_ == 0 || nn == 0 {
        return f64::NAN;
    }
    let n = pairs.len() as f64;
    let mean = (sp + sn) / n;
    let var = pairs
        .iter()
        .map(|&(x, _)| (x as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    let diff = sp / np_ as f64 - sn / nn as f64;
    if var <= 0.0 {
        0.0
    } else {
        diff / var.sqrt()
    }
}

/// Which projection a neuron belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Kind {
    Gate,
    Up,
    Down,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Gate, Kind::Up, Kind::Down];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Gate => "gate",
            Kind::Up => "up",
            Kind::Down => "down",
        }
    }

    /// The hook point whose units are this kind's neurons.
    pub fn point(self, layer: usize) -> HookPoint {
        match self {
            Kind::Gate => HookPoint::MlpPre(layer),
            Kind::Up => HookPoint::MlpPreLinear(layer),
            Kind::Down => HookPoint::MlpOut(layer),
        }
    }
}

/// Global neuron ids: layer-major; within a layer gate units `0..d_mlp`, then up units, then
/// down units (`d_model`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct NeuronLayout {
    pub n_layers: usize,
    pub d_mlp: usize,
    pub d_model: usize,
}

impl NeuronLayout {
    pub fn of(model: &Model) -> Self {
        let c = model.cfg();
        NeuronLayout {
            n_layers: c.n_layers,
            d_mlp: c.d_mlp,
            d_model: c.d_model,
        }
    }

    pub fn width(&self, kind: Kind) -> usize {
        match kind {
            Kind::Gate | Kind::Up => self.d_mlp,
            Kind::Down => self.d_model,
        }
    }

    fn offset(&self, kind: Kind) -> usize {
        match kind {
            Kind::Gate => 0,
            Kind::Up => self.d_mlp,
            Kind::Down => 2 * self.d_mlp,
        }
    }

    pub fn per_layer(&self) -> usize {
        2 * self.d_mlp + self.d_model
    }

    pub fn total(&self) -> usize {
        self.n_layers * self.per_layer()
    }

    pub fn id(&self, layer: usize, kind: Kind, index: usize) -> usize {
        layer * self.per_layer() + self.offset(kind) + index
    }

    /// (layer, kind, unit index) of a global id.
    pub fn locate(&self, id: usize) -> (usize, Kind, usize) {
        let (layer, r) = (id / self.per_layer(), id % self.per_layer());
        if r < self.d_mlp {
            (layer, Kind::Gate, r)
        } else if r < 2 * self.d_mlp {
            (layer, Kind::Up, r - self.d_mlp)
        } else {
            (layer, Kind::Down, r - 2 * self.d_mlp)
        }
    }

    /// The hook points holding every neuron, in id order.
    pub fn points(&self) -> Vec<(usize, Kind, HookPoint)> {
        (0..self.n_layers)
            .flat_map(|l| Kind::ALL.iter().map(move |&k| (l, k, k.point(l))))
            .collect()
    }

    /// Interventions zeroing `ids` at every position: one `Edit::Zero` per (layer, kind).
    pub fn zero_interventions(&self, ids: &[usize]) -> Vec<Intervention> {
        let mut groups: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
        for &id in ids {
            let (l, k, i) = self.locate(id);
            groups
                .entry((l, Kind::ALL.iter().position(|&x| x == k).unwrap_or(0)))
                .or_default()
                .push(i);
        }
        groups
            .into_iter()
            .map(|((l, k), mut units)| {
                units.sort_unstable();
                units.dedup();
                Intervention::new(Kind::ALL[k].point(l), Edit::Zero { units: Some(units) })
            })
            .collect()
    }

    /// A hook set that deactivates `ids`.
    pub fn deactivation_hooks(&self, ids: &[usize]) -> Hooks {
        let mut h = Hooks::none();
        for iv in self.zero_interventions(ids) {
            h.add(iv);
        }
        h
    }
}

/// Mean of `x` (`[batch, pos, d]`) over each row's positions from `pad_left[b]` on (the left
/// pads, and anything else to skip, come first): `[batch, d]` f32.
pub fn masked_mean(x: &Tensor, pad_left: &[usize]) -> Result<Tensor> {
    let (b, t, _) = x.dims3()?;
    if pad_left.len() != b {
        crate::bail!(
            "masked_mean: {} pad counts for a batch of {b}",
            pad_left.len()
        );
    }
    let mut w = vec![0f32; b * t];
    for (row, &pad) in pad_left.iter().enumerate() {
        let n = t.saturating_sub(pad).max(1);
        for p in pad.min(t)..t {
            w[row * t + p] = 1.0 / n as f32;
        }
    }
    let w = Tensor::from_vec(w, (b, t, 1), x.device())?;
    Ok(x.to_dtype(DType::F32)?.broadcast_mul(&w)?.sum(1)?)
}

/// Per-prompt mean responses of every neuron (`[prompts][layout.total()]`, id order) for one
/// batch of token sequences (left-padded together; pads are excluded from the mean, and so is a
/// leading BOS unless `include_bos`).
pub fn prompt_responses(
    model: &Model,
    seqs: &[Vec<u32>],
    include_bos: bool,
) -> Result<Vec<Vec<f32>>> {
    let layout = NeuronLayout::of(model);
    let batch = Batch::new(seqs, model.pad_id())?;
    let bos = model.tokenizer.as_ref().and_then(|t| t.bos_id);
    let skip: Vec<usize> = seqs
        .iter()
        .zip(&batch.pad_left)
        .map(|(s, &pad)| {
            let drop_bos =
                !include_bos && s.len() > 1 && bos.is_some() && s.first() == bos.as_ref();
            pad + usize::from(drop_bos)
        })
        .collect();
    let points: Vec<HookPoint> = layout.points().iter().map(|p| p.2).collect();
    let mut hooks = Hooks::capture_points(&points);
    model.transformer.forward_with(
        &batch,
        &mut hooks,
        RunOptions {
            logits: LogitsAt::None,
            stop_at_layer: None,
        },
    )?;
    let mut out = vec![Vec::with_capacity(layout.total()); seqs.len()];
    for (_, _, p) in layout.points() {
        let x = hooks
            .cache
            .take(p)
            .ok_or_else(|| Error::msg(format!("`{p}` was not captured")))?;
        let m: Vec<Vec<f32>> = masked_mean(&x, &skip)?.to_vec2()?;
        for (o, row) in out.iter_mut().zip(m) {
            o.extend_from_slice(&row);
        }
    }
    Ok(out)
}

/// One prompt of the probe.
#[derive(Clone, Debug)]
pub struct Prompt {
    pub relation: usize,
    pub subject: String,
    pub objects: Vec<String>,
    pub text: String,
    pub ids: Vec<u32>,
    /// Tokens to generate.
    pub max_new: usize,
}

/// Whether the answer to a prompt is settled: [`is_correct`] already holds, or no continuation
/// of `generated` can make it hold (its normalised text is no prefix of any object, nor of
/// "the "/"a "/"an " + object). Text with a U+FFFD (a token cut inside a UTF-8 character) is
/// never settled. Normalisation keeps prefixes (the normalised text of a longer continuation
/// starts with that of a shorter one), so stopping a settled prompt cannot change its verdict.
pub fn answer_settled(generated: &str, objects: &[String]) -> bool {
    if is_correct(generated, objects) {
        return true;
    }
    if generated.contains('\u{FFFD}') {
        return false;
    }
    let g = normalise(generated);
    !objects.iter().any(|o| {
        let o = normalise(o);
        !o.is_empty()
            && ["", "the ", "a ", "an "]
                .iter()
                .any(|a| format!("{a}{o}").starts_with(&g))
    })
}

/// Greedy-generate every prompt under `hooks` (batched by similar length and generation budget)
/// and return (continuation text, correct) per prompt, in input order. With `stop_when_settled`
/// a prompt stops generating as soon as [`answer_settled`] holds (same verdicts, shorter
/// texts), and a batch stops when all its prompts have; the deactivation runs use it.
pub fn greedy_eval(
    model: &Model,
    prompts: &[&Prompt],
    hooks: &Hooks,
    batch_size: usize,
    stop_when_settled: bool,
    bar: Option<&Bar>,
) -> Result<Vec<(String, bool)>> {
    let tok = model.tokenizer()?;
    let eos = tok.eos_ids.clone();
    let limit = model.cfg().max_position_embeddings;
    let opts = RunOptions {
        logits: LogitsAt::Last,
        stop_at_layer: None,
    };
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| (prompts[i].max_new, prompts[i].ids.len()));
    let mut out = vec![(String::new(), false); prompts.len()];
    for chunk in order.chunks(batch_size.max(1)) {
        let seqs: Vec<Vec<u32>> = chunk.iter().map(|&i| prompts[i].ids.clone()).collect();
        let max_new = chunk.iter().map(|&i| prompts[i].max_new).max().unwrap_or(1);
        let mut h = hooks.clone();
        let mut gen: Vec<Vec<u32>> = vec![vec![]; chunk.len()];
        let mut active: Vec<bool> = chunk.iter().map(|&i| prompts[i].max_new > 0).collect();
        let mut cache = KvCache::new();
        let mut batch = Batch::new(&seqs, model.pad_id())?;
        for _ in 0..max_new {
            if !active.iter().any(|&a| a) || cache.len + batch.seq_len > limit {
                break;
            }
            let logits = model
                .transformer
                .forward_cached(&batch, &mut h, opts, &mut cache)?;
            let next: Vec<u32> = logits.squeeze(1)?.argmax(D::Minus1)?.to_vec1()?;
            for (j, &t) in next.iter().enumerate() {
                if !active[j] {
                    continue;
                }
                let p = prompts[chunk[j]];
                gen[j].push(t);
                let finished = eos.contains(&t) || gen[j].len() >= p.max_new;
                active[j] = !(finished
                    || (stop_when_settled
                        && answer_settled(&tok.decode(&gen[j], true)?, &p.objects)));
            }
            let rows: Vec<Vec<u32>> = next.iter().map(|&t| vec![t]).collect();
            batch = Batch::new(&rows, 0)?;
        }
        for (&i, g) in chunk.iter().zip(gen) {
            let text = tok.decode(&g, true)?;
            let ok = is_correct(&text, &prompts[i].objects);
            out[i] = (text, ok);
        }
        if let Some(b) = bar {
            b.inc(chunk.len() as u64);
        }
    }
    Ok(out)
}

/// Per-relation counts and status.
#[derive(Clone, Debug, Serialize)]
pub struct RelationRow {
    pub relation: String,
    pub name: String,
    pub template: String,
    pub n_subjects: usize,
    pub n_eval: usize,
    pub n_detection: usize,
    pub detection_correct: usize,
    pub eval_correct: usize,
    pub eval_accuracy: f64,
    /// "ok", "too_few_correct_detection", "low_eval_accuracy".
    pub status: String,
}

/// One prompt's outcome (baseline, no intervention).
#[derive(Clone, Debug)]
pub struct PromptRow {
    pub relation: String,
    pub split: &'static str,
    pub subject: String,
    pub object: String,
    pub prompt: String,
    pub generated: String,
    pub correct: bool,
}

/// One selected neuron.
#[derive(Clone, Debug)]
pub struct SelectedNeuron {
    pub id: usize,
    pub layer: usize,
    pub kind: Kind,
    pub index: usize,
    pub ap: f64,
    /// (mean positive − mean negative response) / std of all responses: the AP tie-break.
    pub separation: f64,
    /// 1-based.
    pub rank: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct DeactRow {
    /// The relation whose neurons were zeroed, or "random".
    pub relation_neurons: String,
    pub eval_relation: String,
    pub k: usize,
    pub accuracy_before: f64,
    pub accuracy_after: f64,
    /// (before − after) / before.
    pub drop: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct OverlapRow {
    pub relation_a: String,
    pub relation_b: String,
    pub shared: usize,
    pub jaccard: f64,
}

#[derive(Clone, Debug)]
pub struct NeuronsReport {
    pub layout: NeuronLayout,
    pub k: usize,
    pub k_rule: String,
    pub k_values: Vec<usize>,
    pub relations: Vec<RelationRow>,
    pub prompts: Vec<PromptRow>,
    /// Relation id → its top-k neurons (ok relations only).
    pub selected: Vec<(String, Vec<SelectedNeuron>)>,
    /// The random control neurons (the first m form the control at k = m).
    pub random: Vec<usize>,
    pub deactivation: Vec<DeactRow>,
    pub overlap: Vec<OverlapRow>,
    /// Shape `[neurons, prompts]` and bytes of the f16 response buffer.
    pub buffer_shape: (usize, usize),
    pub buffer_bytes: usize,
    pub timings: Vec<(String, f64)>,
    pub notes: Vec<String>,
}

/// The k rule: the requested k, at most `max_k_fraction` of all neurons, at least 1.
pub fn effective_k(requested: usize, total: usize, max_k_fraction: f64) -> usize {
    let cap = ((total as f64) * max_k_fraction).floor() as usize;
    requested.min(cap).min(total).max(1)
}

fn stable_hash(s: &str) -> u64 {
    // FNV-1a: stable across runs and platforms (unlike std's hasher).
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// Run the probe.
pub fn run(model: &Model, params: &NeuronsParams, progress: &Progress) -> Result<NeuronsReport> {
    let tok = model.tokenizer()?;
    let layout = NeuronLayout::of(model);
    let relations = load_relations(&params.relations, &params.only)?;
    let mut timings = vec![];
    let mut notes = vec![];
    let nr = relations.len();

    // 1. Prompts and the subject split.
    let t0 = Instant::now();
    let mut eval_sets: Vec<Vec<Prompt>> = vec![];
    let mut det_sets: Vec<Vec<Prompt>> = vec![];
    let mut n_subjects = vec![];
    for (ri, r) in relations.iter().enumerate() {
        let mut facts = r.facts.clone();
        let mut rng = StdRng::seed_from_u64(params.seed ^ stable_hash(&r.id));
        facts.shuffle(&mut rng);
        if let Some(m) = params.max_prompts_per_relation {
            facts.truncate(m);
        }
        n_subjects.push(facts.len());
        let n_eval = params.eval_per_relation.min(facts.len() / 2);
        let mut prompts = vec![];
        for f in facts {
            let text = r.prompt(&f.subject);
            let ids = tok.encode(&text, true)?;
            let obj_len = f
                .objects
                .iter()
                .map(|o| tok.encode(&format!(" {o}"), false).map(|v| v.len()))
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .max()
                .unwrap_or(1);
            prompts.push(Prompt {
                relation: ri,
                subject: f.subject,
                objects: f.objects,
                text,
                ids,
                max_new: (obj_len + 2).min(params.max_new_tokens.max(1)),
            });
        }
        let det = prompts.split_off(n_eval);
        eval_sets.push(prompts);
        det_sets.push(det);
    }

    // Baseline generation on both sets.
    let all: Vec<&Prompt> = det_sets.iter().chain(eval_sets.iter()).flatten().collect();
    let bar = progress.bar(all.len() as u64, "neurons: baseline generation");
    let results = greedy_eval(
        model,
        &all,
        &Hooks::none(),
        params.batch_size,
        false,
        Some(&bar),
    )?;
    bar.finish();
    let mut prompts_out = vec![];
    let mut det_correct: Vec<Vec<usize>> = vec![vec![]; nr]; // indices into det_sets[r]
    let mut eval_ok: Vec<Vec<bool>> = vec![vec![]; nr];
    {
        let mut it = results.into_iter();
        for (ri, d) in det_sets.iter().enumerate() {
            for (pi, p) in d.iter().enumerate() {
                let (g, ok) = it.next().expect("one result per prompt");
                if ok {
                    det_correct[ri].push(pi);
                }
                prompts_out.push(prompt_row(&relations[ri].id, "detection", p, g, ok));
            }
        }
        for (ri, e) in eval_sets.iter().enumerate() {
            for p in e {
                let (g, ok) = it.next().expect("one result per prompt");
                eval_ok[ri].push(ok);
                prompts_out.push(prompt_row(&relations[ri].id, "evaluation", p, g, ok));
            }
        }
    }
    let acc_before: Vec<f64> = eval_ok
        .iter()
        .map(|v| v.iter().filter(|&&x| x).count() as f64 / v.len().max(1) as f64)
        .collect();
    let mut rel_rows = vec![];
    let mut ok_rel = vec![];
    for (ri, r) in relations.iter().enumerate() {
        let status = if det_correct[ri].len() < params.min_correct {
            "too_few_correct_detection"
        } else if acc_before[ri] < params.min_eval_accuracy || eval_sets[ri].is_empty() {
            "low_eval_accuracy"
        } else {
            ok_rel.push(ri);
            "ok"
        };
        rel_rows.push(RelationRow {
            relation: r.id.clone(),
            name: r.name.clone(),
            template: r.template.clone(),
            n_subjects: n_subjects[ri],
            n_eval: eval_sets[ri].len(),
            n_detection: det_sets[ri].len(),
            detection_correct: det_correct[ri].len(),
            eval_correct: eval_ok[ri].iter().filter(|&&x| x).count(),
            eval_accuracy: acc_before[ri],
            status: status.to_string(),
        });
    }
    timings.push((
        "baseline_generation".to_string(),
        t0.elapsed().as_secs_f64(),
    ));
    let skipped: Vec<String> = rel_rows
        .iter()
        .filter(|r| r.status != "ok")
        .map(|r| {
            format!(
                "{} ({}: {} correct detection prompts, eval accuracy {:.2})",
                r.relation, r.status, r.detection_correct, r.eval_accuracy
            )
        })
        .collect();
    if !skipped.is_empty() {
        notes.push(format!("skipped relations: {}", skipped.join("; ")));
    }

    let total = layout.total();
    let k = effective_k(params.k, total, params.max_k_fraction);
    let k_rule = format!(
        "k = min(requested {}, floor({:.5} × {total} neurons)) = {k} (default share 3000/{} = \
         the paper's k for Llama-2-7B's gate+up+down units, so small models keep the same share)",
        params.k, params.max_k_fraction, LLAMA2_7B_NEURONS
    );
    let mut k_values: Vec<usize> = params
        .k_fractions
        .iter()
        .filter(|f| f.is_finite() && **f > 0.0)
        .map(|f| ((k as f64 * f).round() as usize).clamp(1, total))
        .chain(std::iter::once(k))
        .collect();
    k_values.sort_unstable();
    k_values.dedup();
    let k_max = *k_values.last().unwrap_or(&k);

    // 2. Responses of every correct detection prompt, kept as f16, neuron-major.
    let t0 = Instant::now();
    let cols: Vec<(usize, usize)> = det_correct
        .iter()
        .enumerate()
        .flat_map(|(ri, v)| v.iter().map(move |&pi| (ri, pi)))
        .collect();
    let np = cols.len();
    let buffer_bytes = np * total * std::mem::size_of::<f16>();
    let mut buf = vec![f16::ZERO; if ok_rel.is_empty() { 0 } else { np * total }];
    if !ok_rel.is_empty() {
        let bar = progress.bar(np as u64, "neurons: responses");
        let mut order: Vec<usize> = (0..np).collect();
        order.sort_by_key(|&c| det_sets[cols[c].0][cols[c].1].ids.len());
        for chunk in order.chunks(params.batch_size.max(1)) {
            let seqs: Vec<Vec<u32>> = chunk
                .iter()
                .map(|&c| det_sets[cols[c].0][cols[c].1].ids.clone())
                .collect();
            let resp = prompt_responses(model, &seqs, params.include_bos)?;
            for (&c, row) in chunk.iter().zip(resp) {
                for (j, v) in row.into_iter().enumerate() {
                    buf[j * np + c] = f16::from_f32(v);
                }
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish();
    }
    timings.push(("responses".to_string(), t0.elapsed().as_secs_f64()));
    notes.push(format!(
        "response buffer: f16 [{total} neurons × {np} correct detection prompts] = {:.1} MiB",
        buffer_bytes as f64 / (1 << 20) as f64
    ));

    // 3. AP per neuron and relation; top-k.
    let t0 = Instant::now();
    let mut selected = vec![];
    let mut ranked: Vec<Vec<usize>> = vec![];
    let bar = progress.bar(ok_rel.len() as u64, "neurons: average precision");
    for &ri in &ok_rel {
        let pos: Vec<usize> = (0..np).filter(|&c| cols[c].0 == ri).collect();
        let mut pool: Vec<usize> = (0..np).filter(|&c| cols[c].0 != ri).collect();
        let mut rng = StdRng::seed_from_u64(params.seed ^ stable_hash(&relations[ri].id) ^ 0x4E47);
        pool.shuffle(&mut rng);
        pool.truncate(params.neg_ratio * pos.len());
        if pool.is_empty() {
            notes.push(format!(
                "{}: no negatives (no other relation has correct detection prompts); AP is 1 for all",
                relations[ri].id
            ));
        }
        let sel: Vec<(usize, bool)> = pos
            .iter()
            .map(|&c| (c, true))
            .chain(pool.iter().map(|&c| (c, false)))
            .collect();
        let (ap, sep): (Vec<f32>, Vec<f32>) = (0..total)
            .into_par_iter()
            .map_init(
                || Vec::with_capacity(sel.len()),
                |scratch: &mut Vec<(f32, bool)>, j| {
                    let row = &buf[j * np..(j + 1) * np];
                    scratch.clear();
                    scratch.extend(sel.iter().map(|&(c, l)| (row[c].to_f32(), l)));
                    let d = standardised_difference(scratch) as f32;
                    (average_precision_pairs(scratch) as f32, d)
                },
            )
            .unzip();
        let n_perfect = ap.iter().filter(|&&a| a >= 1.0).count();
        let top = top_k_tiebreak(&ap, Some(&sep), k_max);
        let neurons = top[..k.min(top.len())]
            .iter()
            .enumerate()
            .map(|(rank, &id)| {
                let (layer, kind, index) = layout.locate(id);
                SelectedNeuron {
                    id,
                    layer,
                    kind,
                    index,
                    ap: ap[id] as f64,
                    separation: sep[id] as f64,
                    rank: rank + 1,
                }
            })
            .collect::<Vec<_>>();
        notes.push(format!(
            "{}: {} positives, {} negatives; {n_perfect} units with AP = 1 (ties broken by the \
             standardised mean difference); AP of the top neuron {:.3}, of the k-th {:.3}",
            relations[ri].id,
            pos.len(),
            pool.len(),
            neurons.first().map_or(f64::NAN, |n| n.ap),
            neurons.last().map_or(f64::NAN, |n| n.ap)
        ));
        selected.push((relations[ri].id.clone(), neurons));
        ranked.push(top);
        bar.inc(1);
    }
    bar.finish();
    drop(buf);
    timings.push(("average_precision".to_string(), t0.elapsed().as_secs_f64()));

    // Overlap.
    let mut overlap = vec![];
    for (a, na) in &selected {
        let sa: std::collections::HashSet<usize> = na.iter().map(|n| n.id).collect();
        for (b, nb) in &selected {
            let shared = nb.iter().filter(|n| sa.contains(&n.id)).count();
            let union = sa.len() + nb.len() - shared;
            overlap.push(OverlapRow {
                relation_a: a.clone(),
                relation_b: b.clone(),
                shared,
                jaccard: if union == 0 {
                    f64::NAN
                } else {
                    shared as f64 / union as f64
                },
            });
        }
    }

    // 4. Deactivation.
    let t0 = Instant::now();
    let mut rng = StdRng::seed_from_u64(params.seed ^ 0x5A4D);
    let random: Vec<usize> = rand::seq::index::sample(&mut rng, total, k_max).into_vec();
    let eval_all: Vec<&Prompt> = ok_rel.iter().flat_map(|&ri| eval_sets[ri].iter()).collect();
    let n_cum = k_values.iter().filter(|&&m| m != k).count();
    let steps = if ok_rel.is_empty() {
        0
    } else {
        (selected.len() + k_values.len()) * eval_all.len()
            + n_cum * ok_rel.iter().map(|&ri| eval_sets[ri].len()).sum::<usize>()
    };
    let bar = progress.bar(steps as u64, "neurons: deactivation");
    let mut deactivation = vec![];
    let accuracy = |res: &[(String, bool)], prompts: &[&Prompt], ri: usize| -> f64 {
        let v: Vec<bool> = prompts
            .iter()
            .zip(res)
            .filter(|(p, _)| p.relation == ri)
            .map(|(_, r)| r.1)
            .collect();
        v.iter().filter(|&&x| x).count() as f64 / v.len().max(1) as f64
    };
    let mut push = |name: &str, ri: usize, kk: usize, after: f64| {
        let before = acc_before[ri];
        deactivation.push(DeactRow {
            relation_neurons: name.to_string(),
            eval_relation: relations[ri].id.clone(),
            k: kk,
            accuracy_before: before,
            accuracy_after: after,
            drop: if before > 0.0 {
                (before - after) / before
            } else {
                f64::NAN
            },
        });
    };
    if !ok_rel.is_empty() {
        for (si, (name, _)) in selected.iter().enumerate() {
            let own = ok_rel[si];
            let ids = &ranked[si];
            let hooks = layout.deactivation_hooks(&ids[..k]);
            let res = greedy_eval(
                model,
                &eval_all,
                &hooks,
                params.batch_size,
                true,
                Some(&bar),
            )?;
            for &ri in &ok_rel {
                push(name, ri, k, accuracy(&res, &eval_all, ri));
            }
            // Cumulative: other prefixes of the AP ranking, own relation only.
            let own_prompts: Vec<&Prompt> = eval_sets[own].iter().collect();
            for &m in k_values.iter().filter(|&&m| m != k) {
                let hooks = layout.deactivation_hooks(&ids[..m]);
                let res = greedy_eval(
                    model,
                    &own_prompts,
                    &hooks,
                    params.batch_size,
                    true,
                    Some(&bar),
                )?;
                push(name, own, m, accuracy(&res, &own_prompts, own));
            }
        }
        for &m in &k_values {
            let hooks = layout.deactivation_hooks(&random[..m]);
            let res = greedy_eval(
                model,
                &eval_all,
                &hooks,
                params.batch_size,
                true,
                Some(&bar),
            )?;
            for &ri in &ok_rel {
                push("random", ri, m, accuracy(&res, &eval_all, ri));
            }
        }
    }
    bar.finish();
    timings.push(("deactivation".to_string(), t0.elapsed().as_secs_f64()));

    notes.push(
        "correct = the greedy continuation, trimmed, lowercased, whitespace collapsed, starts with \
         the object (same normalisation); a leading article (the/a/an) of the continuation may be \
         skipped; subjects with several objects accept any"
            .into(),
    );
    notes.push(format!(
        "response = unit output averaged over the prompt's real tokens (BOS included when the \
         model adds one and include_bos is set); negatives = {}× positives sampled (seeded) from other relations' \
         correct detection prompts; AP as sklearn average_precision_score",
        params.neg_ratio
    ));
    notes.push(format!(
        "neurons: {} layers × (gate {} + up {} + down {}) = {total}; {k_rule}; cumulative k values {:?}",
        layout.n_layers, layout.d_mlp, layout.d_mlp, layout.d_model, k_values
    ));
    notes.push("deactivation: Edit::Zero on mlp.hook_pre / mlp.hook_pre_linear / hook_mlp_out units at every position and generation step; drop = (acc − acc_deact) / acc; the full relations × relations matrix at k, the cumulative curve (other k values) on the own relation only; random control = one seeded uniform draw of neurons (its first m for k = m), evaluated on every relation".into());
    if model.cfg().arch.name().starts_with("gemma") {
        notes.push("gemma: `down` units are hook_mlp_out, i.e. down_proj's output after Gemma's post-feedforward RMSNorm (the only down-projection hook point)".into());
    }
    notes.push(format!(
        "mean response over the prompt's tokens {} BOS",
        if params.include_bos {
            "including"
        } else {
            "excluding"
        }
    ));

    Ok(NeuronsReport {
        layout,
        k,
        k_rule,
        k_values,
        relations: rel_rows,
        prompts: prompts_out,
        selected,
        random,
        deactivation,
        overlap,
        buffer_shape: (total, np),
        buffer_bytes,
        timings,
        notes,
    })
}

fn prompt_row(
    rel: &str,
    split: &'static str,
    p: &Prompt,
    generated: String,
    ok: bool,
) -> PromptRow {
    PromptRow {
        relation: rel.to_string(),
        split,
        subject: p.subject.clone(),
        object: p.objects.join(" | "),
        prompt: p.text.clone(),
        generated,
        correct: ok,
    }
}

impl NeuronsReport {
    /// Count of selected neurons per layer for each relation.
    pub fn per_layer(&self) -> Vec<(String, Vec<usize>)> {
        self.selected
            .iter()
            .map(|(name, ns)| {
                let mut c = vec![0usize; self.layout.n_layers];
                for n in ns {
                    c[n.layer] += 1;
                }
                (name.clone(), c)
            })
            .collect()
    }

    /// The drop of `neurons`' deactivation on `eval` at k (None if not measured).
    pub fn drop_at(&self, neurons: &str, eval: &str, k: usize) -> Option<f64> {
        self.deactivation
            .iter()
            .find(|d| d.relation_neurons == neurons && d.eval_relation == eval && d.k == k)
            .map(|d| d.drop)
    }

    /// Relation ids that got neurons.
    pub fn ok_relations(&self) -> Vec<String> {
        self.selected.iter().map(|s| s.0.clone()).collect()
    }

    /// A one-paragraph summary for the manifest and the terminal.
    pub fn summary(&self) -> serde_json::Value {
        let ok = self.ok_relations();
        let mut diag = vec![];
        let mut off = vec![];
        let mut rand = vec![];
        for a in &ok {
            for b in &ok {
                if let Some(d) = self.drop_at(a, b, self.k) {
                    if a == b {
                        diag.push(d);
                    } else {
                        off.push(d);
                    }
                }
            }
            if let Some(d) = self.drop_at("random", a, self.k) {
                rand.push(d);
            }
        }
        let mean = |v: &[f64]| {
            let f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
            if f.is_empty() {
                f64::NAN
            } else {
                f.iter().sum::<f64>() / f.len() as f64
            }
        };
        let mut per_layer_total = vec![0usize; self.layout.n_layers];
        for (_, c) in self.per_layer() {
            for (t, x) in per_layer_total.iter_mut().zip(c) {
                *t += x;
            }
        }
        // Cumulativity: mean own-relation drop and random drop at every k of the sweep.
        let cumulative: Vec<serde_json::Value> = self
            .k_values
            .iter()
            .map(|&m| {
                let own: Vec<f64> = ok.iter().filter_map(|a| self.drop_at(a, a, m)).collect();
                let rnd: Vec<f64> = ok
                    .iter()
                    .filter_map(|a| self.drop_at("random", a, m))
                    .collect();
                serde_json::json!({"k": m, "mean_drop_own": mean(&own), "mean_drop_random": mean(&rnd)})
            })
            .collect();
        // Interference: the most negative off-diagonal drops; versatility: the largest overlaps.
        let mut neg: Vec<(&str, &str, f64)> = self
            .deactivation
            .iter()
            .filter(|d| {
                d.k == self.k
                    && d.relation_neurons != "random"
                    && d.relation_neurons != d.eval_relation
                    && d.drop < 0.0
            })
            .map(|d| {
                (
                    d.relation_neurons.as_str(),
                    d.eval_relation.as_str(),
                    d.drop,
                )
            })
            .collect();
        neg.sort_by(|a, b| a.2.total_cmp(&b.2));
        let mut shared: Vec<&OverlapRow> = self
            .overlap
            .iter()
            .filter(|o| o.relation_a < o.relation_b)
            .collect();
        shared.sort_by_key(|o| std::cmp::Reverse(o.shared));
        let own_beats_other = ok
            .iter()
            .filter(|a| {
                let own = self.drop_at(a, a, self.k).unwrap_or(f64::NAN);
                let others: Vec<f64> = ok
                    .iter()
                    .filter(|b| b != a)
                    .filter_map(|b| self.drop_at(b, a, self.k))
                    .collect();
                own > mean(&others)
            })
            .count();
        serde_json::json!({
            "k": self.k,
            "relations_ok": ok,
            "cumulative": cumulative,
            "own_drop_above_mean_other_drop": format!("{own_beats_other}/{}", ok.len()),
            "most_negative_drops": neg.iter().take(8).map(|(a, b, d)| format!("{a} → {b}: {d:.3}")).collect::<Vec<_>>(),
            "largest_overlaps": shared.iter().take(8).map(|o| format!("{} & {}: {} shared (Jaccard {:.3})", o.relation_a, o.relation_b, o.shared, o.jaccard)).collect::<Vec<_>>(),
            "mean_drop_own": mean(&diag),
            "mean_drop_other": mean(&off),
            "mean_drop_random": mean(&rand),
            "negative_off_diagonal_drops": off.iter().filter(|&&d| d < 0.0).count(),
            "off_diagonal_pairs": off.len(),
            "selected_per_layer_all_relations": per_layer_total,
        })
    }
}

fn names(paths: Vec<PathBuf>) -> Vec<String> {
    paths
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect()
}

/// Write `neurons.parquet`, `deactivation.parquet`, `overlap.parquet`, `relations.parquet`,
/// `prompts.parquet` and the charts into `dir`; returns the files written (relative names).
pub fn write_outputs(r: &NeuronsReport, dir: &Path) -> Result<Vec<String>> {
    use crate::report::chart::{Colormap, Heatmap, LineChart, Series};
    use crate::report::table::{write_parquet, Table};
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut files = vec![];

    let (mut rel, mut layer, mut kind, mut index, mut ap, mut rank) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut sep = vec![];
    for (name, ns) in &r.selected {
        for n in ns {
            rel.push(name.clone());
            layer.push(n.layer as u32);
            kind.push(n.kind.name().to_string());
            index.push(n.index as u32);
            ap.push(n.ap);
            sep.push(n.separation);
            rank.push(n.rank as u32);
        }
    }
    let mut df = Table::new()
        .col("relation", rel)
        .col("layer", layer)
        .col("kind", kind)
        .col("index", index)
        .col("ap", ap)
        .col("rank", rank)
        .col("separation", sep)
        .build()?;
    write_parquet(&mut df, &dir.join("neurons.parquet"))?;
    files.push("neurons.parquet".to_string());

    let d = &r.deactivation;
    let mut df = Table::new()
        .col(
            "relation_neurons",
            d.iter()
                .map(|x| x.relation_neurons.clone())
                .collect::<Vec<_>>(),
        )
        .col(
            "eval_relation",
            d.iter()
                .map(|x| x.eval_relation.clone())
                .collect::<Vec<_>>(),
        )
        .col("k", d.iter().map(|x| x.k as u32).collect::<Vec<_>>())
        .col(
            "accuracy_before",
            d.iter().map(|x| x.accuracy_before).collect::<Vec<_>>(),
        )
        .col(
            "accuracy_after",
            d.iter().map(|x| x.accuracy_after).collect::<Vec<_>>(),
        )
        .col("drop", d.iter().map(|x| x.drop).collect::<Vec<_>>())
        .build()?;
    write_parquet(&mut df, &dir.join("deactivation.parquet"))?;
    files.push("deactivation.parquet".to_string());

    let o = &r.overlap;
    let mut df = Table::new()
        .col(
            "relation_a",
            o.iter().map(|x| x.relation_a.clone()).collect::<Vec<_>>(),
        )
        .col(
            "relation_b",
            o.iter().map(|x| x.relation_b.clone()).collect::<Vec<_>>(),
        )
        .col(
            "shared",
            o.iter().map(|x| x.shared as u32).collect::<Vec<_>>(),
        )
        .col("jaccard", o.iter().map(|x| x.jaccard).collect::<Vec<_>>())
        .build()?;
    write_parquet(&mut df, &dir.join("overlap.parquet"))?;
    files.push("overlap.parquet".to_string());

    let rr = &r.relations;
    let u = |f: &dyn Fn(&RelationRow) -> usize| rr.iter().map(|x| f(x) as u32).collect::<Vec<_>>();
    let s = |f: &dyn Fn(&RelationRow) -> String| rr.iter().map(f).collect::<Vec<_>>();
    let mut df = Table::new()
        .col("relation", s(&|x| x.relation.clone()))
        .col("name", s(&|x| x.name.clone()))
        .col("template", s(&|x| x.template.clone()))
        .col("n_subjects", u(&|x| x.n_subjects))
        .col("n_eval", u(&|x| x.n_eval))
        .col("n_detection", u(&|x| x.n_detection))
        .col("detection_correct", u(&|x| x.detection_correct))
        .col(
            "detection_accuracy",
            rr.iter()
                .map(|x| x.detection_correct as f64 / x.n_detection.max(1) as f64)
                .collect::<Vec<_>>(),
        )
        .col("eval_correct", u(&|x| x.eval_correct))
        .col(
            "eval_accuracy",
            rr.iter().map(|x| x.eval_accuracy).collect::<Vec<_>>(),
        )
        .col("status", s(&|x| x.status.clone()))
        .build()?;
    write_parquet(&mut df, &dir.join("relations.parquet"))?;
    files.push("relations.parquet".to_string());

    let p = &r.prompts;
    let mut df = Table::new()
        .col(
            "relation",
            p.iter().map(|x| x.relation.clone()).collect::<Vec<_>>(),
        )
        .col("split", p.iter().map(|x| x.split).collect::<Vec<_>>())
        .col(
            "subject",
            p.iter().map(|x| x.subject.clone()).collect::<Vec<_>>(),
        )
        .col(
            "object",
            p.iter().map(|x| x.object.clone()).collect::<Vec<_>>(),
        )
        .col(
            "prompt",
            p.iter().map(|x| x.prompt.clone()).collect::<Vec<_>>(),
        )
        .col(
            "generated",
            p.iter().map(|x| x.generated.clone()).collect::<Vec<_>>(),
        )
        .col("correct", p.iter().map(|x| x.correct).collect::<Vec<_>>())
        .build()?;
    write_parquet(&mut df, &dir.join("prompts.parquet"))?;
    files.push("prompts.parquet".to_string());

    if r.selected.is_empty() {
        return Ok(files);
    }
    let ok = r.ok_relations();
    // Neurons per layer.
    files.extend(names(
        LineChart {
            title: format!("Relation-specific neurons per layer (top {} by AP)", r.k),
            x_label: "layer".into(),
            y_label: "neurons".into(),
            series: r
                .per_layer()
                .into_iter()
                .map(|(name, c)| {
                    Series::new(
                        name,
                        c.iter()
                            .enumerate()
                            .map(|(l, &v)| (l as f64, v as f64))
                            .collect(),
                    )
                })
                .collect(),
        }
        .save(dir, "neurons_per_layer")?,
    ));
    // Drop matrix.
    let mut rows: Vec<String> = ok.clone();
    rows.push("random".into());
    let values: Vec<Vec<f64>> = rows
        .iter()
        .map(|a| {
            ok.iter()
                .map(|b| r.drop_at(a, b, r.k).unwrap_or(f64::NAN))
                .collect()
        })
        .collect();
    files.extend(names(
        Heatmap {
            title: format!("Accuracy drop when deactivating k = {} neurons", r.k),
            x_label: "evaluated relation".into(),
            y_label: "deactivated neurons of".into(),
            values,
            x_labels: Some(ok.clone()),
            y_labels: Some(rows),
            range: Some((-1.0, 1.0)),
            colormap: Colormap::Diverging,
        }
        .save(dir, "drop_heatmap")?,
    ));
    // Cumulative curves.
    let mut series: Vec<Series> = ok
        .iter()
        .map(|a| {
            Series::new(
                a.clone(),
                r.k_values
                    .iter()
                    .filter_map(|&m| r.drop_at(a, a, m).map(|d| (m as f64, d)))
                    .collect(),
            )
        })
        .collect();
    series.push(
        Series::new(
            "random (mean over relations)",
            r.k_values
                .iter()
                .map(|&m| {
                    let v: Vec<f64> = ok
                        .iter()
                        .filter_map(|a| r.drop_at("random", a, m))
                        .filter(|x| x.is_finite())
                        .collect();
                    (m as f64, v.iter().sum::<f64>() / v.len().max(1) as f64)
                })
                .collect(),
        )
        .dashed(),
    );
    files.extend(names(
        LineChart {
            title: "Own-relation accuracy drop vs number of deactivated neurons".into(),
            x_label: "k".into(),
            y_label: "drop".into(),
            series,
        }
        .save(dir, "cumulative_k")?,
    ));
    // Overlap.
    let values: Vec<Vec<f64>> = ok
        .iter()
        .map(|a| {
            ok.iter()
                .map(|b| {
                    r.overlap
                        .iter()
                        .find(|o| o.relation_a == *a && o.relation_b == *b)
                        .map_or(f64::NAN, |o| o.jaccard)
                })
                .collect()
        })
        .collect();
    files.extend(names(
        Heatmap {
            title: format!("Overlap of relation neurons (Jaccard, k = {})", r.k),
            x_label: "relation".into(),
            y_label: "relation".into(),
            values,
            x_labels: Some(ok.clone()),
            y_labels: Some(ok),
            range: Some((0.0, 1.0)),
            colormap: Colormap::Viridis,
        }
        .save(dir, "overlap_heatmap")?,
    ));
    Ok(files)
}

/// `engram neurons`: the command-line arguments.
#[derive(clap::Args, Debug, Clone)]
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
notes) and skipped.

Outputs in --out: neurons.parquet, deactivation.parquet, overlap.parquet, relations.parquet, \
prompts.parquet, neurons_per_layer / drop_heatmap / cumulative_k / overlap_heatmap (.png, .svg), \
manifest.json."
)]
pub struct NeuronsArgs {
    #[command(flatten)]
    pub model: crate::cli::ModelArgs,
    /// Folder of LRE relation files (*.json with name, prompt_templates, samples)
    #[arg(long, default_value = "notebooks-data/lre/factual")]
    pub relations: PathBuf,
    /// Output directory
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Only these relations (file stems, comma separated, e.g. company_hq,country_capital_city)
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Neurons per relation requested (the paper's 3000 for Llama-2-7B); capped by --k-share
    #[arg(long, default_value_t = 3000)]
    pub k: usize,
    /// Cap k at this share of all gate+up+down units. Default 0.00359 = 3000 / 835,584 (the
    /// paper's share of Llama-2-7B), e.g. k = 392 for SmolLM2-135M, 306 for Gemma-3-270M
    #[arg(long)]
    pub k_share: Option<f64>,
    /// Multiples of k for the cumulative curve (own relation and random control), comma separated
    #[arg(long, value_delimiter = ',', default_value = "0.25,0.5,1,2,4")]
    pub k_multiples: Vec<f64>,
    /// Evaluation facts per relation (at most half of the relation's subjects)
    #[arg(long, default_value_t = 50)]
    pub eval_per_relation: usize,
    /// Subjects used per relation after the seeded shuffle (evaluation + detection); 0 = all
    #[arg(long, default_value_t = 300)]
    pub max_prompts: usize,
    /// Skip a relation whose evaluation accuracy is below this
    #[arg(long, default_value_t = 0.1)]
    pub min_accuracy: f64,
    /// Skip a relation with fewer correctly answered detection prompts than this
    #[arg(long, default_value_t = 5)]
    pub min_correct: usize,
    /// Negatives per positive (from other relations' correct detection prompts)
    #[arg(long, default_value_t = 4)]
    pub neg_ratio: usize,
    /// Prompts per forward pass / generation batch
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Cap on generated tokens per prompt (each generates len(object) + 2 tokens, at most this)
    #[arg(long, default_value_t = 8)]
    pub max_new_tokens: usize,
    /// Include the BOS token in the mean response
    #[arg(long)]
    pub include_bos: bool,
    /// Seed of the subject split, the negatives and the random control
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl NeuronsArgs {
    pub fn params(&self) -> Result<NeuronsParams> {
        let d = NeuronsParams::default();
        let share = self.k_share.unwrap_or(d.max_k_fraction);
        if !(share > 0.0 && share <= 1.0) {
            crate::bail!("--k-share must be in (0, 1], got {share}");
        }
        if self.k == 0 {
            crate::bail!("--k must be at least 1");
        }
        if self.batch_size == 0 || self.max_new_tokens == 0 || self.neg_ratio == 0 {
            crate::bail!("--batch-size, --max-new-tokens and --neg-ratio must be at least 1");
        }
        if let Some(f) = self
            .k_multiples
            .iter()
            .find(|f| !(f.is_finite() && **f > 0.0))
        {
            crate::bail!("--k-multiples must be positive numbers, got {f}");
        }
        if !self.relations.is_dir() {
            crate::bail!(
                "--relations {}: not a directory (expected a folder of LRE relation .json files)",
                self.relations.display()
            );
        }
        Ok(NeuronsParams {
            relations: self.relations.clone(),
            only: self.only.clone(),
            k: self.k,
            max_k_fraction: share,
            eval_per_relation: self.eval_per_relation,
            max_prompts_per_relation: (self.max_prompts > 0).then_some(self.max_prompts),
            seed: self.seed,
            batch_size: self.batch_size,
            max_new_tokens: self.max_new_tokens,
            neg_ratio: self.neg_ratio,
            min_correct: self.min_correct,
            min_eval_accuracy: self.min_accuracy,
            k_fractions: self.k_multiples.clone(),
            include_bos: self.include_bos,
        })
    }
}

/// Run `engram neurons`: validate, load, probe, write tables, charts and the manifest.
pub fn command(args: &NeuronsArgs, progress: &Progress) -> Result<()> {
    let params = args.params()?;
    // Read the relations before the (slow) model load so bad data fails fast.
    load_relations(&params.relations, &params.only)?;
    let mut manifest = crate::report::manifest::Manifest::from_params("neurons", &params)?
        .with_seed(Some(params.seed));
    let t0 = Instant::now();
    let model = args.model.load()?;
    manifest.record_timing("load", t0.elapsed().as_secs_f64());
    manifest = manifest.with_model(crate::cli::model_record(&model)?);
    let t0 = Instant::now();
    let report = run(&model, &params, progress)?;
    manifest.record_timing("probe", t0.elapsed().as_secs_f64());
    for (name, secs) in &report.timings {
        manifest.record_timing(&format!("probe.{name}"), *secs);
    }
    let t0 = Instant::now();
    for f in write_outputs(&report, &args.out)? {
        manifest.add_file(f);
    }
    manifest.record_timing("write", t0.elapsed().as_secs_f64());
    for n in &report.notes {
        manifest.note(n.clone());
    }
    manifest.note(format!("summary: {}", report.summary()));
    manifest.write(&args.out)?;

    println!("{}", report.k_rule);
    for r in &report.relations {
        println!(
            "  {:<34} eval acc {:.2} ({}/{})  detection correct {:>4}/{:<4} {}",
            r.relation,
            r.eval_accuracy,
            r.eval_correct,
            r.n_eval,
            r.detection_correct,
            r.n_detection,
            if r.status == "ok" { "" } else { &r.status }
        );
    }
    let s = report.summary();
    println!(
        "mean drop: own relation {:.3}, other relations {:.3}, random neurons {:.3}; \
         negative off-diagonal drops {}/{}",
        s["mean_drop_own"].as_f64().unwrap_or(f64::NAN),
        s["mean_drop_other"].as_f64().unwrap_or(f64::NAN),
        s["mean_drop_random"].as_f64().unwrap_or(f64::NAN),
        s["negative_off_diagonal_drops"],
        s["off_diagonal_pairs"]
    );
    if let Some(c) = s["cumulative"].as_array() {
        for e in c {
            println!(
                "  k = {:>6}: mean own drop {:.3}, random {:.3}",
                e["k"],
                e["mean_drop_own"].as_f64().unwrap_or(f64::NAN),
                e["mean_drop_random"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    println!("wrote {}", args.out.display());
    Ok(())
}
