//! Activations that exporters spell as several nodes, recognised before translation: GELU
//! (`x · 0.5 · (1 + erf(x / √2))` in the associations PyTorch's exporters write), SiLU
//! (`x · sigmoid(x)`) and PyTorch's Softplus with β, with its threshold (`where(βx > t, x,
//! softplus(βx) / β)`, the dynamo exporter) or without (`softplus(βx) / β`, TorchScript's). Every intermediate value must be read only inside the pattern, so that
//! dropping its nodes changes nothing else.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use leafwalk_models::description::{Activation, GeluForm};

use crate::graph::constant_node;
use crate::proto::{GraphProto, NodeProto};

/// One recognised activation and the value it applies to.
pub(crate) struct Fused {
    pub(crate) input: String,
    pub(crate) activation: Activation,
}

/// The recognised patterns: the activation at the position of each one's last node, and the
/// positions of the other nodes they absorb.
#[derive(Default)]
pub(crate) struct Patterns {
    pub(crate) replaced: HashMap<usize, Fused>,
    pub(crate) absorbed: HashSet<usize>,
}

/// Finds the patterns in `graph`; `scalar` gives a one-value initializer's value, `folder` is
/// where the model lies (a `Constant` node's tensor may keep its data beside it).
pub(crate) fn find(graph: &GraphProto, scalar: &dyn Fn(&str) -> Option<f32>, folder: &Path) -> Patterns {
    let index = GraphIndex::new(graph, scalar, folder);
    let mut patterns = Patterns::default();
    // A thresholded Softplus contains the scaled one: the larger pattern is claimed first.
    for scaled_softplus in [false, true] {
        for (position, node) in graph.node.iter().enumerate() {
            let found = match (node.op_type.as_str(), scaled_softplus) {
                ("Erf", false) => index.gelu(position),
                ("Sigmoid", false) => index.silu(position),
                ("Where", false) => index.softplus(position),
                ("Softplus", true) => index.scaled_softplus(position),
                _ => None,
            };
            let Some((last, absorbed, fused)) = found else { continue };
            let taken = |p: &usize| patterns.absorbed.contains(p) || patterns.replaced.contains_key(p);
            if taken(&last) || absorbed.iter().any(taken) {
                continue;
            }
            patterns.absorbed.extend(absorbed);
            patterns.replaced.insert(last, fused);
        }
    }
    patterns
}

/// A match: the last node's position, the other nodes' positions, the activation.
type Match = (usize, Vec<usize>, Fused);

struct GraphIndex<'g> {
    nodes: &'g [NodeProto],
    producer: HashMap<&'g str, usize>,
    readers: HashMap<&'g str, Vec<usize>>,
    outputs: HashSet<&'g str>,
    scalar: &'g dyn Fn(&str) -> Option<f32>,
    folder: &'g Path,
}

impl<'g> GraphIndex<'g> {
    fn new(graph: &'g GraphProto, scalar: &'g dyn Fn(&str) -> Option<f32>, folder: &'g Path) -> Self {
        let mut producer = HashMap::new();
        let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (position, node) in graph.node.iter().enumerate() {
            for output in &node.output {
                producer.insert(output.as_str(), position);
            }
            for input in &node.input {
                readers.entry(input.as_str()).or_default().push(position);
            }
        }
        let outputs = graph.output.iter().map(|o| o.name.as_str()).collect();
        GraphIndex { nodes: &graph.node, producer, readers, outputs, scalar, folder }
    }

    fn node(&self, position: usize) -> &'g NodeProto {
        &self.nodes[position]
    }

    fn output(&self, position: usize) -> Option<&'g str> {
        self.node(position).output.first().map(String::as_str)
    }

    /// The one node reading `value` (not a graph output), if there is exactly one.
    fn only_reader(&self, value: &str) -> Option<usize> {
        match self.readers.get(value).map(Vec::as_slice) {
            Some(&[reader]) if !self.outputs.contains(value) => Some(reader),
            _ => None,
        }
    }

    /// A constant's single value: a one-value initializer or a `Constant` node's.
    fn constant(&self, value: &str) -> Option<f32> {
        if let Some(v) = (self.scalar)(value) {
            return Some(v);
        }
        let node = self.node(*self.producer.get(value)?);
        let constant = constant_node(node, self.folder).ok().filter(|c| node.op_type == "Constant" && c.len() == 1)?;
        constant.floats().first().copied()
    }

    /// For a two-input `op` node with a constant input near `value`: its other input.
    fn with_constant(&self, position: usize, op: &str, value: f32) -> Option<&'g str> {
        let node = self.node(position);
        let [a, b] = &node.input[..] else { return None };
        if node.op_type != op || !node.attribute.is_empty() {
            return None;
        }
        let near = |name: &str| self.constant(name).is_some_and(|c| (c - value).abs() <= 1e-4 * value.abs().max(1.0));
        match (near(b), near(a) && matches!(op, "Add" | "Mul")) {
            (true, _) => Some(a),
            (false, true) => Some(b),
            _ => None,
        }
    }

    /// `x · ½` as Mul by 0.5 or Div by 2: x.
    fn half_of(&self, position: usize) -> Option<&'g str> {
        self.with_constant(position, "Mul", 0.5).or_else(|| self.with_constant(position, "Div", 2.0))
    }

    /// A Mul node's other input than `value`.
    fn times(&self, position: usize, value: &str) -> Option<&'g str> {
        let node = self.node(position);
        match &node.input[..] {
            [a, b] if node.op_type == "Mul" && a == value => Some(b),
            [a, b] if node.op_type == "Mul" && b == value => Some(a),
            _ => None,
        }
    }

    fn gelu(&self, erf: usize) -> Option<Match> {
        let scaled = self.node(erf).input.first()?;
        let scaling = *self.producer.get(scaled.as_str())?;
        (self.only_reader(scaled)? == erf).then_some(())?;
        let x = self
            .with_constant(scaling, "Div", std::f32::consts::SQRT_2)
            .or_else(|| self.with_constant(scaling, "Mul", std::f32::consts::FRAC_1_SQRT_2))?;
        let one_plus = self.only_reader(self.output(erf)?)?;
        (self.with_constant(one_plus, "Add", 1.0)? == self.output(erf)?).then_some(())?;
        let sum = self.output(one_plus)?;
        let product = self.only_reader(sum)?;
        let other = self.times(product, sum);
        let fused = Fused { input: x.to_string(), activation: Activation::Gelu { form: GeluForm::Erf } };
        // x · (1 + erf) then · ½.
        if other == Some(x) {
            let last = self.only_reader(self.output(product)?)?;
            (self.half_of(last)? == self.output(product)?).then_some(())?;
            return Some((last, vec![scaling, erf, one_plus, product], fused));
        }
        // (1 + erf) · ½ then · x.
        if self.half_of(product) == Some(sum) {
            let last = self.only_reader(self.output(product)?)?;
            (self.times(last, self.output(product)?)? == x).then_some(())?;
            return Some((last, vec![scaling, erf, one_plus, product], fused));
        }
        // (x · ½) · (1 + erf).
        let half = other?;
        let halving = *self.producer.get(half)?;
        (self.only_reader(half)? == product && self.half_of(halving)? == x).then_some(())?;
        Some((product, vec![scaling, erf, one_plus, halving], fused))
    }

    fn silu(&self, sigmoid: usize) -> Option<Match> {
        let x = self.node(sigmoid).input.first()?;
        let product = self.only_reader(self.output(sigmoid)?)?;
        (self.times(product, self.output(sigmoid)?)? == x).then_some(())?;
        Some((product, vec![sigmoid], Fused { input: x.clone(), activation: Activation::Silu }))
    }

    /// `softplus(βx) / β` without a threshold (the TorchScript exporter drops PyTorch's): a
    /// linear tail from βx > 20 rounds to the same float32 values.
    fn scaled_softplus(&self, softplus: usize) -> Option<Match> {
        let scaled = self.node(softplus).input.first()?;
        let scaling = *self.producer.get(scaled.as_str())?;
        (self.only_reader(scaled)? == softplus).then_some(())?;
        let [a, b] = &self.node(scaling).input[..] else { return None };
        let (x, beta) = match (self.constant(a), self.constant(b)) {
            (None, Some(beta)) => (a, beta),
            (Some(beta), None) => (b, beta),
            _ => return None,
        };
        (self.node(scaling).op_type == "Mul" && beta > 0.0).then_some(())?;
        let division = self.only_reader(self.output(softplus)?)?;
        (self.with_constant(division, "Div", beta)? == self.output(softplus)?).then_some(())?;
        let activation = Activation::Softplus { beta: beta as f64, threshold: 20.0 };
        Some((division, vec![scaling, softplus], Fused { input: x.clone(), activation }))
    }

    fn softplus(&self, select: usize) -> Option<Match> {
        let [condition, x, otherwise] = &self.node(select).input[..] else { return None };
        let greater = *self.producer.get(condition.as_str())?;
        (self.only_reader(condition)? == select && self.node(greater).op_type == "Greater").then_some(())?;
        let [scaled, threshold] = &self.node(greater).input[..] else { return None };
        let threshold = self.constant(threshold)?;
        // βx, or x itself when β = 1.
        let (beta, scaling) = match self.producer.get(scaled.as_str()) {
            _ if scaled == x => (1.0, None),
            Some(&p) if self.times(p, x).is_some() => (self.constant(self.times(p, x)?)?, Some(p)),
            _ => return None,
        };
        let (softplus, division) = match self.producer.get(otherwise.as_str()) {
            Some(&p) if self.node(p).op_type == "Softplus" && beta == 1.0 => (p, None),
            Some(&p) => {
                let quotient = self.with_constant(p, "Div", beta)?;
                (*self.producer.get(quotient)?, Some(p))
            }
            None => return None,
        };
        let plus = self.node(softplus);
        (plus.op_type == "Softplus" && plus.input.first() == Some(scaled)).then_some(())?;
        (self.only_reader(self.output(softplus)?)? == division.unwrap_or(select)).then_some(())?;
        if let Some(d) = division {
            (self.only_reader(self.output(d)?)? == select).then_some(())?;
        }
        if scaling.is_some() {
            let readers = self.readers.get(scaled.as_str())?;
            (readers.len() == 2 && readers.contains(&greater) && readers.contains(&softplus)).then_some(())?;
        }
        let absorbed = [Some(greater), Some(softplus), division, scaling].into_iter().flatten().collect();
        let activation = Activation::Softplus { beta: beta as f64, threshold: threshold as f64 };
        Some((select, absorbed, Fused { input: x.clone(), activation }))
    }
}
