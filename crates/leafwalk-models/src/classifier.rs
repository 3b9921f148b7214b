use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};
use leafwalk_data::{DatasetInfo, ImageShape};

use crate::checkpoint::{self, CheckpointMeta};
use crate::description::{Description, Dims, ParamRole};
use crate::network::GraphNet;
use crate::params::ParamSource;
use crate::{Arch, Architecture, ModelError, Result};

/// Per-channel input normalisation `(pixel − mean) / std`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Normalisation {
    /// Mean subtracted from pixels in [0, 1]: one value per input channel, or one for all.
    pub mean: Vec<f32>,
    /// Standard deviation the centred pixels are divided by: one per channel, or one for all;
    /// each must be positive and finite ([`Normalisation::for_channels`] errs otherwise).
    pub std: Vec<f32>,
}

impl Normalisation {
    /// Values for `channels` channels: one value applies to every channel.
    pub fn for_channels(&self, channels: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let expand = |what: &'static str, v: &[f32]| -> Result<Vec<f32>> {
            match v.len() {
                1 => Ok(vec![v[0]; channels]),
                n if n == channels => Ok(v.to_vec()),
                values => Err(ModelError::NormalisationChannels { what, values, channels }),
            }
        };
        let (mean, std) = (expand("--mean", &self.mean)?, expand("--std", &self.std)?);
        if let Some(s) = std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(ModelError::BadStd(*s));
        }
        if let Some(m) = mean.iter().find(|m| !m.is_finite()) {
            return Err(ModelError::BadMean(*m));
        }
        Ok((mean, std))
    }
}

/// What `Classifier::load` should assume when a file lacks leafwalk metadata (a plain PyTorch
/// `state_dict`, an ONNX export), or insist on when it has it.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// A built-in architecture for a plain `state_dict`.
    pub arch: Option<Arch>,
    /// A layer description for a plain `state_dict` of any other network (`--layers`).
    pub layers: Option<Description>,
    /// The registered dataset the model was trained on: a built-in architecture takes its input
    /// shape, classes and normalisation from it (default: the architecture's usual one), a layer
    /// description must match its shape and class count, and a file with leafwalk metadata must
    /// name the same dataset.
    pub dataset: Option<&'static DatasetInfo>,
    /// Class names, in the order of the network's outputs (default: the dataset's, else 0 …
    /// C−1).
    pub classes: Option<Vec<String>>,
    /// Overrides the normalisation for a file without leafwalk metadata: a built-in
    /// architecture's default is its dataset's, any other network's none (pixels in [0, 1]).
    pub normalisation: Option<Normalisation>,
}

impl LoadOptions {
    /// A built-in architecture on a registered dataset, the dataset's normalisation.
    pub fn new(arch: Arch, dataset: &'static DatasetInfo) -> Self {
        LoadOptions { arch: Some(arch), dataset: Some(dataset), ..Default::default() }
    }

    /// A built-in architecture whose network takes pixels in [0, 1] (`--mean 0 --std 1`).
    pub fn pixels(arch: Arch) -> Self {
        let normalisation = Some(Normalisation { mean: vec![0.0], std: vec![1.0] });
        LoadOptions { arch: Some(arch), normalisation, ..Default::default() }
    }
}

/// A network plus its input normalisation: maps pixels in `[0, 1]`, shape `[B, C, H, W]`, to
/// log-probabilities `[B, classes]`. `Module::forward` is evaluation mode (batch norm uses its
/// running statistics), the mode every piece of geometry uses.
pub struct Classifier {
    net: GraphNet,
    meta: CheckpointMeta,
    mean: Tensor,
    std: Tensor,
    varmap: VarMap,
    param_names: Vec<String>,
    device: Device,
    dtype: DType,
}

impl Classifier {
    /// A fresh model of `arch` for `dataset`, initialised as PyTorch does from a ChaCha8 stream
    /// seeded with `seed`: the same seed gives the same weights everywhere.
    pub fn new(arch: Arch, dataset: &'static DatasetInfo, seed: u64, device: &Device, dtype: DType) -> Result<Self> {
        Self::fresh(CheckpointMeta::new(arch, dataset), seed, device, dtype)
    }

    /// A fresh model described by `meta` (see [`Classifier::new`]).
    pub fn fresh(meta: CheckpointMeta, seed: u64, device: &Device, dtype: DType) -> Result<Self> {
        Self::build(meta, ParamSource::seeded(seed), device, dtype)
    }

    /// Loads a checkpoint. leafwalk metadata is used when present (and must agree with
    /// `options`); otherwise `options.arch` or `options.layers` names the network, as in
    /// [`Classifier::from_foreign`].
    pub fn load(path: &Path, options: LoadOptions, device: &Device) -> Result<Self> {
        let (tensors, metadata) = checkpoint::read(path, device)?;
        let Some(meta) = CheckpointMeta::from_metadata(path, &metadata)? else {
            let architecture = match (options.arch, &options.layers) {
                (Some(arch), None) => Architecture::Builtin(arch),
                (None, Some(layers)) => Architecture::Custom(Box::new(layers.clone())),
                (Some(_), Some(_)) => return Err(ModelError::checkpoint(path, "takes --arch or --layers, not both")),
                (None, None) => {
                    return Err(ModelError::checkpoint(
                        path,
                        "has no leafwalk metadata (a plain PyTorch state_dict?): pass --arch NAME or --layers net.json",
                    ))
                }
            };
            return Self::from_foreign(path, architecture, tensors, &options, device);
        };
        let refuse =
            |flag: &str, what: String| ModelError::checkpoint(path, format!("carries its {what}; drop {flag}"));
        if let Some(arch) = options.arch.filter(|a| Architecture::Builtin(*a) != meta.arch) {
            return Err(ModelError::checkpoint(path, format!("is a {} checkpoint, not {arch}", meta.arch)));
        }
        if options.layers.is_some() {
            return Err(refuse("--layers", format!("architecture ({})", meta.arch)));
        }
        if let Some(ds) = options.dataset.filter(|d| Some(d.name) != meta.dataset.as_deref()) {
            let trained = meta.dataset.as_deref().unwrap_or("no registered dataset");
            return Err(ModelError::checkpoint(path, format!("was trained on {trained}, not {}", ds.name)));
        }
        if options.classes.is_some() {
            return Err(refuse("--classes", format!("class names ({})", meta.classes.join(","))));
        }
        if options.normalisation.is_some() {
            return Err(refuse("--mean/--std", format!("normalisation (mean {:?}, std {:?})", meta.mean, meta.std)));
        }
        Self::from_tensors(path, meta, tensors, device)
    }

    /// A network from a file without leafwalk metadata — a plain `state_dict`, an ONNX export —
    /// with what `options` says of it: a built-in architecture's input, classes and
    /// normalisation are its dataset's (`options.dataset` or its usual one); any other
    /// network's input and class count are its description's, its classes numbered 0 … C−1
    /// or named by the dataset or `options.classes`, and it takes pixels in [0, 1] unless
    /// `options.normalisation` says otherwise. `path` names the source in errors.
    pub fn from_foreign(
        path: &Path,
        architecture: Architecture,
        tensors: HashMap<String, Tensor>,
        options: &LoadOptions,
        device: &Device,
    ) -> Result<Self> {
        let meta = Self::assumed_meta(path, architecture, options)?;
        Self::from_tensors(path, meta, tensors, device)
    }

    /// Metadata for a file without leafwalk's, from the command line's options.
    fn assumed_meta(path: &Path, architecture: Architecture, options: &LoadOptions) -> Result<CheckpointMeta> {
        let invalid = |msg: String| ModelError::checkpoint(path, msg);
        let mut meta = match architecture {
            Architecture::Builtin(arch) => {
                let dataset = match options.dataset {
                    Some(d) => Some(d),
                    None => arch.default_dataset().map(leafwalk_data::dataset_info).transpose()?,
                };
                match dataset {
                    Some(d) => CheckpointMeta::new(arch, d),
                    None => {
                        let (input, classes) = arch.default_input_and_classes();
                        CheckpointMeta::without_dataset(arch.into(), input, classes)
                    }
                }
            }
            Architecture::Custom(description) => {
                let (input, classes) = (description.input, description.classes().map_err(|e| invalid(e.to_string()))?);
                let mut meta = CheckpointMeta::without_dataset(Architecture::Custom(description), input, classes);
                if let Some(d) = options.dataset {
                    let shape = Dims::new(d.shape.channels, d.shape.height, d.shape.width);
                    if shape != input || d.classes.len() != classes {
                        return Err(invalid(format!(
                            "takes {input} images into {classes} classes; {} has {shape} images in {} classes",
                            d.name,
                            d.classes.len()
                        )));
                    }
                    meta.dataset = Some(d.name.to_string());
                    meta.classes = d.classes.iter().map(|c| c.to_string()).collect();
                }
                meta
            }
        };
        if let Some(classes) = &options.classes {
            if classes.len() != meta.classes.len() {
                return Err(invalid(format!("has {} classes; --classes names {}", meta.classes.len(), classes.len())));
            }
            meta.classes = classes.clone();
        }
        if let Some(normalisation) = &options.normalisation {
            (meta.mean, meta.std) = normalisation.for_channels(meta.input.channels)?;
        }
        Ok(meta)
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
            named @ (ModelError::Checkpoint { .. } | ModelError::InCheckpoint { .. } | ModelError::Data(_)) => named,
            other => ModelError::InCheckpoint { path: path.to_path_buf(), source: Box::new(other) },
        })
    }

    fn build(meta: CheckpointMeta, source: ParamSource, device: &Device, dtype: DType) -> Result<Self> {
        let channels = meta.input.channels;
        if meta.mean.len() != channels || meta.std.len() != channels {
            let values = if meta.mean.len() != channels { meta.mean.len() } else { meta.std.len() };
            return Err(ModelError::NormalisationChannels { what: "the normalisation", values, channels });
        }
        let description = meta.arch.description(meta.input, meta.classes.len()).map_err(|source| {
            ModelError::Description { arch: meta.arch.to_string(), input: meta.input.to_string(), source }
        })?;
        let vb = VarBuilder::from_backend(Box::new(source.clone()), dtype, device.clone());
        let varmap = source.varmap();
        let net = GraphNet::new(description, vb, &varmap)?;
        if let Some(first) = source.unused().first() {
            return Err(ModelError::UnexpectedTensor { name: first.clone(), arch: meta.arch.to_string() });
        }
        let channel_tensor = |v: &[f32]| Tensor::from_slice(v, (1, v.len(), 1, 1), device)?.to_dtype(dtype);
        Ok(Classifier {
            net,
            mean: channel_tensor(&meta.mean)?,
            std: channel_tensor(&meta.std)?,
            meta,
            varmap,
            param_names: source.used(),
            device: device.clone(),
            dtype,
        })
    }

    /// The same model with parameters converted to `dtype` (e.g. f64 for finite differences).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        self.converted(&self.device, dtype)
    }

    /// The same model on `device` (e.g. to compare a GPU with the CPU).
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        self.converted(device, self.dtype)
    }

    fn converted(&self, device: &Device, dtype: DType) -> Result<Self> {
        let tensors = self.named_tensors().into_iter().collect();
        Self::build(self.meta.clone(), ParamSource::loaded(tensors), device, dtype)
    }

    /// The graph of layers this model computes.
    pub fn description(&self) -> &Description {
        self.net.description()
    }

    /// The network's input for pixels in `[0, 1]`: `(pixels − mean) / std` per channel, with a
    /// true division (as PyTorch's `Normalize`), so results match it to the last bit.
    pub fn normalise(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        pixels.broadcast_sub(&self.mean)?.broadcast_div(&self.std)
    }

    /// Logits `[B, classes]` of pixels in `[0, 1]`; `train` switches batch norm to batch
    /// statistics (and updates its running averages).
    pub fn logits_t(&self, pixels: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        Ok(self.net.run(&self.normalise(pixels)?, train, None)?.0)
    }

    /// Penultimate features `[B, F]` (the input of the last layer when it is linear, else the
    /// logits themselves) and logits `[B, classes]` of pixels in `[0, 1]`, in evaluation mode:
    /// what feature-space OOD baselines need.
    pub fn features_and_logits(&self, pixels: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let keep = self.description().feature_value();
        let (logits, features) = self.net.run(&self.normalise(pixels)?, false, keep)?;
        Ok((features.unwrap_or_else(|| logits.clone()), logits))
    }

    /// Every value of an evaluation-mode pass over normalised inputs (`[0]` is the input, value
    /// `i + 1` node `i`'s output, up to the logits), as `[B, C, H, W]` tensors.
    pub fn node_values(&self, normalised: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        self.net.values(normalised)
    }

    /// Log-probabilities `[B, classes]` (natural log-softmax of the logits) of pixels
    /// `[B, C, H, W]` in `[0, 1]`; `train` as in [`Classifier::logits_t`].
    pub fn log_probs_t(&self, pixels: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        candle_nn::ops::log_softmax(&self.logits_t(pixels, train)?, D::Minus1)
    }

    /// Log-probabilities of inputs already in normalised coordinates `(x − mean) / std` (the
    /// paper's), in evaluation mode.
    pub fn log_probs_normalised(&self, normalised: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::log_softmax(&self.net.run(normalised, false, None)?.0, D::Minus1)
    }

    /// The architecture: a built-in, or the description carried in the checkpoint.
    pub fn arch(&self) -> &Architecture {
        &self.meta.arch
    }

    /// The checkpoint metadata: input shape, classes, normalisation, training progress.
    pub fn meta(&self) -> &CheckpointMeta {
        &self.meta
    }

    /// The metadata to change before [`Classifier::save`], e.g. epochs, steps, test accuracy or
    /// `extra` keys. Its input, classes, mean and std describe the network already built: leave
    /// them as they are.
    pub fn meta_mut(&mut self) -> &mut CheckpointMeta {
        &mut self.meta
    }

    /// The shape of one input image, `[C, H, W]`.
    pub fn input_shape(&self) -> ImageShape {
        let d = self.meta.input;
        ImageShape { channels: d.channels, height: d.height, width: d.width }
    }

    /// The number of classes C, the length of the logits.
    pub fn classes(&self) -> usize {
        self.meta.classes.len()
    }

    /// The device the parameters live on; inputs must be on it too.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The parameters' dtype (f32 unless converted by [`Classifier::to_dtype`]); inputs must have
    /// it too.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Variables an optimizer should update, in construction order (batch-norm running
    /// statistics are state, not parameters).
    pub fn trainable_vars(&self) -> Vec<(String, Var)> {
        let running: Vec<String> = self
            .description()
            .parameters()
            .into_iter()
            .filter(|p| p.role == ParamRole::RunningStatistic)
            .map(|p| p.name)
            .collect();
        self.vars().into_iter().filter(|(name, _)| !running.contains(name)).collect()
    }

    /// Every variable (parameters and running statistics) in construction order.
    pub fn vars(&self) -> Vec<(String, Var)> {
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
