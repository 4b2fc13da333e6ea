//! Training runs over an activation store: one SAE ([`train`]) or several from one pass
//! ([`train_many`]), with the input scales, the BatchTopK thresholds measured after training,
//! checkpoints, the divergence check and the saved files.

use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};

use super::{input_scale, StepLog, TrainParams, TrainReport, Trainer};
use crate::probes::sae::store::{ActivationStore, Part};
use crate::probes::sae::Sae;
use crate::progress::Progress;
use crate::Result;

/// Train one SAE on the store's training shards; saves it (and checkpoints) under `out` when
/// given, with `hook_name`, `model_name` and `hook_layer` from the store.
pub fn train(
    store: &ActivationStore,
    params: &TrainParams,
    out: Option<&Path>,
    device: &Device,
    progress: &Progress,
) -> Result<(Sae, TrainReport)> {
    let mut all = train_many(
        store,
        std::slice::from_ref(params),
        &[out],
        device,
        progress,
    )?;
    Ok(all.remove(0))
}

/// One SAE of [`train_many`]: its trainer, the store columns it reads and writes, its scales.
struct Job<'a> {
    trainer: Trainer,
    input: Part,
    target: Option<Part>,
    scale: f64,
    target_scale: f64,
    out: Option<&'a Path>,
}

/// Train several SAEs (kinds, widths, hooks, transcoders) in one pass over the store: every
/// batch is read once and given to each. They share the batch size, the number of steps, the
/// held-out shards and the reader's seed (the first's).
pub fn train_many(
    store: &ActivationStore,
    params: &[TrainParams],
    outs: &[Option<&Path>],
    device: &Device,
    progress: &Progress,
) -> Result<Vec<(Sae, TrainReport)>> {
    let Some(first) = params.first() else {
        return Ok(vec![]);
    };
    if let Some(p) = params.iter().find(|p| {
        (p.batch_size, p.steps, p.eval_shards) != (first.batch_size, first.steps, first.eval_shards)
    }) {
        crate::bail!(
            "SAEs trained in one pass share --batch-size, --steps and --eval-shards \
             ({} / {} / {} vs {} / {} / {})",
            first.batch_size,
            first.steps,
            first.eval_shards,
            p.batch_size,
            p.steps,
            p.eval_shards
        );
    }
    let (train_shards, _) = store.split(first.eval_shards);
    let (sample, _) = store.sample(&train_shards, 16384)?;
    let width = store.d();
    let scale_of = |part: &Part, normalize: bool| -> (f64, Vec<f32>) {
        let cols = part.columns(&sample, width);
        let (c, m) = input_scale(&cols, part.d);
        if normalize {
            (c, m)
        } else {
            (1.0, m.iter().map(|v| (*v as f64 / c) as f32).collect())
        }
    };
    let mut jobs = Vec::with_capacity(params.len());
    for (p, out) in params
        .iter()
        .zip(outs.iter().copied().chain(std::iter::repeat(None)))
    {
        let input = store.part(p.hook.as_deref())?;
        let target = p
            .target
            .as_deref()
            .map(|h| store.part(Some(h)))
            .transpose()?;
        if p.skip && target.is_none() {
            crate::bail!("a skip transcoder needs a target hook (--target)");
        }
        let (scale, in_mean) = scale_of(&input, p.normalize);
        let (target_scale, mean) = match &target {
            Some(t) => scale_of(t, p.normalize),
            None => (scale, in_mean),
        };
        let d_out = target.as_ref().map_or(input.d, |t| t.d);
        let trainer = Trainer::new(p.clone(), input.d, d_out, &mean, device)?;
        jobs.push(Job {
            trainer,
            input,
            target,
            scale,
            target_scale,
            out,
        });
    }
    let mut reader = store.reader(train_shards, first.batch_size, first.seed ^ 0x5AE);
    let what = if jobs.len() == 1 {
        format!("training {} SAE", first.kind)
    } else {
        format!("training {} SAEs", jobs.len())
    };
    let bar = progress.bar(first.steps as u64, &what);
    let mut logs: Vec<Vec<StepLog>> = vec![vec![]; jobs.len()];
    let mut compute = vec![0.0; jobs.len()];
    let t0 = Instant::now();
    for s in 0..first.steps {
        let rows = reader.next_tensor(device)?;
        // SAEs on the same columns with the same scale (kinds, sweeps) share one slice.
        let mut sliced = Sliced::new(&rows, width);
        for (j, job) in jobs.iter_mut().enumerate() {
            let t1 = Instant::now();
            let x = sliced.get(&job.input, job.scale)?;
            let y = job
                .target
                .as_ref()
                .map(|t| sliced.get(t, job.target_scale))
                .transpose()?;
            let st = job.trainer.train_step(&x, y.as_ref())?;
            compute[j] += t1.elapsed().as_secs_f64();
            if s % first.log_every.max(1) == 0 || s + 1 == first.steps {
                logs[j].push(st);
            }
            let p = &job.trainer.params;
            if let Some(out) = job.out {
                if p.checkpoint_every > 0 && (s + 1) % p.checkpoint_every == 0 && s + 1 < p.steps {
                    let sae = job.export(store, None)?;
                    sae.save(&out.join("checkpoints").join(format!("step_{:06}", s + 1)))?;
                }
            }
        }
        bar.inc(1);
    }
    bar.finish();
    let seconds = t0.elapsed().as_secs_f64();
    // BatchTopK kinds: the inference threshold, from batches after training.
    let mut thresholds: Vec<Option<f64>> = vec![None; jobs.len()];
    if jobs.iter().any(|j| j.trainer.params.kind.batch()) {
        let mut sums = vec![(0.0, 0usize); jobs.len()];
        for _ in 0..first.threshold_batches.max(1) {
            let rows = reader.next_tensor(device)?;
            let mut sliced = Sliced::new(&rows, width);
            for (j, job) in jobs.iter().enumerate() {
                if job.trainer.params.kind.batch() {
                    let x = sliced.get(&job.input, job.scale)?;
                    if let Some(v) = job.trainer.min_kept(&x)? {
                        sums[j].0 += v as f64;
                        sums[j].1 += 1;
                    }
                }
            }
        }
        for (t, (sum, n)) in thresholds.iter_mut().zip(sums) {
            if n > 0 {
                *t = Some(sum / n as f64);
            }
        }
    }
    let mut done = Vec::with_capacity(jobs.len());
    for ((job, log), (compute, threshold)) in jobs
        .into_iter()
        .zip(logs)
        .zip(compute.into_iter().zip(thresholds))
    {
        let p = &job.trainer.params;
        let sae = job.export(store, threshold.map(|t| t as f32))?;
        check_finite(&sae, p)?;
        if let Some(out) = job.out {
            sae.save(out)?;
        }
        let report = TrainReport {
            kind: p.kind,
            d: job.input.d,
            d_out: job.trainer.d_out,
            hook: job.input.hook.clone(),
            target: job.target.as_ref().map(|t| t.hook.clone()),
            threshold,
            dict_size: job.trainer.n,
            steps: p.steps,
            batch_size: p.batch_size,
            seconds,
            steps_per_sec: p.steps as f64 / compute.max(1e-9),
            scale: job.scale,
            target_scale: job.target_scale,
            dead: job.trainer.dead(),
            log,
        };
        if let Some(out) = job.out {
            let text = serde_json::to_string_pretty(&report)
                .map_err(|e| crate::Error::msg(format!("train_report.json: {e}")))?;
            crate::report::write_atomic(&out.join("train_report.json"), text.as_bytes())?;
        }
        done.push((sae, report));
    }
    Ok(done)
}

/// The scaled column slices of one batch, each made once.
struct Sliced<'a> {
    rows: &'a Tensor,
    width: usize,
    done: Vec<((usize, usize, u64), Tensor)>,
}

impl<'a> Sliced<'a> {
    fn new(rows: &'a Tensor, width: usize) -> Self {
        Sliced {
            rows,
            width,
            done: vec![],
        }
    }

    fn get(&mut self, part: &Part, scale: f64) -> Result<Tensor> {
        let key = (part.offset, part.d, scale.to_bits());
        if let Some((_, t)) = self.done.iter().find(|(k, _)| *k == key) {
            return Ok(t.clone());
        }
        let t = part.slice(self.rows, self.width, scale)?;
        self.done.push((key, t.clone()));
        Ok(t)
    }
}

impl Job<'_> {
    fn export(&self, store: &ActivationStore, threshold: Option<f32>) -> Result<Sae> {
        let mut sae = self
            .trainer
            .export(self.scale, self.target_scale, threshold)?;
        with_store_meta(&mut sae, store, &self.input.hook);
        if let Some(t) = &self.target {
            sae.meta
                .insert("hook_name_out".into(), t.hook.clone().into());
        }
        Ok(sae)
    }
}

/// A diverged run (NaN activations in the store, an lr that blows up) is an error, not a saved
/// NaN SAE.
fn check_finite(sae: &Sae, p: &TrainParams) -> Result<()> {
    for (name, t) in [
        ("W_enc", &sae.w_enc),
        ("W_dec", &sae.w_dec),
        ("b_enc", &sae.b_enc),
    ] {
        let bad = t
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?
            .iter()
            .filter(|v| !v.is_finite())
            .count();
        if bad > 0 {
            crate::bail!(
                "{} SAE training diverged: {bad} non-finite values in {name} after {} steps \
                 (NaN or inf in the store, or --lr too large); nothing saved",
                p.kind,
                p.steps
            );
        }
    }
    Ok(())
}

fn with_store_meta(sae: &mut Sae, store: &ActivationStore, hook: &str) {
    let m = &store.meta;
    sae.meta.insert("hook_name".into(), hook.into());
    sae.meta.insert("model_name".into(), m.model.clone().into());
    if let Ok(p) = hook.parse::<crate::hooks::HookPoint>() {
        if let Some(l) = p.layer() {
            sae.meta.insert("hook_layer".into(), l.into());
        }
    }
    sae.meta.insert("context_size".into(), m.context.into());
    sae.meta.insert("prepend_bos".into(), true.into());
}
