//! Generation: greedy or sampled (temperature, top-k, seeded), with interventions applied at
//! every step and optional top-K log-probabilities per step.

use candle_core::{DType, D};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::transformer::{self, Batch, LogitsAt, RunOptions};
use super::Model;
use crate::hooks::Hooks;
use crate::Result;

/// How the next token is chosen.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sampling {
    /// 0 = greedy (argmax); otherwise softmax(logits / temperature) is sampled.
    pub temperature: f64,
    /// Sample among the `top_k` most likely tokens only (0 = all).
    pub top_k: usize,
    /// Seed of the sampler.
    pub seed: u64,
    /// Record the `logprobs` most likely tokens with their log-probabilities at every step.
    pub logprobs: usize,
}

/// New tokens per prompt, and the per-step top log-probabilities when asked for.
#[derive(Clone, Debug, Default)]
pub struct Generated {
    pub tokens: Vec<Vec<u32>>,
    /// `[prompt][step] → [(token, log-probability)]`, most likely first (empty unless asked).
    pub logprobs: Vec<Vec<Vec<(u32, f32)>>>,
}

/// Log-softmax of one row.
fn log_softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let lse = row
        .iter()
        .map(|x| ((x - max) as f64).exp())
        .sum::<f64>()
        .ln() as f32
        + max;
    row.iter().map(|x| x - lse).collect()
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
fn top_indices(row: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    let k = k.min(row.len());
    if k == 0 {
        return vec![];
    }
    idx.select_nth_unstable_by(k - 1, |&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx
}

impl Sampling {
    /// The next token from one row of logits.
    fn pick(&self, row: &[f32], rng: &mut StdRng) -> u32 {
        if self.temperature <= 0.0 {
            // Greedy: the first maximum, as argmax.
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = i;
                }
            }
            return best as u32;
        }
        let cand: Vec<usize> = if self.top_k > 0 {
            top_indices(row, self.top_k)
        } else {
            (0..row.len()).collect()
        };
        let t = self.temperature as f32;
        let max = cand
            .iter()
            .map(|&i| row[i])
            .fold(f32::NEG_INFINITY, f32::max);
        let w: Vec<f64> = cand
            .iter()
            .map(|&i| (((row[i] - max) / t) as f64).exp())
            .collect();
        let total: f64 = w.iter().sum();
        let mut u = rng.random::<f64>() * total;
        for (j, &wi) in w.iter().enumerate() {
            u -= wi;
            if u <= 0.0 {
                return cand[j] as u32;
            }
        }
        cand[cand.len() - 1] as u32
    }
}

impl Model {
    /// Greedy generation of up to `max_new` tokens per prompt (stops a row at EOS), with any
    /// interventions in `hooks` applied at every step. Returns only the new tokens.
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        max_new: usize,
        hooks: &mut Hooks,
    ) -> Result<Vec<Vec<u32>>> {
        Ok(self
            .generate_with(prompts, max_new, hooks, &Sampling::default())?
            .tokens)
    }

    /// As [`Model::generate`], choosing tokens as `sampling` says.
    pub fn generate_with(
        &self,
        prompts: &[Vec<u32>],
        max_new: usize,
        hooks: &mut Hooks,
        sampling: &Sampling,
    ) -> Result<Generated> {
        let eos: Vec<u32> = match &self.tokenizer {
            Some(t) => t.eos_ids.clone(),
            None => self.cfg().eos_token_ids.clone(),
        };
        let mut out = Generated {
            tokens: vec![vec![]; prompts.len()],
            logprobs: vec![vec![]; prompts.len()],
        };
        if prompts.is_empty() || max_new == 0 {
            return Ok(out);
        }
        let mut rng = StdRng::seed_from_u64(sampling.seed);
        let mut done = vec![false; prompts.len()];
        let limit = self.cfg().max_position_embeddings;
        let opts = RunOptions {
            logits: LogitsAt::Last,
            stop_at_layer: None,
        };
        let mut cache = transformer::KvCache::new();
        let mut batch = Batch::new(prompts, self.pad_id())?;
        for _ in 0..max_new {
            if cache.len + batch.seq_len > limit {
                break;
            }
            let logits = self
                .transformer
                .forward_cached(&batch, hooks, opts, &mut cache)?
                .squeeze(1)?;
            let next: Vec<u32> = if sampling.temperature <= 0.0 && sampling.logprobs == 0 {
                logits.argmax(D::Minus1)?.to_vec1()?
            } else {
                let rows: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
                let mut next = Vec::with_capacity(rows.len());
                for (i, row) in rows.iter().enumerate() {
                    next.push(sampling.pick(row, &mut rng));
                    if sampling.logprobs > 0 && !done[i] {
                        let lp = log_softmax(row);
                        out.logprobs[i].push(
                            top_indices(&lp, sampling.logprobs)
                                .into_iter()
                                .map(|j| (j as u32, lp[j]))
                                .collect(),
                        );
                    }
                }
                next
            };
            for (i, &tok) in next.iter().enumerate() {
                if !done[i] {
                    out.tokens[i].push(tok);
                    done[i] = eos.contains(&tok);
                }
            }
            if done.iter().all(|&d| d) {
                break;
            }
            let rows: Vec<Vec<u32>> = next.iter().map(|&t| vec![t]).collect();
            batch = Batch::new(&rows, 0)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_sampling_and_top_k() {
        let row = [0.0f32, 3.0, 1.0, 3.0, -2.0];
        let mut rng = StdRng::seed_from_u64(0);
        let greedy = Sampling::default();
        assert_eq!(greedy.pick(&row, &mut rng), 1, "first maximum");
        assert_eq!(top_indices(&row, 3), vec![1, 3, 2]);
        // top-k 2 at a high temperature only ever picks the two best.
        let s = Sampling {
            temperature: 100.0,
            top_k: 2,
            ..Default::default()
        };
        let mut seen = [0usize; 5];
        for _ in 0..400 {
            seen[s.pick(&row, &mut rng) as usize] += 1;
        }
        assert_eq!(seen[0] + seen[2] + seen[4], 0, "{seen:?}");
        assert!(seen[1] > 100 && seen[3] > 100, "{seen:?}");
        // The same seed gives the same draws.
        let draw = |seed| {
            let mut r = StdRng::seed_from_u64(seed);
            let s = Sampling {
                temperature: 1.0,
                ..Default::default()
            };
            (0..20).map(|_| s.pick(&row, &mut r)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        let lp = log_softmax(&row);
        let total: f64 = lp.iter().map(|x| (*x as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }
}
