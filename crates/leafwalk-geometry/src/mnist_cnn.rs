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
//! PyTorch does.

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
/// Classes per reverse-pass task: a group shares each weight read, and two groups of mnist's ten
/// keep two cores busy on a single point. A compile-time count also lets LLVM vectorise the
/// 32-channel loops inside the loops over classes (with a run-time count it vectorised across
/// classes and ran five classes in scalar code).
const CLASS_GROUP: usize = 5;
/// fc1's reverse product runs over blocks of pooled units that stay in L1 for all classes.
const FLAT_BLOCK: usize = 1024;

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
    /// conv1-grid position `y·26 + x` of its 3×3 receptive field's top-left corner.
    origin: u16,
}

/// What the reverse pass needs from one point's forward pass.
struct Forward {
    log_probs: Vec<f32>,
    probs: Vec<f32>,
    /// `[26·26][32]`: 1.0 where conv1's output passed its ReLU.
    conv1_active: Vec<[f32; CONV1]>,
    active_units: Vec<ActiveUnit>,
    /// `[128]`: fc1's pre-activation > 0.
    fc1_active: Vec<bool>,
}

/// log p `[b, C]` and J `[b, C, 784]` (normalised units) of `inputs`, b normalised 28×28 images.
pub(crate) fn log_probs_and_jacobian(weights: &Weights, inputs: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let kernels = Kernels::new(weights);
    let c = weights.classes;
    let b = inputs.len() / INPUT;
    let forwards: Vec<Forward> = inputs.par_chunks(INPUT).map(|x| forward_fast(weights, &kernels, x)).collect();
    let mut jacobian = vec![0f32; b * c * INPUT];
    jacobian.par_chunks_mut(c * INPUT).zip(&forwards).for_each(|(rows, pass)| {
        rows.par_chunks_mut(CLASS_GROUP * INPUT).enumerate().for_each(|(group, rows)| {
            let first = group * CLASS_GROUP;
            let rows = rows.as_chunks_mut::<INPUT>().0;
            match <&mut [[f32; INPUT]; CLASS_GROUP]>::try_from(&mut *rows) {
                Ok(rows) => reverse_fast::<CLASS_GROUP>(weights, &kernels, pass, first, rows),
                Err(_) => {
                    for (r, row) in rows.iter_mut().enumerate() {
                        reverse_fast::<1>(weights, &kernels, pass, first + r, std::array::from_mut(row));
                    }
                }
            }
        })
    });
    let log_probs = forwards.into_iter().flat_map(|pass| pass.log_probs).collect();
    (log_probs, jacobian)
}

/// Defines `$name`, which runs `$kernel` compiled for AVX-512 or AVX2 when the CPU has them.
/// The loops in this module are written for LLVM to vectorise, but a portable build may only
/// use SSE2 — 4 lanes where AVX-512 has 16. `$kernel` and everything it calls are
/// `#[inline(always)]`, so they are compiled into the feature-enabled functions.
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

with_wide_vectors!(forward_fast => forward(weights: &Weights, kernels: &Kernels, x: &[f32]) -> Forward);
with_wide_vectors!(reverse_fast<const K: usize> => reverse(
    weights: &Weights, kernels: &Kernels, pass: &Forward, first_class: usize, rows: &mut [[f32; INPUT]; K]
) -> ());

/// `dst += scale · src`, on arrays so the length is known when the loop is compiled. Short
/// arrays are read into locals first: LLVM fully unrolls short loops before vectorising, and
/// its straight-line vectoriser cannot prove that `dst` and `src` do not overlap unless every
/// load comes before every store. Long ones stay loops, vectorised with a run-time overlap check
/// (copying them cost a quarter of the reverse pass).
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
    let (a_chunks, b_chunks) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(x, y)| x * y).sum();
    for (a, b) in a_chunks.zip(b_chunks) {
        for k in 0..16 {
            lanes[k] += a[k] * b[k];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[inline(always)]
fn forward(weights: &Weights, kernels: &Kernels, x: &[f32]) -> Forward {
    // conv1 + ReLU, channel-last.
    let mut a1 = vec![[0f32; CONV1]; CONV1_PLANE];
    let mut conv1_active = vec![[0f32; CONV1]; CONV1_PLANE];
    for y in 0..CONV1_SIDE {
        for x0 in 0..CONV1_SIDE {
            let at = y * CONV1_SIDE + x0;
            let out = &mut a1[at];
            *out = *weights.conv1_b;
            for (tap, w) in kernels.conv1_forward.iter().enumerate() {
                add_scaled(out, x[(y + tap / 3) * INPUT_SIDE + x0 + tap % 3], w);
            }
            for (a, active) in out.iter_mut().zip(&mut conv1_active[at]) {
                *active = f32::from(u8::from(*a > 0.0));
                *a = a.max(0.0);
            }
        }
    }
    // conv2: each output position's 64 channels from three 96-value rows of its patch.
    let mut z2 = vec![[0f32; CONV2]; CONV2_SIDE * CONV2_SIDE];
    for y in 0..CONV2_SIDE {
        for x0 in 0..CONV2_SIDE {
            // A local sum stays in registers; about half the inputs are ReLU zeros.
            let mut sum = *weights.conv2_b;
            for ky in 0..3 {
                let patch = a1[(y + ky) * CONV1_SIDE + x0..][..3].as_flattened();
                let kernel = &kernels.conv2_forward[ky * 3 * CONV1..][..3 * CONV1];
                for (&v, w) in patch.iter().zip(kernel).filter(|(&v, _)| v != 0.0) {
                    add_scaled(&mut sum, v, w);
                }
            }
            z2[y * CONV2_SIDE + x0] = sum;
        }
    }
    // ReLU and 2×2 max-pool; the gradient goes to the window's first maximum if it is > 0.
    let mut pooled = vec![0f32; FLAT];
    let mut active_units = Vec::with_capacity(FLAT);
    for py in 0..POOLED {
        for px in 0..POOLED {
            // Per channel: (conv1-grid origin of the maximum's receptive field, the maximum).
            let mut best = [(0, f32::NEG_INFINITY); CONV2];
            for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                let (y, x0) = (2 * py + dy, 2 * px + dx);
                for (best, &v) in best.iter_mut().zip(&z2[y * CONV2_SIDE + x0]) {
                    if v.max(0.0) > best.1 {
                        *best = (y * CONV1_SIDE + x0, v.max(0.0));
                    }
                }
            }
            for (o, &(origin, value)) in best.iter().enumerate() {
                let index = (o * POOLED + py) * POOLED + px;
                pooled[index] = value;
                if value > 0.0 {
                    active_units.push(ActiveUnit { pooled: index as u32, channel: o as u16, origin: origin as u16 });
                }
            }
        }
    }
    // fc1 + ReLU, fc2, log-softmax.
    let hidden: Vec<f32> =
        (0..HIDDEN).map(|k| weights.fc1_b[k] + dot(&weights.fc1_w[k * FLAT..][..FLAT], &pooled)).collect();
    let fc1_active: Vec<bool> = hidden.iter().map(|&h| h > 0.0).collect();
    let hidden: Vec<f32> = hidden.iter().map(|h| h.max(0.0)).collect();
    let logits: Vec<f32> =
        (0..weights.classes).map(|j| weights.fc2_b[j] + dot(&weights.fc2_w[j * HIDDEN..][..HIDDEN], &hidden)).collect();
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln() + max;
    let log_probs: Vec<f32> = logits.iter().map(|l| l - log_sum).collect();
    let probs = log_probs.iter().map(|l| l.exp()).collect();
    Forward { log_probs, probs, conv1_active, active_units, fc1_active }
}

/// J rows `first_class .. first_class + K` of one point.
#[inline(always)]
fn reverse<const K: usize>(
    weights: &Weights,
    kernels: &Kernels,
    pass: &Forward,
    first_class: usize,
    rows: &mut [[f32; INPUT]; K],
) {
    // ∂ log p_class / ∂ logits = e_class − p, back through fc2 and fc1's ReLU: [K][128].
    let mut d_hidden = vec![0f32; K * HIDDEN];
    let active_hidden: Vec<usize> = (0..HIDDEN).filter(|&k| pass.fc1_active[k]).collect();
    for (r, d_h) in d_hidden.chunks_exact_mut(HIDDEN).enumerate() {
        for (j, p) in pass.probs.iter().enumerate() {
            let seed = f32::from(u8::from(j == first_class + r)) - p;
            for &k in &active_hidden {
                d_h[k] += seed * weights.fc2_w[j * HIDDEN + k];
            }
        }
    }
    // fc1: [K][9216], each weight row read once for all classes.
    const BLOCKS: usize = FLAT / FLAT_BLOCK;
    let mut d_pooled = vec![[0f32; FLAT_BLOCK]; K * BLOCKS];
    let (fc1_rows, _) = weights.fc1_w.as_chunks::<FLAT_BLOCK>();
    for block in 0..BLOCKS {
        for &k in &active_hidden {
            let w = &fc1_rows[k * BLOCKS + block];
            for r in 0..K {
                add_scaled(&mut d_pooled[r * BLOCKS + block], d_hidden[r * HIDDEN + k], w);
            }
        }
    }
    let d_pooled = d_pooled.as_flattened();
    // Through the pool and ReLU to the active conv2 outputs, then conv2's kernel scattered back
    // onto conv1's grid: [26·26][K][32].
    let mut d_a1 = vec![[0f32; CONV1]; CONV1_PLANE * K];
    let mut gradient = [0f32; K];
    for unit in &pass.active_units {
        for (r, g) in gradient.iter_mut().enumerate() {
            *g = d_pooled[r * FLAT + unit.pooled as usize];
        }
        let kernel = &kernels.conv2_reverse[unit.channel as usize * TAPS..][..TAPS];
        for (tap, w) in kernel.iter().enumerate() {
            let at = (unit.origin as usize + (tap / 3) * CONV1_SIDE + tap % 3) * K;
            for (d, &g) in d_a1[at..at + K].iter_mut().zip(&gradient) {
                add_scaled(d, g, w);
            }
        }
    }
    // conv1's ReLU, then conv1's kernel back onto the input.
    for (position, d_position) in d_a1.chunks_exact(K).enumerate() {
        let active = &pass.conv1_active[position];
        let (y, x) = (position / CONV1_SIDE, position % CONV1_SIDE);
        for (r, d) in d_position.iter().enumerate() {
            let mut taps = [0f32; TAP_LANES];
            for ((&d, &on), w) in d.iter().zip(active).zip(&kernels.conv1_reverse) {
                add_scaled(&mut taps, d * on, w);
            }
            let row = &mut rows[r];
            for (tap, value) in taps[..TAPS].iter().enumerate() {
                row[(y + tap / 3) * INPUT_SIDE + x + tap % 3] += value;
            }
        }
    }
}
