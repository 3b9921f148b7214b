//! `leafwalk ood-score` and `leafwalk eval-ood`: out-of-distribution scores of images, and how
//! well each separates an in-distribution set from OOD sets.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use leafwalk_data::{write_bytes_atomic, ImageSet, Invert, NamedImage};
use leafwalk_metrics::detection::{evaluate as detection, Detection};
use leafwalk_models::Classifier;
use leafwalk_ood::{score_images, OodSet, Reference, ReferenceOptions, Score, ScoreOptions, ScoreTable};
use leafwalk_plot::{line_chart, LineChart, Series};
use serde_json::json;

use crate::cli::{EvalOodArgs, OodScoreArgs, ProjectionArgs};
use crate::commands::walking::projection_options;
use crate::commands::{fresh_output, load_model, model_dataset, training_set};

/// The training-set reference of `model` (cached under `<data root>/cache/`) and score options.
fn scoring(model: &Classifier, args: &ProjectionArgs, data_root: &Path) -> anyhow::Result<(Reference, ScoreOptions)> {
    let path = projection_options(args)?;
    let train = training_set(model, data_root)?;
    let options = ReferenceOptions { cache_dir: Some(data_root.join("cache")) };
    let reference = Reference::build(model, &train, &options)?;
    Ok((reference, ScoreOptions { anchors_per_point: args.anchors, path, ..ScoreOptions::default() }))
}

pub fn score(args: OodScoreArgs, data_root: &Path) -> anyhow::Result<ExitCode> {
    let which = Score::parse_list(&args.score)?;
    if args.limit == Some(0) {
        bail!("--limit must be at least 1");
    }
    if let Some(out) = &args.out {
        if out.is_dir() {
            bail!("--out {}: is a folder, expected a CSV file path", out.display());
        }
    }
    let model = load_model(&args.model)?;
    let info = model_dataset(&model)?;
    let mut images: Vec<NamedImage> = Vec::new();
    for text in &args.inputs {
        let set = ImageSet::parse(text)?;
        images.extend(set.load(info, data_root, args.limit, Invert::Off)?);
    }
    let (reference, options) = scoring(&model, &args.projection, data_root)?;
    let pixels: Vec<Vec<f32>> = images.iter().map(|i| i.pixels.clone()).collect();
    let table = score_images(&model, &reference, &pixels, &which, &options)?;
    let csv = scores_csv(&images, &table, &model);
    if let Some(out) = &args.out {
        write_bytes_atomic(out, csv.as_bytes())?;
    }
    if args.json {
        let rows: Vec<serde_json::Value> = images
            .iter()
            .enumerate()
            .map(|(k, image)| {
                let (class, p) = table.predictions[k];
                let mut row = json!({"name": image.name, "prediction": model.meta().classes[class], "probability": p});
                for (score, values) in &table.columns {
                    row[score.name()] = json!(values[k]);
                }
                row
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", csv.replace(',', "\t"));
    }
    Ok(ExitCode::SUCCESS)
}

fn scores_csv(images: &[NamedImage], table: &ScoreTable, model: &Classifier) -> String {
    let mut text = String::from("name,prediction,probability");
    for (score, _) in &table.columns {
        let _ = write!(text, ",{score}");
    }
    text.push('\n');
    for (k, image) in images.iter().enumerate() {
        let (class, p) = table.predictions[k];
        let _ = write!(text, "{},{},{p:.4}", image.name.replace(',', ";"), model.meta().classes[class]);
        for (_, values) in &table.columns {
            let _ = write!(text, ",{:.6e}", values[k]);
        }
        text.push('\n');
    }
    text
}

pub fn evaluate(args: EvalOodArgs, data_root: &Path) -> anyhow::Result<ExitCode> {
    let which = Score::parse_list(&args.scores)?;
    let ood_sets: Vec<OodSet> = args.ood.split(',').map(|s| OodSet::parse(s.trim())).collect::<Result<_, _>>()?;
    if args.limit == 0 {
        bail!("--limit must be at least 1");
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("{}: cannot create", args.out.display()))?;
    let report_path = fresh_output(&args.out, "eval-ood.json")?;
    let model = load_model(&args.model)?;
    let info = model_dataset(&model)?;
    let id_images = ImageSet::parse(&args.in_set)?.load(info, data_root, Some(args.limit), Invert::Off)?;
    let (reference, options) = scoring(&model, &args.projection, data_root)?;

    // The leaf distances walk for every image: minutes per set, so say which set is running.
    let score_set = |name: &str, images: &[NamedImage]| -> anyhow::Result<ScoreTable> {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        bar.set_message(format!("scoring {name} ({} images)", images.len()));
        let started = Instant::now();
        let pixels: Vec<Vec<f32>> = images.iter().map(|i| i.pixels.clone()).collect();
        let table = score_images(&model, &reference, &pixels, &which, &options)?;
        bar.finish_and_clear();
        tracing::info!("{name}: {} images scored in {:.1} s", images.len(), started.elapsed().as_secs_f64());
        Ok(table)
    };
    let id_scores = score_set(&args.in_set, &id_images)?;
    let mut results = Vec::new();
    for set in &ood_sets {
        let images = set.images(&id_images, info, data_root, Some(args.limit), args.seed)?;
        let ood_scores = score_set(&set.to_string(), &images)?;
        let mut per_score = Vec::new();
        for &score in &which {
            let (id, ood) = (id_scores.column(score), ood_scores.column(score));
            let (Some(id), Some(ood)) = (id, ood) else { continue };
            let result = detection(id, ood).with_context(|| format!("{score} on {set}"))?;
            per_score.push((score, result));
        }
        let file = format!("roc-{}.png", file_stem(&set.to_string()));
        draw_roc(&args.out.join(&file), &args.in_set, set, &per_score)?;
        results.push((set.to_string(), images.len(), per_score, file));
    }

    let table = markdown_table(&args.in_set, &which, &results);
    print!("{table}");
    write_bytes_atomic(&args.out.join("eval-ood.md"), table.as_bytes())?;
    let report = json!({
        "in": args.in_set,
        "in_images": id_images.len(),
        "model": args.model.model,
        "limit": args.limit,
        "seed": args.seed,
        "anchors": args.projection.anchors,
        "max_steps": args.projection.max_steps,
        "sets": results.iter().map(|(set, count, per_score, file)| json!({
            "set": set,
            "images": count,
            "roc_png": file,
            "scores": per_score.iter().map(|(score, d)| (score.name().to_string(), json!({
                "auroc": d.auroc, "aupr_in": d.aupr_in, "aupr_out": d.aupr_out, "fpr_at_95_tpr": d.fpr_at_95_tpr,
            }))).collect::<serde_json::Map<_, _>>(),
        })).collect::<Vec<_>>(),
    });
    write_bytes_atomic(&report_path, serde_json::to_string_pretty(&report)?.as_bytes())?;
    tracing::info!("wrote {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}

/// `fashion-mnist:test` → `fashion-mnist-test`, a path → its file name.
fn file_stem(set: &str) -> String {
    let name = Path::new(set).file_name().and_then(|n| n.to_str()).unwrap_or(set);
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '-' }).collect()
}

type SetResult = (String, usize, Vec<(Score, Detection)>, String);

/// AUROC per (score, set) with the best of each column in bold, then FPR@95%TPR.
fn markdown_table(in_set: &str, which: &[Score], results: &[SetResult]) -> String {
    let mut text = String::new();
    for (metric, pick, higher_is_better) in [
        ("AUROC", (|d: &Detection| d.auroc) as fn(&Detection) -> f64, true),
        ("FPR at 95% TPR", |d: &Detection| d.fpr_at_95_tpr, false),
    ] {
        let _ = writeln!(text, "{metric}, in-distribution {in_set}:\n");
        let _ = write!(text, "| score |");
        for (set, count, _, _) in results {
            let _ = write!(text, " {set} ({count}) |");
        }
        let _ = write!(text, "\n|---|");
        text.push_str(&"---:|".repeat(results.len()));
        text.push('\n');
        for &score in which {
            let _ = write!(text, "| {score} |");
            for (_, _, per_score, _) in results {
                let value = per_score.iter().find(|(s, _)| *s == score).map(|(_, d)| pick(d));
                let best = per_score.iter().map(|(_, d)| pick(d)).fold(
                    if higher_is_better { f64::NEG_INFINITY } else { f64::INFINITY },
                    |a, b| if higher_is_better { a.max(b) } else { a.min(b) },
                );
                match value {
                    Some(v) if v == best => {
                        let _ = write!(text, " **{v:.4}** |");
                    }
                    Some(v) => {
                        let _ = write!(text, " {v:.4} |");
                    }
                    None => text.push_str(" – |"),
                }
            }
            text.push('\n');
        }
        text.push('\n');
    }
    text
}

fn draw_roc(path: &Path, in_set: &str, set: &OodSet, per_score: &[(Score, Detection)]) -> anyhow::Result<()> {
    let series = per_score
        .iter()
        .map(|(score, d)| Series { label: format!("{score} (AUROC {:.3})", d.auroc), points: d.roc.clone() })
        .collect();
    let chart = LineChart {
        title: format!("ROC: {in_set} (negative) vs {set} (positive)"),
        x_label: "false-positive rate".into(),
        y_label: "true-positive rate".into(),
        log_y: false,
        series,
        secondary: None,
    };
    Ok(line_chart(path, &chart)?)
}
