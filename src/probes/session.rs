//! The one probe runner: [`Session`] (models loaded once per process), [`Context`] (what a
//! probe's `run` sees) and [`run`] (check → load → run → write → manifest).

use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

use super::{ModelUse, Probe, Report};
use crate::model::{Model, ModelSpec};
use crate::progress::Progress;
use crate::report::manifest::{Manifest, ModelRecord};
use crate::{Error, Result};

/// State shared by the probes of one process: the progress mode and the last model loaded (a
/// suite runs a model's steps one after another, so each model loads once).
pub struct Session {
    pub progress: Progress,
    loaded: Option<Loaded>,
}

struct Loaded {
    spec: ModelSpec,
    model: Rc<Model>,
    record: ModelRecord,
}

impl Session {
    pub fn new(progress: Progress) -> Self {
        Session {
            progress,
            loaded: None,
        }
    }

    /// The model `spec` asks for, its manifest record, and the seconds spent loading it now
    /// (`None` when it was already loaded). A different model replaces the one held.
    pub fn model(&mut self, spec: &ModelSpec) -> Result<(Rc<Model>, ModelRecord, Option<f64>)> {
        if let Some(l) = &self.loaded {
            if &l.spec == spec {
                return Ok((l.model.clone(), l.record.clone(), None));
            }
        }
        // Free the old model before the new one loads.
        self.loaded = None;
        let t0 = Instant::now();
        let model = Rc::new(spec.load()?);
        let record = ModelRecord::of(&model)?;
        let secs = t0.elapsed().as_secs_f64();
        self.loaded = Some(Loaded {
            spec: spec.clone(),
            model: model.clone(),
            record: record.clone(),
        });
        Ok((model, record, Some(secs)))
    }

    /// The model held, when it is the one `spec` asks for.
    fn loaded_model(&self, spec: &ModelSpec) -> Option<&Model> {
        self.loaded
            .as_ref()
            .filter(|l| &l.spec == spec)
            .map(|l| &*l.model)
    }

    /// Drop the model held.
    pub fn release(&mut self) {
        self.loaded = None;
    }
}

/// What a probe's `run` gets.
pub struct Context<'a> {
    /// The model of the step (`None` for model-free probes, or `sae eval` without one).
    pub model: Option<Rc<Model>>,
    /// How it was asked for (other models, e.g. `--compare`, load with the same options).
    pub spec: Option<&'a ModelSpec>,
    /// The output directory (exists).
    pub out: &'a Path,
    pub progress: &'a Progress,
    /// The manifest being built: a probe adds timings, notes, files and parameters it resolved.
    pub manifest: &'a mut Manifest,
}

impl Context<'_> {
    /// The step's model; an error for a probe run without one.
    pub fn model(&self) -> Result<Rc<Model>> {
        self.model
            .clone()
            .ok_or_else(|| Error::msg(format!("{}: no model given", self.manifest.command)))
    }

    /// Load another model with the step model's options (dtype, device, ...), timing it as
    /// `load_<label>`.
    pub fn load_other(&mut self, spec: &str, label: &str) -> Result<Model> {
        let mut s = self.spec.cloned().unwrap_or_default();
        s.model = spec.to_string();
        let t0 = Instant::now();
        let m = s.load()?;
        self.manifest
            .record_timing(&format!("load_{label}"), t0.elapsed().as_secs_f64());
        Ok(m)
    }
}

/// What a finished probe run leaves besides its files.
pub struct Outcome {
    /// The lines to print.
    pub summary: Vec<String>,
    /// The manifest as written.
    pub manifest: Manifest,
}

/// Run probe `P` into `out`: check the parameters, load the model (through `session`), run,
/// write the report, and write `manifest.json` last.
pub fn run<P: Probe>(
    session: &mut Session,
    spec: Option<&ModelSpec>,
    params: &P::Params,
    out: &Path,
) -> Result<Outcome> {
    P::check(params)?;
    run_checked::<P>(session, spec, params, out)
}

/// [`run`] for parameters already checked (a [`super::Step`] checks when it is built).
pub(super) fn run_checked<P: Probe>(
    session: &mut Session,
    spec: Option<&ModelSpec>,
    params: &P::Params,
    out: &Path,
) -> Result<Outcome> {
    let mut manifest = Manifest::from_params(P::NAME, params)?.with_seed(P::seed(params));
    let model = match (P::model_use(params), spec) {
        (ModelUse::None, _) | (ModelUse::Optional, None) => None,
        (ModelUse::Required, None) => crate::bail!("{}: no model given", P::NAME),
        (_, Some(s)) => {
            // Layer and width parameters are checked against the config before the load (the
            // held model's, or read ahead for a probe with such checks), else right after it.
            let early = session.loaded_model(s).is_some() || P::CHECKS_MODEL;
            if early {
                match session.loaded_model(s) {
                    Some(m) => P::check_model(params, m.cfg())?,
                    None => P::check_model(params, &s.config()?)?,
                }
            }
            let (m, record, secs) = session.model(s)?;
            if !early {
                P::check_model(params, m.cfg())?;
            }
            match secs {
                Some(secs) => manifest.record_timing("load", secs),
                None => manifest.note("model already loaded by this process (an earlier step)"),
            }
            manifest.model = Some(record);
            Some(m)
        }
    };
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let progress = session.progress.clone();
    let t0 = Instant::now();
    let report = P::run(
        &mut Context {
            model,
            spec,
            out,
            progress: &progress,
            manifest: &mut manifest,
        },
        params,
    )?;
    manifest.record_timing("probe", t0.elapsed().as_secs_f64());
    let t0 = Instant::now();
    for f in report.write(out)? {
        manifest.add_file(f);
    }
    manifest.record_timing("write", t0.elapsed().as_secs_f64());
    for n in report.notes() {
        manifest.note(n);
    }
    let summary = report.summary();
    for line in &summary {
        manifest.note(format!("summary: {line}"));
    }
    let t0 = Instant::now();
    let page = crate::report::page::write_run_page(out, &manifest)?;
    manifest.add_file(page);
    manifest.record_timing("page", t0.elapsed().as_secs_f64());
    manifest.write(out)?;
    Ok(Outcome { summary, manifest })
}
