//! engram's integration tests: one binary, a module per topic (shared helpers in `common`).
//! Model tests need `scripts/fetch-models.sh`; without the models they are skipped with a
//! message, unless ENGRAM_REQUIRE_MODELS=1.

mod attribute;
mod batch;
mod breadth;
mod cli;
mod cmr;
mod common;
mod directions;
mod gguf;
mod grad;
mod heads;
mod heads_reference;
mod hooks;
mod hub;
#[cfg(unix)]
mod interrupt;
mod lens;
mod mapped;
mod neurons;
mod parity;
mod real_models;
mod report_page;
mod sae;
mod sae_dashboard;
mod sae_kinds;
mod sae_pretrained;
mod shard;
mod tokenizer;
mod toy_induction;
mod unsafe_code;
