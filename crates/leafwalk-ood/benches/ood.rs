//! OOD scoring throughput (images/s) of each score with the shipped mnist-cnn on MNIST test
//! images: 2,000 for the scores from one forward or Jacobian pass, 200 for the two that walk
//! to the data leaf (each image walks from 2 anchors, ≤ 200 adaptive steps); JSON on stdout.
//! The training-set reference is built first (its time reported apart) and cached in the data
//! root. `$LEAFWALK_DEVICE` picks the device (default cpu). Run: `cargo bench -p leafwalk-ood --bench ood` or `scripts/bench.sh ood`.

use std::path::Path;
use std::time::Instant;

use leafwalk_data::{data_root, dataset_info, Dataset, Split};
use leafwalk_models::{Classifier, DeviceChoice, LoadOptions};
use leafwalk_ood::{score_images, Reference, ReferenceOptions, Score, ScoreOptions};

const FAST_IMAGES: usize = 2000;
const WALKING_IMAGES: usize = 200;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/mnist-cnn.safetensors");
    let device = DeviceChoice::from_env()?.open()?;
    let model = Classifier::load(&model_path, LoadOptions::default(), &device)?;
    let root = data_root(None);
    let mnist = dataset_info("mnist")?;
    let (train, test) = (Dataset::load(mnist, Split::Train, &root)?, Dataset::load(mnist, Split::Test, &root)?);
    let started = Instant::now();
    let options = ReferenceOptions { cache_dir: Some(root.join("cache")) };
    let reference = Reference::build(&model, &train, &options)?;
    let reference_seconds = started.elapsed().as_secs_f64();
    let images: Vec<Vec<f32>> = (0..FAST_IMAGES.min(test.len())).map(|k| test.pixels(k)).collect::<Result<_, _>>()?;
    let mut results = serde_json::Map::new();
    for score in Score::ALL {
        let count =
            if matches!(score, Score::PixelLeafDistance | Score::LeafDistance) { WALKING_IMAGES } else { images.len() };
        let started = Instant::now();
        score_images(&model, &reference, &images[..count], &[score], &ScoreOptions::default(), |_| {})?;
        let seconds = started.elapsed().as_secs_f64();
        results
            .insert(score.name().into(), serde_json::json!({"images": count, "images_per_s": count as f64 / seconds}));
    }
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
    let json = serde_json::json!({
        "bench": "ood", "device": format!("{device:?}"), "model": "models/mnist-cnn.safetensors", "threads": threads,
        "reference_build_or_load_s": reference_seconds, "results": results,
    });
    println!("{json}");
    Ok(())
}
