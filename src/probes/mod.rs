//! The research probes, all of one shape.
//!
//! A probe is a type implementing [`Probe`]: a name (the command and suite name, e.g. `heads`,
//! `sae run`), a `Params` struct (serde, with defaults, whose keys are the probe's flags and
//! suite keys with `-` written `_`), and `run`, which gets a [`Context`] (the loaded model, the
//! output directory, progress, the manifest being built) and returns a [`Report`] that writes its
//! tables and charts. [`run`] is the one runner: it checks the parameters, loads the model through
//! a [`Session`] (which keeps the last model loaded, so a suite loads each model once), times the
//! run, records the model, the notes and the files in `manifest.json`, and returns the summary
//! lines the command prints.
//!
//! [`parse`] builds a probe's parameters from a key → value map (a suite step's `args`, or the
//! command line's given options), over the probe's defaults; unknown keys are one-line errors that
//! list the known ones. [`step`] does the same by probe name and returns a type-erased [`Step`].
//!
//! Adding a probe: a module here with its `Params`, `Report` and `impl Probe`, a line in
//! [`NAMES`] and [`step`], and one subcommand in the CLI.

pub mod attribute;
pub mod cmr;
pub mod cmr_fit;
pub mod directions;
pub mod heads;
pub mod lens;
pub mod neurons;
mod params;
pub mod sae;
mod session;
pub mod toy;

use std::fmt::Debug;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use params::{at_least_one, comma_list, opt_pair, pair, parse, ParamMap};
pub use session::{run, Context, Outcome, Session};

use crate::model::ModelSpec;
use crate::Result;

/// Whether a probe loads a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelUse {
    /// Never (the toy, `cmr-fit`, `sae train`).
    None,
    /// When one is given (`sae eval`: CE / KL and token strings).
    Optional,
    /// Always.
    Required,
}

/// One research probe.
pub trait Probe {
    /// The command and suite name (`heads`, `cmr-fit`, `sae run`, ...).
    const NAME: &'static str;
    /// Parameters: their serialized keys are the probe's flags and suite keys.
    type Params: Serialize + DeserializeOwned + Default + Clone + Debug;
    /// What `run` returns: it writes the tables and charts.
    type Report: Report;

    /// The probe continues an incomplete output of its own when rerun into it (an activation
    /// store): the command line writes its `--out` in place instead of as a unit
    /// ([`crate::report::outdir`]).
    const RESUMES_OUTPUT: bool = false;

    /// Whether these parameters need a model.
    fn model_use(_params: &Self::Params) -> ModelUse {
        ModelUse::Required
    }

    /// The seed recorded in the manifest.
    fn seed(_params: &Self::Params) -> Option<u64> {
        None
    }

    /// Check the parameters and their input files before any model loads.
    fn check(_params: &Self::Params) -> Result<()> {
        Ok(())
    }

    /// Whether [`Probe::check_model`] checks anything: only then is the model's config read
    /// ahead of the load (a GGUF header takes up to ~0.6 s to read); otherwise it runs after
    /// the load.
    const CHECKS_MODEL: bool = false;

    /// Check the parameters that depend on the model (layer ranges, hook points) against its
    /// config, read before the weights load (when [`Probe::CHECKS_MODEL`]).
    fn check_model(_params: &Self::Params, _cfg: &crate::model::ModelConfig) -> Result<()> {
        Ok(())
    }

    /// The defaults the given keys are laid over (e.g. the toy pair's own sizes in `directions`).
    fn defaults(_given: &ParamMap) -> Self::Params {
        Self::Params::default()
    }

    /// Run the probe.
    fn run(cx: &mut Context<'_>, params: &Self::Params) -> Result<Self::Report>;
}

/// The result of a probe run.
pub trait Report {
    /// Write tables and charts into `dir`; the files written, relative to `dir`.
    fn write(&self, dir: &Path) -> Result<Vec<String>>;
    /// Method choices and caveats for the manifest.
    fn notes(&self) -> Vec<String> {
        vec![]
    }
    /// The lines the command prints (also kept in the manifest's notes as `summary: ...`).
    fn summary(&self) -> Vec<String> {
        vec![]
    }
}

/// Every probe of this build, by name.
pub const NAMES: [&str; 12] = [
    heads::Heads::NAME,
    cmr_fit::CmrFit::NAME,
    toy::Toy::NAME,
    neurons::Neurons::NAME,
    directions::Directions::NAME,
    sae::probe::Collect::NAME,
    sae::probe::Train::NAME,
    sae::probe::Eval::NAME,
    sae::probe::Run::NAME,
    sae::dashboard::DashboardProbe::NAME,
    lens::Lens::NAME,
    attribute::Attribute::NAME,
];

/// A probe with its parameters, ready to run (type-erased for suites).
pub trait Step {
    fn name(&self) -> &'static str;
    fn model_use(&self) -> ModelUse;
    /// The parameters as the manifest records them.
    fn params(&self) -> serde_json::Value;
    fn run(&self, session: &mut Session, model: Option<&ModelSpec>, out: &Path) -> Result<Outcome>;
}

struct Planned<P: Probe>(P::Params);

impl<P: Probe> Step for Planned<P> {
    fn name(&self) -> &'static str {
        P::NAME
    }
    fn model_use(&self) -> ModelUse {
        P::model_use(&self.0)
    }
    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.0).unwrap_or_default()
    }
    fn run(&self, session: &mut Session, model: Option<&ModelSpec>, out: &Path) -> Result<Outcome> {
        session::run_checked::<P>(session, model, &self.0, out)
    }
}

/// Something done with one probe type, chosen by name in [`with_probe`].
trait Visit {
    type Out;
    fn visit<P: Probe + 'static>(self) -> Self::Out;
}

/// `v` applied to the probe called `name` (the one list of this build's probes).
fn with_probe<V: Visit>(name: &str, v: V) -> Option<V::Out> {
    Some(match name {
        heads::Heads::NAME => v.visit::<heads::Heads>(),
        cmr_fit::CmrFit::NAME => v.visit::<cmr_fit::CmrFit>(),
        toy::Toy::NAME => v.visit::<toy::Toy>(),
        neurons::Neurons::NAME => v.visit::<neurons::Neurons>(),
        directions::Directions::NAME => v.visit::<directions::Directions>(),
        sae::probe::Collect::NAME => v.visit::<sae::probe::Collect>(),
        sae::probe::Train::NAME => v.visit::<sae::probe::Train>(),
        sae::probe::Eval::NAME => v.visit::<sae::probe::Eval>(),
        sae::probe::Run::NAME => v.visit::<sae::probe::Run>(),
        sae::dashboard::DashboardProbe::NAME => v.visit::<sae::dashboard::DashboardProbe>(),
        lens::Lens::NAME => v.visit::<lens::Lens>(),
        attribute::Attribute::NAME => v.visit::<attribute::Attribute>(),
        _ => return None,
    })
}

struct Plan<'a>(&'a ParamMap);

impl Visit for Plan<'_> {
    type Out = Result<Box<dyn Step>>;
    fn visit<P: Probe + 'static>(self) -> Self::Out {
        let p = parse::<P>(self.0)?;
        P::check(&p)?;
        Ok(Box::new(Planned::<P>(p)))
    }
}

struct Defaults;

impl Visit for Defaults {
    type Out = serde_json::Value;
    fn visit<P: Probe + 'static>(self) -> Self::Out {
        serde_json::to_value(P::Params::default()).unwrap_or_default()
    }
}

/// The probe `name` with parameters from `given`, checked (input files included).
pub fn step(name: &str, given: &ParamMap) -> Result<Box<dyn Step>> {
    with_probe(name, Plan(given)).unwrap_or_else(|| {
        Err(crate::Error::msg(format!(
            "unknown probe `{name}` (this build has: {})",
            NAMES.join(", ")
        )))
    })
}

/// The parameter keys of probe `name` (the keys of its defaults); `None` for an unknown name.
pub fn param_keys(name: &str) -> Option<Vec<String>> {
    let v = with_probe(name, Defaults)?;
    Some(
        v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default(),
    )
}
