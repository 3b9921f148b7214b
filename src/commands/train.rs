use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use leafwalk_data::dataset_info;
use leafwalk_models::Variant;
use leafwalk_train::{train, TrainConfig};

use crate::cli::TrainArgs;

pub fn run(args: TrainArgs, data_root: &Path) -> anyhow::Result<ExitCode> {
    let config = TrainConfig {
        dataset: dataset_info(&args.dataset)?,
        arch: args.arch,
        variant: Variant {
            activation: args.activation.map(|a| a.activation()),
            pooling: args.pooling.map(|p| p.kind()),
        },
        normalisation: args.normalisation.normalisation(),
        epochs: args.epochs,
        lr: args.lr,
        batch_size: args.batch_size,
        optimizer: args.optimizer,
        seed: args.seed,
        out: args.out.clone(),
        data_root: data_root.to_path_buf(),
        checkpoint_every: args.checkpoint_every,
        resume: args.resume,
        progress: !args.json,
        reference_size: args.reference_size,
        min_accuracy: args.min_accuracy,
        device: args.device.device.open()?,
        adversarial: args.adversarial,
        snapshots: args.snapshot_at.clone(),
    };
    // First Ctrl-C: finish the current step, save the resume state and stop. A second one
    // exits at once; atomic writes mean no file is left half-written either way.
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nleafwalk: stopping after this step (Ctrl-C again to quit now)");
    })?;
    let summary = train(&config, |_| interrupted.load(Ordering::SeqCst))?;
    if args.json {
        let epochs: Vec<_> = summary
            .epochs
            .iter()
            .map(|e| {
                serde_json::json!({
                    "epoch": e.epoch, "step": e.step, "train_loss": e.train_loss,
                    "train_accuracy": e.train_accuracy, "test_loss": e.test_loss,
                    "test_accuracy": e.test_accuracy, "mean_trace_g": e.mean_trace_g, "checkpoint": e.checkpoint,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "out": args.out, "epochs": epochs, "interrupted_at": summary.interrupted_at,
                "recommended": summary.recommended.as_ref().map(|r| serde_json::json!({
                    "epoch": r.epoch, "checkpoint": args.out.join(&r.checkpoint), "test_accuracy": r.test_accuracy,
                    "mean_trace_g": r.mean_trace_g, "rule": r.reason,
                })),
            })
        );
    }
    if let (Some(r), None) = (&summary.recommended, summary.interrupted_at) {
        let trace = r.mean_trace_g.map_or(String::new(), |t| format!(", mean trace G {t:.4e}"));
        eprintln!(
            "recommended checkpoint: {} (test accuracy {:.2} %{trace}) — {}",
            args.out.join(&r.checkpoint).display(),
            100.0 * r.test_accuracy,
            r.reason
        );
    }
    if let Some(step) = summary.interrupted_at {
        eprintln!("leafwalk: interrupted at step {step}; continue with the same command plus --resume");
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::SUCCESS)
}
