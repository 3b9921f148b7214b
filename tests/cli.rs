//! End-to-end tests of the `leafwalk` binary: what a user sees, including every kind of bad
//! input (one line naming the file, non-zero exit, no panic, nothing written or lost).

mod common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::{failure, files_in, leafwalk, repo, tiny_mnist};
use leafwalk_data::dataset_info;
use leafwalk_models::{checkpoint, Arch, Classifier};

#[test]
fn shipped_model_classifies_the_samples() {
    let empty = tempfile::tempdir().unwrap();
    let output =
        leafwalk(&["predict", "models/samples/mnist-7.png", "models/samples/mnist-0.png", "--json"], empty.path());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(rows[0]["prediction"], "7");
    assert_eq!(rows[1]["prediction"], "0");
    let p: Vec<f64> = serde_json::from_value(rows[0]["probabilities"].clone()).unwrap();
    assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-4);
}

#[test]
fn train_writes_checkpoints_log_and_loadable_models() {
    let dir = tempfile::tempdir().unwrap();
    tiny_mnist(dir.path());
    let out = dir.path().join("run");
    let output = leafwalk(
        &[
            "train",
            "--arch",
            "mlp",
            "--epochs",
            "2",
            "--batch-size",
            "20",
            "--lr",
            "0.1",
            "--json",
            "--out",
            out.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(
        files_in(&out),
        ["epoch-01.safetensors", "epoch-02.safetensors", "resume.safetensors", "trace.png", "train-log.jsonl"]
    );
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["epochs"][1]["step"], 6);
    let model = Classifier::load(&out.join("epoch-02.safetensors"), Default::default(), &Device::Cpu).unwrap();
    let meta = model.meta();
    assert_eq!((&meta.arch, meta.dataset.as_deref(), meta.epoch, meta.step), (&Arch::Mlp.into(), Some("mnist"), 2, 6));
    assert_eq!(meta.mean, vec![0.1307]);
    assert_eq!(meta.extra["optimizer"], "sgd");
    assert!(meta.test_accuracy.is_some());
    assert!(meta.extra["mean_trace_g"].parse::<f64>().unwrap() > 0.0);
    assert!(summary["recommended"]["epoch"].as_u64().is_some());
    // Same folder again without --resume: refused, nothing lost.
    let before = std::fs::read(out.join("epoch-01.safetensors")).unwrap();
    let again = leafwalk(&["train", "--arch", "mlp", "--epochs", "1", "--out", out.to_str().unwrap()], dir.path());
    assert!(failure(&again).contains("already holds a training run"));
    assert_eq!(before, std::fs::read(out.join("epoch-01.safetensors")).unwrap());
}

/// `--adversarial` trains on PGD examples, records the attack in every checkpoint, and a run
/// resumed with another attack is refused.
#[test]
fn adversarial_training_records_its_attack() {
    let dir = tempfile::tempdir().unwrap();
    tiny_mnist(dir.path());
    let out = dir.path().join("run");
    let out = out.to_str().unwrap();
    let args = ["train", "--arch", "mlp", "--epochs", "1", "--batch-size", "20", "--reference-size", "0"];
    let output = leafwalk(&[&args[..], &["--adversarial", "l2:1,2", "--out", out]].concat(), dir.path());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let model =
        Classifier::load(&Path::new(out).join("epoch-01.safetensors"), Default::default(), &Device::Cpu).unwrap();
    assert_eq!(model.meta().extra["adversarial"], "l2:1,2");
    let resumed = leafwalk(
        &["train", "--arch", "mlp", "--epochs", "2", "--batch-size", "20", "--resume", "--out", out],
        dir.path(),
    );
    assert!(failure(&resumed).contains("was started with adversarial l2:1,2, not none"));
    // Refused by the argument parser, in its own words.
    let bad = leafwalk(&[&args[..], &["--adversarial", "l3:1", "--out", out]].concat(), dir.path());
    let e = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && e.contains("--adversarial l3:1: the norm is l2 or linf"), "{e}");
}

#[test]
fn bad_training_input_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    tiny_mnist(data);
    let train = |data_root: &Path, extra: &[&str]| {
        let out = dir.path().join("out");
        let mut args = vec!["train", "--arch", "mlp", "--out", out.to_str().unwrap()];
        args.extend_from_slice(if extra.is_empty() { &["--epochs", "1"] } else { extra });
        let result = leafwalk(&args, data_root);
        assert!(!out.exists(), "output folder created on failure");
        result
    };
    let images = data.join("mnist/train-images-idx3-ubyte");
    let labels = data.join("mnist/train-labels-idx1-ubyte");
    let pristine_images = std::fs::read(&images).unwrap();
    let pristine_labels = std::fs::read(&labels).unwrap();

    assert!(failure(&train(data, &["--epochs", "0"])).contains("--epochs must be at least 1"));
    assert!(failure(&train(data, &["--lr", "nan"])).contains("--lr must be a positive finite number"));

    let missing = failure(&train(&data.join("nowhere"), &[]));
    assert!(missing.contains("nowhere/mnist") && missing.contains("fetch-data.sh"), "{missing}");

    let mut bad_magic = pristine_images.clone();
    bad_magic[..4].copy_from_slice(&[0, 0, 0, 0]);
    std::fs::write(&images, &bad_magic).unwrap();
    let e = failure(&train(data, &[]));
    assert!(e.contains("train-images-idx3-ubyte") && e.contains("magic"), "{e}");

    std::fs::write(&images, &pristine_images[..pristine_images.len() - 100]).unwrap();
    let e = failure(&train(data, &[]));
    assert!(e.contains("train-images-idx3-ubyte") && e.contains("truncated"), "{e}");
    std::fs::write(&images, &pristine_images).unwrap();

    let mut fewer = pristine_labels[..pristine_labels.len() - 1].to_vec();
    fewer[4..8].copy_from_slice(&59u32.to_be_bytes());
    std::fs::write(&labels, &fewer).unwrap();
    let e = failure(&train(data, &[]));
    assert!(e.contains("train-") && e.contains("60") && e.contains("59"), "{e}");
    std::fs::write(&labels, &pristine_labels).unwrap();

    let not_a_dir = dir.path().join("plain-file");
    std::fs::write(&not_a_dir, b"x").unwrap();
    let blocked = not_a_dir.join("run");
    let output = leafwalk(&["train", "--arch", "mlp", "--epochs", "1", "--out", blocked.to_str().unwrap()], data);
    let e = failure(&output);
    assert!(e.contains("plain-file/run") && e.contains("cannot create the output folder"), "{e}");
}

#[test]
fn bad_images_and_models_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let predict = |args: &[&str]| {
        let mut all = vec!["predict"];
        all.extend_from_slice(args);
        leafwalk(&all, data)
    };

    let e = failure(&predict(&["no-such-digit.png"]));
    assert!(e.contains("no-such-digit.png"), "{e}");

    let corrupt = dir.path().join("corrupt.png");
    let mut bytes = std::fs::read(repo("models/samples/mnist-7.png")).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&corrupt, bytes).unwrap();
    let e = failure(&predict(&[corrupt.to_str().unwrap()]));
    assert!(e.contains("corrupt.png") && e.contains("corrupt image"), "{e}");

    let e = failure(&predict(&["tests/fixtures/empty-0x0.png"]));
    assert!(e.contains("empty-0x0.png") && e.contains("empty"), "{e}");

    let e = failure(&predict(&["mnist:test:99999"]));
    assert!(e.contains("mnist"), "{e}");

    // Checkpoints: missing tensor, wrong shape, unknown architecture, not safetensors.
    let good = Classifier::new(Arch::MnistCnn, dataset_info("mnist").unwrap(), 1, &Device::Cpu, DType::F32).unwrap();
    let meta = good.meta().to_metadata();
    let write = |name: &str, tensors: Vec<(String, Tensor)>, meta: std::collections::HashMap<String, String>| {
        let path = dir.path().join(name);
        checkpoint::write(&path, &tensors, meta).unwrap();
        path
    };
    let sample = "models/samples/mnist-7.png";
    let mut tensors = good.named_tensors();
    tensors.retain(|(n, _)| n != "conv2.weight");
    let path = write("missing.safetensors", tensors, meta.clone());
    let e = failure(&predict(&[sample, "--model", path.to_str().unwrap()]));
    assert!(e.contains("missing.safetensors") && e.contains("missing tensor 'conv2.weight'"), "{e}");

    let mut tensors = good.named_tensors();
    tensors[6].1 = Tensor::zeros((10, 64), DType::F32, &Device::Cpu).unwrap();
    let path = write("shape.safetensors", tensors, meta.clone());
    let e = failure(&predict(&[sample, "--model", path.to_str().unwrap()]));
    assert!(e.contains("shape.safetensors") && e.contains("'fc2.weight' has shape [10, 64]"), "{e}");

    let mut odd = meta.clone();
    odd.insert("leafwalk.arch".into(), "transformer".into());
    let path = write("arch.safetensors", good.named_tensors(), odd);
    let e = failure(&predict(&[sample, "--model", path.to_str().unwrap()]));
    assert!(e.contains("arch.safetensors") && e.contains("unknown architecture 'transformer'"), "{e}");

    // One flipped weight byte: the digest every leafwalk checkpoint carries refuses it.
    let mut bytes = std::fs::read(repo("models/mnist-cnn.safetensors")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x10;
    let flipped = dir.path().join("flipped.safetensors");
    std::fs::write(&flipped, bytes).unwrap();
    let e = failure(&predict(&[sample, "--model", flipped.to_str().unwrap()]));
    assert!(e.contains("flipped.safetensors") && e.contains("corrupted"), "{e}");

    let e = failure(&predict(&[sample, "--model", "Cargo.toml"]));
    assert!(e.contains("Cargo.toml") && e.contains("not a safetensors file"), "{e}");

    let e = failure(&predict(&[sample, "--model", "tests/fixtures/mnist-cnn-epoch01.safetensors"]));
    assert!(e.contains("mnist-cnn-epoch01.safetensors") && e.contains("--arch"), "{e}");
    let output = predict(&[
        sample,
        "--model",
        "tests/fixtures/mnist-cnn-epoch01.safetensors",
        "--arch",
        "mnist-cnn",
        "--dataset",
        "mnist",
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn every_subcommand_help_has_an_example() {
    let empty = tempfile::tempdir().unwrap();
    for sub in ["train", "predict", "inspect", "path", "walk"] {
        let output = leafwalk(&[sub, "--help"], empty.path());
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success() && text.contains("Example"), "{sub}: {text}");
    }
}

#[test]
fn inspect_reports_g_draws_the_basis_and_writes_dense_g() {
    let dir = tempfile::tempdir().unwrap();
    let basis = dir.path().join("basis.png");
    let dense = dir.path().join("g.npy");
    let output = leafwalk(
        &[
            "inspect",
            "--image",
            "models/samples/mnist-3.png",
            "--basis-png",
            basis.to_str().unwrap(),
            "--full-g",
            dense.to_str().unwrap(),
            "--fisher",
            "--json",
        ],
        dir.path(),
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let row = &rows[0];
    assert_eq!(row["prediction"], "3");
    assert_eq!(row["rank"], 9);
    let eig: Vec<f64> = serde_json::from_value(row["eigenvalues_g"].clone()).unwrap();
    let trace = row["trace_g"].as_f64().unwrap();
    assert!((eig.iter().sum::<f64>() - trace).abs() <= 1e-6 * trace);
    assert!(row["fisher"]["trace"].as_f64().unwrap() > 0.0);
    let png = image::open(&basis).unwrap();
    assert!(png.width() > 500 && png.height() > 80);
    // .npy: 128-byte header for this shape, then 784² float64 values whose trace is trace G.
    let bytes = std::fs::read(&dense).unwrap();
    assert!(bytes.starts_with(b"\x93NUMPY\x01\x00"));
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert!(String::from_utf8_lossy(&bytes[10..10 + header_len]).contains("'shape': (784, 784)"));
    let values: Vec<f64> =
        bytes[10 + header_len..].chunks(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(values.len(), 784 * 784);
    let dense_trace: f64 = (0..784).map(|i| values[i * 784 + i]).sum();
    assert!((dense_trace - trace).abs() <= 1e-9 * trace);
}

#[test]
fn inspect_summarises_a_split() {
    let dir = tempfile::tempdir().unwrap();
    tiny_mnist(dir.path());
    let plot = dir.path().join("spectrum.png");
    let output = leafwalk(
        &["inspect", "--data", "mnist:test", "--limit", "8", "--spectrum-png", plot.to_str().unwrap(), "--json"],
        dir.path(),
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["count"], 8);
    let hist: Vec<usize> = serde_json::from_value(report["rank_hist"].clone()).unwrap();
    assert_eq!(hist.iter().sum::<usize>(), 8);
    assert!(report["trace_g"]["mean"].as_f64().unwrap() > 0.0);
    assert!(image::open(&plot).is_ok());
}

#[test]
fn inspect_rejects_bad_requests_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let dense = dir.path().join("g.npy");
    let two = leafwalk(
        &[
            "inspect",
            "--ref",
            "mnist:test:1",
            "--image",
            "models/samples/mnist-1.png",
            "--full-g",
            dense.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(failure(&two).contains("--full-g writes the G of one input"));
    assert!(!dense.exists());
    let e = failure(&leafwalk(&["inspect", "--ref", "mnist:test"], dir.path()));
    assert!(e.contains("mnist:test"), "{e}");
    let e = failure(&leafwalk(&["inspect"], dir.path()));
    assert!(e.contains("nothing to inspect"), "{e}");
}

#[test]
fn path_writes_gif_strip_and_log_and_reports_how_it_ended() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("walk");
    let (from, to) = ("models/samples/mnist-1.png", "models/samples/mnist-7.png");
    let output = leafwalk(
        &[
            "path",
            "--from",
            from,
            "--to",
            to,
            "--integrator",
            "euler",
            "--max-steps",
            "4",
            "--json",
            "--out",
            out.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_eq!(output.status.code(), Some(3), "{}", String::from_utf8_lossy(&output.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        (summary["reached"].as_bool(), summary["steps"].as_u64(), summary["jacobian_evals"].as_u64()),
        (Some(false), Some(4), Some(4))
    );
    assert!(summary["final_distance"].as_f64().unwrap() < summary["start_distance"].as_f64().unwrap());
    assert_eq!(files_in(&out), ["path.gif", "path.jsonl", "strip.png"]);
    let log = std::fs::read_to_string(out.join("path.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 5);
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(first["prediction"], "1");
    assert!(first["trace_g"].as_f64().unwrap() > 0.0);
    let gif = image::open(out.join("path.gif")).unwrap();
    assert_eq!((gif.width(), gif.height()), (124, 142)); // 28×4 pixels plus margins and a caption
                                                         // A second walk into the same folder is refused and leaves the first intact.
    let again = leafwalk(&["path", "--from", from, "--to", to, "--out", out.to_str().unwrap()], dir.path());
    assert!(failure(&again).contains("already holds a path"));
    assert_eq!(std::fs::read_to_string(out.join("path.jsonl")).unwrap(), log);
    // Within the threshold from the start: reached at once, exit 0.
    let near = dir.path().join("near");
    let output = leafwalk(
        &["path", "--from", from, "--to", to, "--threshold", "1000", "--out", near.to_str().unwrap()],
        dir.path(),
    );
    assert!(output.status.success());
}

#[test]
fn noise_walk_keeps_the_prediction_and_is_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str| {
        let out = dir.path().join(name);
        let output = leafwalk(
            &[
                "walk",
                "--from",
                "models/samples/mnist-4.png",
                "--steps",
                "30",
                "--seed",
                "5",
                "--json",
                "--out",
                out.to_str().unwrap(),
            ],
            dir.path(),
        );
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        (summary, std::fs::read_to_string(out.join("path.jsonl")).unwrap())
    };
    let (summary, log) = run("a");
    assert_eq!(summary["prediction_start"], "4");
    assert_eq!(summary["prediction_end"], "4");
    assert!(summary["distance_from_start"].as_f64().unwrap() > 1.0);
    assert_eq!(log, run("b").1, "same seed, same walk");
}

#[test]
fn path_batches_pairs_into_one_loop_and_saves_points() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("pairs.csv");
    std::fs::write(&csv, "from,to\nmodels/samples/mnist-1.png,models/samples/mnist-7.png\nmnist:test:4,mnist:test:4\n")
        .unwrap();
    tiny_mnist(dir.path());
    let out = dir.path().join("batch");
    let args = ["path", "--pairs", csv.to_str().unwrap(), "--max-steps", "5", "--save-points", "points.safetensors"];
    let output = leafwalk(&[&args[..], &["--json", "--out", out.to_str().unwrap()]].concat(), dir.path());
    assert_eq!(output.status.code(), Some(3), "{}", String::from_utf8_lossy(&output.stderr));
    let summaries: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!((summaries[0]["ending"].as_str(), summaries[0]["steps"].as_u64()), (Some("step_limit"), Some(5)));
    assert_eq!((summaries[1]["reached"].as_bool(), summaries[1]["steps"].as_u64()), (Some(true), Some(0)));
    let table = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    assert_eq!(table.lines().count(), 3);
    assert!(table.starts_with("from,to,out,reached,ending,steps,jacobian_evals"));
    assert_eq!(files_in(&out), ["pair-000", "pair-001", "summary.csv"]);
    assert_eq!(files_in(&out.join("pair-000")), ["path.gif", "path.jsonl", "points.safetensors", "strip.png"]);
    let (points, _) = checkpoint::read(&out.join("pair-000/points.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(points["points"].dims(), [6, 1, 28, 28]);
    assert_eq!(points["distance"].dims(), [6]);
    // The batch is refused a second time; nothing is overwritten.
    let again = leafwalk(&[&args[..], &["--out", out.to_str().unwrap()]].concat(), dir.path());
    assert!(failure(&again).contains("summary.csv"));
    assert_eq!(std::fs::read_to_string(out.join("summary.csv")).unwrap(), table);
}

#[test]
fn path_rejects_bad_input_and_keeps_what_a_divergent_walk_computed() {
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let path = |extra: &[&str], folder: &str| {
        let mut args = vec!["path", "--max-steps", "3"];
        args.extend_from_slice(extra);
        let folder = out(folder);
        args.extend_from_slice(&["--out", &folder]);
        leafwalk(&args, dir.path())
    };
    let (one, seven) = ("models/samples/mnist-1.png", "models/samples/mnist-7.png");

    let colour = dir.path().join("colour.png");
    image::RgbImage::from_pixel(32, 32, image::Rgb([200, 30, 30])).save(&colour).unwrap();
    let e = failure(&path(&["--from", colour.to_str().unwrap(), "--to", seven], "colour"));
    assert!(e.contains("colour.png") && e.contains("3x32x32") && e.contains("--resize"), "{e}");
    assert!(!dir.path().join("colour").exists());
    let resized = path(&["--from", colour.to_str().unwrap(), "--to", seven, "--resize"], "resized");
    assert_eq!(resized.status.code(), Some(3), "{}", String::from_utf8_lossy(&resized.stderr));

    let e = failure(&path(&["--from", "Cargo.toml", "--to", seven], "text"));
    assert!(e.contains("Cargo.toml"), "{e}");
    for bad in ["0", "-1", "NaN", "inf"] {
        let e = failure(&path(&["--from", one, "--to", seven, &format!("--step-size={bad}")], "step"));
        assert!(e.contains("--step-size"), "{e}");
    }
    assert!(!dir.path().join("step").exists());

    let e = failure(&path(&["--from", one, "--to", seven, "--save-points", "Cargo.toml"], "points"));
    assert!(e.contains("Cargo.toml: already exists"), "{e}");

    let same = path(&["--from", one, "--to", one, "--json"], "same");
    assert!(same.status.success());
    let summary: serde_json::Value = serde_json::from_slice(&same.stdout).unwrap();
    assert_eq!((summary["reached"].as_bool(), summary["steps"].as_u64()), (Some(true), Some(0)));

    // NaN in the last bias: the very first Jacobian is not finite.
    let good = leafwalk_models::Classifier::load(
        &repo("models/mnist-cnn.safetensors"),
        leafwalk_models::LoadOptions::default(),
        &Device::Cpu,
    )
    .unwrap();
    let tensors: Vec<(String, Tensor)> = good
        .named_tensors()
        .into_iter()
        .map(|(n, t)| if n == "fc2.bias" { (n, (t * f64::NAN).unwrap()) } else { (n, t) })
        .collect();
    let broken = dir.path().join("nan.safetensors");
    checkpoint::write(&broken, &tensors, good.meta().to_metadata()).unwrap();
    let e = failure(&path(&["--from", one, "--to", seven, "--model", broken.to_str().unwrap()], "nan"));
    assert!(e.contains("diverged at step 0") && e.contains("not finite"), "{e}");
    assert_eq!(files_in(&dir.path().join("nan")), ["path.gif", "path.jsonl", "strip.png"]);
}

#[test]
fn noise_leaf_paths_are_reproducible_from_their_seed() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, seed: &str| {
        let out = dir.path().join(name);
        let args = [
            "path",
            "--from",
            "models/samples/mnist-3.png",
            "--to",
            "models/samples/mnist-8.png",
            "--leaf",
            "noise",
            "--noise-steps",
            "10",
            "--max-steps",
            "5",
            "--seed",
            seed,
            "--threads",
            "1",
            "--json",
            "--out",
            out.to_str().unwrap(),
        ];
        let output = leafwalk(&args, dir.path());
        assert_eq!(output.status.code(), Some(3), "{}", String::from_utf8_lossy(&output.stderr));
        let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!((summary["leaf"].as_str(), summary["steps"].as_u64()), (Some("noise"), Some(15)));
        std::fs::read_to_string(out.join("path.jsonl")).unwrap()
    };
    let first = run("a", "3");
    assert_eq!(first, run("b", "3"), "same seed, same path");
    assert_ne!(first, run("c", "4"), "another seed, another noise leaf");
}

#[test]
fn eval_paths_reports_each_strategy_against_interpolation() {
    let dir = tempfile::tempdir().unwrap();
    tiny_mnist(dir.path());
    let out = dir.path().join("eval");
    let args = [
        "eval-paths",
        "--pairs",
        "3",
        "--seed",
        "1",
        "--max-steps",
        "15",
        "--with-via",
        "--via-candidates",
        "1",
        "--via-rounds",
        "1",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ];
    let output = leafwalk(&args, dir.path());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for strategy in ["euler", "adaptive", "adaptive+via"] {
        assert_eq!(report[strategy]["pairs"], 3, "{strategy}");
    }
    for images in ["linear_interpolation", "adaptive_path_images"] {
        assert_eq!(report[images]["images"], 27);
        let p = report[images]["mean_max_probability"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&p));
    }
    assert_eq!(files_in(&out), ["eval-paths.json", "paths.png"]);
    let e = failure(&leafwalk(&["eval-paths", "--data", "mnist:test:3", "--out", out.to_str().unwrap()], dir.path()));
    assert!(e.contains("mnist:test:3"), "{e}");
}

/// eval-paths over three shards, merged: the report and sheet of one process (the strategies'
/// wall-clock seconds apart).
#[test]
fn eval_paths_shards_merge_into_the_unsharded_report() {
    let dir = tempfile::tempdir().unwrap();
    tiny_mnist(dir.path());
    let root = dir.path();
    let path = |name: &str| root.join(name).to_str().unwrap().to_string();
    let run = |extra: &[&str], out: &str| {
        let mut args = vec!["eval-paths", "--pairs", "5", "--seed", "2", "--max-steps", "12", "--out", out];
        args.extend(extra);
        let output = leafwalk(&args, root);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    };
    run(&[], &path("whole"));
    for shard in ["1/3", "2/3", "3/3"] {
        run(&["--shard", shard], &path("parts"));
    }
    let parts: Vec<String> = (1..=3).map(|k| path(&format!("parts/eval-paths-shard-{k}-of-3.json"))).collect();
    let merged = path("merged");
    let output = leafwalk(
        &[&["merge", "--out", &merged][..], &parts.iter().map(String::as_str).collect::<Vec<_>>()].concat(),
        root,
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report = |dir: &str| {
        let mut report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join(dir).join("eval-paths.json")).unwrap()).unwrap();
        for strategy in ["euler", "adaptive"] {
            assert!(report[strategy]["seconds"].as_f64().unwrap() > 0.0);
            report[strategy]["seconds"] = serde_json::Value::Null;
        }
        report
    };
    assert_eq!(report("merged"), report("whole"));
    assert_eq!(report("whole")["adaptive"]["pairs"], 5);
    let sheet = |dir: &str| std::fs::read(root.join(dir).join("paths.png")).unwrap();
    assert!(sheet("merged") == sheet("whole"), "the merged sheet differs");
    run(&["--shard", "2/3", "--step-size", "0.5"], &path("other"));
    let other = path("other/eval-paths-shard-2-of-3.json");
    let e = failure(&leafwalk(&["merge", "--out", &path("m2"), &parts[0], &other, &parts[2]], root));
    assert!(e.contains("another run"), "{e}");
}

/// Four shards of an eval-ood run, merged, give the report the whole run gives: statistics come
/// from the merged per-image scores.
#[test]
fn eval_ood_shards_merge_into_the_unsharded_report() {
    let dir = tempfile::tempdir().unwrap();
    tiny_mnist(dir.path());
    let root = dir.path();
    let path = |name: &str| root.join(name).to_str().unwrap().to_string();
    let run = |extra: &[&str], out: &str| {
        let mut args = vec!["eval-ood", "--ood", "noise:uniform,transform:invert", "--scores", "all", "--limit", "20"];
        args.extend(["--max-steps", "10", "--anchors", "1", "--out", out]);
        args.extend(extra);
        let output = leafwalk(&args, root);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    };
    run(&[], &path("whole"));
    let shards: Vec<String> = (1..=4).map(|k| format!("{k}/4")).collect();
    for shard in &shards {
        run(&["--shard", shard], &path("parts"));
    }
    let parts: Vec<String> = (1..=4).map(|k| path(&format!("parts/eval-ood-shard-{k}-of-4.json"))).collect();
    let merged = path("merged");
    let mut merge = vec!["merge", "--out", &merged];
    merge.extend(parts.iter().rev().map(String::as_str));
    let output = leafwalk(&merge, root);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let read = |dir: &str| std::fs::read_to_string(root.join(dir).join("eval-ood.json")).unwrap();
    assert_eq!(read("merged"), read("whole"));
    assert_eq!(files_in(&root.join("merged")), files_in(&root.join("whole")));

    // Missing or doubled shards, or a shard of another run: one line, nothing written.
    let m2 = path("m2");
    let e = failure(&leafwalk(&["merge", "--out", &m2, &parts[0], &parts[1], &parts[2]], root));
    assert!(e.contains("3 of 4 shards"), "{e}");
    let e = failure(&leafwalk(&["merge", "--out", &m2, &parts[0], &parts[0], &parts[2], &parts[3]], root));
    assert!(e.contains("every shard once"), "{e}");
    run(&["--shard", "2/4", "--seed", "7"], &path("other"));
    let other = path("other/eval-ood-shard-2-of-4.json");
    let e = failure(&leafwalk(&["merge", "--out", &m2, &parts[0], &other, &parts[2], &parts[3]], root));
    assert!(e.contains("another run"), "{e}");
    let msp = path("msp");
    let only_msp = ["eval-ood", "--ood", "noise:uniform,transform:invert", "--scores", "msp", "--limit", "20"];
    let output = leafwalk(&[&only_msp[..], &["--shard", "2/4", "--out", &msp]].concat(), root);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let other = path("msp/eval-ood-shard-2-of-4.json");
    let e = failure(&leafwalk(&["merge", "--out", &m2, &parts[0], &other, &parts[2], &parts[3]], root));
    assert!(e.contains("another run"), "{e}");
    assert!(!root.join("m2").join("eval-ood.json").exists());
}

/// `inspect --data` in three shards, merged: the summary one process prints.
#[test]
fn inspect_data_shards_merge_into_the_unsharded_summary() {
    let dir = tempfile::tempdir().unwrap();
    tiny_mnist(dir.path());
    let root = dir.path();
    let path = |name: &str| root.join(name).to_str().unwrap().to_string();
    let whole = leafwalk(&["inspect", "--data", "mnist:test", "--limit", "20", "--json"], root);
    assert!(whole.status.success(), "{}", String::from_utf8_lossy(&whole.stderr));
    let parts = path("parts");
    for shard in ["1/3", "2/3", "3/3"] {
        let output =
            leafwalk(&["inspect", "--data", "mnist:test", "--limit", "20", "--shard", shard, "--out", &parts], root);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    let files: Vec<String> = (1..=3).map(|k| path(&format!("parts/inspect-shard-{k}-of-3.json"))).collect();
    let merged = path("merged");
    let mut args = vec!["merge", "--out", &merged];
    args.extend(files.iter().map(String::as_str));
    let output = leafwalk(&args, root);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let whole: serde_json::Value = serde_json::from_slice(&whole.stdout).unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("merged/inspect.json")).unwrap()).unwrap();
    assert_eq!(report, whole);
    assert_eq!(files_in(&root.join("merged")), ["inspect.json", "spectrum.png"]);
    let e =
        failure(&leafwalk(&["inspect", "--data", "mnist:test", "--shard", "1/2", "--fisher", "--out", &parts], root));
    assert!(e.contains("--fisher"), "{e}");
    let e = failure(&leafwalk(&["merge", "--out", &path("m2"), &files[0], &path("parts")], root));
    assert!(e.contains("cannot read") || e.contains("not a leafwalk shard file"), "{e}");
}

#[test]
fn ood_commands_score_evaluate_and_reject_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    tiny_mnist(dir.path());
    let root = dir.path();
    let path = |name: &str| root.join(name).to_str().unwrap().to_string();
    let quick = ["--max-steps", "10", "--anchors", "1"];

    let csv = path("scores.csv");
    let mut args = vec!["ood-score", "--inputs", "mnist:test:0", "mnist:test:1", "--score", "leaf-distance,msp"];
    args.extend(quick);
    args.extend(["--out", &csv, "--json"]);
    let output = leafwalk(&args, root);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    assert!(rows[0]["leaf-distance"].as_f64().unwrap() >= 0.0 && rows[0]["msp"].as_f64().unwrap() < 0.0);
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(text.lines().next(), Some("name,prediction,probability,leaf-distance,msp"));
    assert_eq!(text.lines().count(), 3);

    let out = root.join("eval");
    let mut args = vec!["eval-ood", "--ood", "noise:uniform,transform:invert", "--scores", "msp,leaf-distance"];
    args.extend(quick);
    args.extend(["--limit", "6", "--out", out.to_str().unwrap()]);
    let output = leafwalk(&args, root);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("| leaf-distance |"));
    assert_eq!(files_in(&out), ["eval-ood.json", "eval-ood.md", "roc-noise-uniform.png", "roc-transform-invert.png"]);
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("eval-ood.json")).unwrap()).unwrap();
    for set in report["sets"].as_array().unwrap() {
        let auroc = set["scores"]["leaf-distance"]["auroc"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&auroc), "{auroc}");
    }
    let e = failure(&leafwalk(&args, root));
    assert!(e.contains("already holds an eval-ood.json"), "{e}");

    // Bad input: one line naming the problem, nothing written.
    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let bad_csv = path("bad.csv");
    let score = |inputs: &str, extra: &[&str]| {
        let mut args = vec!["ood-score", "--inputs", inputs, "--out", &bad_csv];
        args.extend(extra);
        leafwalk(&args, root)
    };
    let e = failure(&score(empty.to_str().unwrap(), &[]));
    assert!(e.contains("no images") && e.contains("empty"), "{e}");
    let idx = root.join("big-images.idx");
    let mut bytes = vec![0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 32, 0, 0, 0, 32];
    bytes.extend([0u8; 32 * 32]);
    std::fs::write(&idx, bytes).unwrap();
    let e = failure(&score(idx.to_str().unwrap(), &[]));
    assert!(e.contains("big-images.idx") && e.contains("1x32x32"), "{e}");
    let e = failure(&score("mnist:test:0", &["--score", "bogus"]));
    assert!(e.contains("bogus"), "{e}");
    let e = failure(&score("mnist:test:0", &["--limit", "0"]));
    assert!(e.contains("--limit"), "{e}");
    let e = failure(&leafwalk(&["eval-ood", "--ood", "noise:pink", "--out", &path("e2")], root));
    assert!(e.contains("noise:pink"), "{e}");
    assert!(!root.join("bad.csv").exists() && !root.join("e2").join("eval-ood.json").exists());
}

#[test]
fn denoise_commands_write_images_and_tables_and_reject_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    tiny_mnist(dir.path());
    let root = dir.path();
    let out = root.join("denoised");
    let quick = ["--max-steps", "10", "--anchors", "1"];
    let mut args = vec!["denoise", "--inputs", "mnist:test:0", "mnist:test:1", "--out", out.to_str().unwrap()];
    args.extend(quick);
    let output = leafwalk(&args, root);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(files_in(&out), ["000-denoised.png", "001-denoised.png", "sheet.png"]);
    let e = failure(&leafwalk(&args, root));
    assert!(e.contains("already holds a sheet.png"), "{e}");

    let eval = root.join("eval");
    let mut args =
        vec!["eval-denoise", "--limit", "4", "--tune-images", "4", "--sigma", "0.3", "--out", eval.to_str().unwrap()];
    args.extend(quick);
    let output = leafwalk(&args, root);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let table = String::from_utf8_lossy(&output.stdout).to_string();
    let methods = ["noisy input", "Gaussian blur", "3×3 median", "PCA", "nearest training images", "first-order leaf"];
    for method in methods.into_iter().chain(["leaf projection (walks)"]) {
        assert!(table.contains(method), "{method} missing from {table}");
    }
    assert_eq!(files_in(&eval), ["eval-denoise.json", "eval-denoise.md", "sheet-sigma0.3.png"]);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(eval.join("eval-denoise.json")).unwrap()).unwrap();
    let walked =
        report["levels"][0]["methods"].as_array().unwrap().iter().find(|m| m["method"] == "leaf projection (walks)");
    let psnr = walked.unwrap()["psnr_db"].as_f64().unwrap();
    assert!(psnr.is_finite() && psnr > 0.0, "{psnr}");

    let bad = root.join("bad").to_str().unwrap().to_string();
    for (sigma, needle) in [("-0.1", "σ ≥ 0"), ("0.3,x", "\"x\" is not a number"), ("nan", "σ ≥ 0")] {
        let e = failure(&leafwalk(&["eval-denoise", "--sigma", sigma, "--out", &bad], root));
        assert!(e.contains(needle), "{e}");
    }
    let e = failure(&leafwalk(
        &["denoise", "--inputs", root.join("nothing-here.png").to_str().unwrap(), "--out", &bad],
        root,
    ));
    assert!(e.contains("nothing-here.png"), "{e}");
    assert!(!root.join("bad").exists(), "nothing written on bad input");
}

/// eval-denoise over two shards, merged: the report, table and sheet of one process (the leaf
/// projection's seconds apart).
#[test]
fn eval_denoise_shards_merge_into_the_unsharded_report() {
    let dir = tempfile::tempdir().unwrap();
    tiny_mnist(dir.path());
    let root = dir.path();
    let path = |name: &str| root.join(name).to_str().unwrap().to_string();
    let run = |extra: &[&str], out: &str| {
        let mut args = vec!["eval-denoise", "--limit", "5", "--tune-images", "4", "--sigma", "0.2,0.4"];
        args.extend(["--max-steps", "8", "--anchors", "1", "--out", out]);
        args.extend(extra);
        let output = leafwalk(&args, root);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    };
    run(&[], &path("whole"));
    for shard in ["1/2", "2/2"] {
        run(&["--shard", shard], &path("parts"));
    }
    let parts: Vec<String> = (1..=2).map(|k| path(&format!("parts/eval-denoise-shard-{k}-of-2.json"))).collect();
    let output = leafwalk(&["merge", "--out", &path("merged"), &parts[1], &parts[0]], root);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report = |dir: &str| {
        let mut report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join(dir).join("eval-denoise.json")).unwrap()).unwrap();
        for level in report["levels"].as_array_mut().unwrap() {
            level["leaf_seconds"] = serde_json::Value::Null;
        }
        report
    };
    assert_eq!(report("merged"), report("whole"));
    assert_eq!(report("whole")["images"], 5);
    assert_eq!(files_in(&root.join("merged")), files_in(&root.join("whole")));
    for file in ["eval-denoise.md", "sheet-sigma0.2.png", "sheet-sigma0.4.png"] {
        let read = |dir: &str| std::fs::read(root.join(dir).join(file)).unwrap();
        assert!(read("merged") == read("whole"), "{file} differs");
    }
    run(&["--shard", "2/2", "--seed", "3"], &path("other"));
    let other = path("other/eval-denoise-shard-2-of-2.json");
    let e = failure(&leafwalk(&["merge", "--out", &path("m2"), &parts[0], &other], root));
    assert!(e.contains("another run"), "{e}");
}

#[test]
fn generate_keeps_the_label_and_compare_measures_two_splits() {
    let dir = tempfile::tempdir().unwrap();
    tiny_mnist(dir.path());
    let root = dir.path();
    let out = root.join("gen");
    let args = [
        "generate",
        "--from",
        "mnist:test:3",
        "--count",
        "3",
        "--steps",
        "5",
        "--seed",
        "2",
        "--out",
        out.to_str().unwrap(),
    ];
    let output = leafwalk(&args, root);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(files_in(&out), ["generate.json", "grid.png"]);
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("generate.json")).unwrap()).unwrap();
    let label = report["label"].as_str().unwrap().to_string();
    assert!(report["images"].as_array().unwrap().iter().all(|i| i["prediction"] == label.as_str()));
    let rate = report["label_preservation_rate"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&rate) && report["mean_pairwise_distance"].as_f64().unwrap() >= 0.0);
    let e = failure(&leafwalk(&args, root));
    assert!(e.contains("already holds a generate.json"), "{e}");
    let e = failure(&leafwalk(
        &["generate", "--from", "mnist:test:3", "--step-size", "0", "--out", out.to_str().unwrap()],
        root,
    ));
    assert!(e.contains("--step-size"), "{e}");

    let out = root.join("cmp");
    let args = ["compare", "--a", "mnist:test", "--b", "mnist:train", "--limit", "10", "--out", out.to_str().unwrap()];
    let output = leafwalk(&args, root);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(files_in(&out), ["compare.json", "spectrum.png"]);
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("compare.json")).unwrap()).unwrap();
    assert!(report["distance_decades"].as_f64().unwrap() >= 0.0);
    assert_eq!(report["w1_per_eigenvalue_decades"].as_array().unwrap().len(), 9);
    let e = failure(&leafwalk(&["compare", "--a", "mnist:test:1", "--out", root.join("c2").to_str().unwrap()], root));
    assert!(e.contains("mnist:test:1"), "{e}");
}

/// The paper's mirrored-digit path: the target is the start mirrored left to right.
#[test]
fn path_to_the_mirrored_start() {
    let dir = tempfile::tempdir().unwrap();
    tiny_mnist(dir.path());
    let out = dir.path().join("mirrored");
    let args = ["path", "--from", "mnist:test:3", "--to-flipped", "--max-steps", "4", "--json", "--out"];
    let output = leafwalk(&[&args[..], &[out.to_str().unwrap()]].concat(), dir.path());
    assert!(matches!(output.status.code(), Some(0 | 3)), "{}", String::from_utf8_lossy(&output.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["to"], "mnist:test:3, mirrored");
    assert!(summary["start_distance"].as_f64().unwrap() > 0.0, "tiny_mnist's digits are not symmetric");
    let both =
        leafwalk(&["path", "--from", "mnist:test:3", "--to", "mnist:test:4", "--to-flipped", "--out", "x"], dir.path());
    assert!(!both.status.success());
}

/// `--activation`, `--pooling` and `--snapshot-at` make a variant of a built-in, recorded in
/// every checkpoint, with a snapshot at the start and one inside the first epoch.
#[test]
fn train_variants_and_snapshots_inside_an_epoch() {
    let dir = tempfile::tempdir().unwrap();
    tiny_mnist(dir.path());
    let out = dir.path().join("run");
    let args = [
        "train",
        "--arch",
        "mnist-cnn",
        "--activation",
        "gelu",
        "--pooling",
        "avg",
        "--snapshot-at",
        "0,0.5",
        "--epochs",
        "1",
        "--batch-size",
        "20",
        "--reference-size",
        "0",
        "--out",
        out.to_str().unwrap(),
    ];
    let output = leafwalk(&args, dir.path());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let files = files_in(&out);
    for name in ["epoch-00.safetensors", "epoch-00.50.safetensors", "epoch-01.safetensors"] {
        assert!(files.contains(&name.to_string()), "{name} missing from {files:?}");
    }
    let half = Classifier::load(&out.join("epoch-00.50.safetensors"), Default::default(), &Device::Cpu).unwrap();
    assert!(half.meta().step >= 1 && half.meta().step < 3, "step {}", half.meta().step);
    assert!(half.meta().extra["variant"].contains("pooling=avg"), "{:?}", half.meta().extra);
    let bad = leafwalk(
        &[&args[..13], &["--snapshot-at", "1", "--out", dir.path().join("b").to_str().unwrap()]].concat(),
        dir.path(),
    );
    assert!(!bad.status.success());
    assert!(!dir.path().join("b").join("epoch-01.safetensors").exists());
}

/// A two-row study on the tiny dataset: rows, report, table and figures are written, a row
/// reruns alone from its checkpoint, and bad configs fail in one line naming the file.
#[test]
fn study_measures_a_grid_and_reruns_one_row() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    tiny_mnist(root);
    let evaluator = root.join("evaluator");
    let trained = leafwalk(
        &["train", "--arch", "mlp", "--epochs", "1", "--batch-size", "20", "--out", evaluator.to_str().unwrap()],
        root,
    );
    assert!(trained.status.success(), "{}", String::from_utf8_lossy(&trained.stderr));
    let config = root.join("grid.toml");
    std::fs::write(
        &config,
        "pairs = 2\neuler_max_steps = 20\nintegrability_points = 1\nintegrability_pairs = 2\n\
         [evaluators]\nmnist = \"evaluator/epoch-01.safetensors\"\n\
         [[family]]\nname = \"tiny\"\ndataset = \"mnist\"\narch = \"mlp\"\nactivation = \"tanh\"\nstages = [0, 1]\n",
    )
    .unwrap();
    let out = root.join("study");
    let study = |extra: &[&str]| {
        let args = ["study", "--config", config.to_str().unwrap(), "--out", out.to_str().unwrap()];
        leafwalk(&[&args[..], extra].concat(), root)
    };
    let output = study(&["--json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        for key in ["data_euler", "data_adaptive", "noise_adaptive"] {
            assert_eq!(row[key]["pairs"], 2, "{key}");
            assert!(row[key]["median_closure"].as_f64().unwrap() >= 0.0);
        }
        let frames = &row["data_adaptive"]["frames"];
        assert!((0.0..=1.0).contains(&frames["confident_fraction"].as_f64().unwrap()));
        assert!(row["linear_frames"]["mean_nearest_training_distance_px"].as_f64().unwrap() >= 0.0);
        assert!(row["command"].as_str().unwrap().contains("--only"));
    }
    assert_eq!(rows[0]["name"], "tiny@0");
    for file in ["study.json", "study.md", "study-closure.png", "study-frames.png"] {
        assert!(out.join(file).exists(), "{file}");
    }
    assert_eq!(files_in(&out.join("rows")), ["tiny@0.json", "tiny@1.json"]);
    // One row again: measured from its checkpoint, not retrained; the report keeps both rows.
    let again = study(&["--only", "tiny@1"]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert!(!String::from_utf8_lossy(&again.stderr).contains("training"));
    assert!(String::from_utf8_lossy(&again.stdout).contains("tiny@0"));
    let e = failure(&study(&["--only", "tiny@3"]));
    assert!(e.contains("tiny@3"), "{e}");

    // Two shards on two "machines" (folders; each trains what its rows need), merged: the rows
    // one process measured, timings and paths apart.
    let folder = |name: &str| root.join(name).to_str().unwrap().to_string();
    for (shard, dir) in [("1/2", "study-a"), ("2/2", "study-b")] {
        let args = ["study", "--config", config.to_str().unwrap(), "--shard", shard, "--out", &folder(dir)];
        let output = leafwalk(&args, root);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    let parts = [folder("study-a/study-shard-1-of-2.json"), folder("study-b/study-shard-2-of-2.json")];
    let output = leafwalk(&["merge", "--out", &folder("study-m"), &parts[1], &parts[0]], root);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let rows = |dir: &Path| {
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("study.json")).unwrap()).unwrap();
        // Timings (at any depth) and the shard's own paths vary.
        fn strip(value: &mut serde_json::Value) {
            if let Some(object) = value.as_object_mut() {
                for varies in ["seconds", "train_seconds_family", "checkpoint", "command"] {
                    object.remove(varies);
                }
                object.values_mut().for_each(strip);
            }
            if let Some(array) = value.as_array_mut() {
                array.iter_mut().for_each(strip);
            }
        }
        let mut rows = report["rows"].clone();
        strip(&mut rows);
        rows
    };
    assert_eq!(rows(&root.join("study-m")), rows(&out));
    assert_eq!(files_in(&root.join("study-m").join("rows")), ["tiny@0.json", "tiny@1.json"]);
    std::fs::write(&config, "pairs = 2\neuler_max_steps = 20\nwalks = 3\n[evaluators]\n[[family]]\n").unwrap();
    let e = failure(&study(&[]));
    assert!(e.contains("grid.toml"), "{e}");
}

/// A write that fails for lack of space (here the file-size limit, `ulimit -f`, with SIGXFSZ
/// ignored so the write returns an error as on a full disk) ends the run with one line and
/// loses nothing: the previous checkpoints stay as they were, no temporary file is left, and
/// the run resumes once there is room.
#[test]
fn a_full_disk_ends_training_cleanly_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    tiny_mnist(dir.path());
    let out = dir.path().join("run");
    let out_arg = out.to_str().unwrap();
    let train = ["train", "--arch", "mnist-cnn", "--batch-size", "20", "--reference-size", "0", "--out", out_arg];
    let first = leafwalk(&[&train[..], &["--epochs", "1"]].concat(), dir.path());
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let before: Vec<(String, Vec<u8>)> =
        files_in(&out).into_iter().map(|name| (name.clone(), std::fs::read(out.join(&name)).unwrap())).collect();
    // 2 MB: the log fits, a 4.8 MB checkpoint does not.
    let limited = std::process::Command::new("bash")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 2048; exec \"$@\"")
        .arg("bash")
        .arg(env!("CARGO_BIN_EXE_leafwalk"))
        .args(train)
        .args(["--epochs", "2", "--resume", "--data-root"])
        .arg(dir.path())
        .current_dir(repo(""))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&limited.stderr);
    assert!(!limited.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("leafwalk: error: ") && last.contains("run"), "{stderr}");
    for (name, bytes) in &before {
        if name.ends_with(".safetensors") {
            assert_eq!(&std::fs::read(out.join(name)).unwrap(), bytes, "{name} changed");
        }
    }
    let after = files_in(&out);
    assert!(!after.iter().any(|n| n.ends_with(".tmp")), "{after:?}");
    assert!(!after.contains(&"epoch-02.safetensors".to_string()), "{after:?}");
    let resumed = leafwalk(&[&train[..], &["--epochs", "2", "--resume"]].concat(), dir.path());
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    assert!(out.join("epoch-02.safetensors").exists());
}
