//! The Jacobian's reverse pass written with candle tensor operations, for any description on any
//! device and dtype (a GPU, or f64 for finite differences).
//!
//! One forward pass keeps every value; the seeds `e_i − p` of a group of classes, `[B·K, C]`,
//! then go back node by node: a convolution by `conv_transpose2d` (per group), a linear layer by
//! a matrix product, an activation by its derivative, batch norm by its scale; pooling, whose
//! windows are gathers, by candle's autograd on that one node (its forward is the network's own,
//! so the gradient goes to the same first maximum). No parameter gradient is formed. On the CPU
//! it is tested against the engine, so on a GPU it is the same algorithm on another device.

use candle_core::{Tensor, Var, D};
use leafwalk_models::description::{Activation, Arith, Dims, GeluForm, Node, Op};
use leafwalk_models::{network, Classifier};

use crate::jacobian::class_groups;
use crate::{in_coordinates, Coordinates, EngineError, Jacobians, Result};

/// J and log p of a batch by tensor operations on the model's device and dtype.
pub fn input_jacobian(model: &Classifier, input: &Tensor, coordinates: Coordinates) -> Result<Jacobians> {
    let input = input.to_device(model.device())?.to_dtype(model.dtype())?;
    let x = match coordinates {
        Coordinates::Pixels => model.normalise(&input)?,
        Coordinates::Normalised => input,
    };
    let values = model.node_values(&x)?;
    let description = model.description();
    let nodes = description.logit_nodes();
    let logits = values[nodes.len()].flatten_from(1)?;
    let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let probs = log_probs.exp()?;
    let (b, c) = probs.dims2()?;
    let shapes = description.shapes().map_err(|e| EngineError::Description(e.to_string()))?;
    let mut rows = Vec::new();
    for group in class_groups(c) {
        let k = group.len();
        // Seeds: row (point, class) is e_class − p_point.
        let eye = Tensor::eye(c, model.dtype(), model.device())?.narrow(0, group.start, k)?;
        let seeds = eye.unsqueeze(0)?.broadcast_sub(&probs.unsqueeze(1)?)?.reshape((b * k, c, 1, 1))?;
        let grad = reverse(model, nodes, &shapes, &values, seeds, k)?;
        rows.push(grad.reshape((b, k, ()))?);
    }
    let jacobian = Tensor::cat(&rows, 1)?;
    Ok(Jacobians { log_probs, jacobian: in_coordinates(model, jacobian, coordinates)? })
}

/// `t` `[B, …]` repeated for K classes: `[B·K, …]`, point-major.
fn per_class(t: &Tensor, k: usize) -> Result<Tensor> {
    let mut expanded = t.dims().to_vec();
    expanded.insert(1, k);
    let mut merged = t.dims().to_vec();
    merged[0] *= k;
    Ok(t.unsqueeze(1)?.broadcast_as(expanded)?.reshape(merged)?)
}

fn reverse(
    model: &Classifier,
    nodes: &[Node],
    shapes: &[Dims],
    values: &[Tensor],
    seeds: Tensor,
    k: usize,
) -> Result<Tensor> {
    let mut grads: Vec<Option<Tensor>> = vec![None; nodes.len() + 1];
    grads[nodes.len()] = Some(seeds);
    let param = |node: &Node, leaf: &str| -> Result<Tensor> {
        let name = format!("{}.{leaf}", node.name);
        model.tensor(&name).ok_or_else(|| EngineError::Weights(format!("no tensor '{name}'")))
    };
    for (index, node) in nodes.iter().enumerate().rev() {
        let Some(grad) = grads[index + 1].take() else { continue };
        let x = &values[node.inputs[0]];
        let in_dims = shapes[node.inputs[0]];
        let grad_in: Vec<Tensor> = match &node.op {
            Op::Conv2d(conv) => {
                let weight = param(node, "weight")?;
                let cout_g = conv.out_channels / conv.groups;
                if conv.stride[0] != conv.stride[1]
                    || conv.padding[0] != conv.padding[1]
                    || conv.dilation[0] != conv.dilation[1]
                {
                    return Err(EngineError::DeviceBackend {
                        layer: node.name.clone(),
                        need: "square stride, padding and dilation",
                    });
                }
                let (s, p, d) = (conv.stride[0], conv.padding[0], conv.dilation[0]);
                // The output padding that gives back the input's size where the stride dropped rows.
                let span = |size: usize, axis: usize| (size - 1) * s + d * (conv.kernel[axis] - 1) + 1;
                let out_h = shapes[index + 1].height;
                let extra = (in_dims.height + 2 * p).saturating_sub(span(out_h, 0));
                let parts = (0..conv.groups)
                    .map(|g| {
                        let g_out = grad.narrow(1, g * cout_g, cout_g)?;
                        let w = weight.narrow(0, g * cout_g, cout_g)?;
                        Ok(g_out.conv_transpose2d(&w.contiguous()?, p, extra, s, d)?)
                    })
                    .collect::<Result<Vec<Tensor>>>()?;
                let back = Tensor::cat(&parts, 1)?;
                // Columns the output padding could not restore (a non-square input) are zero.
                vec![fit(&back, in_dims)?]
            }
            Op::Linear(_) => {
                let weight = param(node, "weight")?;
                let rows = grad.dim(0)?;
                vec![grad.reshape((rows, ()))?.matmul(&weight)?.reshape((rows, in_dims.channels, 1, 1))?]
            }
            Op::BatchNorm(norm) => {
                let scale = (param(node, "weight")? / (param(node, "running_var")? + norm.eps)?.sqrt()?)?;
                vec![grad.broadcast_mul(&scale.reshape((1, (), 1, 1))?)?]
            }
            Op::Activation(activation) => vec![(grad * per_class(&derivative(x, *activation)?, k)?)?],
            Op::MaxPool2d(_) | Op::AvgPool2d(_) => vec![node_vjp(node, &per_class(x, k)?, &grad)?],
            Op::GlobalAvgPool => {
                let plane = in_dims.plane() as f64;
                let rows = grad.dim(0)?;
                vec![(grad / plane)?
                    .broadcast_as((rows, in_dims.channels, in_dims.height, in_dims.width))?
                    .contiguous()?]
            }
            Op::Flatten | Op::Reshape { .. } => {
                vec![grad.reshape((grad.dim(0)?, in_dims.channels, in_dims.height, in_dims.width))?]
            }
            Op::Binary { arith } => {
                let (a, b) = (per_class(x, k)?, per_class(&values[node.inputs[1]], k)?);
                let (first, second) = match arith {
                    Arith::Add => (grad.clone(), grad.clone()),
                    Arith::Sub => (grad.clone(), grad.neg()?),
                    Arith::Mul => (grad.broadcast_mul(&b)?, grad.broadcast_mul(&a)?),
                    Arith::Div => (grad.broadcast_div(&b)?, grad.broadcast_mul(&a)?.broadcast_div(&b.sqr()?)?.neg()?),
                };
                let second = match b.dims() == a.dims() {
                    true => second,
                    false => second.sum_keepdim(2)?.sum_keepdim(3)?,
                };
                vec![first, second]
            }
            Op::Constant { arith, values: constants, constant_first } => {
                let shape = if constants.len() == 1 { (1, 1, 1, 1) } else { (1, constants.len(), 1, 1) };
                let c = Tensor::from_slice(constants, shape, grad.device())?.to_dtype(grad.dtype())?;
                vec![match (arith, constant_first) {
                    (Arith::Add, _) | (Arith::Sub, false) => grad,
                    (Arith::Sub, true) => grad.neg()?,
                    (Arith::Mul, _) => grad.broadcast_mul(&c)?,
                    (Arith::Div, false) => grad.broadcast_div(&c)?,
                    (Arith::Div, true) => grad.broadcast_mul(&c)?.broadcast_div(&per_class(&x.sqr()?, k)?)?.neg()?,
                }]
            }
            Op::Identity | Op::Softmax { .. } => vec![grad],
        };
        for (&v, g) in node.inputs.iter().zip(grad_in) {
            grads[v] = Some(match grads[v].take() {
                Some(existing) => (existing + g)?,
                None => g,
            });
        }
    }
    grads[0].take().ok_or(EngineError::InputNotUsed)
}

/// A transposed convolution's result cut or zero-padded to `dims` (a stride that dropped the
/// last rows of an odd input leaves them without gradient).
fn fit(t: &Tensor, dims: Dims) -> Result<Tensor> {
    let (_, _, h, w) = t.dims4()?;
    let t = if h > dims.height { t.narrow(2, 0, dims.height)? } else { t.pad_with_zeros(2, 0, dims.height - h)? };
    let t = if w > dims.width { t.narrow(3, 0, dims.width)? } else { t.pad_with_zeros(3, 0, dims.width - w)? };
    Ok(t)
}

/// The gradient of one node's output against its input by candle's autograd on that node alone.
fn node_vjp(node: &Node, x: &Tensor, grad: &Tensor) -> Result<Tensor> {
    let input = Var::from_tensor(x)?;
    let output = network::apply_parameter_free(&node.op, input.as_tensor())?;
    let grads = (output * grad)?.sum_all()?.backward()?;
    Ok(grads.get(input.as_tensor()).cloned().unwrap_or(x.zeros_like()?))
}

/// f'(z) elementwise.
fn derivative(z: &Tensor, activation: Activation) -> Result<Tensor> {
    let one = |t: &Tensor| t.ones_like();
    Ok(match activation {
        Activation::Relu => z.gt(0.0)?.to_dtype(z.dtype())?,
        Activation::LeakyRelu { negative_slope } => z.gt(0.0)?.where_cond(&one(z)?, &(one(z)? * negative_slope)?)?,
        Activation::Elu { alpha } => z.gt(0.0)?.where_cond(&one(z)?, &(z.exp()? * alpha)?)?,
        Activation::Gelu { form: GeluForm::Erf } => {
            let cdf = ((z / std::f64::consts::SQRT_2)?.erf()? + 1.0)? * 0.5;
            let pdf = ((z.sqr()? * -0.5)?.exp()? / (2.0 * std::f64::consts::PI).sqrt())?;
            (cdf? + (z * pdf)?)?
        }
        Activation::Gelu { form: GeluForm::Tanh } => {
            let k = (2.0 / std::f64::consts::PI).sqrt();
            let inner = ((z + (z.powf(3.0)? * 0.044715)?)? * k)?;
            let t = inner.tanh()?;
            let d_inner = ((z.sqr()? * (3.0 * 0.044715))? + 1.0)? * k;
            (((&t + 1.0)? * 0.5)? + (z * 0.5)?.mul(&(one(&t)? - t.sqr()?)?)?.mul(&d_inner?)?)?
        }
        Activation::Silu => {
            let s = candle_nn::ops::sigmoid(z)?;
            (&s * ((z * (one(&s)? - &s)?)? + 1.0)?)?
        }
        Activation::Sigmoid => {
            let s = candle_nn::ops::sigmoid(z)?;
            (&s * (one(&s)? - &s)?)?
        }
        Activation::Tanh => (one(z)? - z.tanh()?.sqr()?)?,
        Activation::Softplus { beta, threshold } => {
            let bz = (z * beta)?;
            bz.gt(threshold)?.where_cond(&one(z)?, &candle_nn::ops::sigmoid(&bz)?)?
        }
    })
}
