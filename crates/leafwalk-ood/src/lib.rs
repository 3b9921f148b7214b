//! Out-of-distribution scores of one classifier, higher = more out of distribution.
//!
//! This crate turns the foliation into a detector: an image the model was trained on data like
//! lies near the **data leaf** (the leaf through the training images), an image unlike that data
//! far from it, so the distance from an image to the data leaf (via
//! `leafwalk_walk::project_onto_leaf`), counted in the model's local length scale, is an OOD
//! score ([`Score::LeafDistance`]; in plain pixels, [`Score::PixelLeafDistance`]). Two more
//! come from G alone: its trace and the mean of its log-eigenvalues. Beside them, computed from
//! the same model, are the standard baselines: maximum softmax probability, energy
//! (T = 1), ODIN (T = 1000, ε = 0.0014), Mahalanobis distance of the penultimate features to the
//! nearest class mean under the shared covariance, and GradNorm. What the scores need from the
//! training set ([`Reference`]) is computed once per model and cached on disk. [`OodSet`] names
//! the evaluation's OOD sets: other data, noise, or transformed in-distribution images.

mod reference;
mod scores;
mod sets;

pub use reference::{Reference, ReferenceOptions};
pub use scores::{score_images, Score, ScoreOptions, ScoreTable};
pub use sets::{OodSet, Transform};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum OodError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Geometry(#[from] leafwalk_geometry::GeometryError),
    #[error(transparent)]
    Walk(#[from] leafwalk_walk::WalkError),
    #[error(transparent)]
    Model(#[from] leafwalk_models::ModelError),
    #[error(transparent)]
    Data(#[from] leafwalk_data::DataError),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, OodError>;
