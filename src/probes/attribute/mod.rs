//! `engram attribute`: attribution patching, integrated gradients and exact activation patching
//! over clean / corrupt prompt pairs (docs/attribute.md). The computation of one pair is
//! [`compute::attribute_pair`]; this module reads the pairs, runs them, averages, and reports
//! how well the gradient estimates track exact patching (Pearson r).

pub mod compute;
mod output;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use compute::{Cell, Kinds, Options, PairAttribution, PairIds};

use crate::probes::{Context, Probe, Report};
use crate::Result;

/// Parameters of `engram attribute`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct AttributeParams {
    /// One pair: the clean prompt.
    pub clean: Option<String>,
    /// The corrupt prompt (the same number of tokens as the clean one).
    pub corrupt: Option<String>,
    /// The answer token (one token, e.g. " Mary"): metric = logit[answer] − logit[wrong].
    pub answer: Option<String>,
    /// The wrong token.
    pub wrong: Option<String>,
    /// Pairs as JSON lines with `clean`, `corrupt`, `answer`, `wrong` (other keys ignored), after
    /// the pair given by the flags.
    pub pairs: Option<PathBuf>,
    /// Use at most this many pairs of the file (0: all).
    pub max_pairs: usize,
    /// What gets AtP: `resid` (resid_pre per layer × position), `heads` (hook_z per head),
    /// `neurons` (mlp.hook_post per neuron).
    pub hooks: Vec<String>,
    /// Riemann steps of integrated gradients on the residual stream (0: off).
    pub ig_steps: usize,
    /// Skip exact activation patching.
    pub no_patch: bool,
    /// Rows per forward pass of the patching / IG batches.
    pub batch: usize,
}

impl Default for AttributeParams {
    fn default() -> Self {
        AttributeParams {
            clean: None,
            corrupt: None,
            answer: None,
            wrong: None,
            pairs: None,
            max_pairs: 0,
            hooks: vec!["resid".into(), "heads".into(), "neurons".into()],
            ig_steps: 0,
            no_patch: false,
            batch: 16,
        }
    }
}

/// One pair as text.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PairText {
    pub clean: String,
    pub corrupt: String,
    pub answer: String,
    pub wrong: String,
}

impl AttributeParams {
    pub fn kinds(&self) -> Result<Kinds> {
        let mut k = Kinds {
            resid: false,
            heads: false,
            neurons: false,
        };
        for h in &self.hooks {
            match h.trim() {
                "resid" => k.resid = true,
                "heads" => k.heads = true,
                "neurons" => k.neurons = true,
                "" => {}
                other => {
                    crate::bail!("--hooks: unknown kind `{other}` (known: resid, heads, neurons)")
                }
            }
        }
        if !(k.resid || k.heads || k.neurons) {
            crate::bail!("--hooks names no kind (known: resid, heads, neurons)");
        }
        Ok(k)
    }

    /// The pairs of the flags and of the file, in order.
    pub fn all_pairs(&self) -> Result<Vec<PairText>> {
        let mut out = vec![];
        let one = [&self.clean, &self.corrupt, &self.answer, &self.wrong];
        if one.iter().any(|x| x.is_some()) {
            match one {
                [Some(c), Some(x), Some(a), Some(w)] => out.push(PairText {
                    clean: c.clone(),
                    corrupt: x.clone(),
                    answer: a.clone(),
                    wrong: w.clone(),
                }),
                _ => crate::bail!("a pair needs all of --clean, --corrupt, --answer and --wrong"),
            }
        }
        if let Some(p) = &self.pairs {
            let path = crate::data::require_file(p, "pairs")?;
            let text = std::fs::read_to_string(&path).map_err(|e| crate::Error::io(&path, e))?;
            let mut n = 0;
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                if self.max_pairs > 0 && n == self.max_pairs {
                    break;
                }
                let pair: PairText = serde_json::from_str(line).map_err(|e| {
                    crate::Error::msg(format!(
                        "{}:{}: not a pair (want clean, corrupt, answer, wrong): {e}",
                        path.display(),
                        i + 1
                    ))
                })?;
                out.push(pair);
                n += 1;
            }
        }
        if out.is_empty() {
            crate::bail!("no pairs: give --clean, --corrupt, --answer, --wrong or --pairs FILE");
        }
        Ok(out)
    }
}

/// `engram attribute`.
pub struct Attribute;

impl Probe for Attribute {
    const NAME: &'static str = "attribute";
    type Params = AttributeParams;
    type Report = AttributeReport;

    fn check(p: &AttributeParams) -> Result<()> {
        p.kinds()?;
        p.all_pairs()?;
        if p.batch == 0 {
            crate::bail!("--batch must be at least 1");
        }
        Ok(())
    }

    fn run(cx: &mut Context<'_>, p: &AttributeParams) -> Result<AttributeReport> {
        let model = cx.model()?;
        let texts = p.all_pairs()?;
        let opts = Options {
            kinds: p.kinds()?,
            ig_steps: p.ig_steps,
            patch: !p.no_patch,
            batch: p.batch,
        };
        // Tokenize and check every pair before the first forward pass.
        let mut ids = vec![];
        for (i, t) in texts.iter().enumerate() {
            let err = |e: crate::Error| crate::Error::msg(format!("pair {i}: {e}"));
            let pair = PairIds {
                clean: model.encode(&t.clean).map_err(err)?,
                corrupt: model.encode(&t.corrupt).map_err(err)?,
                answer: model.single_token(&t.answer, "answer").map_err(err)?,
                wrong: model.single_token(&t.wrong, "wrong").map_err(err)?,
            };
            if pair.clean.len() != pair.corrupt.len() {
                crate::bail!(
                    "pair {i}: clean and corrupt prompts have different lengths ({} and {} tokens): {:?} vs {:?}",
                    pair.clean.len(),
                    pair.corrupt.len(),
                    t.clean,
                    t.corrupt
                );
            }
            ids.push(pair);
        }
        let n_layers = model.cfg().n_layers;
        let bar = cx
            .progress
            .bar((ids.len() * n_layers) as u64, "attribute (pairs × layers)");
        let mut results = vec![];
        for pair in &ids {
            results.push(compute::attribute_pair_with(
                &model,
                pair,
                &opts,
                &mut || bar.inc(1),
            )?);
        }
        bar.finish();
        let tok = model.tokenizer()?;
        let tokens = ids
            .iter()
            .map(|p| p.clean.iter().map(|&i| tok.decode(&[i], false)).collect())
            .collect::<Result<Vec<Vec<String>>>>()?;
        Ok(AttributeReport {
            n_layers: model.cfg().n_layers,
            n_heads: model.cfg().n_heads,
            opts,
            texts,
            tokens,
            results,
        })
    }
}

/// What `engram attribute` found.
pub struct AttributeReport {
    pub n_layers: usize,
    pub n_heads: usize,
    pub opts: Options,
    pub texts: Vec<PairText>,
    /// Token strings of each clean prompt.
    pub tokens: Vec<Vec<String>>,
    pub results: Vec<PairAttribution>,
}

/// Pearson correlation of paired values (`None` under 3 pairs or zero variance).
pub fn pearson(xy: &[(f64, f64)]) -> Option<f64> {
    let n = xy.len() as f64;
    if xy.len() < 3 {
        return None;
    }
    let (mx, my) = (
        xy.iter().map(|p| p.0).sum::<f64>() / n,
        xy.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (x, y) in xy {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx).powi(2);
        syy += (y - my).powi(2);
    }
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

impl AttributeReport {
    /// (estimate, exact patch) over every pair's cells of `cells`, for `est` = AtP or IG.
    fn pooled(
        &self,
        cells: impl Fn(&PairAttribution) -> &[Cell],
        est: impl Fn(&Cell) -> Option<f64>,
    ) -> Vec<(f64, f64)> {
        self.results
            .iter()
            .flat_map(|r| cells(r).iter())
            .filter_map(|c| Some((est(c)?, c.patch?)))
            .collect()
    }

    /// Pearson r of AtP vs patching on the residual grid, IG vs patching there, AtP vs patching
    /// on the heads (pooled over pairs).
    pub fn correlations(&self) -> [(&'static str, Option<f64>); 3] {
        [
            (
                "resid_atp",
                pearson(&self.pooled(|r| &r.resid, |c| Some(c.atp))),
            ),
            ("resid_ig", pearson(&self.pooled(|r| &r.resid, |c| c.ig))),
            (
                "heads_atp",
                pearson(&self.pooled(|r| &r.heads, |c| Some(c.atp))),
            ),
        ]
    }
}

impl Report for AttributeReport {
    fn write(&self, dir: &Path) -> Result<Vec<String>> {
        output::write(self, dir)
    }

    fn notes(&self) -> Vec<String> {
        let mut n = vec![
            "metric: logit[answer] − logit[wrong] at the last position; every estimate is of metric(clean with the activation from the corrupt run) − metric(clean)".into(),
            "atp: (a_corrupt − a_clean) · ∂metric/∂a at the clean run (one clean forward + backward, one corrupt forward); resid = blocks.l.hook_resid_pre per position; heads = blocks.l.attn.hook_z summed over positions and d_head; neurons = blocks.l.mlp.hook_post summed over positions".into(),
        ];
        if self.opts.ig_steps > 0 {
            n.push(format!("ig: integrated gradients of resid_pre along a_clean + α(a_corrupt − a_clean) for the whole layer, midpoint Riemann sum with {} steps", self.opts.ig_steps));
        }
        if self.opts.patch {
            n.push("patch_effect: exact activation patching (one resid_pre position, or one head's z at every position, from the corrupt run into the clean run)".into());
        }
        for (name, r) in self.correlations() {
            if let Some(r) = r {
                n.push(format!(
                    "pearson r ({name} vs patch, pooled over pairs): {r:.4}"
                ));
            }
        }
        n
    }

    fn summary(&self) -> Vec<String> {
        output::summary(self)
    }
}
