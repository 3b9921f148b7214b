//! Input-Jacobian throughput (points/s) of mnist-cnn: the hand-written reverse pass at batches
//! of 1 to 1,024 points, candle autograd at 1, 16 and 32 (its cost grows with B·C replicas), and
//! the wall time of J for all 2,000 MNIST test points in batches of 1,024; JSON on stdout.
//! Median of 5 runs after 1 warm-up, each over max(64, B) points (random pixels when
//! `$LEAFWALK_DATA/mnist` is absent). `$LEAFWALK_DEVICE` picks the device (default cpu).
//! Run: `cargo bench -p leafwalk-geometry --bench jacobian` or `scripts/bench.sh geometry`.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use leafwalk_data::{data_root, dataset_info, Dataset, Split};
use leafwalk_geometry::{input_jacobian, input_jacobian_autograd, Jacobians};
use leafwalk_models::{Arch, Classifier, DeviceChoice};

const POINTS: usize = 2000;

type JacobianFn = fn(&Classifier, &Tensor) -> leafwalk_geometry::Result<Jacobians>;

/// Median seconds of 5 runs after a warm-up; each run ends with the result on the host, so a
/// GPU's queued work is inside the timing.
fn median_seconds(
    mut run: impl FnMut() -> Result<(), Box<dyn std::error::Error>>,
) -> Result<f64, Box<dyn std::error::Error>> {
    run()?;
    let mut times = Vec::with_capacity(5);
    for _ in 0..5 {
        let start = Instant::now();
        run()?;
        times.push(start.elapsed().as_secs_f64());
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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device = DeviceChoice::from_env()?.open()?;
    let mnist = dataset_info("mnist")?;
    let (pixels, data) = match Dataset::load(mnist, Split::Test, &data_root(None)) {
        Ok(set) => {
            let indices: Vec<usize> = (0..POINTS).map(|k| k % set.len()).collect();
            (set.batch(&indices, &Device::Cpu)?.0.to_device(&device)?, "mnist")
        }
        Err(_) => (Tensor::rand(0f32, 1f32, (POINTS, 1, 28, 28), &device)?, "random"),
    };
    let model = Classifier::new(Arch::MnistCnn, mnist, 42, &device, DType::F32)?;
    let mut results = serde_json::Map::new();
    let methods: [(&str, JacobianFn, &[usize]); 2] = [
        ("hand_written", input_jacobian, &[1, 4, 16, 32, 64, 256, 1024]),
        ("autograd", input_jacobian_autograd, &[1, 16, 32]),
    ];
    for (name, jacobian, batches) in methods {
        for &batch in batches {
            let points = pixels.narrow(0, 0, batch.max(64))?;
            let seconds = median_seconds(|| jacobians(jacobian, &model, &points, batch))?;
            results.insert(format!("{name}_batch{batch}_points_per_s"), (points.dim(0)? as f64 / seconds).into());
        }
    }
    let seconds = median_seconds(|| jacobians(input_jacobian, &model, &pixels, 1024))?;
    results.insert("hand_written_all_2000_test_points_s".into(), seconds.into());
    let json = serde_json::json!({
        "bench": "geometry",
        "arch": "mnist-cnn",
        "device": format!("{device:?}"),
        "data": data,
        "threads": candle_core::utils::get_num_threads(),
        "timing": "median of 5 runs over max(64, B) points after 1 warm-up",
        "results": results,
    });
    println!("{json}");
    Ok(())
}
