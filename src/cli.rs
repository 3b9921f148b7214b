use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use leafwalk_data::{DatasetRef, ImageSource, Invert};
use leafwalk_models::description::{Activation, GeluForm};
use leafwalk_models::{Arch, DeviceChoice, PoolKind};
use leafwalk_train::{Adversary, OptimizerKind};

/// See what an image classifier sees: the local data matrix G(x,w) = Σ pᵢ ∇ₓlog pᵢ ∇ₓlog pᵢᵀ,
/// the foliation it defines on input space, and walks on its data leaf.
#[derive(Parser, Debug)]
#[command(name = "leafwalk", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Worker threads for candle's CPU kernels (sets RAYON_NUM_THREADS); default: all cores.
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// Folder holding datasets (mnist/, fashion-mnist/, cifar10/).
    #[arg(long, global = true, env = "LEAFWALK_DATA", default_value = "data")]
    pub data_root: PathBuf,
    /// Log debug messages to stderr.
    #[arg(long, short, global = true)]
    pub verbose: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a classifier and checkpoint it every epoch (partially trained models are the point).
    #[command(
        after_help = "Example:\n  leafwalk train --dataset mnist --arch mnist-cnn --epochs 3 --optimizer adamw --lr 0.001 --out runs/mnist"
    )]
    Train(TrainArgs),
    /// Write a freshly initialised model of a built-in architecture (PyTorch's default
    /// initialisation, seeded): untrained baselines, or a model of any input size and class
    /// count to try the geometry on.
    #[command(
        after_help = "Examples:\n  leafwalk init --arch resnet-mini --dataset fashion-mnist --seed 1 --out fresh.safetensors\n  leafwalk init --arch resnet18 --input 3x224x224 --classes 1000 --out resnet18.safetensors"
    )]
    Init(InitArgs),
    /// Classify images or dataset entries with a model and print the class probabilities.
    #[command(
        after_help = "Examples:\n  leafwalk predict models/samples/mnist-7.png\n  leafwalk predict mnist:test:17 fashion-mnist:test:3 --model models/fashion-mnist-cnn.safetensors"
    )]
    Predict(PredictArgs),
    /// The local data matrix G at images or over a dataset: prediction, trace, rank, spectrum
    /// and the leaf basis (the directions the model perceives), optionally the Fisher matrix.
    #[command(
        after_help = "Examples:\n  leafwalk inspect --image models/samples/mnist-7.png --basis-png basis.png\n  leafwalk inspect --ref mnist:test:17 --fisher --json\n  leafwalk inspect --data mnist:test --limit 500 --spectrum-png spectrum.png"
    )]
    Inspect(InspectArgs),
    /// Walk the data leaf from one image toward another: the model's own morph between them,
    /// as a GIF, a strip of 9 frames and a per-step log.
    #[command(
        after_help = "Exits 0 when every target is reached, 3 when a walk stalls or hits --max-steps.\n\nExamples:\n  leafwalk path --from models/samples/mnist-1.png --to models/samples/mnist-7.png --out runs/path-1-7\n  leafwalk path --from mnist:test:0 --to mnist:test:1 --integrator euler --json --out runs/paper\n  leafwalk path --from mnist:test:0 --to mnist:test:1 --via auto --out runs/routed\n  leafwalk path --from mnist:test:3 --to mnist:test:1500 --leaf noise --seed 1 --out runs/noise\n  leafwalk path --pairs pairs.csv --out runs/batch"
    )]
    Path(PathArgs),
    /// How well paths connect: N random test pairs walked with each integrator (and steered
    /// through training images), against straight pixel interpolation.
    #[command(
        after_help = "Example:\n  leafwalk eval-paths --pairs 50 --seed 0 --data mnist:test --with-via --out runs/eval-paths"
    )]
    EvalPaths(EvalPathsArgs),
    /// Out-of-distribution scores of images, higher = more OOD: distance to the data leaf,
    /// trace and spectrum of G, and the baselines MSP, energy, ODIN, Mahalanobis, GradNorm.
    #[command(
        after_help = "Examples:\n  leafwalk ood-score --inputs models/samples/mnist-7.png fashion-mnist:test:0\n  leafwalk ood-score --inputs fashion-mnist:test --limit 100 --score leaf-distance,msp --out scores.csv"
    )]
    OodScore(OodScoreArgs),
    /// How well each OOD score separates an in-distribution set from OOD sets: AUROC,
    /// AUPR-in/out and FPR at 95% TPR per (score, set), a table, JSON and ROC curves.
    #[command(
        after_help = "Example:\n  leafwalk eval-ood --in mnist:test --ood fashion-mnist:test,noise:uniform,transform:flip --limit 500 --out runs/eval-ood"
    )]
    EvalOod(EvalOodArgs),
    /// Denoise images by projecting them onto the data leaf: walks along the leaf from the
    /// nearest training images toward each, keeping the end nearest it.
    #[command(after_help = "Example:\n  leafwalk denoise --inputs noisy/ mnist:test:3 --out runs/denoised")]
    Denoise(DenoiseArgs),
    /// Denoising quality on noisy test images: PSNR and SSIM of the noisy input, Gaussian blur
    /// and PCA projection (both tuned on noisy training images), a 3×3 median and the leaf
    /// projection, per noise level.
    #[command(
        after_help = "Example:\n  leafwalk eval-denoise --data mnist:test --sigma 0.1,0.3,0.5 --limit 200 --out runs/eval-denoise"
    )]
    EvalDenoise(EvalDenoiseArgs),
    /// New images of one class: random walks on the data leaf from an image that reject every
    /// step changing the prediction; a grid of the results, the label-preservation rate and
    /// their mean pairwise distance.
    #[command(
        after_help = "Example:\n  leafwalk generate --from models/samples/mnist-7.png --count 8 --steps 100 --seed 1 --out runs/sevens"
    )]
    Generate(GenerateArgs),
    /// How far apart two datasets are as the model sees them: the distributions of G's
    /// log-eigenvalues over each (Tron & Fioresi), as a distance in decades and a plot.
    #[command(
        after_help = "Example:\n  leafwalk compare --a mnist:test --b fashion-mnist:test --limit 500 --out runs/compare"
    )]
    Compare(CompareArgs),
    /// Walk with a constant direction projected onto ker G (a noise leaf: the image changes,
    /// the prediction stays) or onto ker G⊥; written like `path`.
    #[command(
        after_help = "Examples:\n  leafwalk walk --from mnist:test:3 --direction random --subspace kernel --steps 250 --out runs/noise-3\n  leafwalk walk --from models/samples/mnist-1.png --direction models/samples/mnist-7.png --subspace leaf --steps 100 --out runs/leaf-1"
    )]
    Walk(WalkArgs),
    /// Convert a model made elsewhere — an ONNX file, or a PyTorch state_dict with --arch or
    /// --layers — into a leafwalk checkpoint with full metadata, so that every command then
    /// needs only --model.
    #[command(
        after_help = "Examples:\n  leafwalk import net.onnx --out net.safetensors --classes cat,dog,bird\n  leafwalk import state_dict.safetensors --layers net.json --dataset mnist --out net.safetensors"
    )]
    Import(ImportArgs),
    /// Combine the shards of a run made with --shard K/N (on as many machines as N) into the
    /// report one process would have written; statistics come from the merged per-image values.
    #[command(
        after_help = "Example:\n  for k in 1 2 3 4; do leafwalk eval-ood --limit 2000 --shard $k/4 --out runs/ood; done\n  leafwalk merge runs/ood/eval-ood-shard-*-of-4.json --out runs/ood"
    )]
    Merge(MergeArgs),
    /// Does the data leaf hold the data? Train or reuse a grid of models and measure, per
    /// model and training stage, whether leaf paths connect test pairs and whether their
    /// frames look like data to a separate evaluator classifier, against the straight line.
    #[command(
        after_help = "Examples:\n  leafwalk study --out study-out\n  leafwalk study --out study-out --only mnist-gelu-max@3"
    )]
    Study(StudyArgs),
    /// Download a dataset from the Hugging Face hub into --data-root (needs network).
    #[cfg(feature = "hub")]
    #[command(after_help = "Example:\n  leafwalk fetch --download mnist")]
    Fetch(FetchArgs),
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Dataset to train on: mnist, fashion-mnist or cifar10.
    #[arg(long, default_value = "mnist")]
    pub dataset: String,
    /// Architecture: mnist-cnn, mlp, cifar-vgg11, lenet5, vgg-bn-small, resnet-mini, resnet20
    /// or resnet18.
    #[arg(long, default_value = "mnist-cnn")]
    pub arch: Arch,
    /// Swap every nonlinearity of the architecture for this one (a variant; the checkpoint
    /// carries its description).
    #[arg(long)]
    pub activation: Option<ActivationArg>,
    /// Swap every pooling window for this kind (same kernel, stride and padding).
    #[arg(long)]
    pub pooling: Option<PoolingArg>,
    #[command(flatten)]
    pub normalisation: NormalisationArgs,
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Also save checkpoints this far into the run, in epochs, e.g. 0,0.1 (0: the initial
    /// weights → epoch-00.safetensors; 0.1 → epoch-00.10.safetensors).
    #[arg(long, value_delimiter = ',')]
    pub snapshot_at: Vec<f64>,
    #[arg(long, default_value_t = 0.01)]
    pub lr: f64,
    #[arg(long, default_value_t = 60)]
    pub batch_size: usize,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// sgd (plain, the paper's) or adamw.
    #[arg(long, default_value = "sgd")]
    pub optimizer: OptimizerKind,
    /// Train on adversarial examples: PGD on pixels, l2:EPS[,STEPS] or linf:EPS[,STEPS]
    /// (10 steps of 2.5·EPS/STEPS by default; e.g. l2:2, linf:0.3,40).
    #[arg(long)]
    pub adversarial: Option<Adversary>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Run folder: epoch-XX.safetensors, resume.safetensors, train-log.jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// Also save the resume state every this many steps (it is always saved at epoch ends).
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Continue the run in --out from its last saved state.
    #[arg(long)]
    pub resume: bool,
    /// Track trace and rank of G about ten times an epoch on this many training images
    /// (evenly spaced; the paper's 200). 0 turns tracking off and speeds training up.
    #[arg(long, default_value_t = 200)]
    pub reference_size: usize,
    /// Test-accuracy floor of the checkpoint recommendation (highest mean trace of G among
    /// the epochs that reach it).
    #[arg(long, default_value_t = 0.95)]
    pub min_accuracy: f64,
    /// Print a JSON summary on stdout at the end.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Architecture (see `leafwalk train --help`).
    #[arg(long)]
    pub arch: Arch,
    /// Dataset the model is for: its image shape, classes and normalisation. Without it:
    /// --input and --classes (default: the architecture's usual ones), no normalisation.
    #[arg(long, conflicts_with_all = ["input", "classes"])]
    pub dataset: Option<String>,
    /// Input shape CxHxW, e.g. 3x224x224.
    #[arg(long)]
    pub input: Option<String>,
    /// Number of classes (named 0 … C−1).
    #[arg(long)]
    pub classes: Option<usize>,
    #[command(flatten)]
    pub normalisation: NormalisationArgs,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// The checkpoint to write (refused if it exists).
    #[arg(long)]
    pub out: PathBuf,
}

/// Where a command's model comes from.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A leafwalk checkpoint (safetensors), a plain PyTorch state_dict (safetensors, with
    /// --arch or --layers) or an ONNX file (*.onnx, external data beside it).
    #[arg(long, default_value = "models/mnist-cnn.safetensors")]
    pub model: PathBuf,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub foreign: ForeignModelArgs,
}

/// What leafwalk should assume of a model file without leafwalk metadata.
#[derive(Args, Debug, Clone)]
pub struct ForeignModelArgs {
    /// A built-in architecture, for a plain PyTorch state_dict.
    #[arg(long, conflicts_with = "layers")]
    pub arch: Option<Arch>,
    /// A layer file (JSON, PyTorch module names) describing a plain state_dict's network; see
    /// the README, "Bring your own PyTorch model".
    #[arg(long)]
    pub layers: Option<PathBuf>,
    /// Dataset the model was trained on: its class names, and for a built-in --arch its
    /// normalisation (default: the architecture's usual dataset).
    #[arg(long)]
    pub dataset: Option<String>,
    /// Class names in the order of the model's outputs, comma-separated (default: the
    /// dataset's, else 0 … C−1).
    #[arg(long, value_delimiter = ',')]
    pub classes: Option<Vec<String>>,
    #[command(flatten)]
    pub normalisation: NormalisationArgs,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The model to convert: an ONNX file, or a PyTorch state_dict (safetensors) with --arch
    /// or --layers.
    pub input: PathBuf,
    #[command(flatten)]
    pub foreign: ForeignModelArgs,
    /// The checkpoint to write (refused if it exists).
    #[arg(long)]
    pub out: PathBuf,
}

/// The input normalisation of a model whose metadata does not carry it.
#[derive(Args, Debug, Clone)]
pub struct NormalisationArgs {
    /// Per-channel mean subtracted from pixels in [0, 1], comma-separated (one value serves
    /// every channel); default: a built-in architecture's dataset's, none for an ONNX file or
    /// a --layers network. `--mean 0 --std 1`: the network takes pixels.
    #[arg(long, value_delimiter = ',', requires = "std", allow_negative_numbers = true)]
    pub mean: Option<Vec<f32>>,
    /// Per-channel standard deviation the centred pixels are divided by (see --mean).
    #[arg(long, value_delimiter = ',', requires = "mean")]
    pub std: Option<Vec<f32>>,
}

impl NormalisationArgs {
    pub fn normalisation(&self) -> Option<leafwalk_models::Normalisation> {
        match (&self.mean, &self.std) {
            (Some(mean), Some(std)) => Some(leafwalk_models::Normalisation { mean: mean.clone(), std: std.clone() }),
            _ => None,
        }
    }
}

/// Where the model runs; every command that loads or trains a model takes it.
#[derive(Args, Debug, Clone, Copy)]
pub struct DeviceArgs {
    /// cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long, env = "LEAFWALK_DEVICE", default_value = "cpu")]
    pub device: DeviceChoice,
}

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// Image files (PNG/JPEG), dataset entries NAME:SPLIT:INDEX (e.g. mnist:test:17) or arrays
    /// of pixels in [0, 1], FILE.safetensors[:NAME][#INDEX] ([B,C,H,W] or [B,C·H·W] floats).
    #[arg(required = true)]
    pub inputs: Vec<ImageSource>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Invert image files (MNIST digits are white on black); auto inverts when the border is
    /// brighter than the centre.
    #[arg(long, default_value = "auto")]
    pub invert: Invert,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Image file (PNG/JPEG) or FILE.safetensors[:NAME][#INDEX] of pixels; repeatable.
    #[arg(long)]
    pub image: Vec<PathBuf>,
    /// Dataset entry NAME:SPLIT:INDEX, e.g. mnist:test:17; repeatable.
    #[arg(long = "ref")]
    pub reference: Vec<DatasetRef>,
    /// A whole split, NAME:SPLIT (e.g. mnist:test): summary statistics over --limit images.
    #[arg(long, conflicts_with_all = ["image", "reference", "basis_png", "full_g", "leaf_basis"])]
    pub data: Option<DatasetRef>,
    /// Images taken from --data, evenly spaced over the split (its files are sorted by class).
    #[arg(long, default_value_t = 500)]
    pub limit: usize,
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value = "auto")]
    pub invert: Invert,
    /// Also the Fisher matrix F(x,w) in parameter space (C backward passes per image; over
    /// --data also the dataset Fisher, which holds N·C parameter gradients in memory).
    #[arg(long)]
    pub fisher: bool,
    /// Also the Frobenius test of the leaf: for random pairs of leaf directions, how far their
    /// Lie bracket leaves ker G⊥, as the asymmetry of the second fundamental form (0:
    /// integrable, up to 1), at finite-difference steps 0.1, 0.01, 0.001 px (4 Jacobians a pair
    /// and step, batched).
    #[arg(long, conflicts_with = "data")]
    pub integrability: bool,
    /// Pairs of leaf directions --integrability samples per image.
    #[arg(long, default_value_t = 16, requires = "integrability")]
    pub bracket_pairs: usize,
    /// Draw each image with the eigenvectors of its G (signed heat-maps) into this PNG.
    #[arg(long)]
    pub basis_png: Option<PathBuf>,
    /// Write each input's leaf basis — the unit eigenvectors of G, largest eigenvalue first, as
    /// the rows of an r×n float32 tensor `basis.I` — and its eigenvalues `eigenvalues.I` to
    /// this safetensors file.
    #[arg(long)]
    pub leaf_basis: Option<PathBuf>,
    /// Write the dense n×n G of the (single) input as float64 .npy (n ≤ 4096 only).
    #[arg(long)]
    pub full_g: Option<PathBuf>,
    /// Over --data: compute only shard K of N (e.g. 2/4) of the --limit images, written into
    /// --out as inspect-shard-K-of-N.json for `leafwalk merge` (not with --fisher).
    #[arg(long, value_name = "K/N", requires = "data")]
    pub shard: Option<crate::commands::shard::Shard>,
    /// Folder for the --shard file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Over --data: plot the eigenvalue spectrum of G (median and 10–90 % band, log scale).
    #[arg(long, requires = "data")]
    pub spectrum_png: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct PathArgs {
    /// Start: image file, dataset entry NAME:SPLIT:INDEX or FILE.safetensors[:NAME]#INDEX.
    #[arg(long, required_unless_present = "pairs", conflicts_with = "pairs")]
    pub from: Option<ImageSource>,
    /// Target: image file or dataset entry.
    #[arg(long, required_unless_present_any = ["pairs", "to_flipped"], conflicts_with = "pairs")]
    pub to: Option<ImageSource>,
    /// Target: the start image mirrored left to right (the paper's mirrored-digit path).
    #[arg(long, conflicts_with_all = ["to", "pairs"])]
    pub to_flipped: bool,
    /// A CSV of `from,to` rows (images or dataset entries; a `from,to` header is allowed):
    /// all paths integrated in one batch, one folder per pair under --out plus summary.csv.
    #[arg(long)]
    pub pairs: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value = "auto")]
    pub invert: Invert,
    /// Resize image files whose size or channels differ from the model's (default: refuse).
    #[arg(long)]
    pub resize: bool,
    #[command(flatten)]
    pub walk: PathWalkArgs,
    /// Also write every point of the path (pixels) with its log to this safetensors file
    /// (with --pairs: this file name inside each pair's folder).
    #[arg(long)]
    pub save_points: Option<PathBuf>,
    /// Output folder (created; must not already hold a path).
    #[arg(long)]
    pub out: PathBuf,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

/// How paths are walked (shared by `path` and `eval-paths`).
#[derive(Args, Debug, Clone)]
pub struct PathWalkArgs {
    /// data: along the data leaf from the start; noise: first --noise-steps kernel steps in a
    /// random direction (a noise leaf), then along that leaf toward the target.
    #[arg(long, default_value = "data")]
    pub leaf: LeafArg,
    /// Kernel steps of a noise-leaf path (the paper's 250).
    #[arg(long, default_value_t = 250)]
    pub noise_steps: usize,
    /// euler: the paper's fixed step; adaptive: error-controlled steps, far fewer Jacobians.
    #[arg(long, default_value = "adaptive")]
    pub integrator: IntegratorArg,
    /// Step length in normalised units: euler's fixed step (the paper's 0.1, i.e. 0.1·σ in
    /// pixels), adaptive's first step.
    #[arg(long, default_value_t = 0.1)]
    pub step_size: f64,
    /// Adaptive: largest local error per step (normalised units).
    #[arg(long, default_value_t = 0.1)]
    pub tolerance: f64,
    #[arg(long, default_value_t = 5000)]
    pub max_steps: usize,
    /// Stop when the distance to the target (normalised units) is at most this.
    #[arg(long, default_value_t = 1.0)]
    pub threshold: f64,
    /// Give up after this many Jacobian evaluations without 0.01 of progress (default: 200
    /// for euler, 25 for adaptive).
    #[arg(long)]
    pub stall_window: Option<usize>,
    /// Stop as soon as the prediction becomes the target's.
    #[arg(long)]
    pub flip_target: bool,
    /// direct: one walk; auto: when the direct walk stalls, steer it through training images
    /// (detours on the same leaf toward images near the target, kept when they end closer).
    #[arg(long, default_value = "direct")]
    pub via: ViaArg,
    /// Seed of the noise-leaf direction (pair k of --pairs uses seed + k) and of eval-paths'
    /// pair draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub steer: SteerArgs,
}

/// Steering for `--via auto`.
#[derive(Args, Debug, Clone)]
pub struct SteerArgs {
    /// Training images tried per steering round: this many nearest the target and as many
    /// nearest the current end.
    #[arg(long, default_value_t = 4)]
    pub via_candidates: usize,
    /// Steering rounds at most.
    #[arg(long, default_value_t = 4)]
    pub via_rounds: usize,
}

/// The nonlinearities a variant may swap in, with PyTorch's default parameters.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivationArg {
    Relu,
    LeakyRelu,
    Elu,
    /// The exact (erf) GELU.
    Gelu,
    /// GELU's tanh approximation.
    GeluTanh,
    Silu,
    Sigmoid,
    Tanh,
    Softplus,
}

impl ActivationArg {
    pub fn activation(self) -> Activation {
        match self {
            ActivationArg::Relu => Activation::Relu,
            ActivationArg::LeakyRelu => Activation::LeakyRelu { negative_slope: 0.01 },
            ActivationArg::Elu => Activation::Elu { alpha: 1.0 },
            ActivationArg::Gelu => Activation::Gelu { form: GeluForm::Erf },
            ActivationArg::GeluTanh => Activation::Gelu { form: GeluForm::Tanh },
            ActivationArg::Silu => Activation::Silu,
            ActivationArg::Sigmoid => Activation::Sigmoid,
            ActivationArg::Tanh => Activation::Tanh,
            ActivationArg::Softplus => Activation::Softplus { beta: 1.0, threshold: 20.0 },
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolingArg {
    Max,
    Avg,
}

impl PoolingArg {
    pub fn kind(self) -> PoolKind {
        match self {
            PoolingArg::Max => PoolKind::Max,
            PoolingArg::Avg => PoolKind::Avg,
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeafArg {
    Data,
    Noise,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntegratorArg {
    Euler,
    Adaptive,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViaArg {
    Direct,
    Auto,
}

#[derive(Args, Debug)]
pub struct EvalPathsArgs {
    /// Random pairs of test images (drawn with --seed).
    #[arg(long, default_value_t = 50)]
    pub pairs: usize,
    /// The split pairs are drawn from.
    #[arg(long, default_value = "mnist:test")]
    pub data: DatasetRef,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub walk: PathWalkArgs,
    /// Also steer stalled pairs through training images (`--via auto`).
    #[arg(long)]
    pub with_via: bool,
    /// Walk only shard K of N (e.g. 2/4) of the pairs, written as eval-paths-shard-K-of-N.json
    /// for `leafwalk merge`.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<crate::commands::shard::Shard>,
    /// Output folder: eval-paths.json and paths.png.
    #[arg(long)]
    pub out: PathBuf,
    /// Print the JSON report on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct StudyArgs {
    /// The study: shared settings, evaluators and the model families (TOML; see study/grid.toml).
    #[arg(long, default_value = "study/grid.toml")]
    pub config: PathBuf,
    /// Output folder: runs/ (trained models, reused on reruns), rows/ (one JSON per row),
    /// study.json, study.md, study-closure.png, study-frames.png.
    #[arg(long)]
    pub out: PathBuf,
    /// Only these rows (FAMILY@STAGE, comma-separated), e.g. mnist-relu-max@1.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Random test pairs per model (default: the config's).
    #[arg(long)]
    pub pairs: Option<usize>,
    /// Measure only shard K of N (e.g. 2/4) of the rows (in the config's order, training what
    /// they need), written as study-shard-K-of-N.json for `leafwalk merge`.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<crate::commands::shard::Shard>,
    /// Print the JSON report on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct WalkArgs {
    /// Start: image file, dataset entry NAME:SPLIT:INDEX or FILE.safetensors[:NAME]#INDEX.
    #[arg(long)]
    pub from: ImageSource,
    /// `random` (standard normal, from --seed) or an image (file or dataset entry) whose
    /// difference from the start is the direction.
    #[arg(long, default_value = "random")]
    pub direction: String,
    /// kernel (noise leaf, prediction kept) or leaf.
    #[arg(long, default_value = "kernel")]
    pub subspace: SubspaceArg,
    #[arg(long, default_value_t = 250)]
    pub steps: usize,
    /// Step length in normalised units.
    #[arg(long, default_value_t = 0.1)]
    pub step_size: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value = "auto")]
    pub invert: Invert,
    /// Output folder (created; must not already hold a walk).
    #[arg(long)]
    pub out: PathBuf,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum SubspaceArg {
    Kernel,
    Leaf,
}

#[cfg(feature = "hub")]
#[derive(Args, Debug)]
pub struct FetchArgs {
    /// Dataset to download: mnist or cifar10.
    #[arg(long)]
    pub download: String,
}

#[derive(Args, Debug)]
pub struct OodScoreArgs {
    /// Image sets: image files, folders, IDX files, NAME:SPLIT, NAME:SPLIT:INDEX or
    /// FILE.safetensors[:NAME] arrays of pixels in [0, 1].
    #[arg(long, required = true, num_args = 1..)]
    pub inputs: Vec<String>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Scores: all, or a comma-separated list of leaf-distance, pixel-leaf-distance, trace,
    /// spectrum, msp, energy, odin, mahalanobis, gradnorm.
    #[arg(long, default_value = "all")]
    pub score: String,
    /// Images read from each input set at most.
    #[arg(long)]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub projection: ProjectionArgs,
    /// Write one row per image here (CSV: name, prediction, probability, one column per score).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct EvalOodArgs {
    /// The in-distribution set.
    #[arg(long = "in", default_value = "mnist:test")]
    pub in_set: String,
    /// OOD sets, comma-separated: NAME:SPLIT, IDX files, folders, noise:uniform, noise:gaussian,
    /// transform:flip, transform:invert, transform:noiseS.
    #[arg(
        long,
        default_value = "fashion-mnist:test,noise:uniform,noise:gaussian,transform:flip,transform:invert,transform:noise0.5"
    )]
    pub ood: String,
    /// Scores: all, or a comma-separated list (see ood-score).
    #[arg(long, default_value = "all")]
    pub scores: String,
    /// Images per set at most (the leaf distance walks for each; all 2,000 test images take
    /// about four times as long as the default).
    #[arg(long, default_value_t = 500)]
    pub limit: usize,
    /// Seed of the noise sets.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub projection: ProjectionArgs,
    /// Compute only shard K of N (e.g. 2/4): that part of every set, written as
    /// eval-ood-shard-K-of-N.json for `leafwalk merge`.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<crate::commands::shard::Shard>,
    /// Output folder: eval-ood.json, eval-ood.md and roc-<set>.png per OOD set.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The shard files of one run (COMMAND-shard-K-of-N.json), every K once.
    #[arg(required = true)]
    pub parts: Vec<PathBuf>,
    /// Output folder of the merged report.
    #[arg(long)]
    pub out: PathBuf,
}

/// The walks of a projection onto the data leaf (`ood-score`, `eval-ood`, `denoise`,
/// `eval-denoise`).
#[derive(Args, Debug, Clone)]
pub struct ProjectionArgs {
    /// Training images each projection walks from (the nearest in pixels).
    #[arg(long, default_value_t = 2)]
    pub anchors: usize,
    /// Steps each walk takes at most (adaptive integrator).
    #[arg(long, default_value_t = 200)]
    pub max_steps: usize,
}

#[derive(Args, Debug)]
pub struct DenoiseArgs {
    /// Image sets: image files, folders, IDX files, NAME:SPLIT, NAME:SPLIT:INDEX or
    /// FILE.safetensors[:NAME] arrays of pixels in [0, 1].
    #[arg(long, required = true, num_args = 1..)]
    pub inputs: Vec<String>,
    /// Images read from each input set at most.
    #[arg(long)]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub projection: ProjectionArgs,
    /// Output folder: NNN-denoised.png per image and sheet.png (inputs above their projections).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct EvalDenoiseArgs {
    /// The clean images (a split).
    #[arg(long, default_value = "mnist:test")]
    pub data: DatasetRef,
    /// Noise levels σ (Gaussian, pixels in [0, 1], clipped), comma-separated.
    #[arg(long, default_value = "0.1,0.3,0.5", allow_hyphen_values = true)]
    pub sigma: String,
    /// Test images at most.
    #[arg(long, default_value_t = 200)]
    pub limit: usize,
    /// Noisy training images the blur width and PCA's k are tuned on.
    #[arg(long, default_value_t = 200)]
    pub tune_images: usize,
    /// Seed of the noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub projection: ProjectionArgs,
    /// Denoise only shard K of N (e.g. 2/4) of the --limit images, written as
    /// eval-denoise-shard-K-of-N.json for `leafwalk merge` (the tuning runs in every shard).
    #[arg(long, value_name = "K/N")]
    pub shard: Option<crate::commands::shard::Shard>,
    /// Output folder: eval-denoise.json, eval-denoise.md and sheet-sigma<σ>.png per level.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// The image to start from: a file, NAME:SPLIT:INDEX or FILE.safetensors[:NAME]#INDEX.
    #[arg(long)]
    pub from: ImageSource,
    /// Walks (images generated).
    #[arg(long, default_value_t = 8)]
    pub count: usize,
    /// Steps per walk (the images drift from data-like to noisy as walks grow long: 300 steps
    /// of 0.25 already give sevens the model is sure of that no one would draw).
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    /// Step length, normalised units (the paper's 0.1).
    #[arg(long, default_value_t = 0.1)]
    pub step_size: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Invert image files (MNIST digits are white on black); auto inverts when the border is
    /// brighter than the centre.
    #[arg(long, default_value = "auto")]
    pub invert: Invert,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Output folder: grid.png and generate.json.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// The first dataset split.
    #[arg(long, default_value = "mnist:test")]
    pub a: DatasetRef,
    /// The second dataset split.
    #[arg(long, default_value = "fashion-mnist:test")]
    pub b: DatasetRef,
    /// Images of each split at most.
    #[arg(long, default_value_t = 500)]
    pub limit: usize,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Output folder: compare.json and spectrum.png.
    #[arg(long)]
    pub out: PathBuf,
}
