//! Progress reporting for long loops: an indicatif bar on a terminal, nothing in quiet mode,
//! or one JSON object per update on stderr for scripts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// How progress is shown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProgressMode {
    #[default]
    Bar,
    Quiet,
    JsonLines,
}

/// A factory of progress bars sharing one mode.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    pub mode: ProgressMode,
}

impl Progress {
    pub fn new(mode: ProgressMode) -> Self {
        Progress { mode }
    }

    pub fn quiet() -> Self {
        Progress {
            mode: ProgressMode::Quiet,
        }
    }

    /// A bar of `len` steps labelled `msg`.
    pub fn bar(&self, len: u64, msg: &str) -> Bar {
        let inner = match self.mode {
            ProgressMode::Bar => {
                let pb = indicatif::ProgressBar::new(len);
                if let Ok(style) = indicatif::ProgressStyle::with_template(
                    "{msg} {bar:30} {pos}/{len} [{elapsed_precise} < {eta}]",
                ) {
                    pb.set_style(style);
                }
                pb.set_message(msg.to_string());
                Some(pb)
            }
            _ => None,
        };
        Bar {
            inner,
            json: self.mode == ProgressMode::JsonLines,
            msg: msg.to_string(),
            len,
            pos: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// One progress bar.
#[derive(Clone)]
pub struct Bar {
    inner: Option<indicatif::ProgressBar>,
    json: bool,
    msg: String,
    len: u64,
    pos: Arc<AtomicU64>,
}

impl Bar {
    pub fn inc(&self, n: u64) {
        let pos = self.pos.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(pb) = &self.inner {
            pb.inc(n);
        }
        if self.json {
            eprintln!(
                "{}",
                serde_json::json!({"event": "progress", "task": self.msg, "done": pos, "total": self.len})
            );
        }
    }

    pub fn finish(&self) {
        if let Some(pb) = &self.inner {
            pb.finish_and_clear();
        }
        if self.json {
            eprintln!(
                "{}",
                serde_json::json!({"event": "done", "task": self.msg, "total": self.len})
            );
        }
    }
}
