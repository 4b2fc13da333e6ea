//! The plan of a run: every step of every model with its probe parameters and model, in suite
//! order.

use std::path::{Path, PathBuf};

use super::suite::{ModelEntry, Suite};
use super::PARTIAL_SUFFIX;
use crate::model::ModelSpec;
use crate::probes::ParamMap;
use crate::Result;

/// Values substituted into string arguments.
#[derive(Debug, Clone, Default)]
pub struct Substitutions {
    pub model: String,
    pub model_spec: String,
    pub run: String,
}

impl Substitutions {
    fn apply(&self, s: &str) -> String {
        s.replace("{model_spec}", &self.model_spec)
            .replace("{model}", &self.model)
            .replace("{run}", &self.run)
    }
}

/// One step of one model (or a model-free step), ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedStep {
    /// `model/step` or `step`: also the directory relative to the run root.
    pub id: String,
    pub model: Option<ModelEntry>,
    /// The probe's name (`heads`, `sae run`, ...).
    pub probe: String,
    /// The model the step loads (per-model steps, and model-free steps that set `model`).
    pub spec: Option<ModelSpec>,
    /// The probe's parameters as the suite gives them (substitutions applied, model keys out).
    pub params: ParamMap,
    /// Ids of the planned steps this one needs (from the suite's `after`).
    pub after: Vec<String>,
    /// Relative run time (the suite's `cost`), to balance shards.
    pub cost: f64,
}

impl PlannedStep {
    pub fn dir(&self, root: &Path) -> PathBuf {
        root.join(&self.id)
    }

    /// The hidden directory the step writes into.
    pub fn partial_dir(&self, root: &Path) -> PathBuf {
        let dir = self.dir(root);
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        dir.with_file_name(format!(".{name}{PARTIAL_SUFFIX}"))
    }

    /// The lock a process holds while it runs the step (hidden, beside the step's directory).
    pub fn lock_path(&self, root: &Path) -> PathBuf {
        let dir = self.dir(root);
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        dir.with_file_name(format!(".{name}.lock"))
    }

    /// The equivalent command line (after `engram`) writing into `out`.
    pub fn command_line(&self, out: &Path) -> Vec<String> {
        let mut v: Vec<String> = self.probe.split_whitespace().map(String::from).collect();
        for (key, value) in &self.params {
            let flag = format!("--{}", key.replace('_', "-"));
            match value {
                serde_json::Value::Bool(true) => v.push(flag),
                serde_json::Value::Bool(false) | serde_json::Value::Null => {}
                serde_json::Value::Array(items) => {
                    let items: Vec<String> = items.iter().map(scalar_text).collect();
                    v.push(flag);
                    v.push(items.join(","));
                }
                x => {
                    v.push(flag);
                    v.push(scalar_text(x));
                }
            }
        }
        if let Some(s) = &self.spec {
            let d = ModelSpec::default();
            v.extend(["--model".to_string(), s.model.clone()]);
            for (flag, val, default) in [
                ("--dtype", &s.dtype, &d.dtype),
                ("--device", &s.device, &d.device),
                ("--matmul", &s.matmul, &d.matmul),
            ] {
                if val != default {
                    v.extend([flag.to_string(), val.clone()]);
                }
            }
            if let Some(r) = &s.revision {
                v.extend(["--revision".to_string(), r.clone()]);
            }
            if let Some(t) = &s.tokenizer {
                v.extend(["--tokenizer".to_string(), t.display().to_string()]);
            }
        }
        v.push("--out".into());
        v.push(out.display().to_string());
        v
    }
}

fn scalar_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        x => x.to_string(),
    }
}

/// A TOML argument as JSON with substitutions in its strings; tables are not arguments.
fn to_json(key: &str, v: &toml::Value, subs: &Substitutions) -> Result<serde_json::Value> {
    Ok(match v {
        toml::Value::String(s) => serde_json::Value::String(subs.apply(s)),
        toml::Value::Integer(i) => (*i).into(),
        toml::Value::Float(f) => (*f).into(),
        toml::Value::Boolean(b) => (*b).into(),
        toml::Value::Datetime(d) => d.to_string().into(),
        toml::Value::Array(items) => serde_json::Value::Array(
            items
                .iter()
                .map(|x| match x {
                    toml::Value::Array(_) | toml::Value::Table(_) => {
                        crate::bail!("argument `{key}`: nested arrays and tables are not arguments")
                    }
                    x => to_json(key, x, subs),
                })
                .collect::<Result<Vec<_>>>()?,
        ),
        toml::Value::Table(_) => {
            crate::bail!("argument `{key}`: nested arrays and tables are not arguments")
        }
    })
}

/// Split a step's arguments into the model's settings and the probe's parameters.
fn split_args(
    args: &toml::Table,
    model: Option<&ModelEntry>,
    subs: &Substitutions,
) -> Result<(Option<ModelSpec>, ParamMap)> {
    let mut spec_map = serde_json::Map::new();
    if let Some(m) = model {
        spec_map.insert("model".into(), m.spec.clone().into());
    }
    let mut params = ParamMap::new();
    for (k, v) in args {
        let key = k.replace('-', "_");
        let key = if key == "m" { "model".to_string() } else { key };
        let value = to_json(k, v, subs)?;
        if ModelSpec::KEYS.contains(&key.as_str()) {
            spec_map.insert(key, value);
        } else {
            params.insert(key, value);
        }
    }
    // Model settings without a model (model-free steps) are not a model.
    let spec = if spec_map.contains_key("model") {
        Some(
            serde_json::from_value(serde_json::Value::Object(spec_map))
                .map_err(|e| crate::Error::msg(format!("model settings: {e}")))?,
        )
    } else {
        None
    };
    Ok((spec, params))
}

/// Every step of the suite, models in suite order within each step, steps in suite order.
pub fn plan(suite: &Suite, root: &Path) -> Result<Vec<PlannedStep>> {
    let mut out = vec![];
    for step in &suite.steps {
        if step.per_model {
            for m in &suite.models {
                if let Some(only) = &step.models {
                    if !only.contains(&m.name) {
                        continue;
                    }
                }
                let subs = Substitutions {
                    model: m.name.clone(),
                    model_spec: m.spec.clone(),
                    run: root.display().to_string(),
                };
                let mut table = suite.model_args.clone();
                for (k, v) in &step.args {
                    table.insert(k.clone(), v.clone());
                }
                let id = format!("{}/{}", m.name, step.name);
                let (spec, params) = split_args(&table, Some(m), &subs)
                    .map_err(|e| crate::Error::msg(format!("step `{id}`: {e}")))?;
                // The suite checked that `after` names earlier per-model steps.
                let mut after = vec![];
                for a in &step.after {
                    let dep = format!("{}/{a}", m.name);
                    if !out.iter().any(|p: &PlannedStep| p.id == dep) {
                        crate::bail!(
                            "step `{id}` runs after `{a}`, which does not run on model `{}`",
                            m.name
                        );
                    }
                    after.push(dep);
                }
                out.push(PlannedStep {
                    id,
                    model: Some(m.clone()),
                    probe: step.probe.clone(),
                    spec,
                    params,
                    after,
                    cost: step.cost,
                });
            }
        } else {
            let subs = Substitutions {
                run: root.display().to_string(),
                ..Default::default()
            };
            let (spec, params) = split_args(&step.args, None, &subs)
                .map_err(|e| crate::Error::msg(format!("step `{}`: {e}", step.name)))?;
            // A model-free step after a per-model step needs it on every model.
            let mut after = vec![];
            for a in &step.after {
                after.extend(
                    out.iter()
                        .filter(|p| {
                            p.id == *a || p.id.rsplit_once('/').is_some_and(|(_, s)| s == a)
                        })
                        .map(|p| p.id.clone()),
                );
            }
            out.push(PlannedStep {
                id: step.name.clone(),
                model: None,
                probe: step.probe.clone(),
                spec,
                params,
                after,
                cost: step.cost,
            });
        }
    }
    Ok(out)
}
