//! `leafwalk study`: does the data leaf hold the data? Trains (or reuses) a grid of models from
//! a TOML file, and for every (family, training stage) row measures what the paper claims:
//! whether data-leaf and noise-leaf paths connect random test pairs and how far they close, and
//! whether the images along them look like data *to someone else* — an evaluator classifier of
//! another architecture and the nearest training image — compared with the straight pixel line
//! between the same endpoints. Rows are written one file each as they finish, so one row can be
//! rerun alone (`--only NAME`) and the table is rebuilt from whatever rows exist.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use clap::ValueEnum;
use leafwalk_data::{dataset_info, Dataset, Split};
use leafwalk_geometry::{integrability, median};
use leafwalk_models::{Arch, Classifier, LoadOptions, Variant};
use leafwalk_plot::{line_chart, LineChart, Series};
use leafwalk_train::{snapshot_name, train, Adversary, OptimizerKind, TrainConfig};
use leafwalk_walk::State;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::cli::{ActivationArg, IntegratorArg, LeafArg, PathWalkArgs, PoolingArg, SteerArgs, StudyArgs, ViaArg};
use crate::commands::frames::{inner_samples, interpolate, NearestIndex, SAMPLES};
use crate::commands::shard::{append_parts, output_file, Append, Part, Shard};
use crate::commands::walking::walk_pairs;

/// The finite-difference step (pixels) of the integrability column: the middle of
/// `inspect --integrability`'s three, where smooth models' numbers agree across steps.
const BRACKET_STEP: f64 = 0.01;

/// A study: shared settings and the model families it trains.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StudyConfig {
    /// Random test pairs per model (the same pairs for every model of a dataset).
    pairs: usize,
    #[serde(default)]
    seed: u64,
    /// Evaluator max-probability from which a frame counts as confidently a class.
    #[serde(default = "default_confident")]
    confident: f64,
    /// Step cap of the fixed-step (the paper's) integrator.
    euler_max_steps: usize,
    /// Test images and leaf-direction pairs of the integrability column.
    #[serde(default = "default_integrability_points")]
    integrability_points: usize,
    #[serde(default = "default_integrability_pairs")]
    integrability_pairs: usize,
    /// Dataset name → evaluator checkpoint (relative to the config file).
    evaluators: BTreeMap<String, PathBuf>,
    family: Vec<Family>,
}

fn default_confident() -> f64 {
    0.9
}
fn default_integrability_points() -> usize {
    4
}
fn default_integrability_pairs() -> usize {
    8
}

/// One training run; each of its stages is a row.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Family {
    name: String,
    dataset: String,
    arch: String,
    activation: Option<String>,
    pooling: Option<String>,
    /// PGD adversary, as `train --adversarial` takes it.
    adversarial: Option<String>,
    /// Training stages in epochs (0: the initial weights).
    stages: Vec<f64>,
    #[serde(default = "default_lr")]
    lr: f64,
    #[serde(default = "default_optimizer")]
    optimizer: String,
    #[serde(default = "default_seed")]
    seed: u64,
}

fn default_lr() -> f64 {
    0.01
}
fn default_optimizer() -> String {
    "sgd".into()
}
fn default_seed() -> u64 {
    42
}

/// A family's settings, parsed.
struct Recipe {
    arch: Arch,
    variant: Variant,
    adversarial: Option<Adversary>,
    optimizer: OptimizerKind,
}

impl Family {
    fn recipe(&self) -> anyhow::Result<Recipe> {
        let bad = |what: &str, e: String| anyhow::anyhow!("family '{}': {what}: {e}", self.name);
        let arch: Arch = self.arch.parse().map_err(|e: leafwalk_models::ModelError| bad("arch", e.to_string()))?;
        // The config names choices as `train`'s flags do, so it parses them with the same enums.
        fn choice<T: ValueEnum>(text: Option<&str>) -> Result<Option<T>, String> {
            text.map(|t| T::from_str(t, true)).transpose()
        }
        let activation = choice::<ActivationArg>(self.activation.as_deref()).map_err(|e| bad("activation", e))?;
        let pooling = choice::<PoolingArg>(self.pooling.as_deref()).map_err(|e| bad("pooling", e))?;
        let adversarial = self
            .adversarial
            .as_deref()
            .map(str::parse::<Adversary>)
            .transpose()
            .map_err(|e| bad("adversarial", e.to_string()))?;
        let optimizer: OptimizerKind = self.optimizer.parse().map_err(|e: String| bad("optimizer", e))?;
        if self.stages.is_empty() || self.stages.iter().any(|s| !(s.is_finite() && *s >= 0.0)) {
            return Err(bad("stages", "give one or more non-negative numbers of epochs".into()));
        }
        let variant =
            Variant { activation: activation.map(ActivationArg::activation), pooling: pooling.map(PoolingArg::kind) };
        Ok(Recipe { arch, variant, adversarial, optimizer })
    }

    fn row_name(&self, stage: f64) -> String {
        format!("{}@{stage}", self.name)
    }
}

pub fn run(args: StudyArgs, data_root: &Path) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.config).with_context(|| args.config.display().to_string())?;
    let config: StudyConfig = toml::from_str(&text).with_context(|| args.config.display().to_string())?;
    if let Some(shard) = args.shard {
        output_file(Some(shard), &args.out, "study")?;
    }
    let config_dir = args.config.parent().unwrap_or(Path::new("."));
    let pairs = args.pairs.unwrap_or(config.pairs);
    if pairs == 0 || config.euler_max_steps == 0 {
        bail!("{}: pairs and euler_max_steps must be at least 1", args.config.display());
    }
    let mut recipes = Vec::new();
    for (k, family) in config.family.iter().enumerate() {
        if config.family[..k].iter().any(|f| f.name == family.name) {
            bail!("{}: family '{}' appears twice", args.config.display(), family.name);
        }
        if !config.evaluators.contains_key(&family.dataset) {
            bail!(
                "{}: no evaluator for dataset '{}' (family '{}')",
                args.config.display(),
                family.dataset,
                family.name
            );
        }
        recipes.push(family.recipe().with_context(|| args.config.display().to_string())?);
    }
    let mut rows: Vec<(usize, f64)> = config
        .family
        .iter()
        .enumerate()
        .flat_map(|(k, f)| f.stages.iter().map(move |&s| (k, s)))
        .filter(|&(k, s)| args.only.is_empty() || args.only.contains(&config.family[k].row_name(s)))
        .collect();
    // A shard measures its part of the rows in the config's order (training what they need).
    let shard = args.shard.unwrap_or(Shard::WHOLE);
    rows = rows.drain(shard.range(rows.len())).collect();
    if let Some(unknown) =
        args.only.iter().find(|name| !config.family.iter().any(|f| f.stages.iter().any(|&s| &f.row_name(s) == *name)))
    {
        bail!("--only {unknown}: no such row in {} (rows are FAMILY@STAGE)", args.config.display());
    }
    let rows_dir = args.out.join("rows");
    std::fs::create_dir_all(&rows_dir).with_context(|| rows_dir.display().to_string())?;
    let started = Instant::now();

    let mut measured = Vec::new();
    let mut benches: BTreeMap<String, Bench> = BTreeMap::new();
    for (k, family) in config.family.iter().enumerate() {
        let stages: Vec<f64> = rows.iter().filter(|r| r.0 == k).map(|r| r.1).collect();
        if stages.is_empty() {
            continue;
        }
        let run_dir = args.out.join("runs").join(&family.name);
        let train_seconds = ensure_trained(family, &recipes[k], &stages, &run_dir, data_root)?;
        if !benches.contains_key(&family.dataset) {
            let evaluator = config_dir.join(&config.evaluators[&family.dataset]);
            benches.insert(family.dataset.clone(), Bench::new(&family.dataset, &evaluator, &config, pairs, data_root)?);
        }
        let bench = &benches[&family.dataset];
        for stage in stages {
            let name = family.row_name(stage);
            let row_started = Instant::now();
            let checkpoint = run_dir.join(snapshot_name(stage));
            let model = Classifier::load(&checkpoint, LoadOptions::default(), &Device::Cpu)?;
            let mut row = measure(&model, bench, &config)?;
            row["name"] = json!(name);
            row["family"] = json!(family.name);
            row["stage_epochs"] = json!(stage);
            row["dataset"] = json!(family.dataset);
            row["arch"] = json!(family.arch);
            row["activation"] = json!(family.activation.as_deref().unwrap_or("as built"));
            row["pooling"] = json!(family.pooling.as_deref().unwrap_or("as built"));
            row["adversarial"] = json!(family.adversarial.as_deref().unwrap_or("none"));
            row["checkpoint"] = json!(checkpoint);
            row["train_seconds_family"] = json!(train_seconds);
            row["seconds"] = json!(row_started.elapsed().as_secs_f64());
            row["command"] = json!(format!(
                "leafwalk study --config {} --out {} --only {name}",
                args.config.display(),
                args.out.display()
            ));
            let file = rows_dir.join(format!("{name}.json"));
            leafwalk_data::write_bytes_atomic(&file, serde_json::to_string_pretty(&row)?.as_bytes())?;
            eprintln!("study: {}", one_line(&row));
            measured.push(row);
        }
    }
    let settings = json!({"config": args.config, "config_text": text, "pairs": pairs, "only": args.only});
    let seconds = started.elapsed().as_secs_f64();
    if args.shard.is_some() {
        let results = StudyRows { rows: measured, seconds };
        Part { command: "study".into(), settings, shard, results }.write(&args.out)?;
        return Ok(ExitCode::SUCCESS);
    }
    report(&config, &settings, seconds, &args.out, args.json)
}

/// A study shard's rows (its part's results) and the seconds it took.
#[derive(Serialize, Deserialize)]
struct StudyRows {
    rows: Vec<Value>,
    seconds: f64,
}

impl Append for StudyRows {
    fn append(&mut self, next: StudyRows) -> anyhow::Result<()> {
        self.rows.extend(next.rows);
        self.seconds += next.seconds;
        Ok(())
    }
}

/// The report of a study from its shards' rows (in shard order): their row files, and the
/// report over every row in the output folder (the seconds summed over the shards).
pub fn merge(settings: &Value, parts: Vec<Value>, out: &Path) -> anyhow::Result<ExitCode> {
    let text = settings["config_text"].as_str().context("merge: the study shards hold no config")?;
    let config: StudyConfig = toml::from_str(text).context("merge: the study shards' config")?;
    let merged: StudyRows = append_parts("study", parts)?;
    let rows_dir = out.join("rows");
    std::fs::create_dir_all(&rows_dir).with_context(|| rows_dir.display().to_string())?;
    for row in &merged.rows {
        let name = row["name"].as_str().context("merge: a study row without a name")?;
        let file = rows_dir.join(format!("{name}.json"));
        leafwalk_data::write_bytes_atomic(&file, serde_json::to_string_pretty(row)?.as_bytes())?;
    }
    report(&config, settings, merged.seconds, out, false)
}

/// study.json, study.md and the figures over every row in `out`/rows, in the config's order,
/// so that reruns of single rows land in it.
fn report(
    config: &StudyConfig,
    settings: &Value,
    seconds: f64,
    out: &Path,
    print_json: bool,
) -> anyhow::Result<ExitCode> {
    let rows_dir = out.join("rows");
    let mut all = Vec::new();
    for family in &config.family {
        for &stage in &family.stages {
            let file = rows_dir.join(format!("{}.json", family.row_name(stage)));
            if file.exists() {
                let text = std::fs::read_to_string(&file).with_context(|| file.display().to_string())?;
                all.push(serde_json::from_str::<Value>(&text).with_context(|| file.display().to_string())?);
            }
        }
    }
    let report = json!({
        "config": settings["config"], "pairs": settings["pairs"], "seed": config.seed, "confident": config.confident,
        "euler_max_steps": config.euler_max_steps, "samples_per_path": SAMPLES,
        "bracket_step_px": BRACKET_STEP, "seconds_this_run": seconds, "rows": all,
    });
    let text = serde_json::to_string_pretty(&report)?;
    leafwalk_data::write_bytes_atomic(&out.join("study.json"), text.as_bytes())?;
    let table = markdown_table(&all);
    leafwalk_data::write_bytes_atomic(&out.join("study.md"), table.as_bytes())?;
    draw_figures(out, config, &all)?;
    if print_json {
        println!("{text}");
    } else {
        print!("{table}");
        println!(
            "wrote {} rows to {} (study.json, study.md, study-closure.png, study-frames.png) in {seconds:.0} s",
            all.len(),
            out.display(),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Trains the family as far as `stages` need unless their checkpoints exist; the run continues
/// (`--resume`) when an earlier, shorter study left it. Returns the run's training seconds.
fn ensure_trained(
    family: &Family,
    recipe: &Recipe,
    stages: &[f64],
    run_dir: &Path,
    data_root: &Path,
) -> anyhow::Result<f64> {
    let missing = stages.iter().any(|&s| !run_dir.join(snapshot_name(s)).exists());
    if missing {
        let epochs = stages.iter().fold(1.0f64, |m, &s| m.max(s.ceil())) as usize;
        let snapshots: Vec<f64> =
            family.stages.iter().copied().filter(|&s| s == 0.0 || (s.fract() != 0.0 && s < epochs as f64)).collect();
        let config = TrainConfig {
            dataset: dataset_info(&family.dataset)?,
            arch: recipe.arch,
            variant: recipe.variant,
            normalisation: None,
            epochs,
            lr: family.lr,
            batch_size: 60,
            optimizer: recipe.optimizer,
            seed: family.seed,
            out: run_dir.to_path_buf(),
            data_root: data_root.to_path_buf(),
            checkpoint_every: None,
            resume: run_dir.join("resume.safetensors").exists(),
            progress: false,
            reference_size: 200,
            min_accuracy: 0.0,
            device: Device::Cpu,
            adversarial: recipe.adversarial,
            snapshots,
        };
        eprintln!("study: training {} to {epochs} epoch(s) in {}", family.name, run_dir.display());
        train(&config, |_| false).with_context(|| format!("family '{}'", family.name))?;
        if let Some(stage) = stages.iter().find(|&&s| !run_dir.join(snapshot_name(s)).exists()) {
            bail!(
                "family '{}': stage {stage} has no checkpoint in {} (the run passed it before the stage was added; delete the folder to retrain)",
                family.name,
                run_dir.display()
            );
        }
    }
    let log = std::fs::read_to_string(run_dir.join(leafwalk_train::LOG_FILE)).unwrap_or_default();
    Ok(log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|r| r["seconds"].as_f64())
        .fold(0.0, f64::max))
}

/// What every model of one dataset is measured against: the test pairs, the training images
/// (pixels) for nearest-image distances, the evaluator, and the straight line's frames.
struct Bench {
    test: Dataset,
    pairs: Vec<(usize, usize)>,
    nearest: NearestIndex,
    evaluator: Classifier,
    evaluator_name: String,
    linear: Value,
}

impl Bench {
    fn new(
        dataset: &str,
        evaluator: &Path,
        config: &StudyConfig,
        pairs: usize,
        data_root: &Path,
    ) -> anyhow::Result<Self> {
        let info = dataset_info(dataset)?;
        let test = Dataset::load(info, Split::Test, data_root)?;
        let train_set = Dataset::load(info, Split::Train, data_root)?;
        let train_pixels: Vec<Vec<f32>> =
            (0..train_set.len()).map(|i| train_set.pixels(i)).collect::<Result<_, _>>()?;
        // Moved in, so each image is freed once copied into the index (60,000 for Fashion-MNIST).
        let nearest = NearestIndex::new(train_pixels.into_iter(), &Device::Cpu)?;
        let evaluator_model = Classifier::load(evaluator, LoadOptions::default(), &Device::Cpu)
            .with_context(|| format!("evaluator for {dataset}"))?;
        if evaluator_model.meta().dataset.as_deref() != Some(info.name) {
            bail!(
                "{}: the evaluator for {dataset} was trained on {:?}",
                evaluator.display(),
                evaluator_model.meta().dataset
            );
        }
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut drawn = Vec::with_capacity(pairs);
        while drawn.len() < pairs {
            let (a, b) = (rng.random_range(0..test.len()), rng.random_range(0..test.len()));
            if a != b {
                drawn.push((a, b));
            }
        }
        let mut bench = Bench {
            test,
            pairs: drawn,
            nearest,
            evaluator: evaluator_model,
            evaluator_name: evaluator.display().to_string(),
            linear: Value::Null,
        };
        let mut frames = Vec::new();
        for &(a, b) in &bench.pairs {
            frames.extend(interpolate(&bench.test.pixels(a)?, &bench.test.pixels(b)?));
        }
        bench.linear = bench.judge(&frames, config.confident)?;
        Ok(bench)
    }

    /// The evaluator's and the training set's view of some frames (pixels).
    fn judge(&self, frames: &[Vec<f32>], confident: f64) -> anyhow::Result<Value> {
        let shape = self.evaluator.input_shape();
        let values: Vec<f32> = frames.iter().flatten().copied().collect();
        let batch = Tensor::from_vec(values, (frames.len(), shape.channels, shape.height, shape.width), &Device::Cpu)?;
        let max_probs: Vec<f32> =
            self.evaluator.log_probs_t(&batch, false)?.exp()?.max(1)?.to_dtype(DType::F32)?.to_vec1()?;
        let distances = self.nearest.distances(frames.iter().map(Vec::as_slice))?;
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let confident_count = max_probs.iter().filter(|&&p| p as f64 >= confident).count();
        Ok(json!({
            "frames": frames.len(),
            "evaluator_mean_max_probability": mean(&max_probs.iter().map(|&p| p as f64).collect::<Vec<_>>()),
            "confident_fraction": confident_count as f64 / frames.len().max(1) as f64,
            "mean_nearest_training_distance_px": mean(&distances),
        }))
    }
}

/// One row's measurements of `model`.
fn measure(model: &Classifier, bench: &Bench, config: &StudyConfig) -> anyhow::Result<Value> {
    let pixels: Vec<(Vec<f32>, Vec<f32>)> = bench
        .pairs
        .iter()
        .map(|&(a, b)| Ok((bench.test.pixels(a)?, bench.test.pixels(b)?)))
        .collect::<anyhow::Result<_>>()?;
    let states: Vec<(State, State)> =
        pixels.iter().map(|(a, b)| (State::from_pixels(model, a), State::from_pixels(model, b))).collect();
    let start_distances: Vec<f64> = states
        .iter()
        .map(|(a, b)| a.0.iter().zip(&b.0).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt())
        .collect();
    let mut row = json!({
        "test_accuracy": model.meta().test_accuracy,
        "mean_trace_g": model.meta().extra.get("mean_trace_g").and_then(|t| t.parse::<f64>().ok()),
        "evaluator": bench.evaluator_name,
        "linear_frames": bench.linear,
    });
    for (key, integrator, leaf) in [
        ("data_euler", IntegratorArg::Euler, LeafArg::Data),
        ("data_adaptive", IntegratorArg::Adaptive, LeafArg::Data),
        ("noise_adaptive", IntegratorArg::Adaptive, LeafArg::Noise),
    ] {
        let max_steps = if integrator == IntegratorArg::Euler { config.euler_max_steps } else { 5000 };
        let walk = PathWalkArgs {
            leaf,
            noise_steps: 250,
            integrator,
            step_size: 0.1,
            tolerance: 0.1,
            max_steps,
            threshold: 1.0,
            stall_window: None,
            flip_target: false,
            via: ViaArg::Direct,
            seed: config.seed,
            steer: SteerArgs { via_candidates: 4, via_rounds: 4 },
        };
        let started = Instant::now();
        let walked = walk_pairs(model, &states, &walk, None, |_, _| {})?;
        let closures: Vec<f64> =
            walked.iter().zip(&start_distances).map(|(w, d)| w.outcome.final_distance() / d.max(1e-12)).collect();
        let mut report = json!({
            "connected": walked.iter().filter(|w| w.outcome.reached()).count(),
            "pairs": walked.len(),
            "median_closure": median(&closures),
            "median_jacobian_evals": median(&walked.iter().map(|w| w.outcome.jacobian_evals as f64).collect::<Vec<_>>()),
            "seconds": started.elapsed().as_secs_f64(),
        });
        if integrator == IntegratorArg::Adaptive {
            let frames: Vec<Vec<f32>> =
                walked.iter().flat_map(|w| inner_samples(&w.outcome.points)).map(|s| s.to_pixels(model)).collect();
            report["frames"] = bench.judge(&frames, config.confident)?;
        }
        row[key] = report;
    }
    let mut asymmetries = Vec::new();
    for k in 0..config.integrability_points.min(bench.test.len()) {
        let index = bench.pairs[k % bench.pairs.len()].0;
        let shape = model.input_shape();
        let point =
            Tensor::from_vec(bench.test.pixels(index)?, (1, shape.channels, shape.height, shape.width), &Device::Cpu)?;
        let stats = integrability(model, &point, config.integrability_pairs, &[BRACKET_STEP], config.seed + k as u64)?;
        asymmetries.extend(stats.iter().filter(|s| s.pairs > 0).map(|s| s.mean_asymmetry));
    }
    row["integrability_mean_asymmetry"] = json!(if asymmetries.is_empty() {
        None
    } else {
        Some(asymmetries.iter().sum::<f64>() / asymmetries.len() as f64)
    });
    Ok(row)
}

fn one_line(row: &Value) -> String {
    format!(
        "{} acc {:.3}, adaptive closure {:.3}, confident frames {:.2} (line {:.2}), {:.0} s",
        row["name"].as_str().unwrap_or("?"),
        row["test_accuracy"].as_f64().unwrap_or(f64::NAN),
        row["data_adaptive"]["median_closure"].as_f64().unwrap_or(f64::NAN),
        row["data_adaptive"]["frames"]["confident_fraction"].as_f64().unwrap_or(f64::NAN),
        row["linear_frames"]["confident_fraction"].as_f64().unwrap_or(f64::NAN),
        row["seconds"].as_f64().unwrap_or(f64::NAN),
    )
}

fn markdown_table(rows: &[Value]) -> String {
    let mut out = String::from(
        "| row | test acc | mean tr G | Euler: connected, closure | adaptive: connected, closure | noise leaf: connected, closure | confident frames: leaf / noise / line | nearest train (px): leaf / noise / line | bracket asymmetry | s |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let number = |v: &Value, digits: usize| v.as_f64().map_or("–".to_string(), |x| format!("{x:.digits$}"));
    for r in rows {
        let path = |key: &str| {
            format!("{}/{}, {}", r[key]["connected"], r[key]["pairs"], number(&r[key]["median_closure"], 2))
        };
        let frames = |field: &str, digits: usize| {
            format!(
                "{} / {} / {}",
                number(&r["data_adaptive"]["frames"][field], digits),
                number(&r["noise_adaptive"]["frames"][field], digits),
                number(&r["linear_frames"][field], digits)
            )
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r["name"].as_str().unwrap_or("?"),
            number(&r["test_accuracy"], 3),
            r["mean_trace_g"].as_f64().map_or("–".into(), |t| format!("{t:.3e}")),
            path("data_euler"),
            path("data_adaptive"),
            path("noise_adaptive"),
            frames("confident_fraction", 2),
            frames("mean_nearest_training_distance_px", 2),
            number(&r["integrability_mean_asymmetry"], 2),
            number(&r["seconds"], 0),
        ));
    }
    out
}

/// Closure and judged plausibility against training stage, one line per family with more
/// than one stage.
fn draw_figures(out: &Path, config: &StudyConfig, rows: &[Value]) -> anyhow::Result<()> {
    let series = |pick: &dyn Fn(&Value) -> Option<f64>| -> Vec<Series> {
        config
            .family
            .iter()
            .filter_map(|f| {
                let points: Vec<(f64, f64)> = rows
                    .iter()
                    .filter(|r| r["family"] == f.name.as_str())
                    .filter_map(|r| Some((r["stage_epochs"].as_f64()?, pick(r)?)))
                    .collect();
                (points.len() > 1).then(|| Series { label: f.name.clone(), points })
            })
            .collect()
    };
    let closure = series(&|r| r["data_adaptive"]["median_closure"].as_f64());
    if closure.is_empty() {
        return Ok(());
    }
    line_chart(
        &out.join("study-closure.png"),
        &LineChart {
            title: "data-leaf paths (adaptive): median final ÷ start distance (1 = no progress, 0 = connected)".into(),
            x_label: "training (epochs)".into(),
            y_label: "median closure".into(),
            log_y: false,
            series: closure,
            secondary: None,
        },
    )?;
    let mut frames = series(&|r| r["data_adaptive"]["frames"]["confident_fraction"].as_f64());
    // The straight line's frames are the same for every model of a dataset: one flat reference
    // line per dataset, across that dataset's stages.
    let mut datasets: Vec<&str> = config.family.iter().map(|f| f.dataset.as_str()).collect();
    datasets.sort_unstable();
    datasets.dedup();
    for dataset in datasets {
        let of_dataset: Vec<&Value> = rows.iter().filter(|r| r["dataset"] == dataset).collect();
        let stages: Vec<f64> = of_dataset.iter().filter_map(|r| r["stage_epochs"].as_f64()).collect();
        let Some(level) = of_dataset.first().and_then(|r| r["linear_frames"]["confident_fraction"].as_f64()) else {
            continue;
        };
        let (first, last) = stages.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &s| (a.min(s), b.max(s)));
        frames.push(Series { label: format!("{dataset}: straight line"), points: vec![(first, level), (last, level)] });
    }
    line_chart(
        &out.join("study-frames.png"),
        &LineChart {
            title: format!(
                "frames the evaluator calls a class with p ≥ {}: leaf path vs straight line",
                config.confident
            ),
            x_label: "training (epochs)".into(),
            y_label: "confident fraction".into(),
            log_y: false,
            series: frames,
            secondary: None,
        },
    )?;
    Ok(())
}
