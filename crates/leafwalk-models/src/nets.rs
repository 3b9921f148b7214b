//! The three networks. Each maps *normalised* inputs to penultimate features (`features_t`) and
//! those to logits by its last linear layer (`head`); normalisation and log-softmax are the
//! [`crate::Classifier`]'s job.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{batch_norm, BatchNorm, BatchNormConfig, Conv2d, Linear, VarBuilder};

use crate::layers::{conv3x3, linear, max_pool_2x2};

pub(crate) struct MnistCnn {
    conv1: Conv2d,
    conv2: Conv2d,
    fc1: Linear,
    fc2: Linear,
}

impl MnistCnn {
    pub(crate) fn new(classes: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv1: conv3x3(1, 32, 0, vb.pp("conv1"))?,
            conv2: conv3x3(32, 64, 0, vb.pp("conv2"))?,
            fc1: linear(9216, 128, vb.pp("fc1"))?,
            fc2: linear(128, classes, vb.pp("fc2"))?,
        })
    }
}

impl MnistCnn {
    pub(crate) fn features(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.conv1.forward(x)?.relu()?;
        let x = self.conv2.forward(&x)?.relu()?;
        let x = max_pool_2x2(&x)?.flatten_from(1)?;
        self.fc1.forward(&x)?.relu()
    }

    pub(crate) fn head(&self) -> &Linear {
        &self.fc2
    }
}

pub(crate) struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    pub(crate) const HIDDEN: usize = 128;

    pub(crate) fn new(inputs: usize, classes: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { fc1: linear(inputs, Self::HIDDEN, vb.pp("fc1"))?, fc2: linear(Self::HIDDEN, classes, vb.pp("fc2"))? })
    }
}

impl Mlp {
    pub(crate) fn features(&self, x: &Tensor) -> Result<Tensor> {
        self.fc1.forward(&x.flatten_from(1)?)?.relu()
    }

    pub(crate) fn head(&self) -> &Linear {
        &self.fc2
    }
}

/// VGG11 configuration: output channels of each conv, `None` = 2×2 max-pool.
const VGG11: [Option<usize>; 13] = [
    Some(64),
    None,
    Some(128),
    None,
    Some(256),
    Some(256),
    None,
    Some(512),
    Some(512),
    None,
    Some(512),
    Some(512),
    None,
];

enum VggLayer {
    ConvBnRelu(Conv2d, BatchNorm),
    MaxPool,
}

pub(crate) struct CifarVgg11 {
    features: Vec<VggLayer>,
    classifier: Linear,
}

impl CifarVgg11 {
    pub(crate) fn new(in_channels: usize, classes: usize, vb: VarBuilder) -> Result<Self> {
        // Indices follow PyTorch's nn.Sequential numbering (conv, bn, relu share three slots,
        // a pool one), so `features.<i>.*` names match an exported state_dict.
        let features_vb = vb.pp("features");
        let (mut index, mut channels, mut features) = (0, in_channels, Vec::new());
        for layer in VGG11 {
            match layer {
                Some(out) => {
                    let conv = conv3x3(channels, out, 1, features_vb.pp(index))?;
                    let bn = batch_norm(out, BatchNormConfig::default(), features_vb.pp(index + 1))?;
                    features.push(VggLayer::ConvBnRelu(conv, bn));
                    channels = out;
                    index += 3;
                }
                None => {
                    features.push(VggLayer::MaxPool);
                    index += 1;
                }
            }
        }
        Ok(Self { features, classifier: linear(channels, classes, vb.pp("classifier"))? })
    }
}

impl CifarVgg11 {
    pub(crate) fn features_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = x.clone();
        for layer in &self.features {
            x = match layer {
                VggLayer::ConvBnRelu(conv, bn) => bn.forward_t(&conv.forward(&x)?, train)?.relu()?,
                VggLayer::MaxPool => max_pool_2x2(&x)?,
            };
        }
        x.flatten_from(1)
    }

    pub(crate) fn head(&self) -> &Linear {
        &self.classifier
    }
}
