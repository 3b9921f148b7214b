//! One ImageNet-sized point: a resnet18-shaped model with random weights (3×224×224 inputs,
//! C = 1,000 classes), J of one image, G's eigenvalues from the C×C Gram matrix, its rank and
//! the leaf basis (all eigenvectors of G up to the rank); JSON on stdout with the seconds of
//! each part and the peak resident memory against the budget 2·C·n·4 bytes (J and the basis in
//! f32) + the model + 200 MB. Linux only for the memory figure (`VmHWM`).
//! Run: `cargo bench -p leafwalk-geometry --bench scale` or `scripts/bench.sh scale` (~2 min
//! on 2 cores).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use leafwalk_geometry::batch_geometry;
use leafwalk_models::{Arch, CheckpointMeta, Classifier, Dims};
use serde_json::json;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Peak resident set size in bytes, from `/proc/self/status`.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (input, classes) = (Dims::new(3, 224, 224), 1000);
    let meta = CheckpointMeta::without_dataset(Arch::Resnet18.into(), input, classes);
    let model = Classifier::fresh(meta, 0, &Device::Cpu, DType::F32)?;
    let model_bytes: usize = model.named_tensors().iter().map(|(_, t)| t.elem_count() * 4).sum();
    let pixels = Tensor::rand(0f32, 1f32, (1, 3, 224, 224), &Device::Cpu)?;
    let before = peak_rss();

    let start = Instant::now();
    let point = batch_geometry(&model, &pixels)?.remove(0);
    let jacobian_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let eigenvalues = point.spectrum().eigenvalues;
    let rank = point.rank();
    let spectrum_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let basis = point.eigenvectors(rank);
    let basis_s = start.elapsed().as_secs_f64();

    let n = input.len();
    let budget = 2 * classes * n * 4 + model_bytes + (200 << 20);
    let peak = peak_rss();
    let json = json!({
        "bench": "scale",
        "model": "resnet18 (random weights)",
        "input": input.to_string(),
        "classes": classes,
        "threads": candle_core::utils::get_num_threads(),
        "jacobian_s": jacobian_s,
        "spectrum_and_rank_s": spectrum_s,
        "leaf_basis_s": basis_s,
        "rank": rank,
        "basis_vectors": basis.ncols(),
        "largest_eigenvalue": eigenvalues[0],
        "peak_rss_bytes": peak,
        "peak_rss_before_bytes": before,
        "model_bytes": model_bytes,
        "budget_bytes": budget,
        "within_budget": peak.map(|p| p as usize <= budget),
    });
    println!("{json}");
    Ok(())
}
