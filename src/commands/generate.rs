//! `leafwalk generate`: new images of one class by label-preserving walks on the data leaf.

use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;
use leafwalk_data::write_bytes_atomic;
use leafwalk_plot::{tile_grid, Tile, TileKind};
use leafwalk_walk::{generate_on_leaf, prediction, State};
use serde_json::json;

use crate::cli::GenerateArgs;
use crate::commands::{fresh_output, load_model};

pub fn run(args: GenerateArgs, data_root: &Path) -> anyhow::Result<ExitCode> {
    if args.count == 0 || args.steps == 0 {
        bail!("--count and --steps must be at least 1");
    }
    if !(args.step_size.is_finite() && args.step_size > 0.0) {
        bail!("--step-size must be a positive finite number, got {}", args.step_size);
    }
    fresh_output(&args.out, "generate.json")?;
    let model = load_model(&args.model)?;
    let shape = model.input_shape();
    let from = State::from_pixels(&model, &args.from.load(shape, args.invert, data_root)?);
    let generated = generate_on_leaf(&model, &from, args.count, args.steps, args.step_size, args.seed)?;
    let class = |k: usize| model.meta().classes.get(k).cloned().unwrap_or_else(|| k.to_string());
    let start_pixels = from.to_pixels(&model);
    let outputs: Vec<Vec<f32>> = generated.images.iter().map(|x| x.to_pixels(&model)).collect();
    let mut tiles =
        vec![Tile::new(&start_pixels, shape, format!("start: {}", class(generated.label)), TileKind::Image)];
    let mut images = Vec::new();
    for (k, (x, pixels)) in generated.images.iter().zip(&outputs).enumerate() {
        let (predicted, p) = prediction(&model, x)?;
        tiles.push(Tile::new(pixels, shape, format!("{k}: {} {p:.2}", class(predicted)), TileKind::Image));
        images
            .push(json!({"prediction": class(predicted), "probability": p, "distance_from_start": x.distance(&from)}));
    }
    std::fs::create_dir_all(&args.out)?;
    let title = format!("{} walks on the data leaf from {}, label kept", args.count, args.from);
    tile_grid(&args.out.join("grid.png"), Some(&title), &tiles, tiles.len().min(9), 3)?;
    let report = json!({
        "from": args.from.to_string(), "label": class(generated.label), "count": args.count, "steps": args.steps,
        "step_size": args.step_size, "seed": args.seed,
        "label_preservation_rate": generated.preservation_rate(),
        "mean_pairwise_distance": generated.mean_pairwise_distance(), "images": images,
    });
    write_bytes_atomic(&args.out.join("generate.json"), serde_json::to_string_pretty(&report)?.as_bytes())?;
    println!(
        "{} images of class {} in {}: {:.1} % of steps kept the label, mean pairwise distance {:.2} (normalised)",
        args.count,
        class(generated.label),
        args.out.display(),
        100.0 * generated.preservation_rate(),
        generated.mean_pairwise_distance()
    );
    Ok(ExitCode::SUCCESS)
}
