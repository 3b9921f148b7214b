//! Pixels handed over as arrays: a safetensors file holding images as one float tensor,
//! `[B, C, H, W]` or `[B, C·H·W]`, values in `[0, 1]` — what `safetensors.numpy.save_file` or
//! `safetensors.torch.save_file` writes. Named on the command line as `FILE.safetensors` (its
//! only tensor) or `FILE.safetensors:NAME`, either with `#INDEX` for one of its images.

use std::fmt;
use std::path::PathBuf;

use safetensors::{Dtype, SafeTensors};

use crate::error::{DataError, Result};
use crate::registry::ImageShape;

/// Images in a safetensors file (module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorImages {
    /// The `.safetensors` file, as written on the command line (relative paths are resolved against the
    /// working directory when the file is read).
    pub path: PathBuf,
    /// The tensor's name; `None`: the file's only tensor.
    pub name: Option<String>,
    /// One image of the batch; `None`: all of them.
    pub index: Option<usize>,
}

impl TensorImages {
    /// `FILE.safetensors[:NAME][#INDEX]`, or `None` for text that names no safetensors file.
    pub fn parse(text: &str) -> Option<Result<Self>> {
        const ENDING: &str = ".safetensors";
        let end = text
            .match_indices(ENDING)
            .map(|(at, _)| at + ENDING.len())
            .find(|&end| text[end..].is_empty() || text[end..].starts_with([':', '#']))?;
        let (path, rest) = text.split_at(end);
        let (name, index) = match rest.rsplit_once('#') {
            Some((name, index)) => (name, Some(index)),
            None => (rest, None),
        };
        let index = match index.map(str::parse::<usize>) {
            Some(Ok(i)) => Some(i),
            Some(Err(_)) => {
                return Some(Err(DataError::Parse {
                    what: "tensor images",
                    text: text.to_string(),
                    problem: "the part after # must be an image index".into(),
                }))
            }
            None => None,
        };
        let name = name.strip_prefix(':').filter(|n| !n.is_empty()).map(str::to_string);
        Some(Ok(TensorImages { path: PathBuf::from(path), name, index }))
    }

    /// The images (`index`'s alone when set) as CHW pixels of `shape`.
    pub fn load(&self, shape: ImageShape) -> Result<Vec<Vec<f32>>> {
        let invalid = |problem: String| DataError::Invalid { path: self.path.clone(), problem };
        let bytes = std::fs::read(&self.path).map_err(|e| DataError::io(&self.path, e))?;
        let file = SafeTensors::deserialize(&bytes).map_err(|e| invalid(format!("not a safetensors file ({e})")))?;
        let (name, tensor) = match &self.name {
            Some(name) => (name.clone(), file.tensor(name).map_err(|_| invalid(format!("holds no tensor '{name}'")))?),
            None => match &file.tensors()[..] {
                [(name, tensor)] => (name.clone(), tensor.clone()),
                many => {
                    let mut names: Vec<&str> = many.iter().map(|(n, _)| n.as_str()).collect();
                    names.sort_unstable();
                    return Err(invalid(format!(
                        "holds {} tensors ({}); name one as FILE.safetensors:NAME",
                        names.len(),
                        names.join(", ")
                    )));
                }
            },
        };
        let dims = tensor.shape();
        let per_image = match dims {
            [_, c, h, w] if [*c, *h, *w] == [shape.channels, shape.height, shape.width] => shape.len(),
            [_, n] if *n == shape.len() => shape.len(),
            _ => {
                return Err(invalid(format!(
                    "tensor '{name}' is {dims:?}; the model takes [B, {}, {}, {}] or [B, {}] images",
                    shape.channels,
                    shape.height,
                    shape.width,
                    shape.len()
                )))
            }
        };
        let values: Vec<f32> = match tensor.dtype() {
            Dtype::F32 => tensor.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F64 => tensor
                .data()
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
                .collect(),
            other => {
                return Err(invalid(format!(
                    "tensor '{name}' holds {other:?} values; pixels must be float32 or float64"
                )))
            }
        };
        if let Some(bad) = values.iter().find(|v| !(0.0..=1.0).contains(*v)) {
            return Err(invalid(format!(
                "tensor '{name}' holds {bad}; pixels must lie in [0, 1] (normalisation belongs in the model or --mean/--std)"
            )));
        }
        let mut images: Vec<Vec<f32>> = values.chunks_exact(per_image).map(<[f32]>::to_vec).collect();
        match self.index {
            Some(i) if i < images.len() => Ok(vec![images.swap_remove(i)]),
            Some(i) => {
                Err(invalid(format!("tensor '{name}' holds {} images, so index {i} is out of range", images.len())))
            }
            None if images.is_empty() => Err(invalid(format!("tensor '{name}' holds no images"))),
            None => Ok(images),
        }
    }
}

/// Writes the form [`TensorImages::parse`] reads.
impl fmt::Display for TensorImages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(name) = &self.name {
            write!(f, ":{name}")?;
        }
        if let Some(index) = self.index {
            write!(f, "#{index}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_file_name_and_index() {
        let parsed = |text: &str| TensorImages::parse(text).map(|r| r.unwrap());
        assert_eq!(parsed("a.png"), None);
        assert_eq!(parsed("x.safetensorsy"), None);
        let full = parsed("dir/x.safetensors:pixels#3").unwrap();
        assert_eq!(
            (full.path, full.name.as_deref(), full.index),
            (PathBuf::from("dir/x.safetensors"), Some("pixels"), Some(3))
        );
        let plain = parsed("x.safetensors").unwrap();
        assert_eq!((plain.name, plain.index), (None, None));
        assert_eq!(parsed("x.safetensors#0").unwrap().index, Some(0));
        assert!(TensorImages::parse("x.safetensors#one").unwrap().is_err());
        assert_eq!(parsed("x.safetensors:a:b").unwrap().to_string(), "x.safetensors:a:b");
    }
}
