mod predict;
mod train;

use std::process::ExitCode;

use candle_core::Device;
use leafwalk_data::dataset_info;
use leafwalk_models::{Classifier, LoadOptions};

use crate::cli::{Cli, Command, ModelArgs};

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Train(args) => train::run(args, &cli.data_root),
        Command::Predict(args) => predict::run(args, &cli.data_root),
        #[cfg(feature = "hub")]
        Command::Fetch(args) => {
            let info = dataset_info(&args.download)?;
            leafwalk_data::hub::download(info, &cli.data_root)?;
            println!("{} written under {}", info.name, cli.data_root.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The model every command but `train` works on (errors name the checkpoint file).
pub fn load_model(args: &ModelArgs) -> anyhow::Result<Classifier> {
    let dataset = args.dataset.as_deref().map(dataset_info).transpose()?;
    let options = LoadOptions {
        arch: args.arch,
        dataset,
    };
    Ok(Classifier::load(&args.model, options, &Device::Cpu)?)
}
