//! The hand-written mnist-cnn training gradients against candle's autograd (the generic path),
//! on the golden epoch-1 weights and on a freshly initialised model.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use leafwalk_data::dataset_info;
use leafwalk_geometry::{mnist_cnn_log_probs, mnist_cnn_nll_gradients};
use leafwalk_models::{checkpoint, Arch, Classifier, LoadOptions};

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

/// The golden set's test digits, back in pixels.
fn digits() -> (Tensor, Tensor) {
    let (golden, _) = checkpoint::read(&fixture("golden-epoch01.safetensors"), &Device::Cpu).unwrap();
    let pixels = (golden["test_u8"].to_dtype(DType::F32).unwrap() / 255.0).unwrap();
    let count = pixels.dim(0).unwrap();
    let pixels = pixels.reshape((count, 1, 28, 28)).unwrap();
    // Labels that are not all the predicted class, so every gradient term is exercised.
    let labels = Tensor::new((0..count as u32).map(|k| (k * 7) % 10).collect::<Vec<_>>(), &Device::Cpu).unwrap();
    (pixels, labels)
}

fn compare(model: &Classifier, pixels: &Tensor, labels: &Tensor) {
    let fast = mnist_cnn_log_probs(model, pixels).unwrap().expect("mnist-cnn on the CPU");
    let candle = model.log_probs_t(pixels, false).unwrap();
    let diff = (fast - &candle).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff <= 1e-4, "log p differs from candle's forward by {diff}");
    let fast = mnist_cnn_nll_gradients(model, pixels, labels).unwrap().expect("mnist-cnn on the CPU");
    let log_probs = model.log_probs_t(pixels, true).unwrap();
    let loss = candle_nn::loss::nll(&log_probs, labels).unwrap();
    let grads = loss.backward().unwrap();
    let loss = loss.to_scalar::<f32>().unwrap() as f64;
    assert!((fast.loss - loss).abs() <= 1e-5 * loss.max(1.0), "loss {} against {loss}", fast.loss);
    let correct = log_probs.argmax(1).unwrap().eq(labels).unwrap().to_dtype(DType::U32).unwrap();
    assert_eq!(fast.correct, correct.sum_all().unwrap().to_scalar::<u32>().unwrap() as usize);
    let vars = model.trainable_vars();
    assert_eq!(fast.gradients.len(), vars.len());
    for (name, gradient) in &fast.gradients {
        let var = &vars.iter().find(|(n, _)| n == name).unwrap().1;
        let expected = grads.get(var.as_tensor()).unwrap();
        assert_eq!(gradient.shape(), expected.shape(), "{name}");
        let values = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
        let (ours, theirs) = (values(gradient), values(expected));
        let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = ours.iter().zip(&theirs).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff <= 1e-4 * scale.max(1e-6), "{name}: max |ours − autograd| {diff} against max |g| {scale}");
    }
}

#[test]
fn hand_written_gradients_match_autograd() {
    let (pixels, labels) = digits();
    let options = LoadOptions { arch: Some(Arch::MnistCnn), dataset: Some(dataset_info("mnist").unwrap()) };
    let trained = Classifier::load(&fixture("mnist-cnn-epoch01.safetensors"), options, &Device::Cpu).unwrap();
    compare(&trained, &pixels, &labels);
    let fresh = Classifier::new(Arch::MnistCnn, dataset_info("mnist").unwrap(), 3, &Device::Cpu, DType::F32).unwrap();
    compare(&fresh, &pixels, &labels);
    // Seeded training repeats exactly: the same batch gives the same gradients bit for bit.
    let values = |model: &Classifier| -> Vec<Vec<f32>> {
        let pass = mnist_cnn_nll_gradients(model, &pixels, &labels).unwrap().unwrap();
        pass.gradients.iter().map(|(_, g)| g.flatten_all().unwrap().to_vec1().unwrap()).collect()
    };
    assert_eq!(values(&fresh), values(&fresh));
}

#[test]
fn other_models_fall_back_and_bad_labels_are_errors() {
    let (pixels, labels) = digits();
    let mlp = Classifier::new(Arch::Mlp, dataset_info("mnist").unwrap(), 3, &Device::Cpu, DType::F32).unwrap();
    assert!(mnist_cnn_nll_gradients(&mlp, &pixels, &labels).unwrap().is_none());
    assert!(mnist_cnn_log_probs(&mlp, &pixels).unwrap().is_none());
    let cnn = Classifier::new(Arch::MnistCnn, dataset_info("mnist").unwrap(), 3, &Device::Cpu, DType::F32).unwrap();
    let wrong = Tensor::new(&[10u32], &Device::Cpu).unwrap();
    assert!(mnist_cnn_nll_gradients(&cnn, &pixels.narrow(0, 0, 1).unwrap(), &wrong).is_err());
}
