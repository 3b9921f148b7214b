//! Input-Jacobian throughput (points/s) of mnist-cnn, hand-written reverse pass vs candle
//! autograd, at batches of 1, 16 and 32 points; JSON on stdout. Median of 5 runs after 1 warm-up
//! over 64 MNIST test points (random pixels when `$LEAFWALK_DATA/mnist` is absent).
//! Run: `cargo bench -p leafwalk-geometry --bench jacobian` or `scripts/bench.sh jacobian`.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use leafwalk_data::{data_root, dataset_info, Dataset, Split};
use leafwalk_geometry::{input_jacobian, input_jacobian_autograd, Jacobians};
use leafwalk_models::{Arch, Classifier};

const POINTS: usize = 64;

type JacobianFn = fn(&Classifier, &Tensor) -> leafwalk_geometry::Result<Jacobians>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device = Device::Cpu;
    let mnist = dataset_info("mnist")?;
    let (pixels, data) = match Dataset::load(mnist, Split::Test, &data_root(None)) {
        Ok(set) => {
            let indices: Vec<usize> = (0..POINTS).map(|k| k * set.len() / POINTS).collect();
            (set.batch(&indices, &device)?.0, "mnist")
        }
        Err(_) => (Tensor::rand(0f32, 1f32, (POINTS, 1, 28, 28), &device)?, "random"),
    };
    let model = Classifier::new(Arch::MnistCnn, mnist, 42, &device, DType::F32)?;
    let mut results = serde_json::Map::new();
    let methods: [(&str, JacobianFn); 2] = [("hand_written", input_jacobian), ("autograd", input_jacobian_autograd)];
    for (name, jacobian) in methods {
        for batch in [1, 16, 32] {
            let run = || -> Result<f64, Box<dyn std::error::Error>> {
                let start = Instant::now();
                for first in (0..POINTS).step_by(batch) {
                    jacobian(&model, &pixels.narrow(0, first, batch)?)?;
                }
                Ok(start.elapsed().as_secs_f64())
            };
            run()?;
            let mut times = (0..5).map(|_| run()).collect::<Result<Vec<f64>, _>>()?;
            times.sort_by(f64::total_cmp);
            results.insert(format!("{name}_batch{batch}_points_per_s"), (POINTS as f64 / times[2]).into());
        }
    }
    let json = serde_json::json!({
        "bench": "jacobian",
        "arch": "mnist-cnn",
        "data": data,
        "threads": candle_core::utils::get_num_threads(),
        "timing": "median of 5 runs over 64 points after 1 warm-up",
        "results": results,
    });
    println!("{json}");
    Ok(())
}
