//! `leafwalk init`: a freshly initialised model of a built-in architecture, saved.

use std::process::ExitCode;

use anyhow::{bail, Context};
use candle_core::{DType, Device};
use leafwalk_data::dataset_info;
use leafwalk_models::{CheckpointMeta, Classifier, Dims};

use crate::cli::InitArgs;

pub fn run(args: InitArgs) -> anyhow::Result<ExitCode> {
    if args.out.exists() {
        bail!("{}: already exists; choose another --out", args.out.display());
    }
    let mut meta = match &args.dataset {
        Some(name) => CheckpointMeta::new(args.arch, dataset_info(name)?),
        None => {
            let (usual_input, usual_classes) = args.arch.default_input_and_classes();
            let input = args.input.as_deref().map(parse_dims).transpose()?.unwrap_or(usual_input);
            let classes = args.classes.unwrap_or(usual_classes);
            if classes < 2 {
                bail!("--classes must be at least 2, got {classes}");
            }
            CheckpointMeta::without_dataset(args.arch.into(), input, classes)
        }
    };
    if let Some(normalisation) = args.normalisation.normalisation() {
        (meta.mean, meta.std) = normalisation.for_channels(meta.input.channels)?;
    }
    meta.extra.insert("seed".into(), args.seed.to_string());
    let (input, classes) = (meta.input, meta.classes.len());
    let model = Classifier::fresh(meta, args.seed, &Device::Cpu, DType::F32)?;
    model.save(&args.out)?;
    let parameters: usize = model.trainable_vars().iter().map(|(_, v)| v.elem_count()).sum();
    eprintln!(
        "{}: {} for {input} inputs and {classes} classes, {parameters} parameters, seed {}",
        args.out.display(),
        args.arch,
        args.seed
    );
    Ok(ExitCode::SUCCESS)
}

/// `CxHxW`, e.g. `3x224x224`.
fn parse_dims(text: &str) -> anyhow::Result<Dims> {
    let parts: Vec<usize> = text
        .split(['x', '×'])
        .map(|p| p.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("--input {text}: expected CxHxW, e.g. 3x224x224"))?;
    match parts.as_slice() {
        &[c, h, w] if c > 0 && h > 0 && w > 0 => Ok(Dims::new(c, h, w)),
        _ => bail!("--input {text}: expected three positive sizes CxHxW, e.g. 3x224x224"),
    }
}
