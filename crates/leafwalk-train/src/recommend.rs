//! Which checkpoint of a run to use for geometry.
//!
//! The rule: among the epochs whose test accuracy reaches `min_accuracy` (default 95 %), the
//! one with the **highest trace of G over the epoch** — the mean trace of G on the reference
//! batch averaged over the epoch's tracking records (about ten during the epoch and one at its
//! end). That is a model which already separates the classes but still carries the most
//! information about its data leaf: trace G rises early in training and fades as the model
//! saturates. The epoch average, not the end-of-epoch value alone, because single
//! measurements swing by 2× from one record to the next. If no epoch reaches the floor, the
//! most accurate epoch; if G was not tracked, the first epoch that reaches the floor.

use crate::{checkpoint_name, LogRecord};

/// The checkpoint of a run that [`recommend`] picks for geometry, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Recommendation {
    /// The picked epoch, counted from 1.
    pub epoch: usize,
    /// Its checkpoint's file name inside the run folder (`epoch-XX.safetensors`), not a path.
    pub checkpoint: String,
    /// Its test accuracy, a fraction in [0, 1].
    pub test_accuracy: f64,
    /// The mean trace of G averaged over the epoch's tracking records.
    pub mean_trace_g: Option<f64>,
    /// The rule that picked it, in words.
    pub reason: String,
}

/// Picks the checkpoint to study from a run's log records `history`: among the epochs whose test
/// accuracy reaches `min_accuracy` (a fraction in [0, 1]), the one with the highest mean trace of
/// G averaged over its tracking records (about ten in the epoch and one at its end: a model that
/// already separates the classes but still carries the most information about its data leaf).
/// If no epoch reaches the floor, the most accurate one; if G was not tracked, the first epoch
/// that reaches it. `None` when `history` holds no `"epoch"` record with a test accuracy.
pub fn recommend(history: &[LogRecord], min_accuracy: f64) -> Option<Recommendation> {
    let epochs: Vec<(&LogRecord, f64)> =
        history.iter().filter(|r| r.event == "epoch").filter_map(|r| Some((r, r.test_accuracy?))).collect();
    let trace = |epoch_record: &LogRecord| {
        let values: Vec<f64> = history
            .iter()
            .filter(|r| r.epoch == epoch_record.epoch && r.event != "start")
            .filter_map(|r| Some(r.geometry.as_ref()?.mean_trace_g))
            .collect();
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    };
    let qualified: Vec<&(&LogRecord, f64)> = epochs.iter().filter(|(_, acc)| *acc >= min_accuracy).collect();
    let floor = 100.0 * min_accuracy;
    let (record, reason) = if qualified.is_empty() {
        let best = epochs.iter().max_by(|a, b| a.1.total_cmp(&b.1))?;
        (best.0, format!("no epoch reached {floor:.1} % test accuracy: the most accurate one"))
    } else if qualified.iter().all(|(r, _)| trace(r).is_some()) {
        let best = qualified.iter().max_by(|a, b| trace(a.0).unwrap_or(0.0).total_cmp(&trace(b.0).unwrap_or(0.0)))?;
        (best.0, format!("highest trace of G over the epoch among epochs with test accuracy ≥ {floor:.1} %"))
    } else {
        (qualified[0].0, format!("first epoch with test accuracy ≥ {floor:.1} % (G was not tracked)"))
    };
    Some(Recommendation {
        epoch: record.epoch,
        checkpoint: checkpoint_name(record.epoch),
        test_accuracy: record.test_accuracy.unwrap_or(0.0),
        mean_trace_g: trace(record),
        reason,
    })
}
