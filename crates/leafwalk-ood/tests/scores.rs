//! The scores on a small fixed set: the golden epoch-1 mnist-cnn, its 16 golden test digits as
//! the "training set", and digits, noise and inverted digits to score.

use std::path::Path;

use candle_core::Device;
use leafwalk_data::{dataset_info, Dataset, Split};
use leafwalk_models::{checkpoint, Arch, Classifier, LoadOptions};
use leafwalk_ood::{score_images, OodError, OodSet, Reference, ReferenceOptions, Score, ScoreOptions};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn setup() -> (Classifier, Dataset) {
    let mnist = dataset_info("mnist").unwrap();
    let options = LoadOptions::new(Arch::MnistCnn, mnist);
    let model = Classifier::load(&fixtures().join("mnist-cnn-epoch01.safetensors"), options, &Device::Cpu).unwrap();
    let (golden, _) = checkpoint::read(&fixtures().join("golden-epoch01.safetensors"), &Device::Cpu).unwrap();
    let images: Vec<u8> = golden["test_u8"].flatten_all().unwrap().to_vec1().unwrap();
    let labels: Vec<i64> = golden["test_labels"].to_vec1().unwrap();
    let labels = labels.iter().map(|&l| l as u8).collect();
    (model, Dataset { info: mnist, split: Split::Train, images, labels })
}

#[test]
fn scores_are_finite_oriented_and_consistent() {
    let (model, train) = setup();
    let reference = Reference::build(&model, &train, &ReferenceOptions::default()).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let digits: Vec<Vec<f32>> = (0..3).map(|k| train.pixels(k).unwrap()).collect();
    let noise: Vec<Vec<f32>> = (0..2).map(|_| (0..784).map(|_| rng.random::<f32>()).collect()).collect();
    let images: Vec<Vec<f32>> = digits.iter().chain(&noise).cloned().collect();
    let options = ScoreOptions {
        path: leafwalk_walk::PathOptions { max_steps: 30, ..ScoreOptions::default().path },
        ..ScoreOptions::default()
    };
    let table = score_images(&model, &reference, &images, &Score::ALL, &options, |_| {}).unwrap();
    assert_eq!(table.predictions.len(), 5);
    for (score, values) in &table.columns {
        assert_eq!(values.len(), 5, "{score}");
        assert!(values.iter().all(|v| v.is_finite()), "{score}: {values:?}");
    }
    let column = |s: Score| table.column(s).unwrap();
    // A training image is its own anchor: it lies on the data leaf.
    assert!(column(Score::PixelLeafDistance)[..3].iter().all(|&d| d == 0.0), "{:?}", column(Score::PixelLeafDistance));
    for score in [Score::PixelLeafDistance, Score::Trace, Score::Msp] {
        let (digit_max, noise_min) = (
            column(score)[..3].iter().copied().fold(f64::MIN, f64::max),
            column(score)[3..].iter().copied().fold(f64::MAX, f64::min),
        );
        assert!(noise_min > digit_max, "{score}: noise {noise_min} ≤ digits {digit_max}");
    }
    for (k, &msp) in column(Score::Msp).iter().enumerate() {
        assert!((-1.0..=-0.1).contains(&msp), "msp {msp}");
        assert!((table.predictions[k].1 + msp).abs() < 1e-12, "msp is −(predicted probability)");
    }
    assert!(column(Score::Mahalanobis).iter().all(|&m| m >= 0.0));
    assert!(column(Score::GradNorm).iter().all(|&g| g <= 0.0));
    // scaled = leaf distance · √(geometric mean eigenvalue), spectrum = mean log₁₀ eigenvalue.
    for k in 0..5 {
        let expected = column(Score::PixelLeafDistance)[k] * 10f64.powf(0.5 * column(Score::Spectrum)[k]);
        assert!((column(Score::LeafDistance)[k] - expected).abs() <= 1e-9 * expected.abs().max(1e-12));
    }
    // One score alone gives the same numbers as with all the others.
    let alone = score_images(&model, &reference, &images, &[Score::Energy], &options, |_| {}).unwrap();
    assert_eq!(alone.column(Score::Energy).unwrap(), column(Score::Energy));
}

#[test]
fn the_reference_round_trips_through_its_cache() {
    let (model, train) = setup();
    let dir = tempfile::tempdir().unwrap();
    let options = ReferenceOptions { cache_dir: Some(dir.path().to_path_buf()) };
    let built = Reference::build(&model, &train, &options).unwrap();
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(files.len(), 1, "one cache file");
    let cached = Reference::build(&model, &train, &options).unwrap();
    let image = vec![train.pixels(5).unwrap()];
    let scores = |r: &Reference| {
        score_images(&model, r, &image, &[Score::Mahalanobis], &ScoreOptions::default(), |_| {}).unwrap().columns[0].1
            [0]
    };
    assert!((scores(&built) - scores(&cached)).abs() <= 1e-9 * scores(&built));
    // Images in memory give the same statistics as the dataset they came from.
    let images: Vec<Vec<f32>> = (0..train.len()).map(|k| train.pixels(k).unwrap()).collect();
    let labels: Vec<usize> = train.labels.iter().map(|&l| l as usize).collect();
    let in_memory = Reference::from_images(&model, &images, &labels).unwrap();
    assert_eq!(scores(&in_memory), scores(&built));
    let e = Reference::from_images(&model, &images, &labels[1..]).unwrap_err();
    assert!(matches!(e, OodError::Labels { labels: 15, images: 16, classes: 10 }), "{e}");
}

#[test]
fn unknown_scores_and_wrong_sizes_are_errors() {
    assert_eq!(Score::parse_list("all").unwrap().len(), Score::ALL.len());
    assert_eq!(Score::parse_list("msp, energy").unwrap(), [Score::Msp, Score::Energy]);
    let error = Score::parse_list("msp,bogus").unwrap_err().to_string();
    assert!(error.contains("bogus") && error.contains("pixel-leaf-distance"), "{error}");
    let (model, train) = setup();
    let reference = Reference::build(&model, &train, &ReferenceOptions::default()).unwrap();
    let error = score_images(&model, &reference, &[vec![0.5; 100]], &[Score::Msp], &ScoreOptions::default(), |_| {})
        .unwrap_err()
        .to_string();
    assert!(error.contains("100 values"), "{error}");
}

/// Unknown names come back as their own variants, for a caller to branch on.
#[test]
fn unknown_names_are_typed_refusals() {
    assert!(matches!("entropy2".parse::<Score>(), Err(OodError::UnknownScore { name, .. }) if name == "entropy2"));
    let e = OodSet::parse("noise:pink").unwrap_err();
    assert!(matches!(&e, OodError::UnknownSet { text, .. } if text == "noise:pink"), "{e}");
    assert_eq!(e.to_string(), "OOD set \"noise:pink\": noise sets are noise:uniform and noise:gaussian");
}
