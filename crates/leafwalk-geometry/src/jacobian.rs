//! The input Jacobian of a classifier's log-probabilities, for a batch, in one pass.
//!
//! `J[b, i, :] = ∇ₓ log p_i(x_b)` with respect to pixels in `[0, 1]` (the model's normalisation
//! is inside the derivative: `J_pixel = J_normalised / σ`). Two implementations:
//!
//! - **the engine** ([`input_jacobian`] picks it): `leafwalk-engine` compiles the model's
//!   description and pushes all classes back through it together — on the CPU its own passes,
//!   on other devices and dtypes candle tensor operations. No weight gradients are formed.
//! - **autograd** ([`input_jacobian_autograd`]): the batch is replicated C times as one variable
//!   and `Σ_b,i log p_i(x_{b,i})` is differentiated once, so one backward pass serves all B·C
//!   rows. It is the test oracle of the engine.

use candle_core::{DType, Tensor, Var};
use leafwalk_models::Classifier;

pub use leafwalk_engine::{Coordinates, Jacobians};

use crate::{GeometryError, Result};

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

/// J and log p by the engine. `pixels`: `[B, C, H, W]` in [0, 1].
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
    Ok(leafwalk_engine::input_jacobian(model, input, coordinates)?)
}

/// The Jacobian by candle's autograd, for any architecture (evaluation mode).
pub fn input_jacobian_autograd(model: &Classifier, pixels: &Tensor) -> Result<Jacobians> {
    check_finite(pixels)?;
    let (b, ch, h, w) = pixels.dims4()?;
    let c = model.classes();
    // Row (b, i) of the replicated batch is point b; its gradient of log p_i is row i of J_b.
    let replicated = pixels.unsqueeze(1)?.broadcast_as((b, c, ch, h, w))?.reshape((b * c, ch, h, w))?;
    let input = Var::from_tensor(&replicated.to_dtype(model.dtype())?)?;
    let log_probs = model.log_probs_t(input.as_tensor(), false)?;
    let selector = Tensor::eye(c, model.dtype(), model.device())?.repeat((b, 1))?;
    let grads = (&log_probs * &selector)?.sum_all()?.backward()?;
    let jacobian = grads.get(input.as_tensor()).ok_or(GeometryError::InputNotUsed)?.reshape((b, c, ch * h * w))?;
    let log_probs = log_probs.detach().reshape((b, c, c))?.narrow(1, 0, 1)?.squeeze(1)?;
    Ok(Jacobians { log_probs, jacobian })
}
