//! CMR (context maintenance and retrieval) lag-CRP simulation and fitting of attention heads.
//!
//! Li, Zhou, Benna, Mattar, "Linking In-context Learning in Transformers to Human Episodic
//! Memory", NeurIPS 2024; reference code github.com/corxyz/icl-cmr (`src/est_cmr_crp.py` for the
//! simulation, `src/fit_attn_score.py` for the fit). docs/methods.md section 1 is the spec; where it
//! is silent this module follows the reference code, and every such choice is written down
//! next to the code that makes it:
//!
//! * **Items and states.** 100 one-hot items plus one absorbing end state (101 states).
//!   `T` shifts state `i → i+1`; `M = (I − (1−β_enc) T)⁻¹ T`, so `M[i, j] = (1−β_enc)^(j−i−1)`
//!   for `j > i` and 0 otherwise (the absorbing state's column is part of `M`; its row is 0).
//!   `M_FT = M`.
//! * **Recall.** Context starts at `t = e_{s0}`. Each step draws the next state from
//!   `P = Mᵀt / Σ Mᵀt` (linear, no softmax, the absorbing state included) with the reference's
//!   inverse-CDF rule "first index `j` with `u ≤ cumsum(P)[j]`". Drawing the absorbing state ends
//!   the trial. **Items are never removed**: an already-recalled item can be recalled again
//!   (repeats give lag 0). After recalling item `f`:
//!   `t_IN = ((1−γ_FT) e_f + γ_FT M e_f) / ‖·‖₂` and `t ← ((1−β_rec) t + β_rec t_IN) / ‖·‖₂`
//!   ("normalised" = unit Euclidean norm, as `np.linalg.norm`).
//! * **Lag CRP of one start `s0`.** The first recall's lag is `f₁ − s0`; later lags are
//!   `f_k − f_{k−1}`. Lags with `|lag| > 8` are not counted but still count in the trial's number
//!   of recalls (the denominator). Each trial's histogram over lags −8..8 is divided by that
//!   trial's number of recalls; trials with no recall are skipped (`np.nanmean`); the mean over
//!   trials is normalised to sum 1.
//! * **Closed forms.** As in the reference, the two grid planes `(β_rec, γ_FT) = (1, 0)` and
//!   `(0, 0)` do not use the simulation but the reference's closed forms (see
//!   [`closed_form_crp`]); they are what the paper's saved table holds there. Note these are not
//!   the exact expectation of the simulated estimator (they ignore the first recall's lag from
//!   `s0` and the per-trial normalisation), so the table is discontinuous there by design.
//! * **Table entry** = mean over `s0 = 0..19` of the per-start normalised CRPs.
//! * **Number of recalls per trial.** docs/methods.md and `est_cmr_crp.py` say at most 100 recalls,
//!   but the paper's saved table (`cmr_crp_avg_20_11.npy`) was evidently produced with at most
//!   **50**: at deterministic grid points such as `(β_enc, β_rec, γ_FT) = (1, 0, 0.5)` (the
//!   recall is `s0+1` forever) the saved lag-0/lag+1 entries are exactly 0.98/0.02 = 49/50, 1/50,
//!   not 99/100, 1/100. [`SimConfig::paper`] therefore uses `max_recalls = 50` so that engram's
//!   table reproduces the saved one; [`SimConfig::methods_text`] has the 100 of the text.
//!
//! Speed: `Mᵀt` is never formed as a matrix product. The simulation keeps `C = cumsum(Mᵀt)`
//! in f32 (what the inverse-CDF draw needs) and updates it by one length-101 axpy per recall,
//! `C ← a·C + b·cumsum(Mᵀ t_IN(f))`, with the 101 vectors `cumsum(Mᵀ t_IN(f))` precomputed per
//! grid point by the O(n) recurrence `(Mᵀv)_j = (1−β_enc)(Mᵀv)_{j−1} + v_{j−1}`; the update and
//! the next draw's search (`#{j : C_j < u·ΣF}`) are one AVX2 pass (`simd.rs`, runtime-detected,
//! bit-identical portable fallback). The normalisation uses `‖(1−β_rec)t + β_rec t_IN‖² =
//! (1−β_rec)² + β_rec² + 2(1−β_rec)β_rec⟨t, t_IN⟩` with `⟨t, M e_f⟩ = (Mᵀt)_f` and
//! `t_f = (Mᵀt)_{f+1} − (1−β_enc)(Mᵀt)_f`, so `t` itself is never stored, and it only rescales
//! `C` (kept as `scale · cum`), off the update's critical path. Four trials per start run in
//! lockstep (`recall.rs`) so the core overlaps their dependency chains. Streams: xoshiro256++
//! (`rng.rs`); grid point `i` is seeded `seed ^ i` and every start and lane gets a stream split
//! off it in order, so the table does not depend on the number of threads or their schedule.
//! f32 is enough: the fast path reproduces the f64 dense replica's trajectories
//! ([`reference_recall_sequences`]) for 13199 of 13200 trials (641k recalls, 11 grid points × 3
//! starts). Cost on a 2-core AMD EPYC (Zen 2, AVX2): ~20 ns per recall step, ~20 ms per grid
//! point; the full 4620-point table ~1 min in the release build on 2 idle cores (docs/
//! performance.md). The paper-configuration table at [`DEFAULT_SEED`] ships with engram
//! ([`CrpTable::shipped`], reproduced bit for bit by the tests), so `engram heads` does not
//! simulate it; other configurations are simulated once per machine and cached
//! ([`CrpTable::cached_or_simulate_with`], with a progress bar).
//! Exact closed forms exist beyond the reference's two planes only for β_rec = 0 (i.i.d. draws)
//! and β_rec = 1 (a Markov chain over items), 440 of the 4620 points and the cheapest ones to
//! simulate (no context update); they are not used, so that every non-reference entry is the
//! same Monte-Carlo estimator as the paper's.
//!
//! The fit (per head, lags −5..+5): `a' = a − min a`; `c` = the CMR CRP restricted to −5..5 and
//! renormalised to sum 1, `c' = c − min c`; `s = max a' / max c'` (the inverse temperature);
//! distance `= mean((s·c' − a')²) / var(a')` (population variance); minimum over the grid (first
//! minimum in C order on ties, as `np.argmin`).

use crate::{bail, Result};

mod fit;
mod recall;
mod rng;
mod sim;
mod simd;
pub(crate) mod table;

pub use fit::*;
pub use rng::CmrRng;
pub use sim::*;
pub use table::*;

/// Number of lags in a CMR CRP row: −8..=+8.
pub const N_LAGS: usize = 17;
/// Largest |lag| stored in the CRP table.
pub const MAX_LAG: usize = 8;
/// Largest |lag| used by the fit (−5..=+5).
pub const FIT_LAG: usize = 5;
/// Number of lags in the fit window (11).
pub const N_FIT_LAGS: usize = 2 * FIT_LAG + 1;
/// Number of lags in a head's CRP score vector as the paper stores it: −8..=+7.
pub const N_HEAD_LAGS: usize = 16;
/// The default simulation seed.
pub const DEFAULT_SEED: u64 = 0x00C0_FFEE_C3A5;
/// CMR distance under which a head is called CMR-like.
pub const CMR_LIKE_THRESHOLD: f64 = 0.5;
/// The stricter CMR distance threshold also reported.
pub const STRICT_THRESHOLD: f64 = 0.1;

// ------------------------------------------------------------------------------------------------
// Grid
// ------------------------------------------------------------------------------------------------

/// The CMR parameter grid: β_enc × β_rec × γ_FT (C order, γ_FT fastest).
#[derive(Debug, Clone, PartialEq)]
pub struct CmrGrid {
    /// Encoding drift rates β_enc.
    pub beta_enc: Vec<f64>,
    /// Retrieval drift rates β_rec.
    pub beta_rec: Vec<f64>,
    /// Mixing weights γ_FT of the item-to-context association.
    pub gamma_ft: Vec<f64>,
}

impl Default for CmrGrid {
    fn default() -> Self {
        Self::paper()
    }
}

impl CmrGrid {
    /// The paper's grid: β_enc ∈ {0.05..1.00} (20), β_rec ∈ {0.00..1.00} (21),
    /// γ_FT ∈ {0.0..1.0} (11). Values are computed as `i·step + start` in f64, like
    /// `np.mgrid`, so they are bit-identical to the reference's (e.g. 0.30000000000000004).
    pub fn paper() -> Self {
        Self {
            beta_enc: (0..20).map(|i| i as f64 * 0.05 + 0.05).collect(),
            beta_rec: (0..21).map(|i| i as f64 * 0.05).collect(),
            gamma_ft: (0..11).map(|i| i as f64 * 0.1).collect(),
        }
    }

    /// `[n_beta_enc, n_beta_rec, n_gamma_ft]`.
    pub fn shape(&self) -> [usize; 3] {
        [
            self.beta_enc.len(),
            self.beta_rec.len(),
            self.gamma_ft.len(),
        ]
    }

    /// Number of grid points.
    pub fn len(&self) -> usize {
        self.beta_enc.len() * self.beta_rec.len() * self.gamma_ft.len()
    }

    /// True when the grid has no point.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Flat (C-order) index → `[i_enc, i_rec, i_gamma]`.
    pub fn unravel(&self, flat: usize) -> [usize; 3] {
        let [_, nr, ng] = self.shape();
        [flat / (nr * ng), (flat / ng) % nr, flat % ng]
    }

    /// `[i_enc, i_rec, i_gamma]` → flat (C-order) index.
    pub fn ravel(&self, idx: [usize; 3]) -> usize {
        let [_, nr, ng] = self.shape();
        (idx[0] * nr + idx[1]) * ng + idx[2]
    }

    /// Parameter values `(β_enc, β_rec, γ_FT)` at a flat index.
    pub fn params(&self, flat: usize) -> (f64, f64, f64) {
        let [i, j, k] = self.unravel(flat);
        (self.beta_enc[i], self.beta_rec[j], self.gamma_ft[k])
    }
}

// ------------------------------------------------------------------------------------------------
// Simulation
// ------------------------------------------------------------------------------------------------

/// Settings of the CMR free-recall simulation.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Number of items (one-hot); an absorbing end state is added after them.
    pub n_items: usize,
    /// Trials per start position.
    pub trials: usize,
    /// Maximum number of recalls per trial.
    pub max_recalls: usize,
    /// Start positions `s0 = 0..n_starts` averaged.
    pub n_starts: usize,
    /// Use the reference's closed forms on the `(β_rec, γ_FT) = (1, 0)` and `(0, 0)` planes.
    pub closed_forms: bool,
}

impl SimConfig {
    /// The configuration that reproduces the paper's saved table: 100 items, 1000 trials,
    /// 20 starts, closed forms on, and at most **50** recalls per trial (see the module docs:
    /// the saved table shows 50, although the reference script's text says 100).
    pub fn paper() -> Self {
        Self {
            n_items: 100,
            trials: 1000,
            max_recalls: 50,
            n_starts: 20,
            closed_forms: true,
        }
    }

    /// As [`SimConfig::paper`] but with the 100 recalls written in docs/methods.md and in
    /// `est_cmr_crp.py`.
    pub fn methods_text() -> Self {
        Self {
            max_recalls: 100,
            ..Self::paper()
        }
    }

    fn validate(&self) -> Result<()> {
        if self.n_items < 2 || self.n_starts == 0 || self.n_starts >= self.n_items {
            bail!(
                "CMR simulation: need n_items ≥ 2 and 0 < n_starts < n_items (got {} items, {} starts)",
                self.n_items,
                self.n_starts
            );
        }
        if self.trials == 0 || self.max_recalls == 0 {
            bail!("CMR simulation: trials and max_recalls must be positive");
        }
        Ok(())
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        Self::paper()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmr_grid_matches_mgrid() {
        let g = CmrGrid::paper();
        assert_eq!(g.shape(), [20, 21, 11]);
        assert_eq!(g.beta_rec[20], 1.0);
        assert_eq!(g.beta_enc[19], 1.0);
        assert_eq!(g.gamma_ft[3], 0.30000000000000004);
        for i in 0..g.len() {
            assert_eq!(g.ravel(g.unravel(i)), i);
        }
    }

    fn rngs_len() -> usize {
        recall::LANES_PER_START
    }

    #[test]
    fn cmr_fast_path_matches_dense_replica() {
        for &(be, br, g) in &[
            (0.3, 0.5, 0.4),
            (0.05, 0.95, 0.1),
            (1.0, 0.7, 1.0),
            (0.6, 1.0, 0.3),
            (0.85, 0.2, 0.9),
        ] {
            for s0 in [0usize, 7, 19] {
                // The detected (AVX2 where available) and portable kernels give the same
                // trajectories bit for bit.
                let simd = fast_recall_sequences(be, br, g, 100, s0, 40, 100, 11, false).0;
                let portable = fast_recall_sequences(be, br, g, 100, s0, 40, 100, 11, true).0;
                assert_eq!(simd, portable, "({be},{br},{g}) s0={s0}");
                for portable in [false, true] {
                    let (fast, mut rngs) =
                        fast_recall_sequences(be, br, g, 100, s0, 40, 100, 11, portable);
                    // Replay each lane's stream through the dense f64 replica.
                    let lanes: Vec<Vec<Vec<usize>>> = rngs
                        .iter_mut()
                        .enumerate()
                        .map(|(l, rng)| {
                            let n = (40 - l).div_ceil(rngs_len());
                            reference_recall_sequences(be, br, g, 100, s0, n, 100, rng)
                        })
                        .collect();
                    let same = (0..40)
                        .filter(|&i| fast[i] == lanes[i % rngs_len()][i / rngs_len()])
                        .count();
                    // f32 rounding can flip a draw that lands within ~1e-7 (relative) of a CDF
                    // boundary; allow one diverging trial in 40.
                    assert!(same >= 39, "({be},{br},{g}) s0={s0}: {same}/40 identical");
                }
            }
        }
    }

    #[test]
    fn cmr_fit_degenerate_heads() {
        let table = CrpTable::from_vec(CmrGrid::paper(), {
            let mut v = vec![0.0; CmrGrid::paper().len() * N_LAGS];
            for (i, x) in v.iter_mut().enumerate() {
                *x = ((i % N_LAGS) as f64 - 8.0).abs().recip().min(2.0);
            }
            v
        })
        .unwrap();
        assert!(fit_head(&table, &[1.0; 16]).is_degenerate());
        let mut nan = [0.5; 16];
        nan[3] = f64::NAN;
        assert!(fit_head(&table, &nan).is_degenerate());
        assert!(fit_head(&table, &[1.0; 3]).is_degenerate());
        let mut ok = [0.0; 16];
        ok[8] = 1.0;
        assert!(!fit_head(&table, &ok).is_degenerate());
    }
}
