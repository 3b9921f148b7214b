//! An ONNX graph translated node by node into a [`Description`]: each ONNX value is either
//! computed per point (a description value, with its ONNX rank) or a constant (initializers,
//! `Constant` nodes and whatever is computed from constants alone, e.g. shape arithmetic).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use leafwalk_models::description::{
    Activation, Arith, BatchNorm, Conv2d, Description, Dims, GeluForm, Linear, Node, Op, Pool,
};

use crate::patterns::{self, Fused};
use crate::proto::{AttributeProto, GraphProto, NodeProto};
use crate::tensor::{self, value_count, Constant, Data};
use crate::OnnxError;

/// A translated graph: the description and its parameters `(name, dims, values)`.
pub(crate) struct Translation {
    pub(crate) description: Description,
    pub(crate) tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

/// A translation error before the file's path is known.
pub(crate) enum Problem {
    Graph(String),
    Node { node: String, op: String, problem: String },
}

impl Problem {
    pub(crate) fn at(self, path: &Path) -> OnnxError {
        let path = PathBuf::from(path);
        match self {
            Problem::Graph(problem) => OnnxError::File { path, problem },
            Problem::Node { node, op, problem } => OnnxError::Node { path, node, op, problem },
        }
    }
}

/// A value computed per point: description value `index`, one point's dims, and the rank ONNX
/// gives it with the batch axis (4 for `[N, C, H, W]`, 2 for `[N, F]`).
#[derive(Clone, Copy, Debug)]
struct Computed {
    index: usize,
    dims: Dims,
    rank: usize,
}

#[derive(Clone, Debug)]
enum Value {
    Computed(Computed),
    Constant(Constant),
}

type NodeResult<T> = Result<T, String>;

pub(crate) fn translate(graph: &GraphProto, opset: i64, folder: &Path) -> Result<Translation, Problem> {
    let mut translator = Translator::new(graph, opset, folder)?;
    let scalar = |name: &str| match translator.values.get(name) {
        Some(Value::Constant(c)) if c.len() == 1 => c.floats().first().copied(),
        _ => None,
    };
    let fused = patterns::find(graph, &scalar, folder);
    for (position, node) in graph.node.iter().enumerate() {
        if fused.absorbed.contains(&position) {
            continue;
        }
        let op = node.op_type.clone();
        let named = |problem: String| Problem::Node { node: display_name(node, position), op: op.clone(), problem };
        if !(node.domain.is_empty() || node.domain == "ai.onnx") {
            return Err(named(format!("operator set '{}' is not supported", node.domain)));
        }
        let outputs = match fused.replaced.get(&position) {
            Some(Fused { input, activation }) => translator.fused(node, position, input, *activation),
            None => translator.node(node, position),
        }
        .map_err(named)?;
        for (name, value) in node.output.iter().zip(outputs) {
            translator.values.insert(name.clone(), value);
        }
    }
    translator.finish()
}

fn display_name(node: &NodeProto, position: usize) -> String {
    match node.name.is_empty() {
        true => format!("#{position}"),
        false => node.name.clone(),
    }
}

struct Translator<'g> {
    graph: &'g GraphProto,
    /// Where the model lies: tensors keeping their data outside the file keep it here.
    folder: &'g Path,
    opset: i64,
    values: HashMap<String, Value>,
    /// The batch size Shape reports: the input's when fixed, else 1.
    batch: usize,
    input: Dims,
    nodes: Vec<Node>,
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    names: HashSet<String>,
    /// How many nodes (and graph outputs) read each ONNX value.
    readers: HashMap<String, usize>,
    /// Outputs of bias-free linear layers (`MatMul`), by value name: description node index.
    bias_free: HashMap<String, usize>,
}

impl<'g> Translator<'g> {
    fn new(graph: &'g GraphProto, opset: i64, folder: &'g Path) -> Result<Self, Problem> {
        let mut values = HashMap::new();
        for tensor in &graph.initializer {
            let constant = tensor::decode(tensor, folder)
                .map_err(|problem| Problem::Graph(format!("initializer '{}' {problem}", tensor.name)))?;
            values.insert(tensor.name.clone(), Value::Constant(constant));
        }
        let inputs: Vec<_> = graph.input.iter().filter(|i| !values.contains_key(&i.name)).collect();
        let [input] = inputs[..] else {
            return Err(Problem::Graph(format!(
                "has {} inputs besides its weights; leafwalk reads classifiers of one image input",
                inputs.len()
            )));
        };
        let not_image = |why: String| {
            Problem::Graph(format!("input '{}' {why}; leafwalk needs an image input [N, C, H, W]", input.name))
        };
        let tensor_type = input
            .r#type
            .as_ref()
            .and_then(|t| t.tensor_type.as_ref())
            .ok_or_else(|| not_image("is not a tensor".into()))?;
        if tensor_type.elem_type != 1 {
            return Err(not_image(format!("has element type {}, not float32", tensor_type.elem_type)));
        }
        let dims = tensor_type.shape.as_ref().map(|s| &s.dim[..]).unwrap_or(&[]);
        if dims.len() != 4 {
            return Err(not_image(format!("has {} dimensions", dims.len())));
        }
        let fixed: Vec<Option<usize>> =
            dims.iter().map(|d| d.dim_value.and_then(|v| usize::try_from(v).ok()).filter(|&v| v > 0)).collect();
        let [Some(c), Some(h), Some(w)] = [fixed[1], fixed[2], fixed[3]] else {
            return Err(not_image("has no fixed channels, height and width".into()));
        };
        let input_dims = Dims::new(c, h, w);
        if value_count(&[c, h, w]).is_none() {
            return Err(not_image(format!("is {c}×{h}×{w}, too large")));
        }
        values.insert(input.name.clone(), Value::Computed(Computed { index: 0, dims: input_dims, rank: 4 }));
        let mut readers: HashMap<String, usize> = HashMap::new();
        for name in graph.node.iter().flat_map(|n| &n.input).chain(graph.output.iter().map(|o| &o.name)) {
            *readers.entry(name.clone()).or_default() += 1;
        }
        Ok(Translator {
            graph,
            folder,
            opset,
            values,
            batch: fixed[0].unwrap_or(1),
            input: input_dims,
            nodes: Vec::new(),
            tensors: Vec::new(),
            names: HashSet::new(),
            readers,
            bias_free: HashMap::new(),
        })
    }

    /// The description, pruned to what the graph's output depends on.
    fn finish(self) -> Result<Translation, Problem> {
        let [output] = &self.graph.output[..] else {
            return Err(Problem::Graph(format!(
                "has {} outputs; leafwalk reads classifiers with one output, the class scores",
                self.graph.output.len()
            )));
        };
        let logits = match self.values.get(&output.name) {
            // [N, C], or [N, C, 1, 1] from a network that ends in global pooling.
            Some(Value::Computed(c)) if c.dims.is_flat() && c.index > 0 => *c,
            Some(Value::Computed(c)) => {
                return Err(Problem::Graph(format!(
                    "output '{}' is not a vector of class scores [N, C] (rank {}, {})",
                    output.name, c.rank, c.dims
                )))
            }
            Some(Value::Constant(_)) => {
                return Err(Problem::Graph(format!("output '{}' does not depend on the input", output.name)))
            }
            None => return Err(Problem::Graph(format!("output '{}' is computed by no node", output.name))),
        };
        // Keep the nodes the logits depend on, renumbered in order.
        let mut needed = vec![false; self.nodes.len() + 1];
        needed[logits.index] = true;
        for index in (1..=self.nodes.len()).rev() {
            if needed[index] {
                for &v in &self.nodes[index - 1].inputs {
                    needed[v] = true;
                }
            }
        }
        let mut renumbered = vec![0; self.nodes.len() + 1];
        let mut nodes = Vec::new();
        for (index, node) in self.nodes.into_iter().enumerate() {
            if needed[index + 1] {
                let inputs = node.inputs.iter().map(|&v| renumbered[v]).collect();
                nodes.push(Node { inputs, ..node });
                renumbered[index + 1] = nodes.len();
            }
        }
        let description = Description { input: self.input, nodes };
        let check = |e: leafwalk_models::DescriptionError| Problem::Node {
            node: e.node.clone(),
            op: e.kind.to_string(),
            problem: e.problem.clone(),
        };
        description.shapes().map_err(check)?;
        let wanted: HashSet<String> = description.parameters().into_iter().map(|p| p.name).collect();
        let tensors = self.tensors.into_iter().filter(|(name, ..)| wanted.contains(name)).collect();
        Ok(Translation { description, tensors })
    }

    fn node(&mut self, node: &NodeProto, position: usize) -> NodeResult<Vec<Value>> {
        let op = node.op_type.as_str();
        let one = |value: Value| Ok(vec![value]);
        match op {
            "Conv" => one(self.conv(node, position)?),
            "Gemm" => one(self.gemm(node, position)?),
            "MatMul" => one(self.matmul(node, position)?),
            "BatchNormalization" => one(self.batch_norm(node, position)?),
            "Relu" | "Tanh" | "Sigmoid" | "LeakyRelu" | "Elu" | "Softplus" | "Gelu" => {
                let activation = activation(node)?;
                one(self.unary_computed(node, position, Op::Activation(activation))?)
            }
            "MaxPool" | "AveragePool" => one(self.pool(node, position)?),
            "GlobalAveragePool" => {
                allow(node, &[])?;
                let x = self.computed_rank(node, 0, 4)?;
                one(Value::Computed(self.push(node, position, Op::GlobalAvgPool, &[x], "pool", 4)?))
            }
            "ReduceMean" => one(self.reduce_mean(node, position)?),
            "Flatten" => {
                allow(node, &["axis"])?;
                let x = self.computed(node, 0)?;
                if int_attr(node, "axis", 1) != 1 {
                    return Err("flattens from an axis other than 1 (the batch axis must stay apart)".into());
                }
                one(self.reshaped(node, position, x, Dims::flat(x.dims.len()), 2)?)
            }
            "Reshape" => one(self.reshape(node, position)?),
            "Squeeze" | "Unsqueeze" => one(self.squeeze(node, position)?),
            "Add" | "Sub" | "Mul" | "Div" => one(self.arithmetic(node, position)?),
            "Identity" | "Dropout" => {
                if op == "Dropout" {
                    allow(node, &["seed", "ratio"])?;
                    if node.output.get(1).is_some_and(|mask| !mask.is_empty() && self.readers.contains_key(mask)) {
                        return Err("its mask output is used (training-mode dropout)".into());
                    }
                }
                one(self.input(node, 0)?.clone())
            }
            "Softmax" | "LogSoftmax" => {
                allow(node, &["axis"])?;
                let x = self.computed_rank(node, 0, 2)?;
                let default_axis = if self.opset >= 13 { -1 } else { 1 };
                if !matches!(int_attr(node, "axis", default_axis), -1 | 1) {
                    return Err("normalises over an axis other than the classes".into());
                }
                let log = op == "LogSoftmax";
                one(self.unary_computed_with(node, position, Op::Softmax { log }, x)?)
            }
            "Constant" => one(Value::Constant(constant_node(node, self.folder)?)),
            "Shape" => one(self.shape(node)?),
            "Gather" => one(self.gather(node)?),
            "Concat" => one(self.concat(node)?),
            "Cast" => one(self.cast(node)?),
            "Slice" => one(self.slice(node)?),
            "Sqrt" | "Neg" | "Reciprocal" => {
                allow(node, &[])?;
                let c = self.constant_input(node, 0)?;
                let f: fn(f32) -> f32 = match op {
                    "Sqrt" => f32::sqrt,
                    "Neg" => |x| -x,
                    _ => f32::recip,
                };
                one(Value::Constant(Constant::f32(c.dims.clone(), c.floats().into_iter().map(f).collect())))
            }
            "ConstantOfShape" => {
                allow(node, &["value"])?;
                let shape = self.dims_input(node, 1, 0)?;
                let count = value_count(&shape).ok_or("asks for too many values")?;
                let fill = match attr(node, "value").and_then(|a| a.t.as_ref()) {
                    Some(t) => tensor::decode(t, self.folder).map_err(|e| format!("attribute 'value' {e}"))?,
                    None => Constant::f32(vec![1], vec![0.0]),
                };
                let data = match fill.data {
                    Data::F32(v) => Data::F32(vec![*v.first().ok_or("attribute 'value' is empty")?; count]),
                    Data::I64(v) => Data::I64(vec![*v.first().ok_or("attribute 'value' is empty")?; count]),
                };
                one(Value::Constant(Constant { dims: shape, data }))
            }
            _ => Err(format!("operation {op} is not supported (see the README's list of ONNX operations)")),
        }
    }

    /// A pattern of several nodes recognised as one activation, emitted at its last node.
    fn fused(
        &mut self,
        node: &NodeProto,
        position: usize,
        input: &str,
        activation: Activation,
    ) -> NodeResult<Vec<Value>> {
        let x = match self.values.get(input) {
            Some(Value::Computed(c)) => *c,
            _ => return Err(format!("reads '{input}', which is not computed from the image")),
        };
        Ok(vec![self.unary_computed_with(node, position, Op::Activation(activation), x)?])
    }

    fn input(&self, node: &NodeProto, i: usize) -> NodeResult<&Value> {
        let name = node.input.get(i).filter(|n| !n.is_empty()).ok_or_else(|| format!("has no input {}", i + 1))?;
        self.values.get(name).ok_or_else(|| format!("reads '{name}', which no earlier node computes"))
    }

    fn computed(&self, node: &NodeProto, i: usize) -> NodeResult<Computed> {
        match self.input(node, i)? {
            Value::Computed(c) => Ok(*c),
            Value::Constant(_) => Err(format!("input {} is a constant where an activation is expected", i + 1)),
        }
    }

    fn computed_rank(&self, node: &NodeProto, i: usize, rank: usize) -> NodeResult<Computed> {
        let c = self.computed(node, i)?;
        match c.rank == rank {
            true => Ok(c),
            false => Err(format!("expects a rank-{rank} input, gets rank {} ({})", c.rank, c.dims)),
        }
    }

    fn constant_input(&self, node: &NodeProto, i: usize) -> NodeResult<&Constant> {
        match self.input(node, i)? {
            Value::Constant(c) => Ok(c),
            Value::Computed(_) => Err(format!("input {} is computed from the image where a constant is needed", i + 1)),
        }
    }

    /// Input `i` as non-negative integers (a shape), or attribute-free `default` rank check.
    fn dims_input(&self, node: &NodeProto, rank: usize, i: usize) -> NodeResult<Vec<usize>> {
        let c = self.constant_input(node, i)?;
        if c.dims.len() != rank {
            return Err(format!("input {} should be a list of dimensions", i + 1));
        }
        let ints = c.ints().ok_or_else(|| format!("input {} is not integers", i + 1))?;
        ints.iter().map(|&d| usize::try_from(d).map_err(|_| format!("has a negative dimension {d}"))).collect()
    }

    /// Integers from input `i` when present, else from attribute `name` (the opset moved them).
    fn ints_input_or_attr(&self, node: &NodeProto, i: usize, name: &str) -> NodeResult<Option<Vec<i64>>> {
        if node.input.get(i).is_some_and(|n| !n.is_empty()) {
            let c = self.constant_input(node, i)?;
            return Ok(Some(c.ints().ok_or_else(|| format!("input {} is not integers", i + 1))?.to_vec()));
        }
        Ok(attr(node, name).map(|a| a.ints.clone()))
    }

    /// A unique description node name: the exporter's parameter prefix when the node has a
    /// weight named `<prefix>.weight`, else the ONNX node's name, else `<kind><position>`.
    fn name_for(&mut self, node: &NodeProto, position: usize, kind: &str) -> String {
        let from_weight = node.input.get(1).and_then(|w| w.strip_suffix(".weight")).filter(|p| !p.is_empty());
        let base = match (from_weight, node.name.is_empty()) {
            (Some(prefix), _) => prefix.to_string(),
            (None, false) => node.name.trim_start_matches('/').to_string(),
            (None, true) => format!("{kind}{position}"),
        };
        let mut name = base.clone();
        let mut n = 1;
        while !self.names.insert(name.clone()) {
            n += 1;
            name = format!("{base}_{n}");
        }
        name
    }

    /// Adds `op` on `inputs` as a description node; its output's dims are the description's
    /// own shape rules (the same checks, the same messages), with ONNX rank `rank`.
    fn push(
        &mut self,
        node: &NodeProto,
        position: usize,
        op: Op,
        inputs: &[Computed],
        kind: &str,
        rank: usize,
    ) -> NodeResult<Computed> {
        let dims = op.output_dims(inputs[0].dims, inputs.get(1).map(|c| c.dims))?;
        if value_count(&[dims.channels, dims.height, dims.width]).is_none() {
            return Err(format!("makes a {dims} value, too large"));
        }
        let name = self.name_for(node, position, kind);
        self.nodes.push(Node { name, op, inputs: inputs.iter().map(|c| c.index).collect() });
        Ok(Computed { index: self.nodes.len(), dims, rank })
    }

    fn tensor(&mut self, node_index: usize, leaf: &str, dims: Vec<usize>, values: Vec<f32>) {
        let name = format!("{}.{leaf}", self.nodes[node_index - 1].name);
        self.tensors.push((name, dims, values));
    }

    fn unary_computed(&mut self, node: &NodeProto, position: usize, op: Op) -> NodeResult<Value> {
        let x = self.computed(node, 0)?;
        self.unary_computed_with(node, position, op, x)
    }

    fn unary_computed_with(&mut self, node: &NodeProto, position: usize, op: Op, x: Computed) -> NodeResult<Value> {
        let kind = op.kind().to_lowercase();
        Ok(Value::Computed(self.push(node, position, op, &[x], &kind, x.rank)?))
    }

    fn conv(&mut self, node: &NodeProto, position: usize) -> NodeResult<Value> {
        allow(node, &["kernel_shape", "strides", "pads", "dilations", "group", "auto_pad"])?;
        let x = self.computed_rank(node, 0, 4)?;
        let w = self.constant_input(node, 1)?.clone();
        let [out_channels, per_group, kh, kw] = w.dims[..] else {
            return Err(format!(
                "has a {}-dimensional kernel; only 2-D convolutions are supported",
                w.dims.len().saturating_sub(2)
            ));
        };
        let groups = positive(int_attr(node, "group", 1), "group")?;
        if per_group.checked_mul(groups) != Some(x.dims.channels) {
            return Err(format!("has {groups} group(s) of {per_group} channels for a {} input", x.dims));
        }
        if let Some(kernel) = attr(node, "kernel_shape") {
            if kernel.ints != [kh as i64, kw as i64] {
                return Err(format!("attribute 'kernel_shape' {:?} differs from its weight's {kh}×{kw}", kernel.ints));
            }
        }
        let stride = pair(node, "strides", 1)?;
        let dilation = pair(node, "dilations", 1)?;
        let padding = padding(node, [kh, kw], stride, dilation, [x.dims.height, x.dims.width])?;
        let bias = match node.input.get(2).filter(|n| !n.is_empty()) {
            Some(_) => Some(self.constant_input(node, 2)?.floats()),
            None => None,
        };
        if bias.as_ref().is_some_and(|b| b.len() != out_channels) {
            return Err(format!(
                "has a bias of {} values for {out_channels} output channels",
                bias.map_or(0, |b| b.len())
            ));
        }
        let conv = Conv2d {
            in_channels: x.dims.channels,
            out_channels,
            kernel: [kh, kw],
            stride,
            padding,
            dilation,
            groups,
            bias: bias.is_some(),
        };
        let out = self.push(node, position, Op::Conv2d(conv), &[x], "conv", 4)?;
        self.tensor(out.index, "weight", w.dims.clone(), w.floats());
        if let Some(bias) = bias {
            self.tensor(out.index, "bias", vec![out_channels], bias);
        }
        Ok(Value::Computed(out))
    }

    /// A linear layer with weight `[out][in]` (PyTorch's layout) and an optional bias.
    fn linear(
        &mut self,
        node: &NodeProto,
        position: usize,
        x: Computed,
        (out_features, weight): (usize, Vec<f32>),
        bias: Option<Vec<f32>>,
    ) -> NodeResult<Value> {
        let in_features = x.dims.channels;
        if !x.dims.is_flat() {
            return Err(format!("needs a flat input, gets {}", x.dims));
        }
        let linear = Linear { in_features, out_features, bias: bias.is_some() };
        let out = self.push(node, position, Op::Linear(linear), &[x], "linear", 2)?;
        self.tensor(out.index, "weight", vec![out_features, in_features], weight);
        if let Some(bias) = bias {
            self.tensor(out.index, "bias", vec![out_features], bias);
        }
        Ok(Value::Computed(out))
    }

    fn gemm(&mut self, node: &NodeProto, position: usize) -> NodeResult<Value> {
        allow(node, &["alpha", "beta", "transA", "transB"])?;
        let x = self.computed_rank(node, 0, 2)?;
        if int_attr(node, "transA", 0) != 0 {
            return Err("attribute 'transA' = 1 (a transposed batch) is not supported".into());
        }
        let b = self.constant_input(node, 1)?;
        let (rows, cols) = matrix(b)?;
        let (alpha, beta) = (float_attr(node, "alpha", 1.0), float_attr(node, "beta", 1.0));
        let (out_features, mut weight) = match int_attr(node, "transB", 0) {
            0 => (cols, transpose(&b.floats(), rows, cols)),
            _ => (rows, b.floats()),
        };
        if weight.len() / out_features.max(1) != x.dims.channels {
            return Err(format!("multiplies {} input features by a {rows}×{cols} matrix", x.dims.channels));
        }
        if alpha != 1.0 {
            weight.iter_mut().for_each(|w| *w *= alpha);
        }
        let bias = match node.input.get(2).filter(|n| !n.is_empty()) {
            Some(_) => {
                let c = self.constant_input(node, 2)?;
                let values = per_feature(c, out_features).ok_or_else(|| {
                    format!("adds a {:?} constant to {out_features} outputs (only one value or one per output)", c.dims)
                })?;
                Some(values.into_iter().map(|v| v * beta).collect())
            }
            None => None,
        };
        self.linear(node, position, x, (out_features, weight), bias)
    }

    fn matmul(&mut self, node: &NodeProto, position: usize) -> NodeResult<Value> {
        allow(node, &[])?;
        let x = self.computed_rank(node, 0, 2)?;
        let b = self.constant_input(node, 1)?;
        let (rows, cols) = matrix(b)?;
        if rows != x.dims.channels {
            return Err(format!("multiplies {} input features by a {rows}×{cols} matrix", x.dims.channels));
        }
        let weight = transpose(&b.floats(), rows, cols);
        let value = self.linear(node, position, x, (cols, weight), None)?;
        if let (Some(output), Value::Computed(c)) = (node.output.first(), &value) {
            self.bias_free.insert(output.clone(), c.index);
        }
        Ok(value)
    }

    fn batch_norm(&mut self, node: &NodeProto, position: usize) -> NodeResult<Value> {
        allow(node, &["epsilon", "momentum", "training_mode", "spatial"])?;
        if int_attr(node, "training_mode", 0) != 0 {
            return Err("attribute 'training_mode' = 1 is not supported (export in evaluation mode)".into());
        }
        if int_attr(node, "spatial", 1) != 1 {
            return Err("attribute 'spatial' = 0 is not supported".into());
        }
        let x = self.computed(node, 0)?;
        let channels = x.dims.channels;
        let mut statistics = Vec::new();
        for (i, leaf) in [(1, "weight"), (2, "bias"), (3, "running_mean"), (4, "running_var")] {
            let c = self.constant_input(node, i)?;
            if c.len() != channels {
                return Err(format!("has {} values of {leaf} for {channels} channels", c.len()));
            }
            statistics.push((leaf, c.floats()));
        }
        let norm = BatchNorm { channels, eps: float_attr(node, "epsilon", 1e-5) as f64, momentum: 0.1 };
        let out = self.push(node, position, Op::BatchNorm(norm), &[x], "batch_norm", x.rank)?;
        for (leaf, values) in statistics {
            self.tensor(out.index, leaf, vec![channels], values);
        }
        Ok(Value::Computed(out))
    }

    fn pool(&mut self, node: &NodeProto, position: usize) -> NodeResult<Value> {
        let max = node.op_type == "MaxPool";
        match max {
            true => allow(
                node,
                &["kernel_shape", "strides", "pads", "dilations", "ceil_mode", "auto_pad", "storage_order"],
            )?,
            false => allow(
                node,
                &["kernel_shape", "strides", "pads", "dilations", "ceil_mode", "auto_pad", "count_include_pad"],
            )?,
        }
        if node.output.get(1).is_some_and(|i| !i.is_empty() && self.readers.contains_key(i)) {
            return Err("its indices output is used".into());
        }
        let x = self.computed_rank(node, 0, 4)?;
        let kernel = match attr(node, "kernel_shape").map(|a| &a.ints[..]) {
            Some(&[kh, kw]) => [positive(kh, "kernel_shape")?, positive(kw, "kernel_shape")?],
            _ => return Err("attribute 'kernel_shape' must hold two sizes".into()),
        };
        let stride = pair(node, "strides", 1)?;
        let dilation = pair(node, "dilations", 1)?;
        let padding = padding(node, kernel, stride, dilation, [x.dims.height, x.dims.width])?;
        let pool = Pool {
            kernel,
            stride,
            padding,
            dilation,
            ceil_mode: int_attr(node, "ceil_mode", 0) != 0,
            // ONNX's default is 0; meaningless for max-pooling (PyTorch's default there).
            count_include_pad: max || int_attr(node, "count_include_pad", 0) != 0,
        };
        let op = if max { Op::MaxPool2d(pool) } else { Op::AvgPool2d(pool) };
        Ok(Value::Computed(self.push(node, position, op, &[x], "pool", 4)?))
    }

    fn reduce_mean(&mut self, node: &NodeProto, position: usize) -> NodeResult<Value> {
        allow(node, &["axes", "keepdims", "noop_with_empty_axes"])?;
        let x = self.computed_rank(node, 0, 4)?;
        let mut axes: Vec<i64> = self.ints_input_or_attr(node, 1, "axes")?.unwrap_or_default();
        axes.iter_mut().for_each(|a| *a = if *a < 0 { *a + 4 } else { *a });
        axes.sort_unstable();
        if axes != [2, 3] {
            return Err(format!("averages over axes {axes:?}; only the spatial ones [2, 3] are supported"));
        }
        let rank = if int_attr(node, "keepdims", 1) != 0 { 4 } else { 2 };
        Ok(Value::Computed(self.push(node, position, Op::GlobalAvgPool, &[x], "pool", rank)?))
    }

    /// `x` with one point's dims `dims` and ONNX rank `rank`: no node where the values stay
    /// in place (a flat vector as `[N, F]` or `[N, F, 1, 1]`), else `Flatten` or `Reshape`.
    fn reshaped(
        &mut self,
        node: &NodeProto,
        position: usize,
        x: Computed,
        dims: Dims,
        rank: usize,
    ) -> NodeResult<Value> {
        if dims.len() != x.dims.len() {
            return Err(format!("cannot reshape {} ({} values) to {dims}", x.dims, x.dims.len()));
        }
        if dims == x.dims {
            return Ok(Value::Computed(Computed { rank, ..x }));
        }
        let op = if dims.is_flat() { Op::Flatten } else { Op::Reshape { dims } };
        Ok(Value::Computed(self.push(node, position, op, &[x], "reshape", rank)?))
    }

    /// The ONNX shape of a computed value, batch first.
    fn onnx_shape(&self, x: Computed) -> Vec<usize> {
        match x.rank {
            2 => vec![self.batch, x.dims.channels],
            _ => vec![self.batch, x.dims.channels, x.dims.height, x.dims.width],
        }
    }

    /// One point's dims and rank for an ONNX shape whose first axis is the batch.
    fn point_dims(&self, shape: &[usize]) -> NodeResult<(Dims, usize)> {
        match shape {
            [n, f] if *n == self.batch => Ok((Dims::flat(*f), 2)),
            [n, c, h, w] if *n == self.batch => Ok((Dims::new(*c, *h, *w), 4)),
            _ => Err(format!(
                "makes a {shape:?} tensor; only [N, F] and [N, C, H, W] with the batch first are supported"
            )),
        }
    }

    fn reshape(&mut self, node: &NodeProto, position: usize) -> NodeResult<Value> {
        allow(node, &["allowzero"])?;
        let target = self.constant_input(node, 1)?.ints().ok_or("its shape is not integers")?.to_vec();
        let allow_zero = int_attr(node, "allowzero", 0) != 0;
        let reshape_constant = |input: &[usize], count: usize| resolve_shape(&target, input, count, allow_zero);
        match self.input(node, 0)?.clone() {
            Value::Constant(c) => {
                let dims = reshape_constant(&c.dims, c.len())?;
                Ok(Value::Constant(Constant { dims, ..c }))
            }
            Value::Computed(x) => {
                let shape = self.onnx_shape(x);
                let dims = reshape_constant(&shape, shape.iter().product())?;
                let (dims, rank) = self.point_dims(&dims)?;
                self.reshaped(node, position, x, dims, rank)
            }
        }
    }

    fn squeeze(&mut self, node: &NodeProto, position: usize) -> NodeResult<Value> {
        allow(node, &["axes"])?;
        let axes = self.ints_input_or_attr(node, 1, "axes")?;
        let squeeze = node.op_type == "Squeeze";
        let value = self.input(node, 0)?.clone();
        let shape = match &value {
            Value::Constant(c) => c.dims.clone(),
            Value::Computed(x) => self.onnx_shape(*x),
        };
        let out_rank = if squeeze { shape.len() } else { shape.len() + axes.as_ref().map_or(0, Vec::len) };
        let mut axes: Vec<usize> = match axes {
            Some(axes) => axes
                .iter()
                .map(|&a| {
                    let rank = if squeeze { shape.len() } else { out_rank } as i64;
                    let a = if a < 0 { a + rank } else { a };
                    usize::try_from(a).ok().filter(|&a| (a as i64) < rank).ok_or(format!("axis {a} is out of range"))
                })
                .collect::<NodeResult<_>>()?,
            None if squeeze => (0..shape.len()).filter(|&a| shape[a] == 1).collect(),
            None => return Err("has no axes".into()),
        };
        axes.sort_unstable();
        let dims = match squeeze {
            true => {
                if axes.iter().any(|&a| shape[a] != 1) {
                    return Err(format!("squeezes an axis of {shape:?} that is not 1"));
                }
                shape.iter().enumerate().filter(|(a, _)| !axes.contains(a)).map(|(_, &d)| d).collect()
            }
            false => {
                let mut dims = shape.clone();
                for &a in &axes {
                    if a > dims.len() {
                        return Err(format!("axis {a} is out of range"));
                    }
                    dims.insert(a, 1);
                }
                dims
            }
        };
        match value {
            Value::Constant(c) => Ok(Value::Constant(Constant { dims, ..c })),
            Value::Computed(x) => {
                let (dims, rank) = self.point_dims(&dims)?;
                self.reshaped(node, position, x, dims, rank)
            }
        }
    }

    fn arithmetic(&mut self, node: &NodeProto, position: usize) -> NodeResult<Value> {
        allow(node, &[])?;
        let arith = match node.op_type.as_str() {
            "Add" => Arith::Add,
            "Sub" => Arith::Sub,
            "Mul" => Arith::Mul,
            _ => Arith::Div,
        };
        let commutes = matches!(arith, Arith::Add | Arith::Mul);
        match (self.input(node, 0)?.clone(), self.input(node, 1)?.clone()) {
            (Value::Constant(a), Value::Constant(b)) => Ok(Value::Constant(broadcast(arith, &a, &b)?)),
            (Value::Computed(a), Value::Computed(b)) => {
                let per_channel = |small: Computed, large: Computed| small.dims == Dims::flat(large.dims.channels);
                let (first, second) = match (a.dims == b.dims, per_channel(b, a), per_channel(a, b)) {
                    (true, ..) | (false, true, _) => (a, b),
                    (false, false, true) if commutes => (b, a),
                    _ => return Err(format!("combines {} with {}", a.dims, b.dims)),
                };
                Ok(Value::Computed(self.push(
                    node,
                    position,
                    Op::Binary { arith },
                    &[first, second],
                    "arith",
                    first.rank,
                )?))
            }
            (Value::Computed(x), Value::Constant(c)) | (Value::Constant(c), Value::Computed(x)) => {
                let constant_first = matches!(self.input(node, 0)?, Value::Constant(_));
                let values = self.per_channel(x, &c)?;
                // A bias-free linear layer's `+ bias` becomes its bias.
                let input = &node.input[usize::from(constant_first)];
                if let (Arith::Add, Some(&linear)) = (arith, self.bias_free.get(input)) {
                    if self.readers.get(input) == Some(&1) {
                        let features = x.dims.channels;
                        let bias = if values.len() == 1 { vec![values[0]; features] } else { values };
                        if let Op::Linear(l) = &mut self.nodes[linear - 1].op {
                            l.bias = true;
                        }
                        self.tensor(linear, "bias", vec![features], bias);
                        return Ok(Value::Computed(x));
                    }
                }
                let op = Op::Constant { arith, values, constant_first: constant_first && !commutes };
                Ok(Value::Computed(self.push(node, position, op, &[x], "arith", x.rank)?))
            }
        }
    }

    /// A constant combined with `x`: one value, or one per channel (`[C, 1, 1]` for `[N, C, H,
    /// W]`, `[F]` for `[N, F]`, leading ones allowed).
    fn per_channel(&self, x: Computed, c: &Constant) -> NodeResult<Vec<f32>> {
        let shape = self.onnx_shape(x);
        if c.dims.len() > shape.len() {
            return Err(format!("broadcasts a {:?} constant against a rank-{} value", c.dims, x.rank));
        }
        let padded: Vec<usize> =
            std::iter::repeat_n(1, shape.len() - c.dims.len()).chain(c.dims.iter().copied()).collect();
        let scalar = padded.iter().all(|&d| d == 1);
        let channel = padded[0] == 1 && padded[1] == x.dims.channels && padded[2..].iter().all(|&d| d == 1);
        match scalar || channel {
            true => Ok(c.floats()),
            false => Err(format!(
                "combines a {:?} constant with a {} value; only one value or one per channel is supported",
                c.dims, x.dims
            )),
        }
    }

    fn shape(&mut self, node: &NodeProto) -> NodeResult<Value> {
        allow(node, &["start", "end"])?;
        let shape = match self.input(node, 0)? {
            Value::Computed(x) => self.onnx_shape(*x),
            Value::Constant(c) => c.dims.clone(),
        };
        let rank = shape.len() as i64;
        let clamp = |v: i64| (if v < 0 { v + rank } else { v }).clamp(0, rank) as usize;
        let (start, end) = (clamp(int_attr(node, "start", 0)), clamp(int_attr(node, "end", rank)));
        let values: Vec<i64> = shape.get(start..end.max(start)).unwrap_or(&[]).iter().map(|&d| d as i64).collect();
        Ok(Value::Constant(Constant::i64(vec![values.len()], values)))
    }

    fn gather(&mut self, node: &NodeProto) -> NodeResult<Value> {
        allow(node, &["axis"])?;
        let data = self.constant_input(node, 0)?;
        let indices = self.constant_input(node, 1)?;
        let indices =
            indices.ints().ok_or("its indices are not integers")?.iter().zip(std::iter::repeat(&indices.dims));
        if data.dims.len() != 1 || int_attr(node, "axis", 0) != 0 {
            return Err("gathers from a constant of more than one axis".into());
        }
        let n = data.dims[0] as i64;
        let mut picked = Vec::new();
        let mut out_dims = Vec::new();
        for (&i, dims) in indices {
            let i = if i < 0 { i + n } else { i };
            if !(0..n).contains(&i) {
                return Err(format!("index {i} is out of range for {n} values"));
            }
            picked.push(i as usize);
            out_dims = dims.clone();
        }
        let data = match &data.data {
            Data::F32(v) => Data::F32(picked.iter().map(|&i| v[i]).collect()),
            Data::I64(v) => Data::I64(picked.iter().map(|&i| v[i]).collect()),
        };
        Ok(Value::Constant(Constant { dims: out_dims, data }))
    }

    fn concat(&mut self, node: &NodeProto) -> NodeResult<Value> {
        allow(node, &["axis"])?;
        let mut ints = Vec::new();
        let mut floats = Vec::new();
        for i in 0..node.input.len() {
            let c = self.constant_input(node, i)?;
            if c.dims.len() != 1 {
                return Err("concatenates values of more than one axis (only constant lists are supported)".into());
            }
            match &c.data {
                Data::I64(v) => ints.extend_from_slice(v),
                Data::F32(v) => floats.extend_from_slice(v),
            }
        }
        match (ints.is_empty(), floats.is_empty()) {
            (_, true) => Ok(Value::Constant(Constant::i64(vec![ints.len()], ints))),
            (true, false) => Ok(Value::Constant(Constant::f32(vec![floats.len()], floats))),
            (false, false) => Err("concatenates integers with floats".into()),
        }
    }

    fn cast(&mut self, node: &NodeProto) -> NodeResult<Value> {
        allow(node, &["to", "saturate", "round_mode"])?;
        let to = int_attr(node, "to", 1);
        match self.input(node, 0)?.clone() {
            Value::Computed(x) if matches!(to, 1 | 11) => Ok(Value::Computed(x)),
            Value::Computed(_) => Err(format!("casts an activation to data type {to}")),
            Value::Constant(c) => Ok(Value::Constant(match to {
                1 | 11 => Constant::f32(c.dims.clone(), c.floats()),
                6 | 7 | 9 => {
                    let ints = match &c.data {
                        Data::I64(v) => v.clone(),
                        Data::F32(v) => v.iter().map(|&x| x as i64).collect(),
                    };
                    let ints = if to == 9 { ints.iter().map(|&x| (x != 0) as i64).collect() } else { ints };
                    Constant::i64(c.dims.clone(), ints)
                }
                other => return Err(format!("casts to data type {other}")),
            })),
        }
    }

    fn slice(&mut self, node: &NodeProto) -> NodeResult<Value> {
        allow(node, &["starts", "ends", "axes"])?;
        let data = self.constant_input(node, 0)?.clone();
        if data.dims.len() != 1 {
            return Err("slices a constant of more than one axis".into());
        }
        let bound = |i: usize, name: &str| -> NodeResult<Option<i64>> {
            Ok(self.ints_input_or_attr(node, i, name)?.and_then(|v| v.first().copied()))
        };
        let n = data.dims[0] as i64;
        let clamp = |v: i64, low: i64, high: i64| (if v < 0 { v + n } else { v }).clamp(low, high);
        let step = bound(4, "steps")?.unwrap_or(1);
        if step == 0 {
            return Err("has a step of 0".into());
        }
        let (start, end) = match step > 0 {
            true => (clamp(bound(1, "starts")?.unwrap_or(0), 0, n), clamp(bound(2, "ends")?.unwrap_or(n), 0, n)),
            false => (
                clamp(bound(1, "starts")?.unwrap_or(n - 1), -1, n - 1),
                clamp(bound(2, "ends")?.unwrap_or(-1 - n), -1, n - 1),
            ),
        };
        let mut picked = Vec::new();
        let mut i = start;
        while (step > 0 && i < end) || (step < 0 && i > end) {
            picked.push(i as usize);
            i += step;
        }
        let values = match &data.data {
            Data::F32(v) => Data::F32(picked.iter().map(|&i| v[i]).collect()),
            Data::I64(v) => Data::I64(picked.iter().map(|&i| v[i]).collect()),
        };
        Ok(Value::Constant(Constant { dims: vec![picked.len()], data: values }))
    }
}

/// Refuses attributes outside `known` (an attribute leafwalk ignored could change the result).
fn allow(node: &NodeProto, known: &[&str]) -> NodeResult<()> {
    match node.attribute.iter().find(|a| !known.contains(&a.name.as_str())) {
        Some(a) => Err(format!("attribute '{}' is not supported", a.name)),
        None => Ok(()),
    }
}

fn attr<'n>(node: &'n NodeProto, name: &str) -> Option<&'n AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn int_attr(node: &NodeProto, name: &str, default: i64) -> i64 {
    attr(node, name).map_or(default, |a| a.i)
}

fn float_attr(node: &NodeProto, name: &str, default: f32) -> f32 {
    attr(node, name).map_or(default, |a| a.f)
}

fn positive(v: i64, what: &str) -> NodeResult<usize> {
    usize::try_from(v).ok().filter(|&v| v > 0).ok_or_else(|| format!("attribute '{what}' must be positive, is {v}"))
}

/// A two-value attribute (height, width), `default` for both when absent.
fn pair(node: &NodeProto, name: &str, default: usize) -> NodeResult<[usize; 2]> {
    match attr(node, name).map(|a| &a.ints[..]) {
        None => Ok([default; 2]),
        Some(&[a, b]) => Ok([positive(a, name)?, positive(b, name)?]),
        Some(other) => Err(format!("attribute '{name}' {other:?} should hold two values")),
    }
}

/// Symmetric zero padding `[height, width]` from `pads` (`[top, left, bottom, right]`) or
/// `auto_pad`.
fn padding(
    node: &NodeProto,
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    input: [usize; 2],
) -> NodeResult<[usize; 2]> {
    let auto = attr(node, "auto_pad").map(|a| String::from_utf8_lossy(&a.s).into_owned()).unwrap_or_default();
    match auto.as_str() {
        "" | "NOTSET" => {}
        "VALID" => return Ok([0, 0]),
        "SAME_UPPER" | "SAME_LOWER" => {
            let mut padding = [0; 2];
            for axis in 0..2 {
                let out = input[axis].div_ceil(stride[axis]);
                let span = (kernel[axis] - 1) * dilation[axis] + 1;
                let total = ((out - 1) * stride[axis] + span).saturating_sub(input[axis]);
                if total % 2 == 1 {
                    return Err(format!(
                        "attribute 'auto_pad' = {auto} pads unevenly here; only symmetric padding is supported"
                    ));
                }
                padding[axis] = total / 2;
            }
            return Ok(padding);
        }
        other => return Err(format!("attribute 'auto_pad' = {other} is not supported")),
    }
    match attr(node, "pads").map(|a| &a.ints[..]) {
        None => Ok([0, 0]),
        Some(&[top, left, bottom, right]) if top == bottom && left == right && top >= 0 && left >= 0 => {
            Ok([top as usize, left as usize])
        }
        Some(other) => Err(format!("attribute 'pads' {other:?} is not symmetric; only symmetric padding is supported")),
    }
}

fn activation(node: &NodeProto) -> NodeResult<Activation> {
    Ok(match node.op_type.as_str() {
        "Relu" | "Tanh" | "Sigmoid" => {
            allow(node, &[])?;
            match node.op_type.as_str() {
                "Relu" => Activation::Relu,
                "Tanh" => Activation::Tanh,
                _ => Activation::Sigmoid,
            }
        }
        "LeakyRelu" => {
            allow(node, &["alpha"])?;
            Activation::LeakyRelu { negative_slope: float_attr(node, "alpha", 0.01) as f64 }
        }
        "Elu" => {
            allow(node, &["alpha"])?;
            Activation::Elu { alpha: float_attr(node, "alpha", 1.0) as f64 }
        }
        // ONNX's Softplus has no threshold; PyTorch's linear tail from βx > 20 rounds to the
        // same float32 values.
        "Softplus" => {
            allow(node, &[])?;
            Activation::Softplus { beta: 1.0, threshold: 20.0 }
        }
        _ => {
            allow(node, &["approximate"])?;
            let approximate = attr(node, "approximate").map(|a| a.s.as_slice()).unwrap_or(b"none");
            match approximate {
                b"none" => Activation::Gelu { form: GeluForm::Erf },
                b"tanh" => Activation::Gelu { form: GeluForm::Tanh },
                other => {
                    return Err(format!(
                        "attribute 'approximate' = {} is not supported",
                        String::from_utf8_lossy(other)
                    ))
                }
            }
        }
    })
}

/// A `Constant` node's value; `folder` is where the model lies.
pub(crate) fn constant_node(node: &NodeProto, folder: &Path) -> NodeResult<Constant> {
    let [a] = &node.attribute[..] else {
        return Err("should hold exactly one attribute".into());
    };
    match a.name.as_str() {
        "value" => {
            let t = a.t.as_ref().ok_or("attribute 'value' holds no tensor")?;
            tensor::decode(t, folder).map_err(|e| format!("attribute 'value' {e}"))
        }
        "value_float" => Ok(Constant::f32(vec![], vec![a.f])),
        "value_floats" => Ok(Constant::f32(vec![a.floats.len()], a.floats.clone())),
        "value_int" => Ok(Constant::i64(vec![], vec![a.i])),
        "value_ints" => Ok(Constant::i64(vec![a.ints.len()], a.ints.clone())),
        other => Err(format!("attribute '{other}' is not supported")),
    }
}

/// Rows and columns of a constant matrix.
fn matrix(c: &Constant) -> NodeResult<(usize, usize)> {
    match c.dims[..] {
        [rows, cols] => Ok((rows, cols)),
        _ => Err(format!("multiplies by a {:?} constant, not a matrix", c.dims)),
    }
}

fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols).flat_map(|c| (0..rows).map(move |r| values[r * cols + c])).collect()
}

/// `features` values from a constant of one value or one per feature (`[F]` or `[1, F]`).
fn per_feature(c: &Constant, features: usize) -> Option<Vec<f32>> {
    let values = c.floats();
    match values.len() {
        1 => Some(vec![values[0]; features]),
        n if n == features && c.dims.iter().filter(|&&d| d != 1).count() <= 1 => Some(values),
        _ => None,
    }
}

/// A reshape target resolved against the input's shape: `0` copies the input's dimension
/// (unless `allow_zero`), one `-1` takes what is left.
fn resolve_shape(target: &[i64], input: &[usize], count: usize, allow_zero: bool) -> NodeResult<Vec<usize>> {
    let mut dims = Vec::with_capacity(target.len());
    let mut inferred = None;
    for (i, &t) in target.iter().enumerate() {
        dims.push(match t {
            -1 if inferred.is_none() => {
                inferred = Some(i);
                1
            }
            0 if !allow_zero => *input.get(i).ok_or("copies a dimension the input does not have")?,
            t => usize::try_from(t).map_err(|_| format!("has an invalid dimension {t}"))?,
        });
    }
    let known = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).ok_or("has too many values")?;
    if let Some(i) = inferred {
        if known == 0 || !count.is_multiple_of(known) {
            return Err(format!("cannot reshape {count} values to {target:?}"));
        }
        dims[i] = count / known;
    } else if known != count {
        return Err(format!("cannot reshape {count} values to {target:?}"));
    }
    Ok(dims)
}

/// Element-wise arithmetic of two constants, broadcast as numpy does.
fn broadcast(arith: Arith, a: &Constant, b: &Constant) -> NodeResult<Constant> {
    let rank = a.dims.len().max(b.dims.len());
    let pad = |d: &[usize]| -> Vec<usize> { std::iter::repeat_n(1, rank - d.len()).chain(d.iter().copied()).collect() };
    let (da, db) = (pad(&a.dims), pad(&b.dims));
    let mut dims = Vec::with_capacity(rank);
    for (&x, &y) in da.iter().zip(&db) {
        dims.push(match (x, y) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return Err(format!("cannot broadcast {:?} with {:?}", a.dims, b.dims)),
        });
    }
    let count = value_count(&dims).ok_or("makes too many values")?;
    // The flat index into a constant of padded dims `d` for output index `i`.
    let source = |d: &[usize], mut i: usize| {
        let (mut at, mut stride) = (0, 1);
        for axis in (0..rank).rev() {
            let coordinate = i % dims[axis];
            i /= dims[axis];
            if d[axis] != 1 {
                at += coordinate * stride;
            }
            stride *= d[axis];
        }
        at
    };
    let data = match (&a.data, &b.data) {
        (Data::I64(x), Data::I64(y)) => {
            let mut out = Vec::with_capacity(count);
            for i in 0..count {
                let (p, q) = (x[source(&da, i)], y[source(&db, i)]);
                out.push(match arith {
                    Arith::Add => p.wrapping_add(q),
                    Arith::Sub => p.wrapping_sub(q),
                    Arith::Mul => p.wrapping_mul(q),
                    Arith::Div => p.checked_div(q).ok_or("divides an integer by zero")?,
                });
            }
            Data::I64(out)
        }
        _ => {
            let (x, y) = (a.floats(), b.floats());
            Data::F32((0..count).map(|i| arith.apply(x[source(&da, i)], y[source(&db, i)])).collect())
        }
    };
    Ok(Constant { dims, data })
}
