//! Batch suites: run a TOML list of probes over a list of models into one run directory, with
//! resumable steps, a `batch.json` status record and a static `index.html` report.
//!
//! A suite names models and steps; each step is one engram subcommand with its arguments:
//!
//! ```toml
//! name = "smoke"
//! models = ["smollm2", "gemma3", { name = "tiny", model = "tests/fixtures/llama2" }]
//! model_args = { dtype = "f32" }          # added to every per-model step (step args win)
//!
//! [[step]]
//! probe = "heads"
//! args = { seq-len = 30, batch = 4, cmr-table = "notebooks-data/icl-cmr/cmr_crp_avg_20_11.npy" }
//!
//! [[step]]
//! probe = "cmr-fit"        # model-free steps run once
//! per_model = false
//! args = { crp = "notebooks-data/icl-cmr/gpt2-small.CRP_scores.npy" }
//! ```
//!
//! Arguments map to `--key value` (`_` in keys becomes `-`); `true` becomes a bare `--key`,
//! `false` drops it; an array repeats `--key v` per element. Per-model steps get `--model SPEC`;
//! every step gets `--out DIR`. In string values `{model}` is replaced by the model's name,
//! `{model_spec}` by its spec and `{run}` by the run directory. A multi-word probe
//! (`probe = "sae run"`) is a nested subcommand; its directory is the words joined by `-`
//! unless the step sets `name`.
//!
//! Layout: `RUN/<model>/<step>/` for per-model steps and `RUN/<step>/` for model-free ones, each
//! with the probe's own `manifest.json`. A step runs into the hidden `.<step>.partial` next to
//! its directory, which is renamed into place only when the step succeeded, so a directory with a
//! finished manifest whose files all exist is complete and is skipped on the next run; stale
//! `.partial` directories from an interrupted run are removed before their step reruns.
//!
//! Steps run in-process through [`crate::cli`]'s parser (argument errors are caught before the
//! step starts, panics are caught and recorded), one after another; a failed step is recorded in
//! `batch.json` with its one-line error and the others continue.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::CommandFactory;
use serde::{Deserialize, Serialize};

use crate::progress::ProgressMode;
use crate::report::manifest::{Manifest, MANIFEST_FILE};
use crate::report::{now_rfc3339, write_atomic};
use crate::{Error, Result};

/// The status record at the run root.
pub const BATCH_FILE: &str = "batch.json";
/// The report page at the run root.
pub const INDEX_FILE: &str = "index.html";
/// The copy of the suite at the run root.
pub const SUITE_COPY: &str = "suite.toml";
/// Suffix of the hidden directory a step writes into before it is renamed into place.
pub const PARTIAL_SUFFIX: &str = ".partial";

// ---------------------------------------------------------------------------------------------
// Suite
// ---------------------------------------------------------------------------------------------

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
}

fn yes() -> bool {
    true
}

/// A file-system-safe name: ASCII letters, digits, `.`, `_` and `-`; anything else becomes `-`.
fn safe_name(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let out = out.trim_matches(|c| c == '.' || c == '-').to_string();
    if out.is_empty() {
        "unnamed".to_string()
    } else {
        out
    }
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
        steps.push(Step {
            probe: words.join(" "),
            name,
            per_model: s.per_model,
            models: s.models,
            args: s.args,
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

/// `{ key = value }` → `--key value` arguments (see the module docs for the rules).
pub fn map_args(args: &toml::Table, subs: &Substitutions) -> Result<Vec<String>> {
    let mut out = vec![];
    for (key, value) in args {
        let flag = format!("--{}", key.replace('_', "-"));
        let scalar = |v: &toml::Value| -> Result<Option<String>> {
            Ok(match v {
                toml::Value::String(s) => Some(subs.apply(s)),
                toml::Value::Integer(i) => Some(i.to_string()),
                toml::Value::Float(f) => Some(f.to_string()),
                toml::Value::Datetime(d) => Some(d.to_string()),
                toml::Value::Boolean(_) | toml::Value::Array(_) | toml::Value::Table(_) => {
                    crate::bail!("argument `{key}`: nested arrays and tables are not arguments")
                }
            })
        };
        match value {
            toml::Value::Boolean(true) => out.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                for v in items {
                    if let Some(s) = scalar(v)? {
                        out.push(flag.clone());
                        out.push(s);
                    }
                }
            }
            v => {
                if let Some(s) = scalar(v)? {
                    out.push(flag);
                    out.push(s);
                }
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Plan
// ---------------------------------------------------------------------------------------------

/// One step of one model (or a model-free step), ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedStep {
    /// `model/step` or `step`: also the directory relative to the run root.
    pub id: String,
    pub model: Option<ModelEntry>,
    pub probe: String,
    /// The arguments after `engram` (probe words, mapped args, `--model`), without `--out`.
    pub args: Vec<String>,
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

    /// The full command line with `--out DIR`.
    pub fn command_line(&self, out: &Path) -> Vec<String> {
        let mut v = self.args.clone();
        v.push("--out".into());
        v.push(out.display().to_string());
        v
    }
}

/// Every step of the suite, models in suite order within each step, steps in suite order.
pub fn plan(suite: &Suite, root: &Path) -> Result<Vec<PlannedStep>> {
    let mut out = vec![];
    for step in &suite.steps {
        let words: Vec<String> = step.probe.split_whitespace().map(String::from).collect();
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
                let has_model = table.keys().any(|k| matches!(k.as_str(), "model" | "m"));
                let mut args = words.clone();
                args.extend(map_args(&table, &subs)?);
                if !has_model {
                    args.push("--model".into());
                    args.push(m.spec.clone());
                }
                out.push(PlannedStep {
                    id: format!("{}/{}", m.name, step.name),
                    model: Some(m.clone()),
                    probe: step.probe.clone(),
                    args,
                });
            }
        } else {
            let subs = Substitutions {
                run: root.display().to_string(),
                ..Default::default()
            };
            let mut args = words;
            args.extend(map_args(&step.args, &subs)?);
            out.push(PlannedStep {
                id: step.name.clone(),
                model: None,
                probe: step.probe.clone(),
                args,
            });
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Status record
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    /// Ran and completed in this invocation.
    Ok,
    /// Already complete on disk; not rerun.
    Skipped,
    /// Ran and failed; `error` says why.
    Failed,
    /// Not run in this invocation (`--only-model`, `--dry-run`) and not complete on disk.
    Pending,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Ok => "ok",
            StepStatus::Skipped => "skipped",
            StepStatus::Failed => "failed",
            StepStatus::Pending => "pending",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub id: String,
    pub model: Option<String>,
    pub model_spec: Option<String>,
    pub probe: String,
    /// Directory relative to the run root.
    pub dir: String,
    /// The command line (after `engram`), `--out` pointing at the final directory.
    pub command: Vec<String>,
    pub status: StepStatus,
    /// Wall-clock seconds of this invocation's run of the step (none when not run).
    pub seconds: Option<f64>,
    /// The one-line error of a failed step.
    pub error: Option<String>,
}

/// `batch.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    pub suite: String,
    pub suite_file: String,
    pub engram_version: String,
    pub git_commit: String,
    pub only_model: Option<String>,
    pub started: String,
    pub finished: Option<String>,
    pub seconds: f64,
    pub steps: Vec<StepRecord>,
}

impl BatchRecord {
    pub fn count(&self, s: StepStatus) -> usize {
        self.steps.iter().filter(|x| x.status == s).count()
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::msg(format!("{}: {e}", path.display())))
    }

    fn write(&self, root: &Path) -> Result<()> {
        let mut json = serde_json::to_string_pretty(self)
            .map_err(|e| Error::msg(format!("serializing {BATCH_FILE}: {e}")))?;
        json.push('\n');
        write_atomic(&root.join(BATCH_FILE), json.as_bytes())
    }
}

/// The step's manifest if the directory is complete: a parsable manifest with `finished` set and
/// every listed file present.
pub fn complete_manifest(dir: &Path) -> Option<Manifest> {
    let m = Manifest::read(&dir.join(MANIFEST_FILE)).ok()?;
    m.finished.as_ref()?;
    if m.files.iter().all(|f| dir.join(f).exists()) {
        Some(m)
    } else {
        None
    }
}

// ---------------------------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------------------------

/// What `engram batch` was asked to do.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    pub suite: PathBuf,
    /// Run root; default `runs/<suite name>`.
    pub out: Option<PathBuf>,
    pub only_model: Option<String>,
    pub dry_run: bool,
    pub progress: ProgressMode,
}

/// `engram batch SUITE.toml --out runs/NAME`.
#[derive(clap::Args, Debug, Clone)]
pub struct BatchArgs {
    /// The suite file (e.g. probes/smoke.toml)
    pub suite: PathBuf,
    /// Run directory (default: runs/<suite name>); rerunning into it resumes, skipping complete steps
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
    /// Run only the steps of this model (its name or spec) and the model-free steps
    #[arg(long)]
    pub only_model: Option<String>,
    /// Print the plan and check every step's arguments against this build, without running
    #[arg(long)]
    pub dry_run: bool,
}

/// Run `engram batch` from its command-line arguments.
pub fn command(args: &BatchArgs, progress: &crate::progress::Progress) -> Result<()> {
    cmd(&BatchOptions {
        suite: args.suite.clone(),
        out: args.out.clone(),
        only_model: args.only_model.clone(),
        dry_run: args.dry_run,
        progress: progress.mode,
    })
}

/// The subcommands of this build (for a clear error on unknown probes).
pub fn known_commands() -> Vec<String> {
    crate::cli::Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect()
}

/// Check a command line against the CLI parser without running it; the error is one line. A
/// panic of the parser (clap's debug assertions on a broken subcommand definition) is an error.
fn validate(argv: &[String]) -> Result<()> {
    match std::panic::catch_unwind(|| validate_inner(argv)) {
        Ok(r) => r,
        Err(p) => Err(Error::msg(format!(
            "the command line parser panicked: {}",
            one_line(&panic_message(&*p))
        ))),
    }
}

fn validate_inner(argv: &[String]) -> Result<()> {
    // The subcommand: the first word after the global flags (--quiet, --json-progress).
    let first = argv
        .iter()
        .skip(1)
        .map(String::as_str)
        .find(|a| !a.starts_with('-'))
        .unwrap_or("");
    if first == "batch" {
        crate::bail!("a batch step cannot run `batch`");
    }
    let known = known_commands();
    if !known.iter().any(|k| k == first) {
        crate::bail!(
            "unknown probe `{first}`: this build has no such command (it has: {})",
            known
                .iter()
                .filter(|k| k.as_str() != "batch" && k.as_str() != "help")
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    match <crate::cli::Cli as clap::Parser>::try_parse_from(argv) {
        Ok(_) => Ok(()),
        Err(e) => {
            let text = e.render().to_string();
            let line = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid arguments");
            let line = line.trim().trim_start_matches("error:").trim();
            Err(Error::msg(format!(
                "{line} (engram {})",
                argv[1..].join(" ")
            )))
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

fn global_flags(mode: ProgressMode) -> Vec<String> {
    match mode {
        ProgressMode::Quiet => vec!["--quiet".into()],
        ProgressMode::JsonLines => vec!["--json-progress".into()],
        ProgressMode::Bar => vec![],
    }
}

/// Run one planned step into its partial directory and rename it into place.
fn run_step(step: &PlannedStep, root: &Path, suite: &str, mode: ProgressMode) -> Result<()> {
    let dir = step.dir(root);
    let partial = step.partial_dir(root);
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
    }
    let mut argv = vec!["engram".to_string()];
    argv.extend(global_flags(mode));
    argv.extend(step.command_line(&partial));
    validate(&argv)?;
    std::fs::create_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        crate::cli::run(argv.iter().cloned())
    }));
    let result = match result {
        Ok(r) => r,
        Err(p) => Err(Error::msg(format!("panicked: {}", panic_message(&*p)))),
    };
    let finish = result.and_then(|()| {
        // Provenance: the batch's command line in the step's manifest (or a manifest of our own
        // for a command that writes none).
        let mpath = partial.join(MANIFEST_FILE);
        let mut m = if mpath.is_file() {
            Manifest::read(&mpath)?
        } else {
            let mut m = Manifest::new(step.probe.clone(), serde_json::json!({ "args": step.args }));
            m.note("manifest written by `engram batch`: the command wrote none");
            // Every file below the step directory (e.g. `sae run` writes `eval/*.png`), so the
            // index finds the charts of sub-directories too.
            let mut files = vec![];
            list_files(&partial, Path::new(""), &mut files)?;
            files.sort();
            for f in files {
                m.add_file(f);
            }
            m
        };
        m.note(format!(
            "batch: suite `{suite}`, step `{}`: engram {}",
            step.id,
            step.command_line(&dir).join(" ")
        ));
        m.write(&partial)?;
        if dir.exists() {
            // An incomplete directory (complete ones are skipped before we get here).
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        std::fs::rename(&partial, &dir).map_err(|e| Error::io(&dir, e))
    });
    if finish.is_err() && partial.exists() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    finish
}

/// Relative paths (with `/`) of every regular file below `dir`.
fn list_files(dir: &Path, rel: &Path, out: &mut Vec<String>) -> Result<()> {
    let here = dir.join(rel);
    for e in std::fs::read_dir(&here).map_err(|e| Error::io(&here, e))? {
        let e = e.map_err(|e| Error::io(&here, e))?;
        let r = rel.join(e.file_name());
        let ty = e.file_type().map_err(|err| Error::io(e.path(), err))?;
        if ty.is_dir() {
            list_files(dir, &r, out)?;
        } else if ty.is_file() {
            out.push(r.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

fn emit(mode: ProgressMode, i: usize, n: usize, rec: &StepRecord) {
    let secs = rec.seconds.map_or(String::new(), |s| format!(" {s:.1}s"));
    let err = rec
        .error
        .as_ref()
        .map_or(String::new(), |e| format!(": {e}"));
    println!(
        "[{}/{n}] {} {}{secs}{err}",
        i + 1,
        rec.id,
        rec.status.as_str()
    );
    if mode == ProgressMode::JsonLines {
        eprintln!(
            "{}",
            serde_json::json!({"event": "step", "index": i + 1, "total": n, "id": rec.id,
                "status": rec.status, "seconds": rec.seconds, "error": rec.error})
        );
    }
}

/// Run a suite: every selected step that is not complete on disk, then `batch.json` and
/// `index.html`. Returns the record; the caller turns failed steps into an error
/// (see [`cmd`]).
pub fn run_suite(opts: &BatchOptions) -> Result<BatchRecord> {
    let suite = load_suite(&opts.suite)?;
    let root = opts
        .out
        .clone()
        .unwrap_or_else(|| Path::new("runs").join(safe_name(&suite.name)));
    if let Some(m) = &opts.only_model {
        if !suite.models.iter().any(|x| &x.name == m || &x.spec == m) {
            crate::bail!(
                "--only-model {m}: suite `{}` has models {}",
                suite.name,
                suite
                    .models
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let steps = plan(&suite, &root)?;
    let selected = |s: &PlannedStep| match (&opts.only_model, &s.model) {
        (Some(only), Some(m)) => &m.name == only || &m.spec == only,
        _ => true,
    };
    let t0 = Instant::now();
    let mut record = BatchRecord {
        suite: suite.name.clone(),
        suite_file: opts.suite.display().to_string(),
        engram_version: env!("CARGO_PKG_VERSION").to_string(),
        git_commit: env!("ENGRAM_GIT_COMMIT").to_string(),
        only_model: opts.only_model.clone(),
        started: now_rfc3339(),
        finished: None,
        seconds: 0.0,
        steps: steps
            .iter()
            .map(|s| StepRecord {
                id: s.id.clone(),
                model: s.model.as_ref().map(|m| m.name.clone()),
                model_spec: s.model.as_ref().map(|m| m.spec.clone()),
                probe: s.probe.clone(),
                dir: s.id.clone(),
                command: s.command_line(&s.dir(&root)),
                status: if complete_manifest(&s.dir(&root)).is_some() {
                    StepStatus::Skipped
                } else {
                    StepStatus::Pending
                },
                seconds: None,
                error: None,
            })
            .collect(),
    };
    if opts.dry_run {
        // Check every command line against this build's parser, without running anything.
        let mut invalid = vec![];
        for (s, r) in steps.iter().zip(&record.steps) {
            let mut argv = vec!["engram".to_string()];
            argv.extend(s.command_line(&s.partial_dir(&root)));
            let check = validate(&argv);
            let what = if let Err(e) = &check {
                invalid.push(format!("{}: {}", s.id, one_line(&e.to_string())));
                "INVALID"
            } else if r.status == StepStatus::Skipped {
                "skip (complete)"
            } else if !selected(s) {
                "not selected"
            } else {
                "run"
            };
            println!("{:<16} {:<28} engram {}", what, s.id, r.command.join(" "));
        }
        if !invalid.is_empty() {
            crate::bail!(
                "suite `{}`: {} invalid step(s): {}",
                suite.name,
                invalid.len(),
                invalid.join("; ")
            );
        }
        return Ok(record);
    }
    std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
    let suite_text = std::fs::read(&opts.suite).map_err(|e| Error::io(&opts.suite, e))?;
    write_atomic(&root.join(SUITE_COPY), &suite_text)?;
    record.write(&root)?;
    let n = steps.len();
    for (i, step) in steps.iter().enumerate() {
        if record.steps[i].status == StepStatus::Skipped {
            emit(opts.progress, i, n, &record.steps[i]);
            continue;
        }
        if !selected(step) {
            continue;
        }
        let t = Instant::now();
        let r = run_step(step, &root, &suite.name, opts.progress);
        let rec = &mut record.steps[i];
        rec.seconds = Some(t.elapsed().as_secs_f64());
        match r {
            Ok(()) => rec.status = StepStatus::Ok,
            Err(e) => {
                rec.status = StepStatus::Failed;
                rec.error = Some(one_line(&e.to_string()));
            }
        }
        emit(opts.progress, i, n, rec);
        record.seconds = t0.elapsed().as_secs_f64();
        record.write(&root)?;
        // The page shows the run so far (rewritten after every step).
        write_index(&root, &suite, &record)?;
    }
    record.finished = Some(now_rfc3339());
    record.seconds = t0.elapsed().as_secs_f64();
    record.write(&root)?;
    write_root_manifest(&root, &suite, &record, opts)?;
    write_index(&root, &suite, &record)?;
    Ok(record)
}

/// `RUN/manifest.json`: the batch itself (suite, build, per-step timings of this invocation,
/// the files at the root and every complete step's manifest).
fn write_root_manifest(
    root: &Path,
    suite: &Suite,
    record: &BatchRecord,
    opts: &BatchOptions,
) -> Result<()> {
    let mut m = Manifest::new(
        "batch",
        serde_json::json!({
            "suite": suite.name,
            "suite_file": opts.suite.display().to_string(),
            "models": suite.models.iter().map(|m| serde_json::json!({"name": m.name, "model": m.spec})).collect::<Vec<_>>(),
            "only_model": opts.only_model,
            "steps": record.steps.iter().map(|s| serde_json::json!({"id": s.id, "command": s.command})).collect::<Vec<_>>(),
        }),
    );
    m.started = record.started.clone();
    m.finished = record.finished.clone();
    for s in &record.steps {
        if let Some(sec) = s.seconds {
            m.record_timing(&s.id, sec);
        }
    }
    m.add_file(SUITE_COPY);
    m.add_file(BATCH_FILE);
    m.add_file(INDEX_FILE);
    for s in &record.steps {
        if complete_manifest(&root.join(&s.dir)).is_some() {
            m.add_file(format!("{}/{MANIFEST_FILE}", s.dir));
        }
    }
    m.note(format!(
        "{} ok, {} skipped (complete from an earlier run), {} failed, {} pending",
        record.count(StepStatus::Ok),
        record.count(StepStatus::Skipped),
        record.count(StepStatus::Failed),
        record.count(StepStatus::Pending)
    ));
    for s in record
        .steps
        .iter()
        .filter(|s| s.status == StepStatus::Failed)
    {
        m.note(format!(
            "failed: {}: {}",
            s.id,
            s.error.as_deref().unwrap_or("")
        ));
    }
    m.write(root)?;
    Ok(())
}

/// `engram batch`: run the suite, print a summary, and fail when any step failed.
pub fn cmd(opts: &BatchOptions) -> Result<()> {
    let r = run_suite(opts)?;
    if opts.dry_run {
        return Ok(());
    }
    let root = opts
        .out
        .clone()
        .unwrap_or_else(|| Path::new("runs").join(safe_name(&r.suite)));
    println!(
        "batch `{}`: {} ok, {} skipped, {} failed, {} pending in {:.1}s → {}",
        r.suite,
        r.count(StepStatus::Ok),
        r.count(StepStatus::Skipped),
        r.count(StepStatus::Failed),
        r.count(StepStatus::Pending),
        r.seconds,
        root.join(INDEX_FILE).display()
    );
    let failed: Vec<&str> = r
        .steps
        .iter()
        .filter(|s| s.status == StepStatus::Failed)
        .map(|s| s.id.as_str())
        .collect();
    if !failed.is_empty() {
        crate::bail!(
            "batch `{}`: {} of {} steps failed ({}); see {}",
            r.suite,
            failed.len(),
            r.steps.len(),
            failed.join(", "),
            root.join(BATCH_FILE).display()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// index.html
// ---------------------------------------------------------------------------------------------

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A relative URL from path components (percent-encoding what is not URL-safe).
fn rel_url(path: &str) -> String {
    let mut o = String::new();
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-' | b'~') {
            o.push(b as char);
        } else {
            let _ = write!(o, "%{b:02X}");
        }
    }
    o
}

fn anchor(id: &str) -> String {
    format!("step-{}", safe_name(&id.replace('/', "--")))
}

/// Key numbers from a `heads.parquet` (heads and cmr-fit): top induction heads and CMR shares.
fn heads_summary(path: &Path) -> Option<String> {
    let df = crate::report::read_parquet(path).ok()?;
    let col_f64 = |name: &str| -> Option<Vec<f64>> {
        let c = df
            .column(name)
            .ok()?
            .cast(&polars::prelude::DataType::Float64)
            .ok()?;
        Some(
            c.f64()
                .ok()?
                .iter()
                .map(|x| x.unwrap_or(f64::NAN))
                .collect(),
        )
    };
    let layer = col_f64("layer")?;
    let head = col_f64("head")?;
    let induction = col_f64("induction_score")?;
    let dist = col_f64("cmr_distance")?;
    let like = col_f64("cmr_like")?;
    let strict = col_f64("cmr_strict")?;
    let n_valid = dist.iter().filter(|d| !d.is_nan()).count().max(1) as f64;
    let share = |v: &[f64]| {
        v.iter()
            .zip(&dist)
            .filter(|(x, d)| !d.is_nan() && **x > 0.5)
            .count() as f64
            / n_valid
    };
    let mut html = String::new();
    let _ = write!(
        html,
        "<p class=\"key\">{} heads; CMR-like (distance &lt; 0.5): <b>{:.1}%</b>; strict (&lt; 0.1): <b>{:.1}%</b></p>",
        layer.len(),
        share(&like) * 100.0,
        share(&strict) * 100.0
    );
    // Share per layer.
    let n_layers = layer.iter().cloned().fold(-1.0f64, f64::max) as i64 + 1;
    if n_layers > 0 {
        let mut per = vec![(0usize, 0usize); n_layers as usize];
        for ((l, x), d) in layer.iter().zip(&like).zip(&dist) {
            if !d.is_nan() && *l >= 0.0 {
                let e = &mut per[*l as usize];
                e.1 += 1;
                if *x > 0.5 {
                    e.0 += 1;
                }
            }
        }
        let s: Vec<String> = per
            .iter()
            .map(|(a, b)| {
                if *b == 0 {
                    "–".into()
                } else {
                    format!("{:.0}", 100.0 * *a as f64 / *b as f64)
                }
            })
            .collect();
        let _ = write!(
            html,
            "<p class=\"key\">% CMR-like per layer: {}</p>",
            esc(&s.join(" "))
        );
    }
    let mut idx: Vec<usize> = (0..layer.len())
        .filter(|&i| induction[i].is_finite())
        .collect();
    let (title, by_induction) = if idx.is_empty() {
        idx = (0..layer.len()).filter(|&i| dist[i].is_finite()).collect();
        idx.sort_by(|&a, &b| dist[a].total_cmp(&dist[b]));
        ("Most CMR-like heads", false)
    } else {
        idx.sort_by(|&a, &b| induction[b].total_cmp(&induction[a]));
        ("Top-5 induction heads", true)
    };
    if !idx.is_empty() {
        let _ = write!(
            html,
            "<table class=\"num\"><caption>{title}</caption><tr><th>head</th>{}<th>CMR distance</th></tr>",
            if by_induction { "<th>induction</th>" } else { "" }
        );
        for &i in idx.iter().take(5) {
            let _ = write!(
                html,
                "<tr><td>L{}H{}</td>{}<td>{:.3}</td></tr>",
                layer[i] as i64,
                head[i] as i64,
                if by_induction {
                    format!("<td>{:.3}</td>", induction[i])
                } else {
                    String::new()
                },
                dist[i]
            );
        }
        html.push_str("</table>");
    }
    Some(html)
}

fn json_compact(v: &serde_json::Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn step_section(root: &Path, rec: &StepRecord, html: &mut String) {
    let dir = root.join(&rec.dir);
    let manifest = complete_manifest(&dir);
    let _ = write!(
        html,
        "<section id=\"{}\"><h3>{} <span class=\"st {}\">{}</span></h3>",
        anchor(&rec.id),
        esc(&rec.id),
        rec.status.as_str(),
        rec.status.as_str()
    );
    let _ = write!(
        html,
        "<p class=\"cmd\"><code>engram {}</code></p>",
        esc(&rec.command.join(" "))
    );
    if let Some(e) = &rec.error {
        let _ = write!(html, "<p class=\"err\">error: {}</p>", esc(e));
    }
    let Some(m) = manifest else {
        html.push_str("<p>No complete outputs.</p></section>");
        return;
    };
    let total: f64 = m.timings.iter().map(|t| t.seconds).sum();
    let timings: Vec<String> = m
        .timings
        .iter()
        .map(|t| format!("{} {:.2}s", t.step, t.seconds))
        .collect();
    let _ = write!(
        html,
        "<p>command <b>{}</b>; started {}; finished {}; timings: {} (Σ {:.1}s){}</p>",
        esc(&m.command),
        esc(&m.started),
        esc(m.finished.as_deref().unwrap_or("")),
        esc(&timings.join(", ")),
        total,
        rec.seconds
            .map_or(String::new(), |s| format!("; wall {s:.1}s in this batch"))
    );
    if let Some(model) = &m.model {
        let _ = write!(
            html,
            "<p>model <code>{}</code> ({}, {}), sha256 <code>{}</code></p>",
            esc(&model.source),
            esc(&model.arch),
            esc(&model.dtype),
            esc(model.sha256.as_deref().unwrap_or("–"))
        );
    }
    if m.files.iter().any(|f| f == "heads.parquet") {
        if let Some(s) = heads_summary(&dir.join("heads.parquet")) {
            html.push_str(&s);
        }
    }
    let files: Vec<&String> = m.files.iter().filter(|f| dir.join(f).is_file()).collect();
    let url = |f: &str| rel_url(&format!("{}/{}", rec.dir, f));
    // Charts: every PNG, linked to its SVG when there is one.
    let pngs: Vec<&&String> = files.iter().filter(|f| f.ends_with(".png")).collect();
    if !pngs.is_empty() {
        html.push_str("<div class=\"charts\">");
        for f in pngs {
            let svg = format!("{}.svg", f.trim_end_matches(".png"));
            let target = if dir.join(&svg).is_file() {
                url(&svg)
            } else {
                url(f)
            };
            let _ = write!(
                html,
                "<figure><a href=\"{target}\"><img src=\"{}\" alt=\"{}\" loading=\"lazy\"></a><figcaption>{}</figcaption></figure>",
                url(f),
                esc(f),
                esc(f)
            );
        }
        html.push_str("</div>");
    }
    html.push_str("<details><summary>files, parameters and notes</summary><ul class=\"files\">");
    let _ = write!(
        html,
        "<li><a href=\"{}\">{MANIFEST_FILE}</a></li>",
        url(MANIFEST_FILE)
    );
    for f in &files {
        let _ = write!(html, "<li><a href=\"{}\">{}</a></li>", url(f), esc(f));
    }
    html.push_str("</ul>");
    let _ = write!(
        html,
        "<p>params: <code>{}</code>{}</p>",
        esc(&json_compact(&m.params)),
        m.seed.map_or(String::new(), |s| format!("; seed {s}"))
    );
    if !m.notes.is_empty() {
        html.push_str("<ul class=\"notes\">");
        for n in &m.notes {
            let _ = write!(html, "<li>{}</li>", esc(n));
        }
        html.push_str("</ul>");
    }
    html.push_str("</details></section>");
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}\
h1{margin-bottom:.2em}table{border-collapse:collapse;margin:.5em 0}\
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}\
.st{font-size:.75em;padding:.1em .5em;border-radius:.3em;color:#fff;background:#888}\
.st.ok,.st.skipped{background:#2a7}.st.failed{background:#c33}.st.pending{background:#999}\
.err{color:#c33;font-family:monospace}.cmd code{font-size:.85em;word-break:break-all}\
.charts{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0;width:380px}\
figure img{width:100%;border:1px solid #ddd}figcaption{font-size:.8em;color:#555}\
section{border-top:1px solid #ddd;margin-top:1.5em}.key{font-size:1.05em}";

/// Write `RUN/index.html`: the suite's status, a model × step overview, and per step its charts,
/// key numbers, parameters, notes and timings. All links are relative and point at existing files.
pub fn write_index(root: &Path, suite: &Suite, record: &BatchRecord) -> Result<PathBuf> {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>engram batch: {}</title><style>{CSS}</style></head><body>\n",
        esc(&suite.name)
    );
    let _ = write!(html, "<h1>engram batch: {}</h1>", esc(&suite.name));
    if let Some(d) = &suite.description {
        let _ = write!(html, "<p>{}</p>", esc(d));
    }
    let _ = writeln!(
        html,
        "<p>{} ok, {} skipped (complete from an earlier run), {} failed, {} pending; {:.1}s; started {}, finished {}; engram {} ({}). <a href=\"{}\">{SUITE_COPY}</a> · <a href=\"{}\">{BATCH_FILE}</a>{}</p>",
        record.count(StepStatus::Ok),
        record.count(StepStatus::Skipped),
        record.count(StepStatus::Failed),
        record.count(StepStatus::Pending),
        record.seconds,
        esc(&record.started),
        esc(record.finished.as_deref().unwrap_or("–")),
        esc(&record.engram_version),
        esc(&record.git_commit),
        rel_url(SUITE_COPY),
        rel_url(BATCH_FILE),
        if root.join(MANIFEST_FILE).is_file() {
            format!(" · <a href=\"{}\">{MANIFEST_FILE}</a>", rel_url(MANIFEST_FILE))
        } else {
            String::new()
        }
    );
    // Overview: rows = models (+ model-free), columns = steps.
    let cell = |id: &str| -> String {
        match record.steps.iter().find(|s| s.id == id) {
            Some(s) => format!(
                "<td><a href=\"#{}\"><span class=\"st {}\">{}</span></a>{}</td>",
                anchor(id),
                s.status.as_str(),
                s.status.as_str(),
                s.seconds.map_or(String::new(), |x| format!(" {x:.1}s"))
            ),
            None => "<td>–</td>".to_string(),
        }
    };
    let per_model: Vec<&Step> = suite.steps.iter().filter(|s| s.per_model).collect();
    if !per_model.is_empty() {
        html.push_str("<table><tr><th>model</th>");
        for s in &per_model {
            let _ = write!(html, "<th>{}</th>", esc(&s.name));
        }
        html.push_str("</tr>");
        for m in &suite.models {
            let _ = write!(
                html,
                "<tr><th>{} <small><code>{}</code></small></th>",
                esc(&m.name),
                esc(&m.spec)
            );
            for s in &per_model {
                html.push_str(&cell(&format!("{}/{}", m.name, s.name)));
            }
            html.push_str("</tr>");
        }
        html.push_str("</table>\n");
    }
    let free: Vec<&Step> = suite.steps.iter().filter(|s| !s.per_model).collect();
    if !free.is_empty() {
        html.push_str("<table><tr><th>model-free step</th><th>status</th></tr>");
        for s in &free {
            let _ = write!(html, "<tr><th>{}</th>{}</tr>", esc(&s.name), cell(&s.name));
        }
        html.push_str("</table>\n");
    }
    for m in &suite.models {
        let recs: Vec<&StepRecord> = record
            .steps
            .iter()
            .filter(|s| s.model.as_deref() == Some(m.name.as_str()))
            .collect();
        if recs.is_empty() {
            continue;
        }
        let _ = write!(html, "<h2>{}</h2>", esc(&m.name));
        for r in recs {
            step_section(root, r, &mut html);
        }
    }
    let free: Vec<&StepRecord> = record.steps.iter().filter(|s| s.model.is_none()).collect();
    if !free.is_empty() {
        html.push_str("<h2>Model-free steps</h2>");
        for r in free {
            step_section(root, r, &mut html);
        }
    }
    html.push_str("\n</body></html>\n");
    let path = root.join(INDEX_FILE);
    write_atomic(&path, html.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_nested_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("eval/deep")).unwrap();
        for f in ["a.parquet", "eval/r2.png", "eval/deep/x.json"] {
            std::fs::write(d.path().join(f), "x").unwrap();
        }
        let mut out = vec![];
        list_files(d.path(), Path::new(""), &mut out).unwrap();
        out.sort();
        assert_eq!(out, ["a.parquet", "eval/deep/x.json", "eval/r2.png"]);
    }

    #[test]
    fn names_are_safe() {
        assert_eq!(model_dir_name("smollm2"), "smollm2");
        assert_eq!(model_dir_name("tests/fixtures/llama2/"), "llama2");
        assert_eq!(model_dir_name("/m/gemma-3-270m.gguf"), "gemma-3-270m");
        assert_eq!(model_dir_name("HuggingFaceTB/SmolLM2-135M"), "SmolLM2-135M");
        assert_eq!(safe_name("a b/c"), "a-b-c");
        assert_eq!(rel_url("a b/c.png"), "a%20b/c.png");
        assert_eq!(esc("<a href=\"x\">&"), "&lt;a href=&quot;x&quot;&gt;&amp;");
    }
}
