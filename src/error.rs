//! Errors are values: every failure names the file, tensor, hook or parameter it is about.

use std::path::{Path, PathBuf};

/// The library's error type. The binary prints it as one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unknown hook point `{0}` (see `engram info --model M` for the list)")]
    UnknownHook(String),
    #[error("layer {layer} is out of range: the model has {n_layers} layers")]
    LayerOutOfRange { layer: usize, n_layers: usize },
    #[error(
        "unsupported architecture `{0}` (supported: {supported})",
        supported = crate::model::config::SUPPORTED
    )]
    UnsupportedArch(String),
    #[error("tensor `{0}` not found in the checkpoint")]
    MissingTensor(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Polars(#[from] polars::error::PolarsError),
    #[error("{0}")]
    Msg(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn msg(m: impl std::fmt::Display) -> Self {
        Error::Msg(m.to_string())
    }
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
}

/// `bail!("...")`: return early with an [`Error::Msg`].
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::error::Error::msg(format!($($arg)*)))
    };
}

/// Attach context to any error: `res.ctx(|| format!("reading {path}"))?`.
pub trait Context<T> {
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T>;
}

impl<T, E: std::fmt::Display> Context<T> for std::result::Result<T, E> {
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T> {
        self.map_err(|e| Error::Msg(format!("{}: {e}", f())))
    }
}

impl<T> Context<T> for Option<T> {
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T> {
        self.ok_or_else(|| Error::Msg(f()))
    }
}

/// An error's text as the one line the binary prints: lines joined by spaces, and a backtrace
/// (candle appends one when `RUST_BACKTRACE` is set) left out.
pub fn one_line_message(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .take_while(|l| {
            let t = l.trim_start();
            !(t.starts_with("0:")
                || t.starts_with("stack backtrace")
                || t.starts_with("Stack backtrace"))
        })
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines.join(" ")
}

#[cfg(test)]
mod one_line_tests {
    use super::one_line_message;

    #[test]
    fn backtraces_are_left_out() {
        let candle = "shape mismatch in matmul, lhs: [4, 576], rhs: [640, 2304]\n   0: candle_core::error::Error::bt\n             at /x/error.rs:245:25\n   1: candle_core::tensor::Tensor::matmul";
        assert_eq!(
            one_line_message(candle),
            "shape mismatch in matmul, lhs: [4, 576], rhs: [640, 2304]"
        );
        assert_eq!(one_line_message("a\nb"), "a b");
        assert_eq!(one_line_message("bad\nstack backtrace:\n   0: main"), "bad");
    }
}

thread_local! {
    static QUIET_PANICS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run `f`, turning a panic inside it into `Err(message)` without the panic being printed: for
/// calls into libraries that panic on malformed input (the `tokenizers` crate's decoder
/// deserialisation `expect`s). Panics elsewhere print as before.
pub fn catch_quiet<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET_PANICS.with(|q| q.get()) {
                previous(info);
            }
        }));
    });
    let was = QUIET_PANICS.with(|q| q.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET_PANICS.with(|q| q.set(was));
    r.map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".to_string())
    })
}

#[cfg(test)]
mod catch_tests {
    #[test]
    fn panics_become_errors() {
        assert_eq!(super::catch_quiet(|| 3), Ok(3));
        let e = super::catch_quiet(|| -> u8 { panic!("bad {}", 1) }).unwrap_err();
        assert_eq!(e, "bad 1");
    }
}
