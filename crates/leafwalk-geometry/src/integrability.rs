//! Is ker G⊥ integrable? The Frobenius test behind "G defines a foliation": for vector fields X,
//! Y inside the distribution, the Lie bracket [X, Y] must stay inside it. At a point x, for
//! sampled pairs of unit leaf directions X₀, Y₀, take the fields X(x′) = P(x′)X₀ and
//! Y(x′) = P(x′)Y₀ (P the projector onto ker G⊥); their derivatives along each other,
//! DY·X ≈ (P(x + hX₀) − P(x − hX₀))Y₀/2h and DX·Y likewise, lie wholly outside the
//! distribution (the derivative of a projector maps it to its complement), so [X, Y] is always
//! normal and the test is whether the two normal parts cancel — whether the second fundamental
//! form II(X, Y) = (I − P)(DY·X) is symmetric. The diagnostic is
//! ‖II(X, Y) − II(Y, X)‖ / (‖II(X, Y)‖ + ‖II(Y, X)‖) = ‖[X, Y]‖ / (‖DY·X‖ + ‖DX·Y‖) in normal
//! parts: 0 for an integrable distribution, up to 1 for a generic one. All 4·pairs displaced
//! points of every step h go through the engine in one batch; steps that agree show the
//! derivative resolved. For a ReLU network P is constant inside each linear region, so its
//! derivative there is 0 and what a step measures is the jump across region boundaries (it grows
//! as 1/h): the test is about smooth activations.

use candle_core::{Device, Tensor};
use leafwalk_models::Classifier;
use nalgebra::DVector;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::local::LeafProjector;
use crate::{batch_geometry, median, GeometryError, Result};

/// The bracket's statistics over the sampled pairs at one step size.
#[derive(Clone, Debug, PartialEq)]
pub struct BracketStats {
    /// The finite-difference step h, in pixels.
    pub step: f64,
    /// Pairs whose fields vary at all (the ratio is undefined for the others).
    pub pairs: usize,
    /// Mean over those pairs of ‖II(X, Y) − II(Y, X)‖ / (‖II(X, Y)‖ + ‖II(Y, X)‖), in [0, 1]:
    /// 0 for an integrable distribution.
    pub mean_asymmetry: f64,
    /// Median of the same ratio over those pairs, in [0, 1]: less swayed by a few outlying
    /// pairs.
    pub median_asymmetry: f64,
    /// Mean ‖[X, Y]‖ (unit X₀, Y₀; 1/pixels).
    pub mean_bracket: f64,
}

/// [`BracketStats`] at `point` (pixels `[1, C, H, W]`) for `pairs` random pairs of leaf
/// directions (seeded), at each step of `steps`.
pub fn integrability(
    model: &Classifier,
    point: &Tensor,
    pairs: usize,
    steps: &[f64],
    seed: u64,
) -> Result<Vec<BracketStats>> {
    let shape = point.dims().to_vec();
    if shape.len() != 4 || shape[0] != 1 {
        return Err(GeometryError::NotOnePoint { routine: "integrability", shape });
    }
    if pairs == 0 || steps.iter().any(|h| !(h.is_finite() && *h > 0.0)) {
        return Err(GeometryError::IntegrabilitySettings { pairs, steps: steps.to_vec() });
    }
    let x: Vec<f64> = point.flatten_all()?.to_dtype(candle_core::DType::F64)?.to_vec1()?;
    let x = DVector::from_vec(x);
    let projector = batch_geometry(model, point)?.remove(0).leaf_projector();
    if projector.rank() < 2 {
        return Err(GeometryError::LeafTooThin { rank: projector.rank() });
    }
    let directions = leaf_pairs(&projector, x.len(), pairs, seed);
    let projectors_at = |points: &[DVector<f64>]| -> Result<Vec<LeafProjector>> {
        let values: Vec<f32> = points.iter().flat_map(|p| p.iter().map(|&v| v as f32)).collect();
        let batch = Tensor::from_vec(values, (points.len(), shape[1], shape[2], shape[3]), &Device::Cpu)?
            .to_device(point.device())?;
        Ok(batch_geometry(model, &batch)?.iter().map(|p| p.leaf_projector()).collect())
    };
    bracket_stats(&x, &projector, &directions, steps, projectors_at)
}

/// The bracket statistics at `x` of the distribution `projectors_at` gives (its projector at
/// `x` is `projector`), for the pairs `directions`, at each step; the displaced points of all
/// steps and pairs are asked for at once.
fn bracket_stats(
    x: &DVector<f64>,
    projector: &LeafProjector,
    directions: &[(DVector<f64>, DVector<f64>)],
    steps: &[f64],
    projectors_at: impl Fn(&[DVector<f64>]) -> Result<Vec<LeafProjector>>,
) -> Result<Vec<BracketStats>> {
    // Every displaced point: for each step, each pair, x ± hX₀ and x ± hY₀.
    let mut displaced = Vec::with_capacity(steps.len() * directions.len() * 4);
    for &h in steps {
        for (a, b) in directions {
            for (direction, sign) in [(a, 1.0), (a, -1.0), (b, 1.0), (b, -1.0)] {
                displaced.push(x + direction * (sign * h));
            }
        }
    }
    let projectors = projectors_at(&displaced)?;
    let pairs = directions.len();
    let mut stats = Vec::with_capacity(steps.len());
    for (s, &h) in steps.iter().enumerate() {
        let (mut shares, mut norms) = (Vec::new(), Vec::new());
        for (k, (a, b)) in directions.iter().enumerate() {
            let at = |j: usize| &projectors[(s * pairs + k) * 4 + j];
            let y_along_x = projector.onto_kernel(&((at(0).onto_leaf(b) - at(1).onto_leaf(b)) / (2.0 * h)));
            let x_along_y = projector.onto_kernel(&((at(2).onto_leaf(a) - at(3).onto_leaf(a)) / (2.0 * h)));
            let bracket = (&y_along_x - &x_along_y).norm();
            norms.push(bracket);
            let scale = y_along_x.norm() + x_along_y.norm();
            if scale > 0.0 {
                shares.push(bracket / scale);
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        stats.push(BracketStats {
            step: h,
            pairs: shares.len(),
            mean_asymmetry: mean(&shares),
            median_asymmetry: median(&shares).unwrap_or(0.0),
            mean_bracket: mean(&norms),
        });
    }
    Ok(stats)
}

/// `pairs` pairs (X₀, Y₀) of unit leaf directions: Gaussian vectors projected onto the leaf.
/// Not made orthogonal: on an umbilic leaf (a sphere) II(X₀, Y₀) = −X₀·Y₀/R vanishes for
/// orthogonal pairs, and the ratio would compare two roundings.
fn leaf_pairs(projector: &LeafProjector, n: usize, pairs: usize, seed: u64) -> Vec<(DVector<f64>, DVector<f64>)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut gaussian = || DVector::from_fn(n, |_, _| StandardNormal.sample(&mut rng));
    (0..pairs)
        .map(|_| {
            let a = projector.onto_leaf(&gaussian()).normalize();
            (a, projector.onto_leaf(&gaussian()).normalize())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    //! The test on two distributions in R³ whose answer is known: the tangent planes of the
    //! spheres around 0 (integrable: the spheres are its leaves) and the contact planes
    //! ker(dz − y dx) (nowhere integrable).
    use nalgebra::DMatrix;

    use super::*;

    fn plane(u: DVector<f64>, v: DVector<f64>) -> LeafProjector {
        LeafProjector { basis: DMatrix::from_columns(&[u, v]).qr().q() }
    }

    fn sphere(p: &DVector<f64>) -> LeafProjector {
        let radial = p.normalize();
        let helper = if radial[0].abs() < 0.9 {
            DVector::from_vec(vec![1.0, 0.0, 0.0])
        } else {
            DVector::from_vec(vec![0.0, 1.0, 0.0])
        };
        let u = (&helper - &radial * radial.dot(&helper)).normalize();
        plane(u.clone(), radial.cross(&u))
    }

    fn contact(p: &DVector<f64>) -> LeafProjector {
        plane(DVector::from_vec(vec![1.0, 0.0, p[1]]), DVector::from_vec(vec![0.0, 1.0, 0.0]))
    }

    fn asymmetry(field: fn(&DVector<f64>) -> LeafProjector) -> Vec<BracketStats> {
        let x = DVector::from_vec(vec![0.3, 0.8, -0.5]);
        let projector = field(&x);
        let directions = leaf_pairs(&projector, 3, 8, 1);
        bracket_stats(&x, &projector, &directions, &[1e-2, 1e-3], |points| Ok(points.iter().map(field).collect()))
            .unwrap()
    }

    #[test]
    fn tells_an_integrable_distribution_from_a_contact_structure() {
        for level in asymmetry(sphere) {
            assert!(level.mean_bracket < 1e-6 && level.mean_asymmetry < 1e-5, "spheres: {level:?}");
        }
        for level in asymmetry(contact) {
            assert!(level.mean_bracket > 0.1 && level.mean_asymmetry > 0.5, "contact planes: {level:?}");
        }
    }
}
