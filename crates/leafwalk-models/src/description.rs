//! A model *description*: the graph of layers a classifier computes, with PyTorch's parameter
//! names and layouts, independent of any code that runs it.
//!
//! A description is a list of [`Node`]s in evaluation order. Each node applies one [`Op`] to the
//! values named by its `inputs` — value 0 is the network's input, value `i + 1` the output of
//! node `i` — and the last node's output is the logits. Every value is one point's tensor in
//! PyTorch's channel-first order, `[channels, height, width]`; a flat vector of F features is
//! `[F, 1, 1]`. Parameters are named `<node name>.<weight|bias|running_mean|running_var>` with
//! PyTorch's shapes, so a `state_dict` exported from the same network loads as it is.
//!
//! [`Description::shapes`] checks the whole graph (shapes, channel counts, pool sizes) and
//! names the node at fault; [`Description::parameters`] lists the tensors a checkpoint must
//! hold. The candle network in [`crate::network`] and the CPU engine in `leafwalk-engine` both
//! run a description; neither knows any architecture by name.
//!
//! A residual block with batch norm and GELU, as a PyTorch module would name it:
//!
//! ```
//! use leafwalk_models::description::{Activation, Arith, Conv2d, Dims, GeluForm, GraphBuilder, Linear};
//!
//! let mut g = GraphBuilder::new(Dims::new(1, 28, 28));
//! let x = g.conv("stem", GraphBuilder::INPUT, Conv2d::new(1, 16, 3).padding(1).no_bias());
//! let x = g.batch_norm("stem_bn", x, 16);
//! let x = g.activation("stem_relu", x, Activation::Relu);
//! let y = g.conv("block.c1", x, Conv2d::new(16, 16, 3).padding(1));
//! let y = g.activation("block.act", y, Activation::Gelu { form: GeluForm::Erf });
//! let y = g.conv("block.c2", y, Conv2d::new(16, 16, 3).padding(1));
//! let x = g.binary("block.add", Arith::Add, x, y);
//! let x = g.global_avg_pool("pool", x);
//! let x = g.flatten("flatten", x);
//! g.linear("head", x, Linear::new(16, 10));
//! let description = g.finish()?; // shapes checked node by node; an error names the node
//!
//! assert_eq!(description.classes()?, 10);
//! let names: Vec<String> = description.parameters().into_iter().map(|p| p.name).collect();
//! assert!(names.contains(&"stem_bn.running_var".to_string()) && names.contains(&"block.c1.weight".to_string()));
//! # Ok::<(), leafwalk_models::DescriptionError>(())
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

/// The shape of one value of one point, channel-first as in PyTorch: `[channels, height,
/// width]`; a flat vector of F features is `[F, 1, 1]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Dims {
    /// Channels C (PyTorch's dim 1 once a batch axis is added), or the length F of a flat vector.
    pub channels: usize,
    /// Rows H; 1 for a flat vector.
    pub height: usize,
    /// Columns W; 1 for a flat vector.
    pub width: usize,
}

impl Dims {
    /// `[channels, height, width]` of one point (no batch axis).
    pub const fn new(channels: usize, height: usize, width: usize) -> Self {
        Dims { channels, height, width }
    }

    /// A flat vector of `features` values.
    pub const fn flat(features: usize) -> Self {
        Dims { channels: features, height: 1, width: 1 }
    }

    /// Values per point.
    pub fn len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// True when some dimension is 0, so that a point holds no values ([`Description::shapes`]
    /// refuses such an input).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Positions per channel (`height · width`).
    pub fn plane(&self) -> usize {
        self.height * self.width
    }

    /// True for `[F, 1, 1]`.
    pub fn is_flat(&self) -> bool {
        self.height == 1 && self.width == 1
    }
}

impl fmt::Display for Dims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_flat() {
            write!(f, "{}", self.channels)
        } else {
            write!(f, "{}×{}×{}", self.channels, self.height, self.width)
        }
    }
}

/// A 2-D convolution (cross-correlation), PyTorch's `nn.Conv2d`: weight
/// `[out_channels, in_channels / groups, kernel[0], kernel[1]]`, optional bias `[out_channels]`.
/// Zero padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conv2d {
    /// `in_channels`: channels of the input value; must be divisible by `groups`.
    pub in_channels: usize,
    /// `out_channels`: channels of the output value (rows of the weight); divisible by `groups`.
    pub out_channels: usize,
    /// `kernel_size` as `[height, width]`; no default.
    pub kernel: [usize; 2],
    /// `stride` as `[vertical, horizontal]`, in input positions between output positions;
    /// PyTorch's default 1.
    pub stride: [usize; 2],
    /// `padding`: zeros added on both sides of each axis, `[above and below, left and right]`;
    /// default 0. Only numbers: PyTorch's `"same"` and `"valid"` strings have no equivalent.
    pub padding: [usize; 2],
    /// `dilation`: spacing between kernel taps, `[vertical, horizontal]`; default 1 (a dense
    /// kernel).
    pub dilation: [usize; 2],
    /// `groups`: channel groups convolved separately (`in_channels` for a depthwise
    /// convolution); default 1. The weight's second axis is `in_channels / groups`.
    pub groups: usize,
    /// `bias`: whether a learned `[out_channels]` bias (`<name>.bias`) is added; default `true`.
    pub bias: bool,
}

impl Conv2d {
    /// A square `kernel`×`kernel` convolution, stride 1, no padding, with bias.
    pub fn new(in_channels: usize, out_channels: usize, kernel: usize) -> Self {
        Conv2d {
            in_channels,
            out_channels,
            kernel: [kernel; 2],
            stride: [1; 2],
            padding: [0; 2],
            dilation: [1; 2],
            groups: 1,
            bias: true,
        }
    }

    /// The same stride on both axes (`stride=s`).
    pub fn stride(self, stride: usize) -> Self {
        Conv2d { stride: [stride; 2], ..self }
    }

    /// The same zero padding on all four sides (`padding=p`).
    pub fn padding(self, padding: usize) -> Self {
        Conv2d { padding: [padding; 2], ..self }
    }

    /// No bias (`bias=False`), so no `<name>.bias` tensor: the usual convolution before a batch
    /// norm.
    pub fn no_bias(self) -> Self {
        Conv2d { bias: false, ..self }
    }

    /// Channels split into `groups` groups (`groups=g`); both channel counts must divide by it,
    /// which [`Description::shapes`] checks.
    pub fn groups(self, groups: usize) -> Self {
        Conv2d { groups, ..self }
    }

    /// The same dilation on both axes (`dilation=d`).
    pub fn dilation(self, dilation: usize) -> Self {
        Conv2d { dilation: [dilation; 2], ..self }
    }

    /// Inputs one output sees: `in_channels / groups · kernel[0] · kernel[1]` (PyTorch's fan-in).
    pub fn fan_in(&self) -> usize {
        self.in_channels / self.groups.max(1) * self.kernel[0] * self.kernel[1]
    }

    /// The output size along one axis, or `None` when the padded input is smaller than the
    /// dilated kernel.
    pub fn output_size(&self, input: usize, axis: usize) -> Option<usize> {
        // Checked: sizes come from users' files.
        let span = self.dilation[axis].checked_mul(self.kernel[axis].checked_sub(1)?)?.checked_add(1)?;
        let padded = input.checked_add(self.padding[axis].checked_mul(2)?)?;
        (padded >= span && self.stride[axis] > 0).then(|| (padded - span) / self.stride[axis] + 1)
    }
}

/// A fully connected layer, PyTorch's `nn.Linear`: weight `[out_features, in_features]`,
/// optional bias `[out_features]`; its input is a flat vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Linear {
    /// `in_features`: length F of the flat input `[F, 1, 1]`.
    pub in_features: usize,
    /// `out_features`: length of the output vector (the class count C for the last layer).
    pub out_features: usize,
    /// `bias`: whether a learned `[out_features]` bias (`<name>.bias`) is added; default `true`.
    pub bias: bool,
}

impl Linear {
    /// `nn.Linear(in_features, out_features)`, with a bias as PyTorch's default.
    pub fn new(in_features: usize, out_features: usize) -> Self {
        Linear { in_features, out_features, bias: true }
    }
}

/// Batch normalisation over channels (`nn.BatchNorm2d`, or `BatchNorm1d` on a flat vector):
/// `weight`, `bias`, `running_mean`, `running_var`, each `[channels]`. Geometry uses evaluation
/// mode (running statistics); training uses batch statistics and updates the running ones.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchNorm {
    /// `num_features`: the channels normalised, C of a `[C, H, W]` value or F of a flat one.
    pub channels: usize,
    /// `eps`: added to the variance before its square root; PyTorch's default 1e-5, must be
    /// positive.
    pub eps: f64,
    /// Weight of the new batch statistics in the running averages (PyTorch's default 0.1).
    pub momentum: f64,
}

impl BatchNorm {
    /// `nn.BatchNorm2d(channels)` with PyTorch's defaults: `eps` 1e-5, `momentum` 0.1 (affine
    /// weight and bias, running statistics tracked).
    pub fn new(channels: usize) -> Self {
        BatchNorm { channels, eps: 1e-5, momentum: 0.1 }
    }
}

/// The two forms of GELU PyTorch offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GeluForm {
    /// x·Φ(x) with the exact normal CDF (erf).
    Erf,
    /// The tanh approximation, `approximate="tanh"`.
    Tanh,
}

/// Element-wise nonlinearities, each PyTorch's module of that name with its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Activation {
    /// `nn.ReLU`: max(0, x).
    Relu,
    /// `nn.LeakyReLU`: x for x ≥ 0, `negative_slope`·x below.
    LeakyRelu {
        /// `negative_slope`: the slope for x < 0; PyTorch's default 0.01.
        negative_slope: f64,
    },
    /// `nn.ELU`: x for x > 0, α(eˣ − 1) otherwise.
    Elu {
        /// `alpha`: α, so that the output tends to −α as x → −∞; PyTorch's default 1.0.
        alpha: f64,
    },
    /// `nn.GELU`: x·Φ(x), Φ the standard normal CDF.
    Gelu {
        /// `approximate`: `"none"` ([`GeluForm::Erf`], PyTorch's default) or `"tanh"`
        /// ([`GeluForm::Tanh`]).
        form: GeluForm,
    },
    /// `nn.SiLU` (swish): x·σ(x).
    Silu,
    /// `nn.Sigmoid`: σ(x) = 1 / (1 + e⁻ˣ).
    Sigmoid,
    /// `nn.Tanh`.
    Tanh,
    /// `nn.Softplus`: `log(1 + exp(βx)) / β`, linear (x) where βx > threshold, as PyTorch.
    Softplus {
        /// `beta`: β, the sharpness (larger is closer to ReLU); PyTorch's default 1.0.
        beta: f64,
        /// `threshold`: where βx exceeds it the output is x itself; PyTorch's default 20.0.
        threshold: f64,
    },
}

impl Activation {
    /// True when the derivative is exactly zero on part of the domain, so that the reverse pass
    /// may skip the units it switches off.
    pub fn gates(&self) -> bool {
        matches!(self, Activation::Relu)
    }
}

/// Max- or average-pooling window, PyTorch's `MaxPool2d` / `AvgPool2d` arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    /// `kernel_size`: the window as `[height, width]`; no default.
    pub kernel: [usize; 2],
    /// `stride` as `[vertical, horizontal]`; PyTorch's default (`stride=None`) is the kernel.
    pub stride: [usize; 2],
    /// `padding` on both sides of each axis, at most half the kernel; default 0. Max pooling
    /// pads with −∞ (padding never wins), average pooling with zeros.
    pub padding: [usize; 2],
    /// `dilation`: spacing between window taps; default 1. Max-pool only (average pooling has
    /// none in PyTorch).
    pub dilation: [usize; 2],
    /// `ceil_mode`: output sizes rounded up instead of down (see [`Pool::output_size`]);
    /// default `false`.
    pub ceil_mode: bool,
    /// `count_include_pad`, average pool only: whether padded positions count in the divisor;
    /// PyTorch's default `true`.
    pub count_include_pad: bool,
}

impl Pool {
    /// A `kernel`×`kernel` window with stride `kernel`, PyTorch's default.
    pub fn new(kernel: usize) -> Self {
        Pool {
            kernel: [kernel; 2],
            stride: [kernel; 2],
            padding: [0; 2],
            dilation: [1; 2],
            ceil_mode: false,
            count_include_pad: true,
        }
    }

    /// The same stride on both axes (`stride=s`), instead of the kernel size.
    pub fn stride(self, stride: usize) -> Self {
        Pool { stride: [stride; 2], ..self }
    }

    /// The same padding on all four sides (`padding=p`), at most half the kernel.
    pub fn padding(self, padding: usize) -> Self {
        Pool { padding: [padding; 2], ..self }
    }

    /// Sets `ceil_mode`: output sizes rounded up (`true`) or down (`false`, the default).
    pub fn ceil_mode(self, ceil_mode: bool) -> Self {
        Pool { ceil_mode, ..self }
    }

    /// Sets `count_include_pad` (average pooling only): whether padded zeros count in the
    /// divisor (`true`, the default) or only the positions inside the input.
    pub fn count_include_pad(self, count_include_pad: bool) -> Self {
        Pool { count_include_pad, ..self }
    }

    /// PyTorch's output size along one axis (`pooling_output_shape`): floor or ceil of
    /// `(input + 2·pad − dilation·(kernel − 1) − 1) / stride + 1`, where in ceil mode a last
    /// window that would start in the right padding is dropped. `None` when no window fits.
    pub fn output_size(&self, input: usize, axis: usize) -> Option<usize> {
        let (k, s, p, d) = (self.kernel[axis], self.stride[axis], self.padding[axis], self.dilation[axis]);
        // Checked: sizes come from users' files.
        let padded = input.checked_add(p.checked_mul(2)?)?;
        let numerator = padded.checked_sub(d.checked_mul(k.checked_sub(1)?)?.checked_add(1)?)?;
        if s == 0 {
            return None;
        }
        let mut out = if self.ceil_mode { numerator.div_ceil(s) } else { numerator / s } + 1;
        if self.ceil_mode && (out - 1) * s >= input + p {
            out -= 1;
        }
        Some(out)
    }

    /// The window of output index `o` along one axis: the first input index it covers (may be
    /// negative, in the padding) and the end of the range the divisor counts with padding
    /// (PyTorch's `hend = min(start + kernel, input + pad)`).
    pub fn window(&self, o: usize, input: usize, axis: usize) -> (isize, isize) {
        let start = (o * self.stride[axis]) as isize - self.padding[axis] as isize;
        let end = (start + self.kernel[axis] as isize).min((input + self.padding[axis]) as isize);
        (start, end)
    }

    /// The average pool's divisor at output position (oy, ox) of an input `height`×`width`.
    pub fn divisor(&self, (oy, ox): (usize, usize), (height, width): (usize, usize)) -> usize {
        let (y0, y1) = self.window(oy, height, 0);
        let (x0, x1) = self.window(ox, width, 1);
        if self.count_include_pad {
            ((y1 - y0) * (x1 - x0)) as usize
        } else {
            let clip = |a: isize, b: isize, n: usize| (b.min(n as isize) - a.max(0)).max(0) as usize;
            clip(y0, y1, height) * clip(x0, x1, width)
        }
    }
}

/// Element-wise arithmetic, `torch.add` / `sub` / `mul` / `div` (the `+ - * /` operators of a
/// `forward`). `a` is the first operand, `b` the second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arith {
    /// `a + b`, e.g. a residual connection.
    Add,
    /// `a − b`.
    Sub,
    /// `a · b`.
    Mul,
    /// `a / b` in IEEE f32: a zero divisor gives ±∞ or NaN, not an error.
    Div,
}

impl Arith {
    /// `a ∘ b` for one pair of f32 values: the rule every engine applies element by element.
    pub fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            Arith::Add => a + b,
            Arith::Sub => a - b,
            Arith::Mul => a * b,
            Arith::Div => a / b,
        }
    }
}

/// One operation, each mirroring a PyTorch module or functional call on one point's values
/// (shapes without the batch axis).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// `nn.Conv2d`: parameters `<name>.weight` and, with a bias, `<name>.bias`.
    Conv2d(Conv2d),
    /// `nn.Linear` on a flat `[F, 1, 1]` input (put an [`Op::Flatten`] before it).
    Linear(Linear),
    /// `nn.BatchNorm2d` / `nn.BatchNorm1d`: running statistics in evaluation mode, the batch's in
    /// training mode.
    BatchNorm(BatchNorm),
    /// An element-wise nonlinearity (`nn.ReLU`, `nn.GELU`, …); the shape is kept.
    Activation(Activation),
    /// `nn.MaxPool2d`; the gradient goes to the first maximum of each window, as in PyTorch.
    MaxPool2d(Pool),
    /// `nn.AvgPool2d` (no dilation, no `divisor_override`).
    AvgPool2d(Pool),
    /// Mean over each channel's positions: `[C, H, W]` → `[C, 1, 1]`
    /// (`AdaptiveAvgPool2d(1)`, ONNX `GlobalAveragePool`).
    GlobalAvgPool,
    /// `[C, H, W]` → `[C·H·W, 1, 1]` in channel-first order, as `torch.flatten(x, 1)`.
    Flatten,
    /// Another shape with as many values, row-major as `torch.reshape`.
    Reshape {
        /// The new shape of one point (the batch axis is kept); as many values as the input.
        dims: Dims,
    },
    /// Two inputs of the same shape, or the second `[C, 1, 1]` against a first `[C, H, W]`
    /// (broadcast over positions).
    Binary {
        /// The operation: first input ∘ second input.
        arith: Arith,
    },
    /// One input and a constant: one value, or one per channel. `constant_first` computes
    /// `constant ∘ x` instead of `x ∘ constant`.
    Constant {
        /// The operation between the input and the constant.
        arith: Arith,
        /// The constant: one value for every element, or one per channel (broadcast over
        /// positions).
        values: Vec<f32>,
        /// `false`: `x ∘ constant` (e.g. `x - 0.5`); `true`: `constant ∘ x` (e.g. `1 - x`).
        constant_first: bool,
    },
    /// Identity, dropout in evaluation mode, or any other no-op.
    Identity,
    /// A trailing softmax or log-softmax over the classes: geometry is always of log-softmax of
    /// the logits, so this is recognised at the end of a description and not applied twice.
    Softmax {
        /// `true` for `nn.LogSoftmax`, `false` for `nn.Softmax` (over the classes, `dim=1`).
        log: bool,
    },
}

impl Op {
    /// PyTorch's name for the kind of layer, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Conv2d(_) => "Conv2d",
            Op::Linear(_) => "Linear",
            Op::BatchNorm(_) => "BatchNorm",
            Op::Activation(a) => match a {
                Activation::Relu => "ReLU",
                Activation::LeakyRelu { .. } => "LeakyReLU",
                Activation::Elu { .. } => "ELU",
                Activation::Gelu { .. } => "GELU",
                Activation::Silu => "SiLU",
                Activation::Sigmoid => "Sigmoid",
                Activation::Tanh => "Tanh",
                Activation::Softplus { .. } => "Softplus",
            },
            Op::MaxPool2d(_) => "MaxPool2d",
            Op::AvgPool2d(_) => "AvgPool2d",
            Op::GlobalAvgPool => "GlobalAvgPool",
            Op::Flatten => "Flatten",
            Op::Reshape { .. } => "Reshape",
            Op::Binary { arith } | Op::Constant { arith, .. } => match arith {
                Arith::Add => "Add",
                Arith::Sub => "Sub",
                Arith::Mul => "Mul",
                Arith::Div => "Div",
            },
            Op::Identity => "Identity",
            Op::Softmax { log: true } => "LogSoftmax",
            Op::Softmax { log: false } => "Softmax",
        }
    }

    /// How many inputs the operation takes.
    pub fn arity(&self) -> usize {
        match self {
            Op::Binary { .. } => 2,
            _ => 1,
        }
    }
}

/// One node: an operation on earlier values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// The PyTorch module path (`features.0`, `blocks.1.c1`): parameters are `<name>.weight` etc.
    pub name: String,
    /// The operation applied to the `inputs`.
    pub op: Op,
    /// Value indices: 0 is the network input, `i + 1` the output of node `i` (earlier nodes only).
    pub inputs: Vec<usize>,
}

/// How a parameter is drawn for a fresh model (PyTorch's defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// U(−1/√fan_in, 1/√fan_in): `nn.Linear` and `nn.Conv2d` weights and biases (kaiming-uniform
    /// with a = √5).
    FanInUniform {
        /// Inputs one output sees: `in_features` of a linear layer, [`Conv2d::fan_in`] of a
        /// convolution.
        fan_in: usize,
    },
    /// Every value this constant: batch norm's `weight` and `running_var` 1, its `bias` and
    /// `running_mean` 0.
    Constant(f32),
}

/// Whether a tensor is learned or running state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamRole {
    /// Weights and biases, updated by the optimizer from their gradients.
    Trainable,
    /// Batch norm's running statistics: updated by training, not by the optimizer.
    RunningStatistic,
}

/// One tensor a description needs.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// The `state_dict` key, `<node name>.<weight|bias|running_mean|running_var>`.
    pub name: String,
    /// PyTorch's shape of the tensor, e.g. `[out_channels, in_channels / groups, kh, kw]` for a
    /// convolution's weight, `[channels]` for every batch-norm tensor.
    pub shape: Vec<usize>,
    /// How a fresh model draws it.
    pub init: Init,
    /// Whether the optimizer updates it or training mode overwrites it.
    pub role: ParamRole,
}

/// A whole network. Build one with [`GraphBuilder`], or take a built-in from [`crate::Arch`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Description {
    /// The input of one point.
    pub input: Dims,
    /// The layers in evaluation order: node `i`'s output is value `i + 1`, the last node's the
    /// logits (or their softmax, which geometry skips: see [`Description::logit_nodes`]).
    pub nodes: Vec<Node>,
}

/// What is wrong with a description, naming the node.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("layer '{node}' ({kind}): {problem}")]
pub struct DescriptionError {
    /// The name of the node at fault, or `input` (the input shape) or `file` (a layer file that
    /// is not JSON).
    pub node: String,
    /// The kind of layer as PyTorch names it ([`Op::kind`], or a layer file entry's `type`), or
    /// `Input` / `JSON` for the two pseudo-nodes.
    pub kind: &'static str,
    /// What is wrong, in one line (e.g. `expects 3 input channels, gets 1×28×28`).
    pub problem: String,
}

impl Description {
    /// The shape of every value (`[0]` is the input), or the first node whose inputs do not fit;
    /// the last value must be the class scores.
    pub fn shapes(&self) -> Result<Vec<Dims>, DescriptionError> {
        let shapes = self.value_shapes()?;
        let logits = shapes[shapes.len() - 1];
        match self.nodes.last() {
            None => Err(DescriptionError { node: "input".into(), kind: "Input", problem: "no layers follow".into() }),
            Some(last) if !logits.is_flat() || logits.channels < 2 => Err(DescriptionError {
                node: last.name.clone(),
                kind: last.op.kind(),
                problem: format!("the output must be a vector of at least 2 class scores, not {logits}"),
            }),
            Some(_) => Ok(shapes),
        }
    }

    /// [`Description::shapes`] without the check on the last value (a graph under construction).
    fn value_shapes(&self) -> Result<Vec<Dims>, DescriptionError> {
        if self.input.is_empty() {
            return Err(DescriptionError { node: "input".into(), kind: "Input", problem: "has no values".into() });
        }
        let mut shapes = vec![self.input];
        for (index, node) in self.nodes.iter().enumerate() {
            let bad = |problem: String| DescriptionError { node: node.name.clone(), kind: node.op.kind(), problem };
            if node.inputs.len() != node.op.arity() {
                return Err(bad(format!("takes {} input(s), has {}", node.op.arity(), node.inputs.len())));
            }
            if let Some(&late) = node.inputs.iter().find(|&&v| v > index) {
                return Err(bad(format!("reads value {late}, which is not computed before it")));
            }
            let input = shapes[node.inputs[0]];
            let shape = output_shape(&node.op, input, node.inputs.get(1).map(|&v| shapes[v])).map_err(bad)?;
            if let (Op::Softmax { .. }, false) = (&node.op, index + 1 == self.nodes.len()) {
                return Err(bad("softmax is only recognised as the last layer".into()));
            }
            shapes.push(shape);
        }
        Ok(shapes)
    }

    /// The number of classes (length of the logits), once [`Description::shapes`] has passed.
    pub fn classes(&self) -> Result<usize, DescriptionError> {
        Ok(self.shapes()?.last().map_or(0, |d| d.channels))
    }

    /// The nodes up to the logits: a trailing softmax or log-softmax is dropped (the geometry is
    /// of log-softmax of the logits, always).
    pub fn logit_nodes(&self) -> &[Node] {
        match self.nodes.last() {
            Some(Node { op: Op::Softmax { .. }, .. }) => &self.nodes[..self.nodes.len() - 1],
            _ => &self.nodes,
        }
    }

    /// Every parameter tensor, in evaluation order (the order a fresh model draws them in).
    pub fn parameters(&self) -> Vec<ParamSpec> {
        let mut params = Vec::new();
        let mut push = |name: &str, leaf: &str, shape: Vec<usize>, init: Init, role: ParamRole| {
            params.push(ParamSpec { name: format!("{name}.{leaf}"), shape, init, role });
        };
        for node in &self.nodes {
            match &node.op {
                Op::Conv2d(c) => {
                    let init = Init::FanInUniform { fan_in: c.fan_in() };
                    let shape = vec![c.out_channels, c.in_channels / c.groups.max(1), c.kernel[0], c.kernel[1]];
                    push(&node.name, "weight", shape, init, ParamRole::Trainable);
                    if c.bias {
                        push(&node.name, "bias", vec![c.out_channels], init, ParamRole::Trainable);
                    }
                }
                Op::Linear(l) => {
                    let init = Init::FanInUniform { fan_in: l.in_features };
                    push(&node.name, "weight", vec![l.out_features, l.in_features], init, ParamRole::Trainable);
                    if l.bias {
                        push(&node.name, "bias", vec![l.out_features], init, ParamRole::Trainable);
                    }
                }
                Op::BatchNorm(b) => {
                    let c = vec![b.channels];
                    push(&node.name, "running_mean", c.clone(), Init::Constant(0.0), ParamRole::RunningStatistic);
                    push(&node.name, "running_var", c.clone(), Init::Constant(1.0), ParamRole::RunningStatistic);
                    push(&node.name, "weight", c.clone(), Init::Constant(1.0), ParamRole::Trainable);
                    push(&node.name, "bias", c, Init::Constant(0.0), ParamRole::Trainable);
                }
                _ => {}
            }
        }
        params
    }

    /// How many nodes read each value (`[0]` is the input).
    pub fn consumers(&self) -> Vec<usize> {
        let mut counts = vec![0; self.nodes.len() + 1];
        for node in &self.nodes {
            for &v in &node.inputs {
                counts[v] += 1;
            }
        }
        counts
    }

    /// The index of the node whose output is the penultimate features: the input of the last
    /// layer when that layer is linear (what feature-space OOD baselines such as Mahalanobis
    /// use), as a value index.
    pub fn feature_value(&self) -> Option<usize> {
        let nodes = self.logit_nodes();
        match nodes.last() {
            Some(Node { op: Op::Linear(_), inputs, .. }) => Some(inputs[0]),
            _ => None,
        }
    }
}

impl Op {
    /// The shape of this operation's output for inputs of shape `input` (and `second`), or
    /// why they do not fit — the check [`Description::shapes`] makes node by node.
    pub fn output_dims(&self, input: Dims, second: Option<Dims>) -> Result<Dims, String> {
        output_shape(self, input, second)
    }
}

fn output_shape(op: &Op, input: Dims, second: Option<Dims>) -> Result<Dims, String> {
    let positive = |what: &str, values: &[usize]| -> Result<(), String> {
        match values.contains(&0) {
            true => Err(format!("{what} must be positive, got {values:?}")),
            false => Ok(()),
        }
    };
    match op {
        Op::Conv2d(c) => {
            positive("kernel, stride and dilation", &[c.kernel, c.stride, c.dilation].concat())?;
            positive("channels and groups", &[c.in_channels, c.out_channels, c.groups])?;
            if c.in_channels % c.groups != 0 || c.out_channels % c.groups != 0 {
                return Err(format!(
                    "{} input and {} output channels do not split into {} groups",
                    c.in_channels, c.out_channels, c.groups
                ));
            }
            if input.channels != c.in_channels {
                return Err(format!("expects {} input channels, gets {input}", c.in_channels));
            }
            match (c.output_size(input.height, 0), c.output_size(input.width, 1)) {
                (Some(h), Some(w)) => Ok(Dims::new(c.out_channels, h, w)),
                _ => Err(format!("kernel {:?} does not fit its {input} input", c.kernel)),
            }
        }
        Op::Linear(l) => {
            positive("features", &[l.in_features, l.out_features])?;
            if !input.is_flat() {
                return Err(format!("needs a flat input (add a Flatten), gets {input}"));
            }
            if input.channels != l.in_features {
                return Err(format!("expects {} input features, gets {}", l.in_features, input.channels));
            }
            Ok(Dims::flat(l.out_features))
        }
        Op::BatchNorm(b) => {
            if input.channels != b.channels {
                return Err(format!("normalises {} channels, gets {input}", b.channels));
            }
            if !(b.eps.is_finite() && b.eps > 0.0) {
                return Err(format!("eps must be positive, got {}", b.eps));
            }
            Ok(input)
        }
        Op::Activation(_) | Op::Identity | Op::Softmax { .. } => Ok(input),
        Op::MaxPool2d(p) | Op::AvgPool2d(p) => {
            positive("kernel, stride and dilation", &[p.kernel, p.stride, p.dilation].concat())?;
            if p.padding[0].saturating_mul(2) > p.kernel[0] || p.padding[1].saturating_mul(2) > p.kernel[1] {
                return Err(format!("padding {:?} is more than half the kernel {:?}", p.padding, p.kernel));
            }
            if matches!(op, Op::AvgPool2d(_)) && p.dilation != [1, 1] {
                return Err("average pooling has no dilation".into());
            }
            match (p.output_size(input.height, 0), p.output_size(input.width, 1)) {
                (Some(h), Some(w)) if h > 0 && w > 0 => Ok(Dims::new(input.channels, h, w)),
                _ => Err(format!("window {:?} does not fit its {input} input", p.kernel)),
            }
        }
        Op::GlobalAvgPool => Ok(Dims::flat(input.channels)),
        Op::Flatten => Ok(Dims::flat(input.len())),
        Op::Reshape { dims } => match dims.len() == input.len() {
            true => Ok(*dims),
            false => Err(format!("cannot reshape {input} ({} values) to {dims}", input.len())),
        },
        Op::Binary { .. } => {
            let Some(second) = second else { return Err("needs a second input".into()) };
            let per_channel = second.is_flat() && second.channels == input.channels;
            if second != input && !per_channel {
                return Err(format!("cannot combine {input} with {second}"));
            }
            Ok(input)
        }
        Op::Constant { values, .. } => match values.len() {
            1 => Ok(input),
            n if n == input.channels => Ok(input),
            n => Err(format!("{n} constant values for {} channels", input.channels)),
        },
    }
}

/// Builds descriptions node by node; each method returns the new value's index. Nothing is
/// checked before [`GraphBuilder::shapes_so_far`] or [`GraphBuilder::finish`].
#[derive(Debug)]
pub struct GraphBuilder {
    description: Description,
}

impl GraphBuilder {
    /// An empty graph for points of shape `input` (`[channels, height, width]`, no batch axis),
    /// which is value [`GraphBuilder::INPUT`].
    pub fn new(input: Dims) -> Self {
        GraphBuilder { description: Description { input, nodes: Vec::new() } }
    }

    /// The network input's value index.
    pub const INPUT: usize = 0;

    /// Adds `op` named `name` on `inputs`.
    pub fn node(&mut self, name: impl Into<String>, op: Op, inputs: &[usize]) -> usize {
        self.description.nodes.push(Node { name: name.into(), op, inputs: inputs.to_vec() });
        self.description.nodes.len()
    }

    /// Appends `conv` (`nn.Conv2d`) named `name`, reading value `input`.
    pub fn conv(&mut self, name: &str, input: usize, conv: Conv2d) -> usize {
        self.node(name, Op::Conv2d(conv), &[input])
    }

    /// Appends `linear` (`nn.Linear`) named `name`, reading value `input` (which must be flat).
    pub fn linear(&mut self, name: &str, input: usize, linear: Linear) -> usize {
        self.node(name, Op::Linear(linear), &[input])
    }

    /// Appends `nn.BatchNorm2d(channels)` with PyTorch's defaults (eps 1e-5, momentum 0.1) named
    /// `name`, reading value `input`.
    pub fn batch_norm(&mut self, name: &str, input: usize, channels: usize) -> usize {
        self.node(name, Op::BatchNorm(BatchNorm::new(channels)), &[input])
    }

    /// Appends the element-wise `activation` named `name`, reading value `input`.
    pub fn activation(&mut self, name: &str, input: usize, activation: Activation) -> usize {
        self.node(name, Op::Activation(activation), &[input])
    }

    /// Appends `nn.MaxPool2d` with window `pool` named `name`, reading value `input`.
    pub fn max_pool(&mut self, name: &str, input: usize, pool: Pool) -> usize {
        self.node(name, Op::MaxPool2d(pool), &[input])
    }

    /// Appends `nn.AvgPool2d` with window `pool` named `name`, reading value `input`.
    pub fn avg_pool(&mut self, name: &str, input: usize, pool: Pool) -> usize {
        self.node(name, Op::AvgPool2d(pool), &[input])
    }

    /// Appends a global average pool (`nn.AdaptiveAvgPool2d(1)`), `[C, H, W]` → `[C, 1, 1]`.
    pub fn global_avg_pool(&mut self, name: &str, input: usize) -> usize {
        self.node(name, Op::GlobalAvgPool, &[input])
    }

    /// Appends `nn.Flatten()`, `[C, H, W]` → `[C·H·W, 1, 1]`, as a linear layer needs.
    pub fn flatten(&mut self, name: &str, input: usize) -> usize {
        self.node(name, Op::Flatten, &[input])
    }

    /// Appends `a ∘ b` of two values (`Arith::Add` for a residual connection); `b` is of `a`'s
    /// shape or `[C, 1, 1]` against an `a` of `[C, H, W]`.
    pub fn binary(&mut self, name: &str, arith: Arith, a: usize, b: usize) -> usize {
        self.node(name, Op::Binary { arith }, &[a, b])
    }

    /// The shapes of the values so far, checked.
    pub fn shapes_so_far(&self) -> Result<Vec<Dims>, DescriptionError> {
        self.description.value_shapes()
    }

    /// The description, checked.
    pub fn finish(self) -> Result<Description, DescriptionError> {
        self.description.shapes()?;
        Ok(self.description)
    }
}
