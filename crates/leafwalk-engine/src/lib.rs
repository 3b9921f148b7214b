//! The engine that runs any model description fast.
//!
//! leafwalk's geometry needs, at every point, the Jacobian J of all C log-probabilities with
//! respect to the input, and its trainer needs parameter gradients; both for whatever network a
//! user brings. This crate compiles a [`Description`](leafwalk_models::Description) and the
//! model's weights into a plan once per call and runs it on the CPU with general techniques:
//! convolutions as im2col + `gemm` on channel-last maps, the classes' seeds carried through the
//! reverse pass together (groups of up to 12), and *sparse gates* — after a ReLU or a max-pool
//! only the units that carry gradient are visited, by register-blocked gathers. A point's J does
//! not depend on its batch or the thread count, bit for bit. The same reverse pass written with
//! candle tensor operations ([`tensor`]) serves every other device and dtype.
//!
//! Entry points take a [`Classifier`] and tensors: [`input_jacobian`], [`log_probs`] and
//! [`nll_gradients`]. The CPU path needs f32 weights on the CPU; anything else goes through
//! [`tensor`].
#![warn(missing_docs)]

mod forward;
mod jacobian;
mod kernels;
mod layers;
mod plan;
mod reverse;
pub mod tensor;
mod training;

use candle_core::{DType, Layout, Storage, Tensor};
use leafwalk_models::Classifier;

use crate::jacobian::Seeds;
use crate::plan::{Mode, Plan};

/// Errors of the engine; messages are one line.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model's description cannot be compiled into a plan (an operation or shape the engine
    /// does not run).
    #[error("model description: {0}")]
    Description(String),
    /// The model's tensors do not fit its description (missing, or of another shape).
    #[error("model weights: {0}")]
    Weights(String),
    /// A batch whose images are not of the model's input size.
    #[error("the model takes {}×{}×{} inputs, not {}×{}×{}", expected.0, expected.1, expected.2, got.0, got.1, got.2)]
    InputShape {
        /// The model's (channels, height, width).
        expected: (usize, usize, usize),
        /// The batch's (channels, height, width).
        got: (usize, usize, usize),
    },
    /// Labels that do not match the batch: another count, or a class the model does not have.
    #[error("{labels} labels for {points} images, or a label ≥ {classes}")]
    Labels {
        /// Labels given.
        labels: usize,
        /// Images in the batch.
        points: usize,
        /// The model's class count C; labels must be below it.
        classes: usize,
    },
    /// The logits (or the loss) have no gradient with respect to the input (a constant model).
    #[error("the logits do not depend on the input")]
    InputNotUsed,
    /// A layer the tensor (device) backend cannot differentiate as it is set up.
    #[error("layer '{layer}': the tensor backend needs {need}")]
    DeviceBackend {
        /// The layer's PyTorch name.
        layer: String,
        /// What the backend needs of it.
        need: &'static str,
    },
    /// A tensor operation failed.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

/// The engine's result.
pub type Result<T> = std::result::Result<T, EngineError>;

/// Which input a Jacobian is taken with respect to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coordinates {
    /// Pixels in [0, 1]: leafwalk's default for every user-facing number.
    Pixels,
    /// The model's normalised input (x − mean) / std, in which the paper walks.
    Normalised,
}

/// Log-probabilities and their input Jacobian for a batch.
#[derive(Clone, Debug)]
pub struct Jacobians {
    /// `[B, C]`.
    pub log_probs: Tensor,
    /// `[B, C, n]`, n = channels·height·width in channel-first order.
    pub jacobian: Tensor,
}

/// True when the CPU engine serves `model` (f32 weights on the CPU); otherwise the tensor
/// backend does.
pub fn runs_on_cpu_engine(model: &Classifier) -> bool {
    model.device().is_cpu() && model.dtype() == DType::F32
}

/// J and log p of a batch `[B, C, H, W]` given in `coordinates`, by the CPU engine or, on other
/// devices and dtypes, the tensor backend.
pub fn input_jacobian(model: &Classifier, input: &Tensor, coordinates: Coordinates) -> Result<Jacobians> {
    if !runs_on_cpu_engine(model) {
        return tensor::input_jacobian(model, input, coordinates);
    }
    let (points, c, n) = (input.dim(0)?, model.classes(), model.input_shape().len());
    let (log_probs, jacobian) = jacobian_values(model, input, coordinates)?;
    let device = model.device();
    Ok(Jacobians {
        log_probs: Tensor::from_vec(log_probs, (points, c), device)?,
        jacobian: Tensor::from_vec(jacobian, (points, c, n), device)?,
    })
}

/// [`input_jacobian`] as plain values, log p `[B][C]` and J `[B][C][n]`, with no tensor copies
/// (one point's J of a 1,000-class ImageNet-sized model is 600 MB).
pub fn jacobian_values(model: &Classifier, input: &Tensor, coordinates: Coordinates) -> Result<(Vec<f32>, Vec<f32>)> {
    if !runs_on_cpu_engine(model) {
        let Jacobians { log_probs, jacobian } = tensor::input_jacobian(model, input, coordinates)?;
        let values = |t: Tensor| -> Result<Vec<f32>> { Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?) };
        return Ok((values(log_probs)?, values(jacobian)?));
    }
    let points = input.dim(0)?;
    let normalised = normalised_input(model, input, coordinates)?;
    let scale = match coordinates {
        Coordinates::Pixels => model.meta().std.clone(),
        Coordinates::Normalised => vec![1.0; model.input_shape().channels],
    };
    with_plan(model, Mode::Eval, |plan| Ok(jacobian::jacobian(plan, &normalised, points, &scale, Seeds::Classes)))
}

/// The gradient of each image's loss −log p_label with respect to its pixels (`[B, C, H, W]`
/// in [0, 1]), in evaluation mode, and the losses `[B]`: the direction adversarial training's
/// attack steps along. The CPU engine's J pass with one seed a point; candle's autograd on
/// other devices and dtypes.
pub fn loss_input_gradient(model: &Classifier, pixels: &Tensor, labels: &[usize]) -> Result<(Tensor, Vec<f32>)> {
    let points = pixels.dim(0)?;
    check_labels(model, labels, points)?;
    if !runs_on_cpu_engine(model) {
        let x = candle_core::Var::from_tensor(pixels)?;
        let log_probs = model.log_probs_t(x.as_tensor(), false)?;
        let index =
            Tensor::from_vec(labels.iter().map(|&l| l as u32).collect::<Vec<_>>(), (points, 1), pixels.device())?;
        let losses = log_probs.gather(&index, 1)?.neg()?;
        let gradient = losses.sum_all()?.backward()?.remove(x.as_tensor()).ok_or(EngineError::InputNotUsed)?;
        return Ok((gradient, losses.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?));
    }
    let normalised = normalised_input(model, pixels, Coordinates::Pixels)?;
    let scale = model.meta().std.clone();
    let (log_probs, gradient) = with_plan(model, Mode::Eval, |plan| {
        Ok(jacobian::jacobian(plan, &normalised, points, &scale, Seeds::Loss(labels)))
    })?;
    let c = model.classes();
    let losses = labels.iter().enumerate().map(|(b, &l)| -log_probs[b * c + l]).collect();
    Ok((Tensor::from_vec(gradient, pixels.shape(), model.device())?, losses))
}

/// log p `[B, C]` of pixels `[B, C, H, W]` in [0, 1], evaluation mode.
pub fn log_probs(model: &Classifier, pixels: &Tensor) -> Result<Tensor> {
    if !runs_on_cpu_engine(model) {
        return Ok(model.log_probs_t(pixels, false)?.detach());
    }
    let points = pixels.dim(0)?;
    let normalised = normalised_input(model, pixels, Coordinates::Pixels)?;
    let log_probs = with_plan(model, Mode::Eval, |plan| {
        let threads = if points > 1 { forward::Threads::Points } else { forward::Threads::Bands };
        Ok(forward::forward(plan, &normalised, points, forward::Purpose::Predict, threads).log_probs)
    })?;
    Ok(Tensor::from_vec(log_probs, (points, model.classes()), model.device())?)
}

/// One training step's loss, correct predictions, parameter gradients and batch norm's new
/// running statistics.
#[derive(Debug)]
pub struct NllGradients {
    /// The batch's mean negative log-likelihood of the labels, in nats.
    pub loss: f64,
    /// Points whose most probable class (the first of ties) is their label.
    pub correct: usize,
    /// `(parameter name, gradient)` in PyTorch's layouts.
    pub gradients: Vec<(String, Tensor)>,
    /// `(running statistic name, new value)`.
    pub running_statistics: Vec<(String, Tensor)>,
}

/// The gradients of the mean NLL of `pixels` (`[B, C, H, W]` in [0, 1]) with `labels` (`[B]`),
/// batch norm in training mode; `None` where the CPU engine does not run the model (the caller
/// keeps candle's autograd).
pub fn nll_gradients(model: &Classifier, pixels: &Tensor, labels: &Tensor) -> Result<Option<NllGradients>> {
    if !runs_on_cpu_engine(model) {
        return Ok(None);
    }
    let points = pixels.dim(0)?;
    let labels: Vec<usize> = labels.to_dtype(DType::U32)?.to_vec1::<u32>()?.into_iter().map(|l| l as usize).collect();
    check_labels(model, &labels, points)?;
    let normalised = normalised_input(model, pixels, Coordinates::Pixels)?;
    let pass = with_plan(model, Mode::Train, |plan| Ok(training::nll_gradients(plan, &normalised, points, &labels)))?;
    let device = model.device();
    let as_tensor = |(name, values): (String, Vec<f32>)| -> Result<(String, Tensor)> {
        let shape = model
            .tensor(&name)
            .map(|t| t.shape().clone())
            .ok_or_else(|| EngineError::Weights(format!("no tensor '{name}'")))?;
        Ok((name, Tensor::from_vec(values, shape, device)?))
    };
    Ok(Some(NllGradients {
        loss: pass.loss,
        correct: pass.correct,
        gradients: pass.gradients.into_iter().map(as_tensor).collect::<Result<_>>()?,
        running_statistics: pass.running.into_iter().map(as_tensor).collect::<Result<_>>()?,
    }))
}

/// One label a point, each naming one of the model's classes.
fn check_labels(model: &Classifier, labels: &[usize], points: usize) -> Result<()> {
    if labels.len() != points || labels.iter().any(|&l| l >= model.classes()) {
        return Err(EngineError::Labels { labels: labels.len(), points, classes: model.classes() });
    }
    Ok(())
}

/// The batch in the network's normalised coordinates, as f32 values.
fn normalised_input(model: &Classifier, input: &Tensor, coordinates: Coordinates) -> Result<Vec<f32>> {
    let shape = model.input_shape();
    let (_, c, h, w) = input.dims4()?;
    if (c, h, w) != (shape.channels, shape.height, shape.width) {
        return Err(EngineError::InputShape { expected: (shape.channels, shape.height, shape.width), got: (c, h, w) });
    }
    let x = input.to_dtype(DType::F32)?;
    let x = match coordinates {
        Coordinates::Pixels => model.normalise(&x)?,
        Coordinates::Normalised => x,
    };
    Ok(x.flatten_all()?.to_vec1()?)
}

/// J in normalised units → `coordinates` (J_pixel = J_normalised / σ per channel).
pub(crate) fn in_coordinates(model: &Classifier, jacobian: Tensor, coordinates: Coordinates) -> Result<Tensor> {
    Ok(match coordinates {
        Coordinates::Normalised => jacobian,
        Coordinates::Pixels => {
            let shape = model.input_shape();
            let (b, c, n) = jacobian.dims3()?;
            let std = Tensor::new(model.meta().std.as_slice(), model.device())?.to_dtype(jacobian.dtype())?;
            jacobian
                .reshape((b, c, shape.channels, n / shape.channels))?
                .broadcast_div(&std.reshape((1, 1, shape.channels, 1))?)?
                .reshape((b, c, n))?
        }
    })
}

/// Compiles `model`'s description against its weights, borrowed in place from the model's
/// CPU f32 tensors (copying large linear layers on every walk step would cost more than the
/// step), and runs `f` on the plan — on one of rayon's threads: the caller's thread is usually
/// not one, and each parallel step would otherwise be handed to the pool and waited for through
/// the kernel (a fifth of a lone point's Jacobian went to futex and sched_yield).
fn with_plan<T: Send>(model: &Classifier, mode: Mode, f: impl FnOnce(&Plan) -> Result<T> + Send) -> Result<T> {
    let tensors = model.named_tensors();
    let guards: Vec<_> = tensors.iter().map(|(_, t)| t.storage_and_layout()).collect();
    let slices = guards.iter().map(|(storage, layout)| cpu_f32(storage, layout)).collect::<Result<Vec<_>>>()?;
    let lookup = |name: &str| tensors.iter().position(|(n, _)| n == name).map(|i| slices[i]);
    rayon::scope(|_| f(&Plan::compile(model.description(), &lookup, mode)?))
}

/// A contiguous f32 CPU tensor's values, borrowed.
fn cpu_f32<'a>(storage: &'a Storage, layout: &Layout) -> Result<&'a [f32]> {
    let (Storage::Cpu(cpu), Some((start, end))) = (storage, layout.contiguous_offsets()) else {
        return Err(EngineError::Weights("the CPU engine needs contiguous CPU tensors".into()));
    };
    Ok(&cpu.as_slice::<f32>()?[start..end])
}
