use std::path::PathBuf;

/// Errors of model construction and checkpoint I/O; every message is one line, naming the file
/// where one is involved.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A checkpoint file that cannot be read as one (format, metadata, digest).
    #[error("{}: {msg}", path.display())]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// A checkpoint that reads but does not build a model; the cause is its source (printed
    /// after it by an error chain, as the CLI's and the Python package's messages do).
    #[error("{}", path.display())]
    InCheckpoint {
        /// The file.
        path: PathBuf,
        /// Why its model cannot be built.
        #[source]
        source: Box<ModelError>,
    },
    /// An architecture name leafwalk does not know.
    #[error("unknown architecture '{0}' (known: {known})", known = crate::Arch::ALL.map(|a| a.name()).join(", "))]
    UnknownArch(String),
    /// Normalisation values whose count is neither 1 nor the model's channel count.
    #[error("{what} has {values} values, the model has {channels} channels")]
    NormalisationChannels {
        /// Where they came from: `--mean`, `--std` or the checkpoint's normalisation.
        what: &'static str,
        /// How many values were given.
        values: usize,
        /// The model's input channels.
        channels: usize,
    },
    /// A standard deviation that is not positive and finite.
    #[error("--std must be positive and finite, got {0}")]
    BadStd(f32),
    /// A mean that is not finite.
    #[error("--mean must be finite, got {0}")]
    BadMean(f32),
    /// An architecture that cannot be built for this input size or class count.
    #[error("{arch} on {input} images")]
    Description {
        /// The architecture's name.
        arch: String,
        /// The input shape asked for (C×H×W).
        input: String,
        /// What does not fit.
        #[source]
        source: crate::DescriptionError,
    },
    /// A tensor the architecture has no parameter for (a file of another model).
    #[error("unexpected tensor '{name}' for architecture {arch}")]
    UnexpectedTensor {
        /// The tensor's name in the file.
        name: String,
        /// The architecture it was loaded as.
        arch: String,
    },
    /// A layer file (`--layers`) that does not describe a network leafwalk runs; the layer at
    /// fault is the source.
    #[error("{}", path.display())]
    LayerFile {
        /// The file.
        path: PathBuf,
        /// The layer at fault and why.
        #[source]
        source: crate::DescriptionError,
    },
    /// An unknown `--device` value.
    #[error("unknown device '{0}' (expected cpu, cuda or cuda:N)")]
    UnknownDevice(String),
    /// `--device cuda` in a build without the `cuda` feature.
    #[error(
        "--device cuda: this leafwalk was built without CUDA; rebuild with `cargo build --release --features cuda` \
         (or scripts/build-cuda.sh)"
    )]
    CudaNotBuilt,
    /// `--device cuda:N` where no GPU or driver answers.
    #[error("--device {device}: no usable CUDA GPU ({reason})")]
    CudaUnavailable {
        /// The device asked for.
        device: String,
        /// The driver's message, on one line.
        reason: String,
    },
    /// A file could not be read or written.
    #[error(transparent)]
    Data(#[from] leafwalk_data::DataError),
    /// A tensor operation failed.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    pub(crate) fn checkpoint(path: &std::path::Path, msg: impl Into<String>) -> Self {
        ModelError::Checkpoint { path: path.to_path_buf(), msg: msg.into() }
    }
}

/// The models crate's result.
pub type Result<T> = std::result::Result<T, ModelError>;
