//! Fetching datasets with candle-datasets' Hugging Face hub loaders.
//!
//! The loaders return whole splits as tensors; this module writes them back
//! out in the standard layouts under the data root, so every later command
//! reads them through [`crate::Dataset::load`] like a manual download.

use std::path::Path;

use candle_core::{DType, Tensor};

use crate::dataset::{Dataset, Split};
use crate::error::{DataError, Result};
use crate::registry::{layout, DatasetInfo, Layout};

/// Downloads `info`'s train and test splits (through the hub cache of
/// candle-datasets) and writes them under `root/NAME/`: IDX files for MNIST
/// and Fashion-MNIST, the five train batches and the test batch for
/// CIFAR-10. Existing files are replaced.
pub fn download(info: &'static DatasetInfo, root: &Path) -> Result<()> {
    use candle_datasets::vision::{cifar as hub_cifar, fashion_mnist, mnist};
    let hub_error = |error: candle_core::Error| DataError::Hub { dataset: info.name, problem: error.to_string() };
    let layout = layout(info)?;
    let loaded = match info.name {
        "mnist" => mnist::load(),
        "fashion-mnist" => fashion_mnist::load(),
        "cifar10" => hub_cifar::load(),
        name => {
            return Err(DataError::Hub {
                dataset: info.name,
                problem: format!("candle-datasets has no hub loader for {name}"),
            })
        }
    }
    .map_err(hub_error)?;
    for (split, images, labels) in [
        (Split::Train, &loaded.train_images, &loaded.train_labels),
        (Split::Test, &loaded.test_images, &loaded.test_labels),
    ] {
        let (images, labels) = split_bytes(info, layout, images, labels)?;
        Dataset { info, split, images, labels }.save(root)?;
    }
    Ok(())
}

/// Turns a loader's `f32` images (bytes divided by 255) and labels back into
/// bytes, images in CHW order.
fn split_bytes(info: &DatasetInfo, layout: Layout, images: &Tensor, labels: &Tensor) -> Result<(Vec<u8>, Vec<u8>)> {
    let images = match layout {
        Layout::Idx => images.clone(),
        // candle-datasets 0.11.1 decodes CIFAR-10 parquet images as
        // (N, H, W, C) and permutes with (0, 3, 2, 1), which yields
        // (N, C, W, H): every image is transposed. Swap the last two axes
        // back to (N, C, H, W).
        Layout::CifarBinary => images.transpose(2, 3)?,
    };
    let pixels =
        images.affine(255.0, 0.0)?.round()?.clamp(0f32, 255f32)?.to_dtype(DType::U8)?.flatten_all()?.to_vec1::<u8>()?;
    let labels = labels.to_dtype(DType::U8)?.flatten_all()?.to_vec1::<u8>()?;
    if pixels.len() != labels.len() * info.shape.len() {
        return Err(DataError::Hub {
            dataset: info.name,
            problem: format!(
                "loader returned {} pixel values for {} labels of {} images",
                pixels.len(),
                labels.len(),
                info.shape
            ),
        });
    }
    Ok((pixels, labels))
}
