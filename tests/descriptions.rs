//! Every command on models other than the paper's mnist-cnn: a resnet with batch norm trained by
//! leafwalk, a PyTorch `state_dict` loaded with `--arch` and normalisation flags, and fresh
//! models of any size from `leafwalk init`.

mod common;

use std::path::Path;

use common::{failure, files_in, leafwalk, repo, tiny_mnist};

fn succeed(args: &[&str], root: &Path) -> serde_json::Value {
    let output = leafwalk(args, root);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{args:?}: {stderr}");
    serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null)
}

#[test]
fn every_command_runs_on_a_resnet_trained_here() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    tiny_mnist(root);
    let path = |name: &str| root.join(name).to_str().unwrap().to_string();
    let run = path("run");
    let summary = succeed(
        &["train", "--arch", "resnet-mini", "--epochs", "1", "--batch-size", "20", "--reference-size", "10"]
            .into_iter()
            .chain(["--json", "--out", &run])
            .collect::<Vec<_>>(),
        root,
    );
    assert_eq!(summary["epochs"][0]["epoch"], 1);
    let model = path("run/epoch-01.safetensors");
    let with_model = |args: &[&str]| -> Vec<String> {
        args.iter().map(|a| a.to_string()).chain(["--model".to_string(), model.clone()]).collect()
    };
    let call = |args: &[&str]| {
        let args = with_model(args);
        succeed(&args.iter().map(String::as_str).collect::<Vec<_>>(), root)
    };
    let quick = ["--max-steps", "8"];

    let report = call(&["inspect", "--ref", "mnist:test:3", "--json", "--leaf-basis", &path("basis.safetensors")]);
    assert!(report[0]["trace_g"].as_f64().unwrap() > 0.0);
    assert_eq!(report[0]["leaf_basis"]["vectors"], report[0]["rank"]);
    call(&["inspect", "--data", "mnist:test", "--limit", "6", "--json"]);
    // A walk that does not reach its target exits with 3, having written its path.
    let walked = leafwalk(
        &with_model(&[
            "path",
            "--from",
            "mnist:test:0",
            "--to",
            "mnist:test:1",
            "--max-steps",
            "8",
            "--out",
            &path("path"),
        ])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
        root,
    );
    assert!(matches!(walked.status.code(), Some(0 | 3)), "{}", String::from_utf8_lossy(&walked.stderr));
    assert_eq!(files_in(&root.join("path")), ["path.gif", "path.jsonl", "strip.png"]);
    call(&[
        "walk",
        "--from",
        "mnist:test:3",
        "--direction",
        "random",
        "--subspace",
        "kernel",
        "--steps",
        "5",
        "--out",
        &path("walk"),
    ]);
    let mut ood = vec![
        "ood-score",
        "--inputs",
        "mnist:test:0",
        "--score",
        "leaf-distance,trace,mahalanobis,msp",
        "--anchors",
        "1",
        "--json",
    ];
    ood.extend(quick);
    let scores = call(&ood);
    assert!(scores[0]["leaf-distance"].as_f64().unwrap() >= 0.0);
    let (eval_ood, denoised, eval_denoise) = (path("eval-ood"), path("denoised"), path("eval-denoise"));
    let mut eval =
        vec!["eval-ood", "--ood", "noise:uniform", "--scores", "msp,trace", "--limit", "4", "--out", &eval_ood];
    eval.extend(quick);
    call(&eval);
    let mut denoise = vec!["denoise", "--inputs", "mnist:test:2", "--anchors", "1", "--out", &denoised];
    denoise.extend(quick);
    call(&denoise);
    let mut eval = vec!["eval-denoise", "--limit", "3", "--tune-images", "3", "--sigma", "0.3", "--anchors", "1"];
    eval.extend(quick);
    eval.extend(["--out", &eval_denoise]);
    call(&eval);
    call(&["generate", "--from", "mnist:test:4", "--count", "2", "--steps", "3", "--out", &path("generate")]);
    call(&["compare", "--a", "mnist:test", "--b", "mnist:train", "--limit", "6", "--out", &path("compare")]);
    call(&["eval-paths", "--pairs", "2", "--max-steps", "6", "--json", "--out", &path("eval-paths")]);
}

#[test]
fn a_pytorch_state_dict_loads_with_arch_and_normalisation_flags() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let weights = repo("tests/fixtures/lenet5.safetensors");
    let weights = weights.to_str().unwrap();
    let flags = ["--model", weights, "--arch", "lenet5", "--mean", "0", "--std", "1"];
    let mut args = vec!["predict", "models/samples/mnist-7.png", "--json"];
    args.extend(flags);
    let rows = succeed(&args, root);
    assert_eq!(rows[0]["prediction"], "7");
    let mut args = vec!["inspect", "--image", "models/samples/mnist-3.png", "--json"];
    args.extend(flags);
    let report = succeed(&args, root);
    assert_eq!(report[0]["rank"], 9);

    // Without --arch a state_dict cannot be read; a normalisation of the wrong length, or one
    // for a model that carries its own, is refused.
    let e = failure(&leafwalk(&["predict", "models/samples/mnist-7.png", "--model", weights], root));
    assert!(e.contains("lenet5.safetensors") && e.contains("--arch"), "{e}");
    let mut args = vec!["predict", "models/samples/mnist-7.png", "--model", weights, "--arch", "lenet5"];
    args.extend(["--mean", "0,0", "--std", "1,1"]);
    let e = failure(&leafwalk(&args, root));
    assert!(e.contains("--mean has 2 values") && e.contains("1 channels"), "{e}");
    let e = failure(&leafwalk(&["predict", "models/samples/mnist-7.png", "--mean", "0", "--std", "1"], root));
    assert!(e.contains("mnist-cnn.safetensors") && e.contains("carries its normalisation"), "{e}");
    let e = failure(&leafwalk(
        &["predict", "models/samples/mnist-7.png", "--model", weights, "--arch", "resnet-mini"],
        root,
    ));
    assert!(e.contains("lenet5.safetensors") && e.contains("missing tensor"), "{e}");
}

#[test]
fn init_writes_fresh_models_of_any_size_and_inspect_takes_them() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let model = root.join("resnet18.safetensors");
    let model = model.to_str().unwrap();
    let args = ["init", "--arch", "resnet18", "--input", "3x48x48", "--classes", "30", "--seed", "3", "--out", model];
    succeed(&args, root);
    let e = failure(&leafwalk(&args, root));
    assert!(e.contains("already exists"), "{e}");
    let e =
        failure(&leafwalk(&["init", "--arch", "resnet18", "--input", "3x48", "--out", &format!("{model}.2")], root));
    assert!(e.contains("CxHxW"), "{e}");
    let e = failure(&leafwalk(
        &["init", "--arch", "cifar-vgg11", "--input", "3x8x8", "--out", &format!("{model}.3")],
        root,
    ));
    assert!(e.contains("does not fit"), "{e}");

    // An RGB image of the model's size, its G and leaf basis.
    let image = root.join("rgb.png");
    let pixels: Vec<u8> = (0..48 * 48 * 3).map(|i| (i * 37 % 251) as u8).collect();
    image::RgbImage::from_raw(48, 48, pixels).unwrap().save(&image).unwrap();
    let basis = root.join("basis.safetensors");
    let report = succeed(
        &[
            "inspect",
            "--model",
            model,
            "--image",
            image.to_str().unwrap(),
            "--json",
            "--leaf-basis",
            basis.to_str().unwrap(),
        ],
        root,
    );
    let (rank, eigenvalues) = (report[0]["rank"].as_u64().unwrap(), report[0]["eigenvalues_g"].as_array().unwrap());
    assert_eq!(eigenvalues.len(), 30);
    assert!(rank > 0 && rank <= 29);
    assert!(report[0]["leaf_basis"]["orthonormality_error_leading"].as_f64().unwrap() < 1e-5);
    let bytes = std::fs::read(&basis).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(file.tensor("basis.0").unwrap().shape(), [rank as usize, 3 * 48 * 48]);
    assert_eq!(file.tensor("eigenvalues.0").unwrap().shape(), [30]);
}

/// The Frobenius test on a smooth network (lenet5, tanh): the bracket is resolved — the same at
/// every finite-difference step — and far from symmetric: ker G⊥ is not integrable there.
#[test]
fn inspect_tests_whether_the_leaf_is_integrable() {
    let dir = tempfile::tempdir().unwrap();
    let weights = repo("tests/fixtures/lenet5.safetensors");
    let args =
        ["inspect", "--image", "models/samples/mnist-3.png", "--integrability", "--bracket-pairs", "8", "--json"];
    let flags = ["--model", weights.to_str().unwrap(), "--arch", "lenet5", "--mean", "0", "--std", "1"];
    let report = succeed(&[&args[..], &flags].concat(), dir.path());
    let levels = report[0]["integrability"].as_array().unwrap();
    assert_eq!(levels.len(), 3);
    let asymmetry: Vec<f64> = levels.iter().map(|l| l["mean_asymmetry"].as_f64().unwrap()).collect();
    assert!(asymmetry.iter().all(|&a| a > 0.2 && (a - asymmetry[2]).abs() < 0.01), "{asymmetry:?}");
}
