//! Evaluation metrics for leafwalk's applications, computed the standard way so that numbers
//! compare with the literature.
//!
//! **Detection** ([`detection`]): scores where higher means "more out-of-distribution", one set
//! for in-distribution inputs and one for OOD inputs. AUROC is the Mann–Whitney probability that
//! an OOD input outscores an ID one, ties counting one half; AUPR is average precision (the
//! step-wise area under the precision–recall curve, tied scores taken together) with OOD as the
//! positive class (AUPR-out) or ID as positive on negated scores (AUPR-in); FPR@95 %TPR is the
//! fraction of OOD inputs still accepted as in-distribution when the threshold accepts 95 % of
//! the ID inputs. NaN scores are an error, not silently ranked.
//!
//! **Image quality** ([`quality`]): PSNR and SSIM of images with values in [0, 1] (SSIM with
//! Wang et al.'s 11×11 Gaussian window, σ = 1.5, K₁ = 0.01, K₂ = 0.03, averaged over the
//! positions where the window fits, per channel).
//!
//! **Distributions** ([`distribution`]): the 1-Wasserstein distance between two samples, e.g. of
//! G's log-eigenvalues over two datasets.
#![warn(missing_docs)]

pub mod detection;
pub mod distribution;
pub mod quality;

/// Errors of the metrics; messages are one line.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MetricError {
    /// Detection scores holding NaN (a model or score that failed on some images).
    #[error("{set}: {count} of the scores are NaN")]
    NanScores {
        /// Which set: "in-distribution" or "out-of-distribution".
        set: &'static str,
        /// How many scores are NaN.
        count: usize,
    },
    /// A set with no scores at all.
    #[error("{set}: no scores")]
    NoScores {
        /// Which set: "in-distribution" or "out-of-distribution".
        set: &'static str,
    },
    /// Two images (or an image and its shape) of different sizes.
    #[error("images of {reference} and {image} values for a {shape} shape")]
    ImageSizes {
        /// The reference image's value count.
        reference: usize,
        /// The compared image's value count.
        image: usize,
        /// The shape both should have, as CxHxW.
        shape: String,
    },
    /// A sample for a distance that is empty or holds a value that is not finite.
    #[error("the {which} sample {problem}")]
    BadSample {
        /// "first" or "second".
        which: &'static str,
        /// "is empty" or "holds a value that is not finite".
        problem: &'static str,
    },
}

/// The metrics crate's result.
pub type Result<T> = std::result::Result<T, MetricError>;
