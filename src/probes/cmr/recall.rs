//! The fast CMR recall loop: per-point precomputed rows ([`Kernel`]) and [`run_lanes`], which
//! runs `L` independent trials in lockstep (one RNG stream per lane) so that the out-of-order
//! core overlaps their serial dependency chains (draw → search → context update → next draw).

use super::rng::CmrRng;
use super::sim::powers;
#[cfg(target_arch = "x86_64")]
use super::simd::Avx2x13;
use super::simd::{padded_len, Kern, Ops};

/// Trials run in lockstep per start (one RNG stream each).
pub(crate) const LANES_PER_START: usize = 4;

/// Per-grid-point precomputation for the fast simulation.
pub(crate) struct Kernel {
    /// Number of states (items + the absorbing state).
    n: usize,
    /// Row stride of [`Kernel::cg`]: `n` padded to a multiple of [`super::simd::LANES`].
    stride: usize,
    q: f64,
    beta_rec: f64,
    gamma_ft: f64,
    /// `1 / ‖(1−γ) e_f + γ M e_f‖` per item f.
    inv_norm_in: Vec<f64>,
    /// Row f: `cumsum(Mᵀ t_IN(f))` over the n states in f32, padded with `+∞` to `stride`.
    cg: Vec<f32>,
    /// The vector kernels of the recall step (AVX when the CPU has it).
    ops: Ops,
}

impl Kernel {
    pub(crate) fn new(n_items: usize, beta_enc: f64, beta_rec: f64, gamma_ft: f64) -> Self {
        Self::with_ops(
            n_items,
            beta_enc,
            beta_rec,
            gamma_ft,
            Ops::detect(padded_len(n_items + 1)),
        )
    }

    pub(crate) fn with_ops(
        n_items: usize,
        beta_enc: f64,
        beta_rec: f64,
        gamma_ft: f64,
        ops: Ops,
    ) -> Self {
        let n = n_items + 1;
        let stride = padded_len(n);
        let q = 1.0 - beta_enc;
        let pw = powers(q, n + 1);
        let mut inv_norm_in = vec![0.0; n_items];
        let mut cg = vec![f32::INFINITY; n_items * stride];
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
            let row = &mut cg[f * stride..f * stride + n];
            row[0] = 0.0;
            let mut g = 0.0;
            let mut c = 0.0;
            for j in 1..n {
                g = q * g + v[j - 1];
                c += g;
                row[j] = c as f32;
            }
        }
        Self {
            n,
            stride,
            q,
            beta_rec,
            gamma_ft,
            inv_norm_in,
            cg,
            ops,
        }
    }

    /// `cumsum(Mᵀ t_IN(f))`, padded.
    fn row(&self, f: usize) -> &[f32] {
        &self.cg[f * self.stride..(f + 1) * self.stride]
    }

    /// `cumsum(Mᵀ e_{s0})`, the cumulative of row `s0` of `M` (the starting `C` of a trial),
    /// padded.
    pub(crate) fn initial_cum(&self, s0: usize) -> Vec<f32> {
        let pw = powers(self.q, self.n + 1);
        let mut c0 = vec![f32::INFINITY; self.stride];
        let mut c = 0.0;
        for (j, cj) in c0.iter_mut().enumerate().take(self.n) {
            if j > s0 {
                c += pw[j - s0 - 1];
            }
            *cj = c as f32;
        }
        c0
    }
}

/// The inverse-CDF target `u·ΣF` in the units of `C` (whose last state holds `ΣF`), as f32.
/// The floor skips leading zero-probability states in case `u = 0`; the result never exceeds
/// `total`, so the draw never runs past the absorbing state.
#[inline]
fn draw_target(rng: &mut CmrRng, total: f32) -> f32 {
    ((rng.uniform() * f64::from(total)) as f32).max(f32::MIN_POSITIVE)
}

/// Receives the recalls of [`run_lanes`].
pub(crate) trait Recorder {
    /// Lane `lane` recalled `item`.
    fn recall(&mut self, lane: usize, item: usize);
    /// Lane `lane` finished a trial of `n_recalls` recalls.
    fn end(&mut self, lane: usize, n_recalls: usize);
}

/// One lane's trial in progress. `C = scale · cum`, with the f32 `cum` rescaled when `scale`
/// gets small; the draw is scale invariant, so only `cum` enters it.
struct Lane {
    rng: CmrRng,
    /// The pending draw: an item, or `n − 1` (absorbing: the trial ends).
    f: usize,
    n_rec: usize,
    scale: f64,
    inv_scale: f64,
    /// Trials still to run, the current one included.
    left: usize,
}

const FIXED: u8 = 0;
const MARKOV: u8 = 1;
const DRIFT: u8 = 2;

/// Runs trials from the start whose [`Kernel::initial_cum`] is `c0`, `L` lanes in lockstep:
/// lane `l` runs `trials[l]` trials one after the other on `rngs[l]`, drawing one uniform per
/// draw in the reference's order, so each lane's recalls are exactly those of the sequential
/// loop on its own stream. Each round takes one step of every lane (record the pending draw,
/// then make the next one, or end the trial and start the next); the lanes' dependency chains
/// are independent, so the out-of-order core overlaps them.
pub(crate) fn run_lanes<const L: usize, R: Recorder>(
    k: &Kernel,
    c0: &[f32],
    max_recalls: usize,
    rngs: [CmrRng; L],
    trials: [usize; L],
    rec: &mut R,
) {
    if k.beta_rec == 0.0 {
        run_mode::<L, R, FIXED, Ops>(k, c0, max_recalls, rngs, trials, rec, k.ops)
    } else if k.beta_rec == 1.0 {
        run_mode::<L, R, MARKOV, Ops>(k, c0, max_recalls, rngs, trials, rec, k.ops)
    } else {
        #[cfg(target_arch = "x86_64")]
        if let Some(kern) = Avx2x13::new(&k.ops) {
            // SAFETY: `Avx2x13::new` returns `Some` only when the CPU has AVX2.
            unsafe { run_drift_avx2(k, c0, max_recalls, rngs, trials, rec, kern) };
            return;
        }
        run_mode::<L, R, DRIFT, Ops>(k, c0, max_recalls, rngs, trials, rec, k.ops)
    }
}

/// The drift loop compiled for AVX2 with the 104-lane kernels inlined into it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
/// # Safety
/// The CPU must have AVX2 (`kern` exists only then).
unsafe fn run_drift_avx2<const L: usize, R: Recorder>(
    k: &Kernel,
    c0: &[f32],
    max_recalls: usize,
    rngs: [CmrRng; L],
    trials: [usize; L],
    rec: &mut R,
    kern: Avx2x13,
) {
    run_mode::<L, R, DRIFT, Avx2x13>(k, c0, max_recalls, rngs, trials, rec, kern)
}

/// [`run_lanes`] for one context mode: `FIXED` (β_rec = 0: the context stays `e_{s0}`, every
/// draw is from `C₀`), `MARKOV` (β_rec = 1: the context is `t_IN` of the last item, so the
/// draw is from its precomputed row) or `DRIFT` (`C ← a·C + b·row(f)`, fused with the next
/// search).
#[inline(always)]
fn run_mode<const L: usize, R: Recorder, const MODE: u8, K: Kern>(
    k: &Kernel,
    c0: &[f32],
    max_recalls: usize,
    rngs: [CmrRng; L],
    trials: [usize; L],
    rec: &mut R,
    ops: K,
) {
    let last = k.n - 1; // the absorbing state
    let br = k.beta_rec;
    let g = k.gamma_ft;
    let q = k.q;
    let stride = k.stride;
    // Drift: C' = a·C + b·row(f) with a = (1−β)/‖·‖, b = β/‖·‖. With scale' = a·scale,
    // cum' = cum + (β/(1−β))/scale · row(f): the step's weight does not depend on this
    // step's norm, so the sqrt and division only feed the next step's `scale`.
    let ratio = br / (1.0 - br);
    let inv_a_num = 1.0 / (1.0 - br);
    let cross = 2.0 * (1.0 - br) * br;
    let norm_base = (1.0 - br) * (1.0 - br) + br * br;
    let total0 = c0[last];
    let ok0 = total0 > 0.0; // false also for NaN: no mass anywhere (not for valid parameters)
    let mut cums = vec![0f32; if MODE == DRIFT { L * stride } else { 0 }];
    let mut lanes = rngs.map(|rng| Lane {
        rng,
        f: last,
        n_rec: 0,
        scale: 1.0,
        inv_scale: 1.0,
        left: 0,
    });
    // A lane's next trial: reset the context and make the first draw.
    let begin = |lane: &mut Lane, cum: &mut [f32]| {
        lane.n_rec = 0;
        lane.scale = 1.0;
        lane.inv_scale = 1.0;
        lane.f = if ok0 {
            if MODE == DRIFT {
                cum.copy_from_slice(c0);
            }
            ops.count_below(c0, draw_target(&mut lane.rng, total0))
        } else {
            last
        };
    };
    let mut active = 0;
    for (l, lane) in lanes.iter_mut().enumerate() {
        lane.left = trials[l];
        if lane.left > 0 {
            let cum = if MODE == DRIFT {
                &mut cums[l * stride..(l + 1) * stride]
            } else {
                &mut []
            };
            begin(lane, cum);
            active += 1;
        }
    }
    while active > 0 {
        for (l, lane) in lanes.iter_mut().enumerate() {
            if lane.left == 0 {
                continue;
            }
            let cum = if MODE == DRIFT {
                &mut cums[l * stride..(l + 1) * stride]
            } else {
                &mut []
            };
            let f = lane.f;
            if f < last {
                rec.recall(l, f);
                lane.n_rec += 1;
                if lane.n_rec < max_recalls {
                    lane.f = if MODE == FIXED {
                        ops.count_below(c0, draw_target(&mut lane.rng, total0))
                    } else if MODE == MARKOV {
                        let row = k.row(f);
                        let total = row[last];
                        if total > 0.0 {
                            ops.count_below(row, draw_target(&mut lane.rng, total))
                        } else {
                            last
                        }
                    } else {
                        let row = k.row(f);
                        let w = (ratio * lane.inv_scale) as f32;
                        let total = cum[last] + w * row[last]; // what the update stores there
                        if total > 0.0 {
                            let target = draw_target(&mut lane.rng, total);
                            // ⟨t, t_IN(f)⟩/scale from cum = F/scale: F_f = ΔC_f,
                            // t_f = F_{f+1} − q F_f.
                            let c_fm1 = if f > 0 { f64::from(cum[f - 1]) } else { 0.0 };
                            let c_f = f64::from(cum[f]);
                            let d_f = c_f - c_fm1;
                            let d_f1 = f64::from(cum[f + 1]) - c_f;
                            let dot = ((1.0 - g) * (d_f1 - q * d_f) + g * d_f) * k.inv_norm_in[f];
                            let norm = (norm_base + cross * lane.scale * dot).max(0.0).sqrt();
                            let next = ops.update_count(cum, w, row, target);
                            lane.inv_scale *= norm * inv_a_num;
                            lane.scale = 1.0 / lane.inv_scale;
                            if lane.inv_scale > 1e30 {
                                let s = lane.scale as f32;
                                cum.iter_mut().for_each(|c| *c *= s);
                                lane.scale = 1.0;
                                lane.inv_scale = 1.0;
                            }
                            next
                        } else {
                            last
                        }
                    };
                    continue;
                }
            }
            rec.end(l, lane.n_rec);
            lane.left -= 1;
            if lane.left > 0 {
                begin(lane, cum);
            } else {
                active -= 1;
            }
        }
    }
}

/// Splits `trials` over `L` lanes: lane `l` gets trials `l, l + L, …`.
pub(crate) fn lane_trials<const L: usize>(trials: usize) -> [usize; L] {
    std::array::from_fn(|l| trials / L + usize::from(l < trials % L))
}
