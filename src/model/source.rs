//! "What is M?": a `.gguf` file, a local Hugging Face folder, a Hub repo id (resolved through
//! the hf-hub cache, offline-friendly), or a short alias of a model fetched by
//! `scripts/fetch-models.sh` (`smollm2`, `gemma3`, `qwen2`), or a Hub alias (`gpt2`, `pythia-70m`, `pythia-160m`).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::{Error, Result};

/// Models that `scripts/fetch-models.sh` puts in the engram model cache.
pub const ALIASES: &[(&str, &str, &str)] = &[
    (
        "smollm2",
        "smollm2-135m-instruct.gguf",
        "SmolLM2-135M-Instruct (Llama)",
    ),
    ("gemma3", "gemma-3-270m.gguf", "Gemma-3-270M base"),
    (
        "qwen2",
        "qwen2.5-coder-0.5b-instruct.gguf",
        "Qwen2.5-Coder-0.5B-Instruct",
    ),
];

/// Short names of Hub checkpoints (resolved through the hf-hub cache like any `org/name`): the
/// models the CMR-heads study measured first.
pub const HUB_ALIASES: &[(&str, &str)] = &[
    ("gpt2", "openai-community/gpt2"),
    ("pythia-70m", "EleutherAI/pythia-70m"),
    ("pythia-160m", "EleutherAI/pythia-160m"),
];

/// The default model of the command line.
pub const DEFAULT_MODEL: &str = "smollm2";

/// Where fetched models live: `$ENGRAM_MODELS`, else `~/.cache/engram/models`.
pub fn models_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ENGRAM_MODELS") {
        return PathBuf::from(d);
    }
    home().join(".cache/engram/models")
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    Gguf,
    HfFolder,
    Hub,
}

/// A resolved model location.
#[derive(Clone, Debug, Serialize)]
pub struct ResolvedSource {
    /// What the user typed.
    pub spec: String,
    pub kind: SourceKind,
    /// The `.gguf` file, or the folder holding config.json + safetensors.
    pub path: PathBuf,
    /// Hub revision and the commit it resolved to.
    pub revision: Option<String>,
    pub commit: Option<String>,
    /// A tokenizer.json to use instead of the one beside the weights / inside the GGUF.
    pub tokenizer: Option<PathBuf>,
}

/// Hugging Face hub cache folder: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `~/.cache/huggingface/hub` (hf-hub 0.5 itself reads only HF_HOME).
pub fn hf_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("HF_HOME") {
        return PathBuf::from(d).join("hub");
    }
    home().join(".cache/huggingface/hub")
}

/// `HF_HUB_OFFLINE=1` (or true/yes/on): never touch the network.
pub fn hf_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

fn looks_like_repo_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

/// Resolve a model spec.
pub fn resolve(spec: &str, revision: Option<&str>) -> Result<ResolvedSource> {
    let mk = |kind, path: PathBuf| ResolvedSource {
        spec: spec.to_string(),
        kind,
        path,
        revision: None,
        commit: None,
        tokenizer: None,
    };
    if let Some((_, file, _)) = ALIASES.iter().find(|(a, _, _)| *a == spec) {
        let p = models_dir().join(file);
        if !p.exists() {
            crate::bail!(
                "model `{spec}` is not fetched yet: {} is missing (run scripts/fetch-models.sh)",
                p.display()
            );
        }
        let mut r = mk(SourceKind::Gguf, p);
        if spec == "gemma3" {
            let tok = models_dir().join("gemma3-tokenizer/tokenizer.json");
            r.tokenizer = tok.exists().then_some(tok);
        }
        return Ok(r);
    }
    let path = Path::new(spec);
    if path.extension().is_some_and(|e| e == "gguf") {
        if !path.is_file() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "GGUF file not found"),
            ));
        }
        return Ok(mk(SourceKind::Gguf, path.to_path_buf()));
    }
    if path.is_dir() {
        if !path.join("config.json").is_file() {
            crate::bail!(
                "{}: not a Hugging Face model folder (no config.json)",
                path.display()
            );
        }
        return Ok(mk(SourceKind::HfFolder, path.to_path_buf()));
    }
    if looks_like_repo_id(spec) && !path.exists() {
        return resolve_hub(spec, revision.unwrap_or("main"));
    }
    if let Some((_, repo)) = HUB_ALIASES.iter().find(|(a, _)| *a == spec) {
        let mut r = resolve_hub(repo, revision.unwrap_or("main"))?;
        r.spec = spec.to_string();
        return Ok(r);
    }
    crate::bail!(
        "model `{spec}` not found: give a .gguf file, a folder with config.json, a Hub repo id \
         (org/name) or one of: {}",
        ALIASES
            .iter()
            .map(|a| a.0)
            .chain(HUB_ALIASES.iter().map(|a| a.0))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The snapshot folder of `repo_id` at `revision` in an hf-hub cache, if it is there.
/// Layout: `models--{org}--{name}/refs/{revision}` holds the commit; files are in
/// `snapshots/{commit}/`. A 40-hex revision is taken as the commit itself.
pub fn cached_snapshot(cache: &Path, repo_id: &str, revision: &str) -> Option<(PathBuf, String)> {
    cached_repo_snapshot(cache, repo_id, revision)
        .filter(|(snap, _)| snap.join("config.json").is_file())
}

/// [`cached_snapshot`] for any repo (SAE repos have no config.json): the snapshot folder, if the
/// revision resolves to one that exists.
pub fn cached_repo_snapshot(
    cache: &Path,
    repo_id: &str,
    revision: &str,
) -> Option<(PathBuf, String)> {
    let repo_dir = cache.join(format!("models--{}", repo_id.replace('/', "--")));
    let commit = if revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit()) {
        revision.to_string()
    } else {
        std::fs::read_to_string(repo_dir.join("refs").join(revision))
            .ok()?
            .trim()
            .to_string()
    };
    let snap = repo_dir.join("snapshots").join(&commit);
    snap.is_dir().then_some((snap, commit))
}

fn weights_complete(dir: &Path) -> bool {
    if dir.join("model.safetensors").is_file() {
        return true;
    }
    let index = dir.join("model.safetensors.index.json");
    let Ok(text) = std::fs::read_to_string(index) else {
        return false;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    v.get("weight_map")
        .and_then(|m| m.as_object())
        .is_some_and(|m| {
            m.values()
                .filter_map(|f| f.as_str())
                .all(|f| dir.join(f).is_file())
        })
}

fn resolve_hub(repo_id: &str, revision: &str) -> Result<ResolvedSource> {
    let cache = hf_cache_dir();
    let done = |path: PathBuf, commit: String| ResolvedSource {
        spec: repo_id.to_string(),
        kind: SourceKind::Hub,
        path,
        revision: Some(revision.to_string()),
        commit: Some(commit),
        tokenizer: None,
    };
    if let Some((snap, commit)) = cached_snapshot(&cache, repo_id, revision) {
        if weights_complete(&snap) {
            return Ok(done(snap, commit));
        }
    }
    if hf_offline() {
        crate::bail!(
            "{repo_id}@{revision} is not complete in the Hugging Face cache {} and HF_HUB_OFFLINE is set",
            cache.display()
        );
    }
    download(repo_id, revision, &cache).map_err(|e| {
        Error::msg(format!(
            "{repo_id}@{revision}: not in the Hugging Face cache {} and the Hub could not be reached ({e})",
            cache.display()
        ))
    })?;
    match cached_snapshot(&cache, repo_id, revision) {
        Some((snap, commit)) if weights_complete(&snap) => Ok(done(snap, commit)),
        _ => crate::bail!("{repo_id}@{revision}: download finished but the snapshot is incomplete"),
    }
}

/// A Hub model repo at `revision` through hf-hub, downloading into the cache `cache` (with
/// progress): what [`download`] and the pretrained-SAE fetch both read files from.
pub(crate) fn hub_repo(
    repo_id: &str,
    revision: &str,
    cache: &Path,
) -> Result<hf_hub::api::sync::ApiRepo> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Repo, RepoType};
    let api = ApiBuilder::from_env()
        .with_cache_dir(cache.to_path_buf())
        .with_progress(true)
        .build()
        .map_err(|e| Error::msg(e.to_string()))?;
    Ok(api.repo(Repo::with_revision(
        repo_id.to_string(),
        RepoType::Model,
        revision.to_string(),
    )))
}

/// Fetch config, tokenizer and weights of a repo into the cache through hf-hub.
fn download(repo_id: &str, revision: &str, cache: &Path) -> Result<()> {
    let repo = hub_repo(repo_id, revision, cache)?;
    let err = |e: hf_hub::api::sync::ApiError| Error::msg(e.to_string());
    repo.get("config.json").map_err(err)?;
    for optional in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        let _ = repo.get(optional);
    }
    match repo.get("model.safetensors") {
        Ok(_) => {}
        Err(_) => {
            let index = repo.get("model.safetensors.index.json").map_err(err)?;
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::msg(e.to_string()))?;
            let mut files: Vec<String> = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .map(|m| {
                    m.values()
                        .filter_map(|f| f.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            files.sort();
            files.dedup();
            for f in files {
                repo.get(&f).map_err(err)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids() {
        assert!(looks_like_repo_id("HuggingFaceTB/SmolLM2-135M-Instruct"));
        assert!(!looks_like_repo_id("model.gguf"));
        assert!(!looks_like_repo_id("a/b/c"));
    }
}
