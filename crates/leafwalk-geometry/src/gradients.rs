//! mnist-cnn's training gradients and batched forward pass on the CPU, by the hand-written
//! passes of `mnist_cnn.rs`.
//!
//! candle's CPU convolutions and their autograd run mnist-cnn's training step ≈ 13× slower
//! than PyTorch on the same cores; the same loops that give the input Jacobian give the
//! parameter gradients of the mean NLL, and the log-probabilities of a whole test set, for a
//! fraction of that. Any other architecture, device or dtype gets `None`, and the caller keeps
//! candle (which also serves as these passes' test oracle).

use candle_core::{DType, Tensor};
use leafwalk_models::{Arch, Classifier};

use crate::jacobian::{mnist_cnn_batch_size, with_mnist_cnn_weights, MNIST_CNN_PARAMETERS};
use crate::{GeometryError, Result};

/// The mean NLL of a batch, how many points it predicts right, and the gradient for each
/// parameter by name.
#[derive(Debug)]
pub struct NllGradients {
    pub loss: f64,
    pub correct: usize,
    pub gradients: Vec<(&'static str, Tensor)>,
}

/// Checks a batch of pixels for mnist-cnn and normalises it, or `None` when the hand-written
/// passes do not apply to `model`.
fn mnist_cnn_inputs(model: &Classifier, pixels: &Tensor) -> Result<Option<Vec<f32>>> {
    if model.arch() != Arch::MnistCnn || !model.device().is_cpu() || model.dtype() != DType::F32 {
        return Ok(None);
    }
    mnist_cnn_batch_size(pixels)?;
    Ok(Some(model.normalise(&pixels.to_dtype(DType::F32)?)?.flatten_all()?.to_vec1()?))
}

/// log p `[B, C]` of `pixels` (`[B, 1, 28, 28]` in [0, 1], evaluation mode) by the training
/// pass's forward, for mnist-cnn in f32 on the CPU; `None` for any other model.
pub fn mnist_cnn_log_probs(model: &Classifier, pixels: &Tensor) -> Result<Option<Tensor>> {
    let Some(inputs) = mnist_cnn_inputs(model, pixels)? else { return Ok(None) };
    let log_probs = with_mnist_cnn_weights(model, |weights| crate::mnist_cnn::batch_log_probs(weights, &inputs))?;
    Ok(Some(Tensor::from_vec(log_probs, (pixels.dim(0)?, model.classes()), model.device())?))
}

/// The hand-written gradients of the mean NLL of `pixels` (`[B, 1, 28, 28]` in [0, 1]) with
/// `labels` (`[B]`, u32), for mnist-cnn in f32 on the CPU; `None` for any other model.
pub fn mnist_cnn_nll_gradients(model: &Classifier, pixels: &Tensor, labels: &Tensor) -> Result<Option<NllGradients>> {
    let Some(inputs) = mnist_cnn_inputs(model, pixels)? else { return Ok(None) };
    let b = pixels.dim(0)?;
    let labels: Vec<usize> = labels.to_dtype(DType::U32)?.to_vec1::<u32>()?.into_iter().map(|l| l as usize).collect();
    if labels.len() != b || labels.iter().any(|&l| l >= model.classes()) {
        return Err(GeometryError::Invalid(format!(
            "{} labels for {b} images, or a label ≥ {}",
            labels.len(),
            model.classes()
        )));
    }
    let pass = with_mnist_cnn_weights(model, |weights| crate::mnist_cnn::nll_gradients(weights, &inputs, &labels))?;
    let gradients = MNIST_CNN_PARAMETERS
        .iter()
        .zip(pass.gradients)
        .map(|(&name, values)| {
            let shape = model
                .tensor(name)
                .map(|t| t.shape().clone())
                .ok_or_else(|| GeometryError::Invalid(format!("mnist-cnn without tensor {name}")))?;
            Ok((name, Tensor::from_vec(values, shape, model.device())?))
        })
        .collect::<Result<_>>()?;
    Ok(Some(NllGradients { loss: pass.loss as f64, correct: pass.correct, gradients }))
}
