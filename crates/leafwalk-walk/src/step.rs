//! Single steps and constant-direction walks.

use candle_core::Tensor;
use leafwalk_geometry::{argmax, batch_geometry_in, Coordinates, PointGeometry};
use leafwalk_models::Classifier;
use nalgebra::DVector;

use crate::path::{record_at, PathRecord};
use crate::{channel_stats, clamp_bounds, Result, State, WalkError};

/// One step's result.
#[derive(Clone, Debug)]
pub struct Step {
    /// The point after the step, normalised coordinates, clamped to the image of [0, 1].
    pub next: State,
    /// Dimension of ker G⊥ used by the projection.
    pub rank: usize,
    /// log p at the point the step started from.
    pub log_probs: Vec<f64>,
    /// trace G there, in pixel units (as `leafwalk inspect` reports it).
    pub trace_g: f64,
}

/// trace G in pixel units from a Jacobian in normalised units: J_pixel = J_norm / σ per value.
pub(crate) fn pixel_trace(model: &Classifier, point: &PointGeometry) -> f64 {
    let (_, std) = channel_stats(model, point.dim());
    point
        .jacobian_values()
        .chunks(point.dim())
        .zip(point.probs.iter())
        .map(|(row, p)| p * row.iter().zip(&std).map(|(&j, &s)| (j as f64 / s as f64).powi(2)).sum::<f64>())
        .sum()
}

/// J and p at each of `points` (normalised coordinates) from one batched pass. A point whose
/// log p or J is not finite comes back as `None`: the walk through it has diverged.
pub(crate) fn geometries(model: &Classifier, points: &[&State]) -> Result<Vec<Option<PointGeometry>>> {
    let shape = model.input_shape();
    let values: Vec<f32> = points.iter().flat_map(|x| x.0.iter().copied()).collect();
    let batch = Tensor::from_vec(values, (points.len(), shape.channels, shape.height, shape.width), model.device())?;
    Ok(batch_geometry_in(model, &batch, Coordinates::Normalised)?
        .into_iter()
        .map(|g| {
            let finite = g.log_probs.iter().all(|v| v.is_finite()) && g.jacobian_values().iter().all(|v| v.is_finite());
            finite.then_some(g)
        })
        .collect())
}

fn geometry(model: &Classifier, x: &State) -> Result<PointGeometry> {
    geometries(model, &[x])?.remove(0).ok_or(WalkError::NonFiniteJacobian)
}

/// x + step · d̂ in f64, rounded to f32 and clamped to the image of [0, 1].
pub(crate) fn advance(model: &Classifier, x: &State, displacement: &DVector<f64>, step: f64) -> State {
    let norm = displacement.norm();
    let scale = if norm > 0.0 { step / norm } else { 0.0 };
    let (lo, hi) = clamp_bounds(model, x.0.len());
    State(
        x.0.iter()
            .zip(displacement.iter())
            .enumerate()
            .map(|(i, (&v, &d))| ((v as f64 + scale * d) as f32).clamp(lo[i], hi[i]))
            .collect(),
    )
}

/// P(target − x): the part of the way to the target that lies along the leaf through x.
pub(crate) fn toward_on_leaf(point: &PointGeometry, x: &State, target: &State) -> DVector<f64> {
    point.leaf_projector().onto_leaf(&(target.as_f64() - x.as_f64()))
}

/// u(x) = P(target − x) / ‖P(target − x)‖: the unit direction of a data-leaf step (zero when
/// the way to the target is orthogonal to the leaf).
pub fn leaf_direction(model: &Classifier, x: &State, target: &State) -> Result<DVector<f64>> {
    let toward = toward_on_leaf(&geometry(model, x)?, x, target);
    let norm = toward.norm();
    Ok(if norm > 0.0 { toward / norm } else { toward })
}

/// One data-leaf step from `x` toward `target`: along P (target − x), unit length times `step`.
pub fn data_leaf_step(model: &Classifier, x: &State, target: &State, step: f64) -> Result<Step> {
    direction_step(model, x, &(target.as_f64() - x.as_f64()), Subspace::Leaf, step)
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
        next: advance(model, x, &displacement, step),
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
        let step = direction_step(model, &x, direction, subspace, step_size).map_err(WalkError::at_step(None, k))?;
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
