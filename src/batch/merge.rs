//! `engram batch SUITE --out RUN --merge`: the shards' records (`RUN/shards/*.json`) and what is
//! on disk merged into the run's `batch.json`, `manifest.json` and `index.html`, as one
//! process's run would have written them.
//!
//! A step's status comes from the latest record of a shard that owned it (by start time; a
//! shard rerun or a different shard count supersedes older records) checked against the disk:
//! a complete step directory is `ok` (or `skipped` if its shard found it complete), an
//! incomplete one is `failed` with the shard's error, or `pending` if no shard finished it.

use std::path::Path;

use super::record::{complete_manifest, BatchRecord, StepStatus};
use super::run::{initial_record, prepare, write_root_manifest, BatchOptions};
use super::shard::{assign, Shard};
use super::{write_index, RUN_LOCK, SHARDS_DIR};
use crate::report::lock::Lock;
use crate::report::now_rfc3339;
use crate::{Error, Result};

/// Every shard record under `RUN/shards/`, oldest first.
fn shard_records(root: &Path) -> Result<Vec<BatchRecord>> {
    let dir = root.join(SHARDS_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(Error::io(&dir, e)),
    };
    let mut out = vec![];
    for e in entries {
        let e = e.map_err(|e| Error::io(&dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("shard-") && name.ends_with(".json") {
            out.push(BatchRecord::read(&e.path())?);
        }
    }
    out.sort_by(|a, b| a.started.cmp(&b.started));
    Ok(out)
}

/// Merge the shards of a run; returns the merged record (the caller reports failed and
/// unfinished steps).
pub fn merge_run(opts: &BatchOptions) -> Result<BatchRecord> {
    let (suite, root, steps) = prepare(opts)?;
    if !root.is_dir() {
        crate::bail!("--merge: {} is not a run directory", root.display());
    }
    let _lock = Lock::exclusive(
        &root.join(RUN_LOCK),
        &format!(
            "run directory {} (is a shard still running?)",
            root.display()
        ),
    )?;
    let shards = shard_records(&root)?;
    if shards.is_empty() {
        crate::bail!(
            "--merge: {} has no shard records in {SHARDS_DIR}/ (run `engram batch {} --out {} --shard I/N` first)",
            root.display(),
            opts.suite.display(),
            root.display()
        );
    }
    for r in &shards {
        if r.suite != suite.name {
            crate::bail!(
                "--merge: {}/{SHARDS_DIR} holds a record of suite `{}`, not `{}`",
                root.display(),
                r.suite,
                suite.name
            );
        }
    }
    let mut record = initial_record(&suite, opts, &steps, &root);
    // Steps no record owns are labelled with their shard under the newest shard count.
    let count = shards
        .last()
        .and_then(|r| r.shards.first())
        .and_then(|i| Shard::count_of(&i.shard));
    let planned = count.map(|n| assign(&steps, n));
    for (i, rec) in record.steps.iter_mut().enumerate() {
        // The newest record whose shard owned the step.
        let owned = shards.iter().rev().find_map(|r| {
            r.steps
                .iter()
                .find(|s| s.id == rec.id && s.status != StepStatus::Deselected)
        });
        let complete = complete_manifest(&root.join(&rec.dir)).is_some();
        match owned {
            Some(src) => {
                rec.shard = src.shard.clone();
                rec.seconds = src.seconds;
                rec.status = match (complete, src.status) {
                    (true, StepStatus::Ok) => StepStatus::Ok,
                    (true, _) => StepStatus::Skipped,
                    (false, StepStatus::Failed) => {
                        rec.error = src.error.clone();
                        StepStatus::Failed
                    }
                    (false, _) => StepStatus::Pending,
                };
            }
            None => {
                if let (Some(n), Some(p)) = (count, &planned) {
                    rec.shard = Some(format!("{}/{n}", p[i]));
                }
                rec.status = if complete {
                    StepStatus::Skipped
                } else {
                    StepStatus::Pending
                };
            }
        }
    }
    record.shards = shards.iter().flat_map(|r| r.shards.clone()).collect();
    record.started = shards
        .iter()
        .map(|r| r.started.clone())
        .min()
        .unwrap_or_else(now_rfc3339);
    record.finished = if shards.iter().all(|r| r.finished.is_some()) {
        shards.iter().filter_map(|r| r.finished.clone()).max()
    } else {
        None
    };
    // The longest shard: the run's wall time if the shards ran side by side.
    record.seconds = shards.iter().map(|r| r.seconds).fold(0.0, f64::max);
    record.write(&root)?;
    write_root_manifest(&root, &suite, &record, opts)?;
    write_index(&root, &suite, &record)?;
    Ok(record)
}
