//! The built-in architectures, each a function from (input shape, classes) to a [`Description`].
//! Their layer names follow the PyTorch modules they mirror, so that a `state_dict` exported
//! from the same network (`safetensors.torch.save_file(model.state_dict())`) loads as it is.

use std::{fmt, str::FromStr};

use crate::description::{
    Activation, Arith, Conv2d, Description, DescriptionError, Dims, GraphBuilder, Linear, Op, Pool,
};
use crate::ModelError;

/// A built-in architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// The paper's `medium_cnn`: conv 1→32 3×3, ReLU, conv 32→64 3×3, ReLU, max-pool 2,
    /// fc →128, ReLU, fc 128→C.
    MnistCnn,
    /// Flatten, fc n→128, ReLU, fc 128→C: cheap enough for property tests on any dataset.
    Mlp,
    /// VGG11 with batch norm for 32×32 inputs (the `VGG('VGG11')` layout of kuangliu's
    /// pytorch-cifar: `features.{0,4,8,11,15,18,22,25}` convs, BN after each, `classifier`).
    CifarVgg11,
    /// LeNet-5 as an `nn.Sequential`: conv 5×5 (pad 2), tanh, avg-pool 2, conv 5×5, tanh,
    /// avg-pool 2, flatten, fc 400→120, tanh, fc 120→84, tanh, fc 84→C.
    Lenet5,
    /// Three [conv 3×3 pad 1, batch norm, ReLU, max-pool 2] blocks (16, 32, 64 channels), global
    /// average pool, fc 64→C, as an `nn.Sequential`.
    VggBnSmall,
    /// Stem conv 3×3 + BN + ReLU, three residual blocks (16, 32, 64 channels; the last two with
    /// stride 2 and a 1×1 conv + BN shortcut), global average pool, fc: the fixtures'
    /// `ResNet(1, 10, (16, 32, 64))`.
    ResnetMini,
    /// ResNet-20 for 32×32 images (He et al. 2016, §4.2): conv 3×3, three stages of three basic
    /// blocks (16, 32, 64 channels), 1×1 conv + BN shortcuts where the shape changes; torchvision
    /// names (`layer1.0.conv1`, `downsample`, `fc`).
    Resnet20,
    /// torchvision's `resnet18` (7×7 stem, max-pool, four stages of two basic blocks, 64–512
    /// channels) with its parameter names: loads torchvision `state_dict`s.
    Resnet18,
}

impl Arch {
    /// Every built-in architecture, in the order error messages list them.
    pub const ALL: [Arch; 8] = [
        Arch::MnistCnn,
        Arch::Mlp,
        Arch::CifarVgg11,
        Arch::Lenet5,
        Arch::VggBnSmall,
        Arch::ResnetMini,
        Arch::Resnet20,
        Arch::Resnet18,
    ];

    /// The name on the command line and in a checkpoint's `leafwalk.arch` (e.g. `mnist-cnn`);
    /// `str::parse` reads it back.
    pub fn name(self) -> &'static str {
        match self {
            Arch::MnistCnn => "mnist-cnn",
            Arch::Mlp => "mlp",
            Arch::CifarVgg11 => "cifar-vgg11",
            Arch::Lenet5 => "lenet5",
            Arch::VggBnSmall => "vgg-bn-small",
            Arch::ResnetMini => "resnet-mini",
            Arch::Resnet20 => "resnet20",
            Arch::Resnet18 => "resnet18",
        }
    }

    /// The dataset a plain `state_dict` of this architecture is assumed to be trained on when
    /// none is named; `None` for ImageNet-sized resnet18, which has no dataset here.
    pub fn default_dataset(self) -> Option<&'static str> {
        match self {
            Arch::MnistCnn | Arch::Mlp | Arch::Lenet5 | Arch::ResnetMini => Some("mnist"),
            Arch::CifarVgg11 | Arch::VggBnSmall | Arch::Resnet20 => Some("cifar10"),
            Arch::Resnet18 => None,
        }
    }

    /// Input shape and classes without a dataset (ImageNet's for resnet18).
    pub fn default_input_and_classes(self) -> (Dims, usize) {
        match self {
            Arch::Resnet18 => (Dims::new(3, 224, 224), 1000),
            Arch::CifarVgg11 | Arch::VggBnSmall | Arch::Resnet20 => (Dims::new(3, 32, 32), 10),
            _ => (Dims::new(1, 28, 28), 10),
        }
    }

    /// The network for `input` images and `classes` classes.
    pub fn description(self, input: Dims, classes: usize) -> Result<Description, DescriptionError> {
        let mut g = GraphBuilder::new(input);
        let x = GraphBuilder::INPUT;
        match self {
            Arch::MnistCnn => {
                let x = g.conv("conv1", x, Conv2d::new(input.channels, 32, 3));
                let x = g.activation("relu1", x, Activation::Relu);
                let x = g.conv("conv2", x, Conv2d::new(32, 64, 3));
                let x = g.activation("relu2", x, Activation::Relu);
                let x = g.max_pool("pool", x, Pool::new(2));
                let x = g.flatten("flatten", x);
                let features = flat_len(&g, x)?;
                let x = g.linear("fc1", x, Linear::new(features, 128));
                let x = g.activation("relu3", x, Activation::Relu);
                g.linear("fc2", x, Linear::new(128, classes))
            }
            Arch::Mlp => {
                let x = g.flatten("flatten", x);
                let x = g.linear("fc1", x, Linear::new(input.len(), 128));
                let x = g.activation("relu", x, Activation::Relu);
                g.linear("fc2", x, Linear::new(128, classes))
            }
            Arch::CifarVgg11 => {
                // nn.Sequential numbering: conv, bn, relu take three slots, a pool one.
                let (mut x, mut channels, mut index) = (x, input.channels, 0);
                for layer in [Some(64), None, Some(128), None, Some(256), Some(256), None].into_iter().chain([
                    Some(512),
                    Some(512),
                    None,
                    Some(512),
                    Some(512),
                    None,
                ]) {
                    match layer {
                        Some(out) => {
                            x = conv_bn_relu(&mut g, "features", index, x, Conv2d::new(channels, out, 3).padding(1));
                            channels = out;
                            index += 3;
                        }
                        None => {
                            x = g.max_pool(&format!("features.{index}"), x, Pool::new(2));
                            index += 1;
                        }
                    }
                }
                let x = g.flatten("flatten", x);
                let features = flat_len(&g, x)?;
                g.linear("classifier", x, Linear::new(features, classes))
            }
            Arch::Lenet5 => {
                let x = g.conv("0", x, Conv2d::new(input.channels, 6, 5).padding(2));
                let x = g.activation("1", x, Activation::Tanh);
                let x = g.avg_pool("2", x, Pool::new(2));
                let x = g.conv("3", x, Conv2d::new(6, 16, 5));
                let x = g.activation("4", x, Activation::Tanh);
                let x = g.avg_pool("5", x, Pool::new(2));
                let x = g.flatten("6", x);
                let features = flat_len(&g, x)?;
                let x = g.linear("7", x, Linear::new(features, 120));
                let x = g.activation("8", x, Activation::Tanh);
                let x = g.linear("9", x, Linear::new(120, 84));
                let x = g.activation("10", x, Activation::Tanh);
                g.linear("11", x, Linear::new(84, classes))
            }
            Arch::VggBnSmall => {
                let (mut x, mut channels) = (x, input.channels);
                for (block, out) in [16, 32, 64].into_iter().enumerate() {
                    x = conv_bn_relu(&mut g, "", 4 * block, x, Conv2d::new(channels, out, 3).padding(1));
                    x = g.max_pool(&(4 * block + 3).to_string(), x, Pool::new(2));
                    channels = out;
                }
                let x = g.global_avg_pool("12", x);
                let x = g.flatten("13", x);
                g.linear("14", x, Linear::new(channels, classes))
            }
            Arch::ResnetMini => {
                let stem = Conv2d::new(input.channels, 16, 3).padding(1).no_bias();
                let x = conv_bn_relu(&mut g, "stem", 0, x, stem);
                let (mut x, mut channels) = (x, 16);
                for (block, width) in [16, 32, 64].into_iter().enumerate() {
                    let stride = if block == 0 { 1 } else { 2 };
                    let names = BlockNames::fixture(block);
                    x = basic_block(&mut g, &names, x, channels, width, stride);
                    channels = width;
                }
                let x = g.global_avg_pool("pool", x);
                let x = g.flatten("flatten", x);
                g.linear("head", x, Linear::new(channels, classes))
            }
            Arch::Resnet20 => {
                let stem = Conv2d::new(input.channels, 16, 3).padding(1).no_bias();
                let x = g.conv("conv1", x, stem);
                let x = g.batch_norm("bn1", x, 16);
                let x = g.activation("relu", x, Activation::Relu);
                resnet_stages(&mut g, x, 16, &[(16, 3), (32, 3), (64, 3)], classes)
            }
            Arch::Resnet18 => {
                let stem = Conv2d::new(input.channels, 64, 7).stride(2).padding(3).no_bias();
                let x = g.conv("conv1", x, stem);
                let x = g.batch_norm("bn1", x, 64);
                let x = g.activation("relu", x, Activation::Relu);
                let x = g.max_pool("maxpool", x, Pool::new(3).stride(2).padding(1));
                resnet_stages(&mut g, x, 64, &[(64, 2), (128, 2), (256, 2), (512, 2)], classes)
            }
        };
        g.finish()
    }
}

/// The length of a flat value, checking the graph so far (a too-small input fails here with
/// the layer that no longer fits).
fn flat_len(g: &GraphBuilder, value: usize) -> Result<usize, DescriptionError> {
    Ok(g.shapes_so_far()?[value].channels)
}

/// conv → batch norm → ReLU as three consecutive `nn.Sequential` slots `prefix.index`,
/// `prefix.index+1`, `prefix.index+2` (an empty prefix numbers from the top level).
fn conv_bn_relu(g: &mut GraphBuilder, prefix: &str, index: usize, x: usize, conv: Conv2d) -> usize {
    let name = |i: usize| if prefix.is_empty() { i.to_string() } else { format!("{prefix}.{i}") };
    let x = g.conv(&name(index), x, conv);
    let x = g.batch_norm(&name(index + 1), x, conv.out_channels);
    g.activation(&name(index + 2), x, Activation::Relu)
}

/// The module names inside one residual block.
struct BlockNames {
    conv1: String,
    bn1: String,
    conv2: String,
    bn2: String,
    shortcut_conv: String,
    shortcut_bn: String,
    prefix: String,
}

impl BlockNames {
    /// The fixtures' `Block`: `c1`, `b1`, `c2`, `b2`, `short.0`, `short.1`.
    fn fixture(block: usize) -> Self {
        let p = format!("blocks.{block}");
        BlockNames {
            conv1: format!("{p}.c1"),
            bn1: format!("{p}.b1"),
            conv2: format!("{p}.c2"),
            bn2: format!("{p}.b2"),
            shortcut_conv: format!("{p}.short.0"),
            shortcut_bn: format!("{p}.short.1"),
            prefix: p,
        }
    }

    /// torchvision's `BasicBlock`: `conv1`, `bn1`, `conv2`, `bn2`, `downsample.0`, `downsample.1`.
    fn torchvision(stage: usize, block: usize) -> Self {
        let p = format!("layer{stage}.{block}");
        BlockNames {
            conv1: format!("{p}.conv1"),
            bn1: format!("{p}.bn1"),
            conv2: format!("{p}.conv2"),
            bn2: format!("{p}.bn2"),
            shortcut_conv: format!("{p}.downsample.0"),
            shortcut_bn: format!("{p}.downsample.1"),
            prefix: p,
        }
    }
}

/// ReLU(BN(conv(ReLU(BN(conv(x))))) + shortcut(x)), the shortcut a 1×1 conv + BN where the
/// stride or width changes, the identity otherwise.
fn basic_block(g: &mut GraphBuilder, names: &BlockNames, x: usize, cin: usize, cout: usize, stride: usize) -> usize {
    let y = g.conv(&names.conv1, x, Conv2d::new(cin, cout, 3).stride(stride).padding(1).no_bias());
    let y = g.batch_norm(&names.bn1, y, cout);
    let y = g.activation(&format!("{}.relu1", names.prefix), y, Activation::Relu);
    let y = g.conv(&names.conv2, y, Conv2d::new(cout, cout, 3).padding(1).no_bias());
    let y = g.batch_norm(&names.bn2, y, cout);
    let shortcut = if stride != 1 || cin != cout {
        let s = g.conv(&names.shortcut_conv, x, Conv2d::new(cin, cout, 1).stride(stride).no_bias());
        g.batch_norm(&names.shortcut_bn, s, cout)
    } else {
        x
    };
    let sum = g.binary(&format!("{}.add", names.prefix), Arith::Add, y, shortcut);
    g.activation(&format!("{}.relu2", names.prefix), sum, Activation::Relu)
}

/// torchvision-named stages of basic blocks (`(width, blocks)`, stride 2 from the second stage
/// on), global average pool and `fc`.
fn resnet_stages(g: &mut GraphBuilder, x: usize, channels: usize, stages: &[(usize, usize)], classes: usize) -> usize {
    let (mut x, mut channels) = (x, channels);
    for (stage, &(width, blocks)) in stages.iter().enumerate() {
        for block in 0..blocks {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            x = basic_block(g, &BlockNames::torchvision(stage + 1, block), x, channels, width, stride);
            channels = width;
        }
    }
    let x = g.global_avg_pool("avgpool", x);
    let x = g.flatten("flatten", x);
    g.linear("fc", x, Linear::new(channels, classes))
}

/// The two kinds of spatial pooling a [`Variant`] can switch between.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    /// Max pooling (`nn.MaxPool2d`).
    Max,
    /// Average pooling (`nn.AvgPool2d`, padded zeros counted in the divisor).
    Avg,
}

/// A built-in with every nonlinearity and/or every pooling window swapped, weights named as the
/// built-in's (neither has parameters): the activation and pooling axes of a study, asked of any
/// architecture instead of written once per network.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Variant {
    /// The nonlinearity every activation node becomes; `None` keeps the built-in's.
    pub activation: Option<Activation>,
    /// The kind every pooling window becomes, with its kernel, stride and padding; `None` keeps
    /// the built-in's.
    pub pooling: Option<PoolKind>,
}

impl Variant {
    /// True when nothing is swapped (the built-in itself).
    pub fn is_plain(&self) -> bool {
        self.activation.is_none() && self.pooling.is_none()
    }

    /// `description` with the swaps made. A dilated max-pool has no average-pool twin, so it is
    /// refused rather than silently changed in size.
    pub fn apply(&self, mut description: Description) -> Result<Description, DescriptionError> {
        for node in &mut description.nodes {
            let bad = |problem: &str| DescriptionError {
                node: node.name.clone(),
                kind: node.op.kind(),
                problem: problem.into(),
            };
            node.op = match (node.op.clone(), self.activation, self.pooling) {
                (Op::Activation(_), Some(activation), _) => Op::Activation(activation),
                (Op::MaxPool2d(pool), _, Some(PoolKind::Avg)) => {
                    if pool.dilation != [1, 1] {
                        return Err(bad("a dilated max-pool has no average-pool counterpart"));
                    }
                    // PyTorch's AvgPool2d default, so the variant is the module a user would write.
                    Op::AvgPool2d(Pool { count_include_pad: true, ..pool })
                }
                (Op::AvgPool2d(pool), _, Some(PoolKind::Max)) => Op::MaxPool2d(Pool { dilation: [1, 1], ..pool }),
                (op, _, _) => op,
            };
        }
        Ok(description)
    }

    /// The architecture of `arch` with these swaps, for `input` images and `classes` classes: the
    /// built-in itself when nothing is swapped, else a description carried in the checkpoint.
    pub fn architecture(&self, arch: Arch, input: Dims, classes: usize) -> Result<Architecture, DescriptionError> {
        if self.is_plain() {
            return Ok(Architecture::Builtin(arch));
        }
        Ok(Architecture::Custom(Box::new(self.apply(arch.description(input, classes)?)?)))
    }
}

impl fmt::Display for Variant {
    /// `none`, or e.g. `activation=GELU pooling=avg` (recorded in checkpoints and checked on resume).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(activation) = self.activation {
            let kind = Op::Activation(activation).kind();
            parts.push(match activation {
                Activation::LeakyRelu { negative_slope } => format!("activation={kind}({negative_slope})"),
                Activation::Elu { alpha } => format!("activation={kind}({alpha})"),
                Activation::Gelu { form } => format!("activation={kind}({form:?})"),
                Activation::Softplus { beta, threshold } => format!("activation={kind}({beta},{threshold})"),
                _ => format!("activation={kind}"),
            });
        }
        if let Some(pooling) = self.pooling {
            parts.push(format!("pooling={}", if pooling == PoolKind::Max { "max" } else { "avg" }));
        }
        if parts.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&parts.join(" "))
        }
    }
}

/// What a model is: a built-in architecture (rebuilt for the model's input and classes) or a
/// description of its own, carried whole in its checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub enum Architecture {
    /// A built-in, rebuilt from its name for the checkpoint's input shape and class count.
    Builtin(Arch),
    /// A description of its own (a layer file, an ONNX export, a [`Variant`]), stored as JSON
    /// in the checkpoint's `leafwalk.layers`; it fixes the input shape and class count.
    Custom(Box<Description>),
}

impl Architecture {
    /// The built-in's name, or `custom`.
    pub fn name(&self) -> &str {
        match self {
            Architecture::Builtin(arch) => arch.name(),
            Architecture::Custom(_) => "custom",
        }
    }

    /// The network for `input` images and `classes` classes (a custom description must already
    /// be for them).
    pub fn description(&self, input: Dims, classes: usize) -> Result<Description, DescriptionError> {
        match self {
            Architecture::Builtin(arch) => arch.description(input, classes),
            Architecture::Custom(description) => {
                let found = description.classes()?;
                let mismatch = |problem: String| DescriptionError { node: "input".into(), kind: "Input", problem };
                if description.input != input {
                    return Err(mismatch(format!("the description takes {} inputs, not {input}", description.input)));
                }
                if found != classes {
                    return Err(mismatch(format!("the description has {found} classes, not {classes}")));
                }
                Ok((**description).clone())
            }
        }
    }
}

impl From<Arch> for Architecture {
    fn from(arch: Arch) -> Self {
        Architecture::Builtin(arch)
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Arch::ALL.into_iter().find(|a| a.name() == s).ok_or_else(|| ModelError::UnknownArch(s.to_string()))
    }
}
