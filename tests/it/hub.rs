//! Hub repo ids resolve through a cache folder laid out exactly as hf-hub lays it out:
//! `models--{org}--{name}/refs/{revision}` holds the commit, `blobs/` the files, and
//! `snapshots/{commit}/` symlinks to them. HF_HUB_CACHE / HF_HOME and HF_HUB_OFFLINE are honoured.
//! (One test function: environment variables are process-wide.)

use crate::common::*;

use engram::hooks::Hooks;
use engram::model::{Batch, LoadOptions, Model};

fn lay_out_cache(root: &std::path::Path, repo: &str, commit: &str, src: &std::path::Path) {
    let files = ["config.json", "model.safetensors"].map(|f| (f, src.join(f)));
    lay_out_repo(root, repo, commit, &files);
}

/// Put `files` (path inside the snapshot, file to copy) into the hf-hub cache `root` as hf-hub
/// does: a blob per file, relative symlinks from `snapshots/{commit}/PATH`, `refs/main`. Callable
/// repeatedly for one repo (blob names do not collide).
pub(crate) fn lay_out_repo<P: AsRef<std::path::Path>>(
    root: &std::path::Path,
    repo: &str,
    commit: &str,
    files: &[(&str, P)],
) {
    let repo_dir = root.join(format!("models--{}", repo.replace('/', "--")));
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::create_dir_all(repo_dir.join("blobs")).unwrap();
    let snap = repo_dir.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::write(repo_dir.join("refs/main"), commit).unwrap();
    let first = std::fs::read_dir(repo_dir.join("blobs")).unwrap().count();
    for (i, (rel, src)) in files.iter().enumerate() {
        let name = format!("etag{:040}", first + i);
        std::fs::copy(src, repo_dir.join("blobs").join(&name)).unwrap();
        let link = snap.join(rel);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        let up = "../".repeat(rel.matches('/').count());
        std::os::unix::fs::symlink(format!("{up}../../blobs/{name}"), link).unwrap();
    }
}

#[test]
fn hub_ids_resolve_through_the_hf_hub_cache_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    lay_out_cache(
        &tmp.path().join("hub"),
        "engram-test/tiny-llama",
        commit,
        &fixture_dir("llama"),
    );
    // SAFETY: this test binary has a single test; nothing else reads the environment concurrently.
    unsafe {
        std::env::remove_var("HF_HUB_CACHE");
        std::env::set_var("HF_HOME", tmp.path());
        std::env::set_var("HF_HUB_OFFLINE", "1");
    }
    let m = Model::load("engram-test/tiny-llama", &LoadOptions::default()).unwrap();
    assert_eq!(m.source.commit.as_deref(), Some(commit));
    let direct = load_fixture("llama");
    let batch = Batch::single(&[1, 5, 9, 33, 2]).unwrap();
    let a = m.forward(&batch, &mut Hooks::none()).unwrap();
    let b = direct.forward(&batch, &mut Hooks::none()).unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);

    // A pinned commit works too; HF_HUB_CACHE takes precedence over HF_HOME.
    let m = Model::load(
        "engram-test/tiny-llama",
        &LoadOptions {
            revision: Some(commit.into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(m.source.commit.as_deref(), Some(commit));
    let other = tempfile::tempdir().unwrap();
    unsafe { std::env::set_var("HF_HUB_CACHE", other.path()) };
    let e = Model::load("engram-test/tiny-llama", &LoadOptions::default())
        .err()
        .expect("empty cache must fail offline")
        .to_string();
    assert!(
        e.contains("HF_HUB_OFFLINE") && e.contains(other.path().to_str().unwrap()),
        "{e}"
    );
    unsafe { std::env::remove_var("HF_HUB_CACHE") };

    // An incomplete snapshot (weights missing) is not used.
    let snap = tmp
        .path()
        .join("hub/models--engram-test--tiny-llama/snapshots")
        .join(commit);
    std::fs::remove_file(snap.join("model.safetensors")).unwrap();
    assert!(Model::load("engram-test/tiny-llama", &LoadOptions::default()).is_err());
}
