//! The arithmetic the passes are made of: matrix products through the `gemm` crate, patch
//! gathering for convolutions (im2col) and its transpose, and the two register-blocked
//! kernels of the sparse reverse pass. Activations are channel-last (`[H][W][C]`) here, so a
//! patch row is `kernel[0]` runs of `kernel[1]·C` contiguous values.

use std::ops::Range;

/// Defines `$name`, which runs `$kernel` compiled for AVX-512 or AVX2 when the CPU has them.
/// The loops here are written for LLVM to vectorise, but a portable build may only use SSE2 —
/// 4 lanes where AVX2 has 8. `$kernel` and what it calls are `#[inline(always)]` and free of
/// closures (a closure is compiled on its own, without the features). Each target gets its
/// own strip width `S` (`$s512`, `$s256`, `$s128` floats).
macro_rules! with_wide_vectors {
    ($name:ident<$($k:ident),*> => $kernel:ident($($arg:ident: $ty:ty),*) -> $out:ty) => {
        #[allow(clippy::too_many_arguments)]
        pub(crate) fn $name<$(const $k: usize),*>($($arg: $ty),*) -> $out {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                #[allow(clippy::too_many_arguments)]
                fn avx512<$(const $k: usize),*>($($arg: $ty),*) -> $out {
                    $kernel::<$($k,)* 16>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx2<$(const $k: usize),*>($($arg: $ty),*) -> $out {
                    $kernel::<$($k,)* 8>($($arg),*)
                }
                if is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F, checked on the line above.
                    return unsafe { avx512::<$($k),*>($($arg),*) };
                }
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has AVX2 and FMA, checked on the line above.
                    return unsafe { avx2::<$($k),*>($($arg),*) };
                }
            }
            $kernel::<$($k,)* 8>($($arg),*)
        }
    };
}

/// Calls `$f::<K>($args)` for a class group size K known only at run time (1 ..= 12).
macro_rules! dispatch_classes {
    ($k:expr, $f:ident($($arg:expr),*)) => {
        match $k {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            6 => $f::<6>($($arg),*),
            7 => $f::<7>($($arg),*),
            8 => $f::<8>($($arg),*),
            9 => $f::<9>($($arg),*),
            10 => $f::<10>($($arg),*),
            11 => $f::<11>($($arg),*),
            _ => $f::<12>($($arg),*),
        }
    };
}
pub(crate) use dispatch_classes;

/// Classes one reverse pass carries together: `MAX_GROUP · S` accumulators must fit the
/// vector registers (12 of AVX2's 16 at one 8-lane strip).
pub(crate) const MAX_GROUP: usize = 12;

/// Input channels of the sparse kernel's weights are padded to a multiple of this (the widest
/// strip, AVX-512's 16 lanes).
pub(crate) const CHANNEL_PAD: usize = 16;

/// A row-major matrix operand: values, row stride, column stride.
pub(crate) type Operand<'a> = (&'a [f32], usize, usize);

/// `c = a·b` or `c += a·b` for c an m×n matrix with row stride `c_row` (column stride 1), by
/// the `gemm` crate on one thread. Its summation order depends only on (m, n, k) and the
/// strides, so a product of the same shape rounds the same everywhere.
pub(crate) fn matmul(
    (m, n, k): (usize, usize, usize),
    (c, c_row): (&mut [f32], usize),
    a: Operand,
    b: Operand,
    accumulate: bool,
) {
    matmul_with((m, n, k), (c, c_row), a, b, accumulate, gemm::Parallelism::None)
}

/// [`matmul`] on all of rayon's threads (for batch-level products in training).
pub(crate) fn matmul_parallel(
    shape: (usize, usize, usize),
    c: (&mut [f32], usize),
    a: Operand,
    b: Operand,
    accumulate: bool,
) {
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    matmul_with(shape, c, a, b, accumulate, parallelism)
}

fn matmul_with(
    (m, n, k): (usize, usize, usize),
    (c, c_row): (&mut [f32], usize),
    (a, a_row, a_col): Operand,
    (b, b_row, b_col): Operand,
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for row in 0..m {
                c[row * c_row..][..n].fill(0.0);
            }
        }
        return;
    }
    let last = |rows: usize, cols: usize, row: usize, col: usize| (rows - 1) * row + (cols - 1) * col;
    assert!(
        last(m, n, c_row, 1) < c.len() && last(m, k, a_row, a_col) < a.len() && last(k, n, b_row, b_col) < b.len(),
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
            c_row as isize,
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

/// Σ a·b in 16 independent lanes, added up in a fixed order (an in-order sum would not
/// vectorise, and a fixed order rounds the same at every batch size).
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
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

fn dot_rows_kernel<const S: usize>(
    weights: &[f32],
    x: &[f32],
    bias: Option<&[f32]>,
    rows: Range<usize>,
    out: &mut [f32],
) {
    let n = x.len();
    for (o, row) in out.iter_mut().zip(rows) {
        *o = bias.map_or(0.0, |b| b[row]) + dot(&weights[row * n..][..n], x);
    }
}

with_wide_vectors!(dot_rows_wide<> => dot_rows_kernel(
    weights: &[f32], x: &[f32], bias: Option<&[f32]>, rows: Range<usize>, out: &mut [f32]
) -> ());

/// `out[r] = bias[r] + W[r]·x` for the rows `rows` of a row-major W with `x.len()` columns.
pub(crate) fn dot_rows(weights: &[f32], x: &[f32], bias: Option<&[f32]>, rows: Range<usize>, out: &mut [f32]) {
    dot_rows_wide(weights, x, bias, rows, out)
}

/// The geometry of one convolution on channel-last maps, for one group.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvShape {
    pub(crate) kernel: [usize; 2],
    pub(crate) stride: [usize; 2],
    pub(crate) padding: [usize; 2],
    pub(crate) dilation: [usize; 2],
    /// Input height, width and all channels.
    pub(crate) input: [usize; 3],
    /// Output height and width.
    pub(crate) output: [usize; 2],
    /// Channels of one group.
    pub(crate) group_in: usize,
}

impl ConvShape {
    pub(crate) fn taps(&self) -> usize {
        self.kernel[0] * self.kernel[1]
    }

    /// Values in one patch (one row of im2col).
    pub(crate) fn patch(&self) -> usize {
        self.taps() * self.group_in
    }

    pub(crate) fn positions(&self) -> usize {
        self.output[0] * self.output[1]
    }

    /// The input coordinate tap `t` of output `o` reads along `axis`, if inside the image.
    #[inline(always)]
    fn source(&self, o: usize, t: usize, axis: usize) -> Option<usize> {
        (o * self.stride[axis] + t * self.dilation[axis])
            .checked_sub(self.padding[axis])
            .filter(|&i| i < self.input[axis])
    }

    /// The output coordinate that reads input coordinate `i` through tap `t` along `axis`.
    #[inline(always)]
    fn reader(&self, i: usize, t: usize, axis: usize) -> Option<usize> {
        let shifted = (i + self.padding[axis]).checked_sub(t * self.dilation[axis])?;
        (shifted % self.stride[axis] == 0).then_some(shifted / self.stride[axis]).filter(|&o| o < self.output[axis])
    }

    /// True when a patch row is the input itself (1×1, stride 1, no padding, one group).
    pub(crate) fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.stride == [1, 1] && self.padding == [0, 0] && self.group_in == self.input[2]
    }
}

/// im2col: `cols[p][(ky, kx, c)]` for the output positions `positions` (a range of p), the
/// channels `first_channel ..` of one group; zero where the patch leaves the image.
pub(crate) fn im2col(
    shape: &ConvShape,
    input: &[f32],
    first_channel: usize,
    positions: Range<usize>,
    cols: &mut [f32],
) {
    let [_, width, channels] = shape.input;
    let (cin, kw) = (shape.group_in, shape.kernel[1]);
    let contiguous_row = shape.dilation[1] == 1 && cin == channels;
    for (p, patch) in positions.zip(cols.chunks_exact_mut(shape.patch())) {
        let (oy, ox) = (p / shape.output[1], p % shape.output[1]);
        for (ky, row) in patch.chunks_exact_mut(kw * cin).enumerate() {
            let Some(iy) = shape.source(oy, ky, 0) else {
                row.fill(0.0);
                continue;
            };
            let line = &input[iy * width * channels..][..width * channels];
            let first = shape.source(ox, 0, 1);
            let last = shape.source(ox, kw - 1, 1);
            if let (true, Some(x0), Some(_)) = (contiguous_row, first, last) {
                row.copy_from_slice(&line[x0 * channels..][..kw * channels]);
                continue;
            }
            for (kx, tap) in row.chunks_exact_mut(cin).enumerate() {
                match shape.source(ox, kx, 1) {
                    Some(ix) => tap.copy_from_slice(&line[ix * channels + first_channel..][..cin]),
                    None => tap.fill(0.0),
                }
            }
        }
    }
}

/// The transpose of [`im2col`]: adds `cols` (for output positions `positions`) back onto the
/// input map's channels `first_channel ..`.
pub(crate) fn col2im(
    shape: &ConvShape,
    cols: &[f32],
    first_channel: usize,
    positions: Range<usize>,
    input: &mut [f32],
) {
    let [_, width, channels] = shape.input;
    let (cin, kw) = (shape.group_in, shape.kernel[1]);
    for (p, patch) in positions.zip(cols.chunks_exact(shape.patch())) {
        let (oy, ox) = (p / shape.output[1], p % shape.output[1]);
        for (ky, row) in patch.chunks_exact(kw * cin).enumerate() {
            let Some(iy) = shape.source(oy, ky, 0) else { continue };
            for (kx, tap) in row.chunks_exact(cin).enumerate() {
                if let Some(ix) = shape.source(ox, kx, 1) {
                    let target = &mut input[(iy * width + ix) * channels + first_channel..][..cin];
                    for (t, v) in target.iter_mut().zip(tap) {
                        *t += v;
                    }
                }
            }
        }
    }
}

/// The output units of a convolution or linear layer that carry gradient, by position: those at
/// position p are `channels[starts[p]..starts[p + 1]]`, with their K class gradients in
/// `coefficients` (`[unit][K]`, the same order).
pub(crate) struct ActiveUnits {
    pub(crate) starts: Vec<u32>,
    pub(crate) channels: Vec<u32>,
    pub(crate) coefficients: Vec<f32>,
}

impl ActiveUnits {
    /// Gathers, from K class gradients `[K][positions][channels]`, the units `support` marks.
    pub(crate) fn gather(gradients: &[f32], support: &[bool], positions: usize, channels: usize, k: usize) -> Self {
        let len = positions * channels;
        let mut starts = Vec::with_capacity(positions + 1);
        let mut active = Vec::new();
        starts.push(0);
        for p in 0..positions {
            for (c, &on) in support[p * channels..][..channels].iter().enumerate() {
                if on {
                    active.push(c as u32);
                }
            }
            starts.push(active.len() as u32);
        }
        let mut coefficients = Vec::with_capacity(active.len() * k);
        for p in 0..positions {
            for &c in &active[starts[p] as usize..starts[p + 1] as usize] {
                let unit = p * channels + c as usize;
                coefficients.extend((0..k).map(|class| gradients[class * len + unit]));
            }
        }
        ActiveUnits { starts, channels: active, coefficients }
    }
}

/// The reverse of a convolution for K classes over the active output units only, as a gather:
/// each input position sums, over the taps and the active units that read it, the unit's K
/// gradients times the kernel tap's input-channel strip, with the K×S sums in registers.
/// `weights` is `[out][tap][padded in]`; writes `out[class][(row − rows.start)·W·C + …]` for
/// the input rows `rows`.
#[inline(always)]
fn conv_gather_kernel<const K: usize, const S: usize>(
    shape: &ConvShape,
    units: &ActiveUnits,
    weights: &[f32],
    padded_in: usize,
    rows: Range<usize>,
    out: &mut [f32],
) {
    let [_, width, channels] = shape.input;
    let band = rows.len() * width * channels;
    let taps = shape.taps();
    for qy in rows.clone() {
        for qx in 0..width {
            let base = ((qy - rows.start) * width + qx) * channels;
            for strip in (0..channels).step_by(S) {
                let mut acc = [[0f32; S]; K];
                for ky in 0..shape.kernel[0] {
                    let Some(oy) = shape.reader(qy, ky, 0) else { continue };
                    for kx in 0..shape.kernel[1] {
                        let Some(ox) = shape.reader(qx, kx, 1) else { continue };
                        let p = oy * shape.output[1] + ox;
                        let tap = ky * shape.kernel[1] + kx;
                        let (first, last) = (units.starts[p] as usize, units.starts[p + 1] as usize);
                        for unit in first..last {
                            let o = units.channels[unit] as usize;
                            let w: &[f32; S] = weights[(o * taps + tap) * padded_in + strip..][..S].try_into().unwrap();
                            let g: &[f32; K] = units.coefficients[unit * K..][..K].try_into().unwrap();
                            for k in 0..K {
                                for s in 0..S {
                                    acc[k][s] += g[k] * w[s];
                                }
                            }
                        }
                    }
                }
                let width_here = S.min(channels - strip);
                for (k, sums) in acc.iter().enumerate() {
                    out[k * band + base + strip..][..width_here].copy_from_slice(&sums[..width_here]);
                }
            }
        }
    }
}

with_wide_vectors!(conv_gather<K> => conv_gather_kernel(
    shape: &ConvShape, units: &ActiveUnits, weights: &[f32], padded_in: usize, rows: Range<usize>, out: &mut [f32]
) -> ());

/// The reverse of a linear layer for K classes over its active outputs: `out[class][i] =
/// Σ_unit g[unit][class] · W[row(unit)][i]` for the input strip `columns`, with the K×S sums in
/// registers. `rows[unit]` is the weight row of each unit of `coefficients` (`[unit][K]`).
#[inline(always)]
fn rows_gather_kernel<const K: usize, const S: usize>(
    weights: &[f32],
    inputs: usize,
    rows: &[u32],
    coefficients: &[f32],
    columns: Range<usize>,
    out: &mut [f32],
) {
    let band = columns.len();
    let mut start = columns.start;
    while start < columns.end {
        let width_here = S.min(columns.end - start);
        let mut acc = [[0f32; S]; K];
        if width_here == S {
            for (unit, &row) in rows.iter().enumerate() {
                let w: &[f32; S] = weights[row as usize * inputs + start..][..S].try_into().unwrap();
                let g: &[f32; K] = coefficients[unit * K..][..K].try_into().unwrap();
                for k in 0..K {
                    for s in 0..S {
                        acc[k][s] += g[k] * w[s];
                    }
                }
            }
        } else {
            for (unit, &row) in rows.iter().enumerate() {
                let w = &weights[row as usize * inputs + start..][..width_here];
                let g = &coefficients[unit * K..][..K];
                for k in 0..K {
                    for s in 0..width_here {
                        acc[k][s] += g[k] * w[s];
                    }
                }
            }
        }
        for (k, sums) in acc.iter().enumerate() {
            out[k * band + start - columns.start..][..width_here].copy_from_slice(&sums[..width_here]);
        }
        start += width_here;
    }
}

with_wide_vectors!(rows_gather<K> => rows_gather_kernel(
    weights: &[f32], inputs: usize, rows: &[u32], coefficients: &[f32], columns: Range<usize>, out: &mut [f32]
) -> ());

/// `items` split into at most `parts` runs of nearly equal length, each a multiple of
/// `granule` (the last may be shorter): fixed by the sizes alone, never by the thread count,
/// so the arithmetic — and its rounding — is the same however the runs are scheduled.
pub(crate) fn bands(items: usize, parts: usize, granule: usize) -> Vec<Range<usize>> {
    let len = items.div_ceil(parts.max(1)).div_ceil(granule.max(1)) * granule.max(1);
    (0..items).step_by(len.max(1)).map(|start| start..(start + len).min(items)).collect()
}
