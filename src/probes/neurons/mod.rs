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

use half::f16;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::hooks::Hooks;
use crate::model::Model;
use crate::progress::Progress;
use crate::{Error, Result};

mod eval;
mod layout;
mod output;
mod stats;

pub use eval::*;
pub use layout::*;
pub use output::*;
pub use stats::*;

/// Parameters of the relation-neuron probe.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct NeuronsParams {
    /// A folder of LRE relation files (`*.json` with name, prompt_templates, samples).
    pub relations: PathBuf,
    /// Use only these relations (file stems, e.g. `company_hq`); empty = all.
    #[serde(deserialize_with = "crate::probes::comma_list")]
    pub only: Vec<String>,
    /// Requested number of neurons per relation (the paper's 3000 for Llama-2-7B), capped by
    /// `k_share` of all neurons.
    pub k: usize,
    /// k is at most this share of all neurons. Default: the paper's share, 3000 of Llama-2-7B's
    /// 835,584 gate+up+down units (0.359%), so a small model keeps as large a share as the paper.
    pub k_share: f64,
    /// Evaluation facts per relation (at most half of the relation's subjects).
    pub eval_per_relation: usize,
    /// Use at most this many subjects per relation (after the seeded shuffle); 0 = all.
    pub max_prompts: usize,
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
    pub min_accuracy: f64,
    /// Multiples of k for the cumulative curve (1.0 is always included; values above 1 rank
    /// further down the AP list).
    #[serde(deserialize_with = "crate::probes::comma_list")]
    pub k_multiples: Vec<f64>,
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
            k_share: 3000.0 / LLAMA2_7B_NEURONS as f64,
            eval_per_relation: 50,
            max_prompts: 300,
            seed: 0,
            batch_size: 16,
            max_new_tokens: 8,
            neg_ratio: 4,
            min_correct: 5,
            min_accuracy: 0.1,
            k_multiples: vec![0.25, 0.5, 1.0, 2.0, 4.0],
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
    let dir = &crate::data::locate(dir);
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

/// The k rule: the requested k, at most `k_share` of all neurons, at least 1.
pub fn effective_k(requested: usize, total: usize, k_share: f64) -> usize {
    let cap = ((total as f64) * k_share).floor() as usize;
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
        if params.max_prompts > 0 {
            facts.truncate(params.max_prompts);
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
        } else if acc_before[ri] < params.min_accuracy || eval_sets[ri].is_empty() {
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
    let k = effective_k(params.k, total, params.k_share);
    let k_rule = format!(
        "k = min(requested {}, floor({:.5} × {total} neurons)) = {k} (default share 3000/{} = \
         the paper's k for Llama-2-7B's gate+up+down units, so small models keep the same share)",
        params.k, params.k_share, LLAMA2_7B_NEURONS
    );
    let mut k_values: Vec<usize> = params
        .k_multiples
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
    let per_layer: Vec<String> = layout
        .kinds()
        .iter()
        .map(|&k| format!("{} {}", k.name(), layout.width(k)))
        .collect();
    notes.push(format!(
        "neurons: {} layers × ({}) = {total}; {k_rule}; cumulative k values {:?}",
        layout.n_layers,
        per_layer.join(" + "),
        k_values
    ));
    if !layout.gated {
        notes.push(format!(
            "{}: ungated MLP, so no gate/up pair: `in` units are W_in's outputs (mlp.hook_pre, \
             before the activation; zeroing one zeroes its activation, GELU(0) = 0) and `down` \
             units hook_mlp_out (W_out's output, bias included)",
            model.cfg().arch.name()
        ));
    }
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
