//! Out-of-distribution detection metrics (crate docs).

use crate::{MetricError, Result};

/// Everything [`evaluate`] reports for one (score, OOD set) pair.
#[derive(Clone, Debug, PartialEq)]
pub struct Detection {
    /// Area under the ROC curve with OOD as positive: the probability that an OOD score exceeds
    /// an ID one, ties counting ½; 0.5 is chance, 1 perfect separation.
    pub auroc: f64,
    /// Average precision with in-distribution as the positive class, on negated scores; in
    /// [0, 1].
    pub aupr_in: f64,
    /// Average precision with OOD as the positive class; in [0, 1].
    pub aupr_out: f64,
    /// Fraction of OOD scores at or below the threshold that accepts 95 % of the ID scores:
    /// OOD inputs still taken for in-distribution; in [0, 1], lower is better.
    pub fpr_at_95_tpr: f64,
    /// ROC curve points (false-positive rate, true-positive rate) with OOD as positive, from
    /// (0, 0) to (1, 1), one per distinct threshold.
    pub roc: Vec<(f64, f64)>,
}

fn check(set: &'static str, scores: &[f64]) -> Result<()> {
    if scores.is_empty() {
        return Err(MetricError::NoScores { set });
    }
    let count = scores.iter().filter(|s| s.is_nan()).count();
    if count > 0 {
        return Err(MetricError::NanScores { set, count });
    }
    Ok(())
}

/// All detection metrics for in-distribution `id` and out-of-distribution `ood` scores
/// (higher = more OOD).
pub fn evaluate(id: &[f64], ood: &[f64]) -> Result<Detection> {
    check("in-distribution", id)?;
    check("out-of-distribution", ood)?;
    let negated = |s: &[f64]| s.iter().map(|v| -v).collect::<Vec<_>>();
    Ok(Detection {
        auroc: auroc(id, ood),
        aupr_out: average_precision(ood, id),
        aupr_in: average_precision(&negated(id), &negated(ood)),
        fpr_at_95_tpr: fpr_at_tpr(id, ood, 0.95),
        roc: roc_curve(id, ood),
    })
}

/// P(ood score > id score) + ½ P(equal), by sorting (n log n).
fn auroc(id: &[f64], ood: &[f64]) -> f64 {
    let mut all: Vec<(f64, bool)> = id.iter().map(|&s| (s, false)).chain(ood.iter().map(|&s| (s, true))).collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Midranks (1-based) of tied groups; the OOD rank sum gives the Mann–Whitney U.
    let (mut rank_sum, mut start) = (0.0, 0);
    while start < all.len() {
        let end = (start..all.len()).find(|&k| all[k].0 != all[start].0).unwrap_or(all.len());
        let midrank = (start + 1 + end) as f64 / 2.0;
        rank_sum += midrank * all[start..end].iter().filter(|x| x.1).count() as f64;
        start = end;
    }
    let (n_ood, n_id) = (ood.len() as f64, id.len() as f64);
    (rank_sum - n_ood * (n_ood + 1.0) / 2.0) / (n_ood * n_id)
}

/// Average precision with `positives` as the positive class: Σ (Rₖ − Rₖ₋₁) Pₖ over thresholds
/// at each distinct score, from the highest down.
fn average_precision(positives: &[f64], negatives: &[f64]) -> f64 {
    let mut all: Vec<(f64, bool)> =
        positives.iter().map(|&s| (s, true)).chain(negatives.iter().map(|&s| (s, false))).collect();
    all.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut true_positives, mut seen, mut recall_before, mut area) = (0usize, 0usize, 0.0, 0.0);
    let mut start = 0;
    while start < all.len() {
        let end = (start..all.len()).find(|&k| all[k].0 != all[start].0).unwrap_or(all.len());
        true_positives += all[start..end].iter().filter(|x| x.1).count();
        seen = end;
        let recall = true_positives as f64 / positives.len() as f64;
        area += (recall - recall_before) * true_positives as f64 / seen as f64;
        recall_before = recall;
        start = end;
    }
    debug_assert_eq!(seen, all.len());
    area
}

/// The fraction of OOD scores at or below the threshold that accepts `tpr` of the ID scores
/// (the smallest ID score with at least that fraction at or below it).
fn fpr_at_tpr(id: &[f64], ood: &[f64], tpr: f64) -> f64 {
    let mut sorted = id.to_vec();
    sorted.sort_by(f64::total_cmp);
    let index = ((tpr * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    let threshold = sorted[index];
    ood.iter().filter(|&&s| s <= threshold).count() as f64 / ood.len() as f64
}

fn roc_curve(id: &[f64], ood: &[f64]) -> Vec<(f64, f64)> {
    let mut thresholds: Vec<f64> = id.iter().chain(ood).copied().collect();
    thresholds.sort_by(|a, b| b.total_cmp(a));
    thresholds.dedup();
    let rate = |set: &[f64], t: f64| set.iter().filter(|&&s| s >= t).count() as f64 / set.len() as f64;
    std::iter::once((0.0, 0.0)).chain(thresholds.into_iter().map(|t| (rate(id, t), rate(ood, t)))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_perfect_score_and_a_reversed_one() {
        let (id, ood) = ([0.1, 0.2, 0.3], [0.7, 0.8, 0.9, 1.0]);
        let d = evaluate(&id, &ood).unwrap();
        assert_eq!((d.auroc, d.aupr_in, d.aupr_out, d.fpr_at_95_tpr), (1.0, 1.0, 1.0, 0.0));
        assert_eq!(d.roc.last(), Some(&(1.0, 1.0)));
        let r = evaluate(&ood, &id).unwrap();
        assert_eq!((r.auroc, r.fpr_at_95_tpr), (0.0, 1.0));
    }

    #[test]
    fn a_random_score_is_near_one_half() {
        // A fixed pseudo-random stream (xorshift), the same for both sets.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let id: Vec<f64> = (0..4000).map(|_| next()).collect();
        let ood: Vec<f64> = (0..4000).map(|_| next()).collect();
        let d = evaluate(&id, &ood).unwrap();
        assert!((d.auroc - 0.5).abs() < 0.02, "{}", d.auroc);
        assert!((d.fpr_at_95_tpr - 0.95).abs() < 0.02, "{}", d.fpr_at_95_tpr);
        assert!((d.aupr_out - 0.5).abs() < 0.03 && (d.aupr_in - 0.5).abs() < 0.03);
    }

    #[test]
    fn hand_computed_cases_with_ties() {
        // id {1, 2, 3, 4}, ood {2, 5}: 5 beats all four, 2 beats 1 and ties 2 → 5.5 / 8.
        let d = evaluate(&[1.0, 2.0, 3.0, 4.0], &[2.0, 5.0]).unwrap();
        assert_eq!(d.auroc, 5.5 / 8.0);
        // 95 % of 4 ID scores → the 4th smallest, 4.0: OOD 2 is accepted, 5 is not.
        assert_eq!(d.fpr_at_95_tpr, 0.5);
        // Thresholds 5, 4, 3, 2 (tied: one id, one ood), 1: precision at each recall step:
        // recall ½ at 5 (precision 1), recall 1 at 2 (2 of 5) → AP = ½·1 + ½·0.4.
        assert!((d.aupr_out - 0.7).abs() < 1e-12, "{}", d.aupr_out);
        // All tied: chance.
        let t = evaluate(&[1.0; 5], &[1.0; 3]).unwrap();
        assert_eq!((t.auroc, t.fpr_at_95_tpr), (0.5, 1.0));
    }

    #[test]
    fn nan_and_empty_scores_are_errors() {
        assert_eq!(
            evaluate(&[0.1, f64::NAN], &[0.2]),
            Err(MetricError::NanScores { set: "in-distribution", count: 1 })
        );
        assert!(evaluate(&[0.1], &[]).is_err());
    }
}
