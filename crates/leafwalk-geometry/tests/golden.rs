//! Agreement with PyTorch 2.15 autograd (tests/fixtures, copied from the team's golden set).
//! Golden values are in *normalised* coordinates: J_norm = σ·J_pixel, trace and eigenvalues
//! scale by σ², singular values by σ.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use leafwalk_data::dataset_info;
use leafwalk_geometry::{batch_geometry, input_jacobian, input_jacobian_autograd, PointGeometry};
use leafwalk_models::{checkpoint, Arch, Classifier, LoadOptions};

const SIGMA: f64 = 0.3081;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

struct Golden {
    model: Classifier,
    tensors: HashMap<String, Tensor>,
}

fn golden(epoch: u32) -> Golden {
    let mnist = dataset_info("mnist").unwrap();
    let options = LoadOptions::new(Arch::MnistCnn, mnist);
    let model =
        Classifier::load(&fixture(&format!("mnist-cnn-epoch{epoch:02}.safetensors")), options, &Device::Cpu).unwrap();
    let (tensors, _) =
        checkpoint::read(&fixture(&format!("golden-epoch{epoch:02}.safetensors")), &Device::Cpu).unwrap();
    Golden { model, tensors }
}

impl Golden {
    fn f64s(&self, name: &str) -> Vec<f64> {
        self.tensors[name].flatten_all().unwrap().to_dtype(candle_core::DType::F64).unwrap().to_vec1().unwrap()
    }
    fn i64s(&self, name: &str) -> Vec<i64> {
        self.tensors[name].flatten_all().unwrap().to_vec1().unwrap()
    }
    /// Test images as pixels: u8 / 255 in f32, exactly as PyTorch made them.
    fn test_pixels(&self) -> Tensor {
        let bytes: Vec<u8> = self.tensors["test_u8"].flatten_all().unwrap().to_vec1().unwrap();
        let pixels: Vec<f32> = bytes.iter().map(|&u| u as f32 / 255.0).collect();
        Tensor::from_vec(pixels, (16, 1, 28, 28), &Device::Cpu).unwrap()
    }
    /// Perturbed points, stored normalised: back to pixels (x·σ + μ, rounding ≈ 1 ulp).
    fn pert_pixels(&self) -> Tensor {
        ((&self.tensors["pert_inputs"] * SIGMA).unwrap() + 0.1307).unwrap()
    }
}

fn assert_close(what: &str, ours: &[f64], theirs: &[f64], abs: f64, rel: f64) {
    assert_eq!(ours.len(), theirs.len(), "{what}: length");
    for (k, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert!((a - b).abs() <= abs + rel * b.abs(), "{what}[{k}]: ours {a} vs golden {b}");
    }
}

fn check_points(g: &Golden, pixels: &Tensor, prefix: &str, epoch: u32) {
    let points = batch_geometry(&g.model, pixels).unwrap();
    let n = points.len();
    let what = |name: &str| format!("epoch {epoch} {prefix}_{name}");
    let log_probs: Vec<f64> = points.iter().flat_map(|p| p.log_probs.iter().copied()).collect();
    assert_close(&what("log_probs"), &log_probs, &g.f64s(&format!("{prefix}_log_probs")), 1e-5, 0.0);

    let golden_j = g.f64s(&format!("{prefix}_J"));
    let max_j = golden_j.iter().fold(0f64, |m, v| m.max(v.abs()));
    let ours_j: Vec<f64> =
        points.iter().flat_map(|p| p.jacobian().transpose().iter().map(|v| v * SIGMA).collect::<Vec<_>>()).collect();
    assert_close(&what("J"), &ours_j, &golden_j, 1e-6 + 1e-4 * max_j, 0.0);

    let trace: Vec<f64> = points.iter().map(|p| p.trace() * SIGMA * SIGMA).collect();
    assert_close(&what("trace"), &trace, &g.f64s(&format!("{prefix}_trace")), 0.0, 1e-4);

    let golden_svals = g.f64s(&format!("{prefix}_svals"));
    let golden_eig = g.f64s(&format!("{prefix}_eig"));
    for (b, point) in points.iter().enumerate() {
        let svals: Vec<f64> = point.jacobian_singular_values().iter().map(|s| s * SIGMA).collect();
        assert_close(&what("svals"), &svals[..9], &golden_svals[b * 10..b * 10 + 9], 0.0, 1e-4);
        let eig: Vec<f64> = point.spectrum().eigenvalues.iter().map(|e| e * SIGMA * SIGMA).collect();
        // Eigenvalues of saturated classes sit ~1e-12 below the top one, under the f32 noise
        // floor of p and J (a 1e-6 change of log pᵢ moves them by 1e-6 relative, in both
        // implementations): relative 1e-4, or 1e-10 of the largest eigenvalue.
        assert_close(&what("eig"), &eig[..9], &golden_eig[b * 10..b * 10 + 9], 1e-10 * golden_eig[b * 10], 1e-4);
        // The 10th is rounding noise in both: compare on the scale of the largest.
        assert!(eig[9].abs() <= 1e-6 * eig[0], "{}: eig[9] = {} not ≈ 0", what("eig"), eig[9]);
    }
    let ranks: Vec<i64> = points.iter().map(|p| p.rank() as i64).collect();
    assert_eq!(ranks, g.i64s(&format!("{prefix}_rank")), "{}", what("rank"));
    assert_eq!(n, g.i64s(&format!("{prefix}_rank")).len());
}

#[test]
fn matches_pytorch_on_test_and_perturbed_points() {
    for epoch in [1, 3] {
        let g = golden(epoch);
        check_points(&g, &g.test_pixels(), "test", epoch);
        check_points(&g, &g.pert_pixels(), "pert", epoch);
    }
}

/// The hand-written reverse pass against candle's autograd (with the exact pooling layer).
#[test]
fn fast_path_matches_autograd_oracle() {
    let g = golden(3);
    let pixels = Tensor::cat(&[g.test_pixels().narrow(0, 0, 4).unwrap(), g.pert_pixels()], 0).unwrap();
    let fast = input_jacobian(&g.model, &pixels).unwrap();
    let slow = input_jacobian_autograd(&g.model, &pixels).unwrap();
    let diff = (&fast.jacobian - &slow.jacobian).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let scale = slow.jacobian.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff <= 1e-5 * scale, "max |fast − autograd| = {diff} (scale {scale})");
    let lp = (&fast.log_probs - &slow.log_probs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    // Different batch sizes reach gemm with different blockings: last-bit differences in
    // logits of magnitude ~20.
    assert!(lp <= 1e-5, "log-probs differ by {lp}");
}

#[test]
fn golden_rank_matches_point_geometry_definition() {
    // A direct construction from the stored J (normalised) gives the stored rank too.
    let g = golden(1);
    let j = g.f64s("test_J");
    let lp = g.f64s("test_log_probs");
    let point = PointGeometry::new(&lp[..10], j[..7840].iter().map(|&v| v as f32).collect(), 10).unwrap();
    assert_eq!(point.rank() as i64, g.i64s("test_rank")[0]);
}

/// The PyTorch fixtures loaded from their `state_dict`s as `--arch NAME --mean 0 --std 1` does:
/// trace and eigenvalues of G within 1e-4 of PyTorch's float64 values.
#[test]
fn pytorch_fixtures_give_the_golden_trace_and_spectrum() {
    for arch in [Arch::Lenet5, Arch::VggBnSmall, Arch::ResnetMini] {
        let options = LoadOptions::pixels(arch);
        let model = Classifier::load(&fixture(&format!("{arch}.safetensors")), options, &Device::Cpu).unwrap();
        let (golden, _) = checkpoint::read(&fixture(&format!("{arch}.golden.safetensors")), &Device::Cpu).unwrap();
        let f64s = |name: &str| -> Vec<f64> {
            golden[name].flatten_all().unwrap().to_dtype(candle_core::DType::F64).unwrap().to_vec1().unwrap()
        };
        let (traces, eigenvalues) = (f64s("trace_g"), f64s("eig_g"));
        let points = batch_geometry(&model, &golden["inputs"]).unwrap();
        let classes = model.classes();
        for (b, point) in points.iter().enumerate() {
            assert_close(&format!("{arch} trace G"), &[point.trace()], &[traces[b]], 0.0, 1e-4);
            let expected = &eigenvalues[b * classes..][..classes];
            let found = point.spectrum().eigenvalues;
            // The last eigenvalue is rounding noise in both: compared on the largest one's scale.
            assert_close(&format!("{arch} eigenvalues"), &found[..classes - 1], &expected[..classes - 1], 0.0, 1e-4);
            assert!(found[classes - 1].abs() <= 1e-6 * expected[0], "{arch}: last eigenvalue {}", found[classes - 1]);
        }
    }
}
