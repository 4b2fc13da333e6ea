//! `manifest.json`: what ran, on what model, with which parameters and seed, from which build,
//! when, how long each step took, which files it wrote and which method choices it made.
//! The manifest is the only output that carries timestamps; tables and charts are deterministic.
//!
//! ```no_run
//! use engram::report::Manifest;
//! # fn main() -> engram::Result<()> {
//! let dir = std::path::Path::new("runs/heads");
//! let mut m = Manifest::new("heads", serde_json::json!({ "n_prompts": 64 })).with_seed(Some(0));
//! let x = m.step("forward", || 2 + 2);
//! m.note("induction score: mean over repeated-token positions");
//! m.add_file("heads.parquet");
//! m.write(dir)?;
//! # Ok(()) }
//! ```

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::write_atomic;
use crate::{Error, Result};

/// The file name every run directory gets.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Which model a run used, and exactly which bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ModelRecord {
    /// How the model was named on the command line: hub id, folder or `.gguf` path.
    pub source: String,
    /// The resolved file or folder that was loaded.
    pub path: String,
    /// Hub revision (commit hash) when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// sha256 of the weights file (hex) when computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Architecture family (llama, qwen2, gemma3, ...).
    pub arch: String,
    /// The dtype the forward pass ran in (f32, bf16, ...).
    pub dtype: String,
}

/// Wall-clock seconds one named step took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    pub step: String,
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always "engram".
    pub tool: String,
    /// `CARGO_PKG_VERSION` of the build.
    pub engram_version: String,
    /// `git rev-parse HEAD` at build time, or "unknown".
    pub git_commit: String,
    /// The subcommand / probe name (`heads`, `cmr-fit`, ...).
    pub command: String,
    #[serde(default)]
    pub model: Option<ModelRecord>,
    /// The probe's full parameter set, defaults filled in.
    #[serde(default)]
    pub params: serde_json::Value,
    #[serde(default)]
    pub seed: Option<u64>,
    /// RFC 3339 UTC.
    pub started: String,
    /// RFC 3339 UTC; set by [`Manifest::finish`] or the first [`Manifest::write`].
    #[serde(default)]
    pub finished: Option<String>,
    #[serde(default)]
    pub timings: Vec<Timing>,
    /// The process's peak resident memory (MB, `VmHWM`) when the manifest was finished, where
    /// the platform reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_mb: Option<f64>,
    /// Output files, relative to the run directory, in the order they were written.
    #[serde(default)]
    pub files: Vec<String>,
    /// Which method choices ran (e.g. "attention patterns from the hooked pass, not recomputed").
    #[serde(default)]
    pub notes: Vec<String>,
}

impl Manifest {
    /// A manifest started now, for `command` run with `params`.
    pub fn new(command: impl Into<String>, params: serde_json::Value) -> Self {
        Manifest {
            tool: "engram".to_string(),
            engram_version: env!("CARGO_PKG_VERSION").to_string(),
            git_commit: env!("ENGRAM_GIT_COMMIT").to_string(),
            command: command.into(),
            model: None,
            params,
            seed: None,
            started: now_rfc3339(),
            finished: None,
            timings: Vec::new(),
            peak_rss_mb: None,
            files: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Like [`Manifest::new`], serializing a params struct.
    pub fn from_params<P: Serialize>(command: impl Into<String>, params: &P) -> Result<Self> {
        let v = serde_json::to_value(params)
            .map_err(|e| Error::msg(format!("serializing parameters for the manifest: {e}")))?;
        Ok(Self::new(command, v))
    }

    pub fn with_model(mut self, model: ModelRecord) -> Self {
        self.model = Some(model);
        self
    }

    pub fn with_seed(mut self, seed: Option<u64>) -> Self {
        self.seed = seed;
        self
    }

    /// Run `f`, record how long it took under `name`, return its value.
    pub fn step<T>(&mut self, name: &str, f: impl FnOnce() -> T) -> T {
        let t0 = Instant::now();
        let out = f();
        self.record_timing(name, t0.elapsed().as_secs_f64());
        out
    }

    pub fn record_timing(&mut self, name: &str, seconds: f64) {
        self.timings.push(Timing {
            step: name.to_string(),
            seconds,
        });
    }

    /// Record an output file, relative to the run directory (kept once, in first-seen order).
    pub fn add_file(&mut self, rel: impl Into<String>) {
        let rel = rel.into();
        if !self.files.contains(&rel) {
            self.files.push(rel);
        }
    }

    /// Record output files given as paths, storing them relative to `run_dir` (paths outside
    /// `run_dir` are stored as given). Handy with `chart.save(dir, stem)?`.
    pub fn add_paths<P: AsRef<Path>>(
        &mut self,
        run_dir: &Path,
        paths: impl IntoIterator<Item = P>,
    ) {
        for p in paths {
            let p = p.as_ref();
            let rel = p.strip_prefix(run_dir).unwrap_or(p);
            self.add_file(rel.to_string_lossy().replace('\\', "/"));
        }
    }

    /// Record a method choice or other note.
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Stamp `finished` with the current time, and the peak RSS so far.
    pub fn finish(&mut self) {
        self.finished = Some(now_rfc3339());
        self.peak_rss_mb = crate::alloc::peak_rss_bytes().map(|b| (b >> 10) as f64 / 1024.0);
    }

    /// Write `dir/manifest.json` atomically (pretty JSON), stamping `finished` first if unset.
    pub fn write(&mut self, dir: &Path) -> Result<PathBuf> {
        if self.finished.is_none() {
            self.finish();
        }
        let path = dir.join(MANIFEST_FILE);
        let mut json = serde_json::to_string_pretty(self)
            .map_err(|e| Error::msg(format!("serializing manifest: {e}")))?;
        json.push('\n');
        write_atomic(&path, json.as_bytes())?;
        Ok(path)
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::msg(format!("{}: {e}", path.display())))
    }
}

/// Streaming sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The current time as RFC 3339 UTC, e.g. `2026-11-22T09:41:07.123Z`.
pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// Format a time as RFC 3339 UTC with millisecond precision (`YYYY-MM-DDTHH:MM:SS.mmmZ`).
/// Times before 1970 are clamped to the epoch.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let millis = d.subsec_millis();
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, dd) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_known_values() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = |s: u64, ms: u64| UNIX_EPOCH + Duration::from_secs(s) + Duration::from_millis(ms);
        // date -u -d @951782400 → 2000-02-29 00:00:00 (leap day in a 400-year leap year)
        assert_eq!(rfc3339(t(951_782_400, 0)), "2000-02-29T00:00:00.000Z");
        // 2024-12-31T23:59:59Z = 1735689599
        assert_eq!(rfc3339(t(1_735_689_599, 999)), "2024-12-31T23:59:59.999Z");
        // 2100-03-01T12:34:56Z = 4107587696 (2100 is not a leap year)
        assert_eq!(rfc3339(t(4_107_587_696, 5)), "2100-03-01T12:34:56.005Z");
        let now = now_rfc3339();
        assert_eq!(now.len(), 24, "{now}");
        assert!(now.ends_with('Z') && now.as_bytes()[10] == b'T');
    }

    #[test]
    fn manifest_json_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Manifest::new("heads", serde_json::json!({"n": 3, "hooks": ["a", "b"]}))
            .with_seed(Some(42))
            .with_model(ModelRecord {
                source: "HuggingFaceTB/SmolLM2-135M".into(),
                path: "/cache/model.safetensors".into(),
                revision: Some("abc123".into()),
                sha256: None,
                arch: "llama".into(),
                dtype: "f32".into(),
            });
        let v = m.step("work", || 7);
        assert_eq!(v, 7);
        m.record_timing("other", 1.5);
        m.add_file("heads.parquet");
        m.add_file("heads.parquet");
        m.add_paths(
            dir.path(),
            [
                dir.path().join("charts/a.png"),
                dir.path().join("charts/a.svg"),
            ],
        );
        m.note("choice A");
        let path = m.write(dir.path()).unwrap();
        assert_eq!(path, dir.path().join(MANIFEST_FILE));
        let back = Manifest::read(&path).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.tool, "engram");
        assert_eq!(back.engram_version, env!("CARGO_PKG_VERSION"));
        assert!(!back.git_commit.is_empty());
        assert_eq!(
            back.files,
            vec!["heads.parquet", "charts/a.png", "charts/a.svg"]
        );
        assert_eq!(back.timings.len(), 2);
        assert!(back.finished.is_some());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\n  \"tool\": \"engram\""), "{text}");
        // A manifest without optional fields still parses.
        let minimal = r#"{"tool":"engram","engram_version":"0","git_commit":"x","command":"c","started":"s"}"#;
        let m2: Manifest = serde_json::from_str(minimal).unwrap();
        assert!(m2.model.is_none() && m2.files.is_empty());
    }

    #[test]
    fn sha256_of_known_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // Larger than the read buffer.
        let big = vec![b'a'; (1 << 20) + 17];
        std::fs::write(&p, &big).unwrap();
        let mut h = Sha256::new();
        h.update(&big);
        assert_eq!(sha256_file(&p).unwrap(), hex(&h.finalize()));
        assert!(sha256_file(&dir.path().join("missing")).is_err());
    }
}
