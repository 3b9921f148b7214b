//! The scores, for a batch of images at once.

use std::fmt;
use std::str::FromStr;

use candle_core::{Tensor, Var, D};
use leafwalk_geometry::{argmax, batch_geometry, PointGeometry};
use leafwalk_models::Classifier;
use leafwalk_walk::{project_onto_leaf, PathOptions, State};
use nalgebra::DVector;

use crate::reference::{mahalanobis, rows, Reference};
use crate::{OodError, Result};

/// Images per forward or Jacobian batch.
const BATCH: usize = 64;

/// An OOD score; every one is oriented so that higher = more out of distribution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Score {
    /// ‖x − y*‖·√λ̄, the distance to the projection y* onto the data leaf in the model's own
    /// length scale at x, λ̄ the geometric mean of G(x)'s C−1 nonzero eigenvalues. G's
    /// eigenvalues have units of 1/length² (KL ≈ ½ δᵀGδ), so the product is unit-free: how many
    /// of the lengths over which the prediction changes lie between x and the data leaf. This is
    /// the method's score: in plain pixels ([`Score::PixelLeafDistance`]) a mirrored digit or a
    /// garment can sit as near the leaf as an unusual digit, but the model is far more sensitive
    /// around them, and counting in its length scale separates them (AUROC on mirrored digits
    /// 0.94 against 0.77). With trace G in place of λ̄, dominated by the largest eigenvalue, it
    /// separated mirrored digits less well.
    LeafDistance,
    /// ‖x − y*‖ in pixels (normalised units), without the model's length scale.
    PixelLeafDistance,
    /// trace G (pixel units): near zero where the model is sure, larger where it hesitates.
    Trace,
    /// The mean of log₁₀ of G's C−1 nonzero eigenvalues (pixel units): the log-volume per
    /// dimension of the model's sensitivity, where trace G is dominated by the largest.
    Spectrum,
    /// −max p.
    Msp,
    /// −log Σ exp(logits) (temperature 1).
    Energy,
    /// −max softmax(logits(x̃)/T), x̃ = x − ε sign(−∇ₓ log max softmax(logits(x)/T)) in pixels.
    Odin,
    /// min over classes of the Mahalanobis distance of the penultimate features.
    Mahalanobis,
    /// −‖∂ KL(uniform ‖ p)/∂W_last‖₁ = −(Σ_c |p_c − 1/C|)·‖features‖₁.
    GradNorm,
}

impl Score {
    /// Every score, in the order `all` selects them ([`Score::parse_list`]).
    pub const ALL: [Score; 9] = [
        Score::LeafDistance,
        Score::PixelLeafDistance,
        Score::Trace,
        Score::Spectrum,
        Score::Msp,
        Score::Energy,
        Score::Odin,
        Score::Mahalanobis,
        Score::GradNorm,
    ];

    /// The name on the command line and in tables (e.g. `leaf-distance`); `str::parse` reads it
    /// back.
    pub fn name(self) -> &'static str {
        match self {
            Score::LeafDistance => "leaf-distance",
            Score::PixelLeafDistance => "pixel-leaf-distance",
            Score::Trace => "trace",
            Score::Spectrum => "spectrum",
            Score::Msp => "msp",
            Score::Energy => "energy",
            Score::Odin => "odin",
            Score::Mahalanobis => "mahalanobis",
            Score::GradNorm => "gradnorm",
        }
    }

    /// `all` or a comma-separated list of names.
    pub fn parse_list(text: &str) -> Result<Vec<Score>> {
        if text == "all" {
            return Ok(Score::ALL.to_vec());
        }
        text.split(',').map(|name| name.trim().parse()).collect()
    }
}

impl FromStr for Score {
    type Err = OodError;

    fn from_str(text: &str) -> Result<Self> {
        Score::ALL.into_iter().find(|s| s.name() == text).ok_or_else(|| {
            let known: Vec<&str> = Score::ALL.iter().map(|s| s.name()).collect();
            OodError::UnknownScore { name: text.to_string(), known: known.join(", ") }
        })
    }
}

impl fmt::Display for Score {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Settings of the scores that have any: the leaf projection's and ODIN's. The defaults: 2
/// anchors per image, adaptive walks of at most 200 steps, and Liang et al.'s T = 1000 and
/// ε = 0.0014.
#[derive(Clone, Debug)]
pub struct ScoreOptions {
    /// Training images each leaf projection starts from.
    pub anchors_per_point: usize,
    /// The walks of the leaf projection.
    pub path: PathOptions,
    /// ODIN's temperature T: the logits are divided by it for both the input gradient and the
    /// score; default 1000.
    pub odin_temperature: f64,
    /// ODIN's input perturbation, in pixels ([0, 1]).
    pub odin_epsilon: f64,
}

impl Default for ScoreOptions {
    fn default() -> Self {
        ScoreOptions {
            anchors_per_point: 2,
            path: PathOptions { max_steps: 200, ..PathOptions::adaptive() },
            odin_temperature: 1000.0,
            odin_epsilon: 0.0014,
        }
    }
}

/// Scores of a set of images.
#[derive(Clone, Debug)]
pub struct ScoreTable {
    /// Predicted class and its probability, per image.
    pub predictions: Vec<(usize, f64)>,
    /// One column per requested score, one value per image.
    pub columns: Vec<(Score, Vec<f64>)>,
}

impl ScoreTable {
    /// The values of `score`, one per image in input order; `None` when it was not requested.
    pub fn column(&self, score: Score) -> Option<&[f64]> {
        self.columns.iter().find(|(s, _)| *s == score).map(|(_, values)| values.as_slice())
    }
}

/// Every score in `which` for `images` (CHW pixels in [0, 1], the model's shape), in batches;
/// `on_batch(images_done)` is called after each.
pub fn score_images(
    model: &Classifier,
    reference: &Reference,
    images: &[Vec<f32>],
    which: &[Score],
    options: &ScoreOptions,
    mut on_batch: impl FnMut(usize),
) -> Result<ScoreTable> {
    let shape = model.input_shape();
    if let Some(k) = images.iter().position(|image| image.len() != shape.len()) {
        return Err(OodError::ImageSize {
            index: k,
            values: images[k].len(),
            shape: shape.to_string(),
            expected: shape.len(),
        });
    }
    let mut predictions = Vec::with_capacity(images.len());
    let mut columns: Vec<(Score, Vec<f64>)> = which.iter().map(|&s| (s, Vec::with_capacity(images.len()))).collect();
    for chunk in images.chunks(BATCH) {
        let values: Vec<f32> = chunk.iter().flatten().copied().collect();
        let pixels =
            Tensor::from_vec(values, (chunk.len(), shape.channels, shape.height, shape.width), model.device())?
                .to_dtype(model.dtype())?;
        let (features, logits) = model.features_and_logits(&pixels)?;
        let features = rows(&features)?;
        let logits = rows(&logits)?;
        let log_probs: Vec<DVector<f64>> = logits.iter().map(log_softmax).collect();
        predictions.extend(log_probs.iter().map(|l| {
            let (class, log_p) = argmax(l.as_slice());
            (class, log_p.exp())
        }));
        let needs_geometry = |s: &Score| matches!(s, Score::Trace | Score::Spectrum | Score::LeafDistance);
        let geometry = if which.iter().any(needs_geometry) { batch_geometry(model, &pixels)? } else { Vec::new() };
        let needs_projection = |s: &Score| matches!(s, Score::PixelLeafDistance | Score::LeafDistance);
        let leaf_distances: Vec<f64> = if which.iter().any(needs_projection) {
            let states: Vec<State> = chunk.iter().map(|x| State::from_pixels(model, x)).collect();
            project_onto_leaf(model, &states, &reference.anchors, options.anchors_per_point, &options.path, |_, _| {})?
                .iter()
                .map(|p| p.distance)
                .collect()
        } else {
            Vec::new()
        };
        for (score, column) in &mut columns {
            match score {
                Score::PixelLeafDistance => column.extend(&leaf_distances),
                Score::LeafDistance => {
                    let scale = |g: &PointGeometry| 10f64.powf(0.5 * mean_log10_eigenvalue(g));
                    column.extend(leaf_distances.iter().zip(&geometry).map(|(d, g)| d * scale(g)))
                }
                Score::Trace => column.extend(geometry.iter().map(|g| g.trace())),
                Score::Spectrum => column.extend(geometry.iter().map(mean_log10_eigenvalue)),
                Score::Msp => column.extend(log_probs.iter().map(|l| -l.max().exp())),
                Score::Energy => column.extend(logits.iter().map(|l| -log_sum_exp(l))),
                Score::Odin => column.extend(odin(model, &pixels, options)?),
                Score::Mahalanobis => column.extend(features.iter().map(|f| {
                    reference
                        .class_means
                        .iter()
                        .map(|m| mahalanobis(f, m, &reference.feature_precision))
                        .fold(f64::INFINITY, f64::min)
                })),
                Score::GradNorm => column.extend(features.iter().zip(&log_probs).map(|(f, l)| {
                    let uniform = 1.0 / l.len() as f64;
                    let spread: f64 = l.iter().map(|l| (l.exp() - uniform).abs()).sum();
                    -spread * f.iter().map(|v| v.abs()).sum::<f64>()
                })),
            }
        }
        on_batch(predictions.len());
    }
    Ok(ScoreTable { predictions, columns })
}

fn log_sum_exp(values: &DVector<f64>) -> f64 {
    let max = values.max();
    max + values.iter().map(|v| (v - max).exp()).sum::<f64>().ln()
}

fn log_softmax(logits: &DVector<f64>) -> DVector<f64> {
    logits.add_scalar(-log_sum_exp(logits))
}

/// ODIN (Liang et al. 2018): a step of ε against the gradient sign of the temperature-scaled
/// loss of the predicted class, then −max softmax(logits/T) there. The step is taken in pixels
/// and not clamped, as in the paper's code (there in normalised units, ε/σ).
fn odin(model: &Classifier, pixels: &Tensor, options: &ScoreOptions) -> Result<Vec<f64>> {
    let temperature = options.odin_temperature;
    let input = Var::from_tensor(pixels)?;
    let scaled = (model.logits_t(input.as_tensor(), false)? / temperature)?;
    let log_probs = candle_nn::ops::log_softmax(&scaled, D::Minus1)?;
    let top = log_probs.max(D::Minus1)?.sum_all()?;
    let gradient = top.backward()?.remove(input.as_tensor()).ok_or(OodError::InputNotUsed)?;
    // Raising the top class's log-probability is x + ε·sign(∇ log p_top).
    let perturbed = (pixels + (gradient.sign()? * options.odin_epsilon)?)?;
    let logits = rows(&(model.logits_t(&perturbed, false)? / temperature)?)?;
    Ok(logits.iter().map(|l| -log_softmax(l).max().exp()).collect())
}

/// The spectrum score: the mean of log₁₀ of G's nonzero eigenvalues.
fn mean_log10_eigenvalue(point: &PointGeometry) -> f64 {
    let logs = point.log10_eigenvalues();
    logs.iter().sum::<f64>() / logs.len() as f64
}
