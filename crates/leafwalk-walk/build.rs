//! With the `cuda` feature, compiles `kernels/leaf_step.cu` to PTX for `on_device.rs` (nvcc from
//! `PATH` or `NVCC`, the architecture from `CUDA_COMPUTE_CAP`, as candle-kernels does).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo::rerun-if-changed=build.rs");
    #[cfg(feature = "cuda")]
    {
        let source = "../../kernels/leaf_step.cu";
        println!("cargo::rerun-if-changed={source}");
        let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
        cudaforge::KernelBuilder::new()
            .source_files([source])
            .args(["-O3", "-std=c++17"])
            .build_ptx()?
            .write(out_dir.join("ptx.rs"))?;
    }
    Ok(())
}
