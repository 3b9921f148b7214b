//! The reverse of the parameter-free steps, shared by the Jacobian's pass (rows = the classes of
//! one point) and training's (rows = the points of a batch, one loss each). A gradient is
//! `[row][value]`; what the forward kept is `[point][…]`, and row r belongs to point
//! `r / rows_per_point`.

use leafwalk_models::description::{Arith, Dims, Pool};

use crate::forward::{avg_window, to_channel_first, to_channel_last, Saved};

/// Multiplies each row by its point's f'(z).
pub(crate) fn through_derivative(values: &mut [f32], derivative: &[f32], len: usize, rows_per_point: usize) {
    for (r, row) in values.chunks_mut(len).enumerate() {
        let d = &derivative[(r / rows_per_point) * len..][..len];
        row.iter_mut().zip(d).for_each(|(g, d)| *g *= d);
    }
}

/// Routes each output gradient to the input unit that won its window.
pub(crate) fn through_max_pool(
    values: &[f32],
    winners: &[u32],
    n_in: usize,
    n_out: usize,
    rows_per_point: usize,
) -> Vec<f32> {
    let rows = values.len() / n_out;
    let mut back = vec![0f32; rows * n_in];
    for (r, (back, g)) in back.chunks_mut(n_in).zip(values.chunks(n_out)).enumerate() {
        let w = &winners[(r / rows_per_point) * n_out..][..n_out];
        for (&w, &g) in w.iter().zip(g) {
            back[w as usize] += g;
        }
    }
    back
}

/// Spreads each output gradient evenly over its window.
pub(crate) fn through_avg_pool(values: &[f32], pool: &Pool, input: Dims, output: Dims) -> Vec<f32> {
    let (n_in, n_out, c) = (input.len(), output.len(), input.channels);
    let mut back = vec![0f32; values.len() / n_out * n_in];
    for (back, g) in back.chunks_mut(n_in).zip(values.chunks(n_out)) {
        for oy in 0..output.height {
            for ox in 0..output.width {
                let divisor = pool.divisor((oy, ox), (input.height, input.width)) as f32;
                let share = &g[(oy * output.width + ox) * c..][..c];
                for position in avg_window(pool, (oy, ox), input) {
                    for (b, s) in back[position * c..][..c].iter_mut().zip(share) {
                        *b += s / divisor;
                    }
                }
            }
        }
    }
    back
}

/// Each channel's gradient shared by its positions.
pub(crate) fn through_global_avg(values: &[f32], input: Dims) -> Vec<f32> {
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
pub(crate) fn through_relayout(values: &[f32], input: Dims, output: Dims) -> Vec<f32> {
    let n = input.len();
    let mut back = vec![0f32; values.len()];
    let mut chw = vec![0f32; n];
    for (back, g) in back.chunks_mut(n).zip(values.chunks(n)) {
        to_channel_first(g, output, &mut chw);
        to_channel_last(&chw, input, back);
    }
    back
}

/// Multiplies by a per-channel factor.
pub(crate) fn scaled_by_channel(values: &mut [f32], scale: &[f32], channels: usize) {
    values.iter_mut().enumerate().for_each(|(i, g)| *g *= scale[i % channels]);
}

/// The gradients of both inputs of `a ∘ b`; a `[C]` second operand (broadcast over positions)
/// gets its gradient summed over positions.
pub(crate) fn through_binary(
    arith: Arith,
    values: &[f32],
    saved: &Saved,
    dims: &[Dims],
    rows_per_point: usize,
) -> (Vec<f32>, Vec<f32>) {
    let (n, channels) = (dims[0].len(), dims[0].channels);
    let per_channel = dims[1] != dims[0];
    let n_second = dims[1].len();
    let (a, b) = match saved {
        Saved::Operands(a, b) => (a.as_slice(), b.as_slice()),
        _ => (&[][..], &[][..]),
    };
    let point = |i: usize| i / n / rows_per_point;
    let first_at = |i: usize| a[point(i) * n + i % n];
    let second_at =
        |i: usize| if per_channel { b[point(i) * n_second + i % n % channels] } else { b[point(i) * n + i % n] };
    let (first, second): (Vec<f32>, Vec<f32>) = match arith {
        Arith::Add => (values.to_vec(), values.to_vec()),
        Arith::Sub => (values.to_vec(), values.iter().map(|g| -g).collect()),
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

/// The gradient of `x ∘ c` (or `c ∘ x`) with respect to x.
pub(crate) fn through_constant(
    arith: Arith,
    constants: &[f32],
    constant_first: bool,
    values: &mut [f32],
    saved: &Saved,
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
                let x = match saved {
                    Saved::Operands(x, _) => x[(i / n / rows_per_point) * n + e],
                    _ => f32::NAN,
                };
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
