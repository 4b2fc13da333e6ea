//! Sharded batches without Slurm (scripts/slurm/test-local-cluster.sh runs them on a real
//! single-node cluster): three shard processes side by side into one run directory, merged,
//! give the single-process run's Parquet files byte for byte; the Slurm array's environment
//! chooses the shard; locks keep a whole run, shards and a merge apart; a merge names the steps
//! no shard finished; a step after a failed one fails naming it.

use std::path::{Path, PathBuf};

use engram::batch::{self, BatchRecord, Shard, StepStatus};
use engram::report::lock::Lock;

use super::batch::{check_links, engram, parquet_files, partial_dirs};

const SUITE: &str = "tests/fixtures/suites/cluster.toml";

fn suite_steps() -> Vec<batch::PlannedStep> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let suite = batch::load_suite(&root.join(SUITE)).unwrap();
    batch::plan(&suite, Path::new("run")).unwrap()
}

fn run_ok(args: &[&str]) -> String {
    let out = engram().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "engram {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn relative_parquet(dir: &Path) -> Vec<PathBuf> {
    let mut v = vec![];
    parquet_files(dir, &mut v);
    v.into_iter()
        .map(|p| p.strip_prefix(dir).unwrap().to_path_buf())
        .collect()
}

#[test]
fn three_shards_side_by_side_merge_into_the_single_process_run() {
    let tmp = tempfile::tempdir().unwrap();
    let single = tmp.path().join("single");
    let sharded = tmp.path().join("sharded");
    run_ok(&["batch", SUITE, "--out", single.to_str().unwrap()]);
    // The three shards at once, as an array job's tasks would run.
    let children: Vec<_> = (1..=3)
        .map(|i| {
            engram()
                .args(["batch", SUITE, "--out", sharded.to_str().unwrap()])
                .args(["--shard", &format!("{i}/3")])
                .output()
        })
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        let c = c.unwrap();
        assert!(
            c.status.success(),
            "shard {}: {}",
            i + 1,
            String::from_utf8_lossy(&c.stderr)
        );
    }
    // Before the merge there is no run-level record or page.
    assert!(!sharded.join("batch.json").exists());
    assert!(!sharded.join("index.html").exists());
    let out = run_ok(&[
        "batch",
        SUITE,
        "--out",
        sharded.to_str().unwrap(),
        "--merge",
    ]);
    assert!(out.contains("10 ok"), "{out}");

    // Every step ran once: in exactly one shard record, as `ok`, in the shard the plan gives.
    let steps = suite_steps();
    let assignment = batch::shard::assign(&steps, 3);
    let records: Vec<BatchRecord> = (1..=3)
        .map(|i| {
            let name = Shard::new(i, 3).unwrap().record_name();
            BatchRecord::read(&sharded.join("shards").join(name)).unwrap()
        })
        .collect();
    for (s, &of) in steps.iter().zip(&assignment) {
        let owners: Vec<(usize, StepStatus)> = records
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let st = r.steps.iter().find(|x| x.id == s.id).unwrap().status;
                (st != StepStatus::Deselected).then_some((i + 1, st))
            })
            .collect();
        assert_eq!(owners, vec![(of, StepStatus::Ok)], "step {}", s.id);
    }
    // `after`: each model's heads-20 ran in the shard of its heads.
    for m in ["llama", "gemma", "qwen"] {
        let i = |id: String| steps.iter().position(|s| s.id == id).unwrap();
        assert_eq!(
            assignment[i(format!("{m}/heads"))],
            assignment[i(format!("{m}/heads-20"))]
        );
    }
    let merged = BatchRecord::read(&sharded.join("batch.json")).unwrap();
    assert_eq!(merged.count(StepStatus::Ok), steps.len());
    assert_eq!(merged.shards.len(), 3);
    assert!(merged.steps.iter().all(|s| s.shard.is_some()));
    let manifest = std::fs::read_to_string(sharded.join("manifest.json")).unwrap();
    assert!(manifest.contains("shard 2/3 ran on "), "{manifest}");
    assert!(check_links(&sharded) > 20);

    let a = relative_parquet(&single);
    assert_eq!(a, relative_parquet(&sharded));
    assert!(a.len() >= 20, "{a:?}");
    for f in &a {
        assert!(
            std::fs::read(single.join(f)).unwrap() == std::fs::read(sharded.join(f)).unwrap(),
            "{} differs between the single-process and the sharded run",
            f.display()
        );
    }

    // A rerun of a shard skips its finished steps.
    let out = run_ok(&[
        "batch",
        SUITE,
        "--out",
        sharded.to_str().unwrap(),
        "--shard",
        "2/3",
    ]);
    assert!(
        out.contains(" 0 ok, ") && !out.contains(" 0 skipped"),
        "{out}"
    );
    let mut partial = vec![];
    partial_dirs(&sharded, &mut partial);
    assert!(partial.is_empty(), "{partial:?}");
}

#[test]
fn slurm_array_environment_chooses_the_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let out = engram()
        .args(["batch", SUITE, "--out", run.to_str().unwrap(), "--dry-run"])
        .env("SLURM_ARRAY_TASK_ID", "5")
        .env("SLURM_ARRAY_TASK_MIN", "4")
        .env("SLURM_ARRAY_TASK_COUNT", "3")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let steps = suite_steps();
    let assignment = batch::shard::assign(&steps, 3);
    for (s, of) in steps.iter().zip(assignment) {
        let line = text
            .lines()
            .find(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                let e = w.iter().position(|x| *x == "engram").unwrap();
                w[e - 1] == s.id
            })
            .unwrap_or_else(|| panic!("{} not in {text}", s.id));
        let want = if of == 2 { "run [2/3]" } else { "other shard" };
        assert!(line.starts_with(want), "{line}");
    }
    assert!(String::from_utf8_lossy(&out.stderr).contains("shard 2/3 (from SLURM_ARRAY_TASK_ID"));
    // A bad shard is one line, before anything is written.
    for (args, msg) in [
        (
            vec!["--shard", "4/3"],
            "--shard 4/3: the index counts from 1",
        ),
        (vec!["--shard", "two"], "--shard two: expected I/N"),
    ] {
        let out = engram()
            .args(["batch", SUITE, "--out", run.to_str().unwrap()])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(msg), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    assert!(!run.exists());
}

#[test]
fn locks_keep_runs_shards_and_merges_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let r = run.to_str().unwrap();
    // A shard holds the run directory shared: a whole run and a merge are refused.
    let shard = Lock::shared(&run.join(batch::RUN_LOCK), "test").unwrap();
    for extra in [vec![], vec!["--merge"]] {
        let out = engram()
            .args(["batch", SUITE, "--out", r])
            .args(&extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("is in use by another engram process"),
            "{extra:?}: {err}"
        );
    }
    assert!(!run.join("batch.json").exists());
    drop(shard);
    // A whole run holds it exclusively: a shard is refused, naming the holder.
    let whole = Lock::exclusive(&run.join(batch::RUN_LOCK), "test").unwrap();
    let out = engram()
        .args(["batch", SUITE, "--out", r, "--shard", "1/2"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("(pid "), "{err}");
    drop(whole);
    // A step being run by another process fails that step only, naming the lock.
    let steps = suite_steps();
    let cmr = steps.iter().find(|s| s.id == "cmr-fit-gpt2-small").unwrap();
    let _step = Lock::exclusive(&cmr.lock_path(&run), "test").unwrap();
    let out = engram()
        .args(["batch", SUITE, "--out", r])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let rec = BatchRecord::read(&run.join("batch.json")).unwrap();
    for s in &rec.steps {
        if s.id == cmr.id {
            assert_eq!(s.status, StepStatus::Failed);
            assert!(s.error.as_deref().unwrap().contains("is in use"), "{s:?}");
        } else {
            assert_eq!(s.status, StepStatus::Ok, "{s:?}");
        }
    }
}

#[test]
fn merge_names_steps_no_shard_finished_and_dependents_of_failures_fail() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let r = run.to_str().unwrap();
    // No shard records yet.
    let out = engram()
        .args(["batch", SUITE, "--out", r, "--merge"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    std::fs::create_dir_all(&run).unwrap();
    let out = engram()
        .args(["batch", SUITE, "--out", r, "--merge"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no shard records"), "{err}");
    // Only shard 1 of 2 runs: the merge lists the other shard's steps as not run.
    run_ok(&["batch", SUITE, "--out", r, "--shard", "1/2"]);
    let out = engram()
        .args(["batch", SUITE, "--out", r, "--merge"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("not run by any shard") && err.contains("(shard 2/2)"),
        "{err}"
    );
    let merged = BatchRecord::read(&run.join("batch.json")).unwrap();
    let assignment = batch::shard::assign(&suite_steps(), 2);
    for (s, of) in merged.steps.iter().zip(assignment) {
        let want = if of == 1 {
            StepStatus::Ok
        } else {
            StepStatus::Pending
        };
        assert_eq!(s.status, want, "{s:?}");
    }
    assert!(check_links(&run) > 10);

    // A step whose dependency failed fails naming it, and the merge reports both.
    let tmp2 = tempfile::tempdir().unwrap();
    let suite = tmp2.path().join("dep.toml");
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(SUITE))
        .unwrap()
        .replace("tests/fixtures/qwen3", "tests/fixtures/no-such-model");
    std::fs::write(&suite, text).unwrap();
    let run2 = tmp2.path().join("run");
    let out = engram()
        .args([
            "batch",
            suite.to_str().unwrap(),
            "--out",
            run2.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let rec = BatchRecord::read(&run2.join("batch.json")).unwrap();
    let err = |id: &str| {
        let s = rec.steps.iter().find(|s| s.id == id).unwrap();
        assert_eq!(s.status, StepStatus::Failed, "{s:?}");
        s.error.clone().unwrap()
    };
    assert!(err("qwen/heads").contains("no-such-model"));
    assert!(err("qwen/heads-20").contains("needs step `qwen/heads`"));
}
