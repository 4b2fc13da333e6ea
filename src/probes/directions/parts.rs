//! The four single-model parts, one file each under `parts/`: `truth.rs` (truth probes and
//! the truth intervention), `refusal.rs` (refusal direction, judge and conditions),
//! `patching.rs` (true → false activation patching) and `entropy.rs` (entropy neurons), all
//! re-exported here so `parts::X` is the path for every item. This file keeps the helpers they
//! share: vector arithmetic, residual reads, the true/false answer tokens and their scores.

use candle_core::{DType, IndexOp, Tensor};

use super::Statement;
use crate::hooks::{HookPoint, Hooks, Positions};
use crate::model::{Batch, LogitsAt, Model, RunOptions};
use crate::Result;

mod entropy;
mod patching;
mod refusal;
mod truth;

pub use entropy::*;
pub use patching::*;
pub use refusal::*;
pub use truth::*;

// ---------------------------------------------------------------------------------------------
// shared helpers

pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

pub fn norm(a: &[f32]) -> f64 {
    dot(a, a).sqrt()
}

pub fn unit(a: &[f32]) -> Vec<f32> {
    let n = norm(a);
    if n > 0.0 {
        a.iter().map(|x| (*x as f64 / n) as f32).collect()
    } else {
        a.to_vec()
    }
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let d = norm(a) * norm(b);
    if d > 0.0 {
        dot(a, b) / d
    } else {
        f64::NAN
    }
}

fn mean_rows(rows: &[&Vec<f32>]) -> Vec<f32> {
    let d = rows.first().map_or(0, |r| r.len());
    let mut m = vec![0f64; d];
    for r in rows {
        for (a, b) in m.iter_mut().zip(r.iter()) {
            *a += *b as f64;
        }
    }
    m.iter()
        .map(|x| (*x / rows.len().max(1) as f64) as f32)
        .collect()
}

fn sub(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

/// Residual activations at one position counted from the end (0 = last), per hook point:
/// `[point][prompt][d]` in f32.
pub fn resid_at(
    model: &Model,
    seqs: &[Vec<u32>],
    points: &[HookPoint],
    from_end: usize,
    batch_size: usize,
) -> Result<Vec<Vec<Vec<f32>>>> {
    let mut out = vec![Vec::with_capacity(seqs.len()); points.len()];
    for chunk in seqs.chunks(batch_size.max(1)) {
        let batch = Batch::new(chunk, model.pad_id())?;
        if chunk.iter().any(|s| s.len() <= from_end) {
            crate::bail!("a prompt has fewer than {} tokens", from_end + 1);
        }
        let mut hooks = Hooks::capture_points(points).at_positions(Positions::Last(from_end + 1));
        model.transformer.forward_with(
            &batch,
            &mut hooks,
            RunOptions {
                logits: LogitsAt::None,
                stop_at_layer: None,
            },
        )?;
        for (i, p) in points.iter().enumerate() {
            let t = hooks
                .cache
                .expect(*p)?
                .i((.., 0, ..))?
                .to_dtype(DType::F32)?;
            out[i].extend(t.to_vec2::<f32>()?);
        }
    }
    Ok(out)
}

/// The first token of `" TRUE"` and `" FALSE"`.
pub fn answer_ids(model: &Model) -> Result<(u32, u32, String, String)> {
    let tok = model.tokenizer()?;
    let t = tok.encode(" TRUE", false)?;
    let f = tok.encode(" FALSE", false)?;
    match (t.first(), f.first()) {
        (Some(&a), Some(&b)) if a != b => {
            Ok((a, b, tok.decode(&[a], false)?, tok.decode(&[b], false)?))
        }
        _ => crate::bail!(
            "the tokenizer does not tell \" TRUE\" from \" FALSE\" by their first token"
        ),
    }
}

/// "S1 This statement is: TRUE\n…\nS This statement is:".
pub fn few_shot_prompt(shots: &[Statement], statement: &str) -> String {
    let mut s = String::new();
    for x in shots {
        s.push_str(&format!(
            "{} This statement is: {}\n",
            x.text,
            if x.label { "TRUE" } else { "FALSE" }
        ));
    }
    s.push_str(&format!("{statement} This statement is:"));
    s
}

/// (P(TRUE), P(FALSE), logit(TRUE) − logit(FALSE)) after each prompt, with `hooks` applied.
pub fn answer_scores(
    model: &Model,
    seqs: &[Vec<u32>],
    hooks: &Hooks,
    ids: (u32, u32),
    batch_size: usize,
) -> Result<Vec<(f64, f64, f64)>> {
    let mut out = vec![];
    for l in last_logits(model, seqs, hooks, batch_size)? {
        out.extend(scores_of(&l, ids)?);
    }
    Ok(out)
}

/// f32 logits `[batch, vocab]` at the last position of each sequence, one tensor per chunk of
/// `batch_size` sequences, with `hooks` applied to every chunk.
fn last_logits(
    model: &Model,
    seqs: &[Vec<u32>],
    hooks: &Hooks,
    batch_size: usize,
) -> Result<Vec<Tensor>> {
    seqs.chunks(batch_size.max(1))
        .map(|chunk| {
            let batch = Batch::new(chunk, model.pad_id())?;
            let mut h = hooks.clone();
            let logits = model.transformer.forward_with(
                &batch,
                &mut h,
                RunOptions {
                    logits: LogitsAt::Last,
                    stop_at_layer: None,
                },
            )?;
            last_position(&logits)
        })
        .collect()
}

/// `[batch, t, vocab]` logits → f32 `[batch, vocab]` at the last position.
fn last_position(logits: &Tensor) -> Result<Tensor> {
    Ok(logits
        .i((.., logits.dim(1)? - 1, ..))?
        .to_dtype(DType::F32)?)
}

/// (P(TRUE), P(FALSE), logit diff) from last-position logits `[batch, vocab]`.
fn scores_of(l: &Tensor, (t, f): (u32, u32)) -> Result<Vec<(f64, f64, f64)>> {
    let p = candle_nn::ops::softmax_last_dim(l)?;
    let l: Vec<Vec<f32>> = l.to_vec2()?;
    let p: Vec<Vec<f32>> = p.to_vec2()?;
    Ok(l.iter()
        .zip(&p)
        .map(|(l, p)| {
            (
                p[t as usize] as f64,
                p[f as usize] as f64,
                (l[t as usize] - l[f as usize]) as f64,
            )
        })
        .collect())
}
