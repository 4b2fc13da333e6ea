//! The research probes: each is params → run(&Model, params) → tables + charts + manifest.

pub mod cmr;
pub mod directions;
pub mod heads;
pub mod neurons;
pub mod sae;
