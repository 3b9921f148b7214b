//! What the end-to-end tests share: running the binary, judging its failures, a tiny dataset.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use leafwalk_data::{dataset_info, Dataset, Split};

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

pub fn leafwalk(args: &[&str], data_root: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_leafwalk"))
        .args(args)
        .arg("--data-root")
        .arg(data_root)
        .current_dir(repo(""))
        .env_remove("LEAFWALK_DATA")
        .output()
        .expect("run leafwalk")
}

/// Asserts the run failed cleanly and returns its single stderr line.
pub fn failure(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(!output.status.success(), "expected failure, got success; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("leafwalk: error: "), "{stderr}");
    lines[0].to_string()
}

/// A small MNIST-shaped dataset: 60 train and 20 test images, label = i % 10.
pub fn tiny_mnist(root: &Path) {
    let info = dataset_info("mnist").unwrap();
    for (split, n) in [(Split::Train, 60), (Split::Test, 20)] {
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        let images =
            labels.iter().flat_map(|&l| (0..784).map(move |p| if p / 78 == l as usize { 255 } else { 0 })).collect();
        Dataset { info, split, images, labels }.save(root).unwrap();
    }
}

pub fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}
