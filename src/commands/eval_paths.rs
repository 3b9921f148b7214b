//! `leafwalk eval-paths`: how often paths connect random test pairs, at what cost, and how
//! their images compare with straight pixel interpolation between the same endpoints.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::bail;
use candle_core::{DType, Tensor};
use leafwalk_data::Dataset;
use leafwalk_geometry::median;
use leafwalk_models::Classifier;
use leafwalk_plot::{tile_grid, Tile, TileKind};
use leafwalk_walk::{PairPath, State};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use crate::cli::{EvalPathsArgs, IntegratorArg, LeafArg, PathWalkArgs, ViaArg};
use crate::commands::frames::{inner_samples, interpolate, NearestIndex, SAMPLES};
use crate::commands::walking::{path_options, training_waypoints, walk_pairs};
use crate::commands::{fresh_output, load_model, model_dataset};

/// Pairs drawn in the PNG sheet.
const SHEET_PAIRS: usize = 8;

pub fn run(args: EvalPathsArgs, data_root: &Path) -> anyhow::Result<ExitCode> {
    if args.data.index.is_some() {
        bail!("--data {}: give a split (NAME:SPLIT), not one image", args.data);
    }
    if args.pairs == 0 {
        bail!("--pairs must be at least 1");
    }
    path_options(&args.walk)?;
    let model = load_model(&args.model)?;
    let split = Dataset::load(args.data.dataset, args.data.split, data_root)?;
    if split.info.shape != model.input_shape() {
        bail!("--data {}: {} images, but the model takes {} images", args.data, split.info.shape, model.input_shape());
    }
    if split.len() < 2 {
        bail!("--data {}: needs at least 2 images", args.data);
    }
    std::fs::create_dir_all(&args.out)?;
    let report_path = fresh_output(&args.out, "eval-paths.json")?;
    let state = |i: usize| -> anyhow::Result<State> { Ok(State::from_pixels(&model, &split.pixels(i)?)) };
    let mut rng = ChaCha8Rng::seed_from_u64(args.walk.seed);
    let mut indices = Vec::with_capacity(args.pairs);
    let mut pairs = Vec::with_capacity(args.pairs);
    while pairs.len() < args.pairs {
        let (a, b) = (rng.random_range(0..split.len()), rng.random_range(0..split.len()));
        if a != b {
            indices.push((a, b));
            pairs.push((state(a)?, state(b)?));
        }
    }

    let mut strategies =
        vec![("euler", IntegratorArg::Euler, ViaArg::Direct), ("adaptive", IntegratorArg::Adaptive, ViaArg::Direct)];
    if args.with_via {
        strategies.push(("adaptive+via", IntegratorArg::Adaptive, ViaArg::Auto));
    }
    let mut report = serde_json::Map::new();
    // The training images serve both as steering waypoints and as the nearest-image index.
    let train_states = training_waypoints(&model, data_root)?;
    let mut adaptive_paths = Vec::new();
    for (name, integrator, via) in strategies {
        let walk = PathWalkArgs { integrator, via, leaf: LeafArg::Data, ..args.walk.clone() };
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message(format!("{name}: walking {} pairs", pairs.len()));
        let started = Instant::now();
        let walked = walk_pairs(&model, &pairs, &walk, Some(&train_states), |_, _| bar.tick())?;
        let seconds = started.elapsed().as_secs_f64();
        bar.finish_and_clear();
        report.insert(name.to_string(), strategy_report(&walked, seconds));
        if integrator == IntegratorArg::Adaptive && via == ViaArg::Direct {
            adaptive_paths = walked;
        }
    }

    let index = NearestIndex::new(train_states.iter().map(|s| s.0.as_slice()), model.device())?;
    let linear: Vec<Vec<State>> =
        pairs.iter().map(|(a, b)| interpolate(&a.0, &b.0).into_iter().map(State).collect()).collect();
    let along: Vec<Vec<State>> = adaptive_paths.iter().map(|w| inner_samples(&w.outcome.points)).collect();
    report.insert("linear_interpolation".into(), sample_report(&model, &index, &linear)?);
    report.insert("adaptive_path_images".into(), sample_report(&model, &index, &along)?);
    report.insert(
        "setup".into(),
        json!({
            "data": args.data.to_string(), "pairs": args.pairs, "seed": args.walk.seed, "model": args.model.model,
            "threshold": args.walk.threshold, "pair_indices": indices,
            "samples_per_path": SAMPLES, "nearest_training_images_of": format!("{}:train ({} images)", model_dataset(&model)?.name, train_states.len()),
            "units": "distances in the model's normalised units",
        }),
    );
    let report = serde_json::Value::Object(report);
    draw_sheet(&args.out.join("paths.png"), &model, &adaptive_paths, &pairs, &linear)?;
    let text = serde_json::to_string_pretty(&report)?;
    leafwalk_data::write_bytes_atomic(&report_path, text.as_bytes())?;
    if args.json {
        println!("{text}");
    } else {
        print_table(&report, &args.out);
    }
    Ok(ExitCode::SUCCESS)
}

fn strategy_report(walked: &[PairPath], seconds: f64) -> serde_json::Value {
    let reached: Vec<&PairPath> = walked.iter().filter(|w| w.outcome.reached()).collect();
    let all_evals = median(&walked.iter().map(|w| w.outcome.jacobian_evals as f64).collect::<Vec<_>>());
    json!({
        "reached": reached.len(), "pairs": walked.len(), "fraction_reached": reached.len() as f64 / walked.len() as f64,
        "median_steps_reached": median(&reached.iter().map(|w| w.outcome.steps() as f64).collect::<Vec<_>>()),
        "median_jacobian_evals_reached": median(&reached.iter().map(|w| w.outcome.jacobian_evals as f64).collect::<Vec<_>>()),
        "median_jacobian_evals_all": all_evals,
        "median_final_distance": median(&walked.iter().map(|w| w.outcome.final_distance()).collect::<Vec<_>>()),
        "seconds": seconds,
    })
}

/// Max class probability and distance to the nearest training image over sampled images.
fn sample_report(model: &Classifier, index: &NearestIndex, paths: &[Vec<State>]) -> anyhow::Result<serde_json::Value> {
    let samples: Vec<State> = paths.iter().flatten().cloned().collect();
    let shape = model.input_shape();
    let values: Vec<f32> = samples.iter().flat_map(|s| s.0.iter().copied()).collect();
    let batch = Tensor::from_vec(values, (samples.len(), shape.channels, shape.height, shape.width), model.device())?;
    let max_probs: Vec<f32> = model.log_probs_normalised(&batch)?.exp()?.max(1)?.to_dtype(DType::F32)?.to_vec1()?;
    let per_path_min: Vec<f64> =
        max_probs.chunks(SAMPLES).map(|c| c.iter().copied().fold(f32::INFINITY, f32::min) as f64).collect();
    let distances = index.distances(samples.iter().map(|s| s.0.as_slice()))?;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    Ok(json!({
        "images": samples.len(),
        "mean_max_probability": mean(&max_probs.iter().map(|&p| p as f64).collect::<Vec<_>>()),
        "mean_of_path_minimum_max_probability": mean(&per_path_min),
        "mean_distance_to_nearest_training_image": mean(&distances),
    }))
}

fn draw_sheet(
    file: &Path,
    model: &Classifier,
    paths: &[PairPath],
    pairs: &[(State, State)],
    linear: &[Vec<State>],
) -> anyhow::Result<()> {
    let shape = model.input_shape();
    let classes = &model.meta().classes;
    let mut cells: Vec<(Vec<f32>, String)> = Vec::new();
    for (k, walk) in paths.iter().enumerate().take(SHEET_PAIRS) {
        let points = &walk.outcome.points;
        let (from, target) = &pairs[k];
        let mut row = |label: &str, inner: Vec<State>| -> anyhow::Result<()> {
            let all: Vec<State> =
                std::iter::once(from.clone()).chain(inner).chain(std::iter::once(target.clone())).collect();
            for (j, x) in all.iter().enumerate() {
                let (class, p) = leafwalk_walk::prediction(model, x)?;
                let head = if j == 0 { format!("{label}: ") } else { String::new() };
                cells.push((x.to_pixels(model), format!("{head}{} {:.2}", classes[class], p)));
            }
            Ok(())
        };
        row("leaf", inner_samples(points))?;
        row("line", linear[k].clone())?;
    }
    let tiles: Vec<Tile> = cells.iter().map(|(v, c)| Tile::new(v, shape, c.clone(), TileKind::Image)).collect();
    let title = "adaptive data-leaf path (upper row of each pair) vs straight pixel interpolation (lower)";
    tile_grid(file, Some(title), &tiles, SAMPLES + 2, 2)?;
    Ok(())
}

fn print_table(report: &serde_json::Value, out: &Path) {
    println!(
        "{:<14} {:>8} {:>10} {:>12} {:>12} {:>14} {:>9}",
        "strategy", "reached", "fraction", "median steps", "median evals", "median final d", "seconds"
    );
    for name in ["euler", "adaptive", "adaptive+via"] {
        let Some(r) = report.get(name) else { continue };
        let number = |key: &str| r[key].as_f64().map_or("-".to_string(), |v| format!("{v:.0}"));
        println!(
            "{name:<14} {:>8} {:>10.3} {:>12} {:>12} {:>14.2} {:>9.1}",
            format!("{}/{}", r["reached"], r["pairs"]),
            r["fraction_reached"].as_f64().unwrap_or(0.0),
            number("median_steps_reached"),
            number("median_jacobian_evals_reached"),
            r["median_final_distance"].as_f64().unwrap_or(f64::NAN),
            r["seconds"].as_f64().unwrap_or(0.0)
        );
    }
    for (name, key) in [("linear interpolation", "linear_interpolation"), ("adaptive path", "adaptive_path_images")] {
        let r = &report[key];
        println!(
            "{name:<21} mean max p {:.3}, path-minimum max p {:.3}, distance to nearest training image {:.2}",
            r["mean_max_probability"].as_f64().unwrap_or(f64::NAN),
            r["mean_of_path_minimum_max_probability"].as_f64().unwrap_or(f64::NAN),
            r["mean_distance_to_nearest_training_image"].as_f64().unwrap_or(f64::NAN)
        );
    }
    println!("wrote {} and {}", out.join("eval-paths.json").display(), out.join("paths.png").display());
}
