//! Where a model runs: `cpu` (the default) or `cuda[:N]`, parsed once for every command.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

use crate::{ModelError, Result};

/// A device as the user names it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The CPU (`cpu`, the default), where leafwalk's own CPU engine runs.
    #[default]
    Cpu,
    /// The N-th CUDA GPU.
    Cuda(usize),
}

impl DeviceChoice {
    /// `$LEAFWALK_DEVICE` (the CLI's `--device` default), `cpu` when unset: how benchmarks
    /// and scripts pick the device.
    pub fn from_env() -> Result<Self> {
        std::env::var("LEAFWALK_DEVICE").map_or(Ok(DeviceChoice::Cpu), |text| text.parse())
    }

    /// Opens the device: a clear error for `cuda` in a build without the `cuda` feature, or
    /// where no GPU (or driver) answers.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(_) if !candle_core::utils::cuda_is_available() => Err(ModelError::CudaNotBuilt),
            DeviceChoice::Cuda(ordinal) => Device::new_cuda(ordinal).map_err(|e| ModelError::CudaUnavailable {
                device: self.to_string(),
                reason: one_line(&e.to_string()),
            }),
        }
    }
}

/// candle's driver errors span lines; the CLI prints one.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(ordinal) => write!(f, "cuda:{ordinal}"),
        }
    }
}

impl FromStr for DeviceChoice {
    type Err = ModelError;

    fn from_str(text: &str) -> Result<Self> {
        let bad = || ModelError::UnknownDevice(text.to_string());
        match text.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda(0)),
            other => match other.strip_prefix("cuda:") {
                Some(ordinal) => ordinal.parse().map(DeviceChoice::Cuda).map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DeviceChoice;

    #[test]
    fn devices_parse_print_and_fail_clearly() {
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!("CUDA".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cuda(0));
        assert_eq!("cuda:2".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cuda(2));
        assert_eq!(DeviceChoice::Cuda(1).to_string(), "cuda:1");
        for bad in ["tpu", "cuda:x", "cuda:", ""] {
            let error = bad.parse::<DeviceChoice>().unwrap_err().to_string();
            assert!(error.contains("expected cpu, cuda or cuda:N"), "{error}");
        }
        assert!(DeviceChoice::Cpu.open().unwrap().is_cpu());
        #[cfg(not(feature = "cuda"))]
        assert!(DeviceChoice::Cuda(0).open().unwrap_err().to_string().contains("built without CUDA"));
    }
}
