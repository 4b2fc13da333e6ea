//! Statistics of the selection: average precision (as sklearn), top-k with tie-breaks, the
//! standardised difference.

/// sklearn's `average_precision_score(labels, scores)`: Σₙ (Rₙ − Rₙ₋₁) Pₙ over the distinct
/// score thresholds in decreasing order (tied scores form one threshold). NaN without positives.
pub fn average_precision(scores: &[f32], labels: &[bool]) -> f64 {
    let mut pairs: Vec<(f32, bool)> = scores.iter().copied().zip(labels.iter().copied()).collect();
    average_precision_pairs(&mut pairs)
}

/// [`average_precision`] on (score, label) pairs, sorting them in place.
pub(crate) fn average_precision_pairs(pairs: &mut [(f32, bool)]) -> f64 {
    let n_pos = pairs.iter().filter(|p| p.1).count();
    if n_pos == 0 {
        return f64::NAN;
    }
    pairs.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
    let (mut tp, mut fp) = (0usize, 0usize);
    let (mut prev_recall, mut ap) = (0f64, 0f64);
    let mut i = 0;
    while i < pairs.len() {
        let s = pairs[i].0;
        while i < pairs.len() && pairs[i].0 == s {
            if pairs[i].1 {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        // NaN scores never compare equal: each is its own threshold (they sort first or last).
        let recall = tp as f64 / n_pos as f64;
        let precision = tp as f64 / (tp + fp) as f64;
        ap += (recall - prev_recall) * precision;
        prev_recall = recall;
    }
    ap
}

/// Indices of the `k` largest scores, best first (ties: lower index first; NaN last).
pub fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    top_k_tiebreak(scores, None, k)
}

/// [`top_k`] where equal scores are ordered by a second score (larger first, NaN last), then
/// by index. The probe breaks AP ties (many units reach AP = 1 when templates differ) by the
/// standardised mean difference of positives and negatives.
pub fn top_k_tiebreak(scores: &[f32], second: Option<&[f32]>, k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    let key = |v: &[f32], i: usize| {
        let s = v[i];
        if s.is_nan() {
            f32::NEG_INFINITY
        } else {
            s
        }
    };
    idx.sort_by(|&a, &b| {
        let mut o = key(scores, b)
            .total_cmp(&key(scores, a))
            .then(scores[a].is_nan().cmp(&scores[b].is_nan()));
        if let Some(t) = second {
            o = o
                .then(key(t, b).total_cmp(&key(t, a)))
                .then(t[a].is_nan().cmp(&t[b].is_nan()));
        }
        o.then(a.cmp(&b))
    });
    idx.truncate(k);
    idx
}

/// Standardised mean difference (mean of positives − mean of negatives) / standard deviation of
/// all; 0 when the scores are constant, NaN without both classes.
pub fn standardised_difference(pairs: &[(f32, bool)]) -> f64 {
    let (mut sp, mut np_, mut sn, mut nn) = (0f64, 0usize, 0f64, 0usize);
    for &(x, l) in pairs {
        if l {
            sp += x as f64;
            np_ += 1;
        } else {
            sn += x as f64;
            nn += 1;
        }
    }
    if np_ == 0 || nn == 0 {
        return f64::NAN;
    }
    let n = pairs.len() as f64;
    let mean = (sp + sn) / n;
    let var = pairs
        .iter()
        .map(|&(x, _)| (x as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    let diff = sp / np_ as f64 - sn / nn as f64;
    if var <= 0.0 {
        0.0
    } else {
        diff / var.sqrt()
    }
}
