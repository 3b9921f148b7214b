//! Naming images on the command line: a dataset image (`mnist:test:17`) or a
//! file path.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::dataset::{Dataset, Split};
use crate::error::{DataError, Result};
use crate::image_file::{invert_in_place, load_image, Invert};
use crate::registry::{dataset_info, DatasetInfo, ImageShape};
use crate::tensor_file::TensorImages;

const REF_SYNTAX: &str = "expected NAME:SPLIT[:INDEX], e.g. mnist:test:17";

/// A dataset split, or one image of it: `NAME:SPLIT[:INDEX]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DatasetRef {
    /// The registry entry named by `NAME`.
    pub dataset: &'static DatasetInfo,
    /// The split named by `SPLIT` (`train`, or `test`/`t10k`).
    pub split: Split,
    /// 0-based image index within the split; `None` when the reference names the whole split. Not checked
    /// against the split's length until the split is loaded.
    pub index: Option<usize>,
}

impl FromStr for DatasetRef {
    type Err = DataError;

    fn from_str(text: &str) -> Result<Self> {
        let parse_error =
            |problem: String| DataError::Parse { what: "dataset reference", text: text.to_string(), problem };
        let parts: Vec<&str> = text.split(':').collect();
        let (name, split, index) = match parts[..] {
            [name, split] => (name, split, None),
            [name, split, index] => (name, split, Some(index)),
            _ => return Err(parse_error(REF_SYNTAX.to_string())),
        };
        let dataset = dataset_info(name).map_err(|error| parse_error(error.to_string()))?;
        let split =
            split.parse().map_err(|_| parse_error(format!("unknown split {split:?} (expected train or test)")))?;
        let index = index
            .map(|index| {
                index.parse().map_err(|_| parse_error(format!("index {index:?} is not a non-negative integer")))
            })
            .transpose()?;
        Ok(DatasetRef { dataset, split, index })
    }
}

/// Writes the form [`DatasetRef::from_str`] reads.
impl fmt::Display for DatasetRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.dataset.name, self.split)?;
        if let Some(index) = self.index {
            write!(f, ":{index}")?;
        }
        Ok(())
    }
}

/// Where an input image comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    /// An image file (PNG, JPEG or GIF, recognised by content), resampled to the requested shape by [`load_image`].
    File(PathBuf),
    /// One image of a dataset split, `NAME:SPLIT:INDEX`; parsing guarantees the index is set.
    Ref(DatasetRef),
    /// Images in a safetensors file (one of them, or all where a command takes several).
    Tensor(TensorImages),
}

/// A text containing `:` whose part before the first `:` is a registered
/// dataset name is a dataset reference and must be a complete, valid one
/// (`mnist:test:17`; `mnist:bad` and `mnist:test` are errors). Anything else
/// is a file path, including `nosuch:test:1` and `mnist` alone; write
/// `./mnist:test:1` for a file that happens to look like a reference.
impl FromStr for ImageSource {
    type Err = DataError;

    fn from_str(text: &str) -> Result<Self> {
        if text.is_empty() {
            return Err(DataError::Parse {
                what: "image",
                text: String::new(),
                problem: "expected a file path or NAME:SPLIT:INDEX".to_string(),
            });
        }
        if let Some(tensor) = TensorImages::parse(text) {
            return Ok(ImageSource::Tensor(tensor?));
        }
        let names_dataset = text.split_once(':').is_some_and(|(name, _)| dataset_info(name).is_ok());
        if !names_dataset {
            return Ok(ImageSource::File(PathBuf::from(text)));
        }
        let reference: DatasetRef = text.parse()?;
        if reference.index.is_none() {
            return Err(DataError::Parse {
                what: "image reference",
                text: text.to_string(),
                problem: format!("an image needs an index, e.g. {text}:0"),
            });
        }
        Ok(ImageSource::Ref(reference))
    }
}

impl fmt::Display for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSource::File(path) => write!(f, "{}", path.display()),
            ImageSource::Ref(reference) => write!(f, "{reference}"),
            ImageSource::Tensor(tensor) => write!(f, "{tensor}"),
        }
    }
}

impl ImageSource {
    /// The image as `shape`-sized CHW `f32` pixels in `[0, 1]`.
    ///
    /// Files go through [`load_image`]. Dataset images are read from the
    /// split under `root` as `byte / 255` (the values [`Dataset::batch`]
    /// gives) and must already have the requested shape. They are in their
    /// dataset's own polarity, so [`Invert::Auto`] leaves them alone; only
    /// [`Invert::On`] flips them.
    ///
    /// Tensor images are pixels already: a file of several must name one (`FILE#INDEX`).
    pub fn load(&self, shape: ImageShape, invert: Invert, root: &Path) -> Result<Vec<f32>> {
        let reference = match self {
            ImageSource::File(path) => return load_image(path, shape, invert),
            ImageSource::Tensor(tensor) => {
                let mut images = tensor.load(shape)?;
                if images.len() > 1 {
                    return Err(DataError::Invalid {
                        path: tensor.path.clone(),
                        problem: format!(
                            "holds {} images where one is wanted; name it as {tensor}#INDEX",
                            images.len()
                        ),
                    });
                }
                return Ok(images.swap_remove(0));
            }
            ImageSource::Ref(reference) => reference,
        };
        let index = reference.index.ok_or_else(|| DataError::Parse {
            what: "image reference",
            text: reference.to_string(),
            problem: "an image needs an index".to_string(),
        })?;
        if reference.dataset.shape != shape {
            return Err(DataError::ShapeMismatch {
                reference: reference.to_string(),
                found: reference.dataset.shape,
                expected: shape,
            });
        }
        let dataset = Dataset::load(reference.dataset, reference.split, root)?;
        let mut pixels = dataset.pixels(index)?;
        if invert == Invert::On {
            invert_in_place(&mut pixels);
        }
        Ok(pixels)
    }

    /// One source per image: a tensor file of several images becomes one `FILE#INDEX` each
    /// (read to count them); any other source is one image already.
    pub fn each_image(&self, shape: ImageShape) -> Result<Vec<ImageSource>> {
        match self {
            ImageSource::Tensor(tensor) if tensor.index.is_none() => {
                let count = tensor.load(shape)?.len();
                Ok((0..count).map(|i| ImageSource::Tensor(TensorImages { index: Some(i), ..tensor.clone() })).collect())
            }
            other => Ok(vec![other.clone()]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{cifar, idx};

    fn parse_error(text: &str) -> String {
        text.parse::<ImageSource>().unwrap_err().to_string()
    }

    #[test]
    fn dataset_ref_parses_and_round_trips() {
        let reference: DatasetRef = "mnist:test:17".parse().unwrap();
        assert_eq!(reference.dataset.name, "mnist");
        assert_eq!(reference.split, Split::Test);
        assert_eq!(reference.index, Some(17));
        assert_eq!(reference.to_string(), "mnist:test:17");

        let reference: DatasetRef = "fashion-mnist:train".parse().unwrap();
        assert_eq!(reference.index, None);
        assert_eq!(reference.to_string(), "fashion-mnist:train");
        assert_eq!("cifar10:t10k:0".parse::<DatasetRef>().unwrap().to_string(), "cifar10:test:0");
    }

    #[test]
    fn dataset_ref_errors() {
        let message = "mnist".parse::<DatasetRef>().unwrap_err().to_string();
        assert!(message.contains("expected NAME:SPLIT[:INDEX]"), "{message}");
        let message = "svhn:test:1".parse::<DatasetRef>().unwrap_err().to_string();
        assert!(message.contains("unknown dataset \"svhn\""), "{message}");
        let message = "mnist:test:-1".parse::<DatasetRef>().unwrap_err().to_string();
        assert!(message.contains("index \"-1\""), "{message}");
        let message = "mnist:test:1:2".parse::<DatasetRef>().unwrap_err().to_string();
        assert!(message.contains("expected NAME:SPLIT[:INDEX]"), "{message}");
    }

    #[test]
    fn image_source_parsing() {
        match "mnist:test:17".parse::<ImageSource>().unwrap() {
            ImageSource::Ref(reference) => assert_eq!(reference.to_string(), "mnist:test:17"),
            other => panic!("expected a reference, got {other:?}"),
        }
        for path in ["foo.png", "nosuch:test:1", "mnist", "./mnist:test:1", "C:\\digits\\7.png"] {
            assert_eq!(path.parse::<ImageSource>().unwrap(), ImageSource::File(PathBuf::from(path)), "{path}");
        }
        assert_eq!(
            parse_error("mnist:bad"),
            "invalid dataset reference \"mnist:bad\": unknown split \"bad\" (expected train or test)"
        );
        assert!(parse_error("mnist:test").contains("needs an index"));
        assert!(parse_error("").contains("expected a file path"));
    }

    #[test]
    fn ref_loads_dataset_pixels() {
        let root = tempfile::tempdir().unwrap();
        let info = dataset_info("mnist").unwrap();
        let (images_path, labels_path) = idx::canonical_paths(info, Split::Test, root.path());
        std::fs::create_dir_all(images_path.parent().unwrap()).unwrap();
        let pixels: Vec<u8> = (0..2 * 784).map(|i| (i % 251) as u8).collect();
        std::fs::write(&images_path, idx::encode_images(2, 28, 28, &pixels)).unwrap();
        std::fs::write(&labels_path, idx::encode_labels(&[4, 2])).unwrap();

        let source: ImageSource = "mnist:test:1".parse().unwrap();
        let loaded = source.load(info.shape, Invert::Auto, root.path()).unwrap();
        let expected: Vec<f32> = pixels[784..].iter().map(|&b| b as f32 / 255.0).collect();
        assert_eq!(loaded, expected);
        let inverted = source.load(info.shape, Invert::On, root.path()).unwrap();
        assert_eq!(inverted[5], 1.0 - expected[5]);

        let message = "mnist:test:2"
            .parse::<ImageSource>()
            .unwrap()
            .load(info.shape, Invert::Off, root.path())
            .unwrap_err()
            .to_string();
        assert_eq!(message, "mnist:test has 2 images, so index 2 is out of range");

        let cifar_shape = dataset_info("cifar10").unwrap().shape;
        let message = source.load(cifar_shape, Invert::Off, root.path()).unwrap_err().to_string();
        assert_eq!(message, "mnist:test:1: dataset images are 1x28x28, but 3x32x32 is needed");
    }

    #[test]
    fn ref_to_cifar_keeps_chw() {
        let root = tempfile::tempdir().unwrap();
        let info = dataset_info("cifar10").unwrap();
        let path = &cifar::canonical_paths(info, Split::Test, root.path())[0];
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        // Red plane 255, green 0, blue 128.
        let image: Vec<u8> = [255u8, 0, 128].iter().flat_map(|&v| [v; 1024]).collect();
        std::fs::write(path, cifar::encode_batch(&image, &[6], 3072)).unwrap();
        let loaded =
            "cifar10:test:0".parse::<ImageSource>().unwrap().load(info.shape, Invert::Auto, root.path()).unwrap();
        assert_eq!((loaded[0], loaded[1024], loaded[2048]), (1.0, 0.0, 128.0 / 255.0));
    }
}
