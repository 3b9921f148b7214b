//! `leafwalk inspect`: G (and F) at single images or summarised over a dataset split.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use leafwalk_data::{Dataset, DatasetRef, ImageSource, TensorImages};
use leafwalk_geometry::{
    argmax, batch_geometry, dataset_fisher, fisher_factors, integrability, median, PointGeometry,
    DATASET_FISHER_MAX_BYTES, DATASET_FISHER_MAX_POINTS,
};
use leafwalk_models::checkpoint::F32Values;
use leafwalk_models::Classifier;
use leafwalk_plot::{line_chart, LineChart, Series, Tile, TileKind};
use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::cli::InspectArgs;
use crate::commands::shard::{append_parts, output_file, Part, Shard};
use crate::commands::{each_image, input_batch, load_model};

/// Points per Jacobian batch: throughput stops improving around 32 points (measured).
const BATCH: usize = 32;
/// Largest input for which `--full-g` forms the dense matrix.
const FULL_G_MAX_DIM: usize = 4096;

pub fn run(args: InspectArgs, data_root: &Path) -> anyhow::Result<ExitCode> {
    let model = load_model(&args.model)?;
    match &args.data {
        Some(split) => inspect_dataset(&args, &model, split, data_root),
        None => inspect_images(&args, &model, data_root),
    }
}

/// What one point's G (and optionally F) says, as JSON.
fn point_summary(model: &Classifier, input: &str, point: &PointGeometry, fisher: Option<(f64, Vec<f64>)>) -> Value {
    let probs: Vec<f64> = point.probs.iter().copied().collect();
    let (best, p) = argmax(&probs);
    let mut summary = json!({
        "input": input,
        "prediction": model.meta().classes[best],
        "class_index": best,
        "probability": p,
        "probabilities": probs,
        "trace_g": point.trace(),
        "rank": point.rank(),
        "eigenvalues_g": point.spectrum().eigenvalues,
    });
    if let Some((trace, eigenvalues)) = fisher {
        summary["fisher"] = json!({ "trace": trace, "eigenvalues": eigenvalues });
    }
    summary
}

fn inspect_images(args: &InspectArgs, model: &Classifier, data_root: &Path) -> anyhow::Result<ExitCode> {
    let images = args.image.iter().map(|p| match p.to_str().and_then(TensorImages::parse) {
        Some(tensor) => Ok(ImageSource::Tensor(tensor?)),
        None => Ok(ImageSource::File(p.clone())),
    });
    let sources: Vec<ImageSource> =
        images.chain(args.reference.iter().map(|r| Ok(ImageSource::Ref(*r)))).collect::<anyhow::Result<_>>()?;
    let sources = each_image(&sources, model)?;
    if sources.is_empty() {
        bail!("nothing to inspect: give --image FILE, --ref NAME:SPLIT:INDEX or --data NAME:SPLIT");
    }
    if let Some(bad) = args.reference.iter().find(|r| r.index.is_none()) {
        bail!("--ref {bad} needs an index (NAME:SPLIT:INDEX); use --data for a whole split");
    }
    if args.full_g.is_some() && sources.len() != 1 {
        bail!("--full-g writes the G of one input; {} were given", sources.len());
    }
    for path in [&args.leaf_basis, &args.full_g, &args.basis_png].into_iter().flatten() {
        if path.exists() {
            bail!("{}: already exists; choose another file", path.display());
        }
    }
    // One image at a time: one point's J of a 1,000-class ImageNet-sized model is 600 MB.
    let mut summaries = Vec::with_capacity(sources.len());
    let mut rows = Vec::new();
    // Per input: the leaf basis (r rows of n: the eigenvectors) and the eigenvalues.
    let mut bases: Vec<(Vec<f32>, [usize; 2], Vec<f32>)> = Vec::new();
    for (index, source) in sources.iter().enumerate() {
        let pixels = input_batch(std::slice::from_ref(source), model, args.invert, data_root)?;
        let point = batch_geometry(model, &pixels)?.remove(0);
        let fisher = match args.fisher {
            true => fisher_factors(model, &pixels)?.into_iter().next().map(|f| (f.trace(), f.eigenvalues())),
            false => None,
        };
        let mut summary = point_summary(model, &source.to_string(), &point, fisher);
        if args.integrability {
            let stats = integrability(model, &pixels, args.bracket_pairs, &BRACKET_STEPS, index as u64)?;
            summary["integrability"] = stats
                .iter()
                .map(|s| {
                    json!({"step_px": s.step, "pairs": s.pairs, "mean_asymmetry": s.mean_asymmetry,
                        "median_asymmetry": s.median_asymmetry, "mean_bracket": s.mean_bracket})
                })
                .collect();
        }
        if let Some(path) = &args.full_g {
            let dense = point.dense(FULL_G_MAX_DIM).with_context(|| format!("{}", path.display()))?;
            write_npy(path, &dense)?;
        }
        if args.basis_png.is_none() && args.leaf_basis.is_none() {
            summaries.push(summary);
            continue;
        }
        let rank = point.rank();
        let wanted = if args.leaf_basis.is_some() { rank } else { BASIS_TILES.min(rank) };
        let vectors = point.eigenvectors(wanted);
        let eigenvalues = point.spectrum().eigenvalues;
        let probs: Vec<f64> = point.probs.iter().copied().collect();
        drop(point);
        if args.basis_png.is_some() {
            let image: Vec<f32> = pixels.flatten_all()?.to_vec1()?;
            rows.push(BasisRow::new(model, image, &probs, &vectors, &eigenvalues));
        }
        if args.leaf_basis.is_some() {
            summary["leaf_basis"] = json!({
                "tensors": [format!("basis.{index}"), format!("eigenvalues.{index}")], "vectors": vectors.ncols(),
                "orthonormality_error_leading": orthonormality_error(&vectors),
                "orthonormality_checked": vectors.ncols().min(CHECKED_VECTORS),
            });
            let (n, k) = vectors.shape();
            // nalgebra stores by column: its storage is the r eigenvectors, n values each.
            let eigenvalues = eigenvalues.iter().map(|&v| v as f32).collect();
            bases.push((vectors.data.into(), [k, n], eigenvalues));
        }
        summaries.push(summary);
    }
    if let Some(path) = &args.basis_png {
        draw_basis(path, model, &rows)?;
    }
    if let Some(path) = &args.leaf_basis {
        let mut arrays = Vec::with_capacity(2 * bases.len());
        for (index, (basis, [k, n], eigenvalues)) in bases.iter().enumerate() {
            arrays.push((format!("basis.{index}"), F32Values { shape: vec![*k, *n], values: basis }));
            arrays.push((
                format!("eigenvalues.{index}"),
                F32Values { shape: vec![eigenvalues.len()], values: eigenvalues },
            ));
        }
        let content = "leaf basis per input: basis.I holds the unit eigenvectors of G as rows (largest eigenvalue first), eigenvalues.I the eigenvalues of G";
        leafwalk_models::checkpoint::write_values(
            path,
            &arrays,
            [("leafwalk.content".to_string(), content.to_string())].into(),
        )?;
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&summaries)?)?;
    } else {
        for s in &summaries {
            writeln!(out, "{}", text_line(s))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn text_line(s: &Value) -> String {
    let eig: Vec<String> = s["eigenvalues_g"]
        .as_array()
        .map_or(Vec::new(), |v| v.iter().map(|e| format!("{:.3e}", e.as_f64().unwrap_or(0.0))).collect());
    let mut line = format!(
        "{}  predicted {} (p {:.4})  trace G {:.4e}  rank {}  eigenvalues G [{}]",
        s["input"].as_str().unwrap_or_default(),
        s["prediction"].as_str().unwrap_or_default(),
        s["probability"].as_f64().unwrap_or(0.0),
        s["trace_g"].as_f64().unwrap_or(0.0),
        s["rank"],
        eig.join(" ")
    );
    if let Some(trace) = s["fisher"]["trace"].as_f64() {
        line.push_str(&format!("  trace F {trace:.4e}"));
    }
    for level in s["integrability"].as_array().into_iter().flatten() {
        line.push_str(&format!(
            "  bracket asymmetry (h {}) {:.3} (|[X,Y]| {:.2e})",
            level["step_px"],
            level["median_asymmetry"].as_f64().unwrap_or(0.0),
            level["mean_bracket"].as_f64().unwrap_or(0.0)
        ));
    }
    line
}

/// The finite-difference steps (pixels) of `--integrability`: agreement between them shows
/// the bracket is resolved, neither lost in rounding nor blurred across the curvature.
const BRACKET_STEPS: [f64; 3] = [0.1, 0.01, 0.001];

/// Eigenvectors drawn per input by `--basis-png`.
const BASIS_TILES: usize = 9;

/// One input's row of the basis figure.
struct BasisRow {
    image: Vec<f32>,
    caption: String,
    vectors: Vec<(Vec<f32>, String)>,
}

impl BasisRow {
    fn new(model: &Classifier, image: Vec<f32>, probs: &[f64], vectors: &DMatrix<f32>, eigenvalues: &[f64]) -> Self {
        let (best, p) = argmax(probs);
        let vectors = vectors
            .column_iter()
            .take(BASIS_TILES)
            .enumerate()
            .map(|(k, v)| (v.iter().copied().collect(), format!("λ{} {:.1e}", k + 1, eigenvalues[k])))
            .collect();
        BasisRow { image, caption: format!("{} {:.2}", model.meta().classes[best], p), vectors }
    }
}

/// Leading eigenvectors whose orthonormality `--leaf-basis` reports (checking all of a
/// 1,000-class basis would cost more than computing it).
const CHECKED_VECTORS: usize = 32;

/// The largest deviation of VᵀV from the identity over the leading eigenvectors, in f64.
fn orthonormality_error(vectors: &DMatrix<f32>) -> f64 {
    let k = vectors.ncols().min(CHECKED_VECTORS);
    let v = vectors.columns(0, k).map(|x| x as f64);
    let gram = v.transpose() * &v;
    (gram - DMatrix::identity(k, k)).abs().max()
}

/// One row per input: the image, then its top eigenvectors of G as signed heat-maps.
fn draw_basis(path: &Path, model: &Classifier, rows: &[BasisRow]) -> anyhow::Result<()> {
    let shape = model.input_shape();
    let columns = 1 + BASIS_TILES.min(model.classes() - 1);
    let mut tiles = Vec::new();
    for row in rows {
        tiles.push(Tile::new(&row.image, shape, row.caption.clone(), TileKind::Image));
        for (vector, caption) in &row.vectors {
            tiles.push(Tile::new(vector, shape, caption.clone(), TileKind::Signed));
        }
        for _ in row.vectors.len() + 1..columns {
            tiles.push(Tile::new(&[], shape, String::new(), TileKind::Image));
        }
    }
    let title = format!(
        "leaf basis: eigenvectors of G (red +, blue −) — {}",
        model.meta().dataset.as_deref().unwrap_or("no dataset")
    );
    leafwalk_plot::tile_grid(path, Some(&title), &tiles, columns, 3)?;
    Ok(())
}

/// A float64 C-order .npy file (format 1.0), written atomically.
fn write_npy(path: &Path, matrix: &nalgebra::DMatrix<f64>) -> anyhow::Result<()> {
    let mut header =
        format!("{{'descr': '<f8', 'fortran_order': False, 'shape': ({}, {}), }}", matrix.nrows(), matrix.ncols());
    // Magic (6) + version (2) + header length (2) + header + '\n' is a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + matrix.len() * 8);
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for row in matrix.row_iter() {
        for v in row.iter() {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    leafwalk_data::write_bytes_atomic(path, &bytes)?;
    Ok(())
}

/// One point's G over a split: what the summary is computed from, and a shard's result.
#[derive(Serialize, Deserialize)]
struct PointStats {
    trace: f64,
    rank: usize,
    eigenvalues: Vec<f64>,
}

fn inspect_dataset(
    args: &InspectArgs,
    model: &Classifier,
    split: &DatasetRef,
    data_root: &Path,
) -> anyhow::Result<ExitCode> {
    if split.index.is_some() {
        bail!("--data takes a whole split (NAME:SPLIT); use --ref for one entry");
    }
    let out = match (args.shard, &args.out) {
        (Some(_), _) if args.fisher => {
            bail!("--fisher needs every point's parameter gradients in one process; drop it or --shard")
        }
        (Some(shard), Some(out)) => {
            std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
            output_file(Some(shard), out, "inspect")?;
            Some(out)
        }
        (Some(_), None) => bail!("--shard writes its part into --out DIR (for `leafwalk merge`)"),
        (None, _) => None,
    };
    let dataset = Dataset::load(split.dataset, split.split, data_root)?;
    if dataset.info.shape != model.input_shape() {
        bail!("{split} images are {}, the model takes {}", dataset.info.shape, model.input_shape());
    }
    let count = args.limit.min(dataset.len());
    if count == 0 {
        bail!("--limit must be at least 1");
    }
    let shard = args.shard.unwrap_or(Shard::WHOLE);
    let indices: Vec<usize> = shard.range(count).map(|k| k * dataset.len() / count).collect();
    // The dataset Fisher keeps every C×P gradient in memory: it uses an evenly spaced subset of
    // the points that fits the budget; every point still reports its own trace F.
    let params: usize = model.trainable_vars().iter().map(|(_, v)| v.elem_count()).sum();
    let fisher_budget = (DATASET_FISHER_MAX_BYTES / (model.classes() * params * 4)).clamp(1, DATASET_FISHER_MAX_POINTS);
    let fisher_stride = count.div_ceil(fisher_budget);
    let progress = indicatif::ProgressBar::new(indices.len() as u64);
    let mut points = Vec::with_capacity(indices.len());
    let (mut fisher_traces, mut factors) = (Vec::new(), Vec::new());
    for (batch_index, chunk) in indices.chunks(BATCH).enumerate() {
        let (pixels, _) = dataset.batch(chunk, model.device())?;
        points.extend(batch_geometry(model, &pixels)?.iter().map(|p| PointStats {
            trace: p.trace(),
            rank: p.rank(),
            eigenvalues: p.spectrum().eigenvalues,
        }));
        if args.fisher {
            for (k, factor) in fisher_factors(model, &pixels)?.into_iter().enumerate() {
                fisher_traces.push(factor.trace());
                if (batch_index * BATCH + k).is_multiple_of(fisher_stride) {
                    factors.push(factor);
                }
            }
        }
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();
    let settings = json!({
        "data": split.to_string(),
        "model": args.model.model,
        "count": count,
        "classes": model.classes(),
    });
    if let Some(out) = out {
        Part { command: "inspect".into(), settings, shard, results: points }.write(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut report = dataset_report(&settings, &points, args.spectrum_png.as_deref())?;
    if args.fisher {
        let (trace, top) = dataset_fisher(&factors, model.classes())?;
        report["fisher"] = json!({
            "mean_trace": fisher_traces.iter().sum::<f64>() / fisher_traces.len() as f64,
            "dataset_fisher": { "points": factors.len(), "every": fisher_stride, "trace": trace, "top_eigenvalues": top },
        });
    }
    print_dataset_report(&report, args.json)?;
    Ok(ExitCode::SUCCESS)
}

/// `inspect --data` over a split from its shards' points (in shard order): inspect.json and
/// spectrum.png in `out`, the summary on stdout, as one process would have printed it.
pub fn merge(settings: &Value, parts: Vec<Value>, out: &Path) -> anyhow::Result<ExitCode> {
    let points: Vec<PointStats> = append_parts("inspect", parts)?;
    if Some(points.len() as u64) != settings["count"].as_u64() {
        bail!("merge: the shards hold {} points, the run {}", points.len(), settings["count"]);
    }
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let report_path = output_file(None, out, "inspect")?;
    let report = dataset_report(settings, &points, Some(&out.join("spectrum.png")))?;
    leafwalk_data::write_bytes_atomic(&report_path, serde_json::to_string_pretty(&report)?.as_bytes())?;
    print_dataset_report(&report, false)?;
    Ok(ExitCode::SUCCESS)
}

/// Trace, rank histogram and eigenvalue bands over the points (and the spectrum plot).
fn dataset_report(settings: &Value, points: &[PointStats], spectrum_png: Option<&Path>) -> anyhow::Result<Value> {
    let classes = settings["classes"].as_u64().context("the run's class count")? as usize;
    let count = points.len();
    let traces: Vec<f64> = points.iter().map(|p| p.trace).collect();
    let mean_trace = traces.iter().sum::<f64>() / count as f64;
    let median_trace = median(&traces).unwrap_or(f64::NAN);
    let mut rank_hist = vec![0usize; classes + 1];
    for p in points {
        rank_hist[p.rank.min(classes)] += 1;
    }
    let band = |q: f64| -> Vec<f64> {
        (0..classes)
            .map(|k| {
                let mut column: Vec<f64> = points.iter().filter_map(|p| p.eigenvalues.get(k).copied()).collect();
                column.sort_by(f64::total_cmp);
                percentile(&column, q)
            })
            .collect()
    };
    let (p10, median, p90) = (band(0.1), band(0.5), band(0.9));
    let split = settings["data"].as_str().unwrap_or_default();
    if let Some(path) = spectrum_png {
        let series = |label: &str, values: &[f64]| Series {
            label: label.to_string(),
            points: values.iter().take(classes - 1).enumerate().map(|(k, &v)| ((k + 1) as f64, v)).collect(),
        };
        let chart = LineChart {
            title: format!("Spectrum of G over {count} images of {split}"),
            x_label: "eigenvalue index k".into(),
            y_label: "λₖ(G)".into(),
            log_y: true,
            series: vec![series("90th percentile", &p90), series("median", &median), series("10th percentile", &p10)],
            secondary: None,
        };
        line_chart(path, &chart)?;
    }
    Ok(json!({
        "data": split,
        "model": settings["model"],
        "count": count,
        "sampling": "evenly spaced indices k·len/count",
        "trace_g": { "mean": mean_trace, "median": median_trace },
        "rank_hist": rank_hist,
        "eigenvalues_g": { "p10": p10, "median": median, "p90": p90 },
    }))
}

fn print_dataset_report(report: &Value, as_json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if as_json {
        writeln!(out, "{}", serde_json::to_string_pretty(report)?)?;
        return Ok(());
    }
    let number = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    writeln!(out, "{}: {} images (evenly spaced)", report["data"].as_str().unwrap_or_default(), report["count"])?;
    writeln!(
        out,
        "trace G: mean {:.4e}  median {:.4e}",
        number(&report["trace_g"]["mean"]),
        number(&report["trace_g"]["median"])
    )?;
    let hist: Vec<String> = report["rank_hist"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
        .map(|(r, n)| format!("{r}:{n}"))
        .collect();
    writeln!(out, "rank histogram: {}", hist.join(" "))?;
    let medians: Vec<String> = report["eigenvalues_g"]["median"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| format!("{:.3e}", number(e)))
        .collect();
    writeln!(out, "median eigenvalues of G: [{}]", medians.join(" "))?;
    if let Some(f) = report.get("fisher") {
        writeln!(
            out,
            "Fisher: mean trace {:.4e}; dataset Fisher top eigenvalues {}",
            f["mean_trace"].as_f64().unwrap_or(0.0),
            f["dataset_fisher"]["top_eigenvalues"]
        )?;
    }
    Ok(())
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}
