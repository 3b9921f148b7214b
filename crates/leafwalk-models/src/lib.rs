//! The classifiers leafwalk studies and the files they live in.
//!
//! This crate owns three things: the architectures (`mnist-cnn`, the network of Grementieri &
//! Fioresi's paper; a small `mlp` for fast experiments and tests; `cifar-vgg11`, VGG11 with batch
//! norm), the [`Classifier`] wrapper that turns pixels in `[0, 1]` into log-probabilities (the
//! dataset normalisation lives *inside* the wrapper, so every later piece of geometry is taken with
//! respect to pixels), and the safetensors [`checkpoint`] format with its metadata. Weights are
//! initialised from our own seeded RNG, because candle 0.11.1 cannot seed its CPU generator, and
//! max-pooling is written as a reshape + max, because candle's `max_pool2d` backward is 4× off.

mod arch;
pub mod checkpoint;
mod classifier;
mod device;
mod error;
mod layers;
mod nets;
mod params;

pub use arch::Arch;
pub use checkpoint::{CheckpointMeta, FORMAT_VERSION};
pub use classifier::{Classifier, LoadOptions};
pub use device::DeviceChoice;
pub use error::{ModelError, Result};
pub use layers::{first_max_mask, max_pool_2x2, pool_windows};
