//! Properties every built-in architecture's geometry must have, on random inputs.

use candle_core::{DType, Device, Module, Tensor};
use leafwalk_data::{dataset_info, DatasetInfo};
use leafwalk_geometry::{
    batch_geometry, dataset_fisher, input_jacobian, input_jacobian_autograd, integrability, GeometryError,
    PointGeometry,
};
use leafwalk_models::{Arch, Classifier};
use nalgebra::DVector;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn model(arch: Arch, dtype: DType) -> Classifier {
    let dataset = arch.default_dataset().unwrap_or("mnist");
    let fresh = Classifier::new(arch, dataset_info(dataset).unwrap(), 21, &Device::Cpu, dtype).unwrap();
    // A freshly initialised deep network's output hardly depends on its input (a VGG's ‖J‖ is
    // ~1e-5): G would sit at the rounding floor of every check. Scaling the last layer until the
    // logits spread by ~3 gives it a trained model's sensitivity without changing its structure.
    let logits = fresh.logits_t(&random_pixels(&fresh, 4, 3), false).unwrap();
    let spread = logits.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let mean = spread.iter().sum::<f64>() / spread.len() as f64;
    let std = (spread.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / spread.len() as f64).sqrt();
    let last = match fresh.description().logit_nodes().last() {
        Some(node) => node.name.clone(),
        None => return fresh,
    };
    scaled(&fresh, &[&format!("{last}.weight"), &format!("{last}.bias")], (3.0 / std).max(1.0))
}

/// `model` with the named tensors multiplied by `factor`.
fn scaled(model: &Classifier, names: &[&str], factor: f64) -> Classifier {
    let mut tensors: std::collections::HashMap<String, Tensor> = model.named_tensors().into_iter().collect();
    for name in names {
        tensors.insert(name.to_string(), (&tensors[*name] * factor).unwrap());
    }
    let built = Classifier::from_tensors(std::path::Path::new("scaled"), model.meta().clone(), tensors, model.device())
        .unwrap();
    built.to_dtype(model.dtype()).unwrap()
}

fn random_pixels(model: &Classifier, batch: usize, seed: u64) -> Tensor {
    let s = model.input_shape();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let values: Vec<f64> = (0..batch * s.len()).map(|_| rng.random_range(0.05..0.95)).collect();
    Tensor::from_vec(values, (batch, s.channels, s.height, s.width), &Device::Cpu)
        .unwrap()
        .to_dtype(model.dtype())
        .unwrap()
}

fn random_direction(n: usize, seed: u64) -> DVector<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v = DVector::from_fn(n, |_, _| rng.random_range(-1.0..1.0));
    v.normalize()
}

fn log_probs_at(model: &Classifier, x: &DVector<f64>) -> DVector<f64> {
    let s = model.input_shape();
    let t = Tensor::from_slice(x.as_slice(), (1, s.channels, s.height, s.width), &Device::Cpu).unwrap();
    let lp: Vec<f64> = model
        .forward(&t.to_dtype(model.dtype()).unwrap())
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    DVector::from_vec(lp)
}

fn pixels_vector(pixels: &Tensor) -> DVector<f64> {
    DVector::from_vec(pixels.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap())
}

/// KL(p(y) ‖ p(x)) from log-probabilities.
fn kl(log_p_y: &DVector<f64>, log_p_x: &DVector<f64>) -> f64 {
    log_p_y.iter().zip(log_p_x.iter()).map(|(a, b)| a.exp() * (a - b)).sum()
}

#[test]
fn g_is_symmetric_psd_with_rank_below_c_and_rows_balance() {
    for arch in Arch::ALL {
        let model = model(arch, DType::F32);
        let batch = if arch == Arch::CifarVgg11 { 1 } else { 3 };
        for point in batch_geometry(&model, &random_pixels(&model, batch, 4)).unwrap() {
            let spectrum = point.spectrum();
            let top = spectrum.eigenvalues[0];
            assert!(top > 0.0, "{arch}: G is zero");
            assert!(
                spectrum.eigenvalues.iter().all(|&l| l >= -1e-9 * top),
                "{arch}: negative eigenvalue {:?}",
                spectrum.eigenvalues
            );
            assert!(
                (spectrum.eigenvalues.iter().sum::<f64>() - point.trace()).abs() <= 1e-9 * point.trace(),
                "{arch}: Σλ ≠ trace"
            );
            assert!(point.rank() <= 9, "{arch}");
            assert!(*spectrum.eigenvalues.last().unwrap() <= 1e-6 * top, "{arch}: C-th eigenvalue not ≈ 0");
            let balance = point.weighted_row_sum().norm();
            assert!(balance <= 1e-5 * point.jacobian().norm(), "{arch}: ‖Σ pᵢ Jᵢ‖ = {balance}");
            // Eigenvectors of G (through the C×C matrix) are orthonormal and satisfy G v = λ v.
            // (in f32: orthonormal to its rounding)
            let v = point.eigenvectors(9).map(|v| v as f64);
            let gram = v.transpose() * &v;
            assert!((gram - nalgebra::DMatrix::identity(v.ncols(), v.ncols())).abs().max() < 1e-6, "{arch}");
            for k in 0..v.ncols() {
                let col = v.column(k).into_owned();
                let gv = point.jacobian().transpose() * point.probs.component_mul(&(&point.jacobian() * &col));
                assert!((gv - &col * spectrum.eigenvalues[k]).norm() <= 1e-6 * top, "{arch}: G v ≠ λ v");
            }
            if arch == Arch::MnistCnn {
                let dense = point.dense(4096).unwrap();
                assert!((&dense - dense.transpose()).abs().max() <= 1e-12 * top);
                let eig = dense.symmetric_eigenvalues();
                assert!(eig.iter().all(|&l| l >= -1e-9 * top));
            }
        }
    }
}

/// J against central differences of the f64 model.
#[test]
fn jacobian_matches_finite_differences() {
    for arch in Arch::ALL {
        let model = model(arch, DType::F64);
        let pixels = random_pixels(&model, 1, 8);
        let point = &batch_geometry(&model, &pixels).unwrap()[0];
        let x = pixels_vector(&pixels);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..4 {
            let pixel = rng.random_range(0..x.len());
            let column = point.jacobian().column(pixel).into_owned();
            let scale = point.jacobian().abs().max();
            // A ReLU or max-pool kink inside [x − ε, x + ε] spoils one step size; a deep
            // network has ~10⁵ of them, so the best of three sizes is judged.
            let err = [1e-5, 1e-6, 1e-7]
                .iter()
                .map(|&eps| {
                    let (mut plus, mut minus) = (x.clone(), x.clone());
                    plus[pixel] += eps;
                    minus[pixel] -= eps;
                    let fd = (log_probs_at(&model, &plus) - log_probs_at(&model, &minus)) / (2.0 * eps);
                    (fd - &column).abs().max()
                })
                .fold(f64::INFINITY, f64::min);
            assert!(err <= 1e-6 * scale + 1e-7, "{arch}: pixel {pixel}: error {err:e}, max J {scale:e}");
        }
    }
}

/// KL(p(x+εv) ‖ p(x)) / (½ ε² vᵀGv) → 1 as ε → 0 (mind the ½), and moving in ker G does not
/// change p to first order.
#[test]
fn kl_is_half_the_quadratic_form_and_kernel_moves_keep_p() {
    for arch in Arch::ALL {
        let model = model(arch, DType::F64);
        let pixels = random_pixels(&model, 1, 12);
        let point = &batch_geometry(&model, &pixels).unwrap()[0];
        let x = pixels_vector(&pixels);
        let base = log_probs_at(&model, &x);
        let v = random_direction(x.len(), 99);
        let quad = point.quadratic_form(&v);
        // Steps sized so the predicted KL is 1e-6, 1e-8, 1e-10: far above f64 cancellation
        // (~1e-15) whatever the scale of G (a fresh VGG's G is tiny).
        let ratios: Vec<f64> = [1e-6, 1e-8, 1e-10, 1e-12]
            .iter()
            .map(|&target| {
                let eps = (2.0 * target / quad).sqrt();
                kl(&log_probs_at(&model, &(&x + &v * eps)), &base) / (0.5 * eps * eps * quad)
            })
            .collect();
        // The error shrinks with ε (third-order terms) until rounding, or for VGG's ~10⁵ ReLUs
        // kink crossings, take over: judge the best of the small steps.
        let best = ratios[1..].iter().map(|r| (r - 1.0).abs()).fold(f64::INFINITY, f64::min);
        assert!(best < 1e-2 && best < (ratios[0] - 1.0).abs(), "{arch}: KL / (½ε²vᵀGv) = {ratios:?}");

        let projector = point.leaf_projector();
        let kernel_v = projector.onto_kernel(&v).normalize();
        // Directions with singular value under RANK_RTOL·σ₀ count as kernel, so that bounds J·v.
        let jv = (&point.jacobian() * &kernel_v).norm();
        let sigma0 = point.jacobian_singular_values()[0];
        assert!(jv <= 1.01 * leafwalk_geometry::RANK_RTOL * sigma0, "{arch}: ‖J·v_ker‖ = {jv}, σ₀ = {sigma0}");
        let eps = 1e-3;
        let kernel_change = (log_probs_at(&model, &(&x + &kernel_v * eps)) - &base).abs().max();
        let leaf_v = projector.onto_leaf(&v).normalize();
        let leaf_change = (log_probs_at(&model, &(&x + &leaf_v * eps)) - &base).abs().max();
        assert!(
            kernel_change < 1e-2 * leaf_change,
            "{arch}: kernel move changed log p by {kernel_change}, leaf move {leaf_change}"
        );
        // Batched projections agree with one-at-a-time ones.
        let batch = nalgebra::DMatrix::from_columns(&[v.clone(), random_direction(x.len(), 7)]);
        let leaf_batch = projector.columns_onto_leaf(&batch);
        assert!((leaf_batch.column(0) - projector.onto_leaf(&v)).norm() < 1e-12);
        assert!(
            (projector.columns_onto_kernel(&batch).column(1) - projector.onto_kernel(&batch.column(1).into_owned()))
                .norm()
                < 1e-12
        );
        // Projections are orthogonal and complementary.
        let leaf = projector.onto_leaf(&v);
        assert!(leaf.dot(&projector.onto_kernel(&v)).abs() < 1e-10);
        assert!((projector.onto_leaf(&leaf) - &leaf).norm() < 1e-10);
    }
}

/// Saturated outputs (some pᵢ underflow below 1e-30, others are exactly 1) still give finite
/// geometry.
#[test]
fn saturated_and_underflowing_probabilities_stay_finite() {
    let hot = scaled(&model(Arch::MnistCnn, DType::F32), &["fc2.weight", "fc2.bias"], 5000.0);
    let points = batch_geometry(&hot, &random_pixels(&hot, 4, 5)).unwrap();
    let smallest = points.iter().flat_map(|p| p.probs.iter().copied()).fold(1.0, f64::min);
    assert!(smallest < 1e-30, "the scaled model is not saturated (min p = {smallest})");
    for point in &points {
        assert!(point.log_probs.iter().all(|v| v.is_finite()), "log p not finite: {:?}", point.log_probs);
        assert!(point.jacobian().iter().all(|v| v.is_finite()));
        assert!(point.trace().is_finite());
        let spectrum = point.spectrum();
        assert!(spectrum.eigenvalues.iter().all(|v| v.is_finite()));
        assert!(point.rank() <= 9);
        assert!(point.eigenvectors(9).iter().all(|v| v.is_finite()));
        assert!(point.leaf_projector().basis.iter().all(|v| v.is_finite()));
    }
}

#[test]
fn non_finite_inputs_are_rejected() {
    let model = model(Arch::Mlp, DType::F32);
    let mut values = vec![0.5f32; 2 * 784];
    values[784 + 17] = f32::NAN;
    let pixels = Tensor::from_vec(values.clone(), (2, 1, 28, 28), &Device::Cpu).unwrap();
    let err = input_jacobian(&model, &pixels).unwrap_err();
    assert!(matches!(err, GeometryError::NonFinite { index: 1, position: 17 }), "{err}");
    values[784 + 17] = f32::INFINITY;
    let pixels = Tensor::from_vec(values, (2, 1, 28, 28), &Device::Cpu).unwrap();
    assert!(input_jacobian(&model, &pixels).unwrap_err().to_string().contains("non-finite"));
    assert!(PointGeometry::new(&[0.0; 3], vec![0.0; 10], 10).is_err());
}

/// Refusals a caller may branch on come as their own variants, not as text.
#[test]
fn geometry_refusals_are_typed() {
    let e = PointGeometry::new(&[0.0; 3], vec![0.0; 10], 10).unwrap_err();
    assert!(matches!(e, GeometryError::InconsistentShapes { log_probs: 3, jacobian: 10, classes: 10 }), "{e}");
    let model = model(Arch::Mlp, DType::F32);
    let point = batch_geometry(&model, &random_pixels(&model, 1, 3)).unwrap().remove(0);
    let e = point.dense(100).unwrap_err();
    assert!(matches!(e, GeometryError::DenseTooLarge { n: 784, max_dim: 100 }), "{e}");
    assert!(matches!(dataset_fisher(&[], 3), Err(GeometryError::FisherPointCount { got: 0, .. })));
    let e = integrability(&model, &random_pixels(&model, 2, 3), 1, &[0.1], 0).unwrap_err();
    assert!(matches!(&e, GeometryError::NotOnePoint { shape, .. } if shape == &[2, 1, 28, 28]), "{e}");
    let e = integrability(&model, &random_pixels(&model, 1, 3), 1, &[0.0], 0).unwrap_err();
    assert!(matches!(e, GeometryError::IntegrabilitySettings { pairs: 1, .. }), "{e}");
}

/// F(x,w): trace = Σ eigenvalues, rank ≤ C−1 (Σ pᵢ ∇_w log pᵢ = 0 too), PSD, and the dataset
/// Fisher of one point is that point's F.
#[test]
fn fisher_factor_properties() {
    let model = model(Arch::Mlp, DType::F32);
    let pixels = random_pixels(&model, 2, 31);
    let factors = leafwalk_geometry::fisher_factors(&model, &pixels).unwrap();
    for f in &factors {
        let eig = f.eigenvalues();
        let trace = f.trace();
        assert!(trace > 0.0);
        assert!(
            (eig.iter().sum::<f64>() - trace).abs() <= 1e-5 * trace,
            "Σλ = {} vs trace {trace}",
            eig.iter().sum::<f64>()
        );
        assert!(eig.iter().all(|&l| l >= -1e-6 * eig[0]));
        assert!(eig[9].abs() <= 1e-4 * eig[0], "F has full rank C: {eig:?}");
        let balance: f64 = (0..f.rows[0].len())
            .map(|k| f.rows.iter().zip(&f.probs).map(|(r, p)| p * r[k] as f64).sum::<f64>().powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(balance <= 1e-5 * trace.sqrt(), "‖Σ pᵢ ∇_w log pᵢ‖ = {balance}");
    }
    let (trace, top) = leafwalk_geometry::dataset_fisher(&factors[..1], 3).unwrap();
    assert!((trace - factors[0].trace()).abs() <= 1e-9 * trace);
    assert!((top[0] - factors[0].eigenvalues()[0]).abs() <= 1e-5 * top[0]);
    let (mean_trace, _) = leafwalk_geometry::dataset_fisher(&factors, 3).unwrap();
    assert!((mean_trace - (factors[0].trace() + factors[1].trace()) / 2.0).abs() <= 1e-9 * mean_trace);
}

/// The CPU pass takes a point's classes in groups of five; other counts go one class at a time.
/// Seven classes and three points exercise both, against autograd.
#[test]
fn mnist_cnn_fast_path_matches_autograd_for_seven_classes() {
    let seven = DatasetInfo { classes: &["0", "1", "2", "3", "4", "5", "6"], ..*dataset_info("mnist").unwrap() };
    let seven: &'static DatasetInfo = Box::leak(Box::new(seven));
    let model = Classifier::new(Arch::MnistCnn, seven, 5, &Device::Cpu, DType::F32).unwrap();
    let pixels = random_pixels(&model, 3, 8);
    let fast = input_jacobian(&model, &pixels).unwrap();
    let slow = input_jacobian_autograd(&model, &pixels).unwrap();
    assert_eq!(fast.jacobian.dims(), &[3, 7, 784]);
    let max_abs = |t: &Tensor| t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let diff = max_abs(&(&fast.jacobian - &slow.jacobian).unwrap());
    assert!(diff <= 1e-5 * max_abs(&slow.jacobian), "max |fast − autograd| = {diff}");
    assert!(max_abs(&(&fast.log_probs - &slow.log_probs).unwrap()) <= 1e-5);
}

/// log₁₀ eigenvalues: the C−1 nonzero ones, descending, each the log of the spectrum's.
#[test]
fn log10_eigenvalues_are_the_nonzero_spectrum_in_decades() {
    let model = model(Arch::MnistCnn, DType::F32);
    for point in batch_geometry(&model, &random_pixels(&model, 3, 11)).unwrap() {
        let (logs, eigenvalues) = (point.log10_eigenvalues(), point.spectrum().eigenvalues);
        assert_eq!(logs.len(), model.classes() - 1);
        assert!(logs.windows(2).all(|w| w[0] >= w[1]));
        for (log, value) in logs.iter().zip(&eigenvalues) {
            assert!((log - value.max(1e-30).log10()).abs() < 1e-12);
        }
    }
}
