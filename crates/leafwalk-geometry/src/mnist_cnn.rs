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

/// The convolutional half of one point's forward pass, kept for the reverse passes.
struct Features {
    /// `[26·26][32]`: conv1's output after its ReLU.
    a1: Vec<[f32; CONV1]>,
    /// `[26·26][32]`: 1.0 where conv1's output passed its ReLU.
    conv1_active: Vec<[f32; CONV1]>,
    /// The pooled layer, fc1's input (`o·144 + py·12 + px`).
    pooled: Vec<f32>,
    /// The active conv2 outputs, by position `y·24 + x`: those at position k are
    /// `active_units[unit_starts[k]..unit_starts[k + 1]]`.
    active_units: Vec<ActiveUnit>,
    unit_starts: Vec<usize>,
}

/// How [`features`] computes conv2.
#[derive(Clone, Copy)]
enum Conv2By {
    /// The per-position loop, split into this many parts run in parallel: J's path, whose
    /// rounding the golden tests pin down, and the fastest for one point on several cores.
    Loop { parts: usize },
    /// One matrix product, the 576 patches of 288 conv1 values (im2col) times the `[288][64]`
    /// kernel, by `gemm`'s FMA kernels: a training batch's path, where throughput counts.
    Matmul,
}

/// conv1, conv2 and the pool of one point.
fn features(weights: &Weights, kernels: &Kernels, x: &[f32], conv2_by: Conv2By) -> Features {
    let mut a1 = vec![[0f32; CONV1]; CONV1_PLANE];
    let mut conv1_active = vec![[0f32; CONV1]; CONV1_PLANE];
    conv1_fast(weights, kernels, x, &mut a1, &mut conv1_active);
    let mut z2 = vec![*weights.conv2_b; CONV2_SIDE * CONV2_SIDE];
    match conv2_by {
        Conv2By::Loop { parts } => {
            let rows = part_len(CONV2_SIDE, parts, 1);
            z2.par_chunks_mut(rows * CONV2_SIDE)
                .enumerate()
                .for_each(|(part, z2)| conv2_fast(weights, kernels, &a1, part * rows, z2));
        }
        Conv2By::Matmul => {
            const PATCH: usize = TAPS * CONV1;
            let mut patches = vec![0f32; CONV2_SIDE * CONV2_SIDE * PATCH];
            for (position, patch) in patches.chunks_mut(PATCH).enumerate() {
                let corner = position / CONV2_SIDE * CONV1_SIDE + position % CONV2_SIDE;
                for (ky, row) in patch.chunks_mut(3 * CONV1).enumerate() {
                    row.copy_from_slice(a1[corner + ky * CONV1_SIDE..][..3].as_flattened());
                }
            }
            let shape = (CONV2_SIDE * CONV2_SIDE, CONV2, PATCH);
            let kernel = (kernels.conv2_forward.as_flattened(), CONV2, 1);
            matmul_with(shape, z2.as_flattened_mut(), (&patches, PATCH, 1), kernel, true, gemm::Parallelism::None);
        }
    }
    let (pooled, active_units, unit_starts) = pool_fast(&z2);
    Features { a1, conv1_active, pooled, active_units, unit_starts }
}

/// log p from fc1's pre-activations (fc1's ReLU, fc2, log-softmax).
fn head(weights: &Weights, fc1_out: &[f32]) -> Vec<f32> {
    let hidden: Vec<f32> = fc1_out.iter().map(|h| h.max(0.0)).collect();
    let logits: Vec<f32> =
        (0..weights.classes).map(|j| weights.fc2_b[j] + dot(&weights.fc2_w[j * HIDDEN..][..HIDDEN], &hidden)).collect();
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln() + max;
    logits.iter().map(|l| l - log_sum).collect()
}

/// The forward pass of one point, its heavy layers split into `parts` run in parallel.
fn forward(weights: &Weights, kernels: &Kernels, x: &[f32], parts: usize) -> Forward {
    let features = features(weights, kernels, x, Conv2By::Loop { parts });
    let mut hidden = [0f32; HIDDEN];
    let units = part_len(HIDDEN, parts, 1);
    hidden
        .par_chunks_mut(units)
        .enumerate()
        .for_each(|(part, hidden)| fc1_fast(weights, &features.pooled, part * units, hidden));
    let fc1_active: Vec<bool> = hidden.iter().map(|&h| h > 0.0).collect();
    let log_probs = head(weights, &hidden);
    let probs = log_probs.iter().map(|l| l.exp()).collect();
    let Features { conv1_active, active_units, unit_starts, .. } = features;
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

with_wide_vectors!(pool_fast => pool(z2: &[[f32; CONV2]]) -> (Vec<f32>, Vec<ActiveUnit>, Vec<usize>));

/// ReLU and 2×2 max-pool: the pooled layer (fc1's input, `o·144 + py·12 + px`) and the conv2
/// outputs that carry gradient — each window's first maximum, if it is > 0 — grouped by
/// position for the reverse pass's gather.
#[inline(always)]
fn pool(z2: &[[f32; CONV2]]) -> (Vec<f32>, Vec<ActiveUnit>, Vec<usize>) {
    let mut pooled = vec![0f32; FLAT];
    let mut winners = Vec::with_capacity(FLAT);
    for py in 0..POOLED {
        for px in 0..POOLED {
            let corner = 2 * py * CONV2_SIDE + 2 * px;
            let positions = [corner, corner + 1, corner + CONV2_SIDE, corner + CONV2_SIDE + 1];
            // Per channel, the window's first maximum after the ReLU and which position holds
            // it, as whole-array selects that vectorise.
            let mut best = z2[positions[0]].map(|v| v.max(0.0));
            let mut which = [0u8; CONV2];
            for (k, &position) in positions.iter().enumerate().skip(1) {
                for ((best, which), &v) in best.iter_mut().zip(&mut which).zip(&z2[position]) {
                    let v = v.max(0.0);
                    if v > *best {
                        (*best, *which) = (v, k as u8);
                    }
                }
            }
            for (o, (&value, &k)) in best.iter().zip(&which).enumerate() {
                let index = (o * POOLED + py) * POOLED + px;
                pooled[index] = value;
                if value > 0.0 {
                    winners.push((positions[k as usize], ActiveUnit { pooled: index as u32, channel: o as u16 }));
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

/// The mean negative log-likelihood of a batch and its gradient with respect to every
/// parameter, in PyTorch's layouts (the order of [`Weights::new`]).
pub(crate) struct NllGradients {
    pub(crate) loss: f32,
    /// Points whose most probable class is their label.
    pub(crate) correct: usize,
    /// conv1, conv2, fc1, fc2 as (weight, bias).
    pub(crate) gradients: [Vec<f32>; 8],
}

/// `c = a·b` (or `c += a·b`), c an m×n row-major matrix, a m×k and b k×n given with their
/// row and column strides, by the `gemm` crate (candle's own CPU matmul, without its tensor
/// allocation and dispatch), on all threads.
fn matmul(
    shape: (usize, usize, usize),
    c: &mut [f32],
    a: (&[f32], usize, usize),
    b: (&[f32], usize, usize),
    accumulate: bool,
) {
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    matmul_with(shape, c, a, b, accumulate, parallelism);
}

/// [`matmul`] with the given parallelism (`None` inside an already parallel loop).
fn matmul_with(
    (m, n, k): (usize, usize, usize),
    c: &mut [f32],
    (a, a_row, a_col): (&[f32], usize, usize),
    (b, b_row, b_col): (&[f32], usize, usize),
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    let last = |rows: usize, cols: usize, row: usize, col: usize| (rows - 1) * row + (cols - 1) * col;
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    assert!(
        c.len() == m * n && last(m, k, a_row, a_col) < a.len() && last(k, n, b_row, b_col) < b.len(),
        "matmul operands do not hold an {m}×{k} by {k}×{n} product"
    );
    // SAFETY: the assert above keeps every element the strides address inside its slice, and
    // `c` (borrowed mutably) cannot overlap `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_col as isize,
            a_row as isize,
            b.as_ptr(),
            b_col as isize,
            b_row as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// A batch's forward pass up to fc1, for training and evaluation.
struct BatchForward {
    features: Vec<Features>,
    /// `[b][9216]`.
    pooled: Vec<f32>,
    /// `[b][128]`, fc1's pre-activations.
    fc1_out: Vec<f32>,
}

/// The convolutions per point in parallel (conv2 by matmul), then fc1 as one product for the
/// batch: fc1's 4.7 MB of weights one point at a time would stream from memory per point.
fn batch_forward(weights: &Weights, kernels: &Kernels, inputs: &[f32]) -> BatchForward {
    let b = inputs.len() / INPUT;
    let features: Vec<Features> =
        inputs.par_chunks(INPUT).map(|x| self::features(weights, kernels, x, Conv2By::Matmul)).collect();
    let pooled: Vec<f32> = features.iter().flat_map(|f| f.pooled.iter().copied()).collect();
    let mut fc1_out: Vec<f32> = (0..b).flat_map(|_| weights.fc1_b.iter().copied()).collect();
    matmul((b, HIDDEN, FLAT), &mut fc1_out, (&pooled, FLAT, 1), (weights.fc1_w, 1, FLAT), true);
    BatchForward { features, pooled, fc1_out }
}

/// log p `[b, C]` of `inputs` (b normalised 28×28 images) by the training pass's forward.
pub(crate) fn batch_log_probs(weights: &Weights, inputs: &[f32]) -> Vec<f32> {
    let forward = batch_forward(weights, &Kernels::new(weights), inputs);
    forward.fc1_out.chunks(HIDDEN).flat_map(|out| head(weights, out)).collect()
}

/// One training step's loss and gradients for `inputs` (b normalised 28×28 images) with
/// `labels`, from [`batch_forward`]; fc1's and fc2's gradients are batched products. The reverse
/// pass visits only what carries gradient, as the Jacobian's does: fc1's active units, and the
/// conv2 outputs that won their pool window and passed the ReLU — for each, its 288 kernel
/// taps' gradient is its gradient times the conv1 patch under it, and the patch's gradient
/// its gradient times the taps.
pub(crate) fn nll_gradients(weights: &Weights, inputs: &[f32], labels: &[usize]) -> NllGradients {
    let kernels = Kernels::new(weights);
    let b = labels.len();
    let classes = weights.classes;
    let BatchForward { features: forwards, pooled, fc1_out } = batch_forward(weights, &kernels, inputs);
    let (mut loss, mut correct) = (0.0, 0);
    // ∂ mean NLL / ∂ logits = (p − e_label) / b.
    let mut d_logits = vec![0f32; b * classes];
    for (point, (&label, out)) in labels.iter().zip(fc1_out.chunks(HIDDEN)).enumerate() {
        let log_probs = head(weights, out);
        loss -= log_probs[label];
        let best = (0..classes).fold(0, |best, j| if log_probs[j] > log_probs[best] { j } else { best });
        correct += usize::from(best == label);
        for (j, d) in d_logits[point * classes..][..classes].iter_mut().enumerate() {
            *d = (log_probs[j].exp() - f32::from(u8::from(j == label))) / b as f32;
        }
    }
    let hidden: Vec<f32> = fc1_out.iter().map(|h| h.max(0.0)).collect();

    // fc2 and fc1's ReLU.
    let mut fc2_w = vec![0f32; classes * HIDDEN];
    matmul((classes, HIDDEN, b), &mut fc2_w, (&d_logits, 1, classes), (&hidden, HIDDEN, 1), false);
    let fc2_b: Vec<f32> = (0..classes).map(|j| (0..b).map(|p| d_logits[p * classes + j]).sum()).collect();
    let mut d_hidden = vec![0f32; b * HIDDEN];
    matmul((b, HIDDEN, classes), &mut d_hidden, (&d_logits, classes, 1), (weights.fc2_w, HIDDEN, 1), false);
    for (d, &h) in d_hidden.iter_mut().zip(&fc1_out) {
        if h <= 0.0 {
            *d = 0.0;
        }
    }
    // fc1: its weights' gradient and the pooled layer's.
    let mut fc1_w = vec![0f32; HIDDEN * FLAT];
    matmul((HIDDEN, FLAT, b), &mut fc1_w, (&d_hidden, 1, HIDDEN), (&pooled, FLAT, 1), false);
    let fc1_b: Vec<f32> = (0..HIDDEN).map(|k| (0..b).map(|p| d_hidden[p * HIDDEN + k]).sum()).collect();
    let mut d_pooled = vec![0f32; b * FLAT];
    matmul((b, FLAT, HIDDEN), &mut d_pooled, (&d_hidden, HIDDEN, 1), (weights.fc1_w, FLAT, 1), false);

    // The convolutions, per point, summed over GRID_PARTS fixed runs of points in parallel and
    // then in order: the same rounding at every thread count, so a seeded run repeats exactly.
    let run = b.div_ceil(GRID_PARTS).max(1);
    let conv = forwards
        .par_chunks(run)
        .zip(d_pooled.par_chunks(run * FLAT))
        .zip(inputs.par_chunks(run * INPUT))
        .map(|((passes, d_pooled), x)| {
            let mut sums = ConvGradients::zero();
            for ((pass, d_pooled), x) in passes.iter().zip(d_pooled.chunks(FLAT)).zip(x.chunks(INPUT)) {
                convolutions_gradients_fast(&kernels, pass, d_pooled, x, &mut sums);
            }
            sums
        })
        .collect::<Vec<_>>()
        .into_iter()
        .fold(ConvGradients::zero(), ConvGradients::sum);
    NllGradients { loss: loss / b as f32, correct, gradients: conv.into_layouts(fc1_w, fc1_b, fc2_w, fc2_b) }
}

/// The convolutions' parameter gradients in the reverse pass's layouts.
struct ConvGradients {
    /// `[out][tap]`.
    conv1_w: Vec<[f32; TAPS]>,
    conv1_b: [f32; CONV1],
    /// `[out][tap][in]`, as `Kernels::conv2_reverse`.
    conv2_w: Vec<[f32; CONV1]>,
    conv2_b: [f32; CONV2],
}

impl ConvGradients {
    fn zero() -> Self {
        ConvGradients {
            conv1_w: vec![[0.0; TAPS]; CONV1],
            conv1_b: [0.0; CONV1],
            conv2_w: vec![[0.0; CONV1]; CONV2 * TAPS],
            conv2_b: [0.0; CONV2],
        }
    }

    fn sum(mut self, other: Self) -> Self {
        let pairs = self.conv1_w.as_flattened_mut().iter_mut().zip(other.conv1_w.as_flattened());
        let pairs = pairs.chain(self.conv1_b.iter_mut().zip(&other.conv1_b));
        let pairs = pairs.chain(self.conv2_w.as_flattened_mut().iter_mut().zip(other.conv2_w.as_flattened()));
        for (a, b) in pairs.chain(self.conv2_b.iter_mut().zip(&other.conv2_b)) {
            *a += b;
        }
        self
    }

    /// All eight gradients in PyTorch's layouts.
    fn into_layouts(self, fc1_w: Vec<f32>, fc1_b: Vec<f32>, fc2_w: Vec<f32>, fc2_b: Vec<f32>) -> [Vec<f32>; 8] {
        let mut conv2_w = vec![0f32; CONV2 * CONV1 * TAPS];
        for o in 0..CONV2 {
            for tap in 0..TAPS {
                for i in 0..CONV1 {
                    conv2_w[(o * CONV1 + i) * TAPS + tap] = self.conv2_w[o * TAPS + tap][i];
                }
            }
        }
        [
            self.conv1_w.into_flattened(),
            self.conv1_b.to_vec(),
            conv2_w,
            self.conv2_b.to_vec(),
            fc1_w,
            fc1_b,
            fc2_w,
            fc2_b,
        ]
    }
}

with_wide_vectors!(convolutions_gradients_fast => convolutions_gradients(
    kernels: &Kernels, pass: &Features, d_pooled: &[f32], x: &[f32], sums: &mut ConvGradients
) -> ());

/// Adds one point's convolution gradients to `sums`. conv2's active outputs are taken channel
/// by channel, so that one channel's 288 kernel-tap sums stay in registers while its outputs'
/// patches stream past (each output's gradient times the 3×96 conv1 patch under it), and,
/// in a second sweep, its 288 taps stay in registers while they are scattered onto the patches'
/// gradients; then conv1's gradients through its ReLU.
#[inline(always)]
fn convolutions_gradients(kernels: &Kernels, pass: &Features, d_pooled: &[f32], x: &[f32], sums: &mut ConvGradients) {
    // The active outputs with gradient, grouped by channel: (conv1-grid index of the patch's
    // top-left corner, gradient).
    let mut starts = [0usize; CONV2 + 1];
    for unit in &pass.active_units {
        starts[unit.channel as usize + 1] += 1;
    }
    for o in 0..CONV2 {
        starts[o + 1] += starts[o];
    }
    let mut next = starts;
    let mut by_channel = vec![(0usize, 0f32); pass.active_units.len()];
    for position in 0..CONV2_SIDE * CONV2_SIDE {
        let corner = position / CONV2_SIDE * CONV1_SIDE + position % CONV2_SIDE;
        for unit in &pass.active_units[pass.unit_starts[position]..pass.unit_starts[position + 1]] {
            let o = unit.channel as usize;
            by_channel[next[o]] = (corner, d_pooled[unit.pooled as usize]);
            next[o] += 1;
        }
    }
    let mut d_a1 = vec![[0f32; CONV1]; CONV1_PLANE];
    for o in 0..CONV2 {
        let units = &by_channel[starts[o]..starts[o + 1]];
        let mut taps = [[0f32; 3 * CONV1]; 3];
        let mut bias = 0.0;
        for &(corner, gradient) in units {
            bias += gradient;
            for (ky, row) in taps.iter_mut().enumerate() {
                let patch: &[f32; 3 * CONV1] =
                    pass.a1[corner + ky * CONV1_SIDE..][..3].as_flattened().try_into().unwrap();
                for (t, &v) in row.iter_mut().zip(patch) {
                    *t += gradient * v;
                }
            }
        }
        sums.conv2_b[o] += bias;
        for (sum, tap) in sums.conv2_w[o * TAPS..][..TAPS].as_flattened_mut().iter_mut().zip(taps.as_flattened()) {
            *sum += tap;
        }
        let kernel: &[[f32; 3 * CONV1]] = kernels.conv2_reverse[o * TAPS..][..TAPS].as_flattened().as_chunks().0;
        let kernel: [[f32; 3 * CONV1]; 3] = [kernel[0], kernel[1], kernel[2]];
        for &(corner, gradient) in units {
            for (ky, w) in kernel.iter().enumerate() {
                let patch: &mut [f32; 3 * CONV1] =
                    d_a1[corner + ky * CONV1_SIDE..][..3].as_flattened_mut().try_into().unwrap();
                for (d, &w) in patch.iter_mut().zip(w) {
                    *d += gradient * w;
                }
            }
        }
    }
    // conv1: each tap's 32 channel sums in registers, the input under the tap broadcast.
    let mut taps = [[0f32; CONV1]; TAPS];
    for (at, (d, on)) in d_a1.iter().zip(&pass.conv1_active).enumerate() {
        let (qy, qx) = (at / CONV1_SIDE, at % CONV1_SIDE);
        let mut d_z1 = *d;
        for (d, &on) in d_z1.iter_mut().zip(on) {
            *d *= on;
        }
        add_scaled(&mut sums.conv1_b, 1.0, &d_z1);
        for (tap, sum) in taps.iter_mut().enumerate() {
            add_scaled(sum, x[(qy + tap / 3) * INPUT_SIDE + qx + tap % 3], &d_z1);
        }
    }
    for (o, w) in sums.conv1_w.iter_mut().enumerate() {
        for (tap, w) in w.iter_mut().enumerate() {
            *w += taps[tap][o];
        }
    }
}
