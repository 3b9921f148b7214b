//! The Fisher matrix F(x,w) = Σᵢ pᵢ ∇_w log pᵢ ∇_w log pᵢᵀ in parameter space, as a C×P factor.
//!
//! As with G, F is never formed (P is 1.2 million for mnist-cnn): the C per-class parameter
//! gradients Φ (C×P) give trace F = Σ pᵢ‖Φᵢ‖² and F's nonzero eigenvalues, which are those of
//! the C×C matrix D^{1/2} Φ Φᵀ D^{1/2}. The dataset Fisher F̄ = (1/N) Σ_x F(x,w) over N points
//! has the nonzero eigenvalues of the (N·C)×(N·C) Gram matrix of all rows scaled by √(pᵢ/N).

use candle_core::{DType, Tensor};
use leafwalk_models::Classifier;
use nalgebra::{DMatrix, SymmetricEigen};

use crate::{check_finite, GeometryError, Result};

/// Per-class parameter gradients at one point.
#[derive(Clone, Debug)]
pub struct FisherFactor {
    /// p, the C class probabilities at the point (evaluation mode).
    pub probs: Vec<f64>,
    /// C rows of P values: row i is ∇_w log pᵢ, parameters in the model's construction order.
    pub rows: Vec<Vec<f32>>,
}

/// The Fisher factor of each point of `pixels` (`[B, C, H, W]`): one forward and C backward
/// passes per point (the gradient of a batch would sum the points).
pub fn fisher_factors(model: &Classifier, pixels: &Tensor) -> Result<Vec<FisherFactor>> {
    check_finite(pixels)?;
    let params = model.trainable_vars();
    let mut factors = Vec::with_capacity(pixels.dim(0)?);
    for b in 0..pixels.dim(0)? {
        let log_probs = model.log_probs_t(&pixels.narrow(0, b, 1)?.to_dtype(model.dtype())?, false)?.squeeze(0)?;
        let probs: Vec<f64> = log_probs.to_dtype(DType::F64)?.exp()?.to_vec1()?;
        let mut rows = Vec::with_capacity(probs.len());
        for class in 0..probs.len() {
            let grads = log_probs.get(class)?.backward()?;
            let mut row = Vec::new();
            for (_, var) in &params {
                match grads.get(var) {
                    Some(g) => row.extend(g.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
                    None => row.extend(std::iter::repeat_n(0.0, var.elem_count())),
                }
            }
            rows.push(row);
        }
        factors.push(FisherFactor { probs, rows });
    }
    Ok(factors)
}

impl FisherFactor {
    /// trace F(x,w) = Σᵢ pᵢ ‖∇_w log pᵢ‖², over every trainable parameter (running statistics
    /// excluded).
    pub fn trace(&self) -> f64 {
        self.rows
            .iter()
            .zip(&self.probs)
            .map(|(row, p)| p * row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>())
            .sum()
    }

    /// Nonzero eigenvalues of F(x,w), descending (C values; the last is ≈ 0).
    pub fn eigenvalues(&self) -> Vec<f64> {
        let weights: Vec<f64> = self.probs.iter().map(|p| p.sqrt()).collect();
        descending_eigenvalues(gram(&[self], &weights))
    }
}

/// Weighted Gram matrix of every row of `factors`: entry (a, b) = wₐ w_b ⟨Φₐ, Φ_b⟩.
///
/// Column blocks of 4,096 parameters are multiplied in f32 (a BLAS-like gemm: 4,096-term
/// sums keep ~1e-6 relative accuracy) and accumulated in f64.
fn gram(factors: &[&FisherFactor], weights: &[f64]) -> DMatrix<f64> {
    const BLOCK: usize = 4096;
    let rows: Vec<&Vec<f32>> = factors.iter().flat_map(|f| f.rows.iter()).collect();
    let (n, params) = (rows.len(), rows.first().map_or(0, |r| r.len()));
    let mut gram = DMatrix::<f64>::zeros(n, n);
    for start in (0..params).step_by(BLOCK) {
        let width = BLOCK.min(params - start);
        let block = DMatrix::<f32>::from_fn(n, width, |r, c| rows[r][start + c]);
        let product = &block * block.transpose();
        gram += product.map(|v| v as f64);
    }
    for a in 0..n {
        for b in 0..n {
            gram[(a, b)] *= weights[a] * weights[b];
        }
    }
    gram
}

fn descending_eigenvalues(matrix: DMatrix<f64>) -> Vec<f64> {
    let mut values: Vec<f64> = SymmetricEigen::new(matrix).eigenvalues.iter().copied().collect();
    values.sort_by(|a, b| b.total_cmp(a));
    values
}

/// Most points the dataset Fisher accepts: its Gram matrix is (N·C)² and costs N²C²P.
pub const DATASET_FISHER_MAX_POINTS: usize = 512;
/// The per-class gradients of all points are held in memory (N·C·P f32): at most this many.
pub const DATASET_FISHER_MAX_BYTES: usize = 4 << 30;

/// The `top` largest eigenvalues and the trace of the dataset Fisher (1/N) Σ F(x,w).
pub fn dataset_fisher(factors: &[FisherFactor], top: usize) -> Result<(f64, Vec<f64>)> {
    if factors.is_empty() || factors.len() > DATASET_FISHER_MAX_POINTS {
        return Err(GeometryError::FisherPointCount { got: factors.len(), max: DATASET_FISHER_MAX_POINTS });
    }
    let bytes: usize = factors.iter().map(|f| f.rows.iter().map(|r| r.len() * 4).sum::<usize>()).sum();
    if bytes > DATASET_FISHER_MAX_BYTES {
        return Err(GeometryError::FisherTooLarge { points: factors.len(), bytes, limit: DATASET_FISHER_MAX_BYTES });
    }
    let n = factors.len() as f64;
    let weights: Vec<f64> = factors.iter().flat_map(|f| f.probs.iter().map(move |p| (p / n).sqrt())).collect();
    let trace = factors.iter().map(FisherFactor::trace).sum::<f64>() / n;
    let mut values = descending_eigenvalues(gram(&factors.iter().collect::<Vec<_>>(), &weights));
    values.truncate(top);
    Ok((trace, values))
}
