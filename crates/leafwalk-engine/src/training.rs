//! One training step's loss and parameter gradients: the mean negative log-likelihood of a
//! batch pushed back through the steps ([`crate::reverse`], one row per point), batch norm in
//! training mode. A seeded run repeats exactly at a given batch size and thread count.

use std::sync::OnceLock;

use crate::forward::{forward, Purpose, Saved, Threads};
use crate::plan::{Plan, StepOp};
use crate::reverse::{Grad, Reverse, Rows};

/// The result of [`nll_gradients`].
pub(crate) struct TrainGradients {
    /// Mean NLL of the batch.
    pub(crate) loss: f64,
    /// Points whose most probable class is their label.
    pub(crate) correct: usize,
    /// Per parameter (PyTorch names and layouts).
    pub(crate) gradients: Vec<(String, Vec<f32>)>,
    /// Batch norm's new running averages, by tensor name.
    pub(crate) running: Vec<(String, Vec<f32>)>,
}

/// Loss and gradients of `points` normalised inputs (`[point][C][H][W]`) with `labels`.
pub(crate) fn nll_gradients(plan: &Plan, inputs: &[f32], points: usize, labels: &[usize]) -> TrainGradients {
    let pass = forward(plan, inputs, points, Purpose::Train, Threads::Points);
    let c = plan.classes;
    let (mut loss, mut correct) = (0f64, 0);
    // ∂ mean NLL / ∂ logits = (p − e_label) / B.
    let mut seeds = vec![0f32; points * c];
    for (b, (&label, log_probs)) in labels.iter().zip(pass.log_probs.chunks(c)).enumerate() {
        loss -= log_probs[label] as f64;
        let best = (0..c).fold(0, |best, j| if log_probs[j] > log_probs[best] { j } else { best });
        correct += usize::from(best == label);
        for (j, d) in seeds[b * c..][..c].iter_mut().enumerate() {
            *d = (log_probs[j].exp() - f32::from(u8::from(j == label))) / points as f32;
        }
    }
    let reverse_weights: Vec<OnceLock<(Vec<f32>, usize)>> = plan.steps.iter().map(|_| OnceLock::new()).collect();
    let reverse = Reverse { plan, pass: &pass, reverse_weights: &reverse_weights, training: true };
    let (_, gradients) = reverse.run(Grad::dense(seeds), Rows::batch(points, 1, Threads::Points));
    TrainGradients {
        loss: loss / points.max(1) as f64,
        correct,
        gradients,
        running: running_statistics(plan, &pass.saved),
    }
}

/// Batch norm's running averages after this batch: momentum-weighted, the unbiased batch
/// variance, as PyTorch.
fn running_statistics(plan: &Plan, saved: &[Saved]) -> Vec<(String, Vec<f32>)> {
    let mut running = Vec::new();
    for (step, saved) in plan.steps.iter().zip(saved) {
        let (StepOp::BatchNorm(norm), Saved::BatchNorm { mean, var, count, .. }) = (&step.op, saved) else { continue };
        let m = norm.norm.momentum as f32;
        let unbiased = *count as f32 / (*count as f32 - 1.0).max(1.0);
        let name = |leaf: &str| format!("{}.{leaf}", norm.name);
        running.push((
            name("running_mean"),
            norm.running_mean.iter().zip(mean).map(|(r, b)| (1.0 - m) * r + m * b).collect(),
        ));
        let var = norm.running_var.iter().zip(var).map(|(r, v)| (1.0 - m) * r + m * v * unbiased).collect();
        running.push((name("running_var"), var));
    }
    running
}
