//! Dataset readers: text corpora, prompt lists.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The folder of engram's built-in datasets, as the defaults name it.
pub const DATA_DIR: &str = "notebooks-data";

/// Where a data path is: as given when it exists; else a default `notebooks-data/...` path is
/// looked up under `$ENGRAM_DATA` (a copy of that folder) and then in the source tree the binary
/// was built from, so built-in data is found from any working directory. Other paths are
/// returned unchanged (their error names them).
pub fn locate(path: &Path) -> PathBuf {
    if path.exists() || path.is_absolute() {
        return path.to_path_buf();
    }
    let Ok(rest) = path.strip_prefix(DATA_DIR) else {
        return path.to_path_buf();
    };
    let mut candidates = vec![];
    if let Some(d) = std::env::var_os("ENGRAM_DATA") {
        candidates.push(PathBuf::from(d).join(rest));
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(path));
    candidates
        .into_iter()
        .find(|c| c.exists())
        .unwrap_or_else(|| path.to_path_buf())
}

/// An error unless `path` (after [`locate`]) is a file; `what` names the option.
pub fn require_file(path: &Path, what: &str) -> Result<PathBuf> {
    require(path, what, false)
}

/// As [`require_file`], for a directory.
pub fn require_dir(path: &Path, what: &str) -> Result<PathBuf> {
    require(path, what, true)
}

fn require(path: &Path, what: &str, dir: bool) -> Result<PathBuf> {
    let p = locate(path);
    if (dir && !p.is_dir()) || (!dir && !p.is_file()) {
        crate::bail!(
            "--{what} {}: {}{}",
            path.display(),
            if dir {
                "not a directory"
            } else {
                "no such file"
            },
            if path.starts_with(DATA_DIR) {
                " (built-in data: run from the engram checkout or set ENGRAM_DATA to its notebooks-data folder)"
            } else {
                ""
            }
        );
    }
    Ok(p)
}

/// Read a corpus: `.jsonl` with a `text` field per line, or plain text with documents separated
/// by blank lines.
pub fn read_corpus(path: &Path) -> Result<Vec<String>> {
    let path = &locate(path);
    let docs = read_documents(path)?;
    if docs.is_empty() {
        return Err(Error::msg(format!(
            "{}: empty corpus (no documents: a .jsonl needs lines with a \"text\" field, a .txt \
             documents separated by blank lines)",
            path.display()
        )));
    }
    Ok(docs)
}

fn read_documents(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    if path.extension().is_some_and(|e| e == "jsonl") {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                let v: serde_json::Value = serde_json::from_str(l)
                    .map_err(|e| Error::msg(format!("{}:{}: {e}", path.display(), i + 1)))?;
                v.get("text")
                    .and_then(|t| t.as_str())
                    .map(String::from)
                    .ok_or_else(|| {
                        Error::msg(format!("{}:{}: no \"text\" field", path.display(), i + 1))
                    })
            })
            .collect()
    } else {
        Ok(text
            .split("\n\n")
            .map(|d| d.trim().to_string())
            .filter(|d| !d.is_empty())
            .collect())
    }
}
