//! Steering through the data: when a direct walk stalls, walk toward training images first.
//!
//! A direct walk stops where its leaf's point nearest the target is not the target: there the
//! way to the target is orthogonal to the leaf, and the greedy direction field has nothing
//! left to follow (see [`crate::path`]). Walking toward another image changes the field while
//! staying on the same leaf, and from where that walk ends the walk toward the target may get
//! closer than before. Each round of [`connect_steered`] walks from the current end toward
//! every waypoint (training images near the target and near the current end) for at most 40
//! steps, then from each of those ends toward the target, all as batches, and keeps the detour that ends nearest the
//! target if it beats the current end by `stall_progress`; it stops when a round gains
//! nothing, the target is reached, or `rounds` are spent. Every segment is a data-leaf walk
//! that starts where the previous one ended, so the whole path stays on the starting leaf.

use leafwalk_models::Classifier;

use crate::path::{connect_batch, PathOptions, PathOutcome};
use crate::{Result, State};

/// Steps of a detour toward a waypoint at most.
const DETOUR_STEPS: usize = 40;

/// Length walked: the sum of the steps taken.
pub fn walked_length(outcome: &PathOutcome) -> f64 {
    outcome.records.iter().map(|r| r.step_size).sum()
}

/// Indices of the `count` states of `among` nearest to `x` (ties by index).
pub(crate) fn nearest(x: &State, among: &[State], count: usize) -> Vec<usize> {
    let mut order: Vec<(f64, usize)> = among.iter().enumerate().map(|(i, y)| (x.distance(y), i)).collect();
    order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    order.into_iter().take(count).map(|(_, i)| i).collect()
}

/// A steered path.
#[derive(Clone, Debug)]
pub struct SteeredPath {
    /// The whole walk; records' distances are to the final target and `jacobian_evals`
    /// counts every walk tried, the rejected detours included.
    pub outcome: PathOutcome,
    /// Indices (into the waypoint list) of the waypoints steered through, in order.
    pub waypoints: Vec<usize>,
}

/// Improves a stalled `direct` walk toward `to` by detours through `waypoints` (module docs),
/// trying the `per_round` waypoints nearest the target and as many nearest the current end.
pub fn connect_steered(
    model: &Classifier,
    direct: PathOutcome,
    to: &State,
    waypoints: &[State],
    options: &PathOptions,
    per_round: usize,
    rounds: usize,
) -> Result<SteeredPath> {
    let mut evals = direct.jacobian_evals;
    let (mut segments, mut chosen) = (vec![direct], Vec::new());
    let near_target = nearest(to, waypoints, per_round);
    // A detour only has to bend the walk; run to its own stall it would cost hundreds of
    // Jacobians for little extra.
    let detour = PathOptions { max_steps: options.max_steps.min(DETOUR_STEPS), ..*options };
    for _ in 0..rounds {
        let current = segments.last().expect("the direct walk is the first segment");
        if current.reached() {
            break;
        }
        let end = current.points.last().expect("walks keep their start").clone();
        let mut candidates = near_target.clone();
        candidates.extend(nearest(&end, waypoints, per_round).into_iter().filter(|c| !near_target.contains(c)));
        candidates.retain(|c| !chosen.contains(c));
        if candidates.is_empty() {
            break;
        }
        let outward: Vec<(State, State)> = candidates.iter().map(|&c| (end.clone(), waypoints[c].clone())).collect();
        let detours = connect_batch(model, &outward, &detour, |_, _| {})?;
        let back: Vec<(State, State)> =
            detours.iter().map(|d| (d.points.last().expect("walks keep their start").clone(), to.clone())).collect();
        let returns = connect_batch(model, &back, options, |_, _| {})?;
        evals += detours.iter().chain(&returns).map(|o| o.jacobian_evals).sum::<usize>();
        let best = (0..candidates.len())
            .min_by(|&a, &b| returns[a].final_distance().total_cmp(&returns[b].final_distance()))
            .expect("candidates is not empty");
        if returns[best].final_distance() > current.final_distance() - options.stall_progress {
            break;
        }
        chosen.push(candidates[best]);
        segments.push(detours[best].clone());
        segments.push(returns[best].clone());
    }
    Ok(SteeredPath { outcome: concatenate(segments, to, evals), waypoints: chosen })
}

/// One outcome from consecutive segments: points joined (each segment starts where the last
/// ended), steps renumbered, distances measured to the final target; it ends as the last
/// segment did.
pub fn concatenate(segments: Vec<PathOutcome>, to: &State, jacobian_evals: usize) -> PathOutcome {
    let count = segments.len();
    let mut ending = segments[count - 1].ending;
    let (mut points, mut records) = (Vec::new(), Vec::new());
    for (k, segment) in segments.into_iter().enumerate() {
        let last_segment = k + 1 == count;
        if last_segment {
            ending = ending.shifted(points.len().saturating_sub(1));
        }
        let n = segment.records.len();
        // A segment's final record is the next segment's first point again.
        let kept = if last_segment { n } else { n - 1 };
        for mut record in segment.records.into_iter().take(kept) {
            record.step = records.len();
            records.push(record);
        }
        points.extend(segment.points.into_iter().skip(usize::from(k > 0)));
    }
    for (record, point) in records.iter_mut().zip(&points) {
        record.distance = point.distance(to);
    }
    PathOutcome { ending, jacobian_evals, points, records }
}
