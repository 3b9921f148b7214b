//! The PyTorch fixtures (`lenet5`, `vgg-bn-small`, `resnet-mini`, loaded from their plain
//! `state_dict`s with no normalisation) against their float64 golden values: log p within 1e-5,
//! J within 1e-4·max|J|, by the CPU engine and by the tensor backend.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use leafwalk_engine::{input_jacobian, tensor, Coordinates, Jacobians};
use leafwalk_models::{Arch, Classifier, LoadOptions};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

/// The fixture `arch` as `--arch NAME --mean 0 --std 1` loads it.
pub fn fixture_model(arch: Arch) -> Classifier {
    Classifier::load(&fixture(&format!("{arch}.safetensors")), LoadOptions::pixels(arch), &Device::Cpu).unwrap()
}

struct Golden {
    inputs: Tensor,
    log_probs: Vec<f64>,
    jacobian: Vec<f64>,
}

fn golden(arch: Arch) -> Golden {
    let tensors = candle_core::safetensors::load(fixture(&format!("{arch}.golden.safetensors")), &Device::Cpu).unwrap();
    let flat =
        |name: &str| tensors[name].flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
    Golden { inputs: tensors["inputs"].clone(), log_probs: flat("log_probs"), jacobian: flat("jacobian") }
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap()
}

fn check(arch: Arch, label: &str, found: &Jacobians, golden: &Golden) {
    let lp = flat(&found.log_probs);
    let worst_lp = lp.iter().zip(&golden.log_probs).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(worst_lp <= 1e-5, "{arch} ({label}): log p off by {worst_lp}");
    let j = flat(&found.jacobian);
    let scale = golden.jacobian.iter().fold(0f64, |m, v| m.max(v.abs()));
    let worst = j.iter().zip(&golden.jacobian).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(worst <= 1e-4 * scale, "{arch} ({label}): J off by {worst} (max |J| {scale})");
}

#[test]
fn fixtures_match_pytorch_through_the_engine_and_the_tensor_backend() {
    for arch in [Arch::Lenet5, Arch::VggBnSmall, Arch::ResnetMini] {
        let model = fixture_model(arch);
        let golden = golden(arch);
        let engine = input_jacobian(&model, &golden.inputs, Coordinates::Pixels).unwrap();
        check(arch, "engine", &engine, &golden);
        let tensors = tensor::input_jacobian(&model, &golden.inputs, Coordinates::Pixels).unwrap();
        check(arch, "tensor backend", &tensors, &golden);
    }
}

/// The same `state_dict`s read with their layer files (`--layers`), no flags otherwise.
#[test]
fn fixtures_match_pytorch_through_their_layer_files() {
    for arch in [Arch::Lenet5, Arch::VggBnSmall, Arch::ResnetMini] {
        let layers = std::fs::read_to_string(fixture(&format!("{arch}.layers.json"))).unwrap();
        let options =
            LoadOptions { layers: Some(leafwalk_models::parse_layers(&layers).unwrap()), ..Default::default() };
        let model = Classifier::load(&fixture(&format!("{arch}.safetensors")), options, &Device::Cpu).unwrap();
        let golden = golden(arch);
        let engine = input_jacobian(&model, &golden.inputs, Coordinates::Pixels).unwrap();
        check(arch, "layer file", &engine, &golden);
    }
}

/// The loss gradient (adversarial training's attack direction) is −J's label row, by the
/// engine and by candle's autograd on a float64 copy.
#[test]
fn the_loss_gradient_is_minus_the_label_row_of_j() {
    for arch in [Arch::Lenet5, Arch::ResnetMini] {
        let model = fixture_model(arch);
        let inputs = golden(arch).inputs;
        let points = inputs.dim(0).unwrap();
        let labels: Vec<usize> = (0..points).map(|b| (3 * b + 1) % 10).collect();
        let (gradient, losses) = leafwalk_engine::loss_input_gradient(&model, &inputs, &labels).unwrap();
        let found = input_jacobian(&model, &inputs, Coordinates::Pixels).unwrap();
        let (j, lp, g) = (flat(&found.jacobian), flat(&found.log_probs), flat(&gradient));
        let n = g.len() / points;
        let scale = j.iter().fold(0f64, |m, v| m.max(v.abs()));
        for (b, &label) in labels.iter().enumerate() {
            assert!((f64::from(losses[b]) + lp[b * 10 + label]).abs() <= 1e-6, "{arch}: loss of point {b}");
            for i in 0..n {
                let gap = (g[b * n + i] + j[(b * 10 + label) * n + i]).abs();
                assert!(
                    gap <= 1e-5 * scale,
                    "{arch}: point {b} pixel {i}: {} vs {}",
                    g[b * n + i],
                    j[(b * 10 + label) * n + i]
                );
            }
        }
        let double = model.to_dtype(DType::F64).unwrap();
        let (autograd, _) =
            leafwalk_engine::loss_input_gradient(&double, &inputs.to_dtype(DType::F64).unwrap(), &labels).unwrap();
        let worst = flat(&autograd).iter().zip(&g).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(worst <= 1e-4 * scale, "{arch}: autograd differs by {worst}");
    }
}
