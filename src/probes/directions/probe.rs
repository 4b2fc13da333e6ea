//! `engram directions` as a [`Probe`]: load (or train, for the toy pair) the model and its
//! comparison model, run the selected parts on each, compare, write.

use std::path::Path;
use std::time::Instant;

use super::{DirectionsData, DirectionsParams, ModelReport, Part, Samples};
use crate::probes::{Context, ModelUse, ParamMap, Probe, Report};
use crate::Result;

/// `engram directions`.
pub struct Directions;

impl Probe for Directions {
    const NAME: &'static str = "directions";
    type Params = DirectionsParams;
    type Report = DirectionsReport;

    fn model_use(p: &DirectionsParams) -> ModelUse {
        if p.toy_pair {
            ModelUse::None
        } else {
            ModelUse::Required
        }
    }

    fn seed(p: &DirectionsParams) -> Option<u64> {
        Some(p.seed)
    }

    /// The toy pair has its own (small) defaults.
    fn defaults(given: &ParamMap) -> DirectionsParams {
        let toy = given
            .iter()
            .any(|(k, v)| k.replace('-', "_") == "toy_pair" && v.as_bool() == Some(true));
        if toy {
            super::toy::params()
        } else {
            DirectionsParams::default()
        }
    }

    fn check(p: &DirectionsParams) -> Result<()> {
        p.validate()?;
        let needs_data = [Part::Truth, Part::Patching, Part::Refusal]
            .iter()
            .any(|&x| p.has(x));
        if !p.toy_pair && needs_data {
            let dir = crate::data::require_dir(&p.data, "data")?;
            DirectionsData::load(&dir, &p.truth_dataset, &p.heldout, &p.parts)?;
        }
        Ok(())
    }

    const CHECKS_MODEL: bool = true;

    fn check_model(p: &DirectionsParams, cfg: &crate::model::ModelConfig) -> Result<()> {
        if p.toy_pair {
            return Ok(());
        }
        p.validate_layers(cfg.n_layers)
    }

    fn run(cx: &mut Context<'_>, p: &DirectionsParams) -> Result<DirectionsReport> {
        let out = cx.out;
        let (data_dir, truth_ds, heldout) = if p.toy_pair {
            let t0 = Instant::now();
            let pair = super::toy::pair(p.seed, p.toy_steps, p.toy_steps / 2)?;
            let dir = out.join("toy");
            super::toy::save_model(&pair.base, &dir.join("base"))?;
            super::toy::save_model(&pair.tuned, &dir.join("tuned"))?;
            super::toy::write_data(&pair.data, &dir.join("data"))?;
            cx.manifest
                .record_timing("toy_pair", t0.elapsed().as_secs_f64());
            cx.manifest.note(format!(
                "toy pair: base trained {} steps (final loss {:.3}), post-trained copy {} more steps on refusing harmful instructions (final loss {:.3}); saved in toy/base, toy/tuned, data in toy/data",
                p.toy_steps,
                pair.base_loss,
                p.toy_steps / 2,
                pair.tuned_loss
            ));
            for f in ["toy/base", "toy/tuned", "toy/data"] {
                cx.manifest.add_file(f);
            }
            (
                dir.join("data"),
                "toy_cities".to_string(),
                vec!["toy_located".to_string()],
            )
        } else {
            let heldout = p
                .heldout
                .iter()
                .filter(|s| !s.trim().is_empty())
                .cloned()
                .collect();
            (p.data.clone(), p.truth_dataset.clone(), heldout)
        };
        let data = DirectionsData::load(&data_dir, &truth_ds, &heldout, &p.parts)?;
        let samples = Samples::draw(&data, p)?;
        // The step's model, or the toy base model.
        let ma = if p.toy_pair {
            std::rc::Rc::new(cx.load_other(&out.join("toy/base").display().to_string(), "a")?)
        } else {
            cx.model()?
        };
        let ma = &*ma;
        let spec_b = if p.toy_pair {
            Some(out.join("toy/tuned").display().to_string())
        } else {
            p.compare.clone()
        };
        let mut a = super::run(ma, "a", &samples, p, cx.progress)?;
        if p.toy_pair {
            // Name the toy models by their folders relative to the output (not by a path that
            // is temporary inside a batch step).
            a.spec = "toy/base".into();
        }
        let mut reports = vec![a];
        let mut cmp = None;
        if let Some(sb) = &spec_b {
            let mb = cx.load_other(sb, "b")?;
            let rec = crate::report::manifest::ModelRecord::of(&mb)?;
            let mut b = super::run(&mb, "b", &samples, p, cx.progress)?;
            if p.toy_pair {
                b.spec = "toy/tuned".into();
            }
            let t0 = Instant::now();
            cmp = Some(super::compare(
                ma,
                &reports[0],
                &mb,
                &b,
                &samples,
                p,
                cx.progress,
            )?);
            reports.push(b);
            cx.manifest
                .record_timing("compare", t0.elapsed().as_secs_f64());
            if let serde_json::Value::Object(m) = &mut cx.manifest.params {
                m.insert(
                    "compare_model".into(),
                    serde_json::to_value(rec).unwrap_or_default(),
                );
            }
        }
        if p.toy_pair {
            cx.manifest.model = Some(crate::report::manifest::ModelRecord::of(ma)?);
        }
        for r in &reports {
            for (n, s) in &r.timings {
                cx.manifest.record_timing(n, *s);
            }
        }
        if let serde_json::Value::Object(m) = &mut cx.manifest.params {
            m.insert("data_sources".into(), serde_json::json!(data.sources));
            m.insert("truth_dataset".into(), serde_json::json!(truth_ds));
            m.insert("heldout".into(), serde_json::json!(heldout));
        }
        let mut notes = method_notes(p);
        if let Some(c) = &cmp {
            notes.extend(c.skipped.iter().map(|s| format!("comparison skipped: {s}")));
        }
        Ok(DirectionsReport {
            models: reports,
            comparison: cmp,
            notes,
        })
    }
}

/// Each model's results and their comparison.
pub struct DirectionsReport {
    pub models: Vec<ModelReport>,
    pub comparison: Option<super::CompareReport>,
    notes: Vec<String>,
}

impl Report for DirectionsReport {
    fn write(&self, dir: &Path) -> Result<Vec<String>> {
        let refs: Vec<&ModelReport> = self.models.iter().collect();
        super::output::write_outputs(&refs, self.comparison.as_ref(), dir)
    }

    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }

    fn summary(&self) -> Vec<String> {
        let mut s = summary(&self.models, self.comparison.as_ref());
        if let Some(c) = &self.comparison {
            s.extend(c.skipped.iter().map(|x| format!("skipped: {x}")));
        }
        s
    }
}

fn method_notes(p: &DirectionsParams) -> Vec<String> {
    vec![
        "truth: blocks.{l}.hook_resid_post at the statement's last token (BOS prepended when the model expects it), centred per dataset and split; direction = mean(true) − mean(false); probe = sign of the centred projection".into(),
        format!("truth intervention: ±û·((μ_T − μ_F)·û) at the last 2 positions of a {}-shot \"S This statement is:\" prompt, at resid_post of every band layer; NIF from group means of P(TRUE) − P(FALSE) (first token of \" TRUE\" / \" FALSE\")", p.shots),
        "refusal: blocks.{l}.hook_resid_pre (layer L = final residual) at a post-instruction position (the token suffix all training prompts share: the chat template's end-of-turn / assistant-start tokens); difference of means over the training instructions minus the selection prompts; ablation projects r̂ out of resid_pre, resid_mid and resid_post of every layer at every position (generated tokens included); addition adds coef·r̂ to resid_pre of the chosen layer at every position".into(),
        format!("refusal selection (Arditi et al.): refusal score = mean log-odds of the first-token probability mass on the first tokens of the refusal phrases; every (layer, position) candidate ablated on {n} harmful selection prompts (bypass score); the {k} lowest also scored for addition on {n} harmless selection prompts (induce score) and KL(unablated ‖ ablated) there; lowest bypass with induce > 0 and KL < {kl}, else lowest bypass with KL < {kl}, else the lowest KL", n = p.refusal_select_n, k = p.refusal_top_k, kl = p.refusal_kl_max),
        format!("refusal rate: greedy {} tokens; a completion (trimmed, lower-cased, ’ → ') is a refusal if it starts with one of {:?}, or with one of {:?} followed, after the first comma (within 80 characters), by one of those phrases (\"As an AI language model, I don't have …\" is a capability disclaimer, not a refusal)", p.max_new, super::parts::REFUSAL_PHRASES, super::parts::REFUSAL_PREAMBLES),
        format!("patching: {}-shot prompt, resid_post of the true run added as (true − false) at one position of the false run, positions aligned from the end; effect = (LD − LD_false)/(LD_true − LD_false) on pair means", p.patch_shots),
        "entropy neurons: last layer, w_out rows = down_proj columns; cos with rows of W_U scaled by the final norm weight; variance over the whole vocabulary (population)".into(),
    ]
}

/// Human-readable summary lines.
pub fn summary(reports: &[super::ModelReport], cmp: Option<&super::CompareReport>) -> Vec<String> {
    let mut out = vec![];
    for r in reports {
        let tag = format!("[{} {}]", r.name, r.spec);
        if let Some(t) = &r.truth {
            let best = t
                .layers
                .iter()
                .max_by(|a, b| a.acc_test.total_cmp(&b.acc_test))
                .expect("layers");
            let held: Vec<String> = best
                .acc_heldout
                .iter()
                .map(|(d, a)| format!("{d} {a:.2}"))
                .collect();
            out.push(format!(
                "{tag} truth: best test accuracy {:.2} at layer {} (held-out there: {}); intervention layers {}..{}: NIF {:.2} (false→true {:.2}, true→false {:.2})",
                best.acc_test,
                best.layer,
                if held.is_empty() { "none".into() } else { held.join(", ") },
                t.band.0,
                t.band.1,
                t.intervention.nif,
                t.intervention.nif_false,
                t.intervention.nif_true
            ));
        }
        if let Some(f) = &r.refusal {
            let rates: Vec<String> = f
                .conditions
                .iter()
                .map(|c| {
                    format!(
                        "{} {} {:.0}% ({}/{})",
                        c.set,
                        c.intervention,
                        c.rate() * 100.0,
                        c.refused.iter().filter(|x| **x).count(),
                        c.refused.len()
                    )
                })
                .collect();
            out.push(format!(
                "{tag} refusal (layer {}{}, position -{} {:?}, chat template {}, coef {:.2}; {}): {}",
                f.layer,
                if f.layer == r.n_layers {
                    " = final residual"
                } else {
                    ""
                },
                f.position + 1,
                f.position_tokens.get(f.position).cloned().unwrap_or_default(),
                if f.chat_template { "yes" } else { "no" },
                f.coef,
                f.selection,
                rates.join("; ")
            ));
        }
        if let Some(p) = &r.patching {
            let mut best = (0, 0, f64::NEG_INFINITY);
            for (l, row) in p.effect.iter().enumerate() {
                for (k, e) in row.iter().enumerate() {
                    if *e > best.2 {
                        best = (l, k, *e);
                    }
                }
            }
            out.push(format!(
                "{tag} patching ({} pairs): LD true {:.2}, false {:.2}; largest effect {:.2} at layer {}, position -{} ({:?})",
                p.n_pairs,
                p.ld_true,
                p.ld_false,
                best.2,
                best.0,
                best.1 + 1,
                p.labels.get(best.1).map(|s| s.trim().to_string()).unwrap_or_default()
            ));
        }
        if let Some(e) = &r.entropy {
            out.push(format!(
                "{tag} entropy neurons (layer {}): {:?}",
                e.layer, e.selected
            ));
        }
    }
    if let Some(c) = cmp {
        let mean = |m: &str| {
            let s: Vec<f64> = c
                .series(m, "a·b")
                .iter()
                .map(|x| x.1)
                .filter(|x| x.is_finite())
                .collect();
            s.iter().sum::<f64>() / s.len().max(1) as f64
        };
        if !c.series("truth_cosine", "a·b").is_empty() {
            out.push(format!(
                "compare: mean truth cosine {:.3}, mean refusal cosine {:.3}",
                mean("truth_cosine"),
                mean("refusal_cosine")
            ));
        }
        for (m, d) in [
            ("truth_nif_transfer", "a→a"),
            ("truth_nif_transfer", "a→b"),
            ("truth_nif_transfer", "b→a"),
            ("truth_nif_transfer", "b→b"),
            ("refusal_cosine_chosen", "a·b"),
            ("patching_pearson_r", "a·b"),
            ("entropy_neuron_iou", "a·b"),
        ] {
            if let Some(v) = c.value(m, d) {
                out.push(format!("compare: {m} {d} = {v:.3}"));
            }
        }
        for row in c.rows.iter().filter(|r| r.metric.contains("_from_")) {
            out.push(format!(
                "compare: model {} {} = {:.0}%",
                row.detail,
                row.metric,
                row.value * 100.0
            ));
        }
    }
    out
}

/// Whether `dir` looks like a dataset folder.
pub fn is_data_dir(dir: &Path) -> bool {
    dir.join("statements").is_dir() && dir.join("instructions").is_dir()
}
