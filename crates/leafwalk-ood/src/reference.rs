//! What the scores compare against, from the model's training set.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use leafwalk_data::Dataset;
use leafwalk_models::{checkpoint, Classifier};
use leafwalk_walk::State;
use nalgebra::{DMatrix, DVector};

use crate::{OodError, Result};

/// Images per forward batch while building.
const BATCH: usize = 256;

/// How [`Reference::build`] keeps its statistics; the default caches nothing.
#[derive(Clone, Debug, Default)]
pub struct ReferenceOptions {
    /// Folder for the cached statistics (`None`: compute every time).
    pub cache_dir: Option<PathBuf>,
}

/// Training-set statistics: anchors for the leaf projection (every training image), and the
/// class means (of the classes present) and shared precision of the penultimate features
/// (Mahalanobis).
#[derive(Clone, Debug)]
pub struct Reference {
    /// Training images in the model's normalised coordinates.
    pub anchors: Vec<State>,
    pub(crate) class_means: Vec<DVector<f64>>,
    pub(crate) feature_precision: DMatrix<f64>,
}

/// (x − m)ᵀ P (x − m).
pub(crate) fn mahalanobis(x: &DVector<f64>, mean: &DVector<f64>, precision: &DMatrix<f64>) -> f64 {
    let d = x - mean;
    d.dot(&(precision * &d))
}

/// Inverse covariance of `samples` around `centre(index)`, with a ridge of 1e-6 of the mean
/// variance so that a singular covariance (dead ReLU features) still inverts.
fn precision_around(samples: &[DVector<f64>], centre: impl Fn(usize) -> DVector<f64>) -> Result<DMatrix<f64>> {
    let dim = samples.first().map_or(0, |s| s.len());
    let mut covariance = DMatrix::zeros(dim, dim);
    for (k, sample) in samples.iter().enumerate() {
        let d = sample - centre(k);
        covariance += &d * d.transpose();
    }
    covariance /= samples.len().max(1) as f64;
    let ridge = 1e-6 * covariance.trace() / dim.max(1) as f64 + 1e-12;
    covariance += DMatrix::identity(dim, dim) * ridge;
    covariance.cholesky().map(|c| c.inverse()).ok_or(OodError::CovarianceNotPositiveDefinite)
}

/// Mean of a non-empty set of vectors.
fn mean(samples: &[DVector<f64>]) -> DVector<f64> {
    let sum = samples.iter().skip(1).fold(samples[0].clone(), |sum, s| sum + s);
    sum / samples.len() as f64
}

/// The rows of a 2-D tensor as f64 vectors.
pub(crate) fn rows(tensor: &Tensor) -> Result<Vec<DVector<f64>>> {
    let rows: Vec<Vec<f64>> = tensor.to_dtype(DType::F64)?.to_vec2()?;
    Ok(rows.into_iter().map(DVector::from_vec).collect())
}

impl Reference {
    /// From `train` (the model's training split); the statistics come from the cache when a
    /// matching file is there, and are written to it otherwise.
    pub fn build(model: &Classifier, train: &Dataset, options: &ReferenceOptions) -> Result<Self> {
        if train.is_empty() {
            return Err(OodError::EmptyTrainingSet);
        }
        let images = (0..train.len()).map(|k| train.pixels(k)).collect::<leafwalk_data::Result<Vec<_>>>()?;
        let labels: Vec<usize> = train.labels.iter().map(|&l| usize::from(l)).collect();
        let cache = options.cache_dir.as_ref().map(|dir| dir.join(cache_name(model, train)));
        if let Some(path) = cache.as_deref().filter(|p| p.is_file()) {
            let anchors = images.iter().map(|pixels| State::from_pixels(model, pixels)).collect();
            if let Ok(reference) = Self::read_cache(path, anchors) {
                return Ok(reference);
            }
        }
        let reference = Self::from_images(model, &images, &labels)?;
        if let Some(path) = &cache {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| leafwalk_data::DataError::io(dir, e))?;
            }
            reference.write_cache(path)?;
        }
        Ok(reference)
    }

    /// From training images given as pixels (CHW in [0, 1], the model's shape) and their labels
    /// (class indices below C), computed every time: for callers holding images in memory
    /// rather than a registered dataset (the Python package).
    pub fn from_images(model: &Classifier, images: &[Vec<f32>], labels: &[usize]) -> Result<Self> {
        let shape = model.input_shape();
        if images.is_empty() {
            return Err(OodError::EmptyTrainingSet);
        }
        if let Some(index) = images.iter().position(|image| image.len() != shape.len()) {
            let values = images[index].len();
            return Err(OodError::ImageSize { index, values, shape: shape.to_string(), expected: shape.len() });
        }
        if labels.len() != images.len() || labels.iter().any(|&l| l >= model.classes()) {
            return Err(OodError::Labels { labels: labels.len(), images: images.len(), classes: model.classes() });
        }
        let anchors = images.iter().map(|pixels| State::from_pixels(model, pixels)).collect();
        let device = model.device();
        let classes = model.classes();
        let mut features = Vec::with_capacity(images.len());
        for batch in images.chunks(BATCH) {
            let pixels =
                Tensor::from_vec(batch.concat(), (batch.len(), shape.channels, shape.height, shape.width), device)?;
            let (batch_features, _) = model.features_and_logits(&pixels.to_dtype(model.dtype())?)?;
            features.extend(rows(&batch_features)?);
        }
        // A class without training images has no mean; Mahalanobis takes the nearest of the others.
        let class_means: Vec<Option<DVector<f64>>> = (0..classes)
            .map(|c| {
                let members: Vec<DVector<f64>> =
                    features.iter().zip(labels).filter(|(_, &l)| l == c).map(|(f, _)| f.clone()).collect();
                (!members.is_empty()).then(|| mean(&members))
            })
            .collect();
        // Every label's class has members, so its mean exists.
        let centre = |k: usize| class_means[labels[k]].clone().unwrap_or_else(|| DVector::zeros(features[k].len()));
        let feature_precision = precision_around(&features, centre)?;
        let class_means = class_means.into_iter().flatten().collect();
        Ok(Reference { anchors, class_means, feature_precision })
    }

    fn write_cache(&self, path: &Path) -> Result<()> {
        let matrix = |m: &DMatrix<f64>| Tensor::from_vec(m.transpose().as_slice().to_vec(), m.shape(), &Device::Cpu);
        let means = DMatrix::from_columns(&self.class_means).transpose();
        let tensors = vec![
            ("class_means".to_string(), matrix(&means)?),
            ("feature_precision".to_string(), matrix(&self.feature_precision)?),
        ];
        let metadata = HashMap::from([("content".to_string(), "leafwalk OOD reference statistics".to_string())]);
        Ok(checkpoint::write(path, &tensors, metadata)?)
    }

    fn read_cache(path: &Path, anchors: Vec<State>) -> Result<Self> {
        let (tensors, _) = checkpoint::read(path, &Device::Cpu)?;
        let get = |name: &'static str| -> Result<&Tensor> {
            tensors.get(name).ok_or_else(|| OodError::CacheMissingTensor { path: path.to_path_buf(), name })
        };
        let matrix = |name: &'static str| -> Result<DMatrix<f64>> {
            let rows: Vec<Vec<f64>> = get(name)?.to_dtype(DType::F64)?.to_vec2()?;
            let columns = rows.first().map_or(0, |r| r.len());
            Ok(DMatrix::from_row_iterator(rows.len(), columns, rows.into_iter().flatten()))
        };
        let means = matrix("class_means")?;
        Ok(Reference {
            anchors,
            class_means: means.row_iter().map(|r| r.transpose()).collect(),
            feature_precision: matrix("feature_precision")?,
        })
    }
}

/// `ood-reference-<hash>.safetensors`, the hash over the model's parameters and the training
/// set: a retrained model or another data set never reads stale statistics.
fn cache_name(model: &Classifier, train: &Dataset) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for (name, tensor) in model.named_tensors() {
        name.hash(&mut hasher);
        if let Ok(values) = tensor.flatten_all().and_then(|t| t.to_dtype(DType::F32)).and_then(|t| t.to_vec1::<f32>()) {
            values.iter().for_each(|v| v.to_bits().hash(&mut hasher));
        }
    }
    (train.info.name, train.len(), &train.images[..train.images.len().min(1 << 16)]).hash(&mut hasher);
    format!("ood-reference-{:016x}.safetensors", hasher.finish())
}
