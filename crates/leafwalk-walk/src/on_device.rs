//! Walks whose every step stays on the model's device: one fused step for a batch of paths
//! ([`LeafStep`], a candle custom op) and the paper's Euler integrator built on it
//! ([`euler_on_device`]) for thousands of paths at once.
//!
//! The host integrators (`connect_batch`) read every Jacobian back and project in f64 with
//! nalgebra: the right tool on the CPU and for per-step logs, but on a GPU each step would cost
//! a dozen small launches and a round trip. Here a step is one batched Jacobian pass and one
//! launch of `kernels/leaf_step.cu`; the host reads only the distances, every `check_every`
//! steps, to retire finished paths. The op's CPU implementation runs the same algorithm (only
//! the order of its f64 sums differs from the kernel's), tested against the host integrator
//! and, where a GPU is present, against the kernel.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use leafwalk_geometry::{check_finite, input_jacobian_of_finite, Coordinates};
use leafwalk_models::Classifier;
use rayon::prelude::*;

use crate::path::{Ending, PathOptions, Progress};
use crate::step::Subspace;
use crate::{clamp_bounds, Result, State, WalkError};

/// Largest class count the kernel's shared-memory Cholesky holds.
const MAX_CLASSES: usize = 32;
/// Largest channel count (clamp bounds are passed per channel as kernel arguments).
const MAX_CHANNELS: usize = 3;
/// Pivots of J Jᵀ below this times its largest diagonal entry are dropped (the one Σ pᵢ Jᵢ = 0
/// makes vanish sits at ≈1e-16 relative; the rank tolerance on singular values, 1e-6, is
/// 1e-12 on J Jᵀ).
const PIVOT_RTOL: f64 = 1e-12;

#[cfg(feature = "cuda")]
mod ptx {
    include!(concat!(env!("OUT_DIR"), "/ptx.rs"));
}

/// One step per path: from x along the `subspace` part of (target − x), unit length times
/// `step`, clamped to the image of [0, 1]; paths already within `threshold` of their target
/// stay put. Inputs: x `[B, n]`, J `[B, C, n]` (normalised coordinates), target `[B, n]`, f32.
/// Output `[B, n + 2]`: the new point, its distance to the target (NaN where the projected
/// direction was not finite: the path has diverged and stays put), and 1 if it moved.
#[derive(Clone, Debug)]
pub struct LeafStep {
    /// [`Subspace::Leaf`] for a data-leaf step (the part of target − x in ker G⊥),
    /// [`Subspace::Kernel`] for the part in ker G.
    pub subspace: Subspace,
    /// Step length in normalised units (the paper's 0.1).
    pub step: f64,
    /// Paths at most this far from their target (normalised units) do not move.
    pub threshold: f64,
    plane: usize,
    lower: [f32; MAX_CHANNELS],
    upper: [f32; MAX_CHANNELS],
}

/// A [`LeafStep`]'s output, split.
#[derive(Clone, Debug)]
pub struct FusedStep {
    /// `[B, n]`.
    pub next: Tensor,
    /// `[B]`, distance to the target after the step (NaN: diverged).
    pub distance: Tensor,
    /// `[B]`, 1 where the path moved, 0 where it had arrived or diverged.
    pub moved: Tensor,
}

impl LeafStep {
    /// The step for `model`'s inputs, its clamp bounds taken from the model's normalisation.
    /// Errs with [`WalkError::TooLargeForFusedStep`] for more than 3 channels or 32 classes.
    pub fn new(model: &Classifier, subspace: Subspace, step: f64, threshold: f64) -> Result<Self> {
        let shape = model.input_shape();
        if shape.channels > MAX_CHANNELS || model.classes() > MAX_CLASSES {
            return Err(WalkError::TooLargeForFusedStep {
                channels: shape.channels,
                classes: model.classes(),
                max_channels: MAX_CHANNELS,
                max_classes: MAX_CLASSES,
            });
        }
        let plane = shape.height * shape.width;
        let (lo, hi) = clamp_bounds(model, shape.channels * plane);
        let (mut lower, mut upper) = ([0.0; MAX_CHANNELS], [0.0; MAX_CHANNELS]);
        for channel in 0..shape.channels {
            (lower[channel], upper[channel]) = (lo[channel * plane], hi[channel * plane]);
        }
        Ok(LeafStep { subspace, step, threshold, plane, lower, upper })
    }

    /// One step of every path of the batch (see [`LeafStep`]): x `[B, n]`, J `[B, C, n]` and
    /// target `[B, n]`, f32 on one device, normalised coordinates, n a whole number of the
    /// model's image planes. Runs `kernels/leaf_step.cu` on a CUDA device (`cuda` feature) and
    /// the same algorithm on the CPU. Errs ([`WalkError::Candle`]) when the shapes do not fit
    /// together, C exceeds 32, the dtype is not f32, or the device has no implementation.
    pub fn apply(&self, x: &Tensor, jacobian: &Tensor, target: &Tensor) -> Result<FusedStep> {
        let n = x.dim(1)?;
        let out = x.contiguous()?.apply_op3_no_bwd(&jacobian.contiguous()?, &target.contiguous()?, self)?;
        Ok(FusedStep {
            // Contiguous, as the next step and `index_select` want it.
            next: out.narrow(1, 0, n)?.contiguous()?,
            distance: out.narrow(1, n, 1)?.squeeze(1)?,
            moved: out.narrow(1, n + 1, 1)?.squeeze(1)?,
        })
    }

    /// Batch, classes and length of the inputs, checked against each other.
    fn dims(&self, x: &Layout, jacobian: &Layout, target: &Layout) -> candle_core::Result<(usize, usize, usize)> {
        let (b, n) = x.shape().dims2()?;
        let (jb, classes, jn) = jacobian.shape().dims3()?;
        if (jb, jn) != (b, n) || target.shape().dims2()? != (b, n) || classes > MAX_CLASSES || n % self.plane != 0 {
            candle_core::bail!(
                "leaf-step: x {:?}, J {:?}, target {:?} do not fit together",
                x.shape(),
                jacobian.shape(),
                target.shape()
            );
        }
        Ok((b, classes, n))
    }

    /// The kernel's algorithm for one path (see `kernels/leaf_step.cu`).
    fn step_path(&self, x: &[f32], jacobian: &[f32], target: &[f32], out: &mut [f32]) {
        let n = x.len();
        let classes = jacobian.len() / n;
        let toward: Vec<f64> = target.iter().zip(x).map(|(&t, &v)| t as f64 - v as f64).collect();
        let distance = toward.iter().map(|d| d * d).sum::<f64>().sqrt();
        if distance <= self.threshold {
            out[..n].copy_from_slice(x);
            (out[n], out[n + 1]) = (distance as f32, 0.0);
            return;
        }
        let row = |i: usize| &jacobian[i * n..(i + 1) * n];
        let dot = |a: &[f32], b: &mut dyn Iterator<Item = f64>| a.iter().zip(b).map(|(&a, b)| a as f64 * b).sum();
        let mut gram = vec![0.0; classes * classes];
        for i in 0..classes {
            for j in i..classes {
                let value: f64 = dot(row(i), &mut row(j).iter().map(|&v| v as f64));
                (gram[i * classes + j], gram[j * classes + i]) = (value, value);
            }
        }
        let rhs: Vec<f64> = (0..classes).map(|i| dot(row(i), &mut toward.iter().copied())).collect();
        let coef = solve_semidefinite(&gram, &rhs, classes);
        let direction: Vec<f64> = (0..n)
            .map(|e| {
                let along: f64 = (0..classes).map(|i| coef[i] * jacobian[i * n + e] as f64).sum();
                match self.subspace {
                    Subspace::Leaf => along,
                    Subspace::Kernel => toward[e] - along,
                }
            })
            .collect();
        let norm = direction.iter().map(|u| u * u).sum::<f64>().sqrt();
        if !norm.is_finite() {
            out[..n].copy_from_slice(x);
            (out[n], out[n + 1]) = (f32::NAN, 0.0);
            return;
        }
        let scale = if norm > 0.0 { self.step / norm } else { 0.0 };
        let mut after = 0.0;
        for e in 0..n {
            let channel = e / self.plane;
            let next = ((x[e] as f64 + scale * direction[e]) as f32).clamp(self.lower[channel], self.upper[channel]);
            out[e] = next;
            after += (target[e] as f64 - next as f64).powi(2);
        }
        (out[n], out[n + 1]) = (after.sqrt() as f32, 1.0);
    }
}

/// A solution c of the consistent system M c = r, M = J Jᵀ positive semidefinite, by Cholesky
/// with diagonal pivoting that stops once every remaining pivot is below `PIVOT_RTOL`·max
/// diag(M), the unknowns left over set to 0. Every solution gives the same Jᵀc, since
/// M(c₁ − c₂) = 0 implies Jᵀ(c₁ − c₂) = 0. The pivoting matters: J is rounded to f32, so
/// Σ pᵢ Jᵢ = 0 only to ≈1e-7, and without it a class of tiny pᵢ can be left last with that
/// rounding divided by pᵢ as its pivot, kept as a spurious tenth direction.
fn solve_semidefinite(gram: &[f64], rhs: &[f64], classes: usize) -> Vec<f64> {
    let at = |i: usize, j: usize| i * classes + j;
    let mut a = gram.to_vec();
    let mut b = rhs.to_vec();
    let mut order: Vec<usize> = (0..classes).collect();
    let tolerance = PIVOT_RTOL * (0..classes).map(|i| gram[at(i, i)]).fold(0.0, f64::max);
    let mut rank = 0;
    while rank < classes {
        let j = rank;
        let pivot = (j..classes).max_by(|&p, &q| a[at(p, p)].total_cmp(&a[at(q, q)])).unwrap_or(j);
        if a[at(pivot, pivot)].is_nan() || a[at(pivot, pivot)] <= tolerance {
            break;
        }
        for k in 0..classes {
            a.swap(at(j, k), at(pivot, k));
        }
        for k in 0..classes {
            a.swap(at(k, j), at(k, pivot));
        }
        b.swap(j, pivot);
        order.swap(j, pivot);
        let root = a[at(j, j)].sqrt();
        a[at(j, j)] = root;
        for i in j + 1..classes {
            a[at(i, j)] /= root;
        }
        for i in j + 1..classes {
            for k in j + 1..=i {
                a[at(i, k)] -= a[at(i, j)] * a[at(k, j)];
                a[at(k, i)] = a[at(i, k)];
            }
        }
        rank += 1;
    }
    // L (the first `rank` columns' lower triangle) y = b, then Lᵀ c = y.
    let mut y = vec![0.0; rank];
    for i in 0..rank {
        y[i] = (b[i] - (0..i).map(|k| a[at(i, k)] * y[k]).sum::<f64>()) / a[at(i, i)];
    }
    let mut solved = vec![0.0; rank];
    for i in (0..rank).rev() {
        solved[i] = (y[i] - (i + 1..rank).map(|k| a[at(k, i)] * solved[k]).sum::<f64>()) / a[at(i, i)];
    }
    let mut c = vec![0.0; classes];
    for (i, value) in solved.into_iter().enumerate() {
        c[order[i]] = value;
    }
    c
}

/// The values of a contiguous f32 CPU storage.
fn cpu_values<'a>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&storage.as_slice::<f32>()?[start..end]),
        None => candle_core::bail!("leaf-step: inputs must be contiguous"),
    }
}

impl CustomOp3 for LeafStep {
    fn name(&self) -> &'static str {
        "leaf-step"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        jacobian: &CpuStorage,
        jacobian_layout: &Layout,
        target: &CpuStorage,
        target_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, classes, n) = self.dims(x_layout, jacobian_layout, target_layout)?;
        let (x, jacobian, target) =
            (cpu_values(x, x_layout)?, cpu_values(jacobian, jacobian_layout)?, cpu_values(target, target_layout)?);
        let mut out = vec![0f32; b * (n + 2)];
        out.par_chunks_mut(n + 2).enumerate().for_each(|(k, out)| {
            let path = k * n..(k + 1) * n;
            let rows = k * classes * n..(k + 1) * classes * n;
            self.step_path(&x[path.clone()], &jacobian[rows], &target[path], out)
        });
        Ok((CpuStorage::F32(out), Shape::from((b, n + 2))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_layout: &Layout,
        jacobian: &candle_core::CudaStorage,
        jacobian_layout: &Layout,
        target: &candle_core::CudaStorage,
        target_layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
        use candle_core::cuda_backend::WrapErr;

        let (b, classes, n) = self.dims(x_layout, jacobian_layout, target_layout)?;
        let device = x.device.clone();
        fn slice<'a>(
            storage: &'a candle_core::CudaStorage,
            layout: &Layout,
        ) -> candle_core::Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, f32>> {
            match layout.contiguous_offsets() {
                Some((start, end)) => Ok(storage.as_cuda_slice::<f32>()?.slice(start..end)),
                None => candle_core::bail!("leaf-step: inputs must be contiguous"),
            }
        }
        let (xs, js, ts) = (slice(x, x_layout)?, slice(jacobian, jacobian_layout)?, slice(target, target_layout)?);
        // SAFETY: every element is written by the kernel (each block writes its row's n + 2).
        let out = unsafe { device.alloc::<f32>(b * (n + 2))? };
        let func = device.get_or_load_custom_func("leaf_step_f32", "leaf_step", ptx::LEAF_STEP)?;
        let mut launch = func.builder();
        launch.arg(&xs).arg(&js).arg(&ts).arg(&out);
        let (n_arg, classes_arg, plane_arg) = (n as i32, classes as i32, self.plane as i32);
        let onto_kernel = i32::from(self.subspace == Subspace::Kernel);
        candle_core::builder_arg!(launch, n_arg, classes_arg, plane_arg, onto_kernel, self.step, self.threshold);
        let [l0, l1, l2] = self.lower;
        let [u0, u1, u2] = self.upper;
        candle_core::builder_arg!(launch, l0, l1, l2, u0, u1, u2);
        let config = LaunchConfig { grid_dim: (b as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: the argument list matches leaf_step_f32's signature; the slices hold B·n,
        // B·C·n and B·n values and `out` B·(n + 2), as `dims` checked.
        unsafe { launch.launch(config) }.w()?;
        Ok((candle_core::CudaStorage::wrap_cuda_slice(out, device), Shape::from((b, n + 2))))
    }
}

/// Where a device walk ended.
#[derive(Clone, Debug)]
pub struct DeviceWalk {
    /// Why the walk stopped: never [`Ending::ReachedClass`], as the device walk ignores
    /// `stop_at_target_class`.
    pub ending: Ending,
    /// Steps taken (= Jacobian evaluations).
    pub steps: usize,
    /// Distance from `end` to the target, normalised units.
    pub distance: f64,
    /// The walk's last point, normalised coordinates.
    pub end: State,
}

/// The paper's fixed-step Euler walk from each `from` toward its `to`, all paths in one batch
/// on the model's device, with [`PathOptions`]' step, threshold, step limit and stall rule.
/// Finished paths are found and dropped from the batch every `check_every` steps, so a stall
/// is reported up to `check_every − 1` steps later than [`crate::connect_batch`] would; a path
/// that arrives stops at once (the step freezes it), so reached paths end on the same point
/// after the same number of steps as there.
pub fn euler_on_device(
    model: &Classifier,
    pairs: &[(State, State)],
    options: &PathOptions,
    check_every: usize,
) -> Result<Vec<DeviceWalk>> {
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    let shape = model.input_shape();
    let n = shape.channels * shape.height * shape.width;
    let op = LeafStep::new(model, Subspace::Leaf, options.step, options.threshold)?;
    let device = model.device();
    let stack = |states: &mut dyn Iterator<Item = &State>| -> Result<Tensor> {
        let values: Vec<f32> = states.flat_map(|s| s.0.iter().copied()).collect();
        Ok(Tensor::from_vec(values, (pairs.len(), n), device)?)
    };
    let mut x = stack(&mut pairs.iter().map(|(from, _)| from))?;
    let mut target = stack(&mut pairs.iter().map(|(_, to)| to))?;
    check_finite(&x)?;
    check_finite(&target)?;
    let mut steps = Tensor::zeros(pairs.len(), DType::F32, device)?;
    // Row k of the batch is path live[k].
    let mut live: Vec<usize> = (0..pairs.len()).collect();
    let mut progress: Vec<Progress> = pairs.iter().map(|(from, to)| Progress::new(from.distance(to))).collect();
    let mut done: Vec<Option<DeviceWalk>> = vec![None; pairs.len()];
    let check_every = check_every.max(1);
    for iteration in 1..=options.max_steps {
        if live.is_empty() {
            break;
        }
        let images = x.reshape((live.len(), shape.channels, shape.height, shape.width))?.to_dtype(model.dtype())?;
        let jacobian =
            input_jacobian_of_finite(model, &images, Coordinates::Normalised)?.jacobian.to_dtype(DType::F32)?;
        let step = op.apply(&x, &jacobian, &target)?;
        steps = (steps + &step.moved)?;
        x = step.next;
        if iteration % check_every != 0 && iteration != options.max_steps {
            continue;
        }
        let distances: Vec<f32> = step.distance.to_vec1()?;
        let taken: Vec<f32> = steps.to_vec1()?;
        let mut keep = Vec::with_capacity(live.len());
        for (row, &path) in live.iter().enumerate() {
            let (distance, steps_taken) = (distances[row] as f64, taken[row] as usize);
            // A live path moves every step, so its Jacobians, steps and iterations agree.
            let ending = if distance.is_nan() {
                Some(Ending::Diverged { step: steps_taken })
            } else {
                progress[path].ending(options, distance, iteration, steps_taken)
            };
            match ending {
                Some(ending) => {
                    let end = State(x.get(row)?.to_vec1()?);
                    let distance = if distance.is_nan() { end.distance(&pairs[path].1) } else { distance };
                    done[path] = Some(DeviceWalk { ending, steps: steps_taken, distance, end });
                }
                None => keep.push(row),
            }
        }
        if keep.len() < live.len() {
            let rows = Tensor::new(keep.iter().map(|&r| r as u32).collect::<Vec<_>>(), device)?;
            (x, target, steps) =
                (x.index_select(&rows, 0)?, target.index_select(&rows, 0)?, steps.index_select(&rows, 0)?);
            live = keep.iter().map(|&r| live[r]).collect();
        }
    }
    // Every path has ended by the last iteration; only `max_steps` = 0 leaves them unwalked.
    Ok(done
        .into_iter()
        .zip(pairs)
        .map(|(walk, (from, to))| {
            walk.unwrap_or_else(|| DeviceWalk {
                ending: Ending::StepLimit,
                steps: 0,
                distance: from.distance(to),
                end: from.clone(),
            })
        })
        .collect())
}
