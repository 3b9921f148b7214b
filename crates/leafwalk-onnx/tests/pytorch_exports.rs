//! The six ONNX files PyTorch wrote for the fixtures `lenet5`, `vgg-bn-small` and `resnet-mini`
//! (TorchScript exporter, opset 17; dynamo exporter, opset 18 with external data), read with no
//! flags, against PyTorch's float64 golden values: log p within 1e-5, J within 1e-4·max|J|,
//! trace and eigenvalues of G within 1e-4 relative.

mod common;

use std::path::Path;

use candle_core::Device;
use common::{fixture, flat, imported};
use leafwalk_engine::{input_jacobian, Coordinates};
use leafwalk_geometry::batch_geometry;

fn relative_gap(found: f64, expected: f64, scale: f64) -> f64 {
    (found - expected).abs() / scale.abs().max(f64::MIN_POSITIVE)
}

#[test]
fn both_exporters_match_pytorch() {
    for name in ["lenet5", "vgg-bn-small", "resnet-mini"] {
        let golden =
            candle_core::safetensors::load(fixture(&format!("{name}.golden.safetensors")), &Device::Cpu).unwrap();
        let inputs = &golden["inputs"];
        for file in [format!("{name}.onnx"), format!("{name}.dynamo.onnx")] {
            let model = imported(&file);
            assert_eq!(model.classes(), 10, "{file}");
            let found = input_jacobian(&model, inputs, Coordinates::Pixels).unwrap();
            let worst_lp = flat(&found.log_probs)
                .iter()
                .zip(flat(&golden["log_probs"]))
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(worst_lp <= 1e-5, "{file}: log p off by {worst_lp}");
            let expected = flat(&golden["jacobian"]);
            let scale = expected.iter().fold(0f64, |m, v| m.max(v.abs()));
            let worst = flat(&found.jacobian).iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(worst <= 1e-4 * scale, "{file}: J off by {worst} (max |J| {scale})");

            let (traces, eigenvalues) = (flat(&golden["trace_g"]), flat(&golden["eig_g"]));
            for (b, point) in batch_geometry(&model, inputs).unwrap().iter().enumerate() {
                assert!(relative_gap(point.trace(), traces[b], traces[b]) <= 1e-4, "{file}: trace of G, point {b}");
                let expected = &eigenvalues[b * 10..][..10];
                let spectrum = point.spectrum().eigenvalues;
                // The last eigenvalue is rounding noise in both: compared on the largest one's scale.
                for (k, (&f, &e)) in spectrum.iter().zip(expected).enumerate().take(9) {
                    assert!(relative_gap(f, e, e) <= 1e-4, "{file}: eigenvalue {k} of point {b}: {f} vs {e}");
                }
                assert!(spectrum[9].abs() <= 1e-6 * expected[0], "{file}: last eigenvalue {}", spectrum[9]);
            }
        }
    }
}

/// A fully convolutional classifier's scores come out as [N, C, 1, 1] (global pooling, no
/// flatten): read as C classes.
#[test]
fn scores_may_keep_their_pooled_axes() {
    use leafwalk_onnx::proto::ModelProto;
    use prost::Message;
    let mut model = ModelProto::decode(&std::fs::read(fixture("resnet-mini.onnx")).unwrap()[..]).unwrap();
    let graph = model.graph.as_mut().unwrap();
    let pooled = graph.node.iter().position(|n| n.op_type == "GlobalAveragePool").unwrap();
    graph.node.truncate(pooled + 1);
    graph.output[0].name = graph.node[pooled].output[0].clone();
    let imported = leafwalk_onnx::from_bytes(&model.encode_to_vec(), &fixture(""), Path::new("pooled.onnx")).unwrap();
    assert_eq!(imported.description.classes().unwrap(), 64);
}
