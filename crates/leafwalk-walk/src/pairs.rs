//! Paths between many pairs of images at once, on the data leaf or on a noise leaf, direct or
//! steered through training images: what `leafwalk path`, `eval-paths` and the Python
//! package's `Model.path` all ask for.
//!
//! A noise-leaf path first walks `steps` paper steps along a fixed random direction projected on
//! ker G (the start's noise leaf: same prediction, more noise), then walks the data leaf from
//! there to the target; the two walks are reported as one path. The data-leaf parts of all
//! pairs run as one batch ([`connect_batch`]).

use std::time::Instant;

use leafwalk_models::Classifier;

use crate::{
    concatenate, connect_batch, connect_steered, direction_walk, random_direction, Ending, PathOptions, PathOutcome,
    PathRecord, Result, State, Subspace,
};

/// Step of the kernel walk that starts a noise-leaf path (the paper's), normalised units.
pub const NOISE_STEP: f64 = 0.1;

/// Which leaf a path between two images starts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leaf {
    /// The start's own leaf: the data leaf when the start is a data image.
    Data,
    /// A noise leaf reached from the start by `steps` kernel steps along a random direction
    /// drawn from `seed` (pair k uses `seed + k`).
    Noise {
        /// Kernel steps before the data-leaf walk.
        steps: usize,
        /// Seed of the first pair's random direction.
        seed: u64,
    },
}

/// Detours for paths that stall: candidate training images to steer through
/// ([`connect_steered`]).
#[derive(Clone, Copy, Debug)]
pub struct Steering<'a> {
    /// The images a stalled path may pass through, in normalised coordinates.
    pub waypoints: &'a [State],
    /// Waypoints tried per round (those nearest the target).
    pub candidates: usize,
    /// Rounds of detours at most.
    pub rounds: usize,
}

/// One walked pair.
#[derive(Clone, Debug)]
pub struct PairPath {
    /// The whole path, a noise-leaf prefix included.
    pub outcome: PathOutcome,
    /// Points of the kernel walk at the start (0 on the data leaf); the last is the point the
    /// data-leaf part starts from.
    pub noise_steps: usize,
    /// Training images steered through, as indices into [`Steering::waypoints`] (empty: direct).
    pub waypoints: Vec<usize>,
    /// The target's predicted class.
    pub target_class: usize,
    /// The first step whose prediction is the target's class, if any.
    pub flip_step: Option<usize>,
    /// Wall time spent on this pair, seconds (the batched part shared evenly).
    pub seconds: f64,
}

/// Walks every pair `(from, to)` with `options` on `leaf`, steering stalled paths when
/// `steering` is given; `on_record(pair, record)` follows the batched data-leaf walk.
pub fn walk_pairs(
    model: &Classifier,
    pairs: &[(State, State)],
    options: &PathOptions,
    leaf: Leaf,
    steering: Option<Steering<'_>>,
    mut on_record: impl FnMut(usize, &PathRecord),
) -> Result<Vec<PairPath>> {
    let started = Instant::now();
    let targets: Vec<usize> =
        pairs.iter().map(|(_, to)| crate::prediction(model, to).map(|p| p.0)).collect::<Result<_>>()?;
    let mut prefixes = Vec::with_capacity(pairs.len());
    for (k, (from, _)) in pairs.iter().enumerate() {
        prefixes.push(match leaf {
            Leaf::Data => None,
            Leaf::Noise { steps, seed } => {
                let direction = random_direction(from.0.len(), seed + k as u64);
                Some(direction_walk(model, from, &direction, Subspace::Kernel, steps, NOISE_STEP, |_| {})?)
            }
        });
    }
    let starts: Vec<(State, State)> = pairs
        .iter()
        .zip(&prefixes)
        .map(|((from, to), prefix)| {
            let start = prefix.as_ref().map_or(from, |(points, _)| points.last().expect("walks keep their start"));
            (start.clone(), to.clone())
        })
        .collect();
    let outcomes = connect_batch(model, &starts, options, &mut on_record)?;
    let batched_seconds = started.elapsed().as_secs_f64();
    let mut walked = Vec::with_capacity(pairs.len());
    for (k, (outcome, prefix)) in outcomes.into_iter().zip(prefixes).enumerate() {
        let pair_started = Instant::now();
        let (mut outcome, mut steered_through) = (outcome, Vec::new());
        if let (Some(steer), Some(_)) = (steering, outcome.stalled_at()) {
            let steered = connect_steered(
                model,
                outcome,
                &starts[k].1,
                steer.waypoints,
                options,
                steer.candidates,
                steer.rounds,
            )?;
            outcome = steered.outcome;
            steered_through = steered.waypoints;
        }
        let noise_steps = prefix.as_ref().map_or(0, |(points, _)| points.len() - 1);
        if let Some((points, records)) = prefix {
            // The kernel walk and the leaf walk as one path; the kernel walk's Jacobians count.
            let evals = outcome.jacobian_evals + noise_steps;
            let kernel_walk = PathOutcome { ending: Ending::StepLimit, jacobian_evals: noise_steps, points, records };
            outcome = concatenate(vec![kernel_walk, outcome], &pairs[k].1, evals);
        }
        let flip_step = outcome.records.iter().find(|r| r.prediction == targets[k]).map(|r| r.step);
        let seconds = batched_seconds / pairs.len() as f64 + pair_started.elapsed().as_secs_f64();
        walked.push(PairPath {
            outcome,
            noise_steps,
            waypoints: steered_through,
            target_class: targets[k],
            flip_step,
            seconds,
        });
    }
    Ok(walked)
}
