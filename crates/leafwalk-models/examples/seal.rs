//! Adds the tensor digest (`leafwalk.sha256`) to checkpoints written before leafwalk stored it,
//! keeping every tensor and metadata entry as it is; a file that already carries a digest is
//! verified on the way (a corrupted one is refused, not resealed).
//!
//!     cargo run --release -p leafwalk-models --example seal -- models/*.safetensors

use std::path::PathBuf;

use candle_core::Device;
use leafwalk_models::checkpoint;

fn main() -> anyhow::Result<()> {
    let files: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    if files.is_empty() {
        anyhow::bail!("usage: seal CHECKPOINT.safetensors…");
    }
    for file in files {
        let (tensors, metadata) = checkpoint::read(&file, &Device::Cpu)?;
        let mut named: Vec<(String, candle_core::Tensor)> = tensors.into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        checkpoint::write(&file, &named, metadata)?;
        println!("{}: sealed ({} tensors)", file.display(), named.len());
    }
    Ok(())
}
