//! The local data matrix G(x,w) = Σᵢ pᵢ ∇ₓlog pᵢ ∇ₓlog pᵢᵀ = Jᵀ D J (D = diag p) at one point,
//! without ever forming the n×n matrix.
//!
//! J is kept as the passes computed it, in f32 (one point's J of a 1,000-class ImageNet-sized
//! model is 600 MB), and every product with it is taken in f64, block by block of columns.
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

use std::sync::OnceLock;

use nalgebra::{DMatrix, DVector, SymmetricEigen};
use rayon::prelude::*;

use crate::{GeometryError, Result};

/// Relative tolerance on J's singular values for the numerical rank.
pub const RANK_RTOL: f64 = 1e-6;

/// Columns of J converted to f64 at a time by the blocked products: C × 2,048 values, so that a
/// 1,000-class J of an ImageNet-sized input is never held in f64 (it is 600 MB in f32).
const BLOCK: usize = 2048;

/// Runs of column blocks the Gram matrix is summed over in parallel.
const GRAM_RUNS: usize = 8;

/// Above this many f64 values (C·n), [`PointGeometry::eigenvectors`] works block by block
/// instead of through a QR factorisation of the whole n×C matrix.
const WHOLE_LIMIT: usize = 1 << 23;

/// J and p at one point.
#[derive(Clone, Debug)]
pub struct PointGeometry {
    /// p, length C.
    pub probs: DVector<f64>,
    /// log p, length C (kept separately: pᵢ may underflow where log pᵢ does not).
    pub log_probs: DVector<f64>,
    /// J, C×n row-major in f32 as the passes computed it (row i is ∇ₓ log pᵢ); every product
    /// with it is taken in f64.
    rows: Vec<f32>,
    /// J Jᵀ (C×C, f64), computed once.
    gram: OnceLock<DMatrix<f64>>,
    /// The eigen-decompositions of the C×C matrices, computed once: a summary, the rank, the
    /// spectrum and the leaf basis all read them, and for C = 1,000 each takes seconds.
    spectrum: OnceLock<Spectrum>,
    gram_svd: OnceLock<(Vec<f64>, DMatrix<f64>)>,
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
    /// From log p (C values) and J (C×n, row-major).
    pub fn new(log_probs: &[f64], jacobian: Vec<f32>, classes: usize) -> Result<Self> {
        if classes == 0 || log_probs.len() != classes || !jacobian.len().is_multiple_of(classes) {
            return Err(GeometryError::InconsistentShapes {
                log_probs: log_probs.len(),
                jacobian: jacobian.len(),
                classes,
            });
        }
        let log_probs = DVector::from_column_slice(log_probs);
        Ok(PointGeometry {
            probs: log_probs.map(f64::exp),
            log_probs,
            rows: jacobian,
            gram: OnceLock::new(),
            spectrum: OnceLock::new(),
            gram_svd: OnceLock::new(),
        })
    }

    /// C, the number of classes (the length of p and the rows of J).
    pub fn classes(&self) -> usize {
        self.probs.len()
    }

    /// n, the columns of J: one image's C·H·W values, in the coordinates J was taken in (pixels
    /// in [0, 1] by default, or the model's normalised input).
    pub fn dim(&self) -> usize {
        self.rows.len() / self.classes()
    }

    /// J's values, C×n row-major.
    pub fn jacobian_values(&self) -> &[f32] {
        &self.rows
    }

    /// J as an f64 matrix (C×n): for moderate n; a copy.
    pub fn jacobian(&self) -> DMatrix<f64> {
        DMatrix::from_row_iterator(self.classes(), self.dim(), self.rows.iter().map(|&v| v as f64))
    }

    /// A = D^{1/2} J as an f64 matrix (C×n): G = AᵀA.
    fn weighted_jacobian(&self) -> DMatrix<f64> {
        let mut a = self.jacobian();
        for (i, mut row) in a.row_iter_mut().enumerate() {
            row *= self.probs[i].sqrt();
        }
        a
    }

    /// Columns `columns` of J as f64 (C × len).
    fn block(&self, columns: std::ops::Range<usize>) -> DMatrix<f64> {
        let n = self.dim();
        DMatrix::from_fn(self.classes(), columns.len(), |i, j| self.rows[i * n + columns.start + j] as f64)
    }

    fn blocks(&self) -> impl Iterator<Item = std::ops::Range<usize>> {
        let n = self.dim();
        (0..n).step_by(BLOCK).map(move |start| start..(start + BLOCK).min(n))
    }

    /// trace G = Σᵢ pᵢ ‖Jᵢ‖².
    pub fn trace(&self) -> f64 {
        let n = self.dim();
        self.rows
            .chunks(n)
            .zip(self.probs.iter())
            .map(|(row, p)| p * row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>())
            .sum()
    }

    /// J v (C values).
    fn times(&self, v: &DVector<f64>) -> DVector<f64> {
        let n = self.dim();
        DVector::from_iterator(
            self.classes(),
            self.rows.chunks(n).map(|row| row.iter().zip(v.iter()).map(|(&j, &v)| j as f64 * v).sum::<f64>()),
        )
    }

    /// vᵀ G v = Σᵢ pᵢ (Jᵢ·v)² — half the second-order KL divergence along v.
    pub fn quadratic_form(&self, v: &DVector<f64>) -> f64 {
        self.times(v).iter().zip(self.probs.iter()).map(|(jv, p)| p * jv * jv).sum()
    }

    /// Σᵢ pᵢ Jᵢ, which is zero up to rounding (Σ pᵢ = 1 differentiated).
    pub fn weighted_row_sum(&self) -> DVector<f64> {
        let n = self.dim();
        let mut sum = DVector::zeros(n);
        for (row, p) in self.rows.chunks(n).zip(self.probs.iter()) {
            sum.iter_mut().zip(row).for_each(|(s, &j)| *s += p * j as f64);
        }
        sum
    }

    /// J Jᵀ in f64, from f64 products of f32 values (exact) summed block by block: fixed runs
    /// of blocks in parallel, their sums added in order (the same rounding on any number of
    /// threads).
    fn gram(&self) -> &DMatrix<f64> {
        self.gram.get_or_init(|| {
            let c = self.classes();
            let blocks: Vec<_> = self.blocks().collect();
            let runs = blocks.len().div_ceil(GRAM_RUNS).max(1);
            let partials: Vec<DMatrix<f64>> = blocks
                .par_chunks(runs)
                .map(|run| {
                    let mut gram = DMatrix::zeros(c, c);
                    for columns in run {
                        let block = self.block(columns.clone());
                        gram += &block * block.transpose();
                    }
                    gram
                })
                .collect();
            partials.into_iter().fold(DMatrix::zeros(c, c), |sum, part| sum + part)
        })
    }

    /// M = D^{1/2} J Jᵀ D^{1/2}, the C×C twin of G.
    fn twin(&self) -> DMatrix<f64> {
        let root = self.probs.map(f64::sqrt);
        DMatrix::from_fn(self.classes(), self.classes(), |i, j| root[i] * self.gram()[(i, j)] * root[j])
    }

    /// G's eigenvalues (C, descending; units of 1/coordinate²) and M's eigenvectors, computed on
    /// the first call and cloned after.
    pub fn spectrum(&self) -> Spectrum {
        self.spectrum
            .get_or_init(|| {
                let (eigenvalues, m_eigenvectors) = descending(SymmetricEigen::new(self.twin()));
                Spectrum { eigenvalues, m_eigenvectors }
            })
            .clone()
    }

    /// log₁₀ of G's C−1 largest eigenvalues (the rest is 0 up to rounding), each floored at
    /// 1e-30: confident predictions have eigenvalues many decades small, and comparisons of data
    /// sets or OOD inputs happen in decades.
    pub fn log10_eigenvalues(&self) -> Vec<f64> {
        let eigenvalues = self.spectrum().eigenvalues;
        let kept = eigenvalues.len().saturating_sub(1).max(1);
        eigenvalues.iter().take(kept).map(|&l| l.max(1e-30).log10()).collect()
    }

    /// Unit eigenvectors of G (n × k, f32) for its `k` largest eigenvalues: the leaf basis
    /// ordered by how strongly the model perceives each direction. `k` is capped at the
    /// numerical rank.
    ///
    /// With the thin QR Aᵀ = Q R (A = D^{1/2} J), G = Q (R Rᵀ) Qᵀ, so the eigenvectors are Q W
    /// for the eigenvectors W of the C×C matrix R Rᵀ: orthonormal to rounding even for the
    /// smallest eigenvalues. Where the n×C matrix is too large to hold in f64 (a 1,000-class
    /// ImageNet-sized input), they are Aᵀ u / √λ for the eigenvectors u of M, block by block:
    /// orthonormal to about ε·λ₀/λ — fine for the leading ones, looser for the smallest.
    pub fn eigenvectors(&self, k: usize) -> DMatrix<f32> {
        let k = k.min(self.rank());
        let (n, c) = (self.dim(), self.classes());
        if n * c <= WHOLE_LIMIT {
            let qr = self.weighted_jacobian().transpose().qr();
            let r = qr.r();
            let (_, w) = descending(SymmetricEigen::new(&r * r.transpose()));
            return (qr.q() * w.columns(0, k)).map(|v| v as f32);
        }
        let (spectrum, root) = (self.spectrum(), self.probs.map(f64::sqrt));
        // Aᵀ u / √λ = Jᵀ (D^{1/2} u / √λ).
        let scaled = DMatrix::from_fn(c, k, |i, j| {
            root[i] * spectrum.m_eigenvectors[(i, j)] / spectrum.eigenvalues[j].max(f64::MIN_POSITIVE).sqrt()
        });
        let mut vectors = DMatrix::<f32>::zeros(n, k);
        let blocks: Vec<_> = self.blocks().collect();
        // A few blocks at a time in parallel: all of them at once would hold n×k in f64.
        for group in blocks.chunks(GRAM_RUNS) {
            let parts: Vec<DMatrix<f64>> =
                group.par_iter().map(|columns| self.block(columns.clone()).transpose() * &scaled).collect();
            for (columns, part) in group.iter().zip(parts) {
                for j in 0..k {
                    for (row, v) in columns.clone().zip(part.column(j).iter()) {
                        vectors[(row, j)] = *v as f32;
                    }
                }
            }
        }
        vectors
    }

    /// Singular values of J (descending, length C) and the matching right singular vectors
    /// (columns), from the C×C Gram matrix: exact to f64 rounding for σₖ ≳ 1e-8 σ₀, far below
    /// the rank tolerance.
    fn gram_svd(&self) -> &(Vec<f64>, DMatrix<f64>) {
        self.gram_svd.get_or_init(|| {
            let (values, vectors) = descending(SymmetricEigen::new(self.gram().clone()));
            (values.iter().map(|&v| v.max(0.0).sqrt()).collect(), vectors)
        })
    }

    /// Singular values of J, descending (length C).
    pub fn jacobian_singular_values(&self) -> Vec<f64> {
        self.gram_svd().0.clone()
    }

    /// Dimension of ker G⊥ (see the module docs for the tolerance).
    pub fn rank(&self) -> usize {
        rank_of(&self.gram_svd().0, self.classes())
    }

    /// Orthonormal basis of ker G⊥ and the projections it gives (n×r in f64: for the walks'
    /// inputs, not ImageNet-sized ones).
    ///
    /// The r leading right singular vectors V_r of J give r directions Jᵀ V_r inside the row
    /// space of J; a Householder QR of that n×r matrix makes them orthonormal. (nalgebra's SVD
    /// of the tall Jᵀ was measured to miss the row space by 1e-5 relative; this is exact to
    /// rounding.)
    pub fn leaf_projector(&self) -> LeafProjector {
        let (singular, vectors) = self.gram_svd();
        let rank = rank_of(singular, self.classes());
        let directions = self.jacobian().transpose() * vectors.columns(0, rank);
        LeafProjector { basis: directions.qr().q() }
    }

    /// The dense n×n G = AᵀA, only for small inputs.
    pub fn dense(&self, max_dim: usize) -> Result<DMatrix<f64>> {
        if self.dim() > max_dim {
            return Err(GeometryError::DenseTooLarge { n: self.dim(), max_dim });
        }
        let a = self.weighted_jacobian();
        Ok(a.transpose() * a)
    }
}

/// Eigenvalues descending and their eigenvectors as columns in that order.
fn descending(eigen: SymmetricEigen<f64, nalgebra::Dyn>) -> (Vec<f64>, DMatrix<f64>) {
    let mut order: Vec<usize> = (0..eigen.eigenvalues.len()).collect();
    order.sort_by(|&a, &b| eigen.eigenvalues[b].total_cmp(&eigen.eigenvalues[a]));
    let values = order.iter().map(|&k| eigen.eigenvalues[k]).collect();
    let vectors = DMatrix::from_columns(&order.iter().map(|&k| eigen.eigenvectors.column(k)).collect::<Vec<_>>());
    (values, vectors)
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
    /// r, the dimension of ker G⊥ (the columns of `basis`): the numerical rank, at most C − 1.
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
