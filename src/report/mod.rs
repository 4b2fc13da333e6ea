//! Tables (Parquet), charts (PNG + SVG) and run manifests.
//!
//! Every output goes through [`write_atomic`] (or one of its variants): the bytes are written to a
//! temporary file in the destination's own directory, flushed, and renamed over the destination, so
//! a reader never sees a half-written file, and a crash leaves at most a hidden `.*.tmp*` file.

pub mod chart;
pub mod lock;
pub mod manifest;
pub mod outdir;
pub mod page;
pub mod table;

pub use chart::{BarChart, Colormap, Heatmap, Histogram, LineChart, Scatter, Series};
pub use manifest::{now_rfc3339, rfc3339, sha256_file, Manifest, ModelRecord, Timing};
pub use table::{read_parquet, write_parquet};

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, Result};

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh temporary path next to `path`: hidden, unique within this process and across processes
/// (pid), and keeping `path`'s extension last so that extension-sniffing encoders (PNG) still work.
fn temp_path_for(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::msg(format!("{}: not a file path", path.display())))?
        .to_string_lossy();
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let tmp_name = match path.extension() {
        Some(ext) => format!(".{name}.tmp{pid}_{n}.{}", ext.to_string_lossy()),
        None => format!(".{name}.tmp{pid}_{n}"),
    };
    Ok(path.with_file_name(tmp_name))
}

fn ensure_parent(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
    }
    Ok(())
}

/// Write `bytes` to `path` atomically (temporary file in the same directory, then rename).
/// Creates missing parent directories.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes).map_err(|e| Error::io(path, e)))
}

/// Write `path` atomically through a writer callback: `f` gets a buffered writer on a temporary
/// file in the same directory; if it returns `Ok`, the file is flushed, synced and renamed onto
/// `path`; if it fails, the temporary file is removed and `path` is left untouched.
pub fn write_atomic_with<F>(path: &Path, f: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<File>) -> Result<()>,
{
    write_atomic_path(path, |tmp| {
        let file = File::create(tmp).map_err(|e| Error::io(tmp, e))?;
        let mut w = BufWriter::new(file);
        f(&mut w)?;
        let file = w.into_inner().map_err(|e| Error::io(tmp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(tmp, e))
    })
}

/// Write named tensors to a safetensors file atomically (creates parent directories).
pub fn write_safetensors<I>(path: &Path, tensors: I) -> Result<()>
where
    I: IntoIterator<Item = (String, candle_core::Tensor)>,
{
    let map: std::collections::HashMap<String, candle_core::Tensor> = tensors.into_iter().collect();
    write_atomic_path(path, |tmp| {
        candle_core::safetensors::save(&map, tmp)?;
        Ok(())
    })
}

/// Write `path` atomically through a callback that is handed a temporary *path* (same directory,
/// same extension) to create: for encoders that insist on opening the file themselves. The file
/// the callback leaves there is renamed onto `path`; on error it is removed.
pub fn write_atomic_path<F>(path: &Path, f: F) -> Result<()>
where
    F: FnOnce(&Path) -> Result<()>,
{
    ensure_parent(path)?;
    let tmp = temp_path_for(path)?;
    // Removed if the process is interrupted mid-write.
    let _guard = crate::interrupt::Guard::new(&tmp);
    // An encoder's error (a full disk, say) names the file it was writing.
    let named = |e: Error| {
        let msg = e.to_string();
        if msg.contains(&*tmp.to_string_lossy()) || msg.contains(&*path.to_string_lossy()) {
            e
        } else {
            Error::msg(format!("{}: {msg}", path.display()))
        }
    };
    let result = f(&tmp).map_err(named).and_then(|()| {
        if !tmp.is_file() {
            return Err(Error::msg(format!(
                "{}: the writer produced no file",
                path.display()
            )));
        }
        readable_per_umask(&tmp)?;
        fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The process's file-creation mask (Linux: read from `/proc/self/status`, race-free; elsewhere
/// the common `022`).
#[cfg(unix)]
fn umask() -> u32 {
    static MASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *MASK.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Umask:"))
                    .and_then(|m| u32::from_str_radix(m.trim(), 8).ok())
            })
            .unwrap_or(0o022)
    })
}

/// Give a finished file the mode a plain `create` would (0666 minus the umask): some writers
/// (temporary-file helpers, safetensors) create theirs owner-only, and a run's outputs must be
/// readable by whoever the umask lets read them.
fn readable_per_umask(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = 0o666 & !umask();
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(path, e))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn atomic_write_leaves_only_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/dir/out.txt");
        write_atomic(&p, b"hello").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"hello");
        write_atomic(&p, b"second version").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second version");
        assert_eq!(entries(p.parent().unwrap()), vec!["out.txt".to_string()]);
    }

    #[test]
    fn failed_write_keeps_old_file_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.bin");
        write_atomic(&p, b"good").unwrap();
        let err = write_atomic_with(&p, |w| {
            w.write_all(b"partial garbage").unwrap();
            Err(Error::msg("boom"))
        });
        assert!(err.is_err());
        assert_eq!(fs::read(&p).unwrap(), b"good");
        assert_eq!(entries(dir.path()), vec!["out.bin".to_string()]);

        // A failing first write leaves nothing at all.
        let q = dir.path().join("never.bin");
        assert!(write_atomic_with(&q, |_| Err(Error::msg("boom"))).is_err());
        assert!(!q.exists());
        assert_eq!(entries(dir.path()), vec!["out.bin".to_string()]);
    }

    #[cfg(unix)]
    #[test]
    fn outputs_are_readable_per_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let want = 0o666 & !umask();
        let a = dir.path().join("a.txt");
        write_atomic(&a, b"x").unwrap();
        // A writer that creates its file owner-only, as safetensors' does.
        let b = dir.path().join("b.bin");
        write_atomic_path(&b, |tmp| {
            fs::write(tmp, b"y").map_err(|e| Error::io(tmp, e))?;
            fs::set_permissions(tmp, fs::Permissions::from_mode(0o600))
                .map_err(|e| Error::io(tmp, e))
        })
        .unwrap();
        for p in [a, b] {
            let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, want, "{}: mode {mode:o}", p.display());
        }
    }

    #[test]
    fn temp_path_keeps_extension_and_directory() {
        let t = temp_path_for(Path::new("/a/b/chart.png")).unwrap();
        assert_eq!(t.parent().unwrap(), Path::new("/a/b"));
        assert_eq!(t.extension().unwrap(), "png");
        let name = t.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(".chart.png.tmp"), "{name}");
    }
}
