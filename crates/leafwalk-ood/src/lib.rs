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
#![warn(missing_docs)]

mod reference;
mod scores;
mod sets;

pub use reference::{Reference, ReferenceOptions};
pub use scores::{score_images, Score, ScoreOptions, ScoreTable};
pub use sets::{OodSet, Transform};

use thiserror::Error;

/// Errors of out-of-distribution scoring; messages are one line.
#[derive(Debug, Error)]
pub enum OodError {
    /// An OOD set spelled `noise:…` or `transform:…` that is not one of the known ones.
    #[error("OOD set {text:?}: {problem}")]
    UnknownSet {
        /// The set as given.
        text: String,
        /// Which sets of that kind exist.
        problem: &'static str,
    },
    /// A score name that is not one of [`Score::ALL`].
    #[error("unknown score {name:?} (known: {known}, all)")]
    UnknownScore {
        /// The name as given.
        name: String,
        /// The known names, comma-separated.
        known: String,
    },
    /// An image whose value count is not the model's input size.
    #[error("image {index} has {values} values, the model takes {shape} = {expected}")]
    ImageSize {
        /// The image's index in the list.
        index: usize,
        /// Its value count.
        values: usize,
        /// The model's input shape, as text (C×H×W).
        shape: String,
        /// The model's input size C·H·W.
        expected: usize,
    },
    /// Training labels that do not fit the images: another count, or a class the model lacks.
    #[error("{labels} labels for {images} training images, or a label ≥ {classes}")]
    Labels {
        /// Labels given.
        labels: usize,
        /// Images given.
        images: usize,
        /// The model's class count C.
        classes: usize,
    },
    /// The reference statistics need training images and none were given.
    #[error("the training set is empty")]
    EmptyTrainingSet,
    /// The class-conditional feature covariance (Mahalanobis score) cannot be inverted.
    #[error("covariance is not positive definite")]
    CovarianceNotPositiveDefinite,
    /// A cached reference file that lacks one of its tensors.
    #[error("{}: no tensor {name}", path.display())]
    CacheMissingTensor {
        /// The cache file.
        path: std::path::PathBuf,
        /// The tensor it lacks.
        name: &'static str,
    },
    /// The model's output has no gradient with respect to its input (a constant model).
    #[error("the model output does not depend on its input")]
    InputNotUsed,
    /// A geometry routine failed.
    #[error(transparent)]
    Geometry(#[from] leafwalk_geometry::GeometryError),
    /// A walk to the data leaf failed.
    #[error(transparent)]
    Walk(#[from] leafwalk_walk::WalkError),
    /// The model could not be used or its cache file not read.
    #[error(transparent)]
    Model(#[from] leafwalk_models::ModelError),
    /// An image set could not be read.
    #[error(transparent)]
    Data(#[from] leafwalk_data::DataError),
    /// A tensor operation failed.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

/// The OOD crate's result.
pub type Result<T> = std::result::Result<T, OodError>;
