//! Fitting heads' lag-CRPs to the CMR table: distance, the best grid point, per-head fits.

use crate::{bail, Result};
use candle_core::Tensor;
use rayon::prelude::*;

use super::*;

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
