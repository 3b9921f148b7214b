//! Data-leaf paths: many at once, with the paper's fixed-step Euler or an adaptive integrator.
//!
//! A path follows the unit field u(x) = P(x)(t − x) / ‖P(x)(t − x)‖, P(x) the orthogonal
//! projector onto ker G⊥(x), until it is within `threshold` of the target t. Both integrators
//! advance every live path of a batch together: each round gathers the one point per path whose
//! Jacobian the path needs next, takes all of them in one batched pass (B paths × C classes),
//! and hands each path its geometry; finished paths drop out of the batch.
//!
//! **Euler** (the paper): x ← clamp(x + h u(x)), h fixed (0.1), one Jacobian per step.
//!
//! **Adaptive**: Euler steps whose length is set by an error estimate, with the Jacobian at
//! each accepted point reused as the start of the next step, so an accepted step costs one
//! Jacobian and a rejected one a second. From x with direction u, the trial point
//! x* = clamp(x + h u) gets its own direction u*. The difference between this Euler step and
//! the trapezoidal step x + h (u + u*)/2 is e = h ‖u* − u‖ / 2, the standard estimate of the
//! Euler step's local error: how far the step leaves the integral curve the paper's small
//! steps follow (on a leaf, the turn of the leaf's tangent space over the step). The trial is
//! accepted when e ≤ `tolerance` (normalised units) **and** it comes closer to the target (a
//! line-search guard against stepping across the point of the leaf nearest the target). The
//! next step length is h · min(4, max(0.2, 0.9 √(tolerance / e))), the local error being
//! second order in h, capped at `max_step` and at the remaining distance. A path whose step
//! falls below `min_step` cannot make progress on its leaf and is reported stalled.
//!
//! **Stalls.** Where the leaf's point nearest the target is not the target, u flips around it
//! and a fixed step circles it forever. A path that has not come `stall_progress` closer than
//! its best distance within `stall_window` Jacobian evaluations stops with
//! [`Ending::Stalled`].

use candle_core::Tensor;
use leafwalk_geometry::{argmax, PointGeometry};
use leafwalk_models::Classifier;
use nalgebra::DVector;

use crate::step::{advance, geometries, pixel_trace, toward_on_leaf};
use crate::{Result, State};

/// Largest number of points per batched Jacobian pass (bounds memory: B × C replicas).
pub const MAX_BATCH: usize = 64;

/// How a data-leaf path chooses its step lengths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Integrator {
    /// The paper's fixed step.
    Euler,
    /// Error-controlled step length (see the module docs).
    Adaptive,
}

/// Settings of a data-leaf path.
#[derive(Clone, Copy, Debug)]
pub struct PathOptions {
    /// Fixed-step Euler (the paper's, [`PathOptions::euler`]) or the adaptive integrator
    /// ([`PathOptions::adaptive`]).
    pub integrator: Integrator,
    /// Step length in normalised units: Euler's fixed step (the paper's 0.1), the adaptive
    /// integrator's first trial.
    pub step: f64,
    /// Stop when the distance to the target is at most this (the paper's 1.0).
    pub threshold: f64,
    /// Accepted steps at most.
    pub max_steps: usize,
    /// Stall: no `stall_progress` of progress over `stall_window` Jacobian evaluations.
    pub stall_window: usize,
    /// Smallest gain on the best distance to the target so far (normalised units) that counts
    /// as progress for the stall rule (0.01 in both presets).
    pub stall_progress: f64,
    /// Adaptive: largest local error per step, normalised units.
    pub tolerance: f64,
    /// Adaptive: step length bounds.
    pub max_step: f64,
    /// Adaptive: a path whose step must shrink below this length (normalised units) to be
    /// accepted ends [`Ending::Stalled`] (1e-3 in both presets).
    pub min_step: f64,
    /// Stop as soon as the prediction is the target's (`--flip-target`).
    pub stop_at_target_class: bool,
}

impl PathOptions {
    /// The paper's walk: fixed step 0.1, threshold 1.0, at most 5,000 steps; a walk that has
    /// not gained 0.01 in 200 steps has stalled.
    pub fn euler() -> Self {
        PathOptions {
            integrator: Integrator::Euler,
            step: 0.1,
            threshold: 1.0,
            max_steps: 5000,
            stall_window: 200,
            stall_progress: 0.01,
            tolerance: 0.05,
            max_step: 8.0,
            min_step: 1e-3,
            stop_at_target_class: false,
        }
    }

    /// The adaptive integrator with the paper's threshold; it gives up after 25 evaluations
    /// without progress, its steps being far longer than Euler's.
    pub fn adaptive() -> Self {
        PathOptions { integrator: Integrator::Adaptive, stall_window: 25, tolerance: 0.1, ..Self::euler() }
    }
}

impl Default for PathOptions {
    fn default() -> Self {
        Self::euler()
    }
}

/// A walk's best distance to its target so far and the Jacobian count it was reached at: the
/// stop rule both integrators (host and device) share.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Progress {
    best: f64,
    best_at: usize,
}

impl Progress {
    pub(crate) fn new(distance: f64) -> Self {
        Progress { best: distance, best_at: 0 }
    }

    /// Records a point `distance` from the target after `evals` Jacobians and `steps` steps,
    /// and says whether the walk ends there: within the threshold, stalled (no
    /// `stall_progress` gained in `stall_window` evaluations) or at the step limit.
    pub(crate) fn ending(
        &mut self,
        options: &PathOptions,
        distance: f64,
        evals: usize,
        steps: usize,
    ) -> Option<Ending> {
        if distance < self.best - options.stall_progress {
            (self.best, self.best_at) = (distance, evals);
        }
        if distance <= options.threshold {
            Some(Ending::Reached)
        } else if evals - self.best_at >= options.stall_window {
            Some(Ending::Stalled { step: steps })
        } else if steps >= options.max_steps {
            Some(Ending::StepLimit)
        } else {
            None
        }
    }
}

/// One logged point of a path.
#[derive(Clone, Debug, PartialEq)]
pub struct PathRecord {
    /// Index of the point along the path, counted from 0 at the start.
    pub step: usize,
    /// Distance to the target, normalised units.
    pub distance: f64,
    /// The model's predicted class here (argmax of log p).
    pub prediction: usize,
    /// The model's probability of `prediction` here, in [0, 1].
    pub probability: f64,
    /// trace G at this point in pixel units (`None` where no Jacobian was taken).
    pub trace_g: Option<f64>,
    /// Length of the step taken from this point, normalised units (0 at the final point).
    pub step_size: f64,
}

/// Why a path stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Within the threshold of the target.
    Reached,
    /// The prediction became the target's at this step (`stop_at_target_class`).
    ReachedClass {
        /// Index of the point where the target's class was first predicted.
        step: usize,
    },
    /// No progress (see [`PathOptions::stall_window`]) by this step.
    Stalled {
        /// Steps taken when the path gave up (index of its last point).
        step: usize,
    },
    /// `max_steps` taken.
    StepLimit,
    /// log p or J stopped being finite at this step; the points before it are kept.
    Diverged {
        /// Steps taken before the divergence: the index of the last point kept.
        step: usize,
    },
}

impl Ending {
    /// The same ending for a walk whose steps are numbered from `offset` on.
    pub fn shifted(self, offset: usize) -> Self {
        match self {
            Ending::ReachedClass { step } => Ending::ReachedClass { step: step + offset },
            Ending::Stalled { step } => Ending::Stalled { step: step + offset },
            Ending::Diverged { step } => Ending::Diverged { step: step + offset },
            other => other,
        }
    }
}

/// How a path ended, with everything it visited.
#[derive(Clone, Debug)]
pub struct PathOutcome {
    /// Why the path stopped.
    pub ending: Ending,
    /// Jacobians taken for this path, one per point examined: Euler one per step (plus the
    /// point where the target's class shows); adaptive one at the start and one per trial step,
    /// accepted or rejected.
    pub jacobian_evals: usize,
    /// Every point of the walk, the start included.
    pub points: Vec<State>,
    /// One record per point.
    pub records: Vec<PathRecord>,
}

impl PathOutcome {
    /// Whether the path ended at its goal: within `threshold` of the target, or (with
    /// `stop_at_target_class`) where the target's class is predicted.
    pub fn reached(&self) -> bool {
        matches!(self.ending, Ending::Reached | Ending::ReachedClass { .. })
    }

    /// The step count at which the path stalled, or `None` when it ended otherwise.
    pub fn stalled_at(&self) -> Option<usize> {
        match self.ending {
            Ending::Stalled { step } => Some(step),
            _ => None,
        }
    }

    /// Steps taken: the points visited after the start.
    pub fn steps(&self) -> usize {
        self.points.len() - 1
    }

    /// Distance of the last recorded point to the target, normalised units (0 when the path
    /// has no record: it diverged at its start).
    pub fn final_distance(&self) -> f64 {
        self.records.last().map_or(0.0, |r| r.distance)
    }
}

/// The record of a point from a forward pass only (the final point of a walk).
pub(crate) fn record_at(model: &Classifier, x: &State, step: usize, distance: f64) -> Result<PathRecord> {
    let shape = model.input_shape();
    let batch = Tensor::from_slice(&x.0, (1, shape.channels, shape.height, shape.width), model.device())?;
    let log_probs: Vec<f64> =
        model.log_probs_normalised(&batch)?.to_dtype(candle_core::DType::F64)?.flatten_all()?.to_vec1()?;
    let (prediction, log_p) = argmax(&log_probs);
    Ok(PathRecord { step, distance, prediction, probability: log_p.exp(), trace_g: None, step_size: 0.0 })
}

/// The predicted class at `x` and its probability (one forward pass).
pub fn prediction(model: &Classifier, x: &State) -> Result<(usize, f64)> {
    let record = record_at(model, x, 0, 0.0)?;
    Ok((record.prediction, record.probability))
}

/// What a path knows about the point it stands on once its Jacobian is in.
#[derive(Clone, Debug)]
struct Here {
    /// u(x), unit length (zero when the target lies in ker G).
    direction: DVector<f64>,
    prediction: usize,
    probability: f64,
    trace_g: f64,
}

impl Here {
    fn new(model: &Classifier, point: &PointGeometry, x: &State, target: &State) -> Self {
        let toward = toward_on_leaf(point, x, target);
        let norm = toward.norm();
        let (prediction, log_p) = argmax(point.log_probs.as_slice());
        Here {
            direction: if norm > 0.0 { toward / norm } else { toward },
            prediction,
            probability: log_p.exp(),
            trace_g: pixel_trace(model, point),
        }
    }

    fn record(&self, step: usize, distance: f64, step_size: f64) -> PathRecord {
        PathRecord {
            step,
            distance,
            prediction: self.prediction,
            probability: self.probability,
            trace_g: Some(self.trace_g),
            step_size,
        }
    }
}

/// One path being integrated: a small state machine that asks for one Jacobian at a time.
struct Walker<'a> {
    options: &'a PathOptions,
    target: &'a State,
    /// The class whose prediction ends the walk, if any.
    stop_class: Option<usize>,
    x: State,
    distance: f64,
    /// The geometry at `x`, once taken (the adaptive integrator keeps it between steps).
    here: Option<Here>,
    /// Adaptive: the point being tried and the step length that produced it.
    trial: Option<(State, f64)>,
    step: f64,
    progress: Progress,
    evals: usize,
    points: Vec<State>,
    records: Vec<PathRecord>,
    ending: Option<Ending>,
}

impl<'a> Walker<'a> {
    fn new(model: &Classifier, from: &State, target: &'a State, options: &'a PathOptions) -> Result<Self> {
        let distance = from.distance(target);
        let stop_class = if options.stop_at_target_class { Some(prediction(model, target)?.0) } else { None };
        let mut walker = Walker {
            options,
            target,
            stop_class,
            x: from.clone(),
            distance,
            here: None,
            trial: None,
            step: options.step,
            progress: Progress::new(distance),
            evals: 0,
            points: vec![from.clone()],
            records: Vec::new(),
            ending: None,
        };
        walker.check_stop(model)?;
        Ok(walker)
    }

    /// The point whose Jacobian this path needs next, if it is still walking.
    fn wants(&self) -> Option<&State> {
        if self.ending.is_some() {
            return None;
        }
        match (&self.trial, self.options.integrator) {
            (Some((trial, _)), Integrator::Adaptive) => Some(trial),
            _ => Some(&self.x),
        }
    }

    fn absorb(&mut self, model: &Classifier, point: Option<PointGeometry>) -> Result<()> {
        self.evals += 1;
        let Some(point) = point else {
            self.ending = Some(Ending::Diverged { step: self.records.len() });
            return Ok(());
        };
        match self.trial.take() {
            None => {
                let here = Here::new(model, &point, &self.x, self.target);
                if self.stop_class == Some(here.prediction) {
                    self.records.push(here.record(self.records.len(), self.distance, 0.0));
                    self.ending = Some(Ending::ReachedClass { step: self.records.len() - 1 });
                    return Ok(());
                }
                match self.options.integrator {
                    Integrator::Euler => {
                        let next = advance(model, &self.x, &here.direction, self.step);
                        self.records.push(here.record(self.records.len(), self.distance, self.step));
                        self.move_to(model, next, None)?;
                    }
                    Integrator::Adaptive => {
                        self.trial = Some((advance(model, &self.x, &here.direction, self.step), self.step));
                        self.here = Some(here);
                    }
                }
            }
            Some((trial, h)) => self.judge_trial(model, &point, trial, h)?,
        }
        Ok(())
    }

    /// Adaptive: accept or reject the trial point (module docs), then propose the next one.
    fn judge_trial(&mut self, model: &Classifier, point: &PointGeometry, trial: State, h: f64) -> Result<()> {
        let here = self.here.take().expect("a trial is only proposed from a point with its geometry");
        let there = Here::new(model, point, &trial, self.target);
        let error = h * (&there.direction - &here.direction).norm() / 2.0;
        let closer = trial.distance(self.target) < self.distance;
        let factor = (0.9 * (self.options.tolerance / error.max(1e-300)).sqrt()).clamp(0.2, 4.0);
        if error <= self.options.tolerance && closer {
            self.records.push(here.record(self.records.len(), self.distance, h));
            let reached_class = self.stop_class == Some(there.prediction);
            self.move_to(model, trial, Some(there))?;
            self.step = (h * factor).min(self.options.max_step).min(self.distance);
            if self.ending.is_none() && reached_class {
                self.finish(model, Ending::ReachedClass { step: self.records.len() })?;
            }
        } else {
            self.step = h * if closer { factor } else { factor.min(0.5) };
            self.here = Some(here);
            if self.step < self.options.min_step {
                return self.finish(model, Ending::Stalled { step: self.records.len() });
            }
        }
        if self.ending.is_none() {
            let here = self.here.as_ref().expect("set by the branches above");
            self.trial = Some((advance(model, &self.x, &here.direction, self.step), self.step));
        }
        Ok(())
    }

    fn move_to(&mut self, model: &Classifier, next: State, here: Option<Here>) -> Result<()> {
        self.distance = next.distance(self.target);
        self.x = next;
        self.here = here;
        self.points.push(self.x.clone());
        self.check_stop(model)
    }

    fn check_stop(&mut self, model: &Classifier) -> Result<()> {
        let steps = self.points.len() - 1;
        match self.progress.ending(self.options, self.distance, self.evals, steps) {
            Some(ending) => self.finish(model, ending),
            None => Ok(()),
        }
    }

    /// Ends the walk with a record of the point it stands on.
    fn finish(&mut self, model: &Classifier, ending: Ending) -> Result<()> {
        let step = self.points.len() - 1;
        let record = match &self.here {
            Some(here) => here.record(step, self.distance, 0.0),
            None => record_at(model, &self.x, step, self.distance)?,
        };
        self.records.push(record);
        self.ending = Some(ending);
        self.trial = None;
        Ok(())
    }

    fn into_outcome(self) -> PathOutcome {
        PathOutcome {
            ending: self.ending.expect("a walker is only unwrapped once it has ended"),
            jacobian_evals: self.evals,
            points: self.points,
            records: self.records,
        }
    }
}

/// Integrates every `(from, to)` pair as one batch (module docs). `on_record(pair, record)`
/// sees each record as it is made (progress display).
pub fn connect_batch(
    model: &Classifier,
    pairs: &[(State, State)],
    options: &PathOptions,
    mut on_record: impl FnMut(usize, &PathRecord),
) -> Result<Vec<PathOutcome>> {
    let mut walkers =
        pairs.iter().map(|(from, to)| Walker::new(model, from, to, options)).collect::<Result<Vec<_>>>()?;
    let mut reported = vec![0; walkers.len()];
    loop {
        for (pair, walker) in walkers.iter().enumerate() {
            for record in &walker.records[reported[pair]..] {
                on_record(pair, record);
            }
            reported[pair] = walker.records.len();
        }
        let live: Vec<usize> = (0..walkers.len()).filter(|&i| walkers[i].wants().is_some()).collect();
        if live.is_empty() {
            break;
        }
        for chunk in live.chunks(MAX_BATCH) {
            let wanted: Vec<&State> = chunk.iter().filter_map(|&i| walkers[i].wants()).collect();
            let points = geometries(model, &wanted)?;
            for (&i, point) in chunk.iter().zip(points) {
                walkers[i].absorb(model, point)?;
            }
        }
    }
    Ok(walkers.into_iter().map(Walker::into_outcome).collect())
}

/// One data-leaf path from `from` toward `to`.
pub fn connect(
    model: &Classifier,
    from: &State,
    to: &State,
    options: &PathOptions,
    mut on_record: impl FnMut(&PathRecord),
) -> Result<PathOutcome> {
    let pair = [(from.clone(), to.clone())];
    Ok(connect_batch(model, &pair, options, |_, r| on_record(r))?.remove(0))
}
