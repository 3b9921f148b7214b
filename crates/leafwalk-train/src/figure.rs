//! `trace.png`: the paper's training figure — mean trace of G on the reference batch and test
//! accuracy against the training step.

use std::path::Path;

use leafwalk_plot::{line_chart, LineChart, Series};

use crate::{LogRecord, Result};

pub(crate) fn trace_figure(path: &Path, history: &[LogRecord]) -> Result<()> {
    let trace: Vec<(f64, f64)> =
        history.iter().filter_map(|r| Some((r.step as f64, r.geometry.as_ref()?.mean_trace_g))).collect();
    let accuracy: Vec<(f64, f64)> =
        history.iter().filter_map(|r| Some((r.step as f64, 100.0 * r.test_accuracy?))).collect();
    let chart = LineChart {
        title: "Information in G over training".into(),
        x_label: "training step".into(),
        y_label: "mean trace of G (reference batch)".into(),
        log_y: true,
        series: vec![Series { label: "mean trace G".into(), points: trace }],
        secondary: Some(("test accuracy (%)".into(), vec![Series { label: "test accuracy".into(), points: accuracy }])),
    };
    Ok(line_chart(path, &chart)?)
}
