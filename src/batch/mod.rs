//! Batch suites: run a TOML list of probes over a list of models into one run directory, with
//! resumable steps, a `batch.json` status record and a static `index.html` report. Steps run
//! in this process through the probe runner ([`crate::probes::run`]); each model loads once.
//!
//! A suite names models and steps; each step is a probe with its parameters:
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
//! `args` are the probe's parameters under its flag names (`seq-len` or `seq_len`); lists may be
//! arrays or comma-separated strings. The model keys (`model`, `dtype`, `device`, `revision`,
//! `tokenizer`, `matmul`) choose how the step's model loads; per-model steps get the suite's
//! model. In string values `{model}` is replaced by the model's name, `{model_spec}` by its spec
//! and `{run}` by the run directory. A multi-word probe (`probe = "sae run"`) writes to the words
//! joined by `-` unless the step sets `name`. An unknown key or probe fails the whole suite
//! before anything runs, naming the known ones.
//!
//! Layout: `RUN/<model>/<step>/` for per-model steps and `RUN/<step>/` for model-free ones, each
//! with the probe's own `manifest.json`. A step runs into the hidden `.<step>.partial` next to
//! its directory, which is renamed into place only when the step succeeded, so a directory with a
//! finished manifest whose files all exist is complete and is skipped on the next run; stale
//! `.partial` directories from an interrupted run are removed before their step reruns.
//!
//! Steps are recorded (in `batch.json` and on the page) in suite order, and run model by model:
//! every step of the first model, then of the second, ..., then the model-free steps. A failed
//! step is recorded with its one-line error (panics are caught) and the others continue. A step
//! may name earlier steps it needs (`after = "heads"` or a list: for a per-model step the same
//! model's step, for a model-free step that step of every model); it fails, naming them, when
//! they are not complete.
//!
//! Shards (cluster runs, [`shard`]): `--shard I/N` runs only shard I's steps (steps joined by
//! `after` stay together; `cost = 3` on a step weighs it when balancing) and records them in
//! `RUN/shards/shard-I-of-N.json`; `--merge` ([`merge`]) writes `batch.json`, the manifest and
//! the page over all shards. Locks: a whole run or a merge holds `RUN/.engram-batch.lock`
//! exclusively, shards hold it shared, and every step is run under its own `.<step>.lock`.
//!
//! - [`suite`]: parsing. [`plan`]: steps with their parameters and model. [`record`]:
//!   `batch.json`. [`run`]: the runner and the run's manifest. [`html`]: `index.html`.
//!   [`shard`]: the assignment of steps to shards. [`merge`]: the merge.

pub mod html;
pub mod merge;
pub mod plan;
pub mod record;
pub mod run;
pub mod shard;
pub mod suite;

pub use html::write_index;
pub use merge::merge_run;
pub use plan::{plan, PlannedStep, Substitutions};
pub use record::{complete_manifest, BatchRecord, StepRecord, StepStatus};
pub use run::{run_suite, BatchOptions};
pub use shard::{Shard, ShardInfo};
pub use suite::{load_suite, model_dir_name, parse_suite, ModelEntry, Step, Suite};

/// The status record at the run root.
pub const BATCH_FILE: &str = "batch.json";
/// The report page at the run root.
pub const INDEX_FILE: &str = crate::report::page::INDEX_FILE;
/// The copy of the suite at the run root.
pub const SUITE_COPY: &str = "suite.toml";
/// The run directory's lock (held exclusively by a whole run or a merge, shared by shards).
pub const RUN_LOCK: &str = ".engram-batch.lock";
/// The shards' records, under the run root.
pub const SHARDS_DIR: &str = "shards";
/// Suffix of the hidden directory a step writes into before it is renamed into place.
pub const PARTIAL_SUFFIX: &str = ".partial";

/// A file-system-safe name: ASCII letters, digits, `.`, `_` and `-`; anything else becomes `-`.
pub fn safe_name(s: &str) -> String {
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

/// One line: runs of whitespace (newlines included) become one space.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
