//! Layers built from explicit tensors so that initialisation follows PyTorch's defaults and comes
//! from our seeded RNG (see [`crate::params`]).

use candle_core::{Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Init, Linear, VarBuilder};

/// PyTorch's default for `Linear` and `Conv2d` weights and biases: kaiming-uniform with a = √5,
/// which is U(−1/√fan_in, 1/√fan_in).
fn fan_in_uniform(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform { lo: -bound, up: bound }
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
    Ok(Conv2d::new(weight, Some(bias), Conv2dConfig { padding, ..Default::default() }))
}

/// 2×2 max-pool with stride 2 whose gradient is right.
///
/// candle 0.11.1's `max_pool2d` backward multiplies by (#maxima / 4) instead of dividing by
/// #maxima, so every gradient through it is 4× too small. A plain reshape + `max` is right for
/// distinct values but hands the *full* gradient to every tied maximum, and ties are common:
/// over a blank background every position of a window holds the same activation. So the
/// window is multiplied by the one-hot mask of its first maximum ([`first_max_mask`], PyTorch's
/// choice) and summed: the value is the maximum, the gradient goes to one position.
/// Odd sizes are floored, as in PyTorch.
pub fn max_pool_2x2(x: &Tensor) -> Result<Tensor> {
    let windows = pool_windows(x)?;
    let mask = first_max_mask(&windows.detach())?;
    (windows * mask)?.sum(5)?.sum(3)
}

/// `x` `[b, c, h, w]` as `[b, c, h/2, 2, w/2, 2]` 2×2 windows (odd edges dropped).
pub fn pool_windows(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (h2, w2) = (h / 2, w / 2);
    let x = if h % 2 == 1 || w % 2 == 1 { x.narrow(2, 0, 2 * h2)?.narrow(3, 0, 2 * w2)? } else { x.clone() };
    x.reshape((b, c, h2, 2, w2, 2))
}

/// For windows `[b, c, h2, 2, w2, 2]`: 1 at the first maximum of each window in row-major order
/// ((0,0), (0,1), (1,0), (1,1)), which is where PyTorch's max-pool sends the gradient; 0
/// elsewhere. Same dtype as the input.
pub fn first_max_mask(windows: &Tensor) -> Result<Tensor> {
    let max = windows.max_keepdim(5)?.max_keepdim(3)?;
    let is_max = windows.broadcast_eq(&max)?.to_dtype(windows.dtype())?;
    let mut taken = max.zeros_like()?;
    let mut rows = Vec::with_capacity(2);
    for dy in 0..2 {
        let mut row = Vec::with_capacity(2);
        for dx in 0..2 {
            let candidate = is_max.narrow(3, dy, 1)?.narrow(5, dx, 1)?;
            let chosen = (candidate * taken.affine(-1.0, 1.0)?)?;
            taken = (taken + &chosen)?;
            row.push(chosen);
        }
        rows.push(Tensor::cat(&row, 5)?);
    }
    Tensor::cat(&rows, 3)
}
