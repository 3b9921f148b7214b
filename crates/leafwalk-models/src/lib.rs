//! The classifiers leafwalk studies and the files they live in.
//!
//! This crate owns four things: model *descriptions* ([`Description`]: a graph of layers with
//! PyTorch's parameter names and layouts, the one form every other crate reads a network in),
//! the built-in architectures as descriptions ([`Arch`]: the paper's `mnist-cnn`, `mlp`,
//! `cifar-vgg11`, the PyTorch fixtures `lenet5`, `vgg-bn-small` and `resnet-mini`, `resnet20`,
//! torchvision's `resnet18`), the [`Classifier`] that runs a description with candle and turns
//! pixels in `[0, 1]` into log-probabilities (the dataset normalisation lives *inside* it, so
//! every later piece of geometry is taken with respect to pixels), and the safetensors
//! [`checkpoint`] format with its metadata, and the layer file ([`parse_layers`]) that
//! describes any other network for its plain `state_dict`. Weights are initialised from our own seeded RNG,
//! because candle 0.11.1 cannot seed its CPU generator, and pooling is written with gathers and
//! a first-maximum mask, because candle's `max_pool2d` backward is 4× off.
#![warn(missing_docs)]

mod arch;
pub mod checkpoint;
mod classifier;
pub mod description;
mod device;
mod error;
mod layers;
pub mod network;
mod params;

pub use arch::{Arch, Architecture, PoolKind, Variant};
pub use checkpoint::{CheckpointMeta, FORMAT_VERSION};
pub use classifier::{Classifier, LoadOptions, Normalisation};
pub use description::{Description, DescriptionError, Dims};
pub use device::DeviceChoice;
pub use error::{ModelError, Result};
pub use layers::{parse_layers, read_layers};
