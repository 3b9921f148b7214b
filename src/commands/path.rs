//! `leafwalk path`: data-leaf (or noise-leaf) paths between images, drawn and logged; one pair
//! or a CSV of pairs walked as one batch.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::bail;
use candle_core::{Device, Tensor};
use leafwalk_data::{image_file_shape, mirror, ImageShape, ImageSource};
use leafwalk_models::Classifier;
use leafwalk_plot::{render_tiles, tile_grid, write_gif, Tile, TileKind};
use leafwalk_walk::{Ending, PairPath, PathRecord, State};
use serde_json::json;

use crate::cli::{PathArgs, ViaArg};
use crate::commands::walking::{integrator_name, path_options, training_waypoints, walk_pairs};
use crate::commands::{fresh_output, input_batch, load_model};

/// Frames in the GIF at most (evenly spaced over the walk) and in the strip.
const GIF_FRAMES: usize = 60;
const STRIP_FRAMES: usize = 9;

pub fn run(args: PathArgs, data_root: &Path) -> anyhow::Result<ExitCode> {
    let options = path_options(&args.walk)?;
    let sources = match (&args.pairs, &args.from, &args.to) {
        (Some(csv), _, _) => leafwalk_data::read_pairs(csv)?,
        (None, Some(from), Some(to)) => vec![(from.clone(), to.clone())],
        // The target is the start, mirrored once its pixels are read.
        (None, Some(from), None) if args.to_flipped => vec![(from.clone(), from.clone())],
        _ => bail!("give --from and --to (or --to-flipped), or --pairs"),
    };
    let model = load_model(&args.model)?;
    let mut states = Vec::with_capacity(sources.len());
    let mut targets = Vec::with_capacity(sources.len());
    for (from, to) in &sources {
        let mut pixels = load_pair(&model, from, to, &args, data_root)?;
        if args.to_flipped {
            pixels[1] = mirror(&pixels[1], model.input_shape());
        }
        states.push((State::from_pixels(&model, &pixels[0]), State::from_pixels(&model, &pixels[1])));
        targets.push(pixels[1].clone());
    }
    // The pairs as the log names them.
    let names: Vec<(String, String)> = sources
        .iter()
        .map(|(from, to)| {
            let to = if args.to_flipped { format!("{to}, mirrored") } else { to.to_string() };
            (from.to_string(), to)
        })
        .collect();
    let batch = args.pairs.is_some();
    let folders: Vec<PathBuf> = if batch {
        (0..sources.len()).map(|k| args.out.join(format!("pair-{k:03}"))).collect()
    } else {
        vec![args.out.clone()]
    };
    if batch {
        fresh_output(&args.out, "summary.csv")?;
    }
    for folder in &folders {
        prepare_out(folder)?;
    }
    let points_files: Vec<Option<PathBuf>> = folders
        .iter()
        .map(|folder| {
            args.save_points.as_ref().map(|name| {
                if batch {
                    folder.join(name.file_name().unwrap_or(name.as_os_str()))
                } else {
                    name.clone()
                }
            })
        })
        .collect();
    if let Some(existing) = points_files.iter().flatten().find(|file| file.exists()) {
        bail!("{}: already exists; choose another --save-points", existing.display());
    }
    let waypoints = match args.walk.via {
        ViaArg::Auto => Some(training_waypoints(&model, data_root)?),
        ViaArg::Direct => None,
    };

    let bar = indicatif::ProgressBar::new(1000);
    let template =
        if batch { "{spinner} {msg} [{elapsed_precise}]" } else { "{bar:30} distance {msg} [{elapsed_precise}]" };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    let start_distances: Vec<f64> = states.iter().map(|(from, to)| from.distance(to)).collect();
    let mut steps_taken = 0usize;
    let classes = model.meta().classes.clone();
    let walked = walk_pairs(&model, &states, &args.walk, waypoints.as_deref(), |pair, r| {
        steps_taken += 1;
        if batch {
            bar.set_message(format!("{} paths, {steps_taken} steps", states.len()));
            bar.tick();
        } else {
            let span = (start_distances[pair] - args.walk.threshold).max(1e-9);
            bar.set_position((((start_distances[pair] - r.distance) / span).clamp(0.0, 1.0) * 1000.0) as u64);
            let predicts = &classes[r.prediction];
            bar.set_message(format!("{:.3} (step {}, predicts {predicts} p {:.3})", r.distance, r.step, r.probability));
        }
    })?;
    bar.finish_and_clear();

    let mut summaries = Vec::new();
    for (k, walk) in walked.iter().enumerate() {
        let title = match (walk.noise_steps, walk.waypoints.len()) {
            (0, 0) => "data-leaf path (step: prediction probability), then the target".to_string(),
            (0, n) => format!("data-leaf path steered through {n} training images (step: prediction probability), then the target"),
            (s, _) => format!("noise-leaf path: {s} kernel steps, then along the leaf (step: prediction probability), then the target"),
        };
        let o = &walk.outcome;
        write_walk(&folders[k], &model, &o.points, &o.records, Some(&targets[k]), &title)?;
        if let Some(file) = &points_files[k] {
            save_points(file, &model, walk, &names[k])?;
        }
        summaries.push(summary(
            &names[k],
            &folders[k],
            walk,
            start_distances[k],
            integrator_name(options.integrator),
            &classes,
        ));
    }
    if batch {
        write_summary_csv(&args.out.join("summary.csv"), &summaries)?;
    }
    if args.json {
        let shown = if batch { json!(summaries) } else { summaries[0].clone() };
        println!("{}", serde_json::to_string_pretty(&shown)?);
    } else {
        for (k, walk) in walked.iter().enumerate() {
            print_line(&names[k], walk, start_distances[k], &folders[k], options.stall_window);
        }
    }
    if let Some((k, step)) = walked.iter().enumerate().find_map(|(k, w)| match w.outcome.ending {
        Ending::Diverged { step } => Some((k, step)),
        _ => None,
    }) {
        bail!(
            "{} → {}: diverged at step {step}: the Jacobian is not finite (NaN/Inf); wrote the {} points computed so far to {}",
            names[k].0,
            names[k].1,
            walked[k].outcome.points.len(),
            folders[k].display()
        );
    }
    Ok(if walked.iter().all(|w| w.outcome.reached()) { ExitCode::SUCCESS } else { ExitCode::from(3) })
}

/// Both ends of a pair as pixels; image files must already have the model's size and
/// channels unless `--resize` is given.
fn load_pair(
    model: &Classifier,
    from: &ImageSource,
    to: &ImageSource,
    args: &PathArgs,
    data_root: &Path,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let wanted = model.input_shape();
    for source in [from, to] {
        if let (ImageSource::File(file), false) = (source, args.resize) {
            let found = image_file_shape(file)?;
            if found != wanted {
                bail!(
                    "{}: a {found} image, but the model takes {wanted} images (pass --resize to convert it)",
                    file.display()
                );
            }
        }
    }
    let batch = input_batch(&[from.clone(), to.clone()], model, args.invert, data_root)?;
    Ok(batch.flatten_from(1)?.to_vec2()?)
}

fn ending_name(ending: Ending) -> &'static str {
    match ending {
        Ending::Reached => "reached",
        Ending::ReachedClass { .. } => "reached_class",
        Ending::Stalled { .. } => "stalled",
        Ending::StepLimit => "step_limit",
        Ending::Diverged { .. } => "diverged",
    }
}

fn summary(
    (from, to): &(String, String),
    out: &Path,
    walk: &PairPath,
    start_distance: f64,
    integrator: &str,
    classes: &[String],
) -> serde_json::Value {
    let o = &walk.outcome;
    json!({
        "from": from, "to": to, "out": out,
        "integrator": integrator,
        "leaf": if walk.noise_steps > 0 { "noise" } else { "data" },
        "reached": o.reached(), "ending": ending_name(o.ending), "stalled_at": o.stalled_at(),
        "steps": o.steps(), "jacobian_evals": o.jacobian_evals,
        "start_distance": start_distance, "final_distance": o.final_distance(),
        "path_length": leafwalk_walk::walked_length(o),
        "target_class": classes[walk.target_class], "flip_step": walk.flip_step,
        "waypoints": walk.waypoints, "seconds": walk.seconds,
    })
}

fn print_line((from, to): &(String, String), walk: &PairPath, start: f64, out: &Path, window: usize) {
    let o = &walk.outcome;
    let ending = match o.ending {
        Ending::Reached if walk.waypoints.is_empty() => "reached the target".to_string(),
        Ending::Reached => format!("reached the target steered through {} training images", walk.waypoints.len()),
        Ending::ReachedClass { step } => format!("predicts the target's class from step {step}"),
        Ending::Stalled { step } => format!("stalled at step {step}: no progress over {window} Jacobians"),
        Ending::StepLimit => "stopped at the step limit".to_string(),
        Ending::Diverged { step } => format!("diverged at step {step}"),
    };
    println!(
        "{from} → {to}: {ending}; distance {start:.3} → {:.3} in {} steps, {} Jacobians ({:.1} s); wrote {}",
        o.final_distance(),
        o.steps(),
        o.jacobian_evals,
        walk.seconds,
        out.display()
    );
}

fn write_summary_csv(path: &Path, summaries: &[serde_json::Value]) -> anyhow::Result<()> {
    let columns = [
        "from",
        "to",
        "out",
        "reached",
        "ending",
        "steps",
        "jacobian_evals",
        "start_distance",
        "final_distance",
        "seconds",
    ];
    let mut text = columns.join(",") + "\n";
    for row in summaries {
        let cells: Vec<String> = columns
            .iter()
            .map(|c| match &row[*c] {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        text.push_str(&cells.join(","));
        text.push('\n');
    }
    leafwalk_data::write_bytes_atomic(path, text.as_bytes())?;
    Ok(())
}

/// Every point of the walk in pixels `[K+1, C, H, W]` with its log, as safetensors.
fn save_points(file: &Path, model: &Classifier, walk: &PairPath, (from, to): &(String, String)) -> anyhow::Result<()> {
    let o = &walk.outcome;
    let shape: ImageShape = model.input_shape();
    let pixels: Vec<f32> = o.points.iter().flat_map(|x| x.to_pixels(model)).collect();
    let column = |f: &dyn Fn(&PathRecord) -> f64| -> Vec<f64> { o.records.iter().map(f).collect() };
    let device = Device::Cpu;
    let tensors = vec![
        (
            "points".to_string(),
            Tensor::from_vec(pixels, (o.points.len(), shape.channels, shape.height, shape.width), &device)?,
        ),
        ("distance".to_string(), Tensor::new(column(&|r| r.distance), &device)?),
        ("probability".to_string(), Tensor::new(column(&|r| r.probability), &device)?),
        (
            "prediction".to_string(),
            Tensor::new(o.records.iter().map(|r| r.prediction as i64).collect::<Vec<_>>(), &device)?,
        ),
        ("trace_g".to_string(), Tensor::new(column(&|r| r.trace_g.unwrap_or(f64::NAN)), &device)?),
        ("step_size".to_string(), Tensor::new(column(&|r| r.step_size), &device)?),
    ];
    let metadata = HashMap::from([
        ("leafwalk.from".to_string(), from.clone()),
        ("leafwalk.to".to_string(), to.clone()),
        ("leafwalk.ending".to_string(), ending_name(o.ending).to_string()),
        ("leafwalk.classes".to_string(), model.meta().classes.join(",")),
        ("leafwalk.units".to_string(), "points: pixels in [0, 1]; distance, step_size: normalised units".to_string()),
    ]);
    leafwalk_models::checkpoint::write(file, &tensors, metadata)?;
    Ok(())
}

pub(crate) fn record_json(r: &PathRecord, classes: &[String]) -> serde_json::Value {
    json!({
        "step": r.step, "distance": r.distance, "prediction": classes[r.prediction],
        "probability": r.probability, "trace_g": r.trace_g, "step_size": r.step_size,
    })
}

/// Refuses a folder that already holds a walk, so no earlier result is overwritten.
pub(crate) fn prepare_out(out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)
        .map_err(|e| anyhow::anyhow!("{}: cannot create the output folder: {e}", out.display()))?;
    if out.join("path.jsonl").exists() {
        bail!("{}: already holds a path; choose another --out", out.display());
    }
    Ok(())
}

/// `count` indices spread evenly over 0..len, first and last included.
fn spread(len: usize, count: usize) -> Vec<usize> {
    if len <= count {
        return (0..len).collect();
    }
    (0..count).map(|k| k * (len - 1) / (count - 1)).collect()
}

/// Writes a walk's `path.jsonl`, `strip.png` (9 evenly spaced frames, then `target` if any)
/// and `path.gif`.
pub(crate) fn write_walk(
    out: &Path,
    model: &leafwalk_models::Classifier,
    points: &[State],
    records: &[PathRecord],
    target: Option<&[f32]>,
    title: &str,
) -> anyhow::Result<()> {
    let classes = &model.meta().classes;
    let mut log = String::new();
    for r in records {
        log.push_str(&serde_json::to_string(&record_json(r, classes))?);
        log.push('\n');
    }
    let log_path = out.join("path.jsonl");
    leafwalk_data::write_bytes_atomic(&log_path, log.as_bytes())?;
    let shape: ImageShape = model.input_shape();
    // A diverged walk's last point has no record (its Jacobian was not finite).
    let frame = |k: usize| -> (Vec<f32>, String) {
        let caption = match records.get(k) {
            Some(r) => format!("{}: {} {:.2}", r.step, classes[r.prediction], r.probability),
            None => format!("{k}: not finite"),
        };
        (points[k].to_pixels(model), caption)
    };
    let strip: Vec<(Vec<f32>, String)> = spread(points.len(), STRIP_FRAMES).into_iter().map(frame).collect();
    let mut tiles: Vec<Tile> = strip.iter().map(|(v, c)| Tile::new(v, shape, c.clone(), TileKind::Image)).collect();
    if let Some(target) = target {
        tiles.push(Tile::new(target, shape, "target".into(), TileKind::Image));
    }
    tile_grid(&out.join("strip.png"), Some(title), &tiles, tiles.len(), 3)?;
    let mut frames = Vec::new();
    for k in spread(points.len(), GIF_FRAMES) {
        let (values, caption) = frame(k);
        frames.push(
            render_tiles(None, &[Tile::new(&values, shape, caption, TileKind::Image)], 1, 4)
                .map_err(anyhow::Error::msg)?,
        );
    }
    write_gif(&out.join("path.gif"), frames, 80)?;
    Ok(())
}
