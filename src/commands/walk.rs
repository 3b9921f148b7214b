//! `leafwalk walk`: a constant-direction walk on a noise leaf (ker G) or along the leaf (ker G⊥).

use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;
use leafwalk_data::ImageSource;
use leafwalk_walk::{direction_walk, State, Subspace};
use nalgebra::DVector;
use serde_json::json;

use crate::cli::{SubspaceArg, WalkArgs};
use crate::commands::path::{prepare_out, write_walk};
use crate::commands::{input_batch, load_model};

pub fn run(args: WalkArgs, data_root: &Path) -> anyhow::Result<ExitCode> {
    if !(args.step_size.is_finite() && args.step_size > 0.0) {
        bail!("--step-size must be a positive finite number, got {}", args.step_size);
    }
    let model = load_model(&args.model)?;
    let start = input_batch(std::slice::from_ref(&args.from), &model, args.invert, data_root)?;
    let from = State::from_pixels(&model, &start.flatten_all()?.to_vec1::<f32>()?);
    let direction = match args.direction.as_str() {
        "random" => leafwalk_walk::random_direction(from.0.len(), args.seed),
        other => {
            let source: ImageSource = other.parse()?;
            let image = input_batch(&[source], &model, args.invert, data_root)?;
            let toward = State::from_pixels(&model, &image.flatten_all()?.to_vec1::<f32>()?);
            DVector::from_iterator(from.0.len(), toward.0.iter().zip(&from.0).map(|(t, f)| (t - f) as f64))
        }
    };
    prepare_out(&args.out)?;
    let subspace = match args.subspace {
        SubspaceArg::Kernel => Subspace::Kernel,
        SubspaceArg::Leaf => Subspace::Leaf,
    };
    let bar = indicatif::ProgressBar::new(args.steps as u64);
    let (points, records) = direction_walk(&model, &from, &direction, subspace, args.steps, args.step_size, |r| {
        bar.set_position(r.step as u64);
    })?;
    bar.finish_and_clear();
    let title = match subspace {
        Subspace::Kernel => "noise-leaf walk: constant direction in ker G (step: prediction probability)",
        Subspace::Leaf => "leaf walk: constant direction in ker G⊥ (step: prediction probability)",
    };
    write_walk(&args.out, &model, &points, &records, None, title)?;
    let (first, last) = (&records[0], &records[records.len() - 1]);
    let classes = &model.meta().classes;
    let summary = json!({
        "from": args.from.to_string(), "out": args.out, "steps": args.steps,
        "distance_from_start": last.distance,
        "prediction_start": classes[first.prediction], "probability_start": first.probability,
        "prediction_end": classes[last.prediction], "probability_end": last.probability,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "{}: {} steps, {:.3} from the start; predicts {} ({:.3}) → {} ({:.3}); wrote {}",
            args.from,
            args.steps,
            last.distance,
            classes[first.prediction],
            first.probability,
            classes[last.prediction],
            last.probability,
            args.out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
