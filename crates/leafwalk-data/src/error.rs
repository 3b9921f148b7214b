//! The crate's one error type.
//!
//! Every message is a single line that starts with the thing at fault (a file,
//! a dataset reference, a command-line value) and then says what is wrong with
//! it, so a CLI can print it as-is. Underlying causes are folded into the
//! message rather than chained as `source()`, because a chain printed with
//! `{:#}` would repeat them.

use std::path::PathBuf;

use crate::dataset::Split;
use crate::registry::ImageShape;

/// Results of this crate.
pub type Result<T> = std::result::Result<T, DataError>;

/// Everything that can go wrong while reading datasets and images.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Opening, reading, writing or renaming a file failed.
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },

    /// A file exists, but its contents (or the data meant for it) are not
    /// what the format requires.
    #[error("{}: {problem}", path.display())]
    Invalid { path: PathBuf, problem: String },

    /// A dataset split has not been fetched to the data root.
    #[error(
        "{dataset} {split} data not found: missing {missing}; \
         run scripts/fetch-data.sh or pass --data-root"
    )]
    NotDownloaded { dataset: &'static str, split: Split, missing: String },

    /// A dataset name that is not in the registry.
    #[error("unknown dataset {name:?} (known: {known})")]
    UnknownDataset { name: String, known: String },

    /// An image index past the end of a dataset split.
    #[error("{dataset}:{split} has {len} images, so index {index} is out of range")]
    IndexOutOfRange { dataset: &'static str, split: Split, index: usize, len: usize },

    /// A dataset image was requested at a shape other than the dataset's own.
    #[error("{reference}: dataset images are {found}, but {expected} is needed")]
    ShapeMismatch { reference: String, found: ImageShape, expected: ImageShape },

    /// A textual value (split, dataset reference, image source, ...) that
    /// does not parse.
    #[error("invalid {what} {text:?}: {problem}")]
    Parse { what: &'static str, text: String, problem: String },

    /// Building a tensor failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),

    /// The Hugging Face hub loader of candle-datasets failed.
    #[cfg(feature = "hub")]
    #[error("{dataset}: download from the Hugging Face hub failed: {problem}")]
    Hub { dataset: &'static str, problem: String },
}

impl DataError {
    pub fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        DataError::Io { path: path.into(), error }
    }

    /// The problem is folded onto one line: decoders' messages (JPEG's among them) may end in
    /// or contain newlines, and every error leafwalk reports is one line.
    pub(crate) fn invalid(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        let problem = problem.into().split_whitespace().collect::<Vec<_>>().join(" ");
        DataError::Invalid { path: path.into(), problem }
    }
}
