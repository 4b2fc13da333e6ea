//! The dashboard's files: `dashboard.html` (self-contained: [`TEMPLATE`] with the data inline
//! as one JSON block), `latents.parquet`, and `neuronpedia/batch-N.json`.
//!
//! The Neuronpedia export follows SAEDashboard's `NeuronpediaRunner` (github.com/jbloomAus/
//! SAEDashboard, `sae_dashboard/neuronpedia/neuronpedia_dashboard.py` and
//! `neuronpedia_converter.py` at commit 03a615f7c70a6f6e634845dab4051874698fac5b): one
//! `batch-N.json` per `features_per_batch` latents, `{model_id, layer, sae_set, features}`, each
//! feature with every key of `NeuronpediaDashboardFeature.to_dict` (the neuron-alignment and
//! correlation tables engram does not compute are empty lists), its top activations as
//! `{bin_min: -1, bin_max: <max act>, bin_contains: -1, tokens, values}` (the "TOP ACTIVATIONS"
//! group), values rounded to 3 decimals as `FeatureProcessor.round_list` does.

use std::collections::HashMap;
use std::path::Path;

use polars::prelude::{NamedFrom, Series};
use serde::Serialize;
use serde_json::{json, Value};

use super::{DashboardReport, LatentCard};
use crate::report::table::{write_parquet, Table};
use crate::report::write_atomic;
use crate::{Error, Result};

/// The page: style, script, and `__DATA__` / `__TITLE__` placeholders.
pub const TEMPLATE: &str = include_str!("dashboard.html");
/// The page's file name.
pub const PAGE_FILE: &str = "dashboard.html";
/// The latent table's file name.
pub const TABLE_FILE: &str = "latents.parquet";
/// The Neuronpedia export's folder.
pub const NEURONPEDIA_DIR: &str = "neuronpedia";

/// What the page says about the run.
#[derive(Clone, Debug, Serialize)]
pub struct Meta {
    /// The SAE's `model_name`, else the model spec.
    pub model: String,
    /// The SAE folder's name (the Neuronpedia `sae_set`).
    pub sae: String,
    pub sae_path: String,
    pub corpus: String,
    pub kind: String,
    pub d_in: usize,
}

fn r3(v: f64) -> f64 {
    if v.is_finite() {
        (v * 1000.0).round() / 1000.0
    } else {
        0.0
    }
}

fn r3s(v: impl IntoIterator<Item = f32>) -> Vec<f64> {
    v.into_iter().map(|x| r3(x as f64)).collect()
}

impl DashboardReport {
    fn text(&self, id: u32) -> String {
        self.token_text
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("#{id}"))
    }

    /// A context as text with its maximum in «».
    fn context_text(&self, c: &super::TopContext) -> String {
        let mut s = String::new();
        for (k, &id) in c.tokens.iter().enumerate() {
            let t = self.text(id);
            if c.start + k == c.pos {
                s.push('«');
                s.push_str(&t);
                s.push('»');
            } else {
                s.push_str(&t);
            }
        }
        s.replace('\n', "\\n")
    }
}

/// Write every output into `dir`; the files written, relative to `dir`.
pub fn write_all(r: &DashboardReport, dir: &Path) -> Result<Vec<String>> {
    let mut files = vec![write_table(r, dir)?];
    files.push(write_page(r, dir)?);
    files.extend(write_neuronpedia(r, dir)?);
    Ok(files)
}

fn write_table(r: &DashboardReport, dir: &Path) -> Result<String> {
    let l = &r.dash.latents;
    let strs = |v: &[(u32, f32)]| -> Series {
        let s: Vec<String> = v.iter().map(|x| r.text(x.0).replace('\n', "\\n")).collect();
        Series::new("".into(), s)
    };
    let vals = |v: &[(u32, f32)]| -> Series {
        let s: Vec<f32> = v.iter().map(|x| x.1).collect();
        Series::new("".into(), s)
    };
    let mut df = Table::new()
        .col(
            "latent",
            l.iter().map(|c| c.latent as u32).collect::<Vec<_>>(),
        )
        .col(
            "frequency",
            l.iter().map(|c| c.frequency).collect::<Vec<_>>(),
        )
        .col("fires", l.iter().map(|c| c.fires).collect::<Vec<_>>())
        .col("mean_act", l.iter().map(|c| c.mean_act).collect::<Vec<_>>())
        .col(
            "max_act",
            l.iter().map(|c| c.max_act as f64).collect::<Vec<_>>(),
        )
        .col(
            "top_context",
            l.iter()
                .map(|c| c.contexts.first().map(|x| r.context_text(x)))
                .collect::<Vec<_>>(),
        )
        .col(
            "top_logit_tokens",
            l.iter().map(|c| strs(&c.pos_logits)).collect::<Vec<_>>(),
        )
        .col(
            "top_logit_values",
            l.iter().map(|c| vals(&c.pos_logits)).collect::<Vec<_>>(),
        )
        .col(
            "bottom_logit_tokens",
            l.iter().map(|c| strs(&c.neg_logits)).collect::<Vec<_>>(),
        )
        .col(
            "bottom_logit_values",
            l.iter().map(|c| vals(&c.neg_logits)).collect::<Vec<_>>(),
        )
        .build()?;
    write_parquet(&mut df, &dir.join(TABLE_FILE))?;
    Ok(TABLE_FILE.into())
}

/// The page's data: token strings once (`vocab`, with their ids), contexts as indices into it.
pub fn page_data(r: &DashboardReport) -> Value {
    let mut index: HashMap<u32, usize> = HashMap::new();
    let mut vocab: Vec<String> = vec![];
    let mut ids: Vec<u32> = vec![];
    let mut slot = |id: u32| -> usize {
        *index.entry(id).or_insert_with(|| {
            vocab.push(r.text(id));
            ids.push(id);
            vocab.len() - 1
        })
    };
    let d = &r.dash;
    let latents: Vec<Value> = d
        .latents
        .iter()
        .map(|c: &LatentCard| {
            let logits = |v: &[(u32, f32)], slot: &mut dyn FnMut(u32) -> usize| -> Value {
                v.iter()
                    .map(|&(id, x)| json!([slot(id), r3(x as f64)]))
                    .collect()
            };
            let ctx: Vec<Value> = c
                .contexts
                .iter()
                .map(|x| {
                    json!({
                        "w": x.window, "p": x.pos, "s": x.start,
                        "t": x.tokens.iter().map(|&id| slot(id)).collect::<Vec<_>>(),
                        "v": r3s(x.values.iter().copied()),
                    })
                })
                .collect();
            json!({
                "i": c.latent,
                "freq": c.frequency,
                "fires": c.fires,
                "mean": r3(c.mean_act),
                "max": r3(c.max_act as f64),
                "hx": c.act_hist.centres.iter().map(|&v| r3(v)).collect::<Vec<_>>(),
                "hc": c.act_hist.counts,
                "lx": c.logit_hist.centres.iter().map(|&v| r3(v)).collect::<Vec<_>>(),
                "lc": c.logit_hist.counts,
                "pos": logits(&c.pos_logits, &mut slot),
                "neg": logits(&c.neg_logits, &mut slot),
                "ctx": ctx,
            })
        })
        .collect();
    json!({
        "meta": {
            "model": r.meta.model, "sae": r.meta.sae, "sae_path": r.meta.sae_path,
            "kind": r.meta.kind, "d_in": r.meta.d_in, "d_sae": d.d_sae, "hook": d.hook,
            "layer": d.layer, "corpus": r.meta.corpus, "n_tokens": d.n_tokens,
            "n_windows": d.n_windows, "context": d.context, "notes": d.notes,
        },
        "vocab": vocab,
        "ids": ids,
        "latents": latents,
    })
}

/// JSON safe inside `<script>`: every `<` escaped (they only occur inside strings).
pub fn script_json(v: &Value) -> Result<String> {
    let s = serde_json::to_string(v).map_err(|e| Error::msg(format!("dashboard data: {e}")))?;
    Ok(s.replace('<', "\\u003c"))
}

fn write_page(r: &DashboardReport, dir: &Path) -> Result<String> {
    let data = script_json(&page_data(r))?;
    let title = crate::report::page::esc(&format!(
        "{} latents · {} · {}",
        r.meta.sae, r.dash.hook, r.meta.model
    ));
    let (head, tail) = TEMPLATE
        .split_once("__DATA__")
        .ok_or_else(|| Error::msg("dashboard template without __DATA__"))?;
    let html = format!("{}{data}{tail}", head.replacen("__TITLE__", &title, 1));
    write_atomic(&dir.join(PAGE_FILE), html.as_bytes())?;
    Ok(PAGE_FILE.into())
}

/// One feature in Neuronpedia's batch format.
pub fn neuronpedia_feature(r: &DashboardReport, c: &LatentCard) -> Value {
    let empty: Vec<Value> = vec![];
    let acts: Vec<Value> = c
        .contexts
        .iter()
        .map(|x| {
            json!({
                "bin_min": -1, "bin_max": r3(c.max_act as f64), "bin_contains": -1,
                "tokens": x.tokens.iter().map(|&id| r.text(id)).collect::<Vec<_>>(),
                "values": r3s(x.values.iter().copied()),
            })
        })
        .collect();
    let strs = |v: &[(u32, f32)]| -> Vec<String> { v.iter().map(|x| r.text(x.0)).collect() };
    let vals = |v: &[(u32, f32)]| -> Vec<f64> { r3s(v.iter().map(|x| x.1)) };
    json!({
        "feature_index": c.latent,
        "neuron_alignment_indices": empty,
        "neuron_alignment_values": empty,
        "neuron_alignment_l1": empty,
        "correlated_neurons_indices": empty,
        "correlated_neurons_l1": empty,
        "correlated_neurons_pearson": empty,
        "correlated_features_indices": empty,
        "correlated_features_l1": empty,
        "correlated_features_pearson": empty,
        "neg_str": strs(&c.neg_logits),
        "neg_values": vals(&c.neg_logits),
        "pos_str": strs(&c.pos_logits),
        "pos_values": vals(&c.pos_logits),
        "frac_nonzero": c.frequency,
        "freq_hist_data_bar_values": c.act_hist.centres.iter().map(|&v| r3(v)).collect::<Vec<_>>(),
        "freq_hist_data_bar_heights": c.act_hist.counts.iter().map(|&v| v as f64).collect::<Vec<_>>(),
        "logits_hist_data_bar_heights": c.logit_hist.counts.iter().map(|&v| v as f64).collect::<Vec<_>>(),
        "logits_hist_data_bar_values": c.logit_hist.centres.iter().map(|&v| r3(v)).collect::<Vec<_>>(),
        "n_prompts_total": r.dash.n_windows,
        "n_tokens_in_prompt": r.dash.context,
        "dataset": r.meta.corpus,
        "decoder_weights_dist": empty,
        "activations": acts,
    })
}

fn write_neuronpedia(r: &DashboardReport, dir: &Path) -> Result<Vec<String>> {
    let np = dir.join(NEURONPEDIA_DIR);
    std::fs::create_dir_all(&np).map_err(|e| Error::io(&np, e))?;
    let mut files = vec![];
    let per = r.params.features_per_batch.max(1);
    for (b, chunk) in r.dash.latents.chunks(per).enumerate() {
        let batch = json!({
            "model_id": r.meta.model,
            "layer": r.dash.layer.unwrap_or(0),
            "sae_set": r.meta.sae,
            "features": chunk.iter().map(|c| neuronpedia_feature(r, c)).collect::<Vec<_>>(),
        });
        let name = format!("batch-{b}.json");
        let text = serde_json::to_string(&batch).map_err(|e| Error::msg(format!("{name}: {e}")))?;
        write_atomic(&np.join(&name), text.as_bytes())?;
        files.push(format!("{NEURONPEDIA_DIR}/{name}"));
    }
    Ok(files)
}
