//! The manifest's record of a loaded model (source, resolved path, revision, sha256 of the
//! weights, architecture, dtype). Here, not in `report`, so that `report` does not depend on
//! `model`.
//!
//! The sha256 is computed from the files after the load; so that it describes the bytes that
//! were loaded, every weight file is stamped (size, modification time, inode) before the load
//! opens it and again around the hash, and a file that changed in between is an error instead
//! of a manifest that names the wrong weights.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::Model;
use crate::{Error, Result};

/// What identifies a file's content cheaply: a replaced or rewritten file changes one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    pub path: PathBuf,
    pub len: u64,
    pub modified: Option<SystemTime>,
    pub inode: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let inode = 0;
    Some(FileStamp {
        path: path.to_path_buf(),
        len: m.len(),
        modified: m.modified().ok(),
        inode,
    })
}

/// The weight files of a source path: the file itself (GGUF) or a folder's `*.safetensors`,
/// sorted.
pub fn weight_files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut shards: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| Error::io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    shards.sort();
    Ok(shards)
}

/// Stamps of the weight files under `path` now (none where they cannot be listed).
pub fn stamps(path: &Path) -> Vec<FileStamp> {
    weight_files(path)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| stamp(p))
        .collect()
}

/// The sha256 of `file`, refused if the file is not the one stamped at load or changes while it
/// is hashed.
fn checked_sha256(file: &Path, loaded: Option<&FileStamp>) -> Result<String> {
    let changed = || {
        Error::msg(format!(
            "{}: the file changed while engram was using it (size, time or inode differ from when \
             the model loaded), so its sha256 would not describe the weights that ran; rerun",
            file.display()
        ))
    };
    let before = stamp(file);
    if let Some(l) = loaded {
        if before.as_ref() != Some(l) {
            return Err(changed());
        }
    }
    let sha = crate::report::sha256_file(file)?;
    if stamp(file) != before {
        return Err(changed());
    }
    Ok(sha)
}

impl crate::report::ModelRecord {
    /// The record of a loaded model; hashes a GGUF file (a folder's weights are hashed shard by
    /// shard into one digest of digests).
    pub fn of(m: &Model) -> Result<crate::report::ModelRecord> {
        let path = &m.source.path;
        let files = weight_files(path)?;
        let parts = files
            .iter()
            .map(|f| checked_sha256(f, m.weight_stamps.iter().find(|s| &s.path == f)))
            .collect::<Result<Vec<_>>>()?;
        let sha = if parts.len() == 1 {
            parts[0].clone()
        } else {
            format!("multi:{}", parts.join(","))
        };
        let dtype = format!("{:?}", m.dtype).to_lowercase();
        Ok(crate::report::ModelRecord {
            source: m.source.spec.clone(),
            path: path.display().to_string(),
            revision: m.source.commit.clone().or(m.source.revision.clone()),
            sha256: Some(sha),
            arch: m.cfg().arch.name().to_string(),
            // Mapped 16-bit weights multiply unrounded f32 activations: not the packed numbers.
            dtype: if m.mapped_weights() > 0 {
                format!("{dtype}+bf16-mapped")
            } else if m.bf16_matmul() {
                format!("{dtype}+bf16-matmul")
            } else {
                dtype
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("model.gguf");
        std::fs::write(&f, b"weights one").unwrap();
        let loaded = stamp(&f).unwrap();
        assert!(checked_sha256(&f, Some(&loaded)).is_ok());
        // Replaced by rename (a new inode), as a download or `cp` over a symlink would.
        let g = dir.path().join("other");
        std::fs::write(&g, b"weights two, longer").unwrap();
        std::fs::rename(&g, &f).unwrap();
        let e = checked_sha256(&f, Some(&loaded)).unwrap_err().to_string();
        assert!(
            e.contains("the file changed while engram was using it"),
            "{e}"
        );
        // Unstamped (a model built in memory): hashed as it is.
        assert!(checked_sha256(&f, None).is_ok());
    }
}
