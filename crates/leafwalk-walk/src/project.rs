//! Projection onto the data leaf: the point of the training data's leaf nearest to an image.
//!
//! The data leaf is only known through points on it, the training images. For an image x,
//! [`project_onto_leaf`] takes the `anchors` training images nearest to x in pixel space and
//! walks from each toward x along its leaf (a data-leaf path: it ends at x if x is on the leaf,
//! otherwise where the leaf comes nearest to x and the walk stalls). The end nearest to x is the
//! projection y*, and ‖x − y*‖ is x's distance to the data leaf: images like the training data
//! lie close to it, images unlike anything the model was trained on lie far from it. Every walk
//! of every image runs in one batched loop (chunks of [`MAX_BATCH`] walks).
//!
//! Limits, by construction: y* is the nearest end of a few greedy walks, so the distance is an
//! upper bound on the true distance to the leaf, and a leaf point far from every anchor's walk
//! is not found.

use leafwalk_models::Classifier;

use crate::path::{connect_batch, PathOptions, PathRecord, MAX_BATCH};
use crate::route::{nearest, walked_length};
use crate::{Result, State, WalkError};

/// One image's projection onto the data leaf.
#[derive(Clone, Debug)]
pub struct Projection {
    /// y*, normalised coordinates.
    pub point: State,
    /// ‖x − y*‖, normalised units.
    pub distance: f64,
    /// Distance from x to its nearest anchor, where the walks start (normalised units).
    pub anchor_distance: f64,
    /// Length of the walk that found y*.
    pub path_length: f64,
    /// Index into the anchors of the walk's start.
    pub anchor: usize,
    /// Jacobians taken for this image, all its walks together.
    pub jacobian_evals: usize,
}

/// Projects each of `points` onto the leaf through `anchors` (module docs), walking from the
/// `per_point` anchors nearest each point with `options`; `on_record(point, record)` follows
/// every step of the point's walks (its distance is to the point).
pub fn project_onto_leaf(
    model: &Classifier,
    points: &[State],
    anchors: &[State],
    per_point: usize,
    options: &PathOptions,
    mut on_record: impl FnMut(usize, &PathRecord),
) -> Result<Vec<Projection>> {
    if anchors.is_empty() || per_point == 0 {
        return Err(WalkError::NoAnchors);
    }
    let per_point = per_point.min(anchors.len());
    let points_per_chunk = (MAX_BATCH / per_point).max(1);
    let mut projections = Vec::with_capacity(points.len());
    for (first, chunk) in (0..).step_by(points_per_chunk).zip(points.chunks(points_per_chunk)) {
        let starts: Vec<Vec<usize>> = chunk.iter().map(|x| nearest(x, anchors, per_point)).collect();
        let pairs: Vec<(State, State)> = chunk
            .iter()
            .zip(&starts)
            .flat_map(|(x, starts)| starts.iter().map(move |&a| (anchors[a].clone(), x.clone())))
            .collect();
        let outcomes =
            connect_batch(model, &pairs, options, |walk, record| on_record(first + walk / per_point, record))?;
        for ((x, starts), walks) in chunk.iter().zip(&starts).zip(outcomes.chunks(per_point)) {
            let (best, walk) = walks
                .iter()
                .enumerate()
                .min_by(|a, b| a.1.final_distance().total_cmp(&b.1.final_distance()))
                .expect("per_point ≥ 1 walks per point");
            let point = walk.points.last().expect("a walk keeps its start").clone();
            projections.push(Projection {
                distance: x.distance(&point),
                point,
                anchor_distance: x.distance(&anchors[starts[0]]),
                path_length: walked_length(walk),
                anchor: starts[best],
                jacobian_evals: walks.iter().map(|w| w.jacobian_evals).sum(),
            });
        }
    }
    Ok(projections)
}
