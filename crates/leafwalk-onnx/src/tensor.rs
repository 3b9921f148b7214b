//! Tensor data out of a `TensorProto`: in the message (typed fields or `raw_data`) or in an
//! external file beside the model, read only inside the model's folder and only as far as the
//! file reaches.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path};

use crate::proto::TensorProto;
use crate::MAX_TENSOR_VALUES;

/// A constant: a dimension list and row-major values, floats or integers.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Constant {
    pub(crate) dims: Vec<usize>,
    pub(crate) data: Data,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl Constant {
    pub(crate) fn f32(dims: Vec<usize>, values: Vec<f32>) -> Self {
        Constant { dims, data: Data::F32(values) }
    }

    pub(crate) fn i64(dims: Vec<usize>, values: Vec<i64>) -> Self {
        Constant { dims, data: Data::I64(values) }
    }

    pub(crate) fn len(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len(),
            Data::I64(v) => v.len(),
        }
    }

    /// The values as floats (integers converted).
    pub(crate) fn floats(&self) -> Vec<f32> {
        match &self.data {
            Data::F32(v) => v.clone(),
            Data::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// The values as integers, or `None` for floats.
    pub(crate) fn ints(&self) -> Option<&[i64]> {
        match &self.data {
            Data::I64(v) => Some(v),
            Data::F32(_) => None,
        }
    }
}

/// The number of values of `dims`, refused past [`MAX_TENSOR_VALUES`] (a corrupt dimension must
/// not size an allocation).
pub(crate) fn value_count(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).filter(|&n| n <= MAX_TENSOR_VALUES)
}

/// Decodes `tensor`; `folder` is where the model lies (external data must lie inside it).
pub(crate) fn decode(tensor: &TensorProto, folder: &Path) -> Result<Constant, String> {
    let dims = tensor
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("has a negative dimension {d}")))
        .collect::<Result<Vec<usize>, String>>()?;
    let count = value_count(&dims).ok_or_else(|| format!("has dimensions {dims:?}: too many values"))?;
    let external;
    let raw: &[u8] = if tensor.data_location == 1 {
        external = read_external(tensor, folder, count)?;
        &external
    } else {
        &tensor.raw_data
    };
    let wrong = |found: usize| format!("holds {found} values where its dimensions {dims:?} want {count}");
    let data = match tensor.data_type {
        // FLOAT
        1 if !raw.is_empty() || tensor.data_location == 1 => {
            if raw.len() != count * 4 {
                return Err(format!("holds {} bytes where its {count} floats need {}", raw.len(), count * 4));
            }
            Data::F32(raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
        }
        1 => Data::F32(tensor.float_data.clone()),
        // DOUBLE
        11 if !raw.is_empty() => {
            if raw.len() != count * 8 {
                return Err(wrong(raw.len() / 8));
            }
            Data::F32(raw.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32).collect())
        }
        11 => Data::F32(tensor.double_data.iter().map(|&x| x as f32).collect()),
        // INT64
        7 if !raw.is_empty() => {
            if raw.len() != count * 8 {
                return Err(wrong(raw.len() / 8));
            }
            Data::I64(raw.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8]))).collect())
        }
        7 => Data::I64(tensor.int64_data.clone()),
        // INT32
        6 if !raw.is_empty() => {
            if raw.len() != count * 4 {
                return Err(wrong(raw.len() / 4));
            }
            Data::I64(raw.chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64).collect())
        }
        6 => Data::I64(tensor.int32_data.iter().map(|&x| x as i64).collect()),
        // BOOL: one byte each in raw_data, else int32_data.
        9 if !raw.is_empty() => Data::I64(raw.iter().map(|&b| (b != 0) as i64).collect()),
        9 => Data::I64(tensor.int32_data.iter().map(|&x| (x != 0) as i64).collect()),
        other => {
            return Err(format!("has data type {} ({other}), not float32, float64 or an integer", type_name(other)))
        }
    };
    let found = match &data {
        Data::F32(v) => v.len(),
        Data::I64(v) => v.len(),
    };
    if found != count {
        return Err(wrong(found));
    }
    Ok(Constant { dims, data })
}

fn type_name(data_type: i32) -> &'static str {
    match data_type {
        2 => "uint8",
        3 => "int8",
        4 => "uint16",
        5 => "int16",
        8 => "string",
        10 => "float16",
        12 => "uint32",
        13 => "uint64",
        14 | 15 => "complex",
        16 => "bfloat16",
        _ => "unknown",
    }
}

/// The bytes of an external tensor: `location` relative to the model's folder (no absolute
/// path, no `..`, no link leading out of it), `offset` and `length` inside the file.
fn read_external(tensor: &TensorProto, folder: &Path, count: usize) -> Result<Vec<u8>, String> {
    let entry = |key: &str| tensor.external_data.iter().find(|e| e.key == key).map(|e| e.value.as_str());
    let location = entry("location").ok_or("keeps its data in an external file but names none")?;
    let relative = Path::new(location);
    if relative.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(format!("names external data '{location}' outside the model's folder (refused)"));
    }
    let path = folder.join(relative);
    let inside = match (path.canonicalize(), folder.canonicalize()) {
        (Ok(file), Ok(folder)) => file.starts_with(folder),
        (Err(e), _) => return Err(format!("external data {}: {e}", path.display())),
        (_, Err(e)) => return Err(format!("model folder {}: {e}", folder.display())),
    };
    if !inside {
        return Err(format!("external data {} leads outside the model's folder (refused)", path.display()));
    }
    let number = |key: &str| -> Result<Option<u64>, String> {
        entry(key)
            .map(|v| v.parse::<u64>().map_err(|_| format!("external data {key} '{v}' is not a number")))
            .transpose()
    };
    let offset = number("offset")?.unwrap_or(0);
    let mut file = File::open(&path).map_err(|e| format!("external data {}: {e}", path.display()))?;
    let size = file.metadata().map_err(|e| format!("external data {}: {e}", path.display()))?.len();
    let element = if tensor.data_type == 7 || tensor.data_type == 11 { 8 } else { 4 };
    let length = number("length")?.unwrap_or((count * element) as u64);
    if offset.checked_add(length).is_none_or(|end| end > size) {
        return Err(format!(
            "external data {}: bytes {offset}..{} lie past its end ({size} bytes)",
            path.display(),
            offset.saturating_add(length)
        ));
    }
    if length != (count * element) as u64 {
        return Err(format!("external data holds {length} bytes where {count} values need {}", count * element));
    }
    let mut bytes = vec![0u8; length as usize];
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(&mut bytes))
        .map_err(|e| format!("external data {}: {e}", path.display()))?;
    Ok(bytes)
}
