//! Whole dataset splits held in memory as bytes, and batches of them as
//! tensors.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use candle_core::{Device, Tensor};

use crate::atomic_file::write_bytes_atomic;

use crate::error::{DataError, Result};
use crate::registry::{layout, DatasetInfo, Layout};
use crate::{cifar, idx};

/// Which half of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training images, those the registry's mean and std were computed over; written `train`.
    Train,
    /// The held-out test images; written `test` (`t10k`, the MNIST file prefix, is also accepted).
    Test,
}

/// Parses `train` or `test`; `t10k` (the MNIST file prefix) also means test.
impl FromStr for Split {
    type Err = DataError;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "train" => Ok(Split::Train),
            "test" | "t10k" => Ok(Split::Test),
            _ => Err(DataError::Parse {
                what: "split",
                text: text.to_string(),
                problem: "expected train or test".to_string(),
            }),
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Test => "test",
        })
    }
}

/// One split of a dataset, loaded whole.
///
/// Pixels stay `u8` (a quarter of the memory of `f32`); [`Dataset::batch`]
/// converts only what a step needs.
#[derive(Clone)]
pub struct Dataset {
    /// The registry entry the split was loaded as; fixes the image shape and the number of classes.
    pub info: &'static DatasetInfo,
    /// Which split of the dataset this is.
    pub split: Split,
    /// `len() * C*H*W` bytes, each image in CHW order.
    pub images: Vec<u8>,
    /// One label per image, each below `info.classes.len()`.
    pub labels: Vec<u8>,
}

/// Summarises instead of dumping tens of megabytes of pixels.
impl fmt::Debug for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataset")
            .field("name", &self.info.name)
            .field("split", &self.split)
            .field("len", &self.len())
            .finish()
    }
}

impl Dataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the split holds no images, so that every [`Dataset::image`] call errs.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Reads a split from `root/NAME/` (see the crate docs for the layouts),
    /// checking every header, length and label against the registry.
    pub fn load(info: &'static DatasetInfo, split: Split, root: &Path) -> Result<Dataset> {
        let (images, labels) = match layout(info)? {
            Layout::Idx => idx::load(info, split, root)?,
            Layout::CifarBinary => cifar::load(info, split, root)?,
        };
        Ok(Dataset { info, split, images, labels })
    }

    /// The CHW bytes of one image.
    pub fn image(&self, index: usize) -> Result<&[u8]> {
        let image_len = self.info.shape.len();
        if index >= self.len() {
            return Err(DataError::IndexOutOfRange {
                dataset: self.info.name,
                split: self.split,
                index,
                len: self.len(),
            });
        }
        Ok(&self.images[index * image_len..(index + 1) * image_len])
    }

    /// One image as `f32` in `[0, 1]` (each byte divided by 255), CHW.
    pub fn pixels(&self, index: usize) -> Result<Vec<f32>> {
        Ok(self.image(index)?.iter().map(|&byte| f32::from(byte) / 255.0).collect())
    }

    /// Writes the split under `root` in its dataset's standard layout (IDX for MNIST and
    /// Fashion-MNIST, binary batches for CIFAR-10), atomically file by file, so that
    /// [`Dataset::load`] reads it back unchanged.
    pub fn save(&self, root: &Path) -> Result<()> {
        match layout(self.info)? {
            Layout::Idx => write_idx(self.info, self.split, root, &self.images, &self.labels),
            Layout::CifarBinary => write_cifar(self.info, self.split, root, &self.images, &self.labels),
        }
    }

    /// Images `[B, C, H, W]` as `f32` in `[0, 1]` (each byte divided by 255, so
    /// values match [`crate::load_image`] of the same image saved as PNG) and
    /// labels `[B]` as `u32`.
    pub fn batch(&self, indices: &[usize], device: &Device) -> Result<(Tensor, Tensor)> {
        let shape = self.info.shape;
        let mut pixels = Vec::with_capacity(indices.len() * shape.len());
        let mut labels = Vec::with_capacity(indices.len());
        for &index in indices {
            pixels.extend(self.pixels(index)?);
            labels.push(u32::from(self.labels[index]));
        }
        let images = Tensor::from_vec(pixels, (indices.len(), shape.channels, shape.height, shape.width), device)?;
        let labels = Tensor::from_vec(labels, indices.len(), device)?;
        Ok((images, labels))
    }
}

fn write_idx(info: &DatasetInfo, split: Split, root: &Path, images: &[u8], labels: &[u8]) -> Result<()> {
    let (images_path, labels_path) = idx::canonical_paths(info, split, root);
    let shape = info.shape;
    write_file(&images_path, &idx::encode_images(labels.len(), shape.height, shape.width, images))?;
    write_file(&labels_path, &idx::encode_labels(labels))
}

/// Spreads the split over its batch files as evenly as possible (10,000
/// records each for the real CIFAR-10 train split).
fn write_cifar(info: &DatasetInfo, split: Split, root: &Path, images: &[u8], labels: &[u8]) -> Result<()> {
    let paths = cifar::canonical_paths(info, split, root);
    let image_len = info.shape.len();
    let per_batch = labels.len().div_ceil(paths.len()).max(1);
    let mut label_chunks = labels.chunks(per_batch);
    let mut image_chunks = images.chunks(per_batch * image_len);
    for path in &paths {
        let labels = label_chunks.next().unwrap_or_default();
        let images = image_chunks.next().unwrap_or_default();
        write_file(path, &cifar::encode_batch(images, labels, image_len))?;
    }
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|error| DataError::io(dir, error))?;
    }
    write_bytes_atomic(path, bytes)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::registry::dataset_info;

    fn mnist() -> &'static DatasetInfo {
        dataset_info("mnist").unwrap()
    }

    fn cifar10() -> &'static DatasetInfo {
        dataset_info("cifar10").unwrap()
    }

    /// Deterministic pixels that differ between images and positions.
    fn pixels(count: usize, image_len: usize, seed: usize) -> Vec<u8> {
        (0..count * image_len).map(|i| ((i * 31 + seed * 7) % 256) as u8).collect()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    /// Writes an MNIST split of `count` images; returns (images, labels).
    fn write_mnist(root: &Path, split: Split, count: usize, gzipped: bool) -> (Vec<u8>, Vec<u8>) {
        let info = mnist();
        let images = pixels(count, info.shape.len(), 1);
        let labels: Vec<u8> = (0..count).map(|i| (i % 10) as u8).collect();
        let (images_path, labels_path) = idx::canonical_paths(info, split, root);
        std::fs::create_dir_all(images_path.parent().unwrap()).unwrap();
        let encoded_images = idx::encode_images(count, 28, 28, &images);
        let encoded_labels = idx::encode_labels(&labels);
        if gzipped {
            std::fs::write(images_path.with_extension("gz"), gzip(&encoded_images)).unwrap();
            std::fs::write(labels_path.with_extension("gz"), gzip(&encoded_labels)).unwrap();
        } else {
            std::fs::write(images_path, encoded_images).unwrap();
            std::fs::write(labels_path, encoded_labels).unwrap();
        }
        (images, labels)
    }

    fn load_error(info: &'static DatasetInfo, split: Split, root: &Path) -> String {
        Dataset::load(info, split, root).unwrap_err().to_string()
    }

    #[test]
    fn split_parses_and_displays() {
        assert_eq!("train".parse::<Split>().unwrap(), Split::Train);
        assert_eq!("test".parse::<Split>().unwrap(), Split::Test);
        assert_eq!("t10k".parse::<Split>().unwrap(), Split::Test);
        assert_eq!(Split::Test.to_string(), "test");
        let message = "validation".parse::<Split>().unwrap_err().to_string();
        assert_eq!(message, "invalid split \"validation\": expected train or test");
    }

    #[test]
    fn idx_raw_round_trip() {
        let root = tempfile::tempdir().unwrap();
        let (images, labels) = write_mnist(root.path(), Split::Test, 5, false);
        let dataset = Dataset::load(mnist(), Split::Test, root.path()).unwrap();
        assert_eq!(dataset.len(), 5);
        assert_eq!(dataset.images, images);
        assert_eq!(dataset.labels, labels);
        assert_eq!(dataset.image(3).unwrap(), &images[3 * 784..4 * 784]);
    }

    #[test]
    fn idx_gz_round_trip() {
        let root = tempfile::tempdir().unwrap();
        let (images, labels) = write_mnist(root.path(), Split::Train, 7, true);
        let dataset = Dataset::load(mnist(), Split::Train, root.path()).unwrap();
        assert_eq!(dataset.images, images);
        assert_eq!(dataset.labels, labels);
    }

    #[test]
    fn idx_dotted_names_are_accepted() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("fashion-mnist");
        std::fs::create_dir_all(&dir).unwrap();
        let images = pixels(2, 784, 3);
        std::fs::write(dir.join("train-images.idx3-ubyte"), idx::encode_images(2, 28, 28, &images)).unwrap();
        std::fs::write(dir.join("train-labels.idx1-ubyte"), idx::encode_labels(&[9, 0])).unwrap();
        let info = dataset_info("fashion-mnist").unwrap();
        let dataset = Dataset::load(info, Split::Train, root.path()).unwrap();
        assert_eq!(dataset.images, images);
        assert_eq!(dataset.labels, [9, 0]);
    }

    #[test]
    fn missing_files_say_how_to_fetch() {
        let root = tempfile::tempdir().unwrap();
        let message = load_error(mnist(), Split::Test, root.path());
        assert!(message.contains("t10k-images-idx3-ubyte[.gz]"), "{message}");
        assert!(message.contains("scripts/fetch-data.sh"), "{message}");
        assert!(message.contains("--data-root"), "{message}");
    }

    #[test]
    fn idx_bad_magic() {
        let root = tempfile::tempdir().unwrap();
        write_mnist(root.path(), Split::Test, 2, true);
        let (images_path, _) = idx::canonical_paths(mnist(), Split::Test, root.path());
        let path = images_path.with_extension("gz");
        std::fs::write(&path, gzip(&[0u8; 16 + 2 * 784])).unwrap();
        let message = load_error(mnist(), Split::Test, root.path());
        assert_eq!(message, format!("{}: bad IDX magic 0x00000000 (expected 2051 for images)", path.display()));
    }

    #[test]
    fn idx_truncated() {
        let root = tempfile::tempdir().unwrap();
        write_mnist(root.path(), Split::Train, 3, false);
        let (images_path, _) = idx::canonical_paths(mnist(), Split::Train, root.path());
        let mut bytes = std::fs::read(&images_path).unwrap();
        bytes.truncate(bytes.len() - 100);
        std::fs::write(&images_path, bytes).unwrap();
        let message = load_error(mnist(), Split::Train, root.path());
        assert_eq!(
            message,
            format!("{}: truncated: expected 2352 bytes of pixel data, found 2252", images_path.display())
        );
    }

    #[test]
    fn idx_wrong_image_size() {
        let root = tempfile::tempdir().unwrap();
        write_mnist(root.path(), Split::Train, 1, false);
        let (images_path, _) = idx::canonical_paths(mnist(), Split::Train, root.path());
        std::fs::write(&images_path, idx::encode_images(1, 32, 32, &[0; 1024])).unwrap();
        let message = load_error(mnist(), Split::Train, root.path());
        assert!(message.contains("1x32x32"), "{message}");
        assert!(message.contains("mnist images are 1x28x28"), "{message}");
    }

    #[test]
    fn idx_count_mismatch() {
        let root = tempfile::tempdir().unwrap();
        write_mnist(root.path(), Split::Test, 4, false);
        let (images_path, labels_path) = idx::canonical_paths(mnist(), Split::Test, root.path());
        std::fs::write(&labels_path, idx::encode_labels(&[1, 2, 3])).unwrap();
        let message = load_error(mnist(), Split::Test, root.path());
        assert_eq!(
            message,
            format!("{}: holds 4 images but {} holds 3 labels", images_path.display(), labels_path.display())
        );
    }

    #[test]
    fn idx_label_out_of_range() {
        let root = tempfile::tempdir().unwrap();
        write_mnist(root.path(), Split::Test, 3, false);
        let (_, labels_path) = idx::canonical_paths(mnist(), Split::Test, root.path());
        std::fs::write(&labels_path, idx::encode_labels(&[1, 10, 3])).unwrap();
        let message = load_error(mnist(), Split::Test, root.path());
        assert_eq!(message, format!("{}: label 10 at index 1 is out of range (10 classes)", labels_path.display()));
    }

    /// Writes CIFAR batches of `per_batch` records; returns (images, labels)
    /// of the whole split.
    fn write_cifar(root: &Path, split: Split, per_batch: usize) -> (Vec<u8>, Vec<u8>) {
        let info = cifar10();
        let mut all_images = Vec::new();
        let mut all_labels = Vec::new();
        for (batch, path) in cifar::canonical_paths(info, split, root).iter().enumerate() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let images = pixels(per_batch, 3072, batch);
            let labels: Vec<u8> = (0..per_batch).map(|i| ((i + batch) % 10) as u8).collect();
            std::fs::write(path, cifar::encode_batch(&images, &labels, 3072)).unwrap();
            all_images.extend(images);
            all_labels.extend(labels);
        }
        (all_images, all_labels)
    }

    #[test]
    fn cifar_train_concatenates_five_batches() {
        let root = tempfile::tempdir().unwrap();
        let (images, labels) = write_cifar(root.path(), Split::Train, 3);
        let dataset = Dataset::load(cifar10(), Split::Train, root.path()).unwrap();
        assert_eq!(dataset.len(), 15);
        assert_eq!(dataset.images, images);
        assert_eq!(dataset.labels, labels);
        // Records are CHW already: the red plane comes first.
        assert_eq!(dataset.image(4).unwrap()[..1024], images[4 * 3072..4 * 3072 + 1024]);
    }

    #[test]
    fn cifar_test_split_in_flat_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cifar10");
        std::fs::create_dir_all(&dir).unwrap();
        let images = pixels(2, 3072, 9);
        std::fs::write(dir.join("test_batch.bin"), cifar::encode_batch(&images, &[7, 2], 3072)).unwrap();
        let dataset = Dataset::load(cifar10(), Split::Test, root.path()).unwrap();
        assert_eq!(dataset.images, images);
        assert_eq!(dataset.labels, [7, 2]);
    }

    #[test]
    fn cifar_missing_batch_is_named() {
        let root = tempfile::tempdir().unwrap();
        write_cifar(root.path(), Split::Train, 1);
        let missing = &cifar::canonical_paths(cifar10(), Split::Train, root.path())[2];
        std::fs::remove_file(missing).unwrap();
        let message = load_error(cifar10(), Split::Train, root.path());
        assert!(message.contains(&missing.display().to_string()), "{message}");
        assert!(message.contains("data_batch_3.bin"), "{message}");
    }

    #[test]
    fn cifar_truncated_and_bad_label() {
        let root = tempfile::tempdir().unwrap();
        write_cifar(root.path(), Split::Test, 2);
        let path = &cifar::canonical_paths(cifar10(), Split::Test, root.path())[0];
        let mut bytes = std::fs::read(path).unwrap();
        bytes.pop();
        std::fs::write(path, &bytes).unwrap();
        let message = load_error(cifar10(), Split::Test, root.path());
        assert!(message.starts_with(&format!("{}: length 6145", path.display())), "{message}");

        std::fs::write(path, cifar::encode_batch(&[0; 2 * 3072], &[3, 11], 3072)).unwrap();
        let message = load_error(cifar10(), Split::Test, root.path());
        assert_eq!(message, format!("{}: label 11 in record 1 is out of range (10 classes)", path.display()));

        std::fs::write(path, []).unwrap();
        let message = load_error(cifar10(), Split::Test, root.path());
        assert!(message.contains("length 0 is not a non-zero multiple"), "{message}");
    }

    #[test]
    fn batch_divides_bytes_by_255() {
        let root = tempfile::tempdir().unwrap();
        let (images, labels) = write_mnist(root.path(), Split::Test, 4, false);
        let dataset = Dataset::load(mnist(), Split::Test, root.path()).unwrap();
        let (batch_images, batch_labels) = dataset.batch(&[2, 0], &Device::Cpu).unwrap();
        assert_eq!(batch_images.dims(), [2, 1, 28, 28]);
        assert_eq!(batch_labels.dims(), [2]);
        assert_eq!(batch_labels.to_vec1::<u32>().unwrap(), [labels[2] as u32, labels[0] as u32]);
        let values = batch_images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let expected: Vec<f32> =
            images[2 * 784..3 * 784].iter().chain(&images[..784]).map(|&byte| byte as f32 / 255.0).collect();
        assert_eq!(values, expected);
    }

    #[test]
    fn index_out_of_range_names_dataset_and_length() {
        let root = tempfile::tempdir().unwrap();
        write_mnist(root.path(), Split::Test, 4, false);
        let dataset = Dataset::load(mnist(), Split::Test, root.path()).unwrap();
        let message = dataset.image(4).unwrap_err().to_string();
        assert_eq!(message, "mnist:test has 4 images, so index 4 is out of range");
        assert!(dataset.batch(&[0, 9], &Device::Cpu).is_err());
    }

    /// Reads the real MNIST and Fashion-MNIST files if another step fetched
    /// them (`cargo test -p leafwalk-data -- --ignored`). Subsets are fine,
    /// so only properties every sensible copy has are checked.
    #[test]
    #[ignore = "needs MNIST and Fashion-MNIST under $LEAFWALK_DATA or the workspace's data/"]
    fn real_idx_datasets() {
        let root = std::env::var_os("LEAFWALK_DATA")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data"));
        for name in ["mnist", "fashion-mnist"] {
            let info = dataset_info(name).unwrap();
            for split in [Split::Train, Split::Test] {
                let dataset = Dataset::load(info, split, &root).unwrap();
                assert_eq!(dataset.images.len(), dataset.len() * 784);
                for class in 0..10u8 {
                    assert!(dataset.labels.contains(&class), "{name}:{split} lacks {class}");
                }
                let (images, _) = dataset.batch(&[0, dataset.len() - 1], &Device::Cpu).unwrap();
                let max = images.max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(max > 0.5 && max <= 1.0, "{name}:{split} max pixel {max}");
            }
        }
    }
}
