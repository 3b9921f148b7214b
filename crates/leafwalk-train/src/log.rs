//! `train-log.jsonl`: one JSON object per line, appended as training goes.
//!
//! A killed run may leave records newer than its resume file (or half a line); resuming cuts
//! the log back to the resume step, so the log always describes exactly one uninterrupted run.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::Tally;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LogRecord {
    /// `"batch"`: statistics of the batches since the previous record; `"epoch"`: of a whole
    /// epoch, with the test set's.
    pub event: String,
    pub step: usize,
    pub epoch: usize,
    pub loss: f64,
    pub train_accuracy: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_accuracy: Option<f64>,
    /// Wall-clock seconds since the run started (interruptions excluded).
    pub seconds: f64,
    #[serde(default)]
    pub images_per_s: f64,
}

impl LogRecord {
    pub(crate) fn batch(step: usize, epoch: usize, tally: &Tally, seconds: f64, window_seconds: f64) -> Self {
        LogRecord {
            event: "batch".into(),
            step,
            epoch,
            loss: tally.mean_loss(),
            train_accuracy: tally.accuracy(),
            test_loss: None,
            test_accuracy: None,
            seconds,
            images_per_s: tally.seen as f64 / window_seconds.max(1e-9),
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
            loss: tally.mean_loss(),
            train_accuracy: tally.accuracy(),
            test_loss: Some(test_loss),
            test_accuracy: Some(test_accuracy),
            seconds,
            images_per_s: 0.0,
        }
    }
}

pub(crate) fn append(path: &Path, record: &LogRecord) -> std::io::Result<()> {
    let line = serde_json::to_string(record)?;
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(file, "{line}")
}

/// Keeps the records with `step <= step` (none when `step` is 0), rewriting the file atomically.
pub(crate) fn truncate(path: &Path, step: usize) -> std::io::Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let mut kept = String::new();
    for line in text.lines() {
        match serde_json::from_str::<LogRecord>(line) {
            Ok(record) if record.step <= step && step > 0 => {
                kept.push_str(line);
                kept.push('\n');
            }
            _ => {}
        }
    }
    leafwalk_data::write_atomic(path, |w| {
        w.write_all(kept.as_bytes()).map_err(|e| leafwalk_data::DataError::io(path, e))
    })
    .map_err(std::io::Error::other)
}
