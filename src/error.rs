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
