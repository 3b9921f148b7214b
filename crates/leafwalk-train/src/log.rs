//! `train-log.jsonl`: one JSON object per line, appended as training goes.
//!
//! A killed run may leave records newer than its resume file (or half a line); resuming cuts
//! the log back to the resume step, so the log always describes exactly one uninterrupted run.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::Tally;

/// One line of `train-log.jsonl` ([`crate::LOG_FILE`]): a `"start"` record with the initial
/// geometry (when tracked), about ten `"batch"` records per epoch and one `"epoch"` record at
/// each epoch end. Absent optional fields are left out of the JSON.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LogRecord {
    /// `"batch"`: statistics of the batches since the previous record; `"epoch"`: of a whole
    /// epoch, with the test set's.
    pub event: String,
    /// Optimizer steps taken since the start of the run when the record was made (0 for
    /// `"start"`); resuming cuts the log back to records at or before the resume step.
    pub step: usize,
    /// The epoch the record belongs to, counted from 1 (0 for `"start"`).
    pub epoch: usize,
    /// Mean training loss and accuracy of the batches the record covers (none for "start").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Fraction in [0, 1] of the covered batches' images predicted correctly during their
    /// training steps (none for `"start"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_accuracy: Option<f64>,
    /// `"epoch"` only: mean negative log-likelihood (nats per image) over the test split, in
    /// evaluation mode, with the epoch's final weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_loss: Option<f64>,
    /// `"epoch"` only: fraction in [0, 1] of the test split predicted correctly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_accuracy: Option<f64>,
    /// Wall-clock seconds since the run started (interruptions excluded).
    pub seconds: f64,
    /// `"batch"` only: training throughput over the batches the record covers, in images per
    /// wall-clock second, the time spent measuring G excluded; 0 in other records.
    #[serde(default)]
    pub images_per_s: f64,
    /// Trace and rank of G on the reference batch, when tracked.
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pub geometry: Option<GeometryStats>,
}

/// Local data matrix statistics over the run's fixed reference batch.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GeometryStats {
    /// Mean over the reference images of trace G = Σᵢ pᵢ ‖∇ₓ log pᵢ‖², in pixel units (inputs in
    /// [0, 1]), with the model in evaluation mode.
    pub mean_trace_g: f64,
    /// Median of the same traces (NaN for an empty reference batch).
    pub median_trace_g: f64,
    /// `rank_hist[r]` = number of reference images where G has numerical rank r.
    pub rank_hist: Vec<usize>,
}

impl GeometryStats {
    pub(crate) fn new(traces: Vec<f64>, rank_hist: Vec<usize>) -> Self {
        let mean_trace_g = traces.iter().sum::<f64>() / traces.len().max(1) as f64;
        let median_trace_g = leafwalk_geometry::median(&traces).unwrap_or(f64::NAN);
        GeometryStats { mean_trace_g, median_trace_g, rank_hist }
    }
}

impl LogRecord {
    /// Before any update: the reference batch's geometry at initialisation (step 0).
    pub(crate) fn start(geometry: GeometryStats) -> Self {
        LogRecord {
            event: "start".into(),
            step: 0,
            epoch: 0,
            loss: None,
            train_accuracy: None,
            test_loss: None,
            test_accuracy: None,
            seconds: 0.0,
            images_per_s: 0.0,
            geometry: Some(geometry),
        }
    }

    pub(crate) fn batch(step: usize, epoch: usize, tally: &Tally, seconds: f64, window_seconds: f64) -> Self {
        LogRecord {
            event: "batch".into(),
            step,
            epoch,
            loss: Some(tally.mean_loss()),
            train_accuracy: Some(tally.accuracy()),
            test_loss: None,
            test_accuracy: None,
            seconds,
            images_per_s: tally.seen as f64 / window_seconds.max(1e-9),
            geometry: None,
        }
    }

    pub(crate) fn epoch(
        step: usize,
        epoch: usize,
        tally: &Tally,
        test_loss: f64,
        test_accuracy: f64,
        seconds: f64,
    ) -> Self {
        LogRecord {
            event: "epoch".into(),
            step,
            epoch,
            loss: Some(tally.mean_loss()),
            train_accuracy: Some(tally.accuracy()),
            test_loss: Some(test_loss),
            test_accuracy: Some(test_accuracy),
            seconds,
            images_per_s: 0.0,
            geometry: None,
        }
    }
}

pub(crate) fn append(path: &Path, record: &LogRecord) -> std::io::Result<()> {
    let line = serde_json::to_string(record)?;
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(file, "{line}")
}

/// Every record of the log (unreadable lines, e.g. one torn by a kill, are skipped).
pub(crate) fn read(path: &Path) -> std::io::Result<Vec<LogRecord>> {
    Ok(std::fs::read_to_string(path)?.lines().filter_map(|line| serde_json::from_str(line).ok()).collect())
}

/// Keeps the records with `step <= through` (none when `through` is `None`: a fresh run),
/// rewriting the file atomically.
pub(crate) fn truncate(path: &Path, through: Option<usize>) -> std::io::Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let mut kept = String::new();
    for line in text.lines() {
        match serde_json::from_str::<LogRecord>(line) {
            Ok(record) if through.is_some_and(|step| record.step <= step) => {
                kept.push_str(line);
                kept.push('\n');
            }
            _ => {}
        }
    }
    leafwalk_data::write_bytes_atomic(path, kept.as_bytes()).map_err(std::io::Error::other)
}
