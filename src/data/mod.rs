//! Dataset readers: text corpora, prompt lists.

use std::path::Path;

use crate::{Error, Result};

/// Read a corpus: `.jsonl` with a `text` field per line, or plain text with documents separated
/// by blank lines.
pub fn read_corpus(path: &Path) -> Result<Vec<String>> {
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
