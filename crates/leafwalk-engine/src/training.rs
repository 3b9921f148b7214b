//! One training step's loss and parameter gradients: the mean negative log-likelihood of a
//! batch pushed back through the steps, batch norm in training mode.
//!
//! Linear layers are batch products; a convolution's weight gradient is the sum over points of
//! its im2col rows times the output gradient, summed over fixed runs of points in parallel and
//! then in order, so that a seeded run repeats exactly at a given batch size and thread count.

use leafwalk_models::description::Dims;
use rayon::prelude::*;

use crate::forward::{forward, Purpose, Saved, Threads};
use crate::kernels::{bands, col2im, im2col, matmul, matmul_parallel};
use crate::plan::{BatchNormStep, ConvStep, LinearStep, Plan, StepOp};
use crate::reverse::{
    scaled_by_channel, through_avg_pool, through_binary, through_constant, through_derivative, through_global_avg,
    through_max_pool, through_relayout,
};

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

/// Runs of points whose convolution gradients are summed in parallel, then in order.
const GRADIENT_RUNS: usize = 4;

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
    let mut result =
        TrainGradients { loss: loss / points.max(1) as f64, correct, gradients: Vec::new(), running: Vec::new() };
    let mut grads: Vec<Option<Vec<f32>>> = vec![None; plan.values.len()];
    grads[plan.output] = Some(seeds);
    for (index, step) in plan.steps.iter().enumerate().rev() {
        let Some(grad) = grads[step.output].take() else { continue };
        let dims: Vec<Dims> = step.inputs.iter().map(|&v| plan.values[v]).collect();
        let out_dims = plan.values[step.output];
        let x = pass.values[step.inputs[0]].as_deref().unwrap_or(&[]);
        // The network input needs no gradient.
        let wants_input = step.inputs[0] != 0;
        let saved = &pass.saved[index];
        let (input, n_in, n_out) = (dims[0], dims[0].len(), out_dims.len());
        let contributions: Vec<Vec<f32>> = match &step.op {
            StepOp::Conv(conv) => vec![conv_reverse(conv, x, &grad, points, wants_input, &mut result.gradients)],
            StepOp::Linear(linear) => vec![linear_reverse(linear, x, &grad, points, &mut result.gradients)],
            StepOp::BatchNorm(norm) => vec![batch_norm_reverse(norm, saved, grad, input, &mut result)],
            StepOp::Affine { scale, .. } => {
                let mut g = grad;
                scaled_by_channel(&mut g, scale, input.channels);
                vec![g]
            }
            StepOp::Activation(_) => {
                let mut g = grad;
                if let Saved::Derivative { values, .. } = saved {
                    through_derivative(&mut g, values, n_in, 1);
                }
                vec![g]
            }
            StepOp::MaxPool(_) => match saved {
                Saved::Winners(winners) => vec![through_max_pool(&grad, winners, n_in, n_out, 1)],
                _ => unreachable!("max-pool keeps its winners in training"),
            },
            StepOp::AvgPool(pool) => vec![through_avg_pool(&grad, pool, input, out_dims)],
            StepOp::GlobalAvgPool => vec![through_global_avg(&grad, input)],
            StepOp::Flatten | StepOp::Reshape => vec![through_relayout(&grad, input, out_dims)],
            StepOp::Binary(arith) => {
                let (first, second) = through_binary(*arith, &grad, saved, &dims, 1);
                vec![first, second]
            }
            StepOp::Constant { arith, values, constant_first } => {
                let mut g = grad;
                through_constant(*arith, values, *constant_first, &mut g, saved, input, 1);
                vec![g]
            }
            StepOp::Identity => vec![grad],
        };
        for (&v, contribution) in step.inputs.iter().zip(contributions) {
            if v == 0 || contribution.is_empty() {
                continue;
            }
            match &mut grads[v] {
                Some(existing) => existing.iter_mut().zip(&contribution).for_each(|(a, b)| *a += b),
                slot => *slot = Some(contribution),
            }
        }
    }
    result
}

/// The weight and bias gradients of a convolution, and its input's gradient when wanted.
fn conv_reverse(
    conv: &ConvStep,
    x: &[f32],
    grad: &[f32],
    points: usize,
    wants_input: bool,
    gradients: &mut Vec<(String, Vec<f32>)>,
) -> Vec<f32> {
    let shape = conv.shape;
    let (positions, patch, cout, cout_g) = (shape.positions(), shape.patch(), conv.conv.out_channels, conv.group_out());
    let (n_in, n_out) = (shape.input.iter().product::<usize>(), positions * cout);
    let groups = conv.conv.groups;
    // Per run of points: Σ im2colᵀ · grad for each group, in the forward kernel's layout.
    let runs = bands(points, GRADIENT_RUNS, 1);
    let partial = |run: &std::ops::Range<usize>| {
        let mut weight = vec![0f32; conv.forward.len()];
        let mut cols = vec![0f32; positions * patch];
        for b in run.clone() {
            let (x, g) = (&x[b * n_in..][..n_in], &grad[b * n_out..][..n_out]);
            for group in 0..groups {
                let a: &[f32] = if shape.is_pointwise() {
                    x
                } else {
                    im2col(&shape, x, group * shape.group_in, 0..positions, &mut cols);
                    &cols
                };
                let dw = &mut weight[group * patch * cout_g..][..patch * cout_g];
                matmul((patch, cout_g, positions), (dw, cout_g), (a, 1, patch), (&g[group * cout_g..], cout, 1), true);
            }
        }
        weight
    };
    let partials: Vec<Vec<f32>> = runs.par_iter().map(partial).collect();
    let mut weight = vec![0f32; conv.forward.len()];
    for p in &partials {
        weight.iter_mut().zip(p).for_each(|(w, v)| *w += v);
    }
    gradients.push((conv.weight_name.clone(), conv.to_pytorch_layout(&weight)));
    if let Some(name) = &conv.bias_name {
        let mut bias = vec![0f32; cout];
        for position in grad.chunks(cout) {
            bias.iter_mut().zip(position).for_each(|(b, g)| *b += g);
        }
        gradients.push((name.clone(), bias));
    }
    if !wants_input {
        return Vec::new();
    }
    let mut back = vec![0f32; points * n_in];
    back.par_chunks_mut(n_in).zip(grad.par_chunks(n_out)).for_each(|(back, g)| {
        let mut cols = vec![0f32; positions * patch];
        for group in 0..groups {
            let kernel = &conv.forward[group * patch * cout_g..][..patch * cout_g];
            matmul(
                (positions, patch, cout_g),
                (&mut cols, patch),
                (&g[group * cout_g..], cout, 1),
                (kernel, 1, cout_g),
                false,
            );
            col2im(&shape, &cols, group * shape.group_in, 0..positions, back);
        }
    });
    back
}

fn linear_reverse(
    linear: &LinearStep,
    x: &[f32],
    grad: &[f32],
    points: usize,
    gradients: &mut Vec<(String, Vec<f32>)>,
) -> Vec<f32> {
    let (n_in, n_out) = (linear.inputs, linear.outputs);
    let mut weight = vec![0f32; n_out * n_in];
    matmul_parallel((n_out, n_in, points), (&mut weight, n_in), (grad, 1, n_out), (x, n_in, 1), false);
    gradients.push((linear.weight_name.clone(), weight));
    if let Some(name) = &linear.bias_name {
        let mut bias = vec![0f32; n_out];
        for row in grad.chunks(n_out) {
            bias.iter_mut().zip(row).for_each(|(b, g)| *b += g);
        }
        gradients.push((name.clone(), bias));
    }
    let mut back = vec![0f32; points * n_in];
    matmul_parallel((points, n_in, n_out), (&mut back, n_in), (grad, n_out, 1), (&linear.weight, n_in, 1), false);
    back
}

/// Training-mode batch norm: the gradients of its weight and bias, of its input, and its new
/// running averages (momentum-weighted, the unbiased batch variance, as PyTorch).
fn batch_norm_reverse(
    norm: &BatchNormStep,
    saved: &Saved,
    grad: Vec<f32>,
    input: Dims,
    result: &mut TrainGradients,
) -> Vec<f32> {
    let Saved::BatchNorm { normalised, inv_std, mean, var } = saved else {
        unreachable!("training batch norm keeps its statistics")
    };
    let c = input.channels;
    let count = grad.len() / c;
    let (mut sum_g, mut sum_gx) = (vec![0f64; c], vec![0f64; c]);
    for (e, (g, n)) in grad.iter().zip(normalised).enumerate() {
        sum_g[e % c] += *g as f64;
        sum_gx[e % c] += (*g * *n) as f64;
    }
    let name = |leaf: &str| format!("{}.{leaf}", norm.name);
    result.gradients.push((name("weight"), sum_gx.iter().map(|&v| v as f32).collect()));
    result.gradients.push((name("bias"), sum_g.iter().map(|&v| v as f32).collect()));
    let m = norm.norm.momentum as f32;
    let unbiased = count as f32 / (count as f32 - 1.0).max(1.0);
    result
        .running
        .push((name("running_mean"), norm.running_mean.iter().zip(mean).map(|(r, b)| (1.0 - m) * r + m * b).collect()));
    result.running.push((
        name("running_var"),
        norm.running_var.iter().zip(var).map(|(r, v)| (1.0 - m) * r + m * v * unbiased).collect(),
    ));
    let n = count as f32;
    grad.iter()
        .zip(normalised)
        .enumerate()
        .map(|(e, (g, x_hat))| {
            let ch = e % c;
            norm.weight[ch] * inv_std[ch] / n * (n * g - sum_g[ch] as f32 - x_hat * sum_gx[ch] as f32)
        })
        .collect()
}
