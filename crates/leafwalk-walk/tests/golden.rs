//! The paper's walks against PyTorch (tests/fixtures/golden-*.safetensors), in normalised units.
//!
//! Our walk lives in pixels, so each stored point is converted (x·σ + μ) and the model
//! normalises it back: the input differs from PyTorch's by about one f32 ulp. Most steps then
//! agree to 1e-6; over blank background, where pool windows hold near-ties, that ulp can flip
//! which pixel is a window's maximum and move a few dozen background pixels of the step by up
//! to 3e-4. Hence: every step within 1e-3 (the walks issue's bound), and most within 1e-5.
//! TODO(walks issue): walk in normalised coordinates so whole paths match to 1e-4.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use leafwalk_data::dataset_info;
use leafwalk_models::{checkpoint, Arch, Classifier, LoadOptions};
use leafwalk_walk::{data_leaf_step, noise_leaf_step};
use nalgebra::DVector;

const SIGMA: f64 = 0.3081;
const MEAN: f64 = 0.1307;
const STEP: f64 = 0.1;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

fn load(epoch: u32) -> (Classifier, HashMap<String, Tensor>) {
    let options = LoadOptions { arch: Some(Arch::MnistCnn), dataset: Some(dataset_info("mnist").unwrap()) };
    let model =
        Classifier::load(&fixture(&format!("mnist-cnn-epoch{epoch:02}.safetensors")), options, &Device::Cpu).unwrap();
    let (golden, _) = checkpoint::read(&fixture(&format!("golden-epoch{epoch:02}.safetensors")), &Device::Cpu).unwrap();
    (model, golden)
}

/// Row k of a stored [K, 1, 28, 28] normalised tensor, as f64.
fn row(t: &Tensor, k: usize) -> Vec<f64> {
    t.get(k).unwrap().flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap()
}

fn to_pixels(normalised: &[f64]) -> Vec<f32> {
    normalised.iter().map(|v| (v * SIGMA + MEAN) as f32).collect()
}

fn to_normalised(pixels: &[f32]) -> Vec<f64> {
    pixels.iter().map(|&p| (p as f64 - MEAN) / SIGMA).collect()
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

#[test]
fn data_leaf_steps_match_pytorch() {
    for epoch in [1, 3] {
        let (model, golden) = load(epoch);
        let path = &golden["leaf_path"];
        let target = to_pixels(&row(&golden["test_inputs"], 1));
        let ranks: Vec<i64> = golden["leaf_rank"].to_vec1().unwrap();
        let mut close = 0;
        for (k, &rank) in ranks.iter().enumerate() {
            let step = data_leaf_step(&model, &to_pixels(&row(path, k)), &target, STEP).unwrap();
            let diff = max_diff(&to_normalised(&step.next), &row(path, k + 1));
            assert!(diff <= 1e-3, "epoch {epoch} step {k}: max |ours − golden| = {diff}");
            close += usize::from(diff <= 1e-5);
            assert_eq!(step.rank as i64, rank);
        }
        assert!(close >= 40, "epoch {epoch}: only {close} of 50 steps within 1e-5");
        // The whole walk, ours from start to end, from the exact pixels u/255 PyTorch started at.
        let bytes: Vec<u8> = golden["test_u8"].get(0).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let mut x: Vec<f32> = bytes.iter().map(|&u| u as f32 / 255.0).collect();
        for _ in 0..50 {
            x = data_leaf_step(&model, &x, &target, STEP).unwrap().next;
        }
        // The kink flips of single steps accumulate along a whole walk (2e-3 measured at the
        // end for epoch 3); walking in normalised coordinates, without the pixel round trip,
        // would remove them.
        let diff = max_diff(&to_normalised(&x), &row(path, 50));
        assert!(diff <= 5e-3, "epoch {epoch}: 50-step path ends {diff} from PyTorch's");
    }
}

#[test]
fn noise_leaf_steps_match_pytorch() {
    for epoch in [1, 3] {
        let (model, golden) = load(epoch);
        let walk = &golden["noise_walk"];
        let direction = DVector::from_vec(row(&golden["noise_direction"].unsqueeze(0).unwrap(), 0));
        let mut close = 0;
        for k in 0..50 {
            let step = noise_leaf_step(&model, &to_pixels(&row(walk, k)), &direction, STEP).unwrap();
            let diff = max_diff(&to_normalised(&step.next), &row(walk, k + 1));
            assert!(diff <= 1e-3, "epoch {epoch} noise step {k}: max |ours − golden| = {diff}");
            close += usize::from(diff <= 1e-5);
        }
        assert!(close >= 40, "epoch {epoch}: only {close} of 50 noise steps within 1e-5");
        let preds: Vec<i64> = golden["noise_pred"].to_vec1().unwrap();
        assert!(preds.iter().all(|&p| p == preds[0]), "the golden noise walk keeps its prediction");
    }
}
