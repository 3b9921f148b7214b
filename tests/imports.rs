//! Models made elsewhere, end to end: PyTorch's ONNX exports run every geometry command with no
//! flags but the dataset, `leafwalk import` turns one into a checkpoint that needs only
//! `--model`, a `state_dict` loads with a layer file, and bad files are refused in one line
//! with nothing written.

mod common;

use std::path::Path;

use common::{failure, files_in, leafwalk, repo, tiny_mnist};

fn succeed(args: &[&str], root: &Path) -> serde_json::Value {
    let output = leafwalk(args, root);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{args:?}: {stderr}");
    serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null)
}

fn fixture(name: &str) -> String {
    repo("tests/fixtures").join(name).to_str().unwrap().to_string()
}

#[test]
fn an_onnx_export_runs_inspect_path_ood_score_and_denoise() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    tiny_mnist(root);
    let path = |name: &str| root.join(name).to_str().unwrap().to_string();
    let onnx = fixture("lenet5.dynamo.onnx");

    // No flags at all: classes 0 … 9, input from the graph, pixels as they are.
    let rows = succeed(&["predict", "models/samples/mnist-7.png", "--model", &onnx, "--json"], root);
    assert_eq!(rows[0]["prediction"], "7");
    let report = succeed(&["inspect", "--image", "models/samples/mnist-3.png", "--model", &onnx, "--json"], root);
    assert_eq!(report[0]["rank"], 9);

    // Commands that need the training data take --dataset.
    let model = ["--model", onnx.as_str(), "--dataset", "mnist"];
    let walked = leafwalk(
        &[
            &["path", "--from", "mnist:test:0", "--to", "mnist:test:1", "--max-steps", "8"][..],
            &model,
            &["--out", &path("path")],
        ]
        .concat(),
        root,
    );
    assert!(matches!(walked.status.code(), Some(0 | 3)), "{}", String::from_utf8_lossy(&walked.stderr));
    assert_eq!(files_in(&root.join("path")), ["path.gif", "path.jsonl", "strip.png"]);
    let scores = succeed(
        &[
            &["ood-score", "--inputs", "mnist:test:0", "--score", "leaf-distance,trace,msp", "--anchors", "1"][..],
            &model,
            &["--max-steps", "8", "--json"],
        ]
        .concat(),
        root,
    );
    assert!(scores[0]["leaf-distance"].as_f64().unwrap() >= 0.0);
    succeed(
        &[
            &["denoise", "--inputs", "mnist:test:2", "--anchors", "1", "--max-steps", "8"][..],
            &model,
            &["--out", &path("denoised")],
        ]
        .concat(),
        root,
    );
    assert!(!files_in(&root.join("denoised")).is_empty());

    // Imported once, the checkpoint carries its metadata: --model alone.
    let imported = path("lenet5.safetensors");
    let names = "zero,one,two,three,four,five,six,seven,eight,nine";
    succeed(&["import", &onnx, "--dataset", "mnist", "--classes", names, "--out", &imported], root);
    let rows = succeed(&["predict", "models/samples/mnist-7.png", "--model", &imported, "--json"], root);
    assert_eq!(rows[0]["prediction"], "seven");
    let e = failure(&leafwalk(&["predict", "mnist:test:0", "--model", &imported, "--classes", names], root));
    assert!(e.contains("carries its class names"), "{e}");
}

#[test]
fn a_state_dict_loads_with_a_layer_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for name in ["lenet5", "resnet-mini"] {
        let (weights, layers) = (fixture(&format!("{name}.safetensors")), fixture(&format!("{name}.layers.json")));
        let rows = succeed(
            &["predict", "models/samples/mnist-7.png", "--model", &weights, "--layers", &layers, "--json"],
            root,
        );
        let onnx = succeed(
            &["predict", "models/samples/mnist-7.png", "--model", &fixture(&format!("{name}.onnx")), "--json"],
            root,
        );
        assert_eq!(rows[0]["prediction"], onnx[0]["prediction"], "{name}");
        let (p, q) = (rows[0]["probability"].as_f64().unwrap(), onnx[0]["probability"].as_f64().unwrap());
        assert!((p - q).abs() < 1e-5, "{name}: {p} vs {q}");
    }
    let e = failure(&leafwalk(
        &[
            "predict",
            "models/samples/mnist-7.png",
            "--model",
            &fixture("lenet5.safetensors"),
            "--layers",
            &fixture("resnet-mini.layers.json"),
        ],
        root,
    ));
    assert!(e.contains("lenet5.safetensors") && e.contains("missing tensor"), "{e}");
}

#[test]
fn bad_model_files_are_refused_in_one_line_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let out = root.join("out.safetensors");
    let out = out.to_str().unwrap();
    let valid = std::fs::read(fixture("resnet-mini.onnx")).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let file = root.join(name);
        std::fs::write(&file, bytes).unwrap();
        file.to_str().unwrap().to_string()
    };

    let truncated = write("truncated.onnx", &valid[..valid.len() / 3]);
    let e = failure(&leafwalk(&["import", &truncated, "--out", out], root));
    assert!(e.contains("truncated.onnx: not an ONNX model"), "{e}");

    // The same length, so the protobuf stays valid: every ReLU becomes an LSTM.
    let text = valid.windows(4).position(|w| w == b"Relu").map(|_| {
        let mut bytes = valid.clone();
        for at in (0..bytes.len() - 3).filter(|&i| &valid[i..i + 4] == b"Relu") {
            bytes[at..at + 4].copy_from_slice(b"LSTM");
        }
        bytes
    });
    let lstm = write("lstm.onnx", &text.unwrap());
    let e = failure(&leafwalk(&["import", &lstm, "--out", out], root));
    assert!(e.contains("lstm.onnx: node '/stem/stem.2/LSTM' (LSTM): operation LSTM is not supported"), "{e}");

    let e = failure(&leafwalk(&["import", &fixture("lenet5.onnx"), "--arch", "lenet5", "--out", out], root));
    assert!(e.contains("carries its own network"), "{e}");
    let e = failure(&leafwalk(&["import", &fixture("vgg-bn-small.onnx"), "--dataset", "mnist", "--out", out], root));
    assert!(e.contains("takes 3×32×32 images into 10 classes; mnist has 1×28×28 images"), "{e}");
    let e = failure(&leafwalk(&["import", &fixture("lenet5.onnx"), "--classes", "a,b", "--out", out], root));
    assert!(e.contains("has 10 classes; --classes names 2"), "{e}");
    assert!(files_in(root).iter().all(|f| f.ends_with(".onnx")), "{:?}", files_in(root));

    // An existing file is never overwritten.
    std::fs::write(root.join("kept.safetensors"), b"keep").unwrap();
    let kept = root.join("kept.safetensors");
    let e = failure(&leafwalk(&["import", &fixture("lenet5.onnx"), "--out", kept.to_str().unwrap()], root));
    assert!(e.contains("already exists"), "{e}");
    assert_eq!(std::fs::read(&kept).unwrap(), b"keep");
}

#[test]
fn pixels_arrive_as_safetensors_arrays() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let save = |name: &str, tensors: Vec<(&str, candle_core::Tensor)>| {
        let file = root.join(name);
        let map: std::collections::HashMap<String, candle_core::Tensor> =
            tensors.into_iter().map(|(n, t)| (n.to_string(), t)).collect();
        candle_core::safetensors::save(&map, &file).unwrap();
        file.to_str().unwrap().to_string()
    };
    let cpu = candle_core::Device::Cpu;
    let images = candle_core::Tensor::rand(0f32, 1f32, (3, 1, 28, 28), &cpu).unwrap();
    let batch = save("batch.safetensors", vec![("pixels", images.clone())]);
    let flat = save("flat.safetensors", vec![("x", images.reshape((3, 784)).unwrap()), ("y", images.clone())]);

    let rows = succeed(&["predict", &batch, "--json"], root);
    assert_eq!(rows.as_array().unwrap().len(), 3);
    assert_eq!(rows[2]["input"], format!("{batch}#2"));
    let one = succeed(&["predict", &format!("{flat}:x#2"), "--json"], root);
    let same = succeed(&["predict", &format!("{batch}#2"), "--json"], root);
    assert_eq!(one[0]["probabilities"], same[0]["probabilities"], "[B, n] and [B, C, H, W] give the same image");
    let report = succeed(&["inspect", "--image", &format!("{batch}#1"), "--json"], root);
    assert_eq!(report.as_array().unwrap().len(), 1);
    let walked = leafwalk(
        &[
            "path",
            "--from",
            &format!("{batch}#0"),
            "--to",
            &format!("{batch}#1"),
            "--max-steps",
            "4",
            "--out",
            root.join("p").to_str().unwrap(),
        ],
        root,
    );
    assert!(matches!(walked.status.code(), Some(0 | 3)), "{}", String::from_utf8_lossy(&walked.stderr));

    let e = failure(&leafwalk(&["predict", &flat], root));
    assert!(e.contains("flat.safetensors: holds 2 tensors (x, y); name one as FILE.safetensors:NAME"), "{e}");
    let e = failure(&leafwalk(
        &["path", "--from", &batch, "--to", "mnist:test:0", "--out", root.join("q").to_str().unwrap()],
        root,
    ));
    assert!(e.contains("holds 3 images where one is wanted"), "{e}");
    let wide = save("wide.safetensors", vec![("x", (images.clone() * 255.0).unwrap())]);
    let e = failure(&leafwalk(&["predict", &wide], root));
    assert!(e.contains("wide.safetensors: tensor 'x' holds") && e.contains("pixels must lie in [0, 1]"), "{e}");
    let cifar = save(
        "cifar.safetensors",
        vec![("x", candle_core::Tensor::zeros((2, 3, 32, 32), candle_core::DType::F32, &cpu).unwrap())],
    );
    let e = failure(&leafwalk(&["predict", &cifar], root));
    assert!(e.contains("tensor 'x' is [2, 3, 32, 32]; the model takes [B, 1, 28, 28] or [B, 784] images"), "{e}");
    let e = failure(&leafwalk(&["predict", &format!("{batch}#7")], root));
    assert!(e.contains("holds 3 images, so index 7 is out of range"), "{e}");
    assert!(!root.join("q").exists());
}
