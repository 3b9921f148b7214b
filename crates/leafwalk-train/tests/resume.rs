//! The trainer's promises: determinism for a seed, exact resume, and runs that never clobber
//! what is on disk.

use std::path::{Path, PathBuf};

use leafwalk_data::{dataset_info, Dataset, Split};
use leafwalk_models::description::Activation;
use leafwalk_models::{checkpoint, Arch, Architecture, Variant};
use leafwalk_train::{train, LogRecord, OptimizerKind, TrainConfig, TrainError, LOG_FILE};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A small MNIST-shaped dataset whose labels depend on the pixels, so training makes progress.
fn tiny_mnist(root: &Path) {
    let info = dataset_info("mnist").unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for (split, n) in [(Split::Train, 100), (Split::Test, 30)] {
        let mut images = Vec::with_capacity(n * 784);
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            let label: u8 = rng.random_range(0..10);
            images.extend((0..784).map(|p| if p % 10 == label as usize { 200 } else { rng.random_range(0..60) }));
            labels.push(label);
        }
        Dataset { info, split, images, labels }.save(root).unwrap();
    }
}

fn config(data: &Path, out: PathBuf, optimizer: OptimizerKind) -> TrainConfig {
    TrainConfig {
        dataset: dataset_info("mnist").unwrap(),
        arch: Arch::Mlp,
        variant: Default::default(),
        normalisation: None,
        epochs: 3,
        lr: if optimizer == OptimizerKind::Sgd { 0.05 } else { 0.002 },
        batch_size: 16,
        optimizer,
        seed: 7,
        out,
        data_root: data.to_path_buf(),
        checkpoint_every: None,
        resume: false,
        progress: false,
        reference_size: 12,
        min_accuracy: 0.5,
        device: candle_core::Device::Cpu,
        adversarial: None,
        snapshots: Vec::new(),
    }
}

fn weights(path: &Path) -> Vec<(String, Vec<f32>)> {
    let (tensors, _) = checkpoint::read(path, &candle_core::Device::Cpu).unwrap();
    let mut w: Vec<(String, Vec<f32>)> =
        tensors.into_iter().map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1().unwrap())).collect();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

/// The log without the wall-clock fields, which legitimately differ between runs.
fn log_without_timing(out: &Path) -> Vec<LogRecord> {
    std::fs::read_to_string(out.join(LOG_FILE))
        .unwrap()
        .lines()
        .map(|l| LogRecord { seconds: 0.0, images_per_s: 0.0, ..serde_json::from_str(l).unwrap() })
        .collect()
}

#[test]
fn interrupted_and_resumed_run_equals_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    tiny_mnist(dir.path());
    for optimizer in [OptimizerKind::Sgd, OptimizerKind::AdamW] {
        let straight = dir.path().join(format!("straight-{optimizer}"));
        let summary = train(&config(dir.path(), straight.clone(), optimizer), |_| false).unwrap();
        assert_eq!(summary.epochs.len(), 3);
        assert!(summary.epochs[2].test_accuracy > 0.5, "{optimizer}: the tiny task was not learned: {summary:?}");

        // Stop mid-epoch 2 (7 batches an epoch), then resume twice over: once from the
        // interruption, once more after a clean stop at an epoch end.
        let broken = dir.path().join(format!("broken-{optimizer}"));
        let mut cfg = config(dir.path(), broken.clone(), optimizer);
        let first = train(&cfg, |step| step == 10).unwrap();
        assert_eq!(first.interrupted_at, Some(10));
        cfg.resume = true;
        let second = train(&cfg, |step| step == 14).unwrap();
        assert_eq!(second.interrupted_at, Some(14));
        train(&cfg, |_| false).unwrap();

        for epoch in 1..=3 {
            let name = leafwalk_train::checkpoint_name(epoch);
            assert_eq!(
                weights(&straight.join(&name)),
                weights(&broken.join(&name)),
                "{optimizer}: epoch {epoch} differs"
            );
        }
        assert_eq!(log_without_timing(&straight), log_without_timing(&broken), "{optimizer}: logs differ");
        let log = log_without_timing(&straight);
        assert_eq!(log[0].event, "start");
        assert!(log.iter().all(|r| r.geometry.as_ref().is_some_and(|g| g.rank_hist.iter().sum::<usize>() == 12)));
        assert!(straight.join(leafwalk_train::TRACE_FIGURE).exists());
        let recommended = summary.recommended.expect("a recommendation");
        let epoch_trace = |epoch: usize| {
            let values: Vec<f64> =
                log.iter().filter(|r| r.epoch == epoch).map(|r| r.geometry.as_ref().unwrap().mean_trace_g).collect();
            values.iter().sum::<f64>() / values.len() as f64
        };
        let best = summary
            .epochs
            .iter()
            .filter(|e| e.test_accuracy >= 0.5)
            .max_by(|a, b| epoch_trace(a.epoch).total_cmp(&epoch_trace(b.epoch)))
            .unwrap();
        assert_eq!(recommended.epoch, best.epoch, "{optimizer}: {recommended:?}");
        assert_eq!(recommended.mean_trace_g, Some(epoch_trace(best.epoch)));
    }
}

#[test]
fn periodic_resume_file_survives_a_hard_kill() {
    // A SIGKILL can strike anywhere; what matters is that the resume file on disk is always a
    // complete, loadable state. Simulate "killed after step 9" by copying the run folder as
    // it was at that moment, then resuming the copy.
    let dir = tempfile::tempdir().unwrap();
    tiny_mnist(dir.path());
    let out = dir.path().join("run");
    let snapshot = dir.path().join("snapshot");
    let mut cfg = config(dir.path(), out.clone(), OptimizerKind::AdamW);
    cfg.checkpoint_every = Some(3);
    train(&cfg, |step| {
        if step == 9 {
            copy_dir(&out, &snapshot);
            // The log may hold records past the snapshot's resume step: add a torn line too.
            use std::io::Write;
            let mut log = std::fs::OpenOptions::new().append(true).open(snapshot.join(LOG_FILE)).unwrap();
            write!(log, "{{\"event\":\"batch\",\"step\":12,\"ep").unwrap();
        }
        false
    })
    .unwrap();
    let resumed = TrainConfig { out: snapshot.clone(), resume: true, ..cfg };
    train(&resumed, |_| false).unwrap();
    let name = leafwalk_train::checkpoint_name(3);
    assert_eq!(weights(&out.join(&name)), weights(&snapshot.join(&name)));
    assert_eq!(log_without_timing(&out), log_without_timing(&snapshot));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn refuses_to_overwrite_a_run_and_to_resume_nothing() {
    let dir = tempfile::tempdir().unwrap();
    tiny_mnist(dir.path());
    let out = dir.path().join("run");
    let mut cfg = config(dir.path(), out.clone(), OptimizerKind::Sgd);
    cfg.epochs = 1;
    train(&cfg, |_| false).unwrap();
    let before = weights(&out.join(leafwalk_train::checkpoint_name(1)));
    let err = train(&cfg, |_| false).unwrap_err().to_string();
    assert!(err.contains("already holds a training run"), "{err}");
    assert_eq!(before, weights(&out.join(leafwalk_train::checkpoint_name(1))));

    let fresh = TrainConfig { out: dir.path().join("empty"), resume: true, ..cfg.clone() };
    let err = train(&fresh, |_| false).unwrap_err().to_string();
    assert!(err.contains("no run to resume"), "{err}");

    let changed = TrainConfig { resume: true, epochs: 2, lr: 0.5, ..cfg };
    let err = train(&changed, |_| false).unwrap_err().to_string();
    assert!(err.contains("was started with lr"), "{err}");
}

#[test]
fn rejects_bad_hyper_parameters_before_touching_disk() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never");
    for (tweak, needle) in [
        (Box::new(|c: &mut TrainConfig| c.epochs = 0) as Box<dyn Fn(&mut TrainConfig)>, "--epochs"),
        (Box::new(|c: &mut TrainConfig| c.lr = f64::NAN), "--lr"),
        (Box::new(|c: &mut TrainConfig| c.lr = -1.0), "--lr"),
        (Box::new(|c: &mut TrainConfig| c.batch_size = 0), "--batch-size"),
        (Box::new(|c: &mut TrainConfig| c.snapshots = vec![3.5]), "--snapshot-at"),
        (Box::new(|c: &mut TrainConfig| c.snapshots = vec![1.0]), "epoch ends are always saved"),
    ] {
        let mut cfg = config(dir.path(), out.clone(), OptimizerKind::Sgd);
        tweak(&mut cfg);
        let err = train(&cfg, |_| false).unwrap_err();
        assert!(matches!(err, TrainError::Config(_)) && err.to_string().contains(needle), "{err}");
        assert!(!out.exists());
    }
}

#[test]
fn snapshots_inside_an_epoch_hold_the_run_weights_of_that_step_and_variants_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    tiny_mnist(dir.path());
    let variant = Variant { activation: Some(Activation::Tanh), pooling: None };
    let mut cfg = config(dir.path(), dir.path().join("run"), OptimizerKind::Sgd);
    (cfg.epochs, cfg.variant, cfg.snapshots) = (2, variant, vec![0.0, 0.5]);
    train(&cfg, |_| false).unwrap();
    // 7 batches an epoch: 0.5 epochs is step 4 (3.5 rounded). A run stopped there saves its
    // weights (with optimizer state besides) in the resume file.
    let stopped = TrainConfig { out: dir.path().join("stopped"), ..cfg.clone() };
    train(&stopped, |step| step == 4).unwrap();
    let snapshot = weights(&cfg.out.join(leafwalk_train::snapshot_name(0.5)));
    let at_step_4 = weights(&stopped.out.join("resume.safetensors"));
    assert!(!snapshot.is_empty());
    for (name, values) in &snapshot {
        assert_eq!(Some(values), at_step_4.iter().find(|(n, _)| n == name).map(|(_, v)| v), "{name}");
    }
    assert_eq!(leafwalk_train::snapshot_name(0.0), leafwalk_train::checkpoint_name(0));
    assert_eq!(leafwalk_train::snapshot_name(2.0), leafwalk_train::checkpoint_name(2));
    assert_eq!(leafwalk_train::snapshot_name(0.5), "epoch-00.50.safetensors");

    let (_, metadata) =
        checkpoint::read(&cfg.out.join(leafwalk_train::snapshot_name(0.5)), &candle_core::Device::Cpu).unwrap();
    let meta = checkpoint::CheckpointMeta::from_metadata(Path::new("snapshot"), &metadata).unwrap().unwrap();
    assert_eq!(meta.extra["epochs_trained"], "0.5");
    assert_eq!(meta.extra["variant"], "activation=Tanh");
    assert_eq!(meta.extra["base_arch"], "mlp");
    let Architecture::Custom(description) = &meta.arch else { panic!("a variant is a description: {:?}", meta.arch) };
    assert!(description.nodes.iter().any(|n| n.op.kind() == "Tanh"));
    assert!(description.nodes.iter().all(|n| n.op.kind() != "ReLU"));
    // The epoch-end checkpoints carry no snapshot marker.
    let (_, metadata) =
        checkpoint::read(&cfg.out.join(leafwalk_train::checkpoint_name(1)), &candle_core::Device::Cpu).unwrap();
    assert!(!metadata.contains_key("leafwalk.epochs_trained"));

    let other = TrainConfig { resume: true, epochs: 3, variant: Variant::default(), ..cfg };
    let err = train(&other, |_| false).unwrap_err().to_string();
    assert!(err.contains("was started with"), "{err}");
}
