//! Data for leafwalk: this crate reads datasets and single images into
//! pixels in `[0, 1]`, writes images back out, and knows the registry of
//! datasets (shapes, class names, normalisation statistics). It never does
//! model things: no normalisation, no networks, no training; those belong to
//! the crates that consume its pixels.
//!
//! Datasets live under a data root (see [`data_root`]), one directory per
//! registry name:
//!
//! - `mnist/`, `fashion-mnist/`: `{train,t10k}-images-idx3-ubyte` and
//!   `{train,t10k}-labels-idx1-ubyte`, raw or `.gz`.
//! - `cifar10/` or `cifar10/cifar-10-batches-bin/`: `data_batch_1.bin` ..
//!   `data_batch_5.bin` (train) and `test_batch.bin` (test).
//!
//! `scripts/fetch-data.sh` downloads them; with the `hub` feature,
//! `hub::download` fetches them through candle-datasets instead.
//!
//! Images are `C*H*W` values per image, channels first, everywhere.
#![warn(missing_docs)]

mod atomic_file;
mod cifar;
mod dataset;
mod error;
#[cfg(feature = "hub")]
pub mod hub;
mod idx;
mod image_file;
mod image_set;
mod pairs;
mod reference;
mod registry;
mod tensor_file;

use std::path::{Path, PathBuf};

pub use atomic_file::{write_atomic, write_bytes_atomic, write_path_atomic};
pub use dataset::{Dataset, Split};
pub use error::{DataError, Result};
pub use image_file::{image_file_shape, load_image, mirror, save_image, Invert};
pub use image_set::{ImageSet, NamedImage};
pub use pairs::read_pairs;
pub use reference::{DatasetRef, ImageSource};
pub use registry::{dataset_info, DatasetInfo, ImageShape, DATASETS};
pub use tensor_file::TensorImages;

/// Environment variable naming the data root when no command-line value is
/// given.
pub const DATA_ROOT_ENV: &str = "LEAFWALK_DATA";

/// The data root: the command-line value if given, else `$LEAFWALK_DATA` if
/// set and non-empty, else `data` (relative to the working directory).
pub fn data_root(cli: Option<&Path>) -> PathBuf {
    if let Some(path) = cli {
        return path.to_path_buf();
    }
    match std::env::var_os(DATA_ROOT_ENV) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from("data"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The only test that touches the variable, so it cannot race another.
    #[test]
    fn data_root_precedence() {
        std::env::set_var(DATA_ROOT_ENV, "/from/env");
        assert_eq!(data_root(Some(Path::new("cli"))), PathBuf::from("cli"));
        assert_eq!(data_root(None), PathBuf::from("/from/env"));
        std::env::set_var(DATA_ROOT_ENV, "");
        assert_eq!(data_root(None), PathBuf::from("data"));
        std::env::remove_var(DATA_ROOT_ENV);
        assert_eq!(data_root(None), PathBuf::from("data"));
    }
}
