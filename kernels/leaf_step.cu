// One fused data-leaf (or noise-leaf) step for a batch of paths: one thread block per path.
//
// Per path b, with x = x[b] (n values), J = J[b] (C×n, rows ∇ log p_i) and t = target[b]:
//   1. if ‖x − t‖ ≤ threshold the path has arrived: copy x, write the distance, moved = 0;
//   2. d = t − x; the C×C Gram M = J Jᵀ and r = J d, accumulated in double (one warp per
//      entry, so a block reads J from L1/L2 a few times instead of launching a dozen kernels);
//   3. solve M c = r by a pivoted Cholesky that stops at pivots below 1e-12·max diag(M): the
//      system is consistent (r lies in M's range) and Σ pᵢ Jᵢ = 0 makes one pivot vanish, so any
//      solution gives the same Jᵀc = P d, the projection of d onto ker G⊥ = span{Jᵢ};
//   4. u = P d (leaf) or d − P d (kernel), x' = clamp(x + step·u/‖u‖) rounded to float, per-
//      channel bounds; a non-finite ‖u‖ leaves x as it is and writes distance NaN (diverged);
//   5. out[b] = [x' (n values), ‖x' − t‖, moved].
// leafwalk-walk's `LeafStep::cpu_fwd` is the same algorithm on the CPU (its f64 sums run in
// another order, so the two agree to f64 rounding before the step is rounded to float).

#include <stdint.h>

#define MAX_CLASSES 32
#define WARP 32

__device__ __forceinline__ double warp_sum(double v) {
    for (int offset = WARP / 2; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffff, v, offset);
    return v;
}

// Sum over the block; every thread gets the result. `scratch` holds one double per warp.
__device__ double block_sum(double v, double *scratch) {
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, warps = (blockDim.x + WARP - 1) / WARP;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    double total = 0.0;
    for (int w = 0; w < warps; ++w) total += scratch[w];
    return total;
}

extern "C" __global__ void leaf_step_f32(
    const float *x, const float *jacobian, const float *target, float *out,
    int n, int classes, int plane, int onto_kernel, double step, double threshold,
    // Per-channel clamp bounds (images have at most 3 channels).
    float lower0, float lower1, float lower2, float upper0, float upper1, float upper2) {
    const float lower[3] = {lower0, lower1, lower2}, upper[3] = {upper0, upper1, upper2};
    __shared__ double gram[MAX_CLASSES * MAX_CLASSES];
    __shared__ double rhs[MAX_CLASSES];
    __shared__ double coef[MAX_CLASSES];
    __shared__ double chol[MAX_CLASSES * MAX_CLASSES];
    __shared__ double forward[MAX_CLASSES];
    __shared__ double scratch[WARP];
    __shared__ int arrived;

    const int b = blockIdx.x;
    const float *xb = x + (size_t)b * n;
    const float *tb = target + (size_t)b * n;
    const float *jb = jacobian + (size_t)b * classes * n;
    float *ob = out + (size_t)b * (n + 2);

    double d2 = 0.0;
    for (int e = threadIdx.x; e < n; e += blockDim.x) {
        double d = (double)tb[e] - (double)xb[e];
        d2 += d * d;
    }
    double distance = sqrt(block_sum(d2, scratch));
    if (threadIdx.x == 0) arrived = distance <= threshold;
    __syncthreads();
    if (arrived) {
        for (int e = threadIdx.x; e < n; e += blockDim.x) ob[e] = xb[e];
        if (threadIdx.x == 0) { ob[n] = (float)distance; ob[n + 1] = 0.0f; }
        return;
    }

    // Gram entries (i ≤ j) and r, one warp each.
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, warps = blockDim.x / WARP;
    const int pairs = classes * (classes + 1) / 2;
    for (int task = warp; task < pairs + classes; task += warps) {
        int i, j = -1;
        if (task < pairs) {
            i = 0;
            int rest = task;
            while (rest >= classes - i) { rest -= classes - i; ++i; }
            j = i + rest;
        } else {
            i = task - pairs;
        }
        double acc = 0.0;
        const float *ji = jb + (size_t)i * n;
        if (j >= 0) {
            const float *jj = jb + (size_t)j * n;
            for (int e = lane; e < n; e += WARP) acc += (double)ji[e] * (double)jj[e];
        } else {
            for (int e = lane; e < n; e += WARP) acc += (double)ji[e] * ((double)tb[e] - (double)xb[e]);
        }
        acc = warp_sum(acc);
        if (lane == 0) {
            if (j >= 0) { gram[i * classes + j] = acc; gram[j * classes + i] = acc; }
            else rhs[i] = acc;
        }
    }
    __syncthreads();

    // Cholesky with diagonal pivoting, stopped where every remaining pivot is below
    // 1e-12·max diag(M), then the two triangular solves: C ≤ 32, one thread. (Without the
    // pivoting, a class of tiny pᵢ left last keeps f32 rounding / pᵢ as a spurious pivot.)
    if (threadIdx.x == 0) {
        double *a = chol, *y = forward;
        int order[MAX_CLASSES];
        double top = 0.0;
        for (int i = 0; i < classes; ++i) {
            top = fmax(top, gram[i * classes + i]);
            order[i] = i;
            for (int k = 0; k < classes; ++k) a[i * classes + k] = gram[i * classes + k];
        }
        const double tolerance = 1e-12 * top;
        int rank = 0;
        while (rank < classes) {
            const int j = rank;
            int pivot = j;
            for (int i = j + 1; i < classes; ++i)
                if (a[i * classes + i] > a[pivot * classes + pivot]) pivot = i;
            if (!(a[pivot * classes + pivot] > tolerance)) break;
            for (int k = 0; k < classes; ++k) {
                double t = a[j * classes + k]; a[j * classes + k] = a[pivot * classes + k]; a[pivot * classes + k] = t;
            }
            for (int k = 0; k < classes; ++k) {
                double t = a[k * classes + j]; a[k * classes + j] = a[k * classes + pivot]; a[k * classes + pivot] = t;
            }
            double t = rhs[j]; rhs[j] = rhs[pivot]; rhs[pivot] = t;
            int o = order[j]; order[j] = order[pivot]; order[pivot] = o;
            const double root = sqrt(a[j * classes + j]);
            a[j * classes + j] = root;
            for (int i = j + 1; i < classes; ++i) a[i * classes + j] /= root;
            for (int i = j + 1; i < classes; ++i)
                for (int k = j + 1; k <= i; ++k) {
                    a[i * classes + k] -= a[i * classes + j] * a[k * classes + j];
                    a[k * classes + i] = a[i * classes + k];
                }
            ++rank;
        }
        for (int i = 0; i < rank; ++i) {
            double v = rhs[i];
            for (int k = 0; k < i; ++k) v -= a[i * classes + k] * y[k];
            y[i] = v / a[i * classes + i];
        }
        for (int i = 0; i < classes; ++i) coef[i] = 0.0;
        double solved[MAX_CLASSES];
        for (int i = rank - 1; i >= 0; --i) {
            double v = y[i];
            for (int k = i + 1; k < rank; ++k) v -= a[k * classes + i] * solved[k];
            solved[i] = v / a[i * classes + i];
        }
        for (int i = 0; i < rank; ++i) coef[order[i]] = solved[i];
    }
    __syncthreads();

    // u = Jᵀc (or d − Jᵀc): its norm first, then the step.
    double u2 = 0.0;
    for (int e = threadIdx.x; e < n; e += blockDim.x) {
        double along = 0.0;
        for (int i = 0; i < classes; ++i) along += coef[i] * (double)jb[(size_t)i * n + e];
        double u = onto_kernel ? ((double)tb[e] - (double)xb[e]) - along : along;
        u2 += u * u;
    }
    double norm = sqrt(block_sum(u2, scratch));
    if (!isfinite(norm)) {
        for (int e = threadIdx.x; e < n; e += blockDim.x) ob[e] = xb[e];
        if (threadIdx.x == 0) { ob[n] = __int_as_float(0x7fc00000); ob[n + 1] = 0.0f; }
        return;
    }
    const double scale = norm > 0.0 ? step / norm : 0.0;
    double after2 = 0.0;
    for (int e = threadIdx.x; e < n; e += blockDim.x) {
        double along = 0.0;
        for (int i = 0; i < classes; ++i) along += coef[i] * (double)jb[(size_t)i * n + e];
        double u = onto_kernel ? ((double)tb[e] - (double)xb[e]) - along : along;
        int channel = e / plane;
        float next = fminf(fmaxf((float)((double)xb[e] + scale * u), lower[channel]), upper[channel]);
        ob[e] = next;
        double gap = (double)tb[e] - (double)next;
        after2 += gap * gap;
    }
    double after = sqrt(block_sum(after2, scratch));
    if (threadIdx.x == 0) { ob[n] = (float)after; ob[n + 1] = 1.0f; }
}
