//! `engram batch`: suite parsing errors, a tiny-fixture suite run, killing the binary mid-step
//! and resuming, a failed step among good ones, byte-identical Parquet for the same seed, and
//! every link of index.html.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use engram::batch::{self, BatchRecord, StepStatus};
use engram::report::manifest::Manifest;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> String {
    root()
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

fn paper(file: &str) -> String {
    root()
        .join("notebooks-data/icl-cmr")
        .join(file)
        .display()
        .to_string()
}

/// A small suite over the tiny fixtures: heads per model, a model-free cmr-fit and a toy run of
/// `toy_steps` steps (the toy goes last so that a long one can be killed).
fn tiny_suite(models: &[(&str, String)], toy_steps: usize) -> String {
    let models: Vec<String> = models
        .iter()
        .map(|(n, m)| format!("{{ name = \"{n}\", model = '{m}' }}"))
        .collect();
    format!(
        r#"
name = "tiny"
description = "tiny fixtures"
models = [{models}]

[[step]]
probe = "heads"
args = {{ seq-len = 10, batch = 2, seed = 3, cmr-table = '{table}' }}

[[step]]
probe = "cmr-fit"
per_model = false
args = {{ crp = '{crp}', table = '{table}' }}

[[step]]
probe = "toy"
per_model = false
args = {{ steps = {toy_steps}, seed = 1, cmr-table = '{table}' }}
"#,
        models = models.join(", "),
        table = paper("cmr_crp_avg_20_11.npy"),
        crp = paper("gpt2-small.CRP_scores.npy"),
    )
}

/// The binary, quiet, in the repository root, outside any Slurm array job (whose variables
/// would shard a batch).
pub(crate) fn engram() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_engram"));
    c.current_dir(root()).arg("--quiet");
    for v in [
        "SLURM_ARRAY_TASK_ID",
        "SLURM_ARRAY_TASK_COUNT",
        "SLURM_ARRAY_TASK_MIN",
    ] {
        c.env_remove(v);
    }
    c
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// Every `href`/`src` of `RUN/index.html` is relative and resolves: a file under the run
/// directory or an `id` of the page. Returns the number of links checked.
pub(crate) fn check_links(run: &Path) -> usize {
    let html = std::fs::read_to_string(run.join("index.html")).unwrap();
    let mut n = 0;
    for attr in ["href=\"", "src=\""] {
        for (i, _) in html.match_indices(attr) {
            let rest = &html[i + attr.len()..];
            let link = &rest[..rest.find('"').unwrap()];
            n += 1;
            if let Some(id) = link.strip_prefix('#') {
                assert!(
                    html.contains(&format!("id=\"{id}\"")),
                    "dangling anchor {link}"
                );
                continue;
            }
            assert!(
                !link.contains("://") && !link.starts_with('/') && !link.contains(".."),
                "link {link} is not relative to the run directory"
            );
            let target = run.join(percent_decode(link));
            assert!(target.is_file(), "index.html links to missing {link}");
        }
    }
    n
}

pub(crate) fn parquet_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            parquet_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "parquet") {
            out.push(p);
        }
    }
    out.sort();
}

pub(crate) fn partial_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            if p.file_name()
                .unwrap()
                .to_string_lossy()
                .ends_with(".partial")
            {
                out.push(p.clone());
            }
            partial_dirs(&p, out);
        }
    }
}

#[test]
fn suite_errors_are_one_line() {
    let cases: &[(&str, &str)] = &[
        ("name = \"x\"\nmodels = [\"a\"]\n", "no [[step]]"),
        ("name = \"x\"\n[[step]]\nprobe = \"heads\"\n", "no `models`"),
        (
            "name = \"x\"\nmodels = [\"a\"]\n[[step]]\nprobe = \"heads\"\nbogus = 1\n",
            "bogus",
        ),
        (
            "name = \"x\"\nmodels = [\"a/m\", \"b/m\"]\n[[step]]\nprobe = \"heads\"\n",
            "two models are named `m`",
        ),
        (
            "name = \"x\"\nmodels = [\"a\"]\n[[step]]\nprobe = \"heads\"\n[[step]]\nprobe = \"heads\"\n",
            "two steps write `heads`",
        ),
        (
            "name = \"x\"\nmodels = [\"a\"]\n[[step]]\nprobe = \"heads\"\nmodels = [\"b\"]\n",
            "names model `b`",
        ),
        (
            "name = \"x\"\nmodels = [\"a\"]\n[[step]]\nprobe = \"heads\"\nargs = { out = \"/tmp\" }\n",
            "chooses the output directory",
        ),
        ("name = \"x\"\nmodels = [\"a\"]\n[[step]]\nprobe = \"  \"\n", "empty probe"),
        (
            "name = \"x\"\nmodels = [\"a\"]\n[[step]]\nprobe = \"heads\"\nafter = \"toy\"\n",
            "runs after `toy`, which is not an earlier step",
        ),
        (
            "name = \"x\"\nmodels = [\"a\"]\n[[step]]\nprobe = \"toy\"\nper_model = false\n[[step]]\nprobe = \"heads\"\nafter = [\"toy\"]\n",
            "cannot run after model-free step `toy`",
        ),
        (
            "name = \"x\"\nmodels = [\"a\"]\n[[step]]\nprobe = \"heads\"\ncost = 0\n",
            "cost must be a positive number",
        ),
        ("models = [\"a\"]\n[[step]]\nprobe = \"heads\"\n", "name"),
        ("name = \"x\"\nmodels = [\"a\"\n", "suite"),
    ];
    for (text, want) in cases {
        let e = batch::parse_suite(text).expect_err(text).to_string();
        assert!(e.contains(want), "{text:?}: error {e:?} lacks {want:?}");
        assert!(!e.contains('\n'), "multi-line error {e:?}");
    }
    // A nested table is not an argument.
    let s = batch::parse_suite(
        "name = \"x\"\nmodels = [\"a\"]\n[[step]]\nprobe = \"heads\"\nargs = { a = { b = 1 } }\n",
    )
    .unwrap();
    assert!(batch::plan(&s, Path::new("r")).is_err());
    // `after` a step that does not run on this model.
    let s = batch::parse_suite(
        "name = \"x\"\nmodels = [\"a\", \"b\"]\n[[step]]\nprobe = \"heads\"\nmodels = [\"a\"]\n[[step]]\nprobe = \"lens\"\nafter = \"heads\"\n",
    )
    .unwrap();
    let e = batch::plan(&s, Path::new("r")).unwrap_err().to_string();
    assert!(
        e.contains("step `b/lens` runs after `heads`, which does not run on model `b`"),
        "{e}"
    );
    // Parameters: `-` → `_`, model keys apart, substitutions; the equivalent command line.
    let s = batch::parse_suite(
        "name = \"x\"\nmodels = [{ name = \"m\", model = \"dir/m1\" }]\nmodel_args = { dtype = \"bf16\" }\n[[step]]\nprobe = \"sae run\"\nargs = { no-chat = true, skip = false, kinds = [\"topk\", \"relu\"], tag = \"{model}-{model_spec}\" }\n",
    )
    .unwrap();
    let p = batch::plan(&s, Path::new("r")).unwrap();
    assert_eq!(p[0].id, "m/sae-run");
    let spec = p[0].spec.as_ref().unwrap();
    assert_eq!(
        (spec.model.as_str(), spec.dtype.as_str()),
        ("dir/m1", "bf16")
    );
    assert_eq!(p[0].params["no_chat"], true);
    assert_eq!(p[0].params["tag"], "m-dir/m1");
    assert!(!p[0].params.contains_key("dtype"));
    assert_eq!(
        p[0].command_line(Path::new("out")),
        [
            "sae",
            "run",
            "--kinds",
            "topk,relu",
            "--no-chat",
            "--tag",
            "m-dir/m1",
            "--model",
            "dir/m1",
            "--dtype",
            "bf16",
            "--out",
            "out"
        ]
    );
    // The probe's own check: `tag` and `no-chat` are not `sae run` parameters.
    let e = engram::probes::step(&p[0].probe, &p[0].params)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("unknown parameter `no-chat`"), "{e}");
    assert!(e.contains("known:") && e.contains("shard-size"), "{e}");

    // Through the CLI: a missing suite, an unknown probe and bad arguments fail the dry run.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let e = engram::cli::run([
        "engram",
        "batch",
        "/nonexistent/suite.toml",
        "--out",
        out.to_str().unwrap(),
    ])
    .unwrap_err()
    .to_string();
    assert!(e.contains("/nonexistent/suite.toml"), "{e}");
    for (step, want) in [
        ("probe = \"frobnicate\"", "unknown probe `frobnicate`"),
        (
            "probe = \"heads\"\nargs = { no-such-flag = 1 }",
            "unknown parameter `no-such-flag`",
        ),
    ] {
        let suite = tmp.path().join("s.toml");
        std::fs::write(
            &suite,
            format!("name = \"x\"\nmodels = [\"smollm2\"]\n[[step]]\n{step}\n"),
        )
        .unwrap();
        let e = engram::cli::run([
            "engram",
            "--quiet",
            "batch",
            suite.to_str().unwrap(),
            "--dry-run",
            "--out",
            out.to_str().unwrap(),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains(want), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
    assert!(!out.exists(), "a dry run wrote {}", out.display());
}

#[test]
fn shipped_suites_are_valid_for_this_build() {
    // The dry run checks every step's command line against this build's parser.
    let tmp = tempfile::tempdir().unwrap();
    for s in ["probes/smoke.toml", "probes/full.toml"] {
        let suite = batch::load_suite(&root().join(s)).unwrap();
        assert!(suite.models.iter().any(|m| m.spec == "smollm2"), "{s}");
        assert!(suite.models.iter().any(|m| m.spec == "gemma3"), "{s}");
        let out = tmp.path().join(s.replace('/', "-"));
        engram::cli::run([
            "engram",
            "--quiet",
            "batch",
            root().join(s).to_str().unwrap(),
            "--dry-run",
            "--out",
            out.to_str().unwrap(),
        ])
        .unwrap_or_else(|e| panic!("{s}: {e}"));
    }
}

#[test]
fn killed_batch_resumes_skipping_finished_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("runs/tiny");
    let suite = tmp.path().join("tiny.toml");
    let models = [("llama2", fixture("llama2")), ("qwen2", fixture("qwen2"))];
    // The toy step would train for hours: it is killed mid-step.
    std::fs::write(&suite, tiny_suite(&models, 10_000_000)).unwrap();
    let mut child = engram()
        .args([
            "batch",
            suite.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let partial = run.join(".toy.partial");
    let t0 = Instant::now();
    while !partial.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("batch exited early: {status}");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "toy step never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap();
    child.wait().unwrap();
    // The killed step left only its hidden partial directory; finished steps are complete.
    assert!(
        !run.join("toy").exists(),
        "a killed step's outputs appeared"
    );
    assert!(partial.exists());
    let finished = ["llama2/heads", "qwen2/heads", "cmr-fit"];
    let mut before = vec![];
    for id in finished {
        let m = run.join(id).join("manifest.json");
        assert!(
            batch::complete_manifest(&run.join(id)).is_some(),
            "{id} incomplete"
        );
        before.push(std::fs::read(&m).unwrap());
    }
    let rec = BatchRecord::read(&run.join("batch.json")).unwrap();
    assert_eq!(rec.finished, None);

    // Resume with a short toy run: finished steps are skipped, untouched; the toy completes.
    std::fs::write(&suite, tiny_suite(&models, 5)).unwrap();
    let out = engram()
        .args([
            "batch",
            suite.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rec = BatchRecord::read(&run.join("batch.json")).unwrap();
    for (id, bytes) in finished.iter().zip(&before) {
        let s = rec.steps.iter().find(|s| &s.id == id).unwrap();
        assert_eq!(s.status, StepStatus::Skipped, "{id}");
        assert_eq!(
            &std::fs::read(run.join(id).join("manifest.json")).unwrap(),
            bytes,
            "{id} was rerun"
        );
    }
    let toy = rec.steps.iter().find(|s| s.id == "toy").unwrap();
    assert_eq!(toy.status, StepStatus::Ok);
    assert!(batch::complete_manifest(&run.join("toy")).is_some());
    let mut partials = vec![];
    partial_dirs(&run, &mut partials);
    assert!(partials.is_empty(), "left over: {partials:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("llama2/heads skipped"), "{stdout}");

    // Manifests: the run's own and each step's carry the build, models, params and files.
    let m = Manifest::read(&run.join("manifest.json")).unwrap();
    assert_eq!(m.command, "batch");
    assert_eq!(m.engram_version, env!("CARGO_PKG_VERSION"));
    assert!(!m.git_commit.is_empty());
    for f in &m.files {
        assert!(run.join(f).is_file(), "run manifest lists missing {f}");
    }
    let h = Manifest::read(&run.join("llama2/heads/manifest.json")).unwrap();
    let model = h.model.expect("model record");
    // (The fixture folder holds two .safetensors files: a digest of digests.)
    assert!(
        model.sha256.as_deref().is_some_and(|s| s.len() >= 64),
        "{:?}",
        model.sha256
    );
    assert_eq!(h.seed, Some(3));
    assert_eq!(h.params["seq_len"], 10);
    // Each model loaded once: the second of its steps (none here) would note it; a step of a
    // model records its load time.
    assert!(h.timings.iter().any(|t| t.step == "load"));
    assert!(h.finished.is_some() && !h.timings.is_empty());
    assert!(h.notes.iter().any(|n| n.contains("batch: suite `tiny`")));
    assert!(h.files.iter().any(|f| f == "heads.parquet"));

    // The page lists every model × probe with charts and key numbers; every link resolves.
    let html = std::fs::read_to_string(run.join("index.html")).unwrap();
    for id in ["llama2/heads", "qwen2/heads", "cmr-fit", "toy"] {
        assert!(
            html.contains(&format!(">{id} <span")),
            "{id} missing from index.html"
        );
    }
    assert!(html.contains("CMR-like (distance &lt; 0.5)"));
    assert!(html.contains("<img src=\"llama2/heads/"));
    let n = check_links(&run);
    assert!(n > 20, "only {n} links");
    // Each step links its own report page; a heads step's page has the attention viewer.
    for step in ["llama2/heads", "qwen2/heads", "cmr-fit", "toy"] {
        assert!(
            html.contains(&format!("<a class=\"page\" href=\"{step}/index.html\">")),
            "no report page link for {step}"
        );
        assert!(h.files.iter().any(|f| f == "index.html"));
    }
    let page = std::fs::read_to_string(run.join("llama2/heads/index.html")).unwrap();
    assert!(page.contains("<div id=\"pv\">") && page.contains("id=\"engram-data\""));
}

#[test]
fn failed_step_is_reported_and_the_others_continue() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let suite = tmp.path().join("s.toml");
    let models = [
        ("good", fixture("llama2")),
        (
            "missing",
            root()
                .join("tests/fixtures/no-such-model")
                .display()
                .to_string(),
        ),
    ];
    std::fs::write(&suite, tiny_suite(&models, 3)).unwrap();
    let out = engram()
        .args([
            "batch",
            suite.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit code must say a step failed"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("1 of 4 steps failed (missing/heads)"),
        "{stderr}"
    );
    let rec = BatchRecord::read(&run.join("batch.json")).unwrap();
    let status = |id: &str| rec.steps.iter().find(|s| s.id == id).unwrap().clone();
    assert_eq!(status("good/heads").status, StepStatus::Ok);
    assert_eq!(status("cmr-fit").status, StepStatus::Ok);
    assert_eq!(status("toy").status, StepStatus::Ok);
    let bad = status("missing/heads");
    assert_eq!(bad.status, StepStatus::Failed);
    let err = bad.error.unwrap();
    assert!(
        err.contains("no-such-model") && !err.contains('\n'),
        "{err}"
    );
    assert!(!run.join("missing/heads").exists());
    let mut partials = vec![];
    partial_dirs(&run, &mut partials);
    assert!(partials.is_empty(), "left over: {partials:?}");
    let html = std::fs::read_to_string(run.join("index.html")).unwrap();
    assert!(html.contains("class=\"st failed\""));
    check_links(&run);
}

#[test]
fn same_seed_gives_byte_identical_parquet() {
    let tmp = tempfile::tempdir().unwrap();
    let suite = tmp.path().join("s.toml");
    std::fs::write(&suite, tiny_suite(&[("llama2", fixture("llama2"))], 8)).unwrap();
    let mut files = vec![];
    for name in ["a", "b"] {
        let run = tmp.path().join(name);
        engram::cli::run([
            "engram",
            "--quiet",
            "batch",
            suite.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
        ])
        .unwrap();
        let mut v = vec![];
        parquet_files(&run, &mut v);
        files.push((run, v));
    }
    let (ra, a) = &files[0];
    let (rb, b) = &files[1];
    let rel = |r: &Path, v: &[PathBuf]| -> Vec<PathBuf> {
        v.iter()
            .map(|p| p.strip_prefix(r).unwrap().to_path_buf())
            .collect()
    };
    assert_eq!(rel(ra, a), rel(rb, b));
    // heads (heads, lag_crp, tokens), cmr-fit (heads, lag_crp), toy (training + its heads).
    assert!(a.len() >= 7, "{:?}", rel(ra, a));
    for (x, y) in a.iter().zip(b) {
        assert!(
            std::fs::read(x).unwrap() == std::fs::read(y).unwrap(),
            "{} differs between two runs with the same seed",
            x.strip_prefix(ra).unwrap().display()
        );
    }
}

/// A complete step rerun with changed arguments is skipped (its outputs stay), and the record,
/// the run's manifest, the suite copy and stderr say which parameters differ instead of
/// recording the new ones as if they had run (issue 25).
#[test]
fn changed_arguments_of_a_complete_step_are_recorded_as_stale() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let suite = tmp.path().join("s.toml");
    let models = [("m", fixture("llama2"))];
    let text = tiny_suite(&models, 2);
    std::fs::write(&suite, &text).unwrap();
    let batch = |suite: &Path| {
        engram()
            .args([
                "batch",
                suite.to_str().unwrap(),
                "--out",
                run.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };
    assert!(batch(&suite).status.success());
    let heads = std::fs::read(run.join("m/heads/heads.parquet")).unwrap();
    // Unchanged: nothing stale.
    let out = batch(&suite);
    assert!(out.status.success());
    let rec = BatchRecord::read(&run.join("batch.json")).unwrap();
    assert!(rec
        .steps
        .iter()
        .all(|s| s.status == StepStatus::Skipped && s.stale.is_empty()));
    // seq-len 10 → 12: still skipped, outputs untouched, the difference said everywhere.
    let changed = tmp.path().join("s2.toml");
    std::fs::write(&changed, text.replace("seq-len = 10", "seq-len = 12")).unwrap();
    let out = batch(&changed);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "m/heads is complete from a run with other parameters (seq_len: ran 10, suite 12)"
        ),
        "{stderr}"
    );
    let rec = BatchRecord::read(&run.join("batch.json")).unwrap();
    let step = |id: &str| rec.steps.iter().find(|s| s.id == id).unwrap().clone();
    assert_eq!(
        step("m/heads").stale,
        vec!["seq_len: ran 10, suite 12".to_string()]
    );
    assert!(step("cmr-fit").stale.is_empty() && step("toy").stale.is_empty());
    assert_eq!(
        std::fs::read(run.join("m/heads/heads.parquet")).unwrap(),
        heads
    );
    let copy = std::fs::read_to_string(run.join("suite.toml")).unwrap();
    assert!(
        copy.starts_with("# engram:") && copy.contains("#   m/heads: seq_len: ran 10, suite 12"),
        "{copy}"
    );
    assert!(copy.contains("seq-len = 12"));
    let manifest = std::fs::read_to_string(run.join("manifest.json")).unwrap();
    assert!(manifest
        .contains("skipped m/heads as complete, but its outputs were made with other parameters"));
    // The dry run says it too.
    let out = engram()
        .args([
            "batch",
            changed.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
            "--dry-run",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("skip (complete, made with other parameters)"),
        "{stdout}"
    );
}
