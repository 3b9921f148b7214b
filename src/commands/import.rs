//! `leafwalk import`: a model made elsewhere, saved as a leafwalk checkpoint with metadata.

use std::process::ExitCode;

use anyhow::bail;
use candle_core::Device;

use crate::cli::ImportArgs;
use crate::commands::open_model;

pub fn run(args: ImportArgs) -> anyhow::Result<ExitCode> {
    if args.out.exists() {
        bail!("{}: already exists; choose another --out", args.out.display());
    }
    let mut model = open_model(&args.input, &args.foreign, &Device::Cpu)?;
    model.meta_mut().extra.insert("imported_from".into(), args.input.display().to_string());
    model.save(&args.out)?;
    let meta = model.meta();
    let parameters: usize = model.trainable_vars().iter().map(|(_, v)| v.elem_count()).sum();
    eprintln!(
        "{}: {} layers for {} inputs, {} classes ({}), {parameters} parameters, mean {:?}, std {:?}",
        args.out.display(),
        model.description().nodes.len(),
        meta.input,
        meta.classes.len(),
        abbreviated(&meta.classes),
        meta.mean,
        meta.std,
    );
    Ok(ExitCode::SUCCESS)
}

/// The first few class names.
fn abbreviated(classes: &[String]) -> String {
    match classes.len() {
        0..=5 => classes.join(", "),
        n => format!("{}, … ({n})", classes[..4].join(", ")),
    }
}
