//! `engram toy`: train the small attention-only model of [`crate::toy`] on repeated random
//! sequences (optionally with a clamped previous-token head), export it as a Hugging Face folder
//! and run the head probe on it through engram's own forward pass.
//!
//! Outputs: `model/` and `untrained/` (HF folders), `training.parquet`, `training_loss.png/.svg`,
//! `heads/` (the head probe's outputs on the trained model, clamp applied), `manifest.json`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::heads::{self, HeadRow, HeadsReport};
use super::{Context, ModelUse, Probe, Report};
use crate::hooks::Intervention;
use crate::model::{LoadOptions, Model};
use crate::report::chart::{LineChart, Series};
use crate::report::table::{write_parquet, Table};
use crate::toy::{StepLog, ToyConfig, ToyModel};
use crate::Result;

/// Parameters of `engram toy`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct ToyParams {
    /// Training steps.
    pub steps: usize,
    /// Seed of the weights (and seed + 1 of the training data).
    pub seed: u64,
    /// Clamp this head to a perfect previous-token pattern, as `LAYER:HEAD`.
    pub clamp: Option<String>,
    /// Learning rate (AdamW).
    pub lr: f64,
    /// Sequences per step.
    pub batch: usize,
    /// Longest repeated sequence R of the training rows; also the probe's sequence length.
    pub seq_len: usize,
    /// Shortest R of the training rows.
    pub min_seq_len: usize,
    /// Attention heads per layer.
    pub heads: usize,
    /// Layers.
    pub layers: usize,
    /// Vocabulary size (token 0 is BOS).
    pub vocab: usize,
    /// CMR lag-CRP table for the head probe (.npy); default: engram's own simulation, cached.
    pub cmr_table: Option<PathBuf>,
}

impl Default for ToyParams {
    fn default() -> Self {
        ToyParams {
            steps: 1000,
            seed: 0,
            clamp: None,
            lr: 1e-2,
            batch: 16,
            seq_len: 12,
            min_seq_len: 6,
            heads: 4,
            layers: 2,
            vocab: 64,
            cmr_table: None,
        }
    }
}

/// Parse `LAYER:HEAD`.
pub fn parse_head(s: &str) -> Result<(usize, usize)> {
    let bad = || crate::Error::msg(format!("--clamp `{s}`: expected LAYER:HEAD, e.g. 0:0"));
    let (l, h) = s.split_once(':').ok_or_else(bad)?;
    Ok((
        l.trim().parse().map_err(|_| bad())?,
        h.trim().parse().map_err(|_| bad())?,
    ))
}

impl ToyParams {
    /// The toy model configuration these parameters describe.
    pub fn config(&self) -> Result<ToyConfig> {
        let d = ToyConfig::default();
        let cfg = ToyConfig {
            vocab: self.vocab,
            n_layers: self.layers,
            n_heads: self.heads,
            d_model: d.d_head * self.heads,
            seed: self.seed,
            lr: self.lr,
            steps: self.steps,
            batch: self.batch,
            seq_len: self.seq_len,
            min_seq_len: self.min_seq_len,
            max_len: d.max_len.max(2 * self.seq_len + 1),
            clamp_prev_token: self.clamp.as_deref().map(parse_head).transpose()?,
            ..d
        };
        if self.batch == 0 || self.steps == 0 {
            crate::bail!("toy: --steps and --batch must be at least 1");
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// `engram toy`.
pub struct Toy;

impl Probe for Toy {
    const NAME: &'static str = "toy";
    type Params = ToyParams;
    type Report = ToyReport;

    fn model_use(_: &ToyParams) -> ModelUse {
        ModelUse::None
    }

    fn seed(p: &ToyParams) -> Option<u64> {
        Some(p.seed)
    }

    fn check(p: &ToyParams) -> Result<()> {
        p.config()?;
        if let Some(t) = &p.cmr_table {
            crate::data::require_file(t, "cmr-table")?;
        }
        Ok(())
    }

    fn run(cx: &mut Context<'_>, p: &ToyParams) -> Result<ToyReport> {
        let cfg = p.config()?;
        let out = cx.out;
        let manifest = &mut *cx.manifest;
        if let serde_json::Value::Object(m) = &mut manifest.params {
            m.insert(
                "config".into(),
                serde_json::to_value(&cfg).unwrap_or_default(),
            );
        }
        let untrained = ToyModel::untrained(cfg.clone())?;
        let mut model = ToyModel::untrained(cfg.clone())?;
        let bar = cx.progress.bar(cfg.steps as u64, "toy: training");
        let report = model.train(cfg.steps, 1, &mut |_| bar.inc(1))?;
        bar.finish();
        manifest.record_timing("train", report.seconds);
        let h = &report.history;
        let mut df = Table::new()
            .col("step", h.iter().map(|x| x.step as u32).collect::<Vec<_>>())
            .col("loss", h.iter().map(|x| x.loss).collect::<Vec<_>>())
            .col(
                "loss_first_copy",
                h.iter().map(|x| x.loss_first_copy).collect::<Vec<_>>(),
            )
            .col(
                "loss_second_copy",
                h.iter().map(|x| x.loss_second_copy).collect::<Vec<_>>(),
            )
            .build()?;
        write_parquet(&mut df, &out.join("training.parquet"))?;
        manifest.add_file("training.parquet");
        let series = |name: &str, f: fn(&StepLog) -> f64| {
            Series::new(name, h.iter().map(|x| (x.step as f64, f(x))).collect())
        };
        let chart = LineChart {
            title: format!(
                "Toy model training{}",
                cfg.clamp_prev_token
                    .map_or(String::new(), |(l, h)| format!(" (L{l}H{h} clamped)"))
            ),
            x_label: "step".into(),
            y_label: "next-token loss".into(),
            series: vec![
                series("first copy", |x| x.loss_first_copy),
                series("second copy", |x| x.loss_second_copy),
            ],
        };
        manifest.add_paths(out, chart.save(out, "training_loss")?);
        let t0 = Instant::now();
        model.save_hf_folder(&out.join("model"))?;
        untrained.save_hf_folder(&out.join("untrained"))?;
        for f in ["config.json", "model.safetensors"] {
            manifest.add_file(format!("model/{f}"));
            manifest.add_file(format!("untrained/{f}"));
        }
        manifest.record_timing("export", t0.elapsed().as_secs_f64());
        // The head probe on the exported model through engram's own forward pass.
        let t0 = Instant::now();
        let loaded = Model::load(
            &out.join("model").display().to_string(),
            &LoadOptions::default(),
        )?;
        let params = heads::HeadsParams {
            seq_len: cfg.seq_len,
            batch: 16,
            seed: cfg.seed,
            cmr_table: p.cmr_table.clone(),
            ..Default::default()
        };
        let clamp: Vec<Intervention> = model
            .clamp_intervention(2 * cfg.seq_len + 1)?
            .into_iter()
            .collect();
        let mut r = heads::run_with(&loaded, &params, &clamp, cx.progress)?;
        r.model = "toy".into();
        let table = heads::cmr_table(params.cmr_table.as_deref(), cx.progress)?;
        for f in heads::write_outputs(&r, Some(&table), &out.join("heads"))? {
            manifest.add_file(format!("heads/{f}"));
        }
        manifest.record_timing("heads", t0.elapsed().as_secs_f64());
        let first_below = report.steps_to_second_copy_loss(1.0, 10);
        let mut notes = vec![
            format!(
                "rows [bos=0] + F + R + R with |R| uniform in {}..={}; loss on the second copy's predictable tokens{}",
                cfg.min_seq_len,
                cfg.seq_len,
                if cfg.loss_all_positions { " (all positions)" } else { "" }
            ),
            format!(
                "first step with second-copy loss < 1.0 (10-step mean): {}",
                first_below.map_or("never".into(), |s| s.to_string())
            ),
        ];
        notes.extend(r.notes.iter().map(|n| format!("heads: {n}")));
        let last = h.last().expect("at least one step");
        let mut summary = vec![format!(
            "trained {} steps in {:.1}s: loss first copy {:.3}, second copy {:.3}; second-copy loss < 1 from step {}",
            cfg.steps,
            report.seconds,
            last.loss_first_copy,
            last.loss_second_copy,
            first_below.map_or("never".into(), |s| s.to_string())
        )];
        summary.extend(top_heads(&r));
        Ok(ToyReport { notes, summary })
    }
}

fn top_heads(r: &HeadsReport) -> Vec<String> {
    let mut top: Vec<&HeadRow> = r.heads.iter().collect();
    top.sort_by(|a, b| b.induction_score.total_cmp(&a.induction_score));
    top.iter()
        .take(4)
        .map(|x| {
            format!(
                "  L{}H{}  induction {:.3}  prev {:.3}",
                x.layer, x.head, x.induction_score, x.prev_token_score
            )
        })
        .collect()
}

/// The toy run writes as it goes (models, training table, the head probe's folder).
pub struct ToyReport {
    notes: Vec<String>,
    summary: Vec<String>,
}

impl Report for ToyReport {
    fn write(&self, _dir: &Path) -> Result<Vec<String>> {
        Ok(vec![])
    }
    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }
    fn summary(&self) -> Vec<String> {
        self.summary.clone()
    }
}
