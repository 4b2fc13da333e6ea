//! The CMR simulation: closed forms, the recall kernel (runtime-detected AVX axpy with a
//! portable fallback), per-point lag-CRPs, and the reference recall sequences.

use crate::{bail, Result};

use super::recall::{lane_trials, run_lanes, Kernel, Recorder, LANES_PER_START};
use super::rng::CmrRng;
use super::simd::{padded_len, Ops};
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

/// Per-lane lag histograms of the trials in progress, accumulated into a [`StartAcc`].
struct LagCounter<'a> {
    s0: i64,
    prev: [i64; LANES_PER_START],
    counts: [[u32; N_LAGS]; LANES_PER_START],
    acc: &'a mut StartAcc,
}

impl Recorder for LagCounter<'_> {
    #[inline]
    fn recall(&mut self, lane: usize, item: usize) {
        let lag = item as i64 - self.prev[lane];
        if lag.unsigned_abs() as usize <= MAX_LAG {
            self.counts[lane][(lag + MAX_LAG as i64) as usize] += 1;
        }
        self.prev[lane] = item as i64;
    }

    fn end(&mut self, lane: usize, n_recalls: usize) {
        self.acc.push_trial(&self.counts[lane], n_recalls);
        self.counts[lane] = [0; N_LAGS];
        self.prev[lane] = self.s0;
    }
}

/// Runs `cfg.trials` trials from start `s0` ([`LANES_PER_START`] lanes in lockstep, lane `l`
/// on `rngs[l]`) and accumulates their lag histograms.
pub(crate) fn run_start(
    k: &Kernel,
    cfg: &SimConfig,
    s0: usize,
    rngs: [CmrRng; LANES_PER_START],
    acc: &mut StartAcc,
) {
    let c0 = k.initial_cum(s0);
    let mut rec = LagCounter {
        s0: s0 as i64,
        prev: [s0 as i64; LANES_PER_START],
        counts: [[0; N_LAGS]; LANES_PER_START],
        acc,
    };
    run_lanes(
        k,
        &c0,
        cfg.max_recalls,
        rngs,
        lane_trials::<LANES_PER_START>(cfg.trials),
        &mut rec,
    );
}

/// The lane streams of one start, split off the grid point's stream in order.
pub(crate) fn lane_rngs(point_rng: &mut CmrRng) -> [CmrRng; LANES_PER_START] {
    std::array::from_fn(|_| point_rng.split())
}

/// Lag-CRP of one grid point, averaged over starts `0..cfg.n_starts`.
///
/// With `cfg.closed_forms` the `(β_rec, γ_FT) = (1, 0)` and `(0, 0)` points use
/// [`closed_form_crp`] (zero standard error); otherwise the Monte-Carlo simulation runs from
/// `CmrRng::seed_from_u64(seed)`: for each start in order, [`LANES_PER_START`] lane streams
/// are split off it ([`CmrRng::split`]) and lane `l` runs trials `l, l + L, …` of that start.
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
    let mut rng = CmrRng::seed_from_u64(seed);
    for s0 in 0..cfg.n_starts {
        let mut acc = StartAcc::new();
        run_start(&kernel, cfg, s0, lane_rngs(&mut rng), &mut acc);
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
/// explicit `t`, f64), drawing one uniform per draw from `rng` like the fast path. Returns the
/// recalled item sequences of `trials` consecutive trials from `s0`. For tests of the fast
/// simulation.
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
    rng: &mut CmrRng,
) -> Vec<Vec<usize>> {
    let n = n_items + 1;
    let q = 1.0 - beta_enc;
    let pw = powers(q, n + 1);
    let m = |i: usize, j: usize| if j > i { pw[j - i - 1] } else { 0.0 };
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
            let u = rng.uniform();
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

/// The fast path's recall sequences of `trials` trials from `s0` with the lane streams split
/// off `CmrRng::seed_from_u64(seed)` as for one start of [`simulate_point`], in trial order
/// (trial `i` ran on lane `i % L`), with the lane streams returned in their starting state so
/// that a test can replay each lane with [`reference_recall_sequences`]. `portable` forces the
/// portable (non-SIMD) kernels.
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
    portable: bool,
) -> (Vec<Vec<usize>>, Vec<CmrRng>) {
    struct Seqs {
        cur: Vec<Vec<usize>>,
        done: Vec<Vec<Vec<usize>>>,
    }
    impl Recorder for Seqs {
        fn recall(&mut self, lane: usize, item: usize) {
            self.cur[lane].push(item);
        }
        fn end(&mut self, lane: usize, _: usize) {
            let seq = std::mem::take(&mut self.cur[lane]);
            self.done[lane].push(seq);
        }
    }
    let ops = if portable {
        Ops::portable()
    } else {
        Ops::detect(padded_len(n_items + 1))
    };
    let k = Kernel::with_ops(n_items, beta_enc, beta_rec, gamma_ft, ops);
    let c0 = k.initial_cum(s0);
    let rngs = lane_rngs(&mut CmrRng::seed_from_u64(seed));
    let start = rngs.to_vec();
    let mut rec = Seqs {
        cur: vec![Vec::new(); LANES_PER_START],
        done: vec![Vec::new(); LANES_PER_START],
    };
    let lanes = lane_trials::<LANES_PER_START>(trials);
    run_lanes(&k, &c0, max_recalls, rngs, lanes, &mut rec);
    let seqs = (0..trials)
        .map(|i| std::mem::take(&mut rec.done[i % LANES_PER_START][i / LANES_PER_START]))
        .collect();
    (seqs, start)
}
