//! The part of `onnx.proto` a classifier needs, as prost messages (field numbers from the ONNX
//! specification). Fields not declared here — documentation, training information, functions,
//! sub-graphs of control-flow attributes — are skipped by the decoder unread.
//!
//! Every message and field mirrors the one of the same name in `onnx.proto` (nested messages are
//! flattened: [`TensorTypeProto`] is `TypeProto.Tensor`, [`Dimension`] is
//! `TensorShapeProto.Dimension`), and its doc gives its meaning there. As in any protobuf message,
//! a field absent from the file reads as its default: 0, an empty string or list, `None`.

use prost::Message;

/// `ModelProto`: the top-level message of an `.onnx` file, a graph plus what is needed to run it.
#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    /// `ir_version`: version of the ONNX file format (IR) the model follows, e.g. 8 or 9.
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    /// `producer_name`: the tool that wrote the file, e.g. `pytorch`; may be empty.
    #[prost(string, tag = "2")]
    pub producer_name: String,
    /// `producer_version`: that tool's version, e.g. `2.3.0`; may be empty.
    #[prost(string, tag = "3")]
    pub producer_version: String,
    /// `graph`: the computation; required by the specification, so `None` means the file is no model.
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    /// `opset_import`: the operator sets the graph's nodes draw on, one entry per domain, with versions.
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
}

/// `OperatorSetIdProto`: one operator set a model imports, named by domain and version.
#[derive(Clone, PartialEq, Message)]
pub struct OperatorSetIdProto {
    /// `domain`: the operator set's domain; empty (or `ai.onnx`) for the standard ONNX operators.
    #[prost(string, tag = "1")]
    pub domain: String,
    /// `version`: the operator set version (the "opset", e.g. 17), which fixes each operator's semantics.
    #[prost(int64, tag = "2")]
    pub version: i64,
}

/// `GraphProto`: a computation graph: its nodes, the constant tensors they read, its inputs and outputs.
#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    /// `node`: the graph's nodes, in topological order (every value is written before it is read).
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    /// `name`: the graph's name, informational only.
    #[prost(string, tag = "2")]
    pub name: String,
    /// `initializer`: constant tensors (the weights), each named after the graph value it supplies.
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    /// `input`: the graph's inputs, with types; may list initializers too (IR version < 4 requires it).
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    /// `output`: the graph's outputs, with types.
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

/// `NodeProto`: one operator call in a graph, reading and writing named values.
#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    /// `input`: names of the values the node reads, in the operator's argument order; `""` skips an optional one.
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    /// `output`: names of the values the node writes, in the operator's output order.
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    /// `name`: the node's name, for diagnostics only; may be empty.
    #[prost(string, tag = "3")]
    pub name: String,
    /// `op_type`: the operator, e.g. `Conv` or `Gemm`, looked up in `domain` at the imported opset.
    #[prost(string, tag = "4")]
    pub op_type: String,
    /// `attribute`: the operator's attributes (e.g. `strides`, `pads`); absent ones take the operator's defaults.
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    /// `domain`: the operator set `op_type` belongs to; empty for the standard ONNX operators.
    #[prost(string, tag = "7")]
    pub domain: String,
}

/// `AttributeProto`: one named attribute of a node; `type` says which value field holds its value.
#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    /// `name`: the attribute's name, e.g. `kernel_shape`.
    #[prost(string, tag = "1")]
    pub name: String,
    /// `f`: the value of a `FLOAT` attribute, e.g. LeakyRelu's `alpha`.
    #[prost(float, tag = "2")]
    pub f: f32,
    /// `i`: the value of an `INT` attribute, e.g. `group` or `axis`.
    #[prost(int64, tag = "3")]
    pub i: i64,
    /// `s`: the value of a `STRING` attribute as bytes (UTF-8 by convention), e.g. `auto_pad`.
    #[prost(bytes = "vec", tag = "4")]
    pub s: Vec<u8>,
    /// `t`: the value of a `TENSOR` attribute, e.g. a `Constant` node's `value`.
    #[prost(message, optional, tag = "5")]
    pub t: Option<TensorProto>,
    /// `floats`: the values of a `FLOATS` attribute.
    #[prost(float, repeated, tag = "7")]
    pub floats: Vec<f32>,
    /// `ints`: the values of an `INTS` attribute, e.g. `strides` or `pads`.
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
    /// `type`: the `AttributeType`: 1 float, 2 int, 3 string, 4 tensor, 5 graph, 6 floats, 7 ints, …
    #[prost(int32, tag = "20")]
    pub r#type: i32,
}

/// `TensorProto`: a constant tensor (an initializer or an attribute's value): shape, element type, data.
#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    /// `dims`: the tensor's shape, outermost first; empty for a scalar.
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    /// `data_type`: the element `DataType`: 1 float, 6 int32, 7 int64, 9 bool, 10 float16, 11 double, …
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    /// `float_data`: the values of a float tensor, row-major, when they are not in `raw_data`.
    #[prost(float, repeated, tag = "4")]
    pub float_data: Vec<f32>,
    /// `int32_data`: the values of an int32 tensor, or a narrower integer, bool or float16 (as bits) one; row-major.
    #[prost(int32, repeated, tag = "5")]
    pub int32_data: Vec<i32>,
    /// `int64_data`: the values of an int64 tensor, row-major.
    #[prost(int64, repeated, tag = "7")]
    pub int64_data: Vec<i64>,
    /// `name`: the tensor's name; for an initializer, the graph value it supplies.
    #[prost(string, tag = "8")]
    pub name: String,
    /// `raw_data`: the values as packed little-endian bytes, row-major; when set, the typed fields are empty.
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
    /// `double_data`: the values of a double (float64) tensor, row-major.
    #[prost(double, repeated, tag = "10")]
    pub double_data: Vec<f64>,
    /// `external_data`: where external data lies: `location` (a file beside the model), `offset`, `length`.
    #[prost(message, repeated, tag = "13")]
    pub external_data: Vec<StringStringEntryProto>,
    /// `data_location`: 0 (`DEFAULT`): the data is in this message, 1 (`EXTERNAL`): in a file (`external_data`).
    #[prost(int32, tag = "14")]
    pub data_location: i32,
}

/// `StringStringEntryProto`: one key–value pair of a string map.
#[derive(Clone, PartialEq, Message)]
pub struct StringStringEntryProto {
    /// `key`: the entry's key, e.g. `location`.
    #[prost(string, tag = "1")]
    pub key: String,
    /// `value`: the entry's value, e.g. `model.onnx.data`.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `ValueInfoProto`: a graph input or output: a value's name and type.
#[derive(Clone, PartialEq, Message)]
pub struct ValueInfoProto {
    /// `name`: the value's name, as nodes' `input` and `output` spell it.
    #[prost(string, tag = "1")]
    pub name: String,
    /// `type`: the value's type and shape; `None` when the file leaves it unstated.
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

/// `TypeProto`: the type of a value; only its tensor case is declared here.
#[derive(Clone, PartialEq, Message)]
pub struct TypeProto {
    /// `tensor_type`: set when the value is a tensor; `None` for the other (undeclared) kinds.
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TensorTypeProto>,
}

/// `TypeProto.Tensor`: the type of a tensor value: element type and shape.
#[derive(Clone, PartialEq, Message)]
pub struct TensorTypeProto {
    /// `elem_type`: the element `DataType`, numbered as in [`TensorProto::data_type`] (1 is float).
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    /// `shape`: the tensor's shape; `None` when even the rank is unknown.
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

/// `TensorShapeProto`: a tensor's shape, one entry per axis.
#[derive(Clone, PartialEq, Message)]
pub struct TensorShapeProto {
    /// `dim`: the axes' sizes, outermost first (`[N, C, H, W]` for an image batch).
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

/// `TensorShapeProto.Dimension`: one axis's size: a number, a symbolic name, or neither (unknown).
#[derive(Clone, PartialEq, Message)]
pub struct Dimension {
    /// `dim_value`: the axis's fixed size, when known.
    #[prost(int64, optional, tag = "1")]
    pub dim_value: Option<i64>,
    /// `dim_param`: a symbolic size such as `batch_size` (axes of one name agree); set instead of `dim_value`.
    #[prost(string, optional, tag = "2")]
    pub dim_param: Option<String>,
}
