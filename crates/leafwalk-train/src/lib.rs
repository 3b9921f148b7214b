//! The trainer that produces *partially trained* leafwalk checkpoints.
//!
//! The geometry leafwalk shows is sharpest on a model stopped well before convergence (the
//! paper's observation: information in G rises, then fades as the model saturates), so this
//! crate owns a small, exact training loop rather than a general one: seeded shuffles (ChaCha8,
//! one stream per epoch) and seeded initialisation make a run deterministic for a seed and
//! thread count; every epoch ends in an atomically written `epoch-XX.safetensors`; a
//! `resume.safetensors` (weights, optimizer moments, running tallies) written at each epoch end
//! and every `checkpoint_every` steps lets `--resume` reproduce an uninterrupted run bit for bit;
//! `train-log.jsonl` records loss and accuracy about ten times an epoch.
#![warn(missing_docs)]

mod adversarial;
mod figure;
mod log;
mod optim;
mod recommend;

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{backprop::GradStore, DType, Device, Tensor, D};
use leafwalk_data::{Dataset, DatasetInfo, Split};
use leafwalk_models::{Arch, CheckpointMeta, Classifier, ModelError, Normalisation, Variant};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub use adversarial::{Adversary, Norm};
pub use log::{GeometryStats, LogRecord};
pub use optim::{Optimizer, OptimizerKind};
pub use recommend::{recommend, Recommendation};

/// Everything that can stop a training run; every message is one line, and those about settings
/// name the command-line flag (`--lr`, `--epochs`, …) to change.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Settings that cannot make a run: `epochs` or `batch_size` 0, `lr` not positive and finite,
    /// `min_accuracy` outside [0, 1], `checkpoint_every` 0, a snapshot outside [0, `epochs`) or
    /// on a whole epoch ≥ 1, an unparsable `--adversarial`, a variant the architecture cannot
    /// take, or a resumed run that already has `epochs` epochs.
    #[error("{0}")]
    Config(String),
    /// The run folder or one of its files is unusable: the folder cannot be created or written,
    /// it already holds a run (without `resume`) or holds none (with `resume`), the resume file
    /// was made with other settings or has malformed metadata, or the log cannot be written.
    #[error("{}: {msg}", path.display())]
    Run {
        /// The folder or file concerned (the run folder, `resume.safetensors` or the log).
        path: PathBuf,
        /// What is wrong with it, in words.
        msg: String,
    },
    /// Loading the training or test split failed (e.g. the dataset is not under `data_root`).
    #[error(transparent)]
    Data(#[from] leafwalk_data::DataError),
    /// Building the model or reading or writing a checkpoint failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A tensor operation failed (out of device memory, a shape or dtype mismatch).
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// Measuring G on the reference batch failed.
    #[error(transparent)]
    Geometry(#[from] leafwalk_geometry::GeometryError),
    /// The CPU engine refused or failed to run the model (gradients, log-probabilities, PGD).
    #[error(transparent)]
    Engine(#[from] leafwalk_engine::EngineError),
    /// Drawing the run's `trace.png` failed.
    #[error(transparent)]
    Plot(#[from] leafwalk_plot::PlotError),
}

/// The training crate's result.
pub type Result<T> = std::result::Result<T, TrainError>;

fn run_error(path: &Path, msg: impl Into<String>) -> TrainError {
    TrainError::Run { path: path.to_path_buf(), msg: msg.into() }
}

/// Everything a training run needs. [`train`] checks it before loading anything and answers
/// [`TrainError::Config`] for settings that cannot make a run. The `leafwalk train` defaults
/// quoted below are the command line's; the struct itself has none.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// The dataset: the model trains on its training split and is evaluated on its test split,
    /// and takes its image shape, classes and (unless `normalisation` says otherwise) its
    /// normalisation from it.
    pub dataset: &'static DatasetInfo,
    /// The built-in architecture trained (before `variant`'s swaps).
    pub arch: Arch,
    /// The built-in with its activations or pooling swapped (plain: the built-in itself).
    pub variant: Variant,
    /// The input normalisation, when not the dataset's (`None`: the dataset's).
    pub normalisation: Option<Normalisation>,
    /// Length of the whole run in epochs, at least 1 (default 10). A resumed run continues up
    /// to this many epochs in all, so raising it extends a finished run.
    pub epochs: usize,
    /// Learning rate, positive and finite (default 0.01, for plain SGD as in the paper; the
    /// `leafwalk train` example runs AdamW at 0.001).
    pub lr: f64,
    /// Images per training step, at least 1 (default 60); an epoch's last batch holds the
    /// remainder when the training set does not divide evenly.
    pub batch_size: usize,
    /// The update rule (default plain SGD).
    pub optimizer: OptimizerKind,
    /// Seeds the initial weights and every epoch's shuffle (default 42): the same seed, settings
    /// and thread count give the same run bit for bit.
    pub seed: u64,
    /// The run folder, created if missing: `epoch-XX.safetensors`, `resume.safetensors`,
    /// `train-log.jsonl` and `trace.png` go there. It must not hold a run unless `resume` is set.
    pub out: PathBuf,
    /// The folder holding the datasets (`mnist/`, `fashion-mnist/`, `cifar10/`); on the command
    /// line `--data-root` or `$LEAFWALK_DATA`, default `data`.
    pub data_root: PathBuf,
    /// Also write the resume file every this many steps (it is always written at epoch ends).
    pub checkpoint_every: Option<usize>,
    /// Continue the run in `out` from its `resume.safetensors` instead of starting one. The
    /// dataset, architecture, variant, seed, optimizer, `lr`, `batch_size` and `adversarial` must
    /// be those the run was started with ([`TrainError::Run`] otherwise); `epochs` may differ.
    pub resume: bool,
    /// Draw an indicatif progress bar (on stderr, only when it is a terminal).
    pub progress: bool,
    /// Images of the fixed reference batch on which trace and rank of G are tracked (evenly
    /// spaced over the training set); 0 turns the tracking off.
    pub reference_size: usize,
    /// The recommendation rule's accuracy floor: the recommended checkpoint is the epoch with
    /// the highest mean trace of G among those reaching this test accuracy.
    pub min_accuracy: f64,
    /// Where the model trains (the data stays on the host and is sent batch by batch).
    pub device: Device,
    /// Train on PGD adversarial examples of each batch instead of the batch itself.
    pub adversarial: Option<Adversary>,
    /// Points inside the run, in epochs (0 = the initial weights, 0.1 = a tenth of the first
    /// epoch), at which a checkpoint is also written ([`snapshot_name`]): the early stages a
    /// study of training compares, from the same run as the later ones.
    pub snapshots: Vec<f64>,
}

impl TrainConfig {
    fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(TrainError::Config(msg));
        if self.epochs == 0 {
            return bad("--epochs must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("--lr must be a positive finite number, got {}", self.lr));
        }
        if self.batch_size == 0 {
            return bad("--batch-size must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.min_accuracy) {
            return bad(format!("--min-accuracy must be between 0 and 1, got {}", self.min_accuracy));
        }
        if self.checkpoint_every == Some(0) {
            return bad("--checkpoint-every must be at least 1".into());
        }
        for &at in &self.snapshots {
            if !(at.is_finite() && at >= 0.0 && at < self.epochs as f64) {
                return bad(format!("--snapshot-at {at}: must lie in [0, {}) epochs", self.epochs));
            }
            if at >= 1.0 && at.fract() == 0.0 {
                return bad(format!("--snapshot-at {at}: epoch ends are always saved (epoch-XX.safetensors)"));
            }
        }
        Ok(())
    }
}

/// One finished epoch.
#[derive(Clone, Debug)]
pub struct EpochResult {
    /// The epoch's number, counted from 1.
    pub epoch: usize,
    /// Optimizer steps taken since the start of the run, at the end of this epoch.
    pub step: usize,
    /// Mean negative log-likelihood (nats per image) of the epoch's training batches, each taken
    /// in training mode just before its update (on the adversarial examples when training on
    /// them); a resumed epoch includes the steps made before the interruption.
    pub train_loss: f64,
    /// Fraction in [0, 1] of the epoch's training images predicted correctly, measured like
    /// `train_loss`.
    pub train_accuracy: f64,
    /// Mean negative log-likelihood (nats per image) over the whole test split, in evaluation
    /// mode, with the epoch's final weights.
    pub test_loss: f64,
    /// Fraction in [0, 1] of the test split predicted correctly, measured like `test_loss`.
    pub test_accuracy: f64,
    /// Mean trace of G over the reference batch with the epoch's final weights.
    pub mean_trace_g: Option<f64>,
    /// Path of the epoch's checkpoint, `out/epoch-XX.safetensors` ([`checkpoint_name`]).
    pub checkpoint: PathBuf,
}

/// What [`train`] returns once the run has finished or was stopped by `should_stop`.
#[derive(Clone, Debug)]
pub struct TrainSummary {
    /// The epochs finished by this call, in order; on `resume`, earlier epochs are not repeated
    /// here (their records stay in `train-log.jsonl`).
    pub epochs: Vec<EpochResult>,
    /// The checkpoint the recommendation rule picks over the whole run (see [`recommend`]).
    pub recommended: Option<Recommendation>,
    /// `Some(step)` when `should_stop` ended the run early (state saved at that step).
    pub interrupted_at: Option<usize>,
}

/// Loss and accuracy summed over some batches.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Tally {
    loss_sum: f64,
    correct: usize,
    seen: usize,
}

impl Tally {
    fn add(&mut self, loss: f64, correct: usize, seen: usize) {
        self.loss_sum += loss * seen as f64;
        self.correct += correct;
        self.seen += seen;
    }
    fn mean_loss(&self) -> f64 {
        self.loss_sum / self.seen.max(1) as f64
    }
    fn accuracy(&self) -> f64 {
        self.correct as f64 / self.seen.max(1) as f64
    }
}

const RESUME_FILE: &str = "resume.safetensors";
/// File name, inside the run folder, of the training figure: mean trace of G on the reference
/// batch and test accuracy against the training step, redrawn at every epoch end.
pub const TRACE_FIGURE: &str = "trace.png";
/// File name, inside the run folder, of the training log: one JSON [`LogRecord`] per line.
pub const LOG_FILE: &str = "train-log.jsonl";

/// File name (not a path) of the checkpoint written at the end of epoch `epoch`, counted from
/// 1, zero-padded to two digits: `epoch-03.safetensors`. `0` names the initial weights'
/// snapshot.
pub fn checkpoint_name(epoch: usize) -> String {
    format!("epoch-{epoch:02}.safetensors")
}

/// The file of the checkpoint `epochs` into a run: `epoch-00.safetensors` for the initial
/// weights, `epoch-00.10.safetensors` a tenth of the way through the first epoch, and an
/// epoch end's own file for a whole number.
pub fn snapshot_name(epochs: f64) -> String {
    if epochs.fract() == 0.0 {
        checkpoint_name(epochs as usize)
    } else {
        format!("epoch-{epochs:05.2}.safetensors")
    }
}

/// The step after which the snapshot `epochs` into a run is taken (at least one step in, unless
/// it is the start).
fn snapshot_step(epochs: f64, batches_per_epoch: usize) -> usize {
    let step = (epochs * batches_per_epoch as f64).round() as usize;
    if epochs > 0.0 {
        step.max(1)
    } else {
        0
    }
}

/// Where a run stands: everything besides weights and optimizer moments that `--resume` needs.
struct RunState {
    step: usize,
    epoch_tally: Tally,
    window_tally: Tally,
    seconds: f64,
}

/// Trains per `config`. `should_stop(step)` is asked after every step; when it says yes the
/// resume file is written and the run returns with `interrupted_at` (Ctrl-C handling).
pub fn train(config: &TrainConfig, mut should_stop: impl FnMut(usize) -> bool) -> Result<TrainSummary> {
    config.validate()?;
    let train_set = Dataset::load(config.dataset, Split::Train, &config.data_root)?;
    let test_set = Dataset::load(config.dataset, Split::Test, &config.data_root)?;
    prepare_out(config)?;
    let device = config.device.clone();
    let batches_per_epoch = train_set.len().div_ceil(config.batch_size);
    let total_steps = config.epochs * batches_per_epoch;
    let log_every = batches_per_epoch.div_ceil(10);
    let log_path = config.out.join(LOG_FILE);

    let (model, mut optimizer, mut state) = if config.resume {
        let (model, optimizer, state) = load_resume(config, &device)?;
        log::truncate(&log_path, Some(state.step)).map_err(|e| run_error(&log_path, e.to_string()))?;
        (model, optimizer, state)
    } else {
        let mut meta = CheckpointMeta::new(config.arch, config.dataset);
        meta.arch = config
            .variant
            .architecture(config.arch, meta.input, meta.classes.len())
            .map_err(|e| TrainError::Config(format!("{} with {}: {e}", config.arch, config.variant)))?;
        if let Some(normalisation) = &config.normalisation {
            (meta.mean, meta.std) = normalisation.for_channels(meta.input.channels)?;
        }
        meta.extra.insert("adversarial".into(), adversarial_name(config));
        let model = Classifier::fresh(meta, config.seed, &device, DType::F32)?;
        let optimizer = Optimizer::new(config.optimizer, config.lr, model.trainable_vars())?;
        log::truncate(&log_path, None).map_err(|e| run_error(&log_path, e.to_string()))?;
        (
            model,
            optimizer,
            RunState { step: 0, epoch_tally: Tally::default(), window_tally: Tally::default(), seconds: 0.0 },
        )
    };
    let mut model = model;
    if state.step >= total_steps {
        return Err(TrainError::Config(format!(
            "{}: the run already has {} steps ({} epochs); raise --epochs to continue it",
            config.out.display(),
            state.step,
            state.step / batches_per_epoch
        )));
    }

    let reference = match config.reference_size {
        0 => None,
        n => {
            let n = n.min(train_set.len());
            let indices: Vec<usize> = (0..n).map(|k| k * train_set.len() / n).collect();
            Some(train_set.batch(&indices, &device)?.0)
        }
    };
    if let (Some(pixels), 0) = (&reference, state.step) {
        let record = LogRecord::start(reference_geometry(&model, pixels)?);
        log::append(&log_path, &record).map_err(|e| run_error(&log_path, e.to_string()))?;
    }
    let snapshot_at =
        |step: usize| config.snapshots.iter().copied().find(|&at| snapshot_step(at, batches_per_epoch) == step);
    if let (Some(at), 0) = (snapshot_at(0), state.step) {
        save_snapshot(config, &model, &test_set, reference.as_ref(), at, &state)?;
    }
    let progress = progress_bar(config.progress, total_steps as u64, state.step as u64);
    // Seconds of earlier sessions of this run plus this session's, so interruptions don't count.
    let (resumed_at, session) = (state.seconds, Instant::now());
    let run_seconds = || resumed_at + session.elapsed().as_secs_f64();
    let mut window_started = Instant::now();
    let mut summary = TrainSummary { epochs: Vec::new(), recommended: None, interrupted_at: None };
    let first_epoch = state.step / batches_per_epoch + 1;
    for epoch in first_epoch..=config.epochs {
        let order = epoch_order(config.seed, epoch, train_set.len());
        let done_in_epoch = state.step - (epoch - 1) * batches_per_epoch;
        for batch in order.chunks(config.batch_size).skip(done_in_epoch) {
            let (images, labels) = train_set.batch(batch, &device)?;
            let images = match &config.adversarial {
                Some(adversary) => adversary.attack(&model, &images, &labels)?,
                None => images,
            };
            let in_epoch = state.step + 1 - (epoch - 1) * batches_per_epoch;
            let log_now = in_epoch % log_every == 0 && in_epoch != batches_per_epoch;
            // As in the paper, G is measured after the backward pass and before the update.
            let (mut geometry, mut geometry_seconds) = (None, 0.0);
            let (loss, correct) = train_step(&model, &mut optimizer, &images, &labels, |model| {
                if let (true, Some(pixels)) = (log_now, &reference) {
                    let started = Instant::now();
                    geometry = Some(reference_geometry(model, pixels)?);
                    geometry_seconds = started.elapsed().as_secs_f64();
                }
                Ok(())
            })?;
            state.step += 1;
            if let Some(at) = snapshot_at(state.step) {
                save_snapshot(config, &model, &test_set, reference.as_ref(), at, &state)?;
            }
            state.epoch_tally.add(loss, correct, batch.len());
            state.window_tally.add(loss, correct, batch.len());
            if log_now {
                // Training throughput: the geometry measurement is not training time.
                let seconds = window_started.elapsed().as_secs_f64() - geometry_seconds;
                let mut record = LogRecord::batch(state.step, epoch, &state.window_tally, run_seconds(), seconds);
                record.geometry = geometry;
                log::append(&log_path, &record).map_err(|e| run_error(&log_path, e.to_string()))?;
                progress.set_message(format!(
                    "epoch {epoch} loss {:.4} acc {:.1}% {:.0} img/s",
                    state.window_tally.mean_loss(),
                    100.0 * state.window_tally.accuracy(),
                    record.images_per_s
                ));
                state.window_tally = Tally::default();
                window_started = Instant::now();
            }
            progress.set_position(state.step as u64);
            if in_epoch == batches_per_epoch {
                break; // the epoch end below saves and asks should_stop
            }
            let stop = should_stop(state.step);
            if stop || config.checkpoint_every.is_some_and(|every| state.step % every == 0) {
                state.seconds = run_seconds();
                save_resume(config, &model, &optimizer, &state)?;
            }
            if stop {
                progress.abandon_with_message(format!("interrupted at step {}; continue with --resume", state.step));
                summary.interrupted_at = Some(state.step);
                return Ok(summary);
            }
        }

        let (test_loss, test_accuracy) = evaluate(&model, &test_set, 500)?;
        let geometry = reference.as_ref().map(|pixels| reference_geometry(&model, pixels)).transpose()?;
        let mean_trace_g = geometry.as_ref().map(|g| g.mean_trace_g);
        state.seconds = run_seconds();
        let mut record =
            LogRecord::epoch(state.step, epoch, &state.epoch_tally, test_loss, test_accuracy, state.seconds);
        record.geometry = geometry;
        log::append(&log_path, &record).map_err(|e| run_error(&log_path, e.to_string()))?;
        stamp(model.meta_mut(), config, epoch, state.step, test_accuracy, mean_trace_g);
        let checkpoint = config.out.join(checkpoint_name(epoch));
        model.save(&checkpoint)?;
        let result = EpochResult {
            epoch,
            step: state.step,
            train_loss: state.epoch_tally.mean_loss(),
            train_accuracy: state.epoch_tally.accuracy(),
            test_loss,
            test_accuracy,
            mean_trace_g,
            checkpoint,
        };
        // Printed even when the bar is hidden (stderr not a terminal): logs want these lines.
        progress.suspend(|| {
            eprintln!(
                "epoch {epoch:>2}: train loss {:.4} acc {:.2}% | test loss {:.4} acc {:.2}% | {:.0} s → {}",
                result.train_loss,
                100.0 * result.train_accuracy,
                test_loss,
                100.0 * test_accuracy,
                state.seconds,
                result.checkpoint.display()
            )
        });
        state.epoch_tally = Tally::default();
        state.window_tally = Tally::default();
        window_started = Instant::now();
        save_resume(config, &model, &optimizer, &state)?;
        summary.epochs.push(result);
        let history = log::read(&log_path).map_err(|e| run_error(&log_path, e.to_string()))?;
        figure::trace_figure(&config.out.join(TRACE_FIGURE), &history)?;
        summary.recommended = recommend(&history, config.min_accuracy);
        if epoch < config.epochs && should_stop(state.step) {
            summary.interrupted_at = Some(state.step);
            return Ok(summary);
        }
    }
    progress.finish_and_clear();
    Ok(summary)
}

/// One SGD step on a batch; returns the batch's mean loss and number of correct predictions.
/// `before_update` sees the model after the backward pass, before the weights change.
pub fn train_step(
    model: &Classifier,
    optimizer: &mut Optimizer,
    images: &Tensor,
    labels: &Tensor,
    before_update: impl FnOnce(&Classifier) -> Result<()>,
) -> Result<(f64, usize)> {
    // The CPU engine where it runs the model (f32 on the CPU); candle's autograd elsewhere.
    if let Some(pass) = leafwalk_engine::nll_gradients(model, images, labels)? {
        let mut grads = GradStore::default();
        let by_name: std::collections::HashMap<_, _> = pass.gradients.into_iter().collect();
        for (name, var) in model.trainable_vars() {
            if let Some(gradient) = by_name.get(&name) {
                grads.insert(var.as_tensor(), gradient.clone());
            }
        }
        before_update(model)?;
        optimizer.step(&grads)?;
        // Batch norm's running averages follow the batch statistics, as in PyTorch's training mode.
        let vars: std::collections::HashMap<_, _> = model.vars().into_iter().collect();
        for (name, value) in pass.running_statistics {
            if let Some(var) = vars.get(&name) {
                var.set(&value)?;
            }
        }
        return Ok((pass.loss, pass.correct));
    }
    let log_probs = model.log_probs_t(images, true)?;
    let loss = candle_nn::loss::nll(&log_probs, labels)?;
    let grads = loss.backward()?;
    before_update(model)?;
    optimizer.step(&grads)?;
    let correct = count_correct(&log_probs, labels)?;
    Ok((loss.to_scalar::<f32>()? as f64, correct))
}

fn count_correct(log_probs: &Tensor, labels: &Tensor) -> candle_core::Result<usize> {
    Ok(log_probs.argmax(D::Minus1)?.eq(labels)?.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()? as usize)
}

/// Trace and rank of G over the reference batch (evaluation mode), in batches of 32 points.
pub fn reference_geometry(model: &Classifier, pixels: &Tensor) -> Result<GeometryStats> {
    let mut traces = Vec::with_capacity(pixels.dim(0)?);
    let mut rank_hist = vec![0usize; model.classes() + 1];
    for start in (0..pixels.dim(0)?).step_by(32) {
        let chunk = pixels.narrow(0, start, 32.min(pixels.dim(0)? - start))?;
        for point in leafwalk_geometry::batch_geometry(model, &chunk)? {
            traces.push(point.trace());
            rank_hist[point.rank()] += 1;
        }
    }
    Ok(GeometryStats::new(traces, rank_hist))
}

/// Mean NLL and accuracy of `model` (evaluation mode) over a whole dataset.
pub fn evaluate(model: &Classifier, dataset: &Dataset, batch_size: usize) -> Result<(f64, f64)> {
    let mut tally = Tally::default();
    let indices: Vec<usize> = (0..dataset.len()).collect();
    for batch in indices.chunks(batch_size.max(1)) {
        let (images, labels) = dataset.batch(batch, model.device())?;
        let log_probs = leafwalk_engine::log_probs(model, &images)?;
        let loss = candle_nn::loss::nll(&log_probs, &labels)?.to_scalar::<f32>()? as f64;
        tally.add(loss, count_correct(&log_probs, &labels)?, batch.len());
    }
    Ok((tally.mean_loss(), tally.accuracy()))
}

/// The visiting order of epoch `epoch`: a shuffle drawn from ChaCha8 stream `epoch` of `seed`,
/// so any epoch's order can be rebuilt on resume without replaying the earlier ones.
pub fn epoch_order(seed: u64, epoch: usize, len: usize) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch as u64);
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut rng);
    order
}

fn prepare_out(config: &TrainConfig) -> Result<()> {
    let out = &config.out;
    std::fs::create_dir_all(out).map_err(|e| run_error(out, format!("cannot create the output folder: {e}")))?;
    tempfile::tempfile_in(out).map_err(|e| run_error(out, format!("output folder is not writable: {e}")))?;
    let has_run = out.join(RESUME_FILE).exists() || out.join(checkpoint_name(1)).exists();
    if has_run && !config.resume {
        return Err(run_error(
            out,
            "already holds a training run; pass --resume to continue it or choose another --out",
        ));
    }
    if !has_run && config.resume {
        return Err(run_error(&out.join(RESUME_FILE), "no run to resume here (start without --resume)"));
    }
    Ok(())
}

fn run_metadata(config: &TrainConfig) -> [(String, String); 7] {
    [
        ("base_arch".into(), config.arch.to_string()),
        ("variant".into(), config.variant.to_string()),
        ("seed".into(), config.seed.to_string()),
        ("optimizer".into(), config.optimizer.to_string()),
        ("lr".into(), config.lr.to_string()),
        ("batch_size".into(), config.batch_size.to_string()),
        ("adversarial".into(), adversarial_name(config)),
    ]
}

/// The architecture name the run's checkpoints carry: the built-in's, or `custom` for a variant.
fn meta_arch_name(config: &TrainConfig) -> String {
    if config.variant.is_plain() {
        config.arch.to_string()
    } else {
        "custom".into()
    }
}

/// Records in a checkpoint's metadata where the run stands and how it was made.
fn stamp(
    meta: &mut CheckpointMeta,
    config: &TrainConfig,
    epoch: usize,
    step: usize,
    test_accuracy: f64,
    mean_trace_g: Option<f64>,
) {
    meta.epoch = epoch;
    meta.step = step;
    meta.test_accuracy = Some(test_accuracy);
    meta.extra.extend(run_metadata(config));
    if let Some(trace) = mean_trace_g {
        meta.extra.insert("mean_trace_g".into(), format!("{trace:?}"));
    }
}

/// Writes the snapshot `at` epochs into the run, evaluated like an epoch's checkpoint; its
/// metadata says how far in it is (`epochs_trained`) without touching the model's own.
fn save_snapshot(
    config: &TrainConfig,
    model: &Classifier,
    test_set: &Dataset,
    reference: Option<&Tensor>,
    at: f64,
    state: &RunState,
) -> Result<()> {
    let (_, test_accuracy) = evaluate(model, test_set, 500)?;
    let mean_trace_g = reference.map(|pixels| reference_geometry(model, pixels)).transpose()?.map(|g| g.mean_trace_g);
    let mut meta = model.meta().clone();
    stamp(&mut meta, config, at.floor() as usize, state.step, test_accuracy, mean_trace_g);
    meta.extra.insert("epochs_trained".into(), at.to_string());
    leafwalk_models::checkpoint::write(
        &config.out.join(snapshot_name(at)),
        &model.named_tensors(),
        meta.to_metadata(),
    )?;
    Ok(())
}

/// The attack a run trains against, as its checkpoints record it (`none` for plain training).
fn adversarial_name(config: &TrainConfig) -> String {
    config.adversarial.map_or_else(|| "none".to_string(), |a| a.to_string())
}

fn save_resume(config: &TrainConfig, model: &Classifier, optimizer: &Optimizer, state: &RunState) -> Result<()> {
    let mut meta = model.meta().clone();
    meta.step = state.step;
    meta.extra.extend(run_metadata(config));
    let tally = |t: &Tally| format!("{:?},{},{}", t.loss_sum, t.correct, t.seen);
    meta.extra.insert("resume.epoch_tally".into(), tally(&state.epoch_tally));
    meta.extra.insert("resume.window_tally".into(), tally(&state.window_tally));
    meta.extra.insert("resume.seconds".into(), format!("{:?}", state.seconds));
    meta.extra.insert("resume.optimizer_updates".into(), optimizer.updates().to_string());
    let mut tensors = model.named_tensors();
    tensors.extend(optimizer.state());
    leafwalk_models::checkpoint::write(&config.out.join(RESUME_FILE), &tensors, meta.to_metadata())?;
    Ok(())
}

fn load_resume(config: &TrainConfig, device: &Device) -> Result<(Classifier, Optimizer, RunState)> {
    let path = config.out.join(RESUME_FILE);
    let (mut tensors, metadata) = leafwalk_models::checkpoint::read(&path, device)?;
    let meta =
        CheckpointMeta::from_metadata(&path, &metadata)?.ok_or_else(|| run_error(&path, "has no leafwalk metadata"))?;
    for (key, wanted) in run_metadata(config)
        .into_iter()
        .chain([("arch".to_string(), meta_arch_name(config)), ("dataset".to_string(), config.dataset.name.to_string())])
    {
        let found = match key.as_str() {
            "arch" => meta.arch.to_string(),
            // Runs from before variants were recorded trained the built-in itself.
            "base_arch" => meta.extra.get(&key).cloned().unwrap_or_else(|| meta.arch.to_string()),
            "variant" => meta.extra.get(&key).cloned().unwrap_or_else(|| "none".into()),
            "dataset" => meta.dataset.clone().unwrap_or_default(),
            // Runs from before adversarial training recorded none.
            "adversarial" => meta.extra.get(&key).cloned().unwrap_or_else(|| "none".into()),
            _ => meta.extra.get(&key).cloned().unwrap_or_default(),
        };
        if found != wanted {
            return Err(run_error(
                &path,
                format!("was started with {key} {found}, not {wanted}: resume with the same settings"),
            ));
        }
    }
    let extra =
        |key: &str| meta.extra.get(key).cloned().ok_or_else(|| run_error(&path, format!("metadata lacks {key}")));
    let parse_tally = |key: &str| -> Result<Tally> {
        let text = extra(key)?;
        let parts: Vec<&str> = text.split(',').collect();
        let bad = || run_error(&path, format!("metadata {key} is malformed: '{text}'"));
        match parts.as_slice() {
            [loss, correct, seen] => Ok(Tally {
                loss_sum: loss.parse().map_err(|_| bad())?,
                correct: correct.parse().map_err(|_| bad())?,
                seen: seen.parse().map_err(|_| bad())?,
            }),
            _ => Err(bad()),
        }
    };
    let state = RunState {
        step: meta.step,
        epoch_tally: parse_tally("resume.epoch_tally")?,
        window_tally: parse_tally("resume.window_tally")?,
        seconds: extra("resume.seconds")?
            .parse()
            .map_err(|_| run_error(&path, "metadata resume.seconds is malformed"))?,
    };
    let updates: usize = extra("resume.optimizer_updates")?
        .parse()
        .map_err(|_| run_error(&path, "metadata resume.optimizer_updates is malformed"))?;
    let optimizer_state: std::collections::HashMap<String, Tensor> =
        tensors.iter().filter(|(k, _)| Optimizer::is_state(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
    tensors.retain(|k, _| !Optimizer::is_state(k));
    let model = Classifier::from_tensors(&path, meta, tensors, device)?;
    let mut optimizer = Optimizer::new(config.optimizer, config.lr, model.trainable_vars())?;
    optimizer.restore(updates, |name| {
        optimizer_state
            .get(name)
            .cloned()
            .ok_or_else(|| candle_core::Error::Msg(format!("{}: missing optimizer tensor '{name}'", path.display())))
    })?;
    Ok((model, optimizer, state))
}

fn progress_bar(enabled: bool, total: u64, position: u64) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps [{elapsed_precise}<{eta}] {msg}")
    {
        bar.set_style(style);
    }
    bar.set_position(position);
    bar
}
