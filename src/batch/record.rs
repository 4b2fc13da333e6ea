//! `batch.json`: the status of every step of a run.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::shard::ShardInfo;
use super::BATCH_FILE;
use crate::report::manifest::{Manifest, MANIFEST_FILE};
use crate::report::write_atomic;
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    /// Ran and completed in this invocation.
    Ok,
    /// Already complete on disk; not rerun.
    Skipped,
    /// Ran and failed; `error` says why.
    Failed,
    /// Not run in this invocation (`--dry-run`, or an interrupted run) and not complete on disk.
    Pending,
    /// Not run: `--only-model` chose other models.
    Deselected,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Ok => "ok",
            StepStatus::Skipped => "skipped",
            StepStatus::Failed => "failed",
            StepStatus::Pending => "pending",
            StepStatus::Deselected => "deselected",
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
    /// The equivalent command line (after `engram`), `--out` pointing at the final directory.
    pub command: Vec<String>,
    /// The probe's parameters as given in the suite (defaults are in the step's manifest).
    #[serde(default)]
    pub params: serde_json::Value,
    pub status: StepStatus,
    /// Wall-clock seconds of this invocation's run of the step (none when not run).
    pub seconds: Option<f64>,
    /// The one-line error of a failed step.
    pub error: Option<String>,
    /// The shard (`I/N`) the step belongs to, in sharded runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// A skipped step whose outputs were made with other parameters than the suite now gives:
    /// `key: ran VALUE, suite VALUE` per difference (the outputs are the earlier run's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stale: Vec<String>,
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
    /// Sharded runs: where each shard ran (one entry in a shard's own record, every shard's in
    /// the merged `batch.json`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardInfo>,
}

impl BatchRecord {
    pub fn count(&self, s: StepStatus) -> usize {
        self.steps.iter().filter(|x| x.status == s).count()
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::msg(format!("{}: {e}", path.display())))
    }

    /// Write `root/batch.json`.
    pub fn write(&self, root: &Path) -> Result<()> {
        self.write_to(&root.join(BATCH_FILE))
    }

    /// Write the record to `path` (a shard's record under `RUN/shards/`).
    pub fn write_to(&self, path: &Path) -> Result<()> {
        let mut json = serde_json::to_string_pretty(self)
            .map_err(|e| Error::msg(format!("serializing {}: {e}", path.display())))?;
        json.push('\n');
        write_atomic(path, json.as_bytes())
    }
}

/// The step's manifest if the directory is complete: a parsable manifest with `finished` set and
/// every listed file present.
/// The parameters in which the run recorded in a complete step's manifest (`ran`) differs from
/// what the suite now asks for (`asked`, the probe's full parameters): `key: ran X, suite Y`.
/// Keys the earlier run did not record (parameters added since) are not differences.
pub fn stale_params(ran: &serde_json::Value, asked: &serde_json::Value) -> Vec<String> {
    let (Some(ran), Some(asked)) = (ran.as_object(), asked.as_object()) else {
        return vec![];
    };
    asked
        .iter()
        .filter_map(|(k, v)| {
            let r = ran.get(k)?;
            (r != v).then(|| format!("{k}: ran {r}, suite {v}"))
        })
        .collect()
}

pub fn complete_manifest(dir: &Path) -> Option<Manifest> {
    let m = Manifest::read(&dir.join(MANIFEST_FILE)).ok()?;
    m.finished.as_ref()?;
    if m.files.iter().all(|f| dir.join(f).exists()) {
        Some(m)
    } else {
        None
    }
}
