//! LeCun's IDX format, as used by MNIST and Fashion-MNIST.
//!
//! Layout under the data root: `NAME/{train,t10k}-images-idx3-ubyte` and
//! `NAME/{train,t10k}-labels-idx1-ubyte`, each raw or gzipped (`.gz`), with
//! the older `train-images.idx3-ubyte` spelling accepted too.
//!
//! An IDX file is a big-endian header (magic, then one `u32` per dimension)
//! followed by the data. Every check here compares the header against the
//! registry and against the actual file length, because a truncated download
//! would otherwise surface much later as nonsense images.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::dataset::Split;
use crate::error::{DataError, Result};
use crate::registry::DatasetInfo;

/// Magic of an unsigned-byte, three-dimensional IDX file (images).
const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic of an unsigned-byte, one-dimensional IDX file (labels).
const LABELS_MAGIC: u32 = 0x0000_0801;
const IMAGES_HEADER_LEN: usize = 16;
const LABELS_HEADER_LEN: usize = 8;
/// First two bytes of any gzip stream; an IDX file always starts with two
/// zero bytes, so sniffing cannot confuse the two.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Reads one split: `(images, labels)`, images as `N*H*W` bytes.
pub(crate) fn load(info: &'static DatasetInfo, split: Split, root: &Path) -> Result<(Vec<u8>, Vec<u8>)> {
    let dir = root.join(info.name);
    let prefix = file_prefix(split);
    let images_path = find_file(&dir, prefix, "images", "idx3", info, split)?;
    let labels_path = find_file(&dir, prefix, "labels", "idx1", info, split)?;

    let images = parse_images(&images_path, read_maybe_gzipped(&images_path)?, info)?;
    let labels = parse_labels(&labels_path, read_maybe_gzipped(&labels_path)?, info)?;
    let image_count = images.len() / info.shape.len();
    if image_count != labels.len() {
        return Err(DataError::invalid(
            &images_path,
            format!("holds {image_count} images but {} holds {} labels", labels_path.display(), labels.len()),
        ));
    }
    Ok((images, labels))
}

/// One IDX images file (raw or gzipped) of `info`'s image shape: its pixel bytes.
pub(crate) fn load_images(path: &Path, info: &DatasetInfo) -> Result<Vec<u8>> {
    parse_images(path, read_maybe_gzipped(path)?, info)
}

/// IDX files name the test split `t10k`.
fn file_prefix(split: Split) -> &'static str {
    match split {
        Split::Train => "train",
        Split::Test => "t10k",
    }
}

/// Finds e.g. `train-images-idx3-ubyte`, preferring the raw file (no
/// decompression) over `.gz`, and the canonical spelling over the dotted one.
fn find_file(
    dir: &Path,
    prefix: &str,
    kind: &str,
    idx_kind: &str,
    info: &DatasetInfo,
    split: Split,
) -> Result<PathBuf> {
    let canonical = format!("{prefix}-{kind}-{idx_kind}-ubyte");
    let dotted = format!("{prefix}-{kind}.{idx_kind}-ubyte");
    for name in [&canonical, &dotted] {
        for suffix in ["", ".gz"] {
            let path = dir.join(format!("{name}{suffix}"));
            if path.is_file() {
                return Ok(path);
            }
        }
    }
    Err(DataError::NotDownloaded {
        dataset: info.name,
        split,
        missing: format!("{}[.gz]", dir.join(canonical).display()),
    })
}

/// Reads a whole file, gunzipping it when it is a gzip stream (whatever its
/// name says).
fn read_maybe_gzipped(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|error| DataError::io(path, error))?;
    if !bytes.starts_with(&GZIP_MAGIC) {
        return Ok(bytes);
    }
    let mut decompressed = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes.as_slice())
        .read_to_end(&mut decompressed)
        .map_err(|error| DataError::invalid(path, format!("corrupt gzip stream: {error}")))?;
    Ok(decompressed)
}

fn read_u32(bytes: &[u8], field: usize) -> u32 {
    let start = 4 * field;
    u32::from_be_bytes([bytes[start], bytes[start + 1], bytes[start + 2], bytes[start + 3]])
}

/// Checks an image file's header and length; returns the pixel bytes.
fn parse_images(path: &Path, mut bytes: Vec<u8>, info: &DatasetInfo) -> Result<Vec<u8>> {
    if bytes.len() < IMAGES_HEADER_LEN {
        return Err(DataError::invalid(
            path,
            format!("truncated: an IDX image header needs {IMAGES_HEADER_LEN} bytes, found {}", bytes.len()),
        ));
    }
    let magic = read_u32(&bytes, 0);
    if magic != IMAGES_MAGIC {
        return Err(DataError::invalid(
            path,
            format!("bad IDX magic 0x{magic:08x} (expected {IMAGES_MAGIC} for images)"),
        ));
    }
    let count = read_u32(&bytes, 1) as usize;
    let rows = read_u32(&bytes, 2) as usize;
    let cols = read_u32(&bytes, 3) as usize;
    let shape = info.shape;
    if shape.channels != 1 || rows != shape.height || cols != shape.width {
        return Err(DataError::invalid(
            path,
            format!("IDX images are 1x{rows}x{cols}, but {} images are {shape}", info.name),
        ));
    }
    let payload = bytes.len() - IMAGES_HEADER_LEN;
    check_payload_len(path, "pixel data", count.checked_mul(shape.len()), payload)?;
    bytes.drain(..IMAGES_HEADER_LEN);
    Ok(bytes)
}

/// Checks a label file's header, length and label range; returns the labels.
fn parse_labels(path: &Path, mut bytes: Vec<u8>, info: &DatasetInfo) -> Result<Vec<u8>> {
    if bytes.len() < LABELS_HEADER_LEN {
        return Err(DataError::invalid(
            path,
            format!("truncated: an IDX label header needs {LABELS_HEADER_LEN} bytes, found {}", bytes.len()),
        ));
    }
    let magic = read_u32(&bytes, 0);
    if magic != LABELS_MAGIC {
        return Err(DataError::invalid(
            path,
            format!("bad IDX magic 0x{magic:08x} (expected {LABELS_MAGIC} for labels)"),
        ));
    }
    let count = read_u32(&bytes, 1) as usize;
    let payload = bytes.len() - LABELS_HEADER_LEN;
    check_payload_len(path, "label data", Some(count), payload)?;
    bytes.drain(..LABELS_HEADER_LEN);
    check_labels(path, &bytes, info.classes.len(), "at index")?;
    Ok(bytes)
}

/// The data after the header must be exactly what the header announces:
/// shorter means a truncated download, longer means a wrong or mangled file.
fn check_payload_len(path: &Path, what: &str, expected: Option<usize>, found: usize) -> Result<()> {
    match expected {
        Some(expected) if expected == found => Ok(()),
        Some(expected) if found < expected => {
            Err(DataError::invalid(path, format!("truncated: expected {expected} bytes of {what}, found {found}")))
        }
        Some(expected) => Err(DataError::invalid(
            path,
            format!("expected {expected} bytes of {what}, found {found} (trailing bytes)"),
        )),
        None => Err(DataError::invalid(path, format!("IDX header announces more {what} than fits in memory"))),
    }
}

/// Every label must name a class; `position` words the index for the format
/// ("at index" for IDX, "in record" for CIFAR).
pub(crate) fn check_labels(path: &Path, labels: &[u8], classes: usize, position: &str) -> Result<()> {
    match labels.iter().position(|&label| usize::from(label) >= classes) {
        None => Ok(()),
        Some(index) => Err(DataError::invalid(
            path,
            format!("label {} {position} {index} is out of range ({classes} classes)", labels[index]),
        )),
    }
}

/// Encodes images (`count*height*width` bytes) as an IDX file.
pub(crate) fn encode_images(count: usize, height: usize, width: usize, pixels: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(IMAGES_HEADER_LEN + pixels.len());
    for field in [IMAGES_MAGIC as usize, count, height, width] {
        bytes.extend_from_slice(&(field as u32).to_be_bytes());
    }
    bytes.extend_from_slice(pixels);
    bytes
}

/// Encodes labels as an IDX file.
pub(crate) fn encode_labels(labels: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(LABELS_HEADER_LEN + labels.len());
    bytes.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
    bytes.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    bytes.extend_from_slice(labels);
    bytes
}

/// Where the IDX files of a split go when leafwalk writes them.
pub(crate) fn canonical_paths(info: &DatasetInfo, split: Split, root: &Path) -> (PathBuf, PathBuf) {
    let dir = root.join(info.name);
    let prefix = file_prefix(split);
    (dir.join(format!("{prefix}-images-idx3-ubyte")), dir.join(format!("{prefix}-labels-idx1-ubyte")))
}
