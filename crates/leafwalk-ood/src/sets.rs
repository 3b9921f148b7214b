//! Out-of-distribution image sets for evaluation: any image set (a dataset split, IDX file or
//! folder), pure noise, or the in-distribution images transformed.

use std::fmt;
use std::path::Path;

use leafwalk_data::{DatasetInfo, ImageSet, Invert, NamedImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::{OodError, Result};

/// Noise images drawn when the set has no size of its own and no `--limit`.
const DEFAULT_NOISE_IMAGES: usize = 2000;

/// An OOD set as named on the command line.
#[derive(Clone, Debug, PartialEq)]
pub enum OodSet {
    /// `NAME:SPLIT`, an IDX file, a folder or an image file.
    Images(ImageSet),
    /// `noise:uniform`: every pixel uniform in [0, 1].
    UniformNoise,
    /// `noise:gaussian`: every pixel N(0.5, 0.25²), clipped to [0, 1].
    GaussianNoise,
    /// `transform:…` of the in-distribution images.
    Transform(Transform),
}

/// A change to the in-distribution images that makes an OOD set of them (`transform:…`); every
/// result stays in [0, 1].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Transform {
    /// `transform:flip`: mirrored left to right.
    Flip,
    /// `transform:invert`: 1 − x.
    Invert,
    /// `transform:noiseS`: plus N(0, S²) per pixel, clipped to [0, 1].
    Noise(f64),
}

impl OodSet {
    /// Reads a set as named on the command line: `noise:uniform`, `noise:gaussian`,
    /// `transform:flip`, `transform:invert`, `transform:noiseS` (S > 0), else an image set as
    /// [`ImageSet::parse`] reads it. Errs on any other `noise:` or `transform:` kind, or on an
    /// image set that does not parse.
    pub fn parse(text: &str) -> Result<Self> {
        let invalid = |problem: &'static str| OodError::UnknownSet { text: text.to_string(), problem };
        match text.split_once(':') {
            Some(("noise", "uniform")) => Ok(OodSet::UniformNoise),
            Some(("noise", "gaussian")) => Ok(OodSet::GaussianNoise),
            Some(("noise", _)) => Err(invalid("noise sets are noise:uniform and noise:gaussian")),
            Some(("transform", "flip")) => Ok(OodSet::Transform(Transform::Flip)),
            Some(("transform", "invert")) => Ok(OodSet::Transform(Transform::Invert)),
            Some(("transform", kind)) => match kind.strip_prefix("noise").map(str::parse::<f64>) {
                Some(Ok(sigma)) if sigma.is_finite() && sigma > 0.0 => Ok(OodSet::Transform(Transform::Noise(sigma))),
                _ => Err(invalid("transforms are flip, invert and noiseS with S > 0 (e.g. noise0.5)")),
            },
            _ => Ok(OodSet::Images(ImageSet::parse(text)?)),
        }
    }

    /// The set's images, shaped like `info`'s: `id` are the in-distribution images (what the
    /// transforms start from), `limit` caps the count, `seed` draws the noise.
    pub fn images(
        &self,
        id: &[NamedImage],
        info: &'static DatasetInfo,
        root: &Path,
        limit: Option<usize>,
        seed: u64,
    ) -> Result<Vec<NamedImage>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let len = info.shape.len();
        let noise = |rng: &mut ChaCha8Rng, draw: &dyn Fn(&mut ChaCha8Rng) -> f32| -> Vec<NamedImage> {
            (0..limit.unwrap_or(DEFAULT_NOISE_IMAGES))
                .map(|k| NamedImage { name: format!("{self}#{k}"), pixels: (0..len).map(|_| draw(rng)).collect() })
                .collect()
        };
        let transformed = |rng: &mut ChaCha8Rng, transform: Transform| -> Vec<NamedImage> {
            id.iter()
                .take(limit.unwrap_or(usize::MAX))
                .map(|image| NamedImage {
                    name: format!("{}|{self}", image.name),
                    pixels: transform.apply(&image.pixels, info, rng),
                })
                .collect()
        };
        Ok(match self {
            OodSet::Images(set) => set.load(info, root, limit, Invert::Off)?,
            OodSet::UniformNoise => noise(&mut rng, &|rng| rng.random::<f32>()),
            OodSet::GaussianNoise => noise(&mut rng, &|rng| (0.5 + 0.25 * standard_normal(rng)).clamp(0.0, 1.0)),
            OodSet::Transform(transform) => transformed(&mut rng, *transform),
        })
    }
}

impl Transform {
    fn apply(self, pixels: &[f32], info: &DatasetInfo, rng: &mut ChaCha8Rng) -> Vec<f32> {
        match self {
            Transform::Flip => leafwalk_data::mirror(pixels, info.shape),
            Transform::Invert => pixels.iter().map(|p| 1.0 - p).collect(),
            Transform::Noise(sigma) => {
                pixels.iter().map(|p| (p + sigma as f32 * standard_normal(rng)).clamp(0.0, 1.0)).collect()
            }
        }
    }
}

/// One N(0, 1) draw.
fn standard_normal(rng: &mut ChaCha8Rng) -> f32 {
    StandardNormal.sample(rng)
}

/// Writes the form [`OodSet::parse`] reads.
impl fmt::Display for OodSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OodSet::Images(set) => write!(f, "{set}"),
            OodSet::UniformNoise => f.write_str("noise:uniform"),
            OodSet::GaussianNoise => f.write_str("noise:gaussian"),
            OodSet::Transform(Transform::Flip) => f.write_str("transform:flip"),
            OodSet::Transform(Transform::Invert) => f.write_str("transform:invert"),
            OodSet::Transform(Transform::Noise(sigma)) => write!(f, "transform:noise{sigma}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_each_kind() {
        for text in ["noise:uniform", "noise:gaussian", "transform:flip", "transform:invert", "transform:noise0.5"] {
            assert_eq!(OodSet::parse(text).unwrap().to_string(), text);
        }
        assert!(matches!(OodSet::parse("fashion-mnist:test").unwrap(), OodSet::Images(_)));
        for bad in ["noise:pink", "transform:rotate", "transform:noise-1", "transform:noiseX"] {
            assert!(OodSet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn transforms_and_noise_are_images_in_range() {
        let info = leafwalk_data::dataset_info("mnist").unwrap();
        let mut ramp = vec![0f32; 784];
        ramp[..28].iter_mut().enumerate().for_each(|(k, p)| *p = k as f32 / 27.0);
        let id = vec![NamedImage { name: "ramp".into(), pixels: ramp }];
        let root = Path::new("nowhere");
        let flipped = OodSet::parse("transform:flip").unwrap().images(&id, info, root, None, 0).unwrap();
        assert_eq!(flipped[0].pixels[0], 1.0);
        assert_eq!(flipped[0].pixels[27], 0.0);
        let inverted = OodSet::parse("transform:invert").unwrap().images(&id, info, root, None, 0).unwrap();
        assert_eq!(inverted[0].pixels[783], 1.0);
        for set in ["noise:uniform", "noise:gaussian", "transform:noise0.5"] {
            let set = OodSet::parse(set).unwrap();
            let images = set.images(&id, info, root, Some(3), 7).unwrap();
            assert!(images.iter().all(|i| i.pixels.len() == 784 && i.pixels.iter().all(|p| (0.0..=1.0).contains(p))));
            assert_eq!(images[0].pixels, set.images(&id, info, root, Some(3), 7).unwrap()[0].pixels, "seeded");
        }
        let gaussian = OodSet::GaussianNoise.images(&id, info, root, Some(20), 1).unwrap();
        let mean = gaussian.iter().flat_map(|i| &i.pixels).sum::<f32>() / (20.0 * 784.0);
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
    }
}
