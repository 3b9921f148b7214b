//! SGD and AdamW whose state can be saved and restored.
//!
//! candle-nn's `AdamW` keeps its moments private, so a resumed run could not continue where it
//! stopped; these two keep theirs as named tensors (`optimizer.m.<param>`, `optimizer.v.<param>`)
//! that travel in the run's resume file. The update rules are PyTorch's.

use std::{fmt, str::FromStr};

use candle_core::{backprop::GradStore, Result, Tensor, Var};

/// Which update rule an [`Optimizer`] applies; parses from and prints as `sgd` or `adamw`, the
/// values of `--optimizer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerKind {
    /// Plain SGD (no momentum, no weight decay): the paper's optimizer.
    Sgd,
    /// AdamW with β = (0.9, 0.999), ε = 1e-8, weight decay 0.01 (PyTorch's defaults).
    AdamW,
}

impl fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::AdamW => "adamw",
        })
    }
}

impl FromStr for OptimizerKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "sgd" => Ok(OptimizerKind::Sgd),
            "adamw" => Ok(OptimizerKind::AdamW),
            _ => Err(format!("unknown optimizer '{s}' (known: sgd, adamw)")),
        }
    }
}

struct Moments {
    m: Tensor,
    v: Tensor,
}

/// SGD or AdamW over a model's trainable variables, updating them in place, with state a resume
/// file can carry ([`Optimizer::state`], [`Optimizer::restore`]).
pub struct Optimizer {
    kind: OptimizerKind,
    lr: f64,
    params: Vec<(String, Var)>,
    /// AdamW only: first and second moments per parameter, and the number of updates so far.
    moments: Vec<Moments>,
    updates: usize,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;
const WEIGHT_DECAY: f64 = 0.01;
const STATE_PREFIX: &str = "optimizer.";

impl Optimizer {
    /// An optimizer of `kind` with learning rate `lr` over `params`, (name, variable) pairs as
    /// `Classifier::trainable_vars` gives them; the names key the saved state. AdamW's moments
    /// start at zero (allocated on each variable's device); errs only if that allocation fails.
    pub fn new(kind: OptimizerKind, lr: f64, params: Vec<(String, Var)>) -> Result<Self> {
        let moments = match kind {
            OptimizerKind::Sgd => Vec::new(),
            OptimizerKind::AdamW => params
                .iter()
                .map(|(_, p)| Ok(Moments { m: p.zeros_like()?, v: p.zeros_like()? }))
                .collect::<Result<_>>()?,
        };
        Ok(Self { kind, lr, params, moments, updates: 0 })
    }

    /// One update of every parameter that has a gradient in `grads`, the others left as they
    /// are: SGD w ← w − lr·g; AdamW PyTorch's rule (bias-corrected moments, decoupled weight
    /// decay). Counts as an update even when no parameter had a gradient. Errs when a gradient
    /// does not fit its parameter's shape, dtype or device.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.updates += 1;
        match self.kind {
            OptimizerKind::Sgd => {
                for (_, p) in &self.params {
                    if let Some(g) = grads.get(p) {
                        p.set(&(p.as_tensor() - (g * self.lr)?)?)?;
                    }
                }
            }
            OptimizerKind::AdamW => {
                let t = self.updates as i32;
                let (bias1, bias2) = (1.0 - BETA1.powi(t), 1.0 - BETA2.powi(t));
                for ((_, p), mom) in self.params.iter().zip(self.moments.iter_mut()) {
                    let Some(g) = grads.get(p) else { continue };
                    // Detached: gradients carry their autograd history, and a moment built
                    // from them would keep every earlier step's graph alive (≈30 MB a step).
                    let g = g.detach();
                    mom.m = ((&mom.m * BETA1)? + (&g * (1.0 - BETA1))?)?.detach();
                    mom.v = ((&mom.v * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?.detach();
                    let update = ((&mom.m / bias1)? / ((&mom.v / bias2)?.sqrt()? + EPS)?)?;
                    let decayed = (p.as_tensor() * (1.0 - self.lr * WEIGHT_DECAY))?;
                    p.set(&(decayed - (update * self.lr)?)?)?;
                }
            }
        }
        Ok(())
    }

    /// Updates made so far: by [`Optimizer::step`] since creation, plus the count given to
    /// [`Optimizer::restore`]. AdamW's bias correction depends on it, so it is saved with the
    /// state.
    pub fn updates(&self) -> usize {
        self.updates
    }

    /// The optimizer's state as named tensors, for the resume file.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .zip(&self.moments)
            .flat_map(|((name, _), mom)| {
                [(format!("{STATE_PREFIX}m.{name}"), mom.m.clone()), (format!("{STATE_PREFIX}v.{name}"), mom.v.clone())]
            })
            .collect()
    }

    /// Restores what [`Optimizer::state`] saved after `updates` updates; `take` removes a
    /// named tensor from the resume file's map (missing → error naming it).
    pub fn restore(&mut self, updates: usize, mut take: impl FnMut(&str) -> Result<Tensor>) -> Result<()> {
        self.updates = updates;
        for ((name, _), mom) in self.params.iter().zip(self.moments.iter_mut()) {
            mom.m = take(&format!("{STATE_PREFIX}m.{name}"))?;
            mom.v = take(&format!("{STATE_PREFIX}v.{name}"))?;
        }
        Ok(())
    }

    /// Whether a tensor name from a resume file belongs to the optimizer's state (the
    /// `optimizer.` prefix of [`Optimizer::state`]) rather than to the model.
    pub fn is_state(name: &str) -> bool {
        name.starts_with(STATE_PREFIX)
    }
}
