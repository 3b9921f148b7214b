//! Naming a set of images on the command line: a dataset split (`fashion-mnist:test`), one
//! dataset image (`mnist:test:17`), an IDX images file, a folder of image files, one image
//! file, or the images of a safetensors file (`pixels.safetensors[:NAME][#INDEX]`).

use std::fmt;
use std::path::{Path, PathBuf};

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::idx;
use crate::image_file::{load_image, Invert};
use crate::reference::{DatasetRef, ImageSource};
use crate::registry::{dataset_info, DatasetInfo};
use crate::tensor_file::TensorImages;

/// File name endings read as images in a folder (anything else there is skipped).
const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "bmp", "gif", "webp"];

/// A set of images (module docs).
#[derive(Debug, Clone, PartialEq)]
pub enum ImageSet {
    /// A whole dataset split, `NAME:SPLIT`.
    Split(DatasetRef),
    /// One image: `NAME:SPLIT:INDEX` or an image file.
    Image(ImageSource),
    /// An IDX images file (raw or gzipped).
    Idx(PathBuf),
    /// Every image file in a folder, by name.
    Folder(PathBuf),
    /// The images of a safetensors file ([`TensorImages`]).
    Tensor(TensorImages),
}

/// One image of a set.
#[derive(Debug, Clone)]
pub struct NamedImage {
    /// `mnist:test:17`, a file path, or `file.idx#3`.
    pub name: String,
    /// CHW pixels in `[0, 1]`.
    pub pixels: Vec<f32>,
}

impl ImageSet {
    /// `NAME:SPLIT[:INDEX]` for a registered dataset, else a path: a folder, an image file (by
    /// its extension) or an IDX images file (any other file).
    pub fn parse(text: &str) -> Result<Self> {
        if let Some(tensor) = TensorImages::parse(text) {
            return Ok(ImageSet::Tensor(tensor?));
        }
        let names_dataset = text.split_once(':').is_some_and(|(name, _)| dataset_info(name).is_ok());
        if names_dataset {
            let reference: DatasetRef = text.parse()?;
            return Ok(match reference.index {
                Some(_) => ImageSet::Image(ImageSource::Ref(reference)),
                None => ImageSet::Split(reference),
            });
        }
        if text.is_empty() {
            return Err(DataError::Parse {
                what: "image set",
                text: String::new(),
                problem: "expected NAME:SPLIT[:INDEX], a folder, an image file or an IDX file".into(),
            });
        }
        let path = PathBuf::from(text);
        Ok(if path.is_dir() {
            ImageSet::Folder(path)
        } else if has_image_extension(&path) {
            ImageSet::Image(ImageSource::File(path))
        } else {
            ImageSet::Idx(path)
        })
    }

    /// The first `limit` images (all without one) as pixels of `info`'s shape. Dataset splits
    /// and IDX files must already have that shape; image files are resized (and inverted as
    /// `invert` says, see [`load_image`]). An empty set is an error naming it.
    pub fn load(
        &self,
        info: &'static DatasetInfo,
        root: &Path,
        limit: Option<usize>,
        invert: Invert,
    ) -> Result<Vec<NamedImage>> {
        let limit = limit.unwrap_or(usize::MAX);
        let images = match self {
            ImageSet::Split(reference) => {
                let set = Dataset::load(reference.dataset, reference.split, root)?;
                if set.info.shape != info.shape {
                    return Err(DataError::Parse {
                        what: "image set",
                        text: self.to_string(),
                        problem: format!("its images are {}, the model takes {}", set.info.shape, info.shape),
                    });
                }
                (0..set.len().min(limit))
                    .map(|k| Ok(NamedImage { name: format!("{self}:{k}"), pixels: set.pixels(k)? }))
                    .collect::<Result<Vec<_>>>()?
            }
            ImageSet::Image(source) => {
                vec![NamedImage { name: source.to_string(), pixels: source.load(info.shape, invert, root)? }]
            }
            ImageSet::Idx(path) => {
                let bytes = idx::load_images(path, info)?;
                bytes
                    .chunks_exact(info.shape.len())
                    .take(limit)
                    .enumerate()
                    .map(|(k, image)| NamedImage {
                        name: format!("{}#{k}", path.display()),
                        pixels: image.iter().map(|&b| f32::from(b) / 255.0).collect(),
                    })
                    .collect()
            }
            ImageSet::Tensor(tensor) => tensor
                .load(info.shape)?
                .into_iter()
                .take(limit)
                .enumerate()
                .map(|(k, pixels)| {
                    let index = tensor.index.unwrap_or(k);
                    NamedImage { name: TensorImages { index: Some(index), ..tensor.clone() }.to_string(), pixels }
                })
                .collect(),
            ImageSet::Folder(path) => {
                let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                    .map_err(|error| DataError::io(path, error))?
                    .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                    .filter(|file| file.is_file() && has_image_extension(file))
                    .collect();
                files.sort();
                files
                    .into_iter()
                    .take(limit)
                    .map(|file| {
                        let pixels = load_image(&file, info.shape, invert)?;
                        Ok(NamedImage { name: file.display().to_string(), pixels })
                    })
                    .collect::<Result<Vec<_>>>()?
            }
        };
        if images.is_empty() {
            return Err(DataError::Parse {
                what: "image set",
                text: self.to_string(),
                problem: "it holds no images".into(),
            });
        }
        Ok(images)
    }
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|known| e.eq_ignore_ascii_case(known)))
}

/// Writes the form [`ImageSet::parse`] reads.
impl fmt::Display for ImageSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSet::Split(reference) => write!(f, "{reference}"),
            ImageSet::Image(source) => write!(f, "{source}"),
            ImageSet::Idx(path) | ImageSet::Folder(path) => write!(f, "{}", path.display()),
            ImageSet::Tensor(tensor) => write!(f, "{tensor}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind() {
        let dir = std::env::temp_dir();
        assert!(matches!(ImageSet::parse("fashion-mnist:test").unwrap(), ImageSet::Split(_)));
        assert!(matches!(ImageSet::parse("mnist:test:3").unwrap(), ImageSet::Image(ImageSource::Ref(_))));
        assert!(matches!(ImageSet::parse("digit.PNG").unwrap(), ImageSet::Image(ImageSource::File(_))));
        assert!(matches!(ImageSet::parse("t10k-images-idx3-ubyte.gz").unwrap(), ImageSet::Idx(_)));
        assert!(matches!(ImageSet::parse(dir.to_str().unwrap()).unwrap(), ImageSet::Folder(_)));
        assert!(ImageSet::parse("mnist:nosplit").is_err());
        assert!(ImageSet::parse("").is_err());
    }

    #[test]
    fn an_empty_folder_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("leafwalk-empty-set-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let error = ImageSet::Folder(dir.clone())
            .load(dataset_info("mnist").unwrap(), &dir, None, Invert::Off)
            .unwrap_err()
            .to_string();
        assert!(error.contains("no images") && error.contains(&dir.display().to_string()), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
