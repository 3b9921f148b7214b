//! The "binary version" of CIFAR-10.
//!
//! Layout under the data root: `cifar10/cifar-10-batches-bin/` (what the
//! official tarball unpacks to) or directly `cifar10/`. The train split is
//! `data_batch_1.bin` .. `data_batch_5.bin` concatenated, the test split is
//! `test_batch.bin`. Each record is one label byte followed by the image as
//! three 32x32 row-major planes (red, green, blue), which is already the CHW
//! order the rest of leafwalk uses, so records are copied without reordering.

use std::path::{Path, PathBuf};

use crate::dataset::Split;
use crate::error::{DataError, Result};
use crate::idx::check_labels;
use crate::registry::DatasetInfo;

const TRAIN_BATCHES: &[&str] =
    &["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];
const TEST_BATCHES: &[&str] = &["test_batch.bin"];
/// Directories tried in order, relative to `root/NAME`.
const SUBDIRS: &[&str] = &["cifar-10-batches-bin", ""];

fn batch_names(split: Split) -> &'static [&'static str] {
    match split {
        Split::Train => TRAIN_BATCHES,
        Split::Test => TEST_BATCHES,
    }
}

/// Reads one split: `(images, labels)`, images as `N*C*H*W` bytes.
pub(crate) fn load(info: &'static DatasetInfo, split: Split, root: &Path) -> Result<(Vec<u8>, Vec<u8>)> {
    let names = batch_names(split);
    let dir = find_dir(info, split, root)?;
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for name in names {
        let path = dir.join(name);
        if !path.is_file() {
            // The directory holds some of this split's batches, so this one
            // was lost or never finished downloading.
            return Err(DataError::NotDownloaded {
                dataset: info.name,
                split,
                missing: format!("batch {}", path.display()),
            });
        }
        let bytes = std::fs::read(&path).map_err(|error| DataError::io(&path, error))?;
        parse_batch(&path, &bytes, info, &mut images, &mut labels)?;
    }
    Ok((images, labels))
}

/// The first candidate directory holding any batch of the split, so that a
/// single missing batch is reported by name rather than as a missing dataset.
fn find_dir(info: &DatasetInfo, split: Split, root: &Path) -> Result<PathBuf> {
    let base = root.join(info.name);
    let names = batch_names(split);
    SUBDIRS
        .iter()
        .map(|subdir| base.join(subdir))
        .find(|dir| names.iter().any(|name| dir.join(name).is_file()))
        .ok_or_else(|| DataError::NotDownloaded {
            dataset: info.name,
            split,
            missing: format!("{}", base.join(SUBDIRS[0]).join(names[0]).display()),
        })
}

/// Appends the records of one batch file.
fn parse_batch(
    path: &Path,
    bytes: &[u8],
    info: &DatasetInfo,
    images: &mut Vec<u8>,
    labels: &mut Vec<u8>,
) -> Result<()> {
    let record_len = 1 + info.shape.len();
    if bytes.is_empty() || !bytes.len().is_multiple_of(record_len) {
        return Err(DataError::invalid(
            path,
            format!(
                "length {} is not a non-zero multiple of the {record_len}-byte record size \
                 (truncated or not a CIFAR-10 binary batch)",
                bytes.len()
            ),
        ));
    }
    let first_new_label = labels.len();
    for record in bytes.chunks_exact(record_len) {
        labels.push(record[0]);
        images.extend_from_slice(&record[1..]);
    }
    check_labels(path, &labels[first_new_label..], info.classes.len(), "in record")
}

/// Where the batches of a split go when leafwalk writes them: the layout of
/// the official tarball, which is also the directory tried first.
pub(crate) fn canonical_paths(info: &DatasetInfo, split: Split, root: &Path) -> Vec<PathBuf> {
    let dir = root.join(info.name).join(SUBDIRS[0]);
    batch_names(split).iter().map(|name| dir.join(name)).collect()
}

/// Encodes records (one label and `image_len` bytes each) as a batch file.
pub(crate) fn encode_batch(images: &[u8], labels: &[u8], image_len: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(images.len() + labels.len());
    for (label, image) in labels.iter().zip(images.chunks_exact(image_len)) {
        bytes.push(*label);
        bytes.extend_from_slice(image);
    }
    bytes
}
