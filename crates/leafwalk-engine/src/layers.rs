//! The reverse of convolutions and linear layers: the input's gradient — over the active output
//! units only where the support is sparse, by the register-blocked gathers of
//! [`crate::kernels`], else by `gemm` — and, in training, the parameters' gradients.

use std::sync::OnceLock;

use rayon::prelude::*;

use crate::forward::{product_points, Threads, POINT_RUNS};
use crate::kernels::{
    bands, col2im, col2im_by_taps, conv_gather, conv_scatter, dispatch_classes, im2col, matmul, matmul_by_columns,
    matmul_parallel, rows_gather, split_runs, transposed_rows, unit_patches, with_scratch, zeros, ActiveUnits, Canvas,
    PointRows, ShiftedRows, UnitsByChannel, CHANNEL_PAD,
};
use crate::plan::{ConvStep, LinearStep};
use crate::reverse::{Grad, Rows};

/// Parameter gradients by tensor name, in PyTorch's layouts.
pub(crate) type Gradients = Vec<(String, Vec<f32>)>;

/// The relative cost of a sparse gather term to a dense `gemm` term: a point's convolution is
/// reversed over its active units when `active units × padded input channels × this <
/// positions × outputs × input channels`.
const GATHER_COST: usize = 2;

/// A convolution's reverse: its input's gradient (when wanted) and, in training, its weight
/// and bias gradients (from its input `x`, `[point][H][W][C]`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_backward(
    conv: &ConvStep,
    reverse_weights: &OnceLock<(Vec<f32>, usize)>,
    grad: Grad,
    x: Option<&[f32]>,
    rows: Rows,
    wants_input: bool,
    training: bool,
    parameters: &mut Gradients,
) -> Option<Grad> {
    let shape = conv.shape;
    let (positions, cout, k) = (shape.positions(), conv.conv.out_channels, rows.k);
    let (n_in, n_out) = (shape.input.iter().product::<usize>(), positions * cout);
    let channels = shape.input[2];
    let padded = channels.div_ceil(CHANNEL_PAD) * CHANNEL_PAD;
    // Whether point b is reversed over its active units (else densely).
    let active = |grad: &Grad, b: usize| match (&grad.listed, &grad.support) {
        (Some(listed), _) => listed[b].units.len(),
        (None, Some(support)) => support[b * n_out..][..n_out].iter().filter(|&&on| on).count(),
        (None, None) => n_out,
    };
    let gathers = |grad: &Grad, b: usize| {
        conv.conv.groups == 1 && active(grad, b) * padded * GATHER_COST < positions * cout * channels
    };
    if training {
        // A listed gradient stays listed only where every point is reversed over its units.
        let grad = match grad.listed.is_some() && (0..rows.points).any(|b| !gathers(&grad, b)) {
            true => grad.densify(k, n_out),
            false => grad,
        };
        let sparse: Vec<bool> = (0..rows.points).map(|b| gathers(&grad, b)).collect();
        // One row per point: each sparse point's active units, by output channel, once for both
        // the weight gradient and the input's.
        let units: Vec<Option<UnitsByChannel>> = (0..rows.points)
            .into_par_iter()
            .map(|b| {
                sparse[b].then(|| match (&grad.listed, &grad.support) {
                    (Some(listed), _) => UnitsByChannel::from_listed(&listed[b], cout),
                    (None, Some(support)) => {
                        UnitsByChannel::gather(&grad.values[b * n_out..][..n_out], &support[b * n_out..][..n_out], cout)
                    }
                    (None, None) => unreachable!("a point without support is dense"),
                })
            })
            .collect();
        if let Some(x) = x {
            conv_parameters(conv, &grad, x, rows.points, &units, parameters);
        }
        if !wants_input {
            return None;
        }
        let mut values = zeros(rows.points * n_in);
        conv_input_batch(conv, reverse_weights, &grad, &units, &mut values);
        return Some(Grad::dense(values));
    }
    if !wants_input {
        return None;
    }
    // Each point by its own gradient alone, so that it rounds the same in any batch (a unit that
    // won two overlapping pool windows is listed twice; densified, its entries are summed first).
    let mut values = vec![0f32; rows.points * k * n_in];
    let point = |b: usize, out: &mut [f32], threads: Threads| {
        if !gathers(&grad, b) {
            return match &grad.listed {
                Some(_) => conv_dense(conv, &grad.point(b, k, n_out).densify(k, n_out).values, k, out, threads),
                None => conv_dense(conv, &grad.values[b * k * n_out..][..k * n_out], k, out, threads),
            };
        }
        let units = match (&grad.listed, &grad.support) {
            (Some(listed), _) => ActiveUnits::from_listed(&listed[b], positions, cout, k),
            (None, Some(support)) => ActiveUnits::gather(
                &grad.values[b * k * n_out..][..k * n_out],
                &support[b * n_out..][..n_out],
                positions,
                cout,
                k,
            ),
            (None, None) => unreachable!("a point without support is dense"),
        };
        let (weights, padded) = reverse_weights.get_or_init(|| conv.reverse_weights());
        gather_bands(conv, &units, weights, *padded, k, out, threads);
    };
    match rows.threads {
        Threads::Points => {
            values.par_chunks_mut(k * n_in).enumerate().for_each(|(b, out)| point(b, out, Threads::Caller))
        }
        threads => values.chunks_mut(k * n_in).enumerate().for_each(|(b, out)| point(b, out, threads)),
    }
    Some(Grad::dense(values))
}

/// A convolution's input gradient over a batch with one row per point (training): the sparse
/// points by scatter, the dense ones several at a time by one `gemm` each, runs of points in
/// parallel. `values`: `[point][H][W][C]`, zeros on entry.
fn conv_input_batch(
    conv: &ConvStep,
    reverse_weights: &OnceLock<(Vec<f32>, usize)>,
    grad: &Grad,
    units: &[Option<UnitsByChannel>],
    values: &mut [f32],
) {
    let points = units.len();
    let shape = conv.shape;
    let (positions, patch, cout, cout_g) = (shape.positions(), shape.patch(), conv.conv.out_channels, conv.group_out());
    let (n_in, n_out) = (shape.input.iter().product::<usize>(), positions * cout);
    let step = product_points(positions);
    let runs = bands(points, POINT_RUNS, 1);
    split_runs(values, &runs, n_in).into_par_iter().zip(&runs).for_each(|(out, run)| {
        with_scratch(step * positions * patch, |cols| {
            for chunk in point_chunks(run.clone(), step, units) {
                let points = match chunk {
                    PointChunk::Sparse(b, units) => {
                        let (weights, padded) = reverse_weights.get_or_init(|| conv.reverse_weights());
                        let point_out = &mut out[(b - run.start) * n_in..][..n_in];
                        conv_scatter(&shape, units, weights, *padded, &conv.sources, point_out);
                        continue;
                    }
                    PointChunk::Dense(points) => points,
                };
                let rows = points.len() * positions;
                for group in 0..conv.conv.groups {
                    let kernel = &conv.forward[group * patch * cout_g..][..patch * cout_g];
                    let a = (&grad.values[points.start * n_out + group * cout_g..], cout, 1);
                    matmul((rows, patch, cout_g), (&mut cols[..rows * patch], patch), a, (kernel, 1, cout_g), false);
                    for (p, cols) in points.clone().zip(cols.chunks(positions * patch)) {
                        col2im(
                            &shape,
                            conv.readers(),
                            cols,
                            group * shape.group_in,
                            &mut out[(p - run.start) * n_in..][..n_in],
                        );
                    }
                }
            }
        })
    });
}

/// A run's points as the training reverse takes them: a point reversed over its active units
/// alone, or the dense points from there on, up to `step` of them in one product (their
/// gradient rows are consecutive).
enum PointChunk<'u> {
    Sparse(usize, &'u UnitsByChannel),
    Dense(std::ops::Range<usize>),
}

fn point_chunks(
    run: std::ops::Range<usize>,
    step: usize,
    units: &[Option<UnitsByChannel>],
) -> impl Iterator<Item = PointChunk<'_>> {
    let mut b = run.start;
    std::iter::from_fn(move || {
        let first = b;
        if first >= run.end {
            return None;
        }
        if let Some(point_units) = &units[first] {
            b += 1;
            return Some(PointChunk::Sparse(first, point_units));
        }
        b += (first..run.end.min(first + step)).take_while(|&p| units[p].is_none()).count();
        Some(PointChunk::Dense(first..b))
    })
}

/// The weight and bias gradients of a convolution over a batch (one row per point): per run of
/// points, each point's active units' gradients times their patches where the support is
/// sparse, and the im2col rows of the dense points, several at once, times their gradients by
/// `gemm`.
fn conv_parameters(
    conv: &ConvStep,
    grad: &Grad,
    x: &[f32],
    points: usize,
    units: &[Option<UnitsByChannel>],
    parameters: &mut Gradients,
) {
    let shape = conv.shape;
    let (positions, patch, cout, cout_g) = (shape.positions(), shape.patch(), conv.conv.out_channels, conv.group_out());
    let (n_in, n_out) = (shape.input.iter().product::<usize>(), positions * cout);
    let step = product_points(positions);
    let run = |run: &std::ops::Range<usize>| {
        // `dense`: the forward kernel's layout; `by_unit`: `[out][patch]`.
        let (mut dense, mut by_unit) = (vec![0f32; conv.forward.len()], vec![0f32; conv.forward.len()]);
        with_scratch(step * positions * patch, |cols| {
            for chunk in point_chunks(run.clone(), step, units) {
                let points = match chunk {
                    PointChunk::Sparse(b, units) => {
                        im2col(&shape, &x[b * n_in..][..n_in], 0, 0..positions, &mut cols[..positions * patch]);
                        unit_patches(units, &cols[..positions * patch], patch, &mut by_unit);
                        continue;
                    }
                    PointChunk::Dense(points) => points,
                };
                // The dense points' im2col rows and (consecutive) gradients in one product.
                let rows = points.len() * positions;
                for group in 0..conv.conv.groups {
                    for (p, cols) in points.clone().zip(cols.chunks_mut(positions * patch)) {
                        let x = &x[p * n_in..][..n_in];
                        match shape.is_pointwise() {
                            true => cols.copy_from_slice(x),
                            false => im2col(&shape, x, group * shape.group_in, 0..positions, cols),
                        }
                    }
                    let dw = &mut dense[group * patch * cout_g..][..patch * cout_g];
                    let g = (&grad.values[points.start * n_out + group * cout_g..], cout, 1);
                    matmul((patch, cout_g, rows), (dw, cout_g), (&cols[..rows * patch], 1, patch), g, true);
                }
            }
        });
        (dense, by_unit)
    };
    let partials: Vec<(Vec<f32>, Vec<f32>)> = bands(points, POINT_RUNS, 1).par_iter().map(run).collect();
    let (mut dense, mut by_unit) = (vec![0f32; conv.forward.len()], vec![0f32; conv.forward.len()]);
    for (d, u) in &partials {
        dense.iter_mut().zip(d).for_each(|(a, b)| *a += b);
        by_unit.iter_mut().zip(u).for_each(|(a, b)| *a += b);
    }
    let mut weight = conv.to_pytorch_layout(&dense);
    weight.iter_mut().zip(conv.unit_rows_to_pytorch_layout(&by_unit)).for_each(|(a, b)| *a += b);
    parameters.push((conv.weight_name.clone(), weight));
    if let Some(name) = &conv.bias_name {
        let mut bias = vec![0f32; cout];
        match &grad.listed {
            Some(listed) => {
                for point in listed {
                    point.units.iter().zip(&point.values).for_each(|(&unit, g)| bias[unit as usize % cout] += g);
                }
            }
            None => {
                for position in grad.values.chunks(cout) {
                    bias.iter_mut().zip(position).for_each(|(b, g)| *b += g);
                }
            }
        }
        parameters.push((name.clone(), bias));
    }
}

/// One point's sparse convolution reverse over fixed bands of input rows, written in place
/// (`out`: `[K][H][W][C]`).
fn gather_bands(
    conv: &ConvStep,
    units: &ActiveUnits,
    weights: &[f32],
    padded: usize,
    k: usize,
    out: &mut [f32],
    threads: Threads,
) {
    let shape = &conv.shape;
    let [height, width, channels] = shape.input;
    let n_in = height * width * channels;
    let parts = if units.channels.len() * shape.taps() * padded * k >= 1 << 20 { 4 } else { 1 };
    let row_bands = bands(height, parts, 1);
    if row_bands.len() == 1 {
        dispatch_classes!(k, conv_gather(shape, units, weights, padded, 0..height, out));
        return;
    }
    let gather = |rows: &std::ops::Range<usize>| {
        let mut part = vec![0f32; k * rows.len() * width * channels];
        dispatch_classes!(k, conv_gather(shape, units, weights, padded, rows.clone(), &mut part));
        part
    };
    let parts: Vec<Vec<f32>> = match threads {
        Threads::Bands => row_bands.par_iter().map(gather).collect(),
        _ => row_bands.iter().map(gather).collect(),
    };
    for (rows, part) in row_bands.iter().zip(&parts) {
        let band = rows.len() * width * channels;
        for class in 0..k {
            out[class * n_in + rows.start * width * channels..][..band].copy_from_slice(&part[class * band..][..band]);
        }
    }
}

/// Input channels up to which a dense reverse is summed directly ([`transposed_rows`], stride 1
/// along x and few outputs) or by taps ([`col2im_by_taps`]) rather than by input positions.
const FEW_CHANNELS: usize = 4;

/// Output channels up to which a few-channel convolution is reversed directly: the direct sum
/// takes every tap's and output channel's row for each input row, where `gemm` reuses what it
/// loads. mnist-cnn's first layer (32 outputs) ran 5-25 % faster by taps; lenet5's (6),
/// vgg-bn-small's and resnet-mini's (16) faster directly.
const DIRECT_OUTPUTS: usize = 16;

/// Most rows (classes × positions) one dense reverse product takes, one class at least: its
/// output, rows × patch values, is what col2im reads back, and it should stay in L2. lenet5's
/// conv2 with all ten classes in one product (1,000 rows, 600 KB) ran 20 % slower at batch 16
/// than one class at a time (60 KB); vgg-bn-small and resnet-mini did not change.
const DENSE_ROWS: usize = 128;

/// How a dense convolution reverse adds its gradient back onto the input.
enum DenseReverse {
    /// Few input and output channels, stride 1 along x: directly, no product.
    Direct(ShiftedRows),
    /// More input channels, stride 1 on a map not much smaller than its canvas: one product per
    /// tap on the canvas.
    Canvas(Canvas),
    /// Few input channels, strided or with many outputs: a tap-major product, then col2im by
    /// taps.
    ByTaps,
    /// A position-major product, then col2im by input positions.
    ByPositions,
}

/// One point's dense convolution reverse (`out`: `[K][H][W][C]`, zeros on entry), in the
/// [`DenseReverse`] form its shape picks: a class at a time directly or on a canvas, else the
/// gradients of as many of its K rows as fit [`DENSE_ROWS`] times the kernel in one product,
/// then col2im. How the rows are chunked depends on the shapes only, so a point rounds the same
/// anywhere.
fn conv_dense(conv: &ConvStep, grad: &[f32], k: usize, out: &mut [f32], threads: Threads) {
    let shape = conv.shape;
    let (positions, cout, cout_g, patch) = (shape.positions(), conv.conv.out_channels, conv.group_out(), shape.patch());
    let n_in = out.len() / k;
    let method = if shape.group_in > FEW_CHANNELS {
        Canvas::new(&shape).map_or(DenseReverse::ByPositions, DenseReverse::Canvas)
    } else if shape.stride[1] == 1 && cout_g <= DIRECT_OUTPUTS {
        DenseReverse::Direct(ShiftedRows::new(&shape))
    } else {
        DenseReverse::ByTaps
    };
    // A class at a time on a canvas: resnet-mini's classes stacked two to ten on one canvas ran
    // 1-8 % slower.
    let per_product = match &method {
        DenseReverse::Direct(_) | DenseReverse::Canvas(_) => 1,
        _ => (DENSE_ROWS / positions).clamp(1, k),
    };
    // Every form writes its scratch in full before reading it, so the thread's reused buffer
    // serves.
    let scratch = match &method {
        DenseReverse::Direct(layout) => layout.len(&shape, cout_g),
        DenseReverse::Canvas(canvas) => {
            let (gradient, input) = canvas.lens(cout, shape.input[2]);
            gradient + input
        }
        _ => per_product * positions * patch,
    };
    let kernel = |group: usize| &conv.forward[group * patch * cout_g..][..patch * cout_g];
    let chunk = |cols: &mut [f32], (back, g): (&mut [f32], &[f32])| {
        let rows = g.len() / cout;
        match &method {
            DenseReverse::Direct(layout) => {
                for group in 0..conv.conv.groups {
                    layout.fill(&shape, &g[group * cout_g..], cout, cout_g, cols);
                    transposed_rows(&shape, kernel(group), *layout, cols, group * shape.group_in, back);
                }
            }
            DenseReverse::Canvas(canvas) => {
                let cin = shape.input[2];
                let (gradient, input) = cols.split_at_mut(canvas.lens(cout, cin).0);
                canvas.lay_out(&shape, g, cout, gradient);
                input.fill(0.0);
                let m = canvas.output_rows(&shape);
                for group in 0..conv.conv.groups {
                    for tap in 0..shape.taps() {
                        let weights = (&kernel(group)[tap * shape.group_in * cout_g..], 1, cout_g);
                        let target = &mut input[canvas.offset(&shape, tap) * cin + group * shape.group_in..];
                        let gradient = (&gradient[group * cout_g..], cout, 1);
                        matmul((m, shape.group_in, cout_g), (target, cin), gradient, weights, true);
                    }
                }
                canvas.cut_out(&shape, input, back);
            }
            DenseReverse::ByTaps => {
                let cols = &mut cols[..rows * patch];
                for group in 0..conv.conv.groups {
                    let g = (&g[group * cout_g..], cout, 1);
                    matmul_by_columns((rows, patch, cout_g), cols, g, (kernel(group), 1, cout_g));
                    for (row, back) in back.chunks_mut(n_in).enumerate() {
                        col2im_by_taps(&shape, &cols[row * positions..], rows, group * shape.group_in, back);
                    }
                }
            }
            DenseReverse::ByPositions => {
                let cols = &mut cols[..rows * patch];
                for group in 0..conv.conv.groups {
                    let g = (&g[group * cout_g..], cout, 1);
                    matmul((rows, patch, cout_g), (cols, patch), g, (kernel(group), 1, cout_g), false);
                    for (cols, back) in cols.chunks(positions * patch).zip(back.chunks_mut(n_in)) {
                        col2im(&shape, conv.readers(), cols, group * shape.group_in, back);
                    }
                }
            }
        }
    };
    let chunks = out.chunks_mut(per_product * n_in).zip(grad.chunks(per_product * positions * cout));
    match threads {
        Threads::Bands => chunks
            .collect::<Vec<_>>()
            .into_par_iter()
            .for_each(|chunk_rows| with_scratch(scratch, |cols| chunk(cols, chunk_rows))),
        _ => with_scratch(scratch, |cols| chunks.for_each(|chunk_rows| chunk(cols, chunk_rows))),
    }
}

/// A linear layer's reverse: in training (one row per point) its weight and bias gradients and
/// its input's, all batch products; for the Jacobian each point's active outputs (or all of
/// them) gathered over fixed bands of input columns, the batch's rows of W read once.
pub(crate) fn linear_backward(
    linear: &LinearStep,
    grad: Grad,
    x: Option<&[f32]>,
    rows: Rows,
    training: bool,
    parameters: &mut Gradients,
) -> Option<Grad> {
    let (n_in, n_out, k, points) = (linear.inputs, linear.outputs, rows.k, rows.points);
    if training {
        let x = x?;
        let mut weight = zeros(n_out * n_in);
        matmul_parallel((n_out, n_in, points), (&mut weight, n_in), (&grad.values, 1, n_out), (x, n_in, 1), false);
        parameters.push((linear.weight_name.clone(), weight));
        if let Some(name) = &linear.bias_name {
            let mut bias = vec![0f32; n_out];
            for row in grad.values.chunks(n_out) {
                bias.iter_mut().zip(row).for_each(|(b, g)| *b += g);
            }
            parameters.push((name.clone(), bias));
        }
        let mut back = zeros(points * n_in);
        let w = (&linear.weight[..], n_in, 1);
        matmul_parallel((points, n_in, n_out), (&mut back, n_in), (&grad.values, n_out, 1), w, false);
        return Some(Grad::dense(back));
    }
    let active = |b: usize, r: usize| grad.support.as_ref().is_none_or(|s| s[b * n_out + r]);
    let union: Vec<u32> = (0..n_out).filter(|&r| (0..points).any(|b| active(b, r))).map(|r| r as u32).collect();
    let per_point: Vec<PointRows> = (0..points)
        .map(|b| {
            let g = &grad.values[b * k * n_out..][..k * n_out];
            let (positions, rows): (Vec<u32>, Vec<u32>) =
                union.iter().enumerate().filter(|&(_, &r)| active(b, r as usize)).map(|(i, &r)| (i as u32, r)).unzip();
            let coefficients =
                rows.iter().flat_map(|&r| (0..k).map(move |class| g[class * n_out + r as usize])).collect();
            PointRows { positions, coefficients }
        })
        .collect();
    let work = union.len() * n_in * k * points;
    let column_bands = bands(n_in, if work >= 1 << 20 { 4 } else { 1 }, 16);
    let gather = |columns: &std::ops::Range<usize>| {
        let mut out = vec![0f32; points * k * columns.len()];
        dispatch_classes!(k, rows_gather(&linear.weight, n_in, &union, &per_point, columns.clone(), &mut out));
        out
    };
    let parts: Vec<Vec<f32>> = match rows.threads {
        Threads::Caller => column_bands.iter().map(gather).collect(),
        _ => column_bands.par_iter().map(gather).collect(),
    };
    let mut values = vec![0f32; points * k * n_in];
    for (columns, part) in column_bands.iter().zip(&parts) {
        for (row, values) in values.chunks_mut(n_in).enumerate() {
            values[columns.clone()].copy_from_slice(&part[row * columns.len()..][..columns.len()]);
        }
    }
    Some(Grad::dense(values))
}
