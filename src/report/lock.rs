//! Advisory locks on run directories and steps (`flock` on Unix, `LockFileEx` on Windows),
//! released when the process ends however it ends, so a killed run never leaves a stale lock.
//!
//! - [`Lock::exclusive`]: one writer (a whole batch run, its merge, one step of a shard).
//! - [`Lock::shared`]: many cooperating writers (the shards of one run), excluding any
//!   exclusive holder.
//!
//! An exclusive holder writes its pid, host and command line into the lock file, which the error
//! of a process that finds the lock taken quotes. The lock files stay (hidden, empty or one
//! line); removing them would race with the next holder.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// A held lock; dropping it releases the lock.
#[derive(Debug)]
pub struct Lock {
    _file: File,
    pub path: PathBuf,
}

fn open(path: &Path) -> Result<File> {
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

fn holder(file: &mut File) -> String {
    let mut s = String::new();
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.read_to_string(&mut s);
    let s = s.trim();
    if s.is_empty() {
        "another engram process".to_string()
    } else {
        format!("another engram process ({s})")
    }
}

impl Lock {
    /// Take `path` exclusively, or fail at once with a one-line error naming `what` and the
    /// holder.
    pub fn exclusive(path: &Path, what: &str) -> Result<Lock> {
        let mut file = open(path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => crate::bail!(
                "{what} is in use by {} (lock {})",
                holder(&mut file),
                path.display()
            ),
            Err(TryLockError::Error(e)) => return Err(Error::io(path, e)),
        }
        let me = format!(
            "pid {} on {}: {}",
            std::process::id(),
            crate::batch::shard::hostname(),
            std::env::args().collect::<Vec<_>>().join(" ")
        );
        let _ = file.set_len(0);
        let _ = file.write_all(me.as_bytes());
        Ok(Lock {
            _file: file,
            path: path.to_path_buf(),
        })
    }

    /// Take `path` shared (with other shared holders), or fail at once if it is held
    /// exclusively.
    pub fn shared(path: &Path, what: &str) -> Result<Lock> {
        let mut file = open(path)?;
        match file.try_lock_shared() {
            Ok(()) => Ok(Lock {
                _file: file,
                path: path.to_path_buf(),
            }),
            Err(TryLockError::WouldBlock) => crate::bail!(
                "{what} is in use by {} (lock {})",
                holder(&mut file),
                path.display()
            ),
            Err(TryLockError::Error(e)) => Err(Error::io(path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_and_shared_share() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(".lock");
        let a = Lock::exclusive(&p, "run x").unwrap();
        let e = Lock::exclusive(&p, "run x").unwrap_err().to_string();
        assert!(
            e.starts_with("run x is in use by another engram process (pid "),
            "{e}"
        );
        assert!(Lock::shared(&p, "run x").is_err());
        drop(a);
        let s1 = Lock::shared(&p, "run x").unwrap();
        let _s2 = Lock::shared(&p, "run x").unwrap();
        assert!(Lock::exclusive(&p, "run x").is_err());
        drop(s1);
        assert!(Lock::exclusive(&p, "run x").is_err());
    }
}
