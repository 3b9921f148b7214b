//! `leafwalk compare`: two datasets as the model sees them, through the distributions of G's
//! log-eigenvalues (Tron & Fioresi, arXiv 2409.07412).

use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;
use candle_core::Tensor;
use leafwalk_data::{write_bytes_atomic, Dataset, DatasetRef};
use leafwalk_geometry::{batch_geometry, median};
use leafwalk_metrics::distribution::wasserstein_1;
use leafwalk_models::Classifier;
use leafwalk_plot::{line_chart, LineChart, Series};
use serde_json::json;

use crate::cli::CompareArgs;
use crate::commands::{fresh_output, load_model};

/// Images per Jacobian batch.
const BATCH: usize = 64;

/// [`PointGeometry::log10_eigenvalues`](leafwalk_geometry::PointGeometry::log10_eigenvalues)
/// at each of the first `limit` images of `split`: `[image][index]`, largest first.
fn log_spectra(
    model: &Classifier,
    split: &DatasetRef,
    limit: usize,
    data_root: &Path,
) -> anyhow::Result<Vec<Vec<f64>>> {
    if split.index.is_some() {
        bail!("{split}: give a split (NAME:SPLIT), not one image");
    }
    let set = Dataset::load(split.dataset, split.split, data_root)?;
    if set.info.shape != model.input_shape() {
        bail!("{split}: {} images, but the model takes {} images", set.info.shape, model.input_shape());
    }
    let indices: Vec<usize> = (0..set.len().min(limit)).collect();
    let mut spectra = Vec::with_capacity(indices.len());
    for chunk in indices.chunks(BATCH) {
        let (pixels, _): (Tensor, Tensor) = set.batch(chunk, model.device())?;
        spectra.extend(batch_geometry(model, &pixels.to_dtype(model.dtype())?)?.iter().map(|p| p.log10_eigenvalues()));
    }
    Ok(spectra)
}

pub fn run(args: CompareArgs, data_root: &Path) -> anyhow::Result<ExitCode> {
    if args.limit == 0 {
        bail!("--limit must be at least 1");
    }
    fresh_output(&args.out, "compare.json")?;
    let model = load_model(&args.model)?;
    let (a, b) =
        (log_spectra(&model, &args.a, args.limit, data_root)?, log_spectra(&model, &args.b, args.limit, data_root)?);
    let indices = a[0].len();
    let column = |s: &[Vec<f64>], i: usize| -> Vec<f64> { s.iter().map(|v| v[i]).collect() };
    // The distance: W₁ between the two sets' distributions of the i-th log-eigenvalue, averaged
    // over i, in decades.
    let per_index = (0..indices)
        .map(|i| Ok(wasserstein_1(&column(&a, i), &column(&b, i))?))
        .collect::<anyhow::Result<Vec<f64>>>()?;
    let distance = per_index.iter().sum::<f64>() / indices as f64;
    let quartiles = |values: &[f64]| {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
        (at(0.25), median(values).unwrap_or(f64::NAN), at(0.75))
    };
    let mut series = Vec::new();
    let mut summary = Vec::new();
    for (name, spectra) in [(args.a.to_string(), &a), (args.b.to_string(), &b)] {
        let stats: Vec<(f64, f64, f64)> = (0..indices).map(|i| quartiles(&column(spectra, i))).collect();
        for (label, pick) in [("median", 1usize), ("25%", 0), ("75%", 2)] {
            let points = stats.iter().enumerate().map(|(i, s)| ((i + 1) as f64, [s.0, s.1, s.2][pick])).collect();
            series.push(Series { label: format!("{name} {label}"), points });
        }
        summary.push(json!({"set": name, "images": spectra.len(),
            "median_log10_eigenvalues": stats.iter().map(|s| s.1).collect::<Vec<_>>()}));
    }
    std::fs::create_dir_all(&args.out)?;
    let chart = LineChart {
        title: format!("log10 eigenvalues of G: {} vs {} (W1 {distance:.2} decades)", args.a, args.b),
        x_label: "eigenvalue index (largest first)".into(),
        y_label: "log10 eigenvalue (pixel units)".into(),
        log_y: false,
        series,
        secondary: None,
    };
    line_chart(&args.out.join("spectrum.png"), &chart)?;
    let report = json!({"a": args.a.to_string(), "b": args.b.to_string(), "model": args.model.model,
        "distance_decades": distance, "w1_per_eigenvalue_decades": per_index, "sets": summary});
    write_bytes_atomic(&args.out.join("compare.json"), serde_json::to_string_pretty(&report)?.as_bytes())?;
    println!(
        "{} vs {}: {distance:.2} decades (mean W1 of the log10 eigenvalues of G, {} and {} images)",
        args.a,
        args.b,
        a.len(),
        b.len()
    );
    Ok(ExitCode::SUCCESS)
}
