//! The forward pass of a batch of points through a [`Plan`], step by step, keeping what the
//! reverse passes need: each activation's derivative, each max-pool's winners, the operands of
//! products and quotients and, for training, every value and batch norm's statistics.
//!
//! Values are `[point][H][W][C]` (channel-last, so that a convolution patch is a few contiguous
//! runs and an im2col row times the repacked kernel is a product of two plain matrices).
//! Convolutions are im2col + `gemm` over fixed bands of output positions; a linear layer is a
//! batch product in training and evaluation, and a per-row dot product for the Jacobian, whose
//! rounding must not depend on the batch.

use leafwalk_models::description::{Activation, Arith, Dims, GeluForm, Pool};
use rayon::prelude::*;

use crate::kernels::{bands, dot_rows, im2col, matmul, matmul_parallel, split_runs, with_scratch, zeros};
use crate::plan::{ConvStep, LinearStep, Plan, StepOp};

/// What a forward pass is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// Log-probabilities only.
    Predict,
    /// One point whose Jacobian follows: keep the derivatives; rows of a linear layer are
    /// computed one by one so that the point rounds the same in any batch.
    Jacobian,
    /// Training: batch statistics in batch norm, every value kept for the parameter gradients.
    Train,
}

/// How the work of one pass is spread over threads. The arithmetic is the same in every case
/// (the bands are fixed by the shapes), only its scheduling differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Threads {
    /// Everything on the calling thread (a point of a batch already spread over threads).
    Caller,
    /// A lone point's bands in parallel.
    Bands,
    /// The points of the batch in parallel.
    Points,
}

/// What one step keeps for the reverse pass.
pub(crate) enum Saved {
    None,
    /// f'(z) per element, and whether it is zero somewhere (a gate the reverse pass can skip).
    Derivative {
        values: Vec<f32>,
        gates: bool,
    },
    /// A ReLU in training: its derivative is 1 where its (kept) output is positive, 0 elsewhere.
    PositiveOutput,
    /// Per output element, the index (within its point) of the input element that won.
    Winners(Vec<u32>),
    /// The inputs of a product or quotient (the second may be empty when constant).
    Operands(Vec<f32>, Vec<f32>),
    /// Training batch norm: the normalised values, 1/√(var + ε), the batch mean and (biased)
    /// variance per channel, and how many values each channel had.
    BatchNorm {
        normalised: Vec<f32>,
        inv_std: Vec<f32>,
        mean: Vec<f32>,
        var: Vec<f32>,
        count: usize,
    },
}

/// A finished forward pass.
pub(crate) struct Forward {
    /// `[point][class]`.
    pub(crate) log_probs: Vec<f32>,
    pub(crate) saved: Vec<Saved>,
    /// Every value, in training (`[point][H][W][C]`); only the logits otherwise.
    pub(crate) values: Vec<Option<Vec<f32>>>,
}

/// Channel-first `[C][H][W]` to channel-last `[H][W][C]`, one point.
pub(crate) fn to_channel_last(x: &[f32], dims: Dims, out: &mut [f32]) {
    let plane = dims.plane();
    for c in 0..dims.channels {
        for p in 0..plane {
            out[p * dims.channels + c] = x[c * plane + p];
        }
    }
}

/// Channel-last to channel-first, one point.
pub(crate) fn to_channel_first(x: &[f32], dims: Dims, out: &mut [f32]) {
    let plane = dims.plane();
    for p in 0..plane {
        for c in 0..dims.channels {
            out[c * plane + p] = x[p * dims.channels + c];
        }
    }
}

/// Runs `plan` on `points` normalised inputs (`[point][C][H][W]`, channel-first as PyTorch).
pub(crate) fn forward(plan: &Plan, inputs: &[f32], points: usize, purpose: Purpose, threads: Threads) -> Forward {
    let input = plan.input();
    let mut first = vec![0f32; inputs.len()];
    for (x, out) in inputs.chunks_exact(input.len()).zip(first.chunks_exact_mut(input.len())) {
        to_channel_last(x, input, out);
    }
    let mut values: Vec<Option<Vec<f32>>> = vec![None; plan.values.len()];
    values[0] = Some(first);
    let mut remaining = plan.readers();
    remaining[plan.output] += 1;
    let mut saved = Vec::with_capacity(plan.steps.len());
    for step in &plan.steps {
        let ins: Vec<&[f32]> = step.inputs.iter().map(|&v| values[v].as_deref().unwrap_or(&[])).collect();
        let dims: Vec<Dims> = step.inputs.iter().map(|&v| plan.values[v]).collect();
        let out_dims = plan.values[step.output];
        let context = Context { points, purpose, threads, input: dims[0], output: out_dims };
        let (output, keep) = run_step(&step.op, &ins, &dims, &context);
        saved.push(keep);
        if purpose != Purpose::Train {
            for &v in &step.inputs {
                remaining[v] -= 1;
                if remaining[v] == 0 {
                    values[v] = None;
                }
            }
        }
        values[step.output] = Some(output);
    }
    let logits = values[plan.output].as_deref().unwrap_or(&[]);
    let log_probs = logits.chunks_exact(plan.classes).flat_map(log_softmax).collect();
    Forward { log_probs, saved, values }
}

/// log-softmax of one row, as PyTorch: x − max − log Σ exp(x − max).
pub(crate) fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln();
    logits.iter().map(|l| l - max - log_sum).collect()
}

pub(crate) struct Context {
    pub(crate) points: usize,
    pub(crate) purpose: Purpose,
    pub(crate) threads: Threads,
    pub(crate) input: Dims,
    pub(crate) output: Dims,
}

/// Bands a lone point's max-pool is cut into.
const POOL_BANDS: usize = 4;

/// Values from which a lone point's element-wise step is worth spreading over the threads.
const SPREAD_VALUES: usize = 1 << 14;

impl Context {
    /// Whether a step over `len` values runs on rayon's threads: a batch's points, or a lone
    /// point's large map (its elements or rows; the values do not depend on the split).
    fn spread(&self, len: usize) -> bool {
        match self.threads {
            Threads::Points => true,
            Threads::Bands => len >= SPREAD_VALUES,
            Threads::Caller => false,
        }
    }

    /// `f(point, input, output)` for every point, in parallel when the points are spread.
    fn each_point(&self, input: &[f32], out: &mut [f32], f: impl Fn(usize, &[f32], &mut [f32]) + Sync + Send) {
        let (n_in, n_out) = (self.input.len(), self.output.len());
        if self.threads == Threads::Points && self.points > 1 {
            out.par_chunks_mut(n_out).zip(input.par_chunks(n_in)).enumerate().for_each(|(b, (o, x))| f(b, x, o));
        } else {
            out.chunks_mut(n_out).zip(input.chunks(n_in)).enumerate().for_each(|(b, (o, x))| f(b, x, o));
        }
    }
}

fn run_step(op: &StepOp, ins: &[&[f32]], dims: &[Dims], context: &Context) -> (Vec<f32>, Saved) {
    let points = context.points;
    let (x, out_len) = (ins[0], context.output.len() * points);
    let channels = dims[0].channels;
    match op {
        StepOp::Conv(conv) => (conv_forward(conv, x, context), Saved::None),
        StepOp::Linear(linear) => (linear_forward(linear, x, context), Saved::None),
        StepOp::Affine { scale, shift } => (affine(x, scale, shift), Saved::None),
        StepOp::BatchNorm(norm) => match context.purpose {
            Purpose::Train => batch_norm_train(norm, x, dims[0], points),
            _ => {
                let (scale, shift) = norm.eval_affine();
                (affine(x, &scale, &shift), Saved::None)
            }
        },
        StepOp::Activation(activation) => {
            // Training keeps every value: a ReLU's derivative is where its output is positive.
            let (relu, purpose) = (matches!(activation, Activation::Relu), context.purpose);
            let keep = purpose == Purpose::Jacobian || (purpose == Purpose::Train && !relu);
            let (y, derivative) = activate(*activation, x, keep, context.spread(x.len()));
            match (keep, purpose) {
                (true, _) => (y, Saved::Derivative { values: derivative, gates: activation.gates() }),
                (false, Purpose::Train) => (y, Saved::PositiveOutput),
                (false, _) => (y, Saved::None),
            }
        }
        StepOp::MaxPool(pool) => {
            let mut y = vec![0f32; out_len];
            let mut winners = vec![0u32; out_len];
            let (n_out, input) = (context.output.len(), context.input);
            let output = context.output;
            let each = |((y, w), x): ((&mut [f32], &mut [u32]), &[f32])| {
                max_pool(pool, x, input, output, 0..output.height, y, w)
            };
            match context.threads {
                Threads::Points => y
                    .par_chunks_mut(n_out)
                    .zip(winners.par_chunks_mut(n_out))
                    .zip(x.par_chunks(input.len()))
                    .for_each(each),
                // A lone point's output rows in bands.
                Threads::Bands if context.spread(x.len()) => {
                    let row = output.width * output.channels;
                    let rows = bands(output.height, POOL_BANDS, 1);
                    let y_bands = split_runs(&mut y, &rows, row);
                    let w_bands = split_runs(&mut winners, &rows, row);
                    y_bands
                        .into_par_iter()
                        .zip(w_bands)
                        .zip(rows.par_iter())
                        .for_each(|((y, w), rows)| max_pool(pool, x, input, output, rows.clone(), y, w));
                }
                _ => y.chunks_mut(n_out).zip(winners.chunks_mut(n_out)).zip(x.chunks(input.len())).for_each(each),
            }
            let keep = match context.purpose {
                Purpose::Predict => Saved::None,
                _ => Saved::Winners(winners),
            };
            (y, keep)
        }
        StepOp::AvgPool(pool) => {
            let mut y = vec![0f32; out_len];
            let (input, output) = (context.input, context.output);
            context.each_point(x, &mut y, |_, x, y| avg_pool(&pool.pool, x, input, output, y));
            (y, Saved::None)
        }
        StepOp::GlobalAvgPool => {
            let mut y = vec![0f32; out_len];
            let plane = context.input.plane();
            for (y, x) in y.chunks_mut(channels).zip(x.chunks(context.input.len())) {
                for position in x.chunks(channels) {
                    for (s, v) in y.iter_mut().zip(position) {
                        *s += v;
                    }
                }
                for s in y.iter_mut() {
                    *s /= plane as f32;
                }
            }
            (y, Saved::None)
        }
        StepOp::Flatten => {
            let mut y = vec![0f32; out_len];
            let input = context.input;
            context.each_point(x, &mut y, |_, x, y| to_channel_first(x, input, y));
            (y, Saved::None)
        }
        StepOp::Reshape => {
            let mut y = vec![0f32; out_len];
            let (input, output) = (context.input, context.output);
            let mut chw = vec![0f32; input.len()];
            for (y, x) in y.chunks_mut(output.len()).zip(x.chunks(input.len())) {
                to_channel_first(x, input, &mut chw);
                to_channel_last(&chw, output, y);
            }
            (y, Saved::None)
        }
        StepOp::Binary(arith) => {
            let (a, b) = (x, ins[1]);
            let len = dims[0].len();
            let y = match dims[1] != dims[0] {
                // The second operand is one value per channel of each point.
                true => a
                    .chunks(len)
                    .zip(b.chunks(channels))
                    .flat_map(|(a, b)| {
                        a.chunks(channels).flat_map(move |a| a.iter().zip(b).map(|(&a, &b)| arith.apply(a, b)))
                    })
                    .collect(),
                false if a.len() >= crate::reverse::PARALLEL_VALUES => {
                    a.par_iter().zip(b).map(|(&a, &b)| arith.apply(a, b)).collect()
                }
                false => a.iter().zip(b).map(|(&a, &b)| arith.apply(a, b)).collect(),
            };
            let keep = match (arith, context.purpose) {
                (Arith::Mul | Arith::Div, Purpose::Jacobian | Purpose::Train) => {
                    Saved::Operands(a.to_vec(), b.to_vec())
                }
                _ => Saved::None,
            };
            (y, keep)
        }
        StepOp::Constant { arith, values, constant_first } => {
            let constant = |e: usize| if values.len() == 1 { values[0] } else { values[e % channels] };
            let y = x
                .iter()
                .enumerate()
                .map(|(e, &v)| match constant_first {
                    true => arith.apply(constant(e), v),
                    false => arith.apply(v, constant(e)),
                })
                .collect();
            let keep = match (arith, constant_first, context.purpose) {
                (Arith::Div, true, Purpose::Jacobian | Purpose::Train) => Saved::Operands(x.to_vec(), Vec::new()),
                _ => Saved::None,
            };
            (y, keep)
        }
        StepOp::Identity => (x.to_vec(), Saved::None),
    }
}

/// Output-position bands of a convolution: fixed by its size, never by the thread count.
pub(crate) fn conv_bands(conv: &ConvStep) -> Vec<std::ops::Range<usize>> {
    let work = conv.shape.positions() * conv.shape.patch() * conv.conv.out_channels;
    let parts = match work {
        w if w >= 4 << 20 => 4,
        w if w >= 1 << 20 => 2,
        _ => 1,
    };
    bands(conv.shape.positions(), parts, 8)
}

/// Runs of points a batch-level pass splits its points into, computed in parallel and (for
/// sums over the batch) added in order: fixed by the batch size, never by the thread count.
pub(crate) const POINT_RUNS: usize = 4;

/// Most im2col rows one batch-level product takes at once (points × positions).
const ROWS_PER_PRODUCT: usize = 1024;

/// Consecutive points whose im2col rows fit one product.
pub(crate) fn product_points(positions: usize) -> usize {
    (ROWS_PER_PRODUCT / positions.max(1)).max(1)
}

/// A batch's convolution outside the Jacobian: the im2col rows of several points in one
/// product (the kernel packed once per product, not once per point), runs of points in
/// parallel.
fn conv_forward_batch(conv: &ConvStep, x: &[f32], context: &Context) -> Vec<f32> {
    let shape = conv.shape;
    let (cout, cout_g, patch, positions) = (conv.conv.out_channels, conv.group_out(), shape.patch(), shape.positions());
    let (n_in, n_out) = (context.input.len(), context.output.len());
    let mut y = zeros(n_out * context.points);
    let step = product_points(positions);
    let runs = bands(context.points, POINT_RUNS, step);
    split_runs(&mut y, &runs, n_out).into_par_iter().zip(&runs).for_each(|(y, run)| {
        with_scratch(step * positions * patch, |cols| {
            for (first, y) in run.clone().step_by(step).zip(y.chunks_mut(step * n_out)) {
                let count = step.min(run.end - first);
                let rows = count * positions;
                for group in 0..conv.conv.groups {
                    let a: &[f32] = if shape.is_pointwise() {
                        &x[first * n_in..][..count * n_in]
                    } else {
                        for (b, cols) in (first..first + count).zip(cols.chunks_mut(positions * patch)) {
                            im2col(&shape, &x[b * n_in..][..n_in], group * shape.group_in, 0..positions, cols);
                        }
                        &cols[..rows * patch]
                    };
                    let kernel = &conv.forward[group * patch * cout_g..][..patch * cout_g];
                    matmul(
                        (rows, cout_g, patch),
                        (&mut y[group * cout_g..], cout),
                        (a, patch, 1),
                        (kernel, cout_g, 1),
                        false,
                    );
                }
                if let Some(bias) = &conv.bias {
                    for position in y.chunks_mut(cout) {
                        position.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
                    }
                }
            }
        })
    });
    y
}

fn conv_forward(conv: &ConvStep, x: &[f32], context: &Context) -> Vec<f32> {
    if context.purpose != Purpose::Jacobian && context.points > 1 {
        return conv_forward_batch(conv, x, context);
    }
    let shape = conv.shape;
    let (cout, cout_g, groups) = (conv.conv.out_channels, conv.group_out(), conv.conv.groups);
    let (n_in, n_out) = (context.input.len(), context.output.len());
    let mut y = vec![0f32; n_out * context.points];
    let point_bands = conv_bands(conv);
    let run_band = |x: &[f32], y: &mut [f32], band: &std::ops::Range<usize>| {
        let rows = band.len();
        let mut cols = Vec::new();
        for group in 0..groups {
            let a: &[f32] = if shape.is_pointwise() {
                &x[band.start * shape.group_in..][..rows * shape.group_in]
            } else {
                cols.resize(rows * shape.patch(), 0.0);
                im2col(&shape, x, group * shape.group_in, band.clone(), &mut cols);
                &cols
            };
            let kernel = &conv.forward[group * shape.patch() * cout_g..][..shape.patch() * cout_g];
            let out = &mut y[group * cout_g..];
            matmul((rows, cout_g, shape.patch()), (out, cout), (a, shape.patch(), 1), (kernel, cout_g, 1), false);
        }
        if let Some(bias) = &conv.bias {
            for position in y.chunks_mut(cout) {
                for (v, b) in position.iter_mut().zip(bias) {
                    *v += b;
                }
            }
        }
    };
    let per_point = |x: &[f32], y: &mut [f32], parallel: bool| {
        let outputs = split_runs(y, &point_bands, cout);
        match parallel {
            true => outputs.into_par_iter().zip(&point_bands).for_each(|(y, band)| run_band(x, y, band)),
            false => outputs.into_iter().zip(&point_bands).for_each(|(y, band)| run_band(x, y, band)),
        }
    };
    match context.threads {
        Threads::Points if context.points > 1 => {
            y.par_chunks_mut(n_out).zip(x.par_chunks(n_in)).for_each(|(y, x)| per_point(x, y, false))
        }
        Threads::Bands => y.chunks_mut(n_out).zip(x.chunks(n_in)).for_each(|(y, x)| per_point(x, y, true)),
        _ => y.chunks_mut(n_out).zip(x.chunks(n_in)).for_each(|(y, x)| per_point(x, y, false)),
    }
    y
}

/// Output-row bands of a linear layer's per-point product.
pub(crate) fn linear_bands(linear: &LinearStep) -> Vec<std::ops::Range<usize>> {
    let parts = if linear.inputs * linear.outputs >= 1 << 20 { 4 } else { 1 };
    bands(linear.outputs, parts, 8)
}

fn linear_forward(linear: &LinearStep, x: &[f32], context: &Context) -> Vec<f32> {
    let (n_in, n_out, points) = (linear.inputs, linear.outputs, context.points);
    let mut y = vec![0f32; n_out * points];
    if context.purpose != Purpose::Jacobian && points > 1 {
        if let Some(bias) = &linear.bias {
            for row in y.chunks_mut(n_out) {
                row.copy_from_slice(bias);
            }
        }
        let accumulate = linear.bias.is_some();
        matmul_parallel((points, n_out, n_in), (&mut y, n_out), (x, n_in, 1), (&linear.weight, 1, n_in), accumulate);
        return y;
    }
    // Row bands, each over all points (its rows of W read once), then put in place.
    let row_bands = linear_bands(linear);
    let band = |rows: &std::ops::Range<usize>| {
        let mut out = vec![0f32; points * rows.len()];
        dot_rows(&linear.weight, n_in, x, linear.bias.as_deref(), rows.clone(), &mut out);
        out
    };
    let parts: Vec<Vec<f32>> = match context.threads {
        Threads::Caller => row_bands.iter().map(band).collect(),
        _ => row_bands.par_iter().map(band).collect(),
    };
    for (rows, part) in row_bands.iter().zip(&parts) {
        for (y, part) in y.chunks_mut(n_out).zip(part.chunks(rows.len())) {
            y[rows.clone()].copy_from_slice(part);
        }
    }
    y
}

/// f(z) and, when `derivative` is asked for, f'(z) (else empty), on rayon's threads when
/// `parallel`. Built by iterators: no buffer is zeroed first (a training batch's layer is
/// megabytes, and this pass runs at memory speed).
pub(crate) fn activate(activation: Activation, z: &[f32], derivative: bool, parallel: bool) -> (Vec<f32>, Vec<f32>) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;
    let sigmoid = |v: f32| 1.0 / (1.0 + (-v).exp());
    match activation {
        Activation::Relu => apply(z, derivative, parallel, |v| if v > 0.0 { (v, 1.0) } else { (0.0, 0.0) }),
        Activation::LeakyRelu { negative_slope } => {
            let s = negative_slope as f32;
            apply(z, derivative, parallel, |v| if v > 0.0 { (v, 1.0) } else { (v * s, s) })
        }
        Activation::Elu { alpha } => {
            let a = alpha as f32;
            apply(z, derivative, parallel, |v| {
                if v > 0.0 {
                    (v, 1.0)
                } else {
                    let ex = v.exp();
                    (a * (ex - 1.0), a * ex)
                }
            })
        }
        Activation::Gelu { form: GeluForm::Erf } => apply(z, derivative, parallel, |v| {
            let cdf = 0.5 * (1.0 + libm::erff(v * std::f32::consts::FRAC_1_SQRT_2));
            (v * cdf, cdf + v * FRAC_1_SQRT_2PI * (-0.5 * v * v).exp())
        }),
        Activation::Gelu { form: GeluForm::Tanh } => apply(z, derivative, parallel, |v| {
            let t = (SQRT_2_OVER_PI * (v + 0.044715 * v * v * v)).tanh();
            let d_inner = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * v * v);
            (0.5 * v * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * d_inner)
        }),
        Activation::Silu => apply(z, derivative, parallel, |v| {
            let s = sigmoid(v);
            (v * s, s * (1.0 + v * (1.0 - s)))
        }),
        Activation::Sigmoid => apply(z, derivative, parallel, |v| {
            let s = sigmoid(v);
            (s, s * (1.0 - s))
        }),
        Activation::Tanh => apply(z, derivative, parallel, |v| {
            let t = tanh(v);
            (t, 1.0 - t * t)
        }),
        Activation::Softplus { beta, threshold } => {
            let (b, limit) = (beta as f32, threshold as f32);
            apply(z, derivative, parallel, |v| {
                let z = b * v;
                if z > limit {
                    (v, 1.0)
                } else {
                    (z.exp().ln_1p() / b, sigmoid(z))
                }
            })
        }
    }
}

/// tanh as a rational function (the approximation Eigen uses, within a few ulp of libm's):
/// branch-free, so a layer's worth vectorises, where libm's `tanhf` costs ~25 ns a value.
#[inline(always)]
fn tanh(v: f32) -> f32 {
    const ALPHA: [f32; 7] =
        [4.893_524_5e-3, 6.372_619_3e-4, 1.485_722_4e-5, 5.122_297e-8, -8.604_672e-11, 2.000_188e-13, -2.760_768_5e-16];
    const BETA: [f32; 4] = [4.893_525e-3, 2.268_434_7e-3, 1.185_347_1e-4, 1.198_258_4e-6];
    let x = v.clamp(-7.905_311, 7.905_311);
    let x2 = x * x;
    let p = ALPHA.iter().rev().fold(0.0, |acc, &a| acc * x2 + a) * x;
    let q = BETA.iter().rev().fold(0.0, |acc, &b| acc * x2 + b);
    p / q
}

/// `(y, f'(z)) = f(z)` elementwise, the derivative only when asked for.
#[inline(always)]
fn apply(
    z: &[f32],
    derivative: bool,
    parallel: bool,
    f: impl Fn(f32) -> (f32, f32) + Sync + Send,
) -> (Vec<f32>, Vec<f32>) {
    match (derivative, parallel) {
        (true, true) => z.par_iter().map(|&v| f(v)).unzip(),
        (true, false) => z.iter().map(|&v| f(v)).unzip(),
        (false, true) => (z.par_iter().map(|&v| f(v).0).collect(), Vec::new()),
        (false, false) => (z.iter().map(|&v| f(v).0).collect(), Vec::new()),
    }
}

/// Output rows `rows` of one point's max-pool (channel-last; `y` and `winners` hold those rows),
/// recording the first maximum of each window.
fn max_pool(
    pool: &Pool,
    x: &[f32],
    input: Dims,
    output: Dims,
    rows: std::ops::Range<usize>,
    y: &mut [f32],
    winners: &mut [u32],
) {
    let c = input.channels;
    for oy in rows.clone() {
        for ox in 0..output.width {
            let at = ((oy - rows.start) * output.width + ox) * c;
            let (best, arg) = (&mut y[at..][..c], &mut winners[at..][..c]);
            best.fill(f32::NEG_INFINITY);
            let mut first = true;
            for ky in 0..pool.kernel[0] {
                let Some(iy) = (oy * pool.stride[0] + ky * pool.dilation[0]).checked_sub(pool.padding[0]) else {
                    continue;
                };
                if iy >= input.height {
                    continue;
                }
                for kx in 0..pool.kernel[1] {
                    let Some(ix) = (ox * pool.stride[1] + kx * pool.dilation[1]).checked_sub(pool.padding[1]) else {
                        continue;
                    };
                    if ix >= input.width {
                        continue;
                    }
                    let base = (iy * input.width + ix) * c;
                    let values = &x[base..][..c];
                    if first {
                        best.copy_from_slice(values);
                        arg.iter_mut().enumerate().for_each(|(ch, a)| *a = (base + ch) as u32);
                        first = false;
                        continue;
                    }
                    keep_larger(best, arg, values, base as u32);
                }
            }
        }
    }
}

/// Where `values` beat `best`, takes them and their indices `base + channel` into `arg`, by bit
/// masks on 8-wide arrays, which vectorise: as branches, random maps mispredicted half the
/// comparisons (a lone mnist-cnn point spent 4 % of its Jacobian here).
#[inline(always)]
fn keep_larger(best: &mut [f32], arg: &mut [u32], values: &[f32], base: u32) {
    let lanes = |chunk: usize| std::array::from_fn::<u32, 8, _>(|i| base + (chunk * 8 + i) as u32);
    let first = (best.len() / 8 * 8) as u32;
    let (best_chunks, best_rest) = best.as_chunks_mut::<8>();
    let (arg_chunks, arg_rest) = arg.as_chunks_mut::<8>();
    let (value_chunks, value_rest) = values.as_chunks::<8>();
    for (chunk, ((best, arg), values)) in
        best_chunks.iter_mut().zip(arg_chunks.iter_mut()).zip(value_chunks).enumerate()
    {
        let indices = lanes(chunk);
        for i in 0..8 {
            // All ones where the value is larger: bit masks, which LLVM does not turn into branches.
            let take = u32::from(values[i] > best[i]).wrapping_neg();
            let bits = best[i].to_bits();
            best[i] = f32::from_bits(bits ^ ((bits ^ values[i].to_bits()) & take));
            arg[i] ^= (arg[i] ^ indices[i]) & take;
        }
    }
    for (i, ((best, arg), &v)) in best_rest.iter_mut().zip(arg_rest.iter_mut()).zip(value_rest).enumerate() {
        if v > *best {
            (*best, *arg) = (v, base + first + i as u32);
        }
    }
}

/// The input positions (y, x) inside the image that average-pool window (oy, ox) covers.
pub(crate) fn avg_window(pool: &Pool, (oy, ox): (usize, usize), input: Dims) -> impl Iterator<Item = usize> + '_ {
    let (y0, _) = pool.window(oy, input.height, 0);
    let (x0, _) = pool.window(ox, input.width, 1);
    let rows =
        (0..pool.kernel[0] as isize).map(move |k| y0 + k).filter(move |&y| y >= 0 && (y as usize) < input.height);
    rows.flat_map(move |y| {
        (0..pool.kernel[1] as isize)
            .map(move |k| x0 + k)
            .filter(move |&x| x >= 0 && (x as usize) < input.width)
            .map(move |x| y as usize * input.width + x as usize)
    })
}

fn avg_pool(pool: &Pool, x: &[f32], input: Dims, output: Dims, y: &mut [f32]) {
    let c = input.channels;
    for oy in 0..output.height {
        for ox in 0..output.width {
            let sums = &mut y[(oy * output.width + ox) * c..][..c];
            for position in avg_window(pool, (oy, ox), input) {
                for (s, v) in sums.iter_mut().zip(&x[position * c..][..c]) {
                    *s += v;
                }
            }
            let divisor = pool.divisor((oy, ox), (input.height, input.width)) as f32;
            for s in sums.iter_mut() {
                *s /= divisor;
            }
        }
    }
}

/// `x·scale[c] + shift[c]` for channel-last values.
fn affine(x: &[f32], scale: &[f32], shift: &[f32]) -> Vec<f32> {
    let mut y = x.to_vec();
    for position in y.chunks_mut(scale.len()) {
        for ((v, s), t) in position.iter_mut().zip(scale).zip(shift) {
            *v = *v * s + t;
        }
    }
    y
}

/// Per channel of channel-last `x` (`c` channels), the sum over all positions of each value, or,
/// given the channels' means, of its squared distance from the mean: fixed runs of positions in
/// parallel, their sums added in order. Zipped, not indexed by channel, so that the loops
/// vectorise.
fn channel_sums(x: &[f32], c: usize, runs: &[std::ops::Range<usize>], mean: Option<&[f64]>) -> Vec<f64> {
    let partials: Vec<Vec<f64>> = runs
        .par_iter()
        .map(|run| {
            let mut sums = vec![0f64; c];
            for position in x[run.start * c..run.end * c].chunks(c) {
                match mean {
                    None => sums.iter_mut().zip(position).for_each(|(s, &v)| *s += v as f64),
                    Some(mean) => {
                        sums.iter_mut().zip(position).zip(mean).for_each(|((s, &v), m)| *s += (v as f64 - m).powi(2))
                    }
                }
            }
            sums
        })
        .collect();
    (0..c).map(|ch| partials.iter().map(|p| p[ch]).sum::<f64>()).collect()
}

/// Training-mode batch norm over the batch and positions of each channel: the sums over fixed
/// runs of positions in parallel, added in order (the same rounding on any number of threads),
/// and the normalisation in parallel.
fn batch_norm_train(norm: &crate::plan::BatchNormStep, x: &[f32], dims: Dims, points: usize) -> (Vec<f32>, Saved) {
    let c = dims.channels;
    let count = (x.len() / c) as f64;
    let runs = bands(x.len() / c, POINT_RUNS, 1);
    let mean: Vec<f64> = channel_sums(x, c, &runs, None).iter().map(|s| s / count).collect();
    let var: Vec<f64> = channel_sums(x, c, &runs, Some(&mean)).iter().map(|s| s / count).collect();
    let inv_std: Vec<f32> = var.iter().map(|v| (1.0 / (v + norm.norm.eps).sqrt()) as f32).collect();
    let mean32: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
    let (mut normalised, mut y) = (zeros(x.len()), zeros(x.len()));
    let rows = (c * 1024).min(x.len().max(1));
    normalised.par_chunks_mut(rows).zip(y.par_chunks_mut(rows)).zip(x.par_chunks(rows)).for_each(|((n, y), x)| {
        let channels = mean32.iter().zip(&inv_std).zip(norm.weight.iter().zip(norm.bias.iter()));
        for ((n, y), x) in n.chunks_mut(c).zip(y.chunks_mut(c)).zip(x.chunks(c)) {
            for (((n, y), &x), ((&mean, &inv_std), (&weight, &bias))) in
                n.iter_mut().zip(y.iter_mut()).zip(x).zip(channels.clone())
            {
                *n = (x - mean) * inv_std;
                *y = *n * weight + bias;
            }
        }
    });
    debug_assert_eq!(x.len(), points * dims.len());
    let var = var.iter().map(|&v| v as f32).collect();
    (y, Saved::BatchNorm { normalised, inv_std, mean: mean32, var, count: count as usize })
}
