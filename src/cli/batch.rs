//! `engram batch`: flags, the dry run's plan, step lines and the closing summary.

use std::path::PathBuf;

use clap::Args;

use crate::batch::{self, run, BatchOptions, StepRecord};
use crate::probes::Session;
use crate::progress::ProgressMode;
use crate::Result;

/// `engram batch SUITE.toml --out runs/NAME`.
#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Outputs in --out: one folder per model and step (MODEL/STEP/, or STEP/ \
for model-free steps) with the probe's outputs and manifest, batch.json (status of every step), \
suite.toml (the suite as run), manifest.json and index.html. Rerunning into the same folder skips \
complete steps. Suite format: docs/batch.md."
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
}

pub fn run(a: &BatchArgs, session: &mut Session) -> Result<()> {
    let opts = BatchOptions {
        suite: a.suite.clone(),
        out: a.out.clone(),
        only_model: a.only_model.clone(),
    };
    if a.dry_run {
        for l in run::check_suite(&opts)? {
            println!(
                "{:<16} {:<28} engram {}",
                l.action,
                l.id,
                l.command.join(" ")
            );
        }
        return Ok(());
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
    println!("{}", run::summary_line(&record, &root));
    match run::failure(&record, &root) {
        Some(e) => Err(crate::Error::msg(e)),
        None => Ok(()),
    }
}
