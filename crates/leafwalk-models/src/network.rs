//! Any [`Description`] as a candle network: the reference implementation every faster pass is
//! tested against, the training path where the CPU engine has no pass (another device or
//! dtype), and what runs on a GPU.
//!
//! Values are `[B, C, H, W]` tensors throughout (a flat vector is `[B, F, 1, 1]`). Pooling is
//! written with gathers and a first-maximum mask rather than candle's `max_pool2d`, whose
//! backward is 4× off in 0.11.1 and which has no padding or ceil mode; a strided convolution
//! with a non-square stride is a stride-1 convolution subsampled.

use candle_core::{Module, Result, Tensor, Var, D};
use candle_nn::{Linear as CandleLinear, VarBuilder, VarMap};

use crate::description::{Activation, Arith, Conv2d, Description, GeluForm, Init, Node, Op, Pool};

/// The tensors one node owns.
enum Params {
    None,
    Conv { weight: Tensor, bias: Option<Tensor> },
    Linear(CandleLinear),
    BatchNorm { weight: Tensor, bias: Tensor, running_mean: Var, running_var: Var },
}

/// A description with its parameters, runnable on any candle device.
pub(crate) struct GraphNet {
    description: Description,
    params: Vec<Params>,
}

impl GraphNet {
    /// Fetches every parameter through `vb`, whose backend records each as a `Var` in `varmap`
    /// (batch norm keeps its running statistics' `Var`s to update them in training mode).
    pub(crate) fn new(description: Description, vb: VarBuilder, varmap: &VarMap) -> Result<Self> {
        description.shapes().map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let get = |name: &str, leaf: &str, shape: Vec<usize>, init: Init| -> Result<Tensor> {
            let hint = match init {
                Init::FanInUniform { fan_in } => {
                    let bound = 1.0 / (fan_in as f64).sqrt();
                    candle_nn::Init::Uniform { lo: -bound, up: bound }
                }
                Init::Constant(c) => candle_nn::Init::Const(c as f64),
            };
            vb.pp(name).get_with_hints(shape, leaf, hint)
        };
        let specs = description.parameters();
        let spec = |name: &str, leaf: &str| {
            let full = format!("{name}.{leaf}");
            specs.iter().find(|s| s.name == full).cloned()
        };
        let mut params = Vec::with_capacity(description.nodes.len());
        for node in &description.nodes {
            let fetch = |leaf: &str| -> Result<Option<Tensor>> {
                spec(&node.name, leaf).map(|s| get(&node.name, leaf, s.shape, s.init)).transpose()
            };
            params.push(match &node.op {
                Op::Conv2d(_) => Params::Conv { weight: required(fetch("weight")?, node)?, bias: fetch("bias")? },
                Op::Linear(_) => Params::Linear(CandleLinear::new(required(fetch("weight")?, node)?, fetch("bias")?)),
                Op::BatchNorm(_) => {
                    // Fetched in `parameters()` order so a fresh model draws the same stream.
                    fetch("running_mean")?;
                    fetch("running_var")?;
                    let var = |leaf: &str| {
                        let data =
                            varmap.data().lock().map_err(|_| candle_core::Error::Msg("var map poisoned".into()))?;
                        data.get(&format!("{}.{leaf}", node.name)).cloned().ok_or_else(|| {
                            candle_core::Error::Msg(format!("batch norm '{}' without {leaf}", node.name))
                        })
                    };
                    Params::BatchNorm {
                        weight: required(fetch("weight")?, node)?,
                        bias: required(fetch("bias")?, node)?,
                        running_mean: var("running_mean")?,
                        running_var: var("running_var")?,
                    }
                }
                _ => Params::None,
            });
        }
        Ok(GraphNet { description, params })
    }

    pub(crate) fn description(&self) -> &Description {
        &self.description
    }

    /// Logits `[B, classes]` of normalised inputs `[B, C, H, W]`, and the value `keep` (a value
    /// index) if asked. `train` uses batch statistics in batch norm and updates its running
    /// averages, as PyTorch's training mode.
    pub(crate) fn run(&self, x: &Tensor, train: bool, keep: Option<usize>) -> Result<(Tensor, Option<Tensor>)> {
        let values = self.evaluate(x, train, |v| Some(v) == keep)?;
        let logits = values.last().cloned().flatten().ok_or_else(|| candle_core::Error::Msg("no logits".into()))?;
        let kept = keep.and_then(|k| values[k].clone()).map(|t| t.flatten_from(1)).transpose()?;
        Ok((logits.flatten_from(1)?, kept))
    }

    /// Every value of an evaluation-mode pass (`[0]` is `x`), up to the logits.
    pub(crate) fn values(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let values = self.evaluate(x, false, |_| true)?;
        values.into_iter().map(|v| v.ok_or_else(|| candle_core::Error::Msg("value dropped".into()))).collect()
    }

    /// Runs the nodes up to the logits, dropping each value after its last reader unless
    /// `keep(value)` (the logits are always kept).
    fn evaluate(&self, x: &Tensor, train: bool, keep: impl Fn(usize) -> bool) -> Result<Vec<Option<Tensor>>> {
        let nodes = self.description.logit_nodes();
        let mut values: Vec<Option<Tensor>> = vec![None; nodes.len() + 1];
        values[0] = Some(x.clone());
        let mut remaining = consumers(nodes);
        for (v, count) in remaining.iter_mut().enumerate() {
            if keep(v) || v == nodes.len() {
                *count += 1;
            }
        }
        for (index, node) in nodes.iter().enumerate() {
            let inputs: Vec<Tensor> = node
                .inputs
                .iter()
                .map(|&v| values[v].clone().ok_or_else(|| candle_core::Error::Msg(format!("value {v} dropped early"))))
                .collect::<Result<_>>()?;
            let output = self.apply(index, node, &inputs, train)?;
            for &v in &node.inputs {
                remaining[v] -= 1;
                if remaining[v] == 0 {
                    values[v] = None;
                }
            }
            values[index + 1] = Some(output);
        }
        Ok(values)
    }

    fn apply(&self, index: usize, node: &Node, inputs: &[Tensor], train: bool) -> Result<Tensor> {
        let x = &inputs[0];
        match (&node.op, &self.params[index]) {
            (Op::Conv2d(conv), Params::Conv { weight, bias }) => {
                let y = convolution(x, weight, conv)?;
                match bias {
                    Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
                    None => Ok(y),
                }
            }
            (Op::Linear(_), Params::Linear(linear)) => {
                let (b, f) = (x.dim(0)?, x.elem_count() / x.dim(0)?.max(1));
                linear.forward(&x.reshape((b, f))?)?.unsqueeze(2)?.unsqueeze(3)
            }
            (Op::BatchNorm(bn), Params::BatchNorm { weight, bias, running_mean, running_var }) => {
                let channel = |t: &Tensor| t.reshape((1, (), 1, 1));
                let (mean, var) = if train {
                    let mean = x.mean_keepdim(0)?.mean_keepdim(2)?.mean_keepdim(3)?;
                    let centred = x.broadcast_sub(&mean)?;
                    let var = centred.sqr()?.mean_keepdim(0)?.mean_keepdim(2)?.mean_keepdim(3)?;
                    let count = (x.elem_count() / x.dim(1)?) as f64;
                    // PyTorch keeps the unbiased variance in its running average.
                    let unbiased = (var.detach() * (count / (count - 1.0).max(1.0)))?.flatten_all()?;
                    let m = bn.momentum;
                    running_mean
                        .set(&((running_mean.as_tensor() * (1.0 - m))? + (mean.detach().flatten_all()? * m)?)?)?;
                    running_var.set(&((running_var.as_tensor() * (1.0 - m))? + (unbiased * m)?)?)?;
                    (mean, var)
                } else {
                    (channel(running_mean.as_tensor())?, channel(running_var.as_tensor())?)
                };
                let scale = channel(weight)?.broadcast_div(&(var + bn.eps)?.sqrt()?)?;
                x.broadcast_sub(&mean)?.broadcast_mul(&scale)?.broadcast_add(&channel(bias)?)
            }
            (Op::Binary { arith }, _) => arithmetic(*arith, x, &inputs[1]),
            (Op::Constant { arith, values, constant_first }, _) => {
                let shape = if values.len() == 1 { (1, 1, 1, 1) } else { (1, values.len(), 1, 1) };
                let constant = Tensor::from_slice(values, shape, x.device())?.to_dtype(x.dtype())?;
                match constant_first {
                    true => arithmetic(*arith, &constant, x),
                    false => arithmetic(*arith, x, &constant),
                }
            }
            (Op::Conv2d(_) | Op::Linear(_) | Op::BatchNorm(_), _) => {
                candle_core::bail!("layer '{}' ({}) has no parameters loaded", node.name, node.op.kind())
            }
            (op, _) => apply_parameter_free(op, x),
        }
    }
}

/// A parameter-free operation on `x` `[B, C, H, W]`: activations, pooling, flatten and reshape
/// (anything else is returned as it is).
pub fn apply_parameter_free(op: &Op, x: &Tensor) -> Result<Tensor> {
    match op {
        Op::Activation(activation) => activate(x, *activation),
        Op::MaxPool2d(pool) => max_pool(x, pool),
        Op::AvgPool2d(pool) => avg_pool(x, pool),
        Op::GlobalAvgPool => x.mean_keepdim(2)?.mean_keepdim(3),
        Op::Flatten => x.reshape((x.dim(0)?, x.elem_count() / x.dim(0)?.max(1), 1, 1)),
        Op::Reshape { dims } => x.reshape((x.dim(0)?, dims.channels, dims.height, dims.width)),
        _ => Ok(x.clone()),
    }
}

fn required(tensor: Option<Tensor>, node: &Node) -> Result<Tensor> {
    tensor.ok_or_else(|| candle_core::Error::Msg(format!("layer '{}' has no weight", node.name)))
}

/// Readers of each value among `nodes` (index 0 is the input).
fn consumers(nodes: &[Node]) -> Vec<usize> {
    let mut counts = vec![0; nodes.len() + 1];
    for node in nodes {
        for &v in &node.inputs {
            counts[v] += 1;
        }
    }
    counts
}

fn arithmetic(arith: Arith, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    match arith {
        Arith::Add => a.broadcast_add(b),
        Arith::Sub => a.broadcast_sub(b),
        Arith::Mul => a.broadcast_mul(b),
        Arith::Div => a.broadcast_div(b),
    }
}

/// PyTorch's convolution: zero padding per axis, then candle's conv2d (square stride and
/// dilation), or a stride-1 convolution subsampled for a non-square stride.
fn convolution(x: &Tensor, weight: &Tensor, conv: &Conv2d) -> Result<Tensor> {
    if conv.dilation[0] != conv.dilation[1] {
        candle_core::bail!("the candle backend has no non-square dilation {:?}", conv.dilation);
    }
    let x =
        x.pad_with_zeros(2, conv.padding[0], conv.padding[0])?.pad_with_zeros(3, conv.padding[1], conv.padding[1])?;
    if conv.stride[0] == conv.stride[1] {
        return x.conv2d(weight, 0, conv.stride[0], conv.dilation[0], conv.groups);
    }
    let full = x.conv2d(weight, 0, 1, conv.dilation[0], conv.groups)?;
    subsample(&full, conv.stride)
}

/// Every `stride`-th row and column.
fn subsample(x: &Tensor, stride: [usize; 2]) -> Result<Tensor> {
    let pick = |dim: usize, step: usize| -> Result<Tensor> {
        let n = x.dim(dim)?.div_ceil(step);
        Tensor::new((0..n as u32).map(|i| i * step as u32).collect::<Vec<_>>(), x.device())
    };
    x.index_select(&pick(2, stride[0])?, 2)?.index_select(&pick(3, stride[1])?, 3)
}

/// `activation` applied element-wise to `x` (any shape) with candle operations, so that autograd
/// differentiates it: the reference for the CPU engine's activations.
pub fn activate(x: &Tensor, activation: Activation) -> Result<Tensor> {
    match activation {
        Activation::Relu => x.relu(),
        Activation::LeakyRelu { negative_slope } => candle_nn::ops::leaky_relu(x, negative_slope),
        Activation::Elu { alpha } => x.elu(alpha),
        Activation::Gelu { form: GeluForm::Erf } => x.gelu_erf(),
        Activation::Gelu { form: GeluForm::Tanh } => x.gelu(),
        Activation::Silu => x.silu(),
        Activation::Sigmoid => candle_nn::ops::sigmoid(x),
        Activation::Tanh => x.tanh(),
        Activation::Softplus { beta, threshold } => {
            // max(z, 0) + log(1 + e^−|z|): no overflow in either branch of the `where`.
            let z = (x * beta)?;
            let soft = ((z.relu()? + (z.abs()?.neg()?.exp()? + 1.0)?.log()?)? / beta)?;
            z.gt(threshold)?.where_cond(x, &soft)
        }
    }
}

/// The pooling windows of `x` `[B, C, H, W]` as `[B, C, Ho, Wo, taps]`, out-of-range positions
/// filled with `fill` (−∞ for max, 0 for average pooling).
fn pool_windows(x: &Tensor, pool: &Pool, fill: f64) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (ho, wo) = match (pool.output_size(h, 0), pool.output_size(w, 1)) {
        (Some(ho), Some(wo)) => (ho, wo),
        _ => candle_core::bail!("pool window {:?} does not fit a {h}×{w} input", pool.kernel),
    };
    // Room for every window, including ceil mode's last one past the right padding.
    let needed =
        |axis: usize, out: usize| (out - 1) * pool.stride[axis] + pool.dilation[axis] * (pool.kernel[axis] - 1) + 1;
    let padded = |t: Tensor, dim: usize, axis: usize, size: usize, out: usize| -> Result<Tensor> {
        let before = pool.padding[axis];
        let after = needed(axis, out).saturating_sub(size + before);
        let mut parts = Vec::with_capacity(3);
        let mut block_shape = t.dims().to_vec();
        if before > 0 {
            block_shape[dim] = before;
            parts.push(Tensor::full(fill as f32, block_shape.clone(), t.device())?.to_dtype(t.dtype())?);
        }
        parts.push(t.clone());
        if after > 0 {
            block_shape[dim] = after;
            parts.push(Tensor::full(fill as f32, block_shape, t.device())?.to_dtype(t.dtype())?);
        }
        Tensor::cat(&parts, dim)
    };
    let x = padded(x.clone(), 2, 0, h, ho)?;
    let x = padded(x, 3, 1, w, wo)?;
    let mut taps = Vec::with_capacity(pool.kernel[0] * pool.kernel[1]);
    for ky in 0..pool.kernel[0] {
        let rows: Vec<u32> = (0..ho).map(|i| (i * pool.stride[0] + ky * pool.dilation[0]) as u32).collect();
        let band = x.index_select(&Tensor::new(rows, x.device())?, 2)?;
        for kx in 0..pool.kernel[1] {
            let cols: Vec<u32> = (0..wo).map(|j| (j * pool.stride[1] + kx * pool.dilation[1]) as u32).collect();
            taps.push(band.index_select(&Tensor::new(cols, x.device())?, 3)?);
        }
    }
    Tensor::stack(&taps, 4)?.reshape((b, c, ho, wo, taps.len()))
}

/// Max-pooling whose gradient goes to the first maximum of each window, as PyTorch's.
fn max_pool(x: &Tensor, pool: &Pool) -> Result<Tensor> {
    let windows = pool_windows(x, pool, f64::NEG_INFINITY)?;
    let mask = first_max_mask(&windows.detach())?;
    // Where the mask is 0 the window may hold −∞ (padding): select, do not multiply.
    let zeros = windows.zeros_like()?;
    mask.ne(0.0)?.where_cond(&windows, &zeros)?.sum(4)
}

/// 1 at the first maximum along the last axis, 0 elsewhere (same dtype as `windows`).
pub fn first_max_mask(windows: &Tensor) -> Result<Tensor> {
    let max = windows.max_keepdim(D::Minus1)?;
    let is_max = windows.broadcast_eq(&max)?.to_dtype(windows.dtype())?;
    // A running count of maxima so far: the first maximum is where it equals 1 and is_max is 1.
    let taps = windows.dim(D::Minus1)?;
    let mut seen = is_max.narrow(D::Minus1, 0, 1)?.zeros_like()?;
    let mut columns = Vec::with_capacity(taps);
    for tap in 0..taps {
        let candidate = is_max.narrow(D::Minus1, tap, 1)?;
        let chosen = (&candidate * seen.affine(-1.0, 1.0)?)?;
        seen = (seen + &chosen)?;
        columns.push(chosen);
    }
    Tensor::cat(&columns, D::Minus1)
}

fn avg_pool(x: &Tensor, pool: &Pool) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let windows = pool_windows(x, pool, 0.0)?;
    let (ho, wo) = (windows.dim(2)?, windows.dim(3)?);
    let divisors: Vec<f32> = (0..ho * wo).map(|k| 1.0 / pool.divisor((k / wo, k % wo), (h, w)).max(1) as f32).collect();
    let divisors = Tensor::from_vec(divisors, (1, 1, ho, wo), x.device())?.to_dtype(x.dtype())?;
    windows.sum(4)?.broadcast_mul(&divisors)
}
