//! Walking a batch of pairs the way `path` and `eval-paths` are asked to: noise leaf or data
//! leaf, Euler or adaptive, direct or steered through training images.

use anyhow::bail;
use leafwalk_models::Classifier;
use leafwalk_walk::{Integrator, Leaf, PairPath, PathOptions, PathRecord, State, Steering};

use crate::cli::{IntegratorArg, LeafArg, PathWalkArgs, ProjectionArgs, ViaArg};

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

/// Walks every pair as the command line asks (one batch for the data-leaf part);
/// `waypoints` (training images) are needed for `--via auto`. `on_record(pair, record)`
/// follows the batched walk.
pub fn walk_pairs(
    model: &Classifier,
    pairs: &[(State, State)],
    args: &PathWalkArgs,
    waypoints: Option<&[State]>,
    on_record: impl FnMut(usize, &PathRecord),
) -> anyhow::Result<Vec<PairPath>> {
    let options = PathOptions { stop_at_target_class: args.flip_target, ..path_options(args)? };
    let leaf = match args.leaf {
        LeafArg::Data => Leaf::Data,
        LeafArg::Noise => Leaf::Noise { steps: args.noise_steps, seed: args.seed },
    };
    let steering = match (args.via, waypoints) {
        (ViaArg::Auto, Some(waypoints)) => {
            Some(Steering { waypoints, candidates: args.steer.via_candidates, rounds: args.steer.via_rounds })
        }
        _ => None,
    };
    Ok(leafwalk_walk::walk_pairs(model, pairs, &options, leaf, steering, on_record)?)
}

pub fn integrator_name(integrator: Integrator) -> &'static str {
    match integrator {
        Integrator::Euler => "euler",
        Integrator::Adaptive => "adaptive",
    }
}
