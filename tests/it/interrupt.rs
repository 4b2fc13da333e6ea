//! A command's `--out` as a unit, its lock, and SIGINT / SIGTERM cleanup, on the binary with the
//! tiny fixtures: `heads`, `cache` and `sae collect` interrupted mid-run leave no partial
//! directory and no temporary file, a finished run survives an interrupted or failed `--force`
//! rerun, a finished run is not overwritten without `--force`, a second command into the same
//! `--out` is refused, and an interrupted `sae collect` resumes to the uninterrupted store.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use engram::report::lock::Lock;

use super::common::cli_fixture;

fn engram() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_engram"));
    c.current_dir(env!("CARGO_MANIFEST_DIR")).arg("--quiet");
    c
}

fn table() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("notebooks-data/icl-cmr/cmr_crp_avg_20_11.npy")
        .display()
        .to_string()
}

/// Every hidden partial directory and temporary file under `dir`.
fn leftovers(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".partial") || name.contains(".tmp") || name.ends_with(".old") {
            out.push(p.clone());
        }
        if p.is_dir() {
            leftovers(&p, out);
        }
    }
}

/// Wait until `path` exists (the command is past its start), then a little longer, then send
/// `signal`; returns the exit code.
fn interrupt(mut child: Child, path: &Path, signal: libc::c_int) -> Option<i32> {
    let t0 = Instant::now();
    while !path.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the command ended before {} appeared",
            path.display()
        );
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "finished before the signal"
    );
    // SAFETY: kill(2) on our own child's pid, which has not been reaped (try_wait saw it run).
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill failed");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("engram: interrupted"), "{err}");
    out.status.code()
}

fn heads_cmd(m: &str, tok: &str, out: &Path, batch: usize) -> Command {
    let mut c = engram();
    c.args(["heads", "-m", m, "--tokenizer", tok, "--seq-len", "30"])
        .args(["--batch", &batch.to_string(), "--cmr-table", &table()])
        .args(["--out", out.to_str().unwrap()]);
    c
}

#[test]
fn heads_out_is_a_unit_refused_locked_and_cleaned_on_sigint() {
    let (tmp, m, tok, out) = cli_fixture("llama2");
    // A finished run, with a file a different earlier run would have left (`--ablate`'s).
    let s = heads_cmd(&m, &tok, &out, 2).output().unwrap();
    assert!(s.status.success(), "{}", String::from_utf8_lossy(&s.stderr));
    std::fs::write(out.join("ablation.parquet"), b"old").unwrap();
    let manifest = std::fs::read(out.join("manifest.json")).unwrap();

    // Rerun without --force: refused in one line, nothing touched.
    let s = heads_cmd(&m, &tok, &out, 2).output().unwrap();
    let err = String::from_utf8_lossy(&s.stderr);
    assert_eq!(s.status.code(), Some(1));
    assert!(
        err.contains("already holds a finished `heads` run") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(std::fs::read(out.join("manifest.json")).unwrap(), manifest);

    // Another process holds the directory: refused, naming it.
    let parent = out.parent().unwrap();
    let lock = Lock::exclusive(&parent.join(".out.lock"), "test").unwrap();
    let s = heads_cmd(&m, &tok, &out, 2)
        .arg("--force")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&s.stderr);
    assert!(
        !s.status.success() && err.contains("is in use by another engram process"),
        "{err}"
    );
    drop(lock);

    // A forced rerun interrupted by SIGINT: the old run intact, nothing partial left.
    let child = heads_cmd(&m, &tok, &out, 400)
        .arg("--force")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let code = interrupt(child, &parent.join(".out.partial"), libc::SIGINT);
    assert_eq!(code, Some(130));
    assert_eq!(std::fs::read(out.join("manifest.json")).unwrap(), manifest);
    let mut left = vec![];
    leftovers(tmp.path(), &mut left);
    assert!(left.is_empty(), "{left:?}");

    // A forced rerun that fails (bad CMR table) leaves the old run intact too.
    let s = engram()
        .args([
            "heads",
            "-m",
            &m,
            "--tokenizer",
            &tok,
            "--seq-len",
            "30",
            "--batch",
            "2",
        ])
        .args([
            "--cmr-table",
            tok.as_str(),
            "--force",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!s.status.success());
    assert_eq!(std::fs::read(out.join("manifest.json")).unwrap(), manifest);

    // A forced rerun that succeeds replaces the run whole: the old ablation files are gone.
    let s = heads_cmd(&m, &tok, &out, 2)
        .arg("--force")
        .output()
        .unwrap();
    assert!(s.status.success(), "{}", String::from_utf8_lossy(&s.stderr));
    assert!(!out.join("ablation.parquet").exists());
    assert!(out.join("heads.parquet").is_file());
    let mut left = vec![];
    leftovers(tmp.path(), &mut left);
    assert!(left.is_empty(), "{left:?}");

    // A directory that is not an engram run is never replaced.
    let mine = tmp.path().join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), b"keep").unwrap();
    let s = heads_cmd(&m, &tok, &mine, 2)
        .arg("--force")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&s.stderr);
    assert!(
        !s.status.success() && err.contains("is not an engram run"),
        "{err}"
    );
    assert_eq!(std::fs::read(mine.join("notes.txt")).unwrap(), b"keep");
}

#[test]
fn cache_interrupted_by_sigterm_leaves_nothing() {
    let (tmp, m, tok, out) = cli_fixture("llama2");
    let prompts = tmp.path().join("prompts.txt");
    let line = "the quick brown fox jumps over the lazy dog again and again\n";
    std::fs::write(&prompts, line.repeat(1500)).unwrap();
    let child = engram()
        .args(["cache", "-m", &m, "--tokenizer", &tok])
        .args(["--prompts", prompts.to_str().unwrap()])
        .args([
            "--hooks",
            "blocks.*.hook_resid_post",
            "--out",
            out.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let code = interrupt(child, &tmp.path().join(".out.partial"), libc::SIGTERM);
    assert_eq!(code, Some(128 + 15));
    assert!(!out.exists(), "a partial cache became --out");
    let mut left = vec![];
    leftovers(tmp.path(), &mut left);
    assert!(left.is_empty(), "{left:?}");
}

fn collect_cmd(m: &str, tok: &str, out: &Path) -> Command {
    let mut c = engram();
    c.args(["sae", "collect", "-m", m, "--tokenizer", tok])
        .args(["--hook", "blocks.1.hook_resid_post", "--tokens", "60000"])
        .args(["--shard-size", "4096", "--context", "64", "--seed", "5"])
        .args(["--out", out.to_str().unwrap()]);
    c
}

#[test]
fn sae_collect_interrupted_by_sigint_resumes_to_the_same_store() {
    let (tmp, m, tok, out) = cli_fixture("llama2");
    let whole = tmp.path().join("whole");
    let s = collect_cmd(&m, &tok, &whole).output().unwrap();
    assert!(s.status.success(), "{}", String::from_utf8_lossy(&s.stderr));
    // Interrupted once a few shards are written, then resumed.
    let child = collect_cmd(&m, &tok, &out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let code = interrupt(child, &out.join("shard_00003.safetensors"), libc::SIGINT);
    assert_eq!(code, Some(130));
    let mut left = vec![];
    leftovers(tmp.path(), &mut left);
    assert!(left.is_empty(), "temporary files left: {left:?}");
    let s = collect_cmd(&m, &tok, &out).output().unwrap();
    assert!(s.status.success(), "{}", String::from_utf8_lossy(&s.stderr));
    let mut names: Vec<String> = std::fs::read_dir(&whole)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".safetensors"))
        .collect();
    names.sort();
    assert!(names.len() > 10, "{names:?}");
    for n in &names {
        assert!(
            std::fs::read(whole.join(n)).unwrap() == std::fs::read(out.join(n)).unwrap(),
            "{n} differs after the interrupted collection resumed"
        );
    }
}
