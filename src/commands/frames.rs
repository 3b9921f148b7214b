//! Sampling the images along a path and judging them from outside the walked model: the
//! straight pixel line between the same endpoints, evenly spaced interior frames, and the
//! distance to the nearest training image. Shared by `eval-paths` and `study`.

use candle_core::{Device, Tensor};

/// Interior images compared per path (the leaf path's and the straight line's alike).
pub const SAMPLES: usize = 9;

/// The straight line's inner points at t = k / (SAMPLES + 1).
pub fn interpolate(a: &[f32], b: &[f32]) -> Vec<Vec<f32>> {
    (1..=SAMPLES)
        .map(|k| {
            let t = k as f32 / (SAMPLES + 1) as f32;
            a.iter().zip(b).map(|(x, y)| x + t * (y - x)).collect()
        })
        .collect()
}

/// SAMPLES points evenly spread over a walk's interior (a walk keeps at least its start).
pub fn inner_samples<T: Clone>(points: &[T]) -> Vec<T> {
    let last = points.len() - 1;
    (1..=SAMPLES).map(|k| points[k * last / (SAMPLES + 1)].clone()).collect()
}

/// Brute-force nearest neighbours among the training images, by matrix products.
pub struct NearestIndex {
    train: Tensor,
    train_norms: Tensor,
}

impl NearestIndex {
    /// An index over `rows`, all of one length (owned rows are freed as they are copied in).
    pub fn new<R: AsRef<[f32]>>(rows: impl ExactSizeIterator<Item = R>, device: &Device) -> anyhow::Result<Self> {
        let count = rows.len();
        let mut values: Vec<f32> = Vec::new();
        for row in rows {
            values.extend_from_slice(row.as_ref());
        }
        let width = values.len() / count.max(1);
        let train = Tensor::from_vec(values, (count, width), device)?;
        let train_norms = train.sqr()?.sum(1)?;
        Ok(NearestIndex { train, train_norms })
    }

    /// Distance from each query to its nearest indexed row.
    pub fn distances<'a>(&self, queries: impl ExactSizeIterator<Item = &'a [f32]>) -> anyhow::Result<Vec<f64>> {
        let count = queries.len();
        let values: Vec<f32> = queries.flatten().copied().collect();
        let q = Tensor::from_vec(values, (count, self.train.dim(1)?), self.train.device())?;
        let cross = q.matmul(&self.train.t()?)?;
        let squared = cross
            .affine(-2.0, 0.0)?
            .broadcast_add(&self.train_norms.unsqueeze(0)?)?
            .broadcast_add(&q.sqr()?.sum_keepdim(1)?)?;
        let min: Vec<f32> = squared.min(1)?.to_vec1()?;
        Ok(min.into_iter().map(|d| (d.max(0.0) as f64).sqrt()).collect())
    }
}
