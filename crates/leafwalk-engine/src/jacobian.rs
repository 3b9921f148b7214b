//! The input Jacobian of log-softmax for every class at once: one forward pass for a batch of
//! points, then the seeds `e_i − p` of a group of classes pushed back through the steps
//! together ([`crate::reverse`]). A point's J is the same bit for bit in any batch and on any
//! number of threads. The same pass with one seed a point, `p − e_label`, gives the gradient of
//! its loss −log p_label (adversarial training's attack steps).

use std::sync::OnceLock;

use crate::forward::{forward, to_channel_first, Purpose, Threads};
use rayon::prelude::*;

use crate::kernels::{bands, split_runs, MAX_GROUP};
use crate::plan::Plan;
use crate::reverse::{Grad, Reverse, Rows};

/// The classes in groups of at most [`MAX_GROUP`], as even as possible.
pub(crate) fn class_groups(classes: usize) -> Vec<std::ops::Range<usize>> {
    bands(classes, classes.div_ceil(MAX_GROUP), 1)
}

/// What the reverse pass pushes back from log-softmax: every class's log-probability (the
/// Jacobian, C rows a point) or each point's loss −log p_label (one row).
#[derive(Clone, Copy)]
pub(crate) enum Seeds<'l> {
    Classes,
    Loss(&'l [usize]),
}

impl Seeds<'_> {
    fn rows(&self, classes: usize) -> usize {
        match self {
            Seeds::Classes => classes,
            Seeds::Loss(_) => 1,
        }
    }

    /// The seeds of points `run` of the batch.
    fn of(&self, run: &std::ops::Range<usize>) -> Self {
        match self {
            Seeds::Classes => Seeds::Classes,
            Seeds::Loss(labels) => Seeds::Loss(&labels[run.clone()]),
        }
    }
}

/// Sub-batches per thread a batch is cut into: each runs its whole pass on one thread, and a
/// second one per thread lets the threads even out points that cost more than others.
const SUB_BATCHES_PER_THREAD: usize = 2;

/// log p `[B][C]` and J `[B][C][n]` (channel-first input order) of `points` normalised inputs
/// — or, for [`Seeds::Loss`], the loss gradients `[B][n]` —, divided by `scale[channel]` (the
/// normalisation's σ for gradients in pixels; ones otherwise).
///
/// A lone point spreads its layers' bands over the threads; a batch is cut into sub-batches,
/// each run start to finish on one thread — a pass that hands every step to the threads waits
/// at each step for the slowest (lenet5 at batch 16 ran 1.5× one thread's speed on two, against
/// 1.9× for two independent passes). A point's values do not depend on its sub-batch.
pub(crate) fn jacobian(
    plan: &Plan,
    inputs: &[f32],
    points: usize,
    scale: &[f32],
    seeds: Seeds,
) -> (Vec<f32>, Vec<f32>) {
    let (n, c) = (plan.input().len(), plan.classes);
    let rows = seeds.rows(c);
    let (mut log_probs, mut jacobian) = (vec![0f32; points * c], vec![0f32; points * rows * n]);
    if points == 1 {
        jacobian_into(plan, inputs, 1, scale, seeds, Threads::Bands, (&mut log_probs, &mut jacobian));
        return (log_probs, jacobian);
    }
    let sub_batches = bands(points, rayon::current_num_threads() * SUB_BATCHES_PER_THREAD, 1);
    let outputs =
        split_runs(&mut log_probs, &sub_batches, c).into_iter().zip(split_runs(&mut jacobian, &sub_batches, rows * n));
    outputs.zip(&sub_batches).collect::<Vec<_>>().into_par_iter().for_each(|(out, run)| {
        let inputs = &inputs[run.start * n..run.end * n];
        jacobian_into(plan, inputs, run.len(), scale, seeds.of(run), Threads::Caller, out)
    });
    (log_probs, jacobian)
}

/// [`jacobian`] of some points on the given threads, into `(log p, J)`.
fn jacobian_into(
    plan: &Plan,
    inputs: &[f32],
    points: usize,
    scale: &[f32],
    seeds: Seeds,
    threads: Threads,
    out: (&mut [f32], &mut [f32]),
) {
    let pass = forward(plan, inputs, points, Purpose::Jacobian, threads);
    let reverse_weights: Vec<OnceLock<(Vec<f32>, usize)>> = plan.steps.iter().map(|_| OnceLock::new()).collect();
    let reverse = Reverse { plan, pass: &pass, reverse_weights: &reverse_weights, training: false };
    let (n, c, dims) = (plan.input().len(), plan.classes, plan.input());
    let rows = seeds.rows(c);
    let probs: Vec<f32> = pass.log_probs.iter().map(|l| l.exp()).collect();
    let (log_probs, jacobian) = out;
    log_probs.copy_from_slice(&pass.log_probs);
    let groups = match seeds {
        Seeds::Classes => class_groups(c),
        Seeds::Loss(_) => std::iter::once(0..1).collect(),
    };
    for group in groups {
        let k = group.len();
        let mut values = vec![0f32; points * k * c];
        for (b, p) in probs.chunks(c).enumerate() {
            for (row, class) in group.clone().enumerate() {
                for (j, p) in p.iter().enumerate() {
                    values[(b * k + row) * c + j] = match seeds {
                        Seeds::Classes => f32::from(u8::from(j == class)) - p,
                        Seeds::Loss(labels) => p - f32::from(u8::from(j == labels[b])),
                    };
                }
            }
        }
        let (input_grad, _) = reverse.run(Grad::dense(values), Rows::batch(points, k, threads));
        for b in 0..points {
            for (row, class) in group.clone().enumerate() {
                let out = &mut jacobian[(b * rows + class) * n..][..n];
                to_channel_first(&input_grad[(b * k + row) * n..][..n], dims, out);
                for (channel, values) in out.chunks_mut(dims.plane()).enumerate() {
                    values.iter_mut().for_each(|v| *v /= scale[channel]);
                }
            }
        }
    }
}
