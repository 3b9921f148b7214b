//! Walks on the leaves of the foliation a classifier defines on its input space.
//!
//! This crate owns motion: a **data-leaf step** moves along the projection of (target − x) onto
//! ker G⊥(x), the tangent space of the leaf through x, so the image morphs toward the target
//! through images the model takes for data; a **noise-leaf step** moves along the component of a
//! fixed direction in ker G(x), which changes the image without changing the prediction to first
//! order.
//!
//! Walks live, as in Grementieri & Fioresi's code, in the model's *normalised* coordinates
//! (x − μ)/σ: the state is an f32 image in those coordinates, each step adds a unit
//! displacement times the step size (0.1 in the paper) in f64, rounds to f32 and clamps every
//! value to the image of [0, 1] ((0 − μ)/σ … (1 − μ)/σ per channel). Keeping the state there,
//! rather than in pixels, avoids re-normalising at every step, whose one-ulp changes flip
//! near-tied pooling windows over blank background and let a walk drift from the paper's.
//! [`State::from_pixels`] and [`State::to_pixels`] convert at the edges.

use candle_core::Tensor;
use leafwalk_geometry::{batch_geometry_in, Coordinates, PointGeometry};
use leafwalk_models::Classifier;
use nalgebra::DVector;

pub use leafwalk_geometry::GeometryError as WalkError;
pub type Result<T> = std::result::Result<T, WalkError>;

/// An image in the model's normalised coordinates, CHW, f32 (the paper's precision).
#[derive(Clone, Debug, PartialEq)]
pub struct State(pub Vec<f32>);

impl State {
    /// (p − μ)/σ per channel in f32, exactly as the model normalises pixels.
    pub fn from_pixels(model: &Classifier, pixels: &[f32]) -> Self {
        let (mean, std) = channel_stats(model, pixels.len());
        State(pixels.iter().enumerate().map(|(i, &p)| (p - mean[i]) / std[i]).collect())
    }

    /// Back to pixels in [0, 1].
    pub fn to_pixels(&self, model: &Classifier) -> Vec<f32> {
        let (mean, std) = channel_stats(model, self.0.len());
        self.0.iter().enumerate().map(|(i, &x)| (x * std[i] + mean[i]).clamp(0.0, 1.0)).collect()
    }

    fn as_f64(&self) -> DVector<f64> {
        DVector::from_iterator(self.0.len(), self.0.iter().map(|&v| v as f64))
    }

    /// Euclidean distance in normalised units (the paper's).
    pub fn distance(&self, other: &State) -> f64 {
        (self.as_f64() - other.as_f64()).norm()
    }
}

/// Per-value mean and std (each value's channel), for a CHW image of `len` values.
fn channel_stats(model: &Classifier, len: usize) -> (Vec<f32>, Vec<f32>) {
    let shape = model.input_shape();
    let plane = shape.height * shape.width;
    let meta = model.meta();
    ((0..len).map(|i| meta.mean[i / plane]).collect(), (0..len).map(|i| meta.std[i / plane]).collect())
}

/// The normalised image of [0, 1] for each value: the walk's clamp bounds.
fn clamp_bounds(model: &Classifier, len: usize) -> (Vec<f32>, Vec<f32>) {
    let (mean, std) = channel_stats(model, len);
    let lo = mean.iter().zip(&std).map(|(m, s)| (0.0 - m) / s).collect();
    let hi = mean.iter().zip(&std).map(|(m, s)| (1.0 - m) / s).collect();
    (lo, hi)
}

/// One step's result.
#[derive(Clone, Debug)]
pub struct Step {
    pub next: State,
    /// Dimension of ker G⊥ used by the projection.
    pub rank: usize,
    /// log p at the point the step started from.
    pub log_probs: Vec<f64>,
    /// trace G there, in pixel units (as `leafwalk inspect` reports it).
    pub trace_g: f64,
}

/// trace G in pixel units from a Jacobian in normalised units: J_pixel = J_norm / σ per value.
fn pixel_trace(model: &Classifier, point: &PointGeometry) -> f64 {
    let (_, std) = channel_stats(model, point.dim());
    point
        .jacobian
        .row_iter()
        .zip(point.probs.iter())
        .map(|(row, p)| p * row.iter().zip(&std).map(|(j, &s)| (j / s as f64).powi(2)).sum::<f64>())
        .sum()
}

fn geometry(model: &Classifier, x: &State) -> Result<PointGeometry> {
    let shape = model.input_shape();
    let batch = Tensor::from_slice(&x.0, (1, shape.channels, shape.height, shape.width), model.device())?;
    Ok(batch_geometry_in(model, &batch, Coordinates::Normalised)?.remove(0))
}

/// x + step · d̂ in f64, rounded to f32 and clamped to the image of [0, 1].
fn advance(model: &Classifier, x: &State, displacement: DVector<f64>, step: f64) -> State {
    let norm = displacement.norm();
    let unit = if norm > 0.0 { displacement / norm } else { displacement };
    let (lo, hi) = clamp_bounds(model, x.0.len());
    State(
        x.0.iter()
            .zip(unit.iter())
            .enumerate()
            .map(|(i, (&v, &d))| ((v as f64 + step * d) as f32).clamp(lo[i], hi[i]))
            .collect(),
    )
}

/// One data-leaf step from `x` toward `target`: along P (target − x), unit length times `step`.
pub fn data_leaf_step(model: &Classifier, x: &State, target: &State, step: f64) -> Result<Step> {
    let point = geometry(model, x)?;
    let projector = point.leaf_projector();
    let displacement = projector.onto_leaf(&(target.as_f64() - x.as_f64()));
    Ok(Step {
        next: advance(model, x, displacement, step),
        rank: projector.rank(),
        log_probs: point.log_probs.iter().copied().collect(),
        trace_g: pixel_trace(model, &point),
    })
}

/// Which part of a fixed direction a constant-direction walk follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subspace {
    /// ker G: the noise-leaf walk (the paper's `constant_direction_kernel`); the prediction
    /// stays put to first order while the image changes.
    Kernel,
    /// ker G⊥: along the leaf through the current point.
    Leaf,
}

/// One step from `x` along the `subspace` component of `direction` (normalised coordinates),
/// unit length times `step`.
pub fn direction_step(
    model: &Classifier,
    x: &State,
    direction: &DVector<f64>,
    subspace: Subspace,
    step: f64,
) -> Result<Step> {
    let point = geometry(model, x)?;
    let projector = point.leaf_projector();
    let displacement = match subspace {
        Subspace::Kernel => projector.onto_kernel(direction),
        Subspace::Leaf => projector.onto_leaf(direction),
    };
    Ok(Step {
        next: advance(model, x, displacement, step),
        rank: projector.rank(),
        log_probs: point.log_probs.iter().copied().collect(),
        trace_g: pixel_trace(model, &point),
    })
}

/// `steps` constant-direction steps from `from`; returns every point (start included) and a
/// record per point (distance = from the start).
pub fn direction_walk(
    model: &Classifier,
    from: &State,
    direction: &DVector<f64>,
    subspace: Subspace,
    steps: usize,
    step_size: f64,
    mut on_step: impl FnMut(&PathRecord),
) -> Result<(Vec<State>, Vec<PathRecord>)> {
    let (mut x, mut points, mut records) = (from.clone(), vec![from.clone()], Vec::new());
    for k in 0..steps {
        let step = direction_step(model, &x, direction, subspace, step_size)?;
        let (prediction, log_p) = argmax(&step.log_probs);
        let record = PathRecord {
            step: k,
            distance: x.distance(from),
            prediction,
            probability: log_p.exp(),
            trace_g: Some(step.trace_g),
            step_size,
        };
        on_step(&record);
        records.push(record);
        x = step.next;
        points.push(x.clone());
    }
    let record = record_at(model, &x, steps, x.distance(from))?;
    on_step(&record);
    records.push(record);
    Ok((points, records))
}

/// Settings of a fixed-step (Euler) data-leaf path: the paper's, plus stall detection.
#[derive(Clone, Copy, Debug)]
pub struct PathOptions {
    /// Step length in normalised units (the paper's 0.1).
    pub step: f64,
    /// Stop when the distance to the target is at most this (the paper's 1.0).
    pub threshold: f64,
    pub max_steps: usize,
    /// A walk that has not come `stall_progress` closer than its best distance over this many
    /// steps has stalled: a fixed unit step circles the leaf point nearest the target.
    pub stall_window: usize,
    pub stall_progress: f64,
}

impl Default for PathOptions {
    fn default() -> Self {
        PathOptions { step: 0.1, threshold: 1.0, max_steps: 5000, stall_window: 200, stall_progress: 0.01 }
    }
}

/// One logged point of a path.
#[derive(Clone, Debug)]
pub struct PathRecord {
    pub step: usize,
    /// Distance to the target, normalised units.
    pub distance: f64,
    pub prediction: usize,
    pub probability: f64,
    /// trace G at this point in pixel units (`None` at the final point, where no Jacobian is
    /// taken).
    pub trace_g: Option<f64>,
    /// Length of the step taken from this point, normalised units (0 at the final point).
    pub step_size: f64,
}

/// How a path ended.
#[derive(Clone, Debug)]
pub struct PathOutcome {
    pub reached: bool,
    /// The step at which stall detection stopped the walk, if it did.
    pub stalled_at: Option<usize>,
    pub jacobian_evals: usize,
    /// Every point of the walk, the start included.
    pub points: Vec<State>,
    pub records: Vec<PathRecord>,
}

fn argmax(log_probs: &[f64]) -> (usize, f64) {
    log_probs.iter().copied().enumerate().fold((0, f64::MIN), |best, (i, v)| if v > best.1 { (i, v) } else { best })
}

/// Walks the data leaf from `from` toward `to` with fixed steps until the target is within
/// `threshold`, the walk stalls, or `max_steps` is reached. `on_step` sees each record
/// (progress display).
pub fn euler_path(
    model: &Classifier,
    from: &State,
    to: &State,
    options: &PathOptions,
    mut on_step: impl FnMut(&PathRecord),
) -> Result<PathOutcome> {
    let mut x = from.clone();
    let (mut points, mut records) = (vec![x.clone()], Vec::new());
    let (mut best, mut best_at) = (f64::INFINITY, 0);
    let mut evals = 0;
    loop {
        let distance = x.distance(to);
        let step_index = records.len();
        if distance < best - options.stall_progress {
            (best, best_at) = (distance, step_index);
        }
        let reached = distance <= options.threshold;
        let stalled = step_index - best_at >= options.stall_window;
        if reached || stalled || step_index >= options.max_steps {
            // The last point's prediction costs one forward pass, not a Jacobian.
            let record = record_at(model, &x, step_index, distance)?;
            on_step(&record);
            records.push(record);
            return Ok(PathOutcome {
                reached,
                stalled_at: (stalled && !reached).then_some(step_index),
                jacobian_evals: evals,
                points,
                records,
            });
        }
        let step = data_leaf_step(model, &x, to, options.step)?;
        evals += 1;
        let (prediction, log_p) = argmax(&step.log_probs);
        let record = PathRecord {
            step: step_index,
            distance,
            prediction,
            probability: log_p.exp(),
            trace_g: Some(step.trace_g),
            step_size: options.step,
        };
        on_step(&record);
        records.push(record);
        x = step.next;
        points.push(x.clone());
    }
}

fn record_at(model: &Classifier, x: &State, step: usize, distance: f64) -> Result<PathRecord> {
    let shape = model.input_shape();
    let batch = Tensor::from_slice(&x.0, (1, shape.channels, shape.height, shape.width), model.device())?;
    let log_probs: Vec<f64> =
        model.log_probs_normalised(&batch)?.to_dtype(candle_core::DType::F64)?.flatten_all()?.to_vec1()?;
    let (prediction, log_p) = argmax(&log_probs);
    Ok(PathRecord { step, distance, prediction, probability: log_p.exp(), trace_g: None, step_size: 0.0 })
}
