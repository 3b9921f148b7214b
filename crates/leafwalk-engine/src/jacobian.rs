//! The input Jacobian of log-softmax for every class at once: one forward pass per point, then
//! the seeds `e_i − p` of a group of classes pushed back through the steps together.
//!
//! The reverse pass carries each value's gradient for K classes (`[K][H][W][C]`) and, where it
//! is known, its *support*: the units that can carry gradient at all, the same for every class
//! (after a ReLU, the units it let through; after a max-pool, the winners). A convolution or
//! linear layer whose output gradient is sparse enough is reversed over its active units only,
//! by register-blocked gathers; a dense one by `gemm` and col2im. Everything a point computes
//! depends on that point and the layer shapes alone, so a point's J is the same bit for bit in
//! any batch and on any number of threads.

use std::sync::OnceLock;

use leafwalk_models::description::{Arith, Dims};
use rayon::prelude::*;

use crate::forward::{forward, to_channel_first, Forward, Purpose, Saved, Threads};
use crate::kernels::{bands, col2im, conv_gather, dispatch_classes, matmul, rows_gather, ActiveUnits, MAX_GROUP};
use crate::plan::{ConvStep, LinearStep, Plan, StepOp};
use crate::reverse::{
    scaled_by_channel, through_avg_pool, through_binary, through_constant, through_derivative, through_global_avg,
    through_max_pool, through_relayout,
};

/// A gradient for K classes and the units it can be nonzero at.
struct Grad {
    /// `[K][value length]`.
    values: Vec<f32>,
    /// Per unit of the value (class-independent); `None` where every unit may carry gradient.
    support: Option<Vec<bool>>,
}

impl Grad {
    /// Adds another contribution to the same value.
    fn add(&mut self, other: Grad) {
        for (a, b) in self.values.iter_mut().zip(&other.values) {
            *a += b;
        }
        self.support = match (self.support.take(), other.support) {
            (Some(mut a), Some(b)) => {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a |= b);
                Some(a)
            }
            _ => None,
        };
    }
}

/// A compiled plan with what the reverse pass builds once per call (the convolutions' kernels
/// rearranged for the sparse gather).
pub(crate) struct JacobianPass<'p, 'w> {
    plan: &'p Plan<'w>,
    reverse_weights: Vec<OnceLock<(Vec<f32>, usize)>>,
}

/// The relative cost of a sparse gather term to a dense `gemm` term: the gather is chosen when
/// `active units × padded input channels × this < positions × outputs × input channels`.
const GATHER_COST: usize = 2;

impl<'p, 'w> JacobianPass<'p, 'w> {
    pub(crate) fn new(plan: &'p Plan<'w>) -> Self {
        JacobianPass { plan, reverse_weights: (0..plan.steps.len()).map(|_| OnceLock::new()).collect() }
    }

    /// log p `[B][C]` and J `[B][C][n]` (channel-first input order, normalised coordinates) of
    /// `points` normalised inputs.
    pub(crate) fn run(&self, inputs: &[f32], points: usize) -> (Vec<f32>, Vec<f32>) {
        let (n, c) = (self.plan.input().len(), self.plan.classes);
        let mut log_probs = vec![0f32; points * c];
        let mut jacobian = vec![0f32; points * c * n];
        let one = |(x, (lp, j)): (&[f32], (&mut [f32], &mut [f32])), threads: Threads| {
            let (point_lp, point_j) = self.point(x, threads);
            lp.copy_from_slice(&point_lp);
            j.copy_from_slice(&point_j);
        };
        if points > 1 {
            inputs
                .par_chunks(n)
                .zip(log_probs.par_chunks_mut(c).zip(jacobian.par_chunks_mut(c * n)))
                .for_each(|item| one(item, Threads::Caller));
        } else {
            inputs
                .chunks(n)
                .zip(log_probs.chunks_mut(c).zip(jacobian.chunks_mut(c * n)))
                .for_each(|item| one(item, Threads::Bands));
        }
        (log_probs, jacobian)
    }

    /// One point: log p `[C]` and J `[C][n]`.
    fn point(&self, x: &[f32], threads: Threads) -> (Vec<f32>, Vec<f32>) {
        let pass = forward(self.plan, x, 1, Purpose::Jacobian, threads);
        let (n, c) = (self.plan.input().len(), self.plan.classes);
        let probs: Vec<f32> = pass.log_probs.iter().map(|l| l.exp()).collect();
        let mut jacobian = vec![0f32; c * n];
        for group in class_groups(c) {
            let k = group.len();
            let mut seeds = vec![0f32; k * c];
            for (row, class) in group.clone().enumerate() {
                for (j, p) in probs.iter().enumerate() {
                    seeds[row * c + j] = f32::from(u8::from(j == class)) - p;
                }
            }
            let input_grad = self.reverse(&pass, Grad { values: seeds, support: None }, k, threads);
            let dims = self.plan.input();
            for (row, class) in group.enumerate() {
                to_channel_first(&input_grad[row * n..][..n], dims, &mut jacobian[class * n..][..n]);
            }
        }
        (pass.log_probs, jacobian)
    }

    /// Pushes the logits' gradient for K classes back to the input (`[K][H][W][C]`).
    fn reverse(&self, pass: &Forward, seeds: Grad, k: usize, threads: Threads) -> Vec<f32> {
        let plan = self.plan;
        let mut grads: Vec<Option<Grad>> = (0..plan.values.len()).map(|_| None).collect();
        grads[plan.output] = Some(seeds);
        for (index, step) in plan.steps.iter().enumerate().rev() {
            let Some(grad) = grads[step.output].take() else { continue };
            let dims: Vec<Dims> = step.inputs.iter().map(|&v| plan.values[v]).collect();
            let out_dims = plan.values[step.output];
            let contributions = self.step_reverse(index, &pass.saved[index], grad, &dims, out_dims, k, threads);
            for (&v, contribution) in step.inputs.iter().zip(contributions) {
                match &mut grads[v] {
                    Some(existing) => existing.add(contribution),
                    slot => *slot = Some(contribution),
                }
            }
        }
        grads[0].take().map(|g| g.values).unwrap_or_else(|| vec![0.0; k * plan.input().len()])
    }

    #[allow(clippy::too_many_arguments)]
    fn step_reverse(
        &self,
        index: usize,
        saved: &Saved,
        grad: Grad,
        dims: &[Dims],
        out_dims: Dims,
        k: usize,
        threads: Threads,
    ) -> Vec<Grad> {
        let step = &self.plan.steps[index];
        let (input, n_in, n_out) = (dims[0], dims[0].len(), out_dims.len());
        let channels = input.channels;
        match &step.op {
            StepOp::Conv(conv) => vec![self.conv_reverse(index, conv, grad, k, threads)],
            StepOp::Linear(linear) => vec![linear_reverse(linear, grad, k, threads)],
            StepOp::Affine { scale, .. } => vec![by_channel(grad, scale, channels)],
            StepOp::BatchNorm(norm) => vec![by_channel(grad, &norm.eval_affine().0, channels)],
            StepOp::Activation(_) => {
                let Saved::Derivative { values: derivative, gates } = saved else { return vec![grad] };
                let Grad { mut values, support } = grad;
                through_derivative(&mut values, derivative, n_in, k);
                let support = match gates {
                    true => {
                        let mut s = support.unwrap_or_else(|| vec![true; n_in]);
                        s.iter_mut().zip(derivative).for_each(|(s, d)| *s &= *d != 0.0);
                        Some(s)
                    }
                    false => support,
                };
                vec![Grad { values, support }]
            }
            StepOp::MaxPool(_) => {
                let Saved::Winners(winners) = saved else { unreachable!("max-pool keeps its winners") };
                let mut support = vec![false; n_in];
                for (e, &w) in winners.iter().enumerate() {
                    if grad.support.as_ref().is_none_or(|s| s[e]) {
                        support[w as usize] = true;
                    }
                }
                let values = through_max_pool(&grad.values, winners, n_in, n_out, k);
                vec![Grad { values, support: Some(support) }]
            }
            StepOp::AvgPool(pool) => vec![dense(through_avg_pool(&grad.values, pool, input, out_dims))],
            StepOp::GlobalAvgPool => vec![dense(through_global_avg(&grad.values, input))],
            StepOp::Flatten | StepOp::Reshape => vec![dense(through_relayout(&grad.values, input, out_dims))],
            StepOp::Binary(arith) => {
                let (first, second) = through_binary(*arith, &grad.values, saved, dims, k);
                // A sum or difference passes the support on; a product or quotient may not.
                let support = grad.support.filter(|_| matches!(arith, Arith::Add | Arith::Sub));
                let second_support = support.clone().filter(|_| dims[1] == dims[0]);
                vec![Grad { values: first, support }, Grad { values: second, support: second_support }]
            }
            StepOp::Constant { arith, values: constants, constant_first } => {
                let Grad { mut values, support } = grad;
                through_constant(*arith, constants, *constant_first, &mut values, saved, input, k);
                vec![Grad { values, support }]
            }
            StepOp::Identity => vec![grad],
        }
    }

    fn conv_reverse(&self, index: usize, conv: &ConvStep, grad: Grad, k: usize, threads: Threads) -> Grad {
        let shape = conv.shape;
        let [height, width, channels] = shape.input;
        let (positions, cout) = (shape.positions(), conv.conv.out_channels);
        let n_in = height * width * channels;
        if let (Some(support), 1) = (&grad.support, conv.conv.groups) {
            let active = support.iter().filter(|&&s| s).count();
            let padded = channels.div_ceil(crate::kernels::CHANNEL_PAD) * crate::kernels::CHANNEL_PAD;
            if active * padded * GATHER_COST < positions * cout * channels {
                let units = ActiveUnits::gather(&grad.values, support, positions, cout, k);
                let (weights, padded) = self.reverse_weights[index].get_or_init(|| conv.reverse_weights());
                let row_bands = bands(height, if active * shape.taps() * padded * k >= 1 << 20 { 4 } else { 1 }, 1);
                let gather = |rows: &std::ops::Range<usize>| {
                    let mut out = vec![0f32; k * rows.len() * width * channels];
                    dispatch_classes!(k, conv_gather(&shape, &units, weights, *padded, rows.clone(), &mut out));
                    out
                };
                let parts: Vec<Vec<f32>> = match threads {
                    Threads::Bands => row_bands.par_iter().map(gather).collect(),
                    _ => row_bands.iter().map(gather).collect(),
                };
                let mut values = vec![0f32; k * n_in];
                for (rows, part) in row_bands.iter().zip(&parts) {
                    let band = rows.len() * width * channels;
                    for class in 0..k {
                        values[class * n_in + rows.start * width * channels..][..band]
                            .copy_from_slice(&part[class * band..][..band]);
                    }
                }
                return Grad { values, support: None };
            }
        }
        // Dense: per class, the gradient rows times the kernel, then col2im.
        let (cout_g, patch) = (conv.group_out(), shape.patch());
        let class_input = |g: &[f32]| {
            let mut back = vec![0f32; n_in];
            let mut cols = vec![0f32; positions * patch];
            for group in 0..conv.conv.groups {
                let kernel = &conv.forward[group * patch * cout_g..][..patch * cout_g];
                let a = (&g[group * cout_g..], cout, 1);
                matmul((positions, patch, cout_g), (&mut cols, patch), a, (kernel, 1, cout_g), false);
                col2im(&shape, &cols, group * shape.group_in, 0..positions, &mut back);
            }
            back
        };
        let rows: Vec<Vec<f32>> = match threads {
            Threads::Bands => grad.values.par_chunks(positions * cout).map(class_input).collect(),
            _ => grad.values.chunks(positions * cout).map(class_input).collect(),
        };
        Grad { values: rows.concat(), support: None }
    }
}

/// The classes in groups of at most [`MAX_GROUP`], as even as possible.
pub(crate) fn class_groups(classes: usize) -> Vec<std::ops::Range<usize>> {
    let groups = classes.div_ceil(MAX_GROUP);
    bands(classes, groups, 1)
}

fn linear_reverse(linear: &LinearStep, grad: Grad, k: usize, threads: Threads) -> Grad {
    let (n_in, n_out) = (linear.inputs, linear.outputs);
    let rows: Vec<u32> = match &grad.support {
        Some(s) => (0..n_out as u32).filter(|&r| s[r as usize]).collect(),
        None => (0..n_out as u32).collect(),
    };
    let coefficients: Vec<f32> = rows
        .iter()
        .flat_map(|&r| (0..k).map(move |class| (class, r)))
        .map(|(class, r)| grad.values[class * n_out + r as usize])
        .collect();
    let parts = if rows.len() * n_in * k >= 1 << 20 { 4 } else { 1 };
    let column_bands = bands(n_in, parts, 16);
    let gather = |columns: &std::ops::Range<usize>| {
        let mut out = vec![0f32; k * columns.len()];
        dispatch_classes!(k, rows_gather(&linear.weight, n_in, &rows, &coefficients, columns.clone(), &mut out));
        out
    };
    let parts: Vec<Vec<f32>> = match threads {
        Threads::Bands => column_bands.par_iter().map(gather).collect(),
        _ => column_bands.iter().map(gather).collect(),
    };
    let mut values = vec![0f32; k * n_in];
    for (columns, part) in column_bands.iter().zip(&parts) {
        for class in 0..k {
            values[class * n_in + columns.start..][..columns.len()]
                .copy_from_slice(&part[class * columns.len()..][..columns.len()]);
        }
    }
    Grad { values, support: None }
}

fn by_channel(grad: Grad, scale: &[f32], channels: usize) -> Grad {
    let Grad { mut values, support } = grad;
    scaled_by_channel(&mut values, scale, channels);
    Grad { values, support }
}

fn dense(values: Vec<f32>) -> Grad {
    Grad { values, support: None }
}
