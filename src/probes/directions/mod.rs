//! How post-training reshapes a model (Du et al., COLM 2025; docs/methods.md §4): truthfulness and
//! refusal directions, knowledge-storage patching maps and entropy neurons of one model, and the
//! comparison of two models (base vs post-trained) of the same width.
//!
//! - Truthfulness: residual stream (`blocks.{l}.hook_resid_post`) at a statement's last token,
//!   centred per dataset; direction per layer = mean(true) − mean(false); probe = sign of the
//!   centred projection (accuracy on the training split, the test split and held-out datasets);
//!   intervention: add (false statements) / subtract (true statements) d = û·((μ_T − μ_F)·û) at
//!   the last two positions of a few-shot "This statement is:" prompt over a band of layers;
//!   NIF = ΔP_diff / (±1 − P_diff), P_diff = P(" TRUE") − P(" FALSE").
//! - Refusal (Arditi et al.): difference of means of `hook_resid_pre` between harmful and harmless
//!   instructions (chat template when the model has one) at a chosen layer and position from the
//!   end; ablation = project r̂ out of every layer's resid_pre / resid_mid / resid_post; addition =
//!   add the difference-of-means vector at one layer; refusal score = share of greedy generations
//!   starting with a refusal phrase.
//! - Knowledge patching: resid_post of the true run patched into the false run per (layer,
//!   position from the end); effect on logit(" TRUE") − logit(" FALSE").
//! - Entropy neurons: last-layer MLP neurons in the top quarter by ‖w_out‖, the ten with the
//!   lowest variance over the vocabulary of cos(w_out, W_U columns) (final norm folded in).

pub mod compare;
pub mod output;
pub mod parts;
pub mod probe;
pub mod toy;

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::model::Model;
use crate::{Error, Result};

pub use compare::{compare, CompareReport};
pub use parts::{EntropyResult, PatchingResult, RefusalResult, TruthResult};
pub use probe::{Directions, DirectionsReport};

/// Which parts run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    Truth,
    Refusal,
    Patching,
    Entropy,
}

impl std::str::FromStr for Part {
    type Err = Error;
    fn from_str(s: &str) -> Result<Part> {
        Ok(match s {
            "truth" => Part::Truth,
            "refusal" => Part::Refusal,
            "patching" => Part::Patching,
            "entropy" => Part::Entropy,
            o => crate::bail!("unknown part `{o}` (truth, refusal, patching, entropy)"),
        })
    }
}

pub const ALL_PARTS: [Part; 4] = [Part::Truth, Part::Refusal, Part::Patching, Part::Entropy];

/// Parameters of the directions probe.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct DirectionsParams {
    /// The parts that run (truth, refusal, patching, entropy).
    #[serde(rename = "only", deserialize_with = "crate::probes::comma_list")]
    pub parts: Vec<Part>,
    /// A second model of the same width to compare with (e.g. the post-trained version).
    pub compare: Option<String>,
    /// Train the toy base / post-trained pair, save it under OUT/toy/ and compare the two
    /// (the model, `compare` and `data` are not used).
    pub toy_pair: bool,
    /// Training steps of the toy pair (base, then half as many of post-training).
    pub toy_steps: usize,
    /// Dataset folder (statements/*.csv, instructions/harmful.csv, instructions/harmless.csv).
    pub data: PathBuf,
    /// Main statement dataset (statements/NAME.csv).
    pub truth_dataset: String,
    /// Held-out statement datasets.
    #[serde(deserialize_with = "crate::probes::comma_list")]
    pub heldout: Vec<String>,
    pub seed: u64,
    /// Prompts per forward pass.
    pub batch_size: usize,
    /// Statements (balanced) used to fit the truth directions / to test them.
    pub n_train: usize,
    pub n_test: usize,
    /// Statements per held-out dataset.
    pub n_heldout: usize,
    /// Examples in the few-shot "This statement is:" prompt.
    pub shots: usize,
    /// Statements intervened on (half true, half false).
    pub n_intervene: usize,
    /// Layers [start, end) of the truth intervention (`START:END`); default the second quarter
    /// of the depth.
    #[serde(deserialize_with = "crate::probes::opt_pair")]
    pub band: Option<(usize, usize)>,
    /// Layer of the refusal direction (resid_pre of block l; l = L is the final residual);
    /// default: selected among `refusal_candidates` by ablation.
    pub refusal_layer: Option<usize>,
    /// Relative depth range `A:B` (of 0..=L) of the candidate refusal layers.
    #[serde(rename = "refusal_range", deserialize_with = "crate::probes::pair")]
    pub refusal_candidates: (f64, f64),
    /// Harmful and harmless training instructions (each, at most half of the training set) held
    /// back from the means to select the direction.
    pub refusal_select_n: usize,
    /// Position of the refusal direction, counted from the end (0 = last token); default: every
    /// post-instruction position is a candidate.
    pub refusal_position: Option<usize>,
    /// At most this many post-instruction positions are scanned.
    pub refusal_max_positions: usize,
    /// Candidates (lowest bypass score) also scored for addition and KL.
    pub refusal_top_k: usize,
    /// Largest KL divergence (harmless prompts, ablated vs not) a selected direction may cause.
    pub refusal_kl_max: f64,
    /// Harmful / harmless training instructions (each) for the refusal direction.
    pub n_refusal_train: usize,
    /// Held-out harmful / harmless instructions (each) for the refusal rates.
    pub n_refusal_test: usize,
    /// Tokens generated per instruction.
    pub max_new: usize,
    /// Coefficient of the activation addition (× the unit direction); default ‖μ_harmful − μ_harmless‖.
    pub addition_coef: Option<f64>,
    /// Wrap instructions in the chat template when the model has one.
    pub chat: bool,
    /// True/false pairs in the patching map.
    pub patch_pairs: usize,
    /// Positions from the end in the patching map.
    pub patch_positions: usize,
    /// Few-shot examples in the patching prompt.
    pub patch_shots: usize,
    /// Share of last-layer neurons (by ‖w_out‖) considered as entropy neurons.
    pub entropy_top_frac: f64,
    /// Entropy neurons kept (lowest variance of cos with W_U).
    pub entropy_k: usize,
}

impl Default for DirectionsParams {
    fn default() -> Self {
        DirectionsParams {
            parts: ALL_PARTS.to_vec(),
            compare: None,
            toy_pair: false,
            toy_steps: 400,
            data: PathBuf::from("notebooks-data"),
            truth_dataset: "cities".into(),
            heldout: vec!["country_region".into(), "lre_facts".into()],
            seed: 0,
            batch_size: 16,
            n_train: 200,
            n_test: 100,
            n_heldout: 100,
            shots: 4,
            n_intervene: 40,
            band: None,
            refusal_layer: None,
            refusal_candidates: (0.2, 0.8),
            refusal_select_n: 16,
            refusal_position: None,
            refusal_max_positions: 8,
            refusal_top_k: 8,
            refusal_kl_max: 0.1,
            n_refusal_train: 64,
            n_refusal_test: 32,
            max_new: 16,
            addition_coef: None,
            chat: true,
            patch_pairs: 16,
            patch_positions: 8,
            patch_shots: 2,
            entropy_top_frac: 0.25,
            entropy_k: 10,
        }
    }
}

impl DirectionsParams {
    pub fn has(&self, p: Part) -> bool {
        self.parts.contains(&p)
    }

    pub fn validate(&self) -> Result<()> {
        if self.parts.is_empty() {
            crate::bail!("directions: no part selected");
        }
        let (a, b) = self.refusal_candidates;
        if !(0.0..=1.0).contains(&a) || !(0.0..=1.0).contains(&b) || a > b {
            crate::bail!("directions: --refusal-range {a}:{b}: expected A:B with 0 ≤ A ≤ B ≤ 1");
        }
        if self.toy_pair && self.toy_steps < 2 {
            crate::bail!("directions: --toy-steps must be at least 2");
        }
        if self.batch_size == 0 {
            crate::bail!("directions: --batch-size must be ≥ 1");
        }
        if self.n_train < 2 || self.n_test < 2 {
            crate::bail!("directions: need at least 2 training and 2 test statements");
        }
        if self.n_refusal_train == 0 || self.n_refusal_test == 0 {
            crate::bail!("directions: need at least 1 refusal training and test instruction");
        }
        if self.patch_positions == 0 || self.patch_pairs == 0 {
            crate::bail!("directions: --patch-positions and --patch-pairs must be ≥ 1");
        }
        if !(self.entropy_top_frac > 0.0 && self.entropy_top_frac <= 1.0) {
            crate::bail!("directions: entropy-top-frac must be in (0, 1]");
        }
        if let Some((a, b)) = self.band {
            if a >= b {
                crate::bail!(
                    "directions: --band {a}:{b} is empty (expected START:END with START < END)"
                );
            }
        }
        Ok(())
    }

    /// The layer parameters against a model of `nl` layers (before it loads; the run checks
    /// the `--compare` model too).
    pub fn validate_layers(&self, nl: usize) -> Result<()> {
        if let Some((a, b)) = self.band.filter(|_| self.has(Part::Truth)) {
            if b > nl {
                crate::bail!(
                    "directions: --band {a}:{b} exceeds the model's {nl} layers (END ≤ {nl})"
                );
            }
        }
        if let Some(l) = self.refusal_layer.filter(|_| self.has(Part::Refusal)) {
            if l > nl {
                crate::bail!(
                    "directions: --refusal-layer {l} is out of range (0..={nl}; {nl} = the \
                     final residual)"
                );
            }
        }
        Ok(())
    }
}

/// A true/false statement.
#[derive(Clone, Debug, PartialEq)]
pub struct Statement {
    pub text: String,
    pub label: bool,
    pub dataset: String,
    pub train: bool,
}

/// An instruction (harmful or harmless).
#[derive(Clone, Debug, PartialEq)]
pub struct Instruction {
    pub text: String,
    pub train: bool,
}

/// Everything the probe reads.
#[derive(Clone, Debug, Default)]
pub struct DirectionsData {
    /// The main statement dataset (train and test splits): directions, probe, intervention,
    /// patching.
    pub statements: Vec<Statement>,
    /// Other statement datasets, for held-out-dataset accuracy (every row is used).
    pub heldout: Vec<Statement>,
    pub harmful: Vec<Instruction>,
    pub harmless: Vec<Instruction>,
    /// Where the data came from (for the manifest).
    pub sources: Vec<String>,
}

/// Parse RFC 4180 CSV text (quoted fields, doubled quotes, CRLF) into rows of fields.
pub fn parse_csv(text: &str) -> Result<Vec<Vec<String>>> {
    let mut rows = vec![];
    let mut row = vec![];
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    let mut any = false;
    while let Some(c) = chars.next() {
        any = true;
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    field.push('"');
                    chars.next();
                } else {
                    quoted = false;
                }
            } else {
                field.push(c);
            }
            continue;
        }
        match c {
            '"' if field.is_empty() => quoted = true,
            ',' => row.push(std::mem::take(&mut field)),
            '\r' => {}
            '\n' => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
                any = false;
            }
            c => field.push(c),
        }
    }
    if quoted {
        crate::bail!("unterminated quoted field");
    }
    if any {
        row.push(field);
        rows.push(row);
    }
    Ok(rows)
}

fn read_csv(path: &Path, header: &[&str]) -> Result<Vec<Vec<String>>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let rows = parse_csv(&text).map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
    let Some((head, body)) = rows.split_first() else {
        crate::bail!("{}: empty file", path.display());
    };
    if head.len() != header.len() || head.iter().zip(header).any(|(a, b)| a.trim() != *b) {
        crate::bail!(
            "{}: expected the header `{}`, found `{}`",
            path.display(),
            header.join(","),
            head.join(",")
        );
    }
    for (i, r) in body.iter().enumerate() {
        if r.len() != header.len() {
            crate::bail!(
                "{}: row {} has {} fields, expected {}",
                path.display(),
                i + 2,
                r.len(),
                header.len()
            );
        }
    }
    Ok(body.to_vec())
}

fn split_of(path: &Path, s: &str) -> Result<bool> {
    match s.trim() {
        "train" => Ok(true),
        "test" => Ok(false),
        o => crate::bail!("{}: unknown split `{o}` (train, test)", path.display()),
    }
}

/// Read a statements CSV (`statement,label,dataset,split`).
pub fn read_statements(path: &Path) -> Result<Vec<Statement>> {
    read_csv(path, &["statement", "label", "dataset", "split"])?
        .into_iter()
        .map(|r| {
            let label = match r[1].trim() {
                "1" => true,
                "0" => false,
                o => crate::bail!("{}: label `{o}` is not 0 or 1", path.display()),
            };
            Ok(Statement {
                text: r[0].clone(),
                label,
                dataset: r[2].clone(),
                train: split_of(path, &r[3])?,
            })
        })
        .collect()
}

/// Read an instructions CSV (`instruction,split`).
pub fn read_instructions(path: &Path) -> Result<Vec<Instruction>> {
    read_csv(path, &["instruction", "split"])?
        .into_iter()
        .map(|r| {
            Ok(Instruction {
                text: r[0].clone(),
                train: split_of(path, &r[1])?,
            })
        })
        .collect()
}

impl DirectionsData {
    /// Load from `dir` (notebooks-data) what `parts` use: `statements/{truth}.csv` and
    /// `statements/{heldout}.csv` (truth, patching), `instructions/harmful.csv` and
    /// `instructions/harmless.csv` (refusal); entropy reads no data.
    pub fn load(
        dir: &Path,
        truth: &str,
        heldout: &[String],
        parts: &[Part],
    ) -> Result<DirectionsData> {
        let dir = &crate::data::locate(dir);
        let st = |name: &str| -> PathBuf { dir.join("statements").join(format!("{name}.csv")) };
        let mut sources = vec![];
        let (mut statements, mut held) = (vec![], vec![]);
        if parts.contains(&Part::Truth) || parts.contains(&Part::Patching) {
            let main = st(truth);
            statements = read_statements(&main)?;
            sources.push(main.display().to_string());
            for h in heldout.iter().filter(|h| !h.trim().is_empty()) {
                let p = st(h);
                held.extend(read_statements(&p)?);
                sources.push(p.display().to_string());
            }
        }
        let (mut harmful, mut harmless) = (vec![], vec![]);
        if parts.contains(&Part::Refusal) {
            let hp = dir.join("instructions/harmful.csv");
            let lp = dir.join("instructions/harmless.csv");
            harmful = read_instructions(&hp)?;
            harmless = read_instructions(&lp)?;
            sources.push(hp.display().to_string());
            sources.push(lp.display().to_string());
        }
        Ok(DirectionsData {
            statements,
            heldout: held,
            harmful,
            harmless,
            sources,
        })
    }
}

/// A balanced seeded sample of `n` statements (n/2 true, n/2 false) from `rows`.
pub fn balanced_sample(rows: &[&Statement], n: usize, seed: u64) -> Vec<Statement> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t: Vec<&Statement> = rows.iter().copied().filter(|s| s.label).collect();
    let mut f: Vec<&Statement> = rows.iter().copied().filter(|s| !s.label).collect();
    t.shuffle(&mut rng);
    f.shuffle(&mut rng);
    let k = (n / 2).min(t.len()).min(f.len());
    let mut out: Vec<Statement> = t[..k]
        .iter()
        .chain(f[..k].iter())
        .map(|s| (*s).clone())
        .collect();
    out.shuffle(&mut rng);
    out
}

/// What one model gave.
pub struct ModelReport {
    /// "a" or "b".
    pub name: String,
    pub spec: String,
    pub n_layers: usize,
    pub d_model: usize,
    pub d_mlp: usize,
    pub truth: Option<TruthResult>,
    pub refusal: Option<RefusalResult>,
    pub patching: Option<PatchingResult>,
    pub entropy: Option<EntropyResult>,
    pub timings: Vec<(String, f64)>,
    pub notes: Vec<String>,
}

/// The statement samples every model sees (so that two models are compared on the same rows).
#[derive(Clone, Debug)]
pub struct Samples {
    pub train: Vec<Statement>,
    pub test: Vec<Statement>,
    pub heldout: Vec<Statement>,
    pub shots: Vec<Statement>,
    pub intervene: Vec<Statement>,
    /// (true, false) pairs sharing a subject.
    pub pairs: Vec<(Statement, Statement)>,
    pub harmful_train: Vec<String>,
    pub harmless_train: Vec<String>,
    pub harmful_test: Vec<String>,
    pub harmless_test: Vec<String>,
}

fn take_instr(rows: &[Instruction], train: bool, n: usize, seed: u64) -> Vec<String> {
    let mut v: Vec<String> = rows
        .iter()
        .filter(|r| r.train == train)
        .map(|r| r.text.clone())
        .collect();
    v.shuffle(&mut StdRng::seed_from_u64(seed));
    v.truncate(n);
    v
}

/// Longest common prefix in characters.
fn common_prefix(a: &str, b: &str) -> usize {
    a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count()
}

impl Samples {
    pub fn draw(data: &DirectionsData, p: &DirectionsParams) -> Result<Samples> {
        let train_rows: Vec<&Statement> = data.statements.iter().filter(|s| s.train).collect();
        let test_rows: Vec<&Statement> = data.statements.iter().filter(|s| !s.train).collect();
        let needs_truth = p.has(Part::Truth) || p.has(Part::Patching);
        let train = balanced_sample(&train_rows, p.n_train, p.seed);
        let test = balanced_sample(&test_rows, p.n_test, p.seed + 1);
        if needs_truth && (train.len() < 2 || test.len() < 2) {
            crate::bail!(
                "directions: the statement dataset needs true and false rows in both splits (got {} train, {} test)",
                train.len(),
                test.len()
            );
        }
        let mut heldout = vec![];
        let mut names: Vec<&str> = data.heldout.iter().map(|s| s.dataset.as_str()).collect();
        names.sort();
        names.dedup();
        for (i, n) in names.iter().enumerate() {
            let rows: Vec<&Statement> = data.heldout.iter().filter(|s| s.dataset == *n).collect();
            heldout.extend(balanced_sample(&rows, p.n_heldout, p.seed + 10 + i as u64));
        }
        // Few-shot examples: training rows not used elsewhere, alternating true / false.
        let used: std::collections::HashSet<&str> = train.iter().map(|s| s.text.as_str()).collect();
        let spare: Vec<&Statement> = train_rows
            .iter()
            .copied()
            .filter(|s| !used.contains(s.text.as_str()))
            .collect();
        let pool = balanced_sample(
            if spare.len() >= 2 * p.shots.max(p.patch_shots) {
                &spare
            } else {
                &train_rows
            },
            2 * p.shots.max(p.patch_shots) + 2,
            p.seed + 2,
        );
        let (mut ts, mut fs): (Vec<Statement>, Vec<Statement>) =
            pool.into_iter().partition(|s| s.label);
        let mut shots = vec![];
        while shots.len() < p.shots.max(p.patch_shots) && (!ts.is_empty() || !fs.is_empty()) {
            if shots.len() % 2 == 0 {
                if let Some(s) = ts.pop() {
                    shots.push(s);
                    continue;
                }
            }
            if let Some(s) = fs.pop() {
                shots.push(s);
            } else if let Some(s) = ts.pop() {
                shots.push(s);
            }
        }
        let intervene =
            balanced_sample(&test.iter().collect::<Vec<_>>(), p.n_intervene, p.seed + 3);
        // Patching pairs: a true and a false test statement of one dataset sharing the longest
        // prefix (the subject).
        let mut pairs = vec![];
        let mut falses: Vec<&Statement> = test_rows.iter().copied().filter(|s| !s.label).collect();
        let mut trues: Vec<&Statement> = test_rows.iter().copied().filter(|s| s.label).collect();
        trues.shuffle(&mut StdRng::seed_from_u64(p.seed + 4));
        for t in trues {
            if pairs.len() >= p.patch_pairs {
                break;
            }
            let best = falses
                .iter()
                .enumerate()
                .filter(|(_, f)| f.dataset == t.dataset)
                .max_by_key(|(_, f)| common_prefix(&t.text, &f.text));
            if let Some((i, f)) = best {
                if common_prefix(&t.text, &f.text) * 2
                    >= t.text.chars().count().min(f.text.chars().count())
                {
                    pairs.push((t.clone(), (*f).clone()));
                    falses.remove(i);
                }
            }
        }
        let n_tr = p.n_refusal_train;
        let n_te = p.n_refusal_test;
        let s = Samples {
            train,
            test,
            heldout,
            shots,
            intervene,
            pairs,
            harmful_train: take_instr(&data.harmful, true, n_tr, p.seed + 5),
            harmless_train: take_instr(&data.harmless, true, n_tr, p.seed + 6),
            harmful_test: take_instr(&data.harmful, false, n_te, p.seed + 7),
            harmless_test: take_instr(&data.harmless, false, n_te, p.seed + 8),
        };
        if p.has(Part::Refusal)
            && (s.harmful_train.is_empty()
                || s.harmless_train.is_empty()
                || s.harmful_test.is_empty()
                || s.harmless_test.is_empty())
        {
            crate::bail!("directions: harmful and harmless instructions need rows in both splits");
        }
        if p.has(Part::Patching) && s.pairs.is_empty() {
            crate::bail!(
                "directions: no true/false statement pairs sharing a subject in the test split"
            );
        }
        Ok(s)
    }
}

/// Run the selected parts on one model.
pub fn run(
    model: &Model,
    name: &str,
    samples: &Samples,
    params: &DirectionsParams,
    progress: &crate::progress::Progress,
) -> Result<ModelReport> {
    params.validate()?;
    let cfg = model.cfg();
    let mut rep = ModelReport {
        name: name.into(),
        spec: model.source.spec.clone(),
        n_layers: cfg.n_layers,
        d_model: cfg.d_model,
        d_mlp: cfg.d_mlp,
        truth: None,
        refusal: None,
        patching: None,
        entropy: None,
        timings: vec![],
        notes: vec![],
    };
    let timed = |label: &str, t0: std::time::Instant, rep: &mut ModelReport| {
        rep.timings
            .push((format!("{name}.{label}"), t0.elapsed().as_secs_f64()));
    };
    if params.has(Part::Truth) {
        let t0 = std::time::Instant::now();
        rep.truth = Some(parts::truth(model, samples, params, progress)?);
        timed("truth", t0, &mut rep);
    }
    if params.has(Part::Refusal) {
        let t0 = std::time::Instant::now();
        rep.refusal = Some(parts::refusal(model, samples, params, progress)?);
        timed("refusal", t0, &mut rep);
    }
    if params.has(Part::Patching) {
        let t0 = std::time::Instant::now();
        rep.patching = Some(parts::patching(model, samples, params, progress)?);
        timed("patching", t0, &mut rep);
    }
    if params.has(Part::Entropy) {
        let t0 = std::time::Instant::now();
        rep.entropy = Some(parts::entropy(model, params)?);
        timed("entropy", t0, &mut rep);
    }
    Ok(rep)
}
