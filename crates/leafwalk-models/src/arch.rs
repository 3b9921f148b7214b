use std::{fmt, str::FromStr};

use crate::ModelError;

/// The built-in architectures. Their tensor names follow PyTorch's `state_dict` so that a model
/// exported with `safetensors.torch.save_file(model.state_dict())` loads as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// The paper's `medium_cnn`: conv 1→32 3×3, ReLU, conv 32→64 3×3, ReLU, max-pool 2,
    /// fc 9216→128, ReLU, fc 128→10.
    MnistCnn,
    /// Flatten, fc n→128, ReLU, fc 128→C: cheap enough for property tests on any dataset.
    Mlp,
    /// VGG11 with batch norm for 3×32×32 inputs (the `VGG('VGG11')` layout of kuangliu's
    /// pytorch-cifar: `features.{0,4,8,11,15,18,22,25}` convs, BN after each, `classifier`).
    CifarVgg11,
}

impl Arch {
    pub const ALL: [Arch; 3] = [Arch::MnistCnn, Arch::Mlp, Arch::CifarVgg11];

    pub fn name(self) -> &'static str {
        match self {
            Arch::MnistCnn => "mnist-cnn",
            Arch::Mlp => "mlp",
            Arch::CifarVgg11 => "cifar-vgg11",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Arch::ALL.into_iter().find(|a| a.name() == s).ok_or_else(|| ModelError::UnknownArch(s.to_string()))
    }
}
