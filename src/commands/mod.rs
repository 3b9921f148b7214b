mod compare;
mod denoise;
mod eval_paths;
mod frames;
mod generate;
mod import;
mod init;
mod inspect;
mod ood;
mod path;
mod predict;
pub mod shard;
mod study;
mod train;
mod walk;
mod walking;

use std::process::ExitCode;

use std::path::Path;

use anyhow::bail;
use candle_core::{Device, Tensor};
use leafwalk_data::{dataset_info, ImageSource, Invert};
use leafwalk_models::{read_layers, Classifier, LoadOptions};

use crate::cli::{Cli, Command, ForeignModelArgs, ModelArgs};

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Train(args) => train::run(args, &cli.data_root),
        Command::Init(args) => init::run(args),
        Command::Predict(args) => predict::run(args, &cli.data_root),
        Command::Inspect(args) => inspect::run(args, &cli.data_root),
        Command::Path(args) => path::run(args, &cli.data_root),
        Command::Walk(args) => walk::run(args, &cli.data_root),
        Command::EvalPaths(args) => eval_paths::run(args, &cli.data_root),
        Command::OodScore(args) => ood::score(args, &cli.data_root),
        Command::Denoise(args) => denoise::denoise(args, &cli.data_root),
        Command::Generate(args) => generate::run(args, &cli.data_root),
        Command::Compare(args) => compare::run(args, &cli.data_root),
        Command::EvalDenoise(args) => denoise::evaluate(args, &cli.data_root),
        Command::EvalOod(args) => ood::evaluate(args, &cli.data_root),
        Command::Import(args) => import::run(args),
        Command::Merge(args) => merge(&args.parts, &args.out),
        Command::Study(args) => study::run(args, &cli.data_root),
        #[cfg(feature = "hub")]
        Command::Fetch(args) => {
            let info = dataset_info(&args.download)?;
            leafwalk_data::hub::download(info, &cli.data_root)?;
            println!("{} written under {}", info.name, cli.data_root.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `leafwalk merge`: the shards of one run (every shard once) into the report one process
/// would have written, by the command that wrote them.
fn merge(files: &[std::path::PathBuf], out: &Path) -> anyhow::Result<ExitCode> {
    let (command, settings, parts) = shard::read_parts(files)?;
    match command.as_str() {
        "eval-ood" => ood::merge(&settings, parts, out),
        "inspect" => inspect::merge(&settings, parts, out),
        "eval-paths" => eval_paths::merge(&settings, parts, out),
        "eval-denoise" => denoise::merge(&settings, parts, out),
        "study" => study::merge(&settings, parts, out),
        other => bail!("merge: shards of `{other}`, which this leafwalk cannot merge"),
    }
}

/// The model every command but `train` works on (errors name the model file).
pub fn load_model(args: &ModelArgs) -> anyhow::Result<Classifier> {
    open_model(&args.model, &args.foreign, &args.device.device.open()?)
}

/// A leafwalk checkpoint, a plain state_dict or an ONNX file, as `foreign` describes it.
pub fn open_model(path: &Path, foreign: &ForeignModelArgs, device: &Device) -> anyhow::Result<Classifier> {
    let layers = foreign.layers.as_deref().map(read_layers).transpose()?;
    let options = LoadOptions {
        arch: foreign.arch,
        layers,
        dataset: foreign.dataset.as_deref().map(dataset_info).transpose()?,
        classes: foreign.classes.clone(),
        normalisation: foreign.normalisation.normalisation(),
    };
    Ok(leafwalk_onnx::open_model(path, options, device)?)
}

/// The dataset a model was trained on (its metadata names it), for commands that read images
/// in the model's shape.
pub fn model_dataset(model: &Classifier) -> anyhow::Result<&'static leafwalk_data::DatasetInfo> {
    match &model.meta().dataset {
        Some(name) => Ok(dataset_info(name)?),
        None => anyhow::bail!(
            "the model names no training dataset; this command needs one (a model trained by leafwalk, or --dataset)"
        ),
    }
}

/// The model's training split under `data_root`: anchors of the data leaf, reference statistics.
pub fn training_set(model: &Classifier, data_root: &Path) -> anyhow::Result<leafwalk_data::Dataset> {
    Ok(leafwalk_data::Dataset::load(model_dataset(model)?, leafwalk_data::Split::Train, data_root)?)
}

/// `out/file`, refused when it exists so that no earlier result is overwritten.
pub fn fresh_output(out: &Path, file: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = out.join(file);
    if path.exists() {
        let article = if file.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
        anyhow::bail!("{}: already holds {article} {file}; choose another --out", out.display());
    }
    Ok(path)
}

/// One source per image (a tensor file of several images becomes one source each).
pub fn each_image(sources: &[ImageSource], model: &Classifier) -> anyhow::Result<Vec<ImageSource>> {
    let mut each = Vec::with_capacity(sources.len());
    for source in sources {
        each.extend(source.each_image(model.input_shape())?);
    }
    Ok(each)
}

/// Loads images or dataset entries into one `[B, C, H, W]` batch shaped for `model`.
pub fn input_batch(
    sources: &[ImageSource],
    model: &Classifier,
    invert: Invert,
    data_root: &Path,
) -> anyhow::Result<Tensor> {
    let shape = model.input_shape();
    let mut pixels = Vec::with_capacity(sources.len() * shape.len());
    for source in sources {
        pixels.extend(source.load(shape, invert, data_root)?);
    }
    Ok(Tensor::from_vec(pixels, (sources.len(), shape.channels, shape.height, shape.width), model.device())?)
}
