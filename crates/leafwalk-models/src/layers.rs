//! The layer file (`--layers net.json`): a network written the way `print(model)` shows it in
//! PyTorch, for a `state_dict` exported without ONNX. One JSON object:
//!
//! ```json
//! {
//!   "input": [1, 28, 28],
//!   "layers": [
//!     {"name": "stem.0", "type": "Conv2d", "in_channels": 1, "out_channels": 16, "kernel_size": 3, "padding": 1, "bias": false},
//!     {"name": "stem.1", "type": "BatchNorm2d", "num_features": 16},
//!     {"name": "stem.2", "type": "ReLU"},
//!     {"name": "blocks.0.c1", "type": "Conv2d", "in_channels": 16, "out_channels": 16, "kernel_size": 3, "padding": 1},
//!     {"name": "blocks.0.add", "type": "add", "inputs": ["blocks.0.c1", "stem.2"]},
//!     {"name": "pool", "type": "AdaptiveAvgPool2d", "output_size": 1},
//!     {"name": "flatten", "type": "Flatten"},
//!     {"name": "head", "type": "Linear", "in_features": 16, "out_features": 10}
//!   ]
//! }
//! ```
//!
//! `input` is one image's `[channels, height, width]`. Each layer has a `name` — its PyTorch
//! module path, so that its parameters are the `state_dict`'s `<name>.weight`, `<name>.bias`,
//! `<name>.running_mean`, … — a `type`, PyTorch's own arguments with PyTorch's defaults, and
//! optionally `inputs`: the names of the layers it reads (`"input"` for the image); by default
//! the layer before it. The types: `Conv2d`, `Linear`, `BatchNorm2d`, `BatchNorm1d`, `ReLU`,
//! `LeakyReLU`, `ELU`, `GELU`, `SiLU`, `Sigmoid`, `Tanh`, `Softplus`, `MaxPool2d`,
//! `AvgPool2d`, `AdaptiveAvgPool2d` (output size 1), `Flatten`, `Dropout`, `Identity`,
//! `Softmax`, `LogSoftmax` (last layer only), and the functional `add`, `sub`, `mul`, `div`
//! (two `inputs`, or one and a `constant`: a number or one per channel) and `reshape`
//! (`shape`: one image's new dimensions). An unknown type or argument is an error naming the
//! layer.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::description::{
    Activation, Arith, BatchNorm, Conv2d, Description, DescriptionError, Dims, GeluForm, Linear, Node, Op, Pool,
};
use crate::error::ModelError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LayerFile {
    input: Vec<usize>,
    layers: Vec<Layer>,
}

#[derive(Deserialize)]
struct Layer {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    inputs: Option<Vec<String>>,
    #[serde(flatten)]
    arguments: Map<String, Value>,
}

/// Reads and parses the layer file at `path`; errors name the file (and the layer at fault).
pub fn read_layers(path: &Path) -> Result<Description, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| leafwalk_data::DataError::io(path, e))?;
    parse_layers(&text).map_err(|source| ModelError::LayerFile { path: path.to_path_buf(), source })
}

/// Parses a layer file into a checked description; errors name the layer at fault.
pub fn parse_layers(json: &str) -> Result<Description, DescriptionError> {
    let file: LayerFile = serde_json::from_str(json).map_err(|e| DescriptionError {
        node: "file".into(),
        kind: "JSON",
        problem: format!("not a layer file: {e}"),
    })?;
    let input = match file.input[..] {
        [c, h, w] if c * h * w > 0 => Dims::new(c, h, w),
        _ => {
            return Err(DescriptionError {
                node: "input".into(),
                kind: "Input",
                problem: format!("{:?} is not [channels, height, width]", file.input),
            })
        }
    };
    let mut values: HashMap<String, usize> = HashMap::from([("input".to_string(), 0)]);
    let mut nodes: Vec<Node> = Vec::new();
    for layer in file.layers {
        let mut reader = Arguments { layer: &layer, used: Vec::new() };
        let op = reader.op()?;
        reader.finish()?;
        let inputs = match &layer.inputs {
            None if op.arity() == 1 => vec![nodes.len()],
            None => return Err(reader.error(format!("needs {} \"inputs\"", op.arity()))),
            Some(names) => names
                .iter()
                .map(|n| values.get(n).copied().ok_or_else(|| reader.error(format!("reads '{n}', no earlier layer"))))
                .collect::<Result<_, _>>()?,
        };
        if values.insert(layer.name.clone(), nodes.len() + 1).is_some() {
            return Err(reader.error("is named twice".into()));
        }
        nodes.push(Node { name: layer.name.clone(), op, inputs });
    }
    let description = Description { input, nodes };
    description.shapes()?;
    Ok(description)
}

/// One layer's arguments, each read once; those left over are errors.
struct Arguments<'l> {
    layer: &'l Layer,
    used: Vec<&'static str>,
}

impl Arguments<'_> {
    fn error(&self, problem: String) -> DescriptionError {
        DescriptionError { node: self.layer.name.clone(), kind: kind_name(&self.layer.kind), problem }
    }

    fn value(&mut self, key: &'static str) -> Option<&Value> {
        self.used.push(key);
        self.layer.arguments.get(key)
    }

    fn usize(&mut self, key: &'static str, default: Option<usize>) -> Result<usize, DescriptionError> {
        match self.value(key).map(Value::as_u64) {
            Some(Some(v)) => Ok(v as usize),
            Some(None) => Err(self.error(format!("'{key}' must be a whole number"))),
            None => default.ok_or_else(|| self.error(format!("needs '{key}'"))),
        }
    }

    /// A size PyTorch takes as one number or a pair.
    fn pair(&mut self, key: &'static str, default: Option<[usize; 2]>) -> Result<[usize; 2], DescriptionError> {
        let bad = |s: &Self| s.error(format!("'{key}' must be a whole number or a pair of them"));
        match self.value(key).cloned() {
            Some(Value::Number(n)) => n.as_u64().map(|v| [v as usize; 2]).ok_or_else(|| bad(self)),
            Some(Value::Array(a)) => match &a[..] {
                [Value::Number(h), Value::Number(w)] => match (h.as_u64(), w.as_u64()) {
                    (Some(h), Some(w)) => Ok([h as usize, w as usize]),
                    _ => Err(bad(self)),
                },
                _ => Err(bad(self)),
            },
            Some(_) => Err(bad(self)),
            None => default.ok_or_else(|| self.error(format!("needs '{key}'"))),
        }
    }

    fn float(&mut self, key: &'static str, default: f64) -> Result<f64, DescriptionError> {
        match self.value(key).map(Value::as_f64) {
            Some(Some(v)) => Ok(v),
            Some(None) => Err(self.error(format!("'{key}' must be a number"))),
            None => Ok(default),
        }
    }

    fn bool(&mut self, key: &'static str, default: bool) -> Result<bool, DescriptionError> {
        match self.value(key).map(Value::as_bool) {
            Some(Some(v)) => Ok(v),
            Some(None) => Err(self.error(format!("'{key}' must be true or false"))),
            None => Ok(default),
        }
    }

    /// An argument PyTorch accepts that changes nothing here (`inplace`, dropout's `p`).
    fn ignored(&mut self, key: &'static str) {
        self.used.push(key);
    }

    /// Requires `key`, when given, to be `expected`.
    fn only(&mut self, key: &'static str, expected: Value, why: &str) -> Result<(), DescriptionError> {
        match self.value(key).cloned() {
            Some(v) if v != expected => Err(self.error(format!("'{key}' = {v} is not supported ({why})"))),
            _ => Ok(()),
        }
    }

    fn op(&mut self) -> Result<Op, DescriptionError> {
        let kind = self.layer.kind.clone();
        let activation = |a: Activation| Ok(Op::Activation(a));
        match kind.as_str() {
            "Conv2d" => {
                let kernel = self.pair("kernel_size", None)?;
                Ok(Op::Conv2d(Conv2d {
                    in_channels: self.usize("in_channels", None)?,
                    out_channels: self.usize("out_channels", None)?,
                    kernel,
                    stride: self.pair("stride", Some([1, 1]))?,
                    padding: self.pair("padding", Some([0, 0]))?,
                    dilation: self.pair("dilation", Some([1, 1]))?,
                    groups: self.usize("groups", Some(1))?,
                    bias: self.bool("bias", true)?,
                }))
            }
            "Linear" => Ok(Op::Linear(Linear {
                in_features: self.usize("in_features", None)?,
                out_features: self.usize("out_features", None)?,
                bias: self.bool("bias", true)?,
            })),
            "BatchNorm2d" | "BatchNorm1d" => {
                self.only("affine", Value::Bool(true), "the state_dict must hold weight and bias")?;
                self.only("track_running_stats", Value::Bool(true), "evaluation needs running statistics")?;
                Ok(Op::BatchNorm(BatchNorm {
                    channels: self.usize("num_features", None)?,
                    eps: self.float("eps", 1e-5)?,
                    momentum: self.float("momentum", 0.1)?,
                }))
            }
            "ReLU" | "SiLU" | "Sigmoid" | "Tanh" => {
                self.ignored("inplace");
                activation(match kind.as_str() {
                    "ReLU" => Activation::Relu,
                    "SiLU" => Activation::Silu,
                    "Sigmoid" => Activation::Sigmoid,
                    _ => Activation::Tanh,
                })
            }
            "LeakyReLU" => {
                self.ignored("inplace");
                activation(Activation::LeakyRelu { negative_slope: self.float("negative_slope", 0.01)? })
            }
            "ELU" => {
                self.ignored("inplace");
                activation(Activation::Elu { alpha: self.float("alpha", 1.0)? })
            }
            "GELU" => {
                let form = match self.value("approximate").cloned() {
                    None => GeluForm::Erf,
                    Some(Value::String(s)) if s == "none" => GeluForm::Erf,
                    Some(Value::String(s)) if s == "tanh" => GeluForm::Tanh,
                    Some(other) => {
                        return Err(self.error(format!("'approximate' = {other} is not \"none\" or \"tanh\"")))
                    }
                };
                activation(Activation::Gelu { form })
            }
            "Softplus" => activation(Activation::Softplus {
                beta: self.float("beta", 1.0)?,
                threshold: self.float("threshold", 20.0)?,
            }),
            "MaxPool2d" | "AvgPool2d" => {
                let kernel = self.pair("kernel_size", None)?;
                let max = kind == "MaxPool2d";
                let pool = Pool {
                    kernel,
                    stride: self.pair("stride", Some(kernel))?,
                    padding: self.pair("padding", Some([0, 0]))?,
                    dilation: if max { self.pair("dilation", Some([1, 1]))? } else { [1, 1] },
                    ceil_mode: self.bool("ceil_mode", false)?,
                    // Meaningless for max-pooling; PyTorch's default, as `Pool::new`.
                    count_include_pad: max || self.bool("count_include_pad", true)?,
                };
                if max {
                    self.only("return_indices", Value::Bool(false), "a classifier returns scores")?;
                } else {
                    self.only("divisor_override", Value::Null, "not supported")?;
                }
                Ok(if max { Op::MaxPool2d(pool) } else { Op::AvgPool2d(pool) })
            }
            "AdaptiveAvgPool2d" => {
                if self.pair("output_size", None)? != [1, 1] {
                    return Err(self.error("only 'output_size' 1 (global average pooling) is supported".into()));
                }
                Ok(Op::GlobalAvgPool)
            }
            "Flatten" => {
                self.only("start_dim", Value::from(1), "the batch axis must stay apart")?;
                self.only("end_dim", Value::from(-1), "only flattening to a vector is supported")?;
                Ok(Op::Flatten)
            }
            "Dropout" | "Identity" => {
                self.ignored("p");
                self.ignored("inplace");
                Ok(Op::Identity)
            }
            "Softmax" | "LogSoftmax" => {
                if !matches!(self.value("dim").and_then(Value::as_i64), None | Some(1) | Some(-1)) {
                    return Err(self.error("normalises over an axis other than the classes".into()));
                }
                Ok(Op::Softmax { log: kind == "LogSoftmax" })
            }
            "add" | "sub" | "mul" | "div" => {
                let arith = match kind.as_str() {
                    "add" => Arith::Add,
                    "sub" => Arith::Sub,
                    "mul" => Arith::Mul,
                    _ => Arith::Div,
                };
                let constant_first = self.bool("constant_first", false)?;
                match self.value("constant").cloned() {
                    None => Ok(Op::Binary { arith }),
                    Some(Value::Number(n)) => {
                        let v = n.as_f64().unwrap_or(f64::NAN) as f32;
                        Ok(Op::Constant { arith, values: vec![v], constant_first })
                    }
                    Some(Value::Array(a)) => {
                        let values: Option<Vec<f32>> = a.iter().map(|v| v.as_f64().map(|v| v as f32)).collect();
                        let values = values.ok_or_else(|| self.error("'constant' must hold numbers".into()))?;
                        Ok(Op::Constant { arith, values, constant_first })
                    }
                    Some(_) => Err(self.error("'constant' must be a number or a list of them".into())),
                }
            }
            "reshape" => {
                let shape: Option<Vec<usize>> = match self.value("shape") {
                    Some(Value::Array(a)) => a.iter().map(|v| v.as_u64().map(|v| v as usize)).collect(),
                    _ => None,
                };
                match shape.as_deref() {
                    Some(&[c, h, w]) => Ok(Op::Reshape { dims: Dims::new(c, h, w) }),
                    Some(&[f]) => Ok(Op::Reshape { dims: Dims::flat(f) }),
                    _ => Err(self.error("'shape' must be one image's [channels, height, width] or [features]".into())),
                }
            }
            other => Err(self.error(format!("unknown layer type '{other}'"))),
        }
    }

    /// Refuses arguments the layer's type does not take (a typo would otherwise be ignored).
    fn finish(&self) -> Result<(), DescriptionError> {
        match self.layer.arguments.keys().find(|k| !self.used.contains(&k.as_str())) {
            Some(key) => Err(self.error(format!("unknown argument '{key}'"))),
            None => Ok(()),
        }
    }
}

/// The layer type for messages, as a `'static` name.
fn kind_name(kind: &str) -> &'static str {
    const KNOWN: [&str; 27] = [
        "Conv2d",
        "Linear",
        "BatchNorm2d",
        "BatchNorm1d",
        "ReLU",
        "LeakyReLU",
        "ELU",
        "GELU",
        "SiLU",
        "Sigmoid",
        "Tanh",
        "Softplus",
        "MaxPool2d",
        "AvgPool2d",
        "AdaptiveAvgPool2d",
        "Flatten",
        "Dropout",
        "Identity",
        "Softmax",
        "LogSoftmax",
        "add",
        "sub",
        "mul",
        "div",
        "reshape",
        "Input",
        "JSON",
    ];
    KNOWN.into_iter().find(|k| *k == kind).unwrap_or("layer")
}
