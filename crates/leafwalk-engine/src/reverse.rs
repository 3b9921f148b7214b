//! The reverse pass, shared by the Jacobian (rows = the K classes of each point, seeds `e_i −
//! p`) and training (rows = one loss per point, parameter gradients wanted).
//!
//! A gradient is `[point][K][value]`, and comes with its *support* where that is known: the
//! units of each point that can carry gradient at all, the same for every row of the point
//! (after a ReLU, the units it let through; after a max-pool, the winners). Convolutions and
//! linear layers ([`crate::layers`]) use it to visit only the active units. Everything a point
//! computes depends on that point and the layer shapes alone, so its rows round the same in any
//! batch — except in training, where batch norm couples the points.

use std::sync::OnceLock;

use leafwalk_models::description::{Arith, Dims};
use rayon::prelude::*;

use crate::forward::{to_channel_first, to_channel_last, Forward, Saved, Threads};
use crate::layers::{conv_backward, linear_backward, Gradients};
use crate::plan::{AvgPoolStep, BatchNormStep, Plan, StepOp};

/// A gradient for some points and K rows each, and the units it can be nonzero at.
pub(crate) struct Grad {
    /// `[point][K][value length]` (empty when the gradient is `listed`).
    pub(crate) values: Vec<f32>,
    /// `[point][value length]`, the same for all K rows of a point; `None`: every unit may carry
    /// gradient.
    pub(crate) support: Option<Vec<bool>>,
    /// Per point, the units that carry gradient listed with their values instead of a dense
    /// `values` — what a max-pool hands back: its winners, a quarter of its input or less.
    pub(crate) listed: Option<Vec<Listed>>,
}

/// One point's gradient as a list of units (in no particular order; a unit listed twice has the
/// sum of its entries) and their K rows' values, `[entry][K]`.
#[derive(Clone)]
pub(crate) struct Listed {
    pub(crate) units: Vec<u32>,
    pub(crate) values: Vec<f32>,
}

impl Grad {
    pub(crate) fn dense(values: Vec<f32>) -> Self {
        Grad { values, support: None, listed: None }
    }

    /// The dense form (`len` values per row, K rows per point), with the listed units as its
    /// support.
    pub(crate) fn densify(self, k: usize, len: usize) -> Grad {
        let Some(listed) = self.listed else { return self };
        let (mut values, mut support) = (vec![0f32; listed.len() * k * len], vec![false; listed.len() * len]);
        for (b, point) in listed.iter().enumerate() {
            for (&unit, entry) in point.units.iter().zip(point.values.chunks_exact(k)) {
                support[b * len + unit as usize] = true;
                for (row, &v) in entry.iter().enumerate() {
                    values[(b * k + row) * len + unit as usize] += v;
                }
            }
        }
        Grad { values, support: Some(support), listed: None }
    }

    /// Point `b`'s part (`len` values per row, K rows per point).
    pub(crate) fn point(&self, b: usize, k: usize, len: usize) -> Grad {
        match &self.listed {
            Some(listed) => Grad { values: Vec::new(), support: None, listed: Some(vec![listed[b].clone()]) },
            None => Grad {
                values: self.values[b * k * len..][..k * len].to_vec(),
                support: self.support.as_ref().map(|s| s[b * len..][..len].to_vec()),
                listed: None,
            },
        }
    }

    /// Adds another contribution to the same value (both dense: see [`Grad::densify`]).
    fn add(&mut self, other: Grad) {
        match self.values.len() >= PARALLEL_VALUES {
            true => self.values.par_iter_mut().zip(&other.values).for_each(|(a, b)| *a += b),
            false => self.values.iter_mut().zip(&other.values).for_each(|(a, b)| *a += b),
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

/// Element-wise work at least this large runs on rayon's threads (a training batch's layer);
/// smaller (one point's, inside a parallel loop already) stays on the caller's.
pub(crate) const PARALLEL_VALUES: usize = 1 << 16;

/// Which points a reverse step runs for, how many rows each has, and on what threads.
#[derive(Clone, Copy)]
pub(crate) struct Rows {
    pub(crate) points: usize,
    pub(crate) k: usize,
    pub(crate) threads: Threads,
    /// For a one-point continuation of a batch pass: which point of the forward's `batch`.
    pub(crate) point: Option<usize>,
    pub(crate) batch: usize,
}

impl Rows {
    pub(crate) fn batch(points: usize, k: usize, threads: Threads) -> Self {
        Rows { points, k, threads, point: None, batch: points }
    }

    /// This rows' part of something the forward kept for the whole batch (`[point][…]`).
    pub(crate) fn own<'v, T>(&self, values: &'v [T]) -> &'v [T] {
        match self.point {
            Some(b) => {
                let len = values.len() / self.batch;
                &values[b * len..][..len]
            }
            None => values,
        }
    }
}

/// Largest incoming gradient (values per point, all K rows) a Jacobian's reverse step runs for
/// the whole batch at once; from the first larger one on, each point continues alone.
const HEAD_LIMIT: usize = 1 << 14;

/// One reverse pass over a plan and its forward.
pub(crate) struct Reverse<'r, 'p, 'w> {
    pub(crate) plan: &'p Plan<'w>,
    pub(crate) pass: &'r Forward,
    /// Each convolution's kernel as the sparse gather reads it, built once per call.
    pub(crate) reverse_weights: &'r [OnceLock<(Vec<f32>, usize)>],
    /// Training: parameter gradients wanted, batch norm in training mode, the input's own
    /// gradient not.
    pub(crate) training: bool,
}

impl Reverse<'_, '_, '_> {
    /// Pushes `seeds` (the logits' gradient) back: the input's gradient `[point][K][H][W][C]`
    /// (empty in training) and the parameter gradients (training only).
    ///
    /// For the Jacobian, steps whose incoming gradient is small (the head: linear layers,
    /// global pooling) run for the whole batch, so each weight is read once, and from the first
    /// large one on each point continues alone, its gradients staying in cache. Training runs
    /// every step for the whole batch (batch norm couples the points).
    pub(crate) fn run(&self, seeds: Grad, rows: Rows) -> (Vec<f32>, Gradients) {
        let plan = self.plan;
        let mut grads: Vec<Option<Grad>> = (0..plan.values.len()).map(|_| None).collect();
        grads[plan.output] = Some(seeds);
        let mut parameters = Gradients::new();
        let mut steps = (0..plan.steps.len()).rev().peekable();
        while let Some(&index) = steps.peek() {
            let large = rows.k * plan.values[plan.steps[index].output].len() > HEAD_LIMIT;
            if !self.training && rows.points > 1 && large {
                break;
            }
            steps.next();
            self.step_into(index, &mut grads, rows, &mut parameters);
        }
        let Some(&first_alone) = steps.peek() else {
            return (self.input_grad(&mut grads, rows), parameters);
        };
        let n = plan.input().len();
        let mut input = vec![0f32; rows.points * rows.k * n];
        let continue_point = |(b, out): (usize, &mut [f32])| {
            let mut own: Vec<Option<Grad>> = grads
                .iter()
                .zip(&plan.values)
                .map(|(g, dims)| g.as_ref().map(|g| g.point(b, rows.k, dims.len())))
                .collect();
            let single = Rows { points: 1, k: rows.k, threads: Threads::Caller, point: Some(b), batch: rows.batch };
            let mut unused = Gradients::new();
            for index in (0..=first_alone).rev() {
                self.step_into(index, &mut own, single, &mut unused);
            }
            out.copy_from_slice(&self.input_grad(&mut own, single));
        };
        match rows.threads {
            Threads::Caller => input.chunks_mut(rows.k * n).enumerate().for_each(continue_point),
            _ => input.par_chunks_mut(rows.k * n).enumerate().for_each(continue_point),
        }
        (input, parameters)
    }

    fn input_grad(&self, grads: &mut [Option<Grad>], rows: Rows) -> Vec<f32> {
        if self.training {
            return Vec::new();
        }
        let n = self.plan.input().len();
        grads[0].take().map(|g| g.densify(rows.k, n).values).unwrap_or_else(|| vec![0.0; rows.points * rows.k * n])
    }

    /// Runs step `index` backward, adding its contributions to its inputs' gradients.
    fn step_into(&self, index: usize, grads: &mut [Option<Grad>], rows: Rows, parameters: &mut Gradients) {
        let step = &self.plan.steps[index];
        let Some(grad) = grads[step.output].take() else { return };
        let contributions = self.step(index, grad, rows, parameters);
        for (&v, contribution) in step.inputs.iter().zip(contributions) {
            // Training never needs the input's gradient.
            let (Some(contribution), false) = (contribution, self.training && v == 0) else { continue };
            let len = self.plan.values[v].len();
            grads[v] = Some(match grads[v].take() {
                Some(existing) => {
                    let mut sum = existing.densify(rows.k, len);
                    sum.add(contribution.densify(rows.k, len));
                    sum
                }
                None => contribution,
            });
        }
    }

    /// The gradients of one step's inputs (`None` where not wanted).
    fn step(&self, index: usize, grad: Grad, rows: Rows, parameters: &mut Gradients) -> Vec<Option<Grad>> {
        let plan = self.plan;
        let step = &plan.steps[index];
        let saved = &self.pass.saved[index];
        let dims: Vec<Dims> = step.inputs.iter().map(|&v| plan.values[v]).collect();
        let (input, output) = (dims[0], plan.values[step.output]);
        let (n_in, n_out, k, channels) = (input.len(), output.len(), rows.k, input.channels);
        let wants_input = !(self.training && step.inputs[0] == 0);
        // Activations and convolutions take a listed gradient as it is; the rest want it dense.
        let grad = match step.op {
            StepOp::Activation(_) | StepOp::Conv(_) => grad,
            _ => grad.densify(k, n_out),
        };
        match &step.op {
            StepOp::Conv(conv) => {
                let x = self.pass.values.get(step.inputs[0]).and_then(|v| v.as_deref());
                let weights = &self.reverse_weights[index];
                vec![conv_backward(conv, weights, grad, x, rows, wants_input, self.training, parameters)]
            }
            StepOp::Linear(linear) => {
                let x = self.pass.values.get(step.inputs[0]).and_then(|v| v.as_deref());
                vec![linear_backward(linear, grad, x, rows, self.training, parameters)]
            }
            StepOp::Affine { scale, .. } => vec![Some(by_channel(grad, scale, channels))],
            StepOp::BatchNorm(norm) => match (self.training, saved) {
                (true, Saved::BatchNorm { normalised, inv_std, .. }) => {
                    vec![Some(batch_norm_backward(norm, normalised, inv_std, grad, channels, parameters))]
                }
                _ => vec![Some(by_channel(grad, &norm.eval_affine().0, channels))],
            },
            StepOp::Activation(_) if grad.listed.is_some() => {
                // Each listed unit's values times f'(z) at the unit; a ReLU drops the units it
                // switched off.
                let output = self.pass.values[step.output].as_deref().unwrap_or(&[]);
                let derivative = |b: usize, unit: usize| -> f32 {
                    match saved {
                        Saved::PositiveOutput => f32::from(u8::from(output[b * n_in + unit] > 0.0)),
                        Saved::Derivative { values, .. } => rows.own(values)[b * n_in + unit],
                        _ => 1.0,
                    }
                };
                let listed = grad.listed.unwrap_or_default();
                let scale = |(b, point): (usize, &Listed)| {
                    let mut out = Listed { units: Vec::with_capacity(point.units.len()), values: Vec::new() };
                    for (&unit, entry) in point.units.iter().zip(point.values.chunks_exact(k)) {
                        let d = derivative(b, unit as usize);
                        if d != 0.0 {
                            out.units.push(unit);
                            out.values.extend(entry.iter().map(|v| v * d));
                        }
                    }
                    out
                };
                let scaled = match rows.threads {
                    Threads::Points => listed.par_iter().enumerate().map(scale).collect(),
                    _ => listed.iter().enumerate().map(scale).collect(),
                };
                vec![Some(Grad { values: Vec::new(), support: None, listed: Some(scaled) })]
            }
            StepOp::Activation(_) if matches!(saved, Saved::PositiveOutput) => {
                let output = self.pass.values[step.output].as_deref().unwrap_or(&[]);
                let Grad { mut values, support, .. } = grad;
                let gate = |(row, y): (&mut [f32], &[f32])| {
                    row.iter_mut().zip(y).for_each(|(g, &y)| *g = if y > 0.0 { *g } else { 0.0 });
                };
                match rows.threads {
                    Threads::Points => values.par_chunks_mut(n_in).zip(output.par_chunks(n_in)).for_each(gate),
                    _ => values.chunks_mut(n_in).zip(output.chunks(n_in)).for_each(gate),
                }
                let support = support.map(|mut s| {
                    s.iter_mut().zip(output).for_each(|(s, &y)| *s &= y > 0.0);
                    s
                });
                let gates = output.iter().map(|&y| y > 0.0);
                let support = Some(support.unwrap_or_else(|| gates.collect()));
                vec![Some(Grad { values, support, listed: None })]
            }
            StepOp::Activation(_) => {
                let Saved::Derivative { values: derivative, gates } = saved else { return vec![Some(grad)] };
                let derivative = rows.own(derivative);
                let Grad { mut values, support, .. } = grad;
                let times = |(r, row): (usize, &mut [f32])| {
                    let d = &derivative[(r / k) * n_in..][..n_in];
                    row.iter_mut().zip(d).for_each(|(g, d)| *g *= d);
                };
                match rows.threads {
                    Threads::Points | Threads::Bands => values.par_chunks_mut(n_in).enumerate().for_each(times),
                    _ => values.chunks_mut(n_in).enumerate().for_each(times),
                }
                let support = match gates {
                    true => {
                        let mut s = support.unwrap_or_else(|| vec![true; rows.points * n_in]);
                        s.iter_mut().zip(derivative).for_each(|(s, d)| *s &= *d != 0.0);
                        Some(s)
                    }
                    false => support,
                };
                vec![Some(Grad { values, support, listed: None })]
            }
            StepOp::MaxPool(_) => {
                // Listed, not dense: each output's K values go to its winner, a quarter of the
                // input or less — the zero-filled input gradient would cost more than the rest.
                let Saved::Winners(winners) = saved else { unreachable!("max-pool keeps its winners") };
                let winners = rows.own(winners);
                let point = |b: usize| {
                    let mut listed = Listed { units: Vec::with_capacity(n_out), values: Vec::with_capacity(n_out * k) };
                    for (e, &w) in winners[b * n_out..][..n_out].iter().enumerate() {
                        if grad.support.as_ref().is_none_or(|s| s[b * n_out + e]) {
                            listed.units.push(w);
                            listed.values.extend((0..k).map(|row| grad.values[(b * k + row) * n_out + e]));
                        }
                    }
                    listed
                };
                let listed: Vec<Listed> = match rows.threads {
                    Threads::Points => (0..rows.points).into_par_iter().map(point).collect(),
                    _ => (0..rows.points).map(point).collect(),
                };
                vec![Some(Grad { values: Vec::new(), support: None, listed: Some(listed) })]
            }
            StepOp::AvgPool(pool) => vec![Some(Grad::dense(through_avg_pool(&grad.values, pool, input, output)))],
            StepOp::GlobalAvgPool => vec![Some(Grad::dense(through_global_avg(&grad.values, input)))],
            StepOp::Flatten | StepOp::Reshape => vec![Some(Grad::dense(through_relayout(&grad.values, input, output)))],
            StepOp::Binary(arith) => {
                let (a, b) = match saved {
                    Saved::Operands(a, b) => (rows.own(a), rows.own(b)),
                    _ => (&[][..], &[][..]),
                };
                let (first, second) = through_binary(*arith, grad.values, (a, b), &dims, k);
                // A sum or difference passes the support on; a product or quotient may not.
                let support = grad.support.filter(|_| matches!(arith, Arith::Add | Arith::Sub));
                let second_support = support.clone().filter(|_| dims[1] == dims[0]);
                let first = Grad { values: first, support, listed: None };
                vec![Some(first), Some(Grad { values: second, support: second_support, listed: None })]
            }
            StepOp::Constant { arith, values: constants, constant_first } => {
                let x = match saved {
                    Saved::Operands(x, _) => rows.own(x),
                    _ => &[][..],
                };
                let Grad { mut values, support, .. } = grad;
                through_constant(*arith, constants, *constant_first, &mut values, x, input, k);
                vec![Some(Grad { values, support, listed: None })]
            }
            StepOp::Identity => vec![Some(grad)],
        }
    }
}

fn by_channel(grad: Grad, scale: &[f32], channels: usize) -> Grad {
    let Grad { mut values, support, .. } = grad;
    for position in values.chunks_mut(channels) {
        position.iter_mut().zip(scale).for_each(|(g, s)| *g *= s);
    }
    Grad { values, support, listed: None }
}

/// Training-mode batch norm: the gradients of its weight and bias and of its input.
fn batch_norm_backward(
    norm: &BatchNormStep,
    normalised: &[f32],
    inv_std: &[f32],
    grad: Grad,
    channels: usize,
    parameters: &mut Gradients,
) -> Grad {
    let c = channels;
    let values = grad.values;
    let count = values.len() / c;
    // Per-channel sums over fixed runs of positions in parallel, then added in order.
    let runs = crate::kernels::bands(count, crate::forward::POINT_RUNS, 1);
    let partials: Vec<(Vec<f64>, Vec<f64>)> = runs
        .par_iter()
        .map(|run| {
            let (mut sum_g, mut sum_gx) = (vec![0f64; c], vec![0f64; c]);
            let (g, n) = (&values[run.start * c..run.end * c], &normalised[run.start * c..run.end * c]);
            for (g, n) in g.chunks(c).zip(n.chunks(c)) {
                for (((sum_g, sum_gx), &g), &n) in sum_g.iter_mut().zip(sum_gx.iter_mut()).zip(g).zip(n) {
                    *sum_g += g as f64;
                    *sum_gx += (g * n) as f64;
                }
            }
            (sum_g, sum_gx)
        })
        .collect();
    let (mut sum_g, mut sum_gx) = (vec![0f64; c], vec![0f64; c]);
    for (g, gx) in &partials {
        sum_g.iter_mut().zip(g).for_each(|(a, b)| *a += b);
        sum_gx.iter_mut().zip(gx).for_each(|(a, b)| *a += b);
    }
    let name = |leaf: &str| format!("{}.{leaf}", norm.name);
    parameters.push((name("weight"), sum_gx.iter().map(|&v| v as f32).collect()));
    parameters.push((name("bias"), sum_g.iter().map(|&v| v as f32).collect()));
    let n = count as f32;
    let (sum_g, sum_gx): (Vec<f32>, Vec<f32>) = sum_g.iter().zip(&sum_gx).map(|(&a, &b)| (a as f32, b as f32)).unzip();
    let factor: Vec<f32> = (0..c).map(|ch| norm.weight[ch] * inv_std[ch] / n).collect();
    let mut back = values;
    // Zipped, not indexed by channel, so that the loops vectorise.
    back.par_chunks_mut(c).zip(normalised.par_chunks(c)).for_each(|(g, x_hat)| {
        let channels = factor.iter().zip(&sum_g).zip(&sum_gx);
        for ((g, &x_hat), ((&factor, &sum_g), &sum_gx)) in g.iter_mut().zip(x_hat).zip(channels) {
            *g = factor * (n * *g - sum_g - x_hat * sum_gx);
        }
    });
    Grad::dense(back)
}

/// Spreads each output gradient evenly over its window: each input position sums the shares of
/// the windows that hold it.
fn through_avg_pool(values: &[f32], pool: &AvgPoolStep, input: Dims, output: Dims) -> Vec<f32> {
    let (n_in, n_out, c) = (input.len(), output.len(), input.channels);
    // Written position by position, not zeroed first: most inputs have one reader.
    let mut back = Vec::with_capacity(values.len() / n_out * n_in);
    for g in values.chunks(n_out) {
        for bounds in pool.starts.windows(2) {
            let start = back.len();
            match &pool.readers[bounds[0] as usize..bounds[1] as usize] {
                [] => back.resize(start + c, 0.0),
                [(o, share), others @ ..] => {
                    back.extend(g[*o as usize * c..][..c].iter().map(|g| g * share));
                    for &(o, share) in others {
                        let target = &mut back[start..];
                        target.iter_mut().zip(&g[o as usize * c..][..c]).for_each(|(b, g)| *b += g * share);
                    }
                }
            }
        }
    }
    back
}

/// Each channel's gradient shared by its positions.
fn through_global_avg(values: &[f32], input: Dims) -> Vec<f32> {
    let (c, plane) = (input.channels, input.plane() as f32);
    let mut back = vec![0f32; values.len() / c * input.len()];
    for (back, g) in back.chunks_mut(input.len()).zip(values.chunks(c)) {
        for position in back.chunks_mut(c) {
            position.iter_mut().zip(g).for_each(|(b, g)| *b = g / plane);
        }
    }
    back
}

/// The reverse of flatten or reshape: the forward went channel-last → channel-first →
/// channel-last of `output`.
fn through_relayout(values: &[f32], input: Dims, output: Dims) -> Vec<f32> {
    let n = input.len();
    let mut back = vec![0f32; values.len()];
    let mut chw = vec![0f32; if output.is_flat() { 0 } else { n }];
    for (back, g) in back.chunks_mut(n).zip(values.chunks(n)) {
        // A flat value's channel-last order is its channel-first order.
        let g = if output.is_flat() {
            g
        } else {
            to_channel_first(g, output, &mut chw);
            &chw
        };
        to_channel_last(g, input, back);
    }
    back
}

/// The gradients of both inputs of `a ∘ b` (`[point][…]` operands); a `[C]` second operand
/// (broadcast over positions) gets its gradient summed over positions.
fn through_binary(
    arith: Arith,
    values: Vec<f32>,
    (a, b): (&[f32], &[f32]),
    dims: &[Dims],
    rows_per_point: usize,
) -> (Vec<f32>, Vec<f32>) {
    let (n, channels) = (dims[0].len(), dims[0].channels);
    let per_channel = dims[1] != dims[0];
    let n_second = dims[1].len();
    let point = |i: usize| i / n / rows_per_point;
    let first_at = |i: usize| a[point(i) * n + i % n];
    let second_at =
        |i: usize| if per_channel { b[point(i) * n_second + i % n % channels] } else { b[point(i) * n + i % n] };
    let (first, second): (Vec<f32>, Vec<f32>) = match arith {
        Arith::Add => (values.clone(), values),
        Arith::Sub => {
            let negated = values.iter().map(|g| -g).collect();
            (values, negated)
        }
        Arith::Mul => (
            values.iter().enumerate().map(|(i, g)| g * second_at(i)).collect(),
            values.iter().enumerate().map(|(i, g)| g * first_at(i)).collect(),
        ),
        Arith::Div => (
            values.iter().enumerate().map(|(i, g)| g / second_at(i)).collect(),
            values
                .iter()
                .enumerate()
                .map(|(i, g)| {
                    let d = second_at(i);
                    -g * first_at(i) / (d * d)
                })
                .collect(),
        ),
    };
    let second = match per_channel {
        true => sum_positions(&second, n, channels),
        false => second,
    };
    (first, second)
}

/// The gradient of `x ∘ c` (or `c ∘ x`) with respect to x (`x`: the input, `[point][…]`, kept
/// only for `c / x`).
fn through_constant(
    arith: Arith,
    constants: &[f32],
    constant_first: bool,
    values: &mut [f32],
    x: &[f32],
    dims: Dims,
    rows_per_point: usize,
) {
    let (n, channels) = (dims.len(), dims.channels);
    let constant = |e: usize| if constants.len() == 1 { constants[0] } else { constants[e % channels] };
    for (i, g) in values.iter_mut().enumerate() {
        let e = i % n;
        *g = match (arith, constant_first) {
            (Arith::Add, _) | (Arith::Sub, false) => *g,
            (Arith::Sub, true) => -*g,
            (Arith::Mul, _) => *g * constant(e),
            (Arith::Div, false) => *g / constant(e),
            (Arith::Div, true) => {
                let x = x[(i / n / rows_per_point) * n + e];
                -*g * constant(e) / (x * x)
            }
        };
    }
}

/// `[row][positions][C]` summed over positions: `[row][C]`.
fn sum_positions(values: &[f32], len: usize, channels: usize) -> Vec<f32> {
    values
        .chunks(len)
        .flat_map(|row| {
            let mut sums = vec![0f32; channels];
            for position in row.chunks(channels) {
                sums.iter_mut().zip(position).for_each(|(s, v)| *s += v);
            }
            sums
        })
        .collect()
}
