//! ONNX classifiers as PyTorch exports them, read into a leafwalk [`Description`] and its
//! weights, so that every command runs a user's own network through the same engine as the
//! built-in ones.
//!
//! Both of PyTorch's exporters are understood: the TorchScript one (`dynamo=False`, opsets
//! 13–17: batch norm folded into convolutions, `Flatten`, `GlobalAveragePool`, `Gemm`) and the
//! dynamo one (`dynamo=True`, opset 18 and later: `ReduceMean` + `Reshape`, GELU spelt as
//! `Div`/`Erf`/`Add`/`Mul`, Softplus with `Greater`/`Where`, bias-free linear layers as
//! `MatMul`, weights in an external data file beside the graph). Shape arithmetic (`Shape`,
//! `Gather`, `Concat`, …) is folded into constants with the input's dimensions; the batch axis
//! may be symbolic. Anything else is refused with one line naming the node, its operation and
//! the attribute at fault — nothing is guessed. The protobuf messages are declared with prost's
//! derive ([`proto`]), so the build needs no `protoc`.
//!
//! Reading is bounded: the file may be at most [`MAX_FILE_BYTES`], a tensor at most
//! [`MAX_TENSOR_VALUES`] values, and every allocation is sized by bytes actually present in the
//! file (a corrupt length or dimension is an error, never an allocation), so a model file
//! costs at most a few times its own size in memory while it is read.
#![warn(missing_docs)]

mod graph;
mod patterns;
pub mod proto;
mod tensor;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use leafwalk_models::{Architecture, Classifier, Description, LoadOptions, ModelError};
use prost::Message;

/// The largest ONNX file read (protobuf's own limit).
pub const MAX_FILE_BYTES: u64 = 2 << 30;

/// The most values one tensor may declare (a 4-GiB float tensor).
pub const MAX_TENSOR_VALUES: usize = 1 << 30;

/// What is wrong with an ONNX file; every message is one line naming the file.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The file as a whole is at fault: it cannot be read, is larger than [`MAX_FILE_BYTES`], is not an
    /// ONNX model or imports no ONNX operator set, an initializer (or its external data) cannot be read, or
    /// its inputs and outputs are not one image batch `[N, C, H, W]` in and one class-score vector out.
    #[error("{}: {}", path.display(), printable(problem))]
    File {
        /// The model file, as given to [`read`] or [`from_bytes`].
        path: PathBuf,
        /// What is wrong, on one line.
        problem: String,
    },
    /// One node cannot be translated: an operator, operator set or attribute value leafwalk does not
    /// read, an input that is not where it must be (computed or constant), or shapes that do not fit.
    #[error("{}: node '{}' ({}): {}", path.display(), printable(node), printable(op), printable(problem))]
    Node {
        /// The model file, as given to [`read`] or [`from_bytes`].
        path: PathBuf,
        /// The node's name in the file, or `#POSITION` (0-based, in file order) for an unnamed node.
        node: String,
        /// The node's ONNX operator (`op_type`, e.g. `Conv`).
        op: String,
        /// What is wrong with it, on one line.
        problem: String,
    },
}

/// Names and strings come from the file and may hold anything: control characters (a newline
/// in a tensor name, say) are shown escaped, so an error stays one readable line.
fn printable(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// A network read from ONNX: its description (nodes named after the exporter's parameter names
/// where it kept them, e.g. `stem.0`, else after its node names), the weights under the
/// description's parameter names, on the CPU, and who wrote the file.
#[derive(Debug)]
pub struct Imported {
    /// The network as a leafwalk description: one image `[C, H, W]` (no batch axis) in, the file's one output
    /// out (class scores `[classes]`, or their (log-)softmax where the export ends in one); nodes the output
    /// does not depend on are dropped.
    pub description: Description,
    /// Every parameter of `description`, keyed by its name (`NODE.weight`, `NODE.bias`, `NODE.running_mean`,
    /// …), as `f32` on the CPU in the shape [`Description::parameters`] gives it (batch norms the exporter
    /// folded into convolutions arrive folded).
    pub tensors: HashMap<String, Tensor>,
    /// The file's `producer_name`, e.g. `pytorch`; empty when the file does not say.
    pub producer: String,
}

/// Why a model file could not be opened by [`open_model`]; every message is one line naming
/// the file.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The ONNX file cannot be read or translated.
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    /// The checkpoint or state_dict cannot be read, or its network not built.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// An architecture or layer description was given for an ONNX file, which carries its own.
    #[error("{}: an ONNX file carries its own network; give no architecture or layer description", path.display())]
    NetworkGiven {
        /// The ONNX file.
        path: PathBuf,
    },
}

/// Any model file leafwalk reads, as one [`Classifier`]: an ONNX export (`.onnx`, its network
/// and weights from the file; `options` may give the dataset, classes and normalisation), else a
/// safetensors file — a leafwalk checkpoint or a plain PyTorch `state_dict` described by
/// `options` (built-in architecture or layer description).
pub fn open_model(path: &Path, options: LoadOptions, device: &Device) -> Result<Classifier, OpenError> {
    if !path.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx")) {
        return Ok(Classifier::load(path, options, device)?);
    }
    if options.arch.is_some() || options.layers.is_some() {
        return Err(OpenError::NetworkGiven { path: path.to_path_buf() });
    }
    let imported = read(path)?;
    let architecture = Architecture::Custom(Box::new(imported.description));
    Ok(Classifier::from_foreign(path, architecture, imported.tensors, &options, device)?)
}

/// Reads the ONNX file at `path` (external data from its folder).
pub fn read(path: &Path) -> Result<Imported, OnnxError> {
    let file_error = |problem: String| OnnxError::File { path: path.to_path_buf(), problem };
    let size = std::fs::metadata(path).map_err(|e| file_error(e.to_string()))?.len();
    if size > MAX_FILE_BYTES {
        return Err(file_error(format!("is {size} bytes, more than an ONNX file can hold ({MAX_FILE_BYTES})")));
    }
    let bytes = std::fs::read(path).map_err(|e| file_error(e.to_string()))?;
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    from_bytes(&bytes, folder, path)
}

/// Reads an ONNX model from `bytes`; external data is looked up in `folder`, and `path` names
/// the model in messages.
pub fn from_bytes(bytes: &[u8], folder: &Path, path: &Path) -> Result<Imported, OnnxError> {
    let file_error = |problem: String| OnnxError::File { path: path.to_path_buf(), problem };
    let model = proto::ModelProto::decode(bytes).map_err(|e| file_error(format!("not an ONNX model ({e})")))?;
    let graph = model.graph.as_ref().ok_or_else(|| file_error("not an ONNX model (it holds no graph)".into()))?;
    let opset = model
        .opset_import
        .iter()
        .filter(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .max()
        .ok_or_else(|| file_error("imports no ONNX operator set".into()))?;
    let translated = graph::translate(graph, opset, folder).map_err(|e| e.at(path))?;
    let tensors = translated
        .tensors
        .into_iter()
        .map(|(name, dims, values)| {
            let tensor =
                Tensor::from_vec(values, dims, &Device::Cpu).map_err(|e| file_error(format!("{name}: {e}")))?;
            Ok((name, tensor))
        })
        .collect::<Result<_, OnnxError>>()?;
    Ok(Imported { description: translated.description, tensors, producer: model.producer_name })
}
