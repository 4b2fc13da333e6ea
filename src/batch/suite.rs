//! Suite files: models, model arguments and steps.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;

use super::safe_name;
use crate::{Error, Result};

/// A parsed suite file.
#[derive(Debug, Clone, PartialEq)]
pub struct Suite {
    pub name: String,
    pub description: Option<String>,
    pub models: Vec<ModelEntry>,
    /// Arguments added to every per-model step (the step's own args override them).
    pub model_args: toml::Table,
    pub steps: Vec<Step>,
}

/// One model of a suite: `name` is its directory under the run root, `spec` what `--model` gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEntry {
    pub name: String,
    pub spec: String,
}

/// One step of a suite.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The subcommand, possibly several words (`sae run`).
    pub probe: String,
    /// Directory name of the step's outputs.
    pub name: String,
    /// Run once per model (with `--model`) or once in all.
    pub per_model: bool,
    /// Restrict a per-model step to these model names.
    pub models: Option<Vec<String>>,
    pub args: toml::Table,
    /// Names of earlier steps this one needs (`sae eval` after `sae train`): a per-model step
    /// depends on that step of the same model, a model-free step on it for every model. A step
    /// runs in the same shard as everything it needs.
    pub after: Vec<String>,
    /// Relative run time, to balance shards (default 1).
    pub cost: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSuite {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    models: Vec<RawModel>,
    #[serde(default)]
    model_args: toml::Table,
    #[serde(rename = "step", alias = "steps", default)]
    steps: Vec<RawStep>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawModel {
    Spec(String),
    Named { name: String, model: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    probe: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default = "yes")]
    per_model: bool,
    #[serde(default)]
    models: Option<Vec<String>>,
    #[serde(default)]
    args: toml::Table,
    #[serde(default)]
    after: StepNames,
    #[serde(default)]
    cost: Option<f64>,
}

/// `after = "a"` or `after = ["a", "b"]`.
#[derive(Deserialize, Default)]
#[serde(untagged)]
enum StepNames {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl StepNames {
    fn into_vec(self) -> Vec<String> {
        match self {
            StepNames::None => vec![],
            StepNames::One(s) => vec![s],
            StepNames::Many(v) => v,
        }
    }
}

fn yes() -> bool {
    true
}

/// The directory name of a model spec: an alias as is, a path's or repo id's last component
/// (without `.gguf`).
pub fn model_dir_name(spec: &str) -> String {
    let trimmed = spec.trim_end_matches(['/', '\\']);
    let last = trimmed.rsplit(['/', '\\']).next().unwrap_or(trimmed);
    let last = last.strip_suffix(".gguf").unwrap_or(last);
    safe_name(last)
}

/// Parse a suite from TOML text.
pub fn parse_suite(text: &str) -> Result<Suite> {
    let raw: RawSuite = toml::from_str(text).map_err(|e| {
        Error::msg(format!(
            "suite: {}",
            e.to_string().trim().replace('\n', " ")
        ))
    })?;
    let models: Vec<ModelEntry> = raw
        .models
        .into_iter()
        .map(|m| match m {
            RawModel::Spec(spec) => ModelEntry {
                name: model_dir_name(&spec),
                spec,
            },
            RawModel::Named { name, model } => ModelEntry {
                name: safe_name(&name),
                spec: model,
            },
        })
        .collect();
    let mut seen = BTreeSet::new();
    for m in &models {
        if !seen.insert(m.name.clone()) {
            crate::bail!(
                "suite `{}`: two models are named `{}` (give one a name: {{ name = \"...\", model = \"...\" }})",
                raw.name,
                m.name
            );
        }
    }
    let mut steps = vec![];
    let mut names = BTreeSet::new();
    for s in raw.steps {
        let words: Vec<&str> = s.probe.split_whitespace().collect();
        if words.is_empty() {
            crate::bail!("suite `{}`: a step has an empty probe", raw.name);
        }
        let name = safe_name(&s.name.unwrap_or_else(|| words.join("-")));
        if !names.insert((s.per_model, name.clone())) {
            crate::bail!(
                "suite `{}`: two steps write `{name}` (give one a `name`)",
                raw.name
            );
        }
        if !s.per_model && models.iter().any(|m| m.name == name) {
            crate::bail!(
                "suite `{}`: model-free step `{name}` has the name of a model",
                raw.name
            );
        }
        if let Some(only) = &s.models {
            for m in only {
                if !models.iter().any(|x| &x.name == m) {
                    crate::bail!(
                        "suite `{}`: step `{name}` names model `{m}`, which is not in `models`",
                        raw.name
                    );
                }
            }
        }
        for key in s.args.keys() {
            if matches!(key.as_str(), "out" | "o") {
                crate::bail!(
                    "suite `{}`: step `{name}` sets `{key}`; the batch chooses the output directory",
                    raw.name
                );
            }
        }
        let cost = s.cost.unwrap_or(1.0);
        if !(cost.is_finite() && cost > 0.0) {
            crate::bail!(
                "suite `{}`: step `{name}`: cost must be a positive number, got {cost}",
                raw.name
            );
        }
        let after = s.after.into_vec();
        for a in &after {
            let a = safe_name(a);
            let earlier: Vec<&Step> = steps.iter().filter(|x: &&Step| x.name == a).collect();
            match earlier.as_slice() {
                [] => crate::bail!(
                    "suite `{}`: step `{name}` runs after `{a}`, which is not an earlier step",
                    raw.name
                ),
                [x] if s.per_model && !x.per_model => crate::bail!(
                    "suite `{}`: per-model step `{name}` cannot run after model-free step `{a}` \
                     (model-free steps run after every model's steps)",
                    raw.name
                ),
                [_] => {}
                _ => crate::bail!(
                    "suite `{}`: step `{name}` runs after `{a}`, which names both a per-model \
                     and a model-free step (rename one)",
                    raw.name
                ),
            }
        }
        steps.push(Step {
            probe: words.join(" "),
            name,
            per_model: s.per_model,
            models: s.models,
            args: s.args,
            after: after.iter().map(|a| safe_name(a)).collect(),
            cost,
        });
    }
    if steps.is_empty() {
        crate::bail!("suite `{}`: no [[step]]", raw.name);
    }
    if steps.iter().any(|s| s.per_model) && models.is_empty() {
        crate::bail!("suite `{}`: per-model steps but no `models`", raw.name);
    }
    Ok(Suite {
        name: raw.name,
        description: raw.description,
        models,
        model_args: raw.model_args,
        steps,
    })
}

/// Read and parse a suite file.
pub fn load_suite(path: &Path) -> Result<Suite> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_suite(&text).map_err(|e| Error::msg(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_safe() {
        assert_eq!(model_dir_name("smollm2"), "smollm2");
        assert_eq!(model_dir_name("tests/fixtures/llama2/"), "llama2");
        assert_eq!(model_dir_name("/m/gemma-3-270m.gguf"), "gemma-3-270m");
        assert_eq!(model_dir_name("HuggingFaceTB/SmolLM2-135M"), "SmolLM2-135M");
        assert_eq!(safe_name("a b/c"), "a-b-c");
    }
}
