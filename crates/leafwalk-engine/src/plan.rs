//! A description compiled against its weights: the steps the CPU passes run.
//!
//! Compiling is cheap enough to do on every call (the weights may have changed since the last
//! one): linear layers borrow their weights in place, convolutions are repacked into the
//! channel-last layout of the passes (`[ky][kx][in][out]`, small next to the arithmetic they
//! feed), and in evaluation mode a batch norm whose input is a convolution's or linear
//! layer's only output is folded into it. A trailing softmax is dropped: the passes always
//! end in log-softmax of the logits.

use std::borrow::Cow;
use std::sync::OnceLock;

use leafwalk_models::description::{Activation, Arith, BatchNorm, Conv2d, Description, Dims, Op, Pool};

use crate::forward::avg_window;
use crate::kernels::{bucket_slots, tap_sources, ConvShape, TapReaders, CHANNEL_PAD};
use crate::{EngineError, Result};

/// Evaluation (batch norm from running statistics, folded where it can be) or training (batch
/// statistics, nothing folded, parameter gradients wanted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Eval,
    Train,
}

/// A convolution ready to run.
pub(crate) struct ConvStep {
    pub(crate) conv: Conv2d,
    /// One group's geometry.
    pub(crate) shape: ConvShape,
    /// Per group, `[ky][kx][in of group][out of group]`: im2col rows times this are the outputs.
    pub(crate) forward: Vec<f32>,
    pub(crate) bias: Option<Vec<f32>>,
    /// The input position each (output position, tap) reads ([`tap_sources`]).
    pub(crate) sources: Vec<u32>,
    /// The same, inverted; built on first use (only col2im reads it, and a walk's lone point
    /// compiles its plan every step).
    readers: OnceLock<TapReaders>,
    /// Names of the weight and bias tensors, for training.
    pub(crate) weight_name: String,
    pub(crate) bias_name: Option<String>,
}

impl ConvStep {
    pub(crate) fn readers(&self) -> &TapReaders {
        self.readers.get_or_init(|| TapReaders::new(&self.shape, &self.sources))
    }

    pub(crate) fn group_out(&self) -> usize {
        self.conv.out_channels / self.conv.groups
    }

    /// The kernel as the sparse reverse pass reads it: `[out][tap][in]`, the input channels of
    /// the output's group padded with zeros to a multiple of [`CHANNEL_PAD`].
    pub(crate) fn reverse_weights(&self) -> (Vec<f32>, usize) {
        let (cin, taps, cout_g) = (self.shape.group_in, self.shape.taps(), self.group_out());
        let padded = cin.div_ceil(CHANNEL_PAD) * CHANNEL_PAD;
        let mut weights = vec![0f32; self.conv.out_channels * taps * padded];
        for o in 0..self.conv.out_channels {
            let (group, og) = (o / cout_g, o % cout_g);
            let forward = &self.forward[group * self.shape.patch() * cout_g..];
            for tap in 0..taps {
                for i in 0..cin {
                    weights[(o * taps + tap) * padded + i] = forward[(tap * cin + i) * cout_g + og];
                }
            }
        }
        (weights, padded)
    }

    /// A gradient by output row, `[out][ky][kx][in]` (one group), in PyTorch's
    /// `[out][in][ky][kx]`.
    pub(crate) fn unit_rows_to_pytorch_layout(&self, gradient: &[f32]) -> Vec<f32> {
        let (cin, taps) = (self.shape.group_in, self.shape.taps());
        let mut out = vec![0f32; gradient.len()];
        for o in 0..self.conv.out_channels {
            for tap in 0..taps {
                for i in 0..cin {
                    out[(o * cin + i) * taps + tap] = gradient[(o * taps + tap) * cin + i];
                }
            }
        }
        out
    }

    /// A gradient in the forward layout `[group][ky][kx][in][out]` in PyTorch's
    /// `[out][in][ky][kx]`.
    pub(crate) fn to_pytorch_layout(&self, gradient: &[f32]) -> Vec<f32> {
        let (cin, taps, cout_g) = (self.shape.group_in, self.shape.taps(), self.group_out());
        let mut out = vec![0f32; gradient.len()];
        for o in 0..self.conv.out_channels {
            let (group, og) = (o / cout_g, o % cout_g);
            for i in 0..cin {
                for tap in 0..taps {
                    out[(o * cin + i) * taps + tap] =
                        gradient[group * cin * taps * cout_g + (tap * cin + i) * cout_g + og];
                }
            }
        }
        out
    }
}

/// A linear layer; its weights stay in PyTorch's `[out][in]` layout.
pub(crate) struct LinearStep<'w> {
    pub(crate) inputs: usize,
    pub(crate) outputs: usize,
    pub(crate) weight: Cow<'w, [f32]>,
    pub(crate) bias: Option<Cow<'w, [f32]>>,
    pub(crate) weight_name: String,
    pub(crate) bias_name: Option<String>,
}

/// Batch norm in training mode: its affine parameters and running statistics by name.
pub(crate) struct BatchNormStep<'w> {
    pub(crate) norm: BatchNorm,
    pub(crate) weight: &'w [f32],
    pub(crate) bias: &'w [f32],
    pub(crate) running_mean: &'w [f32],
    pub(crate) running_var: &'w [f32],
    pub(crate) name: String,
}

pub(crate) enum StepOp<'w> {
    Conv(Box<ConvStep>),
    Linear(LinearStep<'w>),
    /// `x·scale[c] + shift[c]` (evaluation-mode batch norm that could not be folded).
    Affine {
        scale: Vec<f32>,
        shift: Vec<f32>,
    },
    BatchNorm(BatchNormStep<'w>),
    Activation(Activation),
    MaxPool(Pool),
    AvgPool(AvgPoolStep),
    GlobalAvgPool,
    /// Channel-last map to channel-first order: PyTorch's flatten (and any reshape) runs in
    /// channel-first order.
    Flatten,
    Reshape,
    Binary(Arith),
    Constant {
        arith: Arith,
        values: Vec<f32>,
        constant_first: bool,
    },
    Identity,
}

/// An average pool and, for each input position, the outputs whose windows hold it with their
/// shares, so that the reverse sums into each input once (found once here, not per point).
pub(crate) struct AvgPoolStep {
    pub(crate) pool: Pool,
    /// Input position q's readers are `readers[starts[q]..starts[q + 1]]`: (output position,
    /// share).
    pub(crate) starts: Vec<u32>,
    pub(crate) readers: Vec<(u32, f32)>,
}

impl AvgPoolStep {
    fn new(pool: Pool, input: Dims, output: Dims) -> Self {
        let mut entries: Vec<(u32, u32, f32)> = Vec::with_capacity(output.plane() * pool.kernel[0] * pool.kernel[1]);
        for o in 0..output.plane() {
            let at = (o / output.width, o % output.width);
            let share = 1.0 / pool.divisor(at, (input.height, input.width)) as f32;
            entries.extend(avg_window(&pool, at, input).map(|q| (q as u32, o as u32, share)));
        }
        // A stable sort of entries made output by output: each input's readers in output order.
        let (starts, slots) = bucket_slots(input.plane(), entries.iter().map(|&(q, _, _)| q as usize));
        let mut readers = vec![(0u32, 0f32); slots.len()];
        for (&(_, o, share), &at) in entries.iter().zip(&slots) {
            readers[at as usize] = (o, share);
        }
        AvgPoolStep { pool, starts, readers }
    }
}

pub(crate) struct Step<'w> {
    pub(crate) op: StepOp<'w>,
    pub(crate) inputs: Vec<usize>,
    pub(crate) output: usize,
}

/// A compiled description.
pub(crate) struct Plan<'w> {
    /// Shapes of the plan's values (channel-first semantics; stored channel-last).
    pub(crate) values: Vec<Dims>,
    pub(crate) steps: Vec<Step<'w>>,
    /// The logits' value.
    pub(crate) output: usize,
    pub(crate) classes: usize,
}

impl<'w> Plan<'w> {
    /// Compiles `description` with the weights `weight(name)` returns (contiguous f32, PyTorch
    /// layouts).
    pub(crate) fn compile(
        description: &Description,
        weight: &dyn Fn(&str) -> Option<&'w [f32]>,
        mode: Mode,
    ) -> Result<Self> {
        let shapes = description.shapes().map_err(|e| EngineError::Description(e.to_string()))?;
        let nodes = description.logit_nodes();
        let consumers = description.consumers();
        let fetch = |name: &str, len: usize| -> Result<&'w [f32]> {
            let values = weight(name).ok_or_else(|| EngineError::Weights(format!("no tensor '{name}'")))?;
            if values.len() != len {
                return Err(EngineError::Weights(format!("'{name}' has {} values, expected {len}", values.len())));
            }
            Ok(values)
        };
        // `alias[v]`: the plan value holding description value v (a folded batch norm's output
        // is its convolution's).
        let mut alias: Vec<usize> = (0..=nodes.len()).collect();
        let mut steps: Vec<Step<'w>> = Vec::with_capacity(nodes.len());
        for (index, node) in nodes.iter().enumerate() {
            let input = shapes[node.inputs[0]];
            let inputs: Vec<usize> = node.inputs.iter().map(|&v| alias[v]).collect();
            let output = index + 1;
            let op = match &node.op {
                Op::Conv2d(conv) => StepOp::Conv(Box::new(conv_step(&node.name, conv, input, shapes[output], &fetch)?)),
                Op::Linear(linear) => StepOp::Linear(LinearStep {
                    inputs: linear.in_features,
                    outputs: linear.out_features,
                    weight: Cow::Borrowed(fetch(
                        &format!("{}.weight", node.name),
                        linear.in_features * linear.out_features,
                    )?),
                    bias: match linear.bias {
                        true => Some(Cow::Borrowed(fetch(&format!("{}.bias", node.name), linear.out_features)?)),
                        false => None,
                    },
                    weight_name: format!("{}.weight", node.name),
                    bias_name: linear.bias.then(|| format!("{}.bias", node.name)),
                }),
                Op::BatchNorm(norm) => {
                    let get = |leaf: &str| fetch(&format!("{}.{leaf}", node.name), norm.channels);
                    let step = BatchNormStep {
                        norm: *norm,
                        weight: get("weight")?,
                        bias: get("bias")?,
                        running_mean: get("running_mean")?,
                        running_var: get("running_var")?,
                        name: node.name.clone(),
                    };
                    match mode {
                        Mode::Train => StepOp::BatchNorm(step),
                        Mode::Eval => {
                            let (scale, shift) = step.eval_affine();
                            let sole_reader = consumers[node.inputs[0]] == 1;
                            let producer = steps.iter_mut().rev().find(|s| s.output == inputs[0]);
                            if let (true, Some(p)) = (sole_reader, producer) {
                                if fold(&mut p.op, &scale, &shift) {
                                    alias[output] = inputs[0];
                                    continue;
                                }
                            }
                            StepOp::Affine { scale, shift }
                        }
                    }
                }
                Op::Activation(a) => StepOp::Activation(*a),
                Op::MaxPool2d(p) => StepOp::MaxPool(*p),
                Op::AvgPool2d(p) => StepOp::AvgPool(AvgPoolStep::new(*p, input, shapes[output])),
                Op::GlobalAvgPool => StepOp::GlobalAvgPool,
                Op::Flatten if input.is_flat() => StepOp::Identity,
                Op::Flatten => StepOp::Flatten,
                Op::Reshape { .. } => StepOp::Reshape,
                Op::Binary { arith } => StepOp::Binary(*arith),
                Op::Constant { arith, values, constant_first } => {
                    StepOp::Constant { arith: *arith, values: values.clone(), constant_first: *constant_first }
                }
                Op::Identity | Op::Softmax { .. } => StepOp::Identity,
            };
            steps.push(Step { op, inputs, output });
        }
        let output = alias[nodes.len()];
        Ok(Plan { values: shapes, steps, output, classes: shapes_classes(description)? })
    }

    pub(crate) fn input(&self) -> Dims {
        self.values[0]
    }

    /// How many steps read each value, and whether the logits are read by something.
    pub(crate) fn readers(&self) -> Vec<usize> {
        let mut counts = vec![0; self.values.len()];
        for step in &self.steps {
            for &v in &step.inputs {
                counts[v] += 1;
            }
        }
        counts
    }
}

fn shapes_classes(description: &Description) -> Result<usize> {
    description.classes().map_err(|e| EngineError::Description(e.to_string()))
}

impl BatchNormStep<'_> {
    /// Evaluation mode as `x·scale + shift`, computed as PyTorch does: scale = γ/√(var + ε),
    /// shift = β − mean·scale.
    pub(crate) fn eval_affine(&self) -> (Vec<f32>, Vec<f32>) {
        let scale: Vec<f32> =
            self.weight.iter().zip(self.running_var).map(|(g, v)| g / (v + self.norm.eps as f32).sqrt()).collect();
        let shift = self.bias.iter().zip(self.running_mean).zip(&scale).map(|((b, m), s)| b - m * s).collect();
        (scale, shift)
    }
}

/// Folds `x·scale + shift` into the convolution or linear layer `op` that computes x; false
/// when `op` is neither.
fn fold(op: &mut StepOp, scale: &[f32], shift: &[f32]) -> bool {
    match op {
        StepOp::Conv(conv) => {
            let cout_g = conv.group_out();
            for (index, w) in conv.forward.iter_mut().enumerate() {
                let group = index / (conv.shape.patch() * cout_g);
                *w *= scale[group * cout_g + index % cout_g];
            }
            conv.bias = Some(folded_bias(conv.bias.as_deref(), scale, shift));
            true
        }
        StepOp::Linear(linear) => {
            let weight: Vec<f32> = linear
                .weight
                .chunks(linear.inputs)
                .zip(scale)
                .flat_map(|(row, s)| row.iter().map(move |w| w * s))
                .collect();
            linear.bias = Some(Cow::Owned(folded_bias(linear.bias.as_deref(), scale, shift)));
            linear.weight = Cow::Owned(weight);
            true
        }
        _ => false,
    }
}

fn folded_bias(bias: Option<&[f32]>, scale: &[f32], shift: &[f32]) -> Vec<f32> {
    (0..scale.len()).map(|c| bias.map_or(0.0, |b| b[c]) * scale[c] + shift[c]).collect()
}

fn conv_step<'w>(
    name: &str,
    conv: &Conv2d,
    input: Dims,
    output: Dims,
    fetch: &dyn Fn(&str, usize) -> Result<&'w [f32]>,
) -> Result<ConvStep> {
    let cin = conv.in_channels / conv.groups;
    let cout_g = conv.out_channels / conv.groups;
    let taps = conv.kernel[0] * conv.kernel[1];
    let weight_name = format!("{name}.weight");
    let weight = fetch(&weight_name, conv.out_channels * cin * taps)?;
    // [out][in][tap] → per group [tap][in][out of group].
    let mut forward = vec![0f32; weight.len()];
    for o in 0..conv.out_channels {
        let (group, og) = (o / cout_g, o % cout_g);
        for i in 0..cin {
            for tap in 0..taps {
                forward[group * taps * cin * cout_g + (tap * cin + i) * cout_g + og] =
                    weight[(o * cin + i) * taps + tap];
            }
        }
    }
    let bias_name = conv.bias.then(|| format!("{name}.bias"));
    let bias = bias_name.as_deref().map(|b| fetch(b, conv.out_channels).map(<[f32]>::to_vec)).transpose()?;
    let shape = ConvShape {
        kernel: conv.kernel,
        stride: conv.stride,
        padding: conv.padding,
        dilation: conv.dilation,
        input: [input.height, input.width, input.channels],
        output: [output.height, output.width],
        group_in: cin,
    };
    let (sources, readers) = (tap_sources(&shape), OnceLock::new());
    Ok(ConvStep { conv: *conv, shape, forward, bias, sources, readers, weight_name, bias_name })
}
