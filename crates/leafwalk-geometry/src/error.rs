/// Errors of the geometry routines; messages are one line.
#[derive(Debug, thiserror::Error)]
pub enum GeometryError {
    #[error("input {index} has a non-finite pixel (NaN or infinity) at position {position}")]
    NonFinite { index: usize, position: usize },
    #[error("{0}")]
    Invalid(String),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Engine(#[from] leafwalk_engine::EngineError),
}

pub type Result<T> = std::result::Result<T, GeometryError>;
