//! `engram directions`: arguments and handler.

use std::path::{Path, PathBuf};

use clap::Args;

use super::{DirectionsData, DirectionsParams, Part, Samples};
use crate::cli::{model_record, ModelArgs};
use crate::model::Model;
use crate::progress::Progress;
use crate::report::manifest::Manifest;
use crate::Result;

/// Arguments of `engram directions`.
#[derive(Args, Debug, Clone)]
pub struct DirectionsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A second model of the same width to compare with (e.g. the post-trained version of --model)
    #[arg(long)]
    pub compare: Option<String>,
    /// Output directory
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Run only these parts (comma separated): truth, refusal, patching, entropy
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Train the toy base / post-trained pair, save it under OUT/toy/ and compare the two
    /// (ignores --model, --compare and --data)
    #[arg(long)]
    pub toy_pair: bool,
    /// Dataset folder (statements/*.csv, instructions/harmful.csv, instructions/harmless.csv)
    #[arg(long, default_value = "notebooks-data")]
    pub data: PathBuf,
    /// Main statement dataset (statements/NAME.csv)
    #[arg(long, default_value = "cities")]
    pub truth_dataset: String,
    /// Held-out statement datasets (comma separated)
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "country_region,lre_facts"
    )]
    pub heldout: Vec<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Prompts per forward pass
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Training / test statements (balanced)
    #[arg(long)]
    pub n_train: Option<usize>,
    #[arg(long)]
    pub n_test: Option<usize>,
    /// Statements per held-out dataset
    #[arg(long)]
    pub n_heldout: Option<usize>,
    /// Few-shot examples before "This statement is:"
    #[arg(long)]
    pub shots: Option<usize>,
    /// Statements intervened on
    #[arg(long)]
    pub n_intervene: Option<usize>,
    /// Layers of the truth intervention, START:END (end exclusive)
    #[arg(long)]
    pub band: Option<String>,
    /// Layer of the refusal direction (resid_pre of block L; L = layers is the final residual);
    /// default: chosen by ablation among 0.2..0.8 of the depth (with the position)
    #[arg(long)]
    pub refusal_layer: Option<usize>,
    /// Position of the refusal direction from the end (0 = last token); default: chosen among
    /// the post-instruction positions (the chat template's end-of-turn / assistant-start tokens)
    #[arg(long)]
    pub refusal_position: Option<usize>,
    /// Candidate refusal directions (lowest bypass score) also tested for addition and KL
    #[arg(long)]
    pub refusal_top_k: Option<usize>,
    /// Candidate refusal layers as a relative depth range A:B of 0..=layers [default 0.2:0.8]
    #[arg(long)]
    pub refusal_range: Option<String>,
    /// Harmful / harmless training instructions (each) held back to select the refusal direction
    #[arg(long)]
    pub refusal_select_n: Option<usize>,
    /// Harmful / harmless instructions (each) for the refusal direction
    #[arg(long)]
    pub n_refusal_train: Option<usize>,
    /// Held-out harmful / harmless instructions (each) for the refusal rates
    #[arg(long)]
    pub n_refusal_test: Option<usize>,
    /// Tokens generated per instruction
    #[arg(long)]
    pub max_new: Option<usize>,
    /// Coefficient of the activation addition (default ‖mean harmful − mean harmless‖)
    #[arg(long)]
    pub addition_coef: Option<f64>,
    /// Do not wrap instructions in the chat template
    #[arg(long)]
    pub no_chat: bool,
    /// True/false pairs in the patching map
    #[arg(long)]
    pub patch_pairs: Option<usize>,
    /// Positions from the end in the patching map
    #[arg(long)]
    pub patch_positions: Option<usize>,
    /// Training steps of the toy pair (base, then post-training)
    #[arg(long, default_value_t = 400)]
    pub toy_steps: usize,
}

fn parse_band(s: &str) -> Result<(usize, usize)> {
    let bad = || crate::Error::msg(format!("--band `{s}`: expected START:END, e.g. 4:8"));
    let (a, b) = s.split_once(':').ok_or_else(bad)?;
    let a: usize = a.trim().parse().map_err(|_| bad())?;
    let b: usize = b.trim().parse().map_err(|_| bad())?;
    if a >= b {
        return Err(bad());
    }
    Ok((a, b))
}

fn parse_range(s: &str) -> Result<(f64, f64)> {
    let bad = || {
        crate::Error::msg(format!(
            "--refusal-range `{s}`: expected A:B with 0 ≤ A ≤ B ≤ 1"
        ))
    };
    let (a, b) = s.split_once(':').ok_or_else(bad)?;
    let a: f64 = a.trim().parse().map_err(|_| bad())?;
    let b: f64 = b.trim().parse().map_err(|_| bad())?;
    if !(0.0..=1.0).contains(&a) || !(0.0..=1.0).contains(&b) || a > b {
        return Err(bad());
    }
    Ok((a, b))
}

impl DirectionsArgs {
    /// The parameters: defaults (or the toy's), overridden by the given options.
    pub fn params(&self) -> Result<DirectionsParams> {
        let mut p = if self.toy_pair {
            super::toy::params()
        } else {
            DirectionsParams::default()
        };
        if !self.only.is_empty() {
            p.parts = self
                .only
                .iter()
                .map(|s| s.trim().parse::<Part>())
                .collect::<Result<Vec<_>>>()?;
            p.parts.dedup();
        }
        p.seed = self.seed;
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { p.$f = v; } )* };
        }
        set!(
            batch_size,
            n_train,
            n_test,
            n_heldout,
            shots,
            n_intervene,
            n_refusal_train,
            n_refusal_test,
            max_new,
            patch_pairs,
            patch_positions
        );
        if let Some(b) = &self.band {
            p.band = Some(parse_band(b)?);
        }
        if self.refusal_layer.is_some() {
            p.refusal_layer = self.refusal_layer;
        }
        if self.refusal_position.is_some() {
            p.refusal_position = self.refusal_position;
        }
        if let Some(k) = self.refusal_top_k {
            p.refusal_top_k = k;
        }
        if let Some(n) = self.refusal_select_n {
            p.refusal_select_n = n;
        }
        if let Some(r) = &self.refusal_range {
            p.refusal_candidates = parse_range(r)?;
        }
        if self.addition_coef.is_some() {
            p.addition_coef = self.addition_coef;
        }
        if self.no_chat {
            p.chat = false;
        }
        p.validate()?;
        Ok(p)
    }
}

fn load(args: &ModelArgs, spec: &str) -> Result<Model> {
    Model::load(spec, &args.options()?)
}

/// Run the command.
pub fn cmd_directions(args: &DirectionsArgs, progress: &Progress) -> Result<()> {
    let params = args.params()?;
    let out = &args.out;
    let mut manifest = Manifest::from_params("directions", &params)?.with_seed(Some(params.seed));
    let (spec_a, spec_b, data_dir, truth_ds, heldout) = if args.toy_pair {
        let t0 = std::time::Instant::now();
        let pair = super::toy::pair(params.seed, args.toy_steps, args.toy_steps / 2)?;
        let dir = out.join("toy");
        super::toy::save_model(&pair.base, &dir.join("base"))?;
        super::toy::save_model(&pair.tuned, &dir.join("tuned"))?;
        super::toy::write_data(&pair.data, &dir.join("data"))?;
        manifest.record_timing("toy_pair", t0.elapsed().as_secs_f64());
        manifest.note(format!(
            "toy pair: base trained {} steps (final loss {:.3}), post-trained copy {} more steps on refusing harmful instructions (final loss {:.3}); saved in toy/base, toy/tuned, data in toy/data",
            args.toy_steps,
            pair.base_loss,
            args.toy_steps / 2,
            pair.tuned_loss
        ));
        for f in ["toy/base", "toy/tuned", "toy/data"] {
            manifest.add_file(f);
        }
        (
            dir.join("base").display().to_string(),
            Some(dir.join("tuned").display().to_string()),
            dir.join("data"),
            "toy_cities".to_string(),
            vec!["toy_located".to_string()],
        )
    } else {
        (
            args.model.model.clone(),
            args.compare.clone(),
            args.data.clone(),
            args.truth_dataset.clone(),
            args.heldout
                .iter()
                .filter(|s| !s.trim().is_empty())
                .cloned()
                .collect(),
        )
    };
    let data = DirectionsData::load(&data_dir, &truth_ds, &heldout)?;
    let samples = Samples::draw(&data, &params)?;
    let t0 = std::time::Instant::now();
    let ma = load(&args.model, &spec_a)?;
    manifest.record_timing("load_a", t0.elapsed().as_secs_f64());
    manifest = manifest.with_model(model_record(&ma)?);
    let a = super::run(&ma, "a", &samples, &params, progress)?;
    let mut reports = vec![a];
    let mut cmp = None;
    let mut mb_record = None;
    if let Some(sb) = &spec_b {
        let t0 = std::time::Instant::now();
        let mb = load(&args.model, sb)?;
        manifest.record_timing("load_b", t0.elapsed().as_secs_f64());
        mb_record = Some(model_record(&mb)?);
        let b = super::run(&mb, "b", &samples, &params, progress)?;
        let t0 = std::time::Instant::now();
        cmp = Some(super::compare(
            &ma,
            &reports[0],
            &mb,
            &b,
            &samples,
            &params,
            progress,
        )?);
        reports.push(b);
        manifest.record_timing("compare", t0.elapsed().as_secs_f64());
    }
    for r in &reports {
        for (n, s) in &r.timings {
            manifest.record_timing(n, *s);
        }
    }
    let t0 = std::time::Instant::now();
    let refs: Vec<&super::ModelReport> = reports.iter().collect();
    for f in super::output::write_outputs(&refs, cmp.as_ref(), out)? {
        manifest.add_file(f);
    }
    manifest.record_timing("write", t0.elapsed().as_secs_f64());
    if let Some(rec) = mb_record {
        if let serde_json::Value::Object(m) = &mut manifest.params {
            m.insert(
                "compare_model".into(),
                serde_json::to_value(rec).unwrap_or_default(),
            );
        }
    }
    if let serde_json::Value::Object(m) = &mut manifest.params {
        m.insert("data".into(), serde_json::json!(data.sources));
        m.insert("truth_dataset".into(), serde_json::json!(truth_ds));
        m.insert("heldout".into(), serde_json::json!(heldout));
    }
    for n in method_notes(&params) {
        manifest.note(n);
    }
    let summary = summary(&reports, cmp.as_ref());
    for line in &summary {
        manifest.note(format!("summary: {line}"));
    }
    if let Some(c) = &cmp {
        for s in &c.skipped {
            manifest.note(format!("comparison skipped: {s}"));
        }
    }
    manifest.write(out)?;
    for line in summary {
        println!("{line}");
    }
    if let Some(c) = &cmp {
        for s in &c.skipped {
            println!("skipped: {s}");
        }
    }
    println!("wrote {}", out.display());
    Ok(())
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
