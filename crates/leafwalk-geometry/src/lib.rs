//! The local data matrix G(x,w) of a classifier, and the leaf it is tangent to.
//!
//! This crate owns the geometry of Grementieri & Fioresi's *model-centric data manifold*: the
//! batched input Jacobian of the log-probabilities ([`input_jacobian`], by `leafwalk-engine` for
//! any model description, with candle's autograd as its oracle), and from J and p alone the
//! trace, spectrum, numerical rank and eigenvectors of G = Jᵀ diag(p) J, and the orthogonal
//! projections onto ker G⊥ (the data leaf's tangent space) and ker G ([`PointGeometry`]); and
//! the parameter-space Fisher matrix F(x,w) through its C×P factor ([`fisher_factors`]), and the
//! Frobenius test of whether ker G⊥ is integrable at all ([`integrability`]). The
//! n×n G is never formed unless asked for on a small input: all linear algebra runs on the C×n
//! Jacobian and C×C matrices, in f64.
#![warn(missing_docs)]

mod error;
mod fisher;
mod integrability;
mod jacobian;
mod local;

pub use error::{GeometryError, Result};
pub use fisher::{dataset_fisher, fisher_factors, FisherFactor, DATASET_FISHER_MAX_BYTES, DATASET_FISHER_MAX_POINTS};
pub use integrability::{integrability, BracketStats};
pub use jacobian::{
    check_finite, input_jacobian, input_jacobian_autograd, input_jacobian_in, input_jacobian_of_finite, Coordinates,
    Jacobians,
};
pub use local::{LeafProjector, PointGeometry, Spectrum, RANK_RTOL};

use candle_core::Tensor;
use leafwalk_models::Classifier;

/// The index of the largest value and the value (the first of ties): a prediction from
/// probabilities or log-probabilities.
pub fn argmax(values: &[f64]) -> (usize, f64) {
    values.iter().copied().enumerate().fold((0, f64::MIN), |best, (i, v)| if v > best.1 { (i, v) } else { best })
}

/// The median (the mean of the two middle values for an even count), `None` for no values;
/// NaNs sort last.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some(0.5 * (sorted[n / 2 - 1] + sorted[n / 2])),
    }
}

/// J and p for every point of a batch of pixels, as f64 [`PointGeometry`] values.
pub fn batch_geometry(model: &Classifier, pixels: &Tensor) -> Result<Vec<PointGeometry>> {
    batch_geometry_in(model, pixels, Coordinates::Pixels)
}

/// [`batch_geometry`] for inputs given (and differentiated) in `coordinates`.
pub fn batch_geometry_in(model: &Classifier, input: &Tensor, coordinates: Coordinates) -> Result<Vec<PointGeometry>> {
    check_finite(input)?;
    let (log_probs, mut jacobian) = leafwalk_engine::jacobian_values(model, input, coordinates)?;
    let classes = model.classes();
    let points = log_probs.len() / classes;
    let rows = jacobian.len() / points.max(1);
    // Each point's J moved out of the batch's without a copy of the last (or only) one.
    let mut per_point: Vec<Vec<f32>> = (1..points).rev().map(|b| jacobian.split_off(b * rows)).collect();
    per_point.push(jacobian);
    per_point.reverse();
    log_probs
        .chunks(classes)
        .zip(per_point)
        .map(|(lp, j)| PointGeometry::new(&lp.iter().map(|&v| v as f64).collect::<Vec<_>>(), j, classes))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{argmax, median};

    #[test]
    fn median_and_argmax_on_small_cases() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(argmax(&[0.1, 0.7, 0.7, 0.2]), (1, 0.7), "the first of ties");
        assert_eq!(argmax(&[-3.0, -1.0]), (1, -1.0));
    }
}
