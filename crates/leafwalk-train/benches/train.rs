//! Training throughput of mnist-cnn and resnet-mini at batch 60 (SGD, lr 0.01), as JSON on stdout,
//! and what adversarial training costs: mnist-cnn on PGD-L2 examples (ε = 2, 10 steps) of
//! each batch (5 batches a run).
//!
//! Mirrors `ref.py bench`'s `d_train_batch60_images_per_s`: 20 batches per run, median of 5 runs
//! after 1 warm-up. Uses real MNIST under `$LEAFWALK_DATA` (default `data/`) when present,
//! random pixels otherwise (the cost does not depend on the values). `$LEAFWALK_DEVICE` picks
//! the device (default cpu).
//! Run: `cargo bench -p leafwalk-train --bench train` or `scripts/bench.sh train`.

use std::time::Instant;

use candle_core::{DType, Tensor};
use leafwalk_data::{data_root, dataset_info, Dataset, Split};
use leafwalk_models::{Arch, Classifier, DeviceChoice};
use leafwalk_train::{epoch_order, train_step, Adversary, Optimizer, OptimizerKind};

const BATCH: usize = 60;
const BATCHES_PER_RUN: usize = 20;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device = DeviceChoice::from_env()?.open()?;
    let mnist = dataset_info("mnist")?;
    let root = data_root(None);
    let (batches, data): (Vec<(Tensor, Tensor)>, &str) = match Dataset::load(mnist, Split::Train, &root) {
        Ok(set) => {
            let order = epoch_order(0, 1, set.len());
            let batches =
                order.chunks(BATCH).take(BATCHES_PER_RUN).map(|b| set.batch(b, &device)).collect::<Result<_, _>>()?;
            (batches, "mnist")
        }
        Err(_) => {
            let batches = (0..BATCHES_PER_RUN)
                .map(|_| {
                    Ok((
                        Tensor::rand(0f32, 1f32, (BATCH, 1, 28, 28), &device)?,
                        Tensor::zeros(BATCH, DType::U32, &device)?,
                    ))
                })
                .collect::<candle_core::Result<_>>()?;
            (batches, "random")
        }
    };
    let mut results = serde_json::Map::new();
    let adversary: Adversary = "l2:2,10".parse()?;
    for (arch, attack, batches_per_run) in [
        (Arch::MnistCnn, None, BATCHES_PER_RUN),
        (Arch::ResnetMini, None, BATCHES_PER_RUN),
        (Arch::MnistCnn, Some(adversary), 5),
    ] {
        let model = Classifier::new(arch, mnist, 42, &device, DType::F32)?;
        let mut optimizer = Optimizer::new(OptimizerKind::Sgd, 0.01, model.trainable_vars())?;
        let batches = &batches[..batches_per_run];
        let mut run = || -> Result<f64, Box<dyn std::error::Error>> {
            let start = Instant::now();
            for (images, labels) in batches {
                let images = match &attack {
                    Some(adversary) => &adversary.attack(&model, images, labels)?,
                    None => images,
                };
                train_step(&model, &mut optimizer, images, labels, |_| Ok(()))?;
            }
            Ok(start.elapsed().as_secs_f64())
        };
        run()?;
        let mut times = (0..5).map(|_| run()).collect::<Result<Vec<f64>, _>>()?;
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let name = match attack {
            Some(adversary) => format!("{arch} adversarial {adversary}"),
            None => arch.to_string(),
        };
        results.insert(
            name,
            serde_json::json!({
                "images_per_s": (BATCH * batches_per_run) as f64 / median,
                "seconds_per_batch": median / batches_per_run as f64,
            }),
        );
    }
    let json = serde_json::json!({
        "bench": "train",
        "device": format!("{device:?}"),
        "batch": BATCH,
        "optimizer": "sgd, lr 0.01",
        "data": data,
        "threads": candle_core::utils::get_num_threads(),
        "timing": "median of 5 runs of 20 batches (5 for the adversarial line) after 1 warm-up run",
        "models": results,
    });
    println!("{json}");
    Ok(())
}
