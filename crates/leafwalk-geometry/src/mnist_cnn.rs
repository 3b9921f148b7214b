//! mnist-cnn's log-probabilities and input Jacobian on the CPU, forward and reverse pass in plain
//! loops.
//!
//! At one point per call — a walk's step — candle's small convolutions, matmuls and broadcasts
//! cost more in allocation and dispatch than in arithmetic, and a portable build only uses SSE2.
//! Here every layer is a loop LLVM vectorises, compiled for the widest vector unit the CPU has
//! ([`with_wide_vectors`]); activations are kept channel-last so the innermost loops run over
//! contiguous channels. The reverse pass takes a point's classes together, so each weight is
//! read once per point rather than once per class, and it only visits what carries gradient:
//! the active fc1 units, and the conv2 outputs that won their pool window and passed the ReLU
//! (about one in eight). The pool sends each gradient to the first maximum of its window, as
//! PyTorch does. A batch runs its points in parallel; a batch smaller than the thread count
//! (one point per walk step) splits each point's heavy layers into parts instead.

use rayon::prelude::*;

use crate::{GeometryError, Result};

const HIDDEN: usize = 128;
const CONV1: usize = 32;
const CONV2: usize = 64;
const POOLED: usize = 12;
const FLAT: usize = CONV2 * POOLED * POOLED;
const CONV2_SIDE: usize = 24;
const CONV1_SIDE: usize = 26;
const CONV1_PLANE: usize = CONV1_SIDE * CONV1_SIDE;
const INPUT_SIDE: usize = 28;
pub(crate) const INPUT: usize = INPUT_SIDE * INPUT_SIDE;
const TAPS: usize = 9;
/// conv1's 9 taps padded to one 16-lane vector in the reverse pass.
const TAP_LANES: usize = 16;
/// Classes the reverse pass carries together: all of mnist's ten, so fc1's weights are read once
/// per point (2 × 10 × 32 accumulators fit AVX-512's registers; AVX2 spills some). A
/// compile-time count also lets LLVM vectorise the 32-channel loops inside the loops over
/// classes (with a run-time count it vectorised across classes and ran them in scalar code).
const CLASS_GROUP: usize = 10;
/// fc1's reverse product works on 32-wide strips of the pooled layer.
const STRIP: usize = 32;
/// Bands of conv1-grid rows the convolutions' reverse pass is always split into, run in
/// parallel when the cores are free: a fixed count, so that J's rounding — the bands' sums are
/// added at the end — is the same at every batch size and thread count.
const GRID_PARTS: usize = 4;
/// Parts a point's other heavy layers are split into at most (at batch 1 on many cores, the joins would cost
/// more than the parts save).
const MAX_PARTS: usize = 4;

/// The network's parameters, borrowed in PyTorch's layouts (`[out, in, ky, kx]`, `[out, in]`).
pub(crate) struct Weights<'a> {
    conv1_w: &'a [f32],
    conv1_b: &'a [f32; CONV1],
    conv2_w: &'a [f32],
    conv2_b: &'a [f32; CONV2],
    fc1_w: &'a [f32],
    fc1_b: &'a [f32],
    fc2_w: &'a [f32],
    fc2_b: &'a [f32],
    classes: usize,
}

impl<'a> Weights<'a> {
    /// `tensors`: conv1, conv2, fc1, fc2 as (weight, bias), in that order.
    pub(crate) fn new(tensors: &[&'a [f32]], classes: usize) -> Result<Self> {
        let expected =
            [CONV1 * TAPS, CONV1, CONV2 * CONV1 * TAPS, CONV2, HIDDEN * FLAT, HIDDEN, classes * HIDDEN, classes];
        let lengths: Vec<usize> = tensors.iter().map(|t| t.len()).collect();
        let &[conv1_w, conv1_b, conv2_w, conv2_b, fc1_w, fc1_b, fc2_w, fc2_b] = tensors else {
            return Err(GeometryError::Invalid(format!("mnist-cnn has 8 parameter tensors, got {}", tensors.len())));
        };
        let (Ok(conv1_b), Ok(conv2_b), true) = (conv1_b.try_into(), conv2_b.try_into(), lengths == expected) else {
            return Err(GeometryError::Invalid(format!(
                "mnist-cnn parameters of sizes {lengths:?}, expected {expected:?}"
            )));
        };
        Ok(Weights { conv1_w, conv1_b, conv2_w, conv2_b, fc1_w, fc1_b, fc2_w, fc2_b, classes })
    }
}

/// The convolution kernels rearranged for the loops below (≈ 150 KB, built once per call).
struct Kernels {
    /// conv1 `[tap][out]`.
    conv1_forward: Vec<[f32; CONV1]>,
    /// conv1 `[in = out channel][tap padded to 16]`: the reverse pass's 32×9 product as 16-lane rows.
    conv1_reverse: Vec<[f32; TAP_LANES]>,
    /// conv2 `[ky][kx][in][out]`: a 288-value patch times `[288][64]`.
    conv2_forward: Vec<[f32; CONV2]>,
    /// conv2 `[out][tap][in]`: what one active output scatters back to each tap.
    conv2_reverse: Vec<[f32; CONV1]>,
}

impl Kernels {
    fn new(weights: &Weights) -> Self {
        let mut kernels = Kernels {
            conv1_forward: vec![[0.0; CONV1]; TAPS],
            conv1_reverse: vec![[0.0; TAP_LANES]; CONV1],
            conv2_forward: vec![[0.0; CONV2]; TAPS * CONV1],
            conv2_reverse: vec![[0.0; CONV1]; CONV2 * TAPS],
        };
        for o in 0..CONV1 {
            for tap in 0..TAPS {
                let w = weights.conv1_w[o * TAPS + tap];
                kernels.conv1_forward[tap][o] = w;
                kernels.conv1_reverse[o][tap] = w;
            }
        }
        for o in 0..CONV2 {
            for i in 0..CONV1 {
                for tap in 0..TAPS {
                    let w = weights.conv2_w[(o * CONV1 + i) * TAPS + tap];
                    kernels.conv2_forward[tap * CONV1 + i][o] = w;
                    kernels.conv2_reverse[o * TAPS + tap][i] = w;
                }
            }
        }
        kernels
    }
}

/// A conv2 output that won its pool window and passed the ReLU.
#[derive(Clone, Copy)]
struct ActiveUnit {
    /// Index into the flattened pooled layer (fc1's input), `o·144 + py·12 + px`.
    pooled: u32,
    channel: u16,
}

/// What the reverse pass needs from one point's forward pass.
struct Forward {
    log_probs: Vec<f32>,
    probs: Vec<f32>,
    /// `[26·26][32]`: 1.0 where conv1's output passed its ReLU.
    conv1_active: Vec<[f32; CONV1]>,
    /// The active conv2 outputs, by position `y·24 + x`: those at position k are
    /// `active_units[unit_starts[k]..unit_starts[k + 1]]`.
    active_units: Vec<ActiveUnit>,
    unit_starts: Vec<usize>,
    /// `[128]`: fc1's pre-activation > 0.
    fc1_active: Vec<bool>,
}

/// log p `[b, C]` and J `[b, C, 784]` (normalised units) of `inputs`, b normalised 28×28 images.
pub(crate) fn log_probs_and_jacobian(weights: &Weights, inputs: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let kernels = Kernels::new(weights);
    let b = inputs.len() / INPUT;
    let parts = rayon::current_num_threads().div_ceil(b).clamp(1, MAX_PARTS);
    let forwards: Vec<Forward> = inputs.par_chunks(INPUT).map(|x| forward(weights, &kernels, x, parts)).collect();
    let mut jacobian = vec![[0f32; INPUT]; b * weights.classes];
    jacobian
        .par_chunks_mut(weights.classes)
        .zip(&forwards)
        .for_each(|(rows, pass)| reverse(weights, &kernels, pass, rows, parts));
    let log_probs = forwards.into_iter().flat_map(|pass| pass.log_probs).collect();
    (log_probs, jacobian.into_flattened())
}

/// Defines `$name`, which runs `$kernel` compiled for AVX-512 or AVX2 when the CPU has them.
/// The loops in this module are written for LLVM to vectorise, but a portable build may only
/// use SSE2 — 4 lanes where AVX-512 has 16. `$kernel` and everything it calls are
/// `#[inline(always)]` and free of closures (a closure is compiled on its own, without the
/// features), so they are compiled into the feature-enabled functions.
macro_rules! with_wide_vectors {
    ($name:ident$(<const $k:ident: usize>)? => $kernel:ident($($arg:ident: $ty:ty),*) -> $out:ty) => {
        fn $name$(<const $k: usize>)?($($arg: $ty),*) -> $out {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512$(<const $k: usize>)?($($arg: $ty),*) -> $out {
                    $kernel$(::<$k>)?($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2$(<const $k: usize>)?($($arg: $ty),*) -> $out {
                    $kernel$(::<$k>)?($($arg),*)
                }
                if is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F, checked on the line above.
                    return unsafe { avx512$(::<$k>)?($($arg),*) };
                }
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has AVX2 and FMA, checked on the line above.
                    return unsafe { avx2$(::<$k>)?($($arg),*) };
                }
            }
            $kernel$(::<$k>)?($($arg),*)
        }
    };
}

with_wide_vectors!(conv1_fast => conv1(
    weights: &Weights, kernels: &Kernels, x: &[f32], a1: &mut [[f32; CONV1]], active: &mut [[f32; CONV1]]
) -> ());
with_wide_vectors!(conv2_fast => conv2(
    weights: &Weights, kernels: &Kernels, a1: &[[f32; CONV1]], first_row: usize, z2: &mut [[f32; CONV2]]
) -> ());
with_wide_vectors!(fc1_fast => fc1(weights: &Weights, pooled: &[f32], first: usize, hidden: &mut [f32]) -> ());
with_wide_vectors!(fc1_reverse_fast<const K: usize> => fc1_reverse(
    weights: &Weights, active_hidden: &[usize], d_hidden: &[[f32; HIDDEN]; K], first_strip: usize,
    d_pooled: &mut [[f32; K]]
) -> ());
with_wide_vectors!(convolutions_reverse_fast<const K: usize> => convolutions_reverse(
    kernels: &Kernels, pass: &Forward, d_pooled: &[[f32; K]], rows_of_grid: std::ops::Range<usize>,
    out: &mut [[f32; INPUT]; K]
) -> ());

/// `dst += scale · src`, on arrays so the length is known when the loop is compiled. Short
/// arrays are read into locals first: LLVM fully unrolls short loops before vectorising, and
/// its straight-line vectoriser cannot prove that `dst` and `src` do not overlap unless every
/// load comes before every store. Long ones stay loops, vectorised with a run-time overlap check.
#[inline(always)]
fn add_scaled<const N: usize>(dst: &mut [f32; N], scale: f32, src: &[f32; N]) {
    if N > 64 {
        for (d, s) in dst.iter_mut().zip(src) {
            *d += scale * s;
        }
    } else {
        let (mut sum, src) = (*dst, *src);
        for (d, s) in sum.iter_mut().zip(src) {
            *d += scale * s;
        }
        *dst = sum;
    }
}

/// Σ a·b in 16 independent lanes (an in-order sum would not vectorise).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (a_chunks, b_chunks) = (a.as_chunks::<16>(), b.as_chunks::<16>());
    for (a, b) in a_chunks.0.iter().zip(b_chunks.0) {
        for k in 0..16 {
            lanes[k] += a[k] * b[k];
        }
    }
    let mut sum = 0.0;
    for (x, y) in a_chunks.1.iter().zip(b_chunks.1) {
        sum += x * y;
    }
    for lane in lanes {
        sum += lane;
    }
    sum
}

/// `items` in `parts` nearly equal runs, each a multiple of `granule` long (but the last).
fn part_len(items: usize, parts: usize, granule: usize) -> usize {
    items.div_ceil(parts).div_ceil(granule) * granule
}

/// The forward pass of one point, its heavy layers split into `parts` run in parallel.
fn forward(weights: &Weights, kernels: &Kernels, x: &[f32], parts: usize) -> Forward {
    let mut a1 = vec![[0f32; CONV1]; CONV1_PLANE];
    let mut conv1_active = vec![[0f32; CONV1]; CONV1_PLANE];
    conv1_fast(weights, kernels, x, &mut a1, &mut conv1_active);
    let mut z2 = vec![[0f32; CONV2]; CONV2_SIDE * CONV2_SIDE];
    let rows = part_len(CONV2_SIDE, parts, 1);
    z2.par_chunks_mut(rows * CONV2_SIDE)
        .enumerate()
        .for_each(|(part, z2)| conv2_fast(weights, kernels, &a1, part * rows, z2));
    let (pooled, active_units, unit_starts) = pool(&z2);
    let mut hidden = [0f32; HIDDEN];
    let units = part_len(HIDDEN, parts, 1);
    hidden
        .par_chunks_mut(units)
        .enumerate()
        .for_each(|(part, hidden)| fc1_fast(weights, &pooled, part * units, hidden));
    let fc1_active: Vec<bool> = hidden.iter().map(|&h| h > 0.0).collect();
    let hidden = hidden.map(|h| h.max(0.0));
    let logits: Vec<f32> =
        (0..weights.classes).map(|j| weights.fc2_b[j] + dot(&weights.fc2_w[j * HIDDEN..][..HIDDEN], &hidden)).collect();
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln() + max;
    let log_probs: Vec<f32> = logits.iter().map(|l| l - log_sum).collect();
    let probs = log_probs.iter().map(|l| l.exp()).collect();
    Forward { log_probs, probs, conv1_active, active_units, unit_starts, fc1_active }
}

/// conv1 + ReLU, channel-last, and where it is active.
#[inline(always)]
fn conv1(weights: &Weights, kernels: &Kernels, x: &[f32], a1: &mut [[f32; CONV1]], active: &mut [[f32; CONV1]]) {
    for y in 0..CONV1_SIDE {
        for x0 in 0..CONV1_SIDE {
            let at = y * CONV1_SIDE + x0;
            let mut sum = *weights.conv1_b;
            for (tap, w) in kernels.conv1_forward.iter().enumerate() {
                add_scaled(&mut sum, x[(y + tap / 3) * INPUT_SIDE + x0 + tap % 3], w);
            }
            for ((a, on), s) in a1[at].iter_mut().zip(&mut active[at]).zip(sum) {
                *on = f32::from(u8::from(s > 0.0));
                *a = s.max(0.0);
            }
        }
    }
}

/// conv2's output rows `first_row ..` (as many as `z2` holds): each position's 64 channels from
/// three 96-value rows of its patch, summed in registers.
#[inline(always)]
fn conv2(weights: &Weights, kernels: &Kernels, a1: &[[f32; CONV1]], first_row: usize, z2: &mut [[f32; CONV2]]) {
    for (k, out) in z2.iter_mut().enumerate() {
        let (y, x0) = (first_row + k / CONV2_SIDE, k % CONV2_SIDE);
        let mut sum = *weights.conv2_b;
        for ky in 0..3 {
            let patch = a1[(y + ky) * CONV1_SIDE + x0..][..3].as_flattened();
            let kernel = &kernels.conv2_forward[ky * 3 * CONV1..][..3 * CONV1];
            for (&v, w) in patch.iter().zip(kernel) {
                add_scaled(&mut sum, v, w);
            }
        }
        *out = sum;
    }
}

/// ReLU and 2×2 max-pool: the pooled layer (fc1's input, `o·144 + py·12 + px`) and the conv2
/// outputs that carry gradient — each window's first maximum, if it is > 0 — grouped by
/// position for the reverse pass's gather.
fn pool(z2: &[[f32; CONV2]]) -> (Vec<f32>, Vec<ActiveUnit>, Vec<usize>) {
    let mut pooled = vec![0f32; FLAT];
    let mut winners = Vec::with_capacity(FLAT);
    for py in 0..POOLED {
        for px in 0..POOLED {
            // Per channel: (conv2 position of the window's first maximum, the maximum).
            let mut best = [(0, f32::NEG_INFINITY); CONV2];
            for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                let position = (2 * py + dy) * CONV2_SIDE + 2 * px + dx;
                for (best, &v) in best.iter_mut().zip(&z2[position]) {
                    if v.max(0.0) > best.1 {
                        *best = (position, v.max(0.0));
                    }
                }
            }
            for (o, &(position, value)) in best.iter().enumerate() {
                let index = (o * POOLED + py) * POOLED + px;
                pooled[index] = value;
                if value > 0.0 {
                    winners.push((position, ActiveUnit { pooled: index as u32, channel: o as u16 }));
                }
            }
        }
    }
    // A counting sort by position.
    let mut unit_starts = vec![0; CONV2_SIDE * CONV2_SIDE + 1];
    for &(position, _) in &winners {
        unit_starts[position + 1] += 1;
    }
    for k in 0..CONV2_SIDE * CONV2_SIDE {
        unit_starts[k + 1] += unit_starts[k];
    }
    let mut next = unit_starts.clone();
    let mut active_units = vec![ActiveUnit { pooled: 0, channel: 0 }; winners.len()];
    for (position, unit) in winners {
        active_units[next[position]] = unit;
        next[position] += 1;
    }
    (pooled, active_units, unit_starts)
}

/// fc1's pre-activations `first ..` (as many as `hidden` holds).
#[inline(always)]
fn fc1(weights: &Weights, pooled: &[f32], first: usize, hidden: &mut [f32]) {
    for (k, h) in hidden.iter_mut().enumerate() {
        let unit = first + k;
        *h = weights.fc1_b[unit] + dot(&weights.fc1_w[unit * FLAT..][..FLAT], pooled);
    }
}

/// J, one row per class, of one point, its heavy layers split into `parts` run in parallel.
fn reverse(weights: &Weights, kernels: &Kernels, pass: &Forward, rows: &mut [[f32; INPUT]], parts: usize) {
    // ∂ log p_class / ∂ logits = e_class − p, back through fc2 and fc1's ReLU: [C][128].
    let active_hidden: Vec<usize> = (0..HIDDEN).filter(|&k| pass.fc1_active[k]).collect();
    let d_hidden: Vec<[f32; HIDDEN]> = (0..rows.len())
        .map(|class| {
            let mut d_h = [0f32; HIDDEN];
            for (j, p) in pass.probs.iter().enumerate() {
                let seed = f32::from(u8::from(j == class)) - p;
                for &k in &active_hidden {
                    d_h[k] += seed * weights.fc2_w[j * HIDDEN + k];
                }
            }
            d_h
        })
        .collect();
    let (groups, rest) = rows.as_chunks_mut::<CLASS_GROUP>();
    let (hidden_groups, hidden_rest) = d_hidden.as_chunks::<CLASS_GROUP>();
    for (rows, d_hidden) in groups.iter_mut().zip(hidden_groups) {
        class_group_reverse(weights, kernels, pass, &active_hidden, d_hidden, rows, parts);
    }
    for (row, d_hidden) in rest.iter_mut().zip(hidden_rest) {
        let (d_hidden, row) = (std::array::from_ref(d_hidden), std::array::from_mut(row));
        class_group_reverse(weights, kernels, pass, &active_hidden, d_hidden, row, parts);
    }
}

/// J rows of K classes from their ∂ log p / ∂ hidden (`d_hidden`): fc1 back to the pooled
/// layer ([`fc1_reverse`], split into `parts`), then the convolutions
/// ([`convolutions_reverse`]) in [`GRID_PARTS`] bands of conv1-grid rows that write rows of
/// their own, summed at the end (their input footprints overlap).
fn class_group_reverse<const K: usize>(
    weights: &Weights,
    kernels: &Kernels,
    pass: &Forward,
    active_hidden: &[usize],
    d_hidden: &[[f32; HIDDEN]; K],
    rows: &mut [[f32; INPUT]; K],
    parts: usize,
) {
    let mut d_pooled = vec![[0f32; K]; FLAT];
    let units = part_len(FLAT, parts, STRIP);
    d_pooled.par_chunks_mut(units).enumerate().for_each(|(part, d_pooled)| {
        fc1_reverse_fast(weights, active_hidden, d_hidden, part * units / STRIP, d_pooled)
    });
    let grid_rows = CONV1_SIDE.div_ceil(GRID_PARTS);
    let part_rows: Vec<[[f32; INPUT]; K]> = (0..GRID_PARTS)
        .into_par_iter()
        .map(|part| {
            let mut out = [[0f32; INPUT]; K];
            let grid = part * grid_rows..((part + 1) * grid_rows).min(CONV1_SIDE);
            convolutions_reverse_fast(kernels, pass, &d_pooled, grid, &mut out);
            out
        })
        .collect();
    for part in &part_rows {
        for (row, part) in rows.iter_mut().zip(part) {
            for (j, p) in row.iter_mut().zip(part) {
                *j += p;
            }
        }
    }
}

/// ∂ log p / ∂ pooled for K classes, pooled units from strip `first_strip` on (as many as
/// `d_pooled` holds, `[unit][class]`): the product with fc1's active rows keeps a 32-wide strip
/// of the K rows in registers while the weights stream past once.
#[inline(always)]
fn fc1_reverse<const K: usize>(
    weights: &Weights,
    active_hidden: &[usize],
    d_hidden: &[[f32; HIDDEN]; K],
    first_strip: usize,
    d_pooled: &mut [[f32; K]],
) {
    let (fc1_strips, _) = weights.fc1_w.as_chunks::<STRIP>();
    for (k, d_strip) in d_pooled.as_chunks_mut::<STRIP>().0.iter_mut().enumerate() {
        let strip = first_strip + k;
        let mut sums = [[0f32; STRIP]; K];
        for &unit in active_hidden {
            let w = &fc1_strips[unit * (FLAT / STRIP) + strip];
            for (sum, d_h) in sums.iter_mut().zip(d_hidden) {
                add_scaled(sum, d_h[unit], w);
            }
        }
        for (i, d) in d_strip.iter_mut().enumerate() {
            for (r, d) in d.iter_mut().enumerate() {
                *d = sums[r][i];
            }
        }
    }
}

/// Adds to `out` (K J rows) what conv1-grid rows `rows_of_grid` pass back: through the pool and
/// conv2's ReLU to the active conv2 outputs, conv2 back onto conv1's grid, conv1's ReLU and
/// conv1 back onto the input. conv2's transposed convolution is a gather: each grid position
/// sums the kernel taps of the active outputs whose receptive field holds it, for the K
/// classes in registers, and passes the sum straight through conv1.
#[inline(always)]
fn convolutions_reverse<const K: usize>(
    kernels: &Kernels,
    pass: &Forward,
    d_pooled: &[[f32; K]],
    rows_of_grid: std::ops::Range<usize>,
    out: &mut [[f32; INPUT]; K],
) {
    for qy in rows_of_grid {
        for qx in 0..CONV1_SIDE {
            let active = &pass.conv1_active[qy * CONV1_SIDE + qx];
            if active.iter().all(|&on| on == 0.0) {
                continue;
            }
            let mut d_a1 = [[0f32; CONV1]; K];
            for tap in 0..TAPS {
                // The conv2 output that sees this position through `tap`.
                let (Some(y), Some(x)) = (qy.checked_sub(tap / 3), qx.checked_sub(tap % 3)) else { continue };
                if y >= CONV2_SIDE || x >= CONV2_SIDE {
                    continue;
                }
                let units = pass.unit_starts[y * CONV2_SIDE + x]..pass.unit_starts[y * CONV2_SIDE + x + 1];
                for unit in &pass.active_units[units] {
                    let (gradient, w) =
                        (&d_pooled[unit.pooled as usize], &kernels.conv2_reverse[unit.channel as usize * TAPS + tap]);
                    for (d, &g) in d_a1.iter_mut().zip(gradient) {
                        add_scaled(d, g, w);
                    }
                }
            }
            for (d, row) in d_a1.iter().zip(out.iter_mut()) {
                let mut taps = [0f32; TAP_LANES];
                for ((&d, &on), w) in d.iter().zip(active).zip(&kernels.conv1_reverse) {
                    add_scaled(&mut taps, d * on, w);
                }
                for (tap, value) in taps[..TAPS].iter().enumerate() {
                    row[(qy + tap / 3) * INPUT_SIDE + qx + tap % 3] += value;
                }
            }
        }
    }
}
