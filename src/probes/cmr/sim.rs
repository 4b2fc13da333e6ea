//! The CMR simulation: closed forms, the recall kernel (runtime-detected AVX axpy with a
//! portable fallback), per-point lag-CRPs, and the reference recall sequences.

use crate::{bail, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
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
pub(crate) fn closed_form_kind(beta_rec: f64, gamma_ft: f64) -> Option<bool> {
    if gamma_ft == 0.0 && beta_rec == 1.0 {
        Some(true)
    } else if gamma_ft == 0.0 && beta_rec == 0.0 {
        Some(false)
    } else {
        None
    }
}

/// `q^k` for k = 0..len with `0⁰ = 1` (so β_enc = 1 gives M = T exactly).
pub(crate) fn powers(q: f64, len: usize) -> Vec<f64> {
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
pub(crate) struct Kernel {
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
pub(crate) fn axpy_scalar(y: &mut [f64], w: f64, x: &[f64]) {
    for (c, r) in y.iter_mut().zip(x) {
        *c += w * r;
    }
}

/// AVX version of [`axpy_scalar`], bit-identical to it (separate multiply and add). Raw
/// pointers with `wrapping_add` keep the dev profile's debug checks out of the hot loop.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
pub(crate) unsafe fn axpy_avx_impl(y: &mut [f64], w: f64, x: &[f64]) {
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
pub(crate) fn first_at_least(c: &[f64], target: f64) -> usize {
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
pub(crate) fn axpy_avx(y: &mut [f64], w: f64, x: &[f64]) {
    // SAFETY: only selected by `pick_axpy` after the CPU was detected to support AVX.
    unsafe { axpy_avx_impl(y, w, x) }
}

pub(crate) fn pick_axpy() -> fn(&mut [f64], f64, &[f64]) {
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
pub(crate) struct StartAcc {
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
pub(crate) fn initial_cum(k: &Kernel, s0: usize) -> Vec<f64> {
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
pub(crate) fn run_trial(
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
pub(crate) fn run_start(
    k: &Kernel,
    cfg: &SimConfig,
    s0: usize,
    rng: &mut StdRng,
    acc: &mut StartAcc,
) {
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
