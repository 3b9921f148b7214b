//! The arithmetic the passes are made of: matrix products through the `gemm` crate, patch
//! gathering for convolutions (im2col) and its transpose, and the two register-blocked
//! kernels of the sparse reverse pass. Activations are channel-last (`[H][W][C]`) here, so a
//! patch row is `kernel[0]` runs of `kernel[1]·C` contiguous values.

use std::ops::Range;

use rayon::prelude::*;

/// Defines `$name`, which runs `$kernel` compiled for AVX-512 or AVX2 when the CPU has them.
/// The loops here are written for LLVM to vectorise, but a portable build may only use SSE2 —
/// 4 lanes where AVX2 has 8. `$kernel` and what it calls are `#[inline(always)]` and free of
/// closures (a closure is compiled on its own, without the features). A `$kernel::<Axpy>`
/// is generic over its `y += g·x` update ([`Axpy`]): 16-lane FMAs in the AVX-512 build (LLVM
/// vectorises the plain loop 8 lanes wide even there, and the scatter kernels are bound by
/// their loads and stores).
macro_rules! with_wide_vectors {
    ($name:ident => $kernel:ident::<Axpy>($($arg:ident: $ty:ty),*) -> $out:ty) => {
        with_wide_vectors!(@dispatch $name, $out, [$($arg: $ty),*],
            $kernel::<avx512::FusedAxpy>, $kernel::<PlainAxpy>, $kernel::<PlainAxpy>);
    };
    ($name:ident => $kernel:ident($($arg:ident: $ty:ty),*) -> $out:ty) => {
        with_wide_vectors!(@dispatch $name, $out, [$($arg: $ty),*], $kernel, $kernel, $kernel);
    };
    (@dispatch $name:ident, $out:ty, [$($arg:ident: $ty:ty),*], $wide:path, $narrow:path, $portable:path) => {
        #[allow(clippy::too_many_arguments)]
        pub(crate) fn $name($($arg: $ty),*) -> $out {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                #[allow(clippy::too_many_arguments)]
                fn avx512($($arg: $ty),*) -> $out {
                    $wide($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx2($($arg: $ty),*) -> $out {
                    $narrow($($arg),*)
                }
                if is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F, checked on the line above.
                    return unsafe { avx512($($arg),*) };
                }
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has AVX2 and FMA, checked on the line above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $portable($($arg),*)
        }
    };
}

/// `y += g·x` over the shorter of the two, the update of the scatter kernels.
trait Axpy {
    fn axpy(g: f32, x: &[f32], y: &mut [f32]);
}

/// The plain loop, vectorised as the build allows (rounded as a multiply, then an add).
struct PlainAxpy;

impl Axpy for PlainAxpy {
    #[inline(always)]
    fn axpy(g: f32, x: &[f32], y: &mut [f32]) {
        y.iter_mut().zip(x).for_each(|(y, x)| *y += g * x);
    }
}

/// Lanes of the sparse kernels' strips: one AVX2 register.
pub(crate) const LANES: usize = 8;

/// K classes' sums over one strip of [`LANES`] columns: `Σ_i g_i[k] · w_i[0..8]` over the
/// terms i, whose K coefficients start at `coefficients[coefficient_at[i]]` and whose strip at
/// `weights[base + weight_at[i]]`. The sparse reverse passes spend their time here; the K×8
/// sums stay in registers.
type StripSums<const K: usize> = fn(&[f32], &[u32], &[f32], &[u32], usize) -> [[f32; LANES]; K];

/// `$avx2` where the CPU has AVX2 and FMA, else `$portable`: the vector kernels in [`avx2`]
/// are handed out only through this check.
macro_rules! fastest {
    ($avx2:expr, $portable:expr) => {{
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return $avx2;
        }
        $portable
    }};
}

/// The fastest [`StripSums`] this CPU runs: fused multiply-adds on AVX2 (Rust never contracts
/// `a * b + c` by itself, and LLVM vectorises `mul_add` over arrays poorly), portable code
/// elsewhere.
fn strip_sums<const K: usize>() -> StripSums<K> {
    fastest!(avx2::strip_sums::<K>, portable_strip_sums::<K, LANES>)
}

fn portable_strip_sums<const K: usize, const L: usize>(
    coefficients: &[f32],
    coefficient_at: &[u32],
    weights: &[f32],
    weight_at: &[u32],
    base: usize,
) -> [[f32; L]; K] {
    let mut acc = [[0f32; L]; K];
    for (&c, &w) in coefficient_at.iter().zip(weight_at) {
        let g = &coefficients[c as usize..][..K];
        let w = &weights[base + w as usize..][..L];
        for k in 0..K {
            for s in 0..L {
                acc[k][s] += g[k] * w[s];
            }
        }
    }
    acc
}

/// [`StripSums`] over a strip of 16·V columns, V AVX-512 registers per class (V = 1 or 2):
/// each term's K coefficients are broadcast once for all 16·V columns, not once per 8 — with
/// 8-lane strips the broadcasts cost as much as the multiply-adds. Each column's sum is the
/// same chain of fused multiply-adds as in the 8-lane kernel, so a wide strip rounds as four or
/// two narrow ones.
type WideStripSums<const K: usize, const V: usize> = fn(&[f32], &[u32], &[f32], &[u32], usize) -> [[[f32; 16]; V]; K];

/// The [`WideStripSums`] of V registers (16·V columns) on this CPU, where it has AVX-512F.
fn wide_strip_sums<const K: usize, const V: usize>() -> Option<WideStripSums<K, V>> {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        return Some(avx512::strip_sums::<K, V>);
    }
    None
}

/// The strip kernels this CPU runs for K classes: 8 lanes everywhere, 32 and 16 where it has
/// AVX-512. The sparse gathers of convolutions and linear layers sum every strip through
/// [`StripKernels::sum_into`].
#[derive(Clone, Copy)]
struct StripKernels<const K: usize> {
    narrow: StripSums<K>,
    wide: Option<WideStripSums<K, 2>>,
    half: Option<WideStripSums<K, 1>>,
}

impl<const K: usize> StripKernels<K> {
    fn new() -> Self {
        StripKernels { narrow: strip_sums::<K>(), wide: wide_strip_sums::<K, 2>(), half: wide_strip_sums::<K, 1>() }
    }

    /// The widest strip this CPU sums.
    fn widest(&self) -> usize {
        if self.wide.is_some() {
            32
        } else {
            LANES
        }
    }

    /// Sums `terms` (coefficients, their offsets, weights, the strips' offsets, the strip's
    /// column) over the widest strip the `padding` weight columns from there hold, and writes
    /// each class's sums to `out` (`band` values a class) from `at`, at most `room` of them; the
    /// strip's width.
    fn sum_into(
        &self,
        (coefficients, coefficient_at, weights, weight_at, column): (&[f32], &[u32], &[f32], &[u32], usize),
        padding: usize,
        out: &mut [f32],
        band: usize,
        at: usize,
        room: usize,
    ) -> usize {
        let (c, ct, w, wt) = (coefficients, coefficient_at, weights, weight_at);
        match (self.wide, self.half) {
            (Some(wide), _) if padding >= 32 => {
                put_strip(out, band, at, room, wide(c, ct, w, wt, column).iter().map(|r| r.as_flattened()))
            }
            (_, Some(half)) if padding >= 16 => {
                put_strip(out, band, at, room, half(c, ct, w, wt, column).iter().map(|r| r.as_flattened()))
            }
            _ => put_strip(out, band, at, room, (self.narrow)(c, ct, w, wt, column).iter().map(|r| &r[..])),
        }
    }
}

/// Adds `w · rows[start + shift ..][..ROW_TILE]` to `sums` for each term `(w, start)`: the
/// inner loop of [`transposed_rows`].
type TileSums = fn(&[f32], &[(f32, usize)], usize, &mut [f32; ROW_TILE]);

/// The fastest [`TileSums`] this CPU runs (see [`strip_sums`]).
fn tile_sums() -> TileSums {
    fastest!(avx2::tile_sums, portable_tile_sums)
}

fn portable_tile_sums(rows: &[f32], terms: &[(f32, usize)], shift: usize, sums: &mut [f32; ROW_TILE]) {
    for &(w, start) in terms {
        sums.iter_mut().zip(&rows[start + shift..][..ROW_TILE]).for_each(|(s, v)| *s += w * v);
    }
}

/// [`col2im`] for two input channels or more: each input position's channels (`cin` of them
/// from `first_channel`, `channels` a position) add the columns of the entries that read it.
/// Adding into memory entry by entry waits on each store; the vector kernel keeps the sums in
/// registers.
type GatherColumns = fn(&TapReaders, &[f32], usize, usize, usize, &mut [f32]);

/// The fastest [`GatherColumns`] this CPU runs (see [`strip_sums`]).
fn gather_columns() -> GatherColumns {
    fastest!(avx2::gather_columns, portable_gather_columns)
}

fn portable_gather_columns(
    readers: &TapReaders,
    cols: &[f32],
    cin: usize,
    channels: usize,
    first_channel: usize,
    input: &mut [f32],
) {
    for (q, bounds) in readers.starts.windows(2).enumerate() {
        let target = &mut input[q * channels + first_channel..][..cin];
        for &e in &readers.entries[bounds[0] as usize..bounds[1] as usize] {
            target.iter_mut().zip(&cols[e as usize * cin..][..cin]).for_each(|(t, v)| *t += v);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        _mm256_add_ps, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_setzero_ps, _mm256_storeu_ps,
    };

    use super::{TapReaders, LANES, ROW_TILE};

    /// Vectors in a row tile.
    const TILE_VECTORS: usize = ROW_TILE / LANES;

    /// [`super::TileSums`] with AVX2 and FMA. Only [`super::tile_sums`] hands it out, after
    /// checking that the CPU has both.
    pub(super) fn tile_sums(rows: &[f32], terms: &[(f32, usize)], shift: usize, sums: &mut [f32; ROW_TILE]) {
        // SAFETY: only reachable through `super::tile_sums`, which checked AVX2 and FMA.
        unsafe { tile(rows, terms, shift, sums) }
    }

    /// Channels [`entry_block`] sums at once: four vectors.
    const ENTRY_BLOCK: usize = 4 * LANES;

    /// [`super::GatherColumns`] with AVX2. Only [`super::gather_columns`] hands it out, after
    /// checking that the CPU has it.
    pub(super) fn gather_columns(
        readers: &TapReaders,
        cols: &[f32],
        cin: usize,
        channels: usize,
        first_channel: usize,
        input: &mut [f32],
    ) {
        // SAFETY: only reachable through `super::gather_columns`, which checked AVX2.
        unsafe { gather(readers, cols, cin, channels, first_channel, input) }
    }

    #[target_feature(enable = "avx2,fma")]
    fn gather(
        readers: &TapReaders,
        cols: &[f32],
        cin: usize,
        channels: usize,
        first_channel: usize,
        input: &mut [f32],
    ) {
        for (q, bounds) in readers.starts.windows(2).enumerate() {
            let entries = &readers.entries[bounds[0] as usize..bounds[1] as usize];
            let target = &mut input[q * channels + first_channel..][..cin];
            for first in (0..cin).step_by(ENTRY_BLOCK) {
                let block = &mut target[first..cin.min(first + ENTRY_BLOCK)];
                match block.len().div_ceil(LANES) {
                    1 => entry_block::<1>(cols, entries, cin, first, block),
                    2 => entry_block::<2>(cols, entries, cin, first, block),
                    3 => entry_block::<3>(cols, entries, cin, first, block),
                    _ => entry_block::<4>(cols, entries, cin, first, block),
                }
            }
        }
    }

    /// Channels `first ..` of one input position in [`gather`], `V` vectors wide (`block`: up
    /// to V·8 of them; a vector may read past them, into the next entry's, which it leaves out).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn entry_block<const V: usize>(cols: &[f32], entries: &[u32], cin: usize, first: usize, block: &mut [f32]) {
        let width = block.len();
        // Entries whose vectors would run past the columns' end add their values here.
        let mut tail = [0f32; ENTRY_BLOCK];
        macro_rules! add {
            ($set:ident, $e:expr) => {{
                let at = $e as usize * cin + first;
                match cols.get(at..at + V * LANES) {
                    Some(values) => {
                        for (j, sum) in $set.iter_mut().enumerate() {
                            // SAFETY: `values` holds V·LANES values.
                            *sum = _mm256_add_ps(*sum, unsafe { _mm256_loadu_ps(values.as_ptr().add(j * LANES)) });
                        }
                    }
                    None => tail.iter_mut().zip(&cols[at..at + width]).for_each(|(s, v)| *s += v),
                }
            }};
        }
        // Two sets over alternate entries, so that the additions do not wait on each other.
        let (mut even, mut odd) = ([_mm256_setzero_ps(); V], [_mm256_setzero_ps(); V]);
        let (pairs, rest) = entries.as_chunks::<2>();
        for &[e0, e1] in pairs {
            add!(even, e0);
            add!(odd, e1);
        }
        for &e in rest {
            add!(even, e);
        }
        let mut sums = [0f32; ENTRY_BLOCK];
        for j in 0..V {
            let (sum, out) = (&tail[j * LANES..][..LANES], &mut sums[j * LANES..][..LANES]);
            // SAFETY: `sum` and `out` hold the LANES values read and written.
            unsafe {
                let total = _mm256_add_ps(_mm256_add_ps(even[j], odd[j]), _mm256_loadu_ps(sum.as_ptr()));
                _mm256_storeu_ps(out.as_mut_ptr(), total);
            }
        }
        block.iter_mut().zip(&sums).for_each(|(t, s)| *t += s);
    }

    #[target_feature(enable = "avx2,fma")]
    fn tile(rows: &[f32], terms: &[(f32, usize)], shift: usize, sums: &mut [f32; ROW_TILE]) {
        // Sums in registers, not in the array: a bounds check's exit would otherwise store them
        // after every term. Two sets over alternate terms, so that the FMAs do not wait on each
        // other.
        let (mut even, mut odd) = ([_mm256_setzero_ps(); TILE_VECTORS], [_mm256_setzero_ps(); TILE_VECTORS]);
        macro_rules! add {
            ($set:ident, $w:expr, $start:expr) => {{
                let source = &rows[$start + shift..][..ROW_TILE];
                let w = _mm256_set1_ps($w);
                for (j, sum) in $set.iter_mut().enumerate() {
                    // SAFETY: `source` holds ROW_TILE = TILE_VECTORS · LANES values.
                    *sum = _mm256_fmadd_ps(w, unsafe { _mm256_loadu_ps(source.as_ptr().add(j * LANES)) }, *sum);
                }
            }};
        }
        let (pairs, rest) = terms.as_chunks::<2>();
        for &[(w0, start0), (w1, start1)] in pairs {
            add!(even, w0, start0);
            add!(odd, w1, start1);
        }
        for &(w, start) in rest {
            add!(even, w, start);
        }
        for (j, (a, b)) in even.iter().zip(&odd).enumerate() {
            let target = &mut sums[j * LANES..][..LANES];
            // SAFETY: `target` holds the LANES values loaded and stored.
            unsafe {
                let sum = _mm256_add_ps(_mm256_add_ps(*a, *b), _mm256_loadu_ps(target.as_ptr()));
                _mm256_storeu_ps(target.as_mut_ptr(), sum);
            }
        }
    }

    /// Up to this many classes the sums run in two interleaved sets.
    pub(super) const TWO_CHAINS: usize = 6;

    /// [`super::StripSums`] with AVX2 and FMA. Only [`super::strip_sums`] hands it out, after
    /// checking that the CPU has both.
    pub(super) fn strip_sums<const K: usize>(
        coefficients: &[f32],
        coefficient_at: &[u32],
        weights: &[f32],
        weight_at: &[u32],
        base: usize,
    ) -> [[f32; LANES]; K] {
        // SAFETY: only reachable through `super::strip_sums`, which checked AVX2 and FMA.
        unsafe { sums(coefficients, coefficient_at, weights, weight_at, base) }
    }

    #[target_feature(enable = "avx2,fma")]
    fn sums<const K: usize>(
        coefficients: &[f32],
        coefficient_at: &[u32],
        weights: &[f32],
        weight_at: &[u32],
        base: usize,
    ) -> [[f32; LANES]; K] {
        // A macro, not a closure: a closure would be compiled on its own, without AVX2.
        macro_rules! term {
            ($i:expr) => {{
                let g = &coefficients[coefficient_at[$i] as usize..][..K];
                let w = &weights[base + weight_at[$i] as usize..][..LANES];
                // SAFETY: `w` holds exactly the 8 values read.
                (g, unsafe { _mm256_loadu_ps(w.as_ptr()) })
            }};
        }
        let terms = coefficient_at.len().min(weight_at.len());
        let mut acc = [_mm256_setzero_ps(); K];
        if K <= TWO_CHAINS {
            // Few classes: a second set of sums over the odd terms, so that the additions do
            // not wait on each other (an FMA's latency is 4–5 cycles, its throughput 2 a cycle).
            let mut odd = [_mm256_setzero_ps(); K];
            for i in (0..terms - terms % 2).step_by(2) {
                let ((g0, w0), (g1, w1)) = (term!(i), term!(i + 1));
                for k in 0..K {
                    acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(g0[k]), w0, acc[k]);
                    odd[k] = _mm256_fmadd_ps(_mm256_set1_ps(g1[k]), w1, odd[k]);
                }
            }
            if terms % 2 == 1 {
                let (g, w) = term!(terms - 1);
                for k in 0..K {
                    acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(g[k]), w, acc[k]);
                }
            }
            for k in 0..K {
                acc[k] = _mm256_add_ps(acc[k], odd[k]);
            }
        } else {
            for i in 0..terms {
                let (g, w) = term!(i);
                for k in 0..K {
                    acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(g[k]), w, acc[k]);
                }
            }
        }
        let mut out = [[0f32; LANES]; K];
        for (row, sums) in out.iter_mut().zip(acc) {
            // SAFETY: `row` holds exactly the 8 values written.
            unsafe { _mm256_storeu_ps(row.as_mut_ptr(), sums) };
        }
        out
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::{
        __m512, _mm512_add_ps, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps,
    };

    use super::avx2::TWO_CHAINS;

    /// [`super::Axpy`] in 16-lane FMAs (one rounding per update; the tail, under 16 values, as
    /// scalar FMAs). Only the AVX-512 build of `with_wide_vectors!` uses it.
    pub(super) struct FusedAxpy;

    impl super::Axpy for FusedAxpy {
        #[inline(always)]
        fn axpy(g: f32, x: &[f32], y: &mut [f32]) {
            // SAFETY: called only by `with_wide_vectors!`'s AVX-512 build, after checking that
            // the CPU has AVX-512F.
            unsafe { fused_axpy(g, x, y) }
        }
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    fn fused_axpy(g: f32, x: &[f32], y: &mut [f32]) {
        let len = x.len().min(y.len());
        let whole = len - len % 16;
        let g16 = _mm512_set1_ps(g);
        for i in (0..whole).step_by(16) {
            // SAFETY: i + 16 ≤ len, within both slices.
            unsafe {
                let sum = _mm512_fmadd_ps(g16, _mm512_loadu_ps(x.as_ptr().add(i)), _mm512_loadu_ps(y.as_ptr().add(i)));
                _mm512_storeu_ps(y.as_mut_ptr().add(i), sum);
            }
        }
        for (y, x) in y[whole..len].iter_mut().zip(&x[whole..len]) {
            *y = g.mul_add(*x, *y);
        }
    }

    /// [`super::WideStripSums`] with AVX-512F. Only [`super::wide_strip_sums`] hands it out,
    /// after checking that the CPU has it.
    pub(super) fn strip_sums<const K: usize, const V: usize>(
        coefficients: &[f32],
        coefficient_at: &[u32],
        weights: &[f32],
        weight_at: &[u32],
        base: usize,
    ) -> [[[f32; 16]; V]; K] {
        // SAFETY: only reachable through `super::wide_strip_sums`, which checked AVX-512F.
        unsafe { sums(coefficients, coefficient_at, weights, weight_at, base) }
    }

    /// The chains of [`super::avx2`]'s kernel, V registers of 16 columns wide.
    #[target_feature(enable = "avx512f")]
    fn sums<const K: usize, const V: usize>(
        coefficients: &[f32],
        coefficient_at: &[u32],
        weights: &[f32],
        weight_at: &[u32],
        base: usize,
    ) -> [[[f32; 16]; V]; K] {
        // A macro, not a closure: a closure would be compiled on its own, without AVX-512.
        macro_rules! term {
            ($i:expr) => {{
                let g = &coefficients[coefficient_at[$i] as usize..][..K];
                let w = &weights[base + weight_at[$i] as usize..][..16 * V];
                let mut vectors = [_mm512_setzero_ps(); V];
                for (v, vector) in vectors.iter_mut().enumerate() {
                    // SAFETY: `w` holds the 16·V values read.
                    *vector = unsafe { _mm512_loadu_ps(w.as_ptr().add(16 * v)) };
                }
                (g, vectors)
            }};
        }
        macro_rules! add_term {
            ($acc:expr, $g:expr, $w:expr) => {
                for k in 0..K {
                    let g = _mm512_set1_ps($g[k]);
                    for v in 0..V {
                        $acc[k][v] = _mm512_fmadd_ps(g, $w[v], $acc[k][v]);
                    }
                }
            };
        }
        let terms = coefficient_at.len().min(weight_at.len());
        let mut acc: [[__m512; V]; K] = [[_mm512_setzero_ps(); V]; K];
        if K <= TWO_CHAINS {
            let mut odd: [[__m512; V]; K] = [[_mm512_setzero_ps(); V]; K];
            for i in (0..terms - terms % 2).step_by(2) {
                let ((g0, w0), (g1, w1)) = (term!(i), term!(i + 1));
                add_term!(acc, g0, w0);
                add_term!(odd, g1, w1);
            }
            if terms % 2 == 1 {
                let (g, w) = term!(terms - 1);
                add_term!(acc, g, w);
            }
            for k in 0..K {
                for v in 0..V {
                    acc[k][v] = _mm512_add_ps(acc[k][v], odd[k][v]);
                }
            }
        } else {
            for i in 0..terms {
                let (g, w) = term!(i);
                add_term!(acc, g, w);
            }
        }
        let mut out = [[[0f32; 16]; V]; K];
        for (row, sums) in out.iter_mut().zip(acc) {
            for (values, sum) in row.iter_mut().zip(sums) {
                // SAFETY: `values` holds exactly the 16 values written.
                unsafe { _mm512_storeu_ps(values.as_mut_ptr(), sum) };
            }
        }
        out
    }
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

/// Classes one reverse pass carries together: their sums over a strip must fit the vector
/// registers (12 of AVX2's 16).
pub(crate) const MAX_GROUP: usize = 12;

/// Input channels of the sparse kernel's weights are padded to a multiple of this (a strip).
pub(crate) const CHANNEL_PAD: usize = LANES;

use crate::reverse::Listed;

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

/// [`matmul`] writing c column by column: element (i, j) at `c[j·m + i]`.
pub(crate) fn matmul_by_columns((m, n, k): (usize, usize, usize), c: &mut [f32], a: Operand, b: Operand) {
    matmul_strided((m, n, k), (c, 1, m), a, b, false, gemm::Parallelism::None)
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
    shape: (usize, usize, usize),
    (c, c_row): (&mut [f32], usize),
    a: Operand,
    b: Operand,
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    matmul_strided(shape, (c, c_row, 1), a, b, accumulate, parallelism)
}

fn matmul_strided(
    (m, n, k): (usize, usize, usize),
    (c, c_row, c_col): (&mut [f32], usize, usize),
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
                for col in 0..n {
                    c[row * c_row + col * c_col] = 0.0;
                }
            }
        }
        return;
    }
    let last = |rows: usize, cols: usize, row: usize, col: usize| (rows - 1) * row + (cols - 1) * col;
    assert!(
        last(m, n, c_row, c_col) < c.len() && last(m, k, a_row, a_col) < a.len() && last(k, n, b_row, b_col) < b.len(),
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
            c_col as isize,
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

/// Rows of W taken together over all points: their few hundred KiB stay in L2 while each point's
/// input passes, so W comes from memory once per batch rather than once per point.
const ROW_BLOCK: usize = 4;

fn dot_rows_kernel(weights: &[f32], n: usize, xs: &[f32], bias: Option<&[f32]>, rows: Range<usize>, out: &mut [f32]) {
    let band = rows.len();
    for block in (rows.start..rows.end).step_by(ROW_BLOCK) {
        let block_end = (block + ROW_BLOCK).min(rows.end);
        for (x, out) in xs.chunks_exact(n).zip(out.chunks_exact_mut(band)) {
            for row in block..block_end {
                out[row - rows.start] = bias.map_or(0.0, |b| b[row]) + dot(&weights[row * n..][..n], x);
            }
        }
    }
}

with_wide_vectors!(dot_rows_wide => dot_rows_kernel(
    weights: &[f32], n: usize, xs: &[f32], bias: Option<&[f32]>, rows: Range<usize>, out: &mut [f32]
) -> ());

/// `out[point][r − rows.start] = bias[r] + W[r]·x_point` for the rows `rows` of a row-major W
/// with `n` columns and the points `xs` (`[point][n]`). Each value is one fixed-order dot
/// product, the same in any batch.
pub(crate) fn dot_rows(
    weights: &[f32],
    n: usize,
    xs: &[f32],
    bias: Option<&[f32]>,
    rows: Range<usize>,
    out: &mut [f32],
) {
    if n > 0 && !rows.is_empty() {
        dot_rows_wide(weights, n, xs, bias, rows, out)
    }
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
    pub(crate) fn source(&self, o: usize, t: usize, axis: usize) -> Option<usize> {
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

/// For each output position and kernel tap, the input position (`y·W + x`) it reads, or
/// `u32::MAX` in the padding: the index arithmetic of [`col2im`], done once per layer.
pub(crate) fn tap_sources(shape: &ConvShape) -> Vec<u32> {
    let (taps, [_, kw]) = (shape.taps(), shape.kernel);
    (0..shape.positions() * taps)
        .map(|i| {
            let (p, tap) = (i / taps, i % taps);
            let (oy, ox) = (p / shape.output[1], p % shape.output[1]);
            match (shape.source(oy, tap / kw, 0), shape.source(ox, tap % kw, 1)) {
                (Some(iy), Some(ix)) => (iy * shape.input[1] + ix) as u32,
                _ => u32::MAX,
            }
        })
        .collect()
}

/// For each input position, the im2col entries (`p·taps + tap`) that read it, ascending:
/// `entries[starts[q]..starts[q + 1]]` — [`tap_sources`] inverted, so that [`col2im`] sums
/// into each input once instead of scattering into it tap by tap.
pub(crate) struct TapReaders {
    starts: Vec<u32>,
    entries: Vec<u32>,
}

impl TapReaders {
    pub(crate) fn new(shape: &ConvShape, sources: &[u32]) -> Self {
        let inside = || sources.iter().enumerate().filter(|&(_, &q)| q != u32::MAX);
        let (starts, slots) = bucket_slots(shape.input[0] * shape.input[1], inside().map(|(_, &q)| q as usize));
        let mut entries = vec![0u32; slots.len()];
        for ((entry, _), &at) in inside().zip(&slots) {
            entries[at as usize] = entry as u32;
        }
        TapReaders { starts, entries }
    }
}

/// The transpose of [`im2col`]: adds `cols` (`[position][tap][in of group]`) back onto the input
/// map's channels `first_channel ..`, each input position summing the entries that read it.
#[inline(always)]
fn col2im_kernel(shape: &ConvShape, readers: &TapReaders, cols: &[f32], first_channel: usize, input: &mut [f32]) {
    let (channels, cin) = (shape.input[2], shape.group_in);
    if cin > 1 {
        return gather_columns()(readers, cols, cin, channels, first_channel, input);
    }
    for (q, bounds) in readers.starts.windows(2).enumerate() {
        let entries = &readers.entries[bounds[0] as usize..bounds[1] as usize];
        // Four partial sums: one chain of dependent additions would wait on each other.
        let mut lanes = [0f32; 4];
        let (quads, rest) = entries.as_chunks::<4>();
        for quad in quads {
            for (lane, &e) in lanes.iter_mut().zip(quad) {
                *lane += cols[e as usize];
            }
        }
        let tail: f32 = rest.iter().map(|&e| cols[e as usize]).sum();
        input[q * channels + first_channel] += (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]) + tail;
    }
}

with_wide_vectors!(col2im => col2im_kernel(
    shape: &ConvShape, readers: &TapReaders, cols: &[f32], first_channel: usize, input: &mut [f32]
) -> ());

/// [`col2im`] from columns stored tap-major (`cols[(tap·C_in + c)·stride + p]` for the P output
/// positions p of one image): each tap and channel adds whole rows of outputs onto rows of
/// inputs, shifted — contiguous runs where the stride is 1 and the map has one channel, which
/// is where the position-major [`col2im`] gathers 25 scattered values per input (a network's
/// first layer).
#[inline(always)]
fn col2im_by_taps_kernel(shape: &ConvShape, cols: &[f32], stride: usize, first_channel: usize, input: &mut [f32]) {
    let ([_, width, channels], [out_h, out_w]) = (shape.input, shape.output);
    let positions = out_h * out_w;
    // Per kernel column kx, the outputs whose tap lands inside the image along x, with the input
    // column it lands on.
    let columns: Vec<Vec<(usize, usize)>> = (0..shape.kernel[1])
        .map(|kx| (0..out_w).filter_map(|ox| shape.source(ox, kx, 1).map(|ix| (ox, ix))).collect())
        .collect();
    for c in 0..shape.group_in {
        for ky in 0..shape.kernel[0] {
            for (kx, xs) in columns.iter().enumerate() {
                let tap = ky * shape.kernel[1] + kx;
                let plane = &cols[(tap * shape.group_in + c) * stride..][..positions];
                let Some(&(first_ox, first_ix)) = xs.first() else { continue };
                for oy in 0..out_h {
                    let Some(iy) = shape.source(oy, ky, 0) else { continue };
                    let row = &plane[oy * out_w..][..out_w];
                    let target = &mut input[iy * width * channels + first_channel + c..];
                    if shape.stride[1] == 1 && shape.dilation[1] == 1 && channels == 1 {
                        let run = xs.len();
                        for (t, v) in target[first_ix..first_ix + run].iter_mut().zip(&row[first_ox..first_ox + run]) {
                            *t += v;
                        }
                    } else {
                        for &(ox, ix) in xs {
                            target[ix * channels] += row[ox];
                        }
                    }
                }
            }
        }
    }
}

with_wide_vectors!(col2im_by_taps => col2im_by_taps_kernel(
    shape: &ConvShape, cols: &[f32], stride: usize, first_channel: usize, input: &mut [f32]
) -> ());

/// Input columns [`transposed_rows`] sums at once, in registers: four AVX2 registers.
const ROW_TILE: usize = 32;

/// One class's output gradient laid out for [`transposed_rows`]: channel-first rows with a
/// zero margin on both sides, so that each kernel column's shift is an offset and every tile
/// it reads lies inside the row.
#[derive(Clone, Copy)]
pub(crate) struct ShiftedRows {
    margin: usize,
    row: usize,
}

impl ShiftedRows {
    pub(crate) fn new(shape: &ConvShape) -> Self {
        let margin = shape.dilation[1] * (shape.kernel[1] - 1);
        let tiles = shape.input[1].div_ceil(ROW_TILE) * ROW_TILE;
        ShiftedRows { margin, row: margin + (shape.padding[1] + tiles).max(shape.output[1]) }
    }

    /// Values of the layout for `channels` output channels.
    pub(crate) fn len(&self, shape: &ConvShape, channels: usize) -> usize {
        channels * shape.output[0] * self.row
    }

    /// Writes `gradient` (`[position][stride]`, the group's `channels` first) into `rows`.
    pub(crate) fn fill(&self, shape: &ConvShape, gradient: &[f32], stride: usize, channels: usize, rows: &mut [f32]) {
        let [out_h, out_w] = shape.output;
        for (o, plane) in rows.chunks_mut(out_h * self.row).take(channels).enumerate() {
            for (row, line) in plane.chunks_mut(self.row).zip(gradient[o..].chunks(out_w * stride)) {
                let (margin, rest) = row.split_at_mut(self.margin);
                let (targets, end) = rest.split_at_mut(out_w);
                margin.fill(0.0);
                targets.iter_mut().zip(line.iter().step_by(stride)).for_each(|(t, &v)| *t = v);
                end.fill(0.0);
            }
        }
    }
}

/// A stride-1 convolution's input gradient as one product per tap, without columns: on a
/// canvas as wide as the padded input, tap (ky, kx) moves every output by the same offset, so
/// its contribution `G · W_tapᵀ` lands on the canvas rows from `ky·dy·width + kx·dx` on. Output
/// rows are laid out canvas-wide (zeros past the map's width), which costs `rows / positions`
/// more products than im2col's columns but writes and re-reads no columns.
#[derive(Clone, Copy)]
pub(crate) struct Canvas {
    width: usize,
    /// Canvas rows, the last tap's overhang included.
    rows: usize,
}

impl Canvas {
    /// The canvas of a stride-1 convolution whose outputs, laid out canvas-wide, are at most a
    /// quarter more than its output positions (a 3×3 convolution on maps of 18 or more; the
    /// extra products would outweigh the columns saved on smaller ones).
    pub(crate) fn new(shape: &ConvShape) -> Option<Self> {
        let ([kh, kw], [dy, dx], [out_h, out_w]) = (shape.kernel, shape.dilation, shape.output);
        let width = out_w + (kw - 1) * dx;
        let rows = (out_h + (kh - 1) * dy) * width + (kw - 1) * dx;
        (shape.stride == [1, 1] && 4 * out_h * width <= 5 * shape.positions()).then_some(Canvas { width, rows })
    }

    /// Values of the output gradient's canvas (`cout` channels) and of the input's (`cin`).
    pub(crate) fn lens(&self, cout: usize, cin: usize) -> (usize, usize) {
        (self.rows * cout, self.rows * cin)
    }

    /// The product's rows: the output rows, canvas-wide.
    pub(crate) fn output_rows(&self, shape: &ConvShape) -> usize {
        shape.output[0] * self.width
    }

    /// Where tap `tap`'s contribution starts, in canvas rows.
    pub(crate) fn offset(&self, shape: &ConvShape, tap: usize) -> usize {
        let (ky, kx) = (tap / shape.kernel[1], tap % shape.kernel[1]);
        ky * shape.dilation[0] * self.width + kx * shape.dilation[1]
    }

    /// Lays `gradient` (`[position][cout]`) out canvas-wide in `rows`, zeros past the map's width.
    pub(crate) fn lay_out(&self, shape: &ConvShape, gradient: &[f32], cout: usize, rows: &mut [f32]) {
        let line = shape.output[1] * cout;
        let canvas_rows = rows[..self.output_rows(shape) * cout].chunks_mut(self.width * cout);
        for (row, values) in canvas_rows.zip(gradient.chunks(line)) {
            let (inside, past) = row.split_at_mut(line);
            inside.copy_from_slice(values);
            past.fill(0.0);
        }
    }

    /// The input map (`[H][W][cin]`, written) cut out of the input canvas.
    pub(crate) fn cut_out(&self, shape: &ConvShape, canvas: &[f32], input: &mut [f32]) {
        let ([height, width, cin], [py, px]) = (shape.input, shape.padding);
        for (iy, line) in input.chunks_mut(width * cin).take(height).enumerate() {
            line.copy_from_slice(&canvas[((iy + py) * self.width + px) * cin..][..width * cin]);
        }
    }
}

/// The input gradient of a convolution with stride 1 along x, computed directly from the
/// output gradient (`rows`, laid out by [`ShiftedRows`]) and the forward kernel (`[tap][in of
/// group][out of group]`): each input row's tile sums every tap's and output channel's shifted
/// row in registers, then adds onto channel `first_channel + c` of `input` (`[H][W][C]`). For few
/// input channels this replaces a product whose columns col2im would read back: the first layer
/// of a network, whose maps are the largest.
pub(crate) fn transposed_rows(
    shape: &ConvShape,
    kernel: &[f32],
    layout: ShiftedRows,
    rows: &[f32],
    first_channel: usize,
    input: &mut [f32],
) {
    let ([height, width, channels], out_h) = (shape.input, shape.output[0]);
    let ([kh, kw], cin) = (shape.kernel, shape.group_in);
    let cout = kernel.len() / (kh * kw * cin);
    // Per input channel, each (tap, output channel)'s weight and where its shifted row starts
    // (output row 0, tile 0), kernel row by kernel row: one flat loop per kernel row keeps the
    // sums in registers.
    let mut terms: Vec<(f32, usize)> = Vec::with_capacity(kh * kw * cout);
    let add_tiles = tile_sums();
    for c in 0..cin {
        terms.clear();
        for tap in 0..kh * kw {
            let start = layout.margin + shape.padding[1] - (tap % kw) * shape.dilation[1];
            let weights = &kernel[(tap * cin + c) * cout..][..cout];
            terms.extend(weights.iter().enumerate().map(|(o, &w)| (w, o * out_h * layout.row + start)));
        }
        for iy in 0..height {
            for x0 in (0..width).step_by(ROW_TILE) {
                let mut sums = [0f32; ROW_TILE];
                for (ky, row_terms) in terms.chunks_exact(kw * cout).enumerate() {
                    if let Some(oy) = shape.reader(iy, ky, 0) {
                        add_tiles(rows, row_terms, oy * layout.row + x0, &mut sums);
                    }
                }
                let line = &mut input[(iy * width + x0) * channels + first_channel + c..];
                for (x, s) in sums.iter().take(width - x0).enumerate() {
                    line[x * channels] += s;
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

    /// From a listed gradient (units `p·channels + c` and their K values), grouped by position.
    pub(crate) fn from_listed(listed: &Listed, positions: usize, channels: usize, k: usize) -> Self {
        let (starts, slots) = bucket_slots(positions, listed.units.iter().map(|&unit| unit as usize / channels));
        let mut active = vec![0u32; listed.units.len()];
        let mut coefficients = vec![0f32; listed.units.len() * k];
        for ((&unit, values), &at) in listed.units.iter().zip(listed.values.chunks_exact(k)).zip(&slots) {
            active[at as usize] = unit % channels as u32;
            coefficients[at as usize * k..][..k].copy_from_slice(values);
        }
        ActiveUnits { starts, channels: active, coefficients }
    }
}

/// A stable counting sort of items into `buckets` by their keys: each bucket's first slot
/// (`buckets + 1` values, the last the item count) and, per item in order, its slot.
pub(crate) fn bucket_slots(buckets: usize, keys: impl Iterator<Item = usize> + Clone) -> (Vec<u32>, Vec<u32>) {
    let mut starts = vec![0u32; buckets + 1];
    for key in keys.clone() {
        starts[key + 1] += 1;
    }
    for bucket in 0..buckets {
        starts[bucket + 1] += starts[bucket];
    }
    let mut next = starts.clone();
    let slots = keys
        .map(|key| {
            next[key] += 1;
            next[key] - 1
        })
        .collect();
    (starts, slots)
}

/// For each input coordinate along one axis and each kernel tap, the output coordinate that
/// reads it through that tap (`u32::MAX`: none) — divisions done once, not per tap and strip.
fn readers(shape: &ConvShape, axis: usize) -> Vec<u32> {
    let (size, taps) = (shape.input[axis], shape.kernel[axis]);
    (0..size * taps).map(|i| shape.reader(i / taps, i % taps, axis).map_or(u32::MAX, |o| o as u32)).collect()
}

/// The reverse of a convolution for K classes over the active output units only, as a gather:
/// each input position lists, once, the (unit, kernel tap) pairs that read it, then each strip
/// of 8, 16 or 32 input channels sums the units' K gradients times the taps' strips
/// ([`StripSums`], [`WideStripSums`]).
/// `weights` is `[out][tap][padded in]`; writes `out[class][(row − rows.start)·W·C + …]` for
/// the input rows `rows`.
pub(crate) fn conv_gather<const K: usize>(
    shape: &ConvShape,
    units: &ActiveUnits,
    weights: &[f32],
    padded_in: usize,
    rows: Range<usize>,
    out: &mut [f32],
) {
    let [_, width, channels] = shape.input;
    let band = rows.len() * width * channels;
    let (taps, [kh, kw]) = (shape.taps(), shape.kernel);
    let (readers_y, readers_x) = (readers(shape, 0), readers(shape, 1));
    let kernels = StripKernels::<K>::new();
    // The coefficient and weight offsets of every term of the current position.
    let (mut coefficient_at, mut weight_at) = (Vec::with_capacity(taps * 64), Vec::with_capacity(taps * 64));
    for qy in rows.clone() {
        for qx in 0..width {
            coefficient_at.clear();
            weight_at.clear();
            for ky in 0..kh {
                let oy = readers_y[qy * kh + ky];
                if oy == u32::MAX {
                    continue;
                }
                for kx in 0..kw {
                    let ox = readers_x[qx * kw + kx];
                    if ox == u32::MAX {
                        continue;
                    }
                    let p = oy as usize * shape.output[1] + ox as usize;
                    let (tap, span) = (ky * kw + kx, units.starts[p]..units.starts[p + 1]);
                    // Extended, not pushed one by one: one capacity check per span, and the
                    // offsets vectorise.
                    coefficient_at.extend(span.clone().map(|unit| unit * K as u32));
                    let channels = &units.channels[span.start as usize..span.end as usize];
                    weight_at.extend(channels.iter().map(|&o| (o * taps as u32 + tap as u32) * padded_in as u32));
                }
            }
            let base = ((qy - rows.start) * width + qx) * channels;
            let mut strip = 0;
            while strip < channels {
                let terms = (&units.coefficients[..], &coefficient_at[..], weights, &weight_at[..], strip);
                strip += kernels.sum_into(terms, padded_in - strip, out, band, base + strip, channels - strip);
            }
        }
    }
}

/// Writes each class's sums over one strip to `out` (`band` values a class) from `at`, at most
/// `room` of them (a strip may run past the channels into the weights' padding); the strip's
/// width.
fn put_strip<'a>(
    out: &mut [f32],
    band: usize,
    at: usize,
    room: usize,
    classes: impl Iterator<Item = &'a [f32]>,
) -> usize {
    let mut lanes = 0;
    for (k, sums) in classes.enumerate() {
        lanes = sums.len();
        let width = lanes.min(room);
        out[k * band + at..][..width].copy_from_slice(&sums[..width]);
    }
    lanes
}

/// One point's active output units of a convolution for one row (a training loss), by output
/// channel: channel o's are `positions[starts[o]..starts[o + 1]]` with their gradients in
/// `coefficients` — so that a channel's kernel (the reverse) or weight-gradient row stays in L1
/// while its units stream past.
pub(crate) struct UnitsByChannel {
    starts: Vec<u32>,
    positions: Vec<u32>,
    coefficients: Vec<f32>,
}

impl UnitsByChannel {
    /// From a listed gradient with one row (units `p·channels + c`).
    pub(crate) fn from_listed(listed: &Listed, channels: usize) -> Self {
        let (starts, slots) = bucket_slots(channels, listed.units.iter().map(|&unit| unit as usize % channels));
        let (mut positions, mut coefficients) = (vec![0u32; slots.len()], vec![0f32; slots.len()]);
        for ((&unit, &g), &at) in listed.units.iter().zip(&listed.values).zip(&slots) {
            (positions[at as usize], coefficients[at as usize]) = (unit / channels as u32, g);
        }
        UnitsByChannel { starts, positions, coefficients }
    }

    /// From a point's output gradient `[positions][channels]` and its support.
    pub(crate) fn gather(gradient: &[f32], support: &[bool], channels: usize) -> Self {
        let active = || support.iter().enumerate().filter(|&(_, &on)| on).map(|(unit, _)| unit);
        let (starts, slots) = bucket_slots(channels, active().map(|unit| unit % channels));
        let (mut positions, mut coefficients) = (vec![0u32; slots.len()], vec![0f32; slots.len()]);
        for (unit, &at) in active().zip(&slots) {
            (positions[at as usize], coefficients[at as usize]) = ((unit / channels) as u32, gradient[unit]);
        }
        UnitsByChannel { starts, positions, coefficients }
    }

    fn channel(&self, o: usize) -> impl Iterator<Item = (usize, f32)> + '_ {
        let range = self.starts[o] as usize..self.starts[o + 1] as usize;
        self.positions[range.clone()].iter().zip(&self.coefficients[range]).map(|(&p, &g)| (p as usize, g))
    }
}

/// The reverse of a convolution for one row over its active output units, channel by channel:
/// each unit adds its gradient times the channel's kernel taps (`weights`, `[out][tap][padded
/// in]`, the channel's in L1) to the input positions it read (`sources`, from
/// [`tap_sources`]); `out` is `[H][W][C]`, zeros on entry.
#[inline(always)]
fn conv_scatter_kernel<A: Axpy>(
    shape: &ConvShape,
    units: &UnitsByChannel,
    weights: &[f32],
    padded_in: usize,
    sources: &[u32],
    out: &mut [f32],
) {
    let (channels, taps) = (shape.input[2], shape.taps());
    for o in 0..units.starts.len() - 1 {
        let kernel = &weights[o * taps * padded_in..][..taps * padded_in];
        for (p, g) in units.channel(o) {
            for (tap, &source) in sources[p * taps..][..taps].iter().enumerate() {
                if source == u32::MAX {
                    continue;
                }
                A::axpy(g, &kernel[tap * padded_in..][..channels], &mut out[source as usize * channels..][..channels]);
            }
        }
    }
}

with_wide_vectors!(conv_scatter => conv_scatter_kernel::<Axpy>(
    shape: &ConvShape, units: &UnitsByChannel, weights: &[f32], padded_in: usize, sources: &[u32], out: &mut [f32]
) -> ());

/// A convolution's weight gradient from one point's active output units, channel by channel:
/// `rows[o] += g · patch` over channel o's units (the row in L1), `cols[p]` the im2col patch of
/// the unit's position; `rows` is `[out][patch]`.
#[inline(always)]
fn unit_patches_kernel<A: Axpy>(units: &UnitsByChannel, cols: &[f32], patch: usize, rows: &mut [f32]) {
    for (o, row) in rows.chunks_exact_mut(patch).enumerate() {
        for (p, g) in units.channel(o) {
            A::axpy(g, &cols[p * patch..][..patch], row);
        }
    }
}

with_wide_vectors!(unit_patches => unit_patches_kernel::<Axpy>(
    units: &UnitsByChannel, cols: &[f32], patch: usize, rows: &mut [f32]
) -> ());

/// Columns of a linear layer's weights packed at a time by [`rows_gather`]: the active rows'
/// block (≤ 64 KiB for 64 rows) stays in L2 while its strips are summed.
const PACKED_COLUMNS: usize = 256;

/// One point's active outputs of a linear layer for [`rows_gather`]: their positions in the
/// batch's union of active rows, ascending, and their K class gradients (`[unit][K]`).
pub(crate) struct PointRows {
    pub(crate) positions: Vec<u32>,
    pub(crate) coefficients: Vec<f32>,
}

/// The reverse of a linear layer for K classes over its active outputs, for several points:
/// `out[point][class][i − columns.start] = Σ_unit g[unit][class] · W[row(unit)][i]`. Each block
/// of columns of the batch's active rows (`union`, ascending) is first packed strip by strip
/// (`[strip][row][8 or 32]`), so the sums ([`StripSums`], [`WideStripSums`]) read one
/// contiguous stream — read in place, 64 rows at one offset each are 64 streams no prefetcher
/// follows — and W comes from memory once per batch. A point sums its own rows in ascending order whatever the batch holds.
pub(crate) fn rows_gather<const K: usize>(
    weights: &[f32],
    inputs: usize,
    union: &[u32],
    points: &[PointRows],
    columns: Range<usize>,
    out: &mut [f32],
) {
    let band = columns.len();
    let kernels = StripKernels::<K>::new();
    let lanes = kernels.widest();
    let mut packed = vec![0f32; union.len() * PACKED_COLUMNS];
    // Per point: where its units' coefficients and strips are.
    let offsets: Vec<(Vec<u32>, Vec<u32>)> = points
        .iter()
        .map(|p| {
            let coefficient_at = (0..p.positions.len() as u32).map(|i| i * K as u32).collect();
            (coefficient_at, p.positions.iter().map(|&r| r * lanes as u32).collect())
        })
        .collect();
    let mut block = columns.start;
    while block < columns.end {
        let block_len = PACKED_COLUMNS.min(columns.end - block);
        let strips = block_len.div_ceil(lanes);
        for (position, &row) in union.iter().enumerate() {
            let source = &weights[row as usize * inputs + block..][..block_len];
            for (strip, chunk) in source.chunks(lanes).enumerate() {
                let target = &mut packed[(strip * union.len() + position) * lanes..][..lanes];
                target[..chunk.len()].copy_from_slice(chunk);
                target[chunk.len()..].fill(0.0);
            }
        }
        for ((point, (coefficient_at, weight_at)), out) in
            points.iter().zip(&offsets).zip(out.chunks_exact_mut(K * band))
        {
            for strip in 0..strips {
                let (start, base) = (block + strip * lanes, strip * union.len() * lanes);
                let terms = (&point.coefficients[..], &coefficient_at[..], &packed[..], &weight_at[..], base);
                kernels.sum_into(terms, lanes, out, band, start - columns.start, block + block_len - start);
            }
        }
        block += block_len;
    }
}

/// `len` zeros, written by rayon's threads when there are many: a training batch's maps are
/// megabytes, and zeroing them (with the page faults of memory the allocator had handed back)
/// on the calling thread left the workers idle.
pub(crate) fn zeros(len: usize) -> Vec<f32> {
    if len < crate::reverse::PARALLEL_VALUES {
        return vec![0.0; len];
    }
    let mut values = Vec::with_capacity(len);
    values.par_extend(rayon::iter::repeat_n(0f32, len));
    values
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `work` on a buffer of `len` values kept by this thread from one call to the next, for
/// buffers every user writes in full before reading (im2col's columns, a product's output):
/// a fresh zeroed allocation per run cost training a tenth of its time in memset and page
/// faults. What the buffer holds on entry is whatever the last user left.
pub(crate) fn with_scratch<R>(len: usize, work: impl FnOnce(&mut [f32]) -> R) -> R {
    // Taken out while in use: a nested call finds an empty buffer and makes its own.
    let mut buffer = SCRATCH.with(|scratch| scratch.take());
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    let result = work(&mut buffer[..len]);
    SCRATCH.with(|scratch| {
        if scratch.borrow().len() < buffer.len() {
            scratch.replace(buffer);
        }
    });
    result
}

/// `values` cut into the consecutive slices of `runs`, each item `len` values long: one mutable
/// slice per run, for runs computed in parallel.
pub(crate) fn split_runs<'a, T>(values: &'a mut [T], runs: &[Range<usize>], len: usize) -> Vec<&'a mut [T]> {
    let mut parts = Vec::with_capacity(runs.len());
    let mut rest = values;
    for run in runs {
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(run.len() * len);
        parts.push(head);
        rest = tail;
    }
    parts
}

/// `items` split into at most `parts` runs of nearly equal length, each a multiple of
/// `granule` (the last may be shorter): fixed by the sizes alone, never by the thread count,
/// so the arithmetic — and its rounding — is the same however the runs are scheduled.
pub(crate) fn bands(items: usize, parts: usize, granule: usize) -> Vec<Range<usize>> {
    let len = items.div_ceil(parts.max(1)).div_ceil(granule.max(1)) * granule.max(1);
    (0..items).step_by(len.max(1)).map(|start| start..(start + len).min(items)).collect()
}

#[cfg(test)]
mod tests {
    //! The vector kernels this CPU picks against their portable twins, which a CPU without AVX2
    //! runs and the test machines would otherwise never exercise.
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len as u32).map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 1000.0 - 1.0).collect()
    }

    fn assert_close(fast: &[f32], portable: &[f32], what: &str) {
        for (a, b) in fast.iter().zip(portable) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{what}: {a} vs {b}");
        }
    }

    #[test]
    fn strip_sums_match_the_portable_kernel() {
        let (coefficients, weights) = (values(64 * 3, 1), values(64 * LANES + 40, 2));
        let coefficient_at: Vec<u32> = (0..61).map(|i| i * 3).collect();
        let weight_at: Vec<u32> = (0..61).map(|i| (i * 37 % 64) * LANES as u32).collect();
        let fast = strip_sums::<3>()(&coefficients, &coefficient_at, &weights, &weight_at, 5);
        let portable = portable_strip_sums::<3, LANES>(&coefficients, &coefficient_at, &weights, &weight_at, 5);
        assert_close(fast.as_flattened(), portable.as_flattened(), "strip sums");
    }

    /// The strip kernels this CPU picks for each padding — 32 and 16 columns where it has
    /// AVX-512F, 8 elsewhere — against the portable sums over the columns they wrote.
    #[test]
    fn strip_kernels_match_the_portable_kernel_at_every_width() {
        fn check<const K: usize>() {
            let (coefficients, weights) = (values(64 * K, 7), values(64 * 32 + 40, 8));
            let coefficient_at: Vec<u32> = (0..61).map(|i| i * K as u32).collect();
            let weight_at: Vec<u32> = (0..61).map(|i| (i * 37 % 64) * 32).collect();
            let portable = portable_strip_sums::<K, 32>(&coefficients, &coefficient_at, &weights, &weight_at, 5);
            for padding in [32, 16, 8] {
                let mut out = vec![0f32; K * 32];
                let terms = (&coefficients[..], &coefficient_at[..], &weights[..], &weight_at[..], 5);
                let width = StripKernels::<K>::new().sum_into(terms, padding, &mut out, 32, 0, 32);
                assert!(width <= padding, "a strip of {width} columns past a padding of {padding}");
                for (sums, portable) in out.chunks(32).zip(&portable) {
                    assert_close(&sums[..width], &portable[..width], "strip sums");
                }
            }
        }
        // Two chains (K ≤ 6) and one, an odd term count.
        check::<3>();
        check::<10>();
    }

    /// The training scatter's `y += g·x` as this CPU's build runs it (16-lane FMAs with
    /// AVX-512F) against the portable loop, on patches of whole vectors and a tail.
    #[test]
    fn unit_patches_match_the_portable_kernel() {
        let (channels, positions, patch) = (3, 7, 45);
        let units: Vec<u32> = (0..positions * channels).filter(|u| u % 4 != 1).map(|u| u as u32).collect();
        let listed = crate::reverse::Listed { values: values(units.len(), 11), units };
        let by_channel = UnitsByChannel::from_listed(&listed, channels);
        let cols = values(positions * patch, 12);
        let (mut fast, mut portable) = (values(channels * patch, 13), values(channels * patch, 13));
        unit_patches(&by_channel, &cols, patch, &mut fast);
        unit_patches_kernel::<PlainAxpy>(&by_channel, &cols, patch, &mut portable);
        assert_close(&fast, &portable, "unit patches");
    }

    #[test]
    fn tile_sums_match_the_portable_kernel() {
        let rows = values(500, 3);
        let terms: Vec<(f32, usize)> = (0..13).map(|i| (values(13, 4)[i], i * 31 % 400)).collect();
        let (mut fast, mut portable) = ([0.5f32; ROW_TILE], [0.5f32; ROW_TILE]);
        tile_sums()(&rows, &terms, 17, &mut fast);
        portable_tile_sums(&rows, &terms, 17, &mut portable);
        assert_close(&fast, &portable, "tile sums");
    }

    #[test]
    fn gathered_columns_match_the_portable_kernel() {
        // A 3×3 convolution, padding 1, on a 5×6 map: 1 to 9 entries per input position.
        let shape = ConvShape {
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1, 1],
            dilation: [1, 1],
            input: [5, 6, 0],
            output: [5, 6],
            group_in: 0,
        };
        let readers = TapReaders::new(&shape, &tap_sources(&shape));
        for cin in [2, 6, 8, 13, 32, 70] {
            // The last entries' vectors run past the columns' end; the map has 3 more channels.
            let cols = values(30 * 9 * cin, 5);
            let channels = cin + 3;
            let (mut fast, mut portable) = (values(30 * channels, 6), values(30 * channels, 6));
            gather_columns()(&readers, &cols, cin, channels, 2, &mut fast);
            portable_gather_columns(&readers, &cols, cin, channels, 2, &mut portable);
            assert_close(&fast, &portable, "gathered columns");
        }
    }
}
