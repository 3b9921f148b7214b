//! Denoising by projection onto the data leaf, and the baselines it is measured against.
//!
//! A noisy image lies off the data leaf: the noise is mostly in directions the model ignores
//! (ker G). Projecting it onto the leaf ([`leaf_denoise`], `leafwalk_walk::project_onto_leaf`:
//! walks along the leaf from the nearest training images toward the noisy image, keeping the
//! end nearest it) returns an image the model takes for data that is as close as the leaf gets
//! to the noisy one. The baselines are the classic ones a user would otherwise reach for: a
//! Gaussian blur, a 3×3 median filter, projection onto the top-k principal components of the
//! training images, and the strongest simple one, the mean of the k nearest training images
//! ([`neighbour_mean`]), with the blur width and the k's tuned on noisy training images
//! ([`tune`]). Between them, a first-order leaf denoiser ([`LeafTangents::denoise`]): from each
//! of the k nearest training images t, step toward the noisy image along the leaf only,
//! t + s·P(t)(x̃ − t), and average. Images are CHW pixels in [0, 1]; every output is clamped
//! there.
#![warn(missing_docs)]

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use leafwalk_data::ImageShape;
use leafwalk_geometry::{batch_geometry, LeafProjector};
use leafwalk_metrics::quality::psnr;
use leafwalk_models::Classifier;
use leafwalk_walk::{project_onto_leaf, PathOptions, State};
use nalgebra::{DMatrix, DVector, SymmetricEigen};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use thiserror::Error;

/// Errors of the denoisers and their evaluation; messages are one line.
#[derive(Debug, Error)]
pub enum DenoiseError {
    /// A noise level that is negative or not a number.
    #[error("noise σ must be a non-negative number, got {0}")]
    BadSigma(f64),
    /// PCA fitted on fewer than two images (or on empty ones): no covariance exists.
    #[error("PCA needs at least two images")]
    TooFewImagesForPca,
    /// Tuning asked to choose among no candidates.
    #[error("nothing to tune on")]
    NoCandidates,
    /// A walk to the data leaf failed.
    #[error(transparent)]
    Walk(#[from] leafwalk_walk::WalkError),
    /// A geometry routine failed.
    #[error(transparent)]
    Geometry(#[from] leafwalk_geometry::GeometryError),
    /// A quality measure refused its images.
    #[error(transparent)]
    Metric(#[from] leafwalk_metrics::MetricError),
    /// A tensor operation failed.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

/// The denoise crate's result.
pub type Result<T> = std::result::Result<T, DenoiseError>;

/// `image + N(0, σ²)` per pixel, clipped to [0, 1], seeded.
pub fn add_noise(images: &[Vec<f32>], sigma: f64, seed: u64) -> Result<Vec<Vec<f32>>> {
    if !(sigma.is_finite() && sigma >= 0.0) {
        return Err(DenoiseError::BadSigma(sigma));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Ok(images
        .iter()
        .map(|image| {
            image
                .iter()
                .map(|&p| {
                    let z: f64 = StandardNormal.sample(&mut rng);
                    (p as f64 + sigma * z).clamp(0.0, 1.0) as f32
                })
                .collect()
        })
        .collect())
}

/// Separable Gaussian blur of width `sigma` pixels (kernel radius ⌈3σ⌉, edges clamped).
pub fn gaussian_blur(image: &[f32], shape: ImageShape, sigma: f64) -> Vec<f32> {
    let radius = (3.0 * sigma).ceil().max(1.0) as isize;
    let weights: Vec<f64> = (-radius..=radius).map(|d| (-(d * d) as f64 / (2.0 * sigma * sigma)).exp()).collect();
    let total: f64 = weights.iter().sum();
    let (h, w) = (shape.height as isize, shape.width as isize);
    let pass = |input: &[f32], along_rows: bool| -> Vec<f32> {
        let mut out = vec![0f32; input.len()];
        for (plane_in, plane_out) in input.chunks_exact((h * w) as usize).zip(out.chunks_exact_mut((h * w) as usize)) {
            for y in 0..h {
                for x in 0..w {
                    let sum: f64 = (-radius..=radius)
                        .zip(&weights)
                        .map(|(d, k)| {
                            let (yy, xx) =
                                if along_rows { (y, (x + d).clamp(0, w - 1)) } else { ((y + d).clamp(0, h - 1), x) };
                            k * plane_in[(yy * w + xx) as usize] as f64
                        })
                        .sum();
                    plane_out[(y * w + x) as usize] = (sum / total) as f32;
                }
            }
        }
        out
    };
    pass(&pass(image, true), false)
}

/// 3×3 median filter (edges clamped).
pub fn median3(image: &[f32], shape: ImageShape) -> Vec<f32> {
    let (h, w) = (shape.height as isize, shape.width as isize);
    let mut out = vec![0f32; image.len()];
    for (plane_in, plane_out) in image.chunks_exact((h * w) as usize).zip(out.chunks_exact_mut((h * w) as usize)) {
        for y in 0..h {
            for x in 0..w {
                let mut window = [0f32; 9];
                for (k, v) in window.iter_mut().enumerate() {
                    let (yy, xx) = ((y + k as isize / 3 - 1).clamp(0, h - 1), (x + k as isize % 3 - 1).clamp(0, w - 1));
                    *v = plane_in[(yy * w + xx) as usize];
                }
                window.sort_by(f32::total_cmp);
                plane_out[(y * w + x) as usize] = window[4];
            }
        }
    }
    out
}

/// Principal components of a set of images.
#[derive(Clone, Debug)]
pub struct Pca {
    mean: DVector<f64>,
    /// n × k_max, orthonormal columns by decreasing variance.
    components: DMatrix<f64>,
}

impl Pca {
    /// The top `max_components` components of `images` (the n×n pixel covariance of the data,
    /// not G: n = 784 for MNIST).
    pub fn fit(images: &[Vec<f32>], max_components: usize) -> Result<Self> {
        let n = images.first().map_or(0, |i| i.len());
        if images.len() < 2 || n == 0 {
            return Err(DenoiseError::TooFewImagesForPca);
        }
        let data = DMatrix::from_fn(images.len(), n, |r, c| images[r][c] as f64);
        let mean = DVector::from_fn(n, |c, _| data.column(c).mean());
        let centred = DMatrix::from_fn(images.len(), n, |r, c| data[(r, c)] - mean[c]);
        let covariance = centred.transpose() * &centred / (images.len() - 1) as f64;
        let eigen = SymmetricEigen::new(covariance);
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| eigen.eigenvalues[b].total_cmp(&eigen.eigenvalues[a]));
        let k = max_components.min(n);
        let components = DMatrix::from_fn(n, k, |r, c| eigen.eigenvectors[(r, order[c])]);
        Ok(Pca { mean, components })
    }

    /// The number of components fitted, `min(max_components, n)`: the largest `k`
    /// [`Pca::project`] can use.
    pub fn max_components(&self) -> usize {
        self.components.ncols()
    }

    /// `image` projected onto the top `k` components, clamped to [0, 1].
    pub fn project(&self, image: &[f32], k: usize) -> Vec<f32> {
        let basis = self.components.columns(0, k.min(self.max_components()));
        let centred = DVector::from_fn(image.len(), |i, _| image[i] as f64 - self.mean[i]);
        let projected = basis * (basis.transpose() * centred) + &self.mean;
        projected.iter().map(|&v| v.clamp(0.0, 1.0) as f32).collect()
    }
}

/// The candidate (of `candidates`) whose `denoise(image index, noisy image, candidate)` gives
/// the best mean PSNR against `clean`.
pub fn tune<T: Copy>(
    clean: &[Vec<f32>],
    noisy: &[Vec<f32>],
    candidates: &[T],
    denoise: impl Fn(usize, &[f32], T) -> Vec<f32>,
) -> Result<T> {
    let mut best: Option<(f64, T)> = None;
    for &candidate in candidates {
        let scores = clean
            .iter()
            .zip(noisy)
            .enumerate()
            .map(|(i, (c, n))| psnr(c, &denoise(i, n, candidate)))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mean = scores.iter().sum::<f64>() / scores.len().max(1) as f64;
        if best.is_none_or(|(b, _)| mean > b) {
            best = Some((mean, candidate));
        }
    }
    best.map(|(_, c)| c).ok_or(DenoiseError::NoCandidates)
}

/// Projections of `noisy` (pixels) onto the data leaf through `anchors` (training images,
/// normalised), as pixels: see the crate docs.
pub fn leaf_denoise(
    model: &Classifier,
    noisy: &[Vec<f32>],
    anchors: &[State],
    per_point: usize,
    options: &PathOptions,
) -> Result<Vec<Vec<f32>>> {
    let states: Vec<State> = noisy.iter().map(|x| State::from_pixels(model, x)).collect();
    let projections = project_onto_leaf(model, &states, anchors, per_point, options, |_, _| {})?;
    Ok(projections.iter().map(|p| p.point.to_pixels(model)).collect())
}

/// For each query, the indices of the `k` images of `pool` nearest it (pixel L2), nearest
/// first.
pub fn nearest_images(pool: &[Vec<f32>], queries: &[Vec<f32>], k: usize) -> Vec<Vec<usize>> {
    queries
        .iter()
        .map(|q| {
            let mut distances: Vec<(f32, usize)> = pool
                .iter()
                .enumerate()
                .map(|(i, t)| (t.iter().zip(q).map(|(a, b)| (a - b) * (a - b)).sum(), i))
                .collect();
            let k = k.min(distances.len());
            if k < distances.len() {
                distances.select_nth_unstable_by(k, |a, b| a.0.total_cmp(&b.0));
            }
            distances.truncate(k);
            distances.sort_by(|a, b| a.0.total_cmp(&b.0));
            distances.into_iter().map(|(_, i)| i).collect()
        })
        .collect()
}

/// The mean of the first `k` of `neighbours` (indices into `pool`).
pub fn neighbour_mean(pool: &[Vec<f32>], neighbours: &[usize], k: usize) -> Vec<f32> {
    let used = &neighbours[..k.min(neighbours.len())];
    let mut mean = vec![0f32; pool.first().map_or(0, Vec::len)];
    for &i in used {
        mean.iter_mut().zip(&pool[i]).for_each(|(m, v)| *m += v);
    }
    mean.iter_mut().for_each(|m| *m /= used.len().max(1) as f32);
    mean
}

/// Leaf projectors P(t) (onto ker G(t)⊥, in pixels) of training images, each computed once.
#[derive(Default)]
pub struct LeafTangents {
    projectors: HashMap<usize, LeafProjector>,
}

/// Training images whose Jacobians one batch takes.
const TANGENT_BATCH: usize = 64;

impl LeafTangents {
    /// Adds the projectors of `indices` (into `pool`) not yet known.
    pub fn extend(
        &mut self,
        model: &Classifier,
        pool: &[Vec<f32>],
        indices: impl IntoIterator<Item = usize>,
    ) -> Result<()> {
        let mut missing: Vec<usize> = indices.into_iter().filter(|i| !self.projectors.contains_key(i)).collect();
        missing.sort_unstable();
        missing.dedup();
        let shape = model.input_shape();
        for chunk in missing.chunks(TANGENT_BATCH) {
            let pixels: Vec<f32> = chunk.iter().flat_map(|&i| pool[i].iter().copied()).collect();
            let batch =
                Tensor::from_vec(pixels, (chunk.len(), shape.channels, shape.height, shape.width), &Device::Cpu)?
                    .to_device(model.device())?;
            for (&i, point) in chunk.iter().zip(batch_geometry(model, &batch)?) {
                self.projectors.insert(i, point.leaf_projector());
            }
        }
        Ok(())
    }

    /// The first-order leaf denoiser: over the first `k` of `neighbours` (training images t of
    /// `pool`, their projectors known), the mean of t + s·P(t)(x̃ − t) — the noisy image's
    /// offset from t kept along the leaf only, shrunk by `shrink` (s ∈ [0, 1]), the part in ker
    /// G(t), where the model sees no difference, dropped.
    pub fn denoise(&self, pool: &[Vec<f32>], noisy: &[f32], neighbours: &[usize], k: usize, shrink: f64) -> Vec<f32> {
        let used = &neighbours[..k.min(neighbours.len())];
        let mut sum = nalgebra::DVector::<f64>::zeros(noisy.len());
        for &i in used {
            let t = nalgebra::DVector::from_iterator(noisy.len(), pool[i].iter().map(|&v| f64::from(v)));
            let offset = nalgebra::DVector::from_iterator(
                noisy.len(),
                noisy.iter().zip(&pool[i]).map(|(a, b)| f64::from(a - b)),
            );
            let along = match self.projectors.get(&i) {
                Some(projector) => projector.onto_leaf(&offset),
                None => nalgebra::DVector::zeros(noisy.len()),
            };
            sum += t + along * shrink;
        }
        sum.iter().map(|&v| (v / used.len().max(1) as f64).clamp(0.0, 1.0) as f32).collect()
    }
}
