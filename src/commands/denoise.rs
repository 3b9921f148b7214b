//! `leafwalk denoise` and `leafwalk eval-denoise`: projection onto the data leaf as a denoiser,
//! and how it compares with the classic filters on noisy test images.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use leafwalk_data::{save_image, write_bytes_atomic, Dataset, ImageSet, Invert, NamedImage};
use leafwalk_denoise::{
    add_noise, gaussian_blur, leaf_denoise, median3, nearest_images, neighbour_mean, tune, LeafTangents, Pca,
};
use leafwalk_metrics::quality::{psnr, ssim};
use leafwalk_models::Classifier;
use leafwalk_plot::{tile_grid, Tile, TileKind};
use leafwalk_walk::{PathOptions, State};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::cli::{DenoiseArgs, EvalDenoiseArgs, ProjectionArgs};
use crate::commands::shard::{append_parts, floats, image_shape, output_file, Append, Part, Shard, SheetTile};
use crate::commands::walking::{dataset_states, projection_options};
use crate::commands::{fresh_output, load_model, model_dataset, training_set};

/// Blur widths (pixels) and PCA component counts tried when tuning.
const BLUR_WIDTHS: [f64; 6] = [0.5, 0.7, 1.0, 1.4, 2.0, 2.8];
const PCA_COMPONENTS: [usize; 9] = [5, 10, 20, 35, 50, 75, 100, 150, 200];
/// Training images the principal components are computed from.
const PCA_IMAGES: usize = 4000;
/// Neighbour counts the k-NN mean is tuned over.
const NEIGHBOURS: [usize; 6] = [1, 2, 4, 8, 16, 32];
/// Neighbour counts and leaf shrinkages the first-order leaf denoiser is tuned over (one
/// Jacobian per training image it uses).
const LEAF_NEIGHBOURS: [usize; 4] = [1, 2, 4, 8];
const SHRINKS: [f64; 5] = [0.0, 0.25, 0.5, 0.75, 1.0];
/// Images per sheet.
const SHEET_IMAGES: usize = 6;

/// The model's training set, its images as the projection's anchors, and the walk options.
fn anchors(
    model: &Classifier,
    args: &ProjectionArgs,
    data_root: &Path,
) -> anyhow::Result<(Dataset, Vec<State>, PathOptions)> {
    let options = projection_options(args)?;
    let train = training_set(model, data_root)?;
    let anchors = dataset_states(model, &train)?;
    Ok((train, anchors, options))
}

pub fn denoise(args: DenoiseArgs, data_root: &Path) -> anyhow::Result<ExitCode> {
    if args.limit == Some(0) {
        bail!("--limit must be at least 1");
    }
    fresh_output(&args.out, "sheet.png")?;
    let model = load_model(&args.model)?;
    let shape = model.input_shape();
    let info = model_dataset(&model)?;
    let mut images: Vec<NamedImage> = Vec::new();
    for text in &args.inputs {
        images.extend(ImageSet::parse(text)?.load(info, data_root, args.limit, Invert::Off)?);
    }
    let (_, anchors, options) = anchors(&model, &args.projection, data_root)?;
    let pixels: Vec<Vec<f32>> = images.iter().map(|i| i.pixels.clone()).collect();
    let denoised = leaf_denoise(&model, &pixels, &anchors, args.projection.anchors, &options)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("{}: cannot create", args.out.display()))?;
    let mut tiles = Vec::new();
    for (k, (image, clean)) in images.iter().zip(&denoised).enumerate() {
        let file = args.out.join(format!("{k:03}-denoised.png"));
        save_image(&file, shape, clean)?;
        println!("{}\t{}", image.name, file.display());
        if k < 4 * SHEET_IMAGES {
            tiles.push(Tile::new(&image.pixels, shape, format!("{k}: input"), TileKind::Image));
            tiles.push(Tile::new(clean, shape, format!("{k}: projected"), TileKind::Image));
        }
    }
    tile_grid(&args.out.join("sheet.png"), Some("inputs and their projections onto the data leaf"), &tiles, 8, 3)?;
    Ok(ExitCode::SUCCESS)
}

/// σ values from `0.1,0.3,0.5`: each finite and ≥ 0.
fn sigmas(text: &str) -> anyhow::Result<Vec<f64>> {
    text.split(',')
        .map(|part| {
            let sigma: f64 =
                part.trim().parse().with_context(|| format!("--sigma {text}: {part:?} is not a number"))?;
            if !(sigma.is_finite() && sigma >= 0.0) {
                bail!("--sigma {text}: {sigma} is not a noise level (σ ≥ 0)");
            }
            Ok(sigma)
        })
        .collect()
}

/// One method's outputs over the test images: each image's PSNR and SSIM against its clean one.
#[derive(Serialize, Deserialize)]
struct MethodScores {
    method: String,
    #[serde(with = "floats")]
    psnr_db: Vec<f64>,
    #[serde(with = "floats")]
    ssim: Vec<f64>,
}

/// One noise level: the settings tuned on training images (the same in every shard), the leaf
/// projection's seconds (summed over shards), every method's per-image scores, and the sheet
/// tiles of the run's first [`SHEET_IMAGES`] images that fall in the shard.
#[derive(Serialize, Deserialize)]
struct LevelResults {
    sigma: f64,
    tuned: serde_json::Value,
    leaf_seconds: f64,
    methods: Vec<MethodScores>,
    sheet: Vec<SheetTile>,
}

/// Raw per-image results of an `eval-denoise` run or of one shard of it: what `merge` combines
/// and the report is computed from.
#[derive(Serialize, Deserialize)]
struct DenoiseResults {
    tune_images: usize,
    levels: Vec<LevelResults>,
}

impl Append for DenoiseResults {
    /// Appends the next shard's images.
    fn append(&mut self, next: DenoiseResults) -> anyhow::Result<()> {
        let tuned = |r: &DenoiseResults| r.levels.iter().map(|l| (l.sigma, l.tuned.clone())).collect::<Vec<_>>();
        if tuned(self) != tuned(&next) || self.tune_images != next.tune_images {
            bail!("merge: eval-denoise shards tuned their methods differently (another run or another version)");
        }
        for (level, next) in self.levels.iter_mut().zip(next.levels) {
            level.leaf_seconds += next.leaf_seconds;
            for (method, next) in level.methods.iter_mut().zip(next.methods) {
                method.psnr_db.extend(next.psnr_db);
                method.ssim.extend(next.ssim);
            }
            level.sheet.extend(next.sheet);
        }
        Ok(())
    }
}

pub fn evaluate(args: EvalDenoiseArgs, data_root: &Path) -> anyhow::Result<ExitCode> {
    let sigmas = sigmas(&args.sigma)?;
    if args.data.index.is_some() {
        bail!("--data {}: give a split (NAME:SPLIT), not one image", args.data);
    }
    if args.limit == 0 || args.tune_images == 0 {
        bail!("--limit and --tune-images must be at least 1");
    }
    output_file(args.shard, &args.out, "eval-denoise")?;
    let model = load_model(&args.model)?;
    let shape = model.input_shape();
    let test = Dataset::load(args.data.dataset, args.data.split, data_root)?;
    if test.info.shape != shape {
        bail!("--data {}: {} images, but the model takes {} images", args.data, test.info.shape, shape);
    }
    let all_clean: Vec<Vec<f32>> = (0..test.len().min(args.limit)).map(|k| test.pixels(k)).collect::<Result<_, _>>()?;
    let shard = args.shard.unwrap_or(Shard::WHOLE);
    let range = shard.range(all_clean.len());
    let clean = &all_clean[range.clone()];
    let sheet_images = range.start.min(SHEET_IMAGES)..range.end.min(SHEET_IMAGES);
    let (train, anchors, options) = anchors(&model, &args.projection, data_root)?;
    let train_images: Vec<Vec<f32>> = (0..train.len()).map(|k| train.pixels(k)).collect::<Result<_, _>>()?;
    let started = Instant::now();
    let pca = Pca::fit(&train_images[..train_images.len().min(PCA_IMAGES)], *PCA_COMPONENTS.last().unwrap_or(&1))?;
    tracing::info!(
        "principal components of {} training images: {:.1} s",
        train_images.len().min(PCA_IMAGES),
        started.elapsed().as_secs_f64()
    );
    // Tuned on the last training images (the PCA saw the first ones); the neighbour methods
    // search the others, so that a tuning image never finds itself.
    let tune_from = train_images.len().saturating_sub(args.tune_images);
    let (pool, tune_clean) = train_images.split_at(tune_from);
    if pool.is_empty() {
        bail!("--tune-images {} leaves no training images to search for neighbours", args.tune_images);
    }
    let mut tangents = LeafTangents::default();
    std::fs::create_dir_all(&args.out).with_context(|| format!("{}: cannot create", args.out.display()))?;

    let mut levels = Vec::new();
    for &sigma in &sigmas {
        let tune_noisy = add_noise(tune_clean, sigma, args.seed.wrapping_add(1))?;
        let blur_width = tune(tune_clean, &tune_noisy, &BLUR_WIDTHS, |_, x, w| gaussian_blur(x, shape, w))?;
        let components = tune(tune_clean, &tune_noisy, &PCA_COMPONENTS, |_, x, k| pca.project(x, k))?;
        // The noise of every image, so that each shard's images get the noise they get in one run.
        let noisy = add_noise(&all_clean, sigma, args.seed)?.drain(range.clone()).collect::<Vec<_>>();
        // Neighbours found once per image.
        let most = *NEIGHBOURS.last().unwrap_or(&1);
        let tune_neighbours = nearest_images(pool, &tune_noisy, most);
        let test_neighbours = nearest_images(pool, &noisy, most);
        let nearest_k =
            tune(tune_clean, &tune_noisy, &NEIGHBOURS, |i, _, k| neighbour_mean(pool, &tune_neighbours[i], k))?;
        let leaf_k = *LEAF_NEIGHBOURS.last().unwrap_or(&1);
        tangents.extend(
            &model,
            pool,
            tune_neighbours.iter().chain(&test_neighbours).flat_map(|n| n[..leaf_k.min(n.len())].to_vec()),
        )?;
        let grid: Vec<(usize, f64)> =
            LEAF_NEIGHBOURS.iter().flat_map(|&k| SHRINKS.iter().map(move |&s| (k, s))).collect();
        let (first_k, shrink) =
            tune(tune_clean, &tune_noisy, &grid, |i, x, (k, s)| tangents.denoise(pool, x, &tune_neighbours[i], k, s))?;
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        bar.set_message(format!("σ = {sigma}: projecting {} images onto the data leaf (shard {shard})", noisy.len()));
        let started = Instant::now();
        let leaf = leaf_denoise(&model, &noisy, &anchors, args.projection.anchors, &options)?;
        let leaf_seconds = started.elapsed().as_secs_f64();
        bar.finish_and_clear();
        let outputs: Vec<(String, Vec<Vec<f32>>)> = vec![
            ("noisy input".into(), noisy.clone()),
            (
                format!("Gaussian blur (σ = {blur_width} px)"),
                noisy.iter().map(|x| gaussian_blur(x, shape, blur_width)).collect(),
            ),
            ("3×3 median".into(), noisy.iter().map(|x| median3(x, shape)).collect()),
            (format!("PCA (k = {components})"), noisy.iter().map(|x| pca.project(x, components)).collect()),
            (
                format!("mean of {nearest_k} nearest training images"),
                test_neighbours.iter().map(|n| neighbour_mean(pool, n, nearest_k)).collect(),
            ),
            (
                format!("first-order leaf (k = {first_k}, s = {shrink})"),
                noisy
                    .iter()
                    .zip(&test_neighbours)
                    .map(|(x, n)| tangents.denoise(pool, x, n, first_k, shrink))
                    .collect(),
            ),
            ("leaf projection (walks)".into(), leaf),
        ];
        let mut methods = Vec::new();
        for (name, outputs) in &outputs {
            let mut scores = MethodScores { method: name.clone(), psnr_db: Vec::new(), ssim: Vec::new() };
            for (c, o) in clean.iter().zip(outputs) {
                scores.psnr_db.push(psnr(c, o)?);
                scores.ssim.push(ssim(c, o, shape.channels, shape.height, shape.width)?);
            }
            methods.push(scores);
        }
        let mut sheet = Vec::new();
        for k in 0..sheet_images.len() {
            sheet.push(SheetTile { pixels: clean[k].clone(), caption: "clean".into() });
            for (name, outputs) in &outputs {
                let caption = name.split(' ').next().unwrap_or("").to_string();
                sheet.push(SheetTile { pixels: outputs[k].clone(), caption });
            }
        }
        let tuned = json!({"blur_width_px": blur_width, "pca_components": components, "nearest_mean_k": nearest_k,
            "first_order_leaf_k": first_k, "first_order_leaf_shrink": shrink});
        levels.push(LevelResults { sigma, tuned, leaf_seconds, methods, sheet });
    }
    let results = DenoiseResults { tune_images: tune_clean.len(), levels };
    // Everything the shards of one run must agree on (a merge checks it).
    let settings = json!({"data": args.data.to_string(), "images": all_clean.len(), "model": args.model.model,
        "seed": args.seed, "sigmas": sigmas, "tune_images": args.tune_images, "anchors": args.projection.anchors,
        "max_steps": args.projection.max_steps, "image": [shape.channels, shape.height, shape.width]});
    if args.shard.is_some() {
        Part { command: "eval-denoise".into(), settings, shard, results }.write(&args.out)?;
        return Ok(ExitCode::SUCCESS);
    }
    report(&settings, &results, &args.out)
}

/// The report of an `eval-denoise` run from its shards' results (in shard order), as one
/// process would have written it (the leaf projection's seconds summed over the shards).
pub fn merge(settings: &serde_json::Value, parts: Vec<serde_json::Value>, out: &Path) -> anyhow::Result<ExitCode> {
    let merged: DenoiseResults = append_parts("eval-denoise", parts)?;
    let images = settings["images"].as_u64().unwrap_or(0) as usize;
    let complete =
        merged.levels.iter().flat_map(|l| &l.methods).all(|m| m.psnr_db.len() == images && m.ssim.len() == images);
    if !complete || merged.levels.len() != settings["sigmas"].as_array().map_or(0, Vec::len) {
        bail!("merge: the eval-denoise shards do not hold the run's {images} images at every noise level");
    }
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    output_file(None, out, "eval-denoise")?;
    report(settings, &merged, out)
}

/// eval-denoise.json, eval-denoise.md, a sheet per noise level and the table of a whole run.
fn report(settings: &serde_json::Value, results: &DenoiseResults, out: &Path) -> anyhow::Result<ExitCode> {
    let shape = image_shape(settings)?;
    let mut levels = Vec::new();
    let mut table = String::from("| σ | method | PSNR (dB) | SSIM |\n|---|---|---:|---:|\n");
    for level in &results.levels {
        let sigma = level.sigma;
        let mut rows = Vec::new();
        for method in &level.methods {
            let (p, s) = (mean(&method.psnr_db), mean(&method.ssim));
            let _ = writeln!(table, "| {sigma} | {} | {p:.2} | {s:.3} |", method.method);
            rows.push(json!({"method": method.method, "psnr_db": p, "ssim": s}));
        }
        let tiles = SheetTile::tiles(&level.sheet, shape);
        let sheet = format!("sheet-sigma{sigma}.png");
        tile_grid(
            &out.join(&sheet),
            Some(&format!("σ = {sigma}: clean, noisy, blur, median, PCA, k-NN mean, first-order leaf, walked leaf")),
            &tiles,
            1 + level.methods.len(),
            3,
        )?;
        let mut entry = level.tuned.clone();
        entry["sigma"] = json!(sigma);
        entry["leaf_seconds"] = json!(level.leaf_seconds);
        entry["methods"] = json!(rows);
        entry["sheet_png"] = json!(sheet);
        levels.push(entry);
    }
    print!("{table}");
    write_bytes_atomic(&out.join("eval-denoise.md"), table.as_bytes())?;
    let report = json!({"data": settings["data"], "images": settings["images"], "model": settings["model"],
        "seed": settings["seed"], "tune_images": results.tune_images, "anchors": settings["anchors"],
        "max_steps": settings["max_steps"], "levels": levels});
    write_bytes_atomic(&out.join("eval-denoise.json"), serde_json::to_string_pretty(&report)?.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}
