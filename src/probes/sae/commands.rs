//! Command-level entry points of `engram sae ...` (the Probes in [`super::probe`] call these):
//! collect, train, eval and run, each recording what it did in a manifest.

use std::path::{Path, PathBuf};

use crate::model::Model;
use crate::progress::Progress;
use crate::report::manifest::Manifest;
use candle_core::Device;

use super::{eval, store, train, Sae, SaeKind};
use crate::Result;
use serde::{Deserialize, Serialize};

/// `engram sae collect`: tokenize `corpus` and collect activations into `out` (resuming),
/// recording the run in `manifest` (written by the caller).
pub fn collect_into(
    model: &Model,
    corpus: &Path,
    params: &store::CollectParams,
    out: &Path,
    progress: &Progress,
    manifest: &mut Manifest,
) -> Result<store::ActivationStore> {
    let docs = crate::data::read_corpus(corpus)?;
    let mut params = params.clone();
    if params.corpus.is_empty() {
        params.corpus = corpus.display().to_string();
    }
    let t0 = std::time::Instant::now();
    let s = store::collect(model, store::Docs::Text(&docs), &params, out, progress)?;
    manifest.record_timing("collect", t0.elapsed().as_secs_f64());
    manifest.add_file("store.json");
    manifest.note(format!(
        "{} activations of d = {} in {} shards; {} documents consumed",
        s.len(),
        s.d(),
        s.n_shards(),
        s.meta.next_doc
    ));
    Ok(s)
}

/// [`collect_into`] with a manifest of its own in `out`.
pub fn cmd_collect(
    model: &Model,
    corpus: &Path,
    params: &store::CollectParams,
    out: &Path,
    progress: &Progress,
) -> Result<store::ActivationStore> {
    let mut manifest = Manifest::from_params("sae collect", params)?
        .with_seed(Some(params.seed))
        .with_model(crate::report::manifest::ModelRecord::of(model)?);
    let s = collect_into(model, corpus, params, out, progress, &mut manifest)?;
    manifest.write(out)?;
    Ok(s)
}

/// `engram sae train`: train one SAE on a store; writes the SAE, `train_report.json` and a loss
/// curve into `out`, recording them in `manifest` (written by the caller).
pub fn train_into(
    store_dir: &Path,
    params: &train::TrainParams,
    out: &Path,
    progress: &Progress,
    manifest: &mut Manifest,
) -> Result<(Sae, train::TrainReport)> {
    let s = store::ActivationStore::open(store_dir)?;
    let (sae, rep) = train::train(&s, params, Some(out), &Device::Cpu, progress)?;
    record_training(&rep, out, manifest)?;
    Ok((sae, rep))
}

/// Several SAEs trained in one pass over the store ([`train::train_many`]), each in its
/// directory with its own manifest.
pub fn cmd_train_many(
    store_dir: &Path,
    params: &[train::TrainParams],
    dirs: &[PathBuf],
    progress: &Progress,
) -> Result<Vec<(Sae, train::TrainReport)>> {
    let s = store::ActivationStore::open(store_dir)?;
    let outs: Vec<Option<&Path>> = dirs.iter().map(|d| Some(d.as_path())).collect();
    let done = train::train_many(&s, params, &outs, &Device::Cpu, progress)?;
    for ((p, dir), (_, rep)) in params.iter().zip(dirs).zip(&done) {
        let mut manifest = Manifest::from_params("sae train", p)?.with_seed(Some(p.seed));
        record_training(rep, dir, &mut manifest)?;
        if params.len() > 1 {
            manifest.note(format!(
                "trained with {} other SAEs in one pass over the store",
                params.len() - 1
            ));
        }
        manifest.write(dir)?;
    }
    Ok(done)
}

/// The loss-curve chart of a training run, and its files and numbers in `manifest`.
fn record_training(rep: &train::TrainReport, out: &Path, manifest: &mut Manifest) -> Result<()> {
    manifest.record_timing("train", rep.seconds);
    for f in ["cfg.json", "sae_weights.safetensors", "train_report.json"] {
        manifest.add_file(f);
    }
    use crate::report::chart::{LineChart, Series};
    let pts = |f: &dyn Fn(&train::StepLog) -> f64| -> Vec<(f64, f64)> {
        rep.log.iter().map(|l| (l.step as f64, f(l))).collect()
    };
    let what = match &rep.target {
        Some(t) => format!("{} → {t}", rep.hook),
        None => rep.hook.clone(),
    };
    for p in (LineChart {
        title: format!("{} SAE training ({what})", rep.kind),
        x_label: "step".into(),
        y_label: "fraction of variance unexplained / L0 ÷ 100".into(),
        series: vec![
            Series::new("FVU", pts(&|l| l.fvu)),
            Series::new("L0 / 100", pts(&|l| l.l0 / 100.0)).dashed(),
        ],
    })
    .save(out, "training")?
    {
        if let Some(f) = p.file_name() {
            manifest.add_file(f.to_string_lossy().into_owned());
        }
    }
    manifest.note(format!(
        "{} steps of {} in {:.1}s ({:.2} steps/s), dead {}",
        rep.steps, rep.batch_size, rep.seconds, rep.steps_per_sec, rep.dead
    ));
    if let Some(t) = rep.threshold {
        manifest.note(format!(
            "inference threshold θ = {t:.4} (normalised units: the mean smallest kept \
             activation over the batches after training)"
        ));
    }
    Ok(())
}

/// [`train_into`] with a manifest of its own in `out`.
pub fn cmd_train(
    store_dir: &Path,
    params: &train::TrainParams,
    out: &Path,
    progress: &Progress,
) -> Result<(Sae, train::TrainReport)> {
    let mut manifest = Manifest::from_params("sae train", params)?.with_seed(Some(params.seed));
    let r = train_into(store_dir, params, out, progress, &mut manifest)?;
    manifest.write(out)?;
    Ok(r)
}

/// Token documents for CE / KL: the corpus documents after those the store consumed (wrapping
/// around to the start when the corpus is exhausted).
pub fn held_out_docs(model: &Model, corpus: &Path, skip: usize, n: usize) -> Result<Vec<Vec<u32>>> {
    let docs = crate::data::read_corpus(corpus)?;
    if docs.is_empty() {
        crate::bail!("{}: empty corpus", corpus.display());
    }
    let tok = model.tokenizer()?;
    (0..n.min(docs.len()))
        .map(|i| tok.encode(&docs[(skip + i) % docs.len()], false))
        .collect()
}

/// `engram sae eval`: metrics of the SAEs in `sae_dirs` on the store; CE / KL with a model;
/// tables and charts in `out`, recorded in `manifest` (written by the caller).
pub fn eval_into(
    sae_dirs: &[PathBuf],
    store_dir: &Path,
    model: Option<(&Model, &Path)>,
    params: &eval::EvalParams,
    out: &Path,
    progress: &Progress,
    manifest: &mut Manifest,
) -> Result<eval::EvalReport> {
    let s = store::ActivationStore::open(store_dir)?;
    let mut saes = vec![];
    for dir in sae_dirs {
        // A directory, or a pretrained `RELEASE/SAE_ID` (docs/sae.md, "Pretrained SAEs").
        let l = super::pretrained::load_sae_arg(dir, &Device::Cpu)?;
        // The store's columns of the SAE's hook (its first hook when it holds no such one).
        let hook = l
            .sae
            .hook_name()
            .filter(|h| s.parts().iter().any(|p| &p.hook == h));
        let part = s.part(hook.as_deref())?;
        super::pretrained::check_fits(&l, &part.hook, part.d)?;
        manifest.notes.extend(l.provenance());
        saes.push((l.label, l.sae));
    }
    let t0 = std::time::Instant::now();
    let docs = match model {
        Some((m, corpus)) => {
            eval::check_model_matches_store(m, &s)?;
            manifest.model = Some(crate::report::manifest::ModelRecord::of(m)?);
            Some(held_out_docs(m, corpus, s.meta.next_doc, params.ce_docs)?)
        }
        None => None,
    };
    let report = eval::evaluate(
        &saes,
        &s,
        model.zip(docs.as_deref()).map(|((m, _), d)| (m, d)),
        params,
        progress,
    )?;
    manifest.record_timing("eval", t0.elapsed().as_secs_f64());
    let tok = model.and_then(|(m, _)| m.tokenizer.as_ref());
    let text = |id: u32| -> String {
        match tok {
            Some(t) => t
                .decode(&[id], false)
                .unwrap_or_else(|_| format!("#{id}"))
                .replace('\n', "\\n"),
            None => format!("#{id}"),
        }
    };
    for f in eval::write_outputs(&report, &text, out)? {
        manifest.add_file(f);
    }
    for n in &report.notes {
        manifest.note(n.clone());
    }
    Ok(report)
}

/// [`eval_into`] with a manifest of its own in `out`.
pub fn cmd_eval(
    sae_dirs: &[PathBuf],
    store_dir: &Path,
    model: Option<(&Model, &Path)>,
    params: &eval::EvalParams,
    out: &Path,
    progress: &Progress,
) -> Result<eval::EvalReport> {
    let mut manifest = Manifest::from_params("sae eval", params)?;
    let r = eval_into(
        sae_dirs,
        store_dir,
        model,
        params,
        out,
        progress,
        &mut manifest,
    )?;
    manifest.write(out)?;
    Ok(r)
}

/// A one-line-per-dictionary summary of an evaluation.
pub fn format_report(r: &eval::EvalReport) -> String {
    let mut s = format!(
        "{:<14} {:>6} {:>8} {:>10} {:>8} {:>6} {:>8} {:>8} {:>7} {:>7}\n",
        "dictionary", "n", "R²", "MSE", "L0", "dead", "CE rec", "KL", "μ", "q*"
    );
    let f = |x: Option<f64>, p: usize| x.map_or("-".to_string(), |v| format!("{v:.p$}"));
    for e in &r.saes {
        s += &format!(
            "{:<14} {:>6} {:>8.4} {:>10.4} {:>8.1} {:>6} {:>8} {:>8} {:>7} {:>7}\n",
            e.label,
            e.dict_size,
            e.r2,
            e.mse,
            e.l0,
            e.dead,
            f(e.ce.as_ref().map(|c| c.ce_recovered), 4),
            f(e.ce.as_ref().map(|c| c.kl), 4),
            f(e.atoms.as_ref().map(|a| a.coherence), 3),
            f(e.atoms.as_ref().map(|a| a.q_star), 4),
        );
    }
    if let Some(n) = &r.neurons {
        s += &format!(
            "{:<14} {:>6} {:>8} {:>10} {:>8.1} {:>6} {:>8} {:>8} {:>7.3} {:>7.4}\n",
            "neurons", r.d, "1", "0", n.mean_support, 0, "-", "-", n.coherence, n.q_star
        );
    }
    s
}

/// Settings of `engram sae run`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct RunParams {
    pub collect: store::CollectParams,
    /// Shared by the three trainers (kind is overridden).
    pub train: train::TrainParams,
    pub eval: eval::EvalParams,
    pub kinds: Vec<SaeKind>,
    /// Sparsity multipliers: each kind is trained once per value (λ₀, λ₁ × m; k ÷ m).
    pub sweep: Vec<f64>,
}

impl Default for RunParams {
    fn default() -> Self {
        RunParams {
            collect: store::CollectParams::default(),
            train: train::TrainParams::default(),
            eval: eval::EvalParams::default(),
            kinds: SaeKind::DEFAULT_RUN.to_vec(),
            sweep: vec![1.0],
        }
    }
}

/// `engram sae run`: collect → train each kind → evaluate, under `out/{store, <kind>, eval}`.
pub fn cmd_run(
    model: &Model,
    corpus: &Path,
    params: &RunParams,
    out: &Path,
    progress: &Progress,
) -> Result<(eval::EvalReport, Vec<train::TrainReport>)> {
    let store_dir = out.join("store");
    cmd_collect(model, corpus, &params.collect, &store_dir, progress)?;
    let mut dirs = vec![];
    let mut all = vec![];
    for &kind in &params.kinds {
        for &m in &params.sweep {
            let base = &params.train;
            let p = train::TrainParams {
                kind,
                l0_coeff: base.l0_coeff * m,
                l1_coeff: base.l1_coeff * m,
                k: ((base.k as f64 / m).round() as usize).max(1),
                ..base.clone()
            };
            let dir = if params.sweep.len() == 1 {
                out.join(kind.name())
            } else {
                out.join(format!("{}_x{m}", kind.name()))
            };
            all.push(p);
            dirs.push(dir);
        }
    }
    // Every SAE from one pass over the store.
    let reps: Vec<train::TrainReport> = cmd_train_many(&store_dir, &all, &dirs, progress)?
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    let report = cmd_eval(
        &dirs,
        &store_dir,
        Some((model, corpus)),
        &params.eval,
        &out.join("eval"),
        progress,
    )?;
    Ok((report, reps))
}
