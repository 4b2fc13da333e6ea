//! Induction heads and CMR-like heads (Li, Zhou, Benna, Mattar, NeurIPS 2024; docs/methods.md §1).
//!
//! Input: `batch` sequences of `[bos] + R + R`, R = `seq_len` uniform random non-special tokens.
//! Per head: induction (prefix-matching), previous-token and duplicate-token scores from the
//! attention pattern; the OV-circuit copying score; the lag-CRP of pre-softmax scores and of
//! probabilities over lags −8..+7 relative to the earlier occurrence of the destination's token;
//! the CMR fit of the score lag-CRP. Optionally, an ablation of the top CMR-like heads vs random
//! heads measured by the in-context-learning score on a text corpus.

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor, D};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

mod output;

pub use output::{fitted_curve, summary_lines, write_outputs, Heads, HeadsOutput, PATTERNS_FILE};

use super::cmr::{CmrFit, CmrFitter, CrpTable};
use crate::hooks::{HookPoint, Hooks, Intervention};
use crate::model::{Batch, Model};
use crate::progress::Progress;
use crate::Result;

/// Lags of the head lag-CRP: −8..=+7 (16 values, as the study's saved arrays).
pub const LAGS: std::ops::RangeInclusive<i64> = -8..=7;
pub const N_LAGS: usize = 16;

/// Parameters of the head probe.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct HeadsParams {
    /// Length n of the random sequence R (each row is [bos] + R + R).
    pub seq_len: usize,
    /// Number of sequences B.
    pub batch: usize,
    /// Seed of the random tokens (and of the random-head control).
    pub seed: u64,
    /// Sequences per forward pass (memory bound).
    pub chunk: usize,
    /// Use this CMR lag-CRP table (.npy, [20,21,11,17]) instead of engram's own simulation (shipped).
    pub cmr_table: Option<PathBuf>,
    /// Run the ablation experiment (top CMR-like heads vs random heads on a corpus).
    pub ablate: bool,
    /// Settings of the ablation.
    #[serde(flatten)]
    pub ablation: AblationParams,
}

impl Default for HeadsParams {
    fn default() -> Self {
        HeadsParams {
            seq_len: 50,
            batch: 16,
            seed: 0,
            chunk: 4,
            cmr_table: None,
            ablate: false,
            ablation: AblationParams::default(),
        }
    }
}

/// Ablation of the top CMR-like heads vs random heads.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct AblationParams {
    /// A .jsonl corpus ({"text": ...} per line) or a .txt file (documents separated by blank lines).
    pub corpus: PathBuf,
    /// Number of documents used (each must have more than `late + window` tokens).
    pub docs: usize,
    /// Early and late token positions of the ICL score (loss(late) − loss(early)).
    pub early: usize,
    pub late: usize,
    /// Losses are averaged over positions within ±window of early / late.
    pub window: usize,
    /// Share of heads ablated (top by CMR distance, ascending).
    pub top_frac: f64,
    /// Number of random head sets of the same size.
    pub random_sets: usize,
}

impl Default for AblationParams {
    fn default() -> Self {
        AblationParams {
            corpus: PathBuf::from("notebooks-data/corpus/corpus.jsonl"),
            docs: 16,
            early: 50,
            late: 500,
            window: 5,
            top_frac: 0.1,
            random_sets: 5,
        }
    }
}

/// Everything measured for one head.
#[derive(Clone, Debug)]
pub struct HeadRow {
    pub layer: usize,
    pub head: usize,
    pub induction_score: f64,
    pub prev_token_score: f64,
    pub duplicate_score: f64,
    pub copying_score: f64,
    /// Mean pre-softmax score by lag −8..+7.
    pub lag_scores: Vec<f64>,
    /// Mean attention probability by lag −8..+7.
    pub lag_probs: Vec<f64>,
    pub fit: CmrFit,
}

/// One ablation condition's ICL scores per document.
#[derive(Clone, Debug, Serialize)]
pub struct AblationCondition {
    /// "none", "top_cmr", "random_0", ...
    pub condition: String,
    pub heads: Vec<(usize, usize)>,
    pub icl_scores: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct AblationResult {
    pub conditions: Vec<AblationCondition>,
    /// Mean over documents of ICL(top) − mean over random sets of ICL(random).
    pub mean_diff: f64,
    /// Paired t statistic of those per-document differences.
    pub t_stat: f64,
    /// Two-sided sign-flip permutation p-value (10,000 resamples).
    pub p_value: f64,
}

#[derive(Clone, Debug)]
pub struct HeadsReport {
    /// The model, as named when it was loaded (the `model` column of the tables).
    pub model: String,
    pub n_layers: usize,
    pub n_heads: usize,
    pub heads: Vec<HeadRow>,
    pub tokens: Vec<Vec<u32>>,
    /// The tokens' strings (empty without a tokenizer).
    pub token_strs: Vec<Vec<String>>,
    /// Mean next-token loss on the first and second copy of R.
    pub loss_first_copy: f64,
    pub loss_second_copy: f64,
    pub ablation: Option<AblationResult>,
    pub notes: Vec<String>,
    /// The attention patterns of the first sequences, per layer `[k, head, T, T]` (F16, CPU):
    /// `patterns.safetensors`, the report page's viewer. Empty for `cmr-fit`.
    pub patterns: Vec<Tensor>,
}

/// At most this many sequences' patterns are kept for `patterns.safetensors`...
pub const PATTERN_SEQS: usize = 2;
/// ...and at most this many values in all (fewer sequences, at least one, for large models).
pub const PATTERN_VALUES: usize = 8 << 20;

/// How many sequences of `t` tokens [`pattern_stats`] keeps for a model of `nl × nh` heads.
fn kept_sequences(batch: usize, nl: usize, nh: usize, t: usize) -> usize {
    let per_seq = (nl * nh * t * t).max(1);
    (PATTERN_VALUES / per_seq).clamp(1, PATTERN_SEQS).min(batch)
}

/// `batch` rows of `[bos] + R + R` with R uniform over non-special tokens.
pub fn repeated_random_tokens(
    model: &Model,
    n: usize,
    batch: usize,
    seed: u64,
) -> Result<(Vec<Vec<u32>>, u32)> {
    let vocab = model.cfg().vocab_size as u32;
    let (special, bos) = match &model.tokenizer {
        Some(t) => {
            let special = t.special_ids();
            let bos = t
                .bos_id
                .or(model.cfg().bos_token_id)
                .or_else(|| t.eos_ids.first().copied())
                .unwrap_or(0);
            (special, bos)
        }
        None => (vec![], model.cfg().bos_token_id.unwrap_or(0)),
    };
    let mut excluded: std::collections::HashSet<u32> = special.into_iter().collect();
    excluded.insert(bos);
    excluded.extend(model.cfg().eos_token_ids.iter().copied());
    if let Some(p) = model.cfg().pad_token_id {
        excluded.insert(p);
    }
    let pool: Vec<u32> = (0..vocab).filter(|t| !excluded.contains(t)).collect();
    if pool.len() < 2 {
        crate::bail!("the vocabulary has no non-special tokens to sample");
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let rows = (0..batch)
        .map(|_| {
            let r: Vec<u32> = (0..n)
                .map(|_| pool[rng.random_range(0..pool.len())])
                .collect();
            let mut row = Vec::with_capacity(2 * n + 1);
            row.push(bos);
            row.extend_from_slice(&r);
            row.extend_from_slice(&r);
            row
        })
        .collect();
    Ok((rows, bos))
}

/// Accumulated pattern statistics of one head.
#[derive(Clone, Default)]
struct Acc {
    induction: (f64, usize),
    prev: (f64, usize),
    dup: (f64, usize),
    lag_s: [(f64, usize); N_LAGS],
    lag_p: [(f64, usize); N_LAGS],
}

fn mean((s, n): (f64, usize)) -> f64 {
    if n == 0 {
        f64::NAN
    } else {
        s / n as f64
    }
}

/// Pattern-based scores, lag-CRPs and the induction loss over `rows` (all of length 2n+1).
fn pattern_stats(
    model: &Model,
    rows: &[Vec<u32>],
    n: usize,
    chunk: usize,
    interventions: &[Intervention],
    progress: &Progress,
) -> Result<(Vec<Acc>, f64, f64, Vec<Tensor>)> {
    let cfg = model.cfg();
    let (nl, nh) = (cfg.n_layers, cfg.n_heads);
    let mut accs = vec![Acc::default(); nl * nh];
    let keep = kept_sequences(rows.len(), nl, nh, 2 * n + 1);
    let mut kept: Vec<Vec<Tensor>> = vec![vec![]; nl];
    let mut done = 0usize;
    let (mut loss1, mut loss2) = ((0f64, 0usize), (0f64, 0usize));
    let mut points = vec![];
    for l in 0..nl {
        points.push(HookPoint::AttnScores(l));
        points.push(HookPoint::Pattern(l));
    }
    let bar = progress.bar(rows.len() as u64, "heads: attention on repeated tokens");
    for part in rows.chunks(chunk.max(1)) {
        let batch = Batch::new(part, 0)?;
        let t = batch.seq_len;
        let mut hooks = Hooks::capture_points(&points);
        for i in interventions {
            hooks.add(i.clone());
        }
        let logits = model.forward(&batch, &mut hooks)?;
        // Losses: position i predicts token i+1.
        let lp = crate::model::transformer::log_softmax(&logits)?;
        let targets: Vec<u32> = part
            .iter()
            .flat_map(|r| r[1..].iter().copied().chain(std::iter::once(0)))
            .collect();
        let tgt = Tensor::from_vec(targets, (part.len(), t, 1), lp.device())?;
        let nll: Vec<Vec<f32>> = lp.gather(&tgt, D::Minus1)?.squeeze(2)?.neg()?.to_vec2()?;
        for row in &nll {
            for (i, &v) in row.iter().enumerate().take(t - 1) {
                if (1..n).contains(&i) {
                    loss1.0 += v as f64;
                    loss1.1 += 1;
                } else if (n + 1..2 * n).contains(&i) {
                    loss2.0 += v as f64;
                    loss2.1 += 1;
                }
            }
        }
        // First occurrence of each destination's token.
        let firsts: Vec<Vec<Option<usize>>> = part
            .iter()
            .map(|r| {
                (0..t)
                    .map(|i| {
                        if i <= n {
                            return None;
                        }
                        (1..i).find(|&p| r[p] == r[i])
                    })
                    .collect()
            })
            .collect();
        for l in 0..nl {
            let s = hooks
                .cache
                .take(HookPoint::AttnScores(l))
                .expect("captured");
            let p = hooks.cache.take(HookPoint::Pattern(l)).expect("captured");
            let k = keep.saturating_sub(done).min(part.len());
            if k > 0 {
                kept[l].push(
                    p.narrow(0, 0, k)?
                        .to_dtype(DType::F16)?
                        .to_device(&candle_core::Device::Cpu)?,
                );
            }
            let s: Vec<f32> = s.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            let p: Vec<f32> = p.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            for (b, first) in firsts.iter().enumerate() {
                for h in 0..nh {
                    let acc = &mut accs[l * nh + h];
                    let base = (b * nh + h) * t * t;
                    let at = |v: &[f32], i: usize, j: usize| v[base + i * t + j] as f64;
                    for i in 1..t {
                        acc.prev.0 += at(&p, i, i - 1);
                        acc.prev.1 += 1;
                    }
                    for (i, fp) in first.iter().enumerate() {
                        let Some(fp) = *fp else { continue };
                        acc.induction.0 += at(&p, i, fp + 1);
                        acc.induction.1 += 1;
                        acc.dup.0 += at(&p, i, fp);
                        acc.dup.1 += 1;
                        for (k, lag) in LAGS.enumerate() {
                            let key = fp as i64 + lag;
                            // Causal keys only, and not the BOS attention sink.
                            if key < 1 || key > i as i64 {
                                continue;
                            }
                            let key = key as usize;
                            acc.lag_s[k].0 += at(&s, i, key);
                            acc.lag_s[k].1 += 1;
                            acc.lag_p[k].0 += at(&p, i, key);
                            acc.lag_p[k].1 += 1;
                        }
                    }
                }
            }
        }
        done += part.len();
        bar.inc(part.len() as u64);
    }
    bar.finish();
    let patterns = kept
        .iter()
        .map(|ts| Ok(Tensor::cat(ts, 0)?))
        .collect::<Result<Vec<_>>>()?;
    Ok((accs, mean(loss1), mean(loss2), patterns))
}

/// OV-circuit copying score per head: Σ Re λ / Σ |λ| over the eigenvalues of
/// W_E W_V W_O W_U, computed on the d_head × d_head matrix W_O W_U W_E W_V (same non-zero
/// eigenvalues). Norm weights are folded in as TransformerLens does (ln1 into W_V, the final
/// norm into W_U). LayerNorm families (GPT-2, GPT-NeoX) also have their reading weights centred
/// over d_model (TransformerLens' `fold_ln` with centring: exact, since a LayerNorm's input is
/// mean-subtracted); LayerNorm biases add constants, not part of the OV map, and are left out.
/// OLMo-2 has no ln1 (ones).
pub fn copying_scores(model: &Model) -> Result<Vec<Vec<f64>>> {
    let cfg = model.cfg();
    let f32t = |t: &Tensor| t.to_dtype(DType::F32);
    let centre = |t: Tensor, axis: usize| -> Result<Tensor> {
        if cfg.norm == crate::model::config::NormKind::Layer {
            Ok(t.broadcast_sub(&t.mean_keepdim(axis)?)?)
        } else {
            Ok(t)
        }
    };
    // P = diag(final_norm) · W_U · W_E  ([d, d]).
    let w_e = f32t(model.w_e())?; // [V, d]
    let u = f32t(model.unembed_rows())?; // [V, d] = W_Uᵀ
    let nf = f32t(model.final_norm_weight())?;
    let p = centre(u.t()?.matmul(&w_e)?.broadcast_mul(&nf.unsqueeze(1)?)?, 0)?; // [d, d]
    let g = cfg.n_heads / cfg.n_kv_heads;
    let mut out = vec![];
    for l in 0..cfg.n_layers {
        let ln1 = f32t(&model.ln1_weight(l)?)?;
        let w_v = f32t(&model.w_v(l)?)?.broadcast_mul(&ln1.reshape((1, cfg.d_model, 1))?)?; // [K, d, dh]
        let w_v = centre(w_v, 1)?;
        let w_o = f32t(&model.w_o(l)?)?; // [H, dh, d]
        let mut row = vec![];
        for h in 0..cfg.n_heads {
            let a = w_o.get(h)?.matmul(&p)?.matmul(&w_v.get(h / g)?)?; // [dh, dh]
            let dh = cfg.d_head;
            let v: Vec<f32> = a.flatten_all()?.to_vec1()?;
            let m =
                nalgebra::DMatrix::<f64>::from_row_iterator(dh, dh, v.iter().map(|&x| x as f64));
            let eig = m.complex_eigenvalues();
            let re: f64 = eig.iter().map(|c| c.re).sum();
            let abs: f64 = eig.iter().map(|c| c.norm()).sum();
            row.push(if abs > 0.0 { re / abs } else { f64::NAN });
        }
        out.push(row);
    }
    Ok(out)
}

/// The CMR table: the given .npy, else engram's own simulation ([`CrpTable::cached_or_simulate`]:
/// the shipped table).
pub fn cmr_table(path: Option<&Path>, progress: &Progress) -> Result<CrpTable> {
    match path {
        Some(p) => CrpTable::load_npy(crate::data::locate(p)),
        None => CrpTable::cached_or_simulate(None, progress),
    }
}

/// Run the probe.
pub fn run(model: &Model, params: &HeadsParams, progress: &Progress) -> Result<HeadsReport> {
    run_with(model, params, &[], progress)
}

/// As [`run`], with `interventions` applied in every forward pass over the repeated tokens (e.g.
/// the toy model's clamped previous-token head).
pub fn run_with(
    model: &Model,
    params: &HeadsParams,
    interventions: &[Intervention],
    progress: &Progress,
) -> Result<HeadsReport> {
    let cfg = model.cfg();
    if params.seq_len < 2 || params.batch == 0 {
        crate::bail!("heads: need seq_len ≥ 2 and batch ≥ 1");
    }
    if 2 * params.seq_len + 1 > cfg.max_position_embeddings {
        crate::bail!(
            "heads: sequences of {} tokens exceed the model's context ({})",
            2 * params.seq_len + 1,
            cfg.max_position_embeddings
        );
    }
    let (tokens, bos) = repeated_random_tokens(model, params.seq_len, params.batch, params.seed)?;
    let (accs, loss1, loss2, patterns) = pattern_stats(
        model,
        &tokens,
        params.seq_len,
        params.chunk,
        interventions,
        progress,
    )?;
    let copying = copying_scores(model)?;
    let table = cmr_table(params.cmr_table.as_deref(), progress)?;
    let fitter = CmrFitter::new(&table);
    let mut heads = vec![];
    for l in 0..cfg.n_layers {
        for h in 0..cfg.n_heads {
            let a = &accs[l * cfg.n_heads + h];
            let lag_scores: Vec<f64> = a.lag_s.iter().map(|&x| mean(x)).collect();
            let lag_probs: Vec<f64> = a.lag_p.iter().map(|&x| mean(x)).collect();
            let fit = fitter.fit(&lag_scores);
            heads.push(HeadRow {
                layer: l,
                head: h,
                induction_score: mean(a.induction),
                prev_token_score: mean(a.prev),
                duplicate_score: mean(a.dup),
                copying_score: copying[l][h],
                lag_scores,
                lag_probs,
                fit,
            });
        }
    }
    let mut notes = vec![
        format!("rows are [bos]+R+R with bos id {bos}; R uniform over non-special tokens"),
        "lag-CRP keys: causal positions ≥ 1 (the BOS attention sink is excluded)".into(),
        "copying score: eigenvalues of W_O W_U W_E W_V with ln1 folded into W_V and the final norm into W_U".into(),
        format!(
            "CMR table: {}",
            params
                .cmr_table
                .as_ref()
                .map_or("engram's own simulation (shipped)".into(), |p| p.display().to_string())
        ),
    ];
    let ablation = if params.ablate {
        let ap = &params.ablation;
        notes.push(format!(
            "ICL score = mean loss at positions {}±{} minus at {}±{}",
            ap.late, ap.window, ap.early, ap.window
        ));
        Some(ablate(model, &heads, ap, params.seed, progress)?)
    } else {
        None
    };
    let token_strs = match &model.tokenizer {
        Some(t) => tokens
            .iter()
            .map(|row| {
                row.iter()
                    .map(|&id| t.decode(&[id], false))
                    .collect::<Result<Vec<String>>>()
            })
            .collect::<Result<Vec<_>>>()?,
        None => vec![],
    };
    Ok(HeadsReport {
        model: model.source.spec.clone(),
        n_layers: cfg.n_layers,
        n_heads: cfg.n_heads,
        heads,
        tokens,
        token_strs,
        loss_first_copy: loss1,
        loss_second_copy: loss2,
        ablation,
        notes,
        patterns,
    })
}

/// Per-document ICL scores (loss late − loss early) with the given heads zero-ablated.
pub fn icl_scores(
    model: &Model,
    docs: &[Vec<u32>],
    heads: &[(usize, usize)],
    ap: &AblationParams,
) -> Result<Vec<f64>> {
    let mut out = vec![];
    for chunk in docs.chunks(2) {
        let batch = Batch::new(chunk, 0)?;
        let mut hooks = Hooks::none();
        for &(l, h) in heads {
            hooks.add(Intervention::zero_head(l, h));
        }
        let logits = model.forward(&batch, &mut hooks)?;
        let lp = crate::model::transformer::log_softmax(&logits)?;
        let t = batch.seq_len;
        let targets: Vec<u32> = chunk
            .iter()
            .flat_map(|r| r[1..].iter().copied().chain(std::iter::once(0)))
            .collect();
        let tgt = Tensor::from_vec(targets, (chunk.len(), t, 1), lp.device())?;
        let nll: Vec<Vec<f32>> = lp.gather(&tgt, D::Minus1)?.squeeze(2)?.neg()?.to_vec2()?;
        for row in nll {
            // Loss "at token k" = the loss of predicting token k (made at position k-1).
            let window = |k: usize| -> f64 {
                let lo = k.saturating_sub(ap.window).max(1);
                let hi = (k + ap.window).min(t - 1);
                let v: Vec<f64> = (lo..=hi).map(|k| row[k - 1] as f64).collect();
                v.iter().sum::<f64>() / v.len() as f64
            };
            out.push(window(ap.late) - window(ap.early));
        }
    }
    Ok(out)
}

fn ablate(
    model: &Model,
    heads: &[HeadRow],
    ap: &AblationParams,
    seed: u64,
    progress: &Progress,
) -> Result<AblationResult> {
    let need = ap.late + ap.window + 1;
    let texts = crate::data::read_corpus(&ap.corpus)?;
    let tok = model.tokenizer()?;
    let mut docs = vec![];
    for text in texts {
        let ids = tok.encode(&text, true)?;
        if ids.len() >= need {
            docs.push(ids[..need].to_vec());
            if docs.len() == ap.docs {
                break;
            }
        }
    }
    if docs.len() < 2 {
        crate::bail!(
            "{}: fewer than 2 documents have {need} tokens",
            ap.corpus.display()
        );
    }
    let mut ranked: Vec<&HeadRow> = heads
        .iter()
        .filter(|h| h.fit.distance.is_finite())
        .collect();
    ranked.sort_by(|a, b| a.fit.distance.total_cmp(&b.fit.distance));
    let k = ((heads.len() as f64 * ap.top_frac).ceil() as usize).clamp(1, heads.len());
    let top: Vec<(usize, usize)> = ranked.iter().take(k).map(|h| (h.layer, h.head)).collect();
    let others: Vec<(usize, usize)> = heads
        .iter()
        .map(|h| (h.layer, h.head))
        .filter(|x| !top.contains(x))
        .collect();
    let mut rng = StdRng::seed_from_u64(seed ^ 0xAB1A7E);
    let mut conditions = vec![];
    let bar = progress.bar((2 + ap.random_sets) as u64, "heads: ablation conditions");
    let mut run = |name: String, set: Vec<(usize, usize)>| -> Result<()> {
        let s = icl_scores(model, &docs, &set, ap)?;
        conditions.push(AblationCondition {
            condition: name,
            heads: set,
            icl_scores: s,
        });
        bar.inc(1);
        Ok(())
    };
    run("none".into(), vec![])?;
    run("top_cmr".into(), top.clone())?;
    for r in 0..ap.random_sets {
        let mut pool = others.clone();
        pool.shuffle(&mut rng);
        pool.truncate(k.min(pool.len()));
        run(format!("random_{r}"), pool)?;
    }
    bar.finish();
    let n = docs.len();
    let diffs: Vec<f64> = (0..n)
        .map(|d| {
            let rand_mean = conditions[2..].iter().map(|c| c.icl_scores[d]).sum::<f64>()
                / (conditions.len() - 2).max(1) as f64;
            conditions[1].icl_scores[d] - rand_mean
        })
        .collect();
    let (mean_diff, t_stat, p_value) = paired_test(&diffs, seed);
    Ok(AblationResult {
        conditions,
        mean_diff,
        t_stat,
        p_value,
    })
}

/// Mean, t statistic and two-sided sign-flip permutation p-value of paired differences.
pub fn paired_test(diffs: &[f64], seed: u64) -> (f64, f64, f64) {
    let n = diffs.len() as f64;
    if diffs.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mean = diffs.iter().sum::<f64>() / n;
    let var = diffs.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    let t = mean / (var / n).sqrt();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5167);
    let reps = 10_000;
    let obs = mean.abs();
    let mut hits = 0usize;
    for _ in 0..reps {
        let m: f64 = diffs
            .iter()
            .map(|d| if rng.random_bool(0.5) { *d } else { -*d })
            .sum::<f64>()
            / n;
        if m.abs() >= obs - 1e-12 {
            hits += 1;
        }
    }
    (mean, t, (hits + 1) as f64 / (reps + 1) as f64)
}

/// Shares of heads under the CMR thresholds: (share < 0.5, share < 0.1, per-layer share < 0.5).
pub fn cmr_shares(heads: &[HeadRow], n_layers: usize) -> (f64, f64, Vec<f64>) {
    let valid: Vec<&HeadRow> = heads.iter().filter(|h| !h.fit.distance.is_nan()).collect();
    let n = valid.len().max(1) as f64;
    let like = valid.iter().filter(|h| h.fit.cmr_like).count() as f64 / n;
    let strict = valid.iter().filter(|h| h.fit.strict).count() as f64 / n;
    let per_layer = (0..n_layers)
        .map(|l| {
            let layer: Vec<&&HeadRow> = valid.iter().filter(|h| h.layer == l).collect();
            layer.iter().filter(|h| h.fit.cmr_like).count() as f64 / layer.len().max(1) as f64
        })
        .collect();
    (like, strict, per_layer)
}
