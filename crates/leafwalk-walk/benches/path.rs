//! Data-leaf path speed on the golden epoch-1 weights (the reference's checkpoint): wall time
//! and Jacobian evaluations to connect test 0 → test 1 with each integrator (both stall, as the
//! reference does), the time each first gets within `REFERENCE_END` of the target (where the
//! reference's 10,000-step run ends, to 0.01), Euler steps/s for 1 and 32 paths at once on the
//! host integrator, and path-steps/s of the device integrator (`euler_on_device`, one fused step
//! kernel per step) for 1 to 1,024 paths; JSON on stdout. `$LEAFWALK_DEVICE` picks the device
//! (default cpu). Run: `cargo bench -p leafwalk-walk --bench path` or `scripts/bench.sh path`.

use std::path::Path;
use std::time::Instant;

use candle_core::Device;
use leafwalk_data::dataset_info;
use leafwalk_models::{checkpoint, Arch, Classifier, DeviceChoice, LoadOptions};
use leafwalk_walk::{connect, connect_batch, euler_on_device, PathOptions, State};
use serde_json::json;

/// Distance (normalised) at which PyTorch's paper-style walk 0 → 1 ends — it circles between
/// 22.8646 and 22.8655 — plus the stall criterion's resolution (0.01).
const REFERENCE_END: f64 = 22.875;
/// Steps per path in the steps/s measurement (20 was too short: a first call's page faults and
/// thread wake-ups weighed on it).
const STEPS: usize = 200;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let options = LoadOptions::new(Arch::MnistCnn, dataset_info("mnist")?);
    let device = DeviceChoice::from_env()?.open()?;
    let model = Classifier::load(&fixtures.join("mnist-cnn-epoch01.safetensors"), options, &device)?;
    let (golden, _) = checkpoint::read(&fixtures.join("golden-epoch01.safetensors"), &Device::Cpu)?;
    let inputs = &golden["test_inputs"];
    let digits: Vec<State> =
        (0..16).map(|k| Ok(State(inputs.get(k)?.flatten_all()?.to_vec1()?))).collect::<candle_core::Result<_>>()?;

    let mut results = serde_json::Map::new();
    for (name, options) in [("euler", PathOptions::euler()), ("adaptive", PathOptions::adaptive())] {
        let start = Instant::now();
        let (mut reached_at, mut evals_at) = (None, 0);
        let mut steps_seen = 0;
        let outcome = connect(&model, &digits[0], &digits[1], &options, |record| {
            steps_seen += 1;
            if reached_at.is_none() && record.distance <= REFERENCE_END {
                (reached_at, evals_at) = (Some(start.elapsed().as_secs_f64()), steps_seen);
            }
        })?;
        results.insert(
            format!("connect_test0_to_test1_{name}"),
            json!({
                "wall_s": start.elapsed().as_secs_f64(), "jacobian_evals": outcome.jacobian_evals,
                "steps": outcome.steps(), "final_distance": outcome.final_distance(),
                "ending": format!("{:?}", outcome.ending),
                "seconds_to_reference_end": reached_at, "records_to_reference_end": evals_at,
            }),
        );
    }
    let euler = PathOptions { max_steps: STEPS, stall_window: usize::MAX, ..PathOptions::euler() };
    for paths in [1usize, 32] {
        let pairs: Vec<(State, State)> =
            (0..paths).map(|k| (digits[k % 16].clone(), digits[(k + 5) % 16].clone())).collect();
        connect_batch(&model, &pairs[..1], &PathOptions { max_steps: 2, ..euler }, |_, _| {})?;
        let start = Instant::now();
        connect_batch(&model, &pairs, &euler, |_, _| {})?;
        let seconds = start.elapsed().as_secs_f64();
        results.insert(format!("euler_steps_per_s_{paths}_paths"), json!((paths * STEPS) as f64 / seconds));
    }
    // The device integrator: about 10,000 path-steps per measurement (the batch is checked
    // for finished paths every 10 steps, as a user would run it).
    for paths in [1usize, 32, 256, 1024] {
        let pairs: Vec<(State, State)> =
            (0..paths).map(|k| (digits[k % 16].clone(), digits[(k + 5) % 16].clone())).collect();
        let steps = (10_000 / paths).clamp(10, STEPS);
        let options = PathOptions { max_steps: steps, stall_window: usize::MAX, ..euler };
        euler_on_device(&model, &pairs[..1], &PathOptions { max_steps: 2, ..options }, 10)?;
        let start = Instant::now();
        euler_on_device(&model, &pairs, &options, 10)?;
        let seconds = start.elapsed().as_secs_f64();
        results.insert(format!("device_euler_path_steps_per_s_{paths}_paths"), json!((paths * steps) as f64 / seconds));
    }
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
    println!("{}", json!({ "bench": "path", "device": format!("{device:?}"), "threads": threads, "results": results }));
    Ok(())
}
