//! `engram sae dashboard`: feature dashboards of an SAE's latents over corpus windows.
//!
//! The model runs over windows of the corpus (each window `[BOS] + context − 1` tokens, as the
//! activation store cuts them; the forward stops after the hook's layer), the SAE encodes the
//! hook's activations, and for every requested latent the run keeps:
//! - its top-activating contexts: the `top` windows with the largest activation (one entry per
//!   window, at its maximum), each as the tokens from `window_before` before to `window_after`
//!   after the maximum with the latent's activation at every token;
//! - a histogram of its non-zero activations, its firing frequency and mean (firing) activation;
//! - its logit effects: the decoder row through the final norm's weight and the unembedding,
//!   `(w_ln ⊙ W_dec[i]) · W_U` (centred first under a LayerNorm), which is `W_dec[i] · W_U` for
//!   TransformerLens's folded `W_U` (`fold_ln`), the convention of SAELens / SAEDashboard /
//!   Neuronpedia; the top and bottom `logits` tokens and a histogram over the vocabulary.
//!
//! Positions that are never counted (the window's first position, pads and special tokens, as
//! in the store) have activation 0 in the contexts and are not in the statistics.
//!
//! Outputs ([`page`]): `dashboard.html` (self-contained), `latents.parquet`, and `neuronpedia/`
//! (`batch-N.json` in SAEDashboard's Neuronpedia format).

pub mod page;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::Sae;
use crate::hooks::{HookPoint, Hooks};
use crate::model::config::NormKind;
use crate::model::{Batch, Model, RunOptions};
use crate::probes::{Context, Probe, Report};
use crate::progress::Progress;
use crate::{Error, Result};

const CORPUS: &str = "notebooks-data/corpus/corpus.jsonl";

/// Parameters of `engram sae dashboard`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct DashboardParams {
    /// The SAE (a folder in SAELens layout: cfg.json + sae_weights.safetensors).
    pub sae: PathBuf,
    /// Hook point (default: the SAE's `hook_name`).
    pub hook: Option<String>,
    /// Corpus (.jsonl with "text", or .txt with blank-line separated documents).
    pub corpus: PathBuf,
    /// Token positions to encode (BOS, pads and special tokens not counted).
    pub tokens: usize,
    /// Tokens per forward window (BOS included).
    pub context: usize,
    /// Windows per forward pass.
    pub forward_batch: usize,
    /// Latents: `0..N`, a comma-separated list, or a mix (`0..8,20,31`); empty = all.
    pub latents: String,
    /// Top-activating contexts kept per latent.
    pub top: usize,
    /// Tokens shown before a context's maximum.
    pub window_before: usize,
    /// Tokens shown after a context's maximum.
    pub window_after: usize,
    /// Top positive and negative logit tokens per latent.
    pub logits: usize,
    /// Bins of the activation and logit histograms.
    pub bins: usize,
    /// Latents per Neuronpedia batch file.
    pub features_per_batch: usize,
}

impl Default for DashboardParams {
    fn default() -> Self {
        DashboardParams {
            sae: PathBuf::new(),
            hook: None,
            corpus: PathBuf::from(CORPUS),
            tokens: 8192,
            context: 128,
            forward_batch: 8,
            latents: String::new(),
            top: 20,
            window_before: 10,
            window_after: 5,
            logits: 10,
            bins: 50,
            features_per_batch: 128,
        }
    }
}

/// `0..N`, `a..b`, single indices and mixes of them, comma-separated, each below `n`; empty or
/// `all` = every latent. Duplicates are dropped, the order is kept.
pub fn parse_latents(s: &str, n: usize) -> Result<Vec<usize>> {
    let s = s.trim();
    if s.is_empty() || s == "all" {
        return Ok((0..n).collect());
    }
    let mut out = vec![];
    let mut seen = vec![false; n];
    let num = |t: &str| -> Result<usize> {
        t.trim()
            .parse::<usize>()
            .map_err(|_| Error::msg(format!("--latents: `{t}` is not a latent index or range")))
    };
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once("..") {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b.trim_start_matches('='))?);
                let b = if part.contains("..=") { b + 1 } else { b };
                if b <= a {
                    crate::bail!("--latents: the range `{part}` is empty");
                }
                (a, b)
            }
            None => {
                let a = num(part)?;
                (a, a + 1)
            }
        };
        if b > n {
            crate::bail!("--latents: `{part}` is out of range: the SAE has {n} latents (0..{n})");
        }
        for (i, s) in seen.iter_mut().enumerate().take(b).skip(a) {
            if !std::mem::replace(s, true) {
                out.push(i);
            }
        }
    }
    if out.is_empty() {
        crate::bail!("--latents `{s}` names no latent");
    }
    Ok(out)
}

impl DashboardParams {
    /// One-line errors for sizes that give an empty dashboard.
    fn check_sizes(&self) -> Result<()> {
        crate::probes::at_least_one(&[
            ("--tokens", self.tokens),
            ("--forward-batch", self.forward_batch),
            ("--top", self.top),
            ("--bins", self.bins),
            ("--features-per-batch", self.features_per_batch),
        ])?;
        if self.context < 2 {
            crate::bail!(
                "--context must be at least 2 (BOS and one token), got {}",
                self.context
            );
        }
        Ok(())
    }

    /// The SAE and the hook it reads (`--hook`, else its `hook_name`).
    pub fn sae_and_hook(&self) -> Result<(Sae, String)> {
        if self.sae.as_os_str().is_empty() {
            crate::bail!(
                "sae dashboard: give --sae DIR (a folder with cfg.json and \
                 sae_weights.safetensors) or --sae RELEASE/SAE_ID"
            );
        }
        // A directory, or a pretrained `RELEASE/SAE_ID`.
        let sae = super::pretrained::load_sae_arg(&self.sae, &Device::Cpu)?.sae;
        let hook = match (&self.hook, sae.hook_name()) {
            (Some(h), _) if !h.trim().is_empty() => h.trim().to_string(),
            (_, Some(h)) => h,
            _ => crate::bail!(
                "sae dashboard: {} has no hook_name in its cfg.json; give --hook (e.g. blocks.15.hook_resid_post)",
                self.sae.join("cfg.json").display()
            ),
        };
        Ok((sae, hook))
    }
}

/// One top-activating context of a latent.
#[derive(Clone, Debug, Serialize)]
pub struct TopContext {
    /// The latent's activation at the maximum.
    pub value: f32,
    /// The window (in corpus order) and the maximum's position in it (BOS = 0).
    pub window: usize,
    pub pos: usize,
    /// The tokens shown (window positions `start..start + tokens.len()`).
    pub start: usize,
    pub tokens: Vec<u32>,
    /// The latent's activation at each token shown (0 where not counted).
    pub values: Vec<f32>,
}

/// A histogram: bin centres and counts (as SAEDashboard: `bins` equal bins over [min, max]).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Histogram {
    pub centres: Vec<f64>,
    pub counts: Vec<u64>,
}

impl Histogram {
    pub fn of(data: &[f32], bins: usize) -> Histogram {
        if data.is_empty() || bins == 0 {
            return Histogram::default();
        }
        let (lo, hi) = data
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
                (l.min(v), h.max(v))
            });
        let (lo, hi) = (lo as f64, hi as f64);
        let width = (hi - lo) / bins as f64;
        let mut counts = vec![0u64; bins];
        for &v in data {
            let b = if width > 0.0 {
                (((v as f64 - lo) / width) as usize).min(bins - 1)
            } else {
                0
            };
            counts[b] += 1;
        }
        Histogram {
            centres: (0..bins).map(|b| lo + (b as f64 + 0.5) * width).collect(),
            counts,
        }
    }
}

/// Everything the dashboard shows of one latent.
#[derive(Clone, Debug, Serialize)]
pub struct LatentCard {
    pub latent: usize,
    /// Share of counted positions where it fires (> 0).
    pub frequency: f64,
    pub fires: u64,
    /// Mean activation where it fires (0 if never).
    pub mean_act: f64,
    pub max_act: f32,
    /// Top contexts, largest first.
    pub contexts: Vec<TopContext>,
    pub act_hist: Histogram,
    /// (token id, logit effect), largest first / most negative first.
    pub pos_logits: Vec<(u32, f32)>,
    pub neg_logits: Vec<(u32, f32)>,
    pub logit_hist: Histogram,
}

/// A computed dashboard.
#[derive(Clone, Debug)]
pub struct Dashboard {
    pub hook: String,
    pub layer: Option<usize>,
    pub d_sae: usize,
    /// Counted positions encoded, and windows run.
    pub n_tokens: usize,
    pub n_windows: usize,
    pub context: usize,
    pub latents: Vec<LatentCard>,
    pub notes: Vec<String>,
}

/// Windows of `context` tokens (`[bos] + body`) from `docs`, until `tokens` counted positions
/// (not the first, not special) are reached; the last window is cut to the budget.
pub fn windows(
    docs: &[Vec<u32>],
    context: usize,
    bos: Option<u32>,
    specials: &[u32],
    tokens: usize,
) -> Vec<Vec<u32>> {
    let body = context.saturating_sub(usize::from(bos.is_some())).max(1);
    let mut out = vec![];
    let mut counted = 0usize;
    'docs: for d in docs {
        for w in d.chunks(body) {
            let mut row: Vec<u32> = bos.into_iter().collect();
            for &id in w {
                if counted >= tokens {
                    break;
                }
                if !row.is_empty() && !specials.contains(&id) {
                    counted += 1;
                }
                row.push(id);
            }
            if row.len() >= 2 {
                out.push(row);
            }
            if counted >= tokens {
                break 'docs;
            }
        }
    }
    out
}

struct Acc {
    fires: u64,
    sum: f64,
    max: f32,
    nonzero: Vec<f32>,
    top: Vec<TopContext>,
}

/// The model's special token ids (never counted).
pub fn model_specials(model: &Model) -> Vec<u32> {
    model
        .tokenizer
        .as_ref()
        .map(|t| t.special_ids())
        .unwrap_or_default()
}

/// Compute the dashboard of `latents` of `sae` at `hook` over token windows `rows`
/// ([`windows`]); the model's special tokens are never counted.
pub fn compute(
    model: &Model,
    sae: &Sae,
    hook: &str,
    rows: &[Vec<u32>],
    latents: &[usize],
    p: &DashboardParams,
    progress: &Progress,
) -> Result<Dashboard> {
    let (point, width) = super::store::store_point(model.cfg(), hook)?;
    if sae.d_in() != width {
        crate::bail!(
            "sae dashboard: the SAE has d_in {} but {hook} of this model has width {width}",
            sae.d_in()
        );
    }
    let specials = &model_specials(model);
    let n_all = sae.d_sae();
    if let Some(&bad) = latents.iter().find(|&&i| i >= n_all) {
        crate::bail!("latent {bad} is out of range: the SAE has {n_all} latents");
    }
    let mut accs: Vec<Acc> = latents
        .iter()
        .map(|_| Acc {
            fires: 0,
            sum: 0.0,
            max: 0.0,
            nonzero: vec![],
            top: vec![],
        })
        .collect();
    let total: usize = rows
        .iter()
        .map(|r| counted_mask(r, specials).iter().filter(|&&c| c).count())
        .sum();
    let bar = progress.bar(total as u64, "dashboard: encoding");
    let mut n_tokens = 0usize;
    let (before, after) = (p.window_before, p.window_after);
    for (c, chunk) in rows.chunks(p.forward_batch.max(1)).enumerate() {
        let batch = Batch::new(chunk, model.pad_id())?;
        let mut hooks = Hooks::capture_points(&[point]);
        model
            .transformer
            .forward_with(&batch, &mut hooks, RunOptions::capture_only(&[point]))?;
        let x = hooks.cache.expect(point)?.to_device(&Device::Cpu)?;
        let t = batch.seq_len;
        let x = x.to_dtype(DType::F32)?.reshape((chunk.len() * t, width))?;
        let z: Vec<f32> = sae.encode(&x)?.flatten_all()?.to_vec1()?;
        let mut row_max = vec![(0f32, 0usize); latents.len()];
        for (r, ids) in chunk.iter().enumerate() {
            let pad = batch.pad_left[r];
            let mask = counted_mask(ids, specials);
            let win = c * p.forward_batch.max(1) + r;
            row_max.iter_mut().for_each(|m| *m = (0.0, 0));
            for (q, _) in mask.iter().enumerate().filter(|(_, &m)| m) {
                n_tokens += 1;
                let zr = &z[(r * t + pad + q) * n_all..(r * t + pad + q + 1) * n_all];
                for (j, &lat) in latents.iter().enumerate() {
                    let v = zr[lat];
                    if v > 0.0 {
                        let a = &mut accs[j];
                        a.fires += 1;
                        a.sum += v as f64;
                        a.nonzero.push(v);
                        if v > row_max[j].0 {
                            row_max[j] = (v, q);
                        }
                    }
                }
            }
            bar.inc(mask.iter().filter(|&&m| m).count() as u64);
            for (j, &(v, q)) in row_max.iter().enumerate() {
                if v <= 0.0 {
                    continue;
                }
                let a = &mut accs[j];
                a.max = a.max.max(v);
                if a.top.len() >= p.top && a.top.last().is_some_and(|l| l.value >= v) {
                    continue;
                }
                let start = q.saturating_sub(before);
                let end = (q + after + 1).min(ids.len());
                let lat = latents[j];
                let values = (start..end)
                    .map(|s| {
                        if mask[s] {
                            z[(r * t + pad + s) * n_all + lat]
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let ctx = TopContext {
                    value: v,
                    window: win,
                    pos: q,
                    start,
                    tokens: ids[start..end].to_vec(),
                    values,
                };
                let at = a.top.partition_point(|e| e.value >= v);
                a.top.insert(at, ctx);
                a.top.truncate(p.top);
            }
        }
    }
    bar.finish();
    let mut notes = vec![format!(
        "{n_tokens} positions in {} windows of ≤ {} tokens (BOS first; the first position, pads and special tokens are not counted and show activation 0)",
        rows.len(),
        p.context
    )];
    let logit_rows = logit_effects(model, sae, latents, p.logits, p.bins)?;
    notes.push(logit_note(model.cfg().norm));
    notes.push("activations are the SAE's own (SAEDashboard folds the decoder norms into the encoder first, scaling latent i by ‖W_dec[i]‖; engram does not)".into());
    let latents = latents
        .iter()
        .zip(accs)
        .zip(logit_rows)
        .map(
            |((&latent, a), (pos_logits, neg_logits, logit_hist))| LatentCard {
                latent,
                frequency: a.fires as f64 / n_tokens.max(1) as f64,
                fires: a.fires,
                mean_act: if a.fires > 0 {
                    a.sum / a.fires as f64
                } else {
                    0.0
                },
                max_act: a.max,
                contexts: a.top,
                act_hist: Histogram::of(&a.nonzero, p.bins),
                pos_logits,
                neg_logits,
                logit_hist,
            },
        )
        .collect();
    Ok(Dashboard {
        hook: hook.to_string(),
        layer: point.layer(),
        d_sae: n_all,
        n_tokens,
        n_windows: rows.len(),
        context: p.context,
        latents,
        notes,
    })
}

fn logit_note(norm: NormKind) -> String {
    let dir = if norm == NormKind::Layer {
        "centre(W_dec[i])"
    } else {
        "W_dec[i]"
    };
    format!(
        "logit effects: (w_ln ⊙ {dir}) · W_U, the final norm's weight w_ln folded into the unembedding as TransformerLens's fold_ln does (so this is SAELens / SAEDashboard's W_dec @ W_U on a HookedTransformer); no final norm scale, bias or softcap"
    )
}

/// Which positions of a window are counted: not the first, not a special token.
fn counted_mask(row: &[u32], specials: &[u32]) -> Vec<bool> {
    row.iter()
        .enumerate()
        .map(|(q, id)| q > 0 && !specials.contains(id))
        .collect()
}

type LogitRow = (Vec<(u32, f32)>, Vec<(u32, f32)>, Histogram);

/// The decoder rows of `latents` through the final norm's weight (centred first for a
/// LayerNorm): `[k, d]` f32 on the CPU.
pub fn logit_directions(model: &Model, sae: &Sae, latents: &[usize]) -> Result<Tensor> {
    let t = &model.transformer;
    let idx = Tensor::from_vec(
        latents.iter().map(|&i| i as u32).collect::<Vec<u32>>(),
        latents.len(),
        &Device::Cpu,
    )?;
    let dirs = sae
        .w_dec
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .index_select(&idx, 0)?;
    let dirs = if t.cfg.norm == NormKind::Layer {
        dirs.broadcast_sub(&dirs.mean_keepdim(1)?)?
    } else {
        dirs
    };
    let w = t
        .final_norm_weight()
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?;
    Ok(dirs.broadcast_mul(&w)?)
}

/// Top / bottom `n` logit effects and a histogram over the vocabulary for each latent.
fn logit_effects(
    model: &Model,
    sae: &Sae,
    latents: &[usize],
    n: usize,
    bins: usize,
) -> Result<Vec<LogitRow>> {
    let t = &model.transformer;
    let wu = t
        .unembed_rows()
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?;
    let vocab = wu.dims()[0];
    let wut = wu.t()?;
    let dirs = logit_directions(model, sae, latents)?;
    // Chunks of latents so that a chunk's logits stay near 16M floats.
    let per = (16_000_000 / vocab.max(1)).clamp(1, 512);
    let mut out = Vec::with_capacity(latents.len());
    for start in (0..latents.len()).step_by(per) {
        let k = per.min(latents.len() - start);
        let logits: Vec<f32> = dirs
            .narrow(0, start, k)?
            .matmul(&wut)?
            .flatten_all()?
            .to_vec1()?;
        for row in logits.chunks(vocab) {
            out.push((
                top_n(row, n, false),
                top_n(row, n, true),
                Histogram::of(row, bins),
            ));
        }
    }
    Ok(out)
}

/// The `n` largest entries of `row` (the smallest with `lowest`) as (index, value), extreme
/// first, ties by index; O(len) selection, then a sort of the `n`.
pub fn top_n(row: &[f32], n: usize, lowest: bool) -> Vec<(u32, f32)> {
    let key = |i: u32| {
        if lowest {
            -row[i as usize]
        } else {
            row[i as usize]
        }
    };
    let order = |a: &u32, b: &u32| key(*b).total_cmp(&key(*a)).then(a.cmp(b));
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    let m = n.min(idx.len());
    if m == 0 {
        return vec![];
    }
    if m < idx.len() {
        idx.select_nth_unstable_by(m - 1, order);
        idx.truncate(m);
    }
    idx.sort_by(order);
    idx.into_iter().map(|i| (i, row[i as usize])).collect()
}

/// `engram sae dashboard`.
pub struct DashboardProbe;

/// The report: the dashboard and the strings of its tokens.
pub struct DashboardReport {
    pub dash: Dashboard,
    pub meta: page::Meta,
    pub token_text: std::collections::HashMap<u32, String>,
    pub params: DashboardParams,
}

impl Probe for DashboardProbe {
    const NAME: &'static str = "sae dashboard";
    type Params = DashboardParams;
    type Report = DashboardReport;

    fn check(p: &DashboardParams) -> Result<()> {
        p.check_sizes()?;
        let (sae, hook) = p.sae_and_hook()?;
        hook.parse::<HookPoint>()
            .map_err(|e| Error::msg(format!("sae dashboard: hook {hook}: {e}")))?;
        parse_latents(&p.latents, sae.d_sae())?;
        crate::data::require_file(&p.corpus, "corpus")?;
        Ok(())
    }

    fn check_model(p: &DashboardParams, cfg: &crate::model::ModelConfig) -> Result<()> {
        let (sae, hook) = p.sae_and_hook()?;
        let (_, width) = super::store::store_point(cfg, &hook)?;
        if sae.d_in() != width {
            crate::bail!(
                "sae dashboard: the SAE in {} has d_in {} but {hook} of this model has width {width}",
                p.sae.display(),
                sae.d_in()
            );
        }
        Ok(())
    }

    fn run(cx: &mut Context<'_>, p: &DashboardParams) -> Result<DashboardReport> {
        let m = cx.model()?;
        let (sae, hook) = p.sae_and_hook()?;
        let latents = parse_latents(&p.latents, sae.d_sae())?;
        let tok = m.tokenizer()?;
        let specials = model_specials(&m);
        let t0 = std::time::Instant::now();
        let docs = crate::data::read_corpus(&p.corpus)?;
        let mut ids = vec![];
        let mut have = 0usize;
        // Tokenize only as many documents as the budget needs.
        for d in &docs {
            if have > p.tokens {
                break;
            }
            let v = tok.encode(d, false)?;
            have += v.len();
            ids.push(v);
        }
        let rows = windows(&ids, p.context, super::window_bos(&m), &specials, p.tokens);
        cx.manifest
            .record_timing("tokenize", t0.elapsed().as_secs_f64());
        let t0 = std::time::Instant::now();
        let mut dash = compute(&m, &sae, &hook, &rows, &latents, p, cx.progress)?;
        cx.manifest
            .record_timing("dashboard", t0.elapsed().as_secs_f64());
        if dash.n_tokens < p.tokens {
            dash.notes.push(format!(
                "the corpus gave {} of the {} tokens asked for",
                dash.n_tokens, p.tokens
            ));
        }
        let mut token_text = std::collections::HashMap::new();
        for c in &dash.latents {
            let all = c
                .contexts
                .iter()
                .flat_map(|x| x.tokens.iter())
                .chain(c.pos_logits.iter().map(|x| &x.0))
                .chain(c.neg_logits.iter().map(|x| &x.0));
            for &id in all {
                token_text.entry(id).or_insert_with(|| {
                    tok.decode(&[id], false)
                        .unwrap_or_else(|_| format!("#{id}"))
                });
            }
        }
        let sae_name = p
            .sae
            .canonicalize()
            .unwrap_or_else(|_| p.sae.clone())
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "sae".into());
        let meta = page::Meta {
            model: sae
                .meta
                .get("model_name")
                .and_then(|v| v.as_str())
                .map(String::from)
                .unwrap_or_else(|| m.source.spec.clone()),
            sae: sae_name,
            sae_path: p.sae.display().to_string(),
            corpus: p.corpus.display().to_string(),
            kind: sae.kind.name().to_string(),
            d_in: sae.d_in(),
        };
        Ok(DashboardReport {
            dash,
            meta,
            token_text,
            params: p.clone(),
        })
    }
}

impl Report for DashboardReport {
    fn write(&self, dir: &Path) -> Result<Vec<String>> {
        page::write_all(self, dir)
    }

    fn notes(&self) -> Vec<String> {
        self.dash.notes.clone()
    }

    fn summary(&self) -> Vec<String> {
        let d = &self.dash;
        let dead = d.latents.iter().filter(|c| c.fires == 0).count();
        let mut f: Vec<f64> = d.latents.iter().map(|c| c.frequency).collect();
        f.sort_by(f64::total_cmp);
        let med = f.get(f.len() / 2).copied().unwrap_or(0.0);
        vec![format!(
            "{} latents of {} at {} over {} tokens ({} windows): {dead} never fire, median frequency {:.2e}",
            d.latents.len(),
            d.d_sae,
            d.hook,
            d.n_tokens,
            d.n_windows,
            med
        )]
    }
}
