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
//! (what the inverse-CDF draw needs, searched by bisection) and updates it by one length-101
//! axpy per recall, `C ← a·C + b·cumsum(Mᵀ t_IN(f))`, with the 101 vectors `cumsum(Mᵀ t_IN(f))`
//! precomputed per grid point by the O(n) recurrence `(Mᵀv)_j = (1−β_enc)(Mᵀv)_{j−1} + v_{j−1}`.
//! The normalisation uses `‖(1−β_rec)t + β_rec t_IN‖² = (1−β_rec)² + β_rec² +
//! 2(1−β_rec)β_rec⟨t, t_IN⟩` with `⟨t, M e_f⟩ = (Mᵀt)_f` and `t_f = (Mᵀt)_{f+1} − (1−β_enc)(Mᵀt)_f`,
//! so `t` itself is never stored. Grid points run in parallel (rayon) with one RNG per grid
//! point, `StdRng::seed_from_u64(seed ^ flat_index)`, so the table does not depend on thread
//! scheduling. Cost: ~90 ns per recall step in the dev profile (AVX axpy + bisection), ~0.1 s
//! per simulated grid point (20 starts × 1000 trials); the full 4620-point table takes
//! ~3.5 min on 2 idle cores in the dev profile (5–7 min on a loaded machine), hence the
//! per-machine cache ([`CrpTable::cached_or_simulate`]).
//!
//! The fit (per head, lags −5..+5): `a' = a − min a`; `c` = the CMR CRP restricted to −5..5 and
//! renormalised to sum 1, `c' = c − min c`; `s = max a' / max c'` (the inverse temperature);
//! distance `= mean((s·c' − a')²) / var(a')` (population variance); minimum over the grid (first
//! minimum in C order on ties, as `np.argmin`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::{bail, Context, Error, Result};

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

/// The lag-CRP of one grid point (averaged over start positions) and its Monte-Carlo standard
/// error.
#[derive(Debug, Clone, PartialEq)]
pub struct PointCrp {
    /// CRP over lags −8..=8, sums to 1 (NaN if no start produced a countable transition).
    pub crp: [f64; N_LAGS],
    /// Monte-Carlo standard error of each entry: per start, the standard error of the trial
    /// mean divided by that start's normalising sum (the normaliser is treated as fixed), then
    /// combined over starts as `sqrt(Σ se²) / n_starts`. All zeros for closed forms.
    pub sem: [f64; N_LAGS],
    /// Whether the entry came from a closed form (no Monte-Carlo error).
    pub closed_form: bool,
}

/// Which closed form, if any, the reference uses at `(β_rec, γ_FT)`: exact float comparison
/// `β_rec == 1 && γ == 0` or `β_rec == 0 && γ == 0`, as `est_cmr_crp.getCRP`.
fn closed_form_kind(beta_rec: f64, gamma_ft: f64) -> Option<bool> {
    if gamma_ft == 0.0 && beta_rec == 1.0 {
        Some(true)
    } else if gamma_ft == 0.0 && beta_rec == 0.0 {
        Some(false)
    } else {
        None
    }
}

/// `q^k` for k = 0..len with `0⁰ = 1` (so β_enc = 1 gives M = T exactly).
fn powers(q: f64, len: usize) -> Vec<f64> {
    let mut p = Vec::with_capacity(len);
    let mut x = 1.0;
    for _ in 0..len {
        p.push(x);
        x *= q;
    }
    p
}

/// The reference's closed-form CRP for one start `s0` (already normalised to sum 1), or `None`
/// when `(β_rec, γ_FT)` is neither `(1, 0)` nor `(0, 0)`.
///
/// * `(1, 0)`: for d = 1..8, `crp[d] = Σ_i P1_i P2_i` with `P1 = (M^d)[s0,:]` normalised and
///   `P2_i = M[i, i+d] / Σ_j M[i, j]` (0 where `i + d` is past the last state; the absorbing
///   row's 0/0 is dropped as by `np.nansum`); lags ≤ 0 are 0.
/// * `(0, 0)`: `P1 = M[s0,:]` normalised (absorbing state included);
///   `crp[0] = Σ P1²`, `crp[±d] = Σ_i P1_i P1_{i+d}`.
pub fn closed_form_crp(
    beta_enc: f64,
    beta_rec: f64,
    gamma_ft: f64,
    n_items: usize,
    s0: usize,
) -> Option<[f64; N_LAGS]> {
    let kind = closed_form_kind(beta_rec, gamma_ft)?;
    let n = n_items + 1;
    let q = 1.0 - beta_enc;
    let pw = powers(q, n + 1);
    // m[k] = M[i, i+k] = q^(k-1) for k ≥ 1.
    let m: Vec<f64> = (0..n)
        .map(|k| if k == 0 { 0.0 } else { pw[k - 1] })
        .collect();
    let mut crp = [0.0; N_LAGS];
    if kind {
        // Row sums of M: rs[i] = Σ_{k=1}^{n-1-i} m[k].
        let rs: Vec<f64> = (0..n).map(|i| m[1..n - i].iter().sum()).collect();
        // power[k] = (M^d)[s0, s0 + k]: d-fold convolution of m (upper-triangular Toeplitz).
        let len = n - s0;
        let mut power = vec![0.0; len];
        power[0] = 1.0; // M^0 = I
        for d in 1..=MAX_LAG {
            let mut next = vec![0.0; len];
            for (k, nk) in next.iter_mut().enumerate() {
                let mut acc = 0.0;
                for l in 0..k {
                    acc += power[l] * m[k - l];
                }
                *nk = acc;
            }
            power = next;
            let tot: f64 = power.iter().sum();
            let mut acc = 0.0;
            for (k, &p) in power.iter().enumerate() {
                let i = s0 + k;
                if i + d < n && rs[i] != 0.0 {
                    acc += (p / tot) * (m[d] / rs[i]);
                }
            }
            crp[MAX_LAG + d] = acc;
        }
    } else {
        let mut p1 = vec![0.0; n];
        for (j, pj) in p1.iter_mut().enumerate().skip(s0 + 1) {
            *pj = m[j - s0];
        }
        let tot: f64 = p1.iter().sum();
        p1.iter_mut().for_each(|x| *x /= tot);
        crp[MAX_LAG] = p1.iter().map(|x| x * x).sum();
        for d in 1..=MAX_LAG.min(n_items) {
            let v: f64 = (0..n - d).map(|i| p1[i] * p1[i + d]).sum();
            crp[MAX_LAG + d] = v;
            crp[MAX_LAG - d] = v;
        }
    }
    let s: f64 = crp.iter().sum();
    crp.iter_mut().for_each(|x| *x /= s);
    Some(crp)
}

/// Per-grid-point precomputation for the fast simulation.
struct Kernel {
    n: usize,
    q: f64,
    beta_rec: f64,
    gamma_ft: f64,
    /// `1 / ‖(1−γ) e_f + γ M e_f‖` per item f.
    inv_norm_in: Vec<f64>,
    /// Row f: `cumsum(Mᵀ t_IN(f))` over the n states.
    cg: Vec<f64>,
    /// `y += w·x`, the per-recall hot loop (AVX when the CPU has it).
    axpy: fn(&mut [f64], f64, &[f64]),
}

/// `y += w·x` (element-wise multiply then add, no FMA, so every path rounds identically).
fn axpy_scalar(y: &mut [f64], w: f64, x: &[f64]) {
    for (c, r) in y.iter_mut().zip(x) {
        *c += w * r;
    }
}

/// AVX version of [`axpy_scalar`], bit-identical to it (separate multiply and add). Raw
/// pointers with `wrapping_add` keep the dev profile's debug checks out of the hot loop.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn axpy_avx_impl(y: &mut [f64], w: f64, x: &[f64]) {
    use std::arch::x86_64::{
        _mm256_add_pd, _mm256_loadu_pd, _mm256_mul_pd, _mm256_set1_pd, _mm256_storeu_pd,
    };
    let n = y.len().min(x.len());
    let n8 = n - n % 8;
    let wv = _mm256_set1_pd(w);
    let yp = y.as_mut_ptr();
    let xp = x.as_ptr();
    let mut i = 0;
    while i < n8 {
        // SAFETY: i + 8 ≤ n ≤ the length of both slices; unaligned loads and stores.
        unsafe {
            let x0 = _mm256_loadu_pd(xp.wrapping_add(i));
            let x1 = _mm256_loadu_pd(xp.wrapping_add(i + 4));
            let y0 = _mm256_loadu_pd(yp.wrapping_add(i));
            let y1 = _mm256_loadu_pd(yp.wrapping_add(i + 4));
            _mm256_storeu_pd(yp.wrapping_add(i), _mm256_add_pd(y0, _mm256_mul_pd(wv, x0)));
            _mm256_storeu_pd(
                yp.wrapping_add(i + 4),
                _mm256_add_pd(y1, _mm256_mul_pd(wv, x1)),
            );
        }
        i += 8;
    }
    axpy_scalar(&mut y[n8..n], w, &x[n8..n]);
}

/// Index of the first element `≥ target` in the nondecreasing `c` (`c.len()` if none):
/// a branch-free bisection.
fn first_at_least(c: &[f64], target: f64) -> usize {
    let mut base = 0usize;
    let mut len = c.len();
    while len > 1 {
        let half = len / 2;
        if c[base + half - 1] < target {
            base += half;
        }
        len -= half;
    }
    if len == 1 && c[base] < target {
        base + 1
    } else {
        base
    }
}

#[cfg(target_arch = "x86_64")]
fn axpy_avx(y: &mut [f64], w: f64, x: &[f64]) {
    // SAFETY: only selected by `pick_axpy` after the CPU was detected to support AVX.
    unsafe { axpy_avx_impl(y, w, x) }
}

fn pick_axpy() -> fn(&mut [f64], f64, &[f64]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx") {
            return axpy_avx;
        }
    }
    axpy_scalar
}

impl Kernel {
    fn new(n_items: usize, beta_enc: f64, beta_rec: f64, gamma_ft: f64) -> Self {
        let n = n_items + 1;
        let q = 1.0 - beta_enc;
        let pw = powers(q, n + 1);
        let mut inv_norm_in = vec![0.0; n_items];
        let mut cg = vec![0.0; n_items * n];
        let mut v = vec![0.0; n];
        let mut sq = 0.0; // Σ_{m<f} q^(2m)
        for f in 0..n_items {
            if f > 0 {
                sq += pw[f - 1] * pw[f - 1];
            }
            let norm = ((1.0 - gamma_ft).powi(2) + gamma_ft * gamma_ft * sq).sqrt();
            // f = 0 with γ = 1 has t_IN = 0/0 (as in the reference); item 0 is never drawn
            // (column 0 of M is zero), so its row is left at 0.
            let inv = if norm > 0.0 { 1.0 / norm } else { 0.0 };
            inv_norm_in[f] = inv;
            // v = t_IN(f): (1−γ)/‖·‖ at f, γ q^(f−i−1)/‖·‖ at i < f.
            v.iter_mut().for_each(|x| *x = 0.0);
            v[f] = (1.0 - gamma_ft) * inv;
            for (i, vi) in v.iter_mut().enumerate().take(f) {
                *vi = gamma_ft * pw[f - i - 1] * inv;
            }
            // (Mᵀv)_0 = 0, (Mᵀv)_j = q (Mᵀv)_{j−1} + v_{j−1}; then the cumulative sum.
            let row = &mut cg[f * n..(f + 1) * n];
            let mut g = 0.0;
            let mut c = 0.0;
            for j in 1..n {
                g = q * g + v[j - 1];
                c += g;
                row[j] = c;
            }
        }
        Self {
            n,
            q,
            beta_rec,
            gamma_ft,
            inv_norm_in,
            cg,
            axpy: pick_axpy(),
        }
    }
}

/// Accumulates one start position's per-trial lag histograms.
struct StartAcc {
    sum: [f64; N_LAGS],
    sumsq: [f64; N_LAGS],
    valid: usize,
}

impl StartAcc {
    fn new() -> Self {
        Self {
            sum: [0.0; N_LAGS],
            sumsq: [0.0; N_LAGS],
            valid: 0,
        }
    }

    fn push_trial(&mut self, counts: &[u32; N_LAGS], n_recalls: usize) {
        if n_recalls == 0 {
            return; // 0/0 row, skipped by np.nanmean
        }
        let inv = 1.0 / n_recalls as f64;
        for ((s, sq), &c) in self.sum.iter_mut().zip(&mut self.sumsq).zip(counts) {
            let y = c as f64 * inv;
            *s += y;
            *sq += y * y;
        }
        self.valid += 1;
    }

    /// Normalised CRP and its standard error (normaliser treated as fixed).
    fn finish(&self) -> ([f64; N_LAGS], [f64; N_LAGS]) {
        let mut crp = [f64::NAN; N_LAGS];
        let mut se = [f64::NAN; N_LAGS];
        if self.valid == 0 {
            return (crp, se);
        }
        let nv = self.valid as f64;
        let mean: Vec<f64> = self.sum.iter().map(|s| s / nv).collect();
        let tot: f64 = mean.iter().sum();
        for l in 0..N_LAGS {
            crp[l] = mean[l] / tot;
            let var = if self.valid > 1 {
                ((self.sumsq[l] - nv * mean[l] * mean[l]) / (nv - 1.0)).max(0.0)
            } else {
                0.0
            };
            se[l] = (var / nv).sqrt() / tot;
        }
        (crp, se)
    }
}

/// `cumsum(Mᵀ e_{s0})`, the cumulative of row `s0` of `M`: the starting `C` of a trial.
fn initial_cum(k: &Kernel, s0: usize) -> Vec<f64> {
    let pw = powers(k.q, k.n + 1);
    let mut c0 = vec![0.0; k.n];
    let mut c = 0.0;
    for (j, cj) in c0.iter_mut().enumerate().skip(s0 + 1) {
        c += pw[j - s0 - 1];
        *cj = c;
    }
    c0
}

/// One CMR free-recall trial from start `s0`; `cum` must hold [`initial_cum`]. Calls
/// `on_recall(item)` for every recalled item and returns the number of recalls.
fn run_trial(
    k: &Kernel,
    cum: &mut [f64],
    max_recalls: usize,
    rng: &mut StdRng,
    mut on_recall: impl FnMut(usize),
) -> usize {
    let n = k.n;
    let last = n - 1; // the absorbing state
    let br = k.beta_rec;
    let g = k.gamma_ft;
    let mut scale = 1.0; // true C = scale · cum
    let mut n_rec = 0usize;
    while n_rec < max_recalls {
        let total = cum[last];
        if total.is_nan() || total <= 0.0 {
            break; // no mass anywhere (cannot happen for valid parameters)
        }
        let u: f64 = rng.random();
        // First j with u·ΣF ≤ C_j (the reference's `rand() <= cumsum(P)`); the floor skips
        // leading zero-probability states in case u = 0.
        let target = (u * total).max(f64::MIN_POSITIVE);
        let f = first_at_least(cum, target);
        if f >= last {
            break; // absorbing state: recall ends
        }
        on_recall(f);
        n_rec += 1;
        if n_rec == max_recalls || br == 0.0 {
            continue; // no update needed (β_rec = 0 leaves t unchanged)
        }
        // ⟨t, t_IN(f)⟩ from F = Mᵀt: F_f = C_f − C_{f−1}, t_f = F_{f+1} − q F_f.
        let c_fm1 = if f > 0 { cum[f - 1] } else { 0.0 };
        let f_f = scale * (cum[f] - c_fm1);
        let f_f1 = scale * (cum[f + 1] - cum[f]);
        let t_f = f_f1 - k.q * f_f;
        let dot = ((1.0 - g) * t_f + g * f_f) * k.inv_norm_in[f];
        let norm2 = (1.0 - br) * (1.0 - br) + br * br + 2.0 * (1.0 - br) * br * dot;
        let norm = norm2.max(0.0).sqrt();
        let a = (1.0 - br) / norm;
        let b = br / norm;
        let row = &k.cg[f * n..(f + 1) * n];
        if a == 0.0 {
            for (c, r) in cum.iter_mut().zip(row) {
                *c = b * r;
            }
            scale = 1.0;
        } else {
            scale *= a;
            (k.axpy)(cum, b / scale, row);
            if scale < 1e-100 {
                cum.iter_mut().for_each(|c| *c *= scale);
                scale = 1.0;
            }
        }
    }
    n_rec
}

/// Runs `cfg.trials` trials from start `s0` and accumulates their lag histograms.
fn run_start(k: &Kernel, cfg: &SimConfig, s0: usize, rng: &mut StdRng, acc: &mut StartAcc) {
    let c0 = initial_cum(k, s0);
    let mut cum = c0.clone();
    for _ in 0..cfg.trials {
        cum.copy_from_slice(&c0);
        let mut counts = [0u32; N_LAGS];
        let mut prev = s0 as i64;
        let n_rec = run_trial(k, &mut cum, cfg.max_recalls, rng, |f| {
            let lag = f as i64 - prev;
            if lag.unsigned_abs() as usize <= MAX_LAG {
                counts[(lag + MAX_LAG as i64) as usize] += 1;
            }
            prev = f as i64;
        });
        acc.push_trial(&counts, n_rec);
    }
}

/// Lag-CRP of one grid point, averaged over starts `0..cfg.n_starts`.
///
/// With `cfg.closed_forms` the `(β_rec, γ_FT) = (1, 0)` and `(0, 0)` points use
/// [`closed_form_crp`] (zero standard error); otherwise the Monte-Carlo simulation runs with
/// `StdRng::seed_from_u64(seed)` (one stream for all starts, in order).
pub fn simulate_point(
    beta_enc: f64,
    beta_rec: f64,
    gamma_ft: f64,
    cfg: &SimConfig,
    seed: u64,
) -> Result<PointCrp> {
    cfg.validate()?;
    if beta_enc.is_nan()
        || beta_enc <= 0.0
        || beta_enc > 1.0
        || !(0.0..=1.0).contains(&beta_rec)
        || !(0.0..=1.0).contains(&gamma_ft)
    {
        bail!("CMR parameters out of range: β_enc={beta_enc} (0,1], β_rec={beta_rec} [0,1], γ_FT={gamma_ft} [0,1]");
    }
    let ns = cfg.n_starts as f64;
    let mut crp = [0.0; N_LAGS];
    let mut var = [0.0; N_LAGS];
    if cfg.closed_forms && closed_form_kind(beta_rec, gamma_ft).is_some() {
        for s0 in 0..cfg.n_starts {
            let c = closed_form_crp(beta_enc, beta_rec, gamma_ft, cfg.n_items, s0)
                .expect("closed form kind checked");
            for l in 0..N_LAGS {
                crp[l] += c[l] / ns;
            }
        }
        return Ok(PointCrp {
            crp,
            sem: [0.0; N_LAGS],
            closed_form: true,
        });
    }
    let kernel = Kernel::new(cfg.n_items, beta_enc, beta_rec, gamma_ft);
    let mut rng = StdRng::seed_from_u64(seed);
    for s0 in 0..cfg.n_starts {
        let mut acc = StartAcc::new();
        run_start(&kernel, cfg, s0, &mut rng, &mut acc);
        let (c, se) = acc.finish();
        for l in 0..N_LAGS {
            crp[l] += c[l] / ns;
            var[l] += se[l] * se[l];
        }
    }
    let mut sem = [0.0; N_LAGS];
    for l in 0..N_LAGS {
        sem[l] = var[l].sqrt() / ns;
    }
    Ok(PointCrp {
        crp,
        sem,
        closed_form: false,
    })
}

/// Straightforward O(n²)-per-step replica of the reference's `recall` loop (dense `Mᵀt`,
/// explicit `t`), drawing from the same RNG stream as the fast path. Returns the recalled item
/// sequences of `trials` trials from `s0`. For tests of the fast simulation.
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub fn reference_recall_sequences(
    beta_enc: f64,
    beta_rec: f64,
    gamma_ft: f64,
    n_items: usize,
    s0: usize,
    trials: usize,
    max_recalls: usize,
    seed: u64,
) -> Vec<Vec<usize>> {
    let n = n_items + 1;
    let q = 1.0 - beta_enc;
    let pw = powers(q, n + 1);
    let m = |i: usize, j: usize| if j > i { pw[j - i - 1] } else { 0.0 };
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(trials);
    for _ in 0..trials {
        let mut t = vec![0.0; n];
        t[s0] = 1.0;
        let mut seq = Vec::new();
        while seq.len() < max_recalls {
            let fv: Vec<f64> = (0..n)
                .map(|j| (0..n).map(|i| m(i, j) * t[i]).sum())
                .collect();
            let tot: f64 = fv.iter().sum();
            let u: f64 = rng.random();
            let mut c = 0.0;
            let mut pick = n - 1;
            for (j, x) in fv.iter().enumerate() {
                c += x;
                if c > 0.0 && u * tot <= c {
                    pick = j;
                    break;
                }
            }
            if pick == n - 1 {
                break;
            }
            seq.push(pick);
            if seq.len() == max_recalls || beta_rec == 0.0 {
                continue;
            }
            let mut tin: Vec<f64> = (0..n)
                .map(|i| (1.0 - gamma_ft) * f64::from(u8::from(i == pick)) + gamma_ft * m(i, pick))
                .collect();
            let nn = tin.iter().map(|x| x * x).sum::<f64>().sqrt();
            tin.iter_mut().for_each(|x| *x /= nn);
            for (ti, xi) in t.iter_mut().zip(&tin) {
                *ti = (1.0 - beta_rec) * *ti + beta_rec * xi;
            }
            let nt = t.iter().map(|x| x * x).sum::<f64>().sqrt();
            t.iter_mut().for_each(|x| *x /= nt);
        }
        out.push(seq);
    }
    out
}

/// The same sequences from the fast path (for tests).
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub fn fast_recall_sequences(
    beta_enc: f64,
    beta_rec: f64,
    gamma_ft: f64,
    n_items: usize,
    s0: usize,
    trials: usize,
    max_recalls: usize,
    seed: u64,
) -> Vec<Vec<usize>> {
    let k = Kernel::new(n_items, beta_enc, beta_rec, gamma_ft);
    let c0 = initial_cum(&k, s0);
    let mut rng = StdRng::seed_from_u64(seed);
    (0..trials)
        .map(|_| {
            let mut cum = c0.clone();
            let mut seq = Vec::new();
            run_trial(&k, &mut cum, max_recalls, &mut rng, |f| seq.push(f));
            seq
        })
        .collect()
}

// ------------------------------------------------------------------------------------------------
// Table
// ------------------------------------------------------------------------------------------------

/// CMR lag-CRP for every grid point: `data` is `[n_beta_enc, n_beta_rec, n_gamma, 17]` in C
/// order (lags −8..=8), each row summing to 1.
#[derive(Debug, Clone, PartialEq)]
pub struct CrpTable {
    /// The parameter grid.
    pub grid: CmrGrid,
    /// Flat `[20, 21, 11, 17]` values.
    pub data: Vec<f64>,
    /// Monte-Carlo standard errors, same layout, when the table was simulated here.
    pub sem: Option<Vec<f64>>,
}

impl CrpTable {
    /// Wraps a flat `[grid.shape(), 17]` array.
    pub fn from_vec(grid: CmrGrid, data: Vec<f64>) -> Result<Self> {
        if data.len() != grid.len() * N_LAGS {
            bail!(
                "CMR CRP table: expected {} values ({:?} × {N_LAGS}), got {}",
                grid.len() * N_LAGS,
                grid.shape(),
                data.len()
            );
        }
        Ok(Self {
            grid,
            data,
            sem: None,
        })
    }

    /// The CRP row (lags −8..=8) at grid indices `[i_enc, i_rec, i_gamma]`.
    pub fn crp(&self, idx: [usize; 3]) -> &[f64] {
        let f = self.grid.ravel(idx);
        &self.data[f * N_LAGS..(f + 1) * N_LAGS]
    }

    /// The CRP row at a flat grid index.
    pub fn crp_flat(&self, flat: usize) -> &[f64] {
        &self.data[flat * N_LAGS..(flat + 1) * N_LAGS]
    }

    /// Simulates the paper's grid with [`SimConfig::paper`] but `trials` trials per start.
    /// `progress(done, total)` is called after each grid point (from worker threads).
    pub fn simulate<P>(trials: usize, seed: u64, progress: P) -> Result<Self>
    where
        P: Fn(usize, usize) + Sync,
    {
        let cfg = SimConfig {
            trials,
            ..SimConfig::paper()
        };
        Self::simulate_with(&CmrGrid::paper(), &cfg, seed, progress)
    }

    /// Simulates any grid with any configuration. Grid point `i` (flat C-order index) uses
    /// `StdRng::seed_from_u64(seed ^ i)`, so the result is independent of thread scheduling.
    pub fn simulate_with<P>(grid: &CmrGrid, cfg: &SimConfig, seed: u64, progress: P) -> Result<Self>
    where
        P: Fn(usize, usize) + Sync,
    {
        cfg.validate()?;
        let total = grid.len();
        let done = AtomicUsize::new(0);
        let points: Vec<PointCrp> = (0..total)
            .into_par_iter()
            .map(|i| {
                let (be, br, g) = grid.params(i);
                let r = simulate_point(be, br, g, cfg, seed ^ i as u64);
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                progress(d, total);
                r
            })
            .collect::<Result<_>>()?;
        let mut data = Vec::with_capacity(total * N_LAGS);
        let mut sem = Vec::with_capacity(total * N_LAGS);
        for p in &points {
            data.extend_from_slice(&p.crp);
            sem.extend_from_slice(&p.sem);
        }
        Ok(Self {
            grid: grid.clone(),
            data,
            sem: Some(sem),
        })
    }

    /// Loads a `[20, 21, 11, 17]` float64 table (e.g. the paper's `cmr_crp_avg_20_11.npy`)
    /// on the paper's grid.
    pub fn load_npy(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let (shape, data) = read_npy_f64(path)?;
        let grid = CmrGrid::paper();
        let [a, b, c] = grid.shape();
        if shape != [a, b, c, N_LAGS] {
            bail!(
                "{}: CMR CRP table has shape {shape:?}, expected [{a}, {b}, {c}, {N_LAGS}]",
                path.display()
            );
        }
        Self::from_vec(grid, data)
    }

    /// Saves the table as a float64 `.npy` of shape `[grid.shape(), 17]`.
    pub fn save_npy(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let [a, b, c] = self.grid.shape();
        let t = Tensor::from_vec(self.data.clone(), (a, b, c, N_LAGS), &Device::Cpu)?;
        t.write_npy(path)
            .ctx(|| format!("writing CMR CRP table {}", path.display()))
    }

    /// The cache file name for a configuration and seed (encodes trials, seed, max recalls and
    /// whether closed forms were used, plus a format version).
    pub fn cache_file_name(cfg: &SimConfig, seed: u64) -> String {
        format!(
            "cmr_crp_v1_items{}_trials{}_recalls{}_starts{}_{}_seed{:x}.npy",
            cfg.n_items,
            cfg.trials,
            cfg.max_recalls,
            cfg.n_starts,
            if cfg.closed_forms { "cf" } else { "mc" },
            seed
        )
    }

    /// The paper-configuration table ([`SimConfig::paper`], [`DEFAULT_SEED`]), computed once per
    /// machine: read from `cache_dir` (default [`default_cache_dir`]) if present, else simulated
    /// with progress (grid points) and stored there.
    pub fn cached_or_simulate(
        cache_dir: Option<&Path>,
        progress: &crate::progress::Progress,
    ) -> Result<Self> {
        use std::sync::atomic::{AtomicU64, Ordering};
        let bar = std::sync::OnceLock::<crate::progress::Bar>::new();
        let done = AtomicU64::new(0);
        let r =
            Self::cached_or_simulate_with(cache_dir, &SimConfig::paper(), DEFAULT_SEED, |d, t| {
                let b = bar.get_or_init(|| {
                    progress.bar(
                        t as u64,
                        "CMR lag-CRP table (simulated once on this machine, then cached)",
                    )
                });
                let prev = done.fetch_max(d as u64, Ordering::Relaxed);
                b.inc((d as u64).saturating_sub(prev));
            });
        if let Some(b) = bar.get() {
            b.finish();
        }
        r
    }

    /// As [`CrpTable::cached_or_simulate`] with an explicit configuration, seed and progress
    /// callback. The file is written to a temporary name in the same directory and renamed, so
    /// a concurrent reader never sees a partial table.
    pub fn cached_or_simulate_with<P>(
        cache_dir: Option<&Path>,
        cfg: &SimConfig,
        seed: u64,
        progress: P,
    ) -> Result<Self>
    where
        P: Fn(usize, usize) + Sync,
    {
        let dir = match cache_dir {
            Some(d) => d.to_path_buf(),
            None => default_cache_dir()?,
        };
        let path = dir.join(Self::cache_file_name(cfg, seed));
        if path.is_file() {
            if let Ok(t) = Self::load_npy(&path) {
                return Ok(t);
            }
            // A corrupt cache file is recomputed and replaced.
        }
        let table = Self::simulate_with(&CmrGrid::paper(), cfg, seed, progress)?;
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let tmp = dir.join(format!(
            ".{}.tmp{}",
            Self::cache_file_name(cfg, seed),
            std::process::id()
        ));
        table.save_npy(&tmp)?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        Ok(table)
    }
}

/// The default cache directory of the CMR table: `$ENGRAM_CACHE/cmr` when `ENGRAM_CACHE` is
/// set, else `$HOME/.cache/engram/cmr`.
pub fn default_cache_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("ENGRAM_CACHE").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("cmr"));
    }
    let home = std::env::var_os("HOME")
        .filter(|d| !d.is_empty())
        .ctx(|| "neither ENGRAM_CACHE nor HOME is set: pass a cache directory".to_string())?;
    Ok(PathBuf::from(home).join(".cache/engram/cmr"))
}

/// Reads a `.npy` file as float64 (any dtype candle reads is converted): `(shape, values)`.
pub fn read_npy_f64(path: impl AsRef<Path>) -> Result<(Vec<usize>, Vec<f64>)> {
    let path = path.as_ref();
    let t = Tensor::read_npy(path).ctx(|| format!("reading {}", path.display()))?;
    let shape = t.dims().to_vec();
    let v = t
        .to_dtype(candle_core::DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    Ok((shape, v))
}

// ------------------------------------------------------------------------------------------------
// Fit
// ------------------------------------------------------------------------------------------------

/// The best CMR fit of one head.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct CmrFit {
    /// CMR distance `mean((s·c' − a')²) / var(a')` at the best grid point. NaN for a degenerate
    /// head (NaN/inf input, or `var(a') = 0`: a flat CRP carries no shape to fit).
    pub distance: f64,
    /// Best β_enc (NaN if degenerate).
    pub beta_enc: f64,
    /// Best β_rec (NaN if degenerate).
    pub beta_rec: f64,
    /// Best γ_FT (NaN if degenerate).
    pub gamma_ft: f64,
    /// Scale `s = max a' / max c'` (the inverse temperature; NaN if degenerate).
    pub inv_temp: f64,
    /// `distance < 0.5`.
    pub cmr_like: bool,
    /// `distance < 0.1`.
    pub strict: bool,
    /// Grid indices `[i_enc, i_rec, i_gamma]` of the best point (`None` if degenerate).
    pub grid_index: Option<[usize; 3]>,
}

impl CmrFit {
    fn degenerate() -> Self {
        Self {
            distance: f64::NAN,
            beta_enc: f64::NAN,
            beta_rec: f64::NAN,
            gamma_ft: f64::NAN,
            inv_temp: f64::NAN,
            cmr_like: false,
            strict: false,
            grid_index: None,
        }
    }

    /// True when the head could not be fitted (NaN distance).
    pub fn is_degenerate(&self) -> bool {
        self.distance.is_nan()
    }
}

/// Precomputed fit templates `c'` (lags −5..5) for every grid point of a table; build once and
/// fit many heads.
#[derive(Debug, Clone)]
pub struct CmrFitter {
    grid: CmrGrid,
    /// `c' = c − min c` per grid point.
    templates: Vec<[f64; N_FIT_LAGS]>,
    /// `max c'` per grid point; grid points whose restricted CRP is not finite or flat
    /// (`max c' = 0`, where the reference's scale would be inf/NaN) are marked NaN and skipped.
    maxes: Vec<f64>,
}

impl CmrFitter {
    /// Builds the templates: restrict each CRP row to −5..5, renormalise to sum 1, subtract the
    /// minimum.
    pub fn new(table: &CrpTable) -> Self {
        let n = table.grid.len();
        let mut templates = Vec::with_capacity(n);
        let mut maxes = Vec::with_capacity(n);
        let lo = MAX_LAG - FIT_LAG;
        for p in 0..n {
            let row = &table.crp_flat(p)[lo..lo + N_FIT_LAGS];
            let s: f64 = row.iter().sum();
            let mut c = [0.0; N_FIT_LAGS];
            for (ci, r) in c.iter_mut().zip(row) {
                *ci = r / s;
            }
            let mn = c.iter().copied().fold(f64::INFINITY, f64::min);
            c.iter_mut().for_each(|x| *x -= mn);
            let mx = c.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let ok = c.iter().all(|x| x.is_finite()) && mx > 0.0;
            templates.push(c);
            maxes.push(if ok { mx } else { f64::NAN });
        }
        Self {
            grid: table.grid.clone(),
            templates,
            maxes,
        }
    }

    /// Fits one head from its lag-CRP over lags −8..=+7 (16 values, as the paper's
    /// `CRP_scores`); lags −5..=+5 are used.
    pub fn fit(&self, lag_crp_m8_p7: &[f64]) -> CmrFit {
        if lag_crp_m8_p7.len() != N_HEAD_LAGS {
            return CmrFit::degenerate();
        }
        let lo = MAX_LAG - FIT_LAG;
        let a = &lag_crp_m8_p7[lo..lo + N_FIT_LAGS];
        self.fit_window(a)
    }

    /// Fits a head from its scores over lags −5..=+5 (11 values).
    pub fn fit_window(&self, a: &[f64]) -> CmrFit {
        if a.len() != N_FIT_LAGS || a.iter().any(|x| !x.is_finite()) {
            return CmrFit::degenerate();
        }
        let mn = a.iter().copied().fold(f64::INFINITY, f64::min);
        let mut ap = [0.0; N_FIT_LAGS];
        for (x, y) in ap.iter_mut().zip(a) {
            *x = y - mn;
        }
        let nf = N_FIT_LAGS as f64;
        let mean = ap.iter().sum::<f64>() / nf;
        let var = ap.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / nf;
        if var.is_nan() || var <= 0.0 {
            return CmrFit::degenerate();
        }
        let amax = ap.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut best = f64::INFINITY;
        let mut best_p = usize::MAX;
        let mut best_s = f64::NAN;
        for (p, (c, &cmax)) in self.templates.iter().zip(&self.maxes).enumerate() {
            if cmax.is_nan() {
                continue;
            }
            let s = amax / cmax;
            let mut sse = 0.0;
            for (ci, ai) in c.iter().zip(&ap) {
                let d = s * ci - ai;
                sse += d * d;
            }
            let dist = sse / nf / var;
            if dist < best {
                best = dist;
                best_p = p;
                best_s = s;
            }
        }
        if best_p == usize::MAX {
            return CmrFit::degenerate();
        }
        let (be, br, g) = self.grid.params(best_p);
        CmrFit {
            distance: best,
            beta_enc: be,
            beta_rec: br,
            gamma_ft: g,
            inv_temp: best_s,
            cmr_like: best < CMR_LIKE_THRESHOLD,
            strict: best < STRICT_THRESHOLD,
            grid_index: Some(self.grid.unravel(best_p)),
        }
    }
}

/// Fits one head (lags −8..=+7, 16 values; lags −5..=+5 are used). Builds the templates on
/// every call; use [`CmrFitter`] or [`fit_heads`] for many heads. Degenerate heads (wrong
/// length, non-finite input, `var(a') = 0`) get a NaN distance, NaN parameters and
/// `cmr_like = strict = false`.
pub fn fit_head(table: &CrpTable, lag_crp_m8_p7: &[f64]) -> CmrFit {
    CmrFitter::new(table).fit(lag_crp_m8_p7)
}

/// CMR fits of every head of a model.
#[derive(Debug, Clone)]
pub struct HeadFits {
    /// Number of layers.
    pub n_layers: usize,
    /// Heads per layer.
    pub n_heads: usize,
    /// `[layer * n_heads + head]`.
    pub fits: Vec<CmrFit>,
}

impl HeadFits {
    /// The fit of head `h` in layer `l`.
    pub fn get(&self, layer: usize, head: usize) -> &CmrFit {
        &self.fits[layer * self.n_heads + head]
    }

    /// Number of degenerate (NaN-distance) heads.
    pub fn n_degenerate(&self) -> usize {
        self.fits.iter().filter(|f| f.is_degenerate()).count()
    }

    fn share(fits: &[CmrFit], thr: f64) -> f64 {
        let valid: Vec<&CmrFit> = fits.iter().filter(|f| !f.is_degenerate()).collect();
        if valid.is_empty() {
            return f64::NAN;
        }
        valid.iter().filter(|f| f.distance < thr).count() as f64 / valid.len() as f64
    }

    /// Share (0..1) of heads with distance `< thr`. Degenerate heads are left out of the
    /// denominator, as the reference masks NaN distances (`fit_attn_score.plot_fit_against_layer`).
    pub fn share_below(&self, thr: f64) -> f64 {
        Self::share(&self.fits, thr)
    }

    /// Per-layer share (0..1) of heads with distance `< thr` (degenerate heads left out).
    pub fn layer_share_below(&self, thr: f64) -> Vec<f64> {
        self.fits
            .chunks(self.n_heads.max(1))
            .map(|c| Self::share(c, thr))
            .collect()
    }
}

/// Fits every head of a `[n_layers, n_heads, 16]` array (C order, lags −8..=+7), in parallel.
pub fn fit_heads(
    table: &CrpTable,
    scores: &[f64],
    n_layers: usize,
    n_heads: usize,
) -> Result<HeadFits> {
    if scores.len() != n_layers * n_heads * N_HEAD_LAGS {
        bail!(
            "head lag-CRP scores: expected [{n_layers}, {n_heads}, {N_HEAD_LAGS}] = {} values, got {}",
            n_layers * n_heads * N_HEAD_LAGS,
            scores.len()
        );
    }
    let fitter = CmrFitter::new(table);
    let fits = scores
        .par_chunks(N_HEAD_LAGS)
        .map(|h| fitter.fit(h))
        .collect();
    Ok(HeadFits {
        n_layers,
        n_heads,
        fits,
    })
}

/// Fits a `[layers, heads, 16]` tensor (any float dtype) of head lag-CRPs.
pub fn fit_heads_tensor(table: &CrpTable, scores: &Tensor) -> Result<HeadFits> {
    let (l, h, k) = scores.dims3()?;
    if k != N_HEAD_LAGS {
        bail!("head lag-CRP scores: last dimension is {k}, expected {N_HEAD_LAGS} (lags −8..+7)");
    }
    let v = scores
        .to_dtype(candle_core::DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    fit_heads(table, &v, l, h)
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
                let a = reference_recall_sequences(be, br, g, 100, s0, 40, 100, 11);
                let b = fast_recall_sequences(be, br, g, 100, s0, 40, 100, 11);
                let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
                // Rounding can flip a draw that lands within ~1e-15 of a CDF boundary; allow
                // one diverging trial in 40.
                assert!(same >= 39, "({be},{br},{g}) s0={s0}: {same}/40 identical");
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
