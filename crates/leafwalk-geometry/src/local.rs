//! The local data matrix G(x,w) = Σᵢ pᵢ ∇ₓlog pᵢ ∇ₓlog pᵢᵀ = Jᵀ D J (D = diag p) at one point,
//! without ever forming the n×n matrix.
//!
//! Everything goes through C-sized objects in f64: with A = D^{1/2} J (C×n), G = AᵀA has the
//! same nonzero eigenvalues as the C×C matrix M = A Aᵀ, and if M u = λ u then v = Aᵀu / √λ is a
//! unit eigenvector of G. The leaf's tangent space ker G⊥ = span{Jᵢ} (rows with pᵢ > 0) gets an
//! orthonormal basis from J's leading right singular vectors, made orthonormal in n dimensions
//! by a Householder QR.
//!
//! **Numerical rank.** `rank` counts singular values of J above `RANK_RTOL · σ₀` (1e-6, as in
//! the golden reference), capped at C − 1 because Σ pᵢ Jᵢ = 0 makes one direction redundant:
//! the C-th singular value is rounding noise (≲ 3e-8 σ₀ measured). Apply it to the unnormalised
//! J: normalising columns first inflates the noise of the saturated class.

use nalgebra::{DMatrix, DVector, SymmetricEigen};

use crate::{GeometryError, Result};

/// Relative tolerance on J's singular values for the numerical rank.
pub const RANK_RTOL: f64 = 1e-6;

/// J and p at one point, in f64.
#[derive(Clone, Debug)]
pub struct PointGeometry {
    /// p, length C.
    pub probs: DVector<f64>,
    /// log p, length C (kept separately: pᵢ may underflow where log pᵢ does not).
    pub log_probs: DVector<f64>,
    /// J, C×n: row i is ∇ₓ log pᵢ with respect to pixels.
    pub jacobian: DMatrix<f64>,
}

/// Eigen-decomposition of G through its C×C twin.
#[derive(Clone, Debug)]
pub struct Spectrum {
    /// Eigenvalues of G, descending, length C (the last is ≈ 0, possibly slightly negative).
    pub eigenvalues: Vec<f64>,
    /// Eigenvectors of M = D^{1/2} J Jᵀ D^{1/2}, columns in the order of `eigenvalues`.
    pub m_eigenvectors: DMatrix<f64>,
}

impl PointGeometry {
    pub fn new(log_probs: &[f64], jacobian: &[f64], classes: usize) -> Result<Self> {
        if classes == 0 || log_probs.len() != classes || !jacobian.len().is_multiple_of(classes) {
            return Err(GeometryError::Invalid(format!(
                "{} log-probabilities and {} Jacobian entries for {classes} classes",
                log_probs.len(),
                jacobian.len()
            )));
        }
        let n = jacobian.len() / classes;
        let log_probs = DVector::from_column_slice(log_probs);
        Ok(PointGeometry {
            probs: log_probs.map(f64::exp),
            log_probs,
            jacobian: DMatrix::from_row_slice(classes, n, jacobian),
        })
    }

    pub fn classes(&self) -> usize {
        self.jacobian.nrows()
    }

    pub fn dim(&self) -> usize {
        self.jacobian.ncols()
    }

    /// A = D^{1/2} J.
    fn weighted_jacobian(&self) -> DMatrix<f64> {
        let mut a = self.jacobian.clone();
        for (i, mut row) in a.row_iter_mut().enumerate() {
            row *= self.probs[i].sqrt();
        }
        a
    }

    /// trace G = Σᵢ pᵢ ‖Jᵢ‖².
    pub fn trace(&self) -> f64 {
        self.jacobian.row_iter().zip(self.probs.iter()).map(|(row, p)| p * row.norm_squared()).sum()
    }

    /// vᵀ G v = Σᵢ pᵢ (Jᵢ·v)² — half the second-order KL divergence along v.
    pub fn quadratic_form(&self, v: &DVector<f64>) -> f64 {
        (&self.jacobian * v).iter().zip(self.probs.iter()).map(|(jv, p)| p * jv * jv).sum()
    }

    /// Σᵢ pᵢ Jᵢ, which is zero up to rounding (Σ pᵢ = 1 differentiated).
    pub fn weighted_row_sum(&self) -> DVector<f64> {
        self.jacobian.transpose() * &self.probs
    }

    pub fn spectrum(&self) -> Spectrum {
        let a = self.weighted_jacobian();
        let eigen = SymmetricEigen::new(&a * a.transpose());
        let mut order: Vec<usize> = (0..eigen.eigenvalues.len()).collect();
        order.sort_by(|&x, &y| eigen.eigenvalues[y].total_cmp(&eigen.eigenvalues[x]));
        let eigenvalues = order.iter().map(|&k| eigen.eigenvalues[k]).collect();
        let m_eigenvectors =
            DMatrix::from_columns(&order.iter().map(|&k| eigen.eigenvectors.column(k)).collect::<Vec<_>>());
        Spectrum { eigenvalues, m_eigenvectors }
    }

    /// log₁₀ of G's C−1 largest eigenvalues (the rest is 0 up to rounding), each floored at
    /// 1e-30: confident predictions have eigenvalues many decades small, and comparisons of data
    /// sets or OOD inputs happen in decades.
    pub fn log10_eigenvalues(&self) -> Vec<f64> {
        let eigenvalues = self.spectrum().eigenvalues;
        let kept = eigenvalues.len().saturating_sub(1).max(1);
        eigenvalues.iter().take(kept).map(|&l| l.max(1e-30).log10()).collect()
    }

    /// Unit eigenvectors of G (n × k) for its `k` largest eigenvalues: the leaf basis ordered by
    /// how strongly the model perceives each direction. `k` is capped at the numerical rank.
    ///
    /// With the thin QR Aᵀ = Q R (A = D^{1/2} J), G = Q (R Rᵀ) Qᵀ, so the eigenvectors are Q W
    /// for the eigenvectors W of the C×C matrix R Rᵀ: orthonormal to rounding even for the
    /// smallest eigenvalues, where Aᵀu/√λ loses accuracy as λ₀/λ grows.
    pub fn eigenvectors(&self, k: usize) -> DMatrix<f64> {
        let k = k.min(self.rank());
        let qr = self.weighted_jacobian().transpose().qr();
        let r = qr.r();
        let eigen = SymmetricEigen::new(&r * r.transpose());
        let mut order: Vec<usize> = (0..eigen.eigenvalues.len()).collect();
        order.sort_by(|&a, &b| eigen.eigenvalues[b].total_cmp(&eigen.eigenvalues[a]));
        let w = DMatrix::from_columns(&order[..k].iter().map(|&j| eigen.eigenvectors.column(j)).collect::<Vec<_>>());
        qr.q() * w
    }

    /// Eigen-decomposition of the C×C Gram matrix J Jᵀ: singular values of J (descending) and
    /// the matching right singular vectors (columns).
    fn gram_svd(&self) -> (Vec<f64>, DMatrix<f64>) {
        let eigen = SymmetricEigen::new(&self.jacobian * self.jacobian.transpose());
        let mut order: Vec<usize> = (0..eigen.eigenvalues.len()).collect();
        order.sort_by(|&a, &b| eigen.eigenvalues[b].total_cmp(&eigen.eigenvalues[a]));
        let singular = order.iter().map(|&k| eigen.eigenvalues[k].max(0.0).sqrt()).collect();
        let vectors = DMatrix::from_columns(&order.iter().map(|&k| eigen.eigenvectors.column(k)).collect::<Vec<_>>());
        (singular, vectors)
    }

    /// Singular values of J, descending (length C). Taken from the C×C Gram matrix: exact to
    /// f64 rounding for σₖ ≳ 1e-8 σ₀, far below the rank tolerance.
    pub fn jacobian_singular_values(&self) -> Vec<f64> {
        self.gram_svd().0
    }

    /// Dimension of ker G⊥ (see the module docs for the tolerance).
    pub fn rank(&self) -> usize {
        rank_of(&self.jacobian_singular_values(), self.classes())
    }

    /// Orthonormal basis of ker G⊥ and the projections it gives.
    ///
    /// The r leading right singular vectors V_r of J give r directions Jᵀ V_r inside the row
    /// space of J; a Householder QR of that n×r matrix makes them orthonormal. (nalgebra's SVD
    /// of the tall Jᵀ was measured to miss the row space by 1e-5 relative; this is exact to
    /// rounding.)
    pub fn leaf_projector(&self) -> LeafProjector {
        let (singular, vectors) = self.gram_svd();
        let rank = rank_of(&singular, self.classes());
        let directions = self.jacobian.transpose() * vectors.columns(0, rank);
        LeafProjector { basis: directions.qr().q() }
    }

    /// The dense n×n G = AᵀA, only for small inputs.
    pub fn dense(&self, max_dim: usize) -> Result<DMatrix<f64>> {
        if self.dim() > max_dim {
            return Err(GeometryError::Invalid(format!(
                "refusing to form a dense {n}×{n} G (limit n ≤ {max_dim})",
                n = self.dim()
            )));
        }
        let a = self.weighted_jacobian();
        Ok(a.transpose() * a)
    }
}

fn rank_of(singular: &[f64], classes: usize) -> usize {
    let top = singular.first().copied().unwrap_or(0.0);
    singular.iter().filter(|&&v| v > RANK_RTOL * top).count().min(classes.saturating_sub(1))
}

/// Orthogonal projections onto ker G⊥ (the data leaf's tangent space) and ker G.
#[derive(Clone, Debug)]
pub struct LeafProjector {
    /// n × r, orthonormal columns spanning ker G⊥.
    pub basis: DMatrix<f64>,
}

impl LeafProjector {
    pub fn rank(&self) -> usize {
        self.basis.ncols()
    }

    /// P v: the component of v along the leaf.
    pub fn onto_leaf(&self, v: &DVector<f64>) -> DVector<f64> {
        &self.basis * (self.basis.transpose() * v)
    }

    /// v − P v: the component in ker G, which leaves the prediction unchanged to first order.
    pub fn onto_kernel(&self, v: &DVector<f64>) -> DVector<f64> {
        v - self.onto_leaf(v)
    }

    /// P V for a batch of vectors (the columns of `vectors`, n × m), in two matrix products.
    pub fn columns_onto_leaf(&self, vectors: &DMatrix<f64>) -> DMatrix<f64> {
        &self.basis * (self.basis.transpose() * vectors)
    }

    /// V − P V for a batch of vectors (columns).
    pub fn columns_onto_kernel(&self, vectors: &DMatrix<f64>) -> DMatrix<f64> {
        vectors - self.columns_onto_leaf(vectors)
    }
}
