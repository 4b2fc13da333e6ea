//! Progress reporting for long loops: an indicatif bar on a terminal, plain periodic lines on
//! stderr when it is not a terminal (a log file, a batch job), nothing in quiet mode, or one JSON
//! object per update on stderr for scripts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// How progress is shown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProgressMode {
    #[default]
    Bar,
    Quiet,
    JsonLines,
    /// `task: done/total (pct) elapsed` on stderr at most every [`LINE_EVERY`] and at the end.
    Lines,
}

/// The shortest interval between two plain progress lines.
pub const LINE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl ProgressMode {
    /// A bar when stderr is a terminal, plain lines otherwise.
    pub fn auto() -> Self {
        use std::io::IsTerminal;
        if std::io::stderr().is_terminal() {
            ProgressMode::Bar
        } else {
            ProgressMode::Lines
        }
    }
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
            lines: (self.mode == ProgressMode::Lines).then(|| {
                Arc::new(std::sync::Mutex::new((
                    std::time::Instant::now(),
                    std::time::Instant::now(),
                )))
            }),
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
    /// (start, last line printed) in plain-lines mode.
    lines: Option<Arc<std::sync::Mutex<(std::time::Instant, std::time::Instant)>>>,
    msg: String,
    len: u64,
    pos: Arc<AtomicU64>,
}

impl Bar {
    fn line(&self, pos: u64, last: bool) {
        let Some(l) = &self.lines else { return };
        let Ok(mut t) = l.lock() else { return };
        if !last && t.1.elapsed() < LINE_EVERY {
            return;
        }
        t.1 = std::time::Instant::now();
        let pct = if self.len > 0 {
            format!(" ({:.0}%)", 100.0 * pos as f64 / self.len as f64)
        } else {
            String::new()
        };
        eprintln!(
            "{}: {pos}/{}{pct} {:.0}s{}",
            self.msg,
            self.len,
            t.0.elapsed().as_secs_f64(),
            if last { " done" } else { "" }
        );
    }
}

impl Bar {
    pub fn inc(&self, n: u64) {
        let pos = self.pos.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(pb) = &self.inner {
            pb.inc(n);
        }
        self.line(pos, false);
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
        self.line(self.pos.load(Ordering::Relaxed), true);
        if self.json {
            eprintln!(
                "{}",
                serde_json::json!({"event": "done", "task": self.msg, "total": self.len})
            );
        }
    }
}
