//! Label-preserving generation: walks on the data leaf that never change the prediction.
//!
//! Each walk draws a random direction (standard normal, seeded per walk) and follows its
//! projection onto ker G⊥ — the leaf's tangent at each point — so the image changes the way the
//! model's data does. A step after which the model predicts another class is rejected: the
//! walk stays where it was and draws a new direction. Walks in different directions end at
//! different images of the same class.

use leafwalk_models::Classifier;
use nalgebra::DVector;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::path::prediction;
use crate::step::{direction_step, Subspace};
use crate::{Result, State, WalkError};

/// What [`generate_on_leaf`] made.
#[derive(Clone, Debug)]
pub struct Generated {
    /// The predicted class of the start, kept by every image.
    pub label: usize,
    /// The end of each walk.
    pub images: Vec<State>,
    /// Steps proposed over all walks (`count × steps`).
    pub proposed: usize,
    /// Proposed steps kept because the prediction stayed `label`; after any other the walk
    /// stayed put and drew a new direction.
    pub accepted: usize,
}

impl Generated {
    /// Fraction of proposed steps that kept the label.
    pub fn preservation_rate(&self) -> f64 {
        self.accepted as f64 / self.proposed.max(1) as f64
    }

    /// Mean distance between two different outputs (normalised units), 0 for fewer than two.
    pub fn mean_pairwise_distance(&self) -> f64 {
        let n = self.images.len();
        let pairs: Vec<f64> = (0..n)
            .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
            .map(|(i, j)| self.images[i].distance(&self.images[j]))
            .collect();
        pairs.iter().sum::<f64>() / pairs.len().max(1) as f64
    }
}

/// A standard normal vector of `len` values from a seeded ChaCha8 stream: the same on every
/// machine.
pub fn random_direction(len: usize, seed: u64) -> DVector<f64> {
    random_directions(len, &mut ChaCha8Rng::seed_from_u64(seed))
}

fn random_directions(len: usize, rng: &mut ChaCha8Rng) -> DVector<f64> {
    DVector::from_fn(len, |_, _| StandardNormal.sample(rng))
}

/// `count` label-preserving walks of `steps` steps of `step_size` from `from` (module docs).
pub fn generate_on_leaf(
    model: &Classifier,
    from: &State,
    count: usize,
    steps: usize,
    step_size: f64,
    seed: u64,
) -> Result<Generated> {
    if !(step_size.is_finite() && step_size > 0.0) {
        return Err(WalkError::StepSize(step_size));
    }
    let (label, _) = prediction(model, from)?;
    let mut generated = Generated { label, images: Vec::with_capacity(count), proposed: 0, accepted: 0 };
    for walk in 0..count {
        let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(walk as u64));
        let mut draw = || random_directions(from.0.len(), &mut rng);
        let (mut x, mut direction) = (from.clone(), draw());
        for k in 0..steps {
            let next = direction_step(model, &x, &direction, Subspace::Leaf, step_size)
                .map_err(WalkError::at_step(Some(walk), k))?
                .next;
            generated.proposed += 1;
            if prediction(model, &next)?.0 == label {
                generated.accepted += 1;
                x = next;
            } else {
                direction = draw();
            }
        }
        generated.images.push(x);
    }
    Ok(generated)
}
