//! Clean interruption: SIGINT, SIGTERM and SIGHUP remove what this process was in the middle
//! of writing (a probe's hidden `.OUT.partial` directory, a batch step's `.STEP.partial`, the
//! temporary file of an atomic write) and exit with `128 + signal`; finished outputs are never
//! touched. SIGKILL cannot be caught: it leaves only hidden partial directories and temporary
//! files, which the next run into the same place removes ([`crate::report::outdir`], batch
//! steps).
//!
//! Writers register what to remove with [`Guard::new`]; the guard unregisters it when dropped
//! (after a rename or a cleanup). [`install`] starts the handler thread once per process (the
//! binary does; a library user who wants the same calls it too).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

static PENDING: Mutex<Vec<(u64, PathBuf)>> = Mutex::new(Vec::new());
static NEXT: Mutex<u64> = Mutex::new(0);
static INSTALL: Once = Once::new();

/// A path removed if the process is interrupted while the guard lives.
#[derive(Debug)]
pub struct Guard(u64);

impl Guard {
    pub fn new(path: &Path) -> Guard {
        let id = {
            let mut n = NEXT.lock().unwrap_or_else(|e| e.into_inner());
            *n += 1;
            *n
        };
        PENDING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((id, path.to_path_buf()));
        Guard(id)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        PENDING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(id, _)| *id != self.0);
    }
}

/// The paths registered now (newest last).
pub fn pending() -> Vec<PathBuf> {
    PENDING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(_, p)| p.clone())
        .collect()
}

/// Remove every registered path (directories recursively); returns those removed.
pub fn remove_pending() -> Vec<PathBuf> {
    remove_paths(&pending())
}

/// Remove `paths`, newest (last) first; returns those removed.
fn remove_paths(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut removed = vec![];
    for p in paths.iter().rev() {
        let r = if p.is_dir() {
            std::fs::remove_dir_all(p)
        } else {
            std::fs::remove_file(p)
        };
        if r.is_ok() {
            removed.push(p.clone());
        }
    }
    removed
}

/// Start the signal handler (once per process; later calls do nothing).
pub fn install() {
    INSTALL.call_once(|| {
        #[cfg(unix)]
        {
            use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
            let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
            else {
                return;
            };
            std::thread::spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    let removed = remove_pending();
                    let name = match sig {
                        SIGINT => "SIGINT",
                        SIGTERM => "SIGTERM",
                        _ => "SIGHUP",
                    };
                    if removed.is_empty() {
                        eprintln!("engram: interrupted ({name})");
                    } else {
                        let list: Vec<String> =
                            removed.iter().map(|p| p.display().to_string()).collect();
                        eprintln!(
                            "engram: interrupted ({name}); removed partial outputs: {}",
                            list.join(", ")
                        );
                    }
                    std::process::exit(128 + sig);
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_register_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.partial");
        std::fs::create_dir_all(a.join("x")).unwrap();
        let f = dir.path().join(".f.tmp1");
        std::fs::write(&f, b"x").unwrap();
        let ga = Guard::new(&a);
        {
            let _gf = Guard::new(&f);
            assert!(pending().contains(&f));
        }
        assert!(!pending().contains(&f));
        assert!(pending().contains(&a));
        // (Not remove_pending: other tests' writes are registered too.)
        let removed = remove_paths(std::slice::from_ref(&a));
        assert!(removed.contains(&a) && !a.exists());
        assert!(f.exists(), "an unregistered file stays");
        drop(ga);
        assert!(!pending().contains(&a));
    }
}
