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
    Io {
        /// The file or directory operated on (for the rename ending an atomic write, the destination).
        path: PathBuf,
        /// The operating system's error, shown after the path.
        error: std::io::Error,
    },

    /// A file exists, but its contents (or the data meant for it) are not
    /// what the format requires.
    #[error("{}: {problem}", path.display())]
    Invalid {
        /// The offending file (for a write, the file that was to be written).
        path: PathBuf,
        /// What is wrong, on one line (e.g. `bad IDX magic ...`, `truncated: ...`).
        problem: String,
    },

    /// A dataset split has not been fetched to the data root.
    #[error(
        "{dataset} {split} data not found: missing {missing}; \
         run scripts/fetch-data.sh or pass --data-root"
    )]
    NotDownloaded {
        /// Registry name of the dataset, e.g. `mnist`.
        dataset: &'static str,
        /// The split that was asked for.
        split: Split,
        /// What is absent, for the message: the first expected file's path under the data root (IDX names end
        /// in `[.gz]`, as either form would do; a lost CIFAR-10 batch reads `batch PATH`).
        missing: String,
    },

    /// A dataset name that is not in the registry.
    #[error("unknown dataset {name:?} (known: {known})")]
    UnknownDataset {
        /// The name as given.
        name: String,
        /// The registry's names, comma-separated, for the message.
        known: String,
    },

    /// An image index past the end of a dataset split.
    #[error("{dataset}:{split} has {len} images, so index {index} is out of range")]
    IndexOutOfRange {
        /// Registry name of the dataset.
        dataset: &'static str,
        /// The split that was indexed.
        split: Split,
        /// The 0-based index asked for; at least `len`.
        index: usize,
        /// Number of images in the split.
        len: usize,
    },

    /// A dataset image was requested at a shape other than the dataset's own.
    #[error("{reference}: dataset images are {found}, but {expected} is needed")]
    ShapeMismatch {
        /// The dataset reference as written, e.g. `mnist:test:17`.
        reference: String,
        /// The dataset's own image shape.
        found: ImageShape,
        /// The shape the caller (usually the model) needs.
        expected: ImageShape,
    },

    /// A textual value (split, dataset reference, image source, ...) that
    /// does not parse.
    #[error("invalid {what} {text:?}: {problem}")]
    Parse {
        /// What kind of value was being parsed (`split`, `dataset reference`, `image`, `image set`, ...).
        what: &'static str,
        /// The text as given.
        text: String,
        /// Why it does not parse, usually with the expected form.
        problem: String,
    },

    /// Building a tensor failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),

    /// The Hugging Face hub loader of candle-datasets failed.
    #[cfg(feature = "hub")]
    #[error("{dataset}: download from the Hugging Face hub failed: {problem}")]
    Hub {
        /// Registry name of the dataset being downloaded.
        dataset: &'static str,
        /// The loader's error, or why its output could not be used.
        problem: String,
    },
}

impl DataError {
    /// A [`DataError::Io`] for `path`: the constructor to use in `map_err` on file operations, since a
    /// `std::io::Error` alone does not say which file failed.
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
