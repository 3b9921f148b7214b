//! The rest of the vocabulary users export (tests/fixtures/onnx-*, written by
//! scripts/make_onnx_fixtures.py): a TorchScript export using GELU, SiLU, Softplus with β,
//! LeakyReLU, ELU, grouped and dilated convolutions, pooling with padding and ceil mode, a batch
//! norm on a vector and a bias-free linear layer, against PyTorch's float64 log p and J; and a
//! graph in the dynamo exporter's spelling against onnx's reference evaluator.

mod common;

use candle_core::{Device, Module};
use common::{fixture, flat, imported};
use leafwalk_engine::{input_jacobian, Coordinates};
use leafwalk_models::description::{Activation, GeluForm, Op};
use leafwalk_models::Classifier;

fn worst_gap(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max)
}

fn ops(model: &Classifier) -> Vec<Op> {
    model.description().nodes.iter().map(|n| n.op.clone()).collect()
}

#[test]
fn a_torchscript_export_of_the_wider_vocabulary_matches_pytorch() {
    let model = imported("onnx-zoo.onnx");
    let ops = ops(&model);
    for wanted in [
        Op::Activation(Activation::Gelu { form: GeluForm::Erf }),
        Op::Activation(Activation::Silu),
        Op::Activation(Activation::Softplus { beta: 2.0, threshold: 20.0 }),
        Op::Activation(Activation::Sigmoid),
    ] {
        assert!(ops.contains(&wanted), "{wanted:?} missing from {ops:?}");
    }
    assert!(ops.iter().any(|op| matches!(op, Op::Conv2d(c) if c.groups == 4 && c.dilation == [2, 2])));
    assert!(ops.iter().any(|op| matches!(op, Op::MaxPool2d(p) if p.ceil_mode && p.padding == [1, 1])));
    assert!(ops.iter().any(|op| matches!(op, Op::AvgPool2d(p) if !p.count_include_pad)));
    assert!(ops.iter().any(|op| matches!(op, Op::Linear(l) if !l.bias)));
    assert!(ops.iter().any(|op| matches!(op, Op::BatchNorm(_))));

    let golden = candle_core::safetensors::load(fixture("onnx-zoo.golden.safetensors"), &Device::Cpu).unwrap();
    let found = input_jacobian(&model, &golden["inputs"], Coordinates::Pixels).unwrap();
    let lp = worst_gap(&flat(&found.log_probs), &flat(&golden["log_probs"]));
    assert!(lp <= 1e-5, "log p off by {lp}");
    let expected = flat(&golden["jacobian"]);
    let scale = expected.iter().fold(0f64, |m, v| m.max(v.abs()));
    let j = worst_gap(&flat(&found.jacobian), &expected);
    assert!(j <= 1e-4 * scale, "J off by {j} (max |J| {scale})");
}

#[test]
fn the_dynamo_spelling_of_gelu_softplus_and_linear_layers_is_recognised() {
    let model = imported("onnx-patterns.onnx");
    let ops = ops(&model);
    assert_eq!(
        ops.iter().map(Op::kind).collect::<Vec<_>>(),
        ["Conv2d", "GELU", "Softplus", "GlobalAvgPool", "Linear"],
        "{ops:?}"
    );
    assert!(ops.contains(&Op::Activation(Activation::Softplus { beta: 2.0, threshold: 10.0 })));
    assert!(matches!(ops[4], Op::Linear(l) if l.bias), "MatMul + Add is one linear layer with a bias");
    let golden = candle_core::safetensors::load(fixture("onnx-patterns.golden.safetensors"), &Device::Cpu).unwrap();
    let logits = model.logits_t(&golden["inputs"], false).unwrap();
    let expected = flat(&golden["logits"]);
    let scale = expected.iter().fold(0f64, |m, v| m.max(v.abs()));
    let gap = worst_gap(&flat(&logits), &expected);
    assert!(gap <= 1e-5 * scale, "logits off by {gap}");
    // The engine agrees with the candle network it was checked against.
    let found = input_jacobian(&model, &golden["inputs"], Coordinates::Pixels).unwrap();
    let lp = worst_gap(&flat(&found.log_probs), &flat(&model.forward(&golden["inputs"]).unwrap()));
    assert!(lp <= 1e-5, "engine log p off by {lp}");
}
