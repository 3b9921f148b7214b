//! Properties of the built-in classifiers and their checkpoints.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor, Var, D};
use leafwalk_data::dataset_info;
use leafwalk_models::description::{Op, Pool};
use leafwalk_models::{checkpoint, network, Arch, Classifier, LoadOptions};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

fn dataset_for(arch: Arch) -> &'static str {
    match arch {
        Arch::CifarVgg11 => "cifar10",
        _ => "mnist",
    }
}

fn model(arch: Arch, seed: u64, dtype: DType) -> Classifier {
    Classifier::new(arch, dataset_info(dataset_for(arch)).unwrap(), seed, &Device::Cpu, dtype).unwrap()
}

fn random_pixels(model: &Classifier, batch: usize, seed: u64) -> Tensor {
    let s = model.input_shape();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let values: Vec<f64> = (0..batch * s.len()).map(|_| rng.random_range(0.05..0.95)).collect();
    Tensor::from_vec(values, (batch, s.channels, s.height, s.width), &Device::Cpu)
        .unwrap()
        .to_dtype(model.dtype())
        .unwrap()
}

/// The input gradient of log p_k against central differences, in f64. With candle's own
/// `max_pool2d` the mnist-cnn and VGG gradients would come out 4× too small.
#[test]
fn input_gradient_matches_finite_differences() {
    for arch in Arch::ALL {
        let model = model(arch, 7, DType::F64);
        let x = random_pixels(&model, 1, 11);
        let var = Var::from_tensor(&x).unwrap();
        let log_probs = model.forward(var.as_tensor()).unwrap();
        let class = 3;
        let grads = log_probs.get(0).unwrap().get(class).unwrap().backward().unwrap();
        let grad: Vec<f64> = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let base: Vec<f64> = x.flatten_all().unwrap().to_vec1().unwrap();
        let eval = |values: &[f64]| -> f64 {
            let t = Tensor::from_slice(values, x.shape(), &Device::Cpu).unwrap();
            model.forward(&t).unwrap().get(0).unwrap().get(class).unwrap().to_scalar::<f64>().unwrap()
        };
        let max_grad = grad.iter().fold(0f64, |m, g| m.max(g.abs()));
        // The pixels with the largest gradients, plus a few random ones.
        let mut by_size: Vec<usize> = (0..grad.len()).collect();
        by_size.sort_by(|&a, &b| grad[b].abs().total_cmp(&grad[a].abs()));
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let probes: Vec<usize> =
            by_size[..6].iter().copied().chain((0..6).map(|_| rng.random_range(0..grad.len()))).collect();
        let eps = 1e-5;
        for i in probes {
            let (mut plus, mut minus) = (base.clone(), base.clone());
            plus[i] += eps;
            minus[i] -= eps;
            let fd = (eval(&plus) - eval(&minus)) / (2.0 * eps);
            let err = (fd - grad[i]).abs();
            assert!(
                err <= 1e-6 * max_grad + 1e-4 * fd.abs(),
                "{arch}: pixel {i}: autograd {} vs finite difference {fd}",
                grad[i]
            );
        }
    }
}

#[test]
fn log_probs_are_normalised_and_batch_independent() {
    for arch in Arch::ALL {
        let model = model(arch, 1, DType::F32);
        let x = random_pixels(&model, 3, 2);
        let log_probs = model.forward(&x).unwrap();
        assert_eq!(log_probs.dims(), &[3, 10]);
        let sums: Vec<f32> = log_probs.exp().unwrap().sum(D::Minus1).unwrap().to_vec1().unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5), "{arch}: {sums:?}");
        let single = model.forward(&x.narrow(0, 1, 1).unwrap()).unwrap();
        let diff = (single - log_probs.narrow(0, 1, 1).unwrap()).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5, "{arch}: output depends on the batch (eval mode)");
    }
}

#[test]
fn same_seed_same_weights() {
    let tensors = |seed| -> Vec<Vec<f32>> {
        model(Arch::MnistCnn, seed, DType::F32)
            .named_tensors()
            .into_iter()
            .map(|(_, t)| t.flatten_all().unwrap().to_vec1().unwrap())
            .collect()
    };
    assert_eq!(tensors(42), tensors(42));
    assert_ne!(tensors(42), tensors(43));
}

#[test]
fn mnist_cnn_tensor_names_and_shapes_follow_pytorch() {
    let names: Vec<(String, Vec<usize>)> =
        model(Arch::MnistCnn, 0, DType::F32).named_tensors().into_iter().map(|(n, t)| (n, t.dims().to_vec())).collect();
    let expected = [
        ("conv1.weight", vec![32, 1, 3, 3]),
        ("conv1.bias", vec![32]),
        ("conv2.weight", vec![64, 32, 3, 3]),
        ("conv2.bias", vec![64]),
        ("fc1.weight", vec![128, 9216]),
        ("fc1.bias", vec![128]),
        ("fc2.weight", vec![10, 128]),
        ("fc2.bias", vec![10]),
    ];
    assert_eq!(names, expected.map(|(n, s)| (n.to_string(), s)).to_vec());
}

#[test]
fn checkpoint_round_trip_keeps_outputs_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    for arch in Arch::ALL {
        let mut model = model(arch, 3, DType::F32);
        model.meta_mut().epoch = 4;
        model.meta_mut().step = 536;
        model.meta_mut().test_accuracy = Some(0.9575);
        model.meta_mut().extra.insert("mean_trace_g".into(), "12.5".into());
        let path = dir.path().join(format!("{arch}.safetensors"));
        model.save(&path).unwrap();
        let loaded = Classifier::load(&path, LoadOptions::default(), &Device::Cpu).unwrap();
        assert_eq!(loaded.meta(), model.meta());
        let x = random_pixels(&model, 2, 9);
        let a: Vec<Vec<f32>> = model.forward(&x).unwrap().to_vec2().unwrap();
        let b: Vec<Vec<f32>> = loaded.forward(&x).unwrap().to_vec2().unwrap();
        assert_eq!(a, b, "{arch}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind");
}

/// Every write carries the tensors' digest; a flipped byte in any tensor, or a tensor renamed
/// or reshaped, is refused on load; a file without a digest (a PyTorch export) still loads.
#[test]
fn checkpoint_digest_catches_any_changed_tensor_byte() {
    let dir = tempfile::tempdir().unwrap();
    let model = model(Arch::Mlp, 5, DType::F32);
    let path = dir.path().join("sealed.safetensors");
    model.save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    assert_eq!(header["__metadata__"][checkpoint::DIGEST_KEY].as_str().unwrap().len(), 64);
    assert!(!model.meta().extra.contains_key("sha256"));
    let data = 8 + header_len;
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for case in 0..64 {
        let mut corrupted = bytes.clone();
        let at = rng.random_range(data..bytes.len());
        corrupted[at] ^= 1 << rng.random_range(0..8);
        let file = dir.path().join(format!("flip-{case}.safetensors"));
        std::fs::write(&file, corrupted).unwrap();
        let e = load_err(&file, LoadOptions::default());
        assert!(e.contains(&format!("flip-{case}.safetensors")) && e.contains("corrupted"), "{e}");
    }
    // The digest does not depend on the order tensors are listed in.
    let mut tensors = model.named_tensors();
    let forward = checkpoint::tensor_digest(&tensors.iter().map(|(n, t)| (n.as_str(), t)).collect::<Vec<_>>());
    tensors.reverse();
    let backward = checkpoint::tensor_digest(&tensors.iter().map(|(n, t)| (n.as_str(), t)).collect::<Vec<_>>());
    assert_eq!(forward, backward);
    let plain = dir.path().join("plain.safetensors");
    safetensors::serialize_to_file(
        tensors.iter().map(|(n, t)| (n.as_str(), t)),
        Some(model.meta().to_metadata()),
        &plain,
    )
    .unwrap();
    Classifier::load(&plain, LoadOptions::default(), &Device::Cpu).unwrap();
}

fn load_err(path: &Path, options: LoadOptions) -> String {
    match Classifier::load(path, options, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", path.display()),
        // The message and its causes, as the CLI prints them.
        Err(e) => format!("{:#}", anyhow::Error::from(e)),
    }
}

fn write_tensors(path: &Path, tensors: Vec<(String, Tensor)>, metadata: HashMap<String, String>) {
    checkpoint::write(path, &tensors, metadata).unwrap();
}

#[test]
fn bad_checkpoints_give_one_line_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = model(Arch::MnistCnn, 0, DType::F32);
    let meta = good.meta().to_metadata();

    let missing = dir.path().join("missing.safetensors");
    let mut tensors = good.named_tensors();
    tensors.retain(|(n, _)| n != "fc2.bias");
    write_tensors(&missing, tensors, meta.clone());
    let e = load_err(&missing, LoadOptions::default());
    assert!(e.contains("missing.safetensors") && e.contains("missing tensor 'fc2.bias'"), "{e}");

    let wrong_shape = dir.path().join("wrong-shape.safetensors");
    let mut tensors = good.named_tensors();
    tensors[0].1 = Tensor::zeros((16, 1, 3, 3), DType::F32, &Device::Cpu).unwrap();
    write_tensors(&wrong_shape, tensors, meta.clone());
    let e = load_err(&wrong_shape, LoadOptions::default());
    assert!(e.contains("wrong-shape.safetensors") && e.contains("'conv1.weight' has shape [16, 1, 3, 3]"), "{e}");

    let extra = dir.path().join("extra.safetensors");
    let mut tensors = good.named_tensors();
    tensors.push(("fc3.weight".into(), Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap()));
    write_tensors(&extra, tensors, meta.clone());
    let e = load_err(&extra, LoadOptions::default());
    assert!(e.contains("extra.safetensors") && e.contains("unexpected tensor 'fc3.weight'"), "{e}");

    let unknown = dir.path().join("unknown-arch.safetensors");
    let mut bad_meta = meta.clone();
    bad_meta.insert("leafwalk.arch".into(), "resnet50".into());
    write_tensors(&unknown, good.named_tensors(), bad_meta);
    let e = load_err(&unknown, LoadOptions::default());
    assert!(e.contains("unknown-arch.safetensors") && e.contains("unknown architecture 'resnet50'"), "{e}");

    let not_st = dir.path().join("notes.safetensors");
    std::fs::write(&not_st, b"this is not a checkpoint at all").unwrap();
    let e = load_err(&not_st, LoadOptions::default());
    assert!(e.contains("notes.safetensors") && e.contains("not a safetensors file"), "{e}");

    let absent = dir.path().join("absent.safetensors");
    let e = load_err(&absent, LoadOptions::default());
    assert!(e.contains("absent.safetensors") && e.contains("cannot read") && !e.contains('\n'), "{e}");
}

/// Refusals a caller may branch on are variants of their own, and a checkpoint that reads but
/// does not build keeps the cause under the file's name.
#[test]
fn model_errors_are_typed_and_keep_their_cause() {
    use leafwalk_models::{DeviceChoice, ModelError, Normalisation};
    let dir = tempfile::tempdir().unwrap();
    let good = model(Arch::MnistCnn, 0, DType::F32);
    let extra = dir.path().join("extra.safetensors");
    let mut tensors = good.named_tensors();
    tensors.push(("fc3.weight".into(), Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap()));
    write_tensors(&extra, tensors, good.meta().to_metadata());
    let e = Classifier::load(&extra, LoadOptions::default(), &Device::Cpu).err().unwrap();
    assert!(
        matches!(&e, ModelError::InCheckpoint { path, source }
            if path == &extra && matches!(&**source, ModelError::UnexpectedTensor { name, .. } if name == "fc3.weight")),
        "{e:?}"
    );
    assert!(std::error::Error::source(&e).is_some());

    let two_means = Normalisation { mean: vec![0.0, 0.0], std: vec![1.0] };
    let e = two_means.for_channels(1).unwrap_err();
    assert!(matches!(e, ModelError::NormalisationChannels { what: "--mean", values: 2, channels: 1 }), "{e}");
    let zero_std = Normalisation { mean: vec![0.0], std: vec![0.0] };
    assert!(matches!(zero_std.for_channels(1), Err(ModelError::BadStd(s)) if s == 0.0));
    assert!(matches!("tpu".parse::<DeviceChoice>(), Err(ModelError::UnknownDevice(d)) if d == "tpu"));
}

/// A plain `safetensors.torch.save_file(model.state_dict())` export (the golden weights) loads
/// once told its architecture and dataset, and reproduces PyTorch's log-probabilities.
#[test]
fn pytorch_export_matches_golden_log_probs() {
    let weights = fixture("mnist-cnn-epoch01.safetensors");
    let e = load_err(&weights, LoadOptions::default());
    assert!(e.contains("no leafwalk metadata") && e.contains("--arch"), "{e}");
    let mnist = dataset_info("mnist").unwrap();
    let options = LoadOptions::new(Arch::MnistCnn, mnist);
    let model = Classifier::load(&weights, options, &Device::Cpu).unwrap();
    let (golden, _) = checkpoint::read(&fixture("golden-epoch01.safetensors"), &Device::Cpu).unwrap();
    // Pixels exactly as PyTorch made them: u8 / 255 in f32.
    let bytes: Vec<u8> = golden["test_u8"].flatten_all().unwrap().to_vec1().unwrap();
    let pixels: Vec<f32> = bytes.iter().map(|&u| u as f32 / 255.0).collect();
    let pixels = Tensor::from_vec(pixels, (16, 1, 28, 28), &Device::Cpu).unwrap();
    let ours: Vec<Vec<f32>> = model.forward(&pixels).unwrap().to_vec2().unwrap();
    let theirs: Vec<Vec<f32>> = golden["test_log_probs"].to_vec2().unwrap();
    for (a, b) in ours.iter().flatten().zip(theirs.iter().flatten()) {
        assert!((a - b).abs() <= 1e-5, "log-prob {a} vs golden {b}");
    }
    let wrong = LoadOptions::new(Arch::Mlp, mnist);
    let e = load_err(&weights, wrong);
    assert!(e.contains("missing tensor") || e.contains("has shape"), "{e}");
}

/// Over a blank background all four positions of a pooling window tie; PyTorch sends the
/// gradient to the first one only, and so must we (a plain reshape + max would send it to all
/// four, a 4× error of the opposite sign to candle's max_pool2d bug).
#[test]
fn max_pool_gradient_goes_to_the_first_of_tied_maxima() {
    let pool = Op::MaxPool2d(Pool::new(2));
    let max_pool_2x2 = |x: &Tensor| network::apply_parameter_free(&pool, x);
    let x = Tensor::new(&[[[[1f32, 1.], [1., 1.]]]], &Device::Cpu).unwrap();
    let var = Var::from_tensor(&x).unwrap();
    let pooled = max_pool_2x2(var.as_tensor()).unwrap();
    assert_eq!(pooled.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [1.0]);
    let grads = pooled.sum_all().unwrap().backward().unwrap();
    let g: Vec<f32> = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(g, [1.0, 0.0, 0.0, 0.0]);
    let x = Tensor::new(&[[[[0f32, 2.], [3., 3.]]]], &Device::Cpu).unwrap();
    let var = Var::from_tensor(&x).unwrap();
    let grads = max_pool_2x2(var.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
    let g: Vec<f32> = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(g, [0.0, 0.0, 1.0, 0.0]);
}

/// The fixtures' layer files describe exactly the built-in networks their `state_dict`s are
/// (same nodes, names, arguments and wiring), so `--layers` loads them as `--arch` does.
#[test]
fn layer_files_describe_the_fixture_networks() {
    for arch in [Arch::Lenet5, Arch::VggBnSmall, Arch::ResnetMini] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../tests/fixtures/{arch}.layers.json"));
        let parsed = leafwalk_models::parse_layers(&std::fs::read_to_string(path).unwrap()).unwrap();
        let builtin = arch.description(parsed.input, 10).unwrap();
        assert_eq!(parsed.nodes.len(), builtin.nodes.len(), "{arch}");
        for (a, b) in parsed.nodes.iter().zip(&builtin.nodes) {
            assert_eq!((&a.name, &a.op, &a.inputs), (&b.name, &b.op, &b.inputs), "{arch}");
        }
    }
}

#[test]
fn layer_file_errors_name_the_layer() {
    let error = |json: &str| leafwalk_models::parse_layers(json).unwrap_err().to_string();
    let conv = r#"{"name": "c", "type": "Conv2d", "in_channels": 1, "out_channels": 4, "kernal_size": 3}"#;
    assert_eq!(
        error(&format!(r#"{{"input": [1, 8, 8], "layers": [{conv}]}}"#)),
        "layer 'c' (Conv2d): needs 'kernel_size'"
    );
    let typo = r#"{"name": "c", "type": "Conv2d", "in_channels": 1, "out_channels": 4, "kernel_size": 3, "strid": 2}"#;
    assert_eq!(
        error(&format!(r#"{{"input": [1, 8, 8], "layers": [{typo}]}}"#)),
        "layer 'c' (Conv2d): unknown argument 'strid'"
    );
    let add = r#"{"name": "sum", "type": "add", "inputs": ["input", "nowhere"]}"#;
    assert_eq!(
        error(&format!(r#"{{"input": [1, 8, 8], "layers": [{add}]}}"#)),
        "layer 'sum' (add): reads 'nowhere', no earlier layer"
    );
    let lstm = r#"{"name": "rnn", "type": "LSTM"}"#;
    assert_eq!(
        error(&format!(r#"{{"input": [1, 8, 8], "layers": [{lstm}]}}"#)),
        "layer 'rnn' (layer): unknown layer type 'LSTM'"
    );
    let wide = r#"{"name": "fc", "type": "Linear", "in_features": 63, "out_features": 10}"#;
    let flatten = r#"{"name": "flat", "type": "Flatten"}"#;
    assert_eq!(
        error(&format!(r#"{{"input": [1, 8, 8], "layers": [{flatten}, {wide}]}}"#)),
        "layer 'fc' (Linear): expects 63 input features, gets 64"
    );
}

#[test]
fn variants_swap_every_activation_and_pool_and_keep_the_parameters() {
    use leafwalk_models::description::{Activation, GeluForm};
    use leafwalk_models::{Dims, PoolKind, Variant};
    let input = Dims::new(1, 28, 28);
    let plain = Arch::MnistCnn.description(input, 10).unwrap();
    let variant = Variant { activation: Some(Activation::Gelu { form: GeluForm::Erf }), pooling: Some(PoolKind::Avg) };
    let swapped = variant.apply(plain.clone()).unwrap();
    let kinds = |d: &leafwalk_models::Description| d.nodes.iter().map(|n| n.op.kind()).collect::<Vec<_>>();
    assert!(kinds(&plain).contains(&"ReLU") && kinds(&plain).contains(&"MaxPool2d"));
    assert!(!kinds(&swapped).contains(&"ReLU") && !kinds(&swapped).contains(&"MaxPool2d"));
    assert_eq!(
        kinds(&swapped).iter().filter(|k| **k == "GELU").count(),
        kinds(&plain).iter().filter(|k| **k == "ReLU").count()
    );
    assert_eq!(plain.parameters(), swapped.parameters());
    assert_eq!(plain.shapes().unwrap(), swapped.shapes().unwrap());
    assert_eq!(variant.to_string(), "activation=GELU(Erf) pooling=avg");
    assert_eq!(Variant::default().to_string(), "none");
    assert_eq!(Variant::default().architecture(Arch::Lenet5, input, 10).unwrap(), Arch::Lenet5.into());
    // And back: average pooling (LeNet-5's) to max.
    let lenet = Variant { activation: None, pooling: Some(PoolKind::Max) }
        .apply(Arch::Lenet5.description(input, 10).unwrap())
        .unwrap();
    assert!(kinds(&lenet).contains(&"MaxPool2d") && kinds(&lenet).contains(&"Tanh"));

    let mut dilated = plain;
    for node in &mut dilated.nodes {
        if let Op::MaxPool2d(pool) = &node.op {
            node.op = Op::MaxPool2d(Pool { dilation: [2, 2], ..*pool });
        }
    }
    let err = Variant { activation: None, pooling: Some(PoolKind::Avg) }.apply(dilated).unwrap_err();
    assert!(err.to_string().contains("dilated"), "{err}");
}
