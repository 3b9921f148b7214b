//! Walks on the leaves of the foliation a classifier defines on its input space.
//!
//! This crate owns motion: a **data-leaf step** moves along the projection of (target − x) onto
//! ker G⊥(x), the tangent space of the leaf through x, so the image morphs toward the target
//! through images the model takes for data; a **noise-leaf step** moves along the component of a
//! fixed direction in ker G(x), which changes the image without changing the prediction to first
//! order. Paths chain data-leaf steps, many paths per batched Jacobian pass, with the paper's
//! fixed-step Euler or an error-controlled adaptive integrator, and report how they ended —
//! reached, stalled at the leaf point nearest the target, or diverged ([`connect_batch`]);
//! stalled paths can be steered through training images ([`connect_steered`]); thousands of
//! Euler paths run with every step on the GPU ([`euler_on_device`], one fused kernel per
//! step). Walks from
//! training images toward an image project it onto the data leaf ([`project_onto_leaf`]);
//! random walks on the leaf that keep the prediction generate images of a class
//! ([`generate_on_leaf`]).
//!
//! Walks live, as in Grementieri & Fioresi's code, in the model's *normalised* coordinates
//! (x − μ)/σ: the state is an f32 image in those coordinates, each step adds a unit
//! displacement times the step size (0.1 in the paper) in f64, rounds to f32 and clamps every
//! value to the image of [0, 1] ((0 − μ)/σ … (1 − μ)/σ per channel). Keeping the state there,
//! rather than in pixels, avoids re-normalising at every step, whose one-ulp changes flip
//! near-tied pooling windows over blank background and let a walk drift from the paper's.
//! [`State::from_pixels`] and [`State::to_pixels`] convert at the edges.
#![warn(missing_docs)]

use leafwalk_models::Classifier;
use nalgebra::DVector;

mod generate;
mod on_device;
mod pairs;
mod path;
mod project;
mod route;
mod step;

pub use generate::{generate_on_leaf, random_direction, Generated};
pub use on_device::{euler_on_device, DeviceWalk, FusedStep, LeafStep};
pub use pairs::{walk_pairs, Leaf, PairPath, Steering, NOISE_STEP};
pub use path::{
    connect, connect_batch, prediction, Ending, Integrator, PathOptions, PathOutcome, PathRecord, MAX_BATCH,
};
pub use project::{project_onto_leaf, Projection};
pub use route::{concatenate, connect_steered, walked_length, SteeredPath};
pub use step::{data_leaf_step, direction_step, direction_walk, leaf_direction, Step, Subspace};

/// What can stop a walk. Causes are kept as sources, so a caller can branch on them
/// (`matches!(e, WalkError::AtStep { source, .. } if matches!(*source, WalkError::NonFiniteJacobian))`)
/// and a report prints the chain (`{:#}` through anyhow: "walk 2, step 17: the Jacobian is not
/// finite (NaN/Inf)").
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    /// Computing J and p failed: a start or target holding NaN/∞ (device walks), or the CPU
    /// engine refusing the model.
    #[error(transparent)]
    Geometry(#[from] leafwalk_geometry::GeometryError),
    /// A tensor operation failed: out of device memory, or inputs to [`LeafStep::apply`] whose
    /// shapes do not fit together or that are not f32.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// [`generate_on_leaf`] was given a step size that is zero, negative or not finite (the
    /// value given).
    #[error("the step size must be a positive number, got {0}")]
    StepSize(f64),
    /// [`project_onto_leaf`] was given no anchors, or asked for 0 walks per point.
    #[error("projection onto the data leaf needs at least one anchor")]
    NoAnchors,
    /// log p or J at the point a single step starts from holds NaN/∞ (the step functions and
    /// [`generate_on_leaf`]; the path integrators report [`Ending::Diverged`] instead).
    #[error("the Jacobian is not finite (NaN/Inf)")]
    NonFiniteJacobian,
    /// The model is too large for [`LeafStep`] (and so [`euler_on_device`]): more than 3 input
    /// channels or more than 32 classes. The host integrators ([`connect_batch`]) take it.
    #[error(
        "the fused step takes at most {max_channels} channels and {max_classes} classes, not {channels} and {classes}"
    )]
    TooLargeForFusedStep {
        /// The model's input channels.
        channels: usize,
        /// The model's classes.
        classes: usize,
        /// The most channels the fused step takes (3).
        max_channels: usize,
        /// The most classes the fused step takes (32).
        max_classes: usize,
    },
    /// A step of a walk failed; `walk` numbers the walk when a call runs several.
    #[error("{}step {step}", walk.map_or(String::new(), |w| format!("walk {w}, ")))]
    AtStep {
        /// Index of the failing walk among those of the call (`None` for a call that runs one).
        walk: Option<usize>,
        /// Index of the failing step within its walk, counted from 0.
        step: usize,
        /// Why the step failed.
        #[source]
        source: Box<WalkError>,
    },
}

impl WalkError {
    fn at_step(walk: Option<usize>, step: usize) -> impl FnOnce(WalkError) -> WalkError {
        move |source| WalkError::AtStep { walk, step, source: Box::new(source) }
    }
}

/// The walk crate's result.
pub type Result<T> = std::result::Result<T, WalkError>;

/// An image in the model's normalised coordinates, CHW, f32 (the paper's precision).
#[derive(Clone, Debug, PartialEq)]
pub struct State(pub Vec<f32>);

impl State {
    /// (p − μ)/σ per channel in f32, exactly as the model normalises pixels.
    pub fn from_pixels(model: &Classifier, pixels: &[f32]) -> Self {
        let (mean, std) = channel_stats(model, pixels.len());
        State(pixels.iter().enumerate().map(|(i, &p)| (p - mean[i]) / std[i]).collect())
    }

    /// Back to pixels in [0, 1].
    pub fn to_pixels(&self, model: &Classifier) -> Vec<f32> {
        let (mean, std) = channel_stats(model, self.0.len());
        self.0.iter().enumerate().map(|(i, &x)| (x * std[i] + mean[i]).clamp(0.0, 1.0)).collect()
    }

    pub(crate) fn as_f64(&self) -> DVector<f64> {
        DVector::from_iterator(self.0.len(), self.0.iter().map(|&v| v as f64))
    }

    /// Euclidean distance in normalised units (the paper's), in f64.
    pub fn distance(&self, other: &State) -> f64 {
        self.0.iter().zip(&other.0).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum::<f64>().sqrt()
    }
}

/// Per-value mean and std (each value's channel), for a CHW image of `len` values.
pub(crate) fn channel_stats(model: &Classifier, len: usize) -> (Vec<f32>, Vec<f32>) {
    let shape = model.input_shape();
    let plane = shape.height * shape.width;
    let meta = model.meta();
    ((0..len).map(|i| meta.mean[i / plane]).collect(), (0..len).map(|i| meta.std[i / plane]).collect())
}

/// The normalised image of [0, 1] for each value: the walk's clamp bounds.
pub(crate) fn clamp_bounds(model: &Classifier, len: usize) -> (Vec<f32>, Vec<f32>) {
    let (mean, std) = channel_stats(model, len);
    let lo = mean.iter().zip(&std).map(|(m, s)| (0.0 - m) / s).collect();
    let hi = mean.iter().zip(&std).map(|(m, s)| (1.0 - m) / s).collect();
    (lo, hi)
}
