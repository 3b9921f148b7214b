//! Mutated inputs for every file reader: seeded truncations, bit flips, header fields set to
//! 0 / 2³¹ / 2⁶³ / all ones (the lies a length or count field can tell) and trailing junk, applied
//! to a valid file of each format. Every case must end in a one-line error or a valid result —
//! no panic, no case slower than 5 s, and no single allocation above 256 MiB (a header that
//! lies is rejected before it is believed; the allocator below watches).
//!
//! `LEAFWALK_FUZZ_SECONDS=S` runs each format for S seconds instead of its fixed case count
//! (`scripts/fuzz.sh S`); a failing case is written to `target/fuzz-failures/`.

#[allow(dead_code)] // each test binary uses its own part of the shared helpers
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use common::{repo, tiny_mnist};
use leafwalk_data::{dataset_info, Dataset, ImageShape, Invert, Split, TensorImages};
use leafwalk_models::{Arch, Classifier, LoadOptions};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Cases per format in a plain test run.
const CASES: usize = 500;
const ALLOCATION_CAP: usize = 256 << 20;
const SLOW_CASE: Duration = Duration::from_secs(5);

/// The system allocator, remembering the largest single request.
struct Watching;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Watching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Watching = Watching;

/// One seeded mutation of a valid file.
fn mutate(valid: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut bytes = valid.to_vec();
    match rng.random_range(0..5) {
        0 => bytes.truncate(rng.random_range(0..valid.len())),
        1 => {
            for _ in 0..rng.random_range(1..=8) {
                let at = rng.random_range(0..bytes.len());
                bytes[at] ^= 1 << rng.random_range(0..8);
            }
        }
        2 | 3 => {
            // Headers live at the start: lie in the first KiB mostly, anywhere sometimes.
            let span = if rng.random_bool(0.8) { bytes.len().min(1024) } else { bytes.len() };
            let lie: u64 = [0, 1 << 31, 1 << 63, u64::MAX][rng.random_range(0..4)];
            let field = match (rng.random_range(0..4), lie) {
                (0, _) => (lie as u32).to_le_bytes().to_vec(),
                (1, _) => ((lie >> 32) as u32 | lie as u32).to_be_bytes().to_vec(),
                (2, _) => lie.to_le_bytes().to_vec(),
                _ => lie.to_be_bytes().to_vec(),
            };
            if span >= field.len() {
                let at = rng.random_range(0..=span - field.len());
                bytes[at..at + field.len()].copy_from_slice(&field);
            }
        }
        _ => bytes.extend((0..rng.random_range(1..256)).map(|_| rng.random::<u8>())),
    }
    bytes
}

/// Runs `read` on mutations of `valid` and asserts every case ends well; returns the count.
fn cases(format: &str, valid: &[u8], read: impl Fn(&[u8]) -> Result<(), String>) -> usize {
    let budget = std::env::var("LEAFWALK_FUZZ_SECONDS").ok().and_then(|s| s.parse::<f64>().ok());
    let seed = format.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let started = Instant::now();
    let (mut tried, mut failures) = (0usize, Vec::new());
    while match budget {
        Some(seconds) => started.elapsed().as_secs_f64() < seconds,
        None => tried < CASES,
    } {
        let case = mutate(valid, &mut rng);
        LARGEST.store(0, Ordering::Relaxed);
        let case_started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| read(&case)));
        let problem = match outcome {
            Err(_) => Some("panicked".to_string()),
            Ok(Err(message)) if message.contains('\n') || message.trim().is_empty() => {
                Some(format!("error is not one line: {message:?}"))
            }
            _ if case_started.elapsed() > SLOW_CASE => Some(format!("took {:?}", case_started.elapsed())),
            _ if LARGEST.load(Ordering::Relaxed) > ALLOCATION_CAP => {
                Some(format!("allocated {} bytes at once", LARGEST.load(Ordering::Relaxed)))
            }
            _ => None,
        };
        if let Some(problem) = problem {
            let folder = repo("target/fuzz-failures");
            let _ = std::fs::create_dir_all(&folder);
            let file = folder.join(format!("{format}-{tried}.bin"));
            let _ = std::fs::write(&file, &case);
            failures.push(format!("case {tried} ({}): {problem}", file.display()));
        }
        tried += 1;
    }
    println!("{{\"format\": \"{format}\", \"cases\": {tried}, \"failures\": {}}}", failures.len());
    assert!(failures.is_empty(), "{format}: {} of {tried} cases failed:\n{}", failures.len(), failures.join("\n"));
    tried
}

/// Writes `bytes` to `path` and runs `read` on the file.
fn through_file(path: &Path, bytes: &[u8], read: impl Fn(&Path) -> Result<(), String>) -> Result<(), String> {
    std::fs::write(path, bytes).map_err(|e| e.to_string())?;
    read(path)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[test]
fn checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let model = Classifier::new(Arch::Mlp, dataset_info("mnist").unwrap(), 1, &Device::Cpu, DType::F32).unwrap();
    let valid_path = dir.path().join("valid.safetensors");
    model.save(&valid_path).unwrap();
    let valid = std::fs::read(&valid_path).unwrap();
    let path = dir.path().join("case.safetensors");
    cases("safetensors", &valid, |bytes| {
        through_file(&path, bytes, |p| {
            Classifier::load(p, LoadOptions::default(), &Device::Cpu).map(drop).map_err(|e| e.to_string())
        })
    });
}

#[test]
fn onnx_graphs() {
    let dir = tempfile::tempdir().unwrap();
    let valid = std::fs::read(repo("tests/fixtures/lenet5.onnx")).unwrap();
    let path = dir.path().join("case.onnx");
    cases("onnx", &valid, |bytes| {
        leafwalk_onnx::from_bytes(bytes, dir.path(), &path).map(drop).map_err(|e| e.to_string())
    });
}

#[test]
fn onnx_external_data() {
    // The dynamo export's weights file, mutated beside its intact graph.
    let dir = tempfile::tempdir().unwrap();
    let graph = std::fs::read(repo("tests/fixtures/lenet5.dynamo.onnx")).unwrap();
    let valid = std::fs::read(repo("tests/fixtures/lenet5.dynamo.onnx.data")).unwrap();
    let path = dir.path().join("lenet5.dynamo.onnx");
    std::fs::write(&path, &graph).unwrap();
    let data = dir.path().join("lenet5.dynamo.onnx.data");
    cases("onnx-external-data", &valid, |bytes| {
        through_file(&data, bytes, |_| leafwalk_onnx::read(&path).map(drop).map_err(|e| e.to_string()))
    });
}

#[test]
fn layer_descriptions() {
    let valid = std::fs::read(repo("tests/fixtures/resnet-mini.layers.json")).unwrap();
    cases("layers-json", &valid, |bytes| {
        let text = String::from_utf8_lossy(bytes);
        leafwalk_models::parse_layers(&text).map(drop).map_err(|e| e.to_string())
    });
}

fn image_cases(format: &str, valid: &[u8], extension: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("case.{extension}"));
    let shape = ImageShape { channels: 1, height: 28, width: 28 };
    cases(format, valid, |bytes| {
        through_file(&path, bytes, |p| {
            leafwalk_data::load_image(p, shape, Invert::Auto).map(drop).map_err(|e| e.to_string())
        })
    });
}

#[test]
fn png_images() {
    image_cases("png", &std::fs::read(repo("models/samples/mnist-7.png")).unwrap(), "png");
}

#[test]
fn jpeg_images() {
    let digit = image::open(repo("models/samples/mnist-7.png")).unwrap();
    let mut valid = Vec::new();
    digit.write_to(&mut std::io::Cursor::new(&mut valid), image::ImageFormat::Jpeg).unwrap();
    image_cases("jpeg", &valid, "jpg");
}

/// IDX files, raw and gzipped: the test split's images file is mutated, the rest left intact.
#[test]
fn idx_datasets() {
    let dir = tempfile::tempdir().unwrap();
    tiny_mnist(dir.path());
    let images = dir.path().join("mnist/t10k-images-idx3-ubyte");
    let valid = std::fs::read(&images).unwrap();
    let info = dataset_info("mnist").unwrap();
    let load = |_: &Path| Dataset::load(info, Split::Test, dir.path()).map(drop).map_err(|e| e.to_string());
    cases("idx", &valid, |bytes| through_file(&images, bytes, load));
    std::fs::remove_file(&images).unwrap();
    let gzipped = dir.path().join("mnist/t10k-images-idx3-ubyte.gz");
    cases("idx-gz", &gzip(&valid), |bytes| through_file(&gzipped, bytes, load));
}

/// CIFAR-10 binary batches: the test batch is mutated.
#[test]
fn cifar_batches() {
    let dir = tempfile::tempdir().unwrap();
    let info = dataset_info("cifar10").unwrap();
    for (split, n) in [(Split::Train, 20), (Split::Test, 10)] {
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        let images = (0..n * 3072).map(|i| (i * 7 % 256) as u8).collect();
        Dataset { info, split, images, labels }.save(dir.path()).unwrap();
    }
    let batch = walk_files(dir.path()).into_iter().find(|p| p.ends_with("test_batch.bin")).expect("test_batch.bin");
    let valid = std::fs::read(&batch).unwrap();
    let load = |_: &Path| Dataset::load(info, Split::Test, dir.path()).map(drop).map_err(|e| e.to_string());
    cases("cifar", &valid, |bytes| through_file(&batch, bytes, load));
}

/// Pairs files for `path --pairs`: every kind of image source on a side, header and comment.
#[test]
fn pairs_files() {
    let dir = tempfile::tempdir().unwrap();
    let valid =
        b"from,to\n# a comment\nmnist:test:0, mnist:test:1\nmodels/samples/mnist-1.png,batch.safetensors:x#3\n\n";
    let path = dir.path().join("pairs.csv");
    cases("pairs-csv", valid, |bytes| {
        through_file(&path, bytes, |p| leafwalk_data::read_pairs(p).map(drop).map_err(|e| e.to_string()))
    });
}

/// Images handed over as a safetensors tensor (`FILE.safetensors[:NAME][#INDEX]`).
#[test]
fn tensor_images() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("batch.safetensors");
    let pixels: Vec<f32> = (0..3 * 784).map(|i| (i % 256) as f32 / 255.0).collect();
    let batch = candle_core::Tensor::from_vec(pixels, (3, 1, 28, 28), &Device::Cpu).unwrap();
    candle_core::safetensors::save(&std::collections::HashMap::from([("images", batch)]), &path).unwrap();
    let valid = std::fs::read(&path).unwrap();
    let shape = ImageShape { channels: 1, height: 28, width: 28 };
    let every = TensorImages::parse(&format!("{}:images", path.display())).unwrap().unwrap();
    cases("tensor-images", &valid, |bytes| {
        through_file(&path, bytes, |_| every.load(shape).map(drop).map_err(|e| e.to_string()))
    });
}

fn walk_files(root: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(root).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk_files(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// Inputs the longer fuzz runs caught, kept as regressions (`tests/fixtures/fuzz/`).
#[test]
fn cases_found_by_fuzzing() {
    let folder = repo("tests/fixtures/fuzz");
    for path in walk_files(&folder) {
        let result = match path.extension().and_then(|e| e.to_str()) {
            Some("onnx") => leafwalk_onnx::read(&path).map(drop).map_err(|e| e.to_string()),
            other => panic!("{}: no reader for {other:?}", path.display()),
        };
        if let Err(message) = result {
            assert!(!message.contains('\n') && !message.trim().is_empty(), "{}: {message:?}", path.display());
        }
    }
}
