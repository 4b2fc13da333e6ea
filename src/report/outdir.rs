//! A command's `--out` written as a unit: outputs go to the hidden `.OUT.partial` beside `OUT`,
//! renamed onto `OUT` only when the command succeeded, so a failed, interrupted or killed run
//! never leaves a half-written directory, never mixes its files with an earlier run's, and never
//! replaces a finished run unless asked.
//!
//! [`OutDir::begin`], before any work:
//! - takes the lock `.OUT.lock` beside `OUT` ([`Lock::exclusive`]): a second command into the
//!   same `--out` fails at once naming the first;
//! - checks what `OUT` holds: nothing or an empty directory is fine; an engram run (it has a
//!   `manifest.json`) is replaced only with `--force` (`force`); anything else (a file, a
//!   non-empty directory that is not an engram run) is refused, with or without `--force`;
//! - removes a stale `.OUT.partial` (a killed run's) and creates it afresh, registered with
//!   [`crate::interrupt`] so that SIGINT / SIGTERM remove it.
//!
//! [`OutDir::commit`] renames the partial directory onto `OUT` (moving a replaced run aside
//! first, and deleting it after). Dropping an `OutDir` without committing removes the partial
//! directory.
//!
//! [`OutDir::in_place`] is for commands that resume their own output (`sae collect`, `sae run`:
//! an activation store continues where it stopped): the lock and the `--out` checks only, with
//! the outputs written straight into `OUT`.

use std::path::{Path, PathBuf};

use super::lock::Lock;
use super::manifest::{Manifest, MANIFEST_FILE};
use crate::interrupt::Guard;
use crate::{Error, Result};

/// An output directory being written.
#[derive(Debug)]
pub struct OutDir {
    target: PathBuf,
    /// Where the command writes: the partial directory, or `target` in place.
    work: PathBuf,
    in_place: bool,
    /// In place, and the directory did not exist before.
    created: bool,
    committed: bool,
    _guard: Option<Guard>,
    _lock: Lock,
}

/// `OUT`'s name and the directory it lives in.
fn split(out: &Path) -> Result<(PathBuf, String)> {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| n != "." && n != "..")
        .ok_or_else(|| {
            Error::msg(format!(
                "--out {}: give a directory name (e.g. runs/x)",
                out.display()
            ))
        })?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name))
}

/// What `OUT` holds; an error for what may not be replaced.
fn check_existing(out: &Path, force: bool, in_place: bool) -> Result<()> {
    let meta = match std::fs::metadata(out) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(out, e)),
    };
    if !meta.is_dir() {
        crate::bail!("--out {} is a file, not a directory", out.display());
    }
    let entries = std::fs::read_dir(out)
        .map_err(|e| Error::io(out, e))?
        .count();
    if entries == 0 {
        return Ok(());
    }
    let manifest = out.join(MANIFEST_FILE);
    if !manifest.is_file() {
        if in_place {
            // A resumable output before its first manifest (an interrupted collection).
            return Ok(());
        }
        crate::bail!(
            "--out {} exists and is not an engram run ({entries} entries, no {MANIFEST_FILE}); \
             choose a new or empty directory",
            out.display()
        );
    }
    if force || in_place {
        return Ok(());
    }
    let what = match Manifest::read(&manifest) {
        Ok(m) => match &m.finished {
            Some(t) => format!("a finished `{}` run (finished {t})", m.command),
            None => format!("an unfinished `{}` run", m.command),
        },
        Err(_) => format!("an engram run (unreadable {MANIFEST_FILE})"),
    };
    crate::bail!(
        "--out {} already holds {what}; pass --force to replace it, or choose another --out",
        out.display()
    )
}

impl OutDir {
    /// Start writing `out` as a unit (see the module docs).
    pub fn begin(out: &Path, force: bool) -> Result<OutDir> {
        Self::open(out, force, false)
    }

    /// Start writing `out` in place (a command that resumes its own output).
    pub fn in_place(out: &Path) -> Result<OutDir> {
        Self::open(out, false, true)
    }

    fn open(out: &Path, force: bool, in_place: bool) -> Result<OutDir> {
        let (parent, name) = split(out)?;
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        let lock = Lock::exclusive(
            &parent.join(format!(".{name}.lock")),
            &format!("output directory {}", out.display()),
        )?;
        check_existing(out, force, in_place)?;
        if in_place {
            let created = !out.exists();
            std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
            return Ok(OutDir {
                target: out.to_path_buf(),
                work: out.to_path_buf(),
                in_place,
                created,
                committed: false,
                _guard: None,
                _lock: lock,
            });
        }
        let partial = parent.join(format!(".{name}.partial"));
        // Under the lock a partial directory can only be a killed run's.
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
        }
        std::fs::create_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
        let guard = Guard::new(&partial);
        Ok(OutDir {
            target: out.to_path_buf(),
            work: partial,
            in_place,
            created: false,
            committed: false,
            _guard: Some(guard),
            _lock: lock,
        })
    }

    /// Where the command writes its outputs.
    pub fn path(&self) -> &Path {
        &self.work
    }

    /// The final directory.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Put the outputs in place: rename the partial directory onto `OUT` (replacing what
    /// [`OutDir::begin`] allowed to replace).
    pub fn commit(mut self) -> Result<()> {
        self.committed = true;
        if self.in_place {
            return Ok(());
        }
        let target = self.target.clone();
        let (parent, name) = split(&target)?;
        let old = parent.join(format!(".{name}.old"));
        let had_old = target.exists();
        if had_old {
            if old.exists() {
                std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
            }
            std::fs::rename(&target, &old).map_err(|e| Error::io(&target, e))?;
        }
        if let Err(e) = std::fs::rename(&self.work, &target) {
            if had_old {
                let _ = std::fs::rename(&old, &target);
            }
            return Err(Error::io(&target, e));
        }
        if had_old {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        Ok(())
    }
}

impl Drop for OutDir {
    fn drop(&mut self) {
        if !self.committed && !self.in_place {
            let _ = std::fs::remove_dir_all(&self.work);
        }
        if !self.committed && self.created {
            // A resumable output that failed before writing anything: no empty directory
            // left behind (`remove_dir` refuses a directory with contents).
            let _ = std::fs::remove_dir(&self.work);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished_run(dir: &Path, file: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(file), b"old").unwrap();
        let mut m = Manifest::new("heads", serde_json::json!({}));
        m.add_file(file);
        m.write(dir).unwrap();
    }

    #[test]
    fn a_unit_replaces_only_what_it_may() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("run");
        // New directory: written through the partial one, renamed on commit.
        let o = OutDir::begin(&out, false).unwrap();
        assert_eq!(o.path(), tmp.path().join(".run.partial"));
        std::fs::write(o.path().join("a.txt"), b"new").unwrap();
        // A second writer is refused while the first holds the directory.
        let e = OutDir::begin(&out, true).unwrap_err().to_string();
        assert!(e.contains("is in use by another engram process"), "{e}");
        o.commit().unwrap();
        assert_eq!(std::fs::read(out.join("a.txt")).unwrap(), b"new");
        assert!(!tmp.path().join(".run.partial").exists());

        // A finished run: refused without --force, kept intact by a failed forced run.
        std::fs::remove_dir_all(&out).unwrap();
        finished_run(&out, "old.txt");
        let e = OutDir::begin(&out, false).unwrap_err().to_string();
        assert!(e.contains("already holds a finished `heads` run"), "{e}");
        assert!(e.contains("--force"), "{e}");
        {
            let o = OutDir::begin(&out, true).unwrap();
            std::fs::write(o.path().join("half.txt"), b"x").unwrap();
            // dropped without commit: a failure
        }
        assert!(out.join("old.txt").is_file() && !out.join("half.txt").exists());
        assert!(!tmp.path().join(".run.partial").exists());
        // A forced run that succeeds replaces it whole: no file of the old run stays.
        let o = OutDir::begin(&out, true).unwrap();
        std::fs::write(o.path().join("new.txt"), b"x").unwrap();
        o.commit().unwrap();
        assert!(out.join("new.txt").is_file() && !out.join("old.txt").exists());
        assert!(!tmp.path().join(".run.old").exists());

        // Not an engram run: refused even with --force; a file: refused.
        let foreign = tmp.path().join("mine");
        std::fs::create_dir_all(&foreign).unwrap();
        std::fs::write(foreign.join("thesis.tex"), b"x").unwrap();
        let e = OutDir::begin(&foreign, true).unwrap_err().to_string();
        assert!(e.contains("is not an engram run"), "{e}");
        assert!(foreign.join("thesis.tex").is_file());
        let e = OutDir::begin(&foreign.join("thesis.tex"), true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a file"), "{e}");
        // A stale partial directory (a killed run's) is removed.
        let stale = tmp.path().join(".fresh.partial");
        std::fs::create_dir_all(&stale).unwrap();
        std::fs::write(stale.join("junk"), b"x").unwrap();
        let o = OutDir::begin(&tmp.path().join("fresh"), false).unwrap();
        assert!(!o.path().join("junk").exists());
        // In place: straight into OUT, a finished run is resumed, not refused.
        let o = OutDir::in_place(&out).unwrap();
        assert_eq!(o.path(), out);
        o.commit().unwrap();
        assert!(out.join("new.txt").is_file());
    }
}
