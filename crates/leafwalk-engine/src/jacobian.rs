//! The input Jacobian of log-softmax for every class at once: one forward pass for a batch of
//! points, then the seeds `e_i − p` of a group of classes pushed back through the steps
//! together ([`crate::reverse`]). A point's J is the same bit for bit in any batch and on any
//! number of threads.

use std::sync::OnceLock;

use crate::forward::{forward, to_channel_first, Purpose, Threads};
use crate::kernels::{bands, MAX_GROUP};
use crate::plan::Plan;
use crate::reverse::{Grad, Reverse, Rows};

/// The classes in groups of at most [`MAX_GROUP`], as even as possible.
pub(crate) fn class_groups(classes: usize) -> Vec<std::ops::Range<usize>> {
    bands(classes, classes.div_ceil(MAX_GROUP), 1)
}

/// log p `[B][C]` and J `[B][C][n]` (channel-first input order) of `points` normalised inputs,
/// J divided by `scale[channel]` (the normalisation's σ for J in pixels; ones otherwise).
pub(crate) fn jacobian(plan: &Plan, inputs: &[f32], points: usize, scale: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let threads = if points > 1 { Threads::Points } else { Threads::Bands };
    let pass = forward(plan, inputs, points, Purpose::Jacobian, threads);
    let reverse_weights: Vec<OnceLock<(Vec<f32>, usize)>> = plan.steps.iter().map(|_| OnceLock::new()).collect();
    let reverse = Reverse { plan, pass: &pass, reverse_weights: &reverse_weights, training: false };
    let (n, c, dims) = (plan.input().len(), plan.classes, plan.input());
    let probs: Vec<f32> = pass.log_probs.iter().map(|l| l.exp()).collect();
    let mut jacobian = vec![0f32; points * c * n];
    for group in class_groups(c) {
        let k = group.len();
        let mut seeds = vec![0f32; points * k * c];
        for (b, p) in probs.chunks(c).enumerate() {
            for (row, class) in group.clone().enumerate() {
                for (j, p) in p.iter().enumerate() {
                    seeds[(b * k + row) * c + j] = f32::from(u8::from(j == class)) - p;
                }
            }
        }
        let (input_grad, _) = reverse.run(Grad::dense(seeds), Rows::batch(points, k, threads));
        for b in 0..points {
            for (row, class) in group.clone().enumerate() {
                let out = &mut jacobian[(b * c + class) * n..][..n];
                to_channel_first(&input_grad[(b * k + row) * n..][..n], dims, out);
                for (channel, values) in out.chunks_mut(dims.plane()).enumerate() {
                    values.iter_mut().for_each(|v| *v /= scale[channel]);
                }
            }
        }
    }
    (pass.log_probs, jacobian)
}
