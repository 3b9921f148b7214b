//! `leafwalk eval-paths`: how often paths connect random test pairs, at what cost, and how
//! their images compare with straight pixel interpolation between the same endpoints.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Tensor};
use leafwalk_data::Dataset;
use leafwalk_geometry::median;
use leafwalk_models::Classifier;
use leafwalk_plot::tile_grid;
use leafwalk_walk::{PairPath, State};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::cli::{EvalPathsArgs, IntegratorArg, LeafArg, PathWalkArgs, ViaArg};
use crate::commands::frames::{inner_samples, interpolate, NearestIndex, SAMPLES};
use crate::commands::shard::{append_parts, floats, image_shape, output_file, Append, Part, Shard, SheetTile};
use crate::commands::walking::{path_options, training_waypoints, walk_pairs};
use crate::commands::{load_model, model_dataset};

/// Pairs drawn in the PNG sheet.
const SHEET_PAIRS: usize = 8;

/// One pair's walk under one strategy.
#[derive(Serialize, Deserialize)]
struct PairResult {
    reached: bool,
    steps: usize,
    jacobian_evals: usize,
    final_distance: f64,
}

/// One strategy's pairs (in pair order) and the seconds they took (summed over the shards).
#[derive(Serialize, Deserialize)]
struct StrategyResults {
    name: String,
    pairs: Vec<PairResult>,
    seconds: f64,
}

/// Images sampled along paths, [`SAMPLES`] a path in pair order: each one's max class
/// probability and distance to the nearest training image.
#[derive(Serialize, Deserialize, Default)]
struct SampleValues {
    max_probability: Vec<f32>,
    #[serde(with = "floats")]
    nearest_distance: Vec<f64>,
}

/// Raw per-pair results of an `eval-paths` run or of one shard of it: what `merge` combines and
/// the report is computed from. The sheet's tiles are those of the run's first [`SHEET_PAIRS`]
/// pairs that fall in the shard.
#[derive(Serialize, Deserialize)]
struct PathResults {
    strategies: Vec<StrategyResults>,
    linear_interpolation: SampleValues,
    adaptive_path_images: SampleValues,
    sheet: Vec<SheetTile>,
}

impl Append for PathResults {
    /// Appends the next shard's pairs.
    fn append(&mut self, next: PathResults) -> anyhow::Result<()> {
        let names = |r: &PathResults| r.strategies.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
        if names(self) != names(&next) {
            bail!("merge: eval-paths shards walked different strategies ({:?}, {:?})", names(self), names(&next));
        }
        for (strategy, next) in self.strategies.iter_mut().zip(next.strategies) {
            strategy.pairs.extend(next.pairs);
            strategy.seconds += next.seconds;
        }
        for (samples, next) in [
            (&mut self.linear_interpolation, next.linear_interpolation),
            (&mut self.adaptive_path_images, next.adaptive_path_images),
        ] {
            samples.max_probability.extend(next.max_probability);
            samples.nearest_distance.extend(next.nearest_distance);
        }
        self.sheet.extend(next.sheet);
        Ok(())
    }
}

pub fn run(args: EvalPathsArgs, data_root: &Path) -> anyhow::Result<ExitCode> {
    if args.data.index.is_some() {
        bail!("--data {}: give a split (NAME:SPLIT), not one image", args.data);
    }
    if args.pairs == 0 {
        bail!("--pairs must be at least 1");
    }
    path_options(&args.walk)?;
    let model = load_model(&args.model)?;
    let shape = model.input_shape();
    let split = Dataset::load(args.data.dataset, args.data.split, data_root)?;
    if split.info.shape != shape {
        bail!("--data {}: {} images, but the model takes {} images", args.data, split.info.shape, shape);
    }
    if split.len() < 2 {
        bail!("--data {}: needs at least 2 images", args.data);
    }
    std::fs::create_dir_all(&args.out)?;
    output_file(args.shard, &args.out, "eval-paths")?;
    let state = |i: usize| -> anyhow::Result<State> { Ok(State::from_pixels(&model, &split.pixels(i)?)) };
    // Every shard draws all the pairs, so that each takes its own part of the same list.
    let mut rng = ChaCha8Rng::seed_from_u64(args.walk.seed);
    let mut indices = Vec::with_capacity(args.pairs);
    while indices.len() < args.pairs {
        let (a, b) = (rng.random_range(0..split.len()), rng.random_range(0..split.len()));
        if a != b {
            indices.push((a, b));
        }
    }
    let shard = args.shard.unwrap_or(Shard::WHOLE);
    let range = shard.range(indices.len());
    let pairs: Vec<(State, State)> =
        indices[range.clone()].iter().map(|&(a, b)| Ok((state(a)?, state(b)?))).collect::<anyhow::Result<_>>()?;

    let mut strategies =
        vec![("euler", IntegratorArg::Euler, ViaArg::Direct), ("adaptive", IntegratorArg::Adaptive, ViaArg::Direct)];
    if args.with_via {
        strategies.push(("adaptive+via", IntegratorArg::Adaptive, ViaArg::Auto));
    }
    // The training images serve both as steering waypoints and as the nearest-image index.
    let train_states = training_waypoints(&model, data_root)?;
    let mut walked_strategies = Vec::new();
    let mut adaptive_paths = Vec::new();
    for (name, integrator, via) in strategies {
        let walk = PathWalkArgs { integrator, via, leaf: LeafArg::Data, ..args.walk.clone() };
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message(format!("{name}: walking {} pairs (shard {shard})", pairs.len()));
        let started = Instant::now();
        let walked = walk_pairs(&model, &pairs, &walk, Some(&train_states), |_, _| bar.tick())?;
        let seconds = started.elapsed().as_secs_f64();
        bar.finish_and_clear();
        let results = walked
            .iter()
            .map(|w| PairResult {
                reached: w.outcome.reached(),
                steps: w.outcome.steps(),
                jacobian_evals: w.outcome.jacobian_evals,
                final_distance: w.outcome.final_distance(),
            })
            .collect();
        walked_strategies.push(StrategyResults { name: name.to_string(), pairs: results, seconds });
        if integrator == IntegratorArg::Adaptive && via == ViaArg::Direct {
            adaptive_paths = walked;
        }
    }

    let index = NearestIndex::new(train_states.iter().map(|s| s.0.as_slice()), model.device())?;
    let linear: Vec<Vec<State>> =
        pairs.iter().map(|(a, b)| interpolate(&a.0, &b.0).into_iter().map(State).collect()).collect();
    let along: Vec<Vec<State>> = adaptive_paths.iter().map(|w| inner_samples(&w.outcome.points)).collect();
    let sheet_pairs = range.start.min(SHEET_PAIRS)..range.end.min(SHEET_PAIRS);
    let results = PathResults {
        strategies: walked_strategies,
        linear_interpolation: sample_values(&model, &index, &linear)?,
        adaptive_path_images: sample_values(&model, &index, &along)?,
        sheet: sheet_tiles(&model, &adaptive_paths, &pairs, &linear, sheet_pairs.len())?,
    };
    // Everything the shards of one run must agree on (a merge checks it).
    let settings = json!({
        "data": args.data.to_string(), "pairs": args.pairs, "seed": args.walk.seed, "model": args.model.model,
        "threshold": args.walk.threshold, "pair_indices": indices,
        "samples_per_path": SAMPLES, "nearest_training_images_of": format!("{}:train ({} images)", model_dataset(&model)?.name, train_states.len()),
        "units": "distances in the model's normalised units",
        "walk": format!("{:?}", args.walk), "with_via": args.with_via,
        "image": [shape.channels, shape.height, shape.width],
    });
    if args.shard.is_some() {
        Part { command: "eval-paths".into(), settings, shard, results }.write(&args.out)?;
        return Ok(ExitCode::SUCCESS);
    }
    report(&settings, &results, &args.out, args.json)
}

/// The report of an `eval-paths` run from its shards' results (in shard order), as one process
/// would have written it (the strategies' seconds summed over the shards).
pub fn merge(settings: &Value, parts: Vec<Value>, out: &Path) -> anyhow::Result<ExitCode> {
    let merged: PathResults = append_parts("eval-paths", parts)?;
    let pairs = settings["pairs"].as_u64().unwrap_or(0) as usize;
    let complete = merged.strategies.iter().all(|s| s.pairs.len() == pairs)
        && [&merged.linear_interpolation, &merged.adaptive_path_images]
            .iter()
            .all(|s| s.max_probability.len() == pairs * SAMPLES && s.nearest_distance.len() == pairs * SAMPLES);
    if !complete {
        bail!("merge: the eval-paths shards do not hold the run's {pairs} pairs");
    }
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    output_file(None, out, "eval-paths")?;
    report(settings, &merged, out, false)
}

/// eval-paths.json, paths.png and the table of a whole run's results.
fn report(settings: &Value, results: &PathResults, out: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let mut report = serde_json::Map::new();
    for strategy in &results.strategies {
        report.insert(strategy.name.clone(), strategy_report(strategy));
    }
    report.insert("linear_interpolation".into(), sample_report(&results.linear_interpolation));
    report.insert("adaptive_path_images".into(), sample_report(&results.adaptive_path_images));
    let mut setup = settings.clone();
    if let Some(setup) = setup.as_object_mut() {
        for internal in ["walk", "with_via", "image"] {
            setup.remove(internal);
        }
    }
    report.insert("setup".into(), setup);
    let report = Value::Object(report);
    let tiles = SheetTile::tiles(&results.sheet, image_shape(settings)?);
    let title = "adaptive data-leaf path (upper row of each pair) vs straight pixel interpolation (lower)";
    tile_grid(&out.join("paths.png"), Some(title), &tiles, SAMPLES + 2, 2)?;
    let text = serde_json::to_string_pretty(&report)?;
    leafwalk_data::write_bytes_atomic(&out.join("eval-paths.json"), text.as_bytes())?;
    if json {
        println!("{text}");
    } else {
        print_table(&report, out);
    }
    Ok(ExitCode::SUCCESS)
}

fn strategy_report(strategy: &StrategyResults) -> Value {
    let pairs = &strategy.pairs;
    let reached: Vec<&PairResult> = pairs.iter().filter(|p| p.reached).collect();
    json!({
        "reached": reached.len(), "pairs": pairs.len(), "fraction_reached": reached.len() as f64 / pairs.len() as f64,
        "median_steps_reached": median(&reached.iter().map(|p| p.steps as f64).collect::<Vec<_>>()),
        "median_jacobian_evals_reached": median(&reached.iter().map(|p| p.jacobian_evals as f64).collect::<Vec<_>>()),
        "median_jacobian_evals_all": median(&pairs.iter().map(|p| p.jacobian_evals as f64).collect::<Vec<_>>()),
        "median_final_distance": median(&pairs.iter().map(|p| p.final_distance).collect::<Vec<_>>()),
        "seconds": strategy.seconds,
    })
}

/// Max class probability and distance to the nearest training image of the images sampled
/// along `paths`. Each path's images are one batch (one forward, one product with the index), so that a path's values do not depend on
/// the other paths of its shard (a batched forward's rounding depends on the batch size).
fn sample_values(model: &Classifier, index: &NearestIndex, paths: &[Vec<State>]) -> anyhow::Result<SampleValues> {
    let shape = model.input_shape();
    let (mut max_probability, mut nearest_distance) = (Vec::new(), Vec::new());
    for path in paths {
        let values: Vec<f32> = path.iter().flat_map(|s| s.0.iter().copied()).collect();
        let batch = Tensor::from_vec(values, (path.len(), shape.channels, shape.height, shape.width), model.device())?;
        max_probability
            .extend(model.log_probs_normalised(&batch)?.exp()?.max(1)?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
        nearest_distance.extend(index.distances(path.iter().map(|s| s.0.as_slice()))?);
    }
    Ok(SampleValues { max_probability, nearest_distance })
}

fn sample_report(values: &SampleValues) -> Value {
    let per_path_min: Vec<f64> = values
        .max_probability
        .chunks(SAMPLES)
        .map(|c| c.iter().copied().fold(f32::INFINITY, f32::min) as f64)
        .collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    json!({
        "images": values.max_probability.len(),
        "mean_max_probability": mean(&values.max_probability.iter().map(|&p| p as f64).collect::<Vec<_>>()),
        "mean_of_path_minimum_max_probability": mean(&per_path_min),
        "mean_distance_to_nearest_training_image": mean(&values.nearest_distance),
    })
}

/// The sheet's tiles of the first `count` pairs: each pair's leaf path above its straight line.
fn sheet_tiles(
    model: &Classifier,
    paths: &[PairPath],
    pairs: &[(State, State)],
    linear: &[Vec<State>],
    count: usize,
) -> anyhow::Result<Vec<SheetTile>> {
    let classes = &model.meta().classes;
    let mut tiles = Vec::new();
    for (k, walk) in paths.iter().enumerate().take(count) {
        let (from, target) = &pairs[k];
        for (label, inner) in [("leaf", inner_samples(&walk.outcome.points)), ("line", linear[k].clone())] {
            let all = std::iter::once(from.clone()).chain(inner).chain(std::iter::once(target.clone()));
            for (j, x) in all.enumerate() {
                let (class, p) = leafwalk_walk::prediction(model, &x)?;
                let head = if j == 0 { format!("{label}: ") } else { String::new() };
                tiles.push(SheetTile {
                    pixels: x.to_pixels(model),
                    caption: format!("{head}{} {:.2}", classes[class], p),
                });
            }
        }
    }
    Ok(tiles)
}

fn print_table(report: &Value, out: &Path) {
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
