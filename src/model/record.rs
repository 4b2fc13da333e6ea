//! The manifest's record of a loaded model (source, resolved path, revision, sha256 of the
//! weights, architecture, dtype). Here, not in `report`, so that `report` does not depend on
//! `model`.

use std::path::PathBuf;

use super::Model;
use crate::{Error, Result};

impl crate::report::ModelRecord {
    /// The record of a loaded model; hashes a GGUF file (a folder's weights are hashed shard by
    /// shard into one digest of digests).
    pub fn of(m: &Model) -> Result<crate::report::ModelRecord> {
        let path = &m.source.path;
        let sha = if path.is_file() {
            crate::report::sha256_file(path)?
        } else {
            let mut shards: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| Error::io(path, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            shards.sort();
            let parts = shards
                .iter()
                .map(|p| crate::report::sha256_file(p))
                .collect::<Result<Vec<_>>>()?;
            if parts.len() == 1 {
                parts[0].clone()
            } else {
                format!("multi:{}", parts.join(","))
            }
        };
        let dtype = format!("{:?}", m.dtype).to_lowercase();
        Ok(crate::report::ModelRecord {
            source: m.source.spec.clone(),
            path: path.display().to_string(),
            revision: m.source.commit.clone().or(m.source.revision.clone()),
            sha256: Some(sha),
            arch: m.cfg().arch.name().to_string(),
            dtype: if m.bf16_matmul() {
                format!("{dtype}+bf16-matmul")
            } else {
                dtype
            },
        })
    }
}
