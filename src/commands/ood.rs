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
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::cli::{EvalOodArgs, OodScoreArgs, ProjectionArgs};
use crate::commands::shard::{append_parts, floats, output_file, Append, Part, Shard};
use crate::commands::walking::projection_options;
use crate::commands::{load_model, model_dataset, training_set};

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
    let table = score_images(&model, &reference, &pixels, &which, &options, |_| {})?;
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

/// Raw per-image scores of an `eval-ood` run or of one shard of it: what `merge` combines and
/// the report is computed from.
#[derive(Serialize, Deserialize)]
struct OodScores {
    /// The in-distribution set and its images' scores.
    in_set: SetScores,
    ood_sets: Vec<SetScores>,
}

#[derive(Serialize, Deserialize)]
struct SetScores {
    name: String,
    /// Images of the whole set (all shards).
    images: usize,
    /// One list per score (the settings' `scores`, in order): this shard's images' values, in
    /// image order.
    #[serde(with = "floats::columns")]
    columns: Vec<Vec<f64>>,
}

impl Append for SetScores {
    /// Appends the next shard's images of this set.
    fn append(&mut self, next: SetScores) -> anyhow::Result<()> {
        if next.name != self.name || next.columns.len() != self.columns.len() {
            bail!("merge: an eval-ood shard holds other sets or scores than its settings name");
        }
        self.columns.iter_mut().zip(next.columns).for_each(|(column, next)| column.extend(next));
        Ok(())
    }
}

impl Append for OodScores {
    fn append(&mut self, next: OodScores) -> anyhow::Result<()> {
        if next.ood_sets.len() != self.ood_sets.len() {
            bail!("merge: an eval-ood shard holds other sets or scores than its settings name");
        }
        self.in_set.append(next.in_set)?;
        self.ood_sets.iter_mut().zip(next.ood_sets).try_for_each(|(set, next)| set.append(next))
    }
}

pub fn evaluate(args: EvalOodArgs, data_root: &Path) -> anyhow::Result<ExitCode> {
    let which = Score::parse_list(&args.scores)?;
    let ood_sets: Vec<OodSet> = args.ood.split(',').map(|s| OodSet::parse(s.trim())).collect::<Result<_, _>>()?;
    if args.limit == 0 {
        bail!("--limit must be at least 1");
    }
    let shard = args.shard.unwrap_or(Shard::WHOLE);
    std::fs::create_dir_all(&args.out).with_context(|| format!("{}: cannot create", args.out.display()))?;
    output_file(args.shard, &args.out, "eval-ood")?;
    let model = load_model(&args.model)?;
    let info = model_dataset(&model)?;
    let id_images = ImageSet::parse(&args.in_set)?.load(info, data_root, Some(args.limit), Invert::Off)?;
    let (reference, options) = scoring(&model, &args.projection, data_root)?;

    // The leaf distances walk for every image: minutes per set, so say which set is running.
    let score_set = |name: &str, images: &[NamedImage]| -> anyhow::Result<SetScores> {
        let part = &images[shard.range(images.len())];
        let bar = indicatif::ProgressBar::new(part.len() as u64);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} images [{elapsed_precise}<{eta}]")
        {
            bar.set_style(style);
        }
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        bar.set_message(format!("scoring {name} (shard {shard})"));
        let started = Instant::now();
        let pixels: Vec<Vec<f32>> = part.iter().map(|i| i.pixels.clone()).collect();
        let table = score_images(&model, &reference, &pixels, &which, &options, |done| bar.set_position(done as u64))?;
        bar.finish_and_clear();
        tracing::info!("{name}: {} images scored in {:.1} s", part.len(), started.elapsed().as_secs_f64());
        let columns = table.columns.into_iter().map(|(_, values)| values).collect();
        Ok(SetScores { name: name.to_string(), images: images.len(), columns })
    };
    let in_set = score_set(&args.in_set, &id_images)?;
    let mut scored_sets = Vec::new();
    for set in &ood_sets {
        let images = set.images(&id_images, info, data_root, Some(args.limit), args.seed)?;
        scored_sets.push(score_set(&set.to_string(), &images)?);
    }
    // Everything the shards of one run must agree on, the score list included (a merge checks it).
    let settings = json!({
        "in": args.in_set,
        "ood": ood_sets.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "scores": which.iter().map(|s| s.name()).collect::<Vec<_>>(),
        "model": args.model.model,
        "limit": args.limit,
        "seed": args.seed,
        "anchors": args.projection.anchors,
        "max_steps": args.projection.max_steps,
    });
    let scores = OodScores { in_set, ood_sets: scored_sets };
    if args.shard.is_some() {
        Part { command: "eval-ood".into(), settings, shard, results: scores }.write(&args.out)?;
        return Ok(ExitCode::SUCCESS);
    }
    report(&settings, &which, &scores, &args.out)
}

/// The report of an `eval-ood` run from its shards' results (in shard order), as one process
/// would have written it.
pub fn merge(settings: &serde_json::Value, parts: Vec<serde_json::Value>, out: &Path) -> anyhow::Result<ExitCode> {
    let merged: OodScores = append_parts("eval-ood", parts)?;
    let which: Vec<Score> = serde_json::from_value::<Vec<String>>(settings["scores"].clone())
        .context("merge: the eval-ood settings name no scores")?
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    let sets = settings["ood"].as_array().map_or(0, Vec::len);
    let well_formed = |part: &OodScores| {
        part.ood_sets.len() == sets
            && std::iter::once(&part.in_set).chain(&part.ood_sets).all(|set| set.columns.len() == which.len())
    };
    // Every shard matches the first (appending checks it), so the merged scores show whether all do.
    if !well_formed(&merged) {
        bail!("merge: an eval-ood shard holds other sets or scores than its settings name");
    }
    for set in std::iter::once(&merged.in_set).chain(&merged.ood_sets) {
        if set.columns.iter().any(|column| column.len() != set.images) {
            bail!("merge: the shards hold a different number of {} images than the run ({})", set.name, set.images);
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    output_file(None, out, "eval-ood")?;
    report(settings, &which, &merged, out)
}

/// The table, JSON and ROC curves of a whole run's scores.
fn report(settings: &serde_json::Value, which: &[Score], run: &OodScores, out: &Path) -> anyhow::Result<ExitCode> {
    let in_name = &run.in_set.name;
    let mut results = Vec::new();
    for set in &run.ood_sets {
        let mut per_score = Vec::new();
        for (k, &score) in which.iter().enumerate() {
            let result = detection(&run.in_set.columns[k], &set.columns[k])
                .with_context(|| format!("{score} on {}", set.name))?;
            per_score.push((score, result));
        }
        let file = format!("roc-{}.png", file_stem(&set.name));
        draw_roc(&out.join(&file), in_name, &set.name, &per_score)?;
        results.push((set.name.clone(), set.images, per_score, file));
    }

    let table = markdown_table(in_name, which, &results);
    print!("{table}");
    write_bytes_atomic(&out.join("eval-ood.md"), table.as_bytes())?;
    let report = json!({
        "in": settings["in"],
        "in_images": run.in_set.images,
        "model": settings["model"],
        "limit": settings["limit"],
        "seed": settings["seed"],
        "anchors": settings["anchors"],
        "max_steps": settings["max_steps"],
        "sets": results.iter().map(|(set, count, per_score, file)| json!({
            "set": set,
            "images": count,
            "roc_png": file,
            "scores": per_score.iter().map(|(score, d)| (score.name().to_string(), json!({
                "auroc": d.auroc, "aupr_in": d.aupr_in, "aupr_out": d.aupr_out, "fpr_at_95_tpr": d.fpr_at_95_tpr,
            }))).collect::<serde_json::Map<_, _>>(),
        })).collect::<Vec<_>>(),
    });
    write_bytes_atomic(&out.join("eval-ood.json"), serde_json::to_string_pretty(&report)?.as_bytes())?;
    tracing::info!("wrote {}", out.display());
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

fn draw_roc(path: &Path, in_set: &str, set: &str, per_score: &[(Score, Detection)]) -> anyhow::Result<()> {
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
