//! `engram batch`: flags, the dry run's plan, step lines and the closing summary.

use std::path::PathBuf;

use clap::Args;

use crate::batch::{self, run, BatchOptions, Shard, StepRecord};
use crate::probes::Session;
use crate::progress::ProgressMode;
use crate::Result;

/// `engram batch SUITE.toml --out runs/NAME`.
#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Outputs in --out: one folder per model and step (MODEL/STEP/, or STEP/ \
for model-free steps) with the probe's outputs and manifest, batch.json (status of every step), \
suite.toml (the suite as run), manifest.json and index.html. Rerunning into the same folder skips \
complete steps. Suite format: docs/batch.md.

On a cluster: run shard I of N of the steps in each task (--shard I/N, or inside a Slurm array job \
SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT are read) into the same --out on a shared file \
system, then once with --merge to write batch.json, manifest.json and index.html over all shards. \
The split depends only on the suite and N. scripts/slurm/batch.sbatch does both (docs/cluster.md)."
)]
pub struct BatchArgs {
    /// The suite file (e.g. probes/smoke.toml)
    #[arg(value_name = "SUITE.toml")]
    pub suite: PathBuf,
    /// Run directory (default: runs/<suite name>); rerunning into it resumes, skipping complete steps
    #[arg(long, short = 'o', value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Run only the steps of this model (its name or spec) and the model-free steps
    #[arg(long, value_name = "MODEL")]
    pub only_model: Option<String>,
    /// Print the plan and check every step's probe, parameters and inputs, without running
    #[arg(long)]
    pub dry_run: bool,
    /// Run only shard I of N (counted from 1) of the steps; records go to RUN/shards/. Default
    /// inside a Slurm array job: from SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT
    #[arg(long, value_name = "I/N", conflicts_with = "merge")]
    pub shard: Option<String>,
    /// Merge the shards' records into one batch.json, manifest.json and index.html (after
    /// every shard ended); fails naming any step that failed or that no shard finished
    #[arg(long, conflicts_with_all = ["only_model", "dry_run"])]
    pub merge: bool,
}

/// The shard from `--shard`, else from a Slurm array's environment (not for `--merge`).
fn shard(a: &BatchArgs) -> Result<Option<Shard>> {
    if a.merge {
        return Ok(None);
    }
    match &a.shard {
        Some(s) => s.parse().map(Some),
        None => {
            let s = Shard::from_slurm_env(&|k| std::env::var(k).ok())?;
            if let Some(s) = s {
                eprintln!("engram batch: shard {s} (from SLURM_ARRAY_TASK_ID; --shard overrides)");
            }
            Ok(s)
        }
    }
}

pub fn run(a: &BatchArgs, session: &mut Session) -> Result<()> {
    let opts = BatchOptions {
        suite: a.suite.clone(),
        out: a.out.clone(),
        only_model: a.only_model.clone(),
        shard: shard(a)?,
    };
    if a.dry_run {
        for l in run::check_suite(&opts)? {
            let action = match &l.shard {
                Some(sh) => format!("{} [{sh}]", l.action),
                None => l.action.to_string(),
            };
            println!("{action:<22} {:<28} engram {}", l.id, l.command.join(" "));
        }
        return Ok(());
    }
    if a.merge {
        let record = batch::merge_run(&opts)?;
        let root = opts.root(&batch::load_suite(&opts.suite)?);
        println!(
            "{}",
            run::summary_line(&record, &root.join(batch::INDEX_FILE), true)
        );
        return match run::failure(&record, &root.join(batch::BATCH_FILE), true) {
            Some(e) => Err(crate::Error::msg(e)),
            None => Ok(()),
        };
    }
    let mode = session.progress.mode;
    // Steps' own progress bars stay; their summaries are in each step's manifest and the page.
    let mut on_step = |i: usize, n: usize, rec: &StepRecord| {
        let secs = rec.seconds.map_or(String::new(), |s| format!(" {s:.1}s"));
        let err = rec
            .error
            .as_ref()
            .map_or(String::new(), |e| format!(": {e}"));
        println!("[{i}/{n}] {} {}{secs}{err}", rec.id, rec.status.as_str());
        if !rec.stale.is_empty() {
            eprintln!(
                "warning: {} is complete from a run with other parameters ({}); its outputs are \
                 that run's (delete its directory to rerun it)",
                rec.id,
                rec.stale.join("; ")
            );
        }
        if mode == ProgressMode::JsonLines {
            eprintln!(
                "{}",
                serde_json::json!({"event": "step", "index": i, "total": n, "id": rec.id,
                    "status": rec.status, "seconds": rec.seconds, "error": rec.error})
            );
        }
    };
    let record = batch::run_suite(&opts, session, &mut on_step)?;
    let suite = batch::load_suite(&opts.suite)?;
    let root = opts.root(&suite);
    let record_file = match opts.shard {
        Some(sh) => root.join(batch::SHARDS_DIR).join(sh.record_name()),
        None => root.join(batch::BATCH_FILE),
    };
    let target = match opts.shard {
        Some(_) => record_file.clone(),
        None => root.join(batch::INDEX_FILE),
    };
    println!("{}", run::summary_line(&record, &target, false));
    match run::failure(&record, &record_file, false) {
        Some(e) => Err(crate::Error::msg(e)),
        None => Ok(()),
    }
}
