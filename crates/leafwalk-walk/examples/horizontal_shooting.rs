//! Can any horizontal path reach a target the greedy walk stalls short of? A diagnostic, not a
//! product path: Newton's method on a whole discretised path.
//!
//! The path is K planned displacements d_k; shooting it walks x_{k+1} = x_k + P(x_k) d_k from
//! the start (P the projection onto ker G⊥ at the point actually reached, pixels clamped), so
//! every shot path is horizontal by construction, like the Euler walk. For a ReLU network ker G⊥
//! is constant inside each linear region, so to first order the end point moves by Σ P_k δ_k
//! when the plan moves by δ; the smallest plan change that closes the residual r solves
//! (Σ P_k + μI) y = r (conjugate gradients on the C×n factors, never an n×n matrix) with
//! δ_k = P_k y. Each iteration tries that step and shorter ones (×0.3) and keeps the first that
//! ends nearer the target.
//!
//! Run: `cargo run --release -p leafwalk-walk --example horizontal_shooting [-- K ITERATIONS FROM TO]`
//! (golden epoch-1 weights, test images FROM → TO of the golden set; defaults 1000 10 0 1).

use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use leafwalk_data::dataset_info;
use leafwalk_geometry::{batch_geometry_in, Coordinates};
use leafwalk_models::{checkpoint, Arch, Classifier, LoadOptions};
use nalgebra::{DMatrix, DVector};

/// Ridge μ of the Newton system: directions no segment's leaf reaches get steps ~1/μ.
const RIDGE: f64 = 1e-3;

type Error = Box<dyn std::error::Error>;

struct Shot {
    end: DVector<f64>,
    /// Orthonormal basis of ker G⊥ at each point the path left from.
    bases: Vec<DMatrix<f64>>,
    length: f64,
}

fn leaf_basis(model: &Classifier, x: &DVector<f64>) -> Result<DMatrix<f64>, Error> {
    let values: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let batch = Tensor::from_vec(values, (1, 1, 28, 28), &Device::Cpu)?;
    Ok(batch_geometry_in(model, &batch, Coordinates::Normalised)?.remove(0).leaf_projector().basis)
}

fn shoot(model: &Classifier, start: &DVector<f64>, plan: &[DVector<f64>], bounds: (f64, f64)) -> Result<Shot, Error> {
    let (mut x, mut bases, mut length) = (start.clone(), Vec::with_capacity(plan.len()), 0.0);
    for d in plan {
        let basis = leaf_basis(model, &x)?;
        let step = &basis * (basis.transpose() * d);
        length += step.norm();
        x += step;
        x.iter_mut().for_each(|v| *v = v.clamp(bounds.0, bounds.1));
        bases.push(basis);
    }
    Ok(Shot { end: x, bases, length })
}

/// y with (Σ P_k + μI) y = r, by conjugate gradients.
fn newton_direction(bases: &[DMatrix<f64>], r: &DVector<f64>) -> DVector<f64> {
    let apply = |y: &DVector<f64>| bases.iter().fold(y * RIDGE, |sum, q| sum + q * (q.transpose() * y));
    let mut y = DVector::zeros(r.len());
    let (mut residual, mut direction) = (r.clone(), r.clone());
    let mut rr = residual.norm_squared();
    for _ in 0..300 {
        let ad = apply(&direction);
        let alpha = rr / direction.dot(&ad);
        y += alpha * &direction;
        residual -= alpha * &ad;
        let rr_next = residual.norm_squared();
        if rr_next.sqrt() < 1e-6 * r.norm() {
            break;
        }
        direction = &residual + (rr_next / rr) * &direction;
        rr = rr_next;
    }
    y
}

fn main() -> Result<(), Error> {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse()).collect::<Result<_, _>>()?;
    let arg = |k: usize, default: usize| args.get(k).copied().unwrap_or(default);
    let (segments, iterations, from, to) = (arg(0, 1000), arg(1, 10), arg(2, 0), arg(3, 1));
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let mnist = dataset_info("mnist")?;
    let options = LoadOptions::new(Arch::MnistCnn, mnist);
    let model = Classifier::load(&fixtures.join("mnist-cnn-epoch01.safetensors"), options, &Device::Cpu)?;
    let (golden, _) = checkpoint::read(&fixtures.join("golden-epoch01.safetensors"), &Device::Cpu)?;
    let image = |k: usize| -> Result<DVector<f64>, Error> {
        let values: Vec<f32> = golden["test_inputs"].get(k)?.flatten_all()?.to_vec1()?;
        Ok(DVector::from_iterator(values.len(), values.iter().map(|&v| v as f64)))
    };
    let (start, target) = (image(from)?, image(to)?);
    let (mean, std) = (mnist.mean[0] as f64, mnist.std[0] as f64);
    let bounds = (-mean / std, (1.0 - mean) / std);
    let clock = Instant::now();

    let mut plan = vec![(&target - &start) / segments as f64; segments];
    let mut shot = shoot(&model, &start, &plan, bounds)?;
    let mut distance = (&target - &shot.end).norm();
    println!(
        "start distance {:.3}; straight plan shot along the leaf: distance {distance:.3}, length {:.2}",
        (&target - &start).norm(),
        shot.length
    );
    for iteration in 0..iterations {
        let y = newton_direction(&shot.bases, &(&target - &shot.end));
        let mut scale = 1.0;
        let improved = loop {
            let trial: Vec<DVector<f64>> =
                plan.iter().zip(&shot.bases).map(|(d, q)| d + scale * (q * (q.transpose() * &y))).collect();
            let trial_shot = shoot(&model, &start, &trial, bounds)?;
            let trial_distance = (&target - &trial_shot.end).norm();
            println!(
                "  iteration {iteration}, step ×{scale:.4}: distance {trial_distance:.3}, length {:.1}  ({:.0} s)",
                trial_shot.length,
                clock.elapsed().as_secs_f64()
            );
            if trial_distance < distance {
                (plan, shot, distance) = (trial, trial_shot, trial_distance);
                break true;
            }
            scale *= 0.3;
            if scale < 0.01 {
                break false;
            }
        };
        if !improved || distance < 1.0 {
            break;
        }
    }
    println!("best distance {distance:.3} with path length {:.1}", shot.length);
    Ok(())
}
