//! Walks on the leaves of the foliation a classifier defines on its input space.
//!
//! This crate owns motion: a **data-leaf step** moves along the projection of (target − x) onto
//! ker G⊥(x), the tangent space of the leaf through x, so the image morphs toward the target
//! through images the model takes for data; a **noise-leaf step** moves along the component of a
//! fixed direction in ker G(x), which changes the image without changing the prediction to first
//! order. Steps are taken, as in Grementieri & Fioresi's code, in the model's *normalised*
//! coordinates (x − μ)/σ with a unit displacement scaled by the step size (0.1 in the paper);
//! the state stays in pixels, clamped to [0, 1] after every step.

use candle_core::Tensor;
use leafwalk_geometry::{batch_geometry, PointGeometry};
use leafwalk_models::Classifier;
use nalgebra::DVector;

pub use leafwalk_geometry::GeometryError as WalkError;
pub type Result<T> = std::result::Result<T, WalkError>;

/// One step's result.
#[derive(Clone, Debug)]
pub struct Step {
    /// The new point, pixels (CHW) clamped to [0, 1].
    pub next: Vec<f32>,
    /// Dimension of ker G⊥ used by the projection.
    pub rank: usize,
    /// log p at the point the step started from.
    pub log_probs: Vec<f64>,
}

/// σ of each pixel's channel, in CHW order.
fn pixel_std(model: &Classifier) -> Vec<f64> {
    let shape = model.input_shape();
    let plane = shape.height * shape.width;
    (0..shape.len()).map(|i| model.meta().std[i / plane] as f64).collect()
}

/// Pixels → the model's normalised coordinates (f64).
pub fn normalised(model: &Classifier, pixels: &[f32]) -> DVector<f64> {
    let shape = model.input_shape();
    let plane = shape.height * shape.width;
    let meta = model.meta();
    DVector::from_iterator(
        pixels.len(),
        pixels.iter().enumerate().map(|(i, &p)| (p as f64 - meta.mean[i / plane] as f64) / meta.std[i / plane] as f64),
    )
}

/// Distance between two images in normalised units (the paper's).
pub fn normalised_distance(model: &Classifier, a: &[f32], b: &[f32]) -> f64 {
    (normalised(model, a) - normalised(model, b)).norm()
}

/// G's geometry at `pixels` with J in normalised coordinates (J_norm = σ·J_pixel per channel),
/// the coordinates the steps move in.
fn normalised_geometry(model: &Classifier, pixels: &[f32]) -> Result<PointGeometry> {
    let shape = model.input_shape();
    let batch = Tensor::from_slice(pixels, (1, shape.channels, shape.height, shape.width), model.device())?;
    let mut point = batch_geometry(model, &batch)?.remove(0);
    for (mut column, sigma) in point.jacobian.column_iter_mut().zip(pixel_std(model)) {
        column *= sigma;
    }
    Ok(point)
}

/// Moves `x` by `step` normalised units along the unit vector `displacement` (normalised
/// coordinates), clamping the pixels to [0, 1].
fn advance(model: &Classifier, x: &[f32], displacement: &DVector<f64>, step: f64) -> Vec<f32> {
    x.iter()
        .zip(displacement.iter().zip(pixel_std(model)))
        .map(|(&p, (&d, sigma))| ((p as f64 + step * sigma * d) as f32).clamp(0.0, 1.0))
        .collect()
}

fn unit(v: DVector<f64>) -> DVector<f64> {
    let norm = v.norm();
    if norm > 0.0 {
        v / norm
    } else {
        v
    }
}

/// One data-leaf step from `x` toward `target` (both pixels): along P (target − x), normalised
/// to unit length, `step` normalised units long.
pub fn data_leaf_step(model: &Classifier, x: &[f32], target: &[f32], step: f64) -> Result<Step> {
    let point = normalised_geometry(model, x)?;
    let projector = point.leaf_projector();
    let toward = normalised(model, target) - normalised(model, x);
    let displacement = unit(projector.onto_leaf(&toward));
    Ok(Step {
        next: advance(model, x, &displacement, step),
        rank: projector.rank(),
        log_probs: point.log_probs.iter().copied().collect(),
    })
}

/// One noise-leaf step from `x` along the ker G component of `direction` (normalised
/// coordinates), normalised to unit length, `step` normalised units long.
pub fn noise_leaf_step(model: &Classifier, x: &[f32], direction: &DVector<f64>, step: f64) -> Result<Step> {
    let point = normalised_geometry(model, x)?;
    let projector = point.leaf_projector();
    let displacement = unit(projector.onto_kernel(direction));
    Ok(Step {
        next: advance(model, x, &displacement, step),
        rank: projector.rank(),
        log_probs: point.log_probs.iter().copied().collect(),
    })
}
