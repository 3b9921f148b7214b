//! Safetensors files with leafwalk metadata.
//!
//! A checkpoint is a plain safetensors file (never a pickle) whose metadata carries everything
//! needed to rebuild the classifier without side information: `leafwalk.arch` (a built-in's
//! name, or `custom` with the whole description as JSON in `.layers`), `.input`
//! (`[channels, height, width]`), `.dataset` (absent for a model of no registered dataset),
//! `.classes`, `.mean`, `.std` (JSON arrays), `.epoch`, `.step`, `.test_accuracy` and
//! `.format_version`. Version 1 files have no `.input`: their dataset's image shape is it.
//! Other `leafwalk.*` keys (seed, optimizer, mean trace of G, …) are kept as they are. Files are
//! written atomically: a temporary file in the target folder, flushed, then renamed over the
//! target, so a crash leaves either the old file or the new one.
//!
//! Every file leafwalk writes carries `leafwalk.sha256`, a digest of its tensors (see
//! [`tensor_digest`]), checked on every read: a corrupted file is refused instead of loading
//! weights that predict garbage. Files without it (PyTorch exports) load as they are.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::{Arch, Architecture, Description, Dims, ModelError, Result};

/// The metadata version this build writes (`leafwalk.format_version`): newer files are
/// refused; version 1 files, which lack `leafwalk.input`, still load.
pub const FORMAT_VERSION: u32 = 2;
const PREFIX: &str = "leafwalk.";
/// Metadata key of the tensors' digest.
pub const DIGEST_KEY: &str = "leafwalk.sha256";

/// What a checkpoint says about itself.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointMeta {
    /// The network: a built-in's name, or a whole description (`leafwalk.arch`, `.layers`).
    pub arch: Architecture,
    /// The image shape the network takes.
    pub input: Dims,
    /// The registered dataset the model was trained on, if any.
    pub dataset: Option<String>,
    /// Class names in the order of the network's outputs; their count is the number of
    /// classes C.
    pub classes: Vec<String>,
    /// Per-channel mean subtracted from pixels in [0, 1] before the first layer, one value per
    /// input channel (0 for a model that takes raw pixels).
    pub mean: Vec<f32>,
    /// Per-channel standard deviation the centred pixels are divided by, one positive value per
    /// input channel (1 for a model that takes raw pixels).
    pub std: Vec<f32>,
    /// Training epochs completed when the file was written (0 for a fresh or imported model).
    pub epoch: usize,
    /// Optimizer steps completed when the file was written (0 for a fresh or imported model).
    pub step: usize,
    /// Accuracy on the dataset's test split as a fraction in [0, 1], when training measured it.
    pub test_accuracy: Option<f64>,
    /// Any other `leafwalk.*` key, without the prefix.
    pub extra: BTreeMap<String, String>,
}

impl CheckpointMeta {
    /// Metadata for a fresh model of `arch` on a registered dataset.
    pub fn new(arch: Arch, dataset: &leafwalk_data::DatasetInfo) -> Self {
        let shape = dataset.shape;
        CheckpointMeta {
            arch: arch.into(),
            input: Dims::new(shape.channels, shape.height, shape.width),
            dataset: Some(dataset.name.to_string()),
            classes: dataset.classes.iter().map(|c| c.to_string()).collect(),
            mean: dataset.mean.to_vec(),
            std: dataset.std.to_vec(),
            epoch: 0,
            step: 0,
            test_accuracy: None,
            extra: BTreeMap::new(),
        }
    }

    /// Metadata for a model of `arch` tied to no dataset: `input` images, classes named 0…C−1,
    /// no normalisation (mean 0, std 1).
    pub fn without_dataset(arch: Architecture, input: Dims, classes: usize) -> Self {
        CheckpointMeta {
            arch,
            input,
            dataset: None,
            classes: (0..classes).map(|c| c.to_string()).collect(),
            mean: vec![0.0; input.channels],
            std: vec![1.0; input.channels],
            epoch: 0,
            step: 0,
            test_accuracy: None,
            extra: BTreeMap::new(),
        }
    }

    /// The safetensors metadata: every field under its `leafwalk.*` key (lists as JSON, the
    /// accuracy to 6 decimals), `leafwalk.format_version` = [`FORMAT_VERSION`] and the `extra`
    /// keys, as [`CheckpointMeta::from_metadata`] reads them; [`write()`] adds the digest.
    pub fn to_metadata(&self) -> HashMap<String, String> {
        let mut m: HashMap<String, String> =
            self.extra.iter().map(|(k, v)| (format!("{PREFIX}{k}"), v.clone())).collect();
        m.insert(format!("{PREFIX}format_version"), FORMAT_VERSION.to_string());
        m.insert(format!("{PREFIX}arch"), self.arch.name().to_string());
        if let Architecture::Custom(description) = &self.arch {
            // Serialising a description (plain data) cannot fail.
            m.insert(format!("{PREFIX}layers"), serde_json::to_string(description).unwrap_or_default());
        }
        m.insert(format!("{PREFIX}input"), json(&[self.input.channels, self.input.height, self.input.width]));
        if let Some(dataset) = &self.dataset {
            m.insert(format!("{PREFIX}dataset"), dataset.clone());
        }
        m.insert(format!("{PREFIX}classes"), json(&self.classes));
        m.insert(format!("{PREFIX}mean"), json(&self.mean));
        m.insert(format!("{PREFIX}std"), json(&self.std));
        m.insert(format!("{PREFIX}epoch"), self.epoch.to_string());
        m.insert(format!("{PREFIX}step"), self.step.to_string());
        if let Some(acc) = self.test_accuracy {
            m.insert(format!("{PREFIX}test_accuracy"), format!("{acc:.6}"));
        }
        m
    }

    /// Parses leafwalk metadata; `Ok(None)` when the file has none (e.g. a plain PyTorch export).
    pub fn from_metadata(path: &Path, metadata: &HashMap<String, String>) -> Result<Option<Self>> {
        let Some(arch) = metadata.get(&format!("{PREFIX}arch")) else {
            return Ok(None);
        };
        let bad = |key: &str, why: String| ModelError::checkpoint(path, format!("metadata {PREFIX}{key}: {why}"));
        let get = |key: &str| metadata.get(&format!("{PREFIX}{key}")).ok_or_else(|| bad(key, "missing".into()));
        let version: u32 = get("format_version")?.parse().map_err(|e| bad("format_version", format!("{e}")))?;
        if version > FORMAT_VERSION {
            return Err(bad(
                "format_version",
                format!("{version} is newer than this leafwalk understands ({FORMAT_VERSION})"),
            ));
        }
        let arch = match arch.as_str() {
            "custom" => {
                let layers = get("layers")?;
                let description: Description =
                    serde_json::from_str(layers).map_err(|e| bad("layers", format!("not a model description: {e}")))?;
                description.shapes().map_err(|e| bad("layers", e.to_string()))?;
                Architecture::Custom(Box::new(description))
            }
            name => Architecture::Builtin(name.parse().map_err(|e: ModelError| bad("arch", e.to_string()))?),
        };
        let parse_json = |key: &str| -> Result<serde_json::Value> {
            serde_json::from_str(get(key)?).map_err(|e| bad(key, format!("not JSON: {e}")))
        };
        let classes: Vec<String> =
            serde_json::from_value(parse_json("classes")?).map_err(|e| bad("classes", format!("{e}")))?;
        let mean: Vec<f32> = serde_json::from_value(parse_json("mean")?).map_err(|e| bad("mean", format!("{e}")))?;
        let std: Vec<f32> = serde_json::from_value(parse_json("std")?).map_err(|e| bad("std", format!("{e}")))?;
        if std.iter().any(|s| !(s.is_finite() && *s > 0.0)) || mean.len() != std.len() {
            return Err(bad("std", "must be positive and as long as the mean".into()));
        }
        let int = |key: &str| -> Result<usize> { get(key)?.parse().map_err(|e| bad(key, format!("{e}"))) };
        let dataset = metadata.get(&format!("{PREFIX}dataset")).cloned();
        let input = match metadata.get(&format!("{PREFIX}input")) {
            Some(text) => {
                let dims: [usize; 3] = serde_json::from_str(text)
                    .map_err(|e| bad("input", format!("not [channels, height, width]: {e}")))?;
                if dims.contains(&0) {
                    return Err(bad("input", format!("{dims:?} has an empty dimension")));
                }
                Dims::new(dims[0], dims[1], dims[2])
            }
            None => {
                let name = dataset.as_deref().ok_or_else(|| bad("input", "missing, and no dataset names it".into()))?;
                let shape = leafwalk_data::dataset_info(name).map_err(|e| bad("dataset", e.to_string()))?.shape;
                Dims::new(shape.channels, shape.height, shape.width)
            }
        };
        if mean.len() != input.channels {
            return Err(bad("mean", format!("has {} values for {} channels", mean.len(), input.channels)));
        }
        let test_accuracy = match metadata.get(&format!("{PREFIX}test_accuracy")) {
            Some(v) => Some(v.parse().map_err(|e| bad("test_accuracy", format!("{e}")))?),
            None => None,
        };
        const KNOWN: [&str; 11] = [
            "format_version",
            "arch",
            "layers",
            "input",
            "dataset",
            "classes",
            "mean",
            "std",
            "epoch",
            "step",
            "test_accuracy",
        ];
        let extra = metadata
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(PREFIX).map(|k| (k, v)))
            .filter(|(k, _)| !KNOWN.contains(k))
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        Ok(Some(CheckpointMeta {
            arch,
            input,
            dataset,
            classes,
            mean,
            std,
            epoch: int("epoch")?,
            step: int("step")?,
            test_accuracy,
            extra,
        }))
    }
}

fn json<T: serde::Serialize>(value: &[T]) -> String {
    // Serialising a slice of strings or floats cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

/// Reads every tensor of a safetensors file and its metadata, verifying the tensors' digest when
/// the file carries one (the digest key is not returned).
pub fn read(path: &Path, device: &Device) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::checkpoint(path, format!("cannot read: {e}")))?;
    let not_safetensors =
        |e: &dyn std::fmt::Display| ModelError::checkpoint(path, format!("not a safetensors file ({e})"));
    let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| not_safetensors(&e))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| not_safetensors(&e))?;
    let mut metadata = header.metadata().clone().unwrap_or_default();
    // One pass over the views serves the digest and the tensors.
    let views = file.tensors();
    match metadata.remove(DIGEST_KEY) {
        Some(expected) => {
            let named: Vec<(&str, &safetensors::tensor::TensorView)> =
                views.iter().map(|(name, view)| (name.as_str(), view)).collect();
            if tensor_digest(&named) != expected {
                return Err(ModelError::checkpoint(
                    path,
                    "is corrupted: its tensors do not match the sha256 digest in its metadata",
                ));
            }
        }
        None => tracing::debug!("{}: no {DIGEST_KEY} in the metadata; the tensors are not verified", path.display()),
    }
    use candle_core::safetensors::Load;
    let tensors = views
        .into_iter()
        .map(|(name, view)| Ok((name, view.load(device).map_err(|e| not_safetensors(&e))?)))
        .collect::<Result<HashMap<_, _>>>()?;
    Ok((tensors, metadata))
}

/// sha256 over views of tensors in name order, each as its name, dtype, shape and little-endian
/// bytes, every variable-length part preceded by its length — independent of the order and
/// alignment a writer lays the tensors out in, and of the metadata that holds the digest. One
/// tensor's bytes are held at a time (a candle tensor's view copies them).
pub fn tensor_digest<V: safetensors::View>(tensors: &[(&str, V)]) -> String {
    use sha2::{Digest, Sha256};
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&k| tensors[k].0);
    let mut hasher = Sha256::new();
    for k in order {
        let (name, view) = &tensors[k];
        let dtype = format!("{:?}", view.dtype());
        for part in [name.as_bytes(), dtype.as_bytes()] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        hasher.update((view.shape().len() as u64).to_le_bytes());
        for &d in view.shape() {
            hasher.update((d as u64).to_le_bytes());
        }
        let data = view.data();
        hasher.update((data.len() as u64).to_le_bytes());
        hasher.update(&data);
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes tensors and metadata atomically (temporary file in the same folder, then rename).
pub fn write(path: &Path, tensors: &[(String, Tensor)], metadata: HashMap<String, String>) -> Result<()> {
    write_items(path, tensors.iter().map(|(name, t)| (name.as_str(), t)), metadata)
}

/// An f32 array to write as it is (no copy, unlike a candle tensor's view).
pub struct F32Values<'a> {
    /// The array's shape (row-major); its product must be `values.len()`.
    pub shape: Vec<usize>,
    /// The values, borrowed, written as safetensors `F32` (little-endian).
    pub values: &'a [f32],
}

impl safetensors::View for &F32Values<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        if cfg!(target_endian = "little") {
            std::borrow::Cow::Borrowed(bytemuck::cast_slice(self.values))
        } else {
            std::borrow::Cow::Owned(self.values.iter().flat_map(|v| v.to_le_bytes()).collect())
        }
    }

    fn data_len(&self) -> usize {
        self.values.len() * 4
    }
}

/// Writes f32 arrays and metadata atomically, streaming them to the file (a leaf basis of an
/// ImageNet-sized input is hundreds of MB: no second copy in memory).
pub fn write_values(path: &Path, arrays: &[(String, F32Values)], metadata: HashMap<String, String>) -> Result<()> {
    write_items(path, arrays.iter().map(|(name, a)| (name.as_str(), a)), metadata)
}

fn write_items<'a, V: safetensors::View>(
    path: &Path,
    items: impl IntoIterator<Item = (&'a str, V)>,
    mut metadata: HashMap<String, String>,
) -> Result<()> {
    let items: Vec<(&str, V)> = items.into_iter().collect();
    metadata.insert(DIGEST_KEY.to_string(), tensor_digest(&items));
    leafwalk_data::write_path_atomic(path, |temp| {
        safetensors::serialize_to_file(items, Some(metadata), temp).map_err(|e| leafwalk_data::DataError::Invalid {
            path: path.to_path_buf(),
            problem: format!("cannot write the safetensors file: {e}"),
        })
    })?;
    Ok(())
}
