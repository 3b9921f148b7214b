//! The datasets leafwalk knows: their image shapes, class names and the
//! per-channel normalisation statistics models are trained with.

use std::fmt;

use crate::error::{DataError, Result};

/// The shape of one image, channels first, as models see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageShape {
    /// Colour channels: 1 for greyscale, 3 for RGB (in that order).
    pub channels: usize,
    /// Image height in pixels (rows).
    pub height: usize,
    /// Image width in pixels (columns).
    pub width: usize,
}

impl ImageShape {
    /// Number of values in one image (`channels * height * width`).
    pub fn len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// True when some dimension is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of values in one channel plane (`height * width`).
    pub(crate) fn plane_len(&self) -> usize {
        self.height * self.width
    }
}

/// Shown as `CxHxW`, e.g. `1x28x28`.
impl fmt::Display for ImageShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}x{}", self.channels, self.height, self.width)
    }
}

/// What leafwalk knows about one dataset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DatasetInfo {
    /// Registry name; also the directory under the data root.
    pub name: &'static str,
    /// Shape of every image in the dataset, e.g. `1x28x28` for MNIST, `3x32x32` for CIFAR-10.
    pub shape: ImageShape,
    /// Class names, indexed by label.
    pub classes: &'static [&'static str],
    /// Per-channel mean of the training pixels in `[0, 1]`.
    pub mean: &'static [f32],
    /// Per-channel standard deviation of the training pixels in `[0, 1]`.
    pub std: &'static [f32],
}

/// Every dataset leafwalk can read.
pub const DATASETS: &[DatasetInfo] = &[
    DatasetInfo {
        name: "mnist",
        shape: ImageShape { channels: 1, height: 28, width: 28 },
        classes: &["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
        mean: &[0.1307],
        std: &[0.3081],
    },
    DatasetInfo {
        name: "fashion-mnist",
        shape: ImageShape { channels: 1, height: 28, width: 28 },
        classes: &[
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ],
        mean: &[0.2860],
        std: &[0.3530],
    },
    DatasetInfo {
        name: "cifar10",
        shape: ImageShape { channels: 3, height: 32, width: 32 },
        classes: &["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
        mean: &[0.4914, 0.4822, 0.4465],
        std: &[0.2470, 0.2435, 0.2616],
    },
];

/// Looks a dataset up by its registry name.
pub fn dataset_info(name: &str) -> Result<&'static DatasetInfo> {
    DATASETS
        .iter()
        .find(|info| info.name == name)
        .ok_or_else(|| DataError::UnknownDataset { name: name.to_string(), known: known_names() })
}

fn known_names() -> String {
    DATASETS.iter().map(|info| info.name).collect::<Vec<_>>().join(", ")
}

/// How a dataset is stored under the data root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// LeCun's IDX files (MNIST and its drop-in replacements).
    Idx,
    /// The CIFAR-10 "binary version" batches.
    CifarBinary,
}

/// The on-disk layout of a dataset; `DatasetInfo` stays a plain public
/// description, so the storage detail lives here instead of in a field.
pub(crate) fn layout(info: &DatasetInfo) -> Result<Layout> {
    match info.name {
        "mnist" | "fashion-mnist" => Ok(Layout::Idx),
        "cifar10" => Ok(Layout::CifarBinary),
        other => Err(DataError::UnknownDataset { name: other.to_string(), known: known_names() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_is_consistent() {
        for info in DATASETS {
            assert_eq!(info.mean.len(), info.shape.channels, "{}", info.name);
            assert_eq!(info.std.len(), info.shape.channels, "{}", info.name);
            assert_eq!(info.classes.len(), 10, "{}", info.name);
            assert!(layout(info).is_ok(), "{} has no layout", info.name);
            assert_eq!(dataset_info(info.name).unwrap(), info);
        }
        assert_eq!(dataset_info("cifar10").unwrap().shape.len(), 3072);
    }

    #[test]
    fn unknown_name_lists_known_ones() {
        let message = dataset_info("svhn").unwrap_err().to_string();
        assert!(message.contains("\"svhn\""), "{message}");
        assert!(message.contains("mnist, fashion-mnist, cifar10"), "{message}");
    }
}
