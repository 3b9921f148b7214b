//! `leafwalk path`: a data-leaf walk between two images, drawn and logged.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::bail;
use leafwalk_data::ImageShape;
use leafwalk_plot::{render_tiles, tile_grid, write_gif, Tile, TileKind};
use leafwalk_walk::{euler_path, PathOptions, PathRecord, State};
use serde_json::json;

use crate::cli::PathArgs;
use crate::commands::{input_batch, load_model};

/// Frames in the GIF at most (evenly spaced over the walk) and in the strip.
const GIF_FRAMES: usize = 60;
const STRIP_FRAMES: usize = 9;

pub fn run(args: PathArgs, data_root: &Path) -> anyhow::Result<ExitCode> {
    if !(args.step_size.is_finite() && args.step_size > 0.0) {
        bail!("--step-size must be a positive finite number, got {}", args.step_size);
    }
    if !(args.threshold.is_finite() && args.threshold >= 0.0) {
        bail!("--threshold must be a non-negative finite number, got {}", args.threshold);
    }
    let model = load_model(&args.model)?;
    let endpoints = input_batch(&[args.from.clone(), args.to.clone()], &model, args.invert, data_root)?;
    let pixels: Vec<Vec<f32>> = endpoints.flatten_from(1)?.to_vec2()?;
    prepare_out(&args.out)?;

    let (from, to) = (State::from_pixels(&model, &pixels[0]), State::from_pixels(&model, &pixels[1]));
    let options = PathOptions {
        step: args.step_size,
        threshold: args.threshold,
        max_steps: args.max_steps,
        ..Default::default()
    };
    let start_distance = from.distance(&to);
    let bar = indicatif::ProgressBar::new(1000);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:30} distance {msg} [{elapsed_precise}]") {
        bar.set_style(style);
    }
    let started = Instant::now();
    let outcome = euler_path(&model, &from, &to, &options, |r| {
        let done = ((start_distance - r.distance) / (start_distance - args.threshold).max(1e-9)).clamp(0.0, 1.0);
        bar.set_position((done * 1000.0) as u64);
        bar.set_message(format!(
            "{:.3} (step {}, predicts {} p {:.3})",
            r.distance,
            r.step,
            model.meta().classes[r.prediction],
            r.probability
        ));
    })?;
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();

    let title = "data-leaf path (step: prediction probability), then the target";
    write_walk(&args.out, &model, &outcome.points, &outcome.records, Some(&pixels[1]), title)?;

    let last = outcome.records.last().map_or(start_distance, |r| r.distance);
    let summary = json!({
        "from": args.from.to_string(), "to": args.to.to_string(), "out": args.out,
        "reached": outcome.reached, "stalled_at": outcome.stalled_at,
        "steps": outcome.points.len() - 1, "jacobian_evals": outcome.jacobian_evals,
        "start_distance": start_distance, "final_distance": last, "seconds": seconds,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        let ending = match (outcome.reached, outcome.stalled_at) {
            (true, _) => "reached the target".to_string(),
            (false, Some(step)) => format!("stalled at step {step}: no progress over {} steps", options.stall_window),
            (false, None) => format!("stopped at the {}-step limit", options.max_steps),
        };
        println!(
            "{} → {}: {ending}; distance {start_distance:.3} → {last:.3} in {} steps ({:.1} s); wrote {}",
            args.from,
            args.to,
            outcome.points.len() - 1,
            seconds,
            args.out.display()
        );
    }
    Ok(if outcome.reached { ExitCode::SUCCESS } else { ExitCode::from(3) })
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
    leafwalk_data::write_atomic(&log_path, |w| {
        w.write_all(log.as_bytes()).map_err(|e| leafwalk_data::DataError::io(&log_path, e))
    })?;
    let shape: ImageShape = model.input_shape();
    let frame = |k: usize| -> (Vec<f32>, String) {
        let r = &records[k.min(records.len() - 1)];
        (points[k].to_pixels(model), format!("{}: {} {:.2}", r.step, classes[r.prediction], r.probability))
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
