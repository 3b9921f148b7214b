//! Walking a batch of pairs the way `path` and `eval-paths` are asked to: noise leaf or data
//! leaf, Euler or adaptive, direct or steered through training images.

use std::time::Instant;

use anyhow::bail;
use leafwalk_models::Classifier;
use leafwalk_walk::{
    concatenate, connect_batch, connect_steered, direction_walk, Ending, Integrator, PathOptions, PathOutcome,
    PathRecord, State, Subspace,
};

use crate::cli::{IntegratorArg, LeafArg, PathWalkArgs, ProjectionArgs, ViaArg};

/// Step of the kernel walk that starts a noise-leaf path (the paper's).
const NOISE_STEP: f64 = 0.1;

/// One walked pair.
pub struct Walked {
    pub outcome: PathOutcome,
    /// Points of the kernel walk at the start (0 on the data leaf); the last is the point the
    /// data-leaf part starts from.
    pub noise_steps: usize,
    /// Training images steered through, as indices into the waypoints (empty: direct).
    pub waypoints: Vec<usize>,
    /// The target's predicted class, and the first step predicting it.
    pub target_class: usize,
    pub flip_step: Option<usize>,
    pub seconds: f64,
}

/// The images `--via auto` steers through: the model's training split, normalised.
pub fn training_waypoints(model: &Classifier, data_root: &std::path::Path) -> anyhow::Result<Vec<State>> {
    dataset_states(model, &crate::commands::training_set(model, data_root)?)
}

/// Every image of `set` in the model's normalised coordinates.
pub fn dataset_states(model: &Classifier, set: &leafwalk_data::Dataset) -> anyhow::Result<Vec<State>> {
    (0..set.len()).map(|i| Ok(State::from_pixels(model, &set.pixels(i)?))).collect()
}

/// The walks of a projection onto the data leaf: the adaptive integrator, at most `--max-steps`.
pub fn projection_options(args: &ProjectionArgs) -> anyhow::Result<PathOptions> {
    if args.anchors == 0 || args.max_steps == 0 {
        bail!("--anchors and --max-steps must be at least 1");
    }
    Ok(PathOptions { max_steps: args.max_steps, ..PathOptions::adaptive() })
}

/// Validated integrator settings from the command line.
pub fn path_options(args: &PathWalkArgs) -> anyhow::Result<PathOptions> {
    for (name, value, allow_zero) in [
        ("--step-size", args.step_size, false),
        ("--tolerance", args.tolerance, false),
        ("--threshold", args.threshold, true),
    ] {
        if !(value.is_finite() && (value > 0.0 || (allow_zero && value == 0.0))) {
            let kind = if allow_zero { "non-negative" } else { "positive" };
            bail!("{name} must be a {kind} finite number, got {value}");
        }
    }
    let base = match args.integrator {
        IntegratorArg::Euler => PathOptions::euler(),
        IntegratorArg::Adaptive => PathOptions::adaptive(),
    };
    Ok(PathOptions {
        step: args.step_size,
        threshold: args.threshold,
        max_steps: args.max_steps,
        tolerance: args.tolerance,
        stall_window: args.stall_window.unwrap_or(base.stall_window),
        ..base
    })
}

/// Walks every pair (one batch for the data-leaf part); `waypoints` (training images) are
/// needed for `--via auto`.
/// `on_record(pair, record)` follows the batched walk.
pub fn walk_pairs(
    model: &Classifier,
    pairs: &[(State, State)],
    args: &PathWalkArgs,
    waypoints: Option<&[State]>,
    mut on_record: impl FnMut(usize, &PathRecord),
) -> anyhow::Result<Vec<Walked>> {
    let started = Instant::now();
    let options = PathOptions { stop_at_target_class: args.flip_target, ..path_options(args)? };
    let targets: Vec<usize> =
        pairs.iter().map(|(_, to)| leafwalk_walk::prediction(model, to).map(|p| p.0)).collect::<Result<_, _>>()?;
    let mut prefixes = Vec::new();
    for (k, (from, _)) in pairs.iter().enumerate() {
        prefixes.push(match args.leaf {
            LeafArg::Data => None,
            LeafArg::Noise => {
                let direction = leafwalk_walk::random_direction(from.0.len(), args.seed + k as u64);
                Some(direction_walk(model, from, &direction, Subspace::Kernel, args.noise_steps, NOISE_STEP, |_| {})?)
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
    let outcomes = connect_batch(model, &starts, &options, &mut on_record)?;
    let direct_seconds = started.elapsed().as_secs_f64();
    let mut walked = Vec::with_capacity(pairs.len());
    for (k, (outcome, prefix)) in outcomes.into_iter().zip(prefixes).enumerate() {
        let pair_started = Instant::now();
        let (mut outcome, mut steered_through) = (outcome, Vec::new());
        if let (ViaArg::Auto, Some(waypoints), Some(_)) = (args.via, waypoints, outcome.stalled_at()) {
            let steer = &args.steer;
            let steered = connect_steered(
                model,
                outcome,
                &starts[k].1,
                waypoints,
                &options,
                steer.via_candidates,
                steer.via_rounds,
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
        let seconds = direct_seconds / pairs.len() as f64 + pair_started.elapsed().as_secs_f64();
        walked.push(Walked {
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

pub fn integrator_name(integrator: Integrator) -> &'static str {
    match integrator {
        Integrator::Euler => "euler",
        Integrator::Adaptive => "adaptive",
    }
}
