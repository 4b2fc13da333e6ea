//! Running a suite: plan, skip complete steps, run the rest model by model in this process,
//! record `batch.json`, the run's manifest and `index.html`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::plan::{plan, PlannedStep};
use super::record::{complete_manifest, BatchRecord, StepRecord, StepStatus};
use super::shard::{assign, Shard, ShardInfo};
use super::suite::{load_suite, Suite};
use super::{
    one_line, safe_name, write_index, BATCH_FILE, INDEX_FILE, RUN_LOCK, SHARDS_DIR, SUITE_COPY,
};
use crate::probes::{self, ModelUse, Session};
use crate::report::lock::Lock;
use crate::report::manifest::{Manifest, MANIFEST_FILE};
use crate::report::{now_rfc3339, write_atomic};
use crate::{Error, Result};

/// What a batch run was asked to do.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    pub suite: PathBuf,
    /// Run root; default `runs/<suite name>`.
    pub out: Option<PathBuf>,
    pub only_model: Option<String>,
    /// Run only this shard's steps (Slurm array tasks), recording them in `RUN/shards/`.
    pub shard: Option<Shard>,
}

impl BatchOptions {
    /// The run root for `suite`.
    pub fn root(&self, suite: &Suite) -> PathBuf {
        self.out
            .clone()
            .unwrap_or_else(|| Path::new("runs").join(safe_name(&suite.name)))
    }
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

/// Check a planned step: the probe exists, its parameters parse and its inputs exist.
fn check_step(step: &PlannedStep) -> Result<Box<dyn probes::Step>> {
    let s = probes::step(&step.probe, &step.params)?;
    if s.model_use() == ModelUse::Required && step.spec.is_none() {
        crate::bail!(
            "probe `{}` needs a model: make the step per-model or give it `model`",
            step.probe
        );
    }
    Ok(s)
}

/// Run one planned step (its probe built and checked) into its partial directory and rename it
/// into place.
fn run_step(
    step: &PlannedStep,
    probe: &dyn probes::Step,
    root: &Path,
    suite: &str,
    session: &mut Session,
) -> Result<()> {
    let dir = step.dir(root);
    let partial = step.partial_dir(root);
    // One process per step, whatever the shards or reruns do.
    let _lock = Lock::exclusive(&step.lock_path(root), &format!("step `{}`", step.id))?;
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
    }
    std::fs::create_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
    // SIGINT / SIGTERM remove it (crate::interrupt).
    let _guard = crate::interrupt::Guard::new(&partial);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        probe.run(session, step.spec.as_ref(), &partial)
    }));
    let result = match result {
        Ok(r) => r.map(|_| ()),
        Err(p) => {
            // A panic may leave the held model mid-use: drop it.
            session.release();
            Err(Error::msg(format!("panicked: {}", panic_message(&*p))))
        }
    };
    let finish = result.and_then(|()| {
        // Provenance: the batch's step in the step's manifest.
        let mut m = Manifest::read(&partial.join(MANIFEST_FILE))?;
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

/// The record of a plan before anything runs: complete steps are `Skipped`.
pub(super) fn initial_record(
    suite: &Suite,
    opts: &BatchOptions,
    steps: &[PlannedStep],
    root: &Path,
) -> BatchRecord {
    BatchRecord {
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
                command: s.command_line(&s.dir(root)),
                params: serde_json::Value::Object(s.params.clone()),
                status: if complete_manifest(&s.dir(root)).is_some() {
                    StepStatus::Skipped
                } else {
                    StepStatus::Pending
                },
                seconds: None,
                error: None,
                shard: None,
                stale: vec![],
            })
            .collect(),
        shards: vec![],
    }
}

/// Note in each skipped (complete) step where its outputs' parameters differ from the ones the
/// suite now gives (`probes[i]`: the suite's step, built): the step is still skipped — its
/// directory holds the earlier run — but the record, the run's manifest and the suite copy say
/// so instead of recording the new parameters as if they had run.
fn mark_stale(record: &mut BatchRecord, probes: &[Box<dyn probes::Step>], root: &Path) {
    for (r, p) in record.steps.iter_mut().zip(probes) {
        if r.status != StepStatus::Skipped {
            continue;
        }
        if let Some(m) = complete_manifest(&root.join(&r.dir)) {
            r.stale = super::record::stale_params(&m.params, &p.params());
        }
    }
}

/// The suite copy written into the run: the suite file, headed by a comment naming the
/// skipped steps whose outputs came from other parameters.
fn suite_copy(text: &[u8], record: &BatchRecord) -> Vec<u8> {
    let stale: Vec<&StepRecord> = record
        .steps
        .iter()
        .filter(|s| !s.stale.is_empty())
        .collect();
    if stale.is_empty() {
        return text.to_vec();
    }
    let mut out = String::from(
        "# engram: these steps were skipped as complete, but their outputs were made with other\n\
         # parameters than this suite gives (delete a step's directory to rerun it):\n",
    );
    for s in stale {
        out.push_str(&format!("#   {}: {}\n", s.id, s.stale.join("; ")));
    }
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(text);
    bytes
}

/// The suite, its root and its plan; an error for an unknown `--only-model`.
pub(super) fn prepare(opts: &BatchOptions) -> Result<(Suite, PathBuf, Vec<PlannedStep>)> {
    let suite = load_suite(&opts.suite)?;
    let root = opts.root(&suite);
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
    Ok((suite, root, steps))
}

fn selected(opts: &BatchOptions, s: &PlannedStep) -> bool {
    match (&opts.only_model, &s.model) {
        (Some(only), Some(m)) => &m.name == only || &m.spec == only,
        _ => true,
    }
}

/// Mark the steps of other shards `Deselected` and note every step's shard.
fn mark_shards(record: &mut BatchRecord, steps: &[PlannedStep], shard: Option<Shard>) {
    let Some(shard) = shard else { return };
    for (r, of) in record.steps.iter_mut().zip(assign(steps, shard.count)) {
        r.shard = Some(format!("{of}/{}", shard.count));
        if of != shard.index {
            r.status = StepStatus::Deselected;
        }
    }
}

/// One line of a dry run: what would happen to a step, its id and its command line.
pub struct PlanLine {
    pub action: &'static str,
    pub id: String,
    /// `I/N` in a sharded dry run.
    pub shard: Option<String>,
    pub command: Vec<String>,
}

/// Check every step (probe, parameters, inputs) without running anything; an error lists the
/// invalid steps.
pub fn check_suite(opts: &BatchOptions) -> Result<Vec<PlanLine>> {
    let (suite, root, steps) = prepare(opts)?;
    let mut record = initial_record(&suite, opts, &steps, &root);
    mark_shards(&mut record, &steps, opts.shard);
    let mut invalid = vec![];
    let mut lines = vec![];
    for (s, r) in steps.iter().zip(&record.steps) {
        let built = check_step(s);
        let stale = match (&built, complete_manifest(&s.dir(&root))) {
            (Ok(p), Some(m)) => !super::record::stale_params(&m.params, &p.params()).is_empty(),
            _ => false,
        };
        let action = if let Err(e) = built {
            invalid.push(format!("{}: {}", s.id, one_line(&e.to_string())));
            "INVALID"
        } else if r.status == StepStatus::Skipped && stale {
            "skip (complete, made with other parameters)"
        } else if r.status == StepStatus::Skipped {
            "skip (complete)"
        } else if r.status == StepStatus::Deselected {
            "other shard"
        } else if !selected(opts, s) {
            "not selected"
        } else {
            "run"
        };
        lines.push(PlanLine {
            action,
            id: s.id.clone(),
            shard: r.shard.clone(),
            command: r.command.clone(),
        });
    }
    if !invalid.is_empty() {
        crate::bail!(
            "suite `{}`: {} invalid step(s): {}",
            suite.name,
            invalid.len(),
            invalid.join("; ")
        );
    }
    Ok(lines)
}

/// The order steps run in: each model's steps (models in suite order), then the model-free
/// steps, so a model is loaded once.
fn run_order(suite: &Suite, steps: &[PlannedStep]) -> Vec<usize> {
    let mut order = vec![];
    for m in &suite.models {
        order.extend(
            (0..steps.len()).filter(|&i| steps[i].model.as_ref().is_some_and(|x| x.name == m.name)),
        );
    }
    order.extend((0..steps.len()).filter(|&i| steps[i].model.is_none()));
    order
}

/// Run a suite: every selected step that is not complete on disk, then `batch.json`, the run's
/// manifest and `index.html`. `on_step(done, total, record)` is called as each selected step
/// ends or is skipped. Returns the record; the caller turns failed steps into an error.
pub fn run_suite(
    opts: &BatchOptions,
    session: &mut Session,
    on_step: &mut dyn FnMut(usize, usize, &StepRecord),
) -> Result<BatchRecord> {
    let (suite, root, steps) = prepare(opts)?;
    // Every step is built and checked before the first runs: a typo fails the suite at once.
    let probes = steps
        .iter()
        .map(|s| {
            check_step(s).map_err(|e| {
                Error::msg(format!(
                    "suite `{}`: step `{}`: {}",
                    suite.name,
                    s.id,
                    one_line(&e.to_string())
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let t0 = Instant::now();
    std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
    // A whole run excludes every other writer of the directory; shards exclude whole runs and
    // merges but not each other (each step has its own lock).
    let what = format!("run directory {}", root.display());
    let _run_lock = match opts.shard {
        None => Lock::exclusive(&root.join(RUN_LOCK), &what)?,
        Some(_) => Lock::shared(&root.join(RUN_LOCK), &what)?,
    };
    let mut record = initial_record(&suite, opts, &steps, &root);
    mark_shards(&mut record, &steps, opts.shard);
    mark_stale(&mut record, &probes, &root);
    for (s, r) in steps.iter().zip(record.steps.iter_mut()) {
        if r.status == StepStatus::Pending && !selected(opts, s) {
            r.status = StepStatus::Deselected;
        }
    }
    // Where this process records its steps: the run's batch.json, or the shard's own record.
    let record_path = match opts.shard {
        None => root.join(BATCH_FILE),
        Some(sh) => {
            record.shards = vec![ShardInfo::this_process(sh, record.started.clone())];
            root.join(SHARDS_DIR).join(sh.record_name())
        }
    };
    let suite_text = std::fs::read(&opts.suite).map_err(|e| Error::io(&opts.suite, e))?;
    write_atomic(&root.join(SUITE_COPY), &suite_copy(&suite_text, &record))?;
    record.write_to(&record_path)?;
    let order: Vec<usize> = run_order(&suite, &steps)
        .into_iter()
        .filter(|&i| record.steps[i].status != StepStatus::Deselected)
        .collect();
    let n = order.len();
    let mut last_model = None;
    for (done, &i) in order.iter().enumerate() {
        let step = &steps[i];
        if record.steps[i].status == StepStatus::Skipped {
            on_step(done + 1, n, &record.steps[i]);
            continue;
        }
        if step.model.is_none() && last_model.is_some() {
            // Model-free steps run without a model held.
            session.release();
            last_model = None;
        }
        if step.model.is_some() {
            last_model = step.model.clone();
        }
        let t = Instant::now();
        // What the step needs ran before it (in this shard: units keep them together).
        let missing = step
            .after
            .iter()
            .find(|d| complete_manifest(&root.join(d)).is_none());
        let r = match missing {
            Some(d) => Err(Error::msg(format!(
                "needs step `{d}`, which is not complete (it failed or has not run)"
            ))),
            None => run_step(step, probes[i].as_ref(), &root, &suite.name, session),
        };
        let rec = &mut record.steps[i];
        rec.seconds = Some(t.elapsed().as_secs_f64());
        match r {
            Ok(()) => rec.status = StepStatus::Ok,
            Err(e) => {
                rec.status = StepStatus::Failed;
                rec.error = Some(one_line(&e.to_string()));
            }
        }
        on_step(done + 1, n, rec);
        record.seconds = t0.elapsed().as_secs_f64();
        if let Some(info) = record.shards.first_mut() {
            info.end(None, record.seconds);
        }
        record.write_to(&record_path)?;
        if opts.shard.is_none() {
            // The page shows the run so far (rewritten after every step).
            write_index(&root, &suite, &record)?;
        }
    }
    session.release();
    record.finished = Some(now_rfc3339());
    record.seconds = t0.elapsed().as_secs_f64();
    if let Some(info) = record.shards.first_mut() {
        info.end(record.finished.clone(), record.seconds);
    }
    record.write_to(&record_path)?;
    if opts.shard.is_none() {
        write_root_manifest(&root, &suite, &record, opts)?;
        write_index(&root, &suite, &record)?;
    }
    Ok(record)
}

fn labels(record: &BatchRecord, status: StepStatus) -> Vec<String> {
    record
        .steps
        .iter()
        .filter(|s| s.status == status)
        .map(|s| match &s.shard {
            Some(sh) => format!("{} (shard {sh})", s.id),
            None => s.id.clone(),
        })
        .collect()
}

/// The one-line error of a finished run (or merge) with failed steps, naming them (with their
/// shards); a merge (`merged`) also fails for steps that no shard finished. `record_file` is
/// where the details are.
pub fn failure(record: &BatchRecord, record_file: &Path, merged: bool) -> Option<String> {
    let failed = labels(record, StepStatus::Failed);
    let pending = if merged {
        labels(record, StepStatus::Pending)
    } else {
        vec![]
    };
    if failed.is_empty() && pending.is_empty() {
        return None;
    }
    let mut parts = vec![];
    if !failed.is_empty() {
        parts.push(format!(
            "{} of {} steps failed ({})",
            failed.len(),
            record.steps.len(),
            failed.join(", ")
        ));
    }
    if !pending.is_empty() {
        parts.push(format!(
            "{} not run by any shard ({})",
            pending.len(),
            pending.join(", ")
        ));
    }
    Some(format!(
        "batch `{}`: {}; see {}",
        record.suite,
        parts.join("; "),
        record_file.display()
    ))
}

/// The closing line of a run (or a merge: `merged`): the counts and `target` (the page, or a
/// shard's record).
pub fn summary_line(record: &BatchRecord, target: &Path, merged: bool) -> String {
    format!(
        "batch `{}`{}: {} ok, {} skipped, {} failed, {} pending{} in {:.1}s → {}",
        record.suite,
        match (record.shards.as_slice(), merged) {
            (_, true) => format!(" ({} shard runs merged)", record.shards.len()),
            ([one], false) => format!(" shard {}", one.shard),
            _ => String::new(),
        },
        record.count(StepStatus::Ok),
        record.count(StepStatus::Skipped),
        record.count(StepStatus::Failed),
        record.count(StepStatus::Pending),
        match record.count(StepStatus::Deselected) {
            0 => String::new(),
            d if record.shards.len() == 1 && !merged => {
                format!(", {d} in other shards or not selected")
            }
            d => format!(", {d} not selected"),
        },
        record.seconds,
        target.display()
    )
}

/// `RUN/manifest.json`: the batch itself (suite, build, per-step timings of this invocation,
/// the files at the root and every complete step's manifest).
pub(super) fn write_root_manifest(
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
            "steps": record.steps.iter().map(|s| serde_json::json!({"id": s.id, "command": s.command, "shard": s.shard})).collect::<Vec<_>>(),
            "shards": record.shards,
        }),
    );
    m.started = record.started.clone();
    m.record_timing("batch", record.seconds);
    m.finished = record.finished.clone();
    for s in &record.steps {
        if let Some(sec) = s.seconds {
            m.record_timing(&s.id, sec);
        }
    }
    m.add_file(SUITE_COPY);
    m.add_file(BATCH_FILE);
    m.add_file(INDEX_FILE);
    for sh in &record.shards {
        m.record_timing(&format!("shard {}", sh.shard), sh.seconds);
        m.note(format!(
            "shard {} ran on {} (pid {}{}{}) from {} to {}: {}",
            sh.shard,
            sh.host,
            sh.pid,
            sh.slurm
                .get("SLURM_JOB_ID")
                .map_or(String::new(), |j| format!(", Slurm job {j}")),
            sh.peak_rss_mb
                .map_or(String::new(), |m| format!(", peak RSS {m:.0} MB")),
            sh.started,
            sh.finished.as_deref().unwrap_or("(not finished)"),
            sh.command.join(" ")
        ));
        if let Some(f) = sh.record_file() {
            m.add_file(f);
        }
    }
    for s in &record.steps {
        if complete_manifest(&root.join(&s.dir)).is_some() {
            m.add_file(format!("{}/{MANIFEST_FILE}", s.dir));
        }
    }
    m.note(format!(
        "{} ok, {} skipped (complete from an earlier run), {} failed, {} pending, {} not selected",
        record.count(StepStatus::Ok),
        record.count(StepStatus::Skipped),
        record.count(StepStatus::Failed),
        record.count(StepStatus::Pending),
        record.count(StepStatus::Deselected)
    ));
    for s in record.steps.iter().filter(|s| !s.stale.is_empty()) {
        m.note(format!(
            "skipped {} as complete, but its outputs were made with other parameters ({}); \
             delete {} to rerun it",
            s.id,
            s.stale.join("; "),
            s.dir
        ));
    }
    for s in record
        .steps
        .iter()
        .filter(|s| s.status == StepStatus::Failed)
    {
        m.note(format!(
            "failed: {}{}: {}",
            s.id,
            s.shard
                .as_ref()
                .map_or(String::new(), |sh| format!(" (shard {sh})")),
            s.error.as_deref().unwrap_or("")
        ));
    }
    m.write(root)?;
    Ok(())
}
