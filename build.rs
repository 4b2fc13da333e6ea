//! Sets `ENGRAM_GIT_COMMIT` (for run manifests) from `git rev-parse HEAD`, or "unknown" when git
//! or the repository is absent (e.g. building from a crates.io tarball). Never fails.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());

    let commit = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(&manifest_dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit()))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=ENGRAM_GIT_COMMIT={commit}");

    if let Some(git_dir) = git_dir(&manifest_dir) {
        let head = git_dir.join("HEAD");
        if head.is_file() {
            println!("cargo:rerun-if-changed={}", head.display());
            if let Ok(text) = std::fs::read_to_string(&head) {
                if let Some(r) = text.trim().strip_prefix("ref:") {
                    let r = r.trim();
                    // The branch ref lives either loose or in packed-refs (after `git gc`); in a
                    // linked worktree, branch refs live in the common dir.
                    for base in [git_dir.clone(), common_dir(&git_dir)] {
                        for p in [base.join(r), base.join("packed-refs")] {
                            if p.is_file() {
                                println!("cargo:rerun-if-changed={}", p.display());
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `.git` is a directory, or (worktrees, submodules) a file saying `gitdir: <path>`.
fn git_dir(root: &Path) -> Option<PathBuf> {
    let dot_git = root.join(".git");
    if dot_git.is_dir() {
        return Some(dot_git);
    }
    let text = std::fs::read_to_string(&dot_git).ok()?;
    let p = PathBuf::from(text.trim().strip_prefix("gitdir:")?.trim());
    Some(if p.is_absolute() { p } else { root.join(p) })
}

fn common_dir(git_dir: &Path) -> PathBuf {
    match std::fs::read_to_string(git_dir.join("commondir")) {
        Ok(t) => {
            let p = PathBuf::from(t.trim());
            if p.is_absolute() {
                p
            } else {
                git_dir.join(p)
            }
        }
        Err(_) => git_dir.to_path_buf(),
    }
}
