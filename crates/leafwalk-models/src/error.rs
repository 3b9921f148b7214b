use std::path::PathBuf;

/// Errors of model construction and checkpoint I/O; every message is one line naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },
    #[error("unknown architecture '{0}' (known: {known})", known = crate::Arch::ALL.map(|a| a.name()).join(", "))]
    UnknownArch(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Data(#[from] leafwalk_data::DataError),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    pub(crate) fn checkpoint(path: &std::path::Path, msg: impl Into<String>) -> Self {
        ModelError::Checkpoint { path: path.to_path_buf(), msg: msg.into() }
    }
}

pub type Result<T> = std::result::Result<T, ModelError>;
