//! Adversarial training's attack: projected gradient descent (Madry et al.) on pixels in
//! [0, 1], each step along the gradient of the loss (the engine's loss gradient, a J pass with
//! one seed a point), in evaluation mode (batch norm on its running statistics), from the clean
//! images (no random start: a run is reproducible from its seed alone).

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Tensor, D};
use leafwalk_models::Classifier;

use crate::{Result, TrainError};

/// The attack's ball.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Norm {
    /// ‖δ‖₂ ≤ ε per image; steps along the normalised gradient.
    L2,
    /// max |δᵢ| ≤ ε; steps along the gradient's sign.
    Linf,
}

/// PGD with `steps` steps of 2.5·ε / steps inside the `norm` ball of radius `epsilon` (pixels).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Adversary {
    /// The ball the perturbation stays in: one ‖δ‖₂ per image, or a bound on every value.
    pub norm: Norm,
    /// The ball's radius in pixel units (images in [0, 1]), positive, e.g. 2 for `l2:2` or 0.3
    /// for `linf:0.3`.
    pub epsilon: f32,
    /// PGD steps per batch, at least 1 (10 when the flag gives no count); each step is
    /// 2.5·`epsilon` / `steps` long and costs one loss gradient of the batch.
    pub steps: usize,
}

/// Steps of an attack given without a count.
const DEFAULT_STEPS: usize = 10;

/// `l2:EPS[,STEPS]` or `linf:EPS[,STEPS]`, e.g. `l2:2` or `linf:0.3,40`.
impl FromStr for Adversary {
    type Err = TrainError;

    fn from_str(text: &str) -> Result<Self> {
        let bad = |why: &str| TrainError::Config(format!("--adversarial {text}: {why} (e.g. l2:2 or linf:0.3,40)"));
        let (norm, rest) = text.split_once(':').ok_or_else(|| bad("expected NORM:EPS[,STEPS]"))?;
        let norm = match norm {
            "l2" => Norm::L2,
            "linf" => Norm::Linf,
            _ => return Err(bad("the norm is l2 or linf")),
        };
        let (epsilon, steps) = match rest.split_once(',') {
            Some((e, s)) => (e, s.parse::<usize>().map_err(|_| bad("STEPS must be a whole number"))?),
            None => (rest, DEFAULT_STEPS),
        };
        let epsilon: f32 = epsilon.parse().map_err(|_| bad("EPS must be a number"))?;
        if !(epsilon.is_finite() && epsilon > 0.0) || steps == 0 {
            return Err(bad("EPS must be positive and STEPS at least 1"));
        }
        Ok(Adversary { norm, epsilon, steps })
    }
}

impl fmt::Display for Adversary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let norm = match self.norm {
            Norm::L2 => "l2",
            Norm::Linf => "linf",
        };
        write!(f, "{norm}:{},{}", self.epsilon, self.steps)
    }
}

impl Adversary {
    /// The images moved to raise the loss of `labels`, within the ball around them and in
    /// [0, 1].
    pub fn attack(&self, model: &Classifier, images: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let labels: Vec<usize> =
            labels.to_dtype(DType::U32)?.to_vec1::<u32>()?.into_iter().map(|l| l as usize).collect();
        let step = 2.5 * self.epsilon / self.steps as f32;
        let mut x = images.clone();
        for _ in 0..self.steps {
            let (gradient, _) = leafwalk_engine::loss_input_gradient(model, &x, &labels)?;
            let moved = match self.norm {
                Norm::L2 => (&x + (per_image_unit(&gradient)? * f64::from(step))?)?,
                Norm::Linf => (&x + (gradient.sign()? * f64::from(step))?)?,
            };
            x = self.project(images, &moved)?.clamp(0f32, 1f32)?;
        }
        Ok(x)
    }

    /// `moved` brought back into the ball around `images`.
    fn project(&self, images: &Tensor, moved: &Tensor) -> Result<Tensor> {
        let delta = (moved - images)?;
        let delta = match self.norm {
            Norm::L2 => {
                let norms = per_image_norm(&delta)?;
                let shrink = (norms.clamp(self.epsilon, f32::MAX)?.recip()? * f64::from(self.epsilon))?;
                delta.broadcast_mul(&shrink)?
            }
            Norm::Linf => delta.clamp(-self.epsilon, self.epsilon)?,
        };
        Ok((images + delta)?)
    }
}

/// ‖v_b‖₂ of each image, shaped to broadcast over `[B, C, H, W]`.
fn per_image_norm(v: &Tensor) -> Result<Tensor> {
    let b = v.dim(0)?;
    Ok(v.flatten_from(1)?.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.reshape((b, 1, 1, 1))?)
}

/// Each image's gradient scaled to unit length (zero stays zero).
fn per_image_unit(v: &Tensor) -> Result<Tensor> {
    let norms = per_image_norm(v)?.clamp(1e-12f32, f32::MAX)?;
    Ok(v.broadcast_div(&norms)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_flag() {
        let a: Adversary = "l2:2".parse().unwrap();
        assert_eq!(a, Adversary { norm: Norm::L2, epsilon: 2.0, steps: 10 });
        assert_eq!(a.to_string(), "l2:2,10");
        let b: Adversary = "linf:0.3,40".parse().unwrap();
        assert_eq!((b.norm, b.steps), (Norm::Linf, 40));
        for bad in ["l1:2", "l2", "l2:-1", "l2:2,0", "linf:x"] {
            assert!(bad.parse::<Adversary>().is_err(), "{bad}");
        }
    }
}
