//! What the ONNX tests share: the fixtures folder and a fixture read as `--model FILE.onnx` reads it.

#![allow(dead_code)] // each test binary uses its own part

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use leafwalk_models::{Architecture, Classifier, LoadOptions};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

/// The ONNX fixture `file`, with no flags.
pub fn imported(file: &str) -> Classifier {
    let path = fixture(file);
    let model = leafwalk_onnx::read(&path).unwrap();
    let architecture = Architecture::Custom(Box::new(model.description));
    Classifier::from_foreign(&path, architecture, model.tensors, &LoadOptions::default(), &Device::Cpu).unwrap()
}

pub fn flat(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap()
}
