//! Input-Jacobian throughput (points/s) through the engine, JSON on stdout:
//!
//! - `mnist-cnn` with fresh weights (seed 42, as every earlier version of this benchmark) on
//!   MNIST test images (random pixels when `$LEAFWALK_DATA/mnist` is absent): batches of 1 to
//!   1,024, the wall time for all 2,000 test points, and candle's autograd at 16 for scale;
//! - the PyTorch fixtures `lenet5`, `vgg-bn-small` and `resnet-mini` (their weights from
//!   `tests/fixtures`, no normalisation) on uniform random pixels, as
//!   `shared/models/torch_models.py bench` measures PyTorch: batches of 1 and 16, and 64 (the
//!   figure the Python package's call is compared with, `scripts/bench.sh python`).
//!
//! `$LEAFWALK_BENCH_MODELS` (comma-separated names) limits the run to those models.
//!
//! Median of 5 runs after 1 warm-up, each over max(64, B) points repeated for at least half a
//! second (64 of lenet5's points take 16 ms: one busy moment of a shared machine moved such a
//! figure by 40 %; PyTorch's side times 3 s per method). `$LEAFWALK_DEVICE` picks the
//! device (default cpu). Run: `cargo bench -p leafwalk-geometry --bench jacobian` or
//! `scripts/bench.sh geometry`.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use leafwalk_data::{data_root, dataset_info, Dataset, Split};
use leafwalk_geometry::{input_jacobian, input_jacobian_autograd, Jacobians};
use leafwalk_models::{Arch, Classifier, DeviceChoice, LoadOptions};
use serde_json::{json, Map, Value};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const POINTS: usize = 2000;

type JacobianFn = fn(&Classifier, &Tensor) -> leafwalk_geometry::Result<Jacobians>;

/// The shortest a timed run lasts: `run` is repeated until it has.
const MIN_RUN_SECONDS: f64 = 0.5;

/// Median seconds per `run` of 5 timed runs after a warm-up, each repeating `run` for at least
/// `min_seconds`; every `run` ends with the result on the host, so a GPU's queued work is
/// inside the timing.
fn median_seconds(
    min_seconds: f64,
    mut run: impl FnMut() -> Result<(), Box<dyn std::error::Error>>,
) -> Result<f64, Box<dyn std::error::Error>> {
    run()?;
    let mut times = Vec::with_capacity(5);
    for _ in 0..5 {
        let (start, mut repeats) = (Instant::now(), 0);
        while repeats == 0 || start.elapsed().as_secs_f64() < min_seconds {
            run()?;
            repeats += 1;
        }
        times.push(start.elapsed().as_secs_f64() / f64::from(repeats));
    }
    times.sort_by(f64::total_cmp);
    Ok(times[2])
}

/// J of `points` in batches of `batch`, the last value read back.
fn jacobians(
    jacobian: JacobianFn,
    model: &Classifier,
    points: &Tensor,
    batch: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let count = points.dim(0)?;
    for first in (0..count).step_by(batch) {
        let j = jacobian(model, &points.narrow(0, first, batch.min(count - first))?)?.jacobian;
        if first + batch >= count {
            j.flatten_all()?.narrow(0, 0, 1)?.to_vec1::<f32>()?;
        }
    }
    Ok(())
}

/// points/s of `jacobian` at each batch size.
fn throughput(
    jacobian: JacobianFn,
    model: &Classifier,
    pixels: &Tensor,
    batches: &[usize],
    name: &str,
    results: &mut Map<String, Value>,
) -> Result<(), Box<dyn std::error::Error>> {
    for &batch in batches {
        let points = pixels.narrow(0, 0, batch.max(64))?;
        let seconds = median_seconds(MIN_RUN_SECONDS, || jacobians(jacobian, model, &points, batch))?;
        results.insert(format!("{name}_batch{batch}_points_per_s"), (points.dim(0)? as f64 / seconds).into());
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device = DeviceChoice::from_env()?.open()?;
    let only = std::env::var("LEAFWALK_BENCH_MODELS").ok();
    let wanted = |name: &str| only.as_deref().is_none_or(|list| list.split(',').any(|n| n.trim() == name));
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let mut models = Map::new();

    let mnist = dataset_info("mnist")?;
    if wanted("mnist-cnn") {
        let (pixels, data) = match Dataset::load(mnist, Split::Test, &data_root(None)) {
            Ok(set) => {
                let indices: Vec<usize> = (0..POINTS).map(|k| k % set.len()).collect();
                (set.batch(&indices, &Device::Cpu)?.0.to_device(&device)?, "mnist test images")
            }
            Err(_) => (Tensor::rand(0f32, 1f32, (POINTS, 1, 28, 28), &device)?, "random pixels"),
        };
        let model = Classifier::new(Arch::MnistCnn, mnist, 42, &device, DType::F32)?;
        let mut results = Map::new();
        throughput(input_jacobian, &model, &pixels, &[1, 4, 16, 32, 64, 256, 1024], "engine", &mut results)?;
        throughput(input_jacobian_autograd, &model, &pixels, &[16], "autograd", &mut results)?;
        let seconds = median_seconds(0.0, || jacobians(input_jacobian, &model, &pixels, 1024))?;
        results.insert("engine_all_2000_test_points_s".into(), seconds.into());
        models.insert("mnist-cnn".into(), json!({ "weights": "fresh, seed 42", "data": data, "results": results }));
    }

    for arch in [Arch::Lenet5, Arch::VggBnSmall, Arch::ResnetMini].into_iter().filter(|a| wanted(a.name())) {
        let options = LoadOptions::pixels(arch);
        let model = Classifier::load(&fixtures.join(format!("{arch}.safetensors")), options, &device)?;
        let s = model.input_shape();
        let pixels = Tensor::rand(0f32, 1f32, (64, s.channels, s.height, s.width), &device)?;
        let mut results = Map::new();
        throughput(input_jacobian, &model, &pixels, &[1, 16, 64], "engine", &mut results)?;
        models.insert(
            arch.to_string(),
            json!({ "weights": "tests/fixtures", "data": "uniform random pixels", "results": results }),
        );
    }
    let json = json!({
        "bench": "geometry",
        "device": format!("{device:?}"),
        "threads": candle_core::utils::get_num_threads(),
        "timing": "median of 5 runs after 1 warm-up, each over max(64, B) points repeated for at least 0.5 s",
        "models": models,
    });
    println!("{json}");
    Ok(())
}
