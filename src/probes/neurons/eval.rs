//! Prompts and greedy evaluation (answer checking with early stopping once settled).

use candle_core::D;

use crate::hooks::Hooks;
use crate::model::transformer::KvCache;
use crate::model::{Batch, LogitsAt, Model, RunOptions};
use crate::progress::Bar;
use crate::Result;

use super::*;

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
