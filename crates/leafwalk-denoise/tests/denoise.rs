//! Denoisers on small fixed images and the golden digits.

use std::path::Path;

use candle_core::{Device, Tensor};
use leafwalk_data::dataset_info;
use leafwalk_denoise::{
    add_noise, gaussian_blur, leaf_denoise, median3, nearest_images, neighbour_mean, tune, DenoiseError, LeafTangents,
    Pca,
};
use leafwalk_geometry::batch_geometry;
use leafwalk_metrics::quality::psnr;
use leafwalk_models::{checkpoint, Arch, Classifier, LoadOptions};
use leafwalk_walk::{PathOptions, State};
use nalgebra::DVector;

fn golden_digits() -> (Classifier, Vec<Vec<f32>>) {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let mnist = dataset_info("mnist").unwrap();
    let options = LoadOptions::new(Arch::MnistCnn, mnist);
    let model = Classifier::load(&fixtures.join("mnist-cnn-epoch01.safetensors"), options, &Device::Cpu).unwrap();
    let (golden, _) = checkpoint::read(&fixtures.join("golden-epoch01.safetensors"), &Device::Cpu).unwrap();
    let bytes: Vec<u8> = golden["test_u8"].flatten_all().unwrap().to_vec1().unwrap();
    (model, bytes.chunks_exact(784).map(|b| b.iter().map(|&v| v as f32 / 255.0).collect()).collect())
}

#[test]
fn filters_keep_constants_and_the_median_removes_a_speck() {
    let shape = dataset_info("mnist").unwrap().shape;
    let flat = vec![0.25f32; 784];
    assert!(gaussian_blur(&flat, shape, 1.3).iter().all(|v| (v - 0.25).abs() < 1e-6));
    assert_eq!(median3(&flat, shape), flat);
    let mut speck = flat.clone();
    speck[14 * 28 + 14] = 1.0;
    assert_eq!(median3(&speck, shape), flat);
    let blurred = gaussian_blur(&speck, shape, 1.0);
    assert!(blurred[14 * 28 + 14] < 0.5 && blurred[14 * 28 + 15] > 0.25, "blur spreads the speck");
}

#[test]
fn noise_is_seeded_clipped_and_validated() {
    let images = vec![vec![0.5f32; 784]; 2];
    let a = add_noise(&images, 0.3, 1).unwrap();
    assert_eq!(a, add_noise(&images, 0.3, 1).unwrap());
    assert_ne!(a, add_noise(&images, 0.3, 2).unwrap());
    assert!(a.iter().flatten().all(|v| (0.0..=1.0).contains(v)));
    assert_eq!(add_noise(&images, 0.0, 1).unwrap(), images);
    assert!(matches!(add_noise(&images, -0.1, 1), Err(DenoiseError::BadSigma(s)) if s == -0.1));
    assert!(matches!(add_noise(&images, f64::NAN, 1), Err(DenoiseError::BadSigma(s)) if s.is_nan()));
    assert!(matches!(Pca::fit(&images[..1], 3), Err(DenoiseError::TooFewImagesForPca)));
    let no_candidates: &[usize] = &[];
    assert!(matches!(tune(&images, &images, no_candidates, |_, x, _| x.to_vec()), Err(DenoiseError::NoCandidates)));
}

#[test]
fn pca_with_every_component_is_the_identity_and_tuning_picks_the_best() {
    let (_, digits) = golden_digits();
    let pca = Pca::fit(&digits, 784).unwrap();
    let back = pca.project(&digits[3], 784);
    assert!(psnr(&digits[3], &back).unwrap() > 60.0, "all components reconstruct a training image");
    let noisy = add_noise(&digits, 0.3, 4).unwrap();
    let k = tune(&digits, &noisy, &[1usize, 5, 15], |_, image, k| pca.project(image, k)).unwrap();
    let mean_psnr =
        |k: usize| digits.iter().zip(&noisy).map(|(c, n)| psnr(c, &pca.project(n, k)).unwrap()).sum::<f64>();
    assert!([1, 5, 15].iter().all(|&other| mean_psnr(k) >= mean_psnr(other)));
}

/// A clean image that is its own anchor comes back unchanged (≥ 30 dB), and noisy digits come
/// back closer to their clean selves than the noise left them. (A clean digit that is not among
/// the anchors comes back as an anchor morphed part of the way, ≈ 16 dB on the shipped model:
/// the walks stall, see the README's denoising results.)
#[test]
fn leaf_denoising_keeps_clean_digits() {
    let (model, digits) = golden_digits();
    let anchors: Vec<State> = digits[..12].iter().map(|d| State::from_pixels(&model, d)).collect();
    let options = PathOptions { max_steps: 40, ..PathOptions::adaptive() };
    let same = leaf_denoise(&model, &digits[..1], &anchors, 1, &options).unwrap();
    assert!(psnr(&digits[0], &same[0]).unwrap() >= 30.0);
    let noisy = add_noise(&digits[12..], 0.5, 9).unwrap();
    let from_noise = leaf_denoise(&model, &noisy, &anchors, 2, &options).unwrap();
    for k in 0..4 {
        assert!(from_noise[k].iter().all(|v| (0.0..=1.0).contains(v)));
        assert!(psnr(&digits[12 + k], &from_noise[k]).unwrap() > psnr(&digits[12 + k], &noisy[k]).unwrap());
    }
}

/// A training image is its own nearest neighbour; the first-order leaf denoiser with no
/// shrinkage is the neighbours' mean, and from a neighbour it drops an offset that lies in
/// ker G there (the model sees no difference) while keeping one along the leaf.
#[test]
fn neighbours_and_the_first_order_leaf_denoiser() {
    let (model, digits) = golden_digits();
    let found = nearest_images(&digits, &digits[2..4], 3);
    assert_eq!((found[0][0], found[1][0]), (2, 3));
    assert_eq!(neighbour_mean(&digits, &found[0], 1), digits[2]);

    let mut tangents = LeafTangents::default();
    tangents.extend(&model, &digits, [2, 5, 7]).unwrap();
    let neighbours = [2usize, 5, 7];
    let noisy = add_noise(&digits[2..3], 0.3, 5).unwrap().remove(0);
    let unshrunk = tangents.denoise(&digits, &noisy, &neighbours, 3, 0.0);
    let mean = neighbour_mean(&digits, &neighbours, 3);
    assert!(unshrunk.iter().zip(&mean).all(|(a, b)| (a - b).abs() < 1e-6), "s = 0 is the neighbours' mean");

    let point = batch_geometry(&model, &Tensor::from_vec(digits[2].clone(), (1, 1, 28, 28), &Device::Cpu).unwrap())
        .unwrap()
        .remove(0);
    let projector = point.leaf_projector();
    let random = DVector::from_fn(784, |i, _| ((i * 7919 % 101) as f64 / 101.0 - 0.5) * 0.2);
    let (along, across) = (projector.onto_leaf(&random), projector.onto_kernel(&random));
    let t = DVector::from_iterator(784, digits[2].iter().map(|&v| f64::from(v)));
    let off_leaf: Vec<f32> = (&t + &across).iter().map(|&v| v as f32).collect();
    let back = tangents.denoise(&digits, &off_leaf, &[2], 1, 1.0);
    let gap = back.iter().zip(&digits[2]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(gap < 1e-4, "an offset in ker G is dropped: {gap}");
    let on_leaf: Vec<f32> = (&t + &along).iter().map(|&v| v as f32).collect();
    let kept = tangents.denoise(&digits, &on_leaf, &[2], 1, 1.0);
    let expected: Vec<f32> = on_leaf.iter().map(|v| v.clamp(0.0, 1.0)).collect();
    let gap = kept.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(gap < 1e-4, "an offset along the leaf is kept: {gap}");
}
