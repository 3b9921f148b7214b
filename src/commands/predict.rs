use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use candle_core::Module;

use crate::cli::PredictArgs;
use crate::commands::{each_image, input_batch, load_model};

pub fn run(args: PredictArgs, data_root: &Path) -> anyhow::Result<ExitCode> {
    let model = load_model(&args.model)?;
    let inputs = each_image(&args.inputs, &model)?;
    let batch = input_batch(&inputs, &model, args.invert, data_root)?;
    let probs = model.forward(&batch)?.exp()?.to_vec2::<f32>().context("reading the model output")?;
    let classes = &model.meta().classes;
    let mut out = std::io::stdout().lock();
    let mut rows = Vec::new();
    for (input, p) in inputs.iter().zip(&probs) {
        let (best, best_p) =
            p.iter().enumerate().fold((0, f32::MIN), |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc });
        if args.json {
            rows.push(serde_json::json!({
                "input": input.to_string(), "prediction": classes[best], "class_index": best,
                "probability": best_p, "probabilities": p,
            }));
        } else {
            writeln!(out, "{input}\t{}\t{:.4}", classes[best], best_p)?;
        }
    }
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
    }
    Ok(ExitCode::SUCCESS)
}
