//! How long a large ONNX file takes to load: a resnet18-shaped classifier (3×224×224 inputs,
//! 1,000 classes, 11.7 M parameters, random weights) written as ONNX in the TorchScript
//! exporter's spelling, then read (`leafwalk_onnx::read`) and built into a classifier as
//! `--model net.onnx` does. Median of 5 after a warm-up; JSON on stdout.
//! Run: `cargo bench -p leafwalk-onnx --bench load` or `scripts/bench.sh import`.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor};
use leafwalk_models::description::{Activation, Op};
use leafwalk_models::{Arch, Architecture, CheckpointMeta, Classifier, Description, Dims, LoadOptions};
use leafwalk_onnx::proto::{
    AttributeProto, Dimension, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto,
    TensorTypeProto, TypeProto, ValueInfoProto,
};
use prost::Message;
use serde_json::json;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn ints(name: &str, values: &[usize]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        ints: values.iter().map(|&v| v as i64).collect(),
        r#type: 7,
        ..Default::default()
    }
}

fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto { name: name.into(), i: value, r#type: 2, ..Default::default() }
}

fn value_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    let dim = dims.iter().map(|&d| Dimension { dim_value: Some(d), dim_param: None }).collect();
    let tensor_type = TensorTypeProto { elem_type: 1, shape: Some(TensorShapeProto { dim }) };
    ValueInfoProto { name: name.into(), r#type: Some(TypeProto { tensor_type: Some(tensor_type) }) }
}

/// The description as ONNX (the operations a resnet needs), its weights as raw initializers.
fn to_onnx(
    description: &Description,
    tensors: &HashMap<String, Tensor>,
) -> Result<ModelProto, Box<dyn std::error::Error>> {
    let value = |v: usize| if v == 0 { "input".to_string() } else { format!("v{v}") };
    let mut nodes = Vec::new();
    let mut initializer = Vec::new();
    for (index, node) in description.nodes.iter().enumerate() {
        let inputs: Vec<String> = node.inputs.iter().map(|&v| value(v)).collect();
        let mut weights = |leaf: &str| -> Result<String, Box<dyn std::error::Error>> {
            let name = format!("{}.{leaf}", node.name);
            let t = &tensors[&name];
            let raw: Vec<u8> = t.flatten_all()?.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect();
            let dims = t.dims().iter().map(|&d| d as i64).collect();
            initializer.push(TensorProto {
                name: name.clone(),
                dims,
                data_type: 1,
                raw_data: raw,
                ..Default::default()
            });
            Ok(name)
        };
        let (op_type, inputs, attribute) = match &node.op {
            Op::Conv2d(c) => {
                let mut inputs = inputs.clone();
                inputs.push(weights("weight")?);
                if c.bias {
                    inputs.push(weights("bias")?);
                }
                let pads = [c.padding[0], c.padding[1], c.padding[0], c.padding[1]];
                let attributes = vec![ints("kernel_shape", &c.kernel), ints("strides", &c.stride), ints("pads", &pads)];
                ("Conv", inputs, attributes)
            }
            Op::BatchNorm(_) => {
                let leaves = ["weight", "bias", "running_mean", "running_var"];
                let mut inputs = inputs.clone();
                for leaf in leaves {
                    inputs.push(weights(leaf)?);
                }
                ("BatchNormalization", inputs, vec![])
            }
            Op::Activation(Activation::Relu) => ("Relu", inputs, vec![]),
            Op::MaxPool2d(p) => {
                let pads = [p.padding[0], p.padding[1], p.padding[0], p.padding[1]];
                (
                    "MaxPool",
                    inputs,
                    vec![ints("kernel_shape", &p.kernel), ints("strides", &p.stride), ints("pads", &pads)],
                )
            }
            Op::Binary { .. } => ("Add", inputs, vec![]),
            Op::GlobalAvgPool => ("GlobalAveragePool", inputs, vec![]),
            Op::Flatten => ("Flatten", inputs, vec![int("axis", 1)]),
            Op::Linear(_) => {
                let mut inputs = inputs.clone();
                inputs.push(weights("weight")?);
                inputs.push(weights("bias")?);
                ("Gemm", inputs, vec![int("transB", 1)])
            }
            other => return Err(format!("{} is not written by this benchmark", other.kind()).into()),
        };
        nodes.push(NodeProto {
            input: inputs,
            output: vec![value(index + 1)],
            name: node.name.clone(),
            op_type: op_type.into(),
            attribute,
            domain: String::new(),
        });
    }
    let input = description.input;
    let classes = description.classes()? as i64;
    let graph = GraphProto {
        node: nodes,
        name: "resnet18".into(),
        initializer,
        input: vec![value_info("input", &[1, input.channels as i64, input.height as i64, input.width as i64])],
        output: vec![value_info(&value(description.nodes.len()), &[1, classes])],
    };
    Ok(ModelProto {
        ir_version: 8,
        producer_name: "leafwalk benchmark".into(),
        producer_version: String::new(),
        graph: Some(graph),
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 17 }],
    })
}

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (input, classes) = (Dims::new(3, 224, 224), 1000);
    let meta = CheckpointMeta::without_dataset(Arch::Resnet18.into(), input, classes);
    let source = Classifier::fresh(meta, 0, &Device::Cpu, DType::F32)?;
    let tensors: HashMap<String, Tensor> = source.named_tensors().into_iter().collect();
    let folder = tempfile::tempdir()?;
    let path = folder.path().join("resnet18.onnx");
    std::fs::write(&path, to_onnx(source.description(), &tensors)?.encode_to_vec())?;
    let file_bytes = std::fs::metadata(&path)?.len();

    let load = || -> Result<Classifier, Box<dyn std::error::Error>> {
        let imported = leafwalk_onnx::read(&path)?;
        let architecture = Architecture::Custom(Box::new(imported.description));
        Ok(Classifier::from_foreign(&path, architecture, imported.tensors, &LoadOptions::default(), &Device::Cpu)?)
    };
    let model = load()?;
    let (mut read_times, mut load_times) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let start = Instant::now();
        leafwalk_onnx::read(&path)?;
        read_times.push(start.elapsed().as_secs_f64());
        let start = Instant::now();
        load()?;
        load_times.push(start.elapsed().as_secs_f64());
    }
    // The import computes what the model it was written from computes.
    let pixels = Tensor::rand(0f32, 1f32, (1, 3, 224, 224), &Device::Cpu)?;
    let gap = (model.forward(&pixels)? - source.forward(&pixels)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
    let json = json!({
        "bench": "import",
        "model": "resnet18 (random weights), written as ONNX opset 17",
        "input": input.to_string(),
        "classes": classes,
        "file_bytes": file_bytes,
        "timing": "median of 5 after a warm-up",
        "read_onnx_s": median(read_times),
        "load_as_model_s": median(load_times),
        "target_s": 1.0,
        "max_log_p_gap_to_source": gap,
    });
    println!("{json}");
    Ok(())
}
