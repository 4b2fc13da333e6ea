//! engram: mechanistic interpretability of Llama- and Gemma-family language models on candle.
//!
//! Data flows one way: model source → weights + config + tokenizer → one hooked forward pass →
//! captured activations / interventions → a probe's computation → tables + charts + manifest.

pub mod alloc;
pub mod batch;
pub mod cli;
pub mod data;
pub mod error;
pub mod hooks;
pub mod interrupt;
pub mod model;
pub mod probes;
pub mod progress;
pub mod report;
pub mod toy;

/// candle, re-exported: tensors, devices and dtypes without a dependency of your own.
pub use candle_core;
pub use error::{Context, Error, Result};
