use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Module, ModuleT, Tensor, Var, D};
use candle_nn::{Linear, VarBuilder, VarMap};
use leafwalk_data::{dataset_info, DatasetInfo, ImageShape};

use crate::checkpoint::{self, CheckpointMeta};
use crate::nets::{CifarVgg11, Mlp, MnistCnn};
use crate::params::ParamSource;
use crate::{Arch, ModelError, Result};

enum Net {
    MnistCnn(MnistCnn),
    Mlp(Mlp),
    CifarVgg11(CifarVgg11),
}

impl Net {
    /// Penultimate features of normalised inputs.
    fn features_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        match self {
            Net::MnistCnn(n) => n.features(x),
            Net::Mlp(n) => n.features(x),
            Net::CifarVgg11(n) => n.features_t(x, train),
        }
    }

    /// The last linear layer, features → logits.
    fn head(&self) -> &Linear {
        match self {
            Net::MnistCnn(n) => n.head(),
            Net::Mlp(n) => n.head(),
            Net::CifarVgg11(n) => n.head(),
        }
    }
}

impl ModuleT for Net {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.head().forward(&self.features_t(x, train)?)
    }
}

/// What `Classifier::load` should assume when a file lacks leafwalk metadata (a plain PyTorch
/// export), or insist on when it has it.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    pub arch: Option<Arch>,
    pub dataset: Option<&'static DatasetInfo>,
}

/// A network plus its input normalisation: maps pixels in `[0, 1]`, shape `[B, C, H, W]`, to
/// log-probabilities `[B, classes]`. `Module::forward` is evaluation mode (batch norm uses its
/// running statistics), the mode every piece of geometry uses.
pub struct Classifier {
    net: Net,
    meta: CheckpointMeta,
    shape: ImageShape,
    mean: Tensor,
    std: Tensor,
    varmap: VarMap,
    param_names: Vec<String>,
    device: Device,
    dtype: DType,
}

impl Classifier {
    /// A fresh model with PyTorch-default initialisation drawn from a ChaCha8 stream seeded
    /// with `seed`: the same seed gives the same weights everywhere.
    pub fn new(arch: Arch, dataset: &'static DatasetInfo, seed: u64, device: &Device, dtype: DType) -> Result<Self> {
        Self::build(CheckpointMeta::new(arch, dataset), ParamSource::seeded(seed), device, dtype)
    }

    /// Loads a checkpoint. leafwalk metadata is used when present (and must agree with
    /// `options`); otherwise `options.arch` and `options.dataset` are required.
    pub fn load(path: &Path, options: LoadOptions, device: &Device) -> Result<Self> {
        let (tensors, metadata) = checkpoint::read(path, device)?;
        let meta = match CheckpointMeta::from_metadata(path, &metadata)? {
            Some(meta) => {
                if let Some(arch) = options.arch.filter(|a| *a != meta.arch) {
                    return Err(ModelError::checkpoint(path, format!("is a {} checkpoint, not {arch}", meta.arch)));
                }
                if let Some(ds) = options.dataset.filter(|d| d.name != meta.dataset) {
                    return Err(ModelError::checkpoint(
                        path,
                        format!("was trained on {}, not {}", meta.dataset, ds.name),
                    ));
                }
                meta
            }
            None => match (options.arch, options.dataset) {
                (Some(arch), Some(dataset)) => CheckpointMeta::new(arch, dataset),
                _ => {
                    return Err(ModelError::checkpoint(
                        path,
                        "has no leafwalk metadata (a plain PyTorch export?): pass --arch and --dataset",
                    ))
                }
            },
        };
        Self::from_tensors(path, meta, tensors, device)
    }

    /// Builds the architecture named in `meta` from named tensors (e.g. a checkpoint's, minus
    /// any optimizer state the caller removed). `path` only names the source in errors.
    pub fn from_tensors(
        path: &Path,
        meta: CheckpointMeta,
        tensors: HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        let source = ParamSource::loaded(tensors);
        Self::build(meta, source, device, DType::F32).map_err(|e| match e {
            ModelError::Candle(e) => ModelError::checkpoint(path, e.to_string()),
            ModelError::Invalid(msg) => ModelError::checkpoint(path, msg),
            other => other,
        })
    }

    fn build(meta: CheckpointMeta, source: ParamSource, device: &Device, dtype: DType) -> Result<Self> {
        let dataset = dataset_info(&meta.dataset)?;
        let shape = dataset.shape;
        let classes = meta.classes.len();
        let need = |expected: &str| ModelError::InputShape {
            arch: meta.arch.name(),
            dataset: dataset.name,
            expected: expected.to_string(),
            found: format!("{}×{}×{}", shape.channels, shape.height, shape.width),
        };
        if meta.mean.len() != shape.channels || meta.std.len() != shape.channels {
            return Err(ModelError::Invalid(format!(
                "normalisation has {} values, the {} images have {} channels",
                meta.mean.len(),
                dataset.name,
                shape.channels
            )));
        }
        let vb = VarBuilder::from_backend(Box::new(source.clone()), dtype, device.clone());
        let net = match meta.arch {
            Arch::MnistCnn if (shape.channels, shape.height, shape.width) != (1, 28, 28) => {
                return Err(need("1×28×28"))
            }
            Arch::MnistCnn => Net::MnistCnn(MnistCnn::new(classes, vb)?),
            Arch::Mlp => Net::Mlp(Mlp::new(shape.len(), classes, vb)?),
            Arch::CifarVgg11 if (shape.height, shape.width) != (32, 32) => return Err(need("C×32×32")),
            Arch::CifarVgg11 => Net::CifarVgg11(CifarVgg11::new(shape.channels, classes, vb)?),
        };
        if let Some(first) = source.unused().first() {
            return Err(ModelError::Invalid(format!("unexpected tensor '{first}' for architecture {}", meta.arch)));
        }
        let channel_tensor = |v: &[f32]| Tensor::from_slice(v, (1, v.len(), 1, 1), device)?.to_dtype(dtype);
        Ok(Classifier {
            net,
            mean: channel_tensor(&meta.mean)?,
            std: channel_tensor(&meta.std)?,
            meta,
            shape,
            varmap: source.varmap(),
            param_names: source.used(),
            device: device.clone(),
            dtype,
        })
    }

    /// The same model with parameters converted to `dtype` (e.g. f64 for finite differences).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let tensors = self.named_tensors().into_iter().collect();
        let source = ParamSource::loaded(tensors);
        Self::build(self.meta.clone(), source, &self.device, dtype)
    }

    /// The network's input for pixels in `[0, 1]`: `(pixels − mean) / std` per channel, with a
    /// true division (as PyTorch's `Normalize`), so results match it to the last bit.
    pub fn normalise(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        pixels.broadcast_sub(&self.mean)?.broadcast_div(&self.std)
    }

    /// Logits `[B, classes]` of pixels in `[0, 1]`; `train` switches batch norm to batch
    /// statistics (and updates its running averages).
    pub fn logits_t(&self, pixels: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.net.forward_t(&self.normalise(pixels)?, train)
    }

    /// Penultimate features `[B, F]` (the input of the last linear layer) and logits `[B, classes]`
    /// of pixels in `[0, 1]`, in evaluation mode: what feature-space OOD baselines need.
    pub fn features_and_logits(&self, pixels: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let features = self.net.features_t(&self.normalise(pixels)?, false)?;
        let logits = self.net.head().forward(&features)?;
        Ok((features, logits))
    }

    pub fn log_probs_t(&self, pixels: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        candle_nn::ops::log_softmax(&self.logits_t(pixels, train)?, D::Minus1)
    }

    /// Log-probabilities of inputs already in normalised coordinates `(x − mean) / std` (the
    /// paper's), in evaluation mode.
    pub fn log_probs_normalised(&self, normalised: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::log_softmax(&self.net.forward_t(normalised, false)?, D::Minus1)
    }

    pub fn arch(&self) -> Arch {
        self.meta.arch
    }

    pub fn meta(&self) -> &CheckpointMeta {
        &self.meta
    }

    pub fn meta_mut(&mut self) -> &mut CheckpointMeta {
        &mut self.meta
    }

    pub fn input_shape(&self) -> ImageShape {
        self.shape
    }

    pub fn classes(&self) -> usize {
        self.meta.classes.len()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Variables an optimizer should update, in construction order (batch-norm running
    /// statistics are state, not parameters).
    pub fn trainable_vars(&self) -> Vec<(String, Var)> {
        self.vars()
            .into_iter()
            .filter(|(name, _)| !name.ends_with("running_mean") && !name.ends_with("running_var"))
            .collect()
    }

    fn vars(&self) -> Vec<(String, Var)> {
        let data = self.varmap.data();
        // The lock is only poisoned if a panic happened mid-construction, which aborts the build.
        let data = data.lock().unwrap_or_else(|p| p.into_inner());
        self.param_names.iter().filter_map(|n| data.get(n).map(|v| (n.clone(), v.clone()))).collect()
    }

    /// One named tensor (detached), e.g. `conv1.weight`.
    pub fn tensor(&self, name: &str) -> Option<Tensor> {
        let data = self.varmap.data();
        let data = data.lock().unwrap_or_else(|p| p.into_inner());
        data.get(name).map(|v| v.as_detached_tensor())
    }

    /// Every tensor of the model (parameters and batch-norm statistics) in construction order.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.vars().into_iter().map(|(n, v)| (n, v.as_detached_tensor())).collect()
    }

    /// Writes the model with its metadata, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        checkpoint::write(path, &self.named_tensors(), self.meta.to_metadata())
    }
}

impl Module for Classifier {
    fn forward(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        self.log_probs_t(pixels, false)
    }
}
