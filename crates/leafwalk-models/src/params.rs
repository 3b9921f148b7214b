//! Where a network's parameters come from: a seeded initialiser or a checkpoint's tensors.
//!
//! Both are a candle `SimpleBackend`, so one construction path (`vb.pp("conv1")` …) serves a
//! fresh model and a loaded one. Every parameter handed out becomes a `Var` in the model's
//! `VarMap` (trainable, and saved in construction order), and the names used are recorded so
//! that unused checkpoint tensors can be reported.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::{var_builder::SimpleBackend, Init, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

enum Origin {
    /// Samples the layer's `Init` hint from a ChaCha8 stream: the same seed gives the same
    /// weights on every machine, unlike candle's CPU RNG which cannot be seeded.
    Seeded(Box<ChaCha8Rng>),
    Loaded(HashMap<String, Tensor>),
}

/// A cheap handle (clones share state): `VarBuilder::from_backend` takes ownership of one
/// clone, the caller keeps another to read back the filled `VarMap` and the names used.
#[derive(Clone)]
pub(crate) struct ParamSource {
    origin: Arc<Mutex<Origin>>,
    varmap: VarMap,
    used: Arc<Mutex<Vec<String>>>,
}

impl ParamSource {
    pub(crate) fn seeded(seed: u64) -> Self {
        Self::new(Origin::Seeded(Box::new(ChaCha8Rng::seed_from_u64(seed))))
    }

    pub(crate) fn loaded(tensors: HashMap<String, Tensor>) -> Self {
        Self::new(Origin::Loaded(tensors))
    }

    fn new(origin: Origin) -> Self {
        Self { origin: Arc::new(Mutex::new(origin)), varmap: VarMap::new(), used: Arc::new(Mutex::new(Vec::new())) }
    }

    pub(crate) fn varmap(&self) -> VarMap {
        self.varmap.clone()
    }

    /// Parameter names in the order the network asked for them.
    pub(crate) fn used(&self) -> Vec<String> {
        self.used.lock().map(|u| u.clone()).unwrap_or_default()
    }

    /// Checkpoint tensors the network did not ask for (PyTorch's `num_batches_tracked`
    /// counters are bookkeeping, not parameters, and are ignored).
    pub(crate) fn unused(&self) -> Vec<String> {
        let used = self.used();
        let Ok(origin) = self.origin.lock() else {
            return Vec::new();
        };
        let Origin::Loaded(tensors) = &*origin else {
            return Vec::new();
        };
        let mut unused: Vec<String> =
            tensors.keys().filter(|k| !used.contains(k) && !k.ends_with("num_batches_tracked")).cloned().collect();
        unused.sort();
        unused
    }
}

fn sample(init: Init, shape: &Shape, rng: &mut ChaCha8Rng) -> candle_core::Result<Tensor> {
    let n = shape.elem_count();
    let values: Vec<f32> = match init {
        Init::Const(c) => vec![c as f32; n],
        Init::Uniform { lo, up } => {
            let (lo, up) = (lo as f32, up as f32);
            (0..n).map(|_| lo + (up - lo) * rng.random::<f32>()).collect()
        }
        other => candle_core::bail!("seeded initialisation does not support {other:?}"),
    };
    Tensor::from_vec(values, shape, &Device::Cpu)
}

impl SimpleBackend for ParamSource {
    fn get(&self, shape: Shape, name: &str, init: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let mut origin = self.origin.lock().map_err(|_| candle_core::Error::Msg("parameter source poisoned".into()))?;
        let tensor = match &mut *origin {
            Origin::Seeded(rng) => sample(init, &shape, rng)?,
            Origin::Loaded(tensors) => {
                let t = tensors.get(name).ok_or_else(|| candle_core::Error::Msg(format!("missing tensor '{name}'")))?;
                if t.shape() != &shape {
                    candle_core::bail!(
                        "tensor '{name}' has shape {:?}, the architecture needs {:?}",
                        t.dims(),
                        shape.dims()
                    );
                }
                t.clone()
            }
        };
        let var = Var::from_tensor(&tensor.to_dtype(dtype)?.to_device(dev)?)?;
        let data = self.varmap.data();
        let mut data = data.lock().map_err(|_| candle_core::Error::Msg("var map poisoned".into()))?;
        data.insert(name.to_string(), var.clone());
        if let Ok(mut used) = self.used.lock() {
            used.push(name.to_string());
        }
        Ok(var.as_tensor().clone())
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("parameter '{name}' requested without a shape")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        match self.origin.lock().as_deref() {
            Ok(Origin::Loaded(tensors)) => tensors.contains_key(name),
            _ => true,
        }
    }
}
