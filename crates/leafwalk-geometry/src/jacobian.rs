//! The input Jacobian of a classifier's log-probabilities, for a batch, in one pass.
//!
//! `J[b, i, :] = ∇ₓ log p_i(x_b)` with respect to pixels in `[0, 1]` (the model's normalisation
//! is inside the derivative: `J_pixel = J_normalised / σ`). Two implementations:
//!
//! - **mnist-cnn, hand-written reverse pass** ([`input_jacobian`] picks it): one forward pass
//!   keeping the ReLU and max-pool masks, then the C seeds `e_i − p` (the gradient of `log p_i`
//!   with respect to the logits) pushed back through the layers with matmuls and convolutions of
//!   the flipped, transposed kernels. On the CPU in f32 both passes are plain vectorised loops
//!   that skip the inactive units (`mnist_cnn.rs`); elsewhere candle tensor operations. No
//!   weight gradients are formed, no autograd graph is built, and the pool sends each gradient
//!   to the first maximum of its window, as PyTorch does.
//! - **autograd, any architecture** ([`input_jacobian_autograd`]): the batch is replicated C
//!   times as one variable and `Σ_b,i log p_i(x_{b,i})` is differentiated once, so one backward
//!   pass serves all B·C rows. It is the fallback for other models and the test oracle of the
//!   fast path.

use candle_core::{DType, Device, Layout, Storage, Tensor, Var, D};
use leafwalk_models::{first_max_mask, pool_windows, Arch, Classifier};

use crate::{GeometryError, Result};

/// Log-probabilities and their input Jacobian for a batch.
#[derive(Clone, Debug)]
pub struct Jacobians {
    /// `[B, C]`.
    pub log_probs: Tensor,
    /// `[B, C, n]` with n = channels·height·width, pixels in row-major CHW order.
    pub jacobian: Tensor,
}

/// Rejects batches with NaN or infinite pixels (they would poison every later number).
pub fn check_finite(pixels: &Tensor) -> Result<()> {
    let rows: Vec<Vec<f32>> = pixels.flatten_from(1)?.to_dtype(DType::F32)?.to_vec2()?;
    for (index, row) in rows.iter().enumerate() {
        if let Some(position) = row.iter().position(|v| !v.is_finite()) {
            return Err(GeometryError::NonFinite { index, position });
        }
    }
    Ok(())
}

/// The coordinates an input batch is given in, and the Jacobian taken with respect to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coordinates {
    /// Pixels in [0, 1]: leafwalk's default for every user-facing number.
    Pixels,
    /// The model's normalised input (x − mean) / std, in which the paper walks.
    Normalised,
}

/// The fastest correct Jacobian for `model`'s architecture. `pixels`: `[B, C, H, W]` in [0, 1].
pub fn input_jacobian(model: &Classifier, pixels: &Tensor) -> Result<Jacobians> {
    input_jacobian_in(model, pixels, Coordinates::Pixels)
}

/// [`input_jacobian`] for inputs given (and differentiated) in `coordinates`.
pub fn input_jacobian_in(model: &Classifier, input: &Tensor, coordinates: Coordinates) -> Result<Jacobians> {
    check_finite(input)?;
    input_jacobian_of_finite(model, input, coordinates)
}

/// [`input_jacobian_in`] without the check for NaN/Inf inputs, which reads the batch back to
/// the host: for loops that keep their states on a GPU and finite by construction (a walk's
/// clamped points).
pub fn input_jacobian_of_finite(model: &Classifier, input: &Tensor, coordinates: Coordinates) -> Result<Jacobians> {
    match model.arch() {
        Arch::MnistCnn => mnist_cnn_jacobian(model, input, coordinates),
        Arch::Mlp | Arch::CifarVgg11 => autograd_jacobian(model, input, coordinates),
    }
}

/// The Jacobian by candle's autograd, for any architecture (evaluation mode).
pub fn input_jacobian_autograd(model: &Classifier, pixels: &Tensor) -> Result<Jacobians> {
    check_finite(pixels)?;
    autograd_jacobian(model, pixels, Coordinates::Pixels)
}

fn autograd_jacobian(model: &Classifier, pixels: &Tensor, coordinates: Coordinates) -> Result<Jacobians> {
    let (b, ch, h, w) = pixels.dims4()?;
    let c = model.classes();
    // Row (b, i) of the replicated batch is point b; its gradient of log p_i is row i of J_b.
    let replicated = pixels.unsqueeze(1)?.broadcast_as((b, c, ch, h, w))?.reshape((b * c, ch, h, w))?;
    let input = Var::from_tensor(&replicated.to_dtype(model.dtype())?)?;
    let log_probs = match coordinates {
        Coordinates::Pixels => model.log_probs_t(input.as_tensor(), false)?,
        Coordinates::Normalised => model.log_probs_normalised(input.as_tensor())?,
    };
    let selector = Tensor::eye(c, model.dtype(), model.device())?.repeat((b, 1))?;
    let grads = (&log_probs * &selector)?.sum_all()?.backward()?;
    let jacobian = grads
        .get(input.as_tensor())
        .ok_or_else(|| GeometryError::Invalid("the model output does not depend on its input".into()))?
        .reshape((b, c, ch * h * w))?;
    let log_probs = log_probs.detach().reshape((b, c, c))?.narrow(1, 0, 1)?.squeeze(1)?;
    Ok(Jacobians { log_probs, jacobian })
}

/// Flips a conv kernel `[out, in, k, k]` spatially and swaps its channel axes, giving the
/// kernel whose convolution (padding k−1) is the gradient of the original with respect to its
/// input. (candle's `conv_transpose2d` computes the same on CPU with a slow loop.)
fn backward_kernel(weight: &Tensor) -> Result<Tensor> {
    let k = weight.dim(3)?;
    let reversed = Tensor::new((0..k as u32).rev().collect::<Vec<u32>>(), weight.device())?;
    let swapped = weight.transpose(0, 1)?.contiguous()?;
    Ok(swapped.index_select(&reversed, 2)?.index_select(&reversed, 3)?.contiguous()?)
}

/// The forward and reverse pass in [`crate::mnist_cnn`]'s loops, on `x` in normalised units.
fn cpu_mnist_cnn_jacobian(model: &Classifier, x: &Tensor, coordinates: Coordinates) -> Result<Jacobians> {
    let b = mnist_cnn_batch_size(x)?;
    let c = model.classes();
    let inputs: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let (log_probs, jacobian) =
        with_mnist_cnn_weights(model, |weights| crate::mnist_cnn::log_probs_and_jacobian(weights, &inputs))?;
    let device = model.device();
    let jacobian = Tensor::from_vec(jacobian, (b, c, crate::mnist_cnn::INPUT), device)?;
    Ok(Jacobians {
        log_probs: Tensor::from_vec(log_probs, (b, c), device)?,
        jacobian: in_coordinates(model, jacobian, coordinates)?,
    })
}

/// The batch size of `[B, 1, 28, 28]` images for mnist-cnn's hand-written passes; another
/// image size is an error.
pub(crate) fn mnist_cnn_batch_size(x: &Tensor) -> Result<usize> {
    let (b, channels, height, width) = x.dims4()?;
    if channels * height * width != crate::mnist_cnn::INPUT {
        return Err(GeometryError::Invalid(format!("mnist-cnn takes 1×28×28 images, not {channels}×{height}×{width}")));
    }
    Ok(b)
}

/// mnist-cnn's parameter names in [`crate::mnist_cnn::Weights::new`]'s order.
pub(crate) const MNIST_CNN_PARAMETERS: [&str; 8] =
    ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"];

/// Runs `pass` on mnist-cnn's parameters borrowed in place from the model's CPU f32 tensors
/// (copying fc1's 4.7 MB every call cost a millisecond).
pub(crate) fn with_mnist_cnn_weights<T>(
    model: &Classifier,
    pass: impl FnOnce(&crate::mnist_cnn::Weights) -> T,
) -> Result<T> {
    let tensors = MNIST_CNN_PARAMETERS.map(|name| weight(model, name)).into_iter().collect::<Result<Vec<_>>>()?;
    let guards: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
    let slices = guards.iter().map(|(storage, layout)| cpu_f32(storage, layout)).collect::<Result<Vec<_>>>()?;
    Ok(pass(&crate::mnist_cnn::Weights::new(&slices, model.classes())?))
}

/// A contiguous f32 CPU tensor's values, borrowed.
fn cpu_f32<'a>(storage: &'a Storage, layout: &Layout) -> Result<&'a [f32]> {
    let (Storage::Cpu(cpu), Some((start, end))) = (storage, layout.contiguous_offsets()) else {
        return Err(GeometryError::Invalid("mnist-cnn weights are not contiguous CPU tensors".into()));
    };
    Ok(&cpu.as_slice::<f32>()?[start..end])
}

fn weight(model: &Classifier, name: &str) -> Result<Tensor> {
    model.tensor(name).ok_or_else(|| GeometryError::Invalid(format!("mnist-cnn without tensor {name}")))
}

fn mnist_cnn_jacobian(model: &Classifier, pixels: &Tensor, coordinates: Coordinates) -> Result<Jacobians> {
    let (b, _, _, _) = pixels.dims4()?;
    let c = model.classes();
    let dtype = model.dtype();
    let device: &Device = model.device();
    let add_channel_bias = |x: Tensor, bias: &Tensor| x.broadcast_add(&bias.reshape((1, (), 1, 1))?);

    // Forward, keeping what the reverse pass needs.
    let x = match coordinates {
        Coordinates::Pixels => model.normalise(&pixels.to_dtype(dtype)?)?,
        Coordinates::Normalised => pixels.to_dtype(dtype)?,
    };
    if device.is_cpu() && dtype == DType::F32 {
        return cpu_mnist_cnn_jacobian(model, &x, coordinates);
    }
    let conv1_w = weight(model, "conv1.weight")?;
    let conv2_w = weight(model, "conv2.weight")?;
    let fc1_w = weight(model, "fc1.weight")?;
    let fc2_w = weight(model, "fc2.weight")?;
    let z1 = add_channel_bias(x.conv2d(&conv1_w, 0, 1, 1, 1)?, &weight(model, "conv1.bias")?)?;
    let a1 = z1.relu()?;
    let z2 = add_channel_bias(a1.conv2d(&conv2_w, 0, 1, 1, 1)?, &weight(model, "conv2.bias")?)?;
    let windows = pool_windows(&z2.relu()?)?; // [b, 64, 12, 2, 12, 2]
    let pool_mask = first_max_mask(&windows)?;
    let pooled = (&windows * &pool_mask)?.sum(5)?.sum(3)?.flatten_from(1)?; // [b, 9216]
    let h_pre = pooled.matmul(&fc1_w.t()?)?.broadcast_add(&weight(model, "fc1.bias")?)?;
    let logits = h_pre.relu()?.matmul(&fc2_w.t()?)?.broadcast_add(&weight(model, "fc2.bias")?)?;
    let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;

    // Seeds: ∂ log p_i / ∂ logits = e_i − p, one row per (point, class).
    let probs = log_probs.exp()?;
    let eye = Tensor::eye(c, dtype, device)?.unsqueeze(0)?;
    let seeds = eye.broadcast_sub(&probs.unsqueeze(1)?)?.reshape((b * c, c))?;
    let per_class = |mask: &Tensor| -> Result<Tensor> {
        let dims = mask.dims().to_vec();
        let mut expanded = vec![dims[0], c];
        expanded.extend_from_slice(&dims[1..]);
        let mut merged = vec![dims[0] * c];
        merged.extend_from_slice(&dims[1..]);
        Ok(mask.unsqueeze(1)?.broadcast_as(expanded)?.reshape(merged)?)
    };
    let h_mask = h_pre.gt(0.0)?.to_dtype(dtype)?;
    let d_h = (seeds.matmul(&fc2_w)? * per_class(&h_mask)?)?; // [b·c, 128]
    let d_pooled = d_h.matmul(&fc1_w)?.reshape((b * c, 64, 12, 1, 12, 1))?; // [b·c, 9216]
                                                                            // Through the pool (to the first maximum) and the ReLU after conv2 in one mask.
    let z2_windows = pool_windows(&z2)?;
    let conv2_mask = (&pool_mask * z2_windows.gt(0.0)?.to_dtype(dtype)?)?;
    let d_z2 = d_pooled.broadcast_as((b * c, 64, 12, 2, 12, 2))?.mul(&per_class(&conv2_mask)?)?;
    let d_a1 = d_z2.reshape((b * c, 64, 24, 24))?.conv2d(&backward_kernel(&conv2_w)?, 2, 1, 1, 1)?;
    let d_z1 = (d_a1 * per_class(&z1.gt(0.0)?.to_dtype(dtype)?)?)?;
    let d_x = d_z1.conv2d(&backward_kernel(&conv1_w)?, 2, 1, 1, 1)?; // [b·c, 1, 28, 28]
    let jacobian = in_coordinates(model, d_x.reshape((b, c, 784))?, coordinates)?;
    Ok(Jacobians { log_probs, jacobian })
}

/// J in normalised units → the requested coordinates (J_pixel = J_normalised / σ).
fn in_coordinates(model: &Classifier, jacobian: Tensor, coordinates: Coordinates) -> Result<Tensor> {
    Ok(match coordinates {
        Coordinates::Normalised => jacobian,
        Coordinates::Pixels => {
            let std = Tensor::new(model.meta().std.as_slice(), model.device())?.to_dtype(jacobian.dtype())?;
            jacobian.broadcast_div(&std.reshape((1, 1, 1))?)?
        }
    })
}
