/// Errors of the geometry routines; messages are one line. Each refusal a caller may want to
/// branch on (a bad shape, a size limit, a leaf too thin for the question) has its own variant.
#[derive(Debug, thiserror::Error)]
pub enum GeometryError {
    /// An input image holds NaN or ±∞; `position` is the flat index of the first such value.
    #[error("input {index} has a non-finite pixel (NaN or infinity) at position {position}")]
    NonFinite {
        /// The image's index in the batch.
        index: usize,
        /// The flat index of its first non-finite value.
        position: usize,
    },
    /// Log-probabilities and Jacobian entries that do not fit `classes` classes.
    #[error("{log_probs} log-probabilities and {jacobian} Jacobian entries for {classes} classes")]
    InconsistentShapes {
        /// How many log-probabilities were given.
        log_probs: usize,
        /// How many Jacobian entries were given (C·n expected).
        jacobian: usize,
        /// The number of classes C.
        classes: usize,
    },
    /// The dataset Fisher was asked for no points or for more than it takes.
    #[error("the dataset Fisher takes 1 to {max} points, got {got}")]
    FisherPointCount {
        /// Points given.
        got: usize,
        /// The most it takes ([`crate::DATASET_FISHER_MAX_POINTS`]).
        max: usize,
    },
    /// The dataset Fisher's per-class gradients would not fit the memory limit.
    #[error(
        "the dataset Fisher of {points} points needs {:.1} GiB of gradients (limit {:.0} GiB): use fewer points",
        *bytes as f64 / GIB,
        *limit as f64 / GIB
    )]
    FisherTooLarge {
        /// Points given.
        points: usize,
        /// Bytes their gradients take.
        bytes: usize,
        /// The limit in bytes ([`crate::DATASET_FISHER_MAX_BYTES`]).
        limit: usize,
    },
    /// A dense n×n G was asked for an input larger than the caller's limit.
    #[error("refusing to form a dense {n}×{n} G (limit n ≤ {max_dim})")]
    DenseTooLarge {
        /// The input dimension n.
        n: usize,
        /// The caller's limit on n.
        max_dim: usize,
    },
    /// A routine that studies one point was given another shape.
    #[error("{routine} takes one point [1, C, H, W], not {shape:?}")]
    NotOnePoint {
        /// What was asked (e.g. "integrability").
        routine: &'static str,
        /// The shape given.
        shape: Vec<usize>,
    },
    /// Integrability settings that measure nothing: no pairs, or a step that is not positive.
    #[error("integrability needs at least one pair and positive finite steps (got {pairs} pairs, steps {steps:?})")]
    IntegrabilitySettings {
        /// Pairs of leaf directions asked for.
        pairs: usize,
        /// The finite-difference steps given.
        steps: Vec<f64>,
    },
    /// The leaf at the point has fewer than two directions, so no bracket of two exists.
    #[error("the leaf has {rank} direction(s) here; a bracket needs two")]
    LeafTooThin {
        /// The leaf's dimension at the point (rank of G).
        rank: usize,
    },
    /// The model's output has no gradient with respect to its input (a constant model).
    #[error("the model output does not depend on its input")]
    InputNotUsed,
    /// A tensor operation failed.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// The CPU engine refused or failed.
    #[error(transparent)]
    Engine(#[from] leafwalk_engine::EngineError),
}

const GIB: f64 = (1u64 << 30) as f64;

/// The geometry crate's result.
pub type Result<T> = std::result::Result<T, GeometryError>;
