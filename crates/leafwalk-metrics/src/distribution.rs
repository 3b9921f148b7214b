//! Distances between two samples of a real quantity.

use crate::{MetricError, Result};

/// The 1-Wasserstein (earth mover's) distance between the empirical distributions of `a` and
/// `b`: the area between their cumulative distribution functions. In the units of the values;
/// samples of different sizes are compared through their CDFs.
pub fn wasserstein_1(a: &[f64], b: &[f64]) -> Result<f64> {
    for (which, sample) in [("first", a), ("second", b)] {
        if sample.is_empty() {
            return Err(MetricError::BadSample { which, problem: "is empty" });
        }
        if sample.iter().any(|v| !v.is_finite()) {
            return Err(MetricError::BadSample { which, problem: "holds a value that is not finite" });
        }
    }
    let sorted = |s: &[f64]| {
        let mut s = s.to_vec();
        s.sort_by(f64::total_cmp);
        s
    };
    let (a, b) = (sorted(a), sorted(b));
    let mut all: Vec<f64> = a.iter().chain(&b).copied().collect();
    all.sort_by(f64::total_cmp);
    // ∫ |F_a − F_b| over the merged support, one constant piece between consecutive values.
    let cdf = |s: &[f64], x: f64| s.partition_point(|&v| v <= x) as f64 / s.len() as f64;
    Ok(all.windows(2).map(|w| (cdf(&a, w[0]) - cdf(&b, w[0])).abs() * (w[1] - w[0])).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_cases() {
        assert_eq!(wasserstein_1(&[1.0, 2.0], &[1.0, 2.0]).unwrap(), 0.0);
        // A shift moves every unit of mass by the shift.
        assert!((wasserstein_1(&[0.0, 1.0, 5.0], &[2.0, 3.0, 7.0]).unwrap() - 2.0).abs() < 1e-12);
        // Half the mass moves from 0 to 1.
        assert!((wasserstein_1(&[0.0, 0.0], &[0.0, 1.0]).unwrap() - 0.5).abs() < 1e-12);
        assert!((wasserstein_1(&[3.0], &[1.0, 2.0, 3.0, 4.0]).unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(wasserstein_1(&[1.0, 4.0], &[2.0]).unwrap(), wasserstein_1(&[2.0], &[1.0, 4.0]).unwrap());
        assert_eq!(wasserstein_1(&[], &[1.0]), Err(MetricError::BadSample { which: "first", problem: "is empty" }));
        let not_finite = MetricError::BadSample { which: "second", problem: "holds a value that is not finite" };
        assert_eq!(wasserstein_1(&[1.0], &[f64::NAN]), Err(not_finite));
    }
}
