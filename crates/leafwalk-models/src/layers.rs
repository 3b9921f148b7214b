//! Layers built from explicit tensors so that initialisation follows PyTorch's defaults and comes
//! from our seeded RNG (see [`crate::params`]).

use candle_core::{Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Init, Linear, VarBuilder};

/// PyTorch's default for `Linear` and `Conv2d` weights and biases: kaiming-uniform with a = √5,
/// which is U(−1/√fan_in, 1/√fan_in).
fn fan_in_uniform(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

pub(crate) fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let init = fan_in_uniform(in_dim);
    let weight = vb.get_with_hints((out_dim, in_dim), "weight", init)?;
    let bias = vb.get_with_hints(out_dim, "bias", init)?;
    Ok(Linear::new(weight, Some(bias)))
}

pub(crate) fn conv3x3(in_c: usize, out_c: usize, padding: usize, vb: VarBuilder) -> Result<Conv2d> {
    let init = fan_in_uniform(in_c * 9);
    let weight = vb.get_with_hints((out_c, in_c, 3, 3), "weight", init)?;
    let bias = vb.get_with_hints(out_c, "bias", init)?;
    Ok(Conv2d::new(
        weight,
        Some(bias),
        Conv2dConfig {
            padding,
            ..Default::default()
        },
    ))
}

/// 2×2 max-pool with stride 2 whose gradient is right.
///
/// candle 0.11.1's `max_pool2d` backward multiplies by (#maxima / 4) instead of dividing by
/// #maxima, so every gradient through it is 4× too small; a reshape followed by two `max`
/// reductions routes the gradient to the maximum exactly. Odd sizes are floored, as in PyTorch.
pub fn max_pool_2x2(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (h2, w2) = (h / 2, w / 2);
    let x = if h % 2 == 1 || w % 2 == 1 {
        x.narrow(2, 0, 2 * h2)?.narrow(3, 0, 2 * w2)?
    } else {
        x.clone()
    };
    x.reshape((b, c, h2, 2, w2, 2))?.max(5)?.max(3)
}
